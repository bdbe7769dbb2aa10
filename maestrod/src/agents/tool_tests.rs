//! The tools against a real workspace, harness and store: line ranges,
//! exact edits, search and tree listings with their caps, compact schemas,
//! and the SSOT rights of every role (every role × every SSOT tool).

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::llm::ToolCall;
use super::tools::{self, MAX_RESULT_BYTES, ToolResult, Tools, cap};
use crate::harness::budget::{Budget, BudgetConfig};
use crate::harness::executor::{ActionContext, Harness};
use crate::harness::gate::Gate;
use crate::harness::sandbox::{Limits, LocalSandbox};
use crate::ssot::Ssot;
use crate::ssot::requirements::{NewRequirement, Status};
use crate::ssot::sled_store::{SledOptions, SledStore};

struct Fixture {
    harness: Harness,
    ssot: Arc<Ssot>,
    workspace: tempfile::TempDir,
    _data: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let workspace = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let root = workspace.path();
    std::fs::create_dir_all(root.join("src/api/deep/er")).unwrap();
    std::fs::create_dir_all(root.join("tests")).unwrap();
    std::fs::write(root.join("src/api/app.py"), (1..=40).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
    std::fs::write(root.join("src/api/twice.py"), "x = 1\nx = 1\n").unwrap();
    std::fs::write(root.join("src/api/deep/er/leaf.py"), "LEAF = True\n").unwrap();
    std::fs::write(root.join(".env"), "TOKEN=secret-needle\n").unwrap();
    let store = Arc::new(SledStore::open(data.path(), SledOptions::default()).unwrap());
    let ssot = Arc::new(Ssot::new(store, Default::default()));
    ssot.create_project("p", "", "").await.unwrap();
    ssot.create_requirement("p", NewRequirement { title: "Root".into(), ..Default::default() }).await.unwrap();
    let harness = Harness::new(
        Gate::open(root).unwrap(),
        Arc::new(LocalSandbox::probe()),
        ssot.clone(),
        "p",
        Arc::new(Budget::new(BudgetConfig::default())),
        Limits::default(),
    );
    Fixture { harness, ssot, workspace, _data: data }
}

impl Fixture {
    async fn call(&self, role: &str, name: &str, args: serde_json::Value) -> ToolResult {
        let ctx = ActionContext { loop_id: "loop-1".into(), epoch: 1, agent: format!("{role}-1"), role: role.into() };
        let offered = tools::specs(role, self.harness.policy().role(role).unwrap());
        let tests = vec![vec![
            "python3".to_string(),
            "-m".into(),
            "unittest".into(),
            "discover".into(),
            "-s".into(),
            "tests".into(),
        ]];
        let tools = Tools {
            harness: &self.harness,
            ctx: &ctx,
            requirement: "R1",
            tests: &tests,
            offered: &offered,
            cancel: CancellationToken::new(),
        };
        tools.call(&ToolCall { id: "c1".into(), name: name.into(), arguments: args.to_string() }).await
    }
}

#[tokio::test]
async fn read_file_gives_numbered_line_ranges() {
    let f = fixture().await;
    let part = f.call("backend", "read_file", json!({"path": "src/api/app.py", "start_line": 3, "end_line": 5})).await;
    assert_eq!(part.content, "3| line 3\n4| line 4\n5| line 5\n(35 more lines; the file has 40)", "{part:?}");
    let past = f.call("backend", "read_file", json!({"path": "src/api/app.py", "start_line": 41})).await;
    assert!(past.is_error && past.content.contains("past the end: the file has 40 lines"), "{past:?}");
    let backwards =
        f.call("backend", "read_file", json!({"path": "src/api/app.py", "start_line": 9, "end_line": 2})).await;
    assert!(backwards.is_error && backwards.content.contains("before start_line"), "{backwards:?}");
    let clamp =
        f.call("backend", "read_file", json!({"path": "src/api/app.py", "start_line": 39, "end_line": 99})).await;
    assert_eq!(clamp.content, "39| line 39\n40| line 40");
}

#[tokio::test]
async fn edit_file_replaces_exactly_one_match_or_says_why_not() {
    let f = fixture().await;
    let missing = f.call("backend", "edit_file", json!({"path": "src/api/app.py", "old": "line 99", "new": "x"})).await;
    assert!(missing.is_error && missing.content.contains("not found"), "{missing:?}");
    let twice =
        f.call("backend", "edit_file", json!({"path": "src/api/twice.py", "old": "x = 1", "new": "x = 2"})).await;
    assert!(twice.is_error && twice.content.contains("occurs 2 times"), "{twice:?}");
    assert_eq!(std::fs::read_to_string(f.workspace.path().join("src/api/twice.py")).unwrap(), "x = 1\nx = 1\n");
    let ok = f
        .call("backend", "edit_file", json!({"path": "src/api/app.py", "old": "line 7\n", "new": "line seven\n"}))
        .await;
    assert!(!ok.is_error, "{ok:?}");
    let text = std::fs::read_to_string(f.workspace.path().join("src/api/app.py")).unwrap();
    assert!(text.contains("line seven\nline 8") && !text.contains("line 7\n"));
    let outside = f.call("backend", "edit_file", json!({"path": "src/ui/x.js", "old": "a", "new": "b"})).await;
    assert!(outside.is_error, "{outside:?}");
}

#[tokio::test]
async fn search_and_list_respect_the_deny_list_and_their_caps() {
    let f = fixture().await;
    let found = f.call("review", "search", json!({"pattern": "LEAF|line 1[0-2]$"})).await;
    assert!(found.content.contains("src/api/deep/er/leaf.py:1: LEAF = True"), "{found:?}");
    assert!(found.content.contains("src/api/app.py:11: line 11"), "{found:?}");
    let secret = f.call("review", "search", json!({"pattern": "secret-needle"})).await;
    assert_eq!(secret.content, "no match", "a denied file is not searched: {secret:?}");
    let bad = f.call("review", "search", json!({"pattern": "("})).await;
    assert!(bad.is_error && bad.content.contains("invalid pattern"), "{bad:?}");
    for i in 0..300 {
        std::fs::write(f.workspace.path().join(format!("tests/t{i}.py")), "needle\n").unwrap();
    }
    let many = f.call("review", "search", json!({"pattern": "needle", "path": "tests"})).await;
    assert!(many.content.contains("more matches not shown"), "the search is capped");
    let shallow = f.call("review", "list_dir", json!({"path": "src"})).await;
    assert_eq!(shallow.content, "src/api/", "{shallow:?}");
    let deep = f.call("review", "list_dir", json!({"path": "src", "depth": 4})).await;
    assert!(deep.content.contains("src/api/deep/er/leaf.py (12 bytes)"), "{deep:?}");
    let root = f.call("review", "list_dir", json!({"path": ".", "depth": 1})).await;
    assert!(!root.content.contains(".env") && !root.content.contains(".git"), "{root:?}");
}

#[test]
fn results_are_capped_keeping_head_and_tail() {
    let text: String = (1..=5000).map(|i| format!("line {i}\n")).collect();
    let capped = cap(&text, "; read them with start_line/end_line");
    assert!(capped.len() <= MAX_RESULT_BYTES + 200, "{}", capped.len());
    assert!(capped.starts_with("line 1\nline 2\n") && capped.ends_with("line 5000"), "head and tail kept");
    assert!(capped.contains("lines omitted (lines ") && capped.contains("read them with start_line/end_line"));
    let one_line = "x".repeat(100_000);
    assert!(cap(&one_line, "").len() < MAX_RESULT_BYTES + 100);
    assert_eq!(cap("short", ""), "short");
}

#[test]
fn schemas_are_compact() {
    let policy = crate::harness::policy::Policy::from_raw(Default::default()).unwrap();
    for role in ["planning", "backend", "frontend", "test", "review"] {
        for spec in tools::specs(role, policy.role(role).unwrap()) {
            let text = spec.parameters.to_string();
            for noise in ["$schema", "$defs", "$ref", "\"title\":\""] {
                assert!(!text.contains(noise), "{} has {noise}: {text}", spec.name);
            }
            if spec.name == "create_requirement" {
                assert!(spec.parameters["properties"]["title"]["type"] == "string", "the title property stays: {text}");
            }
        }
    }
}

/// Every role × every SSOT tool: offered and allowed only as the seed's table says.
#[tokio::test]
async fn ssot_rights_per_role() {
    let f = fixture().await;
    let calls = [
        ("create_requirement", json!({"parent_id": "R1", "title": "Child"}), "requirements"),
        ("update_requirement", json!({"id": "R1", "title": "Renamed"}), "requirements"),
        ("set_status", json!({"id": "R1", "status": "BLOCKED"}), "requirements"),
        ("remove_requirement", json!({"id": "R9", "reason": "not needed"}), "requirements"),
        ("propose_contract", json!({"name": "api", "kind": "openapi", "spec": "openapi: 3.1.0"}), "contracts"),
        ("annotate_log", json!({"note": "a note"}), "log"),
        ("memory_put", json!({"key": "k", "value": "v"}), "memory"),
    ];
    let rights: [(&str, &[&str]); 5] = [
        ("planning", &["requirements", "memory"]),
        ("backend", &["contracts", "memory"]),
        ("frontend", &["contracts", "memory"]),
        ("test", &["log", "memory"]),
        ("review", &["log", "memory"]),
    ];
    for (role, granted) in rights {
        for (tool, args, collection) in &calls {
            let result = f.call(role, tool, args.clone()).await;
            if granted.contains(collection) {
                assert!(!result.content.contains("acl.ssot"), "{role} {tool}: {result:?}");
            } else {
                assert!(result.is_error && result.content.contains("acl.ssot"), "{role} {tool}: {result:?}");
            }
        }
    }
    let verdict = f.call("review", "review_verdict", json!({"verdict": "approve"})).await;
    assert!(!verdict.is_error, "{verdict:?}");
    let not_review = f.call("backend", "review_verdict", json!({"verdict": "approve"})).await;
    assert!(not_review.is_error && not_review.content.contains("unknown tool"), "{not_review:?}");
    let tree = f.ssot.all_requirements("p").await.unwrap();
    assert_eq!(tree.len(), 2, "only planning created a requirement");
}

/// Planning replaces its own plan: it may remove a requirement it planned that
/// is not started or done, never the task itself or a tree it does not plan.
#[tokio::test]
async fn remove_requirement_drops_only_unstarted_parts_of_the_own_plan() {
    let f = fixture().await;
    let child = |title: &str, parent: &str| NewRequirement {
        parent_id: parent.into(),
        title: title.into(),
        role_hint: "backend".into(),
        ..Default::default()
    };
    f.ssot.create_requirement("p", child("wrong", "R1")).await.unwrap(); // R2
    f.ssot.create_requirement("p", child("elsewhere", "")).await.unwrap(); // R3, another run's root
    f.ssot.create_requirement("p", child("done", "R1")).await.unwrap(); // R4
    f.ssot.create_requirement("p", child("needed", "R1")).await.unwrap(); // R5
    f.ssot.set_dependencies("p", "R5", &["R2".to_string()], &[], "").await.unwrap();
    for status in [Status::Claimed, Status::InProgress, Status::Done] {
        f.ssot.set_requirement_status("p", "R4", status, "", "test", "").await.unwrap();
    }
    let remove = |id: &str| f.call("planning", "remove_requirement", json!({"id": id, "reason": "replanned"}));
    for (id, why) in [
        ("R1", "not part of the plan under R1"),
        ("R3", "not part of the plan under R1"),
        ("R4", "is DONE"),
        ("R2", "is a dependency of R5"),
        ("R9", "R9 does not exist"),
    ] {
        let refused = remove(id).await;
        assert!(refused.is_error && refused.content.contains(why), "{id}: {refused:?}");
    }
    f.ssot.set_dependencies("p", "R5", &[], &["R2".to_string()], "").await.unwrap();
    let removed = remove("R2").await;
    assert!(!removed.is_error, "{removed:?}");
    let ids: Vec<String> = f.ssot.all_requirements("p").await.unwrap().into_iter().map(|r| r.value.id).collect();
    assert_eq!(ids, ["R1", "R3", "R4", "R5"]);
    let backend = f.call("backend", "remove_requirement", json!({"id": "R5", "reason": "mine now"})).await;
    assert!(backend.is_error && backend.content.contains("acl.ssot"), "{backend:?}");
}
