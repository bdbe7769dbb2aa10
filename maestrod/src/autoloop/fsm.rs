//! The AutoLoop's state machine as a pure function: `next(record, outcome)`
//! returns the next record and the effects the driver must perform (git,
//! SSOT, agents), in order. No tokio, git or sled here: every transition is
//! decided — and testable — from data alone.
//!
//! ```text
//! PLAN → ASSIGN → EXEC → VALID → COMMIT → CHECK ─┐   (back to PLAN while requirements remain)
//!    ↑                 └── failure ──→ ROLLBACK ───┘   (while the retry budget lasts)
//!                                    └─→ ESCALATED     (approve / retry --guidance / abort)
//! ```
//!
//! Success is verified, never assumed: an implementing requirement counts
//! only with a change in its write set (or a reason review accepts), review
//! must approve, and CHECK succeeds only when every requirement is DONE and
//! the code changed since the last passing test run is none.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use crate::agents::runtime::AgentFailure;
use crate::ssot::loops::{
    Claim, ClaimResult, EpochCheck, EventKind, Failure, FailureCause, Feedback, LoopEvent, LoopRecord, LoopState,
    Phase, Touched,
};
use crate::ssot::requirements::Status;

/// The first line of `text`, at most `max` characters.
pub fn first_line(text: &str, max: usize) -> String {
    let line = text.trim().lines().next().unwrap_or_default();
    if line.chars().count() > max { format!("{}…", line.chars().take(max).collect::<String>()) } else { line.into() }
}

/// PLAN's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No replanning needed: the tree has work left.
    Stands,
    /// The planner finished and the tree is usable.
    Made,
    /// The planner finished but the tree cannot work.
    Invalid {
        problems: Vec<String>,
    },
    Failed(AgentFailure),
}

/// ASSIGN's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    Claimed(Vec<Claim>),
    /// Every leaf of the tree is DONE.
    AllDone,
    /// Ready requirements exist but other loops hold them: look again shortly.
    HeldElsewhere {
        notes: Vec<String>,
    },
    /// Nothing is ready and not everything is done.
    Stuck {
        waiting: Vec<(String, Status)>,
    },
}

/// One claim's result in EXEC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    pub claim: Claim,
    pub result: WorkResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkResult {
    /// The agent called `finish` with outcome done.
    Finished {
        summary: String,
        /// Files of the role's write set that differ from the epoch's start.
        changed: Vec<String>,
        no_change_reason: Option<String>,
        /// The role writes files (its work must show in them).
        implementing: bool,
        /// The role's write set, for messages (`src/api/**`).
        paths: String,
    },
    Failed(AgentFailure),
}

/// Review's answer for one requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewResult {
    Approved,
    ChangesRequested {
        findings: Vec<String>,
    },
    /// The reviewer finished without `review_verdict`.
    NoVerdict,
    Failed(AgentFailure),
}

/// The test run of VALID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tests {
    Passed {
        command: String,
        count: Option<u32>,
    },
    Failed {
        command: String,
        summary: String,
        tail: String,
    },
    /// No tests to run (none found, none ran); `why` says which.
    Missing {
        why: String,
    },
    /// `loop.test_command: []`.
    Off,
}

/// VALID's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// Contract violations: (contract, detail).
    pub contracts: Vec<(String, String)>,
    pub reviews: Vec<(String, ReviewResult)>,
    pub tests: Tests,
    /// The epoch changed files.
    pub code_changed: bool,
}

/// How long (ASSIGN rounds, about a second each) a loop waits for requirements other loops hold.
pub const MAX_HELD_ROUNDS: u32 = 300;

/// A human's answer to an escalation (checked by the driver before it gets here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve { actor: String },
    Retry { guidance: String, actor: String },
    Abort { actor: String },
}

