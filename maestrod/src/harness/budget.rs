//! Budgets: tokens, steps and wall-clock time, per agent per epoch and per
//! loop. Every action charges one step (and the model's tokens, once agents
//! exist); running out stops the agent with a typed error.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What has been used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub tokens: u64,
    pub steps: u64,
    pub elapsed_ms: u64,
}

/// Limits of one scope; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub tokens: u64,
    pub steps: u64,
    pub wall_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    pub per_agent_epoch: Limits,
    pub per_loop: Limits,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            per_agent_epoch: Limits { tokens: 200_000, steps: 200, wall_ms: 15 * 60 * 1000 },
            per_loop: Limits { tokens: 2_000_000, steps: 5_000, wall_ms: 4 * 60 * 60 * 1000 },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{scope} {resource} budget exhausted: {used} used of {limit}")]
pub struct BudgetExhausted {
    /// "agent backend (epoch 2)" or "loop".
    pub scope: String,
    /// "token", "step" or "time (ms)".
    pub resource: &'static str,
    pub used: u64,
    pub limit: u64,
}

fn over(scope: &str, usage: &Usage, limits: &Limits) -> Result<(), BudgetExhausted> {
    for (resource, used, limit) in [
        ("token", usage.tokens, limits.tokens),
        ("step", usage.steps, limits.steps),
        ("time (ms)", usage.elapsed_ms, limits.wall_ms),
    ] {
        if limit != 0 && used > limit {
            return Err(BudgetExhausted { scope: scope.to_string(), resource, used, limit });
        }
    }
    Ok(())
}

struct Tally {
    usage: Usage,
    started: Instant,
}

/// The budget of one loop and its agents.
pub struct Budget {
    config: BudgetConfig,
    started: Mutex<Instant>,
    state: Mutex<Tallies>,
}

/// The loop's usage and each (epoch, agent)'s.
struct Tallies {
    whole_loop: Usage,
    agents: HashMap<(u64, String), Tally>,
}

