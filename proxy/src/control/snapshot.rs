//! Reading the board into the snapshots the admin API serves.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Instant;

use super::board::{Board, MAX_PROCESSES};
use super::{BackendSnapshot, Counters, ServerSnapshot, TlsCounters, WorkerSnapshot};
use crate::config::Config;
use crate::http::errors::Reject;
use crate::stats::LoopStats;

fn counters_of(s: &LoopStats) -> Counters {
    Counters {
        connections_current: s.connections_current.load(Relaxed),
        connections_total: s.connections_total.load(Relaxed),
        connections_refused: s.connections_refused.load(Relaxed),
        requests: s.requests.load(Relaxed),
        bytes_in: s.bytes_in.load(Relaxed),
        bytes_out: s.bytes_out.load(Relaxed),
        upstream_connects: s.upstream_connects.load(Relaxed),
        upstream_reuses: s.upstream_reuses.load(Relaxed),
        upstream_retries: s.upstream_retries.load(Relaxed),
        upstream_queued: s.upstream_queued.load(Relaxed),
        queue_timeouts: s.queue_timeouts.load(Relaxed),
        slow_request_bodies: s.slow_request_bodies.load(Relaxed),
        slow_response_readers: s.slow_response_readers.load(Relaxed),
        accept_failures: s.accept_failures.load(Relaxed),
        access_log_dropped: s.access_log_dropped.load(Relaxed),
        errors: Reject::ALL
            .iter()
            .map(|r| (r.name(), r.status(), s.rejects[*r as usize].load(Relaxed)))
            .collect(),
        tls: TlsCounters {
            connections_current: s.tls_connections_current.load(Relaxed),
            handshakes_full: s.tls_handshakes_full.load(Relaxed),
            handshakes_resumed: s.tls_handshakes_resumed.load(Relaxed),
            failures: std::array::from_fn(|i| s.tls_handshake_failures[i].load(Relaxed)),
            handshake_seconds: s.tls_handshake_seconds.snapshot(),
            upstream_full: s.upstream_tls_full.load(Relaxed),
            upstream_resumed: s.upstream_tls_resumed.load(Relaxed),
            upstream_failures: std::array::from_fn(|i| s.upstream_tls_failures[i].load(Relaxed)),
        },
    }
}

fn add(total: &mut Counters, c: &Counters) {
    total.connections_current += c.connections_current;
    total.connections_total += c.connections_total;
    total.connections_refused += c.connections_refused;
    total.requests += c.requests;
    total.bytes_in += c.bytes_in;
    total.bytes_out += c.bytes_out;
    total.upstream_connects += c.upstream_connects;
    total.upstream_reuses += c.upstream_reuses;
    total.upstream_retries += c.upstream_retries;
    total.upstream_queued += c.upstream_queued;
    total.queue_timeouts += c.queue_timeouts;
    total.slow_request_bodies += c.slow_request_bodies;
    total.slow_response_readers += c.slow_response_readers;
    total.accept_failures += c.accept_failures;
    total.access_log_dropped += c.access_log_dropped;
    total.tls.add(&c.tls);
    if total.errors.is_empty() {
        total.errors = c.errors.clone();
    } else {
        for (t, e) in total.errors.iter_mut().zip(&c.errors) {
            t.2 += e.2;
        }
    }
}

/// Turns successive request totals into a rate over the last few seconds.
#[derive(Default)]
pub struct RateMeter {
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl RateMeter {
    pub fn rate(&self, now: Instant, total: u64) -> f64 {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, total));
        while samples.len() > 2 && now.duration_since(samples[1].0).as_secs_f64() >= 5.0 {
            samples.pop_front();
        }
        let (t0, n0) = samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        if dt < 0.2 {
            return 0.0;
        }
        total.saturating_sub(n0) as f64 / dt
    }
}

/// Sums every loop of `processes` worker processes (0 = no worker
/// processes: the loops of this process are slot 0).
pub fn server(
    board: &Board,
    processes: usize,
    loops: usize,
    started: Instant,
    meter: &RateMeter,
) -> ServerSnapshot {
    let mut total = Counters::default();
    let mut workers = Vec::new();
    let slots = processes.clamp(1, MAX_PROCESSES);
    let mut rss = 0;
    for p in 0..slots {
        let pid = if processes == 0 {
            std::process::id()
        } else {
            board.processes[p].pid.load(Relaxed)
        };
        rss += rss_of(pid);
        for l in 0..loops {
            let counters = counters_of(board.loop_stats(p, l));
            add(&mut total, &counters);
            workers.push(WorkerSnapshot {
                process: p,
                pid,
                event_loop: l,
                counters,
            });
        }
    }
    if processes > 0 {
        rss += rss_of(std::process::id()); // the master
    }
    let now = Instant::now();
    ServerSnapshot {
        uptime_seconds: now.duration_since(started).as_secs_f64(),
        requests_per_second: meter.rate(now, total.requests),
        rss_bytes: rss,
        processes: processes.max(1),
        worker_restarts: 0,
        total,
        workers,
    }
}

/// VmRSS of a process in bytes (0 when it is gone).
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The backends of `upstream` in `config`, plus removed ones still serving
/// requests ("draining").
pub fn backends(board: &Board, config: &Config, upstream: &str) -> Option<Vec<BackendSnapshot>> {
    let up = config.upstreams.get(upstream)?;
    let now_ms = crate::control::unix_ms();
    let snap =
        |addr: String, weight: u32, counters: &super::board::BackendCounters, listed: bool| {
            let active_health = counters.active_health.snapshot();
            // In rotation only when both the passive and the active check say so.
            let down =
                counters.down_until_ms.load(Relaxed) > now_ms || active_health.state == "down";
            let active = counters.active();
            BackendSnapshot {
                active_health,
                health: match (listed, down) {
                    (false, _) => "draining",
                    (true, true) => "down",
                    (true, false) => "up",
                },
                addr,
                weight,
                active,
                requests: counters.requests.load(Relaxed),
                failures: counters.failures.load(Relaxed),
                latency_ewma_ms: f64::from_bits(counters.ewma_ns_bits.load(Relaxed)) / 1e6,
                responses: std::array::from_fn(|i| counters.responses[i].load(Relaxed)),
                connect_latency: counters.connect.snapshot(),
                response_latency: counters.response.snapshot(),
            }
        };
    let mut out: Vec<BackendSnapshot> = up
        .backends
        .iter()
        .map(|b| {
            let addr = b.addr.to_string();
            let counters = board.backend(upstream, &addr);
            snap(addr, b.weight, counters, true)
        })
        .collect();
    for (addr, counters) in board.backends_of(upstream) {
        let listed = up.backends.iter().any(|b| b.addr.to_string() == addr);
        if !listed && counters.active() > 0 {
            out.push(snap(addr, 0, counters, false));
        }
    }
    Some(out)
}
