//! OAuth2 client credentials (RFC 6749 §4.4) for EJBCA's REST API: a bearer token from
//! the identity provider's token endpoint, cached until shortly before it expires.
//!
//! One refresh at a time: callers that find no valid token wait for the one fetch in
//! progress rather than each asking the identity provider.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use certwright_backend_http::{
    HttpClient, HttpResponse, Method, StatusCode, Url, describe_call, header,
};
use certwright_pki::Error;

use super::wire::{form_encode, parse_https_url};

/// Lifetime assumed when the token endpoint names none (`expires_in` is optional).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// The longest lifetime a token is trusted for, whatever `expires_in` says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The most a token is refreshed ahead of its expiry...
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// ...and the share of its lifetime, for short-lived tokens: a token is used until
/// `lifetime - min(30s, lifetime / 10)`, so that it does not expire on the way to EJBCA.
const REFRESH_MARGIN_DIVISOR: u32 = 10;

/// OAuth2 client credentials, from the auth Secret's `tokenUrl`, `clientId`,
/// `clientSecret`, `scopes` and `audience`.
#[derive(Clone)]
pub struct OAuthCredentials {
    /// The identity provider's token endpoint, https.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret, sent in the form body (`client_secret_post`).
    pub client_secret: String,
    /// Scopes to request (sent space-separated as `scope`); none when empty.
    pub scopes: Vec<String>,
    /// The `audience` parameter some providers (Auth0, Keycloak token exchange) expect.
    pub audience: Option<String>,
}

impl fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .finish()
    }
}

/// A bearer token and whether it came from the cache (a cached token EJBCA refuses is
/// dropped and fetched anew, once).
pub(super) struct AccessToken {
    pub(super) value: String,
    pub(super) from_cache: bool,
}

struct Cached {
    value: String,
    refresh_at: Instant,
}

/// Fetches and caches tokens for one client.
pub(super) struct TokenSource {
    http: HttpClient,
    token_url: Url,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    audience: Option<String>,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field(
                "token_url",
                &certwright_backend_http::redacted_url(&self.token_url),
            )
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The token endpoint's answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<Value>,
}

/// A token's lifetime from `expires_in` (seconds, a number or a string of one), at most
/// [`MAX_LIFETIME`]; [`DEFAULT_LIFETIME`] when absent or unreadable.
fn lifetime(expires_in: Option<&Value>) -> Duration {
    let seconds = match expires_in {
        Some(Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0)
                .map(|f| f.min(u64::MAX as f64) as u64)
        }),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    seconds
        .map(|s| Duration::from_secs(s).min(MAX_LIFETIME))
        .unwrap_or(DEFAULT_LIFETIME)
}

/// When a token fetched at `asked_at` and valid for `lifetime` is refreshed: ahead of its
/// expiry by `min(30s, lifetime / 10)`. Never panics; a time past what the clock can hold
/// refreshes at once.
fn refresh_at(asked_at: Instant, lifetime: Duration) -> Instant {
    let lifetime = lifetime.min(MAX_LIFETIME);
    let margin = (lifetime / REFRESH_MARGIN_DIVISOR).min(MAX_REFRESH_MARGIN);
    asked_at
        .checked_add(lifetime.saturating_sub(margin))
        .unwrap_or(asked_at)
}

