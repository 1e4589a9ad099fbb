//! The command line: arguments, and the wiring from each command to the library.
//! Exit codes: 0 done, 1 some keys off or failed (listed), 2 usage.

use crate::apply::{self, ApplyOptions};
use crate::capacity::{self, Costs, Request};
use crate::host;
use crate::output::Style;
use crate::persist;
use crate::plan::{self, Env};
use crate::profile::{self, Library, Profile};
use crate::render::{self, ProfileInfo};
use crate::roots::Roots;
use crate::show;
use crate::state;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

pub const EXIT_OK: i32 = 0;
pub const EXIT_OFF: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "tuner",
    version,
    about = "Apply, check, diff and roll back system profiles for a million connections",
    after_help = "Exit codes: 0 done, 1 some keys off or failed (listed), 2 usage."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Look for proc/, sys/ and etc/ under DIR instead of / (a fake tree for tests).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Where /proc is (overrides --root).
    #[arg(long, global = true, value_name = "DIR")]
    pub proc_root: Option<PathBuf>,
    /// Where /sys is (overrides --root).
    #[arg(long, global = true, value_name = "DIR")]
    pub sys_root: Option<PathBuf>,
    /// Where /etc is for persist (overrides --root).
    #[arg(long, global = true, value_name = "DIR")]
    pub etc_root: Option<PathBuf>,
    /// Read profiles from DIR/NAME.yaml first, then the built-in ones.
    #[arg(long, global = true, value_name = "DIR")]
    pub profiles: Option<PathBuf>,
    /// Directory of the state file that apply writes and rollback reads.
    #[arg(long, global = true, value_name = "DIR", default_value = state::DEFAULT_DIR)]
    pub state: PathBuf,
    /// Process whose rlimits the profile's rlimit keys set (default: the shell that ran tuner).
    #[arg(long, global = true, value_name = "PID")]
    pub pid: Option<i32>,
    /// Only keys whose name starts with PREFIX, e.g. `--only net.` (repeatable)
    #[arg(long, global = true, value_name = "PREFIX")]
    pub only: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Kernel, cores, memory, container/VM hints, capabilities, file limits, network keys, governors.
    Show,
    /// The profiles and what each is for.
    Profiles,
    /// One row per key: current, wanted, ok/off/skipped and why; exit 1 when any key is off.
    Check(ProfileArg),
    /// What apply would change (the same as apply --dry-run).
    Diff(ProfileArg),
    /// Save the originals, then set every key that is off.
    Apply {
        #[command(flatten)]
        profile: ProfileArg,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Stop at the first key that fails.
        #[arg(long)]
        strict: bool,
    },
    /// Restore the exact original values from the state file, then remove it.
    Rollback,
    /// Write sysctl.d, a systemd drop-in and limits.d files so the profile survives a reboot.
    Persist {
        #[command(flatten)]
        profile: ProfileArg,
        /// The proxy's systemd unit, for the LimitNOFILE drop-in.
        #[arg(long, default_value = "speedmimi.service")]
        unit: String,
    },
    /// What a target connection count needs, and whether this machine can do it.
    Capacity {
        /// Concurrent client connections.
        #[arg(long)]
        connections: u64,
        /// Requests per second over all connections.
        #[arg(long)]
        rps: Option<f64>,
        /// Judge the machine as it would be after applying this profile.
        #[arg(long)]
        profile: Option<String>,
        /// A loadgen/bench JSON file with measured per-connection costs.
        #[arg(long, value_name = "FILE")]
        results: Option<PathBuf>,
        /// The load generator runs on this machine too.
        #[arg(long)]
        clients_here: bool,
    },
}

#[derive(Debug, Args)]
pub struct ProfileArg {
    /// Profile name (see `tuner profiles`).
    #[arg(long, short = 'p')]
    pub profile: String,
}

/// Parse the arguments, run the command, return the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    run(cli)
}

fn usage(msg: impl std::fmt::Display) -> i32 {
    eprintln!("tuner: {msg}");
    EXIT_USAGE
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("tuner: {msg}");
    EXIT_OFF
}

