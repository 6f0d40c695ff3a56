//! A certwright PKI backend written outside certwright, as a third party writes one: a
//! CA that signs in process with its own key and, when asked to, holds every request
//! until an operator approves or denies it (a stand-in for a CA with a manager's
//! approval step).
//!
//! It depends on `certwright-pki` for the [`Backend`] contract only, and on
//! `certwright-conformance` in its tests, which run the whole contract suite against it
//! (`tests/it/conformance.rs`). An embedding controller builds it from its own issuer kind
//! and hands it to the engine like any built-in adapter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use certwright_pki::{
    Backend, DEFAULT_DURATION, Error, Health, IssuedBundle, Outcome, PendingRequest, Recovery,
    SignRequest,
};
use certwright_x509::Certificate;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;

/// How long after a held request the engine asks again.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// How far back a certificate's validity starts, for clocks a little behind.
const BACKDATE: time::Duration = time::Duration::minutes(1);

/// The CA, shareable between tasks (clones share the CA and its records).
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
    /// Held requests by id. A record stays once decided, so that every poll of it gets
    /// the same answer (a lost answer is asked for again).
    held: Mutex<HashMap<String, Held>>,
    submissions: AtomicU64,
    serials: AtomicU64,
}

/// A request the CA holds: what it will sign, and what the operator decided.
struct Held {
    /// The request's idempotency key, to find it again after a lost answer.
    key: String,
    /// The CSR and lifetime as submitted: approval is of these, not of what a poll sends.
    csr_der: Vec<u8>,
    duration: Option<Duration>,
    usages: Vec<String>,
    state: State,
}

