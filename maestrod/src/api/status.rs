//! The one place where domain and store errors become gRPC statuses.
//! Internal details go to the daemon log, never to the client.

use tonic::{Code, Status};
use tracing::error;

use crate::ssot::SsotError;
use crate::ssot::store::StoreError;

pub(crate) fn to_status(error: SsotError) -> Status {
    let code = match &error {
        SsotError::InvalidArgument { .. } => Code::InvalidArgument,
        SsotError::NotFound { .. } => Code::NotFound,
        SsotError::AlreadyExists { .. } => Code::AlreadyExists,
        SsotError::FailedPrecondition(_) => Code::FailedPrecondition,
        SsotError::StaleEtag { .. } | SsotError::Conflict(_) => Code::Aborted,
        SsotError::ResourceExhausted(_) => Code::ResourceExhausted,
        SsotError::PermissionDenied(_) => Code::PermissionDenied,
        SsotError::Store(store) => return store_status(store),
    };
    Status::new(code, capped(error.to_string()))
}

/// A status message stays small whatever the request held: gRPC carries it in
/// a header, and a huge one turns a clear INVALID_ARGUMENT into a transport error.
pub(crate) fn capped(mut message: String) -> String {
    const MAX: usize = 1024;
    if message.len() > MAX {
        let mut end = MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

pub(crate) fn store_status(error: &StoreError) -> Status {
    match error {
        StoreError::Compacted { .. } | StoreError::FutureRevision { .. } => Status::out_of_range(error.to_string()),
        StoreError::InvalidKey(_) | StoreError::InvalidArgument(_) => {
            Status::invalid_argument(capped(error.to_string()))
        }
        StoreError::LeaseNotFound(_) => Status::not_found(error.to_string()),
        StoreError::Closed => Status::unavailable("the daemon is shutting down; retry against the new instance"),
        StoreError::Backend(_) | StoreError::Locked { .. } | StoreError::Schema { .. } => {
            error!(%error, "storage failure while serving a request");
            Status::internal("internal storage error; the daemon log has the details")
        }
    }
}

/// A workspace's harness could not be opened or asked.
pub(crate) fn gate_status(error: crate::harness::GateError) -> Status {
    use crate::harness::policy::PolicyError;
    match &error {
        crate::harness::GateError::Policy(PolicyError::UnknownRole(..)) => {
            Status::invalid_argument(capped(format!("role: {error}")))
        }
        _ => Status::failed_precondition(capped(error.to_string())),
    }
}

/// `?`-friendly conversion for handlers.
pub(crate) trait IntoStatus<T> {
    fn status(self) -> Result<T, Status>;
}

impl<T> IntoStatus<T> for Result<T, SsotError> {
    fn status(self) -> Result<T, Status> {
        self.map_err(to_status)
    }
}
