//! One agent run: the role's prompt and its task → model → tool calls through
//! the harness → results back → until the agent calls `finish`, stops
//! calling tools, runs out of turns, or runs out of budget.

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

use super::llm::{ChatRequest, LlmError, LlmProvider, Message, TokenUsage, ToolCall};
use super::tools::{self, ToolResult, Tools, Verdict};
use crate::harness::executor::{ActionContext, Harness, HarnessError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Done {
        summary: String,
    },
    Failed {
        reason: String,
    },
    /// The budget ran out: the agent was stopped cleanly.
    OutOfBudget {
        reason: String,
    },
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("cannot read the agent's context: {0}")]
    Context(crate::ssot::SsotError),
}

/// Watches an agent run: each model turn and each tool call with its result.
/// The AutoLoop turns these into events; observers must not block.
pub trait Observer: Send + Sync {
    fn turn(&self, _ctx: &ActionContext, _usage: &TokenUsage) {}
    fn tool(&self, _ctx: &ActionContext, _call: &ToolCall, _result: &ToolResult) {}
}

pub struct AgentRun<'a> {
    pub provider: &'a dyn LlmProvider,
    pub model: String,
    pub harness: &'a Harness,
    pub ctx: ActionContext,
    pub max_turns: usize,
    pub max_tokens: u32,
    pub observer: Option<&'a dyn Observer>,
}

