//! `speedmimi`: runs the proxy, or checks a configuration file.

use std::io::Write;
use std::os::fd::{AsFd, FromRawFd};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use speedmimi::config::Config;
use speedmimi::lifecycle;

/// HTTP/1.1 reverse proxy and load balancer.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The configuration file (YAML).
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the configuration and exit (0 valid, 1 invalid).
    #[arg(long)]
    check: bool,
    /// Internal: run as worker process N of a master (see server.processes).
    #[arg(long, hide = true)]
    worker: Option<usize>,
    /// Internal: the master's shared counter board.
    #[arg(long, hide = true)]
    board: Option<PathBuf>,
    /// Internal: a worker's listening sockets, inherited from its master.
    #[arg(long, hide = true, value_delimiter = ',')]
    listen_fds: Vec<i32>,
    /// Internal: the socket on which the process being upgraded hands over.
    #[arg(long, hide = true)]
    upgrade_fd: Option<i32>,
}

fn main() -> ExitCode {
    // Read now: an upgrade runs the binary at this path even once replaced.
    let _ = speedmimi::upgrade::exe();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (raw, config) = match Config::load(&cli.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("speedmimi: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.check {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if cli.worker.is_none() {
        // Worker processes inherit the raised limit (and the warning is said once).
        speedmimi::fd_limit::raise(config.server.max_conn, config.server.workers);
    }
    let result = match (cli.worker, cli.board) {
        (Some(index), Some(board)) => {
            let listeners = cli.listen_fds.iter().map(|&fd| {
                // SAFETY: the master passed these descriptors to this worker alone.
                let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                let _ = speedmimi::upgrade::set_cloexec(l.as_fd());
                l
            });
            lifecycle::run_worker(&cli.config, raw, config, index, &board, listeners.collect())
        }
        _ => {
            let inherited = match cli.upgrade_fd.map(speedmimi::upgrade::Inherited::receive) {
                Some(Err(e)) => {
                    eprintln!("speedmimi: {e}");
                    return ExitCode::from(1);
                }
                Some(Ok(i)) => Some(i),
                None => None,
            };
            run_proxy(&cli.config, raw, config, inherited)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("speedmimi: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_proxy(
    path: &std::path::Path,
    raw: speedmimi::config::RawConfig,
    config: Config,
    inherited: Option<speedmimi::upgrade::Inherited>,
) -> std::io::Result<()> {
    lifecycle::run(
        path,
        raw,
        config,
        Some(speedmimi::admin::start),
        inherited,
        |started| {
            // Scripts and tests read these lines (port 0 resolves here). A
            // reader that stopped listening must not bring the proxy down.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "listening on {} ({} event loops)",
                started.listen, started.event_loops
            );
            if let Some(admin) = started.admin {
                let _ = writeln!(out, "admin on {admin}");
            }
            if let Some(old) = started.upgraded_from {
                let _ = writeln!(
                    out,
                    "upgraded: pid {} serves in place of pid {old}",
                    std::process::id()
                );
            }
            let _ = out.flush();
        },
    )
}