/// The token endpoint's error (RFC 6749 §5.2).
#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenSource {
    /// Checks the credentials; `http` is the client for the token endpoint.
    pub(super) fn new(credentials: OAuthCredentials, http: HttpClient) -> Result<Self, Error> {
        let token_url = parse_https_url("tokenUrl", &credentials.token_url)?;
        let client_id = credentials.client_id.trim().to_string();
        if client_id.is_empty() {
            return Err(Error::misconfigured("clientId (auth Secret) is empty"));
        }
        if credentials.client_secret.is_empty() {
            return Err(Error::misconfigured("clientSecret (auth Secret) is empty"));
        }
        let scopes: Vec<&str> = credentials
            .scopes
            .iter()
            .flat_map(|s| s.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|s| !s.is_empty())
            .collect();
        Ok(TokenSource {
            http,
            token_url,
            client_id,
            client_secret: credentials.client_secret,
            scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
            audience: credentials
                .audience
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty()),
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// The client id, for messages.
    pub(super) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A valid token: the cached one, or a new one from the token endpoint.
    pub(super) async fn token(&self) -> Result<AccessToken, Error> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(AccessToken {
                value: cached.value.clone(),
                from_cache: true,
            });
        }
        let asked_at = Instant::now();
        let (value, lifetime) = self.fetch().await?;
        *cache = Some(Cached {
            value: value.clone(),
            refresh_at: refresh_at(asked_at, lifetime),
        });
        Ok(AccessToken {
            value,
            from_cache: false,
        })
    }

    /// Drops `value` from the cache (EJBCA refused it), unless a newer token replaced it.
    pub(super) async fn invalidate(&self, value: &str) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|cached| cached.value == value) {
            *cache = None;
        }
    }

    /// One client-credentials grant.
    async fn fetch(&self) -> Result<(String, Duration), Error> {
        let call = describe_call(&Method::POST, &self.token_url);
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
        ];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &self.audience {
            form.push(("audience", audience));
        }
        let request = self
            .http
            .request(Method::POST, self.token_url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(form_encode(&form));
        let response = self.http.send(request).await?;
        if !response.is_success() {
            return Err(self.refusal(&call, &response));
        }
        self.read_token(&call, &response)
    }

    /// The token and its lifetime from a 2xx answer of the token endpoint.
    fn read_token(&self, call: &str, response: &HttpResponse) -> Result<(String, Duration), Error> {
        if response.looks_like_html() {
            return Err(response.html_instead_of(call, "an OAuth2 token (JSON)"));
        }
        // No excerpt of the body: an answer that is almost a token may hold one.
        let body: TokenBody =
            serde_json::from_slice(&response.body).map_err(|e| Error::InvalidResponse {
                message: format!(
                    "{call} answered {} with a body that is not an OAuth2 token (JSON error \
                     at line {}, column {})",
                    response.status,
                    e.line(),
                    e.column()
                ),
            })?;
        if let Some(kind) = body.token_type.as_deref()
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(Error::InvalidResponse {
                message: format!(
                    "{call} issued a token of type {:?}; EJBCA takes bearer tokens",
                    certwright_backend_http::excerpt(kind.as_bytes())
                ),
            });
        }
        let token = body
            .access_token
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| Error::InvalidResponse {
                message: format!(
                    "{call} answered without a usable access_token (missing, empty, or not a \
                     bearer token's characters)"
                ),
            })?;
        let lifetime = lifetime(body.expires_in.as_ref());
        tracing::debug!(
            call = %call,
            client_id = %self.client_id,
            lifetime_s = lifetime.as_secs(),
            "fetched an OAuth2 token for EJBCA"
        );
        Ok((token, lifetime))
    }

    /// What a failed token request means. The client credentials belong to the issuer,
    /// so no answer of the token endpoint ever rejects a certificate request.
    fn refusal(&self, call: &str, response: &HttpResponse) -> Error {
        let parsed: Option<TokenError> = serde_json::from_slice(&response.body).ok();
        let code = parsed
            .as_ref()
            .and_then(|e| e.error.as_deref())
            .map(|c| certwright_backend_http::excerpt(c.as_bytes()));
        let description = parsed
            .as_ref()
            .and_then(|e| e.error_description.as_deref())
            .map(|d| certwright_backend_http::excerpt(d.as_bytes()));
        let said = match (&code, &description) {
            (Some(code), Some(description)) => format!("{code}: {description}"),
            (Some(code), None) => code.clone(),
            (None, Some(description)) => description.clone(),
            (None, None) => response.excerpt(),
        };
        let status = response.status;
        let client = &self.client_id;
        match (status, code.as_deref()) {
            (
                StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN,
                Some("invalid_client" | "unauthorized_client" | "invalid_grant"),
            )
            | (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => Error::Unauthorized {
                message: format!(
                    "{call} refused the client credentials of client {client:?} (check \
                     clientId and clientSecret in the auth Secret): {status}: {said}"
                ),
            },
            (StatusCode::BAD_REQUEST, Some("invalid_scope" | "invalid_target")) => {
                Error::misconfigured(format!(
                    "{call} refused the scopes or audience requested for client {client:?} \
                     (check scopes and audience in the auth Secret): {said}"
                ))
            }
            (StatusCode::TOO_MANY_REQUESTS, _) => Error::RateLimited {
                retry_after: response.retry_after(SystemTime::now()),
                message: format!("{call} answered {status}: {said}"),
            },
            (s, _) if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => Error::Transient {
                message: format!("{call} answered {status}: {said}"),
                source: None,
            },
            (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED, _) => Error::misconfigured(
                format!("{call} answered {status} (wrong tokenUrl?): {said}"),
            ),
            _ => Error::misconfigured(format!(
                "{call} refused the token request for client {client:?}: {status}: {said}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certwright_backend_http::{HeaderMap, HttpConfig};

    fn source() -> TokenSource {
        let ca =
            certwright_simulators::TestCa::root(certwright_simulators::KeyKind::EcdsaP256, "T");
        let http = HttpClient::new(HttpConfig {
            ca_bundle_pem: Some(ca.cert_pem().as_bytes().to_vec()),
            ..HttpConfig::default()
        })
        .expect("client");
        TokenSource::new(
            OAuthCredentials {
                token_url: "https://idp.example/realms/pki/protocol/openid-connect/token".into(),
                client_id: "certwright".into(),
                client_secret: "hunter2".into(),
                scopes: vec!["ejbca, openid".into(), " profile ".into()],
                audience: Some(" ".into()),
            },
            http,
        )
        .expect("valid")
    }

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn scopes_are_joined_and_blank_audience_dropped() {
        let source = source();
        assert_eq!(source.scope.as_deref(), Some("ejbca openid profile"));
        assert_eq!(source.audience, None);
        assert!(!format!("{source:?}").contains("hunter2"));
        let creds = OAuthCredentials {
            token_url: "https://idp.example/token".into(),
            client_id: "c".into(),
            client_secret: "hunter2".into(),
            scopes: vec![],
            audience: None,
        };
        assert!(!format!("{creds:?}").contains("hunter2"));
    }

    #[test]
    fn token_endpoint_failures_are_the_issuers_never_the_requests() {
        let source = source();
        let call = "POST https://idp.example/token";
        let cases: &[(u16, &str, &str)] = &[
            (
                401,
                r#"{"error":"invalid_client","error_description":"Invalid client secret"}"#,
                "unauthorized",
            ),
            (400, r#"{"error":"invalid_client"}"#, "unauthorized"),
            (400, r#"{"error":"unauthorized_client"}"#, "unauthorized"),
            (403, "", "unauthorized"),
            (
                400,
                r#"{"error":"invalid_scope","error_description":"Invalid scopes: ejbca"}"#,
                "misconfigured",
            ),
            (
                400,
                r#"{"error":"unsupported_grant_type"}"#,
                "misconfigured",
            ),
            (404, "<html>nope</html>", "misconfigured"),
            (422, "", "misconfigured"),
            (429, "", "rate_limited"),
            (503, "", "transient"),
        ];
        for (status, body, label) in cases {
            let err = source.refusal(call, &answer(*status, body));
            assert_eq!(err.metric_label(), *label, "{status} {body}: {err}");
            assert!(!err.to_string().contains("hunter2"));
        }
        let err = source.refusal(
            call,
            &answer(
                401,
                r#"{"error":"invalid_client","error_description":"Invalid client secret"}"#,
            ),
        );
        assert!(
            err.to_string().contains("\"certwright\"")
                && err.to_string().contains("Invalid client secret"),
            "{err}"
        );
    }

    #[test]
    fn a_token_answer_that_does_not_parse_is_not_quoted() {
        let source = source();
        let call = "POST https://idp.example/token";
        let almost = r#"{"access_token": "eyJhbGciOiJSUzI1NiJ9.secret-token", "expires_in": }"#;
        let err = source
            .read_token(call, &answer(200, almost))
            .expect_err("not JSON");
        assert_eq!(err.metric_label(), "invalid_response", "{err}");
        assert!(!err.to_string().contains("secret-token"), "{err}");
        assert!(!err.to_string().contains("access_token"), "{err}");
        let (token, lifetime) = source
            .read_token(
                call,
                &answer(
                    200,
                    r#"{"access_token":"abc","token_type":"Bearer","expires_in":1e19}"#,
                ),
            )
            .expect("token");
        assert_eq!((token.as_str(), lifetime), ("abc", MAX_LIFETIME));
    }

    #[test]
    fn huge_lifetimes_are_clamped_without_panicking() {
        let parse = |json: &str| -> Duration {
            let body: TokenBody = serde_json::from_str(json).expect("json");
            lifetime(body.expires_in.as_ref())
        };
        assert_eq!(parse(r#"{"expires_in": 3600}"#), Duration::from_secs(3600));
        assert_eq!(parse(r#"{"expires_in": "600"}"#), Duration::from_secs(600));
        assert_eq!(parse(r#"{}"#), DEFAULT_LIFETIME);
        assert_eq!(parse(r#"{"expires_in": -5}"#), DEFAULT_LIFETIME);
        for huge in [
            r#"{"expires_in": 10000000000000000000}"#,
            r#"{"expires_in": 1e19}"#,
            r#"{"expires_in": "10000000000000000000"}"#,
            r#"{"expires_in": 18446744073709551615}"#,
        ] {
            assert_eq!(parse(huge), MAX_LIFETIME, "{huge}");
        }
        let now = Instant::now();
        let at = refresh_at(now, Duration::from_secs(10_000_000_000_000_000_000));
        assert!(at > now && at <= now + MAX_LIFETIME);
        assert_eq!(
            refresh_at(now, Duration::from_secs(100)),
            now + Duration::from_secs(90)
        );
        assert_eq!(
            refresh_at(now, Duration::MAX),
            refresh_at(now, MAX_LIFETIME)
        );
    }

    #[test]
    fn credentials_are_checked() {
        let http = || {
            let ca =
                certwright_simulators::TestCa::root(certwright_simulators::KeyKind::EcdsaP256, "T");
            HttpClient::new(HttpConfig {
                ca_bundle_pem: Some(ca.cert_pem().as_bytes().to_vec()),
                ..HttpConfig::default()
            })
            .expect("client")
        };
        let base = || OAuthCredentials {
            token_url: "https://idp.example/token".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
            scopes: vec![],
            audience: None,
        };
        for creds in [
            OAuthCredentials {
                token_url: "http://idp.example/token".into(),
                ..base()
            },
            OAuthCredentials {
                client_id: " ".into(),
                ..base()
            },
            OAuthCredentials {
                client_secret: String::new(),
                ..base()
            },
        ] {
            let err = TokenSource::new(creds, http()).expect_err("misconfigured");
            assert_eq!(err.metric_label(), "misconfigured", "{err}");
        }
    }
}
