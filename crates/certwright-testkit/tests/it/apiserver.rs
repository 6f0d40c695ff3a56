//! The testkit API server against an unmodified `kube::Client` and kube-runtime: each
//! test names the upstream behaviour it checks.
//!
//! One file because it is one list of upstream behaviours checked through one client
//! set-up, read top to bottom against the API server's documentation; splitting it by
//! verb would scatter the watch and resourceVersion cases that depend on each other.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PartialObjectMeta};
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, CustomResource, CustomResourceExt as _, Resource as _, ResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use certwright_testkit::apiserver::{ApiServer, ApiServerOptions, Method, MethodMatch};

/// A small custom resource with a status subresource.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "test.certwright.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
struct WidgetSpec {
    size: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
struct WidgetStatus {
    ready: bool,
}

const WAIT: Duration = Duration::from_secs(15);

async fn start_with(options: ApiServerOptions) -> anyhow::Result<(ApiServer, Client)> {
    // kube's rustls connector needs a process-wide provider; only ring is compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::start_with(options).await?;
    server.register_crd(&serde_json::to_value(Widget::crd())?)?;
    let client = client_for(&server)?;
    Ok((server, client))
}

async fn start() -> anyhow::Result<(ApiServer, Client)> {
    start_with(ApiServerOptions::new().bookmark_interval(Duration::from_millis(100))).await
}

fn client_for(server: &ApiServer) -> anyhow::Result<Client> {
    let mut config = kube::Config::new(server.url().parse()?);
    config.default_namespace = "default".to_string();
    Ok(Client::try_from(config)?)
}

fn secret(name: &str, labels: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Secret::default()
    }
}

fn widget(name: &str, size: u32) -> Widget {
    let mut w = Widget::new(name, WidgetSpec { size });
    w.status = Some(WidgetStatus { ready: true });
    w
}

/// The `Status` a failed call carried.
fn api_error<T: std::fmt::Debug>(result: kube::Result<T>) -> anyhow::Result<(u16, String)> {
    match result {
        Err(kube::Error::Api(status)) => Ok((status.code, status.reason.clone())),
        other => bail!("expected an API error, got {other:?}"),
    }
}

/// Polls `check` until it holds or `WAIT` passes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn rv_of(meta: &ObjectMeta) -> anyhow::Result<u64> {
    Ok(meta
        .resource_version
        .as_deref()
        .context("a resourceVersion")?
        .parse()?)
}

