//! Which model each role talks to, from the `llm` section of
//! `.maestro/config.yaml`: `llm.provider` (`openai`, `anthropic` or
//! `scripted`), `llm.model`, `llm.base_url`, `llm.api_key_env` (the name of
//! the environment variable holding the key), and per role under
//! `llm.roles.<role>` the same keys. Keys come from the environment only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::anthropic::Anthropic;
use super::http::RetryPolicy;
use super::openai::OpenAi;
use super::recording::{AgentKey, Replay};
use super::scripted::Scripted;
use super::{LlmError, LlmProvider};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlm {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    /// For `scripted`: the script file, relative to the workspace.
    pub script: Option<String>,
    /// For `replay`: a recording (`maestroctl run --record FILE`), relative to the workspace.
    pub replay_file: Option<String>,
    /// Seconds one request may take (default 300).
    pub timeout_seconds: Option<u64>,
    /// Further attempts after a failed request (429, 5xx; a timeout at most once). Default 4.
    pub retries: Option<u32>,
    /// Output tokens per model turn (default: the loop's `max_tokens`).
    pub max_tokens: Option<u32>,
    /// Sampling temperature; left out, the provider's default applies.
    pub temperature: Option<f32>,
    /// Tokens the model reads at most; old tool results are elided to stay below it (default 32768).
    pub context_window: Option<u32>,
    /// `auto` (default), `required`, `none`, or `off` to not send `tool_choice` at all.
    pub tool_choice: Option<String>,
    /// Extra HTTP headers sent with every request.
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub roles: BTreeMap<String, RawLlmRole>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlmRole {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub script: Option<String>,
    pub replay_file: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub retries: Option<u32>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub context_window: Option<u32>,
    pub tool_choice: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Scripted,
    Replay,
}

/// One role's resolved model settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmSettings {
    pub provider: ProviderKind,
    pub model: String,
    pub base_url: String,
    pub api_key_env: String,
    /// `api_key_env` was set in the configuration: the user says this server needs a key.
    pub key_named: bool,
    pub script: Option<PathBuf>,
    pub replay_file: Option<PathBuf>,
    /// Timeouts and retries of the requests.
    pub policy: RetryPolicy,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub context_window: u32,
    pub wire: WireOptions,
}

/// How a request goes on the wire, beyond the model and the messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireOptions {
    /// `tool_choice` when tools are offered; `None` leaves it out.
    pub tool_choice: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// Where API keys come from, first found wins: the keys the loop was started
/// with (from the environment of a local `maestroctl run`), the daemon's
/// environment, then `~/.maestro/credentials.yaml` of the daemon's user
/// (`VARIABLE: value` lines; it must not be readable by others), read at
/// each agent run so that a key added there works at once.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub given: BTreeMap<String, String>,
    /// The credentials file (default `~/.maestro/credentials.yaml`).
    pub file: Option<PathBuf>,
}

impl Keys {
    pub fn with_file(given: BTreeMap<String, String>) -> Keys {
        let file = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".maestro/credentials.yaml"));
        Keys { given, file }
    }

    /// The value of `variable`, or an error saying why the credentials file is not used.
    pub fn find(&self, variable: &str) -> Result<Option<String>, String> {
        if let Some(value) = self.given.get(variable).filter(|v| !v.is_empty()) {
            return Ok(Some(value.clone()));
        }
        if let Some(value) = std::env::var(variable).ok().filter(|v| !v.is_empty()) {
            return Ok(Some(value));
        }
        let Some(path) = &self.file else { return Ok(None) };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(format!("{} is readable by others (mode {:o}); chmod 600 it", path.display(), mode & 0o777));
        }
        let map: BTreeMap<String, String> =
            yaml_serde::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(map.get(variable).filter(|v| !v.is_empty()).cloned())
    }

    /// A missing key, as a person can fix it.
    pub fn missing(&self, role: &str, variable: &str) -> String {
        let file = self.file.as_ref().map_or("~/.maestro/credentials.yaml".to_string(), |f| f.display().to_string());
        format!(
            "no API key for role {role}: set {variable} in maestrod's environment, add `{variable}: …` to {file} (chmod 600), \
             or export it where you run `maestroctl run` when maestroctl started the daemon"
        )
    }
}

/// The context window assumed when none is configured.
pub const DEFAULT_CONTEXT_WINDOW: u32 = 32_768;

impl RawLlm {
    /// The `llm` section of a project configuration's YAML text.
    pub fn from_project_config(text: &str) -> Result<RawLlm, String> {
        match crate::harness::policy::section(text, "llm")? {
            Some(value) => yaml_serde::from_value(value).map_err(|e| format!("llm: {e}")),
            None => Ok(RawLlm::default()),
        }
    }

