//! Anthropic Messages (`POST {base_url}/v1/messages`, `tool_use` /
//! `tool_result` content blocks).

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::WireOptions;
use super::http::{self, RetryPolicy};
use super::{ChatRequest, ChatResponse, LlmError, LlmProvider, Message, StopReason, TokenUsage, ToolCall};

const NAME: &str = "anthropic";
const API_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    base_url: String,
    api_key: String,
    client: reqwest::Client,
    policy: RetryPolicy,
    wire: WireOptions,
}

impl Anthropic {
    /// `base_url` like `https://api.anthropic.com`.
    pub fn new(base_url: &str, api_key: String, policy: RetryPolicy) -> Self {
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
    max_tokens: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    system: String,
    messages: Vec<WireMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Serialize)]
struct WireMessage {
    role: &'static str,
    content: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireResponse {
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// Messages in Anthropic's shape: system text apart, tool results as user
/// turns, consecutive blocks of one role merged into one message.
fn wire_messages(messages: &[Message]) -> (String, Vec<WireMessage>) {
    let mut system = Vec::new();
    let mut out: Vec<WireMessage> = Vec::new();
    let push = |role: &'static str, block: serde_json::Value, out: &mut Vec<WireMessage>| match out.last_mut() {
        Some(last) if last.role == role => last.content.push(block),
        _ => out.push(WireMessage { role, content: vec![block] }),
    };
    for message in messages {
        match message {
            Message::System { text } => system.push(text.clone()),
            Message::User { text } => push("user", json!({"type": "text", "text": text}), &mut out),
            Message::Assistant { text, tool_calls } => {
                if !text.is_empty() {
                    push("assistant", json!({"type": "text", "text": text}), &mut out);
                }
                for call in tool_calls {
                    // The model's arguments were JSON when it sent them; keep an object either way.
                    let input = serde_json::from_str::<serde_json::Value>(&call.arguments)
                        .ok()
                        .filter(serde_json::Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    push(
                        "assistant",
                        json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}),
                        &mut out,
                    );
                }
            }
            Message::Tool { call_id, content, is_error } => push(
                "user",
                json!({"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error}),
                &mut out,
            ),
        }
    }
    (system.join("\n\n"), out)
}

impl LlmProvider for Anthropic {
    fn name(&self) -> &str {
        NAME
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let chat = async move {
            let (system, messages) = wire_messages(&request.messages);
            let body = WireRequest {
                model: &request.model,
                max_tokens: request.max_tokens,
                system,
                messages,
                tools: request
                    .tools
                    .iter()
                    .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                    .collect(),
                tool_choice: match (request.tools.is_empty(), self.wire.tool_choice.as_deref()) {
                    (false, Some("required")) => Some(json!({"type": "any"})),
                    (false, Some(choice)) => Some(json!({"type": choice})),
                    _ => None,
                },
                temperature: request.temperature,
            };
            let url = format!("{}/v1/messages", self.base_url);
            let reply = http::send(NAME, &url, &self.policy, request.on_retry.as_deref(), || {
                let mut builder = self
                    .client
                    .post(&url)
                    .header("x-api-key", &self.api_key)
                    .header("anthropic-version", API_VERSION)
                    .json(&body);
                for (name, value) in &self.wire.headers {
                    builder = builder.header(name, value);
                }
                builder
            })
            .await?;
            if !reply.status.is_success() {
                return Err(http::status_error(NAME, &request.model, &reply));
            }
            let wire: WireResponse = serde_json::from_str(&reply.body).map_err(|e| LlmError::BadResponse {
                provider: NAME.into(),
                detail: format!("{e} in {}", http::excerpt(&reply.body)),
            })?;
            let mut text = String::new();
            let mut tool_calls = Vec::new();
            for block in wire.content {
                match block {
                    WireBlock::Text { text: part } => text.push_str(&part),
                    WireBlock::ToolUse { id, name, input } => {
                        tool_calls.push(ToolCall { id, name, arguments: input.to_string() })
                    }
                    WireBlock::Other => {}
                }
            }
            let stop = match wire.stop_reason.as_deref() {
                Some("tool_use") => StopReason::ToolUse,
                Some("max_tokens") => StopReason::MaxTokens,
                Some("end_turn") | Some("stop_sequence") | None => StopReason::EndTurn,
                Some(other) => StopReason::Other(other.to_string()),
            };
            let usage = wire.usage.map_or_else(TokenUsage::default, |u| TokenUsage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
            });
            Ok(ChatResponse { text, tool_calls, usage, stop })
        };
        // Keys never reach logs or the SSOT, not even when a server echoes them.
        chat.map(move |result| result.map_err(|e| e.redact(&self.api_key))).boxed()
    }
}
