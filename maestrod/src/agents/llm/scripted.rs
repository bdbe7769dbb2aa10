//! The scripted model: a deterministic provider that plays a script file
//! (which tool calls to make, what text to answer) keyed by role and step.
//! The step is the number of assistant turns already in the conversation,
//! so a conversation replayed from the log gets the same answers.
//!
//! A role's script can be narrowed to one requirement and one attempt at it:
//! for an agent of role `backend` working on R5 for the second time, the
//! first of `backend@R5#2`, `backend@R5`, `backend` that the script has is played.
//!
//! ```yaml
//! roles:
//!   backend:
//!     - text: "Writing the handler."
//!       tool_calls:
//!         - name: write_file
//!           arguments: {path: src/api/todos.py, content: "def list_todos():\n    return []\n"}
//!     - text: "R2 is done."
//!       stop: max_tokens     # plays a reply cut at the token limit
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;

use super::{ChatRequest, ChatResponse, LlmError, LlmProvider, Message, StopReason, TokenUsage, ToolCall};

const NAME: &str = "scripted";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    roles: BTreeMap<String, Vec<Step>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    text: String,
    #[serde(default)]
    tool_calls: Vec<ScriptedCall>,
    /// `max_tokens` plays a reply cut at the token limit.
    #[serde(default)]
    stop: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedCall {
    name: String,
    #[serde(default)]
    arguments: serde_json::Value,
    /// Sent as is instead of `arguments`: lets a script send malformed JSON.
    raw_arguments: Option<String>,
}

/// The script of one role.
pub struct Scripted {
    role: String,
    steps: Vec<Step>,
}

impl Scripted {
    pub fn load(path: &Path, role: &str) -> Result<Scripted, LlmError> {
        Self::load_for(path, role, "", 1)
    }

    /// The script of `role` for its `attempt` (from 1) at `requirement`.
    pub fn load_for(path: &Path, role: &str, requirement: &str, attempt: u32) -> Result<Scripted, LlmError> {
        let bad = |detail: String| LlmError::BadResponse { provider: NAME.into(), detail };
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read script {}: {e}", path.display())))?;
        Self::parse_for(&text, role, requirement, attempt).map_err(|e| bad(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str, role: &str) -> Result<Scripted, String> {
        Self::parse_for(text, role, "", 1)
    }

    pub fn parse_for(text: &str, role: &str, requirement: &str, attempt: u32) -> Result<Scripted, String> {
        let script: Script = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        let keys = [format!("{role}@{requirement}#{attempt}"), format!("{role}@{requirement}"), role.to_string()];
        let key = keys.iter().find(|k| script.roles.contains_key(*k)).unwrap_or(&keys[2]);
        let steps = script.roles.get(key).cloned().unwrap_or_default();
        Ok(Scripted { role: key.clone(), steps })
    }
}

/// A deterministic stand-in for token counts: about four bytes a token.
fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

impl LlmProvider for Scripted {
    fn name(&self) -> &str {
        NAME
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let result = (|| {
            let step_index = request.messages.iter().filter(|m| matches!(m, Message::Assistant { .. })).count();
            let step = self.steps.get(step_index).ok_or_else(|| LlmError::BadResponse {
                provider: NAME.into(),
                detail: format!(
                    "the script for role {} has no step {} (it has {})",
                    self.role,
                    step_index + 1,
                    self.steps.len()
                ),
            })?;
            let tool_calls: Vec<ToolCall> = step
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, call)| ToolCall {
                    id: format!("call_{}_{}_{}", self.role, step_index + 1, i + 1),
                    name: call.name.clone(),
                    arguments: call.raw_arguments.clone().unwrap_or_else(|| call.arguments.to_string()),
                })
                .collect();
            let prompt: usize = request
                .messages
                .iter()
                .map(|m| match m {
                    Message::System { text } | Message::User { text } => text.len(),
                    Message::Assistant { text, tool_calls } => {
                        text.len() + tool_calls.iter().map(|c| c.arguments.len()).sum::<usize>()
                    }
                    Message::Tool { content, .. } => content.len(),
                })
                .sum();
            let output = step.text.len() + tool_calls.iter().map(|c| c.arguments.len()).sum::<usize>();
            Ok(ChatResponse {
                text: step.text.clone(),
                stop: match step.stop.as_deref() {
                    Some("max_tokens") => StopReason::MaxTokens,
                    Some(other) => StopReason::Other(other.to_string()),
                    None if tool_calls.is_empty() => StopReason::EndTurn,
                    None => StopReason::ToolUse,
                },
                tool_calls,
                usage: TokenUsage { input_tokens: estimate_tokens(prompt), output_tokens: estimate_tokens(output) },
            })
        })();
        async move { result }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = r#"
roles:
  backend:
    - text: "Writing the handler."
      tool_calls:
        - name: write_file
          arguments: {path: src/api/todos.py, content: "def list_todos():\n    return []\n"}
        - name: write_file
          raw_arguments: '{"path": "src/api/broken.py", "content": '
    - text: "R2 is done."
"#;

    fn request(assistant_turns: usize) -> ChatRequest {
        let mut messages = vec![Message::User { text: "Implement R2".into() }];
        for _ in 0..assistant_turns {
            messages.push(Message::Assistant { text: "…".into(), tool_calls: Vec::new() });
        }
        ChatRequest {
            model: "scripted".into(),
            messages,
            tools: Vec::new(),
            max_tokens: 100,
            temperature: None,
            on_retry: Default::default(),
        }
    }

    #[tokio::test]
    async fn plays_the_role_step_by_step() {
        let model = Scripted::parse(SCRIPT, "backend").unwrap();
        let first = model.chat(&request(0)).await.unwrap();
        assert_eq!(first.stop, StopReason::ToolUse);
        assert_eq!(first.tool_calls[0].id, "call_backend_1_1");
        let args: serde_json::Value = serde_json::from_str(&first.tool_calls[0].arguments).unwrap();
        assert_eq!(args["path"], "src/api/todos.py");
        assert!(
            serde_json::from_str::<serde_json::Value>(&first.tool_calls[1].arguments).is_err(),
            "malformed on purpose"
        );
        assert!(first.usage.input_tokens > 0);
        assert_eq!(model.chat(&request(0)).await.unwrap(), first, "deterministic");
        let second = model.chat(&request(1)).await.unwrap();
        assert_eq!((second.text.as_str(), second.stop), ("R2 is done.", StopReason::EndTurn));
        let narrowed =
            "roles:\n  backend: [{text: any}]\n  backend@R5: [{text: r5}]\n  backend@R5#2: [{text: again}]\n";
        let play =
            |req: &str, attempt| Scripted::parse_for(narrowed, "backend", req, attempt).unwrap().steps[0].text.clone();
        assert_eq!((play("R5", 2), play("R5", 1), play("R2", 2)), ("again".into(), "r5".into(), "any".into()));
        let over = model.chat(&request(2)).await.unwrap_err();
        assert!(over.to_string().contains("has no step 3"), "{over}");
        assert!(Scripted::parse("roles: {backend: [{txt: x}]}", "backend").is_err());
    }
}
