//! Validating admission webhooks, as upstream's `ValidatingAdmissionWebhook` plugin runs
//! them: `admissionregistration.k8s.io/v1` `ValidatingWebhookConfiguration`s are
//! defaulted and validated when stored; each write whose request matches a webhook's
//! rules and selectors is shown to it as an `admission.k8s.io/v1` `AdmissionReview`
//! (POSTed over HTTPS, trusting only the webhook's `caBundle`) after the object is
//! worked out and validated, and before it is stored.
//!
//! What upstream does, and so this module:
//! - the webhooks of every configuration are called in parallel; the first denial, in
//!   configuration-name then webhook order, fails the write with the webhook's `status`
//!   (code at least 400) and the message `admission webhook "<name>" denied the request:
//!   <message>`;
//! - each warning of every answer becomes a `Warning: 299 - "<text>"` response header;
//! - a webhook that cannot be reached, times out (`timeoutSeconds`, default 10) or
//!   answers nonsense fails the write with 500 `failed calling webhook "<name>": ...`
//!   under `failurePolicy: Fail` (the default), and is skipped under `Ignore`;
//! - status writes are shown only to rules naming `<resource>/status` (or `*/*`);
//! - webhook configurations themselves are never sent to webhooks;
//! - `matchPolicy: Equivalent` (the default) matches a rule naming another served
//!   version of the same resource, and sends the object at that version.
//!
//! Simplifications: `service` references cannot be resolved (the webhook counts as
//! unreachable); a webhook without a `caBundle` trusts nothing (upstream: the system
//! roots); `matchConditions` are refused when the configuration is stored; a request
//! is retried from the start, webhooks included, when the object changed while the
//! webhooks were deciding (upstream retries its storage update the same way).
//!
//! One file because it is one path, from a stored configuration to a write's verdict:
//! defaulting and validation, matching, the HTTPS call and the reading of its answer
//! share the configuration's types, and its tests sit beside them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::Shared;
use super::error::{ApiError, FieldError, FieldErrorKind};
use super::resource::ResourceDef;
use super::selector::LabelSelector;
use super::store::{Operation, Prepared, StoredObject};

/// The group of webhook configurations.
pub(crate) const GROUP: &str = "admissionregistration.k8s.io";
/// The plural of `ValidatingWebhookConfiguration`.
pub(crate) const VALIDATING_PLURAL: &str = "validatingwebhookconfigurations";

/// The user every request is made as: this server has no authentication.
const USERNAME: &str = "system:admin";

/// How often a write is worked out again when the object changed while its webhooks
/// were deciding, before it gives up with 409 Conflict.
const MAX_ATTEMPTS: usize = 8;

const DEFAULT_TIMEOUT_SECONDS: u64 = 10;

/// One webhook of a stored configuration, ready to match and call.
#[derive(Debug)]
pub(crate) struct Webhook {
    name: String,
    target: Target,
    /// The decoded `caBundle` (PEM), if any.
    ca_bundle: Option<Arc<[u8]>>,
    rules: Vec<Rule>,
    /// `failurePolicy: Ignore`.
    fail_open: bool,
    /// `matchPolicy: Equivalent`.
    equivalent: bool,
    timeout: Duration,
    namespace_selector: LabelSelector,
    object_selector: LabelSelector,
}

#[derive(Debug)]
enum Target {
    Url(String),
    /// `namespace/name`, for messages.
    Service(String),
}

#[derive(Debug)]
struct Rule {
    operations: Vec<String>,
    api_groups: Vec<String>,
    api_versions: Vec<String>,
    resources: Vec<String>,
    /// `*`, `Cluster` or `Namespaced`.
    scope: String,
}

fn any_is(list: &[String], value: &str) -> bool {
    list.iter().any(|x| x == "*" || x == value)
}

impl Rule {
    fn matches(&self, request: &Request<'_>, operation: Operation, version: &str) -> bool {
        let scope_ok = match self.scope.as_str() {
            "Cluster" => !request.def.namespaced,
            "Namespaced" => request.def.namespaced,
            _ => true,
        };
        // `resource` matches the main resource only, `resource/sub` one subresource,
        // and `*` in either part anything there.
        let sub = request.subresource.unwrap_or_default();
        let resource_ok = self.resources.iter().any(|r| {
            let (res, rsub) = r.split_once('/').unwrap_or((r.as_str(), ""));
            (res == "*" || res == request.def.plural) && (rsub == "*" || rsub == sub)
        });
        scope_ok
            && resource_ok
            && any_is(&self.operations, operation.as_str())
            && any_is(&self.api_groups, &request.def.group)
            && any_is(&self.api_versions, version)
    }

