//! What the approver holds and what tells it to look again: the request store, fed by
//! the engine's CertificateRequest watch and by lists after policy changes ([`admit`]
//! decides what it holds), and the IssuancePolicy and Namespace watches.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use certwright_api::IssuancePolicy;
use certwright_policy::{Policy, PolicySet};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt as _};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Ctx, MAX_FAILURE_WAIT, lock};
use crate::cached::CachedRequest;
use crate::config::Unmatched;
use crate::error::Error;

/// A burst of policy or label changes (a GitOps sync) costs one list: it starts this
/// long after the burst's last change...
const RELIST_QUIET: Duration = Duration::from_secs(2);
/// ...and at most this long after its first, however long the burst goes on.
const RELIST_MAX_DELAY: Duration = Duration::from_secs(10);
/// No list starts sooner than this after the last one ended.
const RELIST_GAP: Duration = Duration::from_secs(10);
/// CertificateRequests per page of that list.
const RELIST_PAGE: u32 = 500;

/// What reaches the approver's request store.
pub(super) enum Feed {
    /// An event of the engine's CertificateRequest watch.
    Watched(Event<CachedRequest>),
    /// An undecided request found by listing, after policies or labels changed.
    Listed(CachedRequest),
    /// A request a look found it need not hold, and why.
    Forget(CachedRequest, Forget),
}

/// Why a look drops a request from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Forget {
    /// Approved, denied or deleted: never the approver's again.
    Done,
    /// Not the approver's on the policies the look used; dropped only if it is still
    /// not the approver's when the store takes the message (policies may have changed
    /// meanwhile, and a list found it again).
    OutOfScope,
}

/// What [`admit`] remembers between items.
#[derive(Debug, Default)]
pub(super) struct Admission {
    /// The engine's watch is listing afresh (between `Init` and `InitDone`): the store is
    /// rebuilt from what it lists, and a listed request must join that.
    relisting: bool,
}

/// What the store makes of what reaches it. It holds only the requests `holds` accepts
/// (undecided, and the approver's to decide: [`Ctx::holds`]); a decided one, or one left
/// to others, leaves it. A listed request joins only when the store lacks it, since
/// the store's copy came from the watch; while the watch lists afresh it joins the
/// rebuilt store. A request is forgotten only if the store still holds that object (by
/// uid), and, when it was out of scope, only if it still is.
pub(super) fn admit(
    holds: impl Fn(&CachedRequest) -> bool,
    held: &Store<CachedRequest>,
    state: &mut Admission,
    feed: Feed,
) -> Option<Event<CachedRequest>> {
    let held_uid = |obj: &CachedRequest| {
        held.get(&ObjectRef::from_obj(obj))
            .and_then(|stored| stored.metadata.uid.clone())
    };
    match feed {
        Feed::Watched(Event::Init) => {
            state.relisting = true;
            Some(Event::Init)
        }
        Feed::Watched(Event::InitDone) => {
            state.relisting = false;
            Some(Event::InitDone)
        }
        Feed::Watched(Event::Apply(obj)) => Some(if holds(&obj) {
            Event::Apply(obj)
        } else {
            Event::Delete(obj)
        }),
        Feed::Watched(Event::InitApply(obj)) => holds(&obj).then_some(Event::InitApply(obj)),
        Feed::Watched(Event::Delete(obj)) => Some(Event::Delete(obj)),
        Feed::Listed(obj) if state.relisting => holds(&obj).then_some(Event::InitApply(obj)),
        Feed::Listed(obj) => (held_uid(&obj).is_none() && holds(&obj)).then_some(Event::Apply(obj)),
        Feed::Forget(obj, why) => {
            let same = obj.metadata.uid.is_some() && held_uid(&obj) == obj.metadata.uid;
            let drop = match why {
                Forget::Done => true,
                Forget::OutOfScope => !holds(&obj),
            };
            (same && drop).then_some(Event::Delete(obj))
        }
    }
}

