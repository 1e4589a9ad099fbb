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

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use super::conn::HUP;
use super::sockio;
use crate::stats::LoopStats;
use crate::tls::HandshakeFailure;
use std::sync::atomic::Ordering::Relaxed;

/// Plaintext handed to rustls per record batch before its ciphertext is
/// written out: bounds what rustls queues for a slow reader.
const SEND_CHUNK: usize = 64 * 1024;

pub(super) struct ClientTls {
    conn: ServerConnection,
    /// The handshake finished (and was counted).
    pub established: bool,
    /// When the connection was accepted: the handshake's latency.
    pub accepted: Instant,
    /// Why the handshake failed, when it did (counted at close).
    pub failure: Option<HandshakeFailure>,
    close_notify_sent: bool,
}

/// rustls reads ciphertext through this: one recv(2).
struct SocketReader<'a>(&'a TcpStream);

impl Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sockio::recv(self.0, buf)
    }
}

impl ClientTls {
    pub fn new(config: &Arc<ServerConfig>, now: Instant) -> io::Result<ClientTls> {
        let conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        Ok(ClientTls {
            conn,
            established: false,
            accepted: now,
            failure: None,
            close_notify_sent: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    pub fn resumed(&self) -> bool {
        matches!(
            self.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        )
    }

    /// Negotiated version and cipher suite, for the access log.
    pub fn negotiated(&self) -> (&'static str, &'static str) {
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "-",
        };
        let suite = self
            .conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("-");
        (version, suite)
    }

    /// Ciphertext is waiting for the socket.
    pub fn pending(&self) -> bool {
        self.conn.wants_write()
    }

    /// Plaintext into `buf`, like recv(2): Ok(0) is the end of the stream
    /// (close_notify or the socket's EOF), WouldBlock when there is none
    /// and the socket is drained. A protocol error queues rustls' alert,
    /// which goes out before the error is returned (best effort).
    pub fn recv(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        ready: &mut u8,
    ) -> io::Result<usize> {
        let mut n = 0;
        loop {
            match self.conn.reader().read(&mut buf[n..]) {
                Ok(0) if n < buf.len() => return Ok(n), // close_notify, all read
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: an EOF all the same
                // (HTTP framing says whether anything was cut short).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(n),
                Err(e) => return Err(e),
            }
            if n == buf.len() {
                return Ok(n);
            }
            match self.conn.read_tls(&mut SocketReader(stream)) {
                Ok(0) => {
                    if n > 0 {
                        *ready |= HUP; // the next read sees the EOF
                    } else if !self.established {
                        self.failure.get_or_insert(HandshakeFailure::Closed);
                    }
                    return Ok(n);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                if !self.established {
                    self.failure = Some(HandshakeFailure::of(&e));
                }
                let _ = self.flush(stream);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // The handshake's answer (or a post-handshake ticket) goes out
            // now; what the socket cannot take waits for writable.
            if self.conn.wants_write() {
                self.flush(stream)?;
            }
        }
    }

    /// Encrypts `head` then `body` and writes them, like one send(2):
    /// returns the plaintext bytes taken, short only when the socket filled
    /// up (their ciphertext, or part of it, then waits in rustls).
    pub fn send(&mut self, stream: &mut TcpStream, head: &[u8], body: &[u8]) -> io::Result<usize> {
        if !self.flush(stream)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let total = head.len() + body.len();
        let mut taken = 0;
        while taken < total {
            let (a, b) = if taken < head.len() {
                (&head[taken..], body)
            } else {
                (&[][..], &body[taken - head.len()..])
            };
            let a = &a[..a.len().min(SEND_CHUNK)];
            let b = &b[..b.len().min(SEND_CHUNK - a.len())];
            let k = self
                .conn
                .writer()
                .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])?;
            if k == 0 {
                break;
            }
            taken += k;
            if !self.flush(stream)? {
                break; // the socket is full: the rest waits for writable
            }
        }
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Writes queued ciphertext; true once none is left.
    pub fn flush(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
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
            self.close_notify_sent = true;
            self.conn.send_close_notify();
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
