//! `maestroctl` against a live daemon: every subcommand in table and JSON
//! form, and the error path (one line on stderr, exit 1).

use maestro_tests::{Daemon, run_ctl};

#[test]
fn every_subcommand_in_table_and_json() {
    let daemon = Daemon::start().unwrap();
    let ctl = |args: &[&str]| daemon.ctl(args);
    let p = |args: &[&str]| {
        let mut full = vec!["-p", "demo"];
        full.extend_from_slice(args);
        daemon.ctl(&full)
    };

    let workspace = tempfile::tempdir().unwrap();
    let created =
        ctl(&["project", "create", "demo", "--name", "Demo", "--workspace", workspace.path().to_str().unwrap()]);
    assert!(created.ok().contains("demo"));
    let projects = ctl(&["--output", "json", "project", "list"]).json();
    assert_eq!(projects[0]["id"], "demo");
    assert_eq!(projects[0]["workspace"], workspace.path().to_str().unwrap());
    assert!(ctl(&["project", "show", "demo"]).ok().contains("Demo"));

    p(&["req", "add", "Build a to-do app"]).ok();
    p(&["req", "add", "REST API", "--parent", "R1", "--role", "backend", "--accept", "GET /todos works"]).ok();
    p(&["req", "add", "Web page", "--parent", "R1", "--role", "frontend", "--depends-on", "R2"]).ok();
    let tree = p(&["req", "list"]);
    let tree = tree.ok();
    assert!(tree.contains("R1 [PENDING] Build a to-do app"), "{tree}");
    assert!(tree.contains("├─ R2 [PENDING] REST API (backend)"), "{tree}");
    assert!(tree.contains("└─ R3 [PENDING] Web page (frontend) ← depends on R2"), "{tree}");
    let listed = p(&["-o", "json", "req", "list"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert_eq!(listed[2]["dependsOn"][0], "R2");
    assert_eq!(listed[1]["status"], "REQUIREMENT_STATUS_PENDING");

    let ready = p(&["-o", "json", "req", "ready"]).json();
    let ready: Vec<&str> = ready.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ready, ["R1", "R2"]);
    p(&["req", "set-status", "R2", "claimed", "--assignee", "backend"]).ok();
    p(&["req", "set-status", "R2", "in-progress"]).ok();
    let done = p(&["-o", "json", "req", "set-status", "R2", "done", "--reason", "tests pass"]).json();
    assert_eq!(done["status"], "REQUIREMENT_STATUS_DONE");
    assert_eq!(done["attempts"], 1);
    let shown = p(&["req", "show", "R2"]);
    assert!(shown.ok().contains("tests pass"));
    let cycle = p(&["req", "depend", "R2", "--on", "R3"]);
    assert_eq!(cycle.code, 1);
    assert!(
        cycle.stderr.contains("cycle R2 → R3 → R2") && cycle.stderr.contains("FAILED_PRECONDITION"),
        "{}",
        cycle.stderr
    );
    p(&["req", "depend", "R3", "--remove", "R2"]).ok();

    let spec = workspace.path().join("todo.json");
    std::fs::write(&spec, r#"{"type":"object","properties":{"title":{"type":"string"}}}"#).unwrap();
    let spec = spec.to_str().unwrap();
    p(&[
        "contract",
        "put",
        "todo",
        "--kind",
        "json-schema",
        "--spec-file",
        spec,
        "--owner",
        "backend",
        "--consumer",
        "frontend",
    ])
    .ok();
    p(&["contract", "put", "todo", "--kind", "json-schema", "--spec-file", spec, "--status", "proposed"]).ok();
    let versions = p(&["-o", "json", "contract", "versions", "todo"]).json();
    assert_eq!(versions.as_array().unwrap().len(), 2);
    let listed = p(&["contract", "list"]);
    assert!(listed.ok().contains("todo  2"), "{}", listed.stdout);
    p(&["contract", "set-status", "todo", "accepted"]).ok();
    let shown = p(&["-o", "json", "contract", "show", "todo", "--version", "1"]).json();
    assert_eq!(shown["status"], "CONTRACT_STATUS_DRAFT");
    assert_eq!(shown["consumers"][0], "frontend");

    p(&["log", "append", "write_file", "--agent", "backend", "--target", "src/api/todo.py", "--outcome", "allowed"])
        .ok();
    p(&["log", "append", "run_command", "--agent", "test", "--target", "pytest"]).ok();
    let log = p(&["-o", "json", "log", "list", "--agent", "test"]).json();
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!(log[0]["seq"], "2");
    assert!(p(&["log", "list"]).ok().contains("src/api/todo.py"));
    let verify = p(&["-o", "json", "log", "verify"]).json();
    assert_eq!(verify["ok"], true);
    assert!(p(&["log", "verify"]).ok().starts_with("ok: 2 entries"));

    p(&["memory", "put", "backend", "framework", "flask"]).ok();
    assert_eq!(p(&["memory", "get", "backend", "framework"]).ok().trim(), "flask");
    let memory = p(&["-o", "json", "memory", "list", "backend"]).json();
    assert_eq!(memory[0]["key"], "framework");
    p(&["memory", "delete", "backend", "framework"]).ok();
    assert_eq!(p(&["memory", "get", "backend", "framework"]).code, 1);

    let lock = p(&["-o", "json", "lock", "acquire", "src/api", "--holder", "backend"]).json();
    let lease = lock["leaseId"].as_str().unwrap().to_string();
    let held = p(&["lock", "acquire", "src/api", "--holder", "frontend"]);
    assert_eq!(held.code, 1);
    assert!(held.stderr.contains("held by backend"), "{}", held.stderr);
    assert!(p(&["lock", "list"]).ok().contains("src/api"));
    p(&["lock", "keep-alive", &lease]).ok();
    p(&["lock", "release", "src/api", "--lease", &lease]).ok();
    assert!(p(&["-o", "json", "lock", "list"]).json().as_array().unwrap().is_empty());

    p(&["snapshot", "create", "s1", "--description", "before extra"]).ok();
    p(&["req", "add", "Extra"]).ok();
    let diff = p(&["snapshot", "diff", "s1"]);
    assert!(diff.ok().contains("+ requirements/R4"), "{}", diff.stdout);
    let diff = p(&["-o", "json", "snapshot", "diff", "s1"]).json();
    assert_eq!(diff["changes"][0]["kind"], "CHANGE_KIND_ADDED");
    assert!(p(&["snapshot", "list"]).ok().contains("before extra"));
    assert!(p(&["snapshot", "restore", "s1", "--yes"]).ok().contains("1 resource(s) changed"));
    assert_eq!(p(&["-o", "json", "req", "list"]).json().as_array().unwrap().len(), 3);
    p(&["snapshot", "delete", "s1"]).ok();

    let info = ctl(&["-o", "json", "info"]).json();
    assert!(info["revision"].as_str().unwrap().parse::<u64>().unwrap() > 10);

    // Every read command, in both output forms: tables are text, JSON is JSON only.
    p(&["memory", "put", "test", "runner", "pytest"]).ok();
    p(&["snapshot", "create", "s2"]).ok();
    let reads: [&[&str]; 14] = [
        &["project", "list"],
        &["project", "show", "demo"],
        &["req", "list"],
        &["req", "ready"],
        &["req", "show", "R1"],
        &["contract", "list"],
        &["contract", "show", "todo"],
        &["contract", "versions", "todo"],
        &["log", "list"],
        &["log", "verify"],
        &["memory", "list"],
        &["lock", "list"],
        &["snapshot", "list"],
        &["snapshot", "diff", "s2"],
    ];
    for args in reads {
        let table = p(args);
        assert!(!table.ok().trim().is_empty(), "{args:?} printed nothing");
        assert!(serde_json::from_str::<serde_json::Value>(&table.stdout).is_err(), "{args:?} table is not JSON");
        let mut json_args = vec!["-o", "json"];
        json_args.extend_from_slice(args);
        let json = p(&json_args).json();
        assert!(json.is_object() || json.is_array(), "{args:?}: {json}");
    }

    // Deletions. Restoring s1 removed R4, but ids are never reused: the next one is R5.
    assert!(p(&["req", "add", "Temporary"]).ok().contains("R5"));
    let refused = p(&["req", "delete", "R1"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("has children"), "{}", refused.stderr);
    assert!(p(&["req", "delete", "R5"]).ok().contains("deleted requirement R5"));
    let lease = p(&["-o", "json", "lock", "acquire", "deploy", "--holder", "ci"]).json()["leaseId"]
        .as_str()
        .unwrap()
        .to_string();
    p(&["lock", "revoke", &lease]).ok();
    assert!(
        p(&["-o", "json", "lock", "list"]).json().as_array().unwrap().is_empty(),
        "revoking the lease released the lock"
    );
    assert!(ctl(&["project", "delete", "demo", "--yes"]).ok().contains("deleted project demo"));
    assert!(ctl(&["-o", "json", "project", "list"]).json().as_array().unwrap().is_empty());
}

#[test]
fn errors_are_one_line_and_exit_1() {
    let daemon = Daemon::start().unwrap();
    let check = |out: maestro_tests::CtlOutput, mention: &str| {
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stdout.is_empty(), "nothing on stdout: {out:?}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {:?}", out.stderr);
        assert!(out.stderr.contains(mention), "{:?} should mention {mention:?}", out.stderr);
    };
    check(daemon.ctl(&["-p", "ghost", "req", "list"]), "project ghost not found (NOT_FOUND)");
    check(daemon.ctl(&["-o", "json", "-p", "ghost", "req", "list"]), "NOT_FOUND");
    check(daemon.ctl(&["req", "list"]), "--project");
    check(daemon.ctl(&["project", "create", "Not Valid"]), "INVALID_ARGUMENT");
    check(run_ctl("http://127.0.0.1:1", &["project", "list"]), "cannot reach maestrod at http://127.0.0.1:1");
    check(run_ctl("not a url", &["project", "list"]), "--server");
    let usage = daemon.ctl(&["req", "frobnicate"]);
    assert_eq!(usage.code, 1, "usage errors exit 1: {usage:?}");
}

#[test]
fn watch_follows_events_as_json_lines() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let daemon = Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "w"]).ok();
    let created = daemon.ctl(&["-o", "json", "project", "show", "w"]);
    // The project's first revision (on etcd, revisions are the whole cluster's).
    let from = created.json()["meta"]["createRevision"].as_str().expect("the project's create revision").to_string();
    daemon.ctl(&["-p", "w", "req", "add", "before the watch"]).ok();
    let mut child = Command::new(maestro_tests::binary("e2e-maestroctl"))
        .args(["--server", &daemon.url(), "-p", "w", "-o", "json", "watch", "--from-revision", &from])
        .env("MAESTRO_TOKEN", daemon.admin_token())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    daemon.ctl(&["-p", "w", "req", "add", "during the watch"]).ok();
    let mut keys = Vec::new();
    while keys.len() < 2 {
        let line = lines.next().expect("watch prints events").unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).expect("each line is JSON");
        keys.push(event["key"].as_str().unwrap().to_string());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(keys, ["requirements/R1", "requirements/R2"]);
}