#[tokio::test]
async fn get_of_a_missing_object_is_404_not_found() -> anyhow::Result<()> {
    // Upstream: 404 with a Status whose reason is NotFound.
    let (_server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    assert_eq!(
        api_error(secrets.get("nope").await)?,
        (404, "NotFound".into())
    );
    assert!(secrets.get_opt("nope").await?.is_none());
    let widgets: Api<Widget> = Api::namespaced(client, "other");
    assert_eq!(api_error(widgets.get("nope").await)?.0, 404);
    Ok(())
}

#[tokio::test]
async fn create_sets_server_fields_and_a_second_create_is_409_already_exists() -> anyhow::Result<()>
{
    let (server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let before = server.resource_version();
    let created = secrets
        .create(&PostParams::default(), &secret("a", &[]))
        .await?;
    assert!(rv_of(&created.metadata)? > before);
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    // stringData is folded into data and never returned, as upstream.
    assert!(created.string_data.is_none());
    assert_eq!(
        created
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(|b| b.0.clone()),
        Some(b"v".to_vec())
    );
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    let again = secrets
        .create(&PostParams::default(), &secret("a", &[]))
        .await;
    assert_eq!(api_error(again)?, (409, "AlreadyExists".into()));

    // generateName gets a random suffix.
    let mut generated = secret("", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".to_string());
    let generated = secrets.create(&PostParams::default(), &generated).await?;
    let name = generated.name_any();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    // Custom resources start at generation 1 and lose .status on create (status
    // subresource).
    let widgets: Api<Widget> = Api::default_namespaced(client);
    let w = widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    assert_eq!(w.metadata.generation, Some(1));
    assert_eq!(w.status, None);
    Ok(())
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() -> anyhow::Result<()> {
    let (_server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    for i in 0..5 {
        secrets
            .create(&PostParams::default(), &secret(&format!("s{i}"), &[]))
            .await?;
    }
    // Objects in other namespaces are not listed in this one.
    Api::<Secret>::namespaced(client.clone(), "elsewhere")
        .create(&PostParams::default(), &secret("x", &[]))
        .await?;

    let mut names = Vec::new();
    let mut pages = 0;
    let mut params = ListParams::default().limit(2);
    let mut first_rv = None;
    loop {
        let page = secrets.list(&params).await?;
        pages += 1;
        let rv = page.metadata.resource_version.clone().context("list RV")?;
        assert_eq!(first_rv.get_or_insert(rv.clone()), &rv);
        names.extend(page.items.iter().map(|s| s.name_any()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);

    // All namespaces, as `/api/v1/secrets` lists upstream.
    let all: Api<Secret> = Api::all(client);
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 6);
    Ok(())
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() -> anyhow::Result<()> {
    let (_server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client);
    for (name, labels) in [
        ("a", vec![("app", "web"), ("env", "prod")]),
        ("b", vec![("app", "web"), ("env", "dev")]),
        ("c", vec![("app", "db")]),
        ("d", vec![]),
    ] {
        secrets
            .create(&PostParams::default(), &secret(name, &labels))
            .await?;
    }
    let names = |list: kube::core::ObjectList<Secret>| {
        list.items.iter().map(|s| s.name_any()).collect::<Vec<_>>()
    };
    let cases = [
        ("app=web", vec!["a", "b"]),
        ("app==web", vec!["a", "b"]),
        ("app!=web", vec!["c", "d"]),
        ("env in (prod,staging)", vec!["a"]),
        ("env notin (prod)", vec!["b", "c", "d"]),
        ("env", vec!["a", "b"]),
        ("!env", vec!["c", "d"]),
        ("app=web,env=dev", vec!["b"]),
    ];
    for (selector, expected) in cases {
        let got = names(
            secrets
                .list(&ListParams::default().labels(selector))
                .await?,
        );
        assert_eq!(got, expected, "labelSelector {selector}");
    }
    let got = names(
        secrets
            .list(&ListParams::default().fields("metadata.name=c"))
            .await?,
    );
    assert_eq!(got, ["c"]);
    let got = names(
        secrets
            .list(&ListParams::default().fields("metadata.namespace!=default"))
            .await?,
    );
    assert!(got.is_empty());
    let bad = secrets
        .list(&ListParams::default().labels("app in web"))
        .await;
    assert_eq!(api_error(bad)?.0, 400);
    Ok(())
}

#[tokio::test]
async fn a_watch_sees_added_modified_and_deleted() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client);
    secrets
        .create(&PostParams::default(), &secret("before", &[]))
        .await?;
    let start_rv = server.resource_version().to_string();
    let mut events = secrets
        .watch(&WatchParams::default().labels("watched=yes"), &start_rv)
        .await?
        .boxed();
    secrets
        .create(&PostParams::default(), &secret("ignored", &[]))
        .await?;
    secrets
        .create(&PostParams::default(), &secret("w", &[("watched", "yes")]))
        .await?;
    let patch = json!({"metadata": {"annotations": {"x": "1"}}});
    secrets
        .patch("w", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    secrets.delete("w", &DeleteParams::default()).await?;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(WAIT, events.try_next())
            .await
            .context("a watch event in time")??
            .context("the watch went on")?;
        match event {
            WatchEvent::Added(s) => seen.push(("ADDED", s.name_any())),
            WatchEvent::Modified(s) => seen.push(("MODIFIED", s.name_any())),
            WatchEvent::Deleted(s) => seen.push(("DELETED", s.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => bail!("watch error {e:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("ADDED", "w".to_string()),
            ("MODIFIED", "w".to_string()),
            ("DELETED", "w".to_string())
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_selector_watch_sees_objects_enter_and_leave_the_selection() -> anyhow::Result<()> {
    // Upstream's watch cache: an object that starts matching arrives as ADDED, one that
    // stops matching leaves as DELETED.
    let (server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client);
    secrets
        .create(&PostParams::default(), &secret("s", &[]))
        .await?;
    let rv = server.resource_version().to_string();
    let mut events = secrets
        .watch(&WatchParams::default().labels("team=pki"), &rv)
        .await?
        .boxed();
    for labels in [json!({"team": "pki"}), json!({"team": "web"})] {
        secrets
            .patch(
                "s",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await?;
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(WAIT, events.try_next())
            .await??
            .context("open")?
        {
            WatchEvent::Added(s) => seen.push(("ADDED", s.labels().get("team").cloned())),
            WatchEvent::Deleted(s) => seen.push(("DELETED", s.labels().get("team").cloned())),
            WatchEvent::Bookmark(_) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("ADDED", Some("pki".to_string())),
            ("DELETED", Some("pki".to_string()))
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_streaming_list_watcher_converges_too() -> anyhow::Result<()> {
    // sendInitialEvents=true: synthetic ADDED events, then a bookmark annotated
    // k8s.io/initial-events-end, as upstream (kube's StreamingList strategy).
    let (_server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client);
    for i in 0..3 {
        secrets
            .create(&PostParams::default(), &secret(&format!("s{i}"), &[]))
            .await?;
    }
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().streaming_lists();
    let stream = reflector(writer, watcher(secrets.clone(), config))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(WAIT, reader.wait_until_ready()).await??;
    assert_eq!(reader.state().len(), 3);
    secrets
        .create(&PostParams::default(), &secret("s3", &[]))
        .await?;
    eventually("the reflector holds 4", || reader.state().len() == 4).await?;
    task.abort();
    Ok(())
}

#[tokio::test]
async fn watcher_and_reflector_converge() -> anyhow::Result<()> {
    let (_server, client) = start().await?;
    let widgets: Api<Widget> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(widgets, watcher::Config::default().page_size(2)),
    )
    .applied_objects()
    .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));

    let ns_a: Api<Widget> = Api::namespaced(client.clone(), "a");
    let ns_b: Api<Widget> = Api::namespaced(client.clone(), "b");
    for i in 0..3 {
        ns_a.create(&PostParams::default(), &widget(&format!("w{i}"), i))
            .await?;
    }
    tokio::time::timeout(WAIT, reader.wait_until_ready()).await??;
    ns_b.create(&PostParams::default(), &widget("x", 9)).await?;
    ns_a.delete("w0", &DeleteParams::default()).await?;
    ns_a.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 42}})),
    )
    .await?;
    eventually("the reflector holds w1 (42), w2, x", || {
        let mut state: Vec<(String, u32)> = reader
            .state()
            .iter()
            .map(|w| (w.name_any(), w.spec.size))
            .collect();
        state.sort();
        state == [("w1".into(), 42), ("w2".into(), 2), ("x".into(), 9)]
    })
    .await?;
    task.abort();
    Ok(())
}

#[tokio::test]
async fn a_resource_version_older_than_the_history_is_410_and_the_watcher_relists()
-> anyhow::Result<()> {
    let (server, client) = start_with(
        ApiServerOptions::new()
            .history_limit(2)
            .bookmark_interval(Duration::from_secs(60)),
    )
    .await?;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let old_rv = server.resource_version().to_string();
    for i in 0..4 {
        secrets
            .create(&PostParams::default(), &secret(&format!("s{i}"), &[]))
            .await?;
    }
    // Upstream: HTTP 200, then one ERROR event carrying a 410 Expired Status.
    let mut events = secrets
        .watch(&WatchParams::default(), &old_rv)
        .await?
        .boxed();
    match events.try_next().await? {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => bail!("expected a 410 ERROR event, got {other:?}"),
    }

    // A watcher whose resumed watch is too old relists and converges.
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(secrets.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(WAIT, reader.wait_until_ready()).await??;
    eventually("a watch is open", || server.open_watches() == 1).await?;
    let lists_before = list_calls(&server);
    // Hold the re-watch while enough writes push its resourceVersion out of the history.
    server
        .faults()
        .delay_next(Method::GET, "/secrets", Duration::from_millis(500), 1);
    let rv_at_drop = server.resource_version().to_string();
    server.drop_watches();
    // Direct store writes: done at once, well inside the delay.
    for i in 4..8 {
        server.create_json(
            "secrets",
            json!({"metadata": {"name": format!("s{i}"), "namespace": "default"}}),
        )?;
    }
    eventually("the watcher relisted", || {
        list_calls(&server) > lists_before
    })
    .await?;
    eventually("the reflector holds all 8", || reader.state().len() == 8).await?;
    // The relist followed the re-watch from the expired resourceVersion.
    let requests = server.requests();
    let rewatch = requests
        .iter()
        .rposition(|r| r.is_watch() && r.query_param("resourceVersion") == Some(rv_at_drop.clone()))
        .context("a re-watch from the old resourceVersion")?;
    assert!(
        requests[rewatch..]
            .iter()
            .any(|r| !r.is_watch() && r.path.ends_with("/secrets")),
        "a list after the expired watch"
    );
    task.abort();
    Ok(())
}

fn list_calls(server: &ApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == Method::GET && r.path.ends_with("/secrets") && !r.is_watch())
        .count()
}

#[tokio::test]
async fn bookmarks_arrive_when_allowed() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client);
    let rv = server.resource_version().to_string();
    let mut events = secrets.watch(&WatchParams::default(), &rv).await?.boxed();
    secrets
        .create(&PostParams::default(), &secret("a", &[]))
        .await?;
    // Bookmarks tick on their own schedule: one may still carry the version from before
    // the create. They never run ahead of the store, and one soon carries its version.
    let current = server.resource_version();
    tokio::time::timeout(WAIT, async {
        loop {
            match events.try_next().await?.context("open")? {
                WatchEvent::Bookmark(b) => {
                    assert_eq!(b.types.kind, "Secret");
                    let bookmark_rv = b.metadata.resource_version.parse::<u64>()?;
                    assert!(bookmark_rv <= current, "{bookmark_rv} > {current}");
                    if bookmark_rv == current {
                        return anyhow::Ok(());
                    }
                }
                WatchEvent::Added(_) => {}
                other => bail!("unexpected {other:?}"),
            }
        }
    })
    .await
    .context("no bookmark with the store's version")??;
    Ok(())
}

#[tokio::test]
async fn put_with_a_stale_resource_version_is_409_conflict() -> anyhow::Result<()> {
    let (_server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let first = secrets
        .create(&PostParams::default(), &secret("a", &[]))
        .await?;
    let mut newer = first.clone();
    newer.metadata.labels = Some(BTreeMap::from([("v".to_string(), "2".to_string())]));
    let newer = secrets.replace("a", &PostParams::default(), &newer).await?;
    assert!(rv_of(&newer.metadata)? > rv_of(&first.metadata)?);
    let stale = secrets.replace("a", &PostParams::default(), &first).await;
    assert_eq!(api_error(stale)?, (409, "Conflict".into()));
    // A patch naming a resourceVersion is a precondition too.
    let stale_patch = json!({"metadata": {"resourceVersion": first.metadata.resource_version, "labels": {"v": "3"}}});
    let stale = secrets
        .patch("a", &PatchParams::default(), &Patch::Merge(&stale_patch))
        .await;
    assert_eq!(api_error(stale)?.0, 409);

    // Upstream requires a resourceVersion to PUT a custom resource (422).
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    let no_rv = widget("w", 2);
    assert_eq!(
        api_error(widgets.replace("w", &PostParams::default(), &no_rv).await)?,
        (422, "Invalid".into())
    );
    // Leases are created by PUT, as upstream allows.
    let leases: Api<Lease> = Api::default_namespaced(client);
    let mut lease = Lease::default();
    lease.metadata.name = Some("leader".to_string());
    let created = leases
        .replace("leader", &PostParams::default(), &lease)
        .await?;
    assert!(created.metadata.uid.is_some());
    Ok(())
}

#[tokio::test]
async fn merge_patch_json_patch_and_server_side_apply() -> anyhow::Result<()> {
    let (_server, client) = start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(client);
    widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;

    let merged = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "1"}}, "spec": {"size": 2}})),
        )
        .await?;
    assert_eq!(merged.spec.size, 2);
    assert_eq!(merged.labels().get("a").map(String::as_str), Some("1"));

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/size", "value": 2},
        {"op": "replace", "path": "/spec/size", "value": 3},
        {"op": "remove", "path": "/metadata/labels/a"}
    ]))?;
    let patched = widgets
        .patch("w", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await?;
    assert_eq!(patched.spec.size, 3);
    assert!(!patched.labels().contains_key("a"));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/size", "value": 99}]))?;
    let failed = widgets
        .patch("w", &PatchParams::default(), &Patch::<()>::Json(failing))
        .await;
    assert_eq!(api_error(failed)?.0, 422);

    // Server-side apply creates when absent, then merges into the live object.
    let apply = PatchParams::apply("certwright-test").force();
    let applied = json!({
        "apiVersion": "test.certwright.io/v1",
        "kind": "Widget",
        "metadata": {"name": "applied", "labels": {"by": "apply"}},
        "spec": {"size": 7}
    });
    let created = widgets
        .patch("applied", &apply, &Patch::Apply(&applied))
        .await?;
    assert_eq!(created.spec.size, 7);
    let again = json!({
        "apiVersion": "test.certwright.io/v1",
        "kind": "Widget",
        "metadata": {"name": "applied"},
        "spec": {"size": 8}
    });
    let updated = widgets
        .patch("applied", &apply, &Patch::Apply(&again))
        .await?;
    assert_eq!(updated.spec.size, 8);
    assert_eq!(
        updated.labels().get("by").map(String::as_str),
        Some("apply")
    );
    assert_eq!(updated.metadata.generation, Some(2));

    // Upstream has no strategic merge patch for custom resources: 415.
    let smp = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"size": 1}})),
        )
        .await;
    assert_eq!(api_error(smp)?, (415, "UnsupportedMediaType".into()));
    Ok(())
}

