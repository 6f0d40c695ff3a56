//! The admission decision, as pure functions: an `AdmissionRequest` and what is known
//! about the Secrets it references go in, an allowed or denied `AdmissionResponse` with
//! every problem (each naming its field path) and warnings comes out. No I/O here: the
//! HTTP layer asks [`review`] which Secrets matter, fetches them, then calls
//! [`IssuerReview::decide`] with a [`SecretLookup`].
//!
//! One file because it is one decision, admit or deny, with its unit tests beside it
//! (over half of the file).

use std::collections::{BTreeSet, HashMap};

use certwright_api::validation::check_dns1123_subdomain;
use certwright_api::{
    AdcsAuthMethod, Base64Bytes, InternalClusterIssuer, InternalIssuer, IssuerSpec,
    SecretRequirement, secret_requirements, validate_issuer_spec,
};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::response::{StatusCause, StatusDetails};
use kube::core::{DynamicObject, Status};

/// The issuer kinds this webhook validates.
const KIND_ISSUER: &str = "InternalIssuer";
const KIND_CLUSTER_ISSUER: &str = "InternalClusterIssuer";

/// Above these, the PKI probably cannot keep up: warn.
const WARN_REQUESTS_PER_SECOND: f64 = 50.0;
const WARN_MAX_CONCURRENT_REQUESTS: u32 = 64;

/// What the checks need to know about the deployment.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Where cluster issuers read their Secrets from.
    pub(crate) cluster_resource_namespace: String,
    /// The controller's egress policy, checked on the URLs an issuer names; unchecked
    /// when `None`.
    pub(crate) egress: Option<certwright_pki::egress::EgressPolicy>,
    /// Cluster issuers may name any host.
    pub(crate) egress_exempt_cluster_issuers: bool,
    /// The namespaces whose Secrets certwright may read; every namespace when `None`.
    pub(crate) secret_namespaces: Option<BTreeSet<String>>,
    /// The PKCS#11 modules issuers may name (the controller's `--pkcs11-module`).
    pub(crate) pkcs11_modules: BTreeSet<String>,
    /// Namespaced issuers may name them too.
    pub(crate) pkcs11_namespaced_issuers: bool,
}

/// What is known about one Secret. Only key names, never values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SecretState {
    /// The Secret exists; these keys hold non-empty values.
    Found(BTreeSet<String>),
    /// The Secret does not exist.
    NotFound,
    /// The Secret could not be read; why, in words.
    Unknown(String),
}

/// Answers which Secrets exist and which keys they hold.
pub(crate) trait SecretLookup {
    /// The state of Secret `name` in `namespace`.
    fn lookup(&self, namespace: &str, name: &str) -> SecretState;
}

/// A Secret to look up: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SecretRef {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// Secrets already fetched; any other Secret is [`SecretState::Unknown`].
pub(crate) type FetchedSecrets = HashMap<SecretRef, SecretState>;

impl SecretLookup for FetchedSecrets {
    fn lookup(&self, namespace: &str, name: &str) -> SecretState {
        let key = SecretRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.get(&key)
            .cloned()
            .unwrap_or_else(|| SecretState::Unknown("it was not looked up".to_string()))
    }
}

/// The first step of a review.
#[derive(Debug)]
pub(crate) enum Review {
    /// The answer is known without looking at any Secret.
    Done(Box<AdmissionResponse>),
    /// An issuer to check, once its Secrets are known.
    Issuer(Box<IssuerReview>),
}

/// An issuer under review: the problems and warnings found in its spec, and the Secrets
/// still to check.
#[derive(Debug)]
pub(crate) struct IssuerReview {
    response: AdmissionResponse,
    kind: &'static str,
    name: String,
    /// Where this issuer reads its Secrets.
    namespace: String,
    problems: Vec<Problem>,
    warnings: Vec<String>,
    requirements: Vec<SecretRequirement>,
}

