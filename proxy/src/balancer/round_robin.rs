//! `round_robin`: each eligible backend in turn, ignoring weights.

use super::{Balancer, PickContext};
use crate::upstream::UpstreamState;

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub fn new() -> RoundRobin {
        RoundRobin::default()
    }
}

impl Balancer for RoundRobin {
    fn pick(&mut self, upstream: &UpstreamState, ctx: &PickContext) -> Option<usize> {
        let n = upstream.backends.len();
        // Start where the last pick left off, so a skipped (down) backend
        // does not make its successor take a double share.
        let idx = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| ctx.eligible(upstream, i))?;
        self.next = idx + 1;
        Some(idx)
    }
}
