//! The engine at run time: it checks that the kinds it needs are served, starts the
//! loops, each over a watch of [`crate::watches`] and its reflector store (the request
//! loop, [`crate::requests`], on a queue of its own; one issuer loop per issuer kind,
//! [`crate::issuers`], the Kubernetes CSR signer and the policy approver, each on
//! kube-runtime's `Controller`) and the Secret watch, and owns every task it starts
//! until it stops.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::{Api, Client, Resource};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::EngineConfig;
use crate::cached::CachedRequest;
use crate::error::Error;
use crate::events::EventSink;
use crate::issuers::checks::Checks;
use crate::issuers::stores::IssuerObjects;
use crate::issuers::{IssuerEntry, IssuerKey, WrittenStatus};
use crate::kinds::IssuerKinds;
use crate::metrics::{IssuerLabels, Metrics, QUEUE_ISSUERS, QUEUE_REQUESTS, QueueMetrics};
use crate::requests::RequestState;
use crate::watches::watch_secrets;

/// How often the pending and cached gauges are computed.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// A lock that survives a panic in another holder: the caches hold plain data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The state shared by all loops, watches and checks.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Metrics,
    pub(crate) events: EventSink,
    pub(crate) group: &'static str,
    pub(crate) namespaced_kind: String,
    pub(crate) cluster_kind: String,
    pub(crate) namespaced_resource: kube::core::ApiResource,
    pub(crate) cluster_resource: kube::core::ApiResource,
    /// The issuers of both kinds, as their loops' reflector stores hold them.
    pub(crate) issuer_objects: IssuerObjects,
    /// The issuer statuses last written, until the watch brings them.
    pub(crate) written_status: Mutex<HashMap<IssuerKey, WrittenStatus>>,
    pub(crate) issuers: Mutex<HashMap<IssuerKey, Arc<IssuerEntry>>>,
    pub(crate) last_checked: Mutex<HashMap<IssuerKey, Instant>>,
    pub(crate) secret_index: Mutex<HashMap<(String, String), HashSet<IssuerKey>>>,
    /// The CertificateRequests the request loop may act on (approved or denied, not
    /// terminal, naming the engine's group), as its watch keeps them.
    pub(crate) requests: Store<CachedRequest>,
    /// What the request loop keeps of each request between looks, by uid.
    pub(crate) request_state: Mutex<HashMap<String, RequestState>>,
    /// Requests to look at again now (their issuer changed), into the request loop.
    pub(crate) wake_requests: UnboundedSender<ObjectRef<CachedRequest>>,
    /// The request loop's looks under way, durations and retries.
    pub(crate) request_loop: QueueMetrics,
    /// Issuers to look at now, into their kind's loop.
    pub(crate) wake_namespaced_issuers: UnboundedSender<IssuerKey>,
    pub(crate) wake_cluster_issuers: UnboundedSender<IssuerKey>,
    /// The issuer loops' looks under way, durations and retries.
    pub(crate) issuer_loop: QueueMetrics,
    /// Issuer health checks under way and their verdicts.
    pub(crate) checks: Checks,
    /// Issuer watchers that have completed their initial list (two when synced).
    pub(crate) issuer_watchers_synced: AtomicUsize,
    /// Cancelled when the engine must stop signing (shutdown or lost leadership): no
    /// new call reaches a PKI after this, even from a look already past its checks.
    pub(crate) stopping: CancellationToken,
    /// What local CAs signed, per issuer and CA, recorded before each signature.
    pub(crate) ledger: Arc<crate::ca_lifecycle::Ledger>,
    /// The trust bundle last written to each issuer's bundle ConfigMap, and when.
    pub(crate) bundles: Mutex<HashMap<IssuerKey, (String, Instant)>>,
}

