//! One watch of a key prefix on etcd, delivered as the `Store` contract's
//! batches, and carried over a lost connection: the stream is opened again from
//! the revision after the last one delivered, so a caller sees every revision
//! once, in order, even while an etcd node goes away.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions, WatchResponse};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::error::Failure;
use super::{Shared, to_etcd, to_revision, value};
use crate::ssot::store::{Event, EventKind, KeyValue, Revision, StoreError, WatchBatch};

type Sender = mpsc::Sender<Result<WatchBatch, StoreError>>;

/// Batches of the follower a live watch may fall behind by before it reads
/// etcd's history on a watch of its own.
const HUB_BATCHES: usize = 4096;

/// The follower's batches (the whole prefix), for every live watch of this
/// process: one etcd watch carries each event once, however many callers
/// follow it.
pub(super) struct Hub {
    sender: broadcast::Sender<Arc<WatchBatch>>,
    /// Every batch above this revision reaches whoever subscribes now.
    pub(super) delivered: Revision,
}

impl Hub {
    pub(super) fn new() -> Hub {
        Hub { sender: broadcast::channel(HUB_BATCHES).0, delivered: 0 }
    }

    /// Sends under the hub's lock, so a subscriber knows exactly which batches it gets.
    pub(super) fn publish(&mut self, batch: WatchBatch) {
        self.delivered = self.delivered.max(batch.revision);
        let _ = self.sender.send(Arc::new(batch));
    }

    /// A receiver of every batch above the revision returned with it.
    pub(super) fn subscribe(&self) -> (broadcast::Receiver<Arc<WatchBatch>>, Revision) {
        (self.sender.subscribe(), self.delivered)
    }

    /// The follower skipped revisions (it fell behind a compaction) or ended:
    /// the current subscribers are cut off and read etcd's history themselves,
    /// and so does every new one until the follower says where it starts again.
    pub(super) fn reset(&mut self) {
        self.sender = broadcast::channel(HUB_BATCHES).0;
        self.delivered = Revision::MAX;
    }

    /// The follower (re)starts after `revision`: every later batch is published.
    pub(super) fn restart_after(&mut self, revision: Revision) {
        self.delivered = revision;
    }
}

/// Longest pause between two attempts to open the stream again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Attempts in a row that deliver nothing before the caller is told (about a minute).
const MAX_FAILURES: u32 = 35;

pub(super) struct Watch {
    pub(super) client: Client,
    pub(super) shared: Arc<Shared>,
    /// The watched prefix, with the store's own prefix in front.
    pub(super) key: Vec<u8>,
    /// Length of the store's prefix, cut from every key delivered.
    pub(super) root: usize,
    /// First revision to deliver; 0: the next one.
    pub(super) next: Revision,
    /// Counted in `status().watchers` (the store's own follower is not).
    pub(super) counted: bool,
    /// The start revision has been checked (and pinned when it was 0).
    pub(super) started: bool,
}

