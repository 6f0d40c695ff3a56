//! Evaluation: which policies apply to a request, what each finds wrong with it, and
//! the verdict. With [`Evaluation::All`] (the default) every applicable policy must
//! allow the request and the strictest approval mode among them decides how it is
//! approved; with [`Evaluation::Any`] one allowing policy is enough and the most lenient
//! mode among the allowing ones decides.
//!
//! One file because it is one decision, what each policy finds and how the findings
//! combine, with its unit and property tests beside it (over half of the file).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use certwright_api::{AllowedString, AllowedStringSlice, ApprovalMode};

use crate::policy::{Policy, subject_slices};
use crate::request::{CERT_MANAGER_DEFAULT_USAGES, RequestFacts};
use crate::ticket::TicketConfig;
use crate::wildcard::{any_matches, matches};

/// How the applicable policies combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Evaluation {
    /// Every applicable policy must allow the request (layered governance).
    #[default]
    All,
    /// One applicable policy that allows the request is enough (approver-policy's
    /// semantics; the engine then counts a policy as applicable only when the requester
    /// may `use` it).
    Any,
}

impl Evaluation {
    /// The flag value: `all` or `any`.
    pub fn as_str(self) -> &'static str {
        match self {
            Evaluation::All => "all",
            Evaluation::Any => "any",
        }
    }
}

/// One thing a policy does not allow in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The policy.
    pub policy: String,
    /// The request's field, e.g. `dnsNames[1]` or `spec.duration`.
    pub field: String,
    /// What is wrong, e.g. `"x.other.corp" not allowed`.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {}", self.policy, self.field, self.detail)
    }
}

/// A ticket check a request must pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketDue {
    /// The policy that asks for it.
    pub policy: String,
    /// How to check the ticket.
    pub config: TicketConfig,
}

/// What to do with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No policy applies.
    Unmatched,
    /// Denied, with every violation (of every applicable policy under
    /// [`Evaluation::All`]; of every applicable policy when none allows it under
    /// [`Evaluation::Any`]).
    Denied {
        /// The violations, by policy then field.
        violations: Vec<Violation>,
    },
    /// Approve now; these policies allowed it.
    Approved {
        /// The policies that allowed it.
        policies: Vec<String>,
    },
    /// Allowed, but a person must approve it.
    Manual {
        /// The policies that ask for a person.
        policies: Vec<String>,
        /// Who approves, as those policies say.
        approvers: Vec<String>,
    },
    /// Allowed, and approved once the ticket system confirms a change ticket.
    Ticket {
        /// The checks: under [`Evaluation::All`] every one must pass; under
        /// [`Evaluation::Any`] one is enough.
        checks: Vec<TicketDue>,
        /// Whether every check must pass.
        all: bool,
        /// The policies that allowed it.
        policies: Vec<String>,
    },
}

impl Verdict {
    /// The Denied message: every violation, `; `-separated.
    pub fn denial_message(violations: &[Violation]) -> String {
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The policies in the cache, ready to evaluate, sorted by name.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    policies: Vec<Arc<Policy>>,
}

impl PolicySet {
    /// A set of compiled policies.
    pub fn new(policies: impl IntoIterator<Item = Arc<Policy>>) -> PolicySet {
        let mut policies: Vec<Arc<Policy>> = policies.into_iter().collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        PolicySet { policies }
    }

    /// How many policies there are.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.iter()
    }

