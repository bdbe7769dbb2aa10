//! Record and replay, as a user turns a real run into a regression test: a
//! run against a model is recorded with `maestroctl run --record`, and the
//! recording, played back with `llm.provider: replay` in a fresh copy of the
//! project, gives the same files and the same SSOT without asking any model,
//! although the tests the agents ran print different timings in each run.

use std::path::Path;
use std::sync::Arc;

use maestro_tests::{Daemon, run_ctl_in};
use serde_json::{Value, json};

use crate::misbehaving::{KEY_ENV, behaves, model_workspace};
use crate::model_server::{ModelServer, Turn, Wire, call};

/// A test that prints a different line in every run.
const NOISY_TEST: &str = "import os, sys, time, unittest\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'src'))\nfrom api.calc import add\n\nclass AddTest(unittest.TestCase):\n    def test_add(self):\n        print('clock', time.time_ns(), file=sys.stderr)\n        self.assertEqual(add(2, 2), 4)\n";

/// Backend writes, runs the tests, fixes what they show, runs them again and finishes.
fn team(t: &Turn) -> crate::model_server::Reply {
    match (t.role.as_str(), t.turn) {
        ("backend", 0) => {
            call("write_file", json!({"path": "src/api/calc.py", "content": "def add(a, b):\n    return a - b\n"}))
        }
        ("backend", 1) => call("run_tests", json!({})),
        ("backend", 2) => call("edit_file", json!({"path": "src/api/calc.py", "old": "a - b", "new": "a + b"})),
        ("backend", 3) => call("run_tests", json!({})),
        _ => behaves(t),
    }
}

fn project(root: &Path, wire: Wire, base_url: &str, llm_extra: &str) {
    model_workspace(
        root,
        wire,
        base_url,
        "recorded",
        "harness:\n  roles:\n    backend:\n      commands: [[python3, -m, unittest, discover, -s, tests]]\n",
    );
    std::fs::write(root.join("tests/test_calc.py"), NOISY_TEST).unwrap();
    let path = root.join(".maestro/config.yaml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    if !llm_extra.is_empty() {
        config = config.lines().filter(|l| !l.starts_with("  provider:")).map(|l| format!("{l}\n")).collect();
    }
    let config =
        config.replacen("llm:\n", &format!("llm:\n{llm_extra}"), 1).replacen("max_turns: 4", "max_turns: 8", 1);
    std::fs::write(path, config).unwrap();
}

/// What a run left: requirement ids, titles and statuses, and the loop's last line.
fn outcome(daemon: &Daemon, project: &str) -> Vec<(String, String, String)> {
    let reqs = daemon.ctl(&["-p", project, "-o", "json", "req", "list"]).json();
    reqs.as_array()
        .unwrap()
        .iter()
        .map(|r: &Value| {
            (
                r["id"].as_str().unwrap().into(),
                r["title"].as_str().unwrap().into(),
                r["status"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_with_timing_noise_replays_to_the_same_files_and_ssot() {
    let daemon = Daemon::start_with_env(&[], &[(KEY_ENV, "sk-e2e-local-key")]).unwrap();
    let server = ModelServer::start(Arc::new(team)).await;
    let dir = tempfile::tempdir().unwrap();
    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let recorded = dir.path().join(format!("recorded-{}", wire.provider()));
        project(&recorded, wire, &server.base_url(wire), "");
        std::fs::create_dir_all(recorded.join(".maestro/recordings")).unwrap();
        let run = run_ctl_in(
            &daemon.url(),
            &recorded,
            &["run", "--record", ".maestro/recordings/add.jsonl", "Write add(a, b) in src/api/calc.py"],
        );
        assert_eq!(run.code, 0, "{}{}\n{}", run.stdout, run.stderr, daemon.log());
        // The model saw the failing tests, then the passing ones, each with its clock line.
        let seen: Vec<String> = server
            .turns()
            .into_iter()
            .filter(|t| t.role == "backend" && t.turn == 4 && t.scenario == "recorded")
            .flat_map(|t| t.results)
            .collect();
        let clocks = seen.iter().filter(|r| r.contains("clock ")).count();
        assert!(clocks >= 2, "both test runs reached the model with their timings: {seen:#?}");
        let recording = recorded.join(".maestro/recordings/add.jsonl");
        let lines = std::fs::read_to_string(&recording).expect("the recording exists").lines().count();
        assert!(lines >= 7, "every exchange is kept ({lines} lines)");

        // A fresh copy of the project, with the recording and the replay provider.
        let asked_before = server.turns().len();
        let replayed = dir.path().join(format!("replayed-{}", wire.provider()));
        project(&replayed, wire, "http://127.0.0.1:9/unreachable", "  provider: replay\n  replay_file: add.jsonl\n");
        std::fs::copy(&recording, replayed.join("add.jsonl")).unwrap();
        let again = run_ctl_in(&daemon.url(), &replayed, &["run", "Write add(a, b) in src/api/calc.py"]);
        assert_eq!(again.code, 0, "{}{}\n{}", again.stdout, again.stderr, daemon.log());
        assert_eq!(server.turns().len(), asked_before, "the replay asked no model");

        let file = |root: &Path| std::fs::read_to_string(root.join("src/api/calc.py")).unwrap();
        assert_eq!(file(&recorded), file(&replayed));
        assert!(file(&replayed).contains("a + b"));
        let names = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(outcome(&daemon, &names(&recorded)), outcome(&daemon, &names(&replayed)));
        let last = |s: &str| s.lines().last().unwrap_or_default().to_string();
        assert_eq!(last(&run.stdout), last(&again.stdout));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_diverges_from_its_recording_stops_with_a_reason() {
    let daemon = Daemon::start_with_env(&[], &[(KEY_ENV, "sk-e2e-local-key")]).unwrap();
    let server = ModelServer::start(Arc::new(team)).await;
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("diverge-rec");
    project(&recorded, Wire::OpenAi, &server.base_url(Wire::OpenAi), "");
    let run = run_ctl_in(&daemon.url(), &recorded, &["run", "--record", "add.jsonl", "Write add(a, b)"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // The recording lost its backend exchanges: the replay cannot go on and says so.
    let text = std::fs::read_to_string(recorded.join("add.jsonl")).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("\"role\":\"backend\"")).collect();
    assert!(kept.len() < text.lines().count(), "the recording names its agents");
    let replayed = dir.path().join("diverge-play");
    project(
        &replayed,
        Wire::OpenAi,
        "http://127.0.0.1:9/unreachable",
        "  provider: replay\n  replay_file: add.jsonl\n",
    );
    std::fs::write(replayed.join("add.jsonl"), kept.join("\n") + "\n").unwrap();
    let again = run_ctl_in(&daemon.url(), &replayed, &["run", "Write add(a, b)"]);
    assert!(again.code == 2 || again.code == 3, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stdout.contains("recording") || again.stderr.contains("recording"),
        "{}{}",
        again.stdout,
        again.stderr
    );
}