/// The requests the approver may decide, from the engine's own CertificateRequest
/// watch (decoded slim: the CSR and the certificate of every request are skipped while
/// decoding; one is read whole when it is looked at) and from lists after policy
/// changes, kept in the store ([`admit`]). Once a (re)list is complete, every request
/// held is looked at (`watches::on_list_complete`).
pub(super) fn request_stream(
    ctx: Arc<Ctx>,
    watched: futures::channel::mpsc::UnboundedReceiver<Event<CachedRequest>>,
    replayed: futures::channel::mpsc::UnboundedReceiver<Feed>,
    held: Store<CachedRequest>,
    writer: Writer<CachedRequest>,
    relisted: futures::channel::mpsc::Sender<()>,
) -> impl futures::Stream<Item = Result<CachedRequest, watcher::Error>> + Send + use<> {
    let mut state = Admission::default();
    futures::stream::select(watched.map(Feed::Watched), replayed)
        .filter_map(move |feed| {
            futures::future::ready(admit(|cr| ctx.holds(cr), &held, &mut state, feed))
        })
        .map(Ok::<_, watcher::Error>)
        .reflect(writer)
        .inspect_ok(crate::watches::on_list_complete(relisted))
        .applied_objects()
}

/// Who is told when policies or namespace labels change.
#[derive(Clone)]
pub(super) struct Wake {
    /// The Controller: every held request is looked at again.
    pub(super) again: futures::channel::mpsc::Sender<()>,
    /// The summaries are rewritten.
    pub(super) summaries: Arc<Notify>,
    /// Requests left to others are listed again ([`relist`]).
    pub(super) relist: Arc<Notify>,
}

impl Wake {
    /// Every held request is looked at again and the summaries are rewritten.
    pub(super) fn look_again(&mut self) {
        // A full channel already asks for a look at everything.
        let _ = self.again.try_send(());
        self.summaries.notify_one();
    }

    /// As [`Wake::look_again`], and the requests left to others are listed again.
    pub(super) fn look_again_and_list(&mut self) {
        self.look_again();
        self.relist.notify_one();
    }
}

/// Under `--policy-unmatched=ignore` the store does not hold requests no policy selects
/// (another approver's): a change of policies or namespace labels may make one
/// certwright's, so after each burst of changes every CertificateRequest is listed, by
/// pages and decoded slim, and the undecided ones the store lacks go to it. Under
/// default-deny every request with an approvable signer is held, and nothing is listed.
/// Before the first look (`ready`), nothing is listed either: the first looks judge
/// every request on the policies of then.
pub(super) async fn relist(
    ctx: Arc<Ctx>,
    wake: Arc<Notify>,
    held: Store<CachedRequest>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    if ctx.config.unmatched != Unmatched::Ignore {
        stop.cancelled().await;
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            () = wake.notified() => {}
        }
        let first = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = tokio::time::sleep(RELIST_QUIET) => break,
                () = wake.notified() => {
                    if first.elapsed() >= RELIST_MAX_DELAY {
                        break;
                    }
                }
            }
        }
        if !ready.load(Ordering::SeqCst) {
            continue;
        }
        let mut wait = RELIST_QUIET;
        loop {
            match relist_once(&ctx, &held).await {
                Ok(listed) => {
                    ctx.s.metrics.policy_list("ok");
                    info!(
                        listed,
                        "CertificateRequests listed after IssuancePolicies or namespace labels changed"
                    );
                    break;
                }
                Err(e) => {
                    ctx.s.metrics.policy_list("error");
                    warn!(error = %e, retry_in = ?wait, "policy approver: listing CertificateRequests failed");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = wait.saturating_mul(2).min(MAX_FAILURE_WAIT);
        }
        // A change meanwhile is remembered by `wake` and listed after the gap.
        tokio::select! {
            _ = stop.cancelled() => return,
            () = tokio::time::sleep(RELIST_GAP) => {}
        }
    }
}

