//! The example controller signs CertificateRequests that name its kinds, on the test API
//! server, and leaves certwright's own kinds alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use certwright_api::certificate_request::{CertificateRequest, CertificateRequestSpec};
use certwright_api::{Base64Bytes, CaBackend, IssuerRef, IssuerSpec};
use certwright_engine::metrics::Metrics;
use certwright_testkit::apiserver::ApiServer;
use certwright_testkit::fixtures::{CsrBuilder, KeyKind, TestCa};
use embed_own_kinds::{TeamClusterIssuer, TeamClusterIssuerSpec, TeamIssuer, TeamIssuerSpec};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "cert-manager";

/// The team's controller, running.
struct Controller {
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), certwright_engine::Error>>,
}

impl Controller {
    /// Stops it as SIGTERM does, and waits for it.
    async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap();
    }
}

/// The test API server with cert-manager's and the team's CRDs, a client, and the
/// team's controller running on it.
async fn start() -> (ApiServer, Client, Controller) {
    let (server, client) = api_server().await;
    let shutdown = CancellationToken::new();
    let engine = embed_own_kinds::engine(
        client.clone(),
        embed_own_kinds::config(NAMESPACE),
        Metrics::new(),
    );
    let running = tokio::spawn(engine.run(shutdown.clone()));
    (server, client, Controller { shutdown, running })
}

async fn api_server() -> (ApiServer, Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::start().await.unwrap();
    server
        .register_crds_yaml(certwright_testkit::crds::CERT_MANAGER)
        .unwrap();
    let installed = server
        .register_crds_yaml(&embed_own_kinds::crds_yaml().unwrap())
        .unwrap();
    assert_eq!(installed, 2);
    let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    (server, client)
}

async fn ca_secret(client: &Client, namespace: &str, name: &str) {
    let ca = TestCa::root(KeyKind::EcdsaP256, "team root");
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
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
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

fn ca_spec(secret: &str) -> IssuerSpec {
    IssuerSpec {
        ca: Some(CaBackend {
            secret_name: secret.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An approved CertificateRequest naming `issuer`.
async fn approved_request(client: &Client, namespace: &str, name: &str, issuer: IssuerRef) {
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name(&format!("{name}.example.test"))
        .dns(&format!("{name}.example.test"))
        .build();
    let mut cr = CertificateRequest::new(
        name,
        CertificateRequestSpec {
            request: Base64Bytes::from(csr.csr_pem.as_str()),
            issuer_ref: issuer,
            ..Default::default()
        },
    );
    cr.metadata.namespace = Some(namespace.into());
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &cr).await.unwrap();
    let approved = serde_json::json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "cert-manager.io",
        "message": "approved", "lastTransitionTime": jiff::Timestamp::now().to_string(),
    }]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&approved))
        .await
        .unwrap();
}

async fn wait<T>(what: &str, mut look: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = look().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_controller_signs_for_its_own_kinds_only() {
    let (_server, client, controller) = start().await;

    ca_secret(&client, NAMESPACE, "team-ca").await;
    let issuers: Api<TeamClusterIssuer> = Api::all(client.clone());
    let spec = TeamClusterIssuerSpec {
        owner: "pki-team@corp.example".into(),
        issuer: ca_spec("team-ca"),
    };
    issuers
        .create(
            &PostParams::default(),
            &TeamClusterIssuer::new("team", spec),
        )
        .await
        .unwrap();

    let team_ref = IssuerRef {
        name: "team".into(),
        kind: "TeamClusterIssuer".into(),
        group: embed_own_kinds::GROUP.into(),
    };
    // certwright's request first: the watch delivers it before the team's, so by the
    // time the team's is issued the controller has seen it.
    let certwright_ref = IssuerRef {
        name: "team".into(),
        kind: "InternalClusterIssuer".into(),
        group: "pki.certwright.io".into(),
    };
    approved_request(&client, "apps", "certwrights", certwright_ref).await;
    approved_request(&client, "apps", "ours", team_ref).await;

    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), "apps");
    let issued = wait("the request to be issued", async || {
        let cr = requests.get("ours").await.unwrap();
        (cr.ready_reason() == Some("Issued")).then_some(cr)
    })
    .await;
    let status = issued.status.unwrap();
    assert!(!status.certificate.unwrap().0.is_empty());
    let issuer = issuers.get("team").await.unwrap();
    assert_eq!(issuer.status.unwrap().conditions[0].reason, "Verified");
    let other = requests.get("certwrights").await.unwrap();
    assert_eq!(
        other.ready_reason(),
        None,
        "certwright's group is left alone"
    );

    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_without_an_owner_is_not_ready_and_says_why() {
    let (_server, client, controller) = start().await;
    ca_secret(&client, "shop", "shop-ca").await;
    let issuers: Api<TeamIssuer> = Api::namespaced(client.clone(), "shop");
    let spec = TeamIssuerSpec {
        owner: " ".into(),
        issuer: ca_spec("shop-ca"),
    };
    issuers
        .create(&PostParams::default(), &TeamIssuer::new("shop", spec))
        .await
        .unwrap();
    let condition = wait("the issuer's Ready condition", async || {
        let issuer = issuers.get("shop").await.unwrap();
        issuer.status.and_then(|s| s.conditions.into_iter().next())
    })
    .await;
    assert_eq!(condition.reason, "InvalidSpec");
    assert!(
        condition.message.contains("spec.owner: Required value"),
        "{}",
        condition.message
    );
    controller.stop().await;
}

#[test]
fn the_printed_crds_are_the_two_kinds_in_the_teams_group() {
    let yaml = embed_own_kinds::crds_yaml().unwrap();
    assert!(yaml.contains("name: teamissuers.pki.team.example"));
    assert!(yaml.contains("name: teamclusterissuers.pki.team.example"));
    assert!(yaml.contains("scope: Namespaced") && yaml.contains("scope: Cluster"));
}
