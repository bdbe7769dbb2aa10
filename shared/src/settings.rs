//! The keys of the two configuration files, with what each takes: what
//! `maestroctl config set|get|unset` accepts and checks. `maestrod` reads the
//! project file; its tests parse a file that sets every key listed here, so a
//! key the daemon stops reading fails them.

use std::sync::LazyLock;

/// What a key's value may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any text.
    Text,
    /// A whole number, zero or more.
    Count,
    /// A decimal number.
    Number,
    /// `true` or `false`.
    Flag,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A list of words: `[python3, -m, pytest]`.
    List,
    /// A list of lists of words: `[[python3, -m, pytest], [npm, test]]`.
    Lists,
    /// A mapping of names to text: `{X-Title: maestro}`.
    Map,
    /// A list of mappings with these text fields, all of them given:
    /// `[{id: no-eval, applies_to: content, pattern: 'eval\(', reason: …}]`.
    Records(&'static [&'static str]),
}

impl Kind {
    /// How the value is written, for messages and `config keys`.
    pub fn describe(self) -> String {
        match self {
            Kind::Text => "text".into(),
            Kind::Count => "a whole number".into(),
            Kind::Number => "a number".into(),
            Kind::Flag => "true or false".into(),
            Kind::Choice(choices) => format!("one of {}", choices.join(", ")),
            Kind::List => "a list, e.g. [a, b]".into(),
            Kind::Lists => "a list of lists, e.g. [[python3, -m, pytest]]".into(),
            Kind::Map => "a mapping, e.g. {Name: value}".into(),
            Kind::Records(fields) => format!("a list of {{{}}}", fields.join(", ")),
        }
    }
}

/// One key: its dotted path (`*` stands for a name of your choosing, such as
/// a role), what it takes and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub path: String,
    pub kind: Kind,
    pub help: &'static str,
}

/// The output formats of `maestroctl -o`.
pub const OUTPUTS: &[&str] = &["table", "json", "yaml"];
/// When `maestroctl` colours its output.
pub const COLORS: &[&str] = &["auto", "always", "never"];
/// The model providers.
pub const PROVIDERS: &[&str] = &["openai", "anthropic", "scripted", "replay"];

fn key(path: impl Into<String>, kind: Kind, help: &'static str) -> Key {
    Key { path: path.into(), kind, help }
}

/// `~/.maestro/config.yaml`: the user's own defaults.
pub static USER_KEYS: LazyLock<Vec<Key>> = LazyLock::new(|| {
    vec![
        key("server", Kind::Text, "the daemon: http://HOST:PORT, https://HOST:PORT or unix:/PATH"),
        key("project", Kind::Text, "the project commands act on when none is given"),
        key("output", Kind::Choice(OUTPUTS), "how listings are printed"),
        key("color", Kind::Choice(COLORS), "colour: on terminals only (auto), always or never"),
    ]
});

const LLM_FIELDS: &[(&str, Kind, &str)] = &[
    ("provider", Kind::Choice(PROVIDERS), "the model's wire protocol (openai also serves Ollama, vLLM, llama.cpp)"),
    ("model", Kind::Text, "the model's name at the provider"),
    ("base_url", Kind::Text, "the provider's URL, e.g. http://localhost:11434/v1"),
    ("api_key_env", Kind::Text, "the environment variable that holds the key (never the key itself)"),
    ("script", Kind::Text, "the scripted provider's script file"),
    ("replay_file", Kind::Text, "the recording the replay provider plays back"),
    ("timeout_seconds", Kind::Count, "seconds one model call may take"),
    ("retries", Kind::Count, "retries of a failed model call"),
    ("max_tokens", Kind::Count, "output tokens per model call"),
    ("temperature", Kind::Number, "sampling temperature"),
    ("context_window", Kind::Count, "the model's context window in tokens"),
    ("tool_choice", Kind::Choice(&["auto", "required", "none", "off"]), "how tools are offered (off: not sent)"),
    ("headers", Kind::Map, "extra HTTP headers sent to the provider"),
];

