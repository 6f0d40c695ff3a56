//! The CertificateRequest loop. [`run`] feeds the engine's one CertificateRequest watch
//! ([`crate::watches::request_stream`]) into a kube-runtime reflector store, which holds
//! only the requests the loop may act on, and hands each changed request to a look
//! through the loop's own [`queue`] (why not kube-runtime's scheduler: see there), at
//! most `max_concurrent_reconciles` looks at once.
//!
//! One request's look, top to bottom: [`Shared::reconcile_request`] reads the request
//! from the store, [`decide`] says what it needs, [`Shared::attempt`] makes the one PKI
//! call through the protection, [`plan`](decide::plan) turns the answer into a
//! [`Plan`], and [`Shared::apply`] writes it (status, submission record, events,
//! metrics), keeping an unwritten result for the next look when the write fails. Each
//! returns the [`Next`] look. What is kept between looks (attempts, backoff, the last
//! write, an unwritten result) is a [`RequestState`] per uid in
//! [`Shared::request_state`]. The pure parts are in [`decide`] and [`build`].

mod build;
pub(crate) mod decide;
mod queue;

pub(crate) use build::object_reference;

use std::sync::Arc;
use std::time::Duration;

use certwright_api::CertificateRequest;
use certwright_api::certificate_request::{CONDITION_APPROVED, REASON_DENIED};
use futures::StreamExt as _;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::watcher::Event;
use kube::{Api, ResourceExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::cached::{CachedRequest, RequestKey};
use crate::engine::{Owned, Shared, lock};
use crate::error::api_code;
use crate::events::Transition;
use crate::issuers::{Health, IssuerEntry, IssuerKey};
use crate::metrics::{IssuerLabels, RESOURCE_REQUEST};
use crate::protection::CallOutcome;
use crate::requests::decide::{Attempt, Decision, IssuerState, Plan, Requeue, decide, plan};
use crate::submission::{self, Step};
use build::{created_at, hash_of, request_status_patch, sign_request, spread};
use queue::Queue;

/// Attempts of a write that failed for a reason other than a conflict, before the
/// result is kept for a later attempt.
const WRITE_ATTEMPTS: u32 = 3;
/// How many times a status write is retried after a 409 before trying again later.
const CONFLICT_RETRIES: usize = 5;

/// What the engine keeps of one request (one uid) between looks. The request itself is
/// in the store; this is what the store cannot say.
#[derive(Default)]
pub(crate) struct RequestState {
    /// Failed attempts so far (for backoff).
    pub(crate) attempts: u32,
    /// No attempt before this instant (backoff, CA poll interval).
    pub(crate) not_before: Option<Instant>,
    /// Hash of the last Ready reason and message written, to skip identical writes.
    pub(crate) last_written: Option<u64>,
    /// Its issuer changed (became usable, or was rebuilt) after the last look at the
    /// request began: until a look begins afresh, no backoff or poll time is set, since
    /// one decided before the change would hold the request back for nothing.
    pub(crate) woken: bool,
    /// A result that could not be written yet: a PKI answer among them is written
    /// before anything else is done for the request, so that a failed write never leads
    /// to a second submission.
    pub(crate) unwritten: Option<Unwritten>,
}

/// A result on its way to a request, kept until it is written.
pub(crate) struct Unwritten {
    /// The request's uid: the result is never written onto a namesake.
    pub(crate) uid: String,
    /// The issuer, for metrics and issuer faults.
    pub(crate) issuer: Option<IssuerKey>,
    /// The built issuer whose backend gave this answer, when the PKI answered: an issuer
    /// fault is only recorded against that build, never against a rebuild (rotated
    /// credentials) that the answer says nothing about.
    pub(crate) answered_by: Option<Arc<IssuerEntry>>,
    pub(crate) plan: Plan,
    /// Whether the request's record of a submission is cleared with it (the CA keeps
    /// nothing of the submission, or holds it under the plan's pending id).
    pub(crate) clear_submitted: bool,
    /// Failed attempts to write it so far (for backoff).
    pub(crate) write_failures: u32,
}

impl Unwritten {
    pub(crate) fn new(uid: String, issuer: Option<IssuerKey>, plan: Plan) -> Self {
        Unwritten {
            uid,
            issuer,
            answered_by: None,
            plan,
            clear_submitted: false,
            write_failures: 0,
        }
    }

    /// A result the PKI gave through `entry`'s backend.
    pub(crate) fn answered(
        uid: String,
        issuer: IssuerKey,
        entry: Arc<IssuerEntry>,
        plan: Plan,
    ) -> Self {
        Unwritten {
            answered_by: Some(entry),
            ..Unwritten::new(uid, Some(issuer), plan)
        }
    }
}

/// When to look at a request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// After this long; at once for zero.
    After(Duration),
    /// When the request, or its issuer, changes.
    OnChange,
}

