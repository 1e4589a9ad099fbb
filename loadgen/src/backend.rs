//! `loadgen backend`: a minimal HTTP/1.1 origin for benchmarks and tests.
//! One mio loop per thread, each with its own SO_REUSEPORT listener; every
//! request (pipelined, with a Content-Length or chunked body, HTTP/1.0 or
//! 1.1) gets `200` and `body_size` bytes, optionally after a fixed delay.
//! An idle connection holds no buffer: reads go to a per-thread buffer and
//! only a split request head or an unsent response is kept per connection.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use crate::http1::{self, BodyKind, BodyState};
use crate::Spill;

/// Largest request head kept across reads before answering 431.
const MAX_HEAD: usize = 64 * 1024;
/// Unsent response bytes above which the connection stops reading (backpressure).
const MAX_OUT: usize = 1 << 20;
const LISTENER: Token = Token(usize::MAX);

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub listen: SocketAddr,
    pub body_size: usize,
    pub delay: Option<Duration>,
    pub workers: usize,
}

#[derive(Debug)]
pub enum BackendError {
    /// Could not bind or listen on the address.
    Bind { addr: SocketAddr, source: io::Error },
    /// The event loop failed (epoll).
    Poll(io::Error),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Bind { addr, source } => write!(
                f,
                "cannot listen on {addr}: {source} (pick a free port, or 0 for any)"
            ),
            BackendError::Poll(e) => write!(f, "event loop failed: {e}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// Which canned answer a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    KeepAlive,
    /// HTTP/1.0 client that asked for keep-alive: must be told it is kept.
    KeepAlive10,
    Close,
    BadRequest,
    HeadTooLarge,
}

struct Answers {
    keep_alive: Vec<u8>,
    keep_alive_10: Vec<u8>,
    close: Vec<u8>,
}

impl Answers {
    fn new(body_size: usize) -> Answers {
        let body = vec![b'x'; body_size];
        let make = |extra: &str| {
            let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {body_size}\r\n{extra}\r\n")
                .into_bytes();
            v.extend_from_slice(&body);
            v
        };
        Answers {
            keep_alive: make(""),
            keep_alive_10: make("Connection: keep-alive\r\n"),
            close: make("Connection: close\r\n"),
        }
    }

