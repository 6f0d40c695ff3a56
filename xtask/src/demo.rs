//! `cargo xtask demo`: the real controller and webhook against the testkit API server,
//! on the embedded defaults (a local CA generated on the spot), end to end in well under
//! a minute after the build.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use certwright_api::{
    Base64Bytes, CaBackend, CertificateRequest, CertificateRequestSpec, InternalClusterIssuer,
    IssuerRef, IssuerSpec, RequestConditions,
};
use certwright_testkit::fixtures::{CsrBuilder, KeyKind, TestCa};
use k8s_openapi::ByteString;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cluster::{self, Process};

const NS: &str = "cert-manager";

pub(crate) fn run(root: &Path) -> Result<()> {
    build()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(demo(root))
}

/// Builds the controller, the webhook and the test API server (debug).
pub(crate) fn build() -> Result<()> {
    println!("==> building the controller, the webhook and the test API server");
    crate::cargo(&[
        "build",
        "--quiet",
        "-p",
        "certwright-controller",
        "-p",
        "certwright-webhook",
        "-p",
        "certwright-testkit",
        "--bin",
        "certwright-controller",
        "--bin",
        "certwright-webhook",
        "--bin",
        "certwright-apiserver",
    ])
}

/// The test API server, the webhook (registered with it) and the controller, running
/// as processes from `target/debug`, with their logs in `dir`.
pub(crate) struct Stack {
    pub(crate) api: cluster::ApiServerProcess,
    pub(crate) client: kube::Client,
    pub(crate) webhook: Process,
    pub(crate) controller: Process,
    pub(crate) metrics_port: u16,
}

impl Stack {
    /// Starts the three, the controller with `controller_args` added.
    pub(crate) async fn start(root: &Path, dir: &Path, controller_args: &[&str]) -> Result<Stack> {
        let bin = root.join("target/debug");
        let d = dir;
        let api = cluster::start_apiserver(&bin.join("certwright-apiserver"), root, d)?;
        println!(
            "==> test API server at {} (CRDs: CertificateRequest, InternalIssuer, InternalClusterIssuer, IssuancePolicy)",
            api.url
        );
        let client = cluster::client(&api.url)?;

        // The webhook's serving certificate, as cert-manager would issue it in a cluster.
        let webhook_ca = TestCa::root(KeyKind::EcdsaP256, "certwright demo webhook CA");
        let serving = webhook_ca.issue_leaf(KeyKind::EcdsaP256, "localhost");
        std::fs::write(d.join("tls.crt"), &serving.cert_pem)?;
        std::fs::write(d.join("tls.key"), &serving.key_pem)?;
        let (webhook_port, webhook_health) = (cluster::free_port(), cluster::free_port());
        let kubeconfig = api.kubeconfig.display().to_string();
        let mut webhook = Process::spawn(
            "certwright-webhook",
            &bin.join("certwright-webhook"),
            &[
                "--tls-cert-file".into(),
                d.join("tls.crt").display().to_string(),
                "--tls-private-key-file".into(),
                d.join("tls.key").display().to_string(),
                "--bind-address".into(),
                format!("127.0.0.1:{webhook_port}"),
                "--health-probe-bind-address".into(),
                format!("127.0.0.1:{webhook_health}"),
                "--kubeconfig".into(),
                kubeconfig.clone(),
                "--cluster-resource-namespace".into(),
                NS.into(),
                "--log-format".into(),
                "text".into(),
            ],
            d.join("webhook.log"),
        )?;
        let (metrics_port, health_port) = (cluster::free_port(), cluster::free_port());
        let mut args: Vec<String> = vec![
            "--kubeconfig".into(),
            kubeconfig,
            "--cluster-resource-namespace".into(),
            NS.into(),
            "--metrics-bind-address".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--health-probe-bind-address".into(),
            format!("127.0.0.1:{health_port}"),
            "--leader-election-retry-period".into(),
            "500ms".into(),
            "--log-format".into(),
            "text".into(),
        ];
        args.extend(controller_args.iter().map(|a| a.to_string()));
        let mut controller = Process::spawn(
            "certwright-controller",
            &bin.join("certwright-controller"),
            &args,
            d.join("controller.log"),
        )?;
        cluster::wait_port(webhook_port, &mut webhook, Duration::from_secs(20))?;
        cluster::wait_port(metrics_port, &mut controller, Duration::from_secs(20))?;
        println!(
            "==> controller (leader election on, metrics :{metrics_port}) and webhook (:{webhook_port}) running"
        );
        // The API server calls the webhook for issuer creates and updates, as a cluster
        // does through the chart's ValidatingWebhookConfiguration.
        register_webhook(&client, webhook_port, webhook_ca.cert_pem()).await?;
        Ok(Stack {
            api,
            client,
            webhook,
            controller,
            metrics_port,
        })
    }

