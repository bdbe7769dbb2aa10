//! Watch streams: history from the requested revision (read on blocking
//! threads), then the live events the writer publishes after each group;
//! a watcher that falls behind the live channel goes back to history, so
//! nothing is lost however slow it is.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use super::{RevisionEvents, Shared, read};
use crate::ssot::store::{Revision, StoreError, WatchBatch};

/// Most events a watcher reads from history before yielding a message.
const HISTORY_CHUNK: usize = 512;

/// The task behind one watch stream: sends batches of `prefix`'s events from
/// revision `next` on until the receiver goes away or `cancel` fires.
pub(super) fn run(
    shared: Arc<Shared>,
    mut live: broadcast::Receiver<Arc<RevisionEvents>>,
    prefix: Vec<u8>,
    mut next: Revision,
    tx: mpsc::Sender<Result<WatchBatch, StoreError>>,
    cancel: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let span = tracing::debug_span!("watch", prefix = %String::from_utf8_lossy(&prefix), start = next);
    async move {
        loop {
            let committed = shared.committed.load(Ordering::Acquire);
            if next <= committed {
                // Catch up from history (also after falling behind the live channel).
                let chunk = {
                    let shared = shared.clone();
                    let prefix = prefix.clone();
                    tokio::task::spawn_blocking(move || read::history(&shared, &prefix, next, committed, HISTORY_CHUNK))
                        .await
                        .unwrap_or_else(|e| Err(StoreError::Backend(format!("history reader failed: {e}"))))
                };
                match chunk {
                    Ok((events, covered)) => {
                        next = covered + 1;
                        if !events.is_empty() && tx.send(Ok(WatchBatch { revision: covered, events })).await.is_err() {
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
            let take = |revision_events: &RevisionEvents, batch: &mut WatchBatch, next: &mut Revision| -> bool {
                if revision_events.revision < *next {
                    return true;
                }
                if revision_events.revision > *next {
                    return false;
                }
                batch.events.extend(revision_events.events.iter().filter(|e| e.kv.key.starts_with(&prefix)).cloned());
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
    .instrument(span)
}
