//! An EJBCA REST interface over real TLS, for testing the `ejbca` backend: the paths,
//! field names, status codes and error bodies of EJBCA's OpenAPI description
//! (`/ejbca/ejbca-rest-api/v1/...`), signing with a local CA.
//!
//! [`EjbcaSimulator`] authenticates clients as EJBCA does in one of two ways, chosen at
//! start: a TLS client certificate issued by a configured CA (optionally restricted to
//! role members by common name), or a bearer token from its own OAuth2 token endpoint
//! (`POST /oauth/token`, client credentials), whose tokens live as long as the test says.
//! It knows one CA ([`CA_NAME`]), one end entity profile ([`END_ENTITY_PROFILE`]) and
//! three certificate profiles: [`CERTIFICATE_PROFILE`], [`APPROVAL_PROFILE`] (enrollments
//! wait for [`EjbcaSimulator::approve`] or [`EjbcaSimulator::deny`] and are then
//! finalized) and [`UNAVAILABLE_PROFILE`] (exists, but the end entity profile does not
//! allow it). The failure [`Behaviour`]s of the REST simulator switch the whole API at
//! once; the token endpoint, being another server in real life, keeps answering.
//!
//! Deliberate liberties: a denied request's finalize message carries the approver's
//! comment (EJBCA's says only "has been rejected"), and `end_time` is honoured by every
//! profile (EJBCA needs "allow validity override" in the certificate profile).
//!
//! One file because it is one server: EJBCA's REST paths, its token endpoint and its
//! behaviours share the enrollment state.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::{Value, json};

use certwright_backend_ca::{LocalCa, LocalCaConfig};
use certwright_pki::{Backend, Outcome, SignRequest};
use certwright_x509::{Certificate, Csr};

use rcgen::DnType;

use crate::fixtures::{CsrBuilder, KeyKind, TestCa};
use crate::tls::{PeerCertificates, RunningServer, TlsOptions, TlsServer};

/// Where the REST API lives on the server, as in a default EJBCA deployment.
pub const API_PATH: &str = "/ejbca/ejbca-rest-api";
/// The simulator's OAuth2 token endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";
/// The one CA.
pub const CA_NAME: &str = "IssuingCA";
/// The end entity profile.
pub const END_ENTITY_PROFILE: &str = "k8s-workloads";
/// A certificate profile that issues at once.
pub const CERTIFICATE_PROFILE: &str = "ENDUSER";
/// A certificate profile whose enrollments need an approval.
pub const APPROVAL_PROFILE: &str = "ENDUSER-APPROVAL";
/// A certificate profile that exists but that [`END_ENTITY_PROFILE`] does not allow.
pub const UNAVAILABLE_PROFILE: &str = "TLSCLIENT";
/// The validity of certificates enrolled without `end_time`.
pub const PROFILE_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of OAuth2 tokens unless [`EjbcaSimulator::set_token_lifetime`] says.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// What the status endpoint reports as EJBCA's revision.
pub const REVISION: &str = "EJBCA 9.1.1 Community (certwright simulator)";

/// How the API answers from now on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behaviour {
    /// As EJBCA: enroll (or hold for approval), finalize, report status.
    #[default]
    Normal,
    /// Refuse enrollments: 400 with this `error_message`.
    Reject(String),
    /// 429 with `Retry-After: <seconds>` on every API call.
    RateLimit(u64),
    /// 500 `General failure.` on every API call.
    Fail500,
    /// 200 with an HTML login page on every API call.
    Html200,
    /// 200 with JSON cut off in the middle on every API call.
    TruncatedJson,
    /// 200 with a streamed body (no Content-Length) of this many bytes on every API call.
    Oversized(usize),
    /// Accept every API call and never answer.
    Hang,
    /// Enroll, but return a certificate for another key than the CSR's.
    WrongKey,
    /// Enroll with a `certificate_chain` of another CA's certificate, and answer chain
    /// downloads with 500.
    BrokenChain,
    /// Hold enrollments for approval with a 202 that carries neither `request_id` nor
    /// `link`.
    WaitingWithoutId,
    /// Take enrollments (they count), sign them, and never answer, as after a reset or a
    /// proxy timeout: the certificate exists in EJBCA, and a certificate search finds
    /// it. Every other call answers.
    LoseAnswerToEnrollment,
}

/// How clients authenticate.
#[derive(Clone, Debug)]
enum Mode {
    ClientCertificate,
    OAuth {
        client_id: String,
        client_secret: String,
    },
}

/// An enrollment held for approval, by EJBCA's approval request id.
#[derive(Clone, Debug)]
enum Held {
    Waiting {
        request: SignRequest,
        password: String,
    },
    Approved {
        request: SignRequest,
        password: String,
    },
    Denied(String),
    /// Finalized, or being finalized by a call in progress.
    Finalized,
}

