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

/// A connection that is closed when its peer goes quiet: no first bytes (the
/// HTTP/2 preface) within `first`, or nothing read for `idle` afterwards. Live
/// clients answer the server's HTTP/2 keepalive pings (every 30 s), so only
/// connections that hold a descriptor without speaking are cut.
pub struct Deadline<S> {
    inner: S,
    idle: std::time::Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<S> Deadline<S> {
    pub fn new(inner: S, first: std::time::Duration, idle: std::time::Duration) -> Deadline<S> {
        Deadline { inner, idle, timer: Box::pin(tokio::time::sleep(first)) }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Deadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let deadline = tokio::time::Instant::now() + self.idle;
                    self.timer.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer went quiet")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Deadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Deadline<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
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
    async fn a_quiet_peer_is_cut_and_a_talking_one_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ms = std::time::Duration::from_millis;
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Deadline::new(server, ms(100), ms(300));
        let mut buf = [0u8; 8];
        // Talking every 150 ms keeps it open past both deadlines.
        let talker = tokio::spawn(async move {
            for _ in 0..5 {
                client.write_all(b"x").await.unwrap();
                tokio::time::sleep(ms(150)).await;
            }
            client
        });
        for _ in 0..5 {
            assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        }
        let quiet = tokio::time::Instant::now();
        let _client = talker.await.unwrap();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(quiet.elapsed() >= ms(200), "after the idle time, not the first one: {:?}", quiet.elapsed());

        let (_silent, server) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let error = Deadline::new(server, ms(100), ms(300)).read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < ms(300), "a peer that never speaks goes at the first deadline");
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
