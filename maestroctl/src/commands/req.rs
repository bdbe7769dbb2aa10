//! `maestroctl req …`: the requirements tree.

use std::collections::{BTreeMap, BTreeSet};

use maestro_shared::Conn;
use maestro_shared::v1::{self, requirement_service_client::RequirementServiceClient};

use super::{ExitStatus, need};
use crate::cli::{Output, ReqCmd, ReqStatus};
use crate::client::{all_pages, reply};
use crate::output::{Table, emit, etag};

pub(crate) fn status_to_wire(status: ReqStatus) -> v1::RequirementStatus {
    match status {
        ReqStatus::Pending => v1::RequirementStatus::Pending,
        ReqStatus::Claimed => v1::RequirementStatus::Claimed,
        ReqStatus::InProgress => v1::RequirementStatus::InProgress,
        ReqStatus::Done => v1::RequirementStatus::Done,
        ReqStatus::Failed => v1::RequirementStatus::Failed,
        ReqStatus::Blocked => v1::RequirementStatus::Blocked,
    }
}

fn status_name(raw: i32) -> &'static str {
    v1::RequirementStatus::try_from(raw)
        .map(|s| s.as_str_name().trim_start_matches("REQUIREMENT_STATUS_"))
        .unwrap_or("?")
}

/// Sorts ids like R2 < R10.
fn number(id: &str) -> u64 {
    id.trim_start_matches('R').parse().unwrap_or(u64::MAX)
}

fn line(r: &v1::Requirement) -> String {
    let mut text = format!("{} [{}] {}", r.id, status_name(r.status), r.title);
    if !r.role_hint.is_empty() {
        text.push_str(&format!(" ({})", r.role_hint));
    }
    if !r.depends_on.is_empty() {
        text.push_str(&format!(" ← depends on {}", r.depends_on.join(", ")));
    }
    if !r.assignee.is_empty() {
        text.push_str(&format!(" @{}", r.assignee));
    }
    text
}

/// Prints the requirements as a tree; a node whose parent is not listed is a root.
fn tree(requirements: &[v1::Requirement]) {
    if requirements.is_empty() {
        println!("no requirements");
        return;
    }
    let ids: BTreeSet<&str> = requirements.iter().map(|r| r.id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&v1::Requirement>> = BTreeMap::new();
    let mut roots = Vec::new();
    for r in requirements {
        if r.parent_id.is_empty() || !ids.contains(r.parent_id.as_str()) {
            roots.push(r);
        } else {
            children.entry(r.parent_id.as_str()).or_default().push(r);
        }
    }
    roots.sort_by_key(|r| number(&r.id));
    for list in children.values_mut() {
        list.sort_by_key(|r| number(&r.id));
    }
    fn walk(
        node: &v1::Requirement,
        prefix: &str,
        last: bool,
        root: bool,
        children: &BTreeMap<&str, Vec<&v1::Requirement>>,
    ) {
        let branch = if root {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        println!("{prefix}{branch}{}", line(node));
        let next_prefix = if root { String::new() } else { format!("{prefix}{}", if last { "   " } else { "│  " }) };
        if let Some(kids) = children.get(node.id.as_str()) {
            for (i, kid) in kids.iter().enumerate() {
                walk(kid, &next_prefix, i + 1 == kids.len(), false, children);
            }
        }
    }
    for root in roots {
        walk(root, "", true, true, &children);
    }
}

fn detail(r: &v1::Requirement) {
    let mut table = Table::new(&["FIELD", "VALUE"]);
    let mut add = |k: &str, v: String| table.row(vec![k.to_string(), v]);
    add("id", r.id.clone());
    add("title", r.title.clone());
    add("status", status_name(r.status).to_string());
    add("parent", r.parent_id.clone());
    add("role", r.role_hint.clone());
    add("depends on", r.depends_on.join(", "));
    add("assignee", r.assignee.clone());
    add("attempts", r.attempts.to_string());
    add("reason", r.status_reason.clone());
    add("description", r.description.clone());
    add("acceptance", r.acceptance.join("; "));
    add("etag", etag(r.meta.as_ref()));
    table.print();
}

pub(super) async fn run(
    cmd: ReqCmd,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = RequirementServiceClient::new(channel);
    match cmd {
        ReqCmd::Add { title, parent, description, role, acceptance, depends_on } => {
            let request = v1::CreateRequirementRequest {
                project_id: need(project)?,
                parent_id: parent,
                title,
                description,
                role_hint: role,
                acceptance,
                depends_on,
            };
            let created = reply(client.create_requirement(request).await)?;
            emit(output, &created, || println!("{}", line(&created)))?;
        }
        ReqCmd::List { status, revision } => {
            let project_id = need(project)?;
            let all = all_pages(0, |page_token| {
                let mut client = client.clone();
                let request = v1::ListRequirementsRequest {
                    project_id: project_id.clone(),
                    page_size: 1000,
                    page_token,
                    parent_id: String::new(),
                    status: status.map_or(0, |s| status_to_wire(s) as i32),
                    revision,
                };
                async move {
                    let page = client.list_requirements(request).await?.into_inner();
                    Ok((page.requirements, page.next_page_token))
                }
            })
            .await?;
            emit(output, &all, || tree(&all))?;
        }
        ReqCmd::Ready => {
            let ready = reply(
                client.list_ready_requirements(v1::ListReadyRequirementsRequest { project_id: need(project)? }).await,
            )?
            .requirements;
            emit(output, &ready, || {
                if ready.is_empty() {
                    println!("nothing is ready");
                }
                for r in &ready {
                    println!("{}", line(r));
                }
            })?;
        }
        ReqCmd::Show { id } => {
            let found = reply(
                client.get_requirement(v1::GetRequirementRequest { project_id: need(project)?, id, revision: 0 }).await,
            )?;
            emit(output, &found, || detail(&found))?;
        }
        ReqCmd::SetStatus { id, status, reason, assignee, etag } => {
            let request = v1::SetRequirementStatusRequest {
                project_id: need(project)?,
                id,
                status: status_to_wire(status) as i32,
                reason,
                assignee,
                etag,
            };
            let updated = reply(client.set_requirement_status(request).await)?;
            emit(output, &updated, || println!("{}", line(&updated)))?;
        }
        ReqCmd::Depend { id, add, remove, etag } => {
            if add.is_empty() && remove.is_empty() {
                anyhow::bail!("nothing to change: pass --on ID to add a dependency or --remove ID to drop one");
            }
            let request = v1::SetDependenciesRequest { project_id: need(project)?, id, add, remove, etag };
            let updated = reply(client.set_dependencies(request).await)?;
            emit(output, &updated, || println!("{}", line(&updated)))?;
        }
        ReqCmd::Delete { id, etag } => {
            let deleted = reply(
                client
                    .delete_requirement(v1::DeleteRequirementRequest {
                        project_id: need(project)?,
                        id: id.clone(),
                        etag,
                    })
                    .await,
            )?;
            emit(output, &deleted, || println!("deleted requirement {id} at revision {}", deleted.revision))?;
        }
    }
    Ok(0)
}