    /// Whether the rule could match some operation of the request (before the write
    /// is worked out, which decides between CREATE and UPDATE).
    fn may_match(&self, request: &Request<'_>) -> bool {
        [Operation::Create, Operation::Update, Operation::Delete]
            .into_iter()
            .any(|op| {
                request
                    .def
                    .versions
                    .iter()
                    .any(|v| self.matches(request, op, v))
            })
    }
}

impl Webhook {
    /// The version to send the object at when this webhook wants the request: the
    /// request's own, or with `matchPolicy: Equivalent` another served version a rule
    /// names.
    fn version_for(&self, request: &Request<'_>, operation: Operation) -> Option<String> {
        let matches = |version: &str| {
            self.rules
                .iter()
                .any(|r| r.matches(request, operation, version))
        };
        if matches(request.version) {
            return Some(request.version.to_string());
        }
        if !self.equivalent {
            return None;
        }
        request.def.versions.iter().find(|v| matches(v)).cloned()
    }

    fn from_stored(hook: &Value) -> Option<Webhook> {
        let text = |pointer: &str| hook.pointer(pointer).and_then(Value::as_str);
        let target = match (
            text("/clientConfig/url"),
            hook.pointer("/clientConfig/service"),
        ) {
            (Some(url), _) => Target::Url(url.to_string()),
            (None, Some(service)) => Target::Service(format!(
                "{}/{}",
                service
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                service
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )),
            (None, None) => return None,
        };
        let ca_bundle = text("/clientConfig/caBundle")
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|b| !b.is_empty())
            .map(Arc::from);
        let strings = |v: &Value, field: &str| -> Vec<String> {
            v.get(field)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let rules = hook
            .get("rules")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|r| Rule {
                operations: strings(r, "operations"),
                api_groups: strings(r, "apiGroups"),
                api_versions: strings(r, "apiVersions"),
                resources: strings(r, "resources"),
                scope: r
                    .get("scope")
                    .and_then(Value::as_str)
                    .unwrap_or("*")
                    .to_string(),
            })
            .collect();
        Some(Webhook {
            name: text("/name")?.to_string(),
            target,
            ca_bundle,
            rules,
            fail_open: text("/failurePolicy") == Some("Ignore"),
            equivalent: text("/matchPolicy") != Some("Exact"),
            timeout: Duration::from_secs(
                hook.get("timeoutSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(DEFAULT_TIMEOUT_SECONDS),
            ),
            namespace_selector: hook
                .get("namespaceSelector")
                .and_then(|s| label_selector(s).ok())
                .unwrap_or_default(),
            object_selector: hook
                .get("objectSelector")
                .and_then(|s| label_selector(s).ok())
                .unwrap_or_default(),
        })
    }
}

/// The webhooks of every stored configuration, in upstream's order: configurations by
/// name, then webhooks as listed.
pub(crate) fn webhooks_of<'a>(
    configurations: impl Iterator<Item = &'a StoredObject>,
) -> Vec<Webhook> {
    let mut configs: Vec<(String, Value)> = configurations
        .map(|o| (o.name.clone(), o.value()))
        .collect();
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    configs
        .iter()
        .flat_map(|(_, config)| {
            config
                .get("webhooks")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(Webhook::from_stored)
        })
        .collect()
}

/// A `metav1.LabelSelector` (`matchLabels`, `matchExpressions`) as a selector.
fn label_selector(selector: &Value) -> Result<LabelSelector, String> {
    let mut parts = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for expr in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = expr
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match expr
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            other => return Err(format!("{other:?} is not a valid label selector operator")),
        }
    }
    LabelSelector::parse(&parts.join(",")).map_err(|e| e.message)
}

