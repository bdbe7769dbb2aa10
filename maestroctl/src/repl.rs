//! `maestroctl` with no command: one command per line, as it would follow
//! `maestroctl` on the command line, against one connection. On a terminal it
//! is an interactive REPL (line editing, history in `~/.maestro/history`);
//! otherwise lines come from standard input as a script.
//!
//! A line of options only (`-p todo`, `-o json`) or `use PROJECT` changes the
//! session's defaults; `exit`, `quit` or end of input leave. Ctrl-C at the
//! prompt clears the line; during a command it stops that command (the
//! commands that follow a loop detach or cancel as they do on their own).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use clap::Parser;
use clap::error::ErrorKind;
use maestro_shared::Conn;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tokio::runtime::Runtime;

use crate::cli::{Cli, Command, ConfigCmd, Output};
use crate::commands::{self, ExitStatus};
use crate::config::{self, Settings};

/// The defaults every line starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) server: Option<String>,
    pub(crate) project: Option<String>,
    pub(crate) output: Output,
}

/// What one line asks for.
#[derive(Debug)]
pub(crate) enum Action {
    Nothing,
    Exit,
    /// Help or version text, for standard output.
    Print(String),
    /// The session's defaults changed.
    Settings,
    Run {
        command: Command,
        project: Option<String>,
        output: Output,
    },
}

/// Reads one line against `session`; `Err` is a message for the user.
pub(crate) fn parse_line(session: &mut Session, line: &str) -> Result<Action, String> {
    let words = shlex::split(line).ok_or("unbalanced quotes")?;
    match words.first().map(String::as_str) {
        None => return Ok(Action::Nothing),
        Some("exit" | "quit") if words.len() == 1 => return Ok(Action::Exit),
        Some("use") => {
            return match words.as_slice() {
                [_, project] => {
                    session.project = Some(project.clone());
                    Ok(Action::Settings)
                }
                _ => Err("usage: use PROJECT".to_string()),
            };
        }
        Some(_) => {}
    }
    // The session's defaults come first so that the line's own options override them.
    let mut argv = vec!["maestroctl".to_string(), "--output".to_string(), session.output.name().to_string()];
    if let Some(project) = &session.project {
        argv.extend(["--project".to_string(), project.clone()]);
    }
    if let Some(server) = &session.server {
        argv.extend(["--server".to_string(), server.clone()]);
    }
    argv.extend(words);
    let cli = match Cli::try_parse_from(crate::cli::normalize(argv)) {
        Ok(cli) => cli,
        Err(error) if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return Ok(Action::Print(error.render().to_string()));
        }
        Err(error) => return Err(one_line(&error.render().to_string())),
    };
    if cli.server != session.server {
        return Err(format!(
            "this session talks to {}; start `maestroctl --server ADDRESS` to use another daemon",
            session.server.as_deref().unwrap_or("the local maestrod")
        ));
    }
    match cli.command {
        None => {
            session.project = cli.project;
            session.output = cli.output;
            Ok(Action::Settings)
        }
        Some(command) => Ok(Action::Run { command, project: cli.project, output: cli.output }),
    }
}

/// A clap usage error as one line: the error and its tips, without the usage block.
fn one_line(rendered: &str) -> String {
    let mut parts = rendered.lines().map(str::trim).filter(|l| l.starts_with("error:") || l.starts_with("tip:"));
    let mut message = parts.next().unwrap_or("invalid command").trim_start_matches("error: ").to_string();
    for tip in parts {
        message.push_str("; ");
        message.push_str(tip);
    }
    message.push_str(" (`help` lists the commands)");
    message
}

/// Commands that follow a loop or a stream handle Ctrl-C themselves.
fn handles_interrupt(command: &Command) -> bool {
    matches!(command, Command::Run(_) | Command::Demo { .. } | Command::Attach { .. } | Command::Watch { .. })
}

/// Where the lines come from.
enum Input {
    Terminal { editor: Box<DefaultEditor>, history: Option<PathBuf> },
    Script(std::io::StdinLock<'static>),
}

impl Input {
    fn open() -> anyhow::Result<Input> {
        if !std::io::stdin().is_terminal() {
            return Ok(Input::Script(std::io::stdin().lock()));
        }
        let mut editor = Box::new(DefaultEditor::new()?);
        let history = crate::home::maestro_file("history");
        if let Some(path) = &history {
            // A missing history file is the first session, not an error.
            let _ = editor.load_history(path);
        }
        Ok(Input::Terminal { editor, history })
    }

    /// The next line; `None` at the end of input.
    fn next(&mut self, session: &Session) -> anyhow::Result<Option<String>> {
        match self {
            Input::Script(stdin) => {
                let mut line = String::new();
                Ok((stdin.read_line(&mut line)? > 0).then_some(line))
            }
            Input::Terminal { editor, .. } => {
                let prompt =
                    format!("maestro{}> ", session.project.as_deref().map(|p| format!(":{p}")).unwrap_or_default());
                loop {
                    match editor.readline(&prompt) {
                        Ok(line) => {
                            if !line.trim().is_empty() {
                                let _ = editor.add_history_entry(line.as_str());
                            }
                            return Ok(Some(line));
                        }
                        Err(ReadlineError::Interrupted) => continue,
                        Err(ReadlineError::Eof) => return Ok(None),
                        Err(error) => return Err(error.into()),
                    }
                }
            }
        }
    }

