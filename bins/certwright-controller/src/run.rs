//! Builds the pieces from the flags and runs them until SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use certwright_engine::leader::{LeaderElector, LeaseConfig};
use certwright_engine::metrics::Metrics;
use certwright_engine::{
    CertwrightIssuers, Engine, EngineConfig, Evaluation, PolicyConfig, SecretAccess, Unmatched,
};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::flags::{Flags, PolicyEvaluation, PolicyUnmatched};
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

/// The egress policy of the flags, refusing also the API server's addresses (from the
/// client configuration and `KUBERNETES_SERVICE_HOST`) and this pod's own.
async fn egress_policy(
    flags: &Flags,
    api_server: &kube::Config,
    client: &Client,
) -> anyhow::Result<certwright_pki::egress::EgressPolicy> {
    let mut policy = certwright_pki::egress::EgressPolicy::new();
    for entry in &flags.egress_allow {
        policy = policy
            .allow(entry)
            .map_err(|e| anyhow::anyhow!("--egress-allow: {e}"))?;
    }
    for entry in &flags.egress_deny {
        policy = policy
            .deny(entry)
            .map_err(|e| anyhow::anyhow!("--egress-deny: {e}"))?;
    }
    let mut own = Vec::new();
    if let Some(host) = api_server.cluster_url.host() {
        let port = api_server.cluster_url.port_u16().unwrap_or(443);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => own.extend(addrs.map(|a| a.ip())),
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot resolve the API server to refuse it to issuers")
            }
        }
    }
    if let Some(ip) = std::env::var("KUBERNETES_SERVICE_HOST")
        .ok()
        .and_then(|h| h.parse().ok())
    {
        own.push(ip);
    }
    own.extend(flags.pod_ips.iter().copied());
    // The API server's own addresses behind the `kubernetes` Service (the Service's
    // address is rewritten to them after the check).
    let endpoints: kube::Api<k8s_openapi::api::core::v1::Endpoints> =
        kube::Api::namespaced(client.clone(), "default");
    match endpoints.get_opt("kubernetes").await {
        Ok(Some(found)) => own.extend(
            found
                .subsets
                .unwrap_or_default()
                .into_iter()
                .flat_map(|s| s.addresses.unwrap_or_default())
                .filter_map(|a| a.ip.parse::<std::net::IpAddr>().ok()),
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the API server's endpoints (default/kubernetes) to refuse them to issuers")
        }
    }
    for addr in own {
        policy = policy.deny_addr(addr);
    }
    Ok(policy)
}

async fn client(flags: &Flags) -> anyhow::Result<(Client, kube::Config)> {
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
    let client = Client::try_from(config.clone()).context("building the Kubernetes client")?;
    Ok((client, config))
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
    let (client, kube_config) = client(&flags).await?;
    let egress = egress_policy(&flags, &kube_config, &client).await?;
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
    let config = {
        let mut config = EngineConfig::default();
        config.max_concurrent_reconciles = flags.max_concurrent_reconciles;
        config.cluster_resource_namespace = flags.cluster_resource_namespace.clone();
        config.issuer_health_check_interval = flags.issuer_health_check_interval;
        config.instance = Some(identity.clone());
        config.egress = Some(Arc::new(egress));
        config.egress_exempt_cluster_issuers = flags.egress_exempt_cluster_issuers;
        config.redact_tenant_errors = true;
        config.kubernetes_csr = flags.kubernetes_csr;
        // Cluster issuers read their Secrets in the cluster resource namespace: a list
        // of namespaces always includes it.
        config.secret_access = SecretAccess::only(flags.secret_namespaces.iter().cloned().chain(
            (!flags.secret_namespaces.is_empty()).then(|| flags.cluster_resource_namespace.clone()),
        ));
        config.ca_expiry_warning = flags.ca_expiry_warning;
        config.pkcs11_modules = flags.pkcs11_modules.clone();
        config.pkcs11_namespaced_issuers = flags.pkcs11_namespaced_issuers;
        config.max_retry_duration =
            (!flags.max_retry_duration.is_zero()).then_some(flags.max_retry_duration);
        config.policy = flags.policy_approver.then(|| {
            PolicyConfig::new()
                .evaluation(match flags.policy_evaluation {
                    PolicyEvaluation::All => Evaluation::All,
                    PolicyEvaluation::Any => Evaluation::Any,
                })
                .unmatched(match flags.policy_unmatched {
                    PolicyUnmatched::Deny => Unmatched::Deny,
                    PolicyUnmatched::Ignore => Unmatched::Ignore,
                })
                .publish_summaries(flags.publish_policy_summaries)
                .approve_signers(flags.policy_approve_signers.iter().cloned())
        });
        config
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
    let engine = Engine::<CertwrightIssuers>::new(client.clone(), config, metrics.clone());
    if flags.leader_elect {
        let namespace = flags
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| flags.cluster_resource_namespace.clone());
        let lease = {
            let mut config =
                LeaseConfig::new(namespace, flags.leader_election_id.clone(), identity);
            config.lease_duration = flags.leader_election_lease_duration;
            config.renew_deadline = flags.leader_election_renew_deadline;
            config.retry_period = flags.leader_election_retry_period;
            config
        };
        let elector = LeaderElector::new(client, lease);
        metrics.set_leader(false);
        let leader = metrics.clone();
        let result = elector
            .run(shutdown, move |leading| {
                leader.set_leader(true);
                engine.run(leading)
            })
            .await;
        metrics.set_leader(false);
        result.context("leader election")?;
    } else {
        // Without election this replica is the one that reconciles.
        metrics.set_leader(true);
        engine.run(shutdown).await.context("engine")?;
    }
    info!("certwright-controller stopped");
    Ok(())
}
