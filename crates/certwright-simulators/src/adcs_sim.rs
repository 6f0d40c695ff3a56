//! An AD CS web enrollment server (certsrv on IIS) over real TLS, for testing the `adcs`
//! backend.
//!
//! [`AdcsSimulator`] answers `certfnsh.asp`, `certnew.cer`, `certnew.p7b` and
//! `certcarc.asp` with the content types and HTML markers real certsrv uses, signs with a
//! local CA (an issuing CA under a root), and authenticates as IIS does: NTLMv2 verified
//! for real against a configured account (NT hash, NTProofStr, MIC), bound to the TCP
//! connection, with Extended Protection checking the client's channel binding against the
//! server certificate; or Kerberos through Negotiate, the AP-REQ checked against the
//! service key of a [`crate::kdc_sim::KdcSimulator`]; or HTTP Basic; or TLS client
//! certificates. How it answers is set with [`Behaviour`]; requests held for approval
//! wait for [`AdcsSimulator::approve`] or [`AdcsSimulator::deny`]. It counts submissions,
//! connections, NTLM handshakes and Kerberos logons.
//!
//! One file because it is one server: certsrv's pages, IIS's NTLM/Negotiate/Basic
//! authentication per connection, and its behaviours share the request state.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use md4::Digest;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use certwright_backend_ca::{LocalCa, LocalCaConfig};
use certwright_pki::{Backend, Outcome, SignRequest};
use certwright_x509::Csr;

use crate::fixtures::{CsrBuilder, KeyKind, TestCa};

type HmacMd5 = Hmac<md5::Md5>;

/// The account the simulator accepts by default (NTLM and Basic).
pub const DEFAULT_USER: &str = "svc-certwright";
/// Its password.
pub const DEFAULT_PASSWORD: &str = "Corr3ct-Horse!";
/// Its NetBIOS domain.
pub const DEFAULT_DOMAIN: &str = "CORP";
/// The template the CA offers by default.
pub const DEFAULT_TEMPLATE: &str = "WebServer";

/// How the simulator answers from now on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behaviour {
    /// Issue at once: the "Certificate Issued" page linking `certnew.cer?ReqID=n&`.
    #[default]
    Issue,
    /// Issue at once and answer the submission with the certificate itself
    /// (`application/pkix-cert`).
    IssueInline,
    /// Hold requests for CA-manager approval ("Certificate Pending").
    Pending,
    /// The policy module denies every request with this message.
    Deny(String),
    /// A certsrv error page with this HRESULT and text on submission.
    ErrorPage(u32, String),
    /// 200 with an HTML page certsrv never serves (a proxy's sign-in page), everywhere.
    Html200,
    /// 200 `application/pkix-cert` cut in the middle, on submission.
    TruncatedCertificate,
    /// The CA chain (`certnew.p7b`) cut in the middle; submissions issue.
    TruncatedChain,
    /// Issue on submission (the "Certificate Issued" page), but answer 503 when the
    /// issued certificate is fetched from `certnew.cer`.
    FetchFails,
    /// Issue on submission a certificate for another key than the CSR's.
    WrongKey,
    /// Answer the submission with the "Certificate Issued" page linking its request id,
    /// and the certificate page for that id with "Certificate Request Denied", as some
    /// certsrv deployments answer. The text is the disposition message: one starting
    /// with "Denied by Policy Module 0x...." is the policy module's, with its HRESULT;
    /// any other is a CA manager's reason (`0x80094014`).
    DenyOnFetch(String),
    /// Answer the submission with this HTML page (200), after counting it.
    SubmitPage(String),
    /// 200 HTML of this many bytes, everywhere.
    Oversized(usize),
    /// 500, everywhere (IIS's error page).
    Fail500,
    /// Accept and never answer, everywhere.
    Hang,
    /// Take the submission (it counts, and the CA holds it), then never answer it: the
    /// answer is lost, as after a reset or a proxy timeout.
    LoseAnswerToSubmission,
    /// 401 on every request, whatever the credentials.
    Unauthorized401Loop,
}

/// How `certnew.p7b` wraps the CA chain. Real certsrv sends PKCS#7 SignedData as PEM;
/// other implementations send other shapes under the same content type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainFormat {
    /// PKCS#7 SignedData, PEM with the `PKCS7` label (certsrv's answer).
    #[default]
    Pkcs7Pem,
    /// PKCS#7 SignedData, PEM under this label (`CERTIFICATE`, `PKCS #7 SIGNED DATA`).
    Pkcs7PemLabel(String),
    /// PKCS#7 SignedData, DER.
    Pkcs7Der,
    /// PKCS#7 SignedData, bare base64.
    Pkcs7Base64,
    /// The CA certificates as PEM `CERTIFICATE` blocks, issuing CA first.
    CertificatesPem,
    /// The issuing CA's certificate alone, bare base64 of its DER.
    CertificateBase64,
}

/// How IIS authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimAuth {
    /// Windows Authentication with the NTLM provider.
    Ntlm {
        /// The account's name.
        username: String,
        /// Its password.
        password: String,
        /// Its NetBIOS domain.
        domain: String,
    },
    /// Basic authentication (`DOMAIN\user` or `user`).
    Basic {
        /// The account's name.
        username: String,
        /// Its password.
        password: String,
    },
    /// Windows Authentication with the Negotiate provider, Kerberos only: the SPNEGO token
    /// must hold an AP-REQ whose ticket decrypts with `service_key` (see
    /// [`crate::kdc_sim::KdcSimulator::service_key`]) for a client of `realm`.
    Negotiate {
        /// The key of `HTTP/<host>`.
        service_key: Vec<u8>,
        /// The principal accepted, `user@REALM`.
        principal: String,
    },
    /// Anonymous (the TLS layer may still require a client certificate).
    None,
}

