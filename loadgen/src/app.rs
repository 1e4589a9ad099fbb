//! The `run` and `merge` commands end to end: validate the options, decide
//! on shards, run, print the summary (text or JSON) and thresholds, and
//! choose the exit code (0 ok, 1 failure, 2 usage, 3 threshold failed).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::engine::{EngineConfig, Mode};
use crate::hdrlog::HdrLogWriter;
use crate::procstat::Sampler;
use crate::progress::Progress;
use crate::report::{Meta, Summary};
use crate::session::{self, Placement};
use crate::shard::ShardOut;
use crate::threshold::Threshold;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_THRESHOLD: u8 = 3;

/// File descriptors kept free in each process besides connections.
const FD_RESERVE: u64 = 256;
/// Above this many connections per source address toward one target the
/// kernel's port search slows down; warn.
const PORTS_PER_SOURCE_WARN: u64 = 20_000;

/// `loadgen run`'s options, as the command line gives them.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub url: String,
    pub conns: u64,
    pub threads: usize,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub rate: Option<f64>,
    pub hold: bool,
    pub interval: Duration,
    pub connect_rate: Option<f64>,
    pub sources: Vec<String>,
    pub headers: Vec<String>,
    pub method: String,
    pub body: Option<PathBuf>,
    pub timeout: Duration,
    pub json: bool,
    pub csv: Option<PathBuf>,
    pub hdr_log: Option<PathBuf>,
    pub thresholds: Vec<String>,
    pub watch_pids: Vec<u32>,
    pub quiet: bool,
    /// https:// targets: SNI, trust, version, resumption.
    pub tls: crate::tls::TlsOptions,
    /// A new connection (and, over TLS, a new handshake) for every request.
    pub new_conn_per_request: bool,
    /// Set in shard processes: (index, count).
    pub shard: Option<(u64, u64)>,
    pub shard_start_unix_ns: Option<u128>,
    /// The arguments after the program name, to start shards with.
    pub argv: Vec<String>,
}

/// Why a run could not start. `Usage` errors exit with 2.
#[derive(Debug)]
pub enum AppError {
    Usage(String),
    Failed(String),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Usage(m) | AppError::Failed(m) => f.write_str(m),
        }
    }
}

impl AppError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Usage(_) => EXIT_USAGE,
            AppError::Failed(_) => EXIT_FAILURE,
        }
    }
}

fn usage(e: impl fmt::Display) -> AppError {
    AppError::Usage(e.to_string())
}

fn failed(e: impl fmt::Display) -> AppError {
    AppError::Failed(e.to_string())
}

struct Prepared {
    cfg: EngineConfig,
    thresholds: Vec<Threshold>,
    meta: Meta,
}

