//! One HTTP/1.1 keep-alive connection to certsrv, authenticated as configured.
//!
//! NTLM authenticates a connection, not a request, so each backend call opens its own
//! [`Session`] (hyper's client connection API over tokio-rustls), runs the handshake on
//! its first request and sends the rest on the same connection. The server certificate
//! seen in the TLS handshake gives the channel binding. Every step has a timeout and
//! every body a size cap.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::pkcs7::tls_server_end_point;
use super::{kerberos, ntlm};
use certwright_backend_http::{TLS_FAILED, Url, format_duration};
use certwright_pki::{Classified, Error};

/// A browser-like User-Agent: certsrv changes the content type of certificates for
/// clients it does not take for a browser.
pub(crate) const USER_AGENT: &str = concat!(
    "Mozilla/5.0 (compatible; certwright/",
    env!("CARGO_PKG_VERSION"),
    "; +https://github.com/certwright/certwright)"
);

/// How to authenticate each connection.
#[derive(Clone)]
pub(crate) enum ConnAuth {
    Ntlm(Arc<ntlm::Credentials>),
    Kerberos(Arc<kerberos::Client>),
    Basic(HeaderValue),
    /// TLS client certificate (in the TLS configuration) or nothing.
    None,
}

/// Everything needed to open sessions.
pub(crate) struct Transport {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) base: Url,
    pub(crate) auth: ConnAuth,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_response_bytes: usize,
    pub(crate) trust: &'static str,
    pub(crate) has_identity: bool,
    pub(crate) egress: Option<Arc<certwright_pki::egress::EgressPolicy>>,
}

/// An answer read in full.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// One open, possibly authenticated connection.
pub(crate) struct Session<'t> {
    transport: &'t Transport,
    sender: SendRequest<Full<Bytes>>,
    end_point_hash: Option<Vec<u8>>,
    authenticated: bool,
    /// False once the server asked this authenticated connection to authenticate again
    /// (Kerberos persistence off, or a load balancer spreading requests): from then on
    /// every request authenticates up front.
    persistent: bool,
    host: String,
    /// Why the connection failed, when TLS says (a refused client certificate shows up
    /// only here under TLS 1.3).
    failure: Arc<std::sync::Mutex<Option<rustls::Error>>>,
}

impl Transport {
    fn call(&self, method: &Method, path: &str) -> String {
        format!("{method} {}", self.show(path))
    }

    /// The URL of `path` (relative to certsrv), without the query, for messages.
    fn show(&self, path: &str) -> String {
        let shown = certwright_backend_http::redacted_url(&self.base);
        let file = path.split('?').next().unwrap_or(path);
        format!("{}/{file}", shown.trim_end_matches('/'))
    }

    /// Opens a TLS connection and an HTTP/1.1 client on it.
    pub(crate) async fn open(&self) -> Result<Session<'_>, Error> {
        let host = self.base.host_str().unwrap_or_default().to_string();
        let port = self.base.port_or_known_default().unwrap_or(443);
        let call = format!(
            "connecting to {}",
            certwright_backend_http::redacted_url(&self.base)
        );
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(bare.clone())
            .map_err(|e| Error::misconfigured(format!("url host {host:?} is unusable: {e}")))?;
        let connect = async {
            let addrs = certwright_backend_http::resolve(self.egress.as_deref(), &host, port)
                .await
                .map_err(|e| match certwright_pki::egress::refusal(&e) {
                    Some(refused) => certwright_backend_http::egress_error(&call, refused),
                    None => Error::transient(format!("{call}: cannot connect: {e}"), e),
                })?;
            let tcp = TcpStream::connect(&addrs[..])
                .await
                .map_err(|e| Error::transient(format!("{call}: cannot connect: {e}"), e))?;
            let _ = tcp.set_nodelay(true);
            let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
            connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| self.tls_error(&call, e))
        };
        let tls = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| Error::Transient {
                message: format!(
                    "{call}: timed out after {}",
                    format_duration(self.connect_timeout)
                ),
                source: Some(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut))),
            })??;
        let end_point_hash = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| tls_server_end_point(leaf.as_ref()));
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Error::transient(format!("{call}: HTTP/1.1 setup failed: {e}"), e))?;
        // The connection runs until the session (its sender) is dropped.
        let failure = Arc::new(std::sync::Mutex::new(None));
        let slot = failure.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await
                && let Some(tls) = find_rustls(&e)
            {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls.clone());
            }
        });
        Ok(Session {
            transport: self,
            sender,
            end_point_hash,
            authenticated: false,
            persistent: true,
            host: bare,
            failure,
        })
    }

    fn tls_error(&self, call: &str, err: std::io::Error) -> Error {
        let rustls_error = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(why)) => Error::Misconfigured {
                message: format!(
                    "{call}: the certsrv TLS certificate is not trusted by {}: {why:?}",
                    self.trust
                ),
                source: Some(Box::new(Classified::new(TLS_FAILED, err))),
            },
            Some(rustls::Error::AlertReceived(alert)) if client_cert_alert(alert) => {
                self.client_cert_refused(call, alert)
            }
            Some(other) => Error::Misconfigured {
                message: format!(
                    "{call}: the TLS handshake failed (is this an https endpoint?): {other}"
                ),
                source: Some(Box::new(Classified::new(TLS_FAILED, err))),
            },
            None => Error::transient(format!("{call}: the TLS handshake failed: {err}"), err),
        }
    }

    fn client_cert_refused(&self, call: &str, alert: rustls::AlertDescription) -> Error {
        Error::Unauthorized {
            message: if self.has_identity {
                format!("{call}: certsrv refused our TLS client certificate ({alert:?})")
            } else {
                format!(
                    "{call}: certsrv requires a TLS client certificate ({alert:?}); authMethod \
                     is not clientCertificate"
                )
            },
        }
    }
}

