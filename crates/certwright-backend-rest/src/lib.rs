//! An internal REST CA as a [`Backend`]: certwright's own JSON contract
//! (`docs/backends/rest.md`) or CloudFlare cfssl's API, over [`certwright_backend_http::HttpClient`].
//!
//! [`RestBackend::new`] checks the configuration once; every call then maps the CA's answer
//! onto an [`Outcome`] or an [`Error`] kind, and checks that the issued certificate carries
//! the CSR's public key.
//!
//! One file because it is one backend speaking one contract, with its unit tests (over
//! a third of the file); the cfssl flavour is a submodule.
#![deny(missing_docs)]

mod cfssl;

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use certwright_x509::{Certificate, Csr, parse_pem_bundle};

use certwright_backend_http::{
    HttpClient, HttpConfig, HttpResponse, Method, RequestBuilder, StatusCode, Url, describe_call,
    header, status_error,
};
use certwright_pki::{
    Backend, DEFAULT_DURATION, DEFAULT_TIMEOUT, Error, Health, IssuedBundle, Outcome,
    PendingRequest, Recovery, SignRequest,
};

pub use certwright_backend_http::ClientIdentity;

/// The header carrying [`SignRequest::idempotency_key`] in the certwright contract.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// Poll delay used when a pending answer names none.
pub const DEFAULT_POLL_DELAY: Duration = Duration::from_secs(60);

/// Longest pending id accepted from the CA, in bytes.
pub const MAX_PENDING_ID_BYTES: usize = 256;

const MIN_POLL_DELAY: Duration = Duration::from_secs(1);
const MAX_POLL_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Which protocol the CA speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// certwright's JSON contract: `POST {url}/sign`, `GET {url}/requests/{id}`,
    /// `GET {url}/health`.
    #[default]
    Certwright,
    /// cfssl's `/api/v1/cfssl/sign` (or `authsign`) and `/api/v1/cfssl/info`.
    Cfssl,
}

/// How the backend authenticates to the CA.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum RestAuth {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token>` (the Secret's `token`).
    Bearer(String),
    /// HTTP Basic (the Secret's `username` and `password`).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// A TLS client certificate (the Secret's `tls.crt` and `tls.key`).
    ClientCertificate(ClientIdentity),
    /// cfssl `authsign`: HMAC-SHA256 tokens with this key, hex encoded as in cfssl's
    /// `auth_keys` (the Secret's `key`).
    CfsslHmac {
        /// The key, hex.
        key_hex: String,
    },
}

impl fmt::Debug for RestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestAuth::None => f.write_str("None"),
            RestAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            RestAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            RestAuth::ClientCertificate(identity) => {
                f.debug_tuple("ClientCertificate").field(identity).finish()
            }
            RestAuth::CfsslHmac { .. } => f.write_str("CfsslHmac(<redacted>)"),
        }
    }
}

/// Configuration of a [`RestBackend`].
#[derive(Clone, Debug)]
pub struct RestConfig {
    /// Base URL of the API, https: `https://pki.corp.example/api/v1` (certwright) or
    /// `https://cfssl.corp.example:8888` (cfssl).
    pub url: String,
    /// The protocol.
    pub flavor: Flavor,
    /// Credentials.
    pub auth: RestAuth,
    /// PEM certificates trusted for the CA's TLS endpoint; the system roots when `None`.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// The template (cfssl: signing profile) to request, unless the request names one.
    pub template: Option<String>,
    /// Timeout of each call. Default: [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// Lifetime requested when the request names none (ignored by cfssl, whose profile
    /// decides). Default: [`DEFAULT_DURATION`].
    pub default_duration: Duration,
    /// Where the CA may be (issuers a tenant writes); anywhere when `None`.
    pub egress: Option<std::sync::Arc<certwright_pki::egress::EgressPolicy>>,
}

