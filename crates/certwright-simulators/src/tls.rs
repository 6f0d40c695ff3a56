//! HTTPS for simulators: serves an axum [`Router`] on 127.0.0.1 over TLS with a server
//! certificate (for `localhost` and `127.0.0.1`) from a generated test CA, optionally
//! requiring client certificates, and stops when the handle is dropped.
//!
//! TLS is rustls with the `ring` provider through tokio-rustls; HTTP/1.1 and HTTP/2 are
//! served by hyper-util's auto builder.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::fixtures::{CsrBuilder, KeyKind, TestCa};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop waits after a failed accept (out of file descriptors, say)
/// before it tries again: this at first, doubling with each failure in a row...
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// ...up to this. A successful accept starts over from [`ACCEPT_BACKOFF_MIN`].
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How a [`TlsServer`] runs.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Require a client certificate issued by this CA (PEM).
    pub client_ca_pem: Option<String>,
}

impl TlsOptions {
    /// Plain server-authenticated TLS.
    pub fn new() -> Self {
        TlsOptions::default()
    }

    /// Requires clients to present a certificate issued by `client_ca_pem` (mTLS).
    pub fn require_client_certificates(mut self, client_ca_pem: impl Into<String>) -> Self {
        self.client_ca_pem = Some(client_ca_pem.into());
        self
    }
}

/// The certificates the client presented on this connection (DER, leaf first; empty
/// without mTLS). Every request carries it as an axum `Extension`.
#[derive(Clone, Debug, Default)]
pub struct PeerCertificates(pub Arc<Vec<Vec<u8>>>);

/// Starts HTTPS servers; see [`TlsServer::start`].
#[derive(Debug)]
pub struct TlsServer;

impl TlsServer {
    /// Serves `router` over HTTPS on 127.0.0.1 with a fresh port, server certificate and
    /// test CA. Must be called inside a tokio runtime; the server runs until the returned
    /// handle is dropped.
    ///
    /// # Errors
    /// When the port cannot be bound or the TLS configuration is refused (for example an
    /// unreadable client CA).
    pub async fn start(router: Router, options: TlsOptions) -> io::Result<RunningServer> {
        let (acceptor, ca) = acceptor(&options)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, acceptor, router));
        Ok(RunningServer {
            addr,
            ca_pem: ca.cert_pem().to_string(),
            task,
        })
    }
}

/// A running HTTPS server; dropping it stops the server and its open connections.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    ca_pem: String,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// `https://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `https://localhost:<port>`, for tests of name-based verification.
    pub fn localhost_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The PEM certificate of the CA that issued the server certificate: the caBundle a
    /// client needs.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// A rustls (ring) client configuration that trusts only the certificates in `ca_pem`:
/// what a test needs to talk to one of this crate's TLS servers, or to check who
/// answers on a port.
///
/// # Errors
/// When `ca_pem` is not PEM, holds an unusable certificate, or holds none.
pub fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate".to_string());
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("no TLS version available: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// A port on 127.0.0.1 that nothing listens on (it was free a moment ago), never the
/// same port twice in one process.
///
/// The kernel may hand the same free port to two `bind(("127.0.0.1", 0))` calls in quick
/// succession once the first socket is closed (about one batch of 32 in 30 on Linux), so
/// two servers started by parallel tests could be told to listen on one port. This
/// remembers what it gave out and asks again on a repeat. (A server that binds port 0
/// itself can still be given the port before the process it was handed to binds it; a
/// caller that must be sure checks who answers, as [`crate::cfssl`] does.)
///
/// # Panics
/// If no port can be bound on 127.0.0.1 (a broken test environment), or 1000 draws in a
/// row were all ports handed out before.
pub fn unused_local_port() -> u16 {
    let mut given = given_ports();
    for _ in 0..1000 {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("a free port on 127.0.0.1");
        let port = listener.local_addr().expect("a bound address").port();
        if given.insert(port) {
            return port;
        }
    }
    panic!(
        "1000 free ports in a row were handed out before ({} in all)",
        given.len()
    );
}

/// The ports [`unused_local_port`] and [`refused_port`] handed out in this process.
fn given_ports() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u16>> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A port on 127.0.0.1 where connections are refused for the rest of the process.
///
/// The port is held by a socket that is bound but never listens: the kernel answers
/// every connection with a reset, and no server started later (by this test or a
/// parallel one) can be given the port, as it could be one that was merely free.
///
/// # Panics
/// If no socket can be bound on 127.0.0.1 (a broken test environment).
pub fn refused_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind((Ipv4Addr::LOCALHOST, 0).into())
        .expect("a free port on 127.0.0.1");
    let port = socket.local_addr().expect("a bound address").port();
    given_ports().insert(port);
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(socket);
    port
}

/// An https URL on 127.0.0.1 where connections are refused: see [`refused_port`].
pub fn refused_url() -> String {
    format!("https://127.0.0.1:{}", refused_port())
}

