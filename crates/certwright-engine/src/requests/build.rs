//! Pure helpers of the request loop: what the backend is asked, the status patch
//! written back, and the small keys and delays the loop uses.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use certwright_api::certificate_request::{CONDITION_INVALID_REQUEST, CONDITION_READY};
use certwright_api::{
    Base64Bytes, CertificateRequest, Condition, ConditionStatus, Conditions, IssuerSpec,
    TEMPLATE_ANNOTATION,
};
use certwright_pki::{Requester, SignRequest};
use certwright_x509::Csr;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;
use serde_json::json;

use crate::cached::RequestKey;
use crate::requests::decide::StatusChange;

/// A per-request delay of up to a second, so that requests deferred together do not
/// all come back in the same instant.
pub(crate) fn spread(key: &RequestKey) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    Duration::from_millis(h.finish() % 1000)
}

/// What identifies a Ready reason and message, to skip writing the same twice.
pub(crate) fn hash_of(reason: &str, message: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    reason.hash(&mut h);
    message.hash(&mut h);
    h.finish()
}

/// Builds what the backend is asked from the full CertificateRequest, or says why the
/// request itself cannot be signed.
pub(crate) fn sign_request(
    full: &CertificateRequest,
    issuer: &IssuerSpec,
) -> Result<SignRequest, String> {
    let csr = Csr::parse(full.spec.request.as_bytes())
        .map_err(|e| format!("spec.request is not a usable CSR: {e}"))?;
    let duration = full
        .requested_duration()
        .map_err(|e| format!("spec.duration: {e}"))?;
    let template = match full.annotations().get(TEMPLATE_ANNOTATION) {
        None => None,
        Some(t) if !issuer.allow_template_override => {
            return Err(format!(
                "annotation {TEMPLATE_ANNOTATION}={t:?} is set, but the issuer does not allow template overrides (spec.allowTemplateOverride)"
            ));
        }
        Some(t) => {
            // By the rules of the backend the name goes to (an EJBCA profile name may
            // hold '=', an AD CS template name may not).
            match issuer.backend_kind() {
                Some(kind) => certwright_api::validation::check_backend_name(kind, t),
                None => certwright_api::validation::check_template_name(t),
            }
            .map_err(|why| format!("annotation {TEMPLATE_ANNOTATION}: {why}"))?;
            Some(t.clone())
        }
    };
    let mut usages = Vec::with_capacity(full.spec.usages.len());
    for usage in &full.spec.usages {
        match serde_json::to_value(usage) {
            Ok(serde_json::Value::String(name)) if *usage != certwright_api::KeyUsage::Unknown => {
                usages.push(name)
            }
            _ => return Err("spec.usages names a usage certwright does not know".to_string()),
        }
    }
    let mut request = SignRequest::new(csr, full.uid().unwrap_or_default());
    request.duration = duration;
    request.is_ca = full.spec.is_ca;
    request.usages = usages;
    request.template = template;
    request.requester = Requester {
        namespace: full.namespace().unwrap_or_default(),
        name: full.name_any(),
    };
    Ok(request)
}

/// The merge patch that writes `change` onto the request's current conditions, with
/// the request's resourceVersion as a precondition.
pub(crate) fn request_status_patch(
    full: &CertificateRequest,
    change: &StatusChange,
    now: jiff::Timestamp,
) -> serde_json::Value {
    let mut conditions = full.conditions().to_vec();
    conditions.set_condition(
        Condition::new(
            CONDITION_READY,
            change.ready,
            change.reason,
            change.message.clone(),
        ),
        now,
    );
    if change.invalid_request {
        conditions.set_condition(
            Condition::new(
                CONDITION_INVALID_REQUEST,
                ConditionStatus::True,
                "InvalidRequest",
                change.message.clone(),
            ),
            now,
        );
    }
    let mut status = json!({ "conditions": conditions });
    if let Some(bundle) = &change.issued {
        status["certificate"] = json!(Base64Bytes::from(bundle.certificate_pem().as_str()));
        if let Some(ca) = &bundle.ca {
            status["ca"] = json!(Base64Bytes::from(ca.to_pem().as_str()));
        }
    }
    if change.failed {
        status["failureTime"] = json!(certwright_api::condition::whole_seconds(now));
    }
    json!({
        "metadata": { "resourceVersion": full.resource_version() },
        "status": status})
}

