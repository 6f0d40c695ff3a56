//! What a policy looks at in a CertificateRequest, read once: the names, subject, key,
//! usages and lifetime from its spec and its CSR, its issuer and namespace, its
//! annotations and requester.

use std::collections::BTreeMap;
use std::time::Duration;

use certwright_api::{CertificateRequest, KeyAlgorithmName, format_duration, parse_duration};
use certwright_x509::{Csr, ExtendedKeyUsage, KeyAlgorithm, KeyUsage};

/// The lifetime cert-manager gives a Certificate that names none (90 days).
pub const CERT_MANAGER_DEFAULT_DURATION: Duration = Duration::from_secs(2160 * 3600);

/// The usages cert-manager asks for when a Certificate names none.
pub const CERT_MANAGER_DEFAULT_USAGES: [&str; 2] = ["digital signature", "key encipherment"];

/// Why a request cannot be evaluated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FactsError {
    /// `spec.request` is not a CSR certwright can read.
    #[error("spec.request: {0}")]
    Csr(String),
    /// `spec.duration` is not a Go duration.
    #[error("spec.duration {value:?}: {reason}")]
    Duration {
        /// What the request says.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
}

/// The issuer a request names, with cert-manager's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Issuer {
    /// The issuer's name.
    pub name: String,
    /// Its kind; `Issuer` when the request names none.
    pub kind: String,
    /// Its group; `cert-manager.io` when the request names none.
    pub group: String,
}

impl Issuer {
    /// The issuer a request's `spec.issuerRef` names, with cert-manager's defaults for
    /// an empty kind (`Issuer`) and group (`cert-manager.io`).
    pub fn of(issuer_ref: &certwright_api::IssuerRef) -> Issuer {
        Issuer {
            name: issuer_ref.name.clone(),
            kind: non_empty_or(&issuer_ref.kind, "Issuer"),
            group: non_empty_or(&issuer_ref.group, "cert-manager.io"),
        }
    }

    /// `kind/name (group)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {} ({})", self.kind, self.name, self.group)
    }
}

/// Who created the request, as cert-manager's webhook recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    /// The user name.
    pub username: String,
    /// The user's uid.
    pub uid: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The user's extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The request's public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFacts {
    /// Its algorithm, when it is one a policy can name.
    pub algorithm: Option<KeyAlgorithmName>,
    /// Its size in bits (RSA modulus, curve size; Ed25519 counts as 256).
    pub size: u32,
    /// How it reads in a message, e.g. `RSA 2048`.
    pub description: String,
}

/// Everything a policy looks at, read once from a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    /// The request's namespace.
    pub namespace: String,
    /// The request's name.
    pub name: String,
    /// The issuer it names.
    pub issuer: Issuer,
    /// `spec.duration`, when set.
    pub duration: Option<Duration>,
    /// What the issuer gives a request that names no duration, when the caller knows
    /// (certwright's own issuers' `defaultDuration`); cert-manager's 2160h otherwise.
    pub issuer_default_duration: Option<Duration>,
    /// `spec.isCA`, or a CSR asking for a CA certificate.
    pub is_ca: bool,
    /// Every usage asked for, spelled as cert-manager does: `spec.usages` and the key
    /// usages and extended key usages in the CSR, without repeats; cert-manager's
    /// defaults (what a signer issues) when neither names any.
    pub usages: Vec<String>,
    /// The subject common name (the last CN, as cert-manager reads it; every CN is in
    /// [`RequestFacts::subject`]).
    pub common_name: Option<String>,
    /// DNS names.
    pub dns_names: Vec<String>,
    /// IP addresses, in their usual text form.
    pub ip_addresses: Vec<String>,
    /// URIs.
    pub uris: Vec<String>,
    /// Email addresses.
    pub email_addresses: Vec<String>,
    /// Subject alternative names of other types, which no policy field allows.
    pub other_names: Vec<String>,
    /// Every subject attribute, in encoding order: (short name or dotted OID, value); a
    /// value that is not a string is `None`.
    pub subject: Vec<(String, Option<String>)>,
    /// The OIDs of requested extensions a policy cannot check (not subjectAltName,
    /// keyUsage, extendedKeyUsage or basicConstraints).
    pub other_extensions: Vec<String>,
    /// The OIDs of CSR attributes other than extensionRequest.
    pub other_attributes: Vec<String>,
    /// The `pki.certwright.io/template` annotation, when set.
    pub template: Option<String>,
    /// The public key.
    pub key: KeyFacts,
    /// The request's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Who created it.
    pub requester: Requester,
}