    fn bytes(&self, a: Answer) -> &[u8] {
        match a {
            Answer::KeepAlive => &self.keep_alive,
            Answer::KeepAlive10 => &self.keep_alive_10,
            Answer::Close => &self.close,
            Answer::BadRequest => {
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Answer::HeadTooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
        }
    }
}

/// Bound listeners, one per worker thread, all on the same address.
pub struct Backend {
    addr: SocketAddr,
    listeners: Vec<std::net::TcpListener>,
    cfg: BackendConfig,
}

fn listen_on(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl Backend {
    /// Binds one listener per worker. With port 0 the first listener picks
    /// the port and the others join it through SO_REUSEPORT.
    pub fn bind(cfg: BackendConfig) -> Result<Backend, BackendError> {
        let _ = crate::sys::raise_nofile_limit();
        let mut addr = cfg.listen;
        let mut listeners = Vec::new();
        for _ in 0..cfg.workers.max(1) {
            let l = listen_on(addr).map_err(|source| BackendError::Bind { addr, source })?;
            addr = l
                .local_addr()
                .map_err(|source| BackendError::Bind { addr, source })?;
            listeners.push(l);
        }
        Ok(Backend {
            addr,
            listeners,
            cfg,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends.
    pub fn run(self) -> Result<(), BackendError> {
        let answers = Arc::new(Answers::new(self.cfg.body_size));
        let delay = self.cfg.delay;
        let handles: Vec<_> = self
            .listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let answers = answers.clone();
                std::thread::Builder::new()
                    .name(format!("backend-{i}"))
                    .spawn(move || Worker::new(l, answers, delay)?.run())
                    .expect("spawn backend thread")
            })
            .collect();
        for h in handles {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("worker panicked")))
                .map_err(BackendError::Poll)?;
        }
        Ok(())
    }
}

struct Conn {
    sock: TcpStream,
    /// Detects stale delayed answers after the slab slot was reused.
    id: u32,
    /// Request body still to skip, and the answer due when it ends.
    body: Option<(BodyState, Answer)>,
    /// A request head split across reads.
    pending: Option<Spill>,
    /// Answer bytes the socket did not take yet.
    out: Option<Spill>,
    /// Delayed answers not yet due.
    owed: u32,
    /// An answer with `Connection: close` is queued: read nothing more.
    closing: bool,
    /// Stopped reading until `out` drains.
    paused: bool,
}

struct Worker {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    answers: Arc<Answers>,
    delay: Option<Duration>,
    timers: VecDeque<(Instant, usize, u32, Answer)>,
    buf: Vec<u8>,
    batch: Vec<u8>,
    next_id: u32,
    accept_blocked: bool,
}

impl Worker {
    fn new(
        listener: std::net::TcpListener,
        answers: Arc<Answers>,
        delay: Option<Duration>,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Worker {
            poll,
            listener,
            conns: Slab::new(),
            answers,
            delay,
            timers: VecDeque::new(),
            buf: vec![0; 64 * 1024],
            batch: Vec::new(),
            next_id: 0,
            accept_blocked: false,
        })
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.accept_blocked {
                Some(Duration::from_millis(100))
            } else {
                self.timers
                    .front()
                    .map(|t| t.0.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                if ev.token() == LISTENER {
                    self.accept();
                    continue;
                }
                let key = ev.token().0;
                if !self.conns.contains(key) {
                    continue;
                }
                let mut alive = true;
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    alive = self.on_readable(key, ev.is_read_closed() || ev.is_error());
                }
                if alive && ev.is_writable() {
                    alive = self.flush(key);
                }
                if !alive {
                    self.close(key);
                }
            }
            if self.accept_blocked {
                self.accept();
            }
            self.fire_timers();
        }
    }

