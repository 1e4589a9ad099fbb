//! The admin API (`admin.listen`): JSON endpoints over the control plane,
//! Prometheus `/metrics` and a CPU profile at `/debug/pprof/profile`.
//! It runs hyper on a current-thread tokio runtime on its own OS thread and
//! reaches the data plane only through `ControlPlane`, never an event loop.
//! Endpoints, errors and security: docs/admin.md.

mod api;
mod auth;
mod cross_site;
mod error;
mod metrics;
mod profile;
mod routes;
mod server;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::task::AbortHandle;

use crate::config::Config;
use crate::control::ControlPlane;

pub use error::ApiError;
pub use server::MAX_BODY;

/// Threads for handlers that may wait (`apply`, a profile); requests
/// beyond them queue.
const BLOCKING_THREADS: usize = 4;
/// How long stopping waits for requests in progress.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// What the handlers share.
pub(crate) struct State {
    plane: Arc<dyn ControlPlane>,
    token: RwLock<Option<String>>,
    /// Whether the listener is on a loopback address (else a token is required).
    loopback: bool,
    /// Configuration changes are read-modify-write: one at a time, so two
    /// concurrent patches cannot lose one another.
    changes: Mutex<()>,
    profiling: AtomicBool,
    stopping: AtomicBool,
    /// Connections accepted and not yet closed (`server::accept_loop`).
    open: Arc<AtomicUsize>,
}

impl State {
    fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the token; refuses to drop it on a non-loopback listener.
    fn set_token(&self, token: Option<String>) -> io::Result<()> {
        if token.is_none() && !self.loopback {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the admin API listens beyond loopback; it keeps its token",
            ));
        }
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
        Ok(())
    }

    fn lock_changes(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Acquire)
    }
}

/// The running admin API. Dropping it (or `shutdown`) stops it: the
/// listener closes and open admin connections are dropped.
pub struct AdminHandle {
    local_addr: SocketAddr,
    /// A copy of the listening socket, handed to a new process on upgrade.
    listener: std::net::TcpListener,
    state: Arc<State>,
    accept: AbortHandle,
    thread: Option<JoinHandle<()>>,
}

/// Starts the admin API on `listen` (port 0 picks a free port; see
/// `AdminHandle::local_addr`). With `token`, every request needs
/// `Authorization: Bearer TOKEN`. A non-loopback address without a token is
/// refused: this API can change the configuration.
pub fn spawn(
    listen: SocketAddr,
    token: Option<String>,
    plane: Arc<dyn ControlPlane>,
) -> io::Result<AdminHandle> {
    spawn_on(listen, token, plane, None)
}

/// `spawn`, serving on `inherited` (from the process being upgraded) when
/// it is on `listen`.
pub fn spawn_on(
    listen: SocketAddr,
    token: Option<String>,
    plane: Arc<dyn ControlPlane>,
    inherited: Option<std::net::TcpListener>,
) -> io::Result<AdminHandle> {
    if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "admin.token is empty; set a secret string or remove it",
        ));
    }
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the admin API would listen on {listen}, reachable from other hosts, without \
                 a token; set admin.token or listen on 127.0.0.1"
            ),
        ));
    }
    let fits = |l: &std::net::TcpListener| {
        l.local_addr().is_ok_and(|a| {
            a.ip() == listen.ip() && (listen.port() == 0 || listen.port() == a.port())
        })
    };
    let std_listener = match inherited {
        Some(l) if fits(&l) => l,
        _ => std::net::TcpListener::bind(listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("admin API cannot listen on {listen}: {e}; change admin.listen"),
            )
        })?,
    };
    let copy = std_listener.try_clone()?;
    std_listener.set_nonblocking(true)?;
    let local_addr = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("speedmimi-admin-pool")
        .build()?;
    let listener = {
        let _inside = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener)?
    };
    let state = Arc::new(State {
        plane,
        token: RwLock::new(token),
        loopback: listen.ip().is_loopback(),
        changes: Mutex::new(()),
        profiling: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        open: Arc::new(AtomicUsize::new(0)),
    });
    let accept = runtime.spawn(server::accept_loop(listener, state.clone()));
    let abort = accept.abort_handle();
    let open = state.open.clone();
    let thread = std::thread::Builder::new()
        .name("speedmimi-admin".into())
        .spawn(move || {
            // Ends when `AdminHandle` aborts the accept loop.
            let _ = runtime.block_on(accept);
            // Connections accepted before the stop get their answers: after
            // an upgrade the new process accepts from the same socket, and
            // shutting the runtime down drops its tasks unanswered (the
            // bench-upgrade poller saw "closed without response"). Bounded:
            // an idle keep-alive connection holds the stop STOP_WAIT at most.
            runtime.block_on(async {
                let until = tokio::time::Instant::now() + STOP_WAIT;
                while open.load(Acquire) > 0 && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            runtime.shutdown_timeout(STOP_WAIT);
        })?;
    tracing::info!("admin API on http://{local_addr}");
    Ok(AdminHandle {
        local_addr,
        listener: copy,
        state,
        accept: abort,
        thread: Some(thread),
    })
}

/// `spawn` with the addresses of a validated configuration: the
/// `lifecycle::AdminStarter` the binary hands to `lifecycle::run`.
pub fn start(
    config: &Config,
    plane: Arc<dyn ControlPlane>,
    inherited: Option<std::net::TcpListener>,
) -> io::Result<Box<dyn crate::lifecycle::AdminApi>> {
    let handle = spawn_on(
        config.admin.listen,
        config.admin.token.clone(),
        plane,
        inherited,
    )?;
    Ok(Box::new(handle))
}

const _: crate::lifecycle::AdminStarter = start;

impl crate::lifecycle::AdminApi for AdminHandle {
    fn local_addr(&self) -> SocketAddr {
        AdminHandle::local_addr(self)
    }

    fn set_token(&self, token: Option<String>) -> io::Result<()> {
        AdminHandle::set_token(self, token)
    }

    fn listener_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        Ok(self.listener.try_clone()?.into())
    }
}

impl AdminHandle {
    /// The bound address (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the bearer token, e.g. after SIGHUP changed `admin.token`
    /// (a change made through this API takes effect by itself). Removing
    /// the token of a non-loopback listener is refused.
    pub fn set_token(&self, token: Option<String>) -> io::Result<()> {
        self.state.set_token(token)
    }

    /// Stops the API and waits (about a second at most) for its thread.
    pub fn shutdown(self) {}

    fn stop(&mut self) {
        self.state.stopping.store(true, Release);
        self.accept.abort();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
