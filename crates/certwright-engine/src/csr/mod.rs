//! The Kubernetes CSR loop: signs approved `certificates.k8s.io/v1`
//! CertificateSigningRequests whose `signerName` names an issuer of the engine's kinds,
//! through the same issuers, PKI protection and exactly-once rules as CertificateRequests.
//!
//! It runs on kube-runtime's `Controller` (its watcher, reflector store, scheduler and
//! concurrency limit) over a slim type ([`CachedCsr`]) that drops each CSR and
//! certificate while decoding, so the cache stays small however many CSRs the cluster
//! keeps. A CSR that has a certificate, failed or was denied is never looked at again.
//!
//! One look at a CSR, top to bottom: a result still unwritten from an earlier look is
//! written first; then [`plan::need`] decides from the cache; the issuer must be known
//! and usable and must sign CSRs; a namespaced issuer signs only for a requester who
//! may `reference` (or `use`) it; then the issuer's protection admits the call, the CSR is
//! read afresh, the submission is recorded on it (or a recorded one recovered, or a
//! pending id polled), and the answer is planned as for a CertificateRequest and written.

pub(crate) mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certwright_pki::Outcome;
use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use plan::CachedCsr;
use plan::{Change, Need, Signers};

use crate::controller::Shared;
use crate::decide::{Attempt, Plan, Requeue, plan as plan_of};
use crate::error::{Error, api_code};
use crate::events::Transition;
use crate::issuers::{IssuerEntry, IssuerKey};
use crate::metrics::RESOURCE_CSR;
use crate::submission::{self, Step};

/// How long a CSR whose issuer is missing or not usable waits before it is looked at
/// again.
const ISSUER_WAIT: Duration = Duration::from_secs(10);
/// Conflicting status writes retried before the result is kept for the next look.
const CONFLICT_RETRIES: usize = 5;

/// What the loop shares between looks.
struct Ctx {
    s: Arc<Shared>,
    signers: Signers,
    /// Results the PKI gave that could not be written yet, by CSR uid: written before
    /// anything else is done for that CSR, so a failed write never leads to a second
    /// submission.
    unwritten: Mutex<HashMap<String, Plan>>,
    /// The last event reason emitted per CSR uid, so a repeated retry is told once.
    told: Mutex<HashMap<String, &'static str>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the loop until `stop` is cancelled.
pub(crate) async fn run(s: Arc<Shared>, signers: Signers, stop: CancellationToken) {
    let api: Api<CachedCsr> = Api::all(s.client.clone());
    let concurrency = u16::try_from(s.config.max_concurrent_reconciles.max(1)).unwrap_or(u16::MAX);
    let ctx = Arc::new(Ctx {
        s,
        signers,
        unwritten: Mutex::default(),
        told: Mutex::default(),
    });
    info!("Kubernetes CSR loop started");
    Controller::new(api, watcher::Config::default())
        .with_config(Config::default().concurrency(concurrency))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "Kubernetes CSR look failed");
            }
        })
        .await;
}

fn error_policy(_csr: Arc<CachedCsr>, error: &Error, ctx: Arc<Ctx>) -> Action {
    warn!(error = %error, "Kubernetes CSR: retrying");
    Action::requeue(ctx.s.config.retry.max)
}

