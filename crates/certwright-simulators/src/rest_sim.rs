//! A CA server speaking certwright's REST contract (`docs/backends/rest.md`) over real
//! TLS, for testing the `rest` backend and the engine above it.
//!
//! [`RestSimulator`] signs with a local CA (an intermediate under a test root) and behaves
//! as the test tells it at any moment ([`Behaviour`]): issue, hold for approval, reject,
//! rate limit, fail, answer garbage, or hang. It requires the credentials set with
//! [`RestSimulator::set_auth`], deduplicates submissions by `Idempotency-Key`, and counts
//! what it received so exactly-once tests can assert on it.
//!
//! It also answers cfssl's `POST /api/v1/cfssl/sign` and `/api/v1/cfssl/info` (without
//! `authsign`), in cfssl's envelope, for what a real `cfssl serve` cannot be made to do:
//! the same [`Behaviour`]s, and an `info` that fails or serves a stale CA ([`CfsslInfo`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use certwright_backend_ca::{LocalCa, LocalCaConfig};
use certwright_pki::{Backend, Outcome, Requester, SignRequest};
use certwright_x509::Csr;

use crate::fixtures::{CsrBuilder, KeyKind, TestCa};
use crate::tls::{RunningServer, TlsOptions, TlsServer};

/// The delay the simulator asks for in pending answers, in seconds.
pub const PENDING_RETRY_AFTER_SECS: u64 = 1;

/// How the simulator answers from now on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behaviour {
    /// Sign at once: 200 with the certificate and the chain (root first, to exercise
    /// ordering).
    #[default]
    Issue,
    /// Hold sign requests (202 with an id) until [`RestSimulator::approve`] or
    /// [`RestSimulator::deny`].
    Pending,
    /// Refuse sign requests by policy: 422 `{"reason": ...}`.
    Reject(String),
    /// 429 with `Retry-After: <seconds>` on every call.
    RateLimit(u64),
    /// 500 on every call.
    Fail500,
    /// 200 with an HTML login page on every call.
    Html200,
    /// 200 with JSON cut off in the middle on every call.
    TruncatedJson,
    /// 200 with a streamed body (no Content-Length) of this many bytes on every call.
    Oversized(usize),
    /// Accept every call and never answer.
    Hang,
    /// Sign, but a certificate for another key than the CSR's.
    WrongKey,
}

/// What the cfssl `info` endpoint answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CfsslInfo {
    /// The issuing CA and the root, in cfssl's envelope.
    #[default]
    Chain,
    /// 500, as a cfssl that cannot read its CA certificate.
    Fail500,
    /// The certificate of an unrelated CA, as a cfssl serves before and after a CA
    /// rotation: it issued none of the certificates the simulator signs.
    OtherCa,
}

/// The credentials the simulator requires.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimAuth {
    /// Anyone may call.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// HTTP Basic with these credentials.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
}

/// What became of a request held for approval.
#[derive(Clone, Debug)]
enum Held {
    Waiting(SignRequest),
    Approved(SignRequest),
    /// Approved, and one poll is signing it: other polls meanwhile hear that it is still
    /// pending, so that a request is signed once however many polls race.
    Signing,
    Issued(Value),
    Denied(String),
}

/// What a sign submission was answered, replayed for the same `Idempotency-Key`.
#[derive(Clone, Debug)]
enum Answered {
    Issued(Value),
    Pending(String),
}

#[derive(Debug, Default)]
struct Inner {
    behaviour: Behaviour,
    auth: SimAuth,
    cfssl_info: CfsslInfo,
    submissions: u64,
    polls: u64,
    info_calls: u64,
    issued: u64,
    signings_started: u64,
    signing_delay: Duration,
    last_idempotency_key: Option<String>,
    last_sign_body: Option<Value>,
    answered: HashMap<String, Answered>,
    held: HashMap<String, Held>,
    next_id: u64,
}

struct Shared {
    ca: LocalCa,
    chain_pem: String,
    root_pem: String,
    other_ca_pem: String,
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

/// A certwright-contract REST CA on 127.0.0.1 over TLS. Stops when dropped.
pub struct RestSimulator {
    server: RunningServer,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RestSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestSimulator")
            .field("url", &self.server.url())
            .field("behaviour", &self.shared.lock().behaviour)
            .finish_non_exhaustive()
    }
}

