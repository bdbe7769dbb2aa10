//! The agents' tools: one set, offered per role as its policy allows. Each
//! tool's argument type derives its JSON Schema (schemars). Every file,
//! command and SSOT change goes through the harness; malformed arguments
//! and unknown tools come back to the model as tool errors.

use schemars::{JsonSchema, schema_for};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::llm::{ToolCall, ToolSpec};
use crate::harness::executor::{ActionContext, ActionOutput, Harness, HarnessError};
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
struct ReadArgs {
    /// Path relative to the workspace root.
    path: String,
    /// First line to return (from 1).
    #[serde(default)]
    start_line: Option<usize>,
    /// Last line to return (inclusive).
    #[serde(default)]
    end_line: Option<usize>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    /// Folder relative to the workspace root ("." for the root).
    path: String,
    /// Levels to list (1: just this folder; at most 6).
    #[serde(default)]
    depth: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    /// A regular expression (Rust syntax), matched against each line.
    pattern: String,
    /// Folder to search in ("." when left out).
    #[serde(default)]
    path: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EditArgs {
    /// Path relative to the workspace root.
    path: String,
    /// The exact text to replace: it must occur exactly once in the file.
    old: String,
    /// The text that replaces it.
    new: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

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
struct RemoveRequirementArgs {
    /// A requirement of your plan (under the one you plan) that is not started or done.
    id: String,
    /// Why it is no longer part of the plan.
    reason: String,
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
    /// Only when the requirement needs no change to the files at all: why.
    /// Review must accept the reason, or the requirement is not done.
    #[serde(default)]
    pub no_change_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    Approve,
    RequestChanges,
}

impl ReviewDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewDecision::Approve => "approve",
            ReviewDecision::RequestChanges => "request_changes",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Minor,
    Major,
    Blocker,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// The file the finding is about.
    #[serde(default)]
    pub file: String,
    /// The line, when it is about one.
    #[serde(default)]
    pub line: Option<u32>,
    pub severity: Severity,
    /// What is wrong and what to do instead.
    pub text: String,
}

impl Finding {
    /// One line for people and for the next attempt: `src/api/x.py:12 [major] text`.
    pub fn line(&self) -> String {
        let place = match (self.file.as_str(), self.line) {
            ("", _) => String::new(),
            (file, Some(line)) => format!("{file}:{line} "),
            (file, None) => format!("{file} "),
        };
        let severity = serde_json::to_value(self.severity).ok().and_then(|v| v.as_str().map(String::from));
        format!("{place}[{}] {}", severity.unwrap_or_default(), self.text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictArgs {
    /// The requirement reviewed; the one you were given when left out.
    #[serde(default)]
    pub requirement: String,
    /// approve when the work can be committed as it is; request_changes otherwise.
    pub verdict: ReviewDecision,
    /// What must change (required with request_changes), and remarks.
    #[serde(default)]
    pub findings: Vec<Finding>,
}

/// What a tool call means for the run beyond its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    None,
    /// The harness refused the action.
    Denied,
    /// A budget ran out: the agent must stop.
    BudgetExhausted,
    /// The agent ended its work.
    Finish(Box<FinishArgs>),
    /// Review gave its verdict.
    Verdict(Box<VerdictArgs>),
}

/// What a successful tool call changed, so the loop knows what its agents did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touch {
    File(String),
    Command,
    Requirement(String),
    Contract(String),
    /// (agent, key)
    Memory(String, String),
}

/// What a tool call produced, for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    pub content: String,
    pub is_error: bool,
    pub signal: Signal,
    pub touched: Option<Touch>,
}

impl ToolResult {
    fn ok(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: false, signal: Signal::None, touched: None }
    }

    fn error(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: true, signal: Signal::None, touched: None }
    }

    fn touching(mut self, touch: Touch) -> Self {
        self.touched = Some(touch);
        self
    }
}

