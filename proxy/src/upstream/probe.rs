//! Active health checks: one prober per proxy (in the master when there are
//! worker processes) sends `GET health_check.path` to every backend of the
//! upstreams that have a `health_check`, on its own thread and tokio
//! runtime, never on an event loop. Its verdict per backend lives on the
//! board (`ActiveHealth`, beside the backend's counters), where every loop
//! of every process reads it with one atomic load (`UpstreamState::is_available`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use crate::config::{Config, HealthCheckConfig};
use crate::control::board::Board;

/// `ActiveHealth::state`: no check configured (the backend is in rotation
/// as far as active checks go), or the check's verdict.
pub const OFF: u32 = 0;
pub const UP: u32 = 1;
pub const DOWN: u32 = 2;

/// Largest response head read from a probe; a longer one is malformed.
const MAX_HEAD: usize = 8 * 1024;

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A status within `expect_status`.
    Ok,
    /// The connection was refused or failed.
    ConnectFailed,
    /// No whole response head within `timeout` (connect included).
    Timeout,
    /// A status outside `expect_status`.
    BadStatus,
    /// Not an HTTP/1.x response head, or closed before one.
    Malformed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::ConnectFailed,
        Outcome::Timeout,
        Outcome::BadStatus,
        Outcome::Malformed,
    ];

    /// The name the admin API and the metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::Timeout => "timeout",
            Outcome::BadStatus => "bad_status",
            Outcome::Malformed => "malformed_response",
        }
    }
}

/// One backend's active-check state on the board. Written only by the
/// prober's thread; read by anyone.
#[repr(C)]
#[derive(Debug)]
pub struct ActiveHealth {
    /// `OFF`, `UP` or `DOWN`.
    state: AtomicU32,
    /// Probes in a row that passed / failed (the other is 0).
    successes: AtomicU32,
    failures: AtomicU32,
    /// Status of the last probe (0: it got none).
    last_status: AtomicU32,
    /// `Outcome` index + 1 of the last probe (0: none yet).
    last_outcome: AtomicU32,
    last_unix_ms: AtomicU64,
    /// Probes by `Outcome` index, since the proxy started.
    probes: [AtomicU64; Outcome::ALL.len()],
}

/// A copy of `ActiveHealth` for the admin API and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveHealthSnapshot {
    /// "off", "up" or "down".
    pub state: &'static str,
    pub successes: u32,
    pub failures: u32,
    pub last_status: Option<u16>,
    pub last_outcome: Option<Outcome>,
    pub last_unix_ms: Option<u64>,
    /// Probes by outcome, in `Outcome::ALL` order.
    pub probes: [u64; Outcome::ALL.len()],
}

impl Default for ActiveHealthSnapshot {
    /// A backend without a check.
    fn default() -> Self {
        ActiveHealth::off().snapshot()
    }
}

impl ActiveHealth {
    /// No check: what a zeroed board holds.
    pub const fn off() -> ActiveHealth {
        ActiveHealth {
            state: AtomicU32::new(OFF),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            last_status: AtomicU32::new(0),
            last_outcome: AtomicU32::new(0),
            last_unix_ms: AtomicU64::new(0),
            probes: [const { AtomicU64::new(0) }; Outcome::ALL.len()],
        }
    }

    /// Whether the active check holds the backend out of rotation: the
    /// one load the request path pays.
    #[inline]
    pub fn is_down(&self) -> bool {
        self.state.load(Relaxed) == DOWN
    }

    /// A check starts: the backend counts as up until `fall` probes fail,
    /// so a restart or a reconfiguration never blackholes traffic.
    fn start(&self) {
        self.successes.store(0, Relaxed);
        self.failures.store(0, Relaxed);
        self.last_status.store(0, Relaxed);
        self.last_outcome.store(0, Relaxed);
        self.last_unix_ms.store(0, Relaxed);
        self.state.store(UP, Relaxed);
    }

    /// The check was removed (or the backend): back to passive health only.
    fn stop(&self) {
        self.state.store(OFF, Relaxed);
        self.successes.store(0, Relaxed);
        self.failures.store(0, Relaxed);
    }

    /// Counts a probe; returns the new state when it changed.
    fn record(&self, outcome: Outcome, status: u16, check: &HealthCheckConfig) -> Option<u32> {
        self.probes[outcome as usize].fetch_add(1, Relaxed);
        self.last_outcome.store(outcome as u32 + 1, Relaxed);
        self.last_status.store(u32::from(status), Relaxed);
        self.last_unix_ms.store(crate::server::unix_ms(), Relaxed);
        let state = self.state.load(Relaxed);
        // One writer (the prober's thread): load then store is enough.
        let bump = |n: &AtomicU32| {
            let v = n.load(Relaxed).saturating_add(1);
            n.store(v, Relaxed);
            v
        };
        let next = if outcome == Outcome::Ok {
            self.failures.store(0, Relaxed);
            let n = bump(&self.successes);
            (state == DOWN && n >= check.rise).then_some(UP)
        } else {
            self.successes.store(0, Relaxed);
            let n = bump(&self.failures);
            (state != DOWN && n >= check.fall).then_some(DOWN)
        };
        if let Some(s) = next {
            self.state.store(s, Relaxed);
        }
        next
    }

