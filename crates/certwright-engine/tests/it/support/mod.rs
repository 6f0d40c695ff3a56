//! An engine running against the testkit API server, and builders for the objects the
//! flow tests create.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use certwright_api::{
    Base64Bytes, CertificateRequest, CertificateRequestSpec, Condition, ConditionStatus,
    Conditions, InternalClusterIssuer, InternalIssuer, IssuerRef, IssuerSpec,
};
use certwright_engine::Backoff;
use certwright_engine::metrics::Metrics;
use certwright_engine::{CertwrightIssuers, Engine, EngineConfig};
use certwright_testkit::apiserver::{ApiServer, ApiServerOptions, Method};
use certwright_testkit::fixtures::{CsrBuilder, KeyKind, TestCa};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where cluster issuers read their Secrets in these tests.
pub const CLUSTER_NS: &str = "cert-manager";
/// The OAuth client the EJBCA simulators of these tests accept.
pub const EJBCA_CLIENT_ID: &str = "certwright";
/// Its secret.
pub const EJBCA_CLIENT_SECRET: &str = "s3cret-client-secret";

/// Waits (up to 20 s, checking every 20 ms) until `f` holds; panics naming `what`.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 20 s) until the async check `f` holds; panics naming `what`.
pub async fn eventually_async<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Env {
    pub server: ApiServer,
    pub client: Client,
    pub metrics: Metrics,
    shutdown: CancellationToken,
    engine: Option<JoinHandle<Result<(), certwright_engine::Error>>>,
}

/// Engine settings that keep tests fast: short backoff, a breaker that opens after
/// three failures for 400 ms.
pub fn fast_config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.cluster_resource_namespace = CLUSTER_NS.to_string();
    config.retry = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
    config.max_poll_interval = Duration::from_millis(200);
    config.breaker_failure_threshold = 3;
    config.breaker_open_for = Duration::from_millis(400);
    config.breaker_max_open_for = Duration::from_millis(400);
    config.issuer_health_check_interval = Duration::from_secs(3600);
    config.default_requests_per_second = 1000.0;
    config.default_max_concurrent_requests = 8;
    config
}

impl Env {
    /// A fresh API server with the CRDs installed, and no engine yet.
    pub async fn new() -> Env {
        Env::new_with(ApiServerOptions::new()).await
    }

    /// [`Env::new`] on an API server with these options.
    pub async fn new_with(options: ApiServerOptions) -> Env {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = ApiServer::start_with(options)
            .await
            .expect("API server starts");
        server
            .register_crds_yaml(certwright_testkit::crds::CERT_MANAGER)
            .unwrap();
        for crd in [InternalIssuer::crd(), InternalClusterIssuer::crd()] {
            server
                .register_crd(&serde_json::to_value(crd).unwrap())
                .unwrap();
        }
        let config = kube::Config::new(server.url().parse().unwrap());
        let client = Client::try_from(config).unwrap();
        Env {
            server,
            client,
            metrics: Metrics::new(),
            shutdown: CancellationToken::new(),
            engine: None,
        }
    }

    /// A fresh API server with an engine running on it.
    pub async fn start() -> Env {
        let mut env = Env::new().await;
        env.start_engine(fast_config());
        env
    }

    pub fn start_engine(&mut self, config: EngineConfig) {
        self.shutdown = CancellationToken::new();
        let engine =
            Engine::<CertwrightIssuers>::new(self.client.clone(), config, self.metrics.clone());
        self.engine = Some(tokio::spawn(engine.run(self.shutdown.clone())));
    }

    /// Keeps every list and watch under `lists` failing and drops the watches open now;
    /// returns once the engine's watch has tried again and failed.
    pub async fn take_watch_down(&self, lists: &str) {
        let faults = self.server.faults();
        faults.fail_ratio(Method::GET, lists, 500, 1.0);
        let injected = self.server.stats().injected_faults;
        self.server.drop_watches();
        eventually("the watch to try again and fail", || {
            self.server.stats().injected_faults > injected
        })
        .await;
    }

