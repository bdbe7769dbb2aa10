//! The AutoLoop: the state machine as a pure function (`fsm`), the driver
//! that performs its effects (`runner`), agent activity and what agents
//! touched (`activity`), the scheduler that matches ready requirements to
//! roles (`scheduler`), VALID's test run (`test_run`), the manager that
//! starts, queues, resumes, supervises and steers loops (`manager`, with
//! `control`), the `loop` configuration section (`config`) and the scripted
//! demo (`demo`).

pub mod activity;
pub mod config;
pub mod control;
pub mod demo;
pub mod fsm;
#[cfg(test)]
mod fsm_tests;
#[cfg(test)]
mod loop_tests;
pub mod manager;
pub mod membership;
pub mod placement;
pub mod runner;
pub mod scheduler;
pub mod test_run;
