//! Contexts: named servers, each with the CA, client certificate and token to
//! use there, in `~/.maestro/contexts.yaml` (mode 0600: it holds tokens).
//! The current context supplies what flags and the environment leave open.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::cli::{ContextCmd, Output};
use crate::client::Credentials;
use crate::commands::ExitStatus;
use crate::output::{Table, emit};

/// One named server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Context {
    pub(crate) server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key: Option<PathBuf>,
}

impl Context {
    pub(crate) fn credentials(&self) -> Credentials {
        Credentials {
            token: self.token.clone(),
            ca_file: self.ca_file.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}

/// The file as written.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) current: Option<String>,
    #[serde(default)]
    pub(crate) contexts: BTreeMap<String, Context>,
}

impl Contexts {
    /// `~/.maestro/contexts.yaml`, or `None` without HOME.
    pub(crate) fn path() -> Option<PathBuf> {
        crate::home::maestro_file("contexts.yaml")
    }

    /// Reads `path`; a missing file has no contexts. A file others may read is
    /// refused: it holds tokens.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Contexts> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contexts::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        if mode & 0o077 != 0 {
            bail!("{} holds tokens but others may read it (mode {mode:o}); run chmod 600 on it", path.display());
        }
        if text.trim().is_empty() {
            return Ok(Contexts::default());
        }
        let contexts: Contexts = yaml_serde::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if let Some(current) = &contexts.current
            && !contexts.contexts.contains_key(current)
        {
            bail!(
                "{}: the current context {current:?} is not defined; run `maestroctl context use NAME`",
                path.display()
            );
        }
        Ok(contexts)
    }

    /// The current context, if one is set.
    pub(crate) fn current(&self) -> Option<(&str, &Context)> {
        let name = self.current.as_deref()?;
        self.contexts.get(name).map(|context| (name, context))
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let body = yaml_serde::to_string(self).context("cannot encode the contexts")?;
        let text = format!("# maestroctl contexts; edit with `maestroctl context add|use|remove`\n{body}");
        // Written beside with mode 0600 and renamed: never half a file, never readable by others.
        let tmp = path.with_extension("yaml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(anyhow!("context name {name:?}: use letters, digits, '-', '_' or '.' (at most 64)")) }
}

/// What `context add` records: the server and credentials given by flags or the environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Given {
    pub(crate) server: Option<String>,
    pub(crate) credentials: Credentials,
}

/// `maestroctl context …`: needs no daemon.
pub(crate) fn run(cmd: ContextCmd, given: &Given, output: Output) -> anyhow::Result<ExitStatus> {
    let path = Contexts::path().ok_or_else(|| anyhow!("HOME is not set, so there is no ~/.maestro/contexts.yaml"))?;
    let mut contexts = Contexts::load(&path)?;
    match cmd {
        ContextCmd::Add { name, use_it } => {
            check_name(&name)?;
            let server =
                given.server.clone().ok_or_else(|| anyhow!("context add {name}: give the server with --server URL"))?;
            crate::client::server_list(&server)?;
            let absolute = |file: &Option<PathBuf>, flag: &str| -> anyhow::Result<Option<PathBuf>> {
                file.as_ref()
                    .map(|f| std::fs::canonicalize(f).map_err(|e| anyhow!("{flag} {}: {e}", f.display())))
                    .transpose()
            };
            let c = &given.credentials;
            let context = Context {
                server,
                ca_file: absolute(&c.ca_file, "--ca-file")?,
                token: c.token.clone().filter(|t| !t.trim().is_empty()),
                tls_cert: absolute(&c.tls_cert, "--tls-cert")?,
                tls_key: absolute(&c.tls_key, "--tls-key")?,
            };
            contexts.contexts.insert(name.clone(), context);
            if use_it {
                contexts.current = Some(name.clone());
            }
            contexts.save(&path)?;
            eprintln!("maestroctl: context {name} saved{}", if use_it { " and in use" } else { "" });
        }
        ContextCmd::Use { name, none } => {
            if none {
                contexts.current = None;
            } else if let Some(name) = name {
                if !contexts.contexts.contains_key(&name) {
                    let known: Vec<&str> = contexts.contexts.keys().map(String::as_str).collect();
                    bail!("no context {name:?} (known: {}); add it with `maestroctl context add`", known.join(", "));
                }
                contexts.current = Some(name);
            }
            contexts.save(&path)?;
        }
        ContextCmd::Remove { name } => {
            if contexts.contexts.remove(&name).is_none() {
                bail!("no context {name:?}");
            }
            if contexts.current.as_deref() == Some(name.as_str()) {
                contexts.current = None;
            }
            contexts.save(&path)?;
        }
        ContextCmd::List => {
            let rows: Vec<serde_json::Value> = contexts
                .contexts
                .iter()
                .map(|(name, c)| {
                    serde_json::json!({
                        "name": name,
                        "current": contexts.current.as_deref() == Some(name.as_str()),
                        "server": c.server,
                        "caFile": c.ca_file,
                        "tlsCert": c.tls_cert,
                        "hasToken": c.token.is_some(),
                    })
                })
                .collect();
            emit(output, &rows, || {
                let mut table = Table::new(&["", "NAME", "SERVER", "CA", "CLIENT CERT", "TOKEN"]);
                for (name, c) in &contexts.contexts {
                    let current = if contexts.current.as_deref() == Some(name.as_str()) { "*" } else { "" };
                    let file = |f: &Option<PathBuf>| f.as_ref().map_or("-".to_string(), |f| f.display().to_string());
                    table.row(vec![
                        current.to_string(),
                        name.clone(),
                        c.server.clone(),
                        file(&c.ca_file),
                        file(&c.tls_cert),
                        if c.token.is_some() { "set" } else { "-" }.to_string(),
                    ]);
                }
                table.print();
            })?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".maestro/contexts.yaml");
        let mut contexts = Contexts::default();
        contexts.contexts.insert(
            "team".into(),
            Context {
                server: "https://m.example:7700".into(),
                ca_file: Some("/etc/ca.pem".into()),
                token: Some("secret".into()),
                tls_cert: None,
                tls_key: None,
            },
        );
        contexts.current = Some("team".into());
        contexts.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Contexts::load(&path).unwrap(), contexts);
        assert_eq!(Contexts::load(&path).unwrap().current().unwrap().1.token.as_deref(), Some("secret"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Contexts::load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("team-1.prod").is_ok());
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
