//! Microsoft AD CS web enrollment (certsrv) as a [`Backend`].
//!
//! Submits CSRs to `certfnsh.asp`, fetches certificates from `certnew.cer` and the CA
//! chain from `certnew.p7b`, and reads certsrv's HTML answers by the markers existing
//! clients rely on (`docs/backends/adcs.md`). Authenticates with NTLMv2 or Kerberos
//! (SPNEGO, both with channel binding for Extended Protection), HTTP Basic or a TLS client
//! certificate, each call on its own keep-alive connection.
//!
//! One file because it holds the backend's calls and the one mapping of certsrv's pages to outcomes
//! (`page_outcome`), which the submission, the first fetch and every poll share;
//! connections and authentication, pages, PKCS#7 and Kerberos are submodules.
#![deny(missing_docs)]

mod conn;
mod kerberos;
mod ntlm;
mod pages;
mod pkcs7;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hyper::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use certwright_x509::{Certificate, Csr};

use certwright_backend_http::{ClientIdentity, excerpt, redacted_url};
use certwright_pki::{
    Backend, DEFAULT_TIMEOUT, Error, Health, IssuedBundle, Outcome, PendingRequest, SignRequest,
};
use conn::{ConnAuth, Response, Session, Transport};
use pages::{Answer, Verdict};

/// How often a request pending CA-manager approval is polled, when the issuer names no
/// `pollInterval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// When to come back for a certificate certsrv issued (its request id is known) but that
/// could not be fetched: the request is reported pending under its id, never resubmitted.
pub const FETCH_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Largest answer read from certsrv: 1 MiB.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The secret of a Kerberos principal.
#[derive(Clone)]
#[non_exhaustive]
pub enum KerberosSecret {
    /// The password; the key is derived with the salt the KDC names.
    Password(String),
    /// An MIT keytab (binary); its aes256-cts-hmac-sha1-96 key for the principal is used.
    Keytab(Vec<u8>),
}

/// Kerberos credentials: a principal of `realm`, the KDC to ask, and its secret.
#[derive(Clone)]
pub struct KerberosCredentials {
    /// The account name (`svc-certwright`), without realm.
    pub username: String,
    /// The realm (`CORP.EXAMPLE`); upper-cased.
    pub realm: String,
    /// The KDC, `host:port` (port 88 when omitted), reached over TCP.
    pub kdc: String,
    /// The password or keytab.
    pub secret: KerberosSecret,
}

/// How the backend authenticates to certsrv.
#[derive(Clone)]
#[non_exhaustive]
pub enum AdcsAuth {
    /// NTLMv2 with channel binding. `username` may be `DOMAIN\user` or a UPN.
    Ntlm {
        /// The account.
        username: String,
        /// Its password.
        password: String,
        /// The NetBIOS domain, when not part of `username`.
        domain: Option<String>,
    },
    /// HTTP Basic.
    Basic {
        /// The account (`DOMAIN\user` or a UPN).
        username: String,
        /// Its password.
        password: String,
    },
    /// A TLS client certificate mapped to an account by IIS.
    ClientCertificate(ClientIdentity),
    /// Kerberos through SPNEGO (`Negotiate`), with a ticket for `HTTP/<url host>`.
    Kerberos(KerberosCredentials),
}

impl fmt::Debug for AdcsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdcsAuth::Ntlm {
                username, domain, ..
            } => f
                .debug_struct("Ntlm")
                .field("username", username)
                .field("domain", domain)
                .field("password", &"<redacted>")
                .finish(),
            AdcsAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            AdcsAuth::ClientCertificate(identity) => {
                f.debug_tuple("ClientCertificate").field(identity).finish()
            }
            AdcsAuth::Kerberos(k) => f
                .debug_struct("Kerberos")
                .field("username", &k.username)
                .field("realm", &k.realm)
                .field("kdc", &k.kdc)
                .field(
                    "secret",
                    &match k.secret {
                        KerberosSecret::Password(_) => "<redacted password>",
                        KerberosSecret::Keytab(_) => "<redacted keytab>",
                    },
                )
                .finish(),
        }
    }
}

