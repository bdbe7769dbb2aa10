//! AutoLoop records and their event streams. A loop's record (state, phase,
//! epoch, retries, reason, what its phase needs to resume) is rewritten at
//! every transition together with the events of that step, in one
//! transaction. Events are numbered per loop from 1 and never change.
//!
//! Keys: `loops/<id>` the record, `loop-events/<id>/<seq>` its events,
//! `loop-cancels/<id>` a cancel request, `_meta/loops` the id counter.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::store::{self, Compare, Op, RangeRequest, Revision, Txn, prefix_end};
use super::{Page, Result, Ssot, SsotError, Versioned, validate};

const RECORDS: &str = "loops/";
const EVENTS: &str = "loop-events/";
const CANCELS: &str = "loop-cancels/";
const COUNTER: &str = "_meta/loops";
const KIND: &str = "loop";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoopState {
    Queued,
    Running,
    Paused,
    Escalated,
    Succeeded,
    Failed,
    Aborted,
    Cancelled,
}

impl LoopState {
    pub const ALL: [LoopState; 8] = [
        LoopState::Queued,
        LoopState::Running,
        LoopState::Paused,
        LoopState::Escalated,
        LoopState::Succeeded,
        LoopState::Failed,
        LoopState::Aborted,
        LoopState::Cancelled,
    ];

    pub fn is_final(self) -> bool {
        matches!(self, LoopState::Succeeded | LoopState::Failed | LoopState::Aborted | LoopState::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoopState::Queued => "QUEUED",
            LoopState::Running => "RUNNING",
            LoopState::Paused => "PAUSED",
            LoopState::Escalated => "ESCALATED",
            LoopState::Succeeded => "SUCCEEDED",
            LoopState::Failed => "FAILED",
            LoopState::Aborted => "ABORTED",
            LoopState::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    Plan,
    Assign,
    Exec,
    Valid,
    Commit,
    Check,
    Rollback,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Plan => "PLAN",
            Phase::Assign => "ASSIGN",
            Phase::Exec => "EXEC",
            Phase::Valid => "VALID",
            Phase::Commit => "COMMIT",
            Phase::Check => "CHECK",
            Phase::Rollback => "ROLLBACK",
        }
    }
}

/// A requirement given to an agent for the current epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub requirement: String,
    pub role: String,
    pub agent: String,
}

/// Why an epoch failed, as a kind the state machine decides on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    #[default]
    Other,
    /// The model twice answered without calling a tool.
    NoToolCall,
    /// The agent used its turns without calling `finish`.
    TurnLimit,
    /// The agent called `finish` with outcome `failed`.
    GaveUp,
    /// A step or token budget ran out.
    Budget,
    /// A model error that retrying may cure (429, 5xx, unreachable, a garbled reply).
    Model,
    /// A model error that retrying cannot cure (bad key, unknown model, a refused request).
    ModelPermanent,
    /// The loop cannot run an agent as configured (a broken configuration, a missing script).
    Setup,
    /// The plan is unusable (empty, unknown roles, impossible dependencies).
    Plan,
    /// An implementing agent finished without changing anything in its write set.
    NoChange,
    /// Review asked for changes, or gave no verdict.
    Review,
    Tests,
    Contracts,
    /// Every requirement is done but no test run verified the code.
    NoTests,
    /// A command changed what git and the daemon trust (`.git` hooks or config, `.maestro/`).
    Tampering,
    /// Nothing is ready and not everything is done.
    Stuck,
}

impl FailureCause {
    /// Failures that a full-cycle retry cannot cure: they escalate at once.
    pub fn is_permanent(self) -> bool {
        matches!(self, FailureCause::ModelPermanent | FailureCause::Setup | FailureCause::Tampering)
    }
}

/// What the next attempt at a requirement should know: failing tests,
/// review findings, the last tool error, contract violations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    pub requirement: String,
    /// `tests`, `review`, `agent`, `contracts`, `plan`.
    pub source: String,
    pub text: String,
}

/// An epoch that failed validation or execution, kept for replanning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub epoch: u64,
    pub requirements: Vec<String>,
    pub reason: String,
    #[serde(default)]
    pub cause: FailureCause,
    #[serde(default)]
    pub feedback: Vec<Feedback>,
    /// The phase it failed in (what a rollback undoes).
    #[serde(default)]
    pub phase: Option<Phase>,
}

