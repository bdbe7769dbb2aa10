//! The single writer and its group commit.
//!
//! One thread takes every request waiting in its queue (up to `MAX_GROUP`),
//! evaluates them in order against an overlay of the group's own changes,
//! appends the group's changes to the log as one record and syncs it, applies
//! them to sled (flushed in the background), and only then answers the
//! callers and publishes the events to watchers. Between groups it sweeps old
//! history after a compaction, a bounded step at a time.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};

use super::checkpoint::Checkpoints;
use super::compact::Sweep;
use super::layout::{self, KvMeta, KvRecord, LeaseRecord, RevisionGroup, as_some, decode, delete_event, encode, meta};
use super::reopen::Reopen;
use super::wal::{Wal, WalOp, to_batch};
use super::{MAX_GROUP, RevisionEvents, Shared};
use crate::ssot::clock::now_ms;
use crate::ssot::store::{Event, EventKind, LeaseId, LeaseInfo, Op, Revision, StoreError, Txn, TxnResponse, check_txn};

type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

pub(super) enum Command {
    Txn(Txn, oneshot::Sender<Result<TxnResponse, StoreError>>),
    LeaseGrant(Duration, oneshot::Sender<Result<LeaseInfo, StoreError>>),
    LeaseKeepAlive(LeaseId, oneshot::Sender<Result<LeaseInfo, StoreError>>),
    LeaseRevoke(LeaseId, oneshot::Sender<Result<Revision, StoreError>>),
    Compact(Revision, oneshot::Sender<Result<Revision, StoreError>>),
}

/// A key and its new value and lease (`None`: delete).
type Change = (Vec<u8>, Option<(Vec<u8>, LeaseId)>);

/// One group commit in the making.
pub(super) struct Group {
    pub(super) ops: Vec<WalOp>,
    /// The current state of every key the group has read or changed (None:
    /// absent). The writer is the only mutator, so a cached read stays true.
    overlay: HashMap<Vec<u8>, Option<KvMeta>>,
    published: Vec<Arc<RevisionEvents>>,
    /// The group's revisions and the keys each changed: one `r` record.
    revisions: RevisionGroup,
    replies: Vec<Reply>,
    /// A compaction point this group makes durable.
    pub(super) compacted: Option<Revision>,
}

impl Group {
    fn new() -> Self {
        Self {
            ops: Vec::new(),
            overlay: HashMap::new(),
            published: Vec::new(),
            revisions: Vec::new(),
            replies: Vec::new(),
            compacted: None,
        }
    }

    pub(super) fn reply<T: Send + 'static>(&mut self, tx: oneshot::Sender<Result<T, StoreError>>, value: T) {
        self.replies.push(Box::new(move |failure| {
            let _ = tx.send(match failure {
                None => Ok(value),
                Some(message) => Err(StoreError::Backend(message.to_string())),
            });
        }));
    }
}

/// The single writer. Its in-memory state runs ahead of the log only inside
/// a group; a failed commit stops the writer, so memory and disk never
/// diverge for an acknowledged request.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    /// The writer's handle on the tree in `shared`; `None` only in the middle
    /// of a reopen.
    pub(super) tree: Option<sled::Tree>,
    pub(super) reopen: Reopen,
    pub(super) wal: Wal,
    pub(super) revision: Revision,
    pub(super) compacted: Revision,
    pub(super) next_lease: LeaseId,
    pub(super) leases: Arc<Mutex<HashMap<LeaseId, LeaseRecord>>>,
    pub(super) lease_keys: HashMap<LeaseId, BTreeSet<Vec<u8>>>,
    pub(super) sweep: Option<Sweep>,
    pub(super) checkpoints: Checkpoints,
}

