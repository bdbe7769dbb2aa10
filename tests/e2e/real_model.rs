//! A real model server, not ours: llama-cpp-python's OpenAI-compatible server
//! (built from its PyPI sdist by `deploy/llama-server.sh`) serving
//! SmolLM2-135M-Instruct. The model is far too weak to do the job; what these
//! tests hold is that Maestro speaks the server's protocol (its tool calls
//! reach the harness, turn after turn) and that the run ends honestly:
//! escalated or failed with a one-line reason, or succeeded only with the
//! file written and the tests passing.
//!
//! The server's base URL comes from `MAESTRO_E2E_LLAMA_URL` (`.ci/run` starts
//! the server and sets it). Without it the tests say so and pass, unless
//! `MAESTRO_E2E_REQUIRE_LLAMA=1` (as in CI) makes a missing server a failure.

use maestro_tests::Daemon;
use serde_json::Value;

use crate::misbehaving::{KEY_ENV, loops_of};

const TASK: &str = "Write add(a, b) in src/api/calc.py";

/// The server's `/v1` base URL, or `None` (with a note) when no server is configured.
fn server_url() -> Option<String> {
    match std::env::var("MAESTRO_E2E_LLAMA_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("MAESTRO_E2E_REQUIRE_LLAMA").is_err(),
                "MAESTRO_E2E_REQUIRE_LLAMA is set but MAESTRO_E2E_LLAMA_URL is not: start deploy/llama-server.sh"
            );
            eprintln!("skipped: no real model server (run deploy/llama-server.sh start and set MAESTRO_E2E_LLAMA_URL)");
            None
        }
    }
}

/// A Python project with one failing test, configured for the real server.
/// Short timeouts and few turns keep a run of this slow, weak model within a
/// couple of minutes on two cores.
fn workspace(root: &std::path::Path, url: &str) {
    std::fs::create_dir_all(root.join(".maestro")).unwrap();
    std::fs::create_dir_all(root.join("tests")).unwrap();
    std::fs::write(root.join(".gitignore"), "__pycache__/\n").unwrap();
    std::fs::write(root.join("tests/test_calc.py"), crate::misbehaving::CALC_TEST).unwrap();
    let config = format!(
        "llm:\n  provider: openai\n  model: smollm2-135m\n  base_url: {url}\n  api_key_env: {KEY_ENV}\n  \
         temperature: 0\n  max_tokens: 200\n  timeout_seconds: 90\n  retries: 1\n  context_window: 4096\n\
         loop:\n  retries: 0\n  max_turns: 4\n  test_command: [python3, -m, unittest, discover, -s, tests]\n"
    );
    std::fs::write(root.join(".maestro/config.yaml"), config).unwrap();
}

fn entries(daemon: &Daemon, project: &str) -> Vec<Value> {
    let log = daemon.ctl(&["-p", project, "-o", "json", "log", "list"]).json();
    log.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_run_against_a_real_model_ends_honestly() {
    let Some(url) = server_url() else { return };
    let daemon = Daemon::start_with_env(&[], &[(KEY_ENV, "sk-no-key-needed")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("real-model");
    workspace(&ws, &url);

    let out = maestro_tests::run_ctl_in(&daemon.url(), &ws, &["run", TASK]);
    let said = format!("{}\n{}", out.stdout, out.stderr);
    let loops = loops_of(&daemon, "real-model");
    let l = loops.last().unwrap_or_else(|| panic!("a loop was started: {said}\n{}", daemon.log()));
    let state = l["state"].as_str().unwrap_or_default();
    let reason = l["reason"].as_str().unwrap_or_default();
    let log = entries(&daemon, "real-model");

    // The model was asked, more than once, and every call is in the log with its tokens.
    let calls: Vec<&Value> = log.iter().filter(|e| e["action"] == "model_call").collect();
    assert!(calls.len() >= 2, "several model calls: {log:#?}\n{said}");
    let tokens = |e: &Value| e["tokens"].as_u64().or_else(|| e["tokens"].as_str()?.parse().ok()).unwrap_or(0);
    assert!(calls.iter().any(|c| tokens(c) > 0), "the server's token counts were kept: {calls:#?}");

    // Its tool calls were understood and reached the harness, and the agent was asked again.
    tool_calls_reached_the_harness(&log, &said);

    match out.code {
        0 => {
            // Success only if it is true: the file exists and the tests pass when run by hand.
            assert_eq!(state, "LOOP_STATE_SUCCEEDED", "{said}");
            assert!(ws.join("src/api/calc.py").is_file(), "succeeded without writing calc.py: {said}");
            let tests = std::process::Command::new("python3")
                .args(["-m", "unittest", "discover", "-s", "tests"])
                .current_dir(&ws)
                .output()
                .unwrap();
            assert!(tests.status.success(), "succeeded with failing tests: {}", String::from_utf8_lossy(&tests.stderr));
        }
        2 | 3 => {
            assert!(
                matches!(state, "LOOP_STATE_ESCALATED" | "LOOP_STATE_FAILED"),
                "exit {} with state {state}: {said}",
                out.code
            );
            assert!(!reason.is_empty() && !reason.contains('\n'), "a one-line reason: {reason:?}");
            let start: String = reason.chars().take(60).collect();
            assert!(said.contains(&start), "the run shows the reason {reason:?}: {said}");
            // Nothing is shown as done that the loop did not finish.
            let reqs = daemon.ctl(&["-p", "real-model", "-o", "json", "req", "list"]).json();
            for r in reqs.as_array().into_iter().flatten() {
                assert_ne!(r["status"], "REQUIREMENT_STATUS_DONE", "an unfinished loop left {} DONE: {said}", r["id"]);
            }
        }
        code => panic!("exit {code} is neither success nor an honest end: {said}\n{}", daemon.log()),
    }
}

/// Some agent went on after a tool call: the harness decided on an action the
/// model asked for (allowed or denied, logged with its outcome), and the same
/// agent was asked again afterwards (the log is in sequence order).
fn tool_calls_reached_the_harness(log: &[Value], said: &str) {
    const TOOLS: &[&str] = &["read_file", "list_dir", "list_tree", "search", "write_file", "run_command", "ssot_write"];
    let is_tool = |e: &Value| TOOLS.contains(&e["action"].as_str().unwrap_or(""));
    let went_on = log.iter().enumerate().any(|(i, e)| {
        is_tool(e)
            && !e["outcome"].as_str().unwrap_or("").is_empty()
            && log[i + 1..].iter().any(|later| later["action"] == "model_call" && later["agent"] == e["agent"])
    });
    assert!(went_on, "no agent called a tool through the harness and was asked again: {log:#?}\n{said}");
}
