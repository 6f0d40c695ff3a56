//! An embedder drives the engine with their own CRD pair in their own API group: the
//! engine serves CertificateRequests naming those kinds and ignores certwright's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support::{CLUSTER_NS, Env, ca_spec, cluster_ref, fast_config};
use certwright_api::{Condition, IssuerRef, IssuerSpec};
use certwright_engine::{Engine, IssuerKinds, IssuerResource};
use kube::api::PostParams;
use kube::{Api, CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The embedder's spec: certwright's issuer spec plus a field of their own.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "pki.acme.example",
    version = "v1",
    kind = "AcmeIssuer",
    namespaced,
    status = "AcmeStatus"
)]
#[serde(rename_all = "camelCase")]
struct AcmeIssuerSpec {
    #[serde(flatten)]
    issuer: IssuerSpec,
    cost_center: String,
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "pki.acme.example",
    version = "v1",
    kind = "AcmeClusterIssuer",
    status = "AcmeStatus"
)]
#[serde(rename_all = "camelCase")]
struct AcmeClusterIssuerSpec {
    #[serde(flatten)]
    issuer: IssuerSpec,
    cost_center: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
struct AcmeStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
}

impl IssuerResource for AcmeIssuer {
    fn issuer_spec(&self) -> &IssuerSpec {
        &self.spec.issuer
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl IssuerResource for AcmeClusterIssuer {
    fn issuer_spec(&self) -> &IssuerSpec {
        &self.spec.issuer
    }
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

struct AcmeKinds;

impl IssuerKinds for AcmeKinds {
    const GROUP: &'static str = "pki.acme.example";
    type Namespaced = AcmeIssuer;
    type Cluster = AcmeClusterIssuer;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedders_own_kinds_drive_the_engine() {
    let env = Env::new().await;
    for crd in [AcmeIssuer::crd(), AcmeClusterIssuer::crd()] {
        env.server
            .register_crd(&serde_json::to_value(crd).unwrap())
            .unwrap();
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let engine = Engine::<AcmeKinds>::new(env.client.clone(), fast_config(), env.metrics.clone());
    let running = tokio::spawn(engine.run(shutdown.clone()));

    env.ca_secret(CLUSTER_NS, "acme-ca").await;
    let issuers: Api<AcmeClusterIssuer> = Api::all(env.client.clone());
    let spec = AcmeClusterIssuerSpec {
        issuer: ca_spec("acme-ca"),
        cost_center: "cc-42".into(),
    };
    issuers
        .create(
            &PostParams::default(),
            &AcmeClusterIssuer::new("acme", spec),
        )
        .await
        .unwrap();
    let acme_ref = IssuerRef {
        name: "acme".into(),
        kind: "AcmeClusterIssuer".into(),
        group: "pki.acme.example".into(),
    };
    env.request("apps", "theirs", acme_ref).await;
    env.approve("apps", "theirs").await;
    // certwright's own group is not served by this engine.
    env.request("apps", "ours", cluster_ref("acme")).await;
    env.approve("apps", "ours").await;

    env.wait_ready_reason("apps", "theirs", "Issued").await;
    let issuer = issuers.get("acme").await.unwrap();
    assert_eq!(issuer.status.unwrap().conditions[0].reason, "Verified");
    let ours = env.requests("apps").get("ours").await.unwrap();
    assert!(
        ours.ready_reason().is_none(),
        "another group's request is left alone"
    );

    shutdown.cancel();
    running.await.unwrap().unwrap();
}