#[test]
fn without_a_command_lines_from_stdin_run_as_a_session() {
    use std::io::Write;
    use std::process::Stdio;

    let daemon = Daemon::start().unwrap();
    let here = std::env::current_dir().unwrap();
    let mut child = maestro_tests::ctl_command(&daemon.url(), &here, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = r#"
project create shop
use shop
req add "Checkout page" --role frontend
-o json
req list
-o table req show R1
req frobnicate
req add "unclosed
info
exit
project delete shop --yes
"#;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The failed lines are reported with their numbers; the session goes on after them.
    assert_eq!(out.status.code(), Some(1), "a script with a failed line exits with its code: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("maestroctl: line")).collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(errors[0].starts_with("maestroctl: line 8: unrecognized subcommand 'frobnicate'"), "{stderr}");
    assert_eq!(errors[1], "maestroctl: line 9: unbalanced quotes");
    assert!(stdout.lines().any(|l| l.starts_with("shop ")), "the project was created: {stdout}");
    // `use` and `-o json` carried over to the following lines; `-o table` held for one line only.
    assert!(stdout.contains(r#""title": "Checkout page""#), "req list as JSON in project shop: {stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("title") && l.ends_with("Checkout page")), "{stdout}");
    assert!(stdout.contains(r#""dataDir""#), "info as JSON again: {stdout}");
    // Nothing after `exit` ran.
    assert!(daemon.ctl(&["project", "show", "shop"]).ok().contains("shop"));
}

#[test]
fn settings_come_from_flags_env_the_project_folder_and_the_users_file() {
    let daemon = Daemon::start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ctl = |cwd: &std::path::Path, env: &[(&str, &str)], args: &[&str]| {
        let mut command = maestro_tests::ctl_command(&daemon.url(), cwd, args);
        command.env("HOME", home.path()).envs(env.iter().copied());
        let out = command.output().unwrap();
        maestro_tests::CtlOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let show = |cwd: &std::path::Path, env: &[(&str, &str)]| ctl(cwd, env, &["-o", "json", "config"]).json();

    let plain = ctl(work.path(), &[], &["config"]).ok().to_string();
    assert!(plain.lines().any(|l| l.starts_with("output") && l.contains("table") && l.ends_with("default")), "{plain}");
    let defaults = show(work.path(), &[]);
    assert_eq!(defaults["output"], serde_json::json!({"value": "json", "source": "flag"}));
    assert_eq!(defaults["project"]["value"], "");
    // The daemon address given by --server is a flag.
    assert_eq!(defaults["server"]["source"], "flag");

    assert_eq!(ctl(work.path(), &[], &["config", "get", "project"]).code, 1, "unset keys exit 1");
    ctl(work.path(), &[], &["config", "set", "project", "todo"]).ok();
    ctl(work.path(), &[], &["config", "set", "output", "json"]).ok();
    assert_eq!(ctl(work.path(), &[], &["config", "get", "project"]).ok().trim(), "todo");
    let file = home.path().join(".maestro/config.yaml");
    let from_file = ctl(work.path(), &[], &["config"]).ok().to_string();
    let from_file: serde_json::Value = serde_json::from_str(&from_file).expect("output: json from the file");
    assert_eq!(from_file["project"]["value"], "todo");
    assert_eq!(from_file["project"]["source"], file.to_str().unwrap());

    // A project folder's id beats the user's default; the environment beats both; flags beat all.
    let shop = work.path().join("shop");
    ctl(work.path(), &[], &["init", "shop"]).ok();
    let nested = shop.join("src/api");
    std::fs::create_dir_all(&nested).unwrap();
    assert_eq!(show(&nested, &[])["project"]["value"], "shop");
    ctl(&nested, &[], &["req", "add", "Without -p: the folder's project"]).ok();
    let listed = ctl(&nested, &[], &["req", "list"]).json();
    assert_eq!(listed[0]["title"], "Without -p: the folder's project");
    let env = show(&nested, &[("MAESTRO_PROJECT", "other"), ("MAESTRO_OUTPUT", "table")]);
    assert_eq!(env["project"], serde_json::json!({"value": "other", "source": "env MAESTRO_PROJECT"}));
    let table = ctl(&nested, &[("MAESTRO_OUTPUT", "table")], &["config"]).ok().to_string();
    assert!(table.starts_with("KEY"), "MAESTRO_OUTPUT=table beats the file: {table}");
    assert_eq!(show(&nested, &[])["output"]["value"], "json", "-o json is a flag here");

    // Bad keys and values are one line and exit 1; nothing is written.
    for (args, mention) in [
        (&["config", "set", "colour", "red"][..], "unknown key \"colour\""),
        (&["config", "set", "output", "xml"][..], "is not one of table, json, yaml"),
        (&["config", "set", "server", "ftp://h:1"][..], "not a valid address"),
    ] {
        let out = ctl(work.path(), &[], args);
        assert_eq!(out.code, 1, "{out:?}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
        assert!(out.stderr.contains(mention), "{out:?}");
    }
    ctl(work.path(), &[], &["config", "unset", "output"]).ok();
    assert!(!std::fs::read_to_string(&file).unwrap().contains("output"));
    std::fs::write(&file, "sever: http://typo:7700\n").unwrap();
    let broken = ctl(work.path(), &[], &["info"]);
    assert_eq!(broken.code, 1);
    assert!(broken.stderr.contains("config.yaml") && broken.stderr.contains("sever"), "{}", broken.stderr);
}