fn prepare(spec: &RunSpec) -> Result<Prepared, AppError> {
    let thresholds = spec
        .thresholds
        .iter()
        .map(|t| Threshold::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    let mut pool: Vec<IpAddr> = Vec::new();
    for s in &spec.sources {
        crate::source::parse_into(s, &mut pool).map_err(usage)?;
    }
    if spec.conns == 0 {
        return Err(usage("-c must be at least 1"));
    }
    if spec.hold && spec.rate.is_some() {
        return Err(usage(
            "--hold paces requests by --interval; drop -R (or drop --hold for an open loop)",
        ));
    }
    if [spec.rate, spec.connect_rate]
        .iter()
        .flatten()
        .any(|r| r.is_nan() || *r <= 0.0)
    {
        return Err(usage("-R and --connect-rate must be positive"));
    }
    if spec.hold && spec.interval.is_zero() {
        return Err(usage("--interval must be positive"));
    }
    let mode = match (spec.hold, spec.rate) {
        (true, _) => Mode::Hold {
            interval: spec.interval,
        },
        (false, Some(rate)) => Mode::Open { rate },
        (false, None) => Mode::Closed,
    };
    let target = crate::target::Target::parse(&spec.url).map_err(usage)?;
    if pool.iter().any(|ip| ip.is_ipv4() != target.addr.is_ipv4()) {
        return Err(usage(format!(
            "--source addresses must be of the same family as the target {}",
            target.addr
        )));
    }
    let body = match &spec.body {
        Some(p) => std::fs::read(p)
            .map_err(|e| usage(format!("cannot read --body {}: {e}", p.display())))?,
        None => Vec::new(),
    };
    let method = spec.method.to_ascii_uppercase();
    let mut headers = spec.headers.clone();
    let names_connection = headers.iter().any(|h| {
        h.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("connection"))
    });
    if spec.new_conn_per_request && !names_connection {
        // The server closes first, so TIME_WAIT stays on its side rather
        // than using up this host's ports at thousands of connections a second.
        headers.push("Connection: close".to_string());
    }
    let request = crate::target::build_request(&target, &method, &headers, &body).map_err(usage)?;
    let tls_asked = spec.tls.sni.is_some()
        || spec.tls.cacert.is_some()
        || spec.tls.insecure
        || spec.tls.version.is_some()
        || spec.tls.resume
        || !spec.tls.kx.is_empty();
    if tls_asked && !target.tls {
        return Err(usage(
            "--sni, --cacert, --insecure, --tls-version, --tls-resume and --tls-kx need an https:// URL",
        ));
    }
    let tls = match target.tls {
        true => Some(crate::tls::setup(&target.host, &spec.tls).map_err(usage)?),
        false => None,
    };
    let rate = match mode {
        Mode::Open { rate } => Some(rate),
        Mode::Hold { interval } => Some(spec.conns as f64 / interval.as_secs_f64()),
        Mode::Closed => None,
    };
    let meta = Meta {
        url: spec.url.clone(),
        mode: mode.name().to_string(),
        threads: spec.threads as u64,
        shards: 1,
        conns: spec.conns,
        rate,
        tls: tls.as_ref().map(|_| crate::report::TlsMeta {
            server_name: spec.tls.sni.clone().unwrap_or_else(|| target.host.clone()),
            insecure: spec.tls.insecure,
            resume: spec.tls.resume,
        }),
    };
    Ok(Prepared {
        cfg: EngineConfig {
            target: target.addr,
            request: request.into(),
            head_method: method == "HEAD",
            conns: spec.conns,
            threads: spec.threads.max(1),
            mode,
            connect_rate: spec.connect_rate,
            requests: spec.requests,
            timeout: spec.timeout,
            sources: pool.into(),
            tls,
            new_conn_per_request: spec.new_conn_per_request,
        },
        thresholds,
        meta,
    })
}

/// `loadgen run`; returns the exit code.
pub fn run(spec: RunSpec) -> u8 {
    match run_inner(spec) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            e.exit_code()
        }
    }
}

