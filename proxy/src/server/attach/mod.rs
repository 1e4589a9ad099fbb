//! Backend attach: pick a backend for a request and give the exchange a
//! connection to it (a pooled one, or a new one), and release it when the
//! request ends (back to the pool, or closed). `queue.rs` is `max_conns`
//! (waiting for a connection slot), `health.rs` the per-backend
//! bookkeeping every attach and release updates.

mod health;
mod queue;

use std::io;

use mio::{Interest, Token};

use super::conn::{Entry, Exchange, UpstreamConn, MAX_TRIED, READABLE};
use super::event_loop::EventLoop;
use super::tls_io::UpstreamTls;
use crate::balancer::{pick_or_fallback, PickContext};
use crate::http::errors::Reject;
use crate::stats::LoopStats;

pub(super) use health::ORPHAN;

/// Backends at `max_conns` passed over for one request before it queues.
const MAX_FULL_SKIPPED: usize = 16;

/// Whether `attach_backend` found a connection.
pub(super) enum Attached {
    Yes,
    /// Every backend that could take the request is at `max_conns`.
    MustQueue,
}

impl EventLoop {
    /// Picks a backend and gives the exchange a connection to it: an idle
    /// pooled one, or a new one. Failed connects move on to another backend.
    /// With `within_limit`, backends at `max_conns` are passed over and,
    /// when every candidate is, the request must queue; a retry after a
    /// failed attempt does not queue (it may open one connection beyond).
    pub(super) fn attach_backend(
        &mut self,
        ck: usize,
        ex: &mut Exchange,
        within_limit: bool,
    ) -> Result<Attached, Reject> {
        let u = ex.upstream;
        if u >= self.routing.upstreams.len() || ex.route >= self.routing.balancers.len() {
            return Err(Reject::BadGateway); // reconfigured away mid-request
        }
        // One try and `retries` more; a stale pooled connection gives its try back.
        let max_attempts = (self.routing.upstream_cfg[u].retries as usize + 1).min(MAX_TRIED);
        let peer = self.client_mut(ck).peer;
        // Tried backends, then those found full.
        let mut skip = [usize::MAX; MAX_TRIED + MAX_FULL_SKIPPED];
        let mut full = 0;
        loop {
            if ex.attempts >= max_attempts {
                return Err(Reject::BadGateway);
            }
            skip[..MAX_TRIED].copy_from_slice(&ex.tried);
            let exclude = if full == 0 {
                &skip[..ex.tries]
            } else {
                &skip[..] // the unused slots hold usize::MAX, no backend's index
            };
            let ctx = PickContext {
                client_ip: peer,
                exclude,
                now: self.now,
            };
            let mut picked = pick_or_fallback(
                self.routing.balancers[ex.route].as_mut(),
                &self.routing.upstreams[u],
                &ctx,
            );
            if let Some(b) = picked.filter(|&b| within_limit && self.backend_full(u, b)) {
                if full < MAX_FULL_SKIPPED {
                    skip[MAX_TRIED + full] = b;
                    full += 1;
                    continue;
                }
                // Too many full ones to pass over one by one: any with room.
                picked = self.backend_with_room(u, &ex.tried[..ex.tries]);
            }
            let Some(b) = picked else {
                if full > 0 {
                    return Ok(Attached::MustQueue);
                }
                return Err(if ex.tries == 0 {
                    Reject::Unavailable
                } else {
                    Reject::BadGateway
                });
            };
            ex.attempts += 1;
            let (key, reused) = match self.pool.take(u, b) {
                Some(key) => {
                    LoopStats::add(&self.stats.upstream_reuses, 1);
                    (key, true)
                }
                None => match self.open_upstream(u, b, ck) {
                    Ok(key) => (key, false),
                    Err(_) => {
                        self.attempt_failed(ex, b);
                        continue;
                    }
                },
            };
            let up = self.upstream_mut(key);
            up.client = Some(ck);
            up.reused = reused;
            ex.upstream_key = Some(key);
            ex.backend = b;
            ex.counters = self.backend_started(u, b);
            return Ok(Attached::Yes);
        }
    }

    /// The request's attempt on backend `b` failed: counted against the
    /// backend (toward its health only for the request's first failure:
    /// one request that breaks every backend it reaches, or a client's
    /// retries during an outage, must not take out more than one), and `b`
    /// is not tried again for this request.
    pub(super) fn attempt_failed(&mut self, ex: &mut Exchange, b: usize) {
        self.backend_failed(ex.upstream, b, ex.tries == 0);
        self.mark_tried(ex, b);
    }

    fn mark_tried(&self, ex: &mut Exchange, backend: usize) {
        if ex.tries < MAX_TRIED {
            ex.tried[ex.tries] = backend;
            ex.tries += 1;
        }
    }

    /// Opens a connection to a backend and files it in the slab.
    fn open_upstream(
        &mut self,
        upstream: usize,
        backend: usize,
        client: usize,
    ) -> io::Result<usize> {
        let cfg = &self.routing.upstream_cfg[upstream].backends[backend];
        let tls = match &cfg.tls {
            Some(t) => Some(Box::new(UpstreamTls::connect(
                &t.client,
                t.name.clone(),
                self.now,
            )?)),
            None => None,
        };
        let mut stream = mio::net::TcpStream::connect(cfg.addr)?;
        let _ = stream.set_nodelay(true);
        let gen = self.gen();
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Entry::Upstream(UpstreamConn {
            stream,
            gen,
            deadline: 0,
            timer_tick: 0,
            ready: 0,
            upstream: upstream as u16,
            backend: backend as u16,
            client: Some(client),
            connecting: true,
            connect_started: self.now,
            reused: false,
            tls,
        }));
        LoopStats::add(&self.stats.upstream_connects, 1);
        self.slots.opened(upstream, backend);
        Ok(key)
    }

    /// Returns a backend connection to the pool or closes it.
    pub(super) fn release_backend(&mut self, ex: &mut Exchange, uk: usize, reusable: bool) {
        let (u, b) = (ex.upstream, ex.backend);
        self.backend_finished(u, b, ex.counters.take());
        if reusable && u < self.routing.upstreams.len() {
            let limit = self.routing.upstream_cfg[u].idle_limit();
            let up = self.upstream_mut(uk);
            up.client = None;
            up.reused = false;
            if up.ready & READABLE == 0 && self.pool.put(u, b, uk, limit) {
                let d = self.routing.upstream_cfg[u].keepalive_timeout;
                self.set_deadline(uk, d);
                self.hand_out_slots(u);
                return;
            }
        }
        self.close_upstream(uk);
    }

    /// Closes an idle pooled connection (the backend closed it, or it sat
    /// idle for keepalive_timeout).
    pub(super) fn drop_pooled(&mut self, key: usize) {
        if let Some(Entry::Upstream(u)) = self.slab.get(key) {
            let (up, b) = (u.upstream as usize, u.backend as usize);
            self.pool.remove(up, b, key);
            self.close_upstream(key);
        }
    }

    pub(super) fn close_upstream(&mut self, key: usize) {
        if let Some(Entry::Upstream(u)) = self.slab.try_remove(key) {
            drop(u.stream); // leaves epoll by itself, as a client's does
            let (up, b) = (u.upstream as usize, u.backend as usize);
            self.slots.closed(up, b);
            self.hand_out_slots(up);
            self.descriptor_freed();
        }
    }
}
