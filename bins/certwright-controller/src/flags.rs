//! Command-line flags, named as controller-runtime names them so operators find them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// `--policy-evaluation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PolicyEvaluation {
    /// Every applicable policy must allow the request.
    All,
    /// One applicable policy the requester may `use` is enough.
    Any,
}

/// `--policy-unmatched`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PolicyUnmatched {
    /// Deny it.
    Deny,
    /// Leave it untouched.
    Ignore,
}

/// certwright-controller: signs cert-manager CertificateRequests through enterprise PKI.
#[derive(Parser, Debug)]
#[command(name = "certwright-controller", version)]
pub(crate) struct Flags {
    /// Path to a kubeconfig; in-cluster configuration (or KUBECONFIG) when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub(crate) kubeconfig: Option<PathBuf>,

    /// Namespace where cluster issuers read their Secrets; the pod's namespace by default.
    #[arg(long, env = "POD_NAMESPACE", default_value = "cert-manager")]
    pub(crate) cluster_resource_namespace: String,

    /// Elect a leader through a Lease so that only one replica signs (`--leader-elect`
    /// alone means true, as kubebuilder controllers read it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) leader_elect: bool,

    /// Namespace of the leader election Lease; the cluster resource namespace by default.
    #[arg(long)]
    pub(crate) leader_election_namespace: Option<String>,

    /// Name of the leader election Lease.
    #[arg(long, default_value = "certwright-controller")]
    pub(crate) leader_election_id: String,

    /// How long a leader's Lease is valid without renewal (Go duration).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub(crate) leader_election_lease_duration: std::time::Duration,

    /// A leader that has not renewed its Lease for this long stops signing.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) leader_election_renew_deadline: std::time::Duration,

    /// How often the Lease is renewed or tried.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) leader_election_retry_period: std::time::Duration,

    /// This replica's identity in the Lease and on Events.
    #[arg(long, env = "POD_NAME")]
    pub(crate) pod_name: Option<String>,

    /// Where Prometheus metrics are served (`/metrics`).
    #[arg(long, default_value = "0.0.0.0:9402", value_parser = parse_addr)]
    pub(crate) metrics_bind_address: SocketAddr,

    /// Where `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:8081", value_parser = parse_addr)]
    pub(crate) health_probe_bind_address: SocketAddr,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub(crate) log_format: LogFormat,

    /// Log filter, e.g. `info` or `certwright_engine=debug,info` (RUST_LOG wins when set).
    #[arg(long, default_value = "info")]
    pub(crate) log_level: String,

    /// CertificateRequests reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) max_concurrent_reconciles: usize,

    /// How long a CertificateRequest may keep failing for retryable reasons (the PKI
    /// down, throttling) before it fails, so that cert-manager's own backoff takes over
    /// (Go duration; 0: retry for as long as it exists).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub(crate) max_retry_duration: std::time::Duration,

    /// An issuer whose CA certificate expires within this window stays Ready with reason
    /// CAExpiringSoon and a warning Event (Go duration; 0: never).
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    pub(crate) ca_expiry_warning: std::time::Duration,

    /// How often each issuer's PKI is health-checked (Go duration).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub(crate) issuer_health_check_interval: std::time::Duration,

    /// Hosts (`pki.corp.example`, `*.corp.example`) and networks (`10.20.0.0/16`) that
    /// issuers may reach, comma-separated or repeated; anything not denied when unset.
    #[arg(long, value_delimiter = ',')]
    pub(crate) egress_allow: Vec<String>,

    /// Addresses and networks issuers may never reach, besides loopback, link-local, the
    /// API server's addresses and this pod's own.
    #[arg(long, value_delimiter = ',')]
    pub(crate) egress_deny: Vec<String>,

    /// Namespaces whose Secrets the controller may read and watch, comma-separated or
    /// repeated (the chart's `secretAccess`, with Roles in each), besides the cluster
    /// resource namespace, which a list always includes; every namespace when unset. Issuers whose Secrets lie elsewhere are not Ready (`SecretOutOfScope`).
    #[arg(long = "secret-namespace", value_delimiter = ',')]
    pub(crate) secret_namespaces: Vec<String>,

    /// Sign Kubernetes CertificateSigningRequests whose signerName names a certwright
    /// issuer (`internalclusterissuers.pki.certwright.io/<name>`,
    /// `internalissuers.pki.certwright.io/<namespace>.<name>`); needs the RBAC the chart
    /// grants with `kubernetesCSR.enabled`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) kubernetes_csr: bool,