/// What happened, fed to the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The loop's task starts it.
    Started,
    /// A restarted daemon picks the loop up where its record says.
    Resumed,
    Planned(Plan),
    Assigned(Assignment),
    Executed(Vec<Work>),
    Validated(Validation),
    /// COMMIT: the complete checkpoint and the tagged work.
    Committed {
        checkpoint: String,
        tagged: String,
    },
    /// A command changed what git and the daemon trust (`.git` is put back already).
    Tampered {
        changed: Vec<String>,
    },
    /// CHECK: the tree's leaves, done and in all.
    Checked {
        done: u32,
        total: u32,
        require_tests: bool,
    },
    /// The loop is in ROLLBACK: time to undo the failed epoch.
    RollbackDue,
    Decided(Decision),
    CancelRequested,
    PauseRequested,
    Unpaused,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Take (or renew) the lease the loop's claims live on.
    AcquireLease,
    /// Remove git ref locks a killed daemon left on the loop's own refs.
    ClearGitLocks,
    /// Take the record's claims again (after a restart).
    Reclaim,
    /// Keep the loop paused (after a restart while paused).
    HoldPaused,
    /// Take what resuming `phase` needs: checkpoints of the workspace, an SSOT snapshot.
    Prepare(Phase),
    /// Put the workspace back to the checkpoint of `phase` and, with `ssot`,
    /// the loop's tree and what its agents `touched` in the SSOT to the
    /// snapshot taken when it entered `phase` in `epoch`.
    Restore {
        phase: Phase,
        epoch: u64,
        ssot: bool,
        touched: Touched,
    },
    ReleaseClaims(Vec<Claim>),
    /// IN_PROGRESS → FAILED for these requirements.
    MarkFailed {
        requirements: Vec<String>,
        reason: String,
    },
    /// IN_PROGRESS → DONE, with the agent's summary as the reason.
    MarkDone(Vec<(String, String)>),
    /// Back to PENDING (work that never ran).
    MarkPending(Vec<String>),
    /// The root requirement becomes DONE.
    MarkRootDone,
    /// Put the work of a successful loop on a branch the user can merge
    /// (`maestro/<loop>`), or on the user's branch when configured.
    Publish,
    /// Drop this loop's phase snapshots of epochs up to `epoch`.
    DropSnapshots {
        through_epoch: u64,
    },
    Log {
        action: &'static str,
        outcome: &'static str,
        detail: String,
    },
    /// Tell the loops queued behind this one why they wait.
    TellQueued(String),
    Wait(Duration),
    Emit(LoopEvent),
    /// The loop has ended: release its lease.
    Finish,
}

fn event(kind: EventKind, phase: Phase, message: impl Into<String>) -> LoopEvent {
    LoopEvent { kind, phase: Some(phase), message: message.into(), ..Default::default() }
}

/// Builds one transition.
struct Step {
    record: LoopRecord,
    effects: Vec<Effect>,
}

impl Step {
    fn emit(&mut self, kind: EventKind, message: impl Into<String>) {
        self.effects.push(Effect::Emit(event(kind, self.record.phase, message)));
    }

    fn emit_about(&mut self, kind: EventKind, agent: &str, requirement: &str, message: impl Into<String>) {
        let e = LoopEvent {
            agent: agent.into(),
            requirement: requirement.into(),
            ..event(kind, self.record.phase, message)
        };
        self.effects.push(Effect::Emit(e));
    }

    /// Undoes the current epoch back to the start of `phase`.
    fn restore(&mut self, phase: Phase, ssot: bool) {
        let (epoch, touched) = (self.record.epoch, self.record.touched.clone());
        self.effects.push(Effect::Restore { phase, epoch, ssot, touched });
    }

    fn log(&mut self, action: &'static str, outcome: &'static str, detail: impl Into<String>) {
        self.effects.push(Effect::Log { action, outcome, detail: detail.into() });
    }

    /// Moves to `phase`, taking what resuming it needs.
    fn enter(&mut self, phase: Phase) {
        let r = &mut self.record;
        if phase == Phase::Plan {
            r.epoch += 1;
            r.touched = Default::default();
            r.results.clear();
            r.epoch_check = None;
        }
        r.phase = phase;
        self.effects.push(Effect::Prepare(phase));
        if phase == Phase::Assign {
            // Earlier epochs' phase snapshots are no longer needed once a new epoch is under way.
            self.effects.push(Effect::DropSnapshots { through_epoch: self.record.epoch - 1 });
        }
        let message = if phase == Phase::Plan { format!("epoch {}", self.record.epoch) } else { String::new() };
        self.emit(EventKind::Phase, message);
    }

