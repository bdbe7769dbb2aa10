//! One client cannot stop the others, through the real daemon: a flooding
//! user is slowed with RESOURCE_EXHAUSTED and told when to retry, idle
//! connections by the thousand and long dependency chains do not lock anyone
//! out, a revoked token's open stream ends, and ten clients editing and
//! watching one project lose no update and miss no event.

use std::process::Command;
use std::time::{Duration, Instant};

use maestro_shared::v1::{
    self, requirement_service_client::RequirementServiceClient, system_service_client::SystemServiceClient,
    watch_service_client::WatchServiceClient,
};
use maestro_tests::{Daemon, binary, bystander_pings, median};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_is_slowed_and_told_when_to_retry_while_others_are_served() {
    use tonic_types::StatusExt;
    let daemon = Daemon::start_with(&["--user-rate", "50", "--user-burst", "50"]).unwrap();
    daemon.ctl(&["project", "create", "shop"]).ok();
    let mallory = daemon.add_user("mallory", "viewer", "shop");
    let conn = daemon.channel_with(&mallory).await.unwrap();
    let flood = tokio::spawn(async move {
        let mut refused = Vec::new();
        let mut served = 0;
        for _ in 0..10 {
            let calls = (0..60).map(|_| {
                let mut system = SystemServiceClient::new(conn.clone());
                async move { system.ping(v1::PingRequest {}).await }
            });
            for result in futures::future::join_all(calls).await {
                match result {
                    Ok(_) => served += 1,
                    Err(status) => refused.push(status),
                }
            }
        }
        (served, refused)
    });
    let took = bystander_pings(&daemon, 10).await;
    let (served, refused) = flood.await.unwrap();
    assert!(served >= 50, "the burst is served: {served}");
    assert!(refused.len() > 100, "most of the flood is refused: {}", refused.len());
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let retry = status.get_details_retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(1), "{retry:?}");
    }
    assert!(refused[0].message().contains("mallory"), "{}", refused[0].message());
    assert!(median(took.clone()) < Duration::from_millis(100), "a bystander's pings: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_and_a_long_chain_do_not_lock_anyone_out() {
    // The test process needs the descriptors too.
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard.min(8192), hard);
    }
    let daemon = Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "chain"]).ok();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match tokio::net::TcpStream::connect(daemon.addr()).await {
            Ok(stream) => idle.push(stream),
            Err(error) => panic!("connection {} refused: {error}", idle.len()),
        }
    }
    let took = bystander_pings(&daemon, 5).await;
    assert!(median(took.clone()) < Duration::from_millis(100), "with 1,100 idle connections: {took:?}");

    // A 300-long chain, then dependency changes at the bound while a bystander pings.
    let mut requirements = RequirementServiceClient::new(daemon.channel().await.unwrap());
    let mut previous = String::new();
    for i in 0..300 {
        let created = requirements
            .create_requirement(v1::CreateRequirementRequest {
                project_id: "chain".into(),
                title: format!("step {i}"),
                depends_on: if previous.is_empty() { Vec::new() } else { vec![previous.clone()] },
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        previous = created.id;
    }
    let writer = tokio::spawn({
        let mut requirements = requirements.clone();
        async move {
            let mut codes = Vec::new();
            for round in 0..20 {
                // R1 may not depend on anything later in the chain (a cycle), nor on more than 256.
                let add: Vec<String> = (2..=if round % 2 == 0 { 257 } else { 300 }).map(|n| format!("R{n}")).collect();
                let result = requirements
                    .set_dependencies(v1::SetDependenciesRequest {
                        project_id: "chain".into(),
                        id: "R1".into(),
                        add,
                        ..Default::default()
                    })
                    .await;
                codes.push(result.err().map(|s| s.code()));
            }
            codes
        }
    });
    let took = bystander_pings(&daemon, 10).await;
    let codes = writer.await.unwrap();
    assert!(
        codes.iter().all(|c| matches!(c, Some(Code::FailedPrecondition | Code::InvalidArgument))),
        "every attempt refused: {codes:?}"
    );
    assert!(median(took.clone()) < Duration::from_millis(100), "while the chain is checked: {took:?}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tokens_open_stream_ends() {
    let daemon = Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "shop"]).ok();
    let bob = daemon.add_user("bob", "viewer", "shop");
    let mut watch = WatchServiceClient::new(daemon.channel_with(&bob).await.unwrap());
    let mut stream =
        watch.watch(v1::WatchRequest { project_id: "shop".into(), ..Default::default() }).await.unwrap().into_inner();
    stream.message().await.unwrap().expect("the first message confirms the watch");
    let revoke = Command::new(binary("e2e-maestrod"))
        .arg("--data-dir")
        .arg(daemon.data_dir())
        .args(["user", "revoke", "bob"])
        .output()
        .unwrap();
    assert!(revoke.status.success());
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends within seconds of the revocation");
    let status = ended.expect_err("with an error, not a clean end");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
}

