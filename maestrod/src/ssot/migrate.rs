//! Copies an SSOT from one store to another (`maestrod migrate`): the current
//! state at one revision of the source, into an empty target, in transactions
//! small enough for etcd's default limits. History starts fresh on the target
//! (revisions are the target's own; reads of older revisions and snapshots
//! taken before still work, as snapshots are stored state). Keys held by a
//! lease (locks, daemon registrations, loop ownership) are not copied: they
//! belong to processes of the source and would outlive their leases.

use std::sync::Arc;

use super::store::{Op, RangeRequest, Revision, Store, StoreError, Txn, TxnResponse};

/// Keys per read page of the source.
const PAGE_KEYS: usize = 1000;
/// At most this many operations per target transaction (etcd's default `--max-txn-ops` is 128)…
const TXN_OPS: usize = 100;
/// …and this many bytes of keys and values (etcd's default request limit is 1.5 MiB).
const TXN_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// The source revision the copy is of.
    pub source_revision: Revision,
    pub keys: u64,
    pub bytes: u64,
    /// Keys held by leases, left behind.
    pub skipped_leased: u64,
    /// The target's revision after the copy.
    pub target_revision: Revision,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the target already holds data (key {0:?}): migrate into an empty store or prefix")]
    TargetNotEmpty(String),
    #[error("reading the source: {0}")]
    Source(StoreError),
    #[error("writing the target: {0}")]
    Target(StoreError),
    #[error("key {0:?} appeared on the target while copying: is a daemon using it?")]
    Raced(String),
    #[error("a daemon uses the source ({0}): stop every daemon on it first")]
    SourceInUse(String),
}

