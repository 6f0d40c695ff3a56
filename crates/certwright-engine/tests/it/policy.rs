//! The policy approver on the test API server: the article's policies, layered policies,
//! `any` with and without RBAC `use`, default-deny, manual and ticket approval, policy
//! edits, requests to cert-manager's own issuers, and the namespace summaries.
//!
//! One file because every test here drives the same approver through the same helpers
//! (policies, namespaces, requests, Events, the ticket simulator), each test reading as
//! one scenario a user sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use certwright_api::{CertificateRequest, IssuancePolicy, IssuancePolicySpec, IssuerRef, KeyUsage};
use certwright_engine::{Evaluation, PolicyConfig, Unmatched};
use certwright_simulators::ticket_sim::TicketSimulator;
use certwright_testkit::apiserver::AccessRule;
use certwright_testkit::fixtures::{CsrBuilder, KeyKind};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt as _};
use serde_json::json;

use crate::support::*;

const PAYMENTS_POLICY: &str =
    include_str!("../../../../examples/policies/payments-namespace-policy.yaml");
const EXTERNAL_POLICY: &str =
    include_str!("../../../../examples/policies/external-certificates-require-approval.yaml");

async fn env_with(policy: PolicyConfig) -> Env {
    let mut env = Env::new().await;
    env.server
        .register_crd(&serde_json::to_value(IssuancePolicy::crd()).unwrap())
        .unwrap();
    env.start_engine({
        let mut config = fast_config();
        config.policy = Some(policy);
        config
    });
    env
}

fn parse_policy(yaml: &str) -> IssuancePolicy {
    let doc = serde_yaml_ng::Deserializer::from_str(yaml).next().unwrap();
    serde::Deserialize::deserialize(doc).unwrap()
}

async fn put_policy(env: &Env, policy: &IssuancePolicy) {
    let api: Api<IssuancePolicy> = Api::all(env.client.clone());
    let name = policy.metadata.name.clone().unwrap();
    match api.get_opt(&name).await.unwrap() {
        Some(existing) => {
            let mut updated = policy.clone();
            updated.metadata.resource_version = existing.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &updated)
                .await
                .unwrap();
        }
        None => {
            api.create(&PostParams::default(), policy).await.unwrap();
        }
    }
}

async fn policy(env: &Env, name: &str, yaml: &str) {
    let spec: IssuancePolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
    put_policy(env, &IssuancePolicy::new(name, spec)).await;
}

async fn namespace(env: &Env, name: &str, labels: &[(&str, &str)]) {
    let api: Api<Namespace> = Api::all(env.client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns).await.unwrap();
}

fn cert_manager_cluster_issuer(name: &str) -> IssuerRef {
    IssuerRef {
        name: name.to_string(),
        kind: "ClusterIssuer".to_string(),
        group: "cert-manager.io".to_string(),
    }
}

/// A request for `names` (the first is the common name when `cn`), with `key`.
#[allow(clippy::too_many_arguments)]
async fn request_for(
    env: &Env,
    ns: &str,
    name: &str,
    issuer: IssuerRef,
    key: KeyKind,
    cn: bool,
    names: &[&str],
    duration: &str,
    tweak: impl FnOnce(&mut CertificateRequest),
) -> CertificateRequest {
    let mut builder = CsrBuilder::new(key);
    if cn {
        builder = builder.common_name(names[0]);
    }
    for dns in names {
        builder = builder.dns(dns);
    }
    let csr = builder.build();
    env.request_with(ns, name, issuer, |cr| {
        cr.spec.request = csr.csr_pem.as_str().into();
        cr.spec.duration = Some(duration.to_string());
        cr.spec.username = Some("dev@acme.corp".to_string());
        cr.spec.groups = vec!["team-payments".to_string()];
        tweak(cr);
    })
    .await
}

async fn wait_decided(env: &Env, ns: &str, name: &str) -> CertificateRequest {
    env.wait_request(ns, name, "a policy decision", |cr| {
        cr.is_approved() || cr.is_denied()
    })
    .await
}