/// What EXEC recorded about a claim, kept until COMMIT (and shown to review).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimResult {
    pub summary: String,
    /// Files of the role's write set that differ from the epoch's start.
    pub changed: Vec<String>,
    pub no_change_reason: Option<String>,
    /// The role writes files (so review judged a `no_change_reason`).
    #[serde(default)]
    pub implementing: bool,
}

/// What an epoch's validation found, kept until COMMIT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochCheck {
    pub code_changed: bool,
    /// Tests passed (with the count when the runner says).
    pub tests_passed: Option<Option<u32>>,
    pub reviews_approved: u32,
    /// A human approved the epoch as it was.
    pub approved_by: Option<String>,
}

/// What the current epoch's agents changed in the SSOT outside files, so a
/// rollback restores exactly that (and the loop's own tree).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touched {
    pub requirements: BTreeSet<String>,
    pub contracts: BTreeSet<String>,
    /// (agent, key) of memory entries.
    pub memory: BTreeSet<(String, String)>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty() && self.contracts.is_empty() && self.memory.is_empty()
    }

    pub fn extend(&mut self, other: Touched) {
        self.requirements.extend(other.requirements);
        self.contracts.extend(other.contracts);
        self.memory.extend(other.memory);
    }
}

/// What the committed epochs have verified so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The first epoch whose code changes no passing test run has covered yet.
    pub unverified_since: Option<u64>,
    /// The last test run that passed: how many tests (when the runner says).
    pub tests_passed: Option<u32>,
    /// Whether any test run has passed in this loop.
    pub tests_ran: bool,
    /// Review verdicts that approved committed work.
    pub reviews_approved: u32,
    /// Epochs a human approved as they were: "epoch 2 by ada".
    pub approvals: Vec<String>,
    /// Some committed epoch changed files.
    #[serde(default)]
    pub changed: bool,
    /// Requirements whose `no_change_reason` review approved.
    #[serde(default)]
    pub no_change_accepted: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopRecord {
    pub id: String,
    pub project: String,
    pub state: LoopState,
    /// The phase the loop is in (or was in when it stopped).
    pub phase: Phase,
    pub epoch: u64,
    pub retries: u32,
    pub retry_budget: u32,
    pub reason: String,
    pub task: String,
    /// The root requirement (set once the loop has started).
    pub root: String,
    pub workspace: String,
    pub demo: bool,
    pub tokens: u64,
    pub done: u32,
    pub total: u32,
    pub last_seq: u64,
    pub claims: Vec<Claim>,
    pub failures: Vec<Failure>,
    pub guidance: Vec<String>,
    /// The next PLAN runs the planning agent (first cycle, after a rollback).
    pub replan: bool,
    /// Git commits of the working tree at the start of the epoch and of VALID.
    pub epoch_checkpoint: String,
    pub valid_checkpoint: String,
    /// The loop's first checkpoint: what the workspace held before the loop wrote anything.
    #[serde(default)]
    pub baseline_checkpoint: String,
    /// The commit recording what git and the daemon trust at the epoch's start.
    #[serde(default)]
    pub guard: String,
    /// Where the loop records its model exchanges (relative to the workspace; empty: not recorded).
    #[serde(default)]
    pub record_file: String,
    /// The lease holding this loop's claims.
    pub lease: u64,
    /// Daemon restarts this loop has lived through.
    pub restarts: u32,
    /// What this epoch's agents changed in the SSOT (restored on rollback).
    #[serde(default)]
    pub touched: Touched,
    /// What the committed epochs verified.
    #[serde(default)]
    pub verification: Verification,
    /// What EXEC's agents did, per requirement, until COMMIT.
    #[serde(default)]
    pub results: BTreeMap<String, ClaimResult>,
    /// What VALID found, until COMMIT.
    #[serde(default)]
    pub epoch_check: Option<EpochCheck>,
    /// ASSIGN rounds in a row that found every ready requirement held by another loop.
    #[serde(default)]
    pub held_rounds: u32,
    /// Where a successful loop's work is: `maestro/<loop>`, or the user's
    /// branch with `loop.commit_to_current_branch` (empty until then).
    #[serde(default)]
    pub result_branch: String,
    #[serde(default)]
    pub result_on_current_branch: bool,
    /// The git command that takes the work onto the user's branch.
    #[serde(default)]
    pub result_take: String,
    /// The loop's budget (`harness.budget.per_loop`; 0: no limit), for
    /// clients to show spending against.
    #[serde(default)]
    pub token_budget: u64,
    #[serde(default)]
    pub time_budget_ms: u64,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
    pub end_time_ms: i64,
}

