//! The hostile-action table shared by the gate's and the executor's tests.

use std::path::Path;

use super::gate::Action;

/// A workspace with some code, a .git directory, a secret and links out.
pub(crate) fn workspace() -> (tempfile::TempDir, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["src/api", "src/ui", "tests", ".git", "docs/big"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("src/api/app.py"), "def main():\n    pass\n").unwrap();
    std::fs::write(root.join(".git/config"), "[core]\n").unwrap();
    std::fs::write(root.join(".env"), "TOKEN=1\n").unwrap();
    std::fs::write(root.join("src/api/server.pem"), "x").unwrap();
    std::fs::write(root.join("src/api/long.py"), "x = 1\n".repeat(1000)).unwrap();
    for i in 0..30 {
        std::fs::write(root.join(format!("docs/big/{i}.md")), "line\n").unwrap();
    }
    std::os::unix::fs::symlink(outside.path(), root.join("src/api/escape")).unwrap();
    std::os::unix::fs::symlink(root.join(".git"), root.join("src/api/gitlink")).unwrap();
    (dir, outside)
}

/// (role, action, the rule that must deny it or `None` for allowed).
pub(crate) fn cases(outside: &Path) -> Vec<(&'static str, Action, Option<&'static str>)> {
    let run = |command: &str| Action::RunCommand { argv: command.split_whitespace().map(String::from).collect() };
    let write = |path: &str, content: &str| Action::WriteFile { path: path.into(), content: content.into() };
    let read = |path: &str| Action::ReadFile { path: path.into() };
    let delete = |path: &str| Action::DeleteFile { path: path.into() };
    let outside_file = format!("{}/loot", outside.display());
    vec![
        // Allowed work, so the denials below are not a policy that refuses everything.
        ("backend", write("src/api/todo.py", "def add(x):\n    return x\n"), None),
        ("backend", read("src/ui/page.html"), None),
        ("frontend", write("src/ui/app.js", "export const x = 1;\n"), None),
        ("test", write("tests/test_api.py", "def test_ok():\n    assert True\n"), None),
        ("test", run("python -m pytest -q tests"), None),
        ("test", run("cargo test --workspace"), None),
        ("backend", Action::ListDir { path: ".".into() }, None),
        // Traversal and absolute paths.
        ("backend", write("../evil.py", ""), Some("path.escape")),
        ("backend", write("src/api/../../../evil.py", ""), Some("path.escape")),
        ("backend", read("../../etc/passwd"), Some("path.escape")),
        ("backend", read("/etc/passwd"), Some("path.absolute")),
        ("backend", write("/tmp/evil.py", ""), Some("path.absolute")),
        ("backend", write(&outside_file, ""), Some("path.absolute")),
        // Symlinks that lead out, or into forbidden places.
        ("backend", write("src/api/escape/x.py", ""), Some("path.symlink")),
        ("backend", read("src/api/escape"), Some("path.symlink")),
        ("backend", write("src/api/gitlink/config", ""), Some("acl.deny")),
        // Repository internals and secrets.
        ("backend", write(".git/config", ""), Some("acl.deny")),
        ("backend", read(".git/config"), Some("acl.deny")),
        ("backend", delete(".git"), Some("acl.deny")),
        ("backend", read(".env"), Some("acl.deny")),
        ("backend", read("src/api/server.pem"), Some("acl.deny")),
        ("backend", write(".maestro/config.yaml", "harness: {}\n"), Some("acl.protected")),
        // Role scopes.
        ("backend", write("src/ui/app.js", ""), Some("acl.write")),
        ("frontend", write("src/api/app.py", ""), Some("acl.write")),
        ("planning", write("src/api/app.py", ""), Some("acl.write")),
        ("review", delete("src/api/app.py"), Some("acl.write")),
        ("test", write("src/api/app.py", ""), Some("acl.write")),
        ("backend", write(".", ""), Some("path.invalid")),
        // Dangerous content.
        ("backend", write("src/api/x.py", "result = eval(user_input)\n"), Some("content.eval")),
        ("backend", write("src/api/x.py", "exec(code)\n"), Some("content.exec")),
        ("backend", write("src/api/x.py", "import os\nos.system('ls')\n"), Some("content.os-system")),
        ("backend", write("src/api/x.py", "subprocess.run(cmd, shell=True)\n"), Some("content.shell-true")),
        ("frontend", write("src/ui/x.js", "const cp = require('child_process');\n"), Some("content.child-process")),
        (
            "backend",
            write("src/api/k.py", "KEY = '''-----BEGIN RSA PRIVATE KEY-----'''\n"),
            Some("content.private-key"),
        ),
        ("backend", write("src/api/k.py", "AWS = 'AKIAIOSFODNN7EXAMPLE'\n"), Some("content.aws-key")),
        (
            "backend",
            write("src/api/k.py", "T = 'ghp_abcdefghijklmnopqrstuvwxyz0123456789'\n"),
            Some("content.github-token"),
        ),
        // Large deletions.
        ("backend", delete("src/api/long.py"), Some("validator.large-deletion")),
        ("backend", write("src/api/long.py", "x = 1\n"), Some("validator.large-deletion")),
        // Commands.
        ("backend", run("rm -rf /"), Some("acl.command")),
        ("test", run("sh -c :(){ :|:& };:"), Some("acl.shell")),
        ("test", run("bash -c ls"), Some("acl.shell")),
        ("test", run("/bin/sh -c ls"), Some("acl.shell")),
        ("test", run("curl https://example.com/install.sh"), Some("acl.command")),
        ("planning", run("python -m pytest"), Some("acl.command")),
        ("test", run("python -c import os"), Some("acl.command")),
        ("test", Action::RunCommand { argv: Vec::new() }, Some("command.invalid")),
        // Allowed tools made to run other code.
        ("test", run("node --test -e require('child_process').execSync('id')"), Some("command.runs-code")),
        ("test", run("node --test --require=./evil.js"), Some("command.runs-code")),
        ("test", run("cargo test --config target.x86_64-unknown-linux-gnu.runner='sh'"), Some("command.runs-code")),
        ("test", run("npm test --prefix /tmp/evil"), Some("command.runs-code")),
        ("test", run("python3 -m pytest -p evil_plugin"), Some("command.runs-code")),
        ("test", run("python3 -m pytest -pevil_plugin"), Some("command.runs-code")),
        ("test", run("pytest -o python_files=*.txt"), Some("command.runs-code")),
        ("test", run("python3 -m pytest -q -p no:cacheprovider tests"), None),
        ("test", run("cargo test -- --nocapture"), None),
        // Code that hides what it runs (a guard; the sandbox is the fence).
        ("test", write("tests/t.py", "__import__('os').system('id')\n"), Some("content.dynamic-import")),
        ("test", write("tests/t.py", "import os\ngetattr(os, 'sys' + 'tem')('id')\n"), Some("content.reflection")),
        (
            "test",
            write("tests/t.py", "import subprocess\nsubprocess.run(['sh', '-c', 'id'])\n"),
            Some("content.shell-argv"),
        ),
        ("test", write("tests/t.py", "import os\nos.execvp('sh', ['sh'])\n"), Some("content.process-spawn")),
        // Nested repositories: their hooks run in a user's git.
        ("backend", write("src/api/.git/hooks/pre-commit", "#!/bin/sh\n"), Some("acl.protected")),
        ("backend", write("src/api/.git/config", "[core]\n"), Some("acl.protected")),
        // SSOT writes outside the role's collections.
        (
            "contract-validator",
            Action::SsotWrite { collection: "requirements".into(), target: "R1".into() },
            Some("acl.ssot"),
        ),
        ("test", Action::SsotWrite { collection: "contracts".into(), target: "api".into() }, Some("acl.ssot")),
    ]
}
