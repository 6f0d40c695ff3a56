//! The policy approver: approves or denies every undecided cert-manager
//! CertificateRequest (to any issuer, certwright's or not) by the cluster's
//! IssuancePolicies, leaves for a person those a `Manual` policy holds, and approves by
//! change ticket those a `Ticket` policy holds once the ticket system says so.
//!
//! It runs on kube-runtime's `Controller` (scheduler, concurrency limit, requeues) over a
//! reflector store that holds **only the undecided requests it may decide**, slim
//! ([`CachedRequest`]: no CSR, no certificate), fed by the engine's own watch
//! ([`watches::admit`]): a request that is approved or denied becomes a deletion before
//! it reaches the store, and so does one that is not certwright's to decide
//! ([`scope::scope`]: it names certwright's group and no kind, its signer is not one the
//! controller may approve, or, under `--policy-unmatched=ignore`, no policy selects it).
//! However many decided requests a cluster keeps, or requests another approver decides,
//! the approver holds none of them; a request is read whole when looked at. Policies and
//! namespaces (for `matchLabels`) are reflector stores too; any change to either looks
//! again at every held request, never at a decided one, and, under `ignore`, lists the
//! requests once more to find those a policy now selects ([`watches::relist`]).
//!
//! One look at a request, top to bottom: decided already → forgotten; not the
//! approver's on the current policies (and the namespace's labels, when a policy
//! selects by them) → forgotten, unread; read its CSR and spec ([`RequestFacts`]); the
//! applicable policies (under `--policy-evaluation=any`, only those the requester may
//! `use`, by SubjectAccessReview); the verdict ([`certwright_policy::decide`]);
//! [`plan::plan`] turns it into a step: write `Approved` or `Denied` (with a
//! resourceVersion precondition, so a person's decision made meanwhile is never
//! overwritten), leave it, wait for a person (an Event says who and how, once), or ask
//! the ticket system and then approve, deny or look again later with backoff
//! ([`plan::after_tickets`]).

pub(crate) mod plan;
mod scope;
mod summaries;
mod tickets;
mod watches;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use certwright_api::{CertificateRequest, Conditions as _, IssuancePolicy, RequestConditions as _};
use certwright_policy::{Evaluation, Issuer, PolicySet, RequestFacts, Verdict, decide};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::{Api, ResourceExt as _};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use plan::{Step, Waiting};
use scope::{Labels, Scope};
use watches::{Feed, Forget, Wake, relist, request_stream, watch_namespaces, watch_policies};

use crate::cached::CachedRequest;
use crate::config::PolicyConfig;
use crate::engine::Shared;
use crate::error::{Error, api_code};
use crate::events::Transition;
use crate::metrics::{AWAITING_APPROVALS, QueueMetrics};
use crate::requests::object_reference;

/// The `queue` label of the approver's loop.
pub(crate) const QUEUE_APPROVALS: &str = "approvals";
/// How often the awaiting gauges are computed and what is remembered of gone requests
/// dropped.
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// Conflicting writes of a decision retried before the look is left to the watch.
const CONFLICT_WAIT: Duration = Duration::from_millis(100);
/// How long a request to a certwright issuer not yet known waits before another look.
const ISSUER_WAIT: Duration = Duration::from_secs(5);
/// The annotation cert-manager puts on a request with the name of its Certificate.
const CERTIFICATE_NAME_ANNOTATION: &str = "cert-manager.io/certificate-name";

/// What the approver remembers of one undecided request (by uid) between looks.
#[derive(Default)]
struct Remembered {
    /// The last Event note told, so a wait is told once, and again only when it changes.
    told: Option<String>,
    /// What it waits for, and since when (its creation).
    waiting: Option<(Waiting, jiff::Timestamp)>,
    /// Ticket checks so far, for backoff.
    ticket_looks: u32,
    /// No ticket check before this instant.
    next_ticket_check: Option<Instant>,
    /// Failed looks in a row, for backoff.
    failures: u32,
    /// Looks that found its certwright issuer unknown, for backoff.
    issuer_waits: u32,
    /// The tickets the last ticket check asked about: another ticket named in the
    /// annotation is asked about at once, not after the old one's backoff.
    tickets: Vec<String>,
}

