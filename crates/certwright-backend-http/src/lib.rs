//! The HTTPS client every network adapter uses, and the reading of HTTP answers they share.
//!
//! [`HttpClient`] is reqwest over a rustls configuration built here with the `ring`
//! provider: trust comes from the issuer's `caBundle` (or the system roots), redirects are
//! never followed, every call has a timeout and every response body a size cap. Failures
//! come back as [`Error`] kinds; [`status_error`] classifies non-2xx answers the same way
//! for every adapter, and [`excerpt`] makes a body safe to quote in a message.
//!
//! One file because it is the one HTTPS client every network adapter shares, with its
//! error classification and unit tests (a third of the file).
#![deny(missing_docs)]

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use certwright_pki::AnsweredStatus;
use certwright_pki::egress::EgressPolicy;
use certwright_pki::{Classified, DEFAULT_TIMEOUT, Error};

pub use reqwest::header::{self, HeaderMap};
pub use reqwest::{Method, RequestBuilder, StatusCode, Url};

/// How [`Error::redacted`] tells a failed TLS handshake (see [`Classified`]).
pub const TLS_FAILED: &str = "the TLS handshake with the PKI failed";
/// How [`Error::redacted`] tells a call the client gave up waiting for.
pub const NO_ANSWER_IN_TIME: &str = "the PKI did not answer in time";

/// Default cap on a response body: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Default timeout for establishing a connection (TCP and TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest [`excerpt`], in characters.
pub const EXCERPT_MAX_CHARS: usize = 200;

/// Longest delay a `Retry-After` header is taken to ask for. A larger value (up to
/// `u64::MAX` seconds) would park requests for ever, and overflows `Instant + delay`
/// (a panic) in whoever schedules the retry.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A TLS client certificate and its key, both PEM (the `tls.crt` and `tls.key` of a
/// `kubernetes.io/tls` Secret). `cert_pem` may hold intermediates after the leaf.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How to reach a PKI over HTTPS.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// PEM certificates trusted for the PKI's TLS endpoint; the system roots when `None`.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// A client certificate to present, for PKIs that authenticate with mTLS.
    pub client_identity: Option<ClientIdentity>,
    /// Timeout of each whole call, body included. Default: [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// Timeout for establishing each connection.
    pub connect_timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Where the client may connect (issuers a tenant writes); anywhere when `None`.
    pub egress: Option<Arc<EgressPolicy>>,
    /// Allow `http://` URLs too, for signed data fetched where a certificate says (CRLs,
    /// which are commonly served over plain HTTP). Everything else is https only.
    pub allow_http: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            ca_bundle_pem: None,
            client_identity: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            user_agent: concat!("certwright/", env!("CARGO_PKG_VERSION")).to_string(),
            egress: None,
            allow_http: false,
        }
    }
}

