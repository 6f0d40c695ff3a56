//! A submission whose answer never arrives is never submitted again blindly: the engine
//! records each submission on the request before it leaves, and asks the CA what became
//! of it (or fails the request) before submitting again, also after a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use certwright_api::{PENDING_ID_ANNOTATION, SUBMITTED_ANNOTATION};
use certwright_simulators::adcs_sim::AdcsSimulator;
use certwright_simulators::ejbca_sim::{Behaviour, CERTIFICATE_PROFILE, EjbcaSimulator};
use kube::ResourceExt;

use crate::support::{CLUSTER_NS, Env, ca_spec, cluster_ref, eventually};

use crate::support::{EJBCA_CLIENT_ID as CLIENT_ID, EJBCA_CLIENT_SECRET as CLIENT_SECRET};

/// An engine, and an EJBCA simulator behind the cluster issuer `corp-ejbca` whose calls
/// time out after `timeout`.
async fn ejbca_env(timeout: &str) -> (EjbcaSimulator, Env) {
    let sim = EjbcaSimulator::start_oauth(CLIENT_ID, CLIENT_SECRET)
        .await
        .unwrap();
    let env = Env::start().await;
    env.ejbca_cluster_issuer("corp-ejbca", &sim, CERTIFICATE_PROFILE, timeout)
        .await;
    (sim, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejbca_enrollment_whose_answer_is_lost_is_found_not_enrolled_again() {
    let (sim, env) = ejbca_env("2s").await;
    // EJBCA signs, and its answer is lost on the way back.
    sim.set_behaviour(Behaviour::LoseAnswerToEnrollment);
    env.request("apps", "web", cluster_ref("corp-ejbca")).await;
    env.approve("apps", "web").await;
    eventually("the enrollment", || sim.enrollments() == 1).await;
    let cr = env.wait_ready_reason("apps", "web", "Issued").await;
    // The certificate EJBCA signed is the one found by the search: one enrollment, one
    // certificate, whatever the retries.
    assert_eq!(sim.enrollments(), 1);
    assert_eq!(sim.certificates_issued(), 1);
    assert!(sim.searches() >= 1);
    assert!(cr.annotations().contains_key(SUBMITTED_ANNOTATION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_enrollment_finds_the_certificate_after_restart() {
    let (sim, mut env) = ejbca_env("60s").await;
    sim.set_behaviour(Behaviour::LoseAnswerToEnrollment);
    env.request("apps", "web", cluster_ref("corp-ejbca")).await;
    env.approve("apps", "web").await;
    eventually("the enrollment", || sim.enrollments() == 1).await;
    // The record of the submission was written before the enrollment left.
    let before = env.requests("apps").get("web").await.unwrap();
    assert!(before.annotations().contains_key(SUBMITTED_ANNOTATION));
    env.kill_engine().await;
    sim.set_behaviour(Behaviour::Normal);
    env.start_engine(crate::support::fast_config());
    env.wait_ready_reason("apps", "web", "Issued").await;
    assert_eq!(sim.enrollments(), 1);
    assert_eq!(sim.certificates_issued(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_submission_to_adcs_fails_the_request_instead_of_submitting_again() {
    let sim = AdcsSimulator::start().await.unwrap();
    let env = Env::start().await;
    env.adcs_cluster_issuer("corp-adcs", &sim, |_| {}).await;
    // A request a previous controller submitted before it died: certsrv cannot be
    // searched by CSR, so the request fails saying where to look.
    env.request_with("apps", "web", cluster_ref("corp-adcs"), |cr| {
        cr.metadata.annotations = Some(
            [(
                SUBMITTED_ANNOTATION.to_string(),
                "2026-01-02T03:04:05Z".to_string(),
            )]
            .into(),
        );
    })
    .await;
    env.approve("apps", "web").await;
    let cr = env.wait_ready_reason("apps", "web", "Failed").await;
    let message = &cr
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains("may have reached the CA at 2026-01-02T03:04:05Z")
            && message.contains("Look for a certificate for it on the CA"),
        "{message}"
    );
    assert_eq!(sim.submissions(), 0);
    // A request without the record is submitted as usual.
    env.request("apps", "api", cluster_ref("corp-adcs")).await;
    env.approve("apps", "api").await;
    env.wait_ready_reason("apps", "api", "Issued").await;
    assert_eq!(sim.submissions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_submission_to_a_local_ca_is_signed_again() {
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    env.request_with("apps", "web", cluster_ref("dev"), |cr| {
        cr.metadata.annotations =
            Some([(SUBMITTED_ANNOTATION.to_string(), "garbage".to_string())].into());
    })
    .await;
    env.approve("apps", "web").await;
    let cr = env.wait_ready_reason("apps", "web", "Issued").await;
    assert!(!cr.annotations().contains_key(PENDING_ID_ANNOTATION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_ca_answers_a_recorded_submission_again_from_its_idempotency_key() {
    use certwright_simulators::rest_sim::RestSimulator;
    use certwright_testkit::apiserver::Method;
    let sim = RestSimulator::start().await.unwrap();
    let mut env = Env::start().await;
    env.cluster_issuer("corp-rest", crate::support::rest_spec(&sim))
        .await;
    env.wait_cluster_issuer("corp-rest", "Verified").await;
    // The CA signs, and the controller cannot write the result before it is killed.
    env.server
        .faults()
        .fail_next(Method::PATCH, "certificaterequests/web/status", 500, 1000);
    env.request("apps", "web", cluster_ref("corp-rest")).await;
    // Approved in the store: the API's status writes all fail.
    env.approve_in_store("apps", "web");
    eventually("the signature", || sim.certificates_issued() == 1).await;
    env.kill_engine().await;
    env.server.faults().clear();
    // The next controller finds the record and submits again under the same key: the
    // CA answers with the certificate it signed, and signs nothing new.
    env.start_engine(crate::support::fast_config());
    env.wait_ready_reason("apps", "web", "Issued").await;
    assert_eq!(sim.sign_submissions(), 2);
    assert_eq!(sim.certificates_issued(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_submission_the_ca_will_not_tell_about_is_given_up_after_a_while() {
    let (sim, env) = ejbca_env("2s").await;
    // EJBCA fails every call from now on; a request found with a record of a
    // submission cannot be looked up.
    sim.set_behaviour(Behaviour::Fail500);
    env.request_with("apps", "web", cluster_ref("corp-ejbca"), |cr| {
        cr.metadata.annotations = Some(
            [(
                SUBMITTED_ANNOTATION.to_string(),
                jiff::Timestamp::now().to_string(),
            )]
            .into(),
        );
    })
    .await;
    env.approve("apps", "web").await;
    let cr = env.wait_ready_reason("apps", "web", "Failed").await;
    let message = format!("{:?}", cr.status);
    assert!(message.contains("failed 10 times"), "{message}");
    // Never enrolled: only searched.
    assert_eq!(sim.enrollments(), 0);
    assert!(sim.searches() >= 10);
}
