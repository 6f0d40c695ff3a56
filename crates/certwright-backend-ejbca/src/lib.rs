//! EJBCA's REST interface as a [`Backend`] (`docs/backends/ejbca.md`).
//!
//! Each CSR is enrolled with `POST {url}/v1/certificate/pkcs10enroll` under the issuer's
//! CA, certificate profile and end entity profile, as an end entity named by the issuer's
//! rule, with a fresh random password. Enrollments that EJBCA holds for approval are
//! finished with `POST {url}/v1/certificate/{request_id}/finalize`, never enrolled again.
//! Health is `GET {url}/v1/certificate/status` plus a look at the configured CA. The
//! client authenticates with a TLS client certificate, an OAuth2 bearer token from client
//! credentials, or both.
//!
//! One file because it is the backend's calls in order (enroll, finalize, search,
//! status) with their unit tests (a quarter of the file); wire formats, OAuth2 and
//! sealing are submodules.
#![deny(missing_docs)]

mod oauth;
mod sealed;
mod wire;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;

use certwright_x509::{Certificate, Csr, parse_pem_bundle};

use certwright_backend_http::{
    HttpClient, HttpConfig, HttpResponse, Method, RequestBuilder, StatusCode, Url, describe_call,
    header,
};
use certwright_pki::{
    Backend, DEFAULT_DURATION, DEFAULT_TIMEOUT, Error, Health, IssuedBundle, Outcome,
    PendingRequest, Recovery, SignRequest,
};

pub use certwright_backend_http::ClientIdentity;
pub use oauth::OAuthCredentials;

use wire::{CallKind, api_error, parse_json};

/// How long to wait before polling an enrollment held for approval, unless EJBCA says.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Longest end entity username sent to EJBCA, in bytes (EJBCA stores at most 250).
pub const MAX_USERNAME_BYTES: usize = 250;

/// Longest lifetime passed as `end_time`: 100 years.
const MAX_END_TIME_DURATION: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

const MIN_POLL_DELAY: Duration = Duration::from_secs(1);
/// Clock skew allowed between the controller and EJBCA when searching for a lost
/// submission's certificate.
const RECOVERY_SKEW: Duration = Duration::from_secs(15 * 60);
/// How far EJBCA sets notBefore back by default (its certificate validity offset).
const EJBCA_BACKDATE: Duration = Duration::from_secs(10 * 60);
/// After a submission's timeout, how much longer it may take to land in EJBCA.
const RECOVERY_SETTLE: Duration = Duration::from_secs(30);
/// Certificates one recovery search reads; with more, the search cannot tell.
const RECOVERY_SEARCH_LIMIT: u32 = 100;
const MAX_POLL_DELAY: Duration = Duration::from_secs(24 * 3600);

/// How the end entity of each enrollment is named (the issuer's `endEntityName`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndEntityNaming {
    /// The CSR's common name (`cn`).
    #[default]
    CommonName,
    /// The CSR's first DNS name (`dns`).
    FirstDnsName,
    /// `<namespace>/<name>` of the CertificateRequest (`namespacedName`).
    NamespacedName,
    /// Always this name (`fixed:<name>`): every certificate belongs to one end entity.
    Fixed(String),
}

/// Configuration of an [`EjbcaBackend`].
#[derive(Clone, Debug)]
pub struct EjbcaConfig {
    /// The REST base URL, https: `https://ejbca.corp.example/ejbca/ejbca-rest-api`.
    pub url: String,
    /// A TLS client certificate (the Secret's `tls.crt` and `tls.key`), for EJBCA roles
    /// that match on it.
    pub client_certificate: Option<ClientIdentity>,
    /// OAuth2 client credentials, for EJBCA roles that match on a trusted OAuth
    /// provider's tokens.
    pub oauth: Option<OAuthCredentials>,
    /// PEM certificates trusted for EJBCA's TLS endpoint (and the token endpoint); the
    /// system roots when `None`.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// The EJBCA CA that signs (`certificate_authority_name`).
    pub certificate_authority_name: String,
    /// The certificate profile, unless the request names one (`certificate_profile_name`).
    pub certificate_profile_name: String,
    /// The end entity profile (`end_entity_profile_name`).
    pub end_entity_profile_name: String,
    /// How each end entity is named.
    pub end_entity_naming: EndEntityNaming,
    /// Send the requested lifetime as `end_time` (EJBCA 9.3.3 and later; the certificate
    /// profile must allow validity override). Otherwise the profile decides.
    pub send_end_time: bool,
    /// Sent as `account_binding_id` with each enrollment.
    pub account_binding_id: Option<String>,
    /// Timeout of each call. Default: [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// Lifetime sent as `end_time` when the request names none. Default:
    /// [`DEFAULT_DURATION`].
    pub default_duration: Duration,
    /// Delay before polling an enrollment held for approval. Default:
    /// [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// Where EJBCA and the token endpoint may be (issuers a tenant writes); anywhere
    /// when `None`.
    pub egress: Option<Arc<certwright_pki::egress::EgressPolicy>>,
}

impl EjbcaConfig {
    /// A configuration for `url` enrolling under these names, with the `cn` naming rule,
    /// defaults for the rest and no credentials yet.
    pub fn new(
        url: impl Into<String>,
        certificate_authority_name: impl Into<String>,
        certificate_profile_name: impl Into<String>,
        end_entity_profile_name: impl Into<String>,
    ) -> Self {
        EjbcaConfig {
            url: url.into(),
            client_certificate: None,
            oauth: None,
            ca_bundle_pem: None,
            certificate_authority_name: certificate_authority_name.into(),
            certificate_profile_name: certificate_profile_name.into(),
            end_entity_profile_name: end_entity_profile_name.into(),
            end_entity_naming: EndEntityNaming::CommonName,
            send_end_time: false,
            account_binding_id: None,
            timeout: DEFAULT_TIMEOUT,
            default_duration: DEFAULT_DURATION,
            poll_interval: DEFAULT_POLL_INTERVAL,
            egress: None,
        }
    }
}

