//! The result of a run (or of merged logs): the versioned JSON shape
//! documented in docs/loadgen.md, and the wrk-like text summary.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::{Counters, Errors};

/// Bump on any incompatible change to `Summary`'s JSON.
pub const SCHEMA: &str = "loadgen.result/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorsOut {
    #[serde(flatten)]
    pub by_kind: Errors,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p75: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(hist: &Histogram<u64>) -> Latency {
        let q = |p: f64| hist.value_at_quantile(p);
        let empty = hist.is_empty();
        Latency {
            min: if empty { 0 } else { hist.min() },
            mean: if empty { 0.0 } else { hist.mean() },
            stdev: if empty { 0.0 } else { hist.stdev() },
            p50: q(0.5),
            p75: q(0.75),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: hist.max(),
        }
    }
}

/// HTTPS runs: what the handshakes cost and what they negotiated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TlsOut {
    pub server_name: String,
    /// `--insecure`: certificates were not checked.
    pub insecure: bool,
    /// `--tls-resume`: sessions were offered for resumption.
    pub resumption_offered: bool,
    /// Handshakes completed, full and resumed.
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    pub handshakes_per_s: f64,
    /// Handshakes that failed (every `tls_*` error kind).
    pub failed: u64,
    /// "TLSv1.3", "TLSv1.2", or "mixed".
    pub version: String,
    pub cipher_suite: String,
    /// Key exchange group (e.g. `X25519`, `X25519MLKEM768`); "-" for a
    /// TLS 1.2 resumption, which has none.
    #[serde(default)]
    pub kx_group: String,
    /// From the start of the TCP connect to the handshake's end, µs.
    pub handshake_latency_us: Latency,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Connections {
    pub target: u64,
    pub peak_open: u64,
    pub reconnects: u64,
}

/// Paced modes: how far behind its schedule the generator fell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    /// Requests per second asked for (open loop), or implied by hold mode.
    pub rate: f64,
    pub paced_requests: u64,
    /// Sent more than 1 ms after their intended time.
    pub late_requests: u64,
    pub behind_mean_us: f64,
    pub behind_max_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThresholdResult {
    pub expr: String,
    pub value: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub schema: String,
    pub url: String,
    pub mode: String,
    pub threads: u64,
    pub shards: u64,
    /// Complete responses.
    pub requests: u64,
    /// Requests written (≥ requests; the difference was in flight or failed).
    pub sent: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub bytes_read: u64,
    pub transfer_bps: f64,
    pub errors: ErrorsOut,
    pub latency_us: Latency,
    pub connections: Connections,
    pub schedule: Option<Schedule>,
    /// https:// targets only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsOut>,
    pub thresholds: Vec<ThresholdResult>,
}

/// What a run was, for the summary's header fields.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub url: String,
    pub mode: String,
    pub threads: u64,
    pub shards: u64,
    pub conns: u64,
    pub rate: Option<f64>,
    /// https://: the server name and the options that change what is measured.
    pub tls: Option<TlsMeta>,
}

#[derive(Debug, Clone, Default)]
pub struct TlsMeta {
    pub server_name: String,
    pub insecure: bool,
    pub resume: bool,
}

impl Summary {
    pub fn new(meta: &Meta, hist: &Histogram<u64>, c: &Counters, elapsed: Duration) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Summary {
            schema: SCHEMA.to_string(),
            url: meta.url.clone(),
            mode: meta.mode.clone(),
            threads: meta.threads,
            shards: meta.shards,
            requests: c.requests,
            sent: c.sent,
            duration_s: elapsed.as_secs_f64(),
            rps: c.requests as f64 / secs,
            bytes_read: c.bytes_read,
            transfer_bps: c.bytes_read as f64 / secs,
            errors: ErrorsOut {
                by_kind: c.errors,
                total: c.errors.total(),
            },
            latency_us: Latency::of(hist),
            connections: Connections {
                target: meta.conns,
                peak_open: c.peak_open,
                reconnects: c.reconnects,
            },
            schedule: meta.rate.map(|rate| Schedule {
                rate,
                paced_requests: c.paced,
                late_requests: c.late,
                behind_mean_us: if c.paced == 0 {
                    0.0
                } else {
                    c.lag_sum_us as f64 / c.paced as f64
                },
                behind_max_us: c.lag_max_us,
            }),
            tls: None,
            thresholds: Vec::new(),
        }
    }

    /// Adds the TLS section of an https:// run.
    pub fn with_tls(mut self, meta: &Meta, handshake: &Histogram<u64>, c: &Counters) -> Summary {
        let Some(t) = &meta.tls else { return self };
        let done = c.tls_full + c.tls_resumed;
        let version = match c.tls13 {
            0 => crate::tls::version_name(false),
            n if n == done => crate::tls::version_name(true),
            _ => "mixed",
        };
        self.tls = Some(TlsOut {
            server_name: t.server_name.clone(),
            insecure: t.insecure,
            resumption_offered: t.resume,
            handshakes: done,
            full: c.tls_full,
            resumed: c.tls_resumed,
            handshakes_per_s: done as f64 / self.duration_s.max(1e-9),
            failed: c.errors.tls(),
            version: if done == 0 { "-" } else { version }.to_string(),
            cipher_suite: if done == 0 {
                "-".to_string()
            } else {
                crate::tls::suite_name(c.tls_suite)
            },
            kx_group: if c.tls_kx == 0 {
                "-".to_string()
            } else {
                crate::tls::group_name(c.tls_kx)
            },
            handshake_latency_us: Latency::of(handshake),
        });
        self
    }
}

