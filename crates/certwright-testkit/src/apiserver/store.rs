//! The object store: every kind's objects in key order, one global resourceVersion
//! counter, and per kind a bounded history of changes plus a broadcast channel that
//! feeds watchers.
//!
//! Objects are kept serialized (`Bytes`), with their labels parsed, so that get, list
//! and watch only copy bytes; a write parses the live object, changes it and serializes
//! it once. Everything happens under one mutex, never held across an `.await`: a write
//! that validating webhooks must see is worked out (`prepare_*`), shown to them without
//! the lock, then stored by [`Store::commit_prepared`] unless the object changed
//! meanwhile. Other writes are worked out and stored in one step.
//!
//! One file because every write goes through the same lock, preconditions and watch
//! history; about a third of it is its unit tests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use axum::body::Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::admission::{self, Webhook};
use super::cel::CrdValidation;
use super::error::{self, ApiError};
use super::resource::{self, CRD_GROUP, CRD_PLURAL, ResourceDef, TypeKey};
use super::selector::{FieldSelector, LabelSelector};

/// How many changes a watcher may fall behind the broadcast before it catches up from
/// the history instead.
const BROADCAST_CAPACITY: usize = 1024;

/// (namespace, name); the namespace is "" for cluster-scoped kinds.
pub(crate) type ObjKey = (String, String);

/// One stored object version.
#[derive(Debug)]
pub(crate) struct StoredObject {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) resource_version: u64,
    /// The `apiVersion` inside `json`.
    pub(crate) api_version: String,
    pub(crate) labels: BTreeMap<String, String>,
    /// The whole object as JSON.
    pub(crate) json: Bytes,
    /// The `PartialObjectMetadata` form, made on first use.
    metadata_json: OnceLock<Bytes>,
}

impl StoredObject {
    fn from_value(value: &Value, resource_version: u64) -> Result<StoredObject, ApiError> {
        let json = serde_json::to_vec(value)
            .map_err(|e| ApiError::internal(format!("cannot serialize object: {e}")))?;
        let meta = value.get("metadata");
        let text = |field: &str| {
            meta.and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(StoredObject {
            namespace: text("namespace"),
            name: text("name"),
            resource_version,
            api_version: value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            labels,
            json: Bytes::from(json),
            metadata_json: OnceLock::new(),
        })
    }

    /// The object as a JSON value.
    pub(crate) fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// The object served at `api_version`: the stored bytes when that is the stored
    /// version, else a copy with `apiVersion` rewritten.
    pub(crate) fn json_at(&self, api_version: &str) -> Bytes {
        if self.api_version == api_version {
            return self.json.clone();
        }
        let mut value = self.value();
        value["apiVersion"] = Value::String(api_version.to_string());
        Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
    }

    /// The `PartialObjectMetadata` (meta.k8s.io/v1) form of the object.
    pub(crate) fn metadata_json(&self) -> Bytes {
        self.metadata_json
            .get_or_init(|| {
                let value = self.value();
                let partial = json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": value.get("metadata").cloned().unwrap_or_else(|| json!({})),
                });
                Bytes::from(serde_json::to_vec(&partial).unwrap_or_default())
            })
            .clone()
    }
}

/// How objects are rendered for one request: whole at the requested version, or as
/// `PartialObjectMetadata` (kube's `*_metadata` calls ask for it in `Accept`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// The whole object, with this `apiVersion`.
    Full(String),
    /// `meta.k8s.io/v1` `PartialObjectMetadata`.
    Metadata,
}

impl View {
    /// An object as this view shows it.
    pub(crate) fn render(&self, obj: &StoredObject) -> Bytes {
        match self {
            View::Full(api_version) => obj.json_at(api_version),
            View::Metadata => obj.metadata_json(),
        }
    }

    /// An object given as a value, as this view shows it.
    pub(crate) fn render_value(&self, mut value: Value) -> Bytes {
        let value = match self {
            View::Full(api_version) => {
                value["apiVersion"] = Value::String(api_version.clone());
                value
            }
            View::Metadata => json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": value.get_mut("metadata").map(Value::take).unwrap_or_else(|| json!({})),
            }),
        };
        Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
    }

    /// `(kind, apiVersion)` of one object in this view.
    pub(crate) fn object_type(&self, def: &ResourceDef) -> (String, String) {
        match self {
            View::Full(api_version) => (def.kind.clone(), api_version.clone()),
            View::Metadata => (
                "PartialObjectMetadata".to_string(),
                "meta.k8s.io/v1".to_string(),
            ),
        }
    }

    /// `(kind, apiVersion)` of a list in this view.
    pub(crate) fn list_type(&self, def: &ResourceDef) -> (String, String) {
        match self {
            View::Full(api_version) => (def.list_kind.clone(), api_version.clone()),
            View::Metadata => (
                "PartialObjectMetadataList".to_string(),
                "meta.k8s.io/v1".to_string(),
            ),
        }
    }
}

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// What a watch receives live changes from.
pub(crate) type ChangeReceiver = broadcast::Receiver<Arc<Change>>;

/// One entry of a kind's history, as watchers receive it.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) resource_version: u64,
    pub(crate) kind: ChangeKind,
    /// The new version (for `Deleted`, the last one, at the deletion's resourceVersion).
    pub(crate) object: Arc<StoredObject>,
    /// The version before the change, so that a watcher with a selector sees an object
    /// that stops matching as `DELETED` and one that starts matching as `ADDED`.
    pub(crate) previous: Option<Arc<StoredObject>>,
}

