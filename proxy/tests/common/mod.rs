//! Test harness: the real `speedmimi` binary (killed on drop), test backends
//! on std sockets whose behaviour is chosen by the request path, and a raw
//! HTTP/1.1 client that reads exactly one response and tells whether the
//! connection was closed. Every wait is bounded by socket timeouts.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod pki;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single socket read may block before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- proxy --

/// A running `speedmimi` process; killed when dropped.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    /// Later stdout lines (the `admin on` line), read on the stdout thread.
    lines: Mutex<std::sync::mpsc::Receiver<String>>,
    admin: std::sync::OnceLock<SocketAddr>,
    _config: tempfile::NamedTempFile,
    /// The proxy's stderr; shown when a test fails.
    log: tempfile::NamedTempFile,
}

impl Proxy {
    /// Starts the proxy on `yaml` and waits for its `listening on` line.
    pub fn start(yaml: &str) -> Proxy {
        Proxy::start_under(&[], yaml)
    }

    /// Starts the proxy through `wrapper`, a command that ends by executing
    /// the one after it, e.g. `prlimit --nofile=64:64 --` (the pid is then
    /// the proxy's own).
    pub fn start_under(wrapper: &[&str], yaml: &str) -> Proxy {
        let mut file = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("temp config file");
        file.write_all(yaml.as_bytes()).expect("write config");
        file.flush().expect("flush config");
        let log = tempfile::NamedTempFile::new().expect("temp log file");
        let binary = env!("CARGO_BIN_EXE_speedmimi");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let mut child = command
            .arg("--config")
            .arg(file.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("spawn speedmimi");
        let stdout = child.stdout.take().expect("stdout");
        // Read stdout on a thread so a proxy that never prints cannot hang
        // the test. The first line is waited for here; later ones (`admin
        // on ADDR`) only when a test asks for them (`admin_addr`).
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                let eof = !matches!(out.read_line(&mut line), Ok(n) if n > 0);
                // An empty line tells `start` the proxy exited before printing.
                // Keep reading after the receiver is gone: the pipe stays drained.
                let _ = tx.send(line);
                if eof {
                    return;
                }
            }
        });
        let line = match rx.recv_timeout(IO_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let err = std::fs::read_to_string(log.path()).unwrap_or_default();
                panic!("speedmimi printed nothing within {IO_TIMEOUT:?}\nconfig:\n{yaml}\nstderr:\n{err}");
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let status = child.wait();
            let err = std::fs::read_to_string(log.path()).unwrap_or_default();
            panic!("speedmimi did not start (line {line:?}, {status:?})\nconfig:\n{yaml}\nstderr:\n{err}");
        };
        Proxy {
            child,
            addr,
            lines: Mutex::new(rx),
            admin: std::sync::OnceLock::new(),
            _config: file,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin API's address from the proxy's `admin on ADDR` line (the
    /// configuration must set `admin.listen`, as `Cfg` does), waited for at
    /// most IO_TIMEOUT.
    pub fn admin_addr(&self) -> SocketAddr {
        *self.admin.get_or_init(|| {
            let lines = self.lines.lock().unwrap();
            let until = Instant::now() + IO_TIMEOUT;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                let line = lines
                    .recv_timeout(left)
                    .unwrap_or_else(|e| panic!("no `admin on` line from speedmimi: {e}"));
                if let Some(addr) = line
                    .strip_prefix("admin on ")
                    .and_then(|a| a.trim().parse().ok())
                {
                    return addr;
                }
            }
        })
    }

    /// The next stdout line starting with `prefix` (after those already
    /// read), waited for at most `timeout`.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let lines = self.lines.lock().unwrap();
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.is_empty() => return None, // stdout closed
                Ok(line) if line.starts_with(prefix) => return Some(line.trim_end().to_string()),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// A client of the proxy's admin API.
    /// An unlabelled sample of the proxy's `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.admin().get("/metrics").body;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    pub fn admin(&self) -> Admin {
        Admin {
            addr: self.admin_addr(),
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `KILL`, ...) to the proxy.
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// Replaces the configuration file's contents (for a SIGHUP reload).
    pub fn rewrite_config(&self, yaml: &str) {
        std::fs::write(self._config.path(), yaml).expect("rewrite config");
    }

    /// Waits up to `timeout` for the proxy to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > until {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The proxy is still running (it did not crash).
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("speedmimi exited: {status}");
        }
    }

    /// Resident memory of the proxy process, in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The bodies (the ids of the backends that answered) of `n` sequential
    /// `GET /` on one keep-alive connection, each asserted 200.
    pub fn answer_ids(&self, n: usize) -> Vec<String> {
        let mut c = self.client();
        (0..n)
            .map(|_| {
                let r = c.get("/");
                assert_eq!(r.status, 200, "{}", r.head);
                r.text()
            })
            .collect()
    }

    /// What the proxy wrote to stderr so far (its log, at `warn`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Logs are noise when all is well; on failure they tell what happened.
        if thread::panicking() {
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(8192)..];
            eprintln!("---- speedmimi stderr (last 8 KiB) ----\n{tail}");
        }
    }
}