/// A latency in µs with a readable unit.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.0}us")
    }
}

pub fn fmt_bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}GB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.2}MB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.2}KB", b / 1024.0)
    } else {
        format!("{b:.0}B")
    }
}

/// The wrk-like text summary.
pub fn text(s: &Summary) -> String {
    let l = &s.latency_us;
    let e = &s.errors.by_kind;
    let mut out = String::new();
    out.push_str(&format!(
        "  {} threads, {} connections, {} shard(s), {} mode\n",
        s.threads, s.connections.target, s.shards, s.mode
    ));
    out.push_str(&format!(
        "  Latency   {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "p50", "p75", "p90", "p99", "p99.9", "max", "mean", "stdev"
    ));
    out.push_str(&format!(
        "            {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        fmt_us(l.p50 as f64),
        fmt_us(l.p75 as f64),
        fmt_us(l.p90 as f64),
        fmt_us(l.p99 as f64),
        fmt_us(l.p999 as f64),
        fmt_us(l.max as f64),
        fmt_us(l.mean),
        fmt_us(l.stdev),
    ));
    out.push_str(&format!(
        "  {} requests in {:.2}s, {} read; connections peak {} open, {} reconnects\n",
        s.requests,
        s.duration_s,
        fmt_bytes(s.bytes_read as f64),
        s.connections.peak_open,
        s.connections.reconnects
    ));
    if let Some(sc) = &s.schedule {
        out.push_str(&format!(
            "  Schedule: {:.0} req/s asked; behind by {} mean, {} max; {} of {} requests >1ms late\n",
            sc.rate,
            fmt_us(sc.behind_mean_us),
            fmt_us(sc.behind_max_us as f64),
            sc.late_requests,
            sc.paced_requests
        ));
        if sc.late_requests * 100 > sc.paced_requests.max(1) {
            out.push_str(
                "  (more than 1% of requests went out late: the target was slower than the \
                 schedule, or the generator needs more connections (-c) or threads (-t))\n",
            );
        }
    }
    if let Some(t) = &s.tls {
        out.push_str(&tls_text(t, e));
    }
    out.push_str(&format!(
        "  Errors: {} (connect {}, read {}, write {}, timeout {}, status 4xx {}, status 5xx {}, parse {}, tls {})\n",
        s.errors.total,
        e.connect,
        e.read,
        e.write,
        e.timeout,
        e.status_4xx,
        e.status_5xx,
        e.parse,
        e.tls()
    ));
    out.push_str(&format!("Requests/sec: {:>12.2}\n", s.rps));
    out.push_str(&format!(
        "Transfer/sec: {:>12}\n",
        fmt_bytes(s.transfer_bps)
    ));
    out
}

fn tls_text(t: &TlsOut, e: &Errors) -> String {
    let h = &t.handshake_latency_us;
    let mut out = String::new();
    if t.insecure {
        out.push_str("  TLS: --insecure: the server's certificate was NOT checked\n");
    }
    out.push_str(&format!(
        "  TLS {} {} {} (SNI {}): {} handshakes ({} full, {} resumed{}), {:.1}/s\n",
        t.version,
        t.cipher_suite,
        t.kx_group,
        t.server_name,
        t.handshakes,
        t.full,
        t.resumed,
        if t.resumption_offered {
            ""
        } else {
            "; resumption off"
        },
        t.handshakes_per_s
    ));
    out.push_str(&format!(
        "  Handshake p50 {} p90 {} p99 {} max {} (connect start to handshake done)\n",
        fmt_us(h.p50 as f64),
        fmt_us(h.p90 as f64),
        fmt_us(h.p99 as f64),
        fmt_us(h.max as f64)
    ));
    if t.failed > 0 {
        out.push_str(&format!(
            "  TLS failures: {} (untrusted {}, name mismatch {}, expired {}, alert {}, handshake timeout {}, other {})\n",
            t.failed,
            e.tls_untrusted,
            e.tls_name_mismatch,
            e.tls_expired,
            e.tls_alert,
            e.tls_handshake_timeout,
            e.tls_other
        ));
    }
    out
}