/// What the approver shares between looks.
pub(crate) struct Ctx {
    s: Arc<Shared>,
    config: PolicyConfig,
    policies: Mutex<Arc<PolicySet>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    remembered: Mutex<HashMap<String, Remembered>>,
    /// Into the request store: listed requests, and requests to forget.
    replay: futures::channel::mpsc::UnboundedSender<Feed>,
    tickets: tickets::Tickets,
    queue: QueueMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether an approver (certwright or a person) has decided the request.
fn decided(cached: &CachedRequest) -> bool {
    let conditions = cached.conditions();
    conditions.is_approved() || conditions.is_denied()
}

/// Runs the approver until `stop` is cancelled.
pub(crate) async fn run(
    s: Arc<Shared>,
    config: PolicyConfig,
    watched: futures::channel::mpsc::UnboundedReceiver<Event<CachedRequest>>,
    stop: CancellationToken,
) {
    let client = s.client.clone();
    let (policy_store, policy_writer) = reflector::store::<IssuancePolicy>();
    let (namespaces, namespace_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let (again, again_all) = futures::channel::mpsc::channel::<()>(1);
    // A complete list of requests is looked at as a whole too.
    let relisted = again.clone();
    let (replay, replayed) = futures::channel::mpsc::unbounded::<Feed>();
    let summaries_wake = Arc::new(Notify::new());
    let relist_wake = Arc::new(Notify::new());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (requests, request_writer) = reflector::store::<CachedRequest>();
    let ctx = Arc::new(Ctx {
        tickets: tickets::Tickets::new(client.clone(), s.config.cluster_resource_namespace.clone()),
        queue: s.metrics.queue(QUEUE_APPROVALS),
        policies: Mutex::new(Arc::new(PolicySet::default())),
        remembered: Mutex::default(),
        namespaces: namespaces.clone(),
        replay,
        config,
        s,
    });
    let wake = Wake {
        again,
        summaries: summaries_wake.clone(),
        relist: relist_wake.clone(),
    };
    let watch_policies = watch_policies(
        ctx.clone(),
        policy_store.clone(),
        policy_writer,
        wake.clone(),
    );
    let watch_namespaces = watch_namespaces(ctx.clone(), namespace_writer, wake);
    let relisting = relist(
        ctx.clone(),
        relist_wake,
        requests.clone(),
        ready.clone(),
        stop.clone(),
    );
    let ready_for_summaries = ready.clone();
    let looks = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        async move {
            // Nothing is decided before every policy and namespace is known: a request
            // looked at earlier could be denied for want of a policy not yet read.
            tokio::select! {
                _ = stop.cancelled() => return,
                ready = async { tokio::join!(policy_store.wait_until_ready(), namespaces.wait_until_ready()) } => {
                    if ready.0.is_err() || ready.1.is_err() {
                        return;
                    }
                }
            }
            info!(
                evaluation = ctx.config.evaluation.as_str(),
                policies = ctx.policies().len(),
                "policy approver started"
            );
            ready.store(true, std::sync::atomic::Ordering::SeqCst);
            let stream = request_stream(
                ctx.clone(),
                watched,
                replayed,
                requests.clone(),
                request_writer,
                relisted,
            );
            let concurrency =
                u16::try_from(ctx.s.config.max_concurrent_reconciles.max(1)).unwrap_or(u16::MAX);
            let reporting = report(ctx.clone(), requests.clone(), stop.clone());
            let (held, stopped) = (requests.clone(), stop.clone());
            let controller = Controller::for_stream(stream, requests)
                .with_config(Config::default().concurrency(concurrency))
                .reconcile_all_on(again_all)
                .graceful_shutdown_on(async move { stop.cancelled().await })
                .run(reconcile, error_policy, ctx);
            tokio::join!(
                crate::watches::until_stopped("policy approver", controller, &held, &stopped),
                reporting
            );
        }
    };
    let publishing = async {
        if ctx.config.publish_summaries {
            summaries::run(
                ctx.clone(),
                summaries_wake,
                ready_for_summaries,
                stop.clone(),
            )
            .await;
        } else {
            stop.cancelled().await;
        }
    };
    tokio::select! {
        _ = looks => {}
        () = watch_policies => {}
        () = watch_namespaces => {}
        () = publishing => {}
        () = relisting => {}
    }
    info!("policy approver stopped");
}

/// Sets the awaiting gauges and the held count, and forgets requests no longer held.
async fn report(ctx: Arc<Ctx>, requests: Store<CachedRequest>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let held = requests.state();
        ctx.s
            .metrics
            .set_policy_held(i64::try_from(held.len()).unwrap_or(i64::MAX));
        let live: HashSet<String> = held
            .iter()
            .filter_map(|cr| cr.metadata.uid.clone())
            .collect();
        drop(held);
        let now = jiff::Timestamp::now();
        let mut counts: HashMap<&'static str, (i64, i64)> = HashMap::new();
        {
            let mut remembered = lock(&ctx.remembered);
            remembered.retain(|uid, _| live.contains(uid));
            for (waiting, since) in remembered.values().filter_map(|r| r.waiting) {
                let entry = counts.entry(waiting.as_str()).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(now.duration_since(since).as_secs());
            }
        }
        for approval in AWAITING_APPROVALS {
            let (count, oldest) = counts.get(approval).copied().unwrap_or_default();
            ctx.s.metrics.set_policy_awaiting(approval, count, oldest);
        }
    }
}

