//! One IssuancePolicy made ready to evaluate: durations parsed, usages checked, the
//! ticket URL template read. [`validate`] reports every problem with its field path
//! (the webhook refuses such a policy); [`Policy::compile`] keeps a policy that has
//! problems anyway, and such a policy denies every request it selects, naming them,
//! so a policy that slipped past the webhook never lets anything through.

use std::collections::BTreeMap;
use std::time::Duration;

use certwright_api::{
    AllowedString, AllowedStringSlice, ApprovalMode, FieldError, FieldErrorKind,
    IssuancePolicySpec, KeyUsage, TicketCheck, parse_duration,
};

use crate::request::Issuer;
use crate::ticket::{self, TicketConfig};
use crate::wildcard::{self, any_matches, check_pattern};

/// The most values one list field of a policy may hold.
pub const MAX_VALUES: usize = 256;

/// Why a policy with CEL validations is refused.
const CEL_REFUSED: &str = "approver-policy's CEL validations are not supported; express the rule with values (wildcards), or the policy would allow more than its author meant";

/// A policy ready to evaluate.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The policy's name.
    pub name: String,
    /// The policy as written.
    pub spec: IssuancePolicySpec,
    /// `constraints.minDuration`, parsed.
    pub min_duration: Option<Duration>,
    /// `constraints.maxDuration`, parsed.
    pub max_duration: Option<Duration>,
    /// How an allowed request is approved.
    pub mode: ApprovalMode,
    /// The ticket check, for mode `Ticket`.
    pub ticket: Option<TicketConfig>,
    /// What is wrong with the policy; a policy with problems denies what it selects.
    pub problems: Vec<FieldError>,
}

impl Policy {
    /// Makes `spec` ready to evaluate. Never fails: problems are kept in
    /// [`Policy::problems`].
    pub fn compile(name: &str, spec: &IssuancePolicySpec) -> Policy {
        let problems = validate(spec);
        let constraints = spec.constraints.as_ref();
        let duration = |value: Option<&String>| value.and_then(|v| parse_duration(v).ok());
        let approval = spec.approval.as_ref();
        let mode = approval.map(|a| a.mode).unwrap_or_default();
        let ticket = approval
            .and_then(|a| a.ticket.as_ref())
            .and_then(|t| TicketConfig::new(t).ok());
        Policy {
            name: name.to_string(),
            spec: spec.clone(),
            min_duration: duration(constraints.and_then(|c| c.min_duration.as_ref())),
            max_duration: duration(constraints.and_then(|c| c.max_duration.as_ref())),
            mode,
            ticket,
            problems,
        }
    }

    /// Whether the policy applies to a request for `issuer` in `namespace`, whose labels
    /// are `labels` (`None` when the namespace is not known: no label matches).
    pub fn selects(
        &self,
        issuer: &Issuer,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        self.selects_issuer(issuer) && self.selects_namespace(namespace, labels)
    }

    /// Whether the issuer part of the selector matches.
    pub fn selects_issuer(&self, issuer: &Issuer) -> bool {
        let Some(issuer_ref) = &self.spec.selector.issuer_ref else {
            return true;
        };
        let field = |pattern: &Option<String>, value: &str| {
            pattern
                .as_deref()
                .is_none_or(|p| wildcard::matches(p, value))
        };
        field(&issuer_ref.name, &issuer.name)
            && field(&issuer_ref.kind, &issuer.kind)
            && field(&issuer_ref.group, &issuer.group)
    }

    /// Whether the selector looks at namespace labels.
    pub fn uses_labels(&self) -> bool {
        self.spec
            .selector
            .namespace
            .as_ref()
            .and_then(|n| n.match_labels.as_ref())
            .is_some_and(|l| !l.is_empty())
    }

    /// Whether the namespace part of the selector matches.
    pub fn selects_namespace(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        let Some(selector) = &self.spec.selector.namespace else {
            return true;
        };
        if let Some(names) = &selector.match_names
            && !names.is_empty()
            && !any_matches(names, namespace)
        {
            return false;
        }
        if let Some(wanted) = &selector.match_labels
            && !wanted
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            return false;
        }
        true
    }
}

