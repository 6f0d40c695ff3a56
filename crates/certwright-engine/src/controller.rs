//! The engine at run time: watches, work queues, workers, and the thin layer that
//! performs what [`crate::decide`] decided. Requests and issuers are reconciled by
//! separate queues; a key is never processed by two workers at once.
//!
//! One file because the request and issuer loops share its caches, work queues and
//! status writers; the decisions themselves are in `decide` and `issuers`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use certwright_api::certificate_request::{
    CONDITION_APPROVED, CONDITION_INVALID_REQUEST, CONDITION_READY, REASON_DENIED,
};
use certwright_api::{
    Base64Bytes, CertificateRequest, Condition, ConditionStatus, Conditions, RequestConditions,
    TEMPLATE_ANNOTATION,
};
use certwright_pki::{Outcome, Requester, SignRequest};
use certwright_x509::Csr;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt as _, StreamExt, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::EngineConfig;
use crate::cached::{CachedRequest, RequestKey};
use crate::checks::{CHECK_TIMEOUT, Checks};
use crate::decide::{Attempt, Decision, IssuerState, Plan, Requeue, StatusChange, decide, plan};
use crate::error::{Error, api_code};
use crate::events::{EventSink, Transition};
use crate::issuers::{
    Fingerprint, Health, IssuerEntry, IssuerKey, NamespacedSecrets, REASON_CA_EXPIRING_SOON,
    REASON_CIRCUIT_OPEN, REASON_SECRET_OUT_OF_SCOPE, REASON_UNREACHABLE, REASON_VERIFIED, Snapshot,
    build_health, check_health, expiring_soon, protection_config,
};
use crate::kinds::{IssuerKinds, IssuerResource};
use crate::metrics::{
    Call, IssuerLabels, Metrics, QUEUE_ISSUERS, QUEUE_REQUESTS, RESOURCE_ISSUER, RESOURCE_REQUEST,
};
use crate::protection::{BreakerState, CallOutcome, Protection};
use crate::submission::{self, Step};
use crate::workqueue::WorkQueue;
use certwright_pki::ca::CaFault;

/// How often the pending and cached gauges are computed.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// Issuers reconciled at once (health checks run off these workers, see `checks`).
const ISSUER_WORKERS: usize = 4;
/// Attempts of a write that failed for a reason other than a conflict, before the
/// result is kept for a later attempt.
const WRITE_ATTEMPTS: u32 = 3;
/// How many times a status write is retried after a 409 before trying again later.
const CONFLICT_RETRIES: usize = 5;

/// What the engine keeps per request that is neither terminal nor unapproved.
struct RequestEntry {
    cached: CachedRequest,
    /// Failed attempts so far (for backoff).
    attempts: u32,
    /// No attempt before this instant (backoff, CA poll interval).
    not_before: Option<Instant>,
    /// Hash of the last Ready reason and message written, to skip identical writes.
    last_written: Option<u64>,
    /// Its issuer changed (became usable, or was rebuilt) after the last look at the
    /// request began: until a look begins afresh, no backoff or poll time is set, since
    /// one decided before the change would hold the request back for nothing.
    woken: bool,
}

/// A result on its way to a request, kept until it is written.
struct Unwritten {
    /// The request's uid: the result is never written onto a namesake.
    uid: String,
    /// The issuer, for metrics and issuer faults.
    issuer: Option<IssuerKey>,
    /// The built issuer whose backend gave this answer, when the PKI answered: an issuer
    /// fault is only recorded against that build, never against a rebuild (rotated
    /// credentials) that the answer says nothing about.
    answered_by: Option<Arc<IssuerEntry>>,
    plan: Plan,
    /// Whether the request's record of a submission is cleared with it (the CA keeps
    /// nothing of the submission, or holds it under the plan's pending id).
    clear_submitted: bool,
    /// Failed attempts to write it so far (for backoff).
    write_failures: u32,
}

impl Unwritten {
    fn new(uid: String, issuer: Option<IssuerKey>, plan: Plan) -> Self {
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
    fn answered(uid: String, issuer: IssuerKey, entry: Arc<IssuerEntry>, plan: Plan) -> Self {
        Unwritten {
            answered_by: Some(entry),
            ..Unwritten::new(uid, Some(issuer), plan)
        }
    }
}

/// A per-request delay of up to a second, so that requests deferred together do not
/// all come back in the same instant.
fn spread(key: &RequestKey) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    Duration::from_millis(h.finish() % 1000)
}

