//! `maestro.v1.LoopService`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use maestro_shared::v1::{self, loop_service_server::LoopService};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::status::IntoStatus;
use crate::autoloop::fsm::Decision;
use crate::autoloop::manager::{LoopManager, StartRequest};
use crate::ssot::Ssot;
use crate::ssot::loops::{LoopEvent, LoopRecord, LoopState};

pub(crate) struct Loops(pub(crate) Arc<LoopManager>);

fn state(state: LoopState) -> v1::LoopState {
    match state {
        LoopState::Queued => v1::LoopState::Queued,
        LoopState::Running => v1::LoopState::Running,
        LoopState::Paused => v1::LoopState::Paused,
        LoopState::Escalated => v1::LoopState::Escalated,
        LoopState::Succeeded => v1::LoopState::Succeeded,
        LoopState::Failed => v1::LoopState::Failed,
        LoopState::Aborted => v1::LoopState::Aborted,
        LoopState::Cancelled => v1::LoopState::Cancelled,
    }
}

fn to_wire(r: LoopRecord) -> v1::Loop {
    let running = !r.state.is_final() && r.state != LoopState::Queued;
    v1::Loop {
        loop_id: r.id,
        project_id: r.project,
        state: state(r.state).into(),
        phase: if running { r.phase.as_str().to_string() } else { String::new() },
        epoch: r.epoch,
        retries: r.retries,
        retry_budget: r.retry_budget,
        reason: r.reason,
        requirement_id: r.root,
        task: r.task,
        workspace: r.workspace,
        tokens: r.tokens,
        requirements_done: r.done,
        requirements_total: r.total,
        last_seq: r.last_seq,
        create_time_ms: r.create_time_ms,
        update_time_ms: r.update_time_ms,
        demo: r.demo,
        result_branch: r.result_branch,
        result_on_current_branch: r.result_on_current_branch,
        result_take: r.result_take,
        token_budget: r.token_budget,
        time_budget_ms: r.time_budget_ms,
    }
}

fn event_to_wire(loop_id: &str, e: LoopEvent) -> v1::LoopEvent {
    v1::LoopEvent {
        loop_id: loop_id.to_string(),
        seq: e.seq,
        time_ms: e.time_ms,
        kind: e.kind.as_str().to_string(),
        phase: e.phase.map(|p| p.as_str().to_string()).unwrap_or_default(),
        epoch: e.epoch,
        agent: e.agent,
        requirement_id: e.requirement,
        message: e.message,
        state: e.state.map_or(v1::LoopState::Unspecified, state).into(),
        requirements_done: e.done,
        requirements_total: e.total,
        tokens: e.tokens,
    }
}

/// Who answers a loop: the authenticated user (what the client says it is only without one).
fn actor<T>(request: &Request<T>, claimed: &str) -> String {
    match request.extensions().get::<super::auth::Caller>() {
        Some(caller) => caller.0.name.clone(),
        None if claimed.is_empty() => "someone".into(),
        None => claimed.to_string(),
    }
}

