//! One call to the PKI for one request, shared by the CertificateRequest and the
//! Kubernetes CSR loops: poll a pending id; or, when a submission is recorded on the
//! object without its answer, ask the backend what became of it; or record the
//! submission on the object (its resourceVersion a precondition) and submit.
//!
//! The record is the annotation [`SUBMITTED_ANNOTATION`]. The idempotency key a
//! submission goes under ([`submission_key`]) names the object (`<namespace>/<name>/<uid>`)
//! and is kept in [`SUBMISSION_KEY_ANNOTATION`]: a request restored from a backup has a
//! new uid, and is recovered, polled and sent again under the recorded key
//! ([`recorded_key`]), which is honoured only when it names this object, so that nobody
//! can claim another object's key by writing the annotation. [`clears_record`] says when an
//! answer lets it go: only when the CA certainly keeps nothing of the submission, or
//! holds it under the pending id written in the same patch.

use std::time::SystemTime;

use certwright_api::{PENDING_ID_ANNOTATION, SUBMISSION_KEY_ANNOTATION, SUBMITTED_ANNOTATION};
use certwright_pki::{Backend, Error as PkiError, Outcome, Recovery, SignRequest};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::requests::decide::Attempt;

/// What one call came to.
pub(crate) enum Step {
    /// The PKI answered (or failed to) `operation`: `sign`, `poll` or `recover`.
    Answered {
        operation: &'static str,
        result: Result<Outcome, PkiError>,
    },
    /// Decided without an answer to write: the fate of a recorded submission cannot be
    /// learnt, or must be asked again later.
    Concluded(Attempt),
    /// The engine is stopping: nothing was submitted.
    Stopped,
    /// The submission could not be recorded, so nothing was submitted.
    NotRecorded(kube::Error),
}

/// The annotation's value, when set and not empty.
fn annotation<K: Resource>(obj: &K, key: &str) -> Option<String> {
    obj.annotations()
        .get(key)
        .filter(|v| !v.is_empty())
        .cloned()
}

/// When a submission of `obj` was recorded, if one was. A value that is not a time
/// (edited by hand) counts as recorded at the object's creation, the earliest it could
/// have been.
pub(crate) fn submitted_at<K: Resource>(obj: &K) -> Option<SystemTime> {
    let value = annotation(obj, SUBMITTED_ANNOTATION)?;
    let at = value
        .parse::<jiff::Timestamp>()
        .ok()
        .or_else(|| obj.meta().creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    Some(SystemTime::from(at))
}

/// Failed attempts after which a recorded submission whose fate the CA will not tell
/// (its search keeps failing) is given up, as one that cannot be asked.
pub(crate) const MAX_RECOVERY_ATTEMPTS: u32 = 10;

/// Polls, recovers or submits `request` for the object `full`, which is updated when the
/// submission is recorded on it. `attempts` counts the request's failed attempts so
/// far; `next` says what the operator does when a recorded submission cannot be
/// recovered (create a new request).
pub(crate) async fn perform<K>(
    api: &Api<K>,
    full: &mut K,
    backend: &dyn Backend,
    request: &SignRequest,
    stopping: &CancellationToken,
    attempts: u32,
    next: &str,
) -> Step
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    // What this object was submitted under is what it is polled, recovered and sent
    // again under; a first submission goes under a key naming the object.
    let key = recorded_key(full).unwrap_or_else(|| {
        let earlier =
            annotation(full, PENDING_ID_ANNOTATION).is_some() || submitted_at(full).is_some();
        if earlier {
            // Submitted before keys named the object: under its uid.
            request.idempotency_key.clone()
        } else {
            submission_key(full)
        }
    });
    let rekeyed;
    let request = if key == request.idempotency_key {
        request
    } else {
        rekeyed = SignRequest {
            idempotency_key: key,
            ..request.clone()
        };
        &rekeyed
    };
    if let Some(id) = annotation(full, PENDING_ID_ANNOTATION) {
        return Step::Answered {
            operation: "poll",
            result: backend.poll(&id, request).await,
        };
    }
    if let Some(at) = submitted_at(full) {
        match backend.recover(request, at).await {
            Ok(Recovery::Found(outcome)) => {
                return Step::Answered {
                    operation: "recover",
                    result: Ok(outcome),
                };
            }
            Ok(Recovery::SubmitAgain) => {}
            Ok(Recovery::NotYet { retry_after }) => {
                return Step::Concluded(Attempt::Recovering(retry_after));
            }
            Ok(_) => {
                return Step::Concluded(Attempt::Unrecoverable(unrecoverable(
                    at,
                    &format!(
                        "the {} backend cannot ask the CA what became of it",
                        backend.kind()
                    ),
                    next,
                )));
            }
            Err(e) if attempts >= MAX_RECOVERY_ATTEMPTS => {
                return Step::Concluded(Attempt::Unrecoverable(unrecoverable(
                    at,
                    &format!("asking the CA what became of it failed {attempts} times ({e})"),
                    next,
                )));
            }
            Err(e) => {
                return Step::Answered {
                    operation: "recover",
                    result: Err(e),
                };
            }
        }
        // The search took time: stopping may have begun meanwhile.
        if stopping.is_cancelled() {
            return Step::Stopped;
        }
    }
    match record(api, full, &request.idempotency_key).await {
        Ok(recorded) => *full = recorded,
        Err(e) => return Step::NotRecorded(e),
    }
    Step::Answered {
        operation: "sign",
        result: backend.sign(request).await,
    }
}