const ROLE_FIELDS: &[(&str, Kind, &str)] = &[
    ("read", Kind::List, "globs the role may read"),
    ("write", Kind::List, "globs the role may write"),
    ("deny", Kind::List, "globs the role may never touch"),
    ("commands", Kind::Lists, "argv prefixes the role may run"),
    ("shell", Kind::Flag, "may run shells (sh -c)"),
    ("network", Kind::Flag, "may use the network"),
    ("ssot", Kind::List, "SSOT collections the role may change: requirements, contracts, memory, log"),
];

/// `.maestro/config.yaml` in a project folder, read by the daemon.
pub static PROJECT_KEYS: LazyLock<Vec<Key>> = LazyLock::new(project_keys);

fn project_keys() -> Vec<Key> {
    let mut keys = vec![key("project.id", Kind::Text, "the project's id on the daemon")];
    for (field, kind, help) in LLM_FIELDS {
        keys.push(key(format!("llm.{field}"), *kind, help));
    }
    for (field, kind, help) in LLM_FIELDS {
        keys.push(key(format!("llm.roles.*.{field}"), *kind, help));
    }
    keys.extend([
        key("loop.retries", Kind::Count, "full-cycle retries before a loop escalates to you"),
        key("loop.test_command", Kind::List, "the tests run at every VALID ([] : none)"),
        key("loop.tests_dir", Kind::Text, "the test command runs once this folder exists"),
        key("loop.require_tests", Kind::Flag, "code counts as verified only after passing tests"),
        key("loop.max_agents", Kind::Count, "requirements worked on per epoch"),
        key("loop.max_turns", Kind::Count, "model turns per agent run"),
        key("loop.max_tokens", Kind::Count, "output tokens per model turn"),
        key("loop.commit_to_current_branch", Kind::Flag, "commit on your branch, not maestro/<loop>"),
        key("harness.deny", Kind::List, "globs no role may read or write (replaces the default)"),
    ]);
    for (field, kind, help) in ROLE_FIELDS {
        keys.push(key(format!("harness.roles.*.{field}"), *kind, help));
    }
    keys.extend([
        key(
            "harness.validator.rules",
            Kind::Records(&["id", "applies_to", "pattern", "reason"]),
            "extra validator rules (applies_to: content or command; pattern: a regex)",
        ),
        key("harness.validator.disable", Kind::List, "built-in validator rules switched off"),
        key("harness.validator.max_deleted_files", Kind::Count, "most files one action deletes"),
        key("harness.validator.max_deleted_lines", Kind::Count, "most lines one action deletes"),
    ]);
    for scope in ["per_agent_epoch", "per_loop"] {
        for (field, help) in [
            ("tokens", "model tokens (0: no limit)"),
            ("steps", "harness steps (0: no limit)"),
            ("wall_seconds", "seconds of wall time (0: no limit)"),
        ] {
            keys.push(key(format!("harness.budget.{scope}.{field}"), Kind::Count, help));
        }
    }
    keys
}

/// The key of `keys` that `path` names (`*` matches one name), if any.
pub fn find<'k>(keys: &'k [Key], path: &str) -> Option<&'k Key> {
    let given: Vec<&str> = path.split('.').collect();
    keys.iter().find(|key| {
        let pattern: Vec<&str> = key.path.split('.').collect();
        pattern.len() == given.len()
            && pattern.iter().zip(&given).all(|(p, g)| {
                *p == *g
                    || (*p == "*" && !g.is_empty() && g.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_with_role_names() {
        let keys = &PROJECT_KEYS;
        assert_eq!(find(keys, "llm.provider").unwrap().kind, Kind::Choice(PROVIDERS));
        assert_eq!(find(keys, "llm.roles.review.model").unwrap().path, "llm.roles.*.model");
        assert_eq!(find(keys, "harness.roles.backend.commands").unwrap().kind, Kind::Lists);
        assert!(find(keys, "llm.roles..model").is_none());
        assert!(find(keys, "llm.provder").is_none());
        assert!(find(&USER_KEYS, "output").is_some());
    }
}
