//! The client request phase: read bytes from the client, parse the next
//! request head, route it, attach a backend (or queue for one) and write
//! the head that goes upstream.

use std::io;

use super::attach::Attached;
use super::conn::{Entry, Exchange, Phase, HUP, MAX_TRIED, READABLE};
use super::drive::Step;
use super::event_loop::EventLoop;
use super::min_rate::RateCredit;
use crate::http::body::BodyScan;
use crate::http::errors::Reject;
use crate::http::request::{parse_request_into, write_upstream_head, Method, RequestHead};
use crate::http::response::ClientSide;
use crate::stats::LoopStats;

impl EventLoop {
    pub(super) fn read_client(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        let Some(Entry::Client(c)) = self.slab.get_mut(ck) else {
            return Step::Close;
        };
        if c.ready & READABLE == 0 || ex.client_eof {
            return Step::Blocked;
        }
        // A small buffer first: most heads fit in a page, so a client that
        // trickles one holds a page, not a large buffer.
        let buf = ex.inbuf.get_or_insert_with(|| self.bufs.get_small());
        if c.phase == Phase::Closing {
            buf.clear(); // draining after an error answer
        }
        if !buf.has_spare() {
            if !self.bufs.is_small(buf) {
                return Step::Blocked; // backpressure: the buffer drains first
            }
            self.bufs.grow(buf); // a long head, or a body arriving
        }
        let spare = buf.spare();
        let want = spare.len();
        let result = c.recv(spare);
        let established =
            c.phase == Phase::Handshake && c.tls.as_ref().is_some_and(|t| !t.is_handshaking());
        if established {
            c.phase = Phase::Head;
        }
        let step = match result {
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
                } else {
                    self.bufs.grow(buf); // more is waiting: read it in large pieces
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
        };
        if established && step != Step::Close {
            self.tls_established(ck);
            return Step::Progress;
        }
        step
    }

    /// Parses the next request head when none is in flight.
    pub(super) fn next_request(&mut self, ck: usize, ex: &mut Exchange) -> Step {
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
        let c = self.client_mut(ck);
        let (peer, https) = (c.peer, c.tls.is_some());
        let fallback_host = &self.routing.backend_hosts[ex.upstream][ex.backend];
        let fits = write_upstream_head(data, head, &mut out, peer, fallback_host, https);
        ex.req_head = Some(out);
        ex.req_head_sent = 0;
        if !fits {
            return self.reject(ck, ex, Reject::HeadersTooLarge);
        }
        ex.inbuf.as_mut().expect("inbuf").consume(head.head_len);
        ex.active = true;
        Step::Progress
    }
}