struct TypeStore {
    def: Arc<ResourceDef>,
    /// The CEL rules of a custom resource's schema, when it has any.
    validation: Option<Arc<CrdValidation>>,
    objects: BTreeMap<ObjKey, Arc<StoredObject>>,
    history: VecDeque<Arc<Change>>,
    /// The highest resourceVersion dropped from the history: watches from an older one
    /// are answered 410 Expired.
    evicted_through: u64,
    sender: broadcast::Sender<Arc<Change>>,
}

impl TypeStore {
    fn new(def: ResourceDef) -> TypeStore {
        TypeStore {
            def: Arc::new(def),
            validation: None,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            evicted_through: 0,
            sender: broadcast::channel(BROADCAST_CAPACITY).0,
        }
    }

    fn changes_after(&self, resource_version: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if resource_version < self.evicted_through {
            return Err(expired(resource_version, self.evicted_through));
        }
        let start = self
            .history
            .partition_point(|c| c.resource_version <= resource_version);
        Ok(self.history.range(start..).cloned().collect())
    }
}

/// The 410 upstream sends (as a watch `ERROR` event) for a resourceVersion older than
/// its watch cache.
fn expired(requested: u64, oldest: u64) -> ApiError {
    ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {requested} ({oldest})"),
    )
}

struct State {
    resource_version: u64,
    types: HashMap<TypeKey, TypeStore>,
    history_limit: usize,
    /// The webhooks of the stored `ValidatingWebhookConfiguration`s.
    webhooks: Arc<Vec<Webhook>>,
    /// Whether `webhooks` has any, readable without the lock: writes skip admission
    /// entirely when it is false.
    webhooks_present: Arc<AtomicBool>,
}

/// A write as admission sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    /// `CREATE`, `UPDATE` or `DELETE`, as in an `AdmissionReview`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// What storing a write does besides storing it.
#[derive(Debug)]
enum Effect {
    None,
    /// A CRD was stored: serve (or re-serve) its kind.
    Install(Box<(ResourceDef, Option<Arc<CrdValidation>>)>),
    /// A CRD went: stop serving its kind.
    Uninstall(String),
}

/// A write worked out against the live object, not yet stored: what admission
/// webhooks are shown before [`Store::commit_prepared`] stores it.
#[derive(Debug)]
pub(crate) struct Prepared {
    key: TypeKey,
    objkey: ObjKey,
    /// The object to store; for a deletion, its last state.
    value: Value,
    /// `None`: an update that changes nothing, answered with `old` as it is.
    change: Option<ChangeKind>,
    /// The live object the write was worked out from (`None` for a create).
    old: Option<Arc<StoredObject>>,
    operation: Operation,
    effect: Effect,
    created: bool,
}

impl Prepared {
    pub(crate) fn operation(&self) -> Operation {
        self.operation
    }

    /// The object as it would be stored (for a deletion, its last state).
    pub(crate) fn object(&self) -> &Value {
        &self.value
    }

    /// The live object before the write.
    pub(crate) fn old(&self) -> Option<&Arc<StoredObject>> {
        self.old.as_ref()
    }

    pub(crate) fn name(&self) -> &str {
        &self.objkey.1
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.objkey.0
    }

    /// Whether the write creates the object (apply, or PUT of a kind created on update).
    pub(crate) fn created(&self) -> bool {
        self.created
    }
}

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
    /// A CertificateSigningRequest's `/approval`.
    Approval,
}

/// How a write changes the live object.
#[derive(Clone, Debug)]
pub(crate) enum UpdateOp {
    /// PUT: the body replaces the object.
    Replace(Value),
    /// RFC 7386 JSON merge patch.
    Merge(Value),
    /// RFC 6902 JSON patch.
    Json(json_patch::Patch),
    /// Server-side apply, simplified: the applied configuration is merged into the live
    /// object as a JSON merge patch (lists replaced, no field ownership, so never a
    /// conflict), or created when absent.
    Apply(Value),
}

/// How much of the real API server's write semantics applies.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WriteOptions {
    /// Calls over HTTP: `.status` only through `/status` for kinds with a status
    /// subresource, PUT of a custom resource requires `metadata.resourceVersion`, and
    /// custom resources are checked against their CEL rules. Direct store writes from a
    /// test leave this off and write whole objects.
    pub(crate) api_semantics: bool,
    /// `dryRun=All`: everything but storing.
    pub(crate) dry_run: bool,
}

/// `DeleteOptions.preconditions`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Preconditions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct ListPage {
    pub(crate) resource_version: u64,
    pub(crate) items: Vec<Arc<StoredObject>>,
    pub(crate) continue_token: Option<String>,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WatchFrom {
    /// No resourceVersion, or "0": now, with a synthetic `ADDED` for every existing
    /// object unless `initial_events` is false.
    Now { initial_events: bool },
    /// Every change after this resourceVersion.
    After(u64),
}

/// What a new watch starts from.
#[derive(Debug)]
pub(crate) struct WatchStart {
    pub(crate) def: Arc<ResourceDef>,
    /// Existing objects, sent as `ADDED` first.
    pub(crate) initial: Vec<Arc<StoredObject>>,
    /// Retained changes after the requested resourceVersion.
    pub(crate) backlog: Vec<Arc<Change>>,
    pub(crate) receiver: ChangeReceiver,
    /// Every change up to here is in `initial` or `backlog`.
    pub(crate) resource_version: u64,
}

/// The store; see the module documentation.
pub(crate) struct Store {
    state: Mutex<State>,
    webhooks_present: Arc<AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store with the built-in kinds, keeping `history_limit` changes per kind for
    /// watches that resume (at least 1).
    pub(crate) fn new(history_limit: usize) -> Store {
        let types = resource::builtins()
            .into_iter()
            .map(|def| (def.key(), TypeStore::new(def)))
            .collect();
        let webhooks_present = Arc::new(AtomicBool::new(false));
        Store {
            state: Mutex::new(State {
                resource_version: 1,
                types,
                history_limit: history_limit.max(1),
                webhooks: Arc::new(Vec::new()),
                webhooks_present: webhooks_present.clone(),
            }),
            webhooks_present,
        }
    }

