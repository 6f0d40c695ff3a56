//! cfssl's API: `POST /api/v1/cfssl/sign` (or `authsign` with an HMAC key) to sign, and
//! `POST /api/v1/cfssl/info` for the CA chain, fetched once and cached. The chain is
//! fetched before the CSR is submitted, never after: once cfssl has signed, a failure
//! would lose the certificate and the caller's retry would make cfssl sign another.
//!
//! cfssl answers in the CloudFlare envelope `{success, result, errors, messages}` and
//! never holds a request for approval. Its signing profile decides the lifetime, so the
//! requested duration is not sent.
//!
//! One file because it is one wire protocol: the envelope, the HMAC `authsign` token,
//! the cached chain and the mapping of cfssl's error codes are used together by the
//! two calls, and the unit tests of each (about half the file) sit beside them.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use certwright_x509::{Certificate, Csr};

use super::{Auth, RestBackend, issued, parse_certificates};
use certwright_backend_http::{
    HttpResponse, Method, StatusCode, describe_call, header, status_error,
};
use certwright_pki::{Error, Health, Outcome, SignRequest};

/// The CA chain from `info`, once fetched.
#[derive(Debug, Default)]
pub(super) struct ChainCache(Mutex<Option<Arc<Vec<Certificate>>>>);

impl ChainCache {
    fn get(&self) -> Option<Arc<Vec<Certificate>>> {
        self.0.lock().map(|c| c.clone()).unwrap_or(None)
    }

    fn set(&self, chain: Arc<Vec<Certificate>>) {
        if let Ok(mut cached) = self.0.lock() {
            *cached = Some(chain);
        }
    }
}

/// cfssl's sign request (`signer.SignRequest` as JSON).
#[derive(Debug, Serialize)]
struct CfsslSignRequest<'a> {
    certificate_request: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hosts: Option<Vec<String>>,
}

/// cfssl's `auth.AuthenticatedRequest`: Go encodes its `[]byte` fields as base64.
#[derive(Debug, Serialize)]
struct AuthenticatedRequest {
    token: String,
    request: String,
}

#[derive(Debug, Serialize)]
struct InfoRequest<'a> {
    label: &'a str,
    profile: &'a str,
}

/// The CloudFlare API envelope.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    success: bool,
    #[serde(default = "Option::default")]
    result: Option<T>,
    #[serde(default)]
    errors: Vec<Message>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// `result` of sign and info.
#[derive(Debug, Deserialize)]
struct CertificateResult {
    certificate: String,
}

/// The `hosts` cfssl should put in the certificate: the CSR's DNS names, IP addresses and
/// emails. With `hosts` present cfssl replaces the CSR's SANs by them, and cfssl before
/// 1.3 would turn a URI into a DNS name; so when the CSR has URI SANs (or none at all)
/// `hosts` is left out and cfssl copies the CSR's own SANs.
fn hosts(csr: &Csr) -> Option<Vec<String>> {
    let sans = csr.sans();
    if !sans.uris.is_empty() {
        return None;
    }
    let hosts: Vec<String> = sans
        .dns
        .iter()
        .cloned()
        .chain(sans.ips.iter().map(ToString::to_string))
        .chain(sans.emails.iter().cloned())
        .collect();
    (!hosts.is_empty()).then_some(hosts)
}

/// The body of `authsign`: `request` is the sign request's JSON and `token` its
/// HMAC-SHA256 under `key`, both base64 as Go encodes `[]byte`.
fn authenticated_body(key: &[u8], request_json: &[u8]) -> Result<Vec<u8>, Error> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|_| Error::misconfigured("the cfssl HMAC key is unusable"))?;
    mac.update(request_json);
    let token = mac.finalize().into_bytes();
    serde_json::to_vec(&AuthenticatedRequest {
        token: BASE64.encode(token),
        request: BASE64.encode(request_json),
    })
    .map_err(|e| Error::misconfigured(format!("cannot encode the authsign request: {e}")))
}

