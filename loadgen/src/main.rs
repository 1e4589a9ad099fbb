//! The `loadgen` command line: parses arguments and calls the library.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
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
