//! What a sandboxed command sees of the file system, decided before it
//! starts: the toolchains read-only (`/usr`, `/lib*`, `/etc` without its
//! secrets, what the daemon's operator adds), the workspace writable except
//! `.git` and `.maestro` (read-only), a private temp dir, a few devices and a
//! fresh `/proc`. Nothing else exists for it: not the daemon's data, not
//! `$HOME`, not other workspaces, not `/run`.
//!
//! The same view is enforced twice: as a private root built from bind
//! mounts (the `Op` program a jailed child runs, see `jail`), and as
//! Landlock rules on the same paths (see `rules`). Both are computed here,
//! with no I/O but reading the host's directory entries.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Top-level trees commands may read (when they exist).
const SYSTEM: [&str; 8] = ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/opt"];
/// Entries of `/etc` never shown: credentials and keys.
const ETC_SECRETS: [&str; 17] = [
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "ssh",
    "sudoers",
    "sudoers.d",
    "ssl/private",
    "security/opasswd",
    "krb5.keytab",
    "credstore",
    "credstore.encrypted",
    "maestro",
    "maestrod",
    "docker",
    "containerd",
    ".pwd.lock",
];
/// Devices a command may use.
const DEVICES: [&str; 5] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];
/// Read-only inside the workspace: what git and the daemon trust.
const PROTECTED: [&str; 2] = [".git", ".maestro"];
/// Below `/sys`, what runtimes read to size themselves (CPU count, cgroup limits).
const SYS: [&str; 1] = ["/sys/devices/system/cpu"];
/// Private, memory-backed scratch space, gone with the command's namespace.
const TMP_OPTIONS: &CStr = c"mode=1777,size=1g";
const SHM_OPTIONS: &CStr = c"mode=1777,size=256m";

/// A path as the kernel takes it.
fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// One entry of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Bound read-only at the same path.
    ReadOnly(PathBuf),
    /// A symbolic link recreated as it is (`/bin` → `usr/bin`).
    Link { path: PathBuf, target: PathBuf },
    /// Bound writable at the same path.
    Writable(PathBuf),
    /// A device node, bound at the same path.
    Device(PathBuf),
}

/// The view of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub entries: Vec<Entry>,
    /// Inside writable entries, bound read-only on top.
    pub protected: Vec<PathBuf>,
    /// The workspace (the working directory).
    pub workspace: PathBuf,
    /// Private, writable: the command's `$HOME` and `$TMPDIR`, also bound at `/tmp`.
    pub tmp: PathBuf,
    /// Paths that must not exist for the command even inside the workspace (the daemon's data).
    pub hidden: Vec<PathBuf>,
    /// An empty directory of the run: the private root is built on it.
    pub new_root: PathBuf,
}

/// The system part of the view, the same for every command: read once.
pub fn system(extra_read: &[PathBuf]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut add = |path: &Path| match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if let Ok(target) = std::fs::read_link(path) {
                entries.push(Entry::Link { path: path.to_path_buf(), target });
            }
        }
        Ok(_) => entries.push(Entry::ReadOnly(path.to_path_buf())),
        Err(_) => {}
    };
    for top in SYSTEM.iter().chain(SYS.iter()) {
        add(Path::new(top));
    }
    etc(Path::new("/etc"), "", &mut add);
    for path in extra_read {
        add(path);
    }
    for device in DEVICES {
        if Path::new(device).exists() {
            entries.push(Entry::Device(PathBuf::from(device)));
        }
    }
    entries
}

/// Every entry of `/etc` but the secrets (looking into directories that hold one).
fn etc(dir: &Path, prefix: &str, add: &mut impl FnMut(&Path)) {
    let Ok(read) = std::fs::read_dir(dir) else { return };
    let mut names: Vec<_> = read.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let rel = format!("{prefix}{name}");
        if ETC_SECRETS.contains(&rel.as_str()) {
            continue;
        }
        let path = dir.join(&name);
        let holds_secret = ETC_SECRETS.iter().any(|s| s.starts_with(&format!("{rel}/")));
        if holds_secret && path.is_dir() && !path.is_symlink() {
            etc(&path, &format!("{rel}/"), add);
        } else {
            add(&path);
        }
    }
}