#[tokio::test]
async fn the_status_subresource_isolates_status_from_spec_both_ways() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(client);
    let created = widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    let rv0 = rv_of(&created.metadata)?;

    // A write to the main resource ignores .status.
    let main = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"ready": true}})),
        )
        .await?;
    assert_eq!(main.spec.size, 2);
    assert_eq!(main.status, None);
    let rv1 = rv_of(&main.metadata)?;
    assert!(rv1 > rv0);

    // A write to /status changes only .status.
    let status = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 99}, "status": {"ready": true}, "metadata": {"labels": {"no": "pe"}}})),
        )
        .await?;
    assert_eq!(status.spec.size, 2);
    assert_eq!(status.status, Some(WidgetStatus { ready: true }));
    assert!(status.labels().is_empty());
    let rv2 = rv_of(&status.metadata)?;
    assert!(rv2 > rv1);

    // PUT /status with the whole object: only status taken.
    let mut whole = status.clone();
    whole.spec.size = 1000;
    whole.status = Some(WidgetStatus { ready: false });
    let replaced = widgets
        .replace_status("w", &PostParams::default(), &whole)
        .await?;
    assert_eq!(replaced.spec.size, 2);
    assert_eq!(replaced.status, Some(WidgetStatus { ready: false }));

    // PUT to the main resource with a different status keeps the stored status.
    let mut main_put = replaced.clone();
    main_put.status = Some(WidgetStatus { ready: true });
    main_put.spec.size = 3;
    let main_put = widgets
        .replace("w", &PostParams::default(), &main_put)
        .await?;
    assert_eq!(main_put.status, Some(WidgetStatus { ready: false }));
    assert_eq!(main_put.spec.size, 3);

    // The store agrees.
    let stored = server
        .get_json("widgets.test.certwright.io", "default", "w")
        .context("stored")?;
    assert_eq!(stored["status"], json!({"ready": false}));
    assert_eq!(stored["spec"], json!({"size": 3}));
    Ok(())
}

