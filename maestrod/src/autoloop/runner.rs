//! One loop's task: the state machine PLAN → ASSIGN → EXEC → VALID → COMMIT →
//! CHECK, ROLLBACK on failure, ESCALATED when the retry budget is spent.
//!
//! Durability: every transition rewrites the loop record with its events in
//! one transaction. Entering PLAN, ASSIGN, EXEC and VALID takes an SSOT
//! snapshot (`<loop>-e<epoch>-<phase>`), and PLAN and VALID a git checkpoint,
//! so a daemon that dies inside a phase resumes by putting the SSOT and the
//! workspace back to the phase's start and running it again: no phase is
//! skipped, none is completed twice. COMMIT and CHECK are idempotent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::config::LoopConfig;
use super::scheduler::{self, Pick};
use crate::agents::contract_validator;
use crate::agents::llm::config::RawLlm;
use crate::agents::llm::http::RetryPolicy;
use crate::agents::llm::{TokenUsage, ToolCall};
use crate::agents::roles::Assignment;
use crate::agents::runtime::{Observer, RunOutcome};
use crate::agents::tools::ToolResult;
use crate::harness::budget::Budget;
use crate::harness::executor::{ActionContext, ActionOutput, Harness, HarnessError};
use crate::harness::gate::{Action, Gate};
use crate::harness::rollback::{GitWorkspace, RollbackError};
use crate::harness::sandbox::{Limits, SandboxProvider};
use crate::ssot::exec_log::NewLogEntry;
use crate::ssot::loops::{Claim, Failure, LoopEvent, LoopRecord, LoopState, Phase};
use crate::ssot::requirements::{NewRequirement, Requirement, Status};
use crate::ssot::{Ssot, SsotError};

/// How long a claim lease lives without keep-alive.
const CLAIM_TTL_SECONDS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error(transparent)]
    Ssot(#[from] SsotError),
    #[error("workspace git: {0}")]
    Git(#[from] RollbackError),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("{0}")]
    Config(String),
    #[error("internal: {0}")]
    Internal(String),
}

type Result<T> = std::result::Result<T, LoopError>;

/// A human's answer to an escalation.
#[derive(Debug, Clone)]
pub enum Decision {
    Approve { actor: String },
    Retry { guidance: String, actor: String },
    Abort { actor: String },
}

/// How the API steers a running loop.
pub struct Control {
    pub cancel: CancellationToken,
    pub pause: AtomicBool,
    pub decision: Mutex<Option<Decision>>,
    pub wake: Notify,
    pub published: watch::Sender<LoopRecord>,
    /// Every event as soon as it is durable, for live followers (the SSOT
    /// has them all; a follower that lags reads them from there).
    pub events: broadcast::Sender<LoopEvent>,
}

impl Control {
    pub fn new(record: LoopRecord) -> Arc<Control> {
        Arc::new(Control {
            cancel: CancellationToken::new(),
            pause: AtomicBool::new(false),
            decision: Mutex::new(None),
            wake: Notify::new(),
            published: watch::channel(record).0,
            // Small: a follower that falls further behind reads from the SSOT.
            events: broadcast::channel(64).0,
        })
    }
}

/// Agent activity waiting to be written as events.
#[derive(Default)]
struct Activity {
    events: Mutex<Vec<LoopEvent>>,
    added: Notify,
    /// Tokens spent since the record was last saved, and the record's count then.
    tokens: AtomicU64,
    base: AtomicU64,
    /// Requirements done and in all, as of the last save.
    done: AtomicU32,
    total: AtomicU32,
}

impl Activity {
    /// Queues `event`, stamped with the loop's token count as of its turn.
    fn push(&self, mut event: LoopEvent) {
        event.tokens = self.base.load(Ordering::SeqCst) + self.tokens.load(Ordering::SeqCst);
        event.done = self.done.load(Ordering::SeqCst);
        event.total = self.total.load(Ordering::SeqCst);
        self.events.lock().expect("activity lock").push(event);
        self.added.notify_one();
    }

    fn take(&self) -> Vec<LoopEvent> {
        std::mem::take(&mut *self.events.lock().expect("activity lock"))
    }
}

/// Turns one agent's tool calls into events.
struct AgentObserver<'a> {
    activity: &'a Activity,
    requirement: String,
    phase: Phase,
}

/// What a tool call touched, for people: the path, the command, the id.
fn call_target(call: &ToolCall) -> String {
    let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap_or_default();
    if let Some(argv) = args["argv"].as_array() {
        return argv.iter().filter_map(|a| a.as_str()).collect::<Vec<_>>().join(" ");
    }
    ["path", "id", "name", "key", "title", "note"]
        .iter()
        .find_map(|k| args[*k].as_str().map(|v| first_line(v, 120)))
        .unwrap_or_default()
}

fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max { format!("{}…", line.chars().take(max).collect::<String>()) } else { line.into() }
}