/// Sends a signal by name with kill(1) (no unsafe code in the tests).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Processes whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// VmRSS of a process from /proc, in bytes (0 when it is gone).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples a process's RSS on a thread until stopped; keeps the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_of(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    /// Stops sampling and returns the peak RSS in bytes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

// --------------------------------------------------------------- config --

/// A proxy configuration with one upstream `default` and the route
/// `default`; fields are YAML fragments so a test can set anything.
pub struct Cfg {
    pub backends: Vec<(SocketAddr, u32)>,
    pub balancer: &'static str,
    pub max_conn: u64,
    pub header_timeout: &'static str,
    pub max_header_size: u64,
    pub keepalive: u32,
    pub upstream_read_timeout: &'static str,
    pub max_fails: u32,
    pub fail_timeout: &'static str,
    pub retries: u32,
    /// `upstreams.default.max_conns` (0: no limit) and `queue_timeout`.
    pub max_conns: u32,
    /// `max_conns: auto` instead of the number (the proxy's default).
    pub max_conns_auto: bool,
    pub queue_timeout: &'static str,
    /// Extra YAML under `upstreams:` (indented two spaces).
    pub extra_upstreams: String,
    /// Extra YAML under `routing:` (indented two spaces).
    pub extra_routes: String,
    /// Extra YAML under `server:` (indented two spaces).
    pub extra_server: String,
}

impl Cfg {
    pub fn new(backends: &[SocketAddr]) -> Cfg {
        Cfg {
            backends: backends.iter().map(|&a| (a, 1)).collect(),
            balancer: "round_robin",
            max_conn: 10_000,
            header_timeout: "10s",
            max_header_size: 16384,
            keepalive: 64,
            upstream_read_timeout: "10s",
            max_fails: 100,
            fail_timeout: "10s",
            retries: 2,
            max_conns: 0,
            max_conns_auto: false,
            queue_timeout: "2s",
            extra_upstreams: String::new(),
            extra_routes: String::new(),
            extra_server: String::new(),
        }
    }

    pub fn weighted(backends: &[(SocketAddr, u32)]) -> Cfg {
        let mut c = Cfg::new(&[]);
        c.backends = backends.to_vec();
        c
    }

    pub fn balancer(mut self, name: &'static str) -> Cfg {
        self.balancer = name;
        self
    }

    /// The YAML text. The admin API gets port 0 so that tests running in
    /// parallel never fight over its default port.
    pub fn yaml(&self) -> String {
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|(a, w)| format!("{{ addr: \"{a}\", weight: {w} }}"))
            .collect();
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  workers: 1\n  max_conn: {max_conn}\n  \
             read_timeout: 10s\n  write_timeout: 10s\n  idle_timeout: 30s\n  \
             header_timeout: {ht}\n  max_header_size: {mhs}\n{es}\
             admin:\n  listen: \"127.0.0.1:0\"\n\
             upstreams:\n  default:\n    backends: [ {backends} ]\n    keepalive: {ka}\n    \
             keepalive_timeout: 30s\n    connect_timeout: 2s\n    read_timeout: {rt}\n    \
             max_fails: {mf}\n    fail_timeout: {ft}\n    retries: {retries}\n    \
             max_conns: {mc}\n    queue_timeout: {qt}\n{eu}\
             routing:\n  default: {{ upstream: default, load_balancer: {lb} }}\n{er}",
            max_conn = self.max_conn,
            ht = self.header_timeout,
            mhs = self.max_header_size,
            es = self.extra_server,
            backends = backends.join(", "),
            ka = self.keepalive,
            rt = self.upstream_read_timeout,
            mf = self.max_fails,
            ft = self.fail_timeout,
            retries = self.retries,
            mc = if self.max_conns_auto {
                "auto".to_string()
            } else {
                self.max_conns.to_string()
            },
            qt = self.queue_timeout,
            eu = self.extra_upstreams,
            lb = self.balancer,
            er = self.extra_routes,
        )
    }

    pub fn start(&self) -> Proxy {
        Proxy::start(&self.yaml())
    }
}

