//! The embedded `Store` backend: a write-ahead log in front of sled (etcd's
//! design, WAL + backend).
//!
//! - `wal`: every group commit is one checksummed record, synced before
//!   anyone is answered: the source of durability.
//! - `writer`: the single writer thread and its group commit.
//! - `layout`: the key spaces of the sled tree, which holds the
//!   materialised state (current values, history, leases) and is flushed in
//!   the background.
//! - `read` and `watch`: scans and past-revision reads on blocking threads
//!   (point reads of the current state on the caller's task); watch streams
//!   from history, then live.
//! - `lease`, `compact`: leases and their keys; the compaction point and
//!   the bounded sweep of old history.
//! - `checkpoint`: the whole tree in one file now and then, so that a sled
//!   directory that will not open is rebuilt from the newest checkpoint and
//!   the log (`maestrod repair`, and automatically at start).
//! - `reopen`: sled reopened now and then by the writer, so that the log sled
//!   reads to recover after a crash stays short.
//! - `lockfile`: one daemon per data directory.
//!
//! Data directory: `store/` (sled), `wal/` (log segments), `checkpoints/`,
//! `maestrod.lock`.

mod checkpoint;
mod compact;
mod layout;
mod lease;
pub(crate) mod lockfile;
mod read;
mod reopen;
mod upgrade;
mod wal;
mod watch;
mod writer;

#[cfg(test)]
mod recovery_tests;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::layout::{LeaseRecord, decode, encode, meta};
use self::wal::{Wal, WalOp, to_batch};
use self::writer::{Command, Writer};
use super::store::{
    Event, LeaseId, LeaseInfo, RangeRequest, RangeResponse, Revision, Store, StoreError, StoreStatus, Txn, TxnResponse,
    WatchStream,
};

/// Most requests folded into one group commit.
const MAX_GROUP: usize = 1024;
pub use crate::ssot::store::{MAX_KEY_LEN, MAX_LEASE_TTL, MAX_VALUE_LEN};
#[cfg(any(test, feature = "failpoints"))]
pub use upgrade::downgrade_to_format;

/// Ends the process at once, as `kill -9` would (the crash tests' failpoints).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(crate) fn crash() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

/// Tuning for the sled backend.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// Capacity of the live-event channel; a watcher further behind reads history instead.
    pub event_buffer: usize,
    /// sled page cache, in bytes.
    pub cache_capacity: u64,
    /// A log segment is closed once it holds this many bytes.
    pub wal_segment_bytes: u64,
    /// Log growth that starts a checkpoint (at least; more once checkpoints are larger).
    pub checkpoint_bytes: u64,
    /// How often sled writes its state out in the background.
    pub flush_every: Duration,
    /// sled operations (inserts and removes) after which the writer reopens
    /// sled, which makes it write the snapshot it recovers from (0: never).
    pub reopen_after_ops: u64,
    /// Time between two reopens at least, in lengths of the last one's pause
    /// (100: reopens hold the store up for less than 1% of the time).
    pub reopen_spacing: u32,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            event_buffer: 4096,
            cache_capacity: 256 << 20,
            wal_segment_bytes: 16 << 20,
            checkpoint_bytes: 64 << 20,
            flush_every: Duration::from_millis(500),
            reopen_after_ops: reopen::DEFAULT_OPS,
            reopen_spacing: reopen::DEFAULT_SPACING,
        }
    }
}

/// The events of one committed revision, as published to live watchers.
#[derive(Debug)]
struct RevisionEvents {
    revision: Revision,
    events: Vec<Event>,
}

/// The open sled state. The writer replaces it when it reopens sled.
struct Sled {
    db: sled::Db,
    tree: sled::Tree,
}

/// State the writer thread and the readers share.
struct Shared {
    /// `None` only while the writer reopens sled, or after a reopen failed.
    sled: std::sync::RwLock<Option<Sled>>,
    committed: AtomicU64,
    compacted: AtomicU64,
    /// Sweep steps applied so far: a history read that saw this change while
    /// it walked may have seen part of a step, and reads again.
    sweeps: AtomicU64,
    /// History reads under way: the sweep waits for them.
    history_readers: std::sync::atomic::AtomicUsize,
    /// Times the writer has reopened sled.
    reopens: AtomicU64,
    /// Reads under way that may walk many records (scans, past revisions,
    /// watch history): a reopen waits until there are none.
    walks: std::sync::atomic::AtomicUsize,
    events: broadcast::Sender<Arc<RevisionEvents>>,
}

