//! What a loop's models cost: the `model_call` entries of the execution log
//! summed per requirement, per agent and for the whole loop.

use std::collections::BTreeMap;

use maestro_shared::Conn;
use maestro_shared::v1::{self, execution_log_service_client::ExecutionLogServiceClient};
use serde::Serialize;

use crate::output::Table;

/// One line of the sums.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Spent {
    pub calls: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub tokens: u64,
    /// Time spent waiting for the model.
    pub model_ms: u64,
}

impl Spent {
    fn add(&mut self, e: &v1::LogEntry) {
        self.calls += 1;
        self.errors += u64::from(e.outcome == "error");
        self.tokens_in += e.tokens_in;
        self.tokens_out += e.tokens_out;
        self.tokens += e.tokens;
        self.model_ms += e.duration_ms;
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Usage {
    pub total: Spent,
    pub by_requirement: BTreeMap<String, Spent>,
    pub by_agent: BTreeMap<String, Spent>,
    /// Per model (the log entry's target).
    pub by_model: BTreeMap<String, Spent>,
}

impl Usage {
    pub(crate) fn of(entries: &[v1::LogEntry]) -> Usage {
        let mut usage = Usage::default();
        for e in entries.iter().filter(|e| e.action == "model_call") {
            usage.total.add(e);
            let requirement = if e.requirement.is_empty() { "-".to_string() } else { e.requirement.clone() };
            usage.by_requirement.entry(requirement).or_default().add(e);
            usage.by_agent.entry(e.agent.clone()).or_default().add(e);
            usage.by_model.entry(e.target.clone()).or_default().add(e);
        }
        usage
    }

    /// The loop's model calls, from the project's execution log.
    pub(crate) async fn fetch(channel: Conn, project: &str, loop_id: &str) -> anyhow::Result<Usage> {
        let client = ExecutionLogServiceClient::new(channel);
        let entries = super::log::list(&client, project, 0, "", loop_id, 0).await?;
        Ok(Usage::of(&entries))
    }

    pub(crate) fn print(&self) {
        if self.total.calls == 0 {
            println!("  no model calls");
            return;
        }
        let mut table = Table::new(&["", "CALLS", "ERRORS", "TOKENS IN", "TOKENS OUT", "TOKENS", "MODEL TIME"]);
        let mut row = |name: String, s: &Spent| {
            table.row(vec![
                name,
                s.calls.to_string(),
                s.errors.to_string(),
                s.tokens_in.to_string(),
                s.tokens_out.to_string(),
                s.tokens.to_string(),
                format!("{:.1}s", s.model_ms as f64 / 1000.0),
            ]);
        };
        for (requirement, spent) in &self.by_requirement {
            row(format!("requirement {requirement}"), spent);
        }
        for (agent, spent) in &self.by_agent {
            row(format!("agent {agent}"), spent);
        }
        if self.by_model.len() > 1 {
            for (model, spent) in &self.by_model {
                row(format!("model {model}"), spent);
            }
        }
        row("loop".to_string(), &self.total);
        table.print();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(agent: &str, requirement: &str, tokens_in: u64, tokens_out: u64, outcome: &str) -> v1::LogEntry {
        v1::LogEntry {
            action: "model_call".into(),
            agent: agent.into(),
            requirement: requirement.into(),
            target: "gpt-4o-mini".into(),
            tokens_in,
            tokens_out,
            tokens: tokens_in + tokens_out,
            duration_ms: 100,
            outcome: outcome.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sums_model_calls_per_requirement_agent_and_loop() {
        let entries = vec![
            call("planning-1", "R1", 100, 10, "tool_use"),
            call("backend-1", "R2", 200, 20, "tool_use"),
            call("backend-1", "R2", 0, 0, "error"),
            call("review-1", "R2", 300, 5, "end_turn"),
            call("review-2", "R3", 50, 5, "end_turn"),
            v1::LogEntry { action: "write_file".into(), agent: "backend-1".into(), tokens: 999, ..Default::default() },
        ];
        let usage = Usage::of(&entries);
        assert_eq!(usage.total.calls, 5);
        assert_eq!(usage.total.errors, 1);
        assert_eq!((usage.total.tokens_in, usage.total.tokens_out, usage.total.tokens), (650, 40, 690));
        assert_eq!(usage.by_requirement["R2"].tokens, 525);
        assert_eq!(usage.by_requirement["R2"].calls, 3);
        assert_eq!(usage.by_agent["backend-1"].tokens, 220);
        assert_eq!(usage.by_agent["review-2"].tokens, 55);
        assert_eq!(usage.by_model["gpt-4o-mini"].calls, 5);
    }
}
