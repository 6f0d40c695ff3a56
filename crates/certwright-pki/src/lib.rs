//! The PKI backend contract for certwright.
//!
//! A backend turns a verified CSR into a certificate chain by asking a CA. The engine
//! knows backends only through the [`Backend`] trait, its [`Outcome`], [`SignRequest`],
//! [`Error`] and [`Health`]; this crate holds that contract and nothing that talks to
//! a network. The adapters are crates of their own (`certwright-backend-ca`, `-rest`,
//! `-adcs`, `-ejbca`, over the shared HTTPS client in `certwright-backend-http`), and
//! `certwright-backends` builds one from an issuer spec. A third party adds a backend
//! by implementing [`Backend`] in its own crate and running the conformance suite
//! (`certwright-conformance`) against it. [`egress`] is the policy network adapters
//! keep to for the issuers a tenant writes.
#![deny(missing_docs)]

pub mod egress;
mod error;
mod request;

use std::time::Duration;

pub use error::{AnsweredStatus, Classified, Error};
pub use request::{Requester, SignRequest};

use certwright_x509::{Certificate, Chain};

/// Default timeout of each call to a PKI (connect, send, read the whole answer), for
/// issuers that name none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default lifetime of a certificate whose request and issuer name none: 90 days, as
/// cert-manager's own default.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// What a backend answers when it accepts a request.
#[derive(Clone, Debug)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "one Outcome per sign call; boxing the bundle would only add an allocation"
)]
pub enum Outcome {
    /// Signed: the chain, leaf first, and the root.
    Issued(IssuedBundle),
    /// Accepted but waiting on the CA side (e.g. CA-manager approval). The caller
    /// persists `id` before anything else and later calls [`Backend::poll`]; it never
    /// submits the same request again.
    Pending(PendingRequest),
}

/// A request the CA holds for later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRequest {
    /// The CA's id for the request; opaque to the caller, at most 256 bytes.
    pub id: String,
    /// When to poll next.
    pub retry_after: Duration,
}

/// A signed certificate with its chain, ordered for cert-manager.
#[derive(Clone, Debug)]
pub struct IssuedBundle {
    /// The leaf first, then intermediates: `status.certificate`.
    pub chain: Vec<Certificate>,
    /// The root CA: `status.ca`. `None` when the CA did not disclose it.
    pub ca: Option<Certificate>,
}

impl IssuedBundle {
    /// Orders whatever certificates the CA returned (in any order, with duplicates,
    /// possibly including the root) into leaf, intermediates and root.
    pub fn from_certificates(certs: Vec<Certificate>) -> Result<Self, Error> {
        let chain = Chain::order(certs).map_err(|e| Error::InvalidResponse {
            message: format!("the returned chain is unusable: {e}"),
        })?;
        let (chain, ca) = chain.split();
        Ok(IssuedBundle { chain, ca })
    }

    /// The issued certificate.
    pub fn leaf(&self) -> Option<&Certificate> {
        self.chain.first()
    }

    /// `status.certificate`: leaf then intermediates, PEM.
    pub fn certificate_pem(&self) -> String {
        certwright_x509::certificates_to_pem(&self.chain)
    }

    /// `status.ca`: the root, PEM; empty when unknown.
    pub fn ca_pem(&self) -> String {
        self.ca
            .as_ref()
            .map(Certificate::to_pem)
            .unwrap_or_default()
    }
}

/// What a health check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// A sentence for the issuer's Ready condition, e.g.
    /// `"cfssl answered; profile web-server; CA chain of 2"`.
    pub message: String,
}

/// A PKI that signs certificates.
///
/// # Contract
/// Every implementation must honour these rules; the conformance suite
/// (`certwright-conformance`) checks them against each adapter, and a third party runs
/// it against its own.
/// - **Bounded.** Every network call has a timeout and every response a size cap; a
///   call never hangs and never buffers an unbounded body.
/// - **Exactly once.** `sign` submits the request to the CA at most once per call and
///   never retries a submission internally: retries belong to the caller, which knows
///   whether a previous attempt reached the CA. Backends whose CA accepts an
///   idempotency key send [`SignRequest::idempotency_key`].
/// - **Pending, not blocking.** A CA that needs out-of-band approval yields
///   [`Outcome::Pending`] with its id; `poll` with that id returns `Issued`, `Pending`
///   again, or [`Error::Rejected`] when the CA denied it, and never resubmits.
/// - **Ordered chains.** `Issued` carries the leaf first, then intermediates, and the
///   root (when known) in `ca`, built with [`IssuedBundle::from_certificates`].
/// - **Classified errors.** Failures map to exactly one [`Error`] variant, which decides
///   what the caller does next: retry later ([`Error::Transient`],
///   [`Error::RateLimited`], [`Error::InvalidResponse`]), fail the request
///   ([`Error::Rejected`]), or mark the issuer not ready ([`Error::Unauthorized`],
///   [`Error::Misconfigured`]).
/// - **Quiet about secrets.** No key, credential or whole CSR appears in an error
///   message or a log line.
/// - **Lost answers.** [`Error::Transient`], [`Error::RateLimited`] and
///   [`Error::Unauthorized`] from `sign` promise that submitting again cannot make a
///   second certificate (nothing reached the CA, the CA refused it, or it deduplicates
///   by the idempotency key); the caller may submit again. When the request body may
///   have been acted on and its answer was lost, return [`Error::AnswerLost`] (the
///   caller asks [`Backend::recover`] before anything else) or [`Error::Rejected`]
///   saying so; never one of those three.
/// - **Shareable.** One instance serves concurrent calls from many tasks.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A short name for logs, metrics and the issuer's `status.backend` (`ca`, `rest`,
    /// `cfssl`, `adcs`, `ejbca`): users see it, so it stays the same across versions.
    fn kind(&self) -> &'static str;

    /// Submits a verified CSR to the CA.
    async fn sign(&self, request: &SignRequest) -> Result<Outcome, Error>;

    /// Asks the CA about a request it answered with [`Outcome::Pending`]. `request` is
    /// the original request, for backends that need it to finish the enrolment.
    async fn poll(&self, pending_id: &str, request: &SignRequest) -> Result<Outcome, Error>;

    /// Checks that the CA is reachable and accepts these credentials, without signing.
    async fn check(&self) -> Result<Health, Error>;

    /// When the CA certificate this backend signs with (or the first of its chain)
    /// expires, for backends that hold it: the engine exports it as
    /// `certwright_issuer_ca_expiry_timestamp_seconds`. The default, `None`, is right
    /// for a remote CA whose certificate the backend does not see.
    fn ca_expiry(&self) -> Option<std::time::SystemTime> {
        None
    }

    /// The CA certificates of a backend that holds its CA (the local CA): which one signs
    /// now, what relying parties should trust, and a rotation under way. The engine
    /// records before each signature until when the signing CA's certificates are
    /// valid, publishes the trust bundle, and reports the rotation. The default, `None`,
    /// is right for a remote CA.
    fn ca_certificates(&self) -> Option<CaCertificates> {
        None
    }

    /// Finds out what the CA did with a submission of `request` that may have reached
    /// it at `submitted` and whose answer never arrived (the caller stopped mid-call).
    /// The caller asks this before it submits the same request again, and submits only
    /// on [`Recovery::SubmitAgain`].
    ///
    /// The default, [`Recovery::Unknown`], is right for a CA that cannot be asked: the
    /// caller then fails the request rather than risk a second certificate.
    async fn recover(
        &self,
        request: &SignRequest,
        submitted: std::time::SystemTime,
    ) -> Result<Recovery, Error> {
        let _ = (request, submitted);
        Ok(Recovery::Unknown)
    }
}

