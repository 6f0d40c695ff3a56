//! Calls to an issuer's PKI seen from the issuer's side: each call counted in the
//! metrics, the health check, the confirmation that a refusal is the issuer's before
//! the shared issuer is marked not Ready, and the circuit breaker's state reflected
//! in the issuer's status.

use std::sync::Arc;
use std::time::Duration;

use certwright_backend_ca::CaFault;
use certwright_pki::Outcome;
use tracing::{debug, info};

use super::{
    Health, IssuerEntry, IssuerKey, IssuerReason, check_health, circuit_open, tell_unless_own,
};
use crate::engine::Shared;
use crate::issuers::checks::CHECK_TIMEOUT;
use crate::metrics::{Call, RESOURCE_ISSUER};
use crate::protection::{BreakerState, CallOutcome};
use crate::requests::decide::Plan;

impl Shared {
    /// Counts one sign, poll or recover call in the metrics, by its outcome.
    pub(crate) fn count_call(
        &self,
        issuer: &IssuerKey,
        resource: &str,
        backend: &str,
        operation: &str,
        result: &Result<Outcome, certwright_pki::Error>,
        started: std::time::Instant,
    ) {
        let outcome = match result {
            Ok(Outcome::Issued(_)) => "success",
            Ok(_) => "pending",
            Err(e) => e.metric_label(),
        };
        let call = Call {
            issuer: &self.issuer_metric(issuer),
            backend,
            resource,
            operation,
            outcome,
        };
        self.metrics
            .backend_call(&call, Some(started.elapsed().as_secs_f64()));
        debug!(operation, outcome, "PKI answered");
    }

    /// The backend's health check within `timeout`, counted in the metrics.
    pub(crate) async fn health_check(
        &self,
        issuer: &IssuerKey,
        backend: &Arc<dyn certwright_pki::Backend>,
        timeout: Duration,
    ) -> Result<Result<certwright_pki::Health, certwright_pki::Error>, tokio::time::error::Elapsed>
    {
        let result = tokio::time::timeout(timeout, backend.check()).await;
        let call = Call {
            issuer: &self.issuer_metric(issuer),
            backend: backend.kind(),
            resource: RESOURCE_ISSUER,
            operation: "check",
            outcome: match &result {
                Ok(Ok(_)) => "success",
                Ok(Err(e)) => e.metric_label(),
                Err(_) => "transient",
            },
        };
        self.metrics.backend_call(&call, None);
        result
    }

    /// One request's refusal looked like the issuer's (unauthorized, misconfigured): the
    /// issuer's own health check decides whose it is before the issuer, shared by other
    /// requests and teams, is marked not Ready. A healthy check makes it the request's
    /// (its template override, a profile refused for it), which fails alone.
    pub(crate) async fn confirm_issuer_fault(
        &self,
        issuer: &IssuerKey,
        entry: &IssuerEntry,
        backend: &Arc<dyn certwright_pki::Backend>,
        plan: Plan,
    ) -> Plan {
        match self.health_check(issuer, backend, CHECK_TIMEOUT).await {
            Ok(Ok(_)) => {
                info!(issuer = %self.issuer_label(issuer), "the issuer's health check passed: the refusal was this request's");
                plan.request_scoped()
            }
            Ok(Err(e)) if e.is_issuer_fault() => {
                let fault = CaFault::of(&e);
                let health = check_health(&tell_unless_own(entry, e, fault), fault);
                plan.issuer_confirmed(health.reason, health.message)
            }
            _ => plan.issuer_unconfirmed(self.config.retry.max),
        }
    }

    /// Keeps the issuer's condition in step with its breaker: CircuitOpen while it is
    /// open, Verified again once a call succeeds.
    pub(crate) async fn reflect_breaker(
        &self,
        issuer: &IssuerKey,
        entry: &IssuerEntry,
        outcome: CallOutcome,
    ) {
        let state = entry.protection.breaker();
        self.metrics
            .set_breaker_state(&self.issuer_metric(issuer), state.metric_value());
        let current = entry.health();
        let next = match (state, outcome) {
            (BreakerState::Open { .. }, _) => circuit_open(),
            (BreakerState::Closed, CallOutcome::Success)
                if matches!(
                    current.reason,
                    IssuerReason::Unreachable | IssuerReason::CircuitOpen
                ) =>
            {
                Health {
                    reason: IssuerReason::Verified,
                    message: "The PKI answers again".to_string(),
                }
            }
            _ => return,
        };
        if entry.set_health(next) {
            self.report_issuer(issuer, entry).await;
        }
    }
}
