//! Backend errors, classified by what the caller should do next.

use std::time::Duration;

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a backend call did not produce an outcome. Each variant decides exactly one
/// next step for the caller; [`Error::is_retryable`], [`Error::retry_after`] and
/// [`Error::is_issuer_fault`] read that decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CA is unavailable for now (connection refused, timeout, 5xx). Retry later
    /// with backoff; counts towards opening the circuit breaker.
    #[error("PKI unavailable: {message}")]
    Transient {
        /// What happened, in words a person can act on.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },
    /// The CA asked us to slow down. Retry after `retry_after` (or backoff).
    #[error("PKI rate limit: {message}")]
    RateLimited {
        /// The CA's requested delay, when it gave one.
        retry_after: Option<Duration>,
        /// What the CA said.
        message: String,
    },
    /// The CA refused this request by policy; permanent for this request.
    #[error("rejected by the CA: {reason}")]
    Rejected {
        /// The CA's own reason, passed through.
        reason: String,
    },
    /// The CA refused our credentials. The issuer is at fault, not the request.
    #[error("not authorized by the PKI: {message}")]
    Unauthorized {
        /// What failed (never the credential itself).
        message: String,
    },
    /// The issuer's configuration cannot work: bad CA key, wrong URL, TLS trust
    /// failure, missing Secret key. The issuer is at fault, not the request.
    #[error("issuer misconfigured: {message}")]
    Misconfigured {
        /// What is wrong and where.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },
    /// The CA answered something we cannot use (HTML where JSON was expected, a
    /// truncated or oversized body, a certificate that does not match the CSR).
    /// Retried later like a transient failure.
    #[error("invalid response from the PKI: {message}")]
    InvalidResponse {
        /// What was wrong, with at most a short, sanitized excerpt of the answer.
        message: String,
    },
}

impl Error {
    /// A transient error with a cause.
    pub fn transient(message: impl Into<String>, source: impl Into<Cause>) -> Self {
        Error::Transient {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A misconfiguration without an underlying error.
    pub fn misconfigured(message: impl Into<String>) -> Self {
        Error::Misconfigured {
            message: message.into(),
            source: None,
        }
    }

    /// Whether trying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Transient { .. } | Error::RateLimited { .. } | Error::InvalidResponse { .. }
        )
    }

    /// The delay the CA asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the issuer (its configuration or credentials) is at fault rather than
    /// the request: the issuer becomes not Ready and its requests wait.
    pub fn is_issuer_fault(&self) -> bool {
        matches!(
            self,
            Error::Unauthorized { .. } | Error::Misconfigured { .. }
        )
    }

    /// Whether this failure should count towards opening a circuit breaker.
    pub fn trips_breaker(&self) -> bool {
        matches!(
            self,
            Error::Transient { .. } | Error::InvalidResponse { .. }
        )
    }

    /// A stable, low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Transient { .. } => "transient",
            Error::RateLimited { .. } => "rate_limited",
            Error::Rejected { .. } => "rejected",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Misconfigured { .. } => "misconfigured",
            Error::InvalidResponse { .. } => "invalid_response",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_decides_one_next_step() {
        let cases = [
            (
                Error::transient("down", std::io::Error::other("refused")),
                true,
                false,
                "transient",
            ),
            (
                Error::RateLimited {
                    retry_after: Some(Duration::from_secs(7)),
                    message: "slow".into(),
                },
                true,
                false,
                "rate_limited",
            ),
            (
                Error::Rejected {
                    reason: "policy".into(),
                },
                false,
                false,
                "rejected",
            ),
            (
                Error::Unauthorized {
                    message: "401".into(),
                },
                false,
                true,
                "unauthorized",
            ),
            (
                Error::misconfigured("bad key"),
                false,
                true,
                "misconfigured",
            ),
            (
                Error::InvalidResponse {
                    message: "html".into(),
                },
                true,
                false,
                "invalid_response",
            ),
        ];
        for (err, retryable, issuer_fault, label) in cases {
            assert_eq!(err.is_retryable(), retryable, "{err}");
            assert_eq!(err.is_issuer_fault(), issuer_fault, "{err}");
            assert_eq!(err.metric_label(), label);
        }
        let limited = Error::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            message: String::new(),
        };
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(Error::Rejected { reason: "x".into() }.retry_after(), None);
    }

    #[test]
    fn transient_keeps_its_cause() {
        let err = Error::transient(
            "connecting to https://ca",
            std::io::Error::other("connection refused"),
        );
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("connection refused"));
    }
}
