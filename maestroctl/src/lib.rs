//! maestroctl: the thin client. Errors print as one line and exit 1.
//! The binary's `main.rs` only calls [`main`].

pub mod cli;
mod client;
mod commands;
mod local;
mod output;
mod repl;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

/// Runs `maestroctl` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            return ExitCode::from(1);
        }
        Err(error) => {
            // Usage errors exit 1 like every other failure (2 and 3 are reserved for loop outcomes).
            let _ = error.print();
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("maestroctl: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Some(command) => runtime.block_on(async {
            let channel = connect(cli.server.as_deref()).await?;
            commands::dispatch(command, cli.project.as_deref(), channel, cli.output).await
        }),
        None => repl::run(&runtime, repl::Session { server: cli.server, project: cli.project, output: cli.output }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("maestroctl: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// A channel to `server`, or to the local daemon (started if needed) when none is given.
async fn connect(server: Option<&str>) -> anyhow::Result<tonic::transport::Channel> {
    match server {
        Some(server) => client::connect(server).await,
        None => local::connect_or_start().await,
    }
}