/// Configuration of an [`AdcsBackend`].
#[derive(Clone, Debug)]
pub struct AdcsConfig {
    /// The certsrv URL, https: `https://adcs.corp.example/certsrv`.
    pub url: String,
    /// Credentials.
    pub auth: AdcsAuth,
    /// PEM certificates trusted for certsrv's TLS endpoint; the system roots when `None`.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// The certificate template's name, unless the request names one.
    pub template: String,
    /// Delay before polling a pending request.
    pub poll_interval: Duration,
    /// Send the requested duration as the `ValidityPeriod` and `ValidityPeriodUnits`
    /// request attributes (honoured by a CA with `EDITF_ATTRIBUTEENDDATE`).
    pub send_validity_period: bool,
    /// The lifetime sent with `send_validity_period` when the request names none.
    /// Default: [`certwright_pki::DEFAULT_DURATION`].
    pub default_duration: Duration,
    /// Where certsrv and the KDC may be (issuers a tenant writes); anywhere when `None`.
    pub egress: Option<Arc<certwright_pki::egress::EgressPolicy>>,
    /// Timeout of each step (connect, each request with its answer).
    pub timeout: Duration,
    /// Largest answer accepted.
    pub max_response_bytes: usize,
}

impl AdcsConfig {
    /// A configuration with the default poll interval, timeout and size cap.
    pub fn new(url: impl Into<String>, template: impl Into<String>, auth: AdcsAuth) -> Self {
        AdcsConfig {
            url: url.into(),
            auth,
            ca_bundle_pem: None,
            template: template.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            send_validity_period: false,
            default_duration: certwright_pki::DEFAULT_DURATION,
            egress: None,
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: MAX_RESPONSE_BYTES,
        }
    }
}

/// AD CS web enrollment.
pub struct AdcsBackend {
    transport: Transport,
    template: String,
    poll_interval: Duration,
    send_validity_period: bool,
    default_duration: Duration,
    auth_name: &'static str,
    /// The CA chain from `certnew.p7b`, fetched once.
    chain: Mutex<Option<Arc<Vec<Certificate>>>>,
}

