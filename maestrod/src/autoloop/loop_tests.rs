//! The demo loop in process: the real store, harness, sandbox, git and the
//! scripted model.

use std::sync::Arc;
use std::time::Duration;

use super::manager::{LoopManager, StartRequest};
use crate::harness::sandbox::LocalSandbox;
use crate::ssot::Ssot;
use crate::ssot::loops::{LoopRecord, LoopState, Phase};
use crate::ssot::sled_store::{SledOptions, SledStore};

async fn until_final(manager: &LoopManager, id: &str) -> LoopRecord {
    for _ in 0..1200 {
        let record = manager.get(id).await.unwrap();
        if record.state.is_final() || record.state == LoopState::Escalated {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("loop {id} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fails_once_rolls_back_and_succeeds() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(data.path(), SledOptions::default()).unwrap());
    let ssot = Arc::new(Ssot::new(store, Default::default()));
    let manager = LoopManager::new(ssot.clone(), Arc::new(LocalSandbox::probe()));
    let dir = work.path().join("maestro-demo");
    let request = StartRequest {
        project: String::new(),
        task: super::demo::DEFAULT_TASK.into(),
        demo: true,
        workspace: dir.display().to_string(),
        ..Default::default()
    };
    let started = manager.start(request).await.unwrap();
    let done = until_final(&manager, &started.id).await;
    let (events, _) = ssot.loop_events(&started.id, 0).await.unwrap();
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            format!("{} {} {} {}", e.seq, e.kind.as_str(), e.phase.map(|p| p.as_str()).unwrap_or_default(), e.message)
        })
        .collect();
    assert_eq!(done.state, LoopState::Succeeded, "{done:?}\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("test_result VALID") && l.contains("failed")), "{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains(" rollback ")), "{}", lines.join("\n"));
    assert_eq!((done.done, done.total), (4, 4));
    let last = events.last().unwrap();
    assert_eq!(
        last.message, "succeeded: 4/4 requirements done, 6 tests passed, review approved (5 epochs)",
        "the last line says what was verified"
    );
    for file in ["src/api/todos.py", "src/ui/cli.py", "tests/test_todos.py"] {
        assert!(dir.join(file).exists(), "{file}");
    }
    let repo = git2::Repository::open(&dir).unwrap();
    let tags = repo.tag_names(Some("maestro/*")).unwrap();
    assert_eq!(tags.len(), 4, "{:?}", tags.iter().collect::<Vec<_>>());
    // The work is on its branch, one commit per committed epoch, the user's branch untouched.
    assert_eq!(
        (done.result_branch.as_str(), done.result_take.as_str()),
        ("maestro/loop-1", "git reset maestro/loop-1")
    );
    let tip = repo.revparse_single("maestro/loop-1").unwrap().peel_to_commit().unwrap();
    for file in ["src/api/todos.py", "src/ui/cli.py", "tests/test_todos.py"] {
        assert!(tip.tree().unwrap().get_path(std::path::Path::new(file)).is_ok(), "{file} is on the branch");
    }
    let mut walk = repo.revwalk().unwrap();
    walk.push(tip.id()).unwrap();
    assert_eq!(walk.count(), 4, "one commit per committed epoch");
    assert!(repo.head().is_err(), "the user's branch still has no commit");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_loop_task_fails_that_loop_and_frees_its_project() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(data.path(), SledOptions::default()).unwrap());
    let ssot = Arc::new(Ssot::new(store, Default::default()));
    let manager = LoopManager::new(ssot.clone(), Arc::new(LocalSandbox::probe()));
    *super::runner::PANIC_IN.lock().unwrap() = Some(("panics".into(), Phase::Exec));
    let dir = work.path().join("panics");
    let request = StartRequest {
        project: String::new(),
        task: super::demo::DEFAULT_TASK.into(),
        demo: true,
        workspace: dir.display().to_string(),
        ..Default::default()
    };
    let started = manager.start(request).await.unwrap();
    let failed = until_final(&manager, &started.id).await;
    *super::runner::PANIC_IN.lock().unwrap() = None;
    assert_eq!(failed.state, LoopState::Failed, "{failed:?}");
    assert!(failed.reason.contains("panicked: test hook: panic in EXEC"), "{}", failed.reason);
    assert_eq!(failed.lease, 0, "the lease is revoked");
    let (events, _) = ssot.loop_events(&started.id, 0).await.unwrap();
    assert!(events.last().unwrap().message.contains("panicked"), "the failure is the last event");
    // Its claims are released, and the project takes the next run at once.
    assert!(ssot.list_locks("panics", 100, "").await.unwrap().items.is_empty());
    let next = StartRequest {
        project: "panics".into(),
        task: "Another task".into(),
        demo: false,
        workspace: String::new(),
        ..Default::default()
    };
    let second = manager.start(next).await.unwrap();
    assert!(second.reason.is_empty(), "not queued behind the dead loop: {}", second.reason);
    let ended = until_final(&manager, &second.id).await;
    assert!(ended.epoch >= 1, "it ran: {ended:?}");
    manager.shutdown().await;
}

