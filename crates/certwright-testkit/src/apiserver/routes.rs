//! The HTTP surface: every request is logged, passed through the fault rules, then
//! routed by its path the way the Kubernetes API server lays out its URLs
//! (`/api/v1/...`, `/apis/{group}/{version}/...`, `namespaces/{ns}/...`, `/{name}`,
//! `/{name}/status`), plus `/version` and legacy discovery. Writes go through admission
//! (CEL rules in the store, then validating webhooks) and their warnings become
//! `Warning` headers; every answer is counted. With the fault endpoint on, `/testkit/`
//! goes to [`super::admin`] first.
//!
//! One file because it is the one dispatch from a URL to the store: paths, query
//! parameters, views, and the answers upstream gives for each.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::admin;
use super::admission;
use super::error::ApiError;
use super::faults::RecordedRequest;
use super::resource::ResourceDef;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Part, Preconditions, StoredObject, UpdateOp, View, WatchFrom, WriteOptions};
use super::watch::{self, WatchParams};

/// The largest request body accepted (upstream: 3 MiB for most writes).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A watch's length when the client names none (upstream: between 30 and 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// The axum fallback handler: every request comes here.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if shared.options.fault_endpoint && path.starts_with(admin::PREFIX) {
        return admin::handle(&shared, request).await;
    }
    let query = request.uri().query().unwrap_or_default().to_string();
    shared.log.record(RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
    });
    let decision = shared.faults.decide(&method, &path);
    if let Some(delay) = decision.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = decision.fail {
        // A failure touches nothing; an answer delay still holds it back.
        if let Some(delay) = decision.answer_delay {
            tokio::time::sleep(delay).await;
        }
        let response = ApiError::injected(code).into_response();
        shared.stats.record(&method, response.status(), true, false);
        return response;
    }
    let query = Query(query_pairs(&query));
    let watch = method == Method::GET && query.flag("watch");
    let mut warnings = Vec::new();
    let mut response = match serve(&shared, request, &path, &query, &mut warnings).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    if !warnings.is_empty() {
        // Upstream sends them with the answer, success or failure.
        admission::add_warning_headers(response.headers_mut(), &warnings);
    }
    if let Some(delay) = decision.answer_delay {
        tokio::time::sleep(delay).await;
    }
    let status = response.status();
    shared
        .stats
        .record(&method, status, false, watch && status.is_success());
    response
}

/// Decoded query parameters, in order.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    fn dry_run(&self) -> bool {
        self.get("dryRun").is_some_and(|v| v == "All")
    }

    fn labels(&self) -> Result<LabelSelector, ApiError> {
        LabelSelector::parse(self.get("labelSelector").unwrap_or_default())
    }

    fn fields(&self) -> Result<FieldSelector, ApiError> {
        FieldSelector::parse(self.get("fieldSelector").unwrap_or_default())
    }
}

async fn serve(
    shared: &Arc<Shared>,
    request: Request,
    path: &str,
    query: &Query,
    warnings: &mut Vec<String>,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let discovery = request.method() == Method::GET;
    match segments.as_slice() {
        ["version"] if discovery => Ok(json_response(StatusCode::OK, &version())),
        ["healthz" | "livez" | "readyz"] if discovery => Ok(Response::new(Body::from("ok"))),
        ["api"] if discovery => Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}
                ],
            }),
        )),
        ["apis"] if discovery => Ok(json_response(StatusCode::OK, &group_list(shared))),
        ["api", "v1"] if discovery => resource_list(shared, "", "v1"),
        ["apis", group, version] if discovery => resource_list(shared, group, version),
        ["api", "v1", rest @ ..] if !rest.is_empty() => {
            resource(shared, request, "", "v1", rest, query, warnings).await
        }
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]
            if request.method() == Method::POST =>
        {
            let body = read_body(request).await?;
            let answer = shared.authorizer.review(body)?;
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        ["apis", group, version, rest @ ..] if !rest.is_empty() => {
            resource(shared, request, group, version, rest, query, warnings).await
        }
        _ => Err(ApiError::not_found_path()),
    }
}

