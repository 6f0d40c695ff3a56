//! How the engine is tuned. Every field has a default that suits a production cluster;
//! the controller binary maps its flags onto these.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use certwright_pki::egress::EgressPolicy;

use crate::requests::decide::Backoff;

/// The default of [`EngineConfig::ca_expiry_warning`]: 30 days.
pub const DEFAULT_CA_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The default of [`EngineConfig::max_retry_duration`].
pub const DEFAULT_MAX_RETRY_DURATION: Duration = Duration::from_secs(3600);

/// Engine configuration: `EngineConfig::default()`, then set the fields to change.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Requests reconciled at once (each may wait on its issuer's own cap).
    pub max_concurrent_reconciles: usize,
    /// Where cluster-scoped issuers read their Secrets.
    pub cluster_resource_namespace: String,
    /// How often each issuer's PKI is health-checked when nothing changes.
    pub issuer_health_check_interval: Duration,
    /// Delays between attempts of a request that failed transiently.
    pub retry: Backoff,
    /// Longest wait between polls of a request pending on the CA side.
    pub max_poll_interval: Duration,
    /// In-flight calls per issuer when its spec sets none.
    pub default_max_concurrent_requests: u32,
    /// Calls per second per issuer when its spec sets none.
    pub default_requests_per_second: f64,
    /// Consecutive transient failures that open an issuer's circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long a breaker stays open before its first probe; doubles per failed probe.
    pub breaker_open_for: Duration,
    /// The longest a breaker stays open between probes.
    pub breaker_max_open_for: Duration,
    /// Name reported on Events and used as the field manager.
    pub controller_name: String,
    /// This replica's name (the pod name), reported on Events.
    pub instance: Option<String>,
    /// Where the backends of namespaced issuers (and, unless
    /// [`EngineConfig::egress_exempt_cluster_issuers`], cluster issuers) may connect.
    /// `None`: anywhere (the controller binary always sets one).
    pub egress: Option<Arc<EgressPolicy>>,
    /// Cluster issuers, which the platform team writes, connect anywhere and tell PKI
    /// errors whole.
    pub egress_exempt_cluster_issuers: bool,
    /// The statuses and Events of namespaced issuers (and, unless
    /// [`EngineConfig::egress_exempt_cluster_issuers`], cluster issuers), and of their
    /// requests, tell a PKI's failure by its kind only (refused, timed out, TLS, an HTTP
    /// status), never with the words the PKI answered
    /// ([`certwright_pki::Error::redacted`]): a tenant who points an issuer at an
    /// internal service learns whether something answered there, not what. The full
    /// error goes to the controller's log. The controller binary sets it.
    pub redact_tenant_errors: bool,
    /// Sign Kubernetes CertificateSigningRequests whose signerName names an issuer of
    /// the engine's kinds (`<plural>.<group>/<name>`, `<plural>.<group>/<namespace>.<name>`).
    pub kubernetes_csr: bool,
    /// An issuer whose CA certificate (as its backend reports it,
    /// [`certwright_pki::Backend::ca_expiry`]) expires within this window stays Ready
    /// with reason `CAExpiringSoon` and a warning Event. Zero: never.
    pub ca_expiry_warning: Duration,
    /// Where the engine may read issuers' Secrets: everywhere, or only in some
    /// namespaces (the controller's RBAC then grants no more). An issuer whose Secrets
    /// lie outside is not Ready, with reason `SecretOutOfScope`.
    pub secret_access: SecretAccess,
    /// How long a CertificateRequest may keep failing for retryable reasons (counted
    /// from its creation) before it fails, so that cert-manager's backoff takes over.
    /// `None`: retried for as long as it exists.
    pub max_retry_duration: Option<Duration>,
    /// The PKCS#11 modules (shared libraries) an issuer may name for a CA key in a token
    /// (`spec.ca.pkcs11.module`); no other file is ever loaded. Empty: none.
    pub pkcs11_modules: Vec<std::path::PathBuf>,
    /// Namespaced issuers may use [`EngineConfig::pkcs11_modules`] too. Off: only
    /// cluster issuers, which the platform team writes, may (a token's PIN locks after a
    /// few wrong tries, and a module is code run in the controller).
    pub pkcs11_namespaced_issuers: bool,
    /// The policy approver: approves or denies every undecided CertificateRequest (to
    /// any issuer) by the cluster's IssuancePolicies. `None`: off, and requests are left
    /// to another approver.
    pub policy: Option<PolicyConfig>,
}

/// How the policy approver decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// How applicable policies combine: all must allow (default), or one the requester
    /// may `use` is enough.
    pub evaluation: certwright_policy::Evaluation,
    /// What happens to a request no policy applies to.
    pub unmatched: Unmatched,
    /// Keep a ConfigMap in each namespace summarising the policies that apply there.
    pub publish_summaries: bool,
    /// The signers the approver decides for, as cert-manager names them: exactly
    /// (`clusterissuers.cert-manager.io/corp`) or every one of a resource
    /// (`issuers.cert-manager.io/*`): the ones the controller may `approve`, since
    /// cert-manager's webhook refuses a decision on any other. Empty: every signer.
    pub approve_signers: Vec<String>,
}

impl PolicyConfig {
    /// All policies must allow, unmatched requests are denied, no summaries.
    pub fn new() -> PolicyConfig {
        PolicyConfig::default()
    }

