//! The upstream exchange: complete the connect, send the request head and
//! the body bytes its framing vouches for, read the response and parse its
//! head; and when the backend fails before a whole response, retry where
//! that is safe or answer 502/504.

use std::io;

use super::conn::{Entry, Exchange, HUP, READABLE, WRITABLE};
use super::drive::Step;
use super::event_loop::EventLoop;
use super::tunnel;
use super::upstream_tls::Handshake;
use crate::http::body::BodyScan;
use crate::http::errors::Reject;
use crate::http::response::parse_and_rewrite;
use crate::stats::LoopStats;

/// Why the backend side of an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpstreamFailure {
    ConnectRefused,
    ConnectTimeout,
    /// Closed or reset before a complete response head.
    Closed,
    /// No response within the read timeout.
    Timeout,
    /// An unparseable or unframeable response.
    Garbage,
    /// The TLS handshake failed (a certificate refused, say): nothing was
    /// sent, so another backend may take the request.
    Tls,
}

impl EventLoop {
    /// Moves bytes between the client's buffers and the backend connection.
    pub(super) fn pump_upstream(&mut self, ck: usize, ex: &mut Exchange) -> Step {
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
        match self.upstream_handshake(uk) {
            Handshake::Ready => {}
            Handshake::JustDone => progress = true,
            Handshake::Waiting if progress => return Step::Progress,
            Handshake::Waiting => return Step::Blocked,
            Handshake::Failed => return self.upstream_failed(ck, ex, UpstreamFailure::Tls),
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
            if total > 0 || up.tls_pending() {
                match up.send(head, body) {
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
                match up.recv(spare) {
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
            let mut client = ex.client;
            // Draining: tell the client this connection ends, so it does not
            // send its next request into the close.
            client.keep_alive &= self.drain_deadline.is_none();
            let parsed = parse_and_rewrite(buf.data(), client, &mut out);
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
                        tunnel::enter(ex);
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

    /// The backend failed before the response was complete: retry when that
    /// is safe, else answer 502/504, or cut the client off when part of the
    /// response already went out.
    pub(super) fn upstream_failed(
        &mut self,
        ck: usize,
        ex: &mut Exchange,
        why: UpstreamFailure,
    ) -> Step {
        let Some(uk) = ex.upstream_key.take() else {
            return Step::Close;
        };
        let reused = matches!(self.slab.get(uk), Some(Entry::Upstream(u)) if u.reused);
        let b = ex.backend;
        self.release_backend(ex, uk, false);
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
            self.attempt_failed(ex, b);
        }
        let retry = match why {
            UpstreamFailure::ConnectRefused
            | UpstreamFailure::ConnectTimeout
            | UpstreamFailure::Tls => true,
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
}
