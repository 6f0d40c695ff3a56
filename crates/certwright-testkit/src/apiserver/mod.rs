//! An in-memory Kubernetes API server over plain HTTP, for tests and demos: an unmodified
//! `kube::Client` (and kube-runtime's watcher, reflector, controller and event recorder)
//! talks to it as to a real cluster.
//!
//! It serves custom resources registered from `CustomResourceDefinition`s (from Rust with
//! [`ApiServer::register_crd`], or over HTTP), Secrets, ConfigMaps, core and
//! `events.k8s.io` Events, Leases, Namespaces (optional: namespaces exist implicitly),
//! `certificates.k8s.io` CertificateSigningRequests (with `/status` and `/approval`, as
//! upstream's registry keeps them: `certificates` module), `ValidatingWebhookConfiguration`s
//! and CRDs, and answers `SubjectAccessReview`s from rules a test sets
//! ([`ApiServer::authorizer`]), with get, list (`limit`/`continue`, label
//! and field selectors), watch (resourceVersion, bookmarks, 410 Expired past the retained
//! history), create, replace, merge / JSON patch, a simplified server-side apply, delete,
//! the status subresource, `metadata.generation` and resourceVersion preconditions, as
//! upstream does. The binary `certwright-apiserver` runs it as its own process.
//!
//! Writes over HTTP are admitted as upstream admits them: custom resources are checked
//! against the `x-kubernetes-validations` (CEL) rules of their CRD's schema (422
//! Invalid), then shown to the validating admission webhooks whose rules match
//! (`admission` module docs: denials, warnings, `failurePolicy`). With no webhook
//! configuration stored, and for kinds without CEL rules, this costs nothing.
//!
//! Tests can inject faults ([`Faults`]), drop every watch ([`ApiServer::drop_watches`]),
//! read the log of calls ([`ApiServer::requests`], [`ApiServer::count`]) and counts
//! ([`ApiServer::stats`]), and read or write the store directly
//! ([`ApiServer::get_json`], [`ApiServer::put_json`], ...; such writes skip admission).
//!
//! # The fault endpoint
//! Another process (a benchmark running the `certwright-apiserver` binary with
//! `--enable-fault-endpoint`; from Rust, [`ApiServerOptions::fault_endpoint`]) can do
//! the same over HTTP, under `/testkit/`, a path no Kubernetes API uses; a server
//! without the option serves nothing there (404, as upstream).
//! - `POST /testkit/faults` `{"method": "PATCH", "pattern": "/status", "code": 409,
//!   "times": 3}`: fail the next 3 matching calls ([`Faults::fail_next`]); with
//!   `"ratio": 0.05` instead of `times`, fail each matching call with that probability
//!   until cleared ([`Faults::fail_ratio`]: fixed seed, or `"seed": n`); with
//!   `"delayMs": 200` instead of `code`, delay them. `"method": "*"` matches any method;
//!   `pattern` is a substring of the path, as for [`Faults`].
//! - `GET /testkit/faults` lists the active rules, `DELETE /testkit/faults` clears them.
//! - `GET /testkit/stats`: `{"total", "byMethod": {"GET": n, ...}, "byClass": {"2xx": n,
//!   ...}, "injectedFaults", "watches"}` ([`CallStats`]); `DELETE /testkit/stats` resets.
//!
//! Calls to the endpoint are not logged, counted or subject to faults.
//!
//! ```ignore
//! let server = ApiServer::start().await?;
//! server.register_crds_yaml(&std::fs::read_to_string("crds.yaml")?)?;
//! let mut config = kube::Config::new(server.url().parse()?);
//! config.default_namespace = "default".to_string();
//! let client = kube::Client::try_from(config)?;
//! // ... run the code under test with `client` ...
//! server.faults().fail_next(Method::PUT, "/status", 409, 1);
//! assert_eq!(server.count(Method::PATCH, "/certificaterequests/a/status"), 1);
//! ```
//!
//! # Simplifications against the real API server
//! - No authentication or authorization (every call is made as `system:admin`); no
//!   mutating admission, admission policies or built-in admission plugins.
//! - Custom resources are validated against the CEL rules of the storage version's
//!   schema only (one stored copy serves every version), with ratcheting approximated
//!   at the failing field; the schema's types, formats and required fields are not
//!   checked, and objects are neither defaulted nor pruned. Direct store writes from
//!   Rust are not validated.
//! - Validating webhooks: `service` references cannot be resolved, a webhook without a
//!   `caBundle` trusts nothing, `matchConditions` are refused, only `AdmissionReview`
//!   `v1` is sent.
//! - One stored copy per kind, served at every version with only `apiVersion` changed
//!   (conversion strategy `None`); core and `events.k8s.io` Events are separate stores.
//! - Server-side apply merges the applied configuration into the live object as a JSON
//!   merge patch: no `managedFields`, no field ownership, so no conflicts (`force` is
//!   accepted and ignored), and fields dropped from a configuration are not removed.
//! - Strategic merge patch of built-in kinds is applied as a JSON merge patch (custom
//!   resources get upstream's 415).
//! - Lists always show the latest state; later pages of a paginated list report the
//!   first page's resourceVersion but show objects as they are now. `resourceVersion` and
//!   `resourceVersionMatch` on lists are ignored.
//! - Finalizers delay a deletion until an update empties them; there is no garbage
//!   collection (`ownerReferences` are stored, not acted on) and no graceful deletion.
//! - Any dotted path works in a field selector, not only the fields upstream declares.
//! - `Table` output and protobuf are not served (kubectl `get` needs `-o json`/`yaml`).