fn is_final(event: &LoopEvent) -> bool {
    event.state.is_some_and(LoopState::is_final)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::LoopEvent, Status>> + Send>>;

/// What a live follower has: the loop's broadcast, the last seq sent, events
/// read back from the SSOT to fill a gap, and whether the final one went out.
struct Follower {
    ssot: Arc<Ssot>,
    loop_id: String,
    receiver: broadcast::Receiver<LoopEvent>,
    last: u64,
    pending: VecDeque<LoopEvent>,
    closed: bool,
    done: bool,
}

/// Live events of a loop running in this daemon: straight from its task;
/// a follower that lags (or a gap) reads the missing ones from the SSOT.
fn live_from_loop(
    ssot: Arc<Ssot>,
    loop_id: String,
    receiver: broadcast::Receiver<LoopEvent>,
    last: u64,
) -> EventStream {
    let follower = Follower { ssot, loop_id, receiver, last, pending: VecDeque::new(), closed: false, done: false };
    futures::stream::unfold(follower, |mut f| async move {
        loop {
            if f.done {
                return None;
            }
            if let Some(event) = f.pending.pop_front() {
                if event.seq <= f.last {
                    continue;
                }
                f.last = event.seq;
                f.done = is_final(&event);
                return Some((Ok(event_to_wire(&f.loop_id, event)), f));
            }
            if f.closed {
                // The loop's task ended here (loop over, or the daemon stopping); the
                // rest is in the SSOT. Without a final event the client reconnects.
                return None;
            }
            match f.receiver.recv().await {
                Ok(event) if event.seq <= f.last => {}
                Ok(event) if event.seq == f.last + 1 => f.pending.push_back(event),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    match f.ssot.loop_events(&f.loop_id, f.last + 1).await {
                        Ok((missing, _)) => f.pending.extend(missing),
                        Err(e) => {
                            f.done = true;
                            return Some((Err(super::status::to_status(e)), f));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    f.closed = true;
                    if let Ok((rest, _)) = f.ssot.loop_events(&f.loop_id, f.last + 1).await {
                        f.pending.extend(rest);
                    }
                }
            }
        }
    })
    .boxed()
}

/// Live events of a loop no task runs here yet (queued): from the store's watch.
fn live_from_store(ssot: &Ssot, loop_id: String, revision: u64, last: u64) -> Result<EventStream, Status> {
    let live = ssot.follow_loop_events(&loop_id, revision).status()?;
    // Ends right after the final event (without waiting for another from the watch).
    Ok(futures::stream::unfold((live, last, false), move |(mut inner, mut last, done)| {
        let id = loop_id.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match inner.next().await? {
                    Ok(event) if event.seq <= last => continue,
                    Ok(event) => {
                        last = event.seq;
                        let ended = is_final(&event);
                        return Some((Ok(event_to_wire(&id, event)), (inner, last, ended)));
                    }
                    Err(e) => return Some((Err(super::status::to_status(e)), (inner, last, true))),
                }
            }
        }
    })
    .boxed())
}

#[tonic::async_trait]
impl LoopService for Loops {
    async fn start_loop(&self, request: Request<v1::StartLoopRequest>) -> Result<Response<v1::Loop>, Status> {
        // On this machine: a loopback TCP peer, or a peer on the daemon's Unix socket.
        let loopback = request.remote_addr().is_some_and(|a| a.ip().is_loopback())
            || request.extensions().get::<tonic::transport::server::UdsConnectInfo>().is_some();
        let caller = request.extensions().get::<super::auth::Caller>().cloned();
        let r = request.into_inner();
        // Where agents work is the daemon admin's choice: a new project (demo or not), or a
        // workspace other than the project's own, needs the admin role over the whole daemon.
        if let Some(caller) = caller
            && caller.0.role_in(crate::auth::ALL_PROJECTS) < Some(crate::auth::Role::Admin)
        {
            match self.0.ssot().get_project(&r.project_id).await {
                Ok(project) if !r.workspace.is_empty() && r.workspace != project.value.workspace => {
                    return Err(Status::permission_denied(format!(
                        "user {} may not move project {} to another workspace: only a daemon admin sets workspaces \
                         (leave --workspace out to use the project's own)",
                        caller.0.name, r.project_id
                    )));
                }
                Ok(_) => {}
                Err(crate::ssot::SsotError::NotFound { .. }) => {
                    return Err(Status::permission_denied(format!(
                        "user {} may not create project {}: ask a daemon admin to create it (maestroctl project create)",
                        caller.0.name, r.project_id
                    )));
                }
                Err(error) => return Err(super::status::to_status(error)),
            }
        }
        if !r.keys.is_empty() && !loopback {
            return Err(Status::invalid_argument(
                "keys: API keys are accepted only from a client on the daemon's machine; give the daemon its keys (environment or ~/.maestro/credentials.yaml)",
            ));
        }
        let start = StartRequest {
            project: r.project_id,
            task: r.task,
            demo: r.demo,
            workspace: r.workspace,
            keys: r.keys.into_iter().collect(),
            record: r.record,
        };
        Ok(Response::new(to_wire(self.0.start(start).await.status()?)))
    }

