//! No misbehaving model ends in `succeeded`. The real daemon runs real loops
//! against a local server that speaks the OpenAI and the Anthropic wire
//! formats and plays one misbehaviour per project (text instead of tool
//! calls, unknown tools, bad plans, a reviewer without a verdict, HTTP
//! errors, a stalled server, …); each must end escalated (exit 2) or failed
//! (exit 3) with a one-line reason that names the cause. A well-behaved
//! model, on the same server, succeeds: the suite can tell them apart.

use std::path::Path;
use std::sync::Arc;

use maestro_tests::{Daemon, run_ctl_in};
use serde_json::{Value, json};

use crate::model_server::{ModelServer, Reply, Turn, Wire, call, text};

/// The variable the daemon reads the model key from.
pub(crate) const KEY_ENV: &str = "MAESTRO_E2E_MODEL_KEY";

pub(crate) const CALC_TEST: &str = "import os, sys, unittest\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'src'))\nfrom api.calc import add\n\nclass AddTest(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 2), 4)\n";

fn done(summary: &str) -> Reply {
    call("finish", json!({"outcome": "done", "summary": summary}))
}

/// A team that does the job: the planner splits off add(), backend writes it, review approves.
pub(crate) fn behaves(t: &Turn) -> Reply {
    match (t.role.as_str(), t.turn) {
        ("planning", 0) => call(
            "create_requirement",
            json!({"parent_id": "R1", "title": "add()", "role_hint": "backend", "acceptance": ["add(2, 2) == 4"]}),
        ),
        ("backend", 0) => {
            call("write_file", json!({"path": "src/api/calc.py", "content": "def add(a, b):\n    return a + b\n"}))
        }
        ("review", 0) => call("review_verdict", json!({"verdict": "approve"})),
        _ => done("done"),
    }
}

/// One misbehaviour: what the model does differently, and how the loop must end.
struct Case {
    name: &'static str,
    /// Extra lines of the `loop` section.
    config: &'static str,
    /// Its answer where it misbehaves (`None`: it behaves).
    play: fn(&Turn) -> Option<Reply>,
    code: i32,
    /// Part of the loop's reason.
    cause: &'static str,
    /// Escalates at once, without spending a retry.
    permanent: bool,
}

fn planner(t: &Turn, reply: Reply) -> Option<Reply> {
    (t.role == "planning").then_some(reply)
}

