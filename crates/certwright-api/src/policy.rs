//! The cluster-scoped [`IssuancePolicy`]: which CertificateRequests may be approved, and
//! how. Its `allowed`, `constraints` and `selector` blocks use the field names and
//! meaning of cert-manager approver-policy's `CertificateRequestPolicy`, so a policy
//! written for approver-policy works after changing `apiVersion` and `kind`;
//! `approval` is certwright's own (manual and change-ticket approval).
//!
//! These are the types only. Evaluation and validation are pure code in the
//! `certwright-policy` crate.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::bytes::Base64Bytes;
use crate::issuer::DURATION_PATTERN;

/// The annotation that carries a change ticket when a policy's ticket check names none.
pub const DEFAULT_TICKET_ANNOTATION: &str = "pki.certwright.io/change-ticket";

/// Which CertificateRequests a policy governs and what it allows them.
///
/// A policy applies to a request when its `selector` matches the request's issuer and
/// namespace. Every applicable policy must allow the request (or, with the controller's
/// `--policy-evaluation=any`, one applicable policy the requester may `use`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "pki.certwright.io",
    version = "v1alpha1",
    kind = "IssuancePolicy",
    plural = "issuancepolicies",
    shortname = "ipol",
    category = "certwright",
    printcolumn = r#"{"name":"Approval","type":"string","jsonPath":".spec.approval.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "A certwright IssuancePolicy: which CertificateRequests may be approved (names, usages, key, lifetime), for which issuers and namespaces, and whether approval is automatic, by a person or by a change ticket."
)]
#[serde(rename_all = "camelCase")]
pub struct IssuancePolicySpec {
    /// What a request may ask for. A field left out allows nothing: a request that asks
    /// for it (a DNS name, a usage, `isCA`) violates the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Allowed>,
    /// Limits on the request's lifetime and private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Constraints>,
    /// Which requests the policy applies to: by issuer and by namespace. At least one
    /// of `issuerRef` and `namespace` must be set (`{}` in either matches everything).
    pub selector: Selector,
    /// How a request the policy allows is approved. Default: automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// What a request may ask for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Allowed {
    /// The subject common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<AllowedString>,
    /// DNS subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<AllowedStringSlice>,
    /// IP address subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<AllowedStringSlice>,
    /// URI subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uris: Option<AllowedStringSlice>,
    /// Email subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_addresses: Option<AllowedStringSlice>,
    /// Subject attributes other than the common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<AllowedSubject>,
    /// Key usages and extended key usages, as cert-manager spells them
    /// (`digital signature`, `server auth`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usages: Option<Vec<String>>,
    /// Whether a CA certificate may be requested.
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    /// The templates or profiles a request may name in its `pki.certwright.io/template`
    /// annotation (honoured by issuers with `allowTemplateOverride`), with `*`
    /// wildcards. Unset: a request must not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<AllowedStringSlice>,
}

/// A single allowed value, with `*` wildcards.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedString {
    /// The value a request's field must match; `*` matches any run of characters
    /// (`"*"` allows any value). Unset: the request must not have the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The request must have the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// approver-policy's CEL validations, which certwright does not run: a policy that
    /// sets them is refused (the webhook) and denies what it selects (the controller),
    /// rather than allowing more than its author meant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validations: Option<Vec<Validation>>,
}

/// Allowed values of a list field, with `*` wildcards.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedStringSlice {
    /// Each of the request's values must match one of these; `*` matches any run of
    /// characters (`["*"]` allows any value). Unset: the request must have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// The request must have at least one value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// approver-policy's CEL validations, which certwright does not run (see
    /// [`AllowedString::validations`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validations: Option<Vec<Validation>>,
}

/// An approver-policy CEL validation, kept in the schema only so that a policy carrying
/// one is refused by name instead of having it silently dropped.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// The CEL expression.
    #[serde(default)]
    pub rule: String,
    /// Its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Allowed subject attributes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)] // each field is the subject attribute of the same name
pub struct AllowedSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizations: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizational_units: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localities: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provinces: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street_addresses: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_codes: Option<AllowedStringSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<AllowedString>,
}

/// Limits on lifetime and key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Constraints {
    /// Shortest lifetime a request may ask for, as a Go duration (`168h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub min_duration: Option<String>,
    /// Longest lifetime a request may ask for, as a Go duration (`2160h`). A request
    /// that names no duration is taken to ask for cert-manager's default, 2160h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_duration: Option<String>,
    /// The key the CSR's public key must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeyConstraint>,
}