    /// Let InternalClusterIssuers (written by the platform team) connect anywhere and
    /// show PKI errors whole in their statuses; the egress policy and the errors told by
    /// kind only then apply to namespaced InternalIssuers only.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) egress_exempt_cluster_issuers: bool,

    /// A PKCS#11 module (shared library path in this container) issuers may name for a
    /// CA key in a token (`spec.ca.pkcs11.module`), comma-separated or repeated. None by
    /// default: no module is loaded unless listed here.
    #[arg(long = "pkcs11-module", value_delimiter = ',')]
    pub(crate) pkcs11_modules: Vec<std::path::PathBuf>,

    /// Let namespaced InternalIssuers use the `--pkcs11-module`s too; by default only
    /// InternalClusterIssuers may (a token's PIN locks after a few wrong tries).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) pkcs11_namespaced_issuers: bool,

    /// Approve or deny every undecided CertificateRequest (to any issuer) by the
    /// cluster's IssuancePolicies. cert-manager's own approver must then be off
    /// (`--controllers=*,-certificaterequests-approver`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) policy_approver: bool,

    /// How applicable IssuancePolicies combine: `all` must allow a request (layered
    /// governance), or `any` one that the requester may `use` (approver-policy's rule).
    #[arg(long, value_enum, default_value_t = PolicyEvaluation::All)]
    pub(crate) policy_evaluation: PolicyEvaluation,

    /// What happens to a request no IssuancePolicy applies to: `deny` it, or `ignore`
    /// it for another approver.
    #[arg(long, value_enum, default_value_t = PolicyUnmatched::Deny)]
    pub(crate) policy_unmatched: PolicyUnmatched,

    /// The signers the policy approver decides for, as cert-manager names them: exact
    /// names (`clusterissuers.cert-manager.io/corp`) or every one of a resource
    /// (`issuers.cert-manager.io/*`), comma-separated or repeated: those the controller
    /// may `approve` (the chart's `policy.approveSignerNames`). Every signer when none
    /// is given.
    #[arg(long = "policy-approve-signer", value_delimiter = ',')]
    pub(crate) policy_approve_signers: Vec<String>,

    /// Keep a ConfigMap `certwright-issuance-policies` in each namespace some
    /// IssuancePolicy selects, summarising the policies that apply there.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) publish_policy_summaries: bool,

    /// This pod's addresses (every family), refused to issuers; set from the downward
    /// API's `status.podIPs`.
    #[arg(long, env = "POD_IPS", value_delimiter = ',')]
    pub(crate) pod_ips: Vec<std::net::IpAddr>,
}

/// Accepts `:9402` (all interfaces) as well as `host:port`.
fn parse_addr(raw: &str) -> Result<SocketAddr, String> {
    let full = if raw.starts_with(':') {
        format!("0.0.0.0{raw}")
    } else {
        raw.to_string()
    };
    full.parse()
        .map_err(|e| format!("{raw:?} is not an address like :9402 or 127.0.0.1:9402: {e}"))
}

fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    certwright_api::parse_duration(raw).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_follow_controller_runtime() {
        let flags = Flags::try_parse_from(["certwright-controller"]).unwrap();
        assert!(flags.leader_elect);
        let bare = Flags::try_parse_from(["certwright-controller", "--leader-elect"]).unwrap();
        assert!(bare.leader_elect);
        let off = Flags::try_parse_from(["certwright-controller", "--leader-elect=false"]).unwrap();
        assert!(!off.leader_elect);
        assert_eq!(flags.metrics_bind_address.port(), 9402);
        assert_eq!(flags.health_probe_bind_address.port(), 8081);
        assert_eq!(flags.issuer_health_check_interval.as_secs(), 300);
        assert_eq!(flags.max_retry_duration.as_secs(), 3600);
        assert_eq!(flags.log_format, LogFormat::Json);
    }

    #[test]
    fn accepts_go_style_addresses_and_durations() {
        let flags = Flags::try_parse_from([
            "certwright-controller",
            "--metrics-bind-address",
            ":9999",
            "--leader-elect=false",
            "--issuer-health-check-interval",
            "1m30s",
            "--log-format",
            "text",
        ])
        .unwrap();
        assert_eq!(flags.metrics_bind_address.to_string(), "0.0.0.0:9999");
        assert!(!flags.leader_elect);
        assert_eq!(flags.issuer_health_check_interval.as_secs(), 90);
        let err = Flags::try_parse_from([
            "certwright-controller",
            "--issuer-health-check-interval",
            "5 minutes",
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("issuer-health-check-interval"),
            "{err}"
        );
    }
}
