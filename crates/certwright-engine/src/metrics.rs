//! certwright's Prometheus metrics, prefixed `certwright_`, kept in their own registry
//! that the binary serves on `:9402/metrics`. The engine records through [`Metrics`];
//! issuer labels read `InternalClusterIssuer/<name>` or `InternalIssuer/<ns>/<name>`.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `resource` label of a cert-manager CertificateRequest.
pub const RESOURCE_REQUEST: &str = "CertificateRequest";
/// The `resource` label of a Kubernetes CertificateSigningRequest.
pub const RESOURCE_CSR: &str = "CertificateSigningRequest";
/// The `resource` label of an issuer's own health check.
pub const RESOURCE_ISSUER: &str = "Issuer";

/// Bucket bounds of `certwright_signing_duration_seconds`: 5ms to 60s.
const SIGNING_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bucket bounds of `certwright_approval_to_ready_seconds`: 1ms to 60s.
const APPROVAL_TO_READY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SigningLabels {
    issuer: String,
    resource: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendCallLabels {
    issuer: String,
    resource: String,
    backend: String,
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    issuer: String,
    resource: String,
    result: String,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn signing_histogram() -> Histogram {
    Histogram::new(SIGNING_BUCKETS)
}

fn approval_to_ready_histogram() -> Histogram {
    Histogram::new(APPROVAL_TO_READY_BUCKETS)
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
    pending: Family<IssuerLabels, Gauge>,
    issuer_ready: Family<IssuerLabels, Gauge>,
    breaker_state: Family<IssuerLabels, Gauge>,
    approval_to_ready: HistogramFamily<IssuerLabels>,
    cached_requests: Gauge,
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

fn issuer_labels(issuer: &str) -> IssuerLabels {
    IssuerLabels {
        issuer: issuer.to_owned(),
    }
}

impl Metrics {
    /// Every certwright metric, registered in a new registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("certwright");
        let signing_duration: HistogramFamily<SigningLabels> =
            Family::new_with_constructor(signing_histogram);
        let backend_calls = Family::<BackendCallLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let pending = Family::<IssuerLabels, Gauge>::default();
        let issuer_ready = Family::<IssuerLabels, Gauge>::default();
        let breaker_state = Family::<IssuerLabels, Gauge>::default();
        let approval_to_ready: HistogramFamily<IssuerLabels> =
            Family::new_with_constructor(approval_to_ready_histogram);

        registry.register_with_unit(
            "signing_duration",
            "Latency of backend sign and poll calls, by issuer and outcome",
            Unit::Seconds,
            signing_duration.clone(),
        );
        registry.register(
            "backend_calls",
            "Calls to PKI backends, by issuer, backend, operation (sign, poll, check) and outcome",
            backend_calls.clone(),
        );
        registry.register(
            "certificate_requests",
            "CertificateRequests that reached a final state, by issuer and result (issued, failed, denied)",
            requests.clone(),
        );
        registry.register(
            "pending_requests",
            "Approved CertificateRequests waiting for their certificate, by issuer",
            pending.clone(),
        );
        registry.register(
            "issuer_ready",
            "Whether the issuer's Ready condition is True (1) or not (0)",
            issuer_ready.clone(),
        );
        registry.register(
            "circuit_breaker_state",
            "State of the issuer's circuit breaker: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        registry.register_with_unit(
            "approval_to_ready",
            "Time from a CertificateRequest's approval to its Ready condition being written",
            Unit::Seconds,
            approval_to_ready.clone(),
        );

        let cached_requests = Gauge::default();
        registry.register(
            "cached_requests",
            "CertificateRequests the engine holds in memory (approved or denied, not yet final)",
            cached_requests.clone(),
        );

        Metrics {
            inner: Arc::new(Inner {
                cached_requests,
                registry,
                signing_duration,
                backend_calls,
                requests,
                pending,
                issuer_ready,
                breaker_state,
                approval_to_ready,
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

    /// Records the latency of one backend sign or poll call in
    /// `certwright_signing_duration_seconds{issuer,resource,outcome}`; `resource` is
    /// [`RESOURCE_REQUEST`] or [`RESOURCE_CSR`].
    pub fn observe_signing(&self, issuer: &str, resource: &str, outcome: &str, seconds: f64) {
        self.inner
            .signing_duration
            .get_or_create(&SigningLabels {
                issuer: issuer.to_owned(),
                resource: resource.to_owned(),
                outcome: outcome.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts one backend call in
    /// `certwright_backend_calls_total{issuer,resource,backend,operation,outcome}`;
    /// `resource` is [`RESOURCE_REQUEST`], [`RESOURCE_CSR`] or [`RESOURCE_ISSUER`] (health
    /// checks); `operation` is
    /// `sign`, `poll` or `check`, `outcome` is `success`, `pending` or the error's metric
    /// label.
    pub fn backend_call(
        &self,
        issuer: &str,
        resource: &str,
        backend: &str,
        operation: &str,
        outcome: &str,
    ) {
        self.inner
            .backend_calls
            .get_or_create(&BackendCallLabels {
                issuer: issuer.to_owned(),
                resource: resource.to_owned(),
                backend: backend.to_owned(),
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one CertificateRequest or Kubernetes CSR that reached a final state in
    /// `certwright_certificate_requests_total{issuer,resource,result}`; `result` is
    /// `issued`, `failed` or `denied`.
    pub fn request_finished(&self, issuer: &str, resource: &str, result: &str) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                issuer: issuer.to_owned(),
                resource: resource.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Sets `certwright_cached_requests`: the requests the engine holds in memory.
    pub fn set_cached_requests(&self, count: i64) {
        self.inner.cached_requests.set(count);
    }

    /// Sets `certwright_pending_requests{issuer}`.
    pub fn set_pending(&self, issuer: &str, count: i64) {
        self.inner
            .pending
            .get_or_create(&issuer_labels(issuer))
            .set(count);
    }

    /// Sets `certwright_issuer_ready{issuer}` to 1 or 0.
    pub fn set_issuer_ready(&self, issuer: &str, ready: bool) {
        self.inner
            .issuer_ready
            .get_or_create(&issuer_labels(issuer))
            .set(i64::from(ready));
    }

    /// Sets `certwright_circuit_breaker_state{issuer}`: 0 closed, 1 half-open, 2 open
    /// (see [`BreakerState::metric_value`](crate::protection::BreakerState::metric_value)).
    pub fn set_breaker_state(&self, issuer: &str, state: i64) {
        self.inner
            .breaker_state
            .get_or_create(&issuer_labels(issuer))
            .set(state);
    }

    /// Records in `certwright_approval_to_ready_seconds{issuer}` the time from the
    /// Approved condition's `lastTransitionTime` to the Ready condition being written.
    pub fn observe_approval_to_ready(&self, issuer: &str, seconds: f64) {
        self.inner
            .approval_to_ready
            .get_or_create(&issuer_labels(issuer))
            .observe(seconds);
    }

    /// Drops the issuer's gauge series (pending requests, ready, breaker state) once the
    /// issuer is deleted. Counters and histograms are kept: they are few per issuer and
    /// dropping them would hide increases from a scrape that missed the last ones.
    pub fn forget_issuer(&self, issuer: &str) {
        let labels = issuer_labels(issuer);
        self.inner.pending.remove(&labels);
        self.inner.issuer_ready.remove(&labels);
        self.inner.breaker_state.remove(&labels);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CLUSTER: &str = "InternalClusterIssuer/corp-adcs";
    const NAMESPACED: &str = "InternalIssuer/apps/corp";

    fn lines(metrics: &Metrics) -> Vec<String> {
        metrics
            .encode()
            .unwrap()
            .lines()
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
    fn metrics_are_send_sync_and_clone() {
        fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
        assert_send_sync_clone::<Metrics>();
    }

    #[test]
    fn a_fresh_registry_shows_only_the_cache_size() {
        // Families without series are not encoded; the cache gauge always has one.
        assert_eq!(
            Metrics::new().encode().unwrap(),
            "# HELP certwright_cached_requests CertificateRequests the engine holds in memory (approved or denied, not yet final).\n\
             # TYPE certwright_cached_requests gauge\n\
             certwright_cached_requests 0\n\
             # EOF\n"
        );
    }

    #[test]
    fn families_have_prefixed_names_types_and_units() {
        let metrics = Metrics::new();
        metrics.observe_signing(CLUSTER, RESOURCE_REQUEST, "success", 1.0);
        metrics.backend_call(CLUSTER, RESOURCE_REQUEST, "adcs", "sign", "success");
        metrics.request_finished(CLUSTER, RESOURCE_REQUEST, "issued");
        metrics.set_pending(CLUSTER, 0);
        metrics.set_issuer_ready(CLUSTER, true);
        metrics.set_breaker_state(CLUSTER, 0);
        metrics.observe_approval_to_ready(CLUSTER, 1.0);
        let text = metrics.encode().unwrap();
        assert!(text.ends_with("# EOF\n"));
        for family in [
            "# TYPE certwright_signing_duration_seconds histogram",
            "# UNIT certwright_signing_duration_seconds seconds",
            "# TYPE certwright_backend_calls counter",
            "# TYPE certwright_certificate_requests counter",
            "# TYPE certwright_pending_requests gauge",
            "# TYPE certwright_issuer_ready gauge",
            "# TYPE certwright_circuit_breaker_state gauge",
            "# TYPE certwright_approval_to_ready_seconds histogram",
            "# UNIT certwright_approval_to_ready_seconds seconds",
        ] {
            assert!(text.contains(family), "missing {family:?} in:\n{text}");
        }
    }

    #[test]
    fn counters_have_total_suffix_and_labels() {
        let metrics = Metrics::new();
        metrics.backend_call(CLUSTER, RESOURCE_REQUEST, "adcs", "sign", "success");
        metrics.backend_call(CLUSTER, RESOURCE_REQUEST, "adcs", "sign", "success");
        metrics.backend_call(CLUSTER, RESOURCE_REQUEST, "adcs", "poll", "pending");
        metrics.backend_call(NAMESPACED, RESOURCE_ISSUER, "ca", "check", "transient");
        metrics.request_finished(CLUSTER, RESOURCE_REQUEST, "issued");
        metrics.request_finished(NAMESPACED, RESOURCE_REQUEST, "denied");
        metrics.request_finished(NAMESPACED, RESOURCE_REQUEST, "denied");
        let lines = lines(&metrics);
        assert_line(
            &lines,
            r#"certwright_backend_calls_total{issuer="InternalClusterIssuer/corp-adcs",resource="CertificateRequest",backend="adcs",operation="sign",outcome="success"} 2"#,
        );
        assert_line(
            &lines,
            r#"certwright_backend_calls_total{issuer="InternalClusterIssuer/corp-adcs",resource="CertificateRequest",backend="adcs",operation="poll",outcome="pending"} 1"#,
        );
        assert_line(
            &lines,
            r#"certwright_backend_calls_total{issuer="InternalIssuer/apps/corp",resource="Issuer",backend="ca",operation="check",outcome="transient"} 1"#,
        );
        assert_line(
            &lines,
            r#"certwright_certificate_requests_total{issuer="InternalClusterIssuer/corp-adcs",resource="CertificateRequest",result="issued"} 1"#,
        );
        assert_line(
            &lines,
            r#"certwright_certificate_requests_total{issuer="InternalIssuer/apps/corp",resource="CertificateRequest",result="denied"} 2"#,
        );
    }

    #[test]
    fn gauges_report_last_value() {
        let metrics = Metrics::new();
        metrics.set_pending(CLUSTER, 7);
        metrics.set_pending(CLUSTER, 3);
        metrics.set_issuer_ready(CLUSTER, true);
        metrics.set_issuer_ready(NAMESPACED, false);
        metrics.set_breaker_state(CLUSTER, 2);
        let lines = lines(&metrics);
        assert_line(
            &lines,
            r#"certwright_pending_requests{issuer="InternalClusterIssuer/corp-adcs"} 3"#,
        );
        assert_line(
            &lines,
            r#"certwright_issuer_ready{issuer="InternalClusterIssuer/corp-adcs"} 1"#,
        );
        assert_line(
            &lines,
            r#"certwright_issuer_ready{issuer="InternalIssuer/apps/corp"} 0"#,
        );
        assert_line(
            &lines,
            r#"certwright_circuit_breaker_state{issuer="InternalClusterIssuer/corp-adcs"} 2"#,
        );
    }

    #[test]
    fn signing_histogram_buckets_from_5ms_to_60s() {
        let metrics = Metrics::new();
        metrics.observe_signing(CLUSTER, RESOURCE_REQUEST, "success", 0.2);
        metrics.observe_signing(CLUSTER, RESOURCE_REQUEST, "success", 45.0);
        metrics.observe_signing(CLUSTER, RESOURCE_REQUEST, "transient", 0.001);
        let lines = lines(&metrics);
        let series = r#"issuer="InternalClusterIssuer/corp-adcs",resource="CertificateRequest",outcome="success""#;
        assert_line(
            &lines,
            &format!("certwright_signing_duration_seconds_sum{{{series}}} 45.2"),
        );
        assert_line(
            &lines,
            &format!("certwright_signing_duration_seconds_count{{{series}}} 2"),
        );
        assert_line(
            &lines,
            &format!(r#"certwright_signing_duration_seconds_bucket{{le="0.005",{series}}} 0"#),
        );
        assert_line(
            &lines,
            &format!(r#"certwright_signing_duration_seconds_bucket{{le="0.25",{series}}} 1"#),
        );
        assert_line(
            &lines,
            &format!(r#"certwright_signing_duration_seconds_bucket{{le="30.0",{series}}} 1"#),
        );
        assert_line(
            &lines,
            &format!(r#"certwright_signing_duration_seconds_bucket{{le="60.0",{series}}} 2"#),
        );
        assert_line(
            &lines,
            &format!(r#"certwright_signing_duration_seconds_bucket{{le="+Inf",{series}}} 2"#),
        );
        assert_line(
            &lines,
            r#"certwright_signing_duration_seconds_bucket{le="0.005",issuer="InternalClusterIssuer/corp-adcs",resource="CertificateRequest",outcome="transient"} 1"#,
        );
        let buckets = lines
            .iter()
            .filter(|l| {
                l.starts_with("certwright_signing_duration_seconds_bucket") && l.contains(series)
            })
            .count();
        assert_eq!(buckets, SIGNING_BUCKETS.len() + 1);
    }

    #[test]
    fn approval_to_ready_histogram_buckets_from_1ms_to_60s() {
        let metrics = Metrics::new();
        metrics.observe_approval_to_ready(NAMESPACED, 0.0005);
        metrics.observe_approval_to_ready(NAMESPACED, 2.0);
        let lines = lines(&metrics);
        let series = r#"issuer="InternalIssuer/apps/corp""#;
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
        for issuer in [CLUSTER, NAMESPACED] {
            metrics.set_pending(issuer, 1);
            metrics.set_issuer_ready(issuer, true);
            metrics.set_breaker_state(issuer, 0);
        }
        metrics.request_finished(CLUSTER, RESOURCE_REQUEST, "issued");
        metrics.forget_issuer(CLUSTER);
        let text = metrics.encode().unwrap();
        for gauge in [
            "certwright_pending_requests",
            "certwright_issuer_ready",
            "certwright_circuit_breaker_state",
        ] {
            assert!(
                !text.contains(&format!(r#"{gauge}{{issuer="{CLUSTER}"}}"#)),
                "{gauge} still reported for the forgotten issuer:\n{text}"
            );
            assert!(text.contains(&format!(r#"{gauge}{{issuer="{NAMESPACED}"}}"#)));
        }
        assert!(text.contains(
            r#"certwright_certificate_requests_total{issuer="InternalClusterIssuer/corp-adcs",resource="CertificateRequest",result="issued"} 1"#
        ));
    }
}