const CASES: &[Case] = &[
    Case { config: "", name: "behaves", play: |_| None, code: 0, cause: "", permanent: false },
    Case {
        // Paths are compared as the workspace-relative paths they name.
        config: "",
        name: "behaves-with-odd-paths",
        play: |t| {
            (t.role == "backend" && t.turn == 0).then(|| {
                call(
                    "write_file",
                    json!({"path": "./src//api/calc.py", "content": "def add(a, b):\n    return a + b\n"}),
                )
            })
        },
        code: 0,
        cause: "",
        permanent: false,
    },
    Case {
        config: "",
        name: "text-only",
        play: |_| Some(text("I cannot help with that.")),
        code: 2,
        cause: "the model answered without calling a tool",
        permanent: false,
    },
    Case {
        config: "",
        name: "empty-replies",
        play: |_| Some(text("")),
        code: 2,
        cause: "the model answered without calling a tool",
        permanent: false,
    },
    Case {
        config: "",
        name: "json-in-text",
        play: |t| {
            planner(t, text(r#"{"name": "create_requirement", "arguments": {"parent_id": "R1", "title": "add()"}}"#))
        },
        code: 2,
        cause: "the model answered without calling a tool",
        permanent: false,
    },
    Case {
        config: "",
        name: "cut-at-max-tokens",
        play: |t| {
            let finish = ("finish".to_string(), json!({"outcome": "done", "summary": "planned"}));
            planner(t, Reply::Cut("I will now create the requirements and then".into(), vec![finish]))
        },
        code: 2,
        cause: "cut at the token limit",
        permanent: false,
    },
    Case {
        config: "",
        name: "unknown-tool",
        play: |t| planner(t, call("teleport", json!({"to": "done"}))),
        code: 2,
        cause: "unknown tool \"teleport\"",
        permanent: false,
    },
    Case {
        config: "",
        name: "malformed-arguments",
        play: |t| planner(t, Reply::Raw("create_requirement".into(), r#"{"parent_id": "R1", "title": "#.into())),
        code: 2,
        cause: "invalid arguments for create_requirement",
        permanent: false,
    },
    Case {
        config: "",
        name: "writes-outside-its-paths",
        play: |t| {
            (t.role == "backend" && t.turn == 0).then(|| {
                call("write_file", json!({"path": "src/ui/calc.py", "content": "def add(a, b): return a + b\n"}))
            })
        },
        code: 2,
        cause: "finished without changing any file in its paths (src/api/**)",
        permanent: false,
    },
    Case {
        config: "",
        name: "fails-its-tests",
        play: |t| {
            (t.role == "backend" && t.turn == 0).then(|| {
                call("write_file", json!({"path": "src/api/calc.py", "content": "def add(a, b):\n    return a - b\n"}))
            })
        },
        code: 2,
        cause: "tests failed",
        permanent: false,
    },
    Case {
        config: "",
        name: "review-without-verdict",
        play: |t| (t.role == "review").then(|| done("looks fine")),
        code: 2,
        cause: "gave no verdict",
        permanent: false,
    },
    Case {
        config: "",
        name: "empty-plan",
        play: |t| planner(t, done("nothing to do")),
        code: 2,
        cause: "empty plan",
        permanent: false,
    },
    Case {
        config: "",
        name: "unknown-role",
        play: |t| {
            let create =
                call("create_requirement", json!({"parent_id": "R1", "title": "add()", "role_hint": "wizard"}));
            (t.role == "planning" && t.turn == 0).then_some(create)
        },
        code: 2,
        cause: "has role \"wizard\", which no agent of this project takes",
        permanent: false,
    },
    Case {
        config: "",
        name: "depends-on-its-ancestor",
        play: |t| {
            let create = call(
                "create_requirement",
                json!({"parent_id": "R1", "title": "add()", "role_hint": "backend", "depends_on": ["R1"]}),
            );
            (t.role == "planning" && t.turn == 0).then_some(create)
        },
        code: 2,
        cause: "depends on R1, which contains it",
        permanent: false,
    },
    Case {
        config: "",
        name: "never-finishes",
        play: |t| (t.role == "backend").then(|| call("list_dir", json!({"path": "."}))),
        code: 2,
        cause: "no finish after 4 turns",
        permanent: false,
    },
    Case {
        config: "",
        name: "http-401",
        play: |_| Some(Reply::Status(401, "Incorrect API key provided: sk-wrong".into())),
        code: 2,
        cause: "the API key was rejected",
        permanent: true,
    },
    Case {
        config: "",
        name: "http-404-model",
        play: |_| Some(Reply::Status(404, "The model `http-404-model` does not exist".into())),
        code: 2,
        cause: "unknown model",
        permanent: true,
    },
    Case {
        config: "",
        name: "http-400-context-overflow",
        play: |_| {
            Some(Reply::Status(
                400,
                "This model's maximum context length is 8192 tokens. However, your messages resulted in 9120 tokens."
                    .into(),
            ))
        },
        code: 2,
        cause: "maximum context length is 8192 tokens",
        permanent: true,
    },
    Case {
        config: "",
        name: "http-429",
        play: |_| Some(Reply::Status(429, "Rate limit reached for requests".into())),
        code: 2,
        cause: "rate limited",
        permanent: false,
    },
    Case {
        config: "",
        name: "http-500",
        play: |_| Some(Reply::Status(500, "The server had an error while processing your request".into())),
        code: 2,
        cause: "server error 500",
        permanent: false,
    },
    Case {
        config: "",
        name: "stalled-server",
        play: |_| Some(Reply::Stall),
        code: 2,
        cause: "no answer within 2 s",
        permanent: false,
    },
];

/// A project folder whose model is `model` on the local server.
pub(crate) fn model_workspace(root: &Path, wire: Wire, base_url: &str, model: &str, extra_loop: &str) {
    std::fs::create_dir_all(root.join(".maestro")).unwrap();
    std::fs::create_dir_all(root.join("tests")).unwrap();
    std::fs::write(root.join(".gitignore"), "__pycache__/\n").unwrap();
    std::fs::write(root.join("tests/test_calc.py"), CALC_TEST).unwrap();
    let config = format!(
        "llm:\n  provider: {}\n  model: {model}\n  base_url: {base_url}\n  api_key_env: {KEY_ENV}\n  timeout_seconds: 2\n  retries: 1\nloop:\n  retries: 1\n  max_turns: 4\n  test_command: [python3, -m, unittest, discover, -s, tests]\n{extra_loop}",
        wire.provider()
    );
    std::fs::write(root.join(".maestro/config.yaml"), config).unwrap();
}

/// The project's loops (as JSON), newest last.
pub(crate) fn loops_of(daemon: &Daemon, project: &str) -> Vec<Value> {
    let list = daemon.ctl(&["-p", project, "-o", "json", "loop", "list"]).json();
    list.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_misbehaving_model_ends_in_succeeded() {
    let daemon = Arc::new(Daemon::start_with_env(&[], &[(KEY_ENV, "sk-e2e-local-key")]).unwrap());
    let server = ModelServer::start(Arc::new(|t: &Turn| {
        let case = CASES.iter().find(|c| c.name == t.scenario).expect("a known scenario");
        (case.play)(t).unwrap_or_else(|| behaves(t))
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for case in CASES {
        for wire in [Wire::OpenAi, Wire::Anthropic] {
            let name = format!("{}-{}", case.name, wire.provider());
            let ws = dir.path().join(&name);
            model_workspace(&ws, wire, &server.base_url(wire), case.name, case.config);
            let daemon = daemon.clone();
            runs.push(tokio::task::spawn_blocking(move || {
                let out = run_ctl_in(&daemon.url(), &ws, &["run", "Write add(a, b) in src/api/calc.py"]);
                (case, name, out)
            }));
        }
    }
    let mut problems = Vec::new();
    for run in runs {
        let (case, project, out) = run.await.unwrap();
        let loops = loops_of(&daemon, &project);
        let Some(l) = loops.last() else {
            problems.push(format!("{project}: no loop: {}", out.stderr));
            continue;
        };
        let reason = l["reason"].as_str().unwrap_or_default();
        let state = l["state"].as_str().unwrap_or_default();
        let said = format!("{}\n{}", out.stdout, out.stderr);
        if out.code != case.code {
            problems.push(format!("{project}: exit {} (expected {}), {state}: {reason}", out.code, case.code));
            continue;
        }
        if case.code == 0 {
            let last = out.stdout.lines().last().unwrap_or_default();
            if !last.contains("succeeded: 1/1 requirements done, 1 test passed, review approved") {
                problems.push(format!("{project}: the last line does not say what was verified: {last}"));
            }
            continue;
        }
        if state == "LOOP_STATE_SUCCEEDED" {
            problems.push(format!("{project}: SUCCEEDED"));
        }
        if !reason.contains(case.cause) || reason.contains('\n') {
            problems.push(format!("{project}: the reason does not name {:?} on one line: {reason:?}", case.cause));
        }
        if !said.contains(case.cause) {
            problems.push(format!("{project}: maestroctl did not say {:?}:\n{said}", case.cause));
        }
        let retries = l["retries"].as_u64().unwrap_or_default();
        if case.permanent && (retries != 0 || !said.contains("escalated at once")) {
            problems.push(format!("{project}: a permanent error spent {retries} retries before escalating"));
        }
        // Work that was not verified is never shown as DONE.
        let reqs = daemon.ctl(&["-p", &project, "-o", "json", "req", "list"]).json();
        for r in reqs.as_array().unwrap() {
            if r["status"] == "REQUIREMENT_STATUS_DONE" {
                problems.push(format!("{project}: {} is DONE in an escalated loop", r["id"]));
            }
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}\n{}", problems.len(), problems.join("\n"), daemon.log());
    // Both wire formats were exercised for every role the cases reach.
    let turns = server.turns();
    for role in ["planning", "backend", "review"] {
        assert!(turns.iter().any(|t| t.role == role), "no {role} turn reached the server");
    }
}
