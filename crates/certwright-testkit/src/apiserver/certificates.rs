//! `certificates.k8s.io/v1` CertificateSigningRequests as upstream's registry stores them,
//! and `authorization.k8s.io/v1` SubjectAccessReviews answered from the rules a test
//! sets ([`Authorizer`]).
//!
//! What upstream's CSR strategies do and this keeps:
//! - The spec is immutable after creation; a write to the main resource changes only
//!   metadata.
//! - `/approval` changes only `status.conditions`; `Approved` and `Denied` cannot both
//!   be true, and neither can be removed once set.
//! - `/status` changes the status but never the `Approved` and `Denied` conditions;
//!   `status.certificate` must hold PEM `CERTIFICATE` blocks, and once set it cannot
//!   change.
//!
//! Simplifications: `spec.username`, `groups`, `uid` and `extra` are stored as the
//! client sent them (upstream sets them from the authenticated user), and no `sign` or
//! `approve` permission on `signers` is checked.

use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use super::error::ApiError;

/// The API group of CertificateSigningRequests.
pub(crate) const GROUP: &str = "certificates.k8s.io";
/// Their plural.
pub(crate) const PLURAL: &str = "certificatesigningrequests";

/// The part of a CertificateSigningRequest a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CsrPart {
    Main,
    Status,
    Approval,
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn is_approval(condition: &Value) -> bool {
    matches!(
        condition.get("type").and_then(Value::as_str),
        Some("Approved" | "Denied")
    )
}

fn holds(conditions: &[Value], type_: &str) -> bool {
    conditions.iter().any(|c| {
        c.get("type").and_then(Value::as_str) == Some(type_)
            && c.get("status").and_then(Value::as_str) == Some("True")
    })
}

fn set_status(obj: &mut Value, status: Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert("status".to_string(), status);
    }
}

/// The object to store for a write of `part` that turned `live` into `new`, or the 422
/// upstream answers.
pub(crate) fn prepare_update(
    name: &str,
    part: CsrPart,
    live: &Value,
    mut new: Value,
) -> Result<Value, ApiError> {
    let invalid = |why: String| {
        ApiError::invalid(format!(
            "CertificateSigningRequest.certificates.k8s.io \"{name}\" is invalid: {why}"
        ))
        .with_details(name, GROUP, "CertificateSigningRequest")
    };
    // The spec never changes after creation.
    if let (Some(o), Some(spec)) = (new.as_object_mut(), live.get("spec")) {
        o.insert("spec".to_string(), spec.clone());
    }
    let live_status = live.get("status").cloned().unwrap_or_else(|| json!({}));
    let live_conditions = conditions(live);
    match part {
        CsrPart::Main => set_status(&mut new, live_status),
        CsrPart::Approval => {
            let wanted = conditions(&new);
            let mut status = live_status;
            status["conditions"] = Value::Array(wanted.clone());
            if holds(&wanted, "Approved") && holds(&wanted, "Denied") {
                return Err(invalid(
                    "status.conditions: Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive".to_string(),
                ));
            }
            for type_ in ["Approved", "Denied"] {
                if holds(&live_conditions, type_) && !holds(&wanted, type_) {
                    return Err(invalid(format!(
                        "status.conditions: Forbidden: updates may not remove a condition of type \"{type_}\""
                    )));
                }
            }
            set_status(&mut new, status);
        }
        CsrPart::Status => {
            let mut status = new.get("status").cloned().unwrap_or_else(|| json!({}));
            let mut kept: Vec<Value> = conditions(&new)
                .into_iter()
                .filter(|c| !is_approval(c))
                .collect();
            kept.extend(live_conditions.iter().filter(|c| is_approval(c)).cloned());
            status["conditions"] = Value::Array(kept);
            let old = live_status.get("certificate").and_then(Value::as_str);
            let certificate = status.get("certificate").and_then(Value::as_str);
            if let Some(old) = old.filter(|c| !c.is_empty())
                && certificate != Some(old)
            {
                return Err(invalid(
                    "status.certificate: Forbidden: updates may not modify existing certificate content".to_string(),
                ));
            }
            if let Some(certificate) = certificate.filter(|c| !c.is_empty()) {
                check_certificate(certificate).map_err(|why| {
                    invalid(format!(
                        "status.certificate: Invalid value: \"<certificate data>\": {why}"
                    ))
                })?;
            }
            set_status(&mut new, status);
        }
    }
    Ok(new)
}

/// What upstream checks of `status.certificate`: base64 of PEM with at least one block,
/// every block a `CERTIFICATE` that parses.
fn check_certificate(base64_pem: &str) -> Result<(), String> {
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(base64_pem)
        .map_err(|_| "not base64".to_string())?;
    let certs = certwright_x509::parse_pem_bundle(&pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("must contain at least one CERTIFICATE PEM block".to_string());
    }
    Ok(())
}

/// One permission a test grants: `None` or `"*"` fields match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessRule {
    /// The user it is granted to (`spec.user` of the review).
    pub user: Option<String>,
    /// A group it is granted to (one of `spec.groups`).
    pub group: Option<String>,
    /// The verb (`get`, `reference`, ...).
    pub verb: String,
    /// The API group of the resource.
    pub api_group: String,
    /// The resource (plural).
    pub resource: String,
    /// The namespace, for namespaced attributes.
    pub namespace: Option<String>,
    /// The resource name.
    pub name: Option<String>,
}

