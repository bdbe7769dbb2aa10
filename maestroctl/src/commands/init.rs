//! `maestroctl init [PATH]`, and finding the project a folder belongs to.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use maestro_shared::Conn;
use maestro_shared::v1::{self, project_service_client::ProjectServiceClient};
use tonic::Code;

use super::ExitStatus;
use crate::client::status_error;

const CONFIG: &str = ".maestro/config.yaml";

fn default_config(project: &str) -> String {
    format!(
        "\
# Maestro project configuration. Every key is optional: the defaults are shown
# commented out. Docs: the README's \"Configuration\" section.
project:
  id: {project}

llm:
  provider: openai              # openai (also Ollama, vLLM, llama.cpp, LM Studio, OpenRouter), anthropic, scripted
  # model: gpt-4o-mini
  # base_url: https://api.openai.com/v1     # Ollama: http://localhost:11434/v1
  # api_key_env: OPENAI_API_KEY             # the variable holding the key (never the key itself)
  # roles:
  #   review: {{provider: anthropic, model: claude-sonnet-4-5, api_key_env: ANTHROPIC_API_KEY}}

loop:
  # retries: 2                  # full-cycle retries before a loop escalates to you
  # test_command: [python3, -m, pytest, -q]   # run in the sandbox at every VALID
  # tests_dir: tests            # ... once this folder exists
  # max_agents: 4               # requirements worked on per epoch
  # max_turns: 24               # model turns per agent run
  # commit_to_current_branch: false   # true: the work lands on your branch, not maestro/<loop>

# harness:
#   roles:
#     backend:
#       write: [\"src/api/**\"]
#       commands: [[python3, -m, py_compile]]
"
    )
}

/// A project id from a folder name: `My App` → `my-app`.
fn id_from(dir: &Path) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let id: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '-' }).collect();
    let id: String = id.trim_matches(|c: char| !c.is_ascii_alphanumeric()).chars().take(60).collect();
    if id.is_empty() { "project".into() } else { id }
}

/// The `project.id` of a config file's text, if it sets one.
pub(crate) fn configured_id(text: &str) -> Option<String> {
    let mut in_project = false;
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or_default();
        if !code.starts_with(' ') && !code.trim().is_empty() {
            in_project = code.trim_end() == "project:";
            continue;
        }
        if in_project && let Some(value) = code.trim().strip_prefix("id:") {
            let value = value.trim().trim_matches(['"', '\'']);
            if !value.is_empty() {
                return Some(value.to_string());
            }
        }
    }
    None
}

/// The project configuration file of the project folder `dir`.
pub(crate) fn project_config_path(dir: &Path) -> PathBuf {
    dir.join(CONFIG)
}

/// The folder at or above `start` that holds `.maestro/config.yaml`. Your
/// home folder is never one: its `.maestro/config.yaml` is your own settings.
pub(crate) fn find_workspace(start: &Path) -> Option<PathBuf> {
    start.ancestors().filter(|dir| !is_home(dir)).find(|dir| dir.join(CONFIG).is_file()).map(Path::to_path_buf)
}

/// Whether `dir` is the user's home folder (links resolved).
fn is_home(dir: &Path) -> bool {
    let Some(home) = crate::home::home() else { return false };
    let resolved = |path: &Path| path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    dir == home || resolved(dir) == resolved(&home)
}

/// Makes `dir` a registered project; returns its id. `explicit` wins over the config.
pub(crate) async fn ensure_project(
    channel: Conn,
    dir: &Path,
    explicit: Option<&str>,
    quiet: bool,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
    if is_home(&dir) {
        return Err(anyhow!(
            "{} is your home folder, whose .maestro/ holds your own settings: make a project in a folder of its own",
            dir.display()
        ));
    }
    let config = dir.join(CONFIG);
    let existing = std::fs::read_to_string(&config).ok();
    let project = explicit
        .map(str::to_string)
        .or_else(|| existing.as_deref().and_then(configured_id))
        .unwrap_or_else(|| id_from(&dir));
    let mut done = Vec::new();
    let workspace = dir.display().to_string();
    let mut client = ProjectServiceClient::new(channel);
    let request = v1::CreateProjectRequest {
        id: project.clone(),
        display_name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        workspace: workspace.clone(),
    };
    match client.create_project(request).await {
        Ok(_) => done.push(format!("registered project {project}")),
        Err(status) if status.code() == Code::AlreadyExists => {
            let found = client
                .get_project(v1::GetProjectRequest { id: project.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            if found.workspace != workspace {
                let elsewhere = if found.workspace.is_empty() {
                    "has no project folder".to_string()
                } else {
                    format!("belongs to {}", found.workspace)
                };
                let fix = if existing.is_some() {
                    format!("set another project.id in {}", config.display())
                } else {
                    "name another with --project ID".to_string()
                };
                return Err(anyhow!("project {project} exists already and {elsewhere}; {fix}"));
            }
        }
        Err(status) => return Err(status_error(status)),
    }
    // Written once the project is registered, so a refused id leaves no file
    // pointing at somebody else's project.
    if existing.is_none() {
        std::fs::create_dir_all(dir.join(".maestro"))?;
        std::fs::write(&config, default_config(&project))
            .with_context(|| format!("cannot write {}", config.display()))?;
        done.insert(0, format!("wrote {CONFIG}"));
    }
    if !dir.join(".git").exists() {
        let status = std::process::Command::new("git").arg("init").arg("-q").arg(&dir).status();
        match status {
            Ok(s) if s.success() => done.push("initialised git".into()),
            _ => done.push("git not found: the daemon initialises the repository on the first run".into()),
        }
    }
    if !quiet {
        if done.is_empty() {
            println!("{} is already project {project}; nothing to do", dir.display());
        } else {
            println!("{}: {}", dir.display(), done.join(", "));
        }
    }
    Ok(project)
}

pub(super) async fn run(channel: Conn, path: Option<PathBuf>, project: Option<&str>) -> anyhow::Result<ExitStatus> {
    let dir = match path {
        Some(path) => path,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    ensure_project(channel, &dir, project, false).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_config_or_the_folder() {
        assert_eq!(configured_id(&default_config("shop")), Some("shop".into()));
        assert_eq!(configured_id("llm:\n  provider: openai\n"), None);
        assert_eq!(id_from(Path::new("/home/ada/My App")), "my-app");
    }

    /// The template's pointer to the docs leads somewhere.
    #[test]
    fn the_template_names_a_readme_section_that_exists() {
        let readme = include_str!("../../../README.md");
        assert!(default_config("x").contains("the README's \"Configuration\" section"));
        assert!(readme.lines().any(|line| line.trim_start_matches('#').trim() == "Configuration"));
    }
}
