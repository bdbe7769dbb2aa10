//! Shell completion: the script `maestroctl completions SHELL` prints calls
//! back into maestroctl (`MAESTROCTL_COMPLETE=SHELL maestroctl -- WORDS`; a name
//! of its own, so a `COMPLETE` set for something else never changes what it does), which
//! completes commands and flags from the clap tree, and the ids of projects,
//! loops and requirements from the daemon where that is cheap: one short
//! call to a daemon that already runs (none is started for a completion,
//! and nothing is offered when none answers within a second). The daemon is
//! the one commands reach without flags (`MAESTRO_SERVER`, the current
//! context, the user's file, the local one); a `-p` typed on the same line is
//! not seen, `MAESTRO_PROJECT` and the project folder are.

use std::time::Duration;

use clap::CommandFactory;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::EnvCompleter;
use maestro_shared::v1;

/// The variable that switches maestroctl into completing.
const VAR: &str = "MAESTROCTL_COMPLETE";

/// Answers a completion request (and exits) when the shell made one.
pub(crate) fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(crate::cli::Cli::command).var(VAR).bin("maestroctl").complete();
}

/// Prints the script that registers the completions with `shell`.
pub(crate) fn script(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let completer: &dyn EnvCompleter = match shell {
        clap_complete::Shell::Bash => &clap_complete::env::Bash,
        clap_complete::Shell::Zsh => &clap_complete::env::Zsh,
        clap_complete::Shell::Fish => &clap_complete::env::Fish,
        clap_complete::Shell::Elvish => &clap_complete::env::Elvish,
        clap_complete::Shell::PowerShell => &clap_complete::env::Powershell,
        other => anyhow::bail!("no completions for {other}"),
    };
    // The program that answers: this very binary, wherever it is installed.
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "maestroctl".into());
    let mut out = std::io::stdout().lock();
    completer.write_registration(VAR, "maestroctl", "maestroctl", &exe, &mut out)?;
    Ok(())
}

/// Runs `query` against the daemon the user would reach, if one answers soon.
/// The daemon and project are what a command without flags would use: the
/// same settings in layers (`MAESTRO_*`, the current context with its CA and
/// token, the project folder, the user's file).
fn ask<T>(query: impl AsyncFnOnce(maestro_shared::Conn, Option<String>) -> Result<T, tonic::Status>) -> Option<T> {
    let matches = crate::cli::Cli::command().try_get_matches_from(["maestroctl", "info"]).ok()?;
    let cli = <crate::cli::Cli as clap::FromArgMatches>::from_arg_matches(&matches).ok()?;
    let contexts = crate::context::Contexts::path()
        .and_then(|path| crate::context::Contexts::load(&path).ok())
        .unwrap_or_default();
    let cwd = std::env::current_dir().ok();
    let user_file = crate::config::UserFile::path();
    let settings =
        crate::config::Settings::resolve(&cli, &matches, cwd.as_deref(), user_file.as_deref(), &contexts).ok()?;
    crate::client::set_credentials(settings.credentials.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        let work = async {
            let (channel, local) = match &settings.server.0 {
                Some(server) => (crate::client::connect(server).await.ok()?, false),
                None => (crate::local::Local::new().ok()?.connect(Duration::from_millis(300)).await?, true),
            };
            let conn = maestro_shared::Bearer::new(&crate::client::token(local)).ok()?.connect(channel);
            query(conn, settings.project.0.clone()).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(1), work).await.ok().flatten()
    })
}

fn candidates(items: Vec<(String, String)>) -> Vec<CompletionCandidate> {
    items.into_iter().map(|(id, help)| CompletionCandidate::new(id).help(Some(help.into()))).collect()
}

/// Project ids, with their names.
pub(crate) fn projects() -> Vec<CompletionCandidate> {
    let found = ask(async |conn, _| {
        let mut client = v1::project_service_client::ProjectServiceClient::new(conn);
        let page = client.list_projects(v1::ListProjectsRequest { page_size: 500, ..Default::default() }).await?;
        Ok(page.into_inner().projects.into_iter().map(|p| (p.id, p.display_name)).collect())
    });
    candidates(found.unwrap_or_default())
}

/// Loop ids (of the project, else all), newest first, with state and task.
pub(crate) fn loops() -> Vec<CompletionCandidate> {
    let found = ask(async |conn, project| {
        let mut client = v1::loop_service_client::LoopServiceClient::new(conn);
        let request =
            v1::ListLoopsRequest { project_id: project.unwrap_or_default(), page_size: 200, ..Default::default() };
        let loops = client.list_loops(request).await?.into_inner().loops;
        Ok(loops
            .into_iter()
            .rev()
            .map(|l| {
                let state = l.state().as_str_name().trim_start_matches("LOOP_STATE_").to_lowercase();
                (l.loop_id, format!("{state}: {}", l.task.chars().take(50).collect::<String>()))
            })
            .collect())
    });
    candidates(found.unwrap_or_default())
}

/// Requirement ids of the project, with their titles.
pub(crate) fn requirements() -> Vec<CompletionCandidate> {
    let found = ask(async |conn, project| {
        let Some(project) = project else { return Ok(Vec::new()) };
        let mut client = v1::requirement_service_client::RequirementServiceClient::new(conn);
        let request = v1::ListRequirementsRequest { project_id: project, page_size: 1000, ..Default::default() };
        let requirements = client.list_requirements(request).await?.into_inner().requirements;
        Ok(requirements.into_iter().map(|r| (r.id, r.title)).collect())
    });
    candidates(found.unwrap_or_default())
}