#[derive(Debug)]
struct Inner {
    behaviour: Behaviour,
    answer_in_pem: bool,
    double_base64: bool,
    role_members: Option<Vec<String>>,
    token_lifetime: Duration,
    tokens: HashMap<String, Instant>,
    tokens_issued: u64,
    last_token_request: Option<BTreeMap<String, String>>,
    status_calls: u64,
    enrollments: u64,
    finalizations: u64,
    chain_downloads: u64,
    issued: u64,
    last_enrollment: Option<Value>,
    end_entities: Vec<String>,
    held: HashMap<i64, Held>,
    /// The end entity of each held enrollment, by approval request id.
    held_end_entities: HashMap<i64, String>,
    next_request_id: i64,
    /// Every certificate signed, with its end entity and when, for searches.
    database: Vec<Issued>,
    searches: u64,
}

/// A certificate in the simulator's database.
#[derive(Clone, Debug)]
struct Issued {
    username: String,
    at: jiff::Timestamp,
    leaf: Certificate,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            behaviour: Behaviour::Normal,
            answer_in_pem: false,
            double_base64: false,
            role_members: None,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            tokens: HashMap::new(),
            tokens_issued: 0,
            last_token_request: None,
            status_calls: 0,
            enrollments: 0,
            finalizations: 0,
            chain_downloads: 0,
            issued: 0,
            last_enrollment: None,
            end_entities: Vec::new(),
            held: HashMap::new(),
            held_end_entities: HashMap::new(),
            next_request_id: 1000,
            database: Vec::new(),
            searches: 0,
        }
    }
}

struct Shared {
    mode: Mode,
    ca: LocalCa,
    root: Certificate,
    issuing: Certificate,
    /// The public base of the API, for the `link` of approval answers.
    api_url: Mutex<String>,
    rng: SystemRandom,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An EJBCA REST API on 127.0.0.1 over TLS. Stops when dropped.
pub struct EjbcaSimulator {
    server: RunningServer,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EjbcaSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EjbcaSimulator")
            .field("url", &self.url())
            .field("mode", &self.shared.mode)
            .field("behaviour", &self.shared.lock().behaviour)
            .finish_non_exhaustive()
    }
}

impl EjbcaSimulator {
    /// Starts a simulator that requires TLS client certificates issued by
    /// `client_ca_pem`, as an EJBCA whose roles match on client certificates.
    ///
    /// # Errors
    /// When the server cannot start (see [`TlsServer::start`]).
    pub async fn start_mtls(client_ca_pem: &str) -> io::Result<EjbcaSimulator> {
        Self::start(
            Mode::ClientCertificate,
            TlsOptions::new().require_client_certificates(client_ca_pem),
        )
        .await
    }

    /// Starts a simulator that requires bearer tokens from its own token endpoint
    /// ([`EjbcaSimulator::token_url`]), granted to this client.
    ///
    /// # Errors
    /// When the server cannot start (see [`TlsServer::start`]).
    pub async fn start_oauth(client_id: &str, client_secret: &str) -> io::Result<EjbcaSimulator> {
        Self::start(
            Mode::OAuth {
                client_id: client_id.to_string(),
                client_secret: client_secret.to_string(),
            },
            TlsOptions::new(),
        )
        .await
    }

    async fn start(mode: Mode, tls: TlsOptions) -> io::Result<EjbcaSimulator> {
        let root = TestCa::root(KeyKind::EcdsaP256, "certwright EJBCA simulator root");
        // A subject DN with every character a path segment must percent-encode: the
        // separators of the DN itself (',', '='), escaped ones ('\\,', '\\+'), '/',
        // spaces and non-ASCII letters.
        let issuing = root.intermediate_with_subject(
            KeyKind::EcdsaP256,
            &[
                (DnType::CountryName, "SE"),
                (DnType::OrganizationName, "Sample, Société Générale"),
                (DnType::OrganizationalUnitName, "PKI/Ops + K8s"),
                (DnType::CommonName, "certwright EJBCA simulator CA"),
            ],
        );
        let chain_pem = format!("{}{}", issuing.cert_pem(), root.cert_pem());
        let ca = LocalCa::from_pem(
            chain_pem.as_bytes(),
            issuing.key_pem().as_bytes(),
            LocalCaConfig {
                default_duration: PROFILE_VALIDITY,
            },
        )
        .map_err(io::Error::other)?;
        let parse = |pem: &str| {
            certwright_x509::parse_pem_bundle(pem.as_bytes())
                .ok()
                .and_then(|mut certs| certs.pop())
                .ok_or_else(|| io::Error::other("the simulator's CA does not parse"))
        };
        let shared = Arc::new(Shared {
            mode,
            ca,
            root: parse(root.cert_pem())?,
            issuing: parse(issuing.cert_pem())?,
            api_url: Mutex::new(String::new()),
            rng: SystemRandom::new(),
            inner: Mutex::new(Inner::default()),
        });
        let api = Router::new()
            .route("/v1/certificate/status", get(status))
            .route("/v1/certificate/pkcs10enroll", post(enroll))
            .route("/v1/certificate/search", post(search))
            .route("/v1/certificate/{request_id}/finalize", post(finalize))
            .route("/v1/ca", get(list_cas))
            .route("/v1/ca/{subject_dn}/certificate/download", get(download))
            .with_state(shared.clone());
        let router = Router::new()
            .nest(API_PATH, api)
            .route(TOKEN_PATH, post(token))
            .with_state(shared.clone());
        let server = TlsServer::start(router, tls).await?;
        *shared
            .api_url
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            format!("{}{API_PATH}", server.url());
        Ok(EjbcaSimulator { server, shared })
    }

