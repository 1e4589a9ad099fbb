//! `capacity`: what a target connection count (and request rate) needs — file
//! descriptors per process and in total, worker processes under this machine's
//! RLIMIT_NOFILE, fs.nr_open/fs.file-max, source addresses, tcp_mem, RAM, cores —
//! and whether this machine can do it, and what stops it.

use crate::output::{self, cell, Style, Table, Tone};
use crate::plan::{self, Env, Status};
use crate::profile::{Profile, Target};
use crate::show::Facts;
use serde::Serialize;
use std::path::Path;

/// Kernel memory per idle loopback TCP socket, measured on these machines (DESIGN.md).
pub const KERNEL_BYTES_PER_CONN: f64 = 2800.0;
/// The proxy's user-space budget per idle client connection (DESIGN.md).
pub const USER_BYTES_PER_CONN: f64 = 256.0;
/// speedmimi's CPU per request by open connections, measured on the 2-core AMD
/// EPYC VM these machines are (README: the peers table at 100 and 5,000
/// connections, one event loop; `make bench` at 10,000, two processes). It
/// grows with the connections: more sockets, colder caches.
pub const MEASURED_CPU_US: [(u64, f64); 3] = [(100, 12.6), (5_000, 17.1), (10_000, 18.8)];

/// CPU per request for `connections`: interpolated on log(connections)
/// between the measured points, the nearest one outside them.
pub fn measured_cpu_us(connections: u64) -> f64 {
    let (first, last) = (
        MEASURED_CPU_US[0],
        MEASURED_CPU_US[MEASURED_CPU_US.len() - 1],
    );
    if connections <= first.0 {
        return first.1;
    }
    if connections >= last.0 {
        return last.1;
    }
    let x = (connections as f64).ln();
    MEASURED_CPU_US
        .windows(2)
        .find(|w| connections <= w[1].0)
        .map_or(last.1, |w| {
            let (x0, x1) = ((w[0].0 as f64).ln(), (w[1].0 as f64).ln());
            w[0].1 + (w[1].1 - w[0].1) * (x - x0) / (x1 - x0)
        })
}
/// Spare descriptors per process beyond client sockets: upstream pool, listeners,
/// epoll, logs, accept bursts.
pub const FD_HEADROOM: f64 = 0.10;
/// Above this many connections from one source address to one destination the
/// kernel's port search slows to a crawl (DESIGN.md).
pub const MAX_CONNS_PER_SOURCE: u64 = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("cannot read results file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("results file {path} is not JSON: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("--connections must be at least 1")]
    NoConnections,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub value: f64,
    pub unit: &'static str,
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Costs {
    pub kernel_bytes_per_conn: Cost,
    pub user_bytes_per_conn: Cost,
    pub cpu_us_per_request: Cost,
    /// A rate found in the results file (used when --rps is not given).
    #[serde(skip)]
    pub measured_rps: Option<f64>,
}

impl Costs {
    /// The built-in per-connection costs, CPU for `connections` open ones.
    pub fn for_connections(connections: u64) -> Costs {
        Costs {
            kernel_bytes_per_conn: Cost {
                value: KERNEL_BYTES_PER_CONN,
                unit: "B",
                source: "measured: idle loopback TCP socket on these machines (DESIGN.md)".into(),
            },
            user_bytes_per_conn: Cost {
                value: USER_BYTES_PER_CONN,
                unit: "B",
                source: "budget: proxy user space per idle connection (DESIGN.md); measured \
                         99 B at 15,000 idle, 131-153 B at 100,000-1,000,000 held (README)"
                    .into(),
            },
            cpu_us_per_request: Cost {
                value: measured_cpu_us(connections),
                unit: "µs",
                source: format!(
                    "measured: speedmimi on a 2-core AMD EPYC VM, 12.6 µs at 100 connections, \
                     17.1 at 5,000, 18.8 at 10,000 (README); {} for {} \
                     (give --results for your machine's figure)",
                    if connections > MEASURED_CPU_US[2].0 {
                        "the 10,000 figure, the largest measured under load,"
                    } else {
                        "interpolated"
                    },
                    output::count(connections)
                ),
            },
            measured_rps: None,
        }
    }
}

/// Field names the results reader accepts, first match wins, searched at any depth.
const RPS: &[&str] = &[
    "rps",
    "requests_per_sec",
    "requests_per_second",
    "req_per_sec",
];
const CPU_US: &[&str] = &[
    "cpu_us_per_request",
    "proxy_cpu_us_per_request",
    "cpu_us_per_req",
];
const RSS: &[&str] = &[
    "rss_bytes_per_conn",
    "proxy_rss_bytes_per_conn",
    "user_bytes_per_conn",
];
const KERNEL: &[&str] = &["kernel_bytes_per_conn", "kernel_bytes_per_socket"];

