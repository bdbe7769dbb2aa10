//! What one user may ask of the daemon at once: a request rate (token
//! bucket), requests in flight and open streams, per token. Over a limit is
//! `RESOURCE_EXHAUSTED` with `google.rpc.RetryInfo` saying when to retry.
//! Each token's open streams end (UNAUTHENTICATED) when the token is revoked.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::Frame;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The limits of one user (one token).
#[derive(Debug, Clone, Copy)]
pub struct UserLimits {
    /// Requests per second on average; 0 is no limit.
    pub requests_per_second: u32,
    /// Requests that may come at once after a quiet spell.
    pub burst: u32,
    /// Unary requests being handled at once.
    pub concurrent: usize,
    /// Watch and event streams open at once.
    pub streams: usize,
}

impl Default for UserLimits {
    fn default() -> Self {
        UserLimits { requests_per_second: 1000, burst: 2000, concurrent: 128, streams: 64 }
    }
}

struct Usage {
    tokens: f64,
    refilled: Instant,
    in_flight: usize,
    streams: usize,
    revoked: CancellationToken,
}

/// Every token's usage.
pub struct Quotas {
    limits: UserLimits,
    usage: Mutex<HashMap<String, Usage>>,
}

/// A request's place in its user's limits; given back when dropped.
pub struct Permit {
    quotas: Arc<Quotas>,
    key: String,
    stream: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut usage = self.quotas.usage.lock().expect("quota lock");
        if let Some(u) = usage.get_mut(&self.key) {
            if self.stream {
                u.streams = u.streams.saturating_sub(1);
            } else {
                u.in_flight = u.in_flight.saturating_sub(1);
            }
        }
    }
}

fn exhausted(message: String, retry_after: Duration) -> Status {
    Status::with_error_details(Code::ResourceExhausted, message, ErrorDetails::with_retry_info(Some(retry_after)))
}

impl Quotas {
    pub fn new(limits: UserLimits) -> Arc<Quotas> {
        Arc::new(Quotas { limits, usage: Mutex::new(HashMap::new()) })
    }

    /// Admits one request of the user whose token hashes to `key`, or says
    /// when to retry. Returns the permit and the token's revocation signal.
    pub fn admit(self: &Arc<Self>, key: &str, user: &str, stream: bool) -> Result<(Permit, CancellationToken), Status> {
        let limits = self.limits;
        let mut all = self.usage.lock().expect("quota lock");
        let now = Instant::now();
        let usage = all.entry(key.to_string()).or_insert_with(|| Usage {
            tokens: f64::from(limits.burst.max(1)),
            refilled: now,
            in_flight: 0,
            streams: 0,
            revoked: CancellationToken::new(),
        });
        if limits.requests_per_second > 0 {
            let rate = f64::from(limits.requests_per_second);
            let burst = f64::from(limits.burst.max(1));
            usage.tokens = (usage.tokens + now.duration_since(usage.refilled).as_secs_f64() * rate).min(burst);
            usage.refilled = now;
            if usage.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - usage.tokens) / rate).max(Duration::from_millis(1));
                return Err(exhausted(
                    format!(
                        "user {user} sends more than {} requests per second; retry in {} ms",
                        limits.requests_per_second,
                        wait.as_millis().max(1)
                    ),
                    wait,
                ));
            }
            usage.tokens -= 1.0;
        }
        if stream {
            if usage.streams >= limits.streams {
                return Err(exhausted(
                    format!("user {user} has {} streams open, the most allowed; close one first", usage.streams),
                    Duration::from_secs(1),
                ));
            }
            usage.streams += 1;
        } else {
            if usage.in_flight >= limits.concurrent {
                return Err(exhausted(
                    format!("user {user} has {} requests in flight, the most allowed; retry shortly", usage.in_flight),
                    Duration::from_millis(100),
                ));
            }
            usage.in_flight += 1;
        }
        let revoked = usage.revoked.clone();
        Ok((Permit { quotas: self.clone(), key: key.to_string(), stream }, revoked))
    }

    /// Ends the streams of every token not in `present` (revoked users) and forgets them.
    pub fn revoke_missing(&self, present: &HashSet<String>) -> usize {
        let mut all = self.usage.lock().expect("quota lock");
        let gone: Vec<String> = all.keys().filter(|k| !present.contains(*k)).cloned().collect();
        for key in &gone {
            if let Some(usage) = all.remove(key) {
                usage.revoked.cancel();
            }
        }
        gone.len()
    }
}

/// A streaming response that holds its permit while open and ends with
/// UNAUTHENTICATED as soon as its token is revoked.
pub struct GuardedBody {
    inner: Body,
    _permit: Permit,
    revoked: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl GuardedBody {
    pub fn new(inner: Body, permit: Permit, revoked: CancellationToken) -> GuardedBody {
        GuardedBody { inner, _permit: permit, revoked: Box::pin(revoked.cancelled_owned()), ended: false }
    }
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.revoked.as_mut().poll(cx).is_ready() {
            self.ended = true;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from(Code::Unauthenticated as i32));
            trailers.insert("grpc-message", http::HeaderValue::from_static("the token was revoked"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_over_the_rate_is_told_when_to_retry_and_others_are_not_touched() {
        let quotas = Quotas::new(UserLimits { requests_per_second: 10, burst: 3, concurrent: 100, streams: 1 });
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(quotas.admit("a", "alice", false).unwrap());
        }
        let refused = quotas.admit("a", "alice", false).err().unwrap();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let retry = refused.get_details_retry_info().unwrap().retry_delay.unwrap();
        assert!(retry > Duration::ZERO && retry <= Duration::from_millis(100), "{retry:?}");
        assert!(quotas.admit("b", "bob", false).is_ok(), "bob has his own bucket");
        std::thread::sleep(retry + Duration::from_millis(20));
        assert!(quotas.admit("a", "alice", false).is_ok(), "after the wait");
    }

    #[test]
    fn concurrency_and_streams_are_given_back_and_revocation_ends_streams() {
        let quotas = Quotas::new(UserLimits { requests_per_second: 0, burst: 0, concurrent: 2, streams: 1 });
        let one = quotas.admit("a", "alice", false).unwrap();
        let _two = quotas.admit("a", "alice", false).unwrap();
        assert!(quotas.admit("a", "alice", false).is_err(), "two in flight at most");
        drop(one);
        assert!(quotas.admit("a", "alice", false).is_ok(), "a finished request frees its place");
        let (_stream, revoked) = quotas.admit("a", "alice", true).unwrap();
        assert!(quotas.admit("a", "alice", true).is_err(), "one stream at most");
        assert!(!revoked.is_cancelled());
        assert_eq!(quotas.revoke_missing(&HashSet::from(["b".to_string()])), 1);
        assert!(revoked.is_cancelled(), "the revoked token's stream is told to end");
    }
}
