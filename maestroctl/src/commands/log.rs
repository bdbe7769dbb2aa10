//! `maestroctl log …`: the execution log.

use maestro_shared::Conn;
use maestro_shared::v1::{self, execution_log_service_client::ExecutionLogServiceClient};

use super::{ExitStatus, need};
use crate::cli::{LogCmd, Output};
use crate::client::{all_pages, reply};
use crate::output::{Table, emit, time};

fn table(entries: &[v1::LogEntry]) {
    let mut table = Table::new(&[
        "SEQ", "TIME", "LOOP", "EPOCH", "AGENT", "REQ", "ACTION", "TARGET", "OUTCOME", "TOKENS", "MS", "HASH",
    ]);
    for e in entries {
        table.row(vec![
            e.seq.to_string(),
            time(e.time_ms),
            e.loop_id.clone(),
            e.epoch.to_string(),
            e.agent.clone(),
            e.requirement.clone(),
            e.action.clone(),
            e.target.clone(),
            e.outcome.clone(),
            if e.tokens == 0 { String::new() } else { e.tokens.to_string() },
            e.duration_ms.to_string(),
            e.hash.chars().take(12).collect(),
        ]);
    }
    table.print();
}

pub(super) async fn run(
    cmd: LogCmd,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = ExecutionLogServiceClient::new(channel);
    match cmd {
        LogCmd::List { from, agent, loop_id, limit } => {
            let project_id = need(project)?;
            let entries = all_pages(limit, |page_token| {
                let mut client = client.clone();
                let request = v1::ListLogEntriesRequest {
                    project_id: project_id.clone(),
                    page_size: 1000,
                    page_token,
                    from_seq: from,
                    agent: agent.clone(),
                    loop_id: loop_id.clone(),
                };
                async move {
                    let page = client.list_log_entries(request).await?.into_inner();
                    Ok((page.entries, page.next_page_token))
                }
            })
            .await?;
            emit(output, &entries, || table(&entries))?;
            Ok(0)
        }
        LogCmd::Verify => {
            let verdict = reply(client.verify_log(v1::VerifyLogRequest { project_id: need(project)? }).await)?;
            emit(output, &verdict, || {
                if verdict.ok {
                    let noun = if verdict.entries == 1 { "entry" } else { "entries" };
                    println!("ok: {} {noun}, head {}", verdict.entries, verdict.head_hash);
                } else {
                    println!("BROKEN at entry {}: {}", verdict.first_bad_seq, verdict.problem);
                }
            })?;
            Ok(if verdict.ok { 0 } else { 1 })
        }
        LogCmd::Append { action, agent, target, outcome, detail } => {
            let request = v1::AppendLogEntryRequest {
                project_id: need(project)?,
                action,
                agent,
                target,
                outcome,
                detail,
                ..Default::default()
            };
            let entry = reply(client.append_log_entry(request).await)?;
            emit(output, &entry, || table(std::slice::from_ref(&entry)))?;
            Ok(0)
        }
    }
}
