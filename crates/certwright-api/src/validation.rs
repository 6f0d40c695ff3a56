//! Pure validation of issuer specs. Every problem is reported, each with the field path
//! a user would edit, in the shape of Kubernetes' `field.Error` so that the webhook can
//! return them as they are. Nothing here performs I/O.
//!
//! One file because it is one set of rules, read as one list, with its unit tests
//! beside them (over a third of the file).

use std::time::Duration;

use crate::Base64Bytes;
use crate::duration::parse_duration;
use crate::issuer::{AdcsBackend, BackendKind, CaBackend, EjbcaBackend, IssuerSpec, RestBackend};

/// What kind of problem a field has, as Kubernetes names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldErrorKind {
    /// The field must be set.
    Required,
    /// The field's value is malformed.
    Invalid,
    /// The field may not be set here (e.g. a second backend block).
    Forbidden,
}

impl std::fmt::Display for FieldErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::Forbidden => "Forbidden",
        })
    }
}

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.adcs.url`.
    pub field: String,
    /// The kind of problem.
    pub kind: FieldErrorKind,
    /// What is wrong, in words a person can act on. Never contains Secret data.
    pub detail: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.field, self.kind, self.detail)
    }
}

/// Every problem found in a spec; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

/// Validates an issuer spec and returns every problem, each with its field path.
///
/// Checks: exactly one backend block; https URLs without embedded credentials; required
/// names present; Secret names are DNS-1123 subdomains; durations parse and are in range;
/// `caBundle` holds PEM certificates; template names are safe to send to the PKI.
pub fn validate_issuer_spec(spec: &IssuerSpec) -> Result<(), ValidationErrors> {
    let mut v = Validator::default();
    let backends = spec.configured_backends();
    match backends.as_slice() {
        [] => v.push(
            "spec",
            FieldErrorKind::Required,
            crate::issuer::ONE_BACKEND_MESSAGE,
        ),
        [_] => {}
        [first, rest @ ..] => {
            for extra in rest {
                v.push(
                    &format!("spec.{extra}"),
                    FieldErrorKind::Forbidden,
                    format!("only one backend block may be set; spec.{first} is already set"),
                );
            }
        }
    }
    if let Some(ca) = &spec.ca {
        validate_ca(&mut v, ca);
    }
    if let Some(rest) = &spec.rest {
        validate_rest(&mut v, rest);
    }
    if let Some(adcs) = &spec.adcs {
        validate_adcs(&mut v, adcs);
    }
    if let Some(ejbca) = &spec.ejbca {
        validate_ejbca(&mut v, ejbca);
    }
    if let Some(n) = spec.max_concurrent_requests
        && !(1..=1024).contains(&n)
    {
        v.push(
            "spec.maxConcurrentRequests",
            FieldErrorKind::Invalid,
            format!("{n} is outside 1..=1024"),
        );
    }
    if let Some(rps) = spec.requests_per_second
        && !(rps.is_finite() && rps > 0.0 && rps <= 10_000.0)
    {
        v.push(
            "spec.requestsPerSecond",
            FieldErrorKind::Invalid,
            format!("{rps} must be above 0 and at most 10000"),
        );
    }
    v.duration(
        "spec.defaultDuration",
        spec.default_duration.as_deref(),
        Duration::from_secs(3600),
        Duration::from_secs(100 * 365 * 24 * 3600),
    );
    v.finish()
}

fn validate_ca(v: &mut Validator, ca: &CaBackend) {
    v.secret_name("spec.ca.secretName", Some(&ca.secret_name), true);
    if let Some(key) = &ca.pkcs11 {
        validate_pkcs11(v, "spec.ca.pkcs11", key);
    }
    v.secret_name(
        "spec.ca.bundleConfigMap",
        ca.bundle_config_map.as_deref(),
        false,
    );
    if let Some(rotation) = &ca.rotation {
        v.secret_name(
            "spec.ca.rotation.nextSecretName",
            Some(&rotation.next_secret_name),
            true,
        );
        if let Some(key) = &rotation.next_pkcs11 {
            validate_pkcs11(v, "spec.ca.rotation.nextPkcs11", key);
        }
        if rotation.next_secret_name == ca.secret_name && rotation.next_pkcs11 == ca.pkcs11 {
            v.push(
                "spec.ca.rotation.nextSecretName",
                FieldErrorKind::Invalid,
                "names the current CA: the next CA must be another",
            );
        }
    }
}

fn validate_pkcs11(v: &mut Validator, field: &str, key: &crate::issuer::Pkcs11Key) {
    use crate::issuer::{
        PKCS11_KEY_ID_MAX, PKCS11_KEY_LABEL_MAX, PKCS11_MODULE_MAX, PKCS11_TOKEN_LABEL_MAX,
    };
    if key.module.trim().is_empty() {
        v.push(
            &format!("{field}.module"),
            FieldErrorKind::Required,
            "the path of a PKCS#11 module is required",
        );
    } else if !key.module.starts_with('/') {
        v.push(
            &format!("{field}.module"),
            FieldErrorKind::Invalid,
            format!("{:?} must be an absolute path", key.module),
        );
    } else if key.module.len() > PKCS11_MODULE_MAX || key.module.contains('\0') {
        v.push(
            &format!("{field}.module"),
            FieldErrorKind::Invalid,
            format!("must be a path of at most {PKCS11_MODULE_MAX} bytes without NUL"),
        );
    }
    match (&key.token_label, key.slot) {
        (None, None) => v.push(
            &format!("{field}.tokenLabel"),
            FieldErrorKind::Required,
            "name the token by tokenLabel or slot",
        ),
        (Some(_), Some(_)) => v.push(
            &format!("{field}.slot"),
            FieldErrorKind::Forbidden,
            "set tokenLabel or slot, not both",
        ),
        (Some(label), None) if label.is_empty() || label.len() > PKCS11_TOKEN_LABEL_MAX => v.push(
            &format!("{field}.tokenLabel"),
            FieldErrorKind::Invalid,
            format!("must be 1 to {PKCS11_TOKEN_LABEL_MAX} bytes (a PKCS#11 token label)"),
        ),
        _ => {}
    }
    if key.key_label.is_none() && key.key_id.is_none() {
        v.push(
            &format!("{field}.keyLabel"),
            FieldErrorKind::Required,
            "name the key by keyLabel, keyId or both",
        );
    }
    if let Some(label) = &key.key_label
        && (label.is_empty() || label.len() > PKCS11_KEY_LABEL_MAX)
    {
        v.push(
            &format!("{field}.keyLabel"),
            FieldErrorKind::Invalid,
            format!("must be 1 to {PKCS11_KEY_LABEL_MAX} bytes"),
        );
    }
    if let Some(id) = &key.key_id
        && crate::issuer::parse_key_id(id).is_none()
    {
        v.push(
            &format!("{field}.keyId"),
            FieldErrorKind::Invalid,
            format!("must be 1 to {PKCS11_KEY_ID_MAX} bytes written as pairs of hex digits"),
        );
    }
    v.secret_name(
        &format!("{field}.pinSecretName"),
        key.pin_secret_name.as_deref(),
        false,
    );
}

fn validate_rest(v: &mut Validator, rest: &RestBackend) {
    v.https_url("spec.rest.url", &rest.url);
    v.secret_name(
        "spec.rest.authSecretName",
        rest.auth_secret_name.as_deref(),
        false,
    );
    v.ca_bundle("spec.rest.caBundle", rest.ca_bundle.as_ref());
    if let Some(template) = &rest.template_name {
        v.template_name("spec.rest.templateName", template);
    }
    v.timeout("spec.rest.timeout", rest.timeout.as_deref());
}

fn validate_adcs(v: &mut Validator, adcs: &AdcsBackend) {
    v.https_url("spec.adcs.url", &adcs.url);
    v.secret_name(
        "spec.adcs.authSecretName",
        Some(&adcs.auth_secret_name),
        true,
    );
    v.ca_bundle("spec.adcs.caBundle", adcs.ca_bundle.as_ref());
    v.template_name("spec.adcs.templateName", &adcs.template_name);
    v.duration(
        "spec.adcs.pollInterval",
        adcs.poll_interval.as_deref(),
        Duration::from_secs(10),
        Duration::from_secs(24 * 3600),
    );
    v.timeout("spec.adcs.timeout", adcs.timeout.as_deref());
}

fn validate_ejbca(v: &mut Validator, ejbca: &EjbcaBackend) {
    v.https_url("spec.ejbca.url", &ejbca.url);
    v.secret_name(
        "spec.ejbca.authSecretName",
        Some(&ejbca.auth_secret_name),
        true,
    );
    v.ca_bundle("spec.ejbca.caBundle", ejbca.ca_bundle.as_ref());
    v.backend_name(
        BackendKind::Ejbca,
        "spec.ejbca.certificateAuthorityName",
        &ejbca.certificate_authority_name,
    );
    v.backend_name(
        BackendKind::Ejbca,
        "spec.ejbca.certificateProfileName",
        &ejbca.certificate_profile_name,
    );
    v.backend_name(
        BackendKind::Ejbca,
        "spec.ejbca.endEntityProfileName",
        &ejbca.end_entity_profile_name,
    );
    if let Err(detail) = ejbca.end_entity_name() {
        v.push("spec.ejbca.endEntityName", FieldErrorKind::Invalid, detail);
    }
    if let Some(id) = &ejbca.account_binding_id {
        v.backend_name(BackendKind::Ejbca, "spec.ejbca.accountBindingId", id);
    }
    v.timeout("spec.ejbca.timeout", ejbca.timeout.as_deref());
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn push(&mut self, field: &str, kind: FieldErrorKind, detail: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_string(),
            kind,
            detail: detail.into(),
        });
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.errors))
        }
    }

    fn https_url(&mut self, field: &str, raw: &str) {
        if raw.trim().is_empty() {
            return self.push(field, FieldErrorKind::Required, "a URL is required");
        }
        match url::Url::parse(raw) {
            Err(e) => self.push(field, FieldErrorKind::Invalid, format!("not a URL: {e}")),
            Ok(url) => {
                if url.scheme() != "https" {
                    self.push(
                        field,
                        FieldErrorKind::Invalid,
                        format!("must use https, not {}", url.scheme()),
                    );
                }
                if url.host_str().is_none_or(str::is_empty) {
                    self.push(field, FieldErrorKind::Invalid, "has no host");
                }
                if !url.username().is_empty() || url.password().is_some() {
                    self.push(
                        field,
                        FieldErrorKind::Invalid,
                        "must not embed credentials; put them in the auth Secret",
                    );
                }
                if url.fragment().is_some() {
                    self.push(field, FieldErrorKind::Invalid, "must not have a #fragment");
                }
            }
        }
    }

    fn secret_name(&mut self, field: &str, name: Option<&str>, required: bool) {
        match name {
            None if required => {
                self.push(field, FieldErrorKind::Required, "a Secret name is required")
            }
            None => {}
            Some("") if required => {
                self.push(field, FieldErrorKind::Required, "a Secret name is required")
            }
            Some(name) => {
                if let Err(why) = check_dns1123_subdomain(name) {
                    self.push(field, FieldErrorKind::Invalid, format!("{name:?} {why}"));
                }
            }
        }
    }

    fn ca_bundle(&mut self, field: &str, bundle: Option<&Base64Bytes>) {
        let Some(bundle) = bundle else { return };
        if bundle.is_empty() {
            return;
        }
        if let Err(e) = certwright_x509::parse_pem_bundle(bundle.as_bytes()) {
            self.push(
                field,
                FieldErrorKind::Invalid,
                format!("must be base64 of PEM CA certificates: {e}"),
            );
        }
    }

    fn template_name(&mut self, field: &str, name: &str) {
        if name.trim().is_empty() {
            return self.push(field, FieldErrorKind::Required, "a name is required");
        }
        if let Err(why) = check_template_name(name) {
            self.push(field, FieldErrorKind::Invalid, why);
        }
    }

    fn backend_name(&mut self, kind: BackendKind, field: &str, name: &str) {
        if name.trim().is_empty() {
            return self.push(field, FieldErrorKind::Required, "a name is required");
        }
        if let Err(why) = check_backend_name(kind, name) {
            self.push(field, FieldErrorKind::Invalid, why);
        }
    }

    fn timeout(&mut self, field: &str, raw: Option<&str>) {
        self.duration(field, raw, Duration::from_secs(1), Duration::from_secs(300));
    }

    fn duration(&mut self, field: &str, raw: Option<&str>, min: Duration, max: Duration) {
        let Some(raw) = raw else { return };
        match parse_duration(raw) {
            Err(e) => self.push(field, FieldErrorKind::Invalid, e.to_string()),
            Ok(d) if d < min || d > max => self.push(
                field,
                FieldErrorKind::Invalid,
                format!(
                    "{raw} is outside {}..={}",
                    crate::format_duration(min),
                    crate::format_duration(max)
                ),
            ),
            Ok(_) => {}
        }
    }
}

/// Checks a template, profile or CA name before it is sent to a PKI: at most 256
/// characters, no leading or trailing spaces, no control characters and none of `:`,
/// `&`, `=`, `\\`. These names travel inside form fields and attribute lists (AD CS
/// `CertAttrib` is `Name:Value` pairs separated by CR LF), where such characters would
/// inject attributes. Used for issuer specs and for per-request overrides alike.
pub fn check_template_name(name: &str) -> Result<(), String> {
    if name.len() > 256 {
        return Err("is longer than 256 characters".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| c.is_control() || matches!(c, ':' | '&' | '=' | '\\'))
    {
        return Err(format!(
            "contains {bad:?}; use letters, digits, spaces, '.', '_' or '-'"
        ));
    }
    if name != name.trim() {
        return Err("has leading or trailing spaces".to_string());
    }
    Ok(())
}

/// Checks a CA, profile or template name by the rules of the backend it is sent to:
/// EJBCA names travel in JSON bodies and percent-encoded path segments, so any text
/// passes but control characters and surrounding spaces (`CN=ExampleCA` is a valid CA
/// name); the other backends' names go into form fields and attribute lists, and follow
/// [`check_template_name`].
pub fn check_backend_name(kind: BackendKind, name: &str) -> Result<(), String> {
    match kind {
        BackendKind::Ejbca => {
            if name.chars().count() > 256 {
                return Err("is longer than 256 characters".to_string());
            }
            if name.chars().any(char::is_control) {
                return Err("contains control characters".to_string());
            }
            if name != name.trim() {
                return Err("has leading or trailing spaces".to_string());
            }
            Ok(())
        }
        _ => check_template_name(name),
    }
}

/// Checks a DNS-1123 subdomain, the rule for Secret names: at most 253 characters of
/// lowercase letters, digits, '-' and '.', starting and ending with a letter or digit.
pub fn check_dns1123_subdomain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > 253 {
        return Err("is longer than 253 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("must consist of lowercase letters, digits, '-' and '.'");
    }
    for label in name.split('.') {
        let ok_ends = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok_ends(label.as_bytes().first()) || !ok_ends(label.as_bytes().last()) {
            return Err("must start and end with a letter or digit, in every '.'-separated part");
        }
    }
    Ok(())
}

/// A set of Secret keys that together satisfy one way of authenticating (or, for the
/// `ca` backend, of signing). Keys count as present only with a non-empty value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAlternative {
    /// The keys, all of which must be present.
    pub keys: &'static [&'static str],
}

impl KeyAlternative {
    const fn of(keys: &'static [&'static str]) -> Self {
        KeyAlternative { keys }
    }

    /// The keys of this alternative that `has_key` says are absent, in order.
    pub fn missing(&self, has_key: impl Fn(&str) -> bool) -> Vec<&'static str> {
        self.keys.iter().copied().filter(|k| !has_key(k)).collect()
    }
}

impl std::fmt::Display for KeyAlternative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.keys.join(" + "))
    }
}

/// A Secret an issuer spec references, and the keys it must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRequirement {
    /// The field that names the Secret, e.g. `spec.adcs.authSecretName`.
    pub field: &'static str,
    /// The Secret's name, as written in the spec.
    pub secret: String,
    /// The key sets that satisfy the configuration; any one of them suffices.
    pub keys: Vec<KeyAlternative>,
}

impl SecretRequirement {
    /// Whether some alternative is complete in a Secret whose keys `has_key` reports.
    pub fn is_met(&self, has_key: impl Fn(&str) -> bool) -> bool {
        self.keys.iter().any(|alt| alt.missing(&has_key).is_empty())
    }

    /// What the Secret lacks, in words (`has no tls.key`), or `None` when some
    /// alternative is complete. With several alternatives, it names each of them. It
    /// names keys only, never values.
    pub fn unmet(&self, has_key: impl Fn(&str) -> bool) -> Option<String> {
        if self.is_met(&has_key) {
            return None;
        }
        match self.keys.as_slice() {
            [one] => Some(format!("has no {}", one.missing(&has_key).join(", "))),
            alternatives => Some(format!(
                "holds none of the key sets {}",
                alternatives
                    .iter()
                    .map(|alt| format!("[{alt}]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

const TLS_PAIR: KeyAlternative = KeyAlternative::of(&["tls.crt", "tls.key"]);
const USER_PASSWORD: KeyAlternative = KeyAlternative::of(&["username", "password"]);

/// The Secrets `spec` references, each with the keys it must hold for the configured
/// backend and auth method:
///
/// | backend | keys (any one set) |
/// |---|---|
/// | `ca` | `tls.crt` + `tls.key` |
/// | `rest`, certwright flavour | `token`, or `username` + `password`, or `tls.crt` + `tls.key` |
/// | `rest`, cfssl | `key` |
/// | `adcs` ntlm, basic | `username` + `password` |
/// | `adcs` kerberos | `username` + `realm` + `kdc` + `password`, or ... + `keytab` |
/// | `adcs` clientCertificate | `tls.crt` + `tls.key` |
/// | `ejbca` | `tls.crt` + `tls.key`, or `tokenUrl` + `clientId` + `clientSecret` |
///
/// Every backend block that is set contributes (a spec with two blocks is invalid, but
/// its Secrets are still listed). Unset or blank names are left out:
/// [`validate_issuer_spec`] reports those. Pure: whether the Secrets exist is the
/// caller's business.
pub fn secret_requirements(spec: &IssuerSpec) -> Vec<SecretRequirement> {
    use crate::issuer::{AdcsAuthMethod, RestFlavor};
    let mut out = Vec::new();
    let mut push = |field: &'static str, name: Option<&str>, keys: &[KeyAlternative]| {
        if let Some(name) = name.filter(|n| !n.trim().is_empty()) {
            out.push(SecretRequirement {
                field,
                secret: name.to_string(),
                keys: keys.to_vec(),
            });
        }
    };
    if let Some(ca) = &spec.ca {
        match &ca.pkcs11 {
            None => push("spec.ca.secretName", Some(&ca.secret_name), &[TLS_PAIR]),
            Some(key) => {
                push(
                    "spec.ca.secretName",
                    Some(&ca.secret_name),
                    &[KeyAlternative::of(&["tls.crt"])],
                );
                push(
                    "spec.ca.pkcs11.pinSecretName",
                    Some(key.pin_secret(&ca.secret_name)),
                    &[KeyAlternative::of(&["pin"])],
                );
            }
        }
        if let Some(rotation) = &ca.rotation {
            let next = rotation.next_secret_name.as_str();
            match &rotation.next_pkcs11 {
                None => push("spec.ca.rotation.nextSecretName", Some(next), &[TLS_PAIR]),
                Some(key) => {
                    push(
                        "spec.ca.rotation.nextSecretName",
                        Some(next),
                        &[KeyAlternative::of(&["tls.crt"])],
                    );
                    push(
                        "spec.ca.rotation.nextPkcs11.pinSecretName",
                        Some(key.pin_secret(next)),
                        &[KeyAlternative::of(&["pin"])],
                    );
                }
            }
        }
    }
    if let Some(rest) = &spec.rest {
        let keys: &[KeyAlternative] = match rest.flavor {
            RestFlavor::Cfssl => &[KeyAlternative::of(&["key"])],
            RestFlavor::Certwright => &[KeyAlternative::of(&["token"]), USER_PASSWORD, TLS_PAIR],
        };
        push(
            "spec.rest.authSecretName",
            rest.auth_secret_name.as_deref(),
            keys,
        );
    }
    if let Some(adcs) = &spec.adcs {
        let keys: &[KeyAlternative] = match adcs.auth_method {
            AdcsAuthMethod::Ntlm | AdcsAuthMethod::Basic => &[USER_PASSWORD],
            AdcsAuthMethod::Kerberos => &[
                KeyAlternative::of(&["username", "realm", "kdc", "password"]),
                KeyAlternative::of(&["username", "realm", "kdc", "keytab"]),
            ],
            AdcsAuthMethod::ClientCertificate => &[TLS_PAIR],
        };
        push(
            "spec.adcs.authSecretName",
            Some(&adcs.auth_secret_name),
            keys,
        );
    }
    if let Some(ejbca) = &spec.ejbca {
        push(
            "spec.ejbca.authSecretName",
            Some(&ejbca.auth_secret_name),
            &[
                TLS_PAIR,
                KeyAlternative::of(&["tokenUrl", "clientId", "clientSecret"]),
            ],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::issuer::{AdcsAuthMethod, RestFlavor};

    fn fields(spec: &IssuerSpec) -> Vec<(String, FieldErrorKind)> {
        match validate_issuer_spec(spec) {
            Ok(()) => vec![],
            Err(ValidationErrors(errors)) => {
                errors.into_iter().map(|e| (e.field, e.kind)).collect()
            }
        }
    }

    fn ca_bundle() -> Base64Bytes {
        let ca =
            certwright_fixtures::TestCa::root(certwright_fixtures::KeyKind::EcdsaP256, "Corp Root");
        Base64Bytes::from(ca.cert_pem())
    }

    fn good_adcs() -> AdcsBackend {
        AdcsBackend {
            url: "https://adcs.corp.example/certsrv".into(),
            auth_method: AdcsAuthMethod::Ntlm,
            auth_secret_name: "adcs-auth".into(),
            ca_bundle: Some(ca_bundle()),
            template_name: "Web Server".into(),
            poll_interval: Some("5m".into()),
            send_validity_period: false,
            timeout: Some("30s".into()),
        }
    }

    #[test]
    fn a_good_spec_of_each_backend_passes() {
        let specs = [
            IssuerSpec {
                ca: Some(CaBackend {
                    secret_name: "dev-ca".into(),
                    ..Default::default()
                }),
                default_duration: Some("2160h".into()),
                max_concurrent_requests: Some(4),
                requests_per_second: Some(2.0),
                ..Default::default()
            },
            IssuerSpec {
                rest: Some(RestBackend {
                    url: "https://pki.corp.example/api/v1".into(),
                    flavor: RestFlavor::Cfssl,
                    auth_secret_name: Some("pki-auth".into()),
                    ca_bundle: Some(ca_bundle()),
                    template_name: Some("web-server".into()),
                    timeout: Some("30s".into()),
                }),
                ..Default::default()
            },
            IssuerSpec {
                adcs: Some(good_adcs()),
                ..Default::default()
            },
            IssuerSpec {
                ejbca: Some(EjbcaBackend {
                    url: "https://ejbca.corp.example/ejbca/ejbca-rest-api".into(),
                    auth_secret_name: "ejbca-client".into(),
                    certificate_authority_name: "IssuingCA".into(),
                    certificate_profile_name: "ENDUSER".into(),
                    end_entity_profile_name: "k8s-workloads".into(),
                    end_entity_name: Some("fixed:k8s".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            IssuerSpec {
                ejbca: Some(EjbcaBackend {
                    url: "https://ejbca.corp.example/ejbca/ejbca-rest-api".into(),
                    auth_secret_name: "ejbca-client".into(),
                    ca_bundle: Some(ca_bundle()),
                    // The EJBCA REST contract's own example of a CA name.
                    certificate_authority_name: "CN=ExampleCA".into(),
                    certificate_profile_name: "ENDUSER: web & mail".into(),
                    end_entity_profile_name: "k8s\\workloads=1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        for spec in specs {
            assert_eq!(validate_issuer_spec(&spec), Ok(()), "{spec:?}");
        }
    }

    #[test]
    fn names_follow_the_rules_of_their_backend() {
        assert_eq!(
            check_backend_name(BackendKind::Ejbca, "CN=ExampleCA,O=Sample"),
            Ok(())
        );
        assert!(check_backend_name(BackendKind::Adcs, "CN=ExampleCA").is_err());
        for bad in ["CA\r\nX", " IssuingCA", &"x".repeat(257)] {
            assert!(
                check_backend_name(BackendKind::Ejbca, bad).is_err(),
                "{bad:?}"
            );
        }
        let spec = IssuerSpec {
            ejbca: Some(EjbcaBackend {
                url: "https://ejbca.corp.example/ejbca/ejbca-rest-api".into(),
                auth_secret_name: "ejbca-client".into(),
                certificate_authority_name: "CN=Example\u{0}CA".into(),
                certificate_profile_name: "ENDUSER".into(),
                end_entity_profile_name: "k8s".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            fields(&spec),
            vec![(
                "spec.ejbca.certificateAuthorityName".into(),
                FieldErrorKind::Invalid
            )]
        );
    }

    #[test]
    fn zero_backends_is_required() {
        assert_eq!(
            fields(&IssuerSpec::default()),
            vec![("spec".into(), FieldErrorKind::Required)]
        );
    }

    #[test]
    fn two_backends_names_the_second() {
        let spec = IssuerSpec {
            ca: Some(CaBackend {
                secret_name: "dev-ca".into(),
                ..Default::default()
            }),
            adcs: Some(good_adcs()),
            ..Default::default()
        };
        let err = validate_issuer_spec(&spec).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].field, "spec.adcs");
        assert_eq!(err.0[0].kind, FieldErrorKind::Forbidden);
        assert!(err.0[0].detail.contains("spec.ca is already set"));
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let spec = IssuerSpec {
            adcs: Some(AdcsBackend {
                url: "http://user:pw@adcs.corp.example/certsrv".into(),
                auth_secret_name: "Adcs_Auth".into(),
                ca_bundle: Some(Base64Bytes::from("not pem")),
                template_name: "WebServer\r\nSAN:dns=evil.example".into(),
                poll_interval: Some("5 minutes".into()),
                timeout: Some("1h".into()),
                ..Default::default()
            }),
            max_concurrent_requests: Some(0),
            requests_per_second: Some(f64::NAN),
            default_duration: Some("90d".into()),
            ..Default::default()
        };
        let got = fields(&spec);
        let expected = [
            "spec.adcs.url",
            "spec.adcs.authSecretName",
            "spec.adcs.caBundle",
            "spec.adcs.templateName",
            "spec.adcs.pollInterval",
            "spec.adcs.timeout",
            "spec.maxConcurrentRequests",
            "spec.requestsPerSecond",
            "spec.defaultDuration",
        ];
        for field in expected {
            assert!(
                got.iter().any(|(f, _)| f == field),
                "missing {field} in {got:?}"
            );
        }
        // http scheme and embedded credentials are two problems with one field.
        assert_eq!(got.iter().filter(|(f, _)| f == "spec.adcs.url").count(), 2);
        let message = validate_issuer_spec(&spec).unwrap_err().to_string();
        assert!(
            message.contains("spec.adcs.url: Invalid value: must use https, not http"),
            "{message}"
        );
        assert!(
            !message.contains("pw@"),
            "credentials must not be echoed: {message}"
        );
    }

    #[test]
    fn required_names_are_required() {
        let spec = IssuerSpec {
            ejbca: Some(EjbcaBackend {
                url: "".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = fields(&spec);
        for field in [
            "spec.ejbca.url",
            "spec.ejbca.authSecretName",
            "spec.ejbca.certificateAuthorityName",
            "spec.ejbca.certificateProfileName",
            "spec.ejbca.endEntityProfileName",
        ] {
            assert!(
                got.contains(&(field.to_string(), FieldErrorKind::Required)),
                "{field} not Required in {got:?}"
            );
        }
    }

    #[test]
    fn dns1123_subdomains() {
        for ok in ["a", "dev-ca", "pki.auth", "0abc", "a-b.c-d"] {
            assert_eq!(check_dns1123_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a..b",
            ".a",
            "a.",
            &"a".repeat(254),
        ] {
            assert!(check_dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    fn keys_of(spec: &IssuerSpec) -> Vec<(&'static str, String, Vec<Vec<&'static str>>)> {
        secret_requirements(spec)
            .into_iter()
            .map(|r| {
                let keys = r.keys.iter().map(|alt| alt.keys.to_vec()).collect();
                (r.field, r.secret, keys)
            })
            .collect()
    }

    fn adcs_with(method: AdcsAuthMethod) -> IssuerSpec {
        IssuerSpec {
            adcs: Some(AdcsBackend {
                auth_method: method,
                ..good_adcs()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn secret_requirements_of_each_backend_and_auth_method() {
        let ca = IssuerSpec {
            ca: Some(CaBackend {
                secret_name: "dev-ca".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            keys_of(&ca),
            vec![(
                "spec.ca.secretName",
                "dev-ca".to_string(),
                vec![vec!["tls.crt", "tls.key"]]
            )]
        );

        let rest = |flavor, auth: Option<&str>| IssuerSpec {
            rest: Some(RestBackend {
                url: "https://pki.corp.example/api/v1".into(),
                flavor,
                auth_secret_name: auth.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            keys_of(&rest(RestFlavor::Certwright, Some("pki-auth"))),
            vec![(
                "spec.rest.authSecretName",
                "pki-auth".to_string(),
                vec![
                    vec!["token"],
                    vec!["username", "password"],
                    vec!["tls.crt", "tls.key"]
                ]
            )]
        );
        assert_eq!(
            keys_of(&rest(RestFlavor::Cfssl, Some("cfssl-key")))[0].2,
            vec![vec!["key"]]
        );
        // The REST CA may need no credentials at all.
        assert!(secret_requirements(&rest(RestFlavor::Certwright, None)).is_empty());

        for method in [AdcsAuthMethod::Ntlm, AdcsAuthMethod::Basic] {
            assert_eq!(
                keys_of(&adcs_with(method)),
                vec![(
                    "spec.adcs.authSecretName",
                    "adcs-auth".to_string(),
                    vec![vec!["username", "password"]]
                )]
            );
        }
        assert_eq!(
            keys_of(&adcs_with(AdcsAuthMethod::Kerberos))[0].2,
            vec![
                vec!["username", "realm", "kdc", "password"],
                vec!["username", "realm", "kdc", "keytab"]
            ]
        );
        assert_eq!(
            keys_of(&adcs_with(AdcsAuthMethod::ClientCertificate))[0].2,
            vec![vec!["tls.crt", "tls.key"]]
        );

        let ejbca = IssuerSpec {
            ejbca: Some(EjbcaBackend {
                auth_secret_name: "ejbca-client".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            keys_of(&ejbca),
            vec![(
                "spec.ejbca.authSecretName",
                "ejbca-client".to_string(),
                vec![
                    vec!["tls.crt", "tls.key"],
                    vec!["tokenUrl", "clientId", "clientSecret"]
                ]
            )]
        );
    }

    #[test]
    fn secret_requirements_list_every_block_and_skip_blank_names() {
        let spec = IssuerSpec {
            ca: Some(CaBackend {
                secret_name: "dev-ca".into(),
                ..Default::default()
            }),
            adcs: Some(good_adcs()),
            ejbca: Some(EjbcaBackend {
                auth_secret_name: " ".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let fields: Vec<_> = secret_requirements(&spec)
            .into_iter()
            .map(|r| r.field)
            .collect();
        assert_eq!(
            fields,
            vec!["spec.ca.secretName", "spec.adcs.authSecretName"]
        );
        assert!(secret_requirements(&IssuerSpec::default()).is_empty());
    }

    #[test]
    fn unmet_requirements_name_the_missing_keys() {
        let has = |present: &'static [&'static str]| move |k: &str| present.contains(&k);
        let ca = &secret_requirements(&IssuerSpec {
            ca: Some(CaBackend {
                secret_name: "dev-ca".into(),
                ..Default::default()
            }),
            ..Default::default()
        })[0];
        assert_eq!(ca.unmet(has(&["tls.crt", "tls.key"])), None);
        assert_eq!(
            ca.unmet(has(&["tls.crt"])).as_deref(),
            Some("has no tls.key")
        );
        assert_eq!(
            ca.unmet(has(&[])).as_deref(),
            Some("has no tls.crt, tls.key")
        );

        let kerberos = &secret_requirements(&adcs_with(AdcsAuthMethod::Kerberos))[0];
        assert!(kerberos.is_met(has(&["username", "realm", "kdc", "keytab"])));
        assert!(kerberos.is_met(has(&["username", "realm", "kdc", "password", "domain"])));
        let unmet = kerberos
            .unmet(has(&["username", "password"]))
            .unwrap_or_default();
        assert_eq!(
            unmet,
            "holds none of the key sets [username + realm + kdc + password], \
             [username + realm + kdc + keytab]"
        );
    }
}
