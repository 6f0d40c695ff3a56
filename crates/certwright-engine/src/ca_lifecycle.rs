//! What the engine does for issuers whose backend holds its CA (the local CA, also in
//! rotation; [`Backend::ca_certificates`]):
//!
//! - **The issuance ledger.** Before each signature, `status.issued` must say until when
//!   the certificates issued under the signing CA's trust anchor are valid, at least
//!   until the new one's `notAfter`: [`Recorded`] wraps the backend and asks the
//!   [`Ledger`] first. A record is rounded up ([`slack`]), so that a steady flow of
//!   requests writes the status about once an hour, and it is written before the
//!   signature (and checked again after the write), so that neither a crash nor a slow
//!   write leaves a certificate beyond its record. Records are read back from the
//!   status, merged (the later `notAfter` wins) and written with a resourceVersion
//!   precondition, so they never go backwards.
//! - **The CA status**: `status.trustBundle` (the backend's trust anchors plus every
//!   anchor with a live record: a root is never dropped while certificates under it
//!   are valid, whatever the spec says), `status.rotation` and the `CARotation`
//!   condition ([`ca_status`]), written with the Ready condition. A rotation's `Retire`
//!   waits for the current anchor's record ([`LedgerView`], read live by the backend).
//! - **The bundle ConfigMap** named in `spec.ca.bundleConfigMap` ([`bundle_config_map`]).
//!
//! The decisions (`plan_records`, `ca_status`, `bundle_config_map`) are pure, with their
//! tests beside them; `Ledger::reserve` and the engine's issuer reconcile perform them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use certwright_api::{
    Condition, ConditionStatus, IssuedRecord, RotationPhase as ApiPhase, RotationStatus,
};
use certwright_pki::{
    Backend, CaCertificates, Error as PkiError, Health, IssuanceRecords, Outcome, Recovery,
    RotationPhase, SignRequest,
};
use certwright_x509::Certificate;
use jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::issuers::IssuerKey;

/// The condition type that reports a CA rotation.
pub(crate) const CONDITION_CA_ROTATION: &str = "CARotation";
/// Label on the ConfigMaps certwright keeps.
pub(crate) const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "certwright");
/// Annotation naming the issuer a bundle ConfigMap belongs to.
pub(crate) const BUNDLE_OF: &str = "pki.certwright.io/trust-bundle-of";
/// The ConfigMap key of the trust bundle, as trust-manager and cert-manager name it.
pub(crate) const BUNDLE_KEY: &str = "ca.crt";
/// Most CA records an issuer keeps (the schema's bound): one per CA whose certificates
/// are still valid.
const MAX_RECORDS: usize = 32;

/// How far a record is rounded up beyond what a signature needs: an eighth of the
/// certificate's lifetime, between five seconds and one hour. A flow of 90-day
/// certificates writes the status about once an hour; an issuer of second-long
/// certificates at most every five seconds.
pub(crate) fn slack(lifetime: Duration) -> Duration {
    (lifetime / 8).clamp(Duration::from_secs(5), Duration::from_secs(3600))
}

/// Longest subject kept in a record (the schema's bound).
const SUBJECT_MAX: usize = 1024;

