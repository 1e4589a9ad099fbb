//! Per-loop keep-alive pool of idle upstream connections, one LIFO stack per
//! backend (the most recently used connection is the least likely to have
//! been closed by the backend). Holds slab keys; the loop owns the sockets.
//!
//! The stack is also what makes the default pool (`keepalive: auto`, no cap)
//! follow demand: connections are taken from the top, so the ones a load
//! needs stay hot and those below what it reached within `keepalive_timeout`
//! sit untouched until their idle deadline closes them. The pool therefore
//! holds about the peak of busy connections over the last
//! `keepalive_timeout`, and never more than were open at once.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct KeepAlivePool {
    /// idle[upstream][backend] = slab keys of idle connections, the most
    /// recently used at the back.
    idle: Vec<Vec<VecDeque<usize>>>,
}

impl KeepAlivePool {
    /// `backends[u]` is the number of backends of upstream `u`.
    pub fn new(backends: &[usize]) -> KeepAlivePool {
        KeepAlivePool {
            idle: backends.iter().map(|&n| vec![VecDeque::new(); n]).collect(),
        }
    }

    /// Idle connections to `backend` of `upstream`.
    pub fn idle(&self, upstream: usize, backend: usize) -> usize {
        self.idle
            .get(upstream)
            .and_then(|u| u.get(backend))
            .map_or(0, |s| s.len())
    }

    pub fn take(&mut self, upstream: usize, backend: usize) -> Option<usize> {
        self.idle.get_mut(upstream)?.get_mut(backend)?.pop_back()
    }

    /// Files `key` as idle unless `limit` connections already are; false
    /// means the caller should close it.
    pub fn put(&mut self, upstream: usize, backend: usize, key: usize, limit: usize) -> bool {
        match self.idle.get_mut(upstream).and_then(|u| u.get_mut(backend)) {
            Some(stack) if stack.len() < limit => {
                stack.push_back(key);
                true
            }
            _ => false,
        }
    }

    /// Forgets `key` (the backend closed it, or it timed out). The order of
    /// the others is kept: a swap would move the hottest connection to the
    /// bottom, where it would idle out. Timed-out keys are near the front,
    /// where a deque's removal is cheap.
    pub fn remove(&mut self, upstream: usize, backend: usize, key: usize) {
        if let Some(stack) = self.idle.get_mut(upstream).and_then(|u| u.get_mut(backend)) {
            if let Some(pos) = stack.iter().position(|&k| k == key) {
                stack.remove(pos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifo_and_bounded() {
        let mut pool = KeepAlivePool::new(&[2]);
        assert!(pool.put(0, 1, 10, 2));
        assert!(pool.put(0, 1, 11, 2));
        assert!(!pool.put(0, 1, 12, 2));
        assert_eq!(pool.take(0, 1), Some(11));
        pool.remove(0, 1, 10);
        assert_eq!(pool.take(0, 1), None);
        assert_eq!(pool.take(0, 0), None);
        assert_eq!(pool.take(5, 0), None);
    }

    #[test]
    fn removing_the_coldest_keeps_the_order_of_the_rest() {
        let mut pool = KeepAlivePool::new(&[1]);
        for key in 1..=4 {
            assert!(pool.put(0, 0, key, usize::MAX));
        }
        pool.remove(0, 0, 1); // timed out at the bottom
        assert_eq!(pool.take(0, 0), Some(4), "the hottest is still on top");
        assert_eq!(pool.take(0, 0), Some(3));
        assert_eq!(pool.take(0, 0), Some(2));
    }
}
