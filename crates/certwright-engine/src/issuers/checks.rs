//! Issuer health checks, run off the issuer loop.
//!
//! A check waits on a PKI, which may take until its timeout when the PKI does not answer.
//! Run inline, a few issuers pointing at addresses that never answer would hold every
//! look the issuer loop may run at once and delay every other team's issuer. So a check runs as its own task,
//! bounded twice: [`CHECKS_AT_ONCE`] in all and [`CHECKS_PER_NAMESPACE`] per namespace
//! (cluster issuers count as one namespace), so that one namespace's issuers cannot take
//! the slots of another's. The issuer's reconcile starts a check and takes in its verdict
//! when the check's end wakes the issuer again, so every status write stays in a look at
//! the issuer.
//!
//! An issuer that has never answered a check gets [`FIRST_CHECK_TIMEOUT`], so that a
//! PKI that does not answer makes a new issuer not Ready within seconds; once it timed
//! out, or once the issuer answered, checks get the full [`CHECK_TIMEOUT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::issuers::{Health, IssuerEntry, IssuerKey};

/// Health checks may not take longer than this.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// The first health check of an issuer that has never answered one.
pub(crate) const FIRST_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// After a first check that timed out, the next one comes this soon (at the latest),
/// with the full timeout.
pub(crate) const RECHECK_AFTER_FIRST_TIMEOUT: Duration = Duration::from_secs(30);
/// Health checks running at once, in all.
pub(crate) const CHECKS_AT_ONCE: usize = 64;
/// Health checks running at once for the issuers of one namespace.
pub(crate) const CHECKS_PER_NAMESPACE: usize = 4;

/// How far an issuer has come with its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum History {
    /// A first check timed out: the next one gets the full timeout.
    FirstTimedOut,
    /// A check was answered (healthy or not).
    Answered,
}

/// A check's verdict, waiting for the issuer's reconcile to take it in.
struct Finished {
    /// The build that was checked: a verdict on a build since replaced is dropped.
    entry: Arc<IssuerEntry>,
    health: Health,
    at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The checks under way and their verdicts.
pub(crate) struct Checks {
    all: Arc<Semaphore>,
    per_namespace: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_namespace_limit: usize,
    in_flight: Mutex<HashMap<IssuerKey, Arc<IssuerEntry>>>,
    finished: Mutex<HashMap<IssuerKey, Finished>>,
    history: Mutex<HashMap<IssuerKey, History>>,
}

/// The slots one running check holds.
pub(crate) struct Permits {
    _namespace: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl Checks {
    pub(crate) fn new() -> Self {
        Checks::with_limits(CHECKS_AT_ONCE, CHECKS_PER_NAMESPACE)
    }

    fn with_limits(all: usize, per_namespace: usize) -> Self {
        Checks {
            all: Arc::new(Semaphore::new(all)),
            per_namespace: Mutex::default(),
            per_namespace_limit: per_namespace,
            in_flight: Mutex::default(),
            finished: Mutex::default(),
            history: Mutex::default(),
        }
    }

    /// Marks a check of `entry` as under way, unless one already is. `false` when one is.
    pub(crate) fn begin(&self, key: &IssuerKey, entry: &Arc<IssuerEntry>) -> bool {
        let mut in_flight = lock(&self.in_flight);
        if in_flight.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            return false;
        }
        in_flight.insert(key.clone(), entry.clone());
        true
    }

    /// How long the next check of `key` may take.
    pub(crate) fn timeout(&self, key: &IssuerKey) -> Duration {
        match lock(&self.history).get(key) {
            None => FIRST_CHECK_TIMEOUT,
            Some(_) => CHECK_TIMEOUT,
        }
    }