/// An answer read in full (within the cap).
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body, at most [`HttpConfig::max_response_bytes`].
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The `Content-Type` header, when present and readable.
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }

    /// Whether the body is an HTML page (by its content type or its first bytes): what a
    /// login portal or proxy error page answers instead of the API.
    pub fn looks_like_html(&self) -> bool {
        if self
            .content_type()
            .is_some_and(|ct| ct.to_ascii_lowercase().contains("html"))
        {
            return true;
        }
        let start: Vec<u8> = self
            .body
            .iter()
            .copied()
            .skip_while(u8::is_ascii_whitespace)
            .take(15)
            .map(|b| b.to_ascii_lowercase())
            .collect();
        start.starts_with(b"<!doctype html") || start.starts_with(b"<html")
    }

    /// The [`Error::InvalidResponse`] for a 2xx answer that is an HTML page where
    /// `expected` (e.g. `"JSON"`, `"cfssl's JSON"`) was due: a login portal or proxy
    /// stands in front of the PKI. `call` (from [`describe_call`]) names the call; the
    /// message quotes a short [`excerpt`] of the page.
    pub fn html_instead_of(&self, call: &str, expected: &str) -> Error {
        Error::InvalidResponse {
            message: format!(
                "{call} answered {} with an HTML page instead of {expected} (a login page or \
                 proxy in front of the PKI?): {}",
                self.status,
                self.excerpt()
            ),
        }
    }

    /// The delay asked for by a `Retry-After` header, seconds or HTTP-date, relative to
    /// `now`.
    pub fn retry_after(&self, now: SystemTime) -> Option<Duration> {
        let value = self.headers.get(header::RETRY_AFTER)?.to_str().ok()?;
        parse_retry_after(value, now)
    }

    /// A short, sanitized excerpt of the body for error messages (see [`excerpt`]).
    pub fn excerpt(&self) -> String {
        excerpt(&self.body)
    }

    /// `Ok` for a 2xx answer, otherwise the error [`status_error`] classifies it as.
    pub fn error_for_status(&self, call: &str, reason: Option<&str>) -> Result<(), Error> {
        match status_error(self, call, reason, SystemTime::now()) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// The HTTPS client shared by the network adapters. Cheap to clone; one instance serves
/// concurrent calls.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    timeout: Duration,
    connect_timeout: Duration,
    max_response_bytes: usize,
    trust: &'static str,
    has_identity: bool,
    egress: Option<Arc<EgressPolicy>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("trust", &self.trust)
            .field("client_certificate", &self.has_identity)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds the client: rustls with the `ring` provider, roots from
    /// [`HttpConfig::ca_bundle_pem`] or the system, the client certificate if any, no
    /// redirects, https only.
    ///
    /// # Errors
    /// [`Error::Misconfigured`] when the caBundle or the client identity is unusable, or
    /// no trust roots can be found.
    pub fn new(config: HttpConfig) -> Result<HttpClient, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (roots, trust) = match &config.ca_bundle_pem {
            Some(pem) => (roots_from_pem(pem)?, "caBundle"),
            None => (system_roots()?, "the system roots"),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Misconfigured {
                message: "the TLS provider supports no safe protocol version".to_string(),
                source: Some(Box::new(e)),
            })?
            .with_root_certificates(roots);
        let mut tls = match &config.client_identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let (chain, key) = parse_identity(identity)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Misconfigured {
                        message: format!("the client certificate and key are unusable: {e}"),
                        source: Some(Box::new(e)),
                    })?
            }
        };
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let mut client = reqwest::Client::builder();
        if let Some(policy) = &config.egress {
            // No proxy from the environment: a proxy would resolve and reach the host
            // itself, past the policy, which could then check only the proxy's address.
            client = client
                .no_proxy()
                .dns_resolver(Arc::new(CheckedResolver(policy.clone())));
        }
        let client = client
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!config.allow_http)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.as_str())
            .build()
            .map_err(|e| Error::Misconfigured {
                message: format!("cannot build the HTTPS client: {e}"),
                source: Some(Box::new(e)),
            })?;
        Ok(HttpClient {
            client,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            max_response_bytes: config.max_response_bytes,
            trust,
            has_identity: config.client_identity.is_some(),
            egress: config.egress,
        })
    }

    /// Starts a request; finish it with [`send`](Self::send).
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.client.request(method, url)
    }

    /// The cap on response bodies.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// Sends the request and reads the whole body, stopping once it exceeds the cap.
    ///
    /// Any status is returned as an [`HttpResponse`]; classify it with [`status_error`].
    ///
    /// # Errors
    /// - [`Error::Transient`]: connection refused or reset, DNS failure, timeout.
    /// - [`Error::Misconfigured`]: the PKI's TLS certificate is not trusted, the TLS
    ///   handshake cannot work, or the request cannot be built (e.g. a credential that is
    ///   not a valid header value).
    /// - [`Error::Unauthorized`]: the PKI refused our TLS client certificate.
    /// - [`Error::InvalidResponse`]: the body exceeds the cap.
    pub async fn send(&self, request: RequestBuilder) -> Result<HttpResponse, Error> {
        let request = request.build().map_err(|e| Error::Misconfigured {
            message: format!("cannot build the request: {}", root_cause(&e)),
            source: Some(Box::new(e)),
        })?;
        let call = describe_call(request.method(), request.url());
        // A name goes through the checking resolver; an address written as the host
        // never reaches a resolver, so it is checked here (with names that always mean
        // this host or the API server).
        if let Some(policy) = &self.egress {
            let host = request.url().host_str().unwrap_or_default();
            policy
                .check_static(host)
                .map_err(|refused| egress_error(&call, &refused))?;
        }
        let started = Instant::now();
        let mut response = self
            .client
            .execute(request)
            .await
            .map_err(|e| self.transport_error(&call, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(declared) = response.content_length()
            && declared > self.max_response_bytes as u64
        {
            return Err(self.oversized(&call));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&call, e))?
        {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(self.oversized(&call));
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(
            call = %call,
            status = status.as_u16(),
            bytes = body.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "PKI answered"
        );
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    fn oversized(&self, call: &str) -> Error {
        Error::InvalidResponse {
            message: format!(
                "{call}: the response body exceeds the limit of {} bytes",
                self.max_response_bytes
            ),
        }
    }

    fn transport_error(&self, call: &str, err: reqwest::Error) -> Error {
        if let Some(refused) = certwright_pki::egress::refusal(&err) {
            return egress_error(call, refused);
        }
        if let Some(failure) = tls_failure(&err) {
            return self.tls_error(call, failure, err);
        }
        let message = if err.is_timeout() {
            if err.is_connect() {
                format!(
                    "{call}: connecting timed out after {}",
                    format_duration(self.connect_timeout)
                )
            } else {
                format!("{call}: timed out after {}", format_duration(self.timeout))
            }
        } else if err.is_connect() {
            format!("{call}: cannot connect: {}", root_cause(&err))
        } else if err.is_builder() {
            return Error::Misconfigured {
                message: format!("{call}: cannot build the request: {}", root_cause(&err)),
                source: Some(Box::new(err)),
            };
        } else {
            format!("{call}: the connection failed: {}", root_cause(&err))
        };
        let source: Box<dyn StdError + Send + Sync> = if err.is_timeout() {
            Box::new(Classified::new(NO_ANSWER_IN_TIME, err))
        } else {
            Box::new(err)
        };
        Error::Transient {
            message,
            source: Some(source),
        }
    }

    fn tls_error(&self, call: &str, failure: TlsFailure, err: reqwest::Error) -> Error {
        match failure {
            TlsFailure::Untrusted(why) => Error::Misconfigured {
                message: format!(
                    "{call}: the PKI's TLS certificate is not trusted by {}: {why}",
                    self.trust
                ),
                source: Some(Box::new(Classified::new(TLS_FAILED, err))),
            },
            TlsFailure::ClientCertificateRefused(alert) => Error::Unauthorized {
                message: if self.has_identity {
                    format!("{call}: the PKI refused our TLS client certificate ({alert})")
                } else {
                    format!(
                        "{call}: the PKI requires a TLS client certificate ({alert}); none is \
                         configured"
                    )
                },
            },
            TlsFailure::Other(why) => Error::Misconfigured {
                message: format!(
                    "{call}: the TLS handshake failed (is this an https endpoint?): {why}"
                ),
                source: Some(Box::new(Classified::new(TLS_FAILED, err))),
            },
        }
    }
}

/// What went wrong in TLS, as far as the caller can act on it.
#[derive(Debug, PartialEq, Eq)]
enum TlsFailure {
    /// We do not trust the server's certificate.
    Untrusted(String),
    /// The server refused our client certificate (or its absence); holds the alert.
    ClientCertificateRefused(String),
    /// Anything else: protocol mismatch, not TLS at all...
    Other(String),
}

/// Alerts a server sends when it does not accept the client's certificate.
const CLIENT_CERTIFICATE_ALERTS: [rustls::AlertDescription; 8] = [
    rustls::AlertDescription::BadCertificate,
    rustls::AlertDescription::CertificateRequired,
    rustls::AlertDescription::CertificateUnknown,
    rustls::AlertDescription::CertificateExpired,
    rustls::AlertDescription::CertificateRevoked,
    rustls::AlertDescription::UnsupportedCertificate,
    rustls::AlertDescription::UnknownCA,
    rustls::AlertDescription::AccessDenied,
];

/// Finds a TLS failure among the causes of `err`. rustls errors arrive typed during the
/// handshake; an alert received after it (TLS 1.3 reports a refused client certificate
/// only then) may reach us as an `io::Error` holding rustls's message only.
fn tls_failure(err: &(dyn StdError + 'static)) -> Option<TlsFailure> {
    if let Some(tls) = find_rustls_error(err) {
        return Some(match tls {
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType
            | rustls::Error::InvalidCertRevocationList(_) => TlsFailure::Untrusted(tls.to_string()),
            rustls::Error::AlertReceived(alert) if CLIENT_CERTIFICATE_ALERTS.contains(alert) => {
                TlsFailure::ClientCertificateRefused(format!("{alert:?}"))
            }
            _ => TlsFailure::Other(tls.to_string()),
        });
    }
    let message = root_cause(err);
    let alert = message.strip_prefix("received fatal alert: ")?;
    if CLIENT_CERTIFICATE_ALERTS
        .iter()
        .any(|known| format!("{known:?}") == alert)
    {
        Some(TlsFailure::ClientCertificateRefused(alert.to_string()))
    } else {
        Some(TlsFailure::Other(message))
    }
}

/// Parses the roots of a caBundle.
fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| Error::Misconfigured {
            message: format!("caBundle is not valid PEM: {e}"),
            source: Some(Box::new(e)),
        })?;
        roots.add(cert).map_err(|e| Error::Misconfigured {
            message: format!(
                "caBundle certificate {} is unusable as a trust root: {e}",
                i + 1
            ),
            source: Some(Box::new(e)),
        })?;
    }
    if roots.is_empty() {
        return Err(Error::misconfigured("caBundle holds no CERTIFICATE block"));
    }
    Ok(roots)
}

