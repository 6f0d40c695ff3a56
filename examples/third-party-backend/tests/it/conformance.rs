//! certwright's backend contract suite against the example backend, as a third party
//! runs it against theirs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use certwright_conformance::{Capabilities, Harness, Scenario, Setup, async_trait};
use third_party_backend::HeldCa;

/// Makes a fresh CA for each scenario and remembers it, to approve and count on it.
#[derive(Default)]
struct HeldCaHarness {
    current: Mutex<Option<HeldCa>>,
}

impl HeldCaHarness {
    async fn start() -> Self {
        HeldCaHarness::default()
    }

    fn ca(&self) -> Option<HeldCa> {
        self.current.lock().unwrap().clone()
    }
}

#[async_trait]
impl Harness for HeldCaHarness {
    fn name(&self) -> &str {
        "held-ca"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            honours_duration: true,
            issues_ca_certificates: false,
            returns_root: true,
        }
    }

    async fn setup(&self, scenario: Scenario) -> Option<Setup> {
        let (hold, reject) = match scenario {
            Scenario::Issue => (false, false),
            Scenario::Pending => (true, false),
            Scenario::Reject => (false, true),
            // In process: never rate limited, unreachable or garbled on the wire.
            _ => return None,
        };
        let ca = HeldCa::new("Example held CA", hold).expect("a CA");
        *self.current.lock().unwrap() = Some(ca.clone());
        let mut setup = Setup::new(Arc::new(ca));
        if reject {
            setup.is_ca = true;
            setup.reason = Some("issues no CA certificates".to_string());
        }
        Some(setup)
    }

    async fn approve(&self, id: &str) {
        assert!(self.ca().expect("a CA").approve(id), "{id} was not waiting");
    }

    async fn deny(&self, id: &str, reason: &str) {
        assert!(
            self.ca().expect("a CA").deny(id, reason),
            "{id} was not waiting"
        );
    }

    fn submissions(&self) -> Option<u64> {
        self.ca().map(|ca| ca.submissions())
    }
}

certwright_conformance::conformance_suite!(HeldCaHarness::start());