/// A listener whose accept queue is full and never drained: new connects
/// to it hang (the kernel drops their SYNs), as with an unreachable host.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<socket2::Socket>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        l.listen(0).expect("listen");
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        // Fill the queue; connects past it stay in SYN-SENT.
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            fillers.push(s);
        }
        thread::sleep(Duration::from_millis(50));
        Blackhole {
            addr,
            _listener: l,
            _fillers: fillers,
        }
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

// -------------------------------------------------------------- backend --

/// A request as the backend received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// The head exactly as it arrived, request line included.
    pub head: String,
    pub headers: Vec<(String, String)>,
    /// The first 64 KiB of the body.
    pub body: Vec<u8>,
    pub body_len: u64,
    /// Every sampled body byte matched `pattern_byte`.
    pub body_pattern_ok: bool,
    pub chunked: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The byte at offset `i` of every large test body.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// A keep-alive HTTP/1.1 test server. It answers `200` with its id as the
/// body and an `X-Backend` header; the path picks other behaviours:
///
/// | path                 | answer                                                  |
/// |----------------------|---------------------------------------------------------|
/// | `/echo`              | body: id, newline, the request head as received         |
/// | `/upload`            | body: `len=N pattern=ok|bad chunked=B`                  |
/// | `/slow/MS`           | waits MS milliseconds first                              |
/// | `/hold`              | waits until `release()` (at most 10 s)                   |
/// | `/trickle/N`         | N pieces of 100 bytes, 20 ms apart (Content-Length)      |
/// | `/download/N`        | N pattern bytes with Content-Length                      |
/// | `/chunked/N`         | N pattern bytes, chunked in pieces of at most 1000       |
/// | `/until-close/N`     | N pattern bytes, no length, then close                   |
/// | `/status/CODE`       | that status; no body for 204 and 304                     |
/// | `/reset`             | resets the connection without answering                  |
/// | `/reset-mid`         | head with Content-Length 100000, 1000 bytes, then reset  |
/// | `/close-mid`         | head with Content-Length 100000, 1000 bytes, then FIN    |
/// | `/then-close`       | a keep-alive answer, then a close 50 ms later            |
/// | `/close-after/MS`    | a keep-alive answer, then a close MS ms later            |
/// | `/cl-te`            | Content-Length 3 and chunked `hello` together            |
/// | `/bad-cl`           | two differing Content-Length headers                     |
/// | `/304-with-length`   | 304 with Content-Length 100 and (rightly) no body        |
/// | `/big-head/N`        | a response head with an N-byte header                    |
/// | `/server-close`      | 200 with the backend's own `Connection: close`           |
/// | `/http10`            | an HTTP/1.0 answer with Content-Length, then close       |
/// | `/drip/MS`           | head, then 3 pieces of 100 bytes MS ms apart             |
/// | `/early-reply`       | 413 and close before reading the request body            |
/// | `/extra/MS`          | a 1-byte answer, then MS ms later a stray second answer  |
/// | `/te-gzip`           | `Transfer-Encoding: gzip, chunked` body `GZIPD`          |
/// | `/random/SEED`       | a valid response with a few random byte mutations, close |
/// | `/chunked-cut`       | a chunked body cut before its last chunk, then FIN      |
/// | `/early-hints`       | 103, then the normal answer                              |
/// | `/trailers`          | chunked `hello` with a chunk extension and a trailer     |
/// | `/garbage`           | bytes that are not HTTP, then close                       |
/// | `/hop`               | hop-by-hop response headers beside `X-End: 1`            |
/// | `/upgrade`           | 101, `welcome`, then echoes every byte                    |
///
/// `HEAD` gets the head of the GET answer without its body. A request with
/// `Expect: 100-continue` gets `100 Continue` before the body is read.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    state: Arc<BackendState>,
}

struct BackendState {
    id: String,
    delay: Duration,
    connections: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
    active: AtomicUsize,
    released: AtomicBool,
    received: Mutex<Vec<Received>>,
    /// Set by `stop`: the accept loop ends and drops the listener.
    stopping: AtomicBool,
    /// A handle on every open connection, by accept number, for `stop` to
    /// shut down (removed when its connection ends, so it never holds one
    /// open).
    streams: Mutex<std::collections::HashMap<usize, TcpStream>>,
}

