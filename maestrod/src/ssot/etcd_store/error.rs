//! etcd's answers, told apart: the few that the `Store` contract names
//! (compacted, future revision, unknown lease, bad request) and the rest, where
//! an unreachable cluster is `Unavailable` (worth a retry) and anything else a
//! storage failure.

use std::time::Duration;

use etcd_client::Error;
use tonic::Code;

use crate::ssot::store::StoreError;

/// Why one etcd call failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The requested revision has been compacted.
    Compacted,
    /// The requested revision is newer than the cluster's.
    FutureRevision,
    /// A lease named by the request does not exist (any more).
    LeaseNotFound,
    /// etcd refused the request itself (duplicate key in a transaction, a
    /// request larger than `--max-request-bytes`).
    Invalid(String),
    /// No answer: no endpoint reachable, no leader, or the deadline passed.
    Unavailable(String),
    /// Anything else (credentials refused, the cluster's space quota, ...).
    Other(String),
    /// A write was sent and no answer came: etcd may have applied it.
    Unconfirmed(String),
}

impl Failure {
    pub(super) fn timeout(limit: Duration) -> Self {
        Failure::Unavailable(format!("etcd did not answer within {}s", limit.as_secs()))
    }

    /// The failure as the `Store` contract reports it, for the cases that need no context.
    pub(super) fn into_store_error(self) -> StoreError {
        match self {
            Failure::Invalid(message) => StoreError::InvalidArgument(message),
            Failure::Unavailable(message) => StoreError::Unavailable(message),
            Failure::Compacted | Failure::FutureRevision | Failure::LeaseNotFound => {
                StoreError::Backend(format!("etcd answered {self:?} where it was not expected"))
            }
            Failure::Other(message) | Failure::Unconfirmed(message) => StoreError::Backend(message),
        }
    }
}

/// The request never reached a member: the connection to it could not be made.
pub(super) fn never_sent(error: &Error) -> bool {
    let status = match error {
        Error::TransportError(_) => return true,
        Error::GRpcStatus(status) if status.code() == Code::Unavailable => status,
        _ => return false,
    };
    // tonic marks a failed connect with a `ConnectError` source; a proxy's "upstream connect
    // error" (which may have forwarded the request) has none.
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    status.message() == "tcp connect error"
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        match error {
            Error::GRpcStatus(status) => {
                let message = status.message().to_string();
                match status.code() {
                    Code::OutOfRange if message.contains("compacted") => Failure::Compacted,
                    Code::OutOfRange if message.contains("future revision") => Failure::FutureRevision,
                    Code::NotFound if message.contains("lease not found") => Failure::LeaseNotFound,
                    Code::InvalidArgument if message.contains("authentication failed") => {
                        Failure::Other(format!("etcd refused maestrod's credentials: {message}"))
                    }
                    Code::InvalidArgument | Code::ResourceExhausted
                        if message.contains("too large") || message.contains("larger than max") =>
                    {
                        Failure::Invalid(format!(
                            "{message}: the transaction is larger than etcd's --max-request-bytes (a snapshot restore \
                             writes a project's whole state at once; a single value may be up to {} MiB)",
                            crate::ssot::store::MAX_VALUE_LEN >> 20
                        ))
                    }
                    Code::InvalidArgument if message.contains("too many operations") => Failure::Invalid(format!(
                        "{message}: the transaction has more operations than etcd's --max-txn-ops (a snapshot \
                         restore compares every resource of a project)"
                    )),
                    Code::InvalidArgument => Failure::Invalid(message),
                    // "not leader" and the like: the cluster is between leaders.
                    Code::FailedPrecondition => Failure::Unavailable(format!("etcd: {message}")),
                    // The connection broke under the request (h2 reset): unreachable, not a bug.
                    Code::Unknown if message.contains("transport error") => {
                        Failure::Unavailable(format!("etcd: {message}"))
                    }
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Aborted
                    | Code::ResourceExhausted => Failure::Unavailable(format!("etcd: {message}")),
                    Code::Unauthenticated | Code::PermissionDenied => {
                        Failure::Other(format!("etcd refused maestrod's credentials: {message}"))
                    }
                    _ => Failure::Other(format!("etcd: {message} ({:?})", status.code())),
                }
            }
            Error::TransportError(error) => Failure::Unavailable(format!("cannot reach etcd: {error}")),
            Error::IoError(error) => Failure::Unavailable(format!("cannot reach etcd: {error}")),
            Error::LeaseKeepAliveError(message) if message.contains("lease not found") => Failure::LeaseNotFound,
            Error::WatchError(message) | Error::LeaseKeepAliveError(message) => {
                Failure::Unavailable(format!("etcd stream ended: {message}"))
            }
            other => Failure::Other(format!("etcd client: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> Failure {
        Failure::from(Error::GRpcStatus(tonic::Status::new(code, message)))
    }

    #[test]
    fn only_requests_refused_at_connect_count_as_never_sent() {
        let refused = Error::GRpcStatus(tonic::Status::unavailable("tcp connect error"));
        assert!(never_sent(&refused));
        let proxy = "upstream connect error or disconnect/reset before headers";
        assert!(!never_sent(&Error::GRpcStatus(tonic::Status::unavailable(proxy))));
        // Sent, then the connection broke: etcd may have applied it.
        let broken = Error::GRpcStatus(tonic::Status::unavailable("error reading a body from connection"));
        assert!(!never_sent(&broken));
        assert!(!never_sent(&Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"))));
    }

    #[test]
    fn etcds_answers_map_to_the_contract() {
        assert!(matches!(
            status(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
            Failure::Compacted
        ));
        assert!(matches!(
            status(Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
            Failure::FutureRevision
        ));
        assert!(matches!(status(Code::NotFound, "etcdserver: requested lease not found"), Failure::LeaseNotFound));
        assert!(matches!(
            status(Code::InvalidArgument, "etcdserver: duplicate key given in txn request").into_store_error(),
            StoreError::InvalidArgument(_)
        ));
        let large = status(Code::InvalidArgument, "etcdserver: request is too large").into_store_error();
        assert!(large.to_string().contains("--max-request-bytes"), "{large}");
        let large = status(Code::ResourceExhausted, "grpc: received message larger than max (14407121 vs. 8912896)");
        assert!(matches!(large, Failure::Invalid(ref m) if m.contains("--max-request-bytes")), "{large:?}");
        assert!(matches!(
            status(Code::Unavailable, "etcdserver: no leader").into_store_error(),
            StoreError::Unavailable(_)
        ));
        let denied = status(Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password");
        assert!(matches!(denied, Failure::Other(ref m) if m.contains("credentials")), "{denied:?}");
    }
}