    /// The policies whose selector matches the request, by name. `labels` are the
    /// labels of the request's namespace (`None` when it is not known).
    pub fn applicable(
        &self,
        facts: &RequestFacts,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Vec<&Policy> {
        self.policies
            .iter()
            .filter(|p| p.selects(&facts.issuer, &facts.namespace, labels))
            .map(AsRef::as_ref)
            .collect()
    }

    /// The verdict on a request under [`Evaluation::All`], or under
    /// [`Evaluation::Any`] counting every applicable policy as usable.
    pub fn evaluate(
        &self,
        facts: &RequestFacts,
        labels: Option<&BTreeMap<String, String>>,
        evaluation: Evaluation,
    ) -> Verdict {
        decide(&self.applicable(facts, labels), facts, evaluation)
    }
}

/// The verdict on a request, given the policies that apply to it.
pub fn decide(applicable: &[&Policy], facts: &RequestFacts, evaluation: Evaluation) -> Verdict {
    if applicable.is_empty() {
        return Verdict::Unmatched;
    }
    let mut violations = Vec::new();
    let mut allowing: Vec<&Policy> = Vec::new();
    for policy in applicable {
        let found = check(policy, facts);
        if found.is_empty() {
            allowing.push(policy);
        }
        violations.extend(found);
    }
    let deciding: Vec<&Policy> = match evaluation {
        Evaluation::All if !violations.is_empty() => return Verdict::Denied { violations },
        Evaluation::All => applicable.to_vec(),
        Evaluation::Any if allowing.is_empty() => return Verdict::Denied { violations },
        Evaluation::Any => {
            // The most lenient mode among the policies that allow it.
            let mode = allowing
                .iter()
                .map(|p| p.mode)
                .min_by_key(|m| strictness(*m))
                .unwrap_or_default();
            allowing.into_iter().filter(|p| p.mode == mode).collect()
        }
    };
    let mode = deciding
        .iter()
        .map(|p| p.mode)
        .max_by_key(|m| strictness(*m))
        .unwrap_or_default();
    let names = |ps: &[&Policy]| ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    match mode {
        ApprovalMode::Automatic => Verdict::Approved {
            policies: names(&deciding),
        },
        ApprovalMode::Manual => {
            let manual: Vec<&Policy> = deciding
                .iter()
                .copied()
                .filter(|p| p.mode == ApprovalMode::Manual)
                .collect();
            let mut approvers: Vec<String> = manual
                .iter()
                .filter_map(|p| p.spec.approval.as_ref()?.approvers.clone())
                .collect();
            approvers.sort();
            approvers.dedup();
            Verdict::Manual {
                policies: names(&manual),
                approvers,
            }
        }
        ApprovalMode::Ticket => Verdict::Ticket {
            checks: deciding
                .iter()
                .filter(|p| p.mode == ApprovalMode::Ticket)
                .filter_map(|p| {
                    Some(TicketDue {
                        policy: p.name.clone(),
                        config: p.ticket.clone()?,
                    })
                })
                .collect(),
            all: evaluation == Evaluation::All,
            policies: names(&deciding),
        },
    }
}

/// Automatic < Ticket < Manual.
fn strictness(mode: ApprovalMode) -> u8 {
    match mode {
        ApprovalMode::Automatic => 0,
        ApprovalMode::Ticket => 1,
        ApprovalMode::Manual => 2,
    }
}

/// Everything `policy` does not allow in the request (empty: it allows it).
pub fn check(policy: &Policy, facts: &RequestFacts) -> Vec<Violation> {
    let mut out = Found {
        policy: &policy.name,
        violations: Vec::new(),
    };
    for problem in &policy.problems {
        out.add(
            "policy",
            format!("is invalid and allows nothing: {problem}"),
        );
    }
    let nothing = certwright_api::Allowed::default();
    let allowed = policy.spec.allowed.as_ref().unwrap_or(&nothing);
    out.every(
        "commonName",
        allowed.common_name.as_ref(),
        &string_values(facts, "CN"),
    );
    out.slice("dnsNames", allowed.dns_names.as_ref(), &facts.dns_names);
    out.slice(
        "ipAddresses",
        allowed.ip_addresses.as_ref(),
        &facts.ip_addresses,
    );
    out.slice("uris", allowed.uris.as_ref(), &facts.uris);
    out.slice(
        "emailAddresses",
        allowed.email_addresses.as_ref(),
        &facts.email_addresses,
    );
    for (i, other) in facts.other_names.iter().enumerate() {
        out.add(
            &format!("otherNames[{i}]"),
            format!("{other:?} not allowed (no policy field allows this kind of name)"),
        );
    }
    check_subject(&mut out, allowed.subject.as_ref(), facts);
    for (i, oid) in facts.other_extensions.iter().enumerate() {
        out.add(
            &format!("extensions[{i}]"),
            format!("{oid} not allowed (a CA may honour it, and no policy field can check it)"),
        );
    }
    for (i, oid) in facts.other_attributes.iter().enumerate() {
        out.add(
            &format!("attributes[{i}]"),
            format!("{oid} not allowed (a CA may honour it, and no policy field can check it)"),
        );
    }
    if facts.template.is_none()
        && allowed
            .templates
            .as_ref()
            .is_some_and(|t| t.required == Some(true))
    {
        out.add(
            "metadata.annotations[pki.certwright.io/template]",
            "is required".to_string(),
        );
    }
    if let Some(template) = &facts.template {
        let patterns = allowed
            .templates
            .as_ref()
            .and_then(|t| t.values.as_deref())
            .unwrap_or_default();
        if !any_matches(patterns, template) {
            out.add(
                "metadata.annotations[pki.certwright.io/template]",
                format!("{template:?} not allowed"),
            );
        }
    }
    let default_usages: Vec<String> = CERT_MANAGER_DEFAULT_USAGES
        .iter()
        .map(|u| (*u).to_string())
        .collect();
    let allowed_usages = allowed.usages.as_ref().unwrap_or(&default_usages);
    for usage in &facts.usages {
        if !allowed_usages.contains(usage) {
            out.add("usages", format!("{usage:?} not allowed"));
        }
    }
    if facts.is_ca && allowed.is_ca != Some(true) {
        out.add("isCA", "true not allowed (no CA certificates)".to_string());
    }
    if let Some(min) = policy.min_duration
        && facts.effective_duration() < min
    {
        out.add(
            "spec.duration",
            format!(
                "{} is shorter than minDuration {}",
                facts.describe_duration(),
                crate::request::short_duration(min)
            ),
        );
    }
    if let Some(max) = policy.max_duration
        && facts.effective_duration() > max
    {
        out.add(
            "spec.duration",
            format!(
                "{} exceeds maxDuration {}",
                facts.describe_duration(),
                crate::request::short_duration(max)
            ),
        );
    }
    if let Some(key) = policy
        .spec
        .constraints
        .as_ref()
        .and_then(|c| c.private_key.as_ref())
    {
        if let Some(algorithm) = key.algorithm
            && facts.key.algorithm != Some(algorithm)
        {
            out.add(
                "privateKey",
                format!("{} is not {}", facts.key.description, algorithm.as_str()),
            );
        }
        if let Some(min) = key.min_size
            && facts.key.size < min
        {
            out.add(
                "privateKey",
                format!("{} is smaller than minSize {min}", facts.key.description),
            );
        }
        if let Some(max) = key.max_size
            && facts.key.size > max
        {
            out.add(
                "privateKey",
                format!("{} is larger than maxSize {max}", facts.key.description),
            );
        }
    }
    out.violations
}

struct Found<'a> {
    policy: &'a str,
    violations: Vec<Violation>,
}