    /// The settings of `role`: its own keys over the project's, over the provider's defaults.
    pub fn for_role(&self, role: &str, workspace: &Path) -> Result<LlmSettings, LlmError> {
        let own = self.roles.get(role).cloned().unwrap_or_default();
        let invalid = LlmError::Config;
        let project_provider = self.provider.as_deref().unwrap_or("openai");
        let role_provider = own.provider.as_deref().unwrap_or(project_provider);
        // The project's model, URL and key variable belong to its provider: a role
        // that switches provider starts from that provider's defaults instead.
        let inherit = role_provider == project_provider;
        let project = |value: &Option<String>| if inherit { value.clone() } else { None };
        let provider = match role_provider {
            "openai" => ProviderKind::OpenAi,
            "anthropic" => ProviderKind::Anthropic,
            "scripted" => ProviderKind::Scripted,
            "replay" => ProviderKind::Replay,
            other => {
                return Err(invalid(format!("llm.provider: {other:?} is not openai, anthropic, scripted or replay")));
            }
        };
        let (default_url, default_key, default_model) = match provider {
            ProviderKind::OpenAi => ("https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o-mini"),
            ProviderKind::Anthropic => ("https://api.anthropic.com", "ANTHROPIC_API_KEY", "claude-sonnet-4-5"),
            ProviderKind::Scripted => ("", "", "scripted"),
            ProviderKind::Replay => ("", "", "replay"),
        };
        let script = own.script.or_else(|| project(&self.script)).map(|s| workspace.join(s));
        if provider == ProviderKind::Scripted && script.is_none() {
            return Err(invalid("llm.script: the scripted provider needs a script file".into()));
        }
        let replay_file = own.replay_file.or_else(|| project(&self.replay_file)).map(|s| workspace.join(s));
        if provider == ProviderKind::Replay && replay_file.is_none() {
            return Err(invalid(
                "llm.replay_file: the replay provider needs a recording (maestroctl run --record FILE)".into(),
            ));
        }
        let mut policy = RetryPolicy::default();
        if let Some(seconds) = own.timeout_seconds.or(self.timeout_seconds) {
            if seconds == 0 {
                return Err(invalid("llm.timeout_seconds: must be at least 1".into()));
            }
            policy.request_timeout = std::time::Duration::from_secs(seconds);
        }
        if let Some(retries) = own.retries.or(self.retries) {
            policy.attempts = retries.saturating_add(1);
        }
        let temperature = own.temperature.or(self.temperature);
        if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(invalid("llm.temperature: between 0 and 2".into()));
        }
        let context_window = own.context_window.or(self.context_window).unwrap_or(DEFAULT_CONTEXT_WINDOW);
        if context_window < 1024 {
            return Err(invalid("llm.context_window: at least 1024 tokens".into()));
        }
        let tool_choice = match own.tool_choice.or_else(|| self.tool_choice.clone()).as_deref().unwrap_or("auto") {
            "off" => None,
            choice @ ("auto" | "required" | "none") => Some(choice.to_string()),
            other => return Err(invalid(format!("llm.tool_choice: {other:?} is not auto, required, none or off"))),
        };
        let mut headers: Vec<(String, String)> = self.headers.clone().unwrap_or_default().into_iter().collect();
        for (name, value) in own.headers.unwrap_or_default() {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            headers.push((name, value));
        }
        let named_key = own.api_key_env.or_else(|| project(&self.api_key_env));
        Ok(LlmSettings {
            key_named: named_key.is_some(),
            replay_file,
            policy,
            max_tokens: own.max_tokens.or(self.max_tokens),
            temperature,
            context_window,
            wire: WireOptions { tool_choice, headers },
            provider,
            model: own.model.or_else(|| project(&self.model)).unwrap_or_else(|| default_model.into()),
            base_url: own.base_url.or_else(|| project(&self.base_url)).unwrap_or_else(|| default_url.into()),
            api_key_env: named_key.unwrap_or_else(|| default_key.into()),
            script,
        })
    }
}

impl LlmSettings {
    /// Builds the provider, reading the key from the environment variable named
    /// by `api_key_env` (OpenAI-compatible servers may run without one).
    pub fn provider(&self, role: &str, policy: RetryPolicy) -> Result<Arc<dyn LlmProvider>, LlmError> {
        self.provider_for(role, "", 1, policy, &Keys::default())
    }

