//! TLS to a backend, on the loop's side: the handshake that follows the
//! connect (non-blocking, under the upstream's `connect_timeout`), what a
//! finished or failed one is counted as, and the log line that names why
//! a backend's certificate was refused.

use super::event_loop::EventLoop;
use crate::stats::LoopStats;
use crate::tls::upstream::UpstreamTlsFailure;

/// Where a backend connection's handshake stands after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handshake {
    /// Plaintext, or established before this turn.
    Ready,
    /// Finished in this turn.
    JustDone,
    /// Waits for the socket.
    Waiting,
    /// Refused or broken: counted and logged; the connection must close.
    Failed,
}

impl EventLoop {
    /// Drives the handshake of backend connection `uk` as far as the
    /// socket allows.
    pub(super) fn upstream_handshake(&mut self, uk: usize) -> Handshake {
        let stats = self.stats;
        let up = self.upstream_mut(uk);
        let Some(tls) = up.tls.as_deref_mut() else {
            return Handshake::Ready;
        };
        if tls.established {
            return Handshake::Ready;
        }
        if up.ready == 0 {
            return Handshake::Waiting;
        }
        match tls.handshake(&mut up.stream, &mut up.ready) {
            Ok(true) => {
                let kind = if tls.resumed() {
                    &stats.upstream_tls_resumed
                } else {
                    &stats.upstream_tls_full
                };
                LoopStats::add(kind, 1);
                Handshake::JustDone
            }
            Ok(false) => Handshake::Waiting,
            Err(e) => {
                let why = tls
                    .error()
                    .map_or(UpstreamTlsFailure::Closed, UpstreamTlsFailure::of);
                let (u, b) = (up.upstream as usize, up.backend as usize);
                self.upstream_tls_failed(u, b, why, &e);
                Handshake::Failed
            }
        }
    }

    /// The handshake with backend `b` of upstream `u` did not finish within
    /// `connect_timeout`, if `uk` was still in one.
    pub(super) fn upstream_handshake_timed_out(&mut self, uk: usize) {
        let up = self.upstream_mut(uk);
        if up.connecting || up.tls.as_deref().is_none_or(|t| t.established) {
            return;
        }
        let (u, b) = (up.upstream as usize, up.backend as usize);
        let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
        self.upstream_tls_failed(u, b, UpstreamTlsFailure::Timeout, &e);
    }

    fn upstream_tls_failed(
        &mut self,
        u: usize,
        b: usize,
        why: UpstreamTlsFailure,
        e: &dyn std::fmt::Display,
    ) {
        LoopStats::add(&self.stats.upstream_tls_failures[why as usize], 1);
        let upstream = self.routing.config.upstreams.get_index(u).map(|(n, _)| n);
        let addr = self
            .routing
            .upstream_cfg
            .get(u)
            .and_then(|c| c.backends.get(b))
            .map(|c| c.addr);
        tracing::warn!(
            upstream = upstream.map_or("-", |n| n.as_str()),
            backend = ?addr,
            reason = why.label(),
            "TLS handshake with the backend failed: {e}"
        );
    }
}
