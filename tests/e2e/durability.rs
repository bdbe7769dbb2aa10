//! Durability and lifecycle: kill -9 after acknowledged writes, lease expiry
//! across a restart, one daemon per data directory, graceful SIGTERM.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use maestro_shared::v1;
use maestro_tests::{Daemon, spawn_daemon};
use tonic::Code;

use crate::Clients;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_leases_still_expire_on_time() {
    let mut daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("durable").await;
    let lease = c.locks.grant_lease(v1::GrantLeaseRequest { ttl_seconds: 8 }).await.unwrap().into_inner();
    c.locks
        .acquire_lock(v1::AcquireLockRequest {
            project_id: "durable".into(),
            name: "epoch-1".into(),
            holder: "backend".into(),
            lease_id: lease.id,
            ttl_seconds: 0,
        })
        .await
        .unwrap();

    // A burst of concurrent writes of every kind; remember what was acknowledged.
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let mut c = Clients::connect(&daemon).await;
        tasks.push(tokio::spawn(async move {
            let mut acked = (Vec::new(), Vec::new(), 0u64, 0u64);
            for i in 0..6 {
                let key = format!("w{worker}-{i}");
                let put = c
                    .memory
                    .put_memory(v1::PutMemoryRequest {
                        project_id: "durable".into(),
                        agent: "backend".into(),
                        key: key.clone(),
                        value: format!("value of {key}"),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                acked.3 = acked.3.max(put.meta.unwrap().mod_revision);
                acked.0.push(key.clone());
                let req = c.requirement("durable", &format!("task {key}"), "", &[]).await;
                acked.1.push((req.id, req.title));
                c.log
                    .append_log_entry(v1::AppendLogEntryRequest {
                        project_id: "durable".into(),
                        agent: "backend".into(),
                        action: "write_file".into(),
                        target: key,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                acked.2 += 1;
            }
            acked
        }));
    }
    let mut keys = Vec::new();
    let mut requirements = Vec::new();
    let mut appended = 0;
    let mut max_revision = 0;
    for task in tasks {
        let (k, r, a, rev) = task.await.unwrap();
        keys.extend(k);
        requirements.extend(r);
        appended += a;
        max_revision = max_revision.max(rev);
    }
    daemon.kill9();
    daemon.restart().unwrap();

    let mut c = Clients::connect(&daemon).await;
    assert!(c.revision().await >= max_revision);
    for key in &keys {
        let entry = c
            .memory
            .get_memory(v1::GetMemoryRequest {
                project_id: "durable".into(),
                agent: "backend".into(),
                key: key.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged memory entry {key} lost: {s:?}"))
            .into_inner();
        assert_eq!(entry.value, format!("value of {key}"));
    }
    for (id, title) in &requirements {
        let found = c
            .requirements
            .get_requirement(v1::GetRequirementRequest { project_id: "durable".into(), id: id.clone(), revision: 0 })
            .await
            .unwrap_or_else(|s| panic!("acknowledged requirement {id} lost: {s:?}"))
            .into_inner();
        assert_eq!(&found.title, title);
    }
    let verdict = c.log.verify_log(v1::VerifyLogRequest { project_id: "durable".into() }).await.unwrap().into_inner();
    assert!(verdict.ok, "{}", verdict.problem);
    assert_eq!(verdict.entries, appended);

    // The lease was not kept alive: it expires at its original deadline, restart or not.
    let locks = |c: &mut Clients| {
        let mut c = c.clone();
        async move {
            c.locks
                .list_locks(v1::ListLocksRequest { project_id: "durable".into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .locks
                .len()
        }
    };
    if now_ms() < lease.expire_time_ms - 1000 {
        assert_eq!(locks(&mut c).await, 1, "the lock is still held before its lease's deadline");
    }
    let wait = (lease.expire_time_ms - now_ms() + 1500).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert_eq!(locks(&mut c).await, 0, "the lease expired and released its lock");
    let gone = c.locks.get_lease(v1::GetLeaseRequest { lease_id: lease.id }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let daemon = Daemon::start().unwrap();
    let log = daemon.data_dir().parent().unwrap().join("second.log");
    let error = spawn_daemon(daemon.data_dir(), &log, &[]).map(drop).unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("is in use by another maestrod (pid"), "{message}");
    // The first daemon is unharmed.
    let mut c = Clients::connect(&daemon).await;
    c.project("still-fine").await;
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_keeps_the_data() {
    let mut daemon = Daemon::start().unwrap();
    let mut c = Clients::connect(&daemon).await;
    c.project("graceful").await;
    c.requirement("graceful", "survives", "", &[]).await;
    // An open watch must not hold the shutdown up.
    let _watch = c.watch.watch(v1::WatchRequest { project_id: "graceful".into(), ..Default::default() }).await.unwrap();
    let status = daemon.terminate().unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{}", daemon.log());
    assert!(daemon.log().contains("store flushed"), "{}", daemon.log());
    daemon.restart().unwrap();
    let mut c = Clients::connect(&daemon).await;
    let found = c
        .requirements
        .get_requirement(v1::GetRequirementRequest { project_id: "graceful".into(), id: "R1".into(), revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.title, "survives");
}