    async fn get_loop(&self, request: Request<v1::GetLoopRequest>) -> Result<Response<v1::Loop>, Status> {
        Ok(Response::new(to_wire(self.0.get(&request.into_inner().loop_id).await.status()?)))
    }

    async fn list_loops(
        &self,
        request: Request<v1::ListLoopsRequest>,
    ) -> Result<Response<v1::ListLoopsResponse>, Status> {
        let r = request.into_inner();
        let page = self.0.list(&r.project_id, r.page_size, &r.page_token).await.status()?;
        Ok(Response::new(v1::ListLoopsResponse {
            loops: page.items.into_iter().map(|l| to_wire(l.value)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn cancel_loop(&self, request: Request<v1::LoopActionRequest>) -> Result<Response<v1::Loop>, Status> {
        Ok(Response::new(to_wire(self.0.cancel(&request.into_inner().loop_id).await.status()?)))
    }

    async fn pause_loop(&self, request: Request<v1::LoopActionRequest>) -> Result<Response<v1::Loop>, Status> {
        Ok(Response::new(to_wire(self.0.pause(&request.into_inner().loop_id).await.status()?)))
    }

    async fn resume_loop(&self, request: Request<v1::LoopActionRequest>) -> Result<Response<v1::Loop>, Status> {
        Ok(Response::new(to_wire(self.0.resume(&request.into_inner().loop_id).await.status()?)))
    }

    async fn approve_loop(&self, request: Request<v1::LoopActionRequest>) -> Result<Response<v1::Loop>, Status> {
        let who = actor(&request, &request.get_ref().actor);
        let r = request.into_inner();
        let decision = Decision::Approve { actor: who };
        Ok(Response::new(to_wire(self.0.decide(&r.loop_id, decision).await.status()?)))
    }

    async fn retry_loop(&self, request: Request<v1::RetryLoopRequest>) -> Result<Response<v1::Loop>, Status> {
        let who = actor(&request, &request.get_ref().actor);
        let r = request.into_inner();
        if r.guidance.len() > 16 << 10 {
            return Err(Status::invalid_argument("guidance: at most 16 KiB"));
        }
        let decision = Decision::Retry { guidance: r.guidance, actor: who };
        Ok(Response::new(to_wire(self.0.decide(&r.loop_id, decision).await.status()?)))
    }

    async fn abort_loop(&self, request: Request<v1::LoopActionRequest>) -> Result<Response<v1::Loop>, Status> {
        let who = actor(&request, &request.get_ref().actor);
        let r = request.into_inner();
        let decision = Decision::Abort { actor: who };
        Ok(Response::new(to_wire(self.0.decide(&r.loop_id, decision).await.status()?)))
    }

    type StreamLoopEventsStream = EventStream;

    async fn stream_loop_events(
        &self,
        request: Request<v1::StreamLoopEventsRequest>,
    ) -> Result<Response<Self::StreamLoopEventsStream>, Status> {
        let r = request.into_inner();
        let ssot = self.0.ssot().clone();
        // Subscribe before reading the past, so nothing falls in between.
        let subscription = self.0.subscribe(&r.loop_id).await;
        let record = ssot.get_loop(&r.loop_id).await.status()?.value;
        let (past, revision) = ssot.loop_events(&r.loop_id, r.from_seq).await.status()?;
        let last = past.last().map_or(r.from_seq.max(1) - 1, |e| e.seq);
        let ended = past.last().is_some_and(is_final) || (record.state.is_final() && last >= record.last_seq);
        let loop_id = r.loop_id.clone();
        let replay = futures::stream::iter(past.into_iter().map({
            let id = loop_id.clone();
            move |e| Ok(event_to_wire(&id, e))
        }));
        if ended {
            return Ok(Response::new(replay.boxed()));
        }
        let live: EventStream = match subscription {
            Some(receiver) => live_from_loop(ssot, loop_id, receiver, last),
            None => live_from_store(&ssot, loop_id, revision, last)?,
        };
        Ok(Response::new(replay.chain(live).boxed()))
    }
}
