//! What goes over the wire to EJBCA and back: request bodies, the answers' JSON, the
//! certificates inside them, and how a failed answer maps to an [`Error`] kind.
//!
//! Field names follow EJBCA's REST interface (snake_case, as its JSON mapper writes them):
//! `EnrollCertificateRestRequest`, `FinalizeRestRequest`, `CertificateRestResponse`,
//! `RestResourceStatusRestResponse`, `CaInfosRestResponse`, the error body
//! `{"error_code", "error_message"}` and the approval answer `{"status_code": 202,
//! "info_message", "request_id", "link"}`.

use std::time::SystemTime;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use certwright_x509::{Certificate, parse_pem_bundle};

use certwright_backend_http::{HttpResponse, StatusCode, excerpt, status_error};
use certwright_pki::Error;

/// The response format certwright asks for: the certificate as base64 DER, the chain as a
/// list of base64 DER certificates.
pub(super) const RESPONSE_FORMAT: &str = "DER";

/// `POST {url}/v1/certificate/pkcs10enroll`.
#[derive(Serialize)]
pub(super) struct EnrollBody<'a> {
    pub(super) certificate_request: String,
    pub(super) certificate_profile_name: &'a str,
    pub(super) end_entity_profile_name: &'a str,
    pub(super) certificate_authority_name: &'a str,
    pub(super) username: &'a str,
    pub(super) password: &'a str,
    pub(super) include_chain: bool,
    pub(super) response_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) account_binding_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) end_time: Option<String>,
}

/// `POST {url}/v1/certificate/{request_id}/finalize`.
#[derive(Serialize)]
pub(super) struct FinalizeBody<'a> {
    pub(super) response_format: &'static str,
    pub(super) password: &'a str,
}

/// `CertificateRestResponse`: 201 of pkcs10enroll and finalize.
#[derive(Debug, Deserialize)]
pub(super) struct CertificateBody {
    pub(super) certificate: String,
    #[serde(default)]
    pub(super) response_format: Option<String>,
    #[serde(default)]
    pub(super) certificate_chain: Option<Vec<String>>,
}

/// `SearchCertificatesRestResponse`: 200 of `/v1/certificate/search`.
#[derive(Debug, Deserialize)]
pub(super) struct SearchBody {
    #[serde(default)]
    pub(super) certificates: Vec<CertificateBody>,
    #[serde(default)]
    pub(super) more_results: bool,
}

/// The 202 of an enrollment held for approval (`ExceptionInfoRestResponse`). Older
/// EJBCA versions send only the `link` to the finalize call; newer ones also `request_id`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct WaitingBody {
    #[serde(default)]
    pub(super) request_id: Option<Value>,
    #[serde(default)]
    pub(super) link: Option<String>,
}

impl WaitingBody {
    /// The approval request id, from `request_id` or else the finalize `link`.
    pub(super) fn request_id(&self) -> Option<i64> {
        let from_field = match &self.request_id {
            Some(Value::Number(n)) => n.as_i64().filter(|n| i32::try_from(*n).is_ok()),
            Some(Value::String(s)) => super::sealed::parse_request_id(s.trim()),
            _ => None,
        };
        from_field.or_else(|| {
            let link = self.link.as_deref()?;
            let path = link.split(['?', '#']).next()?;
            let mut segments = path.trim_end_matches('/').rsplit('/');
            match (segments.next(), segments.next()) {
                (Some("finalize"), Some(id)) => super::sealed::parse_request_id(id),
                _ => None,
            }
        })
    }
}

/// `RestResourceStatusRestResponse`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StatusBody {
    #[serde(default)]
    pub(super) status: Option<String>,
    #[serde(default)]
    pub(super) version: Option<String>,
    #[serde(default)]
    pub(super) revision: Option<String>,
}

/// `CaInfosRestResponse`.
#[derive(Debug, Deserialize)]
pub(super) struct CaList {
    #[serde(default)]
    pub(super) certificate_authorities: Vec<CaInfo>,
}

