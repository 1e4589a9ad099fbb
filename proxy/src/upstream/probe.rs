//! Active health checks: one prober per proxy (in the master when there are
//! worker processes) sends `GET health_check.path` to every backend of the
//! upstreams that have a `health_check`, on its own thread and tokio
//! runtime, never on an event loop. Its verdict per backend lives on the
//! board (`ActiveHealth`, beside the backend's counters), where every loop
//! of every process reads it with one atomic load (`UpstreamState::is_available`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use crate::config::{Config, HealthCheckConfig};
use crate::control::active_health::{ActiveHealth, Outcome, DOWN};
use crate::control::board::Board;
use crate::tls::upstream::BackendTls;

/// Largest response head read from a probe; a longer one is malformed.
const MAX_HEAD: usize = 8 * 1024;

/// Which backend a probe task watches: upstream name and address.
type Key = (String, SocketAddr);

/// What a probe task sends and how: a change to either restarts it.
#[derive(Clone, PartialEq)]
struct Probe {
    check: HealthCheckConfig,
    /// The backend speaks TLS (`backends[i].tls`): so do its probes.
    tls: Option<BackendTls>,
}

struct Task {
    probe: Probe,
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
        let mut wanted: HashMap<Key, Probe> = HashMap::new();
        for (name, u) in &config.upstreams {
            if let Some(check) = &u.health_check {
                for b in &u.backends {
                    let probe = Probe {
                        check: check.clone(),
                        tls: b.tls.clone(),
                    };
                    wanted.insert((name.clone(), b.addr), probe);
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
    fn apply(&mut self, wanted: HashMap<Key, Probe>) {
        let board = self.board;
        let verdict = |key: &Key| -> &'static ActiveHealth {
            &board.backend(&key.0, &key.1.to_string()).active_health
        };
        let mut changed = Vec::new();
        self.running.retain(|key, task| match wanted.get(key) {
            Some(probe) if *probe == task.probe => true,
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
        for (key, probe) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let v = verdict(&key);
            if !changed.contains(&key) {
                v.start();
            }
            let handle = tokio::spawn(watch(key.clone(), probe.clone(), v)).abort_handle();
            self.running.insert(key, Task { probe, handle });
        }
    }
}

/// Probes one backend every `interval` for as long as the task lives.
async fn watch(key: Key, probe_of: Probe, verdict: &'static ActiveHealth) {
    let (upstream, addr) = key;
    let Probe { check, tls } = probe_of;
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
            match tokio::time::timeout(check.timeout, probe(addr, tls.as_ref(), &request)).await {
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

/// One probe: connect (and the TLS handshake, for a TLS backend), send
/// the request, read the response head; the status code, or why there is none.
async fn probe(
    addr: SocketAddr,
    tls: Option<&BackendTls>,
    request: &[u8],
) -> Result<u16, (Outcome, String)> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| (Outcome::ConnectFailed, format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    // Closed with a reset once the head is read: a probe every interval to
    // every backend would otherwise leave a TIME_WAIT socket per probe.
    let _ = stream.set_zero_linger();
    let Some(tls) = tls else {
        return exchange(stream, request).await;
    };
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let stream = connector
        .connect(tls.name.clone(), stream)
        .await
        .map_err(|e| (Outcome::ConnectFailed, format!("TLS handshake: {e}")))?;
    exchange(stream, request).await
}

/// Sends the probe's request and reads the status of the response head.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    request: &[u8],
) -> Result<u16, (Outcome, String)> {
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
        runtime.block_on(probe(
            addr,
            None,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        ))
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
}
