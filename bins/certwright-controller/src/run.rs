//! Builds the pieces from the flags and runs them until SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use certwright_engine::leader::{LeaderElector, LeaseConfig};
use certwright_engine::metrics::Metrics;
use certwright_engine::{CertwrightIssuers, Engine, EngineConfig};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::flags::Flags;
use crate::telemetry;

/// Without POD_NAME: the host name and a random suffix, as client-go does, so that two
/// replicas never share a leader identity (process ids repeat across containers).
fn default_identity() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "certwright-controller".to_string());
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{host}_{:08x}", random as u32)
}

async fn client(flags: &Flags) -> anyhow::Result<Client> {
    let config = match &flags.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no --kubeconfig, KUBECONFIG or in-cluster configuration")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// SIGTERM or SIGINT cancel the returned token.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        info!("signal received: shutting down gracefully");
        cancel.cancel();
    });
    token
}

async fn serve(addr: std::net::SocketAddr, app: Router, what: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))?;
    info!(%addr, "serving {what}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "an HTTP server stopped");
        }
    });
    Ok(())
}

pub(crate) async fn run(flags: Flags) -> anyhow::Result<()> {
    let _telemetry = telemetry::init(flags.log_format, &flags.log_level)?;
    let client = client(&flags).await?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));

    let metrics_app = Router::new().route(
        "/metrics",
        get({
            let metrics = metrics.clone();
            move || {
                let metrics = metrics.clone();
                async move {
                    match metrics.encode() {
                        Ok(body) => (
                            StatusCode::OK,
                            [(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        ),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [("content-type", "text/plain")],
                            String::from("encoding metrics failed"),
                        ),
                    }
                }
            }
        }),
    );
    serve(flags.metrics_bind_address, metrics_app, "metrics").await?;
    let health_app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get({
                let ready = ready.clone();
                move || {
                    let ready = ready.clone();
                    async move {
                        if ready.load(Ordering::SeqCst) {
                            (StatusCode::OK, "ok")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "starting")
                        }
                    }
                }
            }),
        );
    serve(flags.health_probe_bind_address, health_app, "health probes").await?;

    let identity = flags.pod_name.clone().unwrap_or_else(default_identity);
    let config = EngineConfig {
        max_concurrent_reconciles: flags.max_concurrent_reconciles,
        cluster_resource_namespace: flags.cluster_resource_namespace.clone(),
        issuer_health_check_interval: flags.issuer_health_check_interval,
        instance: Some(identity.clone()),
        ..EngineConfig::default()
    };
    let shutdown = shutdown_on_signal();
    // Standby replicas are ready too: they serve probes and wait for the lease.
    ready.store(true, Ordering::SeqCst);
    info!(
        identity = %identity,
        leader_elect = flags.leader_elect,
        cluster_resource_namespace = %flags.cluster_resource_namespace,
        "certwright-controller starting"
    );
    let engine = Engine::<CertwrightIssuers>::new(client.clone(), config, metrics);
    if flags.leader_elect {
        let namespace = flags
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| flags.cluster_resource_namespace.clone());
        let lease = LeaseConfig {
            lease_duration: flags.leader_election_lease_duration,
            renew_deadline: flags.leader_election_renew_deadline,
            retry_period: flags.leader_election_retry_period,
            ..LeaseConfig::new(namespace, flags.leader_election_id.clone(), identity)
        };
        let elector = LeaderElector::new(client, lease);
        elector
            .run(shutdown, move |leading| engine.run(leading))
            .await
            .context("leader election")?;
    } else {
        engine.run(shutdown).await.context("engine")?;
    }
    info!("certwright-controller stopped");
    Ok(())
}