impl SimAuth {
    /// NTLM for the default account.
    pub fn default_ntlm() -> SimAuth {
        SimAuth::Ntlm {
            username: DEFAULT_USER.into(),
            password: DEFAULT_PASSWORD.into(),
            domain: DEFAULT_DOMAIN.into(),
        }
    }
}

/// How the simulator starts.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// IIS authentication.
    pub auth: SimAuth,
    /// Extended Protection for Authentication: NTLM must carry the channel binding of the
    /// TLS connection.
    pub extended_protection: bool,
    /// Require TLS client certificates issued by this CA (PEM).
    pub client_ca_pem: Option<String>,
    /// Keep a connection authenticated after its first authenticated request (IIS's
    /// default). False: every request must authenticate, as IIS with
    /// `authPersistNonNTLM=false` for Kerberos, Apache mod_auth_gssapi, or a load
    /// balancer spreading one client's requests over servers.
    pub persist_auth: bool,
    /// Close the connection after a 401 to a request that carried no credentials, as
    /// some load balancers do.
    pub close_after_401: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            auth: SimAuth::default_ntlm(),
            extended_protection: true,
            client_ca_pem: None,
            persist_auth: true,
            close_after_401: false,
        }
    }
}

#[derive(Clone, Debug)]
enum Held {
    Waiting(String),
    Approved(String),
    Issued(String),
    Denied(String),
}

#[derive(Debug, Default)]
struct Inner {
    behaviour: Behaviour,
    auth: Option<SimAuth>,
    extended_protection: bool,
    persist_auth: bool,
    close_after_401: bool,
    chain_format: ChainFormat,
    /// EDITF_ATTRIBUTEENDDATE: honour the ValidityPeriod request attributes.
    attribute_end_date: bool,
    last_validity: Option<std::time::Duration>,
    templates: Vec<String>,
    requests: HashMap<u64, Held>,
    next_id: u64,
    submissions: u64,
    connections: u64,
    ntlm_handshakes: u64,
    kerberos_logons: u64,
    auth_failures: Vec<String>,
    last_user_agent: Option<String>,
    last_template: Option<String>,
}

struct Shared {
    ca: LocalCa,
    issuing_pem: String,
    root_pem: String,
    p7b: Vec<u8>,
    /// The issuing CA's and the root's DER, issuing CA first.
    ca_ders: [Vec<u8>; 2],
    /// RFC 5929 tls-server-end-point hash of the server certificate.
    end_point_hash: Vec<u8>,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// certsrv on 127.0.0.1 over TLS. Stops when dropped.
pub struct AdcsSimulator {
    addr: SocketAddr,
    tls_ca_pem: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for AdcsSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdcsSimulator")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl Drop for AdcsSimulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AdcsSimulator {
    /// NTLM for the default account, Extended Protection on, issuing at once.
    ///
    /// # Errors
    /// When the port cannot be bound or TLS cannot be set up.
    pub async fn start() -> io::Result<AdcsSimulator> {
        Self::start_with(SimOptions::default()).await
    }

