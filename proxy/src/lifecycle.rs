//! Process life cycle: one process, or a master with worker processes;
//! signals (SIGHUP reloads the file, SIGTERM drains gracefully, SIGINT stops
//! at once); delivery of configuration changes to every worker.
//!
//! With `server.processes: N` the master starts N copies of this binary
//! (`--worker I --board FILE`), each running `server.workers` event loops on
//! the same port (SO_REUSEPORT). They share a counter board in /dev/shm so
//! the master's admin API reports exact sums; the master's files there are
//! private and named `speedmimi-PID-RANDOM.*` (`control::shm`). A
//! configuration change is written to a file beside the board (admin token
//! redacted) and announced by bumping the board's generation; each worker
//! applies it and acknowledges in its slot. A CPU profile is asked of the
//! workers the same way (`profiler::relay`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{Config, RawConfig};
use crate::control::board::{Board, MAX_PROCESSES};
use crate::control::shm;
use crate::control::snapshot::{self, RateMeter};
use crate::control::{ApplyError, BackendSnapshot, ControlPlane, ServerSnapshot};
use crate::profiler::relay::{self, WorkerProfile};
use crate::server::{refuse_restart_only_changes, Server};
use crate::upstream::probe::Prober;

/// How often workers look for a new configuration and the master for dead workers.
const POLL: Duration = Duration::from_millis(100);
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The admin API as the life cycle sees it: serving a control plane,
/// told when SIGHUP changed the token, stopped when dropped.
pub trait AdminApi: Send {
    fn local_addr(&self) -> SocketAddr;
    /// Replaces the bearer token (refusals say why).
    fn set_token(&self, token: Option<String>) -> io::Result<()>;
}

/// Starts the admin API of a configuration for a control plane: the
/// binary hands `admin::start` to `run` (the life cycle does not reach
/// into the admin module, which sits above it).
pub type AdminStarter = fn(&Config, Arc<dyn ControlPlane>) -> io::Result<Box<dyn AdminApi>>;

/// What `run` announces once the proxy serves: its address, the event
/// loops per process, and the admin API's address when there is one.
pub struct Started {
    pub listen: SocketAddr,
    pub event_loops: usize,
    pub admin: Option<SocketAddr>,
}

type AdminGuard = Option<Box<dyn AdminApi>>;

fn start_admin(
    admin: Option<AdminStarter>,
    config: &Config,
    plane: Arc<dyn ControlPlane>,
) -> io::Result<AdminGuard> {
    admin.map(|start| start(config, plane)).transpose()
}

/// Runs the proxy until SIGTERM (graceful) or SIGINT, with the admin API
/// `admin` starts (none without); `announce` is called once it serves.
pub fn run(
    path: &Path,
    raw: RawConfig,
    config: Config,
    admin: Option<AdminStarter>,
    announce: impl FnOnce(Started),
) -> io::Result<()> {
    if config.server.processes > 1 {
        return run_master(path, raw, config, admin, announce);
    }
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let graceful = config.server.graceful_timeout;
    let server = Server::start(raw, config.clone(), Board::in_process(), 0)?;
    server.start_health_checks()?;
    let admin = start_admin(admin, &config, server.clone())?;
    announce(Started {
        listen: server.local_addr,
        event_loops: config.server.workers,
        admin: admin.as_ref().map(|a| a.local_addr()),
    });
    for signal in signals.forever() {
        match signal {
            SIGHUP => reload(path, &*server, &admin),
            SIGTERM => {
                tracing::info!("SIGTERM: draining for at most {graceful:?}");
                server.drain(graceful);
                return server.wait();
            }
            _ => std::process::exit(130),
        }
    }
    Ok(())
}

/// SIGHUP: re-reads the file and applies it everywhere (the admin API's
/// token included), or keeps the old configuration and says why.
fn reload(path: &Path, plane: &dyn ControlPlane, admin: &AdminGuard) {
    match Config::load(path) {
        Ok((raw, config)) => {
            let token = config.admin.token.clone();
            match plane.apply(raw, config) {
                Ok(()) => {
                    if let Some(Err(e)) = admin.as_ref().map(|a| a.set_token(token)) {
                        tracing::error!("admin.token not changed: {e}");
                    }
                    tracing::info!("reloaded {}", path.display());
                }
                Err(e) => tracing::error!("reload refused, old configuration kept: {e:?}"),
            }
        }
        Err(e) => tracing::error!("reload refused, old configuration kept: {e}"),
    }
}

