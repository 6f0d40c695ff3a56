//! Pure validation of issuer specs. Every problem is reported, each with the field path
//! a user would edit, in the shape of Kubernetes' `field.Error` so that the webhook can
//! return them as they are. Nothing here performs I/O.

use std::time::Duration;

use crate::Base64Bytes;
use crate::duration::parse_duration;
use crate::issuer::{AdcsBackend, CaBackend, EjbcaBackend, IssuerSpec, RestBackend};

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
    v.template_name(
        "spec.ejbca.certificateAuthorityName",
        &ejbca.certificate_authority_name,
    );
    v.template_name(
        "spec.ejbca.certificateProfileName",
        &ejbca.certificate_profile_name,
    );
    v.template_name(
        "spec.ejbca.endEntityProfileName",
        &ejbca.end_entity_profile_name,
    );
    if let Err(detail) = ejbca.end_entity_name() {
        v.push("spec.ejbca.endEntityName", FieldErrorKind::Invalid, detail);
    }
    if let Some(id) = &ejbca.account_binding_id {
        v.template_name("spec.ejbca.accountBindingId", id);
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
        let ca = certwright_testkit::fixtures::TestCa::root(
            certwright_testkit::fixtures::KeyKind::EcdsaP256,
            "Corp Root",
        );
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
            timeout: Some("30s".into()),
        }
    }

    #[test]
    fn a_good_spec_of_each_backend_passes() {
        let specs = [
            IssuerSpec {
                ca: Some(CaBackend {
                    secret_name: "dev-ca".into(),
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
        ];
        for spec in specs {
            assert_eq!(validate_issuer_spec(&spec), Ok(()), "{spec:?}");
        }
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
}
