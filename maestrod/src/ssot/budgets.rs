//! Budget usage as the harness records it: one record per loop, epoch and
//! agent, rewritten as the agent acts, so anyone can see what was spent.

use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::store::{Op, Txn};
use super::{Page, Result, Ssot, SsotError, keys, validate};

const PREFIX: &str = "budgets/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRecord {
    pub loop_id: String,
    pub epoch: u64,
    pub agent: String,
    pub tokens: u64,
    pub steps: u64,
    pub elapsed_ms: u64,
    /// Limits in force (0: unlimited).
    pub token_limit: u64,
    pub step_limit: u64,
    pub wall_limit_ms: u64,
    /// Set when the agent ran out, with the reason.
    pub exhausted: String,
    pub update_time_ms: i64,
}

fn loop_prefix(project: &str, loop_id: &str) -> String {
    keys::in_project(project, &format!("{PREFIX}{loop_id}/"))
}

impl Ssot {
    /// Writes the latest usage of one agent in one epoch.
    pub async fn record_budget(&self, project: &str, mut record: BudgetRecord) -> Result<()> {
        validate::text("loop_id", &record.loop_id, 128, true)?;
        validate::text("agent", &record.agent, 128, true)?;
        if record.loop_id.contains('/') || record.agent.contains('/') {
            return Err(SsotError::invalid("loop_id", "loop ids and agent names contain no '/'"));
        }
        let guard = self.project_guard(project).await?;
        record.update_time_ms = now_ms();
        let key = format!("{}{:010}/{}", loop_prefix(project, &record.loop_id), record.epoch, record.agent);
        let txn = Txn::new().when(guard).then(Op::put(key, super::encode_json(&record)));
        self.commit(txn).await?.map_err(|_| SsotError::not_found("project", project))?;
        Ok(())
    }

    /// Usage records of one loop (or of every loop when `loop_id` is empty), by epoch and agent.
    pub async fn list_budgets(
        &self,
        project: &str,
        loop_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<BudgetRecord>> {
        self.project_guard(project).await?;
        let prefix = if loop_id.is_empty() { keys::in_project(project, PREFIX) } else { loop_prefix(project, loop_id) };
        self.page(&prefix, page_size, page_token, 0, |_| true).await
    }
}
