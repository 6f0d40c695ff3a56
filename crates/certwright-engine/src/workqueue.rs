//! A keyed work queue with client-go semantics: keys are deduplicated, handed out in FIFO
//! order, never to two workers at once, and may be scheduled for later. Workers loop on
//! [`WorkQueue::next`] and call [`WorkQueue::done`] when they have finished with a key.
//! A queue made [`WorkQueue::with_metrics`] reports its depth, adds, retries, the time a
//! due key waits for a worker and the time a worker holds it, as client-go's
//! `workqueue_*` metrics do.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::QueueMetrics;

/// A queue of keys to process. Cloning it gives another handle to the same queue.
pub(crate) struct WorkQueue<K> {
    shared: Arc<Shared<K>>,
}

struct Shared<K> {
    state: Mutex<State<K>>,
    /// Woken when a key becomes ready (one waiter) or on shutdown (all waiters).
    notify: Notify,
}

struct State<K> {
    /// Keys waiting to be handed out, oldest first, with when each became due; never
    /// contains a processing key.
    ready: VecDeque<(K, Instant)>,
    /// Keys that need processing: those in `ready`, and processing keys added again.
    dirty: HashSet<K>,
    /// Keys handed to a worker and not yet `done`, with when each was handed out.
    processing: HashMap<K, Instant>,
    /// Scheduled keys and their deadline; disjoint from `dirty`.
    scheduled: HashMap<K, Deadline>,
    /// The same schedule ordered by deadline.
    deadlines: BTreeMap<Deadline, K>,
    /// Makes deadlines unique so that equal instants keep their insertion order.
    next_seq: u64,
    shut_down: bool,
    metrics: QueueMetrics,
}

/// A point in time plus a sequence number, unique within one queue.
type Deadline = (Instant, u64);

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K> fmt::Debug for WorkQueue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("WorkQueue")
            .field("ready", &state.ready.len())
            .field("scheduled", &state.scheduled.len())
            .field("processing", &state.processing.len())
            .field("shut_down", &state.shut_down)
            .finish()
    }
}

impl<K> Default for WorkQueue<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Shared<K> {
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K> State<K>
where
    K: Clone + Eq + Hash,
{
    /// Marks the key as needing processing, due since `due`; returns whether it joined
    /// `ready`.
    fn make_ready(&mut self, key: K, due: Instant) -> bool {
        if let Some(deadline) = self.scheduled.remove(&key) {
            self.deadlines.remove(&deadline);
        }
        if self.dirty.contains(&key) {
            return false;
        }
        self.dirty.insert(key.clone());
        if self.processing.contains_key(&key) {
            return false;
        }
        self.ready.push_back((key, due));
        self.metrics.adds.inc();
        self.set_depth();
        true
    }

    fn set_depth(&self) {
        self.metrics
            .depth
            .set(i64::try_from(self.ready.len()).unwrap_or(i64::MAX));
    }

    /// Moves every key whose deadline has come to `ready`.
    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (due, _) = *entry.key();
            let key = entry.remove();
            self.scheduled.remove(&key);
            // Waiting since its time came, not since a worker noticed.
            self.make_ready(key, due);
        }
    }
}

