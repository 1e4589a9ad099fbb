//! Backend state per event loop and passive health checks.
//! STUB: the real implementation is being written; signatures are fixed.

use crate::config::UpstreamConfig;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BackendState {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Requests in flight on this backend from this event loop.
    pub active: u32,
    pub requests: u64,
    pub failures: u64,
    /// Peak-EWMA of response latency, nanoseconds (0 = no sample yet).
    pub ewma_ns: f64,
    // private: failure window and down_until
}

#[derive(Debug, Clone)]
pub struct UpstreamState {
    pub backends: Vec<BackendState>,
}

impl UpstreamState {
    pub fn from_config(_cfg: &UpstreamConfig) -> UpstreamState {
        todo!()
    }
    /// False while the backend is marked down by passive health checks.
    pub fn is_available(&self, _idx: usize, _now: Instant) -> bool {
        todo!()
    }
    pub fn request_started(&mut self, _idx: usize) {
        todo!()
    }
    pub fn request_finished(&mut self, _idx: usize) {
        todo!()
    }
    /// A response head arrived after `latency`: updates the peak EWMA.
    pub fn record_success(&mut self, _idx: usize, _latency: Duration, _now: Instant) {
        todo!()
    }
    /// Connect refused/timed out, reset or garbage: counts toward max_fails.
    pub fn record_failure(&mut self, _idx: usize, _now: Instant) {
        todo!()
    }
}
