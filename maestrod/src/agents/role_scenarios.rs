//! Every role completes a small requirement end to end: the real provider
//! clients talk to a local server speaking the OpenAI or Anthropic wire
//! format, tools act through the real harness on a temporary git
//! workspace, commands run in the real sandbox.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer};

use super::contract_validator;
use super::llm::LlmProvider;
use super::llm::anthropic::Anthropic;
use super::llm::http::RetryPolicy;
use super::llm::openai::OpenAi;
use super::llm::script_server::{ScriptServer, Wire};
use super::roles::Assignment;
use super::runtime::RunOutcome;
use super::tools::ReviewDecision;
use crate::harness::budget::{Budget, BudgetConfig};
use crate::harness::executor::{ActionContext, Harness};
use crate::harness::gate::Gate;
use crate::harness::rollback::GitWorkspace;
use crate::harness::sandbox::{Limits, LocalSandbox};
use crate::ssot::Ssot;
use crate::ssot::contracts::ContractStatus;
use crate::ssot::requirements::{NewRequirement, Status};
use crate::ssot::sled_store::{SledOptions, SledStore};

const SCRIPT: &str = r#"
roles:
  planning@R1:
    - text: "Splitting the greeting service into code, client and tests."
      tool_calls:
        - name: create_requirement
          arguments: {parent_id: R1, title: "Greeting function", role_hint: backend,
                      description: "Implements contract:greet-api", acceptance: ["greet('Ada') returns 'Hello, Ada!'"]}
        - name: create_requirement
          arguments: {parent_id: R1, title: "Greeting page", role_hint: frontend, depends_on: [R2]}
        - name: create_requirement
          arguments: {parent_id: R1, title: "Greeting tests", role_hint: test, depends_on: [R2]}
    - text: ""
      tool_calls:
        - name: memory_put
          arguments: {key: plan, value: "R2 code, R3 page, R4 tests after R2"}
        - name: finish
          arguments: {outcome: done, summary: "3 sub-requirements"}
  backend@R2:
    - text: "Writing the function and its contract."
      tool_calls:
        - name: write_file
          arguments: {path: src/api/greet.py, content: "def greet(name):\n    return f\"Hello, {name}!\"\n"}
        - name: propose_contract
          arguments: {name: greet-api, kind: function-signature, spec: "greet(name: str) -> str", consumers: [frontend, test]}
    - text: ""
      tool_calls:
        - name: finish
          arguments: {outcome: done, summary: "greet() implemented"}
  frontend@R3:
    - text: ""
      tool_calls:
        - name: get_contract
          arguments: {name: greet-api}
        - name: write_file
          arguments: {path: src/ui/page.html, content: "<form><input name=name><button>Greet</button></form>\n"}
    - text: ""
      tool_calls:
        - name: finish
          arguments: {outcome: done, summary: "page written"}
  test@R4:
    - text: ""
      tool_calls:
        - name: write_file
          arguments:
            path: tests/test_greet.py
            content: "import os, sys, unittest\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'src'))\nfrom api.greet import greet\n\nclass GreetTest(unittest.TestCase):\n    def test_greets(self):\n        self.assertEqual(greet('Ada'), 'Hello, Ada!')\n"
    - text: ""
      tool_calls:
        - name: run_command
          arguments: {argv: [python3, -m, unittest, discover, -s, tests]}
    - text: ""
      tool_calls:
        - name: annotate_log
          arguments: {note: "R4: 1 test ran, all pass"}
        - name: finish
          arguments: {outcome: done, summary: "tests pass"}
  review@R2:
    - text: ""
      tool_calls:
        - name: read_file
          arguments: {path: src/api/greet.py}
        - name: review_verdict
          arguments:
            verdict: request_changes
            findings: [{file: src/api/greet.py, line: 2, severity: major, text: "name is not escaped; escape it before rendering"}]
    - text: ""
      tool_calls:
        - name: finish
          arguments: {outcome: done, summary: "unescaped user input reaches the page"}
"#;

