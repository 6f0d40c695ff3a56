//! Our typed view of cert-manager's `CertificateRequest` (`cert-manager.io/v1`): the
//! fields certwright reads and writes, with helpers for the conditions that drive the
//! signing flow. cert-manager owns the CRD; certwright never installs it.

use std::time::Duration;

use jiff::Timestamp;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::bytes::Base64Bytes;
use crate::condition::{Condition, ConditionStatus, Conditions};
use crate::duration::{DurationError, parse_duration};

/// Condition type: the request has a certificate (True) or will not get one (False, reason Failed/Denied).
pub const CONDITION_READY: &str = "Ready";
/// Condition type: an approver approved the request.
pub const CONDITION_APPROVED: &str = "Approved";
/// Condition type: an approver denied the request.
pub const CONDITION_DENIED: &str = "Denied";
/// Condition type: the request itself is invalid (e.g. a malformed CSR); terminal.
pub const CONDITION_INVALID_REQUEST: &str = "InvalidRequest";

/// Ready reason: waiting for approval, the issuer, the PKI or a retry.
pub const REASON_PENDING: &str = "Pending";
/// Ready reason: signed; `status.certificate` holds the chain.
pub const REASON_ISSUED: &str = "Issued";
/// Ready reason: will never be signed.
pub const REASON_FAILED: &str = "Failed";
/// Ready reason: an approver denied the request.
pub const REASON_DENIED: &str = "Denied";

/// The spec of a cert-manager `CertificateRequest`, as far as certwright reads it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "CertificateRequest",
    namespaced,
    status = "CertificateRequestStatus",
    schema = "disabled",
    doc = "cert-manager's CertificateRequest: a CSR addressed to an issuer."
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestSpec {
    /// The PEM-encoded PKCS#10 CSR (base64 in JSON).
    pub request: Base64Bytes,
    /// The issuer asked to sign.
    pub issuer_ref: IssuerRef,
    /// Requested lifetime, as a Go duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Requests a CA certificate.
    #[serde(default, rename = "isCA", skip_serializing_if = "std::ops::Not::not")]
    pub is_ca: bool,
    /// Requested key usages and extended key usages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<KeyUsage>,
    /// The user who created the request (set by cert-manager's webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// That user's uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// That user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// That user's extra attributes (set by cert-manager's webhook).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// A reference to the issuer that should sign.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    pub name: String,
    /// The issuer's kind, e.g. `InternalClusterIssuer`; cert-manager defaults it to `Issuer`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The issuer's API group, e.g. `pki.certwright.io`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

/// What certwright writes back on a `CertificateRequest`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestStatus {
    /// Ready, Approved, Denied, InvalidRequest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The signed certificate followed by intermediates, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Base64Bytes>,
    /// The root CA certificate, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<Base64Bytes>,
    /// When the request failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_time: Option<Timestamp>,
}

/// A key usage as cert-manager spells it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // each variant is the usage of the same name
pub enum KeyUsage {
    #[serde(rename = "signing")]
    Signing,
    #[serde(rename = "digital signature")]
    DigitalSignature,
    #[serde(rename = "content commitment")]
    ContentCommitment,
    #[serde(rename = "key encipherment")]
    KeyEncipherment,
    #[serde(rename = "key agreement")]
    KeyAgreement,
    #[serde(rename = "data encipherment")]
    DataEncipherment,
    #[serde(rename = "cert sign")]
    CertSign,
    #[serde(rename = "crl sign")]
    CrlSign,
    #[serde(rename = "encipher only")]
    EncipherOnly,
    #[serde(rename = "decipher only")]
    DecipherOnly,
    #[serde(rename = "any")]
    Any,
    #[serde(rename = "server auth")]
    ServerAuth,
    #[serde(rename = "client auth")]
    ClientAuth,
    #[serde(rename = "code signing")]
    CodeSigning,
    #[serde(rename = "email protection")]
    EmailProtection,
    #[serde(rename = "s/mime")]
    SMime,
    #[serde(rename = "ipsec end system")]
    IpsecEndSystem,
    #[serde(rename = "ipsec tunnel")]
    IpsecTunnel,
    #[serde(rename = "ipsec user")]
    IpsecUser,
    #[serde(rename = "timestamping")]
    Timestamping,
    #[serde(rename = "ocsp signing")]
    OcspSigning,
    #[serde(rename = "microsoft sgc")]
    MicrosoftSgc,
    #[serde(rename = "netscape sgc")]
    NetscapeSgc,
    /// A usage this version does not know; kept so that the request still parses.
    #[serde(other)]
    Unknown,
}

