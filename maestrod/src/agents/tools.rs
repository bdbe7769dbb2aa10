//! The agents' tools: one set, offered per role as its policy allows. Each
//! tool's argument type derives its JSON Schema (schemars). Every file,
//! command and SSOT change goes through the harness; malformed arguments
//! and unknown tools come back to the model as tool errors.

use schemars::{JsonSchema, schema_for};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::llm::{ToolCall, ToolSpec};
use crate::harness::executor::{ActionContext, ActionOutput, Harness};
use crate::harness::gate::Action;
use crate::harness::policy::RolePolicy;
use crate::ssot::contracts::{ContractKind, ContractStatus, NewContract};
use crate::ssot::exec_log::NewLogEntry;
use crate::ssot::requirements::{NewRequirement, RequirementUpdate, Status};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PathArgs {
    /// Path relative to the workspace root.
    path: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    /// Path relative to the workspace root.
    path: String,
    /// The whole new content of the file.
    content: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RunArgs {
    /// The command as argv, e.g. ["python", "-m", "pytest", "-q"]. No shell.
    argv: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RequirementArgs {
    /// A requirement id like R3.
    id: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequirementArgs {
    title: String,
    #[serde(default)]
    description: String,
    /// The parent requirement (empty for a root).
    #[serde(default)]
    parent_id: String,
    /// backend, frontend, test, review, …
    #[serde(default)]
    role_hint: String,
    #[serde(default)]
    acceptance: Vec<String>,
    #[serde(default)]
    depends_on: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct UpdateRequirementArgs {
    id: String,
    /// Fields left out stay as they are.
    title: Option<String>,
    description: Option<String>,
    role_hint: Option<String>,
    acceptance: Option<Vec<String>>,
    /// Requirements this one now depends on.
    #[serde(default)]
    add_dependencies: Vec<String>,
    /// Requirements this one no longer depends on.
    #[serde(default)]
    remove_dependencies: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SetStatusArgs {
    id: String,
    status: Status,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum KindArg {
    Openapi,
    Protobuf,
    JsonSchema,
    FunctionSignature,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProposeContractArgs {
    name: String,
    kind: KindArg,
    spec: String,
    #[serde(default)]
    consumers: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ContractArgs {
    name: String,
    /// A version; the latest when absent.
    #[serde(default)]
    version: u32,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReadLogArgs {
    /// The most recent entries to return (default 20).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AnnotateArgs {
    note: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MemoryGetArgs {
    key: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MemoryPutArgs {
    key: String,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishArgs {
    /// done when the requirement is met, failed otherwise.
    pub outcome: Verdict,
    /// What was done, or why it failed.
    pub summary: String,
}

/// What a tool call produced, for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    pub content: String,
    pub is_error: bool,
    /// Set by `finish`: the agent is done.
    pub finish: Option<FinishArgs>,
}

impl ToolResult {
    fn ok(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: false, finish: None }
    }

    fn error(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: true, finish: None }
    }
}

fn spec<T: JsonSchema>(name: &str, description: &str) -> ToolSpec {
    ToolSpec {
        name: name.to_string(),
        description: description.to_string(),
        parameters: serde_json::to_value(schema_for!(T)).expect("schemas encode as JSON"),
    }
}

/// The tools `role` is offered: reading always; writing, deleting and running
/// where its policy grants any; SSOT tools per granted collection; `finish`.
pub fn specs(role: &RolePolicy) -> Vec<ToolSpec> {
    let mut tools = vec![
        spec::<PathArgs>("read_file", "Read a text file of the workspace."),
        spec::<PathArgs>("list_dir", "List a directory of the workspace ('.' for the root)."),
        spec::<RequirementArgs>("get_requirement", "Read one requirement."),
        spec::<ReadLogArgs>("list_requirements", "List every requirement of the project."),
        spec::<ContractArgs>("get_contract", "Read a contract (the latest version unless one is given)."),
        spec::<ReadLogArgs>("read_log", "Read the most recent execution log entries."),
        spec::<MemoryGetArgs>("memory_get", "Read one of your notes."),
        spec::<FinishArgs>("finish", "End your work on the requirement: done or failed, with a summary."),
    ];
    if !role.source.write.as_deref().unwrap_or_default().is_empty() {
        tools.push(spec::<WriteArgs>("write_file", "Create or replace a file of the workspace."));
        tools.push(spec::<PathArgs>("delete_file", "Delete a file or directory of the workspace."));
    }
    if !role.commands.is_empty() {
        tools.push(spec::<RunArgs>("run_command", "Run a command in the workspace sandbox (argv, no shell)."));
    }
    let grants = |collection: &str| role.ssot.iter().any(|c| c == collection);
    if grants("requirements") {
        tools.push(spec::<CreateRequirementArgs>("create_requirement", "Add a requirement to the tree."));
        tools.push(spec::<UpdateRequirementArgs>(
            "update_requirement",
            "Change a requirement's text, role hint, acceptance criteria or dependencies.",
        ));
        tools.push(spec::<SetStatusArgs>("set_status", "Move a requirement along its status machine."));
    }
    if grants("contracts") {
        tools.push(spec::<ProposeContractArgs>("propose_contract", "Propose a new version of a contract."));
    }
    if grants("log") {
        tools.push(spec::<AnnotateArgs>("annotate_log", "Add a note to the execution log."));
    }
    if grants("memory") {
        tools.push(spec::<MemoryPutArgs>("memory_put", "Keep a note for later turns and epochs."));
    }
    tools
}

/// Runs tool calls for one agent.
pub struct Tools<'a> {
    pub harness: &'a Harness,
    pub ctx: &'a ActionContext,
    pub offered: &'a [ToolSpec],
    pub cancel: CancellationToken,
}

fn parse<T: DeserializeOwned>(call: &ToolCall) -> Result<T, ToolResult> {
    serde_json::from_str(&call.arguments)
        .map_err(|e| ToolResult::error(format!("invalid arguments for {}: {e}; see the tool's schema", call.name)))
}

impl Tools<'_> {
    pub async fn call(&self, call: &ToolCall) -> ToolResult {
        if !self.offered.iter().any(|t| t.name == call.name) {
            let names: Vec<&str> = self.offered.iter().map(|t| t.name.as_str()).collect();
            return ToolResult::error(format!("unknown tool {:?}; available: {}", call.name, names.join(", ")));
        }
        match self.dispatch(call).await {
            Ok(result) | Err(result) => result,
        }
    }

    async fn act(&self, action: Action) -> Result<ActionOutput, ToolResult> {
        self.harness.perform(self.ctx, action, self.cancel.clone()).await.map_err(|e| ToolResult::error(e.to_string()))
    }

    /// Authorises an SSOT change through the harness (decision, budget, log).
    async fn authorize(&self, collection: &str, target: &str) -> Result<(), ToolResult> {
        self.act(Action::SsotWrite { collection: collection.into(), target: target.into() }).await.map(drop)
    }

    async fn dispatch(&self, call: &ToolCall) -> Result<ToolResult, ToolResult> {
        let ssot = self.harness.ssot();
        let project = self.harness.project();
        let fail = |e: crate::ssot::SsotError| ToolResult::error(e.to_string());
        let json = |v: serde_json::Value| ToolResult::ok(v.to_string());
        Ok(match call.name.as_str() {
            "read_file" => match self.act(Action::ReadFile { path: parse::<PathArgs>(call)?.path }).await? {
                ActionOutput::Read(text) => ToolResult::ok(text),
                other => ToolResult::ok(format!("{other:?}")),
            },
            "list_dir" => match self.act(Action::ListDir { path: parse::<PathArgs>(call)?.path }).await? {
                ActionOutput::Listing(entries) => ToolResult::ok(
                    entries
                        .iter()
                        .map(|e| if e.is_dir { format!("{}/", e.name) } else { e.name.clone() })
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                other => ToolResult::ok(format!("{other:?}")),
            },
            "write_file" => {
                let args = parse::<WriteArgs>(call)?;
                self.act(Action::WriteFile { path: args.path.clone(), content: args.content }).await?;
                ToolResult::ok(format!("wrote {}", args.path))
            }
            "delete_file" => {
                let args = parse::<PathArgs>(call)?;
                self.act(Action::DeleteFile { path: args.path.clone() }).await?;
                ToolResult::ok(format!("deleted {}", args.path))
            }
            "run_command" => match self.act(Action::RunCommand { argv: parse::<RunArgs>(call)?.argv }).await? {
                ActionOutput::Ran(out) => {
                    let status = out
                        .exit_code
                        .map_or_else(|| format!("killed by signal {:?}", out.signal), |c| format!("exit {c}"));
                    let result = format!(
                        "{status}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        if out.timed_out { " (timed out)" } else { "" },
                        out.stdout,
                        out.stderr
                    );
                    if out.success() { ToolResult::ok(result) } else { ToolResult::error(result) }
                }
                other => ToolResult::ok(format!("{other:?}")),
            },
            "get_requirement" => {
                let r = ssot.get_requirement(project, &parse::<RequirementArgs>(call)?.id, 0).await.map_err(fail)?;
                json(serde_json::to_value(&r.value).unwrap_or_default())
            }
            "list_requirements" => {
                let all = ssot.all_requirements(project).await.map_err(fail)?;
                json(serde_json::Value::Array(
                    all.into_iter().map(|r| serde_json::to_value(r.value).unwrap_or_default()).collect(),
                ))
            }
            "create_requirement" => {
                let args = parse::<CreateRequirementArgs>(call)?;
                self.authorize("requirements", &args.title).await?;
                let new = NewRequirement {
                    parent_id: args.parent_id,
                    title: args.title,
                    description: args.description,
                    role_hint: args.role_hint,
                    acceptance: args.acceptance,
                    depends_on: args.depends_on,
                };
                let created = ssot.create_requirement(project, new).await.map_err(fail)?;
                ToolResult::ok(format!("created {}", created.value.id))
            }
            "update_requirement" => {
                let args = parse::<UpdateRequirementArgs>(call)?;
                self.authorize("requirements", &args.id).await?;
                let fields = [&args.title, &args.description, &args.role_hint];
                if fields.iter().any(|f| f.is_some()) || args.acceptance.is_some() {
                    let update = RequirementUpdate {
                        title: args.title,
                        description: args.description,
                        role_hint: args.role_hint,
                        acceptance: args.acceptance,
                        ..Default::default()
                    };
                    ssot.update_requirement(project, &args.id, update).await.map_err(fail)?;
                }
                if !args.add_dependencies.is_empty() || !args.remove_dependencies.is_empty() {
                    ssot.set_dependencies(project, &args.id, &args.add_dependencies, &args.remove_dependencies, "")
                        .await
                        .map_err(fail)?;
                }
                ToolResult::ok(format!("updated {}", args.id))
            }
            "set_status" => {
                let args = parse::<SetStatusArgs>(call)?;
                self.authorize("requirements", &args.id).await?;
                let updated = ssot
                    .set_requirement_status(project, &args.id, args.status, &args.reason, &self.ctx.agent, "")
                    .await
                    .map_err(fail)?;
                ToolResult::ok(format!("{} is {}", updated.value.id, updated.value.status.as_str()))
            }
            "propose_contract" => {
                let args = parse::<ProposeContractArgs>(call)?;
                self.authorize("contracts", &args.name).await?;
                let kind = match args.kind {
                    KindArg::Openapi => ContractKind::Openapi,
                    KindArg::Protobuf => ContractKind::Protobuf,
                    KindArg::JsonSchema => ContractKind::JsonSchema,
                    KindArg::FunctionSignature => ContractKind::FunctionSignature,
                };
                let new = NewContract {
                    name: args.name,
                    kind,
                    spec: args.spec,
                    owner: self.ctx.role.clone(),
                    consumers: args.consumers,
                    status: ContractStatus::Proposed,
                    etag: String::new(),
                };
                let stored = ssot.put_contract(project, new).await.map_err(fail)?;
                ToolResult::ok(format!("proposed {} version {}", stored.value.name, stored.value.version))
            }
            "get_contract" => {
                let args = parse::<ContractArgs>(call)?;
                let c = ssot.get_contract(project, &args.name, args.version).await.map_err(fail)?;
                json(serde_json::to_value(&c.value).unwrap_or_default())
            }
            "read_log" => {
                let limit = parse::<ReadLogArgs>(call)?.limit.unwrap_or(20).clamp(1, 200) as usize;
                let all = ssot.list_log(project, 0, "", "", 1000, "").await.map_err(fail)?;
                let recent: Vec<String> = all
                    .items
                    .iter()
                    .rev()
                    .take(limit)
                    .rev()
                    .map(|e| {
                        let b = &e.value.body;
                        format!("#{} {} {} {} → {} {}", e.value.seq, b.agent, b.action, b.target, b.outcome, b.detail)
                    })
                    .collect();
                ToolResult::ok(recent.join("\n"))
            }
            "annotate_log" => {
                let args = parse::<AnnotateArgs>(call)?;
                self.authorize("log", "annotation").await?;
                let entry = NewLogEntry {
                    loop_id: self.ctx.loop_id.clone(),
                    epoch: self.ctx.epoch,
                    agent: self.ctx.agent.clone(),
                    action: "annotation".into(),
                    outcome: "note".into(),
                    detail: args.note,
                    ..NewLogEntry::default()
                };
                let appended = ssot.append_log(project, entry).await.map_err(fail)?;
                ToolResult::ok(format!("logged as entry {}", appended.value.seq))
            }
            "memory_get" => {
                let args = parse::<MemoryGetArgs>(call)?;
                let entry = ssot.get_memory(project, &memory_agent(&self.ctx.role), &args.key).await.map_err(fail)?;
                ToolResult::ok(entry.value.value)
            }
            "memory_put" => {
                let args = parse::<MemoryPutArgs>(call)?;
                self.authorize("memory", &args.key).await?;
                ssot.put_memory(project, &memory_agent(&self.ctx.role), &args.key, &args.value, 0, "")
                    .await
                    .map_err(fail)?;
                ToolResult::ok(format!("kept {}", args.key))
            }
            "finish" => {
                let args = parse::<FinishArgs>(call)?;
                ToolResult { content: "finished".into(), is_error: false, finish: Some(args) }
            }
            other => ToolResult::error(format!("tool {other:?} has no handler")),
        })
    }
}

/// Memory belongs to the role, so it carries across epochs and agent instances.
fn memory_agent(role: &str) -> String {
    role.to_string()
}
