//! Fault injection (answer an error, handle late, or answer late, on matching calls) and the log of
//! the calls the server received, so that a test can provoke retries and assert that
//! no call was missing or extra. How rules match: see [`Faults`].

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::Method;

/// Which methods a fault rule or a count applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MethodMatch {
    /// Every method.
    Any,
    /// Only this one.
    Only(Method),
}

impl MethodMatch {
    fn matches(&self, method: &Method) -> bool {
        match self {
            MethodMatch::Any => true,
            MethodMatch::Only(m) => m == method,
        }
    }

    /// `*` or the method's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            MethodMatch::Any => "*",
            MethodMatch::Only(m) => m.as_str(),
        }
    }
}

impl From<Method> for MethodMatch {
    fn from(method: Method) -> Self {
        MethodMatch::Only(method)
    }
}

impl From<&Method> for MethodMatch {
    fn from(method: &Method) -> Self {
        MethodMatch::Only(method.clone())
    }
}

/// The seed of every probabilistic rule unless it names its own: the same rules over
/// the same calls fail the same calls, run after run.
pub(crate) const DEFAULT_SEED: u64 = 0x6365_7274_7772_6967;

/// SplitMix64: a tiny, fast generator that is good enough to decide which calls fail,
/// and needs no dependency.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        // The top 53 bits, which an f64 holds exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Debug)]
enum Action {
    Fail(u16),
    /// Fails each matching call with probability `ratio`.
    FailRatio {
        code: u16,
        ratio: f64,
        rng: SplitMix64,
    },
    Delay(Duration),
    /// Handles the call at once (the store changes, watchers hear of it) and holds the
    /// answer back.
    DelayAnswer(Duration),
}

#[derive(Clone, Debug)]
struct Rule {
    method: MethodMatch,
    pattern: String,
    action: Action,
    /// `None`: until [`Faults::clear`].
    remaining: Option<usize>,
}

/// What the fault rules decided for one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) delay: Option<Duration>,
    /// How long to hold the answer back after handling the call.
    pub(crate) answer_delay: Option<Duration>,
    pub(crate) fail: Option<u16>,
}

/// The fault rules of a server ([`ApiServer::faults`](super::ApiServer::faults)).
///
/// A rule matches a call when its method matches ([`MethodMatch`]; a [`Method`]
/// converts into one) and the request path, without the query string, *contains* the
/// rule's pattern as a substring: `"/status"` matches every status subresource call,
/// `"/namespaces/ns1/secrets/a"` every call on Secret `ns1/a` (and its subresources),
/// `""` every call. List and watch calls share a path; both match.
///
/// Failures answer before the store is touched, so a failed write changed nothing.
/// Rules are checked in the order they were added: the first matching delay rule, the
/// first matching answer-delay rule and the first matching failure rule each spend one
/// call, so a call may be delayed and then failed (its failure held back, too). A probabilistic rule ([`Faults::fail_ratio`]) fails a matching call
/// only when its draw says so; when it does not, later rules still apply.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
}

impl Faults {
    fn rules(&self) -> MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a rule for `times` matching calls (`None`: until [`Faults::clear`]).
    fn push(&self, method: MethodMatch, pattern: String, action: Action, times: Option<usize>) {
        self.rules().push(Rule {
            method,
            pattern,
            action,
            remaining: times,
        });
    }

    /// Answers the next `times` matching calls with `code` and a `Status` body whose
    /// reason is the one upstream uses for that code (409 `Conflict`, 429
    /// `TooManyRequests` with `Retry-After: 1`, 500 `InternalError`, ...), without
    /// touching the store.
    pub fn fail_next(
        &self,
        method: impl Into<MethodMatch>,
        pattern: impl Into<String>,
        code: u16,
        times: usize,
    ) {
        self.push(
            method.into(),
            pattern.into(),
            Action::Fail(code),
            Some(times),
        );
    }

    /// Fails each matching call with probability `ratio` (0 to 1), with `code` as
    /// [`Faults::fail_next`] does, until [`Faults::clear`]. Draws come from a small
    /// generator with a fixed seed, so the same calls fail in every run.
    pub fn fail_ratio(
        &self,
        method: impl Into<MethodMatch>,
        pattern: impl Into<String>,
        code: u16,
        ratio: f64,
    ) {
        self.fail_ratio_seeded(method, pattern, code, ratio, DEFAULT_SEED);
    }

