//! Runs one step against one target as a `loadgen run --json --csv`
//! subprocess (which shards itself past the file limit), then joins its
//! per-second rows with the sampler's proxy/backend/socket figures into a
//! results.json step and intervals.csv rows.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use reports::model::{
    Errors, Interval, KernelMemory, Latency, Mode, ProcessUsage, Step, TlsFigures,
};

use super::procs::Job;
use super::sample::{clock_ticks, Sample, Sampler};
use super::scenario::{LoadDefaults, StepMode, StepSpec};
use super::targets::Started;
use super::BenchError;
use crate::report::Summary;

/// One finished step: the results.json entry, its interval rows, and any check that failed.
pub struct StepOutcome {
    pub step: Step,
    /// Growth of the kernel's unreclaimable slab from the step's start to its peak, bytes.
    pub slab_grown: u64,
    /// Proxy RSS (all its processes) when the step started: the idle baseline.
    pub proxy_rss_start: u64,
    pub intervals: Vec<Interval>,
    pub failures: Vec<String>,
}

/// The `loadgen run` arguments for a step (`target` is the instance the step
/// runs against: its TLS listener for a `tls` step).
fn args(spec: &StepSpec, defaults: &LoadDefaults, target: &Started, csv: &Path) -> Vec<String> {
    let url = match &target.tls {
        Some(_) => format!("https://{}/", target.addr),
        None => format!("http://{}/", target.addr),
    };
    let mut a: Vec<String> = vec![
        "run".into(),
        url,
        "-c".into(),
        spec.connections.to_string(),
        "-t".into(),
        spec.threads.or(defaults.threads).unwrap_or(1).to_string(),
        "-d".into(),
        format!("{}ms", spec.duration.as_millis()),
        "--json".into(),
        "-q".into(),
        "--csv".into(),
        csv.display().to_string(),
    ];
    match spec.mode {
        StepMode::Closed => {}
        StepMode::Open => {
            a.push("-R".into());
            a.push(spec.rate.unwrap_or(1.0).to_string());
        }
        StepMode::Hold => {
            a.push("--hold".into());
            a.push("--interval".into());
            let iv = spec.interval.unwrap_or_default();
            a.push(format!("{}ms", iv.as_millis()));
        }
    }
    if let Some(r) = spec.connect_rate.or(defaults.connect_rate) {
        a.push("--connect-rate".into());
        a.push(r.to_string());
    }
    let sources = if spec.sources.is_empty() {
        &defaults.sources
    } else {
        &spec.sources
    };
    for s in sources {
        a.push("--source".into());
        a.push(s.clone());
    }
    if let Some(t) = spec.timeout.or(defaults.timeout) {
        a.push("--timeout".into());
        a.push(format!("{}ms", t.as_millis()));
    }
    if let Some(tls) = &target.tls {
        // The bench's own CA, and the name on the certificate: the handshake is
        // checked as a real client's would be.
        a.push("--cacert".into());
        a.push(tls.ca.display().to_string());
        a.push("--sni".into());
        a.push(tls.server_name.clone());
        if spec.tls_resume {
            a.push("--tls-resume".into());
        }
        if !spec.tls_kx.is_empty() {
            a.push("--tls-kx".into());
            a.push(spec.tls_kx.join(","));
        }
    }
    if spec.new_conn_per_request {
        a.push("--new-conn-per-request".into());
    }
    if !spec.thresholds.is_empty() {
        a.push("--threshold".into());
        a.extend(spec.thresholds.iter().cloned());
    }
    a
}

fn usage_between(
    start: &Sample,
    end: &Sample,
    window: &[Sample],
    requests: u64,
    backend: bool,
) -> ProcessUsage {
    let pick = |s: &Sample| if backend { s.backend } else { s.proxy };
    let cpu_seconds = pick(end).ticks.saturating_sub(pick(start).ticks) as f64 / clock_ticks();
    let rss_peak = window
        .iter()
        .chain([start, end])
        .map(|s| pick(s).rss_bytes)
        .max()
        .unwrap_or(0);
    ProcessUsage {
        cpu_seconds,
        cpu_us_per_request: if requests > 0 {
            cpu_seconds * 1e6 / requests as f64
        } else {
            0.0
        },
        rss_peak_bytes: rss_peak,
        rss_start_bytes: Some(pick(start).rss_bytes),
        rss_end_bytes: pick(end).rss_bytes,
    }
}