impl fmt::Debug for AdcsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdcsBackend")
            .field("url", &redacted_url(&self.transport.base))
            .field("auth", &self.auth_name)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl AdcsBackend {
    /// Checks the configuration and prepares TLS.
    ///
    /// # Errors
    /// [`Error::Misconfigured`] for a URL that is not https, an empty template, malformed
    /// credentials (a keytab without the principal's aes256 key), an unusable caBundle or
    /// client certificate.
    pub fn new(config: AdcsConfig) -> Result<AdcsBackend, Error> {
        let base = certwright_backend_http::parse_https_url("url", &config.url)?;
        let template = config.template.trim().to_string();
        if template.is_empty() {
            return Err(Error::misconfigured("templateName is empty"));
        }
        check_template(&template)
            .map_err(|why| Error::misconfigured(format!("templateName {why}")))?;
        let (auth, identity, auth_name) = match config.auth {
            AdcsAuth::Kerberos(k) => (
                ConnAuth::Kerberos(Arc::new(kerberos::Client::new(kerberos_credentials(
                    k,
                    config.egress.clone(),
                )?))),
                None,
                "kerberos",
            ),
            AdcsAuth::Ntlm {
                username,
                password,
                domain,
            } => {
                check_username(&username)?;
                let credentials = ntlm::Credentials::new(
                    username.trim(),
                    &password,
                    domain.as_deref().map(str::trim).filter(|d| !d.is_empty()),
                );
                (ConnAuth::Ntlm(Arc::new(credentials)), None, "ntlm")
            }
            AdcsAuth::Basic { username, password } => {
                check_username(&username)?;
                if username.contains(':') {
                    return Err(Error::misconfigured(
                        "the username (Secret key `username`) must not hold ':' for Basic \
                         authentication",
                    ));
                }
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{password}", username.trim()));
                let mut value = hyper::header::HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| Error::misconfigured("the Basic credentials are unusable"))?;
                value.set_sensitive(true);
                (ConnAuth::Basic(value), None, "basic")
            }
            AdcsAuth::ClientCertificate(identity) => {
                (ConnAuth::None, Some(identity), "clientCertificate")
            }
        };
        let (tls, trust) = tls_config(config.ca_bundle_pem.as_deref(), identity.as_ref())?;
        let has_identity = identity.is_some();
        Ok(AdcsBackend {
            transport: Transport {
                tls,
                base,
                auth,
                timeout: config.timeout,
                connect_timeout: config
                    .timeout
                    .min(certwright_backend_http::DEFAULT_CONNECT_TIMEOUT),
                max_response_bytes: config.max_response_bytes,
                trust,
                has_identity,
                egress: config.egress,
            },
            template,
            poll_interval: config.poll_interval.max(Duration::from_secs(1)),
            send_validity_period: config.send_validity_period,
            default_duration: config.default_duration,
            auth_name,
            chain: Mutex::new(None),
        })
    }

    /// The request's template override, checked, or the issuer's.
    ///
    /// # Errors
    /// [`Error::Rejected`] for an override that cannot go into `CertAttrib`.
    fn template_for<'a>(&'a self, request: &'a SignRequest) -> Result<&'a str, Error> {
        match request
            .template
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(template) => {
                check_template(template).map_err(|why| Error::Rejected {
                    reason: format!(
                        "the requested certificate template {:?} {why}",
                        template.chars().take(64).collect::<String>()
                    ),
                })?;
                Ok(template)
            }
            None => Ok(&self.template),
        }
    }

    fn url_of(&self, path: &str) -> String {
        let shown = redacted_url(&self.transport.base);
        let file = path.split('?').next().unwrap_or(path);
        format!("{}/{file}", shown.trim_end_matches('/'))
    }

    /// Turns certsrv's answer to the submission into an outcome. Once certsrv may hold
    /// the request, nothing here is retryable (a retry is a second request): the only
    /// network call left is fetching the issued certificate, and when that fails the
    /// request is reported pending under its id. `chain` was fetched before submitting.
    async fn submitted(
        &self,
        session: &mut Session<'_>,
        call: &str,
        response: Response,
        request: &SignRequest,
        template: &str,
        chain: &[Certificate],
    ) -> Result<Outcome, Error> {
        check_submission_status(call, &response)?;
        let answer = pages::read_answer(response.content_type.as_deref(), &response.body);
        match page_outcome(answer, template, None) {
            Page::Certificate(body) => {
                let leaf = read_certificate(call, &body, &request.csr)
                    .map_err(|_| maybe_submitted(call, &response, "a readable certificate"))?;
                check_key(&leaf, &request.csr)?;
                bundle_with(leaf, chain)
                    .map(Outcome::Issued)
                    .ok_or_else(|| Error::Rejected {
                        reason: format!(
                            "{call}: certsrv issued a certificate that does not chain to the CA \
                             chain it serves (did the CA renew its certificate?); it was not \
                             submitted again"
                        ),
                    })
            }
            Page::Fetch(id) => {
                self.fetch_submitted(session, id, request, template, chain)
                    .await
            }
            Page::Pending(id) => Ok(self.pending(id)),
            Page::Denied(e) | Page::Failed(e) => Err(e),
            Page::Unreadable(said) => Err(match said {
                Some(said) => Error::Rejected {
                    reason: format!(
                        "{call}: {said} (an error certsrv may not be asked again about, as the \
                         request may have reached the CA)"
                    ),
                },
                None => maybe_submitted(call, &response, "a certsrv answer"),
            }),
        }
    }

    /// The first fetch of `certnew.cer` for a request certsrv took under `id`: its page
    /// is read as a poll's is (a denial is a denial), and anything that cannot be read
    /// leaves the request pending under its id, to be fetched again, never resubmitted.
    async fn fetch_submitted(
        &self,
        session: &mut Session<'_>,
        id: u64,
        request: &SignRequest,
        template: &str,
        chain: &[Certificate],
    ) -> Result<Outcome, Error> {
        let path = format!("certnew.cer?ReqID={id}&ENC=b64");
        let call = format!("GET {}", self.url_of(&path));
        let page = match session.send(Method::GET, &path, None).await {
            Ok(answer) => check_status(&call, &answer).map(|()| {
                page_outcome(
                    pages::read_answer(answer.content_type.as_deref(), &answer.body),
                    template,
                    Some(id),
                )
            }),
            Err(e) => Err(e),
        };
        let leaf = match page {
            Ok(Page::Certificate(body)) => read_certificate(&call, &body, &request.csr),
            Ok(Page::Pending(id)) => return Ok(self.pending(id)),
            // A denial is final, whatever its HRESULT says of the cause: the request was
            // not issued. A refusal (unknown id) is final too. Anything else (the CA
            // service down, access to the page refused) is no reason to submit again:
            // the request is fetched later.
            Ok(Page::Denied(e)) if !e.is_retryable() => return Err(e),
            Ok(Page::Failed(e @ Error::Rejected { .. })) => return Err(e),
            Ok(Page::Denied(e) | Page::Failed(e)) => Err(e),
            Ok(Page::Fetch(_) | Page::Unreadable(_)) => Err(Error::InvalidResponse {
                message: format!("{call}: a page that is not the issued certificate"),
            }),
            Err(e) => Err(e),
        };
        let leaf = match leaf {
            Ok(leaf) => leaf,
            Err(e) => {
                tracing::warn!(
                    request_id = id,
                    error = %e,
                    "AD CS issued the request but its certificate could not be fetched; \
                     polling for it"
                );
                return Ok(self.fetch_later(id));
            }
        };
        check_key(&leaf, &request.csr)?;
        // A chain that does not fit (the CA renewed since it was cached) is refreshed by
        // polling, which may use the network.
        Ok(bundle_with(leaf, chain)
            .map(Outcome::Issued)
            .unwrap_or_else(|| self.fetch_later(id)))
    }

    /// `Pending` under a request id held for CA-manager approval.
    fn pending(&self, id: u64) -> Outcome {
        Outcome::Pending(PendingRequest {
            id: id.to_string(),
            retry_after: self.poll_interval,
        })
    }

    /// `Pending` under a request id certsrv issued, to fetch the certificate soon.
    fn fetch_later(&self, id: u64) -> Outcome {
        Outcome::Pending(PendingRequest {
            id: id.to_string(),
            retry_after: FETCH_RETRY_AFTER.min(self.poll_interval),
        })
    }

    /// `certnew.cer` for an issued request id.
    async fn fetch_issued(
        &self,
        session: &mut Session<'_>,
        id: u64,
        template: &str,
        csr: &Csr,
    ) -> Result<Certificate, Error> {
        let path = format!("certnew.cer?ReqID={id}&ENC=b64");
        let call = format!("GET {}", self.url_of(&path));
        let answer = session.send(Method::GET, &path, None).await?;
        check_status(&call, &answer)?;
        let read = pages::read_answer(answer.content_type.as_deref(), &answer.body);
        match page_outcome(read, template, Some(id)) {
            Page::Certificate(body) => read_certificate(&call, &body, csr),
            Page::Denied(e) | Page::Failed(e) => Err(e),
            _ => Err(unknown_page(&call, &answer, "the issued certificate")),
        }
    }

    /// Turns certsrv's answer to a poll of request `id` into an outcome.
    async fn polled(
        &self,
        session: &mut Session<'_>,
        call: &str,
        response: Response,
        request: &SignRequest,
        template: &str,
        id: u64,
    ) -> Result<Outcome, Error> {
        check_status(call, &response)?;
        let answer = pages::read_answer(response.content_type.as_deref(), &response.body);
        match page_outcome(answer, template, Some(id)) {
            Page::Certificate(body) => {
                let leaf = read_certificate(call, &body, &request.csr)?;
                self.issued(session, leaf, &request.csr).await
            }
            Page::Fetch(issued) => {
                let leaf = self
                    .fetch_issued(session, issued, template, &request.csr)
                    .await?;
                self.issued(session, leaf, &request.csr).await
            }
            Page::Pending(id) => Ok(self.pending(id)),
            Page::Denied(e) | Page::Failed(e) => Err(e),
            Page::Unreadable(Some(said)) => Err(Error::InvalidResponse {
                message: format!("{call}: {said}"),
            }),
            Page::Unreadable(None) => Err(unknown_page(call, &response, "a certsrv answer")),
        }
    }

    /// The issued bundle: the leaf, checked against the CSR, with the CA chain.
    async fn issued(
        &self,
        session: &mut Session<'_>,
        leaf: Certificate,
        csr: &Csr,
    ) -> Result<Outcome, Error> {
        check_key(&leaf, csr)?;
        let chain = self.ca_chain(session, false).await?;
        match bundle_with(leaf.clone(), &chain) {
            Some(bundle) => Ok(Outcome::Issued(bundle)),
            None => {
                // The CA may have renewed its certificate since the chain was cached.
                let chain = self.ca_chain(session, true).await?;
                let mut certs = vec![leaf];
                certs.extend(chain.iter().cloned());
                Ok(Outcome::Issued(IssuedBundle::from_certificates(certs)?))
            }
        }
    }

    /// The CA chain (root and intermediates), cached unless `refresh`.
    async fn ca_chain(
        &self,
        session: &mut Session<'_>,
        refresh: bool,
    ) -> Result<Arc<Vec<Certificate>>, Error> {
        if !refresh
            && let Some(chain) = self.chain.lock().unwrap_or_else(|p| p.into_inner()).clone()
        {
            return Ok(chain);
        }
        let renewal = self.renewals(session).await?;
        let path = format!("certnew.p7b?ReqID=CACert&ENC=b64&Renewal={renewal}");
        let call = format!("GET {}", self.url_of(&path));
        let response = session.send(Method::GET, &path, None).await?;
        check_status(&call, &response)?;
        // Read whatever the body holds: a certsrv may answer PKCS#7 or plain
        // certificates, under any content type. Only a page is not a chain.
        if looks_like_html(&response.body) {
            return Err(unknown_page(&call, &response, "the CA chain (PKCS#7)"));
        }
        let certs = pkcs7::certificates_in(&response.body)
            .map_err(|why| Error::InvalidResponse {
                message: format!("{call}: the CA chain is unreadable: {why}"),
            })?
            .iter()
            .map(|d| Certificate::from_der(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidResponse {
                message: format!("{call}: a CA certificate in the chain is unusable: {e}"),
            })?;
        if certs.is_empty() {
            return Err(Error::InvalidResponse {
                message: format!("{call}: the CA chain holds no certificate"),
            });
        }
        let chain = Arc::new(certs);
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = Some(chain.clone());
        Ok(chain)
    }

    /// `certcarc.asp`'s `nRenewals`: the index of the current CA certificate.
    async fn renewals(&self, session: &mut Session<'_>) -> Result<u32, Error> {
        let call = format!("GET {}", self.url_of("certcarc.asp"));
        let response = session.send(Method::GET, "certcarc.asp", None).await?;
        check_status(&call, &response)?;
        pages::renewals(&response.body)
            .ok_or_else(|| unknown_page(&call, &response, "certcarc.asp's nRenewals"))
    }
}

