//! The issuer side of the engine: one entry per issuer holding its backend, its PKI
//! protection and its health, rebuilt when the spec or a referenced Secret changes,
//! health-checked on change and periodically, with a Ready condition a person can act on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certwright_api::{Condition, ConditionStatus, Conditions, IssuerSpec};
use certwright_backend_ca::CaFault;
use certwright_backends::{BuildError, SecretData, SecretSource};
use certwright_pki::{Backend, Error as PkiError};

use crate::protection::{Protection, ProtectionConfig};

/// Identifies one issuer object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IssuerKey {
    /// Cluster-scoped kind (else namespaced).
    pub cluster: bool,
    /// The namespace; empty for cluster-scoped issuers.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// Identifies the inputs a backend was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    /// An issuer deleted and created again under the same name is a new issuer.
    pub(crate) uid: Option<String>,
    pub(crate) generation: Option<i64>,
    /// Each referenced Secret's name and resourceVersion (None when missing).
    pub(crate) secrets: Vec<(String, Option<String>)>,
}

/// An issuer's Ready condition as the engine last determined it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Health {
    /// The Ready condition's reason.
    pub reason: IssuerReason,
    /// A sentence a person can act on.
    pub message: String,
}

impl Health {
    /// Whether requests may be sent: only faults of the issuer's own configuration or
    /// credentials stop them. An unreachable PKI or an open breaker is handled by the
    /// protection layer, which lets probes through.
    pub(crate) fn usable(&self) -> bool {
        matches!(
            self.reason,
            IssuerReason::Verified
                | IssuerReason::CaExpiringSoon
                | IssuerReason::Unreachable
                | IssuerReason::CircuitOpen
        )
    }

    /// The Ready condition's status.
    pub(crate) fn ready(&self) -> ConditionStatus {
        if matches!(
            self.reason,
            IssuerReason::Verified | IssuerReason::CaExpiringSoon
        ) {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }

    /// Whether the Event of this state is a warning: not Ready, or Ready with a CA about
    /// to expire.
    pub(crate) fn warns(&self) -> bool {
        self.ready() != ConditionStatus::True || self.reason == IssuerReason::CaExpiringSoon
    }
}

/// Why an issuer is or is not Ready: its Ready condition's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IssuerReason {
    /// `Verified`: the PKI answered a health check with these credentials.
    Verified,
    /// `CAExpiringSoon` (Ready stays True): the CA certificate the issuer signs with
    /// expires within [`EngineConfig::ca_expiry_warning`](crate::EngineConfig::ca_expiry_warning).
    CaExpiringSoon,
    /// `InvalidSpec`: the spec (or what the backend made of it) cannot work.
    InvalidSpec,
    /// `SecretNotFound`: a referenced Secret or one of its keys is missing.
    SecretNotFound,
    /// `SecretOutOfScope`: the issuer's Secrets are in a namespace the controller may not
    /// read ([`EngineConfig::secret_access`](crate::EngineConfig::secret_access)).
    SecretOutOfScope,
    /// `Unauthorized`: the PKI refused the credentials.
    Unauthorized,
    /// `Unreachable`: the PKI could not be reached or answered garbage.
    Unreachable,
    /// `CircuitOpen`: the circuit breaker paused calls to a failing PKI.
    CircuitOpen,
    /// A local CA's own fault, named by the CA (`CAExpired`, `CAKeyMismatch`,
    /// `HSMPinRejected`, ...).
    Ca(CaFault),
}

impl IssuerReason {
    /// The reason as the Ready condition, the Event and the metrics show it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IssuerReason::Verified => "Verified",
            IssuerReason::CaExpiringSoon => "CAExpiringSoon",
            IssuerReason::InvalidSpec => "InvalidSpec",
            IssuerReason::SecretNotFound => "SecretNotFound",
            IssuerReason::SecretOutOfScope => "SecretOutOfScope",
            IssuerReason::Unauthorized => "Unauthorized",
            IssuerReason::Unreachable => "Unreachable",
            IssuerReason::CircuitOpen => "CircuitOpen",
            IssuerReason::Ca(fault) => fault.reason(),
        }
    }
}

