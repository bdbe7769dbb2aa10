//! The SSOT on etcd, from outside: two daemons on one prefix are one SSOT, a
//! loop carries on while an etcd member dies, and a daemon on an unreachable
//! cluster refuses to start with a line that says why. Each test runs its own
//! private cluster (`LocalEtcd`), so killing members hurts nobody else.

use std::time::Duration;

use futures::StreamExt;
use maestro_shared::v1;
use maestro_shared::v1::loop_service_client::LoopServiceClient;
use maestro_tests::{Daemon, run_ctl_in};
use maestrod::ssot::etcd_store::local::LocalEtcd;

use crate::Clients;
use crate::loops::{SLOW, appears, files, get, scripted_workspace, wait_end};

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
    // A snapshot through b, right after a write through a, holds that write: b asks etcd for the
    // revision rather than trusting what it has seen so far.
    for round in 0..20 {
        let written = ca.requirement("shared", &format!("round {round}"), "", &[]).await;
        let revision = written.meta.unwrap().create_revision;
        let snapshot = cb
            .snapshots
            .create_snapshot(v1::CreateSnapshotRequest {
                project_id: "shared".into(),
                name: format!("after-{round}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(snapshot.revision >= revision, "round {round}: snapshot at {} misses {revision}", snapshot.revision);
    }
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
    // Without interruption: the daemon's own lease was kept alive through the other members.
    assert!(!daemon.log().contains("lease is lost"), "{}", daemon.log());
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

/// Two daemons on one etcd prefix, whose loops move after `ttl` seconds without their daemon.
fn pair(etcd: &LocalEtcd, prefix: &str, ttl: &str) -> (Daemon, Daemon) {
    let store = etcd.store_arg(prefix);
    let a = Daemon::start_with(&["--store", &store, "--daemon-lease-ttl", ttl]).unwrap();
    let b = Daemon::start_with(&["--store", &store, "--daemon-lease-ttl", ttl]).unwrap();
    (a, b)
}

/// Every event of `id` through `daemon` from `from_seq`, until the loop's final
/// event or until the stream breaks (the daemon died).
async fn follow(daemon_channel: maestro_tests::Conn, id: String, from_seq: u64) -> Vec<(u64, String, String)> {
    let mut client = LoopServiceClient::new(daemon_channel);
    let mut seen = Vec::new();
    let Ok(stream) = client.stream_loop_events(v1::StreamLoopEventsRequest { loop_id: id, from_seq }).await else {
        return seen;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_secs(120), stream.next()).await {
        seen.push((event.seq, event.kind.clone(), event.message.clone()));
    }
    seen
}

/// Waits until the loop is in EXEC (as `daemon` reads it).
async fn until_exec(daemon: &Daemon, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let l = get(daemon, id).await;
        if l.phase == "EXEC" && !matches!(l.state(), v1::LoopState::Succeeded | v1::LoopState::Failed) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never saw {id} in EXEC: {l:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_contiguous(events: &[(u64, String, String)], last_seq: u64, who: &str) {
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=last_seq).collect::<Vec<_>>(), "{who}: every event once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_whose_daemon_is_killed_mid_exec_is_finished_by_the_other_with_the_same_workspace_and_events() {
    let etcd = LocalEtcd::start().unwrap();
    let (mut a, b) = pair(&etcd, "failover", "2");
    let here = tempfile::tempdir().unwrap();
    // What the demo leaves when nothing goes wrong.
    let reference = run_ctl_in(&b.url(), here.path(), &["demo", "--workspace", "reference"]);
    assert_eq!(reference.code, 0, "{}", reference.stderr);
    let expected = files(&here.path().join("reference"));

    b.share_users_of(&a).await.unwrap();
    let started = run_ctl_in(&a.url(), here.path(), &["demo", "--workspace", "moved", "--detach"]);
    let id = started.ok().trim().to_string();
    // One follower on each daemon, from the first event, and maestroctl given both daemons.
    let on_a = tokio::spawn(follow(a.channel().await.unwrap(), id.clone(), 1));
    let on_b = tokio::spawn(follow(b.channel().await.unwrap(), id.clone(), 1));
    let both = format!("{},{}", a.url(), b.url());
    let attach = maestro_tests::ctl_command(&both, here.path(), &["-o", "json", "attach", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    until_exec(&a, &id).await;
    a.kill9();

    let end = wait_end(&b, &id).await;
    assert_eq!(end.state(), v1::LoopState::Succeeded, "{end:?}\n{}", b.log());
    assert_eq!(files(&here.path().join("moved")), expected, "the same final workspace");
    assert!(b.log().contains("took over unfinished loops"), "b adopted it:\n{}", b.log());

    // b's follower saw it all; a's broke with a, and goes on through b from where it was.
    let through_b = on_b.await.unwrap();
    assert_contiguous(&through_b, end.last_seq, "the follower on b");
    assert!(through_b.iter().any(|e| e.1 == "restart"), "the move is an event: {through_b:?}");
    let mut through_a = on_a.await.unwrap();
    let last = through_a.last().map_or(0, |e| e.0);
    assert!(last < end.last_seq, "a died before the loop ended");
    through_a.extend(follow(b.channel().await.unwrap(), id.clone(), last + 1).await);
    assert_eq!(through_a, through_b, "a follower that reconnects by sequence misses nothing and sees nothing twice");

    // maestroctl failed over to b by itself and showed every event once.
    let attached = attach.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&attached.stdout), String::from_utf8_lossy(&attached.stderr));
    assert_eq!(attached.status.code(), Some(0), "{stdout}{stderr}");
    let seqs: Vec<u64> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_str().unwrap().parse().unwrap())
        .collect();
    // a died before the loop's end (above): the events after it came through b.
    assert_eq!(seqs, (1..=end.last_seq).collect::<Vec<_>>(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_frozen_past_its_lease_loses_its_loop_and_writes_nothing_more() {
    let etcd = LocalEtcd::start().unwrap();
    let (a, b) = pair(&etcd, "frozen", "2");
    let here = tempfile::tempdir().unwrap();
    let reference = run_ctl_in(&b.url(), here.path(), &["demo", "--workspace", "reference"]);
    assert_eq!(reference.code, 0, "{}", reference.stderr);
    let expected = files(&here.path().join("reference"));

    let started = run_ctl_in(&a.url(), here.path(), &["demo", "--workspace", "frozen", "--detach"]);
    let id = started.ok().trim().to_string();
    until_exec(&a, &id).await;
    let pid = nix::unistd::Pid::from_raw(a.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // a's lease runs out while it is frozen: b takes the loop and finishes it.
    let end = wait_end(&b, &id).await;
    assert_eq!(end.state(), v1::LoopState::Succeeded, "{end:?}\n{}", b.log());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();

    // a wakes up in the middle of its work: it must notice, and change nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !a.log().contains("lease is lost") {
        assert!(std::time::Instant::now() < deadline, "a never noticed its lease was gone:\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = get(&b, &id).await;
    assert_eq!((after.state(), after.last_seq), (v1::LoopState::Succeeded, end.last_seq), "a wrote nothing more");
    assert_eq!(files(&here.path().join("frozen")), expected);
    let events = follow(b.channel().await.unwrap(), id.clone(), 1).await;
    assert_contiguous(&events, end.last_seq, "the loop's events");
    assert_eq!(events.iter().filter(|e| e.1 == "state" && e.2.contains("succeeded")).count(), 1, "{events:?}");
    // a joined again and serves: it reads what b wrote.
    assert_eq!(get(&a, &id).await.state(), v1::LoopState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_is_steered_through_either_daemon() {
    let etcd = LocalEtcd::start().unwrap();
    let (a, b) = pair(&etcd, "steer", "10");
    b.share_users_of(&a).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("slow");
    scripted_workspace(&ws, SLOW, 0);
    std::fs::write(ws.join("README"), "kept\n").unwrap();
    let started = run_ctl_in(&a.url(), &ws, &["run", "--detach", "Slow things"]);
    let id = started.ok().trim().to_string();
    appears(&ws.join("tests/test_slow.py")).await;
    // Pausing needs the daemon that runs the loop: b says which one that is.
    let pause = b.ctl(&["pause", &id]);
    assert_eq!(pause.code, 1);
    assert!(pause.stderr.contains("runs on daemon") && pause.stderr.contains(a.addr()), "{}", pause.stderr);
    // A cancel through b reaches a through the SSOT: a rolls EXEC back and ends the loop.
    let cancelled = b.ctl(&["-o", "json", "cancel", &id]).json();
    assert_eq!(cancelled["state"], "LOOP_STATE_CANCELLED", "{cancelled}\n{}", a.log());
    assert!(!ws.join("tests/test_slow.py").exists(), "EXEC's work is rolled back");
    assert_eq!(std::fs::read_to_string(ws.join("README")).unwrap(), "kept\n");
    // The project is free again: a loop started through b runs (the script has nothing for it, so it ends).
    let next = run_ctl_in(&b.url(), &ws, &["run", "--detach", "Slow again"]);
    let next = next.ok().trim().to_string();
    let end = wait_end(&a, &next).await;
    assert_ne!(end.phase, "", "{end:?}");
    let events = run_ctl_in(&a.url(), &ws, &["-o", "json", "attach", &next]).stdout;
    assert!(events.contains("\"kind\":\"phase\""), "it ran, not queued behind the cancelled loop: {events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssot_migrated_from_sled_to_etcd_serves_the_same_state() {
    let etcd = LocalEtcd::start().unwrap();
    let mut old = Daemon::start_with(&["--store", "sled"]).unwrap();
    let here = tempfile::tempdir().unwrap();
    let demo = run_ctl_in(&old.url(), here.path(), &["demo", "--workspace", "before"]);
    assert_eq!(demo.code, 0, "{}", demo.stderr);
    // Revisions are the new store's own (a fresh history): everything else is the same.
    let listing = |daemon: &Daemon| {
        let mut items = daemon.ctl(&["-p", "before", "-o", "json", "req", "list"]).json();
        for item in items.as_array_mut().unwrap() {
            item.as_object_mut().unwrap().remove("meta");
        }
        items
    };
    let requirements = listing(&old);
    let events = old.ctl(&["-o", "json", "attach", "loop-1"]).ok().to_string();
    let from = format!("sled:{}", old.data_dir().display());
    let to = etcd.store_arg("moved");
    let migrate = |from: &str, to: &str| {
        std::process::Command::new(maestro_tests::binary("e2e-maestrod"))
            .args(["migrate", "--from", from, "--to", to])
            .output()
            .unwrap()
    };
    // Not while a daemon uses the source.
    let busy = migrate(&from, &to);
    assert_eq!(busy.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(stderr.starts_with("maestrod: migrate: --from") && stderr.lines().count() == 1, "{stderr}");

    old.terminate().unwrap();
    let copied = migrate(&from, &to);
    let stdout = String::from_utf8_lossy(&copied.stdout);
    assert_eq!(copied.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&copied.stderr));
    assert!(stdout.starts_with("copied ") && stdout.contains(&to), "{stdout}");
    // Into a store that holds something: refused.
    let again = migrate(&from, &to);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds data"));

    // A daemon on etcd serves what the sled daemon had: its users too, from the same data dir.
    let new = Daemon::start_with(&["--store", &to]).unwrap();
    new.share_users_of(&old).await.unwrap();
    assert_eq!(listing(&new), requirements, "the same requirements");
    assert!(requirements.as_array().unwrap().len() > 3, "{requirements}");
    let moved = new.ctl(&["-o", "json", "attach", "loop-1"]).ok().to_string();
    assert_eq!(moved, events, "the same loop, with every event");
    // And goes on from there: the next loop is loop-2.
    let next = run_ctl_in(&new.url(), here.path(), &["demo", "--workspace", "after"]);
    assert_eq!(next.code, 0, "{}", next.stderr);
    assert!(new.ctl(&["-o", "json", "loop", "list"]).ok().contains("loop-2"));
}

#[test]
fn a_prefix_inside_another_ssots_prefix_is_refused() {
    let etcd = LocalEtcd::start().unwrap();
    let _team = Daemon::start_with(&["--store", &etcd.store_arg("team")]).unwrap();
    let inside = Daemon::start_with(&["--store", &etcd.store_arg("team/x")]).map(drop).unwrap_err().to_string();
    assert!(inside.contains("lie inside one another") && inside.contains("\"team\""), "{inside}");
    // A sibling whose name merely starts the same is another SSOT.
    Daemon::start_with(&["--store", &etcd.store_arg("team-b")]).expect("team-b is not inside team/");
}