pub fn run(cli: Cli) -> i32 {
    let g = &cli.global;
    let style = Style::detect(g.json);
    let roots = Roots::new(
        g.root.as_deref(),
        g.proc_root.as_deref(),
        g.sys_root.as_deref(),
        g.etc_root.as_deref(),
    );
    let lib = Library::new(g.profiles.clone());
    let memory = host::memory();
    let env = Env {
        roots: roots.clone(),
        pid: g.pid.unwrap_or_else(|| nix::unistd::getppid().as_raw()),
        child_netns: host::in_child_netns(),
        ram_pages: memory.total_bytes / memory.page_size.max(1),
        caps: host::caps(),
    };
    let load = |name: &str| -> Result<Profile, i32> {
        let mut p = lib.load(name).map_err(usage)?;
        profile::filter_keys(&mut p, &g.only);
        Ok(p)
    };
    let out = |s: String| print!("{s}");

    match &cli.command {
        Command::Show => {
            out(show::render(&show::gather(&roots), style));
            EXIT_OK
        }
        Command::Profiles => {
            let list: Vec<ProfileInfo> = lib
                .names()
                .into_iter()
                .map(|(name, source)| match lib.load(&name) {
                    Ok(p) => ProfileInfo {
                        name,
                        source,
                        description: p.description,
                        includes: p.includes,
                        keys: p.keys.len(),
                        error: None,
                    },
                    Err(e) => ProfileInfo {
                        name,
                        source,
                        description: String::new(),
                        includes: Vec::new(),
                        keys: 0,
                        error: Some(e.to_string()),
                    },
                })
                .collect();
            out(render::profiles(&list, style));
            EXIT_OK
        }
        Command::Check(p) => {
            let prof = match load(&p.profile) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let rows = plan::evaluate(&prof, &env);
            out(render::check(&prof, &rows, style));
            plan::exit_code(&rows)
        }
        Command::Diff(p) => run_apply(&load, &p.profile, &env, g, style, true, false),
        Command::Apply {
            profile,
            dry_run,
            strict,
        } => run_apply(&load, &profile.profile, &env, g, style, *dry_run, *strict),
        Command::Rollback => match apply::rollback(&g.state, &env) {
            Ok(r) => {
                out(render::rollback(&r, style));
                r.exit_code()
            }
            Err(e) => fail(e),
        },
        Command::Persist { profile, unit } => {
            let prof = match load(&profile.profile) {
                Ok(p) => p,
                Err(code) => return code,
            };
            // persist only reads live values; staging files under --root DIR for
            // another machine's image should not need a fake proc/ there.
            let mut env = env.clone();
            if !env.roots.proc.join("sys").exists() {
                env.roots.proc = "/proc".into();
                env.roots.sys = "/sys".into();
            }
            match persist::persist(&prof, &env, unit) {
                Ok(r) => {
                    out(render::persist(&r, style));
                    EXIT_OK
                }
                Err(e) => fail(e),
            }
        }
        Command::Capacity {
            connections,
            rps,
            profile,
            results,
            clients_here,
        } => {
            let prof = match profile.as_deref().map(load).transpose() {
                Ok(p) => p,
                Err(code) => return code,
            };
            let costs = match results {
                Some(f) => match capacity::read_results(f, *connections) {
                    Ok(c) => c,
                    Err(e) => return usage(e),
                },
                None => Costs::for_connections(*connections),
            };
            let facts = show::gather(&roots);
            let req = Request {
                connections: *connections,
                rps: *rps,
                clients_here: *clients_here,
            };
            match capacity::plan(&req, costs, &facts, prof.as_ref(), &env) {
                Ok(p) => {
                    out(capacity::render(&p, style));
                    // A plan, but scripts may gate on "this machine cannot".
                    if p.verdict == "no" {
                        EXIT_OFF
                    } else {
                        EXIT_OK
                    }
                }
                Err(e) => usage(e),
            }
        }
    }
}

fn run_apply(
    load: &dyn Fn(&str) -> Result<Profile, i32>,
    name: &str,
    env: &Env,
    g: &Global,
    style: Style,
    dry_run: bool,
    strict: bool,
) -> i32 {
    let prof = match load(name) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut hint = "tuner rollback".to_string();
    if g.state != std::path::Path::new(state::DEFAULT_DIR) {
        hint.push_str(&format!(" --state {}", g.state.display()));
    }
    let opts = ApplyOptions {
        dry_run,
        strict,
        state_dir: g.state.clone(),
        rollback_hint: hint,
    };
    match apply::apply(&prof, env, &opts) {
        Ok(r) => {
            print!("{}", render::apply(&r, style));
            if dry_run {
                // diff: 1 when something would change, like check.
                i32::from(
                    r.keys
                        .iter()
                        .any(|k| k.outcome == apply::Outcome::WouldChange),
                )
            } else {
                r.exit_code()
            }
        }
        Err(e) => fail(e),
    }
}
