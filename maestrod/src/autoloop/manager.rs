//! Starts, queues, resumes and steers loops. One active loop per project;
//! further loops wait in the SSOT as QUEUED and start, oldest first, when the
//! active one ends.
//!
//! Several daemons may share one SSOT. A loop runs on the daemon that owns its
//! project's run (`ssot::owners`), on that daemon's lease; every write of the
//! loop is fenced by it (`ssot::fence`). A daemon adopts each unfinished loop
//! nobody owns: at start, whenever a run is released (a loop ended, or a
//! daemon's lease expired), and every few TTLs; it resumes it from its last
//! recorded phase, as after a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Mutex, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::control::{Control, PendingDecision};
use super::demo;
use super::fsm::Decision;
use super::membership::{MemberConfig, Membership, Renewal, Term};
use super::placement::Placement;
use super::runner::{self, Runner};
use crate::agents::llm::config::Keys;
use crate::harness::sandbox::SandboxProvider;
use crate::ssot::fence::{self, Fence};
use crate::ssot::loops::{EventKind, LoopEvent, LoopRecord, LoopState};
use crate::ssot::owners::{Claim, Ownership};
use crate::ssot::projects::MAX_ID_LEN;
use crate::ssot::{Page, Result, Ssot, SsotError};

/// How long an action waits for the loop to take it in before answering.
const ACTION_WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct StartRequest {
    pub project: String,
    pub task: String,
    pub demo: bool,
    pub workspace: String,
    /// API keys from the client's environment (kept in memory for this loop only).
    pub keys: BTreeMap<String, String>,
    /// Where to record the loop's model exchanges, relative to the workspace.
    pub record: String,
}

#[derive(Default)]
struct Inner {
    controls: HashMap<String, Arc<Control>>,
    /// Keys loops were started with, by loop (memory only).
    keys: HashMap<String, BTreeMap<String, String>>,
    /// project → its active loop.
    active: HashMap<String, String>,
}

pub struct LoopManager {
    ssot: Arc<Ssot>,
    /// Where workspaces may be.
    placement: Placement,
    sandbox: Arc<dyn SandboxProvider>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    inner: Mutex<Inner>,
    member_config: std::sync::Mutex<MemberConfig>,
    membership: tokio::sync::OnceCell<Arc<Membership>>,
    /// Someone asked for a look at loops nobody runs (coalesced; the adopter task looks).
    adopt_wanted: tokio::sync::Notify,
}

/// A project id from a folder name: `My Demo` → `my-demo`.
fn project_id_from(dir: &Path) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let id: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '-' }).collect();
    let id = id.trim_matches(|c: char| !c.is_ascii_alphanumeric()).chars().take(MAX_ID_LEN - 4).collect::<String>();
    if id.is_empty() { "demo".into() } else { id }
}

impl LoopManager {
    pub fn new(ssot: Arc<Ssot>, sandbox: Arc<dyn SandboxProvider>) -> Arc<LoopManager> {
        Self::with_placement(ssot, sandbox, Placement::default())
    }

    /// A manager whose loops' workspaces must meet `placement`.
    pub fn with_placement(
        ssot: Arc<Ssot>,
        sandbox: Arc<dyn SandboxProvider>,
        placement: Placement,
    ) -> Arc<LoopManager> {
        Arc::new(LoopManager {
            ssot,
            placement,
            sandbox,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            inner: Mutex::new(Inner::default()),
            member_config: std::sync::Mutex::new(MemberConfig::default()),
            membership: tokio::sync::OnceCell::new(),
            adopt_wanted: tokio::sync::Notify::new(),
        })
    }

    /// Who this daemon is to the others (before it joins: at the first start or resume).
    pub fn set_member_config(&self, config: MemberConfig) {
        *self.member_config.lock().expect("member config lock") = config;
    }