/// The permissions SubjectAccessReviews are answered from: nothing is allowed until a
/// test allows it.
#[derive(Debug, Default)]
pub struct Authorizer {
    rules: Mutex<Vec<AccessRule>>,
    reviews: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Authorizer {
    /// Grants a permission.
    pub fn allow(&self, rule: AccessRule) {
        lock(&self.rules).push(rule);
    }

    /// Removes every permission.
    pub fn clear(&self) {
        lock(&self.rules).clear();
    }

    /// How many reviews were answered.
    pub fn reviews(&self) -> u64 {
        *lock(&self.reviews)
    }

    /// Answers a `SubjectAccessReview` body: the review with its `status`.
    pub(crate) fn review(&self, mut body: Value) -> Result<Value, ApiError> {
        *lock(&self.reviews) += 1;
        let spec = body
            .get("spec")
            .cloned()
            .ok_or_else(|| ApiError::invalid("SubjectAccessReview: spec is required"))?;
        let attributes = spec.get("resourceAttributes").ok_or_else(|| {
            ApiError::invalid(
                "SubjectAccessReview: spec.resourceAttributes is required (non-resource \
                 reviews are not served)",
            )
        })?;
        let text = |v: &Value, field: &str| {
            v.get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let user = text(&spec, "user");
        let groups: Vec<String> = spec
            .get("groups")
            .and_then(Value::as_array)
            .map(|g| {
                g.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if user.is_empty() && groups.is_empty() {
            return Err(ApiError::invalid(
                "SubjectAccessReview: spec.user or spec.groups is required",
            ));
        }
        let (verb, api_group, resource, namespace, name) = (
            text(attributes, "verb"),
            text(attributes, "group"),
            text(attributes, "resource"),
            text(attributes, "namespace"),
            text(attributes, "name"),
        );
        let any = |rule: &Option<String>, value: &str| {
            rule.as_deref().is_none_or(|r| r == "*" || r == value)
        };
        let all = |rule: &str, value: &str| rule == "*" || rule == value;
        let allowed = lock(&self.rules).iter().any(|r| {
            let subject = match (&r.user, &r.group) {
                (Some(u), _) if *u == user => true,
                (_, Some(g)) if groups.contains(g) => true,
                (None, None) => true,
                _ => false,
            };
            subject
                && all(&r.verb, &verb)
                && all(&r.api_group, &api_group)
                && all(&r.resource, &resource)
                && any(&r.namespace, &namespace)
                && any(&r.name, &name)
        });
        body["status"] = if allowed {
            json!({"allowed": true, "reason": "allowed by a test rule"})
        } else {
            json!({"allowed": false})
        };
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn csr(conditions: Value, certificate: Option<&str>) -> Value {
        let mut status = json!({ "conditions": conditions });
        if let Some(c) = certificate {
            status["certificate"] = json!(c);
        }
        json!({
            "metadata": {"name": "c"},
            "spec": {"signerName": "a.b/c", "request": "Zm9v"},
            "status": status,
        })
    }

    #[test]
    fn approval_changes_conditions_only_and_never_both() {
        let live = csr(json!([]), None);
        let mut new = csr(json!([{"type": "Approved", "status": "True"}]), None);
        new["spec"]["signerName"] = json!("x/y");
        let stored = prepare_update("c", CsrPart::Approval, &live, new).unwrap();
        assert_eq!(stored["spec"]["signerName"], "a.b/c");
        assert_eq!(stored["status"]["conditions"][0]["type"], "Approved");
        let both = csr(
            json!([{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]),
            None,
        );
        assert!(prepare_update("c", CsrPart::Approval, &live, both).is_err());
        let gone = csr(json!([]), None);
        assert!(prepare_update("c", CsrPart::Approval, &stored, gone).is_err());
    }

    #[test]
    fn status_keeps_the_approval_and_a_set_certificate() {
        let live = csr(json!([{"type": "Approved", "status": "True"}]), None);
        let new = csr(json!([{"type": "Failed", "status": "True"}]), None);
        let stored = prepare_update("c", CsrPart::Status, &live, new).unwrap();
        let types: Vec<&str> = stored["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, ["Failed", "Approved"]);
        let garbage = csr(json!([]), Some("bm90IGEgY2VydA=="));
        assert!(prepare_update("c", CsrPart::Status, &live, garbage).is_err());
    }

    #[test]
    fn reviews_allow_only_what_a_rule_grants() {
        let authorizer = Authorizer::default();
        let review = |user: &str, name: &str| {
            json!({"spec": {"user": user, "groups": ["devs"], "resourceAttributes": {
                "verb": "reference", "group": "pki.certwright.io", "resource": "signers",
                "namespace": "team", "name": name,
            }}})
        };
        let allowed = |v: Value| v["status"]["allowed"].as_bool().unwrap();
        assert!(!allowed(authorizer.review(review("alice", "ca")).unwrap()));
        authorizer.allow(AccessRule {
            user: Some("alice".into()),
            verb: "reference".into(),
            api_group: "pki.certwright.io".into(),
            resource: "signers".into(),
            namespace: Some("team".into()),
            name: Some("ca".into()),
            ..AccessRule::default()
        });
        assert!(allowed(authorizer.review(review("alice", "ca")).unwrap()));
        assert!(!allowed(
            authorizer.review(review("alice", "other")).unwrap()
        ));
        assert!(!allowed(authorizer.review(review("bob", "ca")).unwrap()));
        authorizer.allow(AccessRule {
            group: Some("devs".into()),
            verb: "*".into(),
            api_group: "*".into(),
            resource: "*".into(),
            ..AccessRule::default()
        });
        assert!(allowed(authorizer.review(review("bob", "other")).unwrap()));
        assert_eq!(authorizer.reviews(), 5);
    }
}
