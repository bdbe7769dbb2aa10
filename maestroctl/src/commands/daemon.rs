//! `maestroctl daemon …`: the user's own local daemon (socket, data and log
//! under ~/.maestro), found by its socket and the pid in its data dir's lock
//! file, so only this user's daemon of this data dir is ever stopped.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use maestro_shared::v1::{self, system_service_client::SystemServiceClient};

use super::ExitStatus;
use crate::cli::{DaemonCmd, Output};
use crate::local::Local;
use crate::output::emit;

/// `status` when no daemon runs (as `systemctl status` does).
const NOT_RUNNING: ExitStatus = 3;

pub(crate) async fn run(cmd: DaemonCmd, output: Output) -> anyhow::Result<ExitStatus> {
    let local = Local::new()?;
    match cmd {
        DaemonCmd::Start => start(&local).await,
        DaemonCmd::Stop => {
            match local.stop().await? {
                Some(pid) => {
                    eprintln!("maestroctl: stopped maestrod (pid {pid}); data kept in {}", local.data.display())
                }
                None => eprintln!("maestroctl: maestrod is not running"),
            }
            Ok(0)
        }
        DaemonCmd::Restart => {
            local.stop().await?;
            start(&local).await
        }
        DaemonCmd::Status => status(&local, output).await,
        DaemonCmd::Logs { follow, lines } => logs(&local, follow, lines).await,
    }
}

async fn start(local: &Local) -> anyhow::Result<ExitStatus> {
    if local.connect(Duration::from_millis(500)).await.is_some() {
        let pid = local.pid().map_or_else(String::new, |p| format!(" (pid {p})"));
        eprintln!("maestroctl: maestrod is already running{pid} on {}", local.server());
        return Ok(0);
    }
    let (_, pid) = local.start().await?;
    eprintln!(
        "maestroctl: started maestrod (pid {pid}) on {}; data in {}, log {}",
        local.server(),
        local.data.display(),
        local.log.display()
    );
    Ok(0)
}

async fn status(local: &Local, output: Output) -> anyhow::Result<ExitStatus> {
    let info = match local.connect(Duration::from_millis(500)).await {
        Some(channel) => {
            let token = crate::client::token(true);
            let conn = maestro_shared::Bearer::new(&token).map_err(anyhow::Error::msg)?.connect(channel);
            SystemServiceClient::new(conn).get_info(v1::GetInfoRequest {}).await.ok().map(|r| r.into_inner())
        }
        None => None,
    };
    let pid = local.pid();
    let running = info.is_some() || pid.is_some();
    let json = serde_json::json!({
        "running": running,
        "pid": pid,
        "socket": local.socket,
        "dataDir": local.data,
        "log": local.log,
        "version": info.as_ref().map(|i| i.version.clone()),
        "revision": info.as_ref().map(|i| i.revision.to_string()),
    });
    emit(output, &json, || {
        if running {
            println!("maestrod is running");
            if let Some(pid) = pid {
                println!("  pid       {pid}");
            }
            println!("  socket    {}", local.socket.display());
            if let Some(info) = &info {
                println!("  version   {}", info.version);
                println!("  revision  {}", info.revision);
            }
        } else {
            println!("maestrod is not running (`maestroctl daemon start` starts it)");
        }
        println!("  data      {}", local.data.display());
        println!("  log       {}", local.log.display());
    })?;
    Ok(if running { 0 } else { NOT_RUNNING })
}

async fn logs(local: &Local, follow: bool, lines: usize) -> anyhow::Result<ExitStatus> {
    let mut file = match std::fs::File::open(&local.log) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => {
            eprintln!("maestroctl: no log yet ({})", local.log.display());
            return Ok(0);
        }
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", local.log.display())),
    };
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let all: Vec<&str> = text.lines().collect();
    let mut out = std::io::stdout().lock();
    for line in &all[all.len().saturating_sub(lines)..] {
        if writeln!(out, "{line}").is_err() {
            return Ok(0);
        }
    }
    drop(out);
    if !follow {
        return Ok(0);
    }
    let mut position = file.stream_position()?;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
        let length = std::fs::metadata(&local.log).map(|m| m.len()).unwrap_or(0);
        if length < position {
            // Truncated or replaced: start over from its beginning.
            file = std::fs::File::open(&local.log)?;
            position = 0;
        }
        file.seek(SeekFrom::Start(position))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)?;
        position += fresh.len() as u64;
        if !fresh.is_empty() && std::io::stdout().lock().write_all(&fresh).is_err() {
            return Ok(0);
        }
    }
}
