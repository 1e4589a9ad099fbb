//! What a client connection does when it can make progress: read a request,
//! pick a backend, stream the request up and the response down, then go idle,
//! answer the next pipelined request, or close. See LIFECYCLE.md.
//!
//! Readiness is edge-triggered: `ready` flags remember that a socket may have
//! more to give until a read or write comes back short or WouldBlock.

use std::io;
use std::time::Duration;

use super::conn::{Entry, Exchange, Phase, HUP, READABLE, WRITABLE};
use super::event_loop::{EventLoop, LINGER};
use super::min_rate::RateCredit;
use super::sockio;
use crate::balancer::{pick_or_fallback, PickContext};
use crate::http::body::{BodyScan, Framing};
use crate::http::errors::Reject;
use crate::http::request::{parse_request_into, write_upstream_head, Method, RequestHead};
use crate::http::response::{parse_and_rewrite, ClientSide};
use crate::stats::LoopStats;
use crate::timer::Millis;

/// Whether a connection stays after this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Keep,
    Close,
}

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Progress,
    Blocked,
    Close,
}

/// Why the backend side of an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamFailure {
    ConnectRefused,
    ConnectTimeout,
    /// Closed or reset before a complete response head.
    Closed,
    /// No response within the read timeout.
    Timeout,
    /// An unparseable or unframeable response.
    Garbage,
}

/// What a busy exchange is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Tunnel,
    Connect,
    ClientWrite,
    UpstreamWrite,
    ClientBody,
    UpstreamResponse,
    UpstreamBody,
}

/// At most this many backends are tried for one request.
const MAX_TRIED: usize = 4;
/// Backends at `max_conns` passed over for one request before it queues.
const MAX_FULL_SKIPPED: usize = 16;

/// A response body this small is copied behind its head, so the two go out
/// as one slice.
const JOIN_BODY_MAX: usize = 1024;

/// Moves a small pending response body behind the unsent response head
/// (both then leave in one send); the body counts as handed over, and the
/// exchange finishes only once the head buffer is empty.
fn join_small_body(ex: &mut Exchange) {
    let (Some(head), Some(scan), Some(buf)) = (
        ex.resp_head.as_mut(),
        ex.resp_body.as_mut(),
        ex.resp_buf.as_mut(),
    ) else {
        return;
    };
    let n = scan.pending();
    if n == 0 || n > JOIN_BODY_MAX || head.is_empty() || head.capacity() - head.len() < n {
        return;
    }
    if head.push(&buf.data()[..n]) == n {
        buf.consume(n);
        scan.sent(n);
    }
}

/// Whether `attach_backend` found a connection.
enum Attached {
    Yes,
    /// Every backend that could take the request is at `max_conns`.
    MustQueue,
}

impl EventLoop {
    /// Makes every bit of progress a client connection can make now.
    pub(super) fn drive(&mut self, ck: usize) {
        let Some(Entry::Client(c)) = self.slab.get_mut(ck) else {
            return;
        };
        let taken = c.ex.take();
        let mut ex = match taken {
            Some(ex) => ex,
            None => self.new_exchange(),
        };
        match self.pump(ck, &mut ex) {
            Flow::Keep => self.park(ck, ex),
            Flow::Close => self.close_client(ck, Some(ex)),
        }
    }

    /// Puts the exchange back (or releases it when idle) and refreshes the
    /// deadline of a busy connection.
    fn park(&mut self, ck: usize, mut ex: Box<Exchange>) {
        let phase = self.client_mut(ck).phase;
        if phase == Phase::Busy {
            let waiting = self.waiting_on(ck, &ex);
            let d = self.busy_timeout(&ex, waiting);
            let mut deadline = self.now_ms.saturating_add(d.as_millis() as Millis);
            if let Some(out_of_credit) = self.charge_min_rate(&mut ex, waiting) {
                deadline = deadline.min(out_of_credit);
            }
            self.set_deadline_at(ck, deadline);
        }
        if ex.is_idle() && phase != Phase::Closing {
            self.recycle_exchange(ex);
        } else {
            self.client_mut(ck).ex = Some(ex);
        }
    }

