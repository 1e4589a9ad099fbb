//! Per-loop keep-alive pool of idle upstream connections, one LIFO stack per
//! backend (the most recently used connection is the least likely to have
//! been closed by the backend). Holds slab keys; the loop owns the sockets.

#[derive(Debug, Default)]
pub struct KeepAlivePool {
    /// idle[upstream][backend] = slab keys of idle connections.
    idle: Vec<Vec<Vec<usize>>>,
}

impl KeepAlivePool {
    /// `backends[u]` is the number of backends of upstream `u`.
    pub fn new(backends: &[usize]) -> KeepAlivePool {
        KeepAlivePool {
            idle: backends.iter().map(|&n| vec![Vec::new(); n]).collect(),
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
        self.idle.get_mut(upstream)?.get_mut(backend)?.pop()
    }

    /// Files `key` as idle unless `limit` connections already are; false
    /// means the caller should close it.
    pub fn put(&mut self, upstream: usize, backend: usize, key: usize, limit: usize) -> bool {
        match self.idle.get_mut(upstream).and_then(|u| u.get_mut(backend)) {
            Some(stack) if stack.len() < limit => {
                stack.push(key);
                true
            }
            _ => false,
        }
    }

    /// Forgets `key` (the backend closed it, or it timed out).
    pub fn remove(&mut self, upstream: usize, backend: usize, key: usize) {
        if let Some(stack) = self.idle.get_mut(upstream).and_then(|u| u.get_mut(backend)) {
            if let Some(pos) = stack.iter().rposition(|&k| k == key) {
                stack.swap_remove(pos);
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
}