/// Where in a kind's URL space a request points.
enum Scope<'a> {
    Collection {
        ns: Option<&'a str>,
    },
    Object {
        ns: Option<&'a str>,
        name: &'a str,
        sub: Option<&'a str>,
    },
}

/// One write, before admission.
enum Write {
    Create(Value),
    Update {
        name: String,
        part: Part,
        op: UpdateOp,
    },
    Delete {
        name: String,
        preconditions: Preconditions,
    },
}

/// Where a write goes.
struct Target<'a> {
    shared: &'a Arc<Shared>,
    def: &'a ResourceDef,
    /// The version in the URL.
    version: &'a str,
    ns: &'a str,
    options: WriteOptions,
}

impl Target<'_> {
    fn admission(&self, part: Part) -> admission::Request<'_> {
        admission::Request {
            def: self.def,
            version: self.version,
            subresource: match part {
                Part::Main => None,
                Part::Status => Some("status"),
                Part::Approval => Some("approval"),
            },
            dry_run: self.options.dry_run,
        }
    }

    /// Stores a write, through the validating webhooks that want it; without any, in
    /// one step under the store's lock. Returns the object and whether it was created.
    async fn write(
        &self,
        write: Write,
        warnings: &mut Vec<String>,
    ) -> Result<(Arc<StoredObject>, bool), ApiError> {
        let store = &self.shared.store;
        let key = self.def.key();
        let (ns, options) = (self.ns, self.options);
        let part = match &write {
            Write::Update { part, .. } => *part,
            _ => Part::Main,
        };
        let request = self.admission(part);
        let webhooks = store
            .webhooks()
            .filter(|w| admission::may_apply(w, &request));
        let Some(webhooks) = webhooks else {
            return match write {
                Write::Create(body) => store.create(&key, ns, body, options).map(|o| (o, true)),
                Write::Update { name, part, op } => {
                    store.update(&key, ns, &name, part, op, options)
                }
                Write::Delete {
                    name,
                    preconditions,
                } => store
                    .delete(&key, ns, &name, &preconditions, options.dry_run)
                    .map(|o| (o, false)),
            };
        };
        admission::write(
            self.shared,
            &webhooks,
            &request,
            warnings,
            || match &write {
                Write::Create(body) => store.prepare_create(&key, ns, body.clone(), options),
                Write::Update { name, part, op } => {
                    store.prepare_update(&key, ns, name, *part, op.clone(), options)
                }
                Write::Delete {
                    name,
                    preconditions,
                } => store.prepare_delete(&key, ns, name, preconditions),
            },
        )
        .await
    }
}

