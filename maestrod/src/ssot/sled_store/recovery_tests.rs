//! Recovery of the sled backend in one process: a sled directory that is
//! gone or damaged is rebuilt from the checkpoint and the log; checkpoints
//! trim the log; leases keep their keys across a reopen; a compaction sweep
//! leaves exactly what reads at and after the compaction point need.

use std::path::Path;
use std::time::Duration;

use super::{SledOptions, SledStore, checkpoint, repair, wal};
use crate::ssot::store::{Op, RangeRequest, Store, Txn};

/// Small segments and checkpoints, so a few hundred writes exercise them.
fn small() -> SledOptions {
    SledOptions { wal_segment_bytes: 16 << 10, checkpoint_bytes: 64 << 10, ..SledOptions::default() }
}

/// Opens, waiting for a store just closed in this process to let go of sled's lock.
pub(super) async fn reopen(dir: &Path, options: SledOptions) -> SledStore {
    for _ in 0..200 {
        match SledStore::open(dir, options.clone()) {
            Ok(store) => return store,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open: {e}"),
        }
    }
    panic!("sled never let go of its lock")
}

async fn write(store: &SledStore, from: usize, to: usize) {
    for n in from..to {
        let txn = Txn::new().then(Op::put(format!("k/{:05}", n % 150), format!("value {n} {}", "x".repeat(n % 200))));
        assert!(store.txn(txn).await.unwrap().is_committed());
    }
}

