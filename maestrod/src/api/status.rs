//! The one place where domain and store errors become gRPC statuses.
//! Internal details go to the daemon log, never to the client.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::{error, warn};

use crate::ssot::SsotError;
use crate::ssot::store::StoreError;

/// The `domain` of every `google.rpc.ErrorInfo` the daemon sends.
pub(crate) const ERROR_DOMAIN: &str = "maestro.v1";

/// Machine-readable details (`google.rpc.ErrorInfo`, and `BadRequest` for a
/// bad field) clients in any language can branch on, beside the message.
fn details(error: &SsotError) -> Option<ErrorDetails> {
    let info = |reason: &str, metadata: Vec<(&str, String)>| {
        let metadata: HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
    };
    match error {
        SsotError::InvalidArgument { field, reason } => {
            let mut details = info("INVALID_FIELD", vec![("field", field.clone())]);
            details.add_bad_request_violation(field.clone(), capped(reason.clone()));
            Some(details)
        }
        SsotError::StaleEtag { kind, id, expected, current } => Some(info(
            "STALE_ETAG",
            vec![
                ("kind", (*kind).to_string()),
                ("id", crate::ssot::validate::shown(id)),
                ("etag", expected.to_string()),
                ("current_revision", current.to_string()),
            ],
        )),
        SsotError::NotFound { kind, id } => {
            Some(info("NOT_FOUND", vec![("kind", (*kind).to_string()), ("id", crate::ssot::validate::shown(id))]))
        }
        _ => None,
    }
}

pub(crate) fn to_status(error: SsotError) -> Status {
    let code = match &error {
        SsotError::InvalidArgument { .. } => Code::InvalidArgument,
        SsotError::NotFound { .. } => Code::NotFound,
        SsotError::AlreadyExists { .. } => Code::AlreadyExists,
        SsotError::FailedPrecondition(_) => Code::FailedPrecondition,
        SsotError::StaleEtag { .. } | SsotError::Conflict(_) | SsotError::Fenced(_) => Code::Aborted,
        SsotError::ResourceExhausted(_) => Code::ResourceExhausted,
        SsotError::PermissionDenied(_) => Code::PermissionDenied,
        SsotError::Store(store) => return store_status(store),
    };
    match details(&error) {
        Some(details) => Status::with_error_details(code, capped(error.to_string()), details),
        None => Status::new(code, capped(error.to_string())),
    }
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
        StoreError::Unavailable(_) => {
            warn!(%error, "the store is unreachable");
            Status::unavailable(format!("{error}; retry shortly"))
        }
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
