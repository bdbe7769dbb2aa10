//! OpenAI-compatible Chat Completions (`POST {base_url}/chat/completions`,
//! `tools` / `tool_calls`). Serves OpenAI and every server that speaks the
//! same format: Ollama, vLLM, llama.cpp server, LM Studio, OpenRouter.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::config::WireOptions;
use super::http::{self, RetryPolicy};
use super::{ChatRequest, ChatResponse, LlmError, LlmProvider, Message, StopReason, TokenUsage, ToolCall};

const NAME: &str = "openai";

pub struct OpenAi {
    base_url: String,
    api_key: Option<String>,
    client: reqwest::Client,
    policy: RetryPolicy,
    wire: WireOptions,
}

impl OpenAi {
    /// `base_url` like `https://api.openai.com/v1` or `http://localhost:11434/v1`;
    /// `api_key` is optional for local servers.
    pub fn new(base_url: &str, api_key: Option<String>, policy: RetryPolicy) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            client: http::client(&policy),
            policy,
            wire: WireOptions { tool_choice: Some("auto".into()), headers: Vec::new() },
        }
    }

    /// `tool_choice` and extra headers (`llm.tool_choice`, `llm.headers`).
    pub fn with_wire(mut self, wire: WireOptions) -> Self {
        self.wire = wire;
        self
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a str>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Serialize, Deserialize, Default)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WireToolCall {
    id: String,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: WireFunctionCall,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Serialize, Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a serde_json::Value,
}

#[derive(Deserialize)]
struct WireResponse {
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn wire_messages(messages: &[Message]) -> Vec<WireMessage> {
    messages
        .iter()
        .map(|message| match message {
            Message::System { text } => {
                WireMessage { role: "system".into(), content: Some(text.clone()), ..Default::default() }
            }
            Message::User { text } => {
                WireMessage { role: "user".into(), content: Some(text.clone()), ..Default::default() }
            }
            Message::Assistant { text, tool_calls } => WireMessage {
                role: "assistant".into(),
                // Always a string: servers built on strict schemas (llama-cpp-python) refuse null.
                content: Some(text.clone()),
                tool_calls: tool_calls
                    .iter()
                    .map(|c| WireToolCall {
                        id: c.id.clone(),
                        kind: function_type(),
                        function: WireFunctionCall { name: c.name.clone(), arguments: c.arguments.clone() },
                    })
                    .collect(),
                tool_call_id: None,
            },
            Message::Tool { call_id, content, is_error } => WireMessage {
                role: "tool".into(),
                // The format has no error flag: say it in the content.
                content: Some(if *is_error { format!("ERROR: {content}") } else { content.clone() }),
                tool_call_id: Some(call_id.clone()),
                ..Default::default()
            },
        })
        .collect()
}

impl LlmProvider for OpenAi {
    fn name(&self) -> &str {
        NAME
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let chat = async move {
            let body = WireRequest {
                model: &request.model,
                messages: wire_messages(&request.messages),
                tools: request
                    .tools
                    .iter()
                    .map(|t| WireTool {
                        kind: "function",
                        function: WireFunction {
                            name: &t.name,
                            description: &t.description,
                            parameters: &t.parameters,
                        },
                    })
                    .collect(),
                tool_choice: if request.tools.is_empty() { None } else { self.wire.tool_choice.as_deref() },
                max_tokens: request.max_tokens,
                temperature: request.temperature,
            };
            let url = format!("{}/chat/completions", self.base_url);
            let reply = http::send(NAME, &url, &self.policy, request.on_retry.as_deref(), || {
                let mut builder = self.client.post(&url).json(&body);
                for (name, value) in &self.wire.headers {
                    builder = builder.header(name, value);
                }
                match &self.api_key {
                    Some(key) => builder.bearer_auth(key),
                    None => builder,
                }
            })
            .await?;
            if !reply.status.is_success() {
                return Err(http::status_error(NAME, &request.model, &reply));
            }
            let bad = |detail: String| LlmError::BadResponse { provider: NAME.into(), detail };
            let wire: WireResponse =
                serde_json::from_str(&reply.body).map_err(|e| bad(format!("{e} in {}", http::excerpt(&reply.body))))?;
            let choice = wire.choices.into_iter().next().ok_or_else(|| bad("no choices in the response".into()))?;
            let tool_calls: Vec<ToolCall> = choice
                .message
                .tool_calls
                .into_iter()
                .map(|c| ToolCall { id: c.id, name: c.function.name, arguments: c.function.arguments })
                .collect();
            let stop = match choice.finish_reason.as_deref() {
                Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
                Some("length") => StopReason::MaxTokens,
                Some("stop") | None if !tool_calls.is_empty() => StopReason::ToolUse,
                Some("stop") | None => StopReason::EndTurn,
                Some(other) => StopReason::Other(other.to_string()),
            };
            let usage = wire.usage.map_or_else(TokenUsage::default, |u| TokenUsage {
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
            });
            Ok(ChatResponse { text: choice.message.content.unwrap_or_default(), tool_calls, usage, stop })
        };
        // Keys never reach logs or the SSOT, not even when a server echoes them.
        chat.map(move |result| {
            result.map_err(|e| match &self.api_key {
                Some(key) => e.redact(key),
                None => e,
            })
        })
        .boxed()
    }
}