enum State {
    Waiting,
    Approved,
    Denied(String),
    Issued(Box<IssuedBundle>),
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
        self.decide(id, State::Approved)
    }

    /// Denies the held request `id` with `reason`: polls are rejected with it.
    pub fn deny(&self, id: &str, reason: &str) -> bool {
        self.decide(id, State::Denied(reason.to_string()))
    }

    /// The ids of the requests waiting for a decision.
    pub fn waiting(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .held()
            .iter()
            .filter(|(_, h)| matches!(h.state, State::Waiting))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// How many sign calls reached the CA.
    pub fn submissions(&self) -> u64 {
        self.inner.submissions.load(Ordering::SeqCst)
    }

    fn decide(&self, id: &str, state: State) -> bool {
        match self.held().get_mut(id) {
            Some(held) if matches!(held.state, State::Waiting) => {
                held.state = state;
                true
            }
            _ => false,
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs a CSR (rcgen checks its self-signature again) for `duration`, or
    /// certwright's default, with the requested usages.
    fn issue(
        &self,
        csr_der: &[u8],
        duration: Option<Duration>,
        usages: &[String],
    ) -> Result<IssuedBundle, Error> {
        let refuse = |why: String| Error::Rejected {
            reason: format!("{} cannot sign this request: {why}", self.inner.name),
        };
        let der = CertificateSigningRequestDer::from(csr_der);
        let mut csr =
            CertificateSigningRequestParams::from_der(&der).map_err(|e| refuse(e.to_string()))?;
        let lifetime = time::Duration::try_from(duration.unwrap_or(DEFAULT_DURATION))
            .map_err(|_| refuse("the requested duration is too long".to_string()))?;
        let not_before = OffsetDateTime::now_utc() - BACKDATE;
        let not_after = not_before
            .checked_add(BACKDATE)
            .and_then(|t| t.checked_add(lifetime))
            .ok_or_else(|| refuse("the requested duration is too long".to_string()))?;
        csr.params.not_before = not_before;
        csr.params.not_after = not_after;
        let serial = self.inner.serials.fetch_add(1, Ordering::SeqCst);
        csr.params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.use_authority_key_identifier_extension = true;
        if !usages.is_empty() {
            csr.params.key_usages.clear();
            csr.params.extended_key_usages.clear();
            for usage in usages {
                match usage_of(usage) {
                    Some(Usage::Key(u)) => csr.params.key_usages.push(u),
                    Some(Usage::Extended(u)) => csr.params.extended_key_usages.push(u),
                    None => return Err(refuse(format!("usage {usage:?} is not issued here"))),
                }
            }
        }
        let issuer = Issuer::from_params(&self.inner.params, &self.inner.key);
        let leaf = csr.signed_by(&issuer).map_err(|e| refuse(e.to_string()))?;
        let leaf = Certificate::from_der(leaf.der()).map_err(|e| Error::InvalidResponse {
            message: format!("the signed certificate does not parse: {e}"),
        })?;
        IssuedBundle::from_certificates(vec![leaf, self.inner.root.clone()])
    }
}

/// A cert-manager usage as rcgen names it.
enum Usage {
    Key(KeyUsagePurpose),
    Extended(ExtendedKeyUsagePurpose),
}

fn usage_of(usage: &str) -> Option<Usage> {
    use ExtendedKeyUsagePurpose as E;
    use KeyUsagePurpose as K;
    Some(match usage {
        "signing" | "digital signature" => Usage::Key(K::DigitalSignature),
        "content commitment" => Usage::Key(K::ContentCommitment),
        "key encipherment" => Usage::Key(K::KeyEncipherment),
        "key agreement" => Usage::Key(K::KeyAgreement),
        "data encipherment" => Usage::Key(K::DataEncipherment),
        "server auth" => Usage::Extended(E::ServerAuth),
        "client auth" => Usage::Extended(E::ClientAuth),
        "code signing" => Usage::Extended(E::CodeSigning),
        "email protection" | "s/mime" => Usage::Extended(E::EmailProtection),
        "timestamping" => Usage::Extended(E::TimeStamping),
        "ocsp signing" => Usage::Extended(E::OcspSigning),
        _ => return None,
    })
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
            return self
                .issue(request.csr.der(), request.duration, &request.usages)
                .map(Outcome::Issued);
        }
        let id = format!("held-{n}");
        self.held().insert(
            id.clone(),
            Held {
                key: request.idempotency_key.clone(),
                csr_der: request.csr.der().to_vec(),
                duration: request.duration,
                usages: request.usages.clone(),
                state: State::Waiting,
            },
        );
        Ok(Outcome::Pending(PendingRequest {
            id,
            retry_after: POLL_EVERY,
        }))
    }

    async fn poll(&self, pending_id: &str, _request: &SignRequest) -> Result<Outcome, Error> {
        // One lock for the whole answer: two polls at once sign once.
        let mut held = self.held();
        let Some(record) = held.get_mut(pending_id) else {
            return Err(Error::Rejected {
                reason: format!("{} holds no request {pending_id}", self.inner.name),
            });
        };
        match &record.state {
            State::Waiting => Ok(Outcome::Pending(PendingRequest {
                id: pending_id.to_string(),
                retry_after: POLL_EVERY,
            })),
            State::Denied(reason) => Err(Error::Rejected {
                reason: reason.clone(),
            }),
            State::Issued(bundle) => Ok(Outcome::Issued((**bundle).clone())),
            State::Approved => {
                let bundle = self.issue(&record.csr_der, record.duration, &record.usages)?;
                record.state = State::Issued(Box::new(bundle.clone()));
                Ok(Outcome::Issued(bundle))
            }
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

    /// A held request is found by its idempotency key; a CA that signs at once keeps
    /// nothing, so submitting again cannot make a second certificate it knows of.
    async fn recover(
        &self,
        request: &SignRequest,
        _submitted: std::time::SystemTime,
    ) -> Result<Recovery, Error> {
        let held = self.held();
        let found = held
            .iter()
            .find(|(_, h)| h.key == request.idempotency_key)
            .map(|(id, h)| match &h.state {
                State::Issued(bundle) => Outcome::Issued((**bundle).clone()),
                _ => Outcome::Pending(PendingRequest {
                    id: id.clone(),
                    retry_after: POLL_EVERY,
                }),
            });
        Ok(found.map_or(Recovery::SubmitAgain, Recovery::Found))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_operator_decides_each_held_request_once() {
        let ca = HeldCa::new("Example CA", true).unwrap();
        ca.held().insert(
            "held-1".to_string(),
            Held {
                key: "k".to_string(),
                csr_der: Vec::new(),
                duration: None,
                usages: Vec::new(),
                state: State::Waiting,
            },
        );
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

    #[test]
    fn cert_managers_usages_are_mapped_or_refused() {
        assert!(matches!(
            usage_of("server auth"),
            Some(Usage::Extended(ExtendedKeyUsagePurpose::ServerAuth))
        ));
        assert!(matches!(
            usage_of("digital signature"),
            Some(Usage::Key(KeyUsagePurpose::DigitalSignature))
        ));
        assert!(usage_of("netscape sgc").is_none());
    }
}
