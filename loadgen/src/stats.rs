//! What the engine measures: counters and a latency histogram per 1-second
//! interval. Workers (threads) and shards (processes) each report their
//! intervals; `Collector` adds them up exactly (histograms add), in order,
//! once every source has passed an interval.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds up to one hour, 3 significant digits.
pub const HIST_MAX_US: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Errors by kind, as the JSON schema names them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Malformed responses (bad head, bad framing, unsolicited bytes).
    pub parse: u64,
    /// HTTPS handshakes that failed (`tls::Failure`), each kind apart; a
    /// failed handshake uses up a request, like a failed connect.
    #[serde(default)]
    pub tls_untrusted: u64,
    #[serde(default)]
    pub tls_name_mismatch: u64,
    #[serde(default)]
    pub tls_expired: u64,
    #[serde(default)]
    pub tls_alert: u64,
    #[serde(default)]
    pub tls_handshake_timeout: u64,
    #[serde(default)]
    pub tls_other: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect
            + self.read
            + self.write
            + self.timeout
            + self.status_4xx
            + self.status_5xx
            + self.parse
            + self.tls()
    }

    /// Failed handshakes, all kinds.
    pub fn tls(&self) -> u64 {
        self.tls_untrusted
            + self.tls_name_mismatch
            + self.tls_expired
            + self.tls_alert
            + self.tls_handshake_timeout
            + self.tls_other
    }

    pub fn count_tls(&mut self, f: crate::tls::Failure) {
        use crate::tls::Failure as F;
        *match f {
            F::Untrusted => &mut self.tls_untrusted,
            F::NameMismatch => &mut self.tls_name_mismatch,
            F::Expired => &mut self.tls_expired,
            F::Alert => &mut self.tls_alert,
            F::Other => &mut self.tls_other,
        } += 1;
    }

    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.parse += o.parse;
        self.tls_untrusted += o.tls_untrusted;
        self.tls_name_mismatch += o.tls_name_mismatch;
        self.tls_expired += o.tls_expired;
        self.tls_alert += o.tls_alert;
        self.tls_handshake_timeout += o.tls_handshake_timeout;
        self.tls_other += o.tls_other;
    }
}

/// One source's counters for one interval (or, summed, for a whole run).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests written (fully or not).
    pub sent: u64,
    /// Complete responses received (each has a latency in the histogram).
    pub requests: u64,
    pub bytes_read: u64,
    pub errors: Errors,
    /// Connections opened again after a close or an error.
    pub reconnects: u64,
    /// Established connections at the end of the interval (a gauge).
    pub open: u64,
    /// Most established connections at any moment of the interval.
    pub peak_open: u64,
    /// Paced modes: requests sent more than 1 ms after their intended time.
    pub late: u64,
    /// Paced modes: sum and maximum of (actual − intended) send time, µs.
    pub lag_sum_us: u64,
    pub lag_max_us: u64,
    /// Paced modes: requests whose lag was measured.
    pub paced: u64,
    /// HTTPS: handshakes completed, full and resumed, and on which version.
    #[serde(default)]
    pub tls_full: u64,
    #[serde(default)]
    pub tls_resumed: u64,
    #[serde(default)]
    pub tls13: u64,
    /// IANA code of the cipher suite negotiated (one config, one suite; the
    /// largest code when they differ).
    #[serde(default)]
    pub tls_suite: u16,
    /// IANA code of the key exchange group negotiated (the same rule).
    #[serde(default)]
    pub tls_kx: u16,
}

impl Counters {
    /// Adds another source's counters for the same interval: gauges add too,
    /// because sources hold disjoint connections.
    pub fn add(&mut self, o: &Counters) {
        self.sent += o.sent;
        self.requests += o.requests;
        self.bytes_read += o.bytes_read;
        self.errors.add(&o.errors);
        self.reconnects += o.reconnects;
        self.open += o.open;
        self.peak_open += o.peak_open;
        self.late += o.late;
        self.lag_sum_us += o.lag_sum_us;
        self.lag_max_us = self.lag_max_us.max(o.lag_max_us);
        self.paced += o.paced;
        self.tls_full += o.tls_full;
        self.tls_resumed += o.tls_resumed;
        self.tls13 += o.tls13;
        self.tls_suite = self.tls_suite.max(o.tls_suite);
        self.tls_kx = self.tls_kx.max(o.tls_kx);
    }

