//! TLS on a client connection: rustls' state machine sits between the
//! socket and the exchange's buffers, in the loop, never blocking. Reads
//! and writes keep the plaintext path's readiness rules (`drive.rs`): a
//! read comes back short only once the socket had nothing more, a write
//! short only once the socket is full, so the edge that clears a flag is
//! the one that sets it again.
//!
//! The handshake runs inside reads: a read that gets the ClientHello
//! writes the server's flight; the connection is in `Phase::Handshake`
//! until rustls says it is done (`EventLoop::tls_established`), bounded
//! by `server.tls.handshake_timeout`.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ClientConfig, CommonState, ServerConfig};

use super::conn::HUP;
use super::sockio;
use crate::stats::LoopStats;
use crate::tls::HandshakeFailure;

/// Plaintext encrypted per call before its ciphertext is written out:
/// bounds what waits in `outgoing` for a slow reader.
const SEND_CHUNK: usize = 64 * 1024;
/// Room for one read of ciphertext: the largest TLS record on the wire
/// (16 KiB of data, 2 KiB of expansion, its header) and a bit.
const READ_ROOM: usize = 18 * 1024 + 64;
/// Ciphertext waiting to be processed beyond this (a record that never
/// completes, or a handshake message larger than rustls takes) is refused.
const INCOMING_MAX: usize = 96 * 1024;
/// Framing, content type and tag around each encrypted record, at most.
const RECORD_OVERHEAD: usize = 5 + 1 + 256;
const RECORD_DATA: usize = 16 * 1024;

/// Emptied buffers a loop keeps for the next connection that needs one:
/// a TLS read or write would otherwise allocate and zero 18 KiB.
const SPARE_BUFFERS: usize = 16;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer(need: usize) -> Vec<u8> {
    let pooled = SPARE.with(|p| p.borrow_mut().pop());
    match pooled {
        Some(mut v) => {
            if v.len() < need {
                v.resize(need, 0);
            }
            v
        }
        None => vec![0; need.max(READ_ROOM)],
    }
}

fn give_buffer(v: Vec<u8>) {
    if v.len() > 4 * READ_ROOM {
        return; // a large write's buffer: freed, not kept
    }
    SPARE.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < SPARE_BUFFERS {
            p.push(v);
        }
    });
}

/// Bytes in a buffer the loop owns: `data[start..len]` holds them; `data`
/// is taken from the loop's spares while any wait and given back once the
/// last is taken.
#[derive(Default)]
struct Bytes {
    data: Vec<u8>,
    /// Valid bytes end here...
    len: usize,
    /// ...and start here.
    start: usize,
}

impl Bytes {
    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.len]
    }

    fn is_empty(&self) -> bool {
        self.start == self.len
    }

    /// Room for `need` more bytes at the end.
    fn spare(&mut self, need: usize) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = take_buffer(need);
        }
        if self.start > 0 {
            self.data.copy_within(self.start..self.len, 0);
            self.len -= self.start;
            self.start = 0;
        }
        if self.data.len() < self.len + need {
            self.data.resize(self.len + need, 0);
        }
        &mut self.data[self.len..]
    }

    fn filled(&mut self, n: usize) {
        self.len += n;
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.len {
            self.release();
        }
    }

    /// Nothing waits: the buffer goes back to the loop's spares.
    fn release(&mut self) {
        let data = std::mem::take(&mut self.data);
        (self.start, self.len) = (0, 0);
        if !data.is_empty() {
            give_buffer(data);
        }
    }
}

/// rustls' unbuffered connection, server side (a client of the proxy) or
/// client side (the proxy to a backend), seen the same way.
pub(super) trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &CommonState;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

/// A client connection's TLS: the proxy is the server.
pub(super) type ClientTls = TlsSession<UnbufferedServerConnection>;
/// A backend connection's TLS: the proxy is the client.
pub(super) type UpstreamTls = TlsSession<UnbufferedClientConnection>;