fn circuit_open() -> Health {
    Health {
        reason: REASON_CIRCUIT_OPEN,
        message: "The PKI failed repeatedly; calls are paused and probed periodically (circuit breaker open)".to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hash_of(reason: &str, message: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    reason.hash(&mut h);
    message.hash(&mut h);
    h.finish()
}

/// The state shared by all watchers and workers.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Metrics,
    pub(crate) events: EventSink,
    pub(crate) group: &'static str,
    namespaced_kind: String,
    cluster_kind: String,
    pub(crate) namespaced_resource: kube::core::ApiResource,
    pub(crate) cluster_resource: kube::core::ApiResource,
    snapshots: Mutex<HashMap<IssuerKey, Snapshot>>,
    pub(crate) issuers: Mutex<HashMap<IssuerKey, Arc<IssuerEntry>>>,
    last_checked: Mutex<HashMap<IssuerKey, Instant>>,
    secret_index: Mutex<HashMap<(String, String), HashSet<IssuerKey>>>,
    requests: Mutex<HashMap<RequestKey, RequestEntry>>,
    unwritten: Mutex<HashMap<RequestKey, Unwritten>>,
    request_queue: WorkQueue<RequestKey>,
    issuer_queue: WorkQueue<IssuerKey>,
    /// Issuer health checks under way and their verdicts.
    checks: Checks,
    /// Issuer watchers that have completed their initial list (two when synced).
    issuer_watchers_synced: AtomicUsize,
    /// Cancelled when the engine must stop signing (shutdown or lost leadership): no
    /// new call reaches a PKI after this, even from a worker already past its checks.
    pub(crate) stopping: CancellationToken,
    /// What local CAs signed, per issuer and CA, recorded before each signature.
    ledger: Arc<crate::ca_lifecycle::Ledger>,
    /// The trust bundle last written to each issuer's bundle ConfigMap, and when.
    bundles: Mutex<HashMap<IssuerKey, (String, Instant)>>,
}

/// The reconcile engine for the issuer kinds `K`.
pub struct Engine<K: IssuerKinds> {
    shared: Arc<Shared>,
    _kinds: PhantomData<K>,
}

impl<K: IssuerKinds> Engine<K> {
    /// An engine that talks to the API server through `client` and reports to
    /// `metrics`. Events are written in the background.
    pub fn new(client: Client, config: EngineConfig, metrics: Metrics) -> Self {
        let events = EventSink::start(
            client.clone(),
            config.controller_name.clone(),
            config.instance.clone(),
        );
        let shared = Shared {
            group: K::GROUP,
            namespaced_kind: K::Namespaced::kind(&()).into_owned(),
            cluster_kind: K::Cluster::kind(&()).into_owned(),
            namespaced_resource: kube::core::ApiResource::erase::<K::Namespaced>(&()),
            cluster_resource: kube::core::ApiResource::erase::<K::Cluster>(&()),
            client,
            config,
            metrics: metrics.clone(),
            events,
            snapshots: Mutex::default(),
            issuers: Mutex::default(),
            last_checked: Mutex::default(),
            secret_index: Mutex::default(),
            requests: Mutex::default(),
            unwritten: Mutex::default(),
            request_queue: WorkQueue::with_metrics(metrics.queue(QUEUE_REQUESTS)),
            issuer_queue: WorkQueue::with_metrics(metrics.queue(QUEUE_ISSUERS)),
            checks: Checks::new(),
            issuer_watchers_synced: AtomicUsize::new(0),
            stopping: CancellationToken::new(),
            ledger: Arc::default(),
            bundles: Mutex::default(),
        };
        Engine {
            shared: Arc::new(shared),
            _kinds: PhantomData,
        }
    }

    /// Runs until `shutdown` is cancelled, then stops taking new work, lets in-flight
    /// signing finish and write its results, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let s = self.shared;
        let client = s.client.clone();
        // Fail fast, with a cause a person can act on, when a kind is not served.
        let probe = kube::api::ListParams::default().limit(1);
        Api::<CachedRequest>::all(client.clone())
            .list_metadata(&probe)
            .await
            .map_err(|e| {
                Error::kube(
                    "listing cert-manager CertificateRequests (is cert-manager installed?)",
                    e,
                )
            })?;
        Api::<K::Namespaced>::all(client.clone())
            .list_metadata(&probe)
            .await
            .map_err(|e| {
                Error::kube(
                    format!("listing {} (are the CRDs installed?)", s.namespaced_kind),
                    e,
                )
            })?;
        Api::<K::Cluster>::all(client.clone())
            .list_metadata(&probe)
            .await
            .map_err(|e| {
                Error::kube(
                    format!("listing {} (are the CRDs installed?)", s.cluster_kind),
                    e,
                )
            })?;
        // Everything this run starts ends with it: when its future is dropped (leadership
        // lost, the embedder's task aborted), no watcher, worker or check goes on, and no
        // call reaches a PKI afterwards.
        if s.config.policy.is_some() {
            Api::<certwright_api::IssuancePolicy>::all(client.clone())
                .list_metadata(&probe)
                .await
                .map_err(|e| {
                    Error::kube(
                        "listing IssuancePolicies for the policy approver (is the CRD installed?)",
                        e,
                    )
                })?;
        }
        // With the policy approver on, it sees the engine's CertificateRequest watch.
        let (feed, requests) = if s.config.policy.is_some() {
            let (feed, requests) = futures::channel::mpsc::unbounded();
            (Some(feed), Some(requests))
        } else {
            (None, None)
        };
        let _stop_on_drop = s.stopping.clone().drop_guard();
        let watchers = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(watch_issuers(
                s.clone(),
                Api::<K::Namespaced>::all(client.clone()),
                false,
                watchers.clone(),
            )),
            tokio::spawn(watch_issuers(
                s.clone(),
                Api::<K::Cluster>::all(client.clone()),
                true,
                watchers.clone(),
            )),
            tokio::spawn(watch_secrets(s.clone(), watchers.clone())),
            tokio::spawn(watch_requests(s.clone(), watchers.clone(), feed)),
            tokio::spawn(report_pending(s.clone(), watchers.clone())),
        ];
        let mut tasks = tasks;
        if s.config.kubernetes_csr {
            let signers = crate::csr::plan::Signers::new(
                s.group,
                &s.cluster_resource.plural,
                &s.namespaced_resource.plural,
            );
            tasks.push(tokio::spawn(crate::csr::run(
                s.clone(),
                signers,
                watchers.clone(),
            )));
        }
        if let (Some(policy), Some(requests)) = (s.config.policy.clone(), requests) {
            tasks.push(tokio::spawn(crate::approver::run(
                s.clone(),
                policy,
                requests,
                watchers.clone(),
            )));
        }
        let mut tasks = Owned(tasks);
        let mut workers = Owned(Vec::new());
        for _ in 0..ISSUER_WORKERS {
            let s = s.clone();
            workers.0.push(tokio::spawn(async move {
                while let Some(key) = s.issuer_queue.next().await {
                    // A panic must neither strand the key nor shrink the pool.
                    let run = AssertUnwindSafe(s.reconcile_issuer(&key)).catch_unwind();
                    if run.await.is_err() {
                        tracing::error!(?key, "issuer reconcile panicked; retrying later");
                        s.issuer_queue
                            .add_after(key.clone(), Duration::from_secs(30));
                    }
                    s.issuer_queue.done(&key);
                }
            }));
        }
        for _ in 0..s.config.max_concurrent_reconciles.max(1) {
            let s = s.clone();
            workers.0.push(tokio::spawn(async move {
                while let Some(key) = s.request_queue.next().await {
                    let run = AssertUnwindSafe(s.reconcile_request(&key)).catch_unwind();
                    if run.await.is_err() {
                        tracing::error!(%key, "request reconcile panicked; retrying later");
                        s.request_queue.add_after(key.clone(), s.config.retry.max);
                    }
                    s.request_queue.done(&key);
                }
            }));
        }
        info!(group = s.group, "engine started");
        shutdown.cancelled().await;
        info!("shutting down: finishing in-flight requests");
        s.stopping.cancel();
        watchers.cancel();
        s.request_queue.shutdown();
        s.issuer_queue.shutdown();
        for w in &mut workers.0 {
            let _ = w.await;
        }
        for t in &mut tasks.0 {
            let _ = t.await;
        }
        info!("engine stopped");
        Ok(())
    }
}

/// Tasks aborted when dropped: a run owns what it spawned.
struct Owned(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Owned {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn watch_issuers<R: IssuerResource>(
    s: Arc<Shared>,
    api: Api<R>,
    cluster: bool,
    stop: CancellationToken,
) {
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut seen: Option<HashSet<IssuerKey>> = None;
    let mut synced = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = stream.next() => match event { Some(e) => e, None => return },
        };
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                let key = IssuerKey {
                    cluster,
                    namespace: if cluster {
                        String::new()
                    } else {
                        obj.namespace().unwrap_or_default()
                    },
                    name: obj.name_any(),
                };
                if let Some(seen) = &mut seen {
                    seen.insert(key.clone());
                }
                let status = obj.issuer_status();
                let snapshot = Snapshot {
                    uid: obj.meta().uid.clone(),
                    generation: obj.meta().generation,
                    spec: obj.issuer_spec().clone(),
                    conditions: obj.conditions().to_vec(),
                    ca: crate::issuers::SeenCaStatus {
                        trust_bundle: status.and_then(|s| s.trust_bundle.clone()),
                        rotation: status.and_then(|s| s.rotation.clone()),
                        backend: status.and_then(|s| s.backend.clone()),
                    },
                    issued: status.map(|s| s.issued.clone()).unwrap_or_default(),
                    resource_version: obj.meta().resource_version.clone(),
                    secret_names: obj.secret_names(),
                    build: {
                        let obj = obj.clone();
                        Arc::new(move |secrets| obj.build_backend(secrets))
                    },
                };
                lock(&s.snapshots).insert(key.clone(), snapshot);
                s.issuer_queue.add(key);
            }
            Ok(Event::Delete(obj)) => {
                let key = IssuerKey {
                    cluster,
                    namespace: if cluster {
                        String::new()
                    } else {
                        obj.namespace().unwrap_or_default()
                    },
                    name: obj.name_any(),
                };
                lock(&s.snapshots).remove(&key);
                s.issuer_queue.add(key);
            }
            Ok(Event::Init) => seen = Some(HashSet::new()),
            Ok(Event::InitDone) => {
                if let Some(seen) = seen.take() {
                    let gone: Vec<IssuerKey> = lock(&s.snapshots)
                        .keys()
                        .filter(|k| k.cluster == cluster && !seen.contains(k))
                        .cloned()
                        .collect();
                    for key in gone {
                        lock(&s.snapshots).remove(&key);
                        s.issuer_queue.add(key);
                    }
                }
                if !synced {
                    synced = true;
                    s.issuer_watchers_synced.fetch_add(1, Ordering::SeqCst);
                    // Requests that arrived first waited for the issuers to be known.
                    s.requeue_all_requests();
                }
            }
            Err(e) => warn!(error = %e, cluster, "issuer watch failed; retrying"),
        }
    }
}

