//! Test support: boots the real `maestrod` binary on an ephemeral loopback
//! port with a temporary data directory, kills or restarts it, and runs the
//! real `maestroctl` against it. Used by the end-to-end tests and the
//! benchmark.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

pub mod lossy_fs;
pub use maestro_shared::{Bearer, Conn};
use tonic::transport::Endpoint;

/// The admin token of each daemon these tests started, by URL: `maestroctl`
/// runs against one get its token as `MAESTRO_TOKEN`.
static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn remember_token(url: &str, token: &str) {
    let mut tokens = TOKENS.lock().expect("tokens lock");
    tokens.retain(|(u, _)| u != url);
    tokens.push((url.to_string(), token.to_string()));
}

fn token_for(server: &str) -> Option<String> {
    // A list of daemons sharing one SSOT (and their users): the first one's.
    let server = server.split(',').next().unwrap_or_default();
    let url = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    TOKENS.lock().expect("tokens lock").iter().find(|(u, _)| *u == url).map(|(_, t)| t.clone())
}

/// Path of a binary built by this package (`e2e-maestrod`, `e2e-maestroctl`, …):
/// next to the running executable, or one level up from `deps/`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let mut dir = exe.parent().expect("the test binary lives in a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// `--store` for a new test daemon: a fresh prefix on the cluster named by
/// `MAESTRO_E2E_STORE`, or `None` (the default sled store).
pub fn e2e_store() -> Option<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cluster = std::env::var("MAESTRO_E2E_STORE").ok().filter(|s| !s.is_empty())?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Some(format!("{}/e2e-{}-{nanos}-{n}", cluster.trim_end_matches('/'), std::process::id()))
}

/// A running `maestrod` process. Dropping it kills the process.
pub struct Daemon {
    child: Option<Child>,
    addr: String,
    data_dir: PathBuf,
    log: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    _temp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts a daemon with a fresh temporary data directory.
    pub fn start() -> anyhow::Result<Daemon> {
        Self::start_with(&[])
    }

