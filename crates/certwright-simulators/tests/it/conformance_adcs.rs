//! The backend conformance suite against the AD CS backend and the certsrv simulator,
//! over real TLS on 127.0.0.1, authenticating with NTLMv2 under Extended Protection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certwright_backend_adcs::{AdcsAuth, AdcsBackend, AdcsConfig};
use certwright_conformance::{Capabilities, Harness, Scenario, Setup};
use certwright_simulators::adcs_sim::{
    AdcsSimulator, Behaviour, DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_TEMPLATE, DEFAULT_USER,
};
use certwright_simulators::fixtures::{KeyKind, TestCa};
use certwright_simulators::tls::refused_url;

struct AdcsHarness {
    sim: AdcsSimulator,
}

impl AdcsHarness {
    async fn start() -> Self {
        AdcsHarness {
            sim: AdcsSimulator::start()
                .await
                .expect("certsrv simulator starts"),
        }
    }

    fn backend(&self, url: String, ca_pem: &str, timeout: Duration) -> Arc<AdcsBackend> {
        let auth = AdcsAuth::Ntlm {
            username: format!("{DEFAULT_DOMAIN}\\{DEFAULT_USER}"),
            password: DEFAULT_PASSWORD.into(),
            domain: None,
        };
        let mut config = AdcsConfig::new(url, DEFAULT_TEMPLATE, auth);
        config.ca_bundle_pem = Some(ca_pem.as_bytes().to_vec());
        config.timeout = timeout;
        config.poll_interval = Duration::from_secs(60);
        Arc::new(AdcsBackend::new(config).expect("AD CS backend from a valid config"))
    }
}

const POLICY_REASON: &str = "names under example.test are not allowed";

#[async_trait::async_trait]
impl Harness for AdcsHarness {
    fn name(&self) -> &str {
        "adcs"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // The template decides the validity period, not the request.
            honours_duration: false,
            // The WebServer template issues end-entity certificates only.
            issues_ca_certificates: false,
            returns_root: true,
        }
    }

    async fn setup(&self, scenario: Scenario) -> Option<Setup> {
        let timeout = Duration::from_secs(5);
        let sim_ca = self.sim.tls_ca_pem().to_string();
        let (behaviour, url, ca_pem, timeout) = match scenario {
            Scenario::Issue => (Behaviour::Issue, self.sim.url(), sim_ca, timeout),
            Scenario::Pending => (Behaviour::Pending, self.sim.url(), sim_ca, timeout),
            Scenario::Reject => (
                Behaviour::Deny(POLICY_REASON.into()),
                self.sim.url(),
                sim_ca,
                timeout,
            ),
            Scenario::ServerError => (Behaviour::Fail500, self.sim.url(), sim_ca, timeout),
            Scenario::ConnectionRefused => (
                Behaviour::Issue,
                format!("{}/certsrv", refused_url()),
                sim_ca,
                timeout,
            ),
            Scenario::Hang => (
                Behaviour::Hang,
                self.sim.url(),
                sim_ca,
                Duration::from_secs(1),
            ),
            Scenario::Html200 => (Behaviour::Html200, self.sim.url(), sim_ca, timeout),
            // certsrv speaks no JSON; its analogue is the CA chain cut short, read before
            // submitting. (A certificate cut short in the answer to the submission is final:
            // the `adcs` tests.)
            Scenario::TruncatedJson => (Behaviour::TruncatedChain, self.sim.url(), sim_ca, timeout),
            Scenario::Oversized => (
                Behaviour::Oversized(4 * 1024 * 1024),
                self.sim.url(),
                sim_ca,
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
            // AD CS has no rate limiting.
            _ => return None,
        };
        self.sim.set_behaviour(behaviour);
        let mut setup = Setup::new(self.backend(url, &ca_pem, timeout));
        if scenario == Scenario::Reject {
            setup.reason = Some(POLICY_REASON.into());
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
        Some(self.sim.submissions())
    }
}

certwright_conformance::conformance_suite!(AdcsHarness::start());

/// The same suite authenticating with Kerberos (Negotiate) through the KDC simulator;
/// certsrv is addressed as `localhost`, the host of its service principal.
mod kerberos {
    use super::*;
    use certwright_backend_adcs::{KerberosCredentials, KerberosSecret};
    use certwright_simulators::adcs_sim::{SimAuth, SimOptions};
    use certwright_simulators::kdc_sim::{DEFAULT_REALM, KdcSimulator};

    struct KerberosHarness {
        kdc: KdcSimulator,
        sim: AdcsSimulator,
    }

    impl KerberosHarness {
        async fn start() -> Self {
            let kdc = KdcSimulator::start(DEFAULT_REALM, DEFAULT_USER, DEFAULT_PASSWORD)
                .await
                .expect("KDC simulator starts");
            let sim = AdcsSimulator::start_with(SimOptions {
                auth: SimAuth::Negotiate {
                    service_key: kdc.service_key(),
                    principal: format!("{DEFAULT_USER}@{DEFAULT_REALM}"),
                },
                ..SimOptions::default()
            })
            .await
            .expect("certsrv simulator starts");
            KerberosHarness { kdc, sim }
        }

        fn url(&self) -> String {
            self.sim.url().replace("127.0.0.1", "localhost")
        }
    }

    #[async_trait::async_trait]
    impl Harness for KerberosHarness {
        fn name(&self) -> &str {
            "adcs-kerberos"
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities {
                honours_duration: false,
                issues_ca_certificates: false,
                returns_root: true,
            }
        }

        async fn setup(&self, scenario: Scenario) -> Option<Setup> {
            let mut url = self.url();
            let mut ca_pem = self.sim.tls_ca_pem().to_string();
            let mut timeout = Duration::from_secs(5);
            let behaviour = match scenario {
                Scenario::Issue => Behaviour::Issue,
                Scenario::Pending => Behaviour::Pending,
                Scenario::Reject => Behaviour::Deny(POLICY_REASON.into()),
                Scenario::ServerError => Behaviour::Fail500,
                Scenario::ConnectionRefused => {
                    url = format!("{}/certsrv", refused_url());
                    Behaviour::Issue
                }
                Scenario::Hang => {
                    timeout = Duration::from_secs(1);
                    Behaviour::Hang
                }
                Scenario::Html200 => Behaviour::Html200,
                Scenario::TruncatedJson => Behaviour::TruncatedChain,
                Scenario::Oversized => Behaviour::Oversized(4 * 1024 * 1024),
                Scenario::WrongCaBundle => {
                    let other = TestCa::root(KeyKind::EcdsaP256, "not the simulator's CA");
                    ca_pem = other.cert_pem().to_string();
                    Behaviour::Issue
                }
                _ => return None,
            };
            self.sim.set_behaviour(behaviour);
            let auth = AdcsAuth::Kerberos(KerberosCredentials {
                username: DEFAULT_USER.into(),
                realm: DEFAULT_REALM.into(),
                kdc: self.kdc.address(),
                secret: KerberosSecret::Password(DEFAULT_PASSWORD.into()),
            });
            let mut config = AdcsConfig::new(url, DEFAULT_TEMPLATE, auth);
            config.ca_bundle_pem = Some(ca_pem.into_bytes());
            config.timeout = timeout;
            config.poll_interval = Duration::from_secs(60);
            let backend = AdcsBackend::new(config).expect("AD CS backend from a valid config");
            let mut setup = Setup::new(Arc::new(backend));
            if scenario == Scenario::Reject {
                setup.reason = Some(POLICY_REASON.into());
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
            Some(self.sim.submissions())
        }
    }

    certwright_conformance::conformance_suite!(KerberosHarness::start());
}