/// Ten clients, each on its own connection with its own token, increment one
/// counter by read-modify-write with etags (200 increments in all) while each
/// watches the project: the counter ends at 200, and every watcher sees every
/// value from 1 to 200, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_clients_edit_and_watch_one_project_without_losing_anything() {
    let daemon = Daemon::start().unwrap();
    daemon.ctl(&["project", "create", "team"]).ok();
    daemon.ctl(&["-p", "team", "req", "add", "n=0"]).ok();
    let mut watchers = Vec::new();
    let mut conns = Vec::new();
    for i in 0..10 {
        let token = daemon.add_user(&format!("dev{i}"), "developer", "team");
        let conn = daemon.channel_with(&token).await.unwrap();
        conns.push(conn.clone());
        let mut stream = WatchServiceClient::new(conn.clone())
            .watch(v1::WatchRequest { project_id: "team".into(), prefix: "requirements/".into(), start_revision: 0 })
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        watchers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 200 {
                let Some(message) = tokio::time::timeout(Duration::from_secs(30), stream.message())
                    .await
                    .unwrap_or_else(|_| panic!("events stopped after {}: {seen:?}", seen.len()))
                    .expect("the stream stays healthy")
                else {
                    break;
                };
                for event in message.events {
                    let value: serde_json::Value = serde_json::from_str(&event.value_json).unwrap();
                    let title = value["title"].as_str().unwrap_or_default().to_string();
                    seen.push(title.trim_start_matches("n=").parse::<u32>().unwrap());
                }
            }
            seen
        }));
    }
    // Every watcher is in place before the first edit.
    let mut editors = Vec::new();
    for conn in conns {
        editors.push(tokio::spawn(async move {
            let mut requirements = RequirementServiceClient::new(conn);
            let mut conflicts = 0;
            for _ in 0..20 {
                loop {
                    let current = requirements
                        .get_requirement(v1::GetRequirementRequest {
                            project_id: "team".into(),
                            id: "R1".into(),
                            revision: 0,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let n: u32 = current.title.trim_start_matches("n=").parse().unwrap();
                    let result = requirements
                        .update_requirement(v1::UpdateRequirementRequest {
                            project_id: "team".into(),
                            id: "R1".into(),
                            title: Some(format!("n={}", n + 1)),
                            etag: current.meta.unwrap().etag,
                            ..Default::default()
                        })
                        .await;
                    match result {
                        Ok(_) => break,
                        Err(status) if status.code() == Code::Aborted => conflicts += 1,
                        Err(status) => panic!("{status:?}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for editor in editors {
        conflicts += editor.await.unwrap();
    }
    let last = daemon.ctl(&["-p", "team", "-o", "json", "req", "show", "R1"]).json();
    assert_eq!(last["title"], "n=200", "no update lost ({conflicts} conflicts retried)");
    let expected: Vec<u32> = (1..=200).collect();
    for watcher in watchers {
        assert_eq!(watcher.await.unwrap(), expected, "every change seen once, in order");
    }
}

/// A connection that never speaks is closed after the handshake timeout; a
/// client that did its handshake and then sits quiet keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_speaks_is_closed() {
    use tokio::io::AsyncReadExt;
    let daemon = Daemon::start_with(&["--handshake-timeout", "1"]).unwrap();
    let mut system = SystemServiceClient::new(daemon.channel().await.unwrap());
    system.ping(v1::PingRequest {}).await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(daemon.addr()).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    // The daemon speaks first (its HTTP/2 settings); then, hearing nothing, it hangs up.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    closed.await.expect("the daemon closes the silent connection");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    system.ping(v1::PingRequest {}).await.expect("a client that spoke keeps its connection");
}
