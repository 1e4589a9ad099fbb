//! The client response phase: write the response head and body to the
//! client, finish the request once all of it is out (backend connection
//! released, next pipelined request or idle or close), error answers from
//! the catalogue, the access-log line, and the lingering close after an
//! error.

use std::io;

use super::conn::{Entry, Exchange, Phase, READABLE, WRITABLE};
use super::drive::Step;
use super::event_loop::{EventLoop, LINGER};
use super::tunnel;
use crate::http::errors::Reject;
use crate::stats::LoopStats;

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

impl EventLoop {
    pub(super) fn write_client(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        let Some(Entry::Client(c)) = self.slab.get_mut(ck) else {
            return Step::Close;
        };
        if c.ready & WRITABLE == 0 {
            return Step::Blocked;
        }
        if let Some(tls) = c.tls.as_deref_mut() {
            // Ciphertext left from the last write (or the handshake) first.
            if tls.pending() {
                match tls.flush(&mut c.stream) {
                    Ok(true) => {}
                    Ok(false) => {
                        c.ready &= !WRITABLE;
                        return Step::Blocked;
                    }
                    Err(_) => return Step::Close,
                }
                if !ex.pending_to_client() {
                    return Step::Progress;
                }
            }
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
        match c.send(head, body) {
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
    pub(super) fn finish_response(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        if !ex.active {
            return Step::Blocked;
        }
        if ex.tunnel {
            return tunnel::finished(ex);
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
            self.release_backend(ex, uk, reusable);
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

    /// Answers with an error from the catalogue and closes the connection
    /// afterwards (its framing can no longer be trusted).
    pub(super) fn reject(&mut self, ck: usize, ex: &mut Exchange, reject: Reject) -> Step {
        LoopStats::add(&self.stats.rejects[reject as usize], 1);
        self.log_request(ck, ex, reject.status());
        if let Some(uk) = ex.upstream_key.take() {
            self.release_backend(ex, uk, false);
        }
        if ex.resp_started {
            return Step::Close;
        }
        self.bufs.put_opt(&mut ex.req_head);
        self.bufs.put_opt(&mut ex.resp_buf);
        // An error answer is a few hundred bytes: a page, not a large buffer.
        let mut out = ex.resp_head.take().unwrap_or_else(|| self.bufs.get_small());
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
        let (client, tls) = match self.slab.get(ck) {
            Some(Entry::Client(c)) => (c.peer, c.tls.as_ref().map(|t| t.negotiated())),
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
                tls,
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
    pub(super) fn pump_closing(&mut self, ck: usize, ex: &mut Exchange) -> Step {
        let c = self.client_mut(ck);
        if c.phase != Phase::Closing || ex.pending_to_client() {
            return Step::Blocked;
        }
        if let Some(tls) = c.tls.as_deref_mut().filter(|_| !ex.shut) {
            // close_notify before our FIN, so the client tells a complete
            // answer from a cut one.
            match tls.close(&mut c.stream) {
                Ok(true) => {}
                Ok(false) => {
                    c.ready &= !WRITABLE;
                    return Step::Blocked;
                }
                Err(_) => return Step::Close,
            }
        }
        if !ex.shut {
            // Nothing unread (the last read drained the socket, no readiness
            // since): close() sends FIN after the answer, and saves the
            // shutdown, the wait for EOF and its read. 10,000 slowloris
            // clients closed at header_timeout each cost that much, every
            // header_timeout.
            if !ex.linger && c.ready & READABLE == 0 {
                return Step::Close;
            }
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
}