/// The longest wait between failed looks at a request.
const MAX_FAILURE_WAIT: Duration = Duration::from_secs(300);

fn error_policy(cr: Arc<CachedRequest>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let uid = cr.metadata.uid.clone().unwrap_or_default();
    let failures = ctx.remember(&uid, |r| {
        r.failures = r.failures.saturating_add(1);
        r.failures
    });
    let first = ctx.s.config.retry.min.max(Duration::from_millis(100));
    let wait = first
        .saturating_mul(1u32 << (failures.clamp(1, 16) - 1))
        .min(MAX_FAILURE_WAIT);
    warn!(error = %error, retry_in = ?wait, "policy approver: retrying");
    Action::requeue(wait)
}

/// One look at a request; a panic in it fails this look only.
async fn reconcile(cr: Arc<CachedRequest>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let result = crate::engine::measured_look(
        &ctx.queue,
        || format!("CertificateRequest {} for policy", cr.key()),
        look(&cr, &ctx),
    )
    .await;
    if result.is_ok()
        && let Some(uid) = &cr.metadata.uid
        && let Some(r) = lock(&ctx.remembered).get_mut(uid)
    {
        r.failures = 0;
    }
    result
}

async fn look(cached: &CachedRequest, ctx: &Ctx) -> Result<Action, Error> {
    let uid = cached.metadata.uid.clone().unwrap_or_default();
    if decided(cached) {
        ctx.forget(cached, Forget::Done);
        return Ok(Action::await_change());
    }
    let namespace = cached.metadata.namespace.clone().unwrap_or_default();
    // Left for another approver (or a person) before the request is read: a request
    // certwright cannot read is not denied on another approver's behalf. The policies
    // may have changed since the request was let into the store.
    let set = ctx.policies();
    if ctx.scope(cached, &set, Labels::Unknown) == Scope::Others {
        ctx.forget(cached, Forget::OutOfScope);
        return Ok(Action::await_change());
    }
    // The namespace's labels matter only to a policy that selects this issuer by them.
    let issuer = Issuer::of(&cached.spec.issuer_ref);
    let labels = if set
        .iter()
        .any(|p| p.selects_issuer(&issuer) && p.uses_labels())
    {
        let (labels, watched) = ctx.namespace_labels(&namespace).await?;
        let known = labels.as_ref().map_or(Labels::Absent, Labels::Known);
        if ctx.scope(cached, &set, known) == Scope::Others {
            // On labels the watch has not seen yet the request stays held: when the
            // watch sees them, every held request is looked at again.
            if watched {
                ctx.forget(cached, Forget::OutOfScope);
            }
            return Ok(Action::await_change());
        }
        labels
    } else {
        None
    };
    // The whole request, as it is now: its CSR to judge, its resourceVersion to write
    // the decision against.
    let api: Api<CertificateRequest> = Api::namespaced(
        ctx.s.client.clone(),
        &cached.metadata.namespace.clone().unwrap_or_default(),
    );
    let full = api
        .get_opt(&cached.name_any())
        .await
        .map_err(|e| Error::kube("reading a CertificateRequest to judge it", e))?;
    let Some(full) = full.filter(|cr| cr.metadata.uid.as_deref() == Some(uid.as_str())) else {
        // Deleted: the watch says so too, unless this look came from a list older than it.
        ctx.forget(cached, Forget::Done);
        return Ok(Action::await_change());
    };
    if plan::decided(&full) {
        ctx.forget(cached, Forget::Done);
        return Ok(Action::await_change());
    }
    let cr = &full;
    // The request's issuer is immutable (cert-manager's webhook): what was checked on
    // the cached object holds for the whole one.
    let mut facts = match RequestFacts::from_request(cr) {
        Ok(facts) => facts,
        Err(e) => return ctx.decide(cr, plan::unreadable(&e)).await,
    };
    if facts.duration.is_none() {
        // A request that names no lifetime gets the issuer's default: a certwright
        // issuer's is known once the issuer is; until then the request waits.
        match ctx.s.issuer_default_duration(
            &cr.spec.issuer_ref.group,
            &cr.spec.issuer_ref.kind,
            &namespace,
            &cr.spec.issuer_ref.name,
        ) {
            Ok(default) => facts.issuer_default_duration = default,
            Err(()) => {
                let waits = ctx.remember(&uid, |r| {
                    r.issuer_waits = r.issuer_waits.saturating_add(1);
                    r.issuer_waits
                });
                ctx.wait(
                    cr,
                    None,
                    plan::EventReason::IssuerUnknown,
                    format!(
                        "The request names no duration and {} {} is not known yet: its default lifetime decides whether policy allows the request, so it waits for the issuer",
                        cr.spec.issuer_ref.kind, cr.spec.issuer_ref.name
                    ),
                );
                let wait = ISSUER_WAIT
                    .saturating_mul(1u32 << waits.clamp(1, 7).saturating_sub(1))
                    .min(MAX_FAILURE_WAIT);
                return Ok(Action::requeue(wait));
            }
        }
    }
    let verdict = ctx.evaluate(&set, &facts, labels.as_ref()).await?;
    let step = plan::plan(verdict, &facts, ctx.config.unmatched, ctx.config.evaluation);
    match step {
        Step::Approve { .. } | Step::Deny { .. } => ctx.decide(cr, step).await,
        Step::Leave => {
            lock(&ctx.remembered).remove(&uid);
            Ok(Action::await_change())
        }
        Step::Wait {
            waiting,
            reason,
            note,
        } => {
            ctx.wait(cr, Some(waiting), reason, note);
            Ok(Action::await_change())
        }
        Step::CheckTickets {
            checks,
            all,
            policies,
        } => {
            let named: Vec<String> = checks.iter().map(|(_, t)| t.clone()).collect();
            let not_before = ctx.remember(&uid, |r| {
                if r.tickets != named {
                    r.tickets = named;
                    r.ticket_looks = 0;
                    r.next_ticket_check = None;
                }
                r.next_ticket_check
            });
            let now = Instant::now();
            if let Some(at) = not_before
                && at > now
            {
                return Ok(Action::requeue(at - now));
            }
            let reference = format!(
                "{namespace}/{}",
                cr.annotations()
                    .get(CERTIFICATE_NAME_ANNOTATION)
                    .cloned()
                    .unwrap_or_else(|| cr.name_any())
            );
            let mut answers = Vec::with_capacity(checks.len());
            for (due, ticket) in checks {
                let answer = ctx.tickets.check(&due.config, &ticket, &reference).await;
                answers.push((due, ticket, answer));
            }
            // Policies changed while the ticket system answered: decide afresh.
            if !Arc::ptr_eq(&set, &ctx.policies()) {
                return Ok(Action::requeue(CONFLICT_WAIT));
            }
            let step = plan::after_tickets(&answers, all, &policies);
            match step {
                Step::Wait {
                    waiting,
                    reason,
                    note,
                } => {
                    let looks = ctx.remember(&uid, |r| {
                        r.ticket_looks += 1;
                        r.ticket_looks
                    });
                    let wait = answers
                        .iter()
                        .map(|(due, _, _)| due.config.wait_after(looks))
                        .min()
                        .unwrap_or(certwright_policy::ticket::DEFAULT_RECHECK);
                    ctx.remember(&uid, |r| r.next_ticket_check = Some(Instant::now() + wait));
                    ctx.wait(cr, Some(waiting), reason, note);
                    Ok(Action::requeue(wait))
                }
                step => ctx.decide(cr, step).await,
            }
        }
    }
}