    pub fn snapshot(&self) -> ActiveHealthSnapshot {
        let last_outcome = self.last_outcome.load(Relaxed) as usize;
        ActiveHealthSnapshot {
            state: match self.state.load(Relaxed) {
                UP => "up",
                DOWN => "down",
                _ => "off",
            },
            successes: self.successes.load(Relaxed),
            failures: self.failures.load(Relaxed),
            last_status: match self.last_status.load(Relaxed) {
                0 => None,
                s => Some(s as u16),
            },
            last_outcome: last_outcome
                .checked_sub(1)
                .and_then(|i| Outcome::ALL.get(i).copied()),
            last_unix_ms: match self.last_unix_ms.load(Relaxed) {
                0 => None,
                t => Some(t),
            },
            probes: std::array::from_fn(|i| self.probes[i].load(Relaxed)),
        }
    }
}

/// Which backend a probe task watches: upstream name and address.
type Key = (String, SocketAddr);

struct Task {
    check: HealthCheckConfig,
    handle: AbortHandle,
}

/// The probe tasks, touched only on the prober's thread (the mutex is
/// for `Send`, never contended).
struct Tasks {
    board: &'static Board,
    running: HashMap<Key, Task>,
}

/// The prober: follows the configuration and, once some upstream has a
/// check, runs the probes on a thread and tokio runtime of its own (a
/// proxy without checks runs no extra thread). Dropping it stops every
/// probe; verdicts stay on the board as they were.
pub struct Prober {
    board: &'static Board,
    running: Mutex<Option<Running>>,
}

struct Running {
    runtime: tokio::runtime::Handle,
    tasks: Arc<Mutex<Tasks>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// Starts the checks `config` asks for.
    pub fn start(board: &'static Board, config: &Config) -> io::Result<Prober> {
        let prober = Prober {
            board,
            running: Mutex::new(None),
        };
        prober.try_update(config)?;
        Ok(prober)
    }

    /// Follows a new configuration: probes backends that gained a check,
    /// stops those that lost it (their verdict turns `off`), restarts those
    /// whose check changed (keeping the verdict). Returns at once; the
    /// change is made on the prober's thread, in the order of the calls.
    pub fn update(&self, config: &Config) {
        if let Err(e) = self.try_update(config) {
            tracing::error!("health checks not started: cannot start their thread: {e}");
        }
    }

    fn try_update(&self, config: &Config) -> io::Result<()> {
        let mut wanted: HashMap<Key, HealthCheckConfig> = HashMap::new();
        for (name, u) in &config.upstreams {
            if let Some(check) = &u.health_check {
                for b in &u.backends {
                    wanted.insert((name.clone(), b.addr), check.clone());
                }
            }
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let running = match &mut *running {
            Some(r) => r,
            None if wanted.is_empty() => return Ok(()),
            none => none.insert(Running::start(self.board)?),
        };
        let tasks = running.tasks.clone();
        // Applied on the runtime's thread: no probe is half-way through
        // recording while its task is aborted and its verdict reset. Spawns
        // made under the lock run in order (the runtime's queue is FIFO).
        running.runtime.spawn(async move {
            tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(wanted);
        });
        Ok(())
    }
}

impl Running {
    fn start(board: &'static Board) -> io::Result<Running> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("speedmimi-health".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Running {
            runtime: handle,
            tasks: Arc::new(Mutex::new(Tasks {
                board,
                running: HashMap::new(),
            })),
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Tasks {
    fn apply(&mut self, wanted: HashMap<Key, HealthCheckConfig>) {
        let board = self.board;
        let verdict = |key: &Key| -> &'static ActiveHealth {
            &board.backend(&key.0, &key.1.to_string()).active_health
        };
        let mut changed = Vec::new();
        self.running.retain(|key, task| match wanted.get(key) {
            Some(check) if *check == task.check => true,
            Some(_) => {
                task.handle.abort();
                changed.push(key.clone());
                false
            }
            None => {
                task.handle.abort();
                verdict(key).stop();
                tracing::info!("health check of {} {} stopped", key.0, key.1);
                false
            }
        });
        for (key, check) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let v = verdict(&key);
            if !changed.contains(&key) {
                v.start();
            }
            let handle = tokio::spawn(watch(key.clone(), check.clone(), v)).abort_handle();
            self.running.insert(key, Task { check, handle });
        }
    }
}

/// Probes one backend every `interval` for as long as the task lives.
async fn watch(key: Key, check: HealthCheckConfig, verdict: &'static ActiveHealth) {
    let (upstream, addr) = key;
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: speedmimi-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        check.path
    )
    .into_bytes();
    let (lo, hi) = check.expect_status;
    let expected = if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    };
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (outcome, status, why) =
            match tokio::time::timeout(check.timeout, probe(addr, &request)).await {
                Err(_) => (
                    Outcome::Timeout,
                    0,
                    format!("no response within {:?}", check.timeout),
                ),
                Ok(Err((outcome, why))) => (outcome, 0, why),
                Ok(Ok(s)) if (lo..=hi).contains(&s) => (Outcome::Ok, s, String::new()),
                Ok(Ok(s)) => (
                    Outcome::BadStatus,
                    s,
                    format!("status {s}, expected {expected}"),
                ),
            };
        match verdict.record(outcome, status, &check) {
            Some(DOWN) => tracing::warn!(
                "health check: {upstream} backend {addr} is down after {} failed probes of {} \
                 (last: {why})",
                check.fall,
                check.path
            ),
            Some(_) => tracing::warn!(
                "health check: {upstream} backend {addr} is up again after {} good probes of {}",
                check.rise,
                check.path
            ),
            None => {}
        }
    }
}

