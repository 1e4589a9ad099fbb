//! `max_conns: auto` (the default): a per-backend connection limit that
//! follows what the backend can use, learned per event loop from the
//! latency of its responses.
//!
//! Without a limit every request in flight holds its own backend
//! connection: 5,000 clients mean ~5,000 hot backend sockets, which cost
//! the kernel (and the backend) more per request than a few hundred do,
//! and bring no more throughput once the backend is busy: it only queues
//! them. A fixed `max_conns` fixes that for one backend and throttles the
//! next (a long-polling one needs thousands). So the limit adapts:
//!
//! - it starts at `INITIAL` and doubles each window in which requests used
//!   most of it while latency stayed near its baseline (slow start), then,
//!   after the first back-off (which halves it), grows by √limit per such
//!   window;
//! - a window whose mean latency is over `TOLERANCE` × the baseline (the
//!   backend queues what it is sent) takes it down by `BACKOFF`, never
//!   below `FLOOR`;
//! - the baseline is the lowest window mean since the last probe: every
//!   `EPOCH` one window runs at `FLOOR` connections and its mean becomes
//!   the baseline (a backend that became slower for good is re-learned;
//!   a baseline taken while the backend already queued does not ratchet
//!   the limit up). Requests beyond `FLOOR` wait in the queue during that
//!   window (250 ms every 10 s).
//!
//! A window closes after `WINDOW` once it holds `MIN_SAMPLES` responses,
//! or after `WINDOW` without any (a backend that holds requests open, such
//! as long polling, gives no latency to learn from: the limit grows).
//! Requests beyond the limit wait in the upstream's queue
//! (`queue_timeout`), as with a fixed `max_conns`.

use std::time::{Duration, Instant};

pub const INITIAL: f64 = 64.0;
pub const FLOOR: f64 = 32.0;
pub const CEILING: f64 = 100_000.0;
const TOLERANCE: f64 = 2.0;
const BACKOFF: f64 = 0.9;
const WINDOW: Duration = Duration::from_millis(250);
/// How often the baseline is measured again at `FLOOR` connections.
const EPOCH: Duration = Duration::from_secs(10);
const MIN_SAMPLES: u32 = 16;
/// "Used most of it": connections open reached this share of the limit.
const USED_SHARE: f64 = 0.9;

#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    /// What `get` returns: `limit`, or `FLOOR` while probing (kept so the
    /// per-request read is one load).
    cap: usize,
    limit: f64,
    slow_start: bool,
    /// This window runs at `FLOOR` to measure the baseline.
    probing: bool,
    /// Lowest window mean latency since the last probe, in seconds (0: none yet).
    baseline: f64,
    epoch_start: Instant,
    window_start: Instant,
    /// `window_start + WINDOW`: before it, nothing to do (one compare).
    window_end: Instant,
    samples: u32,
    latency_sum: f64,
    /// Most connections open at once during the window.
    peak_open: usize,
}

impl AdaptiveLimit {
    pub fn new(now: Instant) -> AdaptiveLimit {
        AdaptiveLimit {
            cap: INITIAL as usize,
            limit: INITIAL,
            slow_start: true,
            probing: false,
            baseline: 0.0,
            epoch_start: now,
            window_start: now,
            window_end: now + WINDOW,
            samples: 0,
            latency_sum: 0.0,
            peak_open: 0,
        }
    }

    /// Connections the backend may have open now.
    #[inline]
    pub fn get(&self) -> usize {
        self.cap
    }

    /// A connection was opened: `open` are open now.
    #[inline]
    pub fn opened(&mut self, open: usize) {
        self.peak_open = self.peak_open.max(open);
    }

    /// A response head arrived `latency` after the request was sent; true
    /// when the limit changed.
    #[inline]
    pub fn sample(&mut self, latency: Duration, now: Instant, open: usize) -> bool {
        self.samples += 1;
        self.latency_sum += latency.as_secs_f64();
        self.maybe_close_window(now, open)
    }

    /// Closes the window when it is due (also called when a request has to
    /// wait, so a backend that answers nothing still gets windows); true
    /// when the limit changed. `open`: connections open now.
    #[inline]
    pub fn maybe_close_window(&mut self, now: Instant, open: usize) -> bool {
        now >= self.window_end && self.close_window(now, open)
    }

