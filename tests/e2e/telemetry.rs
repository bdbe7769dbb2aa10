//! What an operator watches, through the real daemon: `/metrics` in the
//! Prometheus text format, counting what really happened.

use std::collections::BTreeMap;

use maestro_tests::Daemon;

/// One sample: metric name and labels → value.
type Samples = BTreeMap<String, f64>;

/// Parses the exposition text strictly: `# TYPE/HELP/UNIT` lines, `# EOF` at
/// the end, and `name{label="value",…} number` samples. Panics on anything else.
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    let mut ended = false;
    for line in text.lines() {
        assert!(!ended, "nothing after # EOF: {line}");
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let kind = meta.split_whitespace().next().unwrap_or_default();
            assert!(["TYPE", "HELP", "UNIT"].contains(&kind), "bad comment line: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            let labels = series[name_end..].strip_prefix('{').and_then(|l| l.strip_suffix('}'));
            let labels = labels.unwrap_or_else(|| panic!("bad labels: {line}"));
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (key, quoted) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label {pair}: {line}"));
                assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad label name: {line}");
                assert!(!quoted.trim_end_matches('"').contains('"'), "unescaped quote: {line}");
            }
        }
        samples.insert(series.to_string(), value);
    }
    assert!(ended, "the text ends with # EOF");
    samples
}

fn metrics_addr(daemon: &Daemon) -> String {
    for _ in 0..50 {
        let log = daemon.log();
        if let Some(line) = log.lines().find(|l| l.contains("metrics served at /metrics")) {
            let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap();
            return addr.to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no metrics address in the log:\n{}", daemon.log());
}

async fn scrape(addr: &str) -> Samples {
    let response = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    parse(&response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let daemon = Daemon::start_with(&["--metrics-listen", "127.0.0.1:0"]).unwrap();
    let addr = metrics_addr(&daemon);
    let before = scrape(&addr).await;
    let revision = before["maestro_store_revision"];

    daemon.ctl(&["project", "create", "shop"]).ok();
    for title in ["One", "Two", "Three"] {
        daemon.ctl(&["-p", "shop", "req", "add", title]).ok();
    }
    let out = maestro_tests::ctl_command(daemon.addr(), std::path::Path::new("/"), &["info"])
        .env("MAESTRO_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let work = tempfile::tempdir().unwrap();
    let demo = work.path().join("demo");
    let run = daemon.ctl(&["run", "--demo", "--workspace", demo.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");

    let after = scrape(&addr).await;
    let get = |series: &str| after.get(series).copied().unwrap_or(0.0);
    let created = "maestro_rpc_requests_total{method=\"/maestro.v1.RequirementService/CreateRequirement\",code=\"OK\"}";
    assert_eq!(get(created), 3.0, "{after:#?}");
    let unauthenticated = after
        .iter()
        .filter(|(k, _)| k.contains("/maestro.v1.SystemService/") && k.contains("code=\"UNAUTHENTICATED\""))
        .map(|(_, v)| v)
        .sum::<f64>();
    assert!(unauthenticated >= 1.0, "the refused call is counted: {after:#?}");
    assert!(
        get("maestro_rpc_duration_seconds_count{method=\"/maestro.v1.RequirementService/CreateRequirement\"}") >= 3.0
    );
    assert!(get("maestro_store_revision") > revision + 3.0, "the revision moved");
    assert_eq!(get("maestro_loops{state=\"SUCCEEDED\"}"), 1.0, "the demo's loop");
    assert_eq!(get("maestro_loops{state=\"RUNNING\"}"), 0.0);
    assert!(get("maestro_store_write_duration_seconds_count") > 3.0, "each group commit is timed");
    assert!(after.keys().any(|k| k.starts_with("maestro_watchers")));

    // Made-up paths do not make up label values.
    let channel = tonic::transport::Endpoint::from_shared(daemon.url()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/maestro.v1.Nope/Invented");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let _ = grpc.unary(tonic::Request::new(()), path, codec).await;
    let last = scrape(&addr).await;
    assert!(!last.keys().any(|k| k.contains("Invented")), "unknown methods count as other");
    assert!(last.keys().any(|k| k.contains("method=\"other\"")));
}

/// A stand-in for an OpenTelemetry collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .any(|a| a.key == "service.name" && format!("{:?}", a.value).contains("maestrod"));
            assert!(service, "spans come from service.name=maestrod");
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let value = span.attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans of RPCs, the loop, its
/// epochs, agent runs, model calls (with GenAI attributes) and harness actions
/// reach the collector, flushed at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
        collector.clone(),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut daemon =
        Daemon::start_with_env(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "200")])
            .unwrap();
    let work = tempfile::tempdir().unwrap();
    let demo = work.path().join("demo");
    let run = daemon.ctl(&["run", "--demo", "--workspace", demo.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    let status = daemon.terminate().unwrap();
    assert!(status.success(), "{}", daemon.log());

    let spans = collector.0.lock().unwrap().clone();
    let named = |name: &str| spans.iter().filter(|s| s.name == name).count();
    for name in ["rpc", "loop", "epoch", "agent", "action"] {
        assert!(named(name) > 0, "no {name} span among {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    }
    let chats: Vec<_> = spans.iter().filter(|s| s.name.starts_with("chat ")).collect();
    assert!(!chats.is_empty(), "model calls are spans");
    for chat in &chats {
        assert_eq!(attribute(chat, "gen_ai.operation.name").as_deref(), Some("chat"));
        assert!(attribute(chat, "gen_ai.request.model").is_some_and(|m| chat.name.ends_with(&m)));
        assert!(attribute(chat, "gen_ai.provider.name").is_some());
        assert!(attribute(chat, "gen_ai.usage.input_tokens").is_some(), "{chat:?}");
        assert!(attribute(chat, "gen_ai.response.finish_reasons").is_some());
    }
    // A model call happens inside an agent run, inside an epoch, inside the loop.
    let by_id: std::collections::HashMap<_, _> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let mut ancestors = Vec::new();
    let mut parent = chats[0].parent_span_id.clone();
    while let Some(span) = by_id.get(&parent) {
        ancestors.push(span.name.clone());
        parent = span.parent_span_id.clone();
    }
    for name in ["agent", "epoch", "loop"] {
        assert!(ancestors.iter().any(|a| a == name), "{name} above a model call: {ancestors:?}");
    }
}
