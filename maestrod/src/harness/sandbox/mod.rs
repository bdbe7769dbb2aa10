//! Running commands for agents. `SandboxProvider` is the seam for other
//! providers (containers, remote runners); `LocalSandbox` runs a subprocess
//! in layers, each probed at start-up and reported in [`Confinement`]:
//!
//! - **namespaces** (`jail`): user, mount, PID, IPC, UTS and, without network
//!   permission, network. The command sees a private root (`layout`): the
//!   toolchains read-only, `/etc` without its secrets, the workspace
//!   writable but `.git`, `.maestro` and nested `.git` read-only, a private
//!   `/tmp`, a fresh `/proc` of its own PID namespace. The daemon, its data,
//!   `$HOME`, `/run` and other workspaces do not exist for it; it is the
//!   first process of its PID namespace, so nothing it starts outlives it.
//! - **no privileges**: every capability dropped (also for a root daemon),
//!   securebits locked, `no_new_privs`.
//! - **seccomp** (`filter`): no ptrace, mount, new namespaces, keys, BPF,
//!   modules, `TIOCSTI`.
//! - **Landlock** (`rules`): the same view again as kernel rules (reads only
//!   of the view, writes only in the workspace and the run's temp dir), and
//!   no signals or abstract sockets outside the sandbox.
//! - rlimits, its own process group killed with every child on timeout,
//!   cancellation and exit, a cleared environment, capped output.
//!
//! What the kernel cannot enforce is reported, never skipped silently.

mod filter;
mod jail;
pub mod layout;
mod rules;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use seccompiler::BpfProgram;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::jail::{Jail, Namespaces};
use self::layout::{Entry, View};

/// Resource limits for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub cpu_seconds: u64,
    pub address_space_bytes: u64,
    pub file_size_bytes: u64,
    /// Processes of the sandbox's user (not enforced for root).
    pub processes: u64,
    pub open_files: u64,
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
            open_files: 1024,
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Confinement {
    /// Writes outside the workspace and temp dir are blocked by the kernel.
    pub filesystem: bool,
    /// Commands without network permission get no network.
    pub network: bool,
    /// The layers in force, for people: `user namespace`, `private root`, `seccomp`, …
    pub layers: Vec<String>,
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

/// What the operator adds to the sandbox's view.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Further paths commands may read (toolchains outside `/usr`, like `~/.rustup`).
    pub extra_read: Vec<PathBuf>,
    /// Paths commands must never see, even inside a workspace (the daemon's data dir).
    pub hidden: Vec<PathBuf>,
}

/// Which layers this machine supports (the strongest combination that works).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layers {
    namespaces: Namespaces,
    landlock: bool,
    seccomp: bool,
    /// Capabilities can be dropped (and are).
    capabilities: bool,
}

/// Subprocesses on this machine.
#[derive(Debug, Clone)]
pub struct LocalSandbox {
    confinement: Confinement,
    layers: Layers,
    /// The system part of every command's view.
    system: Arc<Vec<Entry>>,
    hidden: Arc<Vec<PathBuf>>,
    filters: Arc<Vec<BpfProgram>>,
    /// Commands running at once, across every loop of the daemon: more
    /// would only fight for the cores; the rest wait their turn.
    slots: Arc<tokio::sync::Semaphore>,
}

/// One command per core.
fn default_slots() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
}

/// The private directory of one run: its temp dir (without a private root)
/// and the mount point of its private root.
fn run_dir() -> Result<tempfile::TempDir, SandboxError> {
    let run = tempfile::Builder::new()
        .prefix("maestro-sandbox-")
        .tempdir()
        .map_err(|e| SandboxError::Setup(format!("cannot create a private temp dir: {e}")))?;
    for sub in ["tmp", "root"] {
        std::fs::create_dir(run.path().join(sub))
            .map_err(|e| SandboxError::Setup(format!("cannot create the sandbox's {sub} dir: {e}")))?;
    }
    Ok(run)
}