/// The EJBCA approval request id inside a pending id this backend returned, for
/// operators (it is the id EJBCA's RA web shows) and tests.
pub fn approval_request_id(pending_id: &str) -> Option<i64> {
    sealed::request_id_of(pending_id)
}

/// EJBCA, through its REST interface.
pub struct EjbcaBackend {
    http: HttpClient,
    base: Url,
    oauth: Option<oauth::TokenSource>,
    client_certificate: bool,
    ca_name: String,
    certificate_profile: String,
    end_entity_profile: String,
    naming: EndEntityNaming,
    send_end_time: bool,
    account_binding_id: Option<String>,
    default_duration: Duration,
    poll_interval: Duration,
    /// Each call's timeout: a submission may reach EJBCA until it has passed.
    timeout: Duration,
    sealer: sealed::Sealer,
    rng: SystemRandom,
    /// The CA's chain (issuing CA up to the root), from the last enrollment, health check
    /// or fetch: finalize answers with the certificate alone.
    chain: Mutex<Option<Vec<Certificate>>>,
}

impl fmt::Debug for EjbcaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EjbcaBackend")
            .field("url", &certwright_backend_http::redacted_url(&self.base))
            .field("ca", &self.ca_name)
            .field("certificate_profile", &self.certificate_profile)
            .field("end_entity_profile", &self.end_entity_profile)
            .field("naming", &self.naming)
            .field("client_certificate", &self.client_certificate)
            .field("oauth", &self.oauth)
            .finish_non_exhaustive()
    }
}

