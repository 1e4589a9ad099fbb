//! The results model: what a bench run writes (DIR/results.json and DIR/intervals.csv)
//! and what the report reads back. One versioned schema, `speedmimi.bench/v1`,
//! documented field by field in docs/reports.md.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The schema tag every results.json carries. Additive fields keep the tag;
/// a renamed or re-meant field bumps it.
pub const SCHEMA: &str = "speedmimi.bench/v1";

/// File names inside a run directory.
pub const RESULTS_FILE: &str = "results.json";
pub const INTERVALS_FILE: &str = "intervals.csv";
/// Per-step kernel figures `loadgen bench` writes beside results.json; runs made before
/// results.json carried slab growth and the RSS baseline have them only there.
pub const KERNEL_FILE: &str = "kernel.json";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "cannot read {path}: {source} (run `loadgen bench` first, or point at a run directory)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source} (check the directory exists and is writable)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid results JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has schema {found:?}; this build reads {SCHEMA:?} (re-run the bench or use a matching build)")]
    Schema { path: PathBuf, found: String },
    #[error("{path}: bad intervals CSV: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path} is not a valid kernel.json (an array of per-step rows): {source} (fix or delete it; the report then says slab not measured)")]
    Kernel {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One bench run: the machine, the scenario, the targets it measured and every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRun {
    pub schema: String,
    pub scenario: String,
    /// RFC 3339 UTC time the run started, when the runner knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Free text shown at the top of the report (e.g. "FIXTURE: synthetic numbers").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub env: Env,
    pub targets: Vec<TargetInfo>,
    pub steps: Vec<Step>,
}

/// The machine the run happened on (also written alone as DIR/env.json by the runner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Env {
    pub cpu_model: String,
    /// Logical CPUs online.
    pub cores: u32,
    /// MemTotal, bytes.
    pub memory_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
    /// Bytes per page, to turn /proc/net/sockstat `mem` pages into bytes.
    #[serde(default = "default_page_size")]
    pub page_size: u64,
    /// Program name -> version string (speedmimi, loadgen, nginx, haproxy, rustc, ...).
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    /// `tuner show --json`, kept as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuner: Option<serde_json::Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_page_size() -> u64 {
    4096
}

/// A proxy under test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Name used in `Step::target` and in legends (unique within a run).
    pub name: String,
    /// speedmimi, nginx, haproxy, ...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// N connections, each sending as fast as answers come back.
    Closed,
    /// A fixed request rate, latency measured from the intended send time.
    Open,
    /// Open N connections at a rate, keep them, send one request each every T seconds.
    Hold,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open => "open",
            Mode::Hold => "hold",
        }
    }
}

/// One step of one target: the load asked for, what came back, what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `TargetInfo::name`.
    pub target: String,
    /// Interleaved repeat number (A B A B ...), 0 when the scenario runs each step once.
    #[serde(default)]
    pub round: u32,
    /// Index of the step in the scenario, from 0.
    pub step: u32,
    /// Connections asked for.
    pub connections: u64,
    /// Most connections open at once during the step.
    pub peak_open: u64,
    pub mode: Mode,
    /// Open: requests/s asked for. Hold: new connections/s. Closed: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    pub duration_s: f64,
    /// Completed requests (a response fully read).
    pub requests: u64,
    pub rps: f64,
    pub latency_us: Latency,
    pub errors: Errors,
    pub proxy: ProcessUsage,
    /// All backends summed, when the runner started them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<ProcessUsage>,
    /// The load generator (every `loadgen run` shard), when the runner sampled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ProcessUsage>,
    pub kernel: KernelMemory,
    /// Every request on a new connection (`loadgen --new-conn-per-request`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub new_conn_per_request: bool,
    /// HTTPS steps only: the handshakes the client made (absent: plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFigures>,
}

/// What an HTTPS step's handshakes cost and negotiated, from the client's summary.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TlsFigures {
    /// Handshakes completed, full and resumed.
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    pub handshakes_per_s: f64,
    /// Handshakes that failed (also counted in `errors.connect`).
    pub failed: u64,
    /// The client offered sessions for resumption (`loadgen --tls-resume`).
    #[serde(default)]
    pub resumption_offered: bool,
    /// "TLSv1.3", "TLSv1.2" or "mixed".
    pub version: String,
    pub cipher_suite: String,
    #[serde(default)]
    pub kx_group: String,
    /// From the start of the TCP connect to the end of the handshake, µs.
    pub handshake_latency_us: Latency,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Error counts by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Errors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.status_4xx + self.status_5xx
    }
}