impl LocalSandbox {
    /// Probes what this kernel supports, once.
    pub fn probe() -> LocalSandbox {
        Self::probe_with(SandboxOptions::default())
    }

    pub fn probe_with(options: SandboxOptions) -> LocalSandbox {
        let system = Arc::new(layout::system(&options.extra_read));
        let filters = match filter::filters() {
            Ok(filters) => filters,
            Err(error) => {
                warn!(%error, "no seccomp filter");
                Vec::new()
            }
        };
        let root = nix::unistd::geteuid().is_root();
        let full = Namespaces { user: true, mount: true, pid: true, net: true };
        let candidates = [
            Layers { namespaces: full, landlock: true, seccomp: true, capabilities: true },
            Layers { namespaces: full, landlock: false, seccomp: true, capabilities: true },
            Layers {
                namespaces: Namespaces { user: true, net: true, ..Namespaces::default() },
                landlock: true,
                seccomp: true,
                capabilities: true,
            },
            Layers {
                namespaces: Namespaces { net: root, ..Namespaces::default() },
                landlock: true,
                seccomp: true,
                capabilities: true,
            },
            Layers {
                namespaces: Namespaces { net: root, ..Namespaces::default() },
                landlock: true,
                seccomp: false,
                capabilities: false,
            },
            Layers { namespaces: Namespaces::default(), landlock: false, seccomp: false, capabilities: false },
        ];
        let mut sandbox = LocalSandbox {
            confinement: Confinement::default(),
            layers: candidates[candidates.len() - 1],
            system,
            hidden: Arc::new(options.hidden.iter().map(|p| p.canonicalize().unwrap_or_else(|_| p.clone())).collect()),
            filters: Arc::new(filters),
            slots: Arc::new(tokio::sync::Semaphore::new(default_slots())),
        };
        for layers in candidates {
            if layers.seccomp && sandbox.filters.is_empty() {
                continue;
            }
            sandbox.layers = layers;
            if sandbox.probe_run() {
                break;
            }
        }
        sandbox.confinement = sandbox.describe();
        info!(layers = ?sandbox.confinement.layers, "sandbox");
        for note in &sandbox.confinement.notes {
            warn!(note, "weaker sandbox confinement");
        }
        sandbox
    }

    /// A sandbox with no layers but rlimits and process groups: what a machine
    /// without namespaces, Landlock and seccomp gives. For tests of the checks
    /// that do not rely on the sandbox (the loop's guard of `.git`).
    #[cfg(test)]
    pub(crate) fn unconfined() -> LocalSandbox {
        let layers = Layers { namespaces: Namespaces::default(), landlock: false, seccomp: false, capabilities: false };
        let mut sandbox = LocalSandbox {
            confinement: Confinement::default(),
            layers,
            system: Arc::new(Vec::new()),
            hidden: Arc::new(Vec::new()),
            filters: Arc::new(Vec::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(default_slots())),
        };
        sandbox.confinement = sandbox.describe();
        sandbox
    }

    /// Runs `true` with the current layers; whether it worked.
    fn probe_run(&self) -> bool {
        let Ok(workspace) = tempfile::tempdir() else { return false };
        let Ok(run) = run_dir() else { return false };
        let spec = CommandSpec {
            argv: vec!["true".into()],
            workspace: workspace.path().to_path_buf(),
            env: BTreeMap::new(),
            network: false,
            limits: Limits::default(),
        };
        let Ok(mut command) = self.command(&spec, run.path(), "probe") else { return false };
        command.as_std_mut().status().is_ok_and(|s| s.success())
    }

