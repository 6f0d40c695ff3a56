//! What the engine keeps of an issuer once it is deleted while a look at it is under
//! way: nothing. This needs the engine's own state, so it runs here rather than with
//! the integration tests, on the testkit API server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certwright_api::{CaBackend, InternalClusterIssuer, InternalIssuer, IssuerSpec};
use certwright_testkit::apiserver::{ApiServer, ApiServerOptions, Method};
use certwright_testkit::fixtures::{KeyKind, TestCa};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use tokio_util::sync::CancellationToken;

use crate::engine::{Shared, lock};
use crate::issuers::IssuerKey;
use crate::{Backoff, CertwrightIssuers, Engine, EngineConfig, metrics::Metrics};

const NS: &str = "cert-manager";

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing the engine keeps of `key` is left.
fn forgotten(s: &Shared, key: &IssuerKey) -> bool {
    !lock(&s.issuers).contains_key(key)
        && !lock(&s.last_checked).contains_key(key)
        && !lock(&s.bundles).contains_key(key)
        && !lock(&s.written_status).contains_key(key)
        && s.checks.holds_nothing_of(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_deleted_while_a_look_at_it_is_under_way_is_forgotten_after_it() {
    // The issuer is rebuilt (its Secret changed) and its look reads the Secret slowly;
    // the issuer is deleted during that read. The look ends after the deletion, with a
    // new build: that build, its health check and everything else kept of the issuer
    // must go. kube-runtime's Controller never looks at a deleted object; handled
    // beside the loop, the deletion would come before the look's end, which would put
    // the build back (see `stores`).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::start_with(ApiServerOptions::new())
        .await
        .unwrap();
    server
        .register_crds_yaml(certwright_testkit::crds::CERT_MANAGER)
        .unwrap();
    for crd in [InternalIssuer::crd(), InternalClusterIssuer::crd()] {
        server
            .register_crd(&serde_json::to_value(crd).unwrap())
            .unwrap();
    }
    let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let ca = TestCa::root(KeyKind::EcdsaP256, "dev root");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut secret = Secret::default();
    secret.metadata.name = Some("dev-ca".into());
    secret.type_ = Some("kubernetes.io/tls".into());
    secret.data = Some(
        [
            (
                "tls.crt".to_string(),
                ByteString(ca.cert_pem().as_bytes().to_vec()),
            ),
            (
                "tls.key".to_string(),
                ByteString(ca.key_pem().as_bytes().to_vec()),
            ),
        ]
        .into(),
    );
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let issuers: Api<InternalClusterIssuer> = Api::all(client.clone());
    let spec = IssuerSpec {
        ca: Some(CaBackend {
            secret_name: "dev-ca".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    issuers
        .create(
            &PostParams::default(),
            &InternalClusterIssuer::new("dev", spec.into()),
        )
        .await
        .unwrap();

    let config = EngineConfig {
        cluster_resource_namespace: NS.into(),
        retry: Backoff::new(Duration::from_millis(50), Duration::from_millis(400)),
        ..EngineConfig::default()
    };
    let engine = Engine::<CertwrightIssuers>::new(client.clone(), config, Metrics::new());
    let s: Arc<Shared> = engine.shared.clone();
    let stop = CancellationToken::new();
    let running = tokio::spawn(engine.run(stop.clone()));
    let key = IssuerKey {
        cluster: true,
        namespace: String::new(),
        name: "dev".into(),
    };
    eventually("the issuer's first verdict", || {
        lock(&s.issuers).get(&key).is_some_and(|e| e.checked())
    })
    .await;

    let read_before = server.count(Method::GET, "secrets/dev-ca");
    server.faults().delay_next(
        Method::GET,
        "secrets/dev-ca",
        Duration::from_millis(1500),
        1,
    );
    let relabel = serde_json::json!({"metadata": {"labels": {"rotated": "yes"}}});
    secrets
        .patch("dev-ca", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    eventually("the rebuild to read the Secret", || {
        server.count(Method::GET, "secrets/dev-ca") > read_before
    })
    .await;
    issuers.delete("dev", &Default::default()).await.unwrap();

    eventually(
        "the issuer to be forgotten after the look under way",
        || s.issuer_loop.in_flight.get() == 0 && forgotten(&s, &key),
    )
    .await;
    // The new build's health check ends after the deletion: it records nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(forgotten(&s, &key));
    assert!(s.issuer_objects.get(&key).is_none());

    stop.cancel();
    running.await.unwrap().unwrap();
}
