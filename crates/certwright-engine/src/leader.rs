//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does: the holder renews the lease every retry period; a candidate takes it over once
//! it has not been renewed for the lease duration. A leader that cannot renew within
//! the renew deadline stops leading at once, so two replicas never sign side by side.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::{Error, api_code};

/// Timings of leader election (client-go's defaults).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid after its last renewal (15 s).
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops leading (10 s).
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew (2 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A configuration with client-go's default timings.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What an attempt to acquire or renew found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the lease now.
    Held,
    /// Someone else holds a valid lease.
    Taken(String),
}

/// Acquires and renews a Lease, and runs work only while holding it.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The lease record last seen from another holder, and when (on this replica's
    /// monotonic clock) it was first seen: expiry is judged by local time, as
    /// client-go does, so clock skew between nodes does not matter.
    observed: std::sync::Mutex<Option<(String, Option<String>, Instant)>>,
}

fn micro_now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl LeaderElector {
    /// An elector for the Lease described by `config`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: std::sync::Mutex::new(None),
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let me = &self.config.identity;
        // The Lease counts whole seconds; round up so a lease is never shorter than asked.
        let duration_secs = i32::try_from(self.config.lease_duration.as_secs_f64().ceil() as u64)
            .unwrap_or(15)
            .max(1);
        let existing = self.api.get_opt(&self.config.name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                // Another replica created it first.
                Err(e) if api_code(&e) == Some(409) => Ok(Attempt::Taken(String::new())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let valid_for = spec
            .lease_duration_seconds
            .map_or(self.config.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(15))
            });
        // The record as another holder last wrote it; unchanged for longer than its
        // duration (by our clock) means it was not renewed.
        let record = (holder.clone(), lease.metadata.resource_version.clone());
        let expired = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            match observed.as_ref() {
                Some((h, rv, seen)) if (h, rv) == (&record.0, &record.1) => {
                    seen.elapsed() > valid_for
                }
                _ => {
                    *observed = Some((record.0, record.1, Instant::now()));
                    false
                }
            }
        };
        if holder != *me && !holder.is_empty() && !expired {
            return Ok(Attempt::Taken(holder));
        }
        if holder != *me {
            spec.acquire_time = Some(micro_now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(me.clone());
        }
        spec.renew_time = Some(micro_now());
        spec.lease_duration_seconds = Some(duration_secs);
        // The resourceVersion in `lease` makes this a compare-and-swap: a replica that
        // raced us gets 409 and stays a candidate.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(e) if api_code(&e) == Some(409) => Ok(Attempt::Taken(holder)),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up so that another replica can take over at once.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            warn!(error = %e, "could not release the lease");
        }
    }

    /// Waits for leadership, then runs `lead` with a token that is cancelled when
    /// leadership is lost or `shutdown` is cancelled. Returns `lead`'s result after a
    /// shutdown, and [`Error::LeadershipLost`] when the lease could not be renewed in
    /// time (the process should exit, as controller-runtime's managers do).
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, lead: F) -> Result<(), Error>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let cfg = &self.config;
        if !(cfg.lease_duration > cfg.renew_deadline && cfg.renew_deadline > cfg.retry_period) {
            return Err(Error::Task {
                message: format!(
                    "leader election needs lease duration ({:?}) > renew deadline ({:?}) > retry period ({:?})",
                    cfg.lease_duration, cfg.renew_deadline, cfg.retry_period
                ),
            });
        }
        // Candidate: try until we hold the lease.
        loop {
            match tokio::time::timeout(cfg.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => break,
                Ok(Ok(Attempt::Taken(holder))) => {
                    tracing::debug!(%holder, "lease held by another replica");
                }
                Ok(Err(e)) => warn!(error = %e, "could not read or take the lease"),
                Err(_) => warn!("reading or taking the lease timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(cfg.retry_period) => {}
            }
        }
        info!(lease = %cfg.name, identity = %cfg.identity, "became the leader");
        let leading = CancellationToken::new();
        let mut work = tokio::spawn(lead(leading.clone()));
        let mut last_renewed = Instant::now();
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                _ = shutdown.cancelled(), if !leading.is_cancelled() => {
                    // Keep renewing while the work finishes its in-flight calls, so
                    // that no other replica starts signing before it has stopped.
                    leading.cancel();
                }
                _ = tokio::time::sleep(cfg.retry_period) => {
                    let budget = cfg.renew_deadline.saturating_sub(last_renewed.elapsed());
                    let renewed = tokio::time::timeout(budget, self.try_acquire_or_renew()).await;
                    match renewed {
                        Ok(Ok(Attempt::Held)) => last_renewed = Instant::now(),
                        Ok(Ok(Attempt::Taken(holder))) => {
                            warn!(%holder, "another replica took the lease; stopping at once");
                            return self.lost(leading, work).await;
                        }
                        Ok(Err(e)) => warn!(error = %e, "could not renew the lease"),
                        Err(_) => warn!("renewing the lease timed out"),
                    }
                    if last_renewed.elapsed() >= cfg.renew_deadline {
                        warn!("renew deadline passed; stopping at once");
                        return self.lost(leading, work).await;
                    }
                }
            }
        };
        let released = tokio::time::timeout(cfg.renew_deadline, self.release()).await;
        if released.is_err() {
            warn!("releasing the lease timed out");
        }
        result.unwrap_or_else(|e| {
            Err(Error::Task {
                message: e.to_string(),
            })
        })
    }

    /// Leadership is gone: stop the work now, without waiting for in-flight calls.
    async fn lost(
        &self,
        leading: CancellationToken,
        work: tokio::task::JoinHandle<Result<(), Error>>,
    ) -> Result<(), Error> {
        leading.cancel();
        work.abort();
        let _ = work.await;
        Err(Error::LeadershipLost)
    }
}