const PLANTS_A_HOOK: &str = r#"
roles:
  planning:
    - tool_calls: [{name: create_requirement, arguments: {parent_id: R1, title: "Tests", role_hint: test}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: R2}}]
  test@R2:
    - tool_calls:
        - name: write_file
          arguments: {path: tests/test_x.py, content: "open('.git/hooks/pre-commit', 'w').write('#!/bin/sh\\nid\\n')\n"}
    - tool_calls: [{name: run_command, arguments: {argv: [python3, -m, unittest, discover, -s, tests]}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: done}}]
"#;

/// Without a sandbox that makes .git read-only (a weaker machine), the loop's
/// guard still finds a planted hook after EXEC, removes it and escalates at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_planted_by_a_command_is_removed_and_the_loop_escalates_at_once() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ws = work.path().join("evil");
    std::fs::create_dir_all(ws.join(".maestro")).unwrap();
    std::fs::create_dir_all(ws.join("tests")).unwrap();
    std::fs::write(ws.join(".maestro/script.yaml"), PLANTS_A_HOOK).unwrap();
    std::fs::write(
        ws.join(".maestro/config.yaml"),
        "llm:\n  provider: scripted\n  script: .maestro/script.yaml\nloop:\n  retries: 2\n",
    )
    .unwrap();
    crate::harness::rollback::GitWorkspace::open_or_init(&ws).unwrap();
    let store = Arc::new(SledStore::open(data.path(), SledOptions::default()).unwrap());
    let ssot = Arc::new(Ssot::new(store, Default::default()));
    ssot.create_project("evil", "", &ws.display().to_string()).await.unwrap();
    let manager = LoopManager::new(ssot.clone(), Arc::new(LocalSandbox::unconfined()));
    let request = StartRequest {
        project: "evil".into(),
        task: "Write tests".into(),
        demo: false,
        workspace: String::new(),
        ..Default::default()
    };
    let started = manager.start(request).await.unwrap();
    let end = until_final(&manager, &started.id).await;
    assert_eq!((end.state, end.retries), (LoopState::Escalated, 0), "{end:?}");
    assert!(end.reason.contains("git/hooks/pre-commit") && end.reason.contains("a command changed"), "{}", end.reason);
    assert!(!ws.join(".git/hooks/pre-commit").exists(), "the planted hook is gone");
    manager.shutdown().await;
}

const REPLANS: &str = r#"
roles:
  planning@R1#1:
    - tool_calls: [{name: create_requirement, arguments: {parent_id: R1, title: "sub()", role_hint: backend}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: R2}}]
  planning@R1#2:
    - tool_calls: [{name: remove_requirement, arguments: {id: R2, reason: "the task asks for add(), not sub()"}}]
    - tool_calls: [{name: create_requirement, arguments: {parent_id: R1, title: "add()", role_hint: backend}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: R3 replaces R2}}]
  backend@R2:
    - tool_calls: [{name: write_file, arguments: {path: src/api/calc.py, content: "def sub(a, b):\n    return a - b\n"}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: sub}}]
  backend@R3:
    - tool_calls: [{name: write_file, arguments: {path: src/api/calc.py, content: "def add(a, b):\n    return a + b\n"}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: add}}]
  review:
    - tool_calls: [{name: review_verdict, arguments: {verdict: approve}}]
    - tool_calls: [{name: finish, arguments: {outcome: done, summary: approved}}]