impl RestConfig {
    /// A configuration for `url` speaking certwright's contract without credentials,
    /// with the default timeout and duration.
    pub fn new(url: impl Into<String>) -> Self {
        RestConfig {
            url: url.into(),
            flavor: Flavor::Certwright,
            auth: RestAuth::None,
            ca_bundle_pem: None,
            template: None,
            timeout: DEFAULT_TIMEOUT,
            default_duration: DEFAULT_DURATION,
            egress: None,
        }
    }
}

/// The credentials, checked and ready to use.
#[derive(Clone)]
enum Auth {
    None,
    Bearer(String),
    Basic { username: String, password: String },
    Hmac(Vec<u8>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Bearer(_) => "Bearer(<redacted>)",
            Auth::Basic { .. } => "Basic(<redacted>)",
            Auth::Hmac(_) => "CfsslHmac(<redacted>)",
        })
    }
}

/// An internal REST CA: certwright's JSON contract or cfssl.
#[derive(Debug)]
pub struct RestBackend {
    http: HttpClient,
    base: Url,
    flavor: Flavor,
    auth: Auth,
    template: Option<String>,
    default_duration: Duration,
    cfssl: cfssl::ChainCache,
}

impl RestBackend {
    /// Checks the configuration and builds the HTTPS client.
    ///
    /// # Errors
    /// [`Error::Misconfigured`] when the URL is not an https URL, the credentials do not
    /// fit the flavour (HMAC keys are for cfssl only) or are malformed, or the caBundle or
    /// client certificate is unusable.
    pub fn new(config: RestConfig) -> Result<RestBackend, Error> {
        let base = certwright_backend_http::parse_https_url("url", &config.url)?;
        let mut client_identity = None;
        let auth = match config.auth {
            RestAuth::None => Auth::None,
            RestAuth::Bearer(token) => {
                let token = token.trim().to_string();
                if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
                    return Err(Error::misconfigured(
                        "the bearer token (Secret key `token`) is empty or holds spaces or \
                         control characters",
                    ));
                }
                Auth::Bearer(token)
            }
            RestAuth::Basic { username, password } => {
                if username.is_empty() || username.contains(':') {
                    return Err(Error::misconfigured(
                        "the basic-auth username (Secret key `username`) is empty or holds ':'",
                    ));
                }
                Auth::Basic { username, password }
            }
            RestAuth::ClientCertificate(identity) => {
                client_identity = Some(identity);
                Auth::None
            }
            RestAuth::CfsslHmac { key_hex } => {
                if config.flavor != Flavor::Cfssl {
                    return Err(Error::misconfigured(
                        "an HMAC key (Secret key `key`) is only used with flavor cfssl",
                    ));
                }
                Auth::Hmac(decode_hex_key(&key_hex)?)
            }
        };
        let http = HttpClient::new(HttpConfig {
            ca_bundle_pem: config.ca_bundle_pem,
            client_identity,
            timeout: config.timeout,
            connect_timeout: config
                .timeout
                .min(certwright_backend_http::DEFAULT_CONNECT_TIMEOUT),
            egress: config.egress,
            ..HttpConfig::default()
        })?;
        Ok(RestBackend {
            http,
            base,
            flavor: config.flavor,
            auth,
            template: config.template.filter(|t| !t.is_empty()),
            default_duration: config.default_duration,
            cfssl: cfssl::ChainCache::default(),
        })
    }

    /// The protocol this backend speaks.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// `{base}/{segments...}`, each segment percent-encoded.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A request with the credentials and JSON headers.
    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let builder = self
            .http
            .request(method, url)
            .header(header::ACCEPT, "application/json");
        match &self.auth {
            Auth::Bearer(token) => builder.bearer_auth(token),
            Auth::Basic { username, password } => builder.basic_auth(username, Some(password)),
            Auth::None | Auth::Hmac(_) => builder,
        }
    }

    fn template_for<'a>(&'a self, request: &'a SignRequest) -> Option<&'a str> {
        request
            .template
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(self.template.as_deref())
    }

    async fn sign_certwright(&self, request: &SignRequest) -> Result<Outcome, Error> {
        let url = self.endpoint(&["sign"]);
        let call = describe_call(&Method::POST, &url);
        let body = serde_json::to_vec(&SignBody::new(
            request,
            self.template_for(request),
            self.default_duration,
        ))
        .map_err(|e| Error::misconfigured(format!("cannot encode the sign request: {e}")))?;
        tracing::debug!(
            call = %call,
            requester = %request.requester,
            idempotency_key = %request.idempotency_key,
            "submitting to the REST CA"
        );
        let response = self
            .http
            .send(
                self.request(Method::POST, url)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(IDEMPOTENCY_KEY_HEADER, request.idempotency_key.as_str())
                    .body(body),
            )
            .await?;
        read_outcome(&call, &response, &request.csr, None)
    }

    async fn poll_certwright(&self, id: &str, request: &SignRequest) -> Result<Outcome, Error> {
        check_pending_id(id)?;
        let url = self.endpoint(&["requests", id]);
        let call = describe_call(&Method::GET, &url);
        let response = self.http.send(self.request(Method::GET, url)).await?;
        read_outcome(&call, &response, &request.csr, Some(id))
    }

    async fn check_certwright(&self) -> Result<Health, Error> {
        let url = self.endpoint(&["health"]);
        let call = describe_call(&Method::GET, &url);
        let response = self.http.send(self.request(Method::GET, url)).await?;
        if let Some(err) = status_error(
            &response,
            &call,
            error_reason(&response.body).as_deref(),
            SystemTime::now(),
        ) {
            return Err(err);
        }
        // Any body will do, except the page of a login portal or proxy that answers in
        // the CA's place.
        if response.looks_like_html() {
            return Err(response.html_instead_of(&call, "the CA's health answer"));
        }
        let host = self.base.host_str().unwrap_or("?");
        let template = match &self.template {
            Some(t) => format!("template {t}"),
            None => "no template".to_string(),
        };
        Ok(Health {
            message: format!("REST CA at {host} answered; {template}"),
        })
    }
}