/// The key a request must carry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeyConstraint {
    /// The key algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithmName>,
    /// Smallest key size in bits (RSA modulus, ECDSA curve size; Ed25519 counts as 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16384))]
    pub min_size: Option<u32>,
    /// Largest key size in bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16384))]
    pub max_size: Option<u32>,
}

/// A key algorithm as cert-manager names it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum KeyAlgorithmName {
    /// RSA.
    #[serde(rename = "RSA")]
    Rsa,
    /// ECDSA.
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// Ed25519.
    Ed25519,
}

impl KeyAlgorithmName {
    /// The name as written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithmName::Rsa => "RSA",
            KeyAlgorithmName::Ecdsa => "ECDSA",
            KeyAlgorithmName::Ed25519 => "Ed25519",
        }
    }
}

/// Which requests a policy applies to. Both parts, when set, must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// The issuer the request names. Each field set must match (with `*` wildcards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRefSelector>,
    /// The request's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<NamespaceSelector>,
}

/// Matches a request's `spec.issuerRef`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRefSelector {
    /// The issuer's name; `*` wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The issuer's kind (cert-manager's default `Issuer` when the request names none);
    /// `*` wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The issuer's group (cert-manager's default `cert-manager.io` when the request
    /// names none); `*` wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Matches a request's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Namespace names, with `*` wildcards; the namespace must match one. Unset or
    /// empty: any name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_names: Option<Vec<String>>,
    /// Labels the namespace must carry, each with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// How an allowed request is approved.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// `Automatic` (default), `Manual` (a person approves, for example with
    /// `kubectl cert-manager approve`) or `Ticket` (an approved change ticket approves).
    #[serde(default)]
    pub mode: ApprovalMode,
    /// Who approves requests by hand, in words, for the Event that tells a waiting
    /// request's owner (for example `the security team, #pki-approvals`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub approvers: Option<String>,
    /// How to check a change ticket. Required with mode `Ticket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketCheck>,
}

/// How a request is approved.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ApprovalMode {
    /// Approved as soon as it is allowed.
    #[default]
    Automatic,
    /// Approved by a change ticket the ticket system says is approved.
    Ticket,
    /// Left for a person to approve.
    Manual,
}

impl ApprovalMode {
    /// The mode as written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalMode::Automatic => "Automatic",
            ApprovalMode::Ticket => "Ticket",
            ApprovalMode::Manual => "Manual",
        }
    }
}

/// How a change ticket is checked: one HTTPS GET, whose JSON answer says whether the
/// ticket is approved.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketCheck {
    /// The ticket ids this policy accepts, with `*` wildcards (for example `SEC-*`, the
    /// change project): any other id is denied, so a request cannot borrow a ticket
    /// from another project. Required.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub id_pattern: String,
    /// Where, in the ticket system's answer, the ticket names what it approves, as a
    /// JSON pointer (for Jira, a custom field such as `/fields/customfield_10042`): when
    /// set, that text must mention the request's `<namespace>/<certificate>` (the
    /// Certificate's name from `cert-manager.io/certificate-name`, else the request's),
    /// so an approved ticket approves only what it was raised for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub reference_field: Option<String>,
    /// The request annotation that names the ticket. Default
    /// `pki.certwright.io/change-ticket` (cert-manager copies a Certificate's
    /// annotations onto its requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub annotation: Option<String>,
    /// The ticket's URL: https, with `{ticket}` where the ticket id goes (for Jira,
    /// `https://jira.example.com/rest/api/2/issue/{ticket}`).
    #[schemars(length(max = 2048))]
    pub url: String,
    /// PEM CA certificates to trust for the ticket system's TLS (base64, like
    /// cert-manager's `caBundle`). Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<Base64Bytes>,
    /// A Secret in the controller's cluster resource namespace with the credentials:
    /// key `token` (sent as a bearer token) or keys `username` and `password` (basic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_name: Option<String>,
    /// Where the ticket's state is in the JSON answer, as a JSON pointer (RFC 6901;
    /// Jira: `/fields/status/name`).
    pub status_field: String,
    /// States that mean approved.
    pub approved_values: Vec<String>,
    /// States that mean rejected: the request is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_values: Vec<String>,
    /// How long to wait before looking at an open ticket again, doubling each time up
    /// to 16 times this; a Go duration. Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub recheck_interval: Option<String>,
}