    /// Stops the controller (as SIGTERM does) and the rest; fails when the controller
    /// did not stop cleanly.
    pub(crate) fn stop(mut self) -> Result<()> {
        println!("==> shutting down");
        let clean = self.controller.terminate(Duration::from_secs(10))?;
        self.webhook.terminate(Duration::from_secs(10))?;
        drop(self.api);
        if !clean {
            bail!(
                "the controller did not stop cleanly; see {}",
                self.controller.log.display()
            );
        }
        Ok(())
    }
}

/// Makes `target/<name>` afresh, for a demo's logs and files.
pub(crate) fn demo_dir(root: &Path, name: &str) -> Result<std::path::PathBuf> {
    let dir = root.join("target").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn demo(root: &Path) -> Result<()> {
    let started = Instant::now();
    // Logs and files stay in target/demo for a look afterwards.
    let dir = demo_dir(root, "demo")?;
    let d = dir.as_path();
    // The policy approver decides every CertificateRequest, as with the chart's
    // policy.enabled (cert-manager's own approver off).
    let mut stack = Stack::start(root, d, &["--policy-approver"]).await?;
    let client = stack.client.clone();
    let metrics_port = stack.metrics_port;
    let controller = &mut stack.controller;

    // The embedded default: a CA generated here, held in a kubernetes.io/tls Secret.
    let ca = TestCa::root(KeyKind::EcdsaP256, "certwright demo CA");
    cluster::create_ca_secret(&client, NS, "demo-ca", &ca).await?;
    let spec = IssuerSpec {
        ca: Some(CaBackend {
            secret_name: "demo-ca".into(),
            ..Default::default()
        }),
        default_duration: Some("720h".into()),
        ..Default::default()
    };
    let issuer = InternalClusterIssuer::new("demo", spec.clone().into());
    let issuers: Api<InternalClusterIssuer> = Api::all(client.clone());
    issuers
        .create(&PostParams::default(), &issuer)
        .await
        .context("creating the issuer")?;
    println!("==> InternalClusterIssuer demo created (the webhook allowed it)");
    let ready = wait_issuer(&issuers, "demo", controller).await?;
    println!("==> InternalClusterIssuer demo: {ready}");

    // An issuer the webhook refuses: plain http and a template name that would inject
    // attributes (its Secret, which does not exist, is only a warning).
    let broken: InternalClusterIssuer = serde_json::from_value(json!({
        "apiVersion": "pki.certwright.io/v1alpha1",
        "kind": "InternalClusterIssuer",
        "metadata": {"name": "broken"},
        "spec": {"rest": {"url": "http://pki.corp.example/api", "authSecretName": "missing-secret", "templateName": "Web\r\nServer"}}
    }))?;
    match issuers.create(&PostParams::default(), &broken).await {
        Ok(_) => bail!("the webhook let a broken issuer through"),
        Err(e) => println!(
            "==> InternalClusterIssuer broken refused:\n    {}",
            refusal(&e).replace("; spec.", "\n    spec.")
        ),
    }
    // Two backend blocks: the CRD's own CEL rule refuses it before any webhook.
    let mut two = spec.clone();
    two.rest = broken.spec.rest.clone();
    match issuers
        .create(
            &PostParams::default(),
            &InternalClusterIssuer::new("two-backends", two.into()),
        )
        .await
    {
        Ok(_) => bail!("the API server accepted an issuer with two backend blocks"),
        Err(e) => println!(
            "==> InternalClusterIssuer two-backends refused:\n    {}",
            refusal(&e)
        ),
    }

    // The policy that governs the apps namespace; the webhook refuses a broken one.
    crate::demo_policy::create_policies(&client).await?;

    // Certificates for three kinds of key, approved by that policy.
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), "apps");
    let wanted = [
        (
            "web",
            KeyKind::EcdsaP256,
            vec!["web.apps.example.test", "www.example.test"],
        ),
        ("api", KeyKind::Rsa2048, vec!["api.apps.example.test"]),
        ("mesh", KeyKind::Ed25519, vec!["mesh.apps.example.test"]),
    ];
    for (name, kind, dns) in &wanted {
        let mut builder = CsrBuilder::new(*kind).common_name(dns[0]);
        for d in dns {
            builder = builder.dns(d);
        }
        let csr = builder.build();
        let mut cr = CertificateRequest::new(
            name,
            CertificateRequestSpec {
                request: Base64Bytes::from(csr.csr_pem.as_str()),
                issuer_ref: IssuerRef {
                    name: "demo".into(),
                    kind: "InternalClusterIssuer".into(),
                    group: "pki.certwright.io".into(),
                },
                duration: Some("2160h".into()),
                ..Default::default()
            },
        );
        cr.metadata.namespace = Some("apps".into());
        requests.create(&PostParams::default(), &cr).await?;
    }
    println!("==> 3 CertificateRequests created; approved by IssuancePolicy apps and issued:");
    for (name, _, _) in &wanted {
        let cr = wait_request(&requests, name, controller).await?;
        let approved = cr
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Approved"))
            .map(|c| format!("{} ({})", c.message, c.reason))
            .unwrap_or_default();
        let status = cr.status.unwrap_or_default();
        let chain =
            certwright_x509::parse_pem_bundle(status.certificate.unwrap_or_default().as_bytes())?;
        let root_ca = certwright_x509::parse_pem_bundle(status.ca.unwrap_or_default().as_bytes())?;
        let leaf = chain.first().context("empty chain")?;
        println!(
            "    apps/{name}: {} ({})",
            leaf.subject(),
            leaf.public_key().algorithm
        );
        println!("      approval:  {approved}");
        println!("      SANs:      {}", leaf.sans().dns.join(", "));
        println!(
            "      valid:     {} .. {}",
            leaf.not_before(),
            leaf.not_after()
        );
        println!(
            "      issuer:    {}; status.ca: {}",
            leaf.issuer(),
            root_ca[0].subject()
        );
        leaf.verify_signed_by(&root_ca[0])
            .context("the chain does not verify")?;
    }

    // One denied with every violation listed, one approved once its change ticket is.
    crate::demo_policy::denied_and_ticket(&client, controller).await?;

    // A Kubernetes CertificateSigningRequest naming the same issuer's signer, approved
    // as `kubectl certificate approve` does.
    sign_kubernetes_csr(&client, controller).await?;

    let metrics = cluster::http_get(metrics_port, "/metrics")?;
    println!("==> metrics excerpt (http://127.0.0.1:{metrics_port}/metrics):");
    for line in metrics.lines().filter(|l| {
        l.starts_with("certwright_certificate_requests_total")
            || l.starts_with("certwright_issuer_ready")
            || l.starts_with("certwright_backend_calls_total")
            || l.starts_with("certwright_signing_duration_seconds_count")
            || l.starts_with("certwright_policy_decisions_total")
    }) {
        println!("    {line}");
    }

    stack.stop()?;
    println!(
        "==> done in {:.1}s; logs in {}",
        started.elapsed().as_secs_f64(),
        d.display()
    );
    Ok(())
}