    /// This daemon's membership, joined (and kept up) on first use.
    async fn membership(self: &Arc<Self>) -> Result<Arc<Membership>> {
        let membership = self
            .membership
            .get_or_try_init(|| async {
                let config = self.member_config.lock().expect("member config lock").clone();
                let membership = Membership::join(self.ssot.clone(), config, self.shutdown.clone()).await?;
                let upkeep = self.clone().upkeep(membership.clone());
                self.tasks.spawn(upkeep.instrument(info_span!("membership", daemon = %membership.id())));
                let adopter = self.clone().adopter(membership.clone());
                self.tasks.spawn(adopter.instrument(info_span!("adopter", daemon = %membership.id())));
                Ok::<_, SsotError>(membership)
            })
            .await?;
        Ok(membership.clone())
    }

    /// Joins in the background until it works (the store was unreachable at
    /// start): until then this daemon runs no loops, but serves.
    pub fn join_later(self: &Arc<Self>) {
        let manager = self.clone();
        self.tasks.spawn(async move {
            let mut pause = Duration::from_millis(500);
            loop {
                tokio::select! {
                    () = manager.shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                match manager.resume_all().await {
                    Ok(resumed) => return info!(resumed, "joined the SSOT"),
                    Err(error) => warn!(%error, "cannot join the SSOT yet; trying again"),
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        });
    }

    /// Looks for loops nobody runs whenever asked (asks made meanwhile are one).
    async fn adopter(self: Arc<Self>, membership: Arc<Membership>) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.adopt_wanted.notified() => {}
            }
            match self.adopt(&membership).await {
                Ok(0) => {}
                Ok(adopted) => info!(adopted, "took over unfinished loops nobody ran"),
                Err(error) => warn!(%error, "cannot look for loops nobody runs"),
            }
        }
    }

    /// Asks the adopter for a look at loops nobody runs.
    fn want_adoption(&self) {
        self.adopt_wanted.notify_one();
    }

