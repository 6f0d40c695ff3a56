//! The backend conformance suite against the EJBCA backend and the EJBCA simulator, over
//! real TLS on 127.0.0.1, authenticating with OAuth2 client credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certwright_backend_ejbca::{EjbcaBackend, EjbcaConfig, OAuthCredentials, approval_request_id};
use certwright_conformance::{Capabilities, Harness, Scenario, Setup};
use certwright_simulators::ejbca_sim::{
    APPROVAL_PROFILE, Behaviour, CA_NAME, CERTIFICATE_PROFILE, END_ENTITY_PROFILE, EjbcaSimulator,
};
use certwright_simulators::fixtures::{KeyKind, TestCa};
use certwright_simulators::tls::refused_url;

const CLIENT_ID: &str = "certwright";
const CLIENT_SECRET: &str = "conformance-secret";

struct EjbcaHarness {
    sim: EjbcaSimulator,
}

impl EjbcaHarness {
    async fn start() -> Self {
        EjbcaHarness {
            sim: EjbcaSimulator::start_oauth(CLIENT_ID, CLIENT_SECRET)
                .await
                .expect("EJBCA simulator starts"),
        }
    }

    fn backend(
        &self,
        url: String,
        profile: &str,
        ca_pem: &str,
        timeout: Duration,
    ) -> Arc<EjbcaBackend> {
        let mut config = EjbcaConfig::new(url, CA_NAME, profile, END_ENTITY_PROFILE);
        config.oauth = Some(OAuthCredentials {
            token_url: self.sim.token_url(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            scopes: vec!["ejbca".into()],
            audience: None,
        });
        config.ca_bundle_pem = Some(ca_pem.as_bytes().to_vec());
        config.timeout = timeout;
        config.send_end_time = true;
        Arc::new(EjbcaBackend::new(config).expect("EJBCA backend from a valid config"))
    }

    fn sim_id(id: &str) -> i64 {
        approval_request_id(id).unwrap_or_else(|| panic!("{id:?} holds no approval request id"))
    }
}

#[async_trait::async_trait]
impl Harness for EjbcaHarness {
    fn name(&self) -> &str {
        "ejbca"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // With sendEndTime, the requested lifetime is sent as end_time.
            honours_duration: true,
            // EJBCA's certificate profile decides CA-ness; the request cannot.
            issues_ca_certificates: false,
            returns_root: true,
        }
    }

    async fn setup(&self, scenario: Scenario) -> Option<Setup> {
        let timeout = Duration::from_secs(5);
        let tls = self.sim.tls_ca_pem().to_string();
        let (behaviour, url, profile, ca_pem, timeout) = match scenario {
            Scenario::Issue => (
                Behaviour::Normal,
                self.sim.url(),
                CERTIFICATE_PROFILE,
                tls,
                timeout,
            ),
            Scenario::Pending => (
                Behaviour::Normal,
                self.sim.url(),
                APPROVAL_PROFILE,
                tls,
                timeout,
            ),
            Scenario::Reject => (
                Behaviour::Reject("Subject DN field 'CN' must match 'corp.example'".into()),
                self.sim.url(),
                CERTIFICATE_PROFILE,
                tls,
                timeout,
            ),
            Scenario::RateLimit => (
                Behaviour::RateLimit(7),
                self.sim.url(),
                CERTIFICATE_PROFILE,
                tls,
                timeout,
            ),
            Scenario::ServerError => (
                Behaviour::Fail500,
                self.sim.url(),
                CERTIFICATE_PROFILE,
                tls,
                timeout,
            ),
            Scenario::ConnectionRefused => (
                Behaviour::Normal,
                refused_url(),
                CERTIFICATE_PROFILE,
                tls,
                timeout,
            ),
            Scenario::Hang => (
                Behaviour::Hang,
                self.sim.url(),
                CERTIFICATE_PROFILE,
                tls,
                Duration::from_secs(1),
            ),
            Scenario::Html200 => (
                Behaviour::Html200,
                self.sim.url(),
                CERTIFICATE_PROFILE,
                tls,
                timeout,
            ),
            // A 201 with truncated JSON means EJBCA signed: the backend fails such a
            // request as Misconfigured, never retryable, rather than enroll again
            // (the `ejbca` tests cover it).
            Scenario::TruncatedJson => return None,
            Scenario::Oversized => (
                Behaviour::Oversized(4 * 1024 * 1024),
                self.sim.url(),
                CERTIFICATE_PROFILE,
                tls,
                timeout,
            ),
            Scenario::WrongCaBundle => {
                let other = TestCa::root(KeyKind::EcdsaP256, "not the simulator's CA");
                (
                    Behaviour::Normal,
                    self.sim.url(),
                    CERTIFICATE_PROFILE,
                    other.cert_pem().to_string(),
                    timeout,
                )
            }
            _ => return None,
        };
        self.sim.set_behaviour(behaviour);
        let mut setup = Setup::new(self.backend(url, profile, &ca_pem, timeout));
        if scenario == Scenario::Reject {
            setup.reason = Some("Subject DN field 'CN' must match 'corp.example'".into());
        }
        Some(setup)
    }

    async fn approve(&self, id: &str) {
        let id = Self::sim_id(id);
        assert!(self.sim.approve(id), "no waiting enrollment {id}");
    }

    async fn deny(&self, id: &str, reason: &str) {
        let id = Self::sim_id(id);
        assert!(self.sim.deny(id, reason), "no waiting enrollment {id}");
    }

    fn submissions(&self) -> Option<u64> {
        Some(self.sim.enrollments())
    }
}

certwright_conformance::conformance_suite!(EjbcaHarness::start());