#[async_trait::async_trait]
impl Backend for RestBackend {
    fn kind(&self) -> &'static str {
        match self.flavor {
            Flavor::Certwright => "rest",
            Flavor::Cfssl => "cfssl",
        }
    }

    async fn sign(&self, request: &SignRequest) -> Result<Outcome, Error> {
        match self.flavor {
            Flavor::Certwright => self.sign_certwright(request).await,
            Flavor::Cfssl => self.sign_cfssl(request).await,
        }
    }

    async fn poll(&self, pending_id: &str, request: &SignRequest) -> Result<Outcome, Error> {
        match self.flavor {
            Flavor::Certwright => self.poll_certwright(pending_id, request).await,
            Flavor::Cfssl => Err(Error::Rejected {
                reason: format!(
                    "cfssl never holds requests, so pending request {pending_id:?} cannot be \
                     polled"
                ),
            }),
        }
    }

    async fn check(&self) -> Result<Health, Error> {
        match self.flavor {
            Flavor::Certwright => self.check_certwright().await,
            Flavor::Cfssl => self.check_cfssl().await,
        }
    }

    /// The certwright contract requires a CA to answer a repeated `Idempotency-Key` with
    /// its first answer, so submitting again is how to ask it. cfssl keeps no request
    /// ids and cannot be asked; a certificate it signed before the answer was lost is
    /// left unused, as after any lost answer (docs/backends/rest.md).
    async fn recover(
        &self,
        _request: &SignRequest,
        _submitted: std::time::SystemTime,
    ) -> Result<Recovery, Error> {
        Ok(Recovery::SubmitAgain)
    }
}

