//! maestroctl: the thin client. Errors print as one line and exit 1.
//! The binary's `main.rs` only calls [`main`].

pub mod cli;
mod client;
mod color;
mod commands;
mod complete;
mod config;
mod context;
mod home;
mod local;
mod output;
mod repl;
mod tui;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

/// Prints a clap error or help; help and version succeed, the rest are usage errors (exit 1).
fn clap_exit(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        // Usage errors exit 1 like every other failure (2 and 3 are reserved for loop outcomes).
        _ => ExitCode::from(1),
    }
}

/// Output into a pipe whose reader went away (`maestroctl log list | head`)
/// ends the command quietly, as it does for other Unix tools, instead of a
/// panic message and exit 101.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Runs `maestroctl` with the process's arguments.
pub fn main() -> ExitCode {
    quiet_broken_pipe();
    complete::answer_if_asked();
    let matches = match cli::Cli::command().try_get_matches_from(cli::normalize(std::env::args_os())) {
        Ok(matches) => matches,
        Err(error) => return clap_exit(&error),
    };
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => return clap_exit(&error),
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let contexts = match context::Contexts::path().map(|path| context::Contexts::load(&path)).transpose() {
        Ok(contexts) => contexts.unwrap_or_default(),
        Err(error) => {
            eprintln!("maestroctl: {error:#}");
            return ExitCode::from(1);
        }
    };
    let given = context::Given {
        server: cli.server.clone(),
        credentials: client::Credentials {
            token: cli.token.clone(),
            ca_file: cli.ca_file.clone(),
            tls_cert: cli.tls_cert.clone(),
            tls_key: cli.tls_key.clone(),
        },
    };
    let user_file = config::UserFile::path();
    let resolved = config::Settings::resolve(&cli, &matches, Some(&cwd), user_file.as_deref(), &contexts);
    let settings = match resolved {
        Ok(settings) => settings,
        // A broken file must not keep `config` from fixing it: flags and environment only.
        Err(error) if matches!(cli.command, Some(cli::Command::Config { .. })) => {
            eprintln!("maestroctl: warning: {error:#}");
            match config::Settings::resolve(&cli, &matches, None, None, &contexts) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("maestroctl: {error:#}");
                    return ExitCode::from(1);
                }
            }
        }
        Err(error) => {
            eprintln!("maestroctl: {error:#}");
            return ExitCode::from(1);
        }
    };
    color::init(settings.color.0);
    client::set_credentials(settings.credentials.clone());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("maestroctl: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let output = settings.output.0;
    let result = match cli.command {
        Some(cli::Command::Config { cmd }) => config::run(cmd.unwrap_or(cli::ConfigCmd::Show), &settings, output),
        Some(cli::Command::Context { cmd }) => context::run(cmd, &given, output),
        Some(cli::Command::Completions { shell }) => complete::script(shell).map(|()| 0),
        // The local daemon itself: started, stopped or looked at without connecting first.
        Some(cli::Command::Daemon(cmd)) => runtime.block_on(commands::daemon::run(cmd, output)),
        Some(command) => runtime.block_on(async {
            let project = settings.project_for(&command);
            let channel = connect(settings.server.0.as_deref()).await?;
            // `status` on a terminal, with no -o: the live view.
            if let cli::Command::Status { readonly } = &command
                && let Some(project) = &project
                && settings.output.1 == config::Source::Default
                && color::capable(&std::io::stdout())
                && std::io::IsTerminal::is_terminal(&std::io::stdin())
            {
                return tui::run(channel, project, *readonly).await;
            }
            commands::dispatch(command, project.as_deref(), channel, output).await
        }),
        None => repl::run(
            &runtime,
            repl::Session { server: settings.server.0.clone(), project: settings.project.0.clone(), output },
        ),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("{}: {error:#}", color::paint(color::stderr(), "31", "maestroctl"));
            ExitCode::from(1)
        }
    }
}

/// A connection to `server`, or to the local daemon (started if needed) when
/// none is given, sending the token (`--token`/`MAESTRO_TOKEN`, or the local
/// daemon's admin token).
async fn connect(server: Option<&str>) -> anyhow::Result<maestro_shared::Conn> {
    let (channel, local) = match server {
        Some(server) => (client::connect(server).await?, false),
        None => (local::connect_or_start().await?, true),
    };
    let token = client::token(local);
    Ok(maestro_shared::Bearer::new(&token).map_err(anyhow::Error::msg)?.connect(channel))
}
