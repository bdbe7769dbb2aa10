//! `maestroctl run`, `demo` and `attach`: start a loop and follow its events
//! until it ends. On a terminal a status line shows phase, epoch, a progress
//! bar of requirements, tokens and time; otherwise plain lines, or one JSON
//! event per line with `--output json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures::StreamExt;
use maestro_shared::Conn;
use maestro_shared::v1::{self, LoopState, loop_service_client::LoopServiceClient};
use tonic::Code;

use super::ExitStatus;
use super::init::{ensure_project, find_workspace};
use crate::cli::{FollowArgs, Output, RunArgs};
use crate::client::{reply, status_error};
use crate::output;

/// The demo's task unless one is given.
const DEMO_TASK: &str = "Build a to-do service: a REST API, a command-line client, and tests";

/// Whether `task` names the demo's own task (spaces, case and a final full stop aside).
fn is_demo_task(task: &str) -> bool {
    let words =
        |text: &str| text.trim().trim_end_matches('.').to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ");
    task.trim().is_empty() || words(task) == words(DEMO_TASK)
}

/// The exit code for a loop's state (None while it runs).
pub(crate) fn exit_code(state: LoopState) -> Option<ExitStatus> {
    match state {
        LoopState::Succeeded => Some(0),
        LoopState::Escalated => Some(2),
        LoopState::Failed | LoopState::Aborted | LoopState::Cancelled => Some(3),
        _ => None,
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) })
}

pub(super) async fn run(
    channel: Conn,
    args: RunArgs,
    project: Option<&str>,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = LoopServiceClient::new(channel.clone());
    let request = if args.demo {
        let dir = absolute(&args.workspace.clone().unwrap_or_else(|| PathBuf::from("maestro-demo")))?;
        if dir.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(anyhow!("{} exists and is not empty; pick a new folder with --workspace", dir.display()));
        }
        if let Some(task) = args.task.as_deref().filter(|task| !is_demo_task(task)) {
            return Err(anyhow!(
                "the demo builds only its own task ({DEMO_TASK:?}), not {task:?}; run your task with a model: maestroctl run {}",
                shlex::try_quote(task).unwrap_or_default()
            ));
        }
        v1::StartLoopRequest {
            project_id: project.unwrap_or_default().to_string(),
            task: DEMO_TASK.to_string(),
            demo: true,
            workspace: dir.display().to_string(),
            ..Default::default()
        }
    } else {
        let task = args.task.clone().filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            anyhow!("say what to build: maestroctl run \"Build a to-do REST API\" (or try maestroctl run --demo)")
        })?;
        let dir = match &args.workspace {
            Some(dir) => absolute(dir)?,
            None => find_workspace(&std::env::current_dir()?).ok_or_else(|| {
                anyhow!("no Maestro project here (no .maestro/config.yaml at or above this folder); run `maestroctl init` or pass --workspace DIR")
            })?,
        };
        let project_id = ensure_project(channel.clone(), &dir, project, true).await?;
        let workspace = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
        let record = match &args.record {
            Some(file) => {
                let file = absolute(file)?;
                let parent = file.parent().and_then(|p| p.canonicalize().ok()).unwrap_or_default();
                let inside = parent.strip_prefix(&workspace).map_err(|_| {
                    anyhow!(
                        "--record {}: the recording goes inside the project folder {}",
                        file.display(),
                        workspace.display()
                    )
                })?;
                inside.join(file.file_name().unwrap_or_default()).display().to_string()
            }
            None => String::new(),
        };
        v1::StartLoopRequest {
            project_id,
            task,
            demo: false,
            workspace: workspace.display().to_string(),
            keys: if crate::client::daemon_is_local() { model_keys(&workspace) } else { Default::default() },
            record,
        }
    };
    let started = reply(client.start_loop(request).await)?;
    if args.detach {
        match output {
            Output::Json | Output::Yaml => output::item(output, &started)?,
            Output::Table => println!("{}", started.loop_id),
        }
        return Ok(0);
    }
    if output == Output::Table {
        eprintln!(
            "{} started for project {} in {} (root requirement {}); Ctrl-C detaches{}",
            started.loop_id,
            started.project_id,
            started.workspace,
            started.requirement_id,
            if args.follow.cancel_on_exit { " and cancels it" } else { "" }
        );
    }
    let code = follow(channel.clone(), &started.loop_id, 0, output, args.follow).await?;
    if args.demo && code == 0 && output == Output::Table {
        println!("\nThe demo project is in {}", started.workspace);
        println!("Run its tests: cd {} && python3 -m unittest discover -s tests -v", started.workspace);
    }
    if code == 0 {
        where_the_work_is(channel, &started.loop_id, output).await?;
    }
    Ok(code)
}