async fn reconcile(cached: Arc<CachedCsr>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let s = &ctx.s;
    let name = cached.name_any();
    let uid = cached.metadata.uid.clone().unwrap_or_default();
    let api: Api<CertificateSigningRequest> = Api::all(s.client.clone());
    // A PKI answer that could not be written yet goes first.
    let kept = lock(&ctx.unwritten).remove(&uid);
    if let Some(kept) = kept {
        return ctx.write(&api, &name, &uid, None, kept, false).await;
    }
    let key = match plan::need(&cached, &ctx.signers) {
        Need::Nothing => {
            lock(&ctx.told).remove(&uid);
            return Ok(Action::await_change());
        }
        Need::BadSigner(why) => {
            let change = Change::Fail {
                reason: plan::REASON_BAD_SIGNER,
                message: why,
            };
            return ctx.conclude(&api, &name, &uid, change).await;
        }
        Need::Sign(key) => key,
    };
    if !s.issuers_synced() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let entry = lock(&s.issuers).get(&key).cloned();
    let Some(entry) = entry.filter(|e| e.checked() && e.health().usable()) else {
        debug!(csr = %name, issuer = %s.issuer_label(&key), "waiting for the issuer");
        return Ok(Action::requeue(
            ISSUER_WAIT.min(s.config.retry.max.max(Duration::from_millis(200))),
        ));
    };
    if entry.spec.kubernetes_csr == Some(false) {
        let change = Change::Fail {
            reason: plan::REASON_SIGNER_DISABLED,
            message: format!(
                "{} does not sign Kubernetes CertificateSigningRequests (spec.kubernetesCSR: false)",
                s.issuer_label(&key)
            ),
        };
        return ctx.conclude(&api, &name, &uid, change).await;
    }
    ctx.attempt(&api, &name, &uid, key, entry).await
}