#[tokio::test]
async fn generation_moves_on_spec_changes_only_and_no_op_writes_are_free() -> anyhow::Result<()> {
    let (_server, client) = start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(client);
    let w = widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    assert_eq!(w.metadata.generation, Some(1));
    let labelled = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await?;
    assert_eq!(labelled.metadata.generation, Some(1));
    let status = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await?;
    assert_eq!(status.metadata.generation, Some(1));
    let spec = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await?;
    assert_eq!(spec.metadata.generation, Some(2));

    // Upstream does not write (nor bump the resourceVersion for) an update that changes
    // nothing.
    let same = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await?;
    assert_eq!(
        same.metadata.resource_version,
        spec.metadata.resource_version
    );
    Ok(())
}

#[tokio::test]
async fn injected_faults_fail_then_let_calls_through_and_delays_slow_them() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    secrets
        .create(&PostParams::default(), &secret("a", &[]))
        .await?;

    server.faults().fail_next(Method::GET, "/secrets/a", 500, 1);
    assert_eq!(
        api_error(secrets.get("a").await)?,
        (500, "InternalError".into())
    );
    secrets.get("a").await?;

    // kube's client retries a 429 after its Retry-After (1 s here): the call succeeds,
    // and the server saw it twice.
    server
        .faults()
        .fail_next(MethodMatch::Any, "/secrets/a", 429, 1);
    server.clear_requests();
    let started = Instant::now();
    secrets.get("a").await?;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(server.count(Method::GET, "/secrets/a"), 2);

    let widgets: Api<Widget> = Api::default_namespaced(client);
    widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    server.faults().fail_next(Method::PATCH, "/status", 409, 1);
    let status_patch = Patch::Merge(json!({"status": {"ready": true}}));
    let conflict = widgets
        .patch_status("w", &PatchParams::default(), &status_patch)
        .await;
    assert_eq!(api_error(conflict)?, (409, "Conflict".into()));
    // The faulted call did not reach the store.
    assert_eq!(widgets.get("w").await?.status, None);
    widgets
        .patch_status("w", &PatchParams::default(), &status_patch)
        .await?;

    server
        .faults()
        .delay_next(Method::GET, "/secrets/a", Duration::from_secs(2), 1);
    let started = Instant::now();
    secrets.get("a").await?;
    assert!(started.elapsed() >= Duration::from_secs(2));
    // Only the next call was delayed. (A bound this loose survives a loaded machine.)
    let started = Instant::now();
    secrets.get("a").await?;
    assert!(started.elapsed() < Duration::from_secs(2));

    // A held answer holds back an injected failure too.
    server.faults().fail_next(Method::GET, "/secrets/a", 500, 1);
    server
        .faults()
        .delay_answer_next(Method::GET, "/secrets/a", Duration::from_secs(1), 1);
    let started = Instant::now();
    assert_eq!(
        api_error(secrets.get("a").await)?,
        (500, "InternalError".into())
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(server.faults().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_held_answer_comes_after_the_write_is_visible() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(client);
    widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    server
        .faults()
        .delay_answer_next(Method::PATCH, "/status", Duration::from_secs(5), 1);
    let writer = {
        let widgets = widgets.clone();
        tokio::spawn(async move {
            let patch = Patch::Merge(json!({"status": {"ready": true}}));
            widgets
                .patch_status("w", &PatchParams::default(), &patch)
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while widgets.get("w").await?.status.is_none() {
        ensure!(
            Instant::now() < deadline,
            "the held write never became visible"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        !writer.is_finished(),
        "the writer had its answer before the write was visible"
    );
    let written = writer.await??;
    ensure!(
        written.status.is_some(),
        "the held answer is the written object"
    );
    Ok(())
}

#[tokio::test]
async fn the_request_log_counts_calls() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(client);
    server.clear_requests();
    widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await?;
    widgets.get("w").await?;
    assert_eq!(server.count(Method::POST, "/widgets"), 1);
    assert_eq!(server.count(Method::PATCH, "/widgets/w/status"), 1);
    assert_eq!(server.count(Method::PUT, ""), 0);
    assert_eq!(server.count(MethodMatch::Any, "/widgets"), 3);
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        requests[1].path,
        "/apis/test.certwright.io/v1/namespaces/default/widgets/w/status"
    );
    Ok(())
}

#[tokio::test]
async fn dropped_watches_are_reopened_and_the_watcher_recovers() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let secrets: Api<Secret> = Api::default_namespaced(client);
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(secrets.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(WAIT, reader.wait_until_ready()).await??;
    eventually("a watch is open", || server.open_watches() == 1).await?;
    let watches_before = server.requests().iter().filter(|r| r.is_watch()).count();

    server.drop_watches();
    secrets
        .create(&PostParams::default(), &secret("after-drop", &[]))
        .await?;
    eventually("the reflector sees the new secret", || {
        reader.state().iter().any(|s| s.name_any() == "after-drop")
    })
    .await?;
    let watches_after = server.requests().iter().filter(|r| r.is_watch()).count();
    assert!(watches_after > watches_before, "the watcher watched again");
    task.abort();
    Ok(())
}

#[tokio::test]
async fn a_crd_created_over_http_is_served_at_once() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "scope": "Cluster",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}}
            }]
        }
    }))?;
    let created = crds.create(&PostParams::default(), &crd).await?;
    let established = created
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    assert!(established);
    assert!(
        crds.list(&ListParams::default())
            .await?
            .items
            .iter()
            .any(|c| c.name_any() == "widgets.test.certwright.io"),
        "CRDs registered from Rust are listed too"
    );

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Gadget"),
        "gadgets",
    );
    let gadgets: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut gadget = DynamicObject::new("g1", &resource);
    gadget.data = json!({"spec": {"colour": "red"}});
    gadgets.create(&PostParams::default(), &gadget).await?;
    let got = gadgets.get("g1").await?;
    assert_eq!(got.data["spec"]["colour"], "red");
    assert_eq!(got.metadata.generation, Some(1));
    assert_eq!(server.list_json("gadgets.example.com", "").len(), 1);

    // Deleting the CRD stops serving its kind.
    crds.delete("gadgets.example.com", &DeleteParams::default())
        .await?;
    assert_eq!(api_error(gadgets.get("g1").await)?.0, 404);
    Ok(())
}

