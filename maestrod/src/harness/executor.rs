//! The single entry point for agent actions: ACL → validator → budget →
//! execution (files here, commands in the sandbox), with every decision and
//! outcome appended to the project's execution log. Agents get no other way
//! to touch files or run processes.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use super::budget::{Budget, BudgetExhausted};
use super::gate::{Action, Decision, Gate, GateError};
use super::sandbox::{CommandSpec, Limits, Outcome, SandboxError, SandboxProvider};
use super::validator::Violation;
use super::workspace_path::WorkspaceRoot;
use crate::ssot::budgets::BudgetRecord;
use crate::ssot::exec_log::NewLogEntry;
use crate::ssot::{Ssot, SsotError};

/// Largest file an agent reads in one action.
pub const MAX_READ_BYTES: u64 = 1 << 20;

/// Who acts, and where in the loop.
#[derive(Debug, Clone)]
pub struct ActionContext {
    pub loop_id: String,
    pub epoch: u64,
    /// The agent instance, e.g. "backend-1".
    pub agent: String,
    /// Its role, which selects the policy.
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
}

/// One entry of a tree listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Relative to the workspace root.
    pub path: String,
    pub is_dir: bool,
    pub bytes: u64,
}

/// One line a search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub path: String,
    pub line: usize,
    pub text: String,
}

/// Most entries a tree listing returns, and most lines a search returns.
pub const MAX_TREE_ENTRIES: usize = 2000;
pub const MAX_MATCHES: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutput {
    Read(String),
    Listing(Vec<DirEntry>),
    /// Entries, and whether the listing stopped at its limit.
    Tree(Vec<TreeEntry>, bool),
    /// Matches, and whether the search stopped at its limit.
    Matches(Vec<Match>, bool),
    Written {
        bytes: usize,
    },
    Deleted,
    Ran(Outcome),
    /// An SSOT write may proceed.
    Authorized,
}

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("denied by {}: {}", .0.rule, .0.reason)]
    Denied(Violation),
    #[error(transparent)]
    Budget(#[from] BudgetExhausted),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("cannot log the action: {0}")]
    Log(#[from] SsotError),
    /// The loop's daemon no longer owns it: nothing is done.
    #[error("{0}")]
    Fenced(String),
}

/// The harness of one workspace in one project.
pub struct Harness {
    gate: Gate,
    sandbox: Arc<dyn SandboxProvider>,
    ssot: Arc<Ssot>,
    project: String,
    budget: Arc<Budget>,
    limits: Limits,
}

fn kind(action: &Action) -> &'static str {
    match action {
        Action::ReadFile { .. } => "read_file",
        Action::ListDir { .. } => "list_dir",
        Action::ListTree { .. } => "list_tree",
        Action::Search { .. } => "search",
        Action::WriteFile { .. } => "write_file",
        Action::DeleteFile { .. } => "delete_file",
        Action::RunCommand { .. } => "run_command",
        Action::SsotWrite { .. } => "ssot_write",
    }
}

fn target(action: &Action) -> String {
    match action {
        Action::ReadFile { path } | Action::ListDir { path } | Action::DeleteFile { path } => path.clone(),
        Action::ListTree { path, depth } => format!("{path} (depth {depth})"),
        Action::Search { path, pattern } => format!("{pattern} in {path}"),
        Action::WriteFile { path, .. } => path.clone(),
        Action::RunCommand { argv } => argv.join(" "),
        Action::SsotWrite { collection, target } => format!("{collection}/{target}"),
    }
}

impl Harness {
    pub fn new(
        gate: Gate,
        sandbox: Arc<dyn SandboxProvider>,
        ssot: Arc<Ssot>,
        project: &str,
        budget: Arc<Budget>,
        limits: Limits,
    ) -> Self {
        Self { gate, sandbox, ssot, project: project.to_string(), budget, limits }
    }