/// Creates a CertificateSigningRequest for the `demo` signer, approves it through
/// `/approval`, and prints the certificate certwright writes into its status.
async fn sign_kubernetes_csr(client: &kube::Client, controller: &mut Process) -> Result<()> {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequest, CertificateSigningRequestSpec,
    };
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let key = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("node-1.example.test")
        .dns("node-1.example.test")
        .build();
    let signer = certwright_api::signer_name(true, "", "demo");
    let mut csr = CertificateSigningRequest {
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(key.csr_pem.into_bytes()),
            signer_name: signer.clone(),
            expiration_seconds: Some(24 * 3600),
            usages: Some(vec![
                "digital signature".into(),
                "key encipherment".into(),
                "server auth".into(),
            ]),
            username: Some("system:node:node-1".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    csr.metadata.name = Some("node-1".into());
    csrs.create(&PostParams::default(), &csr).await?;
    let approve = json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "KubectlApprove",
        "message": "This CSR was approved by the demo"
    }]}});
    csrs.patch_approval("node-1", &PatchParams::default(), &Patch::Merge(&approve))
        .await?;
    println!("==> CertificateSigningRequest node-1 ({signer}) created and approved");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pem = loop {
        let csr = csrs.get("node-1").await?;
        if let Some(cert) = csr.status.as_ref().and_then(|s| s.certificate.clone()) {
            break cert.0;
        }
        let failed = csr
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed").cloned());
        if let Some(failed) = failed {
            bail!("node-1 failed: {:?}", failed.message);
        }
        controller.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "node-1 was not signed in time; see {}",
                controller.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let chain = certwright_x509::parse_pem_bundle(&pem)?;
    let leaf = chain.first().context("empty certificate")?;
    println!("    node-1: {}", leaf.subject());
    println!(
        "      valid:     {} .. {}",
        leaf.not_before(),
        leaf.not_after()
    );
    Ok(())
}

