//! The SSOT on etcd, from outside: two daemons on one prefix are one SSOT, a
//! loop carries on while an etcd member dies, and a daemon on an unreachable
//! cluster refuses to start with a line that says why. Each test runs its own
//! private cluster (`LocalEtcd`), so killing members hurts nobody else.

use std::time::Duration;

use futures::StreamExt;
use maestro_shared::v1;
use maestro_tests::{Daemon, run_ctl_in};
use maestrod::ssot::etcd_store::local::LocalEtcd;

use crate::Clients;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_prefix_are_one_ssot() {
    let etcd = LocalEtcd::start().unwrap();
    let store = etcd.store_arg("team");
    let a = Daemon::start_with(&["--store", &store]).unwrap();
    let b = Daemon::start_with(&["--store", &store]).unwrap();
    let mut ca = Clients::connect(&a).await;
    let mut cb = Clients::connect(&b).await;

    let project = ca.project("shared").await;
    let first = project.meta.unwrap().create_revision;
    let root = ca.requirement("shared", "written through a", "", &[]).await;
    // b reads what a acknowledged, at once (etcd's reads are linearizable).
    let seen = cb
        .requirements
        .get_requirement(v1::GetRequirementRequest { project_id: "shared".into(), id: root.id.clone(), revision: 0 })
        .await
        .expect("b reads a's requirement")
        .into_inner();
    assert_eq!(seen.title, "written through a");
    // b's watch replays a's history and then follows a's writes live.
    let mut stream = cb
        .watch
        .watch(v1::WatchRequest { project_id: "shared".into(), prefix: "requirements/".into(), start_revision: first })
        .await
        .unwrap()
        .into_inner();
    let child = ca.requirement("shared", "written later", &root.id, &[]).await;
    let mut titles = Vec::new();
    while titles.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a's writes reach b's watcher")
            .expect("the stream stays open")
            .unwrap();
        titles.extend(message.events.iter().map(|e| e.key.clone()));
    }
    assert!(titles[0].ends_with(&root.id) && titles[1].ends_with(&child.id), "{titles:?}");
    // A conditional write through b with a's revision of the requirement as etag wins once:
    // both daemons compare against the same store.
    let update = |title: &str, etag: &str| v1::UpdateRequirementRequest {
        project_id: "shared".into(),
        id: child.id.clone(),
        title: Some(title.into()),
        etag: etag.into(),
        ..Default::default()
    };
    let etag = child.meta.unwrap().etag;
    cb.requirements.update_requirement(update("through b", &etag)).await.expect("b's update with the etag");
    let stale = ca.requirements.update_requirement(update("through a", &etag)).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "a's update with the same etag is refused: {stale:?}");
}

#[test]
fn a_loop_carries_on_when_an_etcd_member_dies() {
    let mut etcd = LocalEtcd::cluster(3).unwrap();
    let store = etcd.store_arg("loops");
    let daemon = Daemon::start_with(&["--store", &store]).unwrap();
    let here = tempfile::tempdir().unwrap();
    let url = daemon.url();
    let path = here.path().to_path_buf();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(run_ctl_in(&url, &path, &["-o", "json", "run", "--demo"])));
    // Mid-loop: the first member (the endpoint maestrod named first) goes away.
    std::thread::sleep(Duration::from_millis(1500));
    etcd.kill(0);
    let killed_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let Ok(out) = finished.recv_timeout(Duration::from_secs(180)) else {
        panic!("the loop did not end within 3 minutes:\n{}", daemon.log());
    };
    assert_eq!(out.code, 0, "{}{}\n{}", out.stdout, out.stderr, daemon.log());
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(last.contains("LOOP_STATE_SUCCEEDED"), "{last}");
    // The loop was still at work when the member died: it went on without it.
    let event: serde_json::Value = serde_json::from_str(last).unwrap();
    let ended_ms: i64 = event["timeMs"].as_str().unwrap().parse().unwrap();
    assert!(ended_ms > killed_ms, "the loop ended before the member was killed; kill it earlier");
    // And the daemon still serves from the two members left.
    let status = daemon.ctl(&["-p", "maestro-demo", "-o", "json", "req", "list"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
}

#[test]
fn a_daemon_on_an_unreachable_cluster_refuses_to_start_and_says_why() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = format!("etcd://127.0.0.1:{port}/nobody");
    let error = Daemon::start_with(&["--store", &store]).map(drop).unwrap_err().to_string();
    assert!(error.contains("etcd at 127.0.0.1:") && error.contains("unavailable"), "{error}");
}
