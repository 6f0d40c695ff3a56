//! certwright's Prometheus metrics, kept in their own registry that the binary serves on
//! `:9402/metrics`. The engine records through [`Metrics`].
//!
//! Everything certwright measures is prefixed `certwright_`; issuers are named by the
//! labels cert-manager's own metrics use (`issuer_name`, `issuer_kind`, `issuer_group`,
//! and `namespace`, the issuer's, empty for a cluster-scoped issuer), so the two join in
//! PromQL. The registry also carries the standard `process_*` metrics of the process
//! (Linux only), which Prometheus' conventions leave unprefixed.
//! docs/engine.md, "Metrics", lists every family.
//!
//! One file because the families, their recording methods and the tests that pin each
//! family's exposition (names, labels, buckets), which the chart's dashboard and alerts
//! depend on, are read together: over 800 lines, most of them those tests.

mod process;

use process::ProcessCollector;

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `resource` label of a cert-manager CertificateRequest.
pub(crate) const RESOURCE_REQUEST: &str = "CertificateRequest";
/// The `resource` label of a Kubernetes CertificateSigningRequest.
pub(crate) const RESOURCE_CSR: &str = "CertificateSigningRequest";
/// The `resource` label of an issuer's own health check.
pub(crate) const RESOURCE_ISSUER: &str = "Issuer";

/// The `queue` label of the CertificateRequest loop.
pub(crate) const QUEUE_REQUESTS: &str = "certificaterequests";
/// The `queue` label of the issuer loops.
pub(crate) const QUEUE_ISSUERS: &str = "issuers";
/// The `queue` label of the Kubernetes CSR loop.
pub(crate) const QUEUE_CSRS: &str = "certificatesigningrequests";

/// Bucket bounds of `certwright_signing_duration_seconds`: 5ms to 60s.
const SIGNING_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bucket bounds of `certwright_approval_to_ready_seconds`: 1ms to 60s.
const APPROVAL_TO_READY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bucket bounds of the work-queue histograms: 100µs to 5 minutes (a request scheduled
/// for a later poll is not counted while it waits for its time, only once it is due).
const QUEUE_BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The labels that name an issuer in every per-issuer metric, as cert-manager's
/// metrics name it.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IssuerLabels {
    /// The issuer's name.
    pub issuer_name: String,
    /// Its kind, e.g. `InternalIssuer`.
    pub issuer_kind: String,
    /// Its API group, e.g. `pki.certwright.io`.
    pub issuer_group: String,
    /// Its namespace; empty for a cluster-scoped issuer.
    pub namespace: String,
}