#[tokio::test]
async fn metadata_only_calls_get_partial_object_metadata() -> anyhow::Result<()> {
    let (_server, client) = start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    let list = widgets.list_metadata(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("w"));
    let one = widgets.get_metadata("w").await?;
    assert_eq!(one.metadata.generation, Some(1));

    let (reader, writer) = reflector::store();
    let metadata: Api<PartialObjectMeta<Widget>> = Api::default_namespaced(client);
    let stream = reflector(writer, watcher(metadata, watcher::Config::default()))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    widgets
        .create(&PostParams::default(), &widget("v", 2))
        .await?;
    eventually("the metadata reflector holds both", || {
        reader.state().len() == 2
    })
    .await?;
    task.abort();
    Ok(())
}

#[tokio::test]
async fn the_event_recorder_publishes_events() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let w = widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "certwright-test".to_string(),
            instance: None,
        },
    );
    let reference: ObjectReference = w.object_ref(&());
    let event = RecorderEvent {
        type_: EventType::Normal,
        reason: "Issued".to_string(),
        note: Some("signed".to_string()),
        action: "Sign".to_string(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await?;
    // A repeat is a patch of the same event (its series), as kube does upstream.
    recorder.publish(&event, &reference).await?;
    let events = server.list_json("events.events.k8s.io", "default");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "Issued");
    assert_eq!(events[0]["regarding"]["name"], "w");
    Ok(())
}

#[tokio::test]
async fn finalizers_hold_a_deletion() -> anyhow::Result<()> {
    let (_server, client) = start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(client);
    let mut w = widget("w", 1);
    w.metadata.finalizers = Some(vec!["test.certwright.io/hold".to_string()]);
    widgets.create(&PostParams::default(), &w).await?;
    widgets.delete("w", &DeleteParams::default()).await?;
    let held = widgets.get("w").await?;
    assert!(held.metadata.deletion_timestamp.is_some());
    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    assert_eq!(api_error(widgets.get("w").await)?.0, 404);
    Ok(())
}

#[tokio::test]
async fn direct_store_access_notifies_watchers() -> anyhow::Result<()> {
    let (server, client) = start().await?;
    let widgets: Api<Widget> = Api::default_namespaced(client);
    let rv = server.resource_version().to_string();
    let mut events = widgets.watch(&WatchParams::default(), &rv).await?.boxed();
    let fixture = json!({
        "apiVersion": "test.certwright.io/v1",
        "kind": "Widget",
        "metadata": {"name": "seeded", "namespace": "default"},
        "spec": {"size": 1},
        "status": {"ready": true}
    });
    server.create_json("widgets.test.certwright.io", fixture.clone())?;
    let mut changed = fixture;
    changed["spec"]["size"] = json!(2);
    let put = server.put_json("widgets.test.certwright.io", changed)?;
    assert_eq!(put["metadata"]["generation"], 2);
    let got = widgets.get("seeded").await?;
    assert_eq!(
        got.status,
        Some(WidgetStatus { ready: true }),
        "direct writes keep status"
    );
    server.delete_json("widgets.test.certwright.io", "default", "seeded")?;
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match tokio::time::timeout(WAIT, events.try_next())
            .await??
            .context("open")?
        {
            WatchEvent::Added(_) => kinds.push("ADDED"),
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => bail!("{e:?}"),
        }
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    assert!(
        server
            .get_json("widgets.test.certwright.io", "default", "seeded")
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn the_binary_serves_crds_from_files_and_writes_a_kubeconfig() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let crd_file = dir.path().join("crds.yaml");
    let second = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gizmos.example.com"},
        "spec": {"group": "example.com", "names": {"plural": "gizmos", "kind": "Gizmo"},
                 "scope": "Namespaced", "versions": [{"name": "v1", "served": true, "storage": true}]}
    });
    let yaml = format!(
        "{}---\n{}",
        serde_yaml_ng::to_string(&Widget::crd())?,
        serde_yaml_ng::to_string(&second)?
    );
    std::fs::write(&crd_file, yaml)?;
    let kubeconfig_path = dir.path().join("kubeconfig");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_certwright-apiserver"))
        .arg("--port")
        .arg("0")
        .arg("--crd")
        .arg(&crd_file)
        .arg("--kubeconfig-out")
        .arg(&kubeconfig_path)
        .arg("--namespace")
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let url = tokio::time::timeout(WAIT, lines.next_line())
        .await??
        .context("a first line")?;
    ensure!(url.starts_with("http://127.0.0.1:"), "first line {url:?}");

    let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), url);
    assert_eq!(config.default_namespace, "demo");
    let client = Client::try_from(config)?;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    assert_eq!(
        widgets.get("w").await?.metadata.namespace.as_deref(),
        Some("demo")
    );
    let gizmos = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Gizmo"),
        "gizmos",
    );
    let gizmos: Api<DynamicObject> = Api::default_namespaced_with(client, &gizmos);
    assert!(gizmos.list(&ListParams::default()).await?.items.is_empty());

    // SIGTERM stops it cleanly.
    let pid = child.id().context("a pid")?;
    let term = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    if term.is_ok_and(|s| s.success()) {
        let exit = tokio::time::timeout(WAIT, child.wait()).await??;
        assert!(exit.success(), "exit status {exit:?}");
    } else {
        // No kill(1) here: at least do not leave the server behind.
        child.kill().await?;
    }
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn the_binary_stops_cleanly_on_sigterm_sent_as_soon_as_it_prints_its_url()
-> anyhow::Result<()> {
    // A caller may signal the moment it has read the URL: the handlers must already be
    // in place, or SIGTERM's default action kills the process with a signal status.
    for _ in 0..5 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_certwright-apiserver"))
            .args(["--port", "0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let url = tokio::time::timeout(WAIT, lines.next_line())
            .await??
            .context("a first line")?;
        ensure!(url.starts_with("http://127.0.0.1:"), "first line {url:?}");
        let pid = child.id().context("a pid")?;
        let term = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        ensure!(term.success(), "kill -TERM {pid}: {term}");
        let exit = tokio::time::timeout(WAIT, child.wait()).await??;
        ensure!(exit.success(), "exit status {exit:?}");
    }
    Ok(())
}

#[tokio::test]
async fn many_objects_flow_through_a_watcher() -> anyhow::Result<()> {
    // A smaller cousin of the benchmark: writes while a watcher follows, with a history
    // too short for it, must still converge.
    let (server, client) = start_with(ApiServerOptions::new().history_limit(50)).await?;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let (reader, writer) = reflector::store::<Widget>();
    let stream = reflector(writer, watcher(widgets.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    let mut creates = futures_util::stream::iter(0..300u32)
        .map(|i| {
            let widgets = widgets.clone();
            async move {
                widgets
                    .create(&PostParams::default(), &widget(&format!("w{i:03}"), i))
                    .await?;
                widgets
                    .patch_status(
                        &format!("w{i:03}"),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"ready": true}})),
                    )
                    .await
            }
        })
        .buffer_unordered(8);
    while let Some(result) = creates.next().await {
        result?;
    }
    let reader = Arc::new(reader);
    eventually("the reflector holds 300 ready widgets", || {
        let state = reader.state();
        state.len() == 300
            && state
                .iter()
                .all(|w| w.status.as_ref().is_some_and(|s| s.ready))
    })
    .await?;
    assert_eq!(
        server
            .list_json("widgets.test.certwright.io", "default")
            .len(),
        300
    );
    task.abort();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Validating admission webhooks.

