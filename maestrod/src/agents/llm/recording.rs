//! Record and replay: any provider can be wrapped to append every exchange
//! to a JSON-lines file, and `Replay` answers from such a file, so a past
//! loop runs again without a model. An exchange is found by the agent that
//! made it (role, requirement, attempt), its turn, and the tool calls of the
//! turns before it — not by the whole request, so output that differs
//! between runs (test timings) does not stop a replay.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ChatRequest, ChatResponse, LlmError, LlmProvider};

/// Which agent run an exchange belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentKey {
    pub role: String,
    pub requirement: String,
    pub attempt: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Exchange {
    #[serde(default)]
    agent: Option<AgentKey>,
    /// Assistant turns before this one.
    #[serde(default)]
    turn: usize,
    /// The tool calls of the turns before, by name.
    #[serde(default)]
    calls: Vec<String>,
    #[serde(default)]
    request_hash: String,
    request: ChatRequest,
    response: ChatResponse,
}

/// The turn of a request and the tool calls made before it.
fn position(request: &ChatRequest) -> (usize, Vec<String>) {
    let mut turn = 0;
    let mut calls = Vec::new();
    for message in &request.messages {
        if let super::Message::Assistant { tool_calls, .. } = message {
            turn += 1;
            calls.extend(tool_calls.iter().map(|c| c.name.clone()));
        }
    }
    (turn, calls)
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
    agent: Option<AgentKey>,
}

impl Recorder {
    pub fn new(inner: Arc<dyn LlmProvider>, path: &Path) -> Result<Recorder, LlmError> {
        Self::for_agent(inner, path, None)
    }

    /// Records the exchanges of one agent run, keyed for replay.
    pub fn for_agent(inner: Arc<dyn LlmProvider>, path: &Path, agent: Option<AgentKey>) -> Result<Recorder, LlmError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| file_error(path, e))?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| file_error(path, e))?;
        Ok(Recorder { inner, file: Mutex::new(file), path: path.to_path_buf(), agent })
    }
}

impl LlmProvider for Recorder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        async move {
            let response = self.inner.chat(request).await?;
            let (turn, calls) = position(request);
            let exchange = Exchange {
                agent: self.agent.clone(),
                turn,
                calls,
                request_hash: request_hash(request),
                request: request.clone(),
                response: response.clone(),
            };
            let mut line = serde_json::to_vec(&exchange).map_err(|e| file_error(&self.path, e))?;
            line.push(b'\n');
            let mut file = self.file.lock().expect("recording mutex poisoned");
            file.write_all(&line).and_then(|()| file.sync_data()).map_err(|e| file_error(&self.path, e))?;
            Ok(response)
        }
        .boxed()
    }
}

/// Answers from a recording: the exchanges of one agent run, turn by turn.
pub struct Replay {
    /// turn → (tool calls before it, response)
    turns: HashMap<usize, (Vec<String>, ChatResponse)>,
    agent: Option<AgentKey>,
}

impl Replay {
    /// The exchanges recorded without an agent key (a single run).
    pub fn load(path: &Path) -> Result<Replay, LlmError> {
        Self::load_for(path, None)
    }

    /// The exchanges of `agent` in the recording at `path`.
    pub fn load_for(path: &Path, agent: Option<AgentKey>) -> Result<Replay, LlmError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let mut turns = HashMap::new();
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let exchange: Exchange =
                serde_json::from_str(line).map_err(|e| file_error(path, format!("line {}: {e}", number + 1)))?;
            if exchange.agent == agent {
                // A later recording of the same turn (a retried run) wins.
                turns.insert(exchange.turn, (exchange.calls, exchange.response));
            }
        }
        Ok(Replay { turns, agent })
    }
}

impl LlmProvider for Replay {
    fn name(&self) -> &str {
        "replay"
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let (turn, calls) = position(request);
        let who = self.agent.as_ref().map_or_else(
            || "this run".to_string(),
            |a| format!("{} at {} (attempt {})", a.role, a.requirement, a.attempt),
        );
        let found = match self.turns.get(&turn) {
            None => Err(format!("the recording has no turn {} for {who}", turn + 1)),
            Some((recorded, _)) if *recorded != calls => Err(format!(
                "the run diverged from the recording at turn {} for {who}: recorded tool calls {recorded:?}, now {calls:?}",
                turn + 1
            )),
            Some((_, response)) => Ok(response.clone()),
        }
        .map_err(|detail| LlmError::BadResponse { provider: "replay".into(), detail });
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
        // Output that differs between runs (a test timing) does not matter.
        if let Some(Message::Tool { content, .. }) = request.messages.last_mut() {
            *content = "2 passed in 0.37s".into();
        }
        assert_eq!(replay.chat(&request).await.unwrap(), second);
        request.messages.truncate(1);
        assert_eq!(replay.chat(&request).await.unwrap(), first);
        // Other tool calls than recorded: the run diverged.
        request.messages.push(Message::Assistant {
            text: String::new(),
            tool_calls: vec![super::super::ToolCall {
                id: "x".into(),
                name: "write_file".into(),
                arguments: "{}".into(),
            }],
        });
        let diverged = replay.chat(&request).await.unwrap_err().to_string();
        assert!(diverged.contains("diverged") && diverged.contains("run_command"), "{diverged}");
        let other =
            Replay::load_for(&path, Some(AgentKey { role: "backend".into(), requirement: "R2".into(), attempt: 1 }))
                .unwrap();
        assert!(other.chat(&request).await.is_err(), "another agent's run has no exchanges here");
    }
}
