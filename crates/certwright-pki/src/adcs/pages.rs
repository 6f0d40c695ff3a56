//! Reading certsrv's answers: the HTML pages of `certfnsh.asp`, `certnew.cer` and
//! `certcarc.asp`, by the markers existing clients rely on, and the HRESULTs AD CS puts
//! in them, turned into sentences a person can act on.

/// What a submission (`POST certfnsh.asp`) or a fetch (`GET certnew.cer`) answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The certificate itself (`application/pkix-cert`), PEM or DER.
    Certificate(Vec<u8>),
    /// Issued; fetch it with this request id.
    IssuedId(u64),
    /// Held for CA-manager approval under this id (the id is unknown on a fetch).
    Pending(Option<u64>),
    /// Denied by the CA (policy module or a CA manager), with its message.
    Denied {
        /// The disposition message, or the page's sentence.
        message: String,
        /// The HRESULT, when the page gives one.
        code: Option<u32>,
    },
    /// An error page with an HRESULT.
    Failed {
        /// The disposition or error message.
        message: String,
        /// The HRESULT.
        code: u32,
    },
    /// Nothing certsrv answers.
    Unknown,
}

/// Reads an answer by its content type and the reference's markers, in their order.
pub(crate) fn read_answer(content_type: Option<&str>, body: &[u8]) -> Answer {
    let ct = content_type.unwrap_or_default().to_ascii_lowercase();
    if ct.starts_with("application/pkix-cert") || ct.starts_with("application/x-x509") {
        return Answer::Certificate(body.to_vec());
    }
    let html = String::from_utf8_lossy(body);
    if let Some(id) = number_after(&html, "certnew.cer?ReqID=", '&') {
        return Answer::IssuedId(id);
    }
    if let Some(id) = number_after(&html, "Your Request Id is ", '.')
        && !html.contains("denied")
        && !html.contains("Denied")
    {
        return Answer::Pending(Some(id));
    }
    let text = page_text(&html);
    let message = disposition(&text);
    let code = hresult(&text);
    if text.contains("Taken Under Submission") {
        return Answer::Pending(None);
    }
    let denied = text.contains("Denied by")
        || text.contains("was denied")
        || code == Some(CERTSRV_E_ADMIN_DENIED_REQUEST);
    if denied {
        return Answer::Denied {
            message: message.unwrap_or_else(|| "the request was denied".to_string()),
            code,
        };
    }
    match (code, message) {
        (Some(code), Some(message)) => Answer::Failed { message, code },
        (Some(code), None) => Answer::Failed {
            message: sentence_around(&text, code),
            code,
        },
        _ => Answer::Unknown,
    }
}

/// `var nRenewals=<n>;` of `certcarc.asp`.
pub(crate) fn renewals(body: &[u8]) -> Option<u32> {
    let html = String::from_utf8_lossy(body);
    let compact: String = html.chars().filter(|c| !c.is_whitespace()).collect();
    number_after(&compact, "varnRenewals=", ';').and_then(|n| u32::try_from(n).ok())
}

