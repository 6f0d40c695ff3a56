//! The EJBCA backend against the EJBCA simulator: what the shared conformance suite does
//! not cover. Client certificates accepted and refused, OAuth2 token caching and refresh,
//! approvals finished through finalize, EJBCA's refusals, end entity naming and
//! `end_time`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use certwright_backend_ejbca::{
    ClientIdentity, EjbcaBackend, EjbcaConfig, EndEntityNaming, OAuthCredentials,
    approval_request_id,
};
use certwright_pki::{Backend, Error, Outcome, Requester, SignRequest};
use certwright_simulators::ejbca_sim::{
    APPROVAL_PROFILE, Behaviour, CA_NAME, CERTIFICATE_PROFILE, END_ENTITY_PROFILE, EjbcaSimulator,
    PROFILE_VALIDITY, REVISION, UNAVAILABLE_PROFILE,
};
use certwright_simulators::fixtures::{CsrBuilder, GeneratedCert, KeyKind, TestCa};
use certwright_x509::Csr;

const CLIENT_ID: &str = "certwright";
const CLIENT_SECRET: &str = "s3cret-client-secret";

fn request(cn: &str, dns: &[&str]) -> SignRequest {
    let mut builder = CsrBuilder::new(KeyKind::EcdsaP256).common_name(cn);
    for name in dns {
        builder = builder.dns(name);
    }
    let csr = Csr::parse(builder.build().csr_pem.as_bytes()).expect("csr");
    let mut request = SignRequest::new(csr, "2f9d4c1e-uid");
    request.duration = Some(Duration::from_secs(7 * 24 * 3600));
    request.requester = Requester {
        namespace: "apps".into(),
        name: "web-1".into(),
    };
    request
}

fn base_config(sim: &EjbcaSimulator) -> EjbcaConfig {
    let mut config = EjbcaConfig::new(sim.url(), CA_NAME, CERTIFICATE_PROFILE, END_ENTITY_PROFILE);
    config.ca_bundle_pem = Some(sim.tls_ca_pem().as_bytes().to_vec());
    config.timeout = Duration::from_secs(5);
    config
}

fn oauth(sim: &EjbcaSimulator, secret: &str) -> OAuthCredentials {
    OAuthCredentials {
        token_url: sim.token_url(),
        client_id: CLIENT_ID.into(),
        client_secret: secret.into(),
        scopes: vec!["ejbca-rest".into()],
        audience: Some("https://ejbca.corp.example".into()),
    }
}

fn oauth_backend(sim: &EjbcaSimulator, adjust: impl FnOnce(&mut EjbcaConfig)) -> EjbcaBackend {
    let mut config = base_config(sim);
    config.oauth = Some(oauth(sim, CLIENT_SECRET));
    adjust(&mut config);
    EjbcaBackend::new(config).expect("valid configuration")
}

async fn oauth_sim() -> EjbcaSimulator {
    EjbcaSimulator::start_oauth(CLIENT_ID, CLIENT_SECRET)
        .await
        .expect("simulator starts")
}

fn identity(cert: &GeneratedCert) -> ClientIdentity {
    ClientIdentity {
        cert_pem: cert.cert_pem.clone().into_bytes(),
        key_pem: cert.key_pem.clone().into_bytes(),
    }
}

fn mtls_backend(sim: &EjbcaSimulator, client: Option<&GeneratedCert>) -> EjbcaBackend {
    let mut config = base_config(sim);
    config.client_certificate = client.map(identity);
    if client.is_none() {
        // Credentials of another kind, so that the backend is built at all.
        config.oauth = Some(oauth(sim, CLIENT_SECRET));
    }
    EjbcaBackend::new(config).expect("valid configuration")
}

fn issued(outcome: Result<Outcome, Error>) -> certwright_pki::IssuedBundle {
    match outcome {
        Ok(Outcome::Issued(bundle)) => bundle,
        other => panic!("expected Issued, got {other:?}"),
    }
}

fn pending(outcome: Result<Outcome, Error>) -> String {
    match outcome {
        Ok(Outcome::Pending(pending)) => pending.id,
        other => panic!("expected Pending, got {other:?}"),
    }
}

