//! The issuer kinds: namespaced [`InternalIssuer`] and cluster-scoped
//! [`InternalClusterIssuer`], which share one [`IssuerSpec`]: exactly one backend block
//! plus common tuning. The generated schema makes the API server reject an issuer with
//! zero or several backend blocks.

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::bytes::Base64Bytes;
use crate::condition::Condition;
use crate::duration::{DurationError, parse_duration};

/// A Go duration: digits with an optional fraction, each followed by a unit.
/// A DNS-1123 subdomain, the rule for Secret names (as `check_dns1123_subdomain`).
pub(crate) const SECRET_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h))*$";

/// The CEL rule that makes the API server itself enforce exactly one backend block.
pub(crate) const ONE_BACKEND_RULE: &str = "(has(self.ca) ? 1 : 0) + (has(self.rest) ? 1 : 0) + (has(self.adcs) ? 1 : 0) + (has(self.ejbca) ? 1 : 0) == 1";

/// What the API server says when [`ONE_BACKEND_RULE`] fails.
pub(crate) const ONE_BACKEND_MESSAGE: &str =
    "exactly one backend block (ca, rest, adcs or ejbca) must be set";

/// The schema description of both kinds' spec.
const SPEC_DESCRIPTION: &str = "The desired state of an issuer: which PKI signs, and how hard certwright may push it. Exactly one of ca, rest, adcs and ejbca must be set.";

/// The desired state of an issuer: which PKI signs, and how hard certwright may push it.
///
/// Exactly one of `ca`, `rest`, `adcs` and `ejbca` must be set.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "pki.certwright.io",
    version = "v1alpha1",
    kind = "InternalIssuer",
    namespaced,
    status = "IssuerStatus",
    shortname = "iiss",
    category = "certwright",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".status.backend"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "A namespaced certwright issuer: signs CertificateRequests in its own namespace through one PKI backend."
)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": ONE_BACKEND_RULE, "message": ONE_BACKEND_MESSAGE}]))]
#[serde(rename_all = "camelCase")]
#[schemars(description = SPEC_DESCRIPTION)]
pub struct IssuerSpec {
    /// Sign with a CA certificate and key held in a `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaBackend>,
    /// Sign through an internal REST CA (certwright's JSON contract, or cfssl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestBackend>,
    /// Sign through Microsoft AD CS web enrollment (certsrv).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adcs: Option<AdcsBackend>,
    /// Sign through EJBCA's REST interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejbca: Option<EjbcaBackend>,
    /// Most calls to this PKI in flight at once. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent_requests: Option<u32>,
    /// Sustained calls per second to this PKI (token bucket). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001, max = 10000.0))]
    pub requests_per_second: Option<f64>,
    /// Certificate lifetime when a request names none, as a Go duration. Default 2160h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub default_duration: Option<String>,
    /// Honour the `pki.certwright.io/template` annotation on CertificateRequests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_template_override: bool,
    /// Sign Kubernetes CertificateSigningRequests (certificates.k8s.io/v1) whose
    /// signerName names this issuer (`internalclusterissuers.pki.certwright.io/<name>`,
    /// `internalissuers.pki.certwright.io/<namespace>.<name>`). Default: true; false
    /// fails such requests, saying this issuer does not sign them.
    #[serde(
        default,
        rename = "kubernetesCSR",
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes_csr: Option<bool>,
}

/// The cluster-scoped issuer's spec: the same [`IssuerSpec`], so that both kinds are
/// validated and handled by the same code. It dereferences to [`IssuerSpec`].
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "pki.certwright.io",
    version = "v1alpha1",
    kind = "InternalClusterIssuer",
    status = "IssuerStatus",
    shortname = "iciss",
    category = "certwright",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".status.backend"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "A cluster-scoped certwright issuer: signs CertificateRequests in any namespace; reads its Secrets from the cluster resource namespace."
)]
#[serde(transparent)]
#[schemars(description = SPEC_DESCRIPTION)]
pub struct InternalClusterIssuerSpec(pub IssuerSpec);

