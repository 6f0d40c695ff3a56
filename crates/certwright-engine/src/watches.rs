//! The watches that feed the engine: issuers of both kinds (each the trigger stream of
//! its loop's kube-runtime `Controller`) and the one CertificateRequest watch, each the
//! writer of its loop's reflector store; and the Secrets issuers read, which wake the
//! issuers that use them. Nothing here calls a PKI.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use certwright_api::RequestConditions;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::{FutureExt as _, Stream, StreamExt, TryStreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cached::CachedRequest;
use crate::engine::{Shared, lock};
use crate::issuers::{IssuerKey, stores};
use crate::kinds::IssuerResource;

/// One issuer kind's watch, as its issuer loop's trigger stream: each event is turned
/// into what the store must hold ([`stores::admit`]: a deleted issuer stays as a
/// tombstone until its last look hands it back through `purged`), applied to the store
/// through `writer`, and each object the store takes is looked at; `relisted` is told
/// when a (re)list is complete. The first complete list marks the kind synced.
pub(crate) fn issuer_stream<R: IssuerResource>(
    s: Arc<Shared>,
    api: Api<R>,
    writer: Writer<R>,
    purged: UnboundedReceiver<R>,
    relisted: futures::channel::mpsc::Sender<()>,
) -> impl Stream<Item = Result<R, watcher::Error>> + Send + 'static {
    let held = writer.as_reader();
    let mut listing = stores::Listing::default();
    let watched = watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(|event| {
            std::future::ready(match event {
                Ok(event) => Some(stores::Feed::Watched(event)),
                Err(e) => {
                    warn!(error = %e, kind = %R::kind(&()), "issuer watch failed; retrying");
                    None
                }
            })
        });
    let mut synced = false;
    let mut list_complete = on_list_complete(relisted);
    futures::stream::select(watched, purged.map(stores::Feed::Purge))
        .flat_map(move |feed| {
            futures::stream::iter(stores::admit(&held, &mut listing, feed).into_iter().map(Ok))
        })
        .reflect(writer)
        .inspect_ok(move |event| {
            list_complete(event);
            if matches!(event, Event::InitDone) && !synced {
                synced = true;
                s.issuer_watchers_synced.fetch_add(1, Ordering::SeqCst);
                // Requests that arrived first waited for the issuers to be known.
                s.requeue_all_requests();
            }
        })
        .applied_objects()
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
                    s.wake_issuer(&issuer);
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
            s.wake_issuer(&issuer);
        }
    }
}

/// For `inspect_ok` after `reflect`: tells `relisted` each time a (re)list is complete
/// and in the store, so that the loop (`reconcile_all_on`) looks at everything the
/// list brought.
///
/// kube-runtime's `Controller` takes a trigger for each object of a list as it comes,
/// but its reflector store takes the list only when the last page is in: a look that
/// finds its object missing from the store is dropped (`ObjectNotFound`), and is not
/// taken again when the store has it. An object first seen in a list after the watch
/// was down (created meanwhile, while more changed than the API server remembers), in
/// a page before the last, would never be looked at. Test
/// `kubernetes_csr::a_csr_approved_while_its_watch_was_down_is_signed_after_the_relist`;
/// the request loop, on a queue of its own, does the same in `requests::run` (test
/// `races::a_request_approved_while_its_watch_was_down_is_signed_after_the_relist`).
pub(crate) fn on_list_complete<K>(
    mut relisted: futures::channel::mpsc::Sender<()>,
) -> impl FnMut(&Event<K>) + Send + 'static {
    move |event| {
        if matches!(event, Event::InitDone) {
            // A full channel means a look at everything is on its way already.
            let _ = relisted.try_send(());
        }
    }
}