/// The error as a tenant's status may tell it: a local CA's refusal of its own
/// certificate or key is certwright's words about the tenant's own Secret, told whole;
/// anything else is redacted as [`IssuerEntry::tellable`] decides.
fn tell_unless_own(
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

async fn watch_secrets(s: Arc<Shared>, stop: CancellationToken) {
    // Metadata only: Secret data is read with a GET when a backend is built, never cached.
    // With access to some namespaces only, one watch per namespace: a cluster-wide watch
    // would be Forbidden.
    let watch = |api: Api<PartialObjectMeta<Secret>>| {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed()
    };
    let mut stream = match &s.config.secret_access {
        crate::SecretAccess::All => watch(Api::all(s.client.clone())),
        crate::SecretAccess::Namespaces(namespaces) => futures::stream::select_all(
            namespaces
                .iter()
                .map(|namespace| watch(Api::namespaced(s.client.clone(), namespace))),
        )
        .boxed(),
    };
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = stream.next() => match event { Some(e) => e, None => return },
        };
        let meta = match event {
            Ok(Event::Apply(m) | Event::InitApply(m) | Event::Delete(m)) => m,
            // After a (re)list, every issuer that uses a Secret is looked at: a Secret
            // deleted while the watch was down shows only as an absence from the list.
            Ok(Event::InitDone) => {
                let issuers: HashSet<IssuerKey> = lock(&s.secret_index)
                    .values()
                    .flat_map(|set| set.iter().cloned())
                    .collect();
                for issuer in issuers {
                    s.issuer_queue.add(issuer);
                }
                continue;
            }
            Ok(Event::Init) => continue,
            Err(e) => {
                warn!(error = %e, "secret watch failed; retrying");
                continue;
            }
        };
        let key = (meta.namespace().unwrap_or_default(), meta.name_any());
        let issuers: Vec<IssuerKey> = lock(&s.secret_index)
            .get(&key)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        for issuer in issuers {
            s.issuer_queue.add(issuer);
        }
    }
}

/// The one CertificateRequest watch of the engine. With the policy approver on, every
/// event goes on to it too (`feed`), slim as the engine keeps it: one watch and one
/// decoding of each request per process.
async fn watch_requests(
    s: Arc<Shared>,
    stop: CancellationToken,
    feed: Option<futures::channel::mpsc::UnboundedSender<Event<CachedRequest>>>,
) {
    let api: Api<CachedRequest> = Api::all(s.client.clone());
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .map_ok(|event| event.modify(|obj| *obj = std::mem::take(obj).slim()))
        .boxed();
    let mut seen: Option<HashSet<RequestKey>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = stream.next() => match event { Some(e) => e, None => return },
        };
        if let (Some(feed), Ok(event)) = (&feed, &event) {
            // The approver's end closes only when it stops, as this watch does.
            let _ = feed.unbounded_send(event.clone());
        }
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                if let Some(seen) = &mut seen {
                    seen.insert(obj.key());
                }
                s.observe_request(obj);
            }
            Ok(Event::Delete(obj)) => {
                let key = obj.key();
                lock(&s.requests).remove(&key);
                lock(&s.unwritten).remove(&key);
            }
            Ok(Event::Init) => seen = Some(HashSet::new()),
            Ok(Event::InitDone) => {
                if let Some(seen) = seen.take() {
                    lock(&s.requests).retain(|k, _| seen.contains(k));
                    lock(&s.unwritten).retain(|k, _| seen.contains(k));
                }
            }
            Err(e) => warn!(error = %e, "CertificateRequest watch failed; retrying"),
        }
    }
}

async fn report_pending(s: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    let mut reported: HashSet<IssuerLabels> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut counts: HashMap<IssuerLabels, i64> = HashMap::new();
        s.metrics
            .set_cached_requests(i64::try_from(lock(&s.requests).len()).unwrap_or(i64::MAX));
        for entry in lock(&s.requests).values() {
            if let Some(key) = s.issuer_key_for(&entry.cached) {
                *counts.entry(s.issuer_metric(&key)).or_default() += 1;
            }
        }
        for label in reported.drain().collect::<Vec<_>>() {
            counts.entry(label).or_insert(0);
        }
        for (label, count) in counts {
            s.metrics.set_pending(&label, count);
            if count > 0 {
                reported.insert(label);
            }
        }
    }
}

impl Shared {
    fn issuer_key_for(&self, r: &CachedRequest) -> Option<IssuerKey> {
        let issuer_ref = &r.spec.issuer_ref;
        if issuer_ref.group != self.group {
            return None;
        }
        if issuer_ref.kind == self.cluster_kind {
            Some(IssuerKey {
                cluster: true,
                namespace: String::new(),
                name: issuer_ref.name.clone(),
            })
        } else if issuer_ref.kind == self.namespaced_kind || issuer_ref.kind.is_empty() {
            Some(IssuerKey {
                cluster: false,
                namespace: r.metadata.namespace.clone().unwrap_or_default(),
                name: issuer_ref.name.clone(),
            })
        } else {
            None
        }
    }

    /// The labels that name the issuer in the metrics.
    pub(crate) fn issuer_metric(&self, key: &IssuerKey) -> IssuerLabels {
        if key.cluster {
            IssuerLabels::new(&self.cluster_kind, self.group, "", &key.name)
        } else {
            IssuerLabels::new(&self.namespaced_kind, self.group, &key.namespace, &key.name)
        }
    }

    pub(crate) fn issuer_label(&self, key: &IssuerKey) -> String {
        if key.cluster {
            format!("{}/{}", self.cluster_kind, key.name)
        } else {
            format!("{}/{}/{}", self.namespaced_kind, key.namespace, key.name)
        }
    }

    /// Takes a watched request into the cache, or drops it when nothing will ever be
    /// needed of it (not ours, terminal, or not yet approved or denied).
    fn observe_request(&self, obj: CachedRequest) {
        let key = obj.key();
        let conditions = obj.conditions();
        let relevant = obj.spec.issuer_ref.group == self.group
            && !conditions.is_terminal()
            && (conditions.is_approved() || conditions.is_denied());
        if !relevant {
            lock(&self.requests).remove(&key);
            if conditions.is_terminal() {
                lock(&self.unwritten).remove(&key);
            }
            return;
        }
        {
            let mut requests = lock(&self.requests);
            match requests.get_mut(&key) {
                // The same object: keep its backoff and what was written.
                Some(entry) if entry.cached.metadata.uid == obj.metadata.uid => entry.cached = obj,
                // New, or deleted and created again under the same name: start afresh.
                _ => {
                    requests.insert(
                        key.clone(),
                        RequestEntry {
                            cached: obj,
                            attempts: 0,
                            not_before: None,
                            last_written: None,
                            woken: false,
                        },
                    );
                }
            }
        }
        self.request_queue.add(key);
    }

    fn requeue_all_requests(&self) {
        let keys: Vec<RequestKey> = lock(&self.requests).keys().cloned().collect();
        for key in keys {
            self.request_queue.add(key);
        }
    }

    /// Looks again at every request waiting for this issuer. With `now`, at once
    /// (the issuer became usable); otherwise each keeps its own backoff or poll time.
    fn requeue_requests_for(&self, issuer: &IssuerKey, now: bool) {
        let mut keys = Vec::new();
        for (key, entry) in lock(&self.requests).iter_mut() {
            if self.issuer_key_for(&entry.cached).as_ref() == Some(issuer) {
                if now {
                    entry.not_before = None;
                    entry.woken = true;
                }
                keys.push(key.clone());
            }
        }
        for key in keys {
            self.request_queue.add(key);
        }
    }

