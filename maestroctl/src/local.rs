//! With no server configured, maestroctl talks to the user's own maestrod on
//! the Unix socket `~/.maestro/maestrod.sock` (open to this user only),
//! starting one (data under `~/.maestro`) when none answers. `maestroctl
//! daemon …` starts, stops and inspects that daemon.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tonic::transport::{Channel, Endpoint};

/// The maestrod to start: `$MAESTROD_BIN`, else the one next to this
/// executable, else `maestrod` on the PATH.
fn daemon_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MAESTROD_BIN") {
        return PathBuf::from(path);
    }
    let sibling = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("maestrod")));
    sibling.filter(|path| path.is_file()).unwrap_or_else(|| PathBuf::from("maestrod"))
}

/// Where the user's own daemon lives.
pub(crate) struct Local {
    /// `~/.maestro`
    pub(crate) base: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) log: PathBuf,
}

impl Local {
    pub(crate) fn new() -> anyhow::Result<Local> {
        let home = crate::home::home().ok_or_else(|| {
            anyhow!(
                "HOME is not set (or not an absolute path), so there is no local maestrod \
                 (~/.maestro/maestrod.sock); pass --server or set MAESTRO_SERVER"
            )
        })?;
        let base = home.join(".maestro");
        Ok(Local {
            socket: maestro_shared::local_socket(&home),
            data: base.join("data"),
            log: base.join("maestrod.log"),
            base,
        })
    }

    /// The address clients use: `unix:…/maestrod.sock`.
    pub(crate) fn server(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// A connection, if the daemon answers within `timeout`.
    pub(crate) async fn connect(&self, timeout: Duration) -> Option<Channel> {
        Endpoint::from_shared(self.server()).ok()?.connect_timeout(timeout).connect().await.ok()
    }

    /// The pid of the daemon holding the data dir, if one does: the pid its
    /// lock file names, when that process has the lock file open (a stale
    /// file or a reused pid names nobody; another user's processes cannot be
    /// looked into, so they are never taken for ours).
    pub(crate) fn pid(&self) -> Option<i32> {
        let lock = self.data.join("maestrod.lock");
        let pid: i32 = std::fs::read_to_string(&lock).ok()?.trim().parse().ok()?;
        let lock = std::fs::canonicalize(&lock).ok()?;
        let holds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()?
            .filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == lock));
        holds.then_some(pid)
    }

    /// Starts the daemon and waits until it answers; returns the connection and its pid.
    pub(crate) async fn start(&self) -> anyhow::Result<(Channel, u32)> {
        // Private to the user: the socket, the token and the store live here.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.base)
            .with_context(|| format!("cannot create {}", self.base.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let binary = daemon_binary();
        let server = self.server();
        let mut child = std::process::Command::new(&binary)
            .arg("--listen")
            .arg(&server)
            .arg("--data-dir")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C in this terminal does not stop the daemon.
            .process_group(0)
            .spawn()
            .map_err(|e| anyhow!("starting {} failed: {e}; install maestrod or pass --server", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(channel) = self.connect(Duration::from_millis(300)).await {
                return Ok((channel, child.id()));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(anyhow!("the local maestrod exited at start ({status}); see {}", self.log.display()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(anyhow!("the local maestrod did not answer within 20 s; see {}", self.log.display()))
    }

    /// Stops the daemon of this data dir (SIGTERM: it finishes in-flight
    /// writes and flushes) and waits for it to exit. Returns its pid, or
    /// `None` when none was running.
    pub(crate) async fn stop(&self) -> anyhow::Result<Option<i32>> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let Some(pid) = self.pid() else { return Ok(None) };
        kill(Pid::from_raw(pid), Signal::SIGTERM).with_context(|| format!("cannot stop maestrod (pid {pid})"))?;
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if kill(Pid::from_raw(pid), None).is_err() || self.pid().is_none() {
                return Ok(Some(pid));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(anyhow!("maestrod (pid {pid}) did not stop within 40 s; see {}", self.log.display()))
    }
}

/// Connects to the local daemon, starting it if nothing answers.
pub(crate) async fn connect_or_start() -> anyhow::Result<Channel> {
    let local = Local::new()?;
    crate::client::note_server(&local.server());
    if let Some(channel) = local.connect(Duration::from_millis(500)).await {
        return Ok(channel);
    }
    let (channel, pid) = local.start().await?;
    eprintln!(
        "maestroctl: started a local maestrod on {} (pid {pid}, data in {}, log {}; `maestroctl daemon stop` stops it)",
        local.server(),
        local.data.display(),
        local.log.display()
    );
    Ok(channel)
}
