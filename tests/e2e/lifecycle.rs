//! `maestroctl daemon start|stop|restart|status|logs`: the user's own daemon,
//! through the real binaries, with HOME in a temporary folder.

use std::path::Path;
use std::process::{Command, Stdio};

use maestro_tests::binary;

pub(crate) struct Out {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// The real maestroctl as a user runs it: HOME is `home` (so its own daemon
/// lives in `home/.maestro`, started by maestroctl), none of the MAESTRO_*
/// settings of the caller, no terminal.
pub(crate) fn ctl(home: &Path, args: &[&str]) -> Out {
    ctl_in(home, home, &[], args)
}

/// [`ctl`] run in the folder `cwd` with extra environment `env`.
pub(crate) fn ctl_in(home: &Path, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Out {
    let out = local_command(home)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The maestroctl command of a user whose HOME is `home`.
pub(crate) fn local_command(home: &Path) -> Command {
    let mut command = Command::new(binary("e2e-maestroctl"));
    command
        .env("HOME", home)
        .env("MAESTROD_BIN", binary("e2e-maestrod"))
        .env_remove("MAESTRO_SERVER")
        .env_remove("MAESTRO_TOKEN")
        .env_remove("MAESTRO_PROJECT")
        .env_remove("MAESTRO_OUTPUT")
        .env_remove("MAESTRO_COLOR")
        .env_remove("NO_COLOR")
        .current_dir(home);
    command
}

/// Stops the local daemon of a HOME when a test ends, passed or not.
pub(crate) struct LocalDaemon<'a>(pub(crate) &'a Path);

impl Drop for LocalDaemon<'_> {
    fn drop(&mut self) {
        ctl(self.0, &["daemon", "stop"]);
    }
}

fn status(home: &Path) -> serde_json::Value {
    let out = ctl(home, &["-o", "json", "daemon", "status"]);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn the_local_daemon_starts_stops_and_restarts_keeping_its_data() {
    let alice = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let home = alice.path();
    let checks = || {
        let idle = ctl(home, &["daemon", "status"]);
        assert_eq!(idle.code, 3, "not running: {}", idle.stdout);
        assert!(idle.stdout.contains("not running"), "{}", idle.stdout);

        let started = ctl(home, &["daemon", "start"]);
        assert_eq!(started.code, 0, "{}", started.stderr);
        assert!(started.stderr.contains("started maestrod (pid"), "{}", started.stderr);
        let first = status(home);
        assert_eq!(first["running"], true, "{first}");
        let pid = first["pid"].as_i64().expect("a pid");
        assert!(first["version"].is_string(), "it answers: {first}");
        assert!(ctl(home, &["daemon", "start"]).stderr.contains("already running"));

        // Another user's (here: another HOME's) daemon is never touched.
        assert_eq!(ctl(other.path(), &["daemon", "start"]).code, 0);
        let other_pid = status(other.path())["pid"].as_i64().unwrap();

        assert_eq!(ctl(home, &["project", "create", "keep"]).code, 0);
        let restarted = ctl(home, &["daemon", "restart"]);
        assert_eq!(restarted.code, 0, "{}", restarted.stderr);
        let second = status(home)["pid"].as_i64().unwrap();
        assert_ne!(second, pid, "a new process");
        let listed = ctl(home, &["-o", "json", "project", "list"]);
        assert!(listed.stdout.contains("\"keep\""), "the data stays: {}", listed.stdout);

        let logs = ctl(home, &["daemon", "logs", "-n", "3"]);
        assert_eq!(logs.code, 0);
        assert!(!logs.stdout.is_empty() && logs.stdout.lines().count() <= 3, "{}", logs.stdout);

        let stopped = ctl(home, &["daemon", "stop"]);
        assert!(stopped.stderr.contains(&format!("stopped maestrod (pid {second})")), "{}", stopped.stderr);
        assert_eq!(ctl(home, &["daemon", "status"]).code, 3);
        assert!(ctl(home, &["daemon", "stop"]).stderr.contains("not running"));
        assert_eq!(status(other.path())["pid"].as_i64(), Some(other_pid), "the other daemon still runs");
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks));
    let _ = ctl(home, &["daemon", "stop"]);
    let _ = ctl(other.path(), &["daemon", "stop"]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// `maestroctl … | head -1`: the reader goes away, the command ends quietly.
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let daemon = maestro_tests::Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "pipe"]).ok();
    // Well over a pipe's buffer (64 KiB), so writing must hit the closed pipe.
    for i in 0..60 {
        daemon.ctl(&["-p", "pipe", "memory", "put", "backend", &format!("key-{i}"), &"v".repeat(3000)]).ok();
    }
    let args = ["-p", "pipe", "-o", "json", "memory", "list"];
    let mut command = maestro_tests::ctl_command(daemon.addr(), Path::new("/"), &args);
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.code().is_none_or(|c| c == 0), "{:?} {stderr}", out.status);
}