impl std::ops::Deref for InternalClusterIssuerSpec {
    type Target = IssuerSpec;
    fn deref(&self) -> &IssuerSpec {
        &self.0
    }
}

impl std::ops::DerefMut for InternalClusterIssuerSpec {
    fn deref_mut(&mut self) -> &mut IssuerSpec {
        &mut self.0
    }
}

impl From<IssuerSpec> for InternalClusterIssuerSpec {
    fn from(spec: IssuerSpec) -> Self {
        Self(spec)
    }
}

/// The observed state of an issuer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    /// `Ready` says whether the issuer can sign. Reasons: Verified, CAExpiringSoon (still
    /// Ready), InvalidSpec, SecretNotFound, SecretOutOfScope, CAExpired, CANotYetValid,
    /// CANotACA, CACertificateInvalid, CARevoked, CAKeyMismatch, CAKeyUnreadable, HSMUnavailable,
    /// HSMPinRejected, HSMKeyNotFound, Unauthorized, Unreachable, CircuitOpen.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The backend that signs, as it names itself (`ca`, `rest`, `cfssl`, `adcs`,
    /// `ejbca`, or an embedder's own), for `kubectl get`; while none could be built, the
    /// block the spec configures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// A local CA's trust bundle (PEM): the root (or top certificate of `tls.crt`) of the
    /// CA that signs, and during a rotation's `Distribute` and `Switch` phases that of the
    /// other CA too. What relying parties should trust; also in `spec.ca.bundleConfigMap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<String>,
    /// The latest `notAfter` of the certificates a local CA issuer signed, per trust
    /// anchor (the root, or top certificate of `tls.crt`, of the signing CA): recorded
    /// before each signature (rounded up). An anchor with a record stays in the trust
    /// bundle until the record has passed, whatever the spec says, and a rotation's
    /// `Retire` waits for it. Records whose certificates have all expired are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub issued: Vec<IssuedRecord>,
    /// The CA rotation under way, as the controller carries it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,
}

/// Until when the certificates issued under one trust anchor for an issuer are valid.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedRecord {
    /// SHA-256 fingerprint of the trust anchor, lowercase hex.
    #[schemars(length(max = 64))]
    pub ca: String,
    /// The trust anchor's subject, for people.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub subject: String,
    /// The trust anchor (PEM), kept in the trust bundle while the record lasts.
    #[serde(default)]
    #[schemars(length(max = 16384))]
    pub certificate: String,
    /// No certificate this CA signed for the issuer is valid after this time.
    pub not_after: jiff::Timestamp,
}

/// A CA rotation as the controller carries it out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// The phase in effect (the spec's, or `Switch` while `Retire` is refused).
    pub phase: RotationPhase,
    /// Until when certificates signed by the current CA (`spec.ca.secretName`) are
    /// valid: `Retire` is refused before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<jiff::Timestamp>,
}

/// The local CA backend: certwright signs with the CA key itself, held in a Secret or
/// in a PKCS#11 token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBackend {
    /// A Secret whose `tls.crt` is the CA certificate (a chain up to the root is allowed)
    /// and, unless `pkcs11` is set, whose `tls.key` is its private key (a
    /// `kubernetes.io/tls` Secret).
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub secret_name: String,
    /// The CA's private key in a PKCS#11 token (an HSM, a cloud KMS's PKCS#11 library,
    /// SoftHSM2) instead of `tls.key`: signing goes through the token and the key never
    /// leaves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<Pkcs11Key>,
    /// A ConfigMap, in the namespace the issuer reads its Secrets from, that certwright
    /// keeps with the trust bundle under `ca.crt` (as `status.trustBundle`), for
    /// trust-manager or a volume mount. certwright creates it, and never writes one it
    /// did not create for this issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub bundle_config_map: Option<String>,
    /// A rotation to a next CA, in three phases (docs/backends/ca.md, "Rotating the CA").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<CaRotation>,
    /// Check the CA certificate against the CRL it names, when its parent is in
    /// `tls.crt` (default true): a CA its parent revoked stops signing (`CARevoked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_revocation: Option<bool>,
}