fn run_inner(spec: RunSpec) -> Result<u8, AppError> {
    let Prepared {
        mut cfg,
        thresholds,
        mut meta,
    } = prepare(&spec)?;
    let nofile = crate::sys::raise_nofile_limit().unwrap_or(1024);

    if let Some((index, count)) = spec.shard {
        return run_shard(&cfg, &spec, index, count);
    }

    // Ctrl-C stops the run; the summary is still printed.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_sigint = stop.clone();
    let _ = ctrlc::set_handler(move || {
        stop_on_sigint.store(true, std::sync::atomic::Ordering::Relaxed)
    });

    // The environment override exists so tests can exercise sharding
    // without opening 20,000 sockets.
    let per_process = std::env::var("LOADGEN_MAX_CONNS_PER_PROCESS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| nofile.saturating_sub(FD_RESERVE))
        .max(1);
    let shards = spec.conns.div_ceil(per_process);
    let placement = if shards > 1 {
        cfg.threads = cfg.threads.div_ceil(shards as usize);
        Placement::Shards {
            count: shards as usize,
            args: shard_args(&spec.argv, cfg.threads),
        }
    } else {
        Placement::Local {
            index: 0,
            count: 1,
            start: Instant::now(),
        }
    };
    meta.shards = shards;
    meta.threads = cfg.threads as u64 * shards;
    let per_source = spec.conns / cfg.sources.len().max(1) as u64;
    if per_source > PORTS_PER_SOURCE_WARN {
        eprintln!(
            "loadgen: warning: {per_source} connections per source address toward one target; \
             the kernel's port search slows down above ~20000: add --source (e.g. 127.0.0.2-127.0.0.250)"
        );
    }
    if !spec.json && !spec.quiet {
        let what = match (spec.duration, spec.requests) {
            (_, Some(n)) => format!("{n} requests"),
            (Some(d), None) => format!("{}", humantime::format_duration(d)),
            (None, None) => "until Ctrl-C".to_string(),
        };
        out(&format!("Running {what} test @ {}\n", spec.url));
    }

    let mut csv = match &spec.csv {
        Some(p) => Some(CsvSink::create(p, &spec.watch_pids, cfg.tls.is_some())?),
        None => None,
    };
    let mut hdr = match &spec.hdr_log {
        Some(p) => Some(HdrLogWriter::create(p, &meta, SystemTime::now()).map_err(failed)?),
        None => None,
    };
    let mut progress = Progress::new(spec.quiet, spec.duration, spec.requests);
    let by_requests = spec.requests.is_some();
    let mut sink_error: Option<String> = None;
    let outcome = session::run(&cfg, &placement, spec.duration, &stop, &mut |iv| {
        progress.interval(iv, by_requests);
        let sliver = iv.duration < Duration::from_millis(100) && iv.counters.requests == 0;
        if let Some(c) = csv.as_mut().filter(|_| !sliver) {
            if let Err(e) = c.write(iv) {
                sink_error.get_or_insert(e);
            }
        }
        if let Some(h) = &mut hdr {
            if let Err(e) = h.write(iv) {
                sink_error.get_or_insert(e.to_string());
            }
        }
        true
    })
    .map_err(|e| failed(format!("cannot start the run: {e}")))?;
    progress.finish();

    let mut summary = Summary::new(&meta, &outcome.hist, &outcome.counters, outcome.elapsed)
        .with_tls(&meta, &outcome.handshake, &outcome.counters);
    summary.thresholds = thresholds.iter().map(|t| t.check(&summary)).collect();
    if spec.json {
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        ));
    } else {
        out(&crate::report::text(&summary));
        if !thresholds.is_empty() {
            out(&crate::threshold::table(&thresholds, &summary.thresholds));
        }
    }
    for e in outcome.errors.iter().chain(sink_error.iter()) {
        eprintln!("loadgen: {e}");
    }
    if summary.thresholds.iter().any(|t| !t.ok) {
        return Ok(EXIT_THRESHOLD);
    }
    if !outcome.errors.is_empty() || sink_error.is_some() {
        return Ok(EXIT_FAILURE);
    }
    Ok(0)
}

/// The parent's arguments for its shards, with -t replaced by the per-shard count.
fn shard_args(argv: &[String], threads: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in argv {
        if skip {
            skip = false;
            continue;
        }
        if a == "-t" || a == "--threads" {
            skip = true;
            continue;
        }
        if a.starts_with("--threads=")
            || (a.starts_with("-t") && a.len() > 2 && !a.starts_with("--"))
        {
            continue;
        }
        out.push(a.clone());
    }
    out.push("--threads".to_string());
    out.push(threads.to_string());
    out
}

