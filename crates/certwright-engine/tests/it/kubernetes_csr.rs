//! Kubernetes CertificateSigningRequests (certificates.k8s.io/v1) signed through
//! certwright issuers, against the testkit API server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use certwright_api::REQUEST_IS_CA_ANNOTATION;
use certwright_simulators::rest_sim::{Behaviour, RestSimulator};
use certwright_testkit::apiserver::AccessRule;
use certwright_testkit::fixtures::{CsrBuilder, KeyKind};
use certwright_x509::{Certificate, parse_pem_bundle};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::support::{CLUSTER_NS, Env, ca_spec, rest_spec};

const CLUSTER_SIGNER: &str = "internalclusterissuers.pki.certwright.io/";
const NAMESPACED_SIGNER: &str = "internalissuers.pki.certwright.io/";

fn csrs(env: &Env) -> Api<CertificateSigningRequest> {
    Api::all(env.client.clone())
}

/// Creates a CSR for `name` asking `signer`, as `user`.
async fn create(
    env: &Env,
    name: &str,
    signer: &str,
    tweak: impl FnOnce(&mut CertificateSigningRequest),
) {
    let built = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name(name)
        .dns(&format!("{name}.example.test"))
        .build();
    let mut csr = CertificateSigningRequest {
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(built.csr_pem.into_bytes()),
            signer_name: signer.to_string(),
            usages: Some(vec![
                "digital signature".into(),
                "key encipherment".into(),
                "server auth".into(),
            ]),
            username: Some("system:serviceaccount:team-a:app".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    csr.metadata.name = Some(name.to_string());
    tweak(&mut csr);
    csrs(env)
        .create(&PostParams::default(), &csr)
        .await
        .unwrap();
}

/// Sets the `Approved` (or `Denied`) condition through `/approval`, as
/// `kubectl certificate approve` does.
async fn decide(env: &Env, name: &str, type_: &str) {
    let condition = CertificateSigningRequestCondition {
        type_: type_.to_string(),
        status: "True".to_string(),
        reason: Some("KubectlApprove".into()),
        message: Some("This CSR was approved by kubectl certificate approve.".into()),
        ..Default::default()
    };
    let patch = serde_json::json!({"status": {"conditions": [condition]}});
    csrs(env)
        .patch_approval(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Waits until the CSR has a certificate, and returns the chain.
async fn wait_certificate(env: &Env, name: &str) -> Vec<Certificate> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let csr = csrs(env).get(name).await.unwrap();
        if let Some(cert) = csr.status.as_ref().and_then(|s| s.certificate.as_ref()) {
            return parse_pem_bundle(&cert.0).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: no certificate; status {:?}",
            csr.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the CSR has a `Failed` condition, and returns its reason and message.
async fn wait_failed(env: &Env, name: &str) -> (String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let csr = csrs(env).get(name).await.unwrap();
        let failed = csr
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed").cloned());
        if let Some(c) = failed {
            assert!(csr.status.as_ref().unwrap().certificate.is_none());
            return (c.reason.unwrap_or_default(), c.message.unwrap_or_default());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: not failed; status {:?}",
            csr.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the CSR's status is still empty after a while.
async fn untouched(env: &Env, name: &str) -> bool {
    tokio::time::sleep(Duration::from_millis(700)).await;
    let csr = csrs(env).get(name).await.unwrap();
    let status = csr.status.unwrap_or_default();
    status.certificate.is_none()
        && status
            .conditions
            .unwrap_or_default()
            .iter()
            .all(|c| c.type_ != "Failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_csr_is_signed_by_a_local_ca_with_its_lifetime_and_usages() {
    let env = Env::start().await;
    let ca = env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    create(&env, "node-1", &format!("{CLUSTER_SIGNER}dev"), |csr| {
        csr.spec.expiration_seconds = Some(3600);
    })
    .await;
    // Nothing happens before approval.
    assert!(untouched(&env, "node-1").await);
    decide(&env, "node-1", "Approved").await;
    let chain = wait_certificate(&env, "node-1").await;
    let leaf = &chain[0];
    assert_eq!(leaf.sans().dns, ["node-1.example.test"]);
    leaf.verify_signed_by(
        &parse_pem_bundle(ca.cert_pem().as_bytes())
            .unwrap()
            .remove(0),
    )
    .unwrap();
    let lifetime = leaf.not_after().as_second() - jiff::Timestamp::now().as_second();
    assert!((3500..=3600).contains(&lifetime), "lifetime {lifetime}s");
    assert!(!leaf.is_ca());
    // An event regards the CSR.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), "default");
    crate::support::eventually_async("the Issued event", || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Issued")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("node-1")
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_is_signed_through_a_rest_ca_and_a_rejection_fails_it() {
    let sim = RestSimulator::start().await.unwrap();
    let env = Env::start().await;
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    create(&env, "web", &format!("{CLUSTER_SIGNER}corp"), |_| {}).await;
    decide(&env, "web", "Approved").await;
    let chain = wait_certificate(&env, "web").await;
    assert_eq!(chain[0].sans().dns, ["web.example.test"]);
    assert_eq!(sim.sign_submissions(), 1);
    // The CA refuses the next one: Failed, with the CA's reason.
    sim.set_behaviour(Behaviour::Reject("CN not allowed by profile".into()));
    create(&env, "api", &format!("{CLUSTER_SIGNER}corp"), |_| {}).await;
    decide(&env, "api", "Approved").await;
    let (reason, message) = wait_failed(&env, "api").await;
    assert_eq!(reason, "Rejected");
    assert!(message.contains("CN not allowed by profile"), "{message}");
    assert_eq!(sim.sign_submissions(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapproved_denied_and_foreign_csrs_are_left_alone() {
    let sim = RestSimulator::start().await.unwrap();
    let env = Env::start().await;
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    create(&env, "waiting", &format!("{CLUSTER_SIGNER}corp"), |_| {}).await;
    create(&env, "denied", &format!("{CLUSTER_SIGNER}corp"), |_| {}).await;
    decide(&env, "denied", "Denied").await;
    create(&env, "kubelet", "kubernetes.io/kubelet-serving", |_| {}).await;
    decide(&env, "kubelet", "Approved").await;
    create(&env, "other", "issuers.cert-manager.io/team-a.ca", |_| {}).await;
    decide(&env, "other", "Approved").await;
    for name in ["waiting", "denied", "kubelet", "other"] {
        assert!(untouched(&env, name).await, "{name} was touched");
    }
    assert_eq!(sim.sign_submissions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_ca_and_a_lifetime_beyond_the_cas_own_are_honoured_as_far_as_the_ca_can() {
    let env = Env::start().await;
    let ca = env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    create(&env, "sub-ca", &format!("{CLUSTER_SIGNER}dev"), |csr| {
        csr.metadata.annotations =
            Some([(REQUEST_IS_CA_ANNOTATION.to_string(), "true".to_string())].into());
        csr.spec.usages = Some(vec!["cert sign".into(), "crl sign".into()]);
        // Far beyond the CA's own certificate.
        csr.spec.expiration_seconds = Some(i32::MAX);
    })
    .await;
    decide(&env, "sub-ca", "Approved").await;
    let chain = wait_certificate(&env, "sub-ca").await;
    assert!(chain[0].is_ca());
    let root = parse_pem_bundle(ca.cert_pem().as_bytes())
        .unwrap()
        .remove(0);
    assert!(chain[0].not_after() <= root.not_after());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_issuer_signs_only_for_requesters_who_may_use_it() {
    let env = Env::start().await;
    env.ca_secret("team-a", "team-ca").await;
    env.namespaced_issuer("team-a", "ca", ca_spec("team-ca"))
        .await;
    env.wait_namespaced_issuer("team-a", "ca", "Verified").await;
    let signer = format!("{NAMESPACED_SIGNER}team-a.ca");
    // Nobody may use it yet.
    create(&env, "outsider", &signer, |csr| {
        csr.spec.username = Some("system:serviceaccount:team-b:app".into());
    })
    .await;
    decide(&env, "outsider", "Approved").await;
    let (reason, message) = wait_failed(&env, "outsider").await;
    assert_eq!(reason, "RequesterNotPermitted");
    assert!(
        message.contains("system:serviceaccount:team-b:app"),
        "{message}"
    );
    // Team A's service account may reference it: signed.
    env.server.authorizer().allow(AccessRule {
        user: Some("system:serviceaccount:team-a:app".into()),
        verb: "reference".into(),
        api_group: "pki.certwright.io".into(),
        resource: "signers".into(),
        namespace: Some("team-a".into()),
        name: Some("ca".into()),
        ..AccessRule::default()
    });
    create(&env, "insider", &signer, |_| {}).await;
    decide(&env, "insider", "Approved").await;
    wait_certificate(&env, "insider").await;
    // A grant of the verb "use" counts too.
    env.server.authorizer().allow(AccessRule {
        group: Some("team-c".into()),
        verb: "use".into(),
        api_group: "pki.certwright.io".into(),
        resource: "signers".into(),
        namespace: Some("team-a".into()),
        name: Some("*".into()),
        ..AccessRule::default()
    });
    create(&env, "friend", &signer, |csr| {
        csr.spec.username = Some("carol".into());
        csr.spec.groups = Some(vec!["team-c".into()]);
    })
    .await;
    decide(&env, "friend", "Approved").await;
    wait_certificate(&env, "friend").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_opts_out_fails_its_csrs_and_a_bad_signer_name_fails() {
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    let mut spec = ca_spec("dev-ca");
    spec.kubernetes_csr = Some(false);
    env.cluster_issuer("quiet", spec).await;
    env.wait_cluster_issuer("quiet", "Verified").await;
    create(&env, "asks", &format!("{CLUSTER_SIGNER}quiet"), |_| {}).await;
    decide(&env, "asks", "Approved").await;
    let (reason, message) = wait_failed(&env, "asks").await;
    assert_eq!(reason, "SignerDisabled");
    assert!(message.contains("spec.kubernetesCSR"), "{message}");
    create(&env, "bad", &format!("{NAMESPACED_SIGNER}no-dot"), |_| {}).await;
    decide(&env, "bad", "Approved").await;
    assert_eq!(wait_failed(&env, "bad").await.0, "SignerNameInvalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_held_for_approval_by_ejbca_is_polled_and_finished_later() {
    use certwright_simulators::ejbca_sim::{APPROVAL_PROFILE, EjbcaSimulator};
    let sim = EjbcaSimulator::start_oauth(
        crate::support::EJBCA_CLIENT_ID,
        crate::support::EJBCA_CLIENT_SECRET,
    )
    .await
    .unwrap();
    let env = Env::start().await;
    env.ejbca_cluster_issuer("corp-ejbca", &sim, APPROVAL_PROFILE, "5s")
        .await;
    create(&env, "held", &format!("{CLUSTER_SIGNER}corp-ejbca"), |_| {}).await;
    decide(&env, "held", "Approved").await;
    crate::support::eventually("the enrollment held in EJBCA", || {
        !sim.waiting_ids().is_empty()
    })
    .await;
    // The CA's id is kept on the CSR; nothing is enrolled twice while it waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let csr = csrs(&env).get("held").await.unwrap();
    assert!(
        csr.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(certwright_api::PENDING_ID_ANNOTATION)
    );
    assert_eq!(sim.enrollments(), 1);
    let id = sim.waiting_ids()[0];
    assert!(sim.approve(id));
    wait_certificate(&env, "held").await;
    assert_eq!(sim.enrollments(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_can_be_turned_off() {
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.kubernetes_csr = false;
        config
    });
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    create(&env, "node-1", &format!("{CLUSTER_SIGNER}dev"), |_| {}).await;
    decide(&env, "node-1", "Approved").await;
    assert!(untouched(&env, "node-1").await);
}

/// The reasons of the Events regarding `name`.
async fn event_reasons(env: &Env, name: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), "default");
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_waits_for_a_missing_issuer_saying_so_once_and_is_signed_when_it_comes() {
    let env = Env::start().await;
    create(&env, "early", &format!("{CLUSTER_SIGNER}late"), |_| {}).await;
    decide(&env, "early", "Approved").await;
    crate::support::eventually_async("the IssuerNotFound event", || async {
        event_reasons(&env, "early")
            .await
            .contains(&"IssuerNotFound".to_string())
    })
    .await;
    env.ca_secret(CLUSTER_NS, "late-ca").await;
    env.cluster_issuer("late", ca_spec("late-ca")).await;
    wait_certificate(&env, "early").await;
    let reasons = event_reasons(&env, "early").await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "IssuerNotFound").count(),
        1,
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pki_is_retried_with_backoff_and_the_csr_signed_once_it_answers() {
    use certwright_testkit::apiserver::Method;
    let sim = RestSimulator::start().await.unwrap();
    let env = Env::start().await;
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    sim.set_behaviour(Behaviour::Fail500);
    create(&env, "flaky", &format!("{CLUSTER_SIGNER}corp"), |_| {}).await;
    decide(&env, "flaky", "Approved").await;
    crate::support::eventually("a failed call", || sim.sign_submissions() >= 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Backoff (50 ms up to 400 ms here) and the breaker pace the calls, and the loop's
    // own writes do not bring the next call forward.
    let calls = sim.sign_submissions();
    assert!(calls <= 10, "{calls} calls in 1.5 s");
    let patches = env
        .server
        .count(Method::PATCH, "certificatesigningrequests/flaky");
    assert!(
        patches as u64 <= 2 * calls + 2,
        "{patches} patches for {calls} calls"
    );
    assert!(untouched(&env, "flaky").await);
    sim.set_behaviour(Behaviour::Issue);
    wait_certificate(&env, "flaky").await;
    let reasons = event_reasons(&env, "flaky").await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "Retrying").count(),
        1,
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_approved_while_its_watch_was_down_is_signed_after_the_relist() {
    // As for CertificateRequests (races.rs): the CSR comes in the first page of a list
    // taken after the watch was down, and is signed once the list is complete.
    use certwright_testkit::apiserver::ApiServerOptions;
    const CSRS: &str = "certificatesigningrequests.certificates.k8s.io";
    let mut env = Env::new_with(ApiServerOptions::new().history_limit(5)).await;
    let filler = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("filler")
        .build();
    let request = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        filler.csr_pem.as_bytes(),
    );
    for i in 0..520 {
        env.server
            .create_json(
                CSRS,
                serde_json::json!({"apiVersion": "certificates.k8s.io/v1",
                    "kind": "CertificateSigningRequest",
                    "metadata": {"name": format!("filler-{i}")},
                    "spec": {"request": request, "signerName": "example.com/other",
                             "usages": ["digital signature"]}}),
            )
            .unwrap();
    }
    env.start_engine(crate::support::fast_config());
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;

    let lists = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    env.take_watch_down(lists).await;
    create(&env, "a-during", &format!("{CLUSTER_SIGNER}dev"), |_| {}).await;
    decide(&env, "a-during", "Approved").await;
    for i in 0..6 {
        env.server
            .delete_json(CSRS, "", &format!("filler-{i}"))
            .unwrap();
    }
    env.bring_watch_back_in_pages(lists);

    wait_certificate(&env, "a-during").await;
}