impl CertificateRequestStatus {
    /// Sets a condition, keeping `lastTransitionTime` when its status is unchanged.
    /// Returns true when anything changed.
    pub fn set_condition(
        &mut self,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        now: Timestamp,
    ) -> bool {
        self.conditions
            .set_condition(Condition::new(type_, status, reason, message), now)
    }
}

/// The flow-driving questions about a CertificateRequest's conditions, answered the
/// same way for a full object and for the engine's slim cached copy.
pub trait RequestConditions {
    /// The Ready condition's reason, if there is a Ready condition.
    fn ready_reason(&self) -> Option<&str>;
    /// An approver set `Approved=True`.
    fn is_approved(&self) -> bool;
    /// An approver set `Denied=True`.
    fn is_denied(&self) -> bool;
    /// `Ready=True`: the certificate is in the status.
    fn is_ready(&self) -> bool;
    /// `Ready=False` with reason `Failed`.
    fn is_failed(&self) -> bool;
    /// `InvalidRequest=True`.
    fn is_invalid(&self) -> bool;
    /// Nothing more will happen to this request: Ready=True, or Ready=False with reason
    /// Failed or Denied. A terminal request is never signed (again).
    fn is_terminal(&self) -> bool;
}

fn condition_is(conditions: &[Condition], type_: &str, status: ConditionStatus) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == status)
}

impl RequestConditions for [Condition] {
    fn ready_reason(&self) -> Option<&str> {
        self.iter()
            .find(|c| c.type_ == CONDITION_READY)
            .map(|c| c.reason.as_str())
    }

    fn is_approved(&self) -> bool {
        condition_is(self, CONDITION_APPROVED, ConditionStatus::True)
    }

    fn is_denied(&self) -> bool {
        condition_is(self, CONDITION_DENIED, ConditionStatus::True)
    }

    fn is_ready(&self) -> bool {
        condition_is(self, CONDITION_READY, ConditionStatus::True)
    }

    fn is_failed(&self) -> bool {
        condition_is(self, CONDITION_READY, ConditionStatus::False)
            && self.ready_reason() == Some(REASON_FAILED)
    }

    fn is_invalid(&self) -> bool {
        condition_is(self, CONDITION_INVALID_REQUEST, ConditionStatus::True)
    }

    fn is_terminal(&self) -> bool {
        self.is_ready()
            || (condition_is(self, CONDITION_READY, ConditionStatus::False)
                && matches!(self.ready_reason(), Some(REASON_FAILED | REASON_DENIED)))
    }
}

