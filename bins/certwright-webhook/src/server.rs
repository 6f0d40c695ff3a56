//! The HTTP side: an HTTPS server for `POST /validate` (AdmissionReview v1) and
//! `GET /healthz`, a plain-HTTP probe server (`/healthz`, `/readyz`), and graceful
//! shutdown on SIGTERM or SIGINT. Each review is parsed here, judged by
//! [`crate::admission`], with the Secrets it needs read by [`crate::secrets`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::service::TowerToHyperService;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, Review, Settings};
use crate::tls::{self, ReloadingCert};

/// Largest AdmissionReview accepted; larger bodies get 413.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long one request may take, body included; the API server's own webhook timeout
/// defaults to 10 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may finish their requests after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// HTTP/2 pings on an open connection: every interval, and a peer that does not answer
/// one within the timeout is gone.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests one HTTP/2 connection may have in flight at once.
const H2_MAX_STREAMS: u32 = 64;

/// How many connections are served and for how long they may sit idle.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Connections served at once; more wait in the listen backlog until one closes.
    max_connections: usize,
    /// A connection with no request in flight for this long is closed, HTTP/1.1
    /// keep-alive and HTTP/2 alike (the API server opens a new one when it needs it).
    idle_timeout: Duration,
    /// How long a graceful close may take (an HTTP/2 peer acknowledging GOAWAY) before
    /// the connection is dropped.
    close_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            // Above the 90 s after which Go's HTTP client (the API server's) drops an
            // idle connection itself, so that it is the client that usually closes.
            idle_timeout: Duration::from_secs(120),
            close_grace: Duration::from_secs(10),
        }
    }
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    /// Marks a request in flight until the guard drops.
    fn begin(self: &Arc<Activity>) -> InFlight {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            // In flight first: a request that begins meanwhile has moved `last` on.
            let busy = self.in_flight.load(Ordering::SeqCst) > 0;
            let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
            if !busy && last.elapsed() >= idle {
                return;
            }
            let wake = if busy {
                tokio::time::Instant::now() + idle
            } else {
                last + idle
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request in flight; its end counts as activity.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything `run` needs, from the flags.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) tls_cert_file: PathBuf,
    pub(crate) tls_private_key_file: PathBuf,
    pub(crate) bind_address: SocketAddr,
    pub(crate) health_probe_bind_address: SocketAddr,
    pub(crate) kubeconfig: Option<PathBuf>,
    pub(crate) cluster_resource_namespace: String,
    pub(crate) egress: certwright_pki::egress::EgressPolicy,
    pub(crate) egress_exempt_cluster_issuers: bool,
    pub(crate) secret_namespaces: Option<std::collections::BTreeSet<String>>,
    pub(crate) pkcs11_modules: std::collections::BTreeSet<String>,
    pub(crate) pkcs11_namespaced_issuers: bool,
}

/// What the handlers share.
struct AppState {
    client: kube::Client,
    settings: Settings,
}

/// Serves until SIGTERM or SIGINT, then lets open requests finish.
///
/// # Errors
/// When the serving certificate does not load, the kube configuration cannot be found,
/// or an address cannot be bound.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = Arc::new(
        ReloadingCert::load(
            config.tls_cert_file.clone(),
            config.tls_private_key_file.clone(),
            provider.clone(),
        )
        .context("cannot load the serving certificate")?,
    );
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(cert.clone(), provider)?));
    let client = kube_client(config.kubeconfig.as_deref()).await?;
    let state = Arc::new(AppState {
        client,
        settings: Settings {
            cluster_resource_namespace: config.cluster_resource_namespace.clone(),
            egress: Some(config.egress.clone()),
            egress_exempt_cluster_issuers: config.egress_exempt_cluster_issuers,
            secret_namespaces: config.secret_namespaces.clone(),
            pkcs11_modules: config.pkcs11_modules.clone(),
            pkcs11_namespaced_issuers: config.pkcs11_namespaced_issuers,
        },
    });

    let listener = TcpListener::bind(config.bind_address)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind_address))?;
    let probe_listener = TcpListener::bind(config.health_probe_bind_address)
        .await
        .with_context(|| format!("cannot listen on {}", config.health_probe_bind_address))?;
    tracing::info!(
        bind_address = %listener.local_addr().unwrap_or(config.bind_address),
        health_probe_bind_address = %probe_listener.local_addr().unwrap_or(config.health_probe_bind_address),
        cluster_resource_namespace = %config.cluster_resource_namespace,
        "certwright-webhook serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let reload = tokio::spawn(cert.watch());
    // The probe server outlives the drain, so that /readyz says 503 meanwhile.
    let (probes_stop_tx, probes_stop_rx) = watch::channel(false);
    let probes = tokio::spawn(serve_probes(
        probe_listener,
        draining.clone(),
        probes_stop_rx,
    ));
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections; open requests may finish");
        let _ = stop_tx.send(true);
    });

    serve_tls(
        listener,
        acceptor,
        webhook_router(state),
        stop_rx,
        draining,
        Limits::default(),
    )
    .await;
    let _ = probes_stop_tx.send(true);
    reload.abort();
    signal.abort();
    if let Ok(Err(e)) = probes.await {
        tracing::warn!(error = %e, "the probe server failed");
    }
    tracing::info!("certwright-webhook stopped");
    Ok(())
}

