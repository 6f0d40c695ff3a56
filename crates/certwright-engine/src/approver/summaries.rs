//! With `--publish-policy-summaries`: a ConfigMap in each namespace that some policy
//! selects, summarising those policies, kept up to date as policies and namespaces
//! change, and removed when none selects the namespace any more. A ConfigMap of the same
//! name that certwright did not make is left alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use certwright_policy::summary::namespace_summary;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::{Api, ResourceExt as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Ctx;
use crate::error::api_code;

/// The ConfigMap's name.
pub(crate) const SUMMARY_CONFIG_MAP: &str = "certwright-issuance-policies";
/// Its key.
pub(crate) const SUMMARY_KEY: &str = "policies.txt";
/// The label that marks a summary certwright keeps.
const SUMMARY_LABEL: &str = "pki.certwright.io/policy-summary";
/// Changes are gathered this long before summaries are written.
const SETTLE: Duration = Duration::from_millis(500);

/// Keeps the summaries until `stop` is cancelled.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    wake: Arc<Notify>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    // What is in each namespace's summary now (None: ours, content unknown). The first
    // pass looks in every namespace for a summary an earlier run left (by name: the
    // controller may read no other ConfigMap).
    let mut written: HashMap<String, Option<String>> = HashMap::new();
    let mut first = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
        }
        tokio::time::sleep(SETTLE).await;
        // Nothing is written before every policy and namespace is known: a partial
        // view would remove summaries that still apply.
        if !ready.load(std::sync::atomic::Ordering::SeqCst) {
            wake.notify_one();
            continue;
        }
        let set = ctx.policies();
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for ns in ctx.namespaces.state() {
            let name = ns.name_any();
            if let Some(text) =
                namespace_summary(&set, &name, Some(ns.labels()), ctx.config.evaluation)
            {
                wanted.insert(name, text);
            }
        }
        if std::mem::take(&mut first) {
            for ns in ctx.namespaces.state() {
                let name = ns.name_any();
                if wanted.contains_key(&name) {
                    continue;
                }
                let api: Api<ConfigMap> = Api::namespaced(ctx.s.client.clone(), &name);
                match api.get_opt(SUMMARY_CONFIG_MAP).await {
                    Ok(Some(cm)) if ours(&cm) => {
                        written.insert(name, None);
                    }
                    Ok(_) => {}
                    // Not known: looked at again on the next pass.
                    Err(e) => {
                        warn!(namespace = %name, error = %e, "cannot read the policy summary");
                        first = true;
                    }
                }
            }
        }
        for (ns, text) in &wanted {
            if written.get(ns).and_then(Option::as_ref) == Some(text) {
                continue;
            }
            match write(&ctx, ns, text).await {
                Ok(true) => {
                    written.insert(ns.clone(), Some(text.clone()));
                }
                Ok(false) => {}
                Err(e) => warn!(namespace = %ns, error = %e, "cannot write the policy summary"),
            }
        }
        let stale: Vec<String> = written
            .keys()
            .filter(|ns| !wanted.contains_key(*ns))
            .cloned()
            .collect();
        for ns in stale {
            let api: Api<ConfigMap> = Api::namespaced(ctx.s.client.clone(), &ns);
            // Only ours, and only the one looked at (a uid precondition).
            let uid = match api.get_opt(SUMMARY_CONFIG_MAP).await {
                Ok(Some(cm)) if ours(&cm) => cm.metadata.uid.clone(),
                Ok(_) => {
                    written.remove(&ns);
                    continue;
                }
                Err(e) => {
                    warn!(namespace = %ns, error = %e, "cannot read the policy summary");
                    continue;
                }
            };
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(SUMMARY_CONFIG_MAP, &params).await {
                Ok(_) => {
                    info!(namespace = %ns, "no IssuancePolicy selects the namespace any more; its summary is removed");
                    written.remove(&ns);
                }
                Err(e) if api_code(&e) == Some(404) => {
                    written.remove(&ns);
                }
                Err(e) => warn!(namespace = %ns, error = %e, "cannot remove the policy summary"),
            }
        }
    }
}

/// Whether a ConfigMap is a summary certwright keeps.
fn ours(cm: &ConfigMap) -> bool {
    cm.labels().get(SUMMARY_LABEL).map(String::as_str) == Some("true")
}

/// Creates or updates the summary; false when a ConfigMap of that name is not ours.
async fn write(ctx: &Ctx, namespace: &str, text: &str) -> Result<bool, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.s.client.clone(), namespace);
    let config_map = |resource_version: Option<String>| ConfigMap {
        metadata: ObjectMeta {
            name: Some(SUMMARY_CONFIG_MAP.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (SUMMARY_LABEL.to_string(), "true".to_string()),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "certwright".to_string(),
                ),
            ])),
            resource_version,
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            SUMMARY_KEY.to_string(),
            text.to_string(),
        )])),
        ..Default::default()
    };
    match api.get_opt(SUMMARY_CONFIG_MAP).await? {
        None => {
            api.create(&PostParams::default(), &config_map(None))
                .await?;
        }
        Some(existing) if !ours(&existing) => {
            warn!(%namespace, "ConfigMap {SUMMARY_CONFIG_MAP} exists and is not certwright's; the policy summary is not written");
            return Ok(false);
        }
        Some(existing) => {
            api.replace(
                SUMMARY_CONFIG_MAP,
                &PostParams::default(),
                &config_map(existing.metadata.resource_version),
            )
            .await?;
        }
    }
    Ok(true)
}