impl Ctx {
    fn policies(&self) -> Arc<PolicySet> {
        lock(&self.policies).clone()
    }

    /// Whether a request is the approver's, on the policies given and what is known of
    /// its namespace's labels ([`scope::scope`]).
    fn scope(&self, cached: &CachedRequest, set: &PolicySet, labels: Labels<'_>) -> Scope {
        let namespace = cached.metadata.namespace.as_deref().unwrap_or_default();
        scope::scope(
            &cached.spec.issuer_ref,
            namespace,
            self.s.group,
            // Only requests whose signer certwright may approve (the chart's
            // policy.approveSignerNames): cert-manager's webhook refuses other decisions.
            |issuer| self.config.approves(&self.signer_of(issuer, namespace)),
            self.config.unmatched,
            set,
            labels,
        )
    }

    /// Whether the store holds a request: undecided, and the approver's on the current
    /// policies and the namespace labels the watch has seen.
    fn holds(&self, cached: &CachedRequest) -> bool {
        if decided(cached) {
            return false;
        }
        let namespace = cached.metadata.namespace.as_deref().unwrap_or_default();
        let stored = self.namespaces.get(&ObjectRef::new(namespace));
        let labels = stored
            .as_deref()
            .map_or(Labels::Unknown, |ns| Labels::Known(ns.labels()));
        self.scope(cached, &self.policies(), labels) != Scope::Others
    }

