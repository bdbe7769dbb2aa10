//! What one client cannot do to the others, through the real daemon: listen
//! beyond loopback without saying so, get a huge field echoed back, name one
//! requirement two ways, or make the store walk an unbounded dependency graph.

use std::process::{Command, Stdio};

use maestro_shared::v1;
use maestro_tests::{Daemon, assert_responsive, binary, while_pinging};
use tonic::Code;

use crate::Clients;

#[test]
fn a_daemon_does_not_listen_beyond_loopback_unless_told_it_is_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let refused = Command::new(binary("e2e-maestrod"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("MAESTRO_INSECURE_LISTEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--insecure-listen")
            && stderr.contains("not a loopback address")
            && stderr.lines().count() == 1,
        "one line saying why and what to do: {stderr}"
    );
    assert!(refused.stdout.is_empty(), "never announced as listening");

    let daemon = Daemon::start_with(&["--insecure-listen"]).unwrap();
    assert!(!daemon.log().contains("INSECURE"), "loopback needs no warning");
    drop(daemon);
    let log = dir.path().join("maestrod.log");
    let mut child = Command::new(binary("e2e-maestrod"))
        .args(["--listen", "0.0.0.0:0", "--insecure-listen", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--workspace-root")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut addr = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut addr).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let addr = addr.strip_prefix("maestrod listening on ").unwrap_or(&addr).to_string();
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("INSECURE") && log.contains("without TLS"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_huge_fields_get_short_clear_errors() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("limits").await;
    c.requirement("limits", "Root", "", &[]).await;

    let ((), took) = while_pinging(&daemon, async {
        // One requirement has one name: R01 and R+1 are not R1.
        for alias in ["R01", "R+1", "R 1"] {
            let request = v1::CreateRequirementRequest {
                project_id: "limits".into(),
                parent_id: alias.into(),
                title: "Child".into(),
                ..Default::default()
            };
            let error = c.requirements.create_requirement(request).await.unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{alias}: {error:?}");
            assert!(error.message().contains("is not a requirement id"), "{}", error.message());
        }
        let error = c
            .requirements
            .get_requirement(v1::GetRequirementRequest { project_id: "limits".into(), id: "R001".into(), revision: 0 })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        let out = daemon.ctl(&["-p", "limits", "loop", "show", "loop-01"]);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("is not a loop id"), "{}", out.stderr);

        // A megabyte where an id goes: INVALID_ARGUMENT with a short message, not a transport error.
        let huge = "A".repeat(1 << 20);
        let request = v1::CreateProjectRequest { id: huge.clone(), ..Default::default() };
        let error = c.projects.create_project(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{:.200}", error.message());
        assert!(error.message().len() < 400, "the message echoes {} bytes", error.message().len());
        let error = c
            .requirements
            .get_requirement(v1::GetRequirementRequest { project_id: "limits".into(), id: huge, revision: 0 })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().len() < 400 && error.message().contains("bytes)"), "{:.400}", error.message());
    })
    .await;
    assert_responsive(&took, "megabyte fields and aliased ids were refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_lists_are_bounded() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("deps").await;
    for n in 1..=1000 {
        let previous = format!("R{}", n - 1);
        let depends_on: Vec<&str> = if n > 1 { vec![previous.as_str()] } else { vec![] };
        c.requirement("deps", &format!("step {n}"), "", &depends_on).await;
    }
    let set = |add: Vec<String>| v1::SetDependenciesRequest {
        project_id: "deps".into(),
        id: "R1".into(),
        add,
        ..Default::default()
    };
    // 1,000 entries on a 1,000-long chain (the request that once blocked every RPC for seconds).
    let (error, took) =
        while_pinging(&daemon, c.requirements.set_dependencies(set((2..=1000).map(|n| format!("R{n}")).collect())))
            .await;
    let error = error.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("the limit is 256"), "{}", error.message());
    assert_responsive(&took, "1,000 dependencies were refused");
    // The most one request may add, each closing the chain into a cycle at its far end: found, and named readably.
    let mut requirements = c.requirements.clone();
    let (error, took) = while_pinging(&daemon, async move {
        let mut last = None;
        for _ in 0..5 {
            last = Some(requirements.set_dependencies(set((745..=1000).map(|n| format!("R{n}")).collect())).await);
        }
        last.unwrap()
    })
    .await;
    let error = error.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(
        error.message().contains("would create the cycle R1 → R745 → R744")
            && error.message().contains("745 steps in all"),
        "{}",
        error.message()
    );
    assert_responsive(&took, "cycles along a 1,000-long chain were searched");
    let mut args = vec!["-p", "deps", "req", "add", "too many"];
    for _ in 0..257 {
        args.extend(["--depends-on", "R1"]);
    }
    let out = daemon.ctl(&args);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("the limit is 256") && out.stderr.trim().lines().count() == 1, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_contracts_are_listed_in_pages_below_the_message_limit() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    // The project's history starts after this (on etcd, revisions are the whole cluster's).
    let before = c.revision().await;
    c.project("big").await;
    let snapshot =
        |name: &str| v1::CreateSnapshotRequest { project_id: "big".into(), name: name.into(), ..Default::default() };
    c.snapshots.create_snapshot(snapshot("empty")).await.unwrap();
    let spec = |n: usize| format!("openapi: 3.1.0\n# {}\n", "x".repeat(900_000 + n));
    for n in 0..8 {
        for version in 0..2 {
            let request = v1::PutContractRequest {
                project_id: "big".into(),
                name: format!("api-{n}"),
                kind: v1::ContractKind::Openapi as i32,
                spec: spec(n * 10 + version),
                ..Default::default()
            };
            c.contracts.put_contract(request).await.unwrap();
        }
    }
    c.snapshots.create_snapshot(snapshot("full")).await.unwrap();
    // Each reply fits the client's default 4 MiB limit, and the pages hold every contract once, latest version.
    let (mut token, mut names, mut pages) = (String::new(), Vec::new(), 0);
    let mut contracts = c.contracts.clone();
    let ((), took) = while_pinging(&daemon, async {
        loop {
            let request =
                v1::ListContractsRequest { project_id: "big".into(), page_token: token.clone(), ..Default::default() };
            let page = contracts.list_contracts(request).await.unwrap().into_inner();
            pages += 1;
            for contract in &page.contracts {
                let n: usize = contract.name.trim_start_matches("api-").parse().unwrap();
                assert_eq!(contract.spec.len(), spec(n * 10 + 1).len(), "{} is its latest version", contract.name);
                names.push(contract.name.clone());
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    })
    .await;
    assert_responsive(&took, "14 MiB of contracts were listed");
    assert_eq!(names, (0..8).map(|n| format!("api-{n}")).collect::<Vec<_>>());
    assert!(pages >= 3, "{pages} pages");
    let listed = daemon.ctl(&["-p", "big", "-o", "json", "contract", "list"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.json().as_array().map(Vec::len), Some(8));

    // A watcher replaying everything (about 15 MiB) gets it in messages the
    // client can read, every event once, in revision order.
    let current = c.system.get_info(v1::GetInfoRequest {}).await.unwrap().into_inner().revision;
    let ((contract_events, messages), took) = while_pinging(&daemon, replay(&mut c.watch, before + 1, current)).await;
    assert_responsive(&took, "15 MiB of history were replayed");
    assert!(contract_events >= 16, "every version's event: {contract_events}");
    assert!(messages >= 8, "split into messages: {messages}");

    // A snapshot diff of 14 MiB comes in pages under the limit, and maestroctl joins them.
    let diff_page = |page_token: String| v1::DiffSnapshotsRequest {
        project_id: "big".into(),
        from: "empty".into(),
        to: "full".into(),
        page_token,
        ..Default::default()
    };
    let mut snapshots = c.snapshots.clone();
    let ((changes, pages), took) = while_pinging(&daemon, async move {
        let (mut token, mut changes, mut pages) = (String::new(), Vec::new(), 0);
        loop {
            let page = snapshots.diff_snapshots(diff_page(token)).await.expect("each page fits").into_inner();
            pages += 1;
            changes.extend(page.changes.into_iter().map(|c| (c.key, c.after_json.len())));
            if page.next_page_token.is_empty() {
                return (changes, pages);
            }
            token = page.next_page_token;
        }
    })
    .await;
    assert_responsive(&took, "a 14 MiB diff was paged");
    assert!(pages >= 3, "{pages} pages");
    let contract_versions = changes.iter().filter(|(key, len)| key.starts_with("contracts/") && *len > 900_000);
    assert_eq!(
        contract_versions.count(),
        16,
        "every version once: {:?}",
        changes.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    let mut keys: Vec<_> = changes.iter().map(|c| c.0.clone()).collect();
    keys.dedup();
    assert_eq!(keys.len(), changes.len(), "no change twice across pages");
    let out = daemon.ctl(&["-p", "big", "-o", "json", "snapshot", "diff", "empty", "full"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["changes"].as_array().map(Vec::len), Some(changes.len()), "maestroctl shows every page");

    // One revision of 14 MiB (a restore that brings every contract back) reaches a
    // watcher in messages under the limit, every event once.
    let restore = |name: &str| v1::RestoreSnapshotRequest { project_id: "big".into(), name: name.into() };
    c.snapshots.restore_snapshot(restore("empty")).await.unwrap();
    let restored = c.snapshots.restore_snapshot(restore("full")).await.unwrap().into_inner();
    let ((contract_events, messages), took) =
        while_pinging(&daemon, replay(&mut c.watch, restored.revision, restored.revision)).await;
    assert_responsive(&took, "a 14 MiB revision was watched");
    let contract_changes = changes.iter().filter(|c| c.0.starts_with("contracts/")).count();
    assert_eq!(contract_events, contract_changes, "every contract resource of the restore once");
    assert!(messages >= 4, "one revision in several messages: {messages}");
}

/// Watches project `big` from `from` until revision `through` is covered:
/// how many contract events came, in how many messages (each must be under
/// the client's 4 MiB limit, in revision order, and none repeated).
async fn replay(
    watch: &mut v1::watch_service_client::WatchServiceClient<maestro_tests::Conn>,
    from: u64,
    through: u64,
) -> (usize, usize) {
    let mut stream = watch
        .watch(v1::WatchRequest { project_id: "big".into(), start_revision: from, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let (mut contract_events, mut messages, mut last, mut covered) = (0, 0, 0, 0);
    let mut seen = std::collections::HashSet::new();
    while covered < through {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("the replay keeps coming")
            .expect("every message is under the client's 4 MiB limit")
            .expect("the stream stays open");
        messages += usize::from(!message.events.is_empty());
        for event in &message.events {
            assert!(event.mod_revision >= last, "in order");
            assert!(seen.insert((event.mod_revision, event.key.clone())), "{} twice", event.key);
            last = event.mod_revision;
            contract_events += usize::from(event.key.starts_with("contracts/"));
        }
        covered = covered.max(message.revision);
    }
    (contract_events, messages)
}

/// Errors carry `google.rpc.ErrorInfo` (domain `maestro.v1`) that clients in
/// any language can act on: the field on INVALID_ARGUMENT (with a BadRequest
/// violation), the current revision on a stale etag's ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_structured_details() {
    use tonic_types::StatusExt;
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("shop").await;
    let r1 = c.requirement("shop", "Root", "", &[]).await;
    let etag = r1.meta.as_ref().unwrap().etag.clone();
    let update = |title: &str, etag: &str| v1::UpdateRequirementRequest {
        project_id: "shop".into(),
        id: r1.id.clone(),
        title: Some(title.into()),
        etag: etag.into(),
        ..Default::default()
    };
    c.requirements.update_requirement(update("Renamed", &etag)).await.unwrap();
    let stale = c.requirements.update_requirement(update("Again", &etag)).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let info = stale.get_details_error_info().expect("ErrorInfo on ABORTED");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("STALE_ETAG", "maestro.v1"));
    let current: u64 = info.metadata["current_revision"].parse().unwrap();
    let now = c.requirements.get_requirement(v1::GetRequirementRequest {
        project_id: "shop".into(),
        id: r1.id.clone(),
        ..Default::default()
    });
    let now = now.await.unwrap().into_inner();
    assert_eq!(current, now.meta.unwrap().mod_revision, "the revision to retry from");

    let bad = c
        .requirements
        .create_requirement(v1::CreateRequirementRequest {
            project_id: "shop".into(),
            parent_id: "R01".into(),
            title: "Child".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let info = bad.get_details_error_info().expect("ErrorInfo on INVALID_ARGUMENT");
    assert_eq!(info.reason, "INVALID_FIELD");
    let field = info.metadata["field"].clone();
    assert!(field.contains("parent"), "{field}");
    let violations = bad.get_details_bad_request().expect("BadRequest").field_violations;
    assert_eq!(violations[0].field, field);
}