    /// The lifetime an issuer of the engine's kinds gives a request that names none:
    /// `Ok(None)` for an issuer of another kind (or group), `Err(())` while such an
    /// issuer is not known (not yet read, or not yet created).
    pub(crate) fn issuer_default_duration(
        &self,
        group: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Duration>, ()> {
        if group != self.group {
            return Ok(None);
        }
        let key = if kind == self.cluster_kind {
            IssuerKey {
                cluster: true,
                namespace: String::new(),
                name: name.to_string(),
            }
        } else if kind == self.namespaced_kind || kind.is_empty() {
            // An empty kind with the engine's group is signed as the namespaced kind.
            IssuerKey {
                cluster: false,
                namespace: namespace.to_string(),
                name: name.to_string(),
            }
        } else {
            return Ok(None);
        };
        if !self.issuers_synced() {
            return Err(());
        }
        let issuers = lock(&self.issuers);
        let entry = issuers.get(&key).ok_or(())?;
        Ok(Some(
            entry
                .spec
                .default_duration()
                .unwrap_or(certwright_api::issuer::DEFAULT_DURATION),
        ))
    }

    pub(crate) fn issuers_synced(&self) -> bool {
        self.issuer_watchers_synced.load(Ordering::SeqCst) >= 2
    }

    /// Whether exactly this status was the last one written for the request, so that
    /// writing it again can be skipped without reading the object.
    fn already_written(&self, key: &RequestKey, plan: &Plan) -> bool {
        let digest = hash_of(plan.status.reason, &plan.status.message);
        lock(&self.requests)
            .get(key)
            .is_some_and(|e| e.last_written == Some(digest))
    }

    /// Schedules the next look at the request `uid` without touching the API server. The
    /// next look comes at once instead when its issuer changed while this look was under
    /// way (what this one decided may be stale), or when a namesake holds the name now
    /// (it has its own timing, and this decision says nothing about it).
    fn schedule(&self, key: &RequestKey, uid: &str, delay: Duration) {
        let delay = delay.min(self.config.retry.max.max(crate::decide::ISSUER_BACKSTOP));
        let at_once = match lock(&self.requests).get_mut(key) {
            Some(entry) if entry.cached.metadata.uid.as_deref() != Some(uid) => true,
            Some(entry) if entry.woken => true,
            Some(entry) => {
                entry.not_before = Instant::now().checked_add(delay);
                false
            }
            None => false,
        };
        if at_once {
            self.request_queue.add(key.clone());
            return;
        }
        self.request_queue.add_after(key.clone(), delay);
    }

    // ---- requests -------------------------------------------------------------

    async fn reconcile_request(&self, key: &RequestKey) {
        // A PKI answer that could not be written yet is written before anything else, so
        // that a failed write never leads to a second submission. Any other unwritten
        // status (waiting for the issuer, deferred, denied, invalid) carries no PKI
        // result and is decided afresh: the issuer may have become usable meanwhile.
        let unwritten = lock(&self.unwritten).remove(key);
        if let Some(pending) = unwritten
            && pending.answered_by.is_some()
        {
            self.apply(key, pending, None).await;
            return;
        }
        let (cached, not_before) = {
            let mut requests = lock(&self.requests);
            match requests.get_mut(key) {
                Some(e) => {
                    // This look sees the issuer as it is now.
                    e.woken = false;
                    (e.cached.clone(), e.not_before)
                }
                None => return,
            }
        };
        if let Some(at) = not_before {
            let now = Instant::now();
            if at > now {
                self.request_queue.add_after(key.clone(), at - now);
                return;
            }
        }
        if !self.issuers_synced() {
            self.request_queue
                .add_after(key.clone(), Duration::from_millis(100));
            return;
        }
        let issuer_key = self.issuer_key_for(&cached);
        let entry = issuer_key
            .as_ref()
            .and_then(|k| lock(&self.issuers).get(k).cloned());
        let known = issuer_key
            .as_ref()
            .is_some_and(|k| lock(&self.snapshots).contains_key(k));
        if known && entry.as_ref().is_none_or(|e| !e.checked()) {
            // The issuer exists but has not been checked yet: its reconcile requeues us.
            return;
        }
        let health = entry.as_ref().map(|e| e.health());
        let state = match &health {
            None => IssuerState::Missing,
            Some(h) if h.usable() => IssuerState::Ready,
            Some(h) => IssuerState::NotReady {
                message: &h.message,
            },
        };
        let decision = decide(&cached, self.group, state);
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
                Decision::Nothing => return,
                Decision::Deny => crate::decide::plan_denied(),
                Decision::WaitForIssuer { message } => crate::decide::plan_waiting(message),
                Decision::Sign | Decision::Poll { .. } => {
                    if let (Some(entry), Some(issuer_key)) = (entry, issuer_key) {
                        self.attempt(key, &uid, entry, issuer_key).await;
                    }
                    return;
                }
            };
            // Nothing new to say: no read, no write.
            if self.already_written(key, &plan) {
                if let Requeue::After(delay) | Requeue::IssuerChange(delay) = plan.requeue {
                    self.schedule(key, &uid, delay);
                }
                return;
            }
            let pending = Unwritten::new(uid, issuer_key, plan);
            self.apply(key, pending, None).await;
        }
        .instrument(span)
        .await;
    }

    /// Submits or polls a request through the issuer's protection, then reads the full
    /// object and applies the outcome.
    async fn attempt(
        &self,
        key: &RequestKey,
        uid: &str,
        entry: Arc<IssuerEntry>,
        issuer: IssuerKey,
    ) {
        let Some(backend) = entry.backend.clone() else {
            return;
        };
        let (attempts, entry_created) = lock(&self.requests).get(key).map_or((0, None), |e| {
            (e.attempts, e.cached.metadata.creation_timestamp.clone())
        });
        // How often a CA-side pending request is asked about is the backend's
        // (`PendingRequest::retry_after`), within the engine's bound.
        let poll_interval = self.config.max_poll_interval;
        // Protection first: a deferred request costs no API call unless its status
        // changes.
        let admitted = tokio::select! {
            admitted = entry.protection.admit() => admitted,
            _ = self.stopping.cancelled() => return,
        };
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
                if self.already_written(key, &plan) {
                    if let Requeue::After(delay) = plan.requeue {
                        self.schedule(key, uid, delay + spread(key));
                    }
                    return;
                }
                let pending = Unwritten::new(uid.to_string(), Some(issuer), plan);
                self.apply(key, pending, None).await;
                return;
            }
        };
        let api: Api<CertificateRequest> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut full = match api.get(&key.name).await {
            Ok(full) => full,
            Err(e) if api_code(&e) == Some(404) => {
                self.forget_request(key, uid);
                return;
            }
            Err(e) => {
                warn!(error = %e, "could not read the CertificateRequest; retrying");
                self.schedule(key, uid, self.config.retry.min);
                return;
            }
        };
        // The cache may lag behind: the fresh object decides whether this is still the
        // same request, whether it is terminal, and whether the CA already holds it.
        if full.uid().as_deref() != Some(uid) {
            self.request_queue.add(key.clone());
            return;
        }
        if full.is_terminal() {
            self.forget_request(key, uid);
            return;
        }
        // A final verdict reached without a PKI answer, written as any other.
        let concluded = |attempt| {
            let plan = plan(attempt, attempts + 1, self.config.retry, poll_interval);
            Unwritten::new(uid.to_string(), Some(issuer.clone()), plan)
        };
        let request = match sign_request(&full, &entry) {
            Ok(r) => r,
            Err(why) => {
                self.apply(key, concluded(Attempt::Invalid(why)), Some(full))
                    .await;
                return;
            }
        };
        // Leadership may have been lost while this worker waited for a slot.
        if self.stopping.is_cancelled() {
            return;
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
                self.apply(key, concluded(attempt), Some(full)).await;
                return;
            }
            Step::Stopped => return,
            Step::NotRecorded(e) => {
                warn!(error = %e, "could not record the submission on the request; nothing was submitted");
                self.schedule(key, uid, self.config.retry.delay(attempts + 1));
                return;
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
        self.apply(key, pending, Some(full)).await;
    }

    /// Keeps the issuer's condition in step with its breaker: CircuitOpen while it is
    /// open, Verified again once a call succeeds.
    async fn reflect_breaker(&self, issuer: &IssuerKey, entry: &IssuerEntry, outcome: CallOutcome) {
        let state = entry.protection.breaker();
        self.metrics
            .set_breaker_state(&self.issuer_metric(issuer), state.metric_value());
        let current = entry.health();
        let next = match (state, outcome) {
            (BreakerState::Open { .. }, _) => circuit_open(),
            (BreakerState::Closed, CallOutcome::Success)
                if matches!(current.reason, REASON_UNREACHABLE | REASON_CIRCUIT_OPEN) =>
            {
                Health {
                    reason: REASON_VERIFIED,
                    message: "The PKI answers again".to_string(),
                }
            }
            _ => return,
        };
        if entry.set_health(next) {
            self.write_issuer_status(issuer, entry).await;
        }
    }

    /// Performs a plan: persist the pending id, write the status (retrying conflicts
    /// without signing again), emit the event, update metrics, requeue. A plan that
    /// cannot be written is kept and written on the next attempt, before anything else.
    async fn apply(&self, key: &RequestKey, pending: Unwritten, full: Option<CertificateRequest>) {
        let api: Api<CertificateRequest> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut full = match full {
            Some(f) => f,
            None => match api.get(&key.name).await {
                Ok(f) => f,
                Err(e) if api_code(&e) == Some(404) => return,
                Err(e) => {
                    warn!(error = %e, "could not read the CertificateRequest to write a result; retrying");
                    self.defer_write(key, pending);
                    return;
                }
            },
        };
        // A result belongs to one object: never to a namesake created later.
        if full.uid().as_deref() != Some(pending.uid.as_str()) {
            debug!("the request was replaced; dropping the result for the old one");
            self.request_queue.add(key.clone());
            return;
        }
        if full.is_terminal() {
            self.forget_request(key, &pending.uid);
            return;
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
                    self.defer_write(key, pending);
                    return;
                }
            }
        }
        // 2. The status.
        match self.write_status(&api, key, full, &pending).await {
            Ok(Some(written)) => full = written,
            Ok(None) => {
                // Became terminal meanwhile, was replaced, or was deleted.
                self.forget_request(key, &pending.uid);
                return;
            }
            Err(e) => {
                warn!(error = %e, "could not write the status; retrying without signing again");
                self.defer_write(key, pending);
                return;
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
            reason: plan.event.0,
            note: plan.status.message.clone(),
            warning: plan.event.1,
        });
        if plan.event.1 {
            warn!(reason = plan.status.reason, message = %plan.status.message, "CertificateRequest updated");
        } else {
            info!(reason = plan.status.reason, message = %plan.status.message, "CertificateRequest updated");
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
                        reason,
                        message: message.clone(),
                    }) {
                        self.write_issuer_status(issuer, &current).await;
                    }
                }
                (None, _) => {}
            }
        }
        // 6. When to look again (only for this object: a namesake created meanwhile has
        //    its own entry and is looked at afresh).
        let digest = hash_of(plan.status.reason, &plan.status.message);
        let mut requests = lock(&self.requests);
        if !self.owns_entry(&requests, key, &pending.uid) {
            return;
        }
        match plan.requeue {
            Requeue::Never => {
                requests.remove(key);
            }
            Requeue::After(delay) | Requeue::IssuerChange(delay) => {
                if let Some(entry) = requests.get_mut(key) {
                    entry.last_written = Some(digest);
                    entry.attempts = match plan.breaker {
                        CallOutcome::Success => 0,
                        _ if plan.counts_as_attempt() => entry.attempts.saturating_add(1),
                        _ => entry.attempts,
                    };
                }
                drop(requests);
                let delay = if rebuilt_meanwhile {
                    Duration::ZERO
                } else {
                    delay
                };
                self.schedule(key, &pending.uid, delay);
            }
        }
    }

    /// Counts one sign, poll or recover call in the metrics, by its outcome.
    pub(crate) fn count_call(
        &self,
        issuer: &IssuerKey,
        resource: &str,
        backend: &str,
        operation: &str,
        result: &Result<Outcome, certwright_pki::Error>,
        started: std::time::Instant,
    ) {
        let outcome = match result {
            Ok(Outcome::Issued(_)) => "success",
            Ok(_) => "pending",
            Err(e) => e.metric_label(),
        };
        let call = Call {
            issuer: &self.issuer_metric(issuer),
            backend,
            resource,
            operation,
            outcome,
        };
        self.metrics
            .backend_call(&call, Some(started.elapsed().as_secs_f64()));
        debug!(operation, outcome, "PKI answered");
    }

    /// The backend's health check within `timeout`, counted in the metrics.
    async fn health_check(
        &self,
        issuer: &IssuerKey,
        backend: &Arc<dyn certwright_pki::Backend>,
        timeout: Duration,
    ) -> Result<Result<certwright_pki::Health, certwright_pki::Error>, tokio::time::error::Elapsed>
    {
        let result = tokio::time::timeout(timeout, backend.check()).await;
        let call = Call {
            issuer: &self.issuer_metric(issuer),
            backend: backend.kind(),
            resource: RESOURCE_ISSUER,
            operation: "check",
            outcome: match &result {
                Ok(Ok(_)) => "success",
                Ok(Err(e)) => e.metric_label(),
                Err(_) => "transient",
            },
        };
        self.metrics.backend_call(&call, None);
        result
    }

    /// One request's refusal looked like the issuer's (unauthorized, misconfigured): the
    /// issuer's own health check decides whose it is before the issuer, shared by other
    /// requests and teams, is marked not Ready. A healthy check makes it the request's
    /// (its template override, a profile refused for it), which fails alone.
    pub(crate) async fn confirm_issuer_fault(
        &self,
        issuer: &IssuerKey,
        entry: &IssuerEntry,
        backend: &Arc<dyn certwright_pki::Backend>,
        plan: Plan,
    ) -> Plan {
        match self.health_check(issuer, backend, CHECK_TIMEOUT).await {
            Ok(Ok(_)) => {
                info!(issuer = %self.issuer_label(issuer), "the issuer's health check passed: the refusal was this request's");
                plan.request_scoped()
            }
            Ok(Err(e)) if e.is_issuer_fault() => {
                let fault = CaFault::of(&e);
                let health = check_health(&tell_unless_own(entry, e, fault), fault);
                plan.issuer_confirmed(health.reason, health.message)
            }
            _ => plan.issuer_unconfirmed(self.config.retry.max),
        }
    }

    /// Drops a request from the cache once nothing more is needed of the object `uid`
    /// (finished, terminal or deleted). A namesake created meanwhile under another uid
    /// keeps its entry and is looked at.
    fn forget_request(&self, key: &RequestKey, uid: &str) {
        let mut requests = lock(&self.requests);
        if self.owns_entry(&requests, key, uid) {
            requests.remove(key);
        }
    }

    /// Whether the cache entry under `key` is the object `uid`. When a namesake (another
    /// uid) holds it, that one is queued to be looked at afresh.
    fn owns_entry(
        &self,
        requests: &HashMap<RequestKey, RequestEntry>,
        key: &RequestKey,
        uid: &str,
    ) -> bool {
        match requests.get(key) {
            Some(entry) if entry.cached.metadata.uid.as_deref() == Some(uid) => true,
            Some(_) => {
                // The queue has its own lock and never takes this one.
                self.request_queue.add(key.clone());
                false
            }
            None => false,
        }
    }

    /// Keeps a result that could not be written, to be written on the next attempt
    /// (with backoff), before anything else is done for this request.
    fn defer_write(&self, key: &RequestKey, mut pending: Unwritten) {
        pending.write_failures = pending.write_failures.saturating_add(1);
        let delay = self.config.retry.delay(pending.write_failures);
        lock(&self.unwritten).insert(key.clone(), pending);
        self.request_queue.add_after(key.clone(), delay);
    }

    /// Writes the status with the object's resourceVersion as a precondition. On a
    /// conflict it reads the object again and recomputes the conditions (never signing
    /// again); other failures are retried a few times at once. `Ok(None)` when the
    /// request became terminal, was replaced or disappeared meanwhile.
    async fn write_status(
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

    // ---- issuers --------------------------------------------------------------

    async fn reconcile_issuer(self: &Arc<Self>, key: &IssuerKey) {
        let label = self.issuer_label(key);
        let snapshot = lock(&self.snapshots).get(key).cloned();
        let Some(snapshot) = snapshot else {
            if lock(&self.issuers).remove(key).is_some() {
                info!(issuer = %label, "issuer deleted");
                self.metrics.forget_issuer(&self.issuer_metric(key));
            }
            lock(&self.last_checked).remove(key);
            self.checks.forget(key);
            self.ledger.forget(key);
            lock(&self.bundles).remove(key);
            self.index_secrets(key, None);
            self.requeue_requests_for(key, true);
            return;
        };
        let namespace = if key.cluster {
            self.config.cluster_resource_namespace.clone()
        } else {
            key.namespace.clone()
        };
        // Validate before reading: no Secret is read for a spec that is invalid, so a
        // name that is not a DNS-1123 name never reaches a request path.
        let invalid = certwright_api::validate_issuer_spec(&snapshot.spec).err();
        // Secrets outside the namespaces the controller may read are not asked for: the
        // answer would be Forbidden, and the issuer says why it cannot work instead.
        let out_of_scope = (invalid.is_none() && !snapshot.secret_names.is_empty())
            .then(|| self.config.secret_access.refusal(&namespace))
            .flatten();
        let secret_names: &[String] = match (&invalid, &out_of_scope) {
            (None, None) => &snapshot.secret_names,
            _ => &[],
        };
        self.index_secrets(key, Some((&namespace, secret_names)));
        let secrets_api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let mut data = BTreeMap::new();
        let mut versions = Vec::new();
        for name in secret_names {
            match secrets_api.get_opt(name).await {
                Ok(Some(secret)) => {
                    versions.push((name.clone(), secret.metadata.resource_version.clone()));
                    let mut map: BTreeMap<String, Vec<u8>> = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    for (k, v) in secret.string_data.unwrap_or_default() {
                        map.insert(k, v.into_bytes());
                    }
                    data.insert(name.clone(), map);
                }
                Ok(None) => versions.push((name.clone(), None)),
                Err(e) => {
                    warn!(issuer = %label, secret = %name, error = %e, "could not read a Secret; retrying");
                    self.issuer_queue
                        .add_after(key.clone(), Duration::from_secs(5));
                    return;
                }
            }
        }
        let fingerprint = Fingerprint {
            uid: snapshot.uid.clone(),
            generation: snapshot.generation,
            secrets: versions,
        };
        let existing = lock(&self.issuers).get(key).cloned();
        // A recreated issuer (another uid) starts a new record.
        if existing
            .as_ref()
            .is_some_and(|e| e.fingerprint.uid != fingerprint.uid)
        {
            self.ledger.forget(key);
        }
        self.ledger.seed(key, &snapshot.issued);
        let (entry, rebuilt) = match existing {
            Some(entry) if entry.fingerprint == fingerprint => (entry, false),
            previous => {
                let protection_cfg = protection_config(&snapshot.spec, &self.config);
                // Cluster issuers may be exempted from what binds tenants' issuers.
                let exempt = key.cluster && self.config.egress_exempt_cluster_issuers;
                let egress = if exempt {
                    None
                } else {
                    self.config.egress.clone()
                };
                let redact = self.config.redact_tenant_errors && !exempt;
                let built = match (invalid, out_of_scope) {
                    (Some(errors), _) => Err(build_health(
                        &certwright_pki::issuer::BuildError::InvalidSpec(errors),
                    )),
                    (None, Some(message)) => Err(Health {
                        reason: REASON_SECRET_OUT_OF_SCOPE,
                        message,
                    }),
                    (None, None) => (snapshot.build)(&NamespacedSecrets {
                        namespace: namespace.clone(),
                        data,
                        egress,
                        pkcs11_modules: if key.cluster || self.config.pkcs11_namespaced_issuers {
                            self.config.pkcs11_modules.clone()
                        } else {
                            Vec::new()
                        },
                        records: self.ledger.view(key),
                    })
                    .map(|backend| self.recorded(key, &snapshot.spec, backend))
                    .map_err(|e| build_health(&e)),
                };
                let (backend, health) = match built {
                    Ok(backend) => (
                        Some(backend),
                        Health {
                            reason: REASON_VERIFIED,
                            message: String::new(),
                        },
                    ),
                    Err(health) => (None, health),
                };
                // A rebuild for a rotated Secret keeps the breaker's memory of the PKI.
                let protection = match previous {
                    Some(prev)
                        if prev.spec.max_concurrent_requests
                            == snapshot.spec.max_concurrent_requests
                            && prev.spec.requests_per_second
                                == snapshot.spec.requests_per_second =>
                    {
                        prev.protection.clone()
                    }
                    _ => Arc::new(Protection::new(protection_cfg)),
                };
                info!(issuer = %label, backend = backend.as_ref().map(|b| b.kind()).unwrap_or("none"), "issuer backend built");
                let entry = Arc::new(IssuerEntry {
                    fingerprint,
                    spec: snapshot.spec.clone(),
                    backend,
                    protection,
                    health: Mutex::new(health),
                    checked: Default::default(),
                    redact,
                });
                lock(&self.issuers).insert(key.clone(), entry.clone());
                (entry, true)
            }
        };
        // A build has had its verdict before this look unless it is new.
        let had_verdict = !rebuilt && entry.checked();
        // Health: a finished check of this build is taken in; a new check starts when the
        // build is new or a check is due, never while the breaker holds calls. Checks run
        // off this worker (see `checks`): their end queues the issuer again.
        let interval = self.config.issuer_health_check_interval;
        let was_usable = entry.health().usable();
        let mut overruled = false;
        if let Some((health, at)) = self.checks.take(key, &entry) {
            lock(&self.last_checked).insert(key.clone(), at);
            // A request may have marked the issuer (a refusal of its credentials) while
            // the check ran; if the check undoes that, the request must hear of it.
            let before = entry.health().usable();
            entry.set_health(health);
            entry.mark_checked();
            overruled = before != entry.health().usable();
        } else if let Some(backend) = entry.backend.clone() {
            // Sooner than the interval after a first check that timed out.
            let every = self.checks.next_check(key, interval);
            let due = lock(&self.last_checked)
                .get(key)
                .is_none_or(|at| at.elapsed() >= every);
            if rebuilt || due || !entry.checked() {
                match entry.protection.breaker() {
                    BreakerState::Open { .. } | BreakerState::HalfOpen => {
                        lock(&self.last_checked).insert(key.clone(), Instant::now());
                        entry.set_health(circuit_open());
                        entry.mark_checked();
                    }
                    BreakerState::Closed => self.start_check(key, &entry, backend),
                }
            }
        } else {
            // A failed build has its verdict: what the build said.
            entry.mark_checked();
        }
        if !entry.checked() {
            // The status and the requests wait for this build's first verdict; the
            // check's end queues the issuer, and this look comes back regardless.
            self.issuer_queue
                .add_after(key.clone(), CHECK_TIMEOUT + Duration::from_secs(5));
            return;
        }
        let fresh = !had_verdict;
        let health = entry.health();
        if health.reason != REASON_VERIFIED || fresh {
            info!(issuer = %label, reason = health.reason, message = %health.message, "issuer checked");
        }
        let metric = self.issuer_metric(key);
        self.metrics.set_issuer_ready(
            &metric,
            health.ready() == ConditionStatus::True,
            health.reason,
        );
        self.metrics
            .set_breaker_state(&metric, entry.protection.breaker().metric_value());
        self.metrics.set_ca_expiry(
            &metric,
            entry
                .backend
                .as_ref()
                .and_then(|b| b.ca_expiry())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok()),
        );
        self.write_issuer_status(key, &entry).await;
        self.metrics.set_rotation_phase(
            &metric,
            entry
                .backend
                .as_ref()
                .and_then(|b| b.ca_certificates())
                .and_then(|c| c.rotation)
                .map(|r| r.phase.as_str()),
        );
        self.publish_bundle(key, &entry, &namespace).await;
        // A Retire held back takes effect when the old anchor's record passes: look then.
        if let Some(until) = entry
            .backend
            .as_ref()
            .and_then(|b| b.ca_certificates())
            .and_then(|c| c.rotation)
            .filter(|r| r.requested != r.phase)
            .and_then(|r| r.current_issued_until)
            .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
        {
            self.issuer_queue
                .add_after(key.clone(), until + Duration::from_millis(100));
        }
        // Requests for this issuer go at once when its build has its first verdict, which
        // includes its first check after it appeared (requests that saw it missing, or
        // that arrived before this check, wait for this), and when it becomes usable,
        // also when the check overrules a request that marked it unusable while the check
        // ran. When it stops being usable, they are looked at again but keep their own
        // backoff.
        let usable = health.usable();
        if fresh || usable != was_usable || overruled {
            self.requeue_requests_for(key, fresh || usable);
        }
        self.issuer_queue
            .add_after(key.clone(), self.checks.next_check(key, interval));
    }

    /// Starts a health check of this build of the issuer as a task of its own, unless
    /// one is under way.
    fn start_check(
        self: &Arc<Self>,
        key: &IssuerKey,
        entry: &Arc<IssuerEntry>,
        backend: Arc<dyn certwright_pki::Backend>,
    ) {
        if !self.checks.begin(key, entry) {
            return;
        }
        let (s, key, entry) = (self.clone(), key.clone(), entry.clone());
        let timeout = self.checks.timeout(&key);
        tokio::spawn(async move {
            let check = async {
                let _permits = s.checks.permits(&key).await;
                s.health_check(&key, &backend, timeout).await
            };
            // A backend that panics must not leave the issuer without a verdict.
            let check = AssertUnwindSafe(check).catch_unwind();
            let result = tokio::select! {
                result = check => result,
                _ = s.stopping.cancelled() => {
                    s.checks.abandon(&key, &entry);
                    return;
                }
            };
            let (health, timed_out) = match result {
                Err(_) => (
                    Health {
                        reason: REASON_UNREACHABLE,
                        message: "the health check failed unexpectedly (the backend panicked)"
                            .to_string(),
                    },
                    false,
                ),
                Ok(Ok(Ok(h))) => {
                    let expiring = expiring_soon(
                        backend.ca_expiry(),
                        std::time::SystemTime::now(),
                        s.config.ca_expiry_warning,
                    );
                    let health = match expiring {
                        Some(message) => Health {
                            reason: REASON_CA_EXPIRING_SOON,
                            message,
                        },
                        None => Health {
                            reason: REASON_VERIFIED,
                            // What a tenant's PKI says of itself is its own words.
                            message: if entry.redact {
                                "the PKI answered the health check".to_string()
                            } else {
                                h.message
                            },
                        },
                    };
                    (health, false)
                }
                Ok(Ok(Err(e))) => {
                    let fault = CaFault::of(&e);
                    (
                        check_health(&tell_unless_own(&entry, e, fault), fault),
                        false,
                    )
                }
                Ok(Err(_)) => (
                    Health {
                        reason: REASON_UNREACHABLE,
                        message: format!(
                            "the health check did not finish within {}",
                            certwright_api::format_duration(timeout)
                        ),
                    },
                    true,
                ),
            };
            s.checks.finish(&key, &entry, health, timed_out);
            s.issuer_queue.add(key);
        });
    }

    /// Remembers which issuers use which Secrets, so that a Secret change rebuilds them.
    fn index_secrets(&self, issuer: &IssuerKey, uses: Option<(&str, &[String])>) {
        let mut index = lock(&self.secret_index);
        index.retain(|_, set| {
            set.remove(issuer);
            !set.is_empty()
        });
        if let Some((namespace, names)) = uses {
            for name in names {
                index
                    .entry((namespace.to_string(), name.clone()))
                    .or_default()
                    .insert(issuer.clone());
            }
        }
    }

    /// A backend that holds its CA, wrapped so that its signatures are recorded first
    /// (see [`crate::ca_lifecycle`]); another, as it is.
    fn recorded(
        &self,
        key: &IssuerKey,
        spec: &certwright_api::IssuerSpec,
        backend: Arc<dyn certwright_pki::Backend>,
    ) -> Arc<dyn certwright_pki::Backend> {
        if backend.ca_certificates().is_none() {
            return backend;
        }
        let target = crate::ca_lifecycle::StatusTarget {
            api: self.issuer_api(key),
            key: key.clone(),
        };
        Arc::new(crate::ca_lifecycle::Recorded::new(
            backend,
            self.ledger.clone(),
            target,
            spec.default_duration()
                .unwrap_or(certwright_api::issuer::DEFAULT_DURATION),
        ))
    }

    fn issuer_api(&self, key: &IssuerKey) -> Api<kube::core::DynamicObject> {
        if key.cluster {
            Api::all_with(self.client.clone(), &self.cluster_resource)
        } else {
            Api::namespaced_with(
                self.client.clone(),
                &key.namespace,
                &self.namespaced_resource,
            )
        }
    }

    /// What the issuer's status should say of its CA: nothing new while its build
    /// failed, nothing for a backend that holds no CA.
    fn ca_report(
        &self,
        key: &IssuerKey,
        entry: &IssuerEntry,
        generation: Option<i64>,
    ) -> crate::issuers::CaReport {
        use crate::issuers::CaReport;
        let Some(backend) = entry.backend.as_ref() else {
            return CaReport::Keep;
        };
        let Some(certificates) = backend.ca_certificates() else {
            return CaReport::Absent;
        };
        let next = entry
            .spec
            .ca
            .as_ref()
            .and_then(|ca| ca.rotation.as_ref())
            .map(|r| r.next_secret_name.as_str());
        CaReport::Present(crate::ca_lifecycle::ca_status(
            &certificates,
            &self.ledger.records(key),
            next,
            generation,
            jiff::Timestamp::now(),
        ))
    }

    /// Keeps the trust bundle in the ConfigMap `spec.ca.bundleConfigMap` names, in the
    /// namespace the issuer reads its Secrets from. Only a ConfigMap certwright made for
    /// this issuer is written; another is left alone, with a warning Event.
    async fn publish_bundle(&self, key: &IssuerKey, entry: &IssuerEntry, namespace: &str) {
        use crate::ca_lifecycle::{BundleWrite, bundle_config_map};
        use k8s_openapi::api::core::v1::ConfigMap;
        let Some(name) = entry
            .spec
            .ca
            .as_ref()
            .and_then(|ca| ca.bundle_config_map.clone())
        else {
            lock(&self.bundles).remove(key);
            return;
        };
        let Some(certificates) = entry.backend.as_ref().and_then(|b| b.ca_certificates()) else {
            return;
        };
        let bundle = certwright_x509::certificates_to_pem(&crate::ca_lifecycle::trust(
            &certificates,
            &self.ledger.records(key),
            jiff::Timestamp::now(),
        ));
        let done = format!("{namespace}/{name}\n{bundle}");
        // Written once per bundle, and looked at again every health-check interval, so
        // that a ConfigMap deleted or edited meanwhile is put right.
        if lock(&self.bundles).get(key).is_some_and(|(last, at)| {
            *last == done && at.elapsed() < self.config.issuer_health_check_interval
        }) {
            return;
        }
        let issuer = self.issuer_label(key);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let existing = match api.get_opt(&name).await {
            Ok(existing) => existing,
            Err(e) if api_code(&e) == Some(403) => {
                // Not granted (the chart's trustBundleConfigMaps): said once per interval.
                let why = format!(
                    "the controller may not read or write ConfigMap {namespace}/{name} \
                     (spec.ca.bundleConfigMap): the chart grants it with \
                     trustBundleConfigMaps.enabled; the trust bundle is in status.trustBundle"
                );
                warn!(issuer = %issuer, "{why}");
                self.events.emit(Transition {
                    regarding: self.issuer_reference(key),
                    reason: "BundleConfigMapForbidden",
                    note: why,
                    warning: true,
                });
                lock(&self.bundles).insert(key.clone(), (done, Instant::now()));
                return;
            }
            Err(e) => {
                warn!(issuer = %issuer, configmap = %name, error = %e, "could not read the bundle ConfigMap; retrying");
                self.issuer_queue
                    .add_after(key.clone(), Duration::from_secs(5));
                return;
            }
        };
        let result = match bundle_config_map(&name, namespace, &issuer, &bundle, existing.as_ref())
        {
            BundleWrite::Nothing => Ok(()),
            BundleWrite::NotOurs(why) => {
                warn!(issuer = %issuer, "{why}");
                self.events.emit(Transition {
                    regarding: self.issuer_reference(key),
                    reason: "BundleConfigMapNotOwned",
                    note: why,
                    warning: true,
                });
                Ok(())
            }
            BundleWrite::Write(object) => match existing {
                None => match serde_json::from_value::<ConfigMap>(object) {
                    Ok(map) => api
                        .create(&kube::api::PostParams::default(), &map)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(kube::Error::SerdeError(e)),
                },
                Some(_) => api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&object))
                    .await
                    .map(|_| ()),
            },
        };
        match result {
            Ok(()) => {
                lock(&self.bundles).insert(key.clone(), (done, Instant::now()));
            }
            Err(e) => {
                warn!(issuer = %issuer, configmap = %name, error = %e, "could not write the bundle ConfigMap; retrying");
                self.issuer_queue
                    .add_after(key.clone(), Duration::from_secs(5));
            }
        }
    }

    fn issuer_reference(&self, key: &IssuerKey) -> ObjectReference {
        let resource = if key.cluster {
            &self.cluster_resource
        } else {
            &self.namespaced_resource
        };
        ObjectReference {
            api_version: Some(resource.api_version.clone()),
            kind: Some(resource.kind.clone()),
            name: Some(key.name.clone()),
            namespace: (!key.cluster).then(|| key.namespace.clone()),
            ..Default::default()
        }
    }

    pub(crate) async fn write_issuer_status(&self, key: &IssuerKey, entry: &IssuerEntry) {
        let (conditions, generation, read_from) = match lock(&self.snapshots).get(key) {
            Some(s) => (
                s.conditions.clone(),
                s.generation,
                s.resource_version.clone(),
            ),
            None => return,
        };
        let seen = match lock(&self.snapshots).get(key) {
            Some(s) => s.ca.clone(),
            None => return,
        };
        // Written when the object's Ready condition (as last watched or written) differs:
        // a recreated issuer, or a status someone cleared, is written again. So is what
        // a local CA publishes: its trust bundle and rotation.
        let health = entry.health();
        // The backend that signs names itself (a third party's too); while none could
        // be built, the block the spec configures.
        let backend = entry
            .backend
            .as_ref()
            .map(|b| b.kind())
            .or_else(|| entry.spec.backend_kind().map(|k| k.as_str()));
        let report = self.ca_report(key, entry, generation);
        let ca = match &report {
            crate::issuers::CaReport::Present(ca) => Some(ca.clone()),
            _ => None,
        };
        let Some(write) = crate::issuers::status_patch(
            &conditions,
            &seen,
            &health,
            generation,
            backend,
            &report,
            jiff::Timestamp::now(),
        ) else {
            return;
        };
        let patch = write.patch;
        let resource = if key.cluster {
            &self.cluster_resource
        } else {
            &self.namespaced_resource
        };
        let api: Api<kube::core::DynamicObject> = if key.cluster {
            Api::all_with(self.client.clone(), resource)
        } else {
            Api::namespaced_with(self.client.clone(), &key.namespace, resource)
        };
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                // What was written stands in for the watch event still on its way, unless
                // a newer event came first (someone may have changed the status since):
                // then the watch is the fresher account, and the written one is stale.
                if let Some(snapshot) = lock(&self.snapshots).get_mut(key)
                    && snapshot.resource_version == read_from
                    && let Some(conditions) = written
                        .data
                        .pointer("/status/conditions")
                        .and_then(|c| serde_json::from_value::<Vec<Condition>>(c.clone()).ok())
                {
                    snapshot.conditions = conditions;
                    snapshot.ca = crate::issuers::SeenCaStatus::of(&written.data);
                    snapshot.resource_version = written.metadata.resource_version.clone();
                }
                let label = self.issuer_label(key);
                let reference = ObjectReference {
                    api_version: Some(resource.api_version.clone()),
                    kind: Some(resource.kind.clone()),
                    name: Some(key.name.clone()),
                    namespace: (!key.cluster).then(|| key.namespace.clone()),
                    uid: written.metadata.uid.clone(),
                    ..Default::default()
                };
                if write.ready_changed {
                    self.events.emit(Transition {
                        regarding: reference.clone(),
                        reason: health.reason,
                        note: health.message.clone(),
                        warning: health.warns(),
                    });
                }
                if write.rotation_changed
                    && let Some(ca) = ca.as_ref()
                    && let Some(condition) = &ca.condition
                {
                    self.events.emit(Transition {
                        regarding: reference,
                        reason: crate::ca_lifecycle::rotation_event_reason(ca),
                        note: condition.message.clone(),
                        warning: ca.warns,
                    });
                }
                debug!(issuer = %label, reason = health.reason, "issuer status written");
            }
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => {
                warn!(issuer = %self.issuer_label(key), error = %e, "could not write the issuer status; retrying");
                self.issuer_queue
                    .add_after(key.clone(), Duration::from_secs(5));
            }
        }
    }
}