fn condition_message(cr: &CertificateRequest, kind: &str) -> String {
    cr.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

async fn events_for(env: &Env, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), ns);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

const SERVER_USAGES: [KeyUsage; 3] = [
    KeyUsage::DigitalSignature,
    KeyUsage::KeyEncipherment,
    KeyUsage::ServerAuth,
];

#[tokio::test]
async fn the_articles_payments_policy_governs_a_cert_manager_cluster_issuer() {
    let env = env_with(PolicyConfig::new()).await;
    put_policy(&env, &parse_policy(PAYMENTS_POLICY)).await;
    let issuer = cert_manager_cluster_issuer("internal-pki-issuer");
    request_for(
        &env,
        "payments",
        "good",
        issuer.clone(),
        KeyKind::EcdsaP256,
        true,
        &["api.payments.internal.acme.corp", "api.payments.acme.corp"],
        "720h",
        |cr| cr.spec.usages = SERVER_USAGES.to_vec(),
    )
    .await;
    request_for(
        &env,
        "payments",
        "bad",
        issuer.clone(),
        KeyKind::Rsa2048,
        true,
        &["api.payments.internal.acme.corp", "x.other.corp"],
        "2400h",
        |cr| cr.spec.usages = SERVER_USAGES.to_vec(),
    )
    .await;

    let good = wait_decided(&env, "payments", "good").await;
    assert!(good.is_approved(), "{:?}", good.status);
    assert_eq!(
        condition_message(&good, "Approved"),
        "Approved by IssuancePolicies payments-namespace-policy"
    );
    let bad = wait_decided(&env, "payments", "bad").await;
    assert!(bad.is_denied());
    let message = condition_message(&bad, "Denied");
    for violation in [
        "payments-namespace-policy: dnsNames[1] \"x.other.corp\" not allowed",
        "payments-namespace-policy: spec.duration 2400h exceeds maxDuration 2160h",
        "payments-namespace-policy: privateKey RSA 2048 is not ECDSA",
    ] {
        assert!(
            message.contains(violation),
            "{violation} missing from {message}"
        );
    }
    let events = events_for(&env, "payments", "bad").await;
    assert!(
        events.iter().any(|(r, _)| r == "PolicyDenied"),
        "{events:?}"
    );
    let metrics = env.metrics.encode().unwrap();
    assert!(
        metrics.contains(
            "certwright_policy_decisions_total{namespace=\"payments\",decision=\"denied\",policy=\"payments-namespace-policy\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_articles_external_policy_leaves_allowed_requests_for_a_person() {
    let mut env = Env::new().await;
    env.server
        .register_crd(&serde_json::to_value(IssuancePolicy::crd()).unwrap())
        .unwrap();
    // A certwright issuer stands in for the article's public-issuer, so that the
    // request, once a person approves it, is signed.
    let mut external = parse_policy(EXTERNAL_POLICY);
    if let Some(issuer_ref) = external.spec.selector.issuer_ref.as_mut() {
        issuer_ref.kind = Some("InternalClusterIssuer".to_string());
    }
    env.start_engine({
        let mut config = fast_config();
        config.policy = Some(PolicyConfig::new());
        config
    });
    put_policy(&env, &external).await;
    env.ca_secret(CLUSTER_NS, "public-ca").await;
    env.cluster_issuer("public-issuer", ca_spec("public-ca"))
        .await;
    env.wait_cluster_issuer("public-issuer", "Verified").await;

    request_for(
        &env,
        "production",
        "api",
        cluster_ref("public-issuer"),
        KeyKind::Rsa4096,
        false,
        &["api.acme.corp"],
        "720h",
        |_| {},
    )
    .await;
    request_for(
        &env,
        "production",
        "weak",
        cluster_ref("public-issuer"),
        KeyKind::Rsa2048,
        false,
        &["api.acme.corp"],
        "720h",
        |_| {},
    )
    .await;
    // A request that violates the policy is still denied at once.
    let weak = wait_decided(&env, "production", "weak").await;
    assert!(weak.is_denied());
    assert!(
        condition_message(&weak, "Denied")
            .contains("privateKey RSA 2048 is smaller than minSize 4096")
    );
    // The allowed one waits, with an Event saying who approves and how, and is counted.
    eventually_async("the ManualApprovalRequired event", || async {
        events_for(&env, "production", "api")
            .await
            .iter()
            .any(|(r, note)| {
                r == "ManualApprovalRequired"
                    && note.contains("the security team")
                    && note.contains("kubectl cert-manager approve -n production api")
            })
    })
    .await;
    eventually("the awaiting gauge", || {
        env.metrics
            .encode()
            .unwrap()
            .contains("certwright_policy_awaiting_requests{approval=\"manual\"} 1")
    })
    .await;
    let api = env.requests("production").get("api").await.unwrap();
    assert!(!api.is_approved() && !api.is_denied());

    // A person approves (the status update `kubectl cert-manager approve` makes): signed.
    env.approve("production", "api").await;
    let issued = env.wait_ready_reason("production", "api", "Issued").await;
    assert!(issued.status.unwrap().certificate.is_some());
    eventually("the gauge to drop", || {
        env.metrics
            .encode()
            .unwrap()
            .contains("certwright_policy_awaiting_requests{approval=\"manual\"} 0")
    })
    .await;
    env.stop_engine().await;
}

const BASE: &str = r#"
allowed:
  commonName: { value: "*" }
  dnsNames: { values: ["*"] }
  usages: ["digital signature", "key encipherment", "server auth"]
constraints: { maxDuration: 2160h, privateKey: { minSize: 256 } }
selector: { namespace: { matchLabels: { acme.corp/tier: prod } } }
"#;

const TEAM: &str = r#"
allowed:
  commonName: { value: "*.payments.corp" }
  dnsNames: { values: ["*.payments.corp"] }
  usages: ["digital signature", "key encipherment", "server auth"]
selector: { issuerRef: { name: corp }, namespace: { matchNames: ["payments"] } }
"#;

#[tokio::test]
async fn a_base_and_a_team_policy_must_both_allow() {
    let env = env_with(PolicyConfig::new()).await;
    namespace(&env, "payments", &[("acme.corp/tier", "prod")]).await;
    policy(&env, "base", BASE).await;
    policy(&env, "team-payments", TEAM).await;
    let corp = cert_manager_cluster_issuer("corp");
    request_for(
        &env,
        "payments",
        "ok",
        corp.clone(),
        KeyKind::EcdsaP256,
        true,
        &["api.payments.corp"],
        "720h",
        |_| {},
    )
    .await;
    request_for(
        &env,
        "payments",
        "both-wrong",
        corp.clone(),
        KeyKind::EcdsaP256,
        true,
        &["api.payments.corp", "x.other.corp"],
        "2400h",
        |_| {},
    )
    .await;

    let ok = wait_decided(&env, "payments", "ok").await;
    assert!(ok.is_approved());
    assert_eq!(
        condition_message(&ok, "Approved"),
        "Approved by IssuancePolicies base, team-payments"
    );
    let denied = wait_decided(&env, "payments", "both-wrong").await;
    assert!(denied.is_denied());
    // Every violation of every policy, in one message: fixed in one try.
    assert_eq!(
        condition_message(&denied, "Denied"),
        "Denied by IssuancePolicy: base: spec.duration 2400h exceeds maxDuration 2160h; team-payments: dnsNames[1] \"x.other.corp\" not allowed"
    );
}

#[tokio::test]
async fn any_needs_one_allowing_policy_the_requester_may_use() {
    let env = env_with(PolicyConfig::new().evaluation(Evaluation::Any)).await;
    namespace(&env, "payments", &[("acme.corp/tier", "prod")]).await;
    policy(&env, "base", BASE).await;
    policy(&env, "team-payments", TEAM).await;
    let corp = cert_manager_cluster_issuer("corp");
    // No RBAC `use` yet: no policy counts, so the request is denied for want of one.
    request_for(
        &env,
        "payments",
        "no-rbac",
        corp.clone(),
        KeyKind::EcdsaP256,
        true,
        &["x.other.corp"],
        "720h",
        |_| {},
    )
    .await;
    let denied = wait_decided(&env, "payments", "no-rbac").await;
    assert!(denied.is_denied());
    assert!(
        condition_message(&denied, "Denied")
            .contains("No IssuancePolicy that the requester may use covers"),
        "{:?}",
        denied.status
    );

    // The team may use the base policy only: it alone allows x.other.corp.
    env.server.authorizer().allow(AccessRule {
        group: Some("team-payments".to_string()),
        verb: "use".to_string(),
        api_group: "pki.certwright.io".to_string(),
        resource: "issuancepolicies".to_string(),
        name: Some("base".to_string()),
        ..Default::default()
    });
    request_for(
        &env,
        "payments",
        "with-rbac",
        corp.clone(),
        KeyKind::EcdsaP256,
        true,
        &["x.other.corp"],
        "720h",
        |_| {},
    )
    .await;
    let approved = wait_decided(&env, "payments", "with-rbac").await;
    assert!(approved.is_approved(), "{:?}", approved.status);
    assert_eq!(
        condition_message(&approved, "Approved"),
        "Approved by IssuancePolicies base"
    );
    assert!(env.server.authorizer().reviews() >= 2);
}

#[tokio::test]
async fn no_policy_means_denied_or_left_alone() {
    let env = env_with(PolicyConfig::new()).await;
    let corp = cert_manager_cluster_issuer("corp");
    env.request("payments", "uncovered", corp.clone()).await;
    let denied = wait_decided(&env, "payments", "uncovered").await;
    assert!(denied.is_denied());
    assert_eq!(
        condition_message(&denied, "Denied"),
        "No IssuancePolicy covers namespace payments and issuer ClusterIssuer corp (cert-manager.io): certwright denies requests no policy allows"
    );
    // Default-deny leaves nothing out of the approver's store, so it never lists.
    assert!(
        !env.metrics
            .encode()
            .unwrap()
            .contains("certwright_policy_lists_total{")
    );

    let env = env_with(PolicyConfig::new().unmatched(Unmatched::Ignore)).await;
    policy(&env, "team", TEAM).await;
    env.request("other", "uncovered", corp.clone()).await;
    // A covered request after it is decided; by then the uncovered one was looked at.
    request_for(
        &env,
        "payments",
        "covered",
        corp.clone(),
        KeyKind::EcdsaP256,
        true,
        &["a.payments.corp"],
        "720h",
        |_| {},
    )
    .await;
    assert!(
        wait_decided(&env, "payments", "covered")
            .await
            .is_approved()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = env.requests("other").get("uncovered").await.unwrap();
    assert!(
        !left.is_approved() && !left.is_denied(),
        "{:?}",
        left.status
    );

    // The approver does not hold requests left to others; a policy that comes to
    // select one finds it by listing, and decides it.
    let metric = |line: &str| env.metrics.encode().unwrap().contains(line);
    eventually("nothing held", || {
        metric("certwright_policy_held_requests 0")
    })
    .await;
    assert!(!metric("certwright_policy_lists_total{"));
    policy(
        &env,
        "other",
        &ANY_NAME.replace("SELECTOR", "matchNames: [other]"),
    )
    .await;
    assert!(wait_decided(&env, "other", "uncovered").await.is_approved());
    assert!(metric("certwright_policy_lists_total{result=\"ok\"}"));
    // So does a label put on the namespace later, for a policy that selects by it.
    namespace(&env, "labelled", &[]).await;
    policy(
        &env,
        "labelled",
        &ANY_NAME.replace("SELECTOR", "matchLabels: { governed: \"yes\" }"),
    )
    .await;
    env.request("labelled", "later", corp.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = env.requests("labelled").get("later").await.unwrap();
    assert!(
        !left.is_approved() && !left.is_denied(),
        "{:?}",
        left.status
    );
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .patch(
            "labelled",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"governed": "yes"}}})),
        )
        .await
        .unwrap();
    assert!(wait_decided(&env, "labelled", "later").await.is_approved());

    // A held request (waiting for a person) whose policy goes is let go, undecided.
    namespace(&env, "waiting", &[]).await;
    policy(
        &env,
        "waiting",
        &format!(
            "{}approval: {{ mode: Manual }}\n",
            ANY_NAME.replace("SELECTOR", "matchNames: [waiting]")
        ),
    )
    .await;
    env.request("waiting", "person", corp.clone()).await;
    eventually("one held", || metric("certwright_policy_held_requests 1")).await;
    Api::<IssuancePolicy>::all(env.client.clone())
        .delete("waiting", &DeleteParams::default())
        .await
        .unwrap();
    eventually("nothing held", || {
        metric("certwright_policy_held_requests 0")
    })
    .await;
    let left = env.requests("waiting").get("person").await.unwrap();
    assert!(
        !left.is_approved() && !left.is_denied(),
        "{:?}",
        left.status
    );
}