/// Every problem in a policy spec, each with its field path; empty when it is valid.
///
/// Checks: the selector sets `issuerRef` or `namespace`; every wildcard pattern is
/// usable; lists are bounded; usages are ones cert-manager knows; durations parse and
/// `minDuration <= maxDuration`; key sizes are ordered; a `Ticket` policy has a ticket
/// check whose URL is https with `{ticket}` in its path or query, whose status field is
/// a JSON pointer and whose Secret name is a DNS-1123 subdomain.
pub fn validate(spec: &IssuancePolicySpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut invalid = |field: String, detail: String| {
        errors.push(FieldError {
            field,
            kind: FieldErrorKind::Invalid,
            detail,
        });
    };
    if let Some(allowed) = &spec.allowed {
        let single =
            |field: &str, value: &Option<AllowedString>, out: &mut dyn FnMut(String, String)| {
                if let Some(AllowedString { value: Some(v), .. }) = value
                    && let Err(why) = check_pattern(v)
                {
                    out(format!("spec.allowed.{field}.value"), why);
                }
                if value.as_ref().is_some_and(|v| v.validations.is_some()) {
                    out(
                        format!("spec.allowed.{field}.validations"),
                        CEL_REFUSED.to_string(),
                    );
                }
            };
        let slice = |field: &str,
                     value: &Option<AllowedStringSlice>,
                     out: &mut dyn FnMut(String, String)| {
            if value.as_ref().is_some_and(|v| v.validations.is_some()) {
                out(
                    format!("spec.allowed.{field}.validations"),
                    CEL_REFUSED.to_string(),
                );
            }
            if let Some(AllowedStringSlice {
                values: Some(values),
                ..
            }) = value
            {
                if values.len() > MAX_VALUES {
                    out(
                        format!("spec.allowed.{field}.values"),
                        format!("holds {} values; at most {MAX_VALUES}", values.len()),
                    );
                }
                for (i, v) in values.iter().enumerate() {
                    if let Err(why) = check_pattern(v) {
                        out(format!("spec.allowed.{field}.values[{i}]"), why);
                    }
                }
            }
        };
        single("commonName", &allowed.common_name, &mut invalid);
        slice("dnsNames", &allowed.dns_names, &mut invalid);
        slice("ipAddresses", &allowed.ip_addresses, &mut invalid);
        slice("uris", &allowed.uris, &mut invalid);
        slice("emailAddresses", &allowed.email_addresses, &mut invalid);
        slice("templates", &allowed.templates, &mut invalid);
        if let Some(subject) = &allowed.subject {
            for (field, value) in subject_slices(subject) {
                slice(&format!("subject.{field}"), value, &mut invalid);
            }
            single("subject.serialNumber", &subject.serial_number, &mut invalid);
        }
        if let Some(usages) = &allowed.usages {
            for (i, usage) in usages.iter().enumerate() {
                if !known_usage(usage) {
                    invalid(
                        format!("spec.allowed.usages[{i}]"),
                        format!(
                            "{usage:?} is not a usage cert-manager knows (for example \"digital signature\", \"server auth\")"
                        ),
                    );
                }
            }
        }
    }
    if let Some(constraints) = &spec.constraints {
        let mut parsed = [None, None];
        for (slot, (field, value)) in [
            ("minDuration", &constraints.min_duration),
            ("maxDuration", &constraints.max_duration),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(v) = value {
                match parse_duration(v) {
                    Ok(d) => parsed[slot] = Some(d),
                    Err(e) => invalid(format!("spec.constraints.{field}"), format!("{v:?}: {e}")),
                }
            }
        }
        if let [Some(min), Some(max)] = parsed
            && min > max
        {
            invalid(
                "spec.constraints.minDuration".to_string(),
                "is longer than maxDuration".to_string(),
            );
        }
        if let Some(key) = &constraints.private_key
            && let (Some(min), Some(max)) = (key.min_size, key.max_size)
            && min > max
        {
            invalid(
                "spec.constraints.privateKey.minSize".to_string(),
                format!("{min} is larger than maxSize {max}"),
            );
        }
    }
    let selector = &spec.selector;
    if selector.issuer_ref.is_none() && selector.namespace.is_none() {
        errors.push(FieldError {
            field: "spec.selector".to_string(),
            kind: FieldErrorKind::Required,
            detail: "one of issuerRef or namespace must be set (`{}` in either matches everything)"
                .to_string(),
        });
    }
    let mut invalid = |field: String, detail: String| {
        errors.push(FieldError {
            field,
            kind: FieldErrorKind::Invalid,
            detail,
        });
    };
    if let Some(issuer_ref) = &selector.issuer_ref {
        for (field, value) in [
            ("name", &issuer_ref.name),
            ("kind", &issuer_ref.kind),
            ("group", &issuer_ref.group),
        ] {
            if let Some(v) = value
                && let Err(why) = check_pattern(v)
            {
                invalid(format!("spec.selector.issuerRef.{field}"), why);
            }
        }
    }
    if let Some(namespace) = &selector.namespace {
        if let Some(names) = &namespace.match_names {
            if names.len() > MAX_VALUES {
                invalid(
                    "spec.selector.namespace.matchNames".to_string(),
                    format!("holds {} names; at most {MAX_VALUES}", names.len()),
                );
            }
            for (i, v) in names.iter().enumerate() {
                if let Err(why) = check_pattern(v) {
                    invalid(format!("spec.selector.namespace.matchNames[{i}]"), why);
                }
            }
        }
        if let Some(labels) = &namespace.match_labels {
            for key in labels.keys() {
                if key.is_empty() || key.len() > 317 || key.chars().any(char::is_whitespace) {
                    invalid(
                        format!("spec.selector.namespace.matchLabels[{key:?}]"),
                        "is not a label key".to_string(),
                    );
                }
            }
        }
    }
    if let Some(approval) = &spec.approval {
        match (&approval.mode, &approval.ticket) {
            (ApprovalMode::Ticket, None) => errors.push(FieldError {
                field: "spec.approval.ticket".to_string(),
                kind: FieldErrorKind::Required,
                detail: "mode Ticket needs a ticket check".to_string(),
            }),
            (ApprovalMode::Ticket, Some(check)) => {
                errors.extend(validate_ticket(check));
            }
            (_, Some(_)) => errors.push(FieldError {
                field: "spec.approval.ticket".to_string(),
                kind: FieldErrorKind::Forbidden,
                detail: format!(
                    "is used only with mode Ticket, not {}",
                    approval.mode.as_str()
                ),
            }),
            (_, None) => {}
        }
    }
    errors
}

