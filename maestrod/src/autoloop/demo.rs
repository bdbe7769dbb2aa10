//! The demo: a real loop with the scripted model. It builds a to-do REST
//! service (`src/api/todos.py`), a command-line client (`src/ui/cli.py`), a
//! contract between them and tests that run, and fails its first attempt at
//! the tests on purpose (the service forgets completed to-dos), so the loop
//! shows VALID failing, ROLLBACK, a replan with a fix, and success.

use std::path::Path;

use serde_json::{Value, json};

use crate::harness::rollback::GitWorkspace;

pub const DEFAULT_TASK: &str = "Build a to-do service: a REST API, a command-line client, and tests";

const TODOS: &str = include_str!("../../demo/todos.py");
const CLI: &str = include_str!("../../demo/cli.py");
const TESTS: &str = include_str!("../../demo/test_todos.py");
const CONTRACT: &str = include_str!("../../demo/contract.yaml");

pub const SCRIPT_PATH: &str = ".maestro/demo-script.yaml";

const CONFIG: &str = "\
# Maestro project configuration (written by the demo).
project:
  id: {project}
llm:
  # The demo plays a script instead of calling a model; see demo-script.yaml.
  provider: scripted
  script: .maestro/demo-script.yaml
loop:
  retries: 2
  test_command: [python3, -m, unittest, discover, -s, tests, -v]
  tests_dir: tests
";

/// The service as Backend first writes it: completing a to-do marks a copy
/// done and never stores it (what the tests catch).
fn todos_first_attempt() -> String {
    const STORED: &str = "            todo = self._todos[todo_id]  # the stored to-do itself, not a copy\n            todo[\"done\"] = True\n            return dict(todo)\n";
    const COPY: &str =
        "            todo = dict(self._todos[todo_id])\n            todo[\"done\"] = True\n            return todo\n";
    assert!(TODOS.contains(STORED), "demo/todos.py still has the line the first attempt gets wrong");
    TODOS.replace(STORED, COPY)
}

fn call(name: &str, arguments: Value) -> Value {
    json!({"name": name, "arguments": arguments})
}

fn step(text: &str, calls: Vec<Value>) -> Value {
    json!({"text": text, "tool_calls": calls})
}

fn finish(summary: &str) -> Value {
    call("finish", json!({"outcome": "done", "summary": summary}))
}