/// A worker process: runs its loops, follows the master's configuration
/// generations, drains on SIGTERM.
pub fn run_worker(
    path: &Path,
    raw: RawConfig,
    config: Config,
    index: usize,
    board_path: &Path,
) -> io::Result<()> {
    let board = Board::shared(board_path, false)?;
    let slot = &board.processes[index.min(MAX_PROCESSES - 1)];
    let generation = board.generation.load(Acquire);
    let graceful = config.server.graceful_timeout;
    let server = Server::start(raw, config, board, index)?;
    slot.applied_generation.store(generation, Relaxed);
    // Before the pid is published: a profile asked of this pid must be
    // one this worker answers.
    let mut profiles = relay::Responder::new(board, board_path, index);
    slot.pid.store(std::process::id(), Release);
    let signals = Signals::new([SIGTERM, SIGINT])?;
    let handle = signals.handle();
    let stop = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let stop_flag = stop.clone();
    std::thread::spawn(move || {
        let mut signals = signals;
        if let Some(signal) = signals.forever().next() {
            stop_flag.store(if signal == SIGTERM { 1 } else { 2 }, Relaxed);
        }
    });
    let mut applied = generation;
    loop {
        std::thread::sleep(POLL);
        match stop.load(Relaxed) {
            1 => {
                server.drain(graceful);
                handle.close();
                return server.wait();
            }
            2 => std::process::exit(130),
            _ => {}
        }
        profiles.poll();
        let wanted = board.generation.load(Acquire);
        if wanted != applied {
            applied = wanted;
            match Config::load(path) {
                Ok((raw, config)) => match server.apply_config(raw, config) {
                    Ok(()) => slot.applied_generation.store(wanted, Release),
                    Err(e) => tracing::error!("worker {index}: configuration refused: {e:?}"),
                },
                Err(e) => tracing::error!("worker {index}: {e}"),
            }
        }
    }
}

/// The master of worker processes: its control plane view.
struct Master {
    board: &'static Board,
    board_path: PathBuf,
    config_path: PathBuf,
    processes: usize,
    loops: usize,
    current: Mutex<(RawConfig, Arc<Config>)>,
    children: Mutex<Vec<Option<Child>>>,
    started: Instant,
    meter: RateMeter,
    /// Serializes configuration changes.
    applying: Mutex<()>,
    /// Active health checks, run here once for every worker (verdicts on
    /// the board); set once the workers run.
    prober: std::sync::OnceLock<Prober>,
}

