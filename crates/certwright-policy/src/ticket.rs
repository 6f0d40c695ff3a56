//! The pure half of change-ticket approval: which ticket a request names, the URL to
//! ask, what the answer means, and when to ask again. The engine performs the call.

use std::time::Duration;

use certwright_api::policy::DEFAULT_TICKET_ANNOTATION;
use certwright_api::{TicketCheck, parse_duration};

/// The longest ticket id accepted.
pub const MAX_TICKET_LEN: usize = 128;
/// The default wait before an open ticket is looked at again.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(60);
/// The wait grows to at most this many times the recheck interval.
pub const MAX_RECHECK_FACTOR: u32 = 16;
/// Where the ticket goes in a URL template.
pub const PLACEHOLDER: &str = "{ticket}";

/// A policy's ticket check, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketConfig {
    /// The annotation that names the ticket.
    pub annotation: String,
    /// The ticket ids accepted (`*` wildcards).
    pub id_pattern: String,
    /// Where the answer names what the ticket approves (a JSON pointer).
    pub reference_field: Option<String>,
    /// The URL template, with [`PLACEHOLDER`].
    pub url: String,
    /// The JSON pointer to the ticket's state.
    pub status_field: String,
    /// States that mean approved.
    pub approved: Vec<String>,
    /// States that mean rejected.
    pub rejected: Vec<String>,
    /// The first wait before an open ticket is looked at again.
    pub recheck: Duration,
    /// The Secret with credentials, in the controller's cluster resource namespace.
    pub credentials_secret: Option<String>,
    /// PEM CA certificates for the ticket system's TLS.
    pub ca_bundle: Option<Vec<u8>>,
}

impl TicketConfig {
    /// Reads a ticket check.
    ///
    /// # Errors
    /// When the URL template or status field is unusable.
    pub fn new(check: &TicketCheck) -> Result<TicketConfig, String> {
        check_url_template(&check.url)?;
        check_pointer(&check.status_field)?;
        Ok(TicketConfig {
            annotation: check
                .annotation
                .clone()
                .unwrap_or_else(|| DEFAULT_TICKET_ANNOTATION.to_string()),
            id_pattern: check.id_pattern.clone(),
            reference_field: check.reference_field.clone(),
            url: check.url.clone(),
            status_field: check.status_field.clone(),
            approved: check.approved_values.clone(),
            rejected: check.rejected_values.clone(),
            recheck: check
                .recheck_interval
                .as_deref()
                .and_then(|v| parse_duration(v).ok())
                .unwrap_or(DEFAULT_RECHECK),
            credentials_secret: check.credentials_secret_name.clone(),
            ca_bundle: check.ca_bundle.as_ref().map(|b| b.as_ref().to_vec()),
        })
    }

    /// The ticket a request names in its annotations: `Ok(None)` when it names none.
    ///
    /// # Errors
    /// When the annotation holds something that is not a ticket id, or an id the
    /// policy's `idPattern` does not accept.
    pub fn ticket_of<'a>(
        &self,
        annotations: &'a std::collections::BTreeMap<String, String>,
    ) -> Result<Option<&'a str>, String> {
        let Some(id) = annotations.get(&self.annotation) else {
            return Ok(None);
        };
        check_ticket_id(id).map_err(|why| format!("is not a ticket id: it {why}"))?;
        let id = id.trim();
        if !crate::wildcard::matches(&self.id_pattern, id) {
            return Err(format!(
                "is {id:?}, not a ticket this policy accepts (ids matching {:?})",
                self.id_pattern
            ));
        }
        Ok(Some(id))
    }

    /// The URL that tells the state of `ticket` (already checked with
    /// [`check_ticket_id`]).
    pub fn url_for(&self, ticket: &str) -> String {
        self.url.replace(PLACEHOLDER, &percent_encode(ticket))
    }

    /// How long to wait before asking about an open ticket again, after `looks` looks:
    /// the recheck interval, doubling, up to [`MAX_RECHECK_FACTOR`] times it.
    pub fn wait_after(&self, looks: u32) -> Duration {
        let factor = 1u32
            .checked_shl(looks.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX)
            .min(MAX_RECHECK_FACTOR);
        self.recheck.saturating_mul(factor)
    }

    /// What a ticket system's answer says. `reference` is what the ticket must name
    /// (the request's `<namespace>/<certificate>`), checked when the policy has a
    /// `referenceField`.
    pub fn read_answer(&self, body: &[u8], reference: &str) -> TicketState {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
            return TicketState::Unreadable("the answer is not JSON".to_string());
        };
        let Some(value) = json.pointer(&self.status_field) else {
            return TicketState::Unreadable(format!("the answer has no {}", self.status_field));
        };
        let state = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => value.to_string(),
            _ => {
                return TicketState::Unreadable(format!(
                    "{} is not a string, number or boolean",
                    self.status_field
                ));
            }
        };
        let state: String = state.chars().take(MAX_TICKET_LEN).collect();
        if let Some(field) = &self.reference_field {
            let names = json
                .pointer(field)
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            if !mentions(&names, reference) {
                return TicketState::NotForThis(format!("its {field} does not name {reference}"));
            }
        }
        if self.approved.contains(&state) {
            TicketState::Approved(state)
        } else if self.rejected.contains(&state) {
            TicketState::Rejected(state)
        } else {
            TicketState::Open(state)
        }
    }
}

