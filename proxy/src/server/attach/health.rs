//! Backend bookkeeping of one loop: the loop's own health and balancing
//! state, and the shared counters the admin API and metrics read. Indices
//! may be `ORPHAN` when a reconfiguration removed the backend while a
//! request on it was in flight: the request finishes, nothing is counted
//! against the new configuration.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::control::board::BackendCounters;
use crate::control::unix_ms;
use crate::server::event_loop::EventLoop;
use crate::upstream::health::Health;

/// Upstream/backend index of something the configuration no longer has.
pub(in crate::server) const ORPHAN: usize = usize::MAX;

impl EventLoop {
    fn known(&self, u: usize, b: usize) -> bool {
        self.routing
            .upstreams
            .get(u)
            .is_some_and(|s| b < s.backends.len())
    }

    /// Returns the backend's shared counters; hand them back to
    /// `backend_finished` when the request ends.
    pub(super) fn backend_started(
        &mut self,
        u: usize,
        b: usize,
    ) -> Option<&'static BackendCounters> {
        if !self.known(u, b) {
            return None;
        }
        self.routing.upstreams[u].request_started(b);
        let c = self.routing.counters[u][b];
        c.request_started(self.process);
        c.requests.fetch_add(1, Relaxed);
        Some(c)
    }

    pub(super) fn backend_finished(
        &mut self,
        u: usize,
        b: usize,
        counters: Option<&'static BackendCounters>,
    ) {
        if self.known(u, b) {
            self.routing.upstreams[u].request_finished(b);
        }
        if let Some(c) = counters {
            c.request_finished(self.process);
        }
    }

    /// A request failed on backend `b`; `toward_health` when it is the
    /// request's first failure (later ones are counted, but take nobody out).
    pub(super) fn backend_failed(&mut self, u: usize, b: usize, toward_health: bool) {
        if !self.known(u, b) {
            return;
        }
        let now = self.now;
        if toward_health {
            self.routing.upstreams[u].record_failure(b, now);
        } else {
            self.routing.upstreams[u].note_failure(b, now);
        }
        let c = self.routing.counters[u][b];
        c.failures.fetch_add(1, Relaxed);
        if self.routing.upstreams[u].backends[b].health(now) == Health::Down {
            let until = unix_ms() + self.routing.upstream_cfg[u].fail_timeout.as_millis() as u64;
            c.down_until_ms.fetch_max(until, Relaxed);
        }
    }

    pub(in crate::server) fn backend_answered(
        &mut self,
        u: usize,
        b: usize,
        status: u16,
        latency: Duration,
    ) {
        if !self.known(u, b) {
            return;
        }
        let now = self.now;
        if self.routing.upstream_cfg[u].adaptive_conns && self.slots.sample(u, b, latency, now) {
            self.hand_out_slots(u); // a higher limit serves waiters now
        }
        let back = self.routing.upstreams[u].record_success(b, latency, now);
        let c = self.routing.counters[u][b];
        if back {
            // It answered a request sent while it was out (the fallback):
            // in rotation again here; other loops see it on their own.
            c.down_until_ms.store(0, Relaxed);
        }
        c.response_status(status);
        c.response.record(latency.as_secs_f64());
        let ewma = self.routing.upstreams[u].backends[b].ewma_ns;
        c.ewma_ns_bits.store(ewma.to_bits(), Relaxed);
    }

    pub(in crate::server) fn backend_connected(&mut self, u: usize, b: usize, took: Duration) {
        if self.known(u, b) {
            self.routing.counters[u][b]
                .connect
                .record(took.as_secs_f64());
        }
    }
}