impl Observer for AgentObserver<'_> {
    fn turn(&self, _ctx: &ActionContext, usage: &TokenUsage) {
        self.activity.tokens.fetch_add(usage.total(), Ordering::SeqCst);
    }

    fn tool(&self, ctx: &ActionContext, call: &ToolCall, result: &ToolResult) {
        if call.name == "finish" {
            return;
        }
        let denied = result.is_error && result.content.starts_with("denied by");
        let outcome =
            if result.is_error { format!(" → {}", first_line(&result.content, 160)) } else { String::new() };
        self.activity.push(LoopEvent {
            kind: if denied { "denied" } else { "tool_call" }.into(),
            phase: self.phase.as_str().into(),
            agent: ctx.agent.clone(),
            requirement: self.requirement.clone(),
            message: format!("{} {}{outcome}", call.name, call_target(call)),
            ..Default::default()
        });
    }
}

/// What an agent run needs from its loop, owned so runs can go on while the
/// loop writes their activity.
#[derive(Clone)]
struct AgentEnv {
    harness: Arc<Harness>,
    llm: Arc<RawLlm>,
    root: PathBuf,
    max_turns: usize,
    max_tokens: u32,
    activity: Arc<Activity>,
    loop_id: String,
    epoch: u64,
    phase: Phase,
}

impl AgentEnv {
    /// Runs one agent on one requirement; every problem is a failed outcome.
    async fn run(&self, claim: Claim, attempt: u32, notes: String, cancel: CancellationToken) -> RunOutcome {
        let Claim { requirement, role, agent } = claim;
        let settings = match self.llm.for_role(&role, &self.root) {
            Ok(settings) => settings,
            Err(e) => return RunOutcome::Failed { reason: e.to_string() },
        };
        let provider = match settings.provider_for(&role, &requirement, attempt, RetryPolicy::default()) {
            Ok(provider) => provider,
            Err(e) => return RunOutcome::Failed { reason: e.to_string() },
        };
        let observer = AgentObserver { activity: &self.activity, requirement: requirement.clone(), phase: self.phase };
        let ctx = ActionContext { loop_id: self.loop_id.clone(), epoch: self.epoch, agent, role };
        let assignment = Assignment {
            provider: provider.as_ref(),
            model: settings.model.clone(),
            harness: &self.harness,
            ctx,
            requirement,
            notes,
            max_turns: self.max_turns,
            max_tokens: self.max_tokens,
            observer: Some(&observer),
        };
        match assignment.work(cancel).await {
            Ok(outcome) => outcome,
            Err(error) => RunOutcome::Failed { reason: error.to_string() },
        }
    }
}

pub struct Runner {
    ssot: Arc<Ssot>,
    control: Arc<Control>,
    shutdown: CancellationToken,
    record: LoopRecord,
    root: PathBuf,
    config: LoopConfig,
    llm: Arc<RawLlm>,
    harness: Arc<Harness>,
    activity: Arc<Activity>,
}

fn snapshot_name(record: &LoopRecord, phase: Phase) -> String {
    format!("{}-e{}-{}", record.id, record.epoch, phase.as_str().to_lowercase())
}

/// Runs blocking git work off the async threads.
async fn git<T: Send + 'static>(
    root: PathBuf,
    work: impl FnOnce(&GitWorkspace) -> std::result::Result<T, RollbackError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || work(&GitWorkspace::open_or_init(&root)?))
        .await
        .map_err(|e| LoopError::Internal(format!("git task: {e}")))?
        .map_err(Into::into)
}

/// The harness, model settings and loop settings of a workspace; errors are for people.
pub fn open_workspace(
    ssot: &Arc<Ssot>,
    sandbox: &Arc<dyn SandboxProvider>,
    project: &str,
    root: &std::path::Path,
) -> std::result::Result<(Harness, LoopConfig, RawLlm), String> {
    let config = LoopConfig::load(root)?;
    let text = std::fs::read_to_string(root.join(".maestro/config.yaml")).unwrap_or_default();
    let llm =
        RawLlm::from_project_config(&text).map_err(|e| format!("{}/.maestro/config.yaml: {e}", root.display()))?;
    let gate = Gate::open(root).map_err(|e| e.to_string())?;
    for role in gate.policy().roles.keys() {
        llm.for_role(role, root).map_err(|e| e.to_string())?;
    }
    let budget = Arc::new(Budget::new(gate.policy().budget));
    let harness = Harness::new(gate, sandbox.clone(), ssot.clone(), project, budget, Limits::default());
    Ok((harness, config, llm))
}

impl Runner {
    pub fn new(
        ssot: Arc<Ssot>,
        sandbox: Arc<dyn SandboxProvider>,
        control: Arc<Control>,
        shutdown: CancellationToken,
        record: LoopRecord,
    ) -> std::result::Result<Runner, String> {
        let root = PathBuf::from(&record.workspace);
        let (harness, config, llm) = open_workspace(&ssot, &sandbox, &record.project, &root)?;
        let activity = Arc::new(Activity::default());
        activity.base.store(record.tokens, Ordering::SeqCst);
        activity.done.store(record.done, Ordering::SeqCst);
        activity.total.store(record.total, Ordering::SeqCst);
        Ok(Runner {
            ssot,
            control,
            shutdown,
            record,
            root,
            config,
            llm: Arc::new(llm),
            harness: Arc::new(harness),
            activity,
        })
    }

    fn env(&self) -> AgentEnv {
        AgentEnv {
            harness: self.harness.clone(),
            llm: self.llm.clone(),
            root: self.root.clone(),
            max_turns: self.config.max_turns,
            max_tokens: self.config.max_tokens,
            activity: self.activity.clone(),
            loop_id: self.record.id.clone(),
            epoch: self.record.epoch,
            phase: self.record.phase,
        }
    }

