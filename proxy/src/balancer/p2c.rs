//! `p2c`: power of two choices on peak-EWMA latency. Two distinct eligible
//! backends are drawn at random and the cheaper one wins, where the cost is
//! latency × (requests in flight + 1) / weight. Sampling two instead of
//! scanning all keeps one slow estimate from sending every loop's traffic
//! to the same "best" backend at once.

use super::{Balancer, PickContext};
use crate::upstream::{BackendState, UpstreamState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Cost of a backend with requests in flight but no latency sample yet:
/// high, so a new backend gets one request at a time until it answers.
const UNMEASURED_PENALTY_NS: f64 = 1e9;

#[derive(Debug)]
pub struct P2c {
    rng: XorShift64,
}

impl P2c {
    pub fn new(upstream: &UpstreamState) -> P2c {
        // Different balancers (loops, routes) start at different points of
        // the sequence; the counter is touched only at construction.
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        P2c::with_seed(t ^ n.rotate_left(32) ^ upstream.backends.len() as u64)
    }

    /// A balancer whose choices are reproducible (tests, simulations).
    pub fn with_seed(seed: u64) -> P2c {
        P2c {
            rng: XorShift64::new(seed),
        }
    }
}

impl Balancer for P2c {
    fn pick(&mut self, upstream: &UpstreamState, ctx: &PickContext) -> Option<usize> {
        let n = upstream.backends.len();
        let eligible = (0..n).filter(|&i| ctx.eligible(upstream, i)).count();
        let nth = |k: usize| (0..n).filter(|&i| ctx.eligible(upstream, i)).nth(k);
        match eligible {
            0 => None,
            1 => nth(0),
            m => {
                let r1 = self.rng.below(m);
                let mut r2 = self.rng.below(m - 1);
                if r2 >= r1 {
                    r2 += 1;
                }
                let (a, b) = (nth(r1)?, nth(r2)?);
                let (ca, cb) = (
                    cost(&upstream.backends[a], ctx.now),
                    cost(&upstream.backends[b], ctx.now),
                );
                Some(if cb < ca { b } else { a })
            }
        }
    }
}

fn cost(b: &BackendState, now: Instant) -> f64 {
    let latency = b.latency_ns(now);
    let load = f64::from(b.active) + 1.0;
    let raw = if latency == 0.0 && b.active > 0 {
        UNMEASURED_PENALTY_NS + load
    } else {
        latency * load
    };
    raw / f64::from(b.weight.max(1))
}

/// xorshift64*: tiny, fast, good enough to draw two backends.
#[derive(Debug)]
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> XorShift64 {
        XorShift64(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n (n ≥ 1), by multiply-shift (Lemire), no modulo bias
    /// worth noticing for n this small.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}
