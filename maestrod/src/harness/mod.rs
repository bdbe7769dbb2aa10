//! The agent harness: every agent action passes ACL → validator → budget →
//! sandbox, and every decision goes to the project's execution log.
//!
//! Reading order: `workspace_path` (safe paths), `policy` (per-role rules from
//! `.maestro/config.yaml`), `validator` (dangerous content and commands),
//! `gate` (the decision over those three, also behind `maestrod harness
//! check`), `budget`, `sandbox` (running commands), `rollback` (git
//! checkpoints), and `executor`, the single entry point agents use.

#[cfg(test)]
mod attacks;
pub mod budget;
pub mod executor;
pub mod gate;
#[cfg(test)]
pub(crate) mod hostile;
pub mod policy;
pub mod rollback;
pub mod sandbox;
pub mod validator;
pub mod workspace_path;

pub use gate::{Action, Decision, Gate, GateError};
