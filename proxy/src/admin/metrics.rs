//! `GET /metrics`: the control plane's snapshots in the Prometheus text
//! format (0.0.4), encoded by `prometheus-client`. A fresh registry is built
//! per scrape from one set of snapshots, so every family is consistent with
//! the others and nothing is kept between scrapes.
//!
//! Names follow the Prometheus conventions: `speedmimi_` prefix, `_total`
//! on counters (added by the encoder), base units in the name (`_seconds`,
//! `_bytes`). Server-wide families have no labels; the same counters per
//! event loop are `speedmimi_worker_*` with `process` and `loop` labels, so
//! summing a family never counts anything twice.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::control::active_health::Outcome;
use crate::control::{
    BackendSnapshot, ControlPlane, Counters, Histogram, ServerSnapshot, TlsCounters,
    LATENCY_BUCKETS,
};
use crate::tls::upstream::UpstreamTlsFailure;
use crate::tls::HandshakeFailure;

/// The content type of what `render` returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every state `BackendSnapshot::health` may take, one gauge series each.
const HEALTH_STATES: [&str; 3] = ["up", "down", "draining"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One scrape's worth of snapshots.
#[derive(Debug)]
struct Scrape {
    server: ServerSnapshot,
    upstreams: Vec<(String, Vec<BackendSnapshot>)>,
}

/// Reads the snapshots and encodes them.
pub fn render(plane: &dyn ControlPlane) -> Result<String, std::fmt::Error> {
    let upstreams = plane
        .upstreams()
        .into_iter()
        .filter_map(|name| {
            let backends = plane.backends(&name)?;
            Some((name, backends))
        })
        .collect();
    let scrape = Scrape {
        server: plane.server(),
        upstreams,
    };
    let mut registry = Registry::with_prefix("speedmimi");
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

type Labels = Vec<(&'static str, String)>;
/// A counter family: name (without prefix), help, and how to read it.
type CounterDef = (&'static str, &'static str, fn(&Counters) -> u64);

/// A counter-like or gauge-like value per label set, under one descriptor.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut series = series.into_iter().peekable();
    let Some((_, first)) = series.peek() else {
        return Ok(());
    };
    let metric_type = first.metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

/// Per-bucket counts (not cumulative, overflow last) as the encoder wants
/// them; it accumulates and writes `+Inf` itself.
fn buckets(h: &Histogram) -> (Vec<(f64, u64)>, u64) {
    let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
        .iter()
        .enumerate()
        .map(|(i, &le)| (le, h.counts.get(i).copied().unwrap_or(0)))
        .collect();
    let overflow: u64 = h.counts.iter().skip(LATENCY_BUCKETS.len()).sum();
    buckets.push((f64::INFINITY, overflow));
    let count = buckets.iter().map(|(_, n)| n).sum();
    (buckets, count)
}

fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, &'a Histogram)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        let (buckets, count) = buckets(h);
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum_seconds, count, &buckets, None)?;
    }
    Ok(())
}