impl Master {
    fn spawn_worker(&self, index: usize) -> io::Result<Child> {
        self.board.processes[index].pid.store(0, Relaxed);
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("--worker")
            .arg(index.to_string())
            .arg("--board")
            .arg(&self.board_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: prctl is async-signal-safe; a worker must not outlive its master.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command.spawn()
    }

    /// Writes `raw` for the workers, the admin token redacted: only the
    /// master serves the admin API, so workers never need it, and the copy
    /// must not hold a secret on disk.
    fn write_config(&self, raw: &RawConfig) -> io::Result<()> {
        let text = serde_yaml_ng::to_string(&raw.redacted()).map_err(io::Error::other)?;
        shm::replace(&self.config_path, text.as_bytes())
    }

    /// Writes `raw` for the workers, announces it, and waits until every
    /// worker has applied it.
    fn publish(&self, raw: &RawConfig) -> Result<(), ApplyError> {
        self.write_config(raw).map_err(|e| ApplyError {
            field: None,
            message: format!("cannot hand the configuration to the workers: {e}"),
        })?;
        let generation = self.board.generation.fetch_add(1, AcqRel) + 1;
        let deadline = Instant::now() + APPLY_WAIT;
        loop {
            let behind = (0..self.processes)
                .filter(|&p| self.board.processes[p].applied_generation.load(Acquire) != generation)
                .count();
            if behind == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ApplyError {
                    field: None,
                    message: format!(
                        "{behind} worker process(es) did not apply it within 5 s (their logs say why)"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Restarts workers that died, within a poll interval.
    fn supervise(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for (index, child) in children.iter_mut().enumerate() {
            let dead = match child {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => true,
            };
            if dead {
                if let Some(c) = child.as_ref() {
                    tracing::warn!("worker {index} (pid {}) died: restarting it", c.id());
                }
                // Its connections died with it; its totals stay in the sums.
                self.board.forget_process(index);
                *child = self.spawn_worker(index).ok();
            }
        }
    }

    fn signal_workers(&self, signal: i32) {
        for child in self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
        {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    fn wait_workers(&self) {
        for child in self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .flatten()
        {
            let _ = child.wait();
        }
    }
}

impl ControlPlane for Master {
    fn raw_config(&self) -> RawConfig {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    fn apply(&self, mut raw: RawConfig, mut config: Config) -> Result<(), ApplyError> {
        let _one_at_a_time = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let (old_raw, old) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        refuse_restart_only_changes(&old, &config)?;
        if config.server.listen.port() == 0 {
            // "Any port" was resolved at start: keep the one the workers share.
            config.server.listen.set_port(old.server.listen.port());
            raw.server.listen = config.server.listen.to_string();
        }
        if let Err(e) = self.publish(&raw) {
            // Some workers may have it, others not, and restarted workers
            // would read it: hand everyone the old configuration again.
            let _ = self.publish(&old_raw);
            return Err(e);
        }
        if let Some(prober) = self.prober.get() {
            prober.update(&config);
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = (raw, Arc::new(config));
        Ok(())
    }

    fn server(&self) -> ServerSnapshot {
        snapshot::server(
            self.board,
            self.processes,
            self.loops,
            self.started,
            &self.meter,
        )
    }

    fn backends(&self, upstream: &str) -> Option<Vec<BackendSnapshot>> {
        let config = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone();
        snapshot::backends(self.board, &config, upstream)
    }

    fn upstreams(&self) -> Vec<String> {
        let config = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone();
        config.upstreams.keys().cloned().collect()
    }

    fn worker_processes(&self) -> usize {
        self.processes
    }

    fn profile_workers(
        &self,
        seconds: u64,
        only: Option<usize>,
        stopping: &dyn Fn() -> bool,
    ) -> Vec<WorkerProfile> {
        relay::collect(
            self.board,
            &self.board_path,
            self.processes,
            only,
            seconds,
            stopping,
        )
    }
}

use std::sync::atomic::Ordering::AcqRel;

fn run_master(
    path: &Path,
    mut raw: RawConfig,
    mut config: Config,
    admin: Option<AdminStarter>,
    announce: impl FnOnce(Started),
) -> io::Result<()> {
    let processes = config.server.processes.min(MAX_PROCESSES);
    if config.server.listen.port() == 0 {
        // Workers must agree on one port: pick a free one now.
        let probe = std::net::TcpListener::bind(config.server.listen)?;
        config.server.listen = probe.local_addr()?;
        raw.server.listen = config.server.listen.to_string();
    }
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let dir = PathBuf::from("/dev/shm");
    let stale = Board::remove_stale(&dir);
    if stale > 0 {
        tracing::info!(
            "removed {stale} files of speedmimi masters that are gone from {}",
            dir.display()
        );
    }
    let (board_path, board) = create_board(&dir)?;
    let config_path = board_path.with_extension("yaml");
    let master = Arc::new(Master {
        board,
        board_path: board_path.clone(),
        config_path: config_path.clone(),
        processes,
        loops: config.server.workers,
        current: Mutex::new((raw.clone(), Arc::new(config.clone()))),
        children: Mutex::new((0..processes).map(|_| None).collect()),
        started: Instant::now(),
        meter: RateMeter::default(),
        applying: Mutex::new(()),
        prober: std::sync::OnceLock::new(),
    });
    let cleanup = scopeguard(move || {
        relay::sweep(&board_path);
        let _ = std::fs::remove_file(&board_path);
        let _ = std::fs::remove_file(&config_path);
    });
    master.write_config(&raw)?;
    master.supervise();
    // Announce once every worker is listening.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (0..processes).any(|p| board.processes[p].pid.load(Acquire) == 0) {
        if Instant::now() >= deadline {
            master.signal_workers(libc::SIGKILL);
            return Err(io::Error::other(
                "worker processes did not start within 10 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = master.prober.set(Prober::start(board, &config)?);
    let admin = start_admin(admin, &config, master.clone())?;
    announce(Started {
        listen: config.server.listen,
        event_loops: config.server.workers,
        admin: admin.as_ref().map(|a| a.local_addr()),
    });
    let graceful = config.server.graceful_timeout;
    loop {
        for signal in signals.pending() {
            match signal {
                SIGHUP => reload(path, &*master, &admin),
                SIGTERM => {
                    tracing::info!("SIGTERM: workers drain for at most {graceful:?}");
                    master.signal_workers(libc::SIGTERM);
                    master.wait_workers();
                    drop(cleanup);
                    return Ok(());
                }
                _ => {
                    master.signal_workers(libc::SIGKILL);
                    drop(cleanup);
                    std::process::exit(130);
                }
            }
        }
        master.supervise();
        std::thread::sleep(POLL);
    }
}

/// Creates this master's board under a fresh `speedmimi-PID-RANDOM` name
/// (`control::shm`); a name already taken is never opened, another is drawn.
fn create_board(dir: &Path) -> io::Result<(PathBuf, &'static Board)> {
    const TRIES: usize = 3;
    let mut last = None;
    for _ in 0..TRIES {
        let path = dir.join(format!("{}.board", shm::master_stem()?));
        match Board::shared(&path, true) {
            Ok(board) => return Ok((path, board)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tracing::warn!("{e}; drawing another name");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no board name")))
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
