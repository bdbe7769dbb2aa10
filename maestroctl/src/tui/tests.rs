//! The status view drawn on ratatui's `TestBackend` for a known state, and
//! after key presses.

use maestro_shared::v1;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::{Action, App, Decision, Pane, Snapshot};
use super::view;

fn requirement(id: &str, parent: &str, title: &str, status: v1::RequirementStatus, assignee: &str) -> v1::Requirement {
    v1::Requirement {
        id: id.into(),
        parent_id: parent.into(),
        title: title.into(),
        status: status as i32,
        assignee: assignee.into(),
        ..Default::default()
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        project: "shop".into(),
        revision: 42,
        requirements: vec![
            requirement("R1", "", "Build a shop", v1::RequirementStatus::InProgress, ""),
            requirement("R2", "R1", "Orders API", v1::RequirementStatus::Done, "backend-1"),
            requirement("R3", "R1", "Checkout page", v1::RequirementStatus::Failed, "frontend-1"),
        ],
        contracts: vec![v1::Contract {
            name: "orders-api".into(),
            version: 2,
            status: v1::ContractStatus::Accepted as i32,
            owner: "backend".into(),
            ..Default::default()
        }],
        log: vec![v1::LogEntry {
            seq: 7,
            agent: "backend-1".into(),
            action: "write_file".into(),
            target: "src/orders.py".into(),
            outcome: "ok".into(),
            ..Default::default()
        }],
        loops: vec![v1::Loop {
            loop_id: "loop-1".into(),
            state: v1::LoopState::Escalated as i32,
            phase: "VALID".into(),
            epoch: 3,
            retries: 2,
            retry_budget: 2,
            tokens: 1_700_000,
            token_budget: 2_000_000,
            time_budget_ms: 4 * 3_600_000,
            requirements_done: 1,
            requirements_total: 2,
            task: "Build a shop".into(),
            ..Default::default()
        }],
    }
}

fn screen(app: &App) -> String {
    let mut terminal = Terminal::new(TestBackend::new(120, 32)).unwrap();
    terminal.draw(|frame| view::draw(frame, app)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let width = usize::from(buffer.area.width);
    buffer.content().chunks(width).map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n").collect()
}

fn key(app: &mut App, code: KeyCode) -> Action {
    app.key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

#[test]
fn every_pane_shows_the_projects_state() {
    let app = App::new(snapshot(), false);
    let text = screen(&app);
    for expected in [
        "shop",
        "revision 42",
        "1/3 done",
        "1 Requirements",
        "R1 Build a shop",
        "  R2 Orders API",
        "done",
        "failed",
        "backend-1",
        "2 Contracts",
        "orders-api",
        "v2",
        "accepted",
        "3 Log",
        "write_file",
        "src/orders.py",
        "4 Loops",
        "loop-1 escalated VALID e3 retries 2/2 1.7M tok",
        "1/2 requirements",
        "budget 1.7M of 2.0M tokens",
        "a/r/x approve/retry/abort",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
}

/// Styles of the cells of the row that contains `text`.
fn styles_of(app: &App, text: &str) -> Vec<ratatui::style::Style> {
    let mut terminal = Terminal::new(TestBackend::new(120, 32)).unwrap();
    terminal.draw(|frame| view::draw(frame, app)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let width = usize::from(buffer.area.width);
    let rows: Vec<&[ratatui::buffer::Cell]> = buffer.content().chunks(width).collect();
    let row = rows
        .iter()
        .find(|row| row.iter().map(|c| c.symbol()).collect::<String>().contains(text))
        .expect("the row is drawn");
    row.iter().map(|c| c.style()).collect()
}

#[test]
fn a_running_loop_shows_its_spending_against_the_budget_in_colour_unless_colour_is_off() {
    let mut snapshot = snapshot();
    let l = &mut snapshot.loops[0];
    l.state = v1::LoopState::Running as i32;
    l.create_time_ms = 1_000_000;
    let mut app = App::new(snapshot, false);
    app.now_ms = 1_000_000 + 3 * 3_600_000 + 30 * 60_000;
    let text = screen(&app);
    assert!(text.contains("budget 1.7M of 2.0M tokens · 3h30m of 4h"), "{text}");
    let yellow = styles_of(&app, "budget 1.7M").iter().any(|s| s.fg == Some(ratatui::style::Color::Yellow));
    assert!(yellow, "past 80 % of the budget is yellow");
    app.colour = false;
    let styles = styles_of(&app, "budget 1.7M");
    assert!(styles.iter().all(|s| matches!(s.fg, None | Some(ratatui::style::Color::Reset))), "{styles:?}");
}

#[test]
fn keys_move_filter_open_details_and_help() {
    let mut app = App::new(snapshot(), false);
    assert_eq!(key(&mut app, KeyCode::Char('2')), Action::None);
    assert_eq!(app.pane, Pane::Contracts);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.pane, Pane::Log);
    key(&mut app, KeyCode::Char('1'));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Enter);
    assert!(screen(&app).contains("details"), "enter opens the selected row");
    assert!(screen(&app).contains("R2 Orders API"));
    key(&mut app, KeyCode::Esc);
    assert!(!app.detail);

    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "checkout");
    assert!(screen(&app).contains("filter: checkout"));
    key(&mut app, KeyCode::Enter);
    let text = screen(&app);
    assert!(text.contains("R3 Checkout page") && !text.contains("R2 Orders API"), "{text}");
    key(&mut app, KeyCode::Esc);
    assert!(app.filter.is_empty(), "esc clears the filter");

    key(&mut app, KeyCode::Char('?'));
    assert!(screen(&app).contains("approve the escalated loop"));
    key(&mut app, KeyCode::Char('z'));
    assert!(!app.help, "any key closes the help");
    assert_eq!(key(&mut app, KeyCode::Char('q')), Action::Quit);
}

#[test]
fn an_escalated_loop_is_approved_retried_or_aborted_unless_read_only() {
    let mut app = App::new(snapshot(), false);
    assert_eq!(key(&mut app, KeyCode::Char('a')), Action::Decide(Decision::Approve("loop-1".into())));
    assert_eq!(key(&mut app, KeyCode::Char('x')), Action::Decide(Decision::Abort("loop-1".into())));
    assert_eq!(key(&mut app, KeyCode::Char('r')), Action::None, "a retry asks for guidance first");
    typed(&mut app, "use sqlite");
    assert!(screen(&app).contains("guidance for loop-1: use sqlite"));
    assert_eq!(key(&mut app, KeyCode::Enter), Action::Decide(Decision::Retry("loop-1".into(), "use sqlite".into())));

    let mut running = snapshot();
    running.loops[0].state = v1::LoopState::Running as i32;
    let mut app = App::new(running, false);
    key(&mut app, KeyCode::Char('4'));
    assert_eq!(key(&mut app, KeyCode::Char('a')), Action::None);
    assert!(app.message.contains("not escalated"), "{}", app.message);

    let mut readonly = App::new(snapshot(), true);
    assert_eq!(key(&mut readonly, KeyCode::Char('a')), Action::None);
    assert!(readonly.message.contains("read-only"));
    assert!(!screen(&readonly).contains("approve/retry/abort"), "no decision keys shown");
}