/// Allows any name with the default usages, in the namespaces `SELECTOR` selects.
const ANY_NAME: &str = r#"
allowed:
  commonName: { value: "*" }
  dnsNames: { values: ["*"] }
  usages: ["digital signature", "key encipherment"]
selector: { namespace: { SELECTOR } }
"#;

const TICKET: &str = r#"
allowed:
  commonName: { value: "*" }
  dnsNames: { values: ["*"] }
  usages: ["digital signature", "key encipherment", "server auth"]
selector: { namespace: { matchNames: ["changes"] } }
approval:
  mode: Ticket
  ticket:
    url: URL/rest/api/2/issue/{ticket}
    caBundle: CA
    idPattern: SEC-*
    credentialsSecretName: jira-token
    statusField: /fields/status/name
    approvedValues: [Approved]
    rejectedValues: [Rejected]
    recheckInterval: 1s
"#;

#[tokio::test]
async fn change_tickets_approve_deny_and_are_waited_for() {
    let env = env_with(PolicyConfig::new()).await;
    let sim = TicketSimulator::start().await.unwrap();
    env.put_secret(CLUSTER_NS, "jira-token", &[("token", sim.token())])
        .await;
    let yaml = TICKET.replace("URL", &sim.url()).replace(
        "CA",
        &base64::engine::general_purpose::STANDARD.encode(sim.ca_pem()),
    );
    policy(&env, "change-control", &yaml).await;
    sim.set_status("SEC-1", "Approved");
    sim.set_status("SEC-2", "Rejected");
    sim.set_status("SEC-3", "In Review");
    let corp = cert_manager_cluster_issuer("corp");
    for (name, ticket) in [
        ("approved", "SEC-1"),
        ("rejected", "SEC-2"),
        ("open", "SEC-3"),
    ] {
        env.request_with("changes", name, corp.clone(), |cr| {
            cr.metadata.annotations = Some(BTreeMap::from([(
                "pki.certwright.io/change-ticket".to_string(),
                ticket.to_string(),
            )]));
        })
        .await;
    }
    env.request("changes", "no-ticket", corp.clone()).await;

    let approved = wait_decided(&env, "changes", "approved").await;
    assert!(approved.is_approved());
    let message = condition_message(&approved, "Approved");
    assert!(
        message.starts_with("Approved by change ticket SEC-1 (\"Approved\" in the ticket system of IssuancePolicy change-control)"),
        "{message}"
    );
    let rejected = wait_decided(&env, "changes", "rejected").await;
    assert!(rejected.is_denied());
    assert!(condition_message(&rejected, "Denied").contains("change ticket SEC-2"));

    eventually_async("the TicketPending event", || async {
        events_for(&env, "changes", "open")
            .await
            .iter()
            .any(|(r, note)| r == "TicketPending" && note.contains("SEC-3"))
    })
    .await;
    eventually_async("the TicketRequired event", || async {
        events_for(&env, "changes", "no-ticket")
            .await
            .iter()
            .any(|(r, note)| {
                r == "TicketRequired" && note.contains("pki.certwright.io/change-ticket")
            })
    })
    .await;
    assert!(
        !env.requests("changes")
            .get("open")
            .await
            .unwrap()
            .is_approved()
    );
    eventually("the ticket gauge", || {
        env.metrics
            .encode()
            .unwrap()
            .contains("certwright_policy_awaiting_requests{approval=\"ticket\"} 2")
    })
    .await;

    // The change board approves: the next look (with backoff) approves the request.
    sim.set_status("SEC-3", "Approved");
    let open = wait_decided(&env, "changes", "open").await;
    assert!(open.is_approved());
    assert!(condition_message(&open, "Approved").contains("change ticket SEC-3"));
    assert!(sim.lookups_of("SEC-3") >= 2);
    assert_eq!(sim.unauthenticated(), 0);
}

