//! `embed-own-kinds`: runs certwright's engine for the `pki.team.example` kinds.
//!
//! ```text
//! embed-own-kinds --print-crds | kubectl apply -f -
//! embed-own-kinds            # in the cluster, or with KUBECONFIG
//! ```
//!
//! It reads Secrets of `TeamClusterIssuer`s from `$POD_NAMESPACE` (default
//! `cert-manager`) and stops on SIGINT or SIGTERM once in-flight calls are written.

use certwright_engine::metrics::Metrics;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube and the engine's HTTPS clients use rustls; one provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::args().any(|a| a == "--print-crds") {
        print!("{}", embed_own_kinds::crds_yaml()?);
        return Ok(());
    }
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "cert-manager".into());
    let client = kube::Client::try_default().await?;
    let engine =
        embed_own_kinds::engine(client, embed_own_kinds::config(&namespace), Metrics::new());
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        signal.cancel();
    });
    engine.run(shutdown).await?;
    Ok(())
}