    fn event(&self, kind: &str, message: impl Into<String>) -> LoopEvent {
        LoopEvent {
            kind: kind.into(),
            phase: self.record.phase.as_str().into(),
            message: message.into(),
            ..Default::default()
        }
    }

    /// Writes the record with the pending agent activity and `events`.
    async fn save(&mut self, events: Vec<LoopEvent>) -> Result<()> {
        let mut all = self.activity.take();
        all.extend(events);
        self.record.tokens += self.activity.tokens.swap(0, Ordering::SeqCst);
        self.activity.base.store(self.record.tokens, Ordering::SeqCst);
        self.commit_events(all).await?;
        self.activity.done.store(self.record.done, Ordering::SeqCst);
        self.activity.total.store(self.record.total, Ordering::SeqCst);
        self.control.published.send_replace(self.record.clone());
        Ok(())
    }

    /// Writes the record with `events` and hands them to live followers.
    async fn commit_events(&mut self, events: Vec<LoopEvent>) -> Result<()> {
        let (record, events) = self.ssot.save_loop_events(self.record.clone(), events).await?;
        self.record = record;
        for event in events {
            // No receiver is fine: nobody follows live right now.
            let _ = self.control.events.send(event);
        }
        Ok(())
    }

    async fn log(&self, action: &str, outcome: &str, detail: &str) {
        let entry = NewLogEntry {
            loop_id: self.record.id.clone(),
            epoch: self.record.epoch,
            agent: "autoloop".into(),
            action: action.into(),
            target: self.record.id.clone(),
            outcome: outcome.into(),
            detail: detail.into(),
            ..Default::default()
        };
        if let Err(error) = self.ssot.append_log(&self.record.project, entry).await {
            warn!(%error, "cannot append to the execution log");
        }
    }

    /// Moves `requirement` from `from` to `to`; leaves it alone in any other status
    /// (an agent may have moved it itself).
    async fn advance(&self, requirement: &str, from: Status, to: Status, reason: &str, by: &str) -> Result<()> {
        let project = &self.record.project;
        if self.ssot.get_requirement(project, requirement, 0).await?.value.status == from {
            self.ssot.set_requirement_status(project, requirement, to, reason, by, "").await?;
        }
        Ok(())
    }

    async fn tree(&self) -> Result<Vec<Requirement>> {
        let all = self.ssot.all_requirements(&self.record.project).await?;
        Ok(all.into_iter().map(|r| r.value).collect())
    }

    /// Refreshes done/total from the tree's leaves.
    async fn count(&mut self) -> Result<()> {
        let all = self.tree().await?;
        let leaves = scheduler::leaves(&all, &self.record.root);
        self.record.total = leaves.len() as u32;
        self.record.done = leaves.iter().filter(|r| r.status == Status::Done).count() as u32;
        Ok(())
    }