/// CPU and memory of a process group (the proxy's master and workers, or the backends),
/// from /proc/PID/stat and /proc/PID/status.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// utime + stime spent during the step, seconds.
    pub cpu_seconds: f64,
    /// cpu_seconds * 1e6 / requests (0 when no request completed).
    #[serde(default)]
    pub cpu_us_per_request: f64,
    /// Highest RSS sampled during the step, bytes.
    pub rss_peak_bytes: u64,
    /// RSS when the step started (the idle baseline), bytes; absent in older results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_start_bytes: Option<u64>,
    /// RSS at the end of the step, bytes.
    pub rss_end_bytes: u64,
}

/// Kernel memory: TCP socket buffers from /proc/net/sockstat `TCP: ... mem N` (pages)
/// times the page size, and the growth of unreclaimable slab (/proc/meminfo SUnreclaim),
/// where the socket structures themselves live. Whole host (or network namespace): on
/// one box it also counts the load generator's and the backends' sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KernelMemory {
    /// Before the step started, bytes.
    #[serde(default)]
    pub sock_mem_bytes_start: u64,
    pub sock_mem_bytes_peak: u64,
    pub sock_mem_bytes_end: u64,
    /// SUnreclaim at its highest during the step minus at its start, bytes. sockstat's
    /// `mem` counts only buffer pages (≈ 0 for an idle socket); the ≈ 3 KB a socket
    /// costs in `TCP`, `sock_inode_cache`, dentries and epoll items is here. Absent
    /// when not measured (older results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slab_unreclaim_grown_bytes: Option<u64>,
}

/// What a step's connections cost in memory, by part. Planning multiplies this out
/// per connection, so fixed costs (the proxy's idle RSS) are left out when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryCost {
    /// Proxy RSS grown during the step (peak − start), or the whole peak when the
    /// start was not recorded (`rss_grown` false).
    pub proxy_rss_bytes: u64,
    pub rss_grown: bool,
    /// Kernel TCP socket buffers grown (sockstat peak − start).
    pub sock_mem_bytes: u64,
    /// Kernel unreclaimable slab grown; None when not measured.
    pub slab_bytes: Option<u64>,
}

impl MemoryCost {
    pub fn total(&self) -> u64 {
        self.proxy_rss_bytes + self.sock_mem_bytes + self.slab_bytes.unwrap_or(0)
    }

    /// Which parts `total` counts, for labels: "proxy RSS grown + kernel socket
    /// buffers + kernel slab grown", or "...; slab not measured".
    pub fn counted(&self) -> String {
        let rss = if self.rss_grown {
            "proxy RSS grown"
        } else {
            "proxy RSS peak"
        };
        match self.slab_bytes {
            Some(_) => format!("{rss} + kernel socket buffers + kernel slab grown"),
            None => format!("{rss} + kernel socket buffers; slab not measured"),
        }
    }
}

impl Step {
    /// "https" for a TLS step, else "http": the scheme in labels.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Proxy CPU in cores busy on average (1.0 = one core fully used).
    pub fn proxy_cores_busy(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.proxy.cpu_seconds / self.duration_s
        } else {
            0.0
        }
    }

    /// Requests/s per core the proxy actually used; None when it used no measurable CPU.
    pub fn rps_per_busy_core(&self) -> Option<f64> {
        let cores = self.proxy_cores_busy();
        (cores > 1e-3 && self.rps > 0.0).then(|| self.rps / cores)
    }

    /// The step's memory by part: proxy RSS grown (the peak when the start was not
    /// recorded), kernel socket buffers grown, kernel slab grown (when measured).
    pub fn memory(&self) -> MemoryCost {
        let (proxy_rss_bytes, rss_grown) = match self.proxy.rss_start_bytes {
            Some(start) => (self.proxy.rss_peak_bytes.saturating_sub(start), true),
            None => (self.proxy.rss_peak_bytes, false),
        };
        MemoryCost {
            proxy_rss_bytes,
            rss_grown,
            sock_mem_bytes: self
                .kernel
                .sock_mem_bytes_peak
                .saturating_sub(self.kernel.sock_mem_bytes_start),
            slab_bytes: self.kernel.slab_unreclaim_grown_bytes,
        }
    }

    /// `memory().total()`: what the step's connections cost, bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory().total()
    }
}

/// One sampling interval (normally one second) of one step: a row of intervals.csv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub target: String,
    #[serde(default)]
    pub round: u32,
    pub step: u32,
    /// Seconds since the step started, at the end of the interval.
    pub t_s: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub open_connections: u64,
    pub errors: u64,
    /// Proxy CPU over the interval, percent of one core (200 = two cores busy).
    pub proxy_cpu_percent: f64,
    pub proxy_rss_bytes: u64,
    pub sock_mem_bytes: u64,
}