/// A pending id must fit the contract before it goes into a URL: the annotation it is
/// read back from can be edited, and `.` or `..` would be dropped as dot segments, so
/// that the poll would `GET {url}/requests` (another resource) instead.
fn check_pending_id(id: &str) -> Result<(), Error> {
    let problem = if id.is_empty() || id.len() > MAX_PENDING_ID_BYTES {
        format!(
            "a pending id of {} bytes (1 to {MAX_PENDING_ID_BYTES} expected)",
            id.len()
        )
    } else if matches!(id, "." | "..") {
        format!("pending id {id:?}, which cannot be a URL path segment")
    } else {
        return Ok(());
    };
    Err(Error::Rejected {
        reason: format!("cannot poll {problem}"),
    })
}

fn decode_hex_key(key_hex: &str) -> Result<Vec<u8>, Error> {
    let hex = key_hex.trim();
    let invalid = || {
        Error::misconfigured(
            "the cfssl HMAC key (Secret key `key`) must be a non-empty even number of hex digits",
        )
    };
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err(invalid());
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(high), Some(low)) => Ok((high * 16 + low) as u8),
                _ => Err(invalid()),
            }
        })
        .collect()
}

/// The body of `POST {url}/sign`.
#[derive(Debug, Serialize)]
struct SignBody<'a> {
    csr: String,
    template: Option<&'a str>,
    duration_seconds: u64,
    is_ca: bool,
    usages: &'a [String],
    idempotency_key: &'a str,
    requester: RequesterBody<'a>,
}

#[derive(Debug, Serialize)]
struct RequesterBody<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl<'a> SignBody<'a> {
    fn new(request: &'a SignRequest, template: Option<&'a str>, default: Duration) -> Self {
        SignBody {
            csr: request.csr.to_pem(),
            template,
            duration_seconds: request.duration.unwrap_or(default).as_secs(),
            is_ca: request.is_ca,
            usages: &request.usages,
            idempotency_key: &request.idempotency_key,
            requester: RequesterBody {
                namespace: &request.requester.namespace,
                name: &request.requester.name,
            },
        }
    }
}

/// A 200 answer: the certificate and, optionally, the chain (PEM, any order).
#[derive(Debug, Deserialize)]
struct IssuedBody {
    certificate: String,
    #[serde(default)]
    chain: Option<String>,
}

/// A 202 answer.
#[derive(Debug, Deserialize)]
struct PendingBody {
    id: String,
    #[serde(default)]
    retry_after: Option<u64>,
}

/// An error answer; `reason` is the contract's field, the others are read as fallbacks.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The CA's reason in an error body, sanitized, when the body is JSON with one.
fn error_reason(body: &[u8]) -> Option<String> {
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    sanitized(parsed.reason.or(parsed.message).or(parsed.error))
}

/// The contract's own `reason` field only, sanitized. Gateways and frameworks answer
/// unknown paths with JSON too (`{"message": "no Route matched"}`, `{"error": "Not
/// Found"}`); only `reason` says that the CA itself answered.
fn contract_reason(body: &[u8]) -> Option<String> {
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    sanitized(parsed.reason)
}

fn sanitized(reason: Option<String>) -> Option<String> {
    reason
        .map(|r| certwright_backend_http::excerpt(r.as_bytes()))
        .filter(|r| r != "(empty body)")
}