    /// What a busy exchange waits for now: decides its timeout, and what
    /// happens when that passes (`client_timeout`).
    fn waiting_on(&self, ck: usize, ex: &Exchange) -> Waiting {
        let upstream = ex.upstream_key.and_then(|k| match self.slab.get(k) {
            Some(Entry::Upstream(u)) => Some(u),
            _ => None,
        });
        let client_writable = match self.slab.get(ck) {
            Some(Entry::Client(c)) => c.ready & WRITABLE != 0,
            _ => true,
        };
        let to_upstream = ex.req_head_unsent() > 0 || ex.req_body.pending() > 0;
        if ex.tunnel {
            Waiting::Tunnel
        } else if upstream.is_some_and(|u| u.connecting) {
            Waiting::Connect
        } else if ex.pending_to_client() && !client_writable {
            Waiting::ClientWrite
        } else if to_upstream && upstream.is_some_and(|u| u.ready & WRITABLE == 0) {
            Waiting::UpstreamWrite
        } else if !ex.req_body.is_scanned() {
            Waiting::ClientBody
        } else if ex.resp_body.is_none() {
            Waiting::UpstreamResponse
        } else {
            Waiting::UpstreamBody
        }
    }

    fn busy_timeout(&self, ex: &Exchange, waiting: Waiting) -> Duration {
        let server = &self.routing.config.server;
        let Some(up) = self.routing.upstream_cfg.get(ex.upstream) else {
            return server.read_timeout; // reconfigured away: server timeouts only
        };
        match waiting {
            Waiting::Tunnel => server.idle_timeout,
            Waiting::Connect => up.connect_timeout,
            Waiting::ClientWrite => server.write_timeout,
            Waiting::UpstreamWrite => up.write_timeout,
            // Upstream read_timeout bounds the wait for the response head;
            // once the body streams, gaps between its bytes get the server's.
            Waiting::ClientBody | Waiting::UpstreamBody => server.read_timeout,
            Waiting::UpstreamResponse => up.read_timeout,
        }
    }

    /// `server.min_rate` (see `min_rate.rs`): brings the client's credit up
    /// to now and returns when it runs out, if the proxy waits on the client.
    fn charge_min_rate(&self, ex: &mut Exchange, waiting: Waiting) -> Option<Millis> {
        let server = &self.routing.config.server;
        if server.min_rate == 0 {
            return None;
        }
        let on_client = matches!(waiting, Waiting::ClientBody | Waiting::ClientWrite);
        let grace = server.min_rate_grace.as_millis() as u64;
        ex.rate.wait(on_client, self.now_ms, server.min_rate, grace)
    }

    /// The client the proxy waits on has spent its `min_rate` credit.
    fn below_min_rate(&self, ex: &mut Exchange, waiting: Waiting) -> bool {
        let server = &self.routing.config.server;
        let on_client = matches!(waiting, Waiting::ClientBody | Waiting::ClientWrite);
        if server.min_rate == 0 || !on_client {
            return false;
        }
        let grace = server.min_rate_grace.as_millis() as u64;
        ex.rate.settle(self.now_ms, server.min_rate, grace) == 0
    }

    fn pump(&mut self, ck: usize, ex: &mut Exchange) -> Flow {
        loop {
            let mut progress = false;
            // Each step runs only if the ones before it left the connection open.
            macro_rules! step {
                ($e:expr) => {
                    match $e {
                        Step::Close => return Flow::Close,
                        Step::Progress => progress = true,
                        Step::Blocked => {}
                    }
                };
            }
            step!(self.read_client(ck, ex));
            if ex.client_eof && ex.active && !ex.tunnel && !ex.req_body.is_scanned() {
                return Flow::Close; // the client left mid-request: nothing to answer
            }
            step!(self.next_request(ck, ex));
            step!(self.pump_upstream(ck, ex));
            step!(self.write_client(ck, ex));
            step!(self.finish_response(ck, ex));
            step!(self.pump_closing(ck, ex));
            if !progress {
                let pending = ex.pending_to_client();
                let inbuf_empty = ex.inbuf.as_ref().is_none_or(|b| b.is_empty());
                if ex.client_eof && !ex.active && !pending && inbuf_empty {
                    return Flow::Close;
                }
                return Flow::Keep;
            }
        }
    }

