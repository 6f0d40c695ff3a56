//! The `rest` backend (certwright flavour) against the REST simulator over real TLS.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use certwright_backend_http::ClientIdentity;
use certwright_backend_rest::{RestAuth, RestBackend, RestConfig};
use certwright_pki::{
    Backend, Error, IssuedBundle, Outcome, PendingRequest, Requester, SignRequest,
};
use certwright_simulators::rest_sim::{Behaviour, RestSimulator, SimAuth};
use certwright_simulators::tls::{TlsOptions, refused_url};
use certwright_simulators::{CsrBuilder, KeyKind, TestCa};
use certwright_x509::Csr;

const UID: &str = "6f1c2a0e-5b1d-4c55-9a43-7f0f5d1e2c3b";

async fn simulator() -> RestSimulator {
    RestSimulator::start().await.expect("simulator starts")
}

fn config(sim: &RestSimulator) -> RestConfig {
    RestConfig {
        ca_bundle_pem: Some(sim.tls_ca_pem().as_bytes().to_vec()),
        template: Some("web-server".to_string()),
        timeout: Duration::from_secs(5),
        ..RestConfig::new(sim.url())
    }
}

fn backend(config: RestConfig) -> RestBackend {
    RestBackend::new(config).expect("valid configuration")
}

fn request() -> SignRequest {
    let generated = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("www.example.test")
        .dns("www.example.test")
        .dns("alt.example.test")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
        .build();
    let csr = Csr::parse(generated.csr_pem.as_bytes()).expect("csr");
    let mut request = SignRequest::new(csr, UID);
    request.requester = Requester {
        namespace: "team-a".to_string(),
        name: "web-1".to_string(),
    };
    request.usages = vec!["digital signature".to_string(), "server auth".to_string()];
    request
}

fn issued(outcome: Outcome) -> IssuedBundle {
    match outcome {
        Outcome::Issued(bundle) => bundle,
        other => panic!("expected Issued, got {other:?}"),
    }
}

fn pending(outcome: Outcome) -> PendingRequest {
    match outcome {
        Outcome::Pending(pending) => pending,
        other => panic!("expected Pending, got {other:?}"),
    }
}

fn assert_matches_request(bundle: &IssuedBundle, request: &SignRequest, sim: &RestSimulator) {
    let leaf = bundle.leaf().expect("a leaf");
    assert_eq!(leaf.public_key(), request.csr.public_key());
    assert_eq!(leaf.sans().dns, request.csr.sans().dns);
    assert_eq!(leaf.sans().ips, request.csr.sans().ips);
    assert_eq!(bundle.chain.len(), 2, "leaf and the issuing CA");
    let root = certwright_x509::parse_pem_bundle(sim.issuing_root_pem().as_bytes())
        .expect("root")
        .remove(0);
    assert_eq!(
        bundle.ca.as_ref(),
        Some(&root),
        "the root goes to status.ca"
    );
}

fn assert_kind(result: Result<Outcome, Error>, label: &str) -> Error {
    match result {
        Err(err) => {
            assert_eq!(err.metric_label(), label, "{err}");
            err
        }
        Ok(outcome) => panic!("expected a {label} error, got {outcome:?}"),
    }
}

#[tokio::test]
async fn issues_with_the_csr_key_and_sans() {
    let sim = simulator().await;
    let backend = backend(config(&sim));
    assert_eq!(backend.kind(), "rest");
    let request = request();

    let bundle = issued(backend.sign(&request).await.expect("issued"));
    assert_matches_request(&bundle, &request, &sim);

    assert_eq!(sim.sign_submissions(), 1);
    assert_eq!(sim.last_idempotency_key().as_deref(), Some(UID));
    let body = sim.last_sign_body().expect("a JSON body");
    assert_eq!(body["idempotency_key"], UID);
    assert_eq!(body["template"], "web-server");
    assert_eq!(body["requester"]["namespace"], "team-a");
    assert_eq!(body["requester"]["name"], "web-1");
    assert_eq!(body["is_ca"], false);
    assert_eq!(body["duration_seconds"], 2160 * 3600);
}

#[tokio::test]
async fn the_requested_duration_and_template_are_sent() {
    let sim = simulator().await;
    let backend = backend(config(&sim));
    let mut request = request();
    request.duration = Some(Duration::from_secs(48 * 3600));
    request.template = Some("short-lived".to_string());
    let bundle = issued(backend.sign(&request).await.expect("issued"));
    let leaf = bundle.leaf().expect("leaf");
    let lifetime = leaf.not_after().as_second() - leaf.not_before().as_second();
    assert!(
        (48 * 3600 - 600..=48 * 3600 + 600).contains(&lifetime),
        "{lifetime}s"
    );
    let body = sim.last_sign_body().expect("body");
    assert_eq!(body["duration_seconds"], 48 * 3600);
    assert_eq!(body["template"], "short-lived");
}

