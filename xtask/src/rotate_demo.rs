//! `cargo xtask rotate-demo`: one complete rotation of a local CA, with the real
//! controller and webhook against the test API server, on certificates that live seconds:
//! `Distribute`, `Switch`, `Retire` refused while the old CA's certificates live, and
//! `Retire` accepted once they have expired. Each chain is verified with the trust
//! bundle published in its phase.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use certwright_api::{
    Base64Bytes, CaBackend, CaRotation, CertificateRequest, CertificateRequestSpec, Conditions,
    InternalClusterIssuer, IssuerRef, IssuerSpec, RotationPhase,
};
use certwright_testkit::fixtures::{CsrBuilder, KeyKind, TestCa};
use certwright_x509::Certificate;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cluster::{self, Process};
use crate::demo::{Stack, demo_dir, refusal, wait_issuer, wait_request};

const NS: &str = "cert-manager";
/// Lifetime of the certificates the old CA signs: what Retire waits for.
const SHORT: &str = "8s";

pub(crate) fn run(root: &Path) -> Result<()> {
    crate::demo::build()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(rotate(root))
}

fn spec(phase: Option<RotationPhase>) -> IssuerSpec {
    IssuerSpec {
        ca: Some(CaBackend {
            secret_name: "corp-ca-2025".into(),
            bundle_config_map: Some("corp-trust".into()),
            rotation: phase.map(|phase| CaRotation {
                next_secret_name: "corp-ca-2026".into(),
                next_pkcs11: None,
                phase,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn rotate(root: &Path) -> Result<()> {
    let started = Instant::now();
    let dir = demo_dir(root, "rotate-demo")?;
    let mut stack = Stack::start(root, &dir, &["--issuer-health-check-interval", "500ms"]).await?;
    let client = stack.client.clone();
    let controller = &mut stack.controller;

    let old = TestCa::root(KeyKind::EcdsaP256, "Corp Root 2025");
    let new = TestCa::root(KeyKind::EcdsaP384, "Corp Root 2026");
    cluster::create_ca_secret(&client, NS, "corp-ca-2025", &old).await?;
    cluster::create_ca_secret(&client, NS, "corp-ca-2026", &new).await?;
    let issuers: Api<InternalClusterIssuer> = Api::all(client.clone());
    issuers
        .create(
            &PostParams::default(),
            &InternalClusterIssuer::new("corp", spec(None).into()),
        )
        .await
        .context("creating the issuer")?;
    println!(
        "==> InternalClusterIssuer corp: {}",
        wait_issuer(&issuers, "corp", controller).await?
    );
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), "apps");
    let trust = wait_bundle(&client, &[&old], controller).await?;
    issue(&requests, "legacy", SHORT, &trust, controller).await?;

    // 1. Distribute: the old CA signs; both roots are published.
    set_phase(&issuers, RotationPhase::Distribute).await?;
    wait_rotation(&issuers, "Distribute", "True", controller).await?;
    let trust = wait_bundle(&client, &[&old, &new], controller).await?;
    issue(&requests, "distribute", SHORT, &trust, controller).await?;

    // 2. Switch: the new CA signs; both roots stay published.
    set_phase(&issuers, RotationPhase::Switch).await?;
    wait_rotation(&issuers, "Switch", "True", controller).await?;
    let trust = wait_bundle(&client, &[&old, &new], controller).await?;
    issue(&requests, "switch", "1h", &trust, controller).await?;

    // 3. Retire while the old CA's certificates live: the webhook refuses it.
    let issuer = issuers.get("corp").await?;
    let retire_after = issuer
        .status
        .and_then(|s| s.rotation)
        .and_then(|r| r.retire_after)
        .context("status.rotation.retireAfter is not set in Switch")?;
    match set_phase(&issuers, RotationPhase::Retire).await {
        Ok(()) => bail!("the webhook let Retire through while the old CA's certificates live"),
        Err(e) => println!("==> Retire refused:\n    {e}"),
    }

    // 4. Once they have expired, Retire is accepted.
    let wait = retire_after
        .duration_since(jiff::Timestamp::now())
        .unsigned_abs()
        + Duration::from_secs(1);
    println!(
        "==> waiting {:.0}s for the old CA's certificates to expire",
        wait.as_secs_f64()
    );
    tokio::time::sleep(wait).await;
    set_phase(&issuers, RotationPhase::Retire)
        .await
        .context("Retire after the old certificates expired")?;
    wait_rotation(&issuers, "Retire", "True", controller).await?;
    let trust = wait_bundle(&client, &[&new], controller).await?;
    issue(&requests, "retire", "1h", &trust, controller).await?;

    let metrics = cluster::http_get(stack.metrics_port, "/metrics")?;
    println!("==> metrics excerpt:");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("certwright_issuer_ca_rotation_phase"))
    {
        println!("    {line}");
    }
    stack.stop()?;
    println!(
        "==> done in {:.1}s; logs in {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

async fn set_phase(issuers: &Api<InternalClusterIssuer>, phase: RotationPhase) -> Result<()> {
    let patch = json!({"spec": spec(Some(phase))});
    match issuers
        .patch("corp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            println!("==> spec.ca.rotation.phase: {phase}");
            Ok(())
        }
        Err(e) => bail!("{}", refusal(&e)),
    }
}

async fn wait_rotation(
    issuers: &Api<InternalClusterIssuer>,
    reason: &str,
    status: &str,
    controller: &mut Process,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let issuer = issuers.get("corp").await?;
        if let Some(condition) = issuer
            .status
            .as_ref()
            .and_then(|s| s.conditions.condition("CARotation"))
            && condition.reason == reason
            && condition.status.to_string() == status
        {
            println!("    CARotation={status} ({reason}): {}", condition.message);
            return Ok(());
        }
        controller.ensure_running()?;
        if Instant::now() > deadline {
            bail!("no CARotation {reason}; see {}", controller.log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the bundle ConfigMap to hold `roots`, and returns what it holds.
async fn wait_bundle(
    client: &kube::Client,
    roots: &[&TestCa],
    controller: &mut Process,
) -> Result<Vec<Certificate>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let wanted: Vec<&[u8]> = roots.iter().map(|r| r.cert().cert_der.as_slice()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(map) = maps.get_opt("corp-trust").await? {
            let pem = map
                .data
                .unwrap_or_default()
                .remove("ca.crt")
                .unwrap_or_default();
            let certs = certwright_x509::parse_pem_bundle(pem.as_bytes()).unwrap_or_default();
            if certs.iter().map(Certificate::der).collect::<Vec<_>>() == wanted {
                let subjects: Vec<String> = certs.iter().map(|c| c.subject().to_string()).collect();
                println!(
                    "    ConfigMap {NS}/corp-trust ca.crt: {}",
                    subjects.join(", ")
                );
                return Ok(certs);
            }
        }
        controller.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "the bundle ConfigMap did not change; see {}",
                controller.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issues `apps/<name>` for `duration`, approved as cert-manager's approver would, and
/// verifies its chain with `trust`, the bundle published in this phase.
async fn issue(
    requests: &Api<CertificateRequest>,
    name: &str,
    duration: &str,
    trust: &[Certificate],
    controller: &mut Process,
) -> Result<()> {
    let dns = format!("{name}.apps.example.test");
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name(&dns)
        .dns(&dns)
        .build();
    let mut cr = CertificateRequest::new(
        name,
        CertificateRequestSpec {
            request: Base64Bytes::from(csr.csr_pem.as_str()),
            issuer_ref: IssuerRef {
                name: "corp".into(),
                kind: "InternalClusterIssuer".into(),
                group: "pki.certwright.io".into(),
            },
            duration: Some(duration.into()),
            ..Default::default()
        },
    );
    cr.metadata.namespace = Some("apps".into());
    requests.create(&PostParams::default(), &cr).await?;
    let approve = json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "cert-manager.io",
        "message": "Certificate request has been approved by the rotation demo",
        "lastTransitionTime": jiff::Timestamp::now().to_string()
    }]}});
    requests
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&approve))
        .await?;
    let cr = wait_request(requests, name, controller).await?;
    let chain = certwright_x509::parse_pem_bundle(
        cr.status
            .unwrap_or_default()
            .certificate
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let leaf = chain.first().context("empty chain")?;
    let Some(anchor) = trust
        .iter()
        .find(|root| leaf.verify_signed_by(root).is_ok())
    else {
        bail!("apps/{name} does not verify with the published bundle");
    };
    println!(
        "    apps/{name}: signed by {}, valid until {}; verifies with the bundle's {}",
        leaf.issuer(),
        leaf.not_after(),
        anchor.subject()
    );
    Ok(())
}