/// Why a recorded submission is given up, and what the operator should do.
fn unrecoverable(at: SystemTime, why: &str, next: &str) -> String {
    let at = jiff::Timestamp::try_from(at)
        .map(|t| format!(" at {t}"))
        .unwrap_or_default();
    format!(
        "A submission of this request may have reached the CA{at} (annotation \
         {SUBMITTED_ANNOTATION}) and its answer never arrived; {why}, so the request is not \
         submitted again. Look for a certificate for it on the CA (revoke it if unwanted); \
         {next}"
    )
}

/// The idempotency key of a first submission of `obj`: `<namespace>/<name>/<uid>`
/// (namespace empty for a cluster-scoped object). Two objects never share it, and it
/// survives nothing but the object itself: recorded in [`SUBMISSION_KEY_ANNOTATION`].
pub(crate) fn submission_key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
        obj.uid().unwrap_or_default()
    )
}

/// The key recorded on `obj` ([`SUBMISSION_KEY_ANNOTATION`]), when it names this object
/// (its namespace and name; the uid may be an earlier one, before a restore). A key
/// naming another object is ignored: it was written by hand, to claim another
/// request's answers.
pub(crate) fn recorded_key<K: Resource>(obj: &K) -> Option<String> {
    let key = annotation(obj, SUBMISSION_KEY_ANNOTATION)?;
    let prefix = format!(
        "{}/{}/",
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    );
    let uid = key.strip_prefix(&prefix)?;
    (!uid.is_empty() && !uid.contains('/')).then_some(key)
}

