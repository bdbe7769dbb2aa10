//! With no server configured, maestroctl talks to the user's own maestrod on
//! the Unix socket `~/.maestro/maestrod.sock` (open to this user only),
//! starting one (data under `~/.maestro`) when none answers.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;

use anyhow::{Context, anyhow};
use tonic::transport::{Channel, Endpoint};

async fn try_connect(server: &str, timeout: Duration) -> Option<Channel> {
    Endpoint::from_shared(server.to_string()).ok()?.connect_timeout(timeout).connect().await.ok()
}

/// The maestrod to start: `$MAESTROD_BIN`, else the one next to this
/// executable, else `maestrod` on the PATH.
fn daemon_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MAESTROD_BIN") {
        return PathBuf::from(path);
    }
    let sibling = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("maestrod")));
    sibling.filter(|path| path.is_file()).unwrap_or_else(|| PathBuf::from("maestrod"))
}

/// Connects to the local daemon, starting it if nothing answers.
pub(crate) async fn connect_or_start() -> anyhow::Result<Channel> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).ok_or_else(|| {
        anyhow!("HOME is not set, so there is no local maestrod (~/.maestro/maestrod.sock); pass --server or set MAESTRO_SERVER")
    })?;
    let home = std::path::absolute(&home).unwrap_or(home);
    let socket = maestro_shared::local_socket(&home);
    let server = format!("unix:{}", socket.display());
    crate::client::note_server(&server);
    if let Some(channel) = try_connect(&server, Duration::from_millis(500)).await {
        return Ok(channel);
    }
    let base = home.join(".maestro");
    // Private to the user: the socket, the token and the store live here.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .with_context(|| format!("cannot create {}", base.display()))?;
    let log_path = base.join("maestrod.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let binary = daemon_binary();
    let listen = server.clone();
    let mut child = std::process::Command::new(&binary)
        .arg("--listen")
        .arg(&listen)
        .arg("--data-dir")
        .arg(base.join("data"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C in this terminal does not stop the daemon.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            anyhow!(
                "no maestrod answers at {server} and starting {} failed: {e}; install maestrod or pass --server",
                binary.display()
            )
        })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(channel) = try_connect(&server, Duration::from_millis(300)).await {
            eprintln!(
                "maestroctl: started a local maestrod on {listen} (pid {}, data in {}, log {})",
                child.id(),
                base.join("data").display(),
                log_path.display()
            );
            return Ok(channel);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(anyhow!("the local maestrod exited at start ({status}); see {}", log_path.display()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow!("the local maestrod did not answer within 20 s; see {}", log_path.display()))
}
