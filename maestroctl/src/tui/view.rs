//! Drawing the status view: four panes (requirements tree, contracts, the
//! execution log, loops with progress), a header, a key line, help and
//! details on top. Pure: it draws an [`App`] on any ratatui backend.

use maestro_shared::v1;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Gauge, Paragraph, Row, Table, TableState, Wrap};

use super::app::{App, Input, Pane};

fn requirement_colour(status: v1::RequirementStatus) -> Color {
    match status {
        v1::RequirementStatus::Done => Color::Green,
        v1::RequirementStatus::Failed => Color::Red,
        v1::RequirementStatus::Blocked => Color::Magenta,
        v1::RequirementStatus::InProgress | v1::RequirementStatus::Claimed => Color::Yellow,
        _ => Color::Gray,
    }
}

fn short(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_lowercase().replace('_', "-")
}

fn loop_colour(state: v1::LoopState) -> Color {
    match state {
        v1::LoopState::Succeeded => Color::Green,
        v1::LoopState::Failed | v1::LoopState::Aborted | v1::LoopState::Cancelled => Color::Red,
        v1::LoopState::Escalated => Color::Magenta,
        v1::LoopState::Running => Color::Yellow,
        _ => Color::Gray,
    }
}

/// Depth of each requirement in its tree (roots 0).
fn depth(all: &[v1::Requirement], requirement: &v1::Requirement) -> usize {
    let mut depth = 0;
    let mut parent = requirement.parent_id.as_str();
    while !parent.is_empty() && depth < 32 {
        depth += 1;
        parent = all.iter().find(|r| r.id == parent).map_or("", |r| r.parent_id.as_str());
    }
    depth
}

fn block(app: &App, pane: Pane) -> Block<'static> {
    let focused = app.pane == pane;
    let style = if focused { Style::default().fg(Color::Cyan).add_modifier(Modifier::BOLD) } else { Style::default() };
    Block::default().borders(Borders::ALL).border_style(style).title(Span::styled(pane.title(), style))
}