impl Shared {
    /// The tree, unless the writer is reopening sled right now.
    fn try_tree(&self) -> Option<Result<sled::Tree, StoreError>> {
        match self.sled.try_read() {
            Ok(sled) => Some(sled.as_ref().map(|sled| sled.tree.clone()).ok_or_else(stopped)),
            Err(std::sync::TryLockError::WouldBlock) => None,
            Err(std::sync::TryLockError::Poisoned(_)) => panic!("sled lock poisoned"),
        }
    }

    /// The tree as it is now. A clone: the writer reopens sled only once every
    /// clone of the old tree is gone, so a read never sees half of a change.
    fn tree(&self) -> Result<sled::Tree, StoreError> {
        self.sled.read().expect("sled lock poisoned").as_ref().map(|sled| sled.tree.clone()).ok_or_else(stopped)
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the store stopped: reopening its sled state failed (see the daemon's log)".into())
}

/// Where the parts of a data directory live.
struct Paths {
    store: PathBuf,
    wal: PathBuf,
    checkpoints: PathBuf,
}

impl Paths {
    fn of(dir: &Path) -> Self {
        Paths { store: dir.join("store"), wal: dir.join("wal"), checkpoints: dir.join("checkpoints") }
    }
}

/// What opening found, for the writer.
struct Opened {
    db: sled::Db,
    tree: sled::Tree,
    wal: Wal,
    revision: Revision,
    compacted: Revision,
    swept: Revision,
    next_lease: LeaseId,
    checkpoint_size: u64,
}

/// Why a store did not open: `Rebuild` errors are the sled state's, and a
/// rebuild from a checkpoint and the log can fix them.
enum OpenError {
    Rebuild(StoreError),
    Fatal(StoreError),
}

impl OpenError {
    fn into_error(self) -> StoreError {
        match self {
            OpenError::Rebuild(error) | OpenError::Fatal(error) => error,
        }
    }
}

impl From<sled::Error> for OpenError {
    /// Damage is for a rebuild; the environment (permissions, a full disk, too
    /// many open files, sled's own file lock) is not: moving a store aside would
    /// not help, and the user must see the error.
    fn from(error: sled::Error) -> Self {
        match &error {
            sled::Error::Io(io) if environmental(io) => OpenError::Fatal(error.into()),
            _ => OpenError::Rebuild(error.into()),
        }
    }
}

fn environmental(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        PermissionDenied | StorageFull | QuotaExceeded | ReadOnlyFilesystem | OutOfMemory | WouldBlock | ResourceBusy
    ) || matches!(
        error.raw_os_error(),
        Some(code) if code == nix::errno::Errno::ENFILE as i32 || code == nix::errno::Errno::EMFILE as i32
    ) || error.to_string().contains("could not acquire lock")
}

/// What `repair` did.
#[derive(Debug)]
pub struct RepairReport {
    /// Sequence number of the checkpoint the store was rebuilt from.
    pub checkpoint: u64,
    /// Records in that checkpoint.
    pub entries: u64,
    /// Log records replayed after it.
    pub replayed: u64,
    /// The store's revision afterwards.
    pub revision: Revision,
    /// Where the old sled directory was moved (delete it once satisfied).
    pub moved_to: Option<PathBuf>,
}

fn read_u64(tree: &sled::Tree, name: &str) -> Result<u64, StoreError> {
    tree.get(layout::meta(name))?.map_or(Ok(0), |raw| decode::<u64>(&raw))
}

/// Applies one log record to the tree, with its sequence number.
fn apply_record(tree: &sled::Tree, seq: u64, ops: &[WalOp]) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    to_batch(ops, &mut batch);
    batch.insert(layout::meta(meta::LOG_SEQ), encode(&seq));
    Ok(tree.apply_batch(batch)?)
}

fn open_sled(path: &Path, options: &SledOptions) -> Result<sled::Db, OpenError> {
    reopen::remove_unfinished_snapshots(path).map_err(OpenError::Fatal)?;
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(options.cache_capacity)
        .flush_every_ms(Some(u64::try_from(options.flush_every.as_millis()).unwrap_or(500).max(1)));
    // sled panics on some damage instead of returning an error.
    let db = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
        Ok(opened) => opened?,
        Err(_) => return Err(OpenError::Rebuild(StoreError::Backend("sled panicked while opening".into()))),
    };
    sync_sled_files(path).map_err(OpenError::Fatal)?;
    Ok(db)
}

/// sled syncs neither its configuration file nor a directory: after a power
/// cut its files (or their names) could be gone or empty, and the next start
/// would rebuild the store from a checkpoint. Once open, sled's files and
/// names are made durable as they stand (what sled writes later is covered by
/// the log, replayed after a crash).
fn sync_sled_files(path: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(path).map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let file = File::open(entry.path()).and_then(|f| f.sync_all());
            file.map_err(|e| StoreError::Backend(format!("cannot sync {}: {e}", entry.path().display())))?;
        }
    }
    for dir in [Some(path), path.parent()].into_iter().flatten() {
        wal::sync_dir(dir)?;
    }
    Ok(())
}

