//! `maestrod harness check`: the dry run of the harness decision, as policy
//! authors use it (no server).

use std::process::Command;

use maestro_tests::binary;

fn check(workspace: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary("e2e-maestrod"))
        .args(["harness", "check", "--workspace"])
        .arg(workspace)
        .args(args)
        .output()
        .expect("maestrod runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    )
}

#[test]
fn prints_allow_or_the_denying_rule_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    std::fs::create_dir_all(ws.join("src/api")).unwrap();
    std::fs::create_dir_all(ws.join(".maestro")).unwrap();
    std::fs::write(
        ws.join(".maestro/config.yaml"),
        "harness:\n  roles:\n    test:\n      commands: [[python, -m, pytest]]\n",
    )
    .unwrap();
    let content = ws.join("content.py");
    std::fs::write(&content, "import subprocess\nsubprocess.run('ls', shell=True)\n").unwrap();

    assert_eq!(check(ws, &["--role", "backend", "write", "src/api/app.py"]), (0, "allow".into(), String::new()));
    let (code, out, _) =
        check(ws, &["--role", "backend", "write", "src/api/app.py", "--content-file", content.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, "deny: content.shell-true: subprocess with shell=True runs a shell"));
    let (code, out, _) = check(ws, &["--role", "frontend", "read", "../outside"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("deny: path.escape: "), "{out}");
    let (code, out, _) = check(ws, &["--role", "backend", "delete", ".git/config"]);
    assert_eq!(
        (code, out.as_str()),
        (1, "deny: acl.deny: .git/config is off limits to every agent (secrets, repository internals)")
    );
    assert_eq!(check(ws, &["--role", "test", "run", "--", "python", "-m", "pytest", "-q"]).0, 0);
    let (code, out, _) = check(ws, &["--role", "test", "run", "--", "cargo", "test"]);
    assert_eq!((code, out.as_str()), (1, "deny: acl.command: role test may run only python -m pytest"));

    // Errors are not decisions: exit 2 and one line on stderr.
    let (code, out, err) = check(ws, &["--role", "wizard", "read", "x"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("unknown role \"wizard\""), "{err}");
    std::fs::write(ws.join(".maestro/config.yaml"), "harness: [not, a, map]\n").unwrap();
    let (code, _, err) = check(ws, &["--role", "backend", "read", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains(".maestro/config.yaml"), "{err}");
    let (code, _, err) = check(&ws.join("missing"), &["--role", "backend", "read", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn the_policy_and_the_decision_are_available_over_grpc() {
    let daemon = maestro_tests::Daemon::start().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(workspace.path().join(".maestro")).unwrap();
    std::fs::write(
        workspace.path().join(".maestro/config.yaml"),
        "harness:\n  roles:\n    backend:\n      write: [\"src/api/**\", \"migrations/**\"]\n",
    )
    .unwrap();
    let ws = workspace.path().to_str().unwrap();
    daemon.ctl(&["project", "create", "shop", "--workspace", ws]).ok();
    daemon.ctl(&["project", "create", "bare"]).ok();
    let p = |args: &[&str]| {
        let mut full = vec!["-p", "shop"];
        full.extend_from_slice(args);
        daemon.ctl(&full)
    };

    let policy = p(&["-o", "json", "policy", "show"]).json();
    let backend = policy["roles"].as_array().unwrap().iter().find(|r| r["name"] == "backend").unwrap();
    assert_eq!(backend["write"], serde_json::json!(["src/api/**", "migrations/**"]));
    assert!(policy["rules"].as_array().unwrap().iter().any(|r| r["id"] == "content.eval"));
    assert_eq!(policy["confinement"]["filesystem"], true);
    let table = p(&["policy", "show"]);
    assert!(table.ok().contains("migrations/**"));

    assert_eq!(p(&["policy", "check", "backend", "write", "migrations/001.sql"]).ok().trim(), "allow");
    let denied = p(&["policy", "check", "frontend", "write", "migrations/001.sql"]);
    assert_eq!(denied.code, 1);
    assert!(denied.stdout.starts_with("deny: acl.write: "), "{denied:?}");
    let denied = p(&["-o", "json", "policy", "check", "test", "run", "--", "curl", "x"]);
    assert_eq!(denied.code, 1);
    let verdict: serde_json::Value = serde_json::from_str(&denied.stdout).unwrap();
    assert_eq!(verdict["rule"], "acl.command");

    let unknown = p(&["policy", "check", "wizard", "read", "x"]);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("unknown role") && unknown.stderr.contains("INVALID_ARGUMENT"), "{unknown:?}");
    let bare = daemon.ctl(&["-p", "bare", "policy", "show"]);
    assert!(bare.stderr.contains("has no workspace") && bare.stderr.contains("FAILED_PRECONDITION"), "{bare:?}");

    let status = daemon.ctl(&["status"]);
    assert!(status.ok().contains("filesystem confinement enforced, network isolation enforced"), "{}", status.stdout);
    let info = daemon.ctl(&["-o", "json", "info"]).json();
    assert_eq!(info["sandbox"]["network"], true);
}