impl std::fmt::Display for IssuerReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a CA that expires at `expiry` is within `window` of it at `now`: the Ready
/// message that says so (the issuer stays Ready, with reason CAExpiringSoon). `None`
/// when the backend does not know its CA's expiry, or it is further off; a CA already
/// expired is the backend's own refusal (CAExpired), not this.
pub(crate) fn expiring_soon(
    expiry: Option<std::time::SystemTime>,
    now: std::time::SystemTime,
    window: Duration,
) -> Option<String> {
    let left = expiry?.duration_since(now).ok()?;
    if window.is_zero() || left > window {
        return None;
    }
    let at = jiff::Timestamp::try_from(expiry?).ok()?;
    // The time left is not in the message: the status (and its Event) would change at
    // every check.
    Some(format!(
        "the CA certificate this issuer signs with (or one of its chain) expires at {at}, \
         within the {} warning window: renew it (its certificates are cut short to its \
         expiry, and none can be issued after it)",
        certwright_api::format_duration(window)
    ))
}

/// The Ready health a failed build means. A local CA that refuses its own certificate
/// or key names the fault ([`CaFault`]): CAExpired, CANotYetValid, CANotACA,
/// CAKeyMismatch, CAKeyUnreadable.
pub(crate) fn build_health(e: &BuildError) -> Health {
    if let Some(fault) = CaFault::of(e) {
        return Health {
            reason: IssuerReason::Ca(fault),
            message: e.to_string(),
        };
    }
    Health {
        reason: match e {
            BuildError::SecretNotFound { .. } | BuildError::SecretKeyMissing { .. } => {
                IssuerReason::SecretNotFound
            }
            _ => IssuerReason::InvalidSpec,
        },
        message: e.to_string(),
    }
}

/// The Ready health a failed health check means; `fault` is what a local CA named of
/// itself, read before the error was redacted.
pub(crate) fn check_health(e: &PkiError, fault: Option<CaFault>) -> Health {
    if let Some(fault) = fault {
        return Health {
            reason: IssuerReason::Ca(fault),
            message: e.to_string(),
        };
    }
    Health {
        reason: match e {
            PkiError::Unauthorized { .. } => IssuerReason::Unauthorized,
            PkiError::Misconfigured { .. } => IssuerReason::InvalidSpec,
            _ => IssuerReason::Unreachable,
        },
        message: e.to_string(),
    }
}

/// One issuer's live state.
pub(crate) struct IssuerEntry {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) spec: IssuerSpec,
    pub(crate) backend: Option<Arc<dyn Backend>>,
    pub(crate) protection: Arc<Protection>,
    pub(crate) health: Mutex<Health>,
    /// Whether this build has had a verdict (its first health check, or a failed
    /// build): until then its status is not written and its requests wait.
    pub(crate) checked: AtomicBool,
    /// Whether the PKI's errors are told by their kind only in this issuer's statuses,
    /// and its requests' (a tenant chose its endpoint; see
    /// [`crate::EngineConfig::redact_tenant_errors`]).
    pub(crate) redact: bool,
}

impl IssuerEntry {
    /// What a PKI error may say in this issuer's statuses and its requests': the whole
    /// error, or its kind only (see [`IssuerEntry::redact`]), the whole of it logged.
    pub(crate) fn tellable(&self, e: PkiError) -> PkiError {
        if !self.redact {
            return e;
        }
        tracing::warn!(error = %e, "the PKI failed; statuses tell its kind only");
        e.redacted()
    }

    pub(crate) fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn checked(&self) -> bool {
        self.checked.load(Ordering::SeqCst)
    }

