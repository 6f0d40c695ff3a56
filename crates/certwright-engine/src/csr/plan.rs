//! The pure half of the Kubernetes CSR loop: what is cached of each
//! CertificateSigningRequest, which issuer a `signerName` names, what a CSR needs, what
//! the backend is asked, and the status a result writes.

use std::borrow::Cow;
use std::time::Duration;

use certwright_api::REQUEST_IS_CA_ANNOTATION;
use certwright_pki::{Requester, SignRequest};
use certwright_x509::Csr;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::ClusterResourceScope;
use serde::{Deserialize, Deserializer};

use crate::issuers::IssuerKey;
use crate::requests::decide::{EventReason, Plan, Requeue};

/// The shortest lifetime the API server accepts in `spec.expirationSeconds`.
pub(crate) const MIN_EXPIRATION: Duration = Duration::from_secs(600);

/// A CertificateSigningRequest as the loop watches it: neither the CSR nor the issued
/// certificate is kept (they are skipped while decoding), and of the metadata only the
/// name, uid and resourceVersion (annotations such as `kubectl apply`'s copy of the
/// whole object, labels and managed fields are dropped while decoding).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct CachedCsr {
    /// Name, uid, resourceVersion.
    #[serde(deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    /// The parts of the spec decisions need.
    #[serde(default)]
    pub spec: CachedCsrSpec,
    /// The conditions, and whether a certificate is there.
    #[serde(default)]
    pub status: CachedCsrStatus,
}

/// The parts of a CSR's spec the loop decides on.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CachedCsrSpec {
    /// Who is asked to sign.
    #[serde(default)]
    pub signer_name: String,
}

/// A CSR's status without its certificate.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct CachedCsrStatus {
    /// Type and status of each condition.
    #[serde(default)]
    pub conditions: Vec<CachedCsrCondition>,
    /// Whether `status.certificate` holds anything.
    #[serde(default, rename = "certificate", deserialize_with = "non_empty")]
    pub issued: bool,
}

/// One condition, without its reason and message.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct CachedCsrCondition {
    /// Approved, Denied, Failed.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// "True", "False", "Unknown".
    #[serde(default)]
    pub status: String,
}

fn slim_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    /// What is read of the metadata; everything else is skipped while decoding.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Slim {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        uid: Option<String>,
        #[serde(default)]
        resource_version: Option<String>,
    }
    let slim = Slim::deserialize(d)?;
    Ok(ObjectMeta {
        name: slim.name,
        uid: slim.uid,
        resource_version: slim.resource_version,
        ..Default::default()
    })
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    // Read as a borrowed or owned string and dropped at once.
    let text: Option<Cow<'de, str>> = Option::deserialize(d)?;
    Ok(text.is_some_and(|t| !t.is_empty()))
}

impl kube::Resource for CachedCsr {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "CertificateSigningRequest".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "certificates.k8s.io".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "certificatesigningrequests".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedCsr {
    fn holds(&self, type_: &str) -> bool {
        self.status
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    }
}

/// The signer-name prefixes of an engine's issuer kinds: `<plural>.<group>/`.
#[derive(Clone, Debug)]
pub(crate) struct Signers {
    pub(crate) cluster: String,
    pub(crate) namespaced: String,
}

impl Signers {
    pub(crate) fn new(group: &str, cluster_plural: &str, namespaced_plural: &str) -> Self {
        Signers {
            cluster: format!("{cluster_plural}.{group}/"),
            namespaced: format!("{namespaced_plural}.{group}/"),
        }
    }

