//! The load engine: splits a run's connections, request quota and schedule
//! over worker threads (and, above the open-file limit, over shard
//! processes), and starts the workers. Results flow back as `stats::Msg`.

pub mod worker;

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::Msg;
pub use worker::{Pacing, WorkerPlan};

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Each connection sends its next request as soon as a response arrives.
    Closed,
    /// `rate` requests per second over all connections, on a fixed schedule.
    Open { rate: f64 },
    /// Keep connections open; one request per connection every `interval`.
    Hold { interval: Duration },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open { .. } => "open",
            Mode::Hold { .. } => "hold",
        }
    }
}

/// A whole run, before it is split.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub target: std::net::SocketAddr,
    pub request: Arc<[u8]>,
    pub head_method: bool,
    /// Connections over the whole run (all shards).
    pub conns: u64,
    pub threads: usize,
    pub mode: Mode,
    pub connect_rate: Option<f64>,
    /// Requests over the whole run (all shards).
    pub requests: Option<u64>,
    pub timeout: Duration,
    pub sources: Arc<[IpAddr]>,
    /// https://: every connection does a TLS handshake first.
    pub tls: Option<crate::tls::TlsSetup>,
    /// Close each connection after its response and open a new one.
    pub new_conn_per_request: bool,
}

/// The part `[lo, hi)` of `total` that piece `i` of `n` gets.
pub fn split(total: u64, i: u64, n: u64) -> (u64, u64) {
    (total * i / n, total * (i + 1) / n)
}

/// The global schedule; the same in every shard so shards add up to it.
pub fn pacing(cfg: &EngineConfig) -> Option<Pacing> {
    let c = cfg.conns.max(1);
    match cfg.mode {
        Mode::Closed => None,
        Mode::Open { rate } => {
            let step = (1e9 / rate).max(1.0) as u64;
            Some(Pacing {
                step_ns: step,
                period_ns: step * c,
            })
        }
        Mode::Hold { interval } => {
            let period = interval.as_nanos() as u64;
            let step = match cfg.connect_rate {
                Some(r) => (1e9 / r) as u64,
                None => period / c,
            };
            Some(Pacing {
                step_ns: step,
                period_ns: period,
            })
        }
    }
}

/// Plans the workers of shard `shard` of `shards`; their sources are
/// numbered from `first_source`.
pub fn plan(
    cfg: &EngineConfig,
    shard: u64,
    shards: u64,
    first_source: usize,
    start: Instant,
) -> Vec<WorkerPlan> {
    let (clo, chi) = split(cfg.conns, shard, shards);
    let quota = cfg.requests.map(|n| split(n, shard, shards));
    let threads = (cfg.threads as u64).clamp(1, (chi - clo).max(1));
    let connect_step_ns = cfg.connect_rate.map_or(0, |r| (1e9 / r) as u64);
    (0..threads)
        .map(|t| {
            let (lo, hi) = split(chi - clo, t, threads);
            WorkerPlan {
                source: first_source + t as usize,
                target: cfg.target,
                request: cfg.request.clone(),
                head_method: cfg.head_method,
                first_conn: clo + lo,
                conns: (hi - lo) as usize,
                pacing: pacing(cfg),
                connect_step_ns,
                quota: quota.map(|(qlo, qhi)| {
                    let (a, b) = split(qhi - qlo, t, threads);
                    b - a
                }),
                timeout: cfg.timeout,
                sources: cfg.sources.clone(),
                tls: cfg.tls.clone(),
                new_conn_per_request: cfg.new_conn_per_request,
                start,
            }
        })
        .collect()
}

/// Starts one thread per plan.
pub fn spawn(
    plans: Vec<WorkerPlan>,
    stop: &Arc<AtomicBool>,
    tx: &Sender<Msg>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    plans
        .into_iter()
        .map(|p| {
            let (stop, tx) = (stop.clone(), tx.clone());
            let source = p.source;
            std::thread::Builder::new()
                .name(format!("loadgen-{source}"))
                .spawn(move || match worker::Worker::new(p, stop, tx.clone()) {
                    Ok(w) => w.run(),
                    Err(e) => {
                        let _ = tx.send(Msg::Done {
                            source,
                            elapsed: Duration::ZERO,
                            error: Some(format!("cannot create event loop: {e}")),
                        });
                    }
                })
        })
        .collect()
}