/// The operating system's trust roots.
fn system_roots() -> Result<rustls::RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(Error::misconfigured(format!(
            "no caBundle is set and no system trust roots were found{why}; set caBundle"
        )));
    }
    Ok(roots)
}

fn parse_identity(
    identity: &ClientIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let chain = CertificateDer::pem_slice_iter(&identity.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Misconfigured {
            message: format!("the client certificate (tls.crt) is not valid PEM: {e}"),
            source: Some(Box::new(e)),
        })?;
    if chain.is_empty() {
        return Err(Error::misconfigured(
            "the client certificate (tls.crt) holds no CERTIFICATE block",
        ));
    }
    // The key's PEM error is not quoted: it could carry a fragment of the key.
    let key = PrivateKeyDer::from_pem_slice(&identity.key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => Error::misconfigured(
            "the client key (tls.key) holds no PKCS#8, PKCS#1 or SEC1 private key",
        ),
        _ => Error::misconfigured("the client key (tls.key) is not valid PEM"),
    })?;
    Ok((chain, key))
}

/// Finds a rustls error among the causes of `err`, looking inside `io::Error`s (whose
/// `source()` skips the error they wrap).
fn find_rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(tls) = find_rustls_error(inner)
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// The innermost cause's message: "Connection refused (os error 111)" rather than
/// reqwest's "error sending request for url (...)".
fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut last = err;
    loop {
        let next = last.source().or_else(|| {
            last.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .map(|inner| inner as &(dyn StdError + 'static))
        });
        match next {
            Some(next) => last = next,
            None => return last.to_string(),
        }
    }
}

/// `"POST https://pki.example:8443/api/v1/sign"`: the method and URL without user
/// information, query or fragment, for messages.
pub fn describe_call(method: &Method, url: &Url) -> String {
    format!("{method} {}", redacted_url(url))
}

/// `"https://pki.example:8443/api/v1/sign"`: `url` without user information, query or
/// fragment, safe to quote in a message or a status condition.
pub fn redacted_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

/// Checks an https URL from an issuer's configuration (`field` names it in messages):
/// no credentials, query or fragment, and a host. Messages end up in the issuer's
/// status, which more people read than its Secret, so they quote the URL without user
/// information, query or fragment, and an unparsable one not at all.
pub fn parse_https_url(field: &str, raw: &str) -> Result<Url, Error> {
    let url = Url::parse(raw.trim()).map_err(|e| Error::Misconfigured {
        message: format!("{field} is not a URL: {e}"),
        source: Some(Box::new(e)),
    })?;
    let shown = redacted_url(&url);
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::misconfigured(format!(
            "{field} {shown:?} must not carry credentials; put them in the auth Secret"
        )));
    }
    if url.scheme() != "https" {
        return Err(Error::misconfigured(format!(
            "{field} {shown:?} must use https (the PKI is only reached over TLS)"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::misconfigured(format!(
            "{field} {shown:?} must not have a query or fragment"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) || url.cannot_be_a_base() {
        return Err(Error::misconfigured(format!(
            "{field} {shown:?} has no host"
        )));
    }
    Ok(url)
}

/// `"30s"`, `"1500ms"`.
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (relative to `now`; a date
/// in the past means no delay). Delays are capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok().map(Duration::from_secs)?
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Classifies a non-2xx answer into the error kind that decides what happens next;
/// `None` for 2xx.
///
/// - 401, 403: [`Error::Unauthorized`].
/// - 429: [`Error::RateLimited`] with the `Retry-After` delay.
/// - 408 and 5xx: [`Error::Transient`].
/// - 404, 405: [`Error::Misconfigured`] (the URL does not point at the API).
/// - other 4xx: [`Error::Rejected`] with `reason` (the adapter's reading of the body) or
///   an excerpt of the body.
/// - 3xx: [`Error::Misconfigured`] (redirects are not followed).
/// - anything else: [`Error::InvalidResponse`].
///
/// `call` (from [`describe_call`]) names the call in messages.
pub fn status_error(
    response: &HttpResponse,
    call: &str,
    reason: Option<&str>,
    now: SystemTime,
) -> Option<Error> {
    let status = response.status;
    if status.is_success() {
        return None;
    }
    let said = match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(reason) => reason.to_string(),
        None => response.excerpt(),
    };
    let answered = format!("{call} answered {status}");
    let err = match status.as_u16() {
        401 | 403 => Error::Unauthorized {
            message: format!("{answered}: {said}"),
        },
        429 => Error::RateLimited {
            retry_after: response.retry_after(now),
            message: format!("{answered}: {said}"),
        },
        408 | 500..=599 => Error::Transient {
            message: format!("{answered}: {said}"),
            source: Some(Box::new(AnsweredStatus(status.as_u16()))),
        },
        404 | 405 => Error::Misconfigured {
            message: format!("{answered} (wrong URL?): {said}"),
            source: Some(Box::new(AnsweredStatus(status.as_u16()))),
        },
        400..=499 => Error::Rejected {
            reason: match reason.map(str::trim).filter(|r| !r.is_empty()) {
                Some(reason) => reason.to_string(),
                None => format!("HTTP {status}: {said}"),
            },
        },
        300..=399 => {
            let location = response
                .headers
                .get(header::LOCATION)
                .map(|l| excerpt(l.as_bytes()))
                .unwrap_or_else(|| "nowhere".to_string());
            Error::Misconfigured {
                message: format!(
                    "{answered}, redirecting to {location}; redirects are not followed, \
                     so point the URL at the API itself"
                ),
                source: Some(Box::new(AnsweredStatus(status.as_u16()))),
            }
        }
        _ => Error::InvalidResponse {
            message: format!("{answered}: {said}"),
        },
    };
    Some(err)
}

/// A short excerpt of a response body that is safe to put in a status message or log:
/// at most [`EXCERPT_MAX_CHARS`] characters, HTML tags (and scripts and styles) collapsed
/// to spaces, control characters removed, whitespace runs collapsed. `"(empty body)"`
/// when nothing is left.
pub fn excerpt(body: &[u8]) -> String {
    // Look at a bounded prefix only: the excerpt is short whatever the body's size.
    let prefix = &body[..body.len().min(16 * 1024)];
    let text = String::from_utf8_lossy(prefix);
    let mut chars = text.chars().peekable();
    let mut out = String::new();
    let mut count = 0usize;
    let mut pending_space = false;
    while let Some(c) = chars.next() {
        if c == '<'
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || matches!(n, '/' | '!' | '?'))
        {
            // A tag: skip to its end, and over the content of script and style elements.
            let mut name = String::new();
            for t in chars.by_ref() {
                if t == '>' {
                    break;
                }
                if name.len() < 16 {
                    name.push(t.to_ascii_lowercase());
                }
            }
            for element in ["script", "style"] {
                if name == element || name.starts_with(&format!("{element} ")) {
                    skip_element_content(&mut chars, element);
                }
            }
            pending_space = true;
            continue;
        }
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if c.is_control() {
            continue;
        }
        if pending_space && count > 0 {
            out.push(' ');
            count += 1;
        }
        pending_space = false;
        out.push(c);
        count += 1;
        if count > EXCERPT_MAX_CHARS {
            break;
        }
    }
    if count > EXCERPT_MAX_CHARS {
        let mut cut: String = out.chars().take(EXCERPT_MAX_CHARS - 1).collect();
        cut.push('…');
        return cut;
    }
    if out.is_empty() {
        "(empty body)".to_string()
    } else {
        out
    }
}

/// Skips past `</element ...>`.
fn skip_element_content(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, element: &str) {
    let closing: Vec<char> = format!("</{element}").chars().collect();
    let mut window = std::collections::VecDeque::with_capacity(closing.len());
    for c in chars.by_ref() {
        if window.len() == closing.len() {
            window.pop_front();
        }
        window.push_back(c.to_ascii_lowercase());
        if window.iter().eq(closing.iter()) {
            break;
        }
    }
    for c in chars.by_ref() {
        if c == '>' {
            break;
        }
    }
}

/// Whether a call that failed may have been acted on by the server without its answer
/// arriving: a transport failure (a timeout, a reset) after the connection was made.
/// A failure to connect (name resolution, TCP, TLS) comes before the request is written,
/// and a status the server answered is an answer, not a lost one.
pub fn may_have_been_sent(err: &Error) -> bool {
    match err {
        Error::Transient {
            source: Some(source),
            ..
        } => {
            let source: &(dyn StdError + Send + Sync + 'static) =
                match source.downcast_ref::<Classified>() {
                    Some(classified) => classified.get_ref(),
                    None => &**source,
                };
            source
                .downcast_ref::<reqwest::Error>()
                .is_some_and(|e| !e.is_connect())
        }
        _ => false,
    }
}

/// A connection the egress policy refuses: the issuer's configuration names a host it
/// may not reach.
pub fn egress_error(call: &str, refused: &certwright_pki::egress::Refused) -> Error {
    Error::Misconfigured {
        message: format!("{call}: {refused}"),
        source: Some(Box::new(refused.clone())),
    }
}

/// reqwest's resolver, keeping to an egress policy: names are resolved here, and only
/// the addresses the policy allows are handed to the connector.
struct CheckedResolver(Arc<EgressPolicy>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve(Some(&policy), &host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Resolves `host` and returns the addresses the policy lets through, each with `port`.
///
/// # Errors
/// [`Refused`](certwright_pki::egress::Refused) when every address is refused; the resolver's error when the name does
/// not resolve.
pub async fn resolve(
    policy: Option<&EgressPolicy>,
    host: &str,
    port: u16,
) -> std::io::Result<Vec<std::net::SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((bare, port)).await?.collect();
    let Some(policy) = policy else {
        return Ok(found);
    };
    let mut refused = None;
    let allowed: Vec<_> = found
        .into_iter()
        .filter(|addr| match policy.check(host, addr.ip()) {
            Ok(()) => true,
            Err(r) => {
                refused.get_or_insert(r);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (true, Some(refused)) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            refused,
        )),
        _ => Ok(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                header::HeaderValue::from_str(value).expect("header value"),
            );
        }
        HttpResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body: body.as_bytes().to_vec(),
        }
    }

    const CALL: &str = "POST https://pki.example/api/sign";

    fn classify(
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
        reason: Option<&str>,
    ) -> Option<Error> {
        let now = httpdate::parse_http_date("Wed, 01 Jan 2025 00:00:00 GMT").expect("date");
        status_error(&response(status, headers, body), CALL, reason, now)
    }

    #[test]
    fn success_is_not_an_error() {
        assert!(classify(200, &[], "{}", None).is_none());
        assert!(classify(202, &[], "{}", None).is_none());
    }

    #[test]
    fn statuses_map_to_one_error_kind_each() {
        let cases: &[(u16, &str)] = &[
            (401, "unauthorized"),
            (403, "unauthorized"),
            (429, "rate_limited"),
            (408, "transient"),
            (500, "transient"),
            (502, "transient"),
            (503, "transient"),
            (404, "misconfigured"),
            (405, "misconfigured"),
            (400, "rejected"),
            (409, "rejected"),
            (422, "rejected"),
            (302, "misconfigured"),
            (101, "invalid_response"),
        ];
        for (status, label) in cases {
            let err = classify(*status, &[], "", None).expect("an error");
            assert_eq!(err.metric_label(), *label, "status {status}: {err}");
        }
    }

    #[test]
    fn messages_name_the_call_and_the_status() {
        let err = classify(503, &[], "down for maintenance", None).expect("error");
        assert_eq!(
            err.to_string(),
            "PKI unavailable: POST https://pki.example/api/sign answered 503 Service \
             Unavailable: down for maintenance"
        );
        let err = classify(404, &[], "", None).expect("error");
        assert!(err.to_string().contains("wrong URL?"), "{err}");
        let err =
            classify(302, &[("location", "https://sso.example/login")], "", None).expect("error");
        assert!(
            err.to_string().contains("https://sso.example/login"),
            "{err}"
        );
    }

    #[test]
    fn rejection_passes_the_reason_through() {
        match classify(
            422,
            &[],
            r#"{"reason":"x"}"#,
            Some("CN not allowed by policy"),
        ) {
            Some(Error::Rejected { reason }) => assert_eq!(reason, "CN not allowed by policy"),
            other => panic!("expected Rejected, got {other:?}"),
        }
        match classify(400, &[], "<h1>Bad</h1> request", None) {
            Some(Error::Rejected { reason }) => {
                assert_eq!(reason, "HTTP 400 Bad Request: Bad request")
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let err = classify(429, &[("retry-after", "7")], "", None).expect("error");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        let err = classify(
            429,
            &[("retry-after", "Wed, 01 Jan 2025 00:02:00 GMT")],
            "",
            None,
        )
        .expect("error");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
        let err = classify(429, &[], "", None).expect("error");
        assert_eq!(err.metric_label(), "rate_limited");
        assert_eq!(err.retry_after(), None);
    }

    #[test]
    fn retry_after_parsing() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        // All three HTTP-date forms.
        let in_a_minute = Some(Duration::from_secs(60));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            in_a_minute
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:50:37 GMT", now),
            in_a_minute
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:50:37 1994", now),
            in_a_minute
        );
        // A date in the past means now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-5", "1.5", "soon", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_is_capped() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        for huge in [
            "18446744073709551615",
            "86401",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            let delay = parse_retry_after(huge, now).expect("a delay");
            assert_eq!(delay, MAX_RETRY_AFTER, "{huge:?}");
            // What a scheduler does with it must not overflow.
            assert!(std::time::Instant::now().checked_add(delay).is_some());
        }
        assert_eq!(
            parse_retry_after("86400", now),
            Some(Duration::from_secs(86400))
        );
        let err =
            classify(429, &[("retry-after", "18446744073709551615")], "", None).expect("error");
        assert_eq!(err.retry_after(), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn excerpt_collapses_html_and_strips_control_characters() {
        let page = "<!DOCTYPE html>\n<html><head><title>Sign in</title>\
                    <style>body { color: red }</style><script>var a = '<b>';</script></head>\
                    <body>\r\n  <h1>Corporate   SSO</h1><p>Please\tlog in</p></body></html>";
        assert_eq!(
            excerpt(page.as_bytes()),
            "Sign in Corporate SSO Please log in"
        );
        assert_eq!(
            excerpt(b"line\x1b[31m one\x00\x07 two\n"),
            "line[31m one two"
        );
        assert_eq!(excerpt(b""), "(empty body)");
        assert_eq!(excerpt(b"  \n<br/>\t"), "(empty body)");
        // JSON with a comparison survives.
        assert_eq!(excerpt(br#"{"reason":"a < b"}"#), r#"{"reason":"a < b"}"#);
    }

    #[test]
    fn excerpt_is_short() {
        let long = "x".repeat(10_000);
        let short = excerpt(long.as_bytes());
        assert_eq!(short.chars().count(), EXCERPT_MAX_CHARS);
        assert!(short.ends_with('…'));
        let exactly = "y".repeat(EXCERPT_MAX_CHARS - 1);
        assert_eq!(excerpt(exactly.as_bytes()), exactly);
        // Multi-byte characters count as one each, and invalid UTF-8 is replaced.
        let accents = "é".repeat(500);
        assert_eq!(
            excerpt(accents.as_bytes()).chars().count(),
            EXCERPT_MAX_CHARS
        );
        assert_eq!(excerpt(b"ok \xff\xfe"), "ok \u{fffd}\u{fffd}");
    }

    #[test]
    fn html_is_recognised() {
        assert!(
            response(200, &[("content-type", "text/html; charset=utf-8")], "").looks_like_html()
        );
        assert!(response(200, &[], "\n <!doctype HTML><html>").looks_like_html());
        assert!(!response(200, &[("content-type", "application/json")], "{}").looks_like_html());
    }

    #[test]
    fn calls_are_described_without_credentials_or_query() {
        let url = Url::parse("https://user:secret@pki.example:8443/api/v1/sign?token=abc#x")
            .expect("url");
        assert_eq!(
            describe_call(&Method::POST, &url),
            "POST https://pki.example:8443/api/v1/sign"
        );
    }

    #[test]
    fn durations_are_formatted_for_people() {
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn bad_trust_and_identity_are_misconfigurations() {
        let with = |config: HttpConfig| {
            HttpClient::new(config)
                .map(|_| ())
                .expect_err("misconfigured")
        };
        let err = with(HttpConfig {
            ca_bundle_pem: Some(b"not pem".to_vec()),
            ..HttpConfig::default()
        });
        assert_eq!(err.metric_label(), "misconfigured", "{err}");
        assert!(err.to_string().contains("caBundle"), "{err}");

        let ca =
            certwright_simulators::TestCa::root(certwright_simulators::KeyKind::EcdsaP256, "Trust");
        let leaf = ca.issue_leaf(certwright_simulators::KeyKind::EcdsaP256, "client.example");
        let other = ca.issue_leaf(certwright_simulators::KeyKind::EcdsaP256, "other.example");
        let bundle = Some(ca.cert_pem().as_bytes().to_vec());
        HttpClient::new(HttpConfig {
            ca_bundle_pem: bundle.clone(),
            client_identity: Some(ClientIdentity {
                cert_pem: leaf.cert_pem.clone().into_bytes(),
                key_pem: leaf.key_pem.clone().into_bytes(),
            }),
            ..HttpConfig::default()
        })
        .expect("a matching identity is accepted");

        let err = with(HttpConfig {
            ca_bundle_pem: bundle.clone(),
            client_identity: Some(ClientIdentity {
                cert_pem: leaf.cert_pem.clone().into_bytes(),
                key_pem: other.key_pem.clone().into_bytes(),
            }),
            ..HttpConfig::default()
        });
        assert_eq!(err.metric_label(), "misconfigured", "{err}");

        let err = with(HttpConfig {
            ca_bundle_pem: bundle,
            client_identity: Some(ClientIdentity {
                cert_pem: leaf.cert_pem.into_bytes(),
                key_pem: b"-----BEGIN PRIVATE KEY-----\nAAAA".to_vec(),
            }),
            ..HttpConfig::default()
        });
        assert_eq!(err.metric_label(), "misconfigured", "{err}");
        assert!(!err.to_string().contains("AAAA"), "{err}");
    }

    #[test]
    fn tls_failures_are_recognised_typed_or_as_text() {
        use std::io::{Error as IoError, ErrorKind};
        let text = IoError::new(
            ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        assert_eq!(
            tls_failure(&text),
            Some(TlsFailure::ClientCertificateRefused(
                "CertificateRequired".to_string()
            ))
        );
        let typed = IoError::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(
            tls_failure(&typed),
            Some(TlsFailure::Untrusted(_))
        ));
        let alert = IoError::new(
            ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert!(matches!(
            tls_failure(&alert),
            Some(TlsFailure::ClientCertificateRefused(_))
        ));
        let other = IoError::new(
            ErrorKind::InvalidData,
            "received fatal alert: HandshakeFailure",
        );
        assert!(matches!(tls_failure(&other), Some(TlsFailure::Other(_))));
        assert_eq!(
            tls_failure(&IoError::other("connection reset by peer")),
            None
        );
    }

    #[test]
    fn identity_debug_hides_the_key() {
        let identity = ClientIdentity {
            cert_pem: b"cert".to_vec(),
            key_pem: b"very secret".to_vec(),
        };
        assert!(!format!("{identity:?}").contains("very secret"));
    }
}