/// The request as an Event's `regarding`, at the version the Event is about.
pub(crate) fn object_reference(full: &CertificateRequest) -> ObjectReference {
    ObjectReference {
        api_version: Some("cert-manager.io/v1".to_string()),
        kind: Some("CertificateRequest".to_string()),
        name: full.metadata.name.clone(),
        namespace: full.metadata.namespace.clone(),
        uid: full.metadata.uid.clone(),
        resource_version: full.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// When a request was created, for its retry deadline; now when unknown (never
/// giving up early).
pub(crate) fn created_at(
    created: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> jiff::Timestamp {
    created.as_ref().map_or_else(jiff::Timestamp::now, |t| t.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use certwright_api::{CaBackend, ConditionStatus, IssuerSpec};
    use certwright_pki::IssuedBundle;
    use certwright_testkit::fixtures::{CsrBuilder, KeyKind, TestCa};

    fn request(extra: serde_json::Value) -> CertificateRequest {
        let csr = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("web")
            .dns("web.team-a.svc")
            .build();
        let mut object = json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {
                "name": "web-1", "namespace": "team-a", "uid": "uid-1",
                "resourceVersion": "42",
                "creationTimestamp": "2026-01-02T03:04:05Z",
            },
            "spec": {
                "request": Base64Bytes::from(csr.csr_pem.as_str()),
                "issuerRef": {"group": "pki.certwright.io", "kind": "InternalIssuer", "name": "corp"},
                "usages": ["digital signature", "server auth"],
            },
        });
        merge(&mut object, extra);
        serde_json::from_value(object).unwrap()
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn issuer(allow_template_override: bool, backend: Option<&str>) -> IssuerSpec {
        let mut spec = IssuerSpec {
            allow_template_override,
            ..Default::default()
        };
        match backend {
            Some("adcs") => {
                spec.adcs = Some(
                    serde_json::from_value(json!({
                        "url": "https://ca.corp.test/certsrv",
                        "authMethod": "ntlm",
                        "authSecretName": "adcs",
                        "templateName": "WebServer",
                    }))
                    .unwrap(),
                )
            }
            Some("ejbca") => {
                spec.ejbca = Some(
                    serde_json::from_value(json!({
                        "url": "https://ejbca.corp.test",
                        "authSecretName": "ejbca",
                        "certificateAuthorityName": "Corp",
                        "certificateProfileName": "TLS",
                        "endEntityProfileName": "K8S",
                    }))
                    .unwrap(),
                )
            }
            _ => {
                spec.ca = Some(CaBackend {
                    secret_name: "ca".into(),
                    ..Default::default()
                })
            }
        }
        spec
    }

    #[test]
    fn a_request_becomes_what_the_backend_is_asked() {
        let full = request(json!({"spec": {"duration": "24h", "isCA": false}}));
        let asked = sign_request(&full, &issuer(false, None)).unwrap();
        assert_eq!(asked.idempotency_key, "uid-1");
        assert_eq!(asked.duration, Some(Duration::from_secs(24 * 3600)));
        assert!(!asked.is_ca);
        assert_eq!(asked.usages, vec!["digital signature", "server auth"]);
        assert_eq!(asked.template, None);
        assert_eq!(asked.requester.namespace, "team-a");
        assert_eq!(asked.requester.name, "web-1");
    }

    #[test]
    fn a_request_that_cannot_be_signed_names_its_field() {
        let garbage = request(json!({"spec": {"request": Base64Bytes::from("not a CSR")}}));
        let why = sign_request(&garbage, &issuer(false, None)).unwrap_err();
        assert!(why.starts_with("spec.request is not a usable CSR"), "{why}");

        let forever = request(json!({"spec": {"duration": "forever"}}));
        let why = sign_request(&forever, &issuer(false, None)).unwrap_err();
        assert!(why.starts_with("spec.duration: "), "{why}");

        let odd = request(json!({"spec": {"usages": ["server auth", "time travel"]}}));
        let why = sign_request(&odd, &issuer(false, None)).unwrap_err();
        assert!(why.contains("spec.usages"), "{why}");
    }

    #[test]
    fn a_template_override_needs_the_issuers_consent_and_its_backends_rules() {
        let annotated =
            |t: &str| request(json!({"metadata": {"annotations": {TEMPLATE_ANNOTATION: t}}}));
        let why = sign_request(&annotated("Web"), &issuer(false, Some("adcs"))).unwrap_err();
        assert!(why.contains("spec.allowTemplateOverride"), "{why}");

        let asked = sign_request(&annotated("Web"), &issuer(true, Some("adcs"))).unwrap();
        assert_eq!(asked.template.as_deref(), Some("Web"));

        // An EJBCA profile may hold '=', an AD CS template may not.
        let equals = annotated("TLS=2");
        let why = sign_request(&equals, &issuer(true, Some("adcs"))).unwrap_err();
        assert!(
            why.starts_with(&format!("annotation {TEMPLATE_ANNOTATION}: ")),
            "{why}"
        );
        let asked = sign_request(&equals, &issuer(true, Some("ejbca"))).unwrap();
        assert_eq!(asked.template.as_deref(), Some("TLS=2"));
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_status_patch_sets_ready_keeps_the_rest_and_holds_the_version() {
        let mut full = request(json!({}));
        full.status = Some(
            serde_json::from_value(json!({"conditions": [
                {"type": "Approved", "status": "True", "reason": "policy", "message": "ok",
                 "lastTransitionTime": "2026-01-02T03:04:06Z"},
            ]}))
            .unwrap(),
        );
        let now = at("2026-01-02T03:05:00Z");
        let pending = StatusChange::pending("The CA holds the request".into());
        let patch = request_status_patch(&full, &pending, now);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2, "{patch}");
        assert_eq!(conditions[0]["type"], "Approved");
        assert_eq!(conditions[1]["type"], "Ready");
        assert_eq!(conditions[1]["status"], "False");
        assert_eq!(conditions[1]["reason"], "Pending");
        assert_eq!(conditions[1]["message"], "The CA holds the request");
        assert!(patch["status"].get("certificate").is_none());
        assert!(patch["status"].get("failureTime").is_none());
    }

    #[test]
    fn a_failed_invalid_request_gets_both_conditions_and_a_failure_time() {
        let full = request(json!({}));
        let change = StatusChange {
            ready: ConditionStatus::False,
            reason: "Failed",
            message: "spec.request is not a usable CSR".into(),
            invalid_request: true,
            failed: true,
            issued: None,
        };
        let patch = request_status_patch(&full, &change, at("2026-01-02T03:05:00.750Z"));
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        let invalid = conditions
            .iter()
            .find(|c| c["type"] == "InvalidRequest")
            .unwrap();
        assert_eq!(invalid["status"], "True");
        assert_eq!(invalid["message"], "spec.request is not a usable CSR");
        assert_eq!(patch["status"]["failureTime"], "2026-01-02T03:05:00Z");
    }

    #[test]
    fn an_issued_change_writes_the_chain_and_the_root_as_base64_pem() {
        let root = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
        let leaf = root.issue_leaf(KeyKind::EcdsaP256, "web.team-a.svc");
        let certs = certwright_x509::parse_pem_bundle(
            format!("{}{}", leaf.cert_pem, root.cert_pem()).as_bytes(),
        )
        .unwrap();
        let bundle = IssuedBundle::from_certificates(certs).unwrap();
        let change = StatusChange {
            ready: ConditionStatus::True,
            reason: "Issued",
            message: "Certificate issued".into(),
            invalid_request: false,
            failed: false,
            issued: Some(bundle.clone()),
        };
        let patch = request_status_patch(&request(json!({})), &change, at("2026-01-02T03:05:00Z"));
        let written: Base64Bytes =
            serde_json::from_value(patch["status"]["certificate"].clone()).unwrap();
        assert_eq!(written.as_bytes(), bundle.certificate_pem().as_bytes());
        let ca: Base64Bytes = serde_json::from_value(patch["status"]["ca"].clone()).unwrap();
        assert_eq!(ca.as_bytes(), bundle.ca_pem().as_bytes());
    }

    #[test]
    fn the_event_reference_names_the_request_at_its_version() {
        let reference = object_reference(&request(json!({})));
        assert_eq!(reference.kind.as_deref(), Some("CertificateRequest"));
        assert_eq!(reference.api_version.as_deref(), Some("cert-manager.io/v1"));
        assert_eq!(reference.namespace.as_deref(), Some("team-a"));
        assert_eq!(reference.name.as_deref(), Some("web-1"));
        assert_eq!(reference.uid.as_deref(), Some("uid-1"));
        assert_eq!(reference.resource_version.as_deref(), Some("42"));
    }

    #[test]
    fn the_retry_deadline_counts_from_creation_or_from_now() {
        let full = request(json!({}));
        assert_eq!(
            created_at(&full.metadata.creation_timestamp),
            at("2026-01-02T03:04:05Z")
        );
        let before = jiff::Timestamp::now();
        assert!(created_at(&None) >= before);
    }

    #[test]
    fn spread_is_under_a_second_and_the_same_for_a_key() {
        let a = RequestKey {
            namespace: "team-a".into(),
            name: "web-1".into(),
        };
        assert!(spread(&a) < Duration::from_secs(1));
        assert_eq!(spread(&a), spread(&a.clone()));
        assert_eq!(hash_of("Pending", "held"), hash_of("Pending", "held"));
        assert_ne!(
            hash_of("Pending", "held"),
            hash_of("Pending", "held by the CA")
        );
        assert_ne!(hash_of("Pendi", "nghold"), hash_of("Pending", "hold"));
    }
}