/// The records to write so that `anchor` is recorded until at least `need` (and no
/// further than `cap`, the signing CA's own expiry), or `None` when `records` already
/// say so. Records whose certificates have all expired are dropped.
pub(crate) fn plan_records(
    records: &[IssuedRecord],
    anchor: &Certificate,
    need: Timestamp,
    cap: Timestamp,
    lifetime: Duration,
    now: Timestamp,
) -> Result<Option<Vec<IssuedRecord>>, String> {
    let fingerprint = anchor.fingerprint_hex();
    if records
        .iter()
        .any(|r| r.ca == fingerprint && r.not_after >= need)
    {
        return Ok(None);
    }
    let ca_not_after = cap;
    let padded = need
        .checked_add(jiff::SignedDuration::try_from(slack(lifetime)).unwrap_or_default())
        .unwrap_or(need);
    // Whole seconds, up: what people read, and what a certificate's notAfter holds.
    let padded =
        Timestamp::from_second(padded.as_second() + i64::from(padded.subsec_nanosecond() > 0))
            .unwrap_or(padded);
    let rounded = padded.min(ca_not_after.max(need));
    let mut out: Vec<IssuedRecord> = records
        .iter()
        .filter(|r| r.ca != fingerprint && r.not_after > now)
        .cloned()
        .collect();
    if out.len() >= MAX_RECORDS {
        return Err(format!(
            "the issuer records {} CAs whose certificates are still valid, the most it keeps",
            out.len()
        ));
    }
    let mut subject = anchor.subject().to_string();
    if subject.len() > SUBJECT_MAX {
        let mut end = SUBJECT_MAX;
        while !subject.is_char_boundary(end) {
            end -= 1;
        }
        subject.truncate(end);
    }
    out.push(IssuedRecord {
        ca: fingerprint,
        subject,
        certificate: anchor.to_pem(),
        not_after: rounded,
    });
    out.sort_by(|a, b| a.ca.cmp(&b.ca));
    Ok(Some(out))
}

/// `theirs` merged into `ours`: per anchor, the later `notAfter`.
pub(crate) fn merge_records(ours: &mut Vec<IssuedRecord>, theirs: &[IssuedRecord]) {
    for record in theirs {
        match ours.iter_mut().find(|r| r.ca == record.ca) {
            Some(mine) if mine.not_after >= record.not_after => {}
            Some(mine) => *mine = record.clone(),
            None => ours.push(record.clone()),
        }
    }
    ours.sort_by(|a, b| a.ca.cmp(&b.ca));
}

/// The trust anchors of the live records (`notAfter` after `now`), from their PEM.
pub(crate) fn recorded_anchors(records: &[IssuedRecord], now: Timestamp) -> Vec<Certificate> {
    records
        .iter()
        .filter(|r| r.not_after > now)
        .filter_map(|r| {
            let mut certs = certwright_x509::parse_pem_bundle(r.certificate.as_bytes()).ok()?;
            // The anchor the record names, and only it.
            (certs.len() == 1 && certs[0].fingerprint_hex() == r.ca).then(|| certs.remove(0))
        })
        .collect()
}

/// Where an issuer's status is written.
#[derive(Clone)]
pub(crate) struct StatusTarget {
    pub(crate) api: Api<kube::core::DynamicObject>,
    pub(crate) key: IssuerKey,
}

