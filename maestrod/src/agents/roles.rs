//! The roles: their prompts (files under `maestrod/prompts/`, compiled in)
//! and the focused context an agent gets for one requirement: the
//! requirement, its ancestors and dependencies, the contracts its role
//! produces or consumes, recent log entries about it, and the role's memory.

use std::fmt::Write;

use tokio_util::sync::CancellationToken;

use super::llm::LlmProvider;
use super::runtime::{AgentError, AgentRun, Observer, RunOutcome};
use crate::harness::executor::{ActionContext, Harness};
use crate::ssot::contracts::ContractStatus;
use crate::ssot::{Result, Ssot};

/// The prompt of a role a project defined itself.
const GENERIC_PROMPT: &str = "You are an agent of Maestro, a team of software agents that share one structured state \
(the SSOT). Do the requirement you are given with the tools you have, then call `finish`.";

/// One agent working on one requirement.
pub struct Assignment<'a> {
    pub provider: &'a dyn LlmProvider,
    pub model: String,
    pub harness: &'a Harness,
    pub ctx: ActionContext,
    pub requirement: String,
    /// Added to the context: failure reasons of earlier attempts, a human's guidance.
    pub notes: String,
    pub max_turns: usize,
    pub max_tokens: u32,
    pub observer: Option<&'a dyn Observer>,
    pub temperature: Option<f32>,
    pub context_window: u32,
    /// The project's test commands (`run_tests`).
    pub tests: Vec<Vec<String>>,
    pub on_retry: super::llm::RetryHook,
}

impl Assignment<'_> {
    /// Runs the agent with its role's prompt and the requirement's focused context.
    pub async fn work(self, cancel: CancellationToken) -> std::result::Result<RunOutcome, AgentError> {
        let system = prompt(&self.ctx.role).unwrap_or(GENERIC_PROMPT);
        let ssot = self.harness.ssot().clone();
        let mut task = context(&ssot, self.harness.project(), &self.requirement, &self.ctx.role)
            .await
            .map_err(AgentError::Context)?;
        task.push_str(&self.workspace_section(&cancel).await);
        if !self.notes.is_empty() {
            let _ = write!(task, "\n{}", self.notes);
        }
        let run = AgentRun {
            provider: self.provider,
            model: self.model,
            harness: self.harness,
            ctx: self.ctx,
            requirement: self.requirement,
            max_turns: self.max_turns,
            max_tokens: self.max_tokens,
            observer: self.observer,
            temperature: self.temperature,
            context_window: self.context_window,
            tests: self.tests,
            on_retry: self.on_retry,
        };
        run.run(system, &task, cancel).await
    }
}

impl Assignment<'_> {
    /// What the agent may do here and what the workspace holds: its paths and
    /// commands, the test commands, and the tree two levels down with sizes.
    async fn workspace_section(&self, cancel: &CancellationToken) -> String {
        let mut out = String::new();
        if let Ok(role) = self.harness.policy().role(&self.ctx.role) {
            let write = role.source.write.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "\nYou may write: {}.",
                if write.is_empty() { "nothing (you read and report)".to_string() } else { write.join(", ") }
            );
            if !role.commands.is_empty() {
                let commands: Vec<String> = role.commands.iter().map(|c| c.join(" ")).collect();
                let _ = writeln!(out, "You may run (argv prefixes, no shell): {}.", commands.join("; "));
            }
        }
        if !self.tests.is_empty() && self.harness.policy().role(&self.ctx.role).is_ok_and(|r| !r.commands.is_empty()) {
            let tests: Vec<String> = self.tests.iter().map(|c| c.join(" ")).collect();
            let _ = writeln!(out, "The project's tests (run_tests runs them): {}.", tests.join(" && "));
        }
        let listing = self
            .harness
            .perform(&self.ctx, crate::harness::gate::Action::ListTree { path: ".".into(), depth: 2 }, cancel.clone())
            .await;
        if let Ok(crate::harness::executor::ActionOutput::Tree(entries, _)) = listing {
            let _ = writeln!(out, "\nThe workspace (two levels):");
            if entries.is_empty() {
                let _ = writeln!(out, "(empty)");
            }
            for entry in entries.iter().take(80) {
                if entry.is_dir {
                    let _ = writeln!(out, "{}/", entry.path);
                } else {
                    let _ = writeln!(out, "{} ({} bytes)", entry.path, entry.bytes);
                }
            }
            if entries.len() > 80 {
                let _ = writeln!(out, "… {} more (list_dir shows them)", entries.len() - 80);
            }
        }
        out
    }
}

