//! `weight`: smooth weighted round robin (nginx's algorithm). Each pick adds
//! every eligible backend's weight to its running score, takes the highest,
//! and subtracts the total from it: weights 5,1,1 give a a b a c a a, the
//! picks of a heavy backend spread out instead of coming in a burst.

use super::{Balancer, PickContext};
use crate::upstream::UpstreamState;

#[derive(Debug)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn new(upstream: &UpstreamState) -> SmoothWeighted {
        SmoothWeighted {
            current: vec![0; upstream.backends.len()],
        }
    }
}

impl Balancer for SmoothWeighted {
    fn pick(&mut self, upstream: &UpstreamState, ctx: &PickContext) -> Option<usize> {
        if self.current.len() != upstream.backends.len() {
            // The backend list changed under us: start over (rare, allocates).
            self.current = vec![0; upstream.backends.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, b) in upstream.backends.iter().enumerate() {
            if !ctx.eligible(upstream, i) {
                continue;
            }
            let w = i64::from(b.weight.max(1));
            self.current[i] += w;
            total += w;
            if best.is_none_or(|j| self.current[i] > self.current[j]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}