fn table(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    pane: Pane,
    header: Vec<&str>,
    rows: Vec<Row>,
    widths: Vec<Constraint>,
) {
    let mut state = TableState::default();
    if app.pane == pane {
        state.select(Some(app.selection()));
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(block(app, pane))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(table, area, &mut state);
}

pub(crate) fn draw(frame: &mut Frame, app: &App) {
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(6), Constraint::Length(1)]).areas(frame.area());
    let snapshot = &app.snapshot;
    let done = snapshot.requirements.iter().filter(|r| r.status() == v1::RequirementStatus::Done).count();
    let filter = if app.filter.is_empty() { String::new() } else { format!("  filter: {}", app.filter) };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(format!(" {} ", snapshot.project), Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                " revision {}  requirements {done}/{} done  contracts {}  loops {}{filter}",
                snapshot.revision,
                snapshot.requirements.len(),
                snapshot.contracts.len(),
                snapshot.loops.len()
            )),
        ])),
        header,
    );
    let [top, bottom] = Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(body);
    let [reqs, contracts] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(top);
    let [log, loops] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(bottom);

    let all = &snapshot.requirements;
    let rows = app
        .requirements()
        .into_iter()
        .map(|r| {
            let status = r.status();
            Row::new(vec![
                Cell::from(format!("{}{} {}", "  ".repeat(depth(all, r)), r.id, r.title)),
                Cell::from(short(status.as_str_name(), "REQUIREMENT_STATUS_"))
                    .style(Style::default().fg(requirement_colour(status))),
                Cell::from(r.assignee.clone()),
                Cell::from(r.attempts.to_string()),
            ])
        })
        .collect();
    let widths = vec![Constraint::Min(20), Constraint::Length(12), Constraint::Length(12), Constraint::Length(3)];
    table(frame, reqs, app, Pane::Requirements, vec!["REQUIREMENT", "STATUS", "ASSIGNEE", "TRY"], rows, widths);

    let rows = app
        .contracts()
        .into_iter()
        .map(|c| {
            Row::new(vec![
                c.name.clone(),
                format!("v{}", c.version),
                short(c.status().as_str_name(), "CONTRACT_STATUS_"),
                c.owner.clone(),
            ])
        })
        .collect();
    let widths = vec![Constraint::Min(12), Constraint::Length(4), Constraint::Length(10), Constraint::Length(10)];
    table(frame, contracts, app, Pane::Contracts, vec!["CONTRACT", "VER", "STATUS", "OWNER"], rows, widths);

    // The log's newest entries last, as much as fits.
    let entries = app.log();
    let fit = usize::from(log.height.saturating_sub(3));
    let rows = entries[entries.len().saturating_sub(fit.max(1) * 4)..]
        .iter()
        .map(|e| {
            let outcome = Style::default().fg(match e.outcome.as_str() {
                "ok" | "end_turn" | "tool_use" => Color::Green,
                "denied" | "error" | "failed" | "budget-exhausted" => Color::Red,
                _ => Color::Gray,
            });
            Row::new(vec![
                Cell::from(e.seq.to_string()),
                Cell::from(e.agent.clone()),
                Cell::from(e.action.clone()),
                Cell::from(e.outcome.clone()).style(outcome),
                Cell::from(e.target.clone()),
            ])
        })
        .collect();
    let widths = vec![
        Constraint::Length(5),
        Constraint::Length(14),
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Min(10),
    ];
    table(frame, log, app, Pane::Log, vec!["SEQ", "AGENT", "ACTION", "OUTCOME", "TARGET"], rows, widths);

    draw_loops(frame, loops, app);

    let hint = match &app.input {
        Some(Input::Filter(text)) => format!(" filter: {text}▏ (enter: apply, esc: cancel)"),
        Some(Input::Guidance { loop_id, text }) => {
            format!(" guidance for {loop_id}: {text}▏ (enter: retry, esc: cancel)")
        }
        None if !app.message.is_empty() => format!(" {}", app.message),
        None => {
            let decide = if app.readonly { "" } else { "  a/r/x approve/retry/abort" };
            format!(" ? help  / filter  tab 1-4 panes  ↑↓ select  enter details{decide}  q quit")
        }
    };
    frame.render_widget(Paragraph::new(hint).style(Style::default().add_modifier(Modifier::DIM)), footer);

    if app.detail {
        draw_detail(frame, body, app);
    }
    if app.help {
        draw_help(frame, body, app.readonly);
    }
    if !app.colour {
        for cell in frame.buffer_mut().content.iter_mut() {
            cell.set_fg(Color::Reset).set_bg(Color::Reset);
        }
    }
}

fn draw_loops(frame: &mut Frame, area: Rect, app: &App) {
    let outer = block(app, Pane::Loops);
    let inner = outer.inner(area);
    frame.render_widget(outer, area);
    let loops = app.loops();
    let selected = if app.pane == Pane::Loops { Some(app.selection()) } else { None };
    let mut y = inner.y;
    for (i, l) in loops.iter().enumerate().rev() {
        if y + 3 > inner.y + inner.height {
            break;
        }
        let state = l.state();
        let mut style = Style::default().fg(loop_colour(state));
        if selected == Some(i) {
            style = style.add_modifier(Modifier::REVERSED);
        }
        let line = format!(
            "{} {} {} e{} retries {}/{} {} tok",
            l.loop_id,
            short(state.as_str_name(), "LOOP_STATE_"),
            l.phase,
            l.epoch,
            l.retries,
            l.retry_budget,
            crate::output::count(l.tokens)
        );
        frame.render_widget(Paragraph::new(line).style(style), Rect { y, height: 1, ..inner });
        let ratio = if l.requirements_total == 0 {
            0.0
        } else {
            f64::from(l.requirements_done) / f64::from(l.requirements_total)
        };
        let gauge = Gauge::default()
            .ratio(ratio.clamp(0.0, 1.0))
            .label(format!("{}/{} requirements", l.requirements_done, l.requirements_total))
            .gauge_style(Style::default().fg(loop_colour(state)));
        frame.render_widget(gauge, Rect { y: y + 1, height: 1, ..inner });
        frame.render_widget(budget_gauge(l, app.now_ms), Rect { y: y + 2, height: 1, ..inner });
        y += 3;
    }
    if loops.is_empty() {
        frame.render_widget(Paragraph::new("no loops yet: maestroctl run \"TASK\""), inner);
    }
}