    /// Decides, charges, executes and logs one action.
    pub async fn perform(
        &self,
        ctx: &ActionContext,
        action: Action,
        cancel: CancellationToken,
    ) -> Result<ActionOutput, HarnessError> {
        let span = info_span!("action", kind = kind(&action), target = %target(&action), agent = %ctx.agent);
        async {
            let started = Instant::now();
            if let Err(lost) = crate::ssot::fence::check() {
                return Err(HarnessError::Fenced(lost.to_string()));
            }
            if let Decision::Deny(violation) = self.gate.check(&ctx.role, &action)? {
                let detail = format!("{}: {}", violation.rule, violation.reason);
                crate::metrics::get()
                    .harness_denials
                    .get_or_create(&crate::metrics::RuleLabels { rule: violation.rule.clone() })
                    .inc();
                self.log(ctx, &action, "denied", &detail, started).await?;
                return Err(HarnessError::Denied(violation));
            }
            let charged = self.budget.charge(ctx.epoch, &ctx.agent, 1, 0);
            self.record_budget(ctx, charged.as_ref().err()).await?;
            if let Err(exhausted) = charged {
                self.log(ctx, &action, "budget-exhausted", &exhausted.to_string(), started).await?;
                return Err(exhausted.into());
            }
            let result = self.execute(ctx, &action, cancel).await;
            let (outcome, detail) = match &result {
                Ok(ActionOutput::Ran(out)) if out.success() => ("ok".to_string(), "allowed".to_string()),
                Ok(ActionOutput::Ran(out)) => {
                    let how = match (out.timed_out, out.cancelled, out.exit_code, out.signal) {
                        (true, ..) => "timed out".to_string(),
                        (_, true, ..) => "cancelled".to_string(),
                        (_, _, Some(code), _) => format!("exit {code}"),
                        (_, _, None, Some(signal)) => format!("signal {signal}"),
                        _ => "unknown".to_string(),
                    };
                    ("failed".to_string(), format!("allowed; {how}"))
                }
                Ok(_) => ("ok".to_string(), "allowed".to_string()),
                Err(error) => ("error".to_string(), format!("allowed; {error}")),
            };
            self.log(ctx, &action, &outcome, &detail, started).await?;
            result
        }
        .instrument(span)
        .await
    }

    /// Charges the model's tokens for one turn of `ctx`'s agent.
    pub async fn charge_tokens(&self, ctx: &ActionContext, tokens: u64) -> Result<(), HarnessError> {
        let charged = self.budget.charge(ctx.epoch, &ctx.agent, 0, tokens);
        self.record_budget(ctx, charged.as_ref().err()).await?;
        Ok(charged.map(drop)?)
    }