impl Backend {
    pub fn start(id: &str) -> Backend {
        Backend::start_with_delay(id, Duration::ZERO)
    }

    /// A backend on a given address (e.g. one that was down until now).
    pub fn start_on(id: &str, addr: SocketAddr) -> Backend {
        Backend::listen(
            id,
            Duration::ZERO,
            TcpListener::bind(addr).expect("bind backend"),
        )
    }

    /// A backend that waits `delay` before every answer.
    pub fn start_with_delay(id: &str, delay: Duration) -> Backend {
        Backend::listen(
            id,
            delay,
            TcpListener::bind("127.0.0.1:0").expect("bind backend"),
        )
    }

    fn listen(id: &str, delay: Duration, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(BackendState {
            id: id.to_string(),
            delay,
            connections: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            received: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            streams: Mutex::new(std::collections::HashMap::new()),
        });
        let st = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if st.stopping.load(Ordering::SeqCst) {
                    return; // drops the listener: connects are refused from now on
                }
                let n = st.connections.fetch_add(1, Ordering::SeqCst);
                if let Ok(handle) = stream.try_clone() {
                    st.streams.lock().unwrap().insert(n, handle);
                }
                let st = st.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &st);
                    st.streams.lock().unwrap().remove(&n);
                    st.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            id: id.to_string(),
            addr,
            state,
        }
    }

    /// Stops the backend as a process exit would: the listening socket
    /// closes (connects are refused) and every open connection is closed.
    /// Returns its address, for `Backend::start_on` to start it again.
    pub fn stop(self) -> SocketAddr {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        let until = Instant::now() + IO_TIMEOUT;
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
            assert!(
                Instant::now() < until,
                "backend {} still accepts",
                self.addr
            );
            thread::sleep(Duration::from_millis(5));
        }
        // The accept loop has ended: no connection can be added any more.
        for s in self.state.streams.lock().unwrap().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections that ended (closed by either side).
    pub fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// Request heads received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests being handled right now.
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Lets every `/hold` request answer.
    pub fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
    }

    /// The requests received so far (each with its first 64 KiB of body).
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the backend received a request")
    }
}

fn serve(stream: TcpStream, st: &BackendState) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let Some(head) = read_head(&mut r)? else {
            return Ok(());
        };
        st.requests.fetch_add(1, Ordering::SeqCst);
        st.active.fetch_add(1, Ordering::SeqCst);
        let res = handle(&head, &mut r, &mut out, st);
        st.active.fetch_sub(1, Ordering::SeqCst);
        if !res? {
            let _ = out.shutdown(Shutdown::Write);
            // Drain so our close is a FIN, not a reset over unread bytes.
            let mut sink = [0u8; 4096];
            let _ = r.get_ref().set_read_timeout(Some(Duration::from_secs(2)));
            while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
            return Ok(());
        }
    }
}

/// Reads a head up to the blank line; `None` on a clean EOF before it.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"));
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > 1 << 20 {
            return Err(io::Error::other("head too large"));
        }
    }
}

fn parse_headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Reads a body of `len` bytes (or chunked), keeping the first 64 KiB and
/// checking a sample of bytes against `pattern_byte`.
fn read_body(r: &mut impl BufRead, framing: BodyFraming, rec: &mut Received) -> io::Result<()> {
    let consume = |r: &mut dyn BufRead, mut n: u64, rec: &mut Received| -> io::Result<()> {
        while n > 0 {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
            }
            let take = buf.len().min(n as usize);
            let room = (64 * 1024usize).saturating_sub(rec.body.len());
            rec.body.extend_from_slice(&buf[..take.min(room)]);
            // Sample every 997th byte: cheap, and catches shifted or lost data.
            let start = rec.body_len;
            let mut i = (997 - start % 997) % 997;
            while (i as usize) < take {
                if buf[i as usize] != pattern_byte(start + i) {
                    rec.body_pattern_ok = false;
                }
                i += 997;
            }
            rec.body_len += take as u64;
            r.consume(take);
            n -= take as u64;
        }
        Ok(())
    };
    match framing {
        BodyFraming::None => Ok(()),
        BodyFraming::Length(n) => consume(r, n, rec),
        BodyFraming::Chunked => loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // trailers up to the blank line
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    if t == "\r\n" || t.is_empty() {
                        return Ok(());
                    }
                }
            }
            consume(r, size, rec)?;
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        },
    }
}

enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// Handles one request; returns whether the connection stays open.
fn handle(
    head: &str,
    r: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    st: &BackendState,
) -> io::Result<bool> {
    let mut parts = head.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("");
    let headers = parse_headers(head);
    let mut rec = Received {
        method: method.clone(),
        target: target.clone(),
        head: head.to_string(),
        headers,
        body: Vec::new(),
        body_len: 0,
        body_pattern_ok: true,
        chunked: false,
    };
    let te = rec.header("transfer-encoding").map(str::to_ascii_lowercase);
    let framing = if te.is_some_and(|t| t.contains("chunked")) {
        rec.chunked = true;
        BodyFraming::Chunked
    } else if let Some(cl) = rec.header("content-length") {
        BodyFraming::Length(cl.parse().map_err(|_| io::Error::other("bad CL"))?)
    } else {
        BodyFraming::None
    };
    if rec
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    if target == "/early-reply" {
        // Answers before reading the body, as a backend refusing an upload does.
        st.received.lock().unwrap().push(rec);
        out.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(false);
    }
    read_body(r, framing, &mut rec)?;
    st.received.lock().unwrap().push(rec.clone());
    let client_close = version == "HTTP/1.0"
        || rec
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
    if !st.delay.is_zero() {
        thread::sleep(st.delay);
    }
    let id = &st.id;
    let path = target.split('?').next().unwrap_or("");
    let mut seg = path.trim_start_matches('/').splitn(2, '/');
    let (verb, arg) = (seg.next().unwrap_or(""), seg.next().unwrap_or(""));
    let num = arg.parse::<u64>().unwrap_or(0);
    let head_only = method == "HEAD";
    let conn_hdr = if client_close {
        "Connection: close\r\n"
    } else {
        ""
    };
    let simple = |out: &mut TcpStream, status: &str, body: &[u8]| -> io::Result<bool> {
        let h = format!(
            "HTTP/1.1 {status}\r\nX-Backend: {id}\r\nContent-Length: {}\r\n{conn_hdr}\r\n",
            body.len()
        );
        let mut msg = h.into_bytes();
        if !head_only {
            msg.extend_from_slice(body);
        }
        out.write_all(&msg)?;
        Ok(!client_close)
    };
    match verb {
        "echo" => {
            let mut body = format!("{id}\n{head}").into_bytes();
            body.extend_from_slice(&rec.body);
            simple(out, "200 OK", &body)
        }
        "upload" => {
            let body = format!(
                "len={} pattern={} chunked={}",
                rec.body_len,
                if rec.body_pattern_ok { "ok" } else { "bad" },
                rec.chunked
            );
            simple(out, "200 OK", body.as_bytes())
        }
        "then-close" | "close-after" => {
            // A keep-alive answer, then the backend drops the connection
            // anyway (as a backend whose idle timeout fired would).
            simple(out, "200 OK", id.as_bytes())?;
            thread::sleep(Duration::from_millis(if verb == "then-close" {
                50
            } else {
                num
            }));
            Ok(false)
        }
        "cl-te" => {
            // Both framings: the chunked coding wins (RFC 9112 §6.3) and the
            // connection must not be reused.
            out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n",
            )?;
            Ok(!client_close)
        }
        "bad-cl" => {
            out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            )?;
            Ok(false)
        }
        "304-with-length" => {
            // A 304 may carry the length of the representation; no body follows.
            out.write_all(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n")?;
            Ok(!client_close)
        }
        "big-head" => {
            let h = format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: {}\r\n\r\n{id}",
                "h".repeat(num as usize),
                id.len()
            );
            out.write_all(h.as_bytes())?;
            Ok(!client_close)
        }
        "server-close" => {
            let h = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{id}",
                id.len()
            );
            out.write_all(h.as_bytes())?;
            Ok(false)
        }
        "http10" => {
            let h = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{id}",
                id.len()
            );
            out.write_all(h.as_bytes())?;
            Ok(false)
        }
        "drip" => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n")?;
            for i in 0..3u64 {
                thread::sleep(Duration::from_millis(num));
                let piece: Vec<u8> = (i * 100..(i + 1) * 100).map(pattern_byte).collect();
                out.write_all(&piece)?;
            }
            Ok(!client_close)
        }
        "extra" => {
            // One byte of body as announced, then (MS ms later) bytes that
            // look like a second response: a desync the proxy must not pass on.
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
            let stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!";
            if num == 0 {
                // One write: both arrive in the same segment.
                out.write_all(&[&answer[..], &stray[..]].concat())?;
            } else {
                out.write_all(answer)?;
                thread::sleep(Duration::from_millis(num));
                out.write_all(stray)?;
            }
            Ok(true)
        }
        "te-gzip" => {
            // A transfer coding besides chunked: the client must learn of it.
            out.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nGZIPD\r\n0\r\n\r\n",
            )?;
            Ok(!client_close)
        }
        "random" => {
            // A response head that starts right and goes wrong: fuzzing
            // the proxy's response parser with a reproducible sequence.
            let mut x = num.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let templates: [&[u8]; 4] = [
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            ];
            let mut bytes = templates[(next() % 4) as usize].to_vec();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[i] = next() as u8,
                    1 => {
                        bytes.insert(i, b"\r\n:; \t0fF-\0"[(next() % 11) as usize]);
                    }
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            out.write_all(&bytes)?;
            thread::sleep(Duration::from_millis(20));
            Ok(false)
        }
        "chunked-cut" => {
            // A chunked body that stops before its last chunk: the backend left.
            out.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")?;
            thread::sleep(Duration::from_millis(50));
            Ok(false)
        }
        "early-hints" => {
            out.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")?;
            simple(out, "200 OK", id.as_bytes())
        }
        "trailers" => {
            out.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
                  5;ext=1\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n",
            )?;
            Ok(!client_close)
        }
        "slow" => {
            thread::sleep(Duration::from_millis(num));
            simple(out, "200 OK", id.as_bytes())
        }
        "hold" => {
            let until = Instant::now() + IO_TIMEOUT;
            while !st.released.load(Ordering::SeqCst) && Instant::now() < until {
                thread::sleep(Duration::from_millis(5));
            }
            simple(out, "200 OK", id.as_bytes())
        }
        "trickle" => {
            let h = format!(
                "HTTP/1.1 200 OK\r\nX-Backend: {id}\r\nContent-Length: {}\r\n{conn_hdr}\r\n",
                num * 100
            );
            out.write_all(h.as_bytes())?;
            for i in 0..num {
                thread::sleep(Duration::from_millis(20));
                let piece: Vec<u8> = (i * 100..(i + 1) * 100).map(pattern_byte).collect();
                out.write_all(&piece)?;
            }
            Ok(!client_close)
        }
        "download" | "until-close" | "chunked" => {
            let mut h = format!("HTTP/1.1 200 OK\r\nX-Backend: {id}\r\n");
            match verb {
                "download" => h.push_str(&format!("Content-Length: {num}\r\n{conn_hdr}")),
                "chunked" => h.push_str(&format!("Transfer-Encoding: chunked\r\n{conn_hdr}")),
                _ => h.push_str("Connection: close\r\n"),
            }
            h.push_str("\r\n");
            out.write_all(h.as_bytes())?;
            if head_only {
                return Ok(verb != "until-close" && !client_close);
            }
            let piece = if verb == "chunked" { 1000 } else { 256 * 1024 };
            let block: Vec<u8> = (0..piece as u64 + 251).map(pattern_byte).collect();
            let mut sent = 0u64;
            while sent < num {
                let n = (num - sent).min(piece as u64) as usize;
                let off = (sent % 251) as usize;
                let data = &block[off..off + n];
                if verb == "chunked" {
                    let mut c = format!("{n:x}\r\n").into_bytes();
                    c.extend_from_slice(data);
                    c.extend_from_slice(b"\r\n");
                    out.write_all(&c)?;
                } else {
                    out.write_all(data)?;
                }
                sent += n as u64;
            }
            if verb == "chunked" {
                out.write_all(b"0\r\n\r\n")?;
                return Ok(!client_close);
            }
            Ok(verb == "download" && !client_close)
        }
        "status" => {
            let code = num as u16;
            let reason = match code {
                204 => "No Content",
                304 => "Not Modified",
                404 => "Not Found",
                500 => "Internal Server Error",
                _ => "Whatever",
            };
            if code == 204 || code == 304 {
                let h = format!("HTTP/1.1 {code} {reason}\r\nX-Backend: {id}\r\n{conn_hdr}\r\n");
                out.write_all(h.as_bytes())?;
                Ok(!client_close)
            } else {
                simple(out, &format!("{code} {reason}"), id.as_bytes())
            }
        }
        "reset" => {
            reset(out);
            Err(io::Error::other("reset on purpose"))
        }
        "reset-mid" | "close-mid" => {
            let h = format!("HTTP/1.1 200 OK\r\nX-Backend: {id}\r\nContent-Length: 100000\r\n\r\n");
            out.write_all(h.as_bytes())?;
            let piece: Vec<u8> = (0..1000).map(pattern_byte).collect();
            out.write_all(&piece)?;
            thread::sleep(Duration::from_millis(50));
            if verb == "reset-mid" {
                reset(out);
                return Err(io::Error::other("reset on purpose"));
            }
            Ok(false)
        }
        "garbage" => {
            out.write_all(b"this is not http at all\r\n\r\n")?;
            Ok(false)
        }
        "hop" => {
            let body = id.as_bytes();
            let h = format!(
                "HTTP/1.1 200 OK\r\nX-Backend: {id}\r\nConnection: X-Private\r\nX-Private: 1\r\n\
                 Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\n\
                 Upgrade: h2c\r\nX-End: 1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            out.write_all(h.as_bytes())?;
            out.write_all(body)?;
            Ok(!client_close)
        }
        "upgrade" => {
            out.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nwelcome",
            )?;
            // Echo until the peer closes; bytes already buffered come first.
            let mut buf = [0u8; 4096];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(false);
                }
                out.write_all(&buf[..n])?;
            }
        }
        _ => simple(out, "200 OK", id.as_bytes()),
    }
}