    fn describe(&self) -> Confinement {
        let l = self.layers;
        let ns = l.namespaces;
        let mut layers = Vec::new();
        let mut notes = Vec::new();
        let mut layer = |on: bool, name: &str, missing: &str| {
            if on {
                layers.push(name.to_string());
            } else {
                notes.push(missing.to_string());
            }
        };
        layer(ns.user, "user namespace", "no user namespace: commands keep the daemon's user and privileges");
        layer(
            ns.mount,
            "private root (.git and .maestro read-only)",
            "no private root: commands see the whole file system (Landlock limits what they read and write) and can change .git and .maestro (the loop checks them after each phase)",
        );
        layer(ns.pid, "pid namespace", "no PID namespace: commands can see other processes");
        layer(ns.net, "network namespace", "no network namespace: commands keep the network");
        layer(l.landlock, "landlock", "Landlock is unavailable: no kernel rules on what commands read and write");
        layer(l.seccomp, "seccomp", "no seccomp filter: commands may ptrace, mount or use BPF where permitted");
        layer(l.capabilities, "no capabilities", "capabilities are not dropped");
        layers.push("rlimits".into());
        Confinement { filesystem: ns.mount || l.landlock, network: ns.net, layers, notes }
    }

    /// The command for `spec`, with its layers set up to enter in the child.
    fn command(&self, spec: &CommandSpec, run: &Path, tag: &str) -> Result<tokio::process::Command, SandboxError> {
        let Some(program) = spec.argv.first() else { return Err(SandboxError::EmptyCommand) };
        let layers = self.layers;
        let private_root = layers.namespaces.user && layers.namespaces.mount;
        let view = View::new(&self.system, &spec.workspace, run, &self.hidden);
        // Inside a private root the run's temp dir is /tmp; otherwise it is where it is.
        let tmp = if private_root { PathBuf::from("/tmp") } else { view.tmp.clone() };
        let ruleset = if layers.landlock { Some(rules::ruleset(&view).map_err(SandboxError::Setup)?) } else { None };
        let (uid_map, gid_map) = Jail::identity_maps();
        let mut jail = Jail {
            namespaces: Namespaces { net: layers.namespaces.net && !spec.network, ..layers.namespaces },
            uid_map,
            gid_map,
            program: if private_root { view.program() } else { Vec::new() },
            ruleset,
            filters: if layers.seccomp { self.filters.as_ref().clone() } else { Vec::new() },
            drop_capabilities: layers.capabilities,
        };
        let limits = spec.limits;
        let mut command = tokio::process::Command::new(program);
        command
            .args(&spec.argv[1..])
            .current_dir(&spec.workspace)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &tmp)
            .env("TMPDIR", &tmp)
            .env("LANG", "C.UTF-8")
            // Interpreter caches go to the run's temp dir, not the workspace:
            // no stray files to commit, no stale bytecode across rollbacks.
            .env("PYTHONPYCACHEPREFIX", tmp.join("pycache"))
            .env(TAG_VARIABLE, tag)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: between fork and exec the closure only calls setrlimit(2),
        // setpriority(2) and `Jail::enter`, which makes async-signal-safe system
        // calls on buffers prepared here and allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                let set = |resource, value: u64| setrlimit(resource, value, value).map_err(std::io::Error::from);
                set(Resource::RLIMIT_CPU, limits.cpu_seconds)?;
                set(Resource::RLIMIT_AS, limits.address_space_bytes)?;
                set(Resource::RLIMIT_FSIZE, limits.file_size_bytes)?;
                set(Resource::RLIMIT_NPROC, limits.processes)?;
                set(Resource::RLIMIT_NOFILE, limits.open_files)?;
                set(Resource::RLIMIT_CORE, 0)?;
                // Below the daemon's priority: agents' commands never starve it.
                nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, 5);
                jail.enter()
            });
        }
        Ok(command)
    }
}