    /// [`Faults::fail_ratio`] with another seed.
    pub fn fail_ratio_seeded(
        &self,
        method: impl Into<MethodMatch>,
        pattern: impl Into<String>,
        code: u16,
        ratio: f64,
        seed: u64,
    ) {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        let action = Action::FailRatio {
            code,
            ratio,
            rng: SplitMix64(seed),
        };
        self.push(method.into(), pattern.into(), action, None);
    }

    /// Delays every matching call by `delay` until [`Faults::clear`].
    pub fn delay(
        &self,
        method: impl Into<MethodMatch>,
        pattern: impl Into<String>,
        delay: Duration,
    ) {
        self.push(method.into(), pattern.into(), Action::Delay(delay), None);
    }

    /// Delays the next `times` matching calls by `delay`.
    pub fn delay_next(
        &self,
        method: impl Into<MethodMatch>,
        pattern: impl Into<String>,
        delay: Duration,
        times: usize,
    ) {
        self.push(
            method.into(),
            pattern.into(),
            Action::Delay(delay),
            Some(times),
        );
    }

    /// Handles the next `times` matching calls at once, so the store changes and watchers
    /// hear of it, but holds each answer back by `delay`: the caller learns of its own
    /// write after the rest of the world, as over a slow network.
    pub fn delay_answer_next(
        &self,
        method: impl Into<MethodMatch>,
        pattern: impl Into<String>,
        delay: Duration,
        times: usize,
    ) {
        self.push(
            method.into(),
            pattern.into(),
            Action::DelayAnswer(delay),
            Some(times),
        );
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules().clear();
    }

    /// How many rules are active (spent ones are gone).
    pub fn len(&self) -> usize {
        self.rules().len()
    }

    /// Whether no rule is active.
    pub fn is_empty(&self) -> bool {
        self.rules().is_empty()
    }

    /// The active rules as the fault endpoint shows them.
    pub(crate) fn describe(&self) -> Vec<serde_json::Value> {
        use serde_json::json;
        self.rules()
            .iter()
            .map(|rule| {
                let mut v = json!({"method": rule.method.name(), "pattern": rule.pattern});
                match &rule.action {
                    Action::Fail(code) => v["code"] = json!(code),
                    Action::FailRatio { code, ratio, .. } => {
                        v["code"] = json!(code);
                        v["ratio"] = json!(ratio);
                    }
                    Action::Delay(d) => {
                        v["delayMs"] = json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    }
                    Action::DelayAnswer(d) => {
                        v["answerDelayMs"] =
                            json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    }
                }
                if let Some(n) = rule.remaining {
                    v["times"] = json!(n);
                }
                v
            })
            .collect()
    }

    /// The first matching delay, answer-delay and failure rules each spend one of their
    /// calls; a call may be both delayed and then failed.
    pub(crate) fn decide(&self, method: &Method, path: &str) -> Decision {
        let mut rules = self.rules();
        let mut decision = Decision::default();
        for rule in rules.iter_mut() {
            if rule.remaining == Some(0)
                || !rule.method.matches(method)
                || !path.contains(rule.pattern.as_str())
            {
                continue;
            }
            let spend = match &mut rule.action {
                Action::Fail(code) if decision.fail.is_none() => {
                    decision.fail = Some(*code);
                    true
                }
                Action::FailRatio { code, ratio, rng } if decision.fail.is_none() => {
                    if rng.next_f64() < *ratio {
                        decision.fail = Some(*code);
                    }
                    false
                }
                Action::Delay(d) if decision.delay.is_none() => {
                    decision.delay = Some(*d);
                    true
                }
                Action::DelayAnswer(d) if decision.answer_delay.is_none() => {
                    decision.answer_delay = Some(*d);
                    true
                }
                _ => false,
            };
            if spend && let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
        }
        rules.retain(|r| r.remaining != Some(0));
        decision
    }
}

/// One call the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The HTTP method.
    pub method: Method,
    /// The path, e.g. `/apis/cert-manager.io/v1/namespaces/ns/certificaterequests/a/status`.
    pub path: String,
    /// The raw query string, without `?` ("" when none).
    pub query: String,
}

impl RecordedRequest {
    /// The decoded value of one query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        super::routes::query_pairs(&self.query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether this was a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.query_param("watch").as_deref(), Some("true" | "1"))
    }
}

