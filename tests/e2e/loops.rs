//! The AutoLoop through the real binaries: the demo, escalation and retry
//! with guidance, kill -9 at ten points of a run, two followers, cancel.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use maestro_shared::v1::{self, loop_service_client::LoopServiceClient};
use maestro_tests::{Daemon, run_ctl_in};

/// Every file of a workspace but git's and Python's caches and the
/// configuration (it names the project): path → hash of the content.
pub(crate) fn files(root: &Path) -> BTreeMap<String, u64> {
    use std::hash::{Hash, Hasher};
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == ".git" || rel.ends_with("__pycache__") || rel == ".maestro/config.yaml" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&path).unwrap().hash(&mut hasher);
                out.insert(rel, hasher.finish());
            }
        }
    }
    out
}

fn tags(root: &Path) -> Vec<String> {
    let out =
        std::process::Command::new("git").arg("-C").arg(root).args(["tag", "--list", "maestro/*"]).output().unwrap();
    let mut tags: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().map(|t| t.rsplit('/').next().unwrap().to_string()).collect();
    tags.sort();
    tags
}

pub(crate) async fn get(daemon: &Daemon, id: &str) -> v1::Loop {
    let mut client = LoopServiceClient::new(daemon.channel().await.unwrap());
    client.get_loop(v1::GetLoopRequest { loop_id: id.into() }).await.unwrap().into_inner()
}

pub(crate) async fn wait_end(daemon: &Daemon, id: &str) -> v1::Loop {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = get(daemon, id).await;
        if matches!(
            l.state(),
            v1::LoopState::Succeeded
                | v1::LoopState::Failed
                | v1::LoopState::Aborted
                | v1::LoopState::Cancelled
                | v1::LoopState::Escalated
        ) {
            return l;
        }
        assert!(Instant::now() < deadline, "loop {id} did not end: {l:?}\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to a minute) until an agent has written `path`.
pub(crate) async fn appears(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "the agent never wrote {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events as JSON lines, with what differs between runs (times, hashes, loop ids) taken out.
fn normalized(jsonl: &str) -> Vec<String> {
    jsonl
        .lines()
        .map(|line| {
            let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = event.as_object_mut().unwrap();
            object.remove("timeMs");
            object.remove("loopId");
            let text = serde_json::to_string(&event).unwrap();
            let mut out = String::new();
            for word in text.split_inclusive([' ', '/', '(', ')']) {
                let core = word.trim_end_matches([' ', '/', '(', ')']);
                if core.len() >= 12 && core.chars().all(|c| c.is_ascii_hexdigit()) {
                    out.push_str(&word.replace(core, "<commit>"));
                } else if core.ends_with('s') && core.len() > 1 && core[..core.len() - 1].parse::<f64>().is_ok() {
                    // A duration a test runner printed: a time, not behaviour.
                    out.push_str(&word.replace(core, "<duration>"));
                } else if core.starts_with("loop-") {
                    out.push_str(&word.replace(core, "<loop>"));
                } else {
                    out.push_str(word);
                }
            }
            out
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_succeeds_deterministically_and_its_tests_pass() {
    let daemon = Daemon::start().unwrap();
    let here = tempfile::tempdir().unwrap();
    let first = run_ctl_in(&daemon.url(), here.path(), &["-o", "json", "run", "--demo"]);
    assert_eq!(first.code, 0, "{}{}\n{}", first.stdout, first.stderr, daemon.log());
    let demo = here.path().join("maestro-demo");
    let events = normalized(&first.stdout);
    let kinds = |kind: &str| events.iter().filter(|e| e.contains(&format!("\"kind\":\"{kind}\""))).count();
    assert!(kinds("rollback") == 1 && kinds("failed") == 1, "one failed attempt, rolled back:\n{}", events.join("\n"));
    assert!(events.last().unwrap().contains("LOOP_STATE_SUCCEEDED"), "{}", events.last().unwrap());
    assert!(
        events.last().unwrap().contains("succeeded: 4/4 requirements done, 6 tests passed, review approved (5 epochs)"),
        "the last line says what was verified: {}",
        events.last().unwrap()
    );
    // The generated project: real code, a contract, tests that pass when run by hand.
    let tree = files(&demo);
    for file in ["src/api/todos.py", "src/ui/cli.py", "tests/test_todos.py", ".maestro/demo-script.yaml"] {
        assert!(tree.contains_key(file), "{file} in {:?}", tree.keys());
    }
    let tests = std::process::Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(&demo)
        .output()
        .unwrap();
    assert!(tests.status.success(), "{}", String::from_utf8_lossy(&tests.stderr));
    assert!(String::from_utf8_lossy(&tests.stderr).contains("Ran 6 tests"));
    assert_eq!(tags(&demo), ["1", "2", "4", "5"], "one tag per committed epoch");
    let contract = daemon.ctl(&["-p", "maestro-demo", "-o", "json", "contract", "show", "todos-api"]).json();
    assert_eq!(contract["status"], "CONTRACT_STATUS_ACCEPTED", "{contract}");

    // A second run elsewhere: same requirements, files and events.
    let second = run_ctl_in(&daemon.url(), here.path(), &["-o", "json", "demo", "--workspace", "again"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let again = normalized(&second.stdout);
    let differ = events.iter().zip(&again).position(|(a, b)| a != b);
    assert!(
        differ.is_none() && events.len() == again.len(),
        "first difference: {:?}",
        differ.map(|i| (&events[i], &again[i]))
    );
    assert_eq!(files(&here.path().join("again")), tree);
    let reqs = |project: &str| -> Vec<(String, String)> {
        let list = daemon.ctl(&["-p", project, "-o", "json", "req", "list"]).json();
        list.as_array().unwrap().iter().map(|r| (r["id"].to_string(), r["title"].to_string())).collect()
    };
    assert_eq!(reqs("maestro-demo"), reqs("again"));

    // An existing non-empty folder is refused in one line, exit 1.
    let refused = run_ctl_in(&daemon.url(), here.path(), &["run", "--demo"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("exists and is not empty") && refused.stderr.lines().count() == 1,
        "{}",
        refused.stderr
    );
}

const ALWAYS_FAILS: &str = r#"
roles:
  planning:
    - tool_calls:
        - {name: create_requirement, arguments: {parent_id: R1, title: "add()", role_hint: backend}}
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "R2"}}]
  backend@R2:
    - tool_calls:
        - {name: write_file, arguments: {path: src/api/calc.py, content: "def add(a, b):\n    return a - b\n"}}
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "add() written"}}]
  backend@R2#3:
    - tool_calls:
        - {name: write_file, arguments: {path: src/api/calc.py, content: "def add(a, b):\n    return a + b\n"}}
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "add() fixed"}}]
  review:
    - tool_calls: [{name: review_verdict, arguments: {verdict: approve}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "fine"}}]
