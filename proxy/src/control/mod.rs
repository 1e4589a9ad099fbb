//! The control plane's view of the data plane: snapshots of counters and
//! backends, and the one door through which configuration changes enter.
//!
//! The admin API (`admin/`) talks only to `ControlPlane`; the server
//! (single process or master + worker processes) implements it. Nothing here
//! runs on an event loop.

pub mod active_health;
pub mod board;
pub mod profile_request;
pub mod shm;
pub mod snapshot;

use crate::config::{Config, RawConfig};

/// Latency histogram bucket upper bounds, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram: counts per bucket of `LATENCY_BUCKETS` (not
/// cumulative), plus the overflow bucket (+Inf) last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

/// Counters of the whole server or of one event loop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub connections_current: i64,
    pub connections_total: u64,
    /// Turned away with 503 because max_conn was reached.
    pub connections_refused: u64,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_connects: u64,
    pub upstream_reuses: u64,
    pub upstream_retries: u64,
    /// Requests that waited for a connection (`max_conns`), and those that
    /// waited past `queue_timeout` (answered 503).
    pub upstream_queued: u64,
    pub queue_timeouts: u64,
    /// Clients cut off below `server.min_rate`, sending a request body and
    /// reading a response.
    pub slow_request_bodies: u64,
    pub slow_response_readers: u64,
    /// accept(2) failures other than WouldBlock (EMFILE, ENFILE, ...).
    pub accept_failures: u64,
    /// Access-log lines dropped (writer behind, disk full).
    pub access_log_dropped: u64,
    /// Answers the proxy produced itself: (kind, status, count), every kind listed.
    pub errors: Vec<(&'static str, u16, u64)>,
    pub tls: TlsCounters,
}

/// TLS termination's counters (all zero on a plaintext listener).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsCounters {
    pub connections_current: i64,
    pub handshakes_full: u64,
    pub handshakes_resumed: u64,
    /// By `tls::HandshakeFailure as usize`.
    pub failures: [u64; crate::tls::HandshakeFailure::COUNT],
    /// From accept to the handshake's end.
    pub handshake_seconds: Histogram,
    /// Handshakes with backends (`backends[i].tls`), full and resumed.
    pub upstream_full: u64,
    pub upstream_resumed: u64,
    /// By `tls::upstream::UpstreamTlsFailure as usize`.
    pub upstream_failures: [u64; crate::tls::upstream::UpstreamTlsFailure::COUNT],
}

impl TlsCounters {
    pub fn add(&mut self, other: &TlsCounters) {
        self.connections_current += other.connections_current;
        self.handshakes_full += other.handshakes_full;
        self.handshakes_resumed += other.handshakes_resumed;
        for (t, o) in self.failures.iter_mut().zip(other.failures) {
            *t += o;
        }
        let h = &mut self.handshake_seconds;
        h.counts
            .resize(h.counts.len().max(other.handshake_seconds.counts.len()), 0);
        for (t, o) in h.counts.iter_mut().zip(&other.handshake_seconds.counts) {
            *t += o;
        }
        h.sum_seconds += other.handshake_seconds.sum_seconds;
        self.upstream_full += other.upstream_full;
        self.upstream_resumed += other.upstream_resumed;
        for (t, o) in self
            .upstream_failures
            .iter_mut()
            .zip(other.upstream_failures)
        {
            *t += o;
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSnapshot {
    /// Worker process index (0 when there are no worker processes).
    pub process: usize,
    pub pid: u32,
    /// Event loop index within the process.
    pub event_loop: usize,
    pub counters: Counters,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSnapshot {
    pub uptime_seconds: f64,
    /// Requests per second over the last few seconds.
    pub requests_per_second: f64,
    /// Resident memory of the proxy (all its processes), bytes.
    pub rss_bytes: u64,
    pub processes: usize,
    /// Worker processes the master started again after they died (0
    /// without worker processes).
    pub worker_restarts: u64,
    pub total: Counters,
    pub workers: Vec<WorkerSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendSnapshot {
    pub addr: String,
    pub weight: u32,
    /// "up", "probing", "down" (held out by the passive or the active
    /// check), or "draining" (removed, requests in flight).
    pub health: &'static str,
    /// The active health check (`upstream::probe`): state "off" without one.
    pub active_health: active_health::ActiveHealthSnapshot,
    pub active: i64,
    pub requests: u64,
    pub failures: u64,
    /// Peak-EWMA response latency in milliseconds (0 when no sample yet).
    pub latency_ewma_ms: f64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub responses: [u64; 5],
    /// Time to establish a backend connection.
    pub connect_latency: Histogram,
    /// Time from sending the request to the response head.
    pub response_latency: Histogram,
}

/// Why a configuration change was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyError {
    /// Dotted path of the offending field, when there is one.
    pub field: Option<String>,
    pub message: String,
}

/// What the admin API may ask of the server.
pub trait ControlPlane: Send + Sync + 'static {
    /// The configuration now in force (as the file / JSON shape).
    fn raw_config(&self) -> RawConfig;
    /// Applies an already validated configuration to every event loop of
    /// every worker process, or to none of them. Returns once all have it
    /// (bounded wait).
    fn apply(&self, raw: RawConfig, config: Config) -> Result<(), ApplyError>;
    fn server(&self) -> ServerSnapshot;
    /// Backends of one upstream, or `None` when there is no such upstream.
    fn backends(&self, upstream: &str) -> Option<Vec<BackendSnapshot>>;
    fn upstreams(&self) -> Vec<String>;
    /// Worker processes that carry the traffic; 0 when this process
    /// carries it itself (and profiles itself).
    fn worker_processes(&self) -> usize {
        0
    }
    /// Has the worker processes (all, or only worker `only`) profile their
    /// CPU for `seconds`: one entry per worker asked, its profile or why
    /// there is none. Bounded wait (`profiler::relay::GRACE` past
    /// `seconds`), shortened when `stopping` says so.
    fn profile_workers(
        &self,
        seconds: u64,
        only: Option<usize>,
        stopping: &dyn Fn() -> bool,
    ) -> Vec<crate::profiler::relay::WorkerProfile> {
        let _ = (seconds, only, stopping);
        Vec::new()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it): the
/// wall-clock stamps on the board, which every process reads.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
