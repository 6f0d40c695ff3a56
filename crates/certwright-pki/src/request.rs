//! What a backend is asked to sign.

use std::time::Duration;

use certwright_x509::Csr;

/// Who asked for a certificate, for the CA's audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    /// The CertificateRequest's namespace (empty for cluster-scoped callers).
    pub namespace: String,
    /// The CertificateRequest's name.
    pub name: String,
}

impl std::fmt::Display for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A request to sign one CSR.
#[derive(Clone, Debug)]
pub struct SignRequest {
    /// The CSR, parsed and with its self-signature verified.
    pub csr: Csr,
    /// The requested lifetime; the backend's default when `None`. Backends clamp it
    /// to what the CA allows.
    pub duration: Option<Duration>,
    /// A CA certificate is requested.
    pub is_ca: bool,
    /// Requested usages in cert-manager's spelling (`digital signature`,
    /// `server auth`, ...). Empty means the backend's default usages.
    pub usages: Vec<String>,
    /// Template or profile name overriding the issuer's, already allowed by policy.
    pub template: Option<String>,
    /// A key unique to this request (the CertificateRequest's uid), sent to CAs that
    /// deduplicate submissions.
    pub idempotency_key: String,
    /// Who asked.
    pub requester: Requester,
}

impl SignRequest {
    /// A request with defaults for everything but the CSR and the idempotency key.
    pub fn new(csr: Csr, idempotency_key: impl Into<String>) -> Self {
        SignRequest {
            csr,
            duration: None,
            is_ca: false,
            usages: Vec::new(),
            template: None,
            idempotency_key: idempotency_key.into(),
            requester: Requester::default(),
        }
    }
}