impl crate::engine::LookResult for Next {
    fn looks_again(&self) -> bool {
        *self != Next::OnChange
    }
}

/// Runs the request loop until `stop` is cancelled, then lets the looks under way
/// finish. The store [`Shared::requests`] is filled through `writer` from the engine's
/// CertificateRequest watch; `woken` carries requests whose issuer changed; with the
/// policy approver on, `feed` gets every event of the watch.
pub(crate) async fn run(
    s: Arc<Shared>,
    writer: Writer<CachedRequest>,
    woken: UnboundedReceiver<ObjectRef<CachedRequest>>,
    feed: Option<UnboundedSender<Event<CachedRequest>>>,
    stop: CancellationToken,
) {
    let queue = Arc::new(Queue::new());
    let looks = s
        .config
        .max_concurrent_reconciles
        .clamp(1, usize::from(u16::MAX));
    let lookers = Owned(
        (0..looks)
            .map(|_| tokio::spawn(look_at_queued(s.clone(), queue.clone())))
            .collect(),
    );
    let mut watched = std::pin::pin!(crate::watches::request_stream(s.clone(), writer, feed));
    let mut woken = woken;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            event = watched.next() => match event {
                Some(Event::Apply(request)) => queue.add(ObjectRef::from_obj(&request)),
                // A list's requests are in the store only once the list is complete: each
                // is looked at then, not as it comes (a look would not find it).
                Some(Event::InitDone) => {
                    for request in s.requests.state() {
                        queue.add(ObjectRef::from_obj(&*request));
                    }
                }
                Some(Event::Init | Event::InitApply(_) | Event::Delete(_)) => {}
                None => break,
            },
            Some(request) = woken.next() => queue.add(request),
        }
    }
    // No new look begins; those under way finish and write what they got.
    queue.shutdown();
    lookers.join().await;
}

/// Takes requests from the queue, one look each, until the queue is shut down.
async fn look_at_queued(s: Arc<Shared>, queue: Arc<Queue<ObjectRef<CachedRequest>>>) {
    while let Some(key) = queue.next().await {
        // A request that left the store before its turn has nothing left to do.
        let next = match s.requests.get(&key) {
            Some(cached) => look(cached, &s).await,
            None => Next::OnChange,
        };
        queue.done(&key);
        if let Next::After(delay) = next {
            queue.add_after(key, delay);
        }
    }
}

/// One look at a request; a panic in it (a backend's) fails this look only, and the
/// request is looked at again after the longest backoff.
async fn look(cached: Arc<CachedRequest>, s: &Shared) -> Next {
    let result = crate::engine::measured_look(
        &s.request_loop,
        || format!("CertificateRequest {}", cached.key()),
        async { Ok(s.reconcile_request(&cached).await) },
    )
    .await;
    result.unwrap_or(Next::After(s.config.retry.max))
}