fn unauthorized(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Unauthorized { message }) => message,
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

fn rejected(result: Result<Outcome, Error>) -> String {
    match result {
        Err(Error::Rejected { reason }) => reason,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_the_trusted_ca_is_accepted() {
    let clients = TestCa::root(KeyKind::EcdsaP256, "Corp Client CA");
    let sim = EjbcaSimulator::start_mtls(clients.cert_pem())
        .await
        .expect("simulator starts");
    let client = clients.issue_leaf(KeyKind::EcdsaP256, "certwright.corp.example");
    let backend = mtls_backend(&sim, Some(&client));

    let health = backend.check().await.expect("healthy");
    assert!(health.message.contains(REVISION), "{}", health.message);
    assert!(
        health.message.contains("CA IssuingCA"),
        "{}",
        health.message
    );
    assert!(
        health.message.contains("TLS client certificate"),
        "{}",
        health.message
    );

    let request = request("www.apps.example.test", &["www.apps.example.test"]);
    let bundle = issued(backend.sign(&request).await);
    assert_eq!(bundle.chain.len(), 2, "leaf and issuing CA");
    assert!(bundle.ca.is_some(), "the root goes to ca");
    assert_eq!(sim.tokens_issued(), 0);

    // Role membership by common name, as EJBCA's role members match on it.
    sim.set_role_members(Some(vec!["someone-else".into()]));
    let message = unauthorized(backend.sign(&request).await);
    assert!(message.contains("is not a member of any role"), "{message}");
    sim.set_role_members(Some(vec!["certwright.corp.example".into()]));
    issued(backend.sign(&request).await);
}

// One runtime thread: the simulator reads the client's request before it drops the
// refused connection. With more threads the client's request can reach a socket the
// server already closed, whose reset then discards the TLS alert that says why (the
// backend sees "connection closed", a transient failure), which is the test server's
// timing rather than the backend's reading of the alert.
#[tokio::test]
async fn missing_or_untrusted_client_certificates_are_refused_clearly() {
    let clients = TestCa::root(KeyKind::EcdsaP256, "Corp Client CA");
    let sim = EjbcaSimulator::start_mtls(clients.cert_pem())
        .await
        .expect("simulator starts");
    let request = request("www.apps.example.test", &[]);

    // No certificate at all: the handshake fails before EJBCA (or its token endpoint)
    // sees anything.
    let without = mtls_backend(&sim, None);
    let message = unauthorized(without.sign(&request).await);
    assert!(
        message.contains("requires a TLS client certificate"),
        "{message}"
    );
    assert!(message.contains("none is configured"), "{message}");

    // A certificate from a CA EJBCA does not trust.
    let stranger = TestCa::root(KeyKind::EcdsaP256, "Stranger CA")
        .issue_leaf(KeyKind::EcdsaP256, "certwright.corp.example");
    let untrusted = mtls_backend(&sim, Some(&stranger));
    let message = unauthorized(untrusted.check().await);
    assert!(
        message.contains("refused our TLS client certificate"),
        "{message}"
    );
    assert_eq!(sim.enrollments(), 0);

    // A certificate and key that do not belong together never leave the building.
    let client = clients.issue_leaf(KeyKind::EcdsaP256, "certwright.corp.example");
    let other = clients.issue_leaf(KeyKind::EcdsaP256, "other.corp.example");
    let mut config = base_config(&sim);
    config.client_certificate = Some(ClientIdentity {
        cert_pem: client.cert_pem.into_bytes(),
        key_pem: other.key_pem.into_bytes(),
    });
    let err = EjbcaBackend::new(config).expect_err("mismatched key");
    assert_eq!(err.metric_label(), "misconfigured", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_are_cached_and_refreshed_before_they_expire() {
    let sim = oauth_sim().await;
    sim.set_token_lifetime(Duration::from_secs(2));
    let backend = oauth_backend(&sim, |_| {});
    let request = request("www.apps.example.test", &[]);

    backend.check().await.expect("healthy");
    assert_eq!(sim.tokens_issued(), 1);
    issued(backend.sign(&request).await);
    issued(backend.sign(&request).await);
    assert_eq!(sim.tokens_issued(), 1, "the token is reused while valid");

    let form = sim.last_token_request().expect("a token request");
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["scope"], "ejbca-rest");
    assert_eq!(form["audience"], "https://ejbca.corp.example");
    assert!(!form.contains_key("client_secret"));

    // Past its lifetime (minus the refresh margin) the next call fetches a new token,
    // without a refused call first.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let enrollments = sim.enrollments();
    issued(backend.sign(&request).await);
    assert_eq!(sim.tokens_issued(), 2);
    assert_eq!(sim.enrollments(), enrollments + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cached_token_is_replaced_reads_again_submissions_never() {
    let sim = oauth_sim().await;
    let backend = oauth_backend(&sim, |_| {});
    let request = request("www.apps.example.test", &[]);
    issued(backend.sign(&request).await);
    assert_eq!(sim.tokens_issued(), 1);

    // EJBCA stops accepting the cached token (its OAuth provider rotated keys). An
    // enrollment is submitted once per call: the token is dropped and the engine retries.
    sim.revoke_tokens();
    let (enrollments, certificates) = (sim.enrollments(), sim.certificates_issued());
    match backend.sign(&request).await {
        Err(e @ Error::Transient { .. }) => {
            assert!(e.is_retryable());
            assert!(e.to_string().contains("cached OAuth2 token"), "{e}");
        }
        other => panic!("expected Transient, got {other:?}"),
    }
    assert_eq!(sim.enrollments(), enrollments + 1, "submitted once");
    assert_eq!(sim.tokens_issued(), 1, "no new token within the call");
    // The engine's retry fetches a new token.
    issued(backend.sign(&request).await);
    assert_eq!(sim.tokens_issued(), 2);
    assert_eq!(sim.enrollments(), enrollments + 2);
    assert_eq!(sim.certificates_issued(), certificates + 1, "signed once");

    // A read is sent again in place with a new token.
    sim.revoke_tokens();
    let status_calls = sim.status_calls();
    backend.check().await.expect("healthy after a new token");
    assert_eq!(sim.tokens_issued(), 3);
    assert_eq!(sim.status_calls(), status_calls + 2);

    // A fresh token that EJBCA refuses is not retried: that is Unauthorized.
    sim.set_token_lifetime(Duration::ZERO);
    sim.revoke_tokens();
    let enrollments = sim.enrollments();
    assert!(matches!(
        backend.sign(&request).await,
        Err(Error::Transient { .. })
    ));
    let message = unauthorized(backend.sign(&request).await);
    assert!(message.contains("OAuth token is expired"), "{message}");
    assert_eq!(
        sim.enrollments() - enrollments,
        2,
        "one submission per call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_unauthorized_before_ejbca_is_called() {
    let sim = oauth_sim().await;
    let mut config = base_config(&sim);
    config.oauth = Some(oauth(&sim, "wrong-secret"));
    let backend = EjbcaBackend::new(config).expect("valid configuration");
    let message = unauthorized(backend.check().await);
    assert!(message.contains("invalid_client"), "{message}");
    assert!(message.contains("\"certwright\""), "{message}");
    assert!(!message.contains("wrong-secret"), "{message}");
    let message = unauthorized(backend.sign(&request("www.apps.example.test", &[])).await);
    assert!(message.contains("clientSecret"), "{message}");
    assert_eq!(sim.status_calls(), 0);
    assert_eq!(sim.enrollments(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_enrollment_is_finalized_never_enrolled_again() {
    let sim = oauth_sim().await;
    let backend = oauth_backend(&sim, |c| {
        c.certificate_profile_name = APPROVAL_PROFILE.into()
    });
    let request = request("www.apps.example.test", &["www.apps.example.test"]);

    let id = pending(backend.sign(&request).await);
    let request_id = approval_request_id(&id).expect("an approval request id");
    assert_eq!(sim.waiting_ids(), vec![request_id]);
    let password = sim.last_enrollment().expect("enrolled")["password"]
        .as_str()
        .expect("password")
        .to_string();
    assert!(
        !id.contains(&password),
        "the password is sealed, not in clear"
    );

    // Still waiting: Pending again, same id.
    assert_eq!(pending(backend.poll(&id, &request).await), id);
    assert!(sim.approve(request_id));

    // A controller restarted since (a new backend from the same Secret) finishes it.
    let restarted = oauth_backend(&sim, |c| {
        c.certificate_profile_name = APPROVAL_PROFILE.into()
    });
    let bundle = issued(restarted.poll(&id, &request).await);
    assert_eq!(
        bundle.leaf().expect("leaf").public_key().spki_der,
        request.csr.public_key().spki_der
    );
    assert_eq!(
        bundle.chain.len(),
        2,
        "leaf and issuing CA, from the CA's chain"
    );
    let root = bundle.ca.as_ref().expect("root");
    assert_eq!(root.to_pem(), sim.issuing_root_pem());
    assert_eq!(sim.enrollments(), 1, "never enrolled again");
    assert_eq!(sim.finalizations(), 2);
    assert_eq!(sim.certificates_issued(), 1);

    // EJBCA finalizes once: a later poll hears so, and fails the request.
    let reason = rejected(backend.poll(&id, &request).await);
    assert!(reason.contains("already been finalized"), "{reason}");
    assert_eq!(sim.certificates_issued(), 1);

    // An id for another request, or with other credentials, is refused without a call.
    let other = request_id + 1;
    let forged = id.replacen(&format!("{request_id}."), &format!("{other}."), 1);
    let finalizations = sim.finalizations();
    rejected(backend.poll(&forged, &request).await);
    let mut rotated = base_config(&sim);
    rotated.oauth = Some(oauth(&sim, "rotated-secret"));
    let rotated = EjbcaBackend::new(rotated).expect("valid");
    let reason = rejected(rotated.poll(&id, &request).await);
    assert!(reason.contains("credentials changed"), "{reason}");
    assert_eq!(sim.finalizations(), finalizations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_enrollment_is_rejected_with_the_approvers_words() {
    let sim = oauth_sim().await;
    let backend = oauth_backend(&sim, |_| {});
    let mut request = request("www.apps.example.test", &[]);
    // The per-request template (allowed by the issuer) picks the approval profile.
    request.template = Some(APPROVAL_PROFILE.into());
    let id = pending(backend.sign(&request).await);
    assert_eq!(
        sim.last_enrollment().expect("enrolled")["certificate_profile_name"],
        APPROVAL_PROFILE
    );
    assert!(sim.deny(
        approval_request_id(&id).expect("id"),
        "no wildcard for apps"
    ));
    let reason = rejected(backend.poll(&id, &request).await);
    assert!(reason.contains("has been rejected"), "{reason}");
    assert!(reason.contains("no wildcard for apps"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_problems_are_rejected_with_ejbcas_message() {
    let sim = oauth_sim().await;
    let backend = oauth_backend(&sim, |_| {});
    let mut request = request("www.apps.example.test", &[]);

    request.template = Some(UNAVAILABLE_PROFILE.into());
    let reason = rejected(backend.sign(&request).await);
    assert!(
        reason.contains("is not among the available certificate profiles"),
        "{reason}"
    );

    request.template = Some("NO-SUCH-PROFILE".into());
    let reason = rejected(backend.sign(&request).await);
    assert!(
        reason.contains("'NO-SUCH-PROFILE' does not exist"),
        "{reason}"
    );

    let wrong_ca = oauth_backend(&sim, |c| c.certificate_authority_name = "OtherCA".into());
    request.template = None;
    let reason = rejected(wrong_ca.sign(&request).await);
    assert!(reason.contains("OtherCA doesn't exist"), "{reason}");
    // The health check catches that one before any request fails.
    let err = wrong_ca.check().await.expect_err("no such CA");
    assert_eq!(err.metric_label(), "misconfigured", "{err}");
    assert!(err.to_string().contains("\"IssuingCA\""), "{err}");
    assert_eq!(sim.certificates_issued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_entities_are_named_by_the_issuers_rule() {
    let sim = oauth_sim().await;
    let request = request(
        "www.apps.example.test",
        &["api.apps.example.test", "www.apps.example.test"],
    );
    for naming in [
        EndEntityNaming::CommonName,
        EndEntityNaming::FirstDnsName,
        EndEntityNaming::NamespacedName,
        EndEntityNaming::Fixed("k8s-prod-cluster".into()),
    ] {
        let backend = oauth_backend(&sim, |c| c.end_entity_naming = naming);
        issued(backend.sign(&request).await);
    }
    assert_eq!(
        sim.end_entities(),
        [
            "www.apps.example.test",
            "api.apps.example.test",
            "apps/web-1",
            "k8s-prod-cluster"
        ]
    );
    // Every enrollment gets its own password.
    let backend = oauth_backend(&sim, |_| {});
    issued(backend.sign(&request).await);
    let first = sim.last_enrollment().expect("body")["password"].clone();
    issued(backend.sign(&request).await);
    let second = sim.last_enrollment().expect("body")["password"].clone();
    assert_ne!(first, second);
    assert_eq!(first.as_str().map(str::len), Some(32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_time_is_sent_only_with_send_end_time() {
    let sim = oauth_sim().await;
    let request = request("www.apps.example.test", &[]);
    let lifetime = |bundle: &certwright_pki::IssuedBundle| {
        let leaf = bundle.leaf().expect("leaf");
        leaf.not_after()
            .duration_since(leaf.not_before())
            .as_secs()
            .unsigned_abs()
    };

    let quiet = oauth_backend(&sim, |_| {});
    let bundle = issued(quiet.sign(&request).await);
    let body = sim.last_enrollment().expect("body");
    assert!(body.get("end_time").is_none(), "{body}");
    assert_eq!(body["include_chain"], true);
    assert!(body.get("account_binding_id").is_none());
    assert_eq!(
        lifetime(&bundle),
        // The simulator signs with a local CA, whose notBefore is backdated a minute.
        PROFILE_VALIDITY.as_secs() + 60,
        "the profile decides"
    );

    let sending = oauth_backend(&sim, |c| {
        c.send_end_time = true;
        c.account_binding_id = Some("eab-42".into());
    });
    let bundle = issued(sending.sign(&request).await);
    let body = sim.last_enrollment().expect("body");
    let end_time = body["end_time"].as_str().expect("end_time");
    assert!(end_time.ends_with("+00:00"), "{end_time}");
    assert_eq!(body["account_binding_id"], "eab-42");
    let want = 7 * 24 * 3600;
    assert!(
        lifetime(&bundle).abs_diff(want) <= 120,
        "{}",
        lifetime(&bundle)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_answers_and_garbage_on_the_status_call() {
    let sim = oauth_sim().await;
    let backend = oauth_backend(&sim, |_| {});
    sim.set_answer_in_pem(true);
    let bundle = issued(backend.sign(&request("www.apps.example.test", &[])).await);
    assert_eq!(bundle.chain.len(), 2);

    sim.set_behaviour(Behaviour::Html200);
    match backend.check().await {
        Err(Error::InvalidResponse { message }) => {
            assert!(message.contains("/v1/certificate/status"), "{message}");
            assert!(message.contains("HTML page"), "{message}");
        }
        other => panic!("expected InvalidResponse, got {other:?}"),
    }
    // EJBCA signed: a certificate for another key fails the request, never retried.
    sim.set_behaviour(Behaviour::WrongKey);
    let reason = rejected(backend.sign(&request("www.apps.example.test", &[])).await);
    assert!(
        reason.contains("does not carry the CSR's public key"),
        "{reason}"
    );
}

fn misconfigured(result: Result<Outcome, Error>) -> String {
    match result {
        Err(e @ Error::Misconfigured { .. }) => {
            assert!(!e.is_retryable());
            e.to_string()
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_ejbca_answered_2xx_to_an_enrollment_nothing_is_retryable() {
    let sim = oauth_sim().await;
    let request = request("www.apps.example.test", &[]);

    // A 201 whose body cannot be read.
    let backend = oauth_backend(&sim, |_| {});
    sim.set_behaviour(Behaviour::TruncatedJson);
    let message = misconfigured(backend.sign(&request).await);
    assert!(message.contains("201"), "{message}");
    assert_eq!(sim.enrollments(), 1);

    // A chain that does not fit, and no chain to download: the certificate alone.
    sim.set_behaviour(Behaviour::BrokenChain);
    let fresh = oauth_backend(&sim, |_| {});
    let bundle = issued(fresh.sign(&request).await);
    assert_eq!(bundle.chain.len(), 1);
    assert!(bundle.ca.is_none());
    assert_eq!(
        bundle.leaf().expect("leaf").public_key().spki_der,
        request.csr.public_key().spki_der
    );
    assert!(sim.chain_downloads() >= 1, "tried to download the chain");

    // A chain that does not fit, with the CA's chain known from the health check.
    sim.set_behaviour(Behaviour::Normal);
    fresh.check().await.expect("healthy");
    sim.set_behaviour(Behaviour::BrokenChain);
    let bundle = issued(fresh.sign(&request).await);
    assert_eq!(bundle.chain.len(), 2, "leaf and issuing CA");
    assert_eq!(
        bundle.ca.as_ref().expect("root").to_pem(),
        sim.issuing_root_pem()
    );

    // A 202 without a usable request id.
    sim.set_behaviour(Behaviour::WaitingWithoutId);
    let approval = oauth_backend(&sim, |c| {
        c.certificate_profile_name = APPROVAL_PROFILE.into()
    });
    let enrollments = sim.enrollments();
    let message = misconfigured(approval.sign(&request).await);
    assert!(message.contains("request_id"), "{message}");
    assert_eq!(sim.enrollments(), enrollments + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_finalize_answered_2xx_nothing_is_retried_or_called() {
    let sim = oauth_sim().await;
    let backend = oauth_backend(&sim, |c| {
        c.certificate_profile_name = APPROVAL_PROFILE.into()
    });
    let request = request("www.apps.example.test", &[]);
    backend.check().await.expect("healthy");
    let id = pending(backend.sign(&request).await);
    assert!(sim.approve(approval_request_id(&id).expect("id")));
    let downloads = sim.chain_downloads();
    sim.set_behaviour(Behaviour::TruncatedJson);
    let message = misconfigured(backend.poll(&id, &request).await);
    assert!(message.contains("201"), "{message}");
    assert_eq!(sim.finalizations(), 1);
    assert_eq!(
        sim.chain_downloads(),
        downloads,
        "no call after the finalize"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_encoded_twice_in_base64_are_read() {
    let sim = oauth_sim().await;
    sim.set_double_base64(true);
    let backend = oauth_backend(&sim, |_| {});
    let request = request("www.apps.example.test", &[]);
    let bundle = issued(backend.sign(&request).await);
    assert_eq!(bundle.chain.len(), 2, "certificate_chain decoded twice too");
    assert_eq!(
        bundle.ca.as_ref().expect("root").to_pem(),
        sim.issuing_root_pem()
    );

    // And in the answer of finalize.
    let approval = oauth_backend(&sim, |c| {
        c.certificate_profile_name = APPROVAL_PROFILE.into()
    });
    let id = pending(approval.sign(&request).await);
    assert!(sim.approve(approval_request_id(&id).expect("id")));
    let bundle = issued(approval.poll(&id, &request).await);
    assert_eq!(
        bundle.leaf().expect("leaf").public_key().spki_der,
        request.csr.public_key().spki_der
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_entity_enrolled_again_by_another_request_is_a_name_collision() {
    let sim = oauth_sim().await;
    let backend = oauth_backend(&sim, |c| {
        c.certificate_profile_name = APPROVAL_PROFILE.into()
    });
    // Two CertificateRequests with the same common name: one end entity under `cn`.
    let first = request("www.apps.example.test", &[]);
    let mut second = request("www.apps.example.test", &[]);
    second.idempotency_key = "7c1e0b2a-other-uid".into();
    second.requester.name = "web-2".into();
    let id = pending(backend.sign(&first).await);
    assert!(sim.approve(approval_request_id(&id).expect("id")));
    pending(backend.sign(&second).await);
    let reason = rejected(backend.poll(&id, &first).await);
    assert!(reason.contains("Wrong username or password"), "{reason}");
    assert!(reason.contains("same name"), "{reason}");
    assert!(reason.contains("endEntityName: namespacedName"), "{reason}");
    assert!(reason.contains("\"www.apps.example.test\""), "{reason}");
    assert_eq!(sim.certificates_issued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_id_copied_onto_another_request_does_not_open() {
    let sim = oauth_sim().await;
    let backend = oauth_backend(&sim, |c| {
        c.certificate_profile_name = APPROVAL_PROFILE.into()
    });
    let first = request("www.apps.example.test", &[]);
    let id = pending(backend.sign(&first).await);
    assert!(sim.approve(approval_request_id(&id).expect("id")));
    // Another CertificateRequest (another uid) with the first one's pending id.
    let mut other = first.clone();
    other.idempotency_key = "7c1e0b2a-other-uid".into();
    let reason = rejected(backend.poll(&id, &other).await);
    assert!(reason.contains("copied from another"), "{reason}");
    assert_eq!(sim.finalizations(), 0, "refused without a call");
    issued(backend.poll(&id, &first).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_subject_dn_is_percent_encoded_in_the_path() {
    let sim = oauth_sim().await;
    let dn = sim.ca_subject_dn();
    // The simulator's CA has a subject that needs every kind of encoding, and refuses a
    // path parameter with a raw reserved character, as EJBCA's contract reads it.
    for c in [',', ' ', '=', '+', '/', 'é'] {
        assert!(dn.contains(c), "{c:?} in {dn}");
    }
    let backend = oauth_backend(&sim, |_| {});
    let health = backend.check().await.expect("the chain downloads");
    assert!(health.message.contains(CA_NAME), "{}", health.message);
    assert_eq!(sim.chain_downloads(), 1);
    match backend
        .sign(&request("web.apps.example", &["web.apps.example"]))
        .await
    {
        Ok(Outcome::Issued(bundle)) => assert_eq!(bundle.chain[1].subject().to_string(), dn),
        other => panic!("expected Issued, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_an_enrollment_is_never_enrolled_again() {
    let sim = oauth_sim().await;
    let backend = oauth_backend(&sim, |c| c.timeout = Duration::from_secs(3));
    sim.set_behaviour(Behaviour::LoseAnswerToEnrollment);
    let first = request("web.apps.example", &["web.apps.example"]);
    let submitted = std::time::SystemTime::now();
    let err = backend.sign(&first).await.expect_err("no answer");
    assert_eq!(err.metric_label(), "answer_lost", "{err}");
    assert!(err.to_string().contains("may have enrolled"), "{err}");
    assert_eq!(sim.enrollments(), 1);
    // EJBCA did sign: a search finds the certificate with the CSR's key, and nothing is
    // enrolled again.
    sim.set_behaviour(Behaviour::Normal);
    match backend.recover(&first, submitted).await {
        Ok(certwright_pki::Recovery::Found(Outcome::Issued(bundle))) => {
            let leaf = bundle.leaf().unwrap();
            assert_eq!(leaf.public_key(), first.csr.public_key());
            assert!(bundle.ca.is_some(), "the chain is completed");
        }
        other => panic!("expected the certificate, got {other:?}"),
    }
    assert_eq!(
        (sim.enrollments(), sim.certificates_issued(), sim.searches()),
        (1, 1, 1)
    );
    // Another request of the same end entity (same name, another key) finds nothing of
    // its own: while its submission may still be reaching EJBCA (within its call's
    // timeout), that means "ask again later"; after, submitting it is safe.
    let other = request("web.apps.example", &["web.apps.example"]);
    assert!(matches!(
        backend.recover(&other, submitted).await,
        Ok(certwright_pki::Recovery::NotYet { retry_after }) if retry_after <= Duration::from_secs(34)
    ));
    let long_ago = submitted - Duration::from_secs(2 * 3600);
    assert!(matches!(
        backend.recover(&other, long_ago).await,
        Ok(certwright_pki::Recovery::SubmitAgain)
    ));

    // Nothing sent (the connection is refused): that stays a retryable failure.
    let mut config = base_config(&sim);
    config.url = certwright_simulators::tls::refused_url();
    config.oauth = Some(oauth(&sim, CLIENT_SECRET));
    let unreachable = EjbcaBackend::new(config).unwrap();
    let err = unreachable
        .sign(&request("web.apps.example", &["web.apps.example"]))
        .await
        .expect_err("refused");
    assert!(err.is_retryable(), "{err}");
}
