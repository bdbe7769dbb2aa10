//! Reopening sled, so that its recovery after a crash stays short.
//!
//! sled 0.34 writes the snapshot it recovers from (where each of its pages
//! lives) only when it is opened. After a crash it starts from that snapshot
//! and reads every log message written since, so a daemon that ran for a
//! long time and was killed pays for its whole run at the next start (1.6 s
//! after a million revisions). The writer therefore reopens sled once it has
//! applied `SledOptions::reopen_after_ops` operations: it flushes and closes
//! the tree and opens it again, which writes a new snapshot. What a crash
//! recovery reads is then bounded by that many operations, however long the
//! daemon ran.
//!
//! A reopen holds writes and reads up while sled closes and opens, which
//! grows with what the tree holds (tens of milliseconds for a small store,
//! about half a second with a million revisions of history retained). So the
//! next reopen waits at least a hundred times as long as the last one took:
//! reopens never hold the store up for more than 1% of the time, and under a
//! sustained flood of writes a crash recovery reads more than
//! `reopen_after_ops` operations.
//!
//! The writer reopens only when no checkpoint copies the tree, no compaction
//! sweep is under way, and no read walks it (a scan, a past revision, a
//! watch's history: such a read makes the reopen wait for a later turn).
//! Readers that still hold the old tree finish on it (nothing is written
//! meanwhile, so they see the latest state), and sled opens again once they
//! are done. Point reads on the runtime's workers go to a blocking thread
//! while a reopen holds sled. sled must come back at the writer's log record
//! and revision, or the store stops. The log is the source of durability
//! throughout: a crash in the middle of a reopen is a crash like any other.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::layout::meta;
use super::writer::Writer;
use super::{OpenError, Sled, SledOptions, open_sled, read_u64};
use crate::ssot::store::StoreError;

/// Operations between reopens by default: sled then reads at most that many
/// operations' messages when it recovers from a crash (about 40 ms here).
pub(super) const DEFAULT_OPS: u64 = 100_000;

/// The time between two reopens by default, in lengths of the last one's pause.
pub(super) const DEFAULT_SPACING: u32 = 100;

/// How long a reopen that found a walk under way waits before trying again.
const POSTPONED: Duration = Duration::from_millis(50);

/// How long a reopen waits for readers that still hold the old tree.
const READERS_DEADLINE: Duration = Duration::from_secs(60);

/// The writer's count of operations since sled was last opened.
pub(super) struct Reopen {
    path: PathBuf,
    options: SledOptions,
    ops: u64,
    /// When the last reopen ended and how long it held the store up.
    last: Option<(Instant, Duration)>,
    /// A reopen that found a walk under way tries again after this.
    not_before: Option<Instant>,
    /// When a reopen held off for long was last said in the log.
    warned: Option<Instant>,
}

impl Reopen {
    pub(super) fn new(path: PathBuf, options: SledOptions) -> Self {
        Self { path, options, ops: 0, last: None, not_before: None, warned: None }
    }

    /// A due reopen waited for `what`: said in the log (once a minute at most)
    /// when that has gone on for four times the operations it was due after.
    fn held_off(&mut self, what: &str) {
        let long = self.ops >= self.options.reopen_after_ops.saturating_mul(4);
        if long && self.warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            warn!(
                ops = self.ops,
                held_by = what,
                "sled has not been reopened for long: a start after a crash will read more of its log"
            );
            self.warned = Some(Instant::now());
        }
    }

    /// Counts `ops` more operations applied to sled.
    pub(super) fn applied(&mut self, ops: usize) {
        self.ops = self.ops.saturating_add(ops as u64);
    }

    /// Enough has been applied, and the last pause is `reopen_spacing` times
    /// its own length ago: however fast writes come, reopens hold the store
    /// up for less than 1% of the time (by default).
    fn due(&self) -> bool {
        self.options.reopen_after_ops > 0
            && self.ops >= self.options.reopen_after_ops
            && self.last.is_none_or(|(ended, took)| ended.elapsed() >= took * self.options.reopen_spacing)
            && self.not_before.is_none_or(|at| Instant::now() >= at)
    }
}