    /// An epoch failed: roll back and retry while the budget lasts, else escalate.
    fn fail(&mut self, failure: Failure) {
        let reason = failure.reason.clone();
        let cause = failure.cause;
        let claimed: Vec<String> = self.record.claims.iter().map(|c| c.requirement.clone()).collect();
        self.record.failures.push(failure);
        self.record.reason = reason.clone();
        self.log("epoch-failed", "failed", &reason);
        self.emit(EventKind::Failed, first_line(&reason, 400));
        if !claimed.is_empty() {
            self.effects.push(Effect::MarkFailed { requirements: claimed, reason: first_line(&reason, 400) });
        }
        if cause.is_permanent() {
            let message = format!(
                "escalated at once: {} (retrying cannot fix this: fix it, then retry, or abort)",
                first_line(&reason, 300)
            );
            return self.escalate(message);
        }
        if self.record.retries < self.record.retry_budget {
            self.record.retries += 1;
            self.record.replan = true;
            self.enter(Phase::Rollback);
        } else {
            let message = format!(
                "escalated after {} retries: {} (approve, retry --guidance, or abort)",
                self.record.retries,
                first_line(&reason, 300)
            );
            self.escalate(message);
        }
    }

    fn escalate(&mut self, message: String) {
        self.record.state = LoopState::Escalated;
        self.log("escalated", "waiting", &message);
        self.emit(EventKind::Escalated, message);
        let id = self.record.id.clone();
        self.effects.push(Effect::TellQueued(format!("waiting for {id}, ESCALATED: approve, retry or abort it")));
    }

    fn finish(&mut self, state: LoopState, reason: String, message: String) {
        self.record.state = state;
        self.record.reason = reason;
        let claims = std::mem::take(&mut self.record.claims);
        if !claims.is_empty() {
            self.effects.push(Effect::ReleaseClaims(claims));
        }
        self.effects.push(Effect::DropSnapshots { through_epoch: self.record.epoch });
        self.effects.push(Effect::Finish);
        self.emit(EventKind::State, message);
    }
}

/// The state machine: the next record and the effects that get there.
pub fn next(record: &LoopRecord, outcome: Outcome) -> (LoopRecord, Vec<Effect>) {
    let mut step = Step { record: record.clone(), effects: Vec::new() };
    let s = &mut step;
    match outcome {
        Outcome::Started => start(s),
        Outcome::Resumed => resume(s),
        Outcome::Planned(plan) => planned(s, plan),
        Outcome::Assigned(assignment) => assigned(s, assignment),
        Outcome::Executed(works) => executed(s, works),
        Outcome::Validated(validation) => validated(s, validation),
        Outcome::Committed { checkpoint, tagged } => committed(s, &checkpoint, &tagged),
        Outcome::Tampered { changed } => {
            let epoch = s.record.epoch;
            let phase = s.record.phase;
            let claimed = s.record.claims.iter().map(|c| c.requirement.clone()).collect();
            let reason = format!(
                "a command changed what git and the daemon trust: {}; .git was put back, the epoch is not committed",
                changed.join(", ")
            );
            s.fail(Failure {
                epoch,
                requirements: claimed,
                reason,
                cause: FailureCause::Tampering,
                feedback: Vec::new(),
                phase: Some(phase),
            });
        }
        Outcome::Checked { done, total, require_tests } => checked(s, done, total, require_tests),
        Outcome::RollbackDue => roll_back(s),
        Outcome::Decided(decision) => decided(s, decision),
        Outcome::CancelRequested => {
            if !s.record.epoch_checkpoint.is_empty() {
                s.restore(Phase::Plan, true);
            }
            s.log("loop-end", "cancelled", "workspace back to the last commit");
            s.finish(
                LoopState::Cancelled,
                "cancelled".into(),
                "cancelled; the workspace is back at the last commit".into(),
            );
        }
        Outcome::PauseRequested => {
            s.record.state = LoopState::Paused;
            s.emit(EventKind::State, "paused");
        }
        Outcome::Unpaused => {
            s.record.state = LoopState::Running;
            s.emit(EventKind::State, "resumed");
        }
    }
    (step.record, step.effects)
}