/// Reads an answer of `POST /sign` or `GET /requests/{id}` (`pending_id` set).
fn read_outcome(
    call: &str,
    response: &HttpResponse,
    csr: &Csr,
    pending_id: Option<&str>,
) -> Result<Outcome, Error> {
    match response.status {
        StatusCode::OK | StatusCode::CREATED => {
            let body: IssuedBody = parse_json(call, response)?;
            let mut certs = parse_certificates(call, "certificate", &body.certificate)?;
            if let Some(chain) = body.chain.as_deref().filter(|c| !c.trim().is_empty()) {
                certs.extend(parse_certificates(call, "chain", chain)?);
            }
            issued(call, certs, csr).map(Outcome::Issued)
        }
        StatusCode::ACCEPTED => {
            let body: PendingBody = parse_json(call, response)?;
            if body.id.is_empty() || body.id.len() > MAX_PENDING_ID_BYTES {
                return Err(Error::InvalidResponse {
                    message: format!(
                        "{call} answered 202 with a pending id of {} bytes (1 to {} expected)",
                        body.id.len(),
                        MAX_PENDING_ID_BYTES
                    ),
                });
            }
            let retry_after = body
                .retry_after
                .map(Duration::from_secs)
                .or_else(|| response.retry_after(SystemTime::now()))
                .unwrap_or(DEFAULT_POLL_DELAY)
                .clamp(MIN_POLL_DELAY, MAX_POLL_DELAY);
            Ok(Outcome::Pending(PendingRequest {
                id: body.id,
                retry_after,
            }))
        }
        status if status.is_success() => Err(Error::InvalidResponse {
            message: format!("{call} answered {status}, which the contract does not define"),
        }),
        status => {
            if let (Some(id), StatusCode::NOT_FOUND | StatusCode::GONE, Some(reason)) =
                (pending_id, status, contract_reason(&response.body))
            {
                // The API answered (with the contract's JSON) but does not know the
                // request. Anything else on a 404 is a wrong url (docs/backends/rest.md).
                return Err(Error::Rejected {
                    reason: format!("the CA no longer knows request {id:?}: {reason}"),
                });
            }
            let reason = error_reason(&response.body);
            Err(
                status_error(response, call, reason.as_deref(), SystemTime::now()).unwrap_or_else(
                    || Error::InvalidResponse {
                        message: format!("{call} answered {status}"),
                    },
                ),
            )
        }
    }
}

/// Parses a 2xx JSON body; HTML, truncated or mis-shaped bodies are invalid responses
/// quoting a short excerpt.
fn parse_json<T: serde::de::DeserializeOwned>(
    call: &str,
    response: &HttpResponse,
) -> Result<T, Error> {
    if response.looks_like_html() {
        return Err(response.html_instead_of(call, "JSON"));
    }
    serde_json::from_slice(&response.body).map_err(|e| Error::InvalidResponse {
        message: format!(
            "{call} answered {} with a body that is not the expected JSON ({e}): {}",
            response.status,
            response.excerpt()
        ),
    })
}

fn parse_certificates(call: &str, field: &str, pem: &str) -> Result<Vec<Certificate>, Error> {
    parse_pem_bundle(pem.as_bytes()).map_err(|e| Error::InvalidResponse {
        message: format!("{call}: `{field}` is not usable PEM certificates: {e}"),
    })
}

