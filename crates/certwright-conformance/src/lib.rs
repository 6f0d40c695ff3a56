//! The [`Backend`] contract of `certwright-pki` as one test suite, run against every
//! backend: certwright's own adapters and yours.
//!
//! A [`Harness`] knows how to put its backend (and the CA behind it) into each
//! [`Scenario`]; the cases here drive the backend through the [`Backend`] trait only and
//! assert what the engine relies on: issued chains ordered and carrying the CSR's key and
//! names, pending requests polled without a second submission, rejections with the CA's
//! reason, and every failure classified as the [`Error`] variant that tells the engine
//! what to do next. [`conformance_suite!`](crate::conformance_suite) turns a harness
//! into one `#[tokio::test]` per case. A scenario a backend cannot meet (a local CA
//! cannot be unreachable) is declared by returning `None`, and the case says so on
//! stderr.
//!
//! A crate that runs the suite dev-depends on this crate, on `tokio` (features `macros`
//! and `rt-multi-thread`, for the generated tests) and on `async-trait` (to implement
//! [`Harness`]; also re-exported here as [`async_trait`]).
//! `examples/third-party-backend` in certwright's repository is a backend in its own
//! crate that passes the suite.

#![deny(missing_docs)]

pub use async_trait::async_trait;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use certwright_fixtures::{CsrBuilder, KeyKind};
use certwright_pki::{Backend, Error, IssuedBundle, Outcome, SignRequest};
use certwright_x509::Csr;

/// A situation the CA behind a backend is put in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scenario {
    /// The CA signs at once.
    Issue,
    /// The CA holds requests for approval (see [`Harness::approve`]).
    Pending,
    /// The CA refuses the request by policy, with a reason.
    Reject,
    /// The CA answers 429 with `Retry-After: 7`.
    RateLimit,
    /// The CA answers 500.
    ServerError,
    /// Nothing listens at the CA's address.
    ConnectionRefused,
    /// The CA accepts the connection and never answers.
    Hang,
    /// The CA answers 200 with an HTML page (a proxy's login page).
    Html200,
    /// The CA answers 200 with JSON cut short.
    TruncatedJson,
    /// The CA answers 200 with a body over the response cap.
    Oversized,
    /// The CA's TLS certificate is not signed by the issuer's `caBundle`.
    WrongCaBundle,
}

/// A backend put into a scenario, with what the case should send and expect.
pub struct Setup {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    /// Common name for the case's CSR (a CA may whitelist names).
    pub common_name: String,
    /// Request a CA certificate (how a local CA is made to reject).
    pub is_ca: bool,
    /// For [`Scenario::Reject`]: text the CA's reason must contain.
    pub reason: Option<String>,
}

impl Setup {
    /// A setup that sends an ordinary request for `www.example.test`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Setup {
            backend,
            common_name: "www.example.test".to_string(),
            is_ca: false,
            reason: None,
        }
    }
}

/// What a backend under test can do, so cases assert only what applies.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// The certificate's lifetime follows the requested duration (cfssl's profile
    /// decides it instead).
    pub honours_duration: bool,
    /// CA certificates can be requested with `isCA`.
    pub issues_ca_certificates: bool,
    /// The chain reaches a root, so `IssuedBundle::ca` must be set.
    pub returns_root: bool,
}

/// Drives one backend and the CA behind it.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// The backend's name, for messages.
    fn name(&self) -> &str;

    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// A backend facing a CA in `scenario`, or `None` when the scenario cannot happen
    /// with this backend.
    async fn setup(&self, scenario: Scenario) -> Option<Setup>;

    /// Approves the pending request `id` on the CA side.
    async fn approve(&self, id: &str);

    /// Denies the pending request `id` on the CA side with `reason`.
    async fn deny(&self, id: &str, reason: &str);

    /// How many sign submissions the CA has received, when it can tell.
    fn submissions(&self) -> Option<u64>;
}

fn not_applicable(harness: &dyn Harness, what: impl std::fmt::Debug) {
    eprintln!(
        "conformance: {what:?} does not apply to the {} backend",
        harness.name()
    );
}

