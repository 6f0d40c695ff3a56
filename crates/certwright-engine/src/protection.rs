//! Per-issuer protection of the PKI behind it: a concurrency cap, a token bucket and a
//! circuit breaker, combined in one [`Protection`] whose [`Protection::admit`] either
//! hands out a [`Permit`] for one backend call or tells the caller to come back later.
//!
//! One file because the three guards decide together in `admit` (a breaker probe
//! takes the concurrency slot and the token the cap and the bucket grant), and their
//! timing tests, which drive all three on a paused clock, sit beside them: over 800
//! lines, half of them those tests.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Default consecutive failures that open the breaker.
pub(crate) const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default first open period of the breaker.
pub(crate) const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(30);
/// Default cap of the doubling open period.
pub(crate) const DEFAULT_MAX_OPEN_FOR: Duration = Duration::from_secs(5 * 60);
/// Default longest wait for a token that [`Protection::admit`] spends inline.
pub(crate) const DEFAULT_MAX_INLINE_WAIT: Duration = Duration::from_secs(1);

/// How long a caller is told to wait while the half-open probe is in flight.
const PROBE_IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);
/// Lowest rate accepted; a zero, negative or NaN rate is raised to it.
const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
/// Longest open period accepted, so that deadlines never overflow.
const MAX_OPEN_PERIOD: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Limits that protect one issuer's PKI.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProtectionConfig {
    /// Most backend calls in flight at once (at least 1; 0 is treated as 1).
    pub max_concurrent: u32,
    /// Sustained rate of backend calls (above 0; lower values are raised to 0.001).
    pub requests_per_second: f64,
    /// Size of the token bucket: calls allowed back to back after a quiet period.
    pub burst: u32,
    /// Consecutive [`CallOutcome::Failure`]s that open the breaker (0 is treated as 1).
    pub failure_threshold: u32,
    /// First open period of the breaker.
    pub open_for: Duration,
    /// Cap of the open period, which doubles after each failed probe.
    pub max_open_for: Duration,
    /// Longest wait for a token [`Protection::admit`] spends inline before it defers.
    pub max_inline_wait: Duration,
}

impl ProtectionConfig {
    /// A configuration with the given cap and rate, and defaults for the rest:
    /// `burst = max(1, ceil(rps))`, threshold 5, open 30s doubling up to 5m, 1s inline wait.
    pub(crate) fn new(max_concurrent: u32, requests_per_second: f64) -> ProtectionConfig {
        ProtectionConfig {
            max_concurrent,
            requests_per_second,
            burst: default_burst(requests_per_second),
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            open_for: DEFAULT_OPEN_FOR,
            max_open_for: DEFAULT_MAX_OPEN_FOR,
            max_inline_wait: DEFAULT_MAX_INLINE_WAIT,
        }
    }

    /// The configuration with out-of-range values brought into range.
    fn normalized(mut self) -> ProtectionConfig {
        self.max_concurrent = self.max_concurrent.max(1);
        if self.requests_per_second.is_nan() || self.requests_per_second < MIN_REQUESTS_PER_SECOND {
            self.requests_per_second = MIN_REQUESTS_PER_SECOND;
        }
        self.burst = self.burst.max(1);
        self.failure_threshold = self.failure_threshold.max(1);
        self.open_for = self.open_for.min(MAX_OPEN_PERIOD);
        self.max_open_for = self.max_open_for.clamp(self.open_for, MAX_OPEN_PERIOD);
        self
    }
}

/// The default bucket size for a rate: `max(1, ceil(rps))`.
fn default_burst(requests_per_second: f64) -> u32 {
    let ceil = requests_per_second.ceil();
    if ceil.is_nan() || ceil < 1.0 {
        1
    } else if ceil >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // In range and integral, so the cast is exact.
        ceil as u32
    }
}

