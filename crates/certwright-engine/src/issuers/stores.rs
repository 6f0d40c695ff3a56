//! The issuer loop's reflector stores, and how a deleted issuer stays in them until
//! its last look.
//!
//! kube-runtime's `Controller` looks only at objects in its store: once a watch says an
//! object is gone, a look queued for it ends as `ObjectNotFound` and the reconciler is
//! never called. Its answer for work on deletion is a finalizer, which would need
//! `patch` on every tenant's issuers and would leave an issuer (and its namespace)
//! Terminating for as long as the controller is down or uninstalled. The issuer loop
//! has work to do when an issuer goes: drop its built backend (and the credentials in
//! it), its health checks, issuance records, bundle record, Secret index and metric
//! series, and wake the requests that name it, in turn with any look at the issuer
//! still under way, which would otherwise put a backend back. So a deletion enters the
//! store as a *tombstone*: the last state of the object, marked with [`TOMBSTONE`].
//! The loop's look at a tombstone forgets the issuer and hands the tombstone back
//! ([`Feed::Purge`]), and only then does it leave the store. An issuer that disappears
//! while the watch is down, seen only as an absence from the next list, gets a
//! tombstone too. Readers of the stores ([`IssuerObjects`]) never see tombstones.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

use crate::issuers::IssuerKey;
use crate::kinds::{IssuerObject, IssuerResource};

/// The annotation that marks a deleted issuer in the engine's store. It is the engine's
/// own: it is removed from every object the watch brings in, so no one can make a live
/// issuer look deleted by setting it.
pub(crate) const TOMBSTONE: &str = "pki.certwright.io/engine-tombstone";

/// Whether the stored object stands for a deleted issuer.
pub(crate) fn is_tombstone<R: IssuerResource>(obj: &R) -> bool {
    obj.meta()
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(TOMBSTONE))
}

fn tombstone<R: IssuerResource>(mut obj: R) -> R {
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TOMBSTONE.to_string(), String::new());
    obj
}

/// The object as the API server has it, without a tombstone mark anyone put on it.
fn live<R: IssuerResource>(mut obj: R) -> R {
    if let Some(annotations) = obj.meta_mut().annotations.as_mut() {
        annotations.remove(TOMBSTONE);
    }
    obj
}

/// The key of an issuer object of the kind that is `cluster`-scoped or not.
pub(crate) fn key_of<R: IssuerResource>(obj: &R, cluster: bool) -> IssuerKey {
    IssuerKey {
        cluster,
        namespace: if cluster {
            String::new()
        } else {
            obj.meta().namespace.clone().unwrap_or_default()
        },
        name: obj.meta().name.clone().unwrap_or_default(),
    }
}

/// What reaches an issuer kind's store: the watch's events, and tombstones whose last
/// look is done.
pub(crate) enum Feed<R> {
    Watched(Event<R>),
    Purge(R),
}

/// Where a (re)list has come: the objects it brought so far.
pub(crate) struct Listing<R: IssuerResource> {
    seen: Option<HashSet<ObjectRef<R>>>,
}

impl<R: IssuerResource> Default for Listing<R> {
    fn default() -> Self {
        Listing { seen: None }
    }
}

/// Turns what the watch says into the events applied to the store (see the module's
/// docs): a deletion becomes a tombstone, an object missing from a new list too, and a
/// tombstone leaves once handed back, unless a new object took its name meanwhile.
/// `held` is the store before these events are applied.
pub(crate) fn admit<R: IssuerResource>(
    held: &Store<R>,
    listing: &mut Listing<R>,
    feed: Feed<R>,
) -> Vec<Event<R>> {
    match feed {
        Feed::Watched(Event::Init) => {
            listing.seen = Some(HashSet::new());
            vec![Event::Init]
        }
        Feed::Watched(Event::InitApply(obj)) => {
            if let Some(seen) = &mut listing.seen {
                seen.insert(ObjectRef::from_obj(&obj));
            }
            vec![Event::InitApply(live(obj))]
        }
        Feed::Watched(Event::InitDone) => {
            let seen = listing.seen.take().unwrap_or_default();
            // Held before the list and absent from it: deleted while the watch was down
            // (or a tombstone not yet looked at). The list replaces the store, so each
            // comes back as a tombstone after it.
            let mut events = vec![Event::InitDone];
            for gone in held.state() {
                if !seen.contains(&ObjectRef::from_obj(&*gone)) {
                    events.push(Event::Apply(tombstone((*gone).clone())));
                }
            }
            events
        }
        Feed::Watched(Event::Apply(obj)) => vec![Event::Apply(live(obj))],
        Feed::Watched(Event::Delete(obj)) => vec![Event::Apply(tombstone(live(obj)))],
        Feed::Purge(obj) => {
            let stored = held.get(&ObjectRef::from_obj(&obj));
            let same = stored.is_some_and(|stored| {
                is_tombstone(&*stored) && stored.meta().uid == obj.meta().uid
            });
            if same {
                vec![Event::Delete(obj)]
            } else {
                Vec::new()
            }
        }
    }
}

type Lookup = Box<dyn Fn(&IssuerKey) -> Option<Arc<dyn IssuerObject>> + Send + Sync>;

/// Reads both issuer kinds' stores by key. Tombstones are not there for a reader.
pub(crate) struct IssuerObjects {
    namespaced: Lookup,
    cluster: Lookup,
}

