//! A change-ticket system over real TLS, modelled on Jira's REST API, for testing
//! certwright's check that a certificate request is covered by an approved change ticket.
//!
//! [`TicketSimulator`] answers Jira's `GET /rest/api/2/issue/{issueIdOrKey}` for the
//! tickets a test creates with [`TicketSimulator::set_status`]: 200 with the issue as
//! Jira serialises it (`id`, `key`, `self`, and `fields` with `summary`, `status`,
//! `created` and `updated`), or 404 with Jira's `errorMessages` for a ticket it does not
//! know. The status name certwright reads for Jira is at the JSON pointer
//! `/fields/status/name`; `/fields/status/statusCategory/key` (`new`, `indeterminate`
//! or `done`) is derived from the name as Jira's default workflows do.
//!
//! Every request must authenticate, as Jira Data Center does: `Authorization: Bearer
//! <token>` with [`TicketSimulator::token`] (a personal access token), or HTTP Basic with
//! [`TicketSimulator::basic_credentials`]. Anything else is answered 401 with Jira's
//! message and `WWW-Authenticate: Basic realm="tickets"`, and counted
//! ([`TicketSimulator::unauthenticated`]); the simulator never keeps the credentials it
//! was sent.
//!
//! [`TicketBehaviour`] puts something in front of the ticket system: a single sign-on
//! proxy answering with its HTML login page, an outage (503), or a slow link. Lookups
//! are counted, in all and per key, so that tests can assert on caching.
//!
//! Simplifications: keys are matched exactly (case-sensitive, where Jira is not), a
//! numeric issue id is accepted in place of the key as Jira does, query parameters such
//! as `fields` are ignored (every field is returned), and no other Jira resource exists
//! (other paths answer 404 after authentication).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::tls::{RunningServer, TlsOptions, TlsServer};

/// The bearer token (a Jira personal access token) the simulator accepts.
const TOKEN: &str = "sim-token-7c1d";
/// The user name the simulator accepts with HTTP Basic.
const USER: &str = "certwright";
/// The password the simulator accepts with HTTP Basic.
const PASSWORD: &str = "sim-password-3b9e";

/// Issue ids are numbered from here up, as in a fresh Jira.
const FIRST_ISSUE_ID: u64 = 10_001;

/// The content type of Jira's JSON answers.
const JSON_CONTENT_TYPE: &str = "application/json;charset=UTF-8";

/// Jira's `expand` list on an issue.
const ISSUE_EXPAND: &str =
    "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations";

/// How the simulator answers from now on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TicketBehaviour {
    /// Answer as Jira does.
    #[default]
    Normal,
    /// 200 with a `text/html` login page on every request, credentials or not: a single
    /// sign-on proxy in front of the ticket system that wants a browser.
    Html,
    /// 503 with a small JSON error on every request, credentials or not: the ticket
    /// system is down for maintenance.
    Unavailable,
    /// Wait this long on every request, then answer as [`TicketBehaviour::Normal`] does.
    Slow(Duration),
}

/// One ticket.
#[derive(Clone, Debug)]
struct Ticket {
    id: u64,
    summary: String,
    status: String,
    created: String,
    updated: String,
}

#[derive(Debug, Default)]
struct Inner {
    behaviour: TicketBehaviour,
    tickets: HashMap<String, Ticket>,
    /// How many tickets were ever created: the next one's id is `FIRST_ISSUE_ID` plus this.
    created: u64,
    lookups: u64,
    lookups_by_key: HashMap<String, u64>,
    unauthenticated: u64,
}

impl Inner {
    /// The ticket named by `id_or_key`: a key, else a numeric issue id.
    fn find(&self, id_or_key: &str) -> Option<(&str, &Ticket)> {
        if let Some((key, ticket)) = self.tickets.get_key_value(id_or_key) {
            return Some((key.as_str(), ticket));
        }
        let id = id_or_key.parse::<u64>().ok()?;
        self.tickets
            .iter()
            .find(|(_, ticket)| ticket.id == id)
            .map(|(key, ticket)| (key.as_str(), ticket))
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// The server's base URL, for the `self` links; set once the server listens (before
    /// anyone can know its port).
    base_url: OnceLock<String>,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn base_url(&self) -> &str {
        self.base_url.get().map(String::as_str).unwrap_or_default()
    }
}

/// A Jira-like change-ticket system on 127.0.0.1 over TLS. Stops when dropped.
pub struct TicketSimulator {
    server: RunningServer,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TicketSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSimulator")
            .field("url", &self.server.url())
            .field("behaviour", &self.shared.lock().behaviour)
            .finish_non_exhaustive()
    }
}

