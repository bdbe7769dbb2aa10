//! `maestroctl status` on a terminal: a live view of one project (the
//! requirements tree, contracts, the execution log, loops with progress),
//! redrawn whenever the project's watch stream or the event stream of one of
//! its running loops reports a change, and every two seconds; escalated loops can be approved, retried or aborted from it.
//! `app` holds the state and the keys, `view` draws it; this module reads the
//! daemon and drives the terminal.

pub(crate) mod app;
pub(crate) mod view;

use std::time::Duration;

use futures::StreamExt;
use maestro_shared::Conn;
use maestro_shared::v1::{
    self, contract_service_client::ContractServiceClient, execution_log_service_client::ExecutionLogServiceClient,
    loop_service_client::LoopServiceClient, requirement_service_client::RequirementServiceClient,
    system_service_client::SystemServiceClient, watch_service_client::WatchServiceClient,
};
use tokio::sync::mpsc;

use self::app::{Action, App, Decision, Snapshot};
use crate::client::{all_pages, reply, status_error};
use crate::commands::ExitStatus;

/// How many of the newest log entries the view keeps.
const LOG_ENTRIES: u64 = 500;

/// Reads the project's state as it is now. The log is read from where
/// `before` ended (only its newest entries the first time).
pub(crate) async fn fetch(conn: &Conn, project: &str, before: Option<&Snapshot>) -> anyhow::Result<Snapshot> {
    let revision = reply(SystemServiceClient::new(conn.clone()).get_info(v1::GetInfoRequest {}).await)?.revision;
    let requirements = all_pages(0, |page_token| {
        let mut client = RequirementServiceClient::new(conn.clone());
        let request = v1::ListRequirementsRequest {
            project_id: project.to_string(),
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        async move {
            let page = client.list_requirements(request).await?.into_inner();
            Ok((page.requirements, page.next_page_token))
        }
    })
    .await?;
    let contracts = all_pages(0, |page_token| {
        let mut client = ContractServiceClient::new(conn.clone());
        let request = v1::ListContractsRequest { project_id: project.to_string(), page_token, ..Default::default() };
        async move {
            let page = client.list_contracts(request).await?.into_inner();
            Ok((page.contracts, page.next_page_token))
        }
    })
    .await?;
    let mut log_client = ExecutionLogServiceClient::new(conn.clone());
    let from_seq = match before.and_then(|b| b.log.last()) {
        Some(last) => last.seq + 1,
        None => {
            let request = v1::VerifyLogRequest { project_id: project.to_string() };
            reply(log_client.verify_log(request).await)?.entries.saturating_sub(LOG_ENTRIES) + 1
        }
    };
    let fresh = crate::commands::log::list(&log_client, project, from_seq, "", "", 0).await?;
    let mut log: Vec<v1::LogEntry> = before.map(|b| b.log.clone()).unwrap_or_default();
    log.extend(fresh);
    let keep = usize::try_from(LOG_ENTRIES).unwrap_or(usize::MAX);
    if log.len() > keep {
        log.drain(..log.len() - keep);
    }
    let loops = all_pages(0, |page_token| {
        let mut client = LoopServiceClient::new(conn.clone());
        let request = v1::ListLoopsRequest { project_id: project.to_string(), page_size: 100, page_token };
        async move {
            let page = client.list_loops(request).await?.into_inner();
            Ok((page.loops, page.next_page_token))
        }
    })
    .await?;
    Ok(Snapshot { project: project.to_string(), revision, requirements, contracts, log, loops })
}

async fn decide(conn: &Conn, decision: Decision) -> String {
    let mut client = LoopServiceClient::new(conn.clone());
    let actor = crate::commands::run::actor();
    let result = match &decision {
        Decision::Approve(id) => client.approve_loop(v1::LoopActionRequest { loop_id: id.clone(), actor }).await,
        Decision::Abort(id) => client.abort_loop(v1::LoopActionRequest { loop_id: id.clone(), actor }).await,
        Decision::Retry(id, guidance) => {
            let request = v1::RetryLoopRequest { loop_id: id.clone(), guidance: guidance.clone(), actor };
            client.retry_loop(request).await
        }
    };
    match (result, decision) {
        (Ok(_), Decision::Approve(id)) => format!("{id} approved"),
        (Ok(_), Decision::Abort(id)) => format!("{id} aborted"),
        (Ok(_), Decision::Retry(id, _)) => format!("{id} retried with your guidance"),
        (Err(status), _) => status_error(status).to_string(),
    }
}

enum Event {
    Key(ratatui::crossterm::event::KeyEvent),
    Resize,
    Changed,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Follows the event stream of each loop still going, so the view redraws
/// as it moves (the watch stream covers the SSOT; loops live beside it).
struct LoopFollowers {
    conn: Conn,
    tx: mpsc::Sender<Event>,
    running: std::collections::HashMap<String, tokio::task::JoinHandle<()>>,
}

impl LoopFollowers {
    fn follow(&mut self, loops: &[v1::Loop]) {
        use v1::LoopState::{Aborted, Cancelled, Failed, Succeeded};
        self.running.retain(|_, task| !task.is_finished());
        for l in loops.iter().filter(|l| !matches!(l.state(), Succeeded | Failed | Aborted | Cancelled)) {
            if self.running.contains_key(&l.loop_id) {
                continue;
            }
            let (conn, tx) = (self.conn.clone(), self.tx.clone());
            let request = v1::StreamLoopEventsRequest { loop_id: l.loop_id.clone(), from_seq: l.last_seq + 1 };
            let task = tokio::spawn(async move {
                let Ok(stream) = LoopServiceClient::new(conn).stream_loop_events(request).await else { return };
                let mut stream = stream.into_inner();
                while let Some(Ok(_)) = stream.next().await {
                    if tx.send(Event::Changed).await.is_err() {
                        return;
                    }
                }
            });
            self.running.insert(l.loop_id.clone(), task);
        }
    }
}

impl Drop for LoopFollowers {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}

/// Runs the view until `q`.
pub(crate) async fn run(conn: Conn, project: &str, readonly: bool) -> anyhow::Result<ExitStatus> {
    let mut app = App::new(fetch(&conn, project, None).await?, readonly);
    app.colour = crate::color::stdout();
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    // Changes to the project wake the view.
    let watch = {
        let (conn, project, tx) = (conn.clone(), project.to_string(), tx.clone());
        tokio::spawn(async move {
            let request = v1::WatchRequest { project_id: project, prefix: String::new(), start_revision: 0 };
            let Ok(stream) = WatchServiceClient::new(conn).watch(request).await else { return };
            let mut stream = stream.into_inner();
            while let Some(Ok(_)) = stream.next().await {
                if tx.send(Event::Changed).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut followers = LoopFollowers { conn: conn.clone(), tx: tx.clone(), running: Default::default() };
    followers.follow(&app.snapshot.loops);
    let mut terminal = ratatui::init();
    // Keys come from a blocking reader thread (started once the terminal is
    // in raw mode, so no key waits for a newline); it ends with the process.
    let keys = tx.clone();
    std::thread::spawn(move || {
        use ratatui::crossterm::event::{Event as Term, KeyEventKind, read};
        while let Ok(event) = read() {
            let sent = match event {
                Term::Key(key) if key.kind == KeyEventKind::Press => keys.blocking_send(Event::Key(key)),
                Term::Resize(..) => keys.blocking_send(Event::Resize),
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let result = async {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            app.now_ms = now_ms();
            terminal.draw(|frame| view::draw(frame, &app))?;
            let refresh = tokio::select! {
                event = rx.recv() => match event {
                    Some(Event::Key(key)) => match app.key(key) {
                        Action::Quit => return Ok(0),
                        Action::Decide(decision) => {
                            app.message = decide(&conn, decision).await;
                            true
                        }
                        Action::None => false,
                    },
                    Some(Event::Resize) => false,
                    Some(Event::Changed) => {
                        // A burst of changes is one refresh.
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        while let Ok(Event::Changed) = rx.try_recv() {}
                        true
                    }
                    None => return Ok(0),
                },
                _ = tick.tick() => true,
            };
            if refresh {
                match fetch(&conn, project, Some(&app.snapshot)).await {
                    Ok(snapshot) => {
                        app.update(snapshot);
                        followers.follow(&app.snapshot.loops);
                    }
                    Err(error) => app.message = format!("cannot refresh: {error:#}"),
                }
            }
        }
    }
    .await;
    ratatui::restore();
    watch.abort();
    result
}

/// Prints the project's state once (not a terminal, or `-o`).
pub(crate) fn print(snapshot: &Snapshot) {
    let done = snapshot.requirements.iter().filter(|r| r.status() == v1::RequirementStatus::Done).count();
    println!(
        "project {}: {done}/{} requirements done, {} contracts, {} log entries shown, {} loops",
        snapshot.project,
        snapshot.requirements.len(),
        snapshot.contracts.len(),
        snapshot.log.len(),
        snapshot.loops.len()
    );
    for l in &snapshot.loops {
        println!(
            "  {} {} {} epoch {} ({}/{} requirements, {} tokens)",
            l.loop_id,
            l.state().as_str_name().trim_start_matches("LOOP_STATE_"),
            l.phase,
            l.epoch,
            l.requirements_done,
            l.requirements_total,
            l.tokens
        );
    }
}

#[cfg(test)]
mod tests;
