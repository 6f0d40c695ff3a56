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
    /// The request body may have reached the CA, and its answer was lost (a timeout or a
    /// reset after it was sent). Never submit the request again blindly: ask
    /// [`crate::Backend::recover`] later what the CA did with it. Counts towards opening
    /// the circuit breaker.
    #[error("the answer to the submission was lost: {message}")]
    AnswerLost {
        /// What happened, in words a person can act on.
        message: String,
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
            Error::Transient { .. }
                | Error::RateLimited { .. }
                | Error::InvalidResponse { .. }
                | Error::AnswerLost { .. }
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
            Error::Transient { .. } | Error::InvalidResponse { .. } | Error::AnswerLost { .. }
        )
    }

    /// The same error told without anything the remote end chose: its kind and, for a
    /// failed connection, how it failed (refused, timed out, closed, TLS, an HTTP
    /// status), never the answer's words. The kind, and so every decision read from it
    /// ([`Error::is_retryable`], [`Error::retry_after`], [`Error::is_issuer_fault`]),
    /// stays the same.
    ///
    /// For statuses read by someone who chose the issuer's endpoint but should not learn
    /// what answers there: a tenant who points an issuer at an internal service learns
    /// whether it answered, never what. The full error belongs in the operator's log.
    pub fn redacted(&self) -> Error {
        let how = |source: &Option<Cause>| {
            source
                .as_deref()
                .and_then(|s| failure_class(s as &(dyn std::error::Error + 'static)))
        };
        match self {
            Error::Transient { source, .. } => Error::Transient {
                message: how(source).unwrap_or_else(|| "the call failed".to_string()),
                source: None,
            },
            Error::RateLimited { retry_after, .. } => Error::RateLimited {
                retry_after: *retry_after,
                message: "the PKI asked to slow down".to_string(),
            },
            Error::Rejected { .. } => Error::Rejected {
                reason: "the CA refused this request (its answer is in the controller's log)"
                    .to_string(),
            },
            Error::Unauthorized { .. } => Error::Unauthorized {
                message: "the PKI refused the issuer's credentials".to_string(),
            },
            Error::Misconfigured { source, .. } => Error::Misconfigured {
                message: how(source).unwrap_or_else(|| {
                    "the PKI cannot be used with this configuration (details are in the \
                     controller's log)"
                        .to_string()
                }),
                source: None,
            },
            Error::InvalidResponse { .. } => Error::InvalidResponse {
                message: "the PKI answered something that is not what its API returns".to_string(),
            },
            Error::AnswerLost { .. } => Error::AnswerLost {
                message: "the PKI did not answer after the request was sent".to_string(),
            },
        }
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
            Error::AnswerLost { .. } => "answer_lost",
        }
    }
}

/// An HTTP status a server answered, as the cause of an error built from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnsweredStatus(pub u16);

impl std::fmt::Display for AnsweredStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the PKI answered HTTP {}", self.0)
    }
}

impl std::error::Error for AnsweredStatus {}

/// A cause an adapter has classified where it knew the error's type (a TLS handshake
/// that failed, a client that gave up waiting): [`Error::redacted`] tells `class`, in
/// certwright's own words, instead of looking further down the chain. Otherwise it is
/// transparent: it displays as the error it holds and reports that error's causes.
///
/// The contract knows no HTTP or TLS library; the adapters that use one wrap what it
/// returns in this.
#[derive(Debug)]
pub struct Classified {
    class: &'static str,
    inner: Cause,
}

impl Classified {
    /// `inner`, told as `class` (for example "the PKI did not answer in time").
    pub fn new(class: &'static str, inner: impl Into<Cause>) -> Self {
        Classified {
            class,
            inner: inner.into(),
        }
    }

    /// The words [`Error::redacted`] tells.
    pub fn class(&self) -> &'static str {
        self.class
    }

    /// The error it holds.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::error::Error for Classified {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

