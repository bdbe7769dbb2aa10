//! LLM providers behind one trait: chat with tool definitions (JSON Schema),
//! tool calls and results, token usage and the stop reason. Wire formats:
//! OpenAI-compatible Chat Completions (`openai`, also Ollama, vLLM,
//! llama.cpp, LM Studio, OpenRouter through `base_url`) and Anthropic
//! Messages (`anthropic`), a deterministic `scripted` model for demos and
//! tests, and `recording` (record any provider, replay a recording). `http`
//! holds timeouts and retries; `config` picks a provider per role.

pub mod anthropic;
pub mod config;
pub mod http;
pub mod openai;
pub mod recording;
#[cfg(test)]
pub mod script_server;
pub mod scripted;
#[cfg(test)]
mod wire_tests;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// One message of a conversation, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    System {
        text: String,
    },
    User {
        text: String,
    },
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call, sent back to the model.
    Tool {
        call_id: String,
        content: String,
        is_error: bool,
    },
}

/// A tool call the model asked for. `arguments` is the model's JSON text as
/// sent, so malformed arguments reach the runtime (and go back as a tool error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    /// Told about each retry (`model retry 2/5 after 429: …`); not part of the request.
    #[serde(skip)]
    pub on_retry: RetryHook,
}

/// Told a line about each retry.
pub type RetryNotice = dyn Fn(&str) + Send + Sync;

/// A callback for retries of a request (the loop turns them into events).
#[derive(Clone, Default)]
pub struct RetryHook(pub Option<std::sync::Arc<RetryNotice>>);

impl RetryHook {
    pub fn as_deref(&self) -> Option<&RetryNotice> {
        self.0.as_deref()
    }
}

impl std::fmt::Debug for RetryHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "RetryHook(set)" } else { "RetryHook(none)" })
    }
}

/// Requests are the same whoever listens to their retries.
impl PartialEq for RetryHook {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model finished its turn.
    EndTurn,
    /// The model wants tool results.
    ToolUse,
    /// The output hit `max_tokens`.
    MaxTokens,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: TokenUsage,
    pub stop: StopReason,
}

/// What went wrong talking to a model, each with a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    #[error("{provider}: the API key was rejected ({detail}); check the variable named by llm.api_key_env")]
    Auth { provider: String, detail: String },
    #[error("{provider}: unknown model {model:?} ({detail}); check llm.model")]
    UnknownModel { provider: String, model: String, detail: String },
    #[error("{provider}: cannot reach {url}: {detail}; check llm.base_url and that the server runs")]
    Unreachable { provider: String, url: String, detail: String },
    #[error("{provider}: rate limited after {attempts} attempts ({detail}); try again later")]
    RateLimited { provider: String, attempts: u32, detail: String },
    #[error("{provider}: server error {status} after {attempts} attempts: {detail}")]
    Server { provider: String, status: u16, attempts: u32, detail: String },
    #[error("{provider}: the request was refused ({status}): {detail}")]
    Rejected { provider: String, status: u16, detail: String },
    #[error("{provider}: unreadable response: {detail}")]
    BadResponse { provider: String, detail: String },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error(
        "{provider}: no API key: set {variable} in maestrod's environment or in ~/.maestro/credentials.yaml (chmod 600)"
    )]
    MissingKey { provider: String, variable: String },
}

impl LlmError {
    /// A short name of the kind of error, for traces (`error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Auth { .. } => "auth",
            LlmError::UnknownModel { .. } => "unknown_model",
            LlmError::Unreachable { .. } => "unreachable",
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::Server { .. } => "server_error",
            LlmError::Rejected { .. } => "rejected",
            LlmError::BadResponse { .. } => "bad_response",
            LlmError::Config(_) => "config",
            LlmError::MissingKey { .. } => "missing_key",
        }
    }

    /// Errors that asking again cannot cure: a rejected key, an unknown model,
    /// a request the server refuses as it is (too long for the context, invalid).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            LlmError::Auth { .. }
                | LlmError::UnknownModel { .. }
                | LlmError::Rejected { .. }
                | LlmError::Config(_)
                | LlmError::MissingKey { .. }
        )
    }

    /// Removes `secret` (an API key, also a prefix of it that a server echoes) from every detail.
    pub fn redact(self, secret: &str) -> LlmError {
        if secret.len() < 8 {
            return self;
        }
        let clean = |detail: String| {
            let mut detail = detail.replace(secret, "[redacted]");
            // Servers often echo a truncated key; hide anything from its first 8 characters on.
            if let Some(at) = detail.find(&secret[..8]) {
                let end = detail[at..]
                    .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                    .map_or(detail.len(), |e| at + e);
                detail.replace_range(at..end, "[redacted]");
            }
            detail
        };
        match self {
            LlmError::Auth { provider, detail } => LlmError::Auth { provider, detail: clean(detail) },
            LlmError::UnknownModel { provider, model, detail } => {
                LlmError::UnknownModel { provider, model, detail: clean(detail) }
            }
            LlmError::Unreachable { provider, url, detail } => {
                LlmError::Unreachable { provider, url, detail: clean(detail) }
            }
            LlmError::Server { provider, status, attempts, detail } => {
                LlmError::Server { provider, status, attempts, detail: clean(detail) }
            }
            LlmError::Rejected { provider, status, detail } => {
                LlmError::Rejected { provider, status, detail: clean(detail) }
            }
            LlmError::BadResponse { provider, detail } => LlmError::BadResponse { provider, detail: clean(detail) },
            LlmError::RateLimited { provider, attempts, detail } => {
                LlmError::RateLimited { provider, attempts, detail: clean(detail) }
            }
            other => other,
        }
    }
}

/// A chat model.
pub trait LlmProvider: Send + Sync {
    /// For logs: "openai", "anthropic", …
    fn name(&self) -> &str;

    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;
}