/// The last line after a loop succeeded: which branch holds the work and the
/// git command that takes it onto yours (on stderr, like the other lines for
/// people: the last line on stdout stays the loop's outcome, for scripts).
async fn where_the_work_is(channel: Conn, loop_id: &str, output: Output) -> anyhow::Result<()> {
    if output != Output::Table {
        return Ok(());
    }
    let mut client = LoopServiceClient::new(channel);
    let l = reply(client.get_loop(v1::GetLoopRequest { loop_id: loop_id.to_string() }).await)?;
    if l.state() != LoopState::Succeeded || l.result_branch.is_empty() {
        return Ok(());
    }
    let workspace = shlex::try_quote(&l.workspace).map(|w| w.into_owned()).unwrap_or_else(|_| l.workspace.clone());
    if l.result_on_current_branch {
        eprintln!("The work is committed on your branch {} (git -C {} log --oneline)", l.result_branch, workspace);
    } else {
        eprintln!(
            "The work is on branch {}; take it onto yours: git -C {} {}",
            l.result_branch,
            workspace,
            l.result_take.strip_prefix("git ").unwrap_or(&l.result_take)
        );
    }
    Ok(())
}

/// The API keys the project's models need, from this environment: what
/// `llm.api_key_env` names (and the providers' default variables).
fn model_keys(workspace: &Path) -> std::collections::HashMap<String, String> {
    let mut names = vec!["OPENAI_API_KEY".to_string(), "ANTHROPIC_API_KEY".to_string()];
    if let Ok(text) = std::fs::read_to_string(workspace.join(".maestro/config.yaml"))
        && let Ok(config) = yaml_serde::from_str::<serde_json::Value>(&text)
    {
        let llm = &config["llm"];
        names.extend(llm["api_key_env"].as_str().map(String::from));
        if let Some(roles) = llm["roles"].as_object() {
            names.extend(roles.values().filter_map(|r| r["api_key_env"].as_str().map(String::from)));
        }
    }
    names
        .into_iter()
        .filter_map(|name| std::env::var(&name).ok().filter(|v| !v.is_empty()).map(|value| (name, value)))
        .collect()
}

/// The status line drawn under the events on a terminal.
struct StatusLine {
    enabled: bool,
    started: Instant,
    shown: bool,
}

impl StatusLine {
    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            self.shown = false;
        }
    }

    fn draw(&mut self, event: &v1::LoopEvent) {
        if !self.enabled {
            return;
        }
        let (done, total) = (event.requirements_done, event.requirements_total.max(1));
        let width = 20;
        let filled = (done as usize * width) / total as usize;
        let bar: String = "█".repeat(filled) + &"░".repeat(width - filled);
        let elapsed = self.started.elapsed().as_secs();
        let tokens = if event.tokens >= 10_000 {
            format!("{:.1}k", event.tokens as f64 / 1000.0)
        } else {
            event.tokens.to_string()
        };
        eprint!(
            "\r\x1b[2K{} epoch {} {bar} {done}/{} requirements · {tokens} tokens · {}:{:02}",
            if event.phase.is_empty() { "…" } else { &event.phase },
            event.epoch,
            event.requirements_total,
            elapsed / 60,
            elapsed % 60
        );
        let _ = std::io::stderr().flush();
        self.shown = true;
    }
}

fn line(event: &v1::LoopEvent) -> String {
    let who = if event.agent.is_empty() { String::new() } else { format!(" {}", event.agent) };
    let requirement =
        if event.requirement_id.is_empty() { String::new() } else { format!(" [{}]", event.requirement_id) };
    let what = match event.kind.as_str() {
        "phase" if event.message.is_empty() => format!("── {}", event.phase),
        "phase" => format!("── {} ({})", event.phase, event.message),
        _ => format!("{:<14}{who}{requirement} {}", event.kind, event.message),
    };
    format!("#{:<4} {:<8} {what}", event.seq, event.phase)
}

