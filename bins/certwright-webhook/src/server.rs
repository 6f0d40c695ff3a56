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
use hyper_util::server::graceful::GracefulShutdown;
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

/// Everything `run` needs, from the flags.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) tls_cert_file: PathBuf,
    pub(crate) tls_private_key_file: PathBuf,
    pub(crate) bind_address: SocketAddr,
    pub(crate) health_probe_bind_address: SocketAddr,
    pub(crate) kubeconfig: Option<PathBuf>,
    pub(crate) cluster_resource_namespace: String,
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

    serve_tls(listener, acceptor, webhook_router(state), stop_rx, draining).await;
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
/// their requests for up to [`SHUTDOWN_GRACE`].
async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    mut stop: watch::Receiver<bool>,
    draining: Arc<AtomicBool>,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
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
                let service = TowerToHyperService::new(router.clone());
                let watcher = graceful.watcher();
                connections.spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let mut builder = ConnectionBuilder::new(TokioExecutor::new());
                    builder
                        .http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT);
                    let connection = builder.serve_connection(TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(connection).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    draining.store(true, Ordering::SeqCst);
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!(
                "connections still open {}s after the shutdown signal; closing them",
                SHUTDOWN_GRACE.as_secs()
            );
        }
    }
    connections.shutdown().await;
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
