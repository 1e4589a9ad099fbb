//! Load balancers, by config name: round_robin, weight (smooth weighted
//! round robin), least_conn, ip_hash (consistent), p2c (peak EWMA). One file
//! per algorithm; all skip backends that are down or already tried for the
//! request, and none allocates per pick. docs/balancing.md describes them.
//! `pick_or_fallback` is what the proxy calls: when passive health has left
//! no backend to pick, it still tries the one that failed least recently.

mod ip_hash;
mod least_conn;
mod p2c;
mod round_robin;
mod weight;

#[cfg(test)]
mod tests;

use crate::config::Algorithm;
use crate::upstream::UpstreamState;
use std::net::IpAddr;
use std::time::Instant;

pub use ip_hash::IpHash;
pub use least_conn::LeastConn;
pub use p2c::P2c;
pub use round_robin::RoundRobin;
pub use weight::SmoothWeighted;

/// What a pick may depend on.
pub struct PickContext<'a> {
    pub client_ip: IpAddr,
    /// Backends already tried for this request (skipped).
    pub exclude: &'a [usize],
    pub now: Instant,
}

impl PickContext<'_> {
    /// Whether backend `idx` may be picked: up and not tried yet.
    #[inline]
    pub fn eligible(&self, upstream: &UpstreamState, idx: usize) -> bool {
        upstream.is_available(idx, self.now) && !self.exclude.contains(&idx)
    }
}

pub trait Balancer: Send {
    /// Index of the chosen backend among the available, not excluded ones;
    /// `None` when there is none.
    fn pick(&mut self, upstream: &UpstreamState, ctx: &PickContext) -> Option<usize>;
}

/// The balancer's pick; when it finds none because passive health took out
/// every backend not yet tried, the least recently failed of those (never
/// one the active check holds down, never one in `exclude`). A verdict
/// drawn from past requests must not turn into an outage once the backends
/// are back: only a request that gets through can show they are.
pub fn pick_or_fallback(
    balancer: &mut dyn Balancer,
    upstream: &UpstreamState,
    ctx: &PickContext,
) -> Option<usize> {
    balancer
        .pick(upstream, ctx)
        .or_else(|| upstream.least_recently_failed(ctx.exclude))
}

/// A balancer for one route's upstream, owned by one event loop. Build a new
/// one when the upstream's backend list changes (configuration swap).
pub fn new_balancer(algorithm: Algorithm, upstream: &UpstreamState) -> Box<dyn Balancer> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new()),
        Algorithm::Weight => Box::new(SmoothWeighted::new(upstream)),
        Algorithm::LeastConn => Box::new(LeastConn::new()),
        Algorithm::IpHash => Box::new(IpHash::new()),
        Algorithm::P2c => Box::new(P2c::new(upstream)),
    }
}