impl RequestFacts {
    /// Reads a request: parses and verifies its CSR, and its duration.
    ///
    /// # Errors
    /// When the CSR cannot be read or its signature does not verify, or `spec.duration`
    /// is not a Go duration.
    pub fn from_request(request: &CertificateRequest) -> Result<RequestFacts, FactsError> {
        let spec = &request.spec;
        let csr = Csr::parse(spec.request.as_ref()).map_err(|e| FactsError::Csr(e.to_string()))?;
        let duration = match spec.duration.as_deref() {
            None | Some("") => None,
            // Zero is what many issuers read as "their default": judged as unset.
            Some(value) => Some(parse_duration(value).map_err(|e| FactsError::Duration {
                value: value.to_string(),
                reason: e.to_string(),
            })?)
            .filter(|d| !d.is_zero()),
        };
        let mut facts = RequestFacts::from_csr(&csr);
        facts.namespace = request.metadata.namespace.clone().unwrap_or_default();
        facts.name = request.metadata.name.clone().unwrap_or_default();
        facts.issuer = Issuer::of(&spec.issuer_ref);
        facts.duration = duration;
        facts.is_ca |= spec.is_ca;
        let mut usages: Vec<String> = Vec::new();
        for usage in &spec.usages {
            let name = serde_json::to_value(usage)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".to_string());
            usages.push(name);
        }
        usages.append(&mut facts.usages);
        let mut seen = std::collections::HashSet::new();
        usages.retain(|u| seen.insert(u.clone()));
        if usages.is_empty() {
            usages = CERT_MANAGER_DEFAULT_USAGES
                .iter()
                .map(|u| (*u).to_string())
                .collect();
        }
        facts.usages = usages;
        facts.annotations = request
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        facts.template = facts
            .annotations
            .get(certwright_api::TEMPLATE_ANNOTATION)
            .cloned();
        facts.requester = Requester {
            username: spec.username.clone().unwrap_or_default(),
            uid: spec.uid.clone().unwrap_or_default(),
            groups: spec.groups.clone(),
            extra: spec.extra.clone(),
        };
        Ok(facts)
    }

    /// A request for `issuer` in `namespace` that asks for nothing yet (no names, no
    /// usages, no key), for a caller that fills in the rest itself (a test, or an
    /// embedder with its own request type).
    pub fn new(namespace: &str, name: &str, issuer: Issuer) -> RequestFacts {
        RequestFacts {
            namespace: namespace.to_string(),
            name: name.to_string(),
            issuer,
            duration: None,
            issuer_default_duration: None,
            is_ca: false,
            usages: Vec::new(),
            common_name: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            uris: Vec::new(),
            email_addresses: Vec::new(),
            other_names: Vec::new(),
            subject: Vec::new(),
            other_extensions: Vec::new(),
            other_attributes: Vec::new(),
            template: None,
            key: KeyFacts {
                algorithm: None,
                size: 0,
                description: "no key".to_string(),
            },
            annotations: BTreeMap::new(),
            requester: Requester::default(),
        }
    }

    /// What a CSR alone says: names, subject, key, and the usages it asks for. The
    /// namespace, issuer, duration and requester are left empty.
    pub fn from_csr(csr: &Csr) -> RequestFacts {
        let sans = csr.sans();
        let subject = csr
            .subject()
            .attributes()
            .map(|(kind, value)| (kind.to_string(), value.map(str::to_string)))
            .collect();
        let mut usages: Vec<String> = Vec::new();
        if let Some(key_usage) = csr.key_usage() {
            usages.extend(key_usage.iter().map(|u| key_usage_name(u).to_string()));
        }
        usages.extend(
            csr.extended_key_usages()
                .iter()
                .map(extended_key_usage_name),
        );
        RequestFacts {
            namespace: String::new(),
            name: String::new(),
            issuer: Issuer {
                name: String::new(),
                kind: "Issuer".to_string(),
                group: "cert-manager.io".to_string(),
            },
            duration: None,
            issuer_default_duration: None,
            is_ca: csr.basic_constraints().is_some_and(|bc| bc.ca),
            usages,
            common_name: csr.common_name().map(str::to_string),
            dns_names: sans.dns.clone(),
            ip_addresses: sans.ips.iter().map(ToString::to_string).collect(),
            uris: sans.uris.clone(),
            email_addresses: sans.emails.clone(),
            other_names: sans.other.clone(),
            subject,
            other_extensions: csr.other_extensions().to_vec(),
            other_attributes: csr.other_attributes().to_vec(),
            template: None,
            key: key_facts(&csr.public_key().algorithm),
            annotations: BTreeMap::new(),
            requester: Requester::default(),
        }
    }