/// The demo's script: which tool calls each role makes, per requirement and attempt.
pub fn script() -> String {
    let test_cmd = json!(["python3", "-m", "unittest", "discover", "-s", "tests", "-v"]);
    let roles = json!({
        "planning@R1#1": [
            step("The service, its client and tests, in that order.", vec![
                call("create_requirement", json!({
                    "parent_id": "R1", "title": "To-do REST API", "role_hint": "backend",
                    "description": "List, create and complete to-dos over HTTP (JSON). Publishes contract:todos-api.",
                    "acceptance": ["GET /todos lists to-dos", "POST /todos creates one (201)", "POST /todos/{id}/done completes one"]})),
                call("create_requirement", json!({
                    "parent_id": "R1", "title": "Command-line client", "role_hint": "frontend",
                    "description": "`todo list|add|done` against the service, following contract:todos-api.",
                    "acceptance": ["prints one line per to-do with a check box"], "depends_on": ["R2"]})),
                call("create_requirement", json!({
                    "parent_id": "R1", "title": "Tests of the service and the client", "role_hint": "test",
                    "description": "unittest tests derived from contract:todos-api.",
                    "acceptance": ["the tests run with python3 -m unittest and pass"], "depends_on": ["R2", "R3"]})),
            ]),
            step("", vec![
                call("memory_put", json!({"key": "plan", "value": "R2 API, then R3 client, then R4 tests"})),
                finish("R2 API, R3 client, R4 tests"),
            ]),
        ],
        "planning@R1#2": [
            step("Reading why the last epoch failed.", vec![call("read_log", json!({"limit": 5}))]),
            step("Completing a to-do does not persist: adding a fix before the tests.", vec![
                call("create_requirement", json!({
                    "parent_id": "R1", "title": "Fix: completed to-dos must stay done", "role_hint": "backend",
                    "description": "complete_todo returns a done copy but never stores it (test_complete_persists).",
                    "acceptance": ["after POST /todos/{id}/done, GET /todos shows the to-do done"]})),
                call("update_requirement", json!({"id": "R4", "add_dependencies": ["R5"]})),
            ]),
            step("", vec![
                call("memory_put", json!({"key": "lesson", "value": "check that state changes are stored, not copied"})),
                finish("R5 fixes completion; R4 waits for it"),
            ]),
        ],
        "backend@R2": [
            step("Implementing the service and publishing its contract.", vec![
                call("write_file", json!({"path": "src/api/todos.py", "content": todos_first_attempt()})),
                call("propose_contract", json!({"name": "todos-api", "kind": "openapi", "spec": CONTRACT,
                    "consumers": ["frontend", "test"]})),
            ]),
            step("", vec![finish("src/api/todos.py serves todos-api v1")]),
        ],
        "backend@R5": [
            step("", vec![call("read_file", json!({"path": "src/api/todos.py"}))]),
            step("Storing the completed state instead of a copy.", vec![
                call("write_file", json!({"path": "src/api/todos.py", "content": TODOS})),
            ]),
            step("", vec![finish("complete_todo now updates the stored to-do")]),
        ],
        "frontend@R3": [
            step("", vec![call("get_contract", json!({"name": "todos-api"}))]),
            step("Writing the client against the contract.", vec![
                call("write_file", json!({"path": "src/ui/cli.py", "content": CLI})),
            ]),
            step("", vec![finish("src/ui/cli.py: todo list|add|done")]),
        ],
        "test@R4#1": [
            step("Writing tests from the contract's operations.", vec![
                call("write_file", json!({"path": "tests/test_todos.py", "content": TESTS})),
            ]),
            step("", vec![finish("tests/test_todos.py written; VALID runs it")]),
        ],
        "test@R4#2": [
            step("Writing tests from the contract's operations.", vec![
                call("write_file", json!({"path": "tests/test_todos.py", "content": TESTS})),
            ]),
            step("Running them.", vec![call("run_command", json!({"argv": test_cmd}))]),
            step("", vec![
                call("annotate_log", json!({"note": "R4: 6 tests of todos-api and the client pass"})),
                finish("6 tests pass"),
            ]),
        ],
        "review": [
            step("", vec![call("list_dir", json!({"path": "src"}))]),
            step("", vec![
                call("review_verdict", json!({"verdict": "approve", "findings": [{"severity": "info",
                    "text": "standard library only, no shell-outs, input validated at the edge"}]})),
                finish("no blocking findings"),
            ]),
        ],
    });
    let script = json!({"roles": roles});
    let mut text = String::from(
        "# The Maestro demo's script: the scripted model plays these turns.\n\
         # Keys are role, role@requirement or role@requirement#attempt.\n",
    );
    text.push_str(&yaml_serde::to_string(&script).expect("the script encodes as YAML"));
    text
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0} exists and is not empty; pick a new folder with --workspace")]
    NotEmpty(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Git(#[from] crate::harness::rollback::RollbackError),
}

/// Creates the demo workspace at `dir` (absent or empty): configuration,
/// script, `.gitignore`, and a git repository.
pub fn prepare(dir: &Path, project: &str) -> Result<(), DemoError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| DemoError::Io { path, source }
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(DemoError::NotEmpty(dir.display().to_string()));
        }
    }
    std::fs::create_dir_all(dir.join(".maestro")).map_err(io(dir))?;
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        std::fs::write(&path, text).map_err(io(&path))
    };
    write(".maestro/config.yaml", &CONFIG.replace("{project}", project))?;
    write(SCRIPT_PATH, &script())?;
    write(".gitignore", "__pycache__/\n*.pyc\n")?;
    GitWorkspace::open_or_init(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::llm::scripted::Scripted;

    #[test]
    fn the_script_parses_for_every_step_of_the_story() {
        let text = script();
        for (role, requirement, attempt) in [
            ("planning", "R1", 1),
            ("planning", "R1", 2),
            ("backend", "R2", 1),
            ("backend", "R5", 1),
            ("test", "R4", 2),
        ] {
            Scripted::parse_for(&text, role, requirement, attempt).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        prepare(&dir.path().join("demo"), "demo").unwrap();
        assert!(dir.path().join("demo/.git").is_dir());
        let config = std::fs::read_to_string(dir.path().join("demo/.maestro/config.yaml")).unwrap();
        crate::autoloop::config::LoopConfig::parse(&config).unwrap();
        let error = prepare(&dir.path().join("demo"), "demo").unwrap_err();
        assert!(error.to_string().contains("is not empty"), "{error}");
    }
}