impl IssuerLabels {
    /// The labels of the issuer `kind` in `group` named `name` in `namespace` (empty for
    /// a cluster-scoped kind).
    pub(crate) fn new(kind: &str, group: &str, namespace: &str, name: &str) -> Self {
        IssuerLabels {
            issuer_name: name.to_owned(),
            issuer_kind: kind.to_owned(),
            issuer_group: group.to_owned(),
            namespace: namespace.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SigningLabels {
    #[prometheus(flatten)]
    issuer: IssuerLabels,
    backend: String,
    resource: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendCallLabels {
    #[prometheus(flatten)]
    issuer: IssuerLabels,
    backend: String,
    resource: String,
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    #[prometheus(flatten)]
    issuer: IssuerLabels,
    resource: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeferredLabels {
    #[prometheus(flatten)]
    issuer: IssuerLabels,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    #[prometheus(flatten)]
    issuer: IssuerLabels,
    phase: String,
}

/// The phases of a CA rotation, each a series of `certwright_issuer_ca_rotation_phase`.
const ROTATION_PHASES: [&str; 3] = ["Distribute", "Switch", "Retire"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    namespace: String,
    decision: String,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwaitingLabels {
    approval: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabels {
    result: String,
}

/// The `approval` labels of the awaiting gauges.
pub(crate) const AWAITING_APPROVALS: [&str; 2] = ["manual", "ticket"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    #[prometheus(flatten)]
    issuer: IssuerLabels,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn signing_histogram() -> Histogram {
    Histogram::new(SIGNING_BUCKETS)
}

fn approval_to_ready_histogram() -> Histogram {
    Histogram::new(APPROVAL_TO_READY_BUCKETS)
}

fn queue_histogram() -> Histogram {
    Histogram::new(QUEUE_BUCKETS)
}

/// certwright's metrics and the registry that holds them. Cloning gives another handle
/// to the same metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    signing_duration: HistogramFamily<SigningLabels>,
    backend_calls: Family<BackendCallLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    deferred: Family<DeferredLabels, Counter>,
    pending: Family<IssuerLabels, Gauge>,
    issuer_ready: Family<IssuerLabels, Gauge>,
    issuer_reason: Family<ReasonLabels, Gauge>,
    /// The reason each issuer's `certwright_issuer_ready_reason` series carries now.
    reasons: std::sync::Mutex<std::collections::HashMap<IssuerLabels, String>>,
    breaker_state: Family<IssuerLabels, Gauge>,
    ca_expiry: Family<IssuerLabels, Gauge>,
    rotation_phase: Family<PhaseLabels, Gauge>,
    approval_to_ready: HistogramFamily<IssuerLabels>,
    policy_decisions: Family<DecisionLabels, Counter>,
    policy_awaiting: Family<AwaitingLabels, Gauge>,
    policy_awaiting_oldest: Family<AwaitingLabels, Gauge>,
    policy_held: Gauge,
    policy_lists: Family<ListLabels, Counter>,
    cached_requests: Gauge,
    leader: Gauge,
    queue_in_flight: Family<QueueLabels, Gauge>,
    queue_retries: Family<QueueLabels, Counter>,
    work_duration: HistogramFamily<QueueLabels>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The metrics of one loop (a kube-runtime `Controller`), labelled `queue` with its
/// name. Its scheduler does not tell how many objects are due and waiting, or for how
/// long: what is measured is around each look. Cloning gives another handle to the
/// same series.
#[derive(Clone, Debug)]
pub(crate) struct QueueMetrics {
    /// `certwright_workqueue_in_flight`: looks under way.
    pub(crate) in_flight: Gauge,
    /// `certwright_workqueue_retries_total`: looks that asked for a later look.
    pub(crate) retries: Counter,
    /// `certwright_workqueue_work_duration_seconds`: one look.
    pub(crate) work: Histogram,
}

/// One look under way, counted in `in_flight` until dropped, when its duration is
/// recorded.
pub(crate) struct Look {
    metrics: QueueMetrics,
    started: std::time::Instant,
}

impl Drop for Look {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics
            .work
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl QueueMetrics {
    /// Starts measuring one look; it ends when the returned guard is dropped.
    pub(crate) fn look(&self) -> Look {
        self.in_flight.inc();
        Look {
            metrics: self.clone(),
            started: std::time::Instant::now(),
        }
    }

    /// Counts one look that asked for a later look (a retry, a poll, a recheck).
    pub(crate) fn retried(&self) {
        self.retries.inc();
    }
}

impl Metrics {
    /// Every certwright metric, registered in a new registry, with the process
    /// metrics beside them.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let sub = registry.sub_registry_with_prefix("certwright");
        let signing_duration: HistogramFamily<SigningLabels> =
            Family::new_with_constructor(signing_histogram);
        let backend_calls = Family::<BackendCallLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let deferred = Family::<DeferredLabels, Counter>::default();
        let pending = Family::<IssuerLabels, Gauge>::default();
        let issuer_ready = Family::<IssuerLabels, Gauge>::default();
        let issuer_reason = Family::<ReasonLabels, Gauge>::default();
        let breaker_state = Family::<IssuerLabels, Gauge>::default();
        let ca_expiry = Family::<IssuerLabels, Gauge>::default();
        let rotation_phase = Family::<PhaseLabels, Gauge>::default();
        let policy_decisions = Family::<DecisionLabels, Counter>::default();
        let policy_awaiting = Family::<AwaitingLabels, Gauge>::default();
        let policy_awaiting_oldest = Family::<AwaitingLabels, Gauge>::default();
        let policy_held = Gauge::default();
        let policy_lists = Family::<ListLabels, Counter>::default();
        let approval_to_ready: HistogramFamily<IssuerLabels> =
            Family::new_with_constructor(approval_to_ready_histogram);
        let cached_requests = Gauge::default();
        let leader = Gauge::default();
        let queue_in_flight = Family::<QueueLabels, Gauge>::default();
        let queue_retries = Family::<QueueLabels, Counter>::default();
        let work_duration: HistogramFamily<QueueLabels> =
            Family::new_with_constructor(queue_histogram);

        sub.register_with_unit(
            "signing_duration",
            "Latency of PKI sign, poll and recover calls, by issuer, backend type and outcome",
            Unit::Seconds,
            signing_duration.clone(),
        );
        sub.register(
            "backend_calls",
            "Calls to PKIs, by issuer, backend type, operation (sign, poll, recover, check) and outcome",
            backend_calls.clone(),
        );
        sub.register(
            "certificate_requests",
            "Requests that reached a final state, by issuer, resource and result (issued, failed, denied)",
            requests.clone(),
        );
        sub.register(
            "deferred_requests",
            "Requests held back to protect a PKI, by issuer and reason (circuit_open, probe_in_flight, rate_limited)",
            deferred.clone(),
        );
        sub.register(
            "pending_requests",
            "Approved requests waiting for their certificate, by issuer",
            pending.clone(),
        );
        sub.register(
            "issuer_ready",
            "Whether the issuer's Ready condition is True (1) or not (0)",
            issuer_ready.clone(),
        );
        sub.register(
            "issuer_ready_reason",
            "The reason of the issuer's Ready condition (Verified, CAExpiringSoon, CAExpired, SecretNotFound, ...): 1 on the current one",
            issuer_reason.clone(),
        );
        sub.register(
            "circuit_breaker_state",
            "State of the issuer's circuit breaker: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        sub.register(
            "issuer_ca_rotation_phase",
            "During a CA rotation, its phase in effect (Distribute, Switch, Retire): 1 on the current one",
            rotation_phase.clone(),
        );
        sub.register(
            "issuer_ca_expiry_timestamp_seconds",
            "When the certificate of the CA the issuer signs with expires, as a Unix timestamp, for backends that know it",
            ca_expiry.clone(),
        );
        sub.register_with_unit(
            "approval_to_ready",
            "Time from a CertificateRequest's approval to its Ready condition being written",
            Unit::Seconds,
            approval_to_ready.clone(),
        );
        sub.register(
            "policy_decisions",
            "CertificateRequests the policy approver approved or denied, by namespace, decision (approved, denied) and IssuancePolicy (empty when none applied)",
            policy_decisions.clone(),
        );
        sub.register(
            "policy_awaiting_requests",
            "CertificateRequests allowed by policy that wait for approval by a person (manual) or a change ticket (ticket)",
            policy_awaiting.clone(),
        );
        sub.register(
            "policy_awaiting_oldest_seconds",
            "How long the longest-waiting CertificateRequest has waited for approval by a person (manual) or a change ticket (ticket); 0 when none waits",
            policy_awaiting_oldest.clone(),
        );
        sub.register(
            "policy_held_requests",
            "Undecided CertificateRequests the policy approver holds in memory: those it may decide, not those it leaves to another approver",
            policy_held.clone(),
        );
        sub.register(
            "policy_lists",
            "Lists of every CertificateRequest the policy approver made after IssuancePolicies or namespace labels changed (with --policy-unmatched=ignore), by result (ok, error)",
            policy_lists.clone(),
        );
        sub.register(
            "cached_requests",
            "CertificateRequests the engine holds in memory (approved or denied, not yet final)",
            cached_requests.clone(),
        );
        sub.register(
            "leader_is_leader",
            "Whether this replica holds the leader-election lease and reconciles (1) or waits (0)",
            leader.clone(),
        );
        sub.register(
            "workqueue_in_flight",
            "Looks under way, by loop (queue); at the loop's concurrency limit it is saturated",
            queue_in_flight.clone(),
        );
        sub.register(
            "workqueue_retries",
            "Looks that asked for a later look (a retry, a poll, a recheck), by loop (queue)",
            queue_retries.clone(),
        );
        sub.register_with_unit(
            "workqueue_work_duration",
            "Time one look took, by loop (queue)",
            Unit::Seconds,
            work_duration.clone(),
        );

        Metrics {
            inner: Arc::new(Inner {
                registry,
                signing_duration,
                backend_calls,
                requests,
                deferred,
                pending,
                issuer_ready,
                issuer_reason,
                reasons: std::sync::Mutex::default(),
                breaker_state,
                ca_expiry,
                rotation_phase,
                approval_to_ready,
                policy_decisions,
                policy_awaiting,
                policy_awaiting_oldest,
                policy_held,
                policy_lists,
                cached_requests,
                leader,
                queue_in_flight,
                queue_retries,
                work_duration,
            }),
        }
    }

    /// The registry holding every metric, for a caller that encodes it itself.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Every metric in the OpenMetrics text format, `# EOF` included.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }

    /// The series of the loop named `queue`.
    pub(crate) fn queue(&self, queue: &str) -> QueueMetrics {
        let labels = QueueLabels {
            queue: queue.to_owned(),
        };
        QueueMetrics {
            in_flight: self.inner.queue_in_flight.get_or_create(&labels).clone(),
            retries: self.inner.queue_retries.get_or_create(&labels).clone(),
            work: self.inner.work_duration.get_or_create(&labels).clone(),
        }
    }

    /// Records one PKI call: its latency in
    /// `certwright_signing_duration_seconds{issuer…,backend,resource,outcome}` (sign,
    /// poll and recover calls) and its count in
    /// `certwright_backend_calls_total{issuer…,backend,resource,operation,outcome}`.
    /// `resource` is [`RESOURCE_REQUEST`], [`RESOURCE_CSR`] or [`RESOURCE_ISSUER`] (health
    /// checks, whose latency is not a signing latency); `operation` is `sign`, `poll`,
    /// `recover` or `check`; `outcome` is `success`, `pending` or the error's metric
    /// label.
    pub(crate) fn backend_call(&self, call: &Call<'_>, seconds: Option<f64>) {
        let issuer = call.issuer.clone();
        if let Some(seconds) = seconds {
            self.inner
                .signing_duration
                .get_or_create(&SigningLabels {
                    issuer: issuer.clone(),
                    backend: call.backend.to_owned(),
                    resource: call.resource.to_owned(),
                    outcome: call.outcome.to_owned(),
                })
                .observe(seconds);
        }
        self.inner
            .backend_calls
            .get_or_create(&BackendCallLabels {
                issuer,
                backend: call.backend.to_owned(),
                resource: call.resource.to_owned(),
                operation: call.operation.to_owned(),
                outcome: call.outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one CertificateRequest or Kubernetes CSR that reached a final state in
    /// `certwright_certificate_requests_total{issuer…,resource,result}`; `result` is
    /// `issued`, `failed` or `denied`.
    pub(crate) fn request_finished(&self, issuer: &IssuerLabels, resource: &str, result: &str) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                issuer: issuer.clone(),
                resource: resource.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts one request held back by the issuer's protection in
    /// `certwright_deferred_requests_total{issuer…,reason}`.
    pub(crate) fn request_deferred(&self, issuer: &IssuerLabels, reason: &str) {
        self.inner
            .deferred
            .get_or_create(&DeferredLabels {
                issuer: issuer.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Sets `certwright_cached_requests`: the requests the engine holds in memory.
    pub(crate) fn set_cached_requests(&self, count: i64) {
        self.inner.cached_requests.set(count);
    }

    /// Sets `certwright_leader_is_leader` to 1 or 0.
    pub fn set_leader(&self, leading: bool) {
        self.inner.leader.set(i64::from(leading));
    }

    /// Sets `certwright_pending_requests{issuer…}`.
    pub(crate) fn set_pending(&self, issuer: &IssuerLabels, count: i64) {
        self.inner.pending.get_or_create(issuer).set(count);
    }

    /// Sets `certwright_issuer_ready{issuer…}` to 1 or 0, and
    /// `certwright_issuer_ready_reason{issuer…,reason}` to 1 for `reason` alone.
    pub(crate) fn set_issuer_ready(&self, issuer: &IssuerLabels, ready: bool, reason: &str) {
        self.inner
            .issuer_ready
            .get_or_create(issuer)
            .set(i64::from(ready));
        // Held while the series change, so that two writers leave one reason at 1.
        let mut reasons = self
            .inner
            .reasons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = reasons.insert(issuer.clone(), reason.to_owned());
        if let Some(previous) = previous.filter(|p| p != reason) {
            self.inner.issuer_reason.remove(&ReasonLabels {
                issuer: issuer.clone(),
                reason: previous,
            });
        }
        self.inner
            .issuer_reason
            .get_or_create(&ReasonLabels {
                issuer: issuer.clone(),
                reason: reason.to_owned(),
            })
            .set(1);
    }

    /// Sets `certwright_circuit_breaker_state{issuer…}`: 0 closed, 1 half-open, 2 open
    /// (see [`BreakerState::metric_value`](crate::protection::BreakerState::metric_value)).
    pub(crate) fn set_breaker_state(&self, issuer: &IssuerLabels, state: i64) {
        self.inner.breaker_state.get_or_create(issuer).set(state);
    }

    /// Sets `certwright_issuer_ca_expiry_timestamp_seconds{issuer…}`, or drops the
    /// series when the backend does not know when its CA expires.
    pub(crate) fn set_ca_expiry(&self, issuer: &IssuerLabels, not_after: Option<i64>) {
        match not_after {
            Some(at) => {
                self.inner.ca_expiry.get_or_create(issuer).set(at);
            }
            None => {
                self.inner.ca_expiry.remove(issuer);
            }
        }
    }

    /// Sets `certwright_issuer_ca_rotation_phase{issuer…,phase}`: 1 for the phase in
    /// effect and 0 for the others during a CA rotation; no series without one.
    pub(crate) fn set_rotation_phase(&self, issuer: &IssuerLabels, phase: Option<&str>) {
        for each in ROTATION_PHASES {
            let labels = PhaseLabels {
                issuer: issuer.clone(),
                phase: each.to_owned(),
            };
            match phase {
                Some(phase) => {
                    self.inner
                        .rotation_phase
                        .get_or_create(&labels)
                        .set(i64::from(phase == each));
                }
                None => {
                    self.inner.rotation_phase.remove(&labels);
                }
            }
        }
    }

    /// Counts one decision in `certwright_policy_decisions_total{namespace,decision,policy}`.
    pub(crate) fn policy_decision(&self, namespace: &str, decision: &str, policy: &str) {
        self.inner
            .policy_decisions
            .get_or_create(&DecisionLabels {
                namespace: namespace.to_owned(),
                decision: decision.to_owned(),
                policy: policy.to_owned(),
            })
            .inc();
    }

    /// Sets `certwright_policy_awaiting_requests{approval}` and
    /// `certwright_policy_awaiting_oldest_seconds{approval}` (approval `manual` or
    /// `ticket`).
    pub(crate) fn set_policy_awaiting(&self, approval: &str, count: i64, oldest_seconds: i64) {
        let labels = AwaitingLabels {
            approval: approval.to_owned(),
        };
        self.inner.policy_awaiting.get_or_create(&labels).set(count);
        self.inner
            .policy_awaiting_oldest
            .get_or_create(&labels)
            .set(oldest_seconds);
    }

    /// Sets `certwright_policy_held_requests`.
    pub(crate) fn set_policy_held(&self, count: i64) {
        self.inner.policy_held.set(count);
    }

    /// Counts in `certwright_policy_lists_total{result}` a list of every
    /// CertificateRequest after a policy or label change (`ok` or `error`).
    pub(crate) fn policy_list(&self, result: &str) {
        self.inner
            .policy_lists
            .get_or_create(&ListLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Records in `certwright_approval_to_ready_seconds{issuer…}` the time from the
    /// Approved condition's `lastTransitionTime` to the Ready condition being written.
    pub(crate) fn observe_approval_to_ready(&self, issuer: &IssuerLabels, seconds: f64) {
        self.inner
            .approval_to_ready
            .get_or_create(issuer)
            .observe(seconds);
    }

    /// Drops the issuer's gauge series (pending requests, ready, breaker state, CA
    /// expiry) once the issuer is deleted. Counters and histograms are kept: they are
    /// few per issuer and dropping them would hide increases from a scrape that missed
    /// the last ones.
    pub(crate) fn forget_issuer(&self, issuer: &IssuerLabels) {
        self.inner.pending.remove(issuer);
        self.inner.issuer_ready.remove(issuer);
        let reason = self
            .inner
            .reasons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(issuer);
        if let Some(reason) = reason {
            self.inner.issuer_reason.remove(&ReasonLabels {
                issuer: issuer.clone(),
                reason,
            });
        }
        self.inner.breaker_state.remove(issuer);
        self.inner.ca_expiry.remove(issuer);
        self.set_rotation_phase(issuer, None);
    }
}

/// One PKI call, as [`Metrics::backend_call`] counts it.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    /// The issuer whose backend was called.
    pub issuer: &'a IssuerLabels,
    /// The backend type ([`Backend::kind`](certwright_pki::Backend::kind)).
    pub backend: &'a str,
    /// What the call was for: [`RESOURCE_REQUEST`], [`RESOURCE_CSR`], [`RESOURCE_ISSUER`].
    pub resource: &'a str,
    /// `sign`, `poll`, `recover` or `check`.
    pub operation: &'a str,
    /// `success`, `pending` or an error's metric label.
    pub outcome: &'a str,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cluster() -> IssuerLabels {
        IssuerLabels::new(
            "InternalClusterIssuer",
            "pki.certwright.io",
            "",
            "corp-adcs",
        )
    }

    fn namespaced() -> IssuerLabels {
        IssuerLabels::new("InternalIssuer", "pki.certwright.io", "apps", "corp")
    }

    const CLUSTER: &str = r#"issuer_name="corp-adcs",issuer_kind="InternalClusterIssuer",issuer_group="pki.certwright.io",namespace="""#;
    const NAMESPACED: &str = r#"issuer_name="corp",issuer_kind="InternalIssuer",issuer_group="pki.certwright.io",namespace="apps""#;

    fn call<'a>(
        issuer: &'a IssuerLabels,
        backend: &'a str,
        resource: &'a str,
        operation: &'a str,
        outcome: &'a str,
    ) -> Call<'a> {
        Call {
            issuer,
            backend,
            resource,
            operation,
            outcome,
        }
    }

    /// The certwright_* lines: the process metrics vary from run to run.
    fn lines(metrics: &Metrics) -> Vec<String> {
        metrics
            .encode()
            .unwrap()
            .lines()
            .filter(|l| !l.contains("process_"))
            .map(str::to_owned)
            .collect()
    }

    #[track_caller]
    fn assert_line(lines: &[String], expected: &str) {
        assert!(
            lines.iter().any(|line| line == expected),
            "missing line {expected:?} in:\n{}",
            lines.join("\n")
        );
    }

    #[test]
    fn policy_decisions_and_waits() {
        let metrics = Metrics::new();
        metrics.policy_decision("payments", "denied", "payments-base");
        metrics.policy_decision("payments", "denied", "payments-base");
        metrics.set_policy_awaiting("ticket", 2, 95);
        metrics.set_policy_held(3);
        metrics.policy_list("ok");
        let text = lines(&metrics).join("\n");
        for want in [
            "certwright_policy_held_requests 3",
            "certwright_policy_lists_total{result=\"ok\"} 1",
            "certwright_policy_decisions_total{namespace=\"payments\",decision=\"denied\",policy=\"payments-base\"} 2",
            "certwright_policy_awaiting_requests{approval=\"ticket\"} 2",
            "certwright_policy_awaiting_oldest_seconds{approval=\"ticket\"} 95",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }

    #[test]
    fn metrics_are_send_sync_and_clone() {
        fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
        assert_send_sync_clone::<Metrics>();
    }

    #[test]
    fn a_fresh_registry_shows_the_cache_sizes_and_leadership() {
        // Families without series are not encoded; the plain gauges always have one.
        assert_eq!(
            lines(&Metrics::new()).join("\n"),
            "# HELP certwright_policy_held_requests Undecided CertificateRequests the policy approver holds in memory: those it may decide, not those it leaves to another approver.\n\
             # TYPE certwright_policy_held_requests gauge\n\
             certwright_policy_held_requests 0\n\
             # HELP certwright_cached_requests CertificateRequests the engine holds in memory (approved or denied, not yet final).\n\
             # TYPE certwright_cached_requests gauge\n\
             certwright_cached_requests 0\n\
             # HELP certwright_leader_is_leader Whether this replica holds the leader-election lease and reconciles (1) or waits (0).\n\
             # TYPE certwright_leader_is_leader gauge\n\
             certwright_leader_is_leader 0\n\
             # EOF"
        );
    }

    #[test]
    fn families_have_prefixed_names_types_and_units() {
        let metrics = Metrics::new();
        let issuer = cluster();
        metrics.backend_call(
            &call(&issuer, "adcs", RESOURCE_REQUEST, "sign", "success"),
            Some(1.0),
        );
        metrics.request_finished(&issuer, RESOURCE_REQUEST, "issued");
        metrics.request_deferred(&issuer, "rate_limited");
        metrics.set_pending(&issuer, 0);
        metrics.set_issuer_ready(&issuer, true, "Verified");
        metrics.set_breaker_state(&issuer, 0);
        metrics.set_ca_expiry(&issuer, Some(1_900_000_000));
        metrics.observe_approval_to_ready(&issuer, 1.0);
        let _ = metrics.queue(QUEUE_REQUESTS);
        let text = metrics.encode().unwrap();
        assert!(text.ends_with("# EOF\n"));
        for family in [
            "# TYPE certwright_signing_duration_seconds histogram",
            "# UNIT certwright_signing_duration_seconds seconds",
            "# TYPE certwright_backend_calls counter",
            "# TYPE certwright_certificate_requests counter",
            "# TYPE certwright_deferred_requests counter",
            "# TYPE certwright_pending_requests gauge",
            "# TYPE certwright_issuer_ready gauge",
            "# TYPE certwright_circuit_breaker_state gauge",
            "# TYPE certwright_issuer_ca_expiry_timestamp_seconds gauge",
            "# TYPE certwright_approval_to_ready_seconds histogram",
            "# UNIT certwright_approval_to_ready_seconds seconds",
            "# TYPE certwright_workqueue_in_flight gauge",
            "# TYPE certwright_workqueue_retries counter",
            "# TYPE certwright_workqueue_work_duration_seconds histogram",
        ] {
            assert!(text.contains(family), "missing {family:?} in:\n{text}");
        }
    }

    #[test]
    fn issuers_carry_cert_managers_label_names() {
        let metrics = Metrics::new();
        metrics.set_issuer_ready(&namespaced(), true, "Verified");
        metrics.set_issuer_ready(&cluster(), false, "CAExpired");
        let lines = lines(&metrics);
        assert_line(
            &lines,
            &format!("certwright_issuer_ready{{{NAMESPACED}}} 1"),
        );
        assert_line(&lines, &format!("certwright_issuer_ready{{{CLUSTER}}} 0"));
        assert_line(
            &lines,
            &format!(r#"certwright_issuer_ready_reason{{{CLUSTER},reason="CAExpired"}} 1"#),
        );
        // A new reason replaces the old one's series.
        metrics.set_issuer_ready(&cluster(), true, "Verified");
        let text = metrics.encode().unwrap();
        assert!(text.contains(&format!(
            r#"certwright_issuer_ready_reason{{{CLUSTER},reason="Verified"}} 1"#
        )));
        assert!(!text.contains(r#"reason="CAExpired""#), "{text}");
    }

    #[test]
    fn counters_have_total_suffix_and_labels() {
        let metrics = Metrics::new();
        let (c, n) = (cluster(), namespaced());
        metrics.backend_call(&call(&c, "adcs", RESOURCE_REQUEST, "sign", "success"), None);
        metrics.backend_call(&call(&c, "adcs", RESOURCE_REQUEST, "sign", "success"), None);
        metrics.backend_call(&call(&c, "adcs", RESOURCE_REQUEST, "poll", "pending"), None);
        metrics.backend_call(&call(&n, "ca", RESOURCE_ISSUER, "check", "transient"), None);
        metrics.request_finished(&c, RESOURCE_REQUEST, "issued");
        metrics.request_finished(&n, RESOURCE_REQUEST, "denied");
        metrics.request_finished(&n, RESOURCE_REQUEST, "denied");
        metrics.request_deferred(&n, "circuit_open");
        let lines = lines(&metrics);
        assert_line(
            &lines,
            &format!(
                r#"certwright_backend_calls_total{{{CLUSTER},backend="adcs",resource="CertificateRequest",operation="sign",outcome="success"}} 2"#
            ),
        );
        assert_line(
            &lines,
            &format!(
                r#"certwright_backend_calls_total{{{CLUSTER},backend="adcs",resource="CertificateRequest",operation="poll",outcome="pending"}} 1"#
            ),
        );
        assert_line(
            &lines,
            &format!(
                r#"certwright_backend_calls_total{{{NAMESPACED},backend="ca",resource="Issuer",operation="check",outcome="transient"}} 1"#
            ),
        );
        assert_line(
            &lines,
            &format!(
                r#"certwright_certificate_requests_total{{{CLUSTER},resource="CertificateRequest",result="issued"}} 1"#
            ),
        );
        assert_line(
            &lines,
            &format!(
                r#"certwright_certificate_requests_total{{{NAMESPACED},resource="CertificateRequest",result="denied"}} 2"#
            ),
        );
        assert_line(
            &lines,
            &format!(
                r#"certwright_deferred_requests_total{{{NAMESPACED},reason="circuit_open"}} 1"#
            ),
        );
    }

    #[test]
    fn a_health_check_is_counted_but_not_timed_as_signing() {
        let metrics = Metrics::new();
        let n = namespaced();
        metrics.backend_call(&call(&n, "ca", RESOURCE_ISSUER, "check", "success"), None);
        assert!(
            !metrics
                .encode()
                .unwrap()
                .contains("certwright_signing_duration_seconds_count")
        );
    }

    #[test]
    fn gauges_report_last_value() {
        let metrics = Metrics::new();
        let (c, n) = (cluster(), namespaced());
        metrics.set_pending(&c, 7);
        metrics.set_pending(&c, 3);
        metrics.set_breaker_state(&c, 2);
        metrics.set_ca_expiry(&n, Some(1_900_000_000));
        metrics.set_leader(true);
        let lines = lines(&metrics);
        assert_line(
            &lines,
            &format!("certwright_pending_requests{{{CLUSTER}}} 3"),
        );
        assert_line(
            &lines,
            &format!("certwright_circuit_breaker_state{{{CLUSTER}}} 2"),
        );
        assert_line(
            &lines,
            &format!("certwright_issuer_ca_expiry_timestamp_seconds{{{NAMESPACED}}} 1900000000"),
        );
        assert_line(&lines, "certwright_leader_is_leader 1");
        metrics.set_ca_expiry(&n, None);
        assert!(
            !metrics
                .encode()
                .unwrap()
                .contains("certwright_issuer_ca_expiry_timestamp_seconds{")
        );
    }

    #[test]
    fn signing_histogram_buckets_from_5ms_to_60s_by_backend() {
        let metrics = Metrics::new();
        let c = cluster();
        let sign = |outcome, seconds| {
            metrics.backend_call(
                &call(&c, "adcs", RESOURCE_REQUEST, "sign", outcome),
                Some(seconds),
            );
        };
        sign("success", 0.2);
        sign("success", 45.0);
        sign("transient", 0.001);
        let lines = lines(&metrics);
        let series =
            format!(r#"{CLUSTER},backend="adcs",resource="CertificateRequest",outcome="success""#);
        assert_line(
            &lines,
            &format!("certwright_signing_duration_seconds_sum{{{series}}} 45.2"),
        );
        assert_line(
            &lines,
            &format!("certwright_signing_duration_seconds_count{{{series}}} 2"),
        );
        for (le, count) in [
            ("0.005", 0),
            ("0.25", 1),
            ("30.0", 1),
            ("60.0", 2),
            ("+Inf", 2),
        ] {
            assert_line(
                &lines,
                &format!(
                    r#"certwright_signing_duration_seconds_bucket{{le="{le}",{series}}} {count}"#
                ),
            );
        }
        assert_line(
            &lines,
            &format!(
                r#"certwright_signing_duration_seconds_bucket{{le="0.005",{CLUSTER},backend="adcs",resource="CertificateRequest",outcome="transient"}} 1"#
            ),
        );
        let buckets = lines
            .iter()
            .filter(|l| {
                l.starts_with("certwright_signing_duration_seconds_bucket") && l.contains(&series)
            })
            .count();
        assert_eq!(buckets, SIGNING_BUCKETS.len() + 1);
    }

    #[test]
    fn approval_to_ready_histogram_buckets_from_1ms_to_60s() {
        let metrics = Metrics::new();
        let n = namespaced();
        metrics.observe_approval_to_ready(&n, 0.0005);
        metrics.observe_approval_to_ready(&n, 2.0);
        let lines = lines(&metrics);
        let series = NAMESPACED;
        assert_line(
            &lines,
            &format!(r#"certwright_approval_to_ready_seconds_bucket{{le="0.001",{series}}} 1"#),
        );
        assert_line(
            &lines,
            &format!(r#"certwright_approval_to_ready_seconds_bucket{{le="2.5",{series}}} 2"#),
        );
        assert_line(
            &lines,
            &format!("certwright_approval_to_ready_seconds_count{{{series}}} 2"),
        );
        assert_line(
            &lines,
            &format!("certwright_approval_to_ready_seconds_sum{{{series}}} 2.0005"),
        );
    }

    #[test]
    fn forget_issuer_drops_its_gauges_only() {
        let metrics = Metrics::new();
        for issuer in [cluster(), namespaced()] {
            metrics.set_pending(&issuer, 1);
            metrics.set_issuer_ready(&issuer, true, "Verified");
            metrics.set_breaker_state(&issuer, 0);
            metrics.set_ca_expiry(&issuer, Some(1));
        }
        metrics.request_finished(&cluster(), RESOURCE_REQUEST, "issued");
        metrics.forget_issuer(&cluster());
        let text = metrics.encode().unwrap();
        for gauge in [
            "certwright_pending_requests",
            "certwright_issuer_ready",
            "certwright_circuit_breaker_state",
            "certwright_issuer_ca_expiry_timestamp_seconds",
        ] {
            assert!(
                !text.contains(&format!("{gauge}{{{CLUSTER}}}")),
                "{gauge} still reported for the forgotten issuer:\n{text}"
            );
            assert!(text.contains(&format!("{gauge}{{{NAMESPACED}}}")));
        }
        assert!(text.contains(&format!(
            r#"certwright_certificate_requests_total{{{CLUSTER},resource="CertificateRequest",result="issued"}} 1"#
        )));
    }

    #[test]
    fn a_loop_reports_looks_under_way_retries_and_durations() {
        let metrics = Metrics::new();
        let csr = metrics.queue(QUEUE_CSRS);
        let q = r#"queue="certificatesigningrequests""#;
        let first = csr.look();
        let second = csr.look();
        assert_line(
            &lines(&metrics),
            &format!("certwright_workqueue_in_flight{{{q}}} 2"),
        );
        drop(first);
        csr.retried();
        let text = lines(&metrics);
        assert_line(&text, &format!("certwright_workqueue_in_flight{{{q}}} 1"));
        assert_line(
            &text,
            &format!("certwright_workqueue_retries_total{{{q}}} 1"),
        );
        assert_line(
            &text,
            &format!("certwright_workqueue_work_duration_seconds_count{{{q}}} 1"),
        );
        drop(second);
        let text = lines(&metrics);
        assert_line(&text, &format!("certwright_workqueue_in_flight{{{q}}} 0"));
        assert_line(
            &text,
            &format!("certwright_workqueue_work_duration_seconds_count{{{q}}} 2"),
        );
        // A scheduler that does not tell its depth or wait gets no series for them.
        let text = text.join("\n");
        for absent in [
            "workqueue_depth",
            "workqueue_adds",
            "workqueue_queue_duration",
        ] {
            assert!(!text.contains(absent), "{absent}:\n{text}");
        }
    }
}