async fn resource(
    shared: &Arc<Shared>,
    request: Request,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &Query,
    warnings: &mut Vec<String>,
) -> Result<Response, ApiError> {
    let store = &shared.store;
    let (plural, scope) = match rest {
        ["namespaces", ns, plural] if store.lookup(group, version, plural).is_some() => {
            (*plural, Scope::Collection { ns: Some(*ns) })
        }
        ["namespaces", ns, plural, name] => (
            *plural,
            Scope::Object {
                ns: Some(*ns),
                name,
                sub: None,
            },
        ),
        ["namespaces", ns, plural, name, sub] => (
            *plural,
            Scope::Object {
                ns: Some(*ns),
                name,
                sub: Some(*sub),
            },
        ),
        [plural] => (*plural, Scope::Collection { ns: None }),
        [plural, name] => (
            *plural,
            Scope::Object {
                ns: None,
                name,
                sub: None,
            },
        ),
        [plural, name, sub] => (
            *plural,
            Scope::Object {
                ns: None,
                name,
                sub: Some(*sub),
            },
        ),
        _ => return Err(ApiError::not_found_path()),
    };
    let def = store
        .lookup(group, version, plural)
        .ok_or_else(ApiError::not_found_path)?;
    let view = view_for(request.headers(), &def, version);
    let method = request.method().clone();
    match scope {
        Scope::Collection { ns } => {
            if ns.is_some() && !def.namespaced {
                return Err(ApiError::not_found_path());
            }
            match method {
                Method::GET if query.flag("watch") => start_watch(shared, &def, ns, view, query),
                Method::GET => list(shared, &def, ns, &view, query),
                Method::POST => {
                    if def.namespaced && ns.is_none() {
                        return Err(ApiError::method_not_allowed(
                            "create a namespaced object under /namespaces/{namespace}/",
                        ));
                    }
                    let body = read_body(request).await?;
                    let target = Target {
                        shared,
                        def: &def,
                        version,
                        ns: ns.unwrap_or(""),
                        options: write_options(query),
                    };
                    let (created, _) = target.write(Write::Create(body), warnings).await?;
                    Ok(object_response(StatusCode::CREATED, &view, &created))
                }
                Method::DELETE => {
                    let deleted =
                        delete_collection(shared, &def, version, ns, query, warnings).await?;
                    let rv = store.resource_version();
                    let (kind, api_version) = view.list_type(&def);
                    let items = deleted.iter().map(|o| view.render(o));
                    Ok(bytes_response(
                        StatusCode::OK,
                        list_body(&kind, &api_version, rv, None, items),
                    ))
                }
                _ => Err(ApiError::method_not_allowed(format!(
                    "{method} is not supported on a collection"
                ))),
            }
        }
        Scope::Object { ns, name, sub } => {
            if def.namespaced != ns.is_some() {
                return Err(ApiError::not_found_path());
            }
            let part = match sub {
                None => Part::Main,
                Some("status") if def.status_subresource => Part::Status,
                Some("approval") if def.is_csr() => Part::Approval,
                Some(_) => return Err(ApiError::not_found_path()),
            };
            let target = Target {
                shared,
                def: &def,
                version,
                ns: ns.unwrap_or(""),
                options: write_options(query),
            };
            object(&target, request, name, part, &view, query, warnings).await
        }
    }
}

/// `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1` asks for
/// metadata only.
fn view_for(headers: &HeaderMap, def: &ResourceDef, version: &str) -> View {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("as=PartialObjectMetadata") {
        View::Metadata
    } else {
        View::Full(def.api_version(version))
    }
}

fn write_options(query: &Query) -> WriteOptions {
    WriteOptions {
        api_semantics: true,
        dry_run: query.dry_run(),
    }
}

/// The objects a DELETE of a collection deletes: each through admission, as upstream
/// admits every item.
async fn delete_collection(
    shared: &Arc<Shared>,
    def: &ResourceDef,
    version: &str,
    ns: Option<&str>,
    query: &Query,
    warnings: &mut Vec<String>,
) -> Result<Vec<Arc<StoredObject>>, ApiError> {
    let store = &shared.store;
    let (labels, fields) = (query.labels()?, query.fields()?);
    let dry_run = query.dry_run();
    let admitted = store.webhooks().is_some_and(|w| {
        let target = Target {
            shared,
            def,
            version,
            ns: "",
            options: write_options(query),
        };
        admission::may_apply(&w, &target.admission(Part::Main))
    });
    if !admitted {
        return store.delete_collection(&def.key(), ns, &labels, &fields, dry_run);
    }
    let page = store.list(&def.key(), ns, &labels, &fields, None, None)?;
    let mut deleted = Vec::new();
    for obj in page.items {
        let target = Target {
            shared,
            def,
            version,
            ns: &obj.namespace,
            options: write_options(query),
        };
        let write = Write::Delete {
            name: obj.name.clone(),
            preconditions: Preconditions::default(),
        };
        match target.write(write, warnings).await {
            Ok((gone, _)) => deleted.push(gone),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

async fn object(
    target: &Target<'_>,
    request: Request,
    name: &str,
    part: Part,
    view: &View,
    query: &Query,
    warnings: &mut Vec<String>,
) -> Result<Response, ApiError> {
    let store = &target.shared.store;
    let (def, ns) = (target.def, target.ns);
    let key = def.key();
    let method = request.method().clone();
    let update = |op| Write::Update {
        name: name.to_string(),
        part,
        op,
    };
    match method {
        Method::GET => {
            let obj = store.get(&key, ns, name)?;
            Ok(object_response(StatusCode::OK, view, &obj))
        }
        Method::PUT => {
            let body = read_body(request).await?;
            let write = update(UpdateOp::Replace(body));
            let (obj, created) = target.write(write, warnings).await?;
            Ok(object_response(created_or_ok(created), view, &obj))
        }
        Method::PATCH => {
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let bytes = read_bytes(request).await?;
            let op = patch_op(def, &content_type, &bytes, query)?;
            let (obj, created) = target.write(update(op), warnings).await?;
            Ok(object_response(created_or_ok(created), view, &obj))
        }
        Method::DELETE if part == Part::Main => {
            let bytes = read_bytes(request).await?;
            let preconditions = if bytes.iter().all(u8::is_ascii_whitespace) {
                Preconditions::default()
            } else {
                let options: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::bad_request(format!("the DeleteOptions could not be decoded: {e}"))
                })?;
                let text = |pointer: &str| {
                    options
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                Preconditions {
                    uid: text("/preconditions/uid"),
                    resource_version: text("/preconditions/resourceVersion"),
                }
            };
            let write = Write::Delete {
                name: name.to_string(),
                preconditions,
            };
            let (obj, _) = target.write(write, warnings).await?;
            Ok(object_response(StatusCode::OK, view, &obj))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported here"
        ))),
    }
}

fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// The patch a PATCH body and its content type describe, as upstream accepts them.
fn patch_op(
    def: &ResourceDef,
    content_type: &str,
    bytes: &[u8],
    query: &Query,
) -> Result<UpdateOp, ApiError> {
    match content_type {
        "application/merge-patch+json" => Ok(UpdateOp::Merge(parse_json(bytes)?)),
        "application/json-patch+json" => {
            let patch: json_patch::Patch = serde_json::from_slice(bytes).map_err(|e| {
                ApiError::bad_request(format!("the JSON patch could not be decoded: {e}"))
            })?;
            Ok(UpdateOp::Json(patch))
        }
        // Upstream has no strategic merge patch for custom resources. For built-in kinds
        // it is treated here as a merge patch (no list merge keys): a simplification.
        "application/strategic-merge-patch+json" if def.custom => Err(unsupported_patch()),
        "application/strategic-merge-patch+json" => Ok(UpdateOp::Merge(parse_json(bytes)?)),
        "application/apply-patch+yaml" => {
            if query.get("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let body = parse_json_or_yaml(bytes)?;
            for field in ["apiVersion", "kind"] {
                if body
                    .get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(ApiError::bad_request(format!(
                        "{field} must be set in an applied configuration"
                    )));
                }
            }
            // `force` only matters with field ownership, which this server does not track.
            Ok(UpdateOp::Apply(body))
        }
        _ => Err(unsupported_patch()),
    }
}

fn unsupported_patch() -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
    )
}

async fn read_bytes(request: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|e| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body could not be read: {e}"),
            )
        })
}

/// A JSON (or, with a YAML content type, YAML) request body.
async fn read_body(request: Request) -> Result<Value, ApiError> {
    let yaml = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("yaml"));
    let bytes = read_bytes(request).await?;
    if yaml {
        parse_json_or_yaml(&bytes)
    } else {
        parse_json(&bytes)
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body could not be decoded as JSON: {e}")))
}

fn parse_json_or_yaml(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).or_else(|_| {
        serde_yaml_ng::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the body could not be decoded as YAML: {e}"))
        })
    })
}

fn list(
    shared: &Arc<Shared>,
    def: &ResourceDef,
    ns: Option<&str>,
    view: &View,
    query: &Query,
) -> Result<Response, ApiError> {
    let limit = query
        .get("limit")
        .map(|l| {
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))
        })
        .transpose()?;
    let page = shared.store.list(
        &def.key(),
        ns,
        &query.labels()?,
        &query.fields()?,
        limit,
        query.get("continue"),
    )?;
    let (kind, api_version) = view.list_type(def);
    let items = page.items.iter().map(|o| view.render(o));
    Ok(bytes_response(
        StatusCode::OK,
        list_body(
            &kind,
            &api_version,
            page.resource_version,
            page.continue_token.as_deref(),
            items,
        ),
    ))
}