#[async_trait::async_trait]
impl Backend for AdcsBackend {
    fn kind(&self) -> &'static str {
        "adcs"
    }

    async fn sign(&self, request: &SignRequest) -> Result<Outcome, Error> {
        let template = self.template_for(request)?;
        let validity = self
            .send_validity_period
            .then(|| request.duration.unwrap_or(self.default_duration));
        let form = submit_form(&request.csr, template, validity);
        let call = format!("POST {}", self.url_of("certfnsh.asp"));
        let mut session = self.transport.open().await?;
        // Everything that may fail and be retried happens before the submission.
        let chain = self.ca_chain(&mut session, false).await?;
        tracing::debug!(call = %call, requester = %request.requester, template, "submitting to AD CS");
        let response = match session
            .send(Method::POST, "certfnsh.asp", Some(&form))
            .await
        {
            Ok(response) => response,
            // A timeout or a reset once the form was sent: certsrv may hold the request.
            Err(e) if e.is_retryable() => return Err(answer_lost(&call, &e)),
            Err(e) => return Err(e),
        };
        self.submitted(&mut session, &call, response, request, template, &chain)
            .await
    }

    async fn poll(&self, pending_id: &str, request: &SignRequest) -> Result<Outcome, Error> {
        let id: u64 = pending_id
            .trim()
            .parse()
            .ok()
            .filter(|_| pending_id.len() <= 18)
            .ok_or_else(|| Error::Rejected {
                reason: format!(
                    "cannot poll pending id {:?}: AD CS request ids are numbers",
                    excerpt(pending_id.as_bytes())
                ),
            })?;
        let path = format!("certnew.cer?ReqID={id}&ENC=b64");
        let call = format!("GET {}", self.url_of(&path));
        let mut session = self.transport.open().await?;
        let response = session.send(Method::GET, &path, None).await?;
        let template = self.template_for(request).unwrap_or(&self.template);
        self.polled(&mut session, &call, response, request, template, id)
            .await
    }

    async fn check(&self) -> Result<Health, Error> {
        let mut session = self.transport.open().await?;
        let chain = self.ca_chain(&mut session, true).await?;
        let renewal = self.renewals(&mut session).await?;
        let path = format!("certnew.cer?ReqID=CACert&ENC=b64&Renewal={renewal}");
        let call = format!("GET {}", self.url_of(&path));
        let response = session.send(Method::GET, &path, None).await?;
        check_status(&call, &response)?;
        let ca = read_certificates(&call, &response.body)?.swap_remove(0);
        if !chain.iter().any(|c| c.der() == ca.der()) {
            return Err(Error::InvalidResponse {
                message: format!(
                    "{call}: the CA certificate (serial {}) is not in the CA chain certsrv \
                     serves",
                    ca.serial_hex()
                ),
            });
        }
        Ok(Health {
            message: format!(
                "AD CS answered; template {}; CA chain of {}",
                self.template,
                chain.len()
            ),
        })
    }
}

