//! The issuer loop, one kube-runtime `Controller` per issuer kind ([`run`]) over the
//! kind's watch ([`crate::watches::issuer_stream`]) and reflector store ([`stores`]).
//! [`Shared::reconcile_issuer`] builds each issuer's backend from its spec and Secrets,
//! checks its health off the loop ([`checks`]), publishes a local CA's trust bundle and
//! writes the issuer's status; [`Shared::forget_issuer`] drops what was kept of an
//! issuer once it is deleted. The state it keeps and the pure decisions about it are in
//! [`state`], re-exported here.

mod bundle;
mod calls;
pub(crate) mod checks;
#[cfg(test)]
mod deletion_tests;
mod state;
pub(crate) mod stores;

pub(crate) use state::*;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certwright_api::{Condition, ConditionStatus};
use certwright_backend_ca::CaFault;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, store::Writer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::engine::{Shared, lock};
use crate::error::{Error, api_code};
use crate::events::Transition;
use crate::issuers::checks::CHECK_TIMEOUT;
use crate::kinds::{IssuerObject, IssuerResource};
use crate::protection::{BreakerState, Protection};

/// Issuers looked at once per kind (health checks run off the loop, see `checks`).
const ISSUERS_AT_ONCE: u16 = 4;
/// When a Secret or ConfigMap could not be read or written, the next look.
const RETRY_IO: Duration = Duration::from_secs(5);
/// After a look that panicked, the next one.
const AFTER_PANIC: Duration = Duration::from_secs(30);

/// The issuer status the engine last wrote, standing in for the watch event still on
/// its way.
pub(crate) struct WrittenStatus {
    /// The resourceVersion the store held when it was written: once the store holds
    /// another, the watch is the fresher account.
    pub(crate) over: Option<String>,
    pub(crate) conditions: Vec<Condition>,
    pub(crate) ca: SeenCaStatus,
}

/// What one issuer kind's loop shares between looks.
struct Ctx<R> {
    s: Arc<Shared>,
    cluster: bool,
    /// Tombstones whose last look is done, back into the store's stream.
    purge: UnboundedSender<R>,
}

/// Runs the loop of one issuer kind (`cluster`-scoped or not) until `stop` is
/// cancelled, then lets the looks under way finish. `woken` carries issuers to look at
/// now (a Secret they read changed, a health check ended).
pub(crate) async fn run<R: IssuerResource>(
    s: Arc<Shared>,
    api: Api<R>,
    cluster: bool,
    writer: Writer<R>,
    woken: UnboundedReceiver<IssuerKey>,
    stop: CancellationToken,
) {
    let store = writer.as_reader();
    let (purge, purged) = futures::channel::mpsc::unbounded();
    let (relisted, relists) = futures::channel::mpsc::channel(1);
    let stream = crate::watches::issuer_stream(s.clone(), api, writer, purged, relisted);
    let woken = woken.map(move |key: IssuerKey| {
        let reference = ObjectRef::<R>::new(&key.name);
        if cluster {
            reference
        } else {
            reference.within(&key.namespace)
        }
    });
    let stopped = stop.clone();
    let looks = Controller::for_stream(stream, store.clone())
        .with_config(Config::default().concurrency(ISSUERS_AT_ONCE))
        .reconcile_on(woken)
        .reconcile_all_on(relists)
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, Arc::new(Ctx { s, cluster, purge }));
    crate::watches::until_stopped("issuer loop", looks, &store, &stopped).await;
}

/// One look at an issuer, or at its tombstone; a panic in it (a backend's) fails this
/// look only.
async fn reconcile<R: IssuerResource>(obj: Arc<R>, ctx: Arc<Ctx<R>>) -> Result<Action, Error> {
    let s = &ctx.s;
    let key = stores::key_of(&*obj, ctx.cluster);
    let look = async {
        if stores::is_tombstone(&*obj) {
            s.forget_issuer(&key);
            // Out of the store now, unless a namesake took its place meanwhile.
            let _ = ctx.purge.unbounded_send((*obj).clone());
            return Ok(Action::await_change());
        }
        Ok(s.reconcile_issuer(&key, obj.clone()).await)
    };
    crate::engine::measured_look(&s.issuer_loop, || s.issuer_label(&key), look).await
}