fn request(setup: &Setup, kind: KeyKind, duration: Duration) -> SignRequest {
    let generated = CsrBuilder::new(kind)
        .common_name(&setup.common_name)
        .dns(&setup.common_name)
        .dns("alt.example.test")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
        .build();
    let csr = Csr::parse(generated.csr_pem.as_bytes()).expect("fixture CSR parses");
    let mut request = SignRequest::new(csr, "9d6e4a52-6a4b-4bd6-9a39-3b5d0c7f2a11");
    request.duration = Some(duration);
    request.is_ca = setup.is_ca;
    request.usages = vec![
        "digital signature".into(),
        "key encipherment".into(),
        "server auth".into(),
    ];
    request.requester = certwright_pki::Requester {
        namespace: "apps".into(),
        name: "web-1".into(),
    };
    request
}

fn expect_issued(harness: &dyn Harness, outcome: Result<Outcome, Error>) -> IssuedBundle {
    match outcome {
        Ok(Outcome::Issued(bundle)) => bundle,
        other => panic!("{}: expected Issued, got {other:?}", harness.name()),
    }
}

fn assert_bundle_matches(
    harness: &dyn Harness,
    bundle: &IssuedBundle,
    request: &SignRequest,
    duration: Duration,
) {
    let name = harness.name();
    let leaf = bundle
        .leaf()
        .unwrap_or_else(|| panic!("{name}: empty chain"));
    assert_eq!(
        leaf.public_key().spki_der,
        request.csr.public_key().spki_der,
        "{name}: the leaf must carry the CSR's key"
    );
    let mut dns = leaf.sans().dns.clone();
    dns.sort();
    let mut want = request.csr.sans().dns.clone();
    want.sort();
    assert_eq!(dns, want, "{name}: DNS SANs");
    assert_eq!(leaf.sans().ips, request.csr.sans().ips, "{name}: IP SANs");
    // Leaf first, each certificate signed by the next, the root last in `ca`.
    for pair in bundle.chain.windows(2) {
        pair[0]
            .verify_signed_by(&pair[1])
            .unwrap_or_else(|e| panic!("{name}: chain out of order: {e}"));
    }
    let top = bundle.chain.last().unwrap_or(leaf);
    if harness.capabilities().returns_root {
        let root = bundle
            .ca
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no root in ca"));
        assert!(root.is_self_issued(), "{name}: ca must be the root");
        top.verify_signed_by(root)
            .unwrap_or_else(|e| panic!("{name}: chain does not reach ca: {e}"));
        assert!(
            bundle.chain.iter().all(|c| c.der() != root.der()),
            "{name}: the root belongs in ca, not in the chain"
        );
    }
    let now = jiff::Timestamp::now();
    assert!(
        leaf.not_before() <= now + jiff::SignedDuration::from_secs(300),
        "{name}: notBefore in the future"
    );
    assert!(leaf.not_after() > now, "{name}: already expired");
    if harness.capabilities().honours_duration {
        let lifetime = leaf.not_after().duration_since(leaf.not_before());
        let want = jiff::SignedDuration::try_from(duration).unwrap_or_default();
        let slack = jiff::SignedDuration::from_secs(120);
        assert!(
            lifetime >= want - slack && lifetime <= want + slack,
            "{name}: lifetime {lifetime:?}, requested {want:?}"
        );
    }
}

async fn issue(harness: &dyn Harness, kind: KeyKind) {
    let Some(setup) = harness.setup(Scenario::Issue).await else {
        return not_applicable(harness, Scenario::Issue);
    };
    let duration = Duration::from_secs(48 * 3600);
    let request = request(&setup, kind, duration);
    let before = harness.submissions();
    let bundle = expect_issued(harness, setup.backend.sign(&request).await);
    assert_bundle_matches(harness, &bundle, &request, duration);
    if let (Some(before), Some(after)) = (before, harness.submissions()) {
        assert_eq!(
            after - before,
            1,
            "{}: one sign call, one submission",
            harness.name()
        );
    }
}

/// An RSA CSR is issued with its SANs, its key and the requested validity.
pub async fn issues_rsa(harness: &dyn Harness) {
    issue(harness, KeyKind::Rsa2048).await;
}

/// An ECDSA P-256 CSR is issued with its SANs, its key and the requested validity.
pub async fn issues_ecdsa(harness: &dyn Harness) {
    issue(harness, KeyKind::EcdsaP256).await;
}

/// `isCA` yields a CA certificate.
pub async fn issues_ca_certificate(harness: &dyn Harness) {
    if !harness.capabilities().issues_ca_certificates {
        return not_applicable(harness, "isCA");
    }
    let Some(mut setup) = harness.setup(Scenario::Issue).await else {
        return not_applicable(harness, Scenario::Issue);
    };
    setup.is_ca = true;
    let request = request(&setup, KeyKind::EcdsaP256, Duration::from_secs(24 * 3600));
    let bundle = expect_issued(harness, setup.backend.sign(&request).await);
    let leaf = bundle.leaf().expect("issued chain has a leaf");
    assert!(
        leaf.is_ca(),
        "{}: isCA must give a CA certificate",
        harness.name()
    );
}

