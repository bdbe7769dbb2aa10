//! Printing: aligned tables for people, JSON for scripts (proto3 JSON mapping).

use serde::Serialize;

use crate::cli::Output;

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

    pub(crate) fn print(&self) {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints one JSON value on one line (streams).
pub(crate) fn json_line<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Prints either the JSON of `value` or what `table` prints.
pub(crate) fn emit<T: Serialize + ?Sized>(output: Output, value: &T, table: impl FnOnce()) -> anyhow::Result<()> {
    match output {
        Output::Json => json(value),
        Output::Table => {
            table();
            Ok(())
        }
    }
}

/// Unix milliseconds as RFC 3339 (UTC, seconds); empty for 0.
pub(crate) fn time(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

pub(crate) fn etag(meta: Option<&maestro_shared::v1::ResourceMeta>) -> String {
    meta.map(|m| m.etag.clone()).unwrap_or_default()
}