impl Writer {
    /// Reopens sled when enough has been applied since it was opened and
    /// nothing walks the tree. Returns false when the store can no longer be
    /// used (sled did not open again; the writer stops).
    pub(super) fn reopen_if_due(&mut self) -> bool {
        if !self.reopen.due() {
            return true;
        }
        // Not while a sweep removes old history either: the tree is about to shrink, and
        // the pause with it; writes during a compaction are not held up.
        let held_by = if self.sweep.is_some() {
            Some("a compaction sweep")
        } else if self.checkpoints.busy() {
            Some("a checkpoint")
        } else if self.shared.walks.load(Ordering::Acquire) > 0 {
            Some("reads that walk the tree")
        } else {
            None
        };
        if let Some(held_by) = held_by {
            self.reopen.held_off(held_by);
            return true;
        }
        let _span = tracing::info_span!("sled_reopen", ops = self.reopen.ops).entered();
        match self.reopen() {
            Ok(None) => {
                self.reopen.not_before = Some(Instant::now() + POSTPONED);
                self.reopen.held_off("reads that walk the tree, or a failed flush");
                true
            }
            Ok(Some(steps)) => {
                info!(
                    pause = ?steps.pause(),
                    flush = ?steps.flush,
                    close = ?steps.close,
                    open = ?steps.open,
                    "sled reopened: a crash recovery reads its log from here"
                );
                self.reopen.ops = 0;
                self.shared.reopens.fetch_add(1, Ordering::Relaxed);
                crate::metrics::get().store_reopen_seconds.observe(steps.pause().as_secs_f64());
                self.reopen.last = Some((Instant::now(), steps.pause()));
                true
            }
            Err(error) => {
                error!(%error, "reopening sled failed; the store stops (restart the daemon)");
                false
            }
        }
    }

    /// Reopens sled; `None` when a walk began meanwhile (tried again later).
    fn reopen(&mut self) -> Result<Option<Steps>, StoreError> {
        // What sled holds unwritten goes out before anyone is held up.
        let started = Instant::now();
        if let Err(error) = self.tree().flush() {
            // sled is still open and the log has everything: try again later.
            warn!(%error, "flushing sled before a reopen failed; the reopen is put off");
            return Ok(None);
        }
        let flushed = Instant::now();
        // New readers wait here until sled is open again.
        let mut slot = self.shared.sled.write().expect("sled lock poisoned");
        let paused = Instant::now();
        if self.shared.walks.load(Ordering::Acquire) > 0 {
            return Ok(None);
        }
        let Some(Sled { db, tree }) = slot.take() else {
            return Err(StoreError::Backend("sled is not open".into()));
        };
        if let Err(error) = db.flush() {
            *slot = Some(Sled { db, tree });
            warn!(%error, "flushing sled before a reopen failed; the reopen is put off");
            return Ok(None);
        }
        let closing = Instant::now();
        // The writer's own handle goes too: sled closes once every handle is dropped.
        self.tree = None;
        drop(tree);
        drop(db);
        fail::fail_point!("sled-reopen-closed", |_| super::crash());
        let (db, opening) = open_when_released(&self.reopen.path, &self.reopen.options)?;
        let tree = db.open_tree("ssot")?;
        // sled must come back with every group the writer has applied.
        let (seq, revision) = (read_u64(&tree, meta::LOG_SEQ)?, read_u64(&tree, meta::REVISION)?);
        let expected = self.wal.next_seq() - 1;
        if seq != expected || revision != self.revision {
            return Err(StoreError::Backend(format!(
                "sled reopened at log record {seq} and revision {revision}, behind the writer's {expected} and {}",
                self.revision
            )));
        }
        self.tree = Some(tree.clone());
        *slot = Some(Sled { db, tree });
        let opened = Instant::now();
        Ok(Some(Steps {
            flush: flushed - started + (closing - paused),
            locked_flush: closing - paused,
            close: opening - closing,
            open: opened - opening,
        }))
    }
}

/// How long each step of a reopen took.
struct Steps {
    /// Writing out what sled had not (before and after readers are held up).
    flush: Duration,
    /// The part of `flush` after readers are held up.
    locked_flush: Duration,
    /// Until the old handles let go of sled's files.
    close: Duration,
    /// sled's open: reading its snapshot and the log after it, writing a new snapshot.
    open: Duration,
}

