//! The daemon's resolved configuration, passed explicitly (never global).

use std::net::SocketAddr;
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
        }
    }
}

/// Where the daemon listens by default.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], maestro_shared::DEFAULT_PORT))
}

/// `~/.maestro/data`, or `./.maestro/data` when there is no home directory.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
        .join(".maestro")
        .join("data")
}
