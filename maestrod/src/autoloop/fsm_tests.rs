//! The state machine's transition table: every phase × outcome, from data
//! alone (no tokio, git or store). Each row checks the state and phase it
//! leads to and the effects in order, written short: `prepare PLAN`,
//! `restore ASSIGN+ssot`, `failed R2`, `emit escalated`, …

use super::fsm::{
    AgentFailure, Assignment, Decision, Effect, MAX_HELD_ROUNDS, Outcome, Plan as PlanResult, ReviewResult, Tests,
    Validation, Work, WorkResult, attempt, next, notes, success_line,
};
use crate::ssot::loops::{
    Claim, ClaimResult, EpochCheck, Failure, FailureCause, Feedback, LoopRecord, LoopState, Phase, Touched,
};
use crate::ssot::requirements::Status;

fn record(state: LoopState, phase: Phase) -> LoopRecord {
    let mut r = LoopRecord::new("p", "Build a calculator", "/w", false, 2);
    r.id = "loop-3".into();
    r.root = "R1".into();
    r.state = state;
    r.phase = phase;
    r.epoch = 1;
    r.epoch_checkpoint = "c0ffee".into();
    r.replan = phase == Phase::Plan;
    r
}

fn claim(id: &str, role: &str) -> Claim {
    Claim { requirement: id.into(), role: role.into(), agent: format!("{role}-1") }
}

fn with_claims(mut r: LoopRecord) -> LoopRecord {
    r.claims = vec![claim("R2", "backend"), claim("R3", "test")];
    r
}

fn short(effect: &Effect) -> String {
    match effect {
        Effect::AcquireLease => "lease".into(),
        Effect::ClearGitLocks => "locks".into(),
        Effect::Reclaim => "reclaim".into(),
        Effect::HoldPaused => "hold".into(),
        Effect::Prepare(p) => format!("prepare {}", p.as_str()),
        Effect::Restore { phase, ssot, .. } => {
            format!("restore {}{}", phase.as_str(), if *ssot { "+ssot" } else { "" })
        }
        Effect::ReleaseClaims(c) => {
            format!("release {}", c.iter().map(|c| c.requirement.as_str()).collect::<Vec<_>>().join("/"))
        }
        Effect::MarkFailed { requirements, .. } => format!("failed {}", requirements.join("/")),
        Effect::MarkDone(d) => format!("done {}", d.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join("/")),
        Effect::MarkPending(ids) => format!("pending {}", ids.join("/")),
        Effect::MarkRootDone => "root done".into(),
        Effect::Publish => "publish".into(),
        Effect::DropSnapshots { through_epoch } => format!("drop ≤{through_epoch}"),
        Effect::Log { action, .. } => format!("log {action}"),
        Effect::TellQueued(_) => "tell".into(),
        Effect::Wait(_) => "wait".into(),
        Effect::Emit(e) => format!("emit {}", e.kind.as_str()),
        Effect::Finish => "finish".into(),
    }
}

/// Runs one transition and checks where it leads and what it does.
fn check(before: &LoopRecord, outcome: Outcome, state: LoopState, phase: Phase, effects: &str) -> LoopRecord {
    let (after, done) = next(before, outcome.clone());
    let got = done.iter().map(short).collect::<Vec<_>>().join(", ");
    assert_eq!(
        (after.state, after.phase),
        (state, phase),
        "{:?} {:?} + {outcome:?}\neffects: {got}",
        before.state,
        before.phase
    );
    assert_eq!(got, effects, "{:?} {:?} + {outcome:?}", before.state, before.phase);
    after
}

fn failed(cause: FailureCause, reason: &str) -> AgentFailure {
    AgentFailure::new(cause, reason)
}

fn finished(changed: &[&str], no_change_reason: Option<&str>, implementing: bool) -> WorkResult {
    WorkResult::Finished {
        summary: "written".into(),
        changed: changed.iter().map(|c| c.to_string()).collect(),
        no_change_reason: no_change_reason.map(String::from),
        implementing,
        paths: "src/api/**".into(),
    }
}

fn validation(reviews: Vec<(&str, ReviewResult)>, tests: Tests) -> Validation {
    Validation {
        contracts: Vec::new(),
        reviews: reviews.into_iter().map(|(r, v)| (r.to_string(), v)).collect(),
        tests,
        code_changed: true,
    }
}