/// What a ticket system says of a ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TicketState {
    /// In one of the approved states (named).
    Approved(String),
    /// In one of the rejected states (named).
    Rejected(String),
    /// In another state (named): ask again later.
    Open(String),
    /// The answer could not be read (why).
    Unreadable(String),
    /// The ticket does not name the request it is offered for (why): it approves
    /// something else.
    NotForThis(String),
}

/// Whether `text` names `reference` as a whole token (not as part of a longer name).
fn mentions(text: &str, reference: &str) -> bool {
    let boundary =
        |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || "-_./".contains(c)));
    text.match_indices(reference).any(|(at, _)| {
        boundary(text[..at].chars().next_back())
            && boundary(text[at + reference.len()..].chars().next())
    })
}

/// Whether `id` can be a ticket id: 1 to 128 characters of letters, digits and
/// `-_.:#/`, so it cannot reshape the URL it is put in.
///
/// # Errors
/// Why it cannot.
pub fn check_ticket_id(id: &str) -> Result<(), String> {
    let id = id.trim();
    if id.is_empty() {
        return Err("is empty".to_string());
    }
    if id.len() > MAX_TICKET_LEN {
        return Err(format!("is longer than {MAX_TICKET_LEN} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:#/".contains(*c)))
    {
        return Err(format!(
            "holds {c:?}; a ticket id is letters, digits and -_.:#/"
        ));
    }
    if id == "." || id == ".." || id.contains("..") {
        return Err("holds \"..\"".to_string());
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters (RFC 3986), `/` included, so a
/// ticket id stays one path segment or query value.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a URL template is usable: https, a host, no credentials or fragment, and
/// [`PLACEHOLDER`] exactly once, in the path or query.
///
/// # Errors
/// Why it is not.
pub fn check_url_template(template: &str) -> Result<(), String> {
    if template.len() > 2048 {
        return Err("is longer than 2048 characters".to_string());
    }
    let Some(rest) = template.strip_prefix("https://") else {
        return Err(format!("{template:?} must be an https:// URL"));
    };
    if template.matches(PLACEHOLDER).count() != 1 {
        return Err(format!("must hold {PLACEHOLDER} exactly once"));
    }
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..host_end];
    if authority.is_empty() || authority.contains(PLACEHOLDER) {
        return Err(format!("needs a host, and {PLACEHOLDER} may not be in it"));
    }
    if authority.contains('@') {
        return Err("may not hold credentials; use credentialsSecretName".to_string());
    }
    if template.contains('#') {
        return Err("may not have a fragment".to_string());
    }
    if template
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("may not hold spaces or control characters".to_string());
    }
    Ok(())
}

/// Whether a status field is a JSON pointer (RFC 6901): empty, or `/`-separated tokens.
///
/// # Errors
/// Why it is not.
pub fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.starts_with('/') {
        return Err(format!(
            "{pointer:?} is not a JSON pointer; write it as /fields/status/name"
        ));
    }
    if pointer.len() > 512 {
        return Err("is longer than 512 characters".to_string());
    }
    let mut chars = pointer.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.peek(), Some('0' | '1')) {
            return Err("uses ~ other than as ~0 or ~1".to_string());
        }
    }
    Ok(())
}

