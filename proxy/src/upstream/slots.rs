//! Connection slots for upstreams with `max_conns`: how many connections
//! each event loop has open to each backend, and the FIFO queue of clients
//! whose request waits for one (HAProxy's server `maxconn` and queue).
//!
//! Why a proxy wants this: with one upstream connection per in-flight
//! request, 5,000 clients mean ~5,000 backend sockets; capped, the same load
//! runs over a few hundred hot sockets, which costs the kernel (and the
//! backend) less per request and bounds what reaches the backend.
//!
//! Queued requests stay unparsed in their client's buffer; a waiter is
//! handed a slot (`reserved`) when a connection comes back to the pool or
//! closes, and its client is driven again. Entries of clients that left
//! are skipped lazily (their generation no longer matches).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::conn_limit::AdaptiveLimit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub key: usize,
    pub gen: u32,
}

#[derive(Debug, Default)]
pub struct Slots {
    /// open[upstream][backend]: connections open from this loop.
    open: Vec<Vec<u32>>,
    queues: Vec<VecDeque<Waiter>>,
    /// Per upstream: slots handed to waiters that have not taken them yet.
    reserved: Vec<u32>,
    /// limits[upstream][backend]: the learned limit of `max_conns: auto`
    /// (kept for every backend; read only for upstreams that use it).
    limits: Vec<Vec<AdaptiveLimit>>,
}

impl Slots {
    /// `backends[u]` is the number of backends of upstream `u`.
    pub fn new(backends: &[usize]) -> Slots {
        Slots {
            open: backends.iter().map(|&n| vec![0; n]).collect(),
            queues: backends.iter().map(|_| VecDeque::new()).collect(),
            reserved: vec![0; backends.len()],
            limits: {
                let now = Instant::now();
                backends
                    .iter()
                    .map(|&n| vec![AdaptiveLimit::new(now); n])
                    .collect()
            },
        }
    }

    /// The adaptive limit of a backend (`max_conns: auto`).
    pub fn adaptive_limit(&self, upstream: usize, backend: usize) -> usize {
        self.limits
            .get(upstream)
            .and_then(|u| u.get(backend))
            .map_or(0, AdaptiveLimit::get)
    }

    /// A response head from the backend, `latency` after the request
    /// started; true when its adaptive limit changed.
    pub fn sample(
        &mut self,
        upstream: usize,
        backend: usize,
        latency: Duration,
        now: Instant,
    ) -> bool {
        let open = self.open(upstream, backend);
        self.limits
            .get_mut(upstream)
            .and_then(|u| u.get_mut(backend))
            .is_some_and(|l| l.sample(latency, now, open))
    }

    /// Requests of `upstream` wait: the windows of its backends close when
    /// due even if no response comes (`conn_limit`); true when a limit changed.
    pub fn waited(&mut self, upstream: usize, now: Instant) -> bool {
        let mut changed = false;
        let (Some(limits), Some(open)) = (self.limits.get_mut(upstream), self.open.get(upstream))
        else {
            return false;
        };
        for (l, &n) in limits.iter_mut().zip(open) {
            changed |= l.maybe_close_window(now, n as usize);
        }
        changed
    }

    pub fn open(&self, upstream: usize, backend: usize) -> usize {
        self.open
            .get(upstream)
            .and_then(|u| u.get(backend))
            .map_or(0, |&n| n as usize)
    }

    pub fn opened(&mut self, upstream: usize, backend: usize) {
        if let Some(n) = self.open.get_mut(upstream).and_then(|u| u.get_mut(backend)) {
            *n += 1;
            if let Some(l) = self.limits[upstream].get_mut(backend) {
                l.opened(*n as usize);
            }
        }
    }

    pub fn closed(&mut self, upstream: usize, backend: usize) {
        if let Some(n) = self.open.get_mut(upstream).and_then(|u| u.get_mut(backend)) {
            *n = n.saturating_sub(1);
        }
    }

    /// Someone waits (or holds a reservation) for `upstream`: a new request
    /// goes behind them rather than take the next free slot.
    pub fn contended(&self, upstream: usize) -> bool {
        self.queues.get(upstream).is_some_and(|q| !q.is_empty())
            || self.reserved.get(upstream).is_some_and(|&r| r > 0)
    }

    pub fn has_waiters(&self, upstream: usize) -> bool {
        self.queues.get(upstream).is_some_and(|q| !q.is_empty())
    }

    pub fn reserved(&self, upstream: usize) -> usize {
        self.reserved.get(upstream).map_or(0, |&r| r as usize)
    }

    pub fn enqueue(&mut self, upstream: usize, waiter: Waiter) {
        if let Some(q) = self.queues.get_mut(upstream) {
            q.push_back(waiter);
        }
    }

    /// The next waiter, with a slot reserved for it.
    pub fn hand_out(&mut self, upstream: usize) -> Option<Waiter> {
        let waiter = self.queues.get_mut(upstream)?.pop_front()?;
        self.reserved[upstream] += 1;
        Some(waiter)
    }

    /// A waiter took its slot (or turned out gone).
    pub fn release_reservation(&mut self, upstream: usize) {
        if let Some(r) = self.reserved.get_mut(upstream) {
            *r = r.saturating_sub(1);
        }
    }

    /// Every waiter of every upstream, queues emptied (a reconfiguration
    /// re-routes them).
    pub fn take_all_waiters(&mut self) -> Vec<Waiter> {
        self.queues.iter_mut().flat_map(|q| q.drain(..)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_queue_and_reservations() {
        let mut s = Slots::new(&[2]);
        s.opened(0, 1);
        s.opened(0, 1);
        s.closed(0, 1);
        assert_eq!(s.open(0, 1), 1);
        assert_eq!(s.open(0, 0), 0);
        s.closed(0, 0); // never below zero
        assert_eq!(s.open(0, 0), 0);
        s.opened(7, 0); // unknown upstream: ignored
        assert!(!s.contended(0));
        s.enqueue(0, Waiter { key: 3, gen: 1 });
        s.enqueue(0, Waiter { key: 4, gen: 1 });
        assert!(s.contended(0));
        assert_eq!(s.hand_out(0), Some(Waiter { key: 3, gen: 1 }));
        assert_eq!(s.reserved(0), 1);
        assert_eq!(s.take_all_waiters(), vec![Waiter { key: 4, gen: 1 }]);
        assert!(s.contended(0)); // the reservation is still out
        s.release_reservation(0);
        assert!(!s.contended(0));
        assert_eq!(s.hand_out(0), None);
    }
}
