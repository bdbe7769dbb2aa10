//! VALID's test run: which command runs the project's tests (configured, or
//! detected from the workspace), and what its output says (how many passed,
//! whether any ran at all, the tail that explains a failure).

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

use super::config::LoopConfig;

/// What VALID should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestPlan {
    /// Every command must pass.
    Run(Vec<Vec<String>>),
    /// `loop.test_command: []`.
    Off,
    /// Nothing to run; says why.
    Missing(String),
}

/// The configured command, or one detected from the workspace.
pub fn plan(config: &LoopConfig, root: &Path) -> TestPlan {
    match &config.test_command {
        Some(argv) if argv.is_empty() => TestPlan::Off,
        Some(argv) => {
            let dir = &config.tests_dir;
            if !dir.is_empty() && !root.join(dir).is_dir() {
                TestPlan::Missing(format!("{dir}/ does not exist yet"))
            } else {
                TestPlan::Run(vec![argv.clone()])
            }
        }
        None => detect(root),
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Whether `dir` holds a Python file (looking a few levels down).
fn has_python(dir: &Path, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            depth > 0 && !e.file_name().to_string_lossy().starts_with('.') && has_python(&path, depth - 1)
        } else {
            path.extension().is_some_and(|x| x == "py")
        }
    })
}

fn file_mentions(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.contains(needle))
}

/// The usual runner of each language the project has, from its files. Every
/// one runs: an agent that adds a Python test to a Cargo project does not
/// get to skip `cargo test`. Only files at the root (which agents' default
/// paths do not reach) choose pytest over unittest.
pub fn detect(root: &Path) -> TestPlan {
    let mut runners = Vec::new();
    if has_python(&root.join("tests"), 3) {
        let pytest = root.join("pytest.ini").is_file()
            || root.join("conftest.py").is_file()
            || file_mentions(&root.join("pyproject.toml"), "[tool.pytest")
            || file_mentions(&root.join("setup.cfg"), "[tool:pytest]")
            || file_mentions(&root.join("tox.ini"), "[pytest]");
        runners.push(if pytest {
            argv(&["python3", "-m", "pytest", "-q"])
        } else {
            argv(&["python3", "-m", "unittest", "discover", "-s", "tests"])
        });
    }
    if root.join("Cargo.toml").is_file() {
        runners.push(argv(&["cargo", "test"]));
    }
    if let Ok(text) = std::fs::read_to_string(root.join("package.json")) {
        let test = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["scripts"]["test"].as_str().map(String::from))
            .unwrap_or_default();
        // `npm init` writes a test script that only fails.
        if !test.is_empty() && !test.contains("no test specified") {
            runners.push(argv(&["npm", "test"]));
        }
    }
    if root.join("go.mod").is_file() {
        runners.push(argv(&["go", "test", "./..."]));
    }
    if runners.is_empty() {
        return TestPlan::Missing(
            "no tests found (a tests/ folder with Python files, Cargo.toml, a package.json test script or go.mod)"
                .into(),
        );
    }
    TestPlan::Run(runners)
}

/// What a finished test run's output says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Tests that passed, when the runner says.
    pub passed: Option<u32>,
    /// The runner ran no test at all.
    pub none_ran: bool,
}

static UNITTEST: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?m)^Ran (\d+) tests? in ").expect("valid regex"));
static UNITTEST_FAILED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)^FAILED \((?:failures=(\d+))?(?:, )?(?:errors=(\d+))?").expect("valid regex"));
static PYTEST: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(\d+) passed").expect("valid regex"));
static CARGO: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)^test result: \w+\. (\d+) passed").expect("valid regex"));
static TAP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?m)^# pass (\d+)").expect("valid regex"));
static TAP_FAIL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?m)^# fail (\d+)").expect("valid regex"));
static JEST: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?m)^Tests:.*?(\d+) passed").expect("valid regex"));
static GO_PASS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?m)^\s*--- PASS").expect("valid regex"));