/// Follows `loop_id` from `from_seq` until it ends (or escalates); reconnects
/// with the last sequence number when the connection drops.
pub(crate) async fn follow(
    channel: Conn,
    loop_id: &str,
    from_seq: u64,
    output: Output,
    args: FollowArgs,
) -> anyhow::Result<ExitStatus> {
    let mut client = LoopServiceClient::new(channel);
    let mut next = from_seq;
    let mut status = StatusLine {
        enabled: output == Output::Table && crate::color::capable(&std::io::stderr()),
        started: Instant::now(),
        shown: false,
    };
    let mut reconnecting_since: Option<Instant> = None;
    // Registered now, so Ctrl-C is ours from here on, also while reconnecting.
    let mut interrupt = Interrupt::new(loop_id, args.cancel_on_exit)?;
    loop {
        let request = v1::StreamLoopEventsRequest { loop_id: loop_id.to_string(), from_seq: next };
        let connect = tokio::select! {
            connect = client.stream_loop_events(request) => connect,
            () = interrupt.recv() => match interrupt.handle(&mut client).await? {
                Some(code) => return Ok(code),
                None => continue,
            },
        };
        let mut stream = match connect {
            Ok(stream) => {
                reconnecting_since = None;
                stream.into_inner()
            }
            Err(e) if matches!(e.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) => {
                let since = *reconnecting_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(120) {
                    return Err(anyhow!(
                        "lost the daemon for 2 minutes; follow again with: maestroctl attach {loop_id} --from-seq {next}"
                    ));
                }
                // Another daemon of --server's list serves the same loop (its events are in the SSOT).
                if let Some((channel, server)) = crate::client::failover().await
                    && let Ok(bearer) = maestro_shared::Bearer::new(&crate::client::token(false))
                {
                    if output == Output::Table {
                        eprintln!("maestroctl: following {loop_id} through {server} from event {next}");
                    }
                    client = LoopServiceClient::new(bearer.connect(channel));
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = interrupt.recv() => if let Some(code) = interrupt.handle(&mut client).await? {
                        return Ok(code);
                    },
                }
                continue;
            }
            Err(e) => return Err(status_error(e)),
        };
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = interrupt.recv() => {
                    status.clear();
                    match interrupt.handle(&mut client).await? {
                        Some(code) => return Ok(code),
                        None => continue,
                    }
                }
            };
            match item {
                Some(Ok(event)) => {
                    next = event.seq + 1;
                    status.clear();
                    match output {
                        Output::Json | Output::Yaml => output::item(output, &event)?,
                        Output::Table => println!("{}", line(&event)),
                    }
                    let state = LoopState::try_from(event.state).unwrap_or(LoopState::Unspecified);
                    if event.kind == "escalated" {
                        let current =
                            reply(client.get_loop(v1::GetLoopRequest { loop_id: loop_id.to_string() }).await)?;
                        if current.state() == LoopState::Escalated {
                            if output == Output::Table {
                                eprintln!(
                                    "maestroctl: {loop_id} needs you: maestroctl approve {loop_id} | retry {loop_id} --guidance \"…\" | abort {loop_id}"
                                );
                            }
                            return Ok(2);
                        }
                    }
                    if let Some(code) = exit_code(state).filter(|_| state != LoopState::Escalated) {
                        return Ok(code);
                    }
                    status.draw(&event);
                }
                Some(Err(e))
                    if !matches!(e.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal) =>
                {
                    status.clear();
                    return Err(status_error(e));
                }
                // The stream broke or ended early (daemon restart): pick up where we were.
                _ => {
                    status.clear();
                    let current = client.get_loop(v1::GetLoopRequest { loop_id: loop_id.to_string() }).await;
                    if let Ok(current) = current {
                        let current = current.into_inner();
                        if current.last_seq < next
                            && let Some(code) = exit_code(current.state())
                        {
                            return Ok(code);
                        }
                    }
                    if output == Output::Table {
                        eprintln!("maestroctl: connection to the daemon lost; reconnecting from event {next}");
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    break;
                }
            }
        }
    }
}

/// The exit code after Ctrl-C detached from a loop.
const DETACHED: ExitStatus = 130;

/// What Ctrl-C does while following a loop: detach (the loop keeps running)
/// or, with `--cancel-on-exit`, cancel the loop and follow it to its end.
struct Interrupt {
    signal: tokio::signal::unix::Signal,
    loop_id: String,
    cancel_on_exit: bool,
    cancelling: bool,
}

impl Interrupt {
    fn new(loop_id: &str, cancel_on_exit: bool) -> anyhow::Result<Interrupt> {
        let signal =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("cannot catch Ctrl-C")?;
        Ok(Interrupt { signal, loop_id: loop_id.to_string(), cancel_on_exit, cancelling: false })
    }

    /// The next Ctrl-C; once a cancel is under way, further ones are ignored.
    async fn recv(&mut self) {
        loop {
            self.signal.recv().await;
            if !self.cancelling {
                return;
            }
        }
    }

    /// Acts on a Ctrl-C: `Some(exit code)` to return now, `None` to keep following.
    async fn handle(&mut self, client: &mut LoopServiceClient<Conn>) -> anyhow::Result<Option<ExitStatus>> {
        let loop_id = &self.loop_id;
        if !self.cancel_on_exit {
            eprintln!("maestroctl: detached; {loop_id} keeps running (follow it with: maestroctl attach {loop_id})");
            // As other tools interrupted by Ctrl-C do (128 + SIGINT): the loop's outcome is not known yet.
            return Ok(Some(DETACHED));
        }
        eprintln!("maestroctl: cancelling {loop_id}…");
        let request = v1::LoopActionRequest { loop_id: loop_id.clone(), actor: actor() };
        match client.cancel_loop(request).await {
            Ok(_) => {}
            // It ended meanwhile: following shows how.
            Err(e) if e.code() == Code::FailedPrecondition => {}
            Err(e) => {
                return Err(status_error(e)).with_context(|| format!("{loop_id} was not cancelled"));
            }
        }
        self.cancelling = true;
        Ok(None)
    }
}

/// Who is acting, for the log.
pub(crate) fn actor() -> String {
    std::env::var("USER").unwrap_or_else(|_| "maestroctl".into())
}

pub(super) async fn attach(
    channel: Conn,
    loop_id: &str,
    from_seq: u64,
    args: FollowArgs,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let code = follow(channel.clone(), loop_id, from_seq, output, args).await?;
    if code == 0 {
        where_the_work_is(channel, loop_id, output).await?;
    }
    Ok(code)
}
