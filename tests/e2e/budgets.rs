//! Budgets are per agent run and kept with the loop: each review has its own,
//! a restart does not hand a loop a fresh budget, and `loop show` sums what
//! the models cost per requirement, per agent and for the loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use maestro_shared::v1;
use maestro_tests::{Daemon, run_ctl_in};
use serde_json::{Value, json};

use crate::loops::wait_end;
use crate::misbehaving::{KEY_ENV, behaves, model_workspace};
use crate::model_server::{ModelServer, Reply, Turn, Wire, call};

fn config_with(ws: &std::path::Path, from: &str, to: &str) {
    let path = ws.join(".maestro/config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// Planning splits the task in two, each written by its own backend agent and reviewed by its own reviewer.
fn two_requirements(t: &Turn) -> Reply {
    match (t.role.as_str(), t.turn) {
        ("planning", 0) => Reply::Calls(vec![
            ("create_requirement".into(), json!({"parent_id": "R1", "title": "add()", "role_hint": "backend"})),
            ("create_requirement".into(), json!({"parent_id": "R1", "title": "sub()", "role_hint": "backend"})),
        ]),
        ("backend", 0) if t.requirement == "R3" => {
            call("write_file", json!({"path": "src/api/sub.py", "content": "def sub(a, b):\n    return a - b\n"}))
        }
        _ => behaves(t),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_review_has_its_own_budget_and_loop_show_sums_the_cost() {
    let daemon = Daemon::start_with_env(&[], &[(KEY_ENV, "sk-e2e-local-key")]).unwrap();
    let server = ModelServer::start(Arc::new(two_requirements)).await;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("two-reviews");
    model_workspace(&ws, Wire::OpenAi, &server.base_url(Wire::OpenAi), "two", "");
    // Two turns of any agent (140 + 180 tokens) fit in 400; two reviews sharing one budget would not.
    std::fs::write(
        ws.join(".maestro/config.yaml"),
        std::fs::read_to_string(ws.join(".maestro/config.yaml")).unwrap()
            + "harness:\n  budget:\n    per_agent_epoch: {tokens: 400}\n",
    )
    .unwrap();
    let run = run_ctl_in(&daemon.url(), &ws, &["run", "Write add() and sub()"]);
    assert_eq!(run.code, 0, "{}{}\n{}", run.stdout, run.stderr, daemon.log());

    let shown = daemon.ctl(&["-o", "json", "loop", "show", "loop-1"]).json();
    let usage = &shown["usage"];
    // Numbers as JSON numbers, or as the strings protobuf's JSON makes of 64-bit ones.
    let n = |v: &Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_default();
    // What the server was asked, turn by turn, is what the loop says it spent.
    let asked: u64 = server.turns().iter().map(|t| 140 + 40 * t.turn as u64).sum();
    assert_eq!(n(&usage["total"]["tokens"]), asked, "{usage:#}");
    assert_eq!(n(&usage["total"]["calls"]), server.turns().len() as u64);
    assert_eq!(n(&usage["total"]["tokensIn"]) + n(&usage["total"]["tokensOut"]), asked);
    for agent in ["planning-1", "backend-1", "backend-2", "review-1", "review-2"] {
        assert_eq!(n(&usage["byAgent"][agent]["tokens"]), 320, "{agent}: {usage:#}");
    }
    // Each requirement's cost: its implementer and its reviewer.
    for requirement in ["R2", "R3"] {
        assert_eq!(n(&usage["byRequirement"][requirement]["tokens"]), 640, "{requirement}: {usage:#}");
    }
    assert_eq!(n(&shown["tokens"]), asked, "the loop's own count agrees");
    let table = daemon.ctl(&["loop", "show", "loop-1"]).ok().to_string();
    assert!(table.contains("requirement R3") && table.contains("agent review-2"), "{table}");

    // The log explains a run: the second reviewer's calls, with tokens and its requirement.
    let log = daemon.ctl(&["-p", "two-reviews", "-o", "json", "log", "list", "--agent", "review-2"]).json();
    let calls: Vec<&Value> = log.as_array().unwrap().iter().filter(|e| e["action"] == "model_call").collect();
    assert_eq!(calls.len(), 2, "{log:#}");
    for c in calls {
        assert_eq!(c["target"], "two");
        assert!(n(&c["tokens"]) > 0 && c["requirement"].as_str().is_some_and(|r| r == "R2" || r == "R3"), "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_give_a_loop_a_fresh_budget() {
    let mut daemon = Daemon::start_with_env(&[], &[(KEY_ENV, "sk-e2e-local-key")]).unwrap();
    // The first implementation is wrong; the one after the retry is right.
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let server = ModelServer::start(Arc::new(move |t: &Turn| match (t.role.as_str(), t.turn) {
        ("backend", 0) => {
            let body = if counter.fetch_add(1, Ordering::SeqCst) == 0 { "a - b" } else { "a + b" };
            call(
                "write_file",
                json!({"path": "src/api/calc.py", "content": format!("def add(a, b):\n    return {body}\n")}),
            )
        }
        _ => behaves(t),
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("restart-budget");
    model_workspace(&ws, Wire::OpenAi, &server.base_url(Wire::OpenAi), "restart", "");
    config_with(&ws, "loop:\n  retries: 1", "loop:\n  retries: 0");
    let run = run_ctl_in(&daemon.url(), &ws, &["run", "Write add(a, b) in src/api/calc.py"]);
    assert_eq!(run.code, 2, "the failing tests escalate: {}{}", run.stdout, run.stderr);
    let spent =
        daemon.ctl(&["-o", "json", "loop", "show", "loop-1"]).json()["usage"]["total"]["tokens"].as_u64().unwrap();
    assert!(spent >= 640, "epoch 1 spent {spent}");

    // The daemon dies; the loop's budget is now what it had spent and a little more:
    // less than another epoch needs, more than a fresh start would have used.
    daemon.restart().unwrap();
    let limit = spent + 200;
    std::fs::write(
        ws.join(".maestro/config.yaml"),
        std::fs::read_to_string(ws.join(".maestro/config.yaml")).unwrap()
            + &format!("harness:\n  budget:\n    per_loop: {{tokens: {limit}}}\n"),
    )
    .unwrap();
    daemon.ctl(&["retry", "loop-1", "--guidance", "add must add"]).ok();
    let end = wait_end(&daemon, "loop-1").await;
    assert_ne!(end.state(), v1::LoopState::Succeeded, "{end:?}");
    assert!(end.reason.contains("loop token budget exhausted"), "{}", end.reason);
    assert!(written.load(Ordering::SeqCst) <= 2);
}