/// Copies every key of `source` (as of its current revision) into the empty
/// `target`; `progress` is told the report so far after each transaction.
/// With `shared_source` (a store daemons share, not locked by any), a source
/// where a daemon is registered is refused.
pub async fn migrate(
    source: Arc<dyn Store>,
    target: Arc<dyn Store>,
    shared_source: bool,
    mut progress: impl FnMut(&MigrationReport),
) -> Result<MigrationReport, MigrateError> {
    let everything = || RangeRequest { start: vec![0], end: vec![0xff], ..Default::default() };
    if shared_source {
        let daemons = source.range(RangeRequest { limit: 1, ..RangeRequest::prefix("daemons/") }).await;
        if let Some(kv) = daemons.map_err(MigrateError::Source)?.kvs.first() {
            return Err(MigrateError::SourceInUse(String::from_utf8_lossy(&kv.key).into_owned()));
        }
    }
    let present = target.range(RangeRequest { limit: 1, ..everything() }).await.map_err(MigrateError::Target)?;
    if let Some(kv) = present.kvs.first() {
        return Err(MigrateError::TargetNotEmpty(String::from_utf8_lossy(&kv.key).into_owned()));
    }
    let mut report = MigrationReport {
        source_revision: source.current_revision().await.map_err(MigrateError::Source)?,
        ..Default::default()
    };
    let mut start = vec![0];
    let mut pending: Vec<Op> = Vec::new();
    let mut pending_bytes = 0;
    loop {
        let request = RangeRequest {
            start: start.clone(),
            revision: report.source_revision,
            limit: PAGE_KEYS,
            without_authors: true,
            ..everything()
        };
        let page = source.range(request).await.map_err(MigrateError::Source)?;
        for kv in &page.kvs {
            if kv.lease != 0 {
                report.skipped_leased += 1;
                continue;
            }
            let size = kv.key.len() + kv.value.len();
            if !pending.is_empty() && (pending.len() >= TXN_OPS || pending_bytes + size > TXN_BYTES) {
                write(&*target, std::mem::take(&mut pending), &mut report).await?;
                pending_bytes = 0;
                progress(&report);
            }
            pending.push(Op::put(kv.key.clone(), kv.value.clone()));
            pending_bytes += size;
            report.keys += 1;
            report.bytes += size as u64;
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                start = last.key.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    if !pending.is_empty() {
        write(&*target, pending, &mut report).await?;
        progress(&report);
    }
    Ok(report)
}

/// One transaction of puts, each on a key that must not exist yet.
async fn write(target: &dyn Store, ops: Vec<Op>, report: &mut MigrationReport) -> Result<(), MigrateError> {
    let mut txn = Txn::new();
    for op in ops {
        if let Op::Put { key, .. } = &op {
            txn = txn.when(super::store::Compare::absent(key.clone()));
        }
        txn = txn.then(op);
    }
    let keys: Vec<Vec<u8>> = txn.compares.iter().map(|c| c.key.clone()).collect();
    match target.txn(txn).await.map_err(MigrateError::Target)? {
        TxnResponse::Committed { revision } => {
            report.target_revision = revision;
            Ok(())
        }
        TxnResponse::CompareFailed { index, .. } => {
            Err(MigrateError::Raced(String::from_utf8_lossy(&keys[index]).into_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssot::Ssot;
    use crate::ssot::sled_store::{SledOptions, SledStore};

    #[tokio::test]
    async fn the_current_state_moves_and_leased_keys_stay_behind() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source: Arc<dyn Store> = Arc::new(SledStore::open(a.path(), SledOptions::default()).unwrap());
        let target: Arc<dyn Store> = Arc::new(SledStore::open(b.path(), SledOptions::default()).unwrap());
        let ssot = Ssot::new(source.clone(), Default::default());
        ssot.create_project("p", "a project", "").await.unwrap();
        // More than one page and one transaction; a value rewritten (only its last value moves).
        for i in 0..(PAGE_KEYS + 150) {
            source.txn(Txn::new().then(Op::put(format!("x/{i:05}"), vec![b'v'; 64]))).await.unwrap();
        }
        source.txn(Txn::new().then(Op::put("x/00007", b"new".to_vec()))).await.unwrap();
        let lease = source.lease_grant(std::time::Duration::from_secs(60)).await.unwrap().id;
        source.txn(Txn::new().then(Op::Put { key: b"held".to_vec(), value: b"1".to_vec(), lease })).await.unwrap();

        let mut reports = 0;
        let report = migrate(source.clone(), target.clone(), true, |_| reports += 1).await.unwrap();
        assert_eq!(report.keys as usize, PAGE_KEYS + 150 + 1, "{report:?}");
        assert_eq!(report.skipped_leased, 1);
        assert!(reports >= (PAGE_KEYS + 150) / TXN_OPS, "progress after each transaction: {reports}");
        let copied = Ssot::new(target.clone(), Default::default());
        assert_eq!(copied.get_project("p").await.unwrap().value.display_name, "a project");
        let seven = target.range(RangeRequest::key("x/00007")).await.unwrap();
        assert_eq!(seven.kvs[0].value, b"new");
        assert!(target.range(RangeRequest::key("held")).await.unwrap().kvs.is_empty());

        // A second run finds the target in use and changes nothing.
        let refused = migrate(source.clone(), target.clone(), false, |_| {}).await.unwrap_err();
        assert!(matches!(refused, MigrateError::TargetNotEmpty(_)), "{refused}");
        assert_eq!(target.status().revision, report.target_revision);

        // A store a daemon is registered in (on a lease) is in use.
        let held = Ssot::new(source.clone(), Default::default());
        let info = crate::ssot::owners::DaemonInfo {
            id: "d1".into(),
            address: String::new(),
            host: String::new(),
            pid: 1,
            lease,
            start_time_ms: 0,
        };
        held.register_daemon(&info).await.unwrap();
        let c = tempfile::tempdir().unwrap();
        let empty: Arc<dyn Store> = Arc::new(SledStore::open(c.path(), SledOptions::default()).unwrap());
        let busy = migrate(source, empty, true, |_| {}).await.unwrap_err();
        assert!(matches!(busy, MigrateError::SourceInUse(_)), "{busy}");
    }
}