impl RestSimulator {
    /// Starts a simulator that issues at once and requires no credentials.
    ///
    /// # Errors
    /// When the server cannot start (see [`TlsServer::start`]).
    pub async fn start() -> io::Result<RestSimulator> {
        Self::start_with(TlsOptions::new()).await
    }

    /// Starts a simulator with these TLS options (e.g. requiring client certificates).
    ///
    /// # Errors
    /// When the server cannot start (see [`TlsServer::start`]).
    pub async fn start_with(tls: TlsOptions) -> io::Result<RestSimulator> {
        let root = TestCa::root(KeyKind::EcdsaP256, "certwright REST simulator root");
        let issuing = root.intermediate(KeyKind::EcdsaP256, "certwright REST simulator CA");
        let chain_pem = format!("{}{}", issuing.cert_pem(), root.cert_pem());
        let ca = LocalCa::from_pem(
            chain_pem.as_bytes(),
            issuing.key_pem().as_bytes(),
            LocalCaConfig::default(),
        )
        .map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            ca,
            // Root first: the client must order what it gets.
            chain_pem: format!("{}{}", root.cert_pem(), issuing.cert_pem()),
            root_pem: root.cert_pem().to_string(),
            other_ca_pem: TestCa::root(KeyKind::EcdsaP256, "certwright REST simulator old CA")
                .cert_pem()
                .to_string(),
            inner: Mutex::new(Inner::default()),
        });
        let router = Router::new()
            .route("/sign", post(sign))
            .route("/requests/{id}", get(poll))
            .route("/health", get(health))
            .route("/api/v1/cfssl/sign", post(cfssl_sign))
            .route("/api/v1/cfssl/info", post(cfssl_info))
            .with_state(shared.clone());
        let server = TlsServer::start(router, tls).await?;
        Ok(RestSimulator { server, shared })
    }

    /// The base URL to configure: `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The caBundle that trusts the simulator's TLS certificate.
    pub fn tls_ca_pem(&self) -> &str {
        self.server.ca_pem()
    }

    /// The root of the certificates the simulator issues.
    pub fn issuing_root_pem(&self) -> &str {
        &self.shared.root_pem
    }

    /// The running server.
    pub fn server(&self) -> &RunningServer {
        &self.server
    }

    /// Changes how the simulator answers from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.lock().behaviour = behaviour;
    }

    /// Changes what the cfssl `info` endpoint answers from now on.
    pub fn set_cfssl_info(&self, info: CfsslInfo) {
        self.shared.lock().cfssl_info = info;
    }

    /// Makes every signature take this long from now on, as a CA behind a slow HSM does,
    /// so that tests can overlap calls with a signature in progress. Zero by default.
    pub fn set_signing_delay(&self, delay: Duration) {
        self.shared.lock().signing_delay = delay;
    }

    /// Changes the credentials the simulator requires from now on.
    pub fn set_auth(&self, auth: SimAuth) {
        self.shared.lock().auth = auth;
    }

    /// Approves a held request; the next poll gets the certificate. `false` when no
    /// request with that id waits.
    pub fn approve(&self, id: &str) -> bool {
        let mut inner = self.shared.lock();
        match inner.held.get(id).cloned() {
            Some(Held::Waiting(request)) => {
                inner.held.insert(id.to_string(), Held::Approved(request));
                true
            }
            _ => false,
        }
    }

    /// Denies a held request with `reason`; the next poll gets 422 with it. `false` when
    /// no request with that id waits.
    pub fn deny(&self, id: &str, reason: &str) -> bool {
        let mut inner = self.shared.lock();
        match inner.held.get(id) {
            Some(Held::Waiting(_)) => {
                inner
                    .held
                    .insert(id.to_string(), Held::Denied(reason.to_string()));
                true
            }
            _ => false,
        }
    }

    /// The ids of requests waiting for approval.
    pub fn waiting_ids(&self) -> Vec<String> {
        let inner = self.shared.lock();
        let mut ids: Vec<String> = inner
            .held
            .iter()
            .filter(|(_, held)| matches!(held, Held::Waiting(_)))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// How many `POST /sign` and `POST /api/v1/cfssl/sign` calls arrived (with valid
    /// credentials or not, whatever the behaviour).
    pub fn sign_submissions(&self) -> u64 {
        self.shared.lock().submissions
    }

    /// How many `POST /api/v1/cfssl/info` calls arrived.
    pub fn cfssl_info_calls(&self) -> u64 {
        self.shared.lock().info_calls
    }

    /// How many `GET /requests/{id}` calls arrived.
    pub fn polls(&self) -> u64 {
        self.shared.lock().polls
    }

    /// How many certificates were signed (a replayed answer signs none).
    pub fn certificates_issued(&self) -> u64 {
        self.shared.lock().issued
    }

    /// How many signings began, counted before the signing delay: with a delay set, a
    /// test can tell that a request is being signed right now.
    pub fn signings_started(&self) -> u64 {
        self.shared.lock().signings_started
    }

    /// The `Idempotency-Key` of the last sign submission.
    pub fn last_idempotency_key(&self) -> Option<String> {
        self.shared.lock().last_idempotency_key.clone()
    }

    /// The JSON body of the last sign submission, when it was JSON.
    pub fn last_sign_body(&self) -> Option<Value> {
        self.shared.lock().last_sign_body.clone()
    }
}

