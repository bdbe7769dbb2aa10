//! The embedded `Store` backend on sled.
//!
//! Layout: one sled tree, so that a whole group of transactions is applied with
//! one atomic `apply_batch`. Key spaces are told apart by their first byte:
//!
//! | prefix | key                     | value                                   |
//! |--------|-------------------------|-----------------------------------------|
//! | `m`    | meta name               | schema version, revision, compaction    |
//! | `k`    | user key                | current `KvRecord`                      |
//! | `h`    | user key, 0, rev (BE)   | `Option<KvRecord>` after that revision  |
//! | `r`    | rev (BE)                | keys changed at that revision, in order |
//! | `l`    | lease id (BE)           | `LeaseRecord` (TTL and wall-clock deadline) |
//!
//! All writes go through one writer thread. It takes every request waiting in
//! its queue (group commit), evaluates them in order against an overlay of the
//! group's own changes, applies the group as one batch, flushes, and only then
//! answers the callers and publishes the events to watchers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};

use super::clock::now_ms;
use super::store::{
    Event, EventKind, KeyValue, LeaseId, LeaseInfo, Op, RangeRequest, RangeResponse, Revision, Store, StoreError,
    StoreStatus, Txn, TxnResponse, WatchBatch, WatchStream,
};

/// Bumped whenever the on-disk layout changes; checked on open.
const SCHEMA_VERSION: u32 = 1;
/// Most requests folded into one group commit.
const MAX_GROUP: usize = 1024;
/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// Largest accepted value, in bytes.
pub const MAX_VALUE_LEN: usize = 4 << 20;
/// Longest accepted lease TTL.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(86_400);
/// Most events a watcher reads from history before yielding a message.
const WATCH_HISTORY_CHUNK: usize = 512;

mod layout {
    use super::Revision;

    pub(super) const META: u8 = b'm';
    pub(super) const CUR: u8 = b'k';
    pub(super) const HIST: u8 = b'h';
    pub(super) const REVS: u8 = b'r';
    pub(super) const LEASE: u8 = b'l';
    pub(super) const ACTOR: u8 = b'a';

    pub(super) fn meta(name: &str) -> Vec<u8> {
        prefixed(META, name.as_bytes())
    }

    pub(super) fn cur(key: &[u8]) -> Vec<u8> {
        prefixed(CUR, key)
    }

    /// `h key 0`: every history entry of `key` starts with this.
    pub(super) fn hist_prefix(key: &[u8]) -> Vec<u8> {
        let mut out = prefixed(HIST, key);
        out.push(0);
        out
    }

    pub(super) fn hist(key: &[u8], revision: Revision) -> Vec<u8> {
        let mut out = hist_prefix(key);
        out.extend_from_slice(&revision.to_be_bytes());
        out
    }

    /// Splits a history key into the user key and the revision.
    pub(super) fn parse_hist(raw: &[u8]) -> Option<(&[u8], Revision)> {
        if raw.len() < 10 || raw[0] != HIST || raw[raw.len() - 9] != 0 {
            return None;
        }
        let (key, rev) = raw[1..].split_at(raw.len() - 10);
        let rev = Revision::from_be_bytes(rev[1..].try_into().ok()?);
        Some((key, rev))
    }

    pub(super) fn rev(revision: Revision) -> Vec<u8> {
        prefixed(REVS, &revision.to_be_bytes())
    }

    pub(super) fn parse_rev(raw: &[u8]) -> Option<Revision> {
        Some(Revision::from_be_bytes(raw.get(1..9)?.try_into().ok()?))
    }

    /// `a rev`: who made the revision.
    pub(super) fn actor(revision: Revision) -> Vec<u8> {
        prefixed(ACTOR, &revision.to_be_bytes())
    }

    pub(super) fn lease(id: u64) -> Vec<u8> {
        prefixed(LEASE, &id.to_be_bytes())
    }

    fn prefixed(tag: u8, rest: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(rest.len() + 1);
        out.push(tag);
        out.extend_from_slice(rest);
        out
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KvRecord {
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    create_revision: Revision,
    mod_revision: Revision,
    version: u64,
    lease: LeaseId,
}

impl KvRecord {
    fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            modified_by: String::new(),
        }
    }
}

/// A stored record without its value: what the writer needs to know about a
/// key's current state.
#[derive(Debug, Clone, Copy)]
struct KvMeta {
    create_revision: Revision,
    mod_revision: Revision,
    version: u64,
    lease: LeaseId,
}