/// The load generator's usage: sampled only while it runs (it is spawned after the
/// step's first sample and gone by its last), so the peak RSS is exact to the
/// second and the CPU is what the last sample saw, up to a second short.
fn client_usage(window: &[Sample], requests: u64) -> Option<ProcessUsage> {
    let last = window.iter().rev().find(|s| s.client.rss_bytes > 0)?;
    let cpu_seconds = last.client.ticks as f64 / clock_ticks();
    Some(ProcessUsage {
        cpu_seconds,
        cpu_us_per_request: if requests > 0 {
            cpu_seconds * 1e6 / requests as f64
        } else {
            0.0
        },
        rss_peak_bytes: window.iter().map(|s| s.client.rss_bytes).max().unwrap_or(0),
        rss_start_bytes: None,
        rss_end_bytes: last.client.rss_bytes,
    })
}

fn latency(l: &crate::report::Latency) -> Latency {
    Latency {
        p50: l.p50 as f64,
        p75: l.p75 as f64,
        p90: l.p90 as f64,
        p99: l.p99 as f64,
        p999: l.p999 as f64,
        max: l.max as f64,
    }
}

/// Identifies a step in the results.
pub struct StepKey<'a> {
    pub target: &'a Started,
    pub round: u32,
    pub index: u32,
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    key: StepKey<'_>,
    spec: &StepSpec,
    defaults: &LoadDefaults,
    loadgen: &Path,
    dir: &Path,
    sampler: &Sampler,
) -> Result<StepOutcome, BenchError> {
    let tag = format!("{}-r{}-s{}", key.target.name, key.round, key.index);
    let csv_path = dir.join("steps").join(format!("{tag}.csv"));
    let err_path = dir.join("steps").join(format!("{tag}.err"));
    let argv = args(spec, defaults, key.target, &csv_path);
    let err = std::fs::File::create(&err_path)
        .map_err(|e| BenchError::Step(format!("cannot create {}: {e}", err_path.display())))?;

    sampler.set_proxy(vec![key.target.pid]);
    let start = sampler.now();
    let t0 = Instant::now();
    let mut cmd = Command::new(loadgen);
    cmd.args(&argv).stdout(Stdio::piped()).stderr(err);
    let job = Job::spawn(&mut cmd)?;
    sampler.set_client(vec![job.pid()]);
    let (code, out) = job.wait_output()?;
    sampler.set_client(Vec::new());
    let end = sampler.now();
    let t1 = Instant::now();
    let summary: Summary = serde_json::from_str(&out).map_err(|e| {
        BenchError::Step(format!(
            "{tag}: `loadgen {}` exited with {code:?} and no JSON summary ({e}); see {}",
            argv.join(" "),
            err_path.display()
        ))
    })?;
    std::fs::write(dir.join("steps").join(format!("{tag}.json")), &out)
        .map_err(|e| BenchError::Step(format!("cannot save {tag}.json: {e}")))?;

    let window = sampler.between(t0, t1);
    let proxy = usage_between(&start, &end, &window, summary.requests, false);
    let backend = usage_between(&start, &end, &window, summary.requests, true);
    let client = client_usage(&window, summary.requests);
    let slab_grown = window
        .iter()
        .chain([&end])
        .map(|s| s.slab)
        .max()
        .unwrap_or(0)
        .saturating_sub(start.slab);
    let kernel = KernelMemory {
        sock_mem_bytes_start: start.sock_mem,
        sock_mem_bytes_peak: window
            .iter()
            .chain([&start, &end])
            .map(|s| s.sock_mem)
            .max()
            .unwrap_or(0),
        sock_mem_bytes_end: end.sock_mem,
        // SUnreclaim reads 0 only when /proc/meminfo could not be read: not measured.
        slab_unreclaim_grown_bytes: (start.slab > 0).then_some(slab_grown),
    };
    let e = &summary.errors.by_kind;
    let lat = &summary.latency_us;
    let mode = match spec.mode {
        StepMode::Closed => Mode::Closed,
        StepMode::Open => Mode::Open,
        StepMode::Hold => Mode::Hold,
    };
    let rate = match spec.mode {
        StepMode::Closed => None,
        StepMode::Open => spec.rate,
        StepMode::Hold => spec.connect_rate.or(defaults.connect_rate),
    };
    let step = Step {
        target: key.target.name.clone(),
        round: key.round,
        step: key.index,
        connections: spec.connections,
        peak_open: summary.connections.peak_open,
        mode,
        rate,
        duration_s: summary.duration_s,
        requests: summary.requests,
        rps: summary.rps,
        latency_us: latency(lat),
        errors: Errors {
            connect: e.connect,
            read: e.read,
            write: e.write,
            timeout: e.timeout,
            status_4xx: e.status_4xx,
            status_5xx: e.status_5xx,
        },
        proxy,
        backend: Some(backend),
        client,
        kernel,
        new_conn_per_request: spec.new_conn_per_request,
        tls: summary.tls.as_ref().map(|t| TlsFigures {
            handshakes: t.handshakes,
            full: t.full,
            resumed: t.resumed,
            handshakes_per_s: t.handshakes_per_s,
            failed: t.failed,
            resumption_offered: t.resumption_offered,
            version: t.version.clone(),
            cipher_suite: t.cipher_suite.clone(),
            kx_group: t.kx_group.clone(),
            handshake_latency_us: latency(&t.handshake_latency_us),
        }),
    };
    let mut step = step;
    // Malformed responses have no column of their own in v1: count them as read errors.
    step.errors.read += e.parse;
    // Nor failed TLS handshakes: they are failed connects.
    step.errors.connect += e.tls();

    let intervals = intervals(&csv_path, &key, t0, &start, &window)?;
    let mut failures = Vec::new();
    for t in summary.thresholds.iter().filter(|t| !t.ok) {
        failures.push(format!(
            "{tag}: threshold {} failed (value {})",
            t.expr, t.value
        ));
    }
    if code != Some(0) && code != Some(3) {
        failures.push(format!(
            "{tag}: loadgen run exited with {code:?}; see {}",
            err_path.display()
        ));
    }
    if spec.require_all_served
        && (summary.connections.peak_open < spec.connections || summary.requests < spec.connections)
    {
        failures.push(format!(
            "{tag}: asked {} connections each served: peak open {}, requests {}",
            spec.connections, summary.connections.peak_open, summary.requests
        ));
    }
    Ok(StepOutcome {
        step,
        slab_grown,
        proxy_rss_start: start.proxy.rss_bytes,
        intervals,
        failures,
    })
}