"#;

/// A replan replaces the plan that failed instead of adding to it: the planner
/// removes its wrong requirement and the loop succeeds with the new one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replan_replaces_the_failed_plan_instead_of_adding_to_it() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ws = work.path().join("calc");
    std::fs::create_dir_all(ws.join(".maestro")).unwrap();
    std::fs::create_dir_all(ws.join("tests")).unwrap();
    std::fs::write(ws.join(".gitignore"), "__pycache__/\n").unwrap();
    std::fs::write(
        ws.join("tests/test_calc.py"),
        "import os, sys, unittest\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'src'))\n\
         from api.calc import add\n\nclass AddTest(unittest.TestCase):\n    def test_add(self):\n        \
         self.assertEqual(add(2, 2), 4)\n",
    )
    .unwrap();
    std::fs::write(ws.join(".maestro/script.yaml"), REPLANS).unwrap();
    std::fs::write(
        ws.join(".maestro/config.yaml"),
        "llm:\n  provider: scripted\n  script: .maestro/script.yaml\nloop:\n  retries: 2\n  \
         test_command: [python3, -m, unittest, discover, -s, tests]\n",
    )
    .unwrap();
    crate::harness::rollback::GitWorkspace::open_or_init(&ws).unwrap();
    let store = Arc::new(SledStore::open(data.path(), SledOptions::default()).unwrap());
    let ssot = Arc::new(Ssot::new(store, Default::default()));
    ssot.create_project("calc", "", &ws.display().to_string()).await.unwrap();
    let manager = LoopManager::new(ssot.clone(), Arc::new(LocalSandbox::probe()));
    let request = StartRequest { project: "calc".into(), task: "Write add(a, b)".into(), ..Default::default() };
    let started = manager.start(request).await.unwrap();
    let end = until_final(&manager, &started.id).await;
    assert_eq!((end.state, end.retries), (LoopState::Succeeded, 1), "{end:?}");
    let tree: Vec<(String, String)> = ssot
        .all_requirements("calc")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.value.id, r.value.status.as_str().to_string()))
        .collect();
    assert_eq!(tree, [("R1".into(), "DONE".into()), ("R3".into(), "DONE".into())], "R2 was replaced, not kept");
    assert!(std::fs::read_to_string(ws.join("src/api/calc.py")).unwrap().contains("def add"));
    manager.shutdown().await;
}

/// A project's run left behind (a release that never happened, here one naming
/// an ended loop on another daemon's lease) does not hold the project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_left_behind_does_not_hold_the_project() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(data.path(), SledOptions::default()).unwrap());
    let ssot = Arc::new(Ssot::new(store, Default::default()));
    let manager = LoopManager::new(ssot.clone(), Arc::new(LocalSandbox::probe()));
    let dir = work.path().join("left");
    let request = StartRequest {
        task: super::demo::DEFAULT_TASK.into(),
        demo: true,
        workspace: dir.display().to_string(),
        ..Default::default()
    };
    let first = manager.start(request).await.unwrap();
    assert_eq!(until_final(&manager, &first.id).await.state, LoopState::Succeeded);
    let ghost = ssot.grant_lease(3600).await.unwrap().id;
    let owner = crate::ssot::owners::Owner {
        loop_id: first.id.clone(),
        daemon: "ghost".into(),
        address: String::new(),
        lease: ghost,
        since_ms: 0,
    };
    let claim = ssot.claim_loop(&first.project, owner).await.unwrap();
    assert!(matches!(claim, crate::ssot::owners::Claim::Owned(_)), "{claim:?}");

    let request = StartRequest { project: first.project.clone(), task: "Again".into(), ..Default::default() };
    let second = manager.start(request).await.unwrap();
    assert!(second.reason.is_empty(), "not queued behind the ended loop: {}", second.reason);
    let runner = ssot.project_runner(&first.project).await.unwrap().expect("the project is run");
    assert_eq!(runner.value.loop_id, second.id, "the new loop took the project");
    until_final(&manager, &second.id).await;
    manager.shutdown().await;
}
