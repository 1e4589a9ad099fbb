//! `speedmimi`: runs the proxy, or checks a configuration file.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use speedmimi::config::Config;
use speedmimi::server::Server;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match Config::from_file(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("speedmimi: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.check {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let workers = config.server.workers;
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("speedmimi: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    // Scripts and tests read the bound address (port 0 resolves here).
    println!("listening on {} ({workers} event loops)", server.local_addr);
    let _ = std::io::stdout().flush();
    match server.wait() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("speedmimi: {e}");
            ExitCode::from(1)
        }
    }
}
