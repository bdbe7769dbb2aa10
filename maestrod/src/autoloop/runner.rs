//! One loop's task: the driver of the state machine in `fsm`. Each phase's
//! work (agents, git, the test run) ends in a typed `Outcome`; `fsm::next`
//! turns it into the next record and a list of effects; the driver performs
//! them in order and saves the record with the step's events in one
//! transaction.
//!
//! Durability: entering PLAN, ASSIGN, EXEC and VALID takes an SSOT snapshot
//! (`<loop>-e<epoch>-<phase>`), and PLAN and VALID a git checkpoint, so a
//! daemon that dies inside a phase resumes by putting the loop's part of the
//! SSOT and the workspace back to the phase's start and running it again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::activity::{Activity, AgentFiles, AgentObserver};
use super::config::LoopConfig;
use super::control::Control;
use super::fsm::{
    self, Assignment, Decision, Effect, Outcome, Plan, ReviewResult, Tests, Validation, Work, WorkResult, first_line,
};
use super::scheduler::{self, Pick};
use super::test_run::{self, TestPlan};
use crate::agents::contract_validator;
use crate::agents::llm::RetryHook;
use crate::agents::llm::config::{Keys, RawLlm};
use crate::agents::llm::recording::{AgentKey, Recorder};
use crate::agents::roles::Assignment as AgentAssignment;
use crate::agents::runtime::{RunOutcome, model_failure};
use crate::agents::tools::ReviewDecision;
use crate::harness::budget::Budget;
use crate::harness::executor::{ActionContext, ActionOutput, Harness, HarnessError};
use crate::harness::gate::{Action, Gate};
use crate::harness::rollback::{GitWorkspace, RollbackError};
use crate::harness::sandbox::{Limits, SandboxProvider};
use crate::ssot::exec_log::NewLogEntry;
use crate::ssot::loops::{Claim, EventKind, FailureCause, LoopEvent, LoopRecord, LoopState, Phase, Touched};
use crate::ssot::requirements::{NewRequirement, Requirement, Status};
use crate::ssot::snapshots::RestoreScope;
use crate::ssot::{Ssot, SsotError};

/// How long a claim lease lives without keep-alive.
const CLAIM_TTL_SECONDS: u64 = 30;
/// How much of a failed test run's output reaches the next attempt.
const TEST_TAIL_BYTES: usize = 3 << 10;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error(transparent)]
    Ssot(#[from] SsotError),
    #[error("workspace git: {0}")]
    Git(#[from] RollbackError),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("internal: {0}")]
    Internal(String),
}

impl LoopError {
    /// This daemon lost the loop (its lease ended): another daemon may run it now.
    fn fenced(&self) -> bool {
        matches!(
            self,
            LoopError::Ssot(SsotError::Fenced(_))
                | LoopError::Harness(HarnessError::Log(SsotError::Fenced(_)) | HarnessError::Fenced(_))
        )
    }
}

type Result<T> = std::result::Result<T, LoopError>;

/// Test hook: the loop of this project panics when it reaches this phase.
#[cfg(test)]
pub(crate) static PANIC_IN: std::sync::Mutex<Option<(String, Phase)>> = std::sync::Mutex::new(None);

/// What an agent run needs from its loop, owned so runs can go on while the
/// loop writes their activity.
#[derive(Clone)]
struct AgentEnv {
    keys: Keys,
    /// Where exchanges are recorded (absolute), if they are.
    record: Option<PathBuf>,
    /// The project's test commands, as VALID would run them now.
    tests: Vec<Vec<String>>,
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
            Err(e) => return RunOutcome::failed(FailureCause::Setup, e.to_string()),
        };
        let provider = match settings.provider_for(&role, &requirement, attempt, settings.policy, &self.keys) {
            Ok(provider) => provider,
            Err(e) => return RunOutcome::Failed(model_failure(e)),
        };
        let provider: Arc<dyn crate::agents::llm::LlmProvider> = match &self.record {
            Some(path) => {
                let agent = AgentKey { role: role.clone(), requirement: requirement.clone(), attempt };
                match Recorder::for_agent(provider, path, Some(agent)) {
                    Ok(recorder) => Arc::new(recorder),
                    Err(e) => return RunOutcome::failed(FailureCause::Setup, e.to_string()),
                }
            }
            None => provider,
        };
        let observer = AgentObserver { activity: &self.activity, requirement: requirement.clone(), phase: self.phase };
        // Retries of model requests are loop events (`model retry 2/5 after 429: …`).
        let on_retry = {
            let (activity, agent, requirement, phase) =
                (self.activity.clone(), agent.clone(), requirement.clone(), self.phase);
            RetryHook(Some(Arc::new(move |message: &str| {
                activity.push(LoopEvent {
                    kind: EventKind::Note,
                    phase: Some(phase),
                    agent: agent.clone(),
                    requirement: requirement.clone(),
                    message: message.to_string(),
                    ..Default::default()
                });
            })))
        };
        let ctx = ActionContext { loop_id: self.loop_id.clone(), epoch: self.epoch, agent, role };
        let assignment = AgentAssignment {
            provider: provider.as_ref(),
            model: settings.model.clone(),
            harness: &self.harness,
            ctx,
            requirement,
            notes,
            max_turns: self.max_turns,
            max_tokens: settings.max_tokens.unwrap_or(self.max_tokens),
            observer: Some(&observer),
            temperature: settings.temperature,
            context_window: settings.context_window,
            tests: self.tests.clone(),
            on_retry,
        };
        match assignment.work(cancel).await {
            Ok(outcome) => outcome,
            Err(error) => RunOutcome::Failed(error.into_failure()),
        }
    }
}

