//! What the loop's slab holds: client connections, upstream connections and
//! the exchange (one request/response in flight) a busy client owns.

use std::net::IpAddr;
use std::time::Instant;

use mio::net::TcpStream;

use super::min_rate::RateCredit;
use crate::buffer::Buf;
use crate::control::board::BackendCounters;
use crate::http::body::{BodyScan, Framing};
use crate::http::response::ClientSide;
use crate::timer::{Millis, Tick};

/// At most this many backends are tried for one request.
pub(super) const MAX_TRIED: usize = 4;

pub(super) const READABLE: u8 = 1;
pub(super) const WRITABLE: u8 = 2;
/// The peer closed or reset: the edge that said so will not come again, so
/// a short read must not end the reading (the EOF or error is still to be seen).
pub(super) const HUP: u8 = 4;

/// Where a client connection is in its life (decides its timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// A TLS handshake is under way: server.tls.handshake_timeout.
    Handshake,
    /// Between requests, no buffer held: idle_timeout.
    Idle,
    /// A request head is arriving: header_timeout from its first byte.
    Head,
    /// A request waits in its upstream's queue for a connection
    /// (`max_conns`): queue_timeout, then 503.
    Queued,
    /// A request is being proxied: upstream and read/write timeouts.
    Busy,
    /// An error answer is being sent, then the connection lingers briefly.
    Closing,
}

pub(super) struct ClientConn {
    pub stream: TcpStream,
    pub gen: u32,
    pub deadline: Millis,
    /// Tick of this connection's live timer entry.
    pub timer_tick: Tick,
    pub ready: u8,
    pub phase: Phase,
    pub peer: IpAddr,
    /// Counted in open connections (false for those refused past max_conn).
    pub counted: bool,
    /// In the loop's queue of slow heads (`event_loop::SLOW_HEAD`).
    pub deferred: bool,
    pub ex: Option<Box<Exchange>>,
    /// The TLS session, on a TLS listener.
    pub tls: Option<Box<super::tls_io::ClientTls>>,
}

impl ClientConn {
    /// One read of plaintext: recv(2), or through TLS.
    pub fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => super::sockio::recv(&self.stream, buf),
            Some(tls) => tls.recv(&mut self.stream, buf, &mut self.ready),
        }
    }

    /// One write of plaintext, `head` then `body`.
    pub fn send(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => super::sockio::send_two(&mut self.stream, head, body),
            Some(tls) => tls.send(&mut self.stream, head, body),
        }
    }
}

pub(super) struct UpstreamConn {
    pub stream: TcpStream,
    pub gen: u32,
    pub deadline: Millis,
    pub timer_tick: Tick,
    pub ready: u8,
    pub upstream: u16,
    pub backend: u16,
    /// The client this connection serves; `None` while in the pool.
    pub client: Option<usize>,
    pub connecting: bool,
    pub connect_started: Instant,
    /// Taken from the keep-alive pool for the current request.
    pub reused: bool,
    /// The TLS session, to a backend with `tls`; the handshake runs after
    /// the connect, under the same `connect_timeout`.
    pub tls: Option<Box<super::tls_io::UpstreamTls>>,
}

impl UpstreamConn {
    /// Connected, and the TLS handshake (if any) done: requests may go.
    pub fn is_ready(&self) -> bool {
        !self.connecting && self.tls.as_deref().is_none_or(|t| t.established)
    }

    /// One read of plaintext: recv(2), or through TLS.
    pub fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => super::sockio::recv(&self.stream, buf),
            Some(tls) => tls.recv(&mut self.stream, buf, &mut self.ready),
        }
    }

    /// One write of plaintext, `head` then `body`; through TLS, ciphertext
    /// left from an earlier write goes first.
    pub fn send(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => super::sockio::send_two(&mut self.stream, head, body),
            Some(tls) => tls.send(&mut self.stream, head, body),
        }
    }

    /// Ciphertext waits for the socket.
    pub fn tls_pending(&self) -> bool {
        self.tls.as_deref().is_some_and(|t| t.pending())
    }
}

pub(super) enum Entry {
    Client(ClientConn),
    Upstream(UpstreamConn),
}