    fn accept(&mut self) {
        self.accept_blocked = false;
        loop {
            match self.listener.accept() {
                Ok((mut sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut sock,
                            Token(key),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.next_id = self.next_id.wrapping_add(1);
                    entry.insert(Conn {
                        sock,
                        id: self.next_id,
                        body: None,
                        pending: None,
                        out: None,
                        owed: 0,
                        closing: false,
                        paused: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    // Out of descriptors: edge-triggered, so poll again soon.
                    self.accept_blocked = true;
                    return;
                }
                Err(_) => {} // ECONNABORTED and the like: the next one may be fine.
            }
        }
    }

    fn close(&mut self, key: usize) {
        let c = self.conns.remove(key);
        let _ = c.sock.shutdown(std::net::Shutdown::Write);
    }

    /// Reads until the socket is drained; returns false to drop the
    /// connection. `drain`: the peer closed, so read to the end even after
    /// a short read (no further edge will come for the FIN).
    fn on_readable(&mut self, key: usize, drain: bool) -> bool {
        loop {
            let c = &mut self.conns[key];
            if c.paused || c.closing {
                break;
            }
            match c.sock.read(&mut self.buf) {
                Ok(0) => return false,
                Ok(n) => {
                    let data = std::mem::take(&mut self.buf);
                    self.process(key, &data[..n]);
                    self.buf = data;
                    // A short read means the receive queue is empty; an
                    // edge will come for new data, so skip the EAGAIN read.
                    if n < self.buf.len() && !drain {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.flush(key)
    }

    fn process(&mut self, key: usize, data: &[u8]) {
        let pending = self.conns[key].pending.take();
        match pending {
            Some(mut p) => {
                p.extend_from_slice(data);
                let used = self.parse(key, &p);
                self.keep_rest(key, &p[used..]);
            }
            None => {
                let used = self.parse(key, data);
                self.keep_rest(key, &data[used..]);
            }
        }
    }

    fn keep_rest(&mut self, key: usize, rest: &[u8]) {
        if rest.is_empty() || self.conns[key].closing {
            return;
        }
        if rest.len() > MAX_HEAD {
            self.answer(key, Answer::HeadTooLarge);
            return;
        }
        self.conns[key].pending = Some(Box::new(rest.to_vec()));
    }

    /// Parses complete requests from `data`; returns the bytes consumed.
    fn parse(&mut self, key: usize, data: &[u8]) -> usize {
        let mut pos = 0;
        while pos < data.len() && !self.conns[key].closing {
            if let Some((body, answer)) = &mut self.conns[key].body {
                let answer = *answer;
                match body.feed(&data[pos..]) {
                    Ok((used, done)) => {
                        pos += used;
                        if done {
                            self.conns[key].body = None;
                            self.answer(key, answer);
                        }
                    }
                    Err(_) => self.answer(key, Answer::BadRequest),
                }
                continue;
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&data[pos..]) {
                Ok(httparse::Status::Complete(n)) => {
                    pos += n;
                    let version = req.version.unwrap_or(1);
                    match http1::head(req.headers, version, false, true) {
                        Ok(head) => {
                            let answer = if head.close {
                                Answer::Close
                            } else if version == 0 {
                                Answer::KeepAlive10
                            } else {
                                Answer::KeepAlive
                            };
                            if head.body == BodyKind::Length(0) {
                                self.answer(key, answer);
                            } else {
                                self.conns[key].body = Some((BodyState::new(head.body), answer));
                            }
                        }
                        Err(_) => self.answer(key, Answer::BadRequest),
                    }
                }
                Ok(httparse::Status::Partial) => break,
                Err(httparse::Error::TooManyHeaders) => self.answer(key, Answer::HeadTooLarge),
                Err(_) => self.answer(key, Answer::BadRequest),
            }
        }
        pos
    }

    fn answer(&mut self, key: usize, answer: Answer) {
        let c = &mut self.conns[key];
        let closes = !matches!(answer, Answer::KeepAlive | Answer::KeepAlive10);
        c.closing |= closes;
        match self.delay {
            Some(d) if !matches!(answer, Answer::BadRequest | Answer::HeadTooLarge) => {
                c.owed += 1;
                self.timers
                    .push_back((Instant::now() + d, key, c.id, answer));
            }
            _ => self.batch.extend_from_slice(self.answers.bytes(answer)),
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&(due, key, id, answer)) = self.timers.front() {
            if due > now {
                break;
            }
            self.timers.pop_front();
            match self.conns.get_mut(key) {
                Some(c) if c.id == id => c.owed -= 1,
                _ => continue,
            }
            self.batch.extend_from_slice(self.answers.bytes(answer));
            if !self.flush(key) {
                self.close(key);
            }
        }
    }

    /// Writes queued answers; returns false when the connection is done.
    fn flush(&mut self, key: usize) -> bool {
        let c = &mut self.conns[key];
        if !self.batch.is_empty() {
            match &mut c.out {
                Some(out) => out.extend_from_slice(&self.batch),
                None => match write_all_nb(&mut c.sock, &self.batch) {
                    Ok(n) if n == self.batch.len() => {}
                    Ok(n) => c.out = Some(Box::new(self.batch[n..].to_vec())),
                    Err(_) => {
                        self.batch.clear();
                        return false;
                    }
                },
            }
            self.batch.clear();
        }
        if let Some(out) = &mut c.out {
            match write_all_nb(&mut c.sock, out) {
                Ok(n) if n == out.len() => c.out = None,
                Ok(n) => {
                    out.drain(..n);
                }
                Err(_) => return false,
            }
        }
        if c.out.is_none() && c.closing && c.owed == 0 {
            return false;
        }
        let was_paused = c.paused;
        c.paused = c.out.as_ref().is_some_and(|o| o.len() > MAX_OUT);
        if was_paused && !c.paused {
            // Reading stopped on backpressure: the edge is gone, read now.
            return self.on_readable(key, true);
        }
        true
    }
}

/// Writes as much as the socket takes; returns the bytes written.
fn write_all_nb(sock: &mut TcpStream, mut buf: &[u8]) -> io::Result<usize> {
    let total = buf.len();
    while !buf.is_empty() {
        match sock.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total - buf.len())
}