impl TicketSimulator {
    /// Starts a simulator with no tickets that answers normally. Must be called inside a
    /// tokio runtime.
    ///
    /// # Errors
    /// When the server cannot start (see [`TlsServer::start`]).
    pub async fn start() -> io::Result<TicketSimulator> {
        let shared = Arc::new(Shared::default());
        let router = Router::new()
            .route("/rest/api/2/issue/{key}", get(issue))
            .fallback(fallback)
            .with_state(shared.clone());
        let server = TlsServer::start(router, TlsOptions::new()).await?;
        // Nobody can have sent a request yet: the port was unknown until now.
        let _ = shared.base_url.set(server.url());
        Ok(TicketSimulator { server, shared })
    }

    /// The base URL to configure: `https://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The PEM certificate of the CA that issued the simulator's TLS certificate: what a
    /// client must trust.
    pub fn ca_pem(&self) -> &str {
        self.server.ca_pem()
    }

    /// The running server.
    pub fn server(&self) -> &RunningServer {
        &self.server
    }

    /// The token the simulator accepts as `Authorization: Bearer <token>`.
    pub fn token(&self) -> &str {
        TOKEN
    }

    /// The user name and password the simulator accepts with HTTP Basic.
    pub fn basic_credentials(&self) -> (&str, &str) {
        (USER, PASSWORD)
    }

    /// Creates the ticket `key` with this status (such as `Open`, `In Review`,
    /// `Approved` or `Rejected`), or changes the status of the existing one, keeping its
    /// id. Either way its `updated` time becomes now.
    pub fn set_status(&self, key: &str, status: &str) {
        let now = jira_time(jiff::Timestamp::now());
        let mut inner = self.shared.lock();
        if let Some(ticket) = inner.tickets.get_mut(key) {
            ticket.status = status.to_string();
            ticket.updated = now;
            return;
        }
        let id = FIRST_ISSUE_ID + inner.created;
        inner.created += 1;
        inner.tickets.insert(
            key.to_string(),
            Ticket {
                id,
                summary: format!("Certificate change {key}"),
                status: status.to_string(),
                created: now.clone(),
                updated: now,
            },
        );
    }

    /// Deletes the ticket `key`: lookups answer 404 from now on. `false` when there was
    /// no such ticket. A ticket created again under the same key gets a new id.
    pub fn remove(&self, key: &str) -> bool {
        self.shared.lock().tickets.remove(key).is_some()
    }

    /// Changes how the simulator answers from now on.
    pub fn set_behaviour(&self, behaviour: TicketBehaviour) {
        self.shared.lock().behaviour = behaviour;
    }

    /// How many `GET /rest/api/2/issue/{issueIdOrKey}` requests arrived, whatever they
    /// were answered (refused ones and those under any behaviour included).
    pub fn lookups(&self) -> u64 {
        self.shared.lock().lookups
    }

    /// How many of [`TicketSimulator::lookups`] named exactly `key` in their path.
    pub fn lookups_of(&self, key: &str) -> u64 {
        self.shared
            .lock()
            .lookups_by_key
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// How many requests were answered 401 for missing or wrong credentials. Requests
    /// answered by a [`TicketBehaviour::Html`] or [`TicketBehaviour::Unavailable`] front
    /// never get as far as authentication and are not counted.
    pub fn unauthenticated(&self) -> u64 {
        self.shared.lock().unauthenticated
    }
}

/// A timestamp as Jira writes them: `2026-12-03T10:00:00.000+0000`.
fn jira_time(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S.%3f+0000").to_string()
}

/// A JSON answer with Jira's content type.
fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, JSON_CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// Whether the request carries the simulator's bearer token or Basic credentials (the
/// scheme name in any case, as RFC 9110 allows).
fn authenticated(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, credentials)) = value.split_once(' ') else {
        return false;
    };
    let credentials = credentials.trim_matches(' ');
    if scheme.eq_ignore_ascii_case("Bearer") {
        credentials == TOKEN
    } else if scheme.eq_ignore_ascii_case("Basic") {
        base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .is_ok_and(|decoded| decoded == format!("{USER}:{PASSWORD}").as_bytes())
    } else {
        false
    }
}

/// Jira's 401, counted.
fn refuse(shared: &Shared) -> Response {
    shared.lock().unauthenticated += 1;
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, JSON_CONTENT_TYPE),
            (header::WWW_AUTHENTICATE, "Basic realm=\"tickets\""),
        ],
        json!({
            "errorMessages": [
                "You are not authenticated. Authentication required to perform this operation."
            ],
            "errors": {},
        })
        .to_string(),
    )
        .into_response()
}