#[tokio::test]
async fn a_ticket_system_that_fails_is_asked_again_and_not_trusted() {
    let env = env_with(PolicyConfig::new()).await;
    let sim = TicketSimulator::start().await.unwrap();
    env.put_secret(CLUSTER_NS, "jira-token", &[("token", "wrong-token")])
        .await;
    let yaml = TICKET.replace("URL", &sim.url()).replace(
        "CA",
        &base64::engine::general_purpose::STANDARD.encode(sim.ca_pem()),
    );
    policy(&env, "change-control", &yaml).await;
    sim.set_status("SEC-9", "Approved");
    env.request_with("changes", "r", cert_manager_cluster_issuer("corp"), |cr| {
        cr.metadata.annotations = Some(BTreeMap::from([(
            "pki.certwright.io/change-ticket".to_string(),
            "SEC-9".to_string(),
        )]));
    })
    .await;
    eventually_async("the TicketCheckFailed event", || async {
        events_for(&env, "changes", "r")
            .await
            .iter()
            .any(|(r, note)| r == "TicketCheckFailed" && note.contains("refused the credentials"))
    })
    .await;
    assert!(sim.unauthenticated() >= 1);
    // Right credentials: the next look approves.
    env.put_secret(CLUSTER_NS, "jira-token", &[("token", sim.token())])
        .await;
    assert!(wait_decided(&env, "changes", "r").await.is_approved());
}

