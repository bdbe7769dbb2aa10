//! The single source of truth: a revisioned store (`store`, `sled_store`) and
//! the domains on top of it, one module each. Only this module imports sled.
//!
//! Key layout (all UTF-8, no NUL bytes):
//! - `projects/<id>`: the project record;
//! - `p/<project>/<resource path>`: everything that belongs to a project, e.g.
//!   `p/demo/requirements/00000003`. Watches and snapshots speak in resource
//!   paths, the part after `p/<project>/`.

pub mod actor;
pub mod budgets;
pub mod clock;
pub mod compaction;
pub mod contracts;
pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd_store;
pub mod exec_log;
pub mod fence;
pub mod keys;
pub mod location;
pub mod locks;
pub mod loops;
pub mod memory;
pub mod migrate;
pub mod owners;
pub mod paging;
pub mod projects;
pub mod requirements;
pub mod sled_store;
pub mod snapshots;
pub mod store;
#[cfg(test)]
mod store_model_tests;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::{Result, SsotError};
use paging::PageToken;
use store::{Compare, KeyValue, Op, RangeRequest, Revision, Store, Txn, TxnResponse, prefix_end};

/// Revision metadata of a stored resource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: u64,
    /// Who made the last change (a user, `loop-N`, or `maestrod`; empty when unknown).
    pub modified_by: String,
}

impl Meta {
    /// Metadata of a resource created at `revision`.
    pub fn created(revision: Revision) -> Self {
        Self { create_revision: revision, mod_revision: revision, version: 1, modified_by: actor::current_or_daemon() }
    }

    fn of(kv: &KeyValue) -> Self {
        Self {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            modified_by: kv.modified_by.clone(),
        }
    }
}

/// A resource with the revision metadata it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub meta: Meta,
}

/// Bytes of stored records one page carries at most (unless a single record is
/// larger): with the wire encoding no larger than the stored JSON, a reply stays
/// below gRPC's usual 4 MiB message limit.
pub const PAGE_BYTES: usize = 3 << 20;

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<Versioned<T>>,
    pub next_page_token: String,
    pub revision: Revision,
}

/// Bounds applied by the domains.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most memory entries one agent may hold; the least recently written go first.
    pub memory_entries_per_agent: usize,
    /// Most bytes of stored memory records (JSON) one agent may hold.
    pub memory_bytes_per_agent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory_entries_per_agent: 1000, memory_bytes_per_agent: 4 << 20 }
    }
}

/// How many times a write that lost a race (without a client etag) is retried.
const RETRIES: usize = 64;