/// `KvRecord` decoded without copying the value.
#[derive(Deserialize)]
struct KvRecordRef<'a> {
    #[serde(borrow)]
    _value: &'a serde_bytes::Bytes,
    create_revision: Revision,
    mod_revision: Revision,
    version: u64,
    lease: LeaseId,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LeaseRecord {
    ttl_ms: u64,
    deadline_ms: i64,
}

impl LeaseRecord {
    fn info(&self, id: LeaseId) -> LeaseInfo {
        LeaseInfo { id, ttl: Duration::from_millis(self.ttl_ms), deadline_ms: self.deadline_ms }
    }
}

/// The events of one committed revision, as published to live watchers.
#[derive(Debug)]
struct RevisionEvents {
    revision: Revision,
    events: Vec<Event>,
}

fn delete_event(key: Vec<u8>, revision: Revision) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key,
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: 0,
            modified_by: String::new(),
        },
    }
}

fn history_event(key: Vec<u8>, revision: Revision, record: Option<KvRecord>) -> Event {
    match record {
        Some(record) => Event { kind: EventKind::Put, kv: record.into_kv(key) },
        None => delete_event(key, revision),
    }
}

/// The encoding of `Some(record)` given the encoding of `record`: postcard
/// writes an `Option` as a 0/1 tag followed by the value.
fn as_some(encoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded.len() + 1);
    out.push(1);
    out.extend_from_slice(encoded);
    out
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).expect("postcard encodes plain structs")
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    Ok(postcard::from_bytes(bytes)?)
}

/// Tuning for the sled backend.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// Capacity of the live-event channel; a watcher further behind reads history instead.
    pub event_buffer: usize,
    /// sled page cache, in bytes.
    pub cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self { event_buffer: 4096, cache_capacity: 256 << 20 }
    }
}

/// State the writer thread and the readers share.
struct Shared {
    tree: sled::Tree,
    committed: AtomicU64,
    compacted: AtomicU64,
    events: broadcast::Sender<Arc<RevisionEvents>>,
}

type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

enum Command {
    Txn(Txn, oneshot::Sender<Result<TxnResponse, StoreError>>),
    LeaseGrant(Duration, oneshot::Sender<Result<LeaseInfo, StoreError>>),
    LeaseKeepAlive(LeaseId, oneshot::Sender<Result<LeaseInfo, StoreError>>),
    LeaseRevoke(LeaseId, oneshot::Sender<Result<Revision, StoreError>>),
    Compact(Revision, oneshot::Sender<Result<Revision, StoreError>>),
}