    /// The webhooks of the stored `ValidatingWebhookConfiguration`s, or `None` when
    /// there are none (one atomic load: the fast path of every write).
    pub(crate) fn webhooks(&self) -> Option<Arc<Vec<Webhook>>> {
        if !self.webhooks_present.load(Ordering::Acquire) {
            return None;
        }
        let webhooks = self.state().webhooks.clone();
        (!webhooks.is_empty()).then_some(webhooks)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current (latest) resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.state().resource_version
    }

    /// The kind served at `/apis/{group}/{version}/{plural}` (or `/api/v1/{plural}`).
    pub(crate) fn lookup(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceDef>> {
        let state = self.state();
        let ts = state.types.get(&(group.to_string(), plural.to_string()))?;
        ts.def
            .versions
            .iter()
            .any(|v| v == version)
            .then(|| ts.def.clone())
    }

    /// Every kind served, for discovery.
    pub(crate) fn defs(&self) -> Vec<Arc<ResourceDef>> {
        let mut defs: Vec<_> = self.state().types.values().map(|t| t.def.clone()).collect();
        defs.sort_by(|a, b| (&a.group, &a.plural).cmp(&(&b.group, &b.plural)));
        defs
    }

    /// A kind named as `plural` (core) or `plural.group`, as kubectl names resources.
    pub(crate) fn find(&self, resource: &str) -> Result<Arc<ResourceDef>, ApiError> {
        let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
        let state = self.state();
        state
            .types
            .get(&(group.to_string(), plural.to_string()))
            .map(|t| t.def.clone())
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("the server doesn't have a resource type \"{resource}\""),
                )
            })
    }

    /// One object.
    pub(crate) fn get(
        &self,
        key: &TypeKey,
        ns: &str,
        name: &str,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let state = self.state();
        let ts = type_store(&state, key)?;
        ts.objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ts.def.not_found(name))
    }

    /// A page of the objects in `ns` (every namespace when `None`) that the selectors
    /// select, in (namespace, name) order as etcd returns them.
    ///
    /// The continue token carries the resourceVersion of the first page, reported by
    /// every later page, as upstream; unlike upstream the later pages show the objects
    /// as they are now, not as of that resourceVersion (a watch from it replays the
    /// difference, so a watcher's cache still converges).
    pub(crate) fn list(
        &self,
        key: &TypeKey,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let token = continue_token
            .filter(|t| !t.is_empty())
            .map(decode_continue)
            .transpose()?;
        if let (Some((_, token_ns, _)), Some(ns)) = (&token, ns)
            && token_ns != ns
        {
            return Err(ApiError::bad_request(
                "continue key is not valid for this namespace",
            ));
        }
        let state = self.state();
        let ts = type_store(&state, key)?;
        let resource_version = token.as_ref().map_or(state.resource_version, |t| t.0);
        let lower = match (&token, ns) {
            (Some((_, tns, tname)), _) => Bound::Excluded((tns.clone(), tname.clone())),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut more = false;
        for ((obj_ns, _), obj) in ts.objects.range((lower, Bound::Unbounded)) {
            if ns.is_some_and(|ns| ns != obj_ns) {
                break;
            }
            if !selected(obj, labels, fields) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(obj.clone());
        }
        let continue_token = match (more, items.last()) {
            (true, Some(last)) => Some(encode_continue(
                resource_version,
                &last.namespace,
                &last.name,
            )),
            _ => None,
        };
        Ok(ListPage {
            resource_version,
            items,
            continue_token,
        })
    }

    /// Creates an object (POST), mirroring upstream: `generateName`, 409 AlreadyExists,
    /// server-set `uid`, `creationTimestamp`, `resourceVersion` and (custom resources)
    /// `generation: 1`; with API semantics `.status` is dropped for kinds with a status
    /// subresource.
    pub(crate) fn create(
        &self,
        key: &TypeKey,
        ns: &str,
        body: Value,
        options: WriteOptions,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let mut state = self.state();
        let prepared = state.prepare_create(key, ns, body, options)?;
        fresh(state.apply(prepared, options.dry_run)?)
    }

    /// Works out a create without storing it: see [`Store::commit_prepared`].
    pub(crate) fn prepare_create(
        &self,
        key: &TypeKey,
        ns: &str,
        body: Value,
        options: WriteOptions,
    ) -> Result<Prepared, ApiError> {
        self.state().prepare_create(key, ns, body, options)
    }

    /// Works out an update without storing it: see [`Store::commit_prepared`].
    pub(crate) fn prepare_update(
        &self,
        key: &TypeKey,
        ns: &str,
        name: &str,
        part: Part,
        op: UpdateOp,
        options: WriteOptions,
    ) -> Result<Prepared, ApiError> {
        self.state()
            .prepare_update(key, ns, name, part, op, options)
    }

    /// Works out a deletion without storing it: see [`Store::commit_prepared`].
    pub(crate) fn prepare_delete(
        &self,
        key: &TypeKey,
        ns: &str,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Prepared, ApiError> {
        self.state().prepare_delete(key, ns, name, preconditions)
    }

    /// Stores a write worked out by a `prepare_*` call, unless the object changed since
    /// (`Ok(None)`: work it out again).
    pub(crate) fn commit_prepared(
        &self,
        prepared: Prepared,
        dry_run: bool,
    ) -> Result<Option<Arc<StoredObject>>, ApiError> {
        self.state().apply(prepared, dry_run)
    }

    /// Replaces, patches or applies an object or its status.
    ///
    /// Returns the stored object and whether it was created (apply, or PUT of a kind
    /// upstream creates on update).
    pub(crate) fn update(
        &self,
        key: &TypeKey,
        ns: &str,
        name: &str,
        part: Part,
        op: UpdateOp,
        options: WriteOptions,
    ) -> Result<(Arc<StoredObject>, bool), ApiError> {
        let mut state = self.state();
        let prepared = state.prepare_update(key, ns, name, part, op, options)?;
        let created = prepared.created;
        Ok((fresh(state.apply(prepared, options.dry_run)?)?, created))
    }

    /// Deletes an object: at once, or, when it has finalizers, by setting
    /// `deletionTimestamp` (it goes when an update empties them), as upstream.
    pub(crate) fn delete(
        &self,
        key: &TypeKey,
        ns: &str,
        name: &str,
        preconditions: &Preconditions,
        dry_run: bool,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let mut state = self.state();
        let prepared = state.prepare_delete(key, ns, name, preconditions)?;
        fresh(state.apply(prepared, dry_run)?)
    }

    /// Deletes every selected object of a namespace (or of every namespace).
    pub(crate) fn delete_collection(
        &self,
        key: &TypeKey,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        dry_run: bool,
    ) -> Result<Vec<Arc<StoredObject>>, ApiError> {
        let page = self.list(key, ns, labels, fields, None, None)?;
        let mut state = self.state();
        let mut deleted = Vec::new();
        for obj in page.items {
            let prepared =
                state.prepare_delete(key, &obj.namespace, &obj.name, &Preconditions::default());
            match prepared.and_then(|p| fresh(state.apply(p, dry_run)?)) {
                Ok(gone) => deleted.push(gone),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Opens a watch. The outer error is for the HTTP answer (unknown kind); the inner
    /// one (410 Expired) is sent as the watch's only event, as upstream does.
    pub(crate) fn watch(
        &self,
        key: &TypeKey,
        ns: Option<&str>,
        from: WatchFrom,
    ) -> Result<Result<WatchStart, ApiError>, ApiError> {
        let state = self.state();
        let ts = type_store(&state, key)?;
        let receiver = ts.sender.subscribe();
        let start = match from {
            WatchFrom::Now { initial_events } => {
                let initial = if !initial_events {
                    Vec::new()
                } else if let Some(ns) = ns {
                    ts.objects
                        .range((ns.to_string(), String::new())..)
                        .take_while(|((obj_ns, _), _)| obj_ns == ns)
                        .map(|(_, o)| o.clone())
                        .collect()
                } else {
                    ts.objects.values().cloned().collect()
                };
                WatchStart {
                    def: ts.def.clone(),
                    initial,
                    backlog: Vec::new(),
                    receiver,
                    resource_version: state.resource_version,
                }
            }
            WatchFrom::After(rv) => match ts.changes_after(rv) {
                Ok(backlog) => WatchStart {
                    def: ts.def.clone(),
                    initial: Vec::new(),
                    backlog,
                    receiver,
                    resource_version: rv,
                },
                Err(e) => return Ok(Err(e)),
            },
        };
        Ok(Ok(start))
    }

    /// For a watcher that fell behind the broadcast: the retained changes after
    /// `resource_version` and a fresh receiver, or 410 Expired.
    pub(crate) fn resume(
        &self,
        key: &TypeKey,
        resource_version: u64,
    ) -> Result<(Vec<Arc<Change>>, ChangeReceiver), ApiError> {
        let state = self.state();
        let ts = type_store(&state, key)?;
        let receiver = ts.sender.subscribe();
        Ok((ts.changes_after(resource_version)?, receiver))
    }
}

/// The stored object of a write worked out and stored under one lock, where the live
/// object cannot have changed in between.
fn fresh(stored: Option<Arc<StoredObject>>) -> Result<Arc<StoredObject>, ApiError> {
    stored.ok_or_else(|| ApiError::internal("the object changed while it was being written"))
}

fn type_store<'a>(state: &'a State, key: &TypeKey) -> Result<&'a TypeStore, ApiError> {
    state.types.get(key).ok_or_else(ApiError::not_found_path)
}

/// Whether the selectors select an object.
pub(crate) fn selected(obj: &StoredObject, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    (labels.is_empty() || labels.matches(&obj.labels))
        && (fields.is_empty() || fields.matches(&obj.namespace, &obj.name, || obj.value()))
}

fn encode_continue(resource_version: u64, ns: &str, name: &str) -> String {
    let raw = json!([resource_version, ns, name]).to_string();
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let invalid = || {
        ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion")
    };
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let (rv, ns, name): (u64, String, String) =
        serde_json::from_slice(&raw).map_err(|_| invalid())?;
    Ok((rv, ns, name))
}

impl State {
    fn prepare_create(
        &self,
        key: &TypeKey,
        ns: &str,
        body: Value,
        options: WriteOptions,
    ) -> Result<Prepared, ApiError> {
        let def = type_store(self, key)?.def.clone();
        let mut obj = body;
        normalize_type_meta(&def, &mut obj)?;
        let meta = metadata_mut(&mut obj)?;
        set_namespace(&def, meta, ns)?;
        let mut name = meta_text(meta, "name");
        if name.is_empty() {
            let prefix = meta_text(meta, "generateName");
            if prefix.is_empty() {
                return Err(def.invalid(
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = loop {
                let candidate = format!("{prefix}{}", random_suffix()?);
                let taken = type_store(self, key)?
                    .objects
                    .contains_key(&(ns.to_string(), candidate.clone()));
                if !taken {
                    break candidate;
                }
            };
        }
        validate_name(&def, &name)?;
        let ts = type_store(self, key)?;
        if ts.objects.contains_key(&(ns.to_string(), name.clone())) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", def.qualified()),
            )
            .with_details(&name, &def.group, &def.plural));
        }
        let meta = metadata_mut(&mut obj)?;
        meta.insert("name".to_string(), Value::String(name.clone()));
        for server_set in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            meta.remove(server_set);
        }
        meta.insert("uid".to_string(), Value::String(new_uid()?));
        meta.insert("creationTimestamp".to_string(), Value::String(now()));
        if def.tracks_generation {
            meta.insert("generation".to_string(), json!(1));
        }
        if options.api_semantics
            && def.status_subresource
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        let effect = self.prepare_hooks(&def, &mut obj, None, options)?;
        Ok(Prepared {
            key: key.clone(),
            objkey: (ns.to_string(), name),
            value: obj,
            change: Some(ChangeKind::Added),
            old: None,
            operation: Operation::Create,
            effect,
            created: false,
        })
    }

    fn prepare_update(
        &self,
        key: &TypeKey,
        ns: &str,
        name: &str,
        part: Part,
        op: UpdateOp,
        options: WriteOptions,
    ) -> Result<Prepared, ApiError> {
        let ts = type_store(self, key)?;
        let def = ts.def.clone();
        let Some(current) = ts.objects.get(&(ns.to_string(), name.to_string())).cloned() else {
            return match op {
                UpdateOp::Apply(body) if part == Part::Main => {
                    let body = with_name(body, name)?;
                    let mut prepared = self.prepare_create(key, ns, body, options)?;
                    prepared.created = true;
                    Ok(prepared)
                }
                UpdateOp::Replace(body) if part == Part::Main && def.create_on_update => {
                    let body = with_name(body, name)?;
                    let mut prepared = self.prepare_create(key, ns, body, options)?;
                    prepared.created = true;
                    Ok(prepared)
                }
                _ => Err(def.not_found(name)),
            };
        };
        let live = current.value();
        let require_rv = options.api_semantics && def.custom && matches!(op, UpdateOp::Replace(_));
        let mut new = match op {
            UpdateOp::Replace(body) => body,
            UpdateOp::Merge(patch) | UpdateOp::Apply(patch) => {
                let mut v = live.clone();
                json_patch::merge(&mut v, &patch);
                v
            }
            UpdateOp::Json(patch) => {
                let mut v = live.clone();
                json_patch::patch(&mut v, &patch.0).map_err(|e| {
                    def.invalid(name, &format!("the JSON patch could not be applied: {e}"))
                })?;
                v
            }
        };
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        normalize_type_meta(&def, &mut new)?;
        let meta = metadata_mut(&mut new)?;
        set_namespace(&def, meta, ns)?;
        match meta.get("name").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("name".to_string(), Value::String(name.to_string()));
            }
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            Some(_) => {}
        }
        // Preconditions: a resourceVersion in the body (or patch) must be the live one.
        let current_rv = current.resource_version.to_string();
        match meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(rv) if rv != current_rv => {
                return Err(def.conflict(
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            None if require_rv => {
                return Err(def.invalid(
                    name,
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ));
            }
            _ => {}
        }
        let live_meta = live
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let live_uid = meta_text(&live_meta, "uid");
        if let Some(uid) = meta
            .get("uid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            && uid != live_uid
        {
            return Err(def.conflict(
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {live_uid}"),
            ));
        }
        // Fields only the server sets.
        for server_set in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match live_meta.get(server_set) {
                Some(v) => {
                    meta.insert(server_set.to_string(), v.clone());
                }
                None => {
                    meta.remove(server_set);
                }
            }
        }
        meta.insert("resourceVersion".to_string(), Value::String(current_rv));
        if options.api_semantics && def.is_csr() {
            use super::certificates::{CsrPart, prepare_update};
            let part = match part {
                Part::Main => CsrPart::Main,
                Part::Status => CsrPart::Status,
                Part::Approval => CsrPart::Approval,
            };
            new = prepare_update(name, part, &live, new)?;
        } else if options.api_semantics && def.status_subresource {
            new = match part {
                // A write to the main resource leaves the status as it is.
                Part::Main => with_status_of(new, &live),
                // A status write changes the status only.
                Part::Status | Part::Approval => with_status_of(live.clone(), &new),
            };
        }
        let effect = self.prepare_hooks(&def, &mut new, Some(&live), options)?;
        let mut prepared = Prepared {
            key: key.clone(),
            objkey: (ns.to_string(), name.to_string()),
            value: Value::Null,
            change: None,
            old: Some(current),
            operation: Operation::Update,
            effect,
            created: false,
        };
        let finalizers_done = live_meta.contains_key("deletionTimestamp")
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
        if finalizers_done {
            if matches!(prepared.effect, Effect::Install(_)) {
                prepared.effect = Effect::Uninstall(name.to_string());
            }
            prepared.value = new;
            prepared.change = Some(ChangeKind::Deleted);
            return Ok(prepared);
        }
        // An update that changes nothing is not written: no new resourceVersion, no event.
        if new == live {
            prepared.value = new;
            prepared.effect = Effect::None;
            return Ok(prepared);
        }
        if def.tracks_generation && spec_changed(&live, &new, def.status_subresource) {
            let generation = live_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("generation".to_string(), json!(generation + 1));
            }
        }
        prepared.value = new;
        prepared.change = Some(ChangeKind::Modified);
        Ok(prepared)
    }

    fn prepare_delete(
        &self,
        key: &TypeKey,
        ns: &str,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Prepared, ApiError> {
        let ts = type_store(self, key)?;
        let def = ts.def.clone();
        let objkey = (ns.to_string(), name.to_string());
        let current = ts
            .objects
            .get(&objkey)
            .cloned()
            .ok_or_else(|| def.not_found(name))?;
        let mut live = current.value();
        let live_uid = live
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(uid) = preconditions.uid.as_deref().filter(|u| !u.is_empty())
            && uid != live_uid
        {
            return Err(def.conflict(
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {live_uid}"),
            ));
        }
        if let Some(rv) = preconditions
            .resource_version
            .as_deref()
            .filter(|r| !r.is_empty())
            && rv != current.resource_version.to_string()
        {
            return Err(def.conflict(
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    current.resource_version
                ),
            ));
        }
        let has_finalizers = live
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let mut prepared = Prepared {
            key: key.clone(),
            objkey,
            value: Value::Null,
            change: None,
            old: Some(current),
            operation: Operation::Delete,
            effect: Effect::None,
            created: false,
        };
        if has_finalizers {
            if live.pointer("/metadata/deletionTimestamp").is_some() {
                prepared.value = live;
                return Ok(prepared);
            }
            let meta = metadata_mut(&mut live)?;
            meta.insert("deletionTimestamp".to_string(), Value::String(now()));
            meta.insert("deletionGracePeriodSeconds".to_string(), json!(0));
            if def.tracks_generation {
                let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(0);
                meta.insert("generation".to_string(), json!(generation + 1));
            }
            prepared.value = live;
            prepared.change = Some(ChangeKind::Modified);
            return Ok(prepared);
        }
        if key.0 == CRD_GROUP && key.1 == CRD_PLURAL {
            prepared.effect = Effect::Uninstall(name.to_string());
        }
        prepared.value = live;
        prepared.change = Some(ChangeKind::Deleted);
        Ok(prepared)
    }

    /// Stores a prepared write, unless the live object is no longer the one it was
    /// worked out from (`Ok(None)`).
    fn apply(
        &mut self,
        prepared: Prepared,
        dry_run: bool,
    ) -> Result<Option<Arc<StoredObject>>, ApiError> {
        let ts = type_store(self, &prepared.key)?;
        let live_rv = ts.objects.get(&prepared.objkey).map(|o| o.resource_version);
        if live_rv != prepared.old.as_ref().map(|o| o.resource_version) {
            return Ok(None);
        }
        let Some(change) = prepared.change else {
            return Ok(prepared.old);
        };
        let stored = self.commit(
            &prepared.key,
            prepared.objkey,
            prepared.value,
            change,
            dry_run,
        )?;
        if !dry_run {
            match prepared.effect {
                Effect::None => {}
                Effect::Install(installed) => {
                    let (def, validation) = *installed;
                    self.install(def, validation);
                }
                Effect::Uninstall(crd_name) => self.uninstall(&crd_name),
            }
            if prepared.key.0 == admission::GROUP && prepared.key.1 == admission::VALIDATING_PLURAL
            {
                self.refresh_webhooks();
            }
        }
        Ok(Some(stored))
    }

    /// Re-reads the webhooks after a webhook configuration changed.
    fn refresh_webhooks(&mut self) {
        let key = (
            admission::GROUP.to_string(),
            admission::VALIDATING_PLURAL.to_string(),
        );
        let webhooks = self
            .types
            .get(&key)
            .map(|ts| admission::webhooks_of(ts.objects.values().map(|o| o.as_ref())))
            .unwrap_or_default();
        self.webhooks_present
            .store(!webhooks.is_empty(), Ordering::Release);
        self.webhooks = Arc::new(webhooks);
    }

    /// Kind-specific defaulting and validation: Secret `stringData` and `type`; webhook
    /// configurations; a CRD's status (and the kind it defines, installed once the CRD
    /// is stored, with its CEL rules compiled); the CEL rules of a custom resource.
    fn prepare_hooks(
        &self,
        def: &ResourceDef,
        obj: &mut Value,
        live: Option<&Value>,
        options: WriteOptions,
    ) -> Result<Effect, ApiError> {
        if def.group.is_empty() && def.plural == "secrets" {
            default_secret(obj);
        }
        if def.group == admission::GROUP && def.plural == admission::VALIDATING_PLURAL {
            admission::default_and_validate(obj).map_err(|errors| {
                error::invalid_object(&def.group, &def.kind, &meta_str(obj, "name"), &errors)
            })?;
        }
        if def.custom
            && options.api_semantics
            && let Some(validation) = self
                .types
                .get(&def.key())
                .and_then(|t| t.validation.as_ref())
        {
            validation.validate(obj, live).map_err(|errors| {
                error::invalid_object(&def.group, &def.kind, &meta_str(obj, "name"), &errors)
            })?;
        }
        if def.group == CRD_GROUP && def.plural == CRD_PLURAL {
            let crd_def = resource::from_crd(obj)?;
            if let Some(existing) = self.types.get(&crd_def.key())
                && !existing.def.custom
            {
                return Err(def.invalid(
                    &meta_str(obj, "name"),
                    "spec.names.plural: Invalid value: the resource is built into this server",
                ));
            }
            let validation = CrdValidation::from_crd(obj, &crd_def.storage_version)
                .map_err(|errors| {
                    error::invalid_object(&def.group, &def.kind, &meta_str(obj, "name"), &errors)
                })?
                .map(Arc::new);
            crd_status(obj, &crd_def, live);
            return Ok(Effect::Install(Box::new((crd_def, validation))));
        }
        Ok(Effect::None)
    }

    /// Serves (or re-serves, keeping the objects) the kind a stored CRD defines.
    fn install(&mut self, def: ResourceDef, validation: Option<Arc<CrdValidation>>) {
        match self.types.get_mut(&def.key()) {
            Some(ts) => {
                ts.def = Arc::new(def);
                ts.validation = validation;
            }
            None => {
                let key = def.key();
                let mut ts = TypeStore::new(def);
                ts.validation = validation;
                self.types.insert(key, ts);
            }
        }
    }

    /// Stops serving the kind of a deleted CRD; its objects go and its watches end.
    fn uninstall(&mut self, crd_name: &str) {
        if let Some((plural, group)) = crd_name.split_once('.') {
            let key = (group.to_string(), plural.to_string());
            if self.types.get(&key).is_some_and(|t| t.def.custom) {
                self.types.remove(&key);
            }
        }
    }

    /// Stores a new version (or removes the object), with the next resourceVersion,
    /// records the change and feeds the watchers.
    fn commit(
        &mut self,
        key: &TypeKey,
        objkey: ObjKey,
        mut value: Value,
        kind: ChangeKind,
        dry_run: bool,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let resource_version = self.resource_version + 1;
        if !dry_run && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert(
                "resourceVersion".to_string(),
                Value::String(resource_version.to_string()),
            );
        }
        let stored = Arc::new(StoredObject::from_value(&value, resource_version)?);
        if dry_run {
            return Ok(stored);
        }
        let history_limit = self.history_limit;
        let ts = self
            .types
            .get_mut(key)
            .ok_or_else(ApiError::not_found_path)?;
        self.resource_version = resource_version;
        let previous = match kind {
            ChangeKind::Deleted => ts.objects.remove(&objkey),
            ChangeKind::Added | ChangeKind::Modified => ts.objects.insert(objkey, stored.clone()),
        };
        let change = Arc::new(Change {
            resource_version,
            kind,
            object: stored.clone(),
            previous,
        });
        ts.history.push_back(change.clone());
        while ts.history.len() > history_limit {
            if let Some(old) = ts.history.pop_front() {
                ts.evicted_through = old.resource_version;
            }
        }
        // No receiver is not an error: nobody watches this kind.
        let _ = ts.sender.send(change);
        Ok(stored)
    }
}

