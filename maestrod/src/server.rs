//! Daemon lifecycle: open the store, serve the API on a bound listener, run
//! maintenance, and shut down in order (stop accepting, end watches, let
//! in-flight writes finish, flush).

use std::future::Future;
use std::sync::Arc;

use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{Instrument, info, info_span, warn};

use crate::autoloop::manager::LoopManager;
use crate::autoloop::placement::Placement;
use crate::config::DaemonConfig;
use crate::harness::sandbox::{LocalSandbox, SandboxOptions, SandboxProvider};
use crate::ssot::Ssot;
use crate::ssot::location::StoreLocation;
use crate::ssot::sled_store::SledStore;
use crate::ssot::store::{Store, StoreError};
use crate::transport::Listener;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("users: {0}")]
    Users(#[from] crate::auth::AuthError),
    #[error("serving gRPC failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Listen(#[from] crate::transport::TransportError),
}

/// Requests one connection may have in flight (watch streams included); more wait.
const CONCURRENT_REQUESTS_PER_CONNECTION: usize = 256;

/// Raises the soft limit of open files to the hard one: every client connection
/// and watcher holds a descriptor, and the usual soft default (1,024) lets a
/// thousand idle connections lock everyone else out.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        // An unlimited hard limit is still bounded by the kernel's nr_open.
        Ok((soft, hard)) if soft < hard.min(1 << 20) => {
            match setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 20), hard) {
                Ok(()) => info!(from = soft, to = hard.min(1 << 20), "open files limit raised"),
                Err(error) => warn!(%error, soft, "cannot raise the open files limit"),
            }
        }
        Ok(_) => {}
        Err(error) => warn!(%error, "cannot read the open files limit"),
    }
}

/// Runs the daemon on `listener` until `shutdown` resolves.
pub async fn run(
    config: DaemonConfig,
    listener: impl Into<Listener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Daemon::open(config).await?.serve(listener, shutdown).await
}

/// A daemon whose store is open (and its data directory locked), ready to serve.
pub struct Daemon {
    config: DaemonConfig,
    sandbox: Arc<LocalSandbox>,
    store: Arc<dyn Store>,
    ssot: Arc<Ssot>,
    users: Arc<crate::auth::Users>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    /// The data directory's lock, when the store does not hold it (etcd, `sled:DIR`).
    _lock: Option<std::fs::File>,
}

impl Daemon {
    /// Opens the store; fails if another daemon holds the data directory
    /// (sled) or the cluster cannot be reached (etcd).
    pub async fn open(config: DaemonConfig) -> Result<Daemon, ServerError> {
        let (store, lock) = open_store(&config).await?;
        let ssot = Arc::new(Ssot::new(store.clone(), config.limits.clone()));
        // What the sandbox can enforce here; weaker confinement is logged by the probe.
        let mut hidden = vec![config.data_dir.clone()];
        if let StoreLocation::Sled(Some(dir)) = &config.store_location {
            hidden.push(dir.clone());
        }
        let options = SandboxOptions { extra_read: config.sandbox_read.clone(), hidden };
        let sandbox = Arc::new(LocalSandbox::probe_with(options));
        // Every RPC needs a token; a fresh data dir gets its admin token here.
        let users = Arc::new(crate::auth::Users::open(&config.data_dir)?);
        // Read before anything is served: an unreadable certificate stops the start.
        let tls = config.tls.as_ref().map(crate::transport::TlsFiles::load).transpose()?;
        Ok(Daemon { config, sandbox, store, ssot, users, tls, _lock: lock })
    }