/// Orders the returned certificates and checks that the leaf carries the CSR's key.
fn issued(call: &str, certs: Vec<Certificate>, csr: &Csr) -> Result<IssuedBundle, Error> {
    let bundle = IssuedBundle::from_certificates(certs)?;
    let leaf = bundle.leaf().ok_or_else(|| Error::InvalidResponse {
        message: format!("{call}: the answer holds no certificate"),
    })?;
    if leaf.public_key().spki_der != csr.public_key().spki_der {
        return Err(Error::InvalidResponse {
            message: format!(
                "{call}: the issued certificate (serial {}, subject \"{}\") does not carry the \
                 CSR's public key",
                leaf.serial_hex(),
                leaf.subject()
            ),
        });
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certwright_pki::Requester;
    use certwright_simulators::{CsrBuilder, KeyKind};

    fn sign_request() -> SignRequest {
        let generated = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("www.example.test")
            .dns("www.example.test")
            .build();
        let csr = Csr::parse(generated.csr_pem.as_bytes()).expect("csr");
        let mut request = SignRequest::new(csr, "0b7f3c52-uid");
        request.usages = vec!["digital signature".into(), "server auth".into()];
        request.requester = Requester {
            namespace: "team-a".into(),
            name: "web-1".into(),
        };
        request
    }

    #[test]
    fn sign_body_has_the_documented_shape() {
        let request = sign_request();
        let body = serde_json::to_value(SignBody::new(
            &request,
            Some("web-server"),
            Duration::from_secs(3600),
        ))
        .expect("json");
        let object = body.as_object().expect("object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "csr",
                "duration_seconds",
                "idempotency_key",
                "is_ca",
                "requester",
                "template",
                "usages"
            ]
        );
        assert!(
            body["csr"]
                .as_str()
                .expect("csr")
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        assert_eq!(body["template"], "web-server");
        assert_eq!(body["duration_seconds"], 3600);
        assert_eq!(body["is_ca"], false);
        assert_eq!(
            body["usages"],
            serde_json::json!(["digital signature", "server auth"])
        );
        assert_eq!(body["idempotency_key"], "0b7f3c52-uid");
        assert_eq!(
            body["requester"],
            serde_json::json!({"namespace": "team-a", "name": "web-1"})
        );

        let mut request = request;
        request.duration = Some(Duration::from_secs(86_400));
        let body = serde_json::to_value(SignBody::new(&request, None, Duration::from_secs(1)))
            .expect("json");
        assert_eq!(body["duration_seconds"], 86_400);
        assert_eq!(body["template"], serde_json::Value::Null);
    }

    #[test]
    fn config_is_checked() {
        let misconfigured = |config: RestConfig| {
            let err = RestBackend::new(config).expect_err("misconfigured");
            assert_eq!(err.metric_label(), "misconfigured", "{err}");
            err.to_string()
        };
        let bundle = || {
            let ca = certwright_simulators::TestCa::root(KeyKind::EcdsaP256, "Trust");
            Some(ca.cert_pem().as_bytes().to_vec())
        };
        let base = || RestConfig {
            ca_bundle_pem: bundle(),
            ..RestConfig::new("https://pki.example/api/v1")
        };
        assert!(
            misconfigured(RestConfig {
                url: "http://pki.example".into(),
                ..base()
            })
            .contains("https")
        );
        misconfigured(RestConfig {
            url: "not a url".into(),
            ..base()
        });
        misconfigured(RestConfig {
            url: "https://u:p@pki.example/".into(),
            ..base()
        });
        misconfigured(RestConfig {
            url: "https://pki.example/?x=1".into(),
            ..base()
        });
        misconfigured(RestConfig {
            auth: RestAuth::Bearer(" \n".into()),
            ..base()
        });
        let hmac_on_certwright = misconfigured(RestConfig {
            auth: RestAuth::CfsslHmac {
                key_hex: "00ff".into(),
            },
            ..base()
        });
        assert!(hmac_on_certwright.contains("cfssl"));
        let bad_hex = misconfigured(RestConfig {
            flavor: Flavor::Cfssl,
            auth: RestAuth::CfsslHmac {
                key_hex: "secret-not-hex".into(),
            },
            ..base()
        });
        assert!(!bad_hex.contains("secret-not-hex"));

        let backend = RestBackend::new(RestConfig {
            auth: RestAuth::Bearer("tok-123\n".into()),
            ..base()
        })
        .expect("valid");
        assert_eq!(backend.kind(), "rest");
        assert!(!format!("{backend:?}").contains("tok-123"));
        let cfssl = RestBackend::new(RestConfig {
            flavor: Flavor::Cfssl,
            auth: RestAuth::CfsslHmac {
                key_hex: "00FFaa".into(),
            },
            ..base()
        })
        .expect("valid");
        assert_eq!(cfssl.kind(), "cfssl");
    }

    #[test]
    fn endpoints_extend_the_base_path() {
        let backend = RestBackend::new(RestConfig {
            ca_bundle_pem: Some(
                certwright_simulators::TestCa::root(KeyKind::EcdsaP256, "Trust")
                    .cert_pem()
                    .as_bytes()
                    .to_vec(),
            ),
            ..RestConfig::new("https://pki.example:8443/api/v1/")
        })
        .expect("valid");
        assert_eq!(
            backend.endpoint(&["sign"]).as_str(),
            "https://pki.example:8443/api/v1/sign"
        );
        assert_eq!(
            backend.endpoint(&["requests", "a/b c"]).as_str(),
            "https://pki.example:8443/api/v1/requests/a%2Fb%20c"
        );
    }

    #[test]
    fn hex_keys() {
        assert_eq!(
            decode_hex_key("00ffA5").expect("hex"),
            vec![0x00, 0xff, 0xa5]
        );
        assert_eq!(decode_hex_key(" 0a\n").expect("hex"), vec![0x0a]);
        for bad in ["", "0", "0g", "zz", "é0"] {
            assert!(decode_hex_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn url_messages_never_quote_credentials_or_queries() {
        let bundle = certwright_simulators::TestCa::root(KeyKind::EcdsaP256, "Trust")
            .cert_pem()
            .as_bytes()
            .to_vec();
        for url in [
            "http://certwright:hunter2@pki.example/api",
            "https://certwright:hunter2@pki.example/api",
            "https://pki.example/api?token=hunter2",
            "https://pki.example/api#hunter2",
            "http://pki.example/api?token=hunter2",
            "hunter2",
            "https://hunter2:@",
        ] {
            let err = RestBackend::new(RestConfig {
                ca_bundle_pem: Some(bundle.clone()),
                ..RestConfig::new(url)
            })
            .expect_err("misconfigured");
            assert_eq!(err.metric_label(), "misconfigured", "{url}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn unusable_pending_ids_are_rejected_without_a_call() {
        // Nothing listens there: a call would be Transient, never Rejected.
        let backend = RestBackend::new(RestConfig {
            ca_bundle_pem: Some(
                certwright_simulators::TestCa::root(KeyKind::EcdsaP256, "Trust")
                    .cert_pem()
                    .as_bytes()
                    .to_vec(),
            ),
            timeout: Duration::from_secs(2),
            ..RestConfig::new(certwright_simulators::tls::refused_url())
        })
        .expect("valid");
        let request = sign_request();
        let long = "x".repeat(MAX_PENDING_ID_BYTES + 1);
        for id in ["..", ".", "", long.as_str()] {
            match backend.poll(id, &request).await {
                Err(Error::Rejected { reason }) => {
                    assert!(reason.starts_with("cannot poll"), "{id:?}: {reason}");
                    assert!(reason.len() < 200, "{reason}");
                }
                other => panic!("{id:?}: expected Rejected, got {other:?}"),
            }
        }
        let err = backend.poll("req-1", &request).await.expect_err("refused");
        assert_eq!(err.metric_label(), "transient", "{err}");
    }

    #[test]
    fn a_404_without_the_contract_reason_on_poll_is_a_wrong_url() {
        let csr = sign_request().csr;
        let answer = |status: u16, body: &str| HttpResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: certwright_backend_http::HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        };
        let call = "GET https://pki.example/api/v1/requests/req-1";
        // A gateway's or framework's own JSON 404: the url is wrong, the request stays.
        for body in [
            r#"{"message":"no Route matched with those values"}"#,
            r#"{"error":"Not Found","status":404}"#,
            "<html>Not Found</html>",
        ] {
            let err =
                read_outcome(call, &answer(404, body), &csr, Some("req-1")).expect_err("an error");
            assert_eq!(err.metric_label(), "misconfigured", "{body}: {err}");
        }
        // The CA's own answer: it no longer knows the request, which fails.
        match read_outcome(
            call,
            &answer(404, r#"{"reason":"expired after 30 days"}"#),
            &csr,
            Some("req-1"),
        ) {
            Err(Error::Rejected { reason }) => {
                assert!(reason.contains("expired after 30 days"), "{reason}")
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    mod against_the_simulator {
        use std::time::Duration;

        use certwright_simulators::rest_sim::{Behaviour, RestSimulator};

        use super::sign_request;
        use crate::{RestBackend, RestConfig};
        use certwright_pki::{Backend, Error, Outcome};

        async fn simulator() -> RestSimulator {
            RestSimulator::start().await.expect("simulator starts")
        }

        fn backend(sim: &RestSimulator) -> RestBackend {
            let mut config = RestConfig::new(sim.url());
            config.ca_bundle_pem = Some(sim.tls_ca_pem().as_bytes().to_vec());
            config.timeout = Duration::from_secs(5);
            RestBackend::new(config).expect("valid configuration")
        }

        #[tokio::test]
        async fn a_login_page_answering_the_health_check_is_not_health() {
            let sim = simulator().await;
            let backend = backend(&sim);
            backend.check().await.expect("healthy");

            sim.set_behaviour(Behaviour::Html200);
            match backend.check().await {
                Err(Error::InvalidResponse { message }) => {
                    assert!(message.contains("GET https://127.0.0.1:"), "{message}");
                    assert!(message.contains("/health answered 200 OK"), "{message}");
                    assert!(message.contains("HTML page"), "{message}");
                    assert!(message.contains("Corporate SSO Sign in"), "{message}");
                    assert!(!message.contains("<script"), "{message}");
                }
                other => panic!("expected InvalidResponse, got {other:?}"),
            }
        }

        #[tokio::test]
        async fn racing_polls_of_an_approved_request_sign_it_once() {
            let sim = simulator().await;
            let backend = backend(&sim);
            let request = sign_request();
            sim.set_behaviour(Behaviour::Pending);
            let id = match backend.sign(&request).await.expect("accepted") {
                Outcome::Pending(pending) => pending.id,
                other => panic!("expected Pending, got {other:?}"),
            };
            assert!(sim.approve(&id));
            // The second poll is sent once the first is being signed, and signing takes
            // long enough that it arrives mid-signing.
            sim.set_signing_delay(Duration::from_secs(1));
            let before = sim.certificates_issued();
            let started = sim.signings_started();

            let (first, second) = tokio::join!(backend.poll(&id, &request), async {
                while sim.signings_started() == started {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                backend.poll(&id, &request).await
            });
            let outcomes = [first.expect("first poll"), second.expect("second poll")];
            assert_eq!(sim.certificates_issued(), before + 1);
            let serials: Vec<String> = outcomes
                .iter()
                .filter_map(|outcome| match outcome {
                    Outcome::Issued(bundle) => bundle.leaf().map(|leaf| leaf.serial_hex()),
                    _ => None,
                })
                .collect();
            // The poll that signs gets the certificate; the other hears pending (or, on a
            // machine so loaded that it arrives after signing, the same certificate).
            assert!(!serials.is_empty(), "{outcomes:?}");
            assert!(serials.iter().all(|s| *s == serials[0]), "{serials:?}");

            // Later polls get the certificate signed then, without signing again.
            match backend.poll(&id, &request).await.expect("issued") {
                Outcome::Issued(bundle) => {
                    assert_eq!(
                        bundle.leaf().map(|leaf| leaf.serial_hex()),
                        serials.first().cloned()
                    )
                }
                other => panic!("expected Issued, got {other:?}"),
            }
            assert_eq!(sim.certificates_issued(), before + 1);
        }
    }

    #[test]
    fn error_reasons_are_read_and_sanitized() {
        assert_eq!(
            error_reason(br#"{"reason":"CN not allowed"}"#).as_deref(),
            Some("CN not allowed")
        );
        assert_eq!(
            error_reason(br#"{"message":"nope\u0007"}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(error_reason(br#"{"error":"bad"}"#).as_deref(), Some("bad"));
        assert_eq!(error_reason(br#"{"reason":""}"#), None);
        assert_eq!(error_reason(b"<html>"), None);
    }
}