/// Read per-connection costs from a loadgen/bench JSON file. Tolerant: fields may
/// sit at any depth, be numbers or numeric strings; missing ones keep the defaults.
pub fn read_results(path: &Path, connections: u64) -> Result<Costs, CapacityError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CapacityError::Read {
        path: p.clone(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| CapacityError::Parse {
            path: p.clone(),
            source,
        })?;
    let mut c = Costs::for_connections(connections);
    let from = |name: &str| format!("results file {p} ({name})");
    if let Some((name, x)) = find(&v, CPU_US) {
        c.cpu_us_per_request = Cost {
            value: x,
            unit: "µs",
            source: from(name),
        };
    } else if let (Some((_, cpu_s)), Some((_, req))) = (
        find(&v, &["cpu_seconds", "proxy_cpu_seconds"]),
        find(&v, &["requests", "total_requests"]),
    ) {
        if req > 0.0 {
            c.cpu_us_per_request = Cost {
                value: cpu_s * 1e6 / req,
                unit: "µs",
                source: from("cpu_seconds / requests"),
            };
        }
    }
    if let Some((name, x)) = find(&v, RSS) {
        c.user_bytes_per_conn = Cost {
            value: x,
            unit: "B",
            source: from(name),
        };
    }
    if let Some((name, x)) = find(&v, KERNEL) {
        c.kernel_bytes_per_conn = Cost {
            value: x,
            unit: "B",
            source: from(name),
        };
    }
    c.measured_rps = find(&v, RPS).map(|(_, x)| x);
    Ok(c)
}

fn find<'a>(v: &serde_json::Value, names: &[&'a str]) -> Option<(&'a str, f64)> {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            for n in names {
                if let Some(x) = m.get(*n).and_then(number) {
                    return Some((n, x));
                }
            }
            m.values().find_map(|c| find(c, names))
        }
        Value::Array(a) => a.iter().find_map(|c| find(c, names)),
        _ => None,
    }
}

fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite() && *x >= 0.0)
}

#[derive(Debug, Clone)]
pub struct Request {
    pub connections: u64,
    pub rps: Option<f64>,
    /// The load generator runs on this machine too (doubles sockets and files).
    pub clients_here: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub item: String,
    pub needed: String,
    pub machine: String,
    /// ok / change / blocked / info
    pub status: String,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub connections: u64,
    pub rps: Option<f64>,
    pub clients_here: bool,
    pub profile: Option<String>,
    pub costs: Costs,
    pub fds_total: u64,
    pub fds_per_process: u64,
    pub processes: u64,
    pub nofile_limit_per_process: u64,
    pub fs_nr_open_needed: u64,
    pub fs_file_max_needed: u64,
    pub source_addresses: u64,
    pub ports_per_source: u64,
    pub sockets: u64,
    pub tcp_mem_pages_needed: u64,
    pub ram_bytes_needed: u64,
    pub cores_needed: Option<f64>,
    pub lines: Vec<Line>,
    /// "yes", "yes, with changes" or "no".
    pub verdict: String,
    /// What stops it or what must change, each with the fix.
    pub stops: Vec<String>,
}

/// This machine's values that matter, possibly after a profile is applied.
struct Machine {
    nofile_hard: u64,
    can_raise_hard: bool,
    nr_open: u64,
    file_max: u64,
    files_open: u64,
    port_range: u64,
    tcp_mem_max_pages: u64,
    ram_available: u64,
    cores: u64,
    sysctls_writable: bool,
}

