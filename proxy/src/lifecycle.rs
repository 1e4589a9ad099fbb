//! Process life cycle: one process, or a master with worker processes;
//! signals (SIGHUP reloads the file, SIGTERM drains gracefully, SIGINT stops
//! at once, SIGUSR2 upgrades the binary: `upgrade.rs`); delivery of
//! configuration changes to every worker.
//!
//! With `server.processes: N` the master starts N copies of this binary
//! (`--worker I --board FILE --listen-fds ...`), each running
//! `server.workers` event loops on the same port (SO_REUSEPORT). The master
//! binds the listening sockets and the workers inherit theirs, so a
//! restarted worker serves the connections that waited in its queues, and
//! an upgrade hands every socket over from one place. They share a counter board in /dev/shm so
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
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, OwnedFd};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::config::{Config, RawConfig};
use crate::control::board::{Board, MAX_PROCESSES};
use crate::control::shm;
use crate::control::snapshot::{self, RateMeter};
use crate::control::{ApplyError, BackendSnapshot, ControlPlane, ServerSnapshot};
use crate::profiler::relay::{self, WorkerProfile};
use crate::server::{listener, refuse_restart_only_changes, Server};
use crate::upgrade::{self, Inherited};
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
    /// A copy of the listening socket, for an upgrade to serve on.
    fn listener_fd(&self) -> io::Result<OwnedFd>;
}

/// Starts the admin API of a configuration for a control plane: the
/// binary hands `admin::start` to `run` (the life cycle does not reach
/// into the admin module, which sits above it).
/// The listener, when given, is the admin socket of the process being upgraded.
pub type AdminStarter = fn(
    &Config,
    Arc<dyn ControlPlane>,
    Option<std::net::TcpListener>,
) -> io::Result<Box<dyn AdminApi>>;

/// What `run` announces once the proxy serves: its address, the event
/// loops per process, and the admin API's address when there is one.
pub struct Started {
    pub listen: SocketAddr,
    pub event_loops: usize,
    pub admin: Option<SocketAddr>,
    /// The pid this process took over from (SIGUSR2), if it did.
    pub upgraded_from: Option<u32>,
}

type AdminGuard = Option<Box<dyn AdminApi>>;

fn start_admin(
    admin: Option<AdminStarter>,
    config: &Config,
    plane: Arc<dyn ControlPlane>,
    inherited: Option<std::net::TcpListener>,
) -> io::Result<AdminGuard> {
    admin
        .map(|start| start(config, plane, inherited))
        .transpose()
}

/// The new process of an upgrade serves: the old one may stop.
fn took_over(inherited: Option<Inherited>) -> io::Result<()> {
    match inherited {
        Some(i) => {
            let old = i.old_pid;
            i.ready()?;
            upgrade::notify_systemd(true);
            tracing::info!("upgrade: serving in place of pid {old}");
        }
        None => upgrade::notify_systemd(false),
    }
    Ok(())
}

/// SIGUSR2: hands these sockets to a new process (`upgrade::begin`).
fn start_upgrade(listeners: io::Result<Vec<OwnedFd>>, admin: &AdminGuard) {
    upgrade::begin(listeners, admin.as_ref().map(|a| a.listener_fd()));
}

/// SIGTERM, the log line says whether an upgrade asked for it.
fn drain_reason() -> &'static str {
    if upgrade::handed_over() {
        "upgraded"
    } else {
        "SIGTERM"
    }
}