enum Wake {
    Command(Option<Command>),
    LeaseDeadline,
    /// Nothing is waiting: time for a step of background work.
    Idle,
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>, runtime: tokio::runtime::Handle) {
        let span = tracing::info_span!("ssot_writer");
        let _entered = span.enter();
        loop {
            let sweeping = self.sweep.is_some() && self.may_sweep();
            let wake = if sweeping {
                match rx.try_recv() {
                    Ok(command) => Wake::Command(Some(command)),
                    Err(mpsc::error::TryRecvError::Empty) => Wake::Idle,
                    Err(mpsc::error::TryRecvError::Disconnected) => Wake::Command(None),
                }
            } else {
                let mut deadline = self.next_deadline();
                if self.sweep.is_some() {
                    // A sweep waiting for a checkpoint or a history read looks again soon.
                    let soon = now_ms() + 10;
                    deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
                }
                runtime.block_on(async {
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
                })
            };
            let mut group = Group::new();
            match wake {
                Wake::Command(None) => break,
                Wake::Command(Some(command)) => self.apply(&mut group, command),
                Wake::LeaseDeadline | Wake::Idle => {}
            }
            while group.replies.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(command) => self.apply(&mut group, command),
                    Err(_) => break,
                }
            }
            self.expire_leases(&mut group);
            if !self.commit(group) {
                return;
            }
            if self.sweep.is_some() && self.may_sweep() {
                self.sweep_step();
            }
        }
        if let Err(error) = self.tree().flush() {
            error!(%error, "flush on shutdown failed");
        }
        debug!("writer stopped");
    }

    /// Old history may be swept now: no checkpoint is being copied and no
    /// history read walks it (neither reads from a snapshot).
    fn may_sweep(&self) -> bool {
        !self.checkpoints.busy() && self.shared.history_readers.load(Ordering::Acquire) == 0
    }

    fn apply(&mut self, group: &mut Group, command: Command) {
        match command {
            Command::Txn(txn, tx) => match self.apply_txn(group, txn) {
                Ok(response) => group.reply(tx, response),
                Err(error) => {
                    let _ = tx.send(Err(error));
                }
            },
            Command::LeaseGrant(ttl, tx) => match self.grant(group, ttl) {
                Ok(info) => group.reply(tx, info),
                Err(error) => {
                    let _ = tx.send(Err(error));
                }
            },
            Command::LeaseKeepAlive(id, tx) => match self.keep_alive(group, id) {
                Ok(info) => group.reply(tx, info),
                Err(error) => {
                    let _ = tx.send(Err(error));
                }
            },
            Command::LeaseRevoke(id, tx) => match self.revoke(group, id) {
                Ok(revision) => group.reply(tx, revision),
                Err(error) => {
                    let _ = tx.send(Err(error));
                }
            },
            Command::Compact(revision, tx) => match self.compact(group, revision) {
                Ok(revision) => group.reply(tx, revision),
                Err(error) => {
                    let _ = tx.send(Err(error));
                }
            },
        }
    }

    fn current(&self, group: &mut Group, key: &[u8]) -> Result<Option<KvMeta>, StoreError> {
        if let Some(state) = group.overlay.get(key) {
            return Ok(*state);
        }
        let state = match self.tree().get(layout::cur(key))? {
            Some(raw) => Some(decode::<KvMeta>(&raw)?),
            None => None,
        };
        group.overlay.insert(key.to_vec(), state);
        Ok(state)
    }

    fn keys_in_range(&self, group: &Group, start: &[u8], end: &[u8]) -> Result<BTreeSet<Vec<u8>>, StoreError> {
        let mut keys = BTreeSet::new();
        for item in self.tree().range(layout::cur(start)..layout::cur(end)) {
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
        check_txn(&txn)?;
        for op in &txn.ops {
            if let Op::Put { lease, .. } = op
                && *lease != 0
                && !self.leases.lock().expect("lease mutex poisoned").contains_key(lease)
            {
                return Err(StoreError::LeaseNotFound(*lease));
            }
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
    pub(super) fn commit_changes(
        &mut self,
        group: &mut Group,
        plan: Vec<Change>,
        actor: Option<&str>,
    ) -> Result<Revision, StoreError> {
        let revision = self.revision + 1;
        let actor = actor.unwrap_or(crate::ssot::actor::DAEMON);
        // Every read that can fail comes first: a transaction that fails leaves nothing in the group.
        let previous: Vec<Option<KvMeta>> =
            plan.iter().map(|(key, _)| self.current(group, key)).collect::<Result<_, _>>()?;
        let mut events = Vec::new();
        let mut keys = Vec::new();
        for ((key, change), previous) in plan.into_iter().zip(previous) {
            match change {
                Some((value, lease)) => {
                    let record = KvRecord {
                        value,
                        create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: previous.as_ref().map_or(0, |p| p.version) + 1,
                        lease,
                        actor: actor.to_string(),
                    };
                    let previous_lease = previous.as_ref().map_or(0, |p| p.lease);
                    if previous_lease != lease {
                        self.detach(group, previous_lease, &key);
                        self.attach(group, lease, &key);
                    }
                    // The value goes to history only; `k` points at it.
                    let meta = record.meta();
                    group.ops.push(WalOp::put(layout::hist(&key, revision), as_some(&encode(&record))));
                    group.ops.push(WalOp::put(layout::cur(&key), encode(&meta)));
                    group.overlay.insert(key.clone(), Some(meta));
                    events.push(Event { kind: EventKind::Put, kv: record.into_kv(key.clone()) });
                    keys.push(key);
                }
                None => {
                    let Some(previous) = previous else { continue };
                    self.detach(group, previous.lease, &key);
                    group.ops.push(WalOp::remove(layout::cur(&key)));
                    group.ops.push(WalOp::put(layout::hist(&key, revision), encode(&None::<KvRecord>)));
                    group.overlay.insert(key.clone(), None);
                    events.push(delete_event(key.clone(), revision));
                    keys.push(key);
                }
            }
        }
        if events.is_empty() {
            return Ok(self.revision);
        }
        group.revisions.push((revision, keys.into_iter().map(serde_bytes::ByteBuf::from).collect()));
        self.revision = revision;
        group.published.push(Arc::new(RevisionEvents { revision, events }));
        Ok(revision)
    }

    /// Makes the group durable (one log record, synced), applies it to the
    /// tree, then answers and publishes. Returns false when the store can no
    /// longer be written (the writer stops).
    fn commit(&mut self, group: Group) -> bool {
        let Group { mut ops, published, revisions, replies, compacted, .. } = group;
        if let Some(&(last, _)) = revisions.last() {
            ops.push(WalOp::put(layout::rev(last), encode(&revisions)));
        }
        if !ops.is_empty() {
            ops.push(WalOp::put(layout::meta(meta::REVISION), encode(&self.revision)));
            let started = std::time::Instant::now();
            let durable = self.wal.append(&ops).and_then(|seq| {
                let mut batch = sled::Batch::default();
                to_batch(&ops, &mut batch);
                batch.insert(layout::meta(meta::LOG_SEQ), encode(&seq));
                self.reopen.applied(ops.len() + 1);
                self.tree().apply_batch(batch)?;
                fail::fail_point!("store-after-apply", |_| super::crash());
                Ok(())
            });
            crate::metrics::get().store_write_seconds.observe(started.elapsed().as_secs_f64());
            if let Err(error) = durable {
                error!(%error, "group commit failed; the store stops accepting writes");
                let message = format!("storage failure (the outcome of this write is unknown): {error}");
                for reply in replies {
                    reply(Some(&message));
                }
                return false;
            }
        }
        self.shared.committed.store(self.revision, Ordering::Release);
        if let Some(target) = compacted {
            self.shared.compacted.store(target, Ordering::Release);
            self.start_sweep(target);
        }
        for reply in replies {
            reply(None);
        }
        for revision in published {
            // No receiver is fine: watchers that come later read history.
            let _ = self.shared.events.send(revision);
        }
        let appended = self.wal.take_appended();
        // A reopen comes first: a checkpoint started now would hold it off.
        if !self.reopen_if_due() {
            return false;
        }
        let seq = self.wal.next_seq() - 1;
        let tree = self.tree.as_ref().expect("the writer's tree is open between groups");
        self.checkpoints.wrote(appended, seq, tree);
        true
    }

    /// The tree (open between groups: only a reopen lets go of it).
    pub(super) fn tree(&self) -> &sled::Tree {
        self.tree.as_ref().expect("the writer's tree is open between groups")
    }
}