impl RestBackend {
    fn cfssl_profile<'a>(&'a self, request: Option<&'a SignRequest>) -> Option<&'a str> {
        match request {
            Some(request) => self.template_for(request),
            None => self.template.as_deref(),
        }
    }

    fn hmac_key(&self) -> Option<&[u8]> {
        match &self.auth {
            Auth::Hmac(key) => Some(key),
            _ => None,
        }
    }

    /// POSTs `request_json` to `sign`, or wrapped to `authsign` with an HMAC key.
    async fn cfssl_post_sign(
        &self,
        request_json: Vec<u8>,
    ) -> Result<(String, HttpResponse), Error> {
        let (endpoint, body) = match self.hmac_key() {
            Some(key) => ("authsign", authenticated_body(key, &request_json)?),
            None => ("sign", request_json),
        };
        let url = self.endpoint(&["api", "v1", "cfssl", endpoint]);
        let call = describe_call(&Method::POST, &url);
        let response = self
            .http
            .send(
                self.request(Method::POST, url)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body),
            )
            .await?;
        Ok((call, response))
    }

    pub(super) async fn sign_cfssl(&self, request: &SignRequest) -> Result<Outcome, Error> {
        let (chain, fresh) = match self.cfssl.get() {
            Some(chain) => (chain, false),
            None => (self.cfssl_chain().await?, true),
        };
        let profile = self.cfssl_profile(Some(request));
        let request_json = serde_json::to_vec(&CfsslSignRequest {
            certificate_request: request.csr.to_pem(),
            profile,
            hosts: hosts(&request.csr),
        })
        .map_err(|e| Error::misconfigured(format!("cannot encode the sign request: {e}")))?;
        tracing::debug!(
            requester = %request.requester,
            profile = profile.unwrap_or(""),
            "submitting to cfssl"
        );
        let (call, response) = self.cfssl_post_sign(request_json).await?;
        let result: CertificateResult = read_envelope(&call, &response, profile)?;
        let leaf = parse_certificates(&call, "result.certificate", &result.certificate)?;
        let with_chain =
            |chain: &[Certificate]| leaf.iter().chain(chain.iter()).cloned().collect::<Vec<_>>();
        match issued(&call, with_chain(&chain), &request.csr) {
            // A cached chain may predate a CA rotation: fetch it again, once, rather than
            // throw away a certificate cfssl has signed.
            Err(_) if !fresh => {
                let chain = self.cfssl_chain().await?;
                issued(&call, with_chain(&chain), &request.csr).map(Outcome::Issued)
            }
            result => result.map(Outcome::Issued),
        }
    }

    /// Fetches the CA chain from `info` and caches it.
    async fn cfssl_chain(&self) -> Result<Arc<Vec<Certificate>>, Error> {
        let profile = self.cfssl_profile(None);
        let url = self.endpoint(&["api", "v1", "cfssl", "info"]);
        let call = describe_call(&Method::POST, &url);
        let body = serde_json::to_vec(&InfoRequest {
            label: "",
            profile: profile.unwrap_or(""),
        })
        .map_err(|e| Error::misconfigured(format!("cannot encode the info request: {e}")))?;
        let response = self
            .http
            .send(
                self.request(Method::POST, url)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body),
            )
            .await?;
        let result: CertificateResult = read_envelope(&call, &response, profile)?;
        let chain = Arc::new(parse_certificates(
            &call,
            "result.certificate",
            &result.certificate,
        )?);
        self.cfssl.set(chain.clone());
        Ok(chain)
    }

    pub(super) async fn check_cfssl(&self) -> Result<Health, Error> {
        let chain = self.cfssl_chain().await?;
        let profile = self.cfssl_profile(None);
        if self.hmac_key().is_some() {
            self.probe_authsign(profile).await?;
        }
        Ok(Health {
            message: format!(
                "cfssl answered; profile {}; CA chain of {}",
                profile.unwrap_or("(default)"),
                chain.len()
            ),
        })
    }

    /// Checks the HMAC key without signing: cfssl verifies the token before it looks for
    /// the CSR, so an authenticated request without one is refused for the missing CSR
    /// when the key is right, and for the token when it is wrong.
    async fn probe_authsign(&self, profile: Option<&str>) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Probe<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            profile: Option<&'a str>,
        }
        let request_json = serde_json::to_vec(&Probe { profile })
            .map_err(|e| Error::misconfigured(format!("cannot encode the probe: {e}")))?;
        let (call, response) = self.cfssl_post_sign(request_json).await?;
        match read_envelope::<serde_json::Value>(&call, &response, profile) {
            Ok(_) => Ok(()),
            // "missing parameter 'certificate_request'": the token was accepted.
            Err(Error::Rejected { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// Reads cfssl's envelope: `result` on success, otherwise the error its code and message
/// (or the HTTP status) classify.
fn read_envelope<T: serde::de::DeserializeOwned>(
    call: &str,
    response: &HttpResponse,
    profile: Option<&str>,
) -> Result<T, Error> {
    let envelope = serde_json::from_slice::<Envelope<T>>(&response.body);
    match envelope {
        Ok(Envelope {
            success: true,
            result: Some(result),
            ..
        }) if response.status.is_success() => Ok(result),
        Ok(envelope) if !envelope.success || !response.status.is_success() => {
            let first = envelope.errors.first();
            Err(cfssl_error(
                call,
                response,
                first.map_or(0, |m| m.code),
                first.map(|m| m.message.as_str()),
                profile,
            ))
        }
        Ok(_) => Err(Error::InvalidResponse {
            message: format!(
                "{call}: cfssl reported success without a result: {}",
                response.excerpt()
            ),
        }),
        Err(_) if response.status.is_success() && response.looks_like_html() => {
            Err(response.html_instead_of(call, "cfssl's JSON"))
        }
        Err(e) if response.status.is_success() => Err(Error::InvalidResponse {
            message: format!(
                "{call} answered {} with a body that is not cfssl's JSON ({e}): {}",
                response.status,
                response.excerpt()
            ),
        }),
        Err(_) => Err(
            status_error(response, call, None, SystemTime::now()).unwrap_or_else(|| {
                Error::InvalidResponse {
                    message: format!("{call} answered {}", response.status),
                }
            }),
        ),
    }
}

/// Whose fault a cfssl error code says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Our credentials: the issuer is not Ready.
    Credentials,
    /// cfssl's configuration as the issuer uses it (its CA key or chain, the profile):
    /// every request would fail the same way, so the issuer is not Ready.
    Configuration,
    /// This request: its CSR or its names. The request fails.
    Request,
    /// Something cfssl depends on, for now (a remote signer, a CT log, its database):
    /// retried later.
    Outage,
}

/// Reads a code of cfssl's `errors` package: the category is the code divided by 1000,
/// the reason the hundreds below it. `None` for codes outside the table, including the
/// HTTP statuses cfssl uses as codes for malformed calls.
fn fault_of(code: i64) -> Option<Fault> {
    Some(match code {
        // CertificateError/MissingSerial: the profile wants the client to choose serial
        // numbers, which certwright never sends.
        1400..=1499 => Fault::Configuration,
        // CertificateError: cfssl cannot read the CSR (cfssl 1.2 files CSR faults here).
        1000..=1999 => Fault::Request,
        // PrivateKeyError, IntermediatesError, RootError: cfssl cannot use its own CA key,
        // intermediates or root.
        2000..=4999 => Fault::Configuration,
        // PolicyError/NoKeyUsages, InvalidPolicy, UnknownProfile: the profile permits no
        // usage, is invalid or does not exist.
        5100..=5299 | 5400..=5499 => Fault::Configuration,
        // PolicyError/Unknown, InvalidRequest, UnmatchedWhitelist and later reasons: the
        // request breaks the profile's policy.
        5000..=5999 => Fault::Request,
        // DialError: a remote signer cannot be reached.
        6000..=6999 => Fault::Outage,
        // APIClientError/AuthenticationFailure.
        7100..=7199 => Fault::Credentials,
        // APIClientError: JSON, I/O or HTTP failures talking to a remote signer.
        7000..=7999 => Fault::Outage,
        // OCSPError (not a signing failure) and CSRError: the request is unusable.
        8000..=9999 => Fault::Request,
        // CTError: submitting the precertificate to a CT log failed. CertStoreError: the
        // certificate database failed. Nothing was issued.
        10000..=11999 => Fault::Outage,
        _ => return None,
    })
}

/// Maps a cfssl failure to an error kind. cfssl answers its own errors with HTTP 400 and a
/// code from its `errors` package (category x1000 + reason, see [`fault_of`]), and
/// malformed calls with the HTTP status as the code.
fn cfssl_error(
    call: &str,
    response: &HttpResponse,
    code: i64,
    message: Option<&str>,
    profile: Option<&str>,
) -> Error {
    let message = message
        .map(|m| certwright_backend_http::excerpt(m.as_bytes()))
        .filter(|m| m != "(empty body)")
        .unwrap_or_else(|| response.excerpt());
    let profile = profile.unwrap_or("(default)");
    let status = response.status;
    let lower = message.to_ascii_lowercase();
    // Authentication outcomes are plain 400s told apart by their message.
    if lower.contains("invalid token") {
        return Error::Unauthorized {
            message: format!(
                "{call}: cfssl refused the authsign token: the HMAC key (Secret key `key`) \
                 is not the auth key of profile {profile}"
            ),
        };
    }
    if lower.contains("authentication required") {
        return Error::Unauthorized {
            message: format!(
                "{call}: cfssl profile {profile} requires authsign: put its HMAC key (hex) in \
                 the auth Secret under `key`"
            ),
        };
    }
    if lower.contains("no authentication provider") {
        return Error::misconfigured(format!(
            "{call}: cfssl profile {profile} has no auth key, so authsign cannot be used: \
             remove the HMAC key from the auth Secret"
        ));
    }
    if matches!(status.as_u16(), 401 | 403 | 404 | 405 | 408 | 429) || status.is_server_error() {
        return status_error(response, call, Some(&message), SystemTime::now()).unwrap_or_else(
            || Error::Transient {
                message: format!("{call} answered {status}: {message}"),
                source: None,
            },
        );
    }
    let said = format!("cfssl: {message} (code {code})");
    match fault_of(code) {
        Some(Fault::Credentials) => Error::Unauthorized {
            message: format!("{call}: {said}"),
        },
        Some(Fault::Configuration) => Error::misconfigured(format!(
            "{call}: cfssl cannot sign with profile {profile}: {said}"
        )),
        Some(Fault::Request) => Error::Rejected { reason: said },
        Some(Fault::Outage) => Error::Transient {
            message: format!("{call}: cfssl cannot sign for now: {said}"),
            source: None,
        },
        // Not in cfssl's table: this request's problem, in cfssl's words.
        None if status == StatusCode::BAD_REQUEST || status.is_success() => {
            Error::Rejected { reason: said }
        }
        None => status_error(response, call, Some(&said), SystemTime::now()).unwrap_or_else(|| {
            Error::InvalidResponse {
                message: format!("{call}: {said}"),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certwright_backend_http::HeaderMap;
    use certwright_simulators::{CsrBuilder, KeyKind};
    use std::net::{IpAddr, Ipv4Addr};

    mod against_the_simulator {
        use std::time::Duration;

        use certwright_simulators::rest_sim::{Behaviour, CfsslInfo, RestSimulator};
        use certwright_simulators::{CsrBuilder, KeyKind};
        use certwright_x509::Csr;

        use crate::{Flavor, RestBackend, RestConfig};
        use certwright_pki::{Backend, IssuedBundle, Outcome, SignRequest};

        async fn simulator() -> RestSimulator {
            RestSimulator::start().await.expect("simulator starts")
        }

        fn backend(sim: &RestSimulator) -> RestBackend {
            let mut config = RestConfig::new(sim.url());
            config.flavor = Flavor::Cfssl;
            config.ca_bundle_pem = Some(sim.tls_ca_pem().as_bytes().to_vec());
            config.timeout = Duration::from_secs(5);
            RestBackend::new(config).expect("valid configuration")
        }

        fn request() -> SignRequest {
            let generated = CsrBuilder::new(KeyKind::EcdsaP256)
                .common_name("www.example.test")
                .dns("www.example.test")
                .build();
            SignRequest::new(
                Csr::parse(generated.csr_pem.as_bytes()).expect("csr"),
                "uid-1",
            )
        }

        fn issued(outcome: Outcome) -> IssuedBundle {
            match outcome {
                Outcome::Issued(bundle) => bundle,
                other => panic!("expected Issued, got {other:?}"),
            }
        }

        #[tokio::test]
        async fn the_chain_is_fetched_before_the_csr_is_submitted() {
            let sim = simulator().await;
            let backend = backend(&sim);
            let request = request();

            // cfssl cannot tell its chain: nothing is signed, so the caller's retry
            // cannot make cfssl sign twice.
            sim.set_cfssl_info(CfsslInfo::Fail500);
            let err = backend.sign(&request).await.expect_err("no chain");
            assert_eq!(err.metric_label(), "transient", "{err}");
            assert_eq!(sim.sign_submissions(), 0);

            sim.set_cfssl_info(CfsslInfo::Chain);
            let bundle = issued(backend.sign(&request).await.expect("issued"));
            assert_eq!(bundle.chain.len(), 2, "leaf and the issuing CA");
            assert!(bundle.ca.as_ref().is_some_and(|ca| ca.is_self_issued()));
            assert_eq!(sim.sign_submissions(), 1);
            assert_eq!(sim.cfssl_info_calls(), 2);

            // The chain is cached from then on.
            issued(backend.sign(&request).await.expect("issued"));
            assert_eq!(sim.cfssl_info_calls(), 2);
        }

        #[tokio::test]
        async fn a_stale_cached_chain_is_fetched_again_rather_than_losing_the_certificate() {
            let sim = simulator().await;
            let backend = backend(&sim);
            // The health check caches the CA of before a rotation.
            sim.set_cfssl_info(CfsslInfo::OtherCa);
            backend.check().await.expect("healthy");
            sim.set_cfssl_info(CfsslInfo::Chain);

            let bundle = issued(backend.sign(&request()).await.expect("issued"));
            assert_eq!(bundle.chain.len(), 2);
            assert_eq!(sim.sign_submissions(), 1);
            assert_eq!(sim.cfssl_info_calls(), 2);

            // A certificate for another key is still refused, after one more look.
            sim.set_behaviour(Behaviour::WrongKey);
            let err = backend.sign(&request()).await.expect_err("wrong key");
            assert_eq!(err.metric_label(), "invalid_response", "{err}");
            assert!(err.to_string().contains("public key"), "{err}");
        }

        #[tokio::test]
        async fn garbage_and_silence_are_classified() {
            let sim = simulator().await;
            let mut config = RestConfig::new(sim.url());
            config.flavor = Flavor::Cfssl;
            config.ca_bundle_pem = Some(sim.tls_ca_pem().as_bytes().to_vec());
            config.timeout = Duration::from_secs(1);
            let backend = RestBackend::new(config).expect("valid configuration");
            backend.check().await.expect("healthy");
            for (behaviour, label) in [
                (Behaviour::Html200, "invalid_response"),
                (Behaviour::TruncatedJson, "invalid_response"),
                (Behaviour::Oversized(2 * 1024 * 1024), "invalid_response"),
                (Behaviour::Fail500, "transient"),
                (Behaviour::RateLimit(7), "rate_limited"),
                (Behaviour::Hang, "transient"),
                (Behaviour::Reject("CN not whitelisted".into()), "rejected"),
            ] {
                sim.set_behaviour(behaviour.clone());
                let err = backend.sign(&request()).await.expect_err("an error");
                assert_eq!(err.metric_label(), label, "{behaviour:?}: {err}");
            }
        }
    }

    #[test]
    fn authsign_token_is_hmac_sha256_of_the_request() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        let request = b"what do ya want for nothing?";
        let body = authenticated_body(b"Jefe", request).expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let token = BASE64
            .decode(body["token"].as_str().expect("token"))
            .expect("base64");
        let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            body["token"],
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
        );
        assert_eq!(body["request"], "d2hhdCBkbyB5YSB3YW50IGZvciBub3RoaW5nPw==");
        assert_eq!(body.as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn sign_request_shape() {
        let generated = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("www.example.test")
            .dns("www.example.test")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
            .email("ops@example.test")
            .build();
        let csr = Csr::parse(generated.csr_pem.as_bytes()).expect("csr");
        let body = serde_json::to_value(CfsslSignRequest {
            certificate_request: csr.to_pem(),
            profile: Some("web-server"),
            hosts: hosts(&csr),
        })
        .expect("json");
        assert_eq!(body["profile"], "web-server");
        assert_eq!(
            body["hosts"],
            serde_json::json!(["www.example.test", "10.1.2.3", "ops@example.test"])
        );
        assert!(
            body["certificate_request"]
                .as_str()
                .expect("pem")
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );

        // No profile and no SANs: both left out, so cfssl uses its default profile and
        // keeps whatever the CSR has.
        let bare = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("bare")
            .build();
        let csr = Csr::parse(bare.csr_pem.as_bytes()).expect("csr");
        let body = serde_json::to_value(CfsslSignRequest {
            certificate_request: csr.to_pem(),
            profile: None,
            hosts: hosts(&csr),
        })
        .expect("json");
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");

        // URI SANs: hosts left out, so cfssl copies the CSR's SANs itself.
        let spiffe = CsrBuilder::new(KeyKind::EcdsaP256)
            .dns("svc.example.test")
            .uri("spiffe://cluster.local/ns/a/sa/b")
            .build();
        let csr = Csr::parse(spiffe.csr_pem.as_bytes()).expect("csr");
        assert_eq!(hosts(&csr), None);
    }

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn failure(status: u16, code: i64, message: &str) -> Error {
        let body = serde_json::json!({
            "success": false,
            "result": null,
            "errors": [{"code": code, "message": message}],
            "messages": [],
        });
        read_envelope::<CertificateResult>(
            "POST https://cfssl/api/v1/cfssl/sign",
            &answer(status, &body.to_string()),
            Some("web-server"),
        )
        .expect_err("a failure")
    }

    #[test]
    fn cfssl_errors_map_to_kinds() {
        let cases: &[(u16, i64, &str, &str)] = &[
            (400, 400, "invalid token", "unauthorized"),
            (400, 400, "authentication required", "unauthorized"),
            (400, 400, "no authentication provider", "misconfigured"),
            (400, 5300, "Policy violation request", "rejected"),
            (400, 1003, "Failed to parse certificate", "rejected"),
            (400, 9002, "CSR decode failed", "rejected"),
            (400, 5200, "Invalid or unknown policy", "misconfigured"),
            (
                400,
                5100,
                "Invalid policy: no key usage available",
                "misconfigured",
            ),
            (
                400,
                7100,
                "API client authentication failure",
                "unauthorized",
            ),
            (
                400,
                2300,
                "Private key does not match public key",
                "misconfigured",
            ),
            (400, 5400, "Unknown policy profile", "misconfigured"),
            (
                400,
                1400,
                "Missing serial number in request",
                "misconfigured",
            ),
            (
                400,
                5500,
                "Request does not match policy whitelist",
                "rejected",
            ),
            (
                400,
                10100,
                "Certificate transparency precertificate submission failed",
                "transient",
            ),
            (400, 6000, "Failed to dial remote server", "transient"),
            (400, 12345, "something new", "rejected"),
            (
                400,
                400,
                "missing parameter 'certificate_request'",
                "rejected",
            ),
            (500, 0, "something broke", "transient"),
            (405, 405, "Method is not allowed:\"GET\"", "misconfigured"),
            (404, 0, "not found", "misconfigured"),
        ];
        for (status, code, message, label) in cases {
            let err = failure(*status, *code, message);
            assert_eq!(
                err.metric_label(),
                *label,
                "{status} {code} {message}: {err}"
            );
        }
        match failure(400, 5300, "Policy violation request") {
            Error::Rejected { reason } => {
                assert_eq!(reason, "cfssl: Policy violation request (code 5300)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cfssl_codes_are_read_by_category() {
        use Fault::*;
        let cases: &[(i64, Option<Fault>)] = &[
            // CertificateError: the CSR, except a profile that wants client serials.
            (1000, Some(Request)),
            (1002, Some(Request)),
            (1003, Some(Request)),
            (1300, Some(Request)),
            (1400, Some(Configuration)),
            // PrivateKeyError, IntermediatesError, RootError: cfssl's own CA.
            (2000, Some(Configuration)),
            (2300, Some(Configuration)),
            (2500, Some(Configuration)),
            (3003, Some(Configuration)),
            (4001, Some(Configuration)),
            // PolicyError: the profile, or the request against it.
            (5000, Some(Request)),
            (5100, Some(Configuration)),
            (5200, Some(Configuration)),
            (5300, Some(Request)),
            (5400, Some(Configuration)),
            (5500, Some(Request)),
            (5999, Some(Request)),
            // DialError and APIClientError: a remote signer; its authentication.
            (6000, Some(Outage)),
            (7100, Some(Credentials)),
            (7200, Some(Outage)),
            (7400, Some(Outage)),
            (7500, Some(Outage)),
            // OCSPError, CSRError.
            (8100, Some(Request)),
            (9000, Some(Request)),
            (9002, Some(Request)),
            (9300, Some(Request)),
            // CTError, CertStoreError.
            (10000, Some(Outage)),
            (10100, Some(Outage)),
            (11000, Some(Outage)),
            // Outside the table: HTTP statuses as codes, and codes cfssl may add.
            (0, None),
            (400, None),
            (999, None),
            (12000, None),
            (-1, None),
        ];
        for (code, fault) in cases {
            assert_eq!(fault_of(*code), *fault, "code {code}");
        }

        let err = failure(400, 5400, "Unknown policy profile");
        assert!(err.is_issuer_fault(), "{err}");
        assert!(err.to_string().contains("profile web-server"), "{err}");
        let err = failure(400, 10000, "Certificate transparency parsing failed");
        assert!(err.is_retryable(), "{err}");
        match failure(400, 12345, "something new") {
            Error::Rejected { reason } => {
                assert_eq!(reason, "cfssl: something new (code 12345)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn html_answers_read_alike_in_both_flavours() {
        let html = answer(
            200,
            "<!DOCTYPE html><html><title>Corporate SSO</title><p>Sign in</p></html>",
        );
        let cfssl = read_envelope::<CertificateResult>("POST https://cfssl/x", &html, None)
            .expect_err("html")
            .to_string();
        let certwright =
            super::super::parse_json::<serde_json::Value>("POST https://cfssl/x", &html)
                .expect_err("html")
                .to_string();
        assert_eq!(
            cfssl,
            certwright.replace("instead of JSON", "instead of cfssl's JSON")
        );
        assert!(cfssl.contains("Corporate SSO Sign in"), "{cfssl}");
    }

    #[test]
    fn envelope_success_and_garbage() {
        let ok = answer(
            200,
            r#"{"success":true,"result":{"certificate":"PEM"},"errors":[],"messages":[]}"#,
        );
        let result: CertificateResult = read_envelope("call", &ok, None).expect("a certificate");
        assert_eq!(result.certificate, "PEM");

        let html = answer(200, "<html><body>Login</body></html>");
        let err = read_envelope::<CertificateResult>("call", &html, None).expect_err("html");
        assert_eq!(err.metric_label(), "invalid_response");
        assert!(err.to_string().contains("Login"), "{err}");

        let truncated = answer(200, r#"{"success":true,"result":{"certif"#);
        let err = read_envelope::<CertificateResult>("call", &truncated, None).expect_err("cut");
        assert_eq!(err.metric_label(), "invalid_response");

        let plain_502 = answer(502, "Bad Gateway");
        let err = read_envelope::<CertificateResult>("call", &plain_502, None).expect_err("502");
        assert_eq!(err.metric_label(), "transient");
    }
}