/// A rotation from the CA of `secretName` (the current CA) to a next one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaRotation {
    /// The Secret of the next CA: `tls.crt` and, unless `nextPkcs11` is set, `tls.key`.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub next_secret_name: String,
    /// The next CA's key in a PKCS#11 token, as `pkcs11` for the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_pkcs11: Option<Pkcs11Key>,
    /// `Distribute`: the current CA signs, both roots are published. `Switch`: the next
    /// CA signs, both are published. `Retire`: the next CA signs and only its root is
    /// published; refused while certificates the current CA signed are still valid.
    pub phase: RotationPhase,
}

/// The phase of a CA rotation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RotationPhase {
    /// Sign with the current CA; publish both roots.
    #[default]
    Distribute,
    /// Sign with the next CA; publish both roots.
    Switch,
    /// Sign with the next CA; publish its root only.
    Retire,
}

impl RotationPhase {
    /// The phase as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationPhase::Distribute => "Distribute",
            RotationPhase::Switch => "Switch",
            RotationPhase::Retire => "Retire",
        }
    }
}

impl std::fmt::Display for RotationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest PKCS#11 module path accepted.
pub const PKCS11_MODULE_MAX: usize = 4096;
/// Longest token label: `CK_TOKEN_INFO.label` is 32 bytes.
pub const PKCS11_TOKEN_LABEL_MAX: usize = 32;
/// Longest key label (`CKA_LABEL`) accepted.
pub const PKCS11_KEY_LABEL_MAX: usize = 255;
/// Longest key id (`CKA_ID`) accepted, in bytes (twice as many hex digits).
pub const PKCS11_KEY_ID_MAX: usize = 64;

/// A private key in a PKCS#11 token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pkcs11Key {
    /// Absolute path of the PKCS#11 module (shared library) in the controller's
    /// container. It must be one the controller was started to allow
    /// (`--pkcs11-module`); no other file is ever loaded.
    #[schemars(length(min = 1, max = 4096))]
    pub module: String,
    /// The label of the token holding the key. Exactly one of `tokenLabel` and `slot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub token_label: Option<String>,
    /// The slot id of the token holding the key. Exactly one of `tokenLabel` and `slot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// The private key's label (`CKA_LABEL`). At least one of `keyLabel` and `keyId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub key_label: Option<String>,
    /// The private key's id (`CKA_ID`) in hex, as `pkcs11-tool --id` takes it. At least
    /// one of `keyLabel` and `keyId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 128), regex(pattern = r"^([0-9a-fA-F]{2})+$"))]
    pub key_id: Option<String>,
    /// The Secret whose `pin` key holds the token's user PIN. Default: `secretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub pin_secret_name: Option<String>,
    /// How an RSA key signs: `PKCS1v15` (default; sha256WithRSAEncryption) or `PSS`
    /// (RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt). Ignored for ECDSA keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsa_signature_scheme: Option<RsaSignatureScheme>,
}

impl Pkcs11Key {
    /// The Secret holding the PIN: `pinSecretName`, or `key_secret`, the Secret of the
    /// CA's certificate.
    pub fn pin_secret<'a>(&'a self, key_secret: &'a str) -> &'a str {
        self.pin_secret_name.as_deref().unwrap_or(key_secret)
    }
}