/// `open_sled` of a directory this process has just closed: sled's threads
/// let go of its file lock a moment after it is dropped.
fn open_sled_again(path: &Path, options: &SledOptions) -> Result<sled::Db, OpenError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match open_sled(path, options) {
            Err(OpenError::Fatal(error) | OpenError::Rebuild(error))
                if std::time::Instant::now() < deadline && error.to_string().contains("could not acquire lock") =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Opens the sled state in `dir`, brings it up to date from the log, and
/// makes a first checkpoint if there is none.
fn open_state(dir: &Path, options: &SledOptions) -> Result<Opened, OpenError> {
    let paths = Paths::of(dir);
    upgrade::swap_in(dir).map_err(OpenError::Fatal)?;
    let checkpoints = checkpoint::list(&paths.checkpoints).map_err(OpenError::Fatal)?;
    if !checkpoints.is_empty() && !paths.store.exists() {
        return Err(OpenError::Rebuild(StoreError::Backend(format!("{} is missing", paths.store.display()))));
    }
    let started = std::time::Instant::now();
    let mut db = open_sled(&paths.store, options)?;
    let mut tree = db.open_tree("ssot")?;
    tracing::debug!(took = ?started.elapsed(), "sled opened");
    let mut schema = match tree.get(layout::meta(meta::SCHEMA))? {
        Some(raw) => decode::<u32>(&raw).map_err(OpenError::Rebuild)?,
        None if !checkpoints.is_empty() => {
            return Err(OpenError::Rebuild(StoreError::Backend(
                "the store is empty but checkpoints of it exist (its files were lost)".into(),
            )));
        }
        None => {
            tree.insert(layout::meta(meta::SCHEMA), encode(&layout::SCHEMA_VERSION))?;
            layout::SCHEMA_VERSION
        }
    };
    if schema == 1 {
        upgrade::from_1(&tree).map_err(OpenError::Rebuild)?;
        schema = 2;
    }
    match schema {
        2 | 3 | layout::SCHEMA_VERSION => {}
        found => {
            return Err(OpenError::Fatal(StoreError::Schema {
                path: dir.display().to_string(),
                found,
                expected: layout::SCHEMA_VERSION,
            }));
        }
    }
    let log_seq = read_u64(&tree, meta::LOG_SEQ).map_err(OpenError::Rebuild)?;
    let mut replayed = 0u64;
    let started = std::time::Instant::now();
    let wal = Wal::open(&paths.wal, log_seq + 1, options.wal_segment_bytes, |seq, ops| {
        replayed += 1;
        apply_record(&tree, seq, &ops)
    })
    .map_err(|error| {
        if error.to_string().contains("the store needs it from record") {
            OpenError::Rebuild(error)
        } else {
            OpenError::Fatal(error)
        }
    })?;
    if replayed > 0 {
        tree.flush()?;
        info!(records = replayed, took = ?started.elapsed(), "replayed the write-ahead log into the store");
    }
    let mut checkpoints = checkpoints;
    if schema < layout::SCHEMA_VERSION {
        // The log's records were written in the old format too: the conversion comes after them.
        let started = std::time::Instant::now();
        let seq = wal.next_seq() - 1;
        let converted = upgrade::convert_from(dir, &tree, schema, seq, options).map_err(OpenError::Fatal)?;
        drop(tree);
        drop(db);
        upgrade::swap_in(dir).map_err(OpenError::Fatal)?;
        info!(records = converted, took = ?started.elapsed(), "store converted to format {}", layout::SCHEMA_VERSION);
        db = open_sled_again(&paths.store, options)?;
        tree = db.open_tree("ssot")?;
        checkpoints = checkpoint::list(&paths.checkpoints).map_err(OpenError::Fatal)?;
    }
    let checkpoint_size = match checkpoints.last() {
        Some((_, path)) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        None => {
            let seq = wal.next_seq() - 1;
            let (size, _) = checkpoint::take(&paths.checkpoints, &paths.wal, &tree, seq).map_err(OpenError::Fatal)?;
            info!(seq, bytes = size, "first checkpoint written");
            size
        }
    };
    let revision = read_u64(&tree, meta::REVISION).map_err(OpenError::Rebuild)?;
    let compacted = read_u64(&tree, meta::COMPACTED).map_err(OpenError::Rebuild)?;
    let swept = read_u64(&tree, meta::SWEPT).map_err(OpenError::Rebuild)?;
    let next_lease = read_u64(&tree, meta::NEXT_LEASE).map_err(OpenError::Rebuild)?.max(1);
    Ok(Opened { db, tree, wal, revision, compacted, swept, next_lease, checkpoint_size })
}

/// Rebuilds the sled state of `dir` from its newest intact checkpoint and the
/// log after it; the old sled directory is moved aside, never deleted.
/// Refuses while a daemon uses the directory.
pub fn repair(dir: &Path) -> Result<RepairReport, StoreError> {
    let _lock = lockfile::lock_data_dir(dir)?;
    rebuild(dir, &SledOptions::default())
}

/// Builds a new sled state in `store.rebuilding/` from the newest intact
/// checkpoint and the log, and only once it is complete and flushed moves the
/// old `store/` aside and puts the new one in its place: a crash at any point
/// leaves either the old store (rebuilt again at the next start) or the new.
fn rebuild(dir: &Path, options: &SledOptions) -> Result<RepairReport, StoreError> {
    let paths = Paths::of(dir);
    let mut chosen = None;
    for (seq, path) in checkpoint::list(&paths.checkpoints)?.into_iter().rev() {
        match checkpoint::verify(&path) {
            Ok(_) => {
                chosen = Some((seq, path));
                break;
            }
            Err(error) => warn!(%error, "skipping a damaged checkpoint"),
        }
    }
    let Some((seq, path)) = chosen else {
        return Err(StoreError::Backend(format!(
            "cannot rebuild the store in {}: there is no intact checkpoint in {}",
            dir.display(),
            paths.checkpoints.display()
        )));
    };
    if let Some((first, _)) = wal::segments(&paths.wal)?.first()
        && *first > seq + 1
    {
        return Err(StoreError::Backend(format!(
            "cannot rebuild the store in {}: the write-ahead log starts at record {first}, and checkpoint {seq} needs it from {}",
            dir.display(),
            seq + 1
        )));
    }
    let building = dir.join("store.rebuilding");
    if building.exists() {
        std::fs::remove_dir_all(&building)
            .map_err(|e| StoreError::Backend(format!("cannot clear {}: {e}", building.display())))?;
    }
    let (entries, replayed, revision) = {
        let db = open_sled(&building, options).map_err(OpenError::into_error)?;
        let tree = db.open_tree("ssot")?;
        let (_, entries) = checkpoint::load(&path, &tree)?;
        // The copy is fuzzy: its own record of the log position may be ahead of what it
        // holds. The checkpoint's position is the one every later record applies after.
        tree.insert(layout::meta(meta::LOG_SEQ), encode(&seq))?;
        let mut replayed = 0u64;
        let wal = Wal::open(&paths.wal, seq + 1, options.wal_segment_bytes, |record, ops| {
            replayed += 1;
            apply_record(&tree, record, &ops)
        })?;
        drop(wal);
        tree.flush()?;
        (entries, replayed, read_u64(&tree, meta::REVISION)?)
    };
    fail::fail_point!("rebuild-before-swap", |_| crash());
    let moved_to = if paths.store.exists() {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut aside = dir.join(format!("store.broken-{stamp}"));
        for n in 1.. {
            if !aside.exists() {
                break;
            }
            aside = dir.join(format!("store.broken-{stamp}-{n}"));
        }
        std::fs::rename(&paths.store, &aside)
            .map_err(|e| StoreError::Backend(format!("cannot move {} aside: {e}", paths.store.display())))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&building, &paths.store)
        .map_err(|e| StoreError::Backend(format!("cannot put the rebuilt store in place: {e}")))?;
    wal::sync_dir(dir)?;
    Ok(RepairReport { checkpoint: seq, entries, replayed, revision, moved_to })
}

/// `open_state` right after a rebuild in this process: sled's threads for the
/// rebuilt copy let go of its file lock a moment after it is dropped.
fn open_rebuilt(dir: &Path, options: &SledOptions) -> Result<Opened, StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match open_state(dir, options) {
            Ok(opened) => return Ok(opened),
            Err(OpenError::Fatal(error) | OpenError::Rebuild(error))
                if std::time::Instant::now() < deadline && error.to_string().contains("could not acquire lock") =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(OpenError::Fatal(error) | OpenError::Rebuild(error)) => return Err(error),
        }
    }
}