use LoopState::*;
use Phase::*;

#[test]
fn starting_and_resuming() {
    let mut queued = record(Queued, Plan);
    queued.epoch = 0;
    let started =
        check(&queued, Outcome::Started, Running, Plan, "lease, log loop-start, emit state, prepare PLAN, emit phase");
    assert_eq!(started.epoch, 1);
    let resumed =
        check(&queued, Outcome::Resumed, Running, Plan, "lease, log loop-start, emit state, prepare PLAN, emit phase");
    assert_eq!(resumed.restarts, 1);
    // PLAN starts over on the tree as it is (the workspace goes back, the SSOT stays).
    check(
        &record(Running, Plan),
        Outcome::Resumed,
        Running,
        Plan,
        "locks, log loop-restart, restore PLAN, lease, reclaim, emit restart",
    );
    for phase in [Assign, Exec, Valid] {
        let expected =
            format!("locks, log loop-restart, restore {}+ssot, lease, reclaim, emit restart", phase.as_str());
        check(&record(Running, phase), Outcome::Resumed, Running, phase, &expected);
    }
    for phase in [Commit, Check, Rollback] {
        check(
            &record(Running, phase),
            Outcome::Resumed,
            Running,
            phase,
            "locks, log loop-restart, lease, reclaim, emit restart",
        );
    }
    // An escalated loop waits as it was; a paused one stays paused.
    check(
        &record(Escalated, Valid),
        Outcome::Resumed,
        Escalated,
        Valid,
        "locks, log loop-restart, lease, reclaim, emit restart",
    );
    check(
        &record(Paused, Exec),
        Outcome::Resumed,
        Running,
        Exec,
        "locks, log loop-restart, restore EXEC+ssot, lease, reclaim, hold, emit restart",
    );
}

#[test]
fn plan() {
    let plan = record(Running, Plan);
    let stands = check(
        &plan,
        Outcome::Planned(PlanResult::Stands),
        Running,
        Assign,
        "emit note, prepare ASSIGN, drop ≤0, emit phase",
    );
    assert!(stands.replan, "standing on an old plan does not count as replanning");
    let made = check(&plan, Outcome::Planned(PlanResult::Made), Running, Assign, "prepare ASSIGN, drop ≤0, emit phase");
    assert!(!made.replan);
    let invalid = Outcome::Planned(PlanResult::Invalid { problems: vec!["R2 has role \"wizard\"".into()] });
    let after = check(&plan, invalid, Running, Rollback, "log epoch-failed, emit failed, prepare ROLLBACK, emit phase");
    assert_eq!((after.retries, after.failures[0].cause), (1, FailureCause::Plan));
    assert!(after.reason.contains("the plan cannot work: R2 has role \"wizard\""), "{}", after.reason);
    // Out of retries: escalated, and the queued loops are told.
    let mut spent = plan.clone();
    spent.retries = 2;
    let silent = Outcome::Planned(PlanResult::Failed(failed(
        FailureCause::NoToolCall,
        "the model answered without calling a tool",
    )));
    let after =
        check(&spent, silent, Escalated, Plan, "log epoch-failed, emit failed, log escalated, emit escalated, tell");
    assert!(after.reason.starts_with("planning failed: the model answered without calling a tool"));
    // A bad key escalates at once, whatever the budget.
    let denied =
        Outcome::Planned(PlanResult::Failed(failed(FailureCause::ModelPermanent, "openai: the API key was rejected")));
    let after =
        check(&plan, denied, Escalated, Plan, "log epoch-failed, emit failed, log escalated, emit escalated, tell");
    assert_eq!(after.retries, 0, "no retry was spent");
}

