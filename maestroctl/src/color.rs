//! Colour in what maestroctl prints: on terminals by default (`--color auto`),
//! never with `NO_COLOR` set (<https://no-color.org>) or `TERM=dumb`, and as
//! `--color always|never` (or `color:` in ~/.maestro/config.yaml) says.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum ColorChoice {
    /// On terminals, unless NO_COLOR is set or TERM is dumb.
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ColorChoice::Auto => "auto",
            ColorChoice::Always => "always",
            ColorChoice::Never => "never",
        }
    }
}

pub(crate) fn parse(value: &str) -> anyhow::Result<ColorChoice> {
    ColorChoice::from_str(value, false).map_err(|_| {
        anyhow::anyhow!("{value:?} is not a colour choice ({})", maestro_shared::settings::COLORS.join(", "))
    })
}

static STDOUT: AtomicBool = AtomicBool::new(false);
static STDERR: AtomicBool = AtomicBool::new(false);

/// `TERM=dumb`: a terminal that takes no escape codes at all (no colour, no
/// redrawn status line, no full-screen view).
pub(crate) fn dumb_terminal() -> bool {
    std::env::var_os("TERM").is_some_and(|term| term == "dumb")
}

/// Whether `stream` can take escape codes: a terminal that is not dumb.
pub(crate) fn capable(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && !dumb_terminal()
}

fn decide(choice: ColorChoice, stream: &impl IsTerminal) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => capable(stream) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}

/// Decides once, for the whole run.
pub(crate) fn init(choice: ColorChoice) {
    STDOUT.store(decide(choice, &std::io::stdout()), Ordering::Relaxed);
    STDERR.store(decide(choice, &std::io::stderr()), Ordering::Relaxed);
}

/// Whether what goes to stdout is coloured.
pub(crate) fn stdout() -> bool {
    STDOUT.load(Ordering::Relaxed)
}

/// Whether what goes to stderr is coloured.
pub(crate) fn stderr() -> bool {
    STDERR.load(Ordering::Relaxed)
}

/// `text` in the SGR style `code` (e.g. "1" bold, "31" red) when `on`.
pub(crate) fn paint(on: bool, code: &str, text: &str) -> String {
    if on && !text.is_empty() { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
}

/// The colour of a state or status word, if it has one.
pub(crate) fn of_state(word: &str) -> Option<&'static str> {
    Some(match word.to_ascii_lowercase().as_str() {
        "succeeded" | "done" | "accepted" | "allow" => "32",
        "failed" | "violated" | "aborted" | "blocked" => "31",
        "escalated" | "paused" | "deprecated" | "cancelled" | "proposed" => "33",
        "running" | "in_progress" | "in-progress" | "claimed" | "queued" => "36",
        _ => return None,
    })
}