/// Checks `kind`/`apiVersion` against the kind being written and sets both to the
/// stored ones.
fn normalize_type_meta(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    };
    if let Some(kind) = o
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        && kind != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the kind of the resource ({})",
            def.kind
        )));
    }
    if let Some(api_version) = o
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
    {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if group != def.group || !def.versions.iter().any(|v| v == version) {
            return Err(ApiError::bad_request(format!(
                "the API version of the object ({api_version}) does not match the resource ({})",
                def.storage_api_version()
            )));
        }
    }
    o.insert(
        "apiVersion".to_string(),
        Value::String(def.storage_api_version()),
    );
    o.insert("kind".to_string(), Value::String(def.kind.clone()));
    Ok(())
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    if let Some(labels) = meta.get("labels")
        && !labels.is_null()
        && !labels
            .as_object()
            .is_some_and(|l| l.values().all(Value::is_string))
    {
        return Err(ApiError::bad_request(
            "metadata.labels must map strings to strings",
        ));
    }
    Ok(meta)
}

fn meta_text(meta: &Map<String, Value>, field: &str) -> String {
    meta.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn meta_str(obj: &Value, field: &str) -> String {
    obj.get("metadata")
        .and_then(Value::as_object)
        .map(|m| meta_text(m, field))
        .unwrap_or_default()
}

/// Sets the namespace of the URL; a different one in the body is a 400, as upstream.
fn set_namespace(
    def: &ResourceDef,
    meta: &mut Map<String, Value>,
    ns: &str,
) -> Result<(), ApiError> {
    if !def.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    match meta.get("namespace").and_then(Value::as_str) {
        Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
            Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
            )))
        }
        _ => {
            meta.insert("namespace".to_string(), Value::String(ns.to_string()));
            Ok(())
        }
    }
}

