//! The AutoLoop: one durable state machine per project run (`runner`), the
//! scheduler that matches ready requirements to roles (`scheduler`), the
//! manager that starts, queues, resumes and steers loops (`manager`), the
//! `loop` configuration section (`config`) and the scripted demo (`demo`).

pub mod config;
pub mod demo;
#[cfg(test)]
mod loop_tests;
pub mod manager;
pub mod runner;
pub mod scheduler;
