//! `least_conn`: the backend with the fewest requests in flight (from this
//! event loop) per unit of weight; ties go round robin so that an idle
//! upstream still spreads its requests.

use super::{Balancer, PickContext};
use crate::upstream::UpstreamState;

#[derive(Debug, Default)]
pub struct LeastConn {
    next: usize,
}

impl LeastConn {
    pub fn new() -> LeastConn {
        LeastConn::default()
    }
}

impl Balancer for LeastConn {
    fn pick(&mut self, upstream: &UpstreamState, ctx: &PickContext) -> Option<usize> {
        let n = upstream.backends.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            if !ctx.eligible(upstream, i) {
                continue;
            }
            let fewer = best.is_none_or(|j| {
                let (a, b) = (&upstream.backends[i], &upstream.backends[j]);
                // a.active / a.weight < b.active / b.weight, without division.
                u64::from(a.active) * u64::from(b.weight.max(1))
                    < u64::from(b.active) * u64::from(a.weight.max(1))
            });
            if fewer {
                best = Some(i);
            }
        }
        let best = best?;
        self.next = best + 1;
        Some(best)
    }
}