/// Arms a reset (SO_LINGER 0): the kernel sends RST instead of FIN when
/// the last handle closes, which happens when `serve` returns its error.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

// --------------------------------------------------------------- client --

/// One response as the client read it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub version: String,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The response says the connection closes after it.
    pub fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

/// A raw HTTP/1.x client over one TCP connection.
pub struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to proxy");
        Client::wrap(s)
    }

    /// Connects, returning the error instead of failing the test.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).map(Client::wrap)
    }

    /// Connects from a given local address (e.g. 127.0.0.7).
    pub fn connect_from(addr: SocketAddr, source: IpAddr) -> Client {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::new(source, 0).into())
            .expect("bind source address");
        sock.connect_timeout(&addr.into(), IO_TIMEOUT)
            .expect("connect to proxy");
        Client::wrap(sock.into())
    }

    fn wrap(s: TcpStream) -> Client {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            r: BufReader::with_capacity(64 * 1024, s),
        }
    }

    /// Closes with a reset (SO_LINGER 0) instead of a FIN.
    pub fn reset(self) {
        reset(self.stream());
    }

    pub fn stream(&self) -> &TcpStream {
        self.r.get_ref()
    }

    /// Changes the read timeout (IO_TIMEOUT by default).
    pub fn set_timeout(&mut self, d: Duration) {
        self.r.get_ref().set_read_timeout(Some(d)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).expect("write to proxy");
    }

    /// Sends, ignoring errors (the proxy may have closed already).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.r.get_mut().write_all(bytes)
    }

    /// `GET path` with Host, reads the response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read_response()
    }

    /// Reads one response (interim 1xx responses are returned on their own).
    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Reads one response to a HEAD request (no body whatever the length).
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    pub fn try_read_response(&mut self, to_head: bool) -> io::Result<Response> {
        let head = read_head(&mut self.r)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a response")
        })?;
        let mut first = head.split_whitespace();
        let version = first.next().unwrap_or("").to_string();
        let status: u16 = first
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
        let headers = parse_headers(&head);
        let mut resp = Response {
            status,
            version,
            head,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        let no_body = to_head || (100..200).contains(&status) || status == 204 || status == 304;
        if no_body {
            return Ok(resp);
        }
        let te = resp
            .header("transfer-encoding")
            .map(str::to_ascii_lowercase);
        if te.is_some_and(|t| t.contains("chunked")) {
            resp.chunked = true;
            loop {
                let mut line = String::new();
                if self.r.read_line(&mut line)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed inside a chunked body",
                    ));
                }
                let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    loop {
                        let mut t = String::new();
                        if self.r.read_line(&mut t)? == 0 || t == "\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let start = resp.body.len();
                resp.body.resize(start + size as usize, 0);
                self.r.read_exact(&mut resp.body[start..])?;
                let mut crlf = [0u8; 2];
                self.r.read_exact(&mut crlf)?;
            }
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl.trim().parse().map_err(|_| io::Error::other("bad CL"))?;
            resp.body.resize(n, 0);
            self.r.read_exact(&mut resp.body)?;
        } else {
            self.r.read_to_end(&mut resp.body)?;
        }
        Ok(resp)
    }

    /// Reads a Content-Length body of the response head just read, counting
    /// bytes and checking samples against `pattern_byte`, without keeping it.
    pub fn read_response_counting(&mut self) -> (Response, u64, bool) {
        let head = read_head(&mut self.r).unwrap().expect("a response");
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let headers = parse_headers(&head);
        let resp = Response {
            status,
            version: String::new(),
            head,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        let n: u64 = resp
            .header("content-length")
            .expect("a Content-Length")
            .parse()
            .unwrap();
        let mut rec = Received {
            method: String::new(),
            target: String::new(),
            head: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            body_len: 0,
            body_pattern_ok: true,
            chunked: false,
        };
        read_body(&mut self.r, BodyFraming::Length(n), &mut rec).expect("the whole body");
        (resp, rec.body_len, rec.body_pattern_ok)
    }

    /// Reads what remains until the peer closes (bounded by IO_TIMEOUT).
    pub fn read_rest(&mut self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.r.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Reads exactly `n` bytes (e.g. through a tunnel).
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.r.read_exact(&mut v).expect("bytes from the proxy");
        v
    }

    /// True when the peer closed the connection (EOF or reset) with no
    /// further bytes, within IO_TIMEOUT. Extra bytes or a timeout: false.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        }
    }

    /// True when nothing arrives and the connection stays open for `wait`.
    pub fn stays_open(&mut self, wait: Duration) -> bool {
        self.r.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        let open = match self.r.read(&mut b) {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        self.r.get_ref().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        open
    }
}

