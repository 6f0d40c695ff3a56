//! Builds a backend from an issuer spec and the Secrets it references.
//!
//! This is the one place where `certwright-api` types meet the adapters' own
//! configuration, so that the engine, the CLI and embedders build backends the same
//! way. The adapters are compiled in by cargo feature (`ca`, `pkcs11`, `rest`, `adcs`,
//! `ejbca`, all on by default) and re-exported under their short names; a spec naming
//! an adapter this build lacks gets [`BuildError::Unavailable`]. Secrets come in as
//! plain maps; how they are fetched (API server, files) is the caller's business.
//!
//! One file because it is the one mapping from an issuer spec and its Secrets to a
//! backend, with a unit test per backend and auth method (over two fifths of the file).
#![deny(missing_docs)]
// With adapters left out, the helpers only they use are unused.
#![cfg_attr(
    not(all(feature = "ca", feature = "rest", feature = "adcs", feature = "ejbca")),
    allow(unused_imports, dead_code)
)]

#[cfg(feature = "adcs")]
pub use certwright_backend_adcs as adcs;
#[cfg(feature = "ca")]
pub use certwright_backend_ca as ca;
#[cfg(feature = "ejbca")]
pub use certwright_backend_ejbca as ejbca;
#[cfg(any(feature = "rest", feature = "adcs", feature = "ejbca"))]
pub use certwright_backend_http as http;
#[cfg(feature = "rest")]
pub use certwright_backend_rest as rest;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use certwright_api::validation::ValidationErrors;
use certwright_api::{BackendKind, IssuerSpec, parse_duration, validate_issuer_spec};

