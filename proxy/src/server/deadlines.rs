//! Deadlines of a busy exchange: what it waits for (which decides its
//! timeout and `server.min_rate`'s charge), and what happens when the
//! deadline of a client connection passes in each phase.

use std::time::Duration;

use super::conn::{Entry, Exchange, Phase, WRITABLE};
use super::drive::Step;
use super::event_loop::EventLoop;
use super::exchange::UpstreamFailure;
use crate::http::errors::Reject;
use crate::stats::LoopStats;
use crate::timer::Millis;

/// What a busy exchange is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Tunnel,
    Connect,
    ClientWrite,
    UpstreamWrite,
    ClientBody,
    UpstreamResponse,
    UpstreamBody,
}

impl EventLoop {
    /// Puts the exchange back (or releases it when idle) and refreshes the
    /// deadline of a busy connection.
    pub(super) fn park(&mut self, ck: usize, mut ex: Box<Exchange>) {
        let phase = self.client_mut(ck).phase;
        if phase == Phase::Busy {
            let waiting = self.waiting_on(ck, &ex);
            let d = self.busy_timeout(&ex, waiting);
            let mut deadline = self.now_ms.saturating_add(d.as_millis() as Millis);
            if let Some(out_of_credit) = self.charge_min_rate(&mut ex, waiting) {
                deadline = deadline.min(out_of_credit);
            }
            self.set_deadline_at(ck, deadline);
        }
        if ex.is_idle() && phase != Phase::Closing {
            self.recycle_exchange(ex);
        } else {
            self.client_mut(ck).ex = Some(ex);
        }
    }

    /// What a busy exchange waits for now: decides its timeout, and what
    /// happens when that passes (`client_timeout`).
    fn waiting_on(&self, ck: usize, ex: &Exchange) -> Waiting {
        let upstream = ex.upstream_key.and_then(|k| match self.slab.get(k) {
            Some(Entry::Upstream(u)) => Some(u),
            _ => None,
        });
        let client_writable = match self.slab.get(ck) {
            Some(Entry::Client(c)) => c.ready & WRITABLE != 0,
            _ => true,
        };
        let to_upstream = ex.req_head_unsent() > 0 || ex.req_body.pending() > 0;
        if ex.tunnel {
            Waiting::Tunnel
        } else if upstream.is_some_and(|u| !u.is_ready()) {
            Waiting::Connect
        } else if ex.pending_to_client() && !client_writable {
            Waiting::ClientWrite
        } else if to_upstream && upstream.is_some_and(|u| u.ready & WRITABLE == 0) {
            Waiting::UpstreamWrite
        } else if !ex.req_body.is_scanned() {
            Waiting::ClientBody
        } else if ex.resp_body.is_none() {
            Waiting::UpstreamResponse
        } else {
            Waiting::UpstreamBody
        }
    }

    fn busy_timeout(&self, ex: &Exchange, waiting: Waiting) -> Duration {
        let server = &self.routing.config.server;
        let Some(up) = self.routing.upstream_cfg.get(ex.upstream) else {
            return server.read_timeout; // reconfigured away: server timeouts only
        };
        match waiting {
            Waiting::Tunnel => server.idle_timeout,
            Waiting::Connect => up.connect_timeout,
            Waiting::ClientWrite => server.write_timeout,
            Waiting::UpstreamWrite => up.write_timeout,
            // Upstream read_timeout bounds the wait for the response head;
            // once the body streams, gaps between its bytes get the server's.
            Waiting::ClientBody | Waiting::UpstreamBody => server.read_timeout,
            Waiting::UpstreamResponse => up.read_timeout,
        }
    }

    /// `server.min_rate` (see `min_rate.rs`): brings the client's credit up
    /// to now and returns when it runs out, if the proxy waits on the client.
    fn charge_min_rate(&self, ex: &mut Exchange, waiting: Waiting) -> Option<Millis> {
        let server = &self.routing.config.server;
        if server.min_rate == 0 {
            return None;
        }
        let on_client = matches!(waiting, Waiting::ClientBody | Waiting::ClientWrite);
        let grace = server.min_rate_grace.as_millis() as u64;
        ex.rate.wait(on_client, self.now_ms, server.min_rate, grace)
    }

    /// The client the proxy waits on has spent its `min_rate` credit.
    fn below_min_rate(&self, ex: &mut Exchange, waiting: Waiting) -> bool {
        let server = &self.routing.config.server;
        let on_client = matches!(waiting, Waiting::ClientBody | Waiting::ClientWrite);
        if server.min_rate == 0 || !on_client {
            return false;
        }
        let grace = server.min_rate_grace.as_millis() as u64;
        ex.rate.settle(self.now_ms, server.min_rate, grace) == 0
    }

    /// A client connection's deadline passed.
    pub(super) fn client_timeout(&mut self, ck: usize) {
        let c = self.client_mut(ck);
        let phase = c.phase;
        if phase == Phase::Handshake {
            if let Some(tls) = c.tls.as_deref_mut() {
                tls.failure = Some(crate::tls::HandshakeFailure::Timeout);
            }
            let ex = c.ex.take();
            self.close_client(ck, ex);
            return;
        }
        let Some(mut ex) = c.ex.take() else {
            // Idle, or a new connection that never sent a byte.
            self.close_client(ck, None);
            return;
        };
        let step = match phase {
            Phase::Idle | Phase::Closing | Phase::Handshake => Step::Close,
            Phase::Queued => {
                LoopStats::add(&self.stats.queue_timeouts, 1);
                self.reject(ck, &mut ex, Reject::Unavailable)
            }
            Phase::Head => {
                if ex.inbuf.as_ref().is_some_and(|b| !b.is_empty()) {
                    ex.linger = false;
                    self.reject(ck, &mut ex, Reject::RequestTimeout)
                } else {
                    Step::Close
                }
            }
            Phase::Busy => match self.waiting_on(ck, &ex) {
                // Below server.min_rate: like its timeout, but sooner.
                waiting if self.below_min_rate(&mut ex, waiting) => {
                    if waiting == Waiting::ClientWrite {
                        LoopStats::add(&self.stats.slow_response_readers, 1);
                        Step::Close
                    } else {
                        LoopStats::add(&self.stats.slow_request_bodies, 1);
                        if ex.resp_started {
                            Step::Close
                        } else {
                            self.reject(ck, &mut ex, Reject::RequestTimeout)
                        }
                    }
                }
                _ if ex.resp_started => Step::Close,
                Waiting::Connect => {
                    if let Some(uk) = ex.upstream_key {
                        self.upstream_handshake_timed_out(uk);
                    }
                    self.upstream_failed(ck, &mut ex, UpstreamFailure::ConnectTimeout)
                }
                Waiting::UpstreamWrite | Waiting::UpstreamResponse => {
                    self.upstream_failed(ck, &mut ex, UpstreamFailure::Timeout)
                }
                // The client owes body bytes: its fault, not the backend's.
                Waiting::ClientBody => self.reject(ck, &mut ex, Reject::RequestTimeout),
                Waiting::Tunnel | Waiting::ClientWrite | Waiting::UpstreamBody => Step::Close,
            },
        };
        if step == Step::Close {
            self.close_client(ck, Some(ex));
            return;
        }
        self.resume(ck, ex);
    }
}