/// Defaults a `ValidatingWebhookConfiguration` as upstream's v1 defaulting does
/// (`failurePolicy: Fail`, `matchPolicy: Equivalent`, empty selectors,
/// `timeoutSeconds: 10`, rule `scope: "*"`) and validates what upstream validates.
///
/// # Errors
/// Every field error found.
pub(crate) fn default_and_validate(config: &mut Value) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(hooks) = config.get_mut("webhooks") else {
        return Ok(());
    };
    if hooks.is_null() {
        return Ok(());
    }
    let Some(hooks) = hooks.as_array_mut() else {
        return Err(vec![FieldError::invalid(
            "webhooks",
            "\"\"",
            "must be a list",
        )]);
    };
    let mut names: Vec<String> = Vec::new();
    for (i, hook) in hooks.iter_mut().enumerate() {
        let path = format!("webhooks[{i}]");
        let Some(hook) = hook.as_object_mut() else {
            errors.push(FieldError::invalid(path, "\"\"", "must be an object"));
            continue;
        };
        for (field, default) in [
            ("failurePolicy", json!("Fail")),
            ("matchPolicy", json!("Equivalent")),
            ("namespaceSelector", json!({})),
            ("objectSelector", json!({})),
            ("timeoutSeconds", json!(DEFAULT_TIMEOUT_SECONDS)),
        ] {
            if hook.get(field).is_none_or(Value::is_null) {
                hook.insert(field.to_string(), default);
            }
        }
        if let Some(rules) = hook.get_mut("rules").and_then(Value::as_array_mut) {
            for rule in rules.iter_mut().filter_map(Value::as_object_mut) {
                if rule.get("scope").is_none_or(Value::is_null) {
                    rule.insert("scope".to_string(), json!("*"));
                }
            }
        }
        validate_webhook(&Value::Object(hook.clone()), &path, &mut names, &mut errors);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn validate_webhook(
    hook: &Value,
    path: &str,
    names: &mut Vec<String>,
    errors: &mut Vec<FieldError>,
) {
    let text = |field: &str| hook.get(field).and_then(Value::as_str);
    match text("name") {
        None | Some("") => errors.push(FieldError::required(format!("{path}.name"), "")),
        Some(name) => {
            if names.iter().any(|n| n == name) {
                errors.push(FieldError {
                    field: format!("{path}.name"),
                    kind: FieldErrorKind::Duplicate(format!("{name:?}")),
                    detail: String::new(),
                });
            }
            names.push(name.to_string());
            let segments: Vec<&str> = name.split('.').collect();
            let dns_ok = segments.iter().all(|s| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !s.starts_with('-')
                    && !s.ends_with('-')
            });
            if segments.len() < 3 || !dns_ok {
                errors.push(FieldError::invalid(
                    format!("{path}.name"),
                    format!("{name:?}"),
                    "should be a domain with at least three segments separated by dots",
                ));
            }
        }
    }
    let client = format!("{path}.clientConfig");
    match (
        hook.pointer("/clientConfig/url").filter(|v| !v.is_null()),
        hook.pointer("/clientConfig/service")
            .filter(|v| !v.is_null()),
    ) {
        (Some(_), Some(_)) | (None, None) => errors.push(FieldError::required(
            client.clone(),
            "exactly one of url or service is required",
        )),
        (Some(url), None) => {
            let url = url.as_str().unwrap_or_default();
            if let Some(why) = url_problem(url) {
                errors.push(FieldError::invalid(
                    format!("{client}.url"),
                    format!("{url:?}"),
                    why,
                ));
            }
        }
        (None, Some(service)) => {
            for field in ["name", "namespace"] {
                if service
                    .get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errors.push(FieldError::required(
                        format!("{client}.service.{field}"),
                        "",
                    ));
                }
            }
        }
    }
    if let Some(bundle) = hook
        .pointer("/clientConfig/caBundle")
        .and_then(Value::as_str)
        && STANDARD.decode(bundle).is_err()
    {
        errors.push(FieldError::invalid(
            format!("{client}.caBundle"),
            "\"<bytes>\"",
            "must be base64",
        ));
    }
    let rules = hook
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (j, rule) in rules.iter().enumerate() {
        let rpath = format!("{path}.rules[{j}]");
        for field in ["operations", "apiGroups", "apiVersions", "resources"] {
            if rule
                .get(field)
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                errors.push(FieldError::required(format!("{rpath}.{field}"), ""));
            }
        }
        let ops = rule
            .get("operations")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (k, op) in ops.iter().enumerate() {
            let op = op.as_str().unwrap_or_default();
            if !matches!(op, "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT") {
                errors.push(FieldError::not_supported(
                    format!("{rpath}.operations[{k}]"),
                    format!("{op:?}"),
                    &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"],
                ));
            }
        }
        if let Some(scope) = rule.get("scope").and_then(Value::as_str)
            && !matches!(scope, "*" | "Cluster" | "Namespaced")
        {
            errors.push(FieldError::not_supported(
                format!("{rpath}.scope"),
                format!("{scope:?}"),
                &["*", "Cluster", "Namespaced"],
            ));
        }
    }
    let one_of = |field: &str, allowed: &[&str], errors: &mut Vec<FieldError>| match text(field) {
        Some(v) if allowed.contains(&v) => {}
        None => errors.push(FieldError::required(
            format!("{path}.{field}"),
            format!("must specify one of {}", allowed.join(", ")),
        )),
        Some(v) => errors.push(FieldError::not_supported(
            format!("{path}.{field}"),
            format!("{v:?}"),
            allowed,
        )),
    };
    one_of("failurePolicy", &["Fail", "Ignore"], errors);
    one_of("matchPolicy", &["Equivalent", "Exact"], errors);
    one_of("sideEffects", &["None", "NoneOnDryRun"], errors);
    let versions: Vec<&str> = hook
        .get("admissionReviewVersions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::required(
            format!("{path}.admissionReviewVersions"),
            "must specify one of v1, v1beta1",
        ));
    } else if !versions.contains(&"v1") {
        // Upstream also speaks v1beta1; this server only sends v1.
        errors.push(FieldError::invalid(
            format!("{path}.admissionReviewVersions"),
            format!("{versions:?}"),
            "must include v1 (the only AdmissionReview version this server sends)",
        ));
    }
    match hook.get("timeoutSeconds").and_then(Value::as_i64) {
        Some(1..=30) => {}
        other => errors.push(FieldError::invalid(
            format!("{path}.timeoutSeconds"),
            other.map_or_else(|| "null".to_string(), |t| t.to_string()),
            "the timeout value must be between 1 and 30 seconds",
        )),
    }
    for field in ["namespaceSelector", "objectSelector"] {
        if let Some(selector) = hook.get(field)
            && let Err(why) = label_selector(selector)
        {
            errors.push(FieldError::invalid(
                format!("{path}.{field}"),
                "\"<selector>\"",
                why,
            ));
        }
    }
    if hook
        .get("matchConditions")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty())
    {
        errors.push(FieldError {
            field: format!("{path}.matchConditions"),
            kind: FieldErrorKind::Forbidden,
            detail: "matchConditions are not evaluated by the certwright test API server"
                .to_string(),
        });
    }
}

