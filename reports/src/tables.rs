//! The report's tables as plain rows of strings, shared by report.html and summary.md
//! so both always say the same numbers: environment, steps, measured costs against
//! the seed's rules, and capacity plans.

use crate::capacity::{against_rule, measured_costs, plan, Costs, Demand, HostLimits, Plan};
use crate::model::RunData;
use crate::plot::Fmt;
use crate::reference::CapacityRules;

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

pub fn gb(bytes: f64) -> String {
    format!("{:.2}", bytes / 1e9)
}

pub fn count(n: u64) -> String {
    // 10000000 -> 10,000,000: big counts are read at a glance in reports.
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn env_table(data: &RunData) -> Table {
    let e = &data.run.env;
    let mut t = Table::new(&["what", "value"]);
    let mut row = |k: &str, v: String| t.rows.push(vec![k.to_string(), v]);
    row("scenario", data.run.scenario.clone());
    if let Some(at) = &data.run.started_at {
        row("started", at.clone());
    }
    row(
        "CPU",
        format!("{} ({} logical cores)", e.cpu_model, e.cores),
    );
    row("memory", format!("{} GB", gb(e.memory_bytes as f64)));
    row("kernel", e.kernel.clone());
    for (k, v) in &e.versions {
        row(&format!("version: {k}"), v.clone());
    }
    row(
        "tuner show --json",
        if e.tuner.is_some() {
            "recorded in results.json".into()
        } else {
            "not recorded".into()
        },
    );
    t
}

pub fn steps_table(data: &RunData) -> Table {
    // TLS and client columns only when some step has them, so a plaintext run's
    // table stays as wide as it was.
    let tls = data.run.steps.iter().any(|s| s.tls.is_some());
    let client = data.run.steps.iter().any(|s| s.client.is_some());
    let mut headers = vec![
        "target",
        "round",
        "step",
        "mode",
        "connections",
        "peak open",
        "duration s",
        "requests",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "proxy CPU %",
        "CPU µs/req",
        "proxy RSS peak",
        "kernel TCP mem peak",
        "kernel slab grown",
    ];
    if tls {
        headers.splice(
            4..4,
            [
                "scheme",
                "TLS handshakes (full / resumed)",
                "handshakes/s",
                "handshake p50 ms",
                "handshake p99 ms",
                "TLS",
            ],
        );
    }
    if client {
        headers.push("loadgen RSS peak");
    }
    let mut t = Table::new(&headers);
    for s in &data.run.steps {
        let mut row = vec![
            s.target.clone(),
            s.round.to_string(),
            s.step.to_string(),
            if s.new_conn_per_request {
                format!("{} (conn per request)", s.mode.as_str())
            } else {
                s.mode.as_str().to_string()
            },
            count(s.connections),
            count(s.peak_open),
            format!("{:.1}", s.duration_s),
            count(s.requests),
            count(s.rps.round() as u64),
            ms(s.latency_us.p50),
            ms(s.latency_us.p99),
            ms(s.latency_us.p999),
            ms(s.latency_us.max),
            count(s.errors.total()),
            format!("{:.1}", s.proxy_cores_busy() * 100.0),
            format!("{:.1}", s.proxy.cpu_us_per_request),
            Fmt::Bytes.format(s.proxy.rss_peak_bytes as f64),
            Fmt::Bytes.format(s.kernel.sock_mem_bytes_peak as f64),
            s.kernel
                .slab_unreclaim_grown_bytes
                .map_or_else(|| "not measured".into(), |b| Fmt::Bytes.format(b as f64)),
        ];
        if tls {
            let cells = match &s.tls {
                Some(h) => vec![
                    "https".to_string(),
                    format!(
                        "{} ({} / {})",
                        count(h.handshakes),
                        count(h.full),
                        count(h.resumed)
                    ),
                    count(h.handshakes_per_s.round() as u64),
                    ms(h.handshake_latency_us.p50),
                    ms(h.handshake_latency_us.p99),
                    format!("{} {} {}", h.version, h.cipher_suite, h.kx_group)
                        .trim()
                        .to_string(),
                ],
                None => {
                    let mut c = vec!["http".to_string()];
                    c.extend(std::iter::repeat_n("-".to_string(), 5));
                    c
                }
            };
            row.splice(4..4, cells);
        }
        if client {
            row.push(s.client.map_or_else(
                || "not measured".into(),
                |c| Fmt::Bytes.format(c.rss_peak_bytes as f64),
            ));
        }
        t.rows.push(row);
    }
    t
}

/// Measured costs per target against the seed's rules; also returns the costs for planning.
pub fn rules_table(data: &RunData, rules: &CapacityRules) -> (Table, Vec<Costs>) {
    let mut t = Table::new(&[
        "target",
        "figure",
        "measured",
        "seed rule",
        "verdict",
        "from",
    ]);
    let mut costs = Vec::new();
    for target in &data.run.targets {
        let Some(m) = measured_costs(&data.run, &target.name) else {
            t.rows.push(vec![
                target.name.clone(),
                "-".into(),
                "no step with requests and measurable proxy CPU".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        };
        let r = &rules.rps_per_core;
        t.rows.push(vec![
            target.name.clone(),
            "requests/s per busy core".into(),
            count(m.costs.rps_per_core.round() as u64),
            format!("{}-{}", count(r.low as u64), count(r.high as u64)),
            against_rule(m.costs.rps_per_core, r.low, r.high).into(),
            format!(
                "step {} ({} connections, {} req/s, {:.2} cores busy)",
                m.rps_step.step,
                count(m.rps_step.connections),
                count(m.rps_step.rps.round() as u64),
                m.rps_step.proxy_cores_busy()
            ),
        ]);
        let r = &rules.memory_per_million_connections;
        let g = m.gb_per_million_connections();
        let mem = m.memory_step.memory();
        let mut verdict = against_rule(g, r.low, r.high).to_string();
        if mem.slab_bytes.is_none() {
            verdict.push_str(" (a lower bound: slab not measured)");
        }
        let mut parts = vec![format!(
            "{} {}",
            Fmt::Bytes.format(mem.proxy_rss_bytes as f64),
            if mem.rss_grown {
                "RSS grown"
            } else {
                "RSS peak"
            }
        )];
        parts.push(format!(
            "{} socket buffers",
            Fmt::Bytes.format(mem.sock_mem_bytes as f64)
        ));
        if let Some(slab) = mem.slab_bytes {
            parts.push(format!("{} slab", Fmt::Bytes.format(slab as f64)));
        }
        t.rows.push(vec![
            target.name.clone(),
            format!("GB per 1M connections ({})", mem.counted()),
            format!("{g:.2}"),
            format!("{}-{}", r.low, r.high),
            verdict,
            format!(
                "step {} ({} open: {})",
                m.memory_step.step,
                count(m.memory_step.peak_open),
                parts.join(" + ")
            ),
        ]);
        costs.push(m.costs);
    }
    (t, costs)
}

/// One row per cost source for one demand.
pub fn plan_table(
    demand: &Demand,
    costs: &[Costs],
    host: &HostLimits,
) -> Result<(Table, Vec<Plan>), crate::capacity::CapacityError> {
    let mut t = Table::new(&[
        "costs from",
        "req/s per core",
        "bytes per conn",
        "cores busy",
        "cores (at headroom)",
        "RAM GB",
        "RAM GB (at headroom)",
        "hosts",
        "set by",
        "conns per host",
        "source addrs (per host ip:port)",
        "source addrs (one VIP:port)",
    ]);
    let mut plans = Vec::new();
    for c in costs {
        let p = plan(demand, c, host)?;
        t.rows.push(vec![
            c.label.clone(),
            count(c.rps_per_core.round() as u64),
            count(c.bytes_per_connection.round() as u64),
            format!("{:.1}", p.cores_busy),
            count(p.cores),
            gb(p.memory_bytes),
            gb(p.memory_provisioned_bytes),
            count(p.hosts),
            p.binding.as_str().into(),
            count(p.connections_per_host),
            count(p.source_addresses),
            count(p.source_addresses_single_destination),
        ]);
        plans.push(p);
    }
    Ok((t, plans))
}

pub fn demand_title(d: &Demand) -> String {
    format!(
        "{} concurrent connections at {} requests/s",
        count(d.connections),
        count(d.rps.round() as u64)
    )
}

pub fn host_text(h: &HostLimits) -> String {
    format!(
        "Per host: {} cores used up to {:.0}%, {} GB RAM used up to {:.0}%, {} listening port(s){}; \
         at most {} connections per client source address per destination ip:port.",
        h.cores,
        h.cpu_utilization * 100.0,
        gb(h.memory_bytes as f64),
        h.memory_usable * 100.0,
        h.listen_ports,
        h.max_connections
            .map(|m| format!(", at most {} connections", count(m)))
            .unwrap_or_default(),
        count(crate::capacity::CONNECTIONS_PER_SOURCE_ADDRESS)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(super::count(10_000_000), "10,000,000");
        assert_eq!(super::count(999), "999");
        assert_eq!(super::count(1000), "1,000");
    }
}