/// Builds what the backend is asked from the full CertificateRequest, or says why the
/// request itself cannot be signed.
fn sign_request(full: &CertificateRequest, entry: &IssuerEntry) -> Result<SignRequest, String> {
    let csr = Csr::parse(full.spec.request.as_bytes())
        .map_err(|e| format!("spec.request is not a usable CSR: {e}"))?;
    let duration = full
        .requested_duration()
        .map_err(|e| format!("spec.duration: {e}"))?;
    let template = match full.annotations().get(TEMPLATE_ANNOTATION) {
        None => None,
        Some(t) if !entry.spec.allow_template_override => {
            return Err(format!(
                "annotation {TEMPLATE_ANNOTATION}={t:?} is set, but the issuer does not allow template overrides (spec.allowTemplateOverride)"
            ));
        }
        Some(t) => {
            // By the rules of the backend the name goes to (an EJBCA profile name may
            // hold '=', an AD CS template name may not).
            match entry.spec.backend_kind() {
                Some(kind) => certwright_api::validation::check_backend_name(kind, t),
                None => certwright_api::validation::check_template_name(t),
            }
            .map_err(|why| format!("annotation {TEMPLATE_ANNOTATION}: {why}"))?;
            Some(t.clone())
        }
    };
    let mut usages = Vec::with_capacity(full.spec.usages.len());
    for usage in &full.spec.usages {
        match serde_json::to_value(usage) {
            Ok(serde_json::Value::String(name)) if *usage != certwright_api::KeyUsage::Unknown => {
                usages.push(name)
            }
            _ => return Err("spec.usages names a usage certwright does not know".to_string()),
        }
    }
    let mut request = SignRequest::new(csr, full.uid().unwrap_or_default());
    request.duration = duration;
    request.is_ca = full.spec.is_ca;
    request.usages = usages;
    request.template = template;
    request.requester = Requester {
        namespace: full.namespace().unwrap_or_default(),
        name: full.name_any(),
    };
    Ok(request)
}