/// The sign body as the contract defines it.
#[derive(Debug, Deserialize)]
struct SignBody {
    csr: String,
    #[serde(default)]
    duration_seconds: Option<u64>,
    #[serde(default)]
    is_ca: bool,
    #[serde(default)]
    usages: Vec<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    requester: Option<RequesterBody>,
}

#[derive(Debug, Deserialize)]
struct RequesterBody {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

fn reason(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({ "reason": reason }))).into_response()
}

fn authorized(auth: &SimAuth, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth {
        SimAuth::None => true,
        SimAuth::Bearer(token) => given.and_then(|v| v.strip_prefix("Bearer ")) == Some(token),
        SimAuth::Basic { username, password } => given
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|decoded| decoded == format!("{username}:{password}").as_bytes()),
    }
}

/// The answer every endpoint gives under a failure behaviour, or `None` to go on.
async fn failure(behaviour: &Behaviour) -> Option<Response> {
    let response = match behaviour {
        Behaviour::RateLimit(seconds) => {
            let mut response = reason(StatusCode::TOO_MANY_REQUESTS, "slow down");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
            response
        }
        Behaviour::Fail500 => reason(StatusCode::INTERNAL_SERVER_ERROR, "the CA database is down"),
        Behaviour::Html200 => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><head><title>Corporate SSO</title>\
             <script>window.location.hash = 'login';</script></head>\
             <body><h1>Sign in</h1><form><input name=\"user\"></form></body></html>",
        )
            .into_response(),
        Behaviour::TruncatedJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"certificate\": \"-----BEGIN CERTIFICATE-----\\nMIIB",
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
        Behaviour::Issue | Behaviour::Pending | Behaviour::Reject(_) | Behaviour::WrongKey => {
            return None;
        }
    };
    Some(response)
}