mod admin;
mod admission;
mod cel;
mod certificates;
mod error;
mod faults;
mod resource;
mod routes;
mod selector;
mod store;
mod watch;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use admin::CallStats;
pub use axum::http::Method;
pub use certificates::{AccessRule, Authorizer};
pub use error::ApiError;
pub use faults::{Faults, MethodMatch, RecordedRequest};

use resource::{CRD_GROUP, CRD_PLURAL};
use store::{Part, Store, UpdateOp, WriteOptions};

/// How an [`ApiServer`] runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ApiServerOptions {
    /// The address to listen on (default 127.0.0.1).
    pub address: IpAddr,
    /// The port (default 0: any free port).
    pub port: u16,
    /// Changes retained per kind for watches that resume from a resourceVersion; a watch
    /// from an older one gets 410 Expired (default 10 000).
    pub history_limit: usize,
    /// How often a watch that allows bookmarks gets one (default 1 s; upstream: about a
    /// minute).
    pub bookmark_interval: Duration,
    /// Calls kept in the request log; the oldest are forgotten past it (default
    /// 1 000 000; 0 turns the log off).
    pub request_log_limit: usize,
    /// Serve the fault endpoint under `/testkit/` (default off): see the module docs.
    pub fault_endpoint: bool,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(1),
            request_log_limit: 1_000_000,
            fault_endpoint: false,
        }
    }
}

impl ApiServerOptions {
    /// The defaults.
    pub fn new() -> Self {
        ApiServerOptions::default()
    }

    /// Listens on this address.
    pub fn address(mut self, address: IpAddr) -> Self {
        self.address = address;
        self
    }

    /// Listens on this port (0: any).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Retains this many changes per kind for resuming watches.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes;
        self
    }

    /// Sends bookmarks this often.
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Keeps this many calls in the request log (0: none).
    pub fn request_log_limit(mut self, calls: usize) -> Self {
        self.request_log_limit = calls;
        self
    }

    /// Serves (or not) the fault endpoint under `/testkit/`, for a test driving the
    /// server from another process: see the module docs.
    pub fn fault_endpoint(mut self, enabled: bool) -> Self {
        self.fault_endpoint = enabled;
        self
    }
}

/// What the HTTP handlers share with the handle.
pub(crate) struct Shared {
    store: Store,
    faults: Faults,
    /// Answers SubjectAccessReviews.
    authorizer: Authorizer,
    log: faults::RequestLog,
    stats: admin::Stats,
    /// HTTPS clients for admission webhooks, one per `caBundle`.
    webhook_clients: admission::Clients,
    options: ApiServerOptions,
    addr: SocketAddr,
    /// Bumped by `drop_watches`; every open watch ends when it changes.
    drop_watches: tokio::sync::watch::Sender<u64>,
    open_watches: AtomicUsize,
}

