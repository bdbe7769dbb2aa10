//! One module per command group; each turns parsed arguments into RPCs and output.

mod contract;
pub(crate) mod daemon;
pub(crate) mod init;
pub(crate) mod log;
mod loops;
mod memory;
mod policy;
mod project;
mod req;
pub(crate) mod run;
mod snapshot;
mod system;
mod usage;
mod users;

use maestro_shared::Conn;

use crate::cli::{Command, Output};

/// What a command wants the process to exit with (0 unless it says otherwise).
pub(crate) type ExitStatus = u8;

/// The `--project` a command needs, or a message saying how to give it.
/// Asks before something that cannot be undone: `--yes` answers for the
/// user; off a terminal there is nobody to ask, so it is refused.
pub(crate) fn confirm(yes: bool, what: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{what} cannot be undone: pass --yes to confirm (there is no terminal to ask on)");
    }
    eprint!("{what}? This cannot be undone. [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        anyhow::bail!("not confirmed; nothing was changed")
    }
}

fn need(project: Option<&str>) -> anyhow::Result<String> {
    project.map(str::to_string).ok_or_else(|| {
        anyhow::anyhow!("this command needs a project: pass --project ID (-p ID) or set MAESTRO_PROJECT")
    })
}

pub(crate) async fn dispatch(
    command: Command,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    match command {
        Command::Project(cmd) => project::run(cmd, channel, output).await,
        Command::Req(cmd) => req::run(cmd, project, channel, output).await,
        Command::Contract(cmd) => contract::run(cmd, project, channel, output).await,
        Command::Log(cmd) => log::run(cmd, project, channel, output).await,
        Command::Logs { follow, agent, requirement, loop_id, lines } => {
            let filter = log::Filter { agent, requirement, loop_id };
            log::tail(channel, &need(project)?, filter, lines, follow, output).await
        }
        Command::Memory(cmd) => memory::run(cmd, project, channel, output).await,
        Command::Lock(cmd) => memory::run_lock(cmd, project, channel, output).await,
        Command::Snapshot(cmd) => snapshot::run(cmd, project, channel, output).await,
        Command::Watch { prefix, from_revision } => {
            system::watch(channel, output, &need(project)?, &prefix, from_revision).await
        }
        Command::Info => system::info(channel, output).await,
        Command::Status { .. } => system::status(channel, output, project).await,
        Command::Policy(cmd) => policy::run(cmd, project, channel, output).await,
        Command::Init { path } => init::run(channel, path, project).await,
        Command::Run(args) => run::run(channel, args, project, output).await,
        Command::Demo { follow, workspace, detach } => {
            let args = crate::cli::RunArgs { task: None, demo: true, workspace, detach, record: None, follow };
            run::run(channel, args, project, output).await
        }
        Command::Attach { loop_id, from_seq, follow } => run::attach(channel, &loop_id, from_seq, follow, output).await,
        Command::Loop(cmd) => loops::run(cmd, project, channel, output).await,
        Command::User(cmd) => users::run(cmd, project, channel, output).await,
        Command::Approve { loop_id } => loops::act(channel, loop_id, loops::Action::Approve, output).await,
        Command::Retry { loop_id, guidance } => {
            loops::act(channel, loop_id, loops::Action::Retry(guidance), output).await
        }
        Command::Abort { loop_id } => loops::act(channel, loop_id, loops::Action::Abort, output).await,
        Command::Cancel { loop_id } => loops::act(channel, loop_id, loops::Action::Cancel, output).await,
        Command::Pause { loop_id } => loops::act(channel, loop_id, loops::Action::Pause, output).await,
        Command::Resume { loop_id } => loops::act(channel, loop_id, loops::Action::Resume, output).await,
        // Settings need no daemon: the callers run them before connecting.
        Command::Config { .. } | Command::Context { .. } | Command::Daemon(_) | Command::Completions { .. } => {
            Err(anyhow::anyhow!("internal: config and context need no daemon and never reach the dispatch"))
        }
    }
}