impl View {
    /// The view of a command in `workspace` whose private directory is `run`.
    pub fn new(system: &[Entry], workspace: &Path, run: &Path, hidden: &[PathBuf]) -> View {
        let mut entries = system.to_vec();
        let tmp = run.join("tmp");
        entries.push(Entry::Writable(workspace.to_path_buf()));
        entries.push(Entry::Writable(tmp.clone()));
        let mut protected: Vec<PathBuf> =
            PROTECTED.iter().map(|p| workspace.join(p)).filter(|p| p.symlink_metadata().is_ok()).collect();
        nested_git(workspace, workspace, 0, &mut protected);
        View {
            entries,
            protected,
            workspace: workspace.to_path_buf(),
            tmp,
            hidden: hidden.iter().filter(|h| h.starts_with(workspace) && h.exists()).cloned().collect(),
            new_root: run.join("root"),
        }
    }

    /// Paths commands may read (for Landlock; the fresh `/proc` is added in the child).
    pub fn readable(&self) -> Vec<PathBuf> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::ReadOnly(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// Paths commands may write (for Landlock; the private `/tmp` and `/dev/shm` are added in the child).
    pub fn writable(&self) -> Vec<PathBuf> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Writable(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn devices(&self) -> Vec<PathBuf> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Device(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// The mount program that builds the private root, in order.
    pub fn program(&self) -> Vec<Op> {
        let mut program = Program { ops: Vec::new(), made: Vec::new(), root: self.new_root.clone() };
        program.ops.push(Op::Tmpfs { target: c(&self.new_root), options: c"mode=0755".into(), read_only: false });
        // The command's /tmp (and $HOME, $TMPDIR): memory, bounded, gone with the command.
        // First, so that a workspace below /tmp is bound on top of it rather than hidden by it.
        program.tmpfs(Path::new("/tmp"), TMP_OPTIONS);
        for entry in &self.entries {
            match entry {
                Entry::Writable(path) if *path == self.tmp => {}
                Entry::ReadOnly(path) | Entry::Device(path) => program.bind(path, path, true),
                Entry::Writable(path) => program.bind(path, path, false),
                Entry::Link { path, target } => {
                    if let Some(parent) = path.parent() {
                        program.dirs(parent);
                    }
                    program.ops.push(Op::Symlink { target: c(target), link: c(&program.inside(path)) });
                }
            }
        }
        program.tmpfs(Path::new("/dev/shm"), SHM_OPTIONS);
        for (link, target) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            program.ops.push(Op::Symlink { target: c(Path::new(target)), link: c(&program.inside(Path::new(link))) });
        }
        // A fresh /proc for the command's PID namespace (mounted while the host's is still
        // attached: the kernel only mounts a proc where one is already fully visible).
        program.dirs(Path::new("/proc"));
        program.ops.push(Op::Proc { target: c(&program.inside(Path::new("/proc"))) });
        for path in &self.protected {
            let inside = c(&program.inside(path));
            program.ops.push(Op::Bind { source: inside.clone(), target: inside, read_only: true });
        }
        for path in &self.hidden {
            let target = c(&program.inside(path));
            program.ops.push(Op::Tmpfs { target, options: c"mode=000,size=4k".into(), read_only: true });
        }
        program.ops.push(Op::Mkdir { path: c(&self.new_root.join(".old")) });
        program.ops.push(Op::Pivot {
            new_root: c(&self.new_root),
            put_old: c(&self.new_root.join(".old")),
            old_inside: c(Path::new("/.old")),
        });
        program.ops.push(Op::Chdir { path: c(&self.workspace) });
        program.ops
    }
}

/// Nested `.git` entries below `dir` (other than the workspace's own): git
/// would run their hooks for a user who works in that folder.
fn nested_git(workspace: &Path, dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    const MAX_DEPTH: usize = 12;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    if dir != workspace && crate::harness::rollback::looks_like_git_dir(dir) {
        out.push(dir.to_path_buf());
        return;
    }
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == ".git" {
            if dir != workspace {
                out.push(path);
            }
            continue;
        }
        if depth < MAX_DEPTH && entry.file_type().is_ok_and(|t| t.is_dir()) {
            nested_git(workspace, &path, depth + 1, out);
        }
    }
}

/// One step of building the private root, run by the jailed child with raw
/// system calls (no allocation: every string is made here, before the fork).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Tmpfs {
        target: CString,
        options: CString,
        read_only: bool,
    },
    Mkdir {
        path: CString,
    },
    /// An empty file to bind a file onto.
    Touch {
        path: CString,
    },
    Bind {
        source: CString,
        target: CString,
        read_only: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    Proc {
        target: CString,
    },
    /// Makes `new_root` the root, detaches the old one (`old_inside` after the
    /// switch) and makes the new root itself read-only.
    Pivot {
        new_root: CString,
        put_old: CString,
        old_inside: CString,
    },
    Chdir {
        path: CString,
    },
}

