//! The `loadgen` command line: parses arguments and calls the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "HTTP/1.1 load generator and benchmark backend"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a target: closed loop (-c), open loop (-R) or hold mode (--hold).
    Run(Box<RunArgs>),
    /// A minimal fast HTTP/1.1 keep-alive backend that answers 200 to everything.
    Backend {
        /// Address to listen on (port 0 picks a free port; the chosen address is printed).
        #[arg(long)]
        listen: SocketAddr,
        /// Response body size in bytes.
        #[arg(long, default_value_t = 12)]
        body_size: usize,
        /// Answer each request after this delay (e.g. 5ms).
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Event-loop threads (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Multi-step user journeys from a YAML scenario, run by goose.
    Journey {
        /// The scenario file (see docs/loadgen.md).
        #[arg(long)]
        scenario: PathBuf,
        /// Print the figures in loadgen's JSON shape instead of text.
        #[arg(long)]
        json: bool,
        /// Keep goose's own output quiet.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Run a benchmark scenario (scenarios/*.yaml): start what it names, load it,
    /// write results.json, intervals.csv, env.json and report.html.
    Bench {
        /// The scenario file (see docs/bench.md).
        #[arg(long)]
        scenario: PathBuf,
        /// Run directory (default results/NAME-UTCTIME).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Re-render the report of a run directory from its results.json.
    Report { dir: PathBuf },
    /// Merge --hdr-log files of several runs or shards into one result, exactly.
    Merge {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print the result as JSON (the `loadgen.result/1` schema).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// http[s]://HOST[:PORT][/PATH]
    url: String,
    /// Connections (above the open-file limit, shard processes are used).
    #[arg(short = 'c', long = "connections", default_value_t = 10)]
    conns: u64,
    /// Event-loop threads (per shard when sharded: split among shards).
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// Run for this long (e.g. 10s, 1m). Default 10s unless -n is given.
    #[arg(short = 'd', long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Send exactly this many requests, then stop.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Open loop: requests per second over all connections.
    #[arg(short = 'R', long)]
    rate: Option<f64>,
    /// Hold mode: keep connections open, one request on each every --interval.
    #[arg(long)]
    hold: bool,
    /// Hold mode: time between two requests on one connection.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    interval: Duration,
    /// Open at most this many new connections per second.
    #[arg(long)]
    connect_rate: Option<f64>,
    /// Source addresses to bind: ADDR, FIRST-LAST or CIDR (repeatable).
    #[arg(long = "source")]
    sources: Vec<String>,
    /// Extra request header 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    #[arg(short = 'm', long, default_value = "GET")]
    method: String,
    /// Request body from this file.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Per-request (and per-connect) timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Print the result as JSON (schema in docs/loadgen.md).
    #[arg(long)]
    json: bool,
    /// Write one CSV row per second to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write an HdrHistogram interval log to this file.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Pass/fail rule checked at the end, e.g. 'p99<10ms' (repeatable; exit 3 on failure).
    #[arg(long = "threshold", num_args = 1..)]
    thresholds: Vec<String>,
    /// Sample this process's CPU and RSS into --csv (repeatable).
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
    /// No progress output.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// https://: the server name to send (SNI) and check; default the URL's host.
    #[arg(long)]
    sni: Option<String>,
    /// https://: trust the certificates in this PEM file instead of the system's.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// https://: do not check the server's certificate (said in the summary).
    #[arg(long)]
    insecure: bool,
    /// https://: only this TLS version, 1.2 or 1.3 (default: either).
    #[arg(long)]
    tls_version: Option<loadgen::tls::Version>,
    /// https://: offer sessions for resumption (off: every handshake is full).
    #[arg(long)]
    tls_resume: bool,
    /// https://: key exchange groups to offer, e.g. x25519 or x25519mlkem768,secp256r1.
    #[arg(long, value_delimiter = ',')]
    tls_kx: Vec<String>,
    /// Open a new connection for every request (adds `Connection: close`).
    #[arg(long)]
    new_conn_per_request: bool,
    #[arg(long, hide = true, value_parser = parse_shard)]
    shard: Option<(u64, u64)>,
    #[arg(long, hide = true)]
    shard_start: Option<u128>,
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N")?;
    let (i, n) = (
        i.parse().map_err(|_| "bad index")?,
        n.parse().map_err(|_| "bad count")?,
    );
    if i >= n {
        return Err("index must be below count".into());
    }
    Ok((i, n))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => {
            let a = *a;
            let duration = match (a.duration, a.requests) {
                (None, None) => Some(Duration::from_secs(10)),
                (d, _) => d,
            };
            let spec = loadgen::app::RunSpec {
                url: a.url,
                conns: a.conns,
                threads: a.threads,
                duration,
                requests: a.requests,
                rate: a.rate,
                hold: a.hold,
                interval: a.interval,
                connect_rate: a.connect_rate,
                sources: a.sources,
                headers: a.headers,
                method: a.method,
                body: a.body,
                timeout: a.timeout,
                json: a.json,
                csv: a.csv,
                hdr_log: a.hdr_log,
                thresholds: a.thresholds,
                watch_pids: a.watch_pids,
                quiet: a.quiet,
                tls: loadgen::tls::TlsOptions {
                    sni: a.sni,
                    cacert: a.cacert,
                    insecure: a.insecure,
                    version: a.tls_version,
                    resume: a.tls_resume,
                    kx: a.tls_kx,
                },
                new_conn_per_request: a.new_conn_per_request,
                shard: a.shard,
                shard_start_unix_ns: a.shard_start,
                argv: std::env::args().skip(1).collect(),
            };
            ExitCode::from(loadgen::app::run(spec))
        }
        Cmd::Journey {
            scenario,
            json,
            quiet,
        } => ExitCode::from(loadgen::app::journey(&scenario, json, quiet)),
        Cmd::Bench { scenario, out } => ExitCode::from(loadgen::bench::bench(&scenario, out)),
        Cmd::Report { dir } => ExitCode::from(loadgen::bench::report(&dir)),
        Cmd::Merge { files, json } => ExitCode::from(loadgen::app::merge(&files, json)),
        Cmd::Backend {
            listen,
            body_size,
            delay,
            workers,
        } => {
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let cfg = loadgen::backend::BackendConfig {
                listen,
                body_size,
                delay,
                workers,
            };
            let backend = match loadgen::backend::Backend::bind(cfg) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("loadgen backend: {e}");
                    return ExitCode::from(1);
                }
            };
            let mut out = std::io::stdout();
            let _ = writeln!(out, "listening on {}", backend.local_addr());
            let _ = out.flush();
            match backend.run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen backend: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
