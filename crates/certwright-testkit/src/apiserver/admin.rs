//! Counts of the calls answered, and the test-only admin endpoint that lets another
//! process (a benchmark driving the `certwright-apiserver` binary) inject faults and
//! read those counts over HTTP, under `/testkit/`: a path no Kubernetes API uses, served
//! only when [`ApiServerOptions::fault_endpoint`](super::ApiServerOptions::fault_endpoint)
//! is on. Its calls are neither logged, counted nor subject to faults.
//!
//! - `POST /testkit/faults` with `{"method": "PATCH" | "*", "pattern": "/status",
//!   "code": 409, "times": 3}` fails the next 3 matching calls; with `"ratio": 0.05`
//!   instead of `times`, each matching call fails with that probability until cleared
//!   (draws from a fixed seed, or `"seed": n`, so runs repeat); with `"delayMs": 200`
//!   instead of `code`, matching calls are delayed (`times` of them, or all until
//!   cleared). Neither `times` nor `ratio`: every matching call. Answers 201 and the
//!   active rules.
//! - `GET /testkit/faults`: the active rules. `DELETE /testkit/faults`: removes them.
//! - `GET /testkit/stats`: calls answered, by method and by status class, injected
//!   faults and watches opened. `DELETE /testkit/stats` starts the counts over.
//!
//! How rules match calls: see [`Faults`](super::Faults).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Shared;
use super::error::ApiError;
use super::faults::{DEFAULT_SEED, MethodMatch};

/// Where the admin endpoint lives.
pub(crate) const PREFIX: &str = "/testkit/";

/// The methods counted one by one; the rest are counted as `OTHER`.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Counters of the calls answered; a few relaxed atomic increments per call.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    by_method: [AtomicU64; METHODS.len() + 1],
    /// 1xx to 5xx.
    by_class: [AtomicU64; 5],
    injected: AtomicU64,
    watches: AtomicU64,
}

