//! Interleavings of watch events, work and writes that once left a request or an issuer
//! with a stale status or never looked at again. Each test forces its interleaving with
//! the testkit API server's delays and faults, so it fails the same way every time
//! without the fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{CLUSTER_NS, Env, ca_spec, cluster_ref, eventually};
use certwright_api::{Base64Bytes, InternalClusterIssuer, IssuerSpec, RestBackend};
use certwright_simulators::rest_sim::{RestSimulator, SimAuth};
use certwright_testkit::apiserver::{ApiServerOptions, Method};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

const CR: &str = "certificaterequests.cert-manager.io";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_recreated_while_its_result_is_written_is_issued_afresh() {
    // cert-manager reuses a request's name. The old object is deleted and a new one
    // created and approved while the old one's result waits to be written: the write
    // then conflicts, and the new object must still be signed.
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    env.server.faults().delay_next(
        Method::PATCH,
        "certificaterequests/r1/status",
        Duration::from_millis(1500),
        1,
    );
    let first = env.request("apps", "r1", cluster_ref("dev")).await;
    env.approve_in_store("apps", "r1");
    eventually("the first result's write to be under way", || {
        env.server
            .count(Method::PATCH, "certificaterequests/r1/status")
            >= 1
    })
    .await;
    env.server.delete_json(CR, "apps", "r1").unwrap();
    let second = env.request("apps", "r1", cluster_ref("dev")).await;
    assert_ne!(first.metadata.uid, second.metadata.uid);
    env.approve_in_store("apps", "r1");

    let issued = env.wait_ready_reason("apps", "r1", "Issued").await;
    assert_eq!(issued.metadata.uid, second.metadata.uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_rotated_credentials_does_not_mark_the_rebuilt_issuer() {
    // A request is signed with the old token while the token is rotated: the CA refuses
    // it (401), but by then the issuer was rebuilt with the new token. The refusal says
    // nothing about the new build: the issuer stays Verified and the request is signed
    // with the new token at once, not after the five-minute wait for an issuer change.
    let env = Env::start().await;
    let sim = RestSimulator::start().await.unwrap();
    sim.set_auth(SimAuth::Bearer("old".into()));
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), CLUSTER_NS);
    let token = |value: &str| Secret {
        metadata: ObjectMeta {
            name: Some("rest-auth".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &token("old"))
        .await
        .unwrap();
    env.cluster_issuer(
        "corp",
        IssuerSpec {
            rest: Some(RestBackend {
                url: sim.url(),
                auth_secret_name: Some("rest-auth".into()),
                ca_bundle: Some(Base64Bytes::from(sim.tls_ca_pem())),
                timeout: Some("2s".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    env.wait_cluster_issuer("corp", "Verified").await;

    // The engine reads the request just before signing; hold that read while the
    // credentials are rotated on both sides.
    env.server.faults().delay_next(
        Method::GET,
        "certificaterequests/rot",
        Duration::from_millis(1500),
        1,
    );
    env.request("apps", "rot", cluster_ref("corp")).await;
    env.approve_in_store("apps", "rot");
    eventually("the engine to read the request", || {
        env.server.count(Method::GET, "certificaterequests/rot") >= 1
    })
    .await;
    sim.set_auth(SimAuth::Bearer("new".into()));
    secrets
        .replace("rest-auth", &PostParams::default(), &{
            let mut s = token("new");
            s.metadata.resource_version = secrets
                .get("rest-auth")
                .await
                .unwrap()
                .metadata
                .resource_version;
            s
        })
        .await
        .unwrap();

    env.wait_ready_reason("apps", "rot", "Issued").await;
    assert_eq!(sim.sign_submissions(), 2, "one refused, one signed");
    let issuer = env.wait_cluster_issuer("corp", "Verified").await;
    assert_eq!(issuer.status.unwrap().conditions.len(), 1);
    let events: Api<Event> = Api::all(env.client.clone());
    let unauthorized = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Unauthorized"))
        .count();
    assert_eq!(unauthorized, 0, "the issuer was never marked Unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_status_cleared_by_someone_else_is_written_again() {
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    let issuers: Api<InternalClusterIssuer> = Api::all(env.client.clone());
    issuers
        .patch_status(
            "dev",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": []}})),
        )
        .await
        .unwrap();
    env.wait_cluster_issuer("dev", "Verified").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_status_cleared_while_the_engine_awaits_its_write_is_written_again() {
    // The engine restores a cleared status, but hears the answer to its write late: by
    // then the watch has told it of the write and of a second clearing. The late answer
    // must not stand for the newer, cleared status (the issuer would stay without a
    // Ready condition until it next changed).
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    // Cleared in the store, so the held-answer rule below only catches the engine.
    let resource = "internalclusterissuers.pki.certwright.io";
    let clear = || {
        let mut issuer = env.server.get_json(resource, "", "dev").unwrap();
        issuer["status"]["conditions"] = json!([]);
        env.server.put_json(resource, issuer).unwrap();
    };
    let ready_reason = || {
        env.server.get_json(resource, "", "dev").and_then(|issuer| {
            issuer["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")
                .and_then(|c| c["reason"].as_str().map(str::to_string))
        })
    };
    env.server.faults().delay_answer_next(
        Method::PATCH,
        "internalclusterissuers/dev/status",
        Duration::from_secs(3),
        1,
    );
    clear();
    eventually("the engine to write the status again", || {
        ready_reason().as_deref() == Some("Verified")
    })
    .await;
    clear();
    env.wait_cluster_issuer("dev", "Verified").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_status_that_could_not_be_written_is_decided_afresh() {
    // "Waiting for the issuer" could not be written (the read before the write fails);
    // the issuer appears, usable, before the retry. The retry must sign, not write the
    // stale wait and sleep until the five-minute backstop.
    issuer_appears_while_the_wait_is_read(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_becomes_usable_while_a_wait_is_written_does_not_hold_the_request() {
    // The engine is writing "the issuer does not exist" (its read of the request is
    // slow) when the issuer appears, usable. The wait it then schedules was decided
    // before the issuer changed and must not hold the request back (for five minutes,
    // the backstop of a wait for an issuer).
    issuer_appears_while_the_wait_is_read(false).await;
}

/// A request waits for a missing issuer; the engine's read of the request before it
/// writes the wait is slow (and, with `read_fails`, then fails). The issuer appears,
/// usable, during that read; the request must be issued within the test's deadline.
async fn issuer_appears_while_the_wait_is_read(read_fails: bool) {
    let env = Env::start().await;
    env.request("apps", "early", cluster_ref("late")).await;
    let faults = env.server.faults();
    faults.delay_next(
        Method::GET,
        "certificaterequests/early",
        Duration::from_millis(1500),
        1,
    );
    if read_fails {
        faults.fail_next(Method::GET, "certificaterequests/early", 500, 1);
    }
    env.approve_in_store("apps", "early");
    eventually("the engine to read the request to write the wait", || {
        env.server.count(Method::GET, "certificaterequests/early") >= 1
    })
    .await;
    env.ca_secret(CLUSTER_NS, "late-ca").await;
    env.cluster_issuer("late", ca_spec("late-ca")).await;

    env.wait_ready_reason("apps", "early", "Issued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_deleted_while_its_watch_was_down_is_noticed_after_the_relist() {
    // The Secret watch is down while the CA Secret is deleted and more changes follow
    // than the API server remembers: the watch must list again, and the deletion shows
    // only as an absence from that list. The issuer must still notice.
    let mut env = Env::new_with(ApiServerOptions::new().history_limit(5)).await;
    env.start_engine(crate::support::fast_config());
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;

    // Only the Secret watch stays down (every list and watch of Secrets fails) until
    // the deletion and the changes after it are done; the other watches come back at
    // once. A failed try proves its old stream is gone.
    let faults = env.server.faults();
    faults.fail_ratio(Method::GET, "/api/v1/secrets", 500, 1.0);
    let injected = env.server.stats().injected_faults;
    env.server.drop_watches();
    eventually("the Secret watch to try again and fail", || {
        env.server.stats().injected_faults > injected
    })
    .await;
    env.server
        .delete_json("secrets", CLUSTER_NS, "dev-ca")
        .unwrap();
    for i in 0..10 {
        env.server
            .create_json(
                "secrets",
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": format!("filler-{i}"), "namespace": "other"}}),
            )
            .unwrap();
    }
    faults.clear();

    env.wait_cluster_issuer("dev", "SecretNotFound").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_approved_while_its_watch_was_down_is_signed_after_the_relist() {
    // The CertificateRequest watch is down while a request is created and approved and
    // more changes follow than the API server remembers: the watch lists again, in
    // pages of 500, and the request comes in the first page. A list's objects reach
    // kube-runtime's reflector store only when the last page is in, while the trigger
    // for each is taken as its page arrives: a look that finds the request missing
    // from the store is dropped. The request must still be looked at once the list is
    // complete.
    let mut env = Env::new_with(ApiServerOptions::new().history_limit(5)).await;
    // More requests than one page of a list holds, none of them the engine's to sign.
    for i in 0..520 {
        env.server
            .create_json(
                CR,
                json!({"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
                       "metadata": {"name": format!("filler-{i}"), "namespace": "other"},
                       "spec": {"request": "eA==",
                                "issuerRef": {"name": "elsewhere", "kind": "Issuer",
                                              "group": "example.com"}}}),
            )
            .unwrap();
    }
    env.start_engine(crate::support::fast_config());
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;

    let lists = "/apis/cert-manager.io/v1/certificaterequests";
    env.take_watch_down(lists).await;
    env.request("apps", "during", cluster_ref("dev")).await;
    env.approve_in_store("apps", "during");
    for i in 0..6 {
        env.server
            .delete_json(CR, "other", &format!("filler-{i}"))
            .unwrap();
    }
    // The list's two pages come a second apart: the first page's triggers are taken
    // before the second arrives.
    env.bring_watch_back_in_pages(lists);

    env.wait_ready_reason("apps", "during", "Issued").await;
    // Both loops measure their looks.
    let text = env.metrics.encode().unwrap();
    for queue in ["certificaterequests", "issuers"] {
        let count =
            format!(r#"certwright_workqueue_work_duration_seconds_count{{queue="{queue}"}} "#);
        let looks: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(count.as_str()))
            .unwrap_or_else(|| panic!("no looks of {queue}:\n{text}"))
            .parse()
            .unwrap();
        assert!(looks > 0, "{queue}");
        assert!(text.contains(&format!(
            r#"certwright_workqueue_in_flight{{queue="{queue}"}}"#
        )));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_deleted_while_it_is_looked_at_signs_nothing_more() {
    // The issuer is rebuilt (its Secret changed) and deleted while that look reads the
    // Secret slowly. Once the look has ended, the issuer's metric series are gone, and
    // a request approved afterwards waits for an issuer that does not exist: nothing
    // signs it. (`issuers::deletion_tests` checks that the engine keeps nothing of it.)
    let env = Env::start().await;
    env.ca_secret(CLUSTER_NS, "dev-ca").await;
    env.cluster_issuer("dev", ca_spec("dev-ca")).await;
    env.wait_cluster_issuer("dev", "Verified").await;
    let series = |metrics: &certwright_engine::metrics::Metrics| {
        metrics
            .encode()
            .unwrap()
            .lines()
            .filter(|l| {
                l.starts_with("certwright_issuer_ready{") && l.contains(r#"issuer_name="dev""#)
            })
            .count()
    };
    assert_eq!(series(&env.metrics), 1);

    let read_before = env.server.count(Method::GET, "secrets/dev-ca");
    env.server.faults().delay_next(
        Method::GET,
        "secrets/dev-ca",
        Duration::from_millis(1500),
        1,
    );
    let relabel = json!({"metadata": {"labels": {"rotated": "yes"}}});
    Api::<Secret>::namespaced(env.client.clone(), CLUSTER_NS)
        .patch("dev-ca", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    eventually("the rebuild to read the Secret", || {
        env.server.count(Method::GET, "secrets/dev-ca") > read_before
    })
    .await;
    Api::<InternalClusterIssuer>::all(env.client.clone())
        .delete("dev", &Default::default())
        .await
        .unwrap();
    eventually(
        "the look under way to end and the issuer to be forgotten",
        || {
            let text = env.metrics.encode().unwrap();
            text.contains(r#"certwright_workqueue_in_flight{queue="issuers"} 0"#)
                && series(&env.metrics) == 0
        },
    )
    .await;

    env.request("apps", "after", cluster_ref("dev")).await;
    env.approve("apps", "after").await;
    let waiting = env
        .wait_request("apps", "after", "a wait for a missing issuer", |cr| {
            cr.ready_reason() == Some("Pending")
                && cr
                    .conditions()
                    .iter()
                    .any(|c| c.message.contains("does not exist"))
        })
        .await;
    assert!(waiting.status.unwrap().certificate.is_none());
}