/// One request and its response, with the buffers they hold while bytes are
/// in flight. Pooled per loop; an idle connection has none.
pub(super) struct Exchange {
    /// Bytes read from the client: the head, the body, pipelined requests.
    pub inbuf: Option<Buf>,
    /// The head sent upstream; kept until the response head arrives so the
    /// request can be re-sent to another backend.
    pub req_head: Option<Buf>,
    pub req_head_sent: usize,
    /// Bytes read from the backend.
    pub resp_buf: Option<Buf>,
    /// The head (or synthesized answer) to send to the client.
    pub resp_head: Option<Buf>,
    /// A request is in flight.
    pub active: bool,
    pub tunnel: bool,
    pub req_body: BodyScan,
    /// `None` until the response head has arrived.
    pub resp_body: Option<BodyScan>,
    pub client: ClientSide,
    pub idempotent: bool,
    /// Close the client once the current response is sent.
    pub close_after: bool,
    pub client_eof: bool,
    pub upstream_eof: bool,
    /// Some response byte went to the client: no more error answers.
    pub resp_started: bool,
    /// The backend connection may carry the next request.
    pub upstream_reusable: bool,
    pub upstream_key: Option<usize>,
    pub upstream: usize,
    pub backend: usize,
    pub route: usize,
    pub tried: [usize; MAX_TRIED],
    pub tries: usize,
    pub attempts: usize,
    pub started: Instant,
    /// Closing: the write side was shut down after the answer.
    pub shut: bool,
    /// Closing: after the answer, wait (LINGER) for the client's EOF while
    /// discarding its input, so input still in flight cannot reset the
    /// connection before the answer is read. Off for a head that timed out
    /// with nothing unread: that client had gone quiet (`pump_closing`).
    pub linger: bool,
    /// Status of the final response (for the access log).
    pub status: u16,
    /// "METHOD target" of the request, kept only when the access log is on.
    pub req_line: Vec<u8>,
    /// Shared counters of the backend serving the request: kept here so the
    /// request leaves `active` even if a reconfiguration removed the backend.
    pub counters: Option<&'static BackendCounters>,
    /// `server.min_rate`: the client's time credit while the proxy waits on it.
    pub rate: RateCredit,
}

impl Exchange {
    /// Resets for reuse, keeping the access-log line's allocation.
    pub fn reset(&mut self, now: Instant) {
        let mut line = std::mem::take(&mut self.req_line);
        line.clear();
        *self = Exchange::new(now);
        self.req_line = line;
    }

    pub fn new(now: Instant) -> Exchange {
        Exchange {
            inbuf: None,
            req_head: None,
            req_head_sent: 0,
            resp_buf: None,
            resp_head: None,
            active: false,
            tunnel: false,
            req_body: BodyScan::new(Framing::Empty, false),
            resp_body: None,
            client: ClientSide {
                http10: false,
                keep_alive: true,
                head_request: false,
                upgrade_requested: false,
            },
            idempotent: true,
            close_after: false,
            client_eof: false,
            upstream_eof: false,
            resp_started: false,
            upstream_reusable: false,
            upstream_key: None,
            upstream: 0,
            backend: 0,
            route: 0,
            tried: [usize::MAX; MAX_TRIED],
            tries: 0,
            attempts: 0,
            started: now,
            shut: false,
            linger: true,
            status: 0,
            req_line: Vec::new(),
            counters: None,
            rate: RateCredit::default(),
        }
    }

    /// Holds no buffer and no request: can go back to the pool.
    pub fn is_idle(&self) -> bool {
        !self.active
            && !self.client_eof
            && self.inbuf.is_none()
            && self.req_head.is_none()
            && self.resp_buf.is_none()
            && self.resp_head.is_none()
    }

    pub fn pending_to_client(&self) -> bool {
        self.resp_head.as_ref().is_some_and(|b| !b.is_empty())
            || self.resp_body.as_ref().is_some_and(|b| b.pending() > 0)
    }

    pub fn req_head_unsent(&self) -> usize {
        self.req_head
            .as_ref()
            .map_or(0, |b| b.len() - self.req_head_sent)
    }
}