impl Watch {
    pub(super) async fn run(mut self, tx: Sender, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0;
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tx.closed() => break,
                outcome = self.stream(&tx) => outcome,
            };
            match outcome {
                Ok(Delivered::Some) => {
                    backoff = Duration::from_millis(50);
                    failures = 0;
                }
                // The follower never gives up: `status()` depends on it.
                Ok(Delivered::Nothing) if failures + 1 < MAX_FAILURES || !self.counted => failures += 1,
                Ok(Delivered::Nothing) => {
                    // Not one revision delivered in a minute of attempts: say so rather than go quiet.
                    let error = StoreError::Unavailable(format!(
                        "the etcd watch could not be opened again from revision {} (see the daemon's log)",
                        self.next
                    ));
                    let _ = tx.try_send(Err(error));
                    break;
                }
                // The follower starts over from now; the live watches fed by it catch up by themselves.
                Err(Ended::Refused(StoreError::Compacted { .. })) if !self.counted => {
                    self.shared.hub.lock().expect("hub lock").reset();
                    self.next = 0;
                    self.started = false;
                }
                Err(Ended::Refused(error)) => {
                    let _ = tx.try_send(Err(error));
                    break;
                }
                Err(Ended::CallerGone) => break,
            }
            // The stream broke: open it again after a pause, from where it stopped.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tx.closed() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if self.counted {
            self.shared.watchers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Delivers the events under `prefix` (relative to the store's) from the
    /// follower's batches, from `self.next`, which the hub has not delivered
    /// yet; if it falls behind or the hub is reset, it goes on from the next
    /// revision with an etcd watch of its own.
    pub(super) async fn run_shared(
        mut self,
        prefix: Vec<u8>,
        mut live: broadcast::Receiver<Arc<WatchBatch>>,
        delivered: Revision,
        tx: Sender,
        cancel: CancellationToken,
    ) {
        if self.next > delivered + 1 {
            // Past what this process has seen: etcd says whether it is past its revision too.
            match current_revision(&self.client, &self.key).await {
                Ok(current) if self.next > self.shared.seen_revision(current) + 1 => {
                    let _ = tx.try_send(Err(StoreError::FutureRevision { requested: self.next, current }));
                    self.shared.watchers.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                Ok(_) => {}
                // Unreachable for now: the etcd watch of its own waits it out.
                Err(_) => return self.run(tx, cancel).await,
            }
        }
        self.started = true;
        loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tx.closed() => break,
                batch = live.recv() => batch,
            };
            match batch {
                Ok(batch) if batch.revision < self.next => {}
                Ok(batch) => {
                    // One batch may span several revisions (etcd groups events): only those
                    // from `next` on are new to this watch.
                    let from = self.next;
                    self.next = batch.revision + 1;
                    let events: Vec<Event> = batch
                        .events
                        .iter()
                        .filter(|e| e.kv.mod_revision >= from && e.kv.key.starts_with(&prefix))
                        .cloned()
                        .collect();
                    if !events.is_empty() && tx.send(Ok(WatchBatch { revision: batch.revision, events })).await.is_err()
                    {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => {
                    debug!(next = self.next, "a live watch fell behind the shared one; reading etcd's history");
                    return self.run(tx, cancel).await;
                }
            }
        }
        self.shared.watchers.fetch_sub(1, Ordering::AcqRel);
    }

    /// Opens the stream once and delivers from it until it breaks.
    async fn stream(&mut self, tx: &Sender) -> Result<Delivered, Ended> {
        if !self.started {
            let current = match current_revision(&self.client, &self.key).await {
                Ok(current) => self.shared.seen_revision(current),
                Err(failure) => return Ok(not_yet(failure)),
            };
            if self.next == 0 {
                // "From the next revision" is pinned now, so a stream opened again later misses nothing.
                self.next = current + 1;
                if !self.counted {
                    self.shared.hub.lock().expect("hub lock").restart_after(current);
                }
            } else if self.next > current + 1 {
                return Err(Ended::Refused(StoreError::FutureRevision { requested: self.next, current }));
            }
            self.started = true;
        }
        // etcd accepts a watch from its compaction revision C itself but has dropped the
        // deletions made at C: refuse where a read of the revision before would be refused.
        if self.next > 1 {
            match read_at(&self.client, &self.key, self.next - 1).await {
                Ok(()) => {}
                Err(Failure::Compacted) => {
                    let compacted = self.shared.compacted.load(Ordering::Acquire).max(self.next + 1);
                    return Err(Ended::Refused(StoreError::Compacted {
                        requested: self.next,
                        compact_revision: compacted,
                    }));
                }
                Err(failure) => return Ok(not_yet(failure)),
            }
        }
        let options = WatchOptions::new().with_prefix().with_start_revision(to_etcd(self.next)).with_progress_notify();
        let mut stream = match self
            .client
            .watch_client()
            .max_decoding_message_size(super::MAX_ANSWER)
            .watch(self.key.clone(), Some(options))
            .await
        {
            Ok(stream) => stream,
            Err(error) => return Ok(not_yet(Failure::from(error))),
        };
        let mut delivered = Delivered::Nothing;
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    debug!("etcd ended the watch stream");
                    return Ok(delivered);
                }
                Err(error) => {
                    warn!(error = %error, next = self.next, "etcd watch broke; opening it again");
                    return Ok(delivered);
                }
            };
            if response.canceled() {
                // etcd's point C has lost the deletions made at C (see `find_compacted`).
                let compacted = to_revision(response.compact_revision()) + 1;
                if compacted > 1 {
                    self.shared.compacted.fetch_max(compacted, Ordering::AcqRel);
                    return Err(Ended::Refused(StoreError::Compacted {
                        requested: self.next,
                        compact_revision: compacted,
                    }));
                }
                warn!(reason = response.cancel_reason(), "etcd cancelled the watch; opening it again");
                return Ok(delivered);
            }
            if response.created() {
                continue;
            }
            if let Some(batch) = self.batch(&response).map_err(Ended::Refused)? {
                self.next = batch.revision + 1;
                tx.send(Ok(batch)).await.map_err(|_| Ended::CallerGone)?;
                delivered = Delivered::Some;
            }
        }
    }

    /// The events of one response past what was delivered, or a progress mark.
    fn batch(&self, response: &WatchResponse) -> Result<Option<WatchBatch>, StoreError> {
        let header = self.shared.seen(response.header());
        let mut events = Vec::with_capacity(response.events().len());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let mod_revision = to_revision(kv.mod_revision());
            if mod_revision < self.next {
                continue; // delivered before the stream was opened again
            }
            let key = kv.key()[self.root..].to_vec();
            let event = match event.event_type() {
                EventType::Put => {
                    let (actor, value) = value::decode(kv.value())?;
                    let kv = KeyValue {
                        key,
                        value: value.to_vec(),
                        create_revision: to_revision(kv.create_revision()),
                        mod_revision,
                        version: to_revision(kv.version()),
                        lease: to_revision(kv.lease()),
                        modified_by: actor.to_string(),
                    };
                    Event { kind: EventKind::Put, kv }
                }
                EventType::Delete => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision,
                        version: 0,
                        lease: 0,
                        modified_by: String::new(),
                    },
                },
            };
            events.push(event);
        }
        if let Some(last) = events.last() {
            return Ok(Some(WatchBatch { revision: last.kv.mod_revision, events }));
        }
        // No events: a progress notification, which etcd sends only once
        // everything up to its revision was delivered.
        if response.events().is_empty() && header >= self.next {
            return Ok(Some(WatchBatch { revision: header, events }));
        }
        Ok(None)
    }
}

