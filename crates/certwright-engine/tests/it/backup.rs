//! docs/backup.md, shown: the objects of one API server, status included, restored into
//! a fresh one in the documented order; the controller started there makes no PKI call
//! for requests already issued, denied or failed, resumes the pending one by its
//! persisted id, and submits nothing twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use certwright_api::certificate_request::CertificateRequest;
use certwright_api::{InternalClusterIssuer, InternalIssuer, PENDING_ID_ANNOTATION};
use certwright_simulators::rest_sim::{Behaviour, RestSimulator};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde_json::Value;

use certwright_simulators::ejbca_sim::{APPROVAL_PROFILE, EjbcaSimulator};
use certwright_testkit::apiserver::Method;

use crate::support::{
    CLUSTER_NS, EJBCA_CLIENT_ID, EJBCA_CLIENT_SECRET, Env, ca_spec, cluster_ref, eventually,
    namespaced_ref, rest_spec,
};

/// What a backup tool keeps of an object: everything but the server-assigned fields.
fn exported(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            meta.remove(field);
        }
    }
    object
}

/// Restores one kind as `kubectl create` then a status write do (an API server ignores
/// `status` on create when the kind has a status subresource).
async fn restore<K>(client: &Client, objects: &[Value])
where
    K: Resource<DynamicType = ()>,
{
    let resource = ApiResource::erase::<K>(&());
    for object in objects {
        let object: DynamicObject = serde_json::from_value(exported(object.clone())).unwrap();
        let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let created = api.create(&PostParams::default(), &object).await.unwrap();
        if let Some(status) = object.data.get("status").filter(|s| !s.is_null()) {
            let name = created.metadata.name.clone().unwrap();
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_cluster_signs_nothing_twice_and_resumes_the_pending_request() {
    // The cluster before: a remote PKI (the REST simulator) and a local CA whose key is
    // in a Secret, with requests in every state.
    let sim = RestSimulator::start().await.unwrap();
    let mut before = Env::start().await;
    before.cluster_issuer("corp", rest_spec(&sim)).await;
    before.wait_cluster_issuer("corp", "Verified").await;
    before.ca_secret("apps", "apps-ca").await;
    before
        .namespaced_issuer("apps", "local", ca_spec("apps-ca"))
        .await;
    before
        .wait_namespaced_issuer("apps", "local", "Verified")
        .await;

    before.request("apps", "issued", cluster_ref("corp")).await;
    before.approve("apps", "issued").await;
    before
        .request("apps", "local-issued", namespaced_ref("local"))
        .await;
    before.approve("apps", "local-issued").await;
    before.request("apps", "denied", cluster_ref("corp")).await;
    before.deny("apps", "denied").await;
    for name in ["issued", "local-issued"] {
        before.wait_ready_reason("apps", name, "Issued").await;
    }
    before.wait_ready_reason("apps", "denied", "Denied").await;
    sim.set_behaviour(Behaviour::Reject("no such profile".into()));
    before.request("apps", "refused", cluster_ref("corp")).await;
    before.approve("apps", "refused").await;
    before.wait_ready_reason("apps", "refused", "Failed").await;
    sim.set_behaviour(Behaviour::Pending);
    before.request("apps", "waiting", cluster_ref("corp")).await;
    before.approve("apps", "waiting").await;
    let waiting = before
        .wait_request("apps", "waiting", "a pending id", |cr| {
            cr.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(PENDING_ID_ANNOTATION))
                && cr.ready_reason() == Some("Pending")
        })
        .await;
    let pending_id = waiting.metadata.annotations.unwrap()[PENDING_ID_ANNOTATION].clone();
    // EJBCA holds one for its officers too: its pending id is sealed to the key the
    // enrollment went under.
    let ejbca = EjbcaSimulator::start_oauth(EJBCA_CLIENT_ID, EJBCA_CLIENT_SECRET)
        .await
        .unwrap();
    before
        .ejbca_cluster_issuer("corp-ejbca", &ejbca, APPROVAL_PROFILE, "5s")
        .await;
    before
        .request("apps", "held", cluster_ref("corp-ejbca"))
        .await;
    before.approve("apps", "held").await;
    before
        .wait_request("apps", "held", "EJBCA's pending id", |cr| {
            cr.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(PENDING_ID_ANNOTATION))
        })
        .await;
    // And one whose answer never made it into the cluster before the backup: the CA
    // signed, the status write failed, the controller died.
    sim.set_behaviour(Behaviour::Issue);
    let issued_by_then = sim.certificates_issued();
    before.server.faults().fail_next(
        Method::PATCH,
        "certificaterequests/inflight/status",
        500,
        1000,
    );
    before
        .request("apps", "inflight", cluster_ref("corp"))
        .await;
    before.approve_in_store("apps", "inflight");
    eventually("the in-flight signature", || {
        sim.certificates_issued() == issued_by_then + 1
    })
    .await;
    before.kill_engine().await;
    before.server.faults().clear();

    // The backup, status included.
    let mut secrets = before.server.list_json("secrets", "apps");
    secrets.extend(before.server.list_json("secrets", CLUSTER_NS));
    let cluster_issuers = before
        .server
        .list_json("internalclusterissuers.pki.certwright.io", "");
    let issuers = before
        .server
        .list_json("internalissuers.pki.certwright.io", "");
    let requests = before
        .server
        .list_json("certificaterequests.cert-manager.io", "");
    assert_eq!(requests.len(), 7);
    let enrollments = ejbca.enrollments();
    let submitted = sim.sign_submissions();
    let issued_before = sim.certificates_issued();

    // A fresh cluster, restored in the documented order: Secrets, issuers, requests.
    let mut after = Env::new().await;
    restore::<Secret>(&after.client, &secrets).await;
    restore::<InternalClusterIssuer>(&after.client, &cluster_issuers).await;
    restore::<InternalIssuer>(&after.client, &issuers).await;
    restore::<CertificateRequest>(&after.client, &requests).await;
    let restored: Vec<CertificateRequest> = {
        let api = after.requests("apps");
        let mut all = Vec::new();
        for r in &requests {
            all.push(
                api.get(r["metadata"]["name"].as_str().unwrap())
                    .await
                    .unwrap(),
            );
        }
        all
    };
    // Meanwhile the CAs' officers approved the held requests.
    assert!(sim.approve(&pending_id));
    let held = ejbca.waiting_ids();
    assert_eq!(held.len(), 1);
    assert!(ejbca.approve(held[0]));
    after.server.clear_requests();
    after.start_engine(crate::support::fast_config());

    // The EJBCA one is finalized under the key it was sealed to, though the restored
    // request has a new uid.
    after.wait_ready_reason("apps", "held", "Issued").await;
    assert_eq!(ejbca.enrollments(), enrollments, "not enrolled again");
    assert_eq!(ejbca.certificates_issued(), 1);
    let done = after.wait_ready_reason("apps", "waiting", "Issued").await;
    assert!(done.status.unwrap().certificate.is_some());
    // The in-flight one is sent again under the key it first went under (its uid
    // before the restore): the CA answers with the certificate it signed then.
    let inflight = after.wait_ready_reason("apps", "inflight", "Issued").await;
    assert!(inflight.status.unwrap().certificate.is_some());
    assert_eq!(
        sim.sign_submissions(),
        submitted + 1,
        "only the in-flight one, again"
    );
    assert_eq!(
        sim.certificates_issued(),
        issued_before + 1,
        "only the pending one is a new certificate"
    );
    assert!(sim.polls() >= 1);
    // Give the engine time to have touched anything it would touch.
    after.wait_cluster_issuer("corp", "Verified").await;
    after
        .wait_namespaced_issuer("apps", "local", "Verified")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let api = after.requests("apps");
    let resumed = |name: Option<&str>| matches!(name, Some("waiting" | "inflight" | "held"));
    for old in restored
        .iter()
        .filter(|r| !resumed(r.metadata.name.as_deref()))
    {
        let name = old.metadata.name.clone().unwrap();
        let now = api.get(&name).await.unwrap();
        assert_eq!(
            now.metadata.resource_version, old.metadata.resource_version,
            "{name}: a final request is left as it was restored"
        );
    }
    let writes: Vec<String> = after
        .server
        .requests()
        .iter()
        .filter(|r| r.method.as_str() != "GET" && r.path.contains("certificaterequests"))
        .map(|r| r.path.clone())
        .collect();
    assert!(
        writes.iter().all(|p| ["/waiting", "/inflight", "/held"]
            .iter()
            .any(|r| p.contains(r))),
        "writes to requests other than the resumed ones: {writes:#?}"
    );
    after.stop_engine().await;
}