async fn sign(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (behaviour, auth, replay) = {
        let mut inner = shared.lock();
        inner.submissions += 1;
        inner.last_idempotency_key.clone_from(&key);
        inner.last_sign_body = serde_json::from_slice(&body).ok();
        let replay = key.as_ref().and_then(|k| inner.answered.get(k).cloned());
        (inner.behaviour.clone(), inner.auth.clone(), replay)
    };
    if !authorized(&auth, &headers) {
        return reason(StatusCode::UNAUTHORIZED, "invalid credentials");
    }
    if let Some(response) = failure(&behaviour).await {
        return response;
    }
    if let Behaviour::Reject(why) = &behaviour {
        return reason(StatusCode::UNPROCESSABLE_ENTITY, why);
    }
    match replay {
        Some(Answered::Issued(body)) => return (StatusCode::OK, axum::Json(body)).into_response(),
        Some(Answered::Pending(id)) => return pending(&id),
        None => {}
    }
    let request = match parse_sign_body(&body) {
        Ok(request) => request,
        Err(why) => return reason(StatusCode::BAD_REQUEST, &why),
    };
    let answered = match behaviour {
        Behaviour::Pending => {
            let mut inner = shared.lock();
            inner.next_id += 1;
            let id = format!("req-{}", inner.next_id);
            inner.held.insert(id.clone(), Held::Waiting(request));
            Answered::Pending(id)
        }
        Behaviour::WrongKey => {
            let other = CsrBuilder::new(KeyKind::EcdsaP256)
                .common_name("someone-else.example.test")
                .build();
            let Ok(csr) = Csr::parse(other.csr_pem.as_bytes()) else {
                return reason(StatusCode::INTERNAL_SERVER_ERROR, "cannot make a wrong key");
            };
            match issue(&shared, &SignRequest { csr, ..request }).await {
                Ok(body) => Answered::Issued(body),
                Err(response) => return response,
            }
        }
        _ => match issue(&shared, &request).await {
            Ok(body) => Answered::Issued(body),
            Err(response) => return response,
        },
    };
    if let Some(key) = key {
        shared.lock().answered.insert(key, answered.clone());
    }
    match answered {
        Answered::Issued(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Answered::Pending(id) => pending(&id),
    }
}

async fn poll(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (behaviour, auth) = {
        let mut inner = shared.lock();
        inner.polls += 1;
        (inner.behaviour.clone(), inner.auth.clone())
    };
    if !authorized(&auth, &headers) {
        return reason(StatusCode::UNAUTHORIZED, "invalid credentials");
    }
    if let Some(response) = failure(&behaviour).await {
        return response;
    }
    // Read the state and, for an approved request, claim its signing in one step under
    // the lock: of two racing polls, only one signs.
    let held = {
        let mut inner = shared.lock();
        match inner.held.get_mut(&id) {
            Some(held @ Held::Approved(_)) => Some(std::mem::replace(held, Held::Signing)),
            Some(held) => Some(held.clone()),
            None => None,
        }
    };
    match held {
        None => reason(StatusCode::NOT_FOUND, &format!("no request {id}")),
        Some(Held::Waiting(_) | Held::Signing) => pending(&id),
        Some(Held::Denied(why)) => reason(StatusCode::UNPROCESSABLE_ENTITY, &why),
        Some(Held::Issued(body)) => (StatusCode::OK, axum::Json(body)).into_response(),
        Some(Held::Approved(request)) => {
            let claim = SigningClaim {
                shared: &shared,
                id: &id,
                request,
                done: false,
            };
            match issue(&shared, &claim.request).await {
                Ok(body) => {
                    claim.issued(body.clone());
                    (StatusCode::OK, axum::Json(body)).into_response()
                }
                Err(response) => response,
            }
        }
    }
}

/// A poll's claim on signing an approved request. Unless [`SigningClaim::issued`] ends
/// it, dropping it (signing failed, or the client left mid-signature) makes the request
/// approved again, for the next poll to sign.
struct SigningClaim<'a> {
    shared: &'a Shared,
    id: &'a str,
    request: SignRequest,
    done: bool,
}

impl SigningClaim<'_> {
    fn issued(mut self, body: Value) {
        self.done = true;
        self.shared
            .lock()
            .held
            .insert(self.id.to_string(), Held::Issued(body));
    }
}

impl Drop for SigningClaim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .lock()
                .held
                .insert(self.id.to_string(), Held::Approved(self.request.clone()));
        }
    }
}

async fn health(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let (behaviour, auth) = {
        let inner = shared.lock();
        (inner.behaviour.clone(), inner.auth.clone())
    };
    if !authorized(&auth, &headers) {
        return reason(StatusCode::UNAUTHORIZED, "invalid credentials");
    }
    if let Some(response) = failure(&behaviour).await {
        return response;
    }
    (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
}

fn pending(id: &str) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": id, "retry_after": PENDING_RETRY_AFTER_SECS })),
    )
        .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(PENDING_RETRY_AFTER_SECS),
    );
    response
}

fn parse_sign_body(body: &[u8]) -> Result<SignRequest, String> {
    let body: SignBody =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a sign request: {e}"))?;
    let csr = Csr::parse(body.csr.as_bytes()).map_err(|e| format!("unusable CSR: {e}"))?;
    let mut request = SignRequest::new(csr, body.idempotency_key.unwrap_or_default());
    request.duration = body.duration_seconds.map(Duration::from_secs);
    request.is_ca = body.is_ca;
    request.usages = body.usages;
    request.template = body.template;
    if let Some(requester) = body.requester {
        request.requester = Requester {
            namespace: requester.namespace,
            name: requester.name,
        };
    }
    Ok(request)
}