/// The `certfnsh.asp` form, url-encoded: the CSR and the request attributes (the
/// template, and the lifetime when one is sent), one `Name:Value` a line.
fn submit_form(csr: &Csr, template: &str, validity: Option<Duration>) -> String {
    let mut attributes = format!("CertificateTemplate:{template}");
    if let Some((unit, count)) = validity.and_then(validity_period) {
        attributes.push_str(&format!(
            "\r\nValidityPeriod:{unit}\r\nValidityPeriodUnits:{count}"
        ));
    }
    let fields = [
        ("Mode", "newreq".to_string()),
        ("CertRequest", csr.to_pem()),
        ("CertAttrib", attributes),
        ("FriendlyType", "Saved-Request Certificate".to_string()),
        ("TargetStoreFlags", "0".to_string()),
        ("SaveCert", "yes".to_string()),
    ];
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A lifetime as certsrv's `ValidityPeriod` unit and `ValidityPeriodUnits` count: the
/// largest of days, hours, minutes and seconds that counts it exactly. `None` below one
/// second.
fn validity_period(duration: Duration) -> Option<(&'static str, u64)> {
    let seconds = duration.as_secs();
    if seconds == 0 {
        return None;
    }
    [
        ("Days", 86_400),
        ("Hours", 3_600),
        ("Minutes", 60),
        ("Seconds", 1),
    ]
    .into_iter()
    .find(|(_, unit)| seconds.is_multiple_of(*unit))
    .map(|(name, unit)| (name, seconds / unit))
}

fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3 / 2);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn check_status(call: &str, response: &Response) -> Result<(), Error> {
    let status = response.status;
    if status.is_success() {
        return Ok(());
    }
    let body = excerpt(&response.body);
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Unauthorized {
            message: format!("{call} answered {status}: {body}"),
        },
        StatusCode::NOT_FOUND => Error::misconfigured(format!(
            "{call} answered 404: is url the certsrv address (https://<host>/certsrv) and the \
             web enrollment role installed?"
        )),
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Error::Transient {
            message: format!("{call} answered {status}: {body}"),
            source: None,
        },
        _ => Error::InvalidResponse {
            message: format!("{call} answered {status}: {body}"),
        },
    })
}