    /// The lifetime the request gets: `spec.duration`, else the issuer's default when
    /// known, else cert-manager's.
    pub fn effective_duration(&self) -> Duration {
        self.duration
            .or(self.issuer_default_duration)
            .unwrap_or(CERT_MANAGER_DEFAULT_DURATION)
    }

    /// `spec.duration` as written in a message: `2400h`, or `unset (the issuer's
    /// default 8760h)`.
    pub fn describe_duration(&self) -> String {
        match (self.duration, self.issuer_default_duration) {
            (Some(d), _) => short_duration(d),
            (None, Some(d)) => format!("unset (the issuer's default {})", short_duration(d)),
            (None, None) => format!(
                "unset (cert-manager's default {})",
                short_duration(CERT_MANAGER_DEFAULT_DURATION)
            ),
        }
    }
}

/// A duration as a person writes it: `2160h`, `1h30m`, `90s` (Go's form without the
/// zero minutes and seconds it always prints).
pub fn short_duration(d: Duration) -> String {
    let go = format_duration(d);
    for zeros in ["0m0s", "0s"] {
        if let Some(trimmed) = go.strip_suffix(zeros)
            && trimmed.ends_with(['h', 'm'])
        {
            return trimmed.to_string();
        }
    }
    go
}

fn non_empty_or(value: &str, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value.to_string()
    }
}

fn key_facts(algorithm: &KeyAlgorithm) -> KeyFacts {
    let (name, size) = match algorithm {
        KeyAlgorithm::Rsa { bits } => (
            Some(KeyAlgorithmName::Rsa),
            u32::try_from(*bits).unwrap_or(u32::MAX),
        ),
        KeyAlgorithm::EcdsaP256 => (Some(KeyAlgorithmName::Ecdsa), 256),
        KeyAlgorithm::EcdsaP384 => (Some(KeyAlgorithmName::Ecdsa), 384),
        KeyAlgorithm::Ed25519 => (Some(KeyAlgorithmName::Ed25519), 256),
        _ => (None, 0),
    };
    KeyFacts {
        algorithm: name,
        size,
        description: algorithm.to_string(),
    }
}

/// A key usage as cert-manager spells it (`unknown` for one this version does not
/// know, which no policy allows).
pub fn key_usage_name(usage: KeyUsage) -> &'static str {
    match usage {
        KeyUsage::DigitalSignature => "digital signature",
        KeyUsage::ContentCommitment => "content commitment",
        KeyUsage::KeyEncipherment => "key encipherment",
        KeyUsage::DataEncipherment => "data encipherment",
        KeyUsage::KeyAgreement => "key agreement",
        KeyUsage::KeyCertSign => "cert sign",
        KeyUsage::CrlSign => "crl sign",
        KeyUsage::EncipherOnly => "encipher only",
        KeyUsage::DecipherOnly => "decipher only",
        _ => "unknown",
    }
}