/// Why upstream refuses a webhook URL, if it does.
fn url_problem(url: &str) -> Option<&'static str> {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Some("must be a valid URL");
    };
    if parsed.scheme() != "https" {
        Some("'https' is the only allowed URL scheme")
    } else if parsed.host_str().is_none_or(str::is_empty) {
        Some("host must be specified")
    } else if !parsed.username().is_empty() || parsed.password().is_some() {
        Some("user information is not permitted in the URL")
    } else if parsed.fragment().is_some() {
        Some("fragments are not permitted in the URL")
    } else if parsed.query().is_some() {
        Some("query parameters are not permitted in the URL")
    } else {
        None
    }
}

/// What a write request is, as admission sees it before the write is worked out.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) def: &'a ResourceDef,
    /// The version in the URL.
    pub(crate) version: &'a str,
    /// `status` for a status write.
    pub(crate) subresource: Option<&'a str>,
    pub(crate) dry_run: bool,
}

/// Whether any webhook could want this request: when none can, the write takes the
/// ordinary path.
pub(crate) fn may_apply(webhooks: &[Webhook], request: &Request<'_>) -> bool {
    // Upstream never sends webhook configurations to webhooks, so that a broken webhook
    // cannot lock its own configuration.
    request.def.group != GROUP
        && webhooks
            .iter()
            .any(|w| w.rules.iter().any(|r| r.may_match(request)))
}

