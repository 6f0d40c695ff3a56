//! A certwright PKI backend written outside certwright, as a third party writes one: a
//! CA that signs in process with its own key and, when asked to, holds every request
//! until an operator approves or denies it (a stand-in for a CA with a manager's
//! approval step).
//!
//! It depends on `certwright-pki` for the [`Backend`] contract only, and on
//! `certwright-conformance` in its tests, which run the whole contract suite against it
//! (`tests/conformance.rs`). An embedding controller builds it from its own issuer kind
//! and hands it to the engine like any built-in adapter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use certwright_pki::{Backend, Error, Health, IssuedBundle, Outcome, PendingRequest, SignRequest};
use certwright_x509::Certificate;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;

/// How long after a held request the engine asks again.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// How far back a certificate's validity starts, for clocks a little behind.
const BACKDATE: time::Duration = time::Duration::minutes(1);

/// The CA, shareable between tasks (clones share the CA and its queue).
#[derive(Clone)]
pub struct HeldCa {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    params: CertificateParams,
    key: KeyPair,
    root: Certificate,
    hold: bool,
    held: Mutex<HashMap<String, Decision>>,
    submissions: AtomicU64,
    serials: AtomicU64,
}

/// What the operator decided about a held request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Waiting,
    Approved,
    Denied(String),
}

impl std::fmt::Debug for HeldCa {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldCa")
            .field("name", &self.inner.name)
            .field("hold", &self.inner.hold)
            .finish_non_exhaustive()
    }
}

impl HeldCa {
    /// A new root CA `CN=<name>` with an ECDSA P-256 key; with `hold`, every request
    /// waits for [`HeldCa::approve`] or [`HeldCa::deny`].
    ///
    /// # Errors
    /// When the key cannot be made or the root cannot be signed.
    pub fn new(name: &str, hold: bool) -> Result<HeldCa, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - BACKDATE;
        params.not_after = params.not_before + time::Duration::days(3650);
        let root = params.self_signed(&key)?;
        let root = Certificate::from_der(root.der())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        Ok(HeldCa {
            inner: Arc::new(Inner {
                name: name.to_string(),
                params,
                key,
                root,
                hold,
                held: Mutex::default(),
                submissions: AtomicU64::new(0),
                serials: AtomicU64::new(1),
            }),
        })
    }

    /// Approves the held request `id`: the next poll issues it. `false` when no such
    /// request waits.
    pub fn approve(&self, id: &str) -> bool {
        self.decide(id, Decision::Approved)
    }

    /// Denies the held request `id` with `reason`: the next poll is rejected with it.
    pub fn deny(&self, id: &str, reason: &str) -> bool {
        self.decide(id, Decision::Denied(reason.to_string()))
    }

    /// The ids of the requests waiting for a decision.
    pub fn waiting(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .held()
            .iter()
            .filter(|(_, d)| **d == Decision::Waiting)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// How many sign calls reached the CA.
    pub fn submissions(&self) -> u64 {
        self.inner.submissions.load(Ordering::SeqCst)
    }

    fn decide(&self, id: &str, decision: Decision) -> bool {
        match self.held().get_mut(id) {
            Some(d) if *d == Decision::Waiting => {
                *d = decision;
                true
            }
            _ => false,
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Decision>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs the CSR (rcgen checks its self-signature again) for the requested
    /// lifetime, or certwright's default.
    fn issue(&self, request: &SignRequest) -> Result<Outcome, Error> {
        let der = CertificateSigningRequestDer::from(request.csr.der());
        let mut csr =
            CertificateSigningRequestParams::from_der(&der).map_err(|e| Error::Rejected {
                reason: format!("{} cannot sign this CSR: {e}", self.inner.name),
            })?;
        let lifetime = request.duration.unwrap_or(certwright_pki::DEFAULT_DURATION);
        let lifetime = time::Duration::try_from(lifetime).map_err(|_| Error::Rejected {
            reason: "the requested duration is too long".to_string(),
        })?;
        csr.params.not_before = OffsetDateTime::now_utc() - BACKDATE;
        csr.params.not_after = csr.params.not_before + BACKDATE + lifetime;
        let serial = self.inner.serials.fetch_add(1, Ordering::SeqCst);
        csr.params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.inner.params, &self.inner.key);
        let leaf = csr.signed_by(&issuer).map_err(|e| Error::Rejected {
            reason: format!("{} cannot sign this CSR: {e}", self.inner.name),
        })?;
        let leaf = Certificate::from_der(leaf.der()).map_err(|e| Error::InvalidResponse {
            message: format!("the signed certificate does not parse: {e}"),
        })?;
        IssuedBundle::from_certificates(vec![leaf, self.inner.root.clone()]).map(Outcome::Issued)
    }
}

#[async_trait::async_trait]
impl Backend for HeldCa {
    fn kind(&self) -> &'static str {
        "held-ca"
    }

    async fn sign(&self, request: &SignRequest) -> Result<Outcome, Error> {
        let n = self.inner.submissions.fetch_add(1, Ordering::SeqCst) + 1;
        if request.is_ca {
            return Err(Error::Rejected {
                reason: format!("{} issues no CA certificates", self.inner.name),
            });
        }
        if !self.inner.hold {
            return self.issue(request);
        }
        let id = format!("held-{n}");
        self.held().insert(id.clone(), Decision::Waiting);
        Ok(Outcome::Pending(PendingRequest {
            id,
            retry_after: POLL_EVERY,
        }))
    }

    async fn poll(&self, pending_id: &str, request: &SignRequest) -> Result<Outcome, Error> {
        let decision = self.held().get(pending_id).cloned();
        match decision {
            Some(Decision::Waiting) => Ok(Outcome::Pending(PendingRequest {
                id: pending_id.to_string(),
                retry_after: POLL_EVERY,
            })),
            Some(Decision::Approved) => {
                let outcome = self.issue(request)?;
                self.held().remove(pending_id);
                Ok(outcome)
            }
            Some(Decision::Denied(reason)) => Err(Error::Rejected { reason }),
            None => Err(Error::Rejected {
                reason: format!("{} holds no request {pending_id}", self.inner.name),
            }),
        }
    }

    async fn check(&self) -> Result<Health, Error> {
        Ok(Health {
            message: format!(
                "{} signs in process; {} requests wait for an operator",
                self.inner.name,
                self.waiting().len()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_operator_decides_each_held_request_once() {
        let ca = HeldCa::new("Example CA", true).unwrap();
        ca.held().insert("held-1".to_string(), Decision::Waiting);
        assert_eq!(ca.waiting(), vec!["held-1".to_string()]);
        assert!(ca.deny("held-1", "no change ticket"));
        assert!(!ca.approve("held-1"));
        assert!(!ca.approve("held-2"));
        assert!(ca.waiting().is_empty());
    }

    #[test]
    fn the_key_stays_out_of_debug() {
        let ca = HeldCa::new("Example CA", false).unwrap();
        let shown = format!("{ca:?}");
        assert!(
            shown.contains("Example CA") && !shown.contains("PRIVATE"),
            "{shown}"
        );
    }
}
