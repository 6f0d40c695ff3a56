//! The backend conformance suite against a real CA server: `cfssl serve` (Debian's
//! golang-cfssl) over TLS on 127.0.0.1, through both `/sign` and HMAC `/authsign`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certwright_backend_rest::{Flavor, RestAuth, RestBackend, RestConfig};
use certwright_conformance::{Capabilities, Harness, Scenario, Setup};
use certwright_simulators::cfssl::{AUTH_PROFILE, CfsslServer, PROFILE, RESTRICTED_PROFILE};
use certwright_simulators::fixtures::{KeyKind, TestCa};
use certwright_simulators::tls::refused_url;

struct CfsslHarness {
    server: CfsslServer,
    authsign: bool,
}

impl CfsslHarness {
    async fn start(authsign: bool) -> Self {
        let server = CfsslServer::start().unwrap_or_else(|e| panic!("{e}"));
        CfsslHarness { server, authsign }
    }

    fn backend(&self, url: String, ca_pem: &str, profile: &str) -> Arc<RestBackend> {
        let mut config = RestConfig::new(url);
        config.flavor = Flavor::Cfssl;
        config.ca_bundle_pem = Some(ca_pem.as_bytes().to_vec());
        config.timeout = Duration::from_secs(10);
        if self.authsign {
            config.auth = RestAuth::CfsslHmac {
                key_hex: self.server.auth_key_hex().to_string(),
            };
        }
        config.template = Some(profile.to_string());
        Arc::new(RestBackend::new(config).expect("cfssl backend from a valid config"))
    }

    fn profile(&self) -> &'static str {
        if self.authsign { AUTH_PROFILE } else { PROFILE }
    }
}

#[async_trait::async_trait]
impl Harness for CfsslHarness {
    fn name(&self) -> &str {
        if self.authsign {
            "cfssl authsign"
        } else {
            "cfssl sign"
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // The profile decides the lifetime (48h here), not the request.
            honours_duration: false,
            issues_ca_certificates: false,
            returns_root: true,
        }
    }

    async fn setup(&self, scenario: Scenario) -> Option<Setup> {
        let tls_ca = self.server.tls_ca_pem();
        let backend = match scenario {
            Scenario::Issue => self.backend(self.server.url(), tls_ca, self.profile()),
            // cfssl's policy: the restricted profile's name whitelist refuses the name.
            Scenario::Reject if !self.authsign => {
                let mut setup =
                    Setup::new(self.backend(self.server.url(), tls_ca, RESTRICTED_PROFILE));
                setup.reason = Some("whitelist".into());
                return Some(setup);
            }
            Scenario::ConnectionRefused => self.backend(refused_url(), tls_ca, self.profile()),
            Scenario::WrongCaBundle => {
                let other = TestCa::root(KeyKind::EcdsaP256, "not cfssl's TLS CA");
                self.backend(self.server.url(), other.cert_pem(), self.profile())
            }
            // A real cfssl cannot be made to pend, throttle, hang or answer garbage.
            _ => return None,
        };
        Some(Setup::new(backend))
    }

    async fn approve(&self, _id: &str) {}

    async fn deny(&self, _id: &str, _reason: &str) {}

    fn submissions(&self) -> Option<u64> {
        None
    }
}

mod sign {
    use super::*;
    certwright_conformance::conformance_suite!(CfsslHarness::start(false));
}

mod authsign {
    use super::*;
    certwright_conformance::conformance_suite!(CfsslHarness::start(true));

    #[tokio::test]
    async fn wrong_hmac_key_is_unauthorized() {
        let server = CfsslServer::start().unwrap_or_else(|e| panic!("{e}"));
        let mut config = RestConfig::new(server.url());
        config.flavor = Flavor::Cfssl;
        config.ca_bundle_pem = Some(server.tls_ca_pem().as_bytes().to_vec());
        config.template = Some(AUTH_PROFILE.into());
        config.auth = RestAuth::CfsslHmac {
            key_hex: "00112233445566778899aabbccddeeff".into(),
        };
        let backend = RestBackend::new(config).unwrap();
        let csr = certwright_simulators::CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("www.example.test")
            .dns("www.example.test")
            .build();
        let request = certwright_pki::SignRequest::new(
            certwright_x509::Csr::parse(csr.csr_pem.as_bytes()).unwrap(),
            "uid-1",
        );
        let err = certwright_pki::Backend::sign(&backend, &request)
            .await
            .unwrap_err();
        assert!(
            matches!(err, certwright_pki::Error::Unauthorized { .. }),
            "expected Unauthorized, got {err:?}"
        );
    }
}