fn snapshot_name(id: &str, epoch: u64, phase: Phase) -> String {
    format!("{id}-e{epoch}-{}", phase.as_str().to_lowercase())
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

pub struct Runner {
    ssot: Arc<Ssot>,
    sandbox: Arc<dyn SandboxProvider>,
    control: Arc<Control>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    record: LoopRecord,
    root: PathBuf,
    config: LoopConfig,
    llm: Arc<RawLlm>,
    harness: Arc<Harness>,
    activity: Arc<Activity>,
}

impl Runner {
    pub fn new(
        ssot: Arc<Ssot>,
        sandbox: Arc<dyn SandboxProvider>,
        control: Arc<Control>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        record: LoopRecord,
    ) -> std::result::Result<Runner, String> {
        let root = PathBuf::from(&record.workspace);
        let (harness, config, llm) = open_workspace(&ssot, &sandbox, &record.project, &root)?;
        let mut record = record;
        let per_loop = harness.budget().config().per_loop;
        (record.token_budget, record.time_budget_ms) = (per_loop.tokens, per_loop.wall_ms);
        let activity = Arc::new(Activity::default());
        activity.base.store(record.tokens, Ordering::SeqCst);
        activity.done.store(record.done, Ordering::SeqCst);
        activity.total.store(record.total, Ordering::SeqCst);
        Ok(Runner {
            ssot,
            sandbox,
            control,
            shutdown,
            tasks,
            record,
            root,
            config,
            llm: Arc::new(llm),
            harness: Arc::new(harness),
            activity,
        })
    }

    fn env(&self) -> AgentEnv {
        let tests = match test_run::plan(&self.config, &self.root) {
            TestPlan::Run(commands) => commands,
            TestPlan::Off | TestPlan::Missing(_) => Vec::new(),
        };
        let keys = Keys::with_file(self.control.keys.lock().expect("keys lock").clone());
        let record = (!self.record.record_file.is_empty()).then(|| self.root.join(&self.record.record_file));
        AgentEnv {
            keys,
            record,
            tests,
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

    fn event(&self, kind: EventKind, message: impl Into<String>) -> LoopEvent {
        LoopEvent { kind, phase: Some(self.record.phase), message: message.into(), ..Default::default() }
    }

    fn agent_event(&self, kind: EventKind, agent: &str, requirement: &str, message: String) -> LoopEvent {
        LoopEvent { agent: agent.into(), requirement: requirement.into(), ..self.event(kind, message) }
    }

    /// Takes the SSOT changes agents made into the record (they are restored on rollback).
    fn absorb(&mut self) {
        let touched = self.activity.take_touched();
        self.record.touched.extend(touched);
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
        self.absorb();
        let (record, events) = self.ssot.save_loop_events(self.record.clone(), events).await?;
        self.record = record;
        for event in events {
            // No receiver is fine: nobody follows live right now.
            let _ = self.control.events.send(event);
        }
        Ok(())
    }

    /// Feeds `outcome` to the state machine, performs its effects, saves.
    async fn apply(&mut self, outcome: Outcome) -> Result<()> {
        self.absorb();
        let (mut record, effects) = fsm::next(&self.record, outcome);
        let ending = record.state.is_final();
        let mut events = Vec::new();
        let mut after_save = Vec::new();
        for effect in effects {
            match effect {
                Effect::Emit(event) => events.push(event),
                // An ending loop's snapshots go once its end is durable: a daemon killed
                // before that resumes the loop, and its restore still finds them.
                drop @ Effect::DropSnapshots { .. } if ending => after_save.push(drop),
                other => self.perform(other, &mut record).await?,
            }
        }
        self.record = record;
        self.count().await?;
        self.save(events).await?;
        let mut record = self.record.clone();
        for effect in after_save {
            self.perform(effect, &mut record).await?;
        }
        Ok(())
    }

    async fn perform(&self, effect: Effect, record: &mut LoopRecord) -> Result<()> {
        // Git and lease work cannot be fenced by the store: stop first when the lease is known lost.
        crate::ssot::fence::check()?;
        let project = record.project.clone();
        match effect {
            Effect::AcquireLease => {
                if record.lease == 0 || self.ssot.keep_alive(record.lease).await.is_err() {
                    record.lease = self.ssot.grant_lease(CLAIM_TTL_SECONDS).await?.id;
                }
            }
            Effect::ClearGitLocks => {
                let loop_id = record.id.clone();
                let cleared = git(self.root.clone(), move |g| g.clear_stale_locks(&loop_id)).await?;
                if cleared > 0 {
                    warn!(loop_id = %record.id, cleared, "removed stale git ref locks left by the previous daemon");
                }
            }
            Effect::Reclaim => {
                // Claims live on the lease: take them again (the old lease may have expired).
                for claim in &record.claims {
                    let holder = format!("{}/{}", record.id, claim.agent);
                    let name = format!("claim/{}", claim.requirement);
                    self.ssot.acquire_lock(&project, &name, &holder, record.lease, 0).await?;
                }
            }
            Effect::HoldPaused => self.control.pause.store(true, Ordering::SeqCst),
            Effect::Prepare(phase) => self.prepare(phase, record).await?,
            Effect::Restore { phase, epoch, ssot, touched } => {
                self.restore(record, phase, epoch, ssot, touched).await?
            }
            Effect::ReleaseClaims(claims) => {
                for claim in claims {
                    let name = format!("claim/{}", claim.requirement);
                    let _ = self.ssot.release_lock(&project, &name, record.lease).await;
                }
            }
            Effect::MarkFailed { requirements, reason } => {
                for id in requirements {
                    self.advance(&project, &id, Status::InProgress, Status::Failed, &reason).await?;
                }
            }
            Effect::MarkPending(ids) => {
                for id in ids {
                    self.advance(&project, &id, Status::InProgress, Status::Pending, "not worked on yet").await?;
                    self.advance(&project, &id, Status::Claimed, Status::Pending, "not worked on yet").await?;
                }
            }
            Effect::MarkDone(done) => {
                for (id, reason) in done {
                    self.complete(&project, &id, &reason).await?;
                }
            }
            Effect::MarkRootDone => self.complete(&project, &record.root, "every sub-requirement is done").await?,
            Effect::Publish => self.publish(record).await,
            Effect::DropSnapshots { through_epoch } => self.drop_snapshots(record, through_epoch).await?,
            Effect::Log { action, outcome, detail } => self.log(record, action, outcome, &detail).await,
            Effect::TellQueued(message) => self.tell_queued(record, &message).await?,
            Effect::Wait(duration) => {
                tokio::select! {
                    () = tokio::time::sleep(duration) => {}
                    () = self.control.cancel.cancelled() => {}
                }
            }
            Effect::Finish => {
                if record.lease != 0 {
                    let _ = self.ssot.revoke_lease(record.lease).await;
                    record.lease = 0;
                }
                record.end_time_ms = crate::ssot::clock::now_ms();
            }
            Effect::Emit(_) => unreachable!("events are collected by apply"),
        }
        Ok(())
    }

    /// Takes what resuming `phase` needs: workspace checkpoints and an SSOT snapshot.
    async fn prepare(&self, phase: Phase, record: &mut LoopRecord) -> Result<()> {
        let (root, id, epoch) = (self.root.clone(), record.id.clone(), record.epoch);
        match phase {
            Phase::Plan => {
                let (checkpoint, guard) =
                    git(root, move |g| Ok((g.checkpoint(&id, epoch)?.commit, g.guard(&id, epoch)?))).await?;
                if record.baseline_checkpoint.is_empty() {
                    record.baseline_checkpoint = checkpoint.clone();
                }
                record.epoch_checkpoint = checkpoint;
                record.guard = guard;
            }
            Phase::Valid => {
                record.valid_checkpoint = git(root, move |g| g.checkpoint_stage(&id, epoch, "valid")).await?.commit;
            }
            _ => {}
        }
        if matches!(phase, Phase::Plan | Phase::Assign | Phase::Exec | Phase::Valid) {
            let name = snapshot_name(&record.id, epoch, phase);
            match self.ssot.delete_snapshot(&record.project, &name).await {
                Ok(()) | Err(SsotError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let commit = if phase == Phase::Valid { &record.valid_checkpoint } else { &record.epoch_checkpoint };
            let description = format!("{} {}", record.id, phase.as_str());
            self.ssot.create_snapshot(&record.project, &name, commit, &description).await?;
        }
        Ok(())
    }

    /// Puts the workspace back to the checkpoint of `phase` and, with `ssot`, the
    /// loop's tree and what its agents touched to the snapshot of `phase` in `epoch`.
    async fn restore(&self, record: &LoopRecord, phase: Phase, epoch: u64, ssot: bool, touched: Touched) -> Result<()> {
        if ssot {
            let name = snapshot_name(&record.id, epoch, phase);
            let scope = RestoreScope {
                root: record.root.clone(),
                requirements: touched.requirements,
                contracts: touched.contracts,
                memory: touched.memory,
            };
            match self.ssot.restore_scope(&record.project, &name, &scope).await {
                Ok(_) => {}
                Err(SsotError::NotFound { .. }) => warn!(snapshot = %name, "no snapshot to restore"),
                Err(e) => return Err(e.into()),
            }
        }
        let commit =
            if phase == Phase::Valid { record.valid_checkpoint.clone() } else { record.epoch_checkpoint.clone() };
        if !commit.is_empty() {
            git(self.root.clone(), move |g| g.rollback(&g.checkpoint_of(&commit)?)).await?;
        }
        Ok(())
    }

    /// Drops this loop's phase snapshots of epochs up to `through` (epoch commits stay).
    async fn drop_snapshots(&self, record: &LoopRecord, through: u64) -> Result<()> {
        let prefix = format!("{}-e", record.id);
        let mut token = String::new();
        let mut names = Vec::new();
        loop {
            let page = self.ssot.list_snapshots(&record.project, 1000, &token).await?;
            for snapshot in page.items {
                let name = snapshot.value.name;
                let Some((epoch, _phase)) = name.strip_prefix(&prefix).and_then(|rest| rest.split_once('-')) else {
                    continue;
                };
                if epoch.parse::<u64>().is_ok_and(|e| e <= through) {
                    names.push(name);
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        for name in names {
            match self.ssot.delete_snapshot(&record.project, &name).await {
                Ok(()) | Err(SsotError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The branch of a successful loop's work. A failure here leaves the
    /// loop succeeded (its work is committed and tagged) and is logged.
    async fn publish(&self, record: &mut LoopRecord) {
        let (loop_id, epoch, onto) = (record.id.clone(), record.epoch, self.config.commit_to_current_branch);
        // The loop's first checkpoint: what the folder held before it wrote anything.
        let baseline = if record.baseline_checkpoint.is_empty() {
            format!("refs/maestro/{loop_id}/1/start")
        } else {
            record.baseline_checkpoint.clone()
        };
        let published = git(self.root.clone(), move |g| {
            let baseline = g.checkpoint_of(&baseline)?;
            g.publish(&loop_id, epoch, &baseline, onto)
        });
        match published.await {
            Ok(Some(published)) => {
                let detail = if published.on_current {
                    format!("the work is committed on your branch {}", published.branch)
                } else {
                    let why = if published.note.is_empty() { String::new() } else { format!(" ({})", published.note) };
                    format!("the work is on branch {}{why}; take it with: {}", published.branch, published.take)
                };
                record.result_branch = published.branch.clone();
                record.result_on_current_branch = published.on_current;
                record.result_take = published.take;
                self.log(record, "publish", "ok", &detail).await;
            }
            Ok(None) => {}
            Err(e) => {
                warn!(loop_id = %record.id, error = %e, "cannot put the work on a branch; it stays in the tags");
                self.log(
                    record,
                    "publish",
                    "error",
                    &format!("the work stays in the tags maestro/{}/*: {e}", record.id),
                )
                .await;
            }
        }
    }

    async fn log(&self, record: &LoopRecord, action: &str, outcome: &str, detail: &str) {
        let entry = NewLogEntry {
            loop_id: record.id.clone(),
            epoch: record.epoch,
            agent: "autoloop".into(),
            action: action.into(),
            target: record.id.clone(),
            outcome: outcome.into(),
            detail: detail.into(),
            ..Default::default()
        };
        if let Err(error) = self.ssot.append_log(&record.project, entry).await {
            warn!(%error, "cannot append to the execution log");
        }
    }

    /// Tells every loop queued in this project why it waits.
    async fn tell_queued(&self, record: &LoopRecord, message: &str) -> Result<()> {
        for queued in self.ssot.unfinished_loops().await? {
            if queued.project == record.project && queued.state == LoopState::Queued {
                let event = LoopEvent { kind: EventKind::Waiting, message: message.into(), ..Default::default() };
                self.ssot.note_queued_loop(&queued.id, message, event).await?;
            }
        }
        Ok(())
    }

    /// Moves `requirement` from `from` to `to`; leaves it alone in any other status.
    async fn advance(&self, project: &str, requirement: &str, from: Status, to: Status, reason: &str) -> Result<()> {
        match self.ssot.get_requirement(project, requirement, 0).await {
            Ok(r) if r.value.status == from => {
                self.ssot.set_requirement_status(project, requirement, to, reason, "autoloop", "").await?;
            }
            Ok(_) | Err(SsotError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Walks `requirement` along its status machine to DONE.
    async fn complete(&self, project: &str, requirement: &str, reason: &str) -> Result<()> {
        let mut status = match self.ssot.get_requirement(project, requirement, 0).await {
            Ok(r) => r.value.status,
            Err(SsotError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        while status != Status::Done {
            let next = match status {
                Status::Pending => Status::Claimed,
                Status::Claimed => Status::InProgress,
                Status::InProgress => Status::Done,
                Status::Failed | Status::Blocked => Status::Pending,
                Status::Done => break,
            };
            self.ssot.set_requirement_status(project, requirement, next, reason, "autoloop", "").await?;
            status = next;
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

    /// Runs the loop to its end, or until the daemon shuts down.
    pub async fn run(mut self, resumed: bool) {
        let span = info_span!("loop", id = %self.record.id, project = %self.record.project);
        // What the loop and its agents change is recorded as the loop's.
        let actor = self.record.id.clone();
        let work = async move {
            // Dropped on return and when a panic unwinds: the keep-alive stops either way.
            let _keep_alive = self.spawn_keep_alive().drop_guard();
            let result = self.drive(resumed).await;
            match result {
                Ok(()) => {}
                Err(error) if self.stopping() => info!(%error, "stopped by shutdown"),
                // Nothing more may be written for the loop from here: the record stays as the new owner keeps it.
                Err(error) if error.fenced() => warn!(%error, "stopped: a write was refused"),
                Err(error) => {
                    warn!(%error, "the loop failed");
                    if let Err(e) = self.fail_hard(&error.to_string()).await {
                        warn!(error = %e, "cannot record the failure");
                    }
                }
            }
        };
        crate::ssot::actor::scope(actor, work.instrument(span)).await
    }

    /// Charges the budget with what the loop's agents spent before a restart
    /// or before the harness was rebuilt: budgets are kept in the SSOT.
    async fn restore_budget(&self) -> Result<()> {
        let mut records = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.ssot.list_budgets(&self.record.project, &self.record.id, 500, &token).await?;
            records.extend(page.items.into_iter().map(|v| v.value));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        self.harness.budget().restore(&records);
        Ok(())
    }

    /// An error the loop cannot go on from: FAILED, claims and lease released.
    async fn fail_hard(&mut self, reason: &str) -> Result<()> {
        self.record.state = LoopState::Failed;
        self.record.reason = reason.to_string();
        let mut record = self.record.clone();
        let claims = std::mem::take(&mut record.claims);
        self.perform(Effect::ReleaseClaims(claims), &mut record).await?;
        self.perform(Effect::Finish, &mut record).await?;
        self.record = record;
        let event = self.event(EventKind::State, format!("failed: {reason}"));
        self.save(vec![event]).await
    }

    /// Keeps the claim lease alive while the loop runs.
    fn spawn_keep_alive(&self) -> CancellationToken {
        let stop = self.control.cancel.child_token();
        let (ssot, control, stop2) = (self.ssot.clone(), self.control.clone(), stop.clone());
        let mut published = control.published.subscribe();
        self.tasks.spawn(
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(CLAIM_TTL_SECONDS / 3));
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
            }
            .instrument(info_span!("keep-alive")),
        );
        stop
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    fn cancel_requested(&self) -> bool {
        self.control.cancel_requested.load(Ordering::SeqCst)
    }

    /// Agents stop when the user cancels or the daemon shuts down.
    fn interrupted(&self) -> bool {
        self.stopping() || self.cancel_requested()
    }

    async fn drive(&mut self, resumed: bool) -> Result<()> {
        // A cancel asked for before a restart still holds.
        if resumed && self.ssot.loop_cancel_requested(&self.record.id).await? {
            self.control.cancel_requested.store(true, Ordering::SeqCst);
        }
        self.restore_budget().await?;
        let first = if resumed { Outcome::Resumed } else { Outcome::Started };
        self.apply(first).await?;
        loop {
            if self.stopping() || self.record.state.is_final() {
                return Ok(());
            }
            if self.cancel_requested() {
                self.apply(Outcome::CancelRequested).await?;
                continue;
            }
            if self.record.state == LoopState::Escalated {
                if let Some(decision) = self.await_decision().await? {
                    self.apply(Outcome::Decided(decision)).await?;
                }
                continue;
            }
            if self.control.pause.load(Ordering::SeqCst) {
                self.apply(Outcome::PauseRequested).await?;
                while self.control.pause.load(Ordering::SeqCst) && !self.control.cancel.is_cancelled() {
                    tokio::select! {
                        () = self.control.wake.notified() => {}
                        () = self.control.cancel.cancelled() => {}
                    }
                }
                if !self.interrupted() {
                    self.apply(Outcome::Unpaused).await?;
                }
                continue;
            }
            #[cfg(test)]
            if PANIC_IN.lock().expect("test hook").as_ref() == Some(&(self.record.project.clone(), self.record.phase)) {
                panic!("test hook: panic in {}", self.record.phase.as_str());
            }
            // One span per phase of an epoch (`epoch` with its number and phase).
            let span = info_span!("epoch", epoch = self.record.epoch, phase = self.record.phase.as_str());
            let outcome = async {
                Ok::<_, LoopError>(match self.record.phase {
                    Phase::Plan => self.plan().await?,
                    Phase::Assign => self.assign().await?,
                    Phase::Exec => self.exec().await?,
                    Phase::Valid => self.valid().await?,
                    Phase::Commit => Some(self.commit().await?),
                    Phase::Check => Some(self.check().await?),
                    Phase::Rollback => Some(Outcome::RollbackDue),
                })
            }
            .instrument(span)
            .await?;
            // No outcome: the work was interrupted (cancel, shutdown); the top of the loop says how.
            if let Some(outcome) = outcome {
                self.apply(outcome).await?;
            }
        }
    }

    /// Waits for a human's decision the loop can act on; refused ones are answered and waited past.
    async fn await_decision(&mut self) -> Result<Option<Decision>> {
        loop {
            let pending = self.control.decision.lock().expect("decision lock").take();
            if let Some(pending) = pending {
                match self.vet(&pending.decision).await? {
                    Ok(()) => {
                        let _ = pending.reply.send(Ok(()));
                        return Ok(Some(pending.decision));
                    }
                    Err(refusal) => {
                        let _ = pending.reply.send(Err(refusal));
                        continue;
                    }
                }
            }
            tokio::select! {
                () = self.control.wake.notified() => {}
                () = self.control.cancel.cancelled() => return Ok(None),
            }
        }
    }

    /// Whether the loop can act on `decision`: approve and retry read the project's
    /// configuration again (a fixed model setting takes effect); approve needs work to approve.
    async fn vet(&mut self, decision: &Decision) -> Result<std::result::Result<(), String>> {
        let verb = match decision {
            Decision::Approve { .. } => "approve",
            Decision::Retry { .. } => "retry",
            Decision::Abort { .. } => return Ok(Ok(())),
        };
        let (harness, config, llm) = match open_workspace(&self.ssot, &self.sandbox, &self.record.project, &self.root) {
            Ok(opened) => opened,
            Err(e) => return Ok(Err(format!("cannot {verb} {}: {e}", self.record.id))),
        };
        let (id, epoch) = (self.record.id.clone(), self.record.epoch);
        if verb == "approve" {
            let next = "retry it with guidance or abort it";
            match self.record.phase {
                Phase::Assign => {
                    return Ok(Err(format!(
                        "nothing to approve: {id} escalated before any work of epoch {epoch}; {next}"
                    )));
                }
                Phase::Plan => {
                    let all = self.tree().await?;
                    if !all.iter().any(|r| r.parent_id == self.record.root) {
                        return Ok(Err(format!(
                            "nothing to approve: the plan of epoch {epoch} of {id} is empty; {next}"
                        )));
                    }
                }
                Phase::Exec | Phase::Valid | Phase::Commit => {
                    let checkpoint = self.record.epoch_checkpoint.clone();
                    let changed =
                        git(self.root.clone(), move |g| g.changed_since(&g.checkpoint_of(&checkpoint)?)).await?;
                    let reasoned = self.record.results.values().any(|r| r.no_change_reason.is_some());
                    if changed.is_empty() && !reasoned {
                        return Ok(Err(format!("nothing to approve: epoch {epoch} of {id} changed no files; {next}")));
                    }
                }
                Phase::Check | Phase::Rollback => {}
            }
        }
        self.harness = Arc::new(harness);
        self.restore_budget().await?;
        self.config = config;
        self.llm = Arc::new(llm);
        self.record.retry_budget = self.config.retries;
        Ok(Ok(()))
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

    fn finished_event(&self, agent: &str, requirement: &str, outcome: &RunOutcome) -> LoopEvent {
        let message = match outcome {
            RunOutcome::Done(f) => match &f.no_change_reason {
                Some(why) => format!("done, no change needed: {}", first_line(why, 200)),
                None => format!("done: {}", first_line(&f.summary, 200)),
            },
            RunOutcome::Failed(f) => format!("failed: {}", first_line(&f.reason, 200)),
            RunOutcome::Cancelled => "cancelled".into(),
        };
        self.agent_event(EventKind::AgentFinished, agent, requirement, message)
    }

    /// Runs one agent, writing its activity; `None` when interrupted.
    async fn run_agent(&mut self, claim: Claim, attempt: u32, notes: String) -> Result<Option<RunOutcome>> {
        let started = self.agent_event(
            EventKind::AgentStarted,
            &claim.agent,
            &claim.requirement,
            format!("{} works on {}", claim.agent, claim.requirement),
        );
        self.save(vec![started]).await?;
        let cancel = self.control.cancel.child_token();
        let (agent, requirement) = (claim.agent.clone(), claim.requirement.clone());
        let env = self.env();
        let outcome = self.with_activity(env.run(claim, attempt, notes, cancel.clone())).await?;
        cancel.cancel();
        if self.interrupted() || outcome == RunOutcome::Cancelled {
            return Ok(None);
        }
        self.activity.push(self.finished_event(&agent, &requirement, &outcome));
        Ok(Some(outcome))
    }

    async fn plan(&mut self) -> Result<Option<Outcome>> {
        let all = self.tree().await?;
        let root = self.record.root.clone();
        let has_children = all.iter().any(|r| r.parent_id == root);
        if !self.record.replan && has_children {
            return Ok(Some(Outcome::Planned(Plan::Stands)));
        }
        let claim = Claim { requirement: root.clone(), role: "planning".into(), agent: "planning-1".into() };
        let (attempt, notes) = (fsm::attempt(&self.record, None), fsm::notes(&self.record, None));
        let Some(outcome) = self.run_agent(claim, attempt, notes).await? else { return Ok(None) };
        let plan = match outcome {
            RunOutcome::Done(_) => {
                let all = self.tree().await?;
                let problems = scheduler::plan_problems(&all, &root, self.harness.policy());
                if problems.is_empty() { Plan::Made } else { Plan::Invalid { problems } }
            }
            RunOutcome::Failed(failure) => Plan::Failed(failure),
            RunOutcome::Cancelled => return Ok(None),
        };
        Ok(Some(Outcome::Planned(plan)))
    }

    async fn assign(&mut self) -> Result<Option<Outcome>> {
        let all = self.tree().await?;
        let root = self.record.root.clone();
        let picks = scheduler::ready(&all, &root, self.harness.policy(), self.config.max_agents);
        if picks.is_empty() {
            let leaves = scheduler::leaves(&all, &root);
            if leaves.iter().all(|r| r.status == Status::Done) {
                return Ok(Some(Outcome::Assigned(Assignment::AllDone)));
            }
            let waiting =
                leaves.iter().filter(|r| r.status != Status::Done).map(|r| (r.id.clone(), r.status)).collect();
            return Ok(Some(Outcome::Assigned(Assignment::Stuck { waiting })));
        }
        let (project, lease) = (self.record.project.clone(), self.record.lease);
        let mut per_role: BTreeMap<String, u32> = BTreeMap::new();
        let mut claims = Vec::new();
        let mut notes = Vec::new();
        for Pick { requirement, role } in picks {
            let n = per_role.entry(role.clone()).or_default();
            *n += 1;
            let agent = format!("{role}-{n}");
            let holder = format!("{}/{agent}", self.record.id);
            match self.ssot.acquire_lock(&project, &format!("claim/{requirement}"), &holder, lease, 0).await {
                Ok(_) => {}
                Err(SsotError::Conflict(reason)) => {
                    notes.push(format!("{requirement} is claimed elsewhere: {reason}"));
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            self.ssot.set_requirement_status(&project, &requirement, Status::Claimed, "", &agent, "").await?;
            claims.push(Claim { requirement, role, agent });
        }
        if claims.is_empty() {
            return Ok(Some(Outcome::Assigned(Assignment::HeldElsewhere { notes })));
        }
        Ok(Some(Outcome::Assigned(Assignment::Claimed(claims))))
    }

    /// The files of `claim`'s write set that changed in this epoch and that its
    /// agent wrote itself (a build leftover or another agent's file is not its work);
    /// whether its role writes files at all; its write set, for messages.
    fn changed_by(&self, claim: &Claim, changed: &[String], wrote: &AgentFiles) -> (Vec<String>, bool, String) {
        let policy = self.harness.policy();
        let Some(role) = policy.roles.get(&claim.role) else { return (Vec::new(), false, String::new()) };
        let globs = role.source.write.clone().unwrap_or_default();
        // A deleted directory counts for the files that were in it.
        let wrote_it = |path: &str| {
            wrote
                .files
                .iter()
                .any(|f| path == f || path.strip_prefix(f.as_str()).is_some_and(|rest| rest.starts_with('/')))
        };
        let mine = changed.iter().filter(|p| role.write.is_match(p.as_str()) && wrote_it(p)).cloned().collect();
        (mine, !globs.is_empty(), globs.join(", "))
    }

    async fn exec(&mut self) -> Result<Option<Outcome>> {
        let project = self.record.project.clone();
        for claim in &self.record.claims {
            self.advance(&project, &claim.requirement, Status::Claimed, Status::InProgress, "").await?;
        }
        let picks: Vec<Pick> = self
            .record
            .claims
            .iter()
            .map(|c| Pick { requirement: c.requirement.clone(), role: c.role.clone() })
            .collect();
        let waves = scheduler::waves(&picks, self.harness.policy());
        let mut works = Vec::new();
        for wave in waves {
            let claims: Vec<Claim> = wave
                .iter()
                .filter_map(|p| self.record.claims.iter().find(|c| c.requirement == p.requirement).cloned())
                .collect();
            let started: Vec<LoopEvent> = claims
                .iter()
                .map(|c| {
                    let message = format!("{} works on {}", c.agent, c.requirement);
                    self.agent_event(EventKind::AgentStarted, &c.agent, &c.requirement, message)
                })
                .collect();
            self.save(started).await?;
            let cancel = self.control.cancel.child_token();
            let env = self.env();
            let runs: Vec<_> = claims
                .iter()
                .map(|c| {
                    let attempt = fsm::attempt(&self.record, Some(&c.requirement));
                    let notes = fsm::notes(&self.record, Some(&c.requirement));
                    env.run(c.clone(), attempt, notes, cancel.clone())
                })
                .collect();
            let outcomes = self.with_activity(futures::future::join_all(runs)).await?;
            cancel.cancel();
            if self.interrupted() {
                return Ok(None);
            }
            let checkpoint = self.record.epoch_checkpoint.clone();
            let changed = git(self.root.clone(), move |g| g.changed_since(&g.checkpoint_of(&checkpoint)?)).await?;
            let mut failed = false;
            for (claim, outcome) in claims.into_iter().zip(outcomes) {
                self.activity.push(self.finished_event(&claim.agent, &claim.requirement, &outcome));
                let wrote = self.activity.take_files(&claim.agent);
                let result = match outcome {
                    RunOutcome::Done(finished) => {
                        let (files, implementing, paths) = self.changed_by(&claim, &changed, &wrote);
                        WorkResult::Finished {
                            summary: finished.summary,
                            changed: files,
                            no_change_reason: finished.no_change_reason,
                            implementing,
                            paths,
                        }
                    }
                    RunOutcome::Failed(failure) => {
                        failed = true;
                        WorkResult::Failed(failure)
                    }
                    RunOutcome::Cancelled => return Ok(None),
                };
                works.push(Work { claim, result });
            }
            self.count().await?;
            self.save(Vec::new()).await?;
            if failed {
                break;
            }
        }
        if let Some(tampered) = self.tampered().await? {
            return Ok(Some(tampered));
        }
        Ok(Some(Outcome::Executed(works)))
    }

    /// Whether commands changed what git and the daemon trust since the epoch
    /// began; `.git` is put back at once (the user's next `git` must not run
    /// what a command planted).
    async fn tampered(&self) -> Result<Option<Outcome>> {
        if self.record.guard.is_empty() {
            return Ok(None);
        }
        let guard = self.record.guard.clone();
        // The recording is the daemon's own writing under `.maestro/`.
        let own = self.record.record_file.strip_prefix('.').map(str::to_string);
        let changed = git(self.root.clone(), move |g| {
            let mut changed = g.tampered(&guard)?;
            changed.retain(|path| Some(path) != own.as_ref());
            if !changed.is_empty() {
                g.restore_guarded(&guard)?;
            }
            Ok(changed)
        })
        .await?;
        if changed.is_empty() {
            return Ok(None);
        }
        warn!(loop_id = %self.record.id, ?changed, "commands changed guarded files");
        // As the user sees them: `.git/hooks/…`, `.maestro/…`, a nested repository.
        let changed = changed
            .into_iter()
            .map(|path| if path == "nested" { "a nested .git".to_string() } else { format!(".{path}") })
            .collect();
        Ok(Some(Outcome::Tampered { changed }))
    }

    /// What review reads besides the requirement: what the implementer did, and the diff.
    async fn review_notes(&self, requirement: &str) -> Result<String> {
        let mut notes = self.review_summary(requirement);
        let changed = self.record.results.get(requirement).map(|r| r.changed.clone()).unwrap_or_default();
        if !changed.is_empty() {
            let checkpoint = self.record.epoch_checkpoint.clone();
            let diff =
                git(self.root.clone(), move |g| g.diff_since(&g.checkpoint_of(&checkpoint)?, &changed, 12 << 10))
                    .await?;
            notes.push_str(&format!("\nThe diff of this epoch for it:\n```diff\n{diff}```\n"));
        }
        Ok(notes)
    }

    fn review_summary(&self, requirement: &str) -> String {
        let mut notes = String::from("You review the work done for this requirement in this epoch.\n");
        if let Some(result) = self.record.results.get(requirement) {
            notes.push_str(&format!("The implementer's summary: {}\n", first_line(&result.summary, 1000)));
            if result.changed.is_empty() {
                notes.push_str("Files changed: none.\n");
            } else {
                notes.push_str(&format!("Files changed: {}\n", result.changed.join(", ")));
            }
            if let Some(why) = &result.no_change_reason {
                notes.push_str(&format!(
                    "The implementer says no change is needed: {why}\nApprove only if that is true.\n"
                ));
            }
        }
        notes.push_str(
            "Give your verdict with review_verdict (approve, or request_changes with findings), then call finish.\n",
        );
        notes.push_str(&fsm::notes(&self.record, Some(requirement)));
        notes
    }

    async fn valid(&mut self) -> Result<Option<Outcome>> {
        // 1. Contracts.
        let report =
            contract_validator::validate(&self.ssot, &self.record.project, &self.root, self.harness.policy()).await?;
        self.record.touched.contracts.extend(report.status_changes.iter().map(|(name, _)| name.clone()));
        let contracts: Vec<(String, String)> =
            report.violations.iter().map(|v| (v.contract.clone(), format!("{} ({})", v.detail, v.rule))).collect();
        let summary = if contracts.is_empty() {
            format!("contracts ok ({} status changes)", report.status_changes.len())
        } else {
            format!("{} contract violations", contracts.len())
        };
        let event = LoopEvent { agent: "contract-validator".into(), ..self.event(EventKind::Validation, summary) };
        self.save(vec![event]).await?;
        // 2. Review of each requirement whose role writes files.
        let mut reviews = Vec::new();
        for claim in self.record.claims.clone() {
            let implementing = self
                .harness
                .policy()
                .roles
                .get(&claim.role)
                .is_some_and(|r| !r.source.write.as_deref().unwrap_or_default().is_empty());
            if !implementing {
                continue;
            }
            // Each review is its own agent run, with its own budget.
            let agent = format!("review-{}", reviews.len() + 1);
            let review = Claim { role: "review".into(), agent, ..claim.clone() };
            let (attempt, notes) =
                (fsm::attempt(&self.record, Some(&claim.requirement)), self.review_notes(&claim.requirement).await?);
            let Some(outcome) = self.run_agent(review, attempt, notes).await? else { return Ok(None) };
            let result = match outcome {
                RunOutcome::Done(finished) => match finished.verdict {
                    Some(v) if v.verdict == ReviewDecision::Approve => ReviewResult::Approved,
                    Some(v) => {
                        ReviewResult::ChangesRequested { findings: v.findings.iter().map(|f| f.line()).collect() }
                    }
                    None => ReviewResult::NoVerdict,
                },
                RunOutcome::Failed(failure) => ReviewResult::Failed(failure),
                RunOutcome::Cancelled => return Ok(None),
            };
            reviews.push((claim.requirement.clone(), result));
        }
        // 3. The project's tests.
        let tests = self.run_tests().await;
        if self.interrupted() {
            return Ok(None);
        }
        let message = match &tests {
            Tests::Passed { command, count: Some(n) } => format!("{command}: passed: {n} tests"),
            Tests::Passed { command, count: None } => format!("{command}: passed"),
            Tests::Failed { command, summary, .. } => format!("{command}: failed: {summary}"),
            Tests::Missing { why } => format!("no tests ran: {why}"),
            Tests::Off => "tests are off (loop.test_command: [])".into(),
        };
        let event = self.event(EventKind::TestResult, message);
        self.save(vec![event]).await?;
        if let Some(tampered) = self.tampered().await? {
            return Ok(Some(tampered));
        }
        let checkpoint = self.record.epoch_checkpoint.clone();
        let changed = git(self.root.clone(), move |g| g.changed_since(&g.checkpoint_of(&checkpoint)?)).await?;
        Ok(Some(Outcome::Validated(Validation { contracts, reviews, tests, code_changed: !changed.is_empty() })))
    }

    /// Runs the project's tests in the sandbox (as the test role): every runner must pass.
    async fn run_tests(&self) -> Tests {
        let commands = match test_run::plan(&self.config, &self.root) {
            TestPlan::Run(commands) => commands,
            TestPlan::Off => return Tests::Off,
            TestPlan::Missing(why) => return Tests::Missing { why },
        };
        let mut passed = Vec::new();
        let mut missing = Vec::new();
        for argv in commands {
            match self.run_test_command(argv).await {
                Tests::Passed { command, count } => passed.push((command, count)),
                Tests::Missing { why } => missing.push(why),
                failed => return failed,
            }
        }
        if passed.is_empty() {
            return Tests::Missing { why: missing.join("; ") };
        }
        let command = passed.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(" && ");
        let count = passed.iter().map(|(_, n)| *n).sum::<Option<u32>>();
        Tests::Passed { command, count }
    }

    async fn run_test_command(&self, argv: Vec<String>) -> Tests {
        let ctx = ActionContext {
            loop_id: self.record.id.clone(),
            epoch: self.record.epoch,
            agent: "maestro-tests".into(),
            role: "test".into(),
        };
        let command = argv.join(" ");
        let cancel = self.control.cancel.child_token();
        let result = self.harness.perform(&ctx, Action::RunCommand { argv }, cancel).await;
        // Paths in tracebacks relative to the workspace: what agents use, the same in every checkout.
        let result = result.map(|output| match output {
            ActionOutput::Ran(mut out) => {
                for root in [self.root.canonicalize().unwrap_or_default(), self.root.clone()] {
                    let root = format!("{}/", root.display());
                    if root.len() > 1 {
                        out.stdout = out.stdout.replace(&root, "");
                        out.stderr = out.stderr.replace(&root, "");
                    }
                }
                ActionOutput::Ran(out)
            }
            other => other,
        });
        match result {
            Ok(ActionOutput::Ran(out)) if out.success() => {
                let reading = test_run::read(&out.stdout, &out.stderr, out.exit_code);
                if reading.none_ran {
                    Tests::Missing { why: format!("{command} ran no tests") }
                } else {
                    Tests::Passed { command, count: reading.passed }
                }
            }
            Ok(ActionOutput::Ran(out)) => {
                let reading = test_run::read(&out.stdout, &out.stderr, out.exit_code);
                if reading.none_ran {
                    return Tests::Missing { why: format!("{command} ran no tests") };
                }
                let text = if out.stderr.trim().is_empty() { &out.stdout } else { &out.stderr };
                let failing: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("FAIL: ").or_else(|| l.strip_prefix("ERROR: ")))
                    .collect();
                let meaningful = |l: &&str| !l.trim().is_empty() && !l.trim().chars().all(|c| c == '-' || c == '=');
                let last: Vec<&str> = text.lines().rev().filter(meaningful).take(2).collect();
                let last = last.into_iter().rev().collect::<Vec<_>>().join(" | ");
                let how = match (out.timed_out, out.exit_code) {
                    (true, _) => "timed out".to_string(),
                    (false, Some(code)) => format!("exit {code}"),
                    (false, None) => "killed".to_string(),
                };
                let summary = if failing.is_empty() {
                    format!("{how}: {last}")
                } else {
                    format!("{} — {last}", failing.join(", "))
                };
                Tests::Failed { command, summary, tail: test_run::tail(&out.stdout, &out.stderr, TEST_TAIL_BYTES) }
            }
            Ok(other) => {
                Tests::Failed { command, summary: format!("unexpected result {other:?}"), tail: String::new() }
            }
            Err(e) => Tests::Failed { command, summary: e.to_string(), tail: e.to_string() },
        }
    }

    async fn commit(&mut self) -> Result<Outcome> {
        let (root, id, epoch) = (self.root.clone(), self.record.id.clone(), self.record.epoch);
        let checkpoint = self.record.epoch_checkpoint.clone();
        let done: Vec<String> = self.record.claims.iter().map(|c| c.requirement.clone()).collect();
        let message = format!(
            "maestro {id} epoch {epoch}: {}",
            if done.is_empty() { "no changes".into() } else { done.join(", ") }
        );
        let baseline = if self.record.baseline_checkpoint.is_empty() {
            checkpoint.clone()
        } else {
            self.record.baseline_checkpoint.clone()
        };
        let committed = git(root, move |g| match g.committed(&id, epoch) {
            Some(committed) => Ok(committed),
            None => g.commit(&id, epoch, &g.checkpoint_of(&checkpoint)?, &g.checkpoint_of(&baseline)?, &message),
        })
        .await?;
        let project = self.record.project.clone();
        let name = format!("{}-e{}", self.record.id, epoch);
        let description = format!("{} epoch {epoch} committed", self.record.id);
        match self.ssot.create_snapshot(&project, &name, &committed.tagged, &description).await {
            Ok(_) | Err(SsotError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Outcome::Committed { checkpoint: committed.checkpoint, tagged: committed.tagged })
    }

    async fn check(&mut self) -> Result<Outcome> {
        let all = self.tree().await?;
        let leaves = scheduler::leaves(&all, &self.record.root);
        let done = leaves.iter().filter(|r| r.status == Status::Done).count() as u32;
        Ok(Outcome::Checked { done, total: leaves.len() as u32, require_tests: self.config.require_tests })
    }

    /// Creates the root requirement of a new loop.
    pub async fn create_root(ssot: &Ssot, project: &str, task: &str) -> std::result::Result<String, SsotError> {
        let title = first_line(task, 190);
        let new = NewRequirement { title, description: task.to_string(), ..Default::default() };
        Ok(ssot.create_requirement(project, new).await?.value.id)
    }
}