    /// Whether this provider cannot work without a key: Anthropic, OpenAI's own
    /// API, or any server whose key variable the configuration names (local
    /// OpenAI-compatible servers without `api_key_env` run without one).
    pub fn needs_key(&self) -> bool {
        match self.provider {
            ProviderKind::Anthropic => true,
            ProviderKind::OpenAi => self.key_named || self.base_url.contains("api.openai.com"),
            ProviderKind::Scripted | ProviderKind::Replay => false,
        }
    }

    /// The provider of `role` for its `attempt` at `requirement` (a script may narrow to them).
    pub fn provider_for(
        &self,
        role: &str,
        requirement: &str,
        attempt: u32,
        policy: RetryPolicy,
        keys: &Keys,
    ) -> Result<Arc<dyn LlmProvider>, LlmError> {
        let key = || keys.find(&self.api_key_env).ok().flatten();
        Ok(match self.provider {
            ProviderKind::OpenAi => Arc::new(OpenAi::new(&self.base_url, key(), policy).with_wire(self.wire.clone())),
            ProviderKind::Anthropic => {
                let key = key().ok_or_else(|| LlmError::MissingKey {
                    provider: "anthropic".into(),
                    variable: self.api_key_env.clone(),
                })?;
                Arc::new(Anthropic::new(&self.base_url, key, policy).with_wire(self.wire.clone()))
            }
            ProviderKind::Scripted => {
                let path = self.script.as_deref().expect("for_role requires a script for the scripted provider");
                Arc::new(Scripted::load_for(path, role, requirement, attempt)?)
            }
            ProviderKind::Replay => {
                let path = self.replay_file.as_deref().expect("for_role requires a recording for replay");
                let agent = AgentKey { role: role.to_string(), requirement: requirement.to_string(), attempt };
                Arc::new(Replay::load_for(path, Some(agent))?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example is a working configuration.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../../README.md");
        let start = readme.find("```yaml\nllm:").expect("the README has an llm example") + "```yaml\n".len();
        let end = start + readme[start..].find("```").expect("the example ends");
        let llm = RawLlm::from_project_config(&readme[start..end]).unwrap();
        let review = llm.for_role("review", Path::new("/w")).unwrap();
        assert_eq!((review.provider, review.model.as_str()), (ProviderKind::Anthropic, "claude-sonnet-4-5"));
        assert_eq!(llm.for_role("backend", Path::new("/w")).unwrap().model, "gpt-4o-mini");
        let error = RawLlm::from_project_config("llm:\n  modle: x\n").unwrap_err();
        assert!(error.contains("modle"), "{error}");
        let error = RawLlm::from_project_config("lm:\n  model: x\n").unwrap_err();
        assert!(error.contains("unknown section"), "{error}");
    }

    #[test]
    fn roles_override_the_project_and_defaults_fill_the_rest() {
        let raw: RawLlm = yaml_serde::from_str(
            "provider: openai\nmodel: qwen2.5-coder\nbase_url: http://localhost:11434/v1\nroles:\n  review:\n    provider: anthropic\n    model: claude-opus-4-1\n",
        )
        .unwrap();
        let ws = Path::new("/w");
        let backend = raw.for_role("backend", ws).unwrap();
        assert_eq!(
            backend,
            LlmSettings {
                provider: ProviderKind::OpenAi,
                model: "qwen2.5-coder".into(),
                base_url: "http://localhost:11434/v1".into(),
                api_key_env: "OPENAI_API_KEY".into(),
                key_named: false,
                script: None,
                replay_file: None,
                policy: RetryPolicy::default(),
                max_tokens: None,
                temperature: None,
                context_window: DEFAULT_CONTEXT_WINDOW,
                wire: WireOptions { tool_choice: Some("auto".into()), headers: Vec::new() },
            }
        );
        let review = raw.for_role("review", ws).unwrap();
        assert_eq!((review.provider, review.model.as_str()), (ProviderKind::Anthropic, "claude-opus-4-1"));
        // Switching provider starts from that provider's defaults, not the project's URL.
        assert_eq!(
            (review.base_url.as_str(), review.api_key_env.as_str()),
            ("https://api.anthropic.com", "ANTHROPIC_API_KEY")
        );
        let bad: RawLlm = yaml_serde::from_str("provider: gemini\n").unwrap();
        assert!(bad.for_role("backend", ws).unwrap_err().to_string().contains("llm.provider"));
        let missing = LlmSettings { api_key_env: "MAESTRO_TEST_UNSET_KEY_VARIABLE".into(), ..review };
        let error = missing.provider("review", RetryPolicy::default()).err().unwrap();
        assert!(matches!(error, LlmError::MissingKey { .. }), "{error:?}");
    }
}
