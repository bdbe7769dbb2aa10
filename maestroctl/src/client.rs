//! The connection to maestrod and how RPC failures read on one line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Response, Status};

/// The URL for `server`: `host:port` gets `http://` in front; `http://`,
/// `https://` and `unix:/path` addresses pass; anything else is refused with
/// what to write instead.
pub(crate) fn endpoint_url(server: &str) -> anyhow::Result<String> {
    let invalid = || {
        anyhow!(
            "--server {server:?} is not a valid address (expected e.g. http://127.0.0.1:7700, https://maestro.example:7700 \
             or unix:/path/to/maestrod.sock)"
        )
    };
    if let Some(path) = server.strip_prefix("unix://").or_else(|| server.strip_prefix("unix:")) {
        return if path.starts_with('/') { Ok(format!("unix:{path}")) } else { Err(invalid()) };
    }
    let url = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    let endpoint = Endpoint::from_shared(url.clone()).map_err(|_| invalid())?;
    match endpoint.uri().scheme_str() {
        Some("http" | "https") if endpoint.uri().host().is_some_and(|h| !h.is_empty()) => Ok(url),
        _ => Err(invalid()),
    }
}

/// How to reach and prove oneself to the daemon: the token and TLS files given
/// by flags, the environment or the current context.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    pub(crate) token: Option<String>,
    /// PEM CA certificates to trust for an `https://` server (default: the system's).
    pub(crate) ca_file: Option<PathBuf>,
    /// A client certificate and key, for a server that asks for one (mutual TLS).
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
}

/// The credentials of this process (set once, at start).
static CREDENTIALS: std::sync::OnceLock<Credentials> = std::sync::OnceLock::new();

pub(crate) fn set_credentials(mut credentials: Credentials) {
    credentials.token = credentials.token.filter(|t| !t.trim().is_empty());
    let _ = CREDENTIALS.set(credentials);
}

fn credentials() -> Credentials {
    CREDENTIALS.get().cloned().unwrap_or_default()
}

/// The token to send: the one given, else for the local daemon maestroctl
/// starts (data in ~/.maestro/data) the admin token it wrote there. Never a
/// file's token to a server named with --server: it could be anyone's.
pub(crate) fn token(local: bool) -> String {
    if let Some(token) = credentials().token {
        return token;
    }
    if local
        && let Some(file) = crate::home::maestro_file("data/admin.token")
        && let Ok(token) = std::fs::read_to_string(file)
    {
        return token.trim().to_string();
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
    let local = url.starts_with("unix:")
        || Endpoint::from_shared(url.to_string()).ok().and_then(|e| e.uri().host().map(str::to_string)).is_some_and(
            |h| {
                let h = h.trim_start_matches('[').trim_end_matches(']');
                h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            },
        );
    LOOPBACK.store(local, std::sync::atomic::Ordering::SeqCst);
}

fn read_pem(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("cannot read {flag} {}: {e}", path.display()))
}

/// The endpoint for `url` (from [`endpoint_url`]), with TLS set up for `https://`.
pub(crate) fn endpoint(url: &str, timeout: Duration) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?.connect_timeout(timeout).tcp_nodelay(true);
    let credentials = credentials();
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &credentials.ca_file {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem("--ca-file", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&credentials.tls_cert, &credentials.tls_key) {
            tls = tls.identity(Identity::from_pem(read_pem("--tls-cert", cert)?, read_pem("--tls-key", key)?));
        }
        endpoint = endpoint.tls_config(tls)?;
    } else if credentials.ca_file.is_some() || credentials.tls_cert.is_some() {
        return Err(anyhow!("--ca-file and --tls-cert are for TLS: name the server with https:// (it is {url})"));
    }
    Ok(endpoint)
}

/// The innermost cause of a connection error, which says what went wrong.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The addresses of `server`: one, or several separated by commas (daemons
/// sharing one SSOT), each checked as [`endpoint_url`] does.
pub(crate) fn server_list(server: &str) -> anyhow::Result<Vec<String>> {
    let servers: Vec<String> = server.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    if servers.is_empty() {
        return Err(anyhow!(
            "--server is empty (expected e.g. http://127.0.0.1:7700, or several: http://a:7700,http://b:7700)"
        ));
    }
    for server in &servers {
        endpoint_url(server)?;
    }
    Ok(servers)
}

/// The servers of `--server` and the index of the one in use.
static SERVERS: std::sync::Mutex<(Vec<String>, usize)> = std::sync::Mutex::new((Vec::new(), 0));

/// Connects to `server` (e.g. `http://127.0.0.1:7700`, `127.0.0.1:7700`,
/// `https://host:7700` or `unix:/path`), failing fast with a message that
/// says what to do. With several (comma-separated), to the first that answers.
pub(crate) async fn connect(server: &str) -> anyhow::Result<Channel> {
    let servers = server_list(server)?;
    let mut errors = Vec::new();
    for (i, one) in servers.iter().enumerate() {
        match connect_one(one, Duration::from_secs(5)).await {
            Ok(channel) => {
                *SERVERS.lock().expect("servers lock") = (servers, i);
                return Ok(channel);
            }
            Err(error) => errors.push(error),
        }
    }
    if errors.len() == 1 {
        return Err(errors.remove(0));
    }
    let reasons: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    Err(anyhow!("none of the {} servers answers: {}", reasons.len(), reasons.join("; ")))
}

/// After the server in use stopped answering: a connection to the next one of
/// `--server`'s list that answers, and its address (`None` without another).
pub(crate) async fn failover() -> Option<(Channel, String)> {
    let (servers, current) = SERVERS.lock().expect("servers lock").clone();
    for offset in 1..servers.len() {
        let i = (current + offset) % servers.len();
        if let Ok(channel) = connect_one(&servers[i], Duration::from_secs(2)).await {
            SERVERS.lock().expect("servers lock").1 = i;
            return Some((channel, servers[i].clone()));
        }
    }
    None
}

async fn connect_one(server: &str, timeout: Duration) -> anyhow::Result<Channel> {
    let url = endpoint_url(server)?;
    note_server(&url);
    endpoint(&url, timeout)?.connect().await.map_err(|error| {
        let cause = root_cause(&error);
        let hint = if cause.contains("certificate") || cause.contains("Certificate") {
            "check --ca-file (the CA that signed the server's certificate) and the host name"
        } else if cause.contains("handshake") || cause.contains("tls") || cause.contains("alert") {
            "does the server ask for a client certificate (--tls-cert/--tls-key) or speak plain http?"
        } else {
            "is it running? (start it with `maestrod`, or pass --server)"
        };
        anyhow!("cannot reach maestrod at {server}: {cause}; {hint}")
    })
}

/// The canonical name of a status code, as gRPC documents it.
pub(crate) fn code_name(code: Code) -> &'static str {
    maestro_shared::code_name(code)
}

pub(crate) fn status_error(status: Status) -> anyhow::Error {
    // The connection broke under the call: say why, and what usually causes it.
    if matches!(status.code(), Code::Unknown | Code::Unavailable)
        && let Some(source) = std::error::Error::source(&status)
    {
        let cause = root_cause(source);
        return anyhow!(
            "the connection to maestrod failed: {cause} ({}); a TLS server needs https:// (and maybe --tls-cert), \
             a plain one http://",
            code_name(status.code())
        );
    }
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