    /// The issuer a signer name names: `None` when it is not one of ours, an error
    /// when it is ours but malformed.
    pub(crate) fn issuer(&self, signer_name: &str) -> Option<Result<IssuerKey, String>> {
        if let Some(name) = signer_name.strip_prefix(&self.cluster) {
            return Some(if valid_name(name) {
                Ok(IssuerKey {
                    cluster: true,
                    namespace: String::new(),
                    name: name.to_string(),
                })
            } else {
                Err(format!(
                    "signerName {signer_name:?}: {name:?} is not an issuer name (a DNS-1123 subdomain)"
                ))
            });
        }
        let rest = signer_name.strip_prefix(&self.namespaced)?;
        // A namespace holds no dot, so the first one ends it.
        Some(match rest.split_once('.') {
            Some((namespace, name)) if valid_label(namespace) && valid_name(name) => {
                Ok(IssuerKey {
                    cluster: false,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!(
                "signerName {signer_name:?}: expected {}<namespace>.<name>",
                self.namespaced
            )),
        })
    }
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(valid_label)
}

/// What a watched CSR needs now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Not ours, not approved, denied, or already finished: nothing, until it changes.
    Nothing,
    /// Its signer name is ours but malformed: fail it with this message.
    BadSigner(String),
    /// Signing (or polling) through this issuer.
    Sign(IssuerKey),
}

/// What the CSR needs, from the cached object alone.
pub(crate) fn need(csr: &CachedCsr, signers: &Signers) -> Need {
    let Some(issuer) = signers.issuer(&csr.spec.signer_name) else {
        return Need::Nothing;
    };
    if finished(csr) || !csr.holds("Approved") {
        return Need::Nothing;
    }
    match issuer {
        Ok(key) => Need::Sign(key),
        Err(why) => Need::BadSigner(why),
    }
}

/// Whether nothing more will be done for the CSR: it has a certificate, failed, or was
/// denied.
pub(crate) fn finished(csr: &CachedCsr) -> bool {
    csr.status.issued || csr.holds("Failed") || csr.holds("Denied")
}

/// Whether a full object already has its outcome: a certificate, a failure or a
/// denial, which nothing written later may contradict.
pub(crate) fn settled(csr: &CertificateSigningRequest) -> bool {
    let status = csr.status.as_ref();
    let holds = |type_: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
    };
    status
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
        || holds("Failed")
        || holds("Denied")
}

/// Whether a full object read before signing needs nothing: settled, or no longer
/// approved.
pub(crate) fn finished_full(csr: &CertificateSigningRequest) -> bool {
    let approved = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Approved" && c.status == "True")
        });
    settled(csr) || !approved
}

/// What the backend is asked for a CSR, or why it cannot be signed.
pub(crate) fn sign_request(csr: &CertificateSigningRequest) -> Result<SignRequest, String> {
    let parsed = Csr::parse(&csr.spec.request.0)
        .map_err(|e| format!("spec.request is not a usable CSR: {e}"))?;
    let mut request = SignRequest::new(parsed, csr.metadata.uid.clone().unwrap_or_default());
    if let Some(seconds) = csr.spec.expiration_seconds {
        let seconds =
            u64::try_from(seconds).map_err(|_| "spec.expirationSeconds is negative".to_string())?;
        let duration = Duration::from_secs(seconds);
        if duration < MIN_EXPIRATION {
            return Err(format!(
                "spec.expirationSeconds is {seconds}; the shortest lifetime is {} seconds",
                MIN_EXPIRATION.as_secs()
            ));
        }
        request.duration = Some(duration);
    }
    request.usages = csr.spec.usages.clone().unwrap_or_default();
    request.is_ca = csr
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REQUEST_IS_CA_ANNOTATION))
        .is_some_and(|v| v == "true");
    request.requester = Requester {
        namespace: String::new(),
        name: csr.metadata.name.clone().unwrap_or_default(),
    };
    Ok(request)
}

/// What a plan writes onto a CSR.
#[derive(Debug)]
pub(crate) enum Change {
    /// `status.certificate`: the chain, leaf first (PEM).
    Issue(String),
    /// A `Failed` condition with this reason and message.
    Fail {
        reason: EventReason,
        message: String,
    },
    /// Nothing on the status yet; look again after this long.
    Wait(Duration),
}