/// The sled-backed store. Cheap to share behind an `Arc`; call [`SledStore::close`]
/// to drain the writer and flush before the process exits.
pub struct SledStore {
    shared: Arc<Shared>,
    db: sled::Db,
    writer: Mutex<Option<mpsc::Sender<Command>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    leases: Arc<Mutex<HashMap<LeaseId, LeaseRecord>>>,
    watchers: TaskTracker,
    cancel: CancellationToken,
    path: PathBuf,
    _lock: File,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Must run inside a tokio runtime.
    pub fn open(dir: &Path, options: SledOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create data directory {}: {e}", dir.display())))?;
        let lock = lock_data_dir(dir)?;
        // The writer flushes every group itself; sled's own periodic flush would only
        // compete with it for the log.
        let db = sled::Config::new()
            .path(dir.join("store"))
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("ssot")?;

        let schema = match tree.get(layout::meta("schema"))? {
            Some(raw) => decode::<u32>(&raw)?,
            None => {
                tree.insert(layout::meta("schema"), encode(&SCHEMA_VERSION))?;
                tree.flush()?;
                SCHEMA_VERSION
            }
        };
        if schema != SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path: dir.display().to_string(),
                found: schema,
                expected: SCHEMA_VERSION,
            });
        }
        let read_u64 = |name: &str| -> Result<u64, StoreError> {
            tree.get(layout::meta(name))?.map_or(Ok(0), |raw| decode::<u64>(&raw))
        };
        let revision = read_u64("revision")?;
        let compacted = read_u64("compacted")?;
        let next_lease = read_u64("next_lease")?.max(1);

        // Leases and the keys they own live in memory for the writer; rebuild them.
        let mut leases = HashMap::new();
        for item in tree.scan_prefix([layout::LEASE]) {
            let (raw_key, raw) = item?;
            let id = u64::from_be_bytes(
                raw_key
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| StoreError::Backend("corrupt lease key".into()))?,
            );
            leases.insert(id, decode::<LeaseRecord>(&raw)?);
        }
        let mut lease_keys: HashMap<LeaseId, BTreeSet<Vec<u8>>> = HashMap::new();
        for item in tree.scan_prefix([layout::CUR]) {
            let (raw_key, raw) = item?;
            let record: KvRecord = decode(&raw)?;
            if record.lease != 0 {
                lease_keys.entry(record.lease).or_default().insert(raw_key[1..].to_vec());
            }
        }

        let (events, _) = broadcast::channel(options.event_buffer.max(16));
        let shared = Arc::new(Shared {
            tree,
            committed: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            events,
        });
        let leases = Arc::new(Mutex::new(leases));
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        let writer =
            Writer { shared: shared.clone(), revision, compacted, next_lease, leases: leases.clone(), lease_keys };
        let handle = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("ssot-writer".into())
            .spawn(move || writer.run(rx, handle))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        info!(path = %dir.display(), revision, compacted, "store opened");
        Ok(Self {
            shared,
            db,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            leases,
            watchers: TaskTracker::new(),
            cancel: CancellationToken::new(),
            path: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ends every watch stream (on shutdown, so connections can drain).
    pub fn end_watches(&self) {
        self.cancel.cancel();
    }

    /// Stops accepting writes, lets the writer finish every queued request,
    /// flushes, and ends every watch stream.
    pub async fn close(&self) {
        let sender = self.writer.lock().expect("writer mutex poisoned").take();
        drop(sender);
        let thread = self.writer_thread.lock().expect("writer mutex poisoned").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.cancel.cancel();
        self.watchers.close();
        self.watchers.wait().await;
        if let Err(error) = self.db.flush_async().await {
            error!(%error, "final flush failed");
        }
    }

    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let sender = self.writer.lock().expect("writer mutex poisoned").clone().ok_or(StoreError::Closed)?;
        let (tx, rx) = oneshot::channel();
        sender.send(make(tx)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn range_sync(&self, request: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let mut response = self.range_records(request)?;
        for kv in &mut response.kvs {
            if let Some(raw) = self.shared.tree.get(layout::actor(kv.mod_revision))? {
                kv.modified_by = String::from_utf8_lossy(&raw).into_owned();
            }
        }
        Ok(response)
    }

    fn range_records(&self, request: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let current = self.shared.committed.load(Ordering::Acquire);
        if request.revision == 0 || request.revision >= current {
            if request.revision > current {
                return Err(StoreError::FutureRevision { requested: request.revision, current });
            }
            return self.range_current(request, current);
        }
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if request.revision < compacted {
            return Err(StoreError::Compacted { requested: request.revision, compact_revision: compacted });
        }
        let response = self.range_history(request)?;
        // A compaction that ran during the scan may have removed what we read past.
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if request.revision < compacted {
            return Err(StoreError::Compacted { requested: request.revision, compact_revision: compacted });
        }
        Ok(response)
    }

    fn range_current(&self, request: &RangeRequest, revision: Revision) -> Result<RangeResponse, StoreError> {
        let mut response = RangeResponse { revision, ..RangeResponse::default() };
        if request.end.is_empty() {
            if let Some(raw) = self.shared.tree.get(layout::cur(&request.start))? {
                response.kvs.push(decode::<KvRecord>(&raw)?.into_kv(request.start.clone()));
            }
            return Ok(response);
        }
        for item in self.shared.tree.range(layout::cur(&request.start)..layout::cur(&request.end)) {
            let (raw_key, raw) = item?;
            if request.limit > 0 && response.kvs.len() == request.limit {
                response.more = true;
                break;
            }
            response.kvs.push(decode::<KvRecord>(&raw)?.into_kv(raw_key[1..].to_vec()));
        }
        Ok(response)
    }

    fn range_history(&self, request: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let at = request.revision;
        let mut response = RangeResponse { revision: at, ..RangeResponse::default() };
        let (start, end) = if request.end.is_empty() {
            let start = layout::hist_prefix(&request.start);
            let end = super::store::prefix_end(&start);
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
        for item in self.shared.tree.range(start..end) {
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
    fn read_history(
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
        for item in shared.tree.range(layout::rev(from)..=layout::rev(to)) {
            let (raw_key, raw) = item?;
            let revision =
                layout::parse_rev(&raw_key).ok_or_else(|| StoreError::Backend("corrupt revision key".into()))?;
            let keys: Vec<ByteBuf> = decode(&raw)?;
            for key in keys.into_iter().map(ByteBuf::into_vec).filter(|k| k.starts_with(prefix)) {
                let record: Option<KvRecord> = match shared.tree.get(layout::hist(&key, revision))? {
                    Some(raw) => decode(&raw)?,
                    None => {
                        return Err(StoreError::Backend(format!("history of revision {revision} is missing")));
                    }
                };
                events.push(history_event(key, revision, record));
            }
            covered = revision;
            if events.len() >= max_events {
                break;
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
}

impl Store for SledStore {
    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, StoreError>> {
        let result = self.range_sync(&request);
        async move { result }.boxed()
    }

    fn txn(&self, mut txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        if txn.actor.is_none() {
            txn.actor = super::actor::current();
        }
        self.send(|tx| Command::Txn(txn, tx)).boxed()
    }

    fn watch(&self, prefix: Vec<u8>, start_revision: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before looking at the revision, so nothing falls between history and live.
        let mut live = self.shared.events.subscribe();
        let committed = self.shared.committed.load(Ordering::Acquire);
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if start_revision != 0 && start_revision < compacted {
            return Err(StoreError::Compacted { requested: start_revision, compact_revision: compacted });
        }
        if start_revision > committed + 1 {
            return Err(StoreError::FutureRevision { requested: start_revision, current: committed });
        }
        let mut next = if start_revision == 0 { committed + 1 } else { start_revision };
        let (tx, rx) = mpsc::channel::<Result<WatchBatch, StoreError>>(64);
        let shared = self.shared.clone();
        let cancel = self.cancel.clone();
        let span = tracing::debug_span!("watch", prefix = %String::from_utf8_lossy(&prefix), start = next);
        self.watchers.spawn(
            async move {
                loop {
                    let committed = shared.committed.load(Ordering::Acquire);
                    if next <= committed {
                        // Catch up from history (also after falling behind the live channel).
                        let chunk = {
                            let shared = shared.clone();
                            let prefix = prefix.clone();
                            tokio::task::spawn_blocking(move || {
                                SledStore::read_history(&shared, &prefix, next, committed, WATCH_HISTORY_CHUNK)
                            })
                            .await
                            .unwrap_or_else(|e| Err(StoreError::Backend(format!("history reader failed: {e}"))))
                        };
                        match chunk {
                            Ok((events, covered)) => {
                                next = covered + 1;
                                if !events.is_empty()
                                    && tx.send(Ok(WatchBatch { revision: covered, events })).await.is_err()
                                {
                                    return;
                                }
                            }
                            Err(error) => {
                                let _ = tx.send(Err(error)).await;
                                return;
                            }
                        }
                        continue;
                    }
                    let received = tokio::select! {
                        received = live.recv() => received,
                        () = tx.closed() => return,
                        () = cancel.cancelled() => return,
                    };
                    let first = match received {
                        Ok(first) => first,
                        Err(broadcast::error::RecvError::Lagged(skipped)) => {
                            debug!(skipped, "watcher fell behind; reading history");
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    // Fold whatever else is already waiting into the same message.
                    let mut batch = WatchBatch { revision: next - 1, events: Vec::new() };
                    // Returns false at a gap (the history read fills it on the next turn).
                    let take =
                        |revision_events: &RevisionEvents, batch: &mut WatchBatch, next: &mut Revision| -> bool {
                            if revision_events.revision < *next {
                                return true;
                            }
                            if revision_events.revision > *next {
                                return false;
                            }
                            batch.events.extend(
                                revision_events.events.iter().filter(|e| e.kv.key.starts_with(&prefix)).cloned(),
                            );
                            batch.revision = revision_events.revision;
                            *next += 1;
                            true
                        };
                    let mut contiguous = take(&first, &mut batch, &mut next);
                    while contiguous {
                        match live.try_recv() {
                            Ok(more) => contiguous = take(&more, &mut batch, &mut next),
                            Err(_) => break,
                        }
                    }
                    if !batch.events.is_empty() && tx.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseInfo, StoreError>> {
        self.send(move |tx| Command::LeaseGrant(ttl, tx)).boxed()
    }

    fn lease_keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseInfo, StoreError>> {
        self.send(move |tx| Command::LeaseKeepAlive(id, tx)).boxed()
    }

    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<Revision, StoreError>> {
        self.send(move |tx| Command::LeaseRevoke(id, tx)).boxed()
    }

    fn lease_get(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseInfo, StoreError>> {
        let found = self.leases.lock().expect("lease mutex poisoned").get(&id).map(|r| r.info(id));
        async move { found.ok_or(StoreError::LeaseNotFound(id)) }.boxed()
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<Revision, StoreError>> {
        self.send(move |tx| Command::Compact(revision, tx)).boxed()
    }

    fn status(&self) -> StoreStatus {
        StoreStatus {
            revision: self.shared.committed.load(Ordering::Acquire),
            compact_revision: self.shared.compacted.load(Ordering::Acquire),
            watchers: self.shared.events.receiver_count(),
        }
    }
}

/// Takes an exclusive lock on `dir/maestrod.lock` for the life of the store.
fn lock_data_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("maestrod.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = writeln!(file, "{}", std::process::id());
            let _ = file.sync_all();
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(StoreError::Locked {
                path: dir.display().to_string(),
                pid: if pid.is_empty() { String::new() } else { format!(" (pid {pid})") },
            })
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Backend(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// A key and its new value and lease (`None`: delete).
type Change = (Vec<u8>, Option<(Vec<u8>, LeaseId)>);

/// One group commit in the making.
struct Group {
    batch: sled::Batch,
    /// The current state of every key the group has read or changed (None:
    /// absent). The writer is the only mutator, so a cached read stays true.
    overlay: HashMap<Vec<u8>, Option<KvMeta>>,
    published: Vec<Arc<RevisionEvents>>,
    replies: Vec<Reply>,
    dirty: bool,
}

impl Group {
    fn new() -> Self {
        Self {
            batch: sled::Batch::default(),
            overlay: HashMap::new(),
            published: Vec::new(),
            replies: Vec::new(),
            dirty: false,
        }
    }

    fn reply<T: Send + 'static>(&mut self, tx: oneshot::Sender<Result<T, StoreError>>, value: T) {
        self.replies.push(Box::new(move |failure| {
            let _ = tx.send(match failure {
                None => Ok(value),
                Some(message) => Err(StoreError::Backend(message.to_string())),
            });
        }));
    }
}

/// The single writer. Its in-memory state runs ahead of disk only inside a
/// group; a failed commit stops the writer, so memory and disk never diverge
/// for an acknowledged request.
struct Writer {
    shared: Arc<Shared>,
    revision: Revision,
    compacted: Revision,
    next_lease: LeaseId,
    leases: Arc<Mutex<HashMap<LeaseId, LeaseRecord>>>,
    lease_keys: HashMap<LeaseId, BTreeSet<Vec<u8>>>,
}

enum Wake {
    Command(Option<Command>),
    LeaseDeadline,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>, runtime: tokio::runtime::Handle) {
        let span = tracing::info_span!("ssot_writer");
        let _entered = span.enter();
        loop {
            let deadline = self.next_deadline();
            let wake = runtime.block_on(async {
                match deadline {
                    Some(deadline_ms) => {
                        let wait = Duration::from_millis(u64::try_from(deadline_ms - now_ms()).unwrap_or(0));
                        tokio::select! {
                            command = rx.recv() => Wake::Command(command),
                            () = tokio::time::sleep(wait) => Wake::LeaseDeadline,
                        }
                    }
                    None => Wake::Command(rx.recv().await),
                }
            });
            let mut group = Group::new();
            let mut compaction = None;
            match wake {
                Wake::Command(None) => break,
                Wake::Command(Some(Command::Compact(revision, tx))) => compaction = Some((revision, tx)),
                Wake::Command(Some(command)) => self.apply(&mut group, command),
                Wake::LeaseDeadline => {}
            }
            if compaction.is_none() {
                while group.replies.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Command::Compact(revision, tx)) => {
                            compaction = Some((revision, tx));
                            break;
                        }
                        Ok(command) => self.apply(&mut group, command),
                        Err(_) => break,
                    }
                }
            }
            self.expire_leases(&mut group);
            if !self.commit(group) {
                return;
            }
            if let Some((revision, tx)) = compaction {
                let result = self.compact(revision);
                let failed = matches!(result, Err(StoreError::Backend(_)));
                let _ = tx.send(result);
                if failed {
                    return;
                }
            }
        }
        if let Err(error) = self.shared.tree.flush() {
            error!(%error, "flush on shutdown failed");
        }
        debug!("writer stopped");
    }

    fn next_deadline(&self) -> Option<i64> {
        self.leases.lock().expect("lease mutex poisoned").values().map(|l| l.deadline_ms).min()
    }

    fn apply(&mut self, group: &mut Group, command: Command) {
        match command {
            Command::Txn(txn, tx) => match self.apply_txn(group, txn) {
                Ok(response) => group.reply(tx, response),
                Err(error) => {
                    let _ = tx.send(Err(error));
                }
            },
            Command::LeaseGrant(ttl, tx) => {
                if ttl.is_zero() || ttl > MAX_LEASE_TTL {
                    let _ = tx.send(Err(StoreError::InvalidArgument(format!(
                        "lease ttl must be between 1s and {}s",
                        MAX_LEASE_TTL.as_secs()
                    ))));
                    return;
                }
                let id = self.next_lease;
                self.next_lease += 1;
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                let record = LeaseRecord { ttl_ms, deadline_ms: now_ms() + ttl_ms as i64 };
                group.batch.insert(layout::meta("next_lease"), encode(&self.next_lease));
                group.batch.insert(layout::lease(id), encode(&record));
                group.dirty = true;
                self.leases.lock().expect("lease mutex poisoned").insert(id, record);
                group.reply(tx, record.info(id));
            }
            Command::LeaseKeepAlive(id, tx) => {
                let mut leases = self.leases.lock().expect("lease mutex poisoned");
                let Some(record) = leases.get_mut(&id) else {
                    let _ = tx.send(Err(StoreError::LeaseNotFound(id)));
                    return;
                };
                record.deadline_ms = now_ms() + record.ttl_ms as i64;
                let record = *record;
                drop(leases);
                group.batch.insert(layout::lease(id), encode(&record));
                group.dirty = true;
                group.reply(tx, record.info(id));
            }
            Command::LeaseRevoke(id, tx) => match self.revoke(group, id) {
                Ok(revision) => group.reply(tx, revision),
                Err(error) => {
                    let _ = tx.send(Err(error));
                }
            },
            Command::Compact(..) => unreachable!("compaction is handled between groups"),
        }
    }

    fn current(&self, group: &mut Group, key: &[u8]) -> Result<Option<KvMeta>, StoreError> {
        if let Some(state) = group.overlay.get(key) {
            return Ok(*state);
        }
        let state = match self.shared.tree.get(layout::cur(key))? {
            Some(raw) => {
                let record: KvRecordRef<'_> = decode(&raw)?;
                Some(KvMeta {
                    create_revision: record.create_revision,
                    mod_revision: record.mod_revision,
                    version: record.version,
                    lease: record.lease,
                })
            }
            None => None,
        };
        group.overlay.insert(key.to_vec(), state);
        Ok(state)
    }

    fn keys_in_range(&self, group: &Group, start: &[u8], end: &[u8]) -> Result<BTreeSet<Vec<u8>>, StoreError> {
        let mut keys = BTreeSet::new();
        for item in self.shared.tree.range(layout::cur(start)..layout::cur(end)) {
            let (raw_key, _) = item?;
            keys.insert(raw_key[1..].to_vec());
        }
        for (key, state) in &group.overlay {
            if key.as_slice() >= start && key.as_slice() < end {
                if state.is_some() {
                    keys.insert(key.clone());
                } else {
                    keys.remove(key);
                }
            }
        }
        Ok(keys)
    }

    fn apply_txn(&mut self, group: &mut Group, txn: Txn) -> Result<TxnResponse, StoreError> {
        for op in &txn.ops {
            match op {
                Op::Put { key, value, lease } => {
                    check_key(key)?;
                    if value.len() > MAX_VALUE_LEN {
                        return Err(StoreError::InvalidArgument(format!(
                            "value of {} bytes exceeds the limit of {MAX_VALUE_LEN}",
                            value.len()
                        )));
                    }
                    if *lease != 0 && !self.leases.lock().expect("lease mutex poisoned").contains_key(lease) {
                        return Err(StoreError::LeaseNotFound(*lease));
                    }
                }
                Op::Delete { key } => check_key(key)?,
                Op::DeleteRange { start, end } => {
                    if start >= end {
                        return Err(StoreError::InvalidArgument("delete range is empty".into()));
                    }
                }
            }
        }
        for compare in &txn.compares {
            check_key(&compare.key)?;
        }
        for (index, compare) in txn.compares.iter().enumerate() {
            let current = self.current(group, &compare.key)?.map_or(0, |r| r.mod_revision);
            if current != compare.mod_revision {
                return Ok(TxnResponse::CompareFailed {
                    index,
                    key: compare.key.clone(),
                    current_mod_revision: current,
                });
            }
        }
        // Expand ranges first so a key touched twice is caught before anything changes.
        let mut plan: Vec<Change> = Vec::new();
        for op in txn.ops {
            match op {
                Op::Put { key, value, lease } => plan.push((key, Some((value, lease)))),
                Op::Delete { key } => plan.push((key, None)),
                Op::DeleteRange { start, end } => {
                    plan.extend(self.keys_in_range(group, &start, &end)?.into_iter().map(|k| (k, None)))
                }
            }
        }
        let mut seen = HashSet::new();
        for (key, _) in &plan {
            if !seen.insert(key.as_slice()) {
                return Err(StoreError::InvalidArgument(format!(
                    "key {} is changed twice in one transaction",
                    String::from_utf8_lossy(key)
                )));
            }
        }
        Ok(TxnResponse::Committed { revision: self.commit_changes(group, plan, txn.actor.as_deref())? })
    }

    /// Applies already-validated changes as one new revision (if any of them changes something).
    fn commit_changes(
        &mut self,
        group: &mut Group,
        plan: Vec<Change>,
        actor: Option<&str>,
    ) -> Result<Revision, StoreError> {
        let revision = self.revision + 1;
        let mut events = Vec::new();
        let mut keys = Vec::new();
        for (key, change) in plan {
            let previous = self.current(group, &key)?;
            match change {
                Some((value, lease)) => {
                    let record = KvRecord {
                        value,
                        create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: previous.as_ref().map_or(0, |p| p.version) + 1,
                        lease,
                    };
                    if let Some(previous) = &previous {
                        self.detach(previous.lease, &key);
                    }
                    if lease != 0 {
                        self.lease_keys.entry(lease).or_default().insert(key.clone());
                    }
                    let current = encode(&record);
                    group.batch.insert(layout::hist(&key, revision), as_some(&current));
                    group.batch.insert(layout::cur(&key), current);
                    let meta = KvMeta {
                        create_revision: record.create_revision,
                        mod_revision: revision,
                        version: record.version,
                        lease,
                    };
                    group.overlay.insert(key.clone(), Some(meta));
                    events.push(Event { kind: EventKind::Put, kv: record.into_kv(key.clone()) });
                    keys.push(key);
                }
                None => {
                    let Some(previous) = previous else { continue };
                    self.detach(previous.lease, &key);
                    group.batch.remove(layout::cur(&key));
                    group.batch.insert(layout::hist(&key, revision), encode(&None::<KvRecord>));
                    group.overlay.insert(key.clone(), None);
                    events.push(delete_event(key.clone(), revision));
                    keys.push(key);
                }
            }
        }
        if events.is_empty() {
            return Ok(self.revision);
        }
        let keys: Vec<ByteBuf> = keys.into_iter().map(ByteBuf::from).collect();
        group.batch.insert(layout::rev(revision), encode(&keys));
        group.batch.insert(layout::actor(revision), actor.unwrap_or(super::actor::DAEMON).as_bytes());
        group.dirty = true;
        self.revision = revision;
        group.published.push(Arc::new(RevisionEvents { revision, events }));
        Ok(revision)
    }

    fn detach(&mut self, lease: LeaseId, key: &[u8]) {
        if lease == 0 {
            return;
        }
        if let Some(keys) = self.lease_keys.get_mut(&lease) {
            keys.remove(key);
            if keys.is_empty() {
                self.lease_keys.remove(&lease);
            }
        }
    }

    fn revoke(&mut self, group: &mut Group, id: LeaseId) -> Result<Revision, StoreError> {
        if self.leases.lock().expect("lease mutex poisoned").remove(&id).is_none() {
            return Err(StoreError::LeaseNotFound(id));
        }
        group.batch.remove(layout::lease(id));
        group.dirty = true;
        let keys = self.lease_keys.remove(&id).unwrap_or_default();
        let plan = keys.into_iter().map(|k| (k, None)).collect();
        self.commit_changes(group, plan, None)
    }

    fn expire_leases(&mut self, group: &mut Group) {
        let now = now_ms();
        let due: Vec<LeaseId> = self
            .leases
            .lock()
            .expect("lease mutex poisoned")
            .iter()
            .filter(|(_, l)| l.deadline_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            match self.revoke(group, id) {
                Ok(revision) => info!(lease = id, revision, "lease expired"),
                Err(error) => warn!(lease = id, %error, "expiring lease failed"),
            }
        }
    }

    /// Applies and flushes the group, then answers and publishes. Returns false
    /// when the store can no longer be written (the writer stops).
    fn commit(&mut self, group: Group) -> bool {
        let Group { mut batch, published, replies, dirty, .. } = group;
        if dirty {
            batch.insert(layout::meta("revision"), encode(&self.revision));
            let started = std::time::Instant::now();
            let durable = self.shared.tree.apply_batch(batch).and_then(|()| self.shared.tree.flush().map(|_| ()));
            crate::metrics::get().store_write_seconds.observe(started.elapsed().as_secs_f64());
            if let Err(error) = durable {
                error!(%error, "group commit failed; the store stops accepting writes");
                let message = format!("storage failure: {error}");
                for reply in replies {
                    reply(Some(&message));
                }
                return false;
            }
        }
        self.shared.committed.store(self.revision, Ordering::Release);
        for reply in replies {
            reply(None);
        }
        for revision in published {
            // No receiver is fine: watchers that come later read history.
            let _ = self.shared.events.send(revision);
        }
        true
    }

    fn compact(&mut self, target: Revision) -> Result<Revision, StoreError> {
        if target <= self.compacted {
            return Ok(self.compacted);
        }
        if target > self.revision {
            return Err(StoreError::FutureRevision { requested: target, current: self.revision });
        }
        let tree = &self.shared.tree;
        let mut batch = sled::Batch::default();
        let mut removed = 0usize;
        for item in tree.range(layout::rev(0)..layout::rev(target)) {
            let (raw_key, _) = item?;
            batch.remove(raw_key);
        }
        // Per key, keep the newest entry at or below the target (what a read at the
        // target needs) unless it is a delete older than the target, and everything newer.
        let mut candidate: Option<(Vec<u8>, sled::IVec, bool)> = None;
        for item in tree.scan_prefix([layout::HIST]) {
            let (raw_key, raw) = item?;
            let Some((key, revision)) = layout::parse_hist(&raw_key) else {
                continue;
            };
            if revision > target {
                continue;
            }
            let superseded = match &candidate {
                Some((candidate_key, older, drop_it)) => {
                    if candidate_key.as_slice() == key || *drop_it {
                        Some(older.clone())
                    } else {
                        None
                    }
                }
                None => None,
            };
            if let Some(older) = superseded {
                batch.remove(older);
                removed += 1;
            }
            let is_delete = decode::<Option<KvRecord>>(&raw)?.is_none();
            candidate = Some((key.to_vec(), raw_key, is_delete && revision < target));
        }
        if let Some((_, raw_key, true)) = candidate {
            batch.remove(raw_key);
            removed += 1;
        }
        batch.insert(layout::meta("compacted"), encode(&target));
        tree.apply_batch(batch)?;
        tree.flush()?;
        self.compacted = target;
        self.shared.compacted.store(target, Ordering::Release);
        info!(revision = target, removed, "history compacted");
        Ok(target)
    }
}

fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("key is empty".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidKey(format!("key of {} bytes exceeds the limit of {MAX_KEY_LEN}", key.len())));
    }
    if key.contains(&0) {
        return Err(StoreError::InvalidKey("key contains a NUL byte".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_encodings_agree() {
        let record =
            KvRecord { value: b"{\"v\":1}".to_vec(), create_revision: 3, mod_revision: 9, version: 4, lease: 7 };
        let encoded = encode(&record);
        assert_eq!(as_some(&encoded), encode(&Some(&record)), "history entries are Some(record)");
        let meta: KvRecordRef<'_> = decode(&encoded).unwrap();
        assert_eq!((meta.create_revision, meta.mod_revision, meta.version, meta.lease), (3, 9, 4, 7));
        let round: Option<KvRecord> = decode(&as_some(&encoded)).unwrap();
        assert_eq!(round.unwrap().value, record.value);
    }

    #[test]
    fn history_keys_parse_back() {
        let raw = layout::hist(b"p/x/requirements/0000000001", 42);
        assert_eq!(layout::parse_hist(&raw), Some((&b"p/x/requirements/0000000001"[..], 42)));
        assert_eq!(layout::parse_rev(&layout::rev(7)), Some(7));
        assert!(layout::parse_hist(b"hshort").is_none());
    }
}