fn start(s: &mut Step) {
    s.effects.push(Effect::AcquireLease);
    s.record.state = LoopState::Running;
    s.record.reason.clear();
    s.log("loop-start", "ok", s.record.task.clone());
    let message = format!("started on {}: {}", s.record.root, first_line(&s.record.task, 200));
    s.emit(EventKind::State, message);
    s.enter(Phase::Plan);
}

fn resume(s: &mut Step) {
    s.record.restarts += 1;
    if s.record.state == LoopState::Queued {
        return start(s);
    }
    let (phase, epoch) = (s.record.phase, s.record.epoch);
    s.effects.push(Effect::ClearGitLocks);
    s.log("loop-restart", "ok", format!("resuming {} in {} of epoch {epoch}", s.record.id, phase.as_str()));
    let mut message = format!("daemon restarted; resuming {} of epoch {epoch}", phase.as_str());
    if s.record.state != LoopState::Escalated {
        match phase {
            // The planner starts over on the tree as it is: creating a requirement
            // twice gives the existing one, so ids stay what an uninterrupted run gives.
            Phase::Plan => {
                s.restore(phase, false);
                message.push_str(" from its start");
            }
            Phase::Assign | Phase::Exec | Phase::Valid => {
                s.restore(phase, true);
                message.push_str(&format!(
                    " from its start ({}-e{epoch}-{})",
                    s.record.id,
                    phase.as_str().to_lowercase()
                ));
            }
            Phase::Commit | Phase::Check | Phase::Rollback => {}
        }
    }
    s.effects.push(Effect::AcquireLease);
    s.effects.push(Effect::Reclaim);
    if s.record.state == LoopState::Paused {
        s.effects.push(Effect::HoldPaused);
        s.record.state = LoopState::Running;
    }
    s.emit(EventKind::Restart, message);
}

fn planned(s: &mut Step, plan: Plan) {
    let root = s.record.root.clone();
    match plan {
        Plan::Stands => {
            s.emit(EventKind::Note, "the plan stands");
            s.enter(Phase::Assign);
        }
        Plan::Made => {
            s.record.replan = false;
            s.enter(Phase::Assign);
        }
        Plan::Invalid { problems } => {
            let reason = format!("the plan cannot work: {}", problems.join("; "));
            let feedback = problems
                .iter()
                .map(|p| Feedback { requirement: root.clone(), source: "plan".into(), text: p.clone() })
                .collect();
            let epoch = s.record.epoch;
            s.fail(Failure {
                epoch,
                requirements: vec![root],
                reason,
                cause: FailureCause::Plan,
                feedback,
                phase: Some(Phase::Plan),
            });
        }
        Plan::Failed(failure) => {
            let epoch = s.record.epoch;
            let feedback =
                vec![Feedback { requirement: root.clone(), source: "agent".into(), text: failure.reason.clone() }];
            s.fail(Failure {
                epoch,
                requirements: vec![root],
                reason: format!("planning failed: {}", failure.reason),
                cause: failure.cause,
                feedback,
                phase: Some(Phase::Plan),
            });
        }
    }
}

fn assigned(s: &mut Step, assignment: Assignment) {
    match assignment {
        Assignment::Claimed(claims) => {
            s.record.held_rounds = 0;
            for claim in &claims {
                let message = format!("{} → {}", claim.requirement, claim.agent);
                s.emit_about(EventKind::Assigned, &claim.agent, &claim.requirement, message);
            }
            s.record.claims = claims;
            s.enter(Phase::Exec);
        }
        Assignment::AllDone => {
            s.emit(EventKind::Note, "nothing left to assign");
            s.enter(Phase::Check);
        }
        Assignment::HeldElsewhere { notes } => {
            s.record.held_rounds += 1;
            if s.record.held_rounds > MAX_HELD_ROUNDS {
                s.record.held_rounds = 0;
                let epoch = s.record.epoch;
                let reason = format!(
                    "every ready requirement has been held by another loop for {MAX_HELD_ROUNDS} rounds: {}",
                    notes.join("; ")
                );
                return s.fail(Failure {
                    epoch,
                    requirements: Vec::new(),
                    reason,
                    cause: FailureCause::Stuck,
                    feedback: Vec::new(),
                    phase: Some(Phase::Assign),
                });
            }
            // Said once; then the loop looks again every second, quietly.
            if s.record.held_rounds == 1 {
                for note in notes {
                    s.emit(EventKind::Note, note);
                }
            }
            s.effects.push(Effect::Wait(Duration::from_secs(1)));
        }
        Assignment::Stuck { waiting } => {
            let epoch = s.record.epoch;
            let ids = waiting.iter().map(|(id, _)| id.clone()).collect();
            let list: Vec<String> = waiting.iter().map(|(id, status)| format!("{id} [{}]", status.as_str())).collect();
            s.fail(Failure {
                epoch,
                requirements: ids,
                reason: format!("no requirement is ready; waiting: {}", list.join(", ")),
                cause: FailureCause::Stuck,
                feedback: Vec::new(),
                phase: Some(Phase::Assign),
            });
        }
    }
}

