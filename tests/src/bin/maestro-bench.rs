//! maestro-bench: a load generator against a live `maestrod` on loopback.
//!
//! In one run it measures, with a fixed number of requests in flight: the
//! ceiling (a no-op RPC served the same way), point reads, durable conditional
//! writes, and watch delivery latency to many watchers while writes run at a
//! fixed rate. Every figure is printed with its ratio to the ceiling measured
//! in the same run.
//!
//! `cargo run --release -p maestro-tests --bin maestro-bench -- --help`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use maestro_shared::v1::{
    self, memory_service_client::MemoryServiceClient, project_service_client::ProjectServiceClient,
    system_service_client::SystemServiceClient, watch_service_client::WatchServiceClient,
};
use maestro_tests::Conn as Channel;
use tonic::transport::Endpoint;

struct Options {
    seconds: u64,
    rounds: usize,
    in_flight: usize,
    connections: usize,
    watchers: usize,
    watch_rate: u64,
    json: bool,
    /// An already running daemon (`host:port`); otherwise one is started.
    server: Option<String>,
    /// An etcd (`host:port`) to run the same workload against in the same run.
    etcd: Option<String>,
    /// Grow the store to this many revisions, then measure a compaction under
    /// load and (for a daemon this run started) restarts (0: skip).
    history: u64,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        seconds: 3,
        rounds: 3,
        in_flight: 64,
        connections: 4,
        watchers: 100,
        watch_rate: 1000,
        json: false,
        server: None,
        etcd: None,
        history: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name}: not a number"))
        };
        match arg.as_str() {
            "--seconds" => options.seconds = value("--seconds")?.max(1),
            "--rounds" => options.rounds = value("--rounds")?.max(1) as usize,
            "--in-flight" => options.in_flight = value("--in-flight")?.max(1) as usize,
            "--connections" => options.connections = value("--connections")?.max(1) as usize,
            "--watchers" => options.watchers = value("--watchers")?.max(1) as usize,
            "--watch-rate" => options.watch_rate = value("--watch-rate")?.max(1),
            "--json" => options.json = true,
            "--server" => options.server = Some(args.next().context("--server needs host:port")?),
            "--history" => options.history = value("--history")?,
            "--etcd" if cfg!(not(feature = "etcd")) => {
                anyhow::bail!("this maestro-bench was built without etcd: add --features etcd (needs protoc)")
            }
            "--etcd" => options.etcd = Some(args.next().context("--etcd needs host:port")?),
            "--store" => {
                let store = args.next().context("--store needs a location (sled, etcd://HOST:PORT/PREFIX)")?;
                let _ = STORE.set(store);
            }
            "--help" | "-h" => {
                println!(
                    "usage: maestro-bench [--seconds N per phase (3)] [--rounds N (3)] [--in-flight N (64)] [--connections N (4)] \
                     [--watchers N (100)] [--watch-rate WRITES_PER_SEC (1000)] [--history REVISIONS (0)] [--server HOST:PORT] [--store LOCATION: the started daemon's --store] \
                     [--etcd HOST:PORT] [--json]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(options)
}

/// A connection sending the token: `MAESTRO_TOKEN`, else the admin token of the daemon this run started.
async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
    let token = TOKEN.get().cloned().unwrap_or_default();
    Ok(maestro_tests::Bearer::new(&token).map_err(anyhow::Error::msg)?.connect(channel))
}

static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs `op` from `in_flight` concurrent workers for `seconds`; returns completed ops per second.
async fn saturate<C, F, Fut>(channels: &[C], in_flight: usize, seconds: u64, op: F) -> anyhow::Result<f64>
where
    C: Clone + Send + 'static,
    F: Fn(C, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..in_flight {
        let channel = channels[worker % channels.len()].clone();
        let (done, stop, op) = (done.clone(), stop.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                op(channel.clone(), worker, i).await?;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    // Warm up for a fraction of the time, then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_count = done.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let count = done.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    Ok(count as f64 / elapsed)
}

/// Issues `write(n)` `rate` times a second for `seconds`, on schedule rather
/// than one after another (a durable write's latency must not lower the
/// rate); returns how many were issued, once all have been answered.
async fn write_at_rate<F, Fut>(rate: u64, seconds: u64, write: F) -> anyhow::Result<u64>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut pending = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        pending.spawn(write(sent));
        while let Some(done) = pending.try_join_next() {
            done??;
        }
        sent += 1;
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    Ok(sent)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

/// What the etcd run measured.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
struct EtcdFigures {
    reads: Vec<f64>,
    writes: Vec<f64>,
    watch_p50: f64,
    watch_p99: f64,
    delivered: usize,
    expected: u64,
}

/// The same workload against etcd: serializable point reads, conditional
/// writes (a Txn comparing the key's mod_revision, then a put: durable once
/// answered, as etcd syncs its log), and watch delivery to as many watchers on
/// their own connections at the same write rate.
#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, WatchOptions};

    pub(super) async fn run(options: &Options, addr: &str) -> anyhow::Result<EtcdFigures> {
        let prefix = format!("maestro-bench/{}/", std::process::id());
        let mut clients = Vec::new();
        for _ in 0..options.connections {
            clients.push(Client::connect([addr], None).await.with_context(|| format!("connecting to etcd at {addr}"))?);
        }
        let keys = 512u64;
        let mut kv = clients[0].kv_client();
        for k in 0..keys {
            kv.put(format!("{prefix}k{k}"), "x".repeat(200), None).await?;
        }
        let revisions: Arc<Vec<std::sync::Mutex<i64>>> =
            Arc::new((0..options.in_flight).map(|_| std::sync::Mutex::new(0)).collect());
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        for round in 1..=options.rounds {
            eprintln!("etcd round {round}/{}: point reads, durable conditional writes …", options.rounds);
            let p = prefix.clone();
            reads.push(
                saturate(&clients, options.in_flight, options.seconds, move |client: Client, worker, i| {
                    let key = format!("{p}k{}", (worker as u64 * 7919 + i) % keys);
                    async move {
                        client.kv_client().get(key, Some(GetOptions::new().with_serializable())).await?;
                        Ok(())
                    }
                })
                .await?,
            );
            let (p, revisions) = (prefix.clone(), revisions.clone());
            writes.push(
                saturate(&clients, options.in_flight, options.seconds, move |client: Client, worker, i| {
                    let (key, revisions) = (format!("{p}w{worker}"), revisions.clone());
                    async move {
                        let last = *revisions[worker].lock().expect("revision lock");
                        let txn = Txn::new()
                            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, last)])
                            .and_then([TxnOp::put(key, format!("{i:0>200}"), None)]);
                        let reply = client.kv_client().txn(txn).await?;
                        anyhow::ensure!(reply.succeeded(), "the compare failed: the bench's own bookkeeping is off");
                        *revisions[worker].lock().expect("revision lock") = reply.header().map_or(0, |h| h.revision());
                        Ok(())
                    }
                })
                .await?,
            );
        }

        eprintln!("etcd watch latency: {} watchers, writes at {}/s …", options.watchers, options.watch_rate);
        let epoch = Instant::now();
        let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
        let mut tasks = Vec::new();
        let ticker = format!("{prefix}ticker/");
        for _ in 0..options.watchers {
            let mut client = Client::connect([addr], None).await?;
            let mut stream = client.watch(ticker.clone(), Some(WatchOptions::new().with_prefix())).await?;
            let latencies = latencies.clone();
            tasks.push(tokio::spawn(async move {
                let _client = client;
                while let Ok(Some(message)) = stream.message().await {
                    let now = epoch.elapsed().as_micros() as u64;
                    let mine: Vec<u64> = message
                        .events()
                        .iter()
                        .filter_map(|e| e.kv()?.value_str().ok()?.parse::<u64>().ok())
                        .map(|sent| now.saturating_sub(sent))
                        .collect();
                    latencies.lock().expect("latency lock").extend(mine);
                }
            }));
        }
        let kv = clients[0].kv_client();
        let sent = write_at_rate(options.watch_rate, options.seconds.max(5), |n| {
            let (mut kv, key) = (kv.clone(), format!("{ticker}t{}", n % 64));
            async move {
                let stamp = epoch.elapsed().as_micros().to_string();
                kv.put(key, stamp, None).await?;
                Ok(())
            }
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for task in &tasks {
            task.abort();
        }
        let mut latencies = std::mem::take(&mut *latencies.lock().expect("latency lock"));
        latencies.sort_unstable();
        let _ = clients[0].delete(prefix, Some(DeleteOptions::new().with_prefix())).await;
        Ok(EtcdFigures {
            reads,
            writes,
            watch_p50: percentile(&latencies, 0.50),
            watch_p99: percentile(&latencies, 0.99),
            delivered: latencies.len(),
            expected: sent * options.watchers as u64,
        })
    }
}

/// The daemon's arguments: the ceiling of the server, not of one user's quota,
/// and no compaction but the one the history phase asks for.
fn daemon_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "--maintenance-interval",
        "3600",
        "--user-rate",
        "0",
        "--user-concurrency",
        "100000",
        "--user-streams",
        "100000",
    ]
    .map(String::from)
    .to_vec();
    if let Some(store) = STORE.get() {
        args.extend(["--store".to_string(), store.clone()]);
    }
    args
}

