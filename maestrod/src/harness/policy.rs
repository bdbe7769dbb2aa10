//! Per-role policy: which paths a role may read and write, which commands it
//! may run, whether it gets a shell or the network. Built-in defaults follow
//! the seed roles; a project's `.maestro/config.yaml` (section `harness`)
//! overrides them role by role.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::budget::{BudgetConfig, Limits as BudgetLimits};
use super::validator::{RawValidator, Validator};

/// Paths no role may read or write: repository internals and secrets.
pub const DEFAULT_DENY: [&str; 6] = [".git", ".git/**", "**/.env*", "**/*.pem", "**/*.key", "**/id_rsa*"];
/// Paths no role may write, whatever the project's deny list says: the
/// harness's own configuration, and every `.git` (a nested repository's
/// hooks and config run in its user's `git`).
pub const DEFAULT_PROTECTED: [&str; 6] = [".maestro", ".maestro/**", ".git", ".git/**", "**/.git", "**/.git/**"];

/// The project configuration file, relative to the workspace.
pub const CONFIG_FILE: &str = ".maestro/config.yaml";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{field}: invalid glob {glob:?}: {message}")]
    Glob { field: String, glob: String, message: String },
    #[error("unknown role {0:?}; known roles: {1}")]
    UnknownRole(String, String),
}

/// The top-level sections of `.maestro/config.yaml`. Each layer reads its own
/// (`harness` here, `llm` in `agents::llm::config`); anything else is a typo.
pub const SECTIONS: [&str; 4] = ["project", "harness", "llm", "loop"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHarness {
    /// Replaces the default deny list (no read, no write) when given.
    pub deny: Option<Vec<String>>,
    #[serde(default)]
    pub roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    pub validator: RawValidator,
    #[serde(default)]
    pub budget: RawBudget,
}

/// Budget limits as written; absent values keep the defaults, 0 means unlimited.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub per_agent_epoch: Option<RawBudgetLimits>,
    pub per_loop: Option<RawBudgetLimits>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudgetLimits {
    pub tokens: Option<u64>,
    pub steps: Option<u64>,
    pub wall_seconds: Option<u64>,
}

fn budget_limits(raw: Option<RawBudgetLimits>, default: BudgetLimits) -> BudgetLimits {
    let raw = raw.unwrap_or_default();
    BudgetLimits {
        tokens: raw.tokens.unwrap_or(default.tokens),
        steps: raw.steps.unwrap_or(default.steps),
        wall_ms: raw.wall_seconds.map_or(default.wall_ms, |s| s.saturating_mul(1000)),
    }
}

/// One role's policy as written; absent fields keep the role's defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub read: Option<Vec<String>>,
    pub write: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    /// Allowed argv prefixes, e.g. `[python, -m, pytest]`.
    pub commands: Option<Vec<Vec<String>>>,
    /// May run `sh -c` and other shells (default false).
    pub shell: Option<bool>,
    /// May use the network (default false).
    pub network: Option<bool>,
    /// SSOT collections the role may change: requirements, contracts, memory, log.
    pub ssot: Option<Vec<String>>,
}

/// The SSOT collections a policy can grant.
pub const SSOT_COLLECTIONS: [&str; 4] = ["requirements", "contracts", "memory", "log"];

/// A role's resolved policy.
#[derive(Debug, Clone)]
pub struct RolePolicy {
    pub name: String,
    pub read: GlobSet,
    pub write: GlobSet,
    pub deny: GlobSet,
    pub commands: Vec<Vec<String>>,
    pub shell: bool,
    pub network: bool,
    pub ssot: Vec<String>,
    /// The globs as written, for display.
    pub source: RawRole,
}