impl Steps {
    /// How long reads and writes were held up.
    fn pause(&self) -> Duration {
        self.locked_flush + self.close + self.open
    }
}

/// Opens sled at `path` once the handles of this process let go of it
/// (readers that took the tree before a reopen finish on it first).
/// Returns it and when the old handles had let go (sled's open began).
fn open_when_released(path: &Path, options: &SledOptions) -> Result<(sled::Db, Instant), StoreError> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        let attempt = Instant::now();
        match open_sled(path, options) {
            Ok(db) => return Ok((db, attempt)),
            Err(OpenError::Fatal(error) | OpenError::Rebuild(error)) if started.elapsed() < READERS_DEADLINE => {
                // Readers of the old tree still hold sled's lock; anything else (too many
                // open files, say) may pass too: sled is closed and the store waits for it.
                let locked = error.to_string().contains("could not acquire lock");
                if !warned && (!locked || started.elapsed() > Duration::from_secs(1)) {
                    warn!(%error, "sled does not open again yet; retrying");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(if locked { 1 } else { 100 }));
            }
            Err(OpenError::Fatal(error) | OpenError::Rebuild(error)) => return Err(error),
        }
    }
}

/// Removes the snapshots sled began but never finished (`snap.*.generating`).
/// sled writes a snapshot under that name, syncs it and renames it, and only
/// then removes the older ones; but it also reads a leftover one as if it
/// were complete, and then refuses to open ("Read corrupted data"). Without
/// it, sled recovers from the previous snapshot and its log.
pub(super) fn remove_unfinished_snapshots(path: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::Backend(format!("cannot read {}: {error}", path.display()))),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", path.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            warn!(file = %entry.path().display(), "removing a snapshot sled did not finish writing");
            std::fs::remove_file(entry.path())
                .map_err(|e| StoreError::Backend(format!("cannot remove {}: {e}", entry.path().display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures::StreamExt;

    use super::super::recovery_tests::reopen;
    use super::super::{SledOptions, SledStore};
    use super::Reopen;
    use crate::ssot::store::{EventKind, Op, RangeRequest, Store, Txn, TxnResponse};

    /// The log position of sled's newest snapshot (`snap.<lsn in hex>`): what
    /// a recovery after a crash reads from.
    fn snapshot_lsn(store: &std::path::Path) -> u64 {
        std::fs::read_dir(store)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok())
            .max()
            .unwrap_or(0)
    }

    /// A reopen is due after `reopen_after_ops` operations, and not before a
    /// hundred times the last one's pause has passed.
    #[test]
    fn reopens_wait_for_enough_operations_and_space_out_their_pauses() {
        let options = SledOptions { reopen_after_ops: 10, ..SledOptions::default() };
        let mut reopen = Reopen::new("unused".into(), options);
        reopen.applied(9);
        assert!(!reopen.due());
        reopen.applied(1);
        assert!(reopen.due(), "the first one comes after the operations alone");
        reopen.last = Some((Instant::now(), Duration::from_millis(1)));
        assert!(!reopen.due(), "a 1 ms pause that just ended: the next waits 100 ms");
        std::thread::sleep(Duration::from_millis(110));
        assert!(reopen.due());
        reopen.not_before = Some(Instant::now() + Duration::from_secs(60));
        assert!(!reopen.due(), "postponed after it found a walk under way");
        reopen.not_before = None;
        assert!(!Reopen::new("unused".into(), reopening(0)).due(), "0: never");
        reopen.options.reopen_spacing = 1;
        reopen.last = Some((Instant::now(), Duration::from_secs(1)));
        assert!(!reopen.due(), "spacing 1: one pause's length");
    }

    fn reopening(ops: u64) -> SledOptions {
        SledOptions { reopen_after_ops: ops, reopen_spacing: 1, ..SledOptions::default() }
    }

    /// Writers, point reads, scans and a watch all go on while the writer
    /// reopens sled many times: nothing acknowledged is missing, a read never
    /// goes back, the watch sees every revision once and in order, and sled's
    /// snapshot (where a crash recovery starts) moves forward.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_writes_and_watches_go_on_across_reopens_and_the_recovery_point_moves() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), reopening(300)).unwrap());
        let first_snapshot = snapshot_lsn(&dir.path().join("store"));
        let mut watch = store.watch(b"k/".to_vec(), 1).unwrap();
        let writers = (0..4).map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0..250 {
                    let key = format!("k/{w}/{}", n % 20);
                    let response = store.txn(Txn::new().then(Op::put(key.clone(), format!("{n}")))).await.unwrap();
                    let TxnResponse::Committed { revision } = response else { panic!("{response:?}") };
                    acknowledged.push((key, n, revision));
                }
                acknowledged
            })
        });
        let writers: Vec<_> = writers.collect();
        let reader = {
            let store = store.clone();
            tokio::spawn(async move {
                let (mut last, mut last_value, mut samples, mut scans) = (0, -1i64, Vec::new(), Vec::new());
                while store.status().revision < 1000 {
                    // Writer 0 puts 0, 20, 40, … under k/0/0: what a read sees only grows.
                    let point = store.range(RangeRequest::key("k/0/0")).await.unwrap();
                    if let Some(kv) = point.kvs.first() {
                        let value: i64 = String::from_utf8(kv.value.clone()).unwrap().parse().unwrap();
                        assert!(value >= last_value && kv.mod_revision <= point.revision, "reads never go back");
                        last_value = value;
                        samples.push((point.revision, kv.mod_revision));
                    }
                    let scan = store.range(RangeRequest::prefix("k/1/")).await.unwrap();
                    assert!(point.revision >= last && scan.revision >= point.revision, "reads never go back");
                    let listed =
                        scan.kvs.iter().map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision));
                    scans.push((scan.revision, listed.collect::<Vec<_>>()));
                    last = scan.revision;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                (samples, scans)
            })
        };
        let mut latest = BTreeMap::new();
        let mut all_writes = Vec::new();
        for writer in writers {
            let acknowledged = writer.await.unwrap();
            all_writes.extend(acknowledged.iter().cloned());
            for (key, n, revision) in acknowledged {
                let entry = latest.entry(key).or_insert((0, 0));
                if revision > entry.1 {
                    *entry = (n, revision);
                }
            }
        }
        // A read's header claims the state at that revision: the value it read is the
        // last write at or below it (a header ahead of the read would make a watch
        // from the next revision miss a change).
        let (samples, scans) = reader.await.unwrap();
        assert!(!samples.is_empty());
        // A scan misses no write at or below its header.
        for (header, listed) in scans {
            for (key, mod_revision) in listed {
                let at_header =
                    all_writes.iter().filter(|(k, _, r)| *k == key && *r <= header).map(|(_, _, r)| *r).max();
                assert!(at_header <= Some(mod_revision), "a scan at header {header} saw {key} at {mod_revision}");
            }
        }
        let mut writes_of_k00: Vec<u64> =
            all_writes.iter().filter(|(key, _, _)| key == "k/0/0").map(|(_, _, revision)| *revision).collect();
        writes_of_k00.sort_unstable();
        for (header, mod_revision) in samples {
            let at_header = writes_of_k00.iter().copied().filter(|r| *r <= header).max();
            assert_eq!(at_header, Some(mod_revision), "a read at header {header} saw revision {mod_revision}");
        }
        let mut seen = Vec::new();
        while seen.len() < 1000 {
            let batch = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
                .await
                .expect("the watch delivers every event")
                .unwrap()
                .unwrap();
            for event in batch.events {
                assert_eq!(event.kind, EventKind::Put);
                seen.push(event.kv.mod_revision);
            }
        }
        assert_eq!(seen, (1..=1000).collect::<Vec<_>>(), "every revision once, in order");
        // A watch from the start now replays the history sled kept across its reopens.
        let mut replay = store.watch(b"k/".to_vec(), 1).unwrap();
        let mut replayed = Vec::new();
        while replayed.len() < 1000 {
            let batch = replay.next().await.unwrap().unwrap();
            replayed.extend(batch.events.into_iter().map(|e| (e.kv.key, e.kv.value, e.kv.mod_revision)));
        }
        let mut expected: Vec<_> =
            all_writes.iter().map(|(k, n, r)| (k.clone().into_bytes(), n.to_string().into_bytes(), *r)).collect();
        expected.sort_by_key(|(_, _, revision)| *revision);
        assert_eq!(replayed, expected, "history holds every acknowledged write at its revision");
        for (key, (n, revision)) in &latest {
            let read = store.range(RangeRequest::key(key.as_str())).await.unwrap();
            assert_eq!((read.kvs[0].value.clone(), read.kvs[0].mod_revision), (n.to_string().into_bytes(), *revision));
        }
        let reopens = store.shared.reopens.load(std::sync::atomic::Ordering::Relaxed);
        assert!(reopens >= 3, "sled was reopened {reopens} times");
        assert!(
            snapshot_lsn(&dir.path().join("store")) > first_snapshot,
            "sled wrote a new snapshot while the store ran: a crash recovery reads from there"
        );
        store.close().await;
        drop(store);
        let store = reopen(dir.path(), reopening(300)).await;
        assert_eq!(store.status().revision, 1000);
        let all = store.range(RangeRequest::prefix("k/")).await.unwrap();
        assert_eq!(all.kvs.len(), latest.len());
    }

    /// With one key written over and over, every revision is a write of it: a
    /// read's header must be exactly the revision of the value it read. A
    /// header taken after the read could claim a write the read missed (and a
    /// watch from the next revision would never deliver it). A race: with that
    /// defect this fails in about half the runs, never without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_header_never_claims_a_write_the_read_missed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap());
        store.txn(Txn::new().then(Op::put("hot", "0"))).await.unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let request = RangeRequest::key("hot");
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let read = super::super::read::point_now(&store.shared, &request).unwrap().unwrap();
                    assert_eq!(read.revision, read.kvs[0].mod_revision, "the header is the state the read saw");
                    reads += 1;
                }
                reads
            })
        };
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0..1500 {
                        store.txn(Txn::new().then(Op::put("hot", format!("{w}-{n}")))).await.unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 1000);
        store.close().await;
    }

    /// A read that walks the tree puts reopens off (rather than have every
    /// read and write wait behind it); they come once it ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_walk_under_way_puts_reopens_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), reopening(50)).unwrap();
        let reopens = || store.shared.reopens.load(std::sync::atomic::Ordering::Relaxed);
        let walk = super::super::read::Walk::start(&store.shared);
        for n in 0..200 {
            store.txn(Txn::new().then(Op::put(format!("k/{}", n % 30), "v"))).await.unwrap();
        }
        assert_eq!(reopens(), 0, "no reopen while the walk is under way");
        drop(walk);
        for n in 0..200 {
            store.txn(Txn::new().then(Op::put(format!("k/{}", n % 30), "w"))).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(reopens() > 0, "reopened once the walk ended");
        store.close().await;
    }

    /// Without reopens sled keeps the snapshot of its first open: the test
    /// above would fail if the writer did not reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_reopens_the_recovery_point_stays_where_sled_was_opened() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), reopening(0)).unwrap();
        let first_snapshot = snapshot_lsn(&dir.path().join("store"));
        for n in 0..600 {
            store.txn(Txn::new().then(Op::put(format!("k/{}", n % 30), "v"))).await.unwrap();
        }
        store.shared.tree().unwrap().flush().unwrap();
        assert_eq!(snapshot_lsn(&dir.path().join("store")), first_snapshot);
        store.close().await;
    }

    /// A snapshot sled began but did not finish (a crash while it wrote one)
    /// made sled refuse to open; it is removed and sled recovers from the
    /// previous snapshot and its log, without a rebuild.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unfinished_sled_snapshot_does_not_stop_the_store_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        for n in 0..100 {
            store.txn(Txn::new().then(Op::put(format!("k/{n}"), "v"))).await.unwrap();
        }
        store.close().await;
        drop(store);
        let unfinished = dir.path().join("store").join("snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&unfinished, b"").unwrap();
        let store = reopen(dir.path(), SledOptions::default()).await;
        assert_eq!(store.status().revision, 100);
        assert!(!unfinished.exists());
        let rebuilt = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .any(|name| name.starts_with("store.broken-"));
        assert!(!rebuilt, "sled opened as it was; nothing was rebuilt");
        store.close().await;
    }
}