    /// Moves to `phase`, taking what resuming it needs.
    async fn enter(&mut self, phase: Phase, mut events: Vec<LoopEvent>) -> Result<()> {
        if phase == Phase::Plan {
            self.record.epoch += 1;
            let (root, id, epoch) = (self.root.clone(), self.record.id.clone(), self.record.epoch);
            self.record.epoch_checkpoint = git(root, move |g| g.checkpoint(&id, epoch)).await?.commit;
        }
        if phase == Phase::Valid {
            let (root, id, epoch) = (self.root.clone(), self.record.id.clone(), self.record.epoch);
            self.record.valid_checkpoint = git(root, move |g| g.checkpoint_stage(&id, epoch, "valid")).await?.commit;
        }
        if matches!(phase, Phase::Plan | Phase::Assign | Phase::Exec | Phase::Valid) {
            let name = snapshot_name(&self.record, phase);
            let project = self.record.project.clone();
            match self.ssot.delete_snapshot(&project, &name).await {
                Ok(()) | Err(SsotError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let commit =
                if phase == Phase::Valid { &self.record.valid_checkpoint } else { &self.record.epoch_checkpoint };
            self.ssot
                .create_snapshot(&project, &name, commit, &format!("{} {}", self.record.id, phase.as_str()))
                .await?;
        }
        self.record.phase = phase;
        self.count().await?;
        let message = match phase {
            Phase::Plan => format!("epoch {}", self.record.epoch),
            _ => String::new(),
        };
        events.push(self.event("phase", message));
        self.save(events).await
    }

    /// Puts the SSOT and the workspace back to the start of the current phase.
    async fn restore(&mut self, phase: Phase) -> Result<()> {
        let name = snapshot_name(&self.record, phase);
        match self.ssot.restore_snapshot(&self.record.project, &name).await {
            Ok(_) => {}
            Err(SsotError::NotFound { .. }) => warn!(snapshot = %name, "no snapshot to restore"),
            Err(e) => return Err(e.into()),
        }
        let commit = if phase == Phase::Valid {
            self.record.valid_checkpoint.clone()
        } else {
            self.record.epoch_checkpoint.clone()
        };
        if !commit.is_empty() {
            git(self.root.clone(), move |g| g.rollback(&g.checkpoint_of(&commit)?)).await?;
        }
        Ok(())
    }

    /// The lease under which this loop claims requirements.
    async fn lease(&mut self) -> Result<u64> {
        if self.record.lease != 0 && self.ssot.keep_alive(self.record.lease).await.is_ok() {
            return Ok(self.record.lease);
        }
        self.record.lease = self.ssot.grant_lease(CLAIM_TTL_SECONDS).await?.id;
        Ok(self.record.lease)
    }

    async fn release_claims(&mut self) {
        for claim in std::mem::take(&mut self.record.claims) {
            let name = format!("claim/{}", claim.requirement);
            let _ = self.ssot.release_lock(&self.record.project, &name, self.record.lease).await;
        }
    }

    /// Runs the loop to its end, or until the daemon shuts down.
    pub async fn run(mut self, resumed: bool) {
        let span = info_span!("loop", id = %self.record.id, project = %self.record.project);
        async move {
            let keep_alive = self.spawn_keep_alive();
            let result = self.drive(resumed).await;
            keep_alive.cancel();
            match result {
                Ok(()) => {}
                Err(error) if self.shutdown.is_cancelled() => info!(%error, "stopped by shutdown"),
                Err(error) => {
                    warn!(%error, "the loop failed");
                    self.record.state = LoopState::Failed;
                    self.record.reason = error.to_string();
                    let event = self.event("state", format!("failed: {error}"));
                    if let Err(e) = self.finish(vec![event]).await {
                        warn!(error = %e, "cannot record the failure");
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Keeps the claim lease alive while the loop runs.
    fn spawn_keep_alive(&self) -> CancellationToken {
        let stop = CancellationToken::new();
        let (ssot, control, stop2) = (self.ssot.clone(), self.control.clone(), stop.clone());
        let mut published = control.published.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(CLAIM_TTL_SECONDS / 3));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop2.cancelled() => return,
                }
                let lease = published.borrow_and_update().lease;
                if lease != 0 {
                    let _ = ssot.keep_alive(lease).await;
                }
            }
        });
        stop
    }

    async fn finish(&mut self, events: Vec<LoopEvent>) -> Result<()> {
        self.release_claims().await;
        if self.record.lease != 0 {
            let _ = self.ssot.revoke_lease(self.record.lease).await;
            self.record.lease = 0;
        }
        self.record.end_time_ms = crate::ssot::clock::now_ms();
        self.save(events).await
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    async fn drive(&mut self, resumed: bool) -> Result<()> {
        if resumed {
            self.recover().await?;
        } else {
            self.begin().await?;
        }
        loop {
            if self.stopping() {
                return Ok(());
            }
            if self.record.state.is_final() {
                return Ok(());
            }
            if self.control.cancel.is_cancelled() {
                return self.cancelled().await;
            }
            if self.record.state == LoopState::Escalated {
                self.await_decision().await?;
                continue;
            }
            if self.control.pause.load(Ordering::SeqCst) {
                self.paused().await?;
                continue;
            }
            match self.record.phase {
                Phase::Plan => self.plan().await?,
                Phase::Assign => self.assign().await?,
                Phase::Exec => self.exec().await?,
                Phase::Valid => self.valid().await?,
                Phase::Commit => self.commit().await?,
                Phase::Check => self.check().await?,
                Phase::Rollback => self.rollback().await?,
            }
        }
    }

    async fn begin(&mut self) -> Result<()> {
        self.lease().await?;
        self.record.state = LoopState::Running;
        self.log("loop-start", "ok", &self.record.task.clone()).await;
        let event =
            self.event("state", format!("started on {}: {}", self.record.root, first_line(&self.record.task, 200)));
        self.enter(Phase::Plan, vec![event]).await
    }

    /// Picks up after a daemon restart: the interrupted phase starts over from its snapshot.
    async fn recover(&mut self) -> Result<()> {
        self.record.restarts += 1;
        if self.record.state == LoopState::Queued {
            return self.begin().await;
        }
        let phase = self.record.phase;
        // A daemon killed while git wrote one of this loop's refs leaves a lock behind.
        let loop_id = self.record.id.clone();
        let cleared = git(self.root.clone(), move |g| g.clear_stale_locks(&loop_id)).await?;
        if cleared > 0 {
            warn!(loop_id = %self.record.id, cleared, "removed stale git ref locks left by the previous daemon");
        }
        self.log(
            "loop-restart",
            "ok",
            &format!("resuming {} in {} of epoch {}", self.record.id, phase.as_str(), self.record.epoch),
        )
        .await;
        let mut message = format!("daemon restarted; resuming {} of epoch {}", phase.as_str(), self.record.epoch);
        if self.record.state != LoopState::Escalated
            && matches!(phase, Phase::Plan | Phase::Assign | Phase::Exec | Phase::Valid)
        {
            self.restore(phase).await?;
            message.push_str(&format!(" from its start ({})", snapshot_name(&self.record, phase)));
        }
        self.lease().await?;
        // Claims live on the lease: take them again (the old lease may have expired).
        for claim in self.record.claims.clone() {
            let holder = format!("{}/{}", self.record.id, claim.agent);
            self.ssot
                .acquire_lock(
                    &self.record.project,
                    &format!("claim/{}", claim.requirement),
                    &holder,
                    self.record.lease,
                    0,
                )
                .await?;
        }
        if self.record.state == LoopState::Paused {
            // Still paused after the restart: the pause request lives on in memory.
            self.control.pause.store(true, Ordering::SeqCst);
            self.record.state = LoopState::Running;
        }
        let event = self.event("restart", message);
        self.save(vec![event]).await
    }

    async fn paused(&mut self) -> Result<()> {
        self.record.state = LoopState::Paused;
        let event = self.event("state", "paused");
        self.save(vec![event]).await?;
        while self.control.pause.load(Ordering::SeqCst) {
            tokio::select! {
                () = self.control.wake.notified() => {}
                () = self.control.cancel.cancelled() => break,
                () = self.shutdown.cancelled() => return Ok(()),
            }
        }
        self.record.state = LoopState::Running;
        let event = self.event("state", "resumed");
        self.save(vec![event]).await
    }

    /// The notes an agent gets besides its requirement: earlier failures, guidance.
    fn notes(&self, requirement: Option<&str>) -> String {
        let mut notes = String::new();
        let failures: Vec<&Failure> = self
            .record
            .failures
            .iter()
            .filter(|f| requirement.is_none_or(|r| f.requirements.iter().any(|x| x == r)))
            .collect();
        if !failures.is_empty() {
            notes.push_str("Earlier attempts failed:\n");
            for f in failures {
                notes.push_str(&format!("- epoch {} ({}): {}\n", f.epoch, f.requirements.join(", "), f.reason));
            }
        }
        if !self.record.guidance.is_empty() {
            notes.push_str("Guidance from a human:\n");
            for g in &self.record.guidance {
                notes.push_str(&format!("- {g}\n"));
            }
        }
        notes
    }

    /// How many times `requirement` has been attempted before, plus one.
    fn attempt(&self, requirement: Option<&str>) -> u32 {
        let failed = match requirement {
            None => self.record.failures.len(),
            Some(r) => self.record.failures.iter().filter(|f| f.requirements.iter().any(|x| x == r)).count(),
        };
        failed as u32 + 1
    }

    /// Agents stop when the user cancels or the daemon shuts down.
    fn agent_cancel(&self) -> CancellationToken {
        let token = CancellationToken::new();
        let (child, cancel, shutdown) = (token.clone(), self.control.cancel.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => child.cancel(),
                () = shutdown.cancelled() => child.cancel(),
                () = child.cancelled() => {}
            }
        });
        token
    }

    /// Runs `work` while writing agent activity as it comes.
    async fn with_activity<T>(&mut self, work: impl Future<Output = T>) -> Result<T> {
        tokio::pin!(work);
        loop {
            let activity = self.activity.clone();
            tokio::select! {
                out = &mut work => return Ok(out),
                () = activity.added.notified() => {}
            }
            let events = self.activity.take();
            if !events.is_empty() {
                self.commit_events(events).await?;
                self.control.published.send_replace(self.record.clone());
            }
        }
    }

    async fn plan(&mut self) -> Result<()> {
        let all = self.tree().await?;
        let has_children = all.iter().any(|r| r.parent_id == self.record.root);
        if !self.record.replan && has_children {
            let event = self.event("note", "the plan stands");
            return self.enter(Phase::Assign, vec![event]).await;
        }
        let attempt = self.attempt(None);
        let started = LoopEvent {
            agent: "planning-1".into(),
            requirement: self.record.root.clone(),
            ..self.event("agent_started", format!("planning {} (attempt {attempt})", self.record.root))
        };
        self.save(vec![started]).await?;
        let cancel = self.agent_cancel();
        let root = self.record.root.clone();
        let claim = Claim { requirement: root.clone(), role: "planning".into(), agent: "planning-1".into() };
        let env = self.env();
        let outcome = self.with_activity(env.run(claim, attempt, self.notes(None), cancel.clone())).await?;
        cancel.cancel();
        if self.control.cancel.is_cancelled() || self.stopping() {
            return Ok(());
        }
        let finished = self.finished_event("planning-1", &root, &outcome);
        match outcome {
            RunOutcome::Done { .. } => {
                self.record.replan = false;
                self.enter(Phase::Assign, vec![finished]).await
            }
            RunOutcome::Failed { reason } | RunOutcome::OutOfBudget { reason } => {
                self.save(vec![finished]).await?;
                self.fail(vec![root], format!("planning failed: {reason}")).await
            }
            RunOutcome::Cancelled => Ok(()),
        }
    }

    fn finished_event(&self, agent: &str, requirement: &str, outcome: &RunOutcome) -> LoopEvent {
        let message = match outcome {
            RunOutcome::Done { summary } => format!("done: {}", first_line(summary, 200)),
            RunOutcome::Failed { reason } => format!("failed: {}", first_line(reason, 200)),
            RunOutcome::OutOfBudget { reason } => format!("out of budget: {}", first_line(reason, 200)),
            RunOutcome::Cancelled => "cancelled".into(),
        };
        LoopEvent { agent: agent.into(), requirement: requirement.into(), ..self.event("agent_finished", message) }
    }

    async fn assign(&mut self) -> Result<()> {
        let all = self.tree().await?;
        let picks = scheduler::ready(&all, &self.record.root, self.harness.policy(), self.config.max_agents);
        if picks.is_empty() {
            let leaves = scheduler::leaves(&all, &self.record.root);
            if leaves.iter().all(|r| r.status == Status::Done) {
                let event = self.event("note", "nothing left to assign");
                return self.enter(Phase::Check, vec![event]).await;
            }
            let stuck: Vec<String> = leaves
                .iter()
                .filter(|r| r.status != Status::Done)
                .map(|r| format!("{} [{}]", r.id, r.status.as_str()))
                .collect();
            let ids = leaves.iter().filter(|r| r.status != Status::Done).map(|r| r.id.clone()).collect();
            return self.fail(ids, format!("no requirement is ready; waiting: {}", stuck.join(", "))).await;
        }
        let lease = self.lease().await?;
        let mut per_role: BTreeMap<String, u32> = BTreeMap::new();
        let mut events = Vec::new();
        for Pick { requirement, role } in picks {
            let n = per_role.entry(role.clone()).or_default();
            *n += 1;
            let agent = format!("{role}-{n}");
            let holder = format!("{}/{agent}", self.record.id);
            let project = self.record.project.clone();
            match self.ssot.acquire_lock(&project, &format!("claim/{requirement}"), &holder, lease, 0).await {
                Ok(_) => {}
                Err(SsotError::Conflict(reason)) => {
                    events.push(self.event("note", format!("{requirement} is claimed elsewhere: {reason}")));
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            self.ssot.set_requirement_status(&project, &requirement, Status::Claimed, "", &agent, "").await?;
            events.push(LoopEvent {
                agent: agent.clone(),
                requirement: requirement.clone(),
                ..self.event("assigned", format!("{requirement} → {agent}"))
            });
            self.record.claims.push(Claim { requirement, role, agent });
        }
        if self.record.claims.is_empty() {
            // Everything ready is claimed by other loops: wait a moment and look again.
            self.save(events).await?;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            return Ok(());
        }
        self.enter(Phase::Exec, events).await
    }

    async fn exec(&mut self) -> Result<()> {
        for claim in &self.record.claims {
            self.advance(&claim.requirement, Status::Claimed, Status::InProgress, "", &claim.agent).await?;
        }
        let picks: Vec<Pick> = self
            .record
            .claims
            .iter()
            .map(|c| Pick { requirement: c.requirement.clone(), role: c.role.clone() })
            .collect();
        let waves = scheduler::waves(&picks, self.harness.policy());
        let mut failures = Vec::new();
        for wave in waves {
            let claims: Vec<Claim> = wave
                .iter()
                .filter_map(|p| self.record.claims.iter().find(|c| c.requirement == p.requirement).cloned())
                .collect();
            let started: Vec<LoopEvent> = claims
                .iter()
                .map(|c| LoopEvent {
                    agent: c.agent.clone(),
                    requirement: c.requirement.clone(),
                    ..self.event("agent_started", format!("{} works on {}", c.agent, c.requirement))
                })
                .collect();
            self.save(started).await?;
            let cancel = self.agent_cancel();
            let env = self.env();
            let runs: Vec<_> = claims
                .iter()
                .map(|c| {
                    let (attempt, notes) = (self.attempt(Some(&c.requirement)), self.notes(Some(&c.requirement)));
                    env.run(c.clone(), attempt, notes, cancel.clone())
                })
                .collect();
            let outcomes = self.with_activity(futures::future::join_all(runs)).await?;
            cancel.cancel();
            if self.control.cancel.is_cancelled() || self.stopping() {
                return Ok(());
            }
            let mut events = Vec::new();
            for (claim, outcome) in claims.iter().zip(outcomes) {
                events.push(self.finished_event(&claim.agent, &claim.requirement, &outcome));
                match outcome {
                    RunOutcome::Done { summary } => {
                        let reason = first_line(&summary, 500);
                        self.advance(&claim.requirement, Status::InProgress, Status::Done, &reason, &claim.agent)
                            .await?;
                    }
                    RunOutcome::Failed { reason } | RunOutcome::OutOfBudget { reason } => {
                        failures.push((
                            claim.requirement.clone(),
                            format!("{} ({}): {reason}", claim.requirement, claim.agent),
                        ));
                    }
                    RunOutcome::Cancelled => return Ok(()),
                }
            }
            self.count().await?;
            self.save(events).await?;
            if !failures.is_empty() {
                break;
            }
        }
        if failures.is_empty() {
            self.enter(Phase::Valid, Vec::new()).await
        } else {
            let (ids, reasons): (Vec<String>, Vec<String>) = failures.into_iter().unzip();
            self.fail(ids, reasons.join("; ")).await
        }
    }

    async fn valid(&mut self) -> Result<()> {
        let mut reasons = Vec::new();
        let mut events = Vec::new();
        // 1. Contracts.
        let report =
            contract_validator::validate(&self.ssot, &self.record.project, &self.root, self.harness.policy()).await?;
        for violation in &report.violations {
            reasons.push(format!("contract {}: {} ({})", violation.contract, violation.detail, violation.rule));
        }
        let contracts = if report.violations.is_empty() {
            format!("contracts ok ({} status changes)", report.status_changes.len())
        } else {
            format!("{} contract violations", report.violations.len())
        };
        events.push(LoopEvent { agent: "contract-validator".into(), ..self.event("validation", contracts) });
        self.save(events).await?;
        // 2. Review of each requirement of the epoch.
        let cancel = self.agent_cancel();
        for claim in self.record.claims.clone() {
            let started = LoopEvent {
                agent: "review-1".into(),
                requirement: claim.requirement.clone(),
                ..self.event("agent_started", format!("review-1 reviews {}", claim.requirement))
            };
            self.save(vec![started]).await?;
            let attempt = self.attempt(Some(&claim.requirement));
            let review = Claim { role: "review".into(), agent: "review-1".into(), ..claim.clone() };
            let env = self.env();
            let notes = self.notes(Some(&claim.requirement));
            let outcome = self.with_activity(env.run(review, attempt, notes, cancel.clone())).await?;
            if self.control.cancel.is_cancelled() || self.stopping() {
                cancel.cancel();
                return Ok(());
            }
            let finished = self.finished_event("review-1", &claim.requirement, &outcome);
            if let RunOutcome::Failed { reason } | RunOutcome::OutOfBudget { reason } = outcome {
                reasons.push(format!("review of {}: {reason}", claim.requirement));
            }
            self.save(vec![finished]).await?;
        }
        // 3. The project's tests.
        if !self.config.test_command.is_empty() && self.root.join(&self.config.tests_dir).is_dir() {
            let ctx = ActionContext {
                loop_id: self.record.id.clone(),
                epoch: self.record.epoch,
                agent: "maestro-tests".into(),
                role: "test".into(),
            };
            let argv = self.config.test_command.clone();
            let result = self.harness.perform(&ctx, Action::RunCommand { argv: argv.clone() }, cancel.clone()).await;
            let (passed, message) = match result {
                Ok(ActionOutput::Ran(out)) => {
                    let text = if out.stderr.trim().is_empty() { &out.stdout } else { &out.stderr };
                    let meaningful = |l: &&str| !l.trim().is_empty() && !l.trim().chars().all(|c| c == '-' || c == '=');
                    let tail: Vec<&str> = text.lines().rev().filter(meaningful).take(2).collect();
                    let summary = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
                    let failing: Vec<&str> = text
                        .lines()
                        .filter_map(|l| l.strip_prefix("FAIL: ").or_else(|| l.strip_prefix("ERROR: ")))
                        .collect();
                    let detail =
                        if failing.is_empty() { summary } else { format!("{} — {summary}", failing.join(", ")) };
                    (out.success(), detail)
                }
                Ok(other) => (false, format!("unexpected result {other:?}")),
                Err(e) => (false, e.to_string()),
            };
            let verdict = if passed { "passed" } else { "failed" };
            let event = self.event("test_result", format!("{}: {verdict}: {message}", argv.join(" ")));
            self.save(vec![event]).await?;
            if !passed {
                reasons.push(format!("tests failed: {message}"));
            }
        } else {
            let event = self.event("test_result", "no tests yet");
            self.save(vec![event]).await?;
        }
        cancel.cancel();
        if self.control.cancel.is_cancelled() || self.stopping() {
            return Ok(());
        }
        if reasons.is_empty() {
            self.enter(Phase::Commit, Vec::new()).await
        } else {
            let ids = self.record.claims.iter().map(|c| c.requirement.clone()).collect();
            self.fail(ids, reasons.join("; ")).await
        }
    }

    async fn commit(&mut self) -> Result<()> {
        let (root, id, epoch) = (self.root.clone(), self.record.id.clone(), self.record.epoch);
        let checkpoint = self.record.epoch_checkpoint.clone();
        let done: Vec<String> = self.record.claims.iter().map(|c| c.requirement.clone()).collect();
        let message = format!(
            "maestro {id} epoch {epoch}: {}",
            if done.is_empty() { "no changes".into() } else { done.join(", ") }
        );
        let commit = git(root, move |g| match g.committed(&id, epoch) {
            Some(commit) => Ok(commit),
            None => g.commit(&id, epoch, &g.checkpoint_of(&checkpoint)?, &message),
        })
        .await?;
        let project = self.record.project.clone();
        let name = format!("{}-e{}", self.record.id, self.record.epoch);
        match self
            .ssot
            .create_snapshot(&project, &name, &commit, &format!("{} epoch {} committed", self.record.id, epoch))
            .await
        {
            Ok(_) | Err(SsotError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        for phase in [Phase::Plan, Phase::Assign, Phase::Exec, Phase::Valid] {
            let _ = self.ssot.delete_snapshot(&project, &snapshot_name(&self.record, phase)).await;
        }
        self.release_claims().await;
        // From here on, "the last commit" (for cancel) is this epoch's.
        self.record.epoch_checkpoint = commit.clone();
        self.log("commit", "ok", &format!("epoch {epoch} → {}", &commit[..12.min(commit.len())])).await;
        let event = self.event(
            "commit",
            format!(
                "epoch {epoch} committed {} (tag maestro/{}/{epoch})",
                &commit[..12.min(commit.len())],
                self.record.id
            ),
        );
        self.enter(Phase::Check, vec![event]).await
    }

    async fn check(&mut self) -> Result<()> {
        let all = self.tree().await?;
        let leaves = scheduler::leaves(&all, &self.record.root);
        if !leaves.is_empty() && leaves.iter().all(|r| r.status == Status::Done) {
            let project = self.record.project.clone();
            let root = self.ssot.get_requirement(&project, &self.record.root, 0).await?.value;
            let mut status = root.status;
            while status != Status::Done {
                let next = match status {
                    Status::Pending => Status::Claimed,
                    Status::Claimed => Status::InProgress,
                    Status::InProgress => Status::Done,
                    Status::Failed | Status::Blocked => Status::Pending,
                    Status::Done => break,
                };
                self.ssot
                    .set_requirement_status(&project, &root.id, next, "every sub-requirement is done", "autoloop", "")
                    .await?;
                status = next;
            }
            self.count().await?;
            self.record.state = LoopState::Succeeded;
            self.record.reason = String::new();
            self.log("loop-end", "succeeded", &format!("{} epochs", self.record.epoch)).await;
            let event = self.event(
                "state",
                format!(
                    "succeeded: {}/{} requirements done in {} epochs",
                    self.record.done, self.record.total, self.record.epoch
                ),
            );
            return self.finish(vec![event]).await;
        }
        let event = self.event("note", format!("{}/{} requirements done", self.record.done, self.record.total));
        self.enter(Phase::Plan, vec![event]).await
    }

    /// An epoch failed: roll back and retry while the budget lasts, else escalate.
    async fn fail(&mut self, requirements: Vec<String>, reason: String) -> Result<()> {
        let failure = Failure { epoch: self.record.epoch, requirements, reason: reason.clone() };
        self.record.failures.push(failure);
        self.record.reason = reason.clone();
        self.log("epoch-failed", "failed", &reason).await;
        let failed = self.event("failed", first_line(&reason, 400));
        if self.record.retries < self.record.retry_budget {
            self.record.retries += 1;
            self.record.replan = true;
            self.enter(Phase::Rollback, vec![failed]).await
        } else {
            self.record.state = LoopState::Escalated;
            let message = format!(
                "escalated after {} retries: {} (approve, retry --guidance, or abort)",
                self.record.retries,
                first_line(&reason, 300)
            );
            self.log("escalated", "waiting", &message).await;
            let escalated = self.event("escalated", message);
            self.save(vec![failed, escalated]).await
        }
    }

    async fn rollback(&mut self) -> Result<()> {
        self.restore(Phase::Plan).await?;
        self.release_claims().await;
        let event =
            self.event("rollback", format!("workspace and SSOT back to the start of epoch {}", self.record.epoch));
        self.enter(Phase::Plan, vec![event]).await
    }

    async fn cancelled(&mut self) -> Result<()> {
        if !self.record.epoch_checkpoint.is_empty() {
            self.restore(Phase::Plan).await?;
        }
        self.record.state = LoopState::Cancelled;
        self.record.reason = "cancelled".into();
        self.log("loop-end", "cancelled", "workspace back to the last commit").await;
        let event = self.event("state", "cancelled; the workspace is back at the last commit");
        self.finish(vec![event]).await
    }

    async fn await_decision(&mut self) -> Result<()> {
        let decision = loop {
            if let Some(decision) = self.control.decision.lock().expect("decision lock").take() {
                break decision;
            }
            tokio::select! {
                () = self.control.wake.notified() => {}
                () = self.control.cancel.cancelled() => return Ok(()),
                () = self.shutdown.cancelled() => return Ok(()),
            }
        };
        match decision {
            Decision::Approve { actor } => {
                for claim in self.record.claims.clone() {
                    let reason = format!("approved by {actor}");
                    self.advance(&claim.requirement, Status::InProgress, Status::Done, &reason, &actor).await?;
                }
                self.record.state = LoopState::Running;
                self.log("approve", "ok", &format!("approved by {actor}")).await;
                let event = self.event("decision", format!("{actor} approved the epoch as it is"));
                let next = if self.record.phase == Phase::Plan { Phase::Assign } else { Phase::Commit };
                if next == Phase::Assign {
                    self.record.replan = false;
                }
                self.enter(next, vec![event]).await
            }
            Decision::Retry { guidance, actor } => {
                self.record.state = LoopState::Running;
                self.record.retries = 0;
                self.record.replan = true;
                if !guidance.is_empty() {
                    self.record.guidance.push(guidance.clone());
                }
                self.log("retry", "ok", &format!("{actor}: {guidance}")).await;
                let event = self.event("guidance", format!("{actor} asked for a retry: {guidance}"));
                self.enter(Phase::Rollback, vec![event]).await
            }
            Decision::Abort { actor } => {
                self.restore(Phase::Plan).await?;
                self.record.state = LoopState::Aborted;
                self.record.reason = format!("aborted by {actor}");
                self.log("loop-end", "aborted", &self.record.reason.clone()).await;
                let event =
                    self.event("state", format!("aborted by {actor}; the workspace is back at the last commit"));
                self.finish(vec![event]).await
            }
        }
    }

    /// Creates the root requirement of a new loop.
    pub async fn create_root(ssot: &Ssot, project: &str, task: &str) -> std::result::Result<String, SsotError> {
        let title = first_line(task, 190);
        let new = NewRequirement { title, description: task.to_string(), ..Default::default() };
        Ok(ssot.create_requirement(project, new).await?.value.id)
    }
}