enum Delivered {
    Some,
    Nothing,
}

enum Ended {
    /// The stream cannot go on (compacted, a future revision, a foreign value).
    Refused(StoreError),
    /// Nobody reads the stream any more.
    CallerGone,
}

/// A failure to (re)open the stream is waited out, whatever its cause: the
/// caller keeps its stream while etcd is away.
fn not_yet(failure: Failure) -> Delivered {
    debug!(?failure, "etcd watch cannot be opened yet");
    Delivered::Nothing
}

/// A read at `revision` that returns nothing: whether etcd still has it.
async fn read_at(client: &Client, key: &[u8], revision: Revision) -> Result<(), Failure> {
    let options = etcd_client::GetOptions::new().with_count_only().with_revision(to_etcd(revision));
    let mut kv = client.kv_client();
    kv.get(key.to_vec(), Some(options)).await.map(drop).map_err(Failure::from)
}

async fn current_revision(client: &Client, key: &[u8]) -> Result<Revision, Failure> {
    let options = etcd_client::GetOptions::new().with_count_only();
    let response = client
        .kv_client()
        .max_decoding_message_size(super::MAX_ANSWER)
        .get(key.to_vec(), Some(options))
        .await
        .map_err(Failure::from)?;
    Ok(response.header().map_or(0, |h| to_revision(h.revision())))
}