impl IssuerObjects {
    pub(crate) fn new<N: IssuerResource, C: IssuerResource>(
        namespaced: Store<N>,
        cluster: Store<C>,
    ) -> Self {
        IssuerObjects {
            namespaced: Box::new(move |key| {
                let obj = namespaced.get(&ObjectRef::new(&key.name).within(&key.namespace))?;
                (!is_tombstone(&*obj)).then_some(obj as Arc<dyn IssuerObject>)
            }),
            cluster: Box::new(move |key| {
                let obj = cluster.get(&ObjectRef::new(&key.name))?;
                (!is_tombstone(&*obj)).then_some(obj as Arc<dyn IssuerObject>)
            }),
        }
    }

    /// The issuer as last watched, unless it was deleted.
    pub(crate) fn get(&self, key: &IssuerKey) -> Option<Arc<dyn IssuerObject>> {
        if key.cluster {
            (self.cluster)(key)
        } else {
            (self.namespaced)(key)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use certwright_api::{InternalClusterIssuer, IssuerSpec};
    use kube::runtime::reflector::store::Writer;

    fn issuer(name: &str, uid: &str) -> InternalClusterIssuer {
        let mut obj = InternalClusterIssuer::new(name, IssuerSpec::default().into());
        obj.metadata.uid = Some(uid.into());
        obj
    }

    struct Fixture {
        store: Store<InternalClusterIssuer>,
        writer: Writer<InternalClusterIssuer>,
        listing: Listing<InternalClusterIssuer>,
    }

    impl Fixture {
        fn new() -> Self {
            let (store, writer) = kube::runtime::reflector::store();
            Fixture {
                store,
                writer,
                listing: Listing::default(),
            }
        }

        fn feed(&mut self, feed: Feed<InternalClusterIssuer>) -> Vec<Event<InternalClusterIssuer>> {
            let events = admit(&self.store, &mut self.listing, feed);
            for event in &events {
                self.writer.apply_watcher_event(event);
            }
            events
        }

        fn list(&mut self, objs: &[InternalClusterIssuer]) -> Vec<Event<InternalClusterIssuer>> {
            self.feed(Feed::Watched(Event::Init));
            for obj in objs {
                self.feed(Feed::Watched(Event::InitApply(obj.clone())));
            }
            self.feed(Feed::Watched(Event::InitDone))
        }

        fn stored(&self, name: &str) -> Option<Arc<InternalClusterIssuer>> {
            self.store.get(&ObjectRef::new(name))
        }

        fn lookup(&self, name: &str) -> Option<Arc<dyn IssuerObject>> {
            let (namespaced, _) =
                kube::runtime::reflector::store::<certwright_api::InternalIssuer>();
            IssuerObjects::new(namespaced, self.store.clone()).get(&IssuerKey {
                cluster: true,
                namespace: String::new(),
                name: name.into(),
            })
        }
    }

    #[test]
    fn a_deleted_issuer_stays_as_a_tombstone_until_handed_back() {
        let mut f = Fixture::new();
        f.list(&[issuer("corp", "u1")]);
        let events = f.feed(Feed::Watched(Event::Delete(issuer("corp", "u1"))));
        assert!(matches!(&events[..], [Event::Apply(obj)] if is_tombstone(obj)));
        assert!(is_tombstone(&*f.stored("corp").unwrap()));
        assert!(f.lookup("corp").is_none(), "readers never see a tombstone");

        let events = f.feed(Feed::Purge(issuer("corp", "u1")));
        assert!(matches!(&events[..], [Event::Delete(_)]));
        assert!(f.stored("corp").is_none());
    }

    #[test]
    fn a_tombstone_handed_back_after_a_namesake_came_leaves_the_namesake() {
        let mut f = Fixture::new();
        f.list(&[issuer("corp", "u1")]);
        f.feed(Feed::Watched(Event::Delete(issuer("corp", "u1"))));
        f.feed(Feed::Watched(Event::Apply(issuer("corp", "u2"))));

        assert!(f.feed(Feed::Purge(issuer("corp", "u1"))).is_empty());
        let stored = f.stored("corp").unwrap();
        assert_eq!(stored.metadata.uid.as_deref(), Some("u2"));
        assert!(!is_tombstone(&*stored));
        assert!(f.lookup("corp").is_some());
    }

    #[test]
    fn an_issuer_missing_from_a_new_list_becomes_a_tombstone() {
        let mut f = Fixture::new();
        f.list(&[issuer("kept", "u1"), issuer("gone", "u2")]);
        let events = f.list(&[issuer("kept", "u1")]);
        assert!(matches!(&events[0], Event::InitDone));
        assert!(
            matches!(&events[1..], [Event::Apply(obj)] if is_tombstone(obj) && obj.metadata.name.as_deref() == Some("gone"))
        );
        assert!(is_tombstone(&*f.stored("gone").unwrap()));
        assert!(!is_tombstone(&*f.stored("kept").unwrap()));
    }

    #[test]
    fn a_tombstone_not_yet_looked_at_survives_a_new_list() {
        let mut f = Fixture::new();
        f.list(&[issuer("gone", "u1")]);
        f.feed(Feed::Watched(Event::Delete(issuer("gone", "u1"))));
        f.list(&[]);
        assert!(is_tombstone(&*f.stored("gone").unwrap()));
    }

    #[test]
    fn no_one_can_mark_a_live_issuer_deleted() {
        let mut f = Fixture::new();
        let mut forged = issuer("corp", "u1");
        forged
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(TOMBSTONE.to_string(), String::new());
        f.list(&[forged.clone()]);
        assert!(f.lookup("corp").is_some());
        f.feed(Feed::Watched(Event::Apply(forged)));
        assert!(f.lookup("corp").is_some());
        assert!(!is_tombstone(&*f.stored("corp").unwrap()));
    }
}
