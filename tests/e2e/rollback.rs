//! What a rollback and a human's decision promise, through the real
//! binaries: aborting a loop undoes only its own work (a run queued behind
//! it, a human's requirement stay), ids are never reused, the feedback of a
//! failed attempt reaches the agent of that requirement and no other,
//! `retry` picks up a fixed configuration, and `approve` refuses an epoch
//! that did nothing.

use std::sync::Arc;

use maestro_shared::v1;
use maestro_tests::{Daemon, run_ctl_in};
use serde_json::json;

use crate::loops::{get, scripted_workspace, wait_end};
use crate::misbehaving::{CALC_TEST, KEY_ENV, behaves, model_workspace};
use crate::model_server::{ModelServer, Reply, Turn, Wire, call};

const TWO_RUNS: &str = r#"
roles:
  planning@R1:
    - tool_calls: [{name: create_requirement, arguments: {parent_id: R1, title: "add()", role_hint: backend}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "R2"}}]
  backend@R2:
    - tool_calls: [{name: write_file, arguments: {path: src/api/calc.py, content: "def add(a, b):\n    return a - b\n"}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "add() written"}}]
  planning@R4:
    - tool_calls: [{name: create_requirement, arguments: {parent_id: R4, title: "sub()", role_hint: backend}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "R5"}}]
  backend@R5:
    - tool_calls: [{name: write_file, arguments: {path: src/api/calc.py, content: "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "sub() written"}}]
  review:
    - tool_calls: [{name: review_verdict, arguments: {verdict: approve}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "fine"}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_loop_keeps_the_run_queued_behind_it_and_a_humans_requirement() {
    let daemon = Daemon::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("calc");
    scripted_workspace(&ws, TWO_RUNS, 0);
    std::fs::write(ws.join("tests/test_calc.py"), CALC_TEST).unwrap();
    let first = run_ctl_in(&daemon.url(), &ws, &["run", "Write add()"]);
    assert_eq!(first.code, 2, "escalated: {}{}", first.stdout, first.stderr);
    let p = |args: &[&str]| {
        let mut all = vec!["-p", "calc"];
        all.extend_from_slice(args);
        daemon.ctl(&all)
    };
    // A human adds a requirement, even under the escalated loop's own root: not the loop's to undo.
    assert!(p(&["req", "add", "A human's note", "--parent", "R1"]).ok().contains("R3"));
    let second = run_ctl_in(&daemon.url(), &ws, &["run", "--detach", "Write sub()"]).ok().trim().to_string();
    assert_eq!(second, "loop-2");
    // The queued loop says what it waits for, in `loop show` and in its events.
    let waiting = "waiting for loop-1, ESCALATED: approve, retry or abort it";
    let shown = daemon.ctl(&["loop", "show", "loop-2"]).ok().to_string();
    assert!(shown.contains(waiting) && shown.contains("QUEUED"), "{shown}");
    assert!(p(&["req", "show", "R2"]).ok().contains("FAILED"), "escalated work is never shown DONE");

    let aborted = daemon.ctl(&["-o", "json", "abort", "loop-1"]).json();
    assert_eq!(aborted["state"], "LOOP_STATE_ABORTED", "{aborted}");
    let end = wait_end(&daemon, "loop-2").await;
    assert_eq!(end.state(), v1::LoopState::Succeeded, "{end:?}\n{}", daemon.ctl(&["attach", "loop-2"]).stdout);
    let events = daemon.ctl(&["attach", "loop-2"]).ok().to_string();
    assert!(events.contains(waiting), "the wait is an event of loop-2:\n{events}");

    // loop-1's plan is gone, its id not given out again; loop-2's tree and the human's requirement stay.
    let missing = p(&["req", "show", "R2"]);
    assert!(missing.code == 1 && missing.stderr.contains("NOT_FOUND"), "{}", missing.stderr);
    let reqs = p(&["-o", "json", "req", "list"]).json();
    let status = |id: &str| {
        reqs.as_array().unwrap().iter().find(|r| r["id"] == id).map(|r| r["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status("R3").as_deref(), Some("REQUIREMENT_STATUS_PENDING"), "{reqs}");
    assert_eq!(status("R4").as_deref(), Some("REQUIREMENT_STATUS_DONE"), "{reqs}");
    assert_eq!(status("R5").as_deref(), Some("REQUIREMENT_STATUS_DONE"), "{reqs}");
    let code = std::fs::read_to_string(ws.join("src/api/calc.py")).unwrap();
    assert!(code.contains("return a + b") && code.contains("def sub"), "loop-2's work survives: {code}");
}

/// The planner makes a backend and a frontend requirement; review sends the
/// page back once, with a finding; everything else goes right.
fn page_sent_back_once(t: &Turn) -> Reply {
    let again = t.task.contains("Earlier attempts failed");
    match (t.role.as_str(), t.turn) {
        ("planning", 0) if !again => {
            call("create_requirement", json!({"parent_id": "R1", "title": "add()", "role_hint": "backend"}))
        }
        ("planning", 1) if !again => {
            call("create_requirement", json!({"parent_id": "R1", "title": "Calculator page", "role_hint": "frontend"}))
        }
        ("frontend", 0) => call(
            "write_file",
            json!({"path": "src/ui/page.html", "content": if again { "<p>{{ name | e }}</p>\n" } else { "<p>{{ name }}</p>\n" }}),
        ),
        ("review", 0) if t.requirement == "R3" && !again => call(
            "review_verdict",
            json!({"verdict": "request_changes", "findings": [{"file": "src/ui/page.html", "line": 1, "severity": "major", "text": "escape the name before rendering it"}]}),
        ),
        _ => behaves(t),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_keeps_ids_and_each_agent_gets_the_feedback_about_its_own_requirement() {
    let daemon = Daemon::start_with_env(&[], &[(KEY_ENV, "sk-e2e-local-key")]).unwrap();
    let server = ModelServer::start(Arc::new(page_sent_back_once)).await;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("page");
    model_workspace(&ws, Wire::OpenAi, &server.base_url(Wire::OpenAi), "page", "");
    let run = run_ctl_in(&daemon.url(), &ws, &["run", "A calculator with a page"]);
    assert_eq!(run.code, 0, "{}{}\n{}", run.stdout, run.stderr, daemon.log());
    assert!(run.stdout.contains(" rollback "), "{}", run.stdout);
    let last = run.stdout.lines().last().unwrap();
    assert!(last.contains("succeeded: 2/2 requirements done, 1 test passed, review approved (2 epochs)"), "{last}");
    // The tree kept its ids through the rollback: no requirement was made twice.
    let reqs = daemon.ctl(&["-p", "page", "-o", "json", "req", "list"]).json();
    let ids: Vec<&str> = reqs.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["R1", "R2", "R3"], "{reqs}");
    // Second attempts: the frontend agent got the finding about R3, the backend agent did not.
    let turns = server.turns();
    let second = |role: &str, id: &str| {
        turns
            .iter()
            .filter(|t| t.role == role && t.requirement == id && t.turn == 0)
            .nth(1)
            .unwrap_or_else(|| panic!("no second attempt of {role} at {id}"))
            .task
            .clone()
    };
    let frontend = second("frontend", "R3");
    assert!(frontend.contains("src/ui/page.html:1 [major] escape the name before rendering it"), "{frontend}");
    let backend = second("backend", "R2");
    assert!(!backend.contains("escape the name"), "R3's finding reached R2's agent:\n{backend}");
    assert!(backend.contains("R2 was rolled back with the rest of the epoch, which failed on R3"), "{backend}");
    // The verdict is kept against R3 in the SSOT's log.
    let log = daemon.ctl(&["-p", "page", "-o", "json", "log", "list"]).json();
    let verdicts: Vec<(&str, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "review_verdict")
        .map(|e| (e["target"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert!(verdicts.contains(&("R3", "request_changes")) && verdicts.contains(&("R3", "approve")), "{verdicts:?}");
}

/// A model that answers only once its name is right.
fn picky(t: &Turn) -> Reply {
    match t.scenario.as_str() {
        "gpt-typo" => Reply::Status(404, "The model `gpt-typo` does not exist or you do not have access to it".into()),
        "idle" if t.role == "backend" => call("finish", json!({"outcome": "done", "summary": "nothing to do"})),
        _ => behaves(t),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reads_the_fixed_configuration_and_approve_refuses_an_epoch_that_did_nothing() {
    let daemon = Daemon::start_with_env(&[], &[(KEY_ENV, "sk-e2e-local-key")]).unwrap();
    let server = ModelServer::start(Arc::new(picky)).await;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("typo");
    let url = server.base_url(Wire::Anthropic);
    model_workspace(&ws, Wire::Anthropic, &url, "gpt-typo", "");
    let run = run_ctl_in(&daemon.url(), &ws, &["run", "Write add()"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let l = get(&daemon, "loop-1").await;
    assert!(l.reason.contains("unknown model \"gpt-typo\"") && l.retries == 0, "{l:?}");

    // Nothing was planned: nothing to approve. One line, exit 1.
    let refused = daemon.ctl(&["approve", "loop-1"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("nothing to approve: the plan of epoch 1 of loop-1 is empty"),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    // A broken configuration is refused too, and the loop keeps waiting.
    std::fs::write(ws.join(".maestro/config.yaml"), "llm: [\n").unwrap();
    let broken = daemon.ctl(&["retry", "loop-1", "--guidance", "use the right model"]);
    assert!(broken.code == 1 && broken.stderr.contains("cannot retry loop-1"), "{}", broken.stderr);
    assert_eq!(get(&daemon, "loop-1").await.state(), v1::LoopState::Escalated);

    // Fixed: retry picks the new model up and the loop succeeds.
    model_workspace(&ws, Wire::Anthropic, &url, "behaves", "");
    daemon.ctl(&["retry", "loop-1", "--guidance", "use the right model"]).ok();
    let end = wait_end(&daemon, "loop-1").await;
    assert_eq!(end.state(), v1::LoopState::Succeeded, "{end:?}");

    // An implementing agent that changed nothing: escalated, and approve refuses the empty epoch.
    let idle = dir.path().join("idle");
    model_workspace(&idle, Wire::OpenAi, &server.base_url(Wire::OpenAi), "idle", "");
    let run = run_ctl_in(&daemon.url(), &idle, &["run", "Write add()"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let id =
        daemon.ctl(&["-p", "idle", "-o", "json", "loop", "list"]).json()[0]["loopId"].as_str().unwrap().to_string();
    let refused = daemon.ctl(&["approve", &id]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains(&format!("nothing to approve: epoch 2 of {id} changed no files")),
        "{}",
        refused.stderr
    );
    daemon.ctl(&["abort", &id]).ok();
    assert_eq!(wait_end(&daemon, &id).await.state(), v1::LoopState::Aborted);
}

fn git(ws: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(ws).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The user's half-done edit, made before the run, is theirs: the branch the
/// run prints holds only the loop's work on top of the user's commit, and
/// the printed command takes it without touching the edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_run_puts_only_its_own_work_on_its_branch() {
    let daemon = Daemon::start_with_env(&[], &[(KEY_ENV, "sk-e2e-local-key")]).unwrap();
    let server = ModelServer::start(Arc::new(behaves)).await;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("calc");
    model_workspace(&ws, Wire::OpenAi, &server.base_url(Wire::OpenAi), "calc", "");
    git(&ws, &["init", "-q"]);
    std::fs::write(ws.join("NOTES.md"), "v1\n").unwrap();
    git(&ws, &["add", "NOTES.md"]);
    git(&ws, &["-c", "user.name=ada", "-c", "user.email=ada@example.com", "commit", "-qm", "mine"]);
    let mine = git(&ws, &["rev-parse", "HEAD"]);
    std::fs::write(ws.join("NOTES.md"), "v1, and half of v2\n").unwrap();

    let run = run_ctl_in(&daemon.url(), &ws, &["run", "A calculator"]);
    assert_eq!(run.code, 0, "{}{}\n{}", run.stdout, run.stderr, daemon.log());
    let take = run.stderr.lines().find(|l| l.contains("take it onto yours")).expect(&run.stderr).to_string();
    let branch = take.split_whitespace().last().unwrap().to_string();
    assert!(branch.starts_with("maestro/loop-"), "{take}");
    assert_eq!(git(&ws, &["show", &format!("{branch}:NOTES.md")]), "v1\n", "the user's edit is not the loop's");
    assert!(git(&ws, &["ls-tree", "-r", "--name-only", &branch]).contains("src/api/calc.py"), "the loop's work");
    assert_eq!(git(&ws, &["rev-parse", "HEAD"]), mine, "the user's branch is left alone");

    // The printed command, as printed: a fast-forward that leaves the edit where it was.
    git(&ws, &["reset", "-q", &branch]);
    assert_eq!(std::fs::read_to_string(ws.join("NOTES.md")).unwrap(), "v1, and half of v2\n");
    let status = git(&ws, &["status", "--porcelain", "--", "src", "NOTES.md"]);
    assert_eq!(status.trim(), "M NOTES.md", "only the user's edit is left uncommitted: {status}");
}