/// A running API server; dropping it stops the server and closes its connections.
pub struct ApiServer {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Starts a server on 127.0.0.1 with a free port and the default options. Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start() -> io::Result<ApiServer> {
        ApiServer::start_with(ApiServerOptions::default()).await
    }

    /// Starts a server with these options. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start_with(options: ApiServerOptions) -> io::Result<ApiServer> {
        let listener = TcpListener::bind((options.address, options.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Store::new(options.history_limit),
            faults: Faults::default(),
            authorizer: Authorizer::default(),
            log: faults::RequestLog::new(options.request_log_limit),
            stats: admin::Stats::default(),
            webhook_clients: admission::Clients::default(),
            options,
            addr,
            drop_watches: tokio::sync::watch::Sender::new(0),
            open_watches: AtomicUsize::new(0),
        });
        let router = Router::new()
            .fallback(routes::handle)
            .with_state(shared.clone());
        let task = tokio::spawn(serve(listener, router));
        Ok(ApiServer { shared, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://<address>:<port>`, without a trailing slash: what `kube::Config::new`
    /// takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig (YAML) whose current context points at this server, with
    /// `namespace` as its default namespace and no credentials.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        kubeconfig(&self.url(), namespace)
    }

    /// Registers (or updates) a `CustomResourceDefinition` given as JSON, exactly as a
    /// `POST`/`PUT` of it would: the CRD is stored, and its kind is served at once.
    ///
    /// # Errors
    /// 422 Invalid when the CRD lacks what serving needs (group with a dot, plural,
    /// kind, scope, a served version, `metadata.name` = `<plural>.<group>`).
    pub fn register_crd(&self, crd: &Value) -> Result<(), ApiError> {
        let key = (CRD_GROUP.to_string(), CRD_PLURAL.to_string());
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut body = crd.clone();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let options = WriteOptions {
            api_semantics: true,
            dry_run: false,
        };
        let store = &self.shared.store;
        match store.get(&key, "", &name) {
            Ok(_) => store
                .update(
                    &key,
                    "",
                    &name,
                    Part::Main,
                    UpdateOp::Replace(body),
                    options,
                )
                .map(|_| ()),
            Err(_) => store.create(&key, "", body, options).map(|_| ()),
        }
    }

    /// Registers every `CustomResourceDefinition` of a YAML stream (documents separated
    /// by `---`; other kinds are skipped) and returns how many it registered.
    ///
    /// # Errors
    /// 400 BadRequest for YAML that does not parse; otherwise as
    /// [`ApiServer::register_crd`].
    pub fn register_crds_yaml(&self, yaml: &str) -> Result<usize, ApiError> {
        let mut registered = 0;
        for document in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value = <Value as serde::Deserialize>::deserialize(document)
                .map_err(|e| ApiError::bad_request(format!("invalid CRD YAML: {e}")))?;
            if value.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
                self.register_crd(&value)?;
                registered += 1;
            }
        }
        Ok(registered)
    }

    /// The fault rules: see [`Faults`].
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The permissions `SubjectAccessReview`s are answered from: see [`Authorizer`].
    pub fn authorizer(&self) -> &Authorizer {
        &self.shared.authorizer
    }

    /// Ends every open watch now (cleanly, as when upstream restarts or times a watch
    /// out), so that clients must watch again.
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|n| *n += 1);
    }

    /// How many watches are open.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Every call received (within the log limit), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.snapshot()
    }

    /// How many logged calls have this method and a path containing `path_substring`.
    pub fn count(&self, method: impl Into<MethodMatch>, path_substring: &str) -> usize {
        self.shared.log.count(&method.into(), path_substring)
    }

    /// Counts of the calls answered so far, by method and status class (also served as
    /// `GET /testkit/stats` with the fault endpoint).
    pub fn stats(&self) -> CallStats {
        self.shared.stats.snapshot()
    }

    /// Forgets the logged calls.
    pub fn clear_requests(&self) {
        self.shared.log.clear();
    }

    /// The current resourceVersion (the counter every write increments).
    pub fn resource_version(&self) -> u64 {
        self.shared.store.resource_version()
    }

    /// One object, or `None`. `resource` is `plural` for core kinds or `plural.group`
    /// (`"secrets"`, `"certificaterequests.cert-manager.io"`); `namespace` is "" for
    /// cluster-scoped kinds.
    pub fn get_json(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let def = self.shared.store.find(resource).ok()?;
        self.shared
            .store
            .get(&def.key(), namespace, name)
            .ok()
            .map(|o| o.value())
    }

    /// The objects of a namespace ("" for every namespace, or a cluster-scoped kind),
    /// in (namespace, name) order; empty for an unknown kind.
    pub fn list_json(&self, resource: &str, namespace: &str) -> Vec<Value> {
        let Ok(def) = self.shared.store.find(resource) else {
            return Vec::new();
        };
        let ns = (!namespace.is_empty()).then_some(namespace);
        self.shared
            .store
            .list(
                &def.key(),
                ns,
                &selector::LabelSelector::default(),
                &selector::FieldSelector::default(),
                None,
                None,
            )
            .map(|page| page.items.iter().map(|o| o.value()).collect())
            .unwrap_or_default()
    }

    /// Creates an object as given, status included (a fixture may start with any
    /// status); the namespace comes from `metadata.namespace`. Watchers are notified.
    ///
    /// # Errors
    /// As a POST: 409 AlreadyExists, 422 for a bad name, 404 for an unknown kind.
    pub fn create_json(&self, resource: &str, object: Value) -> Result<Value, ApiError> {
        let def = self.shared.store.find(resource)?;
        let ns = namespace_of(&object);
        let stored = self
            .shared
            .store
            .create(&def.key(), &ns, object, WriteOptions::default())?;
        Ok(stored.value())
    }

    /// Writes a whole object, status included, creating it when absent, without a
    /// resourceVersion precondition; resourceVersion and (custom resources) generation
    /// advance as for any write, and watchers are notified.
    ///
    /// # Errors
    /// 404 for an unknown kind, 400/422 for an object the kind cannot hold.
    pub fn put_json(&self, resource: &str, object: Value) -> Result<Value, ApiError> {
        let def = self.shared.store.find(resource)?;
        let ns = namespace_of(&object);
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut object = object;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let store = &self.shared.store;
        let stored = match store.get(&def.key(), &ns, &name) {
            Ok(_) => {
                store
                    .update(
                        &def.key(),
                        &ns,
                        &name,
                        Part::Main,
                        UpdateOp::Replace(object),
                        WriteOptions::default(),
                    )?
                    .0
            }
            Err(_) => store.create(&def.key(), &ns, object, WriteOptions::default())?,
        };
        Ok(stored.value())
    }

    /// Deletes an object (finalizers hold it, as over HTTP) and returns its last state.
    ///
    /// # Errors
    /// 404 when it does not exist.
    pub fn delete_json(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let def = self.shared.store.find(resource)?;
        let gone = self.shared.store.delete(
            &def.key(),
            namespace,
            name,
            &store::Preconditions::default(),
            false,
        )?;
        Ok(gone.value())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection; the
        // watch tasks then see their client gone.
        self.task.abort();
    }
}

fn namespace_of(object: &Value) -> String {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A kubeconfig for `url` with no credentials.
fn kubeconfig(url: &str, namespace: &str) -> String {
    let name = "certwright-apiserver";
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {url}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
    namespace: {namespace}
current-context: {name}
users:
- name: {name}
  user: {{}}
preferences: {{}}
"
    )
}

/// Accepts connections until aborted; HTTP/1.1 and HTTP/2 (prior knowledge).
async fn serve(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors, most likely: let connections finish.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Small JSON answers: do not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    // A broken connection ends only itself.
                    let _ = ConnectionBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
