//! Kubernetes resource types for certwright, and their pure validation.
//!
//! This crate knows serde, schemars and kube's derive, and nothing of I/O: it defines
//! the `pki.certwright.io/v1alpha1` issuer kinds ([`InternalIssuer`],
//! [`InternalClusterIssuer`]), our typed view of cert-manager's
//! [`CertificateRequest`], the cluster-scoped [`IssuancePolicy`], Kubernetes-convention [`Condition`]s, and
//! [`validate_issuer_spec`], which reports every problem in an issuer spec with its
//! field path. The engine, the webhook and the CLI all build on these types.
#![deny(missing_docs)]

mod bytes;
pub mod certificate_request;
pub mod condition;
pub mod duration;
pub mod issuer;
pub mod policy;
pub mod validation;

pub use bytes::Base64Bytes;
pub use certificate_request::{
    CertificateRequest, CertificateRequestSpec, CertificateRequestStatus, IssuerRef, KeyUsage,
    RequestConditions,
};
pub use condition::{Condition, ConditionStatus, Conditions};
pub use duration::{DurationError, format_duration, parse_duration};
pub use issuer::{
    AdcsAuthMethod, AdcsBackend, BackendKind, CaBackend, CaRotation, EjbcaBackend, EndEntityName,
    InternalClusterIssuer, InternalClusterIssuerSpec, InternalIssuer, IssuedRecord, IssuerSpec,
    IssuerStatus, Pkcs11Key, RestBackend, RestFlavor, RotationPhase, RotationStatus,
    RsaSignatureScheme,
};
pub use policy::{
    Allowed, AllowedString, AllowedStringSlice, AllowedSubject, Approval, ApprovalMode,
    Constraints, IssuancePolicy, IssuancePolicySpec, IssuerRefSelector, KeyAlgorithmName,
    NamespaceSelector, PrivateKeyConstraint, Selector, TicketCheck, Validation,
};
pub use validation::{
    FieldError, FieldErrorKind, KeyAlternative, SecretRequirement, secret_requirements,
    validate_issuer_spec,
};

/// The API group of certwright's own resources.
pub const GROUP: &str = "pki.certwright.io";
/// The API version of certwright's own resources.
pub const VERSION: &str = "v1alpha1";

/// CertificateRequest annotation that overrides the issuer's template or profile name,
/// honoured only when the issuer sets `allowTemplateOverride`.
pub const TEMPLATE_ANNOTATION: &str = "pki.certwright.io/template";
/// CertificateRequest annotation in which the controller persists a CA-side pending
/// request id, so that the request is polled and never submitted twice.
pub const PENDING_ID_ANNOTATION: &str = "pki.certwright.io/pending-id";
/// CertificateRequest annotation in which the controller records, before it submits the
/// request to a CA, when it did (RFC 3339). Found on a request without an answer (the
/// controller stopped mid-call), it means a submission may have reached the CA: the
/// controller asks the CA what became of it before it submits again, or fails the
/// request when the CA cannot be asked.
pub const SUBMITTED_ANNOTATION: &str = "pki.certwright.io/submitted-at";
/// Annotation recording the idempotency key a request was submitted under,
/// `<namespace>/<name>/<uid>` (the uid at the time), kept beside its pending id: after a
/// restore, when the request has a new uid, it is polled, recovered and sent again
/// under the same key, so a CA that deduplicates by it signs once. A key naming another
/// object is ignored.
pub const SUBMISSION_KEY_ANNOTATION: &str = "pki.certwright.io/submission-key";
/// The `signerName` a Kubernetes CertificateSigningRequest uses to ask an
/// InternalClusterIssuer (`cluster`) or an InternalIssuer in `namespace` to sign:
/// `internalclusterissuers.pki.certwright.io/<name>` or
/// `internalissuers.pki.certwright.io/<namespace>.<name>`.
pub fn signer_name(cluster: bool, namespace: &str, name: &str) -> String {
    if cluster {
        format!("internalclusterissuers.{GROUP}/{name}")
    } else {
        format!("internalissuers.{GROUP}/{namespace}.{name}")
    }
}

/// Annotation on a Kubernetes CertificateSigningRequest asking for a CA certificate, as
/// cert-manager writes it (`"true"`).
pub const REQUEST_IS_CA_ANNOTATION: &str = "experimental.cert-manager.io/request-is-ca";