    /// A simulator with these options.
    ///
    /// # Errors
    /// When the port cannot be bound or TLS cannot be set up.
    pub async fn start_with(options: SimOptions) -> io::Result<AdcsSimulator> {
        let root = TestCa::root(KeyKind::EcdsaP256, "certwright AD CS simulator root");
        let issuing = root.intermediate(KeyKind::EcdsaP256, "CORP-ISSUING-CA");
        let ca = LocalCa::from_pem(
            format!("{}{}", issuing.cert_pem(), root.cert_pem()).as_bytes(),
            issuing.key_pem().as_bytes(),
            LocalCaConfig::default(),
        )
        .map_err(io::Error::other)?;
        let p7b = signed_data(&[&root.cert().cert_der, &issuing.cert().cert_der]);

        // The TLS CA signs with ECDSA-SHA384, so the channel binding hashes with SHA-384.
        let tls_ca = TestCa::root(KeyKind::EcdsaP384, "certwright AD CS simulator TLS CA");
        let server = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("localhost")
            .dns("localhost")
            .ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
            .ext_key_usages([rcgen::ExtendedKeyUsagePurpose::ServerAuth])
            .build();
        let server_pem = tls_ca.sign_csr(&server.csr_pem).map_err(io::Error::other)?;
        let server_der = CertificateDer::from_pem_slice(server_pem.as_bytes())
            .map_err(io::Error::other)?
            .as_ref()
            .to_vec();
        let end_point_hash = sha2_384(&server_der);
        let acceptor = acceptor(
            &server_pem,
            &server.key_pem,
            options.client_ca_pem.as_deref(),
        )?;

        let shared = Arc::new(Shared {
            ca,
            issuing_pem: issuing.cert_pem().to_string(),
            root_pem: root.cert_pem().to_string(),
            p7b,
            ca_ders: [
                issuing.cert().cert_der.to_vec(),
                root.cert().cert_der.to_vec(),
            ],
            end_point_hash,
            inner: Mutex::new(Inner {
                auth: Some(options.auth),
                extended_protection: options.extended_protection,
                persist_auth: options.persist_auth,
                close_after_401: options.close_after_401,
                templates: vec![DEFAULT_TEMPLATE.to_string(), "User".to_string()],
                next_id: 100,
                ..Inner::default()
            }),
        });
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, acceptor, shared.clone()));
        Ok(AdcsSimulator {
            addr,
            tls_ca_pem: tls_ca.cert_pem().to_string(),
            shared,
            task,
        })
    }

    /// The certsrv URL: `https://127.0.0.1:<port>/certsrv`.
    pub fn url(&self) -> String {
        format!("https://{}/certsrv", self.addr)
    }

    /// The caBundle that trusts the simulator's TLS certificate.
    pub fn tls_ca_pem(&self) -> &str {
        &self.tls_ca_pem
    }

    /// The root of the CA that issues certificates.
    pub fn root_pem(&self) -> &str {
        &self.shared.root_pem
    }

    /// The issuing CA's certificate.
    pub fn issuing_ca_pem(&self) -> &str {
        &self.shared.issuing_pem
    }

    /// Changes how the simulator answers from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.lock().behaviour = behaviour;
    }

    /// Changes IIS authentication; open connections keep what they authenticated.
    pub fn set_auth(&self, auth: SimAuth) {
        self.shared.lock().auth = Some(auth);
    }

    /// Whether connections stay authenticated after their first authenticated request.
    pub fn set_persist_auth(&self, on: bool) {
        self.shared.lock().persist_auth = on;
    }

    /// How `certnew.p7b` wraps the CA chain from now on.
    pub fn set_chain_format(&self, format: ChainFormat) {
        self.shared.lock().chain_format = format;
    }

    /// Sets the CA's EDITF_ATTRIBUTEENDDATE flag: honour the `ValidityPeriod` and
    /// `ValidityPeriodUnits` request attributes (off by default, as on a new CA).
    pub fn set_attribute_end_date(&self, on: bool) {
        self.shared.lock().attribute_end_date = on;
    }

    /// The lifetime the last submission asked for through `ValidityPeriod` attributes
    /// and the CA honoured.
    pub fn last_validity(&self) -> Option<std::time::Duration> {
        self.shared.lock().last_validity
    }

    /// Switches Extended Protection on or off.
    pub fn set_extended_protection(&self, on: bool) {
        self.shared.lock().extended_protection = on;
    }

    /// The templates the CA offers (default: `WebServer`, `User`).
    pub fn set_templates(&self, templates: &[&str]) {
        self.shared.lock().templates = templates.iter().map(|t| t.to_string()).collect();
    }

    /// Approves held request `id`; false when no such request waits.
    pub fn approve(&self, id: &str) -> bool {
        self.decide(id, Held::Approved)
    }

    /// Denies held request `id` as a CA manager, with `reason` in the disposition message.
    pub fn deny(&self, id: &str, reason: &str) -> bool {
        let reason = reason.to_string();
        self.decide(id, move |_| Held::Denied(reason))
    }

    fn decide(&self, id: &str, to: impl FnOnce(String) -> Held) -> bool {
        let Ok(id) = id.parse::<u64>() else {
            return false;
        };
        let mut inner = self.shared.lock();
        match inner.requests.get(&id) {
            Some(Held::Waiting(csr)) => {
                let next = to(csr.clone());
                inner.requests.insert(id, next);
                true
            }
            _ => false,
        }
    }

    /// Ids of requests waiting for approval.
    pub fn waiting_ids(&self) -> Vec<String> {
        let mut ids: Vec<u64> = self
            .shared
            .lock()
            .requests
            .iter()
            .filter(|(_, h)| matches!(h, Held::Waiting(_)))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.iter().map(u64::to_string).collect()
    }

    /// Authenticated submissions to `certfnsh.asp`.
    pub fn submissions(&self) -> u64 {
        self.shared.lock().submissions
    }

    /// TLS connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Kerberos (Negotiate) logons accepted.
    pub fn kerberos_logons(&self) -> u64 {
        self.shared.lock().kerberos_logons
    }

    /// NTLM handshakes completed successfully.
    pub fn ntlm_handshakes(&self) -> u64 {
        self.shared.lock().ntlm_handshakes
    }

    /// Why authentications failed, oldest first.
    pub fn auth_failures(&self) -> Vec<String> {
        self.shared.lock().auth_failures.clone()
    }

    /// The User-Agent of the last request.
    pub fn last_user_agent(&self) -> Option<String> {
        self.shared.lock().last_user_agent.clone()
    }

    /// The template the last submission asked for.
    pub fn last_template(&self) -> Option<String> {
        self.shared.lock().last_template.clone()
    }
}

fn sha2_384(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA384, data)
        .as_ref()
        .to_vec()
}

fn acceptor(cert_pem: &str, key_pem: &str, client_ca: Option<&str>) -> io::Result<TlsAcceptor> {
    // HTTP/1.1 only, no ALPN: IIS keeps NTLM state per connection.
    let config = crate::tls::server_config(cert_pem, key_pem, client_ca, &[])?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// NTLM state of one connection, as IIS keeps it.
#[derive(Debug, Default)]
enum NtlmState {
    #[default]
    Anonymous,
    Challenged {
        negotiate: Vec<u8>,
        challenge: Vec<u8>,
        server_challenge: [u8; 8],
        timestamp: [u8; 8],
    },
    Authenticated,
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    shared.lock().connections += 1;
                    let state = Arc::new(Mutex::new(NtlmState::default()));
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, &state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/html")),
    );
    response.headers_mut().insert(
        header::SERVER,
        HeaderValue::from_static("Microsoft-IIS/10.0"),
    );
    response
}

fn html(body: &str) -> Answer {
    answer(
        StatusCode::OK,
        "text/html",
        format!(
            "<HTML><HEAD><TITLE>Microsoft Active Directory Certificate Services</TITLE></HEAD>\
             <BODY>{body}</BODY></HTML>"
        ),
    )
}