/// What a loop has spent against its budget: tokens, and time while it
/// runs; yellow past 80 %, red when spent.
fn budget_gauge(l: &v1::Loop, now_ms: i64) -> Gauge<'static> {
    let tokens = crate::output::count(l.tokens);
    let running = matches!(l.state(), v1::LoopState::Running | v1::LoopState::Queued | v1::LoopState::Paused);
    let elapsed_ms = if running { (now_ms - l.create_time_ms).max(0) as u64 } else { 0 };
    let time = (running && l.time_budget_ms > 0).then(|| elapsed_ms as f64 / l.time_budget_ms as f64);
    let spent = (l.token_budget > 0).then(|| l.tokens as f64 / l.token_budget as f64);
    let ratio = spent.into_iter().chain(time).fold(0.0_f64, f64::max);
    let mut label = match l.token_budget {
        0 => format!("{tokens} tokens (no budget)"),
        budget => format!("{tokens} of {} tokens", crate::output::count(budget)),
    };
    if running && l.time_budget_ms > 0 {
        let span = |ms: u64| crate::output::duration(std::time::Duration::from_millis(ms));
        label.push_str(&format!(" · {} of {}", span(elapsed_ms), span(l.time_budget_ms)));
    }
    let colour = match ratio {
        r if r >= 1.0 => Color::Red,
        r if r >= 0.8 => Color::Yellow,
        _ => Color::Blue,
    };
    Gauge::default()
        .ratio(ratio.clamp(0.0, 1.0))
        .label(format!("budget {label}"))
        .gauge_style(Style::default().fg(colour))
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height }
}

fn draw_detail(frame: &mut Frame, area: Rect, app: &App) {
    let i = app.selection();
    let text: Vec<String> = match app.pane {
        Pane::Requirements => app.requirements().get(i).map_or_else(Vec::new, |r| {
            let mut lines = vec![
                format!("{} {}", r.id, r.title),
                format!("status {}  assignee {}  attempts {}", r.status().as_str_name(), r.assignee, r.attempts),
                format!("depends on {}", r.depends_on.join(", ")),
                String::new(),
                r.description.clone(),
            ];
            lines.extend(r.acceptance.iter().map(|a| format!("✓ {a}")));
            if !r.status_reason.is_empty() {
                lines.push(format!("why: {}", r.status_reason));
            }
            lines
        }),
        Pane::Contracts => app.contracts().get(i).map_or_else(Vec::new, |c| {
            vec![
                format!("{} v{} ({}), owner {}", c.name, c.version, c.status().as_str_name(), c.owner),
                format!("consumers {}", c.consumers.join(", ")),
                String::new(),
                c.spec.chars().take(4000).collect(),
            ]
        }),
        Pane::Log => app.log().get(i).map_or_else(Vec::new, |e| {
            vec![
                format!("#{} {} {} {} → {}", e.seq, e.agent, e.action, e.target, e.outcome),
                format!("loop {} epoch {}  tokens {}  {} ms", e.loop_id, e.epoch, e.tokens, e.duration_ms),
                String::new(),
                e.detail.clone(),
            ]
        }),
        Pane::Loops => app.loops().get(i).map_or_else(Vec::new, |l| {
            vec![
                format!("{} {} — {}", l.loop_id, l.state().as_str_name(), l.task),
                format!("phase {} epoch {} retries {}/{}", l.phase, l.epoch, l.retries, l.retry_budget),
                format!("workspace {}", l.workspace),
                String::new(),
                l.reason.clone(),
            ]
        }),
    };
    let area = centered(area, area.width.saturating_sub(8), area.height.saturating_sub(4));
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(text.join("\n"))
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title("details (enter or esc closes)")),
        area,
    );
}

fn draw_help(frame: &mut Frame, area: Rect, readonly: bool) {
    let mut lines = vec![
        "tab / shift-tab, 1-4   switch pane",
        "↑ ↓  (k j)             select a row",
        "enter                  details of the row",
        "/                      filter every pane (esc clears)",
    ];
    if !readonly {
        lines.extend([
            "a                      approve the escalated loop",
            "r                      retry it with guidance",
            "x                      abort it",
        ]);
    }
    lines.extend(["q, esc                 quit", "", "any key closes this help"]);
    let area = centered(area, 56, u16::try_from(lines.len()).unwrap_or(12) + 2);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines.join("\n")).block(Block::default().borders(Borders::ALL).title("keys")),
        area,
    );
}