#[test]
fn assign() {
    let assign = record(Running, Assign);
    let claims = vec![claim("R2", "backend"), claim("R3", "frontend")];
    let after = check(
        &assign,
        Outcome::Assigned(Assignment::Claimed(claims.clone())),
        Running,
        Exec,
        "emit assigned, emit assigned, prepare EXEC, emit phase",
    );
    assert_eq!(after.claims, claims);
    check(&assign, Outcome::Assigned(Assignment::AllDone), Running, Check, "emit note, prepare CHECK, emit phase");
    let held = || Outcome::Assigned(Assignment::HeldElsewhere { notes: vec!["R2 is claimed elsewhere".into()] });
    let once = check(&assign, held(), Running, Assign, "emit note, wait");
    check(&once, held(), Running, Assign, "wait");
    let mut long = assign.clone();
    long.held_rounds = MAX_HELD_ROUNDS;
    let after = check(&long, held(), Running, Rollback, "log epoch-failed, emit failed, prepare ROLLBACK, emit phase");
    assert!(after.reason.contains("held by another loop"), "{}", after.reason);
    let stuck = Outcome::Assigned(Assignment::Stuck { waiting: vec![("R4".into(), Status::Blocked)] });
    let after = check(&assign, stuck, Running, Rollback, "log epoch-failed, emit failed, prepare ROLLBACK, emit phase");
    assert_eq!(
        (after.failures[0].requirements.clone(), after.failures[0].cause),
        (vec!["R4".to_string()], FailureCause::Stuck)
    );
}

#[test]
fn exec_needs_changed_files_or_a_reason() {
    let exec = with_claims(record(Running, Exec));
    let work = |id: &str, result: WorkResult| Work {
        claim: exec.claims.iter().find(|c| c.requirement == id).unwrap().clone(),
        result,
    };
    let ok = vec![
        work("R2", finished(&["src/api/calc.py"], None, true)),
        work("R3", finished(&["tests/test_calc.py"], None, true)),
    ];
    let after = check(&exec, Outcome::Executed(ok), Running, Valid, "prepare VALID, emit phase");
    assert_eq!(after.results["R2"].changed, ["src/api/calc.py"]);
    // Finished without a change and without a reason: not done.
    let idle = vec![work("R2", finished(&[], None, true)), work("R3", finished(&["tests/t.py"], None, true))];
    let after = check(
        &exec,
        Outcome::Executed(idle),
        Running,
        Rollback,
        "log epoch-failed, emit failed, failed R2/R3, prepare ROLLBACK, emit phase",
    );
    let failure = &after.failures[0];
    assert_eq!((failure.cause, failure.requirements.clone()), (FailureCause::NoChange, vec!["R2".to_string()]));
    assert!(
        failure.reason.contains("R2 (backend-1): finished without changing any file in its paths (src/api/**)"),
        "{}",
        failure.reason
    );
    // A reason (for review to judge) or a role that writes nothing is fine.
    let reasoned =
        vec![work("R2", finished(&[], Some("add() exists already"), true)), work("R3", finished(&[], None, false))];
    let after = check(&exec, Outcome::Executed(reasoned), Running, Valid, "prepare VALID, emit phase");
    assert_eq!(after.results["R2"].no_change_reason.as_deref(), Some("add() exists already"));
    // A failed agent fails the epoch; its last tool error reaches the next attempt at R3 only.
    let turn_limit = failed(FailureCause::TurnLimit, "no finish after 24 turns; last tool error: denied by acl.write");
    let out = vec![work("R2", finished(&["src/api/calc.py"], None, true)), work("R3", WorkResult::Failed(turn_limit))];
    let after = check(
        &exec,
        Outcome::Executed(out),
        Running,
        Rollback,
        "log epoch-failed, emit failed, failed R2/R3, prepare ROLLBACK, emit phase",
    );
    assert!(notes(&after, Some("R3")).contains("last tool error: denied by acl.write"));
    assert!(!notes(&after, Some("R2")).contains("acl.write"), "R2 gets no feedback meant for R3");
    // A permanent model error escalates at once.
    let key = failed(FailureCause::ModelPermanent, "anthropic: the API key was rejected");
    let after = check(
        &exec,
        Outcome::Executed(vec![work("R2", WorkResult::Failed(key))]),
        Escalated,
        Exec,
        "log epoch-failed, emit failed, failed R2/R3, log escalated, emit escalated, tell",
    );
    assert!(after.reason.contains("API key"));
}

