//! The backend conformance suite against the local CA with its key in a SoftHSM2 token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use certwright_backend_ca::{LocalCa, LocalCaConfig, TokenKeyConfig, TokenRef};
use certwright_conformance::{Capabilities, Harness, Scenario, Setup};
use certwright_simulators::fixtures::{KeyKind, TestCa};
use certwright_simulators::softhsm::{SoftHsm, USER_PIN};

struct TokenHarness {
    hsm: SoftHsm,
    root: TestCa,
    intermediate: TestCa,
}

impl TokenHarness {
    async fn start() -> Self {
        let hsm = SoftHsm::new();
        let root = TestCa::root(KeyKind::EcdsaP384, "certwright conformance token root");
        let intermediate = root.intermediate(KeyKind::EcdsaP256, "pathlen 0 CA");
        hsm.import(root.key_pem(), "root", &[1]);
        hsm.import(intermediate.key_pem(), "intermediate", &[2]);
        TokenHarness {
            hsm,
            root,
            intermediate,
        }
    }

    fn key(&self, token: TokenRef, label: &str) -> TokenKeyConfig {
        TokenKeyConfig::new(self.hsm.module(), token, USER_PIN).key_label(label)
    }

    fn token(&self) -> TokenRef {
        TokenRef::Label(self.hsm.label().to_string())
    }
}

#[async_trait::async_trait]
impl Harness for TokenHarness {
    fn name(&self) -> &str {
        "ca (PKCS#11, SoftHSM2)"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            honours_duration: true,
            issues_ca_certificates: true,
            returns_root: true,
        }
    }

    async fn setup(&self, scenario: Scenario) -> Option<Setup> {
        let ca = match scenario {
            Scenario::Issue => LocalCa::with_token(
                self.root.cert_pem().as_bytes(),
                self.key(self.token(), "root"),
                LocalCaConfig::default(),
            ),
            Scenario::Reject => {
                let chain = format!("{}{}", self.intermediate.cert_pem(), self.root.cert_pem());
                let ca = LocalCa::with_token(
                    chain.as_bytes(),
                    self.key(self.token(), "intermediate"),
                    LocalCaConfig::default(),
                )
                .expect("local CA from the token intermediate");
                let mut setup = Setup::new(Arc::new(ca));
                setup.is_ca = true;
                setup.reason = Some("path".to_string());
                return Some(setup);
            }
            // The token cannot be reached: its module is not there.
            Scenario::ConnectionRefused => LocalCa::with_token(
                self.root.cert_pem().as_bytes(),
                TokenKeyConfig::new(self.hsm.missing_module(), self.token(), USER_PIN)
                    .key_label("root"),
                LocalCaConfig::default(),
            ),
            // A token is never pending, rate limited or garbled.
            _ => return None,
        };
        Some(Setup::new(Arc::new(
            ca.expect("local CA from the token root"),
        )))
    }

    async fn approve(&self, _id: &str) {}

    async fn deny(&self, _id: &str, _reason: &str) {}

    fn submissions(&self) -> Option<u64> {
        None
    }
}

certwright_conformance::conformance_suite!(TokenHarness::start());
