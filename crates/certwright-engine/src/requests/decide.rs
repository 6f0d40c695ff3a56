//! The CertificateRequest flow as pure functions: [`decide`] reads a request and its
//! issuer and says what to do; [`plan`] turns what the PKI answered into the status to
//! write, the annotation to persist first, the event, and when to look again. Time comes
//! in as an argument, so every row of the flow is testable without I/O or sleeping.
//!
//! One file because it is one decision table, `decide` then `plan`, with one unit test
//! per row beside it (a third of the file).

use std::time::Duration;

use certwright_api::certificate_request::{REASON_FAILED, REASON_ISSUED, REASON_PENDING};
use certwright_api::{ConditionStatus, PENDING_ID_ANNOTATION, RequestConditions, format_duration};
use certwright_pki::{Error as PkiError, IssuedBundle, Outcome};

use crate::cached::CachedRequest;
use crate::issuers::IssuerReason;
use crate::protection::{CallOutcome, DeferReason, Deferred};

/// What the engine knows of the issuer a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IssuerState<'a> {
    /// No such issuer (yet).
    Missing,
    /// The issuer exists but cannot sign; `message` says why.
    NotReady {
        /// What is wrong, for the request's condition.
        message: &'a str,
    },
    /// The issuer can sign.
    Ready,
}

/// What a request needs, decided from the cached request alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not ours, terminal, or not yet approved: nothing to do until it changes.
    Nothing,
    /// Denied by an approver: write Ready=False reason Denied and the failure time.
    Deny,
    /// Write Ready=False reason Pending with this message; look again when the issuer
    /// changes.
    WaitForIssuer {
        /// Which issuer, and why it cannot sign.
        message: String,
    },
    /// Submit the CSR to the PKI.
    Sign,
    /// The CA holds this request: ask about it, never resubmit.
    Poll {
        /// The CA's id, from the `pki.certwright.io/pending-id` annotation.
        id: String,
    },
}

/// Decides what a request needs, following the flow table of docs/engine.md ("Decide,
/// then apply") row by row.
pub(crate) fn decide(request: &CachedRequest, group: &str, issuer: IssuerState<'_>) -> Decision {
    let conditions = request.conditions();
    if request.spec.issuer_ref.group != group {
        return Decision::Nothing;
    }
    // Ready=True, or Ready=False Failed/Denied: terminal, never signed (again).
    if conditions.is_terminal() {
        return Decision::Nothing;
    }
    if conditions.is_denied() {
        return Decision::Deny;
    }
    // Approval arrives later as a status change, which the watch delivers.
    if !conditions.is_approved() {
        return Decision::Nothing;
    }
    let issuer_name = issuer_display(request);
    match issuer {
        IssuerState::Missing => Decision::WaitForIssuer {
            message: format!("Waiting for {issuer_name}: it does not exist"),
        },
        IssuerState::NotReady { message } => Decision::WaitForIssuer {
            message: format!("Waiting for {issuer_name} to be Ready: {message}"),
        },
        IssuerState::Ready => match request.annotation(PENDING_ID_ANNOTATION) {
            Some(id) if !id.is_empty() => Decision::Poll { id: id.to_string() },
            _ => Decision::Sign,
        },
    }
}

/// `InternalClusterIssuer corp` or `InternalIssuer apps/corp`.
pub(crate) fn issuer_display(request: &CachedRequest) -> String {
    let r = &request.spec.issuer_ref;
    if r.kind.ends_with("ClusterIssuer") {
        format!("{} {}", r.kind, r.name)
    } else {
        let ns = request.metadata.namespace.as_deref().unwrap_or_default();
        format!("{} {ns}/{}", r.kind, r.name)
    }
}

/// How a signing attempt ended, before it is written anywhere.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "short-lived: built and consumed within one reconcile"
)]
pub(crate) enum Attempt {
    /// The PKI answered (or failed to).
    Answered(Result<Outcome, PkiError>),
    /// The issuer's protection asked us to come back later.
    Deferred(Deferred),
    /// The request itself cannot be signed: malformed or oversized CSR, bad duration,
    /// a template override the issuer does not allow.
    Invalid(String),
    /// A submission may have reached the CA and its answer never arrived, and the CA
    /// cannot be asked what became of it: submitting again could make a second
    /// certificate. Says what the operator should look for.
    Unrecoverable(String),
    /// A recorded submission may still be on its way into the CA: ask again after this.
    Recovering(Duration),
}

/// When to look at the request again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Requeue {
    /// Never: the request is terminal.
    Never,
    /// After this delay.
    After(Duration),
    /// When the issuer changes; the delay is a backstop.
    IssuerChange(Duration),
}

/// The Ready condition and the rest of the status to write.
#[derive(Clone, Debug)]
pub(crate) struct StatusChange {
    /// Ready's status.
    pub ready: ConditionStatus,
    /// Ready's reason: Issued, Pending, Failed or Denied.
    pub reason: &'static str,
    /// Ready's message.
    pub message: String,
    /// Also set `InvalidRequest=True`.
    pub invalid_request: bool,
    /// Set `failureTime`.
    pub failed: bool,
    /// `status.certificate` and `status.ca`.
    pub issued: Option<IssuedBundle>,
}