/// The CA certificates of a backend that holds its CA ([`Backend::ca_certificates`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CaCertificates {
    /// The CA certificate that signs now.
    pub signing: Certificate,
    /// What relying parties trust the signing CA by: the top certificate of its chain
    /// (its root, when the chain reaches one). Issuance is recorded by this anchor.
    pub signing_anchor: Certificate,
    /// What relying parties should trust now: the anchor of each CA in use.
    pub trust: Vec<Certificate>,
    /// The rotation under way, if any.
    pub rotation: Option<RotationState>,
}

impl CaCertificates {
    /// `signing` signs under `signing_anchor`, `trust` is to be trusted, no rotation.
    pub fn new(signing: Certificate, signing_anchor: Certificate, trust: Vec<Certificate>) -> Self {
        CaCertificates {
            signing,
            signing_anchor,
            trust,
            rotation: None,
        }
    }
}

/// Until when the certificates issued under each trust anchor are valid, as the caller
/// records them before each signature (the engine keeps them in the issuer's status).
/// A rotating CA asks it, live, whether the anchor it would stop publishing still
/// has certificates in use.
pub trait IssuanceRecords: Send + Sync + std::fmt::Debug {
    /// Until when certificates issued under the trust anchor with this SHA-256
    /// fingerprint (lowercase hex) are valid; `None` when none is recorded.
    fn issued_until(&self, anchor_fingerprint: &str) -> Option<std::time::SystemTime>;
}

/// The phase of a CA rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotationPhase {
    /// The current CA signs; both roots are trusted.
    Distribute,
    /// The next CA signs; both roots are trusted.
    Switch,
    /// The next CA signs; only its root is trusted.
    Retire,
}

impl RotationPhase {
    /// The phase's name: `Distribute`, `Switch`, `Retire`.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationPhase::Distribute => "Distribute",
            RotationPhase::Switch => "Switch",
            RotationPhase::Retire => "Retire",
        }
    }
}

/// A CA rotation as a backend carries it out.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RotationState {
    /// The phase the issuer asked for.
    pub requested: RotationPhase,
    /// The phase in effect: `Switch` while `Retire` waits for the current CA's
    /// certificates to expire.
    pub phase: RotationPhase,
    /// The CA the rotation moves from.
    pub current: Certificate,
    /// Until when certificates issued under the current CA's trust anchor are valid, as
    /// recorded.
    pub current_issued_until: Option<std::time::SystemTime>,
    /// The CA the rotation moves to.
    pub next: Certificate,
}

impl RotationState {
    /// A rotation from `current` to `next`, asked to be in `requested` and in `phase`.
    pub fn new(
        requested: RotationPhase,
        phase: RotationPhase,
        current: Certificate,
        current_issued_until: Option<std::time::SystemTime>,
        next: Certificate,
    ) -> Self {
        RotationState {
            requested,
            phase,
            current,
            current_issued_until,
            next,
        }
    }
}

/// What became of a submission whose answer never arrived ([`Backend::recover`]).
// Returned once per recovery, moved straight into the caller's plan: as `sign`'s
// `Outcome`, not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum Recovery {
    /// The CA issued the certificate or holds the request: this outcome, as `sign`
    /// would have returned it.
    Found(Outcome),
    /// Submitting again cannot make a second certificate: the CA kept nothing of the
    /// earlier submission, answers a repeated one with the first answer (an idempotency
    /// key), or keeps nothing at all (a CA key in this process).
    SubmitAgain,
    /// Nothing found yet, but the earlier submission may still be on its way into the
    /// CA (its call's timeout has not passed): ask again after `retry_after`.
    NotYet {
        /// When to ask again.
        retry_after: std::time::Duration,
    },
    /// The CA cannot be asked; it may have issued a certificate for the request.
    Unknown,
}