    fn read_client(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        let Some(Entry::Client(c)) = self.slab.get_mut(ck) else {
            return Step::Close;
        };
        if c.ready & READABLE == 0 || ex.client_eof {
            return Step::Blocked;
        }
        let buf = ex.inbuf.get_or_insert_with(|| self.bufs.get());
        if c.phase == Phase::Closing {
            buf.clear(); // draining after an error answer
        }
        if !buf.has_spare() {
            return Step::Blocked; // backpressure: the buffer drains first
        }
        let spare = buf.spare();
        let want = spare.len();
        match sockio::recv(&c.stream, spare) {
            Ok(0) => {
                c.ready &= !READABLE;
                ex.client_eof = true;
                if buf.is_empty() {
                    self.bufs.put_opt(&mut ex.inbuf);
                }
                Step::Progress
            }
            Ok(n) => {
                buf.filled(n);
                if n < want && c.ready & HUP == 0 {
                    c.ready &= !READABLE;
                }
                if ex.active {
                    ex.rate.moved(n);
                }
                LoopStats::add(&self.stats.bytes_in, n as u64);
                if c.phase == Phase::Idle {
                    c.phase = Phase::Head;
                    let d = self.routing.config.server.header_timeout;
                    self.set_deadline(ck, d);
                }
                Step::Progress
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.ready &= !READABLE;
                if buf.is_empty() {
                    self.bufs.put_opt(&mut ex.inbuf);
                }
                Step::Blocked
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Progress,
            Err(_) => Step::Close,
        }
    }

    /// Parses the next request head when none is in flight.
    fn next_request(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        let phase = self.client_mut(ck).phase;
        if ex.active || phase == Phase::Closing {
            return Step::Blocked;
        }
        if phase == Phase::Queued && self.handoff != Some(ck) {
            return Step::Blocked; // its turn comes from run_handoffs
        }
        let Some(buf) = ex.inbuf.as_ref() else {
            return Step::Blocked;
        };
        if buf.is_empty() {
            return Step::Blocked;
        }
        // Behind a queue, a complete head waits unparsed: it is parsed once,
        // when its turn comes (where it goes needs no parsing to know).
        if let Some(u) = self.routing.sole_upstream {
            if self.must_queue(ck, u) && memchr::memmem::find(buf.data(), b"\r\n\r\n").is_some() {
                return self.queue_request(ck, u);
            }
        }
        let mut head = self.scratch_head.take().unwrap_or_else(RequestHead::boxed);
        let step = match parse_request_into(buf.data(), &self.limits, &mut head) {
            Ok(false) if ex.client_eof => Step::Close, // the client gave up mid-head
            Ok(false) => Step::Blocked,
            Err(reject) => self.reject(ck, ex, reject),
            Ok(true) => self.begin(ck, ex, &head),
        };
        self.scratch_head = Some(head);
        step
    }

    /// Starts proxying a parsed request: route, backend, upstream head.
    fn begin(&mut self, ck: usize, ex: &mut Exchange, head: &RequestHead) -> Step {
        if self.handoff != Some(ck) {
            LoopStats::add(&self.stats.requests, 1); // once, not again after queueing
        }
        let data = ex.inbuf.as_ref().expect("head parsed from inbuf").data();
        if self.log.is_some() {
            ex.req_line.clear();
            ex.req_line.extend_from_slice(head.method_bytes(data));
            ex.req_line.push(b' ');
            ex.req_line.extend_from_slice(head.target.get(data));
        }
        let Some(route) = self
            .routing
            .router
            .route(head.route_host(data), head.path(data))
        else {
            return self.reject(ck, ex, Reject::NotFound);
        };
        let upstream = self.routing.route_upstream[route];
        if self.must_queue(ck, upstream) {
            return self.queue_request(ck, upstream);
        }
        ex.route = route;
        ex.upstream = upstream;
        ex.client = ClientSide {
            http10: head.http10,
            keep_alive: head.keep_alive,
            head_request: head.method == Method::Head,
            upgrade_requested: head.upgrade.is_some(),
        };
        ex.idempotent = head.method.is_idempotent();
        ex.close_after = !head.keep_alive;
        ex.req_body = BodyScan::new(head.framing.clone(), false);
        ex.resp_body = None;
        ex.resp_started = false;
        ex.upstream_eof = false;
        ex.upstream_reusable = false;
        ex.tunnel = false;
        ex.tries = 0;
        ex.attempts = 0;
        ex.tried = [usize::MAX; MAX_TRIED];
        ex.started = self.now;
        let grace = self.routing.config.server.min_rate_grace.as_millis() as u64;
        ex.rate = RateCredit::full(grace, self.now_ms);
        match self.attach_backend(ck, ex, true) {
            Ok(Attached::Yes) => {}
            Ok(Attached::MustQueue) => return self.queue_request(ck, upstream),
            Err(reject) => {
                self.client_mut(ck).phase = Phase::Busy;
                return self.reject(ck, ex, reject);
            }
        }
        self.client_mut(ck).phase = Phase::Busy;
        // The head grows by the forwarding headers (and a Host for HTTP/1.0).
        let mut out = self.bufs.get_for(head.head_len + 512);
        let data = ex.inbuf.as_ref().expect("head parsed from inbuf").data();
        let peer = self.client_mut(ck).peer;
        let fallback_host = &self.routing.backend_hosts[ex.upstream][ex.backend];
        let fits = write_upstream_head(data, head, &mut out, peer, fallback_host);
        ex.req_head = Some(out);
        ex.req_head_sent = 0;
        if !fits {
            return self.reject(ck, ex, Reject::HeadersTooLarge);
        }
        ex.inbuf.as_mut().expect("inbuf").consume(head.head_len);
        ex.active = true;
        Step::Progress
    }

    /// Picks a backend and gives the exchange a connection to it: an idle
    /// pooled one, or a new one. Failed connects move on to another backend.
    /// With `within_limit`, backends at `max_conns` are passed over and,
    /// when every candidate is, the request must queue; a retry after a
    /// failed attempt does not queue (it may open one connection beyond).
    fn attach_backend(
        &mut self,
        ck: usize,
        ex: &mut Exchange,
        within_limit: bool,
    ) -> Result<Attached, Reject> {
        let u = ex.upstream;
        if u >= self.routing.upstreams.len() || ex.route >= self.routing.balancers.len() {
            return Err(Reject::BadGateway); // reconfigured away mid-request
        }
        // One try and `retries` more; a stale pooled connection gives its try back.
        let max_attempts = (self.routing.upstream_cfg[u].retries as usize + 1).min(MAX_TRIED);
        let peer = self.client_mut(ck).peer;
        // Tried backends, then those found full.
        let mut skip = [usize::MAX; MAX_TRIED + MAX_FULL_SKIPPED];
        let mut full = 0;
        loop {
            if ex.attempts >= max_attempts {
                return Err(Reject::BadGateway);
            }
            skip[..MAX_TRIED].copy_from_slice(&ex.tried);
            let exclude = if full == 0 {
                &skip[..ex.tries]
            } else {
                &skip[..] // the unused slots hold usize::MAX, no backend's index
            };
            let ctx = PickContext {
                client_ip: peer,
                exclude,
                now: self.now,
            };
            let mut picked = pick_or_fallback(
                self.routing.balancers[ex.route].as_mut(),
                &self.routing.upstreams[u],
                &ctx,
            );
            if let Some(b) = picked.filter(|&b| within_limit && self.backend_full(u, b)) {
                if full < MAX_FULL_SKIPPED {
                    skip[MAX_TRIED + full] = b;
                    full += 1;
                    continue;
                }
                // Too many full ones to pass over one by one: any with room.
                picked = self.backend_with_room(u, &ex.tried[..ex.tries]);
            }
            let Some(b) = picked else {
                if full > 0 {
                    return Ok(Attached::MustQueue);
                }
                return Err(if ex.tries == 0 {
                    Reject::Unavailable
                } else {
                    Reject::BadGateway
                });
            };
            ex.attempts += 1;
            let (key, reused) = match self.pool.take(u, b) {
                Some(key) => {
                    LoopStats::add(&self.stats.upstream_reuses, 1);
                    (key, true)
                }
                None => match self.open_upstream(u, b, ck) {
                    Ok(key) => (key, false),
                    Err(_) => {
                        self.backend_failed(u, b, ex.tries == 0);
                        self.mark_tried(ex, b);
                        continue;
                    }
                },
            };
            let up = self.upstream_mut(key);
            up.client = Some(ck);
            up.reused = reused;
            ex.upstream_key = Some(key);
            ex.backend = b;
            ex.counters = self.backend_started(u, b);
            return Ok(Attached::Yes);
        }
    }

    fn mark_tried(&self, ex: &mut Exchange, backend: usize) {
        if ex.tries < MAX_TRIED {
            ex.tried[ex.tries] = backend;
            ex.tries += 1;
        }
    }

    /// Moves bytes between the client's buffers and the backend connection.
    fn pump_upstream(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        let Some(uk) = ex.upstream_key else {
            return Step::Blocked;
        };
        let mut progress = false;
        // Connect completion.
        {
            let now = self.now;
            let up = self.upstream_mut(uk);
            if up.connecting {
                if up.ready == 0 {
                    return Step::Blocked;
                }
                let failed = !matches!(up.stream.take_error(), Ok(None));
                match up.stream.peer_addr() {
                    Ok(_) if !failed => {
                        up.connecting = false;
                        progress = true;
                        let took = now.saturating_duration_since(up.connect_started);
                        self.backend_connected(ex.upstream, ex.backend, took);
                    }
                    Err(e) if !failed && e.kind() == io::ErrorKind::NotConnected => {
                        up.ready = 0;
                        return Step::Blocked;
                    }
                    _ => return self.upstream_failed(ck, ex, UpstreamFailure::ConnectRefused),
                }
            }
        }
        // Request bytes: the head, then body bytes the framing vouches for.
        if let Some(inbuf) = ex.inbuf.as_mut() {
            if ex.req_body.scan(inbuf).is_err() {
                return self.reject(ck, ex, Reject::BadRequest);
            }
        }
        let Some(Entry::Upstream(up)) = self.slab.get_mut(uk) else {
            return Step::Close;
        };
        if up.ready & WRITABLE != 0 {
            let head = ex
                .req_head
                .as_ref()
                .map_or(&[][..], |b| &b.data()[ex.req_head_sent..]);
            let body_len = ex.req_body.pending();
            let body = ex.inbuf.as_ref().map_or(&[][..], |b| &b.data()[..body_len]);
            let total = head.len() + body.len();
            if total > 0 {
                match sockio::send_two(&mut up.stream, head, body) {
                    Ok(n) => {
                        let from_head = n.min(head.len());
                        ex.req_head_sent += from_head;
                        let from_body = n - from_head;
                        if from_body > 0 {
                            ex.inbuf.as_mut().expect("body").consume(from_body);
                            ex.req_body.sent(from_body);
                        }
                        if n < total {
                            up.ready &= !WRITABLE;
                        }
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => up.ready &= !WRITABLE,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => return self.upstream_failed(ck, ex, UpstreamFailure::Closed),
                }
            }
        }
        if ex.req_body.is_complete() && ex.inbuf.as_ref().is_some_and(|b| b.is_empty()) {
            self.bufs.put_opt(&mut ex.inbuf);
        }
        // Response bytes.
        let Some(Entry::Upstream(up)) = self.slab.get_mut(uk) else {
            return Step::Close;
        };
        if up.ready & READABLE != 0 && !ex.upstream_eof {
            let buf = ex.resp_buf.get_or_insert_with(|| self.bufs.get());
            if buf.has_spare() {
                let spare = buf.spare();
                let want = spare.len();
                match sockio::recv(&up.stream, spare) {
                    Ok(0) => {
                        up.ready &= !READABLE;
                        ex.upstream_eof = true;
                        progress = true;
                    }
                    Ok(n) => {
                        buf.filled(n);
                        if n < want && up.ready & HUP == 0 {
                            up.ready &= !READABLE;
                        }
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => up.ready &= !READABLE,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => {
                        // A reset: like an early close, but nothing more will come.
                        up.ready &= !READABLE;
                        ex.upstream_eof = true;
                        ex.upstream_reusable = false;
                        progress = true;
                    }
                }
            }
        }
        // The response head (after any interim 1xx heads).
        while ex.resp_body.is_none() {
            let Some(buf) = ex.resp_buf.as_mut() else {
                break;
            };
            if buf.is_empty() {
                break;
            }
            let need = buf.len() + 512; // the rewritten head is at most this long
            let mut out = match ex.resp_head.take() {
                Some(out) if out.capacity() - out.len() >= need => out,
                Some(out) => {
                    // An interim head is queued: keep it, in a buffer big enough for both.
                    let mut bigger = self.bufs.get_for(out.len() + need);
                    bigger.push(out.data());
                    self.bufs.put(out);
                    bigger
                }
                None => self.bufs.get_for(need),
            };
            let parsed = parse_and_rewrite(buf.data(), ex.client, &mut out);
            ex.resp_head = Some(out);
            match parsed {
                Ok(None) => {
                    if !buf.has_spare() {
                        return self.upstream_failed(ck, ex, UpstreamFailure::Garbage);
                    }
                    break;
                }
                Err(_) => return self.upstream_failed(ck, ex, UpstreamFailure::Garbage),
                Ok(Some(head)) => {
                    buf.consume(head.head_len);
                    progress = true;
                    if head.interim {
                        continue;
                    }
                    let latency = self.now.saturating_duration_since(ex.started);
                    self.backend_answered(ex.upstream, ex.backend, head.status, latency);
                    ex.status = head.status;
                    ex.close_after |= head.close_client;
                    ex.upstream_reusable = head.upstream_reusable;
                    ex.resp_body = Some(BodyScan::new(head.framing, head.strip_chunked));
                    if ex.req_head_unsent() == 0 {
                        // No retry once a response head came: the copy can go.
                        self.bufs.put_opt(&mut ex.req_head);
                    }
                    if head.switching {
                        // After 101 both directions are opaque byte streams.
                        ex.tunnel = true;
                        ex.req_body = BodyScan::new(Framing::UntilClose, false);
                        ex.resp_body = Some(BodyScan::new(Framing::UntilClose, false));
                    }
                }
            }
        }
        match ex.resp_body.as_mut() {
            None => {
                if ex.upstream_eof {
                    return self.upstream_failed(ck, ex, UpstreamFailure::Closed);
                }
            }
            Some(body) => {
                if let Some(buf) = ex.resp_buf.as_mut() {
                    if body.scan(buf).is_err() {
                        return Step::Close; // broken chunking mid-response
                    }
                }
                if ex.upstream_eof && !body.on_eof() {
                    return Step::Close; // cut short: never end it like a whole response
                }
            }
        }
        if progress {
            Step::Progress
        } else {
            Step::Blocked
        }
    }

    fn write_client(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        let Some(Entry::Client(c)) = self.slab.get_mut(ck) else {
            return Step::Close;
        };
        if c.ready & WRITABLE == 0 {
            return Step::Blocked;
        }
        join_small_body(ex);
        let head = ex.resp_head.as_ref().map_or(&[][..], |b| b.data());
        let body_len = ex.resp_body.as_ref().map_or(0, |b| b.pending());
        let body = ex
            .resp_buf
            .as_ref()
            .map_or(&[][..], |b| &b.data()[..body_len]);
        let total = head.len() + body.len();
        if total == 0 {
            return Step::Blocked;
        }
        match sockio::send_two(&mut c.stream, head, body) {
            Ok(n) => {
                let from_head = n.min(head.len());
                let from_body = n - from_head;
                if from_head > 0 {
                    ex.resp_head.as_mut().expect("head").consume(from_head);
                }
                if from_body > 0 {
                    ex.resp_buf.as_mut().expect("body").consume(from_body);
                    ex.resp_body.as_mut().expect("body").sent(from_body);
                }
                if n < total {
                    c.ready &= !WRITABLE;
                }
                if ex.active {
                    ex.resp_started = true;
                    ex.rate.moved(n);
                }
                LoopStats::add(&self.stats.bytes_out, n as u64);
                if ex.resp_head.as_ref().is_some_and(|b| b.is_empty()) {
                    self.bufs.put_opt(&mut ex.resp_head);
                }
                Step::Progress
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.ready &= !WRITABLE;
                Step::Blocked
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Progress,
            Err(_) => Step::Close,
        }
    }

    /// After the whole response went out: release the backend connection
    /// (to the pool when it can carry another request) and go idle, take the
    /// next pipelined request, or close.
    fn finish_response(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        if !ex.active {
            return Step::Blocked;
        }
        if ex.tunnel {
            let client_done = ex.client_eof && ex.inbuf.as_ref().is_none_or(|b| b.is_empty());
            let upstream_done = ex.upstream_eof && !ex.pending_to_client();
            return if client_done || upstream_done {
                Step::Close
            } else {
                Step::Blocked
            };
        }
        let Some(body) = ex.resp_body.as_ref() else {
            return Step::Blocked;
        };
        if !body.is_complete() || ex.resp_head.as_ref().is_some_and(|b| !b.is_empty()) {
            return Step::Blocked;
        }
        let req_complete = ex.req_body.is_complete() && ex.req_head_unsent() == 0;
        let leftover = ex.resp_buf.as_ref().is_some_and(|b| !b.is_empty());
        let reusable = ex.upstream_reusable && req_complete && !leftover && !ex.upstream_eof;
        if let Some(uk) = ex.upstream_key.take() {
            self.finish_upstream(ex, uk, reusable);
        }
        self.log_request(ck, ex, ex.status);
        self.bufs.put_opt(&mut ex.req_head);
        self.bufs.put_opt(&mut ex.resp_buf);
        self.bufs.put_opt(&mut ex.resp_head);
        ex.active = false;
        // Everything was written: an error for the next pipelined request
        // gets its own answer, not a silent close.
        ex.resp_started = false;
        ex.resp_body = None;
        if !req_complete {
            // The rest of the request body would be read as the next request.
            ex.close_after = true;
        }
        if ex.close_after || ex.client_eof || self.draining() {
            return self.start_closing(ck, ex);
        }
        let has_next = ex.inbuf.as_ref().is_some_and(|b| !b.is_empty());
        if !has_next {
            self.bufs.put_opt(&mut ex.inbuf);
        }
        let server = &self.routing.config.server;
        let (phase, d) = if has_next {
            (Phase::Head, server.header_timeout)
        } else {
            (Phase::Idle, server.idle_timeout)
        };
        self.client_mut(ck).phase = phase;
        self.set_deadline(ck, d);
        Step::Progress
    }

    /// Returns a backend connection to the pool or closes it.
    pub(super) fn finish_upstream(&mut self, ex: &mut Exchange, uk: usize, reusable: bool) {
        let (u, b) = (ex.upstream, ex.backend);
        self.backend_finished(u, b, ex.counters.take());
        if reusable && u < self.routing.upstreams.len() {
            let limit = self.routing.upstream_cfg[u].idle_limit();
            let up = self.upstream_mut(uk);
            up.client = None;
            up.reused = false;
            if up.ready & READABLE == 0 && self.pool.put(u, b, uk, limit) {
                let d = self.routing.upstream_cfg[u].keepalive_timeout;
                self.set_deadline(uk, d);
                self.hand_out_slots(u);
                return;
            }
        }
        self.close_upstream(uk);
    }

    /// The backend failed before the response was complete: retry when that
    /// is safe, else answer 502/504, or cut the client off when part of the
    /// response already went out.
    fn upstream_failed(&mut self, ck: usize, ex: &mut Exchange, why: UpstreamFailure) -> Step {
        let Some(uk) = ex.upstream_key.take() else {
            return Step::Close;
        };
        let reused = matches!(self.slab.get(uk), Some(Entry::Upstream(u)) if u.reused);
        let (u, b) = (ex.upstream, ex.backend);
        self.backend_finished(u, b, ex.counters.take());
        self.close_upstream(uk);
        if ex.resp_started || ex.resp_body.is_some() {
            return Step::Close;
        }
        let got_bytes = ex.resp_buf.as_ref().is_some_and(|buf| !buf.is_empty());
        // A pooled connection the backend had already closed is not the
        // backend's failure: it is the keep-alive race.
        let stale = reused && why == UpstreamFailure::Closed && !got_bytes;
        if stale {
            ex.attempts -= 1;
        } else {
            // Only a request's first failure counts toward health: one
            // request that breaks every backend it reaches (or a client's
            // retries during an outage) must not take out more than one.
            self.backend_failed(u, b, ex.tries == 0);
            self.mark_tried(ex, b);
        }
        let retry = match why {
            UpstreamFailure::ConnectRefused | UpstreamFailure::ConnectTimeout => true,
            UpstreamFailure::Closed => ex.idempotent && ex.req_body.forwarded == 0 && !got_bytes,
            UpstreamFailure::Timeout | UpstreamFailure::Garbage => false,
        };
        if retry {
            ex.req_head_sent = 0;
            ex.upstream_eof = false;
            if let Some(buf) = ex.resp_buf.as_mut() {
                buf.clear();
            }
            if let Some(buf) = ex.resp_head.as_mut() {
                buf.clear();
            }
            match self.attach_backend(ck, ex, false) {
                Ok(_) => {
                    LoopStats::add(&self.stats.upstream_retries, 1);
                    return Step::Progress;
                }
                // Nothing left to try: answer for the last failure.
                Err(_) if why == UpstreamFailure::ConnectTimeout => {
                    return self.reject(ck, ex, Reject::GatewayTimeout)
                }
                Err(_) => return self.reject(ck, ex, Reject::BadGateway),
            }
        }
        let reject = match why {
            UpstreamFailure::ConnectTimeout | UpstreamFailure::Timeout => Reject::GatewayTimeout,
            _ => Reject::BadGateway,
        };
        self.reject(ck, ex, reject)
    }

    /// Answers with an error from the catalogue and closes the connection
    /// afterwards (its framing can no longer be trusted).
    fn reject(&mut self, ck: usize, ex: &mut Exchange, reject: Reject) -> Step {
        LoopStats::add(&self.stats.rejects[reject as usize], 1);
        self.log_request(ck, ex, reject.status());
        if let Some(uk) = ex.upstream_key.take() {
            self.finish_upstream(ex, uk, false);
        }
        if ex.resp_started {
            return Step::Close;
        }
        self.bufs.put_opt(&mut ex.req_head);
        self.bufs.put_opt(&mut ex.resp_buf);
        let mut out = ex.resp_head.take().unwrap_or_else(|| self.bufs.get());
        out.clear();
        out.push(reject.response());
        ex.resp_head = Some(out);
        ex.active = false;
        ex.tunnel = false;
        ex.resp_body = None;
        self.start_closing(ck, ex)
    }

    /// One access-log line for the request in `ex`, when the log is on.
    fn log_request(&mut self, ck: usize, ex: &mut Exchange, status: u16) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let client = match self.slab.get(ck) {
            Some(Entry::Client(c)) => c.peer,
            _ => return,
        };
        let line = &ex.req_line;
        let (method, target) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (&b"-"[..], &b"-"[..]),
        };
        let begun = !line.is_empty();
        let upstream = match self.routing.config.upstreams.get_index(ex.upstream) {
            Some((name, _)) if begun => name.as_str(),
            _ => "-",
        };
        let backend = match self.routing.backend_hosts.get(ex.upstream) {
            Some(hosts) if begun => hosts.get(ex.backend).map_or("-", String::as_str),
            _ => "-",
        };
        log.record(
            self.now,
            &crate::access_log::Entry {
                client,
                method,
                target,
                status,
                upstream,
                backend,
                bytes_out: ex.resp_body.as_ref().map_or(0, |b| b.forwarded),
                duration: self.now.saturating_duration_since(ex.started),
            },
        );
        ex.req_line.clear();
    }

    fn start_closing(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        ex.close_after = true;
        if let Some(buf) = ex.inbuf.as_mut() {
            buf.clear();
        }
        self.client_mut(ck).phase = Phase::Closing;
        let d = self.routing.config.server.write_timeout;
        self.set_deadline(ck, d);
        Step::Progress
    }

    /// Closing: once the answer is out, shut our side down and drain what
    /// the client still sends for a moment, so the answer is not lost to a
    /// reset caused by unread input.
    fn pump_closing(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        let c = self.client_mut(ck);
        if c.phase != Phase::Closing || ex.pending_to_client() {
            return Step::Blocked;
        }
        if !ex.shut {
            ex.shut = true;
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            self.set_deadline(ck, LINGER);
            return Step::Progress;
        }
        if ex.client_eof {
            return Step::Close;
        }
        Step::Blocked
    }

    /// A client connection's deadline passed.
    pub(super) fn client_timeout(&mut self, ck: usize) {
        let c = self.client_mut(ck);
        let phase = c.phase;
        let Some(mut ex) = c.ex.take() else {
            // Idle, or a new connection that never sent a byte.
            self.close_client(ck, None);
            return;
        };
        let step = match phase {
            Phase::Idle | Phase::Closing => Step::Close,
            Phase::Queued => {
                LoopStats::add(&self.stats.queue_timeouts, 1);
                self.reject(ck, &mut ex, Reject::Unavailable)
            }
            Phase::Head => {
                if ex.inbuf.as_ref().is_some_and(|b| !b.is_empty()) {
                    self.reject(ck, &mut ex, Reject::RequestTimeout)
                } else {
                    Step::Close
                }
            }
            Phase::Busy => match self.waiting_on(ck, &ex) {
                // Below server.min_rate: like its timeout, but sooner.
                waiting if self.below_min_rate(&mut ex, waiting) => {
                    if waiting == Waiting::ClientWrite {
                        LoopStats::add(&self.stats.slow_response_readers, 1);
                        Step::Close
                    } else {
                        LoopStats::add(&self.stats.slow_request_bodies, 1);
                        if ex.resp_started {
                            Step::Close
                        } else {
                            self.reject(ck, &mut ex, Reject::RequestTimeout)
                        }
                    }
                }
                _ if ex.resp_started => Step::Close,
                Waiting::Connect => {
                    self.upstream_failed(ck, &mut ex, UpstreamFailure::ConnectTimeout)
                }
                Waiting::UpstreamWrite | Waiting::UpstreamResponse => {
                    self.upstream_failed(ck, &mut ex, UpstreamFailure::Timeout)
                }
                // The client owes body bytes: its fault, not the backend's.
                Waiting::ClientBody => self.reject(ck, &mut ex, Reject::RequestTimeout),
                Waiting::Tunnel | Waiting::ClientWrite | Waiting::UpstreamBody => Step::Close,
            },
        };
        if step == Step::Close {
            self.close_client(ck, Some(ex));
            return;
        }
        match self.pump(ck, &mut ex) {
            Flow::Keep => self.park(ck, ex),
            Flow::Close => self.close_client(ck, Some(ex)),
        }
    }
}
