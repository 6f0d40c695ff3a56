//! The backend conformance suite against the local CA backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use certwright_backend_ca::{LocalCa, LocalCaConfig};
use certwright_conformance::{Capabilities, Harness, Scenario, Setup};
use certwright_simulators::fixtures::{KeyKind, TestCa};

struct LocalCaHarness {
    root: TestCa,
}

impl LocalCaHarness {
    async fn start() -> Self {
        LocalCaHarness {
            root: TestCa::root(KeyKind::EcdsaP384, "certwright conformance root"),
        }
    }
}

#[async_trait::async_trait]
impl Harness for LocalCaHarness {
    fn name(&self) -> &str {
        "ca"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            honours_duration: true,
            issues_ca_certificates: true,
            returns_root: true,
        }
    }

    async fn setup(&self, scenario: Scenario) -> Option<Setup> {
        match scenario {
            Scenario::Issue => {
                let ca = LocalCa::from_pem(
                    self.root.cert_pem().as_bytes(),
                    self.root.key_pem().as_bytes(),
                    LocalCaConfig::default(),
                )
                .expect("local CA from the root");
                Some(Setup::new(Arc::new(ca)))
            }
            Scenario::Reject => {
                // An intermediate with pathLen 0 may not issue a CA: the local CA's
                // own policy refusal.
                let intermediate = self.root.intermediate(KeyKind::EcdsaP256, "pathlen 0 CA");
                let chain = format!("{}{}", intermediate.cert_pem(), self.root.cert_pem());
                let ca = LocalCa::from_pem(
                    chain.as_bytes(),
                    intermediate.key_pem().as_bytes(),
                    LocalCaConfig::default(),
                )
                .expect("local CA from the intermediate");
                let mut setup = Setup::new(Arc::new(ca));
                setup.is_ca = true;
                setup.reason = Some("path".to_string());
                Some(setup)
            }
            // A CA key in memory is never pending, rate limited, unreachable or garbled.
            _ => None,
        }
    }

    async fn approve(&self, _id: &str) {}

    async fn deny(&self, _id: &str, _reason: &str) {}

    fn submissions(&self) -> Option<u64> {
        None
    }
}

certwright_conformance::conformance_suite!(LocalCaHarness::start());