"#;

const CALC_TEST: &str = "import os, sys, unittest\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'src'))\nfrom api.calc import add\n\nclass AddTest(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 2), 4)\n";

/// A project folder whose model plays `script`.
pub(crate) fn scripted_workspace(root: &Path, script: &str, retries: u32) {
    std::fs::create_dir_all(root.join(".maestro")).unwrap();
    std::fs::create_dir_all(root.join("tests")).unwrap();
    std::fs::write(root.join(".gitignore"), "__pycache__/\n").unwrap();
    std::fs::write(root.join(".maestro/script.yaml"), script).unwrap();
    std::fs::write(
        root.join(".maestro/config.yaml"),
        format!(
            "llm:\n  provider: scripted\n  script: .maestro/script.yaml\nloop:\n  retries: {retries}\n  test_command: [python3, -m, unittest, discover, -s, tests]\n"
        ),
    )
    .unwrap();
}

/// A project whose model keeps writing a calculator that fails its test.
fn failing_calc_workspace(root: &Path, retries: u32) {
    scripted_workspace(root, ALWAYS_FAILS, retries);
    std::fs::write(root.join("tests/test_calc.py"), CALC_TEST).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_that_keeps_failing_escalates_and_guidance_lets_it_succeed() {
    let daemon = Daemon::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("calc");
    failing_calc_workspace(&ws, 1);
    let init = run_ctl_in(&daemon.url(), &ws, &["init"]);
    assert!(init.ok().contains("registered project calc"), "{}", init.stdout);
    assert!(run_ctl_in(&daemon.url(), &ws, &["init"]).ok().contains("nothing to do"), "init is harmless twice");

    let run = run_ctl_in(&daemon.url(), &ws, &["run", "Write add()"]);
    assert_eq!(run.code, 2, "escalated: {}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("needs you") && run.stderr.contains("retry loop-1"), "{}", run.stderr);
    let l = get(&daemon, "loop-1").await;
    assert_eq!((l.state(), l.retries), (v1::LoopState::Escalated, 1));
    assert!(l.reason.contains("tests failed"), "{}", l.reason);
    // Approve/abort only apply to escalated loops; a wrong id is NOT_FOUND. One line each, exit 1.
    let missing = daemon.ctl(&["approve", "loop-99"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("NOT_FOUND"), "{}", missing.stderr);

    let retried = daemon.ctl(&["retry", "loop-1", "--guidance", "add must add, not subtract"]);
    assert!(retried.ok().contains("loop-1"), "{}", retried.stdout);
    let end = wait_end(&daemon, "loop-1").await;
    assert_eq!(end.state(), v1::LoopState::Succeeded, "{end:?}");
    assert_eq!(std::fs::read_to_string(ws.join("src/api/calc.py")).unwrap(), "def add(a, b):\n    return a + b\n");
    let attach = daemon.ctl(&["-o", "json", "attach", "loop-1"]);
    assert_eq!(attach.code, 0);
    assert!(attach.stdout.contains("add must add, not subtract"), "the guidance is an event");
    let log = daemon.ctl(&["-p", "calc", "-o", "json", "log", "list"]).ok().to_string();
    assert!(log.contains("add must add, not subtract"), "the guidance is in the SSOT log");
    let wrong = daemon.ctl(&["abort", "loop-1"]);
    assert_eq!(wrong.code, 1);
    assert!(wrong.stderr.contains("FAILED_PRECONDITION"), "{}", wrong.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_ten_points_and_the_loop_still_ends_with_the_same_workspace() {
    let mut daemon = Daemon::start().unwrap();
    let here = tempfile::tempdir().unwrap();
    let reference = run_ctl_in(&daemon.url(), here.path(), &["demo", "--workspace", "reference"]);
    assert_eq!(reference.code, 0, "{}", reference.stderr);
    let expected = files(&here.path().join("reference"));
    let total = get(&daemon, "loop-1").await.last_seq;
    for (i, point) in [3u64, 12, 22, 33, 45, 57, 66, 78, 90, 104].into_iter().enumerate() {
        assert!(point < total);
        let name = format!("run{i}");
        let started = run_ctl_in(&daemon.url(), here.path(), &["demo", "--workspace", &name, "--detach"]);
        let id = started.ok().trim().to_string();
        // Kill as soon as the loop has written `point` events.
        let mut client = LoopServiceClient::new(daemon.channel().await.unwrap());
        loop {
            let l = client.get_loop(v1::GetLoopRequest { loop_id: id.clone() }).await.unwrap().into_inner();
            if l.last_seq >= point {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        daemon.restart().unwrap();
        let end = wait_end(&daemon, &id).await;
        if end.state() != v1::LoopState::Succeeded {
            let events = daemon.ctl(&["attach", &id]);
            panic!("killed at event {point}: {end:?}\n{}", events.stdout);
        }
        let ws = here.path().join(&name);
        assert_eq!(files(&ws), expected, "killed at event {point}");
        assert_eq!(tags(&ws), ["1", "2", "4", "5"], "killed at event {point}");
        let events = daemon.ctl(&["-o", "json", "attach", &id]).ok().to_string();
        assert!(events.contains("\"kind\":\"restart\""), "the restart is an event (killed at {point})");
    }
}

pub(crate) const SLOW: &str = r#"
roles:
  planning@R1#1:
    - tool_calls:
        - {name: create_requirement, arguments: {parent_id: R1, title: "Slow tests", role_hint: test}}
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "R2"}}]
  test@R2:
    - tool_calls:
        - {name: write_file, arguments: {path: tests/test_slow.py, content: "import time, unittest\n\nclass Slow(unittest.TestCase):\n    def test_slow(self):\n        time.sleep(60)\n"}}
    - tool_calls: [{name: run_command, arguments: {argv: [python3, -m, unittest, discover, -s, tests]}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "ran"}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_followers_see_the_same_events_and_cancel_mid_exec_restores_the_last_commit() {
    let daemon = Daemon::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("slow");
    scripted_workspace(&ws, SLOW, 0);
    std::fs::write(ws.join("README"), "kept\n").unwrap();
    let started = run_ctl_in(&daemon.url(), &ws, &["run", "--detach", "Slow things"]);
    let id = started.ok().trim().to_string();
    let server = daemon.url();
    let follower = |server: String, id: String| {
        std::thread::spawn(move || maestro_tests::run_ctl(&server, &["-o", "json", "attach", &id]))
    };
    let (a, b) = (follower(server.clone(), id.clone()), follower(server.clone(), id.clone()));
    // A raw gRPC follower too: its stream must end by itself after the final event.
    let mut client = LoopServiceClient::new(daemon.channel().await.unwrap());
    let mut raw = client
        .stream_loop_events(v1::StreamLoopEventsRequest { loop_id: id.clone(), from_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let raw = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(event) = futures::StreamExt::next(&mut raw).await {
            seqs.push(event.unwrap().seq);
        }
        seqs
    });
    // Wait until the test agent is inside its 60-second command.
    appears(&ws.join("tests/test_slow.py")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let cancelled = daemon.ctl(&["-o", "json", "cancel", &id]).json();
    assert!(asked.elapsed() < Duration::from_secs(15), "cancel is prompt: {:?}", asked.elapsed());
    assert_eq!(cancelled["state"], "LOOP_STATE_CANCELLED", "{cancelled}");
    assert!(!ws.join("tests/test_slow.py").exists(), "EXEC's work is rolled back");
    assert_eq!(std::fs::read_to_string(ws.join("README")).unwrap(), "kept\n", "the last commit is intact");
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(a.code, 3, "cancelled loops exit 3: {}", a.stderr);
    assert_eq!(a.stdout, b.stdout, "both followers saw the same events");
    let seqs = tokio::time::timeout(Duration::from_secs(10), raw).await.expect("the stream ends").unwrap();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(seqs.len(), a.stdout.lines().count());
    assert!(a.stdout.lines().count() > 10);
}

/// Sends Ctrl-C to a following `maestroctl` and collects how it ended.
fn interrupt(child: std::process::Child) -> maestro_tests::CtlOutput {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let output = child.wait_with_output().unwrap();
    maestro_tests::CtlOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Starts a following `maestroctl` and waits until it has printed `seen` event lines.
fn follower_at(command: &mut std::process::Command, seen: usize) -> std::process::Child {
    use std::io::BufRead;
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..seen {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "maestroctl stopped printing events");
    }
    // Keep draining so that the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_detaches_from_a_loop_and_with_cancel_on_exit_cancels_it() {
    let daemon = Daemon::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("slow");
    scripted_workspace(&ws, SLOW, 0);
    let server = daemon.url();
    let run = follower_at(&mut maestro_tests::ctl_command(&server, &ws, &["run", "Slow things"]), 3);
    appears(&ws.join("tests/test_slow.py")).await;
    let detached = interrupt(run);
    assert_eq!(detached.code, 130, "like other tools stopped by Ctrl-C: {}", detached.stderr);
    assert!(detached.stderr.contains("detached; loop-1 keeps running"), "{}", detached.stderr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&daemon, "loop-1").await.state(), v1::LoopState::Running, "the loop goes on without its client");

    let attach =
        follower_at(&mut maestro_tests::ctl_command(&server, &ws, &["attach", "loop-1", "--cancel-on-exit"]), 3);
    let asked = Instant::now();
    let cancelled = interrupt(attach);
    assert_eq!(cancelled.code, 3, "a cancelled loop exits 3: {}", cancelled.stderr);
    assert!(cancelled.stderr.contains("cancelling loop-1"), "{}", cancelled.stderr);
    assert!(asked.elapsed() < Duration::from_secs(15), "cancel is prompt: {:?}", asked.elapsed());
    assert_eq!(get(&daemon, "loop-1").await.state(), v1::LoopState::Cancelled);
    assert!(!ws.join("tests/test_slow.py").exists(), "EXEC's work is rolled back");
}

const PAUSABLE: &str = r#"
roles:
  planning:
    - tool_calls:
        - {name: create_requirement, arguments: {parent_id: R1, title: "Tests that take a while", role_hint: test}}
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "R2"}}]
  planning@R3:
    - tool_calls:
        - {name: create_requirement, arguments: {parent_id: R3, title: "More tests", role_hint: test}}
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "R4"}}]
  test@R4:
    - tool_calls: [{name: run_command, arguments: {argv: [python3, -m, unittest, discover, -s, tests]}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "ran", no_change_reason: "the test R2 wrote covers it"}}]
  test@R2:
    - tool_calls:
        - {name: write_file, arguments: {path: tests/test_wait.py, content: "import time, unittest\n\nclass Wait(unittest.TestCase):\n    def test_wait(self):\n        time.sleep(2)\n"}}
    - tool_calls: [{name: run_command, arguments: {argv: [python3, -m, unittest, discover, -s, tests]}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "ran"}}]
  review:
    - tool_calls: [{name: review_verdict, arguments: {verdict: approve}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: "fine"}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_loop_at_the_next_phase_and_resume_lets_it_finish() {
    let daemon = Daemon::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("pausable");
    scripted_workspace(&ws, PAUSABLE, 0);
    let id = run_ctl_in(&daemon.url(), &ws, &["run", "--detach", "Wait a little"]).ok().trim().to_string();
    appears(&ws.join("tests/test_wait.py")).await;
    daemon.ctl(&["pause", &id]).ok();
    let deadline = Instant::now() + Duration::from_secs(60);
    let paused = loop {
        let l = get(&daemon, &id).await;
        if l.state() == v1::LoopState::Paused {
            break l;
        }
        assert!(Instant::now() < deadline, "the loop never paused: {l:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A second run in the same project waits its turn.
    let queued = run_ctl_in(&daemon.url(), &ws, &["run", "--detach", "Then this"]).ok().trim().to_string();
    assert_eq!(get(&daemon, &queued).await.state(), v1::LoopState::Queued);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = get(&daemon, &id).await;
    assert_eq!(
        (still.state(), still.last_seq, still.phase.as_str()),
        (v1::LoopState::Paused, paused.last_seq, paused.phase.as_str())
    );
    let resumed = daemon.ctl(&["-o", "json", "resume", &id]).json();
    assert_eq!(resumed["state"], "LOOP_STATE_RUNNING", "{resumed}");
    assert_eq!(wait_end(&daemon, &id).await.state(), v1::LoopState::Succeeded);
    // Then the queued one runs (its planner adds a requirement the test agent handles).
    let next = wait_end(&daemon, &queued).await;
    assert_eq!(next.state(), v1::LoopState::Succeeded, "{next:?}");
    let wrong = daemon.ctl(&["pause", &id]);
    assert_eq!(wrong.code, 1);
    assert!(wrong.stderr.contains("has ended"), "{}", wrong.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_accepts_an_escalated_epoch_and_abort_rolls_it_back() {
    let daemon = Daemon::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, decision) in [("approved", "approve"), ("aborted", "abort")] {
        let ws = dir.path().join(name);
        failing_calc_workspace(&ws, 0);
        let run = run_ctl_in(&daemon.url(), &ws, &["-o", "json", "run", "Write add()"]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        let id: serde_json::Value = serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
        let id = id["loopId"].as_str().unwrap().to_string();
        assert!(ws.join("src/api/calc.py").exists(), "an escalated loop keeps the failed work for inspection");
        let decided = daemon.ctl(&["-o", "json", decision, &id]).json();
        let end = wait_end(&daemon, &id).await;
        if decision == "approve" {
            assert_eq!(end.state(), v1::LoopState::Succeeded, "{decided} {end:?}");
            assert!(ws.join("src/api/calc.py").exists());
            assert_eq!(tags(&ws), ["1"], "the approved epoch is committed");
        } else {
            assert_eq!(decided["state"], "LOOP_STATE_ABORTED", "{decided}");
            assert!(!ws.join("src/api/calc.py").exists(), "abort rolls back to the last commit");
            assert!(ws.join("tests/test_calc.py").exists());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_that_holds_the_daemons_data_is_refused() {
    let daemon = Daemon::start().unwrap();
    // The daemon's data dir lies inside this folder: agents' commands would see every project's store.
    let ws = daemon.data_dir().parent().unwrap().to_path_buf();
    scripted_workspace(&ws, SLOW, 0);
    let run = run_ctl_in(&daemon.url(), &ws, &["run", "Anything"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("overlap") && run.stderr.lines().count() == 1, "{}", run.stderr);
}
