//! A local CA rotated in three phases on the test API server: each phase signs with its
//! CA and publishes the bundle that verifies its chains (in the issuer's status and its
//! bundle ConfigMap), `Retire` waits for the current CA's certificates to expire, and
//! each transition is a condition, an Event and a metric.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use certwright_api::{
    CaBackend, CaRotation, ConditionStatus, Conditions, InternalClusterIssuer, IssuerSpec,
    RotationPhase,
};
use certwright_testkit::fixtures::{KeyKind, TestCa};
use certwright_x509::Certificate;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::support::{CLUSTER_NS, Env, cluster_ref, eventually, eventually_async, issued_chain};

fn spec(phase: Option<RotationPhase>) -> IssuerSpec {
    IssuerSpec {
        ca: Some(CaBackend {
            secret_name: "ca-old".into(),
            pkcs11: None,
            bundle_config_map: Some("corp-bundle".into()),
            rotation: phase.map(|phase| CaRotation {
                next_secret_name: "ca-new".into(),
                next_pkcs11: None,
                phase,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn set_phase(env: &Env, phase: RotationPhase) {
    let api: Api<InternalClusterIssuer> = Api::all(env.client.clone());
    let patch = serde_json::json!({"spec": spec(Some(phase))});
    api.patch("corp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Waits for the CARotation condition to say `reason` with `status`.
async fn wait_rotation(env: &Env, reason: &str, status: ConditionStatus) -> InternalClusterIssuer {
    let api: Api<InternalClusterIssuer> = Api::all(env.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let issuer = api.get("corp").await.unwrap();
        let condition = issuer
            .status
            .as_ref()
            .and_then(|s| s.conditions.condition("CARotation"));
        if condition.is_some_and(|c| c.reason == reason && c.status == status) {
            return issuer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for CARotation {reason} {status:?}; it is {condition:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bundle(env: &Env) -> Vec<Certificate> {
    let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), CLUSTER_NS);
    let map = maps.get("corp-bundle").await.unwrap();
    certwright_x509::parse_pem_bundle(map.data.unwrap()["ca.crt"].as_bytes()).unwrap()
}

async fn wait_bundle(env: &Env, roots: &[&TestCa]) -> Vec<Certificate> {
    let expected: Vec<Vec<u8>> = roots.iter().map(|r| r.cert().cert_der.clone()).collect();
    eventually_async("the bundle ConfigMap to hold the phase's roots", || async {
        let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), CLUSTER_NS);
        let Ok(map) = maps.get("corp-bundle").await else {
            return false;
        };
        let pem = map
            .data
            .unwrap_or_default()
            .remove("ca.crt")
            .unwrap_or_default();
        certwright_x509::parse_pem_bundle(pem.as_bytes())
            .map(|certs| certs.iter().map(|c| c.der().to_vec()).collect::<Vec<_>>() == expected)
            .unwrap_or(false)
    })
    .await;
    bundle(env).await
}

/// Issues a certificate valid for `seconds`, and checks its chain against `trust`.
async fn issue(env: &Env, name: &str, seconds: u64, trust: &[Certificate]) -> Certificate {
    env.request_with("apps", name, cluster_ref("corp"), |cr| {
        cr.spec.duration = Some(format!("{seconds}s"));
    })
    .await;
    env.approve("apps", name).await;
    let cr = env.wait_ready_reason("apps", name, "Issued").await;
    let (chain, _) = issued_chain(&cr);
    let leaf = chain[0].clone();
    assert!(
        trust.iter().any(|root| leaf.verify_signed_by(root).is_ok()),
        "{name}: the chain verifies with the bundle published in its phase"
    );
    leaf
}

fn root(ca: &TestCa) -> Certificate {
    Certificate::from_der(&ca.cert().cert_der).unwrap()
}

fn phase_series(phase: &str, value: u8) -> String {
    format!(
        r#"certwright_issuer_ca_rotation_phase{{issuer_name="corp",issuer_kind="InternalClusterIssuer",issuer_group="pki.certwright.io",namespace="",phase="{phase}"}} {value}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotates_in_three_phases_and_retires_only_once_its_certificates_expired() {
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.issuer_health_check_interval = Duration::from_millis(200);
        config
    });
    let old = TestCa::root(KeyKind::EcdsaP256, "Old Root");
    let new = TestCa::root(KeyKind::EcdsaP384, "New Root");
    env.put_ca_secret(CLUSTER_NS, "ca-old", &old).await;
    env.put_ca_secret(CLUSTER_NS, "ca-new", &new).await;

    // Before the rotation: the current root alone, in the status and the ConfigMap, and
    // a record of what the current CA signed.
    env.cluster_issuer("corp", spec(None)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    let trust = wait_bundle(&env, &[&old]).await;
    let before = issue(&env, "before", 3600, &trust).await;
    let issuer = env.wait_cluster_issuer("corp", "Verified").await;
    let status = issuer.status.unwrap();
    let record = status
        .issued
        .iter()
        .find(|r| r.ca == root(&old).fingerprint_hex())
        .expect("a record of the current CA");
    assert!(
        record.not_after >= before.not_after(),
        "recorded before signing"
    );
    assert_eq!(status.trust_bundle.as_deref(), Some(old.cert_pem()));

    // Distribute: the current CA signs, both roots are published.
    set_phase(&env, RotationPhase::Distribute).await;
    wait_rotation(&env, "Distribute", ConditionStatus::True).await;
    let trust = wait_bundle(&env, &[&old, &new]).await;
    let distributed = issue(&env, "distribute", 3, &trust).await;
    distributed.verify_signed_by(&root(&old)).unwrap();
    assert!(
        env.metrics
            .encode()
            .unwrap()
            .contains(&phase_series("Distribute", 1))
    );

    // Switch: the next CA signs, both roots stay.
    set_phase(&env, RotationPhase::Switch).await;
    let issuer = wait_rotation(&env, "Switch", ConditionStatus::True).await;
    let message = issuer
        .status
        .unwrap()
        .conditions
        .condition("CARotation")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains("set spec.ca.rotation.phase to Retire"),
        "{message}"
    );
    let trust = wait_bundle(&env, &[&old, &new]).await;
    let switched = issue(&env, "switch", 3600, &trust).await;
    switched.verify_signed_by(&root(&new)).unwrap();

    // Retire while "before" (an hour) is valid: refused, Switch stays in effect.
    set_phase(&env, RotationPhase::Retire).await;
    let issuer = wait_rotation(&env, "Switch", ConditionStatus::False).await;
    let status = issuer.status.unwrap();
    let message = &status.conditions.condition("CARotation").unwrap().message;
    assert!(
        message.starts_with("Retire is refused while certificates signed by the current CA"),
        "{message}"
    );
    let retire_after = status.rotation.unwrap().retire_after.unwrap();
    assert!(
        retire_after >= before.not_after(),
        "{retire_after} < {}",
        before.not_after()
    );
    eventually("a CARotationRetireRefused warning Event", || {
        env.server
            .list_json("events.events.k8s.io", "")
            .iter()
            .any(|e| e["reason"] == "CARotationRetireRefused" && e["type"] == "Warning")
    })
    .await;
    assert_eq!(
        bundle(&env).await.len(),
        2,
        "both roots while old certificates live"
    );
    assert!(
        env.metrics
            .encode()
            .unwrap()
            .contains(&phase_series("Switch", 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_takes_effect_by_itself_when_the_old_cas_certificates_expire() {
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.issuer_health_check_interval = Duration::from_millis(200);
        config
    });
    let old = TestCa::root(KeyKind::EcdsaP256, "Old Root");
    let new = TestCa::root(KeyKind::EcdsaP256, "New Root");
    env.put_ca_secret(CLUSTER_NS, "ca-old", &old).await;
    env.put_ca_secret(CLUSTER_NS, "ca-new", &new).await;
    env.cluster_issuer("corp", spec(Some(RotationPhase::Distribute)))
        .await;
    wait_rotation(&env, "Distribute", ConditionStatus::True).await;
    let trust = wait_bundle(&env, &[&old, &new]).await;
    // A certificate of the current CA that lives three seconds.
    issue(&env, "short", 3, &trust).await;
    set_phase(&env, RotationPhase::Switch).await;
    wait_rotation(&env, "Switch", ConditionStatus::True).await;
    set_phase(&env, RotationPhase::Retire).await;
    wait_rotation(&env, "Switch", ConditionStatus::False).await;
    // Once it has expired, Retire is in effect without another edit.
    let issuer = wait_rotation(&env, "Retire", ConditionStatus::True).await;
    let message = issuer
        .status
        .unwrap()
        .conditions
        .condition("CARotation")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains("set spec.ca.secretName to \"ca-new\""),
        "{message}"
    );
    let trust = wait_bundle(&env, &[&new]).await;
    issue(&env, "retired", 60, &trust)
        .await
        .verify_signed_by(&root(&new))
        .unwrap();
    eventually("a CARotationRetire Event", || {
        env.server
            .list_json("events.events.k8s.io", "")
            .iter()
            .any(|e| e["reason"] == "CARotationRetire" && e["type"] == "Normal")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_certwright_did_not_make_is_left_alone() {
    let env = Env::start().await;
    let old = TestCa::root(KeyKind::EcdsaP256, "Old Root");
    env.put_ca_secret(CLUSTER_NS, "ca-old", &old).await;
    let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), CLUSTER_NS);
    let theirs: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "corp-bundle", "namespace": CLUSTER_NS},
        "data": {"ca.crt": "someone else's"},
    }))
    .unwrap();
    maps.create(&Default::default(), &theirs).await.unwrap();
    env.cluster_issuer("corp", spec(None)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    eventually("a BundleConfigMapNotOwned warning Event", || {
        env.server
            .list_json("events.events.k8s.io", "")
            .iter()
            .any(|e| e["reason"] == "BundleConfigMapNotOwned")
    })
    .await;
    let map = maps.get("corp-bundle").await.unwrap();
    assert_eq!(map.data.unwrap()["ca.crt"], "someone else's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_with_valid_certificates_stays_published_whatever_the_spec_says() {
    // Finishing a rotation from Switch (the next CA made current, the rotation removed)
    // while certificates of the old CA are valid: the old root stays in the bundle, by
    // the issuance record, until they expire.
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.issuer_health_check_interval = Duration::from_millis(200);
        config
    });
    let old = TestCa::root(KeyKind::EcdsaP256, "Old Root");
    let new = TestCa::root(KeyKind::EcdsaP256, "New Root");
    env.put_ca_secret(CLUSTER_NS, "ca-old", &old).await;
    env.put_ca_secret(CLUSTER_NS, "ca-new", &new).await;
    env.cluster_issuer("corp", spec(Some(RotationPhase::Distribute)))
        .await;
    wait_rotation(&env, "Distribute", ConditionStatus::True).await;
    let trust = wait_bundle(&env, &[&old, &new]).await;
    issue(&env, "lives", 3600, &trust).await;
    set_phase(&env, RotationPhase::Switch).await;
    wait_rotation(&env, "Switch", ConditionStatus::True).await;
    let api: Api<InternalClusterIssuer> = Api::all(env.client.clone());
    let finished = serde_json::json!({"spec": {"ca": {
        "secretName": "ca-new", "bundleConfigMap": "corp-bundle", "rotation": null}}});
    api.patch("corp", &PatchParams::default(), &Patch::Merge(&finished))
        .await
        .unwrap();
    eventually_async("the CARotation condition to go", || async {
        let issuer = api.get("corp").await.unwrap();
        issuer
            .status
            .is_some_and(|s| s.conditions.condition("CARotation").is_none() && s.rotation.is_none())
    })
    .await;
    // The new CA signs; the old root is still published, after the new one.
    let trust = wait_bundle(&env, &[&new, &old]).await;
    issue(&env, "after", 60, &trust)
        .await
        .verify_signed_by(&root(&new))
        .unwrap();
}