/// A leaf that does not carry the CSR's key: the CA answered for another request. Final:
/// submitting again would only make another certificate.
fn check_key(leaf: &Certificate, csr: &Csr) -> Result<(), Error> {
    if leaf.public_key().spki_der == csr.public_key().spki_der {
        return Ok(());
    }
    Err(Error::Rejected {
        reason: format!(
            "certsrv returned a certificate (serial {}, subject \"{}\") that does not carry \
             the CSR's public key",
            leaf.serial_hex(),
            leaf.subject()
        ),
    })
}

/// The leaf with the CA chain, when they make a chain of more than the leaf.
fn bundle_with(leaf: Certificate, chain: &[Certificate]) -> Option<IssuedBundle> {
    let mut certs = vec![leaf];
    certs.extend(chain.iter().cloned());
    IssuedBundle::from_certificates(certs)
        .ok()
        .filter(|bundle| bundle.chain.len() > 1 || bundle.ca.is_some())
}

/// What a certsrv page means for a request, decided in one place for the answer to a
/// submission, the first fetch after it and every later poll.
#[derive(Debug)]
enum Page {
    /// The certificate itself.
    Certificate(Vec<u8>),
    /// Issued under this id: fetch `certnew.cer`.
    Fetch(u64),
    /// Held for CA-manager approval under this id.
    Pending(u64),
    /// Denied by the CA's policy module or a CA manager: the request was not issued.
    Denied(Error),
    /// An error with an HRESULT whose meaning is known: final, the issuer's, or
    /// transient.
    Failed(Error),
    /// Not a page certsrv answers, or an HRESULT we do not know (what certsrv said).
    Unreadable(Option<String>),
}

