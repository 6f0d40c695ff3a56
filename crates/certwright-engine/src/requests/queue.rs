//! The request loop's queue: keys deduplicated, handed out oldest first, never to two
//! looks at once, and scheduled for later when a look asks for it; a key added while
//! its look is under way comes back once that look is done.
//!
//! The one part of the request loop that is not kube-runtime's. kube-runtime's
//! scheduler puts every object it is given into a `tokio_util` `DelayQueue`, an object
//! due now too, and that queue hands it out only when its next millisecond timer has
//! fired: each approved request waits for a timer tick before its look begins. On the
//! signing path that cost about 2 ms of approval → Ready at a steady rate, half of it
//! (`cargo xtask bench`, docs/benchmarks.md). Here a due key wakes a waiting look at
//! once; only a key scheduled for later waits for a timer. Test
//! `a_due_key_is_handed_out_at_once_where_kube_runtime_waits_for_a_timer_tick`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A queue of keys to look at; shared between looks behind an `Arc`.
pub(crate) struct Queue<K> {
    state: Mutex<State<K>>,
    /// Woken when a key becomes due (one waiter) or on shutdown (all waiters).
    notify: Notify,
}

struct State<K> {
    /// Keys waiting to be handed out, oldest first; never one under a look.
    ready: VecDeque<K>,
    /// Keys that need a look: those in `ready`, and keys added again during their look.
    dirty: HashSet<K>,
    /// Keys handed out and not yet `done`.
    processing: HashSet<K>,
    /// Scheduled keys and their deadline; disjoint from `dirty`.
    scheduled: std::collections::HashMap<K, Deadline>,
    /// The same schedule ordered by deadline.
    deadlines: BTreeMap<Deadline, K>,
    /// Makes deadlines unique so that equal instants keep their insertion order.
    next_seq: u64,
    shut_down: bool,
}

/// A point in time plus a sequence number, unique within one queue.
type Deadline = (Instant, u64);

impl<K> State<K>
where
    K: Clone + Eq + Hash,
{
    /// Marks the key as needing a look; returns whether it joined `ready`.
    fn make_ready(&mut self, key: K) -> bool {
        if let Some(deadline) = self.scheduled.remove(&key) {
            self.deadlines.remove(&deadline);
        }
        if !self.dirty.insert(key.clone()) || self.processing.contains(&key) {
            return false;
        }
        self.ready.push_back(key);
        true
    }

    /// Moves every key whose deadline has come to `ready`.
    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.scheduled.remove(&key);
            self.make_ready(key);
        }
    }
}

