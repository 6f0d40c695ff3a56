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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, ResourceExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) use plan::CachedCsr;
use plan::{Change, Need, Signers};

use crate::engine::Shared;
use crate::error::{Error, api_code};
use crate::events::Transition;
use crate::issuers::{IssuerEntry, IssuerKey};
use crate::metrics::{IssuerLabels, QUEUE_CSRS, QueueMetrics, RESOURCE_CSR};
use crate::protection::CallOutcome;
use crate::requests::decide::{Attempt, EventReason, Plan, Requeue, plan as plan_of};
use crate::submission::{self, Step};

/// How long a CSR whose issuer is missing or not usable waits before it is looked at
/// again.
const ISSUER_WAIT: Duration = Duration::from_secs(10);
/// Conflicting status writes retried before the result is kept for the next look.
const CONFLICT_RETRIES: usize = 5;
/// How often what is remembered of deleted CSRs is dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What the loop remembers of one CSR (by uid) between looks.
#[derive(Default)]
struct Remembered {
    /// A PKI answer that could not be written yet, and whether it clears the record
    /// of the submission: written before anything else is done for the CSR, so a
    /// failed write never leads to a second submission.
    unwritten: Option<(Plan, bool)>,
    /// Failed attempts so far, for backoff.
    attempts: u32,
    /// No call before this instant (backoff, the CA's poll interval): a look that a
    /// watch event brings earlier (the loop's own annotation patch) waits.
    not_before: Option<Instant>,
    /// The last event reason told, so a repeated wait or retry is told once.
    told: Option<EventReason>,
    /// The requester may use the namespaced issuer (asked once per CSR: its requester
    /// never changes).
    permitted: bool,
}

/// What the loop shares between looks.
struct Ctx {
    s: Arc<Shared>,
    signers: Signers,
    remembered: Mutex<HashMap<String, Remembered>>,
    /// kube-runtime's scheduler does not tell its depth: the loop reports how long each
    /// look took and how many asked to be looked at again.
    queue: QueueMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the loop until `stop` is cancelled.
pub(crate) async fn run(s: Arc<Shared>, signers: Signers, stop: CancellationToken) {
    let api: Api<CachedCsr> = Api::all(s.client.clone());
    let concurrency = u16::try_from(s.config.max_concurrent_reconciles.max(1)).unwrap_or(u16::MAX);
    let ctx = Arc::new(Ctx {
        signers,
        remembered: Mutex::default(),
        queue: s.metrics.queue(QUEUE_CSRS),
        s,
    });
    info!("Kubernetes CSR loop started");
    let (store, writer) = kube::runtime::reflector::store::<CachedCsr>();
    let (relisted, relists) = futures::channel::mpsc::channel(1);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect_ok(crate::watches::on_list_complete(relisted))
        .applied_objects();
    let stopped = stop.clone();
    let held = store.clone();
    let controller = Controller::for_stream(stream, store.clone())
        .with_config(Config::default().concurrency(concurrency))
        .reconcile_all_on(relists);
    // A CSR deleted while waiting is never looked at again: drop what is remembered of
    // it once it is gone from the store.
    let pruning = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let live: HashSet<String> = store
                    .state()
                    .iter()
                    .filter_map(|csr| csr.metadata.uid.clone())
                    .collect();
                lock(&ctx.remembered).retain(|uid, _| live.contains(uid));
            }
        }
    };
    let looks = controller
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx);
    tokio::join!(
        pruning,
        crate::watches::until_stopped("Kubernetes CSR loop", looks, &held, &stopped)
    );
}

fn error_policy(_csr: Arc<CachedCsr>, error: &Error, ctx: Arc<Ctx>) -> Action {
    warn!(error = %error, "Kubernetes CSR: retrying");
    Action::requeue(ctx.s.config.retry.min.max(Duration::from_millis(100)))
}

/// One look at a CSR; a panic in it (a backend's) fails this look only.
async fn reconcile(cached: Arc<CachedCsr>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let queue = ctx.queue.clone();
    let name = cached.name_any();
    crate::engine::measured_look(
        &queue,
        || format!("CertificateSigningRequest {name}"),
        look(cached, ctx),
    )
    .await
}