/// Removes `root` and everything below it without recursion and without long
/// paths, whatever a command made there (30,000 nested folders, folders
/// without permissions): every folder is first moved up to `root` itself.
pub(crate) fn remove_tree(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut counter = 0u64;
    let mut queue = vec![root.to_path_buf()];
    let mut emptied = Vec::new();
    while let Some(dir) = queue.pop() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                counter += 1;
                let flat = root.join(format!(".maestro-rm-{counter}"));
                let moved = if dir == root {
                    path
                } else if std::fs::rename(&path, &flat).is_ok() {
                    flat
                } else {
                    continue;
                };
                queue.push(moved);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        emptied.push(dir);
    }
    for dir in emptied.into_iter().rev() {
        let _ = std::fs::remove_dir(&dir);
    }
    if root.exists() { Err(std::io::Error::other(format!("{} was not removed", root.display()))) } else { Ok(()) }
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
            let run = run_dir()?;
            let limits = spec.limits;
            // Every process of this command inherits the tag, even one that leaves the group.
            let tag = format!("{}-{}", std::process::id(), TAG_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let mut command = self.command(&spec, run.path(), &tag)?;
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
            // What the command left in its temp dir may be arbitrarily deep or locked: removed
            // without recursion, off the async threads.
            let run = run.keep();
            let _ = tokio::task::spawn_blocking(move || remove_tree(&run)).await;
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

    #[test]
    fn trees_of_any_depth_and_permissions_are_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        std::fs::create_dir(&root).unwrap();
        // Deeper than PATH_MAX and than any recursion would survive: built with relative steps.
        let mut at: std::os::fd::OwnedFd = std::fs::File::open(&root).unwrap().into();
        for _ in 0..5000 {
            nix::sys::stat::mkdirat(&at, "a", nix::sys::stat::Mode::S_IRWXU).unwrap();
            let flags = nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY;
            at = nix::fcntl::openat(&at, "a", flags, nix::sys::stat::Mode::empty()).unwrap();
        }
        std::fs::create_dir_all(root.join("locked/inner")).unwrap();
        std::fs::write(root.join("locked/inner/big"), vec![0u8; 1 << 20]).unwrap();
        std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
    }

    #[tokio::test]
    async fn the_command_has_its_own_proc_tmp_and_shm() {
        let sandbox = LocalSandbox::probe();
        if !sandbox.layers.namespaces.mount {
            require_or_skip(&sandbox);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = "grep -c . /proc/self/status >/dev/null && echo x > /tmp/t && echo y > /dev/shm/s && cat /tmp/t /dev/shm/s && ls /proc | grep -c '^[0-9]'";
        let out = sandbox.run(spec(dir.path(), &["sh", "-c", script]), CancellationToken::new()).await.unwrap();
        assert!(out.success(), "{out:?}");
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(&lines[..2], ["x", "y"]);
        let processes: u32 = lines[2].parse().unwrap();
        assert!(processes <= 4, "only the command's own processes are in its /proc: {processes}");
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

    /// Whether `file` appears in `dir` within a second and a half (a survivor would write it).
    async fn appears_later(dir: &Path, file: &str) -> bool {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        dir.join(file).exists()
    }

    #[tokio::test]
    async fn a_grandchild_does_not_outlive_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(spec(dir.path(), &["sh", "-c", "(sleep 0.5; touch survived) >/dev/null 2>&1 & exit 0"])).await;
        assert!(out.success(), "{out:?}");
        assert!(!appears_later(dir.path(), "survived").await, "a background child outlived its command");
    }

    #[tokio::test]
    async fn a_grandchild_in_a_session_of_its_own_with_a_fresh_environment_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let script = "setsid env -i sh -c 'sleep 0.5; touch survived' >/dev/null 2>&1 & sleep 0.1; exit 0";
        let out = run(spec(dir.path(), &["sh", "-c", script])).await;
        assert!(out.success(), "{out:?}");
        let sandbox = LocalSandbox::probe();
        if !sandbox.layers.namespaces.pid {
            // Without a PID namespace only the run tag finds it, and `env -i` drops the tag.
            require_or_skip(&sandbox);
            return;
        }
        assert!(!appears_later(dir.path(), "survived").await, "setsid + env -i escaped the command");
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