/// The `AdmissionReview`s a test webhook received.
#[derive(Clone, Default)]
struct Reviews(Arc<std::sync::Mutex<Vec<serde_json::Value>>>);

impl Reviews {
    fn all(&self) -> Vec<serde_json::Value> {
        self.0.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Denies objects labelled `deny` (403, with a message), admits the others with a
/// warning naming them; `/slow` answers after 3 s.
async fn start_webhook() -> anyhow::Result<(certwright_simulators::tls::RunningServer, Reviews)> {
    use axum::extract::State;
    use axum::routing::post;
    async fn validate(
        State(reviews): State<Reviews>,
        axum::Json(review): axum::Json<serde_json::Value>,
    ) -> axum::Json<serde_json::Value> {
        if let Ok(mut seen) = reviews.0.lock() {
            seen.push(review.clone());
        }
        let request = &review["request"];
        let uid = request["uid"].clone();
        let response = if request.pointer("/object/metadata/labels/deny").is_some() {
            json!({"uid": uid, "allowed": false, "status": {
                "code": 403, "reason": "Forbidden", "message": "objects labelled deny are refused"}})
        } else {
            let name = request["name"].as_str().unwrap_or_default();
            json!({"uid": uid, "allowed": true, "warnings": [format!("reviewed \"{name}\"")]})
        };
        axum::Json(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response
        }))
    }
    async fn slow(
        axum::Json(review): axum::Json<serde_json::Value>,
    ) -> axum::Json<serde_json::Value> {
        tokio::time::sleep(Duration::from_secs(3)).await;
        axum::Json(
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": true}}),
        )
    }
    let reviews = Reviews::default();
    let router = axum::Router::new()
        .route("/validate", post(validate))
        .route("/slow", post(slow))
        .with_state(reviews.clone());
    let server = certwright_simulators::tls::TlsServer::start(
        router,
        certwright_simulators::tls::TlsOptions::new(),
    )
    .await?;
    Ok((server, reviews))
}

/// A `ValidatingWebhookConfiguration` with one webhook.
fn webhook_config(
    name: &str,
    client_config: serde_json::Value,
    rules: serde_json::Value,
    extra: serde_json::Value,
) -> anyhow::Result<ValidatingWebhookConfiguration> {
    let mut hook = json!({
        "name": format!("{name}.test.certwright.io"),
        "clientConfig": client_config,
        "rules": rules,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    });
    if let (Some(hook), Some(extra)) = (hook.as_object_mut(), extra.as_object()) {
        hook.extend(extra.clone());
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook],
    }))?)
}

async fn body_json(answer: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_slice(&answer.bytes().await?)?)
}