    /// Drops a request from the store (and what is remembered of it): decided, gone,
    /// or not the approver's ([`Forget`]).
    fn forget(&self, cached: &CachedRequest, why: Forget) {
        if let Some(uid) = &cached.metadata.uid {
            lock(&self.remembered).remove(uid);
        }
        // The receiving end closes only when the approver stops.
        let _ = self
            .replay
            .unbounded_send(Feed::Forget(cached.clone(), why));
    }

    fn remember<T>(&self, uid: &str, f: impl FnOnce(&mut Remembered) -> T) -> T {
        f(lock(&self.remembered).entry(uid.to_string()).or_default())
    }

    /// The labels of a namespace (`None` when it does not exist), and whether they come
    /// from the watch: they are read when the watch has not seen the namespace yet (one
    /// created just before its request), so that a policy selecting by label is never
    /// skipped for want of them.
    async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<(Option<BTreeMap<String, String>>, bool), Error> {
        if let Some(ns) = self.namespaces.get(&ObjectRef::new(namespace)) {
            return Ok((Some(ns.labels().clone()), true));
        }
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(self.s.client.clone());
        match api.get_metadata_opt(namespace).await {
            Ok(found) => Ok((found.map(|ns| ns.labels().clone()), false)),
            Err(e) => Err(Error::kube(
                format!("reading the labels of namespace {namespace}"),
                e,
            )),
        }
    }

    /// The signer a request names, as cert-manager's webhook names it when it checks
    /// who may approve: `<resource>.<group>/<namespace>.<name>`, or
    /// `<resource>.<group>/<name>` for a cluster-scoped issuer.
    fn signer_of(&self, issuer: &Issuer, namespace: &str) -> String {
        let own = |resource: &kube::core::ApiResource| {
            issuer.group == resource.group && issuer.kind == resource.kind
        };
        let (plural, cluster) = if own(&self.s.cluster_resource) {
            (self.s.cluster_resource.plural.clone(), true)
        } else if own(&self.s.namespaced_resource) {
            (self.s.namespaced_resource.plural.clone(), false)
        } else {
            plan::resource_of(&issuer.kind)
        };
        plan::signer_name(&plural, issuer, namespace, cluster)
    }