/// The reconcile engine for the issuer kinds `K`.
pub struct Engine<K: IssuerKinds> {
    pub(crate) shared: Arc<Shared>,
    /// Fills [`Shared::requests`]; the request watch takes it when the engine runs.
    request_writer: Writer<CachedRequest>,
    /// The other end of [`Shared::wake_requests`].
    woken_requests: UnboundedReceiver<ObjectRef<CachedRequest>>,
    /// Fill the issuer stores [`Shared::issuer_objects`] reads.
    namespaced_writer: Writer<K::Namespaced>,
    cluster_writer: Writer<K::Cluster>,
    /// The other ends of [`Shared::wake_namespaced_issuers`] and `wake_cluster_issuers`.
    woken_namespaced: UnboundedReceiver<IssuerKey>,
    woken_cluster: UnboundedReceiver<IssuerKey>,
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
        let (requests, request_writer) = reflector::store::<CachedRequest>();
        let (wake_requests, woken_requests) = futures::channel::mpsc::unbounded();
        let (namespaced_issuers, namespaced_writer) = reflector::store::<K::Namespaced>();
        let (cluster_issuers, cluster_writer) = reflector::store::<K::Cluster>();
        let (wake_namespaced_issuers, woken_namespaced) = futures::channel::mpsc::unbounded();
        let (wake_cluster_issuers, woken_cluster) = futures::channel::mpsc::unbounded();
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
            issuer_objects: IssuerObjects::new(namespaced_issuers, cluster_issuers),
            written_status: Mutex::default(),
            issuers: Mutex::default(),
            last_checked: Mutex::default(),
            secret_index: Mutex::default(),
            requests,
            request_state: Mutex::default(),
            wake_requests,
            request_loop: metrics.queue(QUEUE_REQUESTS),
            wake_namespaced_issuers,
            wake_cluster_issuers,
            issuer_loop: metrics.queue(QUEUE_ISSUERS),
            checks: Checks::new(),
            issuer_watchers_synced: AtomicUsize::new(0),
            stopping: CancellationToken::new(),
            ledger: Arc::default(),
            bundles: Mutex::default(),
        };
        Engine {
            shared: Arc::new(shared),
            request_writer,
            woken_requests,
            namespaced_writer,
            cluster_writer,
            woken_namespaced,
            woken_cluster,
            _kinds: PhantomData,
        }
    }

    /// Runs until `shutdown` is cancelled, then stops taking new work, lets in-flight
    /// signing finish and write its results, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Engine {
            shared: s,
            request_writer,
            woken_requests,
            namespaced_writer,
            cluster_writer,
            woken_namespaced,
            woken_cluster,
            ..
        } = self;
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
        // lost, the embedder's task aborted), no watch, look or check goes on, and no
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
            tokio::spawn(crate::issuers::run(
                s.clone(),
                Api::<K::Namespaced>::all(client.clone()),
                false,
                namespaced_writer,
                woken_namespaced,
                watchers.clone(),
            )),
            tokio::spawn(crate::issuers::run(
                s.clone(),
                Api::<K::Cluster>::all(client.clone()),
                true,
                cluster_writer,
                woken_cluster,
                watchers.clone(),
            )),
            tokio::spawn(watch_secrets(s.clone(), watchers.clone())),
            tokio::spawn(crate::requests::run(
                s.clone(),
                request_writer,
                woken_requests,
                feed,
                watchers.clone(),
            )),
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
        let tasks = Owned(tasks);
        info!(group = s.group, "engine started");
        shutdown.cancelled().await;
        info!("shutting down: finishing in-flight requests");
        s.stopping.cancel();
        // Each loop stops taking work and lets the looks under way finish.
        watchers.cancel();
        tasks.join().await;
        info!("engine stopped");
        Ok(())
    }
}

/// What a look says of the next one.
pub(crate) trait LookResult {
    /// Whether the look asked to be looked at again (a retry, a poll, a backoff), not
    /// only on a change.
    fn looks_again(&self) -> bool;
}

impl LookResult for Action {
    fn looks_again(&self) -> bool {
        *self != Action::await_change()
    }
}

/// One look of a loop, measured in `queue`'s series; a panic in it (a backend's) fails
/// this look only, as an error for the loop's error policy. `what` names the object.
pub(crate) async fn measured_look<A: LookResult>(
    queue: &QueueMetrics,
    what: impl FnOnce() -> String,
    look: impl std::future::Future<Output = Result<A, Error>>,
) -> Result<A, Error> {
    let measured = queue.look();
    let result = match AssertUnwindSafe(look).catch_unwind().await {
        Ok(result) => result,
        Err(_) => {
            let what = what();
            tracing::error!("a look at {what} panicked; retrying later");
            Err(Error::Task {
                message: format!("a look at {what} panicked"),
            })
        }
    };
    drop(measured);
    if !matches!(&result, Ok(next) if !next.looks_again()) {
        queue.retried();
    }
    result
}

/// Tasks aborted when dropped: a run owns what it spawned.
pub(crate) struct Owned(pub(crate) Vec<tokio::task::JoinHandle<()>>);

impl Owned {
    /// Waits for every task to end; those not ended yet are aborted if this is dropped.
    pub(crate) async fn join(mut self) {
        for task in &mut self.0 {
            let _ = task.await;
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn report_pending(s: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    let mut reported: HashSet<IssuerLabels> = HashSet::new();
    let mut absent_before: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut counts: HashMap<IssuerLabels, i64> = HashMap::new();
        let requests = s.requests.state();
        s.metrics
            .set_cached_requests(i64::try_from(requests.len()).unwrap_or(i64::MAX));
        for request in &requests {
            if let Some(key) = s.issuer_key_for(request) {
                *counts.entry(s.issuer_metric(&key)).or_default() += 1;
            }
        }
        // What is kept of requests no longer in the store (deleted while the watch was
        // down, or forgotten) goes with them: once absent at two reports in a row, so
        // that a request the store took after the list above was read keeps its state.
        let live: HashSet<&str> = requests
            .iter()
            .filter_map(|r| r.metadata.uid.as_deref())
            .collect();
        let mut absent = HashSet::new();
        lock(&s.request_state).retain(|uid, _| {
            if live.contains(uid.as_str()) {
                return true;
            }
            let keep = !absent_before.contains(uid);
            if keep {
                absent.insert(uid.clone());
            }
            keep
        });
        absent_before = absent;
        drop(live);
        drop(requests);
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
}