fn spec<T: JsonSchema>(name: &str, description: &str) -> ToolSpec {
    let schema = serde_json::to_value(schema_for!(T)).expect("schemas encode as JSON");
    ToolSpec { name: name.to_string(), description: description.to_string(), parameters: compact(schema) }
}

/// A schema as small models read it best: no `$schema` URL (one read it as a
/// path), no titles, every `$ref` inlined.
pub fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    let defs = schema.as_object_mut().and_then(|o| o.remove("$defs")).unwrap_or_default();
    fn inline(value: &mut serde_json::Value, defs: &serde_json::Value, depth: usize) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("$schema");
                // The annotation, not a property that happens to be called "title".
                if map.get("title").is_some_and(|t| t.is_string()) {
                    map.remove("title");
                }
                if let Some(target) = map.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix("#/$defs/"))
                    && let Some(def) = defs.get(target)
                    && depth < 8
                {
                    let mut def = def.clone();
                    inline(&mut def, defs, depth + 1);
                    *value = def;
                    return;
                }
                for child in map.values_mut() {
                    inline(child, defs, depth);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| inline(i, defs, depth)),
            _ => {}
        }
    }
    inline(&mut schema, &defs, 0);
    schema
}

/// Most bytes of one tool result in the conversation.
pub const MAX_RESULT_BYTES: usize = 16 << 10;

/// `text` within `MAX_RESULT_BYTES`: its head and its tail, cut at lines, with
/// what was left out in between (`hint` says how to get it).
pub fn cap(text: &str, hint: &str) -> String {
    if text.len() <= MAX_RESULT_BYTES {
        return text.to_string();
    }
    let lines: Vec<&str> = text.lines().collect();
    let (mut head, mut head_bytes) = (0, 0);
    while head < lines.len() && head_bytes + lines[head].len() < MAX_RESULT_BYTES / 2 {
        head_bytes += lines[head].len() + 1;
        head += 1;
    }
    let (mut tail, mut tail_bytes) = (lines.len(), 0);
    while tail > head && tail_bytes + lines[tail - 1].len() < MAX_RESULT_BYTES / 2 {
        tail_bytes += lines[tail - 1].len() + 1;
        tail -= 1;
    }
    if head == 0 && tail == lines.len() {
        // One enormous line: cut by characters.
        let start: String = text.chars().take(MAX_RESULT_BYTES / 2).collect();
        let end: String = text.chars().rev().take(MAX_RESULT_BYTES / 2).collect::<Vec<_>>().into_iter().rev().collect();
        return format!("{start}\n… {} bytes omitted …\n{end}", text.len() - MAX_RESULT_BYTES);
    }
    let omitted = tail - head;
    format!(
        "{}\n… {omitted} lines omitted (lines {}–{}){hint} …\n{}",
        lines[..head].join("\n"),
        head + 1,
        tail,
        lines[tail..].join("\n")
    )
}

/// Lines `start..=end` of `text` (1-based), numbered like `  12| text`.
fn numbered(text: &str, start: Option<usize>, end: Option<usize>) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let total = lines.len();
    let first = start.unwrap_or(1).max(1);
    let last = end.unwrap_or(total).min(total);
    if total == 0 {
        return Ok("(empty file)".into());
    }
    if first > total {
        return Err(format!("start_line {first} is past the end: the file has {total} lines"));
    }
    if last < first {
        return Err(format!("end_line {last} is before start_line {first}"));
    }
    let width = last.to_string().len();
    let mut out: Vec<String> = (first..=last).map(|n| format!("{n:>width$}| {}", lines[n - 1])).collect();
    if last < total {
        out.push(format!("({} more lines; the file has {total})", total - last));
    }
    Ok(out.join("\n"))
}

