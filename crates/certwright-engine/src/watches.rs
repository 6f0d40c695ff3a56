//! The watches that feed the engine: issuers of both kinds, the Secrets they read,
//! and the one CertificateRequest watch. Each event updates the caches in
//! [`Shared`] and queues the keys it concerns; nothing here calls a PKI.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use certwright_api::RequestConditions;
use futures::{StreamExt, TryStreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cached::{CachedRequest, RequestKey};
use crate::engine::{Shared, lock};
use crate::issuers::{IssuerKey, Snapshot};
use crate::kinds::IssuerResource;
use crate::requests::RequestEntry;

/// Watches one issuer kind: snapshots of each issuer, queued for the issuer loop;
/// the first complete list marks the kind synced.
pub(crate) async fn watch_issuers<R: IssuerResource>(
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
        event = stream.next() => match event { Some(e) => e, None => return }};
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

/// Watches the Secrets issuers read (metadata only) and queues the issuers that use a
/// changed one.
pub(crate) async fn watch_secrets(s: Arc<Shared>, stop: CancellationToken) {
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
        event = stream.next() => match event { Some(e) => e, None => return }};
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
pub(crate) async fn watch_requests(
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
        event = stream.next() => match event { Some(e) => e, None => return }};
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

impl Shared {
    pub(crate) fn issuer_key_for(&self, r: &CachedRequest) -> Option<IssuerKey> {
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

    /// Takes a watched request into the cache, or drops it when nothing will ever be
    /// needed of it (not ours, terminal, or not yet approved or denied).
    pub(crate) fn observe_request(&self, obj: CachedRequest) {
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

    pub(crate) fn requeue_all_requests(&self) {
        let keys: Vec<RequestKey> = lock(&self.requests).keys().cloned().collect();
        for key in keys {
            self.request_queue.add(key);
        }
    }

    /// Looks again at every request waiting for this issuer. With `now`, at once
    /// (the issuer became usable); otherwise each keeps its own backoff or poll time.
    pub(crate) fn requeue_requests_for(&self, issuer: &IssuerKey, now: bool) {
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

    pub(crate) fn issuers_synced(&self) -> bool {
        self.issuer_watchers_synced.load(Ordering::SeqCst) >= 2
    }
}
