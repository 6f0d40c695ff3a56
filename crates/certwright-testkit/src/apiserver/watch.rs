//! Watch streams: newline-delimited `{"type": ..., "object": ...}` events, as upstream
//! sends them over a chunked response.
//!
//! Each watch is a task that first sends the synthetic `ADDED` events (a watch from "now")
//! or the retained history after the requested resourceVersion, then the kind's live
//! changes from its broadcast channel, filtered by namespace and selectors. It sends a
//! `BOOKMARK` every bookmark interval when asked to, ends at `timeoutSeconds`, when the
//! client goes away or on [`ApiServer::drop_watches`](super::ApiServer::drop_watches),
//! and catches up from the history when it falls behind the broadcast (410 Expired when
//! even the history has moved on).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::Shared;
use super::error::ApiError;
use super::resource::{ResourceDef, TypeKey};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Change, ChangeKind, ChangeReceiver, StoredObject, View, WatchStart, selected};

/// Chunks a watch may have queued for a slow client before it waits.
const QUEUED_CHUNKS: usize = 64;

/// What one watch request asked for.
#[derive(Debug)]
pub(crate) struct WatchParams {
    pub(crate) key: TypeKey,
    pub(crate) ns: Option<String>,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) view: View,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Duration,
    /// `sendInitialEvents=true`: mark the end of the initial events with a bookmark
    /// annotated `k8s.io/initial-events-end`.
    pub(crate) initial_events_end: bool,
}