fn client_cert_alert(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::UnknownCA
            | A::AccessDenied
    )
}

fn find_rustls<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        current = e.source();
    }
    None
}

impl Session<'_> {
    /// Makes this session behave like an NTLM client that knows nothing of channel
    /// bindings (no MsvAvChannelBindings), as older clients do: for tests of Extended
    /// Protection only.
    #[cfg(test)]
    pub(crate) fn without_channel_binding(mut self) -> Self {
        self.end_point_hash = None;
        self
    }

    /// Sends `method path` (relative to certsrv) with `form` as the body, authenticating
    /// the connection first when it needs to, and reads the whole answer.
    ///
    /// A connection authenticated with NTLM or Kerberos is trusted to stay so; when
    /// certsrv answers 401 on it all the same (IIS with `authPersistNonNTLM=false`, Apache
    /// mod_auth_gssapi, a load balancer), the request is authenticated again once, with a
    /// fresh token and the same channel binding. A 401 carries no side effect, so sending
    /// a submission again after it submits nothing twice.
    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&str>,
    ) -> Result<Response, Error> {
        let call = self.transport.call(&method, path);
        let auth = self.transport.auth.clone();
        let per_connection = matches!(auth, ConnAuth::Ntlm(_) | ConnAuth::Kerberos(_));
        if per_connection && self.authenticated && self.persistent {
            let (response, _) = self.exchange(&call, &method, path, form, None).await?;
            if response.status != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            tracing::debug!(call = %call, "certsrv asked an authenticated connection to authenticate again");
            self.persistent = false;
            // A balancer may close the connection with its 401: authenticate on a new one.
            if self.sender.ready().await.is_err() {
                self.reconnect().await?;
            }
        }
        match auth {
            ConnAuth::Ntlm(credentials) => {
                self.ntlm(&call, &method, path, form, &credentials).await
            }
            ConnAuth::Kerberos(client) => self.kerberos(&call, &method, path, form, &client).await,
            ConnAuth::Basic(value) => {
                let (response, _) = self
                    .exchange(&call, &method, path, form, Some(value))
                    .await?;
                if response.status == StatusCode::UNAUTHORIZED {
                    return Err(Error::Unauthorized {
                        message: format!(
                            "{call}: certsrv refused the Basic credentials (wrong username or \
                             password, or Basic authentication is off in IIS)"
                        ),
                    });
                }
                Ok(response)
            }
            ConnAuth::None => {
                let (response, offered) = self.exchange(&call, &method, path, form, None).await?;
                if response.status == StatusCode::UNAUTHORIZED {
                    return Err(Error::Unauthorized {
                        message: format!(
                            "{call}: certsrv asks for HTTP authentication ({}); the TLS client \
                             certificate was not accepted as a login",
                            offered.join(", ")
                        ),
                    });
                }
                Ok(response)
            }
        }
    }

    /// Replaces a connection the server closed with a new one, unauthenticated, keeping
    /// what was learnt about the server (it does not keep connections authenticated).
    async fn reconnect(&mut self) -> Result<(), Error> {
        let fresh = self.transport.open().await?;
        let persistent = self.persistent;
        *self = fresh;
        self.persistent = persistent;
        Ok(())
    }

    /// The NTLM handshake on this connection, carrying the request.
    async fn ntlm(
        &mut self,
        call: &str,
        method: &Method,
        path: &str,
        form: Option<&str>,
        credentials: &ntlm::Credentials,
    ) -> Result<Response, Error> {
        let negotiate = ntlm::negotiate();
        let first = self
            .exchange(call, method, path, form, Some(ntlm_header(&negotiate)))
            .await?;
        if first.0.status != StatusCode::UNAUTHORIZED {
            // No authentication required here.
            self.authenticated = true;
            return Ok(first.0);
        }
        let offered = first.1;
        let Some(challenge_msg) = offered.iter().find_map(|v| ntlm_token(v)) else {
            return Err(no_ntlm_offered(call, &offered));
        };
        let challenge =
            ntlm::parse_challenge(&challenge_msg).map_err(|why| Error::InvalidResponse {
                message: format!("{call}: certsrv's NTLM challenge is unusable: {why}"),
            })?;
        let spn = format!("HTTP/{}", self.host);
        let answer = ntlm::authenticate(
            credentials,
            &negotiate,
            &challenge_msg,
            &challenge,
            self.end_point_hash.as_deref(),
            &spn,
            &ntlm::Fresh::draw(),
        );
        let (response, _) = self
            .exchange(call, method, path, form, Some(ntlm_header(&answer)))
            .await?;
        if response.status == StatusCode::UNAUTHORIZED {
            return Err(Error::Unauthorized {
                message: format!(
                    "{call}: certsrv refused the NTLM credentials of \"{}\" (wrong username, \
                     domain or password, a locked account, or Extended Protection refusing the \
                     channel binding)",
                    display_user(credentials)
                ),
            });
        }
        self.authenticated = true;
        Ok(response)
    }

    /// A Negotiate token with the request. A refused token whose ticket came from the
    /// cache is tried once more with fresh tickets: the service key may have changed.
    async fn kerberos(
        &mut self,
        call: &str,
        method: &Method,
        path: &str,
        form: Option<&str>,
        client: &kerberos::Client,
    ) -> Result<Response, Error> {
        let bindings = self
            .end_point_hash
            .as_deref()
            .map(ntlm::channel_bindings_hash);
        let timeout = self.transport.timeout;
        let mut retried = false;
        loop {
            let (token, cached) = client
                .negotiate_token(&self.host, bindings, timeout)
                .await?;
            let value = format!(
                "Negotiate {}",
                base64::engine::general_purpose::STANDARD.encode(token)
            );
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| Error::misconfigured("the Negotiate token is not a header value"))?;
            value.set_sensitive(true);
            let (response, offered) = self.exchange(call, method, path, form, Some(value)).await?;
            if response.status != StatusCode::UNAUTHORIZED {
                // A mutual-authentication token in WWW-Authenticate is accepted unread.
                self.authenticated = true;
                return Ok(response);
            }
            let negotiate = offered.iter().any(|v| {
                v.split_whitespace()
                    .next()
                    .is_some_and(|s| s.eq_ignore_ascii_case("Negotiate"))
            });
            if !negotiate {
                return Err(Error::misconfigured(format!(
                    "{call}: certsrv does not offer Negotiate (it offers: {}); enable Windows \
                     Authentication with the Negotiate provider in IIS, or pick the matching \
                     authMethod",
                    offered.join(", ")
                )));
            }
            if cached && !retried {
                tracing::debug!(call = %call, "certsrv refused a cached Kerberos ticket; asking the KDC again");
                client.forget().await;
                retried = true;
                continue;
            }
            return Err(Error::Unauthorized {
                message: format!(
                    "{call}: certsrv refused the Kerberos ticket of {} for HTTP/{} (a service \
                     ticket for another account, clock skew, or Extended Protection refusing \
                     the channel binding)",
                    client.credentials.principal(),
                    self.host
                ),
            });
        }
    }

    /// One request and its whole answer, plus the `WWW-Authenticate` values.
    async fn exchange(
        &mut self,
        call: &str,
        method: &Method,
        path: &str,
        form: Option<&str>,
        authorization: Option<HeaderValue>,
    ) -> Result<(Response, Vec<String>), Error> {
        let transport = self.transport;
        let base_path = transport.base.path().trim_end_matches('/');
        let uri = format!("{base_path}/{path}");
        let host = match transport.base.port() {
            Some(port) => format!("{}:{port}", transport.base.host_str().unwrap_or_default()),
            None => transport.base.host_str().unwrap_or_default().to_string(),
        };
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::HOST, host)
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, "*/*")
            .header(header::CONNECTION, "keep-alive");
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let body = match form {
            Some(form) => {
                builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Full::new(Bytes::from(form.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .map_err(|e| Error::misconfigured(format!("{call}: cannot build the request: {e}")))?;
        let cap = transport.max_response_bytes;
        let work = async {
            if let Err(e) = self.sender.ready().await {
                return Err(self.transport_error(call, e).await);
            }
            let response = match self.sender.send_request(request).await {
                Ok(response) => response,
                Err(e) => return Err(self.transport_error(call, e).await),
            };
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let offered: Vec<String> = response
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            let declared = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > cap as u64) {
                return Err(oversized(call, cap));
            }
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => return Err(self.transport_error(call, e).await),
                };
                if let Some(data) = frame.data_ref() {
                    if bytes.len() + data.len() > cap {
                        return Err(oversized(call, cap));
                    }
                    bytes.extend_from_slice(data);
                }
            }
            tracing::debug!(call = %call, status = status.as_u16(), bytes = bytes.len(), "certsrv answered");
            Ok((
                Response {
                    status,
                    content_type,
                    body: bytes,
                },
                offered,
            ))
        };
        tokio::time::timeout(transport.timeout, work)
            .await
            .map_err(|_| Error::Transient {
                message: format!(
                    "{call}: timed out after {}",
                    format_duration(transport.timeout)
                ),
                source: Some(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut))),
            })?
    }

    async fn transport_error(&self, call: &str, err: hyper::Error) -> Error {
        let mut tls = find_rustls(&err).cloned();
        if tls.is_none() && (err.is_closed() || err.is_canceled()) {
            // The connection task records its TLS failure as it ends.
            for _ in 0..10 {
                tls = self
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if tls.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if let Some(rustls::Error::AlertReceived(alert)) = tls
            && client_cert_alert(alert)
        {
            return self.transport.client_cert_refused(call, alert);
        }
        let message = format!("{call}: the connection failed: {err}");
        if tls.is_some() {
            return Error::transient(message, Classified::new(TLS_FAILED, err));
        }
        Error::transient(message, err)
    }
}

fn oversized(call: &str, cap: usize) -> Error {
    Error::InvalidResponse {
        message: format!("{call}: the response body exceeds the limit of {cap} bytes"),
    }
}

fn ntlm_header(message: &[u8]) -> HeaderValue {
    let value = format!(
        "NTLM {}",
        base64::engine::general_purpose::STANDARD.encode(message)
    );
    // Base64 is always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("NTLM"))
}

/// The CHALLENGE in a `WWW-Authenticate: NTLM <base64>` value.
fn ntlm_token(value: &str) -> Option<Vec<u8>> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("NTLM") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()
}

fn no_ntlm_offered(call: &str, offered: &[String]) -> Error {
    let schemes: Vec<&str> = offered
        .iter()
        .filter_map(|v| v.split_whitespace().next())
        .collect();
    if schemes.iter().any(|s| s.eq_ignore_ascii_case("NTLM")) {
        return Error::Unauthorized {
            message: format!(
                "{call}: certsrv answered the NTLM negotiation without a challenge (NTLM \
                 refused for this account?)"
            ),
        };
    }
    Error::misconfigured(format!(
        "{call}: certsrv does not offer NTLM (it offers: {}); enable Windows Authentication \
         with the NTLM provider in IIS, or pick the matching authMethod",
        if schemes.is_empty() {
            "nothing".to_string()
        } else {
            schemes.join(", ")
        }
    ))
}

fn display_user(credentials: &ntlm::Credentials) -> String {
    if credentials.domain.is_empty() {
        credentials.username.clone()
    } else {
        format!("{}\\{}", credentials.domain, credentials.username)
    }
}