/// HTTPS clients by `caBundle`, built once each.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    by_bundle: Mutex<HashMap<Arc<[u8]>, reqwest::Client>>,
}

impl Clients {
    fn get(&self, ca_bundle: &Arc<[u8]>) -> Result<reqwest::Client, String> {
        let mut clients = self
            .by_bundle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(ca_bundle) {
            return Ok(client.clone());
        }
        let client = https_client(ca_bundle)?;
        clients.insert(ca_bundle.clone(), client.clone());
        Ok(client)
    }
}

/// rustls (ring) trusting only the certificates of `ca_pem`.
fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate".to_string());
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("no TLS version available: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// reqwest over rustls (ring) trusting only `ca_pem`, never following redirects.
fn https_client(ca_pem: &[u8]) -> Result<reqwest::Client, String> {
    let mut tls = client_config(ca_pem).map_err(|e| format!("the caBundle: {e}"))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .build()
        .map_err(|e| format!("cannot build an HTTPS client: {e}"))
}

/// An error with its causes, as Go prints wrapped errors: `outer: inner: innermost`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// Why a webhook gave no usable answer (upstream's `ErrCallingWebhook` reason).
type CallFailure = String;

impl Webhook {
    /// POSTs the review and returns the answer's `response`.
    async fn call(
        &self,
        clients: &Clients,
        review: &Value,
        uid: &str,
    ) -> Result<Value, CallFailure> {
        let url = match &self.target {
            Target::Service(service) => {
                return Err(format!(
                    "failed to call webhook: service \"{service}\" cannot be reached: the certwright test API server resolves no Services"
                ));
            }
            Target::Url(url) => url,
        };
        // Upstream tells the webhook its deadline in the query string.
        let url = format!("{url}?timeout={}s", self.timeout.as_secs());
        let Some(ca_bundle) = &self.ca_bundle else {
            return Err(format!(
                "failed to call webhook: Post \"{url}\": no caBundle: the certwright test API server trusts no system roots"
            ));
        };
        let client = clients
            .get(ca_bundle)
            .map_err(|e| format!("failed to call webhook: {e}"))?;
        let body = serde_json::to_vec(review).unwrap_or_default();
        let sent = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .timeout(self.timeout)
            .send();
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                format!("failed to call webhook: Post \"{url}\": context deadline exceeded")
            } else {
                format!(
                    "failed to call webhook: Post \"{url}\": {}",
                    error_chain(&e)
                )
            }
        };
        let answer = sent.await.map_err(failed)?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(failed)?;
        if !status.is_success() {
            return Err(format!(
                "failed to call webhook: the server responded with the status code {} but did not return more information",
                status.as_u16()
            ));
        }
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("received invalid webhook response: {e}"))?;
        let api_version = answer
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = answer
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
            return Err(format!(
                "received invalid webhook response: expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {api_version}, Kind={kind}"
            ));
        }
        let Some(response) = answer.get("response").filter(|r| r.is_object()) else {
            return Err(
                "received invalid webhook response: webhook response was absent".to_string(),
            );
        };
        let got = response
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if got != uid {
            return Err(format!(
                "received invalid webhook response: expected response.uid={uid:?}, got {got:?}"
            ));
        }
        Ok(response.clone())
    }
}

