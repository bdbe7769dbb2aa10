//! The `loop` section of `.maestro/config.yaml`:
//!
//! ```yaml
//! loop:
//!   retries: 2            # full-cycle retries before a loop escalates to a human
//!   test_command: [python3, -m, unittest, discover, -s, tests, -v]   # default: detected; [] turns tests off
//!   tests_dir: tests      # a configured test command runs once this directory exists ("" : always)
//!   require_tests: true   # code changes count as verified only after a passing test run
//!   max_agents: 4         # requirements claimed per epoch
//!   max_turns: 24         # model turns per agent run
//!   max_tokens: 4096      # output tokens per model turn
//!   commit_to_current_branch: false   # true: the work lands on your branch, not maestro/<loop>
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::harness::policy::section;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopConfig {
    pub retries: u32,
    /// `None`: detect the runner from the workspace; `Some([])`: no tests.
    pub test_command: Option<Vec<String>>,
    pub tests_dir: String,
    pub require_tests: bool,
    pub max_agents: usize,
    pub max_turns: usize,
    pub max_tokens: u32,
    /// A successful loop's commits go onto the checked-out branch instead of
    /// the branch `maestro/<loop>`.
    pub commit_to_current_branch: bool,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            retries: 2,
            test_command: None,
            tests_dir: "tests".into(),
            require_tests: true,
            max_agents: 4,
            max_turns: 24,
            max_tokens: 4096,
            commit_to_current_branch: false,
        }
    }
}

impl LoopConfig {
    pub fn parse(text: &str) -> Result<LoopConfig, String> {
        let config: LoopConfig = match section(text, "loop")? {
            Some(value) => yaml_serde::from_value(value).map_err(|e| format!("loop: {e}"))?,
            None => LoopConfig::default(),
        };
        if config.max_agents == 0 || config.max_turns == 0 {
            return Err("loop: max_agents and max_turns must be at least 1".into());
        }
        Ok(config)
    }

    /// The workspace's configuration (defaults when it has none).
    pub fn load(workspace: &Path) -> Result<LoopConfig, String> {
        let path = workspace.join(".maestro/config.yaml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LoopConfig::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example is a working configuration.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```yaml\nloop:").expect("the README has a loop example") + "```yaml\n".len();
        let end = start + readme[start..].find("```").expect("the example ends");
        let config = LoopConfig::parse(&readme[start..end]).unwrap();
        assert!(config.require_tests && config.test_command.is_some_and(|c| c[0] == "python3"));
    }

    /// Every key `maestroctl config set --project` offers is one the daemon
    /// reads: a file setting it parses (each section denies unknown keys).
    #[test]
    fn every_key_maestroctl_sets_is_read_here() {
        use maestro_shared::settings::{Kind, PROJECT_KEYS};
        for key in PROJECT_KEYS.iter() {
            let value = match key.kind {
                Kind::Text => "x".to_string(),
                Kind::Count => "3".into(),
                Kind::Number => "0.5".into(),
                Kind::Flag => "true".into(),
                Kind::Choice(choices) => choices[0].into(),
                Kind::List => "[a]".into(),
                Kind::Lists => "[[a]]".into(),
                Kind::Map => "{X-Name: y}".into(),
                Kind::Records(fields) => {
                    let sample = |field: &str| if field == "applies_to" { "content" } else { "x" };
                    let record: Vec<String> = fields.iter().map(|f| format!("{f}: {}", sample(f))).collect();
                    format!("[{{{}}}]", record.join(", "))
                }
            };
            let path = key.path.replace("llm.roles.*", "llm.roles.review").replace("roles.*", "roles.backend");
            let mut text = String::new();
            let segments: Vec<&str> = path.split('.').collect();
            for (depth, segment) in segments.iter().enumerate() {
                let pad = "  ".repeat(depth);
                if depth + 1 == segments.len() {
                    text.push_str(&format!("{pad}{segment}: {value}\n"));
                } else {
                    text.push_str(&format!("{pad}{segment}:\n"));
                }
            }
            let parsed = match segments[0] {
                "llm" => crate::agents::llm::config::RawLlm::from_project_config(&text).map(|_| ()),
                "loop" => LoopConfig::parse(&text).map(|_| ()),
                "harness" => crate::harness::policy::parse(&text).map(|_| ()),
                _ => section(&text, segments[0]).map(|_| ()),
            };
            assert!(parsed.is_ok(), "{}: {parsed:?}\n{text}", key.path);
        }
        assert!(LoopConfig::parse("loop:\n  commit_to_currnt_branch: true\n").is_err(), "the test can fail");
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(LoopConfig::parse("").unwrap(), LoopConfig::default());
        let config = LoopConfig::parse("loop:\n  retries: 0\n  test_command: [npm, test]\n").unwrap();
        assert_eq!((config.retries, config.test_command.map(|c| c.len()), config.max_agents), (0, Some(2), 4));
        let off = LoopConfig::parse("loop:\n  test_command: []\n  require_tests: false\n").unwrap();
        assert_eq!((off.test_command, off.require_tests), (Some(Vec::new()), false));
        assert_eq!(LoopConfig::parse("").unwrap().test_command, None, "detected by default");
        assert!(LoopConfig::parse("loop:\n  retry: 1\n").unwrap_err().contains("retry"));
        assert!(LoopConfig::parse("loop:\n  max_agents: 0\n").is_err());
    }
}