#[tokio::test]
async fn a_policy_edit_looks_again_at_undecided_requests_only() {
    let env = env_with(PolicyConfig::new()).await;
    let manual = r#"
allowed:
  commonName: { value: "*" }
  dnsNames: { values: ["*.a.corp"] }
  usages: ["digital signature", "key encipherment", "server auth"]
selector: { namespace: { matchNames: ["team"] } }
approval: { mode: Manual }
"#;
    policy(&env, "team", manual).await;
    let corp = cert_manager_cluster_issuer("corp");
    request_for(
        &env,
        "team",
        "held",
        corp.clone(),
        KeyKind::EcdsaP256,
        true,
        &["x.a.corp"],
        "720h",
        |_| {},
    )
    .await;
    request_for(
        &env,
        "team",
        "denied",
        corp.clone(),
        KeyKind::EcdsaP256,
        true,
        &["x.b.corp"],
        "720h",
        |_| {},
    )
    .await;
    let denied = wait_decided(&env, "team", "denied").await;
    assert!(denied.is_denied());
    eventually_async("the held request to wait", || async {
        events_for(&env, "team", "held")
            .await
            .iter()
            .any(|(r, _)| r == "ManualApprovalRequired")
    })
    .await;

    // Automatic now, and b.corp allowed too.
    policy(
        &env,
        "team",
        &manual
            .replace("approval: { mode: Manual }", "")
            .replace("[\"*.a.corp\"]", "[\"*.a.corp\", \"*.b.corp\"]"),
    )
    .await;
    let held = wait_decided(&env, "team", "held").await;
    assert!(held.is_approved());
    // The denied request stays denied: a decision is never revisited.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = env.requests("team").get("denied").await.unwrap();
    assert!(still.is_denied() && !still.is_approved());
    assert_eq!(
        still.status.unwrap().conditions,
        denied.status.unwrap().conditions
    );
}