impl Shared {
    /// One look at a request: write what is still unwritten, or decide what the request
    /// needs and, when approved and its issuer is usable, attempt it. Returns when to
    /// look again.
    pub(crate) async fn reconcile_request(&self, cached: &CachedRequest) -> Next {
        let key = &cached.key();
        let uid = cached.metadata.uid.clone().unwrap_or_default();
        // A PKI answer that could not be written yet is written before anything else, so
        // that a failed write never leads to a second submission. Any other unwritten
        // status (waiting for the issuer, deferred, denied, invalid) carries no PKI
        // result and is decided afresh: the issuer may have become usable meanwhile.
        let unwritten = self.remember(&uid, |r| r.unwritten.take());
        if let Some(pending) = unwritten
            && pending.answered_by.is_some()
        {
            return self.apply(key, pending, None).await;
        }
        let not_before = self.remember(&uid, |r| {
            // This look sees the issuer as it is now.
            r.woken = false;
            r.not_before
        });
        if let Some(at) = not_before {
            let now = Instant::now();
            if at > now {
                return Next::After(at - now);
            }
        }
        if !self.issuers_synced() {
            return Next::After(Duration::from_millis(100));
        }
        let issuer_key = self.issuer_key_for(cached);
        let known = issuer_key
            .as_ref()
            .is_some_and(|k| self.issuer_objects.get(k).is_some());
        // A deleted issuer's build, kept until its last look drops it, signs nothing.
        let entry = issuer_key
            .as_ref()
            .filter(|_| known)
            .and_then(|k| lock(&self.issuers).get(k).cloned());
        if known && entry.as_ref().is_none_or(|e| !e.checked()) {
            // The issuer exists but has not been checked yet: its reconcile wakes us.
            return Next::OnChange;
        }
        let health = entry.as_ref().map(|e| e.health());
        let state = match &health {
            None => IssuerState::Missing,
            Some(h) if h.usable() => IssuerState::Ready,
            Some(h) => IssuerState::NotReady {
                message: &h.message,
            },
        };
        let decision = decide(cached, self.group, state);
        let label = issuer_key
            .as_ref()
            .map(|k| self.issuer_label(k))
            .unwrap_or_default();
        let uid = cached.metadata.uid.clone().unwrap_or_default();
        let span = info_span!(
            "request",
            namespace = %key.namespace,
            name = %key.name,
            uid = %uid,
            issuer = %label,
        );
        async {
            let plan = match decision {
                Decision::Nothing => return Next::OnChange,
                Decision::Deny => crate::requests::decide::plan_denied(),
                Decision::WaitForIssuer { message } => {
                    crate::requests::decide::plan_waiting(message)
                }
                Decision::Sign | Decision::Poll { .. } => {
                    return match (entry, issuer_key) {
                        (Some(entry), Some(issuer_key)) => {
                            self.attempt(cached, entry, issuer_key).await
                        }
                        _ => Next::OnChange,
                    };
                }
            };
            // Nothing new to say: no read, no write.
            if self.already_written(&uid, &plan) {
                return match plan.requeue {
                    Requeue::After(delay) | Requeue::IssuerChange(delay) => {
                        self.schedule(key, &uid, delay)
                    }
                    Requeue::Never => Next::OnChange,
                };
            }
            let pending = Unwritten::new(uid.clone(), issuer_key, plan);
            self.apply(key, pending, None).await
        }
        .instrument(span)
        .await
    }

