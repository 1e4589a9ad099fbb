//! One event loop (thread) of the load engine: it owns a contiguous range
//! of connections, writes the shared pre-serialized request, parses each
//! response in place from one per-thread read buffer, and reports counters
//! and a latency histogram every second. Per-connection state is a small
//! struct; nothing is allocated per request, and an idle connection holds
//! no buffer (only a head split across reads is kept, and only until whole).
//! On https:// targets each connection runs its TLS handshake here too,
//! non-blocking, and its bytes go through rustls.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use rustls::client::ClientConnection;
use rustls::{HandshakeKind, ProtocolVersion};

use crate::http1::{self, BodyState};
use crate::stats::{new_hist, Counters, Msg};
use crate::tls::{Failure, TlsSetup};
use crate::Spill;

/// Largest response head accepted; a bigger one is a parse error.
const MAX_HEAD: usize = 64 * 1024;
/// Wait before retrying a connection that failed to connect.
const CONNECT_BACKOFF_NS: u64 = 100_000_000;
const SWEEP_NS: u64 = 200_000_000;
const SECOND: u64 = 1_000_000_000;
/// A paced request sent later than this after its intended time counts as late.
const LATE_NS: u64 = 1_000_000;
/// epoll (through mio) sleeps in whole milliseconds, rounded up, so a timer
/// would fire 0.5 ms late on average and that lag would be added to every
/// paced latency. Timers fire up to this much early instead; an early
/// request's latency counts from its actual send time.
const TIMER_SLACK_NS: u64 = 1_000_000;

/// Open-loop schedule: connection g sends at `g * step_ns + k * period_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    pub step_ns: u64,
    pub period_ns: u64,
}

/// Everything one worker needs; built by `engine::plan`.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    pub source: usize,
    pub target: SocketAddr,
    pub request: Arc<[u8]>,
    /// HEAD requests get responses without bodies.
    pub head_method: bool,
    /// Global index of this worker's first connection and how many it owns.
    pub first_conn: u64,
    pub conns: usize,
    pub pacing: Option<Pacing>,
    /// Connection g is opened at g * connect_step_ns (0: all at once).
    pub connect_step_ns: u64,
    /// Requests this worker may send (None: until stopped).
    pub quota: Option<u64>,
    pub timeout: Duration,
    pub sources: Arc<[IpAddr]>,
    pub tls: Option<TlsSetup>,
    pub new_conn_per_request: bool,
    pub start: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// No socket; waiting for its connect time (or a retry).
    Waiting,
    Connecting,
    /// https://: TCP connected, the TLS handshake under way.
    Handshaking,
    /// Connected, no request outstanding.
    Idle,
    Writing,
    Reading,
    /// Quota used up: nothing more to do.
    Parked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resp {
    Head,
    Body(BodyState),
}

#[derive(Debug, Clone, Copy)]
enum Fail {
    Read,
    Write,
    Timeout,
    Parse,
    Tls(Failure),
}

struct Conn {
    sock: Option<TcpStream>,
    st: St,
    /// The response in progress says the connection closes after it.
    close_after: bool,
    /// Bytes of the request written so far.
    wpos: u32,
    /// Millisecond the current request (or connect) started: for timeouts.
    started_ms: u32,
    /// Latency is measured from here: the intended send time when paced
    /// (no coordinated omission), else the actual one.
    base_ns: u64,
    /// Paced: intended time of this connection's next request.
    next_ns: u64,
    /// The timer entry this connection waits for (stale entries differ).
    wake_ns: u64,
    resp: Resp,
    /// A response head split across reads.
    partial: Option<Spill>,
    /// https://: the TLS session over `sock`.
    tls: Option<Box<ClientConnection>>,
    /// When the connect began: handshake latency counts from here.
    connect_ns: u64,
}

pub struct Worker {
    plan: WorkerPlan,
    poll: Poll,
    conns: Vec<Conn>,
    timers: BinaryHeap<Reverse<(u64, u32)>>,
    buf: Vec<u8>,
    hist: Histogram<u64>,
    /// Connect start to TLS handshake done, µs.
    handshake: Histogram<u64>,
    counters: Counters,
    open: u64,
    in_flight: u64,
    quota: Option<u64>,
    stop: Arc<AtomicBool>,
    tx: Sender<Msg>,
}