fn unauthorized(challenge: Option<&[u8]>) -> Answer {
    let mut response = answer(
        StatusCode::UNAUTHORIZED,
        "text/html",
        "<html><body><h2>401 - Unauthorized: Access is denied due to invalid credentials.</h2>\
         </body></html>",
    );
    let headers = response.headers_mut();
    match challenge {
        Some(msg) => {
            let value = format!(
                "NTLM {}",
                base64::engine::general_purpose::STANDARD.encode(msg)
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.append(header::WWW_AUTHENTICATE, v);
            }
        }
        None => {
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Negotiate"),
            );
            headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("NTLM"));
        }
    }
    response
}

async fn handle(shared: &Shared, state: &Mutex<NtlmState>, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, 256 * 1024).collect().await else {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "text/html", "too large");
    };
    let body = body.to_bytes();
    let behaviour = {
        let mut inner = shared.lock();
        inner.last_user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        inner.behaviour.clone()
    };
    if behaviour == Behaviour::Unauthorized401Loop {
        return unauthorized(None);
    }
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(mut refusal) = authenticate(shared, state, authorization.as_deref()) {
        if authorization.is_none() && shared.lock().close_after_401 {
            refusal
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return refusal;
    }
    if !shared.lock().persist_auth {
        // The next request lands on a server that has not seen this authentication.
        *state.lock().unwrap_or_else(|p| p.into_inner()) = NtlmState::Anonymous;
    }
    match behaviour {
        Behaviour::Hang => return std::future::pending::<Answer>().await,
        Behaviour::Fail500 => {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/html",
                "<html><body><h2>500 - Internal server error.</h2><h3>There is a problem with \
                 the resource you are looking for, and it cannot be displayed.</h3></body></html>",
            );
        }
        Behaviour::Html200 => {
            return answer(
                StatusCode::OK,
                "text/html; charset=utf-8",
                "<!DOCTYPE html><html><head><title>Corporate SSO</title><script>var s=1;</script>\
                 </head><body><h1>Corporate SSO Sign in</h1><form>User</form></body></html>",
            );
        }
        Behaviour::Oversized(n) => return answer(StatusCode::OK, "text/html", vec![b'x'; n]),
        _ => {}
    }
    let path = parts.uri.path().to_ascii_lowercase();
    let query = query_map(parts.uri.query().unwrap_or_default());
    let browser = shared
        .lock()
        .last_user_agent
        .as_deref()
        .is_some_and(|ua| ua.contains("Mozilla"));
    match (parts.method, path.as_str()) {
        (Method::POST, "/certsrv/certfnsh.asp") => submit(shared, &behaviour, &body, browser).await,
        (Method::GET, "/certsrv/certnew.cer")
            if behaviour == Behaviour::FetchFails
                && query
                    .get("reqid")
                    .is_some_and(|id| id.parse::<u64>().is_ok()) =>
        {
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/html",
                "<html><body><h2>503 - Service Unavailable</h2></body></html>",
            )
        }
        (Method::GET, "/certsrv/certnew.cer") => fetch(shared, &query, browser).await,
        (Method::GET, "/certsrv/certnew.p7b") => {
            let renewal = query.get("renewal").map(String::as_str);
            if query.get("reqid").map(String::as_str) == Some("CACert") && renewal == Some("0") {
                let format = shared.lock().chain_format.clone();
                let (content_type, body) = chain_body(shared, &format);
                let body = if behaviour == Behaviour::TruncatedChain {
                    body[..body.len() / 2].to_vec()
                } else {
                    body
                };
                answer(StatusCode::OK, content_type, body)
            } else {
                error_page(
                    0x8007_0057,
                    "The parameter is incorrect. (WIN32: 87 ERROR_INVALID_PARAMETER)",
                )
            }
        }
        (Method::GET, "/certsrv/certcarc.asp") => html(
            "<Script Language=\"JavaScript\">\n\tvar nRenewals=0;\n\tvar sCAName=\"CORP-ISSUING-CA\";\n</Script>\
             <P>Download a CA certificate, certificate chain, or CRL</P>",
        ),
        _ => answer(
            StatusCode::NOT_FOUND,
            "text/html",
            "<html><body><h2>404 - File or directory not found.</h2></body></html>",
        ),
    }
}