/// Whether `key` is a Kubernetes annotation key: an optional DNS-subdomain prefix and
/// `/`, then a name of up to 63 alphanumerics, `-`, `_` or `.`.
pub fn valid_annotation_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn config() -> TicketConfig {
        TicketConfig::new(&TicketCheck {
            url: "https://jira.corp/rest/api/2/issue/{ticket}".to_string(),
            id_pattern: "SEC-*".to_string(),
            status_field: "/fields/status/name".to_string(),
            approved_values: vec!["Approved".to_string()],
            rejected_values: vec!["Rejected".to_string()],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn reads_the_state_at_the_pointer() {
        let c = config();
        let answer =
            |s: &str| format!(r#"{{"key":"SEC-1","fields":{{"status":{{"name":"{s}"}}}}}}"#);
        assert_eq!(
            c.read_answer(answer("Approved").as_bytes(), "ns/web"),
            TicketState::Approved("Approved".to_string())
        );
        assert_eq!(
            c.read_answer(answer("Rejected").as_bytes(), "ns/web"),
            TicketState::Rejected("Rejected".to_string())
        );
        assert_eq!(
            c.read_answer(answer("In Review").as_bytes(), "ns/web"),
            TicketState::Open("In Review".to_string())
        );
        assert!(matches!(
            c.read_answer(b"<html>login</html>", "ns/web"),
            TicketState::Unreadable(_)
        ));
        assert!(matches!(
            c.read_answer(br#"{"fields":{}}"#, "ns/web"),
            TicketState::Unreadable(_)
        ));
    }

    #[test]
    fn ticket_ids_cannot_reshape_the_url() {
        let c = config();
        assert_eq!(
            c.url_for("SEC-4521"),
            "https://jira.corp/rest/api/2/issue/SEC-4521"
        );
        assert_eq!(c.url_for("a/b"), "https://jira.corp/rest/api/2/issue/a%2Fb");
        for bad in ["", "a b", "x?y=1", "../admin", "a@b", &"A".repeat(129)] {
            assert!(check_ticket_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_ticket_id("SEC-4521").is_ok());
    }

    #[test]
    fn the_annotation_names_the_ticket() {
        let c = config();
        let mut annotations = std::collections::BTreeMap::new();
        assert_eq!(c.ticket_of(&annotations), Ok(None));
        annotations.insert(
            DEFAULT_TICKET_ANNOTATION.to_string(),
            "SEC-4521".to_string(),
        );
        assert_eq!(c.ticket_of(&annotations), Ok(Some("SEC-4521")));
        annotations.insert(DEFAULT_TICKET_ANNOTATION.to_string(), "x y".to_string());
        assert!(c.ticket_of(&annotations).is_err());
        // Another project's ticket is not accepted.
        annotations.insert(DEFAULT_TICKET_ANNOTATION.to_string(), "OPS-1".to_string());
        assert!(c.ticket_of(&annotations).unwrap_err().contains("SEC-*"));
    }

    #[test]
    fn a_ticket_must_name_the_request_it_approves() {
        let mut c = config();
        c.reference_field = Some("/fields/customfield_1".to_string());
        let answer = |refs: &str| {
            format!(r#"{{"fields":{{"status":{{"name":"Approved"}},"customfield_1":"{refs}"}}}}"#)
        };
        assert_eq!(
            c.read_answer(
                answer("renew payments/api-tls and payments/db").as_bytes(),
                "payments/api-tls"
            ),
            TicketState::Approved("Approved".to_string())
        );
        for other in ["payments/api-tls-2", "xpayments/api-tls", "payments/db"] {
            assert!(
                matches!(
                    c.read_answer(answer(other).as_bytes(), "payments/api-tls"),
                    TicketState::NotForThis(_)
                ),
                "{other}"
            );
        }
    }

    #[test]
    fn url_templates_are_checked() {
        assert!(check_url_template("https://jira.corp/issue/{ticket}").is_ok());
        assert!(check_url_template("https://t.corp/api?id={ticket}").is_ok());
        for bad in [
            "http://jira.corp/{ticket}",
            "https://jira.corp/issue",
            "https://{ticket}.corp/x",
            "https://u:p@jira.corp/{ticket}",
            "https://jira.corp/{ticket}/{ticket}",
            "https://jira.corp/{ticket}#x",
        ] {
            assert!(check_url_template(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rechecks_back_off_to_a_bound() {
        let c = config();
        assert_eq!(c.wait_after(1), Duration::from_secs(60));
        assert_eq!(c.wait_after(2), Duration::from_secs(120));
        assert_eq!(c.wait_after(5), Duration::from_secs(960));
        assert_eq!(c.wait_after(50), Duration::from_secs(960));
    }

    #[test]
    fn annotation_keys() {
        assert!(valid_annotation_key("pki.certwright.io/change-ticket"));
        assert!(valid_annotation_key("ticket"));
        assert!(!valid_annotation_key("Bad Key"));
        assert!(!valid_annotation_key("/x"));
    }

    proptest! {
        #[test]
        fn accepted_ids_stay_in_one_segment(id in "[A-Za-z0-9_.:#/-]{1,40}") {
            if check_ticket_id(&id).is_ok() {
                let url = config().url_for(&id);
                let tail = url.strip_prefix("https://jira.corp/rest/api/2/issue/").unwrap();
                prop_assert!(!tail.contains('/'));
                prop_assert!(!tail.contains('?'));
                prop_assert!(!tail.contains('#'));
            }
        }
    }
}
