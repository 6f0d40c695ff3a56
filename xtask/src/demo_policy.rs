//! The policy part of `cargo xtask demo`: the IssuancePolicy that approves the demo's
//! requests, one the webhook refuses, a request denied with every violation listed, and
//! one approved once the change ticket it names is approved in a simulated ticket
//! system.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use certwright_api::{
    Base64Bytes, CertificateRequest, CertificateRequestSpec, IssuancePolicy, IssuerRef,
};
use certwright_simulators::ticket_sim::TicketSimulator;
use certwright_testkit::fixtures::{CsrBuilder, KeyKind};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde_json::json;

use crate::cluster::Process;
use crate::demo::{refusal, wait_request};

const NS: &str = "cert-manager";

fn demo_issuer() -> IssuerRef {
    IssuerRef {
        name: "demo".into(),
        kind: "InternalClusterIssuer".into(),
        group: "pki.certwright.io".into(),
    }
}

/// The policy of the apps namespace, and a broken one the webhook refuses.
pub(crate) async fn create_policies(client: &kube::Client) -> Result<()> {
    let policies: Api<IssuancePolicy> = Api::all(client.clone());
    let apps: IssuancePolicy = serde_json::from_value(json!({
        "apiVersion": "pki.certwright.io/v1alpha1",
        "kind": "IssuancePolicy",
        "metadata": {"name": "apps"},
        "spec": {
            "allowed": {
                "commonName": {"value": "*.apps.example.test"},
                "dnsNames": {"values": ["*.apps.example.test", "www.example.test"]},
                "usages": ["digital signature", "key encipherment", "server auth"]
            },
            "constraints": {"maxDuration": "2160h", "privateKey": {"minSize": 256}},
            "selector": {
                "issuerRef": {"name": "demo", "kind": "InternalClusterIssuer", "group": "pki.certwright.io"},
                "namespace": {"matchNames": ["apps"]}
            }
        }
    }))?;
    policies
        .create(&PostParams::default(), &apps)
        .await
        .context("creating IssuancePolicy apps")?;
    println!(
        "==> IssuancePolicy apps created: *.apps.example.test, at most 2160h, from apps to demo"
    );
    let broken: IssuancePolicy = serde_json::from_value(json!({
        "apiVersion": "pki.certwright.io/v1alpha1",
        "kind": "IssuancePolicy",
        "metadata": {"name": "broken"},
        "spec": {
            "allowed": {"dnsNames": {"values": [""]}, "usages": ["server auth", "flying"]},
            "constraints": {"minDuration": "720h", "maxDuration": "24h"},
            "selector": {},
            "approval": {"mode": "Ticket", "ticket": {
                "url": "http://tickets.example.test/issue/{ticket}",
                "statusField": "fields.status",
                "approvedValues": ["Approved"]
            }}
        }
    }))?;
    match policies.create(&PostParams::default(), &broken).await {
        Ok(_) => bail!("the webhook let a broken IssuancePolicy through"),
        Err(e) => println!(
            "==> IssuancePolicy broken refused:\n    {}",
            refusal(&e).replace("; spec.", "\n    spec.")
        ),
    }
    Ok(())
}

