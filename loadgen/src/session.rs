//! One run from start to end: starts the sources (worker threads here, or
//! shard processes), stops them at the deadline or on Ctrl-C, and feeds
//! each finished interval to the caller while adding up the totals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::engine::{self, EngineConfig};
use crate::shard::Shards;
use crate::stats::{new_hist, Collector, Counters, Interval};

/// Where the run's connections live.
#[derive(Debug, Clone)]
pub enum Placement {
    /// All in this process (which may itself be shard `index` of `count`).
    Local {
        index: u64,
        count: u64,
        start: Instant,
    },
    /// In `count` child processes started with `args`.
    Shards { count: usize, args: Vec<String> },
}

pub struct Outcome {
    pub hist: Histogram<u64>,
    pub handshake: Histogram<u64>,
    pub counters: Counters,
    pub elapsed: Duration,
    pub errors: Vec<String>,
}

/// Lead time shards get to start before the common start time.
const SHARD_LEAD: Duration = Duration::from_millis(300);

pub fn run(
    cfg: &EngineConfig,
    placement: &Placement,
    duration: Option<Duration>,
    stop: &Arc<AtomicBool>,
    on_interval: &mut dyn FnMut(&Interval) -> bool,
) -> std::io::Result<Outcome> {
    let (tx, rx) = mpsc::channel();
    let (sources, start, shards, mut handles) = match placement {
        Placement::Local {
            index,
            count,
            start,
        } => {
            let plans = engine::plan(cfg, *index, *count, 0, *start);
            let n = plans.len();
            (n, *start, None, engine::spawn(plans, stop, &tx)?)
        }
        Placement::Shards { count, args } => {
            let at = SystemTime::now() + SHARD_LEAD;
            let unix = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            let shards = Shards::spawn(args, *count, unix, &tx)?;
            (
                *count,
                Instant::now() + SHARD_LEAD,
                Some(shards),
                Vec::new(),
            )
        }
    };
    drop(tx);
    // Shards stop themselves at their own deadline; the grace is for stragglers.
    let grace = if shards.is_some() {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    };
    let deadline = duration.map(|d| start + d + grace);
    let mut collector = Collector::new(sources);
    let mut hist = new_hist();
    let mut handshake = new_hist();
    let mut counters = Counters::default();
    let mut interrupted = false;
    let mut emit = |iv: Interval, stop: &AtomicBool| {
        let _ = hist.add(&iv.hist);
        let _ = handshake.add(&iv.handshake);
        counters.accumulate(&iv.counters);
        if !on_interval(&iv) {
            stop.store(true, Ordering::Relaxed);
        }
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(msg) => {
                for iv in collector.push(msg) {
                    emit(iv, stop);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if collector.all_done() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) && !interrupted {
            interrupted = true;
            if let Some(s) = &shards {
                s.interrupt();
            }
        }
    }
    for iv in collector.finish() {
        emit(iv, stop);
    }
    for h in handles.drain(..) {
        let _ = h.join();
    }
    if let Some(s) = shards {
        s.wait();
    }
    Ok(Outcome {
        hist,
        handshake,
        counters,
        elapsed: collector.elapsed,
        errors: collector.errors,
    })
}