/// rustls' unbuffered connection with buffers the loop owns, each freed
/// once empty: an idle keep-alive TLS connection holds no plaintext or
/// ciphertext buffer (the buffered `ServerConnection` keeps a 4 KiB read
/// buffer for life).
pub(super) struct TlsSession<C: Unbuffered> {
    conn: C,
    /// Ciphertext read, not yet processed (a record not yet complete).
    incoming: Bytes,
    /// Ciphertext for the socket.
    outgoing: Bytes,
    /// Decrypted plaintext the caller had no room for.
    plain: Bytes,
    /// The handshake finished (and was counted).
    pub established: bool,
    /// When the connection was accepted: the handshake's latency.
    pub accepted: Instant,
    /// Why the handshake failed, when it did (counted at close).
    pub failure: Option<HandshakeFailure>,
    /// close_notify received, or the socket's EOF: no more plaintext.
    ended: bool,
    close_notify_sent: bool,
    /// The error that ended the session, if one did.
    error: Option<rustls::Error>,
}

/// What one turn of rustls' state machine asks for.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// More ciphertext from the socket.
    NeedInput,
    /// Records were handled: turn again.
    Again,
    /// The peer's close_notify: no more plaintext.
    PeerClosed,
}

fn general(e: impl std::fmt::Display) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

impl<C: Unbuffered> Drop for TlsSession<C> {
    fn drop(&mut self) {
        self.incoming.release();
        self.outgoing.release();
        self.plain.release();
    }
}

impl ClientTls {
    pub fn new(config: &Arc<ServerConfig>, now: Instant) -> io::Result<ClientTls> {
        let conn = UnbufferedServerConnection::new(config.clone()).map_err(io::Error::other)?;
        Ok(TlsSession::with(conn, now))
    }
}

impl UpstreamTls {
    pub fn connect(
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
        now: Instant,
    ) -> io::Result<UpstreamTls> {
        let conn =
            UnbufferedClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        Ok(TlsSession::with(conn, now))
    }