async fn look(cached: Arc<CachedCsr>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let s = &ctx.s;
    let name = cached.name_any();
    let uid = cached.metadata.uid.clone().unwrap_or_default();
    let api: Api<CertificateSigningRequest> = Api::all(s.client.clone());
    // A PKI answer that could not be written yet goes first.
    let kept = ctx.remember(&uid, |r| r.unwritten.take());
    if let Some((plan, clear)) = kept {
        return ctx.write(&api, &name, &uid, None, plan, clear).await;
    }
    let key = match plan::need(&cached, &ctx.signers) {
        Need::Nothing => {
            lock(&ctx.remembered).remove(&uid);
            return Ok(Action::await_change());
        }
        Need::BadSigner(why) => {
            let change = Change::Fail {
                reason: EventReason::SignerNameInvalid,
                message: why,
            };
            return ctx.conclude(&api, &name, &uid, change).await;
        }
        Need::Sign(key) => key,
    };
    if let Some(at) = ctx.remember(&uid, |r| r.not_before) {
        let now = Instant::now();
        if at > now {
            return Ok(Action::requeue(at - now));
        }
    }
    if !s.issuers_synced() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let wait = ISSUER_WAIT.min(s.config.retry.max.max(Duration::from_millis(200)));
    let label = s.issuer_label(&key);
    let Some(entry) = s.live_entry(&key) else {
        let why = format!("{label} does not exist; the CertificateSigningRequest waits for it");
        ctx.tell(&cached, &uid, (EventReason::IssuerNotFound, true), why);
        return Ok(Action::requeue(wait));
    };
    if entry.spec.kubernetes_csr == Some(false) {
        let change = Change::Fail {
            reason: EventReason::SignerDisabled,
            message: format!(
                "{label} does not sign Kubernetes CertificateSigningRequests (spec.kubernetesCSR: false)"
            ),
        };
        return ctx.conclude(&api, &name, &uid, change).await;
    }
    if !entry.checked() || !entry.health().usable() {
        let health = entry.health();
        let why = format!(
            "{label} is not Ready ({}: {}); the CertificateSigningRequest waits for it",
            health.reason, health.message
        );
        ctx.tell(&cached, &uid, (EventReason::IssuerNotReady, true), why);
        return Ok(Action::requeue(wait));
    }
    ctx.attempt(&api, &name, &uid, key, entry).await
}

impl Ctx {
    /// Reads or changes what is remembered of the CSR `uid`.
    fn remember<T>(&self, uid: &str, f: impl FnOnce(&mut Remembered) -> T) -> T {
        f(lock(&self.remembered).entry(uid.to_string()).or_default())
    }