    /// Waits for a slot in `key`'s namespace and then for one in all. Waiters are served
    /// in turn (tokio's semaphores are fair), so a namespace that queues many checks
    /// holds at most its own slots.
    pub(crate) async fn permits(&self, key: &IssuerKey) -> Permits {
        let bucket = if key.cluster {
            // Cluster issuers are the platform team's: a bucket no namespace can name.
            "/cluster".to_string()
        } else {
            key.namespace.clone()
        };
        let namespace = lock(&self.per_namespace)
            .entry(bucket)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_namespace_limit)))
            .clone();
        // The semaphores are never closed, so acquiring cannot fail.
        #[allow(clippy::expect_used)]
        let namespace = namespace.acquire_owned().await.expect("never closed");
        #[allow(clippy::expect_used)]
        let all = self
            .all
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        Permits {
            _namespace: namespace,
            _all: all,
        }
    }

    /// Records a check's verdict for the issuer's reconcile to take in. `timed_out`
    /// when the check did not finish in time. The verdict of a check that is no longer
    /// the issuer's (a newer build's check began, or the issuer was deleted and
    /// forgotten) is dropped: nothing of a deleted issuer's build stays behind.
    pub(crate) fn finish(
        &self,
        key: &IssuerKey,
        entry: &Arc<IssuerEntry>,
        health: Health,
        timed_out: bool,
    ) {
        let ours = {
            let mut in_flight = lock(&self.in_flight);
            let ours = in_flight.get(key).is_some_and(|e| Arc::ptr_eq(e, entry));
            if ours {
                in_flight.remove(key);
            }
            ours
        };
        if !ours {
            self.prune_buckets();
            return;
        }
        let mut history = lock(&self.history);
        let next = match (history.get(key), timed_out) {
            (_, false) | (Some(History::Answered), true) => History::Answered,
            (_, true) => History::FirstTimedOut,
        };
        history.insert(key.clone(), next);
        drop(history);
        lock(&self.finished).insert(
            key.clone(),
            Finished {
                entry: entry.clone(),
                health,
                at: Instant::now(),
            },
        );
        self.prune_buckets();
    }

    /// A check that ended without a verdict (the engine is stopping).
    pub(crate) fn abandon(&self, key: &IssuerKey, entry: &Arc<IssuerEntry>) {
        let mut in_flight = lock(&self.in_flight);
        if in_flight.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            in_flight.remove(key);
        }
    }

    /// The verdict of a finished check of this very build, with when it was reached.
    pub(crate) fn take(
        &self,
        key: &IssuerKey,
        entry: &Arc<IssuerEntry>,
    ) -> Option<(Health, Instant)> {
        let mut finished = lock(&self.finished);
        let done = finished.remove(key)?;
        Arc::ptr_eq(&done.entry, entry).then_some((done.health, done.at))
    }

    /// When the next periodic check is due, given the normal interval: sooner after a
    /// first check that timed out.
    pub(crate) fn next_check(&self, key: &IssuerKey, interval: Duration) -> Duration {
        match lock(&self.history).get(key) {
            Some(History::FirstTimedOut) => interval.min(RECHECK_AFTER_FIRST_TIMEOUT),
            _ => interval,
        }
    }

    /// Forgets a deleted issuer: one created again under its name starts afresh, and a
    /// check still running for it records nothing when it ends.
    pub(crate) fn forget(&self, key: &IssuerKey) {
        lock(&self.in_flight).remove(key);
        lock(&self.history).remove(key);
        lock(&self.finished).remove(key);
    }

    /// Whether nothing of `key` is kept: no check under way, no verdict, no history.
    #[cfg(test)]
    pub(crate) fn holds_nothing_of(&self, key: &IssuerKey) -> bool {
        !lock(&self.in_flight).contains_key(key)
            && !lock(&self.finished).contains_key(key)
            && !lock(&self.history).contains_key(key)
    }

    /// Drops the buckets of namespaces with no check running or waiting.
    fn prune_buckets(&self) {
        lock(&self.per_namespace).retain(|_, s| Arc::strong_count(s) > 1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::issuers::{Fingerprint, IssuerReason};
    use crate::protection::{Protection, ProtectionConfig};

    fn key(namespace: &str, name: &str) -> IssuerKey {
        IssuerKey {
            cluster: false,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn entry() -> Arc<IssuerEntry> {
        Arc::new(IssuerEntry {
            fingerprint: Fingerprint {
                uid: None,
                generation: None,
                secrets: Vec::new(),
            },
            spec: Default::default(),
            backend: None,
            protection: Arc::new(Protection::new(ProtectionConfig::new(1, 1.0))),
            health: Mutex::new(Health {
                reason: IssuerReason::Verified,
                message: String::new(),
            }),
            checked: Default::default(),
            redact: false,
        })
    }

    fn health(reason: IssuerReason) -> Health {
        Health {
            reason,
            message: String::new(),
        }
    }

    #[test]
    fn one_check_per_build_at_a_time() {
        let checks = Checks::new();
        let (k, a, b) = (key("t", "i"), entry(), entry());
        assert!(checks.begin(&k, &a));
        assert!(!checks.begin(&k, &a));
        // A new build is checked even while the old one's check runs.
        assert!(checks.begin(&k, &b));
        // The old build's verdict does not end the new one's check, and is not taken
        // for it.
        checks.finish(&k, &a, health(IssuerReason::Verified), false);
        assert!(!checks.begin(&k, &b));
        assert!(checks.take(&k, &b).is_none());
        checks.finish(&k, &b, health(IssuerReason::Unreachable), false);
        assert_eq!(
            checks.take(&k, &b).unwrap().0.reason,
            IssuerReason::Unreachable
        );
        assert!(checks.take(&k, &b).is_none());
    }

    #[test]
    fn a_first_check_is_short_and_a_timeout_brings_the_next_one_sooner() {
        let checks = Checks::new();
        let (k, e) = (key("t", "i"), entry());
        let hour = Duration::from_secs(3600);
        assert_eq!(checks.timeout(&k), FIRST_CHECK_TIMEOUT);
        assert!(checks.begin(&k, &e));
        checks.finish(&k, &e, health(IssuerReason::Unreachable), true);
        assert_eq!(checks.timeout(&k), CHECK_TIMEOUT);
        assert_eq!(checks.next_check(&k, hour), RECHECK_AFTER_FIRST_TIMEOUT);
        assert!(checks.begin(&k, &e));
        checks.finish(&k, &e, health(IssuerReason::Verified), false);
        assert_eq!(checks.next_check(&k, hour), hour);
        // Once answered, a later timeout does not make checks short again.
        assert!(checks.begin(&k, &e));
        checks.finish(&k, &e, health(IssuerReason::Unreachable), true);
        assert_eq!(checks.timeout(&k), CHECK_TIMEOUT);
        assert_eq!(checks.next_check(&k, hour), hour);
        checks.forget(&k);
        assert_eq!(checks.timeout(&k), FIRST_CHECK_TIMEOUT);
    }

    #[test]
    fn a_check_that_ends_after_its_issuer_was_forgotten_leaves_nothing_behind() {
        let checks = Checks::new();
        let (k, e) = (key("t", "i"), entry());
        assert!(checks.begin(&k, &e));
        checks.forget(&k);
        checks.finish(&k, &e, health(IssuerReason::Verified), false);
        assert!(lock(&checks.finished).is_empty(), "no build is held");
        assert!(checks.take(&k, &e).is_none());
        // A namesake's first check is a first check.
        assert_eq!(checks.timeout(&k), FIRST_CHECK_TIMEOUT);
        assert!(checks.begin(&k, &entry()));
    }

    #[tokio::test]
    async fn a_busy_namespace_does_not_take_another_namespaces_slots() {
        let checks = Checks::with_limits(3, 2);
        let busy = key("busy", "a");
        let p1 = checks.permits(&busy).await;
        let p2 = checks.permits(&busy).await;
        // A third check in the busy namespace waits for one of its own slots...
        let third = tokio::time::timeout(Duration::from_millis(50), checks.permits(&busy)).await;
        assert!(third.is_err());
        // ...while another namespace gets the last slot in all at once.
        let other = tokio::time::timeout(
            Duration::from_millis(50),
            checks.permits(&key("quiet", "b")),
        )
        .await
        .unwrap();
        drop((p1, p2, other));
        checks.prune_buckets();
        assert!(lock(&checks.per_namespace).is_empty());
    }
}