/// The bytes of a `keyId` written in hex, or `None` when it is not 1 to
/// [`PKCS11_KEY_ID_MAX`] bytes of hex digit pairs.
pub fn parse_key_id(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty()
        || !hex.len().is_multiple_of(2)
        || hex.len() > 2 * PKCS11_KEY_ID_MAX
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// How an RSA CA key in a token signs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RsaSignatureScheme {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[default]
    #[serde(rename = "PKCS1v15")]
    Pkcs1v15,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, salt of 32 bytes.
    #[serde(rename = "PSS")]
    Pss,
}

/// Which REST protocol a `rest` backend speaks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RestFlavor {
    /// certwright's documented JSON contract (docs/backends/rest.md).
    #[default]
    Certwright,
    /// CloudFlare cfssl's `/api/v1/cfssl/sign` and `authsign`.
    Cfssl,
}

/// An internal REST CA.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestBackend {
    /// Base URL of the CA's API; must be https.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// The protocol: `certwright` (default) or `cfssl`.
    #[serde(default)]
    pub flavor: RestFlavor,
    /// Secret with credentials: `token`, or `username` and `password`, or `tls.crt` and
    /// `tls.key` (client certificate), or `key` (cfssl authsign HMAC key, hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub auth_secret_name: Option<String>,
    /// PEM certificates trusted for the CA's TLS endpoint; the system roots when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<Base64Bytes>,
    /// The template (cfssl: signing profile) to request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub template_name: Option<String>,
    /// Timeout of each call to the CA, as a Go duration. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// How certwright authenticates to AD CS web enrollment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AdcsAuthMethod {
    /// NTLMv2 with channel binding (works with Extended Protection).
    #[default]
    Ntlm,
    /// Kerberos through SPNEGO (`Negotiate`).
    Kerberos,
    /// HTTP Basic.
    Basic,
    /// A TLS client certificate.
    ClientCertificate,
}

/// Microsoft AD CS web enrollment (certsrv).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdcsBackend {
    /// The certsrv URL, e.g. `https://adcs.corp.example/certsrv`; must be https.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// `ntlm` (default), `kerberos`, `basic` or `clientCertificate`.
    #[serde(default)]
    pub auth_method: AdcsAuthMethod,
    /// Secret with `username`, `password` and optional `domain`; Kerberos adds `realm`,
    /// `kdc` and `password` or `keytab`; clientCertificate uses `tls.crt` and `tls.key`.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub auth_secret_name: String,
    /// PEM certificates trusted for the certsrv TLS endpoint; the system roots when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<Base64Bytes>,
    /// The certificate template's name (not its display name), e.g. `WebServer`.
    #[schemars(length(min = 1, max = 64))]
    pub template_name: String,
    /// How often to poll a request pending CA-manager approval. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub poll_interval: Option<String>,
    /// Ask for the requested duration with the `ValidityPeriod` and `ValidityPeriodUnits`
    /// request attributes. The CA honours them only with `EDITF_ATTRIBUTEENDDATE` set
    /// (`certutil -setreg policy\EditFlags +EDITF_ATTRIBUTEENDDATE`), and never beyond
    /// the template's validity period; otherwise the template decides. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub send_validity_period: bool,
    /// Timeout of each call to certsrv, as a Go duration. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// EJBCA's REST interface.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EjbcaBackend {
    /// The REST base URL, e.g. `https://ejbca.corp.example/ejbca/ejbca-rest-api`.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// A `kubernetes.io/tls` Secret (mutual TLS), or a Secret with `tokenUrl`,
    /// `clientId`, `clientSecret` and optional `scopes`, `audience` (OAuth2).
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub auth_secret_name: String,
    /// PEM certificates trusted for EJBCA's TLS endpoint; the system roots when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<Base64Bytes>,
    /// The EJBCA CA that signs.
    #[schemars(length(min = 1, max = 256))]
    pub certificate_authority_name: String,
    /// The certificate profile.
    #[schemars(length(min = 1, max = 256))]
    pub certificate_profile_name: String,
    /// The end entity profile.
    #[schemars(length(min = 1, max = 256))]
    pub end_entity_profile_name: String,
    /// How the end entity is named: `cn` (default), `dns` (first DNS name),
    /// `namespacedName` (the CertificateRequest's namespace/name) or `fixed:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(cn|dns|namespacedName|fixed:.+)$"))]
    pub end_entity_name: Option<String>,
    /// Pass the requested duration as `end_time` (EJBCA 9.3.3 and later).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub send_end_time: bool,
    /// Optional `account_binding_id` sent with each enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub account_binding_id: Option<String>,
    /// Timeout of each call to EJBCA, as a Go duration. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// How an EJBCA end entity is named, parsed from `endEntityName`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndEntityName {
    /// The CSR's common name.
    CommonName,
    /// The CSR's first DNS name.
    FirstDnsName,
    /// `<namespace>/<name>` of the CertificateRequest.
    NamespacedName,
    /// This fixed name.
    Fixed(String),
}