impl LoopRecord {
    pub fn new(project: &str, task: &str, workspace: &str, demo: bool, retry_budget: u32) -> LoopRecord {
        LoopRecord {
            id: String::new(),
            project: project.to_string(),
            state: LoopState::Queued,
            phase: Phase::Plan,
            epoch: 0,
            retries: 0,
            retry_budget,
            reason: String::new(),
            task: task.to_string(),
            root: String::new(),
            workspace: workspace.to_string(),
            demo,
            tokens: 0,
            done: 0,
            total: 0,
            last_seq: 0,
            claims: Vec::new(),
            failures: Vec::new(),
            guidance: Vec::new(),
            replan: true,
            epoch_checkpoint: String::new(),
            valid_checkpoint: String::new(),
            baseline_checkpoint: String::new(),
            guard: String::new(),
            record_file: String::new(),
            lease: 0,
            restarts: 0,
            touched: Touched::default(),
            verification: Verification::default(),
            results: BTreeMap::new(),
            epoch_check: None,
            held_rounds: 0,
            create_time_ms: 0,
            update_time_ms: 0,
            result_branch: String::new(),
            result_on_current_branch: false,
            result_take: String::new(),
            token_budget: 0,
            time_budget_ms: 0,
            end_time_ms: 0,
        }
    }
}

/// What a loop event tells (a string on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    #[default]
    Note,
    Phase,
    State,
    Assigned,
    AgentStarted,
    AgentFinished,
    ToolCall,
    Denied,
    Validation,
    Review,
    TestResult,
    Commit,
    Failed,
    Rollback,
    Escalated,
    Decision,
    Guidance,
    Restart,
    /// A queued loop waits for an escalated one.
    Waiting,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Note => "note",
            EventKind::Phase => "phase",
            EventKind::State => "state",
            EventKind::Assigned => "assigned",
            EventKind::AgentStarted => "agent_started",
            EventKind::AgentFinished => "agent_finished",
            EventKind::ToolCall => "tool_call",
            EventKind::Denied => "denied",
            EventKind::Validation => "validation",
            EventKind::Review => "review",
            EventKind::TestResult => "test_result",
            EventKind::Commit => "commit",
            EventKind::Failed => "failed",
            EventKind::Rollback => "rollback",
            EventKind::Escalated => "escalated",
            EventKind::Decision => "decision",
            EventKind::Guidance => "guidance",
            EventKind::Restart => "restart",
            EventKind::Waiting => "waiting",
        }
    }
}

/// Reads a phase stored as a string, where "" (no phase) is `None`.
fn optional_phase<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<Phase>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?.unwrap_or_default();
    if text.is_empty() {
        return Ok(None);
    }
    Phase::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&text)).map(Some)
}

fn optional_state<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<LoopState>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?.unwrap_or_default();
    if text.is_empty() {
        return Ok(None);
    }
    LoopState::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&text)).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LoopEvent {
    pub seq: u64,
    pub time_ms: i64,
    pub kind: EventKind,
    #[serde(default, deserialize_with = "optional_phase")]
    pub phase: Option<Phase>,
    pub epoch: u64,
    pub agent: String,
    pub requirement: String,
    pub message: String,
    /// The loop's state after this event.
    #[serde(default, deserialize_with = "optional_state")]
    pub state: Option<LoopState>,
    pub done: u32,
    pub total: u32,
    pub tokens: u64,
}

/// The number of a loop id `loop-N`.
fn number(id: &str) -> Result<u64> {
    id.strip_prefix("loop-")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0'))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            SsotError::invalid("loop_id", format!("{} is not a loop id (like loop-12)", super::validate::shown(id)))
        })
}

fn check_id(id: &str) -> Result<()> {
    number(id).map(drop)
}

// Keys are zero-padded so loops and events list in numeric order. The id is checked before.
fn record_key(id: &str) -> String {
    format!("{RECORDS}{:010}", number(id).unwrap_or_default())
}

/// A cancel request that outlives a restart.
fn cancel_key(id: &str) -> String {
    format!("{CANCELS}{:010}", number(id).unwrap_or_default())
}