    /// The REST base URL to configure: `https://127.0.0.1:<port>/ejbca/ejbca-rest-api`.
    pub fn url(&self) -> String {
        format!("{}{API_PATH}", self.server.url())
    }

    /// The token endpoint: `https://127.0.0.1:<port>/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.server.url())
    }

    /// The caBundle that trusts the simulator's TLS certificate.
    pub fn tls_ca_pem(&self) -> &str {
        self.server.ca_pem()
    }

    /// The root of the certificates the simulator issues.
    pub fn issuing_root_pem(&self) -> String {
        self.shared.root.to_pem()
    }

    /// The subject DN of [`CA_NAME`], as `GET /v1/ca` lists it.
    pub fn ca_subject_dn(&self) -> String {
        self.shared.issuing.subject().to_string()
    }

    /// The running server.
    pub fn server(&self) -> &RunningServer {
        &self.server
    }

    /// Changes how the API answers from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.lock().behaviour = behaviour;
    }

    /// Answer certificates in response format PEM (base64 of the PEM text, as EJBCA's
    /// JSON mapper writes it) instead of the DER asked for.
    pub fn set_answer_in_pem(&self, pem: bool) {
        self.shared.lock().answer_in_pem = pem;
    }

    /// Encode certificates twice in base64, as EJBCA's JSON mapper does with a `byte[]`
    /// that already holds base64 text: base64(base64(DER)), in `certificate` and
    /// `certificate_chain`.
    pub fn set_double_base64(&self, double: bool) {
        self.shared.lock().double_base64 = double;
    }

    /// With mTLS: only client certificates with one of these common names belong to the
    /// role (others get 403); `None` (the default) admits every certificate the client
    /// CA issued.
    pub fn set_role_members(&self, members: Option<Vec<String>>) {
        self.shared.lock().role_members = members;
    }

    /// The lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = lifetime;
    }

    /// Forgets every token issued so far, as an EJBCA whose OAuth provider rotated its
    /// signing key: the next call with one is answered 401.
    pub fn revoke_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    /// How many tokens the token endpoint issued.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.lock().tokens_issued
    }

    /// The form fields of the last token request, without `client_secret`.
    pub fn last_token_request(&self) -> Option<BTreeMap<String, String>> {
        self.shared.lock().last_token_request.clone()
    }

    /// Approves a held enrollment; the next finalize issues it. `false` when no
    /// enrollment with that id waits.
    pub fn approve(&self, request_id: i64) -> bool {
        let mut inner = self.shared.lock();
        match inner.held.get(&request_id).cloned() {
            Some(Held::Waiting { request, password }) => {
                inner
                    .held
                    .insert(request_id, Held::Approved { request, password });
                true
            }
            _ => false,
        }
    }

    /// Denies a held enrollment with the approver's comment `reason`. `false` when no
    /// enrollment with that id waits.
    pub fn deny(&self, request_id: i64, reason: &str) -> bool {
        let mut inner = self.shared.lock();
        match inner.held.get(&request_id) {
            Some(Held::Waiting { .. }) => {
                inner
                    .held
                    .insert(request_id, Held::Denied(reason.to_string()));
                true
            }
            _ => false,
        }
    }

    /// The ids of enrollments waiting for approval.
    pub fn waiting_ids(&self) -> Vec<i64> {
        let inner = self.shared.lock();
        let mut ids: Vec<i64> = inner
            .held
            .iter()
            .filter(|(_, held)| matches!(held, Held::Waiting { .. }))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// How many `POST .../pkcs10enroll` calls arrived (authenticated or not, whatever the
    /// behaviour).
    pub fn enrollments(&self) -> u64 {
        self.shared.lock().enrollments
    }

    /// How many `POST .../{request_id}/finalize` calls arrived.
    pub fn finalizations(&self) -> u64 {
        self.shared.lock().finalizations
    }

    /// How many `GET .../v1/certificate/status` calls arrived.
    pub fn status_calls(&self) -> u64 {
        self.shared.lock().status_calls
    }

    /// How many chain downloads were answered.
    pub fn chain_downloads(&self) -> u64 {
        self.shared.lock().chain_downloads
    }

    /// How many certificates were signed.
    pub fn certificates_issued(&self) -> u64 {
        self.shared.lock().issued
    }

    /// The JSON body of the last enrollment, when it was JSON.
    pub fn last_enrollment(&self) -> Option<Value> {
        self.shared.lock().last_enrollment.clone()
    }

    /// The usernames of the end entities enrolled (or held), in order.
    pub fn end_entities(&self) -> Vec<String> {
        self.shared.lock().end_entities.clone()
    }

    /// How many `POST .../v1/certificate/search` calls arrived.
    pub fn searches(&self) -> u64 {
        self.shared.lock().searches
    }
}

