//! `maestroctl log …`: the execution log.

use maestro_shared::Conn;
use maestro_shared::v1::{self, execution_log_service_client::ExecutionLogServiceClient};

use super::{ExitStatus, need};
use crate::cli::{LogCmd, Output};
use crate::client::{all_pages, reply};
use crate::output::{Table, emit, item, time};

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

/// Every entry of `project` from `from_seq` on (of `agent` and `loop_id`
/// when given), page by page; at most `limit` (0: all).
pub(crate) async fn list(
    client: &ExecutionLogServiceClient<Conn>,
    project: &str,
    from_seq: u64,
    agent: &str,
    loop_id: &str,
    limit: usize,
) -> anyhow::Result<Vec<v1::LogEntry>> {
    all_pages(limit, |page_token| {
        let mut client = client.clone();
        let request = v1::ListLogEntriesRequest {
            project_id: project.to_string(),
            page_size: 1000,
            page_token,
            from_seq,
            agent: agent.to_string(),
            loop_id: loop_id.to_string(),
        };
        async move {
            let page = client.list_log_entries(request).await?.into_inner();
            Ok((page.entries, page.next_page_token))
        }
    })
    .await
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
            let entries = list(&client, &need(project)?, from, &agent, &loop_id, limit).await?;
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

/// Which entries `logs` shows.
pub(super) struct Filter {
    pub(super) agent: String,
    pub(super) requirement: String,
    pub(super) loop_id: String,
}

/// Entries from `from_seq` on that pass the filter (agent and loop are
/// filtered by the daemon), and the last sequence number read.
async fn entries_from(
    client: &ExecutionLogServiceClient<Conn>,
    project: &str,
    filter: &Filter,
    from_seq: u64,
) -> anyhow::Result<(Vec<v1::LogEntry>, Option<u64>)> {
    let entries = list(client, project, from_seq, &filter.agent, &filter.loop_id, 0).await?;
    let last = entries.last().map(|e| e.seq);
    let kept = entries.into_iter().filter(|e| filter.requirement.is_empty() || e.requirement == filter.requirement);
    Ok((kept.collect(), last))
}

fn line(e: &v1::LogEntry) -> String {
    let requirement = if e.requirement.is_empty() { String::new() } else { format!(" [{}]", e.requirement) };
    let tokens = if e.tokens == 0 { String::new() } else { format!(" ({} tokens)", e.tokens) };
    let detail = if e.detail.is_empty() { String::new() } else { format!(" — {}", e.detail) };
    format!(
        "#{:<5} {} {} e{} {}{requirement} {} {} → {}{tokens}{detail}",
        e.seq,
        crate::output::timestamp(e.time_ms),
        if e.loop_id.is_empty() { "-" } else { e.loop_id.as_str() },
        e.epoch,
        e.agent,
        e.action,
        e.target,
        e.outcome
    )
}

fn show(entries: &[v1::LogEntry], output: Output) -> anyhow::Result<()> {
    for entry in entries {
        match output {
            Output::Json | Output::Yaml => item(output, entry)?,
            Output::Table => println!("{}", line(entry)),
        }
    }
    Ok(())
}

/// How far back `logs` looks for the newest matching entries.
const LOOK_BACK: u64 = 10_000;

/// `maestroctl logs`: the newest `lines` matching entries, then (with
/// `follow`) new ones as they are appended, until Ctrl-C.
pub(super) async fn tail(
    channel: Conn,
    project: &str,
    filter: Filter,
    lines: usize,
    follow: bool,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let client = ExecutionLogServiceClient::new(channel);
    let total =
        reply(client.clone().verify_log(v1::VerifyLogRequest { project_id: project.to_string() }).await)?.entries;
    let (mut entries, last) = entries_from(&client, project, &filter, total.saturating_sub(LOOK_BACK) + 1).await?;
    let mut next = last.map_or(total + 1, |seq| seq + 1).max(total + 1);
    entries.drain(..entries.len().saturating_sub(lines));
    show(&entries, output)?;
    if !follow {
        return Ok(0);
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
        let (fresh, last) = entries_from(&client, project, &filter, next).await?;
        if let Some(last) = last {
            next = last + 1;
        }
        show(&fresh, output)?;
    }
}