/// One reason to deny, with the field it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) field: String,
    /// A Kubernetes `CauseType`: FieldValueInvalid, FieldValueRequired, ...
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl Problem {
    /// A validator's field error as a problem.
    pub(crate) fn from_field_error(e: certwright_api::FieldError) -> Problem {
        Problem {
            reason: match e.kind {
                certwright_api::FieldErrorKind::Required => "FieldValueRequired",
                certwright_api::FieldErrorKind::Forbidden => "FieldValueForbidden",
                _ => "FieldValueInvalid",
            },
            message: format!("{}: {}", e.kind, e.detail),
            field: e.field,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Reviews a request and checks the Secrets with `secrets`: [`review`] then
/// [`IssuerReview::decide`].
#[cfg(test)]
pub(crate) fn admit(
    request: &AdmissionRequest<DynamicObject>,
    settings: &Settings,
    secrets: &dyn SecretLookup,
) -> AdmissionResponse {
    match review(request, settings) {
        Review::Done(response) => *response,
        Review::Issuer(issuer) => issuer.decide(secrets),
    }
}

/// Dispatches by kind and operation, parses the object and runs every check that needs
/// no Secret. CREATE and UPDATE of our two kinds are checked; anything else is allowed.
pub(crate) fn review(request: &AdmissionRequest<DynamicObject>, settings: &Settings) -> Review {
    if request.kind.group == certwright_api::GROUP
        && request.kind.kind == crate::policy::KIND_POLICY
    {
        return Review::Done(Box::new(crate::policy::review(request)));
    }
    let allowed = AdmissionResponse::from(request);
    let kind = match (request.kind.group.as_str(), request.kind.kind.as_str()) {
        (certwright_api::GROUP, KIND_ISSUER) => KIND_ISSUER,
        (certwright_api::GROUP, KIND_CLUSTER_ISSUER) => KIND_CLUSTER_ISSUER,
        _ => return Review::Done(Box::new(allowed)),
    };
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return Review::Done(Box::new(allowed));
    }
    // Status and other subresources carry no spec change to judge.
    if request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Review::Done(Box::new(allowed));
    }
    let Some(object) = &request.object else {
        return Review::Done(Box::new(deny(
            allowed,
            vec![Problem {
                field: String::new(),
                reason: "FieldValueRequired",
                message: format!("the {kind} request carries no object"),
            }],
        )));
    };
    let parsed = match parse(kind, object) {
        Ok(parsed) => parsed,
        Err(why) => {
            return Review::Done(Box::new(deny(
                allowed,
                vec![Problem {
                    field: String::new(),
                    reason: "FieldValueInvalid",
                    message: format!("the object is not a valid {kind}: {why}"),
                }],
            )));
        }
    };

    if request.operation == Operation::Update {
        // An update that leaves the spec alone (labels, finalizers, a deletion in
        // progress) must not be blocked by a Secret that has since gone away.
        let old = request
            .old_object
            .as_ref()
            .and_then(|o| parse(kind, o).ok());
        if old.as_ref().is_some_and(|old| old.spec == parsed.spec) || parsed.deleting {
            return Review::Done(Box::new(allowed));
        }
        if let Some(problem) = old
            .as_ref()
            .and_then(|old| rotation_refusal(old, &parsed.spec, jiff::Timestamp::now()))
        {
            return Review::Done(Box::new(deny(allowed, vec![problem])));
        }
    }

    let namespace = if kind == KIND_CLUSTER_ISSUER {
        settings.cluster_resource_namespace.clone()
    } else {
        match request
            .namespace
            .clone()
            .or(parsed.namespace)
            .filter(|ns| !ns.is_empty())
        {
            Some(ns) => ns,
            None => {
                return Review::Done(Box::new(deny(
                    allowed,
                    vec![Problem {
                        field: "metadata.namespace".to_string(),
                        reason: "FieldValueRequired",
                        message: "an InternalIssuer must have a namespace".to_string(),
                    }],
                )));
            }
        }
    };

    let spec = parsed.spec;
    let mut problems = Vec::new();
    if let Err(errors) = validate_issuer_spec(&spec) {
        problems.extend(errors.0.into_iter().map(Problem::from_field_error));
    }
    // What the egress policy decides without resolving names: an address, or a name of
    // this host or the API server, as an issuer's URL. (The controller checks the
    // resolved address of every connection, and the KDC in the Secret too.)
    let exempt = kind == KIND_CLUSTER_ISSUER && settings.egress_exempt_cluster_issuers;
    if let Some(policy) = settings.egress.as_ref().filter(|_| !exempt) {
        for (field, url) in issuer_urls(&spec) {
            if let Some(host) = url_host(url)
                && let Err(refused) = policy.check_static(&host)
            {
                problems.push(Problem {
                    field: field.to_string(),
                    reason: "FieldValueForbidden",
                    message: format!("Forbidden: {refused}"),
                });
            }
        }
    }
    // A PKCS#11 module is code the controller would run: only the listed ones, and only
    // for cluster issuers unless namespaced ones are allowed too.
    if let Some(module) = spec
        .ca
        .as_ref()
        .and_then(|ca| ca.pkcs11.as_ref())
        .map(|key| key.module.as_str())
    {
        let refusal = if kind != KIND_CLUSTER_ISSUER && !settings.pkcs11_namespaced_issuers {
            Some(format!(
                "Forbidden: only InternalClusterIssuers may use a PKCS#11 key here (the \
                 controller's --pkcs11-namespaced-issuers is off), not this {kind}"
            ))
        } else if !settings.pkcs11_modules.contains(module) {
            Some(if settings.pkcs11_modules.is_empty() {
                "Forbidden: the controller loads no PKCS#11 module (--pkcs11-module)".to_string()
            } else {
                format!(
                    "Forbidden: {module:?} is not a module the controller may load; it may \
                     load: {}",
                    settings
                        .pkcs11_modules
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        } else {
            None
        };
        if let Some(message) = refusal {
            problems.push(Problem {
                field: "spec.ca.pkcs11.module".to_string(),
                reason: "FieldValueForbidden",
                message,
            });
        }
    }
    // A name that is not a valid Secret name was reported above; looking it up would
    // only add noise.
    let mut requirements: Vec<SecretRequirement> = secret_requirements(&spec)
        .into_iter()
        .filter(|r| check_dns1123_subdomain(&r.secret).is_ok())
        .collect();
    // Secrets the controller may not read would leave the issuer not Ready for good;
    // they are not looked up either (the webhook's own access is as narrow).
    if let Some(allowed) = &settings.secret_namespaces
        && !requirements.is_empty()
        && !allowed.contains(&namespace)
    {
        problems.push(Problem {
            field: if kind == KIND_CLUSTER_ISSUER {
                "spec".to_string()
            } else {
                "metadata.namespace".to_string()
            },
            reason: "FieldValueForbidden",
            message: format!(
                "Forbidden: certwright may read Secrets only in namespace(s) {} (the chart's \
                 secretAccess), and this {kind}'s Secrets would be in {namespace:?}",
                allowed
                    .iter()
                    .map(|ns| format!("{ns:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        requirements.clear();
    }
    Review::Issuer(Box::new(IssuerReview {
        response: allowed,
        kind,
        name: request.name.clone(),
        namespace,
        problems,
        warnings: warnings(&spec),
        requirements,
    }))
}

impl IssuerReview {
    /// The Secrets [`IssuerReview::decide`] will ask about, without duplicates.
    pub(crate) fn secrets_to_look_up(&self) -> Vec<SecretRef> {
        let refs: BTreeSet<SecretRef> = self
            .requirements
            .iter()
            .map(|r| SecretRef {
                namespace: self.namespace.clone(),
                name: r.secret.clone(),
            })
            .collect();
        refs.into_iter().collect()
    }

    /// The issuer's kind and name, for logs.
    pub(crate) fn describe(&self) -> String {
        format!("{} {:?}", self.kind, self.name)
    }

    /// Checks each referenced Secret (exists where this issuer may read it, holds the
    /// keys of at least one alternative) and answers: denied with every problem of the
    /// spec, or allowed with the warnings. What is wrong with a Secret is a warning, not a
    /// denial: GitOps tools, External Secrets and Sealed Secrets create Secrets after or
    /// beside the issuer, and the controller reports a missing Secret in the issuer's
    /// Ready condition until it appears.
    pub(crate) fn decide(self, secrets: &dyn SecretLookup) -> AdmissionResponse {
        let IssuerReview {
            mut response,
            kind,
            namespace,
            problems,
            mut warnings,
            requirements,
            ..
        } = self;
        for requirement in &requirements {
            let secret = &requirement.secret;
            let field = requirement.field;
            let found = match secrets.lookup(&namespace, secret) {
                SecretState::Found(keys) => keys,
                SecretState::NotFound => {
                    let scope = if kind == KIND_CLUSTER_ISSUER {
                        "an InternalClusterIssuer reads Secrets from the cluster resource namespace"
                    } else {
                        "an InternalIssuer reads Secrets from its own namespace"
                    };
                    warnings.push(format!(
                        "{field}: Secret {secret:?} not found in namespace {namespace:?} \
                         ({scope}); the issuer is not Ready until it exists"
                    ));
                    continue;
                }
                SecretState::Unknown(why) => {
                    warnings.push(format!(
                        "{field}: could not check Secret {secret:?} in namespace \
                         {namespace:?}: {why}"
                    ));
                    continue;
                }
            };
            if let Some(unmet) = requirement.unmet(|key| found.contains(key)) {
                warnings.push(format!(
                    "{field}: Secret {secret:?} in namespace {namespace:?} {unmet}"
                ));
            }
        }
        if problems.is_empty() {
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            response
        } else {
            deny(response, problems)
        }
    }
}

/// The PKI URLs a spec names, with their fields.
fn issuer_urls(spec: &IssuerSpec) -> Vec<(&'static str, &str)> {
    let mut urls = Vec::new();
    if let Some(rest) = &spec.rest {
        urls.push(("spec.rest.url", rest.url.as_str()));
    }
    if let Some(adcs) = &spec.adcs {
        urls.push(("spec.adcs.url", adcs.url.as_str()));
    }
    if let Some(ejbca) = &spec.ejbca {
        urls.push(("spec.ejbca.url", ejbca.url.as_str()));
    }
    urls
}

/// The host of a URL as the controller's HTTP client reads it (the `url` crate, which
/// normalises `2130706433`, `0x7f.1` and `127.0.0.1.` to `127.0.0.1`), `[::1]` with its
/// brackets.
fn url_host(url: &str) -> Option<String> {
    url::Url::parse(url.trim())
        .ok()?
        .host_str()
        .map(str::to_string)
        .filter(|h| !h.is_empty())
}

/// The issuer parsed from a request's object.
struct Parsed {
    spec: IssuerSpec,
    namespace: Option<String>,
    deleting: bool,
    /// `status.rotation`, as the controller wrote it.
    rotation: Option<certwright_api::RotationStatus>,
}

fn parse(kind: &str, object: &DynamicObject) -> Result<Parsed, String> {
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let rotation = value
        .pointer("/status/rotation")
        .and_then(|r| serde_json::from_value(r.clone()).ok());
    let (metadata, spec) = if kind == KIND_CLUSTER_ISSUER {
        let issuer: InternalClusterIssuer =
            serde_json::from_value(value).map_err(|e| e.to_string())?;
        (issuer.metadata, issuer.spec.0)
    } else {
        let issuer: InternalIssuer = serde_json::from_value(value).map_err(|e| e.to_string())?;
        (issuer.metadata, issuer.spec)
    };
    Ok(Parsed {
        spec,
        namespace: metadata.namespace,
        deleting: metadata.deletion_timestamp.is_some(),
        rotation,
    })
}

/// Why an update may not change a CA rotation so: its CAs may not change once the next
/// one signs (`Switch`, `Retire`); `Retire` is entered from `Switch` only, once the
/// certificates issued under the current CA's root have expired (the controller's
/// `status.rotation.retireAfter`); and the old CA does not sign again after `Retire`.
fn rotation_refusal(old: &Parsed, new: &IssuerSpec, now: jiff::Timestamp) -> Option<Problem> {
    use certwright_api::RotationPhase;
    let (Some(old_ca), Some(new_ca)) = (old.spec.ca.as_ref(), new.ca.as_ref()) else {
        return None;
    };
    let old_rotation = old_ca.rotation.as_ref()?;
    let refuse = |field: &str, message: String| {
        Some(Problem {
            field: field.to_string(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {message}"),
        })
    };
    let Some(new_rotation) = new_ca.rotation.as_ref() else {
        // Finishing (the next CA becomes the current one) or backing out: the
        // controller keeps every root with valid certificates in the bundle meanwhile.
        return None;
    };
    let signing_next = matches!(
        old_rotation.phase,
        RotationPhase::Switch | RotationPhase::Retire
    );
    if signing_next
        && (new_ca.secret_name != old_ca.secret_name
            || new_ca.pkcs11 != old_ca.pkcs11
            || new_rotation.next_secret_name != old_rotation.next_secret_name
            || new_rotation.next_pkcs11 != old_rotation.next_pkcs11)
    {
        return refuse(
            "spec.ca.rotation",
            format!(
                "the CAs of a rotation in {} may not change; finish it (secretName: the next \
                 CA, no rotation) or set phase: Distribute first",
                old_rotation.phase
            ),
        );
    }
    match (old_rotation.phase, new_rotation.phase) {
        (RotationPhase::Retire, RotationPhase::Distribute) => refuse(
            "spec.ca.rotation.phase",
            "after Retire the current CA's root is no longer published, so it may not sign \
             again; finish the rotation instead"
                .to_string(),
        ),
        (RotationPhase::Retire, _) | (_, RotationPhase::Distribute | RotationPhase::Switch) => None,
        (RotationPhase::Distribute, RotationPhase::Retire) => refuse(
            "spec.ca.rotation.phase",
            "a CA rotation enters Retire from Switch, once the next CA signs (Distribute, \
             then Switch, then Retire)"
                .to_string(),
        ),
        (RotationPhase::Switch, RotationPhase::Retire) => {
            match old
                .rotation
                .as_ref()
                .filter(|r| r.phase == RotationPhase::Switch)
            {
                None => refuse(
                    "spec.ca.rotation.phase",
                    "the controller has not yet reported Switch in status.rotation, nor until \
                     when the current CA's certificates are valid; try again once it has"
                        .to_string(),
                ),
                Some(status) => match status.retire_after {
                    Some(until) if until > now => refuse(
                        "spec.ca.rotation.phase",
                        format!(
                            "certificates issued under the current CA's root are valid until \
                             {until}; Retire would drop that root from the trust bundle while \
                             they are in use. Stay in Switch until then"
                        ),
                    ),
                    _ => None,
                },
            }
        }
    }
}

/// Allowed, but worth a second look.
fn warnings(spec: &IssuerSpec) -> Vec<String> {
    let mut out = Vec::new();
    let unset = |bundle: &Option<Base64Bytes>| bundle.as_ref().is_none_or(|b| b.is_empty());
    let network = [
        ("rest", spec.rest.as_ref().map(|b| &b.ca_bundle)),
        ("adcs", spec.adcs.as_ref().map(|b| &b.ca_bundle)),
        ("ejbca", spec.ejbca.as_ref().map(|b| &b.ca_bundle)),
    ];
    for (block, bundle) in network {
        if bundle.is_some_and(unset) {
            out.push(format!(
                "spec.{block}.caBundle is not set: the PKI's TLS certificate is trusted \
                 if any system root CA signed it"
            ));
        }
    }
    if spec.allow_template_override {
        out.push(
            "spec.allowTemplateOverride is true: CertificateRequests may choose their template \
             (pki.certwright.io/template)"
                .to_string(),
        );
    }
    if let Some(rps) = spec.requests_per_second
        && rps > WARN_REQUESTS_PER_SECOND
    {
        out.push(format!(
            "spec.requestsPerSecond {rps} is above {WARN_REQUESTS_PER_SECOND}: make sure the \
             PKI can take that rate"
        ));
    }
    if let Some(n) = spec.max_concurrent_requests
        && n > WARN_MAX_CONCURRENT_REQUESTS
    {
        out.push(format!(
            "spec.maxConcurrentRequests {n} is above {WARN_MAX_CONCURRENT_REQUESTS}: make sure \
             the PKI can take that many calls at once"
        ));
    }
    if spec
        .adcs
        .as_ref()
        .is_some_and(|a| a.auth_method == AdcsAuthMethod::Basic)
    {
        out.push(
            "spec.adcs.authMethod basic sends the password with every request; prefer ntlm, \
             kerberos or clientCertificate"
                .to_string(),
        );
    }
    if spec.adcs.as_ref().is_some_and(|a| a.send_validity_period) {
        out.push(
            "spec.adcs.sendValidityPeriod needs EDITF_ATTRIBUTEENDDATE on the CA; without it \
             the template decides the lifetime"
                .to_string(),
        );
    }
    if spec.ejbca.as_ref().is_some_and(|e| e.send_end_time) {
        out.push(
            "spec.ejbca.sendEndTime needs EJBCA 9.3.3 or later; older versions do not honour \
             end_time"
                .to_string(),
        );
    }
    out
}

/// Denies with every problem: one message for people (each problem `field: message`,
/// joined with "; ") and one `StatusCause` per problem for programs, with code 422
/// Invalid.
pub(crate) fn deny(response: AdmissionResponse, problems: Vec<Problem>) -> AdmissionResponse {
    let message = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let (code, reason) = (422, "Invalid");
    let causes = problems
        .into_iter()
        .map(|p| StatusCause {
            reason: p.reason.to_string(),
            message: p.message,
            field: p.field,
        })
        .collect();
    let mut response = response.deny(&message);
    response.result = Status::failure(&message, reason)
        .with_code(code)
        .with_details(StatusDetails {
            name: String::new(),
            group: certwright_api::GROUP.to_string(),
            kind: String::new(),
            uid: String::new(),
            causes,
            retry_after_seconds: 0,
        });
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::{Value, json};

    const CLUSTER_NS: &str = "cert-manager";

    fn settings() -> Settings {
        Settings {
            cluster_resource_namespace: CLUSTER_NS.to_string(),
            egress: Some(certwright_pki::egress::EgressPolicy::new()),
            egress_exempt_cluster_issuers: false,
            secret_namespaces: None,
            pkcs11_modules: BTreeSet::from(["/usr/lib/softhsm/libsofthsm2.so".to_string()]),
            pkcs11_namespaced_issuers: false,
        }
    }

    /// An AdmissionRequest as the API server sends it.
    fn request(
        operation: &str,
        kind: &str,
        namespace: Option<&str>,
        spec: Value,
        old_spec: Option<Value>,
    ) -> AdmissionRequest<DynamicObject> {
        let object = |spec: Value| {
            let mut metadata = json!({"name": "corp", "uid": "u-1"});
            if let Some(ns) = namespace {
                metadata["namespace"] = json!(ns);
            }
            json!({
                "apiVersion": "pki.certwright.io/v1alpha1",
                "kind": kind,
                "metadata": metadata,
                "spec": spec,
            })
        };
        let plural = if kind == KIND_ISSUER {
            "internalissuers"
        } else {
            "internalclusterissuers"
        };
        let (object_json, old_json) = match operation {
            "DELETE" => (Value::Null, object(spec)),
            _ => (object(spec), old_spec.map(object).unwrap_or(Value::Null)),
        };
        serde_json::from_value(json!({
            "uid": "req-1",
            "kind": {"group": "pki.certwright.io", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "pki.certwright.io", "version": "v1alpha1", "resource": plural},
            "name": "corp",
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object_json,
            "oldObject": old_json,
            "dryRun": false,
        }))
        .expect("a well-formed AdmissionRequest")
    }

    fn create(kind: &str, namespace: Option<&str>, spec: Value) -> AdmissionRequest<DynamicObject> {
        request("CREATE", kind, namespace, spec, None)
    }

    /// A cluster's Secrets: those listed exist, any other does not.
    struct World(FetchedSecrets);

    impl SecretLookup for World {
        fn lookup(&self, namespace: &str, name: &str) -> SecretState {
            let key = SecretRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
            };
            self.0.get(&key).cloned().unwrap_or(SecretState::NotFound)
        }
    }

    /// Secrets by (namespace, name) with the keys they hold.
    fn secrets(entries: &[(&str, &str, &[&str])]) -> World {
        World(
            entries
                .iter()
                .map(|(ns, name, keys)| {
                    (
                        SecretRef {
                            namespace: ns.to_string(),
                            name: name.to_string(),
                        },
                        SecretState::Found(keys.iter().map(|k| k.to_string()).collect()),
                    )
                })
                .collect(),
        )
    }

    fn message(response: &AdmissionResponse) -> &str {
        &response.result.message
    }

    fn ca_spec() -> Value {
        json!({"ca": {"secretName": "dev-ca"}})
    }

    fn adcs_spec(method: &str) -> Value {
        json!({"adcs": {
            "url": "https://adcs.corp.example/certsrv",
            "authMethod": method,
            "authSecretName": "adcs-auth",
            "templateName": "WebServer",
        }})
    }

    #[test]
    fn a_valid_issuer_is_allowed() {
        let store = secrets(&[(CLUSTER_NS, "dev-ca", &["tls.crt", "tls.key"])]);
        let response = admit(
            &create(KIND_CLUSTER_ISSUER, None, ca_spec()),
            &settings(),
            &store,
        );
        assert!(response.allowed, "{}", message(&response));
        assert_eq!(response.uid, "req-1");
        assert_eq!(response.warnings, None);
    }

    #[test]
    fn an_issuer_whose_secrets_certwright_may_not_read_is_denied() {
        let scoped = Settings {
            secret_namespaces: Some(BTreeSet::from([
                CLUSTER_NS.to_string(),
                "team-a".to_string(),
            ])),
            ..settings()
        };
        let store = secrets(&[
            ("team-a", "dev-ca", &["tls.crt", "tls.key"]),
            ("team-b", "dev-ca", &["tls.crt", "tls.key"]),
            (CLUSTER_NS, "dev-ca", &["tls.crt", "tls.key"]),
        ]);
        let inside = admit(
            &create(KIND_ISSUER, Some("team-a"), ca_spec()),
            &scoped,
            &store,
        );
        assert!(inside.allowed, "{}", message(&inside));
        let cluster = admit(
            &create(KIND_CLUSTER_ISSUER, None, ca_spec()),
            &scoped,
            &store,
        );
        assert!(cluster.allowed, "{}", message(&cluster));

        let outside = admit(
            &create(KIND_ISSUER, Some("team-b"), ca_spec()),
            &scoped,
            &store,
        );
        assert!(!outside.allowed);
        assert_eq!(
            message(&outside),
            "metadata.namespace: Forbidden: certwright may read Secrets only in namespace(s) \
             \"cert-manager\", \"team-a\" (the chart's secretAccess), and this InternalIssuer's \
             Secrets would be in \"team-b\""
        );
        // An issuer that needs no Secret may live anywhere.
        let no_secrets = json!({"rest": {"url": "https://pki.corp.example/api/v1"}});
        let open = admit(
            &create(KIND_ISSUER, Some("team-b"), no_secrets),
            &scoped,
            &store,
        );
        assert!(open.allowed, "{}", message(&open));
    }

    #[test]
    fn a_pkcs11_key_is_allowed_only_from_listed_modules_and_cluster_issuers() {
        let spec = |module: &str| {
            json!({"ca": {"secretName": "hsm-ca", "pkcs11": {
                "module": module, "tokenLabel": "ca", "keyLabel": "root"}}})
        };
        let store = secrets(&[
            (CLUSTER_NS, "hsm-ca", &["tls.crt", "pin"]),
            ("team-a", "hsm-ca", &["tls.crt", "pin"]),
        ]);
        let listed = "/usr/lib/softhsm/libsofthsm2.so";
        let cluster = admit(
            &create(KIND_CLUSTER_ISSUER, None, spec(listed)),
            &settings(),
            &store,
        );
        assert!(cluster.allowed, "{}", message(&cluster));
        let other = admit(
            &create(KIND_CLUSTER_ISSUER, None, spec("/tmp/evil.so")),
            &settings(),
            &store,
        );
        assert_eq!(
            message(&other),
            "spec.ca.pkcs11.module: Forbidden: \"/tmp/evil.so\" is not a module the controller \
             may load; it may load: /usr/lib/softhsm/libsofthsm2.so"
        );
        let tenant = admit(
            &create(KIND_ISSUER, Some("team-a"), spec(listed)),
            &settings(),
            &store,
        );
        assert!(
            message(&tenant).starts_with(
                "spec.ca.pkcs11.module: Forbidden: only InternalClusterIssuers may use a PKCS#11 key"
            ),
            "{}",
            message(&tenant)
        );
        let trusting = Settings {
            pkcs11_namespaced_issuers: true,
            ..settings()
        };
        let tenant = admit(
            &create(KIND_ISSUER, Some("team-a"), spec(listed)),
            &trusting,
            &store,
        );
        assert!(tenant.allowed, "{}", message(&tenant));
        // The PIN's Secret must hold `pin`.
        let store = secrets(&[(CLUSTER_NS, "hsm-ca", &["tls.crt"])]);
        let no_pin = admit(
            &create(KIND_CLUSTER_ISSUER, None, spec(listed)),
            &settings(),
            &store,
        );
        let warnings = no_pin.warnings.unwrap_or_default().join("\n");
        assert!(warnings.contains("has no pin"), "{warnings}");
    }

    #[test]
    fn a_rotation_retires_the_old_ca_only_from_switch_and_once_its_certificates_expired() {
        let spec = |phase: &str, next: &str| {
            json!({"ca": {"secretName": "ca-2025", "rotation": {
                "nextSecretName": next, "phase": phase}}})
        };
        let store = secrets(&[
            (CLUSTER_NS, "ca-2025", &["tls.crt", "tls.key"]),
            (CLUSTER_NS, "ca-2026", &["tls.crt", "tls.key"]),
            (CLUSTER_NS, "ca-2027", &["tls.crt", "tls.key"]),
        ]);
        let update = |from: Value, to: Value, status: Option<(&str, Option<jiff::Timestamp>)>| {
            let mut req = request("UPDATE", KIND_CLUSTER_ISSUER, None, to, Some(from));
            if let Some((phase, until)) = status {
                req.old_object.as_mut().unwrap().data["status"] =
                    json!({"rotation": {"phase": phase, "retireAfter": until}});
            }
            admit(&req, &settings(), &store)
        };
        let hour = jiff::SignedDuration::from_hours(1);
        let later = jiff::Timestamp::now().checked_add(hour).unwrap();
        let earlier = jiff::Timestamp::now().checked_sub(hour).unwrap();
        let next = "ca-2026";

        let refused = update(
            spec("Switch", next),
            spec("Retire", next),
            Some(("Switch", Some(later))),
        );
        assert!(!refused.allowed);
        assert!(
            message(&refused).starts_with(&format!(
                "spec.ca.rotation.phase: Forbidden: certificates issued under the current CA's \
                 root are valid until {later}"
            )),
            "{}",
            message(&refused)
        );
        for (from, to, status, expected) in [
            (
                spec("Distribute", next),
                spec("Retire", next),
                None,
                "enters Retire from Switch",
            ),
            (
                spec("Switch", next),
                spec("Retire", next),
                None,
                "has not yet reported Switch",
            ),
            (
                spec("Retire", next),
                spec("Distribute", next),
                Some(("Retire", None)),
                "may not sign again",
            ),
            (
                spec("Retire", next),
                spec("Retire", "ca-2027"),
                Some(("Retire", None)),
                "may not change",
            ),
            (
                spec("Switch", next),
                spec("Switch", "ca-2027"),
                Some(("Switch", None)),
                "may not change",
            ),
        ] {
            let response = update(from.clone(), to.clone(), status);
            assert!(
                message(&response).contains(expected),
                "{from} -> {to}: {}",
                message(&response)
            );
        }
        let finish = json!({"ca": {"secretName": "ca-2026"}});
        for (from, to, status) in [
            (
                spec("Switch", next),
                spec("Retire", next),
                Some(("Switch", Some(earlier))),
            ),
            (
                spec("Switch", next),
                spec("Retire", next),
                Some(("Switch", None)),
            ),
            (spec("Distribute", next), spec("Switch", next), None),
            (spec("Switch", next), spec("Distribute", next), None),
            (
                spec("Distribute", next),
                spec("Distribute", "ca-2027"),
                None,
            ),
            (spec("Retire", next), finish.clone(), Some(("Retire", None))),
            (spec("Switch", next), finish, Some(("Switch", Some(later)))),
        ] {
            let response = update(from.clone(), to.clone(), status);
            assert!(response.allowed, "{from} -> {to}: {}", message(&response));
        }
    }

    #[test]
    fn an_http_url_is_denied_naming_the_field() {
        let spec = json!({"rest": {"url": "http://pki.corp.example/api/v1"}});
        let response = admit(
            &create(KIND_ISSUER, Some("team-a"), spec),
            &settings(),
            &secrets(&[]),
        );
        assert!(!response.allowed);
        assert_eq!(
            message(&response),
            "spec.rest.url: Invalid value: must use https, not http"
        );
        assert_eq!(response.result.code, 422);
        let causes = &response.result.details.as_ref().unwrap().causes;
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.rest.url");
        assert_eq!(causes[0].reason, "FieldValueInvalid");
    }

    #[test]
    fn two_backends_are_denied() {
        let mut spec = ca_spec();
        spec["adcs"] = adcs_spec("ntlm")["adcs"].clone();
        let store = secrets(&[
            (CLUSTER_NS, "dev-ca", &["tls.crt", "tls.key"]),
            (CLUSTER_NS, "adcs-auth", &["username", "password"]),
        ]);
        let response = admit(
            &create(KIND_CLUSTER_ISSUER, None, spec),
            &settings(),
            &store,
        );
        assert!(!response.allowed);
        assert!(
            message(&response).starts_with("spec.adcs: Forbidden: only one backend block"),
            "{}",
            message(&response)
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        // An invalid URL and a bad limit: both, in one answer (a missing Secret is only a
        // warning).
        let mut spec = adcs_spec("ntlm");
        spec["adcs"]["url"] = json!("http://adcs.corp.example/certsrv");
        spec["maxConcurrentRequests"] = json!(0);
        let response = admit(
            &create(KIND_ISSUER, Some("team-a"), spec),
            &settings(),
            &secrets(&[]),
        );
        assert!(!response.allowed);
        let fields: Vec<_> = response
            .result
            .details
            .as_ref()
            .unwrap()
            .causes
            .iter()
            .map(|c| c.field.as_str())
            .collect();
        assert_eq!(fields, vec!["spec.adcs.url", "spec.maxConcurrentRequests"]);
        assert_eq!(message(&response).matches("; ").count(), 1);
    }

    fn warnings_of(response: &AdmissionResponse) -> Vec<String> {
        response.warnings.clone().unwrap_or_default()
    }

    #[test]
    fn a_missing_secret_is_a_warning_naming_the_field_and_namespace() {
        // GitOps tools and secret operators create Secrets after the issuer.
        let response = admit(
            &create(KIND_CLUSTER_ISSUER, None, ca_spec()),
            &settings(),
            &secrets(&[]),
        );
        assert!(response.allowed, "{}", message(&response));
        assert_eq!(
            warnings_of(&response),
            [
                "spec.ca.secretName: Secret \"dev-ca\" not found in namespace \"cert-manager\" \
              (an InternalClusterIssuer reads Secrets from the cluster resource namespace); \
              the issuer is not Ready until it exists"
            ]
        );
    }

    #[test]
    fn a_secret_missing_a_key_is_a_warning() {
        let store = secrets(&[(CLUSTER_NS, "dev-ca", &["tls.crt"])]);
        let response = admit(
            &create(KIND_CLUSTER_ISSUER, None, ca_spec()),
            &settings(),
            &store,
        );
        assert!(response.allowed, "{}", message(&response));
        assert_eq!(
            warnings_of(&response),
            ["spec.ca.secretName: Secret \"dev-ca\" in namespace \"cert-manager\" has no tls.key"]
        );
    }

    #[test]
    fn a_namespaced_issuer_may_not_name_this_host_the_api_server_or_metadata() {
        for (url, host) in [
            ("https://127.0.0.1:6443/api", "127.0.0.1"),
            ("https://169.254.169.254/latest", "169.254.169.254"),
            (
                "https://kubernetes.default.svc/api",
                "kubernetes.default.svc",
            ),
            ("https://[::1]:8443/x", "::1"),
            ("https://localhost:9443", "localhost"),
            ("https://2130706433/", "127.0.0.1"),
            ("https://0x7f.1/", "127.0.0.1"),
        ] {
            let spec = json!({"rest": {"url": url}});
            let response = admit(
                &create(KIND_ISSUER, Some("team-a"), spec.clone()),
                &settings(),
                &secrets(&[]),
            );
            assert!(!response.allowed, "{url}");
            assert!(
                message(&response).starts_with(&format!(
                    "spec.rest.url: Forbidden: the egress policy refuses {host}"
                )),
                "{url}: {}",
                message(&response)
            );
            // A cluster issuer too, unless the platform exempts cluster issuers.
            let cluster = create(KIND_CLUSTER_ISSUER, None, spec);
            assert!(
                !admit(&cluster, &settings(), &secrets(&[])).allowed,
                "{url}"
            );
            let exempt = Settings {
                egress_exempt_cluster_issuers: true,
                ..settings()
            };
            assert!(admit(&cluster, &exempt, &secrets(&[])).allowed, "{url}");
        }
        let fine = json!({"rest": {"url": "https://pki.corp.example/api"}});
        assert!(
            admit(
                &create(KIND_ISSUER, Some("team-a"), fine.clone()),
                &settings(),
                &secrets(&[])
            )
            .allowed
        );
        // An allow list of names: any other name is refused.
        let allow = Settings {
            egress: Some(
                certwright_pki::egress::EgressPolicy::new()
                    .allow("*.pki.corp.example")
                    .unwrap(),
            ),
            ..settings()
        };
        let response = admit(
            &create(KIND_ISSUER, Some("team-a"), fine),
            &allow,
            &secrets(&[]),
        );
        assert!(
            message(&response).contains("not among the hosts"),
            "{}",
            message(&response)
        );
    }

    #[test]
    fn a_spec_problem_is_denied_even_when_its_secret_is_missing() {
        let spec = json!({"rest": {"url": "http://pki.corp.example/api/v1", "authSecretName": "pki-auth"}});
        let response = admit(
            &create(KIND_ISSUER, Some("team-a"), spec),
            &settings(),
            &secrets(&[]),
        );
        assert!(!response.allowed);
        assert!(
            message(&response).starts_with("spec.rest.url:"),
            "{}",
            message(&response)
        );
        assert!(
            !message(&response).contains("authSecretName"),
            "{}",
            message(&response)
        );
    }

    #[test]
    fn kerberos_takes_a_password_or_a_keytab() {
        let request = create(KIND_ISSUER, Some("team-a"), adcs_spec("kerberos"));
        for keys in [
            &["username", "realm", "kdc", "password"][..],
            &["username", "realm", "kdc", "keytab", "domain"][..],
        ] {
            let store = secrets(&[("team-a", "adcs-auth", keys)]);
            let response = admit(&request, &settings(), &store);
            assert!(response.allowed, "{keys:?}: {}", message(&response));
        }
        let store = secrets(&[("team-a", "adcs-auth", &["username", "password"])]);
        let response = admit(&request, &settings(), &store);
        assert!(response.allowed, "{}", message(&response));
        assert!(
            warnings_of(&response).contains(
                &"spec.adcs.authSecretName: Secret \"adcs-auth\" in namespace \"team-a\" holds \
                  none of the key sets [username + realm + kdc + password], \
                  [username + realm + kdc + keytab]"
                    .to_string()
            ),
            "{:?}",
            warnings_of(&response)
        );
    }

    #[test]
    fn warnings_are_returned_with_an_allowed_answer() {
        let mut spec = adcs_spec("basic");
        spec["allowTemplateOverride"] = json!(true);
        spec["requestsPerSecond"] = json!(100);
        spec["maxConcurrentRequests"] = json!(128);
        spec["adcs"]["sendValidityPeriod"] = json!(true);
        let store = secrets(&[("team-a", "adcs-auth", &["username", "password"])]);
        let response = admit(
            &create(KIND_ISSUER, Some("team-a"), spec),
            &settings(),
            &store,
        );
        assert!(response.allowed, "{}", message(&response));
        let warnings = response.warnings.unwrap();
        let starts: Vec<_> = warnings
            .iter()
            .map(|w| w.split([' ', ':']).next().unwrap())
            .collect();
        assert_eq!(
            starts,
            vec![
                "spec.adcs.caBundle",
                "spec.allowTemplateOverride",
                "spec.requestsPerSecond",
                "spec.maxConcurrentRequests",
                "spec.adcs.authMethod",
                "spec.adcs.sendValidityPeriod"
            ]
        );
        for warning in &warnings {
            assert!(warning.len() <= 120, "too long for kubectl: {warning}");
        }

        let ejbca = json!({"ejbca": {
            "url": "https://ejbca.corp.example/ejbca/ejbca-rest-api",
            "authSecretName": "ejbca-client",
            "certificateAuthorityName": "IssuingCA",
            "certificateProfileName": "ENDUSER",
            "endEntityProfileName": "k8s",
            "sendEndTime": true,
        }});
        let store = secrets(&[(CLUSTER_NS, "ejbca-client", &["tls.crt", "tls.key"])]);
        let response = admit(
            &create(KIND_CLUSTER_ISSUER, None, ejbca),
            &settings(),
            &store,
        );
        assert!(response.allowed, "{}", message(&response));
        let warnings = response.warnings.unwrap();
        assert!(warnings[0].starts_with("spec.ejbca.caBundle is not set"));
        assert!(warnings[1].starts_with("spec.ejbca.sendEndTime needs EJBCA 9.3.3"));
    }

    #[test]
    fn delete_and_other_kinds_are_allowed_unchecked() {
        let response = admit(
            &request("DELETE", KIND_CLUSTER_ISSUER, None, ca_spec(), None),
            &settings(),
            &secrets(&[]),
        );
        assert!(response.allowed);

        let mut other = create(KIND_ISSUER, Some("team-a"), json!({}));
        other.kind.kind = "Pod".to_string();
        other.kind.group = String::new();
        assert!(admit(&other, &settings(), &secrets(&[])).allowed);
    }

    #[test]
    fn a_cluster_issuer_looks_in_the_cluster_resource_namespace() {
        let request = create(KIND_CLUSTER_ISSUER, None, ca_spec());
        let Review::Issuer(issuer) = review(&request, &settings()) else {
            panic!("expected an issuer review");
        };
        assert_eq!(
            issuer.secrets_to_look_up(),
            vec![SecretRef {
                namespace: CLUSTER_NS.into(),
                name: "dev-ca".into()
            }]
        );
        // The same Secret in another namespace does not count.
        let store = secrets(&[("team-a", "dev-ca", &["tls.crt", "tls.key"])]);
        let warnings = warnings_of(&admit(&request, &settings(), &store));
        assert!(
            warnings[0].contains("not found in namespace \"cert-manager\""),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_namespaced_issuer_looks_in_its_own_namespace() {
        let request = create(KIND_ISSUER, Some("team-a"), ca_spec());
        let Review::Issuer(issuer) = review(&request, &settings()) else {
            panic!("expected an issuer review");
        };
        assert_eq!(
            issuer.secrets_to_look_up(),
            vec![SecretRef {
                namespace: "team-a".into(),
                name: "dev-ca".into()
            }]
        );
        let in_cluster_ns = secrets(&[(CLUSTER_NS, "dev-ca", &["tls.crt", "tls.key"])]);
        let response = admit(&request, &settings(), &in_cluster_ns);
        assert!(warnings_of(&response)[0].contains("not found in namespace \"team-a\""));
        let in_own_ns = secrets(&[("team-a", "dev-ca", &["tls.crt", "tls.key"])]);
        assert_eq!(
            warnings_of(&admit(&request, &settings(), &in_own_ns)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_secret_that_cannot_be_read_is_a_warning() {
        let mut store = FetchedSecrets::new();
        store.insert(
            SecretRef {
                namespace: CLUSTER_NS.into(),
                name: "dev-ca".into(),
            },
            SecretState::Unknown("timed out after 5s".into()),
        );
        let response = admit(
            &create(KIND_CLUSTER_ISSUER, None, ca_spec()),
            &settings(),
            &store,
        );
        assert!(response.allowed, "{}", message(&response));
        assert_eq!(
            warnings_of(&response),
            [
                "spec.ca.secretName: could not check Secret \"dev-ca\" in namespace \
              \"cert-manager\": timed out after 5s"
            ]
        );
    }

    #[test]
    fn an_unparsable_object_is_denied_naming_the_cause() {
        let spec = json!({"adcs": {
            "url": "https://adcs.corp.example/certsrv",
            "authMethod": "digest",
            "authSecretName": "adcs-auth",
            "templateName": "WebServer",
        }});
        let response = admit(
            &create(KIND_ISSUER, Some("team-a"), spec),
            &settings(),
            &secrets(&[]),
        );
        assert!(!response.allowed);
        assert!(
            message(&response)
                .starts_with("the object is not a valid InternalIssuer: unknown variant `digest`")
                && message(&response).contains("digest"),
            "{}",
            message(&response)
        );
    }

    #[test]
    fn invalid_secret_names_are_reported_once_and_not_looked_up() {
        let spec = json!({"ca": {"secretName": "Dev_CA"}});
        let request = create(KIND_ISSUER, Some("team-a"), spec);
        let Review::Issuer(issuer) = review(&request, &settings()) else {
            panic!("expected an issuer review");
        };
        assert!(issuer.secrets_to_look_up().is_empty());
        let response = issuer.decide(&secrets(&[]));
        assert!(!response.allowed);
        assert!(message(&response).starts_with("spec.ca.secretName: Invalid value: \"Dev_CA\""));
        assert!(!message(&response).contains("not found"));
    }

    #[test]
    fn an_update_that_keeps_the_spec_is_not_blocked() {
        // The Secret is gone, but only a label or finalizer changes: allowed.
        let unchanged = request(
            "UPDATE",
            KIND_CLUSTER_ISSUER,
            None,
            ca_spec(),
            Some(ca_spec()),
        );
        assert!(admit(&unchanged, &settings(), &secrets(&[])).allowed);
        // A spec change is checked in full.
        let changed = request(
            "UPDATE",
            KIND_CLUSTER_ISSUER,
            None,
            json!({"ca": {"secretName": "new-ca"}}),
            Some(ca_spec()),
        );
        let response = admit(&changed, &settings(), &secrets(&[]));
        assert!(response.allowed);
        assert!(warnings_of(&response)[0].contains("\"new-ca\" not found"));
    }
}
