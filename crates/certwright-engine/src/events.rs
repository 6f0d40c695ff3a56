//! Kubernetes Events for request and issuer transitions, written in the background so
//! that the signing path never waits on them. Events are best effort: when the API
//! server falls behind, the oldest unsent ones are dropped and counted in the log.
//!
//! Each event is published through kube-runtime's [`Recorder`], one recorder per
//! event: a long-lived recorder keeps every event it published in the last six minutes
//! (to merge repeats into a series), which at hundreds of requests a second would hold
//! tens of thousands of Events in the controller's memory, and merging needs `patch`
//! on Events too. The Recorder names an Event after its object
//! (`<name>.<nanoseconds in hex>`), which is too long for an object whose own name is
//! over 236 characters: such an Event is created here with a `generateName` instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::Notify;

/// The longest object name the Recorder can name an Event after: `<name>.` and up to
/// 16 hex digits, within the 253 characters of a name.
const RECORDER_NAME_MAX: usize = 253 - 1 - 16;

/// How many events may wait to be written.
const QUEUE: usize = 4096;
/// The API server refuses notes over 1 kB.
const MAX_NOTE: usize = 1000;

/// One event about one object.
#[derive(Clone, Debug)]
pub(crate) struct Transition {
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
pub(crate) struct EventSink {
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
    pub(crate) fn start(client: Client, controller: String, instance: Option<String>) -> EventSink {
        let queue = Arc::new(Queue::new(QUEUE));
        let pending = queue.clone();
        let reporter = Reporter {
            controller,
            instance,
        };
        tokio::spawn(async move {
            loop {
                let t = pending.pop().await;
                let (event, regarding) = event_of(t);
                let written = if recorder_names(&regarding) {
                    Recorder::new(client.clone(), reporter.clone())
                        .publish(&event, &regarding)
                        .await
                } else {
                    let generated = with_generated_name(&event, &regarding, &reporter);
                    let namespace = regarding.namespace.as_deref().unwrap_or("default");
                    Api::<K8sEvent>::namespaced(client.clone(), namespace)
                        .create(&PostParams::default(), &generated)
                        .await
                        .map(drop)
                };
                if let Err(e) = written {
                    tracing::debug!(error = %e, "could not write an event");
                }
            }
        });
        EventSink { queue: Some(queue) }
    }

    /// Queues an event; never waits. When the queue is full, the oldest queued event is
    /// dropped.
    pub(crate) fn emit(&self, transition: Transition) {
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

/// The Event a transition is published as, and the object it is about: the action is
/// the reason, the note is cut to what the API server takes, and a cluster-scoped
/// object's Event goes to `default`.
fn event_of(t: Transition) -> (Event, ObjectReference) {
    let mut note = t.note;
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let mut regarding = t.regarding;
    if regarding.namespace.as_deref() == Some("") {
        regarding.namespace = None;
    }
    let event = Event {
        type_: if t.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: t.reason.to_string(),
        note: Some(note),
        action: t.reason.to_string(),
        secondary: None,
    };
    (event, regarding)
}

/// Whether the Recorder can name an Event about `regarding`.
fn recorder_names(regarding: &ObjectReference) -> bool {
    regarding
        .name
        .as_deref()
        .is_none_or(|name| name.len() <= RECORDER_NAME_MAX)
}

/// The Event the Recorder would create, named by the API server from a prefix of the
/// object's name.
fn with_generated_name(
    event: &Event,
    regarding: &ObjectReference,
    reporter: &Reporter,
) -> K8sEvent {
    let name = regarding.name.as_deref().unwrap_or(&reporter.controller);
    let mut prefix = name.chars().take(200).collect::<String>();
    prefix.push('.');
    K8sEvent {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: regarding.namespace.clone(),
            ..Default::default()
        },
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        event_time: Some(MicroTime(jiff::Timestamp::now())),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match event.type_ {
                EventType::Warning => "Warning",
                EventType::Normal => "Normal",
            }
            .to_string(),
        ),
        ..Default::default()
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

    #[test]
    fn a_transition_becomes_an_event_about_its_object() {
        let warning = Transition {
            regarding: ObjectReference {
                namespace: Some("team-a".into()),
                name: Some("web-1".into()),
                ..Default::default()
            },
            note: "é".repeat(MAX_NOTE),
            warning: true,
            ..transition("Rejected")
        };
        let (event, regarding) = event_of(warning);
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(
            (event.reason.as_str(), event.action.as_str()),
            ("Rejected", "Rejected")
        );
        let note = event.note.expect("a note");
        assert!(note.len() <= MAX_NOTE && note.chars().all(|c| c == 'é'));
        assert_eq!(regarding.namespace.as_deref(), Some("team-a"));

        let cluster = Transition {
            regarding: ObjectReference {
                namespace: Some(String::new()),
                name: Some("corp".into()),
                ..Default::default()
            },
            ..transition("Verified")
        };
        let (event, regarding) = event_of(cluster);
        assert_eq!(event.type_, EventType::Normal);
        assert_eq!(regarding.namespace, None, "published to default");
    }

    #[test]
    fn an_object_named_too_long_for_the_recorder_gets_a_generated_event_name() {
        let named = |len: usize| ObjectReference {
            namespace: Some("team-a".into()),
            name: Some("a".repeat(len)),
            ..Default::default()
        };
        assert!(recorder_names(&named(RECORDER_NAME_MAX)));
        assert!(!recorder_names(&named(RECORDER_NAME_MAX + 1)));
        assert!(!recorder_names(&named(253)));

        let reporter = Reporter {
            controller: "certwright".into(),
            instance: None,
        };
        let long = named(253);
        let (event, regarding) = event_of(Transition {
            regarding: long.clone(),
            warning: true,
            ..transition("Rejected")
        });
        let written = with_generated_name(&event, &regarding, &reporter);
        let prefix = written.metadata.generate_name.expect("generateName");
        assert_eq!(prefix.len(), 201, "{prefix}");
        assert!(prefix.ends_with('.') && written.metadata.name.is_none());
        assert_eq!(written.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(written.regarding, Some(long));
        assert_eq!(written.type_.as_deref(), Some("Warning"));
        assert_eq!(written.reason.as_deref(), Some("Rejected"));
        assert_eq!(written.reporting_instance.as_deref(), Some("certwright"));
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
