//! A local HTTP server that speaks the OpenAI Chat Completions or the
//! Anthropic Messages wire format and answers from a script: the role is
//! recognised by its system prompt, the requirement by the task's first
//! line, the step by the assistant turns already in the conversation. Tests
//! use it to run whole agents over the real provider clients.

use serde_json::{Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

use super::scripted::Scripted;
use super::{ChatRequest, LlmProvider, Message, StopReason};
use crate::agents::roles;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
}

pub struct ScriptServer {
    pub script: String,
    pub wire: Wire,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

impl ScriptServer {
    fn answer(&self, body: &Value) -> Result<Value, String> {
        let messages = body["messages"].as_array().ok_or("no messages")?;
        let (system, rest): (String, Vec<&Value>) = match self.wire {
            Wire::OpenAi => (text_of(&messages[0]["content"]), messages.iter().skip(1).collect()),
            Wire::Anthropic => (body["system"].as_str().unwrap_or_default().to_string(), messages.iter().collect()),
        };
        let role = ["planning", "backend", "frontend", "test", "review"]
            .into_iter()
            .find(|r| roles::prompt(r) == Some(system.as_str()))
            .ok_or("unknown system prompt")?;
        let task = text_of(&rest.first().ok_or("no task")?["content"]);
        let requirement = task
            .strip_prefix("# Requirement ")
            .and_then(|t| t.split(':').next())
            .ok_or("the task does not start with a requirement")?;
        let turns = rest.iter().filter(|m| m["role"] == "assistant").count();
        let scripted = Scripted::parse_for(&self.script, role, requirement, 1)?;
        let mut conversation = vec![Message::User { text: task.clone() }];
        conversation.extend((0..turns).map(|_| Message::Assistant { text: String::new(), tool_calls: Vec::new() }));
        let request = ChatRequest {
            model: body["model"].as_str().unwrap_or_default().into(),
            messages: conversation,
            tools: Vec::new(),
            max_tokens: 1024,
            temperature: None,
            on_retry: Default::default(),
        };
        let response = futures::executor::block_on(scripted.chat(&request)).map_err(|e| e.to_string())?;
        let model = body["model"].clone();
        Ok(match self.wire {
            Wire::OpenAi => {
                let calls: Vec<Value> = response
                    .tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
                let mut message = json!({"role": "assistant", "content": response.text, "refusal": null});
                if !calls.is_empty() {
                    message["tool_calls"] = Value::Array(calls);
                }
                let finish = if response.stop == StopReason::ToolUse { "tool_calls" } else { "stop" };
                json!({
                    "id": format!("chatcmpl-{role}-{turns}"), "object": "chat.completion", "created": 1764400000,
                    "model": model, "system_fingerprint": "fp_local",
                    "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                    "usage": {"prompt_tokens": response.usage.input_tokens, "completion_tokens": response.usage.output_tokens,
                              "total_tokens": response.usage.total()}
                })
            }
            Wire::Anthropic => {
                let mut content = Vec::new();
                if !response.text.is_empty() {
                    content.push(json!({"type": "text", "text": response.text}));
                }
                for call in &response.tool_calls {
                    let input: Value = serde_json::from_str(&call.arguments).map_err(|e| e.to_string())?;
                    content.push(json!({"type": "tool_use", "id": format!("toolu_{}", call.id), "name": call.name, "input": input}));
                }
                let stop = if response.stop == StopReason::ToolUse { "tool_use" } else { "end_turn" };
                json!({
                    "id": format!("msg_{role}_{turns}"), "type": "message", "role": "assistant", "model": model,
                    "content": content, "stop_reason": stop, "stop_sequence": null,
                    "usage": {"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens}
                })
            }
        })
    }
}

impl Respond for ScriptServer {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(e) => return ResponseTemplate::new(400).set_body_json(json!({"error": {"message": e.to_string()}})),
        };
        match self.answer(&body) {
            Ok(answer) => ResponseTemplate::new(200).set_body_json(answer),
            Err(e) => ResponseTemplate::new(400)
                .set_body_json(json!({"error": {"type": "invalid_request_error", "message": e}})),
        }
    }
}