/// A request the apps policy denies, and one a ticket policy approves once its change
/// ticket is approved.
pub(crate) async fn denied_and_ticket(
    client: &kube::Client,
    controller: &mut Process,
) -> Result<()> {
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), "apps");
    let csr = CsrBuilder::new(KeyKind::Rsa2048)
        .common_name("login.bank.example")
        .dns("login.bank.example")
        .build();
    let mut cr = CertificateRequest::new(
        "overreach",
        CertificateRequestSpec {
            request: Base64Bytes::from(csr.csr_pem.as_str()),
            issuer_ref: demo_issuer(),
            duration: Some("8760h".into()),
            is_ca: true,
            ..Default::default()
        },
    );
    cr.metadata.namespace = Some("apps".into());
    requests.create(&PostParams::default(), &cr).await?;
    let denied = wait_condition(&requests, "overreach", "Denied", controller).await?;
    println!("==> apps/overreach denied by policy:");
    for violation in denied
        .trim_start_matches("Denied by IssuancePolicy: ")
        .split("; ")
    {
        println!("    {violation}");
    }

    // Approval by change ticket, against a simulated Jira.
    let tickets = TicketSimulator::start()
        .await
        .context("starting the ticket simulator")?;
    tickets.set_status("SEC-4521", "In Review");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("jira-api-token".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(tickets.token().as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await?;
    let policy: IssuancePolicy = serde_json::from_value(json!({
        "apiVersion": "pki.certwright.io/v1alpha1",
        "kind": "IssuancePolicy",
        "metadata": {"name": "change-controlled"},
        "spec": {
            "allowed": {
                "commonName": {"value": "*.changes.example.test"},
                "dnsNames": {"values": ["*.changes.example.test"]}
            },
            "constraints": {"maxDuration": "720h"},
            "selector": {"namespace": {"matchNames": ["changes"]}},
            "approval": {"mode": "Ticket", "ticket": {
                "url": format!("{}/rest/api/2/issue/{{ticket}}", tickets.url()),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(tickets.ca_pem()),
                "idPattern": "SEC-*",
                "credentialsSecretName": "jira-api-token",
                "statusField": "/fields/status/name",
                "approvedValues": ["Approved"],
                "rejectedValues": ["Rejected"],
                "recheckInterval": "1s"
            }}
        }
    }))?;
    Api::<IssuancePolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .context("creating IssuancePolicy change-controlled")?;
    println!(
        "==> IssuancePolicy change-controlled: namespace changes, approved by a change ticket in {}",
        tickets.url()
    );
    let changes: Api<CertificateRequest> = Api::namespaced(client.clone(), "changes");
    let csr = CsrBuilder::new(KeyKind::EcdsaP256)
        .common_name("db.changes.example.test")
        .dns("db.changes.example.test")
        .build();
    let mut cr = CertificateRequest::new(
        "db",
        CertificateRequestSpec {
            request: Base64Bytes::from(csr.csr_pem.as_str()),
            issuer_ref: demo_issuer(),
            duration: Some("720h".into()),
            ..Default::default()
        },
    );
    cr.metadata.namespace = Some("changes".into());
    cr.metadata.annotations = Some(BTreeMap::from([(
        "pki.certwright.io/change-ticket".to_string(),
        "SEC-4521".to_string(),
    )]));
    changes.create(&PostParams::default(), &cr).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tickets.lookups_of("SEC-4521") == 0 {
        controller.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "the ticket was never looked up; see {}",
                controller.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = changes.get("db").await?;
    if waiting.is_approved() || waiting.is_denied() {
        bail!(
            "changes/db was decided while its ticket is in review: {:?}",
            waiting.status
        );
    }
    println!("==> changes/db waits: ticket SEC-4521 is \"In Review\"");
    tickets.set_status("SEC-4521", "Approved");
    println!("==> SEC-4521 approved in the ticket system");
    let approved = wait_condition(&changes, "db", "Approved", controller).await?;
    println!("    changes/db: {approved}");
    let issued = wait_request(&changes, "db", controller).await?;
    let chain = certwright_x509::parse_pem_bundle(
        issued
            .status
            .unwrap_or_default()
            .certificate
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let leaf = chain.first().context("empty chain")?;
    println!("    changes/db issued: {}", leaf.subject());
    Ok(())
}

/// Waits for a True condition of `kind` and returns its message.
async fn wait_condition(
    api: &Api<CertificateRequest>,
    name: &str,
    kind: &str,
    controller: &mut Process,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cr = api.get(name).await?;
        if let Some(c) = cr
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind && c.is_true()))
        {
            return Ok(c.message.clone());
        }
        controller.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "{name} got no {kind} condition; see {}",
                controller.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