/// Every role's policy plus the validator, for one workspace.
#[derive(Debug, Clone)]
pub struct Policy {
    pub roles: BTreeMap<String, RolePolicy>,
    pub deny: GlobSet,
    pub deny_globs: Vec<String>,
    pub protected: GlobSet,
    pub validator: Validator,
    pub budget: BudgetConfig,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The seed roles' defaults.
pub fn default_roles() -> BTreeMap<String, RawRole> {
    let role = |write: &[&str], commands: &[&[&str]], ssot: &[&str]| RawRole {
        read: Some(strings(&["**"])),
        write: Some(strings(write)),
        deny: Some(Vec::new()),
        commands: Some(commands.iter().map(|c| strings(c)).collect()),
        shell: Some(false),
        network: Some(false),
        ssot: Some(strings(ssot)),
    };
    let tests: &[&[&str]] = &[
        &["python", "-m", "pytest"],
        &["python3", "-m", "pytest"],
        &["python", "-m", "unittest"],
        &["python3", "-m", "unittest"],
        &["pytest"],
        &["cargo", "test"],
        &["npm", "test"],
        &["node", "--test"],
        &["go", "test"],
    ];
    // What each role may change in the SSOT, as the seed's table says: planning the
    // requirements tree, backend and frontend contracts, test and review the log
    // (notes, verdicts), the contract validator contracts; everyone its own memory.
    BTreeMap::from([
        ("planning".to_string(), role(&[], &[], &["requirements", "memory"])),
        (
            "backend".to_string(),
            role(
                &["src/api/**"],
                &[&["python", "-m", "py_compile"], &["python3", "-m", "py_compile"]],
                &["contracts", "memory"],
            ),
        ),
        ("frontend".to_string(), role(&["src/ui/**"], &[], &["contracts", "memory"])),
        ("test".to_string(), role(&["tests/**"], tests, &["log", "memory"])),
        ("review".to_string(), role(&[], &[], &["log", "memory"])),
        ("contract-validator".to_string(), role(&[], &[], &["contracts", "log"])),
    ])
}

fn glob_set(field: &str, globs: &[String]) -> Result<GlobSet, PolicyError> {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        builder.add(compile(field, glob)?);
    }
    builder.build().map_err(|e| PolicyError::Glob {
        field: field.into(),
        glob: globs.join(", "),
        message: e.to_string(),
    })
}

fn compile(field: &str, glob: &str) -> Result<Glob, PolicyError> {
    // `*` stays within one directory; `**` crosses them.
    GlobBuilder::new(glob).literal_separator(true).build().map_err(|e| PolicyError::Glob {
        field: field.into(),
        glob: glob.into(),
        message: e.to_string(),
    })
}

impl Policy {
    /// Resolves a raw configuration over the defaults.
    pub fn from_raw(raw: RawHarness) -> Result<Policy, PolicyError> {
        let mut roles_raw = default_roles();
        for (name, overrides) in raw.roles {
            let base = roles_raw.remove(&name).unwrap_or_default();
            roles_raw.insert(
                name,
                RawRole {
                    read: overrides.read.or(base.read),
                    write: overrides.write.or(base.write),
                    deny: overrides.deny.or(base.deny),
                    commands: overrides.commands.or(base.commands),
                    shell: overrides.shell.or(base.shell),
                    network: overrides.network.or(base.network),
                    ssot: overrides.ssot.or(base.ssot),
                },
            );
        }
        let mut roles = BTreeMap::new();
        for (name, raw_role) in roles_raw {
            let field = |part: &str| format!("harness.roles.{name}.{part}");
            let ssot = raw_role.ssot.clone().unwrap_or_default();
            if let Some(unknown) = ssot.iter().find(|c| !SSOT_COLLECTIONS.contains(&c.as_str())) {
                return Err(PolicyError::Parse {
                    path: field("ssot"),
                    message: format!("unknown collection {unknown:?}; known: {}", SSOT_COLLECTIONS.join(", ")),
                });
            }
            let role = RolePolicy {
                read: glob_set(&field("read"), raw_role.read.as_deref().unwrap_or_default())?,
                write: glob_set(&field("write"), raw_role.write.as_deref().unwrap_or_default())?,
                deny: glob_set(&field("deny"), raw_role.deny.as_deref().unwrap_or_default())?,
                commands: raw_role.commands.clone().unwrap_or_default(),
                shell: raw_role.shell.unwrap_or(false),
                network: raw_role.network.unwrap_or(false),
                ssot,
                name: name.clone(),
                source: raw_role,
            };
            roles.insert(name, role);
        }
        let deny_globs = raw.deny.unwrap_or_else(|| strings(&DEFAULT_DENY));
        let defaults = BudgetConfig::default();
        let budget = BudgetConfig {
            per_agent_epoch: budget_limits(raw.budget.per_agent_epoch, defaults.per_agent_epoch),
            per_loop: budget_limits(raw.budget.per_loop, defaults.per_loop),
        };
        Ok(Policy {
            deny: glob_set("harness.deny", &deny_globs)?,
            deny_globs,
            protected: glob_set("harness (protected)", &strings(&DEFAULT_PROTECTED))?,
            roles,
            budget,
            validator: Validator::from_raw(raw.validator)
                .map_err(|message| PolicyError::Parse { path: "harness.validator".into(), message })?,
        })
    }