impl CertificateRequest {
    /// The request's conditions (empty without a status).
    pub fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }

    /// The Ready condition's reason, if there is a Ready condition.
    pub fn ready_reason(&self) -> Option<&str> {
        self.conditions().ready_reason()
    }

    /// An approver set `Approved=True`.
    pub fn is_approved(&self) -> bool {
        self.conditions().is_approved()
    }

    /// An approver set `Denied=True`.
    pub fn is_denied(&self) -> bool {
        self.conditions().is_denied()
    }

    /// `Ready=True`: the certificate is in the status.
    pub fn is_ready(&self) -> bool {
        self.conditions().is_ready()
    }

    /// `Ready=False` with reason `Failed`.
    pub fn is_failed(&self) -> bool {
        self.conditions().is_failed()
    }

    /// `InvalidRequest=True`.
    pub fn is_invalid(&self) -> bool {
        self.conditions().is_invalid()
    }

    /// Nothing more will happen to this request: Ready=True, or Ready=False with reason
    /// Failed or Denied. A terminal request is never signed (again).
    pub fn is_terminal(&self) -> bool {
        self.conditions().is_terminal()
    }

    /// The requested lifetime, if the request names one.
    pub fn requested_duration(&self) -> Result<Option<Duration>, DurationError> {
        self.spec
            .duration
            .as_deref()
            .map(parse_duration)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(conditions: serde_json::Value) -> CertificateRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {"name": "web", "namespace": "apps", "uid": "u-1"},
            "spec": {
                "request": "LS0tLS1CRUdJTg==",
                "issuerRef": {"name": "corp", "kind": "InternalClusterIssuer", "group": "pki.certwright.io"},
                "duration": "720h",
                "isCA": false,
                "usages": ["digital signature", "key encipherment", "server auth", "something new"]
            },
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn reads_cert_manager_json() {
        let cr = request(serde_json::json!([]));
        assert_eq!(cr.spec.request.as_bytes(), b"-----BEGIN");
        assert_eq!(cr.spec.issuer_ref.group, "pki.certwright.io");
        assert_eq!(
            cr.spec.usages,
            vec![
                KeyUsage::DigitalSignature,
                KeyUsage::KeyEncipherment,
                KeyUsage::ServerAuth,
                KeyUsage::Unknown
            ]
        );
        assert_eq!(
            cr.requested_duration().unwrap(),
            Some(Duration::from_secs(720 * 3600))
        );
    }

    #[test]
    fn approval_and_terminal_helpers() {
        let approved = request(serde_json::json!([
            {"type": "Approved", "status": "True", "reason": "policy.cert-manager.io", "message": "ok"}
        ]));
        assert!(approved.is_approved());
        assert!(!approved.is_denied() && !approved.is_terminal());

        let denied = request(serde_json::json!([
            {"type": "Denied", "status": "True", "reason": "x", "message": "no"},
            {"type": "Ready", "status": "False", "reason": "Denied", "message": "no"}
        ]));
        assert!(denied.is_denied() && denied.is_terminal() && !denied.is_failed());

        let failed = request(serde_json::json!([
            {"type": "InvalidRequest", "status": "True", "reason": "BadCSR", "message": "m"},
            {"type": "Ready", "status": "False", "reason": "Failed", "message": "m"}
        ]));
        assert!(failed.is_failed() && failed.is_invalid() && failed.is_terminal());

        let pending = request(serde_json::json!([
            {"type": "Ready", "status": "False", "reason": "Pending", "message": "m"}
        ]));
        assert!(!pending.is_terminal() && !pending.is_ready());

        let ready = request(serde_json::json!([
            {"type": "Ready", "status": "True", "reason": "Issued", "message": "m"}
        ]));
        assert!(ready.is_ready() && ready.is_terminal());
    }

    #[test]
    fn status_setter_keeps_transition_time() {
        let mut status = CertificateRequestStatus::default();
        let t1 = Timestamp::from_second(1_000).unwrap();
        let t2 = Timestamp::from_second(2_000).unwrap();
        status.set_condition(
            CONDITION_READY,
            ConditionStatus::False,
            REASON_PENDING,
            "a",
            t1,
        );
        assert!(status.set_condition(
            CONDITION_READY,
            ConditionStatus::False,
            REASON_PENDING,
            "b",
            t2
        ));
        assert_eq!(status.conditions[0].last_transition_time, Some(t1));
        status.set_condition(
            CONDITION_READY,
            ConditionStatus::True,
            REASON_ISSUED,
            "c",
            t2,
        );
        assert_eq!(status.conditions[0].last_transition_time, Some(t2));
    }

    #[test]
    fn status_serializes_only_what_is_set() {
        let status = CertificateRequestStatus {
            certificate: Some(Base64Bytes::from("pem")),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            serde_json::json!({"certificate": "cGVt"})
        );
    }
}