/// One entry of [`CaList`].
#[derive(Debug, Deserialize)]
pub(super) struct CaInfo {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) subject_dn: String,
}

/// EJBCA's error body (`ExceptionErrorRestResponse`).
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error_code: Option<Value>,
    #[serde(default)]
    error_message: Option<String>,
}

/// EJBCA's `error_message`, sanitized, when the body is EJBCA's error JSON.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    if parsed.error_code.is_none() && parsed.error_message.is_none() {
        return None;
    }
    parsed
        .error_message
        .map(|m| excerpt(m.as_bytes()))
        .filter(|m| m != "(empty body)")
        .or_else(|| Some("(no error_message)".to_string()))
}

/// Which call failed: a 404 means different things for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CallKind {
    /// pkcs10enroll or finalize: EJBCA's own 404 names a profile, CA, end entity or
    /// request it does not know, which fails this request.
    Enrollment,
    /// Status, CA list, chain download: any 404 is a wrong URL.
    Read,
}

/// The error for a non-2xx (or unexpected 2xx) answer, passing EJBCA's `error_message`
/// through.
///
/// - 401, 403: [`Error::Unauthorized`] (refused credentials, missing access rules, the
///   REST protocol disabled in EJBCA's System Configuration).
/// - 429: [`Error::RateLimited`]; 408 and 5xx: [`Error::Transient`].
/// - 400, 409, 422 and other 4xx: [`Error::Rejected`] with EJBCA's message (a profile that
///   does not allow the request, a CSR EJBCA refuses, a denied or expired approval).
/// - 404 carrying EJBCA's error body on an enrollment call: [`Error::Rejected`]; any other
///   404: [`Error::Misconfigured`] (the url does not reach EJBCA's REST API).
pub(super) fn api_error(call: &str, response: &HttpResponse, kind: CallKind) -> Error {
    let status = response.status;
    if status.is_success() {
        return Error::InvalidResponse {
            message: format!("{call} answered {status}, which EJBCA's API does not define here"),
        };
    }
    let message = error_message(&response.body);
    if status == StatusCode::NOT_FOUND
        && kind == CallKind::Enrollment
        && let Some(message) = &message
    {
        return Error::Rejected {
            reason: message.clone(),
        };
    }
    status_error(response, call, message.as_deref(), SystemTime::now()).unwrap_or_else(|| {
        Error::InvalidResponse {
            message: format!("{call} answered {status}"),
        }
    })
}

/// Parses a 2xx JSON body; HTML, truncated or mis-shaped bodies are invalid responses
/// quoting a short excerpt.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    call: &str,
    response: &HttpResponse,
) -> Result<T, Error> {
    if response.looks_like_html() {
        return Err(response.html_instead_of(call, "EJBCA's JSON"));
    }
    serde_json::from_slice(&response.body).map_err(|e| Error::InvalidResponse {
        message: format!(
            "{call} answered {} with a body that is not the expected JSON ({e}): {}",
            response.status,
            response.excerpt()
        ),
    })
}

/// The issued certificate(s) of a `CertificateRestResponse` (its `certificate` field).
pub(super) fn issued_certificates(
    call: &str,
    body: &CertificateBody,
) -> Result<Vec<Certificate>, Error> {
    if let Some(format) = body.response_format.as_deref()
        && !matches!(format.to_ascii_uppercase().as_str(), "DER" | "PEM")
    {
        return Err(Error::InvalidResponse {
            message: format!(
                "{call}: EJBCA answered in response_format {:?}; certwright asks for DER and \
                 reads DER or PEM",
                excerpt(format.as_bytes())
            ),
        });
    }
    decode_certificates(call, "certificate", &body.certificate)
}