fn validate_ticket(check: &TicketCheck) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut invalid = |field: &str, detail: String| {
        errors.push(FieldError {
            field: format!("spec.approval.ticket.{field}"),
            kind: FieldErrorKind::Invalid,
            detail,
        });
    };
    if let Err(why) = ticket::check_url_template(&check.url) {
        invalid("url", why);
    }
    if let Err(why) = ticket::check_pointer(&check.status_field) {
        invalid("statusField", why);
    }
    if check.id_pattern.is_empty() {
        invalid(
            "idPattern",
            "is required: the ticket ids this policy accepts, for example \"SEC-*\"".to_string(),
        );
    } else if let Err(why) = check_pattern(&check.id_pattern) {
        invalid("idPattern", why);
    } else if check.id_pattern.chars().all(|c| c == '*') {
        invalid(
            "idPattern",
            "accepts a ticket of any project; name the change project (for example \"SEC-*\")"
                .to_string(),
        );
    }
    if let Some(field) = &check.reference_field
        && let Err(why) = ticket::check_pointer(field)
    {
        invalid("referenceField", why);
    }
    if check.approved_values.is_empty() {
        errors.push(FieldError {
            field: "spec.approval.ticket.approvedValues".to_string(),
            kind: FieldErrorKind::Required,
            detail: "name at least one state that means approved".to_string(),
        });
    }
    let mut invalid = |field: &str, detail: String| {
        errors.push(FieldError {
            field: format!("spec.approval.ticket.{field}"),
            kind: FieldErrorKind::Invalid,
            detail,
        });
    };
    for value in &check.approved_values {
        if check.rejected_values.contains(value) {
            invalid(
                "rejectedValues",
                format!("{value:?} is also in approvedValues"),
            );
        }
    }
    if let Some(annotation) = &check.annotation
        && !ticket::valid_annotation_key(annotation)
    {
        invalid(
            "annotation",
            format!("{annotation:?} is not an annotation key"),
        );
    }
    if let Some(name) = &check.credentials_secret_name
        && !valid_dns1123_subdomain(name)
    {
        invalid(
            "credentialsSecretName",
            format!("{name:?} is not a Secret name (a DNS-1123 subdomain)"),
        );
    }
    if let Some(bundle) = &check.ca_bundle
        && certwright_x509::parse_pem_bundle(bundle.as_ref()).is_err()
    {
        invalid("caBundle", "does not hold PEM certificates".to_string());
    }
    if let Some(interval) = &check.recheck_interval {
        match parse_duration(interval) {
            Ok(d) if d < Duration::from_secs(1) => {
                invalid("recheckInterval", "must be at least 1s".to_string());
            }
            Ok(d) if d > Duration::from_secs(24 * 3600) => {
                invalid("recheckInterval", "must be at most 24h".to_string());
            }
            Ok(_) => {}
            Err(e) => invalid("recheckInterval", format!("{interval:?}: {e}")),
        }
    }
    errors
}