#[tokio::test]
async fn the_same_idempotency_key_is_signed_once() {
    let sim = simulator().await;
    let backend = backend(config(&sim));
    let request = request();
    let first = issued(backend.sign(&request).await.expect("issued"));
    let second = issued(backend.sign(&request).await.expect("issued"));
    assert_eq!(first.leaf(), second.leaf());
    assert_eq!(sim.sign_submissions(), 2);
    assert_eq!(sim.certificates_issued(), 1);
}

#[tokio::test]
async fn pending_then_approved_then_polled() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::Pending);
    let backend = backend(config(&sim));
    let request = request();

    let held = pending(backend.sign(&request).await.expect("pending"));
    assert_eq!(held.retry_after, Duration::from_secs(1));
    assert_eq!(sim.waiting_ids(), vec![held.id.clone()]);

    let again = pending(
        backend
            .poll(&held.id, &request)
            .await
            .expect("still pending"),
    );
    assert_eq!(again.id, held.id);

    assert!(sim.approve(&held.id));
    let bundle = issued(backend.poll(&held.id, &request).await.expect("issued"));
    assert_matches_request(&bundle, &request, &sim);
    // Polling again returns the same certificate; nothing was resubmitted.
    let again = issued(backend.poll(&held.id, &request).await.expect("issued"));
    assert_eq!(again.leaf(), bundle.leaf());
    assert_eq!(sim.sign_submissions(), 1);
    assert_eq!(sim.polls(), 3);
}

#[tokio::test]
async fn pending_then_denied_is_rejected() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::Pending);
    let backend = backend(config(&sim));
    let request = request();
    let held = pending(backend.sign(&request).await.expect("pending"));
    assert!(sim.deny(&held.id, "denied by the CA manager"));
    match backend.poll(&held.id, &request).await {
        Err(Error::Rejected { reason }) => assert_eq!(reason, "denied by the CA manager"),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn polling_an_unknown_request_is_rejected() {
    let sim = simulator().await;
    let backend = backend(config(&sim));
    let err = assert_kind(backend.poll("req-404", &request()).await, "rejected");
    assert!(err.to_string().contains("req-404"), "{err}");
}

#[tokio::test]
async fn a_rejection_passes_the_reason_through() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::Reject(
        "CN www.example.test is not allowed".to_string(),
    ));
    let backend = backend(config(&sim));
    match backend.sign(&request()).await {
        Err(Error::Rejected { reason }) => assert_eq!(reason, "CN www.example.test is not allowed"),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn rate_limited_with_retry_after() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::RateLimit(7));
    let backend = backend(config(&sim));
    let err = assert_kind(backend.sign(&request()).await, "rate_limited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn server_errors_are_transient() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::Fail500);
    let backend = backend(config(&sim));
    let err = assert_kind(backend.sign(&request()).await, "transient");
    assert!(err.to_string().contains("500"), "{err}");
    let health = backend.check().await.expect_err("unhealthy");
    assert_eq!(health.metric_label(), "transient");
}

#[tokio::test]
async fn an_html_page_is_an_invalid_response_quoting_it() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::Html200);
    let backend = backend(config(&sim));
    let err = assert_kind(backend.sign(&request()).await, "invalid_response");
    let message = err.to_string();
    assert!(message.contains("HTML"), "{message}");
    assert!(message.contains("Corporate SSO Sign in"), "{message}");
    assert!(!message.contains("<script"), "{message}");
}

#[tokio::test]
async fn truncated_json_is_an_invalid_response() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::TruncatedJson);
    let backend = backend(config(&sim));
    assert_kind(backend.sign(&request()).await, "invalid_response");
}

#[tokio::test]
async fn an_oversized_body_is_an_invalid_response() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::Oversized(3 * 1024 * 1024));
    let backend = backend(config(&sim));
    let err = assert_kind(backend.sign(&request()).await, "invalid_response");
    assert!(err.to_string().contains("exceeds"), "{err}");
}

#[tokio::test]
async fn a_certificate_for_another_key_is_an_invalid_response() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::WrongKey);
    let backend = backend(config(&sim));
    let err = assert_kind(backend.sign(&request()).await, "invalid_response");
    assert!(err.to_string().contains("public key"), "{err}");
}

