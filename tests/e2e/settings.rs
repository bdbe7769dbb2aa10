//! maestroctl's settings as people set and break them, through the real
//! binaries with HOME in a temporary folder: `config set|get|unset|edit` on
//! both files, a broken file fixed from the CLI, `MAESTRO_PROJECT` exported
//! as the README says, an empty HOME, and what `run --demo` does with a task.

use std::path::Path;

use crate::lifecycle::{LocalDaemon, ctl, ctl_in};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// An executable shell script at `path` running `body`; its path.
fn script(path: &Path, body: &str) -> String {
    write(path, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn a_broken_users_file_blocks_commands_but_config_fixes_it() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let file = home.join(".maestro/config.yaml");
    write(&file, "# mine\nsever: http://typo:7700\noutput: json\n");
    let blocked = ctl(home, &["info"]);
    assert_eq!(blocked.code, 1);
    assert!(blocked.stderr.contains("sever") && blocked.stderr.contains("config unset"), "{}", blocked.stderr);
    assert_eq!(blocked.stderr.trim().lines().count(), 1, "one line: {}", blocked.stderr);

    // The fix the message names works on the broken file, and keeps the rest of it.
    let fixed = ctl(home, &["config", "unset", "sever"]);
    assert_eq!(fixed.code, 0, "{}", fixed.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# mine\noutput: json\n");
    let shown = ctl(home, &["config", "show"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let json: serde_json::Value = serde_json::from_str(&shown.stdout).expect("output: json applies again");
    assert_eq!(json["output"]["value"], "json");

    // `config edit` runs the editor on the file and checks what it left.
    write(&file, "output: xml\n");
    let editor = script(&home.join("fix.sh"), "printf 'output: yaml\\n' > \"$1\"");
    let edited = ctl_in(home, home, &[("EDITOR", &editor), ("VISUAL", "")], &["config", "edit"]);
    assert_eq!(edited.code, 0, "{}", edited.stderr);
    assert_eq!(ctl(home, &["config", "get", "output"]).stdout.trim(), "yaml");
    let breaker = script(&home.join("break.sh"), "printf 'colour: red\\n' >> \"$1\"");
    let broken = ctl_in(home, home, &[("EDITOR", &breaker), ("VISUAL", "")], &["config", "edit"]);
    assert_eq!(broken.code, 1, "a file left broken is reported: {}", broken.stderr);
    assert!(broken.stderr.contains("colour"), "{}", broken.stderr);
}

#[test]
fn every_key_of_both_files_is_set_checked_and_kept_with_its_comments() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _daemon = LocalDaemon(home);
    let folder = home.join("shop");
    let init = ctl(home, &["init", folder.to_str().unwrap()]);
    assert_eq!(init.code, 0, "{}", init.stderr);
    let project_file = folder.join(".maestro/config.yaml");
    let template = std::fs::read_to_string(&project_file).unwrap();
    let set = |args: &[&str]| ctl_in(home, &folder, &[], &[&["config", "set"], args].concat());

    // The model from the CLI, into the project's file: comments and layout kept.
    for (key, value) in [
        ("llm.provider", "anthropic"),
        ("llm.model", "claude-sonnet-4-5"),
        ("loop.retries", "5"),
        ("loop.test_command", "[npm, test]"),
        ("llm.roles.review.temperature", "0.2"),
        ("harness.roles.backend.write", "[src/api/**]"),
        ("harness.validator.rules", r"[{id: no-eval, applies_to: content, pattern: 'eval\(', reason: no eval}]"),
        ("loop.commit_to_current_branch", "true"),
    ] {
        let out = set(&["--project", key, value]);
        assert_eq!(out.code, 0, "{key}: {}", out.stderr);
    }
    let text = std::fs::read_to_string(&project_file).unwrap();
    // The comments of the keys left alone are all there (those set were uncommented in place).
    let set_keys = ["# model:", "# retries:", "# test_command:"];
    for line in template.lines().filter(|l| l.trim_start().starts_with('#')) {
        let kept = set_keys.iter().any(|k| line.trim_start().starts_with(k)) || text.contains(line);
        assert!(kept, "comment {line:?} lost:\n{text}");
    }
    assert!(text.contains("  retries: 5                  # full-cycle retries"), "{text}");
    assert!(text.contains("  provider: anthropic "), "in place, with its comment:\n{text}");
    let get = |key: &str| ctl_in(home, &folder, &[], &["config", "get", "--project", key]);
    assert_eq!(get("llm.model").stdout.trim(), "claude-sonnet-4-5");
    assert_eq!(get("loop.test_command").stdout.trim(), r#"["npm","test"]"#);
    assert_eq!(get("llm.roles.review.temperature").stdout.trim(), "0.2");
    // The daemon reads what was written: its policy shows the role's new write glob.
    let policy = ctl_in(home, &folder, &[], &["-o", "json", "policy", "show"]);
    assert_eq!(policy.code, 0, "{}", policy.stderr);
    assert!(policy.stdout.contains("src/api/**"), "{}", policy.stdout);
    assert!(policy.stdout.contains("no-eval"), "the extra validator rule is read: {}", policy.stdout);

    // Wrong values and keys: one line naming what is valid; the file untouched.
    let before = std::fs::read_to_string(&project_file).unwrap();
    let bad = set(&["--project", "llm.provider", "gpt"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("openai, anthropic, scripted, replay"), "{}", bad.stderr);
    let bad = set(&["--project", "loop.retries", "many"]);
    assert!(bad.code == 1 && bad.stderr.contains("whole number"), "{}", bad.stderr);
    let bad = set(&["--project", "loop.retrys", "1"]);
    assert!(bad.code == 1 && bad.stderr.contains("loop.retries"), "the keys nearby are listed: {}", bad.stderr);
    let bad = set(&["llm.provider", "openai"]);
    assert!(bad.code == 1 && bad.stderr.contains("--project"), "a project key needs --project: {}", bad.stderr);
    assert_eq!(std::fs::read_to_string(&project_file).unwrap(), before);
    let out = set(&["output", "xml"]);
    assert!(out.code == 1 && out.stderr.contains("table, json, yaml"), "{}", out.stderr);
    assert_eq!(set(&["color", "never"]).code, 0);
    assert_eq!(ctl(home, &["config", "get", "color"]).stdout.trim(), "never");

    // A user setting in the project's file is refused with the fix, which works.
    let mut text = std::fs::read_to_string(&project_file).unwrap();
    text.push_str("server: http://10.0.0.9:7700\n");
    std::fs::write(&project_file, text).unwrap();
    let refused = ctl_in(home, &folder, &[], &["req", "list"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("config unset --project server"), "{}", refused.stderr);
    assert_eq!(ctl_in(home, &folder, &[], &["config", "unset", "--project", "server"]).code, 0);
    assert_eq!(ctl_in(home, &folder, &[], &["req", "list"]).code, 0);

    // Every key the CLI lists, with what it takes.
    let keys = ctl(home, &["-o", "json", "config", "keys"]);
    let keys: Vec<serde_json::Value> = serde_json::from_str(&keys.stdout).unwrap();
    let names: Vec<&str> = keys.iter().filter_map(|k| k["key"].as_str()).collect();
    for key in ["server", "output", "color", "llm.provider", "llm.roles.*.model", "harness.budget.per_loop.tokens"] {
        assert!(names.contains(&key), "{key} missing from {names:?}");
    }
}

#[test]
fn an_exported_project_does_not_rename_new_projects_or_break_the_demo() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _daemon = LocalDaemon(home);
    let todo = home.join("todo");
    assert_eq!(ctl(home, &["project", "create", "todo", "--workspace", todo.to_str().unwrap()]).code, 0);
    let exported = [("MAESTRO_PROJECT", "todo")];

    // `init` of another folder makes that folder's project, not a second "todo".
    let shop = home.join("shop");
    let init = ctl_in(home, home, &exported, &["init", shop.to_str().unwrap()]);
    assert_eq!(init.code, 0, "{}", init.stderr);
    let config = std::fs::read_to_string(shop.join(".maestro/config.yaml")).unwrap();
    assert!(config.contains("id: shop"), "{config}");

    // Naming a project that is somebody else's is one clear line, and leaves no file behind.
    let cafe = home.join("cafe");
    let clash = ctl(home, &["-p", "todo", "init", cafe.to_str().unwrap()]);
    assert_eq!(clash.code, 1);
    assert!(clash.stderr.contains("todo exists already and belongs to"), "{}", clash.stderr);
    assert!(!cafe.join(".maestro/config.yaml").exists(), "no config pointing at someone else's project");

    // The demo with the README's export: it runs in its own project.
    let demo = home.join("demo");
    let run = ctl_in(home, home, &exported, &["run", "--demo", "--workspace", demo.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("take it onto yours: git -C"), "{}", run.stderr);

    // Attaching to the finished loop replays its events and its outcome.
    let attached = ctl(home, &["attach", "loop-1"]);
    assert_eq!(attached.code, 0, "{}", attached.stderr);
    assert!(attached.stdout.contains("── PLAN") && attached.stdout.contains("succeeded:"), "{}", attached.stdout);
    assert!(attached.stderr.contains("maestro/loop-1"), "{}", attached.stderr);

    // YAML for every listing, with the JSON's field names; the branch is on the loop.
    let yaml = ctl(home, &["-o", "yaml", "loop", "list"]);
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    assert!(yaml.stdout.starts_with("- "), "a YAML list: {}", yaml.stdout);
    for field in ["  loopId: loop-1\n", "  state: LOOP_STATE_SUCCEEDED\n", "  resultBranch: maestro/loop-1\n"] {
        assert!(yaml.stdout.contains(field), "{field:?} missing:\n{}", yaml.stdout);
    }
    let log = ctl(home, &["-o", "yaml", "-p", "demo", "logs", "-n", "2"]);
    assert!(log.stdout.starts_with("---\n") && log.stdout.matches("---\n").count() == 2, "{}", log.stdout);
}

#[test]
fn the_demo_runs_only_its_own_task() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    // Connecting starts the local daemon before the task is looked at: stop it at the end.
    let _daemon = LocalDaemon(home);
    let other = ctl(home, &["run", "--demo", "Build a chess engine"]);
    assert_eq!(other.code, 1);
    assert!(other.stderr.contains("the demo builds only its own task"), "{}", other.stderr);
    assert!(other.stderr.contains("maestroctl run 'Build a chess engine'"), "{}", other.stderr);
    assert!(!home.join("maestro-demo").exists(), "nothing was started");
}

#[test]
fn an_empty_or_relative_home_is_no_home() {
    let home = tempfile::tempdir().unwrap();
    let folder = home.path().join("shop");
    write(&folder.join(".maestro/config.yaml"), "project:\n  id: shop\n");
    for value in ["", "."] {
        let out = ctl_in(home.path(), &folder, &[("HOME", value)], &["-o", "json", "config", "show"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(json["project"]["value"], "shop");
        assert!(json["project"]["source"].as_str().unwrap().contains("shop/.maestro"), "{json}");
        let set = ctl_in(home.path(), &folder, &[("HOME", value)], &["config", "set", "output", "json"]);
        assert_eq!(set.code, 1, "the project's file is not the user's");
        assert!(set.stderr.contains("HOME is not set"), "{}", set.stderr);
    }
    let project = std::fs::read_to_string(folder.join(".maestro/config.yaml")).unwrap();
    assert_eq!(project, "project:\n  id: shop\n");
}
