//! The status view's state and what keys do to it: pure, so it is tested
//! without a terminal or a daemon.

use maestro_shared::v1;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What the view shows: one project's state, as last read.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub(crate) project: String,
    pub(crate) revision: u64,
    pub(crate) requirements: Vec<v1::Requirement>,
    pub(crate) contracts: Vec<v1::Contract>,
    pub(crate) log: Vec<v1::LogEntry>,
    pub(crate) loops: Vec<v1::Loop>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pane {
    Requirements,
    Contracts,
    Log,
    Loops,
}

impl Pane {
    pub(crate) const ALL: [Pane; 4] = [Pane::Requirements, Pane::Contracts, Pane::Log, Pane::Loops];

    pub(crate) fn title(self) -> &'static str {
        match self {
            Pane::Requirements => "1 Requirements",
            Pane::Contracts => "2 Contracts",
            Pane::Log => "3 Log",
            Pane::Loops => "4 Loops",
        }
    }

    fn index(self) -> usize {
        Pane::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// A decision on an escalated loop, asked for with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Approve(String),
    Retry(String, String),
    Abort(String),
}

/// What the driver should do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    None,
    Quit,
    Decide(Decision),
}

/// A line of text being typed: the filter, or a retry's guidance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    Filter(String),
    Guidance { loop_id: String, text: String },
}

pub(crate) struct App {
    pub(crate) snapshot: Snapshot,
    pub(crate) pane: Pane,
    /// Rows shown only when they contain this (case-insensitive).
    pub(crate) filter: String,
    pub(crate) input: Option<Input>,
    pub(crate) selected: [usize; 4],
    pub(crate) detail: bool,
    pub(crate) help: bool,
    pub(crate) readonly: bool,
    /// The last thing worth telling (an error, a decision's result).
    pub(crate) message: String,
    /// The clock the view measures running loops' time by (Unix ms).
    pub(crate) now_ms: i64,
    /// Colours on (off with `NO_COLOR` or `--color never`: bold and reverse stay).
    pub(crate) colour: bool,
}

impl App {
    pub(crate) fn new(snapshot: Snapshot, readonly: bool) -> App {
        App {
            snapshot,
            pane: Pane::Requirements,
            filter: String::new(),
            input: None,
            selected: [0; 4],
            detail: false,
            help: false,
            readonly,
            message: String::new(),
            now_ms: 0,
            colour: true,
        }
    }

    fn matches(&self, text: &str) -> bool {
        self.filter.is_empty() || text.to_lowercase().contains(&self.filter.to_lowercase())
    }

    /// The rows of each pane after the filter, as text the filter looks at.
    pub(crate) fn requirements(&self) -> Vec<&v1::Requirement> {
        self.snapshot
            .requirements
            .iter()
            .filter(|r| self.matches(&format!("{} {} {} {}", r.id, r.title, r.assignee, r.role_hint)))
            .collect()
    }

    pub(crate) fn contracts(&self) -> Vec<&v1::Contract> {
        self.snapshot.contracts.iter().filter(|c| self.matches(&format!("{} {}", c.name, c.owner))).collect()
    }

    pub(crate) fn log(&self) -> Vec<&v1::LogEntry> {
        self.snapshot
            .log
            .iter()
            .filter(|e| self.matches(&format!("{} {} {} {} {}", e.agent, e.action, e.target, e.outcome, e.detail)))
            .collect()
    }

    pub(crate) fn loops(&self) -> Vec<&v1::Loop> {
        self.snapshot.loops.iter().filter(|l| self.matches(&format!("{} {}", l.loop_id, l.task))).collect()
    }

    fn rows(&self, pane: Pane) -> usize {
        match pane {
            Pane::Requirements => self.requirements().len(),
            Pane::Contracts => self.contracts().len(),
            Pane::Log => self.log().len(),
            Pane::Loops => self.loops().len(),
        }
    }

    /// The selected row of the current pane (kept inside the rows there are).
    pub(crate) fn selection(&self) -> usize {
        let rows = self.rows(self.pane);
        self.selected[self.pane.index()].min(rows.saturating_sub(1))
    }

    /// The selected loop, or else the one that needs a decision.
    pub(crate) fn target_loop(&self) -> Option<&v1::Loop> {
        let loops = self.loops();
        if self.pane == Pane::Loops {
            return loops.get(self.selection()).copied();
        }
        loops.into_iter().find(|l| l.state() == v1::LoopState::Escalated)
    }

    /// Takes a new snapshot; selections stay where they were when they still can.
    pub(crate) fn update(&mut self, snapshot: Snapshot) {
        self.snapshot = snapshot;
    }

    pub(crate) fn key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(input) = &mut self.input {
            let text = match input {
                Input::Filter(text) | Input::Guidance { text, .. } => text,
            };
            match key.code {
                KeyCode::Esc => self.input = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                KeyCode::Enter => match self.input.take() {
                    Some(Input::Filter(text)) => {
                        self.filter = text;
                        self.selected = [0; 4];
                    }
                    Some(Input::Guidance { loop_id, text }) if !text.trim().is_empty() => {
                        return Action::Decide(Decision::Retry(loop_id, text));
                    }
                    _ => self.message = "a retry needs guidance; nothing sent".into(),
                },
                _ => {}
            }
            return Action::None;
        }
        if self.help {
            self.help = false;
            return Action::None;
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc if self.detail => self.detail = false,
            KeyCode::Esc if !self.filter.is_empty() => self.filter.clear(),
            KeyCode::Esc => return Action::Quit,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('/') => self.input = Some(Input::Filter(self.filter.clone())),
            KeyCode::Tab => self.pane = Pane::ALL[(self.pane.index() + 1) % 4],
            KeyCode::BackTab => self.pane = Pane::ALL[(self.pane.index() + 3) % 4],
            KeyCode::Char(c @ '1'..='4') => self.pane = Pane::ALL[(c as usize) - ('1' as usize)],
            KeyCode::Down | KeyCode::Char('j') => {
                let rows = self.rows(self.pane);
                let i = self.pane.index();
                self.selected[i] = (self.selection() + 1).min(rows.saturating_sub(1));
            }
            KeyCode::Up | KeyCode::Char('k') => {
                let i = self.pane.index();
                self.selected[i] = self.selection().saturating_sub(1);
            }
            KeyCode::Enter => self.detail = !self.detail,
            KeyCode::Char(c @ ('a' | 'r' | 'x')) => return self.decide(c),
            _ => {}
        }
        Action::None
    }

    fn decide(&mut self, key: char) -> Action {
        if self.readonly {
            self.message = "read-only: decisions are off (started with --readonly)".into();
            return Action::None;
        }
        let Some(target) = self.target_loop() else {
            self.message = "no loop to decide on: select one in the Loops pane".into();
            return Action::None;
        };
        if target.state() != v1::LoopState::Escalated {
            self.message = format!("{} is not escalated: nothing to approve, retry or abort", target.loop_id);
            return Action::None;
        }
        let id = target.loop_id.clone();
        match key {
            'a' => Action::Decide(Decision::Approve(id)),
            'x' => Action::Decide(Decision::Abort(id)),
            _ => {
                self.input = Some(Input::Guidance { loop_id: id, text: String::new() });
                Action::None
            }
        }
    }
}