    /// Emits an Event for the CSR, once per reason in a row.
    fn tell(&self, csr: &CachedCsr, uid: &str, event: (EventReason, bool), note: String) {
        let new = self.remember(uid, |r| r.told.replace(event.0) != Some(event.0));
        if !new {
            return;
        }
        if event.1 {
            warn!(csr = %csr.name_any(), reason = event.0.as_str(), message = %note, "CertificateSigningRequest");
        } else {
            info!(csr = %csr.name_any(), reason = event.0.as_str(), message = %note, "CertificateSigningRequest");
        }
        self.s.events.emit(Transition {
            regarding: ObjectReference {
                api_version: Some("certificates.k8s.io/v1".to_string()),
                kind: Some("CertificateSigningRequest".to_string()),
                name: csr.metadata.name.clone(),
                uid: csr.metadata.uid.clone(),
                ..Default::default()
            },
            reason: event.0.as_str(),
            note,
            warning: event.1,
        });
    }

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
        let mut full = match api.get_opt(name).await {
            Ok(Some(full)) => full,
            Ok(None) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::kube("reading a CertificateSigningRequest", e)),
        };
        if full.metadata.uid.as_deref() != Some(uid) || plan::finished_full(&full) {
            return Ok(Action::await_change());
        }
        // A namespaced issuer signs only for requesters who may use it: asked before
        // anything of the issuer is spent on the request.
        if !issuer.cluster && !self.remember(uid, |r| r.permitted) {
            if !self.may_use(&full, &issuer).await? {
                let change = Change::Fail {
                    reason: EventReason::RequesterNotPermitted,
                    message: format!(
                        "{:?} may not use {}: grant it the verb \"reference\" on \"signers\" \
                         in API group {:?}, name {:?}, in namespace {:?}",
                        full.spec.username.as_deref().unwrap_or_default(),
                        label,
                        s.group,
                        issuer.name,
                        issuer.namespace
                    ),
                };
                return self.conclude(api, name, uid, change).await;
            }
            self.remember(uid, |r| r.permitted = true);
        }
        let attempts = self.remember(uid, |r| r.attempts);
        let poll_interval = s.config.max_poll_interval;
        let planned = |attempt| plan_of(attempt, attempts + 1, s.config.retry, poll_interval);
        let request = match plan::sign_request(&full) {
            Ok(request) => request,
            Err(why) => {
                let plan = planned(Attempt::Invalid(why));
                return self.write(api, name, uid, Some(full), plan, false).await;
            }
        };
        let admitted = tokio::select! {
            admitted = entry.protection.admit() => admitted,
            _ = s.stopping.cancelled() => return Ok(Action::await_change()),
        };
        let permit = match admitted {
            Ok(permit) => permit,
            Err(deferred) => {
                s.metrics
                    .request_deferred(&s.issuer_metric(&issuer), deferred.reason.metric_label());
                return Ok(Action::requeue(deferred.retry_after));
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
            attempts,
            "create a new CertificateSigningRequest.",
        )
        .await;
        let (operation, result) = match step {
            Step::Answered { operation, result } => (operation, result),
            Step::Concluded(attempt) => {
                let plan = planned(attempt);
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
        s.count_call(
            &issuer,
            RESOURCE_CSR,
            backend.kind(),
            operation,
            &result,
            started,
        );
        let clears = submission::clears_record(operation, &result, false);
        let result = result.map_err(|e| entry.tellable(e));
        let plan = planned(Attempt::Answered(result)).with_requested_duration(request.duration);
        permit.record(plan.breaker);
        let plan = if plan.issuer_fault.is_some() {
            s.confirm_issuer_fault(&issuer, &entry, &backend, plan)
                .await
        } else {
            plan
        };
        if let Some((reason, message)) = &plan.issuer_fault
            && entry.set_health(crate::issuers::Health {
                reason: *reason,
                message: message.clone(),
            })
        {
            s.report_issuer(&issuer, &entry).await;
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
    /// conflicts without signing again); then the event, the metrics, and when to look
    /// again. A PKI answer that cannot be written is kept for the next look.
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
        let keep = |plan: Plan| {
            self.remember(uid, |r| r.unwritten = Some((plan, clear_submitted)));
        };
        let mut full = match full {
            Some(full) => full,
            None => match api.get_opt(name).await {
                Ok(Some(full)) => full,
                Ok(None) => return Ok(Action::await_change()),
                Err(e) => {
                    keep(plan);
                    return Err(Error::kube("reading a CertificateSigningRequest", e));
                }
            },
        };
        if full.metadata.uid.as_deref() != Some(uid) {
            return Ok(Action::await_change());
        }
        let mut change = plan::change_of(&plan);
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
                    keep(plan);
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
                if plan::settled(&full) {
                    // A certificate, a failure or a denial came meanwhile: it stands.
                    lock(&self.remembered).remove(uid);
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
                                keep(plan);
                                return Err(Error::kube("reading a CertificateSigningRequest", e));
                            }
                        };
                    }
                    // The API server refuses what the CA issued (its own parser is
                    // stricter): say so on the CSR rather than retry for ever.
                    Err(kube::Error::Api(status))
                        if status.code == 422 && matches!(change, Change::Issue(_)) =>
                    {
                        change = Change::Fail {
                            reason: EventReason::CertificateRefused,
                            message: format!(
                                "the CA issued a certificate the API server refuses to store: {}",
                                status.message
                            ),
                        };
                    }
                    Err(e) => {
                        if api_code(&e) == Some(403) {
                            let why = format!(
                                "the controller may not write this CSR's status: grant it `update` \
                                 on certificatesigningrequests/status and `sign` on the signer \
                                 {:?} (certificates.k8s.io signers); {e}",
                                full.spec.signer_name
                            );
                            self.tell_full(
                                &full,
                                uid,
                                (EventReason::StatusWriteForbidden, true),
                                why,
                            );
                        }
                        keep(plan);
                        return Err(Error::kube(
                            "writing a CertificateSigningRequest's status",
                            e,
                        ));
                    }
                }
            }
        }
        // 3. Metrics, an event per transition, and when to look again.
        let label = plan_label(&full, &self.signers, s);
        let (reason, message) = match &change {
            Change::Fail { reason, message } => (*reason, message.clone()),
            _ => (plan.event.0, plan.status.message.clone()),
        };
        match &change {
            Change::Issue(_) => s.metrics.request_finished(&label, RESOURCE_CSR, "issued"),
            Change::Fail { .. } => s.metrics.request_finished(&label, RESOURCE_CSR, "failed"),
            Change::Wait(_) => {}
        }
        let warning = plan.event.1 || matches!(change, Change::Fail { .. });
        self.tell_full(&full, uid, (reason, warning), message);
        Ok(match change {
            Change::Wait(delay) => {
                let delay = delay.max(Duration::from_millis(10));
                self.remember(uid, |r| {
                    r.attempts = match plan.breaker {
                        CallOutcome::Success => 0,
                        _ if plan.counts_as_attempt() => r.attempts.saturating_add(1),
                        _ => r.attempts,
                    };
                    r.not_before = Instant::now().checked_add(delay);
                });
                Action::requeue(delay)
            }
            _ => {
                lock(&self.remembered).remove(uid);
                Action::await_change()
            }
        })
    }

    /// [`Ctx::tell`] for a full object.
    fn tell_full(
        &self,
        full: &CertificateSigningRequest,
        uid: &str,
        event: (EventReason, bool),
        note: String,
    ) {
        let cached = CachedCsr {
            metadata: kube::core::ObjectMeta {
                name: full.metadata.name.clone(),
                uid: full.metadata.uid.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        self.tell(&cached, uid, event, note);
    }
}

/// The metrics labels of the CSR's issuer; a malformed signer name (anyone's text) is
/// not a label: such a CSR is counted under the group alone.
fn plan_label(full: &CertificateSigningRequest, signers: &Signers, s: &Shared) -> IssuerLabels {
    match signers.issuer(&full.spec.signer_name) {
        Some(Ok(key)) => s.issuer_metric(&key),
        _ => IssuerLabels {
            issuer_group: s.group.to_owned(),
            ..IssuerLabels::default()
        },
    }
}
