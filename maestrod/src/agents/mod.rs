//! Agents: the LLM providers they talk to (`llm`). The tool-calling runtime,
//! the SSOT tools and the six roles come next (issue 4).

pub mod llm;