/// Sends raw bytes on a fresh connection and returns the proxy's answer and
/// whether it closed the connection afterwards.
pub fn exchange_raw(proxy: &Proxy, bytes: &[u8]) -> (Response, bool) {
    let mut c = proxy.client();
    let _ = c.try_send(bytes);
    let resp = c.read_response();
    // After an error answer the close follows at once; a connection kept
    // open should fail the test quickly, not after IO_TIMEOUT.
    c.set_timeout(Duration::from_secs(3));
    let closed = c.is_closed();
    (resp, closed)
}

/// Sends `bytes` and asserts the proxy answers `status` and closes; then
/// asserts the proxy still serves a normal request on a new connection.
pub fn assert_rejected(proxy: &mut Proxy, bytes: &[u8], status: u16) {
    let (resp, closed) = exchange_raw(proxy, bytes);
    assert_eq!(
        resp.status,
        status,
        "request {:?}\nanswer {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(300)]),
        resp.head
    );
    assert!(closed, "the connection stays open after a {status}");
    assert_still_serves(proxy);
}

/// A normal request on a new connection gets a 200 from a backend.
pub fn assert_still_serves(proxy: &mut Proxy) {
    proxy.assert_alive();
    let mut c = proxy.client();
    let r = c.get("/");
    assert_eq!(
        r.status, 200,
        "a normal request after the abuse: {:?}",
        r.head
    );
}