/// Reads certsrv's answer about a request, `id` when already known (a fetch or a poll).
fn page_outcome(answer: Answer, template: &str, id: Option<u64>) -> Page {
    match answer {
        Answer::Certificate(body) => Page::Certificate(body),
        Answer::IssuedId(issued) => Page::Fetch(issued),
        Answer::Pending(found) => match found.or(id) {
            Some(id) => Page::Pending(id),
            None => Page::Unreadable(None),
        },
        Answer::Denied { message, code } => Page::Denied(denied(&message, code, template)),
        Answer::Failed { message, code } => match pages::explain(code, &message, template) {
            Verdict::Unknown(said) => Page::Unreadable(Some(said)),
            Verdict::Misconfigured(m) => Page::Failed(Error::misconfigured(m)),
            Verdict::Rejected(m) => Page::Failed(Error::Rejected { reason: m }),
            Verdict::Transient(m) => Page::Failed(Error::Transient {
                message: m,
                source: None,
            }),
        },
        Answer::Unknown => Page::Unreadable(None),
    }
}

fn denied(message: &str, code: Option<u32>, template: &str) -> Error {
    match code.map(|c| pages::explain(c, message, template)) {
        Some(Verdict::Misconfigured(m)) => Error::misconfigured(m),
        Some(Verdict::Transient(m)) => Error::Transient {
            message: m,
            source: None,
        },
        _ => Error::Rejected {
            reason: format!("AD CS denied the request: {message}"),
        },
    }
}

/// The status of the answer to the submission. A status that turns the request away
/// before certsrv reads it (401 and 403: authentication; 404: a wrong url; 429 and 503:
/// refused by IIS or a proxy in front) is read as [`check_status`] reads any; any other
/// failure (500, a gateway's 502 or 504) may come after certsrv took the request, so
/// it is final rather than retried.
fn check_submission_status(call: &str, response: &Response) -> Result<(), Error> {
    let turned_away = matches!(response.status.as_u16(), 401 | 403 | 404 | 429 | 503);
    match check_status(call, response) {
        Err(e) if !turned_away => {
            tracing::warn!(call = %call, error = %e, "the submission failed after it was sent");
            Err(maybe_submitted(call, response, "a certsrv answer"))
        }
        checked => checked,
    }
}

/// The answer to the submission never came (a timeout, a reset) after the form was
/// sent: certsrv may hold the request, so it is refused for good rather than sent again.
fn answer_lost(call: &str, cause: &Error) -> Error {
    Error::Rejected {
        reason: format!(
            "{call}: the answer to the submission was lost ({cause}); the request may have \
             been submitted to the CA, so it is not sent again (look for it on the CA)"
        ),
    }
}

/// An answer to the submission that cannot be read: certsrv may hold the request, so
/// it is refused for good rather than submitted again.
fn maybe_submitted(call: &str, response: &Response, expected: &str) -> Error {
    Error::Rejected {
        reason: format!(
            "{call} answered {} with a page that is not {expected}; the request may have been \
             submitted to the CA, so it is not sent again (look for it on the CA): {}",
            response.status,
            excerpt(&response.body)
        ),
    }
}

/// Whether a template name can go into `CertAttrib` (`CertificateTemplate:<name>`, one
/// attribute a line): no control characters, no `:`, `&`, `=` or `\`.
pub(crate) fn check_template(name: &str) -> Result<(), &'static str> {
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, ':' | '&' | '=' | '\\'))
    {
        return Err("must not hold control characters or any of ':', '&', '=', '\\'");
    }
    Ok(())
}

fn unknown_page(call: &str, response: &Response, expected: &str) -> Error {
    Error::InvalidResponse {
        message: format!(
            "{call} answered {} ({}) with a page that is not {expected} (a login page or proxy \
             in front of certsrv?): {}",
            response.status,
            response
                .content_type
                .as_deref()
                .unwrap_or("no content type"),
            excerpt(&response.body)
        ),
    }
}

/// Whether an answer is an HTML page rather than a certificate or chain.
fn looks_like_html(body: &[u8]) -> bool {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    body[start..].first() == Some(&b'<')
}

/// The certificates in an answer (PEM under any label, DER or base64, or PKCS#7), at
/// least one.
fn read_certificates(call: &str, body: &[u8]) -> Result<Vec<Certificate>, Error> {
    let certs: Vec<Certificate> = pkcs7::certificates_in(body)
        .unwrap_or_default()
        .iter()
        .filter_map(|der| Certificate::from_der(der).ok())
        .collect();
    if certs.is_empty() {
        return Err(Error::InvalidResponse {
            message: format!(
                "{call}: certsrv sent a certificate that cannot be read ({} bytes)",
                body.len()
            ),
        });
    }
    Ok(certs)
}

