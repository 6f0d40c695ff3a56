//! Turns an issuer spec and the Secrets it references into a ready backend.
//!
//! This is the one place where `certwright-api` types meet the adapters' own
//! configuration, behind the `api` feature, so that the engine, the CLI and embedders
//! build backends the same way. Secrets come in as plain maps; how they are fetched
//! (API server, files) is the caller's business.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use certwright_api::validation::ValidationErrors;
use certwright_api::{BackendKind, IssuerSpec, parse_duration, validate_issuer_spec};

use crate::{Backend, DEFAULT_TIMEOUT, Error};

/// The data of one Secret: key to bytes, as in `Secret.data`.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Why a backend could not be built from an issuer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The spec itself is invalid.
    #[error("invalid issuer spec: {0}")]
    InvalidSpec(#[source] ValidationErrors),
    /// A referenced Secret does not exist where this issuer may read it.
    #[error("Secret {name:?} not found{}", namespace_hint(.namespace))]
    SecretNotFound {
        /// The Secret's name.
        name: String,
        /// Where it was looked for, when the caller knows.
        namespace: Option<String>,
    },
    /// A referenced Secret lacks a key the configuration needs.
    #[error("Secret {secret:?} has no {key:?}: {why}")]
    SecretKeyMissing {
        /// The Secret's name.
        secret: String,
        /// The missing key (or keys, as alternatives).
        key: String,
        /// What the key is for.
        why: String,
    },
    /// The backend is not compiled into this build.
    #[error("the {0} backend is not available in this build")]
    Unavailable(BackendKind),
    /// The adapter refused the configuration (bad CA key, unreadable caBundle...).
    #[error(transparent)]
    Backend(#[from] Error),
}

fn namespace_hint(namespace: &Option<String>) -> String {
    namespace
        .as_deref()
        .map(|ns| format!(" in namespace {ns:?}"))
        .unwrap_or_default()
}

impl BuildError {
    /// The issuer's Ready reason for this error: `InvalidSpec`, `SecretNotFound` or
    /// `Unauthorized`... as documented on the issuer status.
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::InvalidSpec(_) | BuildError::Unavailable(_) => "InvalidSpec",
            BuildError::SecretNotFound { .. } | BuildError::SecretKeyMissing { .. } => {
                "SecretNotFound"
            }
            BuildError::Backend(_) => "InvalidSpec",
        }
    }
}

/// Where the Secrets of one issuer are looked up.
pub trait SecretSource {
    /// The data of Secret `name`, or `None` when it does not exist.
    fn secret(&self, name: &str) -> Option<&SecretData>;

    /// The namespace the Secrets are read from, for messages.
    fn namespace(&self) -> Option<&str> {
        None
    }
}

impl SecretSource for BTreeMap<String, SecretData> {
    fn secret(&self, name: &str) -> Option<&SecretData> {
        self.get(name)
    }
}

struct Lookup<'a, S: ?Sized> {
    source: &'a S,
}

impl<S: SecretSource + ?Sized> Lookup<'_, S> {
    fn secret(&self, name: &str) -> Result<&SecretData, BuildError> {
        self.source
            .secret(name)
            .ok_or_else(|| BuildError::SecretNotFound {
                name: name.to_string(),
                namespace: self.source.namespace().map(str::to_string),
            })
    }

    fn key<'d>(
        &self,
        secret: &str,
        data: &'d SecretData,
        key: &str,
        why: &str,
    ) -> Result<&'d [u8], BuildError> {
        data.get(key)
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| BuildError::SecretKeyMissing {
                secret: secret.to_string(),
                key: key.to_string(),
                why: why.to_string(),
            })
    }
}

#[cfg(feature = "rest")]
fn text(secret: &str, key: &str, bytes: &[u8]) -> Result<String, BuildError> {
    String::from_utf8(bytes.to_vec())
        .map(|s| s.trim().to_string())
        .map_err(|_| BuildError::SecretKeyMissing {
            secret: secret.to_string(),
            key: key.to_string(),
            why: "it must be UTF-8 text".to_string(),
        })
}

#[cfg(feature = "rest")]
fn duration_or(raw: Option<&str>, default: Duration) -> Duration {
    // The spec was validated first, so a parse failure cannot happen here.
    raw.and_then(|r| parse_duration(r).ok()).unwrap_or(default)
}

