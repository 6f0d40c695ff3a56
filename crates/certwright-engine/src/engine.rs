//! The engine at run time: it checks that the kinds it needs are served, starts the
//! watches ([`crate::watches`]), the request and issuer workers
//! ([`crate::requests`], [`crate::issuers`]), the Kubernetes CSR signer and the policy
//! approver, and owns every task it starts until it stops.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt as _;
use kube::{Api, Client, Resource};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::EngineConfig;
use crate::cached::{CachedRequest, RequestKey};
use crate::error::Error;
use crate::events::EventSink;
use crate::issuers::checks::Checks;
use crate::issuers::{IssuerEntry, IssuerKey, Snapshot};
use crate::kinds::IssuerKinds;
use crate::metrics::{IssuerLabels, Metrics, QUEUE_ISSUERS, QUEUE_REQUESTS};
use crate::requests::{RequestEntry, Unwritten};
use crate::watches::{watch_issuers, watch_requests, watch_secrets};
use crate::workqueue::WorkQueue;

/// How often the pending and cached gauges are computed.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// Issuers reconciled at once (health checks run off these workers, see `checks`).
const ISSUER_WORKERS: usize = 4;

/// A lock that survives a panic in another holder: the caches hold plain data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The state shared by all watchers and workers.
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
    pub(crate) snapshots: Mutex<HashMap<IssuerKey, Snapshot>>,
    pub(crate) issuers: Mutex<HashMap<IssuerKey, Arc<IssuerEntry>>>,
    pub(crate) last_checked: Mutex<HashMap<IssuerKey, Instant>>,
    pub(crate) secret_index: Mutex<HashMap<(String, String), HashSet<IssuerKey>>>,
    pub(crate) requests: Mutex<HashMap<RequestKey, RequestEntry>>,
    pub(crate) unwritten: Mutex<HashMap<RequestKey, Unwritten>>,
    pub(crate) request_queue: WorkQueue<RequestKey>,
    pub(crate) issuer_queue: WorkQueue<IssuerKey>,
    /// Issuer health checks under way and their verdicts.
    pub(crate) checks: Checks,
    /// Issuer watchers that have completed their initial list (two when synced).
    pub(crate) issuer_watchers_synced: AtomicUsize,
    /// Cancelled when the engine must stop signing (shutdown or lost leadership): no
    /// new call reaches a PKI after this, even from a worker already past its checks.
    pub(crate) stopping: CancellationToken,
    /// What local CAs signed, per issuer and CA, recorded before each signature.
    pub(crate) ledger: Arc<crate::ca_lifecycle::Ledger>,
    /// The trust bundle last written to each issuer's bundle ConfigMap, and when.
    pub(crate) bundles: Mutex<HashMap<IssuerKey, (String, Instant)>>,
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