#[test]
fn valid_needs_an_approving_review_and_passing_tests() {
    let valid = with_claims(record(Running, Valid));
    let passed = Tests::Passed { command: "python3 -m unittest".into(), count: Some(6) };
    let approved = validation(vec![("R2", ReviewResult::Approved), ("R3", ReviewResult::Approved)], passed.clone());
    let after = check(&valid, Outcome::Validated(approved), Running, Commit, "prepare COMMIT, emit phase");
    assert_eq!(
        after.epoch_check,
        Some(EpochCheck { code_changed: true, tests_passed: Some(Some(6)), reviews_approved: 2, approved_by: None })
    );
    let rollback = "log epoch-failed, emit failed, failed R2/R3, prepare ROLLBACK, emit phase";
    // No verdict is no approval.
    let silent = validation(vec![("R2", ReviewResult::NoVerdict)], passed.clone());
    let after = check(&valid, Outcome::Validated(silent), Running, Rollback, rollback);
    assert_eq!(after.failures[0].cause, FailureCause::Review);
    assert!(after.reason.contains("review of R2 gave no verdict"), "{}", after.reason);
    // Findings are kept against their requirement.
    let findings = vec!["src/api/calc.py:2 [major] add subtracts".to_string()];
    let changes = validation(vec![("R2", ReviewResult::ChangesRequested { findings })], passed.clone());
    let after = check(&valid, Outcome::Validated(changes), Running, Rollback, rollback);
    assert!(notes(&after, Some("R2")).contains("[major] add subtracts"));
    let r3 = notes(&after, Some("R3"));
    assert!(
        !r3.contains("add subtracts")
            && r3.contains("R3 was rolled back with the rest of the epoch, which failed on R2"),
        "{r3}"
    );
    // Failing tests: the output's tail reaches every claim of the epoch.
    let red = Tests::Failed {
        command: "python3 -m unittest".into(),
        summary: "test_add".into(),
        tail: "AssertionError: 0 != 4".into(),
    };
    let after = check(
        &valid,
        Outcome::Validated(validation(vec![("R2", ReviewResult::Approved)], red)),
        Running,
        Rollback,
        rollback,
    );
    assert_eq!(after.failures[0].cause, FailureCause::Tests);
    assert!(notes(&after, Some("R3")).contains("AssertionError: 0 != 4"));
    // Contract violations.
    let mut broken = validation(Vec::new(), passed);
    broken.contracts = vec![("calc-api".into(), "operation add is missing (operations-present)".into())];
    let after = check(&valid, Outcome::Validated(broken), Running, Rollback, rollback);
    assert_eq!(after.failures[0].cause, FailureCause::Contracts);
    // No tests to run: committed, but not verified (see CHECK).
    let untested =
        validation(vec![("R2", ReviewResult::Approved)], Tests::Missing { why: "tests/ does not exist yet".into() });
    let after = check(&valid, Outcome::Validated(untested), Running, Commit, "prepare COMMIT, emit phase");
    assert_eq!(after.epoch_check.unwrap().tests_passed, None);
}

#[test]
fn commit_marks_the_work_done_and_records_what_was_verified() {
    let mut commit = with_claims(record(Running, Commit));
    commit.results.insert("R2".into(), ClaimResult { summary: "add() written".into(), ..Default::default() });
    commit.epoch_check =
        Some(EpochCheck { code_changed: true, tests_passed: None, reviews_approved: 2, approved_by: None });
    let after = check(
        &commit,
        Outcome::Committed { checkpoint: "abcdef0123456789".into(), tagged: "fedcba987654".into() },
        Running,
        Check,
        "done R2/R3, release R2/R3, drop ≤1, log commit, emit commit, prepare CHECK, emit phase",
    );
    assert_eq!((after.epoch_checkpoint.as_str(), after.claims.len()), ("abcdef0123456789", 0));
    assert_eq!((after.verification.unverified_since, after.verification.reviews_approved), (Some(1), 2));
    // A later passing test run covers it.
    let mut later = with_claims(after.clone());
    later.phase = Commit;
    later.epoch = 2;
    later.epoch_check =
        Some(EpochCheck { code_changed: true, tests_passed: Some(Some(6)), reviews_approved: 1, approved_by: None });
    let after = check(
        &later,
        Outcome::Committed { checkpoint: "0123456789ab".into(), tagged: "ba9876543210".into() },
        Running,
        Check,
        "done R2/R3, release R2/R3, drop ≤2, log commit, emit commit, prepare CHECK, emit phase",
    );
    assert_eq!((after.verification.unverified_since, after.verification.tests_passed), (None, Some(6)));
}