fn executed(s: &mut Step, works: Vec<Work>) {
    let mut reasons = Vec::new();
    let mut failed = Vec::new();
    let mut feedback = Vec::new();
    let mut cause: Option<FailureCause> = None;
    for Work { claim, result } in works {
        let who = format!("{} ({})", claim.requirement, claim.agent);
        let mut problem = |c: FailureCause, reason: String, feedback: &mut Vec<Feedback>| {
            feedback.push(Feedback {
                requirement: claim.requirement.clone(),
                source: "agent".into(),
                text: reason.clone(),
            });
            reasons.push(format!("{who}: {reason}"));
            failed.push(claim.requirement.clone());
            // A permanent cause decides for the epoch; otherwise the first one does.
            if c.is_permanent() || cause.is_none() {
                cause = Some(c);
            }
        };
        match result {
            WorkResult::Finished { implementing: true, ref changed, no_change_reason: None, ref paths, .. }
                if changed.is_empty() =>
            {
                let reason =
                    format!("finished without changing any file in its paths ({paths}) and without a no_change_reason");
                problem(FailureCause::NoChange, reason, &mut feedback);
            }
            WorkResult::Finished { summary, changed, no_change_reason, implementing, .. } => {
                let result = ClaimResult { summary, changed, no_change_reason, implementing };
                s.record.results.insert(claim.requirement.clone(), result);
            }
            WorkResult::Failed(failure) => problem(failure.cause, failure.reason, &mut feedback),
        }
    }
    let Some(cause) = cause else {
        return s.enter(Phase::Valid);
    };
    let epoch = s.record.epoch;
    s.fail(Failure {
        epoch,
        requirements: failed,
        reason: reasons.join("; "),
        cause,
        feedback,
        phase: Some(Phase::Exec),
    });
}

fn validated(s: &mut Step, v: Validation) {
    let claimed: Vec<String> = s.record.claims.iter().map(|c| c.requirement.clone()).collect();
    let mut reasons = Vec::new();
    let mut feedback = Vec::new();
    let mut causes = Vec::new();
    for (contract, detail) in &v.contracts {
        reasons.push(format!("contract {contract}: {detail}"));
        for r in &claimed {
            feedback.push(Feedback {
                requirement: r.clone(),
                source: "contracts".into(),
                text: format!("{contract}: {detail}"),
            });
        }
        causes.push(FailureCause::Contracts);
    }
    let mut approved = 0;
    for (requirement, review) in &v.reviews {
        let about = |text: String| Feedback { requirement: requirement.clone(), source: "review".into(), text };
        match review {
            ReviewResult::Approved => approved += 1,
            ReviewResult::ChangesRequested { findings } => {
                reasons.push(format!("review of {requirement} asked for changes: {}", findings.join(" | ")));
                feedback.extend(findings.iter().cloned().map(about));
                causes.push(FailureCause::Review);
            }
            ReviewResult::NoVerdict => {
                reasons
                    .push(format!("review of {requirement} gave no verdict (review_verdict), so it is not approved"));
                causes.push(FailureCause::Review);
            }
            ReviewResult::Failed(failure) => {
                reasons.push(format!("review of {requirement} failed: {}", failure.reason));
                causes.push(if failure.cause.is_permanent() { failure.cause } else { FailureCause::Review });
            }
        }
    }
    let mut check = EpochCheck { code_changed: v.code_changed, reviews_approved: approved, ..Default::default() };
    match &v.tests {
        Tests::Passed { command, count } => {
            check.tests_passed = Some(*count);
            let _ = command;
        }
        Tests::Failed { command, summary, tail } => {
            reasons.push(format!("tests failed ({command}): {summary}"));
            for r in &claimed {
                feedback.push(Feedback { requirement: r.clone(), source: "tests".into(), text: tail.clone() });
            }
            causes.push(FailureCause::Tests);
        }
        Tests::Missing { .. } | Tests::Off => {}
    }
    if reasons.is_empty() {
        s.record.epoch_check = Some(check);
        return s.enter(Phase::Commit);
    }
    let cause = causes.iter().copied().find(|c| c.is_permanent()).unwrap_or(causes[0]);
    let epoch = s.record.epoch;
    s.fail(Failure {
        epoch,
        requirements: claimed,
        reason: reasons.join("; "),
        cause,
        feedback,
        phase: Some(Phase::Valid),
    });
}

