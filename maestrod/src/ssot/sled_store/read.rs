//! Reads: the current state, any retained past revision, and the history a
//! watcher replays. They run on blocking threads (sled may touch the disk),
//! against the tree the writer has applied: everything a read sees is in the
//! log already.

use std::sync::atomic::Ordering;

use serde_bytes::ByteBuf;

use super::Shared;
use super::layout::{self, KvMeta, KvRecord, RevisionGroup, decode, history_event};
use crate::ssot::store::{Event, RangeRequest, RangeResponse, Revision, StoreError, prefix_end};

/// A point read of the current state on the caller's task, when sled is
/// open right now; `None` while the writer reopens it (the caller reads on
/// a blocking thread instead of holding a runtime worker up).
pub(super) fn point_now(shared: &Shared, request: &RangeRequest) -> Option<Result<RangeResponse, StoreError>> {
    let tree = shared.try_tree()?;
    Some(tree.and_then(|tree| range_current(shared, &tree, request)))
}

/// A range read; each record names its author.
pub(super) fn range(shared: &Shared, request: &RangeRequest) -> Result<RangeResponse, StoreError> {
    // A read that may walk many records holds a reopen of sled off rather than
    // have it wait, with every other read and write, for the walk to end.
    let _walk = (!request.end.is_empty() || request.revision != 0).then(|| Walk::start(shared));
    let current = shared.committed.load(Ordering::Acquire);
    if request.revision == 0 || request.revision >= current {
        if request.revision > current {
            return Err(StoreError::FutureRevision { requested: request.revision, current });
        }
        return range_current(shared, &shared.tree()?, request);
    }
    let compacted = shared.compacted.load(Ordering::Acquire);
    if request.revision < compacted {
        return Err(StoreError::Compacted { requested: request.revision, compact_revision: compacted });
    }
    // History is not read from a snapshot: a sweep step applied while the scan
    // walked a key could leave it an old value without the delete after it. The
    // sweep waits while history is read; a step already under way when this read
    // began is caught by its count, and the read is done again (once at most).
    let _reading = HistoryRead::start(shared);
    let response = loop {
        let sweeps = shared.sweeps.load(Ordering::Acquire);
        let response = range_history(shared, request)?;
        if shared.sweeps.load(Ordering::Acquire) == sweeps {
            break response;
        }
    };
    // A compaction that ran during the scan may have removed what we read past.
    let compacted = shared.compacted.load(Ordering::Acquire);
    if request.revision < compacted {
        return Err(StoreError::Compacted { requested: request.revision, compact_revision: compacted });
    }
    Ok(response)
}

/// Holds a reopen of sled off for as long as it lives.
pub(super) struct Walk<'a>(&'a Shared);

impl<'a> Walk<'a> {
    pub(super) fn start(shared: &'a Shared) -> Self {
        // Counted before the tree is taken: a reopen that finds no walk under way
        // holds the lock every later walk takes its tree under.
        shared.walks.fetch_add(1, Ordering::AcqRel);
        Walk(shared)
    }
}

impl Drop for Walk<'_> {
    fn drop(&mut self) {
        self.0.walks.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds the sweep off for as long as it lives.
struct HistoryRead<'a>(&'a Shared);

impl<'a> HistoryRead<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.history_readers.fetch_add(1, Ordering::AcqRel);
        HistoryRead(shared)
    }
}

