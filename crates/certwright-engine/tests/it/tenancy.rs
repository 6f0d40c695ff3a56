//! What one tenant's issuers can do to others and learn of what they point at: health
//! checks run off the issuer workers, bounded per namespace; statuses tell a PKI's
//! failure by kind only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use certwright_api::{IssuerSpec, RestBackend};
use tokio::net::TcpListener;

use crate::support::{Env, ca_spec, eventually};

/// A TCP listener that accepts every connection and never says a word, counting them.
async fn black_hole() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    (url, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_black_holed_issuers_do_not_delay_another_teams_new_issuer() {
    let (url, accepted) = black_hole().await;
    let env = Env::start().await;
    // Five tenants, ten issuers each, all pointing at a PKI that never answers, each
    // allowed 30 s per call.
    for tenant in 0..5 {
        for i in 0..10 {
            let spec = IssuerSpec {
                rest: Some(RestBackend {
                    url: url.clone(),
                    timeout: Some("30s".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            env.namespaced_issuer(&format!("tenant-{tenant}"), &format!("hole-{i}"), spec)
                .await;
        }
    }
    // Their checks are under way (as many as each namespace may run at once)...
    eventually("the black-holed issuers' checks to start", || {
        accepted.load(Ordering::SeqCst) >= 5 * 4
    })
    .await;
    // ...when another team creates an issuer: it is checked and Ready at once.
    let started = tokio::time::Instant::now();
    env.ca_secret("team", "team-ca").await;
    env.namespaced_issuer("team", "own", ca_spec("team-ca"))
        .await;
    env.wait_namespaced_issuer("team", "own", "Verified").await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "the new issuer became Ready after {waited:?}"
    );
    // The black-holed issuers get the short first timeout, not the 30 s they allow.
    let hole = env
        .wait_namespaced_issuer("tenant-0", "hole-0", "Unreachable")
        .await;
    let message = &hole.status.unwrap().conditions[0].message;
    assert!(message.contains("within 5s"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_statuses_say_how_its_pki_failed_never_what_it_answered() {
    use certwright_simulators::rest_sim::{Behaviour, RestSimulator};
    let banner = "admin console v9.1 (build 4711)";
    let sim = RestSimulator::start().await.unwrap();
    sim.set_behaviour(Behaviour::Reject(banner.to_string()));
    let mut env = Env::new().await;
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.redact_tenant_errors = true;
        config.egress_exempt_cluster_issuers = true;
        config
    });
    let spec = IssuerSpec {
        rest: Some(RestBackend {
            url: sim.url(),
            ca_bundle: Some(certwright_api::Base64Bytes::from(sim.tls_ca_pem())),
            timeout: Some("2s".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // A tenant's issuer in front of something that answers with its own words: the
    // request fails, and neither its status nor its Events hold those words.
    env.namespaced_issuer("team", "probe", spec.clone()).await;
    env.request("team", "svc", crate::support::namespaced_ref("probe"))
        .await;
    env.approve("team", "svc").await;
    let failed = env.wait_ready_reason("team", "svc", "Failed").await;
    let told = format!("{:?}", failed.status);
    assert!(!told.contains("admin console"), "{told}");
    assert!(told.contains("the CA refused this request"), "{told}");
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), "team");
    eventually_events(&events, |notes| {
        notes
            .iter()
            .any(|n| n.contains("the CA refused this request"))
            && !notes.iter().any(|n| n.contains("admin console"))
    })
    .await;
    // A dead end answers the same way, by kind: a closed port is "refused".
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut dead = spec.clone();
    dead.rest.as_mut().unwrap().url = format!("https://127.0.0.1:{closed}/");
    env.namespaced_issuer("team", "dead", dead).await;
    let issuer = env
        .wait_namespaced_issuer("team", "dead", "Unreachable")
        .await;
    let message = &issuer.status.unwrap().conditions[0].message;
    assert_eq!(message, "PKI unavailable: the PKI refused the connection");
    // The platform team's exempt cluster issuer, in front of the same PKI, shows the
    // CA's words whole.
    env.cluster_issuer("platform", spec).await;
    env.request("apps", "web", crate::support::cluster_ref("platform"))
        .await;
    env.approve("apps", "web").await;
    let failed = env.wait_ready_reason("apps", "web", "Failed").await;
    assert!(format!("{:?}", failed.status).contains(banner));
}

/// Waits until the notes of the namespace's Events satisfy `ok`.
async fn eventually_events(
    api: &kube::Api<k8s_openapi::api::events::v1::Event>,
    ok: impl Fn(&[String]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let notes: Vec<String> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.note)
            .collect();
        if ok(&notes) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the Events; got {notes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_reads_and_watches_secrets_only_where_it_may() {
    use certwright_engine::SecretAccess;
    let mut env = Env::new().await;
    env.ca_secret("team-a", "ca").await;
    env.ca_secret("team-b", "ca").await;
    env.server.clear_requests();
    env.start_engine({
        let mut config = crate::support::fast_config();
        config.secret_access = SecretAccess::only([crate::support::CLUSTER_NS, "team-a"]);
        config
    });
    env.namespaced_issuer("team-a", "own", ca_spec("ca")).await;
    env.namespaced_issuer("team-b", "other", ca_spec("ca"))
        .await;
    env.wait_namespaced_issuer("team-a", "own", "Verified")
        .await;
    let other = env
        .wait_namespaced_issuer("team-b", "other", "SecretOutOfScope")
        .await;
    let message = &other.status.unwrap().conditions[0].message;
    assert!(
        message.contains(r#""cert-manager", "team-a""#) && message.contains(r#"not in "team-b""#),
        "{message}"
    );
    // The watch in team-a works: a deleted Secret is seen at once.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.client.clone(), "team-a");
    secrets
        .delete("ca", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    env.wait_namespaced_issuer("team-a", "own", "SecretNotFound")
        .await;
    // The engine read nothing of Secrets cluster-wide or in team-b (the test's own
    // writes are the only other Secret calls).
    let calls = env.server.requests();
    let secret_calls: Vec<&str> = calls
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .map(|r| r.path.as_str())
        .filter(|p| p.ends_with("/secrets") || p.contains("/secrets/"))
        .collect();
    assert!(
        secret_calls
            .iter()
            .all(|p| p.starts_with("/api/v1/namespaces/team-a/")
                || p.starts_with("/api/v1/namespaces/cert-manager/")),
        "{secret_calls:#?}"
    );
    assert!(
        secret_calls.contains(&"/api/v1/namespaces/team-a/secrets"),
        "no watch in team-a: {secret_calls:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_requests_pending_id_and_key_written_on_a_tenants_request_open_nothing() {
    use certwright_api::{PENDING_ID_ANNOTATION, SUBMISSION_KEY_ANNOTATION, SUBMITTED_ANNOTATION};
    use certwright_simulators::ejbca_sim::{APPROVAL_PROFILE, EjbcaSimulator};
    use kube::ResourceExt;

    use crate::support::{EJBCA_CLIENT_ID, EJBCA_CLIENT_SECRET, cluster_ref};

    let ejbca = EjbcaSimulator::start_oauth(EJBCA_CLIENT_ID, EJBCA_CLIENT_SECRET)
        .await
        .unwrap();
    let env = Env::start().await;
    env.ejbca_cluster_issuer("corp-ejbca", &ejbca, APPROVAL_PROFILE, "5s")
        .await;
    env.request("payments", "victim", cluster_ref("corp-ejbca"))
        .await;
    env.approve("payments", "victim").await;
    let victim = env
        .wait_request("payments", "victim", "a pending id", |cr| {
            cr.annotations().contains_key(PENDING_ID_ANNOTATION)
        })
        .await;
    let pending_id = victim.annotations()[PENDING_ID_ANNOTATION].clone();
    let victim_key = victim.annotations()[SUBMISSION_KEY_ANNOTATION].clone();
    let victim_uid = victim.uid().unwrap();
    assert_eq!(victim_key, format!("payments/victim/{victim_uid}"));

    // Another tenant, who learnt the victim's pending id and uid, writes them on its own
    // requests: as the victim's key, and as a key naming its own request.
    for (name, key) in [
        ("thief", victim_key.clone()),
        ("thief-2", format!("evil/thief-2/{victim_uid}")),
    ] {
        env.request_with("evil", name, cluster_ref("corp-ejbca"), |cr| {
            cr.metadata.annotations = Some(
                [
                    (PENDING_ID_ANNOTATION.to_string(), pending_id.clone()),
                    (SUBMISSION_KEY_ANNOTATION.to_string(), key),
                    (
                        SUBMITTED_ANNOTATION.to_string(),
                        jiff::Timestamp::now().to_string(),
                    ),
                ]
                .into(),
            );
        })
        .await;
        env.approve("evil", name).await;
        // Still held on EJBCA: a poll that opened the seal would leave it Pending. It
        // fails at once, the id unusable on this request.
        env.wait_ready_reason("evil", name, "Failed").await;
    }
    // The victim's enrollment is still the victim's, and is finalized for it.
    let held = ejbca.waiting_ids();
    assert_eq!(held.len(), 1);
    assert!(ejbca.approve(held[0]));
    let issued = env.wait_ready_reason("payments", "victim", "Issued").await;
    assert!(issued.status.unwrap().certificate.is_some());
    assert_eq!(ejbca.certificates_issued(), 1);
}