fn error_policy<R: IssuerResource>(_obj: Arc<R>, _error: &Error, _ctx: Arc<Ctx<R>>) -> Action {
    Action::requeue(AFTER_PANIC)
}

fn circuit_open() -> Health {
    Health {
        reason: IssuerReason::CircuitOpen,
        message: "The PKI failed repeatedly; calls are paused and probed periodically (circuit breaker open)".to_string(),
    }
}

impl Shared {
    /// Drops what was kept of a deleted issuer (its built backend, checks, records,
    /// bundle, Secret index, written status and metric series) and wakes the requests
    /// that name it.
    pub(crate) fn forget_issuer(&self, key: &IssuerKey) {
        if lock(&self.issuers).remove(key).is_some() {
            info!(issuer = %self.issuer_label(key), "issuer deleted");
            self.metrics.forget_issuer(&self.issuer_metric(key));
        }
        lock(&self.last_checked).remove(key);
        self.checks.forget(key);
        self.ledger.forget(key);
        lock(&self.bundles).remove(key);
        lock(&self.written_status).remove(key);
        self.index_secrets(key, None);
        self.requeue_requests_for(key, true);
    }

    /// The issuer's current build, while the issuer exists: a deleted issuer's build,
    /// kept until its last look drops it, signs nothing more.
    pub(crate) fn live_entry(&self, key: &IssuerKey) -> Option<Arc<IssuerEntry>> {
        self.issuer_objects.get(key)?;
        lock(&self.issuers).get(key).cloned()
    }

    /// Looks at an issuer now, through its kind's loop.
    pub(crate) fn wake_issuer(&self, key: &IssuerKey) {
        let wake = if key.cluster {
            &self.wake_cluster_issuers
        } else {
            &self.wake_namespaced_issuers
        };
        let _ = wake.unbounded_send(key.clone());
    }

