//! The `Store` trait: an etcd-shaped, revisioned key-value store.
//!
//! One global revision increases with every committed transaction that changes
//! something. Each key carries its create/mod revision and version, history is
//! kept back to the compaction point, and watches replay from any retained
//! revision. The trait maps one-to-one onto etcd (Range, Txn with
//! compare-and-swap, leases, Watch, Compact) so a second backend can share one
//! SSOT between daemons.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// Largest accepted value, in bytes.
pub const MAX_VALUE_LEN: usize = 4 << 20;
/// Longest accepted lease TTL.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(86_400);

/// A store revision. 0 means "none" (a key that does not exist has mod revision 0).
pub type Revision = u64;

/// A lease id. 0 means "no lease".
pub type LeaseId = u64;

/// One key with its value and revision metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: u64,
    pub lease: LeaseId,
    /// Who made the revision `mod_revision` (filled by reads; empty when unknown).
    pub modified_by: String,
}

/// A read of a key range `[start, end)`; an empty `end` reads `start` alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    /// Read as of this revision; 0 reads the current state.
    pub revision: Revision,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
    /// Leave `modified_by` empty (saves a lookup per key where nobody shows it).
    pub without_authors: bool,
}

impl RangeRequest {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self { start: key.into(), ..Self::default() }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        Self { start, end, ..Self::default() }
    }

    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = revision;
        self
    }

    /// Skips who made each record (`modified_by` stays empty).
    pub fn without_authors(mut self) -> Self {
        self.without_authors = true;
        self
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key starts with the empty prefix: there is no finite end.
    vec![0xff; 1]
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// The revision the read saw.
    pub revision: Revision,
}

/// A condition on one key's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    /// The key's expected mod revision; 0 requires that it does not exist.
    pub mod_revision: Revision,
}

impl Compare {
    pub fn mod_revision(key: impl Into<Vec<u8>>, mod_revision: Revision) -> Self {
        Self { key: key.into(), mod_revision }
    }

    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Self::mod_revision(key, 0)
    }
}

/// One change inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: LeaseId,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease: 0 }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        Op::DeleteRange { start, end }
    }
}

/// Compare-and-swap: if every compare holds, apply every op atomically as one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    /// Who makes the change, recorded with its revision (default: the task's actor).
    pub actor: Option<String>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResponse {
    /// Applied (and durable). `revision` is the new revision, or the current
    /// one when the ops changed nothing.
    Committed { revision: Revision },
    /// The compare at `index` did not hold; nothing was applied.
    CompareFailed { index: usize, key: Vec<u8>, current_mod_revision: Revision },
}

impl TxnResponse {
    pub fn is_committed(&self) -> bool {
        matches!(self, TxnResponse::Committed { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One committed change. For a delete, `kv.value` is empty and `kv.mod_revision`
/// is the revision of the delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// Events of consecutive revisions, delivered by a watch. `revision` is the
/// highest revision the batch covers, whether or not it holds events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<Event>,
}

pub type WatchStream = BoxStream<'static, Result<WatchBatch, StoreError>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: LeaseId,
    pub ttl: Duration,
    /// Unix milliseconds at which the lease expires unless kept alive.
    pub deadline_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStatus {
    pub revision: Revision,
    /// History before this revision is gone.
    pub compact_revision: Revision,
    /// Watch streams open now.
    pub watchers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("revision {requested} has been compacted; the oldest retained revision is {compact_revision}")]
    Compacted { requested: Revision, compact_revision: Revision },
    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("lease {0} not found (it expired or was revoked)")]
    LeaseNotFound(LeaseId),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("the store is shut down")]
    Closed,
    #[error("data directory {path} is in use by another maestrod{pid}")]
    Locked { path: String, pid: String },
    #[error("data directory {path} holds store format {found}, this maestrod reads format {expected}")]
    Schema { path: String, found: u32, expected: u32 },
    #[error("storage error: {0}")]
    Backend(String),
    /// The store could not be reached (a remote backend); the request may be retried.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Backend(error.to_string())
    }
}

impl From<postcard::Error> for StoreError {
    fn from(error: postcard::Error) -> Self {
        StoreError::Backend(format!("corrupt record: {error}"))
    }
}

/// The SSOT's storage contract. Every mutation is durable before its future resolves.
pub trait Store: Send + Sync + 'static {
    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, StoreError>>;

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse, StoreError>>;

    /// Committed events for keys starting with `prefix`, from `start_revision`
    /// (0: from the next revision), then live. Fails with `Compacted` when
    /// `start_revision` is older than the retained history.
    fn watch(&self, prefix: Vec<u8>, start_revision: Revision) -> Result<WatchStream, StoreError>;

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseInfo, StoreError>>;

    fn lease_keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseInfo, StoreError>>;

    /// Revokes the lease and deletes its keys; returns the revision of the deletion.
    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<Revision, StoreError>>;

    fn lease_get(&self, id: LeaseId) -> BoxFuture<'_, Result<LeaseInfo, StoreError>>;

    /// Drops history older than `revision`.
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<Revision, StoreError>>;

    fn status(&self) -> StoreStatus;

    /// The revision a read now would see: every write acknowledged before the
    /// call, by any process sharing the store, is at or below it. The default,
    /// `status().revision`, is exact for a store only this process writes.
    fn current_revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let revision = self.status().revision;
        Box::pin(async move { Ok(revision) })
    }

    /// Ends every watch stream (on shutdown, so connections can drain).
    fn end_watches(&self);

    /// Finishes what was accepted, ends every watch stream and lets go of the backend.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Checks what every backend refuses alike, before anything is sent or changed:
/// keys, value sizes and ranges of every op and compare.
pub fn check_txn(txn: &Txn) -> Result<(), StoreError> {
    for op in &txn.ops {
        match op {
            Op::Put { key, value, .. } => {
                check_key(key)?;
                if value.len() > MAX_VALUE_LEN {
                    return Err(StoreError::InvalidArgument(format!(
                        "value of {} bytes exceeds the limit of {MAX_VALUE_LEN}",
                        value.len()
                    )));
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
    txn.compares.iter().try_for_each(|compare| check_key(&compare.key))
}

pub fn check_key(key: &[u8]) -> Result<(), StoreError> {
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

pub fn check_lease_ttl(ttl: Duration) -> Result<(), StoreError> {
    if ttl.is_zero() || ttl > MAX_LEASE_TTL {
        return Err(StoreError::InvalidArgument(format!(
            "lease ttl must be between 1s and {}s",
            MAX_LEASE_TTL.as_secs()
        )));
    }
    Ok(())
}