async fn everything(store: &SledStore) -> Vec<(Vec<u8>, Vec<u8>, u64)> {
    let all = store.range(RangeRequest::prefix("")).await.unwrap();
    all.kvs.into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_damaged_store_is_rebuilt_from_the_checkpoint_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), small()).unwrap();
    // Enough log for the checkpoints to move past the first segment (a write logs its value once).
    write(&store, 0, 1_000).await;
    let before = everything(&store).await;
    let status = store.status();
    store.close().await;
    drop(store);
    let checkpoints = checkpoint::list(&dir.path().join("checkpoints")).unwrap();
    assert!(checkpoints.len() >= 2, "checkpoints were taken as the log grew: {checkpoints:?}");
    let segments = wal::segments(&dir.path().join("wal")).unwrap();
    assert!(segments[0].0 > 1, "and the log before them was removed: {segments:?}");

    // The sled directory is gone: rebuilt at open.
    std::fs::remove_dir_all(dir.path().join("store")).unwrap();
    let store = reopen(dir.path(), small()).await;
    assert_eq!(everything(&store).await, before);
    assert_eq!(store.status(), status);
    write(&store, 1_000, 1_050).await;
    let before = everything(&store).await;
    store.close().await;
    drop(store);

    // Its files are garbage: rebuilt at open, the damaged copy kept aside.
    for entry in walk(&dir.path().join("store")) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0xA5; len.max(64)]).unwrap();
    }
    let store = reopen(dir.path(), small()).await;
    assert_eq!(everything(&store).await, before);
    store.close().await;
    drop(store);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("store.broken-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");

    // The explicit repair does the same on a store that opens fine.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = repair(dir.path()).unwrap();
    assert_eq!(report.revision, status.revision + 50);
    let store = reopen(dir.path(), small()).await;
    assert_eq!(everything(&store).await, before);
    store.close().await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_intact_checkpoint_repair_refuses_and_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    write(&store, 0, 20).await;
    store.close().await;
    drop(store);
    for (_, path) in checkpoint::list(&dir.path().join("checkpoints")).unwrap() {
        std::fs::write(&path, b"MSTRCKP1 not really").unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let error = repair(dir.path()).unwrap_err();
    assert!(error.to_string().contains("no intact checkpoint"), "{error}");
    assert!(dir.path().join("store").exists(), "the store is left where it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_keys_stay_attached_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    let put = Op::Put { key: b"lock/a".to_vec(), value: b"held".to_vec(), lease: lease.id };
    store.txn(Txn::new().then(put).then(Op::put("plain", "stays"))).await.unwrap();
    store.close().await;
    drop(store);
    let store = reopen(dir.path(), SledOptions::default()).await;
    store.lease_revoke(lease.id).await.unwrap();
    let left: Vec<_> = everything(&store).await.into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(left, [b"plain".to_vec()], "revoking the lease deleted its key, and only it");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_cut_off_by_a_restart_finishes_and_reads_above_the_point_are_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    write(&store, 0, 3_000).await;
    let target = store.status().revision - 100;
    let at_target = store.range(RangeRequest::prefix("").at(target)).await.unwrap();
    store.compact(target).await.unwrap();
    // Closing at once cuts the sweep off (3,000 history entries take a few steps).
    store.close().await;
    drop(store);
    let store = reopen(dir.path(), SledOptions::default()).await;
    assert_eq!(store.range(RangeRequest::prefix("").at(target)).await.unwrap().kvs, at_target.kvs);
    // Wait for the sweep to finish: only entries a read at or after the target needs remain.
    let tree = store.shared.tree().unwrap();
    let mut swept = false;
    for _ in 0..100 {
        let entries = tree.scan_prefix([super::layout::HIST]).count();
        if entries <= 150 + 100 {
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(swept, "old history is gone: {} entries", tree.scan_prefix([super::layout::HIST]).count());
    assert_eq!(store.range(RangeRequest::prefix("").at(target)).await.unwrap().kvs, at_target.kvs);
    assert_eq!(tree.range(super::layout::rev(0)..super::layout::rev(target)).count(), 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_removes_deleted_keys_history_and_reads_never_see_it_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
    for round in 0..3 {
        for n in 0..200 {
            store.txn(Txn::new().then(Op::put(format!("gone/{n:03}"), format!("v{round}")))).await.unwrap();
        }
    }
    for n in 0..200 {
        store.txn(Txn::new().then(Op::delete(format!("gone/{n:03}")))).await.unwrap();
    }
    write(&store, 0, 300).await;
    let target = store.status().revision;
    let expected = store.range(RangeRequest::prefix("").at(target - 1)).await.unwrap().kvs;
    assert!(expected.iter().all(|kv| !kv.key.starts_with(b"gone/")));
    store.compact(target - 1).await.unwrap();
    // While the sweep runs in steps, reads at the compaction point keep their answer.
    let tree = store.shared.tree().unwrap();
    let history_of_gone = || tree.scan_prefix(&super::layout::hist_prefix(b"gone/")[..6]).count();
    for _ in 0..500 {
        let now = store.range(RangeRequest::prefix("").at(target - 1)).await.unwrap().kvs;
        assert_eq!(now, expected, "a read at the compaction point changed during the sweep");
        if history_of_gone() == 0 {
            break;
        }
    }
    assert_eq!(history_of_gone(), 0, "the deleted keys' history and tombstones are gone");
    store.close().await;
}

#[test]
fn only_damage_moves_a_store_aside_never_the_environment() {
    use super::OpenError;
    use std::io::{Error, ErrorKind};
    let rebuilds = |error: sled::Error| matches!(OpenError::from(error), OpenError::Rebuild(_));
    // The environment: a rebuild would not help, and would move an intact store aside.
    assert!(!rebuilds(sled::Error::Io(Error::from(ErrorKind::PermissionDenied))));
    assert!(!rebuilds(sled::Error::Io(Error::from(ErrorKind::StorageFull))));
    assert!(!rebuilds(sled::Error::Io(Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32))));
    assert!(!rebuilds(sled::Error::Io(Error::other("could not acquire lock on \"/data/store/db\": WouldBlock"))));
    // Damage: files that do not read back.
    assert!(rebuilds(sled::Error::Io(Error::from(ErrorKind::UnexpectedEof))));
    assert!(rebuilds(sled::Error::Corruption { at: None, bt: () }));
    assert!(rebuilds(sled::Error::ReportableBug("a page that cannot be".into())));
}