/// `--store` of the daemons this run starts (default: their own sled store).
static STORE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What the history phases measured.
#[derive(Default)]
struct HistoryReport {
    revisions: u64,
    fill_writes_per_sec: f64,
    compact_to: u64,
    compact_ack_ms: f64,
    write_p99_before_compaction_ms: f64,
    write_p99_during_compaction_ms: f64,
    writes_during_compaction: usize,
    restart_after_kill9_ms: Option<f64>,
    restart_after_sigterm_ms: Option<f64>,
}

/// Grows the store to `options.history` revisions; measures write latency at
/// the watch rate before and during a compaction of all but the last 1,000
/// revisions; then, for a daemon this run started, the time from starting it
/// again (after `kill -9`, then after SIGTERM) to its first answered read.
async fn history_phases(
    options: &Options,
    channels: &[Channel],
    temp: &std::path::Path,
    daemon: &mut Option<std::process::Child>,
) -> anyhow::Result<HistoryReport> {
    let mut report = HistoryReport::default();
    let mut system = SystemServiceClient::new(channels[0].clone());
    let start = system.get_info(v1::GetInfoRequest {}).await?.into_inner().revision;
    let reached = Arc::new(AtomicU64::new(start));
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..options.in_flight {
        let channel = channels[worker % channels.len()].clone();
        let (reached, stop, target) = (reached.clone(), stop.clone(), options.history);
        workers.push(tokio::spawn(async move {
            let mut memory = MemoryServiceClient::new(channel);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && reached.load(Ordering::Relaxed) < target {
                let request =
                    memory_put(&format!("fill{worker}"), format!("k{}", i % 50), format!("{i:0>200}"), String::new());
                let reply = memory.put_memory(request).await?.into_inner();
                reached.fetch_max(reply.meta.map_or(0, |m| m.mod_revision), Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    let mut last_report = Instant::now();
    while reached.load(Ordering::Relaxed) < options.history {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_report.elapsed() >= Duration::from_secs(5) {
            let now = reached.load(Ordering::Relaxed);
            eprintln!(
                "history: {now} of {} revisions ({:.0} writes/s)",
                options.history,
                (now - start) as f64 / began.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if workers.iter().any(|w| w.is_finished()) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    report.revisions = reached.load(Ordering::Relaxed);
    report.fill_writes_per_sec = (report.revisions - start) as f64 / began.elapsed().as_secs_f64();

    eprintln!("compaction under {} writes/s …", options.watch_rate);
    let epoch = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let load = {
        let (samples, memory, rate) =
            (samples.clone(), MemoryServiceClient::new(channels[1 % channels.len()].clone()), options.watch_rate);
        let stop = Arc::new(AtomicBool::new(false));
        let handle_stop = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut pending = tokio::task::JoinSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (mut memory, samples) = (memory.clone(), samples.clone());
                let key = format!("c{}", n % 50);
                pending.spawn(async move {
                    let sent = epoch.elapsed().as_micros() as u64;
                    memory.put_memory(memory_put("compaction", key, n.to_string(), String::new())).await?;
                    let took = epoch.elapsed().as_micros() as u64 - sent;
                    samples.lock().expect("samples lock").push((sent, took));
                    anyhow::Ok(())
                });
                while let Some(done) = pending.try_join_next() {
                    done??;
                }
                n += 1;
            }
            while let Some(done) = pending.join_next().await {
                done??;
            }
            anyhow::Ok(())
        });
        (task, handle_stop)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let revision = system.get_info(v1::GetInfoRequest {}).await?.into_inner().revision;
    report.compact_to = revision.saturating_sub(1000);
    let compact_started = epoch.elapsed().as_micros() as u64;
    system.compact(v1::CompactRequest { revision: report.compact_to }).await?;
    report.compact_ack_ms = (epoch.elapsed().as_micros() as u64 - compact_started) as f64 / 1000.0;
    tokio::time::sleep(Duration::from_secs(options.seconds.max(5))).await;
    load.1.store(true, Ordering::Relaxed);
    load.0.await??;
    let samples = std::mem::take(&mut *samples.lock().expect("samples lock"));
    let (mut before, mut during): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    for (sent, took) in samples {
        if sent < compact_started { before.push(took) } else { during.push(took) }
    }
    before.sort_unstable();
    during.sort_unstable();
    report.write_p99_before_compaction_ms = percentile(&before, 0.99);
    report.write_p99_during_compaction_ms = percentile(&during, 0.99);
    report.writes_during_compaction = during.len();

    if let Some(child) = daemon.as_mut() {
        let data = temp.join("data");
        let log = temp.join("maestrod.log");
        let expect = report.revisions;
        let restart = |child: &mut std::process::Child| -> anyhow::Result<(std::process::Child, f64)> {
            let _ = child.wait();
            let started = Instant::now();
            let (next, addr) = maestro_tests::spawn_daemon(&data, &log, &daemon_args())?;
            let runtime = tokio::runtime::Handle::current();
            let revision = tokio::task::block_in_place(|| {
                runtime.block_on(async {
                    let channel = connect(&addr).await?;
                    let info = SystemServiceClient::new(channel).get_info(v1::GetInfoRequest {}).await?.into_inner();
                    anyhow::Ok(info.revision)
                })
            })?;
            let took = started.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(revision >= expect, "restarted at revision {revision}, below {expect}");
            Ok((next, took))
        };
        eprintln!("restart after kill -9 at {expect} revisions …");
        child.kill()?;
        let (mut next, took) = restart(child)?;
        report.restart_after_kill9_ms = Some(took);
        eprintln!("restart after SIGTERM …");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(next.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        let (again, took) = restart(&mut next)?;
        report.restart_after_sigterm_ms = Some(took);
        *child = again;
    }
    Ok(report)
}

fn memory_put(agent: &str, key: String, value: String, etag: String) -> v1::PutMemoryRequest {
    v1::PutMemoryRequest { project_id: "bench".into(), agent: agent.into(), key, value, ttl_seconds: 0, etag }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    let temp = tempfile::tempdir()?;
    let temp = match std::env::var_os("MAESTRO_BENCH_KEEP") {
        // Keep the daemon's data and log (for looking at a store of this size afterwards).
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            std::path::PathBuf::from(dir)
        }
        None => temp.path().to_path_buf(),
    };
    let (mut daemon, addr) = match &options.server {
        Some(addr) => (None, addr.clone()),
        None => {
            let (child, addr) = maestro_tests::spawn_daemon(
                &temp.as_path().join("data"),
                &temp.as_path().join("maestrod.log"),
                &daemon_args(),
            )?;
            (Some(child), addr)
        }
    };
    let token = std::env::var("MAESTRO_TOKEN")
        .ok()
        .or_else(|| std::fs::read_to_string(temp.as_path().join("data/admin.token")).ok())
        .unwrap_or_default();
    let _ = TOKEN.set(token.trim().to_string());
    eprintln!(
        "maestrod on {addr}; {} s per phase, {} in flight over {} connections",
        options.seconds, options.in_flight, options.connections
    );
    let mut channels = Vec::new();
    for _ in 0..options.connections {
        channels.push(connect(&addr).await?);
    }
    ProjectServiceClient::new(channels[0].clone())
        .create_project(v1::CreateProjectRequest { id: "bench".into(), ..Default::default() })
        .await
        .context("creating project bench (against --server, it must not exist yet)")?;
    let keys = 512;
    let mut memory = MemoryServiceClient::new(channels[0].clone());
    for k in 0..keys {
        memory.put_memory(memory_put("reader", format!("k{k}"), "x".repeat(200), String::new())).await?;
    }

    // Each worker owns one key and always sends the etag it last saw: every write is conditional and succeeds.
    let etags: Arc<Vec<std::sync::Mutex<String>>> =
        Arc::new((0..options.in_flight).map(|_| std::sync::Mutex::new("0".to_string())).collect());
    // The phases run in rounds, so that every ratio compares figures taken
    // minutes apart at most; the median round is reported.
    let (mut ceilings, mut read_rates, mut write_rates) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=options.rounds {
        eprintln!("round {round}/{}: no-op RPC, point reads, durable conditional writes …", options.rounds);
        ceilings.push(
            saturate(&channels, options.in_flight, options.seconds, |channel, _, _| async move {
                SystemServiceClient::new(channel).ping(v1::PingRequest {}).await?;
                Ok(())
            })
            .await?,
        );
        read_rates.push(
            saturate(&channels, options.in_flight, options.seconds, move |channel, worker, i| async move {
                let key = format!("k{}", (worker as u64 * 7919 + i) % keys);
                let request = v1::GetMemoryRequest { project_id: "bench".into(), agent: "reader".into(), key };
                MemoryServiceClient::new(channel).get_memory(request).await?;
                Ok(())
            })
            .await?,
        );
        let etags = etags.clone();
        write_rates.push(
            saturate(&channels, options.in_flight, options.seconds, move |channel, worker, i| {
                let etags = etags.clone();
                async move {
                    let etag = etags[worker].lock().expect("etag lock").clone();
                    let request = memory_put("writer", format!("w{worker}"), format!("{i:0>200}"), etag);
                    let reply = MemoryServiceClient::new(channel).put_memory(request).await?.into_inner();
                    *etags[worker].lock().expect("etag lock") = reply.meta.map(|m| m.etag).unwrap_or_default();
                    Ok(())
                }
            })
            .await?,
        );
    }
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let read_ratios: Vec<f64> = read_rates.iter().zip(&ceilings).map(|(r, c)| r / c).collect();
    let write_ratios: Vec<f64> = write_rates.iter().zip(&ceilings).map(|(w, c)| w / c).collect();
    let (ceiling, reads, writes) = (median(&ceilings), median(&read_rates), median(&write_rates));
    let (read_ratio, write_ratio) = (median(&read_ratios), median(&write_ratios));

    eprintln!("watch latency: {} watchers, writes at {}/s …", options.watchers, options.watch_rate);
    let epoch = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut watcher_tasks = Vec::new();
    for _ in 0..options.watchers {
        let channel = connect(&addr).await?;
        let mut stream = WatchServiceClient::new(channel)
            .watch(v1::WatchRequest { project_id: "bench".into(), prefix: "memory/ticker/".into(), start_revision: 0 })
            .await?
            .into_inner();
        stream.next().await.context("watch confirmation")??;
        let latencies = latencies.clone();
        watcher_tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let now = epoch.elapsed().as_micros() as u64;
                let mut mine = Vec::with_capacity(message.events.len());
                for event in message.events {
                    if let Some(sent) = serde_json::from_str::<serde_json::Value>(&event.value_json)
                        .ok()
                        .and_then(|v| v["value"].as_str().and_then(|s| s.parse::<u64>().ok()))
                    {
                        mine.push(now.saturating_sub(sent));
                    }
                }
                latencies.lock().expect("latency lock").extend(mine);
            }
        }));
    }
    let writer = MemoryServiceClient::new(channels[0].clone());
    let watch_seconds = options.seconds.max(5);
    let sent = write_at_rate(options.watch_rate, watch_seconds, |n| {
        let (mut writer, key) = (writer.clone(), format!("t{}", n % 64));
        async move {
            let stamp = epoch.elapsed().as_micros().to_string();
            writer.put_memory(memory_put("ticker", key, stamp, String::new())).await?;
            Ok(())
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for task in &watcher_tasks {
        task.abort();
    }
    let history = if options.history > 0 {
        Some(history_phases(&options, &channels, temp.as_path(), &mut daemon).await?)
    } else {
        None
    };
    #[cfg(feature = "etcd")]
    let etcd = match &options.etcd {
        Some(addr) => Some(etcd::run(&options, addr).await?),
        None => None,
    };
    #[cfg(not(feature = "etcd"))]
    let etcd: Option<EtcdFigures> = None;
    // Each etcd figure as a ratio to this run's no-op ceiling and maestrod's figure over etcd's.
    let etcd_summary = etcd.as_ref().map(|e| {
        let (reads_e, writes_e) = (median(&e.reads), median(&e.writes));
        serde_json::json!({
            "point_reads_per_sec": reads_e,
            "point_reads_ratio": reads_e / ceiling,
            "durable_writes_per_sec": writes_e,
            "durable_writes_ratio": writes_e / ceiling,
            "maestrod_over_etcd_reads": reads / reads_e,
            "maestrod_over_etcd_writes": writes / writes_e,
            "watch_p50_ms": e.watch_p50,
            "watch_p99_ms": e.watch_p99,
            "watch_events_delivered": e.delivered,
            "watch_events_expected": e.expected,
        })
    });
    if let Some(daemon) = daemon.as_mut() {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().expect("latency lock"));
    latencies.sort_unstable();
    let expected = sent * options.watchers as u64;
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);

    let achieved_rate = sent as f64 / watch_seconds as f64;
    if options.json {
        let report = serde_json::json!({
            "in_flight": options.in_flight,
            "noop_rpc_per_sec": ceiling,
            "point_reads_per_sec": reads,
            "point_reads_ratio": read_ratio,
            "durable_writes_per_sec": writes,
            "durable_writes_ratio": write_ratio,
            "rounds": options.rounds,
            "watchers": options.watchers,
            "watch_write_rate": achieved_rate,
            "watch_events_delivered": latencies.len(),
            "watch_events_expected": expected,
            "watch_p50_ms": p50,
            "watch_p99_ms": p99,
            "etcd": etcd_summary,
            "history": history.as_ref().map(|h| serde_json::json!({
                "revisions": h.revisions,
                "fill_writes_per_sec": h.fill_writes_per_sec,
                "compact_to": h.compact_to,
                "compact_ack_ms": h.compact_ack_ms,
                "write_p99_before_compaction_ms": h.write_p99_before_compaction_ms,
                "write_p99_during_compaction_ms": h.write_p99_during_compaction_ms,
                "writes_during_compaction": h.writes_during_compaction,
                "restart_after_kill9_ms": h.restart_after_kill9_ms,
                "restart_after_sigterm_ms": h.restart_after_sigterm_ms,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "maestro-bench: {} in flight, {} rounds of {} s per phase, loopback; medians over rounds",
            options.in_flight, options.rounds, options.seconds
        );
        println!("{:<34} {:>12} {:>10}", "measure", "value", "vs no-op");
        println!("{:<34} {:>12.0} {:>9.0}%", "no-op RPC (ceiling), req/s", ceiling, 100.0);
        println!("{:<34} {:>12.0} {:>9.0}%", "point reads, req/s", reads, 100.0 * read_ratio);
        println!("{:<34} {:>12.0} {:>9.0}%", "durable conditional writes, req/s", writes, 100.0 * write_ratio);
        println!(
            "watch delivery to {} watchers at {:.0} writes/s: p50 {:.2} ms, p99 {:.2} ms ({} of {} events delivered)",
            options.watchers,
            achieved_rate,
            p50,
            p99,
            latencies.len(),
            expected
        );
    }
    if let (Some(e), false) = (&etcd_summary, options.json) {
        println!(
            "etcd, same workload: point reads {:.0}/s ({:.0}% of the no-op; maestrod {:.2}x), durable conditional writes {:.0}/s ({:.0}%; maestrod {:.2}x), watch p50 {:.2} ms, p99 {:.2} ms ({} of {} events)",
            e["point_reads_per_sec"].as_f64().unwrap_or(0.0),
            100.0 * e["point_reads_ratio"].as_f64().unwrap_or(0.0),
            e["maestrod_over_etcd_reads"].as_f64().unwrap_or(0.0),
            e["durable_writes_per_sec"].as_f64().unwrap_or(0.0),
            100.0 * e["durable_writes_ratio"].as_f64().unwrap_or(0.0),
            e["maestrod_over_etcd_writes"].as_f64().unwrap_or(0.0),
            e["watch_p50_ms"].as_f64().unwrap_or(0.0),
            e["watch_p99_ms"].as_f64().unwrap_or(0.0),
            e["watch_events_delivered"],
            e["watch_events_expected"],
        );
    }
    if let (Some(h), false) = (&history, options.json) {
        println!(
            "history of {} revisions (filled at {:.0} writes/s); compaction to {} acknowledged in {:.1} ms",
            h.revisions, h.fill_writes_per_sec, h.compact_to, h.compact_ack_ms
        );
        println!(
            "write p99 at {} writes/s: {:.2} ms before the compaction, {:.2} ms during it ({} writes)",
            options.watch_rate,
            h.write_p99_before_compaction_ms,
            h.write_p99_during_compaction_ms,
            h.writes_during_compaction
        );
        if let (Some(kill), Some(term)) = (h.restart_after_kill9_ms, h.restart_after_sigterm_ms) {
            println!("restart to first answered read: {kill:.0} ms after kill -9, {term:.0} ms after SIGTERM");
        }
    }
    Ok(())
}