/// The sled-backed store. Cheap to share behind an `Arc`; call [`SledStore::close`]
/// to drain the writer and flush before the process exits.
pub struct SledStore {
    shared: Arc<Shared>,
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
    /// A sled state that will not open, or has fallen behind the log, is
    /// rebuilt from the newest checkpoint and the log (said in the log).
    pub fn open(dir: &Path, options: SledOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create data directory {}: {e}", dir.display())))?;
        let lock = lockfile::lock_data_dir(dir)?;
        let started = std::time::Instant::now();
        let opened = match open_state(dir, &options) {
            Ok(opened) => opened,
            Err(OpenError::Fatal(error)) => return Err(error),
            Err(OpenError::Rebuild(error)) => {
                error!(
                    path = %dir.display(),
                    %error,
                    "the store cannot be opened as it is; rebuilding it from its newest checkpoint and the write-ahead log"
                );
                let report = rebuild(dir, &options)?;
                warn!(
                    checkpoint = report.checkpoint,
                    replayed = report.replayed,
                    revision = report.revision,
                    old = %report.moved_to.as_ref().map_or(String::new(), |p| p.display().to_string()),
                    "store rebuilt; the old sled directory was kept aside (delete it once satisfied)"
                );
                open_rebuilt(dir, &options)?
            }
        };
        let Opened { db, tree, wal, revision, compacted, swept, next_lease, checkpoint_size } = opened;
        let (leases, lease_keys) = lease::load(&tree)?;
        let (events, _) = broadcast::channel(options.event_buffer.max(16));
        let shared = Arc::new(Shared {
            sled: std::sync::RwLock::new(Some(Sled { db, tree: tree.clone() })),
            committed: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            sweeps: AtomicU64::new(0),
            history_readers: std::sync::atomic::AtomicUsize::new(0),
            reopens: AtomicU64::new(0),
            walks: std::sync::atomic::AtomicUsize::new(0),
            events,
        });
        let leases = Arc::new(Mutex::new(leases));
        let paths = Paths::of(dir);
        let mut writer = Writer {
            shared: shared.clone(),
            tree: Some(tree),
            reopen: reopen::Reopen::new(paths.store.clone(), options.clone()),
            wal,
            revision,
            compacted,
            next_lease,
            leases: leases.clone(),
            lease_keys,
            sweep: None,
            checkpoints: checkpoint::Checkpoints::new(
                paths.checkpoints,
                paths.wal,
                options.checkpoint_bytes,
                checkpoint_size,
            ),
        };
        if swept < compacted {
            info!(revision = compacted, "resuming the sweep of compacted history");
            writer.start_sweep(compacted);
        }
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        let handle = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("ssot-writer".into())
            .spawn(move || writer.run(rx, handle))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        info!(path = %dir.display(), revision, compacted, took = ?started.elapsed(), "store opened");
        Ok(Self {
            shared,
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
        let flushed = match self.shared.tree() {
            Ok(tree) => tree.flush_async().await.map(|_| ()).map_err(StoreError::from),
            Err(error) => Err(error),
        };
        if let Err(error) = flushed {
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
}

impl Store for SledStore {
    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, StoreError>> {
        // A point read of the current state is a lookup in sled's cache: handing it to a
        // blocking thread costs more than the read (on two cores, 45% of the no-op rate
        // instead of 78%). Scans and past revisions, which may walk the disk, go there.
        if request.end.is_empty()
            && request.revision == 0
            && let Some(result) = read::point_now(&self.shared, &request)
        {
            return async move { result }.boxed();
        }
        let shared = self.shared.clone();
        async move {
            tokio::task::spawn_blocking(move || read::range(&shared, &request))
                .await
                .unwrap_or_else(|e| Err(StoreError::Backend(format!("reader failed: {e}"))))
        }
        .boxed()
    }

    fn txn(&self, mut txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>> {
        if txn.actor.is_none() {
            txn.actor = super::actor::current();
        }
        self.send(|tx| Command::Txn(txn, tx)).boxed()
    }

    fn watch(&self, prefix: Vec<u8>, start_revision: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before looking at the revision, so nothing falls between history and live.
        let live = self.shared.events.subscribe();
        let committed = self.shared.committed.load(Ordering::Acquire);
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if start_revision != 0 && start_revision < compacted {
            return Err(StoreError::Compacted { requested: start_revision, compact_revision: compacted });
        }
        if start_revision > committed + 1 {
            return Err(StoreError::FutureRevision { requested: start_revision, current: committed });
        }
        let next = if start_revision == 0 { committed + 1 } else { start_revision };
        let (tx, rx) = mpsc::channel(64);
        self.watchers.spawn(watch::run(self.shared.clone(), live, prefix, next, tx, self.cancel.clone()));
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

    fn end_watches(&self) {
        SledStore::end_watches(self);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        SledStore::close(self).boxed()
    }
}