/// Lists every CertificateRequest and sends to the store the undecided ones the
/// approver may now decide and the store lacks; how many.
async fn relist_once(ctx: &Ctx, held: &Store<CachedRequest>) -> Result<usize, Error> {
    let api: Api<CachedRequest> = Api::all(ctx.s.client.clone());
    let mut params = ListParams::default().limit(RELIST_PAGE);
    let mut listed = 0;
    loop {
        let page = api.list(&params).await.map_err(|e| {
            Error::kube(
                "listing CertificateRequests after IssuancePolicies or namespace labels changed",
                e,
            )
        })?;
        for cr in page.items {
            let cr = cr.slim();
            if held.get(&ObjectRef::from_obj(&cr)).is_none() && ctx.holds(&cr) {
                listed += 1;
                let _ = ctx.replay.unbounded_send(Feed::Listed(cr));
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(listed),
        }
    }
}

pub(super) async fn watch_policies(
    ctx: Arc<Ctx>,
    store: Store<IssuancePolicy>,
    writer: Writer<IssuancePolicy>,
    mut wake: Wake,
) {
    let api: Api<IssuancePolicy> = Api::all(ctx.s.client.clone());
    // The first full read is what the first look waits for: nothing was left out
    // before it, so it needs no list.
    let mut synced = false;
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event @ (Event::Apply(_) | Event::Delete(_) | Event::InitDone)) => {
                let set = PolicySet::new(
                    store
                        .state()
                        .iter()
                        .map(|p| Arc::new(Policy::compile(&p.name_any(), &p.spec))),
                );
                for policy in set.iter().filter(|p| !p.problems.is_empty()) {
                    warn!(policy = %policy.name, problems = ?policy.problems, "IssuancePolicy is invalid; it denies every request it selects");
                }
                *lock(&ctx.policies) = Arc::new(set);
                let first = !synced && matches!(event, Event::InitDone);
                synced = true;
                if first {
                    wake.look_again();
                } else {
                    wake.look_again_and_list();
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "IssuancePolicy watch failed; retrying"),
        }
    }
}