fn ca_bundle(pem: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// The full `Status` of a failed call.
fn api_status<T: std::fmt::Debug>(result: kube::Result<T>) -> anyhow::Result<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => Ok(*status),
        other => bail!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_validating_webhook_denies_warns_and_does_not_see_status_writes() -> anyhow::Result<()> {
    // Upstream: a matching write is POSTed as an AdmissionReview before it is stored; a
    // denial fails it with the webhook's status and `admission webhook "<name>" denied
    // the request: <message>`; warnings come back as `Warning: 299 - "<text>"`; a rule
    // naming `widgets` (not `widgets/status`) does not see status writes.
    let (server, client) = start().await?;
    let (hook_server, reviews) = start_webhook().await?;
    let rules = json!([
        {"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
         "resources": ["secrets"], "scope": "Namespaced"},
        {"operations": ["*"], "apiGroups": ["test.certwright.io"], "apiVersions": ["*"],
         "resources": ["widgets"]}
    ]);
    let client_config = json!({
        "url": format!("{}/validate", hook_server.url()),
        "caBundle": ca_bundle(hook_server.ca_pem()),
    });
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let stored = configs
        .create(
            &PostParams::default(),
            &webhook_config("deny", client_config, rules, json!({}))?,
        )
        .await?;
    // Upstream's defaults.
    let hook = &stored.webhooks.as_ref().context("webhooks")?[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hook.timeout_seconds, Some(10));
    assert_eq!(stored.metadata.generation, Some(1));

    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let denied = api_status(
        secrets
            .create(&PostParams::default(), &secret("bad", &[("deny", "yes")]))
            .await,
    )?;
    assert_eq!((denied.code, denied.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        denied.message,
        "admission webhook \"deny.test.certwright.io\" denied the request: objects labelled deny are refused"
    );
    assert!(server.get_json("secrets", "default", "bad").is_none());

    // An admitted create, over raw HTTP to read the warning header.
    let http = reqwest::Client::new();
    let answer = http
        .post(format!(
            "{}/api/v1/namespaces/default/secrets",
            server.url()
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&secret("good", &[]))?)
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 201);
    let warnings: Vec<&str> = answer
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(warnings, ["299 - \"reviewed \\\"good\\\"\""]);

    let seen = reviews.all();
    let request = &seen.last().context("a review")?["request"];
    assert_eq!(request["operation"], "CREATE");
    assert_eq!(request["name"], "good");
    assert_eq!(request["namespace"], "default");
    assert_eq!(request["userInfo"]["username"], "system:admin");
    assert_eq!(
        request["kind"],
        json!({"group": "", "version": "v1", "kind": "Secret"})
    );
    assert_eq!(request["resource"]["resource"], "secrets");
    assert_eq!(request["object"]["data"]["k"], "dg==");
    assert!(request["oldObject"].is_null());
    assert_eq!(request["dryRun"], false);

    // An update that adds the label: UPDATE, with the old object, denied.
    let patch = Patch::Merge(json!({"metadata": {"labels": {"deny": "now"}}}));
    let denied = api_status(secrets.patch("good", &PatchParams::default(), &patch).await)?;
    assert_eq!(denied.code, 403);
    let seen = reviews.all();
    let request = &seen.last().context("a review")?["request"];
    assert_eq!(request["operation"], "UPDATE");
    assert_eq!(request["oldObject"]["metadata"]["name"], "good");
    // DELETE is not in the secrets rule.
    let before = reviews.all().len();
    secrets.delete("good", &DeleteParams::default()).await?;
    assert_eq!(reviews.all().len(), before);

    // Widgets: the main resource goes to the webhook, the status subresource does not.
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await?;
    let before = reviews.all().len();
    let status =
        Patch::Merge(json!({"metadata": {"labels": {"deny": "x"}}, "status": {"ready": false}}));
    let patched = widgets
        .patch_status("w", &PatchParams::default(), &status)
        .await?;
    assert_eq!(patched.status, Some(WidgetStatus { ready: false }));
    assert_eq!(
        reviews.all().len(),
        before,
        "a status write reached the webhook"
    );

    // Webhook configurations themselves never go to webhooks: deleting ours works and
    // the next denied create goes through.
    configs.delete("deny", &DeleteParams::default()).await?;
    secrets
        .create(&PostParams::default(), &secret("bad", &[("deny", "yes")]))
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_webhook_fails_closed_or_open_by_its_failure_policy() -> anyhow::Result<()> {
    // Upstream: a webhook that cannot be called fails the write with 500 InternalError
    // `failed calling webhook "<name>": ...` under failurePolicy Fail (the default), and
    // is skipped under Ignore; the same for a timeout.
    let (_server, client) = start().await?;
    let (hook_server, _reviews) = start_webhook().await?;
    let rules = json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                        "resources": ["configmaps"]}]);
    let refused = json!({
        "url": certwright_simulators::tls::refused_url(),
        "caBundle": ca_bundle(hook_server.ca_pem()),
    });
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(client.clone());
    let map = |name: &str| -> anyhow::Result<k8s_openapi::api::core::v1::ConfigMap> {
        Ok(serde_json::from_value(json!({"metadata": {"name": name}}))?)
    };

    configs
        .create(
            &PostParams::default(),
            &webhook_config("gone", refused.clone(), rules.clone(), json!({}))?,
        )
        .await?;
    let failed = api_status(maps.create(&PostParams::default(), &map("a")?).await)?;
    assert_eq!(
        (failed.code, failed.reason.as_str()),
        (500, "InternalError")
    );
    assert!(
        failed
            .message
            .contains("failed calling webhook \"gone.test.certwright.io\": failed to call webhook: Post \"https://127.0.0.1:"),
        "{}",
        failed.message
    );

    let ignore = webhook_config(
        "gone",
        refused,
        rules.clone(),
        json!({"failurePolicy": "Ignore"}),
    )?;
    let mut live = configs.get("gone").await?;
    live.webhooks = ignore.webhooks;
    configs
        .replace("gone", &PostParams::default(), &live)
        .await?;
    maps.create(&PostParams::default(), &map("a")?).await?;

    // A Service cannot be reached from here; a slow webhook times out.
    configs.delete("gone", &DeleteParams::default()).await?;
    let service = json!({"service": {"namespace": "webhooks", "name": "validator"}});
    configs
        .create(
            &PostParams::default(),
            &webhook_config("svc", service, rules.clone(), json!({}))?,
        )
        .await?;
    let failed = api_status(maps.create(&PostParams::default(), &map("b")?).await)?;
    assert_eq!(failed.code, 500);
    assert!(
        failed
            .message
            .contains("failed calling webhook \"svc.test.certwright.io\"")
    );
    configs.delete("svc", &DeleteParams::default()).await?;

    let slow = json!({
        "url": format!("{}/slow", hook_server.url()),
        "caBundle": ca_bundle(hook_server.ca_pem()),
    });
    configs
        .create(
            &PostParams::default(),
            &webhook_config("slow", slow, rules, json!({"timeoutSeconds": 1}))?,
        )
        .await?;
    let started = Instant::now();
    let failed = api_status(maps.create(&PostParams::default(), &map("c")?).await)?;
    assert_eq!(failed.code, 500);
    assert!(
        failed.message.contains("context deadline exceeded"),
        "{}",
        failed.message
    );
    assert!(started.elapsed() < Duration::from_millis(2900));
    Ok(())
}

#[tokio::test]
async fn an_invalid_webhook_configuration_is_422() -> anyhow::Result<()> {
    // Upstream validates configurations: here, a URL that is not https.
    let (_server, client) = start().await?;
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let bad = webhook_config(
        "plain",
        json!({"url": "http://127.0.0.1:1/validate"}),
        json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["secrets"]}]),
        json!({}),
    )?;
    let status = api_status(configs.create(&PostParams::default(), &bad).await)?;
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.contains("webhooks[0].clientConfig.url: Invalid value: \"http://127.0.0.1:1/validate\": 'https' is the only allowed URL scheme"),
        "{}",
        status.message
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// CEL validation of custom resources.

