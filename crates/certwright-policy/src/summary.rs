//! A plain-text summary of the policies that apply in a namespace, for the ConfigMap the
//! controller keeps there with `--publish-policy-summaries`: what names, usages, keys
//! and lifetimes a Certificate may ask for, and how it is approved.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use certwright_api::{AllowedString, AllowedStringSlice};

use crate::evaluate::{Evaluation, PolicySet};
use crate::policy::{Policy, subject_slices};
use crate::request::CERT_MANAGER_DEFAULT_USAGES;

/// The summary for `namespace` (with `labels`), or `None` when no policy's namespace
/// selector matches it.
pub fn namespace_summary(
    set: &PolicySet,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
    evaluation: Evaluation,
) -> Option<String> {
    let applying: Vec<&Policy> = set
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| p.selects_namespace(namespace, labels))
        .collect();
    if applying.is_empty() {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "IssuancePolicies for CertificateRequests in namespace {namespace}.\n\
         Kept by certwright from the cluster's IssuancePolicies; edits here are overwritten."
    );
    let _ = writeln!(
        out,
        "{}\n",
        match evaluation {
            Evaluation::All =>
                "Every policy below that selects a request's issuer must allow the request.",
            Evaluation::Any =>
                "One policy below that selects a request's issuer, and that the requester may use, must allow the request.",
        }
    );
    for policy in applying {
        describe(&mut out, policy);
        out.push('\n');
    }
    Some(out)
}

fn describe(out: &mut String, policy: &Policy) {
    let spec = &policy.spec;
    let _ = writeln!(out, "{}", policy.name);
    let issuers = match &spec.selector.issuer_ref {
        None => "any".to_string(),
        Some(r) => format!(
            "kind {}, name {}, group {}",
            r.kind.as_deref().unwrap_or("*"),
            r.name.as_deref().unwrap_or("*"),
            r.group.as_deref().unwrap_or("*")
        ),
    };
    line(out, "issuers", &issuers);
    let approval = spec.approval.as_ref();
    let mut mode = policy.mode.as_str().to_string();
    if let Some(who) = approval.and_then(|a| a.approvers.as_deref()) {
        let _ = write!(mode, " (approvers: {who})");
    }
    if let Some(ticket) = &policy.ticket {
        let _ = write!(
            mode,
            " (annotation {}: an approved change ticket matching {}",
            ticket.annotation, ticket.id_pattern
        );
        if let Some(field) = &ticket.reference_field {
            let _ = write!(mode, ", whose {field} names <namespace>/<certificate>");
        }
        mode.push(')');
    }
    line(out, "approval", &mode);
    if !policy.problems.is_empty() {
        line(
            out,
            "INVALID",
            "this policy denies every request it selects; ask its owners to fix it",
        );
    }
    let nothing = certwright_api::Allowed::default();
    let allowed = spec.allowed.as_ref().unwrap_or(&nothing);
    line(out, "commonName", &single(allowed.common_name.as_ref()));
    line(out, "dnsNames", &slice(allowed.dns_names.as_ref()));
    line(out, "ipAddresses", &slice(allowed.ip_addresses.as_ref()));
    line(out, "uris", &slice(allowed.uris.as_ref()));
    line(
        out,
        "emailAddresses",
        &slice(allowed.email_addresses.as_ref()),
    );
    line(
        out,
        "templates (pki.certwright.io/template)",
        &slice(allowed.templates.as_ref()),
    );
    if let Some(subject) = &allowed.subject {
        for (field, value) in subject_slices(subject) {
            if value.is_some() {
                line(out, &format!("subject.{field}"), &slice(value.as_ref()));
            }
        }
        if subject.serial_number.is_some() {
            line(
                out,
                "subject.serialNumber",
                &single(subject.serial_number.as_ref()),
            );
        }
    }
    let usages = match &allowed.usages {
        Some(u) if u.is_empty() => "none".to_string(),
        Some(u) => u.join(", "),
        None => format!(
            "{} (cert-manager's defaults)",
            CERT_MANAGER_DEFAULT_USAGES.join(", ")
        ),
    };
    line(out, "usages", &usages);
    line(
        out,
        "isCA",
        if allowed.is_ca == Some(true) {
            "allowed"
        } else {
            "not allowed"
        },
    );
    let constraints = spec.constraints.as_ref();
    let duration = match (
        constraints.and_then(|c| c.min_duration.as_deref()),
        constraints.and_then(|c| c.max_duration.as_deref()),
    ) {
        (None, None) => "any".to_string(),
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (Some(min), Some(max)) => format!("{min} to {max}"),
    };
    line(out, "duration", &duration);
    let key = match constraints.and_then(|c| c.private_key.as_ref()) {
        None => "any".to_string(),
        Some(k) => {
            let mut parts = vec![
                k.algorithm
                    .map_or("any algorithm", |a| a.as_str())
                    .to_string(),
            ];
            if let Some(min) = k.min_size {
                parts.push(format!("at least {min} bits"));
            }
            if let Some(max) = k.max_size {
                parts.push(format!("at most {max} bits"));
            }
            parts.join(", ")
        }
    };
    line(out, "privateKey", &key);
}

fn line(out: &mut String, field: &str, value: &str) {
    let _ = writeln!(out, "  {field}: {value}");
}

fn single(value: Option<&AllowedString>) -> String {
    match value.and_then(|a| a.value.as_deref()) {
        None => "not allowed".to_string(),
        Some(v) if value.is_some_and(|a| a.required == Some(true)) => format!("{v} (required)"),
        Some(v) => v.to_string(),
    }
}

fn slice(value: Option<&AllowedStringSlice>) -> String {
    match value.and_then(|a| a.values.as_deref()) {
        None | Some([]) => "not allowed".to_string(),
        Some(values) if value.is_some_and(|a| a.required == Some(true)) => {
            format!("{} (at least one required)", values.join(", "))
        }
        Some(values) => values.join(", "),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Arc;

    #[test]
    fn summarises_the_policies_of_a_namespace() {
        let spec = serde_yaml_ng::from_str(
            r##"
allowed:
  dnsNames: { values: ["*.payments.corp"] }
  usages: ["digital signature", "server auth"]
constraints: { minDuration: 168h, maxDuration: 2160h, privateKey: { algorithm: ECDSA, minSize: 256 } }
selector: { issuerRef: { name: corp, kind: ClusterIssuer }, namespace: { matchNames: [payments] } }
approval: { mode: Manual, approvers: "#pki-approvals" }
"##,
        )
        .unwrap();
        let set = PolicySet::new([Arc::new(Policy::compile("payments", &spec))]);
        let text = namespace_summary(&set, "payments", None, Evaluation::All).unwrap();
        for want in [
            "payments\n",
            "issuers: kind ClusterIssuer, name corp, group *",
            "approval: Manual (approvers: #pki-approvals)",
            "dnsNames: *.payments.corp",
            "commonName: not allowed",
            "duration: 168h to 2160h",
            "privateKey: ECDSA, at least 256 bits",
            "isCA: not allowed",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert_eq!(
            namespace_summary(&set, "other", None, Evaluation::All),
            None
        );
    }
}
