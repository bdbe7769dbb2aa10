//! `maestroctl contract …`: the contract registry.

use std::io::Read;

use anyhow::Context;
use maestro_shared::Conn;
use maestro_shared::v1::{self, contract_service_client::ContractServiceClient};

use super::{ExitStatus, need};
use crate::cli::{ContractCmd, ContractKind, ContractStatus, Output};
use crate::client::{all_pages, reply};
use crate::output::{Table, emit, etag, time};

fn kind_to_wire(kind: ContractKind) -> v1::ContractKind {
    match kind {
        ContractKind::Openapi => v1::ContractKind::Openapi,
        ContractKind::Protobuf => v1::ContractKind::Protobuf,
        ContractKind::JsonSchema => v1::ContractKind::JsonSchema,
        ContractKind::FunctionSignature => v1::ContractKind::FunctionSignature,
    }
}

fn status_to_wire(status: ContractStatus) -> v1::ContractStatus {
    match status {
        ContractStatus::Draft => v1::ContractStatus::Draft,
        ContractStatus::Proposed => v1::ContractStatus::Proposed,
        ContractStatus::Accepted => v1::ContractStatus::Accepted,
        ContractStatus::Violated => v1::ContractStatus::Violated,
        ContractStatus::Deprecated => v1::ContractStatus::Deprecated,
    }
}

fn kind_name(raw: i32) -> String {
    v1::ContractKind::try_from(raw)
        .map(|k| k.as_str_name().trim_start_matches("CONTRACT_KIND_").to_lowercase().replace('_', "-"))
        .unwrap_or_default()
}

fn status_name(raw: i32) -> &'static str {
    v1::ContractStatus::try_from(raw).map(|s| s.as_str_name().trim_start_matches("CONTRACT_STATUS_")).unwrap_or("?")
}

fn table(contracts: &[v1::Contract]) {
    let mut table = Table::new(&["NAME", "VERSION", "KIND", "STATUS", "OWNER", "CONSUMERS", "CREATED", "ETAG"]);
    for c in contracts {
        table.row(vec![
            c.name.clone(),
            c.version.to_string(),
            kind_name(c.kind),
            status_name(c.status).to_string(),
            c.owner.clone(),
            c.consumers.join(","),
            time(c.create_time_ms),
            etag(c.meta.as_ref()),
        ]);
    }
    table.print();
}

fn show(c: &v1::Contract) {
    table(std::slice::from_ref(c));
    if !c.status_reason.is_empty() {
        println!("\nreason: {}", c.status_reason);
    }
    println!("\n{}", c.spec);
}

pub(super) async fn run(
    cmd: ContractCmd,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = ContractServiceClient::new(channel);
    match cmd {
        ContractCmd::Put { name, kind, spec_file, spec, owner, consumers, status, etag } => {
            let spec = match (spec, spec_file) {
                (Some(spec), _) => spec,
                (None, Some(path)) if path.as_os_str() == "-" => {
                    let mut spec = String::new();
                    std::io::stdin().read_to_string(&mut spec).context("reading the spec from standard input")?;
                    spec
                }
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read --spec-file {}", path.display()))?,
                (None, None) => {
                    anyhow::bail!("give the contract's spec with --spec TEXT or --spec-file PATH")
                }
            };
            let request = v1::PutContractRequest {
                project_id: need(project)?,
                name,
                kind: kind_to_wire(kind) as i32,
                spec,
                owner,
                consumers,
                status: status_to_wire(status) as i32,
                etag,
            };
            let stored = reply(client.put_contract(request).await)?;
            emit(output, &stored, || table(std::slice::from_ref(&stored)))?;
        }
        ContractCmd::List => {
            let project_id = need(project)?;
            let all = all_pages(0, |page_token| {
                let mut client = client.clone();
                let request = v1::ListContractsRequest { project_id: project_id.clone(), page_size: 1000, page_token };
                async move {
                    let page = client.list_contracts(request).await?.into_inner();
                    Ok((page.contracts, page.next_page_token))
                }
            })
            .await?;
            emit(output, &all, || table(&all))?;
        }
        ContractCmd::Show { name, version } => {
            let found =
                reply(client.get_contract(v1::GetContractRequest { project_id: need(project)?, name, version }).await)?;
            emit(output, &found, || show(&found))?;
        }
        ContractCmd::Versions { name } => {
            let project_id = need(project)?;
            let all = all_pages(0, |page_token| {
                let mut client = client.clone();
                let request = v1::ListContractVersionsRequest {
                    project_id: project_id.clone(),
                    name: name.clone(),
                    page_size: 1000,
                    page_token,
                };
                async move {
                    let page = client.list_contract_versions(request).await?.into_inner();
                    Ok((page.contracts, page.next_page_token))
                }
            })
            .await?;
            emit(output, &all, || table(&all))?;
        }
        ContractCmd::SetStatus { name, status, version, reason } => {
            let request = v1::SetContractStatusRequest {
                project_id: need(project)?,
                name,
                version,
                status: status_to_wire(status) as i32,
                reason,
                etag: String::new(),
            };
            let updated = reply(client.set_contract_status(request).await)?;
            emit(output, &updated, || table(std::slice::from_ref(&updated)))?;
        }
    }
    Ok(0)
}