async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster configuration and no usable $KUBECONFIG")?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

/// `POST /validate` and `GET /healthz`, with a body limit and a request timeout.
fn webhook_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(request_timeout))
        .with_state(state)
}

async fn request_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {}s",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
}

/// Answers one AdmissionReview. A body that is not an AdmissionReview gets a denial
/// naming the cause (HTTP 200, as the API server expects an AdmissionReview back).
async fn validate(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(e) => {
            tracing::warn!(error = %e, "a body that is not an AdmissionReview");
            return answer(AdmissionResponse::invalid(format!(
                "the body is not an AdmissionReview: {e}"
            )));
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => {
            return answer(AdmissionResponse::invalid(format!(
                "the AdmissionReview has no request: {e}"
            )));
        }
    };
    let response = match admission::review(&request, &state.settings) {
        Review::Done(response) => *response,
        Review::Issuer(issuer) => {
            let refs = issuer.secrets_to_look_up();
            tracing::debug!(
                issuer = issuer.describe(),
                secrets = refs.len(),
                "checking Secrets"
            );
            let found = crate::secrets::fetch(&state.client, refs).await;
            issuer.decide(&found)
        }
    };
    tracing::info!(
        uid = %request.uid,
        kind = %request.kind.kind,
        namespace = request.namespace.as_deref().unwrap_or(""),
        name = %request.name,
        operation = ?request.operation,
        allowed = response.allowed,
        warnings = response.warnings.as_ref().map_or(0, Vec::len),
        denial = %response.result.message,
        "admission review"
    );
    answer(response)
}

fn answer(response: AdmissionResponse) -> Response {
    match serde_json::to_vec(&response.into_review()) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the AdmissionReview: {e}"),
        )
            .into_response(),
    }
}

/// Accepts TLS connections until `stop` turns true, then lets open connections finish
/// their requests for up to [`SHUTDOWN_GRACE`]. At most `limits.max_connections` are
/// served at once, and a connection idle for `limits.idle_timeout` is closed, so that
/// idle connections (HTTP/1.1 keep-alive, HTTP/2) cannot pile up.
async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    mut stop: watch::Receiver<bool>,
    draining: Arc<AtomicBool>,
    limits: Limits,
) {
    let mut connections = JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = Duration::from_millis(50);
    loop {
        let permit = tokio::select! {
            () = stopped(&mut stop) => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => {
                        backoff = Duration::from_millis(50);
                        stream
                    }
                    Err(e) => {
                        // Out of file descriptors, say: do not spin; open connections
                        // carry on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                let mut stop = stop.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let activity = Activity::new();
                    let service = {
                        let inner = TowerToHyperService::new(router);
                        let activity = activity.clone();
                        hyper::service::service_fn(move |request| {
                            use hyper::service::Service as _;
                            let in_flight = activity.begin();
                            let answer = inner.call(request);
                            async move {
                                let answer = answer.await;
                                drop(in_flight);
                                answer
                            }
                        })
                    };
                    let mut builder = ConnectionBuilder::new(TokioExecutor::new());
                    builder
                        .http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT);
                    builder
                        .http2()
                        .timer(TokioTimer::new())
                        .keep_alive_interval(Some(H2_KEEP_ALIVE_INTERVAL))
                        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
                        .max_concurrent_streams(H2_MAX_STREAMS);
                    let connection = builder.serve_connection(TokioIo::new(tls), service);
                    let mut connection = std::pin::pin!(connection);
                    // Idle, or shutting down: close gracefully (HTTP/2 GOAWAY, or after
                    // the HTTP/1.1 request under way), never in the middle of an answer.
                    let mut closing = false;
                    let mut give_up = std::pin::pin!(tokio::time::sleep(Duration::MAX));
                    loop {
                        tokio::select! {
                            served = connection.as_mut() => {
                                if let Err(e) = served {
                                    tracing::debug!(error = %e, "connection ended with an error");
                                }
                                break;
                            }
                            () = activity.idle_for(limits.idle_timeout), if !closing => {
                                tracing::debug!("closing an idle connection");
                                connection.as_mut().graceful_shutdown();
                                closing = true;
                                give_up.as_mut().reset(tokio::time::Instant::now() + limits.close_grace);
                            }
                            () = stopped(&mut stop), if !closing => {
                                connection.as_mut().graceful_shutdown();
                                closing = true;
                                give_up.as_mut().reset(tokio::time::Instant::now() + limits.close_grace);
                            }
                            () = give_up.as_mut(), if closing => {
                                tracing::debug!("a connection did not close gracefully; dropping it");
                                break;
                            }
                        }
                    }
                });
            }
        }
    }
    draining.store(true, Ordering::SeqCst);
    drop(listener);
    // Each connection saw `stop` and is closing gracefully; wait for them, within bounds.
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        tracing::warn!(
            "connections still open {}s after the shutdown signal; closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    connections.shutdown().await;
}

