//! Watch: resume without gaps or duplicates, slow watchers, lease expiry events.

use std::time::Duration;

use futures::StreamExt;
use maestro_shared::v1;
use maestro_tests::Daemon;
use tonic::Streaming;

use crate::Clients;

/// One agent per writer: an agent's memory is bounded (1,000 entries), and
/// evictions would add delete events to the count.
fn agent_for(key: &str) -> String {
    format!("agent-{}", key.split('-').next().unwrap_or(key))
}

async fn put(c: &mut Clients, key: &str) -> u64 {
    c.memory
        .put_memory(v1::PutMemoryRequest {
            project_id: "w".into(),
            agent: agent_for(key),
            key: key.into(),
            value: key.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .meta
        .unwrap()
        .mod_revision
}

/// Reads events until `count` have arrived (fails after 10 s).
async fn collect(stream: &mut Streaming<v1::WatchResponse>, count: usize) -> Vec<v1::WatchEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while events.len() < count {
            let message = stream.next().await.expect("stream open").expect("no error");
            events.extend(message.events);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} events arrived", events.len()));
    events
}

async fn watch(c: &mut Clients, prefix: &str, start: u64) -> Streaming<v1::WatchResponse> {
    let mut stream = c
        .watch
        .watch(v1::WatchRequest { project_id: "w".into(), prefix: prefix.into(), start_revision: start })
        .await
        .unwrap()
        .into_inner();
    let hello = stream.next().await.unwrap().unwrap();
    assert!(hello.events.is_empty() && hello.start_revision > 0, "{hello:?}");
    stream
}

#[tokio::test]
async fn resume_from_the_last_seen_revision_misses_and_repeats_nothing() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("w").await;
    let mut stream = watch(&mut c, "memory/", 0).await;
    let mut first = Vec::new();
    for i in 0..10 {
        first.push(put(&mut c, &format!("a{i}")).await);
    }
    let events = collect(&mut stream, 10).await;
    assert_eq!(events.iter().map(|e| e.mod_revision).collect::<Vec<_>>(), first);
    let last_seen = events.last().unwrap().mod_revision;
    drop(stream);

    let mut second = Vec::new();
    for i in 0..10 {
        second.push(put(&mut c, &format!("b{i}")).await);
        // Noise outside the watched prefix.
        c.requirement("w", "noise", "", &[]).await;
    }
    let mut stream = watch(&mut c, "memory/", last_seen + 1).await;
    let events = collect(&mut stream, 10).await;
    assert_eq!(events.iter().map(|e| e.mod_revision).collect::<Vec<_>>(), second);
    assert_eq!(events[0].key, "memory/agent-b0/b0");
    let value: serde_json::Value = serde_json::from_str(&events[0].value_json).unwrap();
    assert_eq!(value["value"], "b0");
    // And nothing more arrives.
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(extra.is_err(), "unexpected extra message {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_far_behind_still_gets_every_event() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("w").await;
    let mut stream = watch(&mut c, "", 0).await;
    // More writes than the live buffer holds, while the watcher reads nothing.
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..300 {
                    revs.push(put(&mut c, &format!("k{w}-{i}")).await);
                }
                revs
            })
        })
        .collect();
    let mut expected = Vec::new();
    for writer in writers {
        expected.extend(writer.await.unwrap());
    }
    expected.sort_unstable();
    let events = collect(&mut stream, expected.len()).await;
    let got: Vec<u64> = events.iter().map(|e| e.mod_revision).collect();
    assert_eq!(got, expected, "in order, none missing, none repeated");
}

#[tokio::test]
async fn an_expiring_lease_releases_its_lock_with_a_delete_event() {
    let daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("w").await;
    let mut stream = watch(&mut c, "locks/", 0).await;
    let lock = c
        .locks
        .acquire_lock(v1::AcquireLockRequest {
            project_id: "w".into(),
            name: "workspace".into(),
            holder: "frontend".into(),
            lease_id: 0,
            ttl_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let events = collect(&mut stream, 2).await;
    assert_eq!(events[0].r#type, v1::EventType::Put as i32);
    assert_eq!(events[1].r#type, v1::EventType::Delete as i32);
    assert_eq!(events[1].key, "locks/workspace");
    // Taking it again now works for someone else.
    let again = c
        .locks
        .acquire_lock(v1::AcquireLockRequest {
            project_id: "w".into(),
            name: "workspace".into(),
            holder: "backend".into(),
            lease_id: 0,
            ttl_seconds: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.lease_id, lock.lease_id);
}