fn start_watch(
    shared: &Arc<Shared>,
    def: &ResourceDef,
    ns: Option<&str>,
    view: View,
    query: &Query,
) -> Result<Response, ApiError> {
    let send_initial_events = query.get("sendInitialEvents");
    let from = match query.get("resourceVersion").unwrap_or_default() {
        "" | "0" => WatchFrom::Now {
            initial_events: send_initial_events != Some("false"),
        },
        rv => WatchFrom::After(rv.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {rv:?}: must be an integer"
            ))
        })?),
    };
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_WATCH_TIMEOUT,
    };
    let params = WatchParams {
        key: def.key(),
        ns: ns.map(str::to_string),
        labels: query.labels()?,
        fields: query.fields()?,
        view,
        bookmarks: query.flag("allowWatchBookmarks"),
        timeout,
        initial_events_end: send_initial_events == Some("true")
            && matches!(from, WatchFrom::Now { .. }),
    };
    let start = shared.store.watch(&def.key(), ns, from)?;
    Ok(watch::respond(shared.clone(), params, start))
}

/// A list object, assembled from the items' stored bytes.
fn list_body(
    kind: &str,
    api_version: &str,
    resource_version: u64,
    continue_token: Option<&str>,
    items: impl Iterator<Item = Bytes>,
) -> Bytes {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    let head = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    body.pop(); // the closing brace
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&item);
    }
    body.extend_from_slice(b"]}");
    Bytes::from(body)
}

fn object_response(status: StatusCode, view: &View, obj: &StoredObject) -> Response {
    bytes_response(status, view.render(obj))
}

fn bytes_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    bytes_response(
        status,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

/// `/version`, claiming the Kubernetes version the tests compile k8s-openapi for.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-certwright-testkit",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// `/apis`: every group but core, each with its served versions.
fn group_list(shared: &Shared) -> Value {
    let mut groups: Vec<(String, Vec<String>, String)> = Vec::new();
    for def in shared.store.defs() {
        if def.group.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(g, _, _)| *g == def.group) {
            Some((_, versions, _)) => {
                for v in &def.versions {
                    if !versions.contains(v) {
                        versions.push(v.clone());
                    }
                }
            }
            None => groups.push((
                def.group.clone(),
                def.versions.clone(),
                def.storage_version.clone(),
            )),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions, preferred)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({
                "name": group,
                "versions": versions,
                "preferredVersion": {"groupVersion": format!("{group}/{preferred}"), "version": preferred},
            })
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/{group}/{version}`: the kinds served there.
fn resource_list(shared: &Shared, group: &str, version: &str) -> Result<Response, ApiError> {
    let defs: Vec<_> = shared
        .store
        .defs()
        .into_iter()
        .filter(|d| d.group == group && d.versions.iter().any(|v| v == version))
        .collect();
    if defs.is_empty() {
        return Err(ApiError::not_found_path());
    }
    let mut resources = Vec::new();
    for def in &defs {
        let mut entry = json!({
            "name": def.plural,
            "singularName": def.singular,
            "namespaced": def.namespaced,
            "kind": def.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !def.short_names.is_empty() {
            entry["shortNames"] = json!(def.short_names);
        }
        resources.push(entry);
        if def.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", def.plural),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": def.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let pairs = query_pairs("labelSelector=a%3Db%2Cc+in+%28x%29&watch=1&empty=&bad=%zz&end=%4");
        assert_eq!(pairs[0], ("labelSelector".into(), "a=b,c in (x)".into()));
        assert_eq!(pairs[1], ("watch".into(), "1".into()));
        assert_eq!(pairs[2], ("empty".into(), String::new()));
        assert_eq!(pairs[3], ("bad".into(), "%zz".into()));
        assert_eq!(pairs[4], ("end".into(), "%4".into()));
    }

    #[test]
    fn list_bodies_are_valid_json() {
        let items = [
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"b\":2}"),
        ];
        let body = list_body("XList", "v1", 7, Some("tok"), items.into_iter());
        let value: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(value["metadata"]["resourceVersion"], "7");
        assert_eq!(value["metadata"]["continue"], "tok");
        assert_eq!(value["items"][1]["b"], 2);
    }
}