/// The circuit breaker's state as reported to the engine and to metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum BreakerState {
    /// Calls go through; consecutive failures are being counted.
    Closed,
    /// Calls are refused until `until`, when one probe will be let through.
    Open {
        /// When the open period ends.
        until: Instant,
    },
    /// The open period has passed: one probe call decides whether to close or reopen.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `certwright_circuit_breaker_state` gauge: 0 closed, 1 half-open,
    /// 2 open.
    pub(crate) fn metric_value(&self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerState::Closed => f.write_str("closed"),
            BreakerState::HalfOpen => f.write_str("half-open"),
            BreakerState::Open { until } => {
                let left = until.saturating_duration_since(Instant::now());
                write!(f, "open for another {}s", left.as_secs())
            }
        }
    }
}

/// What a call made under a [`Permit`] told about the PKI's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum CallOutcome {
    /// The PKI answered properly: closes a half-open breaker, resets the failure count.
    Success,
    /// The PKI is unwell (transient error, invalid response): counts toward opening.
    Failure,
    /// Says nothing about the PKI's health (rejected by policy, rate limited,
    /// misconfigured, abandoned): neither closes nor trips the breaker.
    Neutral,
}

/// Why [`Protection::admit`] did not hand out a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum DeferReason {
    /// The breaker is open until the given time.
    CircuitOpen {
        /// When the open period ends and a probe may be made.
        until: Instant,
    },
    /// The breaker is half-open and its one probe is in flight.
    ProbeInFlight,
    /// The next token is further away than `max_inline_wait`.
    RateLimited,
}

impl DeferReason {
    /// A stable label for metrics: `circuit_open`, `probe_in_flight` or `rate_limited`.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            DeferReason::CircuitOpen { .. } => "circuit_open",
            DeferReason::ProbeInFlight => "probe_in_flight",
            DeferReason::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for DeferReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeferReason::CircuitOpen { .. } => f.write_str("circuit breaker open"),
            DeferReason::ProbeInFlight => f.write_str("circuit breaker probe in flight"),
            DeferReason::RateLimited => f.write_str("rate limited"),
        }
    }
}

/// The caller should try again after `retry_after` instead of calling the PKI now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deferred {
    /// How long to wait before calling [`Protection::admit`] again.
    pub retry_after: Duration,
    /// Why the call was deferred.
    pub reason: DeferReason,
}

impl fmt::Display for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, retry after {:.3}s",
            self.reason,
            self.retry_after.as_secs_f64()
        )
    }
}

/// Protection of one issuer's PKI. Share it between tasks through an [`Arc`].
#[derive(Debug)]
pub(crate) struct Protection {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: ProtectionConfig,
    slots: Arc<Semaphore>,
    in_flight: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    bucket: Bucket,
    breaker: Breaker,
}

/// A token bucket whose level may go below zero: a negative level is tokens promised
/// to callers sleeping until their turn, which paces concurrent waiters.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

