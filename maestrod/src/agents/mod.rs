//! Agents: the LLM providers they talk to (`llm`), their tools (`tools`,
//! every action through the harness) and the run loop (`runtime`). The six
//! roles and their prompts come next (issue 4).

pub mod contract_validator;
pub mod llm;
#[cfg(test)]
mod role_scenarios;
pub mod roles;
pub mod runtime;
#[cfg(test)]
mod tool_tests;
pub mod tools;
