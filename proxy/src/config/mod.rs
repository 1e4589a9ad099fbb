//! Configuration: the YAML file (the seed's shape), validated into `Config`.
//! STUB: the real implementation is being written; signatures are fixed.

use indexmap::IndexMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Validated configuration. Every field is resolved (defaults applied,
/// addresses parsed, `auto` turned into a number).
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstreams: IndexMap<String, UpstreamConfig>,
    pub routing: IndexMap<String, RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Event-loop threads per process (`auto` = available cores).
    pub workers: usize,
    /// Worker processes (1 = no master).
    pub processes: usize,
    /// Concurrent client connections per process; past it: 503 and close.
    pub max_conn: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Keep-alive idle time between requests on a client connection.
    pub idle_timeout: Duration,
    /// Time allowed for a whole request head to arrive (408 after it).
    pub header_timeout: Duration,
    pub graceful_timeout: Duration,
    /// Largest request head accepted (431 beyond it); also bounds the URI (414).
    pub max_header_size: usize,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub backends: Vec<BackendConfig>,
    /// Idle keep-alive connections kept per backend per event loop.
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    /// Time to wait for response bytes from the backend (504 after it).
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Passive health: `max_fails` failures within `fail_timeout` mark a
    /// backend down for `fail_timeout`.
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Extra backends tried after a failed connect (bounded).
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    Weight,
    LeastConn,
    IpHash,
    P2c,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub upstream: String,
    pub load_balancer: Algorithm,
    pub matcher: RouteMatch,
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
}

#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl Config {
    pub fn from_file(_path: &Path) -> Result<Config, ConfigError> {
        todo!()
    }
    pub fn from_yaml_str(_text: &str, _origin: &str) -> Result<Config, ConfigError> {
        todo!()
    }
}

/// Picks the route for a request: routes with a host and path prefix are
/// tried most specific first; `default` is the catch-all.
#[derive(Debug, Clone)]
pub struct Router {}

impl Router {
    pub fn new(_config: &Config) -> Router {
        todo!()
    }
    /// Index into `config.routing` for this request, or `None` (404).
    pub fn route(&self, _host: &[u8], _path: &[u8]) -> Option<usize> {
        todo!()
    }
}