fn events_prefix(id: &str) -> String {
    format!("{EVENTS}{:010}/", number(id).unwrap_or_default())
}

fn event_key(id: &str, seq: u64) -> String {
    format!("{}{seq:012}", events_prefix(id))
}

impl Ssot {
    /// Stores a new loop under the next id (`loop-N`) with its first events.
    pub async fn create_loop(&self, mut record: LoopRecord, events: Vec<LoopEvent>) -> Result<LoopRecord> {
        validate::text("task", &record.task, 64 << 10, true)?;
        for attempt in 0..super::RETRIES {
            let guard = self.project_guard(&record.project).await?;
            let counter = self.get::<u64>(COUNTER, 0).await?;
            let (last, rev) = counter.map_or((0, 0), |c| (c.value, c.meta.mod_revision));
            record.id = format!("loop-{}", last + 1);
            record.create_time_ms = now_ms();
            let txn = Txn::new()
                .when(guard)
                .when(Compare::mod_revision(COUNTER, rev))
                .then(Op::put(COUNTER, super::encode_json(&(last + 1))));
            let (txn, stored, _) = self.loop_write(txn, record.clone(), events.clone());
            match self.commit(txn).await? {
                Ok(_) => return Ok(stored),
                Err((0, _)) => return Err(SsotError::not_found("project", &record.project)),
                Err(_) => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race(KIND, "creation"))
    }

    /// Adds the record and the events (numbered after `last_seq`) to `txn`.
    fn loop_write(
        &self,
        mut txn: Txn,
        mut record: LoopRecord,
        events: Vec<LoopEvent>,
    ) -> (Txn, LoopRecord, Vec<LoopEvent>) {
        let now = now_ms();
        let mut numbered = Vec::with_capacity(events.len());
        for mut event in events {
            record.last_seq += 1;
            event.seq = record.last_seq;
            if event.time_ms == 0 {
                event.time_ms = now;
            }
            if event.state.is_none() {
                event.state = Some(record.state);
            }
            if event.epoch == 0 {
                event.epoch = record.epoch;
            }
            // Agent activity comes stamped with the progress as of its turn.
            if event.total == 0 && event.tokens == 0 {
                (event.done, event.total, event.tokens) = (record.done, record.total, record.tokens);
            }
            txn = txn.then(Op::put(event_key(&record.id, event.seq), super::encode_json(&event)));
            numbered.push(event);
        }
        record.update_time_ms = now;
        txn = txn.then(Op::put(record_key(&record.id), super::encode_json(&record)));
        (txn, record, numbered)
    }

    /// Writes the loop's record and appends `events`, atomically. Only the
    /// loop's own task calls this, so there is one writer per loop.
    pub async fn save_loop(&self, record: LoopRecord, events: Vec<LoopEvent>) -> Result<LoopRecord> {
        Ok(self.save_loop_events(record, events).await?.0)
    }

    /// `save_loop`, returning the events as stored (numbered, stamped).
    pub async fn save_loop_events(
        &self,
        record: LoopRecord,
        events: Vec<LoopEvent>,
    ) -> Result<(LoopRecord, Vec<LoopEvent>)> {
        check_id(&record.id)?;
        let (txn, stored, events) = self.loop_write(Txn::new(), record, events);
        self.commit(txn).await?.map_err(|_| SsotError::not_found(KIND, &stored.id))?;
        Ok((stored, events))
    }

    /// Tells a queued loop why it waits: its reason, and `event`. A loop that
    /// is no longer queued (started, cancelled) is left alone. Returns whether it was told.
    pub async fn note_queued_loop(&self, id: &str, reason: &str, event: LoopEvent) -> Result<bool> {
        for attempt in 0..super::RETRIES {
            let current = self.get_loop(id).await?;
            if current.value.state != LoopState::Queued || current.value.reason == reason {
                return Ok(false);
            }
            let mut record = current.value;
            record.reason = reason.to_string();
            let txn = Txn::new().when(Compare::mod_revision(record_key(id), current.meta.mod_revision));
            let (txn, _, _) = self.loop_write(txn, record, vec![event.clone()]);
            match self.commit(txn).await? {
                Ok(_) => return Ok(true),
                Err(_) => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race(KIND, id))
    }

    /// Ends a loop that is still queued (nothing runs it yet) as `state` with
    /// `reason` and `event`, in one write conditional on the record and on
    /// `also`. `None` when the loop is no longer queued (its task took it
    /// meanwhile) or `also` failed.
    pub async fn end_queued_loop(
        &self,
        id: &str,
        state: LoopState,
        reason: &str,
        event: LoopEvent,
        also: Compare,
    ) -> Result<Option<LoopRecord>> {
        for attempt in 0..super::RETRIES {
            let current = self.get_loop(id).await?;
            if current.value.state != LoopState::Queued {
                return Ok(None);
            }
            let mut record = current.value;
            record.state = state;
            record.reason = reason.to_string();
            record.end_time_ms = now_ms();
            let txn =
                Txn::new().when(Compare::mod_revision(record_key(id), current.meta.mod_revision)).when(also.clone());
            let (txn, stored, _) = self.loop_write(txn, record, vec![event.clone()]);
            match self.commit(txn).await? {
                Ok(_) => return Ok(Some(stored)),
                // `also` no longer holds: the caller looks again.
                Err((1, _)) => return Ok(None),
                Err(_) => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race(KIND, id))
    }

    /// Records that someone asked to cancel loop `id`, so the request outlives a restart.
    pub async fn request_loop_cancel(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let txn = Txn::new().then(Op::put(cancel_key(id), super::encode_json(&now_ms())));
        self.commit(txn).await?.map_err(|_| SsotError::not_found(KIND, id))?;
        Ok(())
    }

    /// Loops someone asked to cancel from now on, as they come (by any daemon).
    pub fn follow_cancel_requests(&self) -> Result<BoxStream<'static, Result<String>>> {
        self.follow(CANCELS, 0, store::EventKind::Put, |kv| {
            let number = std::str::from_utf8(&kv.key[CANCELS.len()..]).ok()?.parse::<u64>().ok()?;
            Some(Ok(format!("loop-{number}")))
        })
    }

    pub async fn loop_cancel_requested(&self, id: &str) -> Result<bool> {
        check_id(id)?;
        Ok(self.get::<i64>(&cancel_key(id), 0).await?.is_some())
    }

    pub async fn get_loop(&self, id: &str) -> Result<Versioned<LoopRecord>> {
        check_id(id)?;
        self.get(&record_key(id), 0).await?.ok_or_else(|| SsotError::not_found(KIND, id))
    }

    /// Loops, oldest first; of one project when `project` is not empty.
    pub async fn list_loops(&self, project: &str, page_size: i32, page_token: &str) -> Result<Page<LoopRecord>> {
        if !project.is_empty() {
            self.project_guard(project).await?;
        }
        let project = project.to_string();
        self.page(RECORDS, page_size, page_token, 0, |l: &Versioned<LoopRecord>| {
            project.is_empty() || l.value.project == project
        })
        .await
    }

    /// Every loop that has not ended, oldest first (keys are in creation order).
    pub async fn unfinished_loops(&self) -> Result<Vec<LoopRecord>> {
        let (all, _) = self.scan_all::<LoopRecord>(RECORDS, 0).await?;
        let open: Vec<LoopRecord> = all.into_iter().map(|l| l.value).filter(|l| !l.state.is_final()).collect();
        Ok(open)
    }

    /// Events of loop `id` with seq ≥ `from`, and the revision they were read at.
    pub async fn loop_events(&self, id: &str, from: u64) -> Result<(Vec<LoopEvent>, Revision)> {
        check_id(id)?;
        let request = RangeRequest {
            start: event_key(id, from.max(1)).into_bytes(),
            end: prefix_end(events_prefix(id).as_bytes()),
            revision: 0,
            limit: 0,
            ..Default::default()
        };
        let response = self.store.range(request).await?;
        let events = response
            .kvs
            .iter()
            .map(|kv| super::decode_versioned::<LoopEvent>(kv).map(|v| v.value))
            .collect::<Result<Vec<_>>>()?;
        Ok((events, response.revision))
    }

    /// Events of loop `id` committed after `revision`, as they come.
    pub fn follow_loop_events(&self, id: &str, revision: Revision) -> Result<BoxStream<'static, Result<LoopEvent>>> {
        check_id(id)?;
        self.follow(&events_prefix(id), revision + 1, store::EventKind::Put, |kv| {
            Some(super::decode_versioned::<LoopEvent>(kv).map(|v| v.value))
        })
    }
}
