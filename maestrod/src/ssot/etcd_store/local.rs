//! A private etcd cluster for tests and the benchmark: `etcd` (from `PATH`, or
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
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

struct Member {
    child: Option<Child>,
    client_port: u16,
}

impl LocalEtcd {
    /// Starts a one-member cluster. Fails with a message naming the binary when it is missing.
    pub fn start() -> std::io::Result<Self> {
        Self::cluster(1)
    }

    /// Starts a cluster of `size` members on loopback.
    pub fn cluster(size: usize) -> std::io::Result<Self> {
        let binary = std::env::var("MAESTRO_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> =
            (0..size).map(|_| Ok((free_port()?, free_port()?))).collect::<std::io::Result<_>>()?;
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
        let mut members = Vec::new();
        for (i, (client_port, peer_port)) in ports.into_iter().enumerate() {
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let mut command = Command::new(&binary);
            command
                .arg(format!("--name=m{i}"))
                .arg(format!("--data-dir={}", dir.path().join(format!("m{i}")).display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                // Room for the SSOT's largest transactions (a snapshot restore writes a whole project).
                .arg("--max-request-bytes=67108864")
                .arg("--max-txn-ops=100000")
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
            members.push(Member { child: Some(child), client_port });
        }
        let cluster = LocalEtcd { members, _dir: dir };
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Waits until every member answers `/health` with a leader elected.
    fn wait_healthy(&self, limit: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + limit;
        for member in &self.members {
            while !healthy(member.client_port) {
                if Instant::now() > deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("etcd on port {} did not become healthy", member.client_port),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Kills member `index` at once (kill -9).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `etcd://` address of every member with `prefix`, as `--store` takes it.
    pub fn store_arg(&self, prefix: &str) -> String {
        format!("etcd://{}/{}", self.endpoints().join(","), prefix.trim_matches('/'))
    }

    /// The address of this server with `prefix` (no leading or trailing `/` needed).
    pub fn address(&self, prefix: &str) -> EtcdAddress {
        EtcdAddress { endpoints: self.endpoints(), prefix: format!("{}/", prefix.trim_matches('/')) }
    }

    /// `host:port` of each member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect()
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
        (0..self.members.len()).for_each(|i| self.kill(i));
    }
}

/// `GET /health` answers `{"health":"true"}` once the member has a leader.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