#[tokio::test]
async fn a_persons_decision_is_never_overwritten() {
    // A person denies a request that waits for manual approval; a policy edit that
    // would now approve it automatically leaves the person's decision alone.
    let env = env_with(PolicyConfig::new()).await;
    let manual = "selector: { namespace: {} }\nallowed: { commonName: { value: '*' }, dnsNames: { values: ['*'] } }\napproval: { mode: Manual }";
    policy(&env, "team", manual).await;
    let corp = cert_manager_cluster_issuer("corp");
    env.request("team", "r", corp.clone()).await;
    eventually_async("the request to wait", || async {
        events_for(&env, "team", "r")
            .await
            .iter()
            .any(|(r, _)| r == "ManualApprovalRequired")
    })
    .await;
    env.deny("team", "r").await;
    policy(
        &env,
        "team",
        &manual.replace("\napproval: { mode: Manual }", ""),
    )
    .await;
    request_for(
        &env,
        "team",
        "marker",
        corp,
        KeyKind::EcdsaP256,
        true,
        &["m.corp"],
        "720h",
        |_| {},
    )
    .await;
    assert!(wait_decided(&env, "team", "marker").await.is_approved());
    let r = env.requests("team").get("r").await.unwrap();
    assert!(r.is_denied(), "{:?}", r.status);
    assert!(!r.is_approved());
}

