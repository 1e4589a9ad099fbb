//! `loadgen bench --scenario FILE [--out DIR]` and `loadgen report DIR`: start
//! what a scenario names, run its steps (interleaved over targets and rounds),
//! sample the proxy, backends and kernel each second, write DIR/results.json
//! (`speedmimi.bench/v1`), DIR/intervals.csv and DIR/env.json, and render the
//! report with the `reports` library. docs/bench.md is the user guide.

pub mod env;
pub mod netns;
pub mod procs;
pub mod sample;
pub mod scenario;
pub mod steps;
pub mod targets;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use reports::model::{BenchRun, RunData, TargetInfo};

use procs::Children;
use sample::Sampler;
use scenario::{Scenario, TargetKind};

/// Exit codes: 0 ok, 1 the run failed, 2 bad scenario, 3 a check failed (report still written).
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CHECK: u8 = 3;

#[derive(Debug)]
pub enum BenchError {
    /// The scenario file is missing or wrong.
    Scenario(String),
    /// Something the scenario names did not start.
    Start(String),
    /// The network namespace could not be set up.
    Netns(String),
    /// A step did not produce figures.
    Step(String),
    /// results.json, env.json or the report could not be written.
    Output(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Scenario(m) => write!(f, "scenario: {m}"),
            BenchError::Start(m) => write!(f, "start: {m}"),
            BenchError::Netns(m) => write!(f, "network namespace: {m}"),
            BenchError::Step(m) => write!(f, "step: {m}"),
            BenchError::Output(m) => write!(f, "output: {m}"),
        }
    }
}

impl BenchError {
    fn exit_code(&self) -> u8 {
        match self {
            BenchError::Scenario(_) => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

/// `loadgen report DIR`: re-render a run directory; prints report.html's path.
pub fn report(dir: &Path) -> u8 {
    match reports::render(dir) {
        Ok(p) => {
            println!("{}", p.html.display());
            0
        }
        Err(e) => {
            eprintln!("loadgen report: {e}");
            EXIT_FAILED
        }
    }
}

/// `loadgen bench`; returns the exit code.
pub fn bench(scenario: &Path, out: Option<PathBuf>) -> u8 {
    match bench_inner(scenario, out) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen bench: {e}");
            e.exit_code()
        }
    }
}

fn utc_stamp(t: SystemTime) -> (String, String) {
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    let compact: String = rfc.chars().filter(|c| *c != '-' && *c != ':').collect();
    (rfc, compact)
}

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn tuner_check(bin: &Path, profile: &str) {
    println!("tuner check --profile {profile} (informational; the run goes on):");
    match Command::new(bin.join("tuner"))
        .args(["check", "--profile", profile])
        .output()
    {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let off: Vec<&str> = text.lines().filter(|l| l.contains(" off")).collect();
            if off.is_empty() {
                println!("  every key ok or skipped");
            } else {
                for l in text.lines().take(1).chain(off) {
                    println!("  {l}");
                }
            }
        }
        Err(e) => println!("  cannot run tuner: {e}"),
    }
}

