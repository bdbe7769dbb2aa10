//! How the API steers a running loop: cancel, pause, a human's decision
//! (answered by the loop, which may refuse it), and what it publishes.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::fsm::Decision;
use crate::ssot::loops::{LoopEvent, LoopRecord};

/// A decision waiting for the loop, with the channel its answer goes back on:
/// `Err(reason)` when the loop refuses it (nothing to approve, a broken configuration).
pub struct PendingDecision {
    pub decision: Decision,
    pub reply: oneshot::Sender<Result<(), String>>,
}

pub struct Control {
    /// Cancelled when the loop is cancelled or the daemon shuts down (a child of the daemon's token).
    pub cancel: CancellationToken,
    /// Set by `cancel` only: tells a user's cancel from a shutdown.
    pub cancel_requested: AtomicBool,
    pub pause: AtomicBool,
    pub decision: Mutex<Option<PendingDecision>>,
    pub wake: Notify,
    pub published: watch::Sender<LoopRecord>,
    /// API keys the loop was started with (memory only).
    pub keys: Mutex<std::collections::BTreeMap<String, String>>,
    /// Every event as soon as it is durable, for live followers (the SSOT
    /// has them all; a follower that lags reads them from there).
    pub events: broadcast::Sender<LoopEvent>,
}

impl Control {
    pub fn new(record: LoopRecord, shutdown: &CancellationToken) -> Arc<Control> {
        Arc::new(Control {
            cancel: shutdown.child_token(),
            cancel_requested: AtomicBool::new(false),
            pause: AtomicBool::new(false),
            decision: Mutex::new(None),
            wake: Notify::new(),
            published: watch::channel(record).0,
            keys: Mutex::new(Default::default()),
            // Small: a follower that falls further behind reads from the SSOT.
            events: broadcast::channel(64).0,
        })
    }
}