impl EjbcaBackend {
    /// Checks the configuration and builds the HTTPS clients.
    ///
    /// # Errors
    /// [`Error::Misconfigured`] when a URL is not https, a name is empty, no credentials
    /// are given, or the caBundle or client certificate is unusable.
    pub fn new(config: EjbcaConfig) -> Result<EjbcaBackend, Error> {
        let base = wire::parse_https_url("url", &config.url)?;
        let name = |field: &str, value: &str| -> Result<String, Error> {
            let value = value.trim();
            if value.is_empty() {
                Err(Error::misconfigured(format!("{field} is empty")))
            } else {
                Ok(value.to_string())
            }
        };
        let ca_name = name(
            "certificateAuthorityName",
            &config.certificate_authority_name,
        )?;
        let certificate_profile = name("certificateProfileName", &config.certificate_profile_name)?;
        let end_entity_profile = name("endEntityProfileName", &config.end_entity_profile_name)?;
        if let EndEntityNaming::Fixed(fixed) = &config.end_entity_naming {
            name("endEntityName fixed:<name>", fixed)?;
        }
        if config.client_certificate.is_none() && config.oauth.is_none() {
            return Err(Error::misconfigured(
                "no credentials for EJBCA: give a client certificate (tls.crt, tls.key) or \
                 OAuth2 client credentials (tokenUrl, clientId, clientSecret)",
            ));
        }
        let http_config = HttpConfig {
            ca_bundle_pem: config.ca_bundle_pem.clone(),
            client_identity: None,
            timeout: config.timeout,
            connect_timeout: config
                .timeout
                .min(certwright_backend_http::DEFAULT_CONNECT_TIMEOUT),
            egress: config.egress.clone(),
            ..HttpConfig::default()
        };
        let http = HttpClient::new(HttpConfig {
            client_identity: config.client_certificate.clone(),
            ..http_config.clone()
        })?;

        // The key that seals enrollment passwords comes from the credentials, which
        // every replica and restart of the controller reads from the same Secret.
        let mut key_parts: Vec<&[u8]> = vec![base.as_str().as_bytes()];
        if let Some(identity) = &config.client_certificate {
            key_parts.push(&identity.key_pem);
        }
        if let Some(creds) = &config.oauth {
            key_parts.push(creds.token_url.as_bytes());
            key_parts.push(creds.client_id.as_bytes());
            key_parts.push(creds.client_secret.as_bytes());
        }
        let sealer = sealed::Sealer::new(&key_parts)?;

        let oauth = match config.oauth {
            None => None,
            // The identity provider gets no client certificate: it is EJBCA's to see.
            Some(creds) => Some(oauth::TokenSource::new(
                creds,
                HttpClient::new(http_config)?,
            )?),
        };
        Ok(EjbcaBackend {
            http,
            base,
            oauth,
            client_certificate: config.client_certificate.is_some(),
            ca_name,
            certificate_profile,
            end_entity_profile,
            naming: config.end_entity_naming,
            send_end_time: config.send_end_time,
            account_binding_id: config
                .account_binding_id
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty()),
            default_duration: config.default_duration,
            poll_interval: config.poll_interval.clamp(MIN_POLL_DELAY, MAX_POLL_DELAY),
            timeout: config.timeout,
            sealer,
            rng: SystemRandom::new(),
            chain: Mutex::new(None),
        })
    }

    /// `{base}/{segments...}`, each segment percent-encoded as RFC 3986 asks of data in
    /// a path: everything but the unreserved characters. (The `url` crate leaves `,`, `=`
    /// and `+` raw in segments, which EJBCA's `simple`-style path parameters read as a
    /// list separator and refuse.)
    ///
    /// # Errors
    /// [`Error::InvalidResponse`] for a segment of dots only (`.`, `..`): URLs read it as
    /// a step in the path, encoded or not, so it cannot travel as data. Such values come
    /// only from the PKI's answers (a CA's subject DN, a request id).
    fn endpoint(&self, segments: &[&str]) -> Result<Url, Error> {
        let mut url = self.base.clone();
        let mut path = url.path().trim_end_matches('/').to_string();
        for segment in segments {
            if !segment.is_empty() && segment.bytes().all(|b| b == b'.') {
                return Err(Error::InvalidResponse {
                    message: format!(
                        "EJBCA named a CA or request {segment:?}, which cannot be put in a URL"
                    ),
                });
            }
            path.push('/');
            path.push_str(&encode_segment(segment));
        }
        url.set_path(&path);
        Ok(url)
    }

    fn request(
        &self,
        method: Method,
        url: Url,
        body: Option<&[u8]>,
        token: Option<&str>,
    ) -> RequestBuilder {
        let mut builder = self
            .http
            .request(method, url)
            .header(header::ACCEPT, "application/json");
        if let Some(body) = body {
            builder = builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends a call with the credentials. With OAuth, a 401 to a cached token drops it;
    /// a GET is then sent once more with a new token, while a POST (an enrollment or a
    /// finalize) is not: the call fails as [`Error::Transient`] and the engine's retry
    /// fetches a new token.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, Error> {
        let token = match &self.oauth {
            Some(source) => Some(source.token().await?),
            None => None,
        };
        let response = self
            .http
            .send(self.request(
                method.clone(),
                url.clone(),
                body,
                token.as_ref().map(|t| t.value.as_str()),
            ))
            .await?;
        if response.status == StatusCode::UNAUTHORIZED
            && let (Some(source), Some(token)) = (&self.oauth, &token)
            && token.from_cache
        {
            // A cached token EJBCA does not accept (expired early, revoked, signed with a
            // rotated key) is dropped either way. A token fetched for this very call is
            // not: a second fresh token would fare no better, and the 401 stands.
            source.invalidate(&token.value).await;
            if method != Method::GET {
                // Enrollments and finalizations are submitted at most once per call (the
                // Backend contract): whether EJBCA refused this one before or after it
                // touched the end entity is its business, so the engine decides on the
                // retry, which fetches a new token.
                return Err(Error::Transient {
                    message: format!(
                        "{}: EJBCA refused the cached OAuth2 token of client {:?} (401); it \
                         was dropped, and the next attempt fetches a new one",
                        describe_call(&method, &url),
                        source.client_id()
                    ),
                    source: None,
                });
            }
            // Reading twice changes nothing in EJBCA.
            tracing::debug!(
                client_id = %source.client_id(),
                "EJBCA refused the cached OAuth2 token; fetching a new one"
            );
            let fresh = source.token().await?;
            return self
                .http
                .send(self.request(method, url, body, Some(&fresh.value)))
                .await;
        }
        Ok(response)
    }

    /// The end entity username for `request`, by the configured rule.
    fn username(&self, request: &SignRequest) -> Result<String, Error> {
        let name =
            match &self.naming {
                EndEntityNaming::CommonName => request
                    .csr
                    .common_name()
                    .map(str::trim)
                    .filter(|cn| !cn.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| Error::Rejected {
                        reason: "the issuer names EJBCA end entities after the CSR's common name \
                             (endEntityName: cn), and this CSR has none"
                            .to_string(),
                    })?,
                EndEntityNaming::FirstDnsName => request
                    .csr
                    .sans()
                    .dns
                    .first()
                    .cloned()
                    .ok_or_else(|| Error::Rejected {
                        reason: "the issuer names EJBCA end entities after the CSR's first DNS \
                             name (endEntityName: dns), and this CSR has none"
                            .to_string(),
                    })?,
                EndEntityNaming::NamespacedName => {
                    if request.requester.name.is_empty() {
                        return Err(Error::Rejected {
                            reason: "the issuer names EJBCA end entities after the \
                                 CertificateRequest (endEntityName: namespacedName), and this \
                                 request names none"
                                .to_string(),
                        });
                    }
                    request.requester.to_string()
                }
                EndEntityNaming::Fixed(name) => name.trim().to_string(),
            };
        if name.len() > MAX_USERNAME_BYTES || name.chars().any(char::is_control) {
            return Err(Error::Rejected {
                reason: format!(
                    "the end entity name derived from this request is over \
                     {MAX_USERNAME_BYTES} bytes or holds control characters"
                ),
            });
        }
        Ok(name)
    }

    /// `end_time` for `request`, when the issuer sends one.
    fn end_time(&self, request: &SignRequest) -> Result<Option<String>, Error> {
        if !self.send_end_time {
            return Ok(None);
        }
        let duration = request.duration.unwrap_or(self.default_duration);
        if duration > MAX_END_TIME_DURATION {
            return Err(Error::Rejected {
                reason: "the requested duration is over 100 years".to_string(),
            });
        }
        let end = SystemTime::now()
            .checked_add(duration)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .ok_or_else(|| Error::misconfigured("the system clock is set before 1970"))?;
        Ok(Some(wire::format_end_time(end.as_secs())))
    }

    fn cached_chain(&self) -> Option<Vec<Certificate>> {
        self.chain
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn remember_chain(&self, chain: Vec<Certificate>) {
        if !chain.is_empty() {
            *self
                .chain
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(chain);
        }
    }

    /// The configured CA's subject DN, from `GET {url}/v1/ca`.
    async fn ca_subject_dn(&self) -> Result<String, Error> {
        let url = self.endpoint(&["v1", "ca"])?;
        let call = describe_call(&Method::GET, &url);
        let response = self.send(Method::GET, url, None).await?;
        if !response.is_success() {
            return Err(api_error(&call, &response, CallKind::Read));
        }
        let list: wire::CaList = parse_json(&call, &response)?;
        let found = list
            .certificate_authorities
            .iter()
            .find(|ca| ca.name == self.ca_name)
            .or_else(|| {
                list.certificate_authorities
                    .iter()
                    .find(|ca| ca.name.eq_ignore_ascii_case(&self.ca_name))
            });
        match found {
            Some(ca) if !ca.subject_dn.trim().is_empty() => Ok(ca.subject_dn.clone()),
            _ => {
                let names: Vec<String> = list
                    .certificate_authorities
                    .iter()
                    .take(10)
                    .map(|ca| format!("{:?}", certwright_backend_http::excerpt(ca.name.as_bytes())))
                    .collect();
                Err(Error::misconfigured(format!(
                    "{call}: EJBCA lists no CA named {:?} for these credentials (it lists {}); \
                     check certificateAuthorityName and the access rules of the EJBCA role",
                    self.ca_name,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )))
            }
        }
    }

    /// The chain of the CA with `subject_dn`, from
    /// `GET {url}/v1/ca/{subject_dn}/certificate/download` (PEM).
    async fn download_chain(&self, subject_dn: &str) -> Result<Vec<Certificate>, Error> {
        let url = self.endpoint(&["v1", "ca", subject_dn, "certificate", "download"])?;
        let call = describe_call(&Method::GET, &url);
        let response = self.send(Method::GET, url, None).await?;
        if !response.is_success() {
            return Err(api_error(&call, &response, CallKind::Read));
        }
        if response.looks_like_html() {
            return Err(response.html_instead_of(&call, "the CA's PEM chain"));
        }
        let chain = parse_pem_bundle(&response.body).map_err(|e| Error::InvalidResponse {
            message: format!(
                "{call} answered with no usable PEM certificates ({e}): {}",
                response.excerpt()
            ),
        })?;
        if chain.is_empty() {
            return Err(Error::InvalidResponse {
                message: format!("{call} answered with no certificate"),
            });
        }
        Ok(chain)
    }

    /// The CA's chain: cached, or fetched by the CA's name.
    async fn ca_chain(&self) -> Result<Vec<Certificate>, Error> {
        if let Some(chain) = self.cached_chain() {
            return Ok(chain);
        }
        let subject_dn = self.ca_subject_dn().await?;
        let chain = self.download_chain(&subject_dn).await?;
        self.remember_chain(chain.clone());
        Ok(chain)
    }

    /// Reads a `CertificateRestResponse` of pkcs10enroll or finalize into an issued bundle,
    /// completing the chain from `known_chain`, or else (when `may_fetch`) from the
    /// certificate's issuer.
    ///
    /// EJBCA answered 2xx: it signed, and a retry would enroll anew (or finalize an
    /// enrollment EJBCA finalizes only once). So nothing here is retryable: an answer that
    /// cannot be read is [`Error::Misconfigured`], a certificate for another key is
    /// [`Error::Rejected`], and a chain that does not fit or cannot be read gives the
    /// certificate with what is known of its chain. Only an HTML page in place of JSON,
    /// which a proxy or login portal in front of EJBCA sends and EJBCA never does, stays
    /// [`Error::InvalidResponse`]: the call did not reach EJBCA.
    async fn issued(
        &self,
        call: &str,
        response: &HttpResponse,
        csr: &Csr,
        known_chain: Option<Vec<Certificate>>,
        may_fetch: bool,
    ) -> Result<IssuedBundle, Error> {
        if response.looks_like_html() {
            return Err(response.html_instead_of(call, "EJBCA's JSON"));
        }
        let status = response.status;
        let body: wire::CertificateBody =
            parse_json(call, response).map_err(|e| signed_but_unreadable(status, e))?;
        self.bundle_of(call, status, &body, csr, known_chain, may_fetch)
            .await
    }

    /// The bundle of one `CertificateRestResponse` EJBCA answered with `status`, as
    /// [`EjbcaBackend::issued`] reads it.
    async fn bundle_of(
        &self,
        call: &str,
        status: StatusCode,
        body: &wire::CertificateBody,
        csr: &Csr,
        known_chain: Option<Vec<Certificate>>,
        may_fetch: bool,
    ) -> Result<IssuedBundle, Error> {
        let mut certs =
            wire::issued_certificates(call, body).map_err(|e| signed_but_unreadable(status, e))?;
        if certs.is_empty() {
            return Err(signed_but_unreadable(
                status,
                Error::InvalidResponse {
                    message: format!("{call}: the answer holds no certificate"),
                },
            ));
        }
        let leaf = certs.remove(0);
        if leaf.public_key().spki_der != csr.public_key().spki_der {
            return Err(Error::Rejected {
                reason: format!(
                    "{call}: EJBCA issued a certificate (serial {}, subject \"{}\") that does \
                     not carry the CSR's public key, so it cannot be used; it is not enrolled \
                     again, since EJBCA would answer alike (check that the certificate and \
                     end entity profiles take the key from the CSR)",
                    leaf.serial_hex(),
                    leaf.subject()
                ),
            });
        }
        // The chain EJBCA sent: extra certificates in `certificate`, then
        // `certificate_chain`.
        match wire::chain_certificates(call, body) {
            Ok(chain) => certs.extend(chain),
            Err(e) => tracing::warn!(
                call = %call,
                error = %e,
                "EJBCA's certificate_chain is unreadable; completing the chain otherwise"
            ),
        }
        let with = |chain: &[Certificate]| {
            let mut all = vec![leaf.clone()];
            all.extend_from_slice(chain);
            IssuedBundle::from_certificates(all).ok()
        };
        if !certs.is_empty()
            && let Some(bundle) = with(&certs)
        {
            self.remember_chain(certs);
            return Ok(bundle);
        }
        if let Some(bundle) = known_chain.as_deref().and_then(with) {
            return Ok(bundle);
        }
        if may_fetch {
            // The known chain is not this certificate's (the CA was renewed since it was
            // read), or none is known: fetch the chain of the certificate's own issuer,
            // once. A read: it changes nothing in EJBCA.
            match self.download_chain(&leaf.issuer().to_string()).await {
                Ok(fresh) => {
                    if let Some(bundle) = with(&fresh) {
                        self.remember_chain(fresh);
                        return Ok(bundle);
                    }
                }
                Err(e) => tracing::warn!(
                    call = %call,
                    error = %e,
                    "cannot download the issuing CA's chain"
                ),
            }
        }
        // The certificate is kept rather than lost, without its chain.
        tracing::warn!(
            call = %call,
            serial = %leaf.serial_hex(),
            issuer = %leaf.issuer(),
            "no chain fits the certificate EJBCA issued; keeping the certificate alone"
        );
        IssuedBundle::from_certificates(vec![leaf]).map_err(|e| signed_but_unreadable(status, e))
    }

    fn retry_after(&self, response: &HttpResponse) -> Duration {
        response
            .retry_after(SystemTime::now())
            .unwrap_or(self.poll_interval)
            .clamp(MIN_POLL_DELAY, MAX_POLL_DELAY)
    }

    fn auth_description(&self) -> String {
        match (&self.oauth, self.client_certificate) {
            (Some(source), true) => format!(
                "TLS client certificate and OAuth2 client {:?}",
                source.client_id()
            ),
            (Some(source), false) => format!("OAuth2 client {:?}", source.client_id()),
            (None, _) => "TLS client certificate".to_string(),
        }
    }
}

/// The error for an answer of EJBCA's that says it signed (or holds the request for
/// approval) but that cannot be used: not retryable, since a retry would enroll again
/// (or finalize an enrollment EJBCA has already finalized).
fn signed_but_unreadable(status: StatusCode, cause: Error) -> Error {
    Error::misconfigured(format!(
        "EJBCA answered {status}, so it took the request, but its answer cannot be used: \
         {cause}. Submitting again would enroll anew, so this request fails; check the \
         EJBCA version and anything between certwright and EJBCA that rewrites answers, \
         then make the request again"
    ))
}

/// Whether a 401 or 403 to finalize is EJBCA refusing the enrollment password (the end
/// entity's password changed since the enrollment), rather than the caller.
fn refuses_password(response: &HttpResponse) -> Option<String> {
    if !matches!(
        response.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) {
        return None;
    }
    let message = wire::error_message(&response.body)?;
    message
        .to_ascii_lowercase()
        .contains("password")
        .then_some(message)
}

/// Percent-encodes every byte of `segment` but RFC 3986's unreserved characters.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() * 3);
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[async_trait::async_trait]
impl Backend for EjbcaBackend {
    fn kind(&self) -> &'static str {
        "ejbca"
    }

    async fn sign(&self, request: &SignRequest) -> Result<Outcome, Error> {
        let username = self.username(request)?;
        let profile = request
            .template
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .unwrap_or(&self.certificate_profile);
        let password = sealed::new_password(&self.rng)?;
        let body = wire::EnrollBody {
            certificate_request: request.csr.to_pem(),
            certificate_profile_name: profile,
            end_entity_profile_name: &self.end_entity_profile,
            certificate_authority_name: &self.ca_name,
            username: &username,
            password: &password,
            include_chain: true,
            response_format: wire::RESPONSE_FORMAT,
            account_binding_id: self.account_binding_id.as_deref(),
            end_time: self.end_time(request)?,
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| Error::misconfigured(format!("cannot encode the enrollment: {e}")))?;
        let url = self.endpoint(&["v1", "certificate", "pkcs10enroll"])?;
        let call = describe_call(&Method::POST, &url);
        tracing::debug!(
            call = %call,
            requester = %request.requester,
            username = %username,
            certificate_profile = %profile,
            "enrolling with EJBCA"
        );
        // The token first, so that a failure to get one is told apart from a failure of
        // the enrollment itself (the call below then takes it from the cache).
        if let Some(source) = &self.oauth {
            source.token().await?;
        }
        let response = match self.send(Method::POST, url, Some(&body)).await {
            Ok(response) => response,
            // Sent, and then the answer never came (a timeout, a reset): EJBCA may have
            // enrolled, and enrolling again would sign a second certificate.
            // The caller asks `recover` (a certificate search) before enrolling again.
            Err(e) if certwright_backend_http::may_have_been_sent(&e) => {
                return Err(Error::AnswerLost {
                    message: format!(
                        "{call}: the answer to the enrollment was lost ({e}); EJBCA may have \
                         enrolled end entity {username:?}, so it is searched for before any \
                         new enrollment"
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        match response.status {
            StatusCode::OK | StatusCode::CREATED => {
                let known = self.cached_chain();
                self.issued(&call, &response, &request.csr, known, true)
                    .await
                    .map(Outcome::Issued)
            }
            // EJBCA holds the enrollment for approval: from here on, nothing is
            // retryable, or the retry would enroll (and wait for approval) again.
            StatusCode::ACCEPTED => {
                let waiting: wire::WaitingBody = parse_json(&call, &response)
                    .map_err(|e| signed_but_unreadable(response.status, e))?;
                let request_id = waiting.request_id().ok_or_else(|| {
                    Error::misconfigured(format!(
                        "{call} answered 202 (waiting for approval) without a usable \
                         request_id or finalize link, so the enrollment cannot be finalized; \
                         it waits in EJBCA under end entity {username:?}: {}",
                        response.excerpt()
                    ))
                })?;
                tracing::info!(
                    requester = %request.requester,
                    username = %username,
                    approval_request_id = request_id,
                    "EJBCA holds the enrollment for approval"
                );
                let id = self
                    .sealer
                    .seal(&self.rng, request_id, &request.idempotency_key, &password)
                    .map_err(|e| signed_but_unreadable(response.status, e))?;
                Ok(Outcome::Pending(PendingRequest {
                    id,
                    retry_after: self.retry_after(&response),
                }))
            }
            status if status.is_success() => Err(signed_but_unreadable(
                status,
                api_error(&call, &response, CallKind::Enrollment),
            )),
            _ => Err(api_error(&call, &response, CallKind::Enrollment)),
        }
    }

    /// Searches the certificates EJBCA issued to the request's end entity since shortly
    /// before `submitted` (`POST /v1/certificate/search`) for the one this submission
    /// made: it carries the CSR's public key and was not valid before the submission
    /// (less EJBCA's backdating and clock skew). When several fit (a key reused by
    /// renewals), the one with the CSR's names; still several: cannot tell. Nothing
    /// found while the submission may still be reaching EJBCA (its call's timeout has
    /// not passed): ask again later. Nothing found after: enrolling again is safe. An
    /// enrollment held for approval leaves no certificate, so it is not found; enrolling
    /// again then files a second approval request, never a second certificate.
    async fn recover(
        &self,
        request: &SignRequest,
        submitted: SystemTime,
    ) -> Result<Recovery, Error> {
        let username = self.username(request)?;
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let issued_after = unix(submitted.checked_sub(RECOVERY_SKEW).unwrap_or(UNIX_EPOCH));
        let body = serde_json::json!({
            "max_number_of_results": RECOVERY_SEARCH_LIMIT,
            "criteria": [
                {"property": "QUERY", "value": username, "operation": "EQUAL"},
                {"property": "CA", "value": self.ca_name, "operation": "EQUAL"},
                {"property": "ISSUED_DATE", "value": wire::format_search_date(issued_after), "operation": "AFTER"},
            ],
        });
        let body = serde_json::to_vec(&body)
            .map_err(|e| Error::misconfigured(format!("cannot encode the search: {e}")))?;
        let url = self.endpoint(&["v1", "certificate", "search"])?;
        let call = describe_call(&Method::POST, &url);
        let response = self.send(Method::POST, url, Some(&body)).await?;
        match response.status {
            StatusCode::OK => {}
            // An EJBCA without the search call cannot be asked.
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                tracing::warn!(call = %call, "EJBCA has no certificate search; the request cannot be recovered");
                return Ok(Recovery::Unknown);
            }
            _ => return Err(api_error(&call, &response, CallKind::Read)),
        }
        let found: wire::SearchBody = parse_json(&call, &response)?;
        let key = &request.csr.public_key().spki_der;
        let valid_from = unix(
            submitted
                .checked_sub(RECOVERY_SKEW + EJBCA_BACKDATE)
                .unwrap_or(UNIX_EPOCH),
        );
        let fits: Vec<(&wire::CertificateBody, Certificate)> = found
            .certificates
            .iter()
            .filter_map(|entry| {
                let leaf = wire::issued_certificates(&call, entry)
                    .ok()?
                    .into_iter()
                    .next()?;
                let fresh = u64::try_from(leaf.not_before().as_second()).unwrap_or(0) >= valid_from;
                (leaf.public_key().spki_der == *key && fresh).then_some((entry, leaf))
            })
            .collect();
        let chosen = match fits.as_slice() {
            [one] => Some(one),
            [] => None,
            several => {
                let named: Vec<_> = several
                    .iter()
                    .filter(|(_, leaf)| leaf.sans() == request.csr.sans())
                    .collect();
                match named.as_slice() {
                    [one] => Some(*one),
                    _ => {
                        tracing::warn!(call = %call, candidates = several.len(), "several certificates fit the lost enrollment; it cannot be told which");
                        return Ok(Recovery::Unknown);
                    }
                }
            }
        };
        if let Some((entry, _)) = chosen {
            tracing::info!(
                requester = %request.requester,
                username = %username,
                "EJBCA issued the certificate whose answer was lost; using it"
            );
            let known = self.cached_chain();
            let bundle = self
                .bundle_of(&call, response.status, entry, &request.csr, known, true)
                .await?;
            return Ok(Recovery::Found(Outcome::Issued(bundle)));
        }
        if found.more_results {
            // Not among the first results: it may be among the others.
            return Ok(Recovery::Unknown);
        }
        // The submission may still be reaching EJBCA until its call would have timed out.
        let settled = submitted + self.timeout + RECOVERY_SETTLE;
        match settled.duration_since(SystemTime::now()) {
            Ok(wait) if !wait.is_zero() => Ok(Recovery::NotYet { retry_after: wait }),
            _ => Ok(Recovery::SubmitAgain),
        }
    }

    async fn poll(&self, pending_id: &str, request: &SignRequest) -> Result<Outcome, Error> {
        let (request_id, password) = self.sealer.open(pending_id, &request.idempotency_key)?;
        // The chain is read before finalizing, never after: EJBCA finalizes an enrollment
        // once, and no call may follow a finalize that succeeded, whose certificate would
        // be lost if that call failed.
        let chain = self.ca_chain().await?;
        let body = serde_json::to_vec(&wire::FinalizeBody {
            response_format: wire::RESPONSE_FORMAT,
            password: &password,
        })
        .map_err(|e| Error::misconfigured(format!("cannot encode the finalize call: {e}")))?;
        let id = request_id.to_string();
        let url = self.endpoint(&["v1", "certificate", &id, "finalize"])?;
        let call = describe_call(&Method::POST, &url);
        let response = self.send(Method::POST, url, Some(&body)).await?;
        match response.status {
            StatusCode::OK | StatusCode::CREATED => self
                .issued(&call, &response, &request.csr, Some(chain), false)
                .await
                .map(Outcome::Issued),
            StatusCode::ACCEPTED => Ok(Outcome::Pending(PendingRequest {
                id: pending_id.to_string(),
                retry_after: self.retry_after(&response),
            })),
            status if status.is_success() => Err(signed_but_unreadable(
                status,
                api_error(&call, &response, CallKind::Enrollment),
            )),
            _ => {
                if let Some(message) = refuses_password(&response) {
                    let username = self
                        .username(request)
                        .map(|name| format!(" {name:?}"))
                        .unwrap_or_default();
                    return Err(Error::Rejected {
                        reason: format!(
                            "{call}: EJBCA refused the enrollment password of approval request \
                             {request_id} ({message}). The end entity{username} was enrolled \
                             again since, most likely by another CertificateRequest whose end \
                             entity has the same name, which gave it a new password: end \
                             entities are named by the issuer's endEntityName rule, and cn, \
                             dns or fixed:<name> can give many requests one name \
                             (endEntityName: namespacedName gives each CertificateRequest its \
                             own). This approval cannot be finalized; make the request again"
                        ),
                    });
                }
                Err(api_error(&call, &response, CallKind::Enrollment))
            }
        }
    }

    async fn check(&self) -> Result<Health, Error> {
        let url = self.endpoint(&["v1", "certificate", "status"])?;
        let call = describe_call(&Method::GET, &url);
        let response = self.send(Method::GET, url, None).await?;
        if !response.is_success() {
            return Err(api_error(&call, &response, CallKind::Read));
        }
        let status: wire::StatusBody = parse_json(&call, &response)?;
        if let Some(state) = status.status.as_deref()
            && !state.eq_ignore_ascii_case("ok")
        {
            return Err(Error::Transient {
                message: format!(
                    "{call}: EJBCA reports status {:?}",
                    certwright_backend_http::excerpt(state.as_bytes())
                ),
                source: None,
            });
        }
        // The CA must be visible to these credentials; its chain is kept for finalizing
        // approved enrollments.
        let subject_dn = self.ca_subject_dn().await?;
        let chain = self.download_chain(&subject_dn).await?;
        let chain_len = chain.len();
        self.remember_chain(chain);
        let revision = status
            .revision
            .as_deref()
            .map(|r| certwright_backend_http::excerpt(r.as_bytes()))
            .unwrap_or_else(|| "EJBCA".to_string());
        let version = status
            .version
            .as_deref()
            .map(|v| {
                format!(
                    ", REST API {}",
                    certwright_backend_http::excerpt(v.as_bytes())
                )
            })
            .unwrap_or_default();
        Ok(Health {
            message: format!(
                "{revision} answered{version}; CA {} ({subject_dn}, chain of {chain_len}); \
                 certificate profile {}; end entity profile {}; {}",
                self.ca_name,
                self.certificate_profile,
                self.end_entity_profile,
                self.auth_description()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certwright_pki::Requester;
    use certwright_simulators::{CsrBuilder, KeyKind, TestCa};

    fn bundle() -> Vec<u8> {
        TestCa::root(KeyKind::EcdsaP256, "Trust")
            .cert_pem()
            .as_bytes()
            .to_vec()
    }

    fn oauth() -> OAuthCredentials {
        OAuthCredentials {
            token_url: "https://idp.example/token".into(),
            client_id: "certwright".into(),
            client_secret: "hunter2".into(),
            scopes: vec![],
            audience: None,
        }
    }

    fn config() -> EjbcaConfig {
        EjbcaConfig {
            ca_bundle_pem: Some(bundle()),
            oauth: Some(oauth()),
            ..EjbcaConfig::new(
                "https://ejbca.example/ejbca/ejbca-rest-api",
                "IssuingCA",
                "ENDUSER",
                "k8s-workloads",
            )
        }
    }

    fn request(cn: Option<&str>, dns: &[&str]) -> SignRequest {
        let mut builder = CsrBuilder::new(KeyKind::EcdsaP256);
        if let Some(cn) = cn {
            builder = builder.common_name(cn);
        }
        for name in dns {
            builder = builder.dns(name);
        }
        let csr = Csr::parse(builder.build().csr_pem.as_bytes()).expect("csr");
        let mut request = SignRequest::new(csr, "uid-1");
        request.requester = Requester {
            namespace: "team-a".into(),
            name: "web-1".into(),
        };
        request
    }

    #[test]
    fn end_entities_are_named_by_the_rule() {
        let named = |naming: EndEntityNaming, request: &SignRequest| {
            EjbcaBackend::new(EjbcaConfig {
                end_entity_naming: naming,
                ..config()
            })
            .expect("valid")
            .username(request)
        };
        let full = request(
            Some("www.example.test"),
            &["a.example.test", "b.example.test"],
        );
        assert_eq!(
            named(EndEntityNaming::CommonName, &full).expect("cn"),
            "www.example.test"
        );
        assert_eq!(
            named(EndEntityNaming::FirstDnsName, &full).expect("dns"),
            "a.example.test"
        );
        assert_eq!(
            named(EndEntityNaming::NamespacedName, &full).expect("nn"),
            "team-a/web-1"
        );
        assert_eq!(
            named(EndEntityNaming::Fixed("k8s-cluster-1".into()), &full).expect("fixed"),
            "k8s-cluster-1"
        );
        let bare = request(None, &[]);
        for naming in [EndEntityNaming::CommonName, EndEntityNaming::FirstDnsName] {
            let err = named(naming, &bare).expect_err("no name");
            assert_eq!(err.metric_label(), "rejected", "{err}");
        }
        let mut anonymous = request(Some("x"), &[]);
        anonymous.requester = Requester::default();
        assert!(named(EndEntityNaming::NamespacedName, &anonymous).is_err());
        let long = request(Some(&"a".repeat(60)), &[]);
        assert!(named(EndEntityNaming::CommonName, &long).is_ok());
    }

    #[test]
    fn the_enrollment_body_has_ejbcas_field_names() {
        let backend = EjbcaBackend::new(EjbcaConfig {
            send_end_time: true,
            account_binding_id: Some("acct-7".into()),
            ..config()
        })
        .expect("valid");
        let mut request = request(Some("www.example.test"), &["www.example.test"]);
        request.duration = Some(Duration::from_secs(86_400));
        let end_time = backend.end_time(&request).expect("end time");
        let body = serde_json::to_value(wire::EnrollBody {
            certificate_request: request.csr.to_pem(),
            certificate_profile_name: "ENDUSER",
            end_entity_profile_name: "k8s-workloads",
            certificate_authority_name: "IssuingCA",
            username: "www.example.test",
            password: "pw",
            include_chain: true,
            response_format: wire::RESPONSE_FORMAT,
            account_binding_id: backend.account_binding_id.as_deref(),
            end_time,
        })
        .expect("json");
        let mut keys: Vec<&str> = body
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "account_binding_id",
                "certificate_authority_name",
                "certificate_profile_name",
                "certificate_request",
                "end_entity_profile_name",
                "end_time",
                "include_chain",
                "password",
                "response_format",
                "username"
            ]
        );
        assert_eq!(body["include_chain"], true);
        assert_eq!(body["response_format"], "DER");
        let end = body["end_time"].as_str().expect("end_time");
        assert!(end.ends_with("+00:00") && end.len() == 25, "{end}");

        let quiet = EjbcaBackend::new(config()).expect("valid");
        assert_eq!(quiet.end_time(&request).expect("none"), None);
        request.duration = Some(Duration::from_secs(200 * 366 * 86_400));
        assert!(backend.end_time(&request).is_err());
    }

    #[test]
    fn config_is_checked() {
        let misconfigured = |config: EjbcaConfig| {
            let err = EjbcaBackend::new(config).expect_err("misconfigured");
            assert_eq!(err.metric_label(), "misconfigured", "{err}");
            err.to_string()
        };
        assert!(
            misconfigured(EjbcaConfig {
                oauth: None,
                ..config()
            })
            .contains("no credentials")
        );
        misconfigured(EjbcaConfig {
            url: "http://ejbca.example".into(),
            ..config()
        });
        misconfigured(EjbcaConfig {
            certificate_profile_name: " ".into(),
            ..config()
        });
        misconfigured(EjbcaConfig {
            end_entity_naming: EndEntityNaming::Fixed(String::new()),
            ..config()
        });
        let backend = EjbcaBackend::new(config()).expect("valid");
        assert_eq!(backend.kind(), "ejbca");
        assert!(!format!("{backend:?}").contains("hunter2"));
        assert_eq!(
            backend
                .endpoint(&[
                    "v1",
                    "ca",
                    "CN=Issuing CA,O=Corp",
                    "certificate",
                    "download"
                ])
                .expect("a URL")
                .as_str(),
            "https://ejbca.example/ejbca/ejbca-rest-api/v1/ca/CN%3DIssuing%20CA%2CO%3DCorp/certificate/download"
        );
        let dn = "CN=Ops\\+K8s,OU=PKI/Ops,O=Sample\\, Société Générale,C=SE";
        let url = backend
            .endpoint(&["v1", "ca", dn, "certificate", "download"])
            .expect("a URL");
        assert_eq!(
            url.path(),
            "/ejbca/ejbca-rest-api/v1/ca/CN%3DOps%5C%2BK8s%2COU%3DPKI%2FOps%2CO%3DSample%5C%2C\
             %20Soci%C3%A9t%C3%A9%20G%C3%A9n%C3%A9rale%2CC%3DSE/certificate/download"
        );
        // A segment of dots cannot be data in a URL: refused, not resolved.
        for dots in [".", ".."] {
            let err = backend
                .endpoint(&["v1", "certificate", dots, "finalize"])
                .expect_err("refused");
            assert_eq!(err.metric_label(), "invalid_response", "{err}");
        }
        // Decoded, the segment is the DN again.
        let segment = url
            .path_segments()
            .and_then(|mut s| s.nth(4))
            .unwrap_or_default();
        let decoded: Vec<u8> = {
            let bytes = segment.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    out.push(u8::from_str_radix(&segment[i + 1..i + 3], 16).unwrap_or(0));
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            out
        };
        assert_eq!(String::from_utf8_lossy(&decoded), dn);
    }

    #[tokio::test]
    async fn a_signed_certificate_is_kept_when_no_chain_fits() {
        use base64::Engine as _;
        // Nothing listens there: a call would fail, and is not made after a finalize.
        let backend = EjbcaBackend::new(EjbcaConfig {
            url: certwright_simulators::tls::refused_url(),
            timeout: Duration::from_secs(2),
            ..config()
        })
        .expect("valid");
        let ca = TestCa::root(KeyKind::EcdsaP256, "Issuing");
        let generated = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("www.example.test")
            .build();
        let csr = Csr::parse(generated.csr_pem.as_bytes()).expect("csr");
        let leaf_pem = ca.sign_csr(&generated.csr_pem).expect("signed");
        let leaf = parse_pem_bundle(leaf_pem.as_bytes())
            .expect("pem")
            .remove(0);
        let unrelated = TestCa::root(KeyKind::EcdsaP256, "Renewed");
        let unrelated = parse_pem_bundle(unrelated.cert_pem().as_bytes()).expect("pem");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let answer = HttpResponse {
            status: StatusCode::CREATED,
            headers: certwright_backend_http::HeaderMap::new(),
            body: serde_json::to_vec(&serde_json::json!({
                "certificate": b64(leaf.der()),
                "response_format": "DER",
                "certificate_chain": [b64(unrelated[0].der()), "not a certificate"],
            }))
            .expect("json"),
        };
        let call = "POST https://ejbca.example/v1/certificate/1001/finalize";
        for may_fetch in [false, true] {
            let bundle = backend
                .issued(call, &answer, &csr, Some(unrelated.clone()), may_fetch)
                .await
                .expect("the certificate, without a chain");
            assert_eq!(bundle.chain, vec![leaf.clone()]);
            assert!(bundle.ca.is_none());
        }
        // With the CA's chain known: leaf and root.
        let root = parse_pem_bundle(ca.cert_pem().as_bytes()).expect("pem");
        let bundle = backend
            .issued(call, &answer, &csr, Some(root.clone()), false)
            .await
            .expect("issued");
        assert_eq!(bundle.ca.as_ref(), root.first());
    }

    #[tokio::test]
    async fn unusable_pending_ids_are_rejected_without_a_call() {
        // Nothing listens there: a call would be Transient, never Rejected.
        let backend = EjbcaBackend::new(EjbcaConfig {
            url: certwright_simulators::tls::refused_url(),
            timeout: Duration::from_secs(2),
            ..config()
        })
        .expect("valid");
        let request = request(Some("www.example.test"), &[]);
        for id in ["", "1001", "1001.AAAA", "x.y", "req-1"] {
            match backend.poll(id, &request).await {
                Err(Error::Rejected { .. }) => {}
                other => panic!("{id:?}: expected Rejected, got {other:?}"),
            }
        }
        assert_eq!(approval_request_id("1001.abc"), Some(1001));
        assert_eq!(approval_request_id("req-1"), None);
    }
}
