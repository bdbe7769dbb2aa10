//! The `maestrod` command line: parses arguments, installs logging, binds the
//! listener and runs the daemon. `main.rs` only calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use crate::DaemonConfig;
use crate::transport::{ListenAddr, TlsFiles};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The Maestro daemon: the shared SSOT and the agents' control loops, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "maestrod", version, args_override_self = true)]
pub struct Args {
    /// Address to listen on: HOST:PORT (port 0 picks a free port) or unix:/PATH
    /// [default: the Unix socket ~/.maestro/maestrod.sock, this user's only].
    #[arg(long, env = "MAESTRO_LISTEN", default_value_t = crate::config::default_listen(), hide_default_value = true)]
    listen: ListenAddr,
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "MAESTRO_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "MAESTRO_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by these PEM CA certificates (mutual TLS).
    #[arg(long, env = "MAESTRO_TLS_CLIENT_CA", requires = "tls_cert", value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (no token needed: keep it
    /// on loopback or a monitoring network).
    #[arg(long, env = "MAESTRO_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds a new TCP connection has to start speaking HTTP/2 before it is closed.
    #[arg(long, env = "MAESTRO_HANDSHAKE_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout: u64,
    /// Seconds without a byte from a client before its connection is closed
    /// (live clients answer the daemon's keepalive pings every 30 s).
    #[arg(long, env = "MAESTRO_IDLE_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(31..))]
    idle_timeout: u64,
    /// Requests per second one user (token) may send on average; 0: no limit.
    #[arg(long, env = "MAESTRO_USER_RATE", default_value_t = 1000)]
    user_rate: u32,
    /// Requests one user may send at once after a quiet spell.
    #[arg(long, env = "MAESTRO_USER_BURST", default_value_t = 2000)]
    user_burst: u32,
    /// Requests of one user handled at once (streams aside).
    #[arg(long, env = "MAESTRO_USER_CONCURRENCY", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    user_concurrency: u64,
    /// Watch and loop-event streams one user may hold open.
    #[arg(long, env = "MAESTRO_USER_STREAMS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    user_streams: u64,
    /// Allow listening beyond loopback without TLS: tokens and data cross the
    /// network in the clear. Only on a network you trust.
    #[arg(long, env = "MAESTRO_INSECURE_LISTEN")]
    insecure_listen: bool,
    /// A folder under which project workspaces may be created; repeat for
    /// several. With none, only the daemon's own user's folders are allowed
    /// (fine for a personal daemon); a shared server should always set it.
    #[arg(long = "workspace-root", env = "MAESTRO_WORKSPACE_ROOT", value_name = "DIR", value_delimiter = ':')]
    workspace_root: Vec<PathBuf>,
    /// The daemon's own files: the sled store, users and tokens, the lock [default: ~/.maestro/data].
    #[arg(long, env = "MAESTRO_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Where the SSOT lives: `sled` (in --data-dir), `sled:DIR`, or an etcd cluster,
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (several daemons can share it).
    #[arg(long, env = "MAESTRO_STORE", default_value = "sled", value_name = "LOCATION")]
    store: crate::ssot::location::StoreLocation,
    /// etcd user (etcd's authentication); the password comes from MAESTRO_ETCD_PASSWORD.
    #[cfg(feature = "etcd")]
    #[arg(long, env = "MAESTRO_ETCD_USER", value_name = "NAME")]
    etcd_user: Option<String>,
    /// CA certificate (PEM) of the etcd cluster: talks TLS to it.
    #[cfg(feature = "etcd")]
    #[arg(long, env = "MAESTRO_ETCD_CA", value_name = "PEM")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd clusters that require one (with --etcd-key).
    #[cfg(feature = "etcd")]
    #[arg(long, env = "MAESTRO_ETCD_CERT", value_name = "PEM", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[cfg(feature = "etcd")]
    #[arg(long, env = "MAESTRO_ETCD_KEY", value_name = "PEM", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Revisions of history kept for point-in-time reads and watch resume.
    #[arg(long, env = "MAESTRO_RETENTION_REVISIONS", default_value_t = 100_000)]
    retention_revisions: u64,
    /// Seconds between maintenance runs (memory expiry sweep, compaction).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    maintenance_interval: u64,
    /// Most memory entries one agent may hold (the least recently written are evicted).
    #[arg(long, env = "MAESTRO_MEMORY_MAX_ENTRIES", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    memory_max_entries: u64,
    /// Most bytes of stored memory records one agent may hold.
    #[arg(long, env = "MAESTRO_MEMORY_MAX_BYTES", default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1024..))]
    memory_max_bytes: u64,
    /// Size at which the store's write-ahead log starts a new segment file.
    #[arg(long, env = "MAESTRO_WAL_SEGMENT_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    wal_segment_bytes: u64,
    /// Growth of the write-ahead log that starts a checkpoint of the store (at least; later once
    /// checkpoints are larger). Checkpoints let the log be trimmed and a damaged store be rebuilt.
    #[arg(long, env = "MAESTRO_CHECKPOINT_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    checkpoint_bytes: u64,
    /// sled operations after which the store reopens sled, which bounds what sled reads to recover
    /// after a crash; the pause grows with the history kept (tens of milliseconds for a small store)
    /// and the next reopen waits a hundred times as long. 0 never reopens (a start after a crash
    /// then reads everything written since the last start).
    #[arg(long, env = "MAESTRO_SLED_REOPEN_OPS", default_value_t = 100_000)]
    sled_reopen_ops: u64,
    /// TTL of the lease this daemon owns its loops on (seconds): when the daemon dies, or is cut off
    /// from the store for longer, another daemon sharing the store takes its loops over
    /// [default: 10 on etcd; 3600 on sled, which no other daemon can share].
    #[arg(long, env = "MAESTRO_DAEMON_LEASE_TTL", value_parser = clap::value_parser!(u64).range(1..=86400))]
    daemon_lease_ttl: Option<u64>,
    /// Log format on stderr.
    #[arg(long, env = "MAESTRO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// A further path agents' commands may read, such as a toolchain outside /usr
    /// (`~/.rustup`, `/opt/go`); repeat for several. Everything else outside the
    /// system directories and the workspace stays invisible to them.
    #[arg(long = "sandbox-read", value_name = "PATH")]
    sandbox_read: Vec<PathBuf>,
    /// Without a command, maestrod runs the daemon.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tools for people writing harness policies (no server needed).
    #[command(subcommand)]
    Harness(HarnessCommand),
    /// The daemon's users and their tokens, in the data dir (works whether or not the daemon runs).
    #[command(subcommand)]
    User(UserCommand),
    /// Rebuild the store (the sled directory) from its newest intact checkpoint and the
    /// write-ahead log; the old directory is moved aside, not deleted. The daemon must be stopped
    /// (it also does this by itself at start when the store will not open).
    Repair,
    /// Copy an SSOT into an empty store: its current state (every key not held by a lease), with a
    /// fresh history. The source must not be in use (a sled store is locked while a daemon runs).
    #[command(
        after_help = "Example:\n  maestrod migrate --from sled:/var/lib/maestro --to etcd://10.0.0.1:2379,10.0.0.2:2379/maestro"
    )]
    Migrate {
        /// Where the SSOT is now: sled (in --data-dir), sled:DIR or etcd://HOSTS[/PREFIX].
        #[arg(long, value_name = "LOCATION")]
        from: crate::ssot::location::StoreLocation,
        /// Where it goes (empty): sled:DIR or etcd://HOSTS[/PREFIX].
        #[arg(long, value_name = "LOCATION")]
        to: crate::ssot::location::StoreLocation,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user; prints its token on stdout, the only time it is shown.
    Add {
        name: String,
        /// viewer (read, watch), developer (write, run loops) or admin (projects, policies, users).
        #[arg(long, default_value = "developer")]
        role: String,
        /// A project the user gets the role in; repeat for several.
        #[arg(long, required_unless_present = "all")]
        project: Vec<String>,
        /// The role in every project, and over the daemon itself.
        #[arg(long, conflicts_with = "project")]
        all: bool,
    },
    /// The users and their roles (never their tokens).
    List {
        #[arg(short = 'o', long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Remove a user: its token stops working at once, also on a running daemon.
    Revoke { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

/// `maestrod repair`: 0 rebuilt, 1 refused or failed (one line on stderr saying why).
fn repair(data_dir: &std::path::Path) -> ExitCode {
    if !data_dir.join("store").exists() && !data_dir.join("checkpoints").exists() {
        eprintln!("maestrod: {} holds no store to repair", data_dir.display());
        return ExitCode::FAILURE;
    }
    match crate::ssot::sled_store::repair(data_dir) {
        Ok(report) => {
            println!(
                "store rebuilt at revision {} from checkpoint {} ({} records) and {} log records",
                report.revision, report.checkpoint, report.entries, report.replayed
            );
            if let Some(old) = report.moved_to {
                println!("the old store is in {} (delete it once satisfied)", old.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("maestrod: repair failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `maestrod migrate`: 0 copied, 1 refused or failed (the target may hold part of the copy).
fn migrate(
    args: &Args,
    from: crate::ssot::location::StoreLocation,
    to: crate::ssot::location::StoreLocation,
) -> ExitCode {
    let work = async {
        let mut config = DaemonConfig::new(args.data_dir.clone().unwrap_or_else(crate::config::default_data_dir));
        store_options(args, &mut config)?;
        if from == to {
            anyhow::bail!("--from and --to are the same store");
        }
        let source = crate::server::open_location(&from, &config).await.context("--from")?;
        let target = crate::server::open_location(&to, &config).await.context("--to")?;
        let started = std::time::Instant::now();
        let mut shown = std::time::Instant::now();
        // A sled store is locked while a daemon uses it; daemons share an etcd one.
        let shared = matches!(from, crate::ssot::location::StoreLocation::Etcd(_));
        let report = crate::ssot::migrate::migrate(source.clone(), target.clone(), shared, |so_far| {
            if shown.elapsed() >= std::time::Duration::from_secs(1) {
                eprintln!("maestrod: {} keys ({} bytes) copied…", so_far.keys, so_far.bytes);
                shown = std::time::Instant::now();
            }
        })
        .await?;
        source.close().await;
        target.close().await;
        println!(
            "copied {} keys ({} bytes) of {from} at revision {} to {to} (now at revision {}) in {:.1} s",
            report.keys,
            report.bytes,
            report.source_revision,
            report.target_revision,
            started.elapsed().as_secs_f64()
        );
        if report.skipped_leased > 0 {
            println!("left behind {} keys held by leases (locks, daemons, loop owners)", report.skipped_leased);
        }
        anyhow::Ok(())
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("maestrod: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("maestrod: migrate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The store options of `args` (etcd's credentials and TLS, sled's log sizes).
fn store_options(args: &Args, config: &mut DaemonConfig) -> anyhow::Result<()> {
    #[cfg(feature = "etcd")]
    {
        config.etcd.user = match (&args.etcd_user, std::env::var("MAESTRO_ETCD_PASSWORD")) {
            (Some(user), Ok(password)) => Some((user.clone(), password)),
            (Some(_), Err(_)) => anyhow::bail!("--etcd-user: set the password in MAESTRO_ETCD_PASSWORD"),
            (None, _) => None,
        };
        config.etcd.ca = args.etcd_ca.clone();
        config.etcd.identity = args.etcd_cert.clone().zip(args.etcd_key.clone());
    }
    config.store.wal_segment_bytes = args.wal_segment_bytes;
    config.store.checkpoint_bytes = args.checkpoint_bytes;
    config.store.reopen_after_ops = args.sled_reopen_ops;
    Ok(())
}

/// `maestrod user …`: 0 done, 1 refused or failed.
fn user_command(data_dir: &std::path::Path, command: UserCommand) -> ExitCode {
    use crate::auth::{ALL_PROJECTS, Grant, Role, Users};
    let result = (|| -> anyhow::Result<()> {
        let users = Users::open(data_dir)?;
        match command {
            UserCommand::Add { name, role, project, all } => {
                let role = Role::parse(&role)?;
                let projects = if all { vec![ALL_PROJECTS.to_string()] } else { project };
                let grants = projects.into_iter().map(|project| Grant { project, role }).collect();
                let token = users.add(&name, grants)?;
                println!("{token}");
                eprintln!("maestrod: user {name} added; the token above is shown only now");
            }
            UserCommand::List { output } => {
                let all = users.list()?;
                match output {
                    ListFormat::Json => {
                        let rows: Vec<serde_json::Value> = all
                            .iter()
                            .map(|u| {
                                serde_json::json!({
                                    "name": u.name,
                                    "grants": u.grants,
                                    "createdMs": u.created_ms,
                                })
                            })
                            .collect();
                        println!("{}", serde_json::to_string_pretty(&rows)?);
                    }
                    ListFormat::Table => {
                        println!("{:<24} GRANTS", "NAME");
                        for u in &all {
                            let grants: Vec<String> =
                                u.grants.iter().map(|g| format!("{}:{}", g.project, g.role.as_str())).collect();
                            println!("{:<24} {}", u.name, grants.join(", "));
                        }
                    }
                }
            }
            UserCommand::Revoke { name } => {
                users.revoke(&name)?;
                eprintln!("maestrod: user {name} revoked");
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("maestrod: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Subcommand)]
enum HarnessCommand {
    /// Dry-runs the harness's real decision for one action: prints `allow` (exit 0)
    /// or `deny: <rule id>: <reason>` (exit 1); errors exit 2. Executes nothing.
    Check {
        /// The workspace (its .maestro/config.yaml supplies the policy).
        #[arg(long)]
        workspace: PathBuf,
        /// The agent role: planning, backend, frontend, test, review, contract-validator, or one from the config.
        #[arg(long)]
        role: String,
        #[command(subcommand)]
        action: CheckAction,
    },
}

#[derive(Debug, Subcommand)]
enum CheckAction {
    /// Reading a file.
    Read {
        path: String,
        /// Unused for reads; accepted so every path action takes the same flags.
        #[arg(long)]
        content_file: Option<PathBuf>,
    },
    /// Writing a file, with the content to validate.
    Write {
        path: String,
        /// The content to write (default: empty).
        #[arg(long)]
        content_file: Option<PathBuf>,
    },
    /// Deleting a file or directory.
    Delete {
        path: String,
        /// Unused for deletions; accepted so every path action takes the same flags.
        #[arg(long)]
        content_file: Option<PathBuf>,
    },
    /// Running a command: `run -- ARGV…`.
    Run {
        #[arg(last = true, required = true, num_args = 1..)]
        argv: Vec<String>,
    },
}

/// `maestrod harness check`: 0 allow, 1 deny, 2 error.
fn harness_check(workspace: &std::path::Path, role: &str, action: CheckAction) -> ExitCode {
    use crate::harness::{Action, Decision, Gate};
    let result = (|| -> anyhow::Result<Decision> {
        let gate = Gate::open(workspace)?;
        let action = match action {
            CheckAction::Read { path, .. } => Action::ReadFile { path },
            CheckAction::Delete { path, .. } => Action::DeleteFile { path },
            CheckAction::Write { path, content_file } => {
                let content = match content_file {
                    Some(file) => std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read --content-file {}", file.display()))?,
                    None => String::new(),
                };
                Action::WriteFile { path, content }
            }
            CheckAction::Run { argv } => Action::RunCommand { argv },
        };
        Ok(gate.check(role, &action)?)
    })();
    match result {
        Ok(Decision::Allow) => {
            println!("allow");
            ExitCode::SUCCESS
        }
        Ok(Decision::Deny(violation)) => {
            println!("deny: {}: {}", violation.rule, violation.reason);
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("maestrod: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs `maestrod` with the process's arguments.
pub fn main() -> ExitCode {
    // The crash tests' failpoints (`FAILPOINTS=name=return`); compiled in only with the feature.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let mut args = Args::parse();
    match args.command.take() {
        Some(Command::Harness(HarnessCommand::Check { workspace, role, action })) => {
            return harness_check(&workspace, &role, action);
        }
        Some(Command::User(command)) => {
            let data_dir = args.data_dir.clone().unwrap_or_else(crate::config::default_data_dir);
            return user_command(&data_dir, command);
        }
        Some(Command::Repair) => {
            let data_dir = args.data_dir.clone().unwrap_or_else(crate::config::default_data_dir);
            return repair(&data_dir);
        }
        Some(Command::Migrate { from, to }) => return migrate(&args, from, to),
        None => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("maestrod: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Logs, and traces over OTLP when OTEL_* asks; flushed when `_telemetry` drops.
    let _telemetry =
        match runtime.block_on(async { crate::telemetry::init(matches!(args.log_format, LogFormat::Json)) }) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("maestrod: {error}");
                return ExitCode::FAILURE;
            }
        };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("maestrod: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let tls = match (args.tls_cert.clone(), args.tls_key.clone()) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key, client_ca: args.tls_client_ca.clone() }),
        _ => None,
    };
    if tls.is_some() && matches!(args.listen, ListenAddr::Unix(_)) {
        anyhow::bail!("--tls-cert: TLS is for TCP; a Unix socket is already private (--listen HOST:PORT to use TLS)");
    }
    if !args.listen.is_local() && tls.is_none() {
        if !args.insecure_listen {
            anyhow::bail!(
                "--listen {}: not a loopback address, and without TLS tokens and data would cross the network in \
                 the clear; give --tls-cert and --tls-key, listen on 127.0.0.1, or add --insecure-listen on a network \
                 you trust",
                args.listen
            );
        }
        tracing::warn!(
            listen = %args.listen,
            "INSECURE: listening beyond loopback without TLS; tokens and data cross the network in the clear"
        );
    }
    if !args.listen.is_local() && args.workspace_root.is_empty() {
        anyhow::bail!(
            "--listen {}: a server others reach must say where project workspaces may be; add --workspace-root DIR \
             (e.g. /srv/maestro)",
            args.listen
        );
    }
    for root in &args.workspace_root {
        if !root.is_absolute() || !root.is_dir() {
            anyhow::bail!("--workspace-root {}: give an absolute path to a folder that exists", root.display());
        }
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(crate::config::default_data_dir);
    let mut config = DaemonConfig::new(data_dir.clone());
    config.retention_revisions = args.retention_revisions;
    config.maintenance_interval = std::time::Duration::from_secs(args.maintenance_interval);
    config.limits.memory_entries_per_agent = usize::try_from(args.memory_max_entries).unwrap_or(usize::MAX);
    config.limits.memory_bytes_per_agent = usize::try_from(args.memory_max_bytes).unwrap_or(usize::MAX);
    config.store_location = args.store.clone();
    config.daemon_lease_ttl = match (args.daemon_lease_ttl, &args.store) {
        (Some(seconds), _) => std::time::Duration::from_secs(seconds),
        // Nobody else can take a sled store's loops (its directory is locked), and a daemon
        // restarted on it revokes its old lease: a long one only spares loops a suspend's rollback.
        (None, crate::ssot::location::StoreLocation::Sled(_)) => std::time::Duration::from_secs(3600),
        (None, crate::ssot::location::StoreLocation::Etcd(_)) => crate::autoloop::membership::DEFAULT_TTL,
    };
    store_options(&args, &mut config)?;
    for path in &args.sandbox_read {
        if !path.is_absolute() || !path.exists() {
            anyhow::bail!("--sandbox-read {}: give an absolute path that exists", path.display());
        }
    }
    config.sandbox_read = args.sandbox_read.clone();
    config.tls = tls;
    config.metrics_listen = args.metrics_listen;
    config.handshake_timeout = std::time::Duration::from_secs(args.handshake_timeout);
    config.idle_timeout = std::time::Duration::from_secs(args.idle_timeout);
    config.user_limits = crate::api::quota::UserLimits {
        requests_per_second: args.user_rate,
        burst: args.user_burst.max(1),
        concurrent: usize::try_from(args.user_concurrency).unwrap_or(usize::MAX),
        streams: usize::try_from(args.user_streams).unwrap_or(usize::MAX),
    };
    config.workspace_roots =
        args.workspace_root.iter().map(|r| std::fs::canonicalize(r).unwrap_or(r.clone())).collect();
    crate::server::raise_open_files_limit();
    // Open (and lock) the store before announcing the address, so a refused
    // start never looks like a running daemon.
    let daemon = crate::server::Daemon::open(config).await?;
    let listener = args.listen.bind().await?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    };
    // Scripts and tests read the address from this line (useful with port 0).
    match &args.store {
        crate::ssot::location::StoreLocation::Sled(None) => {
            println!("maestrod listening on {addr} (data in {})", data_dir.display())
        }
        store => println!("maestrod listening on {addr} (data in {}, store {store})", data_dir.display()),
    }
    daemon.serve(listener, shutdown).await.context("maestrod stopped")?;
    Ok(())
}
