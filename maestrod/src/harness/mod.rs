//! The agent harness: every agent action is to pass ACL → validator → budget
//! → sandbox, and every decision is logged.
//!
//! Built so far: safe workspace paths (`workspace_path`), per-role policy
//! from `.maestro/config.yaml` (`policy`), the validator's rules
//! (`validator`), and the decision path over them (`gate`), which
//! `maestrod harness check` exposes. Not yet: budgets, the sandbox that
//! executes allowed actions, git rollback, decision logging, the gRPC side.

pub mod budget;
pub mod executor;
pub mod gate;
pub mod policy;
pub mod rollback;
pub mod sandbox;
pub mod validator;
pub mod workspace_path;

pub use gate::{Action, Decision, Gate, GateError};
