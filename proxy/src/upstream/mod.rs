//! Upstreams: per-event-loop backend state (health, active connections,
//! latency), the keep-alive connection pool, the connection slots
//! (`max_conns` and its wait queue) and the active health-check prober.

pub mod conn_limit;
pub mod health;
pub mod pool;
pub mod probe;
pub mod slots;

pub use health::{BackendState, UpstreamState};