/// Records on the object, before the request leaves, that a submission is under way,
/// with its resourceVersion as a precondition: of two controllers that read the same
/// version (a lost lease), only one submits.
async fn record<K>(api: &Api<K>, full: &K, key: &str) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let now = certwright_api::condition::whole_seconds(jiff::Timestamp::now());
    let patch = json!({
        "metadata": {
            "resourceVersion": full.resource_version(),
            "annotations": {
                SUBMITTED_ANNOTATION: now.to_string(),
                SUBMISSION_KEY_ANNOTATION: key,
            }
        }
    });
    api.patch(
        &full.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// Whether an answer lets the record of the submission go: the CA certainly keeps
/// nothing of it (nothing reached it, it refused the credentials, it asked to slow
/// down), or holds it under the pending id written with the clearing. Any answer after
/// which the CA may hold a certificate keeps it (a lost or unreadable answer, a final
/// refusal whose status may not be written before the process stops).
pub(crate) fn clears_record(
    operation: &str,
    result: &Result<Outcome, PkiError>,
    terminal: bool,
) -> bool {
    if terminal {
        return false;
    }
    match (operation, result) {
        ("sign" | "recover", Ok(Outcome::Pending(_))) => true,
        ("sign", Err(e)) => matches!(
            e,
            PkiError::Transient { .. }
                | PkiError::RateLimited { .. }
                | PkiError::Unauthorized { .. }
        ),
        _ => false,
    }
}

/// The annotations a result writes before its status: the CA's pending id, and the
/// record of the submission removed when `clear`. `None` when nothing changes.
pub(crate) fn annotations_patch<K: Resource>(
    full: &K,
    pending_id: Option<&String>,
    clear: bool,
) -> Option<serde_json::Value> {
    let mut annotations = serde_json::Map::new();
    if let Some(id) = pending_id
        && full.annotations().get(PENDING_ID_ANNOTATION) != Some(id)
    {
        annotations.insert(PENDING_ID_ANNOTATION.into(), json!(id));
    }
    // The key stays: a pending id is polled under it, after a restore too.
    if clear && full.annotations().contains_key(SUBMITTED_ANNOTATION) {
        annotations.insert(SUBMITTED_ANNOTATION.into(), serde_json::Value::Null);
    }
    (!annotations.is_empty()).then(|| {
        json!({
            "metadata": {
                "resourceVersion": full.resource_version(),
                "annotations": annotations,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use certwright_pki::PendingRequest;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn pending() -> Result<Outcome, PkiError> {
        Ok(Outcome::Pending(PendingRequest {
            id: "7".into(),
            retry_after: std::time::Duration::from_secs(1),
        }))
    }

    #[test]
    fn only_answers_that_prove_nothing_is_kept_clear_the_record() {
        let transient = || Err(PkiError::transient("refused", std::io::Error::other("x")));
        assert!(clears_record("sign", &pending(), false));
        assert!(clears_record("recover", &pending(), false));
        assert!(clears_record("sign", &transient(), false));
        assert!(clears_record(
            "sign",
            &Err(PkiError::Unauthorized {
                message: "401".into()
            }),
            false
        ));
        for kept in [
            Err(PkiError::AnswerLost {
                message: "reset".into(),
            }),
            Err(PkiError::misconfigured("signed but unreadable")),
            Err(PkiError::InvalidResponse {
                message: "oversized".into(),
            }),
        ] {
            assert!(!clears_record("sign", &kept, false));
        }
        // A failed search keeps it; so does any final answer.
        assert!(!clears_record("recover", &transient(), false));
        assert!(!clears_record("sign", &transient(), true));
        assert!(!clears_record("poll", &pending(), false));
    }

    #[test]
    fn the_record_reads_as_a_time_or_as_the_creation() {
        let mut obj = ConfigMap::default();
        assert!(submitted_at(&obj).is_none());
        obj.metadata.annotations = Some(
            [(
                SUBMITTED_ANNOTATION.to_string(),
                "2026-01-02T03:04:05Z".to_string(),
            )]
            .into(),
        );
        let at = jiff::Timestamp::try_from(submitted_at(&obj).unwrap()).unwrap();
        assert_eq!(at.to_string(), "2026-01-02T03:04:05Z");
        obj.metadata.annotations =
            Some([(SUBMITTED_ANNOTATION.to_string(), "garbage".to_string())].into());
        obj.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(1_000).unwrap(),
            ));
        let at = jiff::Timestamp::try_from(submitted_at(&obj).unwrap()).unwrap();
        assert_eq!(at.as_second(), 1_000);
    }

    #[test]
    fn the_patch_writes_the_id_and_clears_the_record_together() {
        let mut obj = ConfigMap::default();
        obj.metadata.resource_version = Some("5".into());
        obj.metadata.annotations = Some(
            [
                (
                    SUBMITTED_ANNOTATION.to_string(),
                    "2026-01-02T03:04:05Z".to_string(),
                ),
                (SUBMISSION_KEY_ANNOTATION.to_string(), "uid-0".to_string()),
            ]
            .into(),
        );
        let patch = annotations_patch(&obj, Some(&"42".to_string()), true).unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "5");
        assert_eq!(
            patch["metadata"]["annotations"][PENDING_ID_ANNOTATION],
            "42"
        );
        assert!(patch["metadata"]["annotations"][SUBMITTED_ANNOTATION].is_null());
        // The key stays beside the pending id, which is polled under it.
        assert!(
            patch["metadata"]["annotations"]
                .get(SUBMISSION_KEY_ANNOTATION)
                .is_none()
        );
        assert!(annotations_patch(&obj, None, false).is_none());
    }

    #[test]
    fn a_recorded_key_counts_only_when_it_names_the_object() {
        let mut obj = ConfigMap::default();
        obj.metadata.namespace = Some("apps".into());
        obj.metadata.name = Some("web".into());
        obj.metadata.uid = Some("uid-2".into());
        assert_eq!(submission_key(&obj), "apps/web/uid-2");
        assert_eq!(recorded_key(&obj), None);
        let with = |key: &str| {
            let mut obj = obj.clone();
            obj.metadata.annotations =
                Some([(SUBMISSION_KEY_ANNOTATION.to_string(), key.to_string())].into());
            recorded_key(&obj)
        };
        // Its own, from before a restore (another uid): honoured.
        assert_eq!(with("apps/web/uid-1").as_deref(), Some("apps/web/uid-1"));
        // Another object's, or a bare uid: ignored.
        for foreign in [
            "other/web/uid-1",
            "apps/api/uid-1",
            "uid-1",
            "apps/web/",
            "apps/web/a/b",
        ] {
            assert_eq!(with(foreign), None, "{foreign}");
        }
    }
}
