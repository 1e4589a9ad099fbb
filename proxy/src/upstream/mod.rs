//! Upstreams: per-event-loop backend state (health, active connections,
//! latency), the keep-alive connection pool and the connection slots
//! (`max_conns` and its wait queue).

pub mod health;
pub mod pool;
pub mod slots;

pub use health::{BackendState, UpstreamState};