/// The chain of a `CertificateRestResponse` (`certificate_chain`), when EJBCA sent one.
pub(super) fn chain_certificates(
    call: &str,
    body: &CertificateBody,
) -> Result<Vec<Certificate>, Error> {
    let mut certs = Vec::new();
    for (i, entry) in body.certificate_chain.iter().flatten().enumerate() {
        certs.extend(decode_certificates(
            call,
            &format!("certificate_chain[{i}]"),
            entry,
        )?);
    }
    Ok(certs)
}

/// One certificate field: PEM text, base64 of PEM text, or base64 of DER (what EJBCA's
/// JSON mapper makes of the certificate bytes in each response format). EJBCA keeps the
/// certificate as a `byte[]` that already holds base64 text, and the mapper encodes it
/// once more: base64(base64(DER)) is read too.
pub(super) fn decode_certificates(
    call: &str,
    field: &str,
    value: &str,
) -> Result<Vec<Certificate>, Error> {
    let invalid = |why: String| Error::InvalidResponse {
        message: format!("{call}: `{field}` is not a usable certificate: {why}"),
    };
    if value.contains("-----BEGIN") {
        return parse_pem_bundle(value.as_bytes()).map_err(|e| invalid(e.to_string()));
    }
    let is_pem = |bytes: &[u8]| {
        let text_start = bytes.iter().position(|b| !b.is_ascii_whitespace());
        text_start.is_some_and(|start| bytes[start..].starts_with(b"-----BEGIN"))
    };
    let mut bytes = decode_base64(value.as_bytes()).map_err(|why| invalid(why.to_string()))?;
    // At most one more layer: DER starts with a SEQUENCE tag (0x30), which is not a
    // base64 character; text made of base64 characters alone is another layer.
    if !is_pem(&bytes) && bytes.first() != Some(&0x30) && is_base64_text(&bytes) {
        bytes = decode_base64(&bytes)
            .map_err(|why| invalid(format!("{why} (in the inner base64 layer)")))?;
    }
    if is_pem(&bytes) {
        return parse_pem_bundle(&bytes).map_err(|e| invalid(e.to_string()));
    }
    Certificate::from_der(&bytes)
        .map(|cert| vec![cert])
        .map_err(|e| invalid(e.to_string()))
}

/// Standard or URL-safe base64, whitespace ignored.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, &'static str> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err("it is empty");
    }
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&compact))
        .map_err(|_| "neither PEM nor base64")
}

/// Whether `bytes` are base64 text (either alphabet, padding, line breaks) and nothing else.
fn is_base64_text(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| !b.is_ascii_whitespace())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=-_".contains(b) || b.is_ascii_whitespace())
}

pub(super) use certwright_backend_http::parse_https_url;

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub(super) fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn push_encoded(out: &mut String, text: &str) {
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(byte as char)
                }
                b' ' => out.push('+'),
                other => out.push_str(&format!("%{other:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        push_encoded(&mut out, name);
        out.push('=');
        push_encoded(&mut out, value);
    }
    out
}

/// A date in a certificate search criterion: `YYYY-MM-DDTHH:MM:SSZ`, the only form
/// EJBCA's search validation accepts.
pub(super) fn format_search_date(unix_seconds: u64) -> String {
    let (date, time) = date_and_time(unix_seconds);
    format!("{date}T{time}Z")
}

/// `YYYY-MM-DD` and `HH:MM:SS` of a Unix time, in UTC.
fn date_and_time(unix_seconds: u64) -> (String, String) {
    let days = (unix_seconds / 86_400) as i64;
    let second_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_date(days);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!(
            "{:02}:{:02}:{:02}",
            second_of_day / 3600,
            (second_of_day % 3600) / 60,
            second_of_day % 60
        ),
    )
}

