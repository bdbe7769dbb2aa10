//! The gRPC API against a live daemon: conditional updates under contention,
//! bad input, paging, point-in-time reads, isolation, health and reflection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use maestro_shared::v1;
use maestro_tests::Daemon;
use tonic::Code;

use crate::Clients;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_increment_one_counter_without_losing_updates() {
    // Thousands of retries a second under one token: this is about conflicts, not a user's quota.
    let daemon = Daemon::start_with(&["--user-rate", "0"]).unwrap();
    let mut clients = Clients::connect(&daemon).await;
    clients.project("counter").await;
    let put = |etag: &str, value: u64| v1::PutMemoryRequest {
        project_id: "counter".into(),
        agent: "bench".into(),
        key: "counter".into(),
        value: value.to_string(),
        ttl_seconds: 0,
        etag: etag.into(),
    };
    clients.memory.put_memory(put("0", 0)).await.unwrap();

    let successes = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        // Each client on its own connection, as separate processes would be.
        let mut client = Clients::connect(&daemon).await;
        let (successes, conflicts) = (successes.clone(), conflicts.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0;
            while mine < 10 {
                let current = client
                    .memory
                    .get_memory(v1::GetMemoryRequest {
                        project_id: "counter".into(),
                        agent: "bench".into(),
                        key: "counter".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let value: u64 = current.value.parse().unwrap();
                let etag = current.meta.unwrap().etag;
                match client.memory.put_memory(put(&etag, value + 1)).await {
                    Ok(_) => {
                        mine += 1;
                        successes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::Aborted, "{status:?}");
                        assert!(status.message().contains("stale"), "{}", status.message());
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let final_value = clients
        .memory
        .get_memory(v1::GetMemoryRequest { project_id: "counter".into(), agent: "bench".into(), key: "counter".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(successes.load(Ordering::Relaxed), 320);
    assert_eq!(final_value.value, "320", "every successful conditional update is counted exactly once");
    // 1 create + 320 updates: the version counts every change.
    assert_eq!(final_value.meta.unwrap().version, 321);
    eprintln!("conflicts seen: {}", conflicts.load(Ordering::Relaxed));
}

#[tokio::test]
async fn bad_input_gets_the_fitting_status_and_changes_nothing() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("shop").await;
    let root = c.requirement("shop", "root", "", &[]).await;
    let a = c.requirement("shop", "a", &root.id, &[]).await;
    let b = c.requirement("shop", "b", &root.id, &[&a.id]).await;
    c.contracts
        .put_contract(v1::PutContractRequest {
            project_id: "shop".into(),
            name: "api".into(),
            kind: v1::ContractKind::Openapi as i32,
            spec: "openapi: 3.1.0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Compact everything so far so that an old watch start is out of range.
    let now = c.revision().await;
    c.system.compact(v1::CompactRequest { revision: now }).await.unwrap();

    let before = c.revision().await;
    let mut results: Vec<(&str, Code, String, &str)> = Vec::new();
    let mut record = |name: &'static str, result: Result<(), tonic::Status>, mention: &'static str| {
        let status = result.expect_err(name);
        results.push((name, status.code(), status.message().to_string(), mention));
    };
    let create = |title: &str, project: &str, deps: Vec<String>| v1::CreateRequirementRequest {
        project_id: project.into(),
        title: title.into(),
        depends_on: deps,
        ..Default::default()
    };
    let r = c.requirements.create_requirement(create("", "shop", vec![])).await.map(drop);
    record("empty title", r, "title");
    let r = c
        .requirements
        .create_requirement(v1::CreateRequirementRequest {
            project_id: "shop".into(),
            title: "big".into(),
            description: "x".repeat(70_000),
            ..Default::default()
        })
        .await
        .map(drop);
    record("oversized description", r, "description");
    let r = c.requirements.create_requirement(create("t", "nope", vec![])).await.map(drop);
    record("unknown project", r, "nope");
    let r = c.requirements.create_requirement(create("t", "shop", vec!["R99".into()])).await.map(drop);
    record("unknown dependency", r, "R99");
    let r = c
        .requirements
        .get_requirement(v1::GetRequirementRequest { project_id: "shop".into(), id: "R42".into(), revision: 0 })
        .await
        .map(drop);
    record("unknown id", r, "R42");
    let r = c
        .requirements
        .get_requirement(v1::GetRequirementRequest { project_id: "shop".into(), id: "banana".into(), revision: 0 })
        .await
        .map(drop);
    record("malformed id", r, "banana");
    let r = c
        .requirements
        .set_dependencies(v1::SetDependenciesRequest {
            project_id: "shop".into(),
            id: a.id.clone(),
            add: vec![b.id.clone()],
            ..Default::default()
        })
        .await
        .map(drop);
    record("dependency cycle", r, "cycle");
    let r = c
        .requirements
        .set_requirement_status(v1::SetRequirementStatusRequest {
            project_id: "shop".into(),
            id: a.id.clone(),
            status: v1::RequirementStatus::Done as i32,
            ..Default::default()
        })
        .await
        .map(drop);
    record("illegal status change", r, "PENDING to DONE");
    let r = c
        .requirements
        .set_requirement_status(v1::SetRequirementStatusRequest {
            project_id: "shop".into(),
            id: b.id.clone(),
            status: v1::RequirementStatus::Claimed as i32,
            assignee: "backend".into(),
            ..Default::default()
        })
        .await
        .map(drop);
    record("claim before dependencies are done", r, "not ready");
    let stale = a.meta.as_ref().unwrap().mod_revision - 1;
    let r = c
        .requirements
        .update_requirement(v1::UpdateRequirementRequest {
            project_id: "shop".into(),
            id: a.id.clone(),
            title: Some("renamed".into()),
            etag: stale.to_string(),
            ..Default::default()
        })
        .await
        .map(drop);
    record("stale etag", r, "current revision");
    let r = c
        .requirements
        .list_requirements(v1::ListRequirementsRequest {
            project_id: "shop".into(),
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .map(drop);
    record("malformed page token", r, "page_token");
    let r =
        c.projects.create_project(v1::CreateProjectRequest { id: "shop".into(), ..Default::default() }).await.map(drop);
    record("duplicate project", r, "shop");
    let r = c
        .projects
        .create_project(v1::CreateProjectRequest { id: "Bad Name".into(), ..Default::default() })
        .await
        .map(drop);
    record("invalid project id", r, "id");
    let r = c
        .contracts
        .put_contract(v1::PutContractRequest {
            project_id: "shop".into(),
            name: "api".into(),
            kind: v1::ContractKind::Unspecified as i32,
            spec: "x".into(),
            ..Default::default()
        })
        .await
        .map(drop);
    record("contract without kind", r, "kind");
    let r = c
        .log
        .append_log_entry(v1::AppendLogEntryRequest { project_id: "shop".into(), ..Default::default() })
        .await
        .map(drop);
    record("log entry without action", r, "action");
    let r = c.locks.keep_alive(v1::KeepAliveRequest { lease_id: 777 }).await.map(drop);
    record("unknown lease", r, "777");
    let r = c
        .requirements
        .get_requirement(v1::GetRequirementRequest { project_id: "shop".into(), id: a.id.clone(), revision: 1 })
        .await
        .map(drop);
    record("read at a compacted revision", r, "compacted");
    let r = match c
        .watch
        .watch(v1::WatchRequest { project_id: "shop".into(), prefix: String::new(), start_revision: 1 })
        .await
    {
        Ok(mut stream) => match stream.get_mut().next().await {
            Some(Err(status)) => Err(status),
            other => panic!("watch from a compacted revision streamed {other:?}"),
        },
        Err(status) => Err(status),
    };
    record("watch from a compacted revision", r, "compacted");

    let expected = [
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::NotFound,
        Code::NotFound,
        Code::NotFound,
        Code::InvalidArgument,
        Code::FailedPrecondition,
        Code::FailedPrecondition,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::InvalidArgument,
        Code::AlreadyExists,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::NotFound,
        Code::OutOfRange,
        Code::OutOfRange,
    ];
    assert_eq!(results.len(), expected.len());
    for ((name, code, message, mention), want) in results.iter().zip(expected) {
        assert_eq!(*code, want, "{name}: {message}");
        assert!(message.contains(mention), "{name}: message {message:?} should mention {mention:?}");
    }
    if std::env::var_os("MAESTRO_E2E_STORE").is_none() {
        assert_eq!(c.revision().await, before, "failed requests changed nothing");
    }
    // On etcd the revision is the cluster's and moves with other tenants: the
    // project's own history says the same, on either backend.
    let mut stream = c
        .watch
        .watch(v1::WatchRequest { project_id: "shop".into(), prefix: String::new(), start_revision: before + 1 })
        .await
        .unwrap()
        .into_inner();
    let hello = stream.next().await.unwrap().unwrap();
    assert!(hello.events.is_empty(), "{hello:?}");
    let later = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(
        later.is_err() || later.as_ref().unwrap().as_ref().unwrap().as_ref().unwrap().events.is_empty(),
        "failed requests changed the project: {later:?}"
    );
}

#[tokio::test]
async fn listings_page_at_one_revision_and_reads_go_back_in_time() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("paging").await;
    for i in 0..25 {
        c.requirement("paging", &format!("req {i}"), "", &[]).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .requirements
            .list_requirements(v1::ListRequirementsRequest {
                project_id: "paging".into(),
                page_size: 10,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        if pages == 1 {
            // A write between pages does not leak into the listing.
            c.requirement("paging", "late", "", &[]).await;
        }
        seen.extend(page.requirements.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (1..=25).map(|n| format!("R{n}")).collect();
    assert_eq!(seen, expected);

    let old = c
        .requirements
        .get_requirement(v1::GetRequirementRequest { project_id: "paging".into(), id: "R1".into(), revision: 0 })
        .await
        .unwrap()
        .into_inner();
    c.requirements
        .update_requirement(v1::UpdateRequirementRequest {
            project_id: "paging".into(),
            id: "R1".into(),
            title: Some("renamed".into()),
            etag: old.meta.as_ref().unwrap().etag.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let then = c
        .requirements
        .get_requirement(v1::GetRequirementRequest {
            project_id: "paging".into(),
            id: "R1".into(),
            revision: old.meta.as_ref().unwrap().mod_revision,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(then.title, "req 0");
    let now = c
        .requirements
        .get_requirement(v1::GetRequirementRequest { project_id: "paging".into(), id: "R1".into(), revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.title, "renamed");
    assert_eq!(now.meta.unwrap().version, 2);
}

#[tokio::test]
async fn projects_are_isolated() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("one").await;
    c.project("two").await;
    let in_one = c.requirement("one", "first of one", "", &[]).await;
    let in_two = c.requirement("two", "first of two", "", &[]).await;
    assert_eq!(in_one.id, "R1");
    assert_eq!(in_two.id, "R1", "ids are per project");
    c.log
        .append_log_entry(v1::AppendLogEntryRequest {
            project_id: "one".into(),
            action: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.projects.delete_project(v1::DeleteProjectRequest { id: "one".into(), etag: String::new() }).await.unwrap();
    let gone = c
        .requirements
        .get_requirement(v1::GetRequirementRequest { project_id: "one".into(), id: "R1".into(), revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let kept = c
        .requirements
        .get_requirement(v1::GetRequirementRequest { project_id: "two".into(), id: "R1".into(), revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.title, "first of two");
    let log = c.log.verify_log(v1::VerifyLogRequest { project_id: "two".into() }).await.unwrap().into_inner();
    assert!(log.ok);
    assert_eq!(log.entries, 0, "project two's log never saw project one's entry");
}

#[tokio::test]
async fn snapshots_diff_and_restore() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("snap").await;
    c.requirement("snap", "keep me", "", &[]).await;
    let snapshot = |name: &str| v1::CreateSnapshotRequest {
        project_id: "snap".into(),
        name: name.into(),
        git_commit: "abc123".into(),
        description: String::new(),
    };
    c.snapshots.create_snapshot(snapshot("before")).await.unwrap();
    c.requirement("snap", "added later", "", &[]).await;
    c.log
        .append_log_entry(v1::AppendLogEntryRequest {
            project_id: "snap".into(),
            action: "work".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.requirements
        .update_requirement(v1::UpdateRequirementRequest {
            project_id: "snap".into(),
            id: "R1".into(),
            title: Some("changed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    c.snapshots.create_snapshot(snapshot("after")).await.unwrap();
    let diff = c
        .snapshots
        .diff_snapshots(v1::DiffSnapshotsRequest {
            project_id: "snap".into(),
            from: "before".into(),
            to: "after".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let changes: Vec<(i32, &str)> = diff.changes.iter().map(|c| (c.kind, c.key.as_str())).collect();
    assert_eq!(
        changes,
        [(v1::ChangeKind::Modified as i32, "requirements/R1"), (v1::ChangeKind::Added as i32, "requirements/R2")]
    );
    let restored = c
        .snapshots
        .restore_snapshot(v1::RestoreSnapshotRequest { project_id: "snap".into(), name: "before".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.changed, 2);
    let all = c
        .requirements
        .list_requirements(v1::ListRequirementsRequest { project_id: "snap".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let titles: Vec<&str> = all.requirements.iter().map(|r| r.title.as_str()).collect();
    assert_eq!(titles, ["keep me"]);
    let log = c.log.verify_log(v1::VerifyLogRequest { project_id: "snap".into() }).await.unwrap().into_inner();
    assert_eq!(log.entries, 1, "restore never rewinds the execution log");
    // The restored state is current: nothing left to diff against the snapshot.
    let diff = c
        .snapshots
        .diff_snapshots(v1::DiffSnapshotsRequest {
            project_id: "snap".into(),
            from: "before".into(),
            to: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(diff.changes.is_empty(), "{:?}", diff.changes);
    // A snapshot pins history: compaction past it is refused.
    let now = c.revision().await;
    let refused = c.system.compact(v1::CompactRequest { revision: now }).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let daemon = Daemon::start().unwrap();
    let channel = daemon.channel().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "maestro.v1.RequirementService", "maestro.v1.WatchService"] {
        let reply = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "{service}");
    }
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "maestro.v1.ProjectService",
        "maestro.v1.RequirementService",
        "maestro.v1.ContractService",
        "maestro.v1.ExecutionLogService",
        "maestro.v1.MemoryService",
        "maestro.v1.LockService",
        "maestro.v1.SnapshotService",
        "maestro.v1.WatchService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

#[tokio::test]
async fn agent_memory_is_bounded_and_evicts_the_least_recently_written() {
    let daemon = Daemon::start_with(&["--memory-max-entries", "3"]).unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("mem").await;
    let put = |agent: &str, key: &str| v1::PutMemoryRequest {
        project_id: "mem".into(),
        agent: agent.into(),
        key: key.into(),
        value: format!("note {key}"),
        ttl_seconds: 0,
        etag: String::new(),
    };
    for key in ["a", "b", "c"] {
        c.memory.put_memory(put("backend", key)).await.unwrap();
    }
    // Rewriting "a" makes "b" the least recently written.
    c.memory.put_memory(put("backend", "a")).await.unwrap();
    c.memory.put_memory(put("backend", "d")).await.unwrap();
    // Another agent's memory is bounded separately.
    c.memory.put_memory(put("frontend", "x")).await.unwrap();
    let listed = c
        .memory
        .list_memory(v1::ListMemoryRequest { project_id: "mem".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<String> = listed.entries.iter().map(|e| format!("{}/{}", e.agent, e.key)).collect();
    assert_eq!(keys, ["backend/a", "backend/c", "backend/d", "frontend/x"]);

    // Entries with a TTL disappear when it passes.
    let mut short = put("frontend", "short");
    short.ttl_seconds = 1;
    c.memory.put_memory(short).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let gone = c
        .memory
        .get_memory(v1::GetMemoryRequest { project_id: "mem".into(), agent: "frontend".into(), key: "short".into() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn contracts_list_the_latest_version_of_each_page_by_page() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("reg").await;
    for name in ["alpha", "beta", "gamma", "delta", "epsilon"] {
        for version in 1..=3 {
            c.contracts
                .put_contract(v1::PutContractRequest {
                    project_id: "reg".into(),
                    name: name.into(),
                    kind: v1::ContractKind::FunctionSignature as i32,
                    spec: format!("fn {name}_v{version}()"),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .contracts
            .list_contracts(v1::ListContractsRequest { project_id: "reg".into(), page_size: 2, page_token: token })
            .await
            .unwrap()
            .into_inner();
        assert!(page.contracts.len() <= 2);
        seen.extend(page.contracts.into_iter().map(|c| (c.name, c.version)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let want: Vec<(String, u32)> =
        ["alpha", "beta", "delta", "epsilon", "gamma"].iter().map(|n| (n.to_string(), 3)).collect();
    assert_eq!(seen, want);
}