impl Ctx {
    /// Signs, polls or recovers one CSR through the issuer's protection, then writes the
    /// outcome.
    async fn attempt(
        &self,
        api: &Api<CertificateSigningRequest>,
        name: &str,
        uid: &str,
        issuer: IssuerKey,
        entry: Arc<IssuerEntry>,
    ) -> Result<Action, Error> {
        let s = &self.s;
        let label = s.issuer_label(&issuer);
        let Some(backend) = entry.backend.clone() else {
            return Ok(Action::requeue(ISSUER_WAIT));
        };
        let admitted = tokio::select! {
            admitted = entry.protection.admit() => admitted,
            _ = s.stopping.cancelled() => return Ok(Action::await_change()),
        };
        let permit = match admitted {
            Ok(permit) => permit,
            Err(deferred) => return Ok(Action::requeue(deferred.retry_after)),
        };
        let mut full = match api.get_opt(name).await {
            Ok(Some(full)) => full,
            Ok(None) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::kube("reading a CertificateSigningRequest", e)),
        };
        if full.metadata.uid.as_deref() != Some(uid) || plan::finished_full(&full) {
            return Ok(Action::await_change());
        }
        // A namespaced issuer signs only for requesters who may use it.
        if !issuer.cluster && !self.may_use(&full, &issuer).await? {
            let change = Change::Fail {
                reason: plan::REASON_NOT_PERMITTED,
                message: format!(
                    "{:?} may not use {}: grant it the verb \"reference\" on \"signers\" in \
                     API group {:?}, name {:?}, in namespace {:?}",
                    full.spec.username.as_deref().unwrap_or_default(),
                    label,
                    s.group,
                    issuer.name,
                    issuer.namespace
                ),
            };
            return self.conclude(api, name, uid, change).await;
        }
        let request = match plan::sign_request(&full) {
            Ok(request) => request,
            Err(why) => {
                let plan = plan_of(
                    Attempt::Invalid(why),
                    1,
                    s.config.retry,
                    s.poll_interval(&entry),
                );
                return self.write(api, name, uid, Some(full), plan, false).await;
            }
        };
        if s.stopping.is_cancelled() {
            return Ok(Action::await_change());
        }
        let started = std::time::Instant::now();
        let step = submission::perform(
            api,
            &mut full,
            backend.as_ref(),
            &request,
            &s.stopping,
            "create a new CertificateSigningRequest.",
        )
        .await;
        let (operation, result) = match step {
            Step::Answered { operation, result } => (operation, result),
            Step::Concluded(attempt) => {
                let plan = plan_of(attempt, 1, s.config.retry, s.poll_interval(&entry));
                return self.write(api, name, uid, Some(full), plan, false).await;
            }
            Step::Stopped => return Ok(Action::await_change()),
            Step::NotRecorded(e) => {
                return Err(Error::kube(
                    "recording the submission on a CertificateSigningRequest",
                    e,
                ));
            }
        };
        let outcome = match &result {
            Ok(Outcome::Issued(_)) => "success",
            Ok(_) => "pending",
            Err(e) => e.metric_label(),
        };
        s.metrics.observe_signing(
            &label,
            RESOURCE_CSR,
            outcome,
            started.elapsed().as_secs_f64(),
        );
        s.metrics
            .backend_call(&label, RESOURCE_CSR, backend.kind(), operation, outcome);
        let clears = submission::clears_record(operation, &result, false);
        let result = result.map_err(|e| entry.tellable(e));
        let plan = plan_of(
            Attempt::Answered(result),
            1,
            s.config.retry,
            s.poll_interval(&entry),
        )
        .with_requested_duration(request.duration);
        permit.record(plan.breaker);
        let plan = if plan.issuer_fault.is_some() {
            s.confirm_issuer_fault(&label, &entry, &backend, plan).await
        } else {
            plan
        };
        if let Some((reason, message)) = &plan.issuer_fault
            && entry.set_health(crate::issuers::Health {
                reason,
                message: message.clone(),
            })
        {
            s.write_issuer_status(&issuer, &entry).await;
        }
        let clear_submitted = clears && plan.requeue != Requeue::Never;
        self.write(api, name, uid, Some(full), plan, clear_submitted)
            .await
    }

    /// Whether the CSR's requester may use the namespaced issuer: a SubjectAccessReview
    /// for the verb `reference` (cert-manager's) or `use` on `signers` in the engine's
    /// API group, named after the issuer, in its namespace.
    async fn may_use(
        &self,
        csr: &CertificateSigningRequest,
        issuer: &IssuerKey,
    ) -> Result<bool, Error> {
        let api: Api<SubjectAccessReview> = Api::all(self.s.client.clone());
        for verb in ["reference", "use"] {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: csr.spec.username.clone(),
                    groups: csr.spec.groups.clone(),
                    uid: csr.spec.uid.clone(),
                    extra: csr.spec.extra.clone(),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(self.s.group.to_string()),
                        resource: Some("signers".to_string()),
                        verb: Some(verb.to_string()),
                        namespace: Some(issuer.namespace.clone()),
                        name: Some(issuer.name.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| {
                    Error::kube(
                        "asking whether the requester may use the issuer (SubjectAccessReview)",
                        e,
                    )
                })?;
            if answer.status.is_some_and(|s| s.allowed) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Fails a CSR for a reason found without calling the PKI.
    async fn conclude(
        &self,
        api: &Api<CertificateSigningRequest>,
        name: &str,
        uid: &str,
        change: Change,
    ) -> Result<Action, Error> {
        let Change::Fail { reason, message } = change else {
            return Ok(Action::await_change());
        };
        let plan = plan_of(
            Attempt::Unrecoverable(message),
            1,
            self.s.config.retry,
            self.s.config.max_poll_interval,
        );
        let plan = Plan {
            event: (reason, true),
            ..plan
        };
        self.write(api, name, uid, None, plan, false).await
    }

    /// Writes a plan onto the CSR: the pending id and the record of the submission
    /// first (on the object the call was made for), then the status (retrying
    /// conflicts without signing again); then the event and the metrics. A PKI answer
    /// that cannot be written is kept for the next look.
    async fn write(
        &self,
        api: &Api<CertificateSigningRequest>,
        name: &str,
        uid: &str,
        full: Option<CertificateSigningRequest>,
        plan: Plan,
        clear_submitted: bool,
    ) -> Result<Action, Error> {
        let s = &self.s;
        let mut full = match full {
            Some(full) => full,
            None => match api.get_opt(name).await {
                Ok(Some(full)) => full,
                Ok(None) => return Ok(Action::await_change()),
                Err(e) => {
                    lock(&self.unwritten).insert(uid.to_string(), plan);
                    return Err(Error::kube("reading a CertificateSigningRequest", e));
                }
            },
        };
        if full.metadata.uid.as_deref() != Some(uid) {
            return Ok(Action::await_change());
        }
        let change = plan::change_of(&plan);
        // 1. The pending id, and the record of a submission the CA keeps nothing of.
        if let Some(patch) =
            submission::annotations_patch(&full, plan.pending_id.as_ref(), clear_submitted)
        {
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => full = updated,
                Err(e) => {
                    lock(&self.unwritten).insert(uid.to_string(), plan);
                    return Err(Error::kube(
                        "persisting the CA's pending id on a CertificateSigningRequest",
                        e,
                    ));
                }
            }
        }
        // 2. The status, unless the plan only waits.
        if let Change::Issue(_) | Change::Fail { .. } = change {
            let mut conflicts = 0;
            loop {
                if plan::finished_full(&full) && !matches!(change, Change::Fail { .. }) {
                    // Denied or failed meanwhile: nothing more to write.
                    return Ok(Action::await_change());
                }
                let updated = plan::with_change(full.clone(), &change, jiff::Timestamp::now());
                match api
                    .replace_status(name, &PostParams::default(), &updated)
                    .await
                {
                    Ok(_) => break,
                    Err(e) if api_code(&e) == Some(404) => return Ok(Action::await_change()),
                    Err(e) if api_code(&e) == Some(409) && conflicts < CONFLICT_RETRIES => {
                        conflicts += 1;
                        full = match api.get_opt(name).await {
                            Ok(Some(f)) if f.metadata.uid.as_deref() == Some(uid) => f,
                            Ok(_) => return Ok(Action::await_change()),
                            Err(e) => {
                                lock(&self.unwritten).insert(uid.to_string(), plan);
                                return Err(Error::kube("reading a CertificateSigningRequest", e));
                            }
                        };
                    }
                    Err(e) => {
                        lock(&self.unwritten).insert(uid.to_string(), plan);
                        return Err(Error::kube(
                            "writing a CertificateSigningRequest's status",
                            e,
                        ));
                    }
                }
            }
        }
        // 3. Metrics and an event per transition.
        let label = plan_label(&full, &self.signers, s);
        match &change {
            Change::Issue(_) => s.metrics.request_finished(&label, RESOURCE_CSR, "issued"),
            Change::Fail { .. } => s.metrics.request_finished(&label, RESOURCE_CSR, "failed"),
            Change::Wait(_) => {}
        }
        let first_time =
            lock(&self.told).insert(uid.to_string(), plan.event.0) != Some(plan.event.0);
        if first_time {
            s.events.emit(Transition {
                regarding: reference(&full),
                reason: plan.event.0,
                note: plan.status.message.clone(),
                warning: plan.event.1,
            });
            if plan.event.1 {
                warn!(csr = %name, reason = plan.event.0, message = %plan.status.message, "CertificateSigningRequest updated");
            } else {
                info!(csr = %name, reason = plan.event.0, message = %plan.status.message, "CertificateSigningRequest updated");
            }
        }
        Ok(match change {
            Change::Wait(delay) => Action::requeue(delay.max(Duration::from_millis(10))),
            _ => {
                lock(&self.told).remove(uid);
                Action::await_change()
            }
        })
    }
}

/// The metrics label of the CSR's issuer.
fn plan_label(full: &CertificateSigningRequest, signers: &Signers, s: &Shared) -> String {
    match signers.issuer(&full.spec.signer_name) {
        Some(Ok(key)) => s.issuer_label(&key),
        _ => full.spec.signer_name.clone(),
    }
}

fn reference(full: &CertificateSigningRequest) -> ObjectReference {
    ObjectReference {
        api_version: Some("certificates.k8s.io/v1".to_string()),
        kind: Some("CertificateSigningRequest".to_string()),
        name: full.metadata.name.clone(),
        uid: full.metadata.uid.clone(),
        resource_version: full.metadata.resource_version.clone(),
        ..Default::default()
    }
}