fn committed(s: &mut Step, checkpoint: &str, tagged: &str) {
    let epoch = s.record.epoch;
    let claims = std::mem::take(&mut s.record.claims);
    // Reasons for no change that review approved (only roles that write files are reviewed).
    let accepted = claims
        .iter()
        .filter_map(|c| s.record.results.get(&c.requirement))
        .filter(|r| r.implementing && r.no_change_reason.is_some())
        .count() as u32;
    let done: Vec<(String, String)> = claims
        .iter()
        .map(|c| {
            let result = s.record.results.get(&c.requirement).cloned().unwrap_or_default();
            let reason = match result.no_change_reason {
                Some(why) => format!("no change needed: {}", first_line(&why, 400)),
                None => first_line(&result.summary, 500),
            };
            (c.requirement.clone(), reason)
        })
        .collect();
    if !done.is_empty() {
        s.effects.push(Effect::MarkDone(done));
        s.effects.push(Effect::ReleaseClaims(claims));
    }
    s.effects.push(Effect::DropSnapshots { through_epoch: epoch });
    let check = s.record.epoch_check.take().unwrap_or_default();
    let v = &mut s.record.verification;
    v.reviews_approved += check.reviews_approved;
    v.changed |= check.code_changed;
    v.no_change_accepted += accepted;
    match (check.tests_passed, &check.approved_by) {
        (Some(count), _) => {
            v.unverified_since = None;
            v.tests_passed = count;
            v.tests_ran = true;
        }
        // A human who approves the epoch as it is vouches for it.
        (None, Some(_)) => v.unverified_since = None,
        (None, None) if check.code_changed => {
            v.unverified_since.get_or_insert(epoch);
        }
        (None, None) => {}
    }
    // From here on, "the last commit" (for cancel) is this epoch's complete state.
    s.record.epoch_checkpoint = checkpoint.to_string();
    let short = &tagged[..12.min(tagged.len())];
    s.log("commit", "ok", format!("epoch {epoch} → {short}"));
    let id = s.record.id.clone();
    s.emit(EventKind::Commit, format!("epoch {epoch} committed {short} (tag maestro/{id}/{epoch})"));
    s.enter(Phase::Check);
}

fn checked(s: &mut Step, done: u32, total: u32, require_tests: bool) {
    s.record.done = done;
    s.record.total = total;
    if total == 0 || done < total {
        s.emit(EventKind::Note, format!("{done}/{total} requirements done"));
        return s.enter(Phase::Plan);
    }
    let v = &s.record.verification;
    if !v.changed && v.no_change_accepted == 0 && v.approvals.is_empty() {
        let epoch = s.record.epoch;
        let root = s.record.root.clone();
        let reason = "every requirement is done, but the loop changed no file and no reviewer accepted a reason why \
                      none was needed"
            .to_string();
        let feedback = vec![Feedback { requirement: root.clone(), source: "plan".into(), text: reason.clone() }];
        return s.fail(Failure {
            epoch,
            requirements: vec![root],
            reason,
            cause: FailureCause::NoChange,
            feedback,
            phase: Some(Phase::Check),
        });
    }
    if let Some(since) = s.record.verification.unverified_since.filter(|_| require_tests) {
        let epoch = s.record.epoch;
        let root = s.record.root.clone();
        let reason = format!(
            "every requirement is done, but no test run verified the code changed since epoch {since}: add tests \
             (a test requirement) or set loop.require_tests: false"
        );
        let feedback = vec![Feedback { requirement: root.clone(), source: "tests".into(), text: reason.clone() }];
        return s.fail(Failure {
            epoch,
            requirements: vec![root],
            reason,
            cause: FailureCause::NoTests,
            feedback,
            phase: Some(Phase::Check),
        });
    }
    s.effects.push(Effect::MarkRootDone);
    s.effects.push(Effect::Publish);
    let line = success_line(&s.record, require_tests);
    s.log("loop-end", "succeeded", line.clone());
    s.finish(LoopState::Succeeded, String::new(), line);
}

