//! maestroctl on a real pseudo-terminal (expectrl), against a live daemon: the
//! status view and its keys, the REPL, and colour as terminals, `NO_COLOR`,
//! `--color` and `TERM=dumb` want it.

use std::path::Path;
use std::time::Duration;

use expectrl::session::OsSession as Session;
use expectrl::{Eof, Expect, Regex};

use crate::lifecycle::{LocalDaemon, ctl, local_command};

/// A demo that ran to its end, so the project has requirements, contracts,
/// a log and a loop to show.
fn demo(home: &Path) {
    let workspace = home.join("demo");
    let out = ctl(home, &["run", "--demo", "--workspace", workspace.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

fn on_terminal(home: &Path, term: &str, env: &[(&str, &str)], args: &[&str]) -> Session {
    let mut command = local_command(home);
    command.env("TERM", term).envs(env.iter().copied()).args(args);
    let mut session = expectrl::Session::spawn(command).expect("a pseudo-terminal");
    session.get_process_mut().set_window_size(120, 40).unwrap();
    session.set_expect_timeout(Some(Duration::from_secs(20)));
    session
}

/// Everything the program writes until it exits.
fn all_output(mut session: Session) -> Vec<u8> {
    let found = session.expect(Eof).expect("the program ends");
    [found.before(), found.get(0).unwrap_or_default()].concat()
}

/// A terminal the program draws on: what it writes goes through a terminal
/// emulator (vt100), so tests read the screen as a person would, not the
/// byte stream (ratatui sends only the cells that changed).
struct Screen {
    session: Session,
    parser: vt100::Parser,
}

impl Screen {
    fn new(session: Session) -> Screen {
        Screen { session, parser: vt100::Parser::new(40, 120, 0) }
    }

    /// The screen once it shows `text` (20 s at most).
    fn until(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        self.session.set_expect_timeout(Some(Duration::from_millis(200)));
        loop {
            if let Ok(found) = self.session.expect(Regex("(?s).+")) {
                self.parser.process(&[found.before(), found.get(0).unwrap_or_default()].concat());
            }
            let contents = self.parser.screen().contents();
            if contents.contains(text) {
                return contents;
            }
            assert!(std::time::Instant::now() < deadline, "{text:?} never showed; the screen:\n{contents}");
        }
    }

    fn press(&mut self, keys: &str) {
        self.session.send(keys).unwrap();
    }
}

#[test]
fn the_status_view_shows_the_project_and_answers_its_keys() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _daemon = LocalDaemon(home);
    demo(home);
    let mut view = Screen::new(on_terminal(home, "xterm-256color", &[], &["-p", "demo", "status"]));
    let first = view.until("1 Requirements");
    for pane in [
        "2 Contracts",
        "3 Log",
        "4 Loops",
        "R1 Build a to-do service",
        "todos-api",
        "loop-1 succeeded",
        "4/4 requirements",
    ] {
        assert!(view.until(pane).contains(pane), "{pane} missing from:\n{first}");
    }
    view.press("?");
    view.until("approve the escalated loop");
    view.press("?");
    view.press("2");
    view.press("\r");
    view.until("todos-api v1 (CONTRACT_STATUS_ACCEPTED), owner backend");
    view.press("\r");
    view.press("4");
    view.press("\r");
    view.until("loop-1 LOOP_STATE_SUCCEEDED");
    view.press("\r");
    view.press("/");
    view.press("no-such-thing\r");
    let filtered = view.until("loops 1  filter: no-such-thing");
    assert!(!filtered.contains("R1 Build"), "the filter hides what does not match:\n{filtered}");
    view.press("q");
    let rest = all_output(view.session);
    assert!(!String::from_utf8_lossy(&rest).contains("panicked"), "{}", String::from_utf8_lossy(&rest));

    // A dumb terminal gets the summary printed once, with no escape codes at all.
    let dumb = all_output(on_terminal(home, "dumb", &[], &["-p", "demo", "status"]));
    let text = String::from_utf8_lossy(&dumb);
    assert!(text.contains("demo"), "{text}");
    assert!(!dumb.contains(&0x1b), "escape bytes on TERM=dumb: {text:?}");
}

#[test]
fn colour_on_terminals_and_never_where_it_is_not_wanted() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _daemon = LocalDaemon(home);
    demo(home);
    let list = ["-p", "demo", "loop", "list"];
    let coloured = all_output(on_terminal(home, "xterm", &[], &list));
    let text = String::from_utf8_lossy(&coloured);
    assert!(text.contains("\x1b[32mSUCCEEDED\x1b[0m"), "states are coloured on a terminal: {text:?}");
    assert!(text.contains(" ago") || text.contains("just now"), "times read as people say them: {text}");
    for (term, env, extra) in [
        ("dumb", vec![], vec![]),
        ("xterm", vec![("NO_COLOR", "1")], vec![]),
        ("xterm", vec![], vec!["--color", "never"]),
    ] {
        let args: Vec<&str> = list.iter().copied().chain(extra.iter().copied()).collect();
        let plain = all_output(on_terminal(home, term, &env, &args));
        assert!(String::from_utf8_lossy(&plain).contains("SUCCEEDED"));
        assert!(!plain.contains(&0x1b), "TERM={term} {env:?} {extra:?}: {:?}", String::from_utf8_lossy(&plain));
    }
    // Off a terminal, only when asked.
    let piped = ctl(home, &["-p", "demo", "loop", "list"]);
    assert!(!piped.stdout.contains('\x1b'));
    let forced = ctl(home, &["-p", "demo", "--color", "always", "loop", "list"]);
    assert!(forced.stdout.contains("\x1b[32mSUCCEEDED"), "{}", forced.stdout);
}

#[test]
fn the_repl_runs_commands_on_a_terminal() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _daemon = LocalDaemon(home);
    demo(home);
    let mut repl = on_terminal(home, "xterm", &[], &["-p", "demo"]);
    repl.expect("maestro:demo> ").unwrap();
    repl.send_line("req list").unwrap();
    repl.expect(Regex(r"R2 \[DONE\]")).unwrap();
    repl.expect("maestro:demo> ").unwrap();
    repl.send_line("req show R99").unwrap();
    repl.expect("NOT_FOUND").unwrap();
    repl.expect("maestro:demo> ").unwrap();
    repl.send_line("exit").unwrap();
    all_output(repl);
    assert!(home.join(".maestro/history").is_file(), "the history is kept for the next session");
}