impl<K> Queue<K>
where
    K: Clone + Eq + Hash,
{
    pub(crate) fn new() -> Self {
        Queue {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                scheduled: std::collections::HashMap::new(),
                deadlines: BTreeMap::new(),
                next_seq: 0,
                shut_down: false,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the key due now. No-op if it is already due; if it is under a look, it is
    /// handed out again after [`done`](Self::done). A schedule for the key is dropped:
    /// looking now decides what comes next. Ignored after shutdown.
    pub(crate) fn add(&self, key: K) {
        let joined = {
            let mut state = self.lock();
            !state.shut_down && state.make_ready(key)
        };
        if joined {
            self.notify.notify_one();
        }
    }

    /// Makes the key due after `delay`. If it is already scheduled, the earlier time
    /// wins; if it is already due (or added again during its look), this is a no-op. A
    /// zero delay is [`add`](Self::add). Ignored after shutdown.
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
        let mut state = self.lock();
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
        drop(state);
        // A waiter may be sleeping until a later deadline: let one re-arm its timer.
        self.notify.notify_one();
    }

    /// The next due key, oldest first, waiting until one is due; the key is then under
    /// a look until [`done`](Self::done). Returns `None` as soon as the queue is shut
    /// down, even if keys remain.
    pub(crate) async fn next(&self) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            let wake_at = {
                let mut state = self.lock();
                if state.shut_down {
                    return None;
                }
                state.promote_due(Instant::now());
                if let Some(key) = state.ready.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    let more = !state.ready.is_empty();
                    drop(state);
                    if more {
                        // Pass the baton: another look may be waiting for what is left.
                        self.notify.notify_one();
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

    /// Ends the key's look. If it was added meanwhile, it is due again at once.
    pub(crate) fn done(&self, key: &K) {
        let requeued = {
            let mut state = self.lock();
            if !state.processing.remove(key) {
                return;
            }
            // Keys whose time came while every look was busy are due now.
            state.promote_due(Instant::now());
            if state.dirty.contains(key) && !state.shut_down {
                state.ready.push_back(key.clone());
                true
            } else {
                false
            }
        };
        if requeued {
            self.notify.notify_one();
        }
    }

    /// Shuts the queue down: every pending and future [`next`](Self::next) returns `None`
    /// and further adds are ignored.
    pub(crate) fn shutdown(&self) {
        self.lock().shut_down = true;
        self.notify.notify_waiters();
    }

    /// How many keys are waiting: due (including keys added again during their look)
    /// plus scheduled.
    #[cfg(test)]
    fn len(&self) -> usize {
        let state = self.lock();
        state.dirty.len() + state.scheduled.len()
    }

    /// How many keys are under a look.
    #[cfg(test)]
    fn processing(&self) -> usize {
        self.lock().processing.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::sync::Arc;

    use futures::StreamExt as _;
    use futures::channel::mpsc::UnboundedSender;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt as _;
    use kube::runtime::WatchStreamExt as _;
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::reflector;
    use kube::runtime::watcher::{self, Event};

    use super::*;

    /// Takes the next key if one is due without waiting.
    async fn try_next<K: Clone + Eq + Hash>(q: &Queue<K>) -> Option<K> {
        tokio::time::timeout(Duration::ZERO, q.next())
            .await
            .ok()
            .flatten()
    }

    fn assert_send_sync<T: Send + Sync>(_: &T) {}

    #[tokio::test(start_paused = true)]
    async fn handle_and_next_future_are_send() {
        let q: Queue<String> = Queue::new();
        assert_send_sync(&q);
        let next = q.next();
        fn assert_send<T: Send>(_: &T) {}
        assert_send(&next);
    }

    #[tokio::test(start_paused = true)]
    async fn adds_are_deduplicated() {
        let q = Arc::new(Queue::new());
        q.add("a");
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert_eq!(try_next(&q).await, None);
        assert_eq!(q.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_come_out_in_fifo_order() {
        let q = Arc::new(Queue::new());
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
        let q = Arc::new(Queue::new());
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
        assert_eq!(q.len(), 0);
        assert_eq!(q.processing(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn done_without_re_add_does_not_requeue() {
        let q = Arc::new(Queue::new());
        q.add(1);
        let key = q.next().await.unwrap();
        q.done(&key);
        q.done(&key);
        assert_eq!(try_next(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_key_is_delivered_at_its_time_and_not_before() {
        let q = Arc::new(Queue::new());
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(5));
        assert_eq!(q.len(), 1);
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert_eq!(try_next(&q).await, None);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        assert_eq!(q.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_worker_picks_up_a_key_scheduled_after_it_started_waiting() {
        let q = Arc::new(Queue::new());
        q.add_after("late", Duration::from_secs(60));
        let worker = {
            let q = Arc::clone(&q);
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
        let q = Arc::new(Queue::new());
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
        let q = Arc::new(Queue::new());
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
        let q = Arc::new(Queue::new());
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
        let q = Arc::new(Queue::new());
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
        let q: Arc<Queue<u32>> = Arc::new(Queue::new());
        q.add_after(1, Duration::from_secs(3600));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let q = Arc::clone(&q);
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
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_workers_never_share_a_key() {
        const KEYS: u32 = 1000;
        let q = Arc::new(Queue::new());
        for key in 0..KEYS {
            q.add(key);
        }
        let processing = Arc::new(Mutex::new(HashSet::new()));
        let deliveries = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let q = Arc::clone(&q);
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

    /// Why the request loop has this queue. kube-runtime's `Controller` begins a look at
    /// an object due now only once the clock has moved on to its next millisecond timer
    /// tick; this queue hands the key to a waiting look with the clock standing still.
    /// The tick comes from tokio-util's `DelayQueue`, which rounds a deadline up to the
    /// next millisecond after its start: the change must come part of a millisecond
    /// after a tick, as real changes do, or it would be due on the tick itself.
    #[tokio::test(start_paused = true)]
    async fn a_due_key_is_handed_out_at_once_where_kube_runtime_waits_for_a_timer_tick() {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let (events, watched) = futures::channel::mpsc::unbounded::<Event<ConfigMap>>();
        let (looked, mut looks) = futures::channel::mpsc::unbounded::<(String, Instant)>();
        let stream = watched
            .map(Ok::<_, watcher::Error>)
            .reflect(writer)
            .applied_objects();
        let controller = Controller::for_stream(stream, reader).run(
            |cm: Arc<ConfigMap>, looked: Arc<UnboundedSender<(String, Instant)>>| async move {
                let _ = looked.unbounded_send((cm.name_any(), Instant::now()));
                Ok::<_, std::convert::Infallible>(Action::await_change())
            },
            |_, _, _| Action::await_change(),
            Arc::new(looked),
        );
        let runner = tokio::spawn(controller.for_each(|_| async {}));
        let object = |name: &str| {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(name.into());
            cm.metadata.namespace = Some("default".into());
            cm
        };
        // An empty first list, then one look, so that the runner is under way.
        events.unbounded_send(Event::Init).unwrap();
        events.unbounded_send(Event::InitDone).unwrap();
        events
            .unbounded_send(Event::Apply(object("first")))
            .unwrap();
        assert_eq!(looks.next().await.unwrap().0, "first");
        // A change comes in part of a millisecond later, as changes do.
        tokio::time::advance(Duration::from_micros(100)).await;
        let sent = Instant::now();
        events.unbounded_send(Event::Apply(object("due"))).unwrap();
        let (name, at) = looks.next().await.unwrap();
        assert_eq!(name, "due");
        assert!(
            at > sent,
            "kube-runtime's look began only once the clock had moved ({:?})",
            at - sent
        );
        runner.abort();

        let q = Arc::new(Queue::new());
        let waiting = {
            let q = Arc::clone(&q);
            tokio::spawn(async move { (q.next().await, Instant::now()) })
        };
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_micros(100)).await;
        let sent = Instant::now();
        q.add("due");
        let (key, at) = waiting.await.unwrap();
        assert_eq!(key, Some("due"));
        assert_eq!(at, sent, "this queue's waiting look began at once");
    }
}
