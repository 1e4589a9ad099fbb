//! The data plane: one mio event loop per thread, share-nothing. Each loop
//! owns a SO_REUSEPORT listener, its connections (a slab), its upstream
//! keep-alive pool, its buffers and its counters (in the shared board).
//!
//! The connection life cycle is described in `LIFECYCLE.md` beside this file.

// Shared by every phase.
mod conn;
mod event_loop;
mod routing;
mod sockio;
// The loop's own work: new connections, control-plane commands.
mod accept;
pub(crate) mod listener;
mod reconfig;
// A client connection, phase by phase (see LIFECYCLE.md).
mod attach;
mod deadlines;
mod drive;
mod exchange;
mod min_rate;
mod request;
mod response;
mod tls_io;
mod tunnel;
mod upstream_tls;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::access_log::AccessLog;
use crate::config::{Config, RawConfig};
use crate::control::board::{Board, MAX_LOOPS};
use crate::control::snapshot::{self, RateMeter};
use crate::control::{ApplyError, BackendSnapshot, ControlPlane, ServerSnapshot};
use crate::upstream::probe::Prober;

pub use event_loop::{EventLoop, LoopPlace};
pub use reconfig::LoopCommand;

/// How long a configuration change may take to reach every loop.
const APPLY_WAIT: Duration = Duration::from_secs(5);

struct LoopHandle {
    commands: mpsc::Sender<LoopCommand>,
    waker: Arc<mio::Waker>,
}

/// The running event loops of this process.
pub struct Server {
    pub local_addr: SocketAddr,
    board: &'static Board,
    loops: Vec<LoopHandle>,
    threads: Mutex<Vec<JoinHandle<io::Result<()>>>>,
    current: Mutex<(RawConfig, Arc<Config>)>,
    started: Instant,
    meter: RateMeter,
    /// Active health checks, when this process runs them (a lone process
    /// does; worker processes leave them to the master).
    prober: OnceLock<Prober>,
}

impl Server {
    /// Binds every loop's listener (port 0 resolves to one port shared by
    /// all loops) and starts the loops on their threads.
    pub fn start(
        raw: RawConfig,
        config: Config,
        board: &'static Board,
        process: usize,
    ) -> io::Result<Arc<Server>> {
        Server::start_on(raw, config, board, process, Vec::new())
    }

    /// Like `start`, on the `inherited` sockets first (`listener::listeners_for`).
    pub fn start_on(
        raw: RawConfig,
        config: Config,
        board: &'static Board,
        process: usize,
        inherited: Vec<std::net::TcpListener>,
    ) -> io::Result<Arc<Server>> {
        let workers = config.server.workers.clamp(1, MAX_LOOPS);
        // Every loop and worker process seals tickets with the board's keys.
        crate::tls::tickets::attach(&board.tls_tickets);
        let config = Arc::new(config);
        let listeners = listener::listeners_for(config.server.listen, workers, inherited)?;
        let local_addr = listeners[0].local_addr()?;
        let listeners = listeners.into_iter().map(mio::net::TcpListener::from_std);
        let open_connections = Arc::new(AtomicUsize::new(0));
        let access_log = match &config.server.access_log {
            Some(target) => Some(AccessLog::start(target).map_err(|e| {
                io::Error::other(format!("server.access_log: cannot open {target}: {e}"))
            })?),
            None => None,
        };
        let mut loops = Vec::new();
        let mut threads = Vec::new();
        for (i, listener) in listeners.enumerate() {
            let (tx, rx) = mpsc::channel();
            let mut event_loop = EventLoop::new(
                config.clone(),
                listener,
                board,
                LoopPlace {
                    process,
                    event_loop: i,
                },
                open_connections.clone(),
                rx,
                access_log.as_ref().map(AccessLog::for_loop),
            )?;
            loops.push(LoopHandle {
                commands: tx,
                waker: event_loop.waker(),
            });
            threads.push(
                std::thread::Builder::new()
                    .name(format!("loop-{i}"))
                    .spawn(move || event_loop.run())?,
            );
        }
        board.processes[process.min(board.processes.len() - 1)]
            .loops
            .store(workers as u32, std::sync::atomic::Ordering::Relaxed);
        Ok(Arc::new(Server {
            local_addr,
            board,
            loops,
            threads: Mutex::new(threads),
            current: Mutex::new((raw, config)),
            started: Instant::now(),
            meter: RateMeter::default(),
            prober: OnceLock::new(),
        }))
    }

