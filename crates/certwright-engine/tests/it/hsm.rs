//! An issuer whose CA key is in a PKCS#11 token (SoftHSM2): it signs through the token,
//! an HSM that fails says how in its Ready reason, an Event and a metric label, and only
//! the modules and issuers the operator allowed may load a module at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use certwright_api::{CaBackend, ConditionStatus, IssuerSpec, Pkcs11Key};
use certwright_simulators::softhsm::{SoftHsm, USER_PIN};
use certwright_testkit::fixtures::{KeyKind, TestCa};

use crate::support::{CLUSTER_NS, Env, cluster_ref, eventually, issued_chain};

fn token_spec(secret: &str, module: &std::path::Path, token: &str) -> IssuerSpec {
    IssuerSpec {
        ca: Some(CaBackend {
            secret_name: secret.into(),
            pkcs11: Some(Pkcs11Key {
                module: module.display().to_string(),
                token_label: Some(token.into()),
                key_label: Some("root".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn warned(env: &Env, name: &str, reason: &str) -> bool {
    env.server
        .list_json("events.events.k8s.io", "")
        .iter()
        .any(|e| e["reason"] == reason && e["regarding"]["name"] == name && e["type"] == "Warning")
}

fn ready_reason_series(name: &str, kind: &str, ns: &str, reason: &str) -> String {
    format!(
        r#"certwright_issuer_ready_reason{{issuer_name="{name}",issuer_kind="{kind}",issuer_group="pki.certwright.io",namespace="{ns}",reason="{reason}"}} 1"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_key_signs_and_each_hsm_failure_names_itself() {
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP256, "HSM Root");
    hsm.import(root.key_pem(), "root", &[1]);
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.issuer_health_check_interval = Duration::from_millis(300);
        config.pkcs11_modules = vec![hsm.module().to_path_buf(), hsm.missing_module()];
        config
    });

    // A wrong PIN: HSMPinRejected, until the Secret holds the right one.
    env.put_secret(
        CLUSTER_NS,
        "hsm-ca",
        &[("tls.crt", root.cert_pem()), ("pin", "0000")],
    )
    .await;
    env.cluster_issuer("hsm", token_spec("hsm-ca", hsm.module(), hsm.label()))
        .await;
    let issuer = env.wait_cluster_issuer("hsm", "HSMPinRejected").await;
    let ready = &issuer.status.unwrap().conditions[0];
    assert_eq!(ready.status, ConditionStatus::False);
    assert!(
        ready.message.contains("refused the PIN"),
        "{}",
        ready.message
    );
    assert!(!ready.message.contains("0000"), "{}", ready.message);
    eventually("an HSMPinRejected warning Event", || {
        warned(&env, "hsm", "HSMPinRejected")
    })
    .await;
    let series = ready_reason_series("hsm", "InternalClusterIssuer", "", "HSMPinRejected");
    assert!(env.metrics.encode().unwrap().contains(&series), "{series}");

    env.put_secret(
        CLUSTER_NS,
        "hsm-ca",
        &[
            ("tls.crt", root.cert_pem()),
            ("pin", &format!("{USER_PIN}\n")),
        ],
    )
    .await;
    env.wait_cluster_issuer("hsm", "Verified").await;
    env.request("apps", "web", cluster_ref("hsm")).await;
    env.approve("apps", "web").await;
    let cr = env.wait_ready_reason("apps", "web", "Issued").await;
    let (chain, ca) = issued_chain(&cr);
    chain[0].verify_signed_by(&ca[0]).unwrap();
    assert_eq!(ca[0].der(), root.cert().cert_der.as_slice());

    // A module that is not installed: HSMUnavailable, transient.
    env.put_secret(
        CLUSTER_NS,
        "gone-ca",
        &[("tls.crt", root.cert_pem()), ("pin", USER_PIN)],
    )
    .await;
    env.cluster_issuer(
        "gone",
        token_spec("gone-ca", &hsm.missing_module(), hsm.label()),
    )
    .await;
    let issuer = env.wait_cluster_issuer("gone", "HSMUnavailable").await;
    let message = &issuer.status.unwrap().conditions[0].message;
    assert!(message.contains("cannot be loaded"), "{message}");
    eventually("an HSMUnavailable warning Event", || {
        warned(&env, "gone", "HSMUnavailable")
    })
    .await;

    // A key the token does not hold: HSMKeyNotFound.
    let mut absent = token_spec("hsm-ca", hsm.module(), hsm.label());
    absent
        .ca
        .as_mut()
        .unwrap()
        .pkcs11
        .as_mut()
        .unwrap()
        .key_label = Some("absent".into());
    env.cluster_issuer("absent", absent).await;
    env.wait_cluster_issuer("absent", "HSMKeyNotFound").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_modules_and_cluster_issuers_may_load_a_module() {
    let hsm = SoftHsm::new();
    let root = TestCa::root(KeyKind::EcdsaP256, "HSM Root");
    hsm.import(root.key_pem(), "root", &[1]);
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.pkcs11_modules = vec![hsm.module().to_path_buf()];
        config
    });
    let secret = [("tls.crt", root.cert_pem()), ("pin", USER_PIN)];
    env.put_secret("apps", "tenant-ca", &secret).await;
    env.put_secret(CLUSTER_NS, "platform-ca", &secret).await;

    // A tenant's namespaced issuer may not load even an allowed module.
    env.namespaced_issuer(
        "apps",
        "tenant",
        token_spec("tenant-ca", hsm.module(), hsm.label()),
    )
    .await;
    let issuer = env
        .wait_namespaced_issuer("apps", "tenant", "InvalidSpec")
        .await;
    let message = &issuer.status.unwrap().conditions[0].message;
    assert!(message.contains("spec.ca.pkcs11.module"), "{message}");

    // A cluster issuer may not load a module that is not on the list.
    env.cluster_issuer(
        "elsewhere",
        token_spec("platform-ca", std::path::Path::new("/tmp/evil.so"), "x"),
    )
    .await;
    let issuer = env.wait_cluster_issuer("elsewhere", "InvalidSpec").await;
    let message = &issuer.status.unwrap().conditions[0].message;
    assert!(
        message.contains("\"/tmp/evil.so\" is not a module"),
        "{message}"
    );

    // With namespaced issuers allowed, the tenant's issuer signs.
    env.stop_engine().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.pkcs11_modules = vec![hsm.module().to_path_buf()];
        config.pkcs11_namespaced_issuers = true;
        config
    });
    env.wait_namespaced_issuer("apps", "tenant", "Verified")
        .await;
}
