//! Who may do what, through the real daemon: every RPC of the permission
//! table called with no token, a bad token, and as users of each role in the
//! project, in another project, and over the whole daemon; users made with
//! `maestrod user add` while the daemon runs, and revoked at once.

use std::process::Command;

use maestro_tests::{Daemon, binary};
use maestrod::api::auth::{RULES, Rule, Scope};
use maestrod::auth::Role;
use tonic::Code;

/// The first field of any request: the project or loop id it names.
#[derive(Clone, PartialEq, prost::Message)]
struct Probe {
    #[prost(string, tag = "1")]
    id: String,
}

/// Calls `method` with field 1 set to `id`; returns the status code (Ok when it was let through).
async fn call(conn: maestro_tests::Conn, method: &str, id: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(conn);
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = method.parse().unwrap();
    let codec = tonic_prost::ProstCodec::<Probe, Probe>::default();
    let request = tonic::Request::new(Probe { id: id.into() });
    let streaming = method.ends_with("/Watch") || method.ends_with("/StreamLoopEvents");
    let result = if streaming {
        grpc.server_streaming(request, path, codec).await.map(drop)
    } else {
        grpc.unary(request, path, codec).await.map(drop)
    };
    result.err().map_or(Code::Ok, |status| status.code())
}

/// Runs `maestroctl` against `daemon` with `token` as MAESTRO_TOKEN.
fn ctl_as(daemon: &Daemon, token: &str, args: &[&str]) -> maestro_tests::CtlOutput {
    let mut command = maestro_tests::ctl_command(&daemon.url(), std::path::Path::new("/"), args);
    command.env("MAESTRO_TOKEN", token);
    let out = command.output().unwrap();
    maestro_tests::CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What the table says a user with `grants` may do, worked out independently of the layer.
fn allowed(rule: &Rule, grants: &[(&str, Role)]) -> bool {
    let role_in = |project: &str| {
        grants.iter().filter(|(p, _)| *p == "*" || (project != "*" && *p == project)).map(|(_, r)| *r).max()
    };
    match rule.scope {
        Scope::Authenticated => true,
        Scope::AnyProject => grants.iter().any(|(_, r)| *r >= rule.role),
        Scope::Daemon => role_in("*").is_some_and(|r| r >= rule.role),
        Scope::Project | Scope::Loop => role_in("shop").is_some_and(|r| r >= rule.role),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_authorized_as_the_permission_table_says() {
    let daemon = Daemon::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("shop");
    daemon.ctl(&["project", "create", "other"]).ok();
    // A loop in shop, so that loop-scoped RPCs have a project to be judged by.
    let started =
        daemon.ctl(&["-p", "shop", "-o", "json", "run", "--demo", "--detach", "--workspace", ws.to_str().unwrap()]);
    let loop_id = started.json()["loopId"].as_str().unwrap().to_string();

    type Grants = Vec<(&'static str, Role)>;
    let callers: Vec<(&str, String, Grants)> = vec![
        ("viewer", daemon.add_user("vera", "viewer", "shop"), vec![("shop", Role::Viewer)]),
        ("developer", daemon.add_user("dev", "developer", "shop"), vec![("shop", Role::Developer)]),
        ("project admin", daemon.add_user("pat", "admin", "shop"), vec![("shop", Role::Admin)]),
        ("other project's developer", daemon.add_user("otto", "developer", "other"), vec![("other", Role::Developer)]),
        ("daemon viewer", daemon.add_user("auditor", "viewer", "*"), vec![("*", Role::Viewer)]),
    ];
    // Deleting the project goes last: every other call needs it there.
    let mut rules: Vec<&Rule> = RULES.iter().collect();
    rules.sort_by_key(|r| r.method.ends_with("/DeleteProject"));
    let mut wrong = Vec::new();
    for &rule in &rules {
        let id = if rule.scope == Scope::Loop { loop_id.as_str() } else { "shop" };
        for (who, token) in [("no token", String::new()), ("a bad token", "mst_not-a-real-token".to_string())] {
            let code = call(daemon.channel_with(&token).await.unwrap(), rule.method, id).await;
            if code != Code::Unauthenticated {
                wrong.push(format!("{} with {who}: {code:?}", rule.method));
            }
        }
        for (who, token, grants) in &callers {
            let code = call(daemon.channel_with(token).await.unwrap(), rule.method, id).await;
            let expected = allowed(rule, grants);
            if expected == (code == Code::PermissionDenied) || code == Code::Unauthenticated {
                wrong.push(format!(
                    "{} as {who}: {code:?}, expected {}",
                    rule.method,
                    if expected { "allowed" } else { "denied" }
                ));
            }
        }
    }
    // The daemon's own admin may call everything.
    for &rule in &rules {
        let id = if rule.scope == Scope::Loop { loop_id.as_str() } else { "shop" };
        let code = call(daemon.channel().await.unwrap(), rule.method, id).await;
        if matches!(code, Code::PermissionDenied | Code::Unauthenticated) {
            wrong.push(format!("{} as the admin: {code:?}", rule.method));
        }
    }
    // Paths outside the table: refused once authenticated, never let through.
    for method in ["/maestro.v1.RequirementService/Nope", "/maestro.v2.Hidden/Call", "//maestro.v1.SystemService/Ping"]
    {
        let code = call(daemon.channel().await.unwrap(), method, "shop").await;
        if code != Code::PermissionDenied {
            wrong.push(format!("{method}: {code:?}"));
        }
    }
    // Health checks need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(daemon.channel_with("").await.unwrap());
    let served = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
    assert!(served.is_ok(), "{served:?}");
    assert!(wrong.is_empty(), "{} wrong decisions:\n{}", wrong.len(), wrong.join("\n"));
    let log = daemon.log();
    assert!(log.contains("permission denied") && log.contains("user=vera"), "denials are logged with the user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_come_and_go_while_the_daemon_runs_and_clients_say_what_to_do() {
    let daemon = Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "shop"]).ok();
    daemon.ctl(&["project", "create", "secret"]).ok();
    let token = daemon.add_user("dev", "developer", "shop");
    let as_dev = |args: &[&str]| {
        let out = ctl_as(&daemon, &token, args);
        (out.code, out.stdout, out.stderr)
    };
    let (code, _, err) = as_dev(&["-p", "shop", "req", "add", "Checkout"]);
    assert_eq!(code, 0, "{err}");
    // Listing shows the projects one may see, and nothing of the others.
    let (code, out, err) = as_dev(&["-o", "json", "project", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"shop\"") && !out.contains("secret"), "{out}");
    let (code, _, err) = as_dev(&["-p", "secret", "req", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED") && err.contains("user dev") && err.lines().count() == 1, "{err}");

    // Where agents work is the daemon admin's choice.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, _, err) =
        as_dev(&["-p", "shop", "run", "--demo", "--detach", "--workspace", elsewhere.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("PERMISSION_DENIED") && err.contains("only a daemon admin sets workspaces"), "{err}");
    // Not even a project's admin: only a daemon-wide one.
    let project_admin = daemon.add_user("pat", "admin", "shop");
    let mut projects = maestro_shared::v1::project_service_client::ProjectServiceClient::new(
        daemon.channel_with(&project_admin).await.unwrap(),
    );
    let moved = projects
        .update_project(maestro_shared::v1::UpdateProjectRequest {
            id: "shop".into(),
            workspace: Some(elsewhere.path().display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(moved.code(), Code::PermissionDenied, "{moved:?}");
    assert!(moved.message().contains("only a daemon admin sets workspaces"), "{}", moved.message());
    // A loop that does not exist is NOT_FOUND, whoever asks.
    let (code, _, err) = as_dev(&["loop", "show", "loop-99"]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "{err}");

    // maestrod user list shows users and roles, never tokens.
    let out = Command::new(binary("e2e-maestrod"))
        .arg("--data-dir")
        .arg(daemon.data_dir())
        .args(["user", "list", "-o", "json"])
        .output()
        .unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(listed.contains("\"dev\"") && listed.contains("developer") && !listed.contains(&token), "{listed}");

    let out = Command::new(binary("e2e-maestrod"))
        .arg("--data-dir")
        .arg(daemon.data_dir())
        .args(["user", "revoke", "dev"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (code, _, err) = as_dev(&["-p", "shop", "req", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("UNAUTHENTICATED") && err.contains("not valid"), "revoked at once: {err}");

    // No token at all: the line says where one comes from.
    let mut command = maestro_tests::ctl_command(&daemon.url(), std::path::Path::new("/"), &["info"]);
    command.env_remove("MAESTRO_TOKEN");
    let out = command.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("UNAUTHENTICATED") && err.contains("MAESTRO_TOKEN") && err.contains("admin.token"), "{err}");
}

/// Another user of the machine cannot use the daemon: the admin token is the
/// data dir owner's (0600), and without a token every RPC is refused.
#[test]
fn another_local_user_is_refused() {
    if !nix::unistd::Uid::effective().is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to act as a second user");
        return;
    }
    let daemon = Daemon::start().unwrap();
    let token_file = daemon.data_dir().join("admin.token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    let ctl = binary("e2e-maestroctl");
    let copy = tempfile::tempdir().unwrap();
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = copy.path().join("maestroctl");
    std::fs::copy(&ctl, &exe).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--server", &daemon.url(), "info"])
        .env("HOME", "/nonexistent")
        .env_remove("MAESTRO_TOKEN")
        .current_dir("/")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let read = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(!read.status.success(), "another user cannot read the admin token");
    // Even where the folder around the data dir is open to all.
    let around = daemon.data_dir().parent().unwrap();
    std::fs::set_permissions(around, std::fs::Permissions::from_mode(0o755)).unwrap();
    let list = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ls"])
        .arg(daemon.data_dir())
        .output()
        .unwrap();
    assert!(!list.status.success(), "nor look into the store around the API");
}

/// A lease is its grantee's: another project's developer cannot revoke, keep
/// alive or borrow it by guessing its id; the daemon's admin can end any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_belong_to_whoever_was_granted_them() {
    use maestro_shared::v1::{self, lock_service_client::LockServiceClient};
    let daemon = Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "shop"]).ok();
    daemon.ctl(&["project", "create", "other"]).ok();
    let alice = daemon.add_user("alice", "developer", "shop");
    let mallory = daemon.add_user("mallory", "developer", "other");
    let mut as_alice = LockServiceClient::new(daemon.channel_with(&alice).await.unwrap());
    let mut as_mallory = LockServiceClient::new(daemon.channel_with(&mallory).await.unwrap());

    let lease = as_alice.grant_lease(v1::GrantLeaseRequest { ttl_seconds: 60 }).await.unwrap().into_inner().id;
    let lock = as_alice
        .acquire_lock(v1::AcquireLockRequest {
            project_id: "shop".into(),
            name: "deploy".into(),
            holder: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for id in [lease, lock.lease_id] {
        let revoke = as_mallory.revoke_lease(v1::RevokeLeaseRequest { lease_id: id }).await.unwrap_err();
        assert_eq!(revoke.code(), Code::PermissionDenied, "{revoke:?}");
        assert!(revoke.message().contains("is not yours"), "{}", revoke.message());
        let keep = as_mallory.keep_alive(v1::KeepAliveRequest { lease_id: id }).await.unwrap_err();
        assert_eq!(keep.code(), Code::PermissionDenied);
        as_alice.keep_alive(v1::KeepAliveRequest { lease_id: id }).await.unwrap();
    }
    // Hanging one's lock on someone else's lease is refused too.
    let borrowed = as_mallory
        .acquire_lock(v1::AcquireLockRequest {
            project_id: "other".into(),
            name: "x".into(),
            holder: "mallory".into(),
            lease_id: lease,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(borrowed.code(), Code::PermissionDenied);
    // The lock is still alice's, and she may end it.
    let locks = daemon.ctl(&["-p", "shop", "-o", "json", "lock", "list"]).json();
    assert_eq!(locks.as_array().map(Vec::len), Some(1), "{locks}");
    as_alice.revoke_lease(v1::RevokeLeaseRequest { lease_id: lock.lease_id }).await.unwrap();
    // The daemon's admin may end any lease.
    let mut as_admin = LockServiceClient::new(daemon.channel().await.unwrap());
    as_admin.revoke_lease(v1::RevokeLeaseRequest { lease_id: lease }).await.unwrap();
}

/// Grants name projects: deleting a project drops them, so a new project that
/// reuses the id does not open to the old one's users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_project_takes_its_grants_with_it() {
    let daemon = Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "temp"]).ok();
    let token = daemon.add_user("tess", "developer", "temp");
    let as_tess = |args: &[&str]| {
        let out = ctl_as(&daemon, &token, args);
        (out.code, out.stderr)
    };
    assert_eq!(as_tess(&["-p", "temp", "req", "add", "before"]).0, 0);
    daemon.ctl(&["project", "delete", "temp", "--yes"]).ok();
    let (code, err) = as_tess(&["-p", "temp", "req", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    // The id is never given out again: a new "temp" would inherit the old one's
    // history (readable at old revisions, replayed by a watch from revision 1).
    let again = daemon.ctl(&["project", "create", "temp"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("ALREADY_EXISTS") && again.stderr.contains("never reused"), "{again:?}");
    let listed = daemon.ctl(&["-o", "json", "project", "list"]).json();
    assert!(!listed.to_string().contains("\"temp\""), "{listed}");
}

/// `UserService` and `maestroctl user`: the daemon's admin hands a project to
/// its admin, who manages that project's users and no one else.
#[test]
fn a_project_admin_manages_the_users_of_their_project_only() {
    let daemon = Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "shop"]).ok();
    daemon.ctl(&["project", "create", "other"]).ok();
    let added = daemon.ctl(&["-p", "shop", "user", "add", "alice", "--role", "admin"]);
    let alice = added.ok().trim().to_string();
    assert!(alice.starts_with("mst_"), "the token, once: {added:?}");

    let bob =
        ctl_as(&daemon, &alice, &["-p", "shop", "user", "add", "bob", "--role", "developer"]).ok().trim().to_string();
    ctl_as(&daemon, &bob, &["-p", "shop", "req", "add", "Bob's first"]).ok();
    for args in [&["-p", "other", "user", "add", "eve"][..], &["user", "add", "eve", "--all"]] {
        let denied = ctl_as(&daemon, &alice, args);
        assert!(denied.code == 1 && denied.stderr.contains("PERMISSION_DENIED"), "{args:?}: {denied:?}");
    }
    let listed = ctl_as(&daemon, &alice, &["-o", "json", "user", "list"]).json();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"], "only the users of alice's project");
    assert_eq!(listed[1]["grants"][0], serde_json::json!({"project": "shop", "role": "ROLE_DEVELOPER"}));
    assert!(!listed.to_string().contains("mst_"), "never a token");
    let not_hers = ctl_as(&daemon, &alice, &["user", "revoke", "admin"]);
    assert!(not_hers.stderr.contains("NOT_FOUND"), "{not_hers:?}");
    let by_developer = ctl_as(&daemon, &bob, &["user", "list"]);
    assert!(by_developer.stderr.contains("PERMISSION_DENIED"), "{by_developer:?}");

    // One registry: maestrod's own command sees what the RPC did, and the RPC what it does.
    let out = Command::new(binary("e2e-maestrod"))
        .arg("--data-dir")
        .arg(daemon.data_dir())
        .args(["user", "list", "-o", "json"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"bob\""));
    ctl_as(&daemon, &alice, &["user", "revoke", "bob"]).ok();
    let gone = ctl_as(&daemon, &bob, &["-p", "shop", "req", "list"]);
    assert!(gone.stderr.contains("UNAUTHENTICATED"), "revoked at once: {gone:?}");
    let again = ctl_as(&daemon, &alice, &["-p", "shop", "user", "add", "alice", "--role", "viewer"]);
    assert!(again.stderr.contains("ALREADY_EXISTS"), "{again:?}");
}

/// Every change records who made it: the user of the call, or the loop for
/// what a loop and its agents write; old revisions keep their author.
#[test]
fn every_change_records_who_made_it() {
    let daemon = Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "shop"]).ok();
    let alice = daemon.add_user("alice", "developer", "shop");
    let bob = daemon.add_user("bob", "developer", "shop");
    ctl_as(&daemon, &alice, &["-p", "shop", "req", "add", "Checkout"]).ok();
    let created = ctl_as(&daemon, &alice, &["-p", "shop", "-o", "json", "req", "show", "R1"]).json();
    assert_eq!(created["meta"]["modifiedBy"], "alice", "{created}");
    let first_revision = created["meta"]["modRevision"].as_str().unwrap().to_string();
    ctl_as(&daemon, &bob, &["-p", "shop", "req", "set-status", "R1", "claimed", "--assignee", "bob"]).ok();
    let now = ctl_as(&daemon, &alice, &["-p", "shop", "-o", "json", "req", "show", "R1"]).json();
    assert_eq!(now["meta"]["modifiedBy"], "bob", "{now}");
    let then =
        ctl_as(&daemon, &alice, &["-p", "shop", "-o", "json", "req", "list", "--revision", &first_revision]).json();
    assert_eq!(then[0]["meta"]["modifiedBy"], "alice", "the old revision keeps its author: {then}");
    ctl_as(&daemon, &bob, &["-p", "shop", "memory", "put", "backend", "style", "terse"]).ok();
    let memory = ctl_as(&daemon, &alice, &["-p", "shop", "-o", "json", "memory", "get", "backend", "style"]).json();
    assert_eq!(memory["meta"]["modifiedBy"], "bob", "{memory}");

    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("demo");
    let run = daemon.ctl(&["-p", "demo", "run", "--demo", "--workspace", ws.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    let reqs = daemon.ctl(&["-p", "demo", "-o", "json", "req", "list"]).json();
    let authors: std::collections::BTreeSet<String> =
        reqs.as_array().unwrap().iter().map(|r| r["meta"]["modifiedBy"].as_str().unwrap().to_string()).collect();
    assert_eq!(authors, ["loop-1".to_string()].into(), "the loop wrote them all: {reqs}");
}