/// `status` off a terminal prints the daemon's state and the project's summary once.
#[test]
fn status_off_a_terminal_prints_once() {
    let daemon = maestro_tests::Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "shop"]).ok();
    daemon.ctl(&["-p", "shop", "req", "add", "Build a shop"]).ok();
    let out = daemon.ctl(&["-p", "shop", "status"]);
    let text = out.ok();
    assert!(text.contains("maestrod ") && text.contains("sandbox"), "{text}");
    assert!(text.contains("project shop: 0/1 requirements done"), "{text}");
    let json = daemon.ctl(&["-p", "shop", "-o", "json", "status"]).json();
    assert!(json["revision"].is_string(), "{json}");
}

/// `logs`: the newest entries, filtered; `-f` prints what is appended later.
#[test]
fn logs_show_the_newest_entries_and_follow_new_ones() {
    let daemon = maestro_tests::Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "shop"]).ok();
    for i in 0..30 {
        let agent = if i % 2 == 0 { "backend-1" } else { "test-1" };
        daemon.ctl(&["-p", "shop", "log", "append", "note", "--agent", agent, "--target", &format!("t{i}")]).ok();
    }
    let last = daemon.ctl(&["-p", "shop", "logs", "-n", "3"]);
    let lines: Vec<&str> = last.ok().lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[2].contains("t29") && lines[0].contains("t27"), "{lines:?}");
    let backend = daemon.ctl(&["-p", "shop", "-o", "json", "logs", "--agent", "backend-1", "-n", "100"]);
    let entries: Vec<serde_json::Value> = backend.ok().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(entries.len(), 15);
    assert!(entries.iter().all(|e| e["agent"] == "backend-1"));

    let mut follow =
        maestro_tests::ctl_command(daemon.addr(), Path::new("/"), &["-p", "shop", "logs", "-f", "-n", "0"]);
    let mut child = follow.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    daemon.ctl(&["-p", "shop", "log", "append", "later", "--target", "fresh"]).ok();
    let line = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the new entry is printed");
    assert!(line.contains("later") && line.contains("fresh"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Deleting a project or restoring a snapshot asks first; off a terminal it
/// needs --yes, and without it nothing changes.
#[test]
fn what_cannot_be_undone_needs_a_yes() {
    let daemon = maestro_tests::Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "keep"]).ok();
    daemon.ctl(&["-p", "keep", "snapshot", "create", "s1"]).ok();
    for args in [&["project", "delete", "keep"][..], &["-p", "keep", "snapshot", "restore", "s1"]] {
        let refused = daemon.ctl(args);
        assert_eq!(refused.code, 1, "{refused:?}");
        assert!(refused.stderr.contains("--yes") && refused.stderr.lines().count() == 1, "{}", refused.stderr);
    }
    assert_eq!(daemon.ctl(&["project", "show", "keep"]).code, 0, "still there");
    daemon.ctl(&["project", "delete", "keep", "--yes"]).ok();
    assert_eq!(daemon.ctl(&["project", "show", "keep"]).code, 1);
}

/// Completion scripts generate for bash, zsh and fish, and bash loads its own.
#[test]
fn completions_load_in_bash_and_offer_the_daemons_ids() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(binary("e2e-maestroctl")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("maestroctl"), "{shell}");
    }
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let script = ctl(home, &["completions", "bash"]).stdout;
    std::fs::write(home.join("maestroctl.bash"), script).unwrap();
    // What bash offers after `maestroctl WORDS… CURRENT<tab>`.
    let offered = |words: &[&str], env: &[(&str, &str)]| -> Vec<String> {
        let line: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let current = words.last().unwrap();
        let previous = words[words.len() - 2];
        let program = format!(
            "source {}/maestroctl.bash && complete -p maestroctl >/dev/null && COMP_WORDS=({}) && \
             COMP_CWORD={} && COMP_TYPE=9 && _clap_complete_maestroctl maestroctl '{current}' '{previous}'; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            home.display(),
            line.join(" "),
            words.len() - 1
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(program)
            .env("HOME", home)
            .env_remove("MAESTRO_SERVER")
            .env_remove("MAESTRO_PROJECT")
            .env_remove("MAESTROD_BIN")
            .envs(env.iter().copied())
            .current_dir(home)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').next().unwrap().to_string()).collect()
    };
    assert!(offered(&["maestroctl", "att"], &[]).contains(&"attach".to_string()), "commands come from the CLI");
    // No daemon runs: no ids are offered (flags are), and completing starts none.
    let without = offered(&["maestroctl", "attach", ""], &[]);
    assert!(without.contains(&"--from-seq".to_string()) && !without.iter().any(|c| c.starts_with("loop-")));
    assert_eq!(ctl(home, &["daemon", "status"]).code, 3, "a completion never starts the daemon");

    let _daemon = LocalDaemon(home);
    let workspace = home.join("demo");
    assert_eq!(ctl(home, &["run", "--demo", "--workspace", workspace.to_str().unwrap()]).code, 0);
    assert!(offered(&["maestroctl", "attach", ""], &[]).contains(&"loop-1".to_string()));
    assert_eq!(offered(&["maestroctl", "approve", "lo"], &[]), ["loop-1"]);
    assert!(offered(&["maestroctl", "-p", ""], &[]).contains(&"demo".to_string()));
    let requirements = offered(&["maestroctl", "req", "show", ""], &[("MAESTRO_PROJECT", "demo")]);
    assert!(requirements.contains(&"R1".to_string()) && requirements.contains(&"R5".to_string()), "{requirements:?}");
}
