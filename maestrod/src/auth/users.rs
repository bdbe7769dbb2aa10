//! The users of a daemon and their bearer tokens: `<data-dir>/users.json`
//! (mode 0600), tokens stored as SHA-256 hashes only, each shown once when it
//! is made. A fresh data directory gets an `admin` user whose token is written
//! to `<data-dir>/admin.token` (0600), for the person who owns the directory.
//!
//! The file is the registry so that `maestrod user add` works whether or not
//! the daemon runs: writers hold an exclusive lock on `users.lock` and replace
//! the file atomically; the daemon rereads it when it changes.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a user may do in a project, each level including the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read and watch.
    Viewer,
    /// Write the SSOT; start, steer and answer loops.
    Developer,
    /// Policies, workspaces, users, deletion, compaction.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, AuthError> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "developer" => Ok(Role::Developer),
            "admin" => Ok(Role::Admin),
            other => Err(AuthError::Invalid(format!("role {other:?}: use viewer, developer or admin"))),
        }
    }
}

/// All projects, in a grant.
pub const ALL_PROJECTS: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// A project id, or `*` for every project (and the daemon-wide operations).
    pub project: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub token_sha256: String,
    pub grants: Vec<Grant>,
    pub created_ms: u64,
}

impl User {
    /// The role this user has in `project` (`*`: a role over every project), if any.
    pub fn role_in(&self, project: &str) -> Option<Role> {
        self.grants
            .iter()
            .filter(|g| g.project == ALL_PROJECTS || (project != ALL_PROJECTS && g.project == project))
            .map(|g| g.role)
            .max()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    users: Vec<User>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Invalid(String),
    #[error("user {0} exists already (revoke it first to make a new token)")]
    Exists(String),
    #[error("no user {0}")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid user registry: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io { path: path.to_path_buf(), source }
}

/// The hash a token is stored and looked up by.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token: `mst_` and 32 random bytes.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    format!("mst_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The users of one data directory.
pub struct Users {
    dir: PathBuf,
    /// The registry as last read, and the file's modification time then.
    cache: Mutex<(Option<(SystemTime, u64)>, Registry)>,
}

impl Users {
    /// Opens the registry of `data_dir`, creating the admin user and
    /// `admin.token` when the directory has none.
    pub fn open(data_dir: &Path) -> Result<Users, AuthError> {
        std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        // The store's files are the daemon's alone: no other account may read them around the API.
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(io(data_dir))?;
        let users = Users { dir: data_dir.to_path_buf(), cache: Mutex::new((None, Registry::default())) };
        let token_file = users.admin_token_path();
        let _lock = users.lock()?;
        let mut registry = users.read()?;
        let existing =
            std::fs::read_to_string(&token_file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        let admin = registry.users.iter().position(|u| u.name == "admin");
        match (existing, admin) {
            (Some(token), Some(i)) if registry.users[i].token_sha256 == token_hash(&token) => {}
            (existing, admin) => {
                // The owner of the directory is its admin: a missing or unknown admin token is (re)made.
                let token = existing.unwrap_or_else(new_token);
                write_private(&token_file, format!("{token}\n").as_bytes())?;
                let user = User {
                    name: "admin".into(),
                    token_sha256: token_hash(&token),
                    grants: vec![Grant { project: ALL_PROJECTS.into(), role: Role::Admin }],
                    created_ms: now_ms(),
                };
                match admin {
                    Some(i) => registry.users[i] = user,
                    None => registry.users.insert(0, user),
                }
                users.write(&registry)?;
            }
        }
        Ok(users)
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    fn path(&self) -> PathBuf {
        self.dir.join("users.json")
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, AuthError> {
        let path = self.dir.join("users.lock");
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io(&path))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| AuthError::Io { path, source: e.into() })
    }

    fn read(&self) -> Result<Registry, AuthError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| AuthError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn write(&self, registry: &Registry) -> Result<(), AuthError> {
        let json = serde_json::to_vec_pretty(registry).expect("the registry serialises");
        write_private(&self.path(), &json)
    }

    /// Runs `f` on the registry as it is now: reread when the file changed.
    fn current<T>(&self, f: impl FnOnce(&Registry) -> T) -> Result<T, AuthError> {
        let path = self.path();
        use std::os::unix::fs::MetadataExt;
        let modified = std::fs::metadata(&path).and_then(|m| Ok((m.modified()?, m.ino()))).ok();
        let mut cache = self.cache.lock().expect("users cache lock");
        if cache.0.is_none() || cache.0 != modified {
            *cache = (modified, self.read()?);
        }
        Ok(f(&cache.1))
    }

    /// The user a token belongs to. Rereads the registry when the file changed.
    pub fn authenticate(&self, token: &str) -> Result<Option<User>, AuthError> {
        let hash = token_hash(token);
        self.current(|registry| registry.users.iter().find(|u| u.token_sha256 == hash).cloned())
    }

    /// The hashes of every valid token now (for ending a revoked token's streams).
    pub fn token_hashes(&self) -> Result<std::collections::HashSet<String>, AuthError> {
        self.current(|registry| registry.users.iter().map(|u| u.token_sha256.clone()).collect())
    }

    /// Adds a user with `grants`; returns its token (the only time it is shown).
    pub fn add(&self, name: &str, grants: Vec<Grant>) -> Result<String, AuthError> {
        check_name(name)?;
        if grants.is_empty() {
            return Err(AuthError::Invalid("give the user a project (--project P) or every project (--all)".into()));
        }
        for grant in &grants {
            if grant.project != ALL_PROJECTS {
                crate::ssot::validate::ident("project", &grant.project, 63)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?;
            }
        }
        let _lock = self.lock()?;
        let mut registry = self.read()?;
        if registry.users.iter().any(|u| u.name == name) {
            return Err(AuthError::Exists(name.into()));
        }
        let token = new_token();
        registry.users.push(User { name: name.into(), token_sha256: token_hash(&token), grants, created_ms: now_ms() });
        self.write(&registry)?;
        Ok(token)
    }

    /// Removes a user: its token stops working at once.
    pub fn revoke(&self, name: &str) -> Result<(), AuthError> {
        if name == "admin" {
            return Err(AuthError::Invalid(
                "the admin user cannot be revoked; delete admin.token and restart maestrod to make a new admin token"
                    .into(),
            ));
        }
        let _lock = self.lock()?;
        let mut registry = self.read()?;
        let before = registry.users.len();
        registry.users.retain(|u| u.name != name);
        if registry.users.len() == before {
            return Err(AuthError::NotFound(name.into()));
        }
        self.write(&registry)
    }

    /// Drops every grant that names `project` (it was deleted): a project created
    /// later with the same id starts with no users but the daemon-wide ones.
    pub fn forget_project(&self, project: &str) -> Result<usize, AuthError> {
        let _lock = self.lock()?;
        let mut registry = self.read()?;
        let mut dropped = 0;
        for user in &mut registry.users {
            let before = user.grants.len();
            user.grants.retain(|g| g.project != project);
            dropped += before - user.grants.len();
        }
        if dropped > 0 {
            self.write(&registry)?;
        }
        Ok(dropped)
    }

    pub fn list(&self) -> Result<Vec<User>, AuthError> {
        Ok(self.read()?.users)
    }
}

fn check_name(name: &str) -> Result<(), AuthError> {
    crate::ssot::validate::ident("name", name, 63).map_err(|e| AuthError::Invalid(e.to_string()))
}

fn now_ms() -> u64 {
    u64::try_from(crate::ssot::clock::now_ms()).unwrap_or(0)
}

/// Writes `bytes` to `path` atomically, readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    temp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    temp.write_all(bytes).map_err(io(path))?;
    temp.as_file().sync_all().map_err(io(path))?;
    temp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_directory_gets_a_private_admin_token_that_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::open(dir.path()).unwrap();
        let token = std::fs::read_to_string(users.admin_token_path()).unwrap().trim().to_string();
        let mode = std::fs::metadata(users.admin_token_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
            0o700,
            "the data dir is private"
        );
        assert_eq!(std::fs::metadata(dir.path().join("users.json")).unwrap().permissions().mode() & 0o777, 0o600);
        let admin = users.authenticate(&token).unwrap().unwrap();
        assert_eq!((admin.name.as_str(), admin.role_in("any")), ("admin", Some(Role::Admin)));
        let stored = std::fs::read_to_string(dir.path().join("users.json")).unwrap();
        assert!(!stored.contains(&token), "only the hash is stored");
        drop(users);
        let again = Users::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(again.admin_token_path()).unwrap().trim(), token, "the same token");
        assert!(again.authenticate(&token).unwrap().is_some());
    }

    #[test]
    fn users_are_added_once_scoped_to_projects_and_revoked_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::open(dir.path()).unwrap();
        let alice = users.add("alice", vec![Grant { project: "shop".into(), role: Role::Developer }]).unwrap();
        // A second registry handle (the CLI while the daemon runs) sees the same users.
        let daemon = Users::open(dir.path()).unwrap();
        let found = daemon.authenticate(&alice).unwrap().unwrap();
        assert_eq!(found.role_in("shop"), Some(Role::Developer));
        assert_eq!(found.role_in("other"), None);
        assert_eq!(found.role_in(ALL_PROJECTS), None, "a project grant is not a daemon-wide one");
        assert!(matches!(users.add("alice", vec![]), Err(AuthError::Invalid(_))));
        let grant = vec![Grant { project: "shop".into(), role: Role::Viewer }];
        assert!(matches!(users.add("alice", grant), Err(AuthError::Exists(_))));
        assert!(daemon.authenticate("mst_guessed").unwrap().is_none());
        users.revoke("alice").unwrap();
        // The file changed: the daemon's handle rereads it.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(daemon.authenticate(&alice).unwrap().is_none(), "revoked at once");
        assert!(matches!(users.revoke("alice"), Err(AuthError::NotFound(_))));
        assert!(matches!(users.revoke("admin"), Err(AuthError::Invalid(_))));

        let both = vec![
            Grant { project: "shop".into(), role: Role::Developer },
            Grant { project: "docs".into(), role: Role::Viewer },
        ];
        let bob = users.add("bob", both).unwrap();
        assert_eq!(users.forget_project("shop").unwrap(), 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let bob = daemon.authenticate(&bob).unwrap().unwrap();
        assert_eq!((bob.role_in("shop"), bob.role_in("docs")), (None, Some(Role::Viewer)));
        assert!(
            daemon.authenticate(std::fs::read_to_string(users.admin_token_path()).unwrap().trim()).unwrap().is_some()
        );
    }
}
