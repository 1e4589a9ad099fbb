//! Backend state per event loop and passive health checks. Each loop keeps
//! its own copy (no sharing on the request path): requests in flight, the
//! counters the admin API shows, the peak-EWMA latency p2c balances on, and
//! the failure window that takes a backend out of rotation for a while.
//! The active check's verdict (`upstream::probe`) is read from the board.
//!
//! Passive health only ever narrows the choice: a sole backend is never
//! taken out, and when it has taken out every backend the balancers fall
//! back to the one that failed least recently (`least_recently_failed`),
//! so a wrong verdict costs a retry, never an outage of its own making.

use crate::config::UpstreamConfig;
use crate::control::active_health::ActiveHealth;
use crate::control::board::BackendCounters;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Time constant of the latency EWMA: a sample's weight halves in about
/// 7 s (τ·ln 2), so the average follows a backend that got slower within
/// seconds without jumping on one slow response.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct BackendState {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Requests in flight on this backend from this event loop.
    pub active: u32,
    pub requests: u64,
    pub failures: u64,
    /// Peak-EWMA of response latency, nanoseconds (0 = no sample yet).
    pub ewma_ns: f64,
    /// When `ewma_ns` was last updated.
    ewma_at: Option<Instant>,
    /// Failures counted in the current window, which opened at `window_start`.
    window_fails: u32,
    window_start: Option<Instant>,
    /// Marked down until then (skipped by every balancer).
    down_until: Option<Instant>,
    /// When it was last marked down: a success of a request that started
    /// after this shows the backend is back.
    down_since: Option<Instant>,
    /// The latest failure (counted toward health or not): orders the
    /// fallback when every backend is out.
    last_failure: Option<Instant>,
    /// Set when the backend went down; cleared by the first success after it
    /// came back. While set, one failure takes the backend down again: a
    /// backend that is still broken gets one request per fail_timeout, not
    /// max_fails of them.
    probing: bool,
    /// The active health check's verdict on the board (shared by every
    /// loop and process); `NO_ACTIVE_CHECK` until `follow_active_checks`.
    active_health: &'static ActiveHealth,
}

/// The verdict of backends not on a board (unit tests): never down.
static NO_ACTIVE_CHECK: ActiveHealth = ActiveHealth::off();

/// Whether a backend is in rotation, as the admin API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Back in rotation after being down; the next failure takes it down again.
    Probing,
    Down,
}

#[derive(Debug, Clone)]
pub struct UpstreamState {
    pub backends: Vec<BackendState>,
    max_fails: u32,
    fail_timeout: Duration,
}

impl BackendState {
    pub fn new(addr: SocketAddr, weight: u32) -> BackendState {
        BackendState {
            addr,
            weight,
            active: 0,
            requests: 0,
            failures: 0,
            ewma_ns: 0.0,
            ewma_at: None,
            window_fails: 0,
            window_start: None,
            down_until: None,
            down_since: None,
            last_failure: None,
            probing: false,
            active_health: &NO_ACTIVE_CHECK,
        }
    }

    pub fn health(&self, now: Instant) -> Health {
        match self.down_until {
            Some(t) if now < t => Health::Down,
            _ if self.probing => Health::Probing,
            _ => Health::Up,
        }
    }

    /// The latency estimate as of `now`: the peak EWMA decayed for the time
    /// since its last sample, so a backend that was slow once and then got
    /// no traffic (p2c avoided it) is tried again after a while.
    pub fn latency_ns(&self, now: Instant) -> f64 {
        match self.ewma_at {
            None => 0.0,
            Some(at) => self.ewma_ns * decay(now.saturating_duration_since(at)),
        }
    }

    fn observe_latency(&mut self, latency: Duration, now: Instant) {
        let sample = latency.as_secs_f64() * 1e9; // not as_nanos(): a u128 to convert
        self.ewma_ns = match self.ewma_at {
            // Peak: a sample above the average replaces it at once, so a
            // backend that slows down is avoided before the average catches up.
            Some(_) if sample > self.ewma_ns => sample,
            Some(at) => {
                let w = decay(now.saturating_duration_since(at));
                self.ewma_ns * w + sample * (1.0 - w)
            }
            None => sample,
        };
        self.ewma_at = Some(now);
    }
}