fn bench_inner(scenario_path: &Path, out: Option<PathBuf>) -> Result<u8, BenchError> {
    let sc = Scenario::load(scenario_path)?;
    let bin = bin_dir();
    let scenario_dir = scenario_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let peers_dir = scenario_dir.join("../ci/peers");
    let started = SystemTime::now();
    let (rfc, compact) = utc_stamp(started);
    let dir = out.unwrap_or_else(|| PathBuf::from(format!("results/{}-{compact}", sc.name)));
    std::fs::create_dir_all(dir.join("steps"))
        .map_err(|e| BenchError::Output(format!("cannot create {}: {e}", dir.display())))?;
    // Absolute, so peers started with another working directory (nginx -p) find their files.
    let dir = dir
        .canonicalize()
        .map_err(|e| BenchError::Output(format!("cannot resolve {}: {e}", dir.display())))?;

    if let Some(p) = &sc.tuner_check {
        tuner_check(&bin, p);
    }
    // Before any thread exists: the namespace applies to this thread and its children only.
    if sc.netns {
        netns::enter(&sc.sysctls)?;
        println!(
            "running in a fresh network namespace ({} sysctls set)",
            sc.sysctls.len()
        );
    }
    procs::install_signal_handler();

    let peers: Vec<&str> = sc
        .targets
        .iter()
        .filter(|t| t.kind != TargetKind::Speedmimi)
        .map(|t| t.kind.as_str())
        .collect();
    let env = env::collect(&bin, &peers);
    write_json(&dir.join("env.json"), &env)?;

    let mut children = Children::default();
    let sampler = Sampler::start();
    let backends = targets::start_backends(&sc.backends, &bin, &peers_dir, &dir, &mut children)?;
    sampler.set_backends(backends.iter().map(|b| b.pid).collect());
    // A speedmimi process has one listener, so a target with plaintext and
    // HTTPS steps runs as two instances of the same config, one of them TLS.
    let (plain, https) = sc.schemes();
    let pki = match https {
        true => Some(targets::make_pki(&dir)?),
        false => None,
    };
    let mut started_targets: Vec<Instances> = Vec::new();
    for t in &sc.targets {
        let mut inst = Instances::default();
        for tls in [None, pki.as_ref()] {
            if (tls.is_none() && !plain) || (tls.is_some() && !https) {
                continue;
            }
            let s = targets::start_target(
                t,
                &scenario_dir,
                &peers_dir,
                &bin,
                &backends,
                &dir,
                &mut children,
                tls,
            )?;
            println!(
                "{} ({}, {}) listening on {} (pid {})",
                s.name,
                t.kind.as_str(),
                if tls.is_some() { "https" } else { "http" },
                s.addr,
                s.pid
            );
            match tls {
                Some(_) => inst.tls = Some(s),
                None => inst.plain = Some(s),
            }
        }
        started_targets.push(inst);
    }
    let backend_list: Vec<&str> = backends.iter().map(|b| b.addr.as_str()).collect();
    println!("backends: {}", backend_list.join(", "));

    let mut run = BenchRun {
        schema: reports::SCHEMA.to_string(),
        scenario: sc.name.clone(),
        started_at: Some(rfc),
        note: sc.note.clone(),
        env,
        targets: sc
            .targets
            .iter()
            .map(|t| TargetInfo {
                name: t.name.clone(),
                kind: t.kind.as_str().to_string(),
                version: run_version(t.kind, &bin),
            })
            .collect(),
        steps: Vec::new(),
    };
    let mut intervals = Vec::new();
    let mut failures = Vec::new();
    let mut kernel_rows: Vec<serde_json::Value> = Vec::new();
    print_header();
    let loadgen = bin.join("loadgen");
    for round in 0..sc.rounds {
        for (index, spec) in sc.steps.iter().enumerate() {
            for inst in &started_targets {
                children.check_alive()?;
                let target = match spec.tls {
                    true => inst.tls.as_ref(),
                    false => inst.plain.as_ref(),
                }
                .expect("an instance for every scheme a step uses");
                let key = steps::StepKey {
                    target,
                    round,
                    index: index as u32,
                };
                let o = steps::run(key, spec, &sc.loadgen, &loadgen, &dir, &sampler)?;
                print_row(&o.step, o.slab_grown);
                kernel_rows.push(serde_json::json!({
                    "target": o.step.target, "round": o.step.round, "step": o.step.step,
                    "peak_open": o.step.peak_open,
                    "slab_unreclaim_grown_bytes": o.slab_grown,
                    "proxy_rss_bytes_per_open_connection":
                        o.step.proxy.rss_peak_bytes as f64 / o.step.peak_open.max(1) as f64,
                    "proxy_rss_start_bytes": o.proxy_rss_start,
                    "tls": spec.tls,
                    "loadgen_rss_peak_bytes": o.step.client.map(|c| c.rss_peak_bytes),
                    "proxy_rss_grown_bytes_per_open_connection":
                        o.step.proxy.rss_peak_bytes.saturating_sub(o.proxy_rss_start) as f64
                            / o.step.peak_open.max(1) as f64,
                    "slab_bytes_per_open_connection":
                        o.slab_grown as f64 / o.step.peak_open.max(1) as f64,
                }));
                write_json(&dir.join("kernel.json"), &kernel_rows)?;
                for f in &o.failures {
                    eprintln!("  CHECK FAILED: {f}");
                }
                failures.extend(o.failures);
                run.steps.push(o.step);
                intervals.extend(o.intervals);
                // Write as we go: an interrupted run keeps its finished steps.
                reports::save_dir(
                    &dir,
                    &RunData {
                        run: run.clone(),
                        intervals: intervals.clone(),
                    },
                )
                .map_err(|e| BenchError::Output(e.to_string()))?;
                std::thread::sleep(sc.settle);
            }
        }
    }
    drop(sampler);
    children.stop_all();
    let rendered = reports::render(&dir).map_err(|e| BenchError::Output(e.to_string()))?;
    if !failures.is_empty() {
        eprintln!("loadgen bench: {} check(s) failed:", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
    }
    println!("{}", rendered.html.display());
    Ok(if failures.is_empty() { 0 } else { EXIT_CHECK })
}

/// One target's running instances: plaintext and TLS listeners, each started
/// only when some step uses it.
#[derive(Default)]
struct Instances {
    plain: Option<targets::Started>,
    tls: Option<targets::Started>,
}

fn run_version(kind: TargetKind, bin: &Path) -> Option<String> {
    let (cmd, arg) = match kind {
        TargetKind::Speedmimi => (bin.join("speedmimi"), "--version"),
        TargetKind::Nginx => (PathBuf::from("nginx"), "-v"),
        TargetKind::Haproxy => (PathBuf::from("haproxy"), "-v"),
    };
    let o = Command::new(cmd).arg(arg).output().ok()?;
    let text = if o.stdout.is_empty() {
        o.stderr
    } else {
        o.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(v).expect("serializes");
    std::fs::write(path, text + "\n")
        .map_err(|e| BenchError::Output(format!("cannot write {}: {e}", path.display())))
}

fn print_header() {
    println!(
        "{:<18} {:>5} {:>4} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>8} {:>12} {:>11} {:>10} {:>11} {:>11} {:>12} {:>8}",
        "target",
        "round",
        "step",
        "conns",
        "peak",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "CPU us/req",
        "proxy RSS",
        "RSS B/conn",
        "sock mem",
        "slab grown",
        "loadgen RSS",
        "secs"
    );
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn print_row(s: &reports::Step, slab_grown: u64) {
    println!(
        "{:<18} {:>5} {:>4} {:>9} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>12.1} {:>11} {:>10.0} {:>11} {:>11} {:>12} {:>8.1}",
        format!("{} {}", s.target, s.scheme()),
        s.round,
        s.step,
        s.connections,
        s.peak_open,
        s.rps,
        s.latency_us.p50 / 1e3,
        s.latency_us.p99 / 1e3,
        s.latency_us.p999 / 1e3,
        s.errors.total(),
        s.proxy.cpu_us_per_request,
        mb(s.proxy.rss_peak_bytes),
        s.proxy.rss_peak_bytes as f64 / s.peak_open.max(1) as f64,
        mb(s.kernel.sock_mem_bytes_peak),
        mb(slab_grown),
        s.client.map_or_else(|| "-".into(), |c| mb(c.rss_peak_bytes)),
        s.duration_s
    );
}