    /// Records that this build has had its verdict; `true` the first time.
    pub(crate) fn mark_checked(&self) -> bool {
        !self.checked.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn set_health(&self, health: Health) -> bool {
        let mut current = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if *current == health {
            return false;
        }
        *current = health;
        true
    }
}

/// The protection an issuer spec asks for, with engine defaults.
pub(crate) fn protection_config(
    spec: &IssuerSpec,
    config: &crate::EngineConfig,
) -> ProtectionConfig {
    // A local CA signs in process: nothing remote to protect, so its defaults are the
    // spec's own (high); a remote PKI gets the engine's conservative ones.
    let (rps, max_concurrent) = if spec.ca.is_some() {
        (spec.requests_per_second(), spec.max_concurrent_requests())
    } else {
        (
            spec.requests_per_second
                .unwrap_or(config.default_requests_per_second),
            spec.max_concurrent_requests
                .unwrap_or(config.default_max_concurrent_requests),
        )
    };
    ProtectionConfig {
        failure_threshold: config.breaker_failure_threshold,
        open_for: config.breaker_open_for,
        max_open_for: config.breaker_max_open_for,
        ..ProtectionConfig::new(max_concurrent, rps)
    }
}

/// The Secrets of one issuer, read from the namespace it may read them from.
pub(crate) struct NamespacedSecrets {
    pub(crate) namespace: String,
    pub(crate) data: BTreeMap<String, SecretData>,
    /// The egress policy this issuer's backend keeps to.
    pub(crate) egress: Option<std::sync::Arc<certwright_pki::egress::EgressPolicy>>,
    /// The PKCS#11 modules this issuer may load.
    pub(crate) pkcs11_modules: Vec<std::path::PathBuf>,
    /// The issuer's issuance records, read live.
    pub(crate) records: std::sync::Arc<dyn certwright_pki::IssuanceRecords>,
}

impl SecretSource for NamespacedSecrets {
    fn secret(&self, name: &str) -> Option<&SecretData> {
        self.data.get(name)
    }

    fn namespace(&self) -> Option<&str> {
        Some(&self.namespace)
    }

    fn egress(&self) -> Option<std::sync::Arc<certwright_pki::egress::EgressPolicy>> {
        self.egress.clone()
    }

    fn pkcs11_modules(&self) -> &[std::path::PathBuf] {
        &self.pkcs11_modules
    }

    fn issuance_records(&self) -> Option<std::sync::Arc<dyn certwright_pki::IssuanceRecords>> {
        Some(self.records.clone())
    }
}

/// What an issuer's status says of its CA, as last watched or written.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SeenCaStatus {
    pub(crate) trust_bundle: Option<String>,
    pub(crate) rotation: Option<certwright_api::RotationStatus>,
    /// `status.backend`.
    pub(crate) backend: Option<String>,
}

impl SeenCaStatus {
    /// Read from an issuer kind's status, when it has certwright's.
    pub(crate) fn of_status(status: Option<&certwright_api::IssuerStatus>) -> SeenCaStatus {
        SeenCaStatus {
            trust_bundle: status.and_then(|s| s.trust_bundle.clone()),
            rotation: status.and_then(|s| s.rotation.clone()),
            backend: status.and_then(|s| s.backend.clone()),
        }
    }

    /// Read from an issuer object's JSON.
    pub(crate) fn of(object: &serde_json::Value) -> SeenCaStatus {
        SeenCaStatus {
            trust_bundle: object
                .pointer("/status/trustBundle")
                .and_then(|b| b.as_str())
                .map(str::to_string),
            rotation: object
                .pointer("/status/rotation")
                .and_then(|r| serde_json::from_value(r.clone()).ok()),
            backend: object
                .pointer("/status/backend")
                .and_then(|b| b.as_str())
                .map(str::to_string),
        }
    }
}

/// What the status should say of an issuer's CA.
#[derive(Debug)]
pub(crate) enum CaReport {
    /// Nothing known now (the build failed): what the status says stays.
    Keep,
    /// The backend holds no CA: no trust bundle, rotation or CARotation condition.
    Absent,
    /// What it says of its CA.
    Present(crate::ca_lifecycle::CaStatus),
}

/// A status to write on an issuer object, and what changed in it.
#[derive(Debug)]
pub(crate) struct StatusWrite {
    pub(crate) patch: serde_json::Value,
    /// The Ready condition changed (its Event is due).
    pub(crate) ready_changed: bool,
    /// The CARotation condition changed (its Event is due).
    pub(crate) rotation_changed: bool,
}

