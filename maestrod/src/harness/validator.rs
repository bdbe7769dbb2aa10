//! The validator: rejects dangerous content and commands before anything
//! runs. Rules are data (id, what they apply to, a regex, a one-line reason);
//! users add their own or disable built-ins in the project configuration.
//! Two checks need structure rather than a pattern: `rm -r` aimed outside
//! the workspace, and deletions larger than the configured thresholds.

use regex::Regex;
use serde::Deserialize;

/// What a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Applies {
    /// Text an agent writes into a file.
    Content,
    /// A command line (argv joined with spaces).
    Command,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    pub applies_to: Applies,
    pub pattern: String,
    pub reason: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidator {
    /// Extra rules, checked after the built-in ones.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Ids of built-in rules to switch off.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Most files one action may delete (default 20).
    pub max_deleted_files: Option<usize>,
    /// Most lines one action may delete (default 400).
    pub max_deleted_lines: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub applies_to: Applies,
    pub pattern: Regex,
    pub reason: String,
}

/// A refusal: the rule's id and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Validator {
    pub rules: Vec<Rule>,
    pub max_deleted_files: usize,
    pub max_deleted_lines: usize,
}

/// (id, applies to, pattern, reason) of the built-in rules.
const BUILT_IN: [(&str, Applies, &str, &str); 18] = [
    ("content.eval", Applies::Content, r"\beval\s*\(", "eval() runs arbitrary code"),
    ("content.exec", Applies::Content, r"(?m)(^|[^.\w])exec\s*\(", "exec() runs arbitrary code"),
    ("content.os-system", Applies::Content, r"\bos\.(system|popen)\s*\(", "os.system/os.popen run a shell"),
    ("content.shell-true", Applies::Content, r"shell\s*=\s*True", "subprocess with shell=True runs a shell"),
    (
        "content.dynamic-import",
        Applies::Content,
        r"\b__import__\s*\(|\bimportlib\.import_module\s*\(\s*['\x22](os|subprocess|pty|ctypes|shutil)",
        "a dynamic import hides which code runs",
    ),
    (
        "content.reflection",
        Applies::Content,
        r"\bgetattr\s*\(\s*(os|subprocess|pty|sys|builtins|__builtins__|ctypes)\s*,",
        "reflective access to os/subprocess hides a call",
    ),
    (
        "content.shell-argv",
        Applies::Content,
        r"\[\s*['\x22](/usr)?(/bin/)?(ba|z|da|k)?sh['\x22]\s*,\s*['\x22]-c['\x22]",
        "running `sh -c` runs a shell",
    ),
    (
        "content.process-spawn",
        Applies::Content,
        r"\bos\.(exec[lv]p?e?|spawn[lv]p?e?|posix_spawnp?|fork)\s*\(|\bpty\.spawn\s*\(",
        "os.exec*/os.spawn*/pty.spawn start other programs",
    ),
    (
        "content.child-process",
        Applies::Content,
        r#"child_process"#,
        "Node child_process spawns processes outside the harness",
    ),
    (
        "content.private-key",
        Applies::Content,
        r"-----BEGIN ([A-Z]+ )*PRIVATE KEY-----",
        "a private key must not be committed",
    ),
    ("content.aws-key", Applies::Content, r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", "an AWS access key must not be committed"),
    (
        "content.github-token",
        Applies::Content,
        r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
        "a GitHub token must not be committed",
    ),
    ("content.slack-token", Applies::Content, r"\bxox[abpr]-[A-Za-z0-9-]{10,}", "a Slack token must not be committed"),
    ("content.openai-key", Applies::Content, r"\bsk-[A-Za-z0-9_-]{20,}", "an API key must not be committed"),
    (
        "command.curl-pipe-shell",
        Applies::Command,
        r"\b(curl|wget)\b[^|]*\|\s*(sudo\s+)?(ba|z|da)?sh\b",
        "piping a download into a shell runs unreviewed code",
    ),
    (
        "command.fork-bomb",
        Applies::Command,
        r":\s*\(\s*\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:",
        "a fork bomb exhausts the machine",
    ),
    ("command.sudo", Applies::Command, r"(^|\s)sudo\s", "agents never run with elevated privileges"),
    (
        "command.eval",
        Applies::Command,
        r"(^|\s)(python3?|node|perl|ruby)\s+(-c|-e)\s",
        "inline interpreter code bypasses review",
    ),
];

impl Validator {
    pub fn from_raw(raw: RawValidator) -> Result<Validator, String> {
        let mut rules = Vec::new();
        for (id, applies_to, pattern, reason) in BUILT_IN {
            if raw.disable.iter().any(|d| d == id) {
                continue;
            }
            let pattern = Regex::new(pattern).map_err(|e| format!("built-in rule {id}: {e}"))?;
            rules.push(Rule { id: id.to_string(), applies_to, pattern, reason: reason.to_string() });
        }
        for rule in raw.rules {
            if rule.id.trim().is_empty() || rule.reason.trim().is_empty() {
                return Err("every rule needs an id and a reason".into());
            }
            let pattern = Regex::new(&rule.pattern).map_err(|e| format!("rule {}: invalid pattern: {e}", rule.id))?;
            rules.push(Rule { id: rule.id, applies_to: rule.applies_to, pattern, reason: rule.reason });
        }
        Ok(Validator {
            rules,
            max_deleted_files: raw.max_deleted_files.unwrap_or(20),
            max_deleted_lines: raw.max_deleted_lines.unwrap_or(400),
        })
    }

    fn first_match(&self, applies: Applies, text: &str) -> Option<Violation> {
        self.rules
            .iter()
            .find(|r| r.applies_to == applies && r.pattern.is_match(text))
            .map(|r| Violation { rule: r.id.clone(), reason: r.reason.clone() })
    }

    /// Content about to be written; `old_lines` is the line count of what it replaces.
    pub fn check_write(&self, content: &str, old_lines: usize) -> Result<(), Violation> {
        if let Some(violation) = self.first_match(Applies::Content, content) {
            return Err(violation);
        }
        self.check_deleted_lines(old_lines.saturating_sub(content.lines().count()))
    }

    /// A file about to be deleted, with its line count.
    pub fn check_delete(&self, files: usize, lines: usize) -> Result<(), Violation> {
        if files > self.max_deleted_files {
            return Err(Violation {
                rule: "validator.large-deletion".into(),
                reason: format!("deletes {files} files; the limit is {}", self.max_deleted_files),
            });
        }
        self.check_deleted_lines(lines)
    }

    fn check_deleted_lines(&self, lines: usize) -> Result<(), Violation> {
        if lines > self.max_deleted_lines {
            return Err(Violation {
                rule: "validator.large-deletion".into(),
                reason: format!("deletes {lines} lines; the limit is {}", self.max_deleted_lines),
            });
        }
        Ok(())
    }

    /// A command about to run (argv, no shell interpretation).
    pub fn check_command(&self, argv: &[String]) -> Result<(), Violation> {
        if let Some(violation) = self.first_match(Applies::Command, &argv.join(" ")) {
            return Err(violation);
        }
        if let Some(target) = rm_outside(argv) {
            return Err(Violation {
                rule: "command.rm-outside".into(),
                reason: format!("rm aimed at {target:?}, outside the workspace"),
            });
        }
        if let Some((tool, flag)) = runs_other_code(argv) {
            return Err(Violation {
                rule: "command.runs-code".into(),
                reason: format!("{tool} {flag} makes an allowed command run other code; see the README's list"),
            });
        }
        Ok(())
    }
}

/// Flags that make a tool on the allow-list run other code: the tool, and the
/// flags it may not get (also as `--flag=value`, and short ones with the
/// value attached).
pub const RUNS_OTHER_CODE: [(&str, &[&str]); 5] = [
    (
        "node",
        &[
            "-e",
            "--eval",
            "-p",
            "--print",
            "-r",
            "--require",
            "--import",
            "--loader",
            "--experimental-loader",
            "-i",
            "--interactive",
            "--inspect",
            "--inspect-brk",
        ],
    ),
    ("cargo", &["--config", "-Z", "--manifest-path", "-C"]),
    ("npm", &["--prefix", "-C", "--script-shell", "--node-options", "--userconfig", "--globalconfig", "--call", "-c"]),
    ("pytest", &["-p", "-c", "--config-file", "-o", "--override-ini", "--rootdir", "--confcutdir", "--pyargs"]),
    ("go", &["-exec", "-toolexec", "-overlay", "-modfile", "-C", "-vet"]),
];

/// The tool an argv runs (`python -m pytest …` is pytest) and its arguments.
fn tool_of(argv: &[String]) -> Option<(&'static str, &[String])> {
    let program = argv.first()?.rsplit('/').next()?;
    let is_python =
        program == "python" || program.strip_prefix("python3").is_some_and(|v| v.is_empty() || v.starts_with('.'));
    if is_python {
        return match argv.get(1).map(String::as_str) {
            Some("-m") => match argv.get(2).map(String::as_str) {
                Some("pytest") => Some(("pytest", &argv[3..])),
                Some("unittest") => Some(("unittest", &argv[3..])),
                _ => Some(("python", &argv[1..])),
            },
            _ => Some(("python", &argv[1..])),
        };
    }
    let name = match program {
        "node" | "nodejs" => "node",
        "cargo" => "cargo",
        "npm" => "npm",
        "pytest" | "py.test" => "pytest",
        "go" => "go",
        _ => return None,
    };
    Some((name, &argv[1..]))
}

/// The first flag of `argv` that makes its tool run other code.
fn runs_other_code(argv: &[String]) -> Option<(&'static str, String)> {
    let (tool, args) = tool_of(argv)?;
    let refused = RUNS_OTHER_CODE.iter().find(|(t, _)| *t == tool)?.1;
    for (i, arg) in args.iter().enumerate() {
        // What follows `--` goes to the program under test, not to the tool.
        if arg == "--" {
            break;
        }
        for flag in refused {
            let attached = flag.len() == 2 && arg.starts_with(flag) && !arg.starts_with("--") && arg.len() > 2;
            if arg == flag || arg.starts_with(&format!("{flag}=")) || attached {
                // `pytest -p no:NAME` switches a plugin off; only loading one runs code.
                let value = if attached { Some(&arg[2..]) } else { args.get(i + 1).map(String::as_str) };
                if tool == "pytest" && *flag == "-p" && value.is_some_and(|v| v.starts_with("no:")) {
                    continue;
                }
                return Some((tool, (*flag).to_string()));
            }
        }
    }
    None
}

/// The first target of an `rm` that leaves the workspace (absolute, home, or `..` at the top).
fn rm_outside(argv: &[String]) -> Option<&str> {
    let program = argv.first()?.rsplit('/').next()?;
    if program != "rm" {
        return None;
    }
    argv[1..].iter().map(String::as_str).filter(|a| !a.starts_with('-') || *a == "-").find(|target| {
        target.starts_with('/') || target.starts_with('~') || target.starts_with("$HOME") || escapes(target)
    })
}

/// Whether a relative path climbs above its start.
fn escapes(path: &str) -> bool {
    let mut depth = 0i32;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}
