//! Kubernetes Events for request and issuer transitions, written in the background so
//! that the signing path never waits on them. Events are best effort: when the API
//! server falls behind, the oldest unsent ones are dropped and counted in the log.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::Notify;

/// How many events may wait to be written.
const QUEUE: usize = 4096;
/// The API server refuses notes over 1 kB.
const MAX_NOTE: usize = 1000;

/// One event about one object.
#[derive(Clone, Debug)]
pub struct Transition {
    /// The object the event is about.
    pub regarding: ObjectReference,
    /// PascalCase reason, e.g. `Issued`.
    pub reason: &'static str,
    /// What happened, in a sentence.
    pub note: String,
    /// Warning rather than Normal.
    pub warning: bool,
}

/// Sends events to a background writer.
#[derive(Clone, Debug)]
pub struct EventSink {
    queue: Option<Arc<Queue>>,
}

/// Events waiting to be written, at most `capacity`: when full, the oldest gives way to
/// the newest, which says more about the object's state now.
#[derive(Debug)]
struct Queue {
    items: Mutex<VecDeque<Transition>>,
    ready: Notify,
    capacity: usize,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(64))),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `t`; returns the oldest event, dropped to make room, if the queue was full.
    fn push(&self, t: Transition) -> Option<Transition> {
        let dropped = {
            let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = if items.len() >= self.capacity {
                items.pop_front()
            } else {
                None
            };
            items.push_back(t);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The oldest queued event, waiting for one.
    async fn pop(&self) -> Transition {
        loop {
            let next = self
                .items
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            match next {
                Some(t) => return t,
                // A push between the look and the wait leaves a permit: no event is missed.
                None => self.ready.notified().await,
            }
        }
    }
}

impl EventSink {
    /// Starts the writer on the current runtime.
    pub fn start(client: Client, controller: String, instance: Option<String>) -> EventSink {
        let queue = Arc::new(Queue::new(QUEUE));
        let pending = queue.clone();
        tokio::spawn(async move {
            loop {
                let t = pending.pop().await;
                let namespace = t
                    .regarding
                    .namespace
                    .clone()
                    .filter(|ns| !ns.is_empty())
                    .unwrap_or_else(|| "default".to_string());
                let mut note = t.note;
                if note.len() > MAX_NOTE {
                    let mut cut = MAX_NOTE;
                    while !note.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    note.truncate(cut);
                }
                let event = Event {
                    metadata: ObjectMeta {
                        generate_name: Some(format!(
                            "{}.",
                            t.regarding.name.as_deref().unwrap_or("certwright")
                        )),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    action: Some(t.reason.to_string()),
                    event_time: Some(MicroTime(jiff::Timestamp::now())),
                    note: Some(note),
                    reason: Some(t.reason.to_string()),
                    regarding: Some(t.regarding),
                    reporting_controller: Some(controller.clone()),
                    reporting_instance: Some(
                        instance.clone().unwrap_or_else(|| controller.clone()),
                    ),
                    type_: Some(if t.warning { "Warning" } else { "Normal" }.to_string()),
                    ..Default::default()
                };
                let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!(error = %e, "could not write an event");
                }
            }
        });
        EventSink { queue: Some(queue) }
    }

    /// A sink that drops everything (for tests of other parts).
    pub fn disabled() -> EventSink {
        EventSink { queue: None }
    }

    /// Queues an event; never waits. When the queue is full, the oldest queued event is
    /// dropped.
    pub fn emit(&self, transition: Transition) {
        if let Some(queue) = &self.queue
            && let Some(dropped) = queue.push(transition)
        {
            tracing::warn!(
                reason = dropped.reason,
                "event queue full; the oldest event was dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(reason: &'static str) -> Transition {
        Transition {
            regarding: ObjectReference::default(),
            reason,
            note: String::new(),
            warning: false,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_and_keeps_the_newest() {
        let queue = Queue::new(2);
        assert!(queue.push(transition("First")).is_none());
        assert!(queue.push(transition("Second")).is_none());
        let dropped = queue.push(transition("Third")).expect("full");
        assert_eq!(dropped.reason, "First");
        assert_eq!(queue.pop().await.reason, "Second");
        assert_eq!(queue.pop().await.reason, "Third");
    }

    #[tokio::test]
    async fn the_writer_wakes_for_an_event_queued_while_it_waits() {
        let queue = Arc::new(Queue::new(4));
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.pop().await.reason })
        };
        tokio::task::yield_now().await;
        queue.push(transition("Issued"));
        let reason = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(reason, "Issued");
    }
}
