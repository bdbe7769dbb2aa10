//! `maestroctl loop list|show` and the loop actions (approve, retry, abort,
//! cancel, pause, resume).

use maestro_shared::Conn;
use maestro_shared::v1::{self, loop_service_client::LoopServiceClient};

use super::ExitStatus;
use super::run::actor;
use super::usage::Usage;
use crate::cli::{LoopCmd, Output};
use crate::client::{all_pages, reply};
use crate::output::{Table, emit, time};

fn state_name(l: &v1::Loop) -> &'static str {
    l.state().as_str_name().trim_start_matches("LOOP_STATE_")
}

fn show_one(output: Output, l: &v1::Loop) -> anyhow::Result<()> {
    emit(output, l, || {
        println!("{} ({}) {} — project {}", l.loop_id, state_name(l), l.task, l.project_id);
        if !l.phase.is_empty() {
            println!("  phase {} of epoch {}, retries {}/{}", l.phase, l.epoch, l.retries, l.retry_budget);
        }
        println!(
            "  requirements {}/{} done (root {}), {} tokens, {} events",
            l.requirements_done, l.requirements_total, l.requirement_id, l.tokens, l.last_seq
        );
        println!("  workspace {}", l.workspace);
        if !l.reason.is_empty() {
            println!("  reason: {}", l.reason);
        }
    })
}

pub(super) async fn run(
    cmd: LoopCmd,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = LoopServiceClient::new(channel.clone());
    match cmd {
        LoopCmd::List { limit } => {
            let project = project.unwrap_or_default().to_string();
            let loops = all_pages(limit, |page_token| {
                let mut client = client.clone();
                let request = v1::ListLoopsRequest { project_id: project.clone(), page_size: 100, page_token };
                async move {
                    let page = client.list_loops(request).await?.into_inner();
                    Ok((page.loops, page.next_page_token))
                }
            })
            .await?;
            emit(output, &loops, || {
                let mut table =
                    Table::new(&["LOOP", "PROJECT", "STATE", "PHASE", "EPOCH", "DONE", "TOKENS", "CREATED", "TASK"]);
                for l in &loops {
                    table.row(vec![
                        l.loop_id.clone(),
                        l.project_id.clone(),
                        state_name(l).to_string(),
                        l.phase.clone(),
                        l.epoch.to_string(),
                        format!("{}/{}", l.requirements_done, l.requirements_total),
                        l.tokens.to_string(),
                        time(l.create_time_ms),
                        l.task.chars().take(50).collect(),
                    ]);
                }
                table.print();
            })?;
            Ok(0)
        }
        LoopCmd::Show { loop_id } => {
            let l = reply(client.get_loop(v1::GetLoopRequest { loop_id }).await)?;
            let usage = Usage::fetch(channel, &l.project_id, &l.loop_id).await?;
            match output {
                Output::Json | Output::Yaml => {
                    let mut value = serde_json::to_value(&l)?;
                    value["usage"] = serde_json::to_value(&usage)?;
                    crate::output::emit(output, &value, || {})?;
                }
                Output::Table => {
                    show_one(output, &l)?;
                    println!("  model usage:");
                    usage.print();
                }
            }
            Ok(0)
        }
    }
}

pub(super) enum Action {
    Approve,
    Retry(String),
    Abort,
    Cancel,
    Pause,
    Resume,
}

pub(super) async fn act(channel: Conn, loop_id: String, action: Action, output: Output) -> anyhow::Result<ExitStatus> {
    let mut client = LoopServiceClient::new(channel.clone());
    let request = v1::LoopActionRequest { loop_id: loop_id.clone(), actor: actor() };
    let l = match action {
        Action::Approve => reply(client.approve_loop(request).await)?,
        Action::Retry(guidance) => {
            reply(client.retry_loop(v1::RetryLoopRequest { loop_id, guidance, actor: actor() }).await)?
        }
        Action::Abort => reply(client.abort_loop(request).await)?,
        Action::Cancel => reply(client.cancel_loop(request).await)?,
        Action::Pause => reply(client.pause_loop(request).await)?,
        Action::Resume => reply(client.resume_loop(request).await)?,
    };
    show_one(output, &l)?;
    Ok(0)
}