/// `ExceptionErrorRestResponse`.
fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({ "error_code": status.as_u16(), "error_message": message })),
    )
        .into_response()
}

/// Authenticates the caller as the mode says: the refusal to send, or `None`.
fn authenticate(shared: &Shared, headers: &HeaderMap, peer: &PeerCertificates) -> Option<Response> {
    let inner = shared.lock();
    match &shared.mode {
        Mode::ClientCertificate => {
            // The TLS layer already refused certificates the client CA did not issue.
            let Some(members) = &inner.role_members else {
                return None;
            };
            let subject = peer
                .0
                .first()
                .and_then(|der| Certificate::from_der(der).ok())
                .map(|cert| cert.subject().to_string())
                .unwrap_or_default();
            let admitted = members.iter().any(|cn| {
                subject
                    .split(',')
                    .any(|rdn| rdn.trim() == format!("CN={cn}"))
            });
            if admitted {
                None
            } else {
                Some(error(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "Not authorized to resource /ca/{CA_NAME}. The client certificate \
                         \"{subject}\" is not a member of any role."
                    ),
                ))
            }
        }
        Mode::OAuth { .. } => {
            let token = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match token {
                None => Some(error(
                    StatusCode::UNAUTHORIZED,
                    "Authentication failed: no bearer token and no client certificate.",
                )),
                Some(token) => match inner.tokens.get(token) {
                    Some(expiry) if Instant::now() < *expiry => None,
                    _ => Some(error(
                        StatusCode::UNAUTHORIZED,
                        "Authentication failed: the OAuth token is expired or not issued by a \
                         trusted OAuth provider.",
                    )),
                },
            }
        }
    }
}

/// The answer every API endpoint gives under a failure behaviour, or `None` to go on.
async fn failure(behaviour: &Behaviour) -> Option<Response> {
    let response = match behaviour {
        Behaviour::RateLimit(seconds) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "Too many requests.");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
            response
        }
        Behaviour::Fail500 => error(StatusCode::INTERNAL_SERVER_ERROR, "General failure."),
        Behaviour::Html200 => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><head><title>Corporate SSO</title>\
             <script>window.location.hash = 'login';</script></head>\
             <body><h1>Sign in</h1><form><input name=\"user\"></form></body></html>",
        )
            .into_response(),
        Behaviour::TruncatedJson => (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"certificate\": \"MIIB",
        )
            .into_response(),
        Behaviour::Oversized(bytes) => {
            const CHUNK: usize = 16 * 1024;
            let total = *bytes;
            let chunks = (0..total).step_by(CHUNK).map(move |offset| {
                Ok::<_, Infallible>(Bytes::from(vec![b'A'; CHUNK.min(total - offset)]))
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(futures_util::stream::iter(chunks)),
            )
                .into_response()
        }
        Behaviour::Hang => std::future::pending::<Response>().await,
        Behaviour::Normal
        | Behaviour::LoseAnswerToEnrollment
        | Behaviour::Reject(_)
        | Behaviour::WrongKey
        | Behaviour::BrokenChain
        | Behaviour::WaitingWithoutId => return None,
    };
    Some(response)
}

/// Authentication, then the failure behaviour: the common start of every API call.
async fn admit(
    shared: &Shared,
    headers: &HeaderMap,
    peer: &PeerCertificates,
) -> Result<Behaviour, Response> {
    if let Some(refusal) = authenticate(shared, headers, peer) {
        return Err(refusal);
    }
    let behaviour = shared.lock().behaviour.clone();
    match failure(&behaviour).await {
        Some(response) => Err(response),
        None => Ok(behaviour),
    }
}

async fn status(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<PeerCertificates>,
    headers: HeaderMap,
) -> Response {
    shared.lock().status_calls += 1;
    if let Err(response) = admit(&shared, &headers, &peer).await {
        return response;
    }
    Json(json!({ "status": "OK", "version": "1.0", "revision": REVISION })).into_response()
}