/// A request the CA holds is Pending with an id, stays Pending when polled, and is
/// Issued on the poll after approval, without a second submission.
pub async fn pending_then_issued(harness: &dyn Harness) {
    let Some(setup) = harness.setup(Scenario::Pending).await else {
        return not_applicable(harness, Scenario::Pending);
    };
    let duration = Duration::from_secs(24 * 3600);
    let request = request(&setup, KeyKind::EcdsaP256, duration);
    let id = match setup.backend.sign(&request).await {
        Ok(Outcome::Pending(pending)) => {
            assert!(!pending.id.is_empty() && pending.id.len() <= 256);
            assert!(pending.retry_after > Duration::ZERO);
            pending.id
        }
        other => panic!("{}: expected Pending, got {other:?}", harness.name()),
    };
    let submissions = harness.submissions();
    match setup.backend.poll(&id, &request).await {
        Ok(Outcome::Pending(again)) => assert_eq!(again.id, id),
        other => panic!("{}: expected still Pending, got {other:?}", harness.name()),
    }
    harness.approve(&id).await;
    let bundle = expect_issued(harness, setup.backend.poll(&id, &request).await);
    assert_bundle_matches(harness, &bundle, &request, duration);
    assert_eq!(
        harness.submissions(),
        submissions,
        "{}: polling must not resubmit",
        harness.name()
    );
}

/// A pending request the CA denies is Rejected with the CA's reason when polled.
pub async fn pending_then_denied(harness: &dyn Harness) {
    let Some(setup) = harness.setup(Scenario::Pending).await else {
        return not_applicable(harness, Scenario::Pending);
    };
    let request = request(&setup, KeyKind::EcdsaP256, Duration::from_secs(3600));
    let id = match setup.backend.sign(&request).await {
        Ok(Outcome::Pending(pending)) => pending.id,
        other => panic!("{}: expected Pending, got {other:?}", harness.name()),
    };
    harness.deny(&id, "denied by officer jdoe").await;
    match setup.backend.poll(&id, &request).await {
        Err(Error::Rejected { reason }) => {
            assert!(
                reason.contains("denied by officer jdoe"),
                "{}: reason {reason:?}",
                harness.name()
            )
        }
        other => panic!("{}: expected Rejected, got {other:?}", harness.name()),
    }
}

/// A policy refusal is Rejected and carries the CA's own reason.
pub async fn rejected_with_reason(harness: &dyn Harness) {
    let Some(setup) = harness.setup(Scenario::Reject).await else {
        return not_applicable(harness, Scenario::Reject);
    };
    let request = request(&setup, KeyKind::EcdsaP256, Duration::from_secs(3600));
    let err = setup.backend.sign(&request).await;
    match err {
        Err(e @ Error::Rejected { .. }) => {
            assert!(!e.is_retryable() && !e.is_issuer_fault());
            if let (Some(want), Error::Rejected { reason }) = (&setup.reason, &e) {
                assert!(
                    reason.contains(want.as_str()),
                    "{}: reason {reason:?} lacks {want:?}",
                    harness.name()
                );
            }
        }
        other => panic!("{}: expected Rejected, got {other:?}", harness.name()),
    }
}

async fn expect_error(
    harness: &dyn Harness,
    scenario: Scenario,
    check: impl FnOnce(&Error) -> bool,
    what: &str,
) {
    let Some(setup) = harness.setup(scenario).await else {
        return not_applicable(harness, scenario);
    };
    let request = request(&setup, KeyKind::EcdsaP256, Duration::from_secs(3600));
    let before = harness.submissions();
    // Every call is bounded: no backend may take a minute to give up.
    let outcome = tokio::time::timeout(Duration::from_secs(30), setup.backend.sign(&request))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: {scenario:?}: sign did not return within 30s",
                harness.name()
            )
        });
    match outcome {
        Err(e) if check(&e) => {
            if let (Some(before), Some(after)) = (before, harness.submissions()) {
                assert!(
                    after - before <= 1,
                    "{}: {scenario:?}: a failed sign must not be resubmitted by the backend ({} submissions)",
                    harness.name(),
                    after - before
                );
            }
            let text = e.to_string();
            assert!(
                !text.contains("BEGIN CERTIFICATE REQUEST"),
                "{}: error message must not quote the CSR: {text}",
                harness.name()
            );
            assert!(
                text.len() < 1024,
                "{}: error message too long: {} bytes",
                harness.name(),
                text.len()
            );
        }
        other => panic!(
            "{}: {scenario:?}: expected {what}, got {other:?}",
            harness.name()
        ),
    }
}

