//! Accepting new connections, and what happens when accept(2) fails for
//! want of descriptors (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM).
//!
//! The backlog is still full then, but retrying on every wake-up would
//! spin, and waiting for the next connection to arrive leaves those queued
//! unserved. So the loop stops watching the listener, and tries again
//! after a short, growing pause (10 ms up to 100 ms), or at once when one
//! of its own connections closes and gives a descriptor back. The warning
//! is logged at most once a second, with the count of the failures in
//! between; every failure is counted (`accept_failures`).

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use mio::{Interest, Token};

use super::conn::{ClientConn, Entry, Phase};
use super::event_loop::{EventLoop, LINGER, LISTENER};
use super::tls_io::ClientTls;
use crate::http::errors::Reject;
use crate::stats::LoopStats;

/// Connections accepted per wake-up before other work gets a turn. Each
/// costs accept4, setsockopt and epoll_ctl (≈ 10 µs); 256 in a row stalled
/// the loop's open requests by milliseconds under a reconnect storm. The
/// listener stays ready, so the next turn accepts on after one poll(0).
const ACCEPT_BATCH: usize = 32;
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(100);
const WARN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct AcceptPause {
    /// Paused (listener deregistered) until this.
    until: Option<Instant>,
    /// The next pause's length.
    next: Duration,
    /// When the last warning was logged; failures since then.
    warned: Option<Instant>,
    unlogged: u64,
}

impl AcceptPause {
    pub fn is_paused(&self) -> bool {
        self.until.is_some()
    }

    /// How long the loop may sleep before the next retry, when paused.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        self.until.map(|t| t.saturating_duration_since(now))
    }

    pub fn retry_due(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now >= t)
    }

    /// Ends the pause without re-registering; true when it was paused (the
    /// listener is then not registered).
    pub fn clear(&mut self) -> bool {
        self.until.take().is_some()
    }

    /// The pause after a failure at `now`: 10 ms, doubling up to 100 ms.
    fn pause(&mut self, now: Instant) {
        self.next = (self.next * 2).clamp(RETRY_FIRST, RETRY_MAX);
        self.until = Some(now + self.next);
    }

    /// An accept worked: the next failure starts over at the shortest
    /// pause. Returns the failures no warning has reported yet.
    fn recovered(&mut self) -> u64 {
        self.next = Duration::ZERO;
        std::mem::take(&mut self.unlogged)
    }

    /// Whether to log this failure; else it is counted for the next line.
    fn should_warn(&mut self, now: Instant) -> Option<u64> {
        if self
            .warned
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            self.unlogged += 1;
            return None;
        }
        self.warned = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Failures that say nothing about the listener: the next accept may work.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

impl EventLoop {
    pub(super) fn accept_batch(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listener.as_ref() else {
                self.listener_ready = false;
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    let unlogged = self.accept_pause.recovered();
                    if unlogged > 0 {
                        tracing::info!("accept works again ({unlogged} failures not logged)");
                    }
                    self.on_accept(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e) if transient(&e) => continue,
                Err(e) => {
                    self.accept_failed(&e);
                    return;
                }
            }
        }
    }

    /// EMFILE and the like: stop watching the listener until a retry.
    fn accept_failed(&mut self, e: &io::Error) {
        LoopStats::add(&self.stats.accept_failures, 1);
        if let Some(unlogged) = self.accept_pause.should_warn(self.now) {
            if unlogged == 0 {
                tracing::warn!(
                    "accept failed: {e}; new connections wait in the backlog, retrying within {RETRY_MAX:?}"
                );
            } else {
                tracing::warn!(
                    "accept failed: {e} ({unlogged} more failures since the last warning)"
                );
            }
        }
        self.listener_ready = false;
        if let Some(listener) = self.listener.as_mut() {
            if !self.accept_pause.is_paused() {
                let _ = self.poll.registry().deregister(listener);
            }
        }
        self.accept_pause.pause(self.now);
    }

    /// Watches the listener again and tries the backlog at once.
    pub(super) fn resume_accepting(&mut self) {
        if !self.accept_pause.clear() || self.draining() {
            return;
        }
        let Some(listener) = self.listener.as_mut() else {
            return;
        };
        let registered = self
            .poll
            .registry()
            .register(listener, LISTENER, Interest::READABLE);
        match registered {
            Ok(()) => self.listener_ready = true,
            // Out of memory for the epoll entry as well: later.
            Err(e) => self.accept_failed(&e),
        }
    }

    /// A connection of this loop closed: if accepting is paused, the
    /// descriptor it gave back may take a connection from the backlog.
    pub(super) fn descriptor_freed(&mut self) {
        if self.accept_pause.is_paused() {
            self.resume_accepting();
        }
    }

    fn on_accept(&mut self, mut stream: mio::net::TcpStream, peer: std::net::SocketAddr) {
        // On Linux the listener's TCP_NODELAY is inherited (`listener.rs`).
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        LoopStats::add(&self.stats.connections_total, 1);
        let refused = self.open_connections.load(Relaxed) >= self.routing.config.server.max_conn;
        if refused {
            LoopStats::add(&self.stats.connections_refused, 1);
            LoopStats::add(&self.stats.rejects[Reject::Unavailable as usize], 1);
        } else {
            self.open_connections.fetch_add(1, Relaxed);
            self.stats.connections_current.fetch_add(1, Relaxed);
        }
        let gen = self.gen();
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.release_slot(refused);
            return;
        }
        let server = &self.routing.config.server;
        let (first_timeout, tls) = match &server.tls {
            // Past max_conn a TLS client cannot read a plaintext 503: closed.
            Some(_) if refused => {
                self.release_slot(refused);
                return;
            }
            Some(t) => match ClientTls::new(&t.rustls, self.now) {
                Ok(tls) => (t.handshake_timeout, Some(Box::new(tls))),
                Err(_) => {
                    self.release_slot(refused);
                    return;
                }
            },
            None => (server.header_timeout, None),
        };
        if tls.is_some() {
            self.stats.tls_connections_current.fetch_add(1, Relaxed);
        }
        let phase = match (refused, tls.is_some()) {
            (true, _) => Phase::Closing,
            (false, true) => Phase::Handshake,
            (false, false) => Phase::Head,
        };
        entry.insert(Entry::Client(ClientConn {
            stream,
            gen,
            deadline: 0,
            timer_tick: 0,
            ready: 0,
            phase,
            peer: peer.ip(),
            counted: !refused,
            deferred: false,
            ex: None,
            tls,
        }));
        if refused {
            // Past max_conn: answer 503 and close, never leave it hanging.
            let mut ex = self.new_exchange();
            let mut buf = self.bufs.get();
            buf.push(Reject::Unavailable.response());
            ex.resp_head = Some(buf);
            ex.close_after = true;
            ex.client.keep_alive = false;
            self.client_mut(key).ex = Some(ex);
            self.set_deadline(key, LINGER);
        } else {
            self.set_deadline(key, first_timeout);
        }
    }

    pub(super) fn release_slot(&mut self, refused: bool) {
        if !refused {
            self.open_connections.fetch_sub(1, Relaxed);
            self.stats.connections_current.fetch_sub(1, Relaxed);
        }
    }
}
