//! `max_conns` in the loop: whether a request may take a connection now,
//! parking it in its upstream's FIFO queue when not, and handing freed
//! connections to the queue's head. The counting lives in
//! `upstream::slots`; this is where it meets clients and timeouts.

use crate::server::conn::{Entry, Phase};
use crate::server::drive::Step;
use crate::server::event_loop::EventLoop;
use crate::stats::LoopStats;
use crate::upstream::slots::{Slots, Waiter};

impl EventLoop {
    /// `u` limits its backend connections (a fixed `max_conns`, or auto).
    fn limited(&self, u: usize) -> bool {
        self.routing
            .upstream_cfg
            .get(u)
            .is_some_and(|c| c.max_conns > 0 || c.adaptive_conns)
    }

    /// Connections backend `b` of `u` may have open (0: no limit).
    fn cap(&self, u: usize, b: usize) -> usize {
        match self.routing.upstream_cfg.get(u) {
            Some(c) if c.adaptive_conns => self.slots.adaptive_limit(u, b),
            Some(c) => c.max_conns,
            None => 0,
        }
    }

    /// Backend `b` of `u` has neither an idle pooled connection nor room
    /// for a new one.
    pub(super) fn backend_full(&self, u: usize, b: usize) -> bool {
        let cap = self.cap(u, b);
        cap > 0 && self.pool.idle(u, b) == 0 && self.slots.open(u, b) >= cap
    }

    /// The first backend of `u` that takes requests (up, or any while
    /// passive health has taken out all), not in `tried` and not full.
    pub(super) fn backend_with_room(&self, u: usize, tried: &[usize]) -> Option<usize> {
        let state = &self.routing.upstreams[u];
        let all_out = state.all_passively_out(self.now);
        (0..state.backends.len()).find(|&b| {
            state.takes_requests(b, self.now, all_out)
                && !tried.contains(&b)
                && !self.backend_full(u, b)
        })
    }

    /// Requests `u` can start now (idle connections plus room to connect)
    /// on backends that take requests; `usize::MAX` without a limit.
    fn free_slots(&self, u: usize) -> usize {
        if !self.limited(u) {
            return usize::MAX;
        }
        let state = &self.routing.upstreams[u];
        let all_out = state.all_passively_out(self.now);
        (0..state.backends.len())
            .filter(|&b| state.takes_requests(b, self.now, all_out))
            .map(|b| self.pool.idle(u, b) + self.cap(u, b).saturating_sub(self.slots.open(u, b)))
            .sum()
    }

    /// A new request for `u` must queue behind earlier ones (first come,
    /// first served); the client being handed a slot goes ahead.
    pub(in crate::server) fn must_queue(&self, ck: usize, u: usize) -> bool {
        self.limited(u) && self.handoff != Some(ck) && self.slots.contended(u)
    }

    /// Parks the client's (unparsed) request in `u`'s queue until a
    /// connection frees up or `queue_timeout` passes (then 503).
    pub(in crate::server) fn queue_request(&mut self, ck: usize, u: usize) -> Step {
        let c = self.client_mut(ck);
        c.phase = Phase::Queued;
        let waiter = Waiter {
            key: ck,
            gen: c.gen,
        };
        self.slots.enqueue(u, waiter);
        let _ = self.slots.waited(u, self.now);
        LoopStats::add(&self.stats.upstream_queued, 1);
        let d = self.routing.upstream_cfg[u].queue_timeout;
        self.set_deadline(ck, d);
        // Entries of clients that left may be all that stood ahead. A client
        // just handed a slot does not pull again (it found none usable).
        if self.handoff != Some(ck) {
            self.hand_out_slots(u);
        }
        Step::Blocked
    }

    /// Gives each free connection slot of `u` to the next waiter.
    pub(super) fn hand_out_slots(&mut self, u: usize) {
        // Nobody waits (the common case): no need to count free slots.
        if !self.limited(u) || !self.slots.has_waiters(u) {
            return;
        }
        while self.free_slots(u) > self.slots.reserved(u) {
            match self.slots.hand_out(u) {
                Some(waiter) => self.handoffs.push_back((waiter, u)),
                None => return,
            }
        }
    }

    /// `max_conns: auto` while requests wait: the backends' windows close
    /// when due even if nothing answers (a backend holding requests open
    /// must not keep the limit where it is), and a raised limit serves the
    /// queue. Returns whether any request waits (the loop then wakes within
    /// `ADAPT_POLL` to look again).
    pub(in crate::server) fn adapt_waiting_limits(&mut self) -> bool {
        let mut waiting = false;
        for u in 0..self.routing.upstream_cfg.len() {
            if !self.routing.upstream_cfg[u].adaptive_conns || !self.slots.contended(u) {
                continue;
            }
            waiting = true;
            if self.slots.waited(u, self.now) {
                self.hand_out_slots(u);
            }
        }
        waiting
    }

    /// `waiter` is still the client that queued, and still waits.
    fn still_queued(&self, waiter: Waiter) -> bool {
        matches!(self.slab.get(waiter.key),
            Some(Entry::Client(c)) if c.gen == waiter.gen && c.phase == Phase::Queued)
    }

    /// Drives the clients that were handed a slot (after the event that
    /// freed it, so no client is driven from inside another's exchange).
    pub(in crate::server) fn run_handoffs(&mut self) {
        while let Some((waiter, u)) = self.handoffs.pop_front() {
            self.slots.release_reservation(u);
            if !self.still_queued(waiter) {
                self.hand_out_slots(u); // its slot goes to the next one
                continue;
            }
            self.handoff = Some(waiter.key);
            self.drive(waiter.key);
            self.handoff = None;
            if !self.still_queued(waiter) {
                // If it left instead of taking the slot, the slot goes on.
                // (One that queued again found no usable slot: handing out
                // again now could only spin.)
                self.hand_out_slots(u);
            }
        }
    }

    /// After a reconfiguration: counts rebuilt from the open connections,
    /// every waiter routed again under the new configuration. `sizes` are
    /// the new configuration's backends per upstream.
    pub(in crate::server) fn requeue_after_apply(&mut self, sizes: &[usize]) {
        let mut slots = Slots::new(sizes);
        for (_, entry) in self.slab.iter() {
            if let Entry::Upstream(up) = entry {
                slots.opened(up.upstream as usize, up.backend as usize);
            }
        }
        let mut waiters = std::mem::replace(&mut self.slots, slots).take_all_waiters();
        waiters.extend(self.handoffs.drain(..).map(|(w, _)| w));
        for waiter in waiters {
            if self.still_queued(waiter) {
                self.client_mut(waiter.key).phase = Phase::Head;
                self.drive(waiter.key);
            }
        }
    }
}
