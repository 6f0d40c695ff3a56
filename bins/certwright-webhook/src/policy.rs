//! Validation of IssuancePolicies: every bad field named (wildcards, durations, key
//! sizes, the selector, the ticket check), by `certwright_policy::validate`, the same
//! rules the controller compiles policies with.

use certwright_api::IssuancePolicySpec;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use crate::admission::{Problem, deny};

/// The kind this module validates.
pub(crate) const KIND_POLICY: &str = "IssuancePolicy";

/// Admits an IssuancePolicy CREATE or UPDATE whose spec is valid; anything else about
/// the kind is allowed.
pub(crate) fn review(request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update)
        || request
            .sub_resource
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        return allowed;
    }
    let Some(object) = &request.object else {
        return deny(
            allowed,
            vec![Problem {
                field: String::new(),
                reason: "FieldValueRequired",
                message: "the IssuancePolicy request carries no object".to_string(),
            }],
        );
    };
    let spec = object
        .data
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let spec: IssuancePolicySpec = match serde_json::from_value(spec) {
        Ok(spec) => spec,
        Err(e) => {
            return deny(
                allowed,
                vec![Problem {
                    field: "spec".to_string(),
                    reason: "FieldValueInvalid",
                    message: format!("not a valid IssuancePolicy spec: {e}"),
                }],
            );
        }
    };
    let problems: Vec<Problem> = certwright_policy::validate(&spec)
        .into_iter()
        .map(Problem::from_field_error)
        .collect();
    if problems.is_empty() {
        allowed
    } else {
        deny(allowed, problems)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::{Value, json};

    fn request(spec: Value) -> AdmissionRequest<DynamicObject> {
        serde_json::from_value(json!({
            "uid": "req-1",
            "kind": {"group": "pki.certwright.io", "version": "v1alpha1", "kind": "IssuancePolicy"},
            "resource": {"group": "pki.certwright.io", "version": "v1alpha1", "resource": "issuancepolicies"},
            "name": "payments",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": {
                "apiVersion": "pki.certwright.io/v1alpha1",
                "kind": "IssuancePolicy",
                "metadata": {"name": "payments"},
                "spec": spec,
            },
            "oldObject": null,
            "dryRun": false,
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_policy_is_admitted() {
        let response = review(&request(json!({
            "allowed": {"dnsNames": {"values": ["*.payments.corp"]}},
            "constraints": {"maxDuration": "2160h"},
            "selector": {"namespace": {"matchNames": ["payments"]}},
        })));
        assert!(response.allowed, "{:?}", response.result);
    }

    #[test]
    fn every_bad_field_is_named() {
        let response = review(&request(json!({
            "allowed": {"dnsNames": {"values": [""]}, "usages": ["flying"]},
            "constraints": {"minDuration": "48h", "maxDuration": "24h"},
            "selector": {},
            "approval": {"mode": "Ticket", "ticket": {
                "url": "http://tickets.corp/{ticket}",
                "statusField": "status",
                "approvedValues": ["Approved"],
            }},
        })));
        assert!(!response.allowed);
        let message = response.result.message;
        for field in [
            "spec.allowed.dnsNames.values[0]",
            "spec.allowed.usages[0]",
            "spec.constraints.minDuration",
            "spec.selector",
            "spec.approval.ticket.url",
            "spec.approval.ticket.statusField",
        ] {
            assert!(message.contains(field), "{field} missing from {message}");
        }
    }

    #[test]
    fn a_spec_that_does_not_parse_is_named() {
        let response = review(&request(
            json!({"selector": {}, "approval": {"mode": "Sometimes"}}),
        ));
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .starts_with("spec: not a valid IssuancePolicy spec"),
            "{}",
            response.result.message
        );
    }
}