/// `succeeded: 4/4 requirements done, 6 tests passed, review approved (5 epochs)`.
pub fn success_line(r: &LoopRecord, require_tests: bool) -> String {
    let v = &r.verification;
    let tests = match (v.tests_ran, v.tests_passed) {
        (true, Some(n)) => format!("{n} test{} passed", if n == 1 { "" } else { "s" }),
        (true, None) => "tests passed".into(),
        (false, _) if !require_tests => "tests not required".into(),
        (false, _) if v.approvals.is_empty() => "no code changed".into(),
        (false, _) => "no tests ran".into(),
    };
    let mut review = Vec::new();
    if v.reviews_approved > 0 {
        review.push("review approved".to_string());
    }
    review.extend(v.approvals.iter().map(|a| format!("{a} approved it")));
    if review.is_empty() {
        review.push("nothing to review".into());
    }
    let epochs = if r.epoch == 1 { "1 epoch".to_string() } else { format!("{} epochs", r.epoch) };
    format!("succeeded: {}/{} requirements done, {tests}, {} ({epochs})", r.done, r.total, review.join(", "))
}

fn roll_back(s: &mut Step) {
    let failed_in = s.record.failures.last().and_then(|f| f.phase).unwrap_or(Phase::Plan);
    let epoch = s.record.epoch;
    let message = match failed_in {
        // A failed plan goes; work that failed keeps the plan it followed.
        Phase::Plan | Phase::Assign => {
            s.restore(Phase::Plan, true);
            format!("workspace and SSOT back to the start of epoch {epoch}")
        }
        Phase::Exec | Phase::Valid | Phase::Commit => {
            s.restore(Phase::Assign, true);
            format!("workspace and SSOT back to the start of epoch {epoch}'s work (the plan stays)")
        }
        Phase::Check | Phase::Rollback => "the committed work stays; planning again".to_string(),
    };
    let claims = std::mem::take(&mut s.record.claims);
    if !claims.is_empty() {
        s.effects.push(Effect::ReleaseClaims(claims));
    }
    s.emit(EventKind::Rollback, message);
    s.enter(Phase::Plan);
}

fn decided(s: &mut Step, decision: Decision) {
    let queued = format!("queued behind {}", s.record.id);
    match decision {
        Decision::Approve { actor } => {
            let epoch = s.record.epoch;
            s.record.state = LoopState::Running;
            s.record.reason.clear();
            s.record.verification.approvals.push(format!("epoch {epoch} by {actor}"));
            s.log("approve", "ok", format!("approved by {actor}"));
            s.emit(EventKind::Decision, format!("{actor} approved epoch {epoch} as it is"));
            s.effects.push(Effect::TellQueued(queued));
            match s.record.phase {
                Phase::Plan => {
                    s.record.replan = false;
                    s.enter(Phase::Assign);
                }
                Phase::Check => {
                    s.record.verification.unverified_since = None;
                    s.enter(Phase::Check);
                }
                _ => {
                    // The failed epoch's work as it is: the claims whose agents ran become DONE
                    // at COMMIT; those that never ran go back to PENDING for a later epoch.
                    let failed: Vec<String> =
                        s.record.failures.last().map(|f| f.requirements.clone()).unwrap_or_default();
                    let (ran, idle): (Vec<Claim>, Vec<Claim>) =
                        std::mem::take(&mut s.record.claims).into_iter().partition(|c| {
                            s.record.results.contains_key(&c.requirement) || failed.contains(&c.requirement)
                        });
                    for claim in &ran {
                        s.record.results.entry(claim.requirement.clone()).or_insert_with(|| ClaimResult {
                            summary: format!("approved by {actor}"),
                            ..Default::default()
                        });
                    }
                    if !idle.is_empty() {
                        let ids = idle.iter().map(|c| c.requirement.clone()).collect();
                        s.effects.push(Effect::MarkPending(ids));
                        s.effects.push(Effect::ReleaseClaims(idle));
                    }
                    s.record.claims = ran;
                    s.record.epoch_check =
                        Some(EpochCheck { code_changed: true, approved_by: Some(actor), ..Default::default() });
                    s.enter(Phase::Commit);
                }
            }
        }
        Decision::Retry { guidance, actor } => {
            s.record.state = LoopState::Running;
            s.record.retries = 0;
            s.record.replan = true;
            if !guidance.is_empty() {
                s.record.guidance.push(guidance.clone());
            }
            s.log("retry", "ok", format!("{actor}: {guidance}"));
            s.emit(EventKind::Guidance, format!("{actor} asked for a retry: {guidance}"));
            s.effects.push(Effect::TellQueued(queued));
            s.enter(Phase::Rollback);
        }
        Decision::Abort { actor } => {
            s.restore(Phase::Plan, true);
            let reason = format!("aborted by {actor}");
            s.log("loop-end", "aborted", reason.clone());
            s.finish(
                LoopState::Aborted,
                reason,
                format!("aborted by {actor}; the workspace is back at the last commit"),
            );
        }
    }
}

