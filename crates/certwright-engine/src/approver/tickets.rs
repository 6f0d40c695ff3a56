//! Asks a ticket system about a change ticket: one HTTPS GET, bounded in time and size,
//! with the credentials from the policy's Secret in the cluster resource namespace.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certwright_backend_http::{HttpClient, HttpConfig, Method, Url, header};
use certwright_policy::ticket::{TicketConfig, TicketState};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::error::api_code;

/// The longest a ticket system may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// Credentials for a ticket system.
enum Credentials {
    Bearer(String),
    Basic(String, String),
}

/// Calls ticket systems; one HTTPS client per distinct CA bundle.
pub(crate) struct Tickets {
    client: Client,
    namespace: String,
    http: Mutex<HashMap<u64, Arc<HttpClient>>>,
}

impl Tickets {
    pub(crate) fn new(client: Client, namespace: String) -> Tickets {
        Tickets {
            client,
            namespace,
            http: Mutex::default(),
        }
    }

    /// What the ticket system says of `ticket`, or why it could not be asked (never
    /// with a credential in it).
    /// `reference` is what the ticket must name when the policy has a
    /// `referenceField` (the request's `<namespace>/<certificate>`).
    pub(crate) async fn check(
        &self,
        config: &TicketConfig,
        ticket: &str,
        reference: &str,
    ) -> Result<TicketState, String> {
        if !super::plan::ticket_id_ok(ticket) {
            return Err(format!("{ticket:?} is not a ticket id"));
        }
        let http = self.http_for(config.ca_bundle.as_deref())?;
        let url = Url::parse(&config.url_for(ticket))
            .map_err(|e| format!("the ticket URL is not a URL: {e}"))?;
        let mut request = http
            .request(Method::GET, url)
            .header(header::ACCEPT, "application/json");
        if let Some(secret) = &config.credentials_secret {
            request = match self.credentials(secret).await? {
                Credentials::Bearer(token) => request.bearer_auth(token),
                Credentials::Basic(user, password) => request.basic_auth(user, Some(password)),
            };
        }
        let answer = http.send(request).await.map_err(|e| e.to_string())?;
        match answer.status.as_u16() {
            200..=299 if answer.looks_like_html() => Err(
                "the ticket system answered HTML instead of JSON (a login page or a proxy?)"
                    .to_string(),
            ),
            200..=299 => Ok(config.read_answer(&answer.body, reference)),
            401 | 403 => Err(format!(
                "the ticket system refused the credentials (HTTP {})",
                answer.status.as_u16()
            )),
            404 => Err(format!(
                "the ticket system does not know ticket {ticket} (HTTP 404)"
            )),
            status => Err(format!("the ticket system answered HTTP {status}")),
        }
    }

    fn http_for(&self, ca_bundle: Option<&[u8]>) -> Result<Arc<HttpClient>, String> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ca_bundle.hash(&mut hasher);
        let key = hasher.finish();
        let mut clients = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Arc::new(
            HttpClient::new(HttpConfig {
                ca_bundle_pem: ca_bundle.map(<[u8]>::to_vec),
                timeout: TIMEOUT,
                max_response_bytes: MAX_ANSWER,
                ..HttpConfig::default()
            })
            .map_err(|e| format!("cannot reach the ticket system: {e}"))?,
        );
        clients.insert(key, client.clone());
        Ok(client)
    }

    async fn credentials(&self, name: &str) -> Result<Credentials, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = match api.get(name).await {
            Ok(secret) => secret,
            Err(e) if api_code(&e) == Some(404) => {
                return Err(format!(
                    "the credentials Secret {}/{name} does not exist",
                    self.namespace
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot read the credentials Secret {}/{name}: {e}",
                    self.namespace
                ));
            }
        };
        let data = secret.data.unwrap_or_default();
        let text = |key: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(token) = text("token") {
            return Ok(Credentials::Bearer(token));
        }
        match (text("username"), text("password")) {
            (Some(user), Some(password)) => Ok(Credentials::Basic(user, password)),
            _ => Err(format!(
                "the credentials Secret {}/{name} has neither the key token nor the keys username and password",
                self.namespace
            )),
        }
    }
}