impl StatusChange {
    /// Ready=False reason Pending with `message`.
    pub(crate) fn pending(message: String) -> Self {
        StatusChange {
            ready: ConditionStatus::False,
            reason: REASON_PENDING,
            message,
            invalid_request: false,
            failed: false,
            issued: None,
        }
    }

    fn failed(message: String, invalid_request: bool) -> Self {
        StatusChange {
            ready: ConditionStatus::False,
            reason: REASON_FAILED,
            message,
            invalid_request,
            failed: true,
            issued: None,
        }
    }
}

/// What an attempt came to, as backoff and the retry deadline count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum AttemptOutcome {
    /// Signed.
    Issued,
    /// Held by the CA, to be polled.
    Pending,
    /// The PKI is unavailable for now.
    Transient,
    /// The PKI asked for a slower pace.
    RateLimited,
    /// The PKI answered something unusable.
    InvalidResponse,
    /// The CA refused the request.
    Rejected,
    /// The PKI refused the issuer's credentials.
    Unauthorized,
    /// The issuer's configuration cannot work.
    Misconfigured,
    /// The answer to a submission was lost, or what became of it cannot be found out.
    AnswerLost,
    /// Held back by the issuer's protection (its rate limit, an open breaker).
    Deferred,
    /// Waiting for its issuer.
    Waiting,
    /// The request itself cannot be signed.
    InvalidRequest,
    /// The CA is being asked what became of an earlier submission.
    Recovering,
    /// Denied by an approver.
    Denied,
}

impl AttemptOutcome {
    /// The class of an error the PKI answered with.
    pub(crate) fn of_error(error: &PkiError) -> AttemptOutcome {
        match error {
            PkiError::Transient { .. } => AttemptOutcome::Transient,
            PkiError::RateLimited { .. } => AttemptOutcome::RateLimited,
            PkiError::InvalidResponse { .. } => AttemptOutcome::InvalidResponse,
            PkiError::Rejected { .. } => AttemptOutcome::Rejected,
            PkiError::Unauthorized { .. } => AttemptOutcome::Unauthorized,
            PkiError::Misconfigured { .. } => AttemptOutcome::Misconfigured,
            PkiError::AnswerLost { .. } => AttemptOutcome::AnswerLost,
            // A class this version does not know is retried, as a transient error is.
            _ => AttemptOutcome::Transient,
        }
    }

    /// A low-cardinality label (`issued`, `rate_limited`, ...).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Issued => "issued",
            AttemptOutcome::Pending => "pending",
            AttemptOutcome::Transient => "transient",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::InvalidResponse => "invalid_response",
            AttemptOutcome::Rejected => "rejected",
            AttemptOutcome::Unauthorized => "unauthorized",
            AttemptOutcome::Misconfigured => "misconfigured",
            AttemptOutcome::AnswerLost => "answer_lost",
            AttemptOutcome::Deferred => "deferred",
            AttemptOutcome::Waiting => "waiting",
            AttemptOutcome::InvalidRequest => "invalid_request",
            AttemptOutcome::Recovering => "recovering",
            AttemptOutcome::Denied => "denied",
        }
    }

    /// Whether it counts as a failed attempt for backoff: holding back for the issuer's
    /// protection, or waiting for the issuer, does not.
    pub(crate) fn counts_as_attempt(self) -> bool {
        !matches!(self, AttemptOutcome::Deferred | AttemptOutcome::Waiting)
    }

    /// Whether it is a failing call that is retried, which the retry deadline ends.
    pub(crate) fn is_retried_failure(self) -> bool {
        matches!(
            self,
            AttemptOutcome::Transient
                | AttemptOutcome::RateLimited
                | AttemptOutcome::InvalidResponse
        )
    }
}

/// Why the engine emits an Event about a signing request (a cert-manager
/// CertificateRequest or a Kubernetes CSR), and the `Failed` reason of a refused CSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub(crate) enum EventReason {
    /// `Issued`: the certificate was issued (a warning when shorter than asked).
    Issued,
    /// `CAPending`: the CA holds the request for its own approval.
    CaPending,
    /// `AwaitingCA`: a request the CA holds is polled again later.
    AwaitingCa,
    /// `UnknownOutcome`: the CA answered in a way that says neither issued nor refused.
    UnknownOutcome,
    /// `AnswerLost`: the call may have reached the CA but its answer was lost; the CA is asked before any new submission.
    AnswerLost,
    /// `SubmissionUnknown`: a lost submission's fate cannot be learnt from the CA: the request fails rather than risk a second certificate.
    SubmissionUnknown,
    /// `Rejected`: the CA refused the request.
    Rejected,
    /// `InvalidRequest`: the request itself cannot be signed (its CSR, duration, usages or template).
    InvalidRequest,
    /// `IssuerNotReady`: the issuer is at fault (credentials, configuration) and not Ready.
    IssuerNotReady,
    /// `Retrying`: a transient failure; tried again after a backoff.
    Retrying,
    /// `Throttled`: the CA asked certwright to slow down.
    Throttled,
    /// `RetriesExhausted`: failures went on past the retry deadline.
    RetriesExhausted,
    /// `Denied`: an approver denied the request.
    Denied,
    /// `WaitingForIssuer`: the issuer is missing or not Ready.
    WaitingForIssuer,
    /// `IssuerNotFound`: (Kubernetes CSRs) the signer names no issuer.
    IssuerNotFound,
    /// `SignerNameInvalid`: (Kubernetes CSRs) the signer name is not one of certwright's.
    SignerNameInvalid,
    /// `SignerDisabled`: (Kubernetes CSRs) the issuer opted out of Kubernetes CSRs.
    SignerDisabled,
    /// `RequesterNotPermitted`: (Kubernetes CSRs) the requester may not use the namespaced issuer.
    RequesterNotPermitted,
    /// `CertificateRefused`: (Kubernetes CSRs) the API server refused to store the issued certificate.
    CertificateRefused,
    /// `StatusWriteForbidden`: (Kubernetes CSRs) the controller may not write the CSR's status.
    StatusWriteForbidden,
}