#[tokio::test]
async fn summaries_are_published_where_policies_apply() {
    let env = env_with(PolicyConfig::new().publish_summaries(true)).await;
    namespace(&env, "payments", &[]).await;
    namespace(&env, "other", &[]).await;
    // A ConfigMap of the same name that is not certwright's is left alone.
    let foreign: Api<ConfigMap> = Api::namespaced(env.client.clone(), "other");
    foreign
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("certwright-issuance-policies".to_string()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("x".to_string(), "mine".to_string())])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    put_policy(&env, &parse_policy(PAYMENTS_POLICY)).await;
    let api: Api<ConfigMap> = Api::namespaced(env.client.clone(), "payments");
    eventually_async("the payments summary", || async {
        api.get_opt("certwright-issuance-policies")
            .await
            .unwrap()
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("policies.txt").cloned())
            .is_some_and(|text| {
                text.contains("payments-namespace-policy")
                    && text
                        .contains("dnsNames: *.payments.internal.acme.corp, *.payments.acme.corp")
                    && text.contains("duration: 168h to 2160h")
                    && text.contains("privateKey: ECDSA, at least 256 bits")
            })
    })
    .await;
    // Selecting "other" too would not touch the foreign ConfigMap.
    let mut wider = parse_policy(PAYMENTS_POLICY);
    wider.spec.selector.namespace.as_mut().unwrap().match_names =
        Some(vec!["payments".to_string(), "other".to_string()]);
    put_policy(&env, &wider).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let kept = foreign.get("certwright-issuance-policies").await.unwrap();
    assert_eq!(
        kept.data.unwrap().get("x").map(String::as_str),
        Some("mine")
    );
    // No policy any more: the summary goes.
    let policies: Api<IssuancePolicy> = Api::all(env.client.clone());
    policies
        .delete("payments-namespace-policy", &DeleteParams::default())
        .await
        .unwrap();
    eventually_async("the summary to go", || async {
        api.get_opt("certwright-issuance-policies")
            .await
            .unwrap()
            .is_none()
    })
    .await;
}

