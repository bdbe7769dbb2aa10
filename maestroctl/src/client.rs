//! The connection to maestrod and how RPC failures read on one line.

use std::time::Duration;

use anyhow::anyhow;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

/// The URL for `server`: `host:port` gets `http://` in front; anything that
/// is not an `http://host[:port]` address is refused with what to write instead.
pub(crate) fn endpoint_url(server: &str) -> anyhow::Result<String> {
    let invalid = || anyhow!("--server {server:?} is not a valid address (expected e.g. http://127.0.0.1:7700)");
    let url = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    let endpoint = Endpoint::from_shared(url.clone()).map_err(|_| invalid())?;
    match endpoint.uri().scheme_str() {
        Some("http") if endpoint.uri().host().is_some_and(|h| !h.is_empty()) => Ok(url),
        Some("https") => {
            Err(anyhow!("--server {server:?}: TLS is not supported yet; use http:// on a trusted network"))
        }
        _ => Err(invalid()),
    }
}

/// The token given on the command line or in the environment.
static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

pub(crate) fn set_token(token: Option<String>) {
    let _ = TOKEN.set(token.filter(|t| !t.trim().is_empty()));
}

/// The token to send: the one given, else for the local daemon maestroctl
/// starts (data in ~/.maestro/data) the admin token it wrote there. Never a
/// file's token to a server named with --server: it could be anyone's.
pub(crate) fn token(local: bool) -> String {
    if let Some(Some(token)) = TOKEN.get() {
        return token.clone();
    }
    if local && let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let file = std::path::PathBuf::from(home).join(".maestro/data/admin.token");
        if let Ok(token) = std::fs::read_to_string(file) {
            return token.trim().to_string();
        }
    }
    String::new()
}

/// Whether the daemon this process talks to is on this machine (set when it connects).
static LOOPBACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the daemon is on this machine: only then does `run` hand it API keys.
pub(crate) fn daemon_is_local() -> bool {
    LOOPBACK.load(std::sync::atomic::Ordering::SeqCst)
}

/// Records whether `url` names this machine.
pub(crate) fn note_server(url: &str) {
    let host = Endpoint::from_shared(url.to_string()).ok().and_then(|e| e.uri().host().map(str::to_string));
    let local = host.is_some_and(|h| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    LOOPBACK.store(local, std::sync::atomic::Ordering::SeqCst);
}

/// Connects to `server` (e.g. `http://127.0.0.1:7700` or `127.0.0.1:7700`),
/// failing fast with a message that says what to do.
pub(crate) async fn connect(server: &str) -> anyhow::Result<Channel> {
    note_server(&endpoint_url(server)?);
    let endpoint =
        Endpoint::from_shared(endpoint_url(server)?)?.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true);
    endpoint.connect().await.map_err(|error| {
        let cause = std::error::Error::source(&error).map_or_else(|| error.to_string(), |s| s.to_string());
        anyhow!(
            "cannot reach maestrod at {server}: {cause}; is it running? (start it with `maestrod`, or pass --server)"
        )
    })
}

/// The canonical name of a status code, as gRPC documents it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pub(crate) fn status_error(status: Status) -> anyhow::Error {
    anyhow!("{} ({})", status.message(), code_name(status.code()))
}

/// Unwraps a unary reply, turning a status into a one-line error.
pub(crate) fn reply<T>(result: Result<Response<T>, Status>) -> anyhow::Result<T> {
    result.map(Response::into_inner).map_err(status_error)
}

/// Fetches the pages of a listing until the last (or until `limit` items, 0 for
/// no limit). `fetch(page_token)` returns one page's items and the next token.
pub(crate) async fn all_pages<T, F, Fut>(limit: usize, mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let (page, next) = fetch(page_token).await.map_err(status_error)?;
        items.extend(page);
        if limit > 0 && items.len() >= limit {
            items.truncate(limit);
            return Ok(items);
        }
        if next.is_empty() {
            return Ok(items);
        }
        page_token = next;
    }
}