impl EventReason {
    /// The reason as Kubernetes shows it (PascalCase).
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            EventReason::Issued => "Issued",
            EventReason::CaPending => "CAPending",
            EventReason::AwaitingCa => "AwaitingCA",
            EventReason::UnknownOutcome => "UnknownOutcome",
            EventReason::AnswerLost => "AnswerLost",
            EventReason::SubmissionUnknown => "SubmissionUnknown",
            EventReason::Rejected => "Rejected",
            EventReason::InvalidRequest => "InvalidRequest",
            EventReason::IssuerNotReady => "IssuerNotReady",
            EventReason::Retrying => "Retrying",
            EventReason::Throttled => "Throttled",
            EventReason::RetriesExhausted => "RetriesExhausted",
            EventReason::Denied => "Denied",
            EventReason::WaitingForIssuer => "WaitingForIssuer",
            EventReason::IssuerNotFound => "IssuerNotFound",
            EventReason::SignerNameInvalid => "SignerNameInvalid",
            EventReason::SignerDisabled => "SignerDisabled",
            EventReason::RequesterNotPermitted => "RequesterNotPermitted",
            EventReason::CertificateRefused => "CertificateRefused",
            EventReason::StatusWriteForbidden => "StatusWriteForbidden",
        }
    }
}

/// Everything to do after an attempt, in order: persist the pending id, write the
/// status, emit the event, tell the issuer, requeue.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// A CA-side pending id to persist on the request before anything else.
    pub pending_id: Option<String>,
    /// The status to write.
    pub status: StatusChange,
    /// Event reason and whether it is a warning; the message is the status message.
    pub event: (EventReason, bool),
    /// When the issuer, not the request, is at fault: its Ready reason and message.
    pub issuer_fault: Option<(IssuerReason, String)>,
    /// What the circuit breaker should learn from this attempt.
    pub breaker: CallOutcome,
    /// What the attempt came to.
    pub outcome: AttemptOutcome,
    /// When to look again.
    pub requeue: Requeue,
}

/// Exponential backoff between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delays from `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max }
    }

    /// The delay after `attempt` failed attempts (counting from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.min
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .max(self.min)
    }
}

impl Plan {
    /// A retry past the request's deadline gives up: a request whose call to the PKI
    /// still fails for a retryable reason (the PKI down, its own rate limit, unreadable
    /// answers) `max` after `since` fails with a `failureTime`, so that cert-manager's own
    /// backoff and alerts take over. A request the CA holds for approval, one whose
    /// answer was lost (its fate is being asked), one waiting for its issuer, and one
    /// the issuer's own protection holds back (a backlog under `requestsPerSecond`, an
    /// open breaker) are not failing calls and wait on.
    #[must_use]
    pub(crate) fn with_retry_deadline(
        self,
        since: jiff::Timestamp,
        now: jiff::Timestamp,
        max: Option<Duration>,
    ) -> Plan {
        let Some(max) = max else { return self };
        let retrying = self.outcome.is_retried_failure();
        let elapsed = now.as_second().saturating_sub(since.as_second());
        let limit = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
        if !retrying || self.requeue == Requeue::Never || elapsed < limit {
            return self;
        }
        let message = format!(
            "Gave up after retrying for {} (the maximum retry duration): {}",
            format_duration(max),
            self.status.message
        );
        Plan {
            pending_id: None,
            status: StatusChange::failed(message, false),
            event: (EventReason::RetriesExhausted, true),
            issuer_fault: None,
            requeue: Requeue::Never,
            ..self
        }
    }

    /// Whether this plan counts as a failed attempt for backoff (deferrals and
    /// waiting for the issuer do not).
    pub(crate) fn counts_as_attempt(&self) -> bool {
        self.outcome.counts_as_attempt()
    }
}

/// The plan for a request an approver denied.
pub(crate) fn plan_denied() -> Plan {
    Plan {
        pending_id: None,
        status: StatusChange {
            ready: ConditionStatus::False,
            reason: certwright_api::certificate_request::REASON_DENIED,
            message: "The CertificateRequest was denied by an approver".to_string(),
            invalid_request: false,
            failed: true,
            issued: None,
        },
        event: (EventReason::Denied, true),
        issuer_fault: None,
        breaker: CallOutcome::Neutral,
        outcome: AttemptOutcome::Denied,
        requeue: Requeue::Never,
    }
}

/// The plan for a request whose issuer is missing or not usable.
pub(crate) fn plan_waiting(message: String) -> Plan {
    Plan {
        pending_id: None,
        status: StatusChange::pending(message),
        event: (EventReason::WaitingForIssuer, false),
        issuer_fault: None,
        breaker: CallOutcome::Neutral,
        outcome: AttemptOutcome::Waiting,
        requeue: Requeue::IssuerChange(ISSUER_BACKSTOP),
    }
}

