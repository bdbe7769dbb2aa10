//! maestroctl's own settings, in layers (lowest first): the user's file
//! `~/.maestro/config.yaml`, the project folder's `.maestro/config.yaml` (its
//! `project.id`, found at or above the current folder), the environment
//! (`MAESTRO_SERVER`, `MAESTRO_PROJECT`, `MAESTRO_OUTPUT`), then flags.
//! `maestroctl config` shows where each value comes from and edits both
//! files (`--project`: the project folder's), keeping their comments.

mod yaml_edit;

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::{Deserialize, Serialize};

use crate::cli::{Cli, Command, ConfigCmd, Layer, Output};
use crate::color::ColorChoice;
use crate::commands::ExitStatus;
use crate::commands::init::{configured_id, find_workspace, project_config_path};
use crate::output::{Table, emit};

use maestro_shared::settings::{self, Kind};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) color: Option<String>,
}

impl UserFile {
    /// The user's file, or `None` when HOME is not set.
    pub(crate) fn path() -> Option<PathBuf> {
        crate::home::maestro_file("config.yaml")
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
            anyhow!(
                "{}: {e} (keys: {}; fix it with `maestroctl config unset KEY` or `maestroctl config edit`)",
                path.display(),
                user_key_names()
            )
        })?;
        if let Some(output) = &file.output {
            parse_output(output).with_context(|| format!("{}: output", path.display()))?;
        }
        if let Some(color) = &file.color {
            crate::color::parse(color).with_context(|| format!("{}: color", path.display()))?;
        }
        Ok(file)
    }
}

fn parse_output(value: &str) -> anyhow::Result<Output> {
    match value {
        "table" => Ok(Output::Table),
        "json" => Ok(Output::Json),
        "yaml" => Ok(Output::Yaml),
        other => Err(anyhow!("{other:?} is not an output format ({})", settings::OUTPUTS.join(", "))),
    }
}

