//! What the engine keeps of a CertificateRequest between reconciles: metadata, the
//! issuer reference and the conditions. The CSR and the issued chain are never cached;
//! they are read when a request must be signed. Only requests that are not yet terminal
//! are kept at all, so memory stays flat as completed requests accumulate.

use std::borrow::Cow;
use std::collections::BTreeMap;

use certwright_api::{Condition, IssuerRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::NamespaceResourceScope;
use serde::{Deserialize, Serialize};

/// A CertificateRequest as the engine watches it: everything but the CSR and the chain.
///
/// It deserializes from the full object (unknown fields are skipped), so a watch on
/// `Api<CachedRequest>` never holds CSRs or certificates in memory.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct CachedRequest {
    /// Metadata, reduced by [`CachedRequest::slim`].
    pub metadata: ObjectMeta,
    /// The parts of the spec decisions need.
    #[serde(default)]
    pub spec: CachedSpec,
    /// The conditions.
    #[serde(default)]
    pub status: CachedStatus,
}

/// The parts of a CertificateRequest spec the engine decides on.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CachedSpec {
    /// The issuer asked to sign.
    #[serde(default)]
    pub issuer_ref: IssuerRef,
}

/// The conditions of a CertificateRequest.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub(crate) struct CachedStatus {
    /// Ready, Approved, Denied, InvalidRequest.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl kube::Resource for CachedRequest {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "CertificateRequest".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "cert-manager.io".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "certificaterequests".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedRequest {
    /// Drops what no decision needs: managed fields, labels, owner references, and every
    /// annotation except certwright's own (`pki.certwright.io/...`).
    pub(crate) fn slim(mut self) -> Self {
        let meta = &mut self.metadata;
        meta.managed_fields = None;
        meta.labels = None;
        meta.owner_references = None;
        meta.finalizers = None;
        meta.annotations = meta.annotations.take().and_then(|all| {
            let ours: BTreeMap<String, String> = all
                .into_iter()
                .filter(|(k, _)| k.starts_with("pki.certwright.io/"))
                .collect();
            (!ours.is_empty()).then_some(ours)
        });
        for condition in &mut self.status.conditions {
            // Messages can be long and are not needed to decide.
            condition.message = String::new();
        }
        self
    }

    /// `namespace/name`.
    pub(crate) fn key(&self) -> RequestKey {
        RequestKey {
            namespace: self.metadata.namespace.clone().unwrap_or_default(),
            name: self.metadata.name.clone().unwrap_or_default(),
        }
    }

    /// The annotation value, if set.
    pub(crate) fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// The conditions, for [`RequestConditions`](certwright_api::RequestConditions).
    pub(crate) fn conditions(&self) -> &[Condition] {
        &self.status.conditions
    }
}

/// A CertificateRequest's `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RequestKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl std::fmt::Display for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use certwright_api::ConditionStatus;
    use certwright_api::RequestConditions;
    use certwright_api::certificate_request::CONDITION_READY;

    #[test]
    fn deserializes_without_the_csr_or_chain_and_slims() {
        let full = serde_json::json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {
                "name": "web-1", "namespace": "apps", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"},
                "annotations": {
                    "cert-manager.io/certificate-name": "web",
                    "pki.certwright.io/pending-id": "42"
                },
                "managedFields": [{"manager": "cert-manager", "operation": "Update"}]
            },
            "spec": {
                "request": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0=",
                "issuerRef": {"name": "corp", "kind": "InternalClusterIssuer", "group": "pki.certwright.io"},
                "usages": ["server auth"]
            },
            "status": {
                "conditions": [{"type": "Approved", "status": "True", "reason": "cert-manager.io", "message": "Certificate request has been approved by cert-manager.io"}],
                "certificate": "LS0tLS1CRUdJTg=="
            }
        });
        let cached: CachedRequest = serde_json::from_value(full).unwrap();
        let cached = cached.slim();
        let json = serde_json::to_string(&cached).unwrap();
        assert!(!json.contains("LS0t"), "no CSR or certificate kept: {json}");
        assert!(!json.contains("managedFields") && !json.contains("certificate-name"));
        assert_eq!(
            cached.annotation("pki.certwright.io/pending-id"),
            Some("42")
        );
        assert_eq!(cached.spec.issuer_ref.name, "corp");
        assert!(cached.conditions().is_approved() && !cached.conditions().is_terminal());
        assert_eq!(cached.key().to_string(), "apps/web-1");
    }

    #[test]
    fn terminal_states() {
        let with = |status: ConditionStatus, reason: &str| CachedRequest {
            status: CachedStatus {
                conditions: vec![Condition::new(CONDITION_READY, status, reason, "")],
            },
            ..Default::default()
        };
        assert!(
            with(ConditionStatus::True, "Issued")
                .conditions()
                .is_terminal()
        );
        assert!(
            with(ConditionStatus::False, "Failed")
                .conditions()
                .is_terminal()
        );
        assert!(
            with(ConditionStatus::False, "Denied")
                .conditions()
                .is_terminal()
        );
        assert!(
            !with(ConditionStatus::False, "Pending")
                .conditions()
                .is_terminal()
        );
        assert!(!CachedRequest::default().conditions().is_terminal());
    }
}