impl Found<'_> {
    fn add(&mut self, field: &str, detail: String) {
        self.violations.push(Violation {
            policy: self.policy.to_string(),
            field: field.to_string(),
            detail,
        });
    }

    /// A single-valued field, as approver-policy reads it: a value must match the
    /// policy's `value` (no `value`: no value is allowed); absent, it must not be
    /// `required`. Every occurrence is checked (a subject may repeat an attribute).
    fn every(&mut self, field: &str, allowed: Option<&AllowedString>, values: &[String]) {
        if values.is_empty() {
            if allowed.is_some_and(|a| a.required == Some(true)) {
                self.add(field, "is required".to_string());
            }
            return;
        }
        if values.len() > 1 {
            self.add(
                field,
                format!("appears {} times; at most once", values.len()),
            );
        }
        for v in values {
            match allowed.and_then(|a| a.value.as_deref()) {
                Some(pattern) if matches(pattern, v) => {}
                _ => self.add(field, format!("{v:?} not allowed")),
            }
        }
    }

    /// A list field, as approver-policy reads it: each value must match one of the
    /// policy's `values` (no `values`: no value is allowed); at least one if
    /// `required`.
    fn slice(&mut self, field: &str, allowed: Option<&AllowedStringSlice>, values: &[String]) {
        if values.is_empty() && allowed.is_some_and(|a| a.required == Some(true)) {
            self.add(field, "at least one is required".to_string());
        }
        let patterns = allowed
            .and_then(|a| a.values.as_deref())
            .unwrap_or_default();
        for (i, v) in values.iter().enumerate() {
            if !any_matches(patterns, v) {
                self.add(&format!("{field}[{i}]"), format!("{v:?} not allowed"));
            }
        }
    }
}

