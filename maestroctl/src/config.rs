//! maestroctl's own settings, in layers (lowest first): the user's file
//! `~/.maestro/config.yaml`, the project folder's `.maestro/config.yaml` (its
//! `project.id`, found at or above the current folder), the environment
//! (`MAESTRO_SERVER`, `MAESTRO_PROJECT`, `MAESTRO_OUTPUT`), then flags.
//! `maestroctl config` shows where each value comes from and edits the
//! user's file.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::{Deserialize, Serialize};

use crate::cli::{Cli, Command, ConfigCmd, Output};
use crate::commands::ExitStatus;
use crate::commands::init::{configured_id, find_workspace, project_config_path};
use crate::output::{Table, emit};

/// The keys of the user's file.
pub(crate) const KEYS: [&str; 3] = ["server", "project", "output"];

/// `~/.maestro/config.yaml` as written.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) output: Option<String>,
}

impl UserFile {
    /// The user's file, or `None` when HOME is not set.
    pub(crate) fn path() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".maestro").join("config.yaml"))
    }

    /// Reads `path`; a missing file is an empty one.
    pub(crate) fn load(path: &Path) -> anyhow::Result<UserFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UserFile::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(UserFile::default());
        }
        let file: UserFile = yaml_serde::from_str(&text).map_err(|e| {
            anyhow!("{}: {e} (keys: {}; fix it or run `maestroctl config unset KEY`)", path.display(), KEYS.join(", "))
        })?;
        if let Some(output) = &file.output {
            parse_output(output).with_context(|| format!("{}: output", path.display()))?;
        }
        Ok(file)
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let body = yaml_serde::to_string(self).context("cannot encode the settings")?;
        let text = format!("# maestroctl settings; edit with `maestroctl config set|unset KEY`\n{body}");
        // Written beside and renamed, so a crash never leaves half a file.
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    }

    fn get(&self, key: &str) -> Option<&String> {
        match key {
            "server" => self.server.as_ref(),
            "project" => self.project.as_ref(),
            _ => self.output.as_ref(),
        }
    }

    fn slot(&mut self, key: &str) -> &mut Option<String> {
        match key {
            "server" => &mut self.server,
            "project" => &mut self.project,
            _ => &mut self.output,
        }
    }
}

fn parse_output(value: &str) -> anyhow::Result<Output> {
    match value {
        "table" => Ok(Output::Table),
        "json" => Ok(Output::Json),
        other => Err(anyhow!("{other:?} is not an output format (table or json)")),
    }
}

fn check_key(key: &str) -> anyhow::Result<()> {
    if KEYS.contains(&key) { Ok(()) } else { Err(anyhow!("unknown key {key:?}; the keys are {}", KEYS.join(", "))) }
}