#[derive(Debug)]
struct Breaker {
    phase: Phase,
    /// The period of the current or most recent opening.
    open_period: Duration,
    /// Bumped whenever the breaker closes, so that late outcomes of calls admitted
    /// before an opening do not count against the new closed period.
    epoch: u64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn refill(&mut self, config: &ProtectionConfig, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.bucket.refilled_at)
            .as_secs_f64();
        self.bucket.tokens = (self.bucket.tokens + elapsed * config.requests_per_second)
            .min(f64::from(config.burst));
        self.bucket.refilled_at = now;
    }

    /// Whether a call may go ahead as far as the breaker is concerned; with `claim`,
    /// takes the half-open probe and returns whether this call is it.
    fn gate(&mut self, now: Instant, claim: bool) -> Result<bool, Deferred> {
        match self.breaker.phase {
            Phase::Closed { .. } => Ok(false),
            Phase::Open { until } if now < until => Err(Deferred {
                retry_after: until - now,
                reason: DeferReason::CircuitOpen { until },
            }),
            Phase::HalfOpen {
                probe_in_flight: true,
            } => Err(Deferred {
                retry_after: PROBE_IN_FLIGHT_RETRY,
                reason: DeferReason::ProbeInFlight,
            }),
            Phase::Open { .. } | Phase::HalfOpen { .. } => {
                if claim {
                    self.breaker.phase = Phase::HalfOpen {
                        probe_in_flight: true,
                    };
                }
                Ok(true)
            }
        }
    }

    fn record(
        &mut self,
        config: &ProtectionConfig,
        now: Instant,
        call: CallKind,
        outcome: CallOutcome,
    ) {
        let breaker = &mut self.breaker;
        match (call, breaker.phase) {
            (CallKind::Probe, Phase::HalfOpen { .. }) => match outcome {
                CallOutcome::Success => breaker.close(),
                CallOutcome::Failure => {
                    breaker.open_period = breaker
                        .open_period
                        .saturating_mul(2)
                        .min(config.max_open_for);
                    breaker.open(now);
                }
                CallOutcome::Neutral => {
                    breaker.phase = Phase::HalfOpen {
                        probe_in_flight: false,
                    }
                }
            },
            (
                CallKind::Normal { epoch },
                Phase::Closed {
                    consecutive_failures,
                },
            ) if epoch == breaker.epoch => match outcome {
                CallOutcome::Success => {
                    breaker.phase = Phase::Closed {
                        consecutive_failures: 0,
                    }
                }
                CallOutcome::Failure => {
                    let consecutive_failures = consecutive_failures.saturating_add(1);
                    if consecutive_failures >= config.failure_threshold {
                        breaker.open_period = config.open_for;
                        breaker.open(now);
                    } else {
                        breaker.phase = Phase::Closed {
                            consecutive_failures,
                        };
                    }
                }
                CallOutcome::Neutral => {}
            },
            // A call admitted before the breaker last changed says nothing new.
            _ => {}
        }
    }
}

impl Breaker {
    fn open(&mut self, now: Instant) {
        let until = now
            .checked_add(self.open_period)
            .unwrap_or_else(|| now + Duration::from_secs(60 * 60));
        self.phase = Phase::Open { until };
    }

    fn close(&mut self) {
        self.phase = Phase::Closed {
            consecutive_failures: 0,
        };
        self.epoch = self.epoch.wrapping_add(1);
    }
}

impl Protection {
    /// Protection with the given limits, breaker closed and token bucket full. Values
    /// out of range are brought into range as documented on [`ProtectionConfig`].
    pub(crate) fn new(config: ProtectionConfig) -> Protection {
        let config = config.normalized();
        let now = Instant::now();
        let state = State {
            bucket: Bucket {
                tokens: f64::from(config.burst),
                refilled_at: now,
            },
            breaker: Breaker {
                phase: Phase::Closed {
                    consecutive_failures: 0,
                },
                open_period: config.open_for,
                epoch: 0,
            },
        };
        let slots = Arc::new(Semaphore::new(
            usize::try_from(config.max_concurrent).unwrap_or(Semaphore::MAX_PERMITS),
        ));
        Protection {
            shared: Arc::new(Shared {
                config,
                slots,
                in_flight: AtomicU32::new(0),
                state: Mutex::new(state),
            }),
        }
    }

    /// The limits in force, after normalization.
    #[cfg(test)]
    pub(crate) fn config(&self) -> &ProtectionConfig {
        &self.shared.config
    }

