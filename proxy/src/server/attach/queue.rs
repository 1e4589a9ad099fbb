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
    fn max_conns(&self, u: usize) -> usize {
        self.routing.upstream_cfg.get(u).map_or(0, |c| c.max_conns)
    }

    /// Backend `b` of `u` has neither an idle pooled connection nor room
    /// for a new one.
    pub(super) fn backend_full(&self, u: usize, b: usize) -> bool {
        let cap = self.max_conns(u);
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
        let cap = self.max_conns(u);
        if cap == 0 {
            return usize::MAX;
        }
        let state = &self.routing.upstreams[u];
        let all_out = state.all_passively_out(self.now);
        (0..state.backends.len())
            .filter(|&b| state.takes_requests(b, self.now, all_out))
            .map(|b| self.pool.idle(u, b) + cap.saturating_sub(self.slots.open(u, b)))
            .sum()
    }

    /// A new request for `u` must queue behind earlier ones (first come,
    /// first served); the client being handed a slot goes ahead.
    pub(in crate::server) fn must_queue(&self, ck: usize, u: usize) -> bool {
        self.max_conns(u) > 0 && self.handoff != Some(ck) && self.slots.contended(u)
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
        if self.max_conns(u) == 0 {
            return;
        }
        while self.free_slots(u) > self.slots.reserved(u) {
            match self.slots.hand_out(u) {
                Some(waiter) => self.handoffs.push_back((waiter, u)),
                None => return,
            }
        }
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