fn number_after(haystack: &str, marker: &str, terminator: char) -> Option<u64> {
    haystack.match_indices(marker).find_map(|(at, _)| {
        let rest = &haystack[at + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let next = rest[digits.len()..].chars().next();
        if digits.is_empty() || digits.len() > 18 || next != Some(terminator) {
            return None;
        }
        digits.parse().ok()
    })
}

/// The page as text: tags become line breaks, entities are decoded, scripts and styles
/// dropped, and each line trimmed.
pub(crate) fn page_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        out.push('\n');
        let after = &rest[open..];
        let lower = after.get(..8).unwrap_or(after).to_ascii_lowercase();
        let skip_to = if lower.starts_with("<script") {
            after.to_ascii_lowercase().find("</script").map(|e| e + 8)
        } else if lower.starts_with("<style") {
            after.to_ascii_lowercase().find("</style").map(|e| e + 7)
        } else {
            None
        };
        let from = skip_to.unwrap_or(0);
        match after[from..].find('>') {
            Some(close) => rest = &after[from + close + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    decoded
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `The disposition message is "<text>"`, or the text after `Disposition message:`.
fn disposition(text: &str) -> Option<String> {
    const QUOTED: &str = "The disposition message is \"";
    if let Some(at) = text.find(QUOTED) {
        let rest = &text[at + QUOTED.len()..];
        let end = rest.find('"').unwrap_or(rest.len());
        return Some(clean(&rest[..end]));
    }
    const LABEL: &str = "Disposition message:";
    let at = text.find(LABEL)?;
    let rest = text[at + LABEL.len()..].trim_start();
    let line = rest.lines().next().unwrap_or_default();
    Some(clean(line)).filter(|m| !m.is_empty())
}

/// The first HRESULT (`0x8xxxxxxx`) in the text.
fn hresult(text: &str) -> Option<u32> {
    text.match_indices("0x").find_map(|(at, _)| {
        let hex: String = text[at + 2..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        if hex.len() != 8 || !hex.starts_with('8') {
            return None;
        }
        u32::from_str_radix(&hex, 16).ok()
    })
}

fn sentence_around(text: &str, code: u32) -> String {
    let needle = format!("{code:x}");
    text.lines()
        .find(|l| l.to_ascii_lowercase().contains(&needle))
        .map(clean)
        .unwrap_or_else(|| format!("error 0x{code:08X}"))
}

/// At most 300 printable characters.
fn clean(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 300 {
        let mut cut: String = s.chars().take(300).collect();
        cut.push('…');
        cut
    } else {
        s
    }
}

/// The request was denied by a CA manager or administrator.
pub(crate) const CERTSRV_E_ADMIN_DENIED_REQUEST: u32 = 0x8009_4014;
/// The template is not offered by the CA, or unknown.
pub(crate) const CERTSRV_E_UNSUPPORTED_CERT_TYPE: u32 = 0x8009_4800;
/// The request names no template.
pub(crate) const CERTSRV_E_NO_CERT_TYPE: u32 = 0x8009_4801;
/// A property the template needs is missing from the request (often a permission or
/// subject-name setting of the template).
pub(crate) const CERTSRV_E_PROPERTY_EMPTY: u32 = 0x8009_4004;
/// Access denied.
pub(crate) const E_ACCESSDENIED: u32 = 0x8007_0005;
/// The RPC server is unavailable: the CA service is not running.
pub(crate) const RPC_S_SERVER_UNAVAILABLE: u32 = 0x8007_06BA;

/// What the caller should do about an error HRESULT.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The issuer's configuration is wrong: this sentence says how.
    Misconfigured(String),
    /// The request is refused for good.
    Rejected(String),
    /// Try later.
    Transient(String),
    /// Not a code we know: pass it through as the CA said it.
    Unknown(String),
}

/// The sentence for an HRESULT from certsrv, with the template the request named.
pub(crate) fn explain(code: u32, message: &str, template: &str) -> Verdict {
    let said = format!("certsrv said 0x{code:08X}: {message}");
    match code {
        CERTSRV_E_UNSUPPORTED_CERT_TYPE => Verdict::Misconfigured(format!(
            "the CA does not offer certificate template {template:?} (CERTSRV_E_UNSUPPORTED_CERT_TYPE): \
             set templateName to the template's name (not its display name) and publish the \
             template on the CA ({said})"
        )),
        CERTSRV_E_NO_CERT_TYPE => Verdict::Misconfigured(format!(
            "the CA found no certificate template in the request (CERTSRV_E_NO_CERT_TYPE): check \
             templateName {template:?} and that the account may enroll for it ({said})"
        )),
        CERTSRV_E_PROPERTY_EMPTY => Verdict::Misconfigured(format!(
            "template {template:?} needs something the request lacks (CERTSRV_E_PROPERTY_EMPTY): \
             set the template's subject name to \"Supply in the request\" and give the account \
             Read and Enroll on it ({said})"
        )),
        E_ACCESSDENIED => Verdict::Misconfigured(format!(
            "access denied: give the account Read and Enroll on template {template:?} and \
             Request Certificates on the CA ({said})"
        )),
        CERTSRV_E_ADMIN_DENIED_REQUEST => Verdict::Rejected(format!(
            "denied by a CA manager or administrator: {message} (0x{code:08X} \
             CERTSRV_E_ADMIN_DENIED_REQUEST)"
        )),
        RPC_S_SERVER_UNAVAILABLE => Verdict::Transient(format!(
            "the web enrollment server cannot reach the CA service ({said})"
        )),
        _ => Verdict::Unknown(said),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_reference_order() {
        assert_eq!(
            read_answer(Some("application/pkix-cert"), b"-----BEGIN"),
            Answer::Certificate(b"-----BEGIN".to_vec())
        );
        let issued = br#"<html><a href="certnew.cer?ReqID=42&amp;Enc=b64">Download</a></html>"#;
        assert_eq!(read_answer(Some("text/html"), issued), Answer::IssuedId(42));
        let pending = b"<html><h3>Certificate Pending</h3><p>Your Request Id is 17.</p></html>";
        assert_eq!(
            read_answer(Some("text/html"), pending),
            Answer::Pending(Some(17))
        );
        let wrong_template = br#"<html><p>Your certificate request was denied.</p><p>Your Request Id is 0. The disposition message is "Denied by Policy Module  0x80094800, The request was for a certificate template that is not supported by the Active Directory Certificate Services policy: Bogus. ".</p></html>"#;
        match read_answer(Some("text/html"), wrong_template) {
            Answer::Denied { message, code } => {
                assert_eq!(code, Some(CERTSRV_E_UNSUPPORTED_CERT_TYPE));
                assert!(
                    message.starts_with("Denied by Policy Module 0x80094800"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let under = b"<html><td>Disposition message:</td><td>Taken Under Submission</td></html>";
        assert_eq!(read_answer(Some("text/html"), under), Answer::Pending(None));
        let error = b"<html><p>An unexpected error has occurred: 0x80070005 (WIN32: 5 ERROR_ACCESS_DENIED)</p></html>";
        match read_answer(Some("text/html"), error) {
            Answer::Failed { code, message } => {
                assert_eq!(code, E_ACCESSDENIED);
                assert!(message.contains("ERROR_ACCESS_DENIED"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            read_answer(Some("text/html"), b"<html>Sign in to Corp SSO</html>"),
            Answer::Unknown
        );
    }

    #[test]
    fn renewals_are_read() {
        assert_eq!(renewals(b"<script>\nvar nRenewals=3;\n</script>"), Some(3));
        assert_eq!(renewals(b"var nRenewals = 0 ;"), Some(0));
        assert_eq!(renewals(b"var nRenewals=;"), None);
    }

    #[test]
    fn page_text_drops_markup_and_scripts() {
        let text = page_text("<p>a&amp;b</p><script>if (x < 3) {}</script><b>c</b");
        assert_eq!(text, "a&b\nc");
    }

    #[test]
    fn hresults_become_actionable_sentences() {
        assert!(matches!(
            explain(CERTSRV_E_UNSUPPORTED_CERT_TYPE, "x", "WebServer"),
            Verdict::Misconfigured(m) if m.contains("templateName") && m.contains("WebServer")
        ));
        assert!(matches!(
            explain(CERTSRV_E_ADMIN_DENIED_REQUEST, "x", "T"),
            Verdict::Rejected(_)
        ));
        assert!(matches!(
            explain(CERTSRV_E_PROPERTY_EMPTY, "x", "T"),
            Verdict::Misconfigured(_)
        ));
        assert!(matches!(
            explain(CERTSRV_E_NO_CERT_TYPE, "x", "T"),
            Verdict::Misconfigured(_)
        ));
        assert!(matches!(
            explain(0x8009_4011, "odd", "T"),
            Verdict::Unknown(m) if m.contains("0x80094011")
        ));
    }
}