fn user_key_names() -> String {
    settings::USER_KEYS.iter().map(|k| k.path.as_str()).collect::<Vec<_>>().join(", ")
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
    pub(crate) color: (ColorChoice, Source),
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
            color: (ColorChoice::Auto, Source::Session),
            credentials: crate::client::Credentials::default(),
        }
    }

    /// The project to act on. Commands that make or find a project from a
    /// folder (`init`, `run`, `demo`) take only one named on their command
    /// line: a default from a file or from `MAESTRO_PROJECT` (which the README
    /// has you export for the other commands) must not rename a folder's
    /// project, nor make a demo collide with an existing one.
    pub(crate) fn project_for(&self, command: &Command) -> Option<String> {
        let from_folder = matches!(command, Command::Init { .. } | Command::Run(_) | Command::Demo { .. });
        let explicit = if from_folder {
            matches!(self.project.1, Source::Flag | Source::Session)
        } else {
            matches!(self.project.1, Source::Flag | Source::Env(_) | Source::Session)
        };
        if from_folder && !explicit { None } else { self.project.0.clone() }
    }

    /// Fills what flags and environment left open from the project folder
    /// (at or above `cwd`) and the user's file at `user_path`.
    pub(crate) fn resolve(
        cli: &Cli,
        matches: &ArgMatches,
        cwd: Option<&Path>,
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
        let folder = cwd.and_then(find_workspace).map(|dir| project_config_path(&dir));
        let folder_text = folder.as_ref().and_then(|path| std::fs::read_to_string(path).ok());
        if let (Some(path), Some(text)) = (&folder, &folder_text) {
            refuse_user_keys(path, text)?;
        }
        let project = match from_command_line(matches, "project", "MAESTRO_PROJECT") {
            Some(source) => (cli.project.clone(), source),
            None => {
                let from_folder = folder.as_ref().zip(folder_text.as_deref()).and_then(|(path, text)| {
                    let id = configured_id(text)?;
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
        let color = match from_command_line(matches, "color", "MAESTRO_COLOR") {
            Some(source) => (cli.color, source),
            None => match &user.color {
                Some(color) => (crate::color::parse(color)?, user_source()),
                None => (ColorChoice::Auto, Source::Default),
            },
        };
        Ok(Settings { server, project, output, color, credentials })
    }
}

/// The user's own settings have no place in a project folder's file (it is
/// shared with the project, and the daemon refuses sections it does not
/// know): a clear line instead of silently ignoring them.
fn refuse_user_keys(path: &Path, text: &str) -> anyhow::Result<()> {
    for key in settings::USER_KEYS.iter().map(|k| k.path.as_str()).filter(|k| *k != "project") {
        if yaml_edit::get(text, &[key]).ok().flatten().is_some() {
            return Err(anyhow!(
                "{}: {key} is your own setting, not the project's: set it with `maestroctl config set {key} …` \
                 (in ~/.maestro/config.yaml) and remove it here with `maestroctl config unset --project {key}`",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The file a `config` command works on, and its keys.
struct File {
    path: PathBuf,
    project: bool,
}

impl File {
    fn of(layer: Layer) -> anyhow::Result<File> {
        if layer.project_file {
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            let dir = find_workspace(&cwd).ok_or_else(|| {
                anyhow!("no project folder here (no .maestro/config.yaml at or above this folder); run `maestroctl init` first")
            })?;
            Ok(File { path: project_config_path(&dir), project: true })
        } else {
            let path = UserFile::path()
                .ok_or_else(|| anyhow!("HOME is not set (or not absolute), so there is no ~/.maestro/config.yaml"))?;
            Ok(File { path, project: false })
        }
    }

    fn keys(&self) -> &'static [settings::Key] {
        if self.project { &settings::PROJECT_KEYS } else { &settings::USER_KEYS }
    }

    fn text(&self) -> anyhow::Result<String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// Written beside and renamed, so a crash never leaves half a file; a
    /// file that is a link (dotfiles kept elsewhere) is written where it
    /// leads, and keeps its permissions.
    fn write(&self, text: &str) -> anyhow::Result<()> {
        let path = self.path.canonicalize().unwrap_or_else(|_| self.path.clone());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        if let Ok(old) = std::fs::metadata(&path) {
            std::fs::set_permissions(&tmp, old.permissions())
                .with_context(|| format!("cannot set the permissions of {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))
    }

    /// The key `name` names in this file, or a message listing what there is.
    fn key(&self, name: &str) -> anyhow::Result<settings::Key> {
        if let Some(key) = settings::find(self.keys(), name) {
            return Ok(key.clone());
        }
        let other = if self.project { &settings::USER_KEYS } else { &settings::PROJECT_KEYS };
        if let Some(key) = settings::find(other, name) {
            return Err(if self.project {
                anyhow!("{} is your own setting, not the project's: maestroctl config set {name} …", key.path)
            } else {
                anyhow!(
                    "{name} is a project setting: maestroctl config set --project {name} … (in .maestro/config.yaml)"
                )
            });
        }
        let section = name.split('.').next().unwrap_or_default();
        let near: Vec<&str> =
            self.keys().iter().map(|k| k.path.as_str()).filter(|k| k.split('.').next() == Some(section)).collect();
        let listed = if near.is_empty() {
            self.keys().iter().map(|k| k.path.as_str()).collect::<Vec<_>>().join(", ")
        } else {
            near.join(", ")
        };
        Err(anyhow!("unknown key {name:?}; the keys are {listed} (all of them: maestroctl config keys)"))
    }
}

/// `value` as YAML for `key`, or why it does not fit.
fn render(key: &settings::Key, value: &str) -> anyhow::Result<String> {
    let value = value.trim();
    let wrong = || anyhow!("{}: {value:?} is not {}", key.path, key.kind.describe());
    let flow = |value: &str| -> anyhow::Result<serde_json::Value> {
        yaml_serde::from_str::<serde_json::Value>(value).map_err(|_| wrong())
    };
    Ok(match key.kind {
        Kind::Text => {
            let text = yaml_serde::to_string(&value).context("cannot encode the value")?;
            text.trim_end().to_string()
        }
        Kind::Count => value.parse::<u64>().map_err(|_| wrong())?.to_string(),
        Kind::Number => {
            let number = value.parse::<f64>().map_err(|_| wrong())?;
            if !number.is_finite() {
                return Err(wrong());
            }
            value.to_string()
        }
        Kind::Flag => match value {
            "true" | "yes" | "on" => "true".into(),
            "false" | "no" | "off" => "false".into(),
            _ => return Err(wrong()),
        },
        Kind::Choice(choices) => {
            if !choices.contains(&value) {
                return Err(wrong());
            }
            value.to_string()
        }
        Kind::List => {
            let list = flow(value)?;
            let words = list.as_array().filter(|items| items.iter().all(|i| i.is_string())).ok_or_else(wrong)?;
            serde_json::to_string(words)?
        }
        Kind::Lists => {
            let lists = flow(value)?;
            let ok = lists
                .as_array()
                .is_some_and(|l| l.iter().all(|i| i.as_array().is_some_and(|w| w.iter().all(|w| w.is_string()))));
            if !ok {
                return Err(wrong());
            }
            serde_json::to_string(&lists)?
        }
        Kind::Records(fields) => {
            let records = flow(value)?;
            let ok = records.as_array().is_some_and(|items| {
                items.iter().all(|item| {
                    item.as_object().is_some_and(|record| {
                        record.len() == fields.len()
                            && fields.iter().all(|field| record.get(*field).is_some_and(|v| v.is_string()))
                    })
                })
            });
            if !ok {
                return Err(wrong());
            }
            serde_json::to_string(&records)?
        }
        Kind::Map => {
            let map = flow(value)?;
            if !map.as_object().is_some_and(|m| m.values().all(|v| v.is_string())) {
                return Err(wrong());
            }
            serde_json::to_string(&map)?
        }
    })
}

/// A value as `config get` prints it: text as is, the rest as JSON.
fn shown(value: &yaml_serde::Value) -> anyhow::Result<String> {
    let value = serde_json::to_value(value)?;
    Ok(match value {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    })
}

/// Checks a file after `config set|edit`, as the commands that read it will.
fn check_file(file: &File) -> anyhow::Result<()> {
    if file.project {
        let text = file.text()?;
        refuse_user_keys(&file.path, &text)?;
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            yaml_serde::from_str(&text).map_err(|e| anyhow!("{}: {e}", file.path.display()))?
        };
        if let Some(sections) = value.as_object() {
            for section in sections.keys() {
                if !["project", "llm", "loop", "harness"].contains(&section.as_str()) {
                    return Err(anyhow!(
                        "{}: unknown section {section:?}; the sections are project, llm, loop, harness",
                        file.path.display()
                    ));
                }
            }
        }
        Ok(())
    } else {
        UserFile::load(&file.path).map(|_| ())
    }
}

fn edit_error(file: &File, error: yaml_edit::EditError) -> anyhow::Error {
    anyhow!("{}: {error}", file.path.display())
}

/// `maestroctl config …`: needs no daemon.
pub(crate) fn run(cmd: ConfigCmd, settings: &Settings, output: Output) -> anyhow::Result<ExitStatus> {
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
                ("color", settings.color.0.name().to_string(), &settings.color.1),
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
        ConfigCmd::Keys => {
            let layers = [("user", &*settings::USER_KEYS), ("project", &*settings::PROJECT_KEYS)];
            let all: Vec<serde_json::Value> = layers
                .iter()
                .flat_map(|(layer, keys)| {
                    keys.iter().map(move |k| {
                        serde_json::json!({ "key": k.path, "file": layer, "takes": k.kind.describe(), "help": k.help })
                    })
                })
                .collect();
            emit(output, &all, || {
                let mut table = Table::new(&["KEY", "FILE", "TAKES", "WHAT"]);
                for key in &all {
                    let cell = |name: &str| key[name].as_str().unwrap_or_default().to_string();
                    let file = if key["file"] == "user" { "~/.maestro" } else { "--project" };
                    table.row(vec![cell("key"), file.into(), cell("takes"), cell("help")]);
                }
                table.print();
            })?;
            Ok(0)
        }
        ConfigCmd::Get { key, layer } => {
            let file = File::of(layer)?;
            let path: Vec<&str> = key.split('.').collect();
            // Any key present can be read, a misspelt one too.
            match yaml_edit::get(&file.text()?, &path).map_err(|e| edit_error(&file, e))? {
                Some(value) => {
                    println!("{}", shown(&value)?);
                    Ok(0)
                }
                None => {
                    file.key(&key)?;
                    Ok(1)
                }
            }
        }
        ConfigCmd::Set { key, value, layer } => {
            let file = File::of(layer)?;
            let found = file.key(&key)?;
            if value.trim().is_empty() {
                return Err(anyhow!("{key}: give a value, or use `maestroctl config unset {key}`"));
            }
            if key == "server" {
                crate::client::endpoint_url(value.trim())?;
            }
            let yaml = render(&found, &value)?;
            let path: Vec<&str> = key.split('.').collect();
            let text = file.text()?;
            let header = if text.is_empty() && !file.project {
                "# maestroctl settings; edit with `maestroctl config set|unset KEY` or `maestroctl config edit`\n"
            } else {
                ""
            };
            let edited = yaml_edit::set(&text, &path, &yaml).map_err(|e| edit_error(&file, e))?;
            file.write(&format!("{header}{edited}"))?;
            eprintln!("{key} = {yaml} (in {})", file.path.display());
            Ok(0)
        }
        ConfigCmd::Unset { key, layer } => {
            let file = File::of(layer)?;
            let path: Vec<&str> = key.split('.').collect();
            match yaml_edit::unset(&file.text()?, &path).map_err(|e| edit_error(&file, e))? {
                Some(edited) => {
                    file.write(&edited)?;
                    eprintln!("{key} unset (in {})", file.path.display());
                }
                None => eprintln!("{key} is not set in {}", file.path.display()),
            }
            Ok(0)
        }
        ConfigCmd::Edit { layer } => {
            let file = File::of(layer)?;
            if !file.path.exists() {
                file.write("# maestroctl settings: server, project, output, color (maestroctl config keys)\n")?;
            }
            let editor = ["VISUAL", "EDITOR"]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
                .unwrap_or_else(|| "vi".to_string());
            let words = shlex::split(&editor)
                .filter(|w| !w.is_empty())
                .ok_or_else(|| anyhow!("cannot read the editor command {editor:?}"))?;
            let status = std::process::Command::new(&words[0])
                .args(&words[1..])
                .arg(&file.path)
                .status()
                .with_context(|| format!("cannot start the editor {editor:?} (set VISUAL or EDITOR)"))?;
            if !status.success() {
                return Err(anyhow!(
                    "the editor {editor:?} failed ({status}); {} is as it left it",
                    file.path.display()
                ));
            }
            check_file(&file)
                .with_context(|| "the file is saved but not valid yet; run `maestroctl config edit` again")?;
            eprintln!("{} checked", file.path.display());
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
        Settings::resolve(&cli, &matches, Some(cwd), Some(user), &crate::context::Contexts::default()).unwrap()
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
            Settings::resolve(&cli, &matches, Some(dir.path()), Some(&user), &contexts).unwrap()
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
            color: Some("never".into()),
        };
        std::fs::create_dir_all(user.parent().unwrap()).unwrap();
        std::fs::write(&user, yaml_serde::to_string(&file).unwrap()).unwrap();
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
        std::fs::write(&user, "output: xml\n").unwrap();
        let error = format!("{:#}", UserFile::load(&user).unwrap_err());
        assert!(error.contains("not an output format"), "{error}");
        std::fs::write(&user, "# only a comment\n").unwrap();
        assert_eq!(UserFile::load(&user).unwrap(), UserFile::default());
    }
}
