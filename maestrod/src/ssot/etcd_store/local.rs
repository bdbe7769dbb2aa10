//! A private etcd server for tests and the benchmark: `etcd` (from `PATH`, or
//! `MAESTRO_ETCD_BIN`) on free loopback ports, its data in a temporary
//! directory, stopped when dropped (and when the thread that started it ends,
//! so a failing test leaves no server behind).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{EtcdOptions, EtcdStore};
use crate::ssot::location::EtcdAddress;
use crate::ssot::store::StoreError;

pub struct LocalEtcd {
    child: Child,
    client_port: u16,
    _dir: tempfile::TempDir,
}

impl LocalEtcd {
    /// Starts a one-member cluster. Fails with a message naming the binary when it is missing.
    pub fn start() -> std::io::Result<Self> {
        let binary = std::env::var("MAESTRO_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let dir = tempfile::tempdir()?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(&binary);
        command
            .arg("--name=local")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=local={peer}"))
            // Room for the SSOT's largest transactions (a snapshot restore writes a whole project).
            .arg("--max-request-bytes=67108864")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start {binary} (install Debian's etcd-server, or set MAESTRO_ETCD_BIN): {e}"),
            )
        })?;
        Ok(LocalEtcd { child, client_port, _dir: dir })
    }

    /// The address of this server with `prefix` (no leading or trailing `/` needed).
    pub fn address(&self, prefix: &str) -> EtcdAddress {
        EtcdAddress { endpoints: vec![self.endpoint()], prefix: format!("{}/", prefix.trim_matches('/')) }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Connects a store under `prefix`, waiting up to 30 s for the server to elect itself.
    pub async fn connect(&self, prefix: &str) -> Result<EtcdStore, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let options = EtcdOptions { request_timeout: Duration::from_secs(2), ..EtcdOptions::default() };
        loop {
            match EtcdStore::connect(&self.address(prefix), options.clone()).await {
                Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