/// The domain layer: typed operations on requirements, contracts, the log,
/// memory, locks and snapshots, all scoped by project.
pub struct Ssot {
    store: Arc<dyn Store>,
    limits: Limits,
    /// Appends to one project's log are serialized here; the hash chain's
    /// compare-and-swap still guards against other writers.
    log_appenders: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Ssot {
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Self {
        Self { store, limits, log_appenders: Mutex::new(HashMap::new()) }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn get<T: DeserializeOwned>(&self, key: &str, revision: Revision) -> Result<Option<Versioned<T>>> {
        let response = self.store.range(RangeRequest::key(key).at(revision)).await?;
        response.kvs.into_iter().next().map(|kv| decode_versioned(&kv)).transpose()
    }

    /// Reads one project resource. A resource can only exist inside an existing
    /// project, so the project is looked up only to explain a miss.
    async fn get_in_project<T: DeserializeOwned>(
        &self,
        project: &str,
        key: &str,
        revision: Revision,
        missing: impl FnOnce() -> SsotError,
    ) -> Result<Versioned<T>> {
        validate::ident("project_id", project, projects::MAX_ID_LEN)?;
        match self.get(key, revision).await? {
            Some(found) => Ok(found),
            None => {
                self.project_guard(project).await?;
                Err(missing())
            }
        }
    }

    /// Reads up to `limit` resources under `prefix` (0: all) after the key `after`.
    async fn scan<T: DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        revision: Revision,
        limit: usize,
    ) -> Result<(Vec<(String, Versioned<T>)>, bool, Revision)> {
        let (items, more, revision) = self.scan_sized::<T>(prefix, after, revision, limit).await?;
        Ok((items.into_iter().map(|(key, _, item)| (key, item)).collect(), more, revision))
    }

    /// `scan`, with the stored size of each record (what a page may carry is counted in it).
    async fn scan_sized<T: DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        revision: Revision,
        limit: usize,
    ) -> Result<(Vec<(String, usize, Versioned<T>)>, bool, Revision)> {
        let start = match after {
            Some(after) => {
                let mut start = after.to_vec();
                start.push(0);
                start
            }
            None => prefix.as_bytes().to_vec(),
        };
        let request = RangeRequest { start, end: prefix_end(prefix.as_bytes()), revision, limit, ..Default::default() };
        let response = self.store.range(request).await?;
        let items = response
            .kvs
            .iter()
            .map(|kv| Ok((String::from_utf8_lossy(&kv.key).into_owned(), kv.value.len(), decode_versioned(kv)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((items, response.more, response.revision))
    }

    /// All resources under `prefix` at one revision.
    async fn scan_all<T: DeserializeOwned>(
        &self,
        prefix: &str,
        revision: Revision,
    ) -> Result<(Vec<Versioned<T>>, Revision)> {
        let (items, _, revision) = self.scan::<T>(prefix, None, revision, 0).await?;
        Ok((items.into_iter().map(|(_, v)| v).collect(), revision))
    }

    /// One page of the resources under `prefix` that pass `keep`: at most
    /// `page_size` of them and about PAGE_BYTES of records.
    async fn page<T: DeserializeOwned>(
        &self,
        prefix: &str,
        page_size: i32,
        page_token: &str,
        revision: Revision,
        keep: impl Fn(&Versioned<T>) -> bool,
    ) -> Result<Page<T>> {
        let size = validate::page_size(page_size)?;
        let token = PageToken::decode(page_token)?;
        if let Some(token) = &token
            && !token.after.starts_with(prefix.as_bytes())
        {
            return Err(SsotError::invalid("page_token", "the page token belongs to a different listing"));
        }
        let mut revision = token.as_ref().map_or(revision, |t| t.revision);
        let mut after = token.map(|t| t.after);
        let mut items = Vec::new();
        let mut used = 0;
        let chunk = (size + 1).max(64);
        loop {
            let (batch, more, read_at) = self.scan_sized::<T>(prefix, after.as_deref(), revision, chunk).await?;
            revision = read_at;
            let mut rest = batch.into_iter().peekable();
            let mut full = false;
            while let Some((_, bytes, item)) = rest.peek() {
                let kept = keep(item);
                // A page ends at `size` items or before the item that would take it past
                // PAGE_BYTES (a page always holds at least one).
                if items.len() == size || (kept && !items.is_empty() && used + bytes > PAGE_BYTES) {
                    full = true;
                    break;
                }
                let Some((key, bytes, item)) = rest.next() else { break };
                after = Some(key.into_bytes());
                if kept {
                    used += bytes;
                    items.push(item);
                }
            }
            if full || items.len() == size {
                let remaining = rest.peek().is_some() || more;
                let next_page_token = match (remaining, after) {
                    (true, Some(after)) => PageToken { revision, after }.encode(),
                    _ => String::new(),
                };
                return Ok(Page { items, next_page_token, revision });
            }
            if !more {
                return Ok(Page { items, next_page_token: String::new(), revision });
            }
        }
    }

    /// A compare that fails if the project is deleted concurrently; `NotFound` if it does not exist.
    async fn project_guard(&self, project: &str) -> Result<Compare> {
        validate::ident("project_id", project, projects::MAX_ID_LEN)?;
        let key = keys::project(project);
        let response = self.store.range(RangeRequest::key(key.as_str())).await?;
        match response.kvs.first() {
            Some(kv) => Ok(Compare::mod_revision(key, kv.mod_revision)),
            None => Err(SsotError::not_found("project", project)),
        }
    }

    /// Runs a transaction, fenced when the task runs a loop: its owner key's
    /// revision is one more compare, and its failure is `Fenced`.
    async fn txn(&self, mut txn: Txn) -> Result<TxnResponse> {
        let Some(fence) = fence::current() else { return Ok(self.store.txn(txn).await?) };
        if !fence.tenure.is_valid() {
            return Err(fence.lost());
        }
        let index = txn.compares.len();
        txn.compares.push(fence.compare());
        match self.store.txn(txn).await? {
            TxnResponse::CompareFailed { index: failed, .. } if failed == index => Err(fence.lost()),
            // A store may name only the first compare that failed: the fence may have failed too.
            response @ TxnResponse::CompareFailed { .. } => {
                let owner = self.store.range(RangeRequest::key(fence.key.clone())).await?;
                match owner.kvs.first() {
                    Some(kv) if kv.mod_revision == fence.revision => Ok(response),
                    _ => Err(fence.lost()),
                }
            }
            response => Ok(response),
        }
    }

    /// Events of `kind` under `prefix` from `start` (0: the next revision) as
    /// they come, each made an item by `item` (`None`: skipped).
    fn follow<T: Send + 'static>(
        &self,
        prefix: &str,
        start: Revision,
        kind: store::EventKind,
        item: impl Fn(&KeyValue) -> Option<Result<T>> + Send + 'static,
    ) -> Result<futures::stream::BoxStream<'static, Result<T>>> {
        use futures::StreamExt;
        let stream = self.store.watch(prefix.as_bytes().to_vec(), start)?;
        Ok(stream
            .flat_map(move |batch| {
                let items: Vec<Result<T>> = match batch {
                    Ok(batch) => batch.events.iter().filter(|e| e.kind == kind).filter_map(|e| item(&e.kv)).collect(),
                    Err(e) => vec![Err(e.into())],
                };
                futures::stream::iter(items)
            })
            .boxed())
    }

    /// Runs a transaction; `Err((index, current_mod_revision))` names the compare that failed.
    async fn commit(&self, txn: Txn) -> Result<std::result::Result<Revision, (usize, Revision)>> {
        Ok(match self.txn(txn).await? {
            TxnResponse::Committed { revision } => Ok(revision),
            TxnResponse::CompareFailed { index, current_mod_revision, .. } => Err((index, current_mod_revision)),
        })
    }

    /// Read-modify-write of one resource with optimistic concurrency. With a
    /// client etag a concurrent change is `StaleEtag`; without one the write is
    /// retried on fresh data. `prepare` reads whatever else `edit` needs (again
    /// on every try); `edit` may add compares and ops of its own (a failure of
    /// those is retried too).
    async fn modify<T, P, F>(
        &self,
        target: Target<'_>,
        etag: Option<u64>,
        prepare: impl Fn() -> F,
        mut edit: impl FnMut(T, P) -> Result<Edit<T>>,
    ) -> Result<Versioned<T>>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<P>>,
    {
        let Target { kind, id, key, project } = target;
        let missing = || SsotError::not_found(kind, id);
        for attempt in 0..RETRIES {
            let prepared = prepare().await?;
            // The compare on the resource itself also guards its project: deleting a
            // project deletes every key in it, so a commit after that fails here.
            let current: Versioned<T> = match project {
                Some(project) => self.get_in_project(project, key, 0, missing).await?,
                None => self.get(key, 0).await?.ok_or_else(missing)?,
            };
            check_etag(kind, id, etag, current.meta.mod_revision)?;
            let Edit { value, compares, ops } = edit(current.value, prepared)?;
            let mut txn = Txn::new().when(Compare::mod_revision(key, current.meta.mod_revision));
            txn.compares.extend(compares);
            txn.ops.push(Op::put(key, encode_json(&value)));
            txn.ops.extend(ops);
            match self.commit(txn).await? {
                Ok(revision) => {
                    let meta = Meta {
                        mod_revision: revision,
                        version: current.meta.version + 1,
                        modified_by: actor::current_or_daemon(),
                        ..current.meta
                    };
                    return Ok(Versioned { value, meta });
                }
                Err((0, 0)) => return Err(missing()),
                Err((0, current)) => {
                    if let Some(expected) = etag {
                        return Err(SsotError::StaleEtag { kind, id: id.to_string(), expected, current });
                    }
                }
                Err(_) => {}
            }
            after_lost_race(attempt).await;
        }
        Err(lost_race(kind, id))
    }
}

/// The resource a [`Ssot::modify`] changes.
struct Target<'a> {
    kind: &'static str,
    id: &'a str,
    key: &'a str,
    /// The owning project (named when the resource is missing because it is).
    project: Option<&'a str>,
}