    #[inline(never)]
    fn close_window(&mut self, now: Instant, open: usize) -> bool {
        let age = now.saturating_duration_since(self.window_start);
        let few = self.samples > 0 && self.samples < MIN_SAMPLES;
        if age < WINDOW || (few && age < 4 * WINDOW) {
            // Too few answers yet: look again a little later.
            self.window_end = now + WINDOW / 4;
            return false;
        }
        let before = self.get();
        let mean = (self.samples > 0).then(|| self.latency_sum / f64::from(self.samples));
        let used = self.peak_open.max(open) as f64 >= self.get() as f64 * USED_SHARE;
        if self.probing {
            self.probing = false;
            if let Some(mean) = mean {
                self.baseline = mean;
            }
        } else if let Some(mean) = mean {
            if self.baseline == 0.0 || mean < self.baseline {
                self.baseline = mean;
            }
            if mean > self.baseline * TOLERANCE {
                // Leaving slow start: the last doubling overshot, halve it
                // (as TCP does); later, step down gently.
                let factor = if self.slow_start { 0.5 } else { BACKOFF };
                self.slow_start = false;
                self.limit = (self.limit * factor).max(FLOOR);
            } else if used {
                self.grow();
            }
            if now.saturating_duration_since(self.epoch_start) >= EPOCH {
                self.epoch_start = now;
                self.probing = self.limit > FLOOR;
            }
        } else if used {
            self.grow();
        }
        self.window_start = now;
        self.window_end = now + WINDOW;
        self.samples = 0;
        self.latency_sum = 0.0;
        self.peak_open = 0;
        self.cap = if self.probing {
            self.limit.min(FLOOR) as usize
        } else {
            self.limit as usize
        };
        self.cap != before
    }

    fn grow(&mut self) {
        let next = if self.slow_start {
            self.limit * 2.0
        } else {
            self.limit + self.limit.sqrt()
        };
        self.limit = next.min(CEILING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `windows` windows in which `open` connections are open and
    /// every response takes `latency(limit)`.
    fn run(
        l: &mut AdaptiveLimit,
        t: &mut Instant,
        windows: usize,
        latency: impl Fn(usize) -> Duration,
    ) {
        for _ in 0..windows {
            for _ in 0..MIN_SAMPLES {
                l.opened(l.get());
                l.sample(latency(l.get()), *t, l.get());
            }
            *t += WINDOW;
            l.maybe_close_window(*t, l.get());
        }
    }

    #[test]
    fn grows_while_latency_holds_and_the_limit_is_used() {
        let mut t = Instant::now();
        let mut l = AdaptiveLimit::new(t);
        run(&mut l, &mut t, 6, |_| Duration::from_millis(5));
        assert!(l.get() >= 64 << 5, "slow start doubles: {}", l.get());
    }

    #[test]
    fn backs_off_when_latency_grows_with_concurrency() {
        let mut t = Instant::now();
        let mut l = AdaptiveLimit::new(t);
        // A backend that serves 64 at once and queues the rest.
        let queueing = |open: usize| Duration::from_micros(1000 * (open.max(64) as u64) / 64);
        run(&mut l, &mut t, 200, queueing);
        assert!(
            l.get() <= 200,
            "settles near what the backend serves: {}",
            l.get()
        );
        assert!(l.get() >= FLOOR as usize);
    }

    #[test]
    fn a_backend_that_became_slower_for_good_is_learned_again() {
        let mut t = Instant::now();
        let mut l = AdaptiveLimit::new(t);
        run(&mut l, &mut t, 8, |_| Duration::from_millis(1));
        let before = l.get();
        run(&mut l, &mut t, 30, |_| Duration::from_millis(10));
        assert!(l.get() < before / 8, "backed off: {before} -> {}", l.get());
        // The next probe measures 10 ms as the baseline; then it grows again.
        run(&mut l, &mut t, 200, |_| Duration::from_millis(10));
        assert!(l.get() >= 1000, "{}", l.get());
    }

    #[test]
    fn a_backend_that_answers_nothing_does_not_hold_the_limit_down() {
        let mut t = Instant::now();
        let mut l = AdaptiveLimit::new(t);
        for _ in 0..8 {
            t += WINDOW;
            l.maybe_close_window(t, l.get());
        }
        assert!(l.get() >= 64 << 7, "{}", l.get());
    }

    #[test]
    fn an_unused_limit_does_not_grow() {
        let mut t = Instant::now();
        let mut l = AdaptiveLimit::new(t);
        for _ in 0..20 {
            l.opened(3);
            for _ in 0..MIN_SAMPLES {
                l.sample(Duration::from_millis(1), t, 3);
            }
            t += WINDOW;
            l.maybe_close_window(t, 3);
        }
        assert_eq!(l.get(), INITIAL as usize);
    }
}