impl Drop for HistoryRead<'_> {
    fn drop(&mut self) {
        self.0.history_readers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Attempts at a scan of the current state that saw no unpublished group.
const SCAN_ATTEMPTS: usize = 8;

/// The current state. The writer applies a group to sled (once it is in the
/// log) a moment before it publishes the group's revision, so a read may see
/// a group not yet published. The header is never above what the read saw
/// (a watch from the next revision would miss a change) and, but in the last
/// resort below, never below a `mod_revision` in the answer:
/// - a point read (one lookup, atomic) answers the revision published before
///   it began, or the revision it saw if that is above (a group is applied at
///   once, with every earlier one before it), and returns once that revision
///   is published (a few instructions later), so such a watch starts at once;
/// - a scan is not a snapshot in sled (a group applied while it walks may be
///   half in it): one that saw an unpublished revision is done again; after
///   `SCAN_ATTEMPTS` it answers the revision published before it began, and a
///   watch from the next one delivers what it saw again.
fn range_current(shared: &Shared, tree: &sled::Tree, request: &RangeRequest) -> Result<RangeResponse, StoreError> {
    let (mut attempt, mut replaced) = (0, 0);
    loop {
        let before = shared.committed.load(Ordering::Acquire);
        let mut response = match read_current(tree, request)? {
            Current::Read(response) => response,
            Current::Replaced { key, revision } => {
                // Everything the sweep depended on was published before it ran:
                // the next attempt's header covers the change that replaced it.
                replaced += 1;
                if replaced == RECORD_ATTEMPTS {
                    return Err(StoreError::Backend(format!(
                        "the value of {} at revision {revision} is missing from history",
                        String::from_utf8_lossy(&key)
                    )));
                }
                continue;
            }
        };
        attempt += 1;
        let seen = response.kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
        let scan = !request.end.is_empty();
        if seen > before {
            // A point read may run on a runtime worker: it yields, never sleeps.
            wait_published(shared, seen, scan);
            if scan && attempt < SCAN_ATTEMPTS {
                continue;
            }
        }
        response.revision = if scan { before } else { before.max(seen) };
        return Ok(response);
    }
}

/// Waits until the writer has published `revision`, which it has applied (a
/// few instructions later, unless the writer thread is descheduled in
/// between). Yields up to 100 times; then, if `patient` (on a blocking
/// thread), sleeps for up to a second.
fn wait_published(shared: &Shared, revision: Revision, patient: bool) {
    let spins = if patient { 1100 } else { 100 };
    for spin in 0..spins {
        if shared.committed.load(Ordering::Acquire) >= revision {
            return;
        }
        if spin < 100 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// What a read of the current state found.
enum Current {
    Read(RangeResponse),
    /// The history entry `k` named for `key` is gone: the key was written
    /// again (or deleted) and a sweep removed it since. The read starts over.
    Replaced {
        key: Vec<u8>,
        revision: Revision,
    },
}

fn read_current(tree: &sled::Tree, request: &RangeRequest) -> Result<Current, StoreError> {
    let mut response = RangeResponse::default();
    if request.end.is_empty() {
        if let Some(raw) = tree.get(layout::cur(&request.start))? {
            let meta = decode::<KvMeta>(&raw)?;
            match current_record(tree, &request.start, meta)? {
                Some(record) => response.kvs.push(record.into_kv(request.start.clone())),
                None => return Ok(Current::Replaced { key: request.start.clone(), revision: meta.mod_revision }),
            }
        }
        return Ok(Current::Read(response));
    }
    for item in tree.range(layout::cur(&request.start)..layout::cur(&request.end)) {
        let (raw_key, raw) = item?;
        if request.limit > 0 && response.kvs.len() == request.limit {
            response.more = true;
            break;
        }
        let key = &raw_key[1..];
        let meta = decode::<KvMeta>(&raw)?;
        match current_record(tree, key, meta)? {
            Some(record) => response.kvs.push(record.into_kv(key.to_vec())),
            None => return Ok(Current::Replaced { key: key.to_vec(), revision: meta.mod_revision }),
        }
    }
    Ok(Current::Read(response))
}

/// Times a read of the current state starts over because a value it found
/// was replaced and swept, before it gives up (only damage repeats it).
const RECORD_ATTEMPTS: usize = 16;

/// The record `meta` (read from `k`) names, from history; `None` if that
/// entry is gone (a sweep keeps each key's newest entry, so the key was
/// written again or deleted since `k` was read).
pub(super) fn current_record(tree: &sled::Tree, key: &[u8], meta: KvMeta) -> Result<Option<KvRecord>, StoreError> {
    let Some(raw) = tree.get(layout::hist(key, meta.mod_revision))? else {
        return Ok(None);
    };
    match decode::<Option<KvRecord>>(&raw)? {
        Some(record) => Ok(Some(record)),
        None => Err(StoreError::Backend(format!(
            "the current value of {} is recorded as deleted at revision {}",
            String::from_utf8_lossy(key),
            meta.mod_revision
        ))),
    }
}

fn range_history(shared: &Shared, request: &RangeRequest) -> Result<RangeResponse, StoreError> {
    let at = request.revision;
    let mut response = RangeResponse { revision: at, ..RangeResponse::default() };
    let (start, end) = if request.end.is_empty() {
        let start = layout::hist_prefix(&request.start);
        let end = prefix_end(&start);
        (start, end)
    } else {
        let mut start = vec![layout::HIST];
        start.extend_from_slice(&request.start);
        let mut end = vec![layout::HIST];
        end.extend_from_slice(&request.end);
        (start, end)
    };
    // Entries come grouped by key, revisions ascending: keep the last one <= at.
    let mut pending: Option<(Vec<u8>, Option<KvRecord>)> = None;
    let flush = |pending: Option<(Vec<u8>, Option<KvRecord>)>, response: &mut RangeResponse| -> bool {
        if let Some((key, Some(record))) = pending {
            if request.limit > 0 && response.kvs.len() == request.limit {
                response.more = true;
                return false;
            }
            response.kvs.push(record.into_kv(key));
        }
        true
    };
    for item in shared.tree()?.range(start..end) {
        let (raw_key, raw) = item?;
        let Some((key, revision)) = layout::parse_hist(&raw_key) else {
            continue;
        };
        // The scan starts at `h start`, which also matches the history of `start`
        // itself when a listing resumes at `start` = last key + NUL: skip keys below it.
        if key < request.start.as_slice() {
            continue;
        }
        if pending.as_ref().is_some_and(|(k, _)| k.as_slice() != key) && !flush(pending.take(), &mut response) {
            return Ok(response);
        }
        if revision > at {
            continue;
        }
        let record: Option<KvRecord> = decode(&raw)?;
        pending = Some((key.to_vec(), record));
    }
    flush(pending, &mut response);
    Ok(response)
}

/// Events of revisions `from..=to` under `prefix`, at most about
/// `max_events`; returns them and the last revision covered.
pub(super) fn history(
    shared: &Shared,
    prefix: &[u8],
    from: Revision,
    to: Revision,
    max_events: usize,
) -> Result<(Vec<Event>, Revision), StoreError> {
    let compacted = shared.compacted.load(Ordering::Acquire);
    if from < compacted {
        return Err(StoreError::Compacted { requested: from, compact_revision: compacted });
    }
    let mut events = Vec::new();
    let mut covered = from - 1;
    let _walk = Walk::start(shared);
    let tree = shared.tree()?;
    // Records are keyed by their group's last revision: the first one at or
    // after `from` holds `from` (or the revision after it).
    'groups: for item in tree.range(layout::rev(from)..layout::prefixed(layout::REVS + 1, &[])) {
        let (_, raw) = item?;
        let group: RevisionGroup = decode(&raw)?;
        for (revision, keys) in group {
            if revision < from {
                continue;
            }
            if revision > to {
                break 'groups;
            }
            for key in keys.into_iter().map(ByteBuf::into_vec).filter(|k| k.starts_with(prefix)) {
                let record: Option<KvRecord> = match tree.get(layout::hist(&key, revision))? {
                    Some(raw) => decode(&raw)?,
                    None => {
                        return Err(StoreError::Backend(format!("history of revision {revision} is missing")));
                    }
                };
                events.push(history_event(key, revision, record));
            }
            covered = revision;
            if events.len() >= max_events {
                break 'groups;
            }
        }
    }
    if covered < to && events.len() < max_events {
        // Revisions without a record are only possible below the compaction point.
        covered = to;
    }
    let compacted = shared.compacted.load(Ordering::Acquire);
    if from < compacted {
        return Err(StoreError::Compacted { requested: from, compact_revision: compacted });
    }
    Ok((events, covered))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::super::{SledOptions, SledStore};
    use super::*;
    use crate::ssot::store::{Op, Store, Txn, TxnResponse};

    /// Writes that arrive together share a group commit and one revision
    /// record, and a watch may start at any revision inside a group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_revision_record_per_group_and_watches_start_inside_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        let writes = (0..400).map(|n| {
            let mut txn = Txn::new().then(Op::put(format!("k/{}", n % 37), format!("v{n}")));
            txn.actor = Some(format!("agent-{}", n % 3));
            store.txn(txn)
        });
        for result in futures::future::join_all(writes).await {
            assert!(result.unwrap().is_committed());
        }
        let records = store.shared.tree().unwrap().scan_prefix([layout::REVS]).count();
        assert!(records < 400, "{records} revision records for 400 revisions: writes were not grouped");
        let mut all = Vec::new();
        let mut stream = store.watch(b"k/".to_vec(), 1).unwrap();
        while all.len() < 400 {
            let batch = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
            all.extend(batch.events.into_iter().map(|e| (e.kv.mod_revision, e.kv.key, e.kv.modified_by)));
        }
        assert_eq!(all.iter().map(|e| e.0).collect::<Vec<_>>(), (1..=400).collect::<Vec<_>>());
        for start in [2, 57, 200, 399, 400] {
            let (events, covered) = history(&store.shared, b"k/", start, 400, usize::MAX).unwrap();
            let got: Vec<_> = events.into_iter().map(|e| (e.kv.mod_revision, e.kv.key, e.kv.modified_by)).collect();
            assert_eq!(got, all[start as usize - 1..], "history from {start}");
            assert_eq!(covered, 400);
            let (events, covered) = history(&store.shared, b"k/", start, start, usize::MAX).unwrap();
            assert_eq!((events.len(), covered), (1, start), "history of revision {start} alone");
        }
        let kvs = store.range(RangeRequest::prefix("k/")).await.unwrap().kvs;
        assert!(kvs.iter().all(|kv| kv.modified_by.starts_with("agent-")), "every record names its author");
        store.close().await;
    }

    /// Each value is stored once: a write's value is in its history entry
    /// only, the key's current record points at it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_value_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        let value = |n: usize| format!("{n:04}:{}", "x".repeat(4000)).into_bytes();
        for n in 0..60 {
            let txn = Txn::new().then(Op::put(format!("k/{}", n % 7), value(n)));
            assert!(store.txn(txn).await.unwrap().is_committed());
        }
        store.close().await;
        let tree = store.shared.tree().unwrap();
        let mut copies = vec![0; 60];
        for item in tree.iter() {
            let (_, raw) = item.unwrap();
            for (n, count) in copies.iter_mut().enumerate() {
                *count += raw.windows(4005).filter(|w| *w == &value(n)[..4005]).count();
            }
        }
        assert_eq!(copies, vec![1; 60], "stored copies of each value");
        drop(tree);
        drop(store);
        // And reads still find them, now and in the past.
        let store = super::super::recovery_tests::reopen(dir.path(), SledOptions::default()).await;
        let now = store.range(RangeRequest::prefix("k/")).await.unwrap();
        let last: Vec<_> = [56, 57, 58, 59, 53, 54, 55].into_iter().map(value).collect();
        assert_eq!(now.kvs.iter().map(|kv| kv.value.clone()).collect::<Vec<_>>(), last, "k/0..k/6");
        let one = store.range(RangeRequest::key("k/3")).await.unwrap();
        assert_eq!(one.kvs[0].value, value(59), "k/3 was last written by write 59");
        let then = store.range(RangeRequest::key("k/3").at(4)).await.unwrap();
        assert_eq!(then.kvs[0].value, value(3));
        store.close().await;
    }

    /// A read that found a key's record meets the value it points at swept
    /// after a newer write and a compaction: it reads the key again, never
    /// fails and never answers an older value than it saw before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_find_the_current_value_while_writes_and_compactions_sweep_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = |scan: bool| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut reads, mut last) = (0u64, 0u64);
                while !stop.load(Ordering::Acquire) {
                    let request = if scan { RangeRequest::prefix("hot") } else { RangeRequest::key("hot") };
                    let response = store.range(request).await.expect("a read of the current state");
                    if let Some(kv) = response.kvs.first() {
                        let n: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
                        assert!(n >= last, "read {n} after {last}");
                        assert_eq!(kv.mod_revision, n, "the value written at its revision");
                        last = n;
                    }
                    reads += 1;
                    // A point read may finish without a pause: let the other tasks run.
                    tokio::task::yield_now().await;
                }
                reads
            })
        };
        let readers = [reader(false), reader(false), reader(true)];
        for n in 1..=3000u64 {
            let txn = Txn::new().then(Op::put("hot", n.to_string()));
            assert_eq!(store.txn(txn).await.unwrap(), TxnResponse::Committed { revision: n });
            if n % 10 == 0 {
                store.compact(n).await.unwrap();
            }
        }
        stop.store(true, Ordering::Release);
        for reader in readers {
            assert!(reader.await.unwrap() > 0);
        }
        let now = store.range(RangeRequest::key("hot")).await.unwrap();
        assert_eq!(now.kvs[0].value, b"3000");
        store.close().await;
    }

    /// A read that meets the entry its `k` named swept starts over; one that
    /// keeps meeting it (damage) fails with the key named instead of looping.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_whose_value_was_swept_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        for (key, value) in [("a", "1"), ("a", "2"), ("b", "3")] {
            assert!(store.txn(Txn::new().then(Op::put(key, value))).await.unwrap().is_committed());
        }
        store.compact(3).await.unwrap();
        let tree = store.shared.tree().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tree.get(layout::hist(b"a", 1)).unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "the sweep did not remove revision 1");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stale = KvMeta { create_revision: 1, mod_revision: 1, version: 1, lease: 0 };
        assert!(current_record(&tree, b"a", stale).unwrap().is_none(), "revision 1 is gone");
        let now = KvMeta { mod_revision: 2, version: 2, ..stale };
        assert_eq!(current_record(&tree, b"a", now).unwrap().unwrap().value, b"2");

        // `k` as a read that began before the second write found it.
        tree.insert(layout::cur(b"a"), layout::encode(&stale)).unwrap();
        for request in [RangeRequest::key("a"), RangeRequest::prefix("")] {
            match read_current(&tree, &request).unwrap() {
                Current::Replaced { key, revision } => assert_eq!((key.as_slice(), revision), (&b"a"[..], 1)),
                Current::Read(response) => panic!("answered {response:?} from a swept entry"),
            }
            let error = range_current(&store.shared, &tree, &request).unwrap_err();
            assert!(error.to_string().contains("value of a at revision 1 is missing"), "{error}");
        }
        tree.insert(layout::cur(b"a"), layout::encode(&now)).unwrap();
        let read = store.range(RangeRequest::prefix("")).await.unwrap();
        assert_eq!(read.kvs.iter().map(|kv| kv.value.as_slice()).collect::<Vec<_>>(), [&b"2"[..], b"3"]);
        drop(tree);
        store.close().await;
    }
}