    fn save_history(&mut self) {
        if let Input::Terminal { editor, history: Some(path) } = self {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(error) = editor.save_history(path) {
                eprintln!("maestroctl: history not saved to {}: {error}", path.display());
            }
        }
    }
}

/// Runs one command; Ctrl-C stops it unless it handles Ctrl-C itself.
async fn execute(
    command: Command,
    project: Option<String>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let interruptible = !handles_interrupt(&command);
    let work = commands::dispatch(command, project.as_deref(), channel, output);
    if !interruptible {
        return work.await;
    }
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    }
}

/// Runs the session until `exit` or the end of input. A script exits with the
/// code of its last failed line (0 when every line succeeded).
pub(crate) fn run(runtime: &Runtime, mut session: Session) -> anyhow::Result<ExitStatus> {
    let mut input = Input::open()?;
    let interactive = matches!(input, Input::Terminal { .. });
    // Connected at the first command that needs the daemon; a failed connection is tried again.
    let mut channel: Option<Conn> = None;
    if interactive {
        eprintln!(
            "maestroctl {} on {}: type a command as after `maestroctl` (help lists them), `use PROJECT`, or exit",
            env!("CARGO_PKG_VERSION"),
            session.server.as_deref().unwrap_or("the local maestrod")
        );
    }
    let mut last_failure = 0;
    let mut number = 0;
    while let Some(line) = input.next(&session)? {
        number += 1;
        let where_ = if interactive { String::new() } else { format!("line {number}: ") };
        let code = match parse_line(&mut session, &line) {
            Ok(Action::Nothing) => 0,
            Ok(Action::Exit) => break,
            Ok(Action::Print(text)) => {
                print!("{text}");
                0
            }
            Ok(Action::Settings) => {
                if interactive {
                    eprintln!(
                        "project: {}, output: {}",
                        session.project.as_deref().unwrap_or("(none)"),
                        session.output.name()
                    );
                }
                0
            }
            Ok(Action::Run { command, project, output }) => {
                let result = match command {
                    // Changes to contexts apply from the next session on.
                    Command::Context { cmd } => crate::context::run(cmd, &crate::context::Given::default(), output),
                    Command::Daemon(cmd) => runtime.block_on(crate::commands::daemon::run(cmd, output)),
                    Command::Completions { shell } => crate::complete::script(shell).map(|()| 0),
                    Command::Config { cmd } => {
                        let settings = Settings::session(session.server.clone(), project, output);
                        config::run(cmd.unwrap_or(ConfigCmd::Show), &settings, output)
                    }
                    command => match &channel {
                        Some(ready) => Ok(ready.clone()),
                        None => runtime.block_on(crate::connect(session.server.as_deref())),
                    }
                    .and_then(|ready| {
                        channel = Some(ready.clone());
                        runtime.block_on(execute(command, project, ready, output))
                    }),
                };
                match result {
                    Ok(code) => code,
                    Err(error) => {
                        eprintln!("maestroctl: {where_}{error:#}");
                        1
                    }
                }
            }
            Err(message) => {
                eprintln!("maestroctl: {where_}{message}");
                1
            }
        };
        if code != 0 {
            last_failure = code;
        }
    }
    input.save_history();
    Ok(if interactive { 0 } else { last_failure })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session { server: Some("127.0.0.1:7700".into()), project: None, output: Output::Table }
    }

    #[test]
    fn lines_run_commands_with_the_sessions_defaults_and_their_own_options() {
        let mut s = session();
        assert!(matches!(parse_line(&mut s, "   "), Ok(Action::Nothing)));
        assert!(matches!(parse_line(&mut s, "exit"), Ok(Action::Exit)));
        assert!(matches!(parse_line(&mut s, "use todo"), Ok(Action::Settings)));
        assert_eq!(s.project.as_deref(), Some("todo"));
        match parse_line(&mut s, "req list") {
            Ok(Action::Run { command: Command::Req(_), project, output }) => {
                assert_eq!(project.as_deref(), Some("todo"));
                assert_eq!(output, Output::Table);
            }
            other => panic!("{other:?}"),
        }
        // The line's own options win, for this line only.
        match parse_line(&mut s, "-o json -p other req list") {
            Ok(Action::Run { project, output, .. }) => {
                assert_eq!(project.as_deref(), Some("other"));
                assert_eq!(output, Output::Json);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.project.as_deref(), Some("todo"));
        // Options alone change the session.
        assert!(matches!(parse_line(&mut s, "-o json"), Ok(Action::Settings)));
        assert_eq!((s.project.as_deref(), s.output), (Some("todo"), Output::Json));
        // Quotes group words as in a shell.
        match parse_line(&mut s, r#"retry loop-1 --guidance "add must add, not subtract""#) {
            Ok(Action::Run { command: Command::Retry { guidance, .. }, .. }) => {
                assert_eq!(guidance, "add must add, not subtract");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_lines_are_errors_for_people_and_help_is_text() {
        let mut s = session();
        assert_eq!(parse_line(&mut s, r#"req create "unclosed"#).unwrap_err(), "unbalanced quotes");
        assert!(parse_line(&mut s, "frobnicate").unwrap_err().contains("unrecognized subcommand 'frobnicate'"));
        assert!(parse_line(&mut s, "use").unwrap_err().contains("usage: use PROJECT"));
        let other = parse_line(&mut s, "--server 10.0.0.1:7700 info").unwrap_err();
        assert!(other.contains("this session talks to 127.0.0.1:7700"), "{other}");
        assert!(matches!(parse_line(&mut s, "--server 127.0.0.1:7700 info"), Ok(Action::Run { .. })));
        match parse_line(&mut s, "help req") {
            Ok(Action::Print(text)) => assert!(text.contains("requirements"), "{text}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s, session(), "errors leave the session as it was");
    }
}