    /// With `evaluation`.
    pub fn evaluation(mut self, evaluation: certwright_policy::Evaluation) -> Self {
        self.evaluation = evaluation;
        self
    }

    /// With `unmatched`.
    pub fn unmatched(mut self, unmatched: Unmatched) -> Self {
        self.unmatched = unmatched;
        self
    }

    /// With summaries published or not.
    pub fn publish_summaries(mut self, publish: bool) -> Self {
        self.publish_summaries = publish;
        self
    }

    /// Deciding only for these signers (see [`PolicyConfig::approve_signers`]).
    pub fn approve_signers<I, S>(mut self, signers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.approve_signers = signers.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the approver decides for `signer`: a name given exactly, or under a
    /// `<resource>.<group>/*` given, the two forms cert-manager's webhook (and RBAC
    /// `resourceNames`) understand.
    pub fn approves(&self, signer: &str) -> bool {
        self.approve_signers.is_empty()
            || self
                .approve_signers
                .iter()
                .any(|given| match given.strip_suffix("/*") {
                    Some(resource) => signer
                        .strip_prefix(resource)
                        .is_some_and(|rest| rest.starts_with('/')),
                    None => given == signer,
                })
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn signers_are_given_exactly_or_by_resource() {
        let config = PolicyConfig::new().approve_signers([
            "issuers.cert-manager.io/*",
            "clusterissuers.cert-manager.io/corp",
        ]);
        assert!(config.approves("issuers.cert-manager.io/team.vault"));
        assert!(config.approves("clusterissuers.cert-manager.io/corp"));
        assert!(!config.approves("clusterissuers.cert-manager.io/corp2"));
        assert!(!config.approves("issuers.cert-manager.io.evil/x"));
        assert!(!config.approves("internalissuers.pki.certwright.io/team.a"));
        assert!(PolicyConfig::new().approves("anything/at.all"));
    }
}

/// What the policy approver does with a request no IssuancePolicy applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unmatched {
    /// Deny it, saying no policy covers its namespace and issuer (default-deny).
    #[default]
    Deny,
    /// Leave it untouched, for another approver.
    Ignore,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_concurrent_reconciles: 16,
            cluster_resource_namespace: "cert-manager".to_string(),
            issuer_health_check_interval: Duration::from_secs(300),
            retry: Backoff::default(),
            max_poll_interval: Duration::from_secs(300),
            default_max_concurrent_requests:
                certwright_api::issuer::DEFAULT_MAX_CONCURRENT_REQUESTS,
            default_requests_per_second: certwright_api::issuer::DEFAULT_REQUESTS_PER_SECOND,
            breaker_failure_threshold: 5,
            breaker_open_for: Duration::from_secs(30),
            breaker_max_open_for: Duration::from_secs(300),
            controller_name: "certwright".to_string(),
            instance: None,
            egress: None,
            egress_exempt_cluster_issuers: false,
            redact_tenant_errors: false,
            kubernetes_csr: true,
            max_retry_duration: Some(DEFAULT_MAX_RETRY_DURATION),
            secret_access: SecretAccess::All,
            ca_expiry_warning: DEFAULT_CA_EXPIRY_WARNING,
            pkcs11_modules: Vec::new(),
            pkcs11_namespaced_issuers: false,
            policy: None,
        }
    }
}

/// The namespaces whose Secrets the engine may read and watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretAccess {
    /// Every namespace (a ClusterRole): the watch is cluster-wide.
    #[default]
    All,
    /// Only these (Roles in each): one watch per namespace.
    Namespaces(BTreeSet<String>),
}

impl SecretAccess {
    /// Access to `namespaces` only; an empty list means every namespace.
    pub fn only<I, S>(namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: BTreeSet<String> = namespaces
            .into_iter()
            .map(Into::into)
            .filter(|ns| !ns.is_empty())
            .collect();
        if set.is_empty() {
            SecretAccess::All
        } else {
            SecretAccess::Namespaces(set)
        }
    }

    /// Whether Secrets in `namespace` may be read.
    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            SecretAccess::All => true,
            SecretAccess::Namespaces(set) => set.contains(namespace),
        }
    }

    /// Why Secrets in `namespace` may not be read, for an issuer's Ready message;
    /// `None` when they may.
    pub fn refusal(&self, namespace: &str) -> Option<String> {
        match self {
            SecretAccess::Namespaces(set) if !set.contains(namespace) => Some(format!(
                "the controller may read Secrets only in namespace(s) {} (the chart's \
                 secretAccess, --secret-namespace), not in {namespace:?} where this issuer's \
                 Secrets are",
                set.iter()
                    .map(|ns| format!("{ns:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_means_every_namespace() {
        assert_eq!(SecretAccess::only(Vec::<String>::new()), SecretAccess::All);
        assert_eq!(SecretAccess::only([""]), SecretAccess::All);
        assert!(SecretAccess::All.allows("anything"));
        assert_eq!(SecretAccess::All.refusal("anything"), None);
    }

    #[test]
    fn a_list_allows_its_namespaces_and_says_why_not_the_others() {
        let access = SecretAccess::only(["cert-manager", "payments"]);
        assert!(access.allows("payments"));
        assert!(!access.allows("shop"));
        assert_eq!(access.refusal("payments"), None);
        let why = access.refusal("shop").unwrap_or_default();
        assert!(why.contains(r#""cert-manager", "payments""#), "{why}");
        assert!(why.contains(r#"not in "shop""#), "{why}");
    }
}