    /// Drives the handshake with a backend: true once done, false while it
    /// waits for the socket (flags in `ready` cleared as for any read).
    pub fn handshake(&mut self, stream: &mut TcpStream, ready: &mut u8) -> io::Result<bool> {
        loop {
            let turn = match self.turn(&mut [], &mut 0, None, &mut 0) {
                Ok(t) => t,
                Err(e) => return Err(self.fail(e, stream)),
            };
            if self.pending() && !self.flush(stream)? {
                *ready &= !super::conn::WRITABLE;
            }
            match turn {
                Turn::Again => continue,
                Turn::PeerClosed => return Err(io::ErrorKind::UnexpectedEof.into()),
                Turn::NeedInput if !self.is_handshaking() => {
                    self.established = true;
                    return Ok(true);
                }
                Turn::NeedInput => {}
            }
            match sockio::recv(stream, self.incoming.spare(READ_ROOM)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => self.incoming.filled(k),
                Err(e) => {
                    self.drop_empty_incoming();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        *ready &= !super::conn::READABLE;
                        return Ok(false);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Why the handshake failed, for the log.
    pub fn error(&self) -> Option<&rustls::Error> {
        self.error.as_ref()
    }
}

impl<C: Unbuffered> TlsSession<C> {
    fn with(conn: C, now: Instant) -> TlsSession<C> {
        TlsSession {
            conn,
            incoming: Bytes::default(),
            outgoing: Bytes::default(),
            plain: Bytes::default(),
            established: false,
            accepted: now,
            failure: None,
            ended: false,
            close_notify_sent: false,
            error: None,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.common().is_handshaking()
    }

    pub fn resumed(&self) -> bool {
        matches!(
            self.conn.common().handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        )
    }

    /// Negotiated version and cipher suite, for the access log.
    pub fn negotiated(&self) -> (&'static str, &'static str) {
        let version = match self.conn.common().protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "-",
        };
        let suite = self
            .conn
            .common()
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("-");
        (version, suite)
    }

    /// Ciphertext is waiting for the socket.
    pub fn pending(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// One turn: hands rustls the ciphertext read so far and does what it
    /// asks. Application data goes to `buf[*n..]`; what does not fit, to
    /// `self.plain`. With `encrypt`, plaintext is encrypted into
    /// `outgoing` once rustls allows it, and how much is returned in it.
    fn turn(
        &mut self,
        buf: &mut [u8],
        n: &mut usize,
        encrypt: Option<&[u8]>,
        taken: &mut usize,
    ) -> Result<Turn, rustls::Error> {
        let (start, len) = (self.incoming.start, self.incoming.len);
        let UnbufferedStatus { discard, state } =
            self.conn.process(&mut self.incoming.data[start..len]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                self.incoming.consume(discard);
                return Err(e);
            }
        };
        let turn = match state {
            ConnectionState::ReadTraffic(mut records) => {
                while *n < buf.len() || encrypt.is_some() {
                    let Some(record) = records.next_record() else {
                        break;
                    };
                    let payload = record?.payload;
                    let k = payload.len().min(buf.len() - *n);
                    buf[*n..*n + k].copy_from_slice(&payload[..k]);
                    *n += k;
                    let rest = &payload[k..];
                    if !rest.is_empty() {
                        self.plain.spare(rest.len())[..rest.len()].copy_from_slice(rest);
                        self.plain.filled(rest.len());
                    }
                }
                Turn::Again
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                let written = match encode.encode(self.outgoing.spare(4096)) {
                    Err(EncodeError::InsufficientSize(e)) => encode
                        .encode(self.outgoing.spare(e.required_size))
                        .map_err(general)?,
                    other => other.map_err(general)?,
                };
                self.outgoing.filled(written);
                Turn::Again
            }
            // What was encoded waits in `outgoing`, written as the socket takes it.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                Turn::Again
            }
            ConnectionState::WriteTraffic(mut write) => match encrypt {
                Some(plain) if !plain.is_empty() => {
                    let records = plain.len().div_ceil(RECORD_DATA);
                    let need = plain.len() + records * RECORD_OVERHEAD;
                    let written = match write.encrypt(plain, self.outgoing.spare(need)) {
                        Err(EncryptError::InsufficientSize(e)) => write
                            .encrypt(plain, self.outgoing.spare(e.required_size))
                            .map_err(general)?,
                        other => other.map_err(general)?,
                    };
                    self.outgoing.filled(written);
                    *taken = plain.len();
                    Turn::NeedInput
                }
                Some(_) if !self.close_notify_sent => {
                    self.close_notify_sent = true;
                    let written = write
                        .queue_close_notify(self.outgoing.spare(64))
                        .map_err(general)?;
                    self.outgoing.filled(written);
                    Turn::NeedInput
                }
                _ => Turn::NeedInput,
            },
            ConnectionState::PeerClosed | ConnectionState::Closed => Turn::PeerClosed,
            // 0-RTT is never accepted (max_early_data_size is 0).
            _ => Turn::NeedInput,
        };
        self.incoming.consume(discard);
        Ok(turn)
    }

    /// The failure of a turn: counted if mid-handshake, and the alert
    /// rustls queued for it goes out (best effort) before the close.
    fn fail(&mut self, e: rustls::Error, stream: &mut TcpStream) -> io::Error {
        if !self.established {
            self.failure = Some(HandshakeFailure::of(&e));
        }
        self.error = Some(e.clone());
        let (start, len) = (self.incoming.start, self.incoming.len);
        let incoming = &mut self.incoming.data[start..len];
        let UnbufferedStatus { state, .. } = self.conn.process(incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            if let Ok(written) = encode.encode(self.outgoing.spare(512)) {
                self.outgoing.filled(written);
                let _ = self.flush(stream);
            }
        }
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// Plaintext into `buf`, like recv(2): Ok(0) is the end of the stream
    /// (close_notify or the socket's EOF), WouldBlock when there is none
    /// and the socket is drained. The handshake runs inside: its answers
    /// are written as they come (what the socket does not take waits).
    pub fn recv(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        ready: &mut u8,
    ) -> io::Result<usize> {
        let mut n = 0;
        if !self.plain.is_empty() {
            let left = self.plain.pending();
            n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
            self.plain.consume(n);
        }
        loop {
            if n == buf.len() {
                return Ok(n);
            }
            let turn = match self.turn(buf, &mut n, None, &mut 0) {
                Ok(t) => t,
                Err(e) => return Err(self.fail(e, stream)),
            };
            if self.pending() {
                self.flush(stream)?;
            }
            match turn {
                Turn::Again => continue,
                Turn::PeerClosed => {
                    self.ended = true;
                    return Ok(n);
                }
                Turn::NeedInput if self.ended => return Ok(n),
                Turn::NeedInput => {}
            }
            if self.incoming.len - self.incoming.start >= INCOMING_MAX {
                return Err(self.fail(general("a TLS record that never completes"), stream));
            }
            match sockio::recv(stream, self.incoming.spare(READ_ROOM)) {
                Ok(0) => {
                    self.ended = true;
                    if n > 0 {
                        *ready |= HUP; // the next read sees the end
                    } else if !self.established {
                        self.failure.get_or_insert(HandshakeFailure::Closed);
                    }
                    self.drop_empty_incoming();
                    return Ok(n);
                }
                Ok(k) => self.incoming.filled(k),
                Err(e) => {
                    self.drop_empty_incoming();
                    if e.kind() == io::ErrorKind::WouldBlock && n > 0 {
                        return Ok(n);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// A read that got nothing leaves no buffer behind.
    fn drop_empty_incoming(&mut self) {
        if self.incoming.is_empty() {
            self.incoming.release();
        }
    }

    /// Encrypts `head` then `body` and writes them, like one send(2):
    /// returns the plaintext bytes taken, short only when the socket filled
    /// up (their ciphertext, or part of it, then waits in `outgoing`).
    pub fn send(&mut self, stream: &mut TcpStream, head: &[u8], body: &[u8]) -> io::Result<usize> {
        if !self.flush(stream)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let total = head.len() + body.len();
        let mut sent = 0;
        while sent < total {
            // One slice at a time (a small body was joined to its head).
            let piece = if sent < head.len() {
                &head[sent..]
            } else {
                &body[sent - head.len()..]
            };
            let piece = &piece[..piece.len().min(SEND_CHUNK)];
            let mut taken = 0;
            let mut turns = 0;
            while taken == 0 {
                turns += 1;
                let turn = self
                    .turn(&mut [], &mut 0, Some(piece), &mut taken)
                    .map_err(|e| self.fail(e, stream))?;
                if taken == 0 && (turn != Turn::Again || turns > 64) {
                    // Not writable (closed, or still handshaking).
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
            }
            sent += taken;
            if !self.flush(stream)? {
                break; // the socket is full: the rest waits for writable
            }
        }
        Ok(sent)
    }

    /// Writes queued ciphertext; true once none is left.
    pub fn flush(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        while !self.outgoing.is_empty() {
            match sockio::send_two(stream, self.outgoing.pending(), &[]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => self.outgoing.consume(k),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Queues close_notify once (before the proxy closes its side), and
    /// writes what it can; true once nothing is left to write.
    pub fn close(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        if !self.close_notify_sent && self.established {
            let mut turns = 0;
            while !self.close_notify_sent && turns < 64 {
                turns += 1;
                match self.turn(&mut [], &mut 0, Some(&[]), &mut 0) {
                    Ok(Turn::Again) => {}
                    Ok(_) | Err(_) => break,
                }
            }
            self.close_notify_sent = true;
        }
        self.flush(stream)
    }
}

impl super::event_loop::EventLoop {
    /// The handshake of client `ck` just finished: counted, and the
    /// connection waits for its first request head (header_timeout).
    pub(super) fn tls_established(&mut self, ck: usize) {
        let now = self.now;
        let c = self.client_mut(ck);
        let Some(tls) = c.tls.as_deref_mut() else {
            return;
        };
        tls.established = true;
        let resumed = tls.resumed();
        let took = now.saturating_duration_since(tls.accepted);
        let stats = self.stats;
        if resumed {
            LoopStats::add(&stats.tls_handshakes_resumed, 1);
        } else {
            LoopStats::add(&stats.tls_handshakes_full, 1);
        }
        stats.tls_handshake_seconds.record(took.as_secs_f64());
        let d = self.routing.config.server.header_timeout;
        self.set_deadline(ck, d);
    }

    /// The TLS session of a closing connection: a handshake that never
    /// finished is counted by why.
    pub(super) fn tls_closed(&mut self, tls: &ClientTls) {
        let stats = self.stats;
        stats.tls_connections_current.fetch_sub(1, Relaxed);
        if !tls.established {
            let why = tls.failure.unwrap_or(HandshakeFailure::Closed);
            LoopStats::add(&stats.tls_handshake_failures[why as usize], 1);
        }
    }
}