#[test]
fn check_succeeds_only_when_everything_is_done_and_verified() {
    let mut verified = record(Running, Check);
    verified.epoch = 5;
    verified.verification.changed = true;
    verified.verification.tests_ran = true;
    verified.verification.tests_passed = Some(6);
    verified.verification.reviews_approved = 4;
    let after = check(
        &verified,
        Outcome::Checked { done: 4, total: 4, require_tests: true },
        Succeeded,
        Check,
        "root done, publish, log loop-end, drop ≤5, finish, emit state",
    );
    assert_eq!(after.reason, "");
    assert_eq!(
        success_line(&after, true),
        "succeeded: 4/4 requirements done, 6 tests passed, review approved (5 epochs)"
    );
    // Not all done: another epoch.
    let after = check(
        &verified,
        Outcome::Checked { done: 3, total: 4, require_tests: true },
        Running,
        Plan,
        "emit note, prepare PLAN, emit phase",
    );
    assert_eq!(after.epoch, 6);
    // An empty tree is not success.
    check(
        &verified,
        Outcome::Checked { done: 0, total: 0, require_tests: true },
        Running,
        Plan,
        "emit note, prepare PLAN, emit phase",
    );
    // All done, but code changed since the last passing test run.
    let mut untested = verified.clone();
    untested.verification.unverified_since = Some(4);
    let after = check(
        &untested,
        Outcome::Checked { done: 4, total: 4, require_tests: true },
        Running,
        Rollback,
        "log epoch-failed, emit failed, prepare ROLLBACK, emit phase",
    );
    assert_eq!(after.failures[0].cause, FailureCause::NoTests);
    assert!(after.reason.contains("no test run verified the code changed since epoch 4"), "{}", after.reason);
    // … unless the project says tests are not required.
    let mut never = untested.clone();
    never.verification.tests_ran = false;
    let after = check(
        &never,
        Outcome::Checked { done: 4, total: 4, require_tests: false },
        Succeeded,
        Check,
        "root done, publish, log loop-end, drop ≤5, finish, emit state",
    );
    assert_eq!(
        success_line(&after, false),
        "succeeded: 4/4 requirements done, tests not required, review approved (5 epochs)"
    );
}

#[test]
fn rollback_undoes_what_failed() {
    let failing = |phase: Phase| {
        let mut r = with_claims(record(Running, Rollback));
        r.touched = Touched { contracts: ["calc-api".to_string()].into(), ..Default::default() };
        r.failures.push(Failure {
            epoch: 1,
            requirements: vec!["R2".into()],
            reason: "x".into(),
            cause: FailureCause::Tests,
            feedback: Vec::new(),
            phase: Some(phase),
        });
        r
    };
    // Work that failed keeps the plan it followed; a failed plan goes.
    let after = check(
        &failing(Valid),
        Outcome::RollbackDue,
        Running,
        Plan,
        "restore ASSIGN+ssot, release R2/R3, emit rollback, prepare PLAN, emit phase",
    );
    assert_eq!((after.epoch, after.claims.len(), after.touched.is_empty()), (2, 0, true));
    let (_, effects) = next(&failing(Exec), Outcome::RollbackDue);
    let Effect::Restore { epoch, touched, .. } = &effects[0] else { panic!("{effects:?}") };
    assert_eq!((*epoch, touched.contracts.len()), (1, 1), "the failed epoch's snapshot and what it touched");
    check(
        &failing(Plan),
        Outcome::RollbackDue,
        Running,
        Plan,
        "restore PLAN+ssot, release R2/R3, emit rollback, prepare PLAN, emit phase",
    );
    // Untested but committed work stays: plan again (to add tests).
    check(
        &failing(Check),
        Outcome::RollbackDue,
        Running,
        Plan,
        "release R2/R3, emit rollback, prepare PLAN, emit phase",
    );
}

