//! Printing: aligned tables for people (states coloured on terminals, times
//! as "3m ago"), JSON or YAML for scripts (the proto3 JSON mapping).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::cli::Output;
use crate::color;

/// A table printed with columns padded to their widest cell.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&str]) -> Self {
        Self { rows: vec![headers.iter().map(|h| h.to_string()).collect()] }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The lines, padded; with `colored`, the header bold and state words in
    /// their colours (padding is measured on the plain text).
    pub(crate) fn lines(&self, colored: bool) -> Vec<String> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut lines = Vec::with_capacity(self.rows.len());
        for (r, row) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let last = c + 1 == row.len();
                let pad = if last { 0 } else { widths[c] - cell.chars().count() + 2 };
                let style = if r == 0 { Some("1") } else { color::of_state(cell) };
                match style {
                    Some(code) if colored => line.push_str(&color::paint(true, code, cell)),
                    _ => line.push_str(cell),
                }
                line.push_str(&" ".repeat(pad));
            }
            lines.push(line.trim_end().to_string());
        }
        lines
    }

    pub(crate) fn print(&self) {
        for line in self.lines(color::stdout()) {
            println!("{line}");
        }
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `value` as a YAML document.
pub(crate) fn yaml<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    // Through JSON, so YAML carries the same proto3 JSON mapping (enum names, string int64s).
    let value = serde_json::to_value(value)?;
    print!("{}", yaml_serde::to_string(&value)?);
    Ok(())
}

/// Prints one item of a stream: a JSON object per line, or a YAML document
/// per item (each starting with `---`).
pub(crate) fn item<T: Serialize + ?Sized>(output: Output, value: &T) -> anyhow::Result<()> {
    match output {
        Output::Yaml => {
            println!("---");
            yaml(value)
        }
        _ => {
            println!("{}", serde_json::to_string(value)?);
            Ok(())
        }
    }
}

/// Prints `value` for scripts (`-o json`, `-o yaml`), or what `table` prints.
pub(crate) fn emit<T: Serialize + ?Sized>(output: Output, value: &T, table: impl FnOnce()) -> anyhow::Result<()> {
    match output {
        Output::Json => json(value),
        Output::Yaml => yaml(value),
        Output::Table => {
            table();
            Ok(())
        }
    }
}

/// Unix milliseconds as people read them in a table: "3m ago", "in 5m", and
/// the date for what is more than a month away; empty for 0.
pub(crate) fn time(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    let then = UNIX_EPOCH + Duration::from_millis(ms as u64);
    relative(then, SystemTime::now())
}

fn relative(then: SystemTime, now: SystemTime) -> String {
    let (span, future) = match now.duration_since(then) {
        Ok(past) => (past, false),
        Err(ahead) => (ahead.duration(), true),
    };
    if span > Duration::from_secs(30 * 86_400) {
        return humantime::format_rfc3339_seconds(then).to_string()[..10].to_string();
    }
    if span < Duration::from_secs(5) {
        return "just now".into();
    }
    let short = duration(span);
    if future { format!("in {short}") } else { format!("{short} ago") }
}

/// A duration in its largest unit or two: "45s", "3m", "2h5m", "3d".
pub(crate) fn duration(span: Duration) -> String {
    let s = span.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 if s % 3600 >= 60 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A count as people read it: 950, 33.2k, 2.0M.
pub(crate) fn count(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..1_000_000 => format!("{:.1}k", n as f64 / 1000.0),
        _ => format!("{:.1}M", n as f64 / 1_000_000.0),
    }
}

/// Unix milliseconds as RFC 3339 (UTC, seconds), for lines that are read
/// later or grepped (the log); empty for 0.
pub(crate) fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

pub(crate) fn etag(meta: Option<&maestro_shared::v1::ResourceMeta>) -> String {
    meta.map(|m| m.etag.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_say_them() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ago = |s: u64| relative(now - Duration::from_secs(s), now);
        assert_eq!(ago(2), "just now");
        assert_eq!(ago(42), "42s ago");
        assert_eq!(ago(3 * 60 + 10), "3m ago");
        assert_eq!(ago(2 * 3600 + 5 * 60), "2h5m ago");
        assert_eq!(ago(3 * 86_400), "3d ago");
        assert_eq!(ago(90 * 86_400), "2026-10-17");
        assert_eq!(relative(now + Duration::from_secs(300), now), "in 5m");
    }

    #[test]
    fn tables_pad_on_the_plain_text_and_colour_only_when_asked() {
        let mut table = Table::new(&["ID", "STATE", "TASK"]);
        table.row(vec!["loop-1".into(), "succeeded".into(), "Build".into()]);
        let plain = table.lines(false);
        assert_eq!(plain, ["ID      STATE      TASK", "loop-1  succeeded  Build"]);
        assert!(plain.iter().all(|line| !line.contains('\x1b')));
        let colored = table.lines(true);
        assert_eq!(colored[1], "loop-1  \x1b[32msucceeded\x1b[0m  Build");
        assert!(colored[0].starts_with("\x1b[1mID\x1b[0m      "));
    }
}