/// Attempts at requirement `id` so far, plus one (all attempts for `None`).
pub fn attempt(record: &LoopRecord, requirement: Option<&str>) -> u32 {
    let failed = match requirement {
        None => record.failures.len(),
        Some(r) => record.failures.iter().filter(|f| f.requirements.iter().any(|x| x == r)).count(),
    };
    failed as u32 + 1
}

/// What an agent working on `requirement` (the planner: `None`) should know
/// from earlier attempts: their reasons, the feedback about its requirement
/// (exact id: R1 is not R10) and a human's guidance.
pub fn notes(record: &LoopRecord, requirement: Option<&str>) -> String {
    const MAX_FEEDBACK: usize = 4 << 10;
    let mut out = String::new();
    let relevant: Vec<&Failure> = record
        .failures
        .iter()
        .filter(|f| {
            requirement.is_none_or(|r| {
                f.requirements.iter().any(|x| x == r) || f.feedback.iter().any(|fb| fb.requirement == r)
            })
        })
        .collect();
    if !relevant.is_empty() {
        out.push_str("Earlier attempts failed:\n");
        for f in relevant {
            let mut by_source: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for fb in f.feedback.iter().filter(|fb| requirement.is_none_or(|r| fb.requirement == r)) {
                by_source.entry(fb.source.as_str()).or_default().push(fb.text.as_str());
            }
            match requirement {
                // The planner reads every reason; an agent reads what is about its requirement.
                None => out.push_str(&format!(
                    "- epoch {} ({}): {}\n",
                    f.epoch,
                    f.requirements.join(", "),
                    first_line(&f.reason, 600)
                )),
                Some(r) if by_source.is_empty() => {
                    let others: BTreeSet<&str> =
                        f.feedback.iter().map(|fb| fb.requirement.as_str()).filter(|other| *other != r).collect();
                    let others = others.into_iter().collect::<Vec<_>>().join(", ");
                    out.push_str(&format!(
                        "- epoch {}: {r} was rolled back with the rest of the epoch, which failed on {}\n",
                        f.epoch,
                        if others.is_empty() { "other work".to_string() } else { others }
                    ));
                }
                Some(_) => out.push_str(&format!("- epoch {}:\n", f.epoch)),
            }
            for (source, texts) in by_source {
                let mut text = texts.join("\n");
                if text.len() > MAX_FEEDBACK {
                    let cut = text.len() - MAX_FEEDBACK;
                    let cut = (cut..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
                    text = format!("…{}", &text[cut..]);
                }
                out.push_str(&format!("  {source}:\n"));
                for line in text.lines() {
                    out.push_str(&format!("    {line}\n"));
                }
            }
        }
    }
    if !record.guidance.is_empty() {
        out.push_str("Guidance from a human:\n");
        for g in &record.guidance {
            out.push_str(&format!("- {g}\n"));
        }
    }
    out
}
