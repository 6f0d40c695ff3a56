//! `certwright-webhook`, the validating admission webhook for certwright's issuers.
//!
//! A thin binary: this file parses flags, installs the rustls `ring` provider, sets up
//! logging and calls [`server::run`]. The checks themselves are the pure functions of
//! [`admission`]; [`secrets`] reads the Secrets they need and [`tls`] keeps the serving
//! certificate fresh.

mod admission;
mod policy;
mod secrets;
mod server;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// Validating admission webhook for certwright's InternalIssuer and InternalClusterIssuer.
#[derive(Debug, Parser)]
#[command(name = "certwright-webhook", version, about)]
struct Flags {
    /// PEM certificate (chain) the webhook serves; reloaded when the file changes.
    #[arg(
        long,
        env = "CERTWRIGHT_WEBHOOK_TLS_CERT_FILE",
        default_value = "/tls/tls.crt"
    )]
    tls_cert_file: PathBuf,

    /// PEM private key of the serving certificate; reloaded when the file changes.
    #[arg(
        long,
        env = "CERTWRIGHT_WEBHOOK_TLS_PRIVATE_KEY_FILE",
        default_value = "/tls/tls.key"
    )]
    tls_private_key_file: PathBuf,

    /// Where the HTTPS server (POST /validate, GET /healthz) listens.
    #[arg(
        long,
        env = "CERTWRIGHT_WEBHOOK_BIND_ADDRESS",
        default_value = "0.0.0.0:9443"
    )]
    bind_address: SocketAddr,

    /// Where the plain-HTTP probe server (GET /healthz, GET /readyz) listens.
    #[arg(
        long,
        env = "CERTWRIGHT_WEBHOOK_HEALTH_PROBE_BIND_ADDRESS",
        default_value = "0.0.0.0:8081"
    )]
    health_probe_bind_address: SocketAddr,

    /// A kubeconfig file; without it, the in-cluster configuration or $KUBECONFIG.
    #[arg(long, env = "CERTWRIGHT_WEBHOOK_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,

    /// The namespace InternalClusterIssuers read their Secrets from (the controller's
    /// --cluster-resource-namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "cert-manager")]
    cluster_resource_namespace: String,

    /// Hosts and networks issuers may reach (the controller's --egress-allow).
    #[arg(long, value_delimiter = ',')]
    egress_allow: Vec<String>,

    /// Addresses and networks issuers may never reach (the controller's --egress-deny).
    #[arg(long, value_delimiter = ',')]
    egress_deny: Vec<String>,

    /// Namespaces whose Secrets certwright may read (the controller's
    /// --secret-namespace); every namespace when unset. An issuer whose Secrets lie
    /// elsewhere is denied.
    #[arg(long = "secret-namespace", value_delimiter = ',')]
    secret_namespaces: Vec<String>,

    /// PKCS#11 modules issuers may name (the controller's --pkcs11-module); an issuer
    /// naming another is denied.
    #[arg(long = "pkcs11-module", value_delimiter = ',')]
    pkcs11_modules: Vec<String>,

    /// Namespaced InternalIssuers may use the PKCS#11 modules too (the controller's
    /// --pkcs11-namespaced-issuers).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pkcs11_namespaced_issuers: bool,

    /// InternalClusterIssuers may name any host (the controller's
    /// --egress-exempt-cluster-issuers).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    egress_exempt_cluster_issuers: bool,

    /// Log line format. The filter comes from RUST_LOG (default: info).
    #[arg(
        long,
        env = "CERTWRIGHT_WEBHOOK_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Json
    )]
    log_format: LogFormat,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    // One rustls crypto provider for the whole process: ring.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("certwright-webhook: a rustls crypto provider was already installed");
    }
    init_tracing(flags.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    let mut egress = certwright_pki::egress::EgressPolicy::new();
    for (flag, entries, allow) in [
        ("--egress-allow", &flags.egress_allow, true),
        ("--egress-deny", &flags.egress_deny, false),
    ] {
        for entry in entries {
            let next = if allow {
                egress.clone().allow(entry)
            } else {
                egress.clone().deny(entry)
            };
            match next {
                Ok(policy) => egress = policy,
                Err(e) => {
                    tracing::error!(flag, error = %e, "invalid egress policy");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let secret_namespaces = {
        let mut set: std::collections::BTreeSet<String> = flags
            .secret_namespaces
            .into_iter()
            .filter(|ns| !ns.is_empty())
            .collect();
        // Cluster issuers read their Secrets there: a list always includes it.
        if !set.is_empty() {
            set.insert(flags.cluster_resource_namespace.clone());
        }
        (!set.is_empty()).then_some(set)
    };
    let config = server::Config {
        tls_cert_file: flags.tls_cert_file,
        tls_private_key_file: flags.tls_private_key_file,
        bind_address: flags.bind_address,
        health_probe_bind_address: flags.health_probe_bind_address,
        kubeconfig: flags.kubeconfig,
        cluster_resource_namespace: flags.cluster_resource_namespace,
        egress,
        egress_exempt_cluster_issuers: flags.egress_exempt_cluster_issuers,
        secret_namespaces,
        pkcs11_modules: flags
            .pkcs11_modules
            .into_iter()
            .filter(|m| !m.is_empty())
            .collect(),
        pkcs11_namespaced_issuers: flags.pkcs11_namespaced_issuers,
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "certwright-webhook failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Flags::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_documentation() {
        let flags = Flags::try_parse_from(["certwright-webhook"]).expect("defaults parse");
        assert_eq!(flags.tls_cert_file, PathBuf::from("/tls/tls.crt"));
        assert_eq!(flags.tls_private_key_file, PathBuf::from("/tls/tls.key"));
        assert_eq!(flags.bind_address.to_string(), "0.0.0.0:9443");
        assert_eq!(flags.health_probe_bind_address.to_string(), "0.0.0.0:8081");
        assert_eq!(flags.log_format, LogFormat::Json);
        assert!(flags.kubeconfig.is_none());
        // POD_NAMESPACE may be set where the tests run; only check it is not empty.
        assert!(!flags.cluster_resource_namespace.is_empty());
    }
}