/// Runs the proxy until SIGTERM (graceful) or SIGINT, with the admin API
/// `admin` starts (none without); `announce` is called once it serves.
/// With `inherited`, this process is the new one of an upgrade and serves
/// on the sockets it got.
pub fn run(
    path: &Path,
    raw: RawConfig,
    config: Config,
    admin: Option<AdminStarter>,
    mut inherited: Option<Inherited>,
    announce: impl FnOnce(Started),
) -> io::Result<()> {
    if config.server.processes > 1 {
        return run_master(path, raw, config, admin, inherited, announce);
    }
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR2])?;
    let graceful = config.server.graceful_timeout;
    let (listeners, admin_listener) = match inherited.as_mut() {
        Some(i) => (std::mem::take(&mut i.listeners), i.admin.take()),
        None => (Vec::new(), None),
    };
    let server = Server::start_on(raw, config.clone(), Board::in_process(), 0, listeners)?;
    server.start_health_checks()?;
    let mut admin = start_admin(admin, &config, server.clone(), admin_listener)?;
    announce(Started {
        listen: server.local_addr,
        event_loops: config.server.workers,
        admin: admin.as_ref().map(|a| a.local_addr()),
        upgraded_from: inherited.as_ref().map(|i| i.old_pid),
    });
    took_over(inherited)?;
    for signal in signals.forever() {
        match signal {
            SIGHUP => reload(path, &*server, &admin),
            SIGUSR2 => start_upgrade(server.listener_fds(), &admin),
            SIGTERM => {
                tracing::info!("{}: draining for at most {graceful:?}", drain_reason());
                if upgrade::handed_over() {
                    admin = None; // the new process serves the admin API
                }
                server.drain(graceful);
                drop(admin);
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
    listeners: Vec<std::net::TcpListener>,
) -> io::Result<()> {
    let board = Board::shared(board_path, false)?;
    let slot = &board.processes[index.min(MAX_PROCESSES - 1)];
    let generation = board.generation.load(Acquire);
    let graceful = config.server.graceful_timeout;
    let server = Server::start_on(raw, config, board, index, listeners)?;
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
    /// Every worker's listening sockets, `loops` per worker in order
    /// (emptied when draining: nobody accepts on them any more).
    listeners: Mutex<Vec<std::net::TcpListener>>,
    current: Mutex<(RawConfig, Arc<Config>)>,
    children: Mutex<Vec<Option<Child>>>,
    /// Workers restarted after they died (`speedmimi_worker_restarts_total`).
    restarts: AtomicU64,
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
        let fds: Vec<i32> = {
            let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            let mine = listeners.iter().skip(index * self.loops).take(self.loops);
            mine.map(|l| l.as_raw_fd()).collect()
        };
        let list: Vec<String> = fds.iter().map(i32::to_string).collect();
        let mut command = Command::new(upgrade::exe()?);
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("--worker")
            .arg(index.to_string())
            .arg("--board")
            .arg(&self.board_path)
            .arg("--listen-fds")
            .arg(list.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: prctl and fcntl are async-signal-safe. A worker must not
        // outlive its master, and keeps its own listening sockets across
        // exec (every other descriptor is close-on-exec).
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                fds.iter().try_for_each(|&fd| upgrade::keep_across_exec(fd))
            });
        }
        command.spawn()
    }

    /// Copies of every listening socket, for an upgrade.
    fn listener_fds(&self) -> io::Result<Vec<OwnedFd>> {
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners
            .iter()
            .map(|l| Ok(l.try_clone()?.into()))
            .collect()
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
                    self.restarts.fetch_add(1, Relaxed);
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
        let mut s = snapshot::server(
            self.board,
            self.processes,
            self.loops,
            self.started,
            &self.meter,
        );
        s.worker_restarts = self.restarts.load(Relaxed);
        s
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
    mut inherited: Option<Inherited>,
    announce: impl FnOnce(Started),
) -> io::Result<()> {
    let processes = config.server.processes.min(MAX_PROCESSES);
    let loops = config
        .server
        .workers
        .clamp(1, crate::control::board::MAX_LOOPS);
    let (given, admin_listener) = match inherited.as_mut() {
        Some(i) => (std::mem::take(&mut i.listeners), i.admin.take()),
        None => (Vec::new(), None),
    };
    let listeners = listener::listeners_for(config.server.listen, processes * loops, given)?;
    // Port 0 resolved: the workers' configuration names the real port.
    config.server.listen = listeners[0].local_addr()?;
    raw.server.listen = config.server.listen.to_string();
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR2])?;
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
        loops,
        listeners: Mutex::new(listeners),
        current: Mutex::new((raw.clone(), Arc::new(config.clone()))),
        children: Mutex::new((0..processes).map(|_| None).collect()),
        restarts: AtomicU64::new(0),
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
    let mut admin = start_admin(admin, &config, master.clone(), admin_listener)?;
    announce(Started {
        listen: config.server.listen,
        event_loops: config.server.workers,
        admin: admin.as_ref().map(|a| a.local_addr()),
        upgraded_from: inherited.as_ref().map(|i| i.old_pid),
    });
    took_over(inherited)?;
    let graceful = config.server.graceful_timeout;
    loop {
        for signal in signals.pending() {
            match signal {
                SIGHUP => reload(path, &*master, &admin),
                SIGUSR2 => start_upgrade(master.listener_fds(), &admin),
                SIGTERM => {
                    tracing::info!("{}: workers drain for at most {graceful:?}", drain_reason());
                    if upgrade::handed_over() {
                        drop(admin.take()); // the new process serves the admin API
                    }
                    // The workers close theirs as they start draining.
                    master
                        .listeners
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
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
