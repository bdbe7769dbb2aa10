//! Running commands for agents. `SandboxProvider` is the seam for stronger
//! providers (bwrap, containers); `LocalSandbox` runs a subprocess in the
//! workspace with a cleared environment, its own process group (killed with
//! every child on timeout, cancellation and exit), rlimits, capped output,
//! and on Linux a Landlock filesystem confinement (write only inside the
//! workspace and a private temp dir) and a private network namespace when
//! the role has no network. What the kernel cannot enforce is reported in
//! [`Confinement`], never skipped silently.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    RulesetStatus, path_beneath_rules,
};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The Landlock ABI this code is written against; newer kernels are used at this level.
const LANDLOCK_ABI: ABI = ABI::V5;

/// Resource limits for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub cpu_seconds: u64,
    pub address_space_bytes: u64,
    pub file_size_bytes: u64,
    /// Processes of the sandbox's user (not enforced for root).
    pub processes: u64,
    /// Bytes kept of stdout and of stderr each; the rest is counted and dropped.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            cpu_seconds: 300,
            address_space_bytes: 8 << 30,
            file_size_bytes: 256 << 20,
            processes: 512,
            output_bytes: 1 << 20,
        }
    }
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    /// The workspace root: the working directory and the only writable tree.
    pub workspace: PathBuf,
    /// Environment beyond the fixed base (PATH, HOME, TMPDIR, LANG, PYTHONPYCACHEPREFIX).
    pub env: BTreeMap<String, String>,
    pub network: bool,
    pub limits: Limits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timed_out: bool,
    pub cancelled: bool,
    pub duration: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// How strongly a provider can confine, as measured on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Writes outside the workspace and temp dir are blocked by the kernel.
    pub filesystem: bool,
    /// Commands without network permission get no network.
    pub network: bool,
    /// What is weaker than intended, one line each (empty when fully confined).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the command is empty")]
    EmptyCommand,
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("sandbox setup failed: {0}")]
    Setup(String),
}

pub trait SandboxProvider: Send + Sync {
    fn confinement(&self) -> &Confinement;

    /// Runs the command to completion, timeout or cancellation.
    fn run(&self, spec: CommandSpec, cancel: CancellationToken) -> BoxFuture<'_, Result<Outcome, SandboxError>>;
}

/// Subprocesses on this machine.
#[derive(Debug, Clone)]
pub struct LocalSandbox {
    confinement: Confinement,
    landlock: bool,
    netns: bool,
    /// Commands running at once, across every loop of the daemon: more
    /// would only fight for the cores; the rest wait their turn.
    slots: Arc<tokio::sync::Semaphore>,
}

/// One command per core.
fn default_slots() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
}

impl LocalSandbox {
    /// Probes what this kernel supports (Landlock, network namespaces) once.
    pub fn probe() -> LocalSandbox {
        let mut notes = Vec::new();
        let landlock = probe_landlock();
        if !landlock {
            notes.push("Landlock is unavailable: commands can write outside the workspace".to_string());
        }
        let netns = probe_netns();
        if !netns {
            notes.push("network namespaces are unavailable: commands keep the network".to_string());
        }
        for note in &notes {
            warn!(note, "weaker sandbox confinement");
        }
        LocalSandbox {
            confinement: Confinement { filesystem: landlock, network: netns, notes },
            landlock,
            netns,
            slots: Arc::new(tokio::sync::Semaphore::new(default_slots())),
        }
    }
}

/// Brings `lo` of the current network namespace up. Called between fork
/// and exec, so: raw syscalls only, no allocation.
///
/// # Safety
/// Only for a freshly forked child before exec (it changes the process's
/// network namespace's loopback and opens/closes one descriptor).
#[allow(unsafe_code)]
unsafe fn loopback_up() -> std::io::Result<()> {
    use nix::libc;
    // SAFETY: plain syscalls on a descriptor this function owns and a zeroed,
    // correctly sized ifreq; the caller guarantees the pre-exec context.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[0] = b'l' as libc::c_char;
        request.ifr_name[1] = b'o' as libc::c_char;
        let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request);
        if result == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(fd, libc::SIOCSIFFLAGS, &request);
        }
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if result < 0 { Err(error) } else { Ok(()) }
    }
}