/// A TLS acceptor with a fresh server certificate for `localhost` and `127.0.0.1`, and
/// the test CA that issued it.
fn acceptor(options: &TlsOptions) -> io::Result<(TlsAcceptor, TestCa)> {
    let ca = TestCa::root(KeyKind::EcdsaP256, "certwright test TLS CA");
    let server = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("localhost")
        .dns("localhost")
        .ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
        .ext_key_usages([rcgen::ExtendedKeyUsagePurpose::ServerAuth])
        .build();
    let cert_pem = ca.sign_csr(&server.csr_pem).map_err(io::Error::other)?;
    let config = server_config(
        &cert_pem,
        &server.key_pem,
        options.client_ca_pem.as_deref(),
        &[b"h2", b"http/1.1"],
    )?;
    Ok((TlsAcceptor::from(Arc::new(config)), ca))
}

/// A rustls (ring) server configuration for `cert_pem`/`key_pem`, requiring client
/// certificates signed by `client_ca_pem` when given, offering `alpn` protocols.
/// Shared by every simulator that serves TLS.
pub(crate) fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
    alpn: &[&[u8]],
) -> io::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(io::Error::other)?;
    let verifier = match client_ca_pem {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.map_err(io::Error::other)?)
                    .map_err(io::Error::other)?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(io::Error::other)?
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Where the accept loop takes connections from: a [`TcpListener`] (or, in tests, one
/// that fails).
trait Incoming: Send + 'static {
    /// The next connection.
    fn next(&mut self) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

impl Incoming for TcpListener {
    async fn next(&mut self) -> io::Result<TcpStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

async fn serve(mut incoming: impl Incoming, acceptor: TlsAcceptor, router: Router) {
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        tokio::select! {
            accepted = incoming.next() => {
                let stream = match accepted {
                    Ok(stream) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        stream
                    }
                    Err(_) => {
                        // Accept fails at once for as long as the cause lasts (no file
                        // descriptor left, say): retrying at once would spin a core.
                        // Open connections run on meanwhile.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                connections.spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
                        .unwrap_or_default();
                    let router = router.layer(axum::Extension(PeerCertificates(Arc::new(peer))));
                    let service = TowerToHyperService::new(router);
                    // A failed connection (client gone, bad request) ends only itself.
                    let _ = ConnectionBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_local_ports_are_never_handed_out_twice() {
        // Thousands of draws from the ~28,000 ephemeral ports repeat one all but surely
        // when the kernel alone decides.
        let ports: Vec<u16> = (0..2000).map(|_| unused_local_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn a_client_config_needs_a_certificate() {
        assert_eq!(client_config(b"").expect_err("empty"), "no certificate");
        assert_eq!(
            client_config(b"not pem at all").expect_err("no PEM block"),
            "no certificate"
        );
        let ca = TestCa::root(KeyKind::EcdsaP256, "client config CA");
        assert!(client_config(ca.cert_pem().as_bytes()).is_ok());
    }

    #[test]
    fn a_refused_port_refuses_and_cannot_be_taken() {
        let port = refused_port();
        let err = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        let err = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect_err("held");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[tokio::test]
    async fn serves_over_tls_with_its_own_ca() {
        let router = Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let server = TlsServer::start(router, TlsOptions::new())
            .await
            .expect("server");
        assert!(server.url().starts_with("https://127.0.0.1:"));
        assert!(server.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));

        // A raw TLS handshake trusting the server's CA succeeds.
        let config = client_config(server.ca_pem().as_bytes()).expect("client config");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("tcp");
        let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        connector.connect(name, tcp).await.expect("handshake");

        let refused = tokio::net::TcpStream::connect(("127.0.0.1", refused_port())).await;
        assert!(refused.is_err());
    }

    /// A listener whose every accept fails, as one out of file descriptors does, and
    /// counts the attempts.
    struct Exhausted(Arc<std::sync::atomic::AtomicUsize>);

    impl Incoming for Exhausted {
        async fn next(&mut self) -> io::Result<TcpStream> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // A real listener yields now and then (tokio's budget), so a loop that
            // spins on it can still be aborted.
            tokio::task::yield_now().await;
            Err(io::Error::other("Too many open files (os error 24)"))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_accepts_back_off_instead_of_spinning() {
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (acceptor, _ca) = acceptor(&TlsOptions::new()).expect("acceptor");
        let task = tokio::spawn(serve(Exhausted(attempts.clone()), acceptor, Router::new()));
        // Attempts at 0, 50, 150 and 350 ms, then a wait of 400 ms: four within 600 ms
        // where a spinning loop makes thousands.
        tokio::time::sleep(Duration::from_millis(600)).await;
        task.abort();
        let _ = task.await;
        let attempts = attempts.load(std::sync::atomic::Ordering::SeqCst);
        assert!((2..=6).contains(&attempts), "{attempts} accept attempts");
    }
}