/// The tools role `name` is offered: reading always; writing, deleting and
/// running where its policy grants any; SSOT tools per granted collection;
/// `review_verdict` for review; `finish`.
pub fn specs(name: &str, role: &RolePolicy) -> Vec<ToolSpec> {
    let mut tools = vec![
        spec::<ReadArgs>(
            "read_file",
            "Read a text file of the workspace, with line numbers; start_line/end_line read a part.",
        ),
        spec::<ListArgs>(
            "list_dir",
            "List a folder of the workspace ('.' for the root), depth levels down, with sizes.",
        ),
        spec::<SearchArgs>("search", "Find the lines matching a regular expression in the workspace: path:line: text."),
        spec::<RequirementArgs>("get_requirement", "Read one requirement."),
        spec::<ReadLogArgs>("list_requirements", "List every requirement of the project."),
        spec::<ContractArgs>("get_contract", "Read a contract (the latest version unless one is given)."),
        spec::<ReadLogArgs>("read_log", "Read the most recent execution log entries."),
        spec::<MemoryGetArgs>("memory_get", "Read one of your notes."),
        spec::<FinishArgs>(
            "finish",
            "End your work on the requirement: done or failed, with a summary. The only way to finish.",
        ),
    ];
    if name == REVIEW_ROLE {
        tools.push(spec::<VerdictArgs>(
            "review_verdict",
            "Give your verdict on the requirement you review: approve, or request_changes with findings.",
        ));
    }
    if !role.source.write.as_deref().unwrap_or_default().is_empty() {
        tools.push(spec::<EditArgs>(
            "edit_file",
            "Replace an exact piece of text in a file (it must occur once); the way to change part of a file.",
        ));
        tools.push(spec::<WriteArgs>("write_file", "Create a new file, or replace a whole file."));
        tools.push(spec::<PathArgs>("delete_file", "Delete a file or directory of the workspace."));
    }
    if !role.commands.is_empty() {
        tools.push(spec::<RunArgs>("run_command", "Run a command in the workspace sandbox (argv, no shell)."));
        tools.push(spec::<NoArgs>("run_tests", "Run the project's tests, as the loop does when it validates."));
    }
    let grants = |collection: &str| role.ssot.iter().any(|c| c == collection);
    if grants("requirements") {
        tools.push(spec::<CreateRequirementArgs>("create_requirement", "Add a requirement to the tree."));
        tools.push(spec::<UpdateRequirementArgs>(
            "update_requirement",
            "Change a requirement's text, role hint, acceptance criteria or dependencies.",
        ));
        tools.push(spec::<SetStatusArgs>("set_status", "Move a requirement along its status machine."));
        tools.push(spec::<RemoveRequirementArgs>(
            "remove_requirement",
            "Drop a requirement of your plan that is no longer needed (replace a plan instead of adding to it).",
        ));
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

/// The role that gives verdicts.
pub const REVIEW_ROLE: &str = "review";

/// Runs tool calls for one agent.
pub struct Tools<'a> {
    pub harness: &'a Harness,
    pub ctx: &'a ActionContext,
    /// The requirement the agent works on (or reviews).
    pub requirement: &'a str,
    /// The project's test commands (what `run_tests` runs).
    pub tests: &'a [Vec<String>],
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
            // An SSOT tool the role has no right to: the harness's refusal, naming its rule.
            let collection = match call.name.as_str() {
                "create_requirement" | "update_requirement" | "set_status" | "remove_requirement" => {
                    Some("requirements")
                }
                "propose_contract" => Some("contracts"),
                "annotate_log" => Some("log"),
                "memory_put" => Some("memory"),
                _ => None,
            };
            if let Some(collection) = collection
                && let Err(refused) = self.authorize(collection, &call.name).await
            {
                return refused;
            }
            let names: Vec<&str> = self.offered.iter().map(|t| t.name.as_str()).collect();
            return ToolResult::error(format!("unknown tool {:?}; available: {}", call.name, names.join(", ")));
        }
        match self.dispatch(call).await {
            Ok(result) | Err(result) => result,
        }
    }

    async fn act(&self, action: Action) -> Result<ActionOutput, ToolResult> {
        self.harness.perform(self.ctx, action, self.cancel.clone()).await.map_err(|e| {
            let signal = match e {
                HarnessError::Denied(_) => Signal::Denied,
                HarnessError::Budget(_) => Signal::BudgetExhausted,
                _ => Signal::None,
            };
            ToolResult { signal, ..ToolResult::error(e.to_string()) }
        })
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
            "read_file" => {
                let args = parse::<ReadArgs>(call)?;
                match self.act(Action::ReadFile { path: args.path.clone() }).await? {
                    ActionOutput::Read(text) => match numbered(&text, args.start_line, args.end_line) {
                        Ok(lines) => ToolResult::ok(cap(&lines, "; read them with start_line/end_line")),
                        Err(message) => ToolResult::error(format!("{}: {message}", args.path)),
                    },
                    other => ToolResult::ok(format!("{other:?}")),
                }
            }
            "list_dir" => {
                let args = parse::<ListArgs>(call)?;
                let depth = args.depth.unwrap_or(1).clamp(1, 6);
                match self.act(Action::ListTree { path: args.path, depth }).await? {
                    ActionOutput::Tree(entries, full) => {
                        let mut lines: Vec<String> = entries
                            .iter()
                            .map(|e| {
                                if e.is_dir {
                                    format!("{}/", e.path)
                                } else {
                                    format!("{} ({} bytes)", e.path, e.bytes)
                                }
                            })
                            .collect();
                        if lines.is_empty() {
                            lines.push("(empty)".into());
                        }
                        if full {
                            lines.push("(more entries not shown: list a subfolder)".into());
                        }
                        ToolResult::ok(cap(&lines.join("\n"), "; list a subfolder"))
                    }
                    other => ToolResult::ok(format!("{other:?}")),
                }
            }
            "search" => {
                let args = parse::<SearchArgs>(call)?;
                let path = args.path.unwrap_or_else(|| ".".into());
                match self.act(Action::Search { path, pattern: args.pattern }).await? {
                    ActionOutput::Matches(found, more) => {
                        let mut lines: Vec<String> =
                            found.iter().map(|m| format!("{}:{}: {}", m.path, m.line, m.text)).collect();
                        if lines.is_empty() {
                            lines.push("no match".into());
                        }
                        if more {
                            lines.push("(more matches not shown: narrow the pattern or the path)".into());
                        }
                        ToolResult::ok(cap(&lines.join("\n"), "; narrow the pattern"))
                    }
                    other => ToolResult::ok(format!("{other:?}")),
                }
            }
            "edit_file" => {
                let args = parse::<EditArgs>(call)?;
                if args.old.is_empty() {
                    return Err(ToolResult::error(
                        "old is empty: give the exact text to replace (write_file makes new files)",
                    ));
                }
                let text = match self.act(Action::ReadFile { path: args.path.clone() }).await? {
                    ActionOutput::Read(text) => text,
                    other => return Err(ToolResult::error(format!("unexpected {other:?}"))),
                };
                match text.matches(&args.old).count() {
                    0 => {
                        return Err(ToolResult::error(format!(
                            "old text not found in {}; read the file again and copy the text exactly (whitespace included)",
                            args.path
                        )));
                    }
                    1 => {}
                    n => {
                        return Err(ToolResult::error(format!(
                            "old text occurs {n} times in {}; include more of the surrounding lines so it matches once",
                            args.path
                        )));
                    }
                }
                let content = text.replacen(&args.old, &args.new, 1);
                self.act(Action::WriteFile { path: args.path.clone(), content }).await?;
                let file = self.harness.relative(&args.path).unwrap_or_else(|| args.path.clone());
                ToolResult::ok(format!("edited {}", args.path)).touching(Touch::File(file))
            }
            "write_file" => {
                let args = parse::<WriteArgs>(call)?;
                self.act(Action::WriteFile { path: args.path.clone(), content: args.content }).await?;
                let file = self.harness.relative(&args.path).unwrap_or_else(|| args.path.clone());
                ToolResult::ok(format!("wrote {}", args.path)).touching(Touch::File(file))
            }
            "run_tests" => {
                parse::<NoArgs>(call)?;
                if self.tests.is_empty() {
                    return Err(ToolResult::error("this project has no test command yet (no tests found)"));
                }
                let mut report = Vec::new();
                let mut failed = false;
                for argv in self.tests {
                    match self.act(Action::RunCommand { argv: argv.clone() }).await? {
                        ActionOutput::Ran(out) => {
                            failed |= !out.success();
                            report.push(format!("$ {}\n{}", argv.join(" "), ran(&out)));
                        }
                        other => report.push(format!("{other:?}")),
                    }
                }
                let text = cap(&report.join("\n"), "");
                let result = if failed { ToolResult::error(text) } else { ToolResult::ok(text) };
                result.touching(Touch::Command)
            }
            "delete_file" => {
                let args = parse::<PathArgs>(call)?;
                self.act(Action::DeleteFile { path: args.path.clone() }).await?;
                let file = self.harness.relative(&args.path).unwrap_or_else(|| args.path.clone());
                ToolResult::ok(format!("deleted {}", args.path)).touching(Touch::File(file))
            }
            "run_command" => match self.act(Action::RunCommand { argv: parse::<RunArgs>(call)?.argv }).await? {
                ActionOutput::Ran(out) => {
                    let text = cap(&ran(&out), "");
                    let result = if out.success() { ToolResult::ok(text) } else { ToolResult::error(text) };
                    result.touching(Touch::Command)
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
                // The same requirement twice under one parent is a replan (or a restarted
                // one) repeating itself: point at the one that exists.
                let all = ssot.all_requirements(project).await.map_err(fail)?;
                if let Some(twin) = all.iter().map(|r| &r.value).find(|r| {
                    r.parent_id == args.parent_id && r.title.trim() == args.title.trim() && r.status != Status::Done
                }) {
                    return Ok(ToolResult::ok(format!(
                        "{} exists already with this title under {}; not created twice (change it with update_requirement)",
                        twin.id,
                        if twin.parent_id.is_empty() { "the project" } else { &twin.parent_id }
                    ))
                    .touching(Touch::Requirement(twin.id.clone())));
                }
                let new = NewRequirement {
                    parent_id: args.parent_id,
                    title: args.title,
                    description: args.description,
                    role_hint: args.role_hint,
                    acceptance: args.acceptance,
                    depends_on: args.depends_on,
                };
                let created = ssot.create_requirement(project, new).await.map_err(fail)?;
                ToolResult::ok(format!("created {}", created.value.id)).touching(Touch::Requirement(created.value.id))
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
                ToolResult::ok(format!("updated {}", args.id)).touching(Touch::Requirement(args.id))
            }
            "remove_requirement" => {
                let args = parse::<RemoveRequirementArgs>(call)?;
                self.authorize("requirements", &format!("{} (removed: {})", args.id, args.reason)).await?;
                let all = ssot.all_requirements(project).await.map_err(fail)?;
                let Some(node) = all.iter().find(|r| r.value.id == args.id) else {
                    return Err(ToolResult::error(format!("{} does not exist", args.id)));
                };
                // Only the plan under the requirement being planned: never the task itself,
                // another run's tree, or work that was started or done.
                let mut parent = node.value.parent_id.as_str();
                while !parent.is_empty() && parent != self.requirement {
                    parent = all.iter().find(|r| r.value.id == parent).map_or("", |r| r.value.parent_id.as_str());
                }
                if parent != self.requirement {
                    return Err(ToolResult::error(format!(
                        "{} is not part of the plan under {}: only requirements you planned can be removed",
                        args.id, self.requirement
                    )));
                }
                if !matches!(node.value.status, Status::Pending | Status::Failed | Status::Blocked) {
                    return Err(ToolResult::error(format!(
                        "{} is {}: only pending, failed or blocked requirements can be removed",
                        args.id,
                        node.value.status.as_str()
                    )));
                }
                ssot.delete_requirement(project, &args.id, "").await.map_err(fail)?;
                ToolResult::ok(format!("removed {}", args.id)).touching(Touch::Requirement(args.id))
            }
            "set_status" => {
                let args = parse::<SetStatusArgs>(call)?;
                if args.status == Status::Done {
                    return Err(ToolResult::error(
                        "DONE is set by the loop once the work is validated and committed; call finish when you are done",
                    ));
                }
                self.authorize("requirements", &args.id).await?;
                let updated = ssot
                    .set_requirement_status(project, &args.id, args.status, &args.reason, &self.ctx.agent, "")
                    .await
                    .map_err(fail)?;
                ToolResult::ok(format!("{} is {}", updated.value.id, updated.value.status.as_str()))
                    .touching(Touch::Requirement(updated.value.id))
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
                    .touching(Touch::Contract(stored.value.name))
            }
            "get_contract" => {
                let args = parse::<ContractArgs>(call)?;
                let c = ssot.get_contract(project, &args.name, args.version).await.map_err(fail)?;
                json(serde_json::to_value(&c.value).unwrap_or_default())
            }
            "read_log" => {
                let limit = parse::<ReadLogArgs>(call)?.limit.unwrap_or(20).clamp(1, 200) as usize;
                let entries = ssot.recent_log(project, limit, limit as u64, |_| true).await.map_err(fail)?;
                let recent: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        let b = &e.body;
                        format!("#{} {} {} {} → {} {}", e.seq, b.agent, b.action, b.target, b.outcome, b.detail)
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
                let agent = memory_agent(&self.ctx.role);
                ssot.put_memory(project, &agent, &args.key, &args.value, 0, "").await.map_err(fail)?;
                ToolResult::ok(format!("kept {}", args.key)).touching(Touch::Memory(agent, args.key))
            }
            "review_verdict" => {
                let mut args = parse::<VerdictArgs>(call)?;
                if args.requirement.is_empty() {
                    args.requirement = self.requirement.to_string();
                }
                if args.requirement != self.requirement {
                    return Err(ToolResult::error(format!(
                        "you review {}, not {}; give the verdict for {}",
                        self.requirement, args.requirement, self.requirement
                    )));
                }
                if args.verdict == ReviewDecision::RequestChanges && args.findings.is_empty() {
                    return Err(ToolResult::error("request_changes needs findings: say what must change and where"));
                }
                self.authorize("log", &args.requirement).await?;
                let entry = NewLogEntry {
                    loop_id: self.ctx.loop_id.clone(),
                    epoch: self.ctx.epoch,
                    agent: self.ctx.agent.clone(),
                    action: "review_verdict".into(),
                    target: args.requirement.clone(),
                    outcome: args.verdict.as_str().into(),
                    detail: args.findings.iter().map(Finding::line).collect::<Vec<_>>().join("\n"),
                    ..NewLogEntry::default()
                };
                ssot.append_log(project, entry).await.map_err(fail)?;
                let content =
                    format!("verdict {} recorded for {}; now call finish", args.verdict.as_str(), args.requirement);
                ToolResult { signal: Signal::Verdict(Box::new(args)), ..ToolResult::ok(content) }
            }
            "finish" => {
                let args = parse::<FinishArgs>(call)?;
                ToolResult { signal: Signal::Finish(Box::new(args)), ..ToolResult::ok("finished") }
            }
            other => ToolResult::error(format!("tool {other:?} has no handler")),
        })
    }
}

/// A command's outcome for the model: status, then stdout and stderr.
fn ran(out: &crate::harness::sandbox::Outcome) -> String {
    let status = match (out.exit_code, out.signal) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "stopped".into(),
    };
    format!(
        "{status}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        if out.timed_out { " (timed out)" } else { "" },
        out.stdout,
        out.stderr
    )
}

/// Memory belongs to the role, so it carries across epochs and agent instances.
fn memory_agent(role: &str) -> String {
    role.to_string()
}