fn machine(facts: &Facts, profile: Option<&Profile>, env: &Env) -> Machine {
    let mut m = Machine {
        nofile_hard: facts.rlimit_nofile.as_ref().map(|l| l.hard).unwrap_or(1024),
        can_raise_hard: facts.capabilities.cap_sys_resource,
        nr_open: facts.fs_nr_open.unwrap_or(1_048_576),
        file_max: facts.fs_file_max.unwrap_or(0),
        files_open: facts.fs_files_open.unwrap_or(0),
        port_range: facts
            .ip_local_port_range
            .map(|(a, b)| b.saturating_sub(a) + 1)
            .unwrap_or(28_232),
        tcp_mem_max_pages: facts
            .tcp_mem_pages
            .as_ref()
            .and_then(|v| v.get(2).copied())
            .unwrap_or(0),
        ram_available: facts.memory.available_bytes,
        cores: facts.cores_usable,
        sysctls_writable: facts.uid == 0
            && facts.capabilities.cap_sys_admin
            && !facts.proc_sys_read_only,
    };
    let Some(p) = profile else {
        return m;
    };
    // What the profile would leave behind on this machine, given what it may change.
    for (key, row) in p.keys.iter().zip(plan::evaluate(p, env)) {
        if row.status != Status::Off {
            continue;
        }
        let Some(t) = row.target.as_deref() else {
            continue;
        };
        let nums: Vec<u64> = t
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        match (&key.target, nums.as_slice()) {
            (Target::Sysctl { name }, [v]) if m.sysctls_writable && name == "fs.nr_open" => {
                m.nr_open = *v
            }
            (Target::Sysctl { name }, [v]) if m.sysctls_writable && name == "fs.file-max" => {
                m.file_max = *v
            }
            (Target::Sysctl { name }, [a, b])
                if m.sysctls_writable && name == "net.ipv4.ip_local_port_range" =>
            {
                m.port_range = b.saturating_sub(*a) + 1
            }
            (Target::Sysctl { name }, [_, _, max])
                if m.sysctls_writable && name == "net.ipv4.tcp_mem" =>
            {
                m.tcp_mem_max_pages = *max
            }
            (Target::Rlimit { hard: true, .. }, [v]) if m.can_raise_hard => {
                m.nofile_hard = (*v).min(m.nr_open)
            }
            _ => {}
        }
    }
    m
}