/// The body of an apply (or create-on-update PUT) of a missing object, named as the URL.
fn with_name(mut body: Value, name: &str) -> Result<Value, ApiError> {
    let meta = metadata_mut(&mut body)?;
    match meta.get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != name => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
        _ => {
            meta.insert("name".to_string(), Value::String(name.to_string()));
            Ok(body)
        }
    }
}

/// A lowercase RFC 1123 subdomain, as upstream requires of most names.
fn validate_name(def: &ResourceDef, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(def.invalid(
            name,
            &format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

/// `target` with the `.status` of `source` (none when `source` has none).
fn with_status_of(mut target: Value, source: &Value) -> Value {
    if let Some(o) = target.as_object_mut() {
        match source.get("status") {
            Some(status) => {
                o.insert("status".to_string(), status.clone());
            }
            None => {
                o.remove("status");
            }
        }
    }
    target
}

/// Whether anything outside `metadata` (and `status`, with a status subresource)
/// differs: what bumps `metadata.generation` upstream.
fn spec_changed(live: &Value, new: &Value, status_subresource: bool) -> bool {
    let (Some(a), Some(b)) = (live.as_object(), new.as_object()) else {
        return live != new;
    };
    let counts = |k: &String| k != "metadata" && !(status_subresource && k == "status");
    a.keys()
        .chain(b.keys())
        .filter(|k| counts(k))
        .any(|k| a.get(k) != b.get(k))
}

/// Secrets: `stringData` is merged into `data` (base64) and never stored, `type`
/// defaults to `Opaque`.
fn default_secret(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    if let Some(Value::Object(string_data)) = o.remove("stringData") {
        let data = o.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        if let Some(data) = data.as_object_mut() {
            for (k, v) in string_data {
                if let Some(s) = v.as_str() {
                    data.insert(k, Value::String(STANDARD.encode(s)));
                }
            }
        }
    }
    if o.get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        o.insert("type".to_string(), Value::String("Opaque".to_string()));
    }
}

/// A CRD's server-managed status: names accepted, Established, stored versions.
fn crd_status(obj: &mut Value, def: &ResourceDef, live: Option<&Value>) {
    let now = now();
    let conditions = live
        .and_then(|l| l.pointer("/status/conditions"))
        .cloned()
        .unwrap_or_else(|| {
            json!([
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now}
            ])
        });
    let mut accepted = json!({
        "plural": def.plural,
        "singular": def.singular,
        "kind": def.kind,
        "listKind": def.list_kind,
    });
    if !def.short_names.is_empty() {
        accepted["shortNames"] = json!(def.short_names);
    }
    if let Some(o) = obj.as_object_mut() {
        o.insert(
            "status".to_string(),
            json!({
                "acceptedNames": accepted,
                "conditions": conditions,
                "storedVersions": [def.storage_version],
            }),
        );
    }
}

/// Now, as a Kubernetes `Time` (RFC 3339, seconds, UTC).
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::internal("no randomness available"))?;
    Ok(bytes)
}