    /// Submits or polls a request through the issuer's protection, then reads the full
    /// object and applies the outcome.
    pub(crate) async fn attempt(
        &self,
        cached: &CachedRequest,
        entry: Arc<IssuerEntry>,
        issuer: IssuerKey,
    ) -> Next {
        let key = &cached.key();
        let uid = cached.metadata.uid.as_deref().unwrap_or_default();
        let Some(backend) = entry.backend.clone() else {
            return Next::OnChange;
        };
        let attempts = self.remember(uid, |r| r.attempts);
        let entry_created = cached.metadata.creation_timestamp.clone();
        // How often a CA-side pending request is asked about is the backend's
        // (`PendingRequest::retry_after`), within the engine's bound.
        let poll_interval = self.config.max_poll_interval;
        // Protection first: a deferred request costs no API call unless its status
        // changes.
        let admitted = tokio::select! {
        admitted = entry.protection.admit() => admitted,
        _ = self.stopping.cancelled() => return Next::OnChange};
        let permit = match admitted {
            Ok(permit) => permit,
            Err(deferred) => {
                self.metrics
                    .request_deferred(&self.issuer_metric(&issuer), deferred.reason.metric_label());
                let plan = plan(
                    Attempt::Deferred(deferred),
                    attempts + 1,
                    self.config.retry,
                    poll_interval,
                )
                .with_retry_deadline(
                    created_at(&entry_created),
                    jiff::Timestamp::now(),
                    self.config.max_retry_duration,
                );
                if self.already_written(uid, &plan) {
                    return match plan.requeue {
                        Requeue::After(delay) => self.schedule(key, uid, delay + spread(key)),
                        _ => Next::OnChange,
                    };
                }
                let pending = Unwritten::new(uid.to_string(), Some(issuer), plan);
                return self.apply(key, pending, None).await;
            }
        };
        let api: Api<CertificateRequest> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut full = match api.get(&key.name).await {
            Ok(full) => full,
            Err(e) if api_code(&e) == Some(404) => {
                self.forget_request(uid);
                return Next::OnChange;
            }
            Err(e) => {
                warn!(error = %e, "could not read the CertificateRequest; retrying");
                return self.schedule(key, uid, self.config.retry.min);
            }
        };
        // The store may lag behind: the fresh object decides whether this is still the
        // same request, whether it is terminal, and whether the CA already holds it.
        if full.uid().as_deref() != Some(uid) {
            return Next::After(Duration::ZERO);
        }
        if full.is_terminal() {
            self.forget_request(uid);
            return Next::OnChange;
        }
        // A final verdict reached without a PKI answer, written as any other.
        let concluded = |attempt| {
            let plan = plan(attempt, attempts + 1, self.config.retry, poll_interval);
            Unwritten::new(uid.to_string(), Some(issuer.clone()), plan)
        };
        let request = match sign_request(&full, &entry.spec) {
            Ok(r) => r,
            Err(why) => {
                return self
                    .apply(key, concluded(Attempt::Invalid(why)), Some(full))
                    .await;
            }
        };
        // Leadership may have been lost while this look waited for a slot.
        if self.stopping.is_cancelled() {
            return Next::OnChange;
        }
        // A pending id is polled; a submission recorded without its answer (the process
        // stopped mid-call, or the CA's answer was lost) is recovered before anything is
        // submitted again; otherwise the submission is recorded, then made.
        let started = std::time::Instant::now();
        let step = submission::perform(
            &api,
            &mut full,
            backend.as_ref(),
            &request,
            &self.stopping,
            attempts,
            "cert-manager retries with a new CertificateRequest.",
        )
        .await;
        let (operation, result) = match step {
            Step::Answered { operation, result } => (operation, result),
            Step::Concluded(attempt) => {
                return self.apply(key, concluded(attempt), Some(full)).await;
            }
            Step::Stopped => return Next::OnChange,
            Step::NotRecorded(e) => {
                warn!(error = %e, "could not record the submission on the request; nothing was submitted");
                return self.schedule(key, uid, self.config.retry.delay(attempts + 1));
            }
        };
        let clears = submission::clears_record(operation, &result, false);
        self.count_call(
            &issuer,
            RESOURCE_REQUEST,
            backend.kind(),
            operation,
            &result,
            started,
        );
        let result = result.map_err(|e| entry.tellable(e));
        let plan = plan(
            Attempt::Answered(result),
            attempts + 1,
            self.config.retry,
            poll_interval,
        )
        .with_requested_duration(request.duration)
        .with_retry_deadline(
            created_at(&entry_created),
            jiff::Timestamp::now(),
            self.config.max_retry_duration,
        );
        permit.record(plan.breaker);
        let plan = if plan.issuer_fault.is_some() {
            self.confirm_issuer_fault(&issuer, &entry, &backend, plan)
                .await
        } else {
            plan
        };
        self.reflect_breaker(&issuer, &entry, plan.breaker).await;
        let clear_submitted = clears && plan.requeue != Requeue::Never;
        let mut pending = Unwritten::answered(uid.to_string(), issuer, entry, plan);
        pending.clear_submitted = clear_submitted;
        self.apply(key, pending, Some(full)).await
    }