pub fn plan(
    req: &Request,
    costs: Costs,
    facts: &Facts,
    profile: Option<&Profile>,
    env: &Env,
) -> Result<Plan, CapacityError> {
    if req.connections == 0 {
        return Err(CapacityError::NoConnections);
    }
    let m = machine(facts, profile, env);
    let n = req.connections;
    let rps = req.rps.or(costs.measured_rps);
    let fds_total = (n as f64 * (1.0 + FD_HEADROOM)).ceil() as u64;

    // One process if its limit can be raised far enough, else as many as the fixed limit needs.
    let per_process_limit = if m.can_raise_hard {
        m.nr_open.max(m.nofile_hard)
    } else {
        m.nofile_hard
    };
    let processes = fds_total.div_ceil(per_process_limit.max(1));
    let fds_per_process = fds_total.div_ceil(processes);
    let fs_nr_open_needed = fds_per_process;
    let client_fds = if req.clients_here { n } else { 0 };
    let fs_file_max_needed = fds_total + client_fds + m.files_open;
    let ports_per_source = MAX_CONNS_PER_SOURCE.min(m.port_range);
    let source_addresses = n.div_ceil(ports_per_source);
    let sockets = n + if req.clients_here { n } else { 0 };
    let page = facts.memory.page_size.max(1);
    // A burst in which every socket holds one page of buffered data at once.
    let tcp_mem_pages_needed = sockets;
    let ram_bytes_needed = (sockets as f64 * costs.kernel_bytes_per_conn.value
        + n as f64 * costs.user_bytes_per_conn.value) as u64;
    let cores_needed = rps.map(|r| r * costs.cpu_us_per_request.value / 1e6);

    let mut lines = Vec::new();
    let mut stops = Vec::new();
    let mut blocked = false;
    let mut line = |item: &str, needed: String, machine: String, status: &str, note: String| {
        lines.push(Line {
            item: item.into(),
            needed,
            machine,
            status: status.into(),
            note,
        })
    };

    line(
        "connections",
        output::count(n),
        String::new(),
        "info",
        if req.clients_here {
            "load generator on this machine too: twice the sockets".into()
        } else {
            "proxy side only".into()
        },
    );
    line(
        "fds total",
        output::count(fds_total),
        String::new(),
        "info",
        format!(
            "one per connection + {:.0}% for upstreams, listeners, epoll",
            FD_HEADROOM * 100.0
        ),
    );
    let nofile_status = if processes > 1 { "change" } else { "ok" };
    line(
        "worker processes",
        processes.to_string(),
        format!(
            "RLIMIT_NOFILE hard {}{}",
            output::count(m.nofile_hard),
            if m.can_raise_hard {
                " (raisable)"
            } else {
                ", fixed"
            }
        ),
        nofile_status,
        format!("{} fds per process", output::count(fds_per_process)),
    );
    if processes > 1 {
        stops.push(format!(
            "RLIMIT_NOFILE hard limit {}{}: run the proxy with processes: {processes} or raise the {} limit",
            m.nofile_hard,
            if m.can_raise_hard { "" } else { " and no CAP_SYS_RESOURCE" },
            if facts.hints.iter().any(|h| h.starts_with("container")) {
                "container's"
            } else {
                "service's (LimitNOFILE)"
            }
        ));
    }
    let ok = m.nr_open >= fs_nr_open_needed;
    line(
        "fs.nr_open",
        format!(">= {}", output::count(fs_nr_open_needed)),
        output::count(m.nr_open),
        if ok {
            "ok"
        } else if m.sysctls_writable {
            "change"
        } else {
            "blocked"
        },
        "ceiling for one process's RLIMIT_NOFILE".into(),
    );
    if !ok {
        if m.sysctls_writable {
            stops.push(format!(
                "fs.nr_open {} < {fs_nr_open_needed}: tuner apply --profile production",
                m.nr_open
            ));
        } else {
            blocked = true;
            stops.push(format!("fs.nr_open {} < {fs_nr_open_needed} and /proc/sys is not writable here: set it on the host", m.nr_open));
        }
    }
    let ok = m.file_max >= fs_file_max_needed;
    line(
        "fs.file-max",
        format!(">= {}", output::count(fs_file_max_needed)),
        output::count(m.file_max),
        if ok {
            "ok"
        } else if m.sysctls_writable {
            "change"
        } else {
            "blocked"
        },
        format!(
            "all processes' fds + {} open now",
            output::count(m.files_open)
        ),
    );
    if !ok {
        if m.sysctls_writable {
            stops.push(format!(
                "fs.file-max {} < {fs_file_max_needed}: tuner apply --profile production",
                m.file_max
            ));
        } else {
            blocked = true;
            stops.push(format!("fs.file-max {} < {fs_file_max_needed} and /proc/sys is not writable here: set it on the host", m.file_max));
        }
    }
    line(
        "source addresses",
        output::count(source_addresses),
        format!("{} ports in range", output::count(m.port_range)),
        if source_addresses > 1 { "change" } else { "ok" },
        format!(
            "at most {} connections per source address per destination",
            output::count(ports_per_source)
        ),
    );
    if source_addresses > 1 {
        stops.push(format!(
            "clients need {source_addresses} source addresses per proxy address:port{}",
            if req.clients_here {
                format!(
                    " (loadgen --source 127.0.0.2-127.0.{}.{})",
                    (source_addresses + 1) / 256,
                    (source_addresses + 1) % 256
                )
            } else {
                " (or listen on more ports/addresses)".into()
            }
        ));
    }
    let ok = m.tcp_mem_max_pages >= tcp_mem_pages_needed;
    line(
        "tcp_mem max",
        format!(
            ">= {} pages ({})",
            output::count(tcp_mem_pages_needed),
            output::bytes(tcp_mem_pages_needed * page)
        ),
        format!(
            "{} pages ({})",
            output::count(m.tcp_mem_max_pages),
            output::bytes(m.tcp_mem_max_pages * page)
        ),
        if ok { "ok" } else { "change" },
        "one page of buffer per socket in a burst; idle sockets hold none".into(),
    );
    if !ok {
        stops.push(format!(
            "tcp_mem max {} pages < {tcp_mem_pages_needed}: a burst on every connection hits memory pressure (production sizes it from RAM)",
            m.tcp_mem_max_pages
        ));
    }
    let ok = m.ram_available >= ram_bytes_needed;
    line(
        "RAM",
        output::bytes(ram_bytes_needed),
        format!("{} available", output::bytes(m.ram_available)),
        if ok { "ok" } else { "blocked" },
        format!(
            "{} sockets x {:.0} B kernel + {} x {:.0} B proxy",
            output::count(sockets),
            costs.kernel_bytes_per_conn.value,
            output::count(n),
            costs.user_bytes_per_conn.value
        ),
    );
    if !ok {
        blocked = true;
        stops.push(format!(
            "RAM: needs {} but {} is available: spread over more machines",
            output::bytes(ram_bytes_needed),
            output::bytes(m.ram_available)
        ));
    }
    match cores_needed {
        Some(c) => {
            let ok = c <= m.cores as f64;
            line(
                "cores",
                format!("{c:.2}"),
                format!("{} usable", m.cores),
                if ok { "ok" } else { "blocked" },
                format!(
                    "{} req/s x {:.1} µs{}",
                    output::count(rps.unwrap_or(0.0) as u64),
                    costs.cpu_us_per_request.value,
                    if costs
                        .cpu_us_per_request
                        .source
                        .starts_with("measured: speedmimi")
                    {
                        " (built-in figure)"
                    } else {
                        ""
                    }
                ),
            );
            if !ok {
                blocked = true;
                stops.push(format!(
                    "cores: {c:.1} needed for the request rate, {} usable here",
                    m.cores
                ));
            }
        }
        None => line(
            "cores",
            "-".into(),
            format!("{} usable", m.cores),
            "info",
            "give --rps R for the CPU a request rate needs".into(),
        ),
    }

    let verdict = if blocked {
        "no"
    } else if stops.is_empty() {
        "yes"
    } else {
        "yes, with changes"
    };
    Ok(Plan {
        connections: n,
        rps,
        clients_here: req.clients_here,
        profile: profile.map(|p| p.name.clone()),
        costs,
        fds_total,
        fds_per_process,
        processes,
        nofile_limit_per_process: per_process_limit,
        fs_nr_open_needed,
        fs_file_max_needed,
        source_addresses,
        ports_per_source,
        sockets,
        tcp_mem_pages_needed,
        ram_bytes_needed,
        cores_needed,
        lines,
        verdict: verdict.into(),
        stops,
    })
}