/// The counters shared by the server-wide and the per-loop families.
/// `prefix` is "" or "worker_"; `labels` is empty or (process, loop).
fn counter_families(
    encoder: &mut DescriptorEncoder,
    prefix: &str,
    rows: &[(Labels, &Counters)],
) -> Result<(), std::fmt::Error> {
    let scope = if prefix.is_empty() {
        "all event loops of all processes"
    } else {
        "one event loop"
    };
    let simple: [CounterDef; 14] = [
        ("connections", "Client connections accepted", |c| {
            c.connections_total
        }),
        (
            "connections_refused",
            "Client connections turned away with 503 because server.max_conn was reached",
            |c| c.connections_refused,
        ),
        ("requests", "Client requests received", |c| c.requests),
        ("client_received_bytes", "Bytes read from clients", |c| {
            c.bytes_in
        }),
        ("client_sent_bytes", "Bytes written to clients", |c| {
            c.bytes_out
        }),
        (
            "upstream_connections_opened",
            "Connections opened to backends",
            |c| c.upstream_connects,
        ),
        (
            "upstream_connections_reused",
            "Requests sent on a kept-alive backend connection",
            |c| c.upstream_reuses,
        ),
        (
            "upstream_retries",
            "Requests tried again on another backend",
            |c| c.upstream_retries,
        ),
        (
            "upstream_queued",
            "Requests that waited for a backend connection (max_conns)",
            |c| c.upstream_queued,
        ),
        (
            "upstream_queue_timeouts",
            "Requests answered 503 after waiting queue_timeout for a connection",
            |c| c.queue_timeouts,
        ),
        (
            "client_slow_request_bodies",
            "Clients cut off for sending a request body below server.min_rate (408)",
            |c| c.slow_request_bodies,
        ),
        (
            "client_slow_response_readers",
            "Clients closed for reading a response below server.min_rate",
            |c| c.slow_response_readers,
        ),
        (
            "accept_failures",
            "accept(2) failures such as EMFILE (out of file descriptors)",
            |c| c.accept_failures,
        ),
        (
            "access_log_dropped_lines",
            "Access-log lines dropped because the writer fell behind or the disk is full",
            |c| c.access_log_dropped,
        ),
    ];
    family(
        encoder,
        &format!("{prefix}connections_active"),
        &format!("Client connections open now, {scope}"),
        rows.iter()
            .map(|(l, c)| (l.clone(), ConstGauge::new(c.connections_current))),
    )?;
    for (name, help, get) in simple {
        family(
            encoder,
            &format!("{prefix}{name}"),
            &format!("{help}, {scope}"),
            rows.iter().map(|(l, c)| (l.clone(), counter(get(c)))),
        )?;
    }
    family(
        encoder,
        &format!("{prefix}errors"),
        &format!("Error answers the proxy produced itself, by kind and status, {scope}"),
        rows.iter().flat_map(|(l, c)| {
            c.errors.iter().map(move |(kind, status, n)| {
                let mut labels = l.clone();
                labels.push(("kind", kind.to_string()));
                labels.push(("status", status.to_string()));
                (labels, counter(*n))
            })
        }),
    )
}

/// TLS termination, server-wide.
fn tls_families(e: &mut DescriptorEncoder, t: &TlsCounters) -> Result<(), std::fmt::Error> {
    family(
        e,
        "tls_connections_active",
        "Client connections speaking TLS now (handshaking or established)",
        [(Vec::new(), ConstGauge::new(t.connections_current))],
    )?;
    family(
        e,
        "tls_handshakes",
        "TLS handshakes completed, full or resumed (session ticket or ID)",
        [
            ("full", t.handshakes_full),
            ("resumed", t.handshakes_resumed),
        ]
        .map(|(kind, n)| (vec![("kind", kind.to_string())], counter(n))),
    )?;
    family(
        e,
        "tls_handshake_failures",
        "TLS handshakes that did not finish, by reason",
        HandshakeFailure::ALL.map(|f| {
            let labels = vec![("reason", f.label().to_string())];
            (labels, counter(t.failures[f as usize]))
        }),
    )?;
    histograms(
        e,
        "tls_handshake_seconds",
        "From accept to the end of the TLS handshake",
        [(Vec::new(), &t.handshake_seconds)],
    )?;
    family(
        e,
        "upstream_tls_handshakes",
        "TLS handshakes with backends completed, full or resumed",
        [("full", t.upstream_full), ("resumed", t.upstream_resumed)]
            .map(|(kind, n)| (vec![("kind", kind.to_string())], counter(n))),
    )?;
    family(
        e,
        "upstream_tls_failures",
        "TLS handshakes with backends that failed, by reason (the request got 502 or went to another backend)",
        UpstreamTlsFailure::ALL.map(|f| {
            let labels = vec![("reason", f.label().to_string())];
            (labels, counter(t.upstream_failures[f as usize]))
        }),
    )
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.server;
        let e = &mut encoder;
        let none = || -> Labels { Vec::new() };
        family(
            e,
            "uptime_seconds",
            "Seconds since the proxy started",
            [(none(), ConstGauge::new(s.uptime_seconds))],
        )?;
        family(
            e,
            "resident_memory_bytes",
            "Resident memory of the proxy, all its processes",
            [(none(), ConstGauge::new(s.rss_bytes as i64))],
        )?;
        family(
            e,
            "processes",
            "Processes running event loops (1 when there is no master)",
            [(none(), ConstGauge::new(s.processes as i64))],
        )?;
        family(
            e,
            "worker_restarts",
            "Worker processes the master started again after they died",
            [(none(), counter(s.worker_restarts))],
        )?;
        family(
            e,
            "requests_per_second",
            "Client requests per second over the last few seconds",
            [(none(), ConstGauge::new(s.requests_per_second))],
        )?;
        counter_families(e, "", &[(none(), &s.total)])?;
        tls_families(e, &s.total.tls)?;
        let per_loop: Vec<(Labels, &Counters)> = s
            .workers
            .iter()
            .map(|w| {
                let labels = vec![
                    ("process", w.process.to_string()),
                    ("loop", w.event_loop.to_string()),
                ];
                (labels, &w.counters)
            })
            .collect();
        counter_families(e, "worker_", &per_loop)?;
        self.encode_backends(e)
    }
}