fn run_shard(cfg: &EngineConfig, spec: &RunSpec, index: u64, count: u64) -> Result<u8, AppError> {
    let now_sys = SystemTime::now();
    let now = Instant::now();
    let start = match spec.shard_start_unix_ns {
        Some(ns) => {
            let at = UNIX_EPOCH + Duration::from_nanos(ns as u64);
            match at.duration_since(now_sys) {
                Ok(ahead) => now + ahead,
                Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
            }
        }
        None => now,
    };
    let placement = Placement::Local {
        index,
        count,
        start,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_sigint = stop.clone();
    let _ = ctrlc::set_handler(move || {
        stop_on_sigint.store(true, std::sync::atomic::Ordering::Relaxed)
    });
    let mut out = ShardOut::default();
    let outcome = session::run(cfg, &placement, spec.duration, &stop, &mut |iv| {
        out.interval(iv).is_ok()
    })
    .map_err(|e| failed(format!("shard {index}: cannot start: {e}")))?;
    let _ = out.done(outcome.elapsed, &outcome.errors);
    Ok(0)
}

/// `--csv`: one row per interval.
struct CsvSink {
    w: csv::Writer<std::fs::File>,
    sampler: Sampler,
    /// https://: handshakes completed and their p99 in each second.
    tls: bool,
}

impl CsvSink {
    fn create(path: &std::path::Path, pids: &[u32], tls: bool) -> Result<CsvSink, AppError> {
        let mut w = csv::Writer::from_path(path)
            .map_err(|e| usage(format!("cannot create --csv {}: {e}", path.display())))?;
        let mut header: Vec<String> = ["time_s", "rps", "p50_us", "p99_us", "open_conns", "errors"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for p in pids {
            header.push(format!("cpu_pct_{p}"));
            header.push(format!("rss_kb_{p}"));
        }
        header.push("tcp_sockets".into());
        header.push("tcp_mem_kb".into());
        if tls {
            header.push("tls_handshakes".into());
            header.push("tls_handshake_p99_us".into());
        }
        w.write_record(&header).map_err(failed)?;
        w.flush().map_err(failed)?;
        Ok(CsvSink {
            w,
            sampler: Sampler::new(pids),
            tls,
        })
    }

    fn write(&mut self, iv: &crate::stats::Interval) -> Result<(), String> {
        let c = &iv.counters;
        let mut row = vec![
            format!("{:.3}", iv.index as f64 + iv.duration.as_secs_f64()),
            format!("{:.1}", c.requests as f64 / iv.duration.as_secs_f64()),
            iv.hist.value_at_quantile(0.5).to_string(),
            iv.hist.value_at_quantile(0.99).to_string(),
            c.open.to_string(),
            c.errors.total().to_string(),
        ];
        for s in self.sampler.sample() {
            row.push(s.cpu_pct.map_or(String::new(), |v| format!("{v:.1}")));
            row.push(s.rss_kb.map_or(String::new(), |v| v.to_string()));
        }
        let (socks, mem) = crate::procstat::tcp_sockstat().unwrap_or((0, 0));
        row.push(socks.to_string());
        row.push(mem.to_string());
        if self.tls {
            row.push((c.tls_full + c.tls_resumed).to_string());
            row.push(iv.handshake.value_at_quantile(0.99).to_string());
        }
        self.w.write_record(&row).map_err(|e| e.to_string())?;
        self.w.flush().map_err(|e| e.to_string())
    }
}

/// `loadgen merge`; returns the exit code.
pub fn merge(paths: &[PathBuf], json: bool) -> u8 {
    match crate::hdrlog::merge(paths) {
        Ok(m) => {
            let summary = Summary::new(&m.meta, &m.hist, &m.counters, m.elapsed);
            if json {
                out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&summary).expect("summary serializes")
                ));
            } else {
                out(&format!("Merged {} log(s)\n", paths.len()));
                out(&crate::report::text(&summary));
            }
            0
        }
        Err(e) => {
            eprintln!("loadgen merge: {e}");
            EXIT_FAILURE
        }
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not worth a panic.
fn out(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes()).and_then(|_| o.flush());
}

/// `loadgen journey`; returns the exit code.
pub fn journey(path: &std::path::Path, json: bool, quiet: bool) -> u8 {
    use crate::journey::{self, JourneyError};
    let j = match journey::load(path) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("loadgen journey: {e}");
            return EXIT_USAGE;
        }
    };
    match journey::run(&j, quiet || json) {
        Ok(o) => {
            if json {
                out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&o.summary).expect("summary serializes")
                ));
            } else {
                if !quiet {
                    out(&o.goose_text);
                }
                out(&crate::report::text(&o.summary));
            }
            for f in &o.thresholds_failed {
                eprintln!("loadgen journey: threshold failed: {f}");
            }
            if o.thresholds_failed.is_empty() {
                0
            } else {
                EXIT_THRESHOLD
            }
        }
        Err(e @ JourneyError::Scenario(_)) => {
            eprintln!("loadgen journey: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("loadgen journey: {e}");
            EXIT_FAILURE
        }
    }
}