/// How long to wait for an issuer that is not ready before looking again anyway.
pub(crate) const ISSUER_BACKSTOP: Duration = Duration::from_secs(300);

fn plain(
    pending_id: Option<String>,
    status: StatusChange,
    event: (EventReason, bool),
    breaker: CallOutcome,
    outcome: AttemptOutcome,
    requeue: Requeue,
) -> Plan {
    Plan {
        pending_id,
        status,
        event,
        issuer_fault: None,
        breaker,
        outcome,
        requeue,
    }
}

impl Plan {
    /// A refusal that looked like the issuer's (unauthorized, misconfigured), but the
    /// issuer's own health check passed right after: the cause is this request's (its
    /// template override, a profile the CA refuses for it). The request fails; the
    /// issuer, which serves other requests, stays as it is.
    #[must_use]
    pub(crate) fn request_scoped(mut self) -> Plan {
        let Some((_, message)) = self.issuer_fault.take() else {
            return self;
        };
        self.status = StatusChange::failed(
            format!("The CA refused this request (its issuer is healthy): {message}"),
            false,
        );
        self.event = (EventReason::Rejected, true);
        self.requeue = Requeue::Never;
        self
    }

    /// A refusal that looked like the issuer's, confirmed by the issuer's own health
    /// check: the issuer's Ready condition says what the check found, so it never shows
    /// one request's details; the request waits for the issuer.
    #[must_use]
    pub(crate) fn issuer_confirmed(mut self, reason: IssuerReason, message: String) -> Plan {
        if self.issuer_fault.is_some() {
            self.issuer_fault = Some((reason, message));
        }
        self
    }

    /// A refusal that looked like the issuer's, which its health check could not confirm
    /// (the check itself failed to get an answer): the issuer is left as it is and the
    /// request tries again after `delay`.
    #[must_use]
    pub(crate) fn issuer_unconfirmed(mut self, delay: Duration) -> Plan {
        if self.issuer_fault.take().is_some() {
            self.requeue = Requeue::After(delay);
        }
        self
    }

    /// Says so when an issued certificate is shorter than the duration the request asked
    /// for (by more than a minute or 1%, so that a backdated notBefore or rounding does
    /// not count): the CA's own certificate ends sooner, or its profile or template caps
    /// lifetimes. The Ready message says it, and the Event becomes a warning, so that a
    /// certificate renewed far more often than planned is noticed.
    #[must_use]
    pub(crate) fn with_requested_duration(mut self, requested: Option<Duration>) -> Plan {
        let (Some(requested), Some(leaf)) = (
            requested,
            self.status.issued.as_ref().and_then(|b| b.leaf()),
        ) else {
            return self;
        };
        let lifetime = leaf.not_after().as_second() - leaf.not_before().as_second();
        let requested_secs = i64::try_from(requested.as_secs()).unwrap_or(i64::MAX);
        let slack = (requested_secs / 100).max(60);
        if lifetime.saturating_add(slack) >= requested_secs {
            return self;
        }
        let issued_for = Duration::from_secs(u64::try_from(lifetime.max(0)).unwrap_or(0));
        self.status.message = format!(
            "{}; shorter than the requested {}: the CA issued it for {} (its own certificate \
             ends sooner, or its profile or template caps lifetimes)",
            self.status.message,
            format_duration(requested),
            format_duration(issued_for)
        );
        self.event = (self.event.0, true);
        self
    }
}