/// One probe: connect, send the request, read the response head; the
/// status code, or why there is none.
async fn probe(addr: SocketAddr, request: &[u8]) -> Result<u16, (Outcome, String)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| (Outcome::ConnectFailed, format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    // Closed with a reset once the head is read: a probe every interval to
    // every backend would otherwise leave a TIME_WAIT socket per probe.
    let _ = stream.set_zero_linger();
    stream
        .write_all(request)
        .await
        .map_err(|e| (Outcome::ConnectFailed, format!("sending the probe: {e}")))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| (Outcome::Malformed, format!("reading the response: {e}")))?;
        if n == 0 {
            return Err((
                Outcome::Malformed,
                "closed before a whole response head".into(),
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                return response
                    .code
                    .ok_or_else(|| (Outcome::Malformed, "no status code".into()))
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err((
                    Outcome::Malformed,
                    format!("response head over {MAX_HEAD} bytes"),
                ))
            }
            Err(e) => return Err((Outcome::Malformed, format!("not an HTTP response: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rise: u32, fall: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            path: "/healthz".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
            rise,
            fall,
            expect_status: (200, 399),
            host: None,
        }
    }

    /// `probe` against a listener that answers every connection with `answer`.
    fn probe_answered_by(answer: Vec<u8>) -> Result<u16, (Outcome, String)> {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(&answer);
            }
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        runtime.block_on(probe(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
    }

    #[test]
    fn probes_read_the_status_or_say_why_not() {
        let ok = probe_answered_by(b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n".to_vec());
        assert_eq!(ok, Ok(204));
        let garbage = probe_answered_by(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec());
        assert_eq!(garbage.unwrap_err().0, Outcome::Malformed);
        let cut = probe_answered_by(b"HTTP/1.1 200 OK\r\nX: y".to_vec());
        assert_eq!(cut.unwrap_err().0, Outcome::Malformed, "closed mid-head");
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 100, b'a');
        let huge = probe_answered_by(huge);
        assert_eq!(huge.unwrap_err().0, Outcome::Malformed, "head too large");
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down_and_rise_successes_bring_it_back() {
        let board = Board::in_process();
        let v = &board.backend("u", "127.0.0.1:1").active_health;
        let c = check(2, 3);
        assert_eq!(v.snapshot().state, "off");
        v.start();
        assert!(!v.is_down(), "starts up");
        assert_eq!(v.record(Outcome::Timeout, 0, &c), None);
        assert_eq!(v.record(Outcome::BadStatus, 500, &c), None);
        // A success in between starts the count again.
        assert_eq!(v.record(Outcome::Ok, 200, &c), None);
        assert_eq!(v.record(Outcome::ConnectFailed, 0, &c), None);
        assert_eq!(v.record(Outcome::Malformed, 0, &c), None);
        assert_eq!(v.record(Outcome::BadStatus, 503, &c), Some(DOWN));
        assert!(v.is_down());
        assert_eq!(v.record(Outcome::BadStatus, 503, &c), None, "already down");
        assert_eq!(v.record(Outcome::Ok, 200, &c), None);
        assert_eq!(v.record(Outcome::Ok, 204, &c), Some(UP));
        let s = v.snapshot();
        assert_eq!((s.state, s.successes, s.failures), ("up", 2, 0));
        assert_eq!(s.last_status, Some(204));
        assert_eq!(s.last_outcome, Some(Outcome::Ok));
        assert_eq!(s.probes, [3, 1, 1, 3, 1]);
        v.stop();
        assert_eq!(v.snapshot().state, "off");
        assert!(!v.is_down());
    }
}
