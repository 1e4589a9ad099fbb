//! One backend's active-health verdict as the board holds it: written by
//! the prober (`upstream::probe`), read with one atomic load by every loop
//! of every process, and copied out for the admin API and metrics. Here,
//! below the board, so the board depends on nothing that uses it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::config::HealthCheckConfig;

/// `ActiveHealth::state`: no check configured (the backend is in rotation
/// as far as active checks go), or the check's verdict.
pub const OFF: u32 = 0;
pub const UP: u32 = 1;
pub const DOWN: u32 = 2;

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A status within `expect_status`.
    Ok,
    /// The connection was refused or failed.
    ConnectFailed,
    /// No whole response head within `timeout` (connect included).
    Timeout,
    /// A status outside `expect_status`.
    BadStatus,
    /// Not an HTTP/1.x response head, or closed before one.
    Malformed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::ConnectFailed,
        Outcome::Timeout,
        Outcome::BadStatus,
        Outcome::Malformed,
    ];

    /// The name the admin API and the metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::Timeout => "timeout",
            Outcome::BadStatus => "bad_status",
            Outcome::Malformed => "malformed_response",
        }
    }
}

/// One backend's active-check state on the board. Written only by the
/// prober's thread; read by anyone.
#[repr(C)]
#[derive(Debug)]
pub struct ActiveHealth {
    /// `OFF`, `UP` or `DOWN`.
    state: AtomicU32,
    /// Probes in a row that passed / failed (the other is 0).
    successes: AtomicU32,
    failures: AtomicU32,
    /// Status of the last probe (0: it got none).
    last_status: AtomicU32,
    /// `Outcome` index + 1 of the last probe (0: none yet).
    last_outcome: AtomicU32,
    last_unix_ms: AtomicU64,
    /// Probes by `Outcome` index, since the proxy started.
    probes: [AtomicU64; Outcome::ALL.len()],
}

/// A copy of `ActiveHealth` for the admin API and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveHealthSnapshot {
    /// "off", "up" or "down".
    pub state: &'static str,
    pub successes: u32,
    pub failures: u32,
    pub last_status: Option<u16>,
    pub last_outcome: Option<Outcome>,
    pub last_unix_ms: Option<u64>,
    /// Probes by outcome, in `Outcome::ALL` order.
    pub probes: [u64; Outcome::ALL.len()],
}

impl Default for ActiveHealthSnapshot {
    /// A backend without a check.
    fn default() -> Self {
        ActiveHealth::off().snapshot()
    }
}

impl ActiveHealth {
    /// No check: what a zeroed board holds.
    pub const fn off() -> ActiveHealth {
        ActiveHealth {
            state: AtomicU32::new(OFF),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            last_status: AtomicU32::new(0),
            last_outcome: AtomicU32::new(0),
            last_unix_ms: AtomicU64::new(0),
            probes: [const { AtomicU64::new(0) }; Outcome::ALL.len()],
        }
    }

    /// Whether the active check holds the backend out of rotation: the
    /// one load the request path pays.
    #[inline]
    pub fn is_down(&self) -> bool {
        self.state.load(Relaxed) == DOWN
    }

    /// A check starts: the backend counts as up until `fall` probes fail,
    /// so a restart or a reconfiguration never blackholes traffic.
    pub fn start(&self) {
        self.successes.store(0, Relaxed);
        self.failures.store(0, Relaxed);
        self.last_status.store(0, Relaxed);
        self.last_outcome.store(0, Relaxed);
        self.last_unix_ms.store(0, Relaxed);
        self.state.store(UP, Relaxed);
    }

    /// The check was removed (or the backend): back to passive health only.
    pub fn stop(&self) {
        self.state.store(OFF, Relaxed);
        self.successes.store(0, Relaxed);
        self.failures.store(0, Relaxed);
    }

    /// Counts a probe; returns the new state when it changed.
    pub fn record(&self, outcome: Outcome, status: u16, check: &HealthCheckConfig) -> Option<u32> {
        self.probes[outcome as usize].fetch_add(1, Relaxed);
        self.last_outcome.store(outcome as u32 + 1, Relaxed);
        self.last_status.store(u32::from(status), Relaxed);
        self.last_unix_ms.store(super::unix_ms(), Relaxed);
        let state = self.state.load(Relaxed);
        // One writer (the prober's thread): load then store is enough.
        let bump = |n: &AtomicU32| {
            let v = n.load(Relaxed).saturating_add(1);
            n.store(v, Relaxed);
            v
        };
        let next = if outcome == Outcome::Ok {
            self.failures.store(0, Relaxed);
            let n = bump(&self.successes);
            (state == DOWN && n >= check.rise).then_some(UP)
        } else {
            self.successes.store(0, Relaxed);
            let n = bump(&self.failures);
            (state != DOWN && n >= check.fall).then_some(DOWN)
        };
        if let Some(s) = next {
            self.state.store(s, Relaxed);
        }
        next
    }

    pub fn snapshot(&self) -> ActiveHealthSnapshot {
        let last_outcome = self.last_outcome.load(Relaxed) as usize;
        ActiveHealthSnapshot {
            state: match self.state.load(Relaxed) {
                UP => "up",
                DOWN => "down",
                _ => "off",
            },
            successes: self.successes.load(Relaxed),
            failures: self.failures.load(Relaxed),
            last_status: match self.last_status.load(Relaxed) {
                0 => None,
                s => Some(s as u16),
            },
            last_outcome: last_outcome
                .checked_sub(1)
                .and_then(|i| Outcome::ALL.get(i).copied()),
            last_unix_ms: match self.last_unix_ms.load(Relaxed) {
                0 => None,
                t => Some(t),
            },
            probes: std::array::from_fn(|i| self.probes[i].load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(rise: u32, fall: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            path: "/healthz".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
            rise,
            fall,
            expect_status: (200, 399),
            host: None,
        }
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down_and_rise_successes_bring_it_back() {
        let v = ActiveHealth::off();
        let c = check(2, 3);
        assert_eq!(v.snapshot().state, "off");
        v.start();
        assert!(!v.is_down(), "starts up");
        assert_eq!(v.record(Outcome::Timeout, 0, &c), None);
        assert_eq!(v.record(Outcome::BadStatus, 500, &c), None);
        // A success in between starts the count again.
        assert_eq!(v.record(Outcome::Ok, 200, &c), None);
        assert_eq!(v.record(Outcome::ConnectFailed, 0, &c), None);
        assert_eq!(v.record(Outcome::Malformed, 0, &c), None);
        assert_eq!(v.record(Outcome::BadStatus, 503, &c), Some(DOWN));
        assert!(v.is_down());
        assert_eq!(v.record(Outcome::BadStatus, 503, &c), None, "already down");
        assert_eq!(v.record(Outcome::Ok, 200, &c), None);
        assert_eq!(v.record(Outcome::Ok, 204, &c), Some(UP));
        let s = v.snapshot();
        assert_eq!((s.state, s.successes, s.failures), ("up", 2, 0));
        assert_eq!(s.last_status, Some(204));
        assert_eq!(s.last_outcome, Some(Outcome::Ok));
        assert_eq!(s.probes, [3, 1, 1, 3, 1]);
        v.stop();
        assert_eq!(v.snapshot().state, "off");
        assert!(!v.is_down());
    }
}