    /// The policy of a workspace: its `.maestro/config.yaml` over the defaults
    /// (the defaults alone when the file does not exist).
    pub fn load(workspace: &Path) -> Result<Policy, PolicyError> {
        let path = workspace.join(CONFIG_FILE);
        let raw = match std::fs::read_to_string(&path) {
            Ok(text) => {
                parse(&text).map_err(|message| PolicyError::Parse { path: path.display().to_string(), message })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RawHarness::default(),
            Err(source) => return Err(PolicyError::Read { path: path.display().to_string(), source }),
        };
        Policy::from_raw(raw)
    }

    /// `load`, shared: workspaces whose `harness` section is the same get the
    /// same compiled policy (globs and validator rules cost about a megabyte;
    /// a daemon running a thousand loops would otherwise hold a thousand copies).
    pub fn load_shared(workspace: &Path) -> Result<Arc<Policy>, PolicyError> {
        static SHARED: LazyLock<Mutex<HashMap<String, Weak<Policy>>>> = LazyLock::new(Default::default);
        let path = workspace.join(CONFIG_FILE);
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => format!(
                "{:?}",
                section(&text, "harness")
                    .map_err(|message| PolicyError::Parse { path: path.display().to_string(), message })?
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(PolicyError::Read { path: path.display().to_string(), source }),
        };
        if let Some(policy) = SHARED.lock().expect("policy cache").get(&key).and_then(Weak::upgrade) {
            return Ok(policy);
        }
        let policy = Arc::new(Self::load(workspace)?);
        let mut shared = SHARED.lock().expect("policy cache");
        shared.retain(|_, p| p.strong_count() > 0);
        shared.insert(key, Arc::downgrade(&policy));
        Ok(policy)
    }

    pub fn role(&self, name: &str) -> Result<&RolePolicy, PolicyError> {
        self.roles.get(name).ok_or_else(|| {
            PolicyError::UnknownRole(name.to_string(), self.roles.keys().cloned().collect::<Vec<_>>().join(", "))
        })
    }
}

/// One top-level section of a project configuration's YAML text (`None` when
/// absent); fails on a section that no layer reads.
pub fn section(text: &str, name: &str) -> Result<Option<yaml_serde::Value>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    let yaml_serde::Value::Mapping(mut sections) = value else {
        return Err("the configuration must be a mapping of sections (project, harness, llm, loop)".into());
    };
    for key in sections.keys() {
        let known = key.as_str().is_some_and(|k| SECTIONS.contains(&k));
        if !known {
            return Err(format!("unknown section {key:?}; the sections are {}", SECTIONS.join(", ")));
        }
    }
    Ok(sections.remove(name).filter(|v| !v.is_null()))
}

/// The `harness` section of a project configuration.
pub fn parse(text: &str) -> Result<RawHarness, String> {
    match section(text, "harness")? {
        Some(value) => yaml_serde::from_value(value).map_err(|e| format!("harness: {e}")),
        None => Ok(RawHarness::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in the README is a working configuration.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```yaml\nharness:").expect("the README has a harness example") + "```yaml\n".len();
        let end = start + readme[start..].find("```").expect("the example ends");
        let raw = parse(&readme[start..end]).unwrap();
        let policy = Policy::from_raw(raw).unwrap();
        assert!(policy.roles.contains_key("docs"));
        assert!(policy.validator.rules.iter().any(|r| r.id == "content.no-print"));
        assert!(!policy.validator.rules.iter().any(|r| r.id == "content.exec"));
        assert_eq!(policy.budget.per_loop.steps, 5000);
    }

    #[test]
    fn defaults_follow_the_seed_roles() {
        let policy = Policy::from_raw(RawHarness::default()).unwrap();
        let writes = |role: &str, path: &str| policy.role(role).unwrap().write.is_match(path);
        assert!(writes("backend", "src/api/app.py") && !writes("backend", "src/ui/app.js"));
        assert!(writes("frontend", "src/ui/app.js") && !writes("frontend", "tests/t.py"));
        assert!(writes("test", "tests/unit/test_x.py") && !writes("test", "src/api/app.py"));
        for role in ["planning", "review", "contract-validator"] {
            assert!(!writes(role, "src/api/app.py") && !writes(role, "README.md"), "{role}");
        }
        assert!(policy.deny.is_match(".git/config") && policy.deny.is_match("config/.env.local"));
        assert!(policy.deny.is_match("certs/server.pem") && !policy.deny.is_match("src/api/app.py"));
    }

    #[test]
    fn workspaces_with_the_same_harness_section_share_one_compiled_policy() {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let config = |dir: &tempfile::TempDir, text: &str| {
            std::fs::create_dir_all(dir.path().join(".maestro")).unwrap();
            std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
        };
        config(&dirs[0], "project: {id: a}\nharness:\n  deny: [secrets/**]\n");
        config(&dirs[1], "project: {id: b}\nharness:\n  deny: [secrets/**]\n");
        config(&dirs[2], "harness:\n  deny: [private/**]\n");
        let a = Policy::load_shared(dirs[0].path()).unwrap();
        let b = Policy::load_shared(dirs[1].path()).unwrap();
        let c = Policy::load_shared(dirs[2].path()).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same harness section, one policy");
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(c.deny.is_match("private/key") && !a.deny.is_match("private/key"));
    }
}