pub(super) async fn watch_namespaces(
    ctx: Arc<Ctx>,
    writer: Writer<PartialObjectMeta<Namespace>>,
    mut wake: Wake,
) {
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(ctx.s.client.clone());
    let mut labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .boxed();
    // Whether the first full read is done: a read afresh after it may bring new labels.
    let mut synced = false;
    while let Some(event) = stream.next().await {
        // Whether the namespaces changed, and whether labels may have changed where a
        // request was left out on them. A request in a namespace the watch has not seen
        // is held, not left out; during a read afresh the store's labels change only at
        // its end.
        let (changed, relabelled) = match event {
            Ok(Event::Apply(ns)) => {
                let before = labels.insert(ns.name_any(), ns.labels().clone());
                let changed = before.as_ref() != Some(ns.labels());
                (changed, changed && before.is_some())
            }
            Ok(Event::InitApply(ns)) => {
                let before = labels.insert(ns.name_any(), ns.labels().clone());
                (before.as_ref() != Some(ns.labels()), false)
            }
            Ok(Event::Delete(ns)) => (labels.remove(&ns.name_any()).is_some(), false),
            Ok(Event::InitDone) => (true, std::mem::replace(&mut synced, true)),
            Ok(Event::Init) => (false, false),
            Err(e) => {
                warn!(error = %e, "Namespace watch failed; retrying");
                (false, false)
            }
        };
        if relabelled && ctx.policies().iter().any(|p| p.uses_labels()) {
            wake.look_again_and_list();
        } else if changed {
            wake.look_again();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

    fn request(name: &str, uid: &str) -> CachedRequest {
        let mut cr = CachedRequest::default();
        cr.metadata.name = Some(name.to_string());
        cr.metadata.namespace = Some("apps".to_string());
        cr.metadata.uid = Some(uid.to_string());
        cr
    }

    /// A store holding `held`, and `admit` over it with `holds` true for names in `ours`.
    struct Fixture {
        store: Store<CachedRequest>,
        writer: Writer<CachedRequest>,
        state: Admission,
        ours: Vec<&'static str>,
    }

    impl Fixture {
        fn new(held: &[CachedRequest], ours: &[&'static str]) -> Self {
            let (store, mut writer) = reflector::store();
            for cr in held {
                writer.apply_watcher_event(&Event::Apply(cr.clone()));
            }
            Fixture {
                store,
                writer,
                state: Admission::default(),
                ours: ours.to_vec(),
            }
        }

        /// What the store receives, applied as the reflector would.
        fn admit(&mut self, feed: Feed) -> Option<Event<CachedRequest>> {
            let ours = self.ours.clone();
            let event = admit(
                |cr| ours.contains(&cr.metadata.name.as_deref().unwrap_or_default()),
                &self.store,
                &mut self.state,
                feed,
            );
            if let Some(event) = &event {
                self.writer.apply_watcher_event(event);
            }
            event
        }

        fn holds(&self, name: &str) -> bool {
            self.store
                .get(&ObjectRef::new(name).within("apps"))
                .is_some()
        }
    }

    #[test]
    fn the_watch_brings_in_only_requests_the_approver_holds() {
        let mut f = Fixture::new(&[request("left", "1")], &["ours"]);
        assert!(matches!(
            f.admit(Feed::Watched(Event::Apply(request("ours", "2")))),
            Some(Event::Apply(_))
        ));
        // One that is no longer the approver's (decided, or out of scope) leaves.
        assert!(matches!(
            f.admit(Feed::Watched(Event::Apply(request("left", "1")))),
            Some(Event::Delete(_))
        ));
        assert!(f.holds("ours") && !f.holds("left"));
        // A watch listing afresh lists only what the approver holds.
        f.admit(Feed::Watched(Event::Init));
        assert!(
            f.admit(Feed::Watched(Event::InitApply(request("left", "1"))))
                .is_none()
        );
        f.admit(Feed::Watched(Event::InitApply(request("ours", "2"))));
        f.admit(Feed::Watched(Event::InitDone));
        assert!(f.holds("ours") && !f.holds("left"));
    }

    #[test]
    fn a_listed_request_joins_only_when_the_store_lacks_it() {
        let mut f = Fixture::new(&[request("ours", "1")], &["ours", "found"]);
        // The store's copy came from the watch: a listed one does not replace it.
        assert!(f.admit(Feed::Listed(request("ours", "1"))).is_none());
        assert!(f.admit(Feed::Listed(request("elsewhere", "2"))).is_none());
        assert!(matches!(
            f.admit(Feed::Listed(request("found", "3"))),
            Some(Event::Apply(_))
        ));
        assert!(f.holds("found"));
    }

    #[test]
    fn a_request_listed_while_the_watch_lists_afresh_survives_its_end() {
        let mut f = Fixture::new(&[], &["found"]);
        f.admit(Feed::Watched(Event::Init));
        // The watch's own copy was left out (it was not the approver's then).
        assert!(matches!(
            f.admit(Feed::Listed(request("found", "1"))),
            Some(Event::InitApply(_))
        ));
        f.admit(Feed::Watched(Event::InitDone));
        assert!(f.holds("found"));
    }

    #[test]
    fn a_request_is_forgotten_only_as_the_object_the_look_saw() {
        let mut f = Fixture::new(&[request("ours", "new"), request("gone", "1")], &["ours"]);
        // Created again under the same name: the newer object stays.
        assert!(
            f.admit(Feed::Forget(request("ours", "old"), Forget::Done))
                .is_none()
        );
        // Out of scope for the look, the approver's again by now: it stays.
        assert!(
            f.admit(Feed::Forget(request("ours", "new"), Forget::OutOfScope))
                .is_none()
        );
        assert!(f.holds("ours"));
        assert!(matches!(
            f.admit(Feed::Forget(request("gone", "1"), Forget::OutOfScope)),
            Some(Event::Delete(_))
        ));
        assert!(matches!(
            f.admit(Feed::Forget(request("ours", "new"), Forget::Done)),
            Some(Event::Delete(_))
        ));
        assert!(!f.holds("ours") && !f.holds("gone"));
    }
}