    /// One look at an issuer: (re)build its backend when its spec or Secrets changed;
    /// start a health check when one is due; publish a local CA's bundle; write the
    /// status; wake the requests waiting for it. Returns when to look again.
    pub(crate) async fn reconcile_issuer(
        self: &Arc<Self>,
        key: &IssuerKey,
        issuer: Arc<dyn IssuerObject>,
    ) -> Action {
        let label = self.issuer_label(key);
        let spec = issuer.spec();
        let secret_names = issuer.secrets();
        let namespace = if key.cluster {
            self.config.cluster_resource_namespace.clone()
        } else {
            key.namespace.clone()
        };
        // Validate before reading: no Secret is read for a spec that is invalid, so a
        // name that is not a DNS-1123 name never reaches a request path.
        let invalid = certwright_api::validate_issuer_spec(spec).err();
        // Secrets outside the namespaces the controller may read are not asked for: the
        // answer would be Forbidden, and the issuer says why it cannot work instead.
        let out_of_scope = (invalid.is_none() && !secret_names.is_empty())
            .then(|| self.config.secret_access.refusal(&namespace))
            .flatten();
        let secret_names: &[String] = match (&invalid, &out_of_scope) {
            (None, None) => &secret_names,
            _ => &[],
        };
        self.index_secrets(key, Some((&namespace, secret_names)));
        let secrets_api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let mut data = BTreeMap::new();
        let mut versions = Vec::new();
        for name in secret_names {
            match secrets_api.get_opt(name).await {
                Ok(Some(secret)) => {
                    versions.push((name.clone(), secret.metadata.resource_version.clone()));
                    let mut map: BTreeMap<String, Vec<u8>> = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    for (k, v) in secret.string_data.unwrap_or_default() {
                        map.insert(k, v.into_bytes());
                    }
                    data.insert(name.clone(), map);
                }
                Ok(None) => versions.push((name.clone(), None)),
                Err(e) => {
                    warn!(issuer = %label, secret = %name, error = %e, "could not read a Secret; retrying");
                    return Action::requeue(RETRY_IO);
                }
            }
        }
        let fingerprint = Fingerprint {
            uid: issuer.metadata().uid.clone(),
            generation: issuer.metadata().generation,
            secrets: versions,
        };
        let existing = lock(&self.issuers).get(key).cloned();
        // A recreated issuer (another uid) starts a new record.
        if existing
            .as_ref()
            .is_some_and(|e| e.fingerprint.uid != fingerprint.uid)
        {
            self.ledger.forget(key);
        }
        self.ledger.seed(
            key,
            issuer.status().map_or(&[][..], |s| s.issued.as_slice()),
        );
        let (entry, rebuilt) = match existing {
            Some(entry) if entry.fingerprint == fingerprint => (entry, false),
            previous => {
                let protection_cfg = protection_config(spec, &self.config);
                // Cluster issuers may be exempted from what binds tenants' issuers.
                let exempt = key.cluster && self.config.egress_exempt_cluster_issuers;
                let egress = if exempt {
                    None
                } else {
                    self.config.egress.clone()
                };
                let redact = self.config.redact_tenant_errors && !exempt;
                let built = match (invalid, out_of_scope) {
                    (Some(errors), _) => Err(build_health(
                        &certwright_backends::BuildError::InvalidSpec(errors),
                    )),
                    (None, Some(message)) => Err(Health {
                        reason: IssuerReason::SecretOutOfScope,
                        message,
                    }),
                    (None, None) => issuer
                        .build(&NamespacedSecrets {
                            namespace: namespace.clone(),
                            data,
                            egress,
                            pkcs11_modules: if key.cluster || self.config.pkcs11_namespaced_issuers
                            {
                                self.config.pkcs11_modules.clone()
                            } else {
                                Vec::new()
                            },
                            records: self.ledger.view(key),
                        })
                        .map(|backend| self.recorded(key, spec, backend))
                        .map_err(|e| build_health(&e)),
                };
                let (backend, health) = match built {
                    Ok(backend) => (
                        Some(backend),
                        Health {
                            reason: IssuerReason::Verified,
                            message: String::new(),
                        },
                    ),
                    Err(health) => (None, health),
                };
                // A rebuild for a rotated Secret keeps the breaker's memory of the PKI.
                let protection = match previous {
                    Some(prev)
                        if prev.spec.max_concurrent_requests == spec.max_concurrent_requests
                            && prev.spec.requests_per_second == spec.requests_per_second =>
                    {
                        prev.protection.clone()
                    }
                    _ => Arc::new(Protection::new(protection_cfg)),
                };
                info!(issuer = %label, backend = backend.as_ref().map(|b| b.kind()).unwrap_or("none"), "issuer backend built");
                let entry = Arc::new(IssuerEntry {
                    fingerprint,
                    spec: spec.clone(),
                    backend,
                    protection,
                    health: Mutex::new(health),
                    checked: Default::default(),
                    redact,
                });
                lock(&self.issuers).insert(key.clone(), entry.clone());
                (entry, true)
            }
        };
        // A build has had its verdict before this look unless it is new.
        let had_verdict = !rebuilt && entry.checked();
        // Health: a finished check of this build is taken in; a new check starts when the
        // build is new or a check is due, never while the breaker holds calls. Checks run
        // off this look (see `checks`): their end wakes the issuer again.
        let interval = self.config.issuer_health_check_interval;
        let was_usable = entry.health().usable();
        let mut overruled = false;
        if let Some((health, at)) = self.checks.take(key, &entry) {
            lock(&self.last_checked).insert(key.clone(), at);
            // A request may have marked the issuer (a refusal of its credentials) while
            // the check ran; if the check undoes that, the request must hear of it.
            let before = entry.health().usable();
            entry.set_health(health);
            entry.mark_checked();
            overruled = before != entry.health().usable();
        } else if let Some(backend) = entry.backend.clone() {
            // Sooner than the interval after a first check that timed out.
            let every = self.checks.next_check(key, interval);
            let due = lock(&self.last_checked)
                .get(key)
                .is_none_or(|at| at.elapsed() >= every);
            if rebuilt || due || !entry.checked() {
                match entry.protection.breaker() {
                    BreakerState::Open { .. } | BreakerState::HalfOpen => {
                        lock(&self.last_checked).insert(key.clone(), Instant::now());
                        entry.set_health(circuit_open());
                        entry.mark_checked();
                    }
                    BreakerState::Closed => self.start_check(key, &entry, backend),
                }
            }
        } else {
            // A failed build has its verdict: what the build said.
            entry.mark_checked();
        }
        if !entry.checked() {
            // The status and the requests wait for this build's first verdict; the
            // check's end wakes the issuer, and this look comes back regardless.
            return Action::requeue(CHECK_TIMEOUT + Duration::from_secs(5));
        }
        let fresh = !had_verdict;
        let health = entry.health();
        if health.reason != IssuerReason::Verified || fresh {
            info!(issuer = %label, reason = health.reason.as_str(), message = %health.message, "issuer checked");
        }
        let metric = self.issuer_metric(key);
        self.metrics.set_issuer_ready(
            &metric,
            health.ready() == ConditionStatus::True,
            health.reason.as_str(),
        );
        self.metrics
            .set_breaker_state(&metric, entry.protection.breaker().metric_value());
        self.metrics.set_ca_expiry(
            &metric,
            entry
                .backend
                .as_ref()
                .and_then(|b| b.ca_expiry())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok()),
        );
        // The next look: the next health check, sooner to retry a failed write or to
        // let a Retire held back take effect.
        let mut next = self.checks.next_check(key, interval);
        if !self.write_issuer_status(key, &entry).await {
            next = next.min(RETRY_IO);
        }
        self.metrics.set_rotation_phase(
            &metric,
            entry
                .backend
                .as_ref()
                .and_then(|b| b.ca_certificates())
                .and_then(|c| c.rotation)
                .map(|r| r.phase.as_str()),
        );
        if !self.publish_bundle(key, &entry, &namespace).await {
            next = next.min(RETRY_IO);
        }
        // A Retire held back takes effect when the old anchor's record passes: look then.
        if let Some(until) = entry
            .backend
            .as_ref()
            .and_then(|b| b.ca_certificates())
            .and_then(|c| c.rotation)
            .filter(|r| r.requested != r.phase)
            .and_then(|r| r.current_issued_until)
            .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
        {
            next = next.min(until + Duration::from_millis(100));
        }
        // Requests for this issuer go at once when its build has its first verdict, which
        // includes its first check after it appeared (requests that saw it missing, or
        // that arrived before this check, wait for this), and when it becomes usable,
        // also when the check overrules a request that marked it unusable while the check
        // ran. When it stops being usable, they are looked at again but keep their own
        // backoff.
        let usable = health.usable();
        if fresh || usable != was_usable || overruled {
            self.requeue_requests_for(key, fresh || usable);
        }
        Action::requeue(next)
    }

    /// Starts a health check of this build of the issuer as a task of its own, unless
    /// one is under way.
    pub(crate) fn start_check(
        self: &Arc<Self>,
        key: &IssuerKey,
        entry: &Arc<IssuerEntry>,
        backend: Arc<dyn certwright_pki::Backend>,
    ) {
        if !self.checks.begin(key, entry) {
            return;
        }
        let (s, key, entry) = (self.clone(), key.clone(), entry.clone());
        let timeout = self.checks.timeout(&key);
        tokio::spawn(async move {
            let check = async {
                let _permits = s.checks.permits(&key).await;
                s.health_check(&key, &backend, timeout).await
            };
            // A backend that panics must not leave the issuer without a verdict.
            let check = AssertUnwindSafe(check).catch_unwind();
            let result = tokio::select! {
                result = check => result,
                _ = s.stopping.cancelled() => {
                    s.checks.abandon(&key, &entry);
                    return;
                }
            };
            let (health, timed_out) = match result {
                Err(_) => (
                    Health {
                        reason: IssuerReason::Unreachable,
                        message: "the health check failed unexpectedly (the backend panicked)"
                            .to_string(),
                    },
                    false,
                ),
                Ok(Ok(Ok(h))) => {
                    let expiring = expiring_soon(
                        backend.ca_expiry(),
                        std::time::SystemTime::now(),
                        s.config.ca_expiry_warning,
                    );
                    let health = match expiring {
                        Some(message) => Health {
                            reason: IssuerReason::CaExpiringSoon,
                            message,
                        },
                        None => Health {
                            reason: IssuerReason::Verified,
                            // What a tenant's PKI says of itself is its own words.
                            message: if entry.redact {
                                "the PKI answered the health check".to_string()
                            } else {
                                h.message
                            },
                        },
                    };
                    (health, false)
                }
                Ok(Ok(Err(e))) => {
                    let fault = CaFault::of(&e);
                    (
                        check_health(&tell_unless_own(&entry, e, fault), fault),
                        false,
                    )
                }
                Ok(Err(_)) => (
                    Health {
                        reason: IssuerReason::Unreachable,
                        message: format!(
                            "the health check did not finish within {}",
                            certwright_api::format_duration(timeout)
                        ),
                    },
                    true,
                ),
            };
            s.checks.finish(&key, &entry, health, timed_out);
            s.wake_issuer(&key);
        });
    }

    /// Remembers which issuers use which Secrets, so that a Secret change rebuilds them.
    pub(crate) fn index_secrets(&self, issuer: &IssuerKey, uses: Option<(&str, &[String])>) {
        let mut index = lock(&self.secret_index);
        index.retain(|_, set| {
            set.remove(issuer);
            !set.is_empty()
        });
        if let Some((namespace, names)) = uses {
            for name in names {
                index
                    .entry((namespace.to_string(), name.clone()))
                    .or_default()
                    .insert(issuer.clone());
            }
        }
    }

    /// A backend that holds its CA, wrapped so that its signatures are recorded first
    /// (see [`crate::ca_lifecycle`]); another, as it is.
    pub(crate) fn recorded(
        &self,
        key: &IssuerKey,
        spec: &certwright_api::IssuerSpec,
        backend: Arc<dyn certwright_pki::Backend>,
    ) -> Arc<dyn certwright_pki::Backend> {
        if backend.ca_certificates().is_none() {
            return backend;
        }
        let target = crate::ca_lifecycle::StatusTarget {
            api: self.issuer_api(key),
            key: key.clone(),
        };
        Arc::new(crate::ca_lifecycle::Recorded::new(
            backend,
            self.ledger.clone(),
            target,
            spec.default_duration()
                .unwrap_or(certwright_api::issuer::DEFAULT_DURATION),
        ))
    }

    pub(crate) fn issuer_api(&self, key: &IssuerKey) -> Api<kube::core::DynamicObject> {
        if key.cluster {
            Api::all_with(self.client.clone(), &self.cluster_resource)
        } else {
            Api::namespaced_with(
                self.client.clone(),
                &key.namespace,
                &self.namespaced_resource,
            )
        }
    }

    pub(crate) fn issuer_reference(&self, key: &IssuerKey) -> ObjectReference {
        let resource = if key.cluster {
            &self.cluster_resource
        } else {
            &self.namespaced_resource
        };
        ObjectReference {
            api_version: Some(resource.api_version.clone()),
            kind: Some(resource.kind.clone()),
            name: Some(key.name.clone()),
            namespace: (!key.cluster).then(|| key.namespace.clone()),
            ..Default::default()
        }
    }

    /// Writes the issuer's status when it differs from what the status says (as last
    /// watched or written). `false` when the write failed, to be tried again soon.
    pub(crate) async fn write_issuer_status(&self, key: &IssuerKey, entry: &IssuerEntry) -> bool {
        let Some(issuer) = self.issuer_objects.get(key) else {
            return true;
        };
        let generation = issuer.metadata().generation;
        let watched = issuer.metadata().resource_version.clone();
        // The status as last watched, or as last written while the watch has not yet
        // brought anything newer.
        let (conditions, seen) = match lock(&self.written_status).get(key) {
            Some(written) if written.over == watched => {
                (written.conditions.clone(), written.ca.clone())
            }
            _ => (
                issuer.ready_conditions().to_vec(),
                SeenCaStatus::of_status(issuer.status()),
            ),
        };
        // Written when the object's Ready condition (as last watched or written) differs:
        // a recreated issuer, or a status someone cleared, is written again. So is what
        // a local CA publishes: its trust bundle and rotation.
        let health = entry.health();
        // The backend that signs names itself (a third party's too); while none could
        // be built, the block the spec configures.
        let backend = entry
            .backend
            .as_ref()
            .map(|b| b.kind())
            .or_else(|| entry.spec.backend_kind().map(|k| k.as_str()));
        let report = self.ca_report(key, entry, generation);
        let ca = match &report {
            crate::issuers::CaReport::Present(ca) => Some(ca.clone()),
            _ => None,
        };
        let Some(write) = crate::issuers::status_patch(
            &conditions,
            &seen,
            &health,
            generation,
            backend,
            &report,
            jiff::Timestamp::now(),
        ) else {
            return true;
        };
        let patch = write.patch;
        let resource = if key.cluster {
            &self.cluster_resource
        } else {
            &self.namespaced_resource
        };
        let api: Api<kube::core::DynamicObject> = if key.cluster {
            Api::all_with(self.client.clone(), resource)
        } else {
            Api::namespaced_with(self.client.clone(), &key.namespace, resource)
        };
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                // What was written stands in for the watch event still on its way, unless
                // a newer event came first (someone may have changed the status since):
                // then the watch is the fresher account, and the written one is stale.
                let now_watched = self
                    .issuer_objects
                    .get(key)
                    .and_then(|i| i.metadata().resource_version.clone());
                if now_watched == watched
                    && let Some(conditions) = written
                        .data
                        .pointer("/status/conditions")
                        .and_then(|c| serde_json::from_value::<Vec<Condition>>(c.clone()).ok())
                {
                    lock(&self.written_status).insert(
                        key.clone(),
                        WrittenStatus {
                            over: watched,
                            conditions,
                            ca: crate::issuers::SeenCaStatus::of(&written.data),
                        },
                    );
                }
                let label = self.issuer_label(key);
                let reference = ObjectReference {
                    api_version: Some(resource.api_version.clone()),
                    kind: Some(resource.kind.clone()),
                    name: Some(key.name.clone()),
                    namespace: (!key.cluster).then(|| key.namespace.clone()),
                    uid: written.metadata.uid.clone(),
                    ..Default::default()
                };
                if write.ready_changed {
                    self.events.emit(Transition {
                        regarding: reference.clone(),
                        reason: health.reason.as_str(),
                        note: health.message.clone(),
                        warning: health.warns(),
                    });
                }
                if write.rotation_changed
                    && let Some(ca) = ca.as_ref()
                    && let Some(condition) = &ca.condition
                {
                    self.events.emit(Transition {
                        regarding: reference,
                        reason: crate::ca_lifecycle::rotation_event_reason(ca),
                        note: condition.message.clone(),
                        warning: ca.warns,
                    });
                }
                debug!(issuer = %label, reason = health.reason.as_str(), "issuer status written");
            }
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => {
                warn!(issuer = %self.issuer_label(key), error = %e, "could not write the issuer status; retrying");
                return false;
            }
        }
        true
    }

    /// Writes the issuer's status from outside its loop (a request found the issuer at
    /// fault, a breaker changed); when that fails, the loop takes it on.
    pub(crate) async fn report_issuer(&self, key: &IssuerKey, entry: &IssuerEntry) {
        if !self.write_issuer_status(key, entry).await {
            self.wake_issuer(key);
        }
    }

    /// The lifetime an issuer of the engine's kinds gives a request that names none:
    /// `Ok(None)` for an issuer of another kind (or group), `Err(())` while such an
    /// issuer is not known (not yet read, or not yet created).
    pub(crate) fn issuer_default_duration(
        &self,
        group: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Duration>, ()> {
        if group != self.group {
            return Ok(None);
        }
        let key = if kind == self.cluster_kind {
            IssuerKey {
                cluster: true,
                namespace: String::new(),
                name: name.to_string(),
            }
        } else if kind == self.namespaced_kind || kind.is_empty() {
            // An empty kind with the engine's group is signed as the namespaced kind.
            IssuerKey {
                cluster: false,
                namespace: namespace.to_string(),
                name: name.to_string(),
            }
        } else {
            return Ok(None);
        };
        if !self.issuers_synced() {
            return Err(());
        }
        let issuers = lock(&self.issuers);
        let entry = issuers.get(&key).ok_or(())?;
        Ok(Some(
            entry
                .spec
                .default_duration()
                .unwrap_or(certwright_api::issuer::DEFAULT_DURATION),
        ))
    }
}