#[test]
fn decisions() {
    let escalated = |phase: Phase| {
        let mut r = with_claims(record(Escalated, phase));
        r.retries = 2;
        r.reason = "tests failed".into();
        let failed = vec!["R2".to_string(), "R3".to_string()];
        r.failures.push(Failure {
            epoch: 1,
            requirements: failed,
            reason: r.reason.clone(),
            cause: FailureCause::Tests,
            feedback: Vec::new(),
            phase: Some(phase),
        });
        r
    };
    let approve = || Outcome::Decided(Decision::Approve { actor: "ada".into() });
    let after = check(
        &escalated(Valid),
        approve(),
        Running,
        Commit,
        "log approve, emit decision, tell, prepare COMMIT, emit phase",
    );
    assert_eq!(after.verification.approvals, ["epoch 1 by ada"]);
    assert_eq!(after.epoch_check.as_ref().unwrap().approved_by.as_deref(), Some("ada"));
    assert!(after.results.contains_key("R2") && after.results.contains_key("R3"));
    // EXEC stopped after R2's wave failed: R3 never ran, so it goes back to PENDING, not DONE.
    let mut halfway = escalated(Exec);
    halfway.failures.last_mut().unwrap().requirements = vec!["R2".into()];
    let after = check(
        &halfway,
        approve(),
        Running,
        Commit,
        "log approve, emit decision, tell, pending R3, release R3, prepare COMMIT, emit phase",
    );
    assert_eq!(after.claims, vec![claim("R2", "backend")]);
    let after = check(
        &escalated(Plan),
        approve(),
        Running,
        Assign,
        "log approve, emit decision, tell, prepare ASSIGN, drop ≤0, emit phase",
    );
    assert!(!after.replan);
    let mut untested = escalated(Check);
    untested.verification.unverified_since = Some(1);
    let after =
        check(&untested, approve(), Running, Check, "log approve, emit decision, tell, prepare CHECK, emit phase");
    assert_eq!(after.verification.unverified_since, None, "the human vouches for the untested work");
    let retry = Outcome::Decided(Decision::Retry { guidance: "add must add".into(), actor: "ada".into() });
    let after = check(
        &escalated(Valid),
        retry,
        Running,
        Rollback,
        "log retry, emit guidance, tell, prepare ROLLBACK, emit phase",
    );
    assert_eq!((after.retries, after.guidance.clone()), (0, vec!["add must add".to_string()]));
    assert!(notes(&after, Some("R2")).contains("add must add"));
    let abort = Outcome::Decided(Decision::Abort { actor: "ada".into() });
    let after = check(
        &escalated(Valid),
        abort,
        Aborted,
        Valid,
        "restore PLAN+ssot, log loop-end, release R2/R3, drop ≤1, finish, emit state",
    );
    assert_eq!(after.reason, "aborted by ada");
}

#[test]
fn cancel_and_pause_from_any_phase() {
    for phase in [Plan, Assign, Exec, Valid, Commit, Check, Rollback] {
        let running = with_claims(record(Running, phase));
        check(
            &running,
            Outcome::CancelRequested,
            Cancelled,
            phase,
            "restore PLAN+ssot, log loop-end, release R2/R3, drop ≤1, finish, emit state",
        );
        let paused = check(&running, Outcome::PauseRequested, Paused, phase, "emit state");
        check(&paused, Outcome::Unpaused, Running, phase, "emit state");
    }
    // Cancelled before any checkpoint: nothing to restore.
    let mut fresh = record(Running, Plan);
    fresh.epoch_checkpoint.clear();
    check(&fresh, Outcome::CancelRequested, Cancelled, Plan, "log loop-end, drop ≤1, finish, emit state");
}

#[test]
fn feedback_goes_to_its_requirement_only() {
    let mut r = record(Running, Plan);
    let about = |id: &str, text: &str| Feedback { requirement: id.into(), source: "tests".into(), text: text.into() };
    r.failures.push(Failure {
        epoch: 1,
        requirements: vec!["R10".into()],
        reason: "tests failed".into(),
        cause: FailureCause::Tests,
        feedback: vec![about("R10", "R10's assertion")],
        phase: Some(Valid),
    });
    assert!(notes(&r, Some("R1")).is_empty(), "R1 is not R10: {}", notes(&r, Some("R1")));
    assert!(notes(&r, Some("R10")).contains("R10's assertion"));
    assert!(notes(&r, None).contains("R10's assertion"), "the planner sees everything");
    assert_eq!((attempt(&r, Some("R10")), attempt(&r, Some("R1")), attempt(&r, None)), (2, 1, 2));
    // Long feedback is cut to its end, where the assertion is.
    r.failures[0].feedback = vec![about("R10", &format!("{}\nAssertionError: 0 != 4", "noise\n".repeat(2000)))];
    let text = notes(&r, Some("R10"));
    assert!(text.len() < 8 << 10 && text.contains("AssertionError: 0 != 4"), "{}", text.len());
}