pub fn render(p: &Plan, style: Style) -> String {
    if style.json {
        return output::json(p);
    }
    let machine_header = match &p.profile {
        Some(name) => format!("this machine (after {name})"),
        None => "this machine".into(),
    };
    let mut t = Table::new(&["item", "needed", &machine_header, "status", "note"]);
    for l in &p.lines {
        let tone = match l.status.as_str() {
            "ok" => Tone::Good,
            "change" => Tone::Warn,
            "blocked" => Tone::Bad,
            _ => Tone::Dim,
        };
        t.row(vec![
            l.item.clone().into(),
            l.needed.clone().into(),
            l.machine.clone().into(),
            cell(l.status.clone(), tone),
            l.note.clone().into(),
        ]);
    }
    let mut out = t.render(style.colour);
    out.push_str("\nper-connection costs:\n");
    let mut c = Table::new(&["cost", "value", "source"]);
    for (name, cost) in [
        ("kernel per socket", &p.costs.kernel_bytes_per_conn),
        (
            "proxy user space per connection",
            &p.costs.user_bytes_per_conn,
        ),
        ("proxy CPU per request", &p.costs.cpu_us_per_request),
    ] {
        c.row(vec![
            name.into(),
            // At most one decimal: interpolated figures are not that precise.
            format!("{} {}", (cost.value * 10.0).round() / 10.0, cost.unit).into(),
            cost.source.clone().into(),
        ]);
    }
    out.push_str(&c.render(style.colour));
    let tone = match p.verdict.as_str() {
        "yes" => Tone::Good,
        "no" => Tone::Bad,
        _ => Tone::Warn,
    };
    out.push_str(&format!(
        "\ncan this machine hold {} connections: {}\n",
        output::count(p.connections),
        style.paint(&p.verdict, tone)
    ));
    for s in &p.stops {
        out.push_str(&format!("  - {s}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_reader_is_tolerant() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.json");
        std::fs::write(
            &f,
            r#"{"tool":"loadgen","summary":{"rps":"12000.5","extra":[1,2]},
               "proxy":{"cpu_seconds":3.0,"requests":100000,"rss_bytes_per_conn":180}}"#,
        )
        .unwrap();
        let c = read_results(&f, 1000).unwrap();
        assert_eq!(c.measured_rps, Some(12000.5));
        assert!((c.cpu_us_per_request.value - 30.0).abs() < 1e-9);
        assert_eq!(c.user_bytes_per_conn.value, 180.0);
        assert_eq!(c.kernel_bytes_per_conn.value, KERNEL_BYTES_PER_CONN);
    }

    #[test]
    fn built_in_cpu_follows_the_measured_points() {
        assert_eq!(measured_cpu_us(1), 12.6);
        assert_eq!(measured_cpu_us(100), 12.6);
        assert!((measured_cpu_us(5_000) - 17.1).abs() < 1e-9);
        assert_eq!(measured_cpu_us(10_000), 18.8);
        assert_eq!(measured_cpu_us(1_000_000), 18.8);
        let mid = measured_cpu_us(1_000);
        assert!(mid > 12.6 && mid < 17.1, "{mid}");
        assert!(measured_cpu_us(7_000) > 17.1 && measured_cpu_us(7_000) < 18.8);
    }
}