async fn list_cas(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<PeerCertificates>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = admit(&shared, &headers, &peer).await {
        return response;
    }
    let info = |id: i64, name: &str, cert: &Certificate| {
        json!({
            "id": id,
            "name": name,
            "subject_dn": cert.subject().to_string(),
            "issuer_dn": cert.issuer().to_string(),
            "expiration_date": cert.not_after().to_string(),
        })
    };
    Json(json!({
        "certificate_authorities": [
            info(1_652_389_506, "RootCA", &shared.root),
            info(-1_193_245_127, CA_NAME, &shared.issuing),
        ]
    }))
    .into_response()
}

async fn download(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<PeerCertificates>,
    Path(subject_dn): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = raw_path_parameter_refusal(uri.path(), "/v1/ca/", "subject_dn") {
        return refusal;
    }
    match admit(&shared, &headers, &peer).await {
        Err(response) => return response,
        Ok(Behaviour::BrokenChain) => {
            shared.lock().chain_downloads += 1;
            return error(StatusCode::INTERNAL_SERVER_ERROR, "General failure.");
        }
        Ok(_) => {}
    }
    let normalize = |dn: &str| dn.replace(", ", ",");
    let pem = if normalize(&subject_dn) == normalize(&shared.issuing.subject().to_string()) {
        format!("{}{}", shared.issuing.to_pem(), shared.root.to_pem())
    } else if normalize(&subject_dn) == normalize(&shared.root.subject().to_string()) {
        shared.root.to_pem()
    } else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("CA with DN: {subject_dn} does not exist."),
        );
    };
    shared.lock().chain_downloads += 1;
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"IssuingCA-chain.pem\"",
            ),
        ],
        pem,
    )
        .into_response()
}

/// A `simple`-style path parameter (the REST contract's style for `{subject_dn}` and
/// `{request_id}`) is one string only when its reserved characters are percent-encoded:
/// a raw ',' separates list items, and RFC 3986's other reserved characters end or split
/// the segment. Refuses, as a contract-checking gateway does, a raw value with any of them.
fn raw_path_parameter_refusal(path: &str, after: &str, name: &str) -> Option<Response> {
    let start = path.find(after)? + after.len();
    let segment = path[start..].split('/').next().unwrap_or_default();
    let raw = segment.chars().find(|c| ":?#[]@!$&'()*+,;=".contains(*c))?;
    Some(error(
        StatusCode::BAD_REQUEST,
        &format!(
            "path parameter {name}: {raw:?} is not percent-encoded (RFC 3986); a ',' in a \
             simple-style parameter separates list items"
        ),
    ))
}

/// `EnrollCertificateRestRequest`, as far as the simulator reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EnrollRequest {
    certificate_request: String,
    certificate_profile_name: String,
    end_entity_profile_name: String,
    certificate_authority_name: String,
    username: String,
    password: String,
    include_chain: bool,
    response_format: Option<String>,
    end_time: Option<String>,
}