/// A run directory's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct RunData {
    pub run: BenchRun,
    /// Empty when intervals.csv is absent.
    pub intervals: Vec<Interval>,
}

impl BenchRun {
    /// Steps of one target, in file order.
    pub fn steps_of<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a Step> + 'a {
        self.steps.iter().filter(move |s| s.target == target)
    }
}

pub fn read_results(path: &Path) -> Result<BenchRun, ModelError> {
    let text = fs::read_to_string(path).map_err(|source| ModelError::Read {
        path: path.to_owned(),
        source,
    })?;
    // Check the tag first so an old or foreign file gets a schema message, not a field error.
    let probe: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_owned(),
            source,
        })?;
    let found = probe.get("schema").and_then(|v| v.as_str()).unwrap_or("");
    if found != SCHEMA {
        return Err(ModelError::Schema {
            path: path.to_owned(),
            found: found.to_owned(),
        });
    }
    serde_json::from_value(probe).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        source,
    })
}

pub fn write_results(path: &Path, run: &BenchRun) -> Result<(), ModelError> {
    let mut text = serde_json::to_string_pretty(run).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        source,
    })?;
    text.push('\n');
    fs::write(path, text).map_err(|source| ModelError::Write {
        path: path.to_owned(),
        source,
    })
}

pub fn read_intervals(path: &Path) -> Result<Vec<Interval>, ModelError> {
    let mut reader = csv::Reader::from_path(path).map_err(|source| csv_error(path, source))?;
    reader
        .deserialize()
        .collect::<Result<Vec<Interval>, _>>()
        .map_err(|source| csv_error(path, source))
}

pub fn write_intervals(path: &Path, rows: &[Interval]) -> Result<(), ModelError> {
    let mut writer = csv::Writer::from_path(path).map_err(|source| csv_error(path, source))?;
    for row in rows {
        writer
            .serialize(row)
            .map_err(|source| csv_error(path, source))?;
    }
    writer.flush().map_err(|source| ModelError::Write {
        path: path.to_owned(),
        source,
    })
}

fn csv_error(path: &Path, source: csv::Error) -> ModelError {
    ModelError::Csv {
        path: path.to_owned(),
        source,
    }
}

/// One row of DIR/kernel.json (only the fields the report uses).
#[derive(Debug, Deserialize)]
struct KernelRow {
    target: String,
    #[serde(default)]
    round: u32,
    step: u32,
    #[serde(default)]
    slab_unreclaim_grown_bytes: Option<u64>,
    #[serde(default)]
    proxy_rss_start_bytes: Option<u64>,
}

/// Fills the slab growth and proxy RSS baseline a step lacks from DIR/kernel.json,
/// written by the same run: results.json carries them only since they were added.
pub fn fill_from_kernel_json(path: &Path, run: &mut BenchRun) -> Result<(), ModelError> {
    let text = fs::read_to_string(path).map_err(|source| ModelError::Read {
        path: path.to_owned(),
        source,
    })?;
    let rows: Vec<KernelRow> =
        serde_json::from_str(&text).map_err(|source| ModelError::Kernel {
            path: path.to_owned(),
            source,
        })?;
    for s in &mut run.steps {
        let Some(r) = rows
            .iter()
            .find(|r| r.target == s.target && r.round == s.round && r.step == s.step)
        else {
            continue;
        };
        if s.kernel.slab_unreclaim_grown_bytes.is_none() {
            s.kernel.slab_unreclaim_grown_bytes = r.slab_unreclaim_grown_bytes;
        }
        if s.proxy.rss_start_bytes.is_none() {
            s.proxy.rss_start_bytes = r.proxy_rss_start_bytes;
        }
    }
    Ok(())
}

/// Reads DIR/results.json and, when present, DIR/intervals.csv; fills figures older
/// results lack from DIR/kernel.json when present.
pub fn load_dir(dir: &Path) -> Result<RunData, ModelError> {
    let mut run = read_results(&dir.join(RESULTS_FILE))?;
    let kernel_path = dir.join(KERNEL_FILE);
    if kernel_path.exists() {
        fill_from_kernel_json(&kernel_path, &mut run)?;
    }
    let intervals_path = dir.join(INTERVALS_FILE);
    let intervals = if intervals_path.exists() {
        read_intervals(&intervals_path)?
    } else {
        Vec::new()
    };
    Ok(RunData { run, intervals })
}

/// Writes DIR/results.json and DIR/intervals.csv.
pub fn save_dir(dir: &Path, data: &RunData) -> Result<(), ModelError> {
    write_results(&dir.join(RESULTS_FILE), &data.run)?;
    write_intervals(&dir.join(INTERVALS_FILE), &data.intervals)
}