impl Budget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            started: Mutex::new(Instant::now()),
            state: Mutex::new(Tallies { whole_loop: Usage::default(), agents: HashMap::new() }),
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Charges `steps` and `tokens` to `agent` in `epoch` and to the loop.
    /// Fails (after recording the charge) when either scope is over a limit;
    /// returns the agent's usage otherwise.
    pub fn charge(&self, epoch: u64, agent: &str, steps: u64, tokens: u64) -> Result<Usage, BudgetExhausted> {
        let mut state = self.state.lock().expect("budget mutex poisoned");
        let Tallies { whole_loop: loop_usage, agents } = &mut *state;
        let tally = agents
            .entry((epoch, agent.to_string()))
            .or_insert_with(|| Tally { usage: Usage::default(), started: Instant::now() });
        tally.usage.steps += steps;
        tally.usage.tokens += tokens;
        tally.usage.elapsed_ms = millis(tally.started.elapsed());
        loop_usage.steps += steps;
        loop_usage.tokens += tokens;
        loop_usage.elapsed_ms = millis(self.started.lock().expect("budget mutex poisoned").elapsed());
        over(&format!("agent {agent} (epoch {epoch})"), &tally.usage, &self.config.per_agent_epoch)?;
        over("loop", loop_usage, &self.config.per_loop)?;
        Ok(tally.usage)
    }

    /// Takes up what was spent before a restart (or before the harness was
    /// rebuilt): each agent run's usage as recorded, and the loop's as their
    /// sum, its time the span the records cover (time the daemon was down
    /// is not charged).
    pub fn restore(&self, records: &[crate::ssot::budgets::BudgetRecord]) {
        let mut state = self.state.lock().expect("budget mutex poisoned");
        let now = Instant::now();
        let mut first = i64::MAX;
        let mut last = i64::MIN;
        for r in records {
            let usage = Usage { tokens: r.tokens, steps: r.steps, elapsed_ms: r.elapsed_ms };
            let started = now.checked_sub(Duration::from_millis(r.elapsed_ms)).unwrap_or(now);
            let tally = state.agents.entry((r.epoch, r.agent.clone())).or_insert(Tally { usage, started });
            if tally.usage.steps <= usage.steps && tally.usage.tokens <= usage.tokens {
                *tally = Tally { usage, started };
            }
            first = first.min(r.update_time_ms.saturating_sub(i64::try_from(r.elapsed_ms).unwrap_or(i64::MAX)));
            last = last.max(r.update_time_ms);
        }
        let agents: Vec<Usage> = state.agents.values().map(|t| t.usage).collect();
        let whole_loop = &mut state.whole_loop;
        whole_loop.tokens = whole_loop.tokens.max(agents.iter().map(|u| u.tokens).sum());
        whole_loop.steps = whole_loop.steps.max(agents.iter().map(|u| u.steps).sum());
        drop(state);
        if last > first {
            let spent = Duration::from_millis(u64::try_from(last - first).unwrap_or(0));
            let mut started = self.started.lock().expect("budget mutex poisoned");
            if let Some(earlier) = now.checked_sub(spent)
                && earlier < *started
            {
                *started = earlier;
            }
        }
    }

    /// One agent's usage in one epoch.
    pub fn agent_usage(&self, epoch: u64, agent: &str) -> Usage {
        let state = self.state.lock().expect("budget mutex poisoned");
        state.agents.get(&(epoch, agent.to_string())).map(|t| t.usage).unwrap_or_default()
    }

    /// The loop's usage so far.
    pub fn loop_usage(&self) -> Usage {
        let state = self.state.lock().expect("budget mutex poisoned");
        Usage { elapsed_ms: millis(self.started.lock().expect("budget mutex poisoned").elapsed()), ..state.whole_loop }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssot::budgets::BudgetRecord;

    #[test]
    fn agents_and_the_loop_run_out_separately() {
        let budget = Budget::new(BudgetConfig {
            per_agent_epoch: Limits { tokens: 100, steps: 3, wall_ms: 0 },
            per_loop: Limits { tokens: 150, steps: 0, wall_ms: 0 },
        });
        for _ in 0..3 {
            budget.charge(1, "backend", 1, 10).unwrap();
        }
        let error = budget.charge(1, "backend", 1, 0).unwrap_err();
        assert_eq!((error.resource, error.used, error.limit), ("step", 4, 3));
        assert_eq!(error.to_string(), "agent backend (epoch 1) step budget exhausted: 4 used of 3");
        // Another agent, and the same agent in the next epoch, start fresh...
        budget.charge(1, "frontend", 1, 90).unwrap();
        // ...but the loop's tokens are shared: 30 + 90 + 40 > 150.
        let error = budget.charge(2, "backend", 1, 40).unwrap_err();
        assert_eq!((error.scope.as_str(), error.resource), ("loop", "token"));
        assert_eq!(budget.loop_usage().tokens, 160);
    }

    fn record(epoch: u64, agent: &str, tokens: u64, steps: u64, elapsed_ms: u64, at: i64) -> BudgetRecord {
        BudgetRecord {
            loop_id: "loop-1".into(),
            epoch,
            agent: agent.into(),
            tokens,
            steps,
            elapsed_ms,
            token_limit: 0,
            step_limit: 0,
            wall_limit_ms: 0,
            exhausted: String::new(),
            update_time_ms: at,
        }
    }

    #[test]
    fn a_restored_budget_goes_on_from_what_was_spent() {
        let config = BudgetConfig {
            per_agent_epoch: Limits { tokens: 100, steps: 0, wall_ms: 0 },
            per_loop: Limits { tokens: 250, steps: 0, wall_ms: 60_000 },
        };
        let budget = Budget::new(config);
        budget.restore(&[
            record(1, "backend-1", 90, 4, 1_000, 10_000),
            record(1, "review-1", 60, 2, 500, 11_000),
            record(2, "backend-1", 80, 3, 30_000, 45_000),
        ]);
        assert_eq!(budget.agent_usage(1, "backend-1"), Usage { tokens: 90, steps: 4, elapsed_ms: 1_000 });
        // The agent run that had spent 90 of its 100 tokens cannot spend 20 more after the restart...
        let error = budget.charge(1, "backend-1", 0, 20).unwrap_err();
        assert_eq!((error.scope.as_str(), error.used), ("agent backend-1 (epoch 1)", 110));
        // ...and the loop's tokens are the sum of its runs: 110 + 60 + 80 + 10 > 250.
        let error = budget.charge(3, "test-1", 0, 10).unwrap_err();
        assert_eq!((error.scope.as_str(), error.used), ("loop", 260));
        // The loop's time is the span its records cover (9 s to 45 s), not the time since.
        let elapsed = budget.loop_usage().elapsed_ms;
        assert!((36_000..50_000).contains(&elapsed), "{elapsed}");
    }
}