impl Stats {
    /// Counts one answered call.
    pub(crate) fn record(&self, method: &Method, status: StatusCode, injected: bool, watch: bool) {
        let m = METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHODS.len());
        self.by_method[m].fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        if injected {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        if watch {
            self.watches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts now.
    pub(crate) fn snapshot(&self) -> CallStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut by_method = BTreeMap::new();
        for (i, counter) in self.by_method.iter().enumerate() {
            let n = load(counter);
            if n > 0 {
                by_method.insert(METHODS.get(i).unwrap_or(&"OTHER").to_string(), n);
            }
        }
        let mut by_class = BTreeMap::new();
        for (i, counter) in self.by_class.iter().enumerate() {
            let n = load(counter);
            if n > 0 {
                by_class.insert(format!("{}xx", i + 1), n);
            }
        }
        CallStats {
            total: by_method.values().sum(),
            by_method,
            by_class,
            injected_faults: load(&self.injected),
            watches: load(&self.watches),
        }
    }

    pub(crate) fn reset(&self) {
        for counter in self
            .by_method
            .iter()
            .chain(&self.by_class)
            .chain([&self.injected, &self.watches])
        {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Counts of the calls a server answered (admin endpoint calls excluded), as
/// [`ApiServer::stats`](super::ApiServer::stats) and `GET /testkit/stats` give them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CallStats {
    /// Every call answered.
    pub total: u64,
    /// Calls by HTTP method (`GET`, `PATCH`, ..., `OTHER`); methods never seen are
    /// absent.
    pub by_method: BTreeMap<String, u64>,
    /// Calls by status class of the answer (`2xx`, `4xx`, ...); a watch counts when
    /// its stream starts.
    pub by_class: BTreeMap<String, u64>,
    /// Calls answered by a fault rule.
    pub injected_faults: u64,
    /// Watches opened.
    pub watches: u64,
}

/// A fault rule as `POST /testkit/faults` takes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultSpec {
    method: String,
    #[serde(default)]
    pattern: String,
    code: Option<u16>,
    times: Option<usize>,
    ratio: Option<f64>,
    delay_ms: Option<u64>,
    seed: Option<u64>,
}

/// Answers a call under [`PREFIX`].
pub(crate) async fn handle(shared: &Shared, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_string();
    let result = match (path.as_str(), method) {
        ("/testkit/faults", Method::GET) => Ok(rules(shared, StatusCode::OK)),
        ("/testkit/faults", Method::POST) => add_fault(shared, request).await,
        ("/testkit/faults", Method::DELETE) => {
            let cleared = shared.faults.len();
            shared.faults.clear();
            Ok(json_response(StatusCode::OK, &json!({"cleared": cleared})))
        }
        ("/testkit/stats", Method::GET) => Ok(json_response(
            StatusCode::OK,
            &serde_json::to_value(shared.stats.snapshot()).unwrap_or_default(),
        )),
        ("/testkit/stats", Method::DELETE) => {
            shared.stats.reset();
            Ok(json_response(StatusCode::OK, &json!({})))
        }
        ("/testkit/faults" | "/testkit/stats", method) => Err(ApiError::method_not_allowed(
            format!("{method} is not supported on {path}"),
        )),
        _ => Err(ApiError::not_found_path()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn rules(shared: &Shared, status: StatusCode) -> Response {
    json_response(status, &json!({"rules": shared.faults.describe()}))
}

async fn add_fault(shared: &Shared, request: Request) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(format!("the body could not be read: {e}")))?;
    let spec: FaultSpec = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid fault rule: {e}")))?;
    let method = match spec.method.as_str() {
        "*" => MethodMatch::Any,
        name => MethodMatch::Only(
            Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                .map_err(|_| ApiError::bad_request(format!("invalid method {name:?}")))?,
        ),
    };
    if spec.times.is_some() && spec.ratio.is_some() {
        return Err(ApiError::bad_request("give times or ratio, not both"));
    }
    let faults = &shared.faults;
    match (spec.code, spec.delay_ms) {
        (Some(code), None) => {
            if !(400..=599).contains(&code) {
                return Err(ApiError::bad_request(format!(
                    "code must be an HTTP error status (400 to 599), not {code}"
                )));
            }
            match (spec.times, spec.ratio) {
                (Some(times), _) => faults.fail_next(method, spec.pattern, code, times),
                (None, Some(ratio)) => {
                    if !(0.0..=1.0).contains(&ratio) {
                        return Err(ApiError::bad_request(format!(
                            "ratio must be between 0 and 1, not {ratio}"
                        )));
                    }
                    faults.fail_ratio_seeded(
                        method,
                        spec.pattern,
                        code,
                        ratio,
                        spec.seed.unwrap_or(DEFAULT_SEED),
                    );
                }
                (None, None) => faults.fail_ratio(method, spec.pattern, code, 1.0),
            }
        }
        (None, Some(ms)) => {
            if spec.ratio.is_some() {
                return Err(ApiError::bad_request("ratio applies to failures only"));
            }
            let delay = Duration::from_millis(ms);
            match spec.times {
                Some(times) => faults.delay_next(method, spec.pattern, delay, times),
                None => faults.delay(method, spec.pattern, delay),
            }
        }
        _ => return Err(ApiError::bad_request("give code or delayMs (one of them)")),
    }
    Ok(rules(shared, StatusCode::CREATED))
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = Response::new(Body::from(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_by_method_and_class() {
        let stats = Stats::default();
        stats.record(&Method::GET, StatusCode::OK, false, true);
        stats.record(&Method::PATCH, StatusCode::CONFLICT, true, false);
        stats.record(
            &Method::from_bytes(b"PURGE").expect("method"),
            StatusCode::NOT_FOUND,
            false,
            false,
        );
        let s = stats.snapshot();
        assert_eq!(s.total, 3);
        assert_eq!(s.by_method["GET"], 1);
        assert_eq!(s.by_method["OTHER"], 1);
        assert_eq!(s.by_class["4xx"], 2);
        assert_eq!((s.injected_faults, s.watches), (1, 1));
        stats.reset();
        assert_eq!(stats.snapshot(), CallStats::default());
    }
}