/// An extended key usage as cert-manager spells it; one cert-manager has no name for
/// is `oid <dotted>`.
pub fn extended_key_usage_name(usage: &ExtendedKeyUsage) -> String {
    match usage {
        ExtendedKeyUsage::ServerAuth => "server auth".to_string(),
        ExtendedKeyUsage::ClientAuth => "client auth".to_string(),
        ExtendedKeyUsage::CodeSigning => "code signing".to_string(),
        ExtendedKeyUsage::EmailProtection => "email protection".to_string(),
        ExtendedKeyUsage::TimeStamping => "timestamping".to_string(),
        ExtendedKeyUsage::OcspSigning => "ocsp signing".to_string(),
        ExtendedKeyUsage::Any => "any".to_string(),
        ExtendedKeyUsage::Other(oid) => format!("oid {oid}"),
        other => format!("oid {}", other.oid()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use certwright_api::{CertificateRequestSpec, IssuerRef};
    use certwright_fixtures::{CsrBuilder, KeyKind};

    fn request(csr: Vec<u8>) -> CertificateRequest {
        let mut cr = CertificateRequest::new(
            "web",
            CertificateRequestSpec {
                request: csr.into(),
                issuer_ref: IssuerRef {
                    name: "corp".to_string(),
                    ..Default::default()
                },
                duration: Some("720h".to_string()),
                username: Some("alice".to_string()),
                groups: vec!["dev".to_string()],
                ..Default::default()
            },
        );
        cr.metadata.namespace = Some("payments".to_string());
        cr
    }

    #[test]
    fn reads_names_key_usages_and_defaults() {
        let csr = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("api.payments.corp")
            .dns("api.payments.corp")
            .dns("x.payments.corp")
            .build();
        let facts = RequestFacts::from_request(&request(csr.csr_pem.into_bytes())).unwrap();
        assert_eq!(facts.namespace, "payments");
        assert_eq!(facts.issuer.kind, "Issuer");
        assert_eq!(facts.issuer.group, "cert-manager.io");
        assert_eq!(facts.common_name.as_deref(), Some("api.payments.corp"));
        assert_eq!(facts.dns_names, ["api.payments.corp", "x.payments.corp"]);
        assert_eq!(facts.duration, Some(Duration::from_secs(720 * 3600)));
        assert_eq!(facts.requester.username, "alice");
        assert_eq!(facts.key.algorithm, Some(KeyAlgorithmName::Ecdsa));
        assert_eq!(facts.key.size, 256);
        assert!(!facts.is_ca);
    }

    #[test]
    fn extensions_and_attributes_a_policy_cannot_check_are_listed() {
        use certwright_fixtures::rcgen::{CertificateParams, CustomExtension};
        let key = KeyKind::EcdsaP256.key_pair();
        let mut params = CertificateParams::new(vec!["a.corp".to_string()]).unwrap();
        // Microsoft's Application Policies extension (an AD CS CA may honour it).
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 311, 21, 10],
                vec![0x30, 0x00],
            ));
        let csr = params.serialize_request(&key).unwrap();
        let facts = RequestFacts::from_request(&request(csr.pem().unwrap().into_bytes())).unwrap();
        assert_eq!(facts.other_extensions, ["1.3.6.1.4.1.311.21.10"]);
        assert!(facts.other_attributes.is_empty());
    }

    #[test]
    fn a_zero_duration_is_judged_as_unset() {
        let csr = CsrBuilder::new(KeyKind::EcdsaP256).dns("a.corp").build();
        let mut cr = request(csr.csr_pem.into_bytes());
        cr.spec.duration = Some("0s".to_string());
        assert_eq!(RequestFacts::from_request(&cr).unwrap().duration, None);
    }

    #[test]
    fn no_usages_means_cert_managers_defaults() {
        let csr = CsrBuilder::new(KeyKind::EcdsaP256).dns("a.corp").build();
        let facts = RequestFacts::from_request(&request(csr.csr_pem.into_bytes())).unwrap();
        assert_eq!(facts.usages, CERT_MANAGER_DEFAULT_USAGES);
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(short_duration(Duration::from_secs(2160 * 3600)), "2160h");
        assert_eq!(short_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(short_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(short_duration(Duration::from_secs(45)), "45s");
    }

    #[test]
    fn a_bad_csr_or_duration_is_named() {
        let err = RequestFacts::from_request(&request(b"not a csr".to_vec())).unwrap_err();
        assert!(err.to_string().starts_with("spec.request"), "{err}");
        let csr = CsrBuilder::new(KeyKind::Ed25519).common_name("a").build();
        let mut cr = request(csr.csr_pem.into_bytes());
        cr.spec.duration = Some("90 days".to_string());
        let err = RequestFacts::from_request(&cr).unwrap_err();
        assert!(err.to_string().contains("spec.duration"), "{err}");
    }
}