/// The streaming response for a watch; `start` is its beginning, or the 410 to send as
/// its only event.
pub(crate) fn respond(
    shared: Arc<Shared>,
    params: WatchParams,
    start: Result<WatchStart, ApiError>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUED_CHUNKS);
    tokio::spawn(run(shared, params, start, tx));
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Counts a watch as open while it lives.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: Arc<Shared>) -> OpenWatch {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        OpenWatch(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Watcher {
    params: WatchParams,
    def: Arc<ResourceDef>,
    tx: mpsc::Sender<Bytes>,
    /// Every change up to here was sent or filtered out.
    last_rv: u64,
}

/// Why a watch stopped.
enum Stop {
    ClientGone,
    Expired(ApiError),
}

async fn run(
    shared: Arc<Shared>,
    params: WatchParams,
    start: Result<WatchStart, ApiError>,
    tx: mpsc::Sender<Bytes>,
) {
    let open = OpenWatch::new(shared.clone());
    let start = match start {
        Ok(start) => start,
        Err(err) => {
            let _ = tx.send(error_event(&err)).await;
            return;
        }
    };
    let mut drop_signal = shared.drop_watches.subscribe();
    drop_signal.borrow_and_update();
    let mut watcher = Watcher {
        def: start.def.clone(),
        params,
        tx,
        last_rv: start.resource_version,
    };
    if let Err(stop) = watcher.begin(start.initial, start.backlog).await {
        watcher.stop(stop).await;
        return;
    }
    let mut receiver = start.receiver;
    let interval = shared.options.bookmark_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(watcher.params.timeout);
    tokio::pin!(deadline);
    loop {
        // Biased, in this order: once the client is gone, the watches are dropped or the
        // deadline has passed, no further change is sent (unbiased, a drop racing with
        // queued changes delivered some of them first, so a client resumed from a newer
        // resourceVersion than the one it had when the watch was dropped).
        let outcome = tokio::select! {
            biased;
            () = watcher.tx.closed() => Err(Stop::ClientGone),
            _ = drop_signal.changed() => Err(Stop::ClientGone),
            () = &mut deadline => {
                // Upstream ends a timed-out watch with a last bookmark.
                let rv = shared.store.resource_version();
                if watcher.params.bookmarks {
                    let _ = watcher.bookmark(rv.max(watcher.last_rv), false).await;
                }
                Err(Stop::ClientGone)
            }
            _ = ticker.tick(), if watcher.params.bookmarks => {
                watcher.drain_then_bookmark(&shared, &mut receiver).await
            }
            received = receiver.recv() => match received {
                Ok(change) => watcher.deliver(&change).await,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    watcher.catch_up(&shared, &mut receiver).await
                }
                Err(broadcast::error::RecvError::Closed) => Err(Stop::ClientGone),
            },
        };
        if let Err(stop) = outcome {
            watcher.stop(stop).await;
            break;
        }
    }
    drop(open);
}

impl Watcher {
    /// The synthetic `ADDED` events (and the initial-events-end bookmark), then the
    /// retained history.
    async fn begin(
        &mut self,
        initial: Vec<Arc<StoredObject>>,
        backlog: Vec<Arc<Change>>,
    ) -> Result<(), Stop> {
        for obj in &initial {
            if self.selects(obj) {
                self.send(event("ADDED", &self.params.view.render(obj)))
                    .await?;
            }
        }
        if self.params.initial_events_end && self.params.bookmarks {
            self.bookmark(self.last_rv, true).await?;
        }
        for change in &backlog {
            self.deliver(change).await?;
        }
        Ok(())
    }

    async fn stop(&self, stop: Stop) {
        if let Stop::Expired(err) = stop {
            let _ = self.tx.send(error_event(&err)).await;
        }
    }

    fn selects(&self, obj: &StoredObject) -> bool {
        self.params
            .ns
            .as_deref()
            .is_none_or(|ns| ns == obj.namespace)
            && selected(obj, &self.params.labels, &self.params.fields)
    }

    async fn send(&self, chunk: Bytes) -> Result<(), Stop> {
        self.tx.send(chunk).await.map_err(|_| Stop::ClientGone)
    }

    /// Sends one change as this watcher sees it: an object that starts matching the
    /// selectors is `ADDED`, one that stops matching is `DELETED` (with its previous
    /// content at the new resourceVersion), as upstream's watch cache does.
    async fn deliver(&mut self, change: &Change) -> Result<(), Stop> {
        if change.resource_version <= self.last_rv {
            return Ok(());
        }
        self.last_rv = change.resource_version;
        let now = self.selects(&change.object);
        let chunk = match change.kind {
            ChangeKind::Added => {
                now.then(|| event("ADDED", &self.params.view.render(&change.object)))
            }
            ChangeKind::Deleted => {
                now.then(|| event("DELETED", &self.params.view.render(&change.object)))
            }
            ChangeKind::Modified => {
                let before = change.previous.as_ref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => {
                        Some(event("MODIFIED", &self.params.view.render(&change.object)))
                    }
                    (false, true) => Some(event("ADDED", &self.params.view.render(&change.object))),
                    (true, false) => change.previous.as_ref().map(|previous| {
                        let mut value = previous.value();
                        value["metadata"]["resourceVersion"] =
                            json!(change.resource_version.to_string());
                        event("DELETED", &self.params.view.render_value(value))
                    }),
                    (false, false) => None,
                }
            }
        };
        match chunk {
            Some(chunk) => self.send(chunk).await,
            None => Ok(()),
        }
    }

    /// After falling behind the broadcast: the retained changes since the last one
    /// handled, and a new receiver.
    async fn catch_up(
        &mut self,
        shared: &Shared,
        receiver: &mut ChangeReceiver,
    ) -> Result<(), Stop> {
        match shared.store.resume(&self.params.key, self.last_rv) {
            Ok((backlog, fresh)) => {
                *receiver = fresh;
                for change in &backlog {
                    self.deliver(change).await?;
                }
                Ok(())
            }
            Err(err) if err.code == 410 => Err(Stop::Expired(err)),
            Err(_) => Err(Stop::ClientGone),
        }
    }

    /// A bookmark at the current resourceVersion, after sending every change of this
    /// kind committed up to it.
    async fn drain_then_bookmark(
        &mut self,
        shared: &Shared,
        receiver: &mut ChangeReceiver,
    ) -> Result<(), Stop> {
        // Every change up to `current` is already in the channel: commits send under the
        // store lock that reading the resourceVersion takes.
        let current = shared.store.resource_version();
        loop {
            match receiver.try_recv() {
                Ok(change) => self.deliver(&change).await?,
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.catch_up(shared, receiver).await?;
                }
                Err(broadcast::error::TryRecvError::Closed) => return Err(Stop::ClientGone),
            }
        }
        self.bookmark(current.max(self.last_rv), false).await
    }

    /// A `BOOKMARK`: only kind, apiVersion and `metadata.resourceVersion`, as upstream.
    async fn bookmark(&self, resource_version: u64, initial_events_end: bool) -> Result<(), Stop> {
        let (kind, api_version) = self.params.view.object_type(&self.def);
        let mut metadata = json!({"resourceVersion": resource_version.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
        let object = serde_json::to_vec(&object).unwrap_or_default();
        self.send(event("BOOKMARK", &object)).await
    }
}

/// One event line.
fn event(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + kind.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// An `ERROR` event carrying a `Status`.
fn error_event(err: &ApiError) -> Bytes {
    let status = serde_json::to_vec(&err.status_json()).unwrap_or_default();
    event("ERROR", &status)
}