/// The calls received, oldest first, up to a limit (older ones are forgotten).
#[derive(Debug)]
pub(crate) struct RequestLog {
    entries: Mutex<std::collections::VecDeque<RecordedRequest>>,
    limit: usize,
}

impl RequestLog {
    pub(crate) fn new(limit: usize) -> RequestLog {
        RequestLog {
            entries: Mutex::default(),
            limit,
        }
    }

    fn entries(&self) -> MutexGuard<'_, std::collections::VecDeque<RecordedRequest>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, request: RecordedRequest) {
        if self.limit == 0 {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= self.limit {
            entries.pop_front();
        }
        entries.push_back(request);
    }

    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        self.entries().iter().cloned().collect()
    }

    pub(crate) fn count(&self, method: &MethodMatch, path_substring: &str) -> usize {
        self.entries()
            .iter()
            .filter(|r| method.matches(&r.method) && r.path.contains(path_substring))
            .count()
    }

    pub(crate) fn clear(&self) {
        self.entries().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_spent_then_gone() {
        let faults = Faults::default();
        faults.fail_next(Method::PUT, "/status", 409, 2);
        assert_eq!(faults.decide(&Method::GET, "/a/b/status").fail, None);
        assert_eq!(faults.decide(&Method::PUT, "/a/b").fail, None);
        assert_eq!(faults.decide(&Method::PUT, "/a/b/status").fail, Some(409));
        assert_eq!(faults.decide(&Method::PUT, "/a/c/status").fail, Some(409));
        assert_eq!(faults.decide(&Method::PUT, "/a/b/status").fail, None);
    }

    #[test]
    fn delays_last_until_cleared_and_combine_with_failures() {
        let faults = Faults::default();
        let d = Duration::from_millis(5);
        faults.delay(MethodMatch::Any, "/secrets", d);
        faults.fail_next(MethodMatch::Any, "", 500, 1);
        assert_eq!(
            faults.decide(&Method::GET, "/api/v1/secrets"),
            Decision {
                delay: Some(d),
                answer_delay: None,
                fail: Some(500)
            }
        );
        assert_eq!(
            faults.decide(&Method::GET, "/api/v1/secrets").delay,
            Some(d)
        );
        faults.clear();
        assert_eq!(
            faults.decide(&Method::GET, "/api/v1/secrets"),
            Decision::default()
        );
    }

    #[test]
    fn an_answer_delay_is_spent_apart_from_a_delay() {
        let faults = Faults::default();
        let d = Duration::from_millis(5);
        faults.delay_answer_next(Method::PATCH, "/status", d, 1);
        faults.delay_next(Method::PATCH, "/status", d, 1);
        let first = faults.decide(&Method::PATCH, "/a/status");
        assert_eq!((first.delay, first.answer_delay), (Some(d), Some(d)));
        assert_eq!(
            faults.decide(&Method::PATCH, "/a/status"),
            Decision::default()
        );
        assert!(faults.is_empty());
    }

    #[test]
    fn ratio_rules_fail_about_that_share_the_same_way_every_run() {
        let run = || {
            let faults = Faults::default();
            faults.fail_ratio(MethodMatch::Any, "/x", 503, 0.25);
            (0..1000)
                .map(|_| faults.decide(&Method::GET, "/x").fail.is_some())
                .collect::<Vec<_>>()
        };
        let first = run();
        let failed = first.iter().filter(|f| **f).count();
        assert!((200..300).contains(&failed), "{failed} of 1000");
        assert_eq!(first, run());
        let faults = Faults::default();
        faults.fail_ratio(MethodMatch::Any, "", 500, 0.0);
        faults.fail_next(MethodMatch::Any, "", 409, 1);
        assert_eq!(faults.decide(&Method::GET, "/a").fail, Some(409));
        assert_eq!(faults.len(), 1);
    }

    #[test]
    fn the_log_forgets_the_oldest_past_its_limit() {
        let log = RequestLog::new(2);
        for path in ["/a", "/b", "/c"] {
            log.record(RecordedRequest {
                method: Method::GET,
                path: path.to_string(),
                query: "watch=1&x=a%20b".to_string(),
            });
        }
        let entries = log.snapshot();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].path, "/b");
        assert!(entries[0].is_watch());
        assert_eq!(entries[0].query_param("x").as_deref(), Some("a b"));
        assert_eq!(log.count(&MethodMatch::Any, "/c"), 1);
    }
}