/// Reads the counts out of the output of the usual runners (unittest,
/// pytest, cargo test, node --test / TAP, jest, go test).
pub fn read(stdout: &str, stderr: &str, exit_code: Option<i32>) -> Reading {
    let text = format!("{stdout}\n{stderr}");
    let number = |m: Option<regex::Match<'_>>| m.and_then(|m| m.as_str().parse::<u32>().ok());
    if let Some(ran) = UNITTEST.captures_iter(&text).last().and_then(|c| number(c.get(1))) {
        let failed = UNITTEST_FAILED
            .captures_iter(&text)
            .last()
            .map_or(0, |c| number(c.get(1)).unwrap_or(0) + number(c.get(2)).unwrap_or(0));
        return Reading { passed: Some(ran.saturating_sub(failed)), none_ran: ran == 0 };
    }
    let cargo: Vec<u32> = CARGO.captures_iter(&text).filter_map(|c| number(c.get(1))).collect();
    if !cargo.is_empty() {
        let passed = cargo.iter().sum();
        return Reading { passed: Some(passed), none_ran: passed == 0 };
    }
    if let Some(passed) = TAP.captures_iter(&text).last().and_then(|c| number(c.get(1))) {
        let failed = TAP_FAIL.captures_iter(&text).last().and_then(|c| number(c.get(1))).unwrap_or(0);
        return Reading { passed: Some(passed), none_ran: passed == 0 && failed == 0 };
    }
    if let Some(passed) = JEST.captures_iter(&text).last().and_then(|c| number(c.get(1))) {
        return Reading { passed: Some(passed), none_ran: false };
    }
    if text.contains("no tests ran") || exit_code == Some(5) && text.contains("pytest") {
        return Reading { passed: Some(0), none_ran: true };
    }
    if let Some(passed) = PYTEST.captures_iter(&text).last().and_then(|c| number(c.get(1))) {
        return Reading { passed: Some(passed), none_ran: false };
    }
    let go = GO_PASS.find_iter(&text).count() as u32;
    if go > 0 {
        return Reading { passed: Some(go), none_ran: false };
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if !lines.is_empty() && lines.iter().all(|l| l.contains("[no test files]")) {
        return Reading { passed: Some(0), none_ran: true };
    }
    Reading { passed: None, none_ran: false }
}

/// The end of a failed run's output, where runners put what failed and why:
/// at most `max` bytes, cut at a line.
pub fn tail(stdout: &str, stderr: &str, max: usize) -> String {
    let mut text = String::new();
    for part in [stdout.trim_end(), stderr.trim_end()] {
        if !part.is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(part);
        }
    }
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = text[start..].find('\n').map_or(start, |n| start + n + 1);
    format!("…\n{}", &text[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stdout: &str, stderr: &str, code: Option<i32>, passed: Option<u32>, none_ran: bool) {
        assert_eq!(read(stdout, stderr, code), Reading { passed, none_ran }, "{stdout:?} {stderr:?}");
    }

    #[test]
    fn counts_from_the_usual_runners() {
        check(
            "",
            "......\n----------------------------------------------------------------------\nRan 6 tests in 0.004s\n\nOK\n",
            Some(0),
            Some(6),
            false,
        );
        check("", "Ran 6 tests in 0.004s\n\nFAILED (failures=1, errors=1)\n", Some(1), Some(4), false);
        check(
            "",
            "\n----------------------------------------------------------------------\nRan 0 tests in 0.000s\n\nNO TESTS RAN\n",
            Some(5),
            Some(0),
            true,
        );
        check("....\n4 passed in 0.02s\n", "", Some(0), Some(4), false);
        check("3 failed, 4 passed in 0.05s\n", "", Some(1), Some(4), false);
        check("no tests ran in 0.01s\n", "", Some(5), Some(0), true);
        check(
            "test result: ok. 3 passed; 0 failed\ntest result: ok. 2 passed; 0 failed\n",
            "",
            Some(0),
            Some(5),
            false,
        );
        check("test result: ok. 0 passed; 0 failed\n", "", Some(0), Some(0), true);
        check("# tests 3\n# pass 3\n# fail 0\n", "", Some(0), Some(3), false);
        check("# tests 2\n# pass 0\n# fail 2\n", "", Some(1), Some(0), false);
        check("# tests 0\n# pass 0\n# fail 0\n", "", Some(0), Some(0), true);
        check("Tests:       1 failed, 5 passed, 6 total\n", "", Some(1), Some(5), false);
        check(
            "=== RUN   TestA\n--- PASS: TestA (0.00s)\n--- PASS: TestB (0.00s)\nok  \tx\t0.1s\n",
            "",
            Some(0),
            Some(2),
            false,
        );
        check("?   \texample.com/x\t[no test files]\n", "", Some(0), Some(0), true);
        check("all good\n", "", Some(0), None, false);
    }

    #[test]
    fn the_tail_keeps_the_end_at_a_line() {
        let out = (1..=100).map(|i| format!("line {i}")).collect::<Vec<_>>().join("\n");
        let tail = tail(&out, "AssertionError: 3 != 4", 60);
        assert!(tail.starts_with("…\nline "), "{tail}");
        assert!(tail.ends_with("AssertionError: 3 != 4"), "{tail}");
        assert!(tail.len() <= 64, "{}", tail.len());
        assert_eq!(super::tail("a", "", 10), "a");
    }

    #[test]
    fn runners_are_detected_from_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let run = |runners: &[&[&str]]| TestPlan::Run(runners.iter().map(|r| argv(r)).collect());
        assert!(matches!(detect(root), TestPlan::Missing(_)));
        std::fs::write(root.join("go.mod"), "module x\n").unwrap();
        assert_eq!(detect(root), run(&[&["go", "test", "./..."]]));
        std::fs::write(
            root.join("package.json"),
            r#"{"scripts": {"test": "echo \"Error: no test specified\" && exit 1"}}"#,
        )
        .unwrap();
        assert_eq!(detect(root), run(&[&["go", "test", "./..."]]), "npm init's placeholder is no test script");
        std::fs::remove_file(root.join("go.mod")).unwrap();
        std::fs::write(root.join("package.json"), r#"{"scripts": {"test": "node --test"}}"#).unwrap();
        assert_eq!(detect(root), run(&[&["npm", "test"]]));
        std::fs::remove_file(root.join("package.json")).unwrap();
        std::fs::write(root.join("Cargo.toml"), "[package]\n").unwrap();
        assert_eq!(detect(root), run(&[&["cargo", "test"]]));
        std::fs::create_dir_all(root.join("tests/unit")).unwrap();
        assert_eq!(detect(root), run(&[&["cargo", "test"]]), "an empty tests/ is not a Python suite");
        // A Python test added to a Cargo project does not replace cargo test: both run.
        std::fs::write(root.join("tests/unit/test_x.py"), "").unwrap();
        let unittest: &[&str] = &["python3", "-m", "unittest", "discover", "-s", "tests"];
        assert_eq!(detect(root), run(&[unittest, &["cargo", "test"]]));
        // Only the project's own root chooses pytest; a conftest.py an agent writes under tests/ does not.
        std::fs::write(root.join("tests/conftest.py"), "").unwrap();
        assert_eq!(detect(root), run(&[unittest, &["cargo", "test"]]));
        std::fs::write(root.join("pyproject.toml"), "[tool.pytest.ini_options]\n").unwrap();
        assert_eq!(detect(root), run(&[&["python3", "-m", "pytest", "-q"], &["cargo", "test"]]));

        let off = LoopConfig { test_command: Some(Vec::new()), ..LoopConfig::default() };
        assert_eq!(plan(&off, root), TestPlan::Off);
        let custom = LoopConfig {
            test_command: Some(vec!["make".into(), "check".into()]),
            tests_dir: "spec".into(),
            ..LoopConfig::default()
        };
        assert!(matches!(plan(&custom, root), TestPlan::Missing(why) if why.contains("spec/")));
        std::fs::create_dir(root.join("spec")).unwrap();
        assert_eq!(plan(&custom, root), run(&[&["make", "check"]]));
    }
}
