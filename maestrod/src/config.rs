//! The daemon's resolved configuration, passed explicitly (never global).

use std::path::PathBuf;
use std::time::Duration;

use crate::ssot::Limits;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    /// Revisions of history kept for point-in-time reads and watch resume.
    pub retention_revisions: u64,
    /// How often expired memory is swept and history compacted.
    pub maintenance_interval: Duration,
    /// How long in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    pub limits: Limits,
    /// Further paths sandboxed commands may read (toolchains outside `/usr`).
    pub sandbox_read: Vec<PathBuf>,
    /// TLS for TCP connections; `None` serves plaintext.
    pub tls: Option<crate::transport::TlsFiles>,
    /// Folders under which project workspaces may be set (empty: anywhere the
    /// daemon's user can write, for a single user's daemon).
    pub workspace_roots: Vec<PathBuf>,
    /// Where `/metrics` is served (Prometheus), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A TCP connection must speak within this long of being accepted…
    pub handshake_timeout: Duration,
    /// …and is closed after this long without a byte from its peer.
    pub idle_timeout: Duration,
    /// What one user (token) may ask at once.
    pub user_limits: crate::api::quota::UserLimits,
    /// Where the SSOT lives: the embedded sled store (default) or an etcd cluster.
    pub store_location: crate::ssot::location::StoreLocation,
    /// The sled store's log segments, checkpoints and caches.
    pub store: crate::ssot::sled_store::SledOptions,
    /// How to reach etcd (with `--store etcd://...`).
    #[cfg(feature = "etcd")]
    pub etcd: crate::ssot::etcd_store::EtcdOptions,
    /// The TTL of the lease this daemon's loops are owned on: how long they
    /// wait for it after it dies before another daemon takes them.
    pub daemon_lease_ttl: Duration,
}

impl DaemonConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            retention_revisions: 100_000,
            maintenance_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            limits: Limits::default(),
            sandbox_read: Vec::new(),
            tls: None,
            workspace_roots: Vec::new(),
            metrics_listen: None,
            user_limits: crate::api::quota::UserLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            store_location: crate::ssot::location::StoreLocation::default(),
            store: crate::ssot::sled_store::SledOptions::default(),
            daemon_lease_ttl: crate::autoloop::membership::DEFAULT_TTL,
            #[cfg(feature = "etcd")]
            etcd: crate::ssot::etcd_store::EtcdOptions::default(),
        }
    }
}

/// Where the daemon listens by default: the Unix socket `~/.maestro/maestrod.sock`,
/// the one `maestroctl` looks for, open to this user only.
pub fn default_listen() -> crate::transport::ListenAddr {
    crate::transport::ListenAddr::Unix(maestro_shared::local_socket(&home()))
}

/// HOME, or the current folder when it is not set.
fn home() -> PathBuf {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map_or_else(|| PathBuf::from("."), PathBuf::from);
    std::path::absolute(&home).unwrap_or(home)
}

/// `~/.maestro/data`, or `./.maestro/data` when there is no home directory.
pub fn default_data_dir() -> PathBuf {
    home().join(".maestro").join("data")
}