/// Subject attributes by the short names a CSR carries them under.
const SUBJECT_KINDS: [(&str, &str); 7] = [
    ("organizations", "O"),
    ("countries", "C"),
    ("organizationalUnits", "OU"),
    ("localities", "L"),
    ("provinces", "ST"),
    ("streetAddresses", "STREET"),
    ("postalCodes", "postalCode"),
];

fn check_subject(
    out: &mut Found<'_>,
    allowed: Option<&certwright_api::AllowedSubject>,
    facts: &RequestFacts,
) {
    let empty = certwright_api::AllowedSubject::default();
    let allowed = allowed.unwrap_or(&empty);
    for ((field, slice), (_, kind)) in subject_slices(allowed).into_iter().zip(SUBJECT_KINDS) {
        out.slice(
            &format!("subject.{field}"),
            slice.as_ref(),
            &string_values(facts, kind),
        );
    }
    out.every(
        "subject.serialNumber",
        allowed.serial_number.as_ref(),
        &string_values(facts, "serialNumber"),
    );
    for (i, (kind, value)) in facts.subject.iter().enumerate() {
        let known =
            kind == "CN" || kind == "serialNumber" || SUBJECT_KINDS.iter().any(|(_, k)| k == kind);
        if !known {
            out.add(
                &format!("subject[{i}]"),
                format!("attribute {kind} not allowed (no policy field allows it)"),
            );
        } else if value.is_none() {
            out.add(
                &format!("subject[{i}]"),
                format!(
                    "attribute {kind} is not a string a policy can check (use UTF8String or PrintableString)"
                ),
            );
        }
    }
}