/// How a call failed, from the types among its causes, in words that hold nothing the
/// remote end sent. `None` when no cause says.
fn failure_class(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    let mut found: Option<String> = None;
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<crate::egress::Refused>() {
            // Our own words about the issuer's own configuration, without the address a
            // name resolved to (which would let a tenant look up internal names).
            let mut refused = refused.clone();
            refused.addr = None;
            return Some(refused.to_string());
        }
        if let Some(status) = e.downcast_ref::<AnsweredStatus>() {
            return Some(status.to_string());
        }
        if let Some(classified) = e.downcast_ref::<Classified>() {
            return Some(classified.class.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let class = match io.kind() {
                K::ConnectionRefused => Some("the PKI refused the connection"),
                K::TimedOut | K::WouldBlock => Some("the PKI did not answer in time"),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    Some("the PKI closed the connection")
                }
                K::NotFound | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                    Some("the PKI could not be reached")
                }
                _ => None,
            };
            // The innermost io error says most; keep looking for a classified cause below
            // it.
            if let Some(class) = class {
                found = Some(class.to_string());
            }
            // An io error that wraps another error reports that error's causes as its
            // own source, skipping the error itself: look at it first.
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        next = e.source();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classified_cause_is_told_by_its_class_and_shows_what_it_holds() {
        let inner = std::io::Error::other("tls: bad certificate from 10.0.0.7");
        let classified = Classified::new("the TLS handshake with the PKI failed", inner);
        assert_eq!(classified.to_string(), "tls: bad certificate from 10.0.0.7");
        assert_eq!(classified.class(), "the TLS handshake with the PKI failed");
        assert!(
            classified
                .get_ref()
                .downcast_ref::<std::io::Error>()
                .is_some()
        );
        let err = Error::Misconfigured {
            message: "handshake".into(),
            source: Some(Box::new(classified)),
        };
        assert_eq!(
            err.redacted().to_string(),
            Error::Misconfigured {
                message: "the TLS handshake with the PKI failed".into(),
                source: None
            }
            .to_string()
        );
    }

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
            (
                Error::AnswerLost {
                    message: "reset".into(),
                },
                true,
                false,
                "answer_lost",
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
    fn redacted_errors_keep_their_kind_and_lose_the_answer() {
        let secret = "internal-service-banner v1.2";
        let cases = [
            Error::Transient {
                message: format!("POST https://x answered 503: {secret}"),
                source: Some(Box::new(AnsweredStatus(503))),
            },
            Error::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
                message: secret.into(),
            },
            Error::Rejected {
                reason: secret.into(),
            },
            Error::Unauthorized {
                message: secret.into(),
            },
            Error::misconfigured(secret),
            Error::InvalidResponse {
                message: secret.into(),
            },
            Error::AnswerLost {
                message: secret.into(),
            },
        ];
        for err in cases {
            let redacted = err.redacted();
            assert!(!redacted.to_string().contains("banner"), "{redacted}");
            assert_eq!(redacted.metric_label(), err.metric_label());
            assert_eq!(redacted.is_retryable(), err.is_retryable());
            assert_eq!(redacted.is_issuer_fault(), err.is_issuer_fault());
            assert_eq!(redacted.retry_after(), err.retry_after());
        }
    }

    #[test]
    fn redacted_errors_say_how_a_connection_failed() {
        use std::io::ErrorKind;
        let io = |kind: ErrorKind| {
            Error::transient(
                "connecting to https://x: banner",
                std::io::Error::from(kind),
            )
        };
        let said = |e: Error| e.redacted().to_string();
        assert_eq!(
            said(io(ErrorKind::ConnectionRefused)),
            "PKI unavailable: the PKI refused the connection"
        );
        assert_eq!(
            said(io(ErrorKind::TimedOut)),
            "PKI unavailable: the PKI did not answer in time"
        );
        assert_eq!(
            said(io(ErrorKind::ConnectionReset)),
            "PKI unavailable: the PKI closed the connection"
        );
        assert_eq!(
            said(io(ErrorKind::Other)),
            "PKI unavailable: the call failed"
        );
        let status = Error::Transient {
            message: "banner".into(),
            source: Some(Box::new(AnsweredStatus(502))),
        };
        assert_eq!(said(status), "PKI unavailable: the PKI answered HTTP 502");
        // A refusal by the egress policy is our own account of the issuer's own
        // configuration, kept whole.
        let refused = crate::egress::Refused {
            host: "metadata.internal".into(),
            addr: Some(
                "169.254.169.254"
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            ),
            why: "link-local".into(),
        };
        let err = Error::Misconfigured {
            message: "x".into(),
            source: Some(Box::new(refused.clone())),
        };
        assert_eq!(
            said(err),
            "issuer misconfigured: the egress policy refuses metadata.internal: link-local"
        );
        // A cause wrapped in another keeps its class.
        let wrapped = Error::transient(
            "x",
            std::io::Error::other(std::io::Error::from(ErrorKind::ConnectionRefused)),
        );
        assert_eq!(
            said(wrapped),
            "PKI unavailable: the PKI refused the connection"
        );
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