    /// Serves the API on `listener` until `shutdown` resolves, then shuts down in order.
    pub async fn serve(
        self,
        listener: impl Into<Listener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let Daemon { config, sandbox, store, ssot, users, tls, _lock } = self;
        let listener = listener.into();
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(maintenance(ssot.clone(), config.clone(), cancel.clone()).instrument(info_span!("maintenance")));

        let placement = Placement::new(Some(config.data_dir.clone()), config.workspace_roots.clone());
        let loops = LoopManager::with_placement(ssot.clone(), sandbox.clone(), placement);
        let address = match &listener {
            Listener::Tcp(listener) => listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        };
        loops.set_member_config(crate::autoloop::membership::MemberConfig {
            address,
            ttl: config.daemon_lease_ttl,
            lease_file: Some(config.data_dir.join("daemon.lease")),
            ..Default::default()
        });
        match loops.resume_all().await {
            Ok(0) => {}
            Ok(resumed) => info!(resumed, "unfinished loops resumed"),
            Err(error) => {
                warn!(%error, "cannot join the SSOT to resume loops; trying again in the background");
                loops.join_later();
            }
        }
        let quotas = crate::api::quota::Quotas::new(config.user_limits);
        tasks.spawn(
            end_revoked_streams(users.clone(), quotas.clone(), cancel.clone()).instrument(info_span!("revocation")),
        );
        if let Some(addr) = config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| {
                crate::transport::TransportError::Bind { address: format!("--metrics-listen {addr}"), source }
            })?;
            let serve = crate::api::metrics::serve_metrics(listener, ssot.clone(), loops.clone(), cancel.clone());
            tasks.spawn(serve.instrument(info_span!("metrics")));
        }
        let routes = crate::api::routes(
            ssot.clone(),
            loops.clone(),
            config.data_dir.display().to_string(),
            config.retention_revisions,
            sandbox.confinement().clone(),
            users.clone(),
        )
        .await;
        let stopping = CancellationToken::new();
        let mut server = Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls)?;
        }
        let router = server
            .trace_fn(|request| info_span!("rpc", method = %request.uri().path()))
            // Dead peers are found and their connections closed; one connection cannot
            // hold more than its share of request handlers.
            .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .concurrency_limit_per_connection(CONCURRENT_REQUESTS_PER_CONNECTION)
            .layer(crate::api::metrics::RpcMetricsLayer)
            .layer(crate::api::auth::AuthLayer::new(users.clone(), ssot.clone(), quotas.clone()))
            .add_routes(routes);
        let signal = {
            let store = store.clone();
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                info!("shutting down: no new requests; ending watches");
                // Watch streams never end by themselves; end them so connections can drain.
                store.end_watches();
                stopping.cancel();
            }
        };
        let mut socket_file = None;
        let serve: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>>>> = match listener {
            Listener::Tcp(listener) => {
                let (first, idle) = (config.handshake_timeout, config.idle_timeout);
                let incoming = TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .map(move |stream| stream.map(|s| crate::transport::Deadline::new(s, first, idle)));
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
            Listener::Unix(listener, path) => {
                socket_file = Some(path);
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
        };
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => result?,
            () = async { stopping.cancelled().await; tokio::time::sleep(config.shutdown_grace).await } => {
                warn!(grace = ?config.shutdown_grace, "in-flight requests did not finish in time; closing anyway");
            }
        }
        // Loops stop where they are; their records let the next start resume them.
        loops.shutdown().await;
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        store.close().await;
        if let Some(path) = socket_file {
            let _ = std::fs::remove_file(path);
        }
        info!("store flushed; bye");
        Ok(())
    }
}

/// Opens the store where `--store` says, and makes sure the data directory
/// (users, tokens) belongs to this daemon alone whichever store it uses.
/// Opens the store at `location` with `config`'s options (a sled store locks its directory).
pub async fn open_location(location: &StoreLocation, config: &DaemonConfig) -> Result<Arc<dyn Store>, ServerError> {
    match location {
        StoreLocation::Sled(dir) => {
            let dir = dir.as_ref().unwrap_or(&config.data_dir);
            Ok(Arc::new(SledStore::open(dir, config.store.clone())?))
        }
        #[cfg(feature = "etcd")]
        StoreLocation::Etcd(address) => {
            Ok(Arc::new(crate::ssot::etcd_store::EtcdStore::connect(address, config.etcd.clone()).await?))
        }
        #[cfg(not(feature = "etcd"))]
        StoreLocation::Etcd(_) => Err(ServerError::Store(StoreError::InvalidArgument(
            "etcd://...: this maestrod was built without etcd support (cargo build --features etcd)".into(),
        ))),
    }
}

async fn open_store(config: &DaemonConfig) -> Result<(Arc<dyn Store>, Option<std::fs::File>), ServerError> {
    let lock_data_dir = || {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StoreError::Backend(format!("cannot create the data directory {}: {e}", config.data_dir.display()))
        })?;
        crate::ssot::sled_store::lockfile::lock_data_dir(&config.data_dir).map(Some)
    };
    let lock = match &config.store_location {
        StoreLocation::Sled(Some(dir)) if dir != &config.data_dir => lock_data_dir()?,
        StoreLocation::Sled(_) => None, // the store locks it
        StoreLocation::Etcd(_) => lock_data_dir()?,
    };
    Ok((open_location(&config.store_location, config).await?, lock))
}

/// Ends the open streams of revoked tokens within a second of the revocation
/// (new requests with them are refused at once by the layer).
async fn end_revoked_streams(
    users: Arc<crate::auth::Users>,
    quotas: Arc<crate::api::quota::Quotas>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let users = users.clone();
        match tokio::task::spawn_blocking(move || users.token_hashes()).await {
            Ok(Ok(present)) => {
                let ended = quotas.revoke_missing(&present);
                if ended > 0 {
                    info!(tokens = ended, "revoked tokens: their open streams end");
                }
            }
            Ok(Err(error)) => warn!(%error, "cannot read the user registry"),
            Err(_) => return,
        }
    }
}

/// Sweeps expired memory and compacts history to the retention setting.
async fn maintenance(ssot: Arc<Ssot>, config: DaemonConfig, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(config.maintenance_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        match ssot.sweep_expired_memory().await {
            Ok(0) => {}
            Ok(removed) => info!(removed, "expired memory swept"),
            Err(error) => warn!(%error, "sweeping expired memory failed"),
        }
        if let Err(error) = ssot.compact(0, config.retention_revisions).await {
            warn!(%error, "compaction failed");
        }
    }
}
