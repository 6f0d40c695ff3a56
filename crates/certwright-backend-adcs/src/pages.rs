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
    // Only the visible text: a script or style may say "denied" on any page.
    let text = page_text(&html);
    if let Some(id) = number_after(&text, "Your Request Id is ", '.')
        && !text.to_ascii_lowercase().contains("denied")
    {
        return Answer::Pending(Some(id));
    }
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
/// dropped, and each line trimmed. Linear in the page: the page is lowercased once, and
/// the search for a closing tag resumes where the previous one ended.
pub(crate) fn page_text(html: &str) -> String {
    // ASCII lowercasing keeps every byte offset, so indexes into `lower` are valid in
    // `html` (the markers searched are ASCII, hence on character boundaries).
    let lower = html.to_ascii_lowercase();
    let mut scripts = Closing::new("</script");
    let mut styles = Closing::new("</style");
    let mut out = String::with_capacity(html.len());
    let mut pos = 0;
    while let Some(rel) = html[pos..].find('<') {
        let open = pos + rel;
        out.push_str(&html[pos..open]);
        out.push('\n');
        let tail = &lower[open..];
        let skip_to = if tail.starts_with("<script") {
            scripts.after(&lower, open)
        } else if tail.starts_with("<style") {
            styles.after(&lower, open)
        } else {
            None
        };
        let from = skip_to.unwrap_or(open);
        pos = match html[from..].find('>') {
            Some(close) => from + close + 1,
            None => html.len(),
        };
    }
    out.push_str(&html[pos..]);
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

/// Finds closing tags in the lowercased page, remembering the last one found so that
/// many opening tags cost one pass over the page, not one each.
struct Closing {
    marker: &'static str,
    /// `None`: not searched yet; `Some(None)`: none from the last search on.
    last: Option<Option<usize>>,
}

impl Closing {
    fn new(marker: &'static str) -> Self {
        Closing { marker, last: None }
    }

    /// The offset just past the first closing marker at or after `from`.
    fn after(&mut self, lower: &str, from: usize) -> Option<usize> {
        let found = match self.last {
            Some(None) => None,
            Some(Some(at)) if at >= from => Some(at),
            _ => lower[from..].find(self.marker).map(|e| from + e),
        };
        self.last = Some(found);
        found.map(|at| at + self.marker.len())
    }
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
/// The remote procedure call failed (the CA service stopped mid-call).
pub(crate) const RPC_S_CALL_FAILED: u32 = 0x8007_06BE;
/// No more endpoints from the endpoint mapper: the CA service is not registered yet.
pub(crate) const EPT_S_NOT_REGISTERED: u32 = 0x8007_06D9;
/// The CA's COM server failed to start.
pub(crate) const CO_E_SERVER_EXEC_FAILURE: u32 = 0x8008_0005;
/// The data is invalid: on `certnew.cer`, certsrv knows no request with that id.
pub(crate) const ERROR_INVALID_DATA: u32 = 0x8007_000D;

/// What the caller should do about an error HRESULT.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The issuer's configuration is wrong: this sentence says how.
    Misconfigured(String),
    /// The request is refused for good.
    Rejected(String),
    /// Try later.
    Transient(String),
    /// Not a code we know: pass it through as the CA said it. Final on submission (the
    /// CA may hold the request); the caller decides.
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
        // The allow-list of codes worth trying again: the CA service is down or
        // restarting, so the request never reached it. Anything else is final.
        RPC_S_SERVER_UNAVAILABLE
        | RPC_S_CALL_FAILED
        | EPT_S_NOT_REGISTERED
        | CO_E_SERVER_EXEC_FAILURE => Verdict::Transient(format!(
            "the web enrollment server cannot reach the CA service ({said})"
        )),
        ERROR_INVALID_DATA => Verdict::Rejected(format!(
            "certsrv does not know this request (Request Id not found?) ({said})"
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
    fn a_script_saying_denied_does_not_hide_a_pending_request() {
        let pending = b"<html><script>var sMsg = 'Your request was denied';</script>\
            <style>.denied { color: red }</style>\
            <h3>Certificate Pending</h3><p>Your Request Id is 17.</p></html>";
        assert_eq!(
            read_answer(Some("text/html"), pending),
            Answer::Pending(Some(17))
        );
        let denied = b"<html><p>Your request was denied.</p><p>Your Request Id is 17.</p></html>";
        assert!(matches!(
            read_answer(Some("text/html"), denied),
            Answer::Denied { .. }
        ));
    }

    #[test]
    fn page_text_is_linear_in_script_tags() {
        // 1 MiB of script tags, closed and then unclosed: each tag once lowercased the
        // rest of the page, which took minutes.
        let closed = "<script>x</script>".repeat(1024 * 1024 / 18 / 2);
        let open = "<SCRIPT>y".repeat(1024 * 1024 / 9 / 2);
        let page = format!("{closed}<p>kept</p>{open}<style>");
        let text = page_text(&page);
        assert!(text.starts_with("kept\ny\n"), "{}", &text[..40]);
        assert_eq!(page_text("<style>a</style>b<script>c</script>d"), "b\nd");
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
        for code in [0x8007_06BA, 0x8007_06BE, 0x8007_06D9, 0x8008_0005] {
            assert!(matches!(explain(code, "x", "T"), Verdict::Transient(_)));
        }
        assert!(matches!(
            explain(ERROR_INVALID_DATA, "Request Id not found", "T"),
            Verdict::Rejected(m) if m.contains("0x8007000D")
        ));
    }
}