/// The issuance records of every issuer, as last written or read, and one writer per
/// issuer.
#[derive(Default)]
pub(crate) struct Ledger {
    records: Mutex<HashMap<IssuerKey, Vec<IssuedRecord>>>,
    writers: Mutex<HashMap<IssuerKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl Ledger {
    /// Merges the records read from an issuer's status into the engine's own (the later
    /// `notAfter` of each anchor wins).
    pub(crate) fn seed(&self, key: &IssuerKey, records: &[IssuedRecord]) {
        merge_records(lock(&self.records).entry(key.clone()).or_default(), records);
    }

    /// The records of `key`, read live, for a backend to ask.
    pub(crate) fn view(self: &Arc<Self>, key: &IssuerKey) -> Arc<dyn IssuanceRecords> {
        Arc::new(LedgerView {
            ledger: self.clone(),
            key: key.clone(),
        })
    }

    /// The records of `key`.
    /// Until when the certificates issued under an anchor for `key` are recorded as
    /// valid: on every signature, so without copying the records.
    fn until(&self, key: &IssuerKey, anchor_fingerprint: &str) -> Option<Timestamp> {
        lock(&self.records)
            .get(key)?
            .iter()
            .filter(|r| r.ca == anchor_fingerprint)
            .map(|r| r.not_after)
            .max()
    }

    pub(crate) fn records(&self, key: &IssuerKey) -> Vec<IssuedRecord> {
        lock(&self.records).get(key).cloned().unwrap_or_default()
    }

    pub(crate) fn forget(&self, key: &IssuerKey) {
        lock(&self.records).remove(key);
        lock(&self.writers).remove(key);
    }

    /// Makes sure the issuer's status records `anchor` until `need` before a signature:
    /// the status is read (records another writer made are merged in), and written with
    /// its resourceVersion as a precondition, again on a conflict.
    async fn reserve(
        &self,
        target: &StatusTarget,
        anchor: &Certificate,
        need: Timestamp,
        cap: Timestamp,
        lifetime: Duration,
    ) -> Result<(), PkiError> {
        let plan = |records: &[IssuedRecord]| {
            plan_records(records, anchor, need, cap, lifetime, Timestamp::now())
                .map_err(PkiError::misconfigured)
        };
        let fingerprint = anchor.fingerprint_hex();
        let covered = || {
            self.until(&target.key, &fingerprint)
                .is_some_and(|u| u >= need)
        };
        if covered() {
            return Ok(());
        }
        let writer = lock(&self.writers)
            .entry(target.key.clone())
            .or_default()
            .clone();
        let _one_writer = writer.lock().await;
        // Another signature may have written it while this one waited.
        if covered() {
            return Ok(());
        }
        let failed = |e: kube::Error| PkiError::Transient {
            message: format!(
                "could not record in the issuer's status until when certificates under \
                 \"{}\" are valid, which comes before signing ({e})",
                anchor.subject()
            ),
            source: None,
        };
        for _ in 0..3 {
            let current = target.api.get(&target.key.name).await.map_err(failed)?;
            if let Some(theirs) = current
                .data
                .pointer("/status/issued")
                .and_then(|r| serde_json::from_value::<Vec<IssuedRecord>>(r.clone()).ok())
            {
                self.seed(&target.key, &theirs);
            }
            let Some(records) = plan(&self.records(&target.key))? else {
                return Ok(());
            };
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": current.metadata.resource_version },
                "status": { "issued": records },
            });
            match target
                .api
                .patch_status(
                    &target.key.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    lock(&self.records).insert(target.key.clone(), records);
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(failed(e)),
            }
        }
        Err(PkiError::Transient {
            message: "the issuer's status kept changing while its issuance record was \
                      written; retrying"
                .to_string(),
            source: None,
        })
    }
}

/// One issuer's records in the [`Ledger`], as a backend asks for them.
#[derive(Debug)]
pub(crate) struct LedgerView {
    ledger: Arc<Ledger>,
    key: IssuerKey,
}