/// The new value of a modified resource, plus extra conditions and changes
/// to commit with it atomically.
struct Edit<T> {
    value: T,
    compares: Vec<Compare>,
    ops: Vec<Op>,
}

impl<T> Edit<T> {
    fn value(value: T) -> Self {
        Self { value, compares: Vec::new(), ops: Vec::new() }
    }
}

/// A `prepare` step for [`Ssot::modify`] that reads nothing.
async fn nothing() -> Result<()> {
    Ok(())
}

/// Waits before retry `attempt` of a read-modify-write that lost a race: a
/// yield at first, then a random pause growing to at most 50 ms, so that many
/// writers contending for one record (an id counter, say) do not keep
/// colliding in step.
async fn after_lost_race(attempt: usize) {
    if attempt < 2 {
        tokio::task::yield_now().await;
        return;
    }
    // Full jitter up to 50 ms: with dozens of writers on one key and durable writes taking
    // milliseconds under load, a lower ceiling let the losers collide again and run out of tries.
    let ceiling_us = (50u64 << attempt.min(10)).min(50_000);
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    let pause = u64::from_le_bytes(random) % ceiling_us;
    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
}

fn lost_race(kind: &str, id: &str) -> SsotError {
    SsotError::Conflict(format!("{kind} {id} kept changing under concurrent writes; try again"))
}

fn decode_versioned<T: DeserializeOwned>(kv: &KeyValue) -> Result<Versioned<T>> {
    let value = serde_json::from_slice(&kv.value).map_err(|e| {
        store::StoreError::Backend(format!("corrupt record at {}: {e}", String::from_utf8_lossy(&kv.key)))
    })?;
    Ok(Versioned { value, meta: Meta::of(kv) })
}

fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Domain records are plain structs of strings and numbers: encoding cannot fail.
    serde_json::to_vec(value).expect("domain records encode as JSON")
}

/// Checks a client etag against what was read; the error names the resource.
fn check_etag(kind: &'static str, id: &str, expected: Option<u64>, current: Revision) -> Result<()> {
    match expected {
        Some(expected) if expected != current => {
            Err(SsotError::StaleEtag { kind, id: id.to_string(), expected, current })
        }
        _ => Ok(()),
    }
}