/// Resolves once `stop` turns true (or its sender is gone), holding no borrow of it.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Plain HTTP `/healthz` (the process runs) and `/readyz` (not shutting down).
async fn serve_probes(
    listener: TcpListener,
    draining: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let draining = draining.clone();
                async move {
                    if draining.load(Ordering::SeqCst) {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                    } else {
                        (StatusCode::OK, "ok")
                    }
                }
            }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use certwright_testkit::fixtures::{KeyKind, TestCa};
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    struct Served {
        addr: SocketAddr,
        ca_pem: String,
        _stop: watch::Sender<bool>,
    }

    /// serve_tls on 127.0.0.1 with a `GET /slow` that takes 1.5 s.
    async fn serve(limits: Limits) -> Served {
        let ca = TestCa::root(KeyKind::EcdsaP256, "webhook test CA");
        let leaf = ca.issue_leaf(KeyKind::EcdsaP256, "localhost");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "slow"
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve_tls(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            router,
            stop_rx,
            Arc::new(AtomicBool::new(false)),
            limits,
        ));
        Served {
            addr,
            ca_pem: ca.cert_pem().to_string(),
            _stop: stop,
        }
    }

    async fn connect(
        served: &Served,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut config =
            certwright_simulators::tls::client_config(served.ca_pem.as_bytes()).unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(served.addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// Reads until the server closes the connection; false if it is still open after 5 s.
    async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
        let mut buf = [0u8; 4096];
        let read_to_end = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read_to_end)
            .await
            .is_ok()
    }

    async fn http_get(
        stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
        path: &str,
    ) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).ends_with("ok")
            && !String::from_utf8_lossy(&answer).ends_with("slow")
        {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before answering: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Short, but long enough that a test's next request on a loaded machine comes
    /// before the connection counts as idle.
    const SHORT_IDLE: Limits = Limits {
        max_connections: 8,
        idle_timeout: Duration::from_millis(1000),
        close_grace: Duration::from_millis(500),
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_http1_connection_is_closed_but_not_a_busy_one() {
        let served = serve(SHORT_IDLE).await;
        let mut stream = connect(&served, b"http/1.1").await.unwrap();
        // A request longer than the idle timeout is answered: in flight is not idle.
        assert!(
            http_get(&mut stream, "/slow")
                .await
                .starts_with("HTTP/1.1 200")
        );
        // Keep-alive, then nothing: closed by the server.
        assert!(
            http_get(&mut stream, "/healthz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(closed_by_server(&mut stream).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_http2_connection_is_closed() {
        let served = serve(SHORT_IDLE).await;
        let mut stream = connect(&served, b"h2").await.unwrap();
        // The client preface and an empty SETTINGS frame, then nothing.
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        assert!(closed_by_server(&mut stream).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_cap_wait_for_one_to_close() {
        let served = serve(Limits {
            max_connections: 2,
            idle_timeout: Duration::from_secs(60),
            close_grace: Duration::from_secs(1),
        })
        .await;
        let first = connect(&served, b"http/1.1").await.unwrap();
        let _second = connect(&served, b"http/1.1").await.unwrap();
        // The third waits in the backlog: its TLS handshake is not served.
        let third = {
            let served = Served {
                addr: served.addr,
                ca_pem: served.ca_pem.clone(),
                _stop: watch::channel(false).0,
            };
            tokio::spawn(async move { connect(&served, b"http/1.1").await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!third.is_finished(), "a third connection was served");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("served once a connection closed")
            .unwrap()
            .unwrap();
    }
}
