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
    let mut lines = text.lines().peekable();
    let mut ended = false;
    while let Some(line) = lines.next() {
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