fn connect_socket(target: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if let Some(ip) = src {
        if ip.is_ipv4() {
            crate::sys::set_bind_address_no_port(&s)?;
        }
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

impl Worker {
    pub fn new(plan: WorkerPlan, stop: Arc<AtomicBool>, tx: Sender<Msg>) -> io::Result<Worker> {
        let mut conns = Vec::with_capacity(plan.conns);
        for i in 0..plan.conns {
            let g = plan.first_conn + i as u64;
            conns.push(Conn {
                sock: None,
                st: St::Waiting,
                close_after: false,
                wpos: 0,
                started_ms: 0,
                base_ns: 0,
                next_ns: plan.pacing.map_or(0, |p| g * p.step_ns),
                wake_ns: 0,
                resp: Resp::Head,
                partial: None,
                tls: None,
                connect_ns: 0,
            });
        }
        Ok(Worker {
            quota: plan.quota,
            timers: BinaryHeap::with_capacity(plan.conns + 1),
            poll: Poll::new()?,
            conns,
            buf: vec![0; 64 * 1024],
            hist: new_hist(),
            handshake: new_hist(),
            counters: Counters::default(),
            open: 0,
            in_flight: 0,
            stop,
            tx,
            plan,
        })
    }

    fn now_ns(&self) -> u64 {
        self.plan.start.elapsed().as_nanos() as u64
    }

    /// Runs until stopped or the quota is done; sends `Msg::Done` at the end.
    pub fn run(mut self) {
        let wait = self.plan.start.saturating_duration_since(Instant::now());
        std::thread::sleep(wait);
        let result = self.event_loop();
        let elapsed = self.plan.start.elapsed();
        let _ = self.tx.send(Msg::Done {
            source: self.plan.source,
            elapsed,
            error: result.err().map(|e| format!("event loop failed: {e}")),
        });
    }

    fn event_loop(&mut self) -> io::Result<()> {
        for i in 0..self.conns.len() {
            let g = self.plan.first_conn + i as u64;
            let at = g * self.plan.connect_step_ns;
            if at == 0 {
                self.start_connect(i, 0);
            } else {
                self.wake(i, at);
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut interval = 0u64;
        let mut next_sweep = SWEEP_NS;
        loop {
            let mut now = self.now_ns();
            if now >= (interval + 1) * SECOND {
                self.report(interval);
                interval = now / SECOND;
            }
            if self.stop.load(Ordering::Relaxed) || self.finished() {
                self.report(interval);
                return Ok(());
            }
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP_NS;
            }
            self.run_timers(now);
            now = self.now_ns();
            let mut until = ((interval + 1) * SECOND)
                .min(next_sweep)
                .min(now + 100_000_000);
            if let Some(Reverse((t, _))) = self.timers.peek() {
                until = until.min(t.saturating_sub(TIMER_SLACK_NS));
            }
            let timeout = Duration::from_nanos(until.saturating_sub(now));
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                let i = ev.token().0;
                let Some(c) = self.conns.get(i) else { continue };
                match c.st {
                    St::Connecting => {
                        if ev.is_writable() || ev.is_error() || ev.is_read_closed() {
                            self.on_connect(i);
                        }
                    }
                    St::Handshaking => self.handshake(i),
                    St::Writing | St::Reading | St::Idle | St::Parked => {
                        if ev.is_writable() && c.st == St::Writing {
                            self.write(i);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            if self.conns[i].tls.is_some() {
                                self.on_readable_tls(i);
                            } else {
                                self.on_readable(i, ev.is_read_closed() || ev.is_error());
                            }
                        }
                    }
                    St::Waiting => {}
                }
            }
        }
    }

    fn finished(&self) -> bool {
        self.quota == Some(0) && self.in_flight == 0
    }

    fn report(&mut self, index: u64) {
        self.counters.open = self.open;
        self.counters.peak_open = self.counters.peak_open.max(self.open);
        let hist = Box::new(self.hist.clone());
        self.hist.reset();
        let handshake = Box::new(self.handshake.clone());
        self.handshake.reset();
        let counters = std::mem::take(&mut self.counters);
        self.counters.peak_open = self.open;
        let _ = self.tx.send(Msg::Interval {
            source: self.plan.source,
            index,
            hist,
            handshake,
            counters,
        });
    }

    fn wake(&mut self, i: usize, at: u64) {
        self.conns[i].wake_ns = at;
        self.timers.push(Reverse((at, i as u32)));
    }

    fn run_timers(&mut self, now: u64) {
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if at > now + TIMER_SLACK_NS {
                break;
            }
            self.timers.pop();
            let i = i as usize;
            let c = &self.conns[i];
            if c.wake_ns != at {
                continue;
            }
            match c.st {
                St::Waiting => self.start_connect(i, now),
                St::Idle => {
                    let intended = c.next_ns;
                    self.send(i, now, Some(intended));
                }
                _ => {}
            }
        }
    }

    fn start_connect(&mut self, i: usize, now: u64) {
        if self.quota == Some(0) {
            self.conns[i].st = St::Parked;
            return;
        }
        let g = self.plan.first_conn + i as u64;
        let src = (!self.plan.sources.is_empty())
            .then(|| self.plan.sources[(g % self.plan.sources.len() as u64) as usize]);
        match connect_socket(self.plan.target, src) {
            Ok(mut sock) => {
                let reg = self.poll.registry().register(
                    &mut sock,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                );
                if reg.is_err() {
                    self.connect_failed(i, now);
                    return;
                }
                let c = &mut self.conns[i];
                c.sock = Some(sock);
                c.st = St::Connecting;
                c.started_ms = (now / 1_000_000) as u32;
                c.connect_ns = now;
            }
            Err(_) => self.connect_failed(i, now),
        }
    }

    fn connect_failed(&mut self, i: usize, now: u64) {
        self.counters.errors.connect += 1;
        self.retry_connect(i, now);
    }

    /// A failed connect or handshake uses up one request, so `-n` ends even
    /// when the target is down; the connection is tried again after a pause.
    fn retry_connect(&mut self, i: usize, now: u64) {
        if let Some(q) = &mut self.quota {
            *q = q.saturating_sub(1);
        }
        self.drop_socket(i);
        self.wake(i, now + CONNECT_BACKOFF_NS);
    }

    fn tls_failed(&mut self, i: usize, f: Failure) {
        self.counters.errors.count_tls(f);
        let now = self.now_ns();
        self.retry_connect(i, now);
    }

    /// Drives the handshake as far as the socket allows.
    fn handshake(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let (Some(sock), Some(tls)) = (c.sock.as_mut(), c.tls.as_mut()) else {
            return;
        };
        loop {
            while tls.wants_write() {
                match tls.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return self.tls_failed(i, Failure::Other),
                }
            }
            if !tls.is_handshaking() {
                return self.handshake_done(i);
            }
            match tls.read_tls(sock) {
                // The server closed mid-handshake.
                Ok(0) => return self.tls_failed(i, Failure::Other),
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        // rustls queued an alert telling the server why.
                        let _ = tls.write_tls(sock);
                        return self.tls_failed(i, Failure::of(&e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.tls_failed(i, Failure::Other),
            }
        }
    }

    fn handshake_done(&mut self, i: usize) {
        let now = self.now_ns();
        let c = &self.conns[i];
        let Some(tls) = c.tls.as_ref() else { return };
        let us = now.saturating_sub(c.connect_ns) / 1000;
        self.handshake.saturating_record(us.max(1));
        match tls.handshake_kind() {
            Some(HandshakeKind::Resumed) => self.counters.tls_resumed += 1,
            _ => self.counters.tls_full += 1,
        }
        if tls.protocol_version() == Some(ProtocolVersion::TLSv1_3) {
            self.counters.tls13 += 1;
        }
        if let Some(group) = tls.negotiated_key_exchange_group() {
            let code = u16::from(group.name());
            self.counters.tls_kx = self.counters.tls_kx.max(code);
        }
        if let Some(suite) = tls.negotiated_cipher_suite() {
            let code = u16::from(suite.suite());
            self.counters.tls_suite = self.counters.tls_suite.max(code);
        }
        self.established(i, now);
    }

    fn on_connect(&mut self, i: usize) {
        let now = self.now_ns();
        let c = &mut self.conns[i];
        let Some(sock) = c.sock.as_ref() else { return };
        match sock.take_error() {
            Ok(None) => {}
            _ => return self.connect_failed(i, now),
        }
        match sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(_) => return self.connect_failed(i, now),
        }
        if let Some(t) = &self.plan.tls {
            match ClientConnection::new(t.config.clone(), t.server_name.clone()) {
                Ok(tls) => {
                    c.tls = Some(Box::new(tls));
                    c.st = St::Handshaking;
                    return self.handshake(i);
                }
                Err(e) => return self.tls_failed(i, Failure::of(&e)),
            }
        }
        self.established(i, now);
    }

    /// Ready for requests: TCP connected (and, over TLS, handshaken).
    fn established(&mut self, i: usize, now: u64) {
        self.conns[i].st = St::Idle;
        self.open += 1;
        self.counters.peak_open = self.counters.peak_open.max(self.open);
        self.next_request(i, now);
    }

    /// Sends now (closed loop, or a paced request that is due) or waits.
    fn next_request(&mut self, i: usize, now: u64) {
        match self.plan.pacing {
            None => self.send(i, now, None),
            Some(_) => {
                let due = self.conns[i].next_ns;
                if due <= now + TIMER_SLACK_NS {
                    self.send(i, now, Some(due));
                } else {
                    self.wake(i, due);
                }
            }
        }
    }

    fn send(&mut self, i: usize, now: u64, intended: Option<u64>) {
        match &mut self.quota {
            Some(0) => {
                self.conns[i].st = St::Parked;
                return;
            }
            Some(q) => *q -= 1,
            None => {}
        }
        let c = &mut self.conns[i];
        if let (Some(t), Some(p)) = (intended, self.plan.pacing) {
            let lag = now.saturating_sub(t);
            self.counters.paced += 1;
            self.counters.lag_sum_us += lag / 1000;
            self.counters.lag_max_us = self.counters.lag_max_us.max(lag / 1000);
            if lag > LATE_NS {
                self.counters.late += 1;
            }
            c.next_ns = t + p.period_ns;
        }
        c.base_ns = intended.map_or(now, |t| t.min(now));
        c.started_ms = (now / 1_000_000) as u32;
        c.st = St::Writing;
        c.wpos = 0;
        c.resp = Resp::Head;
        c.close_after = false;
        self.in_flight += 1;
        self.counters.sent += 1;
        self.write(i);
    }

    fn write(&mut self, i: usize) {
        let req = &self.plan.request;
        let c = &mut self.conns[i];
        let Some(sock) = c.sock.as_mut() else { return };
        if let Some(tls) = c.tls.as_mut() {
            // rustls takes the plaintext and seals it; what it cannot send
            // yet waits for the next writable edge.
            loop {
                if (c.wpos as usize) < req.len() {
                    match tls.writer().write(&req[c.wpos as usize..]) {
                        Ok(n) => c.wpos += n as u32,
                        Err(_) => return self.fail(i, Fail::Write),
                    }
                }
                if tls.wants_write() {
                    match tls.write_tls(sock) {
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return self.fail(i, Fail::Write),
                    }
                }
                if c.wpos as usize >= req.len() {
                    break;
                }
            }
        }
        while (c.wpos as usize) < req.len() {
            match sock.write(&req[c.wpos as usize..]) {
                Ok(n) => c.wpos += n as u32,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(i, Fail::Write),
            }
        }
        if c.st == St::Writing {
            c.st = St::Reading;
        }
    }

    /// `drain`: the peer closed, so read to the end even after a short
    /// read (no further edge will come for the FIN).
    fn on_readable(&mut self, i: usize, drain: bool) {
        loop {
            let Some(sock) = self.conns[i].sock.as_mut() else {
                return;
            };
            match sock.read(&mut self.buf) {
                Ok(0) => return self.on_eof(i),
                Ok(n) => {
                    let now = self.now_ns();
                    let buf = std::mem::take(&mut self.buf);
                    let usable = self.consume(i, &buf[..n], now);
                    self.buf = buf;
                    // A short read drained the socket: the next data brings
                    // a new edge, so no EAGAIN read is needed.
                    if !usable || (n < self.buf.len() && !drain) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let kind = if self.conns[i].st == St::Writing {
                        Fail::Write
                    } else {
                        Fail::Read
                    };
                    return self.fail(i, kind);
                }
            }
        }
    }

    /// Over TLS: reads records until the socket is drained, and feeds the
    /// plaintext to the same parser as a plain connection's bytes.
    fn on_readable_tls(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            let (Some(sock), Some(tls)) = (c.sock.as_mut(), c.tls.as_mut()) else {
                return;
            };
            let (more, closed) = match tls.read_tls(sock) {
                Ok(0) => (false, true),
                Ok(_) => (true, false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (false, false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.fail(i, Fail::Read),
            };
            if let Err(e) = tls.process_new_packets() {
                let _ = tls.write_tls(sock);
                return self.fail(i, Fail::Tls(Failure::of(&e)));
            }
            loop {
                let mut buf = std::mem::take(&mut self.buf);
                let got = match self.conns[i].tls.as_mut() {
                    Some(tls) => tls.reader().read(&mut buf),
                    None => Ok(0),
                };
                match got {
                    Ok(n) if n > 0 => {
                        let now = self.now_ns();
                        let usable = self.consume(i, &buf[..n], now);
                        self.buf = buf;
                        if !usable {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.buf = buf;
                        break;
                    }
                    // close_notify, or a close without it.
                    _ => {
                        self.buf = buf;
                        return self.on_eof(i);
                    }
                }
            }
            if closed {
                return self.on_eof(i);
            }
            if !more {
                return;
            }
        }
    }

    fn on_eof(&mut self, i: usize) {
        let c = &self.conns[i];
        match (c.st, c.resp) {
            // A body delimited by the close is complete now.
            (St::Reading, Resp::Body(BodyState::UntilClose)) => {
                let now = self.now_ns();
                self.complete(i, now);
                self.reconnect(i, now);
            }
            (St::Writing | St::Reading, _) => self.fail(i, Fail::Read),
            // The server closed an idle keep-alive connection: not an error.
            _ => {
                let now = self.now_ns();
                self.reconnect(i, now);
            }
        }
    }

    /// Parses response bytes; returns false when the connection was closed.
    fn consume(&mut self, i: usize, data: &[u8], now: u64) -> bool {
        self.counters.bytes_read += data.len() as u64;
        let mut pos = 0;
        while pos < data.len() {
            let c = &mut self.conns[i];
            if !matches!(c.st, St::Reading | St::Writing) {
                // Bytes nobody asked for.
                self.fail(i, Fail::Parse);
                return false;
            }
            match &mut c.resp {
                Resp::Body(body) => match body.feed(&data[pos..]) {
                    Ok((used, done)) => {
                        pos += used;
                        if done && !self.finish_response(i, now, pos < data.len()) {
                            return false;
                        }
                    }
                    Err(_) => {
                        self.fail(i, Fail::Parse);
                        return false;
                    }
                },
                Resp::Head => {
                    let head_method = self.plan.head_method;
                    let parsed = match c.partial.take() {
                        Some(mut p) => {
                            let old = p.len();
                            p.extend_from_slice(&data[pos..]);
                            match parse_head(&p, head_method) {
                                Ok(Some((n, h))) => Ok(Some((n - old, h))),
                                Ok(None) if p.len() <= MAX_HEAD => {
                                    c.partial = Some(p);
                                    return true;
                                }
                                _ => Err(()),
                            }
                        }
                        None => match parse_head(&data[pos..], head_method) {
                            Ok(None) if data.len() - pos <= MAX_HEAD => {
                                c.partial = Some(Box::new(data[pos..].to_vec()));
                                return true;
                            }
                            Ok(None) => Err(()),
                            other => other,
                        },
                    };
                    let Ok(Some((n, head))) = parsed else {
                        self.fail(i, Fail::Parse);
                        return false;
                    };
                    pos += n;
                    match head.status {
                        100..=199 if head.status != 101 => continue, // interim
                        400..=499 => self.counters.errors.status_4xx += 1,
                        500..=599 => self.counters.errors.status_5xx += 1,
                        _ => {}
                    }
                    let c = &mut self.conns[i];
                    c.close_after = head.framing.close;
                    let body = BodyState::new(head.framing.body);
                    if body == BodyState::Length(0) {
                        if !self.finish_response(i, now, pos < data.len()) {
                            return false;
                        }
                    } else {
                        c.resp = Resp::Body(body);
                    }
                }
            }
        }
        true
    }

    /// A response ended at `now`; `more` says bytes follow it in the read.
    /// Returns false when the connection was closed.
    fn finish_response(&mut self, i: usize, now: u64, more: bool) -> bool {
        if more {
            // We never pipeline, so bytes after a response are malformed
            // (a wrong Content-Length, or garbage).
            self.complete(i, now);
            self.fail_idle(i, Fail::Parse);
            return false;
        }
        self.complete(i, now);
        let c = &self.conns[i];
        if c.close_after
            || c.wpos as usize != self.plan.request.len()
            || self.plan.new_conn_per_request
        {
            self.reconnect(i, now);
            return false;
        }
        self.next_request(i, now);
        true
    }

    /// Records the finished response and frees the connection for the next.
    fn complete(&mut self, i: usize, now: u64) {
        let c = &mut self.conns[i];
        let us = now.saturating_sub(c.base_ns) / 1000;
        self.hist.saturating_record(us.max(1));
        self.counters.requests += 1;
        self.in_flight -= 1;
        c.resp = Resp::Head;
        c.st = St::Idle;
    }

    fn drop_socket(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if matches!(c.st, St::Idle | St::Writing | St::Reading) {
            self.open -= 1;
        }
        if matches!(c.st, St::Writing | St::Reading) {
            self.in_flight -= 1;
        }
        if let Some(mut s) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.tls = None;
        c.partial = None;
        c.resp = Resp::Head;
        c.st = St::Waiting;
    }

    fn fail(&mut self, i: usize, kind: Fail) {
        if self.conns[i].st == St::Connecting {
            let now = self.now_ns();
            return self.connect_failed(i, now);
        }
        self.fail_idle(i, kind);
    }

    fn fail_idle(&mut self, i: usize, kind: Fail) {
        let e = &mut self.counters.errors;
        match kind {
            Fail::Read => e.read += 1,
            Fail::Write => e.write += 1,
            Fail::Timeout => e.timeout += 1,
            Fail::Parse => e.parse += 1,
            Fail::Tls(f) => e.count_tls(f),
        }
        let now = self.now_ns();
        self.reconnect(i, now);
    }

    fn reconnect(&mut self, i: usize, now: u64) {
        self.drop_socket(i);
        self.counters.reconnects += 1;
        self.start_connect(i, now);
    }

    fn sweep(&mut self, now: u64) {
        let now_ms = (now / 1_000_000) as u32;
        let limit = self.plan.timeout.as_millis().min(u32::MAX as u128) as u32;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if matches!(
                c.st,
                St::Connecting | St::Handshaking | St::Writing | St::Reading
            ) && now_ms.saturating_sub(c.started_ms) > limit
            {
                if matches!(c.st, St::Connecting | St::Handshaking) {
                    if c.st == St::Handshaking {
                        self.counters.errors.tls_handshake_timeout += 1;
                    } else {
                        self.counters.errors.timeout += 1;
                    }
                    if let Some(q) = &mut self.quota {
                        *q = q.saturating_sub(1);
                    }
                    self.drop_socket(i);
                    self.wake(i, now);
                } else {
                    self.fail_idle(i, Fail::Timeout);
                }
            }
        }
    }
}

struct ParsedHead {
    status: u16,
    framing: http1::Head,
}

/// Ok(None): incomplete; Err: malformed.
fn parse_head(buf: &[u8], head_method: bool) -> Result<Option<(usize, ParsedHead)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let status = resp.code.ok_or(())?;
            let no_body =
                head_method || (100..200).contains(&status) || status == 204 || status == 304;
            let framing = http1::head(resp.headers, resp.version.unwrap_or(1), no_body, false)
                .map_err(|_| ())?;
            Ok(Some((n, ParsedHead { status, framing })))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}
