//! Where the daemon listens and how: a TCP address (with TLS, optionally
//! requiring client certificates) or a Unix socket only its user can open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("--listen {0:?}: expected HOST:PORT (e.g. 127.0.0.1:7700) or unix:/absolute/path")]
    BadAddress(String),
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}: another maestrod answers on this socket; stop it or listen elsewhere")]
    SocketInUse(PathBuf),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: String, source: std::io::Error },
}

/// An address to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// A Unix socket, made readable and writable by the daemon's user only.
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = TransportError;

    fn from_str(text: &str) -> Result<ListenAddr, TransportError> {
        if let Some(path) = text.strip_prefix("unix://").or_else(|| text.strip_prefix("unix:")) {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(TransportError::BadAddress(text.to_string()));
            }
            return Ok(ListenAddr::Unix(path));
        }
        text.parse().map(ListenAddr::Tcp).map_err(|_| TransportError::BadAddress(text.to_string()))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ListenAddr {
    /// Whether only this machine can reach the address.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => addr.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }

    /// Binds the address. A Unix socket is created with mode 0600 (and its
    /// folder made if missing, 0700); a stale socket file left by a daemon
    /// that died is replaced, a live one is refused.
    pub async fn bind(&self) -> Result<Listener, TransportError> {
        let bind_error = |source| TransportError::Bind { address: self.to_string(), source };
        match self {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await.map_err(bind_error)?)),
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
                if let Some(dir) = path.parent().filter(|d| !d.exists()) {
                    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(bind_error)?;
                }
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        return Err(TransportError::SocketInUse(path.clone()));
                    }
                    std::fs::remove_file(path).map_err(bind_error)?;
                }
                // Created under a umask that leaves the owner alone, then
                // narrowed before anyone is accepted.
                let listener = tokio::net::UnixListener::bind(path).map_err(bind_error)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(listener: tokio::net::TcpListener) -> Listener {
        Listener::Tcp(listener)
    }
}

impl Listener {
    /// The address clients use: `127.0.0.1:PORT` (the port filled in) or `unix:PATH`.
    pub fn local_addr(&self) -> std::io::Result<String> {
        match self {
            Listener::Tcp(listener) => Ok(listener.local_addr()?.to_string()),
            Listener::Unix(_, path) => Ok(format!("unix:{}", path.display())),
        }
    }
}

/// The daemon's TLS material, as files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate signed by one.
    pub client_ca: Option<PathBuf>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read { what, path: path.to_path_buf(), source })
}

impl TlsFiles {
    /// Reads the files into a server configuration (read once, at start).
    pub fn load(&self) -> Result<ServerTlsConfig, TransportError> {
        let identity = Identity::from_pem(read("--tls-cert", &self.cert)?, read("--tls-key", &self.key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_tcp_or_absolute_unix_paths() {
        assert_eq!("127.0.0.1:7700".parse::<ListenAddr>().unwrap(), ListenAddr::Tcp("127.0.0.1:7700".parse().unwrap()));
        assert_eq!("unix:/run/m.sock".parse::<ListenAddr>().unwrap(), ListenAddr::Unix("/run/m.sock".into()));
        assert_eq!("unix:///run/m.sock".parse::<ListenAddr>().unwrap(), ListenAddr::Unix("/run/m.sock".into()));
        for bad in ["unix:relative.sock", "localhost", "http://127.0.0.1:7700", ""] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
        assert!("[::1]:7700".parse::<ListenAddr>().unwrap().is_local());
        assert!(!"0.0.0.0:7700".parse::<ListenAddr>().unwrap().is_local());
    }

    #[tokio::test]
    async fn a_socket_is_private_and_a_live_one_is_not_taken_over() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let addr = ListenAddr::Unix(dir.path().join("sub/m.sock"));
        let first = addr.bind().await.unwrap();
        let mode = std::fs::metadata(dir.path().join("sub/m.sock")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir.path().join("sub")).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(matches!(addr.bind().await, Err(TransportError::SocketInUse(_))));
        drop(first);
        // The file is left behind by a dead daemon: replaced.
        addr.bind().await.unwrap();
    }
}