/// 429 with `Retry-After: 7` is RateLimited with a 7 second delay.
pub async fn rate_limited(harness: &dyn Harness) {
    expect_error(
        harness,
        Scenario::RateLimit,
        |e| {
            matches!(e, Error::RateLimited { .. })
                && e.retry_after() == Some(Duration::from_secs(7))
        },
        "RateLimited(7s)",
    )
    .await;
}

/// A 500 is Transient.
pub async fn server_error_is_transient(harness: &dyn Harness) {
    expect_error(
        harness,
        Scenario::ServerError,
        |e| matches!(e, Error::Transient { .. }),
        "Transient",
    )
    .await;
}

/// A refused connection is Transient.
pub async fn connection_refused_is_transient(harness: &dyn Harness) {
    expect_error(
        harness,
        Scenario::ConnectionRefused,
        |e| matches!(e, Error::Transient { .. }),
        "Transient",
    )
    .await;
}

/// A CA that never answers makes the call time out: Transient when the backend knows
/// nothing reached the CA (or the CA deduplicates); when the submission itself hung and
/// may have reached the CA, AnswerLost (the caller asks `recover` before submitting
/// again) or Rejected (it fails for good), so that nothing is submitted twice blindly.
pub async fn hang_times_out(harness: &dyn Harness) {
    expect_error(
        harness,
        Scenario::Hang,
        |e| {
            matches!(
                e,
                Error::Transient { .. } | Error::AnswerLost { .. } | Error::Rejected { .. }
            )
        },
        "Transient (timeout), or AnswerLost or Rejected when the submission may have reached \
         the CA",
    )
    .await;
}

/// HTML with status 200 is an InvalidResponse.
pub async fn html_is_invalid_response(harness: &dyn Harness) {
    expect_error(
        harness,
        Scenario::Html200,
        |e| matches!(e, Error::InvalidResponse { .. }),
        "InvalidResponse",
    )
    .await;
}

/// Truncated JSON is an InvalidResponse.
pub async fn truncated_json_is_invalid_response(harness: &dyn Harness) {
    expect_error(
        harness,
        Scenario::TruncatedJson,
        |e| matches!(e, Error::InvalidResponse { .. }),
        "InvalidResponse",
    )
    .await;
}

/// A body over the cap is an InvalidResponse, not an allocation.
pub async fn oversized_is_invalid_response(harness: &dyn Harness) {
    expect_error(
        harness,
        Scenario::Oversized,
        |e| matches!(e, Error::InvalidResponse { .. }),
        "InvalidResponse",
    )
    .await;
}

/// A TLS certificate the `caBundle` does not trust is the issuer's misconfiguration.
pub async fn wrong_ca_bundle_is_misconfigured(harness: &dyn Harness) {
    expect_error(
        harness,
        Scenario::WrongCaBundle,
        |e| matches!(e, Error::Misconfigured { .. }) && e.is_issuer_fault(),
        "Misconfigured",
    )
    .await;
}

/// A healthy CA passes `check` with a message for the issuer's condition.
pub async fn check_passes(harness: &dyn Harness) {
    let Some(setup) = harness.setup(Scenario::Issue).await else {
        return not_applicable(harness, Scenario::Issue);
    };
    let health = setup
        .backend
        .check()
        .await
        .unwrap_or_else(|e| panic!("{}: check failed: {e}", harness.name()));
    assert!(!health.message.is_empty());
}

/// Expands to one `#[tokio::test]` per conformance case, each with a fresh harness
/// built by the given async expression.
///
/// ```text
/// certwright_conformance::conformance_suite!(RestHarness::start());
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@cases $harness;
            issues_rsa, issues_ecdsa, issues_ca_certificate, pending_then_issued,
            pending_then_denied, rejected_with_reason, rate_limited,
            server_error_is_transient, connection_refused_is_transient, hang_times_out,
            html_is_invalid_response, truncated_json_is_invalid_response,
            oversized_is_invalid_response, wrong_ca_bundle_is_misconfigured, check_passes);
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness.await;
                $crate::$case(&harness).await;
            }
        )*
    };
}