struct Program {
    ops: Vec<Op>,
    made: Vec<PathBuf>,
    root: PathBuf,
}

impl Program {
    /// `path` inside the new root.
    fn inside(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Creates `path` (inside the new root) and its parents, once each.
    fn dirs(&mut self, path: &Path) {
        let mut todo = Vec::new();
        let mut at = Some(path);
        while let Some(p) = at {
            if p.as_os_str().is_empty() || p == Path::new("/") || self.made.iter().any(|m| m == p) {
                break;
            }
            todo.push(p.to_path_buf());
            at = p.parent();
        }
        for p in todo.into_iter().rev() {
            self.ops.push(Op::Mkdir { path: c(&self.inside(&p)) });
            self.made.push(p);
        }
    }

    /// A fresh tmpfs at `target` inside the new root.
    fn tmpfs(&mut self, target: &Path, options: &CStr) {
        self.dirs(target);
        self.ops.push(Op::Tmpfs { target: c(&self.inside(target)), options: options.into(), read_only: false });
    }

    /// Binds host `source` at `target` inside the new root.
    fn bind(&mut self, source: &Path, target: &Path, read_only: bool) {
        let is_dir = source.is_dir();
        if is_dir {
            self.dirs(target);
        } else {
            if let Some(parent) = target.parent() {
                self.dirs(parent);
            }
            self.ops.push(Op::Touch { path: c(&self.inside(target)) });
        }
        self.ops.push(Op::Bind { source: c(source), target: c(&self.inside(target)), read_only });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_view_keeps_toolchains_and_hides_secrets() {
        let system = system(&[]);
        let has = |path: &str| {
            system.iter().any(|e| match e {
                Entry::ReadOnly(p) | Entry::Device(p) => p == Path::new(path),
                Entry::Link { path: p, .. } => p == Path::new(path),
                Entry::Writable(_) => false,
            })
        };
        assert!(has("/usr") && has("/dev/null"), "{system:?}");
        if Path::new("/etc/passwd").exists() {
            assert!(has("/etc/passwd"));
        }
        for secret in ["/etc/shadow", "/etc/gshadow", "/etc/ssh", "/etc/sudoers", "/etc/ssl/private"] {
            assert!(!has(secret), "{secret} is visible");
        }
        if Path::new("/etc/ssl/certs").exists() {
            assert!(has("/etc/ssl/certs"), "the rest of /etc/ssl stays");
        }
        for hidden in ["/home", "/root", "/run", "/var", "/tmp", "/proc", "/etc"] {
            assert!(!has(hidden), "{hidden} is in the system view");
        }
    }

    #[test]
    fn the_program_builds_a_root_with_git_and_config_read_only() {
        let ws = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        for dir in [".git/hooks", ".maestro", "src/api/.git", "vendor/lib"] {
            std::fs::create_dir_all(ws.path().join(dir)).unwrap();
        }
        std::fs::write(ws.path().join("vendor/lib/.git"), "gitdir: /elsewhere\n").unwrap();
        let system = vec![
            Entry::ReadOnly("/usr".into()),
            Entry::Link { path: "/bin".into(), target: "usr/bin".into() },
            Entry::Device("/dev/null".into()),
        ];
        std::fs::create_dir_all(ws.path().join(".maestro/data")).unwrap();
        let view =
            View::new(&system, ws.path(), run.path(), &[ws.path().join(".maestro/data"), PathBuf::from("/elsewhere")]);
        let mut protected = view.protected.clone();
        protected.sort();
        let expected: Vec<PathBuf> =
            [".git", ".maestro", "src/api/.git", "vendor/lib/.git"].iter().map(|p| ws.path().join(p)).collect();
        assert_eq!(protected, expected);
        let program = view.program();
        let root = run.path().join("root");
        let inside = |p: &Path| c(&root.join(p.strip_prefix("/").unwrap()));
        let find = |op: &Op| program.iter().position(|o| o == op);
        assert_eq!(program[0], Op::Tmpfs { target: c(&root), options: c"mode=0755".into(), read_only: false });
        let usr = find(&Op::Bind { source: c(Path::new("/usr")), target: inside(Path::new("/usr")), read_only: true });
        let workspace = find(&Op::Bind { source: c(ws.path()), target: inside(ws.path()), read_only: false });
        let git = inside(&ws.path().join(".git"));
        let git_ro = find(&Op::Bind { source: git.clone(), target: git, read_only: true });
        let proc = find(&Op::Proc { target: inside(Path::new("/proc")) });
        let pivot = program.iter().position(|o| matches!(o, Op::Pivot { .. }));
        assert!(usr.is_some() && workspace.is_some() && proc.is_some(), "{program:#?}");
        assert!(workspace < git_ro && git_ro < pivot && proc < pivot, "{program:#?}");
        assert!(program.contains(&Op::Symlink { target: c(Path::new("usr/bin")), link: inside(Path::new("/bin")) }));
        assert!(program.contains(&Op::Touch { path: inside(Path::new("/dev/null")) }), "files are bound onto files");
        let null =
            Op::Bind { source: c(Path::new("/dev/null")), target: inside(Path::new("/dev/null")), read_only: true };
        assert!(program.contains(&null), "devices are bound read-only: no chmod or utime of the host's nodes");
        let hidden = Op::Tmpfs {
            target: inside(&ws.path().join(".maestro/data")),
            options: c"mode=000,size=4k".into(),
            read_only: true,
        };
        assert!(find(&hidden) > git_ro && find(&hidden) < pivot, "the daemon's data inside the workspace is covered");
        assert_eq!(program.last(), Some(&Op::Chdir { path: c(ws.path()) }));
        // Parents are made once, before what is bound below them.
        let mkdirs: Vec<&Op> = program.iter().filter(|o| matches!(o, Op::Mkdir { .. })).collect();
        let unique: std::collections::BTreeSet<String> = mkdirs.iter().map(|o| format!("{o:?}")).collect();
        assert_eq!(mkdirs.len(), unique.len(), "{mkdirs:#?}");
        // /tmp is private scratch space, mounted before a workspace that may live below it.
        let tmp = find(&Op::Tmpfs { target: inside(Path::new("/tmp")), options: TMP_OPTIONS.into(), read_only: false });
        assert!(tmp.is_some() && tmp < workspace, "{program:#?}");
        assert_eq!(view.hidden, [ws.path().join(".maestro/data")]);
        assert!(
            view.writable().contains(&ws.path().to_path_buf()) && view.writable().contains(&run.path().join("tmp"))
        );
    }
}