    /// The verdict on a request: the applicable policies (under `any`, those the
    /// requester may `use`), then [`decide`].
    async fn evaluate(
        &self,
        set: &PolicySet,
        facts: &RequestFacts,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<Verdict, Error> {
        let mut applicable = set.applicable(facts, labels);
        if self.config.evaluation == Evaluation::Any {
            let mut usable = Vec::with_capacity(applicable.len());
            for policy in applicable {
                if self.may_use(facts, &policy.name).await? {
                    usable.push(policy);
                }
            }
            applicable = usable;
        }
        Ok(decide(&applicable, facts, self.config.evaluation))
    }

    /// Whether the requester may `use` the policy, in the request's namespace (a
    /// RoleBinding there, or a ClusterRoleBinding).
    async fn may_use(&self, facts: &RequestFacts, policy: &str) -> Result<bool, Error> {
        let requester = &facts.requester;
        if requester.username.is_empty() && requester.groups.is_empty() {
            return Ok(false);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(requester.username.clone()).filter(|u| !u.is_empty()),
                groups: Some(requester.groups.clone()).filter(|g| !g.is_empty()),
                uid: Some(requester.uid.clone()).filter(|u| !u.is_empty()),
                extra: Some(requester.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(certwright_api::GROUP.to_string()),
                    resource: Some("issuancepolicies".to_string()),
                    verb: Some("use".to_string()),
                    namespace: Some(facts.namespace.clone()),
                    name: Some(policy.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.s.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                Error::kube(
                    "asking whether the requester may use an IssuancePolicy (SubjectAccessReview)",
                    e,
                )
            })?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// Tells the request's owner what it waits for (once per distinct note) and counts
    /// it as waiting.
    fn wait(
        &self,
        cr: &CertificateRequest,
        waiting: Option<Waiting>,
        reason: plan::EventReason,
        note: String,
    ) {
        let uid = cr.metadata.uid.clone().unwrap_or_default();
        let since = cr
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or_else(jiff::Timestamp::now, |t| t.0);
        let tell = self.remember(&uid, |r| {
            if let Some(waiting) = waiting {
                r.waiting = Some((waiting, since));
            }
            if r.told.as_deref() == Some(note.as_str()) {
                false
            } else {
                r.told = Some(note.clone());
                true
            }
        });
        if tell {
            info!(
                namespace = cr.namespace().unwrap_or_default(),
                name = cr.name_any(),
                reason = reason.as_str(),
                "CertificateRequest waits for approval"
            );
            self.s.events.emit(Transition {
                regarding: object_reference(cr),
                reason: reason.as_str(),
                note,
                warning: reason.warning(),
            });
        }
    }

    /// Writes `Approved` or `Denied` on the request, unless someone decided it
    /// meanwhile (the write carries the resourceVersion it was decided on).
    async fn decide(&self, cr: &CertificateRequest, step: Step) -> Result<Action, Error> {
        let Some(condition) = plan::condition(&step, jiff::Timestamp::now()) else {
            return Ok(Action::await_change());
        };
        // Leadership lost or shutting down: decided on a view that may be stale, and
        // another replica decides now.
        if self.s.stopping.is_cancelled() {
            return Ok(Action::await_change());
        }
        let namespace = cr.namespace().unwrap_or_default();
        let name = cr.name_any();
        let mut conditions: Vec<certwright_api::Condition> = cr
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        conditions.set_condition(condition, jiff::Timestamp::now());
        let patch = json!({
            "metadata": {"resourceVersion": cr.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        let api: Api<CertificateRequest> = Api::namespaced(self.s.client.clone(), &namespace);
        let params = PatchParams {
            field_manager: Some(self.s.config.controller_name.clone()),
            ..Default::default()
        };
        match api
            .patch_status(&name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Changed meanwhile (perhaps decided by a person): the watch brings the new
            // version, which is looked at afresh.
            Err(e) if api_code(&e) == Some(409) => return Ok(Action::requeue(CONFLICT_WAIT)),
            Err(e) if api_code(&e) == Some(404) => return Ok(Action::await_change()),
            // cert-manager's webhook refuses a decision from an approver that may not
            // `approve` the request's signer: tell the owner, and back off.
            Err(e) if matches!(api_code(&e), Some(403 | 422)) => {
                let said = match &e {
                    kube::Error::Api(status) => status.message.clone(),
                    other => other.to_string(),
                };
                self.wait(
                    cr,
                    None,
                    plan::EventReason::PolicyDecisionRefused,
                    format!(
                        "The API server refused certwright's decision: {said}. Does the controller hold `approve` on this signer (the chart's policy.approveSignerNames)?"
                    ),
                );
                return Err(Error::kube(
                    format!("writing the policy decision on CertificateRequest {namespace}/{name}"),
                    e,
                ));
            }
            Err(e) => {
                return Err(Error::kube(
                    format!("writing the policy decision on CertificateRequest {namespace}/{name}"),
                    e,
                ));
            }
        }
        let uid = cr.metadata.uid.clone().unwrap_or_default();
        lock(&self.remembered).remove(&uid);
        let (decision, message, policies, reason) = match &step {
            Step::Approve { message, policies } => (
                "approved",
                message,
                policies,
                plan::EventReason::PolicyApproved,
            ),
            Step::Deny { message, policies } => {
                ("denied", message, policies, plan::EventReason::PolicyDenied)
            }
            _ => return Ok(Action::await_change()),
        };
        for policy in policies {
            self.s.metrics.policy_decision(&namespace, decision, policy);
        }
        info!(%namespace, %name, decision, "CertificateRequest decided by policy");
        self.s.events.emit(Transition {
            regarding: object_reference(cr),
            reason: reason.as_str(),
            note: message.clone(),
            warning: reason.warning(),
        });
        Ok(Action::await_change())
    }
}
