//! The egress policy kept by every network adapter: a backend built for an issuer a
//! tenant writes never connects to what the policy refuses (here, loopback, where the
//! simulators run), by address or by a name that resolves to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certwright_backend_adcs::{AdcsAuth, AdcsBackend, AdcsConfig};
use certwright_backend_ejbca::{EjbcaBackend, EjbcaConfig, OAuthCredentials};
use certwright_backend_rest::{RestBackend, RestConfig};
use certwright_pki::egress::EgressPolicy;
use certwright_pki::{Backend, Error, SignRequest};
use certwright_simulators::adcs_sim::{
    AdcsSimulator, DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_TEMPLATE, DEFAULT_USER,
};
use certwright_simulators::ejbca_sim::{
    CA_NAME, CERTIFICATE_PROFILE, END_ENTITY_PROFILE, EjbcaSimulator,
};
use certwright_simulators::fixtures::{CsrBuilder, KeyKind};
use certwright_simulators::rest_sim::RestSimulator;
use certwright_x509::Csr;

fn policy() -> Option<Arc<EgressPolicy>> {
    Some(Arc::new(EgressPolicy::new()))
}

fn request() -> SignRequest {
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("web.apps.example.test")
        .build();
    SignRequest::new(Csr::parse(csr.csr_pem.as_bytes()).unwrap(), "uid")
}

fn assert_refused(err: &Error, host: &str) {
    assert_eq!(err.metric_label(), "misconfigured", "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("the egress policy refuses {host}")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_by_address_and_by_name() {
    let sim = RestSimulator::start().await.unwrap();
    for (url, host) in [
        (sim.url(), "127.0.0.1"),
        (sim.url().replace("127.0.0.1", "localhost"), "localhost"),
    ] {
        let backend = RestBackend::new(RestConfig {
            ca_bundle_pem: Some(sim.tls_ca_pem().as_bytes().to_vec()),
            timeout: Duration::from_secs(5),
            egress: policy(),
            ..RestConfig::new(url)
        })
        .unwrap();
        assert_refused(&backend.check().await.expect_err("refused"), host);
        assert_refused(&backend.sign(&request()).await.expect_err("refused"), host);
    }
    assert_eq!(sim.sign_submissions(), 0);
    assert_eq!(sim.cfssl_info_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejbca_and_its_token_endpoint() {
    let sim = EjbcaSimulator::start_oauth("certwright", "s3cret")
        .await
        .unwrap();
    let mut config = EjbcaConfig::new(
        sim.url().replace("127.0.0.1", "localhost"),
        CA_NAME,
        CERTIFICATE_PROFILE,
        END_ENTITY_PROFILE,
    );
    config.ca_bundle_pem = Some(sim.tls_ca_pem().as_bytes().to_vec());
    config.timeout = Duration::from_secs(5);
    config.oauth = Some(OAuthCredentials {
        token_url: sim.token_url(),
        client_id: "certwright".into(),
        client_secret: "s3cret".into(),
        scopes: Vec::new(),
        audience: None,
    });
    config.egress = policy();
    let backend = EjbcaBackend::new(config).unwrap();
    // The token endpoint (by address) is refused first, then nothing else is tried.
    assert_refused(&backend.check().await.expect_err("refused"), "127.0.0.1");
    assert_eq!(sim.status_calls(), 0);
    assert_eq!(sim.enrollments(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_cs() {
    let sim = AdcsSimulator::start().await.unwrap();
    let mut config = AdcsConfig::new(
        sim.url().replace("127.0.0.1", "localhost"),
        DEFAULT_TEMPLATE,
        AdcsAuth::Ntlm {
            username: DEFAULT_USER.into(),
            password: DEFAULT_PASSWORD.into(),
            domain: Some(DEFAULT_DOMAIN.into()),
        },
    );
    config.ca_bundle_pem = Some(sim.tls_ca_pem().as_bytes().to_vec());
    config.timeout = Duration::from_secs(5);
    config.egress = policy();
    let backend = AdcsBackend::new(config).unwrap();
    assert_refused(
        &backend.sign(&request()).await.expect_err("refused"),
        "localhost",
    );
    assert_eq!(sim.connections(), 0);
    assert_eq!(sim.submissions(), 0);
}