    /// The loop's budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn policy(&self) -> &crate::harness::policy::Policy {
        self.gate.policy()
    }

    /// `path` as the workspace-relative path it names (`./src//a.py` → `src/a.py`), if it is inside.
    pub fn relative(&self, path: &str) -> Option<String> {
        self.gate.root().resolve(path).ok().map(|p| p.relative().to_string())
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn ssot(&self) -> &Arc<Ssot> {
        &self.ssot
    }

    /// Makes the agent's usage visible in the SSOT.
    async fn record_budget(&self, ctx: &ActionContext, exhausted: Option<&BudgetExhausted>) -> Result<(), SsotError> {
        let usage = self.budget.agent_usage(ctx.epoch, &ctx.agent);
        let limits = self.budget.config().per_agent_epoch;
        let record = BudgetRecord {
            loop_id: ctx.loop_id.clone(),
            epoch: ctx.epoch,
            agent: ctx.agent.clone(),
            tokens: usage.tokens,
            steps: usage.steps,
            elapsed_ms: usage.elapsed_ms,
            token_limit: limits.tokens,
            step_limit: limits.steps,
            wall_limit_ms: limits.wall_ms,
            exhausted: exhausted.map(ToString::to_string).unwrap_or_default(),
            update_time_ms: 0,
        };
        self.ssot.record_budget(&self.project, record).await
    }

    async fn log(
        &self,
        ctx: &ActionContext,
        action: &Action,
        outcome: &str,
        detail: &str,
        started: Instant,
    ) -> Result<(), SsotError> {
        let mut target = target(action);
        target.truncate(4000);
        let entry = NewLogEntry {
            loop_id: ctx.loop_id.clone(),
            epoch: ctx.epoch,
            agent: ctx.agent.clone(),
            action: kind(action).to_string(),
            target,
            outcome: outcome.to_string(),
            tokens: 0,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            detail: detail.chars().take(8000).collect(),
            ..NewLogEntry::default()
        };
        self.ssot.append_log(&self.project, entry).await.map(drop)
    }

    async fn execute(
        &self,
        ctx: &ActionContext,
        action: &Action,
        cancel: CancellationToken,
    ) -> Result<ActionOutput, HarnessError> {
        let root = self.gate.root();
        match action {
            // The SSOT tools make the change themselves once it is authorised here.
            Action::SsotWrite { .. } => Ok(ActionOutput::Authorized),
            Action::RunCommand { argv } => {
                let role = self.gate.policy().role(&ctx.role).map_err(GateError::from)?;
                let spec = CommandSpec {
                    argv: argv.clone(),
                    workspace: root.path().to_path_buf(),
                    env: Default::default(),
                    network: role.network,
                    limits: self.limits,
                };
                Ok(ActionOutput::Ran(self.sandbox.run(spec, cancel).await?))
            }
            Action::ReadFile { path } => {
                let root = root.clone();
                let path = path.clone();
                blocking(move || read_file(&root, &path)).await.map(ActionOutput::Read)
            }
            Action::ListDir { path } => {
                let root = root.clone();
                let path = path.clone();
                blocking(move || list_dir(&root, &path)).await.map(ActionOutput::Listing)
            }
            Action::ListTree { path, depth } => {
                let (entries, full) = self.visible_tree(ctx, root, path, *depth).await?;
                Ok(ActionOutput::Tree(entries, full))
            }
            Action::Search { path, pattern } => {
                let regex = regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| HarnessError::File { path: path.clone(), message: format!("invalid pattern: {e}") })?;
                let (entries, _) = self.visible_tree(ctx, root, path, 64).await?;
                let files: Vec<String> = entries.into_iter().filter(|e| !e.is_dir).map(|e| e.path).collect();
                let root = root.clone();
                blocking(move || Ok(search(&root, &files, &regex)))
                    .await
                    .map(|(m, more)| ActionOutput::Matches(m, more))
            }
            Action::WriteFile { path, content } => {
                let root = root.clone();
                let (path, content) = (path.clone(), content.clone());
                blocking(move || write_file(&root, &path, &content)).await.map(|bytes| ActionOutput::Written { bytes })
            }
            Action::DeleteFile { path } => {
                let root = root.clone();
                let path = path.clone();
                blocking(move || delete(&root, &path)).await.map(|()| ActionOutput::Deleted)
            }
        }
    }
}

impl Harness {
    /// The entries below `path` (`depth` levels) that `ctx`'s role may read: no
    /// links followed, no `.git`, denied paths left out; at most `MAX_TREE_ENTRIES`.
    async fn visible_tree(
        &self,
        ctx: &ActionContext,
        root: &WorkspaceRoot,
        path: &str,
        depth: u32,
    ) -> Result<(Vec<TreeEntry>, bool), HarnessError> {
        let (root2, path2) = (root.clone(), path.to_string());
        let entries = blocking(move || walk(&root2, &path2, depth)).await?;
        let mut visible = Vec::new();
        let mut full = false;
        for entry in entries {
            let allowed =
                matches!(self.gate.check(&ctx.role, &Action::ReadFile { path: entry.path.clone() })?, Decision::Allow);
            if allowed {
                if visible.len() == MAX_TREE_ENTRIES {
                    full = true;
                    break;
                }
                visible.push(entry);
            }
        }
        Ok((visible, full))
    }
}

/// Files and folders below `requested`, breadth first, without following links
/// or entering `.git`; a bounded number, whatever the tree holds.
fn walk(root: &WorkspaceRoot, requested: &str, depth: u32) -> Result<Vec<TreeEntry>, HarnessError> {
    let start = resolve(root, requested)?;
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([(start, 0u32)]);
    while let Some((dir, level)) = queue.pop_front() {
        if level >= depth || out.len() > 4 * MAX_TREE_ENTRIES {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if entry.file_name() == ".git" {
                continue;
            }
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            let path = entry.path();
            let rel = path.strip_prefix(root.path()).unwrap_or(&path).display().to_string();
            let is_dir = meta.is_dir();
            if is_dir {
                queue.push_back((path, level + 1));
            }
            if meta.is_dir() || meta.is_file() {
                out.push(TreeEntry { path: rel, is_dir, bytes: if is_dir { 0 } else { meta.len() } });
            }
        }
    }
    Ok(out)
}