impl std::str::FromStr for EndEntityName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cn" => Ok(Self::CommonName),
            "dns" => Ok(Self::FirstDnsName),
            "namespacedName" => Ok(Self::NamespacedName),
            _ => match s.strip_prefix("fixed:") {
                Some(name) if !name.trim().is_empty() => Ok(Self::Fixed(name.to_string())),
                _ => Err(format!(
                    "{s:?} is not one of cn, dns, namespacedName or fixed:<name>"
                )),
            },
        }
    }
}

impl EjbcaBackend {
    /// The end entity naming rule; `cn` when unset.
    pub fn end_entity_name(&self) -> Result<EndEntityName, String> {
        self.end_entity_name
            .as_deref()
            .map_or(Ok(EndEntityName::CommonName), str::parse)
    }
}

/// The kind of backend an issuer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Local CA key.
    Ca,
    /// Internal REST CA.
    Rest,
    /// Microsoft AD CS.
    Adcs,
    /// EJBCA.
    Ejbca,
}

impl BackendKind {
    /// The spec field name of this backend block.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Ca => "ca",
            BackendKind::Rest => "rest",
            BackendKind::Adcs => "adcs",
            BackendKind::Ejbca => "ejbca",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default in-flight calls per issuer in front of a remote PKI.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 4;
/// Default sustained calls per second per issuer in front of a remote PKI.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 2.0;
/// Default in-flight signings of a `ca` issuer: it signs in process, bounded by CPU.
pub const LOCAL_CA_MAX_CONCURRENT_REQUESTS: u32 = 32;
/// Default signings per second of a `ca` issuer: no PKI to protect, so no real limit.
pub const LOCAL_CA_REQUESTS_PER_SECOND: f64 = 1000.0;
/// Default certificate lifetime (90 days), as cert-manager's.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2160 * 3600);

impl IssuerSpec {
    /// The backend blocks that are set, in field order.
    pub fn configured_backends(&self) -> Vec<BackendKind> {
        let mut kinds = Vec::with_capacity(1);
        if self.ca.is_some() {
            kinds.push(BackendKind::Ca);
        }
        if self.rest.is_some() {
            kinds.push(BackendKind::Rest);
        }
        if self.adcs.is_some() {
            kinds.push(BackendKind::Adcs);
        }
        if self.ejbca.is_some() {
            kinds.push(BackendKind::Ejbca);
        }
        kinds
    }

