//! Both wire formats against a local HTTP server (wiremock) that answers the
//! way the real APIs do: multi-tool-call turns, tool results, usage fields,
//! 429 with Retry-After, 5xx, truncated JSON, bad keys and unknown models.

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::anthropic::Anthropic;
use super::http::RetryPolicy;
use super::openai::OpenAi;
use super::*;

fn fast() -> RetryPolicy {
    RetryPolicy { attempts: 3, base_delay: Duration::from_millis(1), ..RetryPolicy::default() }
}

fn request(messages: Vec<Message>) -> ChatRequest {
    ChatRequest {
        model: "gpt-4o-mini".into(),
        messages,
        tools: vec![ToolSpec {
            name: "write_file".into(),
            description: "Write a file in the workspace".into(),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}, "required": ["path", "content"]}),
        }],
        max_tokens: 1024,
        temperature: Some(0.0),
        on_retry: Default::default(),
    }
}

fn conversation() -> Vec<Message> {
    vec![
        Message::System { text: "You are the Backend agent.".into() },
        Message::User { text: "Implement R2: GET /todos".into() },
    ]
}

const OPENAI_TOOL_TURN: &str = r#"{
  "id": "chatcmpl-9x1",
  "object": "chat.completion",
  "created": 1733000000,
  "model": "gpt-4o-mini-2024-07-18",
  "choices": [{
    "index": 0,
    "message": {
      "role": "assistant",
      "content": null,
      "tool_calls": [
        {"id": "call_a1", "type": "function", "function": {"name": "write_file", "arguments": "{\"path\":\"src/api/todos.py\",\"content\":\"def list_todos():\\n    return []\\n\"}"}},
        {"id": "call_a2", "type": "function", "function": {"name": "write_file", "arguments": "{\"path\":\"src/api/__init__.py\",\"content\":\"\"}"}}
      ],
      "refusal": null
    },
    "logprobs": null,
    "finish_reason": "tool_calls"
  }],
  "usage": {"prompt_tokens": 412, "completion_tokens": 96, "total_tokens": 508},
  "system_fingerprint": "fp_0ba0d124f1"
}"#;

#[tokio::test]
async fn openai_multi_tool_call_turn() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-test"))
        .and(body_partial_json(json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "You are the Backend agent."}, {"role": "user", "content": "Implement R2: GET /todos"}],
            "tools": [{"type": "function", "function": {"name": "write_file"}}],
            "max_tokens": 1024
        })))
        .respond_with(ResponseTemplate::new(200).set_body_raw(OPENAI_TOOL_TURN, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    let provider = OpenAi::new(&format!("{}/v1", server.uri()), Some("sk-test".into()), fast());
    let response = provider.chat(&request(conversation())).await.unwrap();
    assert_eq!(response.stop, StopReason::ToolUse);
    assert_eq!(response.usage, TokenUsage { input_tokens: 412, output_tokens: 96 });
    assert_eq!(response.tool_calls.len(), 2);
    assert_eq!(response.tool_calls[0].id, "call_a1");
    let args: serde_json::Value = serde_json::from_str(&response.tool_calls[0].arguments).unwrap();
    assert_eq!(args["path"], "src/api/todos.py");
}

#[tokio::test]
async fn openai_sends_tool_results_and_reads_the_final_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({"messages": [
            {"role": "system"},
            {"role": "user"},
            {"role": "assistant", "tool_calls": [{"id": "call_a1", "type": "function", "function": {"name": "write_file"}}]},
            {"role": "tool", "tool_call_id": "call_a1", "content": "ERROR: denied by acl.write: role backend may write only src/api/**"}
        ]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-9x2", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Requirement R2 is done."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 520, "completion_tokens": 8, "total_tokens": 528}
        })))
        .mount(&server)
        .await;
    let mut messages = conversation();
    messages.push(Message::Assistant {
        text: String::new(),
        tool_calls: vec![ToolCall {
            id: "call_a1".into(),
            name: "write_file".into(),
            arguments: "{\"path\":\"x\"}".into(),
        }],
    });
    messages.push(Message::Tool {
        call_id: "call_a1".into(),
        content: "denied by acl.write: role backend may write only src/api/**".into(),
        is_error: true,
    });
    // No key: local servers (Ollama, vLLM) need none.
    let provider = OpenAi::new(&format!("{}/v1/", server.uri()), None, fast());
    let response = provider.chat(&request(messages)).await.unwrap();
    assert_eq!((response.text.as_str(), response.stop), ("Requirement R2 is done.", StopReason::EndTurn));
    assert!(response.tool_calls.is_empty());
}

