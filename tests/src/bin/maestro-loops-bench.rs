//! maestro-loops-bench: loops per daemon. For each N it starts a fresh
//! release `maestrod`, starts N demo loops in N separate projects at once, and
//! reports loops completed per minute, the daemon's peak RSS, and the p99
//! latency from an event's commit (its timestamp) to its delivery to a
//! client following the loop's stream (a sample of up to 50 loops).
//!
//! `cargo run --release -p maestro-tests --bin maestro-loops-bench -- --loops 10,100,1000`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use maestro_shared::v1::{self, loop_service_client::LoopServiceClient};
use tonic::transport::Endpoint;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The peak resident set of process `pid`, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Figures {
    loops: usize,
    succeeded: usize,
    seconds: f64,
    per_minute: f64,
    peak_rss_mib: f64,
    p50_ms: i64,
    p99_ms: i64,
    events: usize,
}

async fn run(n: usize) -> anyhow::Result<Figures> {
    let temp = tempfile::tempdir()?;
    let (mut child, addr) = maestro_tests::spawn_daemon(
        &temp.path().join("data"),
        &temp.path().join("maestrod.log"),
        &["--maintenance-interval", "3600", "--user-rate", "0", "--user-concurrency", "100000"].map(String::from),
    )?;
    let pid = child.id();
    let token = std::fs::read_to_string(temp.path().join("data/admin.token"))?;
    let channel = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
    let channel = maestro_tests::Bearer::new(&token).map_err(anyhow::Error::msg)?.connect(channel);
    let started = Instant::now();
    // Start every loop (32 requests in flight).
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let mut client = LoopServiceClient::new(channel.clone());
            let workspace = temp.path().join(format!("demo-{i}")).display().to_string();
            async move {
                let request = v1::StartLoopRequest {
                    project_id: format!("demo-{i}"),
                    task: "Build a to-do service: a REST API, a command-line client, and tests".into(),
                    demo: true,
                    workspace,
                    ..Default::default()
                };
                client.start_loop(request).await.map(|r| r.into_inner().loop_id)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("starting loops")?;
    eprintln!("  N={n}: {} loops started in {:.1} s", ids.len(), started.elapsed().as_secs_f64());
    // Follow a sample of loops from their first event; record commit → delivery latency.
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let followers: Vec<_> = ids
        .iter()
        .step_by((n / 50).max(1))
        .map(|id| {
            let (mut client, id, latencies) = (LoopServiceClient::new(channel.clone()), id.clone(), latencies.clone());
            tokio::spawn(async move {
                // Events committed before the follower asked are replays, not live deliveries.
                let subscribed = now_ms();
                let mut stream = client
                    .stream_loop_events(v1::StreamLoopEventsRequest { loop_id: id, from_seq: 0 })
                    .await?
                    .into_inner();
                while let Some(event) = stream.next().await {
                    let event = event?;
                    if event.time_ms >= subscribed {
                        latencies.lock().expect("latencies").push(now_ms() - event.time_ms);
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    // Wait until every loop has ended.
    let mut client = LoopServiceClient::new(channel.clone());
    let mut last_report = Instant::now();
    let succeeded = loop {
        let mut ended = 0;
        let mut succeeded = 0;
        let mut token = String::new();
        loop {
            let page = client
                .list_loops(v1::ListLoopsRequest { project_id: String::new(), page_size: 1000, page_token: token })
                .await?
                .into_inner();
            for l in &page.loops {
                match l.state() {
                    v1::LoopState::Succeeded => {
                        ended += 1;
                        succeeded += 1;
                    }
                    v1::LoopState::Failed
                    | v1::LoopState::Aborted
                    | v1::LoopState::Cancelled
                    | v1::LoopState::Escalated => ended += 1,
                    _ => {}
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("  N={n}: {ended}/{n} ended after {:.0} s", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        if ended == n {
            break succeeded;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_mib(pid);
    for follower in followers {
        let _ = follower.await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut latencies = latencies.lock().expect("latencies").clone();
    latencies.sort_unstable();
    Ok(Figures {
        loops: n,
        succeeded,
        seconds,
        per_minute: n as f64 / seconds * 60.0,
        peak_rss_mib: peak,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        events: latencies.len(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut sizes = vec![10, 100, 1000];
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--loops" => {
                let list = args.next().context("--loops needs a list like 10,100")?;
                sizes = list.split(',').map(|n| n.trim().parse()).collect::<Result<_, _>>().context("--loops")?;
            }
            "--json" => json = true,
            "--help" | "-h" => {
                println!("usage: maestro-loops-bench [--loops 10,100,1000] [--json]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let mut all = Vec::new();
    for n in sizes {
        eprintln!("starting {n} demo loops on a fresh maestrod …");
        all.push(run(n).await?);
    }
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|f| {
                serde_json::json!({"loops": f.loops, "succeeded": f.succeeded, "seconds": f.seconds,
                    "loops_per_minute": f.per_minute, "peak_rss_mib": f.peak_rss_mib,
                    "event_latency_p50_ms": f.p50_ms, "event_latency_p99_ms": f.p99_ms, "events_sampled": f.events})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("| loops | succeeded | wall time | loops/min | peak RSS | event latency p50 / p99 | events sampled |");
        println!("|---|---|---|---|---|---|---|");
        for f in &all {
            println!(
                "| {} | {} | {:.1} s | {:.0} | {:.0} MiB | {} / {} ms | {} |",
                f.loops, f.succeeded, f.seconds, f.per_minute, f.peak_rss_mib, f.p50_ms, f.p99_ms, f.events
            );
        }
    }
    Ok(())
}