fn probe_landlock() -> bool {
    let Ok(ruleset) = landlock_ruleset(Path::new("/"), Path::new("/")) else { return false };
    let mut ruleset = Some(ruleset);
    let mut command = std::process::Command::new("true");
    // SAFETY: between fork and exec the closure only makes the landlock syscalls
    // (no allocation on the success path) and returns.
    #[allow(unsafe_code)]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || restrict(&mut ruleset));
    }
    command.status().is_ok_and(|s| s.success())
}

fn probe_netns() -> bool {
    let mut command = std::process::Command::new("true");
    // SAFETY: unshare(2) is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    command.status().is_ok_and(|s| s.success())
}

/// Read and execute everywhere; write only below `workspace` and `tmp` (and /dev/null).
fn landlock_ruleset(workspace: &Path, tmp: &Path) -> Result<RulesetCreated, String> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let read = AccessFs::from_read(LANDLOCK_ABI);
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], read)))
        .and_then(|r| r.add_rules(path_beneath_rules([workspace, tmp], all)))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(["/dev/null"], AccessFs::from_write(LANDLOCK_ABI) | AccessFs::ReadFile))
        })
        .map_err(|e| e.to_string())
}

/// Applies a prepared ruleset to the calling (child) process.
fn restrict(ruleset: &mut Option<RulesetCreated>) -> std::io::Result<()> {
    let Some(ruleset) = ruleset.take() else { return Ok(()) };
    match ruleset.restrict_self() {
        Ok(status) if status.ruleset != RulesetStatus::NotEnforced => Ok(()),
        Ok(_) => Err(std::io::Error::other("landlock not enforced")),
        Err(_) => Err(std::io::Error::other("landlock restrict_self failed")),
    }
}