#[tokio::test]
async fn a_hanging_ca_times_out_as_transient() {
    let sim = simulator().await;
    sim.set_behaviour(Behaviour::Hang);
    let backend = backend(RestConfig {
        timeout: Duration::from_secs(1),
        ..config(&sim)
    });
    let started = Instant::now();
    let err = assert_kind(backend.sign(&request()).await, "transient");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(err.to_string().contains("timed out after 1s"), "{err}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let ca = TestCa::root(KeyKind::EcdsaP256, "unused");
    let backend = backend(RestConfig {
        ca_bundle_pem: Some(ca.cert_pem().as_bytes().to_vec()),
        timeout: Duration::from_secs(2),
        ..RestConfig::new(refused_url())
    });
    let err = assert_kind(backend.sign(&request()).await, "transient");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(backend.check().await.is_err());
}

#[tokio::test]
async fn an_untrusted_tls_certificate_is_a_misconfiguration() {
    let sim = simulator().await;
    let other = TestCa::root(KeyKind::EcdsaP256, "some other CA");
    let backend = backend(RestConfig {
        ca_bundle_pem: Some(other.cert_pem().as_bytes().to_vec()),
        ..config(&sim)
    });
    let err = assert_kind(backend.sign(&request()).await, "misconfigured");
    assert!(err.to_string().contains("not trusted by caBundle"), "{err}");
    assert_eq!(sim.sign_submissions(), 0);
}

#[tokio::test]
async fn bearer_tokens_are_checked() {
    let sim = simulator().await;
    sim.set_auth(SimAuth::Bearer("right-token".to_string()));

    let wrong = backend(RestConfig {
        auth: RestAuth::Bearer("wrong-token".to_string()),
        ..config(&sim)
    });
    let err = assert_kind(wrong.sign(&request()).await, "unauthorized");
    assert!(!err.to_string().contains("wrong-token"), "{err}");
    let err = wrong.check().await.expect_err("unauthorized");
    assert_eq!(err.metric_label(), "unauthorized");

    let none = backend(config(&sim));
    assert_kind(none.sign(&request()).await, "unauthorized");

    let right = backend(RestConfig {
        // A trailing newline, as `kubectl create secret --from-file` leaves it.
        auth: RestAuth::Bearer("right-token\n".to_string()),
        ..config(&sim)
    });
    issued(right.sign(&request()).await.expect("issued"));
    let health = right.check().await.expect("healthy");
    assert!(health.message.contains("web-server"), "{}", health.message);
}

#[tokio::test]
async fn basic_credentials_are_checked() {
    let sim = simulator().await;
    sim.set_auth(SimAuth::Basic {
        username: "certwright".to_string(),
        password: "s3cret:with colon".to_string(),
    });
    let with = |password: &str| {
        backend(RestConfig {
            auth: RestAuth::Basic {
                username: "certwright".to_string(),
                password: password.to_string(),
            },
            ..config(&sim)
        })
    };
    assert_kind(with("nope").sign(&request()).await, "unauthorized");
    issued(
        with("s3cret:with colon")
            .sign(&request())
            .await
            .expect("issued"),
    );
}

#[tokio::test]
async fn client_certificates_authenticate() {
    let clients = TestCa::root(KeyKind::EcdsaP256, "certwright clients");
    let sim = RestSimulator::start_with(
        TlsOptions::new().require_client_certificates(clients.cert_pem()),
    )
    .await
    .expect("simulator");
    let client = clients.issue_leaf(KeyKind::EcdsaP256, "certwright.example.test");
    let with_identity = backend(RestConfig {
        auth: RestAuth::ClientCertificate(ClientIdentity {
            cert_pem: client.cert_pem.into_bytes(),
            key_pem: client.key_pem.into_bytes(),
        }),
        ..config(&sim)
    });
    issued(with_identity.sign(&request()).await.expect("issued"));

    let without = backend(config(&sim));
    let err = assert_kind(without.sign(&request()).await, "unauthorized");
    assert!(err.to_string().contains("client certificate"), "{err}");

    let strangers = TestCa::root(KeyKind::EcdsaP256, "strangers");
    let stranger = strangers.issue_leaf(KeyKind::EcdsaP256, "stranger.example.test");
    let untrusted = backend(RestConfig {
        auth: RestAuth::ClientCertificate(ClientIdentity {
            cert_pem: stranger.cert_pem.into_bytes(),
            key_pem: stranger.key_pem.into_bytes(),
        }),
        ..config(&sim)
    });
    assert_kind(untrusted.sign(&request()).await, "unauthorized");
}

#[tokio::test]
async fn health_reports_the_template() {
    let sim = simulator().await;
    let health = backend(config(&sim)).check().await.expect("healthy");
    assert!(health.message.contains("127.0.0.1"), "{}", health.message);
    assert!(
        health.message.contains("template web-server"),
        "{}",
        health.message
    );
}