/// Joins loadgen's per-second CSV with the sampler's figures (the sample nearest
/// the end of each second; CPU % from the sample before it).
fn intervals(
    csv_path: &Path,
    key: &StepKey<'_>,
    t0: Instant,
    start: &Sample,
    window: &[Sample],
) -> Result<Vec<Interval>, BenchError> {
    let mut rdr = match csv::Reader::from_path(csv_path) {
        Ok(r) => r,
        Err(_) => return Ok(Vec::new()),
    };
    let headers = rdr
        .headers()
        .map_err(|e| BenchError::Step(format!("{}: {e}", csv_path.display())))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (ct, crps, c50, c99, copen, cerr) = (
        col("time_s"),
        col("rps"),
        col("p50_us"),
        col("p99_us"),
        col("open_conns"),
        col("errors"),
    );
    let mut all: Vec<Sample> = vec![*start];
    all.extend_from_slice(window);
    let mut rows = Vec::new();
    for rec in rdr.records().flatten() {
        let get = |c: Option<usize>| -> f64 {
            c.and_then(|i| rec.get(i))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let t_s = get(ct);
        let at = t0 + std::time::Duration::from_secs_f64(t_s.max(0.0));
        // Nearest sample to the end of this second, and the one before it.
        let i = all
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| if s.at > at { s.at - at } else { at - s.at })
            .map_or(0, |(i, _)| i);
        let s = all[i];
        let cpu = if i > 0 {
            let p = all[i - 1];
            let dt = s.at.duration_since(p.at).as_secs_f64().max(1e-3);
            100.0 * s.proxy.ticks.saturating_sub(p.proxy.ticks) as f64 / clock_ticks() / dt
        } else {
            0.0
        };
        rows.push(Interval {
            target: key.target.name.clone(),
            round: key.round,
            step: key.index,
            t_s,
            rps: get(crps),
            p50_us: get(c50),
            p99_us: get(c99),
            open_connections: get(copen) as u64,
            errors: get(cerr) as u64,
            proxy_cpu_percent: cpu,
            proxy_rss_bytes: s.proxy.rss_bytes,
            sock_mem_bytes: s.sock_mem,
        });
    }
    Ok(rows)
}