/// The merge patch that writes `change` onto the request's current conditions, with
/// the request's resourceVersion as a precondition.
fn request_status_patch(
    full: &CertificateRequest,
    change: &StatusChange,
    now: jiff::Timestamp,
) -> serde_json::Value {
    let mut conditions = full.conditions().to_vec();
    conditions.set_condition(
        Condition::new(
            CONDITION_READY,
            change.ready,
            change.reason,
            change.message.clone(),
        ),
        now,
    );
    if change.invalid_request {
        conditions.set_condition(
            Condition::new(
                CONDITION_INVALID_REQUEST,
                ConditionStatus::True,
                "InvalidRequest",
                change.message.clone(),
            ),
            now,
        );
    }
    let mut status = json!({ "conditions": conditions });
    if let Some(bundle) = &change.issued {
        status["certificate"] = json!(Base64Bytes::from(bundle.certificate_pem().as_str()));
        if let Some(ca) = &bundle.ca {
            status["ca"] = json!(Base64Bytes::from(ca.to_pem().as_str()));
        }
    }
    if change.failed {
        status["failureTime"] = json!(certwright_api::condition::whole_seconds(now));
    }
    json!({
        "metadata": { "resourceVersion": full.resource_version() },
        "status": status,
    })
}

pub(crate) fn object_reference(full: &CertificateRequest) -> ObjectReference {
    ObjectReference {
        api_version: Some("cert-manager.io/v1".to_string()),
        kind: Some("CertificateRequest".to_string()),
        name: full.metadata.name.clone(),
        namespace: full.metadata.namespace.clone(),
        uid: full.metadata.uid.clone(),
        resource_version: full.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// When a request was created, for its retry deadline; now when unknown (never
/// giving up early).
fn created_at(
    created: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> jiff::Timestamp {
    created.as_ref().map_or_else(jiff::Timestamp::now, |t| t.0)
}