/// Lines of `files` matching `regex`: text files up to 1 MiB, at most `MAX_MATCHES` lines.
fn search(root: &WorkspaceRoot, files: &[String], regex: &regex::Regex) -> (Vec<Match>, bool) {
    let mut matches = Vec::new();
    for rel in files {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(no_follow() | nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(root.path().join(rel))
        else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file() && m.len() <= MAX_READ_BYTES) {
            continue;
        }
        let mut bytes = Vec::new();
        if file.take(MAX_READ_BYTES).read_to_end(&mut bytes).is_err() || bytes.contains(&0) {
            continue;
        }
        for (n, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if regex.is_match(line) {
                if matches.len() == MAX_MATCHES {
                    return (matches, true);
                }
                let text: String = line.chars().take(300).collect();
                matches.push(Match { path: rel.clone(), line: n + 1, text });
            }
        }
    }
    (matches, false)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HarnessError> + Send + 'static,
) -> Result<T, HarnessError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(HarnessError::File { path: String::new(), message: format!("file task failed: {e}") }))
}

fn file_error(path: &str) -> impl FnOnce(std::io::Error) -> HarnessError + '_ {
    move |e| HarnessError::File { path: path.to_string(), message: e.to_string() }
}

/// Resolves `requested` again at the moment of use (the gate decided earlier).
fn resolve(root: &WorkspaceRoot, requested: &str) -> Result<std::path::PathBuf, HarnessError> {
    root.resolve(requested)
        .map(|p| p.absolute().to_path_buf())
        .map_err(|v| HarnessError::Denied(Violation { rule: v.rule().to_string(), reason: v.to_string() }))
}

/// After opening, the descriptor must still point inside the workspace: a
/// path swapped for a link between check and use is caught here.
fn check_opened(root: &WorkspaceRoot, file: &std::fs::File, requested: &str) -> Result<(), HarnessError> {
    use std::os::fd::AsRawFd;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(file_error(requested))?;
    if real.starts_with(root.path()) {
        Ok(())
    } else {
        Err(HarnessError::Denied(Violation {
            rule: "path.symlink".into(),
            reason: format!("{requested:?} was swapped for a link to {} while being opened", real.display()),
        }))
    }
}

/// The daemon reads and writes only plain files with one name: a hard link
/// to a file outside the workspace, a device or a fifo is refused.
fn check_plain(file: &std::fs::File, requested: &str) -> Result<(), HarnessError> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(file_error(requested))?;
    let refuse = |rule: &str, reason: String| Err(HarnessError::Denied(Violation { rule: rule.into(), reason }));
    if !meta.file_type().is_file() {
        return refuse("path.special", format!("{requested:?} is not a regular file"));
    }
    if meta.nlink() > 1 {
        return refuse(
            "path.hardlink",
            format!("{requested:?} has {} names (a hard link): it may be a file outside the workspace", meta.nlink()),
        );
    }
    Ok(())
}

fn no_follow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