impl AgentRun<'_> {
    /// Runs until the agent finishes. `system` is the role's prompt, `task` the focused context.
    pub async fn run(&self, system: &str, task: &str, cancel: CancellationToken) -> Result<RunOutcome, AgentError> {
        let span = info_span!("agent", role = %self.ctx.role, agent = %self.ctx.agent);
        async {
            let role = self.harness.policy().role(&self.ctx.role).map_err(|e| HarnessError::Gate(e.into()))?;
            let offered = tools::specs(role);
            let tools = Tools { harness: self.harness, ctx: &self.ctx, offered: &offered, cancel: cancel.clone() };
            let mut messages =
                vec![Message::System { text: system.to_string() }, Message::User { text: task.to_string() }];
            for _ in 0..self.max_turns {
                if cancel.is_cancelled() {
                    return Ok(RunOutcome::Cancelled);
                }
                let request = ChatRequest {
                    model: self.model.clone(),
                    messages: messages.clone(),
                    tools: offered.clone(),
                    max_tokens: self.max_tokens,
                    temperature: Some(0.0),
                };
                let response = tokio::select! {
                    response = self.provider.chat(&request) => response?,
                    () = cancel.cancelled() => return Ok(RunOutcome::Cancelled),
                };
                if let Some(observer) = self.observer {
                    observer.turn(&self.ctx, &response.usage);
                }
                match self.harness.charge_tokens(&self.ctx, response.usage.total()).await {
                    Err(HarnessError::Budget(exhausted)) => {
                        return Ok(RunOutcome::OutOfBudget { reason: exhausted.to_string() });
                    }
                    other => other?,
                }
                messages
                    .push(Message::Assistant { text: response.text.clone(), tool_calls: response.tool_calls.clone() });
                if response.tool_calls.is_empty() {
                    info!("the agent ended its turn without finish");
                    return Ok(RunOutcome::Done { summary: response.text });
                }
                for call in &response.tool_calls {
                    let result = tools.call(call).await;
                    if let Some(observer) = self.observer {
                        observer.tool(&self.ctx, call, &result);
                    }
                    if let Some(finish) = result.finish {
                        return Ok(match finish.outcome {
                            Verdict::Done => RunOutcome::Done { summary: finish.summary },
                            Verdict::Failed => RunOutcome::Failed { reason: finish.summary },
                        });
                    }
                    if result.is_error && result.content.contains("budget exhausted") {
                        return Ok(RunOutcome::OutOfBudget { reason: result.content });
                    }
                    messages.push(Message::Tool {
                        call_id: call.id.clone(),
                        content: result.content,
                        is_error: result.is_error,
                    });
                }
            }
            Ok(RunOutcome::Failed { reason: format!("no finish after {} turns", self.max_turns) })
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::llm::recording::{Recorder, Replay};
    use super::super::llm::scripted::Scripted;
    use super::*;
    use crate::harness::budget::{Budget, BudgetConfig};
    use crate::harness::gate::Gate;
    use crate::harness::sandbox::{Limits, LocalSandbox};
    use crate::ssot::Ssot;
    use crate::ssot::sled_store::{SledOptions, SledStore};

    const SCRIPT: &str = r#"
roles:
  backend:
    - text: "Implementing R1."
      tool_calls:
        - name: write_file
          arguments: {path: src/api/todos.py, content: "def list_todos():\n    return []\n"}
        - name: write_file
          raw_arguments: '{"path": "src/api/x.py", "content": '
        - name: teleport
          arguments: {}
        - name: write_file
          arguments: {path: src/ui/page.html, content: "<p>not mine</p>"}
    - text: "Recording the result."
      tool_calls:
        - name: set_status
          arguments: {id: R1, status: DONE, reason: "handler written"}
        - name: finish
          arguments: {outcome: done, summary: "GET /todos is implemented"}
"#;

    async fn setup(workspace: &std::path::Path, data: &std::path::Path) -> (Harness, Arc<Ssot>) {
        let store = Arc::new(SledStore::open(data, SledOptions::default()).unwrap());
        let ssot = Arc::new(Ssot::new(store, crate::ssot::Limits::default()));
        ssot.create_project("demo", "", "").await.unwrap();
        ssot.create_requirement(
            "demo",
            crate::ssot::requirements::NewRequirement {
                title: "GET /todos".into(),
                role_hint: "backend".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for status in [crate::ssot::requirements::Status::Claimed, crate::ssot::requirements::Status::InProgress] {
            ssot.set_requirement_status("demo", "R1", status, "", "backend-1", "").await.unwrap();
        }
        let harness = Harness::new(
            Gate::open(workspace).unwrap(),
            Arc::new(LocalSandbox::probe()),
            ssot.clone(),
            "demo",
            Arc::new(Budget::new(BudgetConfig::default())),
            Limits::default(),
        );
        (harness, ssot)
    }

    fn ctx() -> ActionContext {
        ActionContext { loop_id: "loop-1".into(), epoch: 1, agent: "backend-1".into(), role: "backend".into() }
    }

    #[tokio::test]
    async fn an_agent_works_through_the_harness_and_replays_identically() {
        let workspace = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let recording = data.path().join("exchanges.jsonl");
        let (harness, ssot) = setup(workspace.path(), &data.path().join("store")).await;
        let recorder = Recorder::new(Arc::new(Scripted::parse(SCRIPT, "backend").unwrap()), &recording).unwrap();
        let run = AgentRun {
            provider: &recorder,
            model: "scripted".into(),
            harness: &harness,
            ctx: ctx(),
            max_turns: 8,
            max_tokens: 1024,
            observer: None,
        };
        let outcome =
            run.run("You are the Backend agent.", "Implement R1: GET /todos", CancellationToken::new()).await.unwrap();
        assert_eq!(outcome, RunOutcome::Done { summary: "GET /todos is implemented".into() });
        let written = std::fs::read_to_string(workspace.path().join("src/api/todos.py")).unwrap();
        assert!(written.contains("list_todos"));
        assert!(!workspace.path().join("src/ui/page.html").exists(), "the harness kept backend out of src/ui");
        let r1 = ssot.get_requirement("demo", "R1", 0).await.unwrap().value;
        assert_eq!(r1.status, crate::ssot::requirements::Status::Done);

        // The model saw the malformed call, the unknown tool and the denial as tool errors.
        let lines = std::fs::read_to_string(&recording).unwrap();
        let second: serde_json::Value = serde_json::from_str(lines.lines().nth(1).unwrap()).unwrap();
        let tool_messages: Vec<&serde_json::Value> =
            second["request"]["messages"].as_array().unwrap().iter().filter(|m| m["role"] == "tool").collect();
        let errors: Vec<bool> = tool_messages.iter().map(|m| m["is_error"].as_bool().unwrap()).collect();
        assert_eq!(errors, [false, true, true, true]);
        assert!(tool_messages[1]["content"].as_str().unwrap().contains("invalid arguments for write_file"));
        assert!(tool_messages[2]["content"].as_str().unwrap().contains("unknown tool \"teleport\""));
        assert!(tool_messages[3]["content"].as_str().unwrap().contains("acl.write"));
        let spent = ssot.list_budgets("demo", "loop-1", 100, "").await.unwrap().items;
        // Two actions passed the gate (the write and the status change); denials cost no step.
        assert!(spent[0].value.tokens > 0 && spent[0].value.steps == 2, "{:?}", spent[0].value);

        // Replaying the recording on a fresh workspace and store gives the same files and SSOT.
        let workspace2 = tempfile::tempdir().unwrap();
        let data2 = tempfile::tempdir().unwrap();
        let (harness2, ssot2) = setup(workspace2.path(), data2.path()).await;
        let replay = Replay::load(&recording).unwrap();
        let run = AgentRun {
            provider: &replay,
            model: "scripted".into(),
            harness: &harness2,
            ctx: ctx(),
            max_turns: 8,
            max_tokens: 1024,
            observer: None,
        };
        let replayed =
            run.run("You are the Backend agent.", "Implement R1: GET /todos", CancellationToken::new()).await.unwrap();
        assert_eq!(replayed, outcome);
        assert_eq!(std::fs::read_to_string(workspace2.path().join("src/api/todos.py")).unwrap(), written);
        assert_eq!(ssot2.get_requirement("demo", "R1", 0).await.unwrap().value.status, r1.status);
    }

    /// The same loop over both real wire formats (a local server answering like the APIs).
    #[tokio::test]
    async fn the_loop_runs_over_the_openai_and_anthropic_wire_formats() {
        use serde_json::json;
        use wiremock::matchers::{body_partial_json, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        use super::super::llm::anthropic::Anthropic;
        use super::super::llm::http::RetryPolicy;
        use super::super::llm::openai::OpenAi;

        let server = MockServer::start().await;
        // OpenAI: first a write_file call, then (once the tool result is in) finish.
        Mock::given(path("/v1/chat/completions"))
            .and(body_partial_json(json!({"messages": [{"role": "system"}, {"role": "user"}, {"role": "assistant"}, {"role": "tool", "tool_call_id": "call_1"}]})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "c2", "object": "chat.completion", "model": "gpt-4o-mini",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "call_2", "type": "function", "function": {"name": "finish", "arguments": "{\"outcome\":\"done\",\"summary\":\"written\"}"}}]}}],
                "usage": {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320}
            })))
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(path("/v1/chat/completions"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "write_file", "arguments": "{\"path\":\"src/api/openai.py\",\"content\":\"x = 1\\n\"}"}}]}}],
                "usage": {"prompt_tokens": 200, "completion_tokens": 30, "total_tokens": 230}
            })))
            .with_priority(2)
            .mount(&server)
            .await;
        // Anthropic: the same two turns in tool_use / tool_result blocks.
        Mock::given(path("/v1/messages"))
            .and(body_partial_json(json!({"messages": [{"role": "user"}, {"role": "assistant"}, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]}]})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "m2", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "stop_reason": "tool_use",
                "content": [{"type": "tool_use", "id": "toolu_2", "name": "finish", "input": {"outcome": "done", "summary": "written"}}],
                "usage": {"input_tokens": 310, "output_tokens": 25}
            })))
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(path("/v1/messages"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "m1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "stop_reason": "tool_use",
                "content": [{"type": "text", "text": "Writing it."}, {"type": "tool_use", "id": "toolu_1", "name": "write_file", "input": {"path": "src/api/anthropic.py", "content": "y = 2\n"}}],
                "usage": {"input_tokens": 210, "output_tokens": 35}
            })))
            .with_priority(2)
            .mount(&server)
            .await;

        let workspace = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let (harness, _ssot) = setup(workspace.path(), data.path()).await;
        let policy = RetryPolicy { base_delay: std::time::Duration::from_millis(1), ..RetryPolicy::default() };
        let openai = OpenAi::new(&format!("{}/v1", server.uri()), None, policy);
        let anthropic = Anthropic::new(&server.uri(), "sk-ant-test-key".into(), policy);
        for (provider, file) in
            [(&openai as &dyn LlmProvider, "src/api/openai.py"), (&anthropic, "src/api/anthropic.py")]
        {
            let run = AgentRun {
                provider,
                model: "m".into(),
                harness: &harness,
                ctx: ctx(),
                max_turns: 4,
                max_tokens: 512,
                observer: None,
            };
            let outcome =
                run.run("You are the Backend agent.", "Implement R1", CancellationToken::new()).await.unwrap();
            assert_eq!(outcome, RunOutcome::Done { summary: "written".into() }, "{}", provider.name());
            assert!(workspace.path().join(file).exists(), "{file}");
        }
    }

    #[test]
    fn tools_are_offered_by_policy_with_generated_schemas() {
        let policy = crate::harness::policy::Policy::from_raw(Default::default()).unwrap();
        let names = |role: &str| -> Vec<String> {
            tools::specs(policy.role(role).unwrap()).into_iter().map(|t| t.name).collect()
        };
        let review = names("review");
        assert!(review.contains(&"read_file".to_string()) && review.contains(&"annotate_log".to_string()));
        assert!(!review.contains(&"write_file".to_string()) && !review.contains(&"run_command".to_string()));
        assert!(names("test").contains(&"run_command".to_string()));
        assert!(names("backend").contains(&"propose_contract".to_string()));
        assert!(!names("planning").contains(&"propose_contract".to_string()));
        let write = tools::specs(policy.role("backend").unwrap()).into_iter().find(|t| t.name == "write_file").unwrap();
        assert_eq!(write.parameters["type"], "object");
        assert_eq!(write.parameters["required"], serde_json::json!(["path", "content"]));
    }
}