/// A version 4 UUID.
pub(crate) fn new_uid() -> Result<String, ApiError> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Five characters from the alphabet upstream uses for `generateName` (no vowels, no
/// look-alikes).
fn random_suffix() -> Result<String, ApiError> {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    Ok(random_bytes::<5>()?
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> TypeKey {
        (String::new(), "secrets".to_string())
    }

    fn api() -> WriteOptions {
        WriteOptions {
            api_semantics: true,
            dry_run: false,
        }
    }

    fn secret(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"n": name}}, "stringData": {"k": "v"}})
    }

    #[test]
    fn create_sets_server_fields_and_defaults_secrets() {
        let store = Store::new(10);
        let obj = store
            .create(&secrets(), "ns", secret("a"), api())
            .expect("created");
        let v = obj.value();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["type"], "Opaque");
        assert_eq!(v["data"]["k"], "dg==");
        assert!(v.get("stringData").is_none());
        assert_eq!(v["metadata"]["namespace"], "ns");
        assert_eq!(v["metadata"]["uid"].as_str().map(str::len), Some(36));
        assert_eq!(
            v["metadata"]["resourceVersion"],
            obj.resource_version.to_string()
        );
        assert_eq!(obj.resource_version, store.resource_version());
        let again = store
            .create(&secrets(), "ns", secret("a"), api())
            .expect_err("exists");
        assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    }

    #[test]
    fn pages_cover_every_object_once_and_stop() {
        let store = Store::new(10);
        for ns in ["a", "b"] {
            for i in 0..3 {
                store
                    .create(&secrets(), ns, secret(&format!("s{i}")), api())
                    .expect("created");
            }
        }
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        let mut first_rv = None;
        loop {
            let page = store
                .list(
                    &secrets(),
                    None,
                    &LabelSelector::default(),
                    &FieldSelector::default(),
                    Some(4),
                    token.as_deref(),
                )
                .expect("page");
            first_rv.get_or_insert(page.resource_version);
            assert_eq!(Some(page.resource_version), first_rv);
            names.extend(
                page.items
                    .iter()
                    .map(|o| format!("{}/{}", o.namespace, o.name)),
            );
            match page.continue_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(names, ["a/s0", "a/s1", "a/s2", "b/s0", "b/s1", "b/s2"]);
        let only_b = store
            .list(
                &secrets(),
                Some("b"),
                &LabelSelector::parse("n in (s0,s2)").expect("selector"),
                &FieldSelector::default(),
                None,
                None,
            )
            .expect("list");
        assert_eq!(only_b.items.len(), 2);
        assert!(only_b.continue_token.is_none());
    }

    #[test]
    fn history_is_bounded_and_old_versions_expire() {
        let store = Store::new(2);
        for i in 0..4 {
            store
                .create(&secrets(), "ns", secret(&format!("s{i}")), api())
                .expect("created");
        }
        let rv = store.resource_version();
        let expired = store
            .watch(&secrets(), None, WatchFrom::After(rv - 3))
            .expect("kind exists")
            .expect_err("too old");
        assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
        let start = store
            .watch(&secrets(), None, WatchFrom::After(rv - 2))
            .expect("kind exists")
            .expect("retained");
        assert_eq!(start.backlog.len(), 2);
    }

    #[test]
    fn no_op_updates_are_not_written() {
        let store = Store::new(10);
        let obj = store
            .create(&secrets(), "ns", secret("a"), api())
            .expect("created");
        let (same, _) = store
            .update(
                &secrets(),
                "ns",
                "a",
                Part::Main,
                UpdateOp::Merge(json!({"metadata": {"labels": {"n": "a"}}})),
                api(),
            )
            .expect("patched");
        assert_eq!(same.resource_version, obj.resource_version);
        let (changed, _) = store
            .update(
                &secrets(),
                "ns",
                "a",
                Part::Main,
                UpdateOp::Merge(json!({"metadata": {"labels": {"n": "b"}}})),
                api(),
            )
            .expect("patched");
        assert!(changed.resource_version > obj.resource_version);
    }

    #[test]
    fn finalizers_hold_a_deletion_until_emptied() {
        let store = Store::new(10);
        let mut body = secret("a");
        body["metadata"]["finalizers"] = json!(["example.com/keep"]);
        store
            .create(&secrets(), "ns", body, api())
            .expect("created");
        let held = store
            .delete(&secrets(), "ns", "a", &Preconditions::default(), false)
            .expect("deleting");
        assert!(
            held.value()
                .pointer("/metadata/deletionTimestamp")
                .is_some()
        );
        store.get(&secrets(), "ns", "a").expect("still there");
        store
            .update(
                &secrets(),
                "ns",
                "a",
                Part::Main,
                UpdateOp::Merge(json!({"metadata": {"finalizers": null}})),
                api(),
            )
            .expect("patched");
        assert_eq!(
            store.get(&secrets(), "ns", "a").expect_err("gone").code,
            404
        );
    }
}
