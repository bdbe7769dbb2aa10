//! `SsotError`: what the domain layer reports, one variant per kind of failure
//! a client can act on. The API maps each to a gRPC status in one place.

use super::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SsotError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{kind} {id} was modified: etag {expected} is stale, the current revision is {current}")]
    StaleEtag { kind: &'static str, id: String, expected: u64, current: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A loop's write refused because its daemon no longer owns the loop.
    #[error("{0}")]
    Fenced(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SsotError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SsotError::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        SsotError::NotFound { kind, id: id.into() }
    }
}

pub type Result<T, E = SsotError> = std::result::Result<T, E>;