/// Validates `spec`, reads the Secrets it references from `secrets`, and builds its
/// backend.
pub fn build_backend<S: SecretSource + ?Sized>(
    spec: &IssuerSpec,
    secrets: &S,
) -> Result<Arc<dyn Backend>, BuildError> {
    validate_issuer_spec(spec).map_err(BuildError::InvalidSpec)?;
    // Unused only in builds without any adapter feature.
    #[allow(unused_variables)]
    let lookup = Lookup { source: secrets };
    #[allow(unused_variables)]
    let default_duration = spec
        .default_duration()
        .unwrap_or(certwright_api::issuer::DEFAULT_DURATION);
    match spec.backend_kind() {
        #[cfg(feature = "ca")]
        Some(BackendKind::Ca) => {
            let ca = spec
                .ca
                .as_ref()
                .ok_or(BuildError::Unavailable(BackendKind::Ca))?;
            let name = ca.secret_name.as_str();
            let data = lookup.secret(name)?;
            let chain = lookup.key(name, data, "tls.crt", "the CA certificate (PEM)")?;
            let key = lookup.key(name, data, "tls.key", "the CA private key (PEM)")?;
            let backend = crate::ca::LocalCa::from_pem(
                chain,
                key,
                crate::ca::LocalCaConfig { default_duration },
            )?;
            Ok(Arc::new(backend))
        }
        #[cfg(feature = "rest")]
        Some(BackendKind::Rest) => {
            use crate::rest::{Flavor, RestAuth, RestBackend, RestConfig};
            let rest = spec
                .rest
                .as_ref()
                .ok_or(BuildError::Unavailable(BackendKind::Rest))?;
            let flavor = match rest.flavor {
                certwright_api::RestFlavor::Cfssl => Flavor::Cfssl,
                _ => Flavor::Certwright,
            };
            let auth = match rest.auth_secret_name.as_deref() {
                None => RestAuth::None,
                Some(name) => rest_auth(&lookup, name, flavor)?,
            };
            let config = RestConfig {
                url: rest.url.clone(),
                flavor,
                auth,
                ca_bundle_pem: rest
                    .ca_bundle
                    .as_ref()
                    .filter(|b| !b.is_empty())
                    .map(|b| b.as_bytes().to_vec()),
                template: rest.template_name.clone(),
                timeout: duration_or(rest.timeout.as_deref(), DEFAULT_TIMEOUT),
                default_duration,
            };
            Ok(Arc::new(RestBackend::new(config)?))
        }
        Some(other) => Err(BuildError::Unavailable(other)),
        // validate_issuer_spec guarantees exactly one backend block.
        None => Err(BuildError::InvalidSpec(ValidationErrors(Vec::new()))),
    }
}

