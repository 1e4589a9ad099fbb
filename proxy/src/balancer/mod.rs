//! Load balancers, by config name: round_robin, weight (smooth weighted
//! round robin), least_conn, ip_hash (consistent), p2c (peak EWMA).
//! STUB: the real implementation is being written; signatures are fixed.

use crate::config::Algorithm;
use crate::upstream::UpstreamState;
use std::net::IpAddr;
use std::time::Instant;

/// What a pick may depend on.
pub struct PickContext<'a> {
    pub client_ip: IpAddr,
    /// Backends already tried for this request (skipped).
    pub exclude: &'a [usize],
    pub now: Instant,
}

pub trait Balancer: Send {
    /// Index of the chosen backend among the available, not excluded ones;
    /// `None` when there is none.
    fn pick(&mut self, upstream: &UpstreamState, ctx: &PickContext) -> Option<usize>;
}

pub fn new_balancer(_algorithm: Algorithm, _upstream: &UpstreamState) -> Box<dyn Balancer> {
    todo!()
}
