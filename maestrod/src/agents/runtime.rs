//! One agent run: the role's prompt and its task → model → tool calls through
//! the harness → results back → until the agent calls `finish`, runs out of
//! turns or budget, or is cancelled. Only `finish` ends a run as done: a
//! reply without a tool call gets one reminder, a second one fails the run;
//! a reply cut at the token limit never finishes.

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

use super::llm::{ChatRequest, LlmError, LlmProvider, Message, RetryHook, StopReason, TokenUsage, ToolCall};
use super::tools::{self, Signal, ToolResult, Tools, Verdict, VerdictArgs};
use crate::harness::executor::{ActionContext, Harness, HarnessError};
use crate::ssot::loops::FailureCause;

/// The reason a run fails when the model keeps answering in prose.
pub const NO_TOOL_CALL: &str = "the model answered without calling a tool";

/// How an agent's work ended, when it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub summary: String,
    /// Set when the agent says the requirement needs no change.
    pub no_change_reason: Option<String>,
    /// Review's verdict, when it gave one.
    pub verdict: Option<VerdictArgs>,
}

/// Why an agent run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFailure {
    pub cause: FailureCause,
    pub reason: String,
}

impl AgentFailure {
    pub fn new(cause: FailureCause, reason: impl Into<String>) -> Self {
        Self { cause, reason: reason.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The agent called `finish` with outcome done.
    Done(Finished),
    Failed(AgentFailure),
    Cancelled,
}

impl RunOutcome {
    pub fn failed(cause: FailureCause, reason: impl Into<String>) -> Self {
        RunOutcome::Failed(AgentFailure::new(cause, reason))
    }
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

impl AgentError {
    /// The failure of a run that this error stopped.
    pub fn into_failure(self) -> AgentFailure {
        use crate::ssot::SsotError;
        use crate::ssot::store::StoreError;
        match self {
            AgentError::Llm(e) => model_failure(e),
            // The store was unreachable or could not confirm a write (an etcd member died under
            // it): the next attempt of the cycle may well succeed, so it is not escalated at once.
            AgentError::Harness(HarnessError::Log(SsotError::Store(
                StoreError::Unavailable(_) | StoreError::Backend(_),
            )))
            | AgentError::Context(SsotError::Store(StoreError::Unavailable(_) | StoreError::Backend(_))) => {
                AgentFailure::new(FailureCause::Other, self.to_string())
            }
            other => AgentFailure::new(FailureCause::Setup, other.to_string()),
        }
    }
}

/// A model error as a failure: permanent ones (bad key, unknown model, a refused
/// request) are not worth a retry of the whole cycle.
pub fn model_failure(error: LlmError) -> AgentFailure {
    let cause = if error.is_permanent() { FailureCause::ModelPermanent } else { FailureCause::Model };
    AgentFailure::new(cause, error.to_string())
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
    /// The requirement worked on (or reviewed).
    pub requirement: String,
    pub max_turns: usize,
    pub max_tokens: u32,
    pub observer: Option<&'a dyn Observer>,
    /// Model knobs: temperature (None: the provider's default), the context window in tokens.
    pub temperature: Option<f32>,
    pub context_window: u32,
    /// The project's test commands (`run_tests`).
    pub tests: Vec<Vec<String>>,
    /// Told about each retry of a model request.
    pub on_retry: RetryHook,
}

/// Tokens a conversation is estimated to take (about four bytes a token).
pub fn estimate_tokens(messages: &[Message], tools: &[super::llm::ToolSpec]) -> u64 {
    let text: usize = messages
        .iter()
        .map(|m| match m {
            Message::System { text } | Message::User { text } => text.len(),
            Message::Assistant { text, tool_calls } => {
                text.len() + tool_calls.iter().map(|c| c.arguments.len() + c.name.len()).sum::<usize>()
            }
            Message::Tool { content, .. } => content.len(),
        })
        .sum();
    let schemas: usize = tools.iter().map(|t| t.parameters.to_string().len() + t.description.len()).sum();
    ((text + schemas) as u64).div_ceil(4) + 4 * messages.len() as u64
}

/// Keeps a conversation within `budget` tokens by eliding the oldest tool
/// results (the system prompt, the task and the last turns stay whole).
/// Returns whether it fits.
pub fn fit(messages: &mut [Message], tools: &[super::llm::ToolSpec], budget: u64) -> bool {
    const KEEP_LAST: usize = 6;
    let protected_from = messages.len().saturating_sub(KEEP_LAST);
    for i in 2..protected_from {
        if estimate_tokens(messages, tools) <= budget {
            return true;
        }
        if let Message::Tool { content, .. } = &mut messages[i]
            && !content.starts_with("[elided")
        {
            *content = format!(
                "[elided to fit the context window: {} bytes; call the tool again if you need it]",
                content.len()
            );
        }
    }
    estimate_tokens(messages, tools) <= budget
}

/// Why the model stopped, as logged and traced.
fn finish_reason(stop: &StopReason) -> String {
    match stop {
        StopReason::EndTurn => "end_turn".to_string(),
        StopReason::ToolUse => "tool_use".to_string(),
        StopReason::MaxTokens => "max_tokens".to_string(),
        StopReason::Other(other) => other.clone(),
    }
}

/// The first line of `text`, at most `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.trim().lines().next().unwrap_or_default();
    if line.chars().count() > max { format!("{}…", line.chars().take(max).collect::<String>()) } else { line.into() }
}

impl AgentRun<'_> {
    /// Every model call goes in the execution log: model, tokens in and out, latency, stop reason or error.
    async fn log_call(&self, response: &Result<super::llm::ChatResponse, LlmError>, took: std::time::Duration) {
        let (outcome, tokens, (tokens_in, tokens_out), detail) = match response {
            Ok(r) => {
                let stop = finish_reason(&r.stop);
                let detail = format!(
                    "in {} out {} tokens, {} tool calls",
                    r.usage.input_tokens,
                    r.usage.output_tokens,
                    r.tool_calls.len()
                );
                (stop, r.usage.total(), (r.usage.input_tokens, r.usage.output_tokens), detail)
            }
            Err(error) => ("error".to_string(), 0, (0, 0), error.to_string()),
        };
        let metrics = crate::metrics::get();
        // A server's own stop reasons are many: they count as `other`.
        let known = ["end_turn", "tool_use", "max_tokens", "error"];
        let label = if known.contains(&outcome.as_str()) { outcome.clone() } else { "other".into() };
        metrics.model_calls.get_or_create(&crate::metrics::OutcomeLabels { outcome: label }).inc();
        for (direction, count) in [("input", tokens_in), ("output", tokens_out)] {
            metrics
                .model_tokens
                .get_or_create(&crate::metrics::TokenLabels { direction: direction.into() })
                .inc_by(count);
        }
        let entry = crate::ssot::exec_log::NewLogEntry {
            loop_id: self.ctx.loop_id.clone(),
            epoch: self.ctx.epoch,
            agent: self.ctx.agent.clone(),
            action: "model_call".into(),
            target: self.model.clone(),
            outcome,
            tokens,
            duration_ms: took.as_millis() as u64,
            detail,
            requirement: self.requirement.clone(),
            tokens_in,
            tokens_out,
        };
        if let Err(error) = self.harness.ssot().append_log(self.harness.project(), entry).await {
            tracing::warn!(%error, "cannot log a model call");
        }
    }

    /// Runs until the agent finishes. `system` is the role's prompt, `task` the focused context.
    pub async fn run(&self, system: &str, task: &str, cancel: CancellationToken) -> Result<RunOutcome, AgentError> {
        let span = info_span!("agent", role = %self.ctx.role, agent = %self.ctx.agent, requirement = %self.requirement);
        async {
            let role = self.harness.policy().role(&self.ctx.role).map_err(|e| HarnessError::Gate(e.into()))?;
            let offered = tools::specs(&self.ctx.role, role);
            let tools = Tools {
                harness: self.harness,
                ctx: &self.ctx,
                requirement: &self.requirement,
                tests: &self.tests,
                offered: &offered,
                cancel: cancel.clone(),
            };
            let mut messages =
                vec![Message::System { text: system.to_string() }, Message::User { text: task.to_string() }];
            let mut silent_replies = 0;
            let mut last_error: Option<String> = None;
            let mut verdict: Option<VerdictArgs> = None;
            for _ in 0..self.max_turns {
                if cancel.is_cancelled() {
                    return Ok(RunOutcome::Cancelled);
                }
                let budget = u64::from(self.context_window).saturating_sub(u64::from(self.max_tokens));
                if !fit(&mut messages, &offered, budget) {
                    return Ok(RunOutcome::failed(
                        FailureCause::Setup,
                        format!(
                            "the conversation does not fit the model's context window ({} tokens, llm.context_window) even with old tool results elided",
                            self.context_window
                        ),
                    ));
                }
                let request = ChatRequest {
                    model: self.model.clone(),
                    messages: messages.clone(),
                    tools: offered.clone(),
                    max_tokens: self.max_tokens,
                    temperature: self.temperature,
                    on_retry: self.on_retry.clone(),
                };
                let started = std::time::Instant::now();
                // OpenTelemetry's GenAI semantic conventions name the attributes.
                let span = tracing::info_span!(
                    "chat",
                    otel.name = format!("chat {}", self.model),
                    otel.kind = "client",
                    gen_ai.operation.name = "chat",
                    gen_ai.provider.name = self.provider.name(),
                    gen_ai.request.model = %self.model,
                    gen_ai.request.max_tokens = self.max_tokens,
                    gen_ai.request.temperature = tracing::field::Empty,
                    gen_ai.agent.name = %self.ctx.role,
                    gen_ai.usage.input_tokens = tracing::field::Empty,
                    gen_ai.usage.output_tokens = tracing::field::Empty,
                    gen_ai.response.finish_reasons = tracing::field::Empty,
                    error.type = tracing::field::Empty,
                );
                if let Some(temperature) = self.temperature {
                    span.record("gen_ai.request.temperature", f64::from(temperature));
                }
                let response = tokio::select! {
                    response = self.provider.chat(&request).instrument(span.clone()) => response,
                    () = cancel.cancelled() => return Ok(RunOutcome::Cancelled),
                };
                match &response {
                    Ok(r) => {
                        span.record("gen_ai.usage.input_tokens", r.usage.input_tokens);
                        span.record("gen_ai.usage.output_tokens", r.usage.output_tokens);
                        span.record("gen_ai.response.finish_reasons", finish_reason(&r.stop));
                    }
                    Err(error) => {
                        span.record("error.type", error.kind());
                    }
                }
                self.log_call(&response, started.elapsed()).await;
                let response = match response {
                    Ok(response) => response,
                    Err(error) => return Ok(RunOutcome::Failed(model_failure(error))),
                };
                if let Some(observer) = self.observer {
                    observer.turn(&self.ctx, &response.usage);
                }
                match self.harness.charge_tokens(&self.ctx, response.usage.total()).await {
                    Err(HarnessError::Budget(exhausted)) => {
                        return Ok(RunOutcome::failed(FailureCause::Budget, exhausted.to_string()));
                    }
                    other => other?,
                }
                let cut = response.stop == StopReason::MaxTokens;
                messages
                    .push(Message::Assistant { text: response.text.clone(), tool_calls: response.tool_calls.clone() });
                if response.tool_calls.is_empty() {
                    silent_replies += 1;
                    if silent_replies >= 2 {
                        info!("the model answered twice without calling a tool");
                        let said = first_line(&response.text, 160);
                        let reason = if said.is_empty() {
                            NO_TOOL_CALL.to_string()
                        } else {
                            format!("{NO_TOOL_CALL}: {said:?}")
                        };
                        return Ok(RunOutcome::failed(FailureCause::NoToolCall, reason));
                    }
                    let why = if cut {
                        "Your reply was cut at the token limit."
                    } else if response.text.trim().is_empty() {
                        "Your reply was empty."
                    } else {
                        "You answered without calling a tool."
                    };
                    messages.push(Message::User {
                        text: format!(
                            "{why} Call a tool, or finish with a summary (the `finish` tool). \
                             Tool calls go through the tool-calling interface, not as JSON in your text."
                        ),
                    });
                    continue;
                }
                silent_replies = 0;
                for call in &response.tool_calls {
                    let result = if call.name == "finish" && cut {
                        // A reply cut short may have lost what came before: never done on it.
                        ToolResult {
                            content: "your reply was cut at the token limit; call finish again in a complete reply"
                                .into(),
                            is_error: true,
                            signal: Signal::None,
                            touched: None,
                        }
                    } else {
                        tools.call(call).await
                    };
                    if let Some(observer) = self.observer {
                        observer.tool(&self.ctx, call, &result);
                    }
                    match &result.signal {
                        Signal::Finish(finish) => {
                            return Ok(match finish.outcome {
                                Verdict::Done => RunOutcome::Done(Finished {
                                    summary: finish.summary.clone(),
                                    no_change_reason: finish.no_change_reason.clone().filter(|r| !r.trim().is_empty()),
                                    verdict,
                                }),
                                Verdict::Failed => RunOutcome::failed(
                                    FailureCause::GaveUp,
                                    format!("the agent gave up: {}", first_line(&finish.summary, 300)),
                                ),
                            });
                        }
                        Signal::BudgetExhausted => {
                            return Ok(RunOutcome::failed(FailureCause::Budget, result.content));
                        }
                        Signal::Verdict(given) => verdict = Some((**given).clone()),
                        Signal::Denied | Signal::None => {}
                    }
                    if result.is_error {
                        last_error = Some(first_line(&result.content, 300));
                    }
                    messages.push(Message::Tool {
                        call_id: call.id.clone(),
                        content: result.content,
                        is_error: result.is_error,
                    });
                }
            }
            let mut reason = format!("no finish after {} turns", self.max_turns);
            if let Some(error) = last_error {
                reason.push_str(&format!("; last tool error: {error}"));
            }
            Ok(RunOutcome::failed(FailureCause::TurnLimit, reason))
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
            requirement: "R1".into(),
            max_turns: 8,
            max_tokens: 1024,
            observer: None,
            temperature: None,
            context_window: 32_768,
            tests: Vec::new(),
            on_retry: Default::default(),
        };
        let outcome =
            run.run("You are the Backend agent.", "Implement R1: GET /todos", CancellationToken::new()).await.unwrap();
        assert!(matches!(&outcome, RunOutcome::Done(f) if f.summary == "GET /todos is implemented"), "{outcome:?}");
        let written = std::fs::read_to_string(workspace.path().join("src/api/todos.py")).unwrap();
        assert!(written.contains("list_todos"));
        assert!(!workspace.path().join("src/ui/page.html").exists(), "the harness kept backend out of src/ui");
        // Only the loop sets DONE, after validation: the agent's set_status DONE was refused.
        let r1 = ssot.get_requirement("demo", "R1", 0).await.unwrap().value;
        assert_eq!(r1.status, crate::ssot::requirements::Status::InProgress);

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
        // One action passed the gate (the write); denials and refusals cost no step.
        assert!(spent[0].value.tokens > 0 && spent[0].value.steps == 1, "{:?}", spent[0].value);

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
            requirement: "R1".into(),
            max_turns: 8,
            max_tokens: 1024,
            observer: None,
            temperature: None,
            context_window: 32_768,
            tests: Vec::new(),
            on_retry: Default::default(),
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
                requirement: "R1".into(),
                max_turns: 4,
                max_tokens: 512,
                observer: None,
                temperature: None,
                context_window: 32_768,
                tests: Vec::new(),
                on_retry: Default::default(),
            };
            let outcome =
                run.run("You are the Backend agent.", "Implement R1", CancellationToken::new()).await.unwrap();
            assert!(
                matches!(&outcome, RunOutcome::Done(f) if f.summary == "written"),
                "{}: {outcome:?}",
                provider.name()
            );
            assert!(workspace.path().join(file).exists(), "{file}");
        }
    }

    #[test]
    fn tools_are_offered_by_policy_with_generated_schemas() {
        let policy = crate::harness::policy::Policy::from_raw(Default::default()).unwrap();
        let names = |role: &str| -> Vec<String> {
            tools::specs(role, policy.role(role).unwrap()).into_iter().map(|t| t.name).collect()
        };
        let review = names("review");
        assert!(review.contains(&"read_file".to_string()) && review.contains(&"annotate_log".to_string()));
        assert!(!review.contains(&"write_file".to_string()) && !review.contains(&"run_command".to_string()));
        assert!(names("test").contains(&"run_command".to_string()));
        assert!(names("backend").contains(&"propose_contract".to_string()));
        assert!(!names("planning").contains(&"propose_contract".to_string()));
        assert!(review.contains(&"review_verdict".to_string()));
        assert!(!names("backend").contains(&"review_verdict".to_string()), "only review gives verdicts");
        let write = tools::specs("backend", policy.role("backend").unwrap())
            .into_iter()
            .find(|t| t.name == "write_file")
            .unwrap();
        assert_eq!(write.parameters["type"], "object");
        assert_eq!(write.parameters["required"], serde_json::json!(["path", "content"]));
    }

    /// Runs `script` (the backend role's) to its outcome.
    async fn outcome_of(script: &str) -> (RunOutcome, Arc<Ssot>, tempfile::TempDir) {
        let workspace = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let (harness, ssot) = setup(workspace.path(), data.path()).await;
        let model = Scripted::parse(script, "backend").unwrap();
        let run = AgentRun {
            provider: &model,
            model: "scripted".into(),
            harness: &harness,
            ctx: ctx(),
            requirement: "R1".into(),
            max_turns: 5,
            max_tokens: 256,
            observer: None,
            temperature: None,
            context_window: 32_768,
            tests: Vec::new(),
            on_retry: Default::default(),
        };
        let outcome = run.run("You are the Backend agent.", "Implement R1", CancellationToken::new()).await.unwrap();
        (outcome, ssot, workspace)
    }

    fn failure(outcome: &RunOutcome) -> (FailureCause, String) {
        match outcome {
            RunOutcome::Failed(f) => (f.cause, f.reason.clone()),
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[tokio::test]
    async fn only_finish_ends_a_run_as_done() {
        // Prose twice: one reminder, then the run fails.
        let (outcome, ..) =
            outcome_of("roles:\n  backend:\n    - text: I cannot help with that.\n    - text: I still cannot.\n").await;
        let (cause, reason) = failure(&outcome);
        assert_eq!(cause, FailureCause::NoToolCall);
        assert!(reason.starts_with(NO_TOOL_CALL) && reason.contains("I still cannot"), "{reason}");
        // Empty replies are no different.
        let (outcome, ..) = outcome_of("roles:\n  backend:\n    - text: ''\n    - text: ''\n").await;
        assert_eq!(failure(&outcome), (FailureCause::NoToolCall, NO_TOOL_CALL.to_string()));
        // A tool call written as JSON in the text is still prose.
        let json = "roles:\n  backend:\n    - text: '{\"name\": \"finish\", \"arguments\": {\"outcome\": \"done\"}}'\n    - text: '{\"name\": \"finish\"}'\n";
        assert_eq!(failure(&outcome_of(json).await.0).0, FailureCause::NoToolCall);
        // One reminder is enough for a model that then finishes.
        let reminded = "roles:\n  backend:\n    - text: Let me think.\n    - tool_calls: [{name: finish, arguments: {outcome: done, summary: ok}}]\n";
        assert!(matches!(outcome_of(reminded).await.0, RunOutcome::Done(_)));
        // A reply cut at the token limit never finishes, even with a finish call in it.
        let cut = "roles:\n  backend:\n    - stop: max_tokens\n      tool_calls: [{name: finish, arguments: {outcome: done, summary: ok}}]\n    - stop: max_tokens\n      text: and then\n    - stop: max_tokens\n";
        let (cause, reason) = failure(&outcome_of(cut).await.0);
        assert_eq!(cause, FailureCause::NoToolCall, "{reason}");
        // finish{failed} is the agent giving up; running out of turns names the last tool error.
        let gave_up = "roles:\n  backend:\n    - tool_calls: [{name: finish, arguments: {outcome: failed, summary: no database}}]\n";
        assert_eq!(
            failure(&outcome_of(gave_up).await.0),
            (FailureCause::GaveUp, "the agent gave up: no database".into())
        );
        let looping =
            "roles:\n  backend:\n".to_string() + &"    - tool_calls: [{name: teleport, arguments: {}}]\n".repeat(5);
        let (cause, reason) = failure(&outcome_of(&looping).await.0);
        assert_eq!(cause, FailureCause::TurnLimit);
        assert!(reason.contains("no finish after 5 turns") && reason.contains("unknown tool \"teleport\""), "{reason}");
    }

    #[tokio::test]
    async fn finish_carries_a_no_change_reason_and_set_status_cannot_claim_done() {
        let script = "roles:\n  backend:\n    - tool_calls:\n        - {name: set_status, arguments: {id: R1, status: DONE}}\n        - {name: finish, arguments: {outcome: done, summary: ok, no_change_reason: the endpoint exists already}}\n";
        let (outcome, ssot, _ws) = outcome_of(script).await;
        let RunOutcome::Done(finished) = outcome else { panic!("{outcome:?}") };
        assert_eq!(finished.no_change_reason.as_deref(), Some("the endpoint exists already"));
        let r1 = ssot.get_requirement("demo", "R1", 0).await.unwrap().value;
        assert_eq!(r1.status, crate::ssot::requirements::Status::InProgress);
    }

    #[test]
    fn permanent_model_errors_are_told_apart() {
        let provider = "openai".to_string();
        let permanent = [
            LlmError::Auth { provider: provider.clone(), detail: "bad key".into() },
            LlmError::UnknownModel { provider: provider.clone(), model: "gpt-9".into(), detail: "no".into() },
            LlmError::Rejected { provider: provider.clone(), status: 400, detail: "context length exceeded".into() },
            LlmError::MissingKey { provider: provider.clone(), variable: "OPENAI_API_KEY".into() },
        ];
        for error in permanent {
            assert_eq!(model_failure(error).cause, FailureCause::ModelPermanent);
        }
        let transient = [
            LlmError::RateLimited { provider: provider.clone(), attempts: 3, detail: "slow down".into() },
            LlmError::Server { provider: provider.clone(), status: 500, attempts: 3, detail: "boom".into() },
            LlmError::Unreachable { provider: provider.clone(), url: "http://x".into(), detail: "timed out".into() },
        ];
        for error in transient {
            assert_eq!(model_failure(error).cause, FailureCause::Model);
        }
    }

    #[test]
    fn a_store_that_could_not_confirm_a_write_is_worth_another_attempt() {
        use crate::ssot::SsotError;
        use crate::ssot::store::StoreError;
        let unconfirmed = StoreError::Backend("etcd did not confirm the write, which may have been applied".into());
        let failure = AgentError::Harness(HarnessError::Log(SsotError::Store(unconfirmed))).into_failure();
        assert!(!failure.cause.is_permanent(), "{failure:?}");
        let away = AgentError::Context(SsotError::Store(StoreError::Unavailable("etcd".into()))).into_failure();
        assert!(!away.cause.is_permanent(), "{away:?}");
        let broken = AgentError::Context(SsotError::FailedPrecondition("no such project".into())).into_failure();
        assert!(broken.cause.is_permanent(), "a broken setup still escalates at once");
    }

    /// Fifty turns of reading a big file never exceed the context window: old
    /// results are elided; every model call is in the execution log.
    #[tokio::test]
    async fn a_long_run_stays_within_the_context_window_and_every_call_is_logged() {
        let workspace = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let (_, ssot) = setup(workspace.path(), &data.path().join("store")).await;
        // A long run spends more than the default budget of one agent: lift it for this one.
        let unlimited = BudgetConfig {
            per_agent_epoch: crate::harness::budget::Limits { tokens: 0, steps: 0, wall_ms: 0 },
            ..BudgetConfig::default()
        };
        let harness = Harness::new(
            Gate::open(workspace.path()).unwrap(),
            Arc::new(LocalSandbox::probe()),
            ssot.clone(),
            "demo",
            Arc::new(Budget::new(unlimited)),
            Limits::default(),
        );
        std::fs::create_dir_all(workspace.path().join("src/api")).unwrap();
        std::fs::write(workspace.path().join("src/api/big.py"), "x = 1  # padding padding padding\n".repeat(2000))
            .unwrap();
        let mut script = String::from("roles:\n  backend:\n");
        for _ in 0..49 {
            script.push_str("    - tool_calls: [{name: read_file, arguments: {path: src/api/big.py}}]\n");
        }
        script.push_str("    - tool_calls: [{name: finish, arguments: {outcome: done, summary: read it all}}]\n");
        let recording = data.path().join("exchanges.jsonl");
        let recorder = Recorder::new(Arc::new(Scripted::parse(&script, "backend").unwrap()), &recording).unwrap();
        let (window, max_tokens) = (16_384u32, 1024u32);
        let run = AgentRun {
            provider: &recorder,
            model: "scripted".into(),
            harness: &harness,
            ctx: ctx(),
            requirement: "R1".into(),
            max_turns: 60,
            max_tokens,
            observer: None,
            temperature: None,
            context_window: window,
            tests: Vec::new(),
            on_retry: Default::default(),
        };
        let outcome = run.run("You are the Backend agent.", "Implement R1", CancellationToken::new()).await.unwrap();
        assert!(matches!(outcome, RunOutcome::Done(_)), "{outcome:?}");
        let lines = std::fs::read_to_string(&recording).unwrap();
        let mut turns = 0;
        for line in lines.lines() {
            let exchange: serde_json::Value = serde_json::from_str(line).unwrap();
            let request: ChatRequest = serde_json::from_value(exchange["request"].clone()).unwrap();
            let used = estimate_tokens(&request.messages, &request.tools);
            assert!(used + u64::from(max_tokens) <= u64::from(window), "turn {turns}: {used} tokens");
            turns += 1;
        }
        assert_eq!(turns, 50);
        let log = ssot.list_log("demo", 0, "", "", 1000, "").await.unwrap().items;
        let calls: Vec<_> = log.iter().filter(|e| e.value.body.action == "model_call").collect();
        assert_eq!(calls.len(), 50);
        assert!(calls.iter().all(|e| e.value.body.agent == "backend-1" && e.value.body.tokens > 0));
        assert_eq!(calls.last().unwrap().value.body.outcome, "tool_use");
    }
}