/// Polls `cond` every 5 ms until it holds or `IO_TIMEOUT` passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + IO_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------- admin --

/// One answer of the admin API.
#[derive(Debug, Clone)]
pub struct AdminReply {
    pub status: u16,
    pub body: String,
}

impl AdminReply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("admin answer is not JSON ({e}): {}", self.body))
    }
}

/// A client of the admin API: one connection per call (`Connection:
/// close`), bounded by IO_TIMEOUT.
#[derive(Debug, Clone, Copy)]
pub struct Admin {
    pub addr: SocketAddr,
}

impl Admin {
    pub fn call(&self, method: &str, path: &str, body: &str) -> AdminReply {
        let mut c = Client::connect(self.addr);
        c.send(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                self.addr,
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response();
        AdminReply {
            status: r.status,
            body: r.text(),
        }
    }

    pub fn get(&self, path: &str) -> AdminReply {
        self.call("GET", path, "")
    }

    /// GET that must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    pub fn put(&self, path: &str, body: &str) -> AdminReply {
        self.call("PUT", path, body)
    }

    pub fn post(&self, path: &str, body: &str) -> AdminReply {
        self.call("POST", path, body)
    }

    pub fn delete(&self, path: &str) -> AdminReply {
        self.call("DELETE", path, "")
    }
}
