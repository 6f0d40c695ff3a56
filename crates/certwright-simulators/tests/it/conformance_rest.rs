//! The backend conformance suite against the REST backend and the certwright-contract
//! REST simulator, over real TLS on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certwright_backend_rest::{RestBackend, RestConfig};
use certwright_conformance::{Capabilities, Harness, Scenario, Setup};
use certwright_simulators::fixtures::{KeyKind, TestCa};
use certwright_simulators::rest_sim::{Behaviour, RestSimulator};
use certwright_simulators::tls::refused_url;

struct RestHarness {
    sim: RestSimulator,
}

impl RestHarness {
    async fn start() -> Self {
        RestHarness {
            sim: RestSimulator::start().await.expect("REST simulator starts"),
        }
    }

    fn backend(&self, url: String, ca_pem: &str, timeout: Duration) -> Arc<RestBackend> {
        let mut config = RestConfig::new(url);
        config.ca_bundle_pem = Some(ca_pem.as_bytes().to_vec());
        config.timeout = timeout;
        Arc::new(RestBackend::new(config).expect("REST backend from a valid config"))
    }
}

#[async_trait::async_trait]
impl Harness for RestHarness {
    fn name(&self) -> &str {
        "rest"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            honours_duration: true,
            // The simulator signs with an intermediate whose pathLen is 0, so it refuses
            // isCA as a real CA would; `rest_backend.rs` checks that isCA is sent.
            issues_ca_certificates: false,
            returns_root: true,
        }
    }

    async fn setup(&self, scenario: Scenario) -> Option<Setup> {
        let timeout = Duration::from_secs(5);
        let (behaviour, url, ca_pem, timeout) = match scenario {
            Scenario::Issue => (
                Behaviour::Issue,
                self.sim.url(),
                self.sim.tls_ca_pem().to_string(),
                timeout,
            ),
            Scenario::Pending => (
                Behaviour::Pending,
                self.sim.url(),
                self.sim.tls_ca_pem().to_string(),
                timeout,
            ),
            Scenario::Reject => (
                Behaviour::Reject("policy forbids names under example.test".into()),
                self.sim.url(),
                self.sim.tls_ca_pem().to_string(),
                timeout,
            ),
            Scenario::RateLimit => (
                Behaviour::RateLimit(7),
                self.sim.url(),
                self.sim.tls_ca_pem().to_string(),
                timeout,
            ),
            Scenario::ServerError => (
                Behaviour::Fail500,
                self.sim.url(),
                self.sim.tls_ca_pem().to_string(),
                timeout,
            ),
            Scenario::ConnectionRefused => (
                Behaviour::Issue,
                refused_url(),
                self.sim.tls_ca_pem().to_string(),
                timeout,
            ),
            Scenario::Hang => (
                Behaviour::Hang,
                self.sim.url(),
                self.sim.tls_ca_pem().to_string(),
                Duration::from_secs(1),
            ),
            Scenario::Html200 => (
                Behaviour::Html200,
                self.sim.url(),
                self.sim.tls_ca_pem().to_string(),
                timeout,
            ),
            Scenario::TruncatedJson => (
                Behaviour::TruncatedJson,
                self.sim.url(),
                self.sim.tls_ca_pem().to_string(),
                timeout,
            ),
            Scenario::Oversized => (
                Behaviour::Oversized(4 * 1024 * 1024),
                self.sim.url(),
                self.sim.tls_ca_pem().to_string(),
                timeout,
            ),
            Scenario::WrongCaBundle => {
                let other = TestCa::root(KeyKind::EcdsaP256, "not the simulator's CA");
                (
                    Behaviour::Issue,
                    self.sim.url(),
                    other.cert_pem().to_string(),
                    timeout,
                )
            }
            _ => return None,
        };
        self.sim.set_behaviour(behaviour);
        let mut setup = Setup::new(self.backend(url, &ca_pem, timeout));
        if scenario == Scenario::Reject {
            setup.reason = Some("policy forbids names under example.test".into());
        }
        Some(setup)
    }

    async fn approve(&self, id: &str) {
        assert!(self.sim.approve(id), "no pending request {id}");
    }

    async fn deny(&self, id: &str, reason: &str) {
        assert!(self.sim.deny(id, reason), "no pending request {id}");
    }

    fn submissions(&self) -> Option<u64> {
        Some(self.sim.sign_submissions())
    }
}

certwright_conformance::conformance_suite!(RestHarness::start());