/// Maps an attempt to exactly one plan: one match, one condition, one requeue decision.
/// `attempt` counts the failed attempts of this request so far, this one included;
/// `poll_interval` bounds how long a CA-side pending request waits between polls.
pub(crate) fn plan(
    outcome: Attempt,
    attempt: u32,
    backoff: Backoff,
    poll_interval: Duration,
) -> Plan {
    match outcome {
        Attempt::Answered(Ok(Outcome::Issued(bundle))) => {
            let message = bundle.leaf().map_or_else(
                || "Certificate issued".to_string(),
                |l| {
                    format!(
                        "Certificate issued: {} serial {}, valid until {}",
                        l.subject(),
                        l.serial_hex(),
                        l.not_after()
                    )
                },
            );
            let status = StatusChange {
                ready: ConditionStatus::True,
                reason: REASON_ISSUED,
                message,
                invalid_request: false,
                failed: false,
                issued: Some(bundle),
            };
            plain(
                None,
                status,
                (EventReason::Issued, false),
                CallOutcome::Success,
                AttemptOutcome::Issued,
                Requeue::Never,
            )
        }
        Attempt::Answered(Ok(Outcome::Pending(p))) => {
            let every = p.retry_after.min(poll_interval).max(Duration::from_secs(1));
            let message = format!(
                "Waiting for approval by the CA: request id {} (polling every {})",
                p.id,
                format_duration(every)
            );
            plain(
                Some(p.id),
                StatusChange::pending(message),
                (EventReason::CaPending, false),
                CallOutcome::Success,
                AttemptOutcome::Pending,
                Requeue::After(every),
            )
        }
        Attempt::Answered(Ok(other)) => {
            // Resubmitting could sign twice: fail the request, and say why.
            let message = format!(
                "The PKI answered something this version of certwright cannot handle ({other:?}); the request is not resubmitted"
            );
            plain(
                None,
                StatusChange::failed(message, false),
                (EventReason::UnknownOutcome, true),
                CallOutcome::Neutral,
                AttemptOutcome::InvalidResponse,
                Requeue::Never,
            )
        }
        Attempt::Answered(Err(e)) => {
            let label = AttemptOutcome::of_error(&e);
            match &e {
                PkiError::Rejected { .. } => plain(
                    None,
                    StatusChange::failed(e.to_string(), false),
                    (EventReason::Rejected, true),
                    CallOutcome::Neutral,
                    label,
                    Requeue::Never,
                ),
                PkiError::Unauthorized { .. } | PkiError::Misconfigured { .. } => {
                    let reason = if matches!(e, PkiError::Unauthorized { .. }) {
                        IssuerReason::Unauthorized
                    } else {
                        IssuerReason::InvalidSpec
                    };
                    Plan {
                        issuer_fault: Some((reason, e.to_string())),
                        ..plain(
                            None,
                            StatusChange::pending(format!(
                                "Waiting for the issuer to be fixed: {e}"
                            )),
                            (EventReason::IssuerNotReady, true),
                            CallOutcome::Neutral,
                            label,
                            Requeue::IssuerChange(ISSUER_BACKSTOP),
                        )
                    }
                }
                PkiError::AnswerLost { .. } => {
                    // Nothing is submitted again before the CA is asked.
                    let delay = backoff.delay(attempt);
                    plain(
                        None,
                        StatusChange::pending(format!(
                            "{e}; asking the CA what became of it in {}",
                            format_duration(delay)
                        )),
                        (EventReason::AnswerLost, true),
                        CallOutcome::Failure,
                        label,
                        Requeue::After(delay),
                    )
                }
                _ => {
                    // Transient, rate limited, invalid response: retry later, at the
                    // CA's requested time when it gave one.
                    let delay = e.retry_after().unwrap_or_else(|| backoff.delay(attempt));
                    let breaker = if e.trips_breaker() {
                        CallOutcome::Failure
                    } else {
                        CallOutcome::Neutral
                    };
                    plain(
                        None,
                        StatusChange::pending(format!(
                            "{e}; retrying in {}",
                            format_duration(delay)
                        )),
                        (EventReason::Retrying, true),
                        breaker,
                        label,
                        Requeue::After(delay),
                    )
                }
            }
        }
        Attempt::Deferred(Deferred {
            retry_after,
            reason,
        }) => {
            // Stable messages: a deferral repeated many times writes the status once.
            let message = match reason {
                DeferReason::RateLimited => {
                    "Waiting for the issuer's rate limit (requestsPerSecond)".to_string()
                }
                _ => "The PKI is failing; certwright paused calls to it (circuit breaker open) and retries automatically".to_string(),
            };
            plain(
                None,
                StatusChange::pending(message),
                (EventReason::Throttled, false),
                CallOutcome::Neutral,
                AttemptOutcome::Deferred,
                Requeue::After(retry_after.max(Duration::from_millis(10))),
            )
        }
        Attempt::Invalid(why) => plain(
            None,
            StatusChange::failed(why, true),
            (EventReason::InvalidRequest, true),
            CallOutcome::Neutral,
            AttemptOutcome::InvalidRequest,
            Requeue::Never,
        ),
        Attempt::Recovering(after) => {
            let after = after.max(Duration::from_secs(1));
            plain(
                None,
                StatusChange::pending(format!(
                    "An earlier submission of this request may still be reaching the CA; asking \
                     the CA what became of it in {}",
                    format_duration(after)
                )),
                (EventReason::AwaitingCa, false),
                CallOutcome::Neutral,
                AttemptOutcome::Recovering,
                Requeue::After(after),
            )
        }
        Attempt::Unrecoverable(why) => plain(
            None,
            StatusChange::failed(why, false),
            (EventReason::SubmissionUnknown, true),
            CallOutcome::Neutral,
            AttemptOutcome::AnswerLost,
            Requeue::Never,
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cached::{CachedSpec, CachedStatus};
    use certwright_api::{Condition, IssuerRef};
    use certwright_pki::PendingRequest;

    #[test]
    fn event_reasons_are_distinct_pascal_case_words() {
        use EventReason::*;
        let all = [
            Issued,
            CaPending,
            AwaitingCa,
            UnknownOutcome,
            AnswerLost,
            SubmissionUnknown,
            Rejected,
            InvalidRequest,
            IssuerNotReady,
            Retrying,
            Throttled,
            RetriesExhausted,
            Denied,
            WaitingForIssuer,
            IssuerNotFound,
            SignerNameInvalid,
            SignerDisabled,
            RequesterNotPermitted,
            CertificateRefused,
            StatusWriteForbidden,
        ];
        let words: std::collections::HashSet<&str> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(words.len(), all.len());
        for word in words {
            assert!(word.starts_with(|c: char| c.is_ascii_uppercase()), "{word}");
            assert!(word.chars().all(|c| c.is_ascii_alphanumeric()), "{word}");
        }
        assert_eq!(CaPending.as_str(), "CAPending");
        assert_eq!(AwaitingCa.as_str(), "AwaitingCA");
    }

    #[test]
    fn attempt_outcomes_count_for_backoff_and_the_retry_deadline() {
        let backoff = Backoff::default();
        let planned = |attempt| plan(attempt, 1, backoff, Duration::from_secs(300)).outcome;
        let limited = PkiError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            message: "slow down".to_string(),
        };
        assert_eq!(
            planned(Attempt::Answered(Err(limited))),
            AttemptOutcome::RateLimited
        );
        let rejected = PkiError::Rejected {
            reason: "no".to_string(),
        };
        assert_eq!(
            planned(Attempt::Answered(Err(rejected))),
            AttemptOutcome::Rejected
        );
        let deferred = planned(Attempt::Deferred(Deferred {
            retry_after: Duration::from_secs(1),
            reason: DeferReason::RateLimited,
        }));
        assert_eq!(deferred, AttemptOutcome::Deferred);
        // Held back or waiting for the issuer: not a failed attempt.
        for (outcome, counts, retried) in [
            (AttemptOutcome::Deferred, false, false),
            (AttemptOutcome::Waiting, false, false),
            (AttemptOutcome::Transient, true, true),
            (AttemptOutcome::RateLimited, true, true),
            (AttemptOutcome::InvalidResponse, true, true),
            (AttemptOutcome::Rejected, true, false),
            (AttemptOutcome::AnswerLost, true, false),
            (AttemptOutcome::Recovering, true, false),
        ] {
            assert_eq!(outcome.counts_as_attempt(), counts, "{outcome:?}");
            assert_eq!(outcome.is_retried_failure(), retried, "{outcome:?}");
        }
        assert_eq!(AttemptOutcome::RateLimited.as_str(), "rate_limited");
        // An error's outcome carries the PKI crate's own label for its class.
        for error in [
            PkiError::transient("down", std::io::Error::other("refused")),
            PkiError::RateLimited {
                retry_after: None,
                message: "slow".into(),
            },
            PkiError::Rejected {
                reason: "policy".into(),
            },
            PkiError::Unauthorized {
                message: "401".into(),
            },
            PkiError::misconfigured("bad key"),
            PkiError::InvalidResponse {
                message: "html".into(),
            },
            PkiError::AnswerLost {
                message: "reset".into(),
            },
        ] {
            assert_eq!(
                AttemptOutcome::of_error(&error).as_str(),
                error.metric_label(),
                "{error}"
            );
        }
        assert_eq!(plan_waiting(String::new()).outcome, AttemptOutcome::Waiting);
        assert!(!plan_waiting(String::new()).counts_as_attempt());
    }

    const GROUP: &str = "pki.certwright.io";
    const APPROVED: (&str, ConditionStatus, &str) = ("Approved", ConditionStatus::True, "policy");

    fn request(conditions: &[(&str, ConditionStatus, &str)]) -> CachedRequest {
        let mut r = CachedRequest {
            spec: CachedSpec {
                issuer_ref: IssuerRef {
                    name: "corp".into(),
                    kind: "InternalClusterIssuer".into(),
                    group: GROUP.into(),
                },
            },
            status: CachedStatus {
                conditions: conditions
                    .iter()
                    .map(|(t, s, r)| Condition::new(*t, *s, *r, ""))
                    .collect(),
            },
            ..Default::default()
        };
        r.metadata.namespace = Some("apps".into());
        r.metadata.name = Some("web-1".into());
        r
    }

    #[test]
    fn other_groups_are_not_ours() {
        let mut r = request(&[APPROVED]);
        r.spec.issuer_ref.group = "cert-manager.io".into();
        assert_eq!(decide(&r, GROUP, IssuerState::Ready), Decision::Nothing);
    }

    #[test]
    fn terminal_requests_are_never_signed_again() {
        for ready in [
            ("Ready", ConditionStatus::True, "Issued"),
            ("Ready", ConditionStatus::False, "Failed"),
            ("Ready", ConditionStatus::False, "Denied"),
        ] {
            let r = request(&[APPROVED, ready]);
            assert_eq!(
                decide(&r, GROUP, IssuerState::Ready),
                Decision::Nothing,
                "{ready:?}"
            );
        }
    }

    #[test]
    fn denied_is_written_as_denied() {
        let r = request(&[("Denied", ConditionStatus::True, "policy")]);
        assert_eq!(decide(&r, GROUP, IssuerState::Ready), Decision::Deny);
    }

    #[test]
    fn unapproved_waits_for_approval_silently() {
        let r = request(&[("Ready", ConditionStatus::False, "Pending")]);
        assert_eq!(decide(&r, GROUP, IssuerState::Ready), Decision::Nothing);
    }

    #[test]
    fn a_missing_or_unready_issuer_is_named() {
        let r = request(&[APPROVED]);
        assert_eq!(
            decide(&r, GROUP, IssuerState::Missing),
            Decision::WaitForIssuer {
                message: "Waiting for InternalClusterIssuer corp: it does not exist".into()
            }
        );
        let mut r = request(&[APPROVED]);
        r.spec.issuer_ref.kind = "InternalIssuer".into();
        let d = decide(
            &r,
            GROUP,
            IssuerState::NotReady {
                message: "Secret \"x\" not found",
            },
        );
        assert_eq!(
            d,
            Decision::WaitForIssuer {
                message: "Waiting for InternalIssuer apps/corp to be Ready: Secret \"x\" not found"
                    .into()
            }
        );
    }

    #[test]
    fn approved_with_a_ready_issuer_signs_or_polls() {
        let mut r = request(&[APPROVED]);
        assert_eq!(decide(&r, GROUP, IssuerState::Ready), Decision::Sign);
        r.metadata.annotations =
            Some([(PENDING_ID_ANNOTATION.to_string(), "42".to_string())].into());
        assert_eq!(
            decide(&r, GROUP, IssuerState::Ready),
            Decision::Poll { id: "42".into() }
        );
    }

    fn plan_of(result: Result<Outcome, PkiError>) -> Plan {
        plan(
            Attempt::Answered(result),
            1,
            Backoff::default(),
            Duration::from_secs(300),
        )
    }

    #[test]
    fn an_issuer_fault_is_the_requests_unless_the_issuer_check_confirms_it() {
        let fault = || {
            plan_of(Err(PkiError::misconfigured(
                "the CA does not offer certificate template \"Bogus\"",
            )))
        };
        // The check passed: the request fails, the issuer is untouched.
        let p = fault().request_scoped();
        assert!(p.issuer_fault.is_none());
        assert_eq!(
            (p.status.ready, p.status.reason, p.status.failed),
            (ConditionStatus::False, "Failed", true)
        );
        assert!(
            p.status.message.contains("\"Bogus\""),
            "{}",
            p.status.message
        );
        assert_eq!(p.requeue, Requeue::Never);
        // The check failed too: the issuer shows the check's finding, not the request's.
        let p = fault().issuer_confirmed(IssuerReason::Unauthorized, "certsrv refused us".into());
        assert_eq!(
            p.issuer_fault
                .map(|(reason, message)| (reason.as_str(), message)),
            Some(("Unauthorized", "certsrv refused us".to_string()))
        );
        assert_eq!(p.status.reason, "Pending");
        // The check got no answer: nobody is blamed yet; the request looks again.
        let p = fault().issuer_unconfirmed(Duration::from_secs(30));
        assert!(p.issuer_fault.is_none());
        assert_eq!(p.requeue, Requeue::After(Duration::from_secs(30)));
        // None of this touches a plan without an issuer fault.
        let rejected = plan_of(Err(PkiError::Rejected {
            reason: "no".into(),
        }));
        assert_eq!(
            rejected.clone().request_scoped().status.message,
            rejected.status.message
        );
    }

    #[test]
    fn a_certificate_shorter_than_requested_is_said_and_warned() {
        use certwright_testkit::fixtures::{KeyKind, TestCa};
        let ca = TestCa::root(KeyKind::EcdsaP256, "Corp Root");
        let leaf = ca.issue_leaf(KeyKind::EcdsaP256, "web.example");
        let bundle = IssuedBundle::from_certificates(vec![
            certwright_x509::Certificate::from_der(&leaf.cert_der).unwrap(),
            certwright_x509::Certificate::from_der(&ca.cert().cert_der).unwrap(),
        ])
        .unwrap();
        let lifetime = (certwright_testkit::fixtures::VALID_UNTIL_UNIX
            - certwright_testkit::fixtures::VALID_FROM_UNIX) as u64;
        let issued = || plan_of(Ok(Outcome::Issued(bundle.clone())));
        // As long as asked (or within a minute of it), or nothing asked: as before.
        for requested in [None, Some(lifetime), Some(lifetime + 59)] {
            let p = issued().with_requested_duration(requested.map(Duration::from_secs));
            assert_eq!(p.event, (EventReason::Issued, false), "{requested:?}");
            assert!(
                !p.status.message.contains("shorter"),
                "{}",
                p.status.message
            );
        }
        // Cut short: the message says by how much, and the Event is a warning.
        let p = issued().with_requested_duration(Some(Duration::from_secs(lifetime * 2)));
        assert_eq!(p.event, (EventReason::Issued, true));
        assert_eq!(p.status.ready, ConditionStatus::True);
        assert!(
            p.status.message.contains("shorter than the requested")
                && p.status
                    .message
                    .contains(&format_duration(Duration::from_secs(lifetime))),
            "{}",
            p.status.message
        );
    }

    #[test]
    fn pending_persists_the_id_and_polls() {
        let p = plan_of(Ok(Outcome::Pending(PendingRequest {
            id: "42".into(),
            retry_after: Duration::from_secs(60),
        })));
        assert_eq!(p.pending_id.as_deref(), Some("42"));
        assert_eq!(p.status.reason, "Pending");
        assert!(
            p.status.message.contains("request id 42"),
            "{}",
            p.status.message
        );
        assert_eq!(p.requeue, Requeue::After(Duration::from_secs(60)));
    }

    #[test]
    fn rejection_fails_for_good() {
        let p = plan_of(Err(PkiError::Rejected {
            reason: "CN not allowed".into(),
        }));
        assert_eq!(
            (p.status.ready, p.status.reason, p.status.failed),
            (ConditionStatus::False, "Failed", true)
        );
        assert!(p.status.message.contains("CN not allowed"));
        assert_eq!(p.requeue, Requeue::Never);
        assert_eq!(p.breaker, CallOutcome::Neutral);
    }

    #[test]
    fn transient_and_rate_limited_retry_with_backoff_or_the_cas_delay() {
        let p = plan(
            Attempt::Answered(Err(PkiError::transient(
                "down",
                std::io::Error::other("refused"),
            ))),
            3,
            Backoff::default(),
            Duration::from_secs(300),
        );
        assert_eq!(p.status.reason, "Pending");
        assert_eq!(p.requeue, Requeue::After(Duration::from_secs(4)));
        assert_eq!(p.breaker, CallOutcome::Failure);
        let p = plan_of(Err(PkiError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            message: "slow".into(),
        }));
        assert_eq!(p.requeue, Requeue::After(Duration::from_secs(7)));
        assert_eq!(p.breaker, CallOutcome::Neutral);
        assert!(
            p.status.message.contains("retrying in 7s"),
            "{}",
            p.status.message
        );
    }

    #[test]
    fn an_issuer_fault_marks_the_issuer_and_waits_for_it() {
        let p = plan_of(Err(PkiError::Unauthorized {
            message: "401".into(),
        }));
        assert_eq!(
            p.issuer_fault.as_ref().map(|f| f.0.as_str()),
            Some("Unauthorized")
        );
        assert_eq!(p.status.reason, "Pending");
        assert_eq!(p.requeue, Requeue::IssuerChange(ISSUER_BACKSTOP));
        let p = plan_of(Err(PkiError::misconfigured("TLS not trusted")));
        assert_eq!(
            p.issuer_fault.as_ref().map(|f| f.0.as_str()),
            Some("InvalidSpec")
        );
    }

    #[test]
    fn an_invalid_request_fails_with_invalid_request() {
        let p = plan(
            Attempt::Invalid("CSR: bad signature".into()),
            1,
            Backoff::default(),
            Duration::from_secs(1),
        );
        assert!(p.status.invalid_request && p.status.failed);
        assert_eq!(p.status.reason, "Failed");
        assert_eq!(p.requeue, Requeue::Never);
    }

    #[test]
    fn a_deferral_says_why_and_when() {
        let p = plan(
            Attempt::Deferred(Deferred {
                retry_after: Duration::from_secs(30),
                reason: DeferReason::CircuitOpen {
                    until: tokio::time::Instant::now(),
                },
            }),
            1,
            Backoff::default(),
            Duration::from_secs(1),
        );
        assert!(
            p.status.message.contains("circuit breaker open"),
            "{}",
            p.status.message
        );
        assert_eq!(p.requeue, Requeue::After(Duration::from_secs(30)));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let delays: Vec<u64> = (1..=6).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(1000), Duration::from_secs(10));
    }

    #[test]
    fn a_lost_answer_waits_to_ask_the_ca_and_an_unknown_fate_fails_for_good() {
        let lost = plan(
            Attempt::Answered(Err(PkiError::AnswerLost {
                message: "reset".into(),
            })),
            1,
            Backoff::default(),
            Duration::from_secs(60),
        );
        assert_eq!(lost.status.reason, "Pending");
        assert!(
            lost.status
                .message
                .contains("asking the CA what became of it")
        );
        assert!(matches!(lost.requeue, Requeue::After(_)));
        assert_eq!(lost.breaker, CallOutcome::Failure);
        assert!(lost.pending_id.is_none());
        let unknown = plan(
            Attempt::Unrecoverable("look on the CA".into()),
            1,
            Backoff::default(),
            Duration::from_secs(60),
        );
        assert_eq!(unknown.status.reason, "Failed");
        assert!(unknown.status.failed && !unknown.status.invalid_request);
        assert_eq!(unknown.requeue, Requeue::Never);
        assert_eq!(unknown.event, (EventReason::SubmissionUnknown, true));
    }

    #[test]
    fn retries_past_the_deadline_fail_but_ca_approval_and_lost_answers_wait() {
        let at = |secs| jiff::Timestamp::from_second(secs).unwrap();
        let hour = Some(Duration::from_secs(3600));
        let transient = || {
            plan(
                Attempt::Answered(Err(PkiError::transient("down", std::io::Error::other("x")))),
                3,
                Backoff::default(),
                Duration::from_secs(60),
            )
        };
        let early = transient().with_retry_deadline(at(0), at(3599), hour);
        assert_eq!(early.status.reason, "Pending");
        let late = transient().with_retry_deadline(at(0), at(3600), hour);
        assert_eq!(late.status.reason, "Failed");
        assert!(late.status.failed);
        assert_eq!(late.requeue, Requeue::Never);
        assert_eq!(late.event, (EventReason::RetriesExhausted, true));
        assert!(
            late.status.message.contains("1h"),
            "{}",
            late.status.message
        );
        assert!(late.status.message.contains("down"));
        assert_eq!(
            transient()
                .with_retry_deadline(at(0), at(99_999), None)
                .status
                .reason,
            "Pending"
        );
        let held = plan(
            Attempt::Answered(Ok(Outcome::Pending(PendingRequest {
                id: "7".into(),
                retry_after: Duration::from_secs(60),
            }))),
            1,
            Backoff::default(),
            Duration::from_secs(60),
        );
        assert_eq!(
            held.with_retry_deadline(at(0), at(99_999), hour)
                .status
                .reason,
            "Pending"
        );
        let lost = plan(
            Attempt::Answered(Err(PkiError::AnswerLost {
                message: "reset".into(),
            })),
            1,
            Backoff::default(),
            Duration::from_secs(60),
        );
        assert_eq!(
            lost.with_retry_deadline(at(0), at(99_999), hour)
                .status
                .reason,
            "Pending"
        );
    }
}
