//! Record and replay: any provider can be wrapped to append every exchange
//! to a JSON-lines file, and `Replay` answers from such a file, so a past
//! loop runs again without a model. Requests are matched by a hash of their
//! canonical JSON.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ChatRequest, ChatResponse, LlmError, LlmProvider};

#[derive(Debug, Serialize, Deserialize)]
struct Exchange {
    request_hash: String,
    request: ChatRequest,
    response: ChatResponse,
}

pub fn request_hash(request: &ChatRequest) -> String {
    let canonical = serde_json::to_vec(request).expect("requests encode as JSON");
    Sha256::digest(&canonical).iter().map(|b| format!("{b:02x}")).collect()
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> LlmError {
    LlmError::BadResponse { provider: "recording".into(), detail: format!("{}: {e}", path.display()) }
}

/// Wraps a provider and appends each exchange to a file.
pub struct Recorder {
    inner: Arc<dyn LlmProvider>,
    file: Mutex<std::fs::File>,
    path: std::path::PathBuf,
}

impl Recorder {
    pub fn new(inner: Arc<dyn LlmProvider>, path: &Path) -> Result<Recorder, LlmError> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| file_error(path, e))?;
        Ok(Recorder { inner, file: Mutex::new(file), path: path.to_path_buf() })
    }
}

impl LlmProvider for Recorder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        async move {
            let response = self.inner.chat(request).await?;
            let exchange =
                Exchange { request_hash: request_hash(request), request: request.clone(), response: response.clone() };
            let mut line = serde_json::to_vec(&exchange).map_err(|e| file_error(&self.path, e))?;
            line.push(b'\n');
            let mut file = self.file.lock().expect("recording mutex poisoned");
            file.write_all(&line).and_then(|()| file.sync_data()).map_err(|e| file_error(&self.path, e))?;
            Ok(response)
        }
        .boxed()
    }
}

/// Answers from a recording.
pub struct Replay {
    responses: HashMap<String, ChatResponse>,
}

impl Replay {
    pub fn load(path: &Path) -> Result<Replay, LlmError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let mut responses = HashMap::new();
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let exchange: Exchange =
                serde_json::from_str(line).map_err(|e| file_error(path, format!("line {}: {e}", number + 1)))?;
            responses.insert(exchange.request_hash, exchange.response);
        }
        Ok(Replay { responses })
    }
}

impl LlmProvider for Replay {
    fn name(&self) -> &str {
        "replay"
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let hash = request_hash(request);
        let found = self.responses.get(&hash).cloned().ok_or_else(|| LlmError::BadResponse {
            provider: "replay".into(),
            detail: format!(
                "the recording has no response for this request ({}…); the conversation diverged",
                &hash[..12]
            ),
        });
        async move { found }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::super::scripted::Scripted;
    use super::super::{Message, StopReason};
    use super::*;

    #[tokio::test]
    async fn a_recorded_conversation_replays_identically() {
        let script = "roles:\n  test:\n    - text: run\n      tool_calls: [{name: run_command, arguments: {argv: [pytest]}}]\n    - text: all green\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exchanges.jsonl");
        let recorder = Recorder::new(Arc::new(Scripted::parse(script, "test").unwrap()), &path).unwrap();
        let mut request = ChatRequest {
            model: "m".into(),
            messages: vec![Message::User { text: "test R3".into() }],
            tools: Vec::new(),
            max_tokens: 64,
            temperature: None,
            on_retry: Default::default(),
        };
        let first = recorder.chat(&request).await.unwrap();
        request.messages.push(Message::Assistant { text: first.text.clone(), tool_calls: first.tool_calls.clone() });
        request.messages.push(Message::Tool {
            call_id: first.tool_calls[0].id.clone(),
            content: "2 passed".into(),
            is_error: false,
        });
        let second = recorder.chat(&request).await.unwrap();
        assert_eq!(second.stop, StopReason::EndTurn);

        let replay = Replay::load(&path).unwrap();
        assert_eq!(replay.chat(&request).await.unwrap(), second);
        request.messages.truncate(1);
        assert_eq!(replay.chat(&request).await.unwrap(), first);
        request.messages.push(Message::User { text: "something else".into() });
        assert!(replay.chat(&request).await.unwrap_err().to_string().contains("diverged"));
    }
}