/// The weight left to an old average after `elapsed`: e^(−elapsed/τ).
fn decay(elapsed: Duration) -> f64 {
    let x = elapsed.as_secs_f64() / EWMA_DECAY.as_secs_f64();
    if x < 1e-3 {
        // Between the responses of a busy backend x is tiny: the series to
        // the cubic term is exact to f64 rounding there (error < x⁴/24) and
        // spares a libm call per response.
        1.0 - x * (1.0 - x * (0.5 - x / 6.0))
    } else {
        (-x).exp()
    }
}

impl UpstreamState {
    pub fn from_config(cfg: &UpstreamConfig) -> UpstreamState {
        UpstreamState {
            backends: cfg
                .backends
                .iter()
                .map(|b| BackendState::new(b.addr, b.weight))
                .collect(),
            max_fails: cfg.max_fails,
            fail_timeout: cfg.fail_timeout,
        }
    }

    /// Reads each backend's active-check verdict from its board counters
    /// (`counters[i]` belongs to backend `i`).
    pub fn follow_active_checks(mut self, counters: &[&'static BackendCounters]) -> Self {
        for (b, c) in self.backends.iter_mut().zip(counters) {
            b.active_health = &c.active_health;
        }
        self
    }

    /// False while the backend is marked down by passive health checks or
    /// by the active check (one relaxed load: no lock on the request path).
    #[inline]
    pub fn is_available(&self, idx: usize, now: Instant) -> bool {
        let b = &self.backends[idx];
        b.down_until.is_none_or(|t| now >= t) && !b.active_health.is_down()
    }

    /// The active health check holds the backend out of rotation (passive
    /// health aside: the fallback never overrides this verdict).
    #[inline]
    pub fn is_held_down(&self, idx: usize) -> bool {
        self.backends[idx].active_health.is_down()
    }

    /// Passive health has taken out every backend the active check lets
    /// through: requests go to them anyway (`least_recently_failed`).
    pub fn all_passively_out(&self, now: Instant) -> bool {
        let n = self.backends.len();
        !(0..n).any(|i| self.is_available(i, now)) && (0..n).any(|i| !self.is_held_down(i))
    }

    /// Whether backend `idx` takes new requests: in rotation, or, while
    /// `all_passively_out`, anything the active check does not hold down.
    #[inline]
    pub fn takes_requests(&self, idx: usize, now: Instant, all_out: bool) -> bool {
        if all_out {
            !self.is_held_down(idx)
        } else {
            self.is_available(idx, now)
        }
    }

    /// The fallback pick when no backend is in rotation: of those not in
    /// `exclude` and not held down by the active check, the one whose last
    /// failure is the oldest (a backend that never failed first; ties to the
    /// first listed). Each failed fallback makes its backend the most recent,
    /// so a run of requests walks through the backends instead of hammering
    /// one.
    pub fn least_recently_failed(&self, exclude: &[usize]) -> Option<usize> {
        (0..self.backends.len())
            .filter(|i| !exclude.contains(i) && !self.is_held_down(*i))
            .min_by_key(|&i| self.backends[i].last_failure)
    }

    pub fn request_started(&mut self, idx: usize) {
        let b = &mut self.backends[idx];
        b.active += 1;
        b.requests += 1;
    }

    pub fn request_finished(&mut self, idx: usize) {
        let b = &mut self.backends[idx];
        b.active = b.active.saturating_sub(1);
    }

    /// A response head arrived after `latency`: updates the peak EWMA.
    /// True when this brought a backend that was down back into rotation
    /// (the request was sent while it was down: the fallback).
    pub fn record_success(&mut self, idx: usize, latency: Duration, now: Instant) -> bool {
        let b = &mut self.backends[idx];
        b.observe_latency(latency, now);
        let Some(since) = b.down_since else {
            return false; // never down, or back and answering: nothing to end
        };
        // A success from a request sent before the backend went down says
        // little; one sent after (while it was down, or once it came back)
        // shows it works again and ends the penalty and the probation.
        if now
            .checked_sub(latency)
            .is_none_or(|started| started < since)
        {
            return false;
        }
        let was_down = b.down_until.is_some_and(|t| now < t);
        b.probing = false;
        b.down_until = None;
        b.down_since = None;
        was_down
    }

    /// A failure that does not count toward `max_fails`: shown in the
    /// counters and ordering the fallback, but it takes nobody out (a
    /// request's failures after its first, see `server::proxy`).
    pub fn note_failure(&mut self, idx: usize, now: Instant) {
        let b = &mut self.backends[idx];
        b.failures += 1;
        b.last_failure = Some(now);
    }

    /// Connect refused/timed out, reset or garbage: counts toward max_fails.
    /// `max_fails: 0` turns passive health off (failures are still counted),
    /// and so does being the upstream's only backend: taking it out could
    /// only turn a failing backend into a 503 for everyone, and would keep
    /// its recovery from being seen (the active check still can take it out).
    pub fn record_failure(&mut self, idx: usize, now: Instant) {
        self.note_failure(idx, now);
        let (max_fails, fail_timeout) = (self.max_fails, self.fail_timeout);
        if max_fails == 0 || self.backends.len() == 1 {
            return;
        }
        let b = &mut self.backends[idx];
        if b.down_until.is_some_and(|t| now < t) {
            // Already down: late failures of requests sent before do not
            // extend the penalty.
            return;
        }
        let window_open = b
            .window_start
            .is_some_and(|start| now.saturating_duration_since(start) < fail_timeout);
        if !window_open {
            b.window_start = Some(now);
            b.window_fails = 0;
        }
        b.window_fails += 1;
        if b.probing || b.window_fails >= max_fails {
            b.down_until = Some(now + fail_timeout);
            b.down_since = Some(now);
            b.probing = true;
            b.window_fails = 0;
            b.window_start = None;
        }
    }

    /// Failures counted toward max_fails so far in the current window.
    pub fn window_failures(&self, idx: usize, now: Instant) -> u32 {
        let b = &self.backends[idx];
        match b.window_start {
            Some(start) if now.saturating_duration_since(start) < self.fail_timeout => {
                b.window_fails
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn upstream(n: usize, max_fails: u32, fail_timeout: Duration) -> UpstreamState {
        let cfg = UpstreamConfig {
            backends: (0..n)
                .map(|i| BackendConfig {
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    weight: 1,
                    tls: None,
                })
                .collect(),
            keepalive: None,
            keepalive_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_fails,
            fail_timeout,
            retries: 2,
            max_conns: 0,
            adaptive_conns: false,
            queue_timeout: Duration::from_secs(5),
            health_check: None,
        };
        UpstreamState::from_config(&cfg)
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn decay_series_matches_exp() {
        for ns in [
            0u64,
            1,
            1_000,
            50_000,
            1_000_000,
            9_999_999,
            10_000_000,
            10_000_001,
            3_000_000_000,
        ] {
            let d = Duration::from_nanos(ns);
            let exact = (-d.as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
            assert!(
                (decay(d) - exact).abs() < 1e-13,
                "{ns} ns: {} vs {exact}",
                decay(d)
            );
        }
    }

    #[test]
    fn max_fails_within_the_window_marks_down_for_fail_timeout() {
        let t0 = Instant::now();
        let mut u = upstream(2, 3, 10 * S);
        u.record_failure(0, t0);
        u.record_failure(0, t0 + S);
        assert!(u.is_available(0, t0 + S));
        assert_eq!(u.window_failures(0, t0 + S), 2);
        u.record_failure(0, t0 + 2 * S);
        assert!(!u.is_available(0, t0 + 2 * S));
        assert!(!u.is_available(0, t0 + 11 * S));
        assert_eq!(u.backends[0].health(t0 + 5 * S), Health::Down);
        assert!(u.is_available(0, t0 + 12 * S), "back after fail_timeout");
        assert!(
            u.is_available(1, t0 + 2 * S),
            "the other backend is untouched"
        );
        assert_eq!(u.backends[0].failures, 3);
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_mark_down() {
        let t0 = Instant::now();
        let mut u = upstream(2, 2, 10 * S);
        u.record_failure(0, t0);
        u.record_failure(0, t0 + 11 * S); // the first one has aged out
        assert!(u.is_available(0, t0 + 11 * S));
        u.record_failure(0, t0 + 12 * S);
        assert!(!u.is_available(0, t0 + 12 * S));
    }

    #[test]
    fn a_recovered_backend_that_fails_again_goes_down_at_once() {
        let t0 = Instant::now();
        let mut u = upstream(2, 3, 10 * S);
        for i in 0..3 {
            u.record_failure(0, t0 + i * S / 10);
        }
        let back = t0 + 11 * S;
        assert_eq!(u.backends[0].health(back), Health::Probing);
        u.record_failure(0, back);
        assert!(!u.is_available(0, back), "one failure while probing");
        // It comes back, answers, and then needs max_fails again.
        let later = back + 11 * S;
        u.record_success(0, Duration::from_millis(1), later);
        assert_eq!(u.backends[0].health(later), Health::Up);
        u.record_failure(0, later);
        u.record_failure(0, later);
        assert!(u.is_available(0, later));
    }

    #[test]
    fn failures_while_down_do_not_extend_it() {
        let t0 = Instant::now();
        let mut u = upstream(2, 1, 10 * S);
        u.record_failure(0, t0);
        u.record_failure(0, t0 + 9 * S);
        assert!(u.is_available(0, t0 + 10 * S));
        assert_eq!(u.backends[0].failures, 2);
    }

    #[test]
    fn a_sole_backend_is_never_taken_out() {
        let t0 = Instant::now();
        let mut u = upstream(1, 1, 10 * S);
        for i in 0..50 {
            u.record_failure(0, t0 + i * S / 10);
        }
        assert!(u.is_available(0, t0 + 5 * S));
        assert_eq!(u.backends[0].health(t0 + 5 * S), Health::Up);
        assert_eq!(u.backends[0].failures, 50, "still counted");
    }

    #[test]
    fn a_success_sent_while_down_brings_the_backend_back() {
        let t0 = Instant::now();
        let mut u = upstream(2, 1, 10 * S);
        let ms = Duration::from_millis;
        u.record_failure(0, t0);
        // Sent before it went down: says nothing.
        assert!(!u.record_success(0, ms(500), t0 + ms(100)));
        assert!(!u.is_available(0, t0 + ms(100)));
        // Sent after (the fallback tried it): back at once, not on probation.
        assert!(u.record_success(0, ms(1), t0 + S));
        assert!(u.is_available(0, t0 + S));
        assert_eq!(u.backends[0].health(t0 + S), Health::Up);
        u.record_failure(1, t0 + S);
        assert!(
            !u.is_available(1, t0 + S),
            "the other one is unaffected: max_fails 1"
        );
    }

    #[test]
    fn the_fallback_takes_the_least_recently_failed_backend() {
        let t0 = Instant::now();
        let mut u = upstream(3, 1, 10 * S);
        assert!(!u.all_passively_out(t0));
        u.record_failure(1, t0);
        u.record_failure(0, t0 + S);
        u.record_failure(2, t0 + 2 * S);
        let now = t0 + 3 * S;
        assert!(u.all_passively_out(now));
        assert!((0..3).all(|i| u.takes_requests(i, now, true)));
        assert!(!u.takes_requests(0, now, false));
        assert_eq!(u.least_recently_failed(&[]), Some(1));
        assert_eq!(u.least_recently_failed(&[1]), Some(0));
        assert_eq!(u.least_recently_failed(&[0, 1, 2]), None);
        // A failure that does not count still moves it to the back.
        u.note_failure(1, now);
        assert_eq!(u.least_recently_failed(&[]), Some(0));
        assert_eq!(u.backends[1].failures, 2);
    }

    #[test]
    fn max_fails_zero_never_marks_down() {
        let t0 = Instant::now();
        let mut u = upstream(1, 0, 10 * S);
        for _ in 0..100 {
            u.record_failure(0, t0);
        }
        assert!(u.is_available(0, t0));
        assert_eq!(u.backends[0].failures, 100);
    }

    #[test]
    fn counts_active_and_requests() {
        let mut u = upstream(1, 1, 10 * S);
        u.request_started(0);
        u.request_started(0);
        assert_eq!(u.backends[0].active, 2);
        u.request_finished(0);
        u.request_finished(0);
        u.request_finished(0); // never below zero
        assert_eq!(u.backends[0].active, 0);
        assert_eq!(u.backends[0].requests, 2);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let mut u = upstream(1, 1, 10 * S);
        let ms = |n: u64| Duration::from_millis(n);
        u.record_success(0, ms(10), t0);
        assert_eq!(u.backends[0].ewma_ns, 10e6);
        u.record_success(0, ms(50), t0 + S);
        assert_eq!(u.backends[0].ewma_ns, 50e6, "a peak replaces the average");
        // A fast sample 10 s (one τ) later: weight e^-1 on the old average.
        u.record_success(0, ms(10), t0 + 11 * S);
        let want = 50e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
        assert!((u.backends[0].ewma_ns - want).abs() < 1.0);
        // Samples close together barely move it.
        let before = u.backends[0].ewma_ns;
        u.record_success(0, ms(1), t0 + 11 * S + ms(1));
        assert!(before - u.backends[0].ewma_ns < 0.001 * before);
        // Without samples the estimate fades, so the backend is tried again.
        let b = &u.backends[0];
        assert!(b.latency_ns(t0 + 100 * S) < b.ewma_ns / 1000.0);
    }
}