    /// Waits for a token and a concurrency slot and returns a permit, or returns Deferred
    /// when the caller should come back later instead of waiting here: breaker open
    /// (retry at the next probe time), breaker half-open with its one probe already in
    /// flight, or a token further away than `max_inline_wait`.
    ///
    /// The concurrency slot is awaited without limit. The breaker is checked again after
    /// every wait, so calls queued before an opening do not reach the PKI. A token taken
    /// by an `admit` that is cancelled while sleeping for it is not given back.
    pub(crate) async fn admit(&self) -> Result<Permit, Deferred> {
        let shared = &self.shared;
        shared.lock().gate(Instant::now(), false)?;

        let slot = Arc::clone(&shared.slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");

        let wait = {
            let mut state = shared.lock();
            let now = Instant::now();
            state.gate(now, false)?;
            state.refill(&shared.config, now);
            let tokens = state.bucket.tokens;
            let wait = if tokens >= 1.0 {
                Duration::ZERO
            } else {
                let secs = (1.0 - tokens) / shared.config.requests_per_second;
                Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
            };
            if wait > shared.config.max_inline_wait {
                return Err(Deferred {
                    retry_after: wait,
                    reason: DeferReason::RateLimited,
                });
            }
            state.bucket.tokens -= 1.0;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }

        let mut state = shared.lock();
        // After a failure, and until a success, one call at a time: a PKI that starts
        // failing sees the calls needed to confirm it, not a burst.
        if let Phase::Closed {
            consecutive_failures,
        } = state.breaker.phase
            && consecutive_failures > 0
            && shared.in_flight.load(Ordering::Relaxed) > 0
        {
            state.bucket.tokens = (state.bucket.tokens + 1.0).min(f64::from(shared.config.burst));
            return Err(Deferred {
                retry_after: PROBE_IN_FLIGHT_RETRY,
                reason: DeferReason::ProbeInFlight,
            });
        }
        let call = match state.gate(Instant::now(), true) {
            Ok(true) => CallKind::Probe,
            Ok(false) => CallKind::Normal {
                epoch: state.breaker.epoch,
            },
            Err(deferred) => {
                // The token was not used: give it back.
                state.bucket.tokens =
                    (state.bucket.tokens + 1.0).min(f64::from(shared.config.burst));
                return Err(deferred);
            }
        };
        drop(state);
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            shared: Arc::clone(shared),
            _slot: slot,
            call,
            recorded: false,
        })
    }

    /// The breaker's state now. An open breaker whose period has passed is reported as
    /// half-open: the next [`admit`](Self::admit) will be its probe.
    pub(crate) fn breaker(&self) -> BreakerState {
        let state = self.shared.lock();
        match state.breaker.phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { until } if Instant::now() < until => BreakerState::Open { until },
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many permits are held right now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u32 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
enum CallKind {
    /// The half-open breaker's probe.
    Probe,
    /// A call admitted while the breaker was closed in the given epoch.
    Normal { epoch: u64 },
}

/// Leave to make one backend call. Holds a concurrency slot until it is dropped or
/// [`record`](Self::record)ed; dropping it without recording counts as
/// [`CallOutcome::Neutral`].
#[derive(Debug)]
#[must_use = "a permit is leave to call the PKI; record the call's outcome"]
pub(crate) struct Permit {
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
    call: CallKind,
    recorded: bool,
}

impl Permit {
    /// Whether this call is the half-open breaker's probe.
    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
        matches!(self.call, CallKind::Probe)
    }

    /// Reports the call's outcome to the breaker and releases the concurrency slot.
    pub(crate) fn record(mut self, outcome: CallOutcome) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: CallOutcome) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let config = &self.shared.config;
        self.shared
            .lock()
            .record(config, Instant::now(), self.call, outcome);
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.finish(CallOutcome::Neutral);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(max_concurrent: u32, rps: f64, burst: u32) -> ProtectionConfig {
        ProtectionConfig {
            burst,
            ..ProtectionConfig::new(max_concurrent, rps)
        }
    }

    /// A breaker-focused configuration: the rate never gets in the way.
    fn breaker_config() -> ProtectionConfig {
        ProtectionConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(35),
            ..config(100, 1000.0, 1000)
        }
    }

    async fn fail(p: &Protection) {
        p.admit().await.unwrap().record(CallOutcome::Failure);
    }

    async fn open_breaker(p: &Protection) {
        for _ in 0..p.config().failure_threshold {
            fail(p).await;
        }
        assert!(matches!(p.breaker(), BreakerState::Open { .. }));
    }

    #[test]
    fn protection_is_shareable_and_admit_is_send() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: &T) {}
        let p = Protection::new(ProtectionConfig::new(1, 1.0));
        assert_send_sync(&p);
        assert_send(&p.admit());
    }

    #[test]
    fn out_of_range_config_is_normalized() {
        let p = Protection::new(ProtectionConfig {
            max_concurrent: 0,
            requests_per_second: -1.0,
            burst: 0,
            failure_threshold: 0,
            open_for: Duration::from_secs(60),
            max_open_for: Duration::from_secs(1),
            max_inline_wait: Duration::ZERO,
        });
        let c = p.config();
        assert_eq!(c.max_concurrent, 1);
        assert_eq!(c.requests_per_second, MIN_REQUESTS_PER_SECOND);
        assert_eq!(c.burst, 1);
        assert_eq!(c.failure_threshold, 1);
        assert_eq!(c.max_open_for, Duration::from_secs(60));
    }

    #[test]
    fn default_burst_is_the_rate_rounded_up() {
        assert_eq!(ProtectionConfig::new(1, 0.2).burst, 1);
        assert_eq!(ProtectionConfig::new(1, 2.5).burst, 3);
        assert_eq!(ProtectionConfig::new(1, 10.0).burst, 10);
        assert_eq!(ProtectionConfig::new(1, f64::NAN).burst, 1);
    }

    #[test]
    fn breaker_state_displays_and_maps_to_metric() {
        assert_eq!(BreakerState::Closed.to_string(), "closed");
        assert_eq!(BreakerState::HalfOpen.to_string(), "half-open");
        assert_eq!(BreakerState::Closed.metric_value(), 0);
        assert_eq!(BreakerState::HalfOpen.metric_value(), 1);
        let open = BreakerState::Open {
            until: Instant::now(),
        };
        assert_eq!(open.metric_value(), 2);
        assert!(open.to_string().starts_with("open"));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_paced_at_rate() {
        let p = Protection::new(config(10, 2.0, 3));
        let start = Instant::now();
        let mut admitted_at = Vec::new();
        for _ in 0..7 {
            p.admit().await.unwrap().record(CallOutcome::Success);
            admitted_at.push(Instant::now() - start);
        }
        let ms: Vec<u128> = admitted_at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 0, 0, 500, 1000, 1500, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_up_to_burst_only() {
        let p = Protection::new(config(10, 1.0, 2));
        for _ in 0..2 {
            p.admit().await.unwrap().record(CallOutcome::Success);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..3 {
            p.admit().await.unwrap().record(CallOutcome::Success);
        }
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_are_paced() {
        let p = Arc::new(Protection::new(ProtectionConfig {
            max_inline_wait: Duration::from_secs(10),
            ..config(100, 4.0, 1)
        }));
        let start = Instant::now();
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let p = Arc::clone(&p);
                tokio::spawn(async move {
                    p.admit().await.unwrap().record(CallOutcome::Success);
                    Instant::now() - start
                })
            })
            .collect();
        let mut ms = Vec::new();
        for task in tasks {
            ms.push(task.await.unwrap().as_millis());
        }
        ms.sort_unstable();
        assert_eq!(ms, [0, 250, 500, 750, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn far_token_is_deferred_not_awaited() {
        let p = Protection::new(config(10, 0.5, 1));
        p.admit().await.unwrap().record(CallOutcome::Success);
        let start = Instant::now();
        let deferred = p.admit().await.unwrap_err();
        assert_eq!(Instant::now(), start, "a deferral must not wait");
        assert_eq!(deferred.reason, DeferReason::RateLimited);
        assert_eq!(deferred.retry_after, Duration::from_secs(2));
        // The deferral took no token: after the announced wait a call goes through at once.
        tokio::time::advance(deferred.retry_after).await;
        let start = Instant::now();
        p.admit().await.unwrap().record(CallOutcome::Success);
        assert_eq!(Instant::now(), start);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_cap_holds() {
        let p = Arc::new(Protection::new(config(3, 1000.0, 1000)));
        let max_seen = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let p = Arc::clone(&p);
                let max_seen = Arc::clone(&max_seen);
                tokio::spawn(async move {
                    let permit = p.admit().await.unwrap();
                    max_seen.fetch_max(p.in_flight(), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10 + i % 7)).await;
                    max_seen.fetch_max(p.in_flight(), Ordering::SeqCst);
                    permit.record(CallOutcome::Success);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(max_seen.load(Ordering::SeqCst), 3);
        assert_eq!(p.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_permit_frees_its_slot() {
        let p = Protection::new(config(1, 1000.0, 1000));
        let permit = p.admit().await.unwrap();
        assert_eq!(p.in_flight(), 1);
        drop(permit);
        assert_eq!(p.in_flight(), 0);
        let _again = tokio::time::timeout(Duration::from_millis(1), p.admit())
            .await
            .expect("the slot was released")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_defers_until_probe_time() {
        let p = Protection::new(breaker_config());
        fail(&p).await;
        fail(&p).await;
        assert_eq!(p.breaker(), BreakerState::Closed);
        let opened_at = Instant::now();
        fail(&p).await;
        let until = opened_at + Duration::from_secs(10);
        assert_eq!(p.breaker(), BreakerState::Open { until });

        tokio::time::advance(Duration::from_secs(4)).await;
        let deferred = p.admit().await.unwrap_err();
        assert_eq!(deferred.reason, DeferReason::CircuitOpen { until });
        assert_eq!(deferred.retry_after, Duration::from_secs(6));

        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(p.breaker(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_consecutive_failures() {
        let p = Protection::new(breaker_config());
        for _ in 0..5 {
            fail(&p).await;
            fail(&p).await;
            p.admit().await.unwrap().record(CallOutcome::Success);
        }
        assert_eq!(p.breaker(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_outcomes_neither_trip_nor_reset() {
        let p = Protection::new(breaker_config());
        for _ in 0..10 {
            p.admit().await.unwrap().record(CallOutcome::Neutral);
        }
        assert_eq!(p.breaker(), BreakerState::Closed);
        fail(&p).await;
        fail(&p).await;
        p.admit().await.unwrap().record(CallOutcome::Neutral);
        drop(p.admit().await.unwrap());
        assert_eq!(p.breaker(), BreakerState::Closed);
        fail(&p).await;
        assert!(
            matches!(p.breaker(), BreakerState::Open { .. }),
            "the neutral outcomes must not have reset the count"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_probe_when_half_open() {
        let p = Protection::new(breaker_config());
        open_breaker(&p).await;
        tokio::time::advance(Duration::from_secs(10)).await;

        let probe = p.admit().await.unwrap();
        assert!(probe.is_probe());
        for _ in 0..5 {
            let deferred = p.admit().await.unwrap_err();
            assert_eq!(deferred.reason, DeferReason::ProbeInFlight);
            assert_eq!(deferred.retry_after, PROBE_IN_FLIGHT_RETRY);
        }
        assert_eq!(p.breaker(), BreakerState::HalfOpen);
        assert_eq!(p.in_flight(), 1);
        drop(probe);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_success_closes_and_resets_the_period() {
        let p = Protection::new(breaker_config());
        open_breaker(&p).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        fail(&p).await; // failed probe: reopens for 20s
        tokio::time::advance(Duration::from_secs(20)).await;
        p.admit().await.unwrap().record(CallOutcome::Success);
        assert_eq!(p.breaker(), BreakerState::Closed);
        let permit = p.admit().await.unwrap();
        assert!(!permit.is_probe());
        permit.record(CallOutcome::Success);

        open_breaker(&p).await;
        let now = Instant::now();
        assert_eq!(
            p.breaker(),
            BreakerState::Open {
                until: now + Duration::from_secs(10)
            },
            "closing resets the doubling"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_with_doubled_capped_period() {
        let p = Protection::new(breaker_config());
        open_breaker(&p).await;
        let mut periods = Vec::new();
        let mut period = Duration::from_secs(10);
        for _ in 0..4 {
            tokio::time::advance(period).await;
            fail(&p).await;
            let BreakerState::Open { until } = p.breaker() else {
                panic!("a failed probe must reopen the breaker");
            };
            period = until - Instant::now();
            periods.push(period.as_secs());
        }
        assert_eq!(periods, [20, 35, 35, 35]);
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_probe_lets_another_probe_through() {
        let p = Protection::new(breaker_config());
        open_breaker(&p).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(p.admit().await.unwrap());
        assert_eq!(p.breaker(), BreakerState::HalfOpen);
        let probe = p.admit().await.unwrap();
        assert!(probe.is_probe());
        probe.record(CallOutcome::Success);
        assert_eq!(p.breaker(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_of_calls_admitted_before_opening_are_ignored() {
        let p = Protection::new(breaker_config());
        let mut early = Vec::new();
        for _ in 0..6 {
            early.push(p.admit().await.unwrap());
        }
        // Three of the calls in flight fail: the breaker opens.
        let late = early.split_off(3);
        for permit in early {
            permit.record(CallOutcome::Failure);
        }
        assert!(matches!(p.breaker(), BreakerState::Open { .. }));
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = p.admit().await.unwrap();
        // The other three answer late, successfully: that says nothing about now.
        for permit in late {
            permit.record(CallOutcome::Success);
        }
        assert_eq!(p.breaker(), BreakerState::HalfOpen);
        probe.record(CallOutcome::Failure);
        assert!(matches!(p.breaker(), BreakerState::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn calls_waiting_for_a_slot_do_not_pass_an_open_breaker() {
        let p = Arc::new(Protection::new(ProtectionConfig {
            failure_threshold: 2,
            ..config(2, 1000.0, 1000)
        }));
        let first = p.admit().await.unwrap();
        let second = p.admit().await.unwrap();
        let waiter = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.admit().await.map(|permit| permit.is_probe()) })
        };
        tokio::task::yield_now().await;
        first.record(CallOutcome::Failure);
        second.record(CallOutcome::Failure);
        let deferred = waiter.await.unwrap().unwrap_err();
        assert!(matches!(deferred.reason, DeferReason::CircuitOpen { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn outage_lets_through_threshold_then_one_call_per_open_period() {
        // Threshold 5, open 30s doubling to a 5m cap; 50 requests retry every second
        // for 5 minutes against a PKI that fails every call.
        let p = Protection::new(config(10, 100.0, 100));
        let start = Instant::now();
        let mut calls = Vec::new();
        for _second in 0..300 {
            for _request in 0..50 {
                if let Ok(permit) = p.admit().await {
                    calls.push((Instant::now() - start).as_secs());
                    permit.record(CallOutcome::Failure);
                }
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // Five calls trip it at t=0; probes at 30, 30+60 and 90+120; the next at 450.
        assert_eq!(calls, [0, 0, 0, 0, 0, 30, 90, 210]);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_only_one_call_is_in_flight_until_a_success() {
        let protection = Protection::new(ProtectionConfig::new(8, 1000.0));
        let first = protection.admit().await.unwrap();
        let second = protection.admit().await.unwrap();
        first.record(CallOutcome::Failure);
        // `second` is still in flight: nothing more goes out.
        let deferred = protection.admit().await.unwrap_err();
        assert_eq!(deferred.reason, DeferReason::ProbeInFlight);
        second.record(CallOutcome::Success);
        // A success restores full concurrency.
        let a = protection.admit().await.unwrap();
        let b = protection.admit().await.unwrap();
        assert_eq!(protection.in_flight(), 2);
        drop((a, b));
    }
}