/// The change a plan (as for a CertificateRequest) means for a CSR.
pub(crate) fn change_of(plan: &Plan) -> Change {
    if let Some(bundle) = &plan.status.issued {
        return Change::Issue(bundle.certificate_pem());
    }
    match plan.requeue {
        Requeue::Never => Change::Fail {
            reason: plan.event.0,
            message: plan.status.message.clone(),
        },
        Requeue::After(delay) | Requeue::IssuerChange(delay) => Change::Wait(delay),
    }
}

/// The CSR with `change` applied to its status, for a write to `/status`.
pub(crate) fn with_change(
    mut csr: CertificateSigningRequest,
    change: &Change,
    now: jiff::Timestamp,
) -> CertificateSigningRequest {
    let status = csr.status.get_or_insert_with(Default::default);
    match change {
        Change::Issue(pem) => {
            status.certificate = Some(k8s_openapi::ByteString(pem.as_bytes().to_vec()));
        }
        Change::Fail { reason, message } => {
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.retain(|c| c.type_ != "Failed");
            conditions.push(CertificateSigningRequestCondition {
                type_: "Failed".to_string(),
                status: "True".to_string(),
                reason: Some(reason.as_str().to_string()),
                message: Some(message.clone()),
                last_update_time: Some(Time(now)),
                last_transition_time: Some(Time(now)),
            });
        }
        Change::Wait(_) => {}
    }
    csr
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::requests::decide::{Attempt, Backoff, plan};
    use certwright_testkit::fixtures::{CsrBuilder, KeyKind};
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec;

    fn signers() -> Signers {
        Signers::new(
            "pki.certwright.io",
            "internalclusterissuers",
            "internalissuers",
        )
    }

    fn cached(signer: &str, conditions: &[(&str, &str)], issued: bool) -> CachedCsr {
        CachedCsr {
            spec: CachedCsrSpec {
                signer_name: signer.into(),
            },
            status: CachedCsrStatus {
                conditions: conditions
                    .iter()
                    .map(|(t, s)| CachedCsrCondition {
                        type_: (*t).into(),
                        status: (*s).into(),
                    })
                    .collect(),
                issued,
            },
            ..Default::default()
        }
    }

    #[test]
    fn signer_names_map_to_issuers() {
        let s = signers();
        let cluster = s
            .issuer("internalclusterissuers.pki.certwright.io/corp-ca")
            .unwrap()
            .unwrap();
        assert!(cluster.cluster && cluster.name == "corp-ca");
        let ns = s
            .issuer("internalissuers.pki.certwright.io/team-a.web.ca")
            .unwrap()
            .unwrap();
        assert_eq!(
            (ns.namespace.as_str(), ns.name.as_str()),
            ("team-a", "web.ca")
        );
        assert!(s.issuer("kubernetes.io/kubelet-serving").is_none());
        assert!(s.issuer("issuers.cert-manager.io/team-a.ca").is_none());
        assert!(
            s.issuer("internalissuers.pki.certwright.io/noname")
                .unwrap()
                .is_err()
        );
        assert!(
            s.issuer("internalclusterissuers.pki.certwright.io/Bad_Name")
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn only_approved_unfinished_csrs_of_ours_need_signing() {
        let s = signers();
        let ours = "internalclusterissuers.pki.certwright.io/corp";
        let approved = [("Approved", "True")];
        assert!(matches!(
            need(&cached(ours, &approved, false), &s),
            Need::Sign(_)
        ));
        assert_eq!(need(&cached(ours, &[], false), &s), Need::Nothing);
        assert_eq!(
            need(&cached(ours, &[("Denied", "True")], false), &s),
            Need::Nothing
        );
        assert_eq!(need(&cached(ours, &approved, true), &s), Need::Nothing);
        assert_eq!(
            need(
                &cached(ours, &[("Approved", "True"), ("Failed", "True")], false),
                &s
            ),
            Need::Nothing
        );
        assert_eq!(
            need(&cached("example.com/other", &approved, false), &s),
            Need::Nothing
        );
        assert!(matches!(
            need(
                &cached("internalissuers.pki.certwright.io/x", &approved, false),
                &s
            ),
            Need::BadSigner(_)
        ));
    }

    #[test]
    fn the_cache_keeps_no_csr_and_no_certificate() {
        let json = serde_json::json!({
            "metadata": {"name": "c", "uid": "u", "resourceVersion": "7",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "labels": {"a": "b"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"signerName": "a/b", "request": "QUFBQQ==", "usages": ["server auth"]},
            "status": {"certificate": "QUFBQQ==", "conditions": [
                {"type": "Approved", "status": "True", "reason": "KubectlApprove", "message": "long"}
            ]},
        });
        let csr: CachedCsr = serde_json::from_value(json).unwrap();
        assert!(csr.status.issued);
        assert_eq!(csr.spec.signer_name, "a/b");
        assert_eq!(csr.metadata.resource_version.as_deref(), Some("7"));
        assert!(csr.metadata.annotations.is_none());
        assert!(csr.metadata.labels.is_none() && csr.metadata.managed_fields.is_none());
        assert!(csr.holds("Approved"));
        let none: CachedCsr =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "c"}})).unwrap();
        assert!(!none.status.issued);
    }

    fn full(expiration: Option<i32>, is_ca: bool) -> CertificateSigningRequest {
        let built = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("node-1")
            .dns("node-1.example.test")
            .build();
        let mut csr = CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: k8s_openapi::ByteString(built.csr_pem.into_bytes()),
                signer_name: "internalclusterissuers.pki.certwright.io/corp".into(),
                expiration_seconds: expiration,
                usages: Some(vec!["digital signature".into(), "server auth".into()]),
                ..Default::default()
            },
            ..Default::default()
        };
        csr.metadata.name = Some("node-1".into());
        csr.metadata.uid = Some("uid-1".into());
        if is_ca {
            csr.metadata.annotations =
                Some([(REQUEST_IS_CA_ANNOTATION.to_string(), "true".to_string())].into());
        }
        csr
    }

    #[test]
    fn a_csr_becomes_a_sign_request_with_its_lifetime_usages_and_is_ca() {
        let request = sign_request(&full(Some(3600), true)).unwrap();
        assert_eq!(request.duration, Some(Duration::from_secs(3600)));
        assert_eq!(request.usages, ["digital signature", "server auth"]);
        assert!(request.is_ca);
        assert_eq!(request.idempotency_key, "uid-1");
        let plain = sign_request(&full(None, false)).unwrap();
        assert!(plain.duration.is_none() && !plain.is_ca);
        assert!(
            sign_request(&full(Some(60), false))
                .unwrap_err()
                .contains("600")
        );
        let mut garbage = full(None, false);
        garbage.spec.request = k8s_openapi::ByteString(b"nope".to_vec());
        assert!(sign_request(&garbage).unwrap_err().contains("spec.request"));
    }

    #[test]
    fn a_final_plan_fails_the_csr_and_a_retry_waits() {
        let failed = plan(
            Attempt::Answered(Err(certwright_pki::Error::Rejected {
                reason: "profile refuses".into(),
            })),
            1,
            Backoff::default(),
            Duration::from_secs(60),
        );
        let change = change_of(&failed);
        let now = jiff::Timestamp::from_second(1_000).unwrap();
        let written = with_change(full(None, false), &change, now);
        let conditions = written.status.unwrap().conditions.unwrap();
        assert_eq!(conditions[0].type_, "Failed");
        assert_eq!(conditions[0].reason.as_deref(), Some("Rejected"));
        assert!(
            conditions[0]
                .message
                .as_deref()
                .unwrap()
                .contains("profile refuses")
        );
        let retry = plan(
            Attempt::Answered(Err(certwright_pki::Error::transient(
                "down",
                std::io::Error::other("x"),
            ))),
            1,
            Backoff::default(),
            Duration::from_secs(60),
        );
        assert!(matches!(change_of(&retry), Change::Wait(_)));
    }
}