#[tokio::test]
async fn retries_honour_retry_after_then_succeed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0").set_body_json(
            json!({"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests", "code": "rate_limit_exceeded"}}),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream connect error"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(OPENAI_TOOL_TURN, "application/json"))
        .mount(&server)
        .await;
    let provider = OpenAi::new(&format!("{}/v1", server.uri()), None, fast());
    let response = provider.chat(&request(conversation())).await.unwrap();
    assert_eq!(response.tool_calls.len(), 2);
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn errors_are_one_readable_line_each() {
    let server = MockServer::start().await;
    Mock::given(path("/bad-key/chat/completions"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "Incorrect API key provided: sk-wrong*********-123. You can find your API key at https://platform.openai.com/account/api-keys.", "type": "invalid_request_error", "code": "invalid_api_key"}})))
        .mount(&server)
        .await;
    Mock::given(path("/no-model/chat/completions"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.", "code": "model_not_found"}})))
        .mount(&server)
        .await;
    Mock::given(path("/truncated/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(&OPENAI_TOOL_TURN[..200], "application/json"))
        .mount(&server)
        .await;
    Mock::given(path("/down/chat/completions")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
    // A server that is busy in a different way each time is worth every retry.
    let tries = std::sync::atomic::AtomicUsize::new(0);
    Mock::given(path("/flaky/chat/completions"))
        .respond_with(move |_: &wiremock::Request| {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ResponseTemplate::new(503).set_body_string(format!("busy ({n})"))
        })
        .mount(&server)
        .await;
    Mock::given(path("/limited/chat/completions"))
        .respond_with(
            ResponseTemplate::new(429)
                .set_body_json(json!({"error": {"message": "Rate limit reached for gpt-4o-mini"}})),
        )
        .mount(&server)
        .await;

    let chat = |base: &str| {
        let provider = OpenAi::new(&format!("{}{base}", server.uri()), Some("sk-wrong-key-123".into()), fast());
        async move { provider.chat(&request(conversation())).await.unwrap_err() }
    };
    let auth = chat("/bad-key").await;
    assert!(matches!(auth, LlmError::Auth { .. }), "{auth:?}");
    assert!(!auth.to_string().contains("sk-wrong"), "the key is not echoed: {auth}");
    assert!(auth.to_string().contains("[redacted]"), "{auth}");
    assert!(matches!(chat("/no-model").await, LlmError::UnknownModel { .. }));
    assert!(matches!(chat("/truncated").await, LlmError::BadResponse { .. }));
    // The same server error twice is not transient: not retried a third time.
    assert!(matches!(chat("/down").await, LlmError::Server { status: 503, attempts: 2, .. }));
    assert!(matches!(chat("/flaky").await, LlmError::Server { status: 503, attempts: 3, .. }));
    let limited = chat("/limited").await;
    assert!(matches!(limited, LlmError::RateLimited { attempts: 3, .. }), "{limited:?}");
    assert!(
        limited.to_string().contains("Rate limit reached for gpt-4o-mini"),
        "the server's message is kept: {limited}"
    );
    for error in [auth, chat("/down").await] {
        assert_eq!(error.to_string().lines().count(), 1, "{error}");
    }

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let provider = OpenAi::new(&format!("http://{closed}/v1"), None, fast());
    let unreachable = provider.chat(&request(conversation())).await.unwrap_err();
    assert!(matches!(unreachable, LlmError::Unreachable { .. }), "{unreachable:?}");
    assert!(unreachable.to_string().contains("llm.base_url"));
}

#[tokio::test]
async fn anthropic_tool_use_and_tool_result_blocks() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", "sk-ant-test"))
        .and(header("anthropic-version", "2023-06-01"))
        .and(body_partial_json(json!({
            "model": "claude-sonnet-4-5",
            "system": "You are the Backend agent.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Implement R2: GET /todos"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Writing the handler."}, {"type": "tool_use", "id": "toolu_01", "name": "write_file"}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "is_error": false}]}
            ],
            "tools": [{"name": "write_file", "input_schema": {"type": "object"}}]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "text", "text": "Now the tests."},
                {"type": "tool_use", "id": "toolu_02", "name": "write_file", "input": {"path": "tests/test_todos.py", "content": "def test_list():\n    assert True\n"}},
                {"type": "tool_use", "id": "toolu_03", "name": "run_command", "input": {"argv": ["python", "-m", "pytest", "-q"]}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 733, "output_tokens": 141, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        })))
        .mount(&server)
        .await;
    let mut messages = conversation();
    messages.push(Message::Assistant {
        text: "Writing the handler.".into(),
        tool_calls: vec![ToolCall {
            id: "toolu_01".into(),
            name: "write_file".into(),
            arguments: r#"{"path":"src/api/todos.py","content":"x"}"#.into(),
        }],
    });
    messages.push(Message::Tool { call_id: "toolu_01".into(), content: "wrote 1 byte".into(), is_error: false });
    let mut req = request(messages);
    req.model = "claude-sonnet-4-5".into();
    let provider = Anthropic::new(&server.uri(), "sk-ant-test".into(), fast());
    let response = provider.chat(&req).await.unwrap();
    assert_eq!(response.text, "Now the tests.");
    assert_eq!(response.stop, StopReason::ToolUse);
    assert_eq!(response.usage.total(), 874);
    let names: Vec<&str> = response.tool_calls.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["write_file", "run_command"]);
    let args: serde_json::Value = serde_json::from_str(&response.tool_calls[1].arguments).unwrap();
    assert_eq!(args["argv"][2], "pytest");
}

#[tokio::test]
async fn anthropic_overloaded_is_retried_and_errors_are_typed() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/messages"))
        .respond_with(
            ResponseTemplate::new(529).set_body_json(
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_02", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 2}
        })))
        .mount(&server)
        .await;
    let provider = Anthropic::new(&server.uri(), "sk-ant".into(), fast());
    let response = provider.chat(&request(conversation())).await.unwrap();
    assert_eq!((response.text.as_str(), response.stop), ("Done.", StopReason::EndTurn));

    let server = MockServer::start().await;
    Mock::given(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"type": "error", "error": {"type": "not_found_error", "message": "model: claude-9"}}),
        ))
        .mount(&server)
        .await;
    let provider = Anthropic::new(&server.uri(), "sk-ant".into(), fast());
    let error = provider.chat(&request(conversation())).await.unwrap_err();
    assert!(matches!(error, LlmError::UnknownModel { .. }), "{error:?}");
}

