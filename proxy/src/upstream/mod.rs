//! Upstreams: per-event-loop backend state (health, active connections,
//! latency) and the keep-alive connection pool.

pub mod health;
pub mod pool;

pub use health::{BackendState, UpstreamState};