/// The prompt of a role; `None` for a role the project defined itself.
pub fn prompt(role: &str) -> Option<&'static str> {
    Some(match role {
        "planning" => include_str!("../../prompts/planning.md"),
        "backend" => include_str!("../../prompts/backend.md"),
        "frontend" => include_str!("../../prompts/frontend.md"),
        "test" => include_str!("../../prompts/test.md"),
        "review" => include_str!("../../prompts/review.md"),
        "contract-validator" => include_str!("../../prompts/contract-validator.md"),
        _ => return None,
    })
}

/// Whether `text` names requirement `id` as a whole word (`R1` is not in `R10`).
pub fn names(text: &str, id: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric()).any(|word| word == id)
}

/// The task text for `role` working on requirement `id`.
pub async fn context(ssot: &Ssot, project: &str, id: &str, role: &str) -> Result<String> {
    let requirement = ssot.get_requirement(project, id, 0).await?.value;
    let all = ssot.all_requirements(project).await?;
    let find = |id: &str| all.iter().find(|r| r.value.id == id).map(|r| &r.value);
    let mut out = String::new();
    let _ = writeln!(out, "# Requirement {}: {}", requirement.id, requirement.title);
    if !requirement.description.is_empty() {
        let _ = writeln!(out, "\n{}", requirement.description);
    }
    if !requirement.acceptance.is_empty() {
        let _ = writeln!(out, "\nAcceptance criteria:");
        for criterion in &requirement.acceptance {
            let _ = writeln!(out, "- {criterion}");
        }
    }
    let mut ancestors = Vec::new();
    let mut parent = requirement.parent_id.clone();
    while let Some(node) = (!parent.is_empty()).then(|| find(&parent)).flatten() {
        ancestors.push(format!("{}: {}", node.id, node.title));
        parent = node.parent_id.clone();
        if ancestors.len() > 32 {
            break;
        }
    }
    if !ancestors.is_empty() {
        let _ = writeln!(out, "\nPart of: {}", ancestors.join(" ← "));
    }
    let children: Vec<_> = all.iter().map(|r| &r.value).filter(|r| r.parent_id == requirement.id).collect();
    if !children.is_empty() {
        let _ = writeln!(out, "\nSub-requirements:");
        for child in children {
            let deps = if child.depends_on.is_empty() {
                String::new()
            } else {
                format!(" (after {})", child.depends_on.join(", "))
            };
            let _ =
                writeln!(out, "- {} [{}] {} → {}{deps}", child.id, child.status.as_str(), child.title, child.role_hint);
        }
    }
    if !requirement.depends_on.is_empty() {
        let _ = writeln!(out, "\nDepends on (and what it produced):");
        for dep in &requirement.depends_on {
            if let Some(node) = find(dep) {
                let produced =
                    if node.status_reason.is_empty() { String::new() } else { format!(" — {}", node.status_reason) };
                let _ = writeln!(out, "- {} [{}] {}{produced}", node.id, node.status.as_str(), node.title);
            }
        }
    }
    let contracts = ssot.list_contracts(project, 1000, "").await?.items;
    let relevant: Vec<_> = contracts
        .iter()
        .map(|c| &c.value)
        .filter(|c| c.status != ContractStatus::Deprecated)
        .filter(|c| c.owner == role || c.consumers.iter().any(|x| x == role))
        .collect();
    if !relevant.is_empty() {
        let _ = writeln!(out, "\nContracts you produce or consume:");
        for c in relevant {
            let _ = writeln!(
                out,
                "- {} v{} [{}] owner {}: {}",
                c.name,
                c.version,
                c.status.as_str(),
                c.owner,
                c.spec.lines().next().unwrap_or("")
            );
        }
    }
    // The newest entries that name this requirement exactly (R1 is not R10).
    let mentions =
        ssot.recent_log(project, 10, 5000, |e| names(&e.body.target, id) || names(&e.body.detail, id)).await?;
    if !mentions.is_empty() {
        let _ = writeln!(out, "\nRecent log entries about {id}:");
        for e in &mentions {
            let _ = writeln!(
                out,
                "- #{} {} {} {}: {}",
                e.seq,
                e.body.agent,
                e.body.action,
                e.body.outcome,
                e.body.detail.lines().take(20).collect::<Vec<_>>().join("\n  ")
            );
        }
    }
    let memory = ssot.list_memory(project, role, 100, "").await?.items;
    if !memory.is_empty() {
        let _ = writeln!(out, "\nYour notes:");
        for note in memory {
            let _ = writeln!(out, "- {}: {}", note.value.key, note.value.value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ssot::contracts::{ContractKind, NewContract};
    use crate::ssot::exec_log::NewLogEntry;
    use crate::ssot::requirements::NewRequirement;
    use crate::ssot::sled_store::{SledOptions, SledStore};

    #[test]
    fn every_seed_role_has_a_prompt() {
        for role in ["planning", "backend", "frontend", "test", "review", "contract-validator"] {
            assert!(prompt(role).is_some_and(|p| p.contains("Maestro")), "{role}");
        }
        assert!(prompt("docs").is_none());
    }

    #[tokio::test]
    async fn the_context_is_focused_on_the_requirement() {
        let dir = tempfile::tempdir().unwrap();
        let ssot =
            Ssot::new(Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap()), Default::default());
        ssot.create_project("p", "", "").await.unwrap();
        let new = |title: &str, parent: &str, deps: &[&str]| NewRequirement {
            title: title.into(),
            parent_id: parent.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            acceptance: vec![format!("{title} works")],
            ..Default::default()
        };
        ssot.create_requirement("p", new("To-do app", "", &[])).await.unwrap();
        ssot.create_requirement("p", new("REST API", "R1", &[])).await.unwrap();
        ssot.create_requirement("p", new("Web page", "R1", &["R2"])).await.unwrap();
        ssot.create_requirement("p", new("Unrelated", "", &[])).await.unwrap();
        let contract = |name: &str, owner: &str, consumers: &[&str]| NewContract {
            name: name.into(),
            kind: ContractKind::Openapi,
            spec: format!("openapi: 3.1.0 # {name}"),
            owner: owner.into(),
            consumers: consumers.iter().map(|c| c.to_string()).collect(),
            status: ContractStatus::Proposed,
            etag: String::new(),
        };
        ssot.put_contract("p", contract("todo-api", "backend", &["frontend"])).await.unwrap();
        ssot.put_contract("p", contract("billing-api", "backend", &[])).await.unwrap();
        ssot.append_log(
            "p",
            NewLogEntry {
                action: "write_file".into(),
                target: "R3".into(),
                outcome: "denied".into(),
                detail: "acl.write".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        ssot.put_memory("p", "frontend", "framework", "plain HTML", 0, "").await.unwrap();

        let text = context(&ssot, "p", "R3", "frontend").await.unwrap();
        assert!(text.starts_with("# Requirement R3: Web page"), "{text}");
        assert!(text.contains("- Web page works"));
        assert!(text.contains("Part of: R1: To-do app"));
        assert!(text.contains("- R2 [PENDING] REST API"));
        assert!(text.contains("todo-api v1") && !text.contains("billing-api"), "{text}");
        assert!(text.contains("denied: acl.write"));
        assert!(text.contains("framework: plain HTML"));
        assert!(!text.contains("Unrelated"));
    }

    #[test]
    fn requirement_ids_match_whole_words_only() {
        assert!(names("R1", "R1"));
        assert!(names("requirements/R1: done", "R1"));
        assert!(names("R2, R1", "R1"));
        assert!(!names("R10", "R1"));
        assert!(!names("R12 and XR1", "R1"));
    }
}