    /// Starts a daemon with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> anyhow::Result<Daemon> {
        Self::start_with_env(args, &[])
    }

    /// Starts a daemon with extra arguments and environment variables.
    ///
    /// With `MAESTRO_E2E_STORE=etcd://HOSTS` (and the `etcd` feature), the
    /// daemon keeps its SSOT on that cluster under a prefix of its own, kept
    /// across restarts: the same tests then run against the etcd backend.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
        Self::start_in(None, args, env)
    }

    /// Starts a daemon on `data_dir` (one the caller set up: a mount, say),
    /// or on a fresh temporary one.
    pub fn start_in(data_dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
        let temp = tempfile::tempdir().context("creating a temporary data directory")?;
        let mut extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Some(store) = e2e_store()
            && !args.contains(&"--store")
        {
            extra_args.extend(["--store".to_string(), store]);
        }
        let mut daemon = Daemon {
            child: None,
            addr: String::new(),
            data_dir: data_dir.map_or_else(|| temp.path().join("data"), Path::to_path_buf),
            log: temp.path().join("maestrod.log"),
            extra_args,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            _temp: Some(temp),
        };
        daemon.boot()?;
        Ok(daemon)
    }

    fn boot(&mut self) -> anyhow::Result<()> {
        let (child, addr) = spawn_daemon_env(&self.data_dir, &self.log, &self.extra_args, &self.env)?;
        self.child = Some(child);
        self.addr = addr;
        remember_token(&self.url(), &self.admin_token());
        Ok(())
    }

    /// The admin token the daemon wrote in its data dir.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token")).unwrap_or_default().trim().to_string()
    }

    /// Gives this daemon `other`'s users and tokens (daemons sharing one SSOT
    /// keep the same `users.json`), and waits until it accepts them.
    pub async fn share_users_of(&self, other: &Daemon) -> anyhow::Result<()> {
        for file in ["users.json", "admin.token"] {
            let temporary = self.data_dir.join(format!("{file}.copy"));
            std::fs::copy(other.data_dir.join(file), &temporary)?;
            std::fs::rename(&temporary, self.data_dir.join(file))?;
        }
        remember_token(&self.url(), &self.admin_token());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let channel = self.channel().await?;
            let mut system = maestro_shared::v1::system_service_client::SystemServiceClient::new(channel);
            match system.ping(maestro_shared::v1::PingRequest {}).await {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => bail!("the copied users are not accepted: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `host:port` the daemon listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Adds a user with `role` in `project` (`*`: every project) through
    /// `maestrod user add`; returns its token.
    pub fn add_user(&self, name: &str, role: &str, project: &str) -> String {
        let mut command = Command::new(binary("e2e-maestrod"));
        command.arg("--data-dir").arg(&self.data_dir).args(["user", "add", name, "--role", role]);
        if project == "*" {
            command.arg("--all");
        } else {
            command.args(["--project", project]);
        }
        let out = command.output().expect("maestrod user add runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connection sending the admin token.
    pub async fn channel(&self) -> anyhow::Result<Conn> {
        self.channel_with(&self.admin_token()).await
    }

    /// A connection sending `token` (empty: none).
    pub async fn channel_with(&self, token: &str) -> anyhow::Result<Conn> {
        let channel = Endpoint::from_shared(self.url())?.tcp_nodelay(true).connect().await?;
        Ok(Bearer::new(token).map_err(anyhow::Error::msg)?.connect(channel))
    }

    /// Sends SIGKILL and reaps the process: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("the daemon is not running"))?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        for _ in 0..300 {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        bail!("maestrod did not exit within 15 s of SIGTERM; log:\n{}", self.log())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The environment the next start or restart gives the daemon (on top of
    /// the test's own), replacing what it was started with.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// Waits up to `timeout` for the daemon to end by itself (a crash at a
    /// failpoint, say); its exit status, or None if it still runs.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the daemon again on the same data directory (a new port).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.boot()
    }

    /// Runs `maestroctl --server <this daemon> ARGS…`.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        run_ctl(&self.url(), args)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // A failing test shows what the daemon said last.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of maestrod's log ---");
            tail.iter().rev().for_each(|line| eprintln!("{line}"));
        }
    }
}

/// Spawns `maestrod` and waits for its "listening on" line.
pub fn spawn_daemon(data_dir: &Path, log: &Path, extra: &[String]) -> anyhow::Result<(Child, String)> {
    spawn_daemon_env(data_dir, log, extra, &[])
}

/// `spawn_daemon` with extra environment variables.
pub fn spawn_daemon_env(
    data_dir: &Path,
    log: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> anyhow::Result<(Child, String)> {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut child = Command::new(binary("e2e-maestrod"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "info")
        .env_remove("MAESTRO_LISTEN")
        .env_remove("MAESTRO_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("spawning {}", binary("e2e-maestrod").display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if !line.is_empty() => line,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("maestrod did not start; its log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
    };
    let addr = line
        .strip_prefix("maestrod listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| anyhow!("unexpected first line from maestrod: {line:?}"))?
        .to_string();
    Ok((child, addr))
}

/// The outcome of one `maestroctl` run.
#[derive(Debug)]
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "maestroctl failed: {}{}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

pub fn run_ctl(server: &str, args: &[&str]) -> CtlOutput {
    run_ctl_in(server, &std::env::current_dir().expect("a current directory"), args)
}

/// A `maestroctl` command for `server`, run in the folder `cwd`, not yet started.
pub fn ctl_command(server: &str, cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary("e2e-maestroctl"));
    command
        .current_dir(cwd)
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("MAESTRO_PROJECT")
        .env_remove("MAESTRO_SERVER")
        .env_remove("MAESTRO_OUTPUT")
        .env_remove("MAESTRO_TOKEN")
        // The developer's own ~/.maestro/config.yaml must not change what tests see.
        .env("HOME", std::env::temp_dir().join("maestro-e2e-home"))
        .stdin(Stdio::null());
    if let Some(token) = token_for(server) {
        command.env("MAESTRO_TOKEN", token);
    }
    command
}

/// Runs `maestroctl` in the folder `cwd`.
pub fn run_ctl_in(server: &str, cwd: &Path, args: &[&str]) -> CtlOutput {
    let output = ctl_command(server, cwd, args).output().expect("maestroctl runs");
    CtlOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Pings on a bystander's own connection to `daemon`, 50 ms apart, until
/// `enough(pings so far)`: how long each took (a failed or hung ping panics).
async fn ping_every_50ms(
    daemon: &Daemon,
    enough: impl Fn(usize) -> bool + Send + 'static,
) -> impl std::future::Future<Output = Vec<Duration>> + Send + 'static {
    use maestro_shared::v1::{PingRequest, system_service_client::SystemServiceClient};
    let mut system = SystemServiceClient::new(daemon.channel().await.expect("a bystander connects"));
    async move {
        let mut took = Vec::new();
        while !enough(took.len()) {
            let started = std::time::Instant::now();
            tokio::time::timeout(Duration::from_secs(5), system.ping(PingRequest {}))
                .await
                .expect("the daemon answers a bystander")
                .expect("and serves it");
            took.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        took
    }
}

/// Pings `daemon` `n` times, 50 ms apart, as a bystander on its own
/// connection: how long each took (a failed or hung ping panics).
pub async fn bystander_pings(daemon: &Daemon, n: usize) -> Vec<Duration> {
    ping_every_50ms(daemon, move |count| count >= n).await.await
}

/// Runs `work` while a bystander pings `daemon` every 50 ms on its own
/// connection: the work's output and how long each ping took (at least
/// three pings; a failed or hung ping panics).
pub async fn while_pinging<T>(daemon: &Daemon, work: impl std::future::Future<Output = T>) -> (T, Vec<Duration>) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let pinger = tokio::spawn(
        ping_every_50ms(daemon, move |count| count >= 3 && stop.load(std::sync::atomic::Ordering::Acquire)).await,
    );
    let output = work.await;
    done.store(true, std::sync::atomic::Ordering::Release);
    (output, pinger.await.expect("the bystander ran"))
}

/// The median of some durations (of pings, say).
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Asserts a bystander was served promptly while something heavy ran: the
/// median ping under 100 ms (one slow ping on a loaded 2-core machine is
/// scheduling, a slow median is a daemon that stopped serving others).
pub fn assert_responsive(took: &[Duration], while_doing: &str) {
    assert!(median(took.to_vec()) < Duration::from_millis(100), "pings while {while_doing}: {took:?}");
}