/// The `AdmissionReview` for one webhook: the request at `version`.
fn review(uid: &str, request: &Request<'_>, prepared: &Prepared, version: &str) -> Value {
    let def = request.def;
    let at = |mut object: Value| {
        if let Some(o) = object.as_object_mut() {
            o.insert("apiVersion".to_string(), json!(def.api_version(version)));
        }
        object
    };
    let operation = prepared.operation();
    let object = match operation {
        Operation::Delete => Value::Null,
        _ => at(prepared.object().clone()),
    };
    let old_object = prepared.old().map_or(Value::Null, |o| at(o.value()));
    let options_kind = match operation {
        Operation::Create => "CreateOptions",
        Operation::Update => "UpdateOptions",
        Operation::Delete => "DeleteOptions",
    };
    let gvk = |v: &str| json!({"group": def.group, "version": v, "kind": def.kind});
    let gvr = |v: &str| json!({"group": def.group, "version": v, "resource": def.plural});
    let mut req = json!({
        "uid": uid,
        "kind": gvk(version),
        "resource": gvr(version),
        "requestKind": gvk(request.version),
        "requestResource": gvr(request.version),
        "name": prepared.name(),
        "operation": operation.as_str(),
        "userInfo": {"username": USERNAME, "groups": ["system:masters", "system:authenticated"]},
        "object": object,
        "oldObject": old_object,
        "dryRun": request.dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind},
    });
    if let Some(sub) = request.subresource {
        req["subResource"] = json!(sub);
        req["requestSubResource"] = json!(sub);
    }
    if !prepared.namespace().is_empty() {
        req["namespace"] = json!(prepared.namespace());
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a webhook's selectors select the request, as upstream decides: the object
/// selector on the new or the old object's labels; the namespace selector on the
/// labels of the object's namespace (of the Namespace itself; always for other
/// cluster-scoped kinds).
fn selected(
    shared: &Shared,
    webhook: &Webhook,
    request: &Request<'_>,
    prepared: &Prepared,
) -> bool {
    let new = match prepared.operation() {
        Operation::Delete => None,
        _ => Some(labels_of(prepared.object())),
    };
    let old = prepared.old().map(|o| o.labels.clone());
    if !webhook.object_selector.is_empty() {
        let hit = new
            .iter()
            .chain(old.iter())
            .any(|l| webhook.object_selector.matches(l));
        if !hit {
            return false;
        }
    }
    if webhook.namespace_selector.is_empty() {
        return true;
    }
    if request.def.group.is_empty() && request.def.plural == "namespaces" {
        return new
            .iter()
            .chain(old.iter())
            .any(|l| webhook.namespace_selector.matches(l));
    }
    if !request.def.namespaced {
        return true;
    }
    let namespaces = (String::new(), "namespaces".to_string());
    let labels = shared
        .store
        .get(&namespaces, "", prepared.namespace())
        .map(|ns| ns.labels.clone())
        .unwrap_or_default();
    webhook.namespace_selector.matches(&labels)
}

/// What one webhook decided.
enum Verdict {
    Allowed,
    Denied(ApiError),
    Failed(ApiError),
}

async fn consult(
    shared: &Shared,
    webhook: &Webhook,
    request: &Request<'_>,
    prepared: &Prepared,
    version: String,
) -> (Verdict, Vec<String>) {
    let uid = super::store::new_uid()
        .unwrap_or_else(|_| "00000000-0000-4000-8000-000000000000".to_string());
    let review = review(&uid, request, prepared, &version);
    let response = match webhook.call(&shared.webhook_clients, &review, &uid).await {
        Ok(response) => response,
        Err(_) if webhook.fail_open => return (Verdict::Allowed, Vec::new()),
        Err(reason) => {
            let message = format!("failed calling webhook \"{}\": {reason}", webhook.name);
            let mut err = ApiError::internal(format!("Internal error occurred: {message}"));
            err.details = Some(json!({"causes": [{"message": message}]}));
            return (Verdict::Failed(err), Vec::new());
        }
    };
    let warnings = response
        .get("warnings")
        .and_then(Value::as_array)
        .map(|w| {
            w.iter()
                .filter_map(Value::as_str)
                // Upstream drops warnings that cannot go into a header.
                .filter(|w| !w.is_empty() && !w.chars().any(char::is_control))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if response.get("allowed").and_then(Value::as_bool) == Some(true) {
        return (Verdict::Allowed, warnings);
    }
    (
        Verdict::Denied(denial(&webhook.name, response.get("status"))),
        warnings,
    )
}

/// The error a denial fails the write with: the webhook's status, with a code of at
/// least 400 and the message prefixed as upstream prefixes it.
fn denial(webhook: &str, status: Option<&Value>) -> ApiError {
    let text = |field: &str| {
        status
            .and_then(|s| s.get(field))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let code = status
        .and_then(|s| s.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..=599).contains(c))
        .unwrap_or(400);
    let denied_by = format!("admission webhook \"{webhook}\" denied the request");
    let (message, reason) = (text("message"), text("reason"));
    let message = if !message.is_empty() {
        format!("{denied_by}: {message}")
    } else if !reason.is_empty() {
        format!("{denied_by}: {reason}")
    } else {
        format!("{denied_by} without explanation")
    };
    let mut err = ApiError::new(code, reason, message);
    err.details = status
        .and_then(|s| s.get("details"))
        .filter(|d| d.is_object())
        .cloned();
    err
}

/// Shows a worked-out write to every webhook that wants it; the first denial or
/// failure (in webhook order) is the answer. Warnings are appended to `warnings`.
pub(crate) async fn admit(
    shared: &Shared,
    webhooks: &[Webhook],
    request: &Request<'_>,
    prepared: &Prepared,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    if request.def.group == GROUP {
        return Ok(());
    }
    let operation = prepared.operation();
    let calls = webhooks.iter().filter_map(|w| {
        let version = w.version_for(request, operation)?;
        selected(shared, w, request, prepared)
            .then(|| consult(shared, w, request, prepared, version))
    });
    let verdicts = futures_util::future::join_all(calls).await;
    let mut first_error = None;
    for (verdict, said) in verdicts {
        warnings.extend(said);
        match verdict {
            Verdict::Allowed => {}
            Verdict::Denied(e) | Verdict::Failed(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Runs a write through validating admission: works it out (`prepare`), shows it to
/// the webhooks, then stores it unless the object changed meanwhile, in which case it
/// starts over. Returns the stored object and whether it was created.
pub(crate) async fn write(
    shared: &Shared,
    webhooks: &[Webhook],
    request: &Request<'_>,
    warnings: &mut Vec<String>,
    prepare: impl Fn() -> Result<Prepared, ApiError>,
) -> Result<(Arc<StoredObject>, bool), ApiError> {
    for _ in 0..MAX_ATTEMPTS {
        let prepared = prepare()?;
        let created = prepared.created();
        admit(shared, webhooks, request, &prepared, warnings).await?;
        if let Some(stored) = shared.store.commit_prepared(prepared, request.dry_run)? {
            return Ok((stored, created));
        }
    }
    Err(ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {}: the object kept changing while admission webhooks decided; please try again",
            request.def.qualified()
        ),
    ))
}

/// Adds one `Warning: 299 - "<text>"` header per distinct warning, as upstream does
/// (quotes and backslashes escaped).
pub(crate) fn add_warning_headers(headers: &mut HeaderMap, warnings: &[String]) {
    let mut seen: Vec<&str> = Vec::new();
    for warning in warnings {
        if seen.contains(&warning.as_str()) {
            continue;
        }
        seen.push(warning);
        let escaped = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(value) = HeaderValue::from_bytes(format!("299 - \"{escaped}\"").as_bytes()) {
            headers.append(axum::http::header::WARNING, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resource;

    fn webhook(rules: Value) -> Webhook {
        let mut config = json!({"webhooks": [{
            "name": "check.test.certwright.io",
            "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            "rules": rules,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }]});
        default_and_validate(&mut config).expect("valid");
        Webhook::from_stored(&config["webhooks"][0]).expect("a webhook")
    }

    fn secrets() -> ResourceDef {
        resource::builtins()
            .into_iter()
            .find(|d| d.plural == "secrets")
            .expect("secrets")
    }

    fn request<'a>(def: &'a ResourceDef, version: &'a str, sub: Option<&'a str>) -> Request<'a> {
        Request {
            def,
            version,
            subresource: sub,
            dry_run: false,
        }
    }

    #[test]
    fn rules_match_resources_subresources_operations_and_scope_as_upstream() {
        let def = secrets();
        let main = request(&def, "v1", None);
        let status = request(&def, "v1", Some("status"));
        let rule = |resources: Value| {
            webhook(
                json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                            "resources": resources}]),
            )
        };
        let create = Operation::Create;
        assert!(
            rule(json!(["secrets"]))
                .version_for(&main, create)
                .is_some()
        );
        assert!(
            rule(json!(["secrets"]))
                .version_for(&status, create)
                .is_none()
        );
        assert!(rule(json!(["*"])).version_for(&status, create).is_none());
        assert!(
            rule(json!(["secrets/status"]))
                .version_for(&status, create)
                .is_some()
        );
        assert!(
            rule(json!(["secrets/status"]))
                .version_for(&main, create)
                .is_none()
        );
        assert!(rule(json!(["*/*"])).version_for(&status, create).is_some());
        assert!(
            rule(json!(["secrets/*"]))
                .version_for(&main, create)
                .is_some()
        );
        assert!(
            rule(json!(["configmaps"]))
                .version_for(&main, create)
                .is_none()
        );
        assert!(
            rule(json!(["*"]))
                .version_for(&main, Operation::Update)
                .is_none()
        );
        let cluster_only = webhook(json!([{"operations": ["*"], "apiGroups": ["*"],
            "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}]));
        assert!(cluster_only.version_for(&main, Operation::Delete).is_none());
    }

    #[test]
    fn equivalent_match_policy_sends_another_served_version() {
        let mut def = secrets();
        def.group = "example.com".to_string();
        def.versions = vec!["v1beta1".to_string(), "v1".to_string()];
        let at_beta = request(&def, "v1beta1", None);
        let hook = webhook(
            json!([{"operations": ["CREATE"], "apiGroups": ["example.com"],
            "apiVersions": ["v1"], "resources": ["secrets"]}]),
        );
        assert_eq!(
            hook.version_for(&at_beta, Operation::Create).as_deref(),
            Some("v1")
        );
        let mut exact = hook;
        exact.equivalent = false;
        assert!(exact.version_for(&at_beta, Operation::Create).is_none());
    }

    #[test]
    fn configurations_are_defaulted_and_validated_as_upstream() {
        let mut config = json!({"webhooks": [{
            "name": "check.test.certwright.io",
            "clientConfig": {"url": "https://hook.example/validate"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["secrets"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }]});
        default_and_validate(&mut config).expect("valid");
        let hook = &config["webhooks"][0];
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["matchPolicy"], "Equivalent");
        assert_eq!(hook["timeoutSeconds"], 10);
        assert_eq!(hook["rules"][0]["scope"], "*");

        let mut bad = json!({"webhooks": [{
            "name": "short",
            "clientConfig": {"url": "http://hook.example/validate"},
            "rules": [{"operations": ["PATCH"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["secrets"]}],
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 31,
        }]});
        let errors = default_and_validate(&mut bad).expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for expected in [
            "webhooks[0].name: Invalid value: \"short\": should be a domain with at least three segments separated by dots",
            "webhooks[0].clientConfig.url: Invalid value: \"http://hook.example/validate\": 'https' is the only allowed URL scheme",
            "webhooks[0].rules[0].operations[0]: Unsupported value: \"PATCH\"",
            "webhooks[0].sideEffects: Required value",
            "webhooks[0].timeoutSeconds: Invalid value: 31",
        ] {
            assert!(
                text.iter().any(|t| t.starts_with(expected)),
                "{expected} in {text:?}"
            );
        }
    }

    #[test]
    fn a_denial_keeps_the_webhooks_status_with_upstreams_prefix() {
        let err = denial(
            "check.test.certwright.io",
            Some(&json!({"code": 403, "reason": "Forbidden", "message": "no"})),
        );
        assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            err.message,
            "admission webhook \"check.test.certwright.io\" denied the request: no"
        );
        let bare = denial("check.test.certwright.io", Some(&json!({"code": 200})));
        assert_eq!(bare.code, 400);
        assert_eq!(
            bare.message,
            "admission webhook \"check.test.certwright.io\" denied the request without explanation"
        );
    }

    #[test]
    fn warnings_become_escaped_deduplicated_299_headers() {
        let mut headers = HeaderMap::new();
        let warnings = ["say \"hi\"".to_string(), "x".to_string(), "x".to_string()];
        add_warning_headers(&mut headers, &warnings);
        let values: Vec<&[u8]> = headers
            .get_all(axum::http::header::WARNING)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(
            values,
            [&b"299 - \"say \\\"hi\\\"\""[..], &b"299 - \"x\""[..]]
        );
    }

    #[test]
    fn metav1_label_selectors_are_understood() {
        let selector = label_selector(&json!({
            "matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "In", "values": ["x", "y"]},
                                 {"key": "c", "operator": "DoesNotExist"}]
        }))
        .expect("valid");
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(selector.matches(&labels(&[("a", "1"), ("b", "y")])));
        assert!(!selector.matches(&labels(&[("a", "1"), ("b", "y"), ("c", "")])));
        assert!(
            label_selector(&json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}))
                .is_err()
        );
    }
}
