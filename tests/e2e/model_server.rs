//! A local model server speaking the OpenAI Chat Completions and the
//! Anthropic Messages wire formats, answering from a `Behaviour`: what each
//! role says on each turn. The role is read from the system prompt, the
//! requirement from the task's first line, the turn from the assistant turns
//! already in the conversation. The scenario is the request's model name, so
//! one server plays every scenario at once. Requests are kept for inspection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// What the model answers on one turn.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    Text(String),
    /// Tool calls: name and arguments.
    Calls(Vec<(String, Value)>),
    /// One tool call whose arguments are sent as this text (OpenAI) — JSON that does not parse.
    Raw(String, String),
    /// Text cut at the token limit (`finish_reason: length` / `stop_reason: max_tokens`), with calls.
    Cut(String, Vec<(String, Value)>),
    /// An HTTP error with the provider's error body.
    Status(u16, String),
    /// No answer at all for a minute.
    Stall,
}

pub(crate) fn call(name: &str, args: Value) -> Reply {
    Reply::Calls(vec![(name.to_string(), args)])
}

pub(crate) fn text(t: &str) -> Reply {
    Reply::Text(t.to_string())
}

/// One turn of a conversation, as the server sees it.
#[derive(Debug, Clone)]
pub(crate) struct Turn {
    pub(crate) scenario: String,
    pub(crate) role: String,
    pub(crate) requirement: String,
    /// Assistant turns before this one.
    pub(crate) turn: usize,
    /// The task text (the first user message).
    pub(crate) task: String,
    /// The API key the request carried (`Authorization: Bearer …` or `x-api-key`).
    pub(crate) key: String,
    /// The text of the tool results sent back so far, in order.
    pub(crate) results: Vec<String>,
}

pub(crate) type Behaviour = Arc<dyn Fn(&Turn) -> Reply + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    OpenAi,
    Anthropic,
}

impl Wire {
    pub(crate) fn provider(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
        }
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

/// The turn a request asks for.
fn turn_of(body: &Value, wire: Wire, key: String) -> Option<Turn> {
    let messages = body["messages"].as_array()?;
    let (system, rest): (String, Vec<&Value>) = match wire {
        Wire::OpenAi => (text_of(&messages.first()?["content"]), messages.iter().skip(1).collect()),
        Wire::Anthropic => (body["system"].as_str().unwrap_or_default().to_string(), messages.iter().collect()),
    };
    let role = ["Planning", "Backend", "Frontend", "Test", "Review"]
        .into_iter()
        .find(|r| system.starts_with(&format!("You are the {r} agent")))?
        .to_lowercase();
    let task = text_of(&rest.first()?["content"]);
    let requirement = task.strip_prefix("# Requirement ")?.split(':').next()?.to_string();
    let turn = rest.iter().filter(|m| m["role"] == "assistant").count();
    let results = match wire {
        Wire::OpenAi => rest.iter().filter(|m| m["role"] == "tool").map(|m| text_of(&m["content"])).collect(),
        Wire::Anthropic => rest
            .iter()
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .filter(|b| b["type"] == "tool_result")
            .map(|b| text_of(&b["content"]))
            .collect(),
    };
    Some(Turn { scenario: body["model"].as_str()?.to_string(), role, requirement, turn, task, key, results })
}

fn error_body(wire: Wire, status: u16, message: &str) -> Value {
    match wire {
        Wire::OpenAi => json!({"error": {"message": message, "type": "invalid_request_error", "code": status}}),
        Wire::Anthropic => json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
    }
}

fn answer(wire: Wire, turn: &Turn, reply: Reply) -> ResponseTemplate {
    let (say, calls, raw, cut) = match reply {
        Reply::Status(status, message) => {
            return ResponseTemplate::new(status)
                .insert_header("retry-after", "0")
                .set_body_json(error_body(wire, status, &message));
        }
        Reply::Stall => return ResponseTemplate::new(200).set_delay(Duration::from_secs(60)),
        Reply::Text(t) => (t, Vec::new(), None, false),
        Reply::Calls(calls) => (String::new(), calls, None, false),
        Reply::Raw(name, args) => (String::new(), Vec::new(), Some((name, args)), false),
        Reply::Cut(t, calls) => (t, calls, None, true),
    };
    let id = |i: usize| format!("call_{}_{}_{}", turn.role, turn.turn, i);
    match wire {
        Wire::OpenAi => {
            let mut tool_calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| {
                    json!({"id": id(i), "type": "function", "function": {"name": name, "arguments": args.to_string()}})
                })
                .collect();
            if let Some((name, args)) = raw {
                tool_calls
                    .push(json!({"id": id(9), "type": "function", "function": {"name": name, "arguments": args}}));
            }
            let finish = if cut {
                "length"
            } else if tool_calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            };
            let mut message =
                json!({"role": "assistant", "content": if say.is_empty() { Value::Null } else { json!(say) }});
            if !tool_calls.is_empty() {
                message["tool_calls"] = json!(tool_calls);
            }
            ResponseTemplate::new(200).set_body_json(json!({
                "id": "chatcmpl-local", "object": "chat.completion", "created": 1764547200, "model": turn.scenario,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 120 + 40 * turn.turn, "completion_tokens": 20, "total_tokens": 140 + 40 * turn.turn}
            }))
        }
        Wire::Anthropic => {
            let mut content = Vec::new();
            if !say.is_empty() {
                content.push(json!({"type": "text", "text": say}));
            }
            for (i, (name, args)) in calls.iter().enumerate() {
                content
                    .push(json!({"type": "tool_use", "id": format!("toolu_{}", id(i)), "name": name, "input": args}));
            }
            if let Some((name, _)) = raw {
                // Anthropic sends objects: malformed means the wrong fields.
                content.push(json!({"type": "tool_use", "id": "toolu_raw", "name": name, "input": {"titel": 5}}));
            }
            let stop = if cut {
                "max_tokens"
            } else if content.iter().any(|c| c["type"] == "tool_use") {
                "tool_use"
            } else {
                "end_turn"
            };
            ResponseTemplate::new(200).set_body_json(json!({
                "id": "msg_local", "type": "message", "role": "assistant", "model": turn.scenario,
                "content": content, "stop_reason": stop, "stop_sequence": null,
                "usage": {"input_tokens": 120 + 40 * turn.turn, "output_tokens": 20}
            }))
        }
    }
}