/// What `.maestro/config.yaml` says reaches the wire: tool_choice, max_tokens,
/// temperature (left out when unset), extra headers; an assistant tool-call
/// turn goes with `content: ""` (servers with strict schemas refuse null);
/// each retry is told.
#[tokio::test]
async fn configured_knobs_reach_the_wire() {
    use super::config::RawLlm;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("x-team", "platform"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(OPENAI_TOOL_TURN, "application/json"))
        .mount(&server)
        .await;
    let text = format!(
        "llm:\n  provider: openai\n  base_url: {}/v1\n  max_tokens: 777\n  retries: 0\n  headers: {{x-team: platform}}\n  roles:\n    review:\n      tool_choice: 'off'\n      temperature: 0.3\n",
        server.uri()
    );
    let raw = RawLlm::from_project_config(&text).unwrap();
    let workspace = std::path::Path::new("/w");
    for (role, tool_choice, temperature) in [("backend", Some("auto"), None), ("review", None, Some(0.3))] {
        let settings = raw.for_role(role, workspace).unwrap();
        assert_eq!(settings.max_tokens, Some(777));
        let provider = settings.provider(role, settings.policy).unwrap();
        let mut messages = conversation();
        messages.push(Message::Assistant {
            text: String::new(),
            tool_calls: vec![ToolCall { id: "call_1".into(), name: "write_file".into(), arguments: "{}".into() }],
        });
        messages.push(Message::Tool { call_id: "call_1".into(), content: "wrote x".into(), is_error: false });
        let mut req = request(messages);
        req.max_tokens = settings.max_tokens.unwrap();
        req.temperature = settings.temperature;
        provider.chat(&req).await.unwrap();
        let sent = server.received_requests().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&sent.last().unwrap().body).unwrap();
        assert_eq!(body["max_tokens"], 777, "{role}");
        assert_eq!(body["tool_choice"].as_str(), tool_choice, "{role}: {body}");
        assert_eq!(body["temperature"].as_f64().map(|t| (t * 10.0).round() / 10.0), temperature, "{role}");
        assert_eq!(body["messages"][2]["content"], "", "the tool-call turn's content is a string");
    }
    // Retries are told as they happen.
    let busy = MockServer::start().await;
    let tries = std::sync::atomic::AtomicUsize::new(0);
    Mock::given(path("/v1/chat/completions"))
        .respond_with(move |_: &wiremock::Request| {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 0 {
                ResponseTemplate::new(429).set_body_json(json!({"error": {"message": "Rate limit reached"}}))
            } else {
                ResponseTemplate::new(200).set_body_raw(OPENAI_TOOL_TURN, "application/json")
            }
        })
        .mount(&busy)
        .await;
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = told.clone();
    let mut req = request(conversation());
    req.on_retry = super::RetryHook(Some(std::sync::Arc::new(move |m: &str| sink.lock().unwrap().push(m.to_string()))));
    OpenAi::new(&format!("{}/v1", busy.uri()), None, fast()).chat(&req).await.unwrap();
    assert_eq!(*told.lock().unwrap(), ["model retry 2/3 after 429: Rate limit reached"]);
}

/// A server that stalls is asked twice at most, whatever `llm.retries` says: five
/// attempts of a 300 s timeout would be 25 minutes of silence.
#[tokio::test]
async fn a_stalled_server_is_asked_twice_at_most() {
    let stalled = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(OPENAI_TOOL_TURN, "application/json")
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&stalled)
        .await;
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = told.clone();
    let mut req = request(conversation());
    req.on_retry = super::RetryHook(Some(std::sync::Arc::new(move |m: &str| sink.lock().unwrap().push(m.to_string()))));
    let policy = RetryPolicy { attempts: 5, request_timeout: Duration::from_millis(300), ..fast() };
    let error = OpenAi::new(&format!("{}/v1", stalled.uri()), None, policy).chat(&req).await.unwrap_err().to_string();
    assert!(error.contains("no answer within"), "{error}");
    assert_eq!(stalled.received_requests().await.unwrap().len(), 2, "one retry after a timeout, not four");
    assert_eq!(told.lock().unwrap().len(), 1, "the one retry was told: {:?}", told.lock().unwrap());
}