/// The status to write on an issuer object, when its Ready condition, its CA's trust
/// bundle or rotation (`ca`), or its CARotation condition changed.
pub(crate) fn status_patch(
    current: &[Condition],
    seen: &SeenCaStatus,
    health: &Health,
    generation: Option<i64>,
    backend: Option<&str>,
    report: &CaReport,
    now: jiff::Timestamp,
) -> Option<StatusWrite> {
    use crate::ca_lifecycle::CONDITION_CA_ROTATION;
    let ca = match report {
        CaReport::Present(ca) => Some(ca),
        CaReport::Absent | CaReport::Keep => None,
    };
    let mut conditions = current.to_vec();
    let ready_changed = conditions.set_condition(
        Condition::new(
            "Ready",
            health.ready(),
            health.reason.as_str(),
            health.message.clone(),
        )
        .with_observed_generation(generation),
        now,
    );
    let rotation_changed = match (report, ca.and_then(|c| c.condition.clone())) {
        (CaReport::Keep, _) => false,
        (_, Some(condition)) => conditions.set_condition(condition, now),
        (_, None) => {
            let before = conditions.len();
            conditions.retain(|c| c.type_ != CONDITION_CA_ROTATION);
            conditions.len() != before
        }
    };
    let backend = backend.map(str::to_string);
    let desired = match report {
        CaReport::Keep => SeenCaStatus {
            backend: backend.clone(),
            ..seen.clone()
        },
        _ => SeenCaStatus {
            trust_bundle: ca.map(|c| c.trust_bundle.clone()),
            rotation: ca.and_then(|c| c.rotation.clone()),
            backend: backend.clone(),
        },
    };
    if !ready_changed && !rotation_changed && desired == *seen {
        return None;
    }
    Some(StatusWrite {
        patch: serde_json::json!({
            "status": {
                "conditions": conditions,
                "backend": backend,
                "trustBundle": desired.trust_bundle,
                "rotation": desired.rotation,
            }
        }),
        ready_changed,
        rotation_changed,
    })
}