async fn enroll(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<PeerCertificates>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut inner = shared.lock();
        inner.enrollments += 1;
        inner.last_enrollment = serde_json::from_slice(&body).ok();
    }
    let behaviour = match admit(&shared, &headers, &peer).await {
        Ok(behaviour) => behaviour,
        Err(response) => return response,
    };
    if let Behaviour::Reject(why) = &behaviour {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let Ok(body) = serde_json::from_slice::<EnrollRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid input. The body is not JSON.",
        );
    };
    let format = body
        .response_format
        .as_deref()
        .unwrap_or("DER")
        .to_ascii_uppercase();
    if format != "DER" {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid input. Response format can only be DER or PKCS7 (the simulator does DER)",
        );
    }
    if body.certificate_authority_name != CA_NAME {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "CA with name {} doesn't exist.",
                body.certificate_authority_name
            ),
        );
    }
    if body.end_entity_profile_name != END_ENTITY_PROFILE {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "End entity profile with name '{}' not found.",
                body.end_entity_profile_name
            ),
        );
    }
    match body.certificate_profile_name.as_str() {
        CERTIFICATE_PROFILE | APPROVAL_PROFILE => {}
        UNAVAILABLE_PROFILE => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Certificate profile '{UNAVAILABLE_PROFILE}' is not among the available \
                     certificate profiles of end entity profile '{END_ENTITY_PROFILE}'."
                ),
            );
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("Certificate profile with name '{other}' does not exist."),
            );
        }
    }
    if body.username.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "Username must not be empty.");
    }
    if body.password.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "Password must be set for end entity profile k8s-workloads.",
        );
    }
    let csr = match Csr::parse(body.certificate_request.as_bytes()) {
        Ok(csr) => csr,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid certificate request: {e}"),
            );
        }
    };
    let duration = match body.end_time.as_deref().map(parse_end_time) {
        None => PROFILE_VALIDITY,
        Some(Ok(duration)) => duration,
        Some(Err(why)) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let mut request = SignRequest::new(csr, "");
    request.duration = Some(duration);
    {
        // As EJBCA: enrolling an end entity again sets its password, and finalizing an
        // earlier enrollment of it then needs the new one.
        let mut inner = shared.lock();
        inner.end_entities.push(body.username.clone());
        let same: Vec<i64> = inner
            .held_end_entities
            .iter()
            .filter(|(_, name)| **name == body.username)
            .map(|(id, _)| *id)
            .collect();
        for id in same {
            if let Some(Held::Waiting { password, .. } | Held::Approved { password, .. }) =
                inner.held.get_mut(&id)
            {
                password.clone_from(&body.password);
            }
        }
    }

    if body.certificate_profile_name == APPROVAL_PROFILE {
        let id = {
            let mut inner = shared.lock();
            inner.next_request_id += 1;
            let id = inner.next_request_id;
            inner.held.insert(
                id,
                Held::Waiting {
                    request,
                    password: body.password,
                },
            );
            inner.held_end_entities.insert(id, body.username.clone());
            id
        };
        if behaviour == Behaviour::WaitingWithoutId {
            return (
                StatusCode::ACCEPTED,
                Json(json!({
                    "status_code": 202,
                    "info_message": format!("Request with Id '{id}' has been sent for approval"),
                })),
            )
                .into_response();
        }
        return waiting(&shared, id, "has been sent for approval");
    }
    if behaviour == Behaviour::WrongKey {
        let other = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("someone-else.example.test")
            .build();
        match Csr::parse(other.csr_pem.as_bytes()) {
            Ok(csr) => request.csr = csr,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "General failure."),
        }
    }
    match issue(&shared, &request).await {
        Ok(leaf) => {
            shared.lock().database.push(Issued {
                username: body.username.clone(),
                at: jiff::Timestamp::now(),
                leaf: leaf.clone(),
            });
            if behaviour == Behaviour::LoseAnswerToEnrollment {
                return std::future::pending::<Response>().await;
            }
            let mut json = certificate_json(&shared, &leaf, body.include_chain);
            if behaviour == Behaviour::BrokenChain {
                let other = TestCa::root(KeyKind::EcdsaP256, "Some Other Root");
                json["certificate_chain"] = json!([
                    base64::engine::general_purpose::STANDARD.encode(&other.cert().cert_der)
                ]);
            }
            (StatusCode::CREATED, Json(json)).into_response()
        }
        Err(response) => response,
    }
}

/// The 202 of a request waiting for approval (`ExceptionInfoRestResponse`).
fn waiting(shared: &Shared, id: i64, what: &str) -> Response {
    let api_url = shared
        .api_url
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "status_code": 202,
            "info_message": format!("Request with Id '{id}' {what}"),
            "request_id": id,
            "link": format!("{api_url}/v1/certificate/{id}/finalize"),
        })),
    )
        .into_response()
}

/// `FinalizeRestRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FinalizeRequest {
    response_format: String,
    password: String,
}

async fn finalize(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<PeerCertificates>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.lock().finalizations += 1;
    if let Err(response) = admit(&shared, &headers, &peer).await {
        return response;
    }
    let Ok(id) = request_id.parse::<i64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid request id '{request_id}'"),
        );
    };
    let Ok(body) = serde_json::from_slice::<FinalizeRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid input. The body is not JSON.",
        );
    };
    if !matches!(body.response_format.as_str(), "DER" | "PEM") {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid response format. Cannot create keystore for certificate request with \
             user generated keys",
        );
    }
    // Read the state and, for an approved request, claim its finalization in one step
    // under the lock: of two racing calls, only one signs.
    let held = {
        let mut inner = shared.lock();
        match inner.held.get_mut(&id) {
            Some(held @ Held::Approved { .. }) => {
                if let Held::Approved { password, .. } = held
                    && *password != body.password
                {
                    None
                } else {
                    Some(std::mem::replace(held, Held::Finalized))
                }
            }
            Some(held) => Some(held.clone()),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("Could not find request with Id '{id}'"),
                );
            }
        }
    };
    match held {
        None => error(StatusCode::FORBIDDEN, "Wrong username or password"),
        Some(Held::Waiting { .. }) => waiting(&shared, id, "is still waiting for approval"),
        Some(Held::Denied(comment)) => error(
            StatusCode::BAD_REQUEST,
            &format!("Request with Id '{id}' has been rejected: {comment}"),
        ),
        Some(Held::Finalized) => error(
            StatusCode::BAD_REQUEST,
            &format!("Enrollment with Id '{id}' has already been finalized"),
        ),
        Some(Held::Approved { request, password }) => match issue(&shared, &request).await {
            // As EJBCA's finalize: the certificate alone, without its chain.
            Ok(leaf) => {
                {
                    let mut inner = shared.lock();
                    let username = inner
                        .held_end_entities
                        .get(&id)
                        .cloned()
                        .unwrap_or_default();
                    inner.database.push(Issued {
                        username,
                        at: jiff::Timestamp::now(),
                        leaf: leaf.clone(),
                    });
                }
                let pem = body.response_format == "PEM";
                let mut json = certificate_json(&shared, &leaf, false);
                if pem {
                    json["certificate"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(leaf.to_pem()));
                    json["response_format"] = json!("PEM");
                }
                (StatusCode::CREATED, Json(json)).into_response()
            }
            Err(response) => {
                shared
                    .lock()
                    .held
                    .insert(id, Held::Approved { request, password });
                response
            }
        },
    }
}