/// Checks the request's credentials against the connection's state. `None` lets the
/// request through; `Some` is the 401 to send.
fn authenticate(
    shared: &Shared,
    state: &Mutex<NtlmState>,
    authorization: Option<&str>,
) -> Option<Answer> {
    let (auth, epa) = {
        let inner = shared.lock();
        (inner.auth.clone()?, inner.extended_protection)
    };
    match auth {
        SimAuth::None => None,
        SimAuth::Basic { username, password } => {
            let expected =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            let given = authorization.and_then(|a| a.strip_prefix("Basic "));
            if given == Some(expected.as_str()) {
                None
            } else {
                shared
                    .lock()
                    .auth_failures
                    .push("basic: bad credentials".into());
                let mut r = unauthorized(None);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"adcs.corp.example\""),
                );
                Some(r)
            }
        }
        SimAuth::Negotiate {
            service_key,
            principal,
        } => {
            let mut conn = state.lock().unwrap_or_else(|p| p.into_inner());
            let token = authorization
                .and_then(|a| a.strip_prefix("Negotiate "))
                .and_then(|t| {
                    base64::engine::general_purpose::STANDARD
                        .decode(t.trim())
                        .ok()
                });
            let Some(token) = token else {
                if matches!(*conn, NtlmState::Authenticated) {
                    return None;
                }
                let mut r = unauthorized(None);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Negotiate"),
                );
                return Some(r);
            };
            let bindings = epa.then(|| bindings_md5(&shared.end_point_hash));
            let verdict =
                crate::kdc_sim::verify_ap_req(&token, &service_key, bindings).and_then(|client| {
                    if client.eq_ignore_ascii_case(&principal) {
                        Ok(())
                    } else {
                        Err(format!("negotiate: {client} is not {principal}"))
                    }
                });
            match verdict {
                Ok(()) => {
                    *conn = NtlmState::Authenticated;
                    shared.lock().kerberos_logons += 1;
                    None
                }
                Err(why) => {
                    *conn = NtlmState::Anonymous;
                    shared
                        .lock()
                        .auth_failures
                        .push(format!("negotiate: {why}"));
                    let mut r = unauthorized(None);
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Negotiate"),
                    );
                    Some(r)
                }
            }
        }
        SimAuth::Ntlm {
            username,
            password,
            domain,
        } => {
            let mut conn = state.lock().unwrap_or_else(|p| p.into_inner());
            let token = authorization
                .and_then(|a| {
                    a.strip_prefix("NTLM ")
                        .or_else(|| a.strip_prefix("Negotiate "))
                })
                .and_then(|t| {
                    base64::engine::general_purpose::STANDARD
                        .decode(t.trim())
                        .ok()
                });
            let Some(token) = token else {
                if matches!(*conn, NtlmState::Authenticated) {
                    return None;
                }
                return Some(unauthorized(None));
            };
            let kind = (token.get(..8) == Some(b"NTLMSSP\0".as_slice()))
                .then(|| token.get(8..12).map(|b| b[0]))
                .flatten();
            match (kind, &*conn) {
                (Some(1), _) => {
                    let mut server_challenge = [0u8; 8];
                    let _ = ring::rand::SecureRandom::fill(
                        &ring::rand::SystemRandom::new(),
                        &mut server_challenge,
                    );
                    let timestamp = filetime_now();
                    let challenge = challenge_message(&server_challenge, &timestamp, &domain);
                    let reply = unauthorized(Some(&challenge));
                    *conn = NtlmState::Challenged {
                        negotiate: token,
                        challenge,
                        server_challenge,
                        timestamp,
                    };
                    Some(reply)
                }
                (
                    Some(3),
                    NtlmState::Challenged {
                        negotiate,
                        challenge,
                        server_challenge,
                        timestamp,
                    },
                ) => {
                    let verdict = verify_authenticate(
                        &token,
                        &Expected {
                            username: &username,
                            password: &password,
                            domain: &domain,
                            negotiate,
                            challenge,
                            server_challenge,
                            timestamp,
                            channel_binding: epa.then(|| bindings_md5(&shared.end_point_hash)),
                        },
                    );
                    match verdict {
                        Ok(()) => {
                            *conn = NtlmState::Authenticated;
                            shared.lock().ntlm_handshakes += 1;
                            None
                        }
                        Err(why) => {
                            *conn = NtlmState::Anonymous;
                            shared.lock().auth_failures.push(why);
                            Some(unauthorized(None))
                        }
                    }
                }
                _ => {
                    *conn = NtlmState::Anonymous;
                    shared
                        .lock()
                        .auth_failures
                        .push("ntlm: message out of sequence".into());
                    Some(unauthorized(None))
                }
            }
        }
    }
}

fn filetime_now() -> [u8; 8] {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ft =
        (since.as_secs() + 11_644_473_600) * 10_000_000 + u64::from(since.subsec_nanos() / 100);
    ft.to_le_bytes()
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// A CHALLENGE message with the target information Windows sends.
fn challenge_message(server_challenge: &[u8; 8], timestamp: &[u8; 8], domain: &str) -> Vec<u8> {
    let target = utf16(domain);
    let mut info = Vec::new();
    let mut pair = |id: u16, value: &[u8]| {
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(value.len() as u16).to_le_bytes());
        info.extend_from_slice(value);
    };
    pair(2, &utf16(domain));
    pair(1, &utf16("ADCS01"));
    pair(4, &utf16("corp.example"));
    pair(3, &utf16("adcs01.corp.example"));
    pair(5, &utf16("corp.example"));
    pair(7, timestamp);
    pair(0, &[]);
    // Unicode, request target, NTLM, always sign, target type domain, extended session
    // security, target info, version, 128, 56.
    let flags: u32 = 0x0000_0001
        | 0x0000_0004
        | 0x0000_0200
        | 0x0000_8000
        | 0x0001_0000
        | 0x0008_0000
        | 0x0080_0000
        | 0x0200_0000
        | 0x2000_0000
        | 0x8000_0000;
    let mut msg = b"NTLMSSP\0".to_vec();
    msg.extend_from_slice(&2u32.to_le_bytes());
    let target_offset = 56u32;
    msg.extend_from_slice(&(target.len() as u16).to_le_bytes());
    msg.extend_from_slice(&(target.len() as u16).to_le_bytes());
    msg.extend_from_slice(&target_offset.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.extend_from_slice(server_challenge);
    msg.extend_from_slice(&[0u8; 8]);
    msg.extend_from_slice(&(info.len() as u16).to_le_bytes());
    msg.extend_from_slice(&(info.len() as u16).to_le_bytes());
    msg.extend_from_slice(&(target_offset + target.len() as u32).to_le_bytes());
    msg.extend_from_slice(&[10, 0, 0x61, 0x4a, 0, 0, 0, 15]);
    msg.extend_from_slice(&target);
    msg.extend_from_slice(&info);
    msg
}

/// MD5 of the gss_channel_bindings_struct for `tls-server-end-point:<hash>`.
fn bindings_md5(end_point_hash: &[u8]) -> [u8; 16] {
    let mut app = b"tls-server-end-point:".to_vec();
    app.extend_from_slice(end_point_hash);
    let mut st = vec![0u8; 16];
    st.extend_from_slice(&(app.len() as u32).to_le_bytes());
    st.extend_from_slice(&app);
    md5::Md5::digest(&st).into()
}

struct Expected<'a> {
    username: &'a str,
    password: &'a str,
    domain: &'a str,
    negotiate: &'a [u8],
    challenge: &'a [u8],
    server_challenge: &'a [u8; 8],
    timestamp: &'a [u8; 8],
    channel_binding: Option<[u8; 16]>,
}