/// The environment variable that marks every process a command starts.
const TAG_VARIABLE: &str = "MAESTRO_SANDBOX_RUN";
static TAG_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Kills every process whose initial environment carries `TAG_VARIABLE=tag`
/// (those that called setsid(2) and left the process group). A process that
/// re-executes itself with a fresh environment is not found this way.
fn kill_tagged(tag: &str) {
    let needle = format!("{TAG_VARIABLE}={tag}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Reads a pipe to its end, keeping at most `cap` bytes.
async fn capture(mut pipe: impl tokio::io::AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buffer = [0u8; 16 << 10];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return (kept, truncated),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
}

impl SandboxProvider for LocalSandbox {
    fn confinement(&self) -> &Confinement {
        &self.confinement
    }

    fn run(&self, spec: CommandSpec, cancel: CancellationToken) -> BoxFuture<'_, Result<Outcome, SandboxError>> {
        async move {
            let Some(program) = spec.argv.first().cloned() else { return Err(SandboxError::EmptyCommand) };
            let _slot = tokio::select! {
                permit = self.slots.clone().acquire_owned() => permit.map_err(|e| SandboxError::Setup(e.to_string()))?,
                () = cancel.cancelled() => return Ok(Outcome { cancelled: true, ..Outcome::default() }),
            };
            let tmp = tempfile::Builder::new()
                .prefix("maestro-sandbox-")
                .tempdir()
                .map_err(|e| SandboxError::Setup(format!("cannot create a private temp dir: {e}")))?;
            let mut ruleset = if self.landlock {
                Some(landlock_ruleset(&spec.workspace, tmp.path()).map_err(SandboxError::Setup)?)
            } else {
                None
            };
            let isolate_network = !spec.network && self.netns;
            let limits = spec.limits;

            // Every process of this command inherits the tag, even one that leaves the group.
            let tag = format!("{}-{}", std::process::id(), TAG_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let mut command = tokio::process::Command::new(&program);
            command
                .args(&spec.argv[1..])
                .current_dir(&spec.workspace)
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("HOME", tmp.path())
                .env("TMPDIR", tmp.path())
                .env("LANG", "C.UTF-8")
                // Interpreter caches go to the run's temp dir, not the workspace:
                // no stray files to commit, no stale bytecode across rollbacks.
                .env("PYTHONPYCACHEPREFIX", tmp.path().join("pycache"))
                .env(TAG_VARIABLE, &tag)
                .envs(&spec.env)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            // SAFETY: between fork and exec the closure only calls setrlimit(2),
            // setpriority(2), unshare(2), socket(2)/ioctl(2)/close(2) (to bring the private
            // loopback up) and the landlock syscalls, all async-signal-safe,
            // and allocates nothing on the success path.
            #[allow(unsafe_code)]
            unsafe {
                command.pre_exec(move || {
                    let set = |resource, value: u64| setrlimit(resource, value, value).map_err(std::io::Error::from);
                    set(Resource::RLIMIT_CPU, limits.cpu_seconds)?;
                    set(Resource::RLIMIT_AS, limits.address_space_bytes)?;
                    set(Resource::RLIMIT_FSIZE, limits.file_size_bytes)?;
                    set(Resource::RLIMIT_NPROC, limits.processes)?;
                    set(Resource::RLIMIT_CORE, 0)?;
                    // Below the daemon's priority: agents' commands never starve it.
                    nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, 5);
                    if isolate_network {
                        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                        // Tests start local servers: the namespace gets its own loopback, up.
                        loopback_up()?;
                    }
                    restrict(&mut ruleset)
                });
            }
            let started = Instant::now();
            let mut child = command.spawn().map_err(|source| SandboxError::Spawn { program: program.clone(), source })?;
            let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
            let stdout = tokio::spawn(capture(child.stdout.take().expect("stdout is piped"), limits.output_bytes));
            let stderr = tokio::spawn(capture(child.stderr.take().expect("stderr is piped"), limits.output_bytes));
            let mut outcome = Outcome::default();
            let status = tokio::select! {
                status = child.wait() => status.ok(),
                () = tokio::time::sleep(limits.timeout) => { outcome.timed_out = true; None }
                () = cancel.cancelled() => { outcome.cancelled = true; None }
            };
            // Kill the whole group, also after a normal exit: nothing the command
            // started may outlive it.
            if let Some(pgid) = pgid {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            // Processes that started a session of their own escape the group: find them by tag.
            let tag_owned = tag.clone();
            let _ = tokio::task::spawn_blocking(move || kill_tagged(&tag_owned)).await;
            let status = match status {
                Some(status) => Some(status),
                None => child.wait().await.ok(),
            };
            if let Some(status) = status {
                outcome.exit_code = status.code();
                outcome.signal = status.signal();
            }
            // A process that left the group could hold the pipes open: do not wait for it.
            let grace = Duration::from_secs(2);
            let (out, out_truncated) = tokio::time::timeout(grace, stdout).await.ok().and_then(Result::ok).unwrap_or_default();
            let (err, err_truncated) = tokio::time::timeout(grace, stderr).await.ok().and_then(Result::ok).unwrap_or_default();
            outcome.stdout = String::from_utf8_lossy(&out).into_owned();
            outcome.stderr = String::from_utf8_lossy(&err).into_owned();
            outcome.stdout_truncated = out_truncated;
            outcome.stderr_truncated = err_truncated;
            outcome.duration = started.elapsed();
            debug!(program, exit = ?outcome.exit_code, signal = ?outcome.signal, timed_out = outcome.timed_out, "command finished");
            Ok(outcome)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(workspace: &Path, command: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: command.iter().map(|s| s.to_string()).collect(),
            workspace: workspace.to_path_buf(),
            env: BTreeMap::new(),
            network: false,
            limits: Limits { timeout: Duration::from_secs(10), ..Limits::default() },
        }
    }

    async fn run(spec: CommandSpec) -> Outcome {
        LocalSandbox::probe().run(spec, CancellationToken::new()).await.unwrap()
    }

    fn alive(pid: i32) -> bool {
        // A zombie has exited; only a running process counts.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
    }

    #[tokio::test]
    async fn runs_in_the_workspace_with_a_clean_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(spec(dir.path(), &["sh", "-c", "pwd; env | sort"])).await;
        assert!(out.success(), "{out:?}");
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next().unwrap(), dir.path().canonicalize().unwrap().to_str().unwrap());
        let names: Vec<&str> = lines.filter_map(|l| l.split('=').next()).collect();
        for name in &names {
            let allowed = ["HOME", "LANG", "PATH", "PWD", "PYTHONPYCACHEPREFIX", "SHLVL", "TMPDIR", "_", TAG_VARIABLE];
            assert!(allowed.contains(name), "leaked variable {name}");
        }
        let missing =
            LocalSandbox::probe().run(spec(dir.path(), &["no-such-program-xyz"]), CancellationToken::new()).await;
        assert!(matches!(missing, Err(SandboxError::Spawn { .. })), "{missing:?}");
    }

    #[tokio::test]
    async fn a_command_that_ignores_sigterm_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut slow = spec(dir.path(), &["sh", "-c", "trap '' TERM; sleep 30"]);
        slow.limits.timeout = Duration::from_millis(300);
        let out = run(slow).await;
        assert!(out.timed_out);
        assert_eq!(out.signal, Some(libc_sigkill()));
        assert!(out.duration < Duration::from_secs(5), "{:?}", out.duration);
    }

    /// The machines this project runs on support Landlock and network
    /// namespaces; elsewhere set MAESTRO_ALLOW_WEAK_SANDBOX=1 to skip.
    fn require_or_skip(sandbox: &LocalSandbox) {
        let notes = &sandbox.confinement().notes;
        assert!(std::env::var_os("MAESTRO_ALLOW_WEAK_SANDBOX").is_some(), "weaker confinement here: {notes:?}");
        eprintln!("skipped: {notes:?}");
    }

    fn libc_sigkill() -> i32 {
        Signal::SIGKILL as i32
    }

    #[tokio::test]
    async fn cancellation_stops_the_command_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let out = LocalSandbox::probe().run(spec(dir.path(), &["sleep", "30"]), cancel).await.unwrap();
        assert!(out.cancelled && !out.timed_out);
        assert!(out.duration < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_grandchild_does_not_outlive_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(spec(dir.path(), &["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!; exit 0"])).await;
        assert!(out.success(), "{out:?}");
        let pid: i32 = out.stdout.trim().parse().unwrap();
        for _ in 0..50 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("grandchild {pid} survived its command");
    }

    #[tokio::test]
    async fn a_grandchild_in_a_session_of_its_own_is_found_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let script = "setsid sh -c 'echo $$; exec sleep 30' & sleep 0.2; exit 0";
        let out = run(spec(dir.path(), &["sh", "-c", script])).await;
        assert!(out.success(), "{out:?}");
        let pid: i32 = out.stdout.trim().parse().unwrap_or_else(|_| panic!("no pid in {out:?}"));
        for _ in 0..50 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("grandchild {pid} in its own session survived");
    }

    #[tokio::test]
    async fn output_floods_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut flood = spec(dir.path(), &["yes", "flood"]);
        flood.limits.timeout = Duration::from_millis(500);
        flood.limits.output_bytes = 64 << 10;
        let out = run(flood).await;
        assert!(out.timed_out);
        assert!(out.stdout_truncated);
        assert_eq!(out.stdout.len(), 64 << 10);
    }

    #[tokio::test]
    async fn files_larger_than_the_limit_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = spec(dir.path(), &["sh", "-c", "head -c 4000000 /dev/zero > big.bin"]);
        big.limits.file_size_bytes = 1 << 20;
        let out = run(big).await;
        assert!(!out.success(), "{out:?}");
        let size = std::fs::metadata(dir.path().join("big.bin")).map(|m| m.len()).unwrap_or(0);
        assert!(size <= 1 << 20, "{size} bytes written");
    }

    #[tokio::test]
    async fn writes_outside_the_workspace_are_blocked() {
        let sandbox = LocalSandbox::probe();
        if !sandbox.confinement().filesystem {
            require_or_skip(&sandbox);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("escaped");
        let script = format!("echo inside > ok.txt && echo outside > {}", target.display());
        let out = sandbox.run(spec(dir.path(), &["sh", "-c", &script]), CancellationToken::new()).await.unwrap();
        assert!(!out.success(), "{out:?}");
        assert!(dir.path().join("ok.txt").exists(), "writing inside works");
        assert!(!target.exists(), "writing outside was blocked");
        // The private temp dir is writable.
        let out = sandbox
            .run(
                spec(dir.path(), &["sh", "-c", "echo x > \"$TMPDIR/t\" && cat \"$TMPDIR/t\""]),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout.trim(), "x", "{out:?}");
    }

    #[tokio::test]
    async fn no_network_unless_the_role_allows_it() {
        let sandbox = LocalSandbox::probe();
        if !sandbox.confinement().network {
            require_or_skip(&sandbox);
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let connect = format!("echo hi > /dev/tcp/127.0.0.1/{port}");
        let denied = sandbox.run(spec(dir.path(), &["bash", "-c", &connect]), CancellationToken::new()).await.unwrap();
        assert!(!denied.success(), "connected without network permission: {denied:?}");
        let mut allowed = spec(dir.path(), &["bash", "-c", &connect]);
        allowed.network = true;
        let allowed = sandbox.run(allowed, CancellationToken::new()).await.unwrap();
        assert!(allowed.success(), "{allowed:?}");
    }
}