    /// Performs a plan: persist the pending id, write the status (retrying conflicts
    /// without signing again), emit the event, update metrics, say when to look again.
    /// A plan that cannot be written is kept and written on the next look, before
    /// anything else.
    pub(crate) async fn apply(
        &self,
        key: &RequestKey,
        pending: Unwritten,
        full: Option<CertificateRequest>,
    ) -> Next {
        let api: Api<CertificateRequest> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut full = match full {
            Some(f) => f,
            None => match api.get(&key.name).await {
                Ok(f) => f,
                Err(e) if api_code(&e) == Some(404) => return Next::OnChange,
                Err(e) => {
                    warn!(error = %e, "could not read the CertificateRequest to write a result; retrying");
                    return self.defer_write(pending);
                }
            },
        };
        // A result belongs to one object: never to a namesake created later.
        if full.uid().as_deref() != Some(pending.uid.as_str()) {
            debug!("the request was replaced; dropping the result for the old one");
            self.forget_request(&pending.uid);
            return Next::After(Duration::ZERO);
        }
        if full.is_terminal() {
            self.forget_request(&pending.uid);
            return Next::OnChange;
        }
        let plan = &pending.plan;
        // 1. The CA's pending id is persisted before anything else, on this very object
        //    (the resourceVersion is a precondition), with the record of the submission
        //    cleared when the answer says the CA keeps nothing of it.
        if let Some(patch) =
            submission::annotations_patch(&full, plan.pending_id.as_ref(), pending.clear_submitted)
        {
            match api
                .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => full = updated,
                Err(e) => {
                    warn!(error = %e, pending_id = ?plan.pending_id, "could not persist the CA's pending id; retrying");
                    return self.defer_write(pending);
                }
            }
        }
        // 2. The status.
        match self.write_status(&api, key, full, &pending).await {
            Ok(Some(written)) => full = written,
            Ok(None) => {
                // Became terminal meanwhile, was replaced, or was deleted.
                self.forget_request(&pending.uid);
                return Next::OnChange;
            }
            Err(e) => {
                warn!(error = %e, "could not write the status; retrying without signing again");
                return self.defer_write(pending);
            }
        }
        let label = pending
            .issuer
            .as_ref()
            .map(|k| self.issuer_metric(k))
            .unwrap_or_else(|| IssuerLabels {
                issuer_group: self.group.to_owned(),
                ..IssuerLabels::default()
            });
        // 3. Metrics for finished requests.
        if plan.requeue == Requeue::Never {
            let result = match plan.status.reason {
                certwright_api::certificate_request::REASON_ISSUED => "issued",
                REASON_DENIED => "denied",
                _ => "failed",
            };
            self.metrics
                .request_finished(&label, RESOURCE_REQUEST, result);
            if result == "issued"
                && let Some(approved) = full
                    .conditions()
                    .iter()
                    .find(|c| c.type_ == CONDITION_APPROVED)
                && let Some(at) = approved.last_transition_time
            {
                let seconds = jiff::Timestamp::now().duration_since(at).as_secs_f64();
                self.metrics
                    .observe_approval_to_ready(&label, seconds.max(0.0));
            }
        }
        // 4. An event per transition, once the metrics count it (a reader who sees the
        //    event finds the request counted).
        self.events.emit(Transition {
            regarding: object_reference(&full),
            reason: plan.event.0.as_str(),
            note: plan.status.message.clone(),
            warning: plan.event.1,
        });
        if plan.event.1 {
            warn!(reason = plan.status.reason, outcome = plan.outcome.as_str(), message = %plan.status.message, "CertificateRequest updated");
        } else {
            info!(reason = plan.status.reason, outcome = plan.outcome.as_str(), message = %plan.status.message, "CertificateRequest updated");
        }
        // 5. The issuer, when it is at fault: the build that answered, if it is still
        //    the current one. An answer from a build since replaced (credentials rotated
        //    mid-call) says nothing about the new one; the request tries that at once.
        let mut rebuilt_meanwhile = false;
        if let (Some((reason, message)), Some(issuer)) = (&plan.issuer_fault, &pending.issuer) {
            let current = lock(&self.issuers).get(issuer).cloned();
            match (current, &pending.answered_by) {
                (Some(current), Some(answered_by)) if !Arc::ptr_eq(&current, answered_by) => {
                    rebuilt_meanwhile = true;
                }
                (Some(current), _) => {
                    if current.set_health(Health {
                        reason: *reason,
                        message: message.clone(),
                    }) {
                        self.report_issuer(issuer, &current).await;
                    }
                }
                (None, _) => {}
            }
        }
        // 6. When to look again.
        match plan.requeue {
            Requeue::Never => {
                self.forget_request(&pending.uid);
                Next::OnChange
            }
            Requeue::After(delay) | Requeue::IssuerChange(delay) => {
                let digest = hash_of(plan.status.reason, &plan.status.message);
                self.remember(&pending.uid, |r| {
                    r.last_written = Some(digest);
                    r.attempts = match plan.breaker {
                        CallOutcome::Success => 0,
                        _ if plan.counts_as_attempt() => r.attempts.saturating_add(1),
                        _ => r.attempts,
                    };
                });
                let delay = if rebuilt_meanwhile {
                    Duration::ZERO
                } else {
                    delay
                };
                self.schedule(key, &pending.uid, delay)
            }
        }
    }

    /// Keeps a result that could not be written, to be written on the next look (after
    /// a backoff), before anything else is done for this request.
    pub(crate) fn defer_write(&self, mut pending: Unwritten) -> Next {
        pending.write_failures = pending.write_failures.saturating_add(1);
        let delay = self.config.retry.delay(pending.write_failures);
        let uid = pending.uid.clone();
        self.remember(&uid, |r| r.unwritten = Some(pending));
        Next::After(delay)
    }

    /// Writes the status with the object's resourceVersion as a precondition. On a
    /// conflict it reads the object again and recomputes the conditions (never signing
    /// again); other failures are retried a few times at once. `Ok(None)` when the
    /// request became terminal, was replaced or disappeared meanwhile.
    pub(crate) async fn write_status(
        &self,
        api: &Api<CertificateRequest>,
        key: &RequestKey,
        mut full: CertificateRequest,
        pending: &Unwritten,
    ) -> Result<Option<CertificateRequest>, kube::Error> {
        let (mut conflicts, mut failures) = (0, 0);
        loop {
            let patch = request_status_patch(&full, &pending.plan.status, jiff::Timestamp::now());
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(written) => return Ok(Some(written)),
                Err(e) if api_code(&e) == Some(404) => return Ok(None),
                Err(e) if api_code(&e) == Some(409) && conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    debug!(
                        conflicts,
                        "status write conflicted; reading the request again"
                    );
                }
                // Server errors and lost connections: try again at once, a few times.
                Err(e)
                    if failures + 1 < WRITE_ATTEMPTS && api_code(&e).is_none_or(|c| c >= 500) =>
                {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(failures))).await;
                }
                Err(e) => return Err(e),
            }
            full = match api.get(&key.name).await {
                Ok(f) => f,
                Err(e) if api_code(&e) == Some(404) => return Ok(None),
                Err(e) => return Err(e),
            };
            if full.uid().as_deref() != Some(pending.uid.as_str()) || full.is_terminal() {
                return Ok(None);
            }
        }
    }

    /// When to look next at the request `uid`, with no call to the API server: after
    /// `delay`, which is kept as the request's own backoff or poll time. The next look
    /// comes at once instead when its issuer changed while this look was under way (what
    /// this one decided may be stale), or when a namesake holds the name now (it has its
    /// own timing, and this decision says nothing about it). Never when the request is
    /// gone from the store.
    pub(crate) fn schedule(&self, key: &RequestKey, uid: &str, delay: Duration) -> Next {
        let delay = delay.min(
            self.config
                .retry
                .max
                .max(crate::requests::decide::ISSUER_BACKSTOP),
        );
        match self.stored_uid(key) {
            None => return Next::OnChange,
            Some(stored) if stored != uid => return Next::After(Duration::ZERO),
            Some(_) => {}
        }
        let woken = self.remember(uid, |r| {
            if !r.woken {
                r.not_before = Instant::now().checked_add(delay);
            }
            r.woken
        });
        if woken {
            Next::After(Duration::ZERO)
        } else {
            Next::After(delay)
        }
    }

    /// The uid of the request the store holds under `key`, if it holds one.
    fn stored_uid(&self, key: &RequestKey) -> Option<String> {
        self.requests
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .map(|r| r.metadata.uid.clone().unwrap_or_default())
    }

    /// Reads or changes what is kept of the request `uid`.
    pub(crate) fn remember<T>(&self, uid: &str, f: impl FnOnce(&mut RequestState) -> T) -> T {
        f(lock(&self.request_state)
            .entry(uid.to_string())
            .or_default())
    }

    /// Whether exactly this status was the last one written for the request, so that
    /// writing it again can be skipped without reading the object.
    pub(crate) fn already_written(&self, uid: &str, plan: &Plan) -> bool {
        let digest = hash_of(plan.status.reason, &plan.status.message);
        lock(&self.request_state)
            .get(uid)
            .is_some_and(|r| r.last_written == Some(digest))
    }

    /// Drops what is kept of the request `uid` once nothing more is needed of it
    /// (finished, terminal, replaced or deleted).
    pub(crate) fn forget_request(&self, uid: &str) {
        lock(&self.request_state).remove(uid);
    }
}