fn payload(msg: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16::from_le_bytes(msg.get(at..at + 2)?.try_into().ok()?));
    let off = u32::from_le_bytes(msg.get(at + 4..at + 8)?.try_into().ok()?) as usize;
    msg.get(off..off.checked_add(len)?)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let Ok(mut m) = <HmacMd5 as Mac>::new_from_slice(key) else {
        return [0; 16];
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Verifies an AUTHENTICATE message as a domain controller and IIS would.
fn verify_authenticate(msg: &[u8], e: &Expected<'_>) -> Result<(), String> {
    let nt = payload(msg, 20).ok_or("ntlm: malformed AUTHENTICATE")?;
    let domain = from_utf16(payload(msg, 28).ok_or("ntlm: malformed AUTHENTICATE")?);
    let user = from_utf16(payload(msg, 36).ok_or("ntlm: malformed AUTHENTICATE")?);
    if !user.eq_ignore_ascii_case(e.username) {
        return Err(format!("ntlm: unknown user {user:?}"));
    }
    if !domain.is_empty() && !domain.eq_ignore_ascii_case(e.domain) {
        return Err(format!("ntlm: unknown domain {domain:?}"));
    }
    if nt.len() < 16 + 28 {
        return Err("ntlm: not an NTLMv2 response (NTLMv1 is refused)".into());
    }
    let nt_hash = md4::Md4::digest(utf16(e.password));
    let key = mac(
        &nt_hash,
        &[&utf16(&format!("{}{domain}", user.to_uppercase()))],
    );
    let (proof, blob) = nt.split_at(16);
    if mac(&key, &[e.server_challenge, blob]) != proof {
        return Err("ntlm: wrong password".into());
    }
    if blob.get(8..16) != Some(e.timestamp.as_slice()) {
        return Err("ntlm: the response does not echo the server's timestamp".into());
    }
    let mut pairs = HashMap::new();
    let mut rest = blob.get(28..).unwrap_or_default();
    while rest.len() >= 4 {
        let id = u16::from_le_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        if id == 0 || rest.len() < 4 + len {
            break;
        }
        pairs.insert(id, rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    if let Some(expected) = e.channel_binding {
        match pairs.get(&0x000A) {
            None => return Err("ntlm: Extended Protection: no channel binding".into()),
            Some(cb) if cb.as_slice() == [0u8; 16] => {
                return Err("ntlm: Extended Protection: empty channel binding".into());
            }
            Some(cb) if cb.as_slice() != expected => {
                return Err("ntlm: Extended Protection: channel binding mismatch".into());
            }
            Some(_) => {}
        }
    }
    let mic_flag = pairs
        .get(&0x0006)
        .and_then(|f| f.get(..4))
        .is_some_and(|f| u32::from_le_bytes([f[0], f[1], f[2], f[3]]) & 2 != 0);
    if mic_flag {
        let given = msg.get(72..88).ok_or("ntlm: MIC flagged but missing")?;
        let session_key = mac(&key, &[proof]);
        let mut zeroed = msg.to_vec();
        zeroed[72..88].fill(0);
        if mac(&session_key, &[e.negotiate, e.challenge, &zeroed]) != given {
            return Err("ntlm: MIC mismatch".into());
        }
    }
    Ok(())
}

fn query_map(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}

fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error_page(code: u32, text: &str) -> Answer {
    html(&format!(
        "<P ID=locPageTitle><B>Microsoft Active Directory Certificate Services</B></P>\
         <P ID=locErrorMsg>An unexpected error has occurred:</P>\
         <P>0x{code:08X} - {text}</P>"
    ))
}

fn denied_page(message: &str) -> Answer {
    html(&format!(
        "<P ID=locPageTitle><B>Certificate Request Denied</B></P>\
         <P ID=locDenied>Your certificate request was denied.</P>\
         <P>Your Request Id is 0. The disposition message is \"{}\".</P>\
         <P>Contact your administrator for further information.</P>",
        escape(message)
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn submit(shared: &Shared, behaviour: &Behaviour, body: &[u8], browser: bool) -> Answer {
    let form: HashMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), form_decode(v)))
        .collect();
    if form.get("Mode").map(String::as_str) != Some("newreq") {
        return error_page(
            0x8009_4001,
            "Invalid request format. (CERTSRV_E_BAD_REQUESTSUBJECT)",
        );
    }
    let Some(csr_pem) = form.get("CertRequest").cloned() else {
        return error_page(
            0x8009_4010,
            "The request subject name is invalid or too long.",
        );
    };
    let attributes: HashMap<String, String> = form
        .get("CertAttrib")
        .map(|a| {
            a.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let template = attributes.get("certificatetemplate").cloned();
    let validity = shared
        .lock()
        .attribute_end_date
        .then(|| validity_period(&attributes))
        .flatten();
    shared.lock().last_validity = validity;
    let (id, known) = {
        let mut inner = shared.lock();
        inner.submissions += 1;
        inner.next_id += 1;
        inner.last_template = template.clone();
        let known = template
            .as_ref()
            .is_some_and(|t| inner.templates.iter().any(|k| k.eq_ignore_ascii_case(t)));
        (inner.next_id, known)
    };
    let Some(template) = template else {
        return denied_page(
            "Denied by Policy Module  0x80094801, The request contains no certificate template \
             information.",
        );
    };
    if !known {
        return denied_page(&format!(
            "Denied by Policy Module  0x80094800, The request was for a certificate template \
             that is not supported by the Active Directory Certificate Services policy: {template}."
        ));
    }
    match behaviour {
        Behaviour::Deny(reason) => {
            denied_page(&format!("Denied by Policy Module  0x80094014, {reason}"))
        }
        Behaviour::LoseAnswerToSubmission => {
            shared
                .lock()
                .requests
                .insert(id, Held::Waiting(csr_pem.clone()));
            std::future::pending::<Answer>().await
        }
        Behaviour::ErrorPage(code, text) => error_page(*code, text),
        Behaviour::SubmitPage(page) => html(page),
        Behaviour::Pending => {
            shared.lock().requests.insert(id, Held::Waiting(csr_pem));
            html(&format!(
                "<P ID=locPageTitle><B>Certificate Pending</B></P>\
                 <P ID=locPending>Your certificate request has been received. However, you \
                 must wait for an administrator to issue the certificate you requested.</P>\
                 <P>Your Request Id is {id}.</P>\
                 <P>Please return to this web site in a day or two to retrieve your certificate.</P>"
            ))
        }
        Behaviour::DenyOnFetch(reason) => {
            shared
                .lock()
                .requests
                .insert(id, Held::Denied(reason.clone()));
            issued_page(id)
        }
        Behaviour::TruncatedCertificate => match sign(shared, &csr_pem, validity).await {
            Ok(pem) => answer(
                StatusCode::OK,
                "application/pkix-cert",
                pem[..pem.len() / 2].to_string(),
            ),
            Err(page) => page,
        },
        Behaviour::IssueInline => match sign(shared, &csr_pem, validity).await {
            Ok(pem) => {
                shared.lock().requests.insert(id, Held::Issued(pem.clone()));
                cert_answer(pem, browser)
            }
            Err(page) => page,
        },
        _ => match sign(shared, &csr_pem, validity).await {
            Ok(pem) => {
                let pem = if *behaviour == Behaviour::WrongKey {
                    let other = CsrBuilder::new(KeyKind::EcdsaP256)
                        .common_name("someone-else.example")
                        .build();
                    match sign(shared, &other.csr_pem, validity).await {
                        Ok(pem) => pem,
                        Err(page) => return page,
                    }
                } else {
                    pem
                };
                shared.lock().requests.insert(id, Held::Issued(pem));
                issued_page(id)
            }
            Err(page) => page,
        },
    }
}

/// The "Certificate Issued" page of `certfnsh.asp`, linking the certificate of `id`.
fn issued_page(id: u64) -> Answer {
    html(&format!(
        "<P ID=locPageTitle><B>Certificate Issued</B></P>\
         <P ID=locInstalled>The certificate you requested was issued to you.</P>\
         <Input Type=Radio ID=rbDerEnc Name=rbEncoding>DER encoded or\
         <Input Type=Radio ID=rbB64Enc Name=rbEncoding Checked>Base 64 encoded\
         <A Href=\"certnew.cer?ReqID={id}&amp;Enc=b64\">Download certificate</A>\
         <A Href=\"certnew.p7b?ReqID={id}&amp;Enc=b64\">Download certificate chain</A>"
    ))
}

/// The lifetime the `ValidityPeriod` (`Seconds` ... `Years`) and `ValidityPeriodUnits`
/// request attributes ask for, as certsrv's policy module reads them.
fn validity_period(attributes: &HashMap<String, String>) -> Option<std::time::Duration> {
    let units: u64 = attributes.get("validityperiodunits")?.parse().ok()?;
    let unit: u64 = match attributes
        .get("validityperiod")?
        .to_ascii_lowercase()
        .as_str()
    {
        "seconds" => 1,
        "minutes" => 60,
        "hours" => 3600,
        "days" => 86_400,
        "weeks" => 7 * 86_400,
        "months" => 30 * 86_400,
        "years" => 365 * 86_400,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(units.checked_mul(unit)?))
}

/// A certificate as certsrv sends it: `application/pkix-cert` to browsers only.
fn cert_answer(pem: String, browser: bool) -> Answer {
    if browser {
        answer(StatusCode::OK, "application/pkix-cert", pem)
    } else {
        answer(StatusCode::OK, "text/plain", pem)
    }
}

async fn sign(
    shared: &Shared,
    csr_pem: &str,
    validity: Option<std::time::Duration>,
) -> Result<String, Answer> {
    let Ok(csr) = Csr::parse(csr_pem.as_bytes()) else {
        return Err(error_page(
            0x8009_3102,
            "ASN1 unexpected end of data. (CRYPT_E_ASN1_EOD)",
        ));
    };
    let mut request = SignRequest::new(csr, "adcs-sim");
    request.duration = validity;
    match shared.ca.sign(&request).await {
        Ok(Outcome::Issued(bundle)) => bundle
            .leaf()
            .map(|leaf| leaf.to_pem())
            .ok_or_else(|| error_page(0x8000_4005, "Unspecified error")),
        _ => Err(error_page(0x8000_4005, "Unspecified error")),
    }
}

async fn fetch(shared: &Shared, query: &HashMap<String, String>, browser: bool) -> Answer {
    let req_id = query.get("reqid").map(String::as_str).unwrap_or_default();
    if req_id.eq_ignore_ascii_case("CACert") {
        return if query.get("renewal").map(String::as_str) == Some("0") {
            cert_answer(shared.issuing_pem.clone(), browser)
        } else {
            error_page(0x8007_0057, "The parameter is incorrect.")
        };
    }
    let Ok(id) = req_id.parse::<u64>() else {
        return error_page(0x8007_0057, "The parameter is incorrect.");
    };
    let held = shared.lock().requests.get(&id).cloned();
    match held {
        Some(Held::Issued(pem)) => cert_answer(pem, browser),
        Some(Held::Approved(csr)) => match sign(shared, &csr, None).await {
            Ok(pem) => {
                shared.lock().requests.insert(id, Held::Issued(pem.clone()));
                cert_answer(pem, browser)
            }
            Err(page) => page,
        },
        Some(Held::Waiting(_)) => html(&format!(
            "<P ID=locPageTitle><B>Certificate Pending</B></P>\
             <TABLE><TR><TD>Request Id:</TD><TD>{id}</TD></TR>\
             <TR><TD>LastStatus:</TD><TD>The operation completed successfully. 0x0 (WIN32: 0)</TD></TR>\
             <TR><TD>Disposition message:</TD><TD>Taken Under Submission</TD></TR></TABLE>"
        )),
        Some(Held::Denied(reason)) if reason.starts_with("Denied by Policy Module") => {
            let code = reason
                .split_whitespace()
                .find_map(|w| w.trim_end_matches(',').strip_prefix("0x"))
                .unwrap_or("80094014")
                .to_string();
            html(&format!(
                "<P ID=locPageTitle><B>Certificate Request Denied</B></P>\
                 <TABLE><TR><TD>Request Id:</TD><TD>{id}</TD></TR>\
                 <TR><TD>LastStatus:</TD><TD>Denied by the policy module. 0x{code}</TD></TR>\
                 <TR><TD>Disposition message:</TD><TD>{}</TD></TR></TABLE>",
                escape(&reason)
            ))
        }
        Some(Held::Denied(reason)) => html(&format!(
            "<P ID=locPageTitle><B>Certificate Request Denied</B></P>\
             <TABLE><TR><TD>Request Id:</TD><TD>{id}</TD></TR>\
             <TR><TD>LastStatus:</TD><TD>The request was denied by a certificate manager or CA \
             administrator. 0x80094014 (-2146877420 CERTSRV_E_ADMIN_DENIED_REQUEST)</TD></TR>\
             <TR><TD>Disposition message:</TD><TD>Denied by CORP\\ca-manager: {}</TD></TR></TABLE>",
            escape(&reason)
        )),
        None => error_page(
            0x8007_000D,
            "The data is invalid. (WIN32: 13 ERROR_INVALID_DATA) Request Id not found",
        ),
    }
}

fn der_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_length(contents.len(), &mut out);
    out.extend_from_slice(contents);
    out
}

/// A degenerate PKCS#7 SignedData carrying `certs`, as `certnew.p7b` serves the chain.
fn signed_data(certs: &[&[u8]]) -> Vec<u8> {
    const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    let mut inner = der(0x02, &[1]);
    inner.extend(der(0x31, &[]));
    inner.extend(der(0x30, &der(0x06, DATA)));
    inner.extend(der(0xa0, &certs.concat()));
    inner.extend(der(0x31, &[]));
    let mut content_info = der(0x06, SIGNED_DATA);
    content_info.extend(der(0xa0, &der(0x30, &inner)));
    der(0x30, &content_info)
}

/// The content type and body of `certnew.p7b` for the CA chain, wrapped as `format`
/// says. PKCS#7 goes out as certsrv sends it; plain certificates under the content types
/// other implementations use.
fn chain_body(shared: &Shared, format: &ChainFormat) -> (&'static str, Vec<u8>) {
    const P7: &str = "application/x-pkcs7-certificates";
    let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    match format {
        ChainFormat::Pkcs7Pem => (P7, pem("PKCS7", &shared.p7b).into_bytes()),
        ChainFormat::Pkcs7PemLabel(label) => ("text/plain", pem(label, &shared.p7b).into_bytes()),
        ChainFormat::Pkcs7Der => ("application/octet-stream", shared.p7b.clone()),
        ChainFormat::Pkcs7Base64 => (P7, b64(&shared.p7b).into_bytes()),
        ChainFormat::CertificatesPem => (
            "application/x-pem-file",
            shared
                .ca_ders
                .iter()
                .map(|der| pem("CERTIFICATE", der))
                .collect::<String>()
                .into_bytes(),
        ),
        ChainFormat::CertificateBase64 => (
            "application/pkix-cert",
            format!("{}\r\n", b64(&shared.ca_ders[0])).into_bytes(),
        ),
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\r\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push_str("\r\n");
    }
    out.push_str(&format!("-----END {label}-----\r\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%3Ac%0D%0A%"), "a b:c\r\n%");
        assert_eq!(form_decode("%zz"), "%zz");
    }

    #[test]
    fn the_p7b_is_der() {
        let a = [0x30u8, 0x00];
        let p7 = signed_data(&[&a, &a]);
        assert_eq!(p7[0], 0x30);
        assert!(pem("PKCS7", &p7).starts_with("-----BEGIN PKCS7-----\r\n"));
    }
}