/// `CertificateRestResponse` for `leaf`, with the CA chain (root first, so that clients
/// must order it) when asked.
fn certificate_json(shared: &Shared, leaf: &Certificate, include_chain: bool) -> Value {
    let (pem, double) = {
        let inner = shared.lock();
        (inner.answer_in_pem, inner.double_base64)
    };
    let encode = |cert: &Certificate| {
        let b64 = base64::engine::general_purpose::STANDARD;
        let once = if pem {
            b64.encode(cert.to_pem())
        } else {
            b64.encode(cert.der())
        };
        if double { b64.encode(once) } else { once }
    };
    let mut body = json!({
        "certificate": encode(leaf),
        "serial_number": leaf.serial_hex().to_ascii_uppercase(),
        "response_format": if pem { "PEM" } else { "DER" },
        "certificate_profile": CERTIFICATE_PROFILE,
        "end_entity_profile": END_ENTITY_PROFILE,
    });
    if include_chain {
        body["certificate_chain"] = json!([encode(&shared.root), encode(&shared.issuing)]);
    }
    body
}

/// Signs with the local CA.
async fn issue(shared: &Shared, request: &SignRequest) -> Result<Certificate, Response> {
    match shared.ca.sign(request).await {
        Ok(Outcome::Issued(bundle)) => match bundle.leaf() {
            Some(leaf) => {
                shared.lock().issued += 1;
                Ok(leaf.clone())
            }
            None => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "General failure.")),
        },
        Err(certwright_pki::Error::Rejected { reason }) => {
            Err(error(StatusCode::BAD_REQUEST, &reason))
        }
        _ => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "General failure.")),
    }
}

/// One search criterion, as a test on a certificate in the database.
type Criterion = Box<dyn Fn(&Issued) -> bool + Send>;

#[derive(Deserialize)]
struct SearchRequest {
    max_number_of_results: Option<i64>,
    #[serde(default)]
    criteria: Vec<SearchCriterion>,
}

#[derive(Deserialize)]
struct SearchCriterion {
    property: String,
    value: String,
    operation: String,
}

/// `POST /v1/certificate/search` (`SearchCertificatesRestRequest`): the criteria EJBCA
/// documents for it, all of which must hold; answers `SearchCertificatesRestResponse`.
async fn search(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<PeerCertificates>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.lock().searches += 1;
    if let Err(response) = admit(&shared, &headers, &peer).await {
        return response;
    }
    let Ok(request) = serde_json::from_slice::<SearchRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid input. The body is not JSON.",
        );
    };
    let limit = match request.max_number_of_results {
        Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid search request content, max_number_of_results must be positive.",
            );
        }
    };
    let mut tests: Vec<Criterion> = Vec::new();
    for c in request.criteria {
        let value = c.value.clone();
        let test: Criterion = match (c.property.as_str(), c.operation.as_str()) {
            ("QUERY", "EQUAL") => Box::new(move |i: &Issued| {
                i.username == value
                    || i.leaf.subject().to_string() == value
                    || i.leaf.serial_hex().eq_ignore_ascii_case(&value)
            }),
            ("QUERY", "LIKE") => {
                let needle = value.trim_matches('%').to_string();
                Box::new(move |i: &Issued| {
                    i.username.contains(&needle) || i.leaf.subject().to_string().contains(&needle)
                })
            }
            ("CA", "EQUAL") => Box::new(move |_: &Issued| value == CA_NAME),
            ("END_ENTITY_PROFILE", "EQUAL") => {
                Box::new(move |_: &Issued| value == END_ENTITY_PROFILE)
            }
            ("STATUS", "EQUAL") => Box::new(move |_: &Issued| value == "CERT_ACTIVE"),
            ("ISSUED_DATE", op @ ("AFTER" | "BEFORE")) => {
                // As EJBCA's search validation: `YYYY-MM-DDTHH:MM:SSZ` and nothing else.
                let strict =
                    value.len() == 20 && value.ends_with('Z') && value.as_bytes()[10] == b'T';
                let Some(at) = parse_date(&value).filter(|_| strict) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "Invalid search criteria content, '{value}' is not an ISO 8601 date."
                        ),
                    );
                };
                let after = op == "AFTER";
                Box::new(move |i: &Issued| if after { i.at > at } else { i.at < at })
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "Invalid search criteria content, unknown property {} or operation {}.",
                        c.property, c.operation
                    ),
                );
            }
        };
        tests.push(test);
    }
    let matching: Vec<Certificate> = shared
        .lock()
        .database
        .iter()
        .filter(|i| tests.iter().all(|t| t(i)))
        .map(|i| i.leaf.clone())
        .collect();
    let more_results = matching.len() > limit;
    let certificates: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|leaf| certificate_json(&shared, leaf, false))
        .collect();
    Json(json!({ "certificates": certificates, "more_results": more_results })).into_response()
}

