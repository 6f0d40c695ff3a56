//! A local CA that cannot sign says why in its issuer's Ready reason, an Event and a
//! metric label, one reason per fault; a CA about to expire keeps signing, with a
//! warning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use certwright_api::ConditionStatus;
use certwright_testkit::fixtures::{KeyKind, TestCa};

use crate::support::{Env, ca_spec, eventually, namespaced_ref};

const DAY: i64 = 86_400;

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_of_a_ca_has_its_own_reason_event_and_metric_label() {
    let env = Env::start().await;
    let ns = "apps";
    let good = TestCa::root(KeyKind::EcdsaP256, "good");
    let other = TestCa::root(KeyKind::EcdsaP256, "other");
    let leaf = good.issue_leaf(KeyKind::EcdsaP256, "not-a-ca.example");
    // (issuer, tls.crt, tls.key, expected reason)
    let expired = TestCa::root_valid(KeyKind::EcdsaP256, "expired", now() - 2 * DAY, now() - DAY);
    let future = TestCa::root_valid(KeyKind::EcdsaP256, "future", now() + DAY, now() + 2 * DAY);
    let cases: Vec<(&str, String, String, &str)> =
        vec![
        ("expired", expired.cert_pem().into(), expired.key_pem().into(), "CAExpired"),
        ("future", future.cert_pem().into(), future.key_pem().into(), "CANotYetValid"),
        ("leaf", leaf.cert_pem.clone(), leaf.key_pem.clone(), "CANotACA"),
        ("mismatch", good.cert_pem().into(), other.key_pem().into(), "CAKeyMismatch"),
        ("garbage", good.cert_pem().into(), "not a key".into(), "CAKeyUnreadable"),
        (
            "encrypted",
            good.cert_pem().into(),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
                .into(),
            "CAKeyUnreadable",
        ),
    ];
    for (name, cert, key, _) in &cases {
        env.put_secret(ns, name, &[("tls.crt", cert), ("tls.key", key)])
            .await;
        env.namespaced_issuer(ns, name, ca_spec(name)).await;
    }
    for (name, _, _, reason) in &cases {
        let issuer = env.wait_namespaced_issuer(ns, name, reason).await;
        let ready = &issuer.status.unwrap().conditions[0];
        assert_eq!(ready.status, ConditionStatus::False, "{name}");
        eventually(&format!("a {reason} warning Event for {name}"), || {
            env.server
                .list_json("events.events.k8s.io", ns)
                .iter()
                .any(|e| {
                    e["reason"] == *reason
                        && e["regarding"]["name"] == *name
                        && e["type"] == "Warning"
                })
        })
        .await;
        let series = format!(
            r#"certwright_issuer_ready_reason{{issuer_name="{name}",issuer_kind="InternalIssuer",issuer_group="pki.certwright.io",namespace="{ns}",reason="{reason}"}} 1"#
        );
        assert!(env.metrics.encode().unwrap().contains(&series), "{series}");
    }
    // Requests to such an issuer wait, and are signed once the Secret is fixed.
    env.request(ns, "waits", namespaced_ref("mismatch")).await;
    env.approve(ns, "waits").await;
    env.wait_request(ns, "waits", "waiting for its issuer", |cr| {
        cr.ready_reason() == Some("Pending")
            && cr.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.message
                        .starts_with("Waiting for InternalIssuer apps/mismatch to be Ready")
                })
            })
    })
    .await;
    env.put_ca_secret(ns, "mismatch", &good).await;
    env.wait_namespaced_issuer(ns, "mismatch", "Verified").await;
    env.wait_ready_reason(ns, "waits", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_expires_while_running_says_so_whole_on_a_tenants_issuer() {
    // Checked every 300 ms, with tenants' errors redacted as the controller does: the
    // CA's own fault is still told in full.
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.issuer_health_check_interval = std::time::Duration::from_millis(300);
        config.redact_tenant_errors = true;
        config
    });
    let ns = "apps";
    let brief = TestCa::root_valid(KeyKind::EcdsaP256, "brief", now() - DAY, now() + 3);
    env.put_ca_secret(ns, "brief", &brief).await;
    env.namespaced_issuer(ns, "brief", ca_spec("brief")).await;
    env.wait_namespaced_issuer(ns, "brief", "CAExpiringSoon")
        .await;
    let issuer = env.wait_namespaced_issuer(ns, "brief", "CAExpired").await;
    let message = &issuer.status.unwrap().conditions[0].message;
    assert!(message.contains("expired at"), "{message}");
    assert!(message.contains("\"CN=brief\""), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_about_to_expire_keeps_signing_with_a_warning() {
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.issuer_health_check_interval = std::time::Duration::from_millis(200);
        config
    });
    let ns = "apps";
    let expires = now() + 10 * DAY;
    let soon = TestCa::root_valid(KeyKind::EcdsaP256, "soon", now() - DAY, expires);
    env.put_ca_secret(ns, "soon", &soon).await;
    env.namespaced_issuer(ns, "soon", ca_spec("soon")).await;
    let issuer = env
        .wait_namespaced_issuer(ns, "soon", "CAExpiringSoon")
        .await;
    let ready = &issuer.status.unwrap().conditions[0];
    assert_eq!(ready.status, ConditionStatus::True);
    assert!(ready.message.contains("renew it"), "{}", ready.message);
    eventually("a CAExpiringSoon warning Event", || {
        env.server
            .list_json("events.events.k8s.io", ns)
            .iter()
            .any(|e| e["reason"] == "CAExpiringSoon" && e["type"] == "Warning")
    })
    .await;
    let gauge = format!(
        r#"certwright_issuer_ca_expiry_timestamp_seconds{{issuer_name="soon",issuer_kind="InternalIssuer",issuer_group="pki.certwright.io",namespace="{ns}"}} {expires}"#
    );
    let metrics = env.metrics.encode().unwrap();
    assert!(metrics.contains(&gauge), "{gauge}");
    assert!(metrics.contains(&format!(
        r#"certwright_issuer_ready_reason{{issuer_name="soon",issuer_kind="InternalIssuer",issuer_group="pki.certwright.io",namespace="{ns}",reason="CAExpiringSoon"}} 1"#
    )));
    // Checks every 200 ms say the same: one Event, not one per check.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let warnings = env
        .server
        .list_json("events.events.k8s.io", ns)
        .iter()
        .filter(|e| e["reason"] == "CAExpiringSoon")
        .count();
    assert_eq!(warnings, 1);
    // It still signs, cut short to its own expiry.
    env.request(ns, "web", namespaced_ref("soon")).await;
    env.approve(ns, "web").await;
    env.wait_ready_reason(ns, "web", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_its_parent_revoked_is_not_ready_and_its_requests_wait() {
    let env = Env::start().await;
    let ns = "apps";
    let root = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = certwright_simulators::crl_server::serve(served.clone()).await;
    let kept = root.intermediate_with_crl(KeyKind::EcdsaP256, "Issuing A", &url);
    let revoked = root.intermediate_with_crl(KeyKind::EcdsaP256, "Issuing B", &url);
    *served.lock().unwrap() = root.crl(&[&revoked.cert().serial_hex]);
    for (name, ca) in [("kept", &kept), ("revoked", &revoked)] {
        let chain = format!("{}{}", ca.cert_pem(), root.cert_pem());
        env.put_secret(ns, name, &[("tls.crt", &chain), ("tls.key", ca.key_pem())])
            .await;
        env.namespaced_issuer(ns, name, ca_spec(name)).await;
    }
    // Not listed: Verified, and the health message says the CRL was read.
    let issuer = env.wait_namespaced_issuer(ns, "kept", "Verified").await;
    let message = &issuer.status.unwrap().conditions[0].message;
    assert!(message.contains("not revoked by the CRL"), "{message}");

    let issuer = env.wait_namespaced_issuer(ns, "revoked", "CARevoked").await;
    let message = &issuer.status.unwrap().conditions[0].message;
    assert!(
        message.contains("was revoked at") && message.contains(&url),
        "{message}"
    );
    eventually("a CARevoked warning Event", || {
        env.server
            .list_json("events.events.k8s.io", ns)
            .iter()
            .any(|e| e["reason"] == "CARevoked" && e["type"] == "Warning")
    })
    .await;
    let series = format!(
        r#"certwright_issuer_ready_reason{{issuer_name="revoked",issuer_kind="InternalIssuer",issuer_group="pki.certwright.io",namespace="{ns}",reason="CARevoked"}} 1"#
    );
    assert!(env.metrics.encode().unwrap().contains(&series), "{series}");
    env.request(ns, "web", namespaced_ref("revoked")).await;
    env.approve(ns, "web").await;
    env.wait_request(ns, "web", "waiting for its revoked issuer", |cr| {
        cr.ready_reason() == Some("Pending")
            && cr.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.message.contains("was revoked at"))
            })
    })
    .await;
}
