//! Keys reach the model wherever the user put them, and a missing or exposed
//! key is refused before the loop starts with the exact thing to set: the
//! daemon here is started without the key in its environment, as the daemon
//! `maestroctl` starts for you usually is.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use maestro_tests::{Daemon, ctl_command};

use crate::misbehaving::{KEY_ENV, behaves, loops_of, model_workspace};
use crate::model_server::{ModelServer, Turn, Wire};

fn run(daemon: &Daemon, ws: &std::path::Path, env: &[(&str, &str)]) -> maestro_tests::CtlOutput {
    let mut command = ctl_command(&daemon.url(), ws, &["run", "Write add(a, b) in src/api/calc.py"]);
    command.env_remove(KEY_ENV);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("maestroctl runs");
    maestro_tests::CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_the_credentials_file_works_with_a_daemon_started_without_it() {
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_str().unwrap();
    let daemon = Daemon::start_with_env(&[], &[("HOME", home_path)]).unwrap();
    let server = ModelServer::start(Arc::new(|t: &Turn| behaves(t))).await;
    let dir = tempfile::tempdir().unwrap();

    for wire in [Wire::OpenAi, Wire::Anthropic] {
        let project = format!("creds-{}", wire.provider());
        let ws = dir.path().join(&project);
        model_workspace(&ws, wire, &server.base_url(wire), &project, "");
        let credentials = home.path().join(".maestro/credentials.yaml");
        let _ = std::fs::remove_file(&credentials);

        // No key anywhere: refused before a loop exists, naming the variable and the file.
        let missing = run(&daemon, &ws, &[]);
        assert_eq!(missing.code, 1, "{}{}", missing.stdout, missing.stderr);
        let line = missing.stderr.trim();
        assert!(
            line.contains(KEY_ENV) && line.contains(".maestro/credentials.yaml") && !line.contains('\n'),
            "one line naming the variable and the file: {line}"
        );
        assert!(loops_of(&daemon, &project).is_empty(), "no loop was started without a key");

        // A file others can read is refused, and says how to fix it.
        std::fs::create_dir_all(credentials.parent().unwrap()).unwrap();
        std::fs::write(&credentials, format!("{KEY_ENV}: sk-from-credentials-file\n")).unwrap();
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o644)).unwrap();
        let exposed = run(&daemon, &ws, &[]);
        assert_eq!(exposed.code, 1, "{}{}", exposed.stdout, exposed.stderr);
        assert!(exposed.stderr.contains("chmod 600"), "{}", exposed.stderr);
        assert!(server.turns().iter().all(|t| t.scenario != project), "the exposed key was never sent");

        // Once the file is private, the same daemon (not restarted) uses it.
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ok = run(&daemon, &ws, &[]);
        assert_eq!(ok.code, 0, "{}{}\n{}", ok.stdout, ok.stderr, daemon.log());
        let turns = server.turns();
        assert!(!turns.is_empty());
        for t in turns.iter().filter(|t| t.scenario == project) {
            assert_eq!(t.key, "sk-from-credentials-file", "{} turn {} carried the file's key", t.role, t.turn);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_of_the_maestroctl_run_that_starts_the_loop_reaches_the_model() {
    let home = tempfile::tempdir().unwrap();
    // The daemon has neither the variable nor a credentials file.
    let daemon = Daemon::start_with_env(&[], &[("HOME", home.path().to_str().unwrap())]).unwrap();
    let server = ModelServer::start(Arc::new(|t: &Turn| behaves(t))).await;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("from-env");
    model_workspace(&ws, Wire::OpenAi, &server.base_url(Wire::OpenAi), "from-env", "");
    let ok = run(&daemon, &ws, &[(KEY_ENV, "sk-from-maestroctl")]);
    assert_eq!(ok.code, 0, "{}{}\n{}", ok.stdout, ok.stderr, daemon.log());
    let turns = server.turns();
    assert!(turns.len() >= 3, "planning, backend and review asked the model: {turns:?}");
    assert!(turns.iter().all(|t| t.key == "sk-from-maestroctl"), "every request carried the key");

    // The key lives with that loop only: a second run without it is refused again.
    let again = run(&daemon, &ws, &[]);
    assert_eq!(again.code, 1, "{}{}", again.stdout, again.stderr);
    assert!(again.stderr.contains(KEY_ENV), "{}", again.stderr);
    // And it was never written to the daemon's store.
    let mut stored = Vec::new();
    for entry in walk(daemon.data_dir()) {
        if std::fs::read(&entry).is_ok_and(|b| b.windows(18).any(|w| w == b"sk-from-maestroctl")) {
            stored.push(entry);
        }
    }
    assert!(stored.is_empty(), "the key was written to {stored:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { todo.push(path) } else { files.push(path) }
        }
    }
    files
}