impl Scrape {
    fn backends(&self) -> impl Iterator<Item = (Labels, &BackendSnapshot)> {
        self.upstreams.iter().flat_map(|(upstream, list)| {
            list.iter().map(move |b| {
                let labels = vec![("upstream", upstream.clone()), ("backend", b.addr.clone())];
                (labels, b)
            })
        })
    }

    fn encode_backends(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            e,
            "upstream_requests",
            "Responses from each backend, by status class",
            self.backends().flat_map(|(labels, b)| {
                CLASSES.iter().zip(b.responses).map(move |(class, n)| {
                    let mut labels = labels.clone();
                    labels.push(("class", class.to_string()));
                    (labels, counter(n))
                })
            }),
        )?;
        family(
            e,
            "upstream_sent_requests",
            "Requests sent to each backend",
            self.backends().map(|(l, b)| (l, counter(b.requests))),
        )?;
        family(
            e,
            "upstream_failures",
            "Failed tries on each backend (connect error, reset, timeout)",
            self.backends().map(|(l, b)| (l, counter(b.failures))),
        )?;
        family(
            e,
            "upstream_active_requests",
            "Requests in flight to each backend",
            self.backends().map(|(l, b)| (l, ConstGauge::new(b.active))),
        )?;
        family(
            e,
            "upstream_weight",
            "Configured weight of each backend",
            self.backends()
                .map(|(l, b)| (l, ConstGauge::new(i64::from(b.weight)))),
        )?;
        family(
            e,
            "upstream_latency_ewma_seconds",
            "Peak-EWMA response latency of each backend (0 before the first sample)",
            self.backends()
                .map(|(l, b)| (l, ConstGauge::new(b.latency_ewma_ms / 1000.0))),
        )?;
        family(
            e,
            "upstream_health",
            "1 for the state each backend is in, 0 for the others",
            self.backends().flat_map(|(labels, b)| {
                HEALTH_STATES.iter().map(move |state| {
                    let mut labels = labels.clone();
                    labels.push(("state", state.to_string()));
                    (labels, ConstGauge::new(i64::from(b.health == *state)))
                })
            }),
        )?;
        family(
            e,
            "backend_health_check_up",
            "Active health check verdict of each backend: 1 up, 0 down (backends without a check are left out)",
            self.backends()
                .filter(|(_, b)| b.active_health.state != "off")
                .map(|(l, b)| (l, ConstGauge::new(i64::from(b.active_health.state == "up")))),
        )?;
        family(
            e,
            "backend_health_check_probes",
            "Active health check probes sent to each backend, by result",
            self.backends().flat_map(|(labels, b)| {
                Outcome::ALL
                    .iter()
                    .zip(b.active_health.probes)
                    .filter(move |_| {
                        b.active_health.state != "off"
                            || b.active_health.probes.iter().any(|&n| n > 0)
                    })
                    .map(move |(o, n)| {
                        let mut labels = labels.clone();
                        labels.push(("result", o.name().to_string()));
                        (labels, counter(n))
                    })
            }),
        )?;
        histograms(
            e,
            "upstream_connect_duration_seconds",
            "Time to establish a backend connection",
            self.backends().map(|(l, b)| (l, &b.connect_latency)),
        )?;
        histograms(
            e,
            "upstream_response_duration_seconds",
            "Time from sending a request to a backend to its response head",
            self.backends().map(|(l, b)| (l, &b.response_latency)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_overflow_last() {
        let mut counts = vec![0; LATENCY_BUCKETS.len() + 1];
        counts[0] = 2;
        counts[LATENCY_BUCKETS.len()] = 3;
        let (b, count) = buckets(&Histogram {
            counts,
            sum_seconds: 20.0,
        });
        assert_eq!(count, 5);
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(b[0], (0.0001, 2));
        assert_eq!(*b.last().unwrap(), (f64::INFINITY, 3));
    }

    #[test]
    fn empty_histogram_has_zero_buckets() {
        let (b, count) = buckets(&Histogram::default());
        assert_eq!(count, 0);
        assert!(b.iter().all(|(_, n)| *n == 0));
    }
}