    /// Runs the active health checks of the configuration in force, and of
    /// every configuration applied later (`upstream::probe`).
    pub fn start_health_checks(&self) -> io::Result<()> {
        let (_, config) = self.current();
        let prober = Prober::start(self.board, &config)?;
        let _ = self.prober.set(prober);
        Ok(())
    }

    fn current(&self) -> (RawConfig, Arc<Config>) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends `config` to every loop and waits until all have it.
    pub fn apply_config(&self, raw: RawConfig, config: Config) -> Result<(), ApplyError> {
        let (_, old) = self.current();
        refuse_restart_only_changes(&old, &config)?;
        if config.server.listen != old.server.listen {
            // Refuse up front rather than leave some loops on each address.
            listener::bind_reuseport(config.server.listen).map_err(|e| ApplyError {
                field: Some("server.listen".into()),
                message: format!("cannot listen on {}: {e}", config.server.listen),
            })?;
        }
        let config = Arc::new(config);
        let (done_tx, done_rx) = mpsc::channel();
        for handle in &self.loops {
            let command = LoopCommand::Apply {
                config: config.clone(),
                done: done_tx.clone(),
            };
            if handle.commands.send(command).is_ok() {
                let _ = handle.waker.wake();
            }
        }
        let deadline = Instant::now() + APPLY_WAIT;
        for _ in &self.loops {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(ApplyError {
                        field: None,
                        message: format!("an event loop could not apply it: {e}"),
                    })
                }
                Err(_) => {
                    return Err(ApplyError {
                        field: None,
                        message: "an event loop did not confirm within 5 s".into(),
                    })
                }
            }
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: concurrent changes reach the prober in the order
        // they take effect.
        if let Some(prober) = self.prober.get() {
            prober.update(&config);
        }
        *current = (raw, config);
        Ok(())
    }

    /// Stops accepting and lets in-flight requests finish, at most `timeout`.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for handle in &self.loops {
            if handle
                .commands
                .send(LoopCommand::Drain { deadline })
                .is_ok()
            {
                let _ = handle.waker.wake();
            }
        }
    }

    /// A copy of every loop's listening socket, for a new process to serve
    /// on (`upgrade.rs`).
    pub fn listener_fds(&self) -> io::Result<Vec<std::os::fd::OwnedFd>> {
        let (tx, rx) = mpsc::channel();
        for handle in &self.loops {
            if handle
                .commands
                .send(LoopCommand::ListenerFd { reply: tx.clone() })
                .is_ok()
            {
                let _ = handle.waker.wake();
            }
        }
        let deadline = Instant::now() + APPLY_WAIT;
        let mut fds = Vec::with_capacity(self.loops.len());
        for _ in &self.loops {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(Some(fd))) => fds.push(fd),
                Ok(Ok(None)) => {} // draining: its socket is closed
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("an event loop did not answer within 5 s")),
            }
        }
        Ok(fds)
    }

    /// Blocks until every loop has stopped.
    pub fn wait(&self) -> io::Result<()> {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            t.join()
                .map_err(|_| io::Error::other("event loop panicked"))??;
        }
        Ok(())
    }
}

/// Settings a running process cannot change: named so the caller knows
/// a restart is needed.
pub fn refuse_restart_only_changes(old: &Config, new: &Config) -> Result<(), ApplyError> {
    let restart = |field: &str, what: &str| {
        Err(ApplyError {
            field: Some(field.into()),
            message: format!("{what} cannot change while running; restart the proxy"),
        })
    };
    if old.server.workers != new.server.workers {
        return restart("server.workers", "the number of event loops");
    }
    if old.server.processes != new.server.processes {
        return restart("server.processes", "the number of worker processes");
    }
    if new.server.max_header_size > old.server.max_header_size {
        return restart(
            "server.max_header_size",
            "a larger head limit (buffer size)",
        );
    }
    if old.server.access_log != new.server.access_log {
        return restart("server.access_log", "the access log's destination");
    }
    if old.admin.listen != new.admin.listen {
        return restart("admin.listen", "the admin address");
    }
    Ok(())
}

impl ControlPlane for Server {
    fn raw_config(&self) -> RawConfig {
        self.current().0
    }

    fn apply(&self, raw: RawConfig, config: Config) -> Result<(), ApplyError> {
        self.apply_config(raw, config)
    }

    fn server(&self) -> ServerSnapshot {
        snapshot::server(self.board, 0, self.loops.len(), self.started, &self.meter)
    }

    fn backends(&self, upstream: &str) -> Option<Vec<BackendSnapshot>> {
        snapshot::backends(self.board, &self.current().1, upstream)
    }

    fn upstreams(&self) -> Vec<String> {
        self.current().1.upstreams.keys().cloned().collect()
    }
}