/// The string values of one kind of subject attribute, in order.
fn string_values(facts: &RequestFacts, kind: &str) -> Vec<String> {
    facts
        .subject
        .iter()
        .filter(|(k, _)| k == kind)
        .filter_map(|(_, v)| v.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::request::{Issuer, KeyFacts};
    use certwright_api::{IssuancePolicySpec, KeyAlgorithmName};
    use std::time::Duration;

    fn policy(name: &str, yaml: &str) -> Arc<Policy> {
        let spec: IssuancePolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
        Arc::new(Policy::compile(name, &spec))
    }

    fn facts() -> RequestFacts {
        let mut facts = RequestFacts::new(
            "payments",
            "api-1",
            Issuer {
                name: "corp".to_string(),
                kind: "ClusterIssuer".to_string(),
                group: "cert-manager.io".to_string(),
            },
        );
        facts.duration = Some(Duration::from_secs(720 * 3600));
        facts.usages = vec!["digital signature".to_string(), "server auth".to_string()];
        facts.common_name = Some("api.payments.corp".to_string());
        facts.dns_names = vec!["api.payments.corp".to_string()];
        facts.subject = vec![("CN".to_string(), Some("api.payments.corp".to_string()))];
        facts.key = KeyFacts {
            algorithm: Some(KeyAlgorithmName::Ecdsa),
            size: 256,
            description: "ECDSA P-256".to_string(),
        };
        facts
    }

    const BASE: &str = r#"
allowed:
  commonName: { value: "*" }
  dnsNames: { values: ["*"] }
  usages: ["digital signature", "key encipherment", "server auth"]
constraints: { maxDuration: 2160h, privateKey: { minSize: 256 } }
selector: { namespace: { matchNames: ["*"] } }
"#;
    const TEAM: &str = r#"
allowed:
  commonName: { value: "*.payments.corp" }
  dnsNames: { values: ["*.payments.corp"], required: true }
  usages: ["digital signature", "key encipherment", "server auth"]
selector: { namespace: { matchNames: [payments] } }
"#;

    #[test]
    fn all_applicable_policies_must_allow() {
        let set = PolicySet::new([policy("base", BASE), policy("team", TEAM)]);
        assert_eq!(
            set.evaluate(&facts(), None, Evaluation::All),
            Verdict::Approved {
                policies: vec!["base".to_string(), "team".to_string()]
            }
        );
        let mut f = facts();
        f.dns_names.push("x.other.corp".to_string());
        f.duration = Some(Duration::from_secs(2400 * 3600));
        let Verdict::Denied { violations } = set.evaluate(&f, None, Evaluation::All) else {
            panic!("not denied")
        };
        assert_eq!(
            Verdict::denial_message(&violations),
            "base: spec.duration 2400h exceeds maxDuration 2160h; team: dnsNames[1] \"x.other.corp\" not allowed"
        );
    }

    #[test]
    fn any_needs_one_allowing_policy() {
        let set = PolicySet::new([policy("base", BASE), policy("team", TEAM)]);
        let mut f = facts();
        f.dns_names.push("x.other.corp".to_string());
        assert_eq!(
            set.evaluate(&f, None, Evaluation::Any),
            Verdict::Approved {
                policies: vec!["base".to_string()]
            }
        );
        f.duration = Some(Duration::from_secs(2400 * 3600));
        assert!(matches!(
            set.evaluate(&f, None, Evaluation::Any),
            Verdict::Denied { .. }
        ));
    }

    #[test]
    fn nothing_applies_outside_the_selectors() {
        let set = PolicySet::new([policy("team", TEAM)]);
        let mut f = facts();
        f.namespace = "other".to_string();
        assert_eq!(set.evaluate(&f, None, Evaluation::All), Verdict::Unmatched);
    }

    #[test]
    fn fields_a_policy_does_not_name_are_not_allowed() {
        let p = policy("p", "selector: { namespace: {} }");
        let mut f = facts();
        f.is_ca = true;
        f.ip_addresses = vec!["10.0.0.1".to_string()];
        f.subject.push(("O".to_string(), Some("Evil".to_string())));
        f.subject.push(("title".to_string(), Some("x".to_string())));
        let got: Vec<String> = check(&p, &f).iter().map(|v| v.field.clone()).collect();
        for want in [
            "commonName",
            "dnsNames[0]",
            "ipAddresses[0]",
            "subject.organizations[0]",
            "subject[2]",
            "usages",
            "isCA",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} missing from {got:?}");
        }
    }

    #[test]
    fn key_and_duration_constraints() {
        let p = policy(
            "p",
            r#"
allowed: { commonName: { value: "*" }, dnsNames: { values: ["*"] }, usages: ["digital signature", "server auth"] }
constraints: { minDuration: 1000h, privateKey: { algorithm: RSA, minSize: 4096 } }
selector: { namespace: {} }
"#,
        );
        let found: Vec<String> = check(&p, &facts())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "p: spec.duration 720h is shorter than minDuration 1000h",
                "p: privateKey ECDSA P-256 is not RSA",
                "p: privateKey ECDSA P-256 is smaller than minSize 4096",
            ]
        );
    }

    #[test]
    fn the_strictest_mode_decides_under_all() {
        let manual = policy(
            "manual",
            "selector: { namespace: {} }\nallowed: { commonName: { value: '*' }, dnsNames: { values: ['*'] }, usages: ['digital signature', 'server auth'] }\napproval: { mode: Manual, approvers: security team }",
        );
        let set = PolicySet::new([policy("base", BASE), manual]);
        assert_eq!(
            set.evaluate(&facts(), None, Evaluation::All),
            Verdict::Manual {
                policies: vec!["manual".to_string()],
                approvers: vec!["security team".to_string()],
            }
        );
        // Under any, the lenient policy is enough.
        assert!(matches!(
            set.evaluate(&facts(), None, Evaluation::Any),
            Verdict::Approved { .. }
        ));
    }

    #[test]
    fn a_ticket_policy_asks_for_its_ticket() {
        let ticket = policy(
            "change",
            r#"
selector: { namespace: {} }
allowed: { commonName: { value: '*' }, dnsNames: { values: ['*'] }, usages: ['digital signature', 'server auth'] }
approval:
  mode: Ticket
  ticket: { url: "https://t.corp/{ticket}", idPattern: "T-*", statusField: /state, approvedValues: [approved] }
"#,
        );
        let Verdict::Ticket { checks, all, .. } =
            PolicySet::new([ticket]).evaluate(&facts(), None, Evaluation::All)
        else {
            panic!("no ticket verdict")
        };
        assert!(all);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].policy, "change");
    }

    #[test]
    fn every_common_name_and_every_odd_attribute_is_checked() {
        let p = policy(
            "p",
            "selector: { namespace: {} }\nallowed: { commonName: { value: '*.payments.corp' }, dnsNames: { values: ['*'] }, usages: ['digital signature', 'server auth'] }",
        );
        let mut f = facts();
        // A second CN (which some software reads first) is checked too.
        f.subject
            .insert(0, ("CN".to_string(), Some("admin".to_string())));
        let found: Vec<String> = check(&p, &f).iter().map(ToString::to_string).collect();
        assert!(
            found.contains(&"p: commonName appears 2 times; at most once".to_string()),
            "{found:?}"
        );
        assert!(
            found.contains(&"p: commonName \"admin\" not allowed".to_string()),
            "{found:?}"
        );
        // A CN that is not a string cannot be checked: refused.
        let mut f = facts();
        f.subject = vec![("CN".to_string(), None)];
        let found: Vec<String> = check(&p, &f).iter().map(|v| v.field.clone()).collect();
        assert_eq!(found, ["subject[0]"]);
        // Extensions and attributes no field can check are refused.
        let mut f = facts();
        f.other_extensions = vec!["1.3.6.1.4.1.311.21.10".to_string()];
        f.other_attributes = vec!["1.3.6.1.4.1.311.13.2.1".to_string()];
        let found: Vec<String> = check(&p, &f).iter().map(|v| v.field.clone()).collect();
        assert_eq!(found, ["extensions[0]", "attributes[0]"]);
    }

    #[test]
    fn fields_without_values_allow_no_value_as_approver_policy_reads_them() {
        let p = policy(
            "p",
            "selector: { namespace: {} }\nallowed: { commonName: { required: true }, dnsNames: { required: true }, usages: ['digital signature', 'server auth'] }",
        );
        let found: Vec<String> = check(&p, &facts())
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(found, ["commonName", "dnsNames[0]"]);
        // A template the policy does not list is refused.
        let mut f = facts();
        f.subject.clear();
        f.dns_names.clear();
        f.template = Some("SubCA".to_string());
        let found: Vec<String> = check(&p, &f).iter().map(ToString::to_string).collect();
        assert!(
            found.contains(
                &"p: metadata.annotations[pki.certwright.io/template] \"SubCA\" not allowed"
                    .to_string()
            ),
            "{found:?}"
        );
    }

    #[test]
    fn a_listed_template_is_allowed_and_a_required_one_must_be_named() {
        let p = policy(
            "p",
            "selector: { namespace: {} }\nallowed: { commonName: { value: '*' }, dnsNames: { values: ['*'] }, usages: ['digital signature', 'server auth'], templates: { values: ['Web*'], required: true } }",
        );
        let mut f = facts();
        f.template = Some("WebServer".to_string());
        assert!(check(&p, &f).is_empty());
        f.template = None;
        let found: Vec<String> = check(&p, &f).iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            ["p: metadata.annotations[pki.certwright.io/template] is required"]
        );
    }

    #[test]
    fn an_empty_name_list_selects_every_namespace() {
        let p = policy("p", "selector: { namespace: { matchNames: [] } }");
        assert!(p.selects(&facts().issuer, "anything", None));
    }

    #[test]
    fn an_unset_duration_is_the_issuers_default() {
        let p = policy(
            "p",
            "selector: { namespace: {} }\nallowed: { commonName: { value: '*' }, dnsNames: { values: ['*'] }, usages: ['digital signature', 'server auth'] }\nconstraints: { maxDuration: 2160h }",
        );
        let mut f = facts();
        f.duration = None;
        assert!(check(&p, &f).is_empty());
        f.issuer_default_duration = Some(Duration::from_secs(8760 * 3600));
        let found: Vec<String> = check(&p, &f).iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            ["p: spec.duration unset (the issuer's default 8760h) exceeds maxDuration 2160h"]
        );
    }

    proptest::proptest! {
        /// Layered governance: under all, another policy never turns a denial into an
        /// approval; under any, another policy never turns an approval into a denial.
        #[test]
        fn another_policy_never_loosens_all_nor_tightens_any(
            base_max in 1u64..5000,
            extra_max in 1u64..5000,
            asked in 1u64..5000,
            base_names in proptest::sample::select(vec!["*", "*.payments.corp", "*.other.corp"]),
            extra_names in proptest::sample::select(vec!["*", "*.payments.corp", "*.other.corp"]),
            extra_ns in proptest::sample::select(vec!["payments", "other", "*"]),
        ) {
            let yaml = |names: &str, max: u64, ns: &str| format!(
                "selector: {{ namespace: {{ matchNames: ['{ns}'] }} }}\nallowed: {{ commonName: {{ value: '{names}' }}, dnsNames: {{ values: ['{names}'] }}, usages: ['digital signature', 'server auth'] }}\nconstraints: {{ maxDuration: {max}h }}"
            );
            let base = policy("base", &yaml(base_names, base_max, "*"));
            let extra = policy("extra", &yaml(extra_names, extra_max, extra_ns));
            let mut f = facts();
            f.duration = Some(Duration::from_secs(asked * 3600));
            let one = PolicySet::new([base.clone()]);
            let two = PolicySet::new([base, extra]);
            if matches!(one.evaluate(&f, None, Evaluation::All), Verdict::Denied { .. }) {
                let still_denied = matches!(two.evaluate(&f, None, Evaluation::All), Verdict::Denied { .. });
                proptest::prop_assert!(still_denied);
            }
            if matches!(one.evaluate(&f, None, Evaluation::Any), Verdict::Approved { .. }) {
                let still_approved = matches!(two.evaluate(&f, None, Evaluation::Any), Verdict::Approved { .. });
                proptest::prop_assert!(still_approved);
            }
        }
    }

    #[test]
    fn an_invalid_policy_denies_what_it_selects() {
        let p = policy(
            "broken",
            "selector: { namespace: {} }\nconstraints: { maxDuration: soon }",
        );
        let found = check(&p, &facts());
        assert!(
            found[0]
                .to_string()
                .starts_with("broken: policy is invalid"),
            "{found:?}"
        );
    }
}