/// Where a setting's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Flag,
    Env(&'static str),
    ProjectFile(PathBuf),
    UserFile(PathBuf),
    /// Set in the REPL's session.
    Session,
    /// The current context (`maestroctl context use`).
    Context(String),
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::ProjectFile(path) | Source::UserFile(path) => write!(f, "{}", path.display()),
            Source::Session => f.write_str("this session"),
            Source::Context(name) => write!(f, "context {name}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The settings in effect, each with its source.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) server: (Option<String>, Source),
    pub(crate) project: (Option<String>, Source),
    pub(crate) output: (Output, Source),
    /// Token and TLS files: from flags or the environment, else from the
    /// current context when the server is the context's.
    pub(crate) credentials: crate::client::Credentials,
}

fn from_command_line(matches: &ArgMatches, id: &str, env: &'static str) -> Option<Source> {
    match matches.value_source(id)? {
        ValueSource::CommandLine => Some(Source::Flag),
        ValueSource::EnvVariable => Some(Source::Env(env)),
        _ => None,
    }
}

impl Settings {
    /// Settings a REPL session holds.
    pub(crate) fn session(server: Option<String>, project: Option<String>, output: Output) -> Settings {
        Settings {
            server: (server, Source::Session),
            project: (project, Source::Session),
            output: (output, Source::Session),
            credentials: crate::client::Credentials::default(),
        }
    }

    /// The project to act on. Commands that make or find a project from a
    /// folder (`init`, `run`, `demo`) take only one given by a flag or the
    /// environment: a default from a file must not rename a folder's project.
    pub(crate) fn project_for(&self, command: &Command) -> Option<String> {
        let from_folder = matches!(command, Command::Init { .. } | Command::Run(_) | Command::Demo { .. });
        let explicit = matches!(self.project.1, Source::Flag | Source::Env(_) | Source::Session);
        if from_folder && !explicit { None } else { self.project.0.clone() }
    }

    /// Fills what flags and environment left open from the project folder
    /// (at or above `cwd`) and the user's file at `user_path`.
    pub(crate) fn resolve(
        cli: &Cli,
        matches: &ArgMatches,
        cwd: &Path,
        user_path: Option<&Path>,
        contexts: &crate::context::Contexts,
    ) -> anyhow::Result<Settings> {
        let user = match user_path {
            Some(path) => UserFile::load(path)?,
            None => UserFile::default(),
        };
        let user_source = || Source::UserFile(user_path.map(Path::to_path_buf).unwrap_or_default());
        let current = contexts.current();
        let server = match (from_command_line(matches, "server", "MAESTRO_SERVER"), current) {
            (Some(source), _) => (cli.server.clone(), source),
            (None, Some((name, context))) => (Some(context.server.clone()), Source::Context(name.to_string())),
            (None, None) => match &user.server {
                Some(server) => (Some(server.clone()), user_source()),
                None => (None, Source::Default),
            },
        };
        // A context's token and files go only to the context's server.
        let from_context = match (&server.1, current) {
            (Source::Context(_), Some((_, context))) => context.credentials(),
            _ => crate::client::Credentials::default(),
        };
        let credentials = crate::client::Credentials {
            token: cli.token.clone().filter(|t| !t.trim().is_empty()).or(from_context.token),
            ca_file: cli.ca_file.clone().or(from_context.ca_file),
            tls_cert: cli.tls_cert.clone().or(from_context.tls_cert),
            tls_key: cli.tls_key.clone().or(from_context.tls_key),
        };
        let project = match from_command_line(matches, "project", "MAESTRO_PROJECT") {
            Some(source) => (cli.project.clone(), source),
            None => {
                let folder = find_workspace(cwd).map(|dir| project_config_path(&dir));
                let from_folder = folder.as_ref().and_then(|path| {
                    let id = configured_id(&std::fs::read_to_string(path).ok()?)?;
                    Some((Some(id), Source::ProjectFile(path.clone())))
                });
                match (from_folder, &user.project) {
                    (Some(found), _) => found,
                    (None, Some(project)) => (Some(project.clone()), user_source()),
                    (None, None) => (None, Source::Default),
                }
            }
        };
        let output = match from_command_line(matches, "output", "MAESTRO_OUTPUT") {
            Some(source) => (cli.output, source),
            None => match &user.output {
                Some(output) => (parse_output(output)?, user_source()),
                None => (Output::Table, Source::Default),
            },
        };
        Ok(Settings { server, project, output, credentials })
    }
}

/// `maestroctl config …`: needs no daemon.
pub(crate) fn run(cmd: ConfigCmd, settings: &Settings, output: Output) -> anyhow::Result<ExitStatus> {
    let path = || UserFile::path().ok_or_else(|| anyhow!("HOME is not set, so there is no ~/.maestro/config.yaml"));
    match cmd {
        ConfigCmd::Show => {
            let server = match &settings.server.0 {
                Some(server) => server.clone(),
                None => "~/.maestro/maestrod.sock (your own maestrod, started when none answers)".to_string(),
            };
            let project = settings.project.0.clone().unwrap_or_default();
            let rows = [
                ("server", server, &settings.server.1),
                ("project", project, &settings.project.1),
                ("output", settings.output.0.name().to_string(), &settings.output.1),
            ];
            let json: serde_json::Map<String, serde_json::Value> = rows
                .iter()
                .map(|(key, value, source)| {
                    (key.to_string(), serde_json::json!({ "value": value, "source": source.to_string() }))
                })
                .collect();
            emit(output, &json, || {
                let mut table = Table::new(&["KEY", "VALUE", "SOURCE"]);
                for (key, value, source) in &rows {
                    table.row(vec![key.to_string(), value.clone(), source.to_string()]);
                }
                table.print();
            })?;
            Ok(0)
        }
        ConfigCmd::Get { key } => {
            check_key(&key)?;
            let path = path()?;
            match UserFile::load(&path)?.get(&key) {
                Some(value) => {
                    println!("{value}");
                    Ok(0)
                }
                None => Ok(1),
            }
        }
        ConfigCmd::Set { key, value } => {
            check_key(&key)?;
            let value = value.trim().to_string();
            if value.is_empty() {
                return Err(anyhow!("{key}: give a value, or use `maestroctl config unset {key}`"));
            }
            if key == "output" {
                parse_output(&value)?;
            }
            if key == "server" {
                crate::client::endpoint_url(&value)?;
            }
            let path = path()?;
            let mut file = UserFile::load(&path)?;
            *file.slot(&key) = Some(value.clone());
            file.save(&path)?;
            eprintln!("{key} = {value} (in {})", path.display());
            Ok(0)
        }
        ConfigCmd::Unset { key } => {
            check_key(&key)?;
            let path = path()?;
            let mut file = UserFile::load(&path)?;
            if file.slot(&key).take().is_some() {
                file.save(&path)?;
                eprintln!("{key} unset (in {})", path.display());
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn settings(args: &[&str], cwd: &Path, user: &Path) -> Settings {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        Settings::resolve(&cli, &matches, cwd, Some(user), &crate::context::Contexts::default()).unwrap()
    }

    #[test]
    fn a_contexts_token_goes_only_to_its_own_server() {
        use crate::context::{Context, Contexts};
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("config.yaml");
        let mut contexts = Contexts::default();
        let team = Context {
            server: "https://m.example:7700".into(),
            ca_file: Some("/ca.pem".into()),
            token: Some("team-secret".into()),
            tls_cert: None,
            tls_key: None,
        };
        contexts.contexts.insert("team".into(), team);
        contexts.current = Some("team".into());
        let resolve = |args: &[&str]| {
            let matches = Cli::command().try_get_matches_from(args).unwrap();
            let cli = Cli::from_arg_matches(&matches).unwrap();
            Settings::resolve(&cli, &matches, dir.path(), Some(&user), &contexts).unwrap()
        };
        let current = resolve(&["maestroctl", "info"]);
        assert_eq!(current.server, (Some("https://m.example:7700".into()), Source::Context("team".into())));
        assert_eq!(current.credentials.token.as_deref(), Some("team-secret"));
        assert_eq!(current.credentials.ca_file.as_deref(), Some(Path::new("/ca.pem")));

        let elsewhere = resolve(&["maestroctl", "--server", "http://evil:7700", "info"]);
        assert_eq!(elsewhere.credentials.token, None, "never the context's token to another server");
        assert_eq!(elsewhere.credentials.ca_file, None);
        let own_token = resolve(&["maestroctl", "--token", "mine", "info"]);
        assert_eq!(own_token.credentials.token.as_deref(), Some("mine"), "a flag beats the context");
    }

    #[test]
    fn flags_beat_the_project_folder_which_beats_the_users_file() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("home/.maestro/config.yaml");
        let folder = dir.path().join("shop/src");
        std::fs::create_dir_all(&folder).unwrap();
        let none = settings(&["maestroctl", "info"], &folder, &user);
        assert_eq!(none.server, (None, Source::Default));
        assert_eq!(none.project, (None, Source::Default));
        assert_eq!(none.output, (Output::Table, Source::Default));

        let file = UserFile {
            server: Some("http://10.0.0.5:7700".into()),
            project: Some("todo".into()),
            output: Some("json".into()),
        };
        file.save(&user).unwrap();
        assert_eq!(UserFile::load(&user).unwrap(), file, "what is saved loads back");
        let from_user = settings(&["maestroctl", "info"], &folder, &user);
        assert_eq!(from_user.server, (Some("http://10.0.0.5:7700".into()), Source::UserFile(user.clone())));
        assert_eq!(from_user.project.0.as_deref(), Some("todo"));
        assert_eq!(from_user.output.0, Output::Json);

        std::fs::create_dir_all(dir.path().join("shop/.maestro")).unwrap();
        let project_file = dir.path().join("shop/.maestro/config.yaml");
        std::fs::write(&project_file, "project:\n  id: shop\n").unwrap();
        let from_folder = settings(&["maestroctl", "info"], &folder, &user);
        assert_eq!(from_folder.project, (Some("shop".into()), Source::ProjectFile(project_file)));

        let flags =
            settings(&["maestroctl", "-p", "cli", "-o", "table", "--server", "http://h:1", "info"], &folder, &user);
        assert_eq!(flags.project, (Some("cli".into()), Source::Flag));
        assert_eq!(flags.output, (Output::Table, Source::Flag));
        assert_eq!(flags.server, (Some("http://h:1".into()), Source::Flag));
    }

    #[test]
    fn a_broken_users_file_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("config.yaml");
        std::fs::write(&user, "sever: http://typo:7700\n").unwrap();
        let error = format!("{:#}", UserFile::load(&user).unwrap_err());
        assert!(error.contains("config.yaml") && error.contains("sever"), "{error}");
        std::fs::write(&user, "output: yaml\n").unwrap();
        let error = format!("{:#}", UserFile::load(&user).unwrap_err());
        assert!(error.contains("not an output format"), "{error}");
        std::fs::write(&user, "# only a comment\n").unwrap();
        assert_eq!(UserFile::load(&user).unwrap(), UserFile::default());
    }
}
