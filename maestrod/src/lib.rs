//! maestrod: the Maestro daemon.
//!
//! Modules in reading order: `ssot` (the revisioned store and its domains),
//! `api` (the gRPC services), `config` and `server` (wiring and lifecycle), `cli` (the binary's entry point).

pub mod agents;
pub mod api;
pub mod auth;
pub mod autoloop;
pub mod cli;
pub mod config;
pub mod harness;
pub mod metrics;
pub mod server;
pub mod ssot;
pub mod telemetry;
pub mod transport;

pub use config::DaemonConfig;
pub use server::run;
