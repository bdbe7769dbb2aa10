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
    started: Instant,
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
            started: Instant::now(),
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
        loop_usage.elapsed_ms = millis(self.started.elapsed());
        over(&format!("agent {agent} (epoch {epoch})"), &tally.usage, &self.config.per_agent_epoch)?;
        over("loop", loop_usage, &self.config.per_loop)?;
        Ok(tally.usage)
    }

    /// One agent's usage in one epoch.
    pub fn agent_usage(&self, epoch: u64, agent: &str) -> Usage {
        let state = self.state.lock().expect("budget mutex poisoned");
        state.agents.get(&(epoch, agent.to_string())).map(|t| t.usage).unwrap_or_default()
    }

    /// The loop's usage so far.
    pub fn loop_usage(&self) -> Usage {
        let state = self.state.lock().expect("budget mutex poisoned");
        Usage { elapsed_ms: millis(self.started.elapsed()), ..state.whole_loop }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