fn read_file(root: &WorkspaceRoot, requested: &str) -> Result<String, HarnessError> {
    let path = resolve(root, requested)?;
    // Non-blocking: opening a fifo must not hang the daemon (it is refused right after).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&path)
        .map_err(file_error(requested))?;
    check_opened(root, &file, requested)?;
    check_plain(&file, requested)?;
    let mut bytes = Vec::new();
    file.take(MAX_READ_BYTES + 1).read_to_end(&mut bytes).map_err(file_error(requested))?;
    if bytes.len() as u64 > MAX_READ_BYTES {
        return Err(HarnessError::File {
            path: requested.to_string(),
            message: format!("larger than {MAX_READ_BYTES} bytes; read it in parts with a command"),
        });
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn list_dir(root: &WorkspaceRoot, requested: &str) -> Result<Vec<DirEntry>, HarnessError> {
    let path = resolve(root, requested)?;
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(file_error(requested))? {
        let entry = entry.map_err(file_error(requested))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if path == root.path() && name == ".git" {
            continue;
        }
        entries.push(DirEntry { name, is_dir: entry.file_type().is_ok_and(|t| t.is_dir()) });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn write_file(root: &WorkspaceRoot, requested: &str, content: &str) -> Result<usize, HarnessError> {
    let path = resolve(root, requested)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(file_error(requested))?;
        // Creating the directories must not have led outside either.
        resolve(root, requested)?;
    }
    // Open without truncating, check where it points, and only then replace the content.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(no_follow() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&path)
        .map_err(file_error(requested))?;
    check_opened(root, &file, requested)?;
    check_plain(&file, requested)?;
    file.set_len(0).map_err(file_error(requested))?;
    file.write_all(content.as_bytes()).map_err(file_error(requested))?;
    Ok(content.len())
}

fn delete(root: &WorkspaceRoot, requested: &str) -> Result<(), HarnessError> {
    use std::os::fd::AsRawFd;
    let path = resolve(root, requested)?;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(HarnessError::File { path: requested.to_string(), message: "cannot delete this path".into() });
    };
    // Hold the parent directory open, check where it really is, and delete
    // through the descriptor, so a directory swapped for a link meanwhile
    // cannot redirect the deletion.
    let directory = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow() | nix::fcntl::OFlag::O_DIRECTORY.bits())
        .open(parent)
        .map_err(file_error(requested))?;
    check_opened(root, &directory, requested)?;
    let target = Path::new("/proc/self/fd").join(directory.as_raw_fd().to_string()).join(name);
    let meta = std::fs::symlink_metadata(&target).map_err(file_error(requested))?;
    // Neither follows links inside the tree it removes; remove_tree does not recurse.
    if meta.is_dir() { crate::harness::sandbox::remove_tree(&target) } else { std::fs::remove_file(&target) }
        .map_err(file_error(requested))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::budget::{BudgetConfig, Limits as BudgetLimits};
    use crate::harness::sandbox::LocalSandbox;
    use crate::ssot::Limits as SsotLimits;
    use crate::ssot::sled_store::{SledOptions, SledStore};

    struct Fixture {
        harness: Harness,
        ssot: Arc<Ssot>,
        workspace: tempfile::TempDir,
        _data: tempfile::TempDir,
    }

    async fn fixture(steps: u64) -> Fixture {
        let workspace = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(workspace.path().join("src/api")).unwrap();
        fixture_at(workspace, steps).await
    }

    async fn fixture_at(workspace: tempfile::TempDir, steps: u64) -> Fixture {
        let data = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(data.path(), SledOptions::default()).unwrap());
        let ssot = Arc::new(Ssot::new(store, SsotLimits::default()));
        ssot.create_project("demo", "", "").await.unwrap();
        let budget =
            BudgetConfig { per_agent_epoch: BudgetLimits { tokens: 0, steps, wall_ms: 0 }, ..BudgetConfig::default() };
        let harness = Harness::new(
            Gate::open(workspace.path()).unwrap(),
            Arc::new(LocalSandbox::probe()),
            ssot.clone(),
            "demo",
            Arc::new(Budget::new(budget)),
            Limits { timeout: std::time::Duration::from_secs(20), ..Limits::default() },
        );
        Fixture { harness, ssot, workspace, _data: data }
    }

    #[tokio::test]
    async fn hostile_actions_are_denied_logged_and_nothing_escapes() {
        let (dir, outside) = crate::harness::hostile::workspace();
        let parent_before: Vec<_> =
            std::fs::read_dir(dir.path().parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        let f = fixture_at(dir, 1000).await;
        let mut denials = 0;
        for (role, action, expected) in crate::harness::hostile::cases(outside.path()) {
            let result = f.harness.perform(&ctx(role), action.clone(), CancellationToken::new()).await;
            match (expected, result) {
                (Some(rule), Err(HarnessError::Denied(violation))) => {
                    assert_eq!(violation.rule, rule, "{role} {action:?}");
                    denials += 1;
                }
                (Some(rule), other) => panic!("{role} {action:?}: expected a denial by {rule}, got {other:?}"),
                (None, Err(HarnessError::Denied(violation))) => panic!("{role} {action:?} was denied: {violation:?}"),
                (None, _) => {}
            }
        }
        let logged: Vec<_> = log(&f.ssot).await.into_iter().filter(|e| e.2 == "denied").collect();
        assert_eq!(logged.len(), denials, "every denial is in the execution log");
        assert!(denials >= 35);
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing was written outside");
        let parent_after: Vec<_> =
            std::fs::read_dir(f.workspace.path().parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(
            !parent_after.iter().any(|n| n == "evil.py" && !parent_before.contains(n)),
            "../evil.py was not created"
        );
    }

    #[tokio::test]
    async fn the_daemon_never_reads_or_writes_through_a_hard_link_or_a_special_file() {
        let f = fixture(100).await;
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "the daemon's secret\n").unwrap();
        std::fs::hard_link(&secret, f.workspace.path().join("src/api/linked.py")).unwrap();
        nix::unistd::mkfifo(&f.workspace.path().join("src/api/pipe.py"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let write = |path: &str| Action::WriteFile { path: path.into(), content: "x = 1\n".into() };
        let read = |path: &str| Action::ReadFile { path: path.into() };
        for (action, rule) in [
            (write("src/api/linked.py"), "path.hardlink"),
            (read("src/api/linked.py"), "path.hardlink"),
            (write("src/api/pipe.py"), "path.special"),
            (read("src/api/pipe.py"), "path.special"),
        ] {
            let result = f.harness.perform(&ctx("backend"), action.clone(), CancellationToken::new()).await;
            match result {
                Err(HarnessError::Denied(v)) => assert_eq!(v.rule, rule, "{action:?}"),
                // Opening a fifo for writing without a reader fails outright: refused all the same.
                Err(HarnessError::File { .. }) if rule == "path.special" => {}
                other => panic!("{action:?}: {other:?}"),
            }
        }
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "the daemon's secret\n", "written through the link");
    }

    fn ctx(role: &str) -> ActionContext {
        ActionContext { loop_id: "loop-1".into(), epoch: 1, agent: format!("{role}-1"), role: role.into() }
    }

    async fn log(ssot: &Ssot) -> Vec<(String, String, String, String)> {
        let page = ssot.list_log("demo", 0, "", "", 1000, "").await.unwrap();
        page.items
            .into_iter()
            .map(|e| (e.value.body.action, e.value.body.target, e.value.body.outcome, e.value.body.detail))
            .collect()
    }

    #[tokio::test]
    async fn every_decision_is_logged_and_only_allowed_actions_happen() {
        let f = fixture(100).await;
        let write = |path: &str, content: &str| Action::WriteFile { path: path.into(), content: content.into() };
        let out = f
            .harness
            .perform(&ctx("backend"), write("src/api/app.py", "def main():\n    pass\n"), CancellationToken::new())
            .await;
        assert_eq!(out.unwrap(), ActionOutput::Written { bytes: 21 });
        let denied = f.harness.perform(&ctx("backend"), write("src/ui/page.js", "x"), CancellationToken::new()).await;
        assert!(matches!(denied, Err(HarnessError::Denied(ref v)) if v.rule == "acl.write"), "{denied:?}");
        assert!(!f.workspace.path().join("src/ui/page.js").exists());
        let read = f
            .harness
            .perform(&ctx("review"), Action::ReadFile { path: "src/api/app.py".into() }, CancellationToken::new())
            .await;
        assert_eq!(read.unwrap(), ActionOutput::Read("def main():\n    pass\n".into()));
        let listing = f
            .harness
            .perform(&ctx("review"), Action::ListDir { path: ".".into() }, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(listing, ActionOutput::Listing(vec![DirEntry { name: "src".into(), is_dir: true }]));

        let ssot_write = |collection: &str| Action::SsotWrite { collection: collection.into(), target: "R1".into() };
        let allowed = f.harness.perform(&ctx("planning"), ssot_write("requirements"), CancellationToken::new()).await;
        assert_eq!(allowed.unwrap(), ActionOutput::Authorized);
        let denied = f.harness.perform(&ctx("planning"), ssot_write("contracts"), CancellationToken::new()).await;
        assert!(matches!(denied, Err(HarnessError::Denied(ref v)) if v.rule == "acl.ssot"), "{denied:?}");

        let entries = log(&f.ssot).await;
        assert_eq!(entries.len(), 6);
        assert_eq!(
            (entries[4].0.as_str(), entries[4].1.as_str(), entries[4].2.as_str()),
            ("ssot_write", "requirements/R1", "ok")
        );
        assert_eq!(entries[5].2, "denied");
        assert_eq!((entries[0].0.as_str(), entries[0].2.as_str()), ("write_file", "ok"));
        assert_eq!((entries[1].1.as_str(), entries[1].2.as_str()), ("src/ui/page.js", "denied"));
        assert!(entries[1].3.starts_with("acl.write: "), "{}", entries[1].3);
        assert!(f.ssot.verify_log("demo").await.unwrap().first_bad_seq == 0);
    }

    #[tokio::test]
    async fn a_symlink_made_by_an_earlier_action_does_not_lead_out() {
        let f = fixture(100).await;
        let outside = tempfile::tempdir().unwrap();
        // An earlier action (here: a command the policy let through) plants a link.
        std::os::unix::fs::symlink(outside.path(), f.workspace.path().join("src/api/out")).unwrap();
        let action = Action::WriteFile { path: "src/api/out/loot.py".into(), content: "x = 1\n".into() };
        let denied = f.harness.perform(&ctx("backend"), action, CancellationToken::new()).await;
        assert!(matches!(denied, Err(HarnessError::Denied(ref v)) if v.rule == "path.symlink"), "{denied:?}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn running_out_of_steps_stops_the_agent_cleanly() {
        let f = fixture(2).await;
        let read = || Action::ListDir { path: "src".into() };
        f.harness.perform(&ctx("planning"), read(), CancellationToken::new()).await.unwrap();
        f.harness.perform(&ctx("planning"), read(), CancellationToken::new()).await.unwrap();
        let stopped = f.harness.perform(&ctx("planning"), read(), CancellationToken::new()).await;
        match stopped {
            Err(HarnessError::Budget(exhausted)) => assert_eq!((exhausted.resource, exhausted.limit), ("step", 2)),
            other => panic!("{other:?}"),
        }
        let entries = log(&f.ssot).await;
        assert_eq!(entries.last().unwrap().2, "budget-exhausted");
        // Other agents still have their own budget.
        f.harness.perform(&ctx("review"), read(), CancellationToken::new()).await.unwrap();
        // Usage is recorded in the SSOT.
        let records = f.ssot.list_budgets("demo", "loop-1", 100, "").await.unwrap().items;
        let planning = records.iter().find(|r| r.value.agent == "planning-1").unwrap();
        assert_eq!((planning.value.steps, planning.value.step_limit), (3, 2));
        assert!(planning.value.exhausted.contains("step budget exhausted"), "{:?}", planning.value);
        let review = records.iter().find(|r| r.value.agent == "review-1").unwrap();
        assert_eq!((review.value.steps, review.value.exhausted.as_str()), (1, ""));
    }

    #[tokio::test]
    async fn commands_run_in_the_sandbox_and_their_outcome_is_logged() {
        let f = fixture(100).await;
        std::fs::create_dir_all(f.workspace.path().join(".maestro")).unwrap();
        std::fs::write(
            f.workspace.path().join(".maestro/config.yaml"),
            "harness:\n  roles:\n    test:\n      commands: [[sh, -c], [ls]]\n      shell: true\n",
        )
        .unwrap();
        let mut f = f;
        f.harness.gate = Gate::open(f.workspace.path()).unwrap();
        let run = |cmd: &[&str]| Action::RunCommand { argv: cmd.iter().map(|s| s.to_string()).collect() };
        let out = f.harness.perform(&ctx("test"), run(&["ls", "-a"]), CancellationToken::new()).await.unwrap();
        match out {
            ActionOutput::Ran(outcome) => assert!(outcome.stdout.contains("src") && outcome.success(), "{outcome:?}"),
            other => panic!("{other:?}"),
        }
        f.harness.perform(&ctx("test"), run(&["sh", "-c", "exit 3"]), CancellationToken::new()).await.unwrap();
        let entries = log(&f.ssot).await;
        assert_eq!((entries[0].2.as_str(), entries[0].3.as_str()), ("ok", "allowed"));
        assert_eq!((entries[1].2.as_str(), entries[1].3.as_str()), ("failed", "allowed; exit 3"));
    }
}