#[tokio::test]
async fn the_cel_rule_of_the_issuer_crds_rejects_two_backend_blocks() -> anyhow::Result<()> {
    // Upstream evaluates a CRD's x-kubernetes-validations on create and update and
    // answers 422 Invalid, `<Kind>.<group> "<name>" is invalid: <field>: Invalid value:
    // "<type>": <message>`, each failure a FieldValueInvalid cause.
    let (server, client) = start().await?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    let mut registered = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            registered += server.register_crds_yaml(&std::fs::read_to_string(&path)?)?;
        }
    }
    ensure!(
        registered >= 2,
        "only {registered} CRDs in {}",
        dir.display()
    );
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("pki.certwright.io", "v1alpha1", "InternalClusterIssuer"),
        "internalclusterissuers",
    );
    let issuers: Api<DynamicObject> = Api::all_with(client, &resource);
    let issuer = |name: &str, spec: serde_json::Value| -> anyhow::Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "pki.certwright.io/v1alpha1",
            "kind": "InternalClusterIssuer",
            "metadata": {"name": name},
            "spec": spec,
        }))?)
    };
    let ca = json!({"secretName": "dev-ca"});
    let rest = json!({"url": "https://pki.corp.example/api/v1"});

    let status = api_status(
        issuers
            .create(
                &PostParams::default(),
                &issuer("two", json!({"ca": ca, "rest": rest}))?,
            )
            .await,
    )?;
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "InternalClusterIssuer.pki.certwright.io \"two\" is invalid: spec: Invalid value: \"object\": exactly one backend block (ca, rest, adcs or ejbca) must be set"
    );
    let details = status.details.context("details")?;
    assert_eq!(details.kind, "InternalClusterIssuer");
    assert_eq!(details.causes.len(), 1);
    assert_eq!(details.causes[0].reason, "FieldValueInvalid");
    assert_eq!(details.causes[0].field, "spec");
    assert!(
        server
            .get_json("internalclusterissuers.pki.certwright.io", "", "two")
            .is_none()
    );

    issuers
        .create(&PostParams::default(), &issuer("one", json!({"ca": ca}))?)
        .await?;
    // An update is checked too, against the old object.
    let patch = Patch::Merge(json!({"spec": {"rest": rest}}));
    let status = api_status(issuers.patch("one", &PatchParams::default(), &patch).await)?;
    assert_eq!(status.code, 422);
    let patch = Patch::Merge(json!({"spec": {"ca": null, "rest": rest}}));
    issuers
        .patch("one", &PatchParams::default(), &patch)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The fault endpoint.

#[tokio::test]
async fn the_fault_endpoint_injects_faults_and_counts_calls_over_http() -> anyhow::Result<()> {
    // No upstream counterpart: the admin endpoint a benchmark drives from another process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::start_with(ApiServerOptions::new().fault_endpoint(true)).await?;
    let http = reqwest::Client::new();
    let base = server.url();
    let add = |rule: serde_json::Value| {
        http.post(format!("{base}/testkit/faults"))
            .header("content-type", "application/json")
            .body(rule.to_string())
            .send()
    };
    let secrets = format!("{base}/api/v1/namespaces/default/secrets");

    let answer =
        add(json!({"method": "GET", "pattern": "/secrets", "code": 503, "ratio": 0.5})).await?;
    assert_eq!(answer.status().as_u16(), 201);
    let mut failed = 0;
    for _ in 0..200 {
        let status = http.get(&secrets).send().await?.status().as_u16();
        match status {
            200 => {}
            503 => failed += 1,
            other => bail!("unexpected status {other}"),
        }
    }
    ensure!((60..=140).contains(&failed), "{failed} of 200 failed");
    let stats = server.stats();
    assert_eq!(stats.by_method.get("GET"), Some(&200));
    assert_eq!(stats.injected_faults, failed);
    assert_eq!(stats.by_class.get("5xx"), Some(&failed));

    // DELETE clears every rule.
    let cleared = body_json(http.delete(format!("{base}/testkit/faults")).send().await?).await?;
    assert_eq!(cleared["cleared"], 1);
    for _ in 0..20 {
        assert_eq!(http.get(&secrets).send().await?.status().as_u16(), 200);
    }

    // `times`: the next two matching calls fail, then they pass.
    add(json!({"method": "*", "pattern": "/configmaps", "code": 409, "times": 2})).await?;
    let maps = format!("{base}/api/v1/namespaces/default/configmaps");
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(http.get(&maps).send().await?.status().as_u16());
    }
    assert_eq!(codes, [409, 409, 200]);
    let rules = body_json(http.get(format!("{base}/testkit/faults")).send().await?).await?;
    assert_eq!(rules["rules"], json!([]));

    // A rule that makes no sense is 400.
    let bad = add(json!({"method": "GET", "code": 409, "times": 1, "ratio": 0.5})).await?;
    assert_eq!(bad.status().as_u16(), 400);

    // Stats over HTTP, and their reset; calls to the endpoint are not counted.
    let stats = body_json(http.get(format!("{base}/testkit/stats")).send().await?).await?;
    assert_eq!(stats["byMethod"]["GET"], 223);
    assert_eq!(stats["byClass"]["4xx"], 2);
    assert_eq!(stats["injectedFaults"], failed + 2);
    http.delete(format!("{base}/testkit/stats")).send().await?;
    let stats = body_json(http.get(format!("{base}/testkit/stats")).send().await?).await?;
    assert_eq!(stats["total"], 0);

    // A server without the option serves nothing there, as upstream.
    let plain = ApiServer::start().await?;
    let answer = http
        .post(format!("{}/testkit/faults", plain.url()))
        .body(json!({"method": "*", "code": 500}).to_string())
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 404);
    assert!(plain.faults().is_empty());
    Ok(())
}

#[tokio::test]
async fn the_binary_serves_the_fault_endpoint_only_when_asked() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let help = tokio::process::Command::new(env!("CARGO_BIN_EXE_certwright-apiserver"))
        .arg("--help")
        .output()
        .await?;
    let help = String::from_utf8(help.stdout)?;
    assert!(help.contains("--enable-fault-endpoint"), "{help}");
    assert!(help.contains("POST   /testkit/faults"), "{help}");

    let http = reqwest::Client::new();
    for enabled in [false, true] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_certwright-apiserver"));
        command.arg("--port").arg("0");
        if enabled {
            command.arg("--enable-fault-endpoint");
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let url = tokio::time::timeout(WAIT, lines.next_line())
            .await??
            .context("a first line")?;
        let add = http
            .post(format!("{url}/testkit/faults"))
            .body(
                json!({"method": "GET", "pattern": "/version", "code": 500, "times": 1})
                    .to_string(),
            )
            .send()
            .await?;
        let version = http
            .get(format!("{url}/version"))
            .send()
            .await?
            .status()
            .as_u16();
        if enabled {
            assert_eq!(add.status().as_u16(), 201);
            assert_eq!(version, 500);
            let stats = body_json(http.get(format!("{url}/testkit/stats")).send().await?).await?;
            assert_eq!(stats["injectedFaults"], 1);
        } else {
            assert_eq!(add.status().as_u16(), 404);
            assert_eq!(version, 200);
        }
        child.kill().await?;
    }
    Ok(())
}