    /// Folds a finished interval into run totals: flows add, gauges take the maximum.
    pub fn accumulate(&mut self, o: &Counters) {
        let (open, peak) = (o.open, self.peak_open.max(o.peak_open));
        let mut flows = *o;
        flows.open = 0;
        flows.peak_open = 0;
        self.add(&flows);
        self.open = open;
        self.peak_open = peak;
    }
}

/// Messages from sources (worker threads or shard processes) to the collector.
#[derive(Debug)]
pub enum Msg {
    Interval {
        source: usize,
        index: u64,
        hist: Box<Histogram<u64>>,
        /// HTTPS: handshake latencies, connect start to handshake done (µs).
        handshake: Box<Histogram<u64>>,
        counters: Counters,
    },
    Done {
        source: usize,
        elapsed: Duration,
        error: Option<String>,
    },
}

/// One finished interval over all sources.
#[derive(Debug, Clone)]
pub struct Interval {
    pub index: u64,
    /// Wall time the interval covers (1 s, except the last one).
    pub duration: Duration,
    pub hist: Histogram<u64>,
    pub handshake: Histogram<u64>,
    pub counters: Counters,
}

/// Merges interval reports from `sources` sources, in interval order.
pub struct Collector {
    last: Vec<Option<u64>>,
    done: Vec<bool>,
    pending: BTreeMap<u64, (Histogram<u64>, Histogram<u64>, Counters)>,
    pub elapsed: Duration,
    pub errors: Vec<String>,
}

impl Collector {
    pub fn new(sources: usize) -> Collector {
        Collector {
            last: vec![None; sources],
            done: vec![false; sources],
            pending: BTreeMap::new(),
            elapsed: Duration::ZERO,
            errors: Vec::new(),
        }
    }

    pub fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// Takes one message; returns the intervals it completed, oldest first.
    pub fn push(&mut self, msg: Msg) -> Vec<Interval> {
        match msg {
            Msg::Interval {
                source,
                index,
                hist,
                handshake,
                counters,
            } => {
                let slot = self
                    .pending
                    .entry(index)
                    .or_insert_with(|| (new_hist(), new_hist(), Counters::default()));
                // Histograms with the same bounds always add.
                let _ = slot.0.add(&*hist);
                let _ = slot.1.add(&*handshake);
                slot.2.add(&counters);
                self.last[source] = Some(index);
            }
            Msg::Done {
                source,
                elapsed,
                error,
            } => {
                self.done[source] = true;
                self.elapsed = self.elapsed.max(elapsed);
                if let Some(e) = error {
                    self.errors.push(e);
                }
            }
        }
        self.ready(false)
    }

    /// Everything still pending, once all sources are done or gone.
    pub fn finish(&mut self) -> Vec<Interval> {
        self.ready(true)
    }

    fn ready(&mut self, all: bool) -> Vec<Interval> {
        // An interval is final when every live source has reported a later one.
        let horizon = self
            .last
            .iter()
            .zip(&self.done)
            .filter(|(_, &d)| !d)
            .map(|(l, _)| l.map_or(0, |l| l))
            .min();
        let mut out = Vec::new();
        while let Some((&index, _)) = self.pending.first_key_value() {
            let final_ = all || horizon.is_none_or(|h| index < h);
            if !final_ {
                break;
            }
            let (hist, handshake, counters) = self.pending.remove(&index).expect("key just seen");
            let start = Duration::from_secs(index);
            let duration = if all || horizon.is_none() {
                self.elapsed
                    .saturating_sub(start)
                    .min(Duration::from_secs(1))
            } else {
                Duration::from_secs(1)
            };
            out.push(Interval {
                index,
                duration: duration.max(Duration::from_millis(1)),
                hist,
                handshake,
                counters,
            });
        }
        out
    }
}