impl IssuanceRecords for LedgerView {
    fn issued_until(&self, anchor_fingerprint: &str) -> Option<SystemTime> {
        self.ledger
            .until(&self.key, anchor_fingerprint)
            .map(SystemTime::from)
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

/// A backend that holds its CA, whose signatures the [`Ledger`] records first.
pub(crate) struct Recorded {
    inner: Arc<dyn Backend>,
    ledger: Arc<Ledger>,
    target: StatusTarget,
    /// The issuer's lifetime for requests that name none.
    default_duration: Duration,
}

impl Recorded {
    pub(crate) fn new(
        inner: Arc<dyn Backend>,
        ledger: Arc<Ledger>,
        target: StatusTarget,
        default_duration: Duration,
    ) -> Recorded {
        Recorded {
            inner,
            ledger,
            target,
            default_duration,
        }
    }
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Backend for Recorded {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn sign(&self, request: &SignRequest) -> Result<Outcome, PkiError> {
        let lifetime = request.duration.unwrap_or(self.default_duration);
        // The record must reach past the certificate's notAfter, counted from when it
        // is signed: after a slow write, look again (the rounding usually covers it).
        for _ in 0..3 {
            let Some(certificates) = self.inner.ca_certificates() else {
                return self.inner.sign(request).await;
            };
            let cap = certificates.signing.not_after();
            let need = || {
                Timestamp::now()
                    .checked_add(jiff::SignedDuration::try_from(lifetime).unwrap_or_default())
                    .unwrap_or(Timestamp::MAX)
                    .min(cap)
            };
            let anchor = certificates.signing_anchor;
            self.ledger
                .reserve(&self.target, &anchor, need(), cap, lifetime)
                .await?;
            let covered = self
                .ledger
                .until(&self.target.key, &anchor.fingerprint_hex())
                .is_some_and(|until| until >= need());
            if covered {
                return self.inner.sign(request).await;
            }
        }
        Err(PkiError::Transient {
            message: "the issuance record could not be written ahead of the signature in time; \
                      retrying"
                .to_string(),
            source: None,
        })
    }

    async fn poll(&self, pending_id: &str, request: &SignRequest) -> Result<Outcome, PkiError> {
        self.inner.poll(pending_id, request).await
    }

    async fn check(&self) -> Result<Health, PkiError> {
        self.inner.check().await
    }

    fn ca_expiry(&self) -> Option<SystemTime> {
        self.inner.ca_expiry()
    }

    async fn recover(
        &self,
        request: &SignRequest,
        submitted: SystemTime,
    ) -> Result<Recovery, PkiError> {
        self.inner.recover(request, submitted).await
    }

    fn ca_certificates(&self) -> Option<CaCertificates> {
        self.inner.ca_certificates()
    }
}

/// What an issuer's status should say of its CA.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CaStatus {
    /// `status.trustBundle`.
    pub(crate) trust_bundle: String,
    /// `status.rotation`.
    pub(crate) rotation: Option<RotationStatus>,
    /// The `CARotation` condition; `None` removes it.
    pub(crate) condition: Option<Condition>,
    /// Whether the condition is a warning (Retire refused).
    pub(crate) warns: bool,
}

fn api_phase(phase: RotationPhase) -> ApiPhase {
    match phase {
        RotationPhase::Distribute => ApiPhase::Distribute,
        RotationPhase::Switch => ApiPhase::Switch,
        _ => ApiPhase::Retire,
    }
}

/// The CA status of a backend's certificates: the trust bundle, and for a rotation its
/// phase and a `CARotation` condition whose reason is the phase in effect and whose
/// message says what happens now and what the operator does next.
pub(crate) fn ca_status(
    certificates: &CaCertificates,
    records: &[IssuedRecord],
    next_secret: Option<&str>,
    generation: Option<i64>,
    now: Timestamp,
) -> CaStatus {
    let trust_bundle = certwright_x509::certificates_to_pem(&trust(certificates, records, now));
    let Some(rotation) = &certificates.rotation else {
        return CaStatus {
            trust_bundle,
            rotation: None,
            condition: None,
            warns: false,
        };
    };
    let current = format!("\"{}\"", rotation.current.subject());
    let next = format!("\"{}\"", rotation.next.subject());
    let until = rotation
        .current_issued_until
        .and_then(|t| Timestamp::try_from(t).ok());
    let expiry = match until {
        Some(at) => format!("certificates signed by the current CA {current} are valid until {at}"),
        None => format!("certwright recorded no certificate signed by the current CA {current}"),
    };
    let held =
        rotation.requested == RotationPhase::Retire && rotation.phase != RotationPhase::Retire;
    let message = match rotation.phase {
        RotationPhase::Distribute => format!(
            "The current CA {current} signs; the trust bundle holds both roots. Next: once \
             every relying party trusts the next CA {next} (the bundle has reached them), set \
             spec.ca.rotation.phase to Switch."
        ),
        RotationPhase::Switch if held => format!(
            "Retire is refused while {expiry}: the next CA {next} signs and both roots stay \
             in the trust bundle until then, when Retire takes effect by itself."
        ),
        RotationPhase::Switch => format!(
            "The next CA {next} signs; the trust bundle holds both roots; {expiry}. Next: \
             after that, set spec.ca.rotation.phase to Retire."
        ),
        _ => format!(
            "The next CA {next} signs and the trust bundle holds its root alone. Next: set \
             spec.ca.secretName to {} and remove spec.ca.rotation.",
            next_secret.map_or_else(|| "the next CA's Secret".to_string(), |s| format!("{s:?}"))
        ),
    };
    let phase = api_phase(rotation.phase);
    CaStatus {
        trust_bundle,
        rotation: Some(RotationStatus {
            phase,
            retire_after: until,
        }),
        condition: Some(
            Condition::new(
                CONDITION_CA_ROTATION,
                if held {
                    ConditionStatus::False
                } else {
                    ConditionStatus::True
                },
                phase.as_str(),
                message,
            )
            .with_observed_generation(generation),
        ),
        warns: held,
    }
}

/// What relying parties must trust: the backend's anchors, then every anchor that
/// certificates still valid were issued under (by the records), each once.
pub(crate) fn trust(
    certificates: &CaCertificates,
    records: &[IssuedRecord],
    now: Timestamp,
) -> Vec<Certificate> {
    let mut trust = certificates.trust.clone();
    for anchor in recorded_anchors(records, now) {
        if !trust.contains(&anchor) {
            trust.push(anchor);
        }
    }
    trust
}

/// The Event reason of a rotation condition: `CARotationDistribute`, `CARotationSwitch`,
/// `CARotationRetire`, or `CARotationRetireRefused`.
pub(crate) fn rotation_event_reason(status: &CaStatus) -> &'static str {
    match (&status.rotation, status.warns) {
        (_, true) => "CARotationRetireRefused",
        (Some(r), _) if r.phase == ApiPhase::Distribute => "CARotationDistribute",
        (Some(r), _) if r.phase == ApiPhase::Switch => "CARotationSwitch",
        _ => "CARotationRetire",
    }
}

/// What to do with a bundle ConfigMap.
#[derive(Debug, PartialEq)]
pub(crate) enum BundleWrite {
    /// It holds the bundle already.
    Nothing,
    /// Create it, or write the bundle into the one certwright made for this issuer.
    Write(serde_json::Value),
    /// Someone else's ConfigMap is there: left alone, and said why.
    NotOurs(String),
}

/// What to write to the ConfigMap `name` (as it is, `existing`) so that it carries
/// `bundle` for `issuer` (the `kind/namespace/name` it is annotated with).
pub(crate) fn bundle_config_map(
    name: &str,
    namespace: &str,
    issuer: &str,
    bundle: &str,
    existing: Option<&k8s_openapi::api::core::v1::ConfigMap>,
) -> BundleWrite {
    if let Some(existing) = existing {
        let owner = existing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(BUNDLE_OF));
        if owner.map(String::as_str) != Some(issuer) {
            return BundleWrite::NotOurs(format!(
                "ConfigMap {namespace}/{name} (spec.ca.bundleConfigMap) exists and was not made \
                 by certwright for {issuer}: the trust bundle is not written to it"
            ));
        }
        let current = existing.data.as_ref().and_then(|d| d.get(BUNDLE_KEY));
        if current.map(String::as_str) == Some(bundle) {
            return BundleWrite::Nothing;
        }
    }
    BundleWrite::Write(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { MANAGED_BY.0: MANAGED_BY.1 },
            "annotations": { BUNDLE_OF: issuer },
        },
        "data": { BUNDLE_KEY: bundle },
    }))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use certwright_testkit::fixtures::{KeyKind, TestCa};

    fn ca(name: &str) -> Certificate {
        Certificate::from_der(&TestCa::root(KeyKind::EcdsaP256, name).cert().cert_der).unwrap()
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn a_record_is_written_ahead_rounded_up_and_then_covers_a_steady_flow() {
        let old = ca("Old");
        let now = at(1_800_000_000);
        let day = Duration::from_secs(86_400);
        let need = at(1_800_086_400);
        let records = plan_records(&[], &old, need, old.not_after(), day, now)
            .unwrap()
            .unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].ca, old.fingerprint_hex());
        // An hour ahead: a day's eighth is more than the one-hour cap.
        assert_eq!(records[0].not_after, at(1_800_090_000));
        // The next requests within that hour need no write.
        assert_eq!(
            plan_records(&records, &old, at(1_800_089_999), old.not_after(), day, now).unwrap(),
            None
        );
        assert!(
            plan_records(&records, &old, at(1_800_090_001), old.not_after(), day, now)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn records_of_expired_certificates_go_and_others_stay() {
        let (old, new, gone) = (ca("Old"), ca("New"), ca("Gone"));
        let now = at(1_800_000_000);
        let records = vec![
            IssuedRecord {
                ca: gone.fingerprint_hex(),
                subject: "CN=Gone".into(),
                certificate: gone.to_pem(),
                not_after: at(1_799_999_999),
            },
            IssuedRecord {
                ca: old.fingerprint_hex(),
                subject: "CN=Old".into(),
                certificate: String::new(),
                not_after: at(1_800_003_600),
            },
        ];
        let out = plan_records(
            &records,
            &new,
            at(1_800_000_010),
            new.not_after(),
            Duration::from_secs(10),
            now,
        )
        .unwrap()
        .unwrap();
        let kept: Vec<&str> = out.iter().map(|r| r.subject.as_str()).collect();
        assert!(
            kept.contains(&"CN=Old") && kept.contains(&"CN=New"),
            "{kept:?}"
        );
        assert!(!kept.contains(&"CN=Gone"));
        // A ten-second certificate is padded by the five-second floor.
        let new_record = out.iter().find(|r| r.subject == "CN=New").unwrap();
        assert_eq!(new_record.not_after, at(1_800_000_015));
        assert_eq!(
            recorded_anchors(&out, now),
            vec![new.clone()],
            "the old record has no certificate to publish; the new one has"
        );
        let ledger = Arc::new(Ledger::default());
        let key = IssuerKey {
            cluster: true,
            namespace: String::new(),
            name: "corp".into(),
        };
        ledger.seed(&key, &out);
        assert_eq!(
            ledger.view(&key).issued_until(&old.fingerprint_hex()),
            Some(SystemTime::from(at(1_800_003_600)))
        );
    }

    #[test]
    fn slack_is_an_eighth_of_the_lifetime_within_a_second_and_an_hour() {
        assert_eq!(slack(Duration::from_secs(4)), Duration::from_secs(5));
        assert_eq!(slack(Duration::from_secs(800)), Duration::from_secs(100));
        assert_eq!(
            slack(Duration::from_secs(90 * 86_400)),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn only_a_configmap_made_for_this_issuer_is_written() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let issuer = "InternalClusterIssuer/corp";
        let write = bundle_config_map("trust", "cert-manager", issuer, "PEM", None);
        let BundleWrite::Write(object) = write else {
            panic!("absent: create it");
        };
        assert_eq!(object["metadata"]["annotations"][BUNDLE_OF], issuer);
        assert_eq!(object["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
        assert_eq!(object["data"][BUNDLE_KEY], "PEM");
        let ours: ConfigMap = serde_json::from_value(object).unwrap();
        assert_eq!(
            bundle_config_map("trust", "cert-manager", issuer, "PEM", Some(&ours)),
            BundleWrite::Nothing
        );
        assert!(matches!(
            bundle_config_map("trust", "cert-manager", issuer, "PEM2", Some(&ours)),
            BundleWrite::Write(_)
        ));
        assert!(matches!(
            bundle_config_map(
                "trust",
                "cert-manager",
                "InternalClusterIssuer/other",
                "PEM",
                Some(&ours)
            ),
            BundleWrite::NotOurs(_)
        ));
        let theirs = ConfigMap::default();
        assert!(matches!(
            bundle_config_map("trust", "cert-manager", issuer, "PEM", Some(&theirs)),
            BundleWrite::NotOurs(_)
        ));
    }

    #[test]
    fn a_held_retire_says_until_when_and_warns() {
        let (old, new) = (ca("Old"), ca("New"));
        let until = SystemTime::from(at(1_900_000_000));
        let mut certificates =
            CaCertificates::new(new.clone(), new.clone(), vec![old.clone(), new.clone()]);
        certificates.rotation = Some(certwright_pki::RotationState::new(
            RotationPhase::Retire,
            RotationPhase::Switch,
            old,
            Some(until),
            new,
        ));
        let status = ca_status(
            &certificates,
            &[],
            Some("ca-new"),
            Some(3),
            at(1_800_000_000),
        );
        assert!(status.warns);
        let condition = status.condition.as_ref().unwrap();
        assert_eq!(condition.status, ConditionStatus::False);
        assert_eq!(condition.reason, "Switch");
        assert!(
            condition.message.contains("until 2030-03-17T17:46:40Z"),
            "{}",
            condition.message
        );
        assert_eq!(rotation_event_reason(&status), "CARotationRetireRefused");
        assert_eq!(
            status.rotation.unwrap().retire_after,
            Some(at(1_900_000_000))
        );
    }
}