    /// The backend, when exactly one block is set.
    pub fn backend_kind(&self) -> Option<BackendKind> {
        match self.configured_backends().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Names of the Secrets this spec references (CA key, credentials).
    pub fn secret_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        if let Some(ca) = &self.ca {
            names.push(ca.secret_name.as_str());
            if let Some(pin) = ca
                .pkcs11
                .as_ref()
                .and_then(|p| p.pin_secret_name.as_deref())
            {
                names.push(pin);
            }
            if let Some(rotation) = &ca.rotation {
                names.push(rotation.next_secret_name.as_str());
                if let Some(pin) = rotation
                    .next_pkcs11
                    .as_ref()
                    .and_then(|p| p.pin_secret_name.as_deref())
                {
                    names.push(pin);
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            names.retain(|name| seen.insert(*name));
        }
        if let Some(name) = self
            .rest
            .as_ref()
            .and_then(|r| r.auth_secret_name.as_deref())
        {
            names.push(name);
        }
        if let Some(adcs) = &self.adcs {
            names.push(adcs.auth_secret_name.as_str());
        }
        if let Some(ejbca) = &self.ejbca {
            names.push(ejbca.auth_secret_name.as_str());
        }
        names
    }

    /// `maxConcurrentRequests`, or its default for the backend.
    pub fn max_concurrent_requests(&self) -> u32 {
        self.max_concurrent_requests
            .unwrap_or(if self.ca.is_some() {
                LOCAL_CA_MAX_CONCURRENT_REQUESTS
            } else {
                DEFAULT_MAX_CONCURRENT_REQUESTS
            })
    }

    /// `requestsPerSecond`, or its default for the backend.
    pub fn requests_per_second(&self) -> f64 {
        self.requests_per_second.unwrap_or(if self.ca.is_some() {
            LOCAL_CA_REQUESTS_PER_SECOND
        } else {
            DEFAULT_REQUESTS_PER_SECOND
        })
    }

    /// `defaultDuration` parsed, or 90 days when unset.
    pub fn default_duration(&self) -> Result<Duration, DurationError> {
        self.default_duration
            .as_deref()
            .map_or(Ok(DEFAULT_DURATION), parse_duration)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_design_example() {
        let spec: IssuerSpec = serde_json::from_value(serde_json::json!({
            "adcs": {
                "url": "https://adcs.corp.example/certsrv",
                "authMethod": "ntlm",
                "authSecretName": "adcs-auth",
                "templateName": "WebServer",
                "pollInterval": "5m"
            },
            "maxConcurrentRequests": 4,
            "requestsPerSecond": 2,
            "defaultDuration": "2160h",
            "allowTemplateOverride": false
        }))
        .unwrap();
        assert_eq!(spec.backend_kind(), Some(BackendKind::Adcs));
        assert_eq!(spec.secret_names(), vec!["adcs-auth"]);
        assert_eq!(spec.default_duration().unwrap(), DEFAULT_DURATION);
        assert_eq!(spec.requests_per_second(), 2.0);
        let adcs = spec.adcs.as_ref().unwrap();
        assert_eq!(adcs.auth_method, AdcsAuthMethod::Ntlm);
    }

    #[test]
    fn cluster_spec_is_the_same_json_and_derefs() {
        let json = serde_json::json!({"ca": {"secretName": "dev-ca"}});
        let cluster: InternalClusterIssuerSpec = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(cluster.ca.as_ref().unwrap().secret_name, "dev-ca");
        assert_eq!(serde_json::to_value(&cluster).unwrap(), json);
    }

    #[test]
    fn end_entity_name_rules() {
        let mut e = EjbcaBackend::default();
        assert_eq!(e.end_entity_name(), Ok(EndEntityName::CommonName));
        e.end_entity_name = Some("namespacedName".into());
        assert_eq!(e.end_entity_name(), Ok(EndEntityName::NamespacedName));
        e.end_entity_name = Some("fixed:k8s".into());
        assert_eq!(e.end_entity_name(), Ok(EndEntityName::Fixed("k8s".into())));
        e.end_entity_name = Some("fixed:".into());
        assert!(e.end_entity_name().is_err());
        e.end_entity_name = Some("uid".into());
        assert!(e.end_entity_name().unwrap_err().contains("uid"));
    }

    #[test]
    fn unset_options_are_not_serialized() {
        let spec = IssuerSpec {
            ca: Some(CaBackend {
                secret_name: "dev-ca".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::json!({"ca": {"secretName": "dev-ca"}})
        );
    }
}