    /// Lets the watch taken down by [`Env::take_watch_down`] list again, with its first
    /// two pages a second apart.
    pub fn bring_watch_back_in_pages(&self, lists: &str) {
        let faults = self.server.faults();
        faults.clear();
        faults.delay_next(Method::GET, lists, Duration::from_secs(1), 2);
    }

    /// Stops the engine the way SIGTERM does, and waits for it.
    pub async fn stop_engine(&mut self) {
        self.shutdown.cancel();
        if let Some(engine) = self.engine.take() {
            engine.await.unwrap().unwrap();
        }
    }

    /// Stops the engine the way a crash or an eviction does: at once, mid-call,
    /// writing nothing more.
    pub async fn kill_engine(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.abort();
            let _ = engine.await;
        }
        self.shutdown.cancel();
    }

    /// Creates an Opaque Secret holding these string keys, or replaces the one there.
    pub async fn put_secret(&self, ns: &str, name: &str, pairs: &[(&str, &str)]) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        self.put(ns, name, &secret).await;
    }

    /// Creates `secret`, or replaces the one of that name.
    async fn put(&self, ns: &str, name: &str, secret: &Secret) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        match api.get_opt(name).await.unwrap() {
            Some(_) => {
                api.replace(name, &PostParams::default(), secret)
                    .await
                    .unwrap();
            }
            None => {
                api.create(&PostParams::default(), secret).await.unwrap();
            }
        }
    }

    /// An InternalClusterIssuer in front of the AD CS simulator, with NTLM credentials,
    /// once it is Verified; `tweak` adjusts its spec first.
    pub async fn adcs_cluster_issuer(
        &self,
        name: &str,
        sim: &certwright_simulators::adcs_sim::AdcsSimulator,
        tweak: impl FnOnce(&mut IssuerSpec),
    ) {
        use certwright_simulators::adcs_sim::{
            DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_TEMPLATE, DEFAULT_USER,
        };
        let secret = format!("{name}-auth");
        self.put_secret(
            CLUSTER_NS,
            &secret,
            &[
                ("username", DEFAULT_USER),
                ("password", DEFAULT_PASSWORD),
                ("domain", DEFAULT_DOMAIN),
            ],
        )
        .await;
        let mut spec = IssuerSpec {
            adcs: Some(certwright_api::AdcsBackend {
                url: sim.url(),
                auth_secret_name: secret,
                ca_bundle: Some(Base64Bytes::from(sim.tls_ca_pem())),
                template_name: DEFAULT_TEMPLATE.into(),
                timeout: Some("5s".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        tweak(&mut spec);
        self.cluster_issuer(name, spec).await;
        self.wait_cluster_issuer(name, "Verified").await;
    }

    /// An InternalClusterIssuer in front of the EJBCA simulator (OAuth client
    /// credentials), enrolling with `profile`, once it is Verified.
    pub async fn ejbca_cluster_issuer(
        &self,
        name: &str,
        sim: &certwright_simulators::ejbca_sim::EjbcaSimulator,
        profile: &str,
        timeout: &str,
    ) {
        use certwright_simulators::ejbca_sim::{CA_NAME, END_ENTITY_PROFILE};
        let secret = format!("{name}-client");
        self.put_secret(
            CLUSTER_NS,
            &secret,
            &[
                ("tokenUrl", &sim.token_url()),
                ("clientId", EJBCA_CLIENT_ID),
                ("clientSecret", EJBCA_CLIENT_SECRET),
            ],
        )
        .await;
        let spec = IssuerSpec {
            ejbca: Some(certwright_api::EjbcaBackend {
                url: sim.url(),
                auth_secret_name: secret,
                ca_bundle: Some(Base64Bytes::from(sim.tls_ca_pem())),
                certificate_authority_name: CA_NAME.into(),
                certificate_profile_name: profile.into(),
                end_entity_profile_name: END_ENTITY_PROFILE.into(),
                timeout: Some(timeout.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.cluster_issuer(name, spec).await;
        self.wait_cluster_issuer(name, "Verified").await;
    }

    pub fn requests(&self, ns: &str) -> Api<CertificateRequest> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// A `kubernetes.io/tls` Secret holding a fresh root CA; returns the CA.
    pub async fn ca_secret(&self, ns: &str, name: &str) -> TestCa {
        let ca = TestCa::root(KeyKind::EcdsaP256, &format!("{name} root"));
        self.put_ca_secret(ns, name, &ca).await;
        ca
    }

    pub async fn put_ca_secret(&self, ns: &str, name: &str, ca: &TestCa) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
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
            ),
            ..Default::default()
        };
        self.put(ns, name, &secret).await;
    }

    pub async fn cluster_issuer(&self, name: &str, spec: IssuerSpec) {
        let api: Api<InternalClusterIssuer> = Api::all(self.client.clone());
        api.create(
            &PostParams::default(),
            &InternalClusterIssuer::new(name, spec.into()),
        )
        .await
        .unwrap();
    }

    pub async fn namespaced_issuer(&self, ns: &str, name: &str, spec: IssuerSpec) {
        let api: Api<InternalIssuer> = Api::namespaced(self.client.clone(), ns);
        api.create(&PostParams::default(), &InternalIssuer::new(name, spec))
            .await
            .unwrap();
    }

    /// Creates a CertificateRequest for a fresh P-256 CSR naming `issuer`.
    pub async fn request(&self, ns: &str, name: &str, issuer: IssuerRef) -> CertificateRequest {
        self.request_with(ns, name, issuer, |_| {}).await
    }

    pub async fn request_with(
        &self,
        ns: &str,
        name: &str,
        issuer: IssuerRef,
        tweak: impl FnOnce(&mut CertificateRequest),
    ) -> CertificateRequest {
        let csr = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name(&format!("{name}.{ns}.example.test"))
            .dns(&format!("{name}.{ns}.example.test"))
            .build();
        let mut cr = CertificateRequest::new(
            name,
            CertificateRequestSpec {
                request: Base64Bytes::from(csr.csr_pem.as_str()),
                issuer_ref: issuer,
                duration: Some("24h".into()),
                ..Default::default()
            },
        );
        cr.metadata.namespace = Some(ns.into());
        tweak(&mut cr);
        self.requests(ns)
            .create(&PostParams::default(), &cr)
            .await
            .unwrap()
    }

    async fn set_condition(&self, ns: &str, name: &str, condition: Condition) {
        let api = self.requests(ns);
        let mut cr = api.get(name).await.unwrap();
        let mut status = cr.status.take().unwrap_or_default();
        status
            .conditions
            .set_condition(condition, jiff::Timestamp::now());
        let patch = serde_json::json!({"status": {"conditions": status.conditions}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Approves through the store rather than over HTTP, so that faults injected on
    /// status writes hit only the engine's writes.
    pub fn approve_in_store(&self, ns: &str, name: &str) {
        let resource = "certificaterequests.cert-manager.io";
        let mut object = self
            .server
            .get_json(resource, ns, name)
            .expect("request exists");
        let approved = serde_json::json!({
            "type": "Approved", "status": "True", "reason": "policy.cert-manager.io",
            "message": "approved by test", "lastTransitionTime": jiff::Timestamp::now().to_string()
        });
        object["status"] = serde_json::json!({"conditions": [approved]});
        self.server.put_json(resource, object).unwrap();
    }

    /// What cert-manager's approver (or approver-policy) does.
    pub async fn approve(&self, ns: &str, name: &str) {
        self.set_condition(
            ns,
            name,
            Condition::new(
                "Approved",
                ConditionStatus::True,
                "policy.cert-manager.io",
                "approved by test",
            ),
        )
        .await;
    }

    pub async fn deny(&self, ns: &str, name: &str) {
        self.set_condition(
            ns,
            name,
            Condition::new(
                "Denied",
                ConditionStatus::True,
                "policy.cert-manager.io",
                "denied by test",
            ),
        )
        .await;
    }

    /// Waits until the request's Ready condition has `reason` (and returns it).
    pub async fn wait_ready_reason(
        &self,
        ns: &str,
        name: &str,
        reason: &str,
    ) -> CertificateRequest {
        self.wait_request(ns, name, &format!("Ready reason {reason}"), |cr| {
            cr.ready_reason() == Some(reason)
        })
        .await
    }

    pub async fn wait_request(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        f: impl Fn(&CertificateRequest) -> bool,
    ) -> CertificateRequest {
        let api = self.requests(ns);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let cr = api.get(name).await.unwrap();
            if f(&cr) {
                return cr;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{ns}/{name}: timed out waiting for {what}; status: {:#?}",
                    cr.status
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the cluster issuer's Ready condition has `reason`.
    pub async fn wait_cluster_issuer(&self, name: &str, reason: &str) -> InternalClusterIssuer {
        let api: Api<InternalClusterIssuer> = Api::all(self.client.clone());
        wait_issuer(&api, name, reason, |i| i.status.as_ref()).await
    }

    /// Waits until the namespaced issuer's Ready condition has `reason`.
    pub async fn wait_namespaced_issuer(
        &self,
        ns: &str,
        name: &str,
        reason: &str,
    ) -> InternalIssuer {
        let api: Api<InternalIssuer> = Api::namespaced(self.client.clone(), ns);
        wait_issuer(&api, name, reason, |i| i.status.as_ref()).await
    }
}

async fn wait_issuer<K>(
    api: &Api<K>,
    name: &str,
    reason: &str,
    status: impl Fn(&K) -> Option<&certwright_api::IssuerStatus>,
) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let issuer = api.get(name).await.unwrap();
        let ready = status(&issuer).and_then(|s| s.conditions.condition("Ready").cloned());
        if ready.as_ref().is_some_and(|c| c.reason == reason) {
            return issuer;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("issuer {name}: timed out waiting for Ready reason {reason}; got {ready:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn cluster_ref(name: &str) -> IssuerRef {
    IssuerRef {
        name: name.into(),
        kind: "InternalClusterIssuer".into(),
        group: "pki.certwright.io".into(),
    }
}

pub fn namespaced_ref(name: &str) -> IssuerRef {
    IssuerRef {
        name: name.into(),
        kind: "InternalIssuer".into(),
        group: "pki.certwright.io".into(),
    }
}

/// An issuer spec in front of the REST simulator, trusting its TLS certificate.
pub fn rest_spec(sim: &certwright_simulators::rest_sim::RestSimulator) -> IssuerSpec {
    IssuerSpec {
        rest: Some(certwright_api::RestBackend {
            url: sim.url(),
            ca_bundle: Some(Base64Bytes::from(sim.tls_ca_pem())),
            timeout: Some("2s".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn ca_spec(secret: &str) -> IssuerSpec {
    IssuerSpec {
        ca: Some(certwright_api::CaBackend {
            secret_name: secret.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The chain written to the request: (certificate chain, root).
pub fn issued_chain(
    cr: &CertificateRequest,
) -> (
    Vec<certwright_x509::Certificate>,
    Vec<certwright_x509::Certificate>,
) {
    let status = cr.status.as_ref().expect("status");
    let chain = certwright_x509::parse_pem_bundle(
        status.certificate.as_ref().expect("certificate").as_bytes(),
    )
    .unwrap();
    let ca = certwright_x509::parse_pem_bundle(status.ca.as_ref().expect("ca").as_bytes()).unwrap();
    (chain, ca)
}