impl<K> WorkQueue<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    /// An empty queue whose metrics no registry exports.
    pub(crate) fn new() -> Self {
        Self::with_metrics(QueueMetrics::detached())
    }

    /// An empty queue that reports to `metrics` ([`Metrics::queue`](crate::metrics::Metrics::queue)).
    pub(crate) fn with_metrics(metrics: QueueMetrics) -> Self {
        WorkQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    ready: VecDeque::new(),
                    dirty: HashSet::new(),
                    processing: HashMap::new(),
                    scheduled: HashMap::new(),
                    deadlines: BTreeMap::new(),
                    next_seq: 0,
                    shut_down: false,
                    metrics,
                }),
                notify: Notify::new(),
            }),
        }
    }

    /// Makes the key ready now. No-op if it is already ready; if a worker is processing
    /// it, it is handed out again after [`done`](Self::done). A schedule for the key is
    /// dropped: processing it now decides what comes next. Ignored after shutdown.
    pub(crate) fn add(&self, key: K) {
        let joined = {
            let mut state = self.shared.lock();
            if state.shut_down {
                return;
            }
            state.make_ready(key, Instant::now())
        };
        if joined {
            self.shared.notify.notify_one();
        }
    }

    /// Makes the key ready after `delay`. If it is already scheduled, the earlier time
    /// wins; if it is already ready (or added again while processing), this is a no-op.
    /// A zero delay is [`add`](Self::add). Ignored after shutdown.
    pub(crate) fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let now = Instant::now();
        // A delay too long to represent is as good as never; keep it far but finite.
        let at = now
            .checked_add(delay)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 60 * 60));
        let mut state = self.shared.lock();
        if state.shut_down || state.dirty.contains(&key) {
            return;
        }
        if let Some(&(current, _)) = state.scheduled.get(&key)
            && current <= at
        {
            return;
        }
        let seq = state.next_seq;
        state.next_seq = state.next_seq.wrapping_add(1);
        let deadline = (at, seq);
        if let Some(previous) = state.scheduled.insert(key.clone(), deadline) {
            state.deadlines.remove(&previous);
        }
        state.deadlines.insert(deadline, key);
        state.metrics.retries.inc();
        drop(state);
        // A waiter may be sleeping until a later deadline: let one re-arm its timer.
        self.shared.notify.notify_one();
    }

    /// The next ready key, oldest first, waiting until one is ready; the key is then
    /// processing until [`done`](Self::done). Returns `None` as soon as the queue is shut
    /// down, even if keys remain.
    pub(crate) async fn next(&self) -> Option<K> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            let wake_at = {
                let mut state = self.shared.lock();
                if state.shut_down {
                    return None;
                }
                state.promote_due(Instant::now());
                if let Some((key, due)) = state.ready.pop_front() {
                    let now = Instant::now();
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone(), now);
                    state
                        .metrics
                        .latency
                        .observe(now.saturating_duration_since(due).as_secs_f64());
                    state.set_depth();
                    let more = !state.ready.is_empty();
                    drop(state);
                    if more {
                        // Pass the baton: another worker may be waiting for what is left.
                        self.shared.notify.notify_one();
                    }
                    return Some(key);
                }
                // Registered while holding the lock, so no add or shutdown is missed.
                notified.as_mut().enable();
                state.deadlines.first_key_value().map(|(&(at, _), _)| at)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks the key as no longer processing. If it was added meanwhile, it is ready
    /// again at once.
    pub(crate) fn done(&self, key: &K) {
        let requeued = {
            let mut state = self.shared.lock();
            let Some(started) = state.processing.remove(key) else {
                return;
            };
            // Keys whose time came while every worker was busy count as waiting now.
            state.promote_due(Instant::now());
            state.metrics.observe_work(started.elapsed());
            if state.dirty.contains(key) && !state.shut_down {
                state.ready.push_back((key.clone(), Instant::now()));
                state.set_depth();
                true
            } else {
                false
            }
        };
        if requeued {
            self.shared.notify.notify_one();
        }
    }

    /// Shuts the queue down: every pending and future [`next`](Self::next) returns `None`
    /// and further adds are ignored.
    pub(crate) fn shutdown(&self) {
        self.shared.lock().shut_down = true;
        self.shared.notify.notify_waiters();
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    #[cfg(test)]
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shared.lock().shut_down
    }

    /// How many keys are waiting: ready (including processing keys added again) plus
    /// scheduled.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let state = self.shared.lock();
        state.dirty.len() + state.scheduled.len()
    }

    /// Whether no key is waiting.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many keys workers are processing.
    #[cfg(test)]
    pub(crate) fn processing(&self) -> usize {
        self.shared.lock().processing.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Takes the next key if one is ready without waiting.
    async fn try_next<K>(q: &WorkQueue<K>) -> Option<K>
    where
        K: Clone + Eq + Hash + Send + Sync + 'static,
    {
        tokio::time::timeout(Duration::ZERO, q.next())
            .await
            .ok()
            .flatten()
    }

    fn assert_send_sync<T: Send + Sync>(_: &T) {}

    #[tokio::test(start_paused = true)]
    async fn handle_and_next_future_are_send() {
        let q: WorkQueue<String> = WorkQueue::new();
        assert_send_sync(&q);
        let next = q.next();
        fn assert_send<T: Send>(_: &T) {}
        assert_send(&next);
    }

    #[tokio::test(start_paused = true)]
    async fn adds_are_deduplicated() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert_eq!(try_next(&q).await, None);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_come_out_in_fifo_order() {
        let q = WorkQueue::new();
        for i in 0..100 {
            q.add(i);
        }
        for i in 0..100 {
            let key = q.next().await.unwrap();
            assert_eq!(key, i);
            q.done(&key);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn key_added_while_processing_comes_back_after_done() {
        let q = WorkQueue::new();
        q.add("a");
        let key = q.next().await.unwrap();
        q.add("a");
        q.add("a");
        assert_eq!(q.len(), 1);
        assert_eq!(try_next(&q).await, None, "not while it is processing");
        q.done(&key);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(try_next(&q).await, None, "only once");
        q.done(&"a");
        assert!(q.is_empty());
        assert_eq!(q.processing(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn done_without_re_add_does_not_requeue() {
        let q = WorkQueue::new();
        q.add(1);
        let key = q.next().await.unwrap();
        q.done(&key);
        q.done(&key);
        assert_eq!(try_next(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_key_is_delivered_at_its_time_and_not_before() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(5));
        assert_eq!(q.len(), 1);
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert_eq!(try_next(&q).await, None);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_worker_picks_up_a_key_scheduled_after_it_started_waiting() {
        let q = WorkQueue::new();
        q.add_after("late", Duration::from_secs(60));
        let worker = {
            let q = q.clone();
            tokio::spawn(async move { (q.next().await, Instant::now()) })
        };
        tokio::task::yield_now().await;
        let start = Instant::now();
        q.add_after("soon", Duration::from_secs(2));
        let (key, at) = worker.await.unwrap();
        assert_eq!(key, Some("soon"));
        assert_eq!(at - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_earlier_time_wins() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(3));
        q.add_after("a", Duration::from_secs(7));
        assert_eq!(q.len(), 1);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
        q.done(&"a");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(try_next(&q).await, None, "the later schedules were dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_is_a_no_op_for_a_ready_key_and_add_overrides_a_schedule() {
        let q = WorkQueue::new();
        q.add("a");
        q.add_after("a", Duration::from_secs(1));
        q.add_after("b", Duration::from_secs(1));
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        q.done(&"a");
        q.done(&"b");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(try_next(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_keys_come_out_in_deadline_order() {
        let q = WorkQueue::new();
        q.add_after(3, Duration::from_secs(3));
        q.add_after(1, Duration::from_secs(1));
        q.add_after(2, Duration::from_secs(2));
        q.add_after(4, Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(10)).await;
        let mut got = Vec::new();
        while let Some(key) = try_next(&q).await {
            got.push(key);
        }
        assert_eq!(got, [1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_while_processing_waits_for_done() {
        let q = WorkQueue::new();
        q.add("a");
        let key = q.next().await.unwrap();
        q.add_after("a", Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(try_next(&q).await, None);
        q.done(&key);
        assert_eq!(try_next(&q).await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_wakes_waiters_with_none() {
        let q: WorkQueue<u32> = WorkQueue::new();
        q.add_after(1, Duration::from_secs(3600));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.next().await })
            })
            .collect();
        tokio::task::yield_now().await;
        let start = Instant::now();
        q.shutdown();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), None);
        }
        assert_eq!(Instant::now(), start, "promptly");
        q.add(2);
        assert_eq!(q.next().await, None);
        assert!(q.is_shut_down());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_workers_never_share_a_key() {
        const KEYS: u32 = 1000;
        let q = WorkQueue::new();
        for key in 0..KEYS {
            q.add(key);
        }
        let processing = Arc::new(Mutex::new(HashSet::new()));
        let deliveries = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                let processing = Arc::clone(&processing);
                let deliveries = Arc::clone(&deliveries);
                tokio::spawn(async move {
                    while let Some(key) = q.next().await {
                        assert!(
                            processing.lock().unwrap().insert(key),
                            "key {key} handed to two workers"
                        );
                        let count = {
                            let mut deliveries = deliveries.lock().unwrap();
                            let count = deliveries.entry(key).or_insert(0);
                            *count += 1;
                            *count
                        };
                        if count == 1 {
                            // Added again while processing: must come back once, later.
                            q.add(key);
                        }
                        tokio::task::yield_now().await;
                        assert!(processing.lock().unwrap().remove(&key));
                        q.done(&key);
                        let total: u32 = deliveries.lock().unwrap().values().sum();
                        if total == 2 * KEYS {
                            q.shutdown();
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            tokio::time::timeout(Duration::from_secs(30), worker)
                .await
                .expect("workers finish")
                .unwrap();
        }
        let deliveries = deliveries.lock().unwrap();
        assert_eq!(deliveries.len(), KEYS as usize);
        assert!(deliveries.values().all(|&count| count == 2));
    }
}