#[cfg(feature = "rest")]
fn rest_auth<S: SecretSource + ?Sized>(
    lookup: &Lookup<'_, S>,
    name: &str,
    flavor: crate::rest::Flavor,
) -> Result<crate::rest::RestAuth, BuildError> {
    use crate::http::ClientIdentity;
    use crate::rest::{Flavor, RestAuth};
    let data = lookup.secret(name)?;
    if flavor == Flavor::Cfssl {
        let key = lookup.key(name, data, "key", "the cfssl authsign HMAC key (hex)")?;
        return Ok(RestAuth::CfsslHmac {
            key_hex: text(name, "key", key)?,
        });
    }
    if let Some(token) = data.get("token").filter(|t| !t.is_empty()) {
        return Ok(RestAuth::Bearer(text(name, "token", token)?));
    }
    if data.contains_key("username") || data.contains_key("password") {
        let username = lookup.key(name, data, "username", "HTTP basic authentication")?;
        let password = lookup.key(name, data, "password", "HTTP basic authentication")?;
        return Ok(RestAuth::Basic {
            username: text(name, "username", username)?,
            password: text(name, "password", password)?,
        });
    }
    if data.contains_key("tls.crt") || data.contains_key("tls.key") {
        let cert = lookup.key(name, data, "tls.crt", "the client certificate (PEM)")?;
        let key = lookup.key(name, data, "tls.key", "the client certificate's key (PEM)")?;
        return Ok(RestAuth::ClientCertificate(ClientIdentity {
            cert_pem: cert.to_vec(),
            key_pem: key.to_vec(),
        }));
    }
    Err(BuildError::SecretKeyMissing {
        secret: name.to_string(),
        key: "token | username+password | tls.crt+tls.key".to_string(),
        why: "one way to authenticate to the REST CA".to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use certwright_api::{AdcsBackend, Base64Bytes, CaBackend, RestBackend, RestFlavor};
    use certwright_testkit::fixtures::{KeyKind, TestCa};

    struct Namespaced(BTreeMap<String, SecretData>);

    impl SecretSource for Namespaced {
        fn secret(&self, name: &str) -> Option<&SecretData> {
            self.0.get(name)
        }
        fn namespace(&self) -> Option<&str> {
            Some("cert-manager")
        }
    }

    fn secret(pairs: &[(&str, &[u8])]) -> SecretData {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    fn ca_spec() -> IssuerSpec {
        IssuerSpec {
            ca: Some(CaBackend {
                secret_name: "dev-ca".into(),
            }),
            ..Default::default()
        }
    }

    fn rest_spec(flavor: RestFlavor, auth: Option<&str>) -> IssuerSpec {
        IssuerSpec {
            rest: Some(RestBackend {
                url: "https://pki.corp.example/api/v1".into(),
                flavor,
                auth_secret_name: auth.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn err(result: Result<Arc<dyn Backend>, BuildError>) -> BuildError {
        match result {
            Ok(backend) => panic!("expected an error, built {backend:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn builds_a_local_ca_from_its_tls_secret() {
        let ca = TestCa::root(KeyKind::EcdsaP256, "Dev CA");
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "dev-ca".to_string(),
            secret(&[
                ("tls.crt", ca.cert_pem().as_bytes()),
                ("tls.key", ca.key_pem().as_bytes()),
            ]),
        );
        let backend = build_backend(&ca_spec(), &secrets).unwrap();
        assert_eq!(backend.kind(), "ca");
    }

    #[test]
    fn names_a_missing_secret_and_where_it_was_looked_for() {
        let e = err(build_backend(&ca_spec(), &Namespaced(BTreeMap::new())));
        assert_eq!(e.reason(), "SecretNotFound");
        assert_eq!(
            e.to_string(),
            "Secret \"dev-ca\" not found in namespace \"cert-manager\""
        );
    }

    #[test]
    fn names_a_missing_key() {
        let mut secrets = BTreeMap::new();
        secrets.insert("dev-ca".to_string(), secret(&[("tls.crt", b"x")]));
        let e = err(build_backend(&ca_spec(), &secrets));
        assert!(
            matches!(&e, BuildError::SecretKeyMissing { key, .. } if key == "tls.key"),
            "{e}"
        );
        assert!(e.to_string().contains("the CA private key"), "{e}");
    }

    #[test]
    fn a_bad_ca_key_is_the_adapters_misconfiguration() {
        let ca = TestCa::root(KeyKind::EcdsaP256, "Dev CA");
        let other = TestCa::root(KeyKind::EcdsaP256, "Other CA");
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "dev-ca".to_string(),
            secret(&[
                ("tls.crt", ca.cert_pem().as_bytes()),
                ("tls.key", other.key_pem().as_bytes()),
            ]),
        );
        let e = err(build_backend(&ca_spec(), &secrets));
        assert!(
            matches!(&e, BuildError::Backend(Error::Misconfigured { .. })),
            "{e}"
        );
    }

    #[test]
    fn an_invalid_spec_is_refused_before_any_secret_is_read() {
        let mut spec = ca_spec();
        spec.default_duration = Some("90d".into());
        let e = err(build_backend(&spec, &BTreeMap::new()));
        assert_eq!(e.reason(), "InvalidSpec");
        assert!(e.to_string().contains("spec.defaultDuration"), "{e}");
    }

    #[test]
    fn rest_credentials_follow_the_secret_keys() {
        let mut secrets = BTreeMap::new();
        secrets.insert("token".to_string(), secret(&[("token", b"abc\n")]));
        secrets.insert(
            "basic".to_string(),
            secret(&[("username", b"u"), ("password", b"p")]),
        );
        secrets.insert("half".to_string(), secret(&[("username", b"u")]));
        secrets.insert("empty".to_string(), secret(&[("other", b"x")]));
        secrets.insert("hmac".to_string(), secret(&[("key", b"00112233")]));
        for name in ["token", "basic"] {
            let backend = build_backend(&rest_spec(RestFlavor::Certwright, Some(name)), &secrets);
            assert_eq!(backend.unwrap().kind(), "rest", "{name}");
        }
        let e = err(build_backend(
            &rest_spec(RestFlavor::Certwright, Some("half")),
            &secrets,
        ));
        assert!(
            matches!(&e, BuildError::SecretKeyMissing { key, .. } if key == "password"),
            "{e}"
        );
        let e = err(build_backend(
            &rest_spec(RestFlavor::Certwright, Some("empty")),
            &secrets,
        ));
        assert!(
            e.to_string()
                .contains("token | username+password | tls.crt+tls.key"),
            "{e}"
        );
        let e = err(build_backend(
            &rest_spec(RestFlavor::Cfssl, Some("basic")),
            &secrets,
        ));
        assert!(
            matches!(&e, BuildError::SecretKeyMissing { key, .. } if key == "key"),
            "{e}"
        );
        let cfssl = build_backend(&rest_spec(RestFlavor::Cfssl, Some("hmac")), &secrets).unwrap();
        assert_eq!(cfssl.kind(), "cfssl");
        let none = build_backend(&rest_spec(RestFlavor::Certwright, None), &secrets).unwrap();
        assert_eq!(none.kind(), "rest");
    }

    #[test]
    fn a_backend_not_in_this_build_says_so() {
        let spec = IssuerSpec {
            adcs: Some(AdcsBackend {
                url: "https://adcs.corp.example/certsrv".into(),
                auth_secret_name: "adcs-auth".into(),
                template_name: "WebServer".into(),
                ca_bundle: Some(Base64Bytes::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = err(build_backend(&spec, &BTreeMap::new()));
        assert!(
            matches!(e, BuildError::Unavailable(BackendKind::Adcs)),
            "{e}"
        );
    }
}
