//! The CertificateRequest flow, row by row, against the testkit API server: the engine
//! talks HTTP to it exactly as to a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::support::{
    CLUSTER_NS, Env, ca_spec, cluster_ref, issued_chain, namespaced_ref, rest_spec,
};
use certwright_api::{Base64Bytes, PENDING_ID_ANNOTATION};
use certwright_simulators::rest_sim::{Behaviour, RestSimulator};
use certwright_testkit::apiserver::Method;

/// The request's Ready condition.
fn ready_condition(cr: &certwright_api::CertificateRequest) -> certwright_api::Condition {
    cr.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .expect("a Ready condition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_request_is_issued_with_its_chain_and_an_event() {
    let env = Env::start().await;
    let ca = env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    env.request("apps", "web-1", cluster_ref("dev")).await;
    env.approve("apps", "web-1").await;

    let cr = env.wait_ready_reason("apps", "web-1", "Issued").await;
    let (chain, root) = issued_chain(&cr);
    assert_eq!(chain[0].sans().dns, ["web-1.apps.example.test"]);
    assert_eq!(root[0].to_pem(), ca.cert_pem().replace("\r\n", "\n"));
    chain[0].verify_signed_by(&root[0]).unwrap();
    let lifetime = chain[0].not_after().duration_since(chain[0].not_before());
    // notBefore is backdated a minute for clock skew; the duration counts from signing.
    assert_eq!(
        lifetime.as_secs(),
        24 * 3600 + 60,
        "spec.duration is honoured"
    );
    // An event about the request, and the metrics say so.
    let mut found = false;
    for _ in 0..100 {
        let events = env.server.list_json("events.events.k8s.io", "apps");
        if events
            .iter()
            .any(|e| e["reason"] == "Issued" && e["regarding"]["name"] == "web-1")
        {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(found, "an Issued event is written");
    let metrics = env.metrics.encode().unwrap();
    assert!(
        metrics.contains(r#"certwright_certificate_requests_total{issuer_name="dev",issuer_kind="InternalClusterIssuer",issuer_group="pki.certwright.io",namespace="",resource="CertificateRequest",result="issued"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_happens_before_approval_and_signing_follows_it() {
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    env.request("apps", "later", cluster_ref("dev")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cr = env.requests("apps").get("later").await.unwrap();
    assert!(
        cr.status.is_none(),
        "no status before approval: {:?}",
        cr.status
    );
    assert_eq!(
        env.server.count(Method::PATCH, "certificaterequests/later"),
        0
    );

    env.approve("apps", "later").await;
    env.wait_ready_reason("apps", "later", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_is_marked_denied_with_a_failure_time() {
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.request("apps", "nope", cluster_ref("dev")).await;
    env.deny("apps", "nope").await;
    let cr = env.wait_ready_reason("apps", "nope", "Denied").await;
    let status = cr.status.unwrap();
    assert!(status.failure_time.is_some());
    assert!(status.certificate.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_an_issuer_created_after_it() {
    let env = Env::start().await;
    env.request("apps", "early", cluster_ref("late")).await;
    env.approve("apps", "early").await;
    let cr = env
        .wait_request(
            "apps",
            "early",
            "a Pending condition naming the issuer",
            |cr| {
                cr.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.reason == "Pending"
                            && c.message
                                .contains("InternalClusterIssuer late: it does not exist")
                    })
                })
            },
        )
        .await;
    assert!(!cr.is_terminal());
    env.ca_secret(CLUSTER_NS, "late-ca").await;
    env.cluster_issuer("late", ca_spec("late-ca")).await;
    env.wait_ready_reason("apps", "early", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_missing_issuer_hears_why_the_new_issuer_is_not_ready() {
    // The issuer appears after the request, but cannot be used (its Secret is missing):
    // the request must not keep saying the issuer does not exist until its 5-minute
    // backstop, nor wait silently for an issuer check that never requeues it.
    let env = Env::start().await;
    env.request("apps", "early", cluster_ref("late")).await;
    env.approve("apps", "early").await;
    env.wait_request("apps", "early", "the issuer to be missing", |cr| {
        cr.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.message.contains("it does not exist"))
        })
    })
    .await;
    env.cluster_issuer("late", ca_spec("late-ca")).await;
    env.wait_request("apps", "early", "the issuer's reason", |cr| {
        cr.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.message
                    .contains(r#"to be Ready: Secret "late-ca" not found"#)
            })
        })
    })
    .await;
    env.ca_secret(CLUSTER_NS, "late-ca").await;
    env.wait_ready_reason("apps", "early", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_missing_its_secret_is_not_ready_until_the_secret_appears() {
    let env = Env::start().await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    let issuer = env.wait_cluster_issuer("dev", "SecretNotFound").await;
    let ready = &issuer.status.unwrap().conditions[0];
    assert!(
        ready
            .message
            .contains(r#"Secret "dev-ca" not found in namespace "cert-manager""#),
        "{}",
        ready.message
    );
    env.request("apps", "web", cluster_ref("dev")).await;
    env.approve("apps", "web").await;
    env.wait_request("apps", "web", "waiting for the issuer", |cr| {
        cr.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.message
                    .contains("to be Ready: Secret \"dev-ca\" not found")
            })
        })
    })
    .await;
    // The Secret arrives: the issuer becomes Ready and the request is issued.
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.wait_cluster_issuer("dev", "Verified").await;
    env.wait_ready_reason("apps", "web", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_issuer_reads_secrets_from_its_own_namespace_only() {
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "team-ca").await;
    env.namespaced_issuer("team", "corp", ca_spec("team-ca"))
        .await;
    env.request("team", "svc", namespaced_ref("corp")).await;
    env.approve("team", "svc").await;
    env.wait_request("team", "svc", "waiting for the issuer", |cr| {
        cr.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.message.contains(r#"not found in namespace "team""#))
        })
    })
    .await;
    env.ca_secret("team", "team-ca").await;
    env.wait_ready_reason("team", "svc", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_csr_fails_as_an_invalid_request() {
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.request_with("apps", "bad", cluster_ref("dev"), |cr| {
        cr.spec.request = Base64Bytes::from(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        );
    })
    .await;
    env.approve("apps", "bad").await;
    let cr = env.wait_ready_reason("apps", "bad", "Failed").await;
    assert!(cr.is_invalid(), "InvalidRequest=True");
    let status = cr.status.unwrap();
    assert!(status.failure_time.is_some());
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(ready.message.contains("spec.request"), "{}", ready.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_policy_refusal_fails_the_request() {
    let env = Env::start().await;
    // A CA with pathLen 0 refuses to issue CA certificates.
    let root = certwright_testkit::fixtures::TestCa::root(
        certwright_testkit::fixtures::KeyKind::EcdsaP256,
        "root",
    );
    let intermediate =
        root.intermediate(certwright_testkit::fixtures::KeyKind::EcdsaP256, "pathlen0");
    env.put_ca_secret(CLUSTER_NS, "sub-ca", &intermediate).await;
    env.cluster_issuer("sub", ca_spec("sub-ca")).await;
    env.request_with("apps", "ca-please", cluster_ref("sub"), |cr| {
        cr.spec.is_ca = true
    })
    .await;
    env.approve("apps", "ca-please").await;
    let cr = env.wait_ready_reason("apps", "ca-please", "Failed").await;
    assert!(!cr.is_invalid());
    let ready = ready_condition(&cr);
    assert!(ready.message.contains("path length"), "{}", ready.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_side_pending_request_is_persisted_polled_and_never_resubmitted() {
    let env = Env::start().await;
    let sim = RestSimulator::start().await.unwrap();
    sim.set_behaviour(Behaviour::Pending);
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    env.request("apps", "held", cluster_ref("corp")).await;
    env.approve("apps", "held").await;
    let cr = env
        .wait_request("apps", "held", "the pending id annotation", |cr| {
            cr.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(PENDING_ID_ANNOTATION))
        })
        .await;
    let id = cr.metadata.annotations.unwrap()[PENDING_ID_ANNOTATION].clone();
    env.wait_request("apps", "held", "Pending naming the CA's id", |cr| {
        cr.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.message.contains(&id)))
    })
    .await;
    // Polls happen (at the CA's pace, at least a second apart), submissions do not.
    crate::support::eventually("two polls", || sim.polls() >= 2).await;
    assert_eq!(sim.sign_submissions(), 1);
    assert!(sim.approve(&id));
    env.wait_ready_reason("apps", "held", "Issued").await;
    assert_eq!(sim.sign_submissions(), 1, "never resubmitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_on_the_status_write_does_not_sign_twice() {
    let env = Env::start().await;
    let sim = RestSimulator::start().await.unwrap();
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    env.request("apps", "racy", cluster_ref("corp")).await;
    // The first two status writes to this request answer 409, as when another writer
    // got there first.
    env.server
        .faults()
        .fail_next(Method::PATCH, "certificaterequests/racy/status", 409, 2);
    env.approve_in_store("apps", "racy");
    env.wait_ready_reason("apps", "racy", "Issued").await;
    assert_eq!(
        sim.sign_submissions(),
        1,
        "one submission despite two conflicts"
    );
    assert!(
        env.server
            .count(Method::PATCH, "certificaterequests/racy/status")
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_status_write_is_retried_without_signing_again() {
    let env = Env::start().await;
    let sim = RestSimulator::start().await.unwrap();
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    env.request("apps", "flaky", cluster_ref("corp")).await;
    env.server
        .faults()
        .fail_next(Method::PATCH, "certificaterequests/flaky/status", 500, 3);
    env.approve_in_store("apps", "flaky");
    env.wait_ready_reason("apps", "flaky", "Issued").await;
    assert_eq!(sim.sign_submissions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_requests_pending_opens_the_breaker_and_bounds_the_calls() {
    let env = Env::start().await;
    let sim = RestSimulator::start().await.unwrap();
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    sim.set_behaviour(Behaviour::Fail500);
    for i in 0..10 {
        env.request("apps", &format!("o-{i}"), cluster_ref("corp"))
            .await;
        env.approve("apps", &format!("o-{i}")).await;
    }
    // The breaker (3 failures, 400 ms open) opens and the issuer says so.
    env.wait_cluster_issuer("corp", "CircuitOpen").await;
    let opened_at = sim.sign_submissions();
    let writes_before = env.server.count(Method::PATCH, "certificaterequests/o-");
    let reads_before = env.server.count(Method::GET, "certificaterequests/o-");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during = sim.sign_submissions() - opened_at;
    // Waiting requests do not hammer the API server either: a deferral with nothing
    // new to say is neither read nor written.
    let writes = env.server.count(Method::PATCH, "certificaterequests/o-") - writes_before;
    let reads = env.server.count(Method::GET, "certificaterequests/o-") - reads_before;
    assert!(
        writes <= 20 && reads <= 20,
        "{writes} writes and {reads} reads in 2 s while open"
    );
    // At most one probe per 400 ms open period (plus one in flight at the boundary).
    assert!(during <= 6, "{during} calls in 2 s while open");
    for i in 0..10 {
        let cr = env.requests("apps").get(&format!("o-{i}")).await.unwrap();
        assert!(!cr.is_terminal(), "o-{i} must wait, not fail");
    }
    let metrics = env.metrics.encode().unwrap();
    assert!(
        metrics
            .contains(r#"certwright_circuit_breaker_state{issuer_name="corp",issuer_kind="InternalClusterIssuer",issuer_group="pki.certwright.io",namespace=""} 2"#)
            || metrics.contains(
                r#"certwright_circuit_breaker_state{issuer_name="corp",issuer_kind="InternalClusterIssuer",issuer_group="pki.certwright.io",namespace=""} 1"#
            ),
        "{metrics}"
    );
    // Recovery: everything issues, and the issuer is Verified again.
    sim.set_behaviour(Behaviour::Issue);
    for i in 0..10 {
        env.wait_ready_reason("apps", &format!("o-{i}"), "Issued")
            .await;
    }
    env.wait_cluster_issuer("corp", "Verified").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_rebuilds_the_backend() {
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.request("apps", "before", cluster_ref("dev")).await;
    env.approve("apps", "before").await;
    let before = env.wait_ready_reason("apps", "before", "Issued").await;
    let new_ca = env.ca_secret(CLUSTER_NS, "dev-ca").await;
    // Give the Secret watch a moment to rebuild, then sign with the new CA.
    let mut n = 0;
    loop {
        n += 1;
        let name = format!("after-{n}");
        env.request("apps", &name, cluster_ref("dev")).await;
        env.approve("apps", &name).await;
        let after = env.wait_ready_reason("apps", &name, "Issued").await;
        let (_, root) = issued_chain(&after);
        if root[0].to_pem() == new_ca.cert_pem().replace("\r\n", "\n") {
            break;
        }
        assert!(n < 20, "the backend was never rebuilt with the rotated CA");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, old_root) = issued_chain(&before);
    assert_ne!(
        old_root[0].to_pem(),
        new_ca.cert_pem().replace("\r\n", "\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_thousand_completed_requests_makes_no_backend_calls() {
    let mut env = Env::new().await;
    let sim = RestSimulator::start().await.unwrap();
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    for i in 0..1000 {
        let object = serde_json::json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {"name": format!("done-{i}"), "namespace": "apps"},
            "spec": {
                "request": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0K",
                "issuerRef": {"name": "corp", "kind": "InternalClusterIssuer", "group": "pki.certwright.io"}
            },
            "status": {
                "conditions": [
                    {"type": "Approved", "status": "True", "reason": "policy", "message": ""},
                    {"type": "Ready", "status": if i % 10 == 0 { "False" } else { "True" }, "reason": if i % 10 == 0 { "Failed" } else { "Issued" }, "message": ""}
                ],
                "certificate": "LS0tLS1CRUdJTg=="
            }
        });
        env.server
            .create_json("certificaterequests.cert-manager.io", object)
            .unwrap();
    }
    env.start_engine(crate::support::fast_config());
    env.wait_cluster_issuer("corp", "Verified").await;
    env.request("apps", "fresh", cluster_ref("corp")).await;
    env.approve("apps", "fresh").await;
    env.wait_ready_reason("apps", "fresh", "Issued").await;
    assert_eq!(
        sim.sign_submissions(),
        1,
        "only the new request reached the PKI"
    );
    assert_eq!(sim.polls(), 0);
    // Only the new request was read in full or written.
    assert_eq!(
        env.server.count(Method::PATCH, "certificaterequests/done-"),
        0
    );
    assert_eq!(
        env.server.count(Method::GET, "certificaterequests/done-"),
        0
    );
    env.stop_engine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_pki_keeps_the_request_pending_until_it_accepts() {
    let env = Env::start().await;
    let sim = RestSimulator::start().await.unwrap();
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    sim.set_behaviour(Behaviour::RateLimit(1));
    env.request("apps", "slow", cluster_ref("corp")).await;
    env.approve("apps", "slow").await;
    env.wait_request("apps", "slow", "a rate-limit message", |cr| {
        cr.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.message.contains("rate limit"))
        })
    })
    .await;
    sim.set_behaviour(Behaviour::Issue);
    env.wait_ready_reason("apps", "slow", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_other_issuers_are_left_alone() {
    let env = Env::start().await;
    env.request_with("apps", "acme", cluster_ref("x"), |cr| {
        cr.spec.issuer_ref.group = "cert-manager.io".into();
        cr.spec.issuer_ref.kind = "ClusterIssuer".into();
    })
    .await;
    env.approve("apps", "acme").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cr = env.requests("apps").get("acme").await.unwrap();
    assert!(cr.ready_reason().is_none(), "not ours: {:?}", cr.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_in_flight_signing_and_its_write() {
    let mut env = Env::start().await;
    let sim = RestSimulator::start().await.unwrap();
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    // Slow status writes: the engine is mid-write when asked to stop.
    env.server.faults().delay_next(
        Method::PATCH,
        "certificaterequests/last/status",
        Duration::from_millis(500),
        1,
    );
    env.request("apps", "last", cluster_ref("corp")).await;
    env.approve("apps", "last").await;
    crate::support::eventually("the CA to receive the request", || {
        sim.sign_submissions() == 1
    })
    .await;
    env.stop_engine().await;
    let cr = env.requests("apps").get("last").await.unwrap();
    assert!(
        cr.is_ready(),
        "the in-flight result was written before stopping: {:?}",
        cr.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_is_reported_before_any_secret_is_read() {
    let env = Env::start().await;
    // A Secret name that is no DNS-1123 name would become part of a request path; a real
    // API server refuses it by the CRD's pattern, a bypassed one must not matter.
    env.cluster_issuer("sly", ca_spec("../../kube-system/secrets/admin"))
        .await;
    let issuer = env.wait_cluster_issuer("sly", "InvalidSpec").await;
    let ready = &issuer.status.unwrap().conditions[0];
    assert!(
        ready.message.contains("spec.ca.secretName"),
        "{}",
        ready.message
    );
    // No Secret was read by name (the list and watch of Secret metadata run anyway).
    assert_eq!(env.server.count(Method::GET, "secrets/"), 0);
    assert_eq!(env.server.count(Method::GET, "kube-system"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_cut_short_by_the_ca_says_so() {
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    // Far longer than the CA certificate (fixtures end in 2035) lives.
    env.request_with("apps", "long", cluster_ref("dev"), |cr| {
        cr.spec.duration = Some("438000h".into());
    })
    .await;
    env.approve("apps", "long").await;
    let cr = env.wait_ready_reason("apps", "long", "Issued").await;
    let ready = ready_condition(&cr);
    assert!(
        ready.message.contains("shorter than the requested 438000h"),
        "{}",
        ready.message
    );
    // A request for a lifetime the CA can give is not flagged.
    env.request("apps", "day", cluster_ref("dev")).await;
    env.approve("apps", "day").await;
    let cr = env.wait_ready_reason("apps", "day", "Issued").await;
    assert!(
        cr.status
            .unwrap()
            .conditions
            .iter()
            .all(|c| !c.message.contains("shorter")),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_issuer_cannot_reach_what_the_egress_policy_refuses() {
    let sim = RestSimulator::start().await.unwrap();
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.egress = Some(std::sync::Arc::new(
            certwright_pki::egress::EgressPolicy::new(),
        ));
        config.egress_exempt_cluster_issuers = true;
        config
    });
    // A tenant points its issuer at loopback (the simulator is there): refused, never
    // connected to, and its requests wait saying why.
    env.namespaced_issuer("team", "sly", rest_spec(&sim)).await;
    env.request("team", "svc", namespaced_ref("sly")).await;
    env.approve("team", "svc").await;
    env.wait_request("team", "svc", "waiting on the refused issuer", |cr| {
        cr.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.message.contains("the egress policy refuses 127.0.0.1"))
        })
    })
    .await;
    assert_eq!(sim.sign_submissions(), 0);
    // The platform team's cluster issuer, exempted, reaches the same PKI.
    env.cluster_issuer("platform", rest_spec(&sim)).await;
    env.request("apps", "web", cluster_ref("platform")).await;
    env.approve("apps", "web").await;
    env.wait_ready_reason("apps", "web", "Issued").await;
    assert_eq!(sim.sign_submissions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_requests_refused_template_does_not_take_a_shared_issuer_offline() {
    use certwright_simulators::adcs_sim::AdcsSimulator;

    let sim = AdcsSimulator::start().await.unwrap();
    let env = Env::start().await;
    env.adcs_cluster_issuer("corp-adcs", &sim, |spec| {
        spec.allow_template_override = true
    })
    .await;
    // One team asks for a template the CA does not offer: its request fails, alone.
    env.request_with("team-a", "odd", cluster_ref("corp-adcs"), |cr| {
        cr.metadata.annotations = Some(
            [(
                certwright_api::TEMPLATE_ANNOTATION.to_string(),
                "SecretTemplate-42".to_string(),
            )]
            .into(),
        );
    })
    .await;
    env.approve("team-a", "odd").await;
    let odd = env.wait_ready_reason("team-a", "odd", "Failed").await;
    let failed = ready_condition(&odd);
    assert!(
        failed.message.contains("its issuer is healthy")
            && failed.message.contains("SecretTemplate-42"),
        "{}",
        failed.message
    );
    // The issuer stays Ready, says nothing of that request, and serves another team.
    let issuer = env.wait_cluster_issuer("corp-adcs", "Verified").await;
    let ready = &issuer.status.unwrap().conditions[0];
    assert!(
        !ready.message.contains("SecretTemplate-42"),
        "{}",
        ready.message
    );
    env.request("team-b", "web", cluster_ref("corp-adcs")).await;
    env.approve("team-b", "web").await;
    env.wait_ready_reason("team-b", "web", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_keeps_failing_gives_up_after_the_maximum_retry_duration() {
    let sim = RestSimulator::start().await.unwrap();
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.max_retry_duration = Some(Duration::from_secs(2));
        config
    });
    env.cluster_issuer("corp", rest_spec(&sim)).await;
    env.wait_cluster_issuer("corp", "Verified").await;
    sim.set_behaviour(Behaviour::Fail500);
    env.request("apps", "web", cluster_ref("corp")).await;
    env.approve("apps", "web").await;
    // Pending while it retries, then Failed with a failure time: cert-manager's backoff
    // takes over.
    env.wait_ready_reason("apps", "web", "Pending").await;
    let failed = env.wait_ready_reason("apps", "web", "Failed").await;
    let ready = ready_condition(&failed);
    assert!(
        ready.message.contains("Gave up after retrying for 2s"),
        "{}",
        ready.message
    );
    assert!(failed.status.unwrap().failure_time.is_some());
    let calls = sim.sign_submissions();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.sign_submissions(), calls, "no call after giving up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_shows_the_backend_that_signs_as_it_names_itself() {
    let env = Env::start().await;
    let sim = RestSimulator::start().await.unwrap();
    let mut cfssl = rest_spec(&sim);
    if let Some(rest) = cfssl.rest.as_mut() {
        rest.flavor = certwright_api::RestFlavor::Cfssl;
    }
    env.cluster_issuer("cfssl", cfssl).await;
    env.cluster_issuer("plain", rest_spec(&sim)).await;
    let backend = |issuer: certwright_api::InternalClusterIssuer| {
        issuer.status.and_then(|s| s.backend).unwrap_or_default()
    };
    // The REST block either way; cfssl's flavour is the backend's own name.
    assert_eq!(
        backend(env.wait_cluster_issuer("cfssl", "Verified").await),
        "cfssl"
    );
    assert_eq!(
        backend(env.wait_cluster_issuer("plain", "Verified").await),
        "rest"
    );
    // A status that says otherwise (written by an older version) is put right.
    let issuers: kube::Api<certwright_api::InternalClusterIssuer> =
        kube::Api::all(env.client.clone());
    issuers
        .patch_status(
            "cfssl",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"status": {"backend": "rest"}})),
        )
        .await
        .unwrap();
    crate::support::eventually_async("status.backend put right", || {
        let issuers = issuers.clone();
        async move {
            issuers
                .get("cfssl")
                .await
                .ok()
                .and_then(|i| i.status)
                .and_then(|s| s.backend)
                == Some("cfssl".to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_before_the_first_list_does_not_hang() {
    // The CertificateRequest list is slow: the engine is stopped, as by SIGTERM, before
    // its request loop's first list is in. The stop must not wait for a list that
    // nothing reads any more.
    stop_while_a_first_list_is_slow("/apis/cert-manager.io/v1/certificaterequests").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_before_an_issuer_kinds_first_list_does_not_hang() {
    // The same for a loop on kube-runtime's `Controller`, whose runner waits for its
    // store's first list: the InternalIssuer list is slow.
    stop_while_a_first_list_is_slow("/apis/pki.certwright.io/v1alpha1/internalissuers").await;
}

/// Starts the engine with every GET of `lists` taking 3 s and stops it once the
/// watch's first list is under way: the stop must return within 2 s.
async fn stop_while_a_first_list_is_slow(lists: &str) {
    let mut env = Env::new().await;
    env.server
        .faults()
        .delay(Method::GET, lists, Duration::from_secs(3));
    env.start_engine(crate::support::fast_config());
    // The start-up check that the kind is served, then the watch's first list.
    crate::support::eventually("the watch's first list to be under way", || {
        env.server.count(Method::GET, lists) >= 2
    })
    .await;
    tokio::time::timeout(Duration::from_secs(2), env.stop_engine())
        .await
        .expect("the stop does not wait for the first list");
}