use certwright_pki::{Backend, DEFAULT_TIMEOUT, Error};

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
    /// The issuer's Ready reason for this error: `InvalidSpec`, `SecretNotFound`, or a
    /// local CA's own fault (`CAExpired`, `CAKeyMismatch`... [`CaFault::reason`](certwright_backend_ca::CaFault::reason)),
    /// as documented on the issuer status.
    pub fn reason(&self) -> &'static str {
        #[cfg(feature = "ca")]
        if let Some(fault) = certwright_backend_ca::CaFault::of(self) {
            return fault.reason();
        }
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

    /// The egress policy the built backend keeps to: where its PKI (and KDC) may be.
    /// The engine gives one for the issuers a tenant writes; `None` lets the backend
    /// connect anywhere.
    fn egress(&self) -> Option<Arc<certwright_pki::egress::EgressPolicy>> {
        None
    }

    /// The PKCS#11 modules an issuer built from this source may load
    /// (`spec.ca.pkcs11.module`): none unless the caller says. Loading a module runs its
    /// code in this process, so it is never a path an issuer alone chooses: the engine
    /// gives the controller's `--pkcs11-module` list, to cluster issuers only unless it
    /// is told to trust namespaced ones.
    fn pkcs11_modules(&self) -> &[std::path::PathBuf] {
        &[]
    }

    /// The issuer's issuance records (until when the certificates issued under each
    /// trust anchor are valid), which a rotation's `Retire` waits for, read live. `None`:
    /// nothing is recorded, and `Retire` waits for nothing.
    fn issuance_records(&self) -> Option<Arc<dyn certwright_pki::IssuanceRecords>> {
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

/// One local CA: the certificate from `secret`'s `tls.crt`, the key from its `tls.key`
/// or from the PKCS#11 token `pkcs11` names (`field` is where that is in the spec).
#[cfg(feature = "ca")]
fn local_ca<S: SecretSource + ?Sized>(
    lookup: &Lookup<'_, S>,
    secret: &str,
    pkcs11: Option<&certwright_api::Pkcs11Key>,
    field: &str,
    max_concurrent: u32,
    config: certwright_backend_ca::LocalCaConfig,
) -> Result<certwright_backend_ca::LocalCa, BuildError> {
    let data = lookup.secret(secret)?;
    let chain = lookup.key(secret, data, "tls.crt", "the CA certificate (PEM)")?;
    match pkcs11 {
        None => {
            let key = lookup.key(secret, data, "tls.key", "the CA private key (PEM)")?;
            Ok(certwright_backend_ca::LocalCa::from_pem(
                chain, key, config,
            )?)
        }
        #[cfg(feature = "pkcs11")]
        Some(token) => {
            let token = token_key(lookup, secret, token, field, max_concurrent)?;
            Ok(certwright_backend_ca::LocalCa::with_token(
                chain, token, config,
            )?)
        }
        #[cfg(not(feature = "pkcs11"))]
        Some(_) => {
            let _ = (field, max_concurrent);
            Err(BuildError::Unavailable(BackendKind::Ca))
        }
    }
}

/// Where an issuer's CA key is in a PKCS#11 token, once its module is allowed, and
/// the PIN read from its Secret (`pinSecretName`, else `key_secret`).
#[cfg(feature = "pkcs11")]
fn token_key<S: SecretSource + ?Sized>(
    lookup: &Lookup<'_, S>,
    key_secret: &str,
    key: &certwright_api::Pkcs11Key,
    field: &str,
    max_concurrent: u32,
) -> Result<certwright_backend_ca::TokenKeyConfig, BuildError> {
    use certwright_api::validation::{FieldError, FieldErrorKind};
    use certwright_backend_ca::{RsaScheme, TokenKeyConfig, TokenRef};
    let module = std::path::PathBuf::from(&key.module);
    let allowed = lookup.source.pkcs11_modules();
    // The path as written, compared as the webhook compares it: no normalization.
    if !allowed.iter().any(|p| p.as_os_str() == key.module.as_str()) {
        let detail = if allowed.is_empty() {
            "this controller loads no PKCS#11 module for this issuer (its operator allows \
             modules with --pkcs11-module, for cluster issuers unless namespaced ones are \
             allowed too)"
                .to_string()
        } else {
            format!(
                "{:?} is not a module this controller may load for this issuer; it may load: {}",
                key.module,
                allowed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(BuildError::InvalidSpec(ValidationErrors(vec![
            FieldError {
                field: format!("{field}.module"),
                kind: FieldErrorKind::Forbidden,
                detail,
            },
        ])));
    }
    let pin_secret = key.pin_secret(key_secret);
    let data = lookup.secret(pin_secret)?;
    let pin = lookup.key(pin_secret, data, "pin", "the token's user PIN")?;
    let pin = String::from_utf8(pin.to_vec())
        .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|_| BuildError::SecretKeyMissing {
            secret: pin_secret.to_string(),
            key: "pin".to_string(),
            why: "it must be UTF-8 text".to_string(),
        })?;
    let token = match (&key.token_label, key.slot) {
        (Some(label), _) => TokenRef::Label(label.clone()),
        (None, Some(slot)) => TokenRef::Slot(slot),
        // Validated: one of the two is set.
        (None, None) => return Err(BuildError::InvalidSpec(ValidationErrors(Vec::new()))),
    };
    let mut config = TokenKeyConfig::new(module, token, pin)
        .max_sessions(usize::try_from(max_concurrent).unwrap_or(1))
        .rsa_scheme(match key.rsa_signature_scheme.unwrap_or_default() {
            certwright_api::RsaSignatureScheme::Pss => RsaScheme::Pss,
            _ => RsaScheme::Pkcs1v15,
        });
    if let Some(label) = &key.key_label {
        config = config.key_label(label.clone());
    }
    if let Some(id) = key
        .key_id
        .as_deref()
        .and_then(certwright_api::issuer::parse_key_id)
    {
        config = config.key_id(id);
    }
    Ok(config)
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
            let check_revocation = ca.check_revocation.unwrap_or(true);
            let build = |secret: &str, pkcs11: Option<&certwright_api::Pkcs11Key>, field: &str| {
                let local = local_ca(
                    &lookup,
                    secret,
                    pkcs11,
                    field,
                    spec.max_concurrent_requests(),
                    certwright_backend_ca::LocalCaConfig { default_duration },
                )?;
                Ok::<_, BuildError>(if check_revocation {
                    local.with_revocation_check(secrets.egress())
                } else {
                    local
                })
            };
            let current = build(&ca.secret_name, ca.pkcs11.as_ref(), "spec.ca.pkcs11")?;
            let Some(rotation) = &ca.rotation else {
                return Ok(Arc::new(current));
            };
            let next = build(
                &rotation.next_secret_name,
                rotation.next_pkcs11.as_ref(),
                "spec.ca.rotation.nextPkcs11",
            )?;
            let phase = match rotation.phase {
                certwright_api::RotationPhase::Distribute => {
                    certwright_pki::RotationPhase::Distribute
                }
                certwright_api::RotationPhase::Switch => certwright_pki::RotationPhase::Switch,
                certwright_api::RotationPhase::Retire => certwright_pki::RotationPhase::Retire,
            };
            Ok(Arc::new(certwright_backend_ca::RotatingCa::new(
                current,
                next,
                phase,
                secrets.issuance_records(),
            )?))
        }
        #[cfg(feature = "rest")]
        Some(BackendKind::Rest) => {
            use certwright_backend_rest::{Flavor, RestAuth, RestBackend, RestConfig};
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
                egress: secrets.egress(),
            };
            Ok(Arc::new(RestBackend::new(config)?))
        }
        #[cfg(feature = "ejbca")]
        Some(BackendKind::Ejbca) => {
            let ejbca = spec
                .ejbca
                .as_ref()
                .ok_or(BuildError::Unavailable(BackendKind::Ejbca))?;
            Ok(Arc::new(ejbca_backend(&lookup, ejbca, default_duration)?))
        }
        #[cfg(feature = "adcs")]
        Some(BackendKind::Adcs) => {
            let adcs = spec
                .adcs
                .as_ref()
                .ok_or(BuildError::Unavailable(BackendKind::Adcs))?;
            Ok(Arc::new(adcs_backend(&lookup, adcs, default_duration)?))
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
    flavor: certwright_backend_rest::Flavor,
) -> Result<certwright_backend_rest::RestAuth, BuildError> {
    use certwright_backend_http::ClientIdentity;
    use certwright_backend_rest::{Flavor, RestAuth};
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

/// The EJBCA backend of an `ejbca` block: credentials from its Secret (a client
/// certificate, OAuth2 client credentials, or both), trust, names and timeout from the
/// spec.
#[cfg(feature = "ejbca")]
fn ejbca_backend<S: SecretSource + ?Sized>(
    lookup: &Lookup<'_, S>,
    spec: &certwright_api::EjbcaBackend,
    default_duration: Duration,
) -> Result<certwright_backend_ejbca::EjbcaBackend, BuildError> {
    use certwright_api::issuer::EndEntityName;
    use certwright_backend_ejbca::{
        ClientIdentity, EjbcaBackend, EjbcaConfig, EndEntityNaming, OAuthCredentials,
    };

    let name = spec.auth_secret_name.as_str();
    let data = lookup.secret(name)?;
    let utf8 = |key: &str, bytes: &[u8]| -> Result<String, BuildError> {
        String::from_utf8(bytes.to_vec())
            .map(|s| s.trim().to_string())
            .map_err(|_| BuildError::SecretKeyMissing {
                secret: name.to_string(),
                key: key.to_string(),
                why: "it must be UTF-8 text".to_string(),
            })
    };
    let has = |key: &str| data.get(key).is_some_and(|v| !v.is_empty());

    let oauth = if ["tokenUrl", "clientId", "clientSecret"]
        .iter()
        .any(|key| has(key))
    {
        let why = "OAuth2 client credentials for EJBCA (tokenUrl, clientId, clientSecret)";
        let token_url = lookup.key(name, data, "tokenUrl", why)?;
        let client_id = lookup.key(name, data, "clientId", why)?;
        let client_secret = lookup.key(name, data, "clientSecret", why)?;
        let optional = |key: &str| -> Result<Option<String>, BuildError> {
            data.get(key)
                .filter(|v| !v.is_empty())
                .map(|v| utf8(key, v))
                .transpose()
        };
        Some(OAuthCredentials {
            token_url: utf8("tokenUrl", token_url)?,
            client_id: utf8("clientId", client_id)?,
            client_secret: utf8("clientSecret", client_secret)?,
            scopes: optional("scopes")?.into_iter().collect(),
            audience: optional("audience")?,
        })
    } else {
        None
    };
    let client_certificate = if has("tls.crt") || has("tls.key") {
        let cert = lookup.key(
            name,
            data,
            "tls.crt",
            "the client certificate for EJBCA (PEM)",
        )?;
        let key = lookup.key(name, data, "tls.key", "the client certificate's key (PEM)")?;
        Some(ClientIdentity {
            cert_pem: cert.to_vec(),
            key_pem: key.to_vec(),
        })
    } else {
        None
    };
    if oauth.is_none() && client_certificate.is_none() {
        return Err(BuildError::SecretKeyMissing {
            secret: name.to_string(),
            key: "tls.crt+tls.key | tokenUrl+clientId+clientSecret".to_string(),
            why: "one way to authenticate to EJBCA".to_string(),
        });
    }
    // The spec was validated first: the rule parses.
    let naming = match spec.end_entity_name() {
        Ok(EndEntityName::FirstDnsName) => EndEntityNaming::FirstDnsName,
        Ok(EndEntityName::NamespacedName) => EndEntityNaming::NamespacedName,
        Ok(EndEntityName::Fixed(fixed)) => EndEntityNaming::Fixed(fixed),
        _ => EndEntityNaming::CommonName,
    };
    let config = EjbcaConfig {
        client_certificate,
        oauth,
        ca_bundle_pem: spec
            .ca_bundle
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|b| b.as_bytes().to_vec()),
        end_entity_naming: naming,
        send_end_time: spec.send_end_time,
        account_binding_id: spec.account_binding_id.clone(),
        timeout: spec
            .timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(DEFAULT_TIMEOUT),
        default_duration,
        egress: lookup.source.egress(),
        ..EjbcaConfig::new(
            spec.url.clone(),
            spec.certificate_authority_name.clone(),
            spec.certificate_profile_name.clone(),
            spec.end_entity_profile_name.clone(),
        )
    };
    Ok(EjbcaBackend::new(config)?)
}

/// A keytab as stored in a Secret: the binary file, or its base64 text (`stringData`).
#[cfg(feature = "adcs")]
fn keytab_bytes(stored: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    if stored.starts_with(&[0x05]) {
        return stored.to_vec();
    }
    let compact: Vec<u8> = stored
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .unwrap_or_else(|_| stored.to_vec())
}

/// The AD CS backend of an `adcs` block: credentials from its Secret as `authMethod`
/// says, trust, template, poll interval and timeout from the spec.
#[cfg(feature = "adcs")]
fn adcs_backend<S: SecretSource + ?Sized>(
    lookup: &Lookup<'_, S>,
    spec: &certwright_api::AdcsBackend,
    default_duration: Duration,
) -> Result<certwright_backend_adcs::AdcsBackend, BuildError> {
    use certwright_api::AdcsAuthMethod;
    use certwright_backend_adcs::{AdcsAuth, AdcsBackend, AdcsConfig, DEFAULT_POLL_INTERVAL};
    let name = spec.auth_secret_name.as_str();
    let utf8 = |key: &str, bytes: &[u8]| {
        String::from_utf8(bytes.to_vec())
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|_| BuildError::SecretKeyMissing {
                secret: name.to_string(),
                key: key.to_string(),
                why: "it must be UTF-8 text".to_string(),
            })
    };
    let auth = match spec.auth_method {
        AdcsAuthMethod::Kerberos => {
            use certwright_backend_adcs::{KerberosCredentials, KerberosSecret};
            let data = lookup.secret(name)?;
            let text = |key: &str, what: &str| -> Result<String, BuildError> {
                utf8(key, lookup.key(name, data, key, what)?)
            };
            let username = text("username", "the Kerberos account name")?;
            let realm = text("realm", "the Kerberos realm")?;
            let kdc = text("kdc", "the KDC (host:port)")?;
            let secret = match data.get("keytab").filter(|k| !k.is_empty()) {
                Some(keytab) => KerberosSecret::Keytab(keytab_bytes(keytab)),
                None => KerberosSecret::Password(text(
                    "password",
                    "the Kerberos account's password (or a keytab)",
                )?),
            };
            AdcsAuth::Kerberos(KerberosCredentials {
                username,
                realm,
                kdc,
                secret,
            })
        }
        AdcsAuthMethod::Ntlm | AdcsAuthMethod::Basic => {
            let data = lookup.secret(name)?;
            let username = utf8(
                "username",
                lookup.key(name, data, "username", "the AD CS account")?,
            )?;
            let password = utf8(
                "password",
                lookup.key(name, data, "password", "the AD CS account's password")?,
            )?;
            if spec.auth_method == AdcsAuthMethod::Basic {
                AdcsAuth::Basic { username, password }
            } else {
                let domain = match data.get("domain").filter(|d| !d.is_empty()) {
                    Some(d) => Some(utf8("domain", d)?),
                    None => None,
                };
                AdcsAuth::Ntlm {
                    username,
                    password,
                    domain,
                }
            }
        }
        AdcsAuthMethod::ClientCertificate => {
            let data = lookup.secret(name)?;
            let cert = lookup.key(name, data, "tls.crt", "the client certificate (PEM)")?;
            let key = lookup.key(name, data, "tls.key", "the client certificate's key (PEM)")?;
            AdcsAuth::ClientCertificate(certwright_backend_http::ClientIdentity {
                cert_pem: cert.to_vec(),
                key_pem: key.to_vec(),
            })
        }
    };
    // The spec was validated first, so the durations parse.
    let duration =
        |raw: Option<&str>, default| raw.and_then(|r| parse_duration(r).ok()).unwrap_or(default);
    let config = AdcsConfig {
        ca_bundle_pem: spec
            .ca_bundle
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|b| b.as_bytes().to_vec()),
        poll_interval: duration(spec.poll_interval.as_deref(), DEFAULT_POLL_INTERVAL),
        timeout: duration(spec.timeout.as_deref(), DEFAULT_TIMEOUT),
        send_validity_period: spec.send_validity_period,
        default_duration,
        egress: lookup.source.egress(),
        ..AdcsConfig::new(spec.url.clone(), spec.template_name.clone(), auth)
    };
    Ok(AdcsBackend::new(config)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[cfg(all(feature = "ca", feature = "rest"))]
    #[test]
    fn every_adapter_defaults_to_the_shared_timeout_and_duration() {
        use certwright_pki::DEFAULT_DURATION;
        assert_eq!(DEFAULT_DURATION, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(30));
        assert_eq!(
            ca::LocalCaConfig::default().default_duration,
            DEFAULT_DURATION
        );
        let rest = rest::RestConfig::new("https://pki.example/api/v1");
        assert_eq!(rest.default_duration, DEFAULT_DURATION);
        assert_eq!(rest.timeout, DEFAULT_TIMEOUT);
        assert_eq!(http::HttpConfig::default().timeout, DEFAULT_TIMEOUT);
    }
    use certwright_api::{AdcsBackend, Base64Bytes, CaBackend, RestBackend, RestFlavor};
    use certwright_simulators::fixtures::{KeyKind, TestCa};

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
                ..Default::default()
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
    #[cfg(not(feature = "adcs"))]
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

    #[cfg(feature = "ejbca")]
    #[test]
    fn ejbca_credentials_follow_the_secret_keys() {
        use certwright_api::EjbcaBackend;
        let spec = |secret: &str, naming: Option<&str>| IssuerSpec {
            ejbca: Some(EjbcaBackend {
                url: "https://ejbca.corp.example/ejbca/ejbca-rest-api".into(),
                auth_secret_name: secret.into(),
                certificate_authority_name: "IssuingCA".into(),
                certificate_profile_name: "ENDUSER".into(),
                end_entity_profile_name: "k8s-workloads".into(),
                end_entity_name: naming.map(str::to_string),
                send_end_time: true,
                timeout: Some("10s".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let client = TestCa::root(KeyKind::EcdsaP256, "Clients")
            .issue_leaf(KeyKind::EcdsaP256, "certwright.example");
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "mtls".to_string(),
            secret(&[
                ("tls.crt", client.cert_pem.as_bytes()),
                ("tls.key", client.key_pem.as_bytes()),
            ]),
        );
        secrets.insert(
            "oauth".to_string(),
            secret(&[
                ("tokenUrl", b"https://idp.corp.example/token\n"),
                ("clientId", b"certwright"),
                ("clientSecret", b"s3cret"),
                ("scopes", b"ejbca"),
            ]),
        );
        secrets.insert(
            "half-oauth".to_string(),
            secret(&[("tokenUrl", b"https://idp.corp.example/token")]),
        );
        secrets.insert("half-tls".to_string(), secret(&[("tls.crt", b"x")]));
        secrets.insert("empty".to_string(), secret(&[("token", b"x")]));
        for (name, naming) in [
            ("mtls", None),
            ("oauth", Some("dns")),
            ("oauth", Some("fixed:cluster-1")),
            ("oauth", Some("namespacedName")),
        ] {
            let backend = build_backend(&spec(name, naming), &secrets)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(backend.kind(), "ejbca");
            assert!(!format!("{backend:?}").contains("s3cret"));
        }
        let e = err(build_backend(&spec("half-oauth", None), &secrets));
        assert!(
            matches!(&e, BuildError::SecretKeyMissing { key, .. } if key == "clientId"),
            "{e}"
        );
        let e = err(build_backend(&spec("half-tls", None), &secrets));
        assert!(
            matches!(&e, BuildError::SecretKeyMissing { key, .. } if key == "tls.key"),
            "{e}"
        );
        let e = err(build_backend(&spec("empty", None), &secrets));
        assert!(
            e.to_string()
                .contains("tls.crt+tls.key | tokenUrl+clientId+clientSecret"),
            "{e}"
        );
        let e = err(build_backend(&spec("missing", None), &secrets));
        assert_eq!(e.reason(), "SecretNotFound");
    }

    #[cfg(feature = "adcs")]
    #[test]
    fn adcs_follows_its_auth_method() {
        use certwright_api::AdcsAuthMethod;
        let bundle = TestCa::root(KeyKind::EcdsaP256, "Trust");
        let spec = |method| IssuerSpec {
            adcs: Some(AdcsBackend {
                url: "https://adcs.corp.example/certsrv".into(),
                auth_method: method,
                auth_secret_name: "adcs-auth".into(),
                template_name: "WebServer".into(),
                ca_bundle: Some(Base64Bytes(bundle.cert_pem().as_bytes().to_vec())),
                poll_interval: Some("10m".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let client = bundle.issue_leaf(KeyKind::EcdsaP256, "svc.corp.example");
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "adcs-auth".to_string(),
            secret(&[
                ("username", b"CORP\\svc"),
                ("password", b"pw\n"),
                ("tls.crt", client.cert_pem.as_bytes()),
                ("tls.key", client.key_pem.as_bytes()),
            ]),
        );
        for method in [
            AdcsAuthMethod::Ntlm,
            AdcsAuthMethod::Basic,
            AdcsAuthMethod::ClientCertificate,
        ] {
            let backend = build_backend(&spec(method), &secrets).unwrap();
            assert_eq!(backend.kind(), "adcs", "{method:?}");
        }
        // Kerberos: a password, or a keytab (binary or base64 text) taking precedence.
        let e = err(build_backend(&spec(AdcsAuthMethod::Kerberos), &secrets));
        assert!(
            matches!(&e, BuildError::SecretKeyMissing { key, .. } if key == "realm"),
            "{e}"
        );
        let kerberos = |extra: &[(&str, &[u8])]| {
            let mut pairs: Vec<(&str, &[u8])> = vec![
                ("username", b"svc"),
                ("realm", b"corp.example"),
                ("kdc", b"dc1.corp.example"),
            ];
            pairs.extend_from_slice(extra);
            let mut secrets = BTreeMap::new();
            secrets.insert("adcs-auth".to_string(), secret(&pairs));
            build_backend(&spec(AdcsAuthMethod::Kerberos), &secrets)
        };
        assert_eq!(kerberos(&[("password", b"pw")]).unwrap().kind(), "adcs");
        let mut keytab = vec![0x05, 0x02];
        let mut entry = vec![0, 1, 0, 12];
        entry.extend_from_slice(b"CORP.EXAMPLE");
        entry.extend_from_slice(&[0, 3]);
        entry.extend_from_slice(b"svc");
        entry.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 18, 0, 32]);
        entry.extend_from_slice(&[7; 32]);
        keytab.extend_from_slice(&u32::try_from(entry.len()).unwrap().to_be_bytes());
        keytab.extend(entry);
        assert_eq!(kerberos(&[("keytab", &keytab)]).unwrap().kind(), "adcs");
        let text = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&keytab)
        };
        assert_eq!(
            kerberos(&[("keytab", text.as_bytes())]).unwrap().kind(),
            "adcs"
        );
        let e = err(kerberos(&[
            ("keytab", b"\x05\x02garbage"),
            ("password", b"pw"),
        ]));
        assert!(e.to_string().contains("keytab"), "{e}");
        assert!(matches!(
            e,
            BuildError::Backend(Error::Misconfigured { .. })
        ));
        let e = err(kerberos(&[]));
        assert!(
            matches!(&e, BuildError::SecretKeyMissing { key, .. } if key == "password"),
            "{e}"
        );
        let mut half = BTreeMap::new();
        half.insert("adcs-auth".to_string(), secret(&[("username", b"svc")]));
        let e = err(build_backend(&spec(AdcsAuthMethod::Ntlm), &half));
        assert!(
            matches!(&e, BuildError::SecretKeyMissing { key, .. } if key == "password"),
            "{e}"
        );
    }
}
