//! Agent activity while agents run: their tool calls become loop events
//! (stamped with the loop's progress as of their turn), and what they
//! changed — files per agent, requirements, contracts and memory — is
//! collected for verification and for an exact rollback.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::sync::Notify;

use super::fsm::first_line;
use crate::agents::llm::{TokenUsage, ToolCall};
use crate::agents::runtime::Observer;
use crate::agents::tools::{Signal, ToolResult, Touch};
use crate::harness::executor::ActionContext;
use crate::ssot::loops::{EventKind, LoopEvent, Phase, Touched};

/// What one agent changed in the workspace.
#[derive(Debug, Clone, Default)]
pub struct AgentFiles {
    pub files: BTreeSet<String>,
    /// It ran commands, which may have written files too.
    pub ran_commands: bool,
}

/// Agent activity waiting to be written.
#[derive(Default)]
pub struct Activity {
    events: Mutex<Vec<LoopEvent>>,
    touched: Mutex<Touched>,
    files: Mutex<BTreeMap<String, AgentFiles>>,
    pub added: Notify,
    /// Tokens spent since the record was last saved, and the record's count then.
    pub tokens: AtomicU64,
    pub base: AtomicU64,
    /// Requirements done and in all, as of the last save.
    pub done: AtomicU32,
    pub total: AtomicU32,
}

impl Activity {
    /// Queues `event`, stamped with the loop's token count as of its turn.
    pub fn push(&self, mut event: LoopEvent) {
        event.tokens = self.base.load(Ordering::SeqCst) + self.tokens.load(Ordering::SeqCst);
        event.done = self.done.load(Ordering::SeqCst);
        event.total = self.total.load(Ordering::SeqCst);
        self.events.lock().expect("activity lock").push(event);
        self.added.notify_one();
    }

    pub fn take(&self) -> Vec<LoopEvent> {
        std::mem::take(&mut *self.events.lock().expect("activity lock"))
    }

    /// SSOT changes made since the last call.
    pub fn take_touched(&self) -> Touched {
        std::mem::take(&mut *self.touched.lock().expect("activity lock"))
    }

    /// What `agent` changed in the workspace (and forgets it).
    pub fn take_files(&self, agent: &str) -> AgentFiles {
        self.files.lock().expect("activity lock").remove(agent).unwrap_or_default()
    }

    fn touch(&self, agent: &str, touch: &Touch) {
        match touch {
            Touch::File(path) => {
                let mut files = self.files.lock().expect("activity lock");
                files.entry(agent.to_string()).or_default().files.insert(path.clone());
            }
            Touch::Command => {
                let mut files = self.files.lock().expect("activity lock");
                files.entry(agent.to_string()).or_default().ran_commands = true;
            }
            Touch::Requirement(id) => {
                self.touched.lock().expect("activity lock").requirements.insert(id.clone());
            }
            Touch::Contract(name) => {
                self.touched.lock().expect("activity lock").contracts.insert(name.clone());
            }
            Touch::Memory(agent, key) => {
                self.touched.lock().expect("activity lock").memory.insert((agent.clone(), key.clone()));
            }
        }
    }
}

/// Turns one agent's tool calls into events and touches.
pub struct AgentObserver<'a> {
    pub activity: &'a Activity,
    pub requirement: String,
    pub phase: Phase,
}

/// What a tool call touched, for people: the path, the command, the id.
fn call_target(call: &ToolCall) -> String {
    let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap_or_default();
    if let Some(argv) = args["argv"].as_array() {
        return argv.iter().filter_map(|a| a.as_str()).collect::<Vec<_>>().join(" ");
    }
    ["path", "id", "name", "key", "title", "note", "verdict"]
        .iter()
        .find_map(|k| args[*k].as_str().map(|v| first_line(v, 120)))
        .unwrap_or_default()
}

impl Observer for AgentObserver<'_> {
    fn turn(&self, _ctx: &ActionContext, usage: &TokenUsage) {
        self.activity.tokens.fetch_add(usage.total(), Ordering::SeqCst);
    }

    fn tool(&self, ctx: &ActionContext, call: &ToolCall, result: &ToolResult) {
        if let Some(touch) = &result.touched {
            self.activity.touch(&ctx.agent, touch);
        }
        if matches!(result.signal, Signal::Finish(_)) {
            return;
        }
        let kind = match result.signal {
            Signal::Denied => EventKind::Denied,
            Signal::Verdict(_) => EventKind::Review,
            _ => EventKind::ToolCall,
        };
        let outcome =
            if result.is_error { format!(" → {}", first_line(&result.content, 160)) } else { String::new() };
        self.activity.push(LoopEvent {
            kind,
            phase: Some(self.phase),
            agent: ctx.agent.clone(),
            requirement: self.requirement.clone(),
            message: format!("{} {}{outcome}", call.name, call_target(call)),
            ..Default::default()
        });
    }
}