#[tokio::test]
async fn a_request_without_duration_is_judged_by_its_issuers_default() {
    let env = env_with(PolicyConfig::new()).await;
    env.ca_secret(CLUSTER_NS, "year-ca").await;
    let mut spec = ca_spec("year-ca");
    spec.default_duration = Some("8760h".to_string());
    env.cluster_issuer("yearly", spec).await;
    env.wait_cluster_issuer("yearly", "Verified").await;
    policy(
        &env,
        "at-most-90-days",
        "selector: { namespace: {} }\nallowed: { commonName: { value: '*' }, dnsNames: { values: ['*'] } }\nconstraints: { maxDuration: 2160h }",
    )
    .await;
    env.request_with("team", "no-duration", cluster_ref("yearly"), |cr| {
        cr.spec.duration = None;
    })
    .await;
    let denied = wait_decided(&env, "team", "no-duration").await;
    assert!(denied.is_denied(), "{:?}", denied.status);
    assert!(
        condition_message(&denied, "Denied")
            .contains("spec.duration unset (the issuer's default 8760h) exceeds maxDuration 2160h"),
        "{:?}",
        denied.status
    );
}

#[tokio::test]
async fn only_signers_the_controller_may_approve_are_decided() {
    let env =
        env_with(PolicyConfig::new().approve_signers(["clusterissuers.cert-manager.io/*"])).await;
    // Nothing applies: a signer the controller may approve is denied, another is not
    // touched (cert-manager's webhook would refuse the decision anyway).
    env.request(
        "team",
        "elsewhere",
        IssuerRef {
            name: "vault".to_string(),
            kind: "Issuer".to_string(),
            group: "cert-manager.io".to_string(),
        },
    )
    .await;
    env.request("team", "ours", cert_manager_cluster_issuer("corp"))
        .await;
    assert!(wait_decided(&env, "team", "ours").await.is_denied());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = env.requests("team").get("elsewhere").await.unwrap();
    assert!(
        !left.is_approved() && !left.is_denied(),
        "{:?}",
        left.status
    );
}

#[tokio::test]
async fn a_ticket_must_be_of_the_policys_project_and_name_the_request() {
    let env = env_with(PolicyConfig::new()).await;
    let sim = TicketSimulator::start().await.unwrap();
    env.put_secret(CLUSTER_NS, "jira-token", &[("token", sim.token())])
        .await;
    let yaml = TICKET
        .replace("URL", &sim.url())
        .replace(
            "CA",
            &base64::engine::general_purpose::STANDARD.encode(sim.ca_pem()),
        )
        .replace(
            "    idPattern: SEC-*\n",
            "    idPattern: SEC-*\n    referenceField: /fields/summary\n",
        );
    policy(&env, "change-control", &yaml).await;
    // The simulator's summary names the ticket only, not any request.
    sim.set_status("SEC-5", "Approved");
    sim.set_status("OPS-5", "Approved");
    let corp = cert_manager_cluster_issuer("corp");
    for (name, ticket) in [("borrowed", "OPS-5"), ("unrelated", "SEC-5")] {
        env.request_with("changes", name, corp.clone(), |cr| {
            cr.metadata.annotations = Some(BTreeMap::from([(
                "pki.certwright.io/change-ticket".to_string(),
                ticket.to_string(),
            )]));
        })
        .await;
    }
    let borrowed = wait_decided(&env, "changes", "borrowed").await;
    assert!(borrowed.is_denied());
    assert!(
        condition_message(&borrowed, "Denied").contains("SEC-*"),
        "{:?}",
        borrowed.status
    );
    assert_eq!(sim.lookups_of("OPS-5"), 0);
    let unrelated = wait_decided(&env, "changes", "unrelated").await;
    assert!(unrelated.is_denied());
    assert!(
        condition_message(&unrelated, "Denied").contains("does not approve this request"),
        "{:?}",
        unrelated.status
    );
}
