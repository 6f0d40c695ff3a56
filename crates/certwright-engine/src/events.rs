//! Kubernetes Events for request and issuer transitions, written in the background so
//! that the signing path never waits on them. Events are best effort: when the API
//! server falls behind, the oldest unsent ones are dropped and counted in the log.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;

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
    tx: Option<mpsc::Sender<Transition>>,
}

impl EventSink {
    /// Starts the writer on the current runtime.
    pub fn start(client: Client, controller: String, instance: Option<String>) -> EventSink {
        let (tx, mut rx) = mpsc::channel::<Transition>(QUEUE);
        tokio::spawn(async move {
            while let Some(t) = rx.recv().await {
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
        EventSink { tx: Some(tx) }
    }

    /// A sink that drops everything (for tests of other parts).
    pub fn disabled() -> EventSink {
        EventSink { tx: None }
    }

    /// Queues an event; never waits.
    pub fn emit(&self, transition: Transition) {
        if let Some(tx) = &self.tx
            && let Err(mpsc::error::TrySendError::Full(t)) = tx.try_send(transition)
        {
            tracing::warn!(reason = t.reason, "event queue full; event dropped");
        }
    }
}