/// A date in one of the ISO 8601 forms EJBCA reads (`yyyy-MM-dd HH:mm:ssZZ`, or with a
/// `T`).
fn parse_date(text: &str) -> Option<jiff::Timestamp> {
    let trimmed = text.trim();
    let normalized = if trimmed.len() > 10 && trimmed.as_bytes()[10] == b' ' {
        format!("{}T{}", &trimmed[..10], &trimmed[11..])
    } else {
        trimmed.to_string()
    };
    normalized.parse().ok()
}

/// `end_time` as EJBCA's ISO 8601 forms write it, as a lifetime from now.
fn parse_end_time(text: &str) -> Result<Duration, String> {
    let invalid = || format!("Invalid end_time '{text}'. Use ISO 8601: 'yyyy-MM-dd HH:mm:ssZZ'");
    let end = parse_date(text).ok_or_else(invalid)?;
    let now = jiff::Timestamp::now();
    if end <= now {
        return Err(format!("end_time '{text}' is in the past."));
    }
    let seconds = end.as_second() - now.as_second();
    u64::try_from(seconds)
        .map(Duration::from_secs)
        .map_err(|_| invalid())
}

/// `POST /oauth/token`: client credentials in the form or HTTP Basic.
async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Mode::OAuth {
        client_id,
        client_secret,
    } = &shared.mode
    else {
        return (StatusCode::NOT_FOUND, "no OAuth provider here").into_response();
    };
    let mut form = parse_form(&body);
    if let Some((id, secret)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(i, s)| (i.to_string(), s.to_string()))
        })
    {
        form.entry("client_id".to_string()).or_insert(id);
        form.entry("client_secret".to_string()).or_insert(secret);
    }
    let oauth_error = |status: StatusCode, code: &str, description: &str| {
        (
            status,
            Json(json!({ "error": code, "error_description": description })),
        )
            .into_response()
    };
    let given_secret = form.remove("client_secret");
    shared.lock().last_token_request = Some(form.clone());
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only client_credentials is supported",
        );
    }
    if form.get("client_id") != Some(client_id) || given_secret.as_ref() != Some(client_secret) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client or Invalid client credentials",
        );
    }
    let mut bytes = [0u8; 24];
    if shared.rng.fill(&mut bytes).is_err() {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "no randomness",
        );
    }
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let lifetime = {
        let mut inner = shared.lock();
        let lifetime = inner.token_lifetime;
        inner
            .tokens
            .insert(value.clone(), Instant::now() + lifetime);
        inner.tokens_issued += 1;
        lifetime
    };
    Json(json!({
        "access_token": value,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
    }))
    .into_response()
}

/// Decodes `application/x-www-form-urlencoded`.
fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|d| d as u8)
    }
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high * 16 + low);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                other => out.push(other),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (decode(name), decode(value)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let form = parse_form(b"grant_type=client_credentials&scope=a+b%2Fc&x=%zz&y=%4");
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["scope"], "a b/c");
        assert_eq!(form["x"], "%zz");
        assert_eq!(form["y"], "%4");
    }

    #[test]
    fn end_times_parse_in_ejbcas_forms() {
        let in_a_day = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
        let utc = in_a_day.strftime("%Y-%m-%d %H:%M:%S").to_string();
        for text in [
            format!("{utc}+00:00"),
            format!("{}Z", utc.replace(' ', "T")),
        ] {
            let lifetime = parse_end_time(&text).expect(&text);
            assert!(
                lifetime.as_secs().abs_diff(24 * 3600) < 5,
                "{text}: {lifetime:?}"
            );
        }
        assert!(parse_end_time("yesterday").is_err());
        assert!(parse_end_time("2001-01-01 00:00:00+00:00").is_err());
    }
}