/// `end_time` for EJBCA: `YYYY-MM-DD HH:MM:SS+00:00`, the ISO 8601 form EJBCA parses.
pub(super) fn format_end_time(unix_seconds: u64) -> String {
    let (date, time) = date_and_time(unix_seconds);
    format!("{date} {time}+00:00")
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01.
/// Works in 400-year cycles of 146 097 days, with years starting on 1 March so that the
/// leap day falls at the end of each year.
fn civil_date(days_since_epoch: i64) -> (i64, u32, u32) {
    // Shift the origin to 0000-03-01.
    let days = days_since_epoch + 719_468;
    let cycle = days.div_euclid(146_097);
    let day_of_cycle = days.rem_euclid(146_097);
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    // Months counted from March: 0 = March ... 11 = February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_cycle + cycle * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certwright_backend_http::HeaderMap;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    const CALL: &str =
        "POST https://ejbca.example/ejbca/ejbca-rest-api/v1/certificate/pkcs10enroll";

    #[test]
    fn end_times_are_iso_dates_in_utc() {
        assert_eq!(format_end_time(0), "1970-01-01 00:00:00+00:00");
        assert_eq!(format_end_time(951_782_400), "2000-02-29 00:00:00+00:00");
        assert_eq!(format_end_time(1_735_689_599), "2024-12-31 23:59:59+00:00");
        assert_eq!(format_end_time(1_735_689_600), "2025-01-01 00:00:00+00:00");
        // Search criteria take only EJBCA's strict form.
        assert_eq!(format_search_date(1_735_693_261), "2025-01-01T01:01:01Z");
        assert_eq!(format_end_time(4_107_542_400), "2100-03-01 00:00:00+00:00");
        assert_eq!(
            format_end_time(253_402_300_799),
            "9999-12-31 23:59:59+00:00"
        );
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            form_encode(&[
                ("grant_type", "client_credentials"),
                ("scope", "api://ejbca/.default openid"),
                ("client_secret", "a&b=c+d/é")
            ]),
            "grant_type=client_credentials&scope=api%3A%2F%2Fejbca%2F.default+openid&\
             client_secret=a%26b%3Dc%2Bd%2F%C3%A9"
        );
    }

    #[test]
    fn errors_map_to_one_kind_each_and_pass_the_message_through() {
        let body = r#"{"error_code":400,"error_message":"Certificate profile TLSCLIENT is not available"}"#;
        match api_error(CALL, &answer(400, body), CallKind::Enrollment) {
            Error::Rejected { reason } => {
                assert_eq!(reason, "Certificate profile TLSCLIENT is not available")
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        let cases: &[(u16, &str, CallKind, &str)] = &[
            (
                401,
                r#"{"error_code":401,"error_message":"bad token"}"#,
                CallKind::Read,
                "unauthorized",
            ),
            (
                403,
                r#"{"error_code":403,"error_message":"Not authorized to resource /ca/X"}"#,
                CallKind::Enrollment,
                "unauthorized",
            ),
            (429, "", CallKind::Enrollment, "rate_limited"),
            (
                500,
                r#"{"error_code":500,"error_message":"General failure."}"#,
                CallKind::Enrollment,
                "transient",
            ),
            (503, "<html>down</html>", CallKind::Enrollment, "transient"),
            (
                422,
                r#"{"error_code":422,"error_message":"Wrong CN"}"#,
                CallKind::Enrollment,
                "rejected",
            ),
            (
                409,
                r#"{"error_code":409,"error_message":"conflict"}"#,
                CallKind::Enrollment,
                "rejected",
            ),
            (
                404,
                r#"{"error_code":404,"error_message":"CA 'X' does not exist."}"#,
                CallKind::Enrollment,
                "rejected",
            ),
            (
                404,
                r#"{"error_code":404,"error_message":"nope"}"#,
                CallKind::Read,
                "misconfigured",
            ),
            (
                404,
                "<html>Not Found</html>",
                CallKind::Enrollment,
                "misconfigured",
            ),
            (
                404,
                r#"{"message":"no route"}"#,
                CallKind::Enrollment,
                "misconfigured",
            ),
            (200, "{}", CallKind::Read, "invalid_response"),
        ];
        for (status, body, kind, label) in cases {
            let err = api_error(CALL, &answer(*status, body), *kind);
            assert_eq!(err.metric_label(), *label, "{status} {body}: {err}");
        }
        let err = api_error(
            CALL,
            &answer(
                403,
                r#"{"error_code":403,"error_message":"Not authorized to resource /ca/X"}"#,
            ),
            CallKind::Read,
        );
        assert!(
            err.to_string().contains("Not authorized to resource /ca/X"),
            "{err}"
        );
    }

    #[test]
    fn certificates_come_as_pem_base64_pem_or_base64_der() {
        let ca =
            certwright_simulators::TestCa::root(certwright_simulators::KeyKind::EcdsaP256, "R");
        let pem = ca.cert_pem().to_string();
        let der = ca.cert().cert_der.clone();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let twice = b64(b64(&der).as_bytes());
        for value in [pem.clone(), b64(pem.as_bytes()), b64(&der), twice.clone()] {
            let certs = decode_certificates(CALL, "certificate", &value).expect("decodes");
            assert_eq!(certs.len(), 1);
            assert_eq!(certs[0].der(), der.as_slice());
        }
        // Line-wrapped base64 too.
        let wrapped: String = b64(&der)
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
            .collect();
        assert!(decode_certificates(CALL, "certificate", &wrapped).is_ok());
        for bad in ["", "not base64!", "AAAA"] {
            let err = decode_certificates(CALL, "certificate", bad).expect_err(bad);
            assert_eq!(err.metric_label(), "invalid_response");
        }
        let body = CertificateBody {
            certificate: b64(&der),
            response_format: Some("PKCS7".into()),
            certificate_chain: None,
        };
        let err = issued_certificates(CALL, &body).expect_err("pkcs7");
        assert!(err.to_string().contains("PKCS7"), "{err}");

        // EJBCA's byte[] of base64 text, encoded once more, in the chain too.
        let body = CertificateBody {
            certificate: twice.clone(),
            response_format: Some("DER".into()),
            certificate_chain: Some(vec![twice.clone(), b64(&der)]),
        };
        assert_eq!(
            issued_certificates(CALL, &body).expect("leaf")[0].der(),
            der.as_slice()
        );
        let chain = chain_certificates(CALL, &body).expect("chain");
        assert_eq!(chain.len(), 2);
        assert!(chain.iter().all(|c| c.der() == der.as_slice()));
        // Never a third layer: base64 thrice is not a certificate.
        let thrice = b64(twice.as_bytes());
        assert!(decode_certificates(CALL, "certificate", &thrice).is_err());
    }

    #[test]
    fn approval_ids_come_from_the_field_or_the_link() {
        let parse = |json: &str| -> Option<i64> {
            serde_json::from_str::<WaitingBody>(json)
                .expect("json")
                .request_id()
        };
        assert_eq!(parse(r#"{"request_id": 1001}"#), Some(1001));
        assert_eq!(parse(r#"{"request_id": "-7"}"#), Some(-7));
        assert_eq!(
            parse(
                r#"{"link": "https://e.example/ejbca/ejbca-rest-api/v1/certificate/55/finalize"}"#
            ),
            Some(55)
        );
        assert_eq!(parse(r#"{"info_message": "waiting"}"#), None);
        assert_eq!(parse(r#"{"request_id": 99999999999}"#), None);
        assert_eq!(
            parse(r#"{"link": "https://e.example/v1/certificate/x/finalize"}"#),
            None
        );
    }

    #[test]
    fn configured_urls_are_checked_without_quoting_secrets() {
        assert!(parse_https_url("url", "https://ejbca.example/ejbca/ejbca-rest-api").is_ok());
        for bad in [
            "http://ejbca.example",
            "https://u:hunter2@ejbca.example",
            "https://ejbca.example/?token=hunter2",
            "hunter2",
        ] {
            let err = parse_https_url("url", bad).expect_err(bad);
            assert_eq!(err.metric_label(), "misconfigured");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
