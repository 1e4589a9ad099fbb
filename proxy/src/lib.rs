//! SpeedMimi: an HTTP/1.1 reverse proxy and load balancer on mio.
//!
//! Data flow: `server` (per-thread mio event loops) accepts client
//! connections, `http` parses and frames requests and responses, `config`
//! decides the route, `balancer` picks a backend of the route's upstream and
//! `upstream` keeps backend health and the keep-alive pool.

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod buffer;
pub mod config;
pub mod control;
pub mod fd_limit;
pub mod http;
pub mod lifecycle;
pub mod profiler;
pub mod server;
pub mod stats;
pub mod timer;
pub mod tls;
pub mod upgrade;
pub mod upstream;