/// The error as a tenant's status may tell it: a local CA's refusal of its own
/// certificate or key is certwright's words about the tenant's own Secret, told whole;
/// anything else is redacted as [`IssuerEntry::tellable`] decides.
pub(crate) fn tell_unless_own(
    entry: &IssuerEntry,
    e: certwright_pki::Error,
    fault: Option<CaFault>,
) -> certwright_pki::Error {
    if fault.is_some() {
        e
    } else {
        entry.tellable(e)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn issuer_reasons_are_the_words_the_ready_condition_shows() {
        use IssuerReason::*;
        let words: Vec<&str> = [
            Verified,
            CaExpiringSoon,
            InvalidSpec,
            SecretNotFound,
            SecretOutOfScope,
            Unauthorized,
            Unreachable,
            CircuitOpen,
            Ca(CaFault::KeyMismatch),
        ]
        .iter()
        .map(|r| r.as_str())
        .collect();
        assert_eq!(
            words,
            [
                "Verified",
                "CAExpiringSoon",
                "InvalidSpec",
                "SecretNotFound",
                "SecretOutOfScope",
                "Unauthorized",
                "Unreachable",
                "CircuitOpen",
                CaFault::KeyMismatch.reason(),
            ]
        );
        assert_eq!(Ca(CaFault::Expired).to_string(), "CAExpired");
        // Only faults of the issuer's own configuration stop requests.
        let health = |reason| Health {
            reason,
            message: String::new(),
        };
        assert!(health(Unreachable).usable() && health(CircuitOpen).usable());
        assert!(!health(Unauthorized).usable() && !health(Ca(CaFault::Expired)).usable());
    }

    #[test]
    fn a_ca_within_the_window_is_expiring_soon_and_stays_ready() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86_400);
        let window = 30 * day;
        let message = expiring_soon(Some(now + 10 * day), now, window).unwrap();
        assert!(message.contains("expires at 2027-01-"), "{message}");
        assert!(
            message.contains("within the 720h0m0s warning window"),
            "{message}"
        );
        // The same at the next check: no new status, no new Event.
        assert_eq!(
            expiring_soon(Some(now + 10 * day), now + Duration::from_secs(300), window),
            Some(message.clone())
        );
        for (expiry, window) in [
            (Some(now + 31 * day), window),
            (Some(now - day), window),
            (None, window),
            (Some(now + day), Duration::ZERO),
        ] {
            assert_eq!(expiring_soon(expiry, now, window), None);
        }
        let health = Health {
            reason: IssuerReason::CaExpiringSoon,
            message,
        };
        assert_eq!(health.ready(), ConditionStatus::True);
        assert!(health.usable() && health.warns());
    }

    #[test]
    fn a_local_cas_own_faults_name_the_reason() {
        let e = BuildError::Backend(PkiError::Misconfigured {
            message: "tls.key is encrypted".into(),
            source: Some(Box::new(CaFault::KeyUnreadable)),
        });
        let health = build_health(&e);
        assert_eq!(health.reason.as_str(), "CAKeyUnreadable");
        assert_eq!(health.ready(), ConditionStatus::False);
        assert!(!health.usable() && health.warns());
        let expired = PkiError::misconfigured("redacted words");
        assert_eq!(
            check_health(&expired, Some(CaFault::Expired))
                .reason
                .as_str(),
            "CAExpired"
        );
    }

    #[test]
    fn only_configuration_faults_stop_requests() {
        let h = |reason| Health {
            reason,
            message: String::new(),
        };
        assert!(h(IssuerReason::Verified).usable());
        assert!(h(IssuerReason::Unreachable).usable());
        assert!(h(IssuerReason::CircuitOpen).usable());
        assert!(!h(IssuerReason::Unauthorized).usable());
        assert!(!h(IssuerReason::InvalidSpec).usable());
        assert!(!h(IssuerReason::SecretNotFound).usable());
        assert_eq!(h(IssuerReason::Verified).ready(), ConditionStatus::True);
        assert_eq!(h(IssuerReason::Unreachable).ready(), ConditionStatus::False);
    }

    #[test]
    fn check_errors_map_to_reasons() {
        let e = PkiError::Unauthorized {
            message: "401".into(),
        };
        assert_eq!(check_health(&e, None).reason, IssuerReason::Unauthorized);
        assert_eq!(
            check_health(&PkiError::misconfigured("tls"), None).reason,
            IssuerReason::InvalidSpec
        );
        assert_eq!(
            check_health(&PkiError::transient("x", std::io::Error::other("y")), None).reason,
            IssuerReason::Unreachable
        );
        let missing = BuildError::SecretNotFound {
            name: "a".into(),
            namespace: None,
        };
        assert_eq!(build_health(&missing).reason, IssuerReason::SecretNotFound);
    }

    #[test]
    fn a_local_ca_is_not_throttled_like_a_remote_pki() {
        let config = crate::EngineConfig::default();
        let local = IssuerSpec {
            ca: Some(certwright_api::CaBackend {
                secret_name: "ca".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = protection_config(&local, &config);
        assert_eq!(
            p.requests_per_second,
            certwright_api::issuer::LOCAL_CA_REQUESTS_PER_SECOND
        );
        assert_eq!(
            p.max_concurrent,
            certwright_api::issuer::LOCAL_CA_MAX_CONCURRENT_REQUESTS
        );
        let remote = IssuerSpec {
            rest: Some(Default::default()),
            ..Default::default()
        };
        let p = protection_config(&remote, &config);
        assert_eq!(p.requests_per_second, config.default_requests_per_second);
        assert_eq!(p.max_concurrent, config.default_max_concurrent_requests);
        // A spec's own value wins either way.
        let tuned = IssuerSpec {
            requests_per_second: Some(5.0),
            ..local
        };
        assert_eq!(protection_config(&tuned, &config).requests_per_second, 5.0);
    }

    #[test]
    fn status_is_written_only_when_it_changes() {
        let now = jiff::Timestamp::from_second(1_000).unwrap();
        let health = Health {
            reason: IssuerReason::Verified,
            message: "ok".into(),
        };
        let seen = SeenCaStatus::default();
        let write = status_patch(
            &[],
            &seen,
            &health,
            Some(2),
            Some("ca"),
            &CaReport::Absent,
            now,
        )
        .unwrap();
        let patch = write.patch;
        assert!(write.ready_changed && !write.rotation_changed);
        assert_eq!(patch["status"]["conditions"][0]["reason"], "Verified");
        assert_eq!(patch["status"]["conditions"][0]["observedGeneration"], 2);
        assert_eq!(patch["status"]["backend"], "ca");
        let written: Vec<Condition> =
            serde_json::from_value(patch["status"]["conditions"].clone()).unwrap();
        let seen = SeenCaStatus::of(&patch);
        assert!(
            status_patch(
                &written,
                &seen,
                &health,
                Some(2),
                Some("ca"),
                &CaReport::Absent,
                now
            )
            .is_none()
        );
        // Another backend name alone is written (an issuer whose status says `rest` for
        // a backend that names itself `cfssl`).
        let renamed = status_patch(
            &written,
            &seen,
            &health,
            Some(2),
            Some("cfssl"),
            &CaReport::Keep,
            now,
        )
        .unwrap();
        assert!(!renamed.ready_changed && !renamed.rotation_changed);
        assert_eq!(renamed.patch["status"]["backend"], "cfssl");
    }

    #[test]
    fn a_new_trust_bundle_or_rotation_phase_is_written_with_its_condition() {
        use crate::ca_lifecycle::CaStatus;
        let now = jiff::Timestamp::from_second(1_000).unwrap();
        let health = Health {
            reason: IssuerReason::Verified,
            message: "ok".into(),
        };
        let ready = status_patch(
            &[],
            &SeenCaStatus::default(),
            &health,
            None,
            None,
            &CaReport::Absent,
            now,
        )
        .unwrap()
        .patch;
        let conditions: Vec<Condition> =
            serde_json::from_value(ready["status"]["conditions"].clone()).unwrap();
        let switch = CaStatus {
            trust_bundle: "-----BEGIN CERTIFICATE-----\n".into(),
            rotation: Some(certwright_api::RotationStatus {
                phase: certwright_api::RotationPhase::Switch,
                retire_after: None,
            }),
            condition: Some(Condition::new(
                "CARotation",
                ConditionStatus::True,
                "Switch",
                "the next CA signs",
            )),
            warns: false,
        };
        let write = status_patch(
            &conditions,
            &SeenCaStatus::default(),
            &health,
            None,
            None,
            &CaReport::Present(switch.clone()),
            now,
        )
        .unwrap();
        assert!(!write.ready_changed && write.rotation_changed);
        assert_eq!(write.patch["status"]["rotation"]["phase"], "Switch");
        assert_eq!(write.patch["status"]["conditions"][1]["type"], "CARotation");
        // Written once: the same again is nothing to write.
        let written: Vec<Condition> =
            serde_json::from_value(write.patch["status"]["conditions"].clone()).unwrap();
        let seen = SeenCaStatus::of(&write.patch);
        assert!(
            status_patch(
                &written,
                &seen,
                &health,
                None,
                None,
                &CaReport::Present(switch.clone()),
                now
            )
            .is_none()
        );
        // The rotation finished (removed from the spec): its condition and status go.
        let plain = CaStatus {
            rotation: None,
            condition: None,
            ..switch
        };
        // Unknown for now (the build failed): the status keeps what it says.
        assert!(status_patch(&written, &seen, &health, None, None, &CaReport::Keep, now).is_none());
        let write = status_patch(
            &written,
            &seen,
            &health,
            None,
            None,
            &CaReport::Present(plain),
            now,
        )
        .unwrap();
        assert!(write.rotation_changed);
        assert_eq!(write.patch["status"]["rotation"], serde_json::Value::Null);
        assert_eq!(
            write.patch["status"]["conditions"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
