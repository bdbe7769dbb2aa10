//! Fencing: what makes a loop's writes conditional on its daemon still owning
//! the loop.
//!
//! A daemon owns a loop through an owner key attached to the daemon's lease
//! (`owners.rs`). The loop's task runs inside [`scope`] with a [`Fence`]:
//! every store transaction it makes carries a compare on that key's revision,
//! so once the ownership is gone (the lease expired, another daemon took the
//! loop) the store itself refuses each write. Lease calls and harness actions,
//! which no compare can guard, ask [`check`] first: it refuses once the
//! daemon's own deadline (the send time of its last confirmed keep-alive plus
//! the TTL) has passed, so a daemon frozen past its lease stops at its first
//! step after it wakes, before any round trip.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::SsotError;
use super::store::{Compare, Revision};

tokio::task_local! {
    static FENCE: Fence;
}

/// Time since boot, counting time suspended (`CLOCK_BOOTTIME`): a lease's
/// deadline passes while the machine sleeps, and a monotonic clock would not see it.
pub fn now() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(time) => Duration::new(time.tv_sec().max(0) as u64, time.tv_nsec().clamp(0, 999_999_999) as u32),
        Err(_) => {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed()
        }
    }
}

/// How long a daemon may act on its lease: until the send time of its last
/// confirmed keep-alive plus the TTL (the store's deadline is never earlier).
/// Times are [`now`]'s.
#[derive(Debug)]
pub struct Tenure {
    until: Mutex<Option<Duration>>,
}

impl Tenure {
    /// A tenure confirmed by a grant or keep-alive sent at `sent`, for `ttl`.
    pub fn new(sent: Duration, ttl: Duration) -> Arc<Tenure> {
        Arc::new(Tenure { until: Mutex::new(Some(sent + ttl)) })
    }

    /// A keep-alive sent at `sent` was confirmed for `ttl`.
    pub fn renewed(&self, sent: Duration, ttl: Duration) {
        let mut until = self.until.lock().expect("tenure lock");
        if until.is_some() {
            *until = Some(until.map_or(sent + ttl, |u| u.max(sent + ttl)));
        }
    }

    /// The lease is known to be gone: nothing may be done on it any more.
    pub fn end(&self) {
        *self.until.lock().expect("tenure lock") = None;
    }

    pub fn is_valid(&self) -> bool {
        self.until.lock().expect("tenure lock").is_some_and(|until| now() < until)
    }
}

/// The condition a loop's writes carry.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The loop (for messages).
    pub loop_id: String,
    /// The owner key and the revision this daemon wrote it at.
    pub key: Vec<u8>,
    pub revision: Revision,
    pub tenure: Arc<Tenure>,
}

impl Fence {
    pub fn compare(&self) -> Compare {
        Compare::mod_revision(self.key.clone(), self.revision)
    }

    pub fn lost(&self) -> SsotError {
        SsotError::Fenced(format!(
            "this daemon no longer owns {}: its lease ended (another daemon may run the loop now)",
            self.loop_id
        ))
    }
}

/// Runs `future` with its store writes fenced by `fence`.
pub async fn scope<F: Future>(fence: Fence, future: F) -> F::Output {
    FENCE.scope(fence, future).await
}

/// The fence of the current task, if it runs a loop.
pub fn current() -> Option<Fence> {
    FENCE.try_with(Clone::clone).ok()
}

/// Refuses when the current task's fence is known to be lost (no fence: fine).
pub fn check() -> Result<(), SsotError> {
    match current() {
        Some(fence) if !fence.tenure.is_valid() => Err(fence.lost()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fence_holds_until_its_tenure_ends_or_runs_out() {
        let tenure = Tenure::new(now(), Duration::from_secs(60));
        let fence = Fence { loop_id: "loop-1".into(), key: b"k".to_vec(), revision: 3, tenure: tenure.clone() };
        assert!(check().is_ok(), "no fence outside a loop");
        scope(fence.clone(), async { assert!(check().is_ok()) }).await;
        tenure.end();
        tenure.renewed(now(), Duration::from_secs(60));
        let refused = scope(fence, async { check() }).await;
        assert!(matches!(refused, Err(SsotError::Fenced(_))), "{refused:?}");

        let short = Tenure::new(now().saturating_sub(Duration::from_secs(2)), Duration::from_secs(1));
        assert!(!short.is_valid(), "a keep-alive sent 2 s ago for 1 s has run out");
        short.renewed(now(), Duration::from_secs(1));
        assert!(short.is_valid());
    }
}