/// cfssl's `signer.SignRequest`, as far as the simulator reads it.
#[derive(Debug, Deserialize)]
struct CfsslSignBody {
    certificate_request: String,
}

/// A success in cfssl's envelope.
fn cfssl_result(result: Value) -> Response {
    axum::Json(json!({ "success": true, "result": result, "errors": [], "messages": [] }))
        .into_response()
}

/// A failure in cfssl's envelope: HTTP 400 with cfssl's code, as cfssl answers its own.
fn cfssl_failure(code: u32, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({
            "success": false,
            "result": null,
            "errors": [{ "code": code, "message": message }],
            "messages": [],
        })),
    )
        .into_response()
}

/// `POST /api/v1/cfssl/sign`: cfssl never holds a request, so `Pending` signs at once.
async fn cfssl_sign(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (behaviour, auth) = {
        let mut inner = shared.lock();
        inner.submissions += 1;
        inner.last_sign_body = serde_json::from_slice(&body).ok();
        (inner.behaviour.clone(), inner.auth.clone())
    };
    if !authorized(&auth, &headers) {
        return reason(StatusCode::UNAUTHORIZED, "invalid credentials");
    }
    if let Some(response) = failure(&behaviour).await {
        return response;
    }
    if let Behaviour::Reject(why) = &behaviour {
        // PolicyError/InvalidRequest.
        return cfssl_failure(5300, why);
    }
    let csr_pem = match serde_json::from_slice::<CfsslSignBody>(&body) {
        Ok(body) => body.certificate_request,
        Err(e) => return cfssl_failure(400, &format!("missing parameter: {e}")),
    };
    let csr_pem = if behaviour == Behaviour::WrongKey {
        CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("someone-else.example.test")
            .build()
            .csr_pem
    } else {
        csr_pem
    };
    let Ok(csr) = Csr::parse(csr_pem.as_bytes()) else {
        // CSRError/DecodeFailed.
        return cfssl_failure(9002, "CSR Decode failed");
    };
    match issue(&shared, &SignRequest::new(csr, "")).await {
        Ok(issued) => cfssl_result(json!({ "certificate": issued["certificate"] })),
        Err(response) => response,
    }
}

/// `POST /api/v1/cfssl/info`: the CA certificates, as [`CfsslInfo`] says.
async fn cfssl_info(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let (info, auth) = {
        let mut inner = shared.lock();
        inner.info_calls += 1;
        (inner.cfssl_info.clone(), inner.auth.clone())
    };
    if !authorized(&auth, &headers) {
        return reason(StatusCode::UNAUTHORIZED, "invalid credentials");
    }
    match info {
        CfsslInfo::Chain => cfssl_result(json!({ "certificate": shared.chain_pem })),
        CfsslInfo::OtherCa => cfssl_result(json!({ "certificate": shared.other_ca_pem })),
        CfsslInfo::Fail500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the CA certificate",
        )
            .into_response(),
    }
}

/// Signs with the local CA: the 200 body, or the error answer.
async fn issue(shared: &Shared, request: &SignRequest) -> Result<Value, Response> {
    let delay = {
        let mut inner = shared.lock();
        inner.signings_started += 1;
        inner.signing_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match shared.ca.sign(request).await {
        Ok(Outcome::Issued(bundle)) => {
            let Some(leaf) = bundle.leaf() else {
                return Err(reason(StatusCode::INTERNAL_SERVER_ERROR, "no certificate"));
            };
            shared.lock().issued += 1;
            Ok(json!({ "certificate": leaf.to_pem(), "chain": shared.chain_pem }))
        }
        Ok(_) => Err(reason(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the local CA did not sign",
        )),
        Err(certwright_pki::Error::Rejected { reason: why }) => {
            Err(reason(StatusCode::UNPROCESSABLE_ENTITY, &why))
        }
        Err(err) => Err(reason(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string())),
    }
}