struct Fixture {
    harness: Harness,
    ssot: Arc<Ssot>,
    git: GitWorkspace,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn fixture() -> Fixture {
    let workspace = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let git = GitWorkspace::open_or_init(workspace.path()).unwrap();
    std::fs::write(workspace.path().join(".gitignore"), "__pycache__/\n").unwrap();
    let store = Arc::new(SledStore::open(data.path(), SledOptions::default()).unwrap());
    let ssot = Arc::new(Ssot::new(store, Default::default()));
    ssot.create_project("greet", "", &workspace.path().display().to_string()).await.unwrap();
    let root = NewRequirement { title: "A greeting service".into(), ..Default::default() };
    ssot.create_requirement("greet", root).await.unwrap();
    let harness = Harness::new(
        Gate::open(workspace.path()).unwrap(),
        Arc::new(LocalSandbox::probe()),
        ssot.clone(),
        "greet",
        Arc::new(Budget::new(BudgetConfig::default())),
        Limits::default(),
    );
    Fixture { harness, ssot, git, _dirs: (workspace, data) }
}

/// Claims `id` for `role` the way the loop does, runs the agent, and records the outcome.
async fn work(f: &Fixture, provider: &dyn LlmProvider, role: &str, id: &str) -> RunOutcome {
    let agent = format!("{role}-1");
    let claims = role != "review";
    if claims {
        for status in [Status::Claimed, Status::InProgress] {
            f.ssot.set_requirement_status("greet", id, status, "", &agent, "").await.unwrap();
        }
    }
    let ctx = ActionContext { loop_id: "loop-1".into(), epoch: 1, agent: agent.clone(), role: role.into() };
    let assignment = Assignment {
        provider,
        model: "m".into(),
        harness: &f.harness,
        ctx,
        requirement: id.into(),
        notes: String::new(),
        max_turns: 8,
        max_tokens: 1024,
        observer: None,
        temperature: None,
        context_window: 32_768,
        tests: Vec::new(),
        on_retry: Default::default(),
    };
    let outcome = assignment.work(CancellationToken::new()).await.unwrap();
    if claims && role != "planning" && matches!(outcome, RunOutcome::Done(_)) {
        f.ssot.set_requirement_status("greet", id, Status::Done, "", &agent, "").await.unwrap();
    }
    outcome
}

#[tokio::test]
async fn every_role_completes_a_requirement_over_both_wire_formats() {
    let openai_server = MockServer::start().await;
    Mock::given(path("/v1/chat/completions"))
        .respond_with(ScriptServer { script: SCRIPT.into(), wire: Wire::OpenAi })
        .mount(&openai_server)
        .await;
    let anthropic_server = MockServer::start().await;
    Mock::given(path("/v1/messages"))
        .respond_with(ScriptServer { script: SCRIPT.into(), wire: Wire::Anthropic })
        .mount(&anthropic_server)
        .await;
    let fast = RetryPolicy { base_delay: std::time::Duration::from_millis(1), ..RetryPolicy::default() };
    let openai = OpenAi::new(&format!("{}/v1", openai_server.uri()), Some("sk-local".into()), fast);
    let anthropic = Anthropic::new(&anthropic_server.uri(), "sk-ant-local".into(), fast);
    let f = fixture().await;
    let root = f.git.root().to_path_buf();
    // The workspace before any agent wrote to it.
    let baseline = f.git.checkpoint("loop-1", 0).unwrap();

    // Planning builds the tree (OpenAI).
    let planned = work(&f, &openai, "planning", "R1").await;
    assert!(matches!(&planned, RunOutcome::Done(f) if f.summary == "3 sub-requirements"), "{planned:?}");
    let tree = f.ssot.all_requirements("greet").await.unwrap();
    let shape: Vec<(String, String, String, Vec<String>)> = tree
        .iter()
        .skip(1)
        .map(|r| (r.value.id.clone(), r.value.parent_id.clone(), r.value.role_hint.clone(), r.value.depends_on.clone()))
        .collect();
    assert_eq!(
        shape,
        [
            ("R2".into(), "R1".into(), "backend".into(), vec![]),
            ("R3".into(), "R1".into(), "frontend".into(), vec!["R2".to_string()]),
            ("R4".into(), "R1".into(), "test".into(), vec!["R2".to_string()]),
        ]
    );
    assert!(f.ssot.get_memory("greet", "planning", "plan").await.is_ok(), "planning kept a note");

    // Backend writes code and a contract (Anthropic); the validator accepts the contract.
    assert!(matches!(work(&f, &anthropic, "backend", "R2").await, RunOutcome::Done(_)));
    assert!(std::fs::read_to_string(root.join("src/api/greet.py")).unwrap().contains("def greet(name)"));
    let report = contract_validator::validate(&f.ssot, "greet", &root, f.harness.policy()).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let contract = f.ssot.get_contract("greet", "greet-api", 0).await.unwrap().value;
    assert_eq!((contract.owner.as_str(), contract.status), ("backend", ContractStatus::Accepted));

    // Frontend reads the contract and writes the page (OpenAI).
    assert!(matches!(work(&f, &openai, "frontend", "R3").await, RunOutcome::Done(_)));
    assert!(root.join("src/ui/page.html").exists());

    // Test writes tests and runs them in the sandbox (Anthropic); the run is in the log.
    let tested = work(&f, &anthropic, "test", "R4").await;
    assert!(matches!(&tested, RunOutcome::Done(f) if f.summary == "tests pass"), "{tested:?}");
    assert!(root.join("tests/test_greet.py").exists());
    let log = f.ssot.list_log("greet", 0, "", "", 1000, "").await.unwrap().items;
    let ran = log.iter().find(|e| e.value.body.action == "run_command").expect("the test run is logged");
    assert_eq!((ran.value.body.agent.as_str(), ran.value.body.outcome.as_str()), ("test-1", "ok"));
    assert!(log.iter().any(|e| e.value.body.action == "annotation" && e.value.body.detail.contains("all pass")));

    // Review asks for changes with a finding, kept against R2 in the log (OpenAI).
    let reviewed = work(&f, &openai, "review", "R2").await;
    let RunOutcome::Done(finished) = reviewed else { panic!("{reviewed:?}") };
    let verdict = finished.verdict.expect("review gave a verdict");
    assert_eq!((verdict.requirement.as_str(), verdict.verdict), ("R2", ReviewDecision::RequestChanges));
    assert_eq!(
        verdict.findings[0].line(),
        "src/api/greet.py:2 [major] name is not escaped; escape it before rendering"
    );
    let log = f.ssot.list_log("greet", 0, "", "", 1000, "").await.unwrap().items;
    let kept = log.iter().find(|e| e.value.body.action == "review_verdict").expect("the verdict is in the log");
    assert_eq!((kept.value.body.target.as_str(), kept.value.body.outcome.as_str()), ("R2", "request_changes"));
    assert!(kept.value.body.detail.contains("not escaped"));

    // The workspace is a git repository: the epoch commits and is tagged.
    let start = f.git.checkpoint("loop-1", 1).unwrap();
    f.git.commit("loop-1", 1, &start, &baseline, "epoch 1").unwrap();
    let repo = git2::Repository::open(&root).unwrap();
    let tagged = repo.revparse_single("maestro/loop-1/1").unwrap().peel_to_tree().unwrap();
    for file in ["src/api/greet.py", "src/ui/page.html", "tests/test_greet.py"] {
        assert!(tagged.get_path(std::path::Path::new(file)).is_ok(), "{file} is committed");
    }
}