/// The issued certificate in an answer that may carry the chain too (PKCS#7): the one
/// with the CSR's key, else the first (which [`check_key`] then refuses).
fn read_certificate(call: &str, body: &[u8], csr: &Csr) -> Result<Certificate, Error> {
    let mut certs = read_certificates(call, body)?;
    let wanted = &csr.public_key().spki_der;
    let at = certs
        .iter()
        .position(|c| &c.public_key().spki_der == wanted)
        .unwrap_or(0);
    Ok(certs.swap_remove(at))
}

/// Checks Kerberos credentials and reads the key out of a keytab.
fn kerberos_credentials(
    k: KerberosCredentials,
    egress: Option<Arc<certwright_pki::egress::EgressPolicy>>,
) -> Result<kerberos::Credentials, Error> {
    check_username(&k.username)?;
    let username = k.username.trim().to_string();
    if username.contains(['@', '\\', '/']) {
        return Err(Error::misconfigured(
            "the username (Secret key `username`) must be the bare account name for Kerberos \
             (no DOMAIN\\ prefix, @realm or /instance); the realm goes in `realm`",
        ));
    }
    let realm = k.realm.trim().to_ascii_uppercase();
    if realm.is_empty()
        || !realm.is_ascii()
        || realm.chars().any(|c| c.is_ascii_control() || c == ' ')
    {
        return Err(Error::misconfigured(
            "the realm (Secret key `realm`) is empty or not an ASCII realm name",
        ));
    }
    let kdc = k.kdc.trim();
    if kdc.is_empty() || kdc.contains(['/', ' ']) {
        return Err(Error::misconfigured(
            "the KDC (Secret key `kdc`) must be host or host:port",
        ));
    }
    let has_port = kdc.rsplit_once(':').is_some_and(|(host, port)| {
        port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
    });
    let kdc = if has_port {
        kdc.to_string()
    } else if kdc.contains(':') && !kdc.starts_with('[') {
        format!("[{kdc}]:88")
    } else {
        format!("{kdc}:88")
    };
    let secret = match k.secret {
        KerberosSecret::Password(p) if p.is_empty() => {
            return Err(Error::misconfigured(
                "the password (Secret key `password`) is empty",
            ));
        }
        KerberosSecret::Password(p) => kerberos::Secret::Password(p),
        KerberosSecret::Keytab(bytes) => kerberos::Secret::Key(
            kerberos::keytab_key(&bytes, &username, &realm).map_err(|why| {
                Error::misconfigured(format!(
                    "the keytab (Secret key `keytab`) is unusable: {why}"
                ))
            })?,
        ),
    };
    Ok(kerberos::Credentials {
        username,
        realm,
        kdc,
        secret,
        egress,
    })
}

fn check_username(username: &str) -> Result<(), Error> {
    let username = username.trim();
    if username.is_empty() || username.chars().any(char::is_control) {
        return Err(Error::misconfigured(
            "the username (Secret key `username`) is empty or holds control characters",
        ));
    }
    Ok(())
}

/// rustls with ring, trusting `ca_bundle` (or the system roots), HTTP/1.1 only.
fn tls_config(
    ca_bundle: Option<&[u8]>,
    identity: Option<&ClientIdentity>,
) -> Result<(Arc<rustls::ClientConfig>, &'static str), Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let trust = match ca_bundle.filter(|b| !b.is_empty()) {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    Error::misconfigured(format!("caBundle holds unreadable PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::misconfigured(format!("caBundle holds an unusable certificate: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(Error::misconfigured("caBundle holds no PEM certificate"));
            }
            "caBundle"
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(Error::misconfigured(
                    "no system trust roots found; set caBundle",
                ));
            }
            "the system roots"
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Misconfigured {
            message: "the TLS provider supports no safe protocol version".to_string(),
            source: Some(Box::new(e)),
        })?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(&identity.cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    Error::misconfigured(format!(
                        "the client certificate (tls.crt) is unreadable: {e}"
                    ))
                })?;
            if chain.is_empty() {
                return Err(Error::misconfigured(
                    "the client certificate (tls.crt) holds no PEM certificate",
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(&identity.key_pem).map_err(|_| {
                Error::misconfigured("the client certificate's key (tls.key) is unreadable")
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Misconfigured {
                    message: format!("the client certificate and key are unusable: {e}"),
                    source: Some(Box::new(e)),
                })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), trust))
}

#[cfg(test)]
mod tests;