/// What the front of the ticket system answers under `behaviour`, or `None` to go on to
/// the ticket system itself (after the delay of [`TicketBehaviour::Slow`]).
async fn front(behaviour: TicketBehaviour) -> Option<Response> {
    match behaviour {
        TicketBehaviour::Normal => None,
        TicketBehaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        TicketBehaviour::Html => Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html;charset=UTF-8")],
                "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <title>Sign in - Corporate SSO</title></head>\
                 <body><h1>Sign in to continue to Tickets</h1>\
                 <form method=\"post\" action=\"/sso/login\">\
                 <input name=\"username\"><input name=\"password\" type=\"password\">\
                 <button type=\"submit\">Sign in</button></form></body></html>\n",
            )
                .into_response(),
        ),
        TicketBehaviour::Unavailable => Some(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "errorMessages": ["The ticket system is down for maintenance. Try again later."],
                "errors": {},
            }),
        )),
    }
}

/// `GET /rest/api/2/issue/{issueIdOrKey}`.
async fn issue(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let behaviour = {
        let mut inner = shared.lock();
        inner.lookups += 1;
        *inner.lookups_by_key.entry(key.clone()).or_insert(0) += 1;
        inner.behaviour
    };
    if let Some(response) = front(behaviour).await {
        return response;
    }
    if !authenticated(&headers) {
        return refuse(&shared);
    }
    let found = {
        let inner = shared.lock();
        inner
            .find(&key)
            .map(|(key, ticket)| issue_json(shared.base_url(), key, ticket))
    };
    match found {
        Some(body) => json_response(StatusCode::OK, &body),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({
                "errorMessages": ["Issue does not exist or you do not have permission to see it."],
                "errors": {},
            }),
        ),
    }
}

/// Every other request: authenticated, then 404.
async fn fallback(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let behaviour = shared.lock().behaviour;
    if let Some(response) = front(behaviour).await {
        return response;
    }
    if !authenticated(&headers) {
        return refuse(&shared);
    }
    json_response(
        StatusCode::NOT_FOUND,
        &json!({
            "errorMessages": [format!("No resource at {}", uri.path())],
            "errors": {},
        }),
    )
}

/// An issue as Jira serialises it.
fn issue_json(base_url: &str, key: &str, ticket: &Ticket) -> Value {
    let project = key.split('-').next().unwrap_or(key);
    json!({
        "expand": ISSUE_EXPAND,
        "id": ticket.id.to_string(),
        "self": format!("{base_url}/rest/api/2/issue/{}", ticket.id),
        "key": key,
        "fields": {
            "summary": ticket.summary,
            "issuetype": { "name": "Change", "subtask": false },
            "project": { "key": project },
            "status": {
                "description": "",
                "name": ticket.status,
                "statusCategory": status_category(base_url, &ticket.status),
            },
            "created": ticket.created,
            "updated": ticket.updated,
        },
    })
}

/// Jira's status category for a status name, as its default workflows assign them.
fn status_category(base_url: &str, status: &str) -> Value {
    let status = status.to_ascii_lowercase();
    let (id, key, color, name) = match status.as_str() {
        "open" | "to do" | "new" | "backlog" | "reopened" => (2, "new", "blue-gray", "To Do"),
        "approved" | "rejected" | "declined" | "done" | "closed" | "resolved" | "cancelled"
        | "canceled" => (3, "done", "green", "Done"),
        _ => (4, "indeterminate", "yellow", "In Progress"),
    };
    json!({
        "self": format!("{base_url}/rest/api/2/statuscategory/{id}"),
        "id": id,
        "key": key,
        "colorName": color,
        "name": name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = value.parse::<axum::http::HeaderValue>() {
            headers.insert(header::AUTHORIZATION, value);
        }
        headers
    }

    #[test]
    fn accepts_only_its_own_credentials() {
        let basic = |creds: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            )
        };
        assert!(authenticated(&with_authorization("Bearer sim-token-7c1d")));
        assert!(authenticated(&with_authorization("bearer sim-token-7c1d")));
        assert!(authenticated(&with_authorization(&basic(
            "certwright:sim-password-3b9e"
        ))));
        assert!(!authenticated(&HeaderMap::new()));
        assert!(!authenticated(&with_authorization("Bearer")));
        assert!(!authenticated(&with_authorization("Bearer sim-token-7c1e")));
        assert!(!authenticated(&with_authorization("Token sim-token-7c1d")));
        assert!(!authenticated(&with_authorization(&basic(
            "certwright:wrong"
        ))));
        assert!(!authenticated(&with_authorization("Basic not base64!")));
    }

    #[test]
    fn writes_times_as_jira_does() {
        let at = jiff::Timestamp::from_second(1_796_292_000).expect("a timestamp");
        assert_eq!(jira_time(at), "2026-12-03T10:00:00.000+0000");
    }

    #[test]
    fn derives_status_categories_from_names() {
        let key = |status: &str| status_category("", status)["key"].clone();
        assert_eq!(key("Open"), "new");
        assert_eq!(key("In Review"), "indeterminate");
        assert_eq!(key("Approved"), "done");
        assert_eq!(key("Rejected"), "done");
    }
}