    /// Keeps the membership's lease alive, ends the term when it is lost (its
    /// loops stop, then its lease is revoked) and joins again, hands cancel
    /// requests to the loops run here, and asks for adoption whenever a run is
    /// released, and every few TTLs in case a release went unseen. Nothing here
    /// waits for the manager's lock, so renewals are never late because of it.
    async fn upkeep(self: Arc<Self>, membership: Arc<Membership>) {
        let period = (membership.ttl() / 3).max(Duration::from_millis(200));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut released = None;
        let mut cancels = None;
        let mut ticks = 0u64;
        loop {
            let next_release = async {
                match released.as_mut() {
                    Some(stream) => futures::StreamExt::next(stream).await,
                    None => std::future::pending().await,
                }
            };
            let next_cancel = async {
                match cancels.as_mut() {
                    Some(stream) => futures::StreamExt::next(stream).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
                next = next_cancel => {
                    match next {
                        // Asked through any daemon: the one running the loop acts on it.
                        Some(Ok(id)) => self.pass_cancels(vec![id]),
                        Some(Err(_)) | None => cancels = None,
                    }
                    continue;
                }
                next = next_release => {
                    match next {
                        Some(Ok(project)) => {
                            tracing::debug!(%project, "a project's run was released");
                            self.want_adoption();
                        }
                        // Reopened at the next tick (adopting then covers what was missed).
                        Some(Err(_)) | None => released = None,
                    }
                    continue;
                }
            }
            ticks += 1;
            match membership.renew().await {
                Renewal::Renewed => {}
                Renewal::Unconfirmed(error) => warn!(%error, "cannot renew this daemon's lease; trying again"),
                Renewal::Lost(reason) => {
                    warn!(%reason, "this daemon's lease is lost: its loops stop here (another daemon may take them)");
                    let ended = membership.stop_term();
                    // Their current steps end before anyone else may start the loops again.
                    self.until_loops_stopped(membership.ttl()).await;
                    membership.revoke(&ended).await;
                    if let Err(error) = membership.rejoin().await {
                        warn!(%error, "cannot join the SSOT again; trying again");
                        continue;
                    }
                    self.want_adoption();
                }
            }
            if cancels.is_none() {
                match self.ssot.follow_cancel_requests() {
                    Ok(stream) => {
                        cancels = Some(stream);
                        // What was asked while nobody watched: every loop run here checks.
                        let running: Vec<String> = self.inner.lock().await.controls.keys().cloned().collect();
                        self.pass_cancels(running);
                    }
                    Err(error) => warn!(%error, "cannot watch for cancel requests; trying again"),
                }
            }
            if released.is_none() {
                match self.ssot.follow_released_runs() {
                    Ok(stream) => {
                        released = Some(stream);
                        self.want_adoption();
                    }
                    Err(error) => warn!(%error, "cannot watch for released loops; trying again"),
                }
            } else if ticks.is_multiple_of(9) {
                self.want_adoption();
            }
        }
    }

    /// Cancels each of `loops` run here whose cancel is stored in the SSOT.
    fn pass_cancels(self: &Arc<Self>, loops: Vec<String>) {
        let manager = self.clone();
        self.tasks.spawn(async move {
            for id in loops {
                let Some(control) = manager.inner.lock().await.controls.get(&id).cloned() else { continue };
                if manager.ssot.loop_cancel_requested(&id).await.unwrap_or(false) {
                    control.cancel_requested.store(true, Ordering::SeqCst);
                    control.cancel.cancel();
                    control.wake.notify_one();
                }
            }
        });
    }

    /// Waits (up to `limit`) until no loop task runs here.
    async fn until_loops_stopped(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.inner.lock().await.controls.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes every project's unfinished loop that no daemon runs (loops past
    /// QUEUED first: they were running when their daemon stopped), and runs it.
    async fn adopt(self: &Arc<Self>, membership: &Arc<Membership>) -> Result<usize> {
        let term = membership.term();
        // A term whose lease may have run out takes nothing: its loops would be refused at once.
        if term.stop.is_cancelled() || !term.tenure.is_valid() || self.shutdown.is_cancelled() {
            return Ok(0);
        }
        // Read under the lock: a loop a start queues meanwhile is seen by the next look.
        let mut inner = self.inner.lock().await;
        let open = self.ssot.unfinished_loops().await?;
        // Keys kept for loops that ended elsewhere are dropped.
        let ids: std::collections::HashSet<&str> = open.iter().map(|l| l.id.as_str()).collect();
        inner.keys.retain(|id, _| ids.contains(id.as_str()));
        let (running, queued): (Vec<_>, Vec<_>) = open.into_iter().partition(|l| l.state != LoopState::Queued);
        let mut tried = std::collections::HashSet::new();
        let mut started = 0;
        for record in running.into_iter().chain(queued) {
            if inner.active.contains_key(&record.project) || !tried.insert(record.project.clone()) {
                continue;
            }
            let Some(ownership) = self.claim(&inner, membership, &term, &record).await? else { continue };
            // It may have ended or moved on between the read and the claim.
            let record = self.ssot.get_loop(&record.id).await?.value;
            if record.state.is_final() {
                self.ssot.release_loop(&ownership).await?;
                continue;
            }
            info!(loop_id = %record.id, state = record.state.as_str(), "resuming loop");
            let resumed = record.state != LoopState::Queued;
            self.spawn(&mut inner, record, resumed, ownership, term.clone());
            started += 1;
        }
        Ok(started)
    }

    /// Claims the run of `record`'s project for it on `term`; `None` when
    /// someone runs the project. A run left behind (its loop ended, or it is
    /// this daemon's but no task runs it here: a release that failed) is
    /// deleted first.
    async fn claim(
        &self,
        inner: &Inner,
        membership: &Membership,
        term: &Term,
        record: &LoopRecord,
    ) -> Result<Option<Ownership>> {
        for _ in 0..2 {
            match self.ssot.claim_loop(&record.project, membership.owner(&record.id, term)).await {
                Ok(Claim::Owned(ownership)) => return Ok(Some(ownership)),
                Ok(Claim::Busy { owner, revision }) => {
                    if !self.left_behind(inner, term, &owner).await? {
                        return Ok(None);
                    }
                    info!(project = %record.project, loop_id = %owner.loop_id, "deleting a run left behind");
                    self.ssot.release_run(&record.project, revision).await?;
                }
                // The term's lease ended meanwhile: the next term adopts.
                Err(SsotError::NotFound { kind: "lease", .. }) => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    /// Whether a project's run is left behind: its loop has ended, or it is on
    /// this daemon's lease though no task runs it here.
    async fn left_behind(&self, inner: &Inner, term: &Term, owner: &crate::ssot::owners::Owner) -> Result<bool> {
        if owner.lease == term.lease && !inner.controls.contains_key(&owner.loop_id) {
            return Ok(true);
        }
        match self.ssot.get_loop(&owner.loop_id).await {
            Ok(record) => Ok(record.value.state.is_final()),
            Err(SsotError::NotFound { .. }) => Ok(true),
            Err(error) => Err(error),
        }
    }

    pub fn ssot(&self) -> &Arc<Ssot> {
        &self.ssot
    }

    /// Joins the SSOT and resumes every unfinished loop no daemon runs (one
    /// per project; the rest stay queued).
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize> {
        let membership = self.membership().await?;
        self.adopt(&membership).await
    }

    /// Leaves the SSOT after the loops stopped: other daemons take them at once.
    async fn leave(&self) {
        if let Some(membership) = self.membership.get() {
            membership.leave().await;
        }
    }

    /// Registers the task and starts its loop, or queues it behind the project's active loop.
    pub async fn start(self: &Arc<Self>, request: StartRequest) -> Result<LoopRecord> {
        if request.task.trim().is_empty() {
            return Err(SsotError::invalid("task", "describe the task, e.g. \"Build a to-do REST API\""));
        }
        let (project, workspace) =
            if request.demo { self.prepare_demo(&request).await? } else { self.workspace_of(&request).await? };
        let root_path = PathBuf::from(&workspace);
        let (harness, config, llm) = runner::open_workspace(&self.ssot, &self.sandbox, &project, &root_path)
            .map_err(SsotError::FailedPrecondition)?;
        // A key that is missing now would stop the loop at its first agent: say so now.
        let keys = Keys::with_file(request.keys.clone());
        for role in harness.policy().roles.keys().filter(|r| r.as_str() != "contract-validator") {
            let settings = llm.for_role(role, &root_path).map_err(|e| SsotError::FailedPrecondition(e.to_string()))?;
            if settings.needs_key() {
                match keys.find(&settings.api_key_env) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(SsotError::FailedPrecondition(keys.missing(role, &settings.api_key_env))),
                    Err(problem) => return Err(SsotError::FailedPrecondition(problem)),
                }
            }
        }
        let record_file = request.record.trim().to_string();
        if !record_file.is_empty()
            && (Path::new(&record_file).is_absolute()
                || Path::new(&record_file).components().any(|c| c.as_os_str() == ".."))
        {
            return Err(SsotError::invalid("record", "give a path inside the workspace, relative to it"));
        }
        let membership = self.membership().await?;
        let mut inner = self.inner.lock().await;
        let root = Runner::create_root(&self.ssot, &project, &request.task).await?;
        let mut record = LoopRecord::new(&project, &request.task, &workspace, request.demo, config.retries);
        record.root = root.clone();
        record.record_file = record_file;
        let term = membership.term();
        // Who the new loop waits for: the project's loop run here, or by another daemon, or
        // an older unfinished one nobody runs yet (its daemon died; it goes first).
        let running_here = match inner.active.get(&project).cloned() {
            // A loop that has just failed (its task panicked) is not waited for.
            Some(active) if !self.ssot.get_loop(&active).await?.value.state.is_final() => Some(active),
            _ => None,
        };
        let queued_behind = match running_here {
            Some(active) => Some(active),
            None => match self.ssot.project_runner(&project).await? {
                Some(runner) if !self.left_behind(&inner, &term, &runner.value).await? => Some(runner.value.loop_id),
                _ => self.ssot.unfinished_loops().await?.into_iter().find(|l| l.project == project).map(|l| l.id),
            },
        };
        let message = match &queued_behind {
            Some(active) => {
                let escalated = self.ssot.get_loop(active).await.is_ok_and(|l| l.value.state == LoopState::Escalated);
                record.reason = if escalated {
                    format!("waiting for {active}, ESCALATED: approve, retry or abort it")
                } else {
                    format!("queued behind {active}")
                };
                format!("{}; root requirement {root}", record.reason)
            }
            None => format!("root requirement {root}"),
        };
        let event = LoopEvent { kind: EventKind::State, message, ..Default::default() };
        let mut record = self.ssot.create_loop(record, vec![event]).await?;
        if !request.keys.is_empty() {
            inner.keys.insert(record.id.clone(), request.keys.clone());
        }
        let ownership = match &queued_behind {
            None => self.claim(&inner, &membership, &term, &record).await?,
            Some(_) => {
                // The loop it waits for may be one nobody runs yet.
                self.want_adoption();
                None
            }
        };
        match queued_behind {
            // Nobody ran the project, and the claim was won here (another daemon may have adopted it first).
            None => match ownership {
                Some(ownership) => self.spawn(&mut inner, record.clone(), false, ownership, term),
                None => record = self.ssot.get_loop(&record.id).await?.value,
            },
            // The active loop may have escalated since it was looked at: say so.
            Some(active) if !record.reason.starts_with("waiting for") => {
                if self.ssot.get_loop(&active).await.is_ok_and(|l| l.value.state == LoopState::Escalated) {
                    let message = format!("waiting for {active}, ESCALATED: approve, retry or abort it");
                    let event = LoopEvent { kind: EventKind::Waiting, message: message.clone(), ..Default::default() };
                    if self.ssot.note_queued_loop(&record.id, &message, event).await? {
                        record = self.ssot.get_loop(&record.id).await?.value;
                    }
                }
            }
            Some(_) => {}
        }
        Ok(record)
    }

    async fn workspace_of(&self, request: &StartRequest) -> Result<(String, String)> {
        let project = self.ssot.get_project(&request.project).await?.value;
        let workspace =
            if request.workspace.is_empty() { project.workspace.clone() } else { request.workspace.clone() };
        if workspace.is_empty() {
            return Err(SsotError::FailedPrecondition(format!(
                "project {} has no workspace; run `maestroctl init` in its folder or pass --workspace",
                project.id
            )));
        }
        if !Path::new(&workspace).is_dir() {
            return Err(SsotError::FailedPrecondition(format!(
                "workspace {workspace} does not exist or is not a folder"
            )));
        }
        self.placement.check(Path::new(&workspace))?;
        Ok((project.id, workspace))
    }

    /// Whether a project's workspace may be `workspace` (an allowed folder,
    /// apart from the daemon's data); empty clears it and is always allowed.
    pub fn check_workspace(&self, workspace: &str) -> Result<()> {
        if !workspace.is_empty() {
            self.placement.check(Path::new(workspace))?;
        }
        Ok(())
    }

    /// Creates the demo's workspace and project.
    async fn prepare_demo(&self, request: &StartRequest) -> Result<(String, String)> {
        let dir = PathBuf::from(&request.workspace);
        if !dir.is_absolute() {
            return Err(SsotError::invalid("workspace", "the demo needs an absolute workspace path"));
        }
        let mut project = if request.project.is_empty() { project_id_from(&dir) } else { request.project.clone() };
        let base = project.clone();
        for n in 2.. {
            match self.ssot.project_id_taken(&project).await? {
                false => break,
                true if !request.project.is_empty() => {
                    return Err(SsotError::AlreadyExists { kind: "project", id: project });
                }
                true if n < 1000 => project = format!("{base}-{n}"),
                true => return Err(SsotError::FailedPrecondition(format!("too many projects named {base}-N"))),
            }
        }
        self.placement.check(&dir)?;
        let (dir2, id) = (dir.clone(), project.clone());
        tokio::task::spawn_blocking(move || demo::prepare(&dir2, &id))
            .await
            .map_err(|e| SsotError::FailedPrecondition(format!("preparing the demo: {e}")))?
            .map_err(|e| match e {
                demo::DemoError::NotEmpty(_) => SsotError::FailedPrecondition(e.to_string()),
                other => SsotError::FailedPrecondition(format!("cannot create the demo workspace: {other}")),
            })?;
        let workspace = dir.canonicalize().unwrap_or(dir).display().to_string();
        self.ssot.create_project(&project, "Maestro demo", &workspace).await?;
        Ok((project, workspace))
    }

    fn spawn(self: &Arc<Self>, inner: &mut Inner, record: LoopRecord, resumed: bool, ownership: Ownership, term: Term) {
        let control =
            inner.controls.entry(record.id.clone()).or_insert_with(|| Control::new(record.clone(), &term.stop)).clone();
        // Every write the loop makes is conditional on this daemon still owning it.
        let fence = Fence {
            loop_id: record.id.clone(),
            key: ownership.key(),
            revision: ownership.revision,
            tenure: term.tenure,
        };
        *control.keys.lock().expect("keys lock") = inner.keys.get(&record.id).cloned().unwrap_or_default();
        inner.active.insert(record.project.clone(), record.id.clone());
        let (id, project) = (record.id.clone(), record.project.clone());
        let manager = self.clone();
        let runner = Runner::new(
            self.ssot.clone(),
            self.sandbox.clone(),
            control,
            term.stop.clone(),
            self.tasks.clone(),
            record.clone(),
        );
        match runner {
            Ok(runner) => {
                let span = info_span!("supervise", loop_id = %id);
                self.tasks.spawn(fence::scope(
                    fence,
                    async move {
                        // A panic in the loop's task fails the loop, not the daemon, and frees the project.
                        if let Err(panic) = std::panic::AssertUnwindSafe(runner.run(resumed)).catch_unwind().await {
                            let message = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "no message".into());
                            manager.crashed(&id, &message).await;
                        }
                        manager.finished(&project, &id, &ownership).await;
                    }
                    .instrument(span),
                ));
            }
            Err(reason) => {
                warn!(loop_id = %id, %reason, "the loop cannot start");
                let mut record = record;
                record.state = LoopState::Failed;
                record.reason = reason.clone();
                let event =
                    LoopEvent { kind: EventKind::State, message: format!("failed: {reason}"), ..Default::default() };
                let ssot = self.ssot.clone();
                self.tasks.spawn(fence::scope(fence, async move {
                    if let Err(error) = ssot.save_loop(record, vec![event]).await {
                        warn!(%error, "cannot record the failure");
                    }
                    // The project is free for its next loop.
                    if let Err(error) = ssot.release_loop(&ownership).await {
                        warn!(%error, "cannot release the loop");
                    }
                }));
                inner.controls.remove(&id);
                inner.active.remove(&project);
            }
        }
    }

    /// A loop's task panicked: the loop is FAILED with the panic's message, its
    /// claims and lease released.
    async fn crashed(&self, id: &str, message: &str) {
        warn!(loop_id = %id, panic = %message, "a loop's task panicked");
        // The project stays this loop's until `finished` releases it; a start that
        // reads the failure first finds the run left behind and takes the project.
        let Ok(current) = self.ssot.get_loop(id).await else { return };
        let mut record = current.value;
        if record.state.is_final() {
            return;
        }
        for claim in std::mem::take(&mut record.claims) {
            let _ =
                self.ssot.release_lock(&record.project, &format!("claim/{}", claim.requirement), record.lease).await;
        }
        if record.lease != 0 {
            let _ = self.ssot.revoke_lease(record.lease).await;
            record.lease = 0;
        }
        record.state = LoopState::Failed;
        record.reason = format!("internal error: the loop's task panicked: {message}");
        record.end_time_ms = crate::ssot::clock::now_ms();
        let event =
            LoopEvent { kind: EventKind::State, message: format!("failed: {}", record.reason), ..Default::default() };
        if let Err(error) = self.ssot.save_loop(record, vec![event]).await {
            warn!(%error, "cannot record the failure");
        }
    }

    /// A loop's task ended (the loop ended, the daemon stops, or its term
    /// ended): the project's run is released, and loops nobody runs are adopted
    /// (the project's next queued loop among them).
    async fn finished(self: &Arc<Self>, project: &str, id: &str, ownership: &Ownership) {
        // Releasing is conditional on the ownership itself (not on the loop's fence).
        // Tried a few times; a run still left behind is deleted by the next claim.
        let mut pause = Duration::from_millis(100);
        for attempt in 1..=5 {
            match self.ssot.release_loop(ownership).await {
                Ok(()) => break,
                Err(error) if attempt == 5 => warn!(%error, loop_id = %id, "cannot release the loop's project"),
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        {
            let mut inner = self.inner.lock().await;
            inner.controls.remove(id);
            inner.keys.remove(id);
            if inner.active.get(project).is_some_and(|a| a == id) {
                inner.active.remove(project);
            }
        }
        if !self.shutdown.is_cancelled() {
            self.want_adoption();
        }
    }

    /// Live events of a running loop (`None` when no task runs it here).
    pub async fn subscribe(&self, id: &str) -> Option<tokio::sync::broadcast::Receiver<LoopEvent>> {
        self.inner.lock().await.controls.get(id).map(|c| c.events.subscribe())
    }

    pub async fn get(&self, id: &str) -> Result<LoopRecord> {
        Ok(self.ssot.get_loop(id).await?.value)
    }

    pub async fn list(&self, project: &str, page_size: i32, page_token: &str) -> Result<Page<LoopRecord>> {
        self.ssot.list_loops(project, page_size, page_token).await
    }

    async fn control(&self, id: &str) -> Result<(LoopRecord, Option<Arc<Control>>)> {
        let record = self.get(id).await?;
        let control = self.inner.lock().await.controls.get(id).cloned();
        Ok((record, control))
    }

    fn ended(record: &LoopRecord) -> SsotError {
        SsotError::FailedPrecondition(format!("loop {} has ended ({})", record.id, record.state.as_str()))
    }

    /// Waits until the loop's published record satisfies `done` (or the wait ends).
    async fn wait(control: &Control, done: impl Fn(&LoopRecord) -> bool) -> LoopRecord {
        let mut published = control.published.subscribe();
        let waited = tokio::time::timeout(ACTION_WAIT, published.wait_for(|r| done(r))).await;
        match waited {
            Ok(Ok(record)) => record.clone(),
            _ => control.published.borrow().clone(),
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<LoopRecord> {
        loop {
            let inner = self.inner.lock().await;
            let record = self.get(id).await?;
            if record.state.is_final() {
                return Err(Self::ended(&record));
            }
            if let Some(control) = inner.controls.get(id).cloned() {
                drop(inner);
                // Kept in the SSOT first: a daemon that stops before the loop acts on it cancels on restart.
                self.ssot.request_loop_cancel(id).await?;
                control.cancel_requested.store(true, Ordering::SeqCst);
                control.cancel.cancel();
                control.wake.notify_one();
                return Ok(Self::wait(&control, |r| r.state.is_final()).await);
            }
            drop(inner);
            let runner = self.ssot.project_runner(&record.project).await?;
            let taken = runner.as_ref().is_some_and(|r| r.value.loop_id == id);
            if record.state != LoopState::Queued || taken {
                // Another daemon runs it (or will, once it takes it over): the request
                // reaches that daemon through the SSOT, and a resumed loop reads it too.
                self.ssot.request_loop_cancel(id).await?;
                return self.wait_in_ssot(id, |r| r.state.is_final()).await;
            }
            // Queued: nothing runs yet, so nothing to roll back. Conditional, so a
            // concurrent write (a start, a "waiting for" notice) is never overwritten.
            let event =
                LoopEvent { kind: EventKind::State, message: "cancelled while queued".into(), ..Default::default() };
            // Also conditional on the project's run as read: a daemon that takes the loop
            // meanwhile makes this fail, and the loop is cancelled as a running one.
            let run = crate::ssot::Ssot::run_unchanged(&record.project, runner.map_or(0, |r| r.meta.mod_revision));
            match self.ssot.end_queued_loop(id, LoopState::Cancelled, "cancelled while queued", event, run).await? {
                Some(record) => return Ok(record),
                // It left the queue meanwhile: cancel it as a running loop.
                None => tokio::task::yield_now().await,
            }
        }
    }

    /// Waits (up to the action wait) until the stored record satisfies `done`.
    async fn wait_in_ssot(&self, id: &str, done: impl Fn(&LoopRecord) -> bool) -> Result<LoopRecord> {
        let deadline = tokio::time::Instant::now() + ACTION_WAIT;
        loop {
            let record = self.get(id).await?;
            if done(&record) || tokio::time::Instant::now() >= deadline {
                return Ok(record);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn pause(&self, id: &str) -> Result<LoopRecord> {
        let (record, control) = self.control(id).await?;
        let control = self.running_here(&record, control).await?;
        control.pause.store(true, Ordering::SeqCst);
        Ok(control.published.borrow().clone())
    }

    pub async fn resume(&self, id: &str) -> Result<LoopRecord> {
        let (record, control) = self.control(id).await?;
        let control = self.running_here(&record, control).await?;
        control.pause.store(false, Ordering::SeqCst);
        control.wake.notify_one();
        Ok(Self::wait(&control, |r| r.state != LoopState::Paused).await)
    }

    fn not_running(record: &LoopRecord) -> SsotError {
        if record.state.is_final() {
            return Self::ended(record);
        }
        SsotError::FailedPrecondition(format!("loop {} is {}, not running", record.id, record.state.as_str()))
    }

    /// The control of a loop this daemon runs, or an error that says where it runs.
    async fn running_here(&self, record: &LoopRecord, control: Option<Arc<Control>>) -> Result<Arc<Control>> {
        if let Some(control) = control {
            return Ok(control);
        }
        if !record.state.is_final()
            && let Some(runner) = self.ssot.project_runner(&record.project).await?
            && runner.value.loop_id == record.id
        {
            return Err(SsotError::FailedPrecondition(format!(
                "loop {} runs on daemon {} ({}); send this to that daemon",
                record.id, runner.value.daemon, runner.value.address
            )));
        }
        Err(Self::not_running(record))
    }

    /// Hands an ESCALATED loop a human's decision.
    pub async fn decide(&self, id: &str, decision: Decision) -> Result<LoopRecord> {
        let (record, control) = self.control(id).await?;
        if record.state != LoopState::Escalated {
            let verb = match decision {
                Decision::Approve { .. } => "approve",
                Decision::Retry { .. } => "retry",
                Decision::Abort { .. } => "abort",
            };
            return Err(SsotError::FailedPrecondition(format!(
                "loop {} is {}; {verb} applies to ESCALATED loops",
                record.id,
                record.state.as_str()
            )));
        }
        let control = self.running_here(&record, control).await?;
        let (reply, answer) = oneshot::channel();
        *control.decision.lock().expect("decision lock") = Some(PendingDecision { decision, reply });
        control.wake.notify_one();
        match tokio::time::timeout(ACTION_WAIT, answer).await {
            Ok(Ok(Err(refusal))) => return Err(SsotError::FailedPrecondition(refusal)),
            Ok(Ok(Ok(()))) => {}
            // The loop stopped (shutdown) or did not answer in time: report where it is.
            Ok(Err(_)) | Err(_) => return Ok(control.published.borrow().clone()),
        }
        Ok(Self::wait(&control, |r| r.state != LoopState::Escalated).await)
    }

    /// Stops every loop task without touching its record: they resume on the next start.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.leave().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids_come_from_folder_names() {
        assert_eq!(project_id_from(Path::new("/home/ada/My Demo!")), "my-demo");
        assert_eq!(project_id_from(Path::new("/tmp/maestro-demo")), "maestro-demo");
        assert_eq!(project_id_from(Path::new("/")), "demo");
    }
}