/// The API server's message for a refused write.
pub(crate) fn refusal(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

pub(crate) async fn register_webhook(client: &kube::Client, port: u16, ca_pem: &str) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
    };
    let config = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some("certwright".into()),
            ..Default::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: "issuers.pki.certwright.io".into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            timeout_seconds: Some(10),
            client_config: WebhookClientConfig {
                url: Some(format!("https://localhost:{port}/validate")),
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                ..Default::default()
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["pki.certwright.io".into()]),
                api_versions: Some(vec!["v1alpha1".into()]),
                operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                resources: Some(vec![
                    "internalissuers".into(),
                    "internalclusterissuers".into(),
                    "issuancepolicies".into(),
                ]),
                scope: Some("*".into()),
            }]),
            ..Default::default()
        }]),
    };
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .context("registering the ValidatingWebhookConfiguration")?;
    Ok(())
}

pub(crate) async fn wait_issuer(
    api: &Api<InternalClusterIssuer>,
    name: &str,
    controller: &mut Process,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let issuer = api.get(name).await?;
        if let Some(ready) = issuer
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        {
            return Ok(format!(
                "Ready={} ({}): {}",
                ready.status, ready.reason, ready.message
            ));
        }
        controller.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "issuer {name} got no Ready condition; see {}",
                controller.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn wait_request(
    api: &Api<CertificateRequest>,
    name: &str,
    controller: &mut Process,
) -> Result<CertificateRequest> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cr = api.get(name).await?;
        if cr.is_terminal() {
            if !cr.conditions().is_ready() {
                bail!("apps/{name} failed: {:?}", cr.status);
            }
            return Ok(cr);
        }
        controller.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "apps/{name} was not issued in time; see {}",
                controller.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