/// The list-valued subject fields, by name.
pub(crate) fn subject_slices(
    subject: &certwright_api::AllowedSubject,
) -> [(&'static str, &Option<AllowedStringSlice>); 7] {
    [
        ("organizations", &subject.organizations),
        ("countries", &subject.countries),
        ("organizationalUnits", &subject.organizational_units),
        ("localities", &subject.localities),
        ("provinces", &subject.provinces),
        ("streetAddresses", &subject.street_addresses),
        ("postalCodes", &subject.postal_codes),
    ]
}

/// Whether cert-manager knows the usage (its `KeyUsage` spelling).
pub fn known_usage(usage: &str) -> bool {
    serde_json::from_value::<KeyUsage>(serde_json::Value::String(usage.to_string()))
        .is_ok_and(|u| u != KeyUsage::Unknown)
}

fn valid_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(yaml: &str) -> IssuancePolicySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn fields(spec: &IssuancePolicySpec) -> Vec<String> {
        validate(spec).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_good_policy_has_no_problems() {
        let s = spec(
            r#"
allowed:
  dnsNames: { values: ["*.corp"] }
  usages: ["digital signature", "server auth"]
constraints: { minDuration: 1h, maxDuration: 720h, privateKey: { algorithm: RSA, minSize: 2048 } }
selector: { namespace: { matchNames: ["team-*"] } }
approval:
  mode: Ticket
  ticket:
    url: https://jira.corp/rest/api/2/issue/{ticket}
    idPattern: SEC-*
    statusField: /fields/status/name
    approvedValues: [Approved]
    rejectedValues: [Rejected]
    credentialsSecretName: jira-token
"#,
        );
        assert_eq!(validate(&s), []);
        let p = Policy::compile("p", &s);
        assert_eq!(p.max_duration, Some(Duration::from_secs(720 * 3600)));
        assert!(p.ticket.is_some());
    }

    #[test]
    fn every_bad_field_is_named() {
        let s = spec(
            r#"
allowed:
  commonName: { value: "" }
  dnsNames: { values: ["ok", "bad\u0001"] }
  usages: ["server auth", "flying"]
constraints: { minDuration: 10h, maxDuration: 1h, privateKey: { minSize: 4096, maxSize: 2048 } }
selector: {}
approval:
  mode: Ticket
  ticket:
    url: http://jira.corp/issue
    statusField: fields.status
    approvedValues: []
    credentialsSecretName: Not_A_Name
    recheckInterval: 100ms
"#,
        );
        let got = fields(&s);
        for want in [
            "spec.allowed.commonName.value",
            "spec.allowed.dnsNames.values[1]",
            "spec.allowed.usages[1]",
            "spec.constraints.minDuration",
            "spec.constraints.privateKey.minSize",
            "spec.selector",
            "spec.approval.ticket.url",
            "spec.approval.ticket.statusField",
            "spec.approval.ticket.approvedValues",
            "spec.approval.ticket.credentialsSecretName",
            "spec.approval.ticket.recheckInterval",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} missing from {got:?}");
        }
    }

    #[test]
    fn cel_validations_are_refused_by_name() {
        let s = spec(
            "selector: { namespace: {} }\nallowed: { dnsNames: { values: ['*'], validations: [{ rule: \"self.endsWith('.svc')\" }] }, commonName: { validations: [] } }",
        );
        assert_eq!(
            fields(&s),
            [
                "spec.allowed.commonName.validations",
                "spec.allowed.dnsNames.validations"
            ]
        );
    }

    #[test]
    fn ticket_mode_needs_a_check_and_other_modes_refuse_one() {
        let s = spec("selector: { namespace: {} }\napproval: { mode: Ticket }");
        assert_eq!(fields(&s), ["spec.approval.ticket"]);
        let s = spec(
            "selector: { namespace: {} }\napproval: { mode: Manual, ticket: { url: 'https://t/{ticket}', idPattern: 'T-*', statusField: /s, approvedValues: [a] } }",
        );
        assert_eq!(fields(&s), ["spec.approval.ticket"]);
    }

    #[test]
    fn selector_matches_issuer_fields_and_namespace() {
        let p = Policy::compile(
            "p",
            &spec(
                r#"
selector:
  issuerRef: { name: "internal-*", kind: ClusterIssuer }
  namespace: { matchNames: [payments, "team-*"], matchLabels: { tier: prod } }
"#,
            ),
        );
        let issuer = Issuer {
            name: "internal-pki".to_string(),
            kind: "ClusterIssuer".to_string(),
            group: "cert-manager.io".to_string(),
        };
        let prod: BTreeMap<String, String> = [("tier".to_string(), "prod".to_string())].into();
        assert!(p.selects(&issuer, "payments", Some(&prod)));
        assert!(p.selects(&issuer, "team-a", Some(&prod)));
        assert!(!p.selects(&issuer, "payments", None));
        assert!(!p.selects(&issuer, "other", Some(&prod)));
        let other = Issuer {
            kind: "Issuer".to_string(),
            ..issuer
        };
        assert!(!p.selects(&other, "payments", Some(&prod)));
    }

    #[test]
    fn usages_are_cert_managers() {
        assert!(known_usage("server auth"));
        assert!(known_usage("digital signature"));
        assert!(!known_usage("flying"));
    }
}