/// Runs a loop: consumes what its `Controller` reports of each look (`looks`, built
/// with `graceful_shutdown_on(stop)`; a look at an object that left the store before its
/// turn is not worth a word, any other error is logged as `what`'s) until it ends, or
/// until `stop` if the store has not had its first list by then.
///
/// kube-runtime's runner starts no look before the store's first list is in. Once a
/// graceful shutdown has ended its trigger stream it waits for that list forever,
/// because the watch that would bring it is no longer polled. Without this, a SIGTERM
/// during a long first list, or while a kind cannot be listed, would hang the stop. Such
/// a loop has no look under way, so it is dropped at once. Test
/// `flow::a_stop_before_an_issuer_kinds_first_list_does_not_hang`. (The request loop,
/// on a queue of its own, stops on `stop` whether or not its list is in: test
/// `flow::a_stop_before_the_first_list_does_not_hang`.)
pub(crate) async fn until_stopped<K, E>(
    what: &'static str,
    looks: impl Stream<Item = Result<(ObjectRef<K>, Action), controller::Error<E, watcher::Error>>>,
    store: &Store<K>,
    stop: &CancellationToken,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
    E: std::error::Error + 'static,
{
    let looks = looks.for_each(|result| async move {
        match result {
            Err(controller::Error::ObjectNotFound(_)) | Ok(_) => {}
            Err(e) => warn!(error = %e, "{what}"),
        }
    });
    let before_first_list = async {
        stop.cancelled().await;
        if store.wait_until_ready().now_or_never().is_none() {
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = looks => {}
        () = before_first_list => {}
    }
}

/// The engine's one CertificateRequest watch, as the request loop sees it: each request
/// is decoded slim ([`CachedRequest::slim`]). With the policy approver on, every event
/// goes on to it too (`feed`): one watch and one decoding of each request per process.
/// Then [`Shared::admit`] keeps from the store every request the loop will never act
/// on, and the store is updated through `writer` before the event is yielded.
pub(crate) fn request_stream(
    s: Arc<Shared>,
    writer: Writer<CachedRequest>,
    feed: Option<UnboundedSender<Event<CachedRequest>>>,
) -> impl Stream<Item = Event<CachedRequest>> + Send + 'static {
    let api: Api<CachedRequest> = Api::all(s.client.clone());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map_ok(|event| event.modify(|obj| *obj = std::mem::take(obj).slim()))
        .filter_map(move |event| {
            let admitted = match event {
                Ok(event) => {
                    if let Some(feed) = &feed {
                        // The approver's end closes only when it stops, as this watch does.
                        let _ = feed.unbounded_send(event.clone());
                    }
                    s.admit(event).map(Ok::<_, watcher::Error>)
                }
                Err(e) => {
                    warn!(error = %e, "CertificateRequest watch failed; retrying");
                    None
                }
            };
            std::future::ready(admitted)
        })
        .reflect(writer)
        .filter_map(|event| std::future::ready(event.ok()))
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

    /// What of a watch event reaches the request store: a request the loop may act on
    /// (approved or denied, not terminal, naming the engine's group) goes in; any other
    /// leaves it (an update becomes a deletion) along with what was kept of it.
    pub(crate) fn admit(&self, event: Event<CachedRequest>) -> Option<Event<CachedRequest>> {
        let relevant = |obj: &CachedRequest| {
            let conditions = obj.conditions();
            obj.spec.issuer_ref.group == self.group
                && !conditions.is_terminal()
                && (conditions.is_approved() || conditions.is_denied())
        };
        let forget = |obj: &CachedRequest| {
            if let Some(uid) = &obj.metadata.uid {
                self.forget_request(uid);
            }
        };
        match event {
            Event::Apply(obj) if relevant(&obj) => Some(Event::Apply(obj)),
            Event::Apply(obj) | Event::Delete(obj) => {
                forget(&obj);
                Some(Event::Delete(obj))
            }
            Event::InitApply(obj) => relevant(&obj).then_some(Event::InitApply(obj)),
            Event::Init | Event::InitDone => Some(event),
        }
    }

    /// Looks again at every request in the store.
    pub(crate) fn requeue_all_requests(&self) {
        for request in self.requests.state() {
            let _ = self
                .wake_requests
                .unbounded_send(ObjectRef::from_obj(&*request));
        }
    }

    /// Looks again at every request waiting for this issuer. With `now`, at once
    /// (the issuer became usable); otherwise each keeps its own backoff or poll time.
    pub(crate) fn requeue_requests_for(&self, issuer: &IssuerKey, now: bool) {
        for request in self.requests.state() {
            if self.issuer_key_for(&request).as_ref() != Some(issuer) {
                continue;
            }
            if now && let Some(uid) = &request.metadata.uid {
                self.remember(uid, |r| {
                    r.not_before = None;
                    r.woken = true;
                });
            }
            let _ = self
                .wake_requests
                .unbounded_send(ObjectRef::from_obj(&*request));
        }
    }

    pub(crate) fn issuers_synced(&self) -> bool {
        self.issuer_watchers_synced.load(Ordering::SeqCst) >= 2
    }
}