struct Responder {
    wire: Wire,
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Turn>>>,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return ResponseTemplate::new(400).set_body_json(error_body(self.wire, 400, "the body is not JSON"));
        };
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let key = match self.wire {
            Wire::OpenAi => header("authorization").trim_start_matches("Bearer ").to_string(),
            Wire::Anthropic => header("x-api-key").to_string(),
        };
        let Some(turn) = turn_of(&body, self.wire, key) else {
            return ResponseTemplate::new(400).set_body_json(error_body(self.wire, 400, "no system prompt or task"));
        };
        self.seen.lock().unwrap().push(turn.clone());
        let reply = (self.behaviour)(&turn);
        answer(self.wire, &turn, reply)
    }
}

/// A running model server: OpenAI at `{uri}/v1/chat/completions`, Anthropic at `{uri}/v1/messages`.
pub(crate) struct ModelServer {
    server: MockServer,
    seen: Arc<Mutex<Vec<Turn>>>,
}

impl ModelServer {
    pub(crate) async fn start(behaviour: Behaviour) -> ModelServer {
        let server = MockServer::start().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        for (path, wire) in [("/v1/chat/completions", Wire::OpenAi), ("/v1/messages", Wire::Anthropic)] {
            Mock::given(method("POST"))
                .and(wiremock::matchers::path(path))
                .respond_with(Responder { wire, behaviour: behaviour.clone(), seen: seen.clone() })
                .mount(&server)
                .await;
        }
        ModelServer { server, seen }
    }

    /// The `llm.base_url` for `wire`.
    pub(crate) fn base_url(&self, wire: Wire) -> String {
        match wire {
            Wire::OpenAi => format!("{}/v1", self.server.uri()),
            Wire::Anthropic => self.server.uri(),
        }
    }

    /// Every turn asked for so far.
    pub(crate) fn turns(&self) -> Vec<Turn> {
        self.seen.lock().unwrap().clone()
    }
}
