//! Counters of one event loop. Only the owning loop writes them (relaxed
//! atomics, no contention); readers (logs, the admin API) sum over loops.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::control::board::LatencyCounters;
use crate::http::errors::Reject;
use crate::tls::HandshakeFailure;

/// `repr(C)`: it lives in the shared board (see `control::board`).
#[repr(C)]
#[derive(Debug, Default)]
pub struct LoopStats {
    pub connections_total: AtomicU64,
    pub connections_current: AtomicI64,
    /// Connections turned away with 503 because max_conn was reached.
    pub connections_refused: AtomicU64,
    pub requests: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub upstream_reuses: AtomicU64,
    pub upstream_retries: AtomicU64,
    /// Requests that waited in an upstream queue (`max_conns`), and those
    /// of them answered 503 because `queue_timeout` passed.
    pub upstream_queued: AtomicU64,
    pub queue_timeouts: AtomicU64,
    /// Clients cut off below `server.min_rate`: sending a request body
    /// (answered 408 when no response byte went out yet), and reading a
    /// response.
    pub slow_request_bodies: AtomicU64,
    pub slow_response_readers: AtomicU64,
    /// accept(2) failures other than WouldBlock (EMFILE, ENFILE, ENOBUFS...).
    pub accept_failures: AtomicU64,
    /// Access-log lines dropped: the writer fell behind or the disk is full.
    pub access_log_dropped: AtomicU64,
    /// Error answers the proxy produced itself, by kind (index: `Reject as usize`).
    pub rejects: [AtomicU64; Reject::COUNT],
    /// TLS handshakes completed in full, resumed (ticket or session ID),
    /// and failed by reason (index: `HandshakeFailure as usize`).
    pub tls_handshakes_full: AtomicU64,
    pub tls_handshakes_resumed: AtomicU64,
    pub tls_handshake_failures: [AtomicU64; HandshakeFailure::COUNT],
    /// Client connections speaking TLS now (handshaking or done).
    pub tls_connections_current: AtomicI64,
    /// From accept to the handshake's end.
    pub tls_handshake_seconds: LatencyCounters,
    /// TLS handshakes with backends: done in full, resumed, and failed by
    /// reason (index: `UpstreamTlsFailure as usize`).
    pub upstream_tls_full: AtomicU64,
    pub upstream_tls_resumed: AtomicU64,
    pub upstream_tls_failures: [AtomicU64; crate::tls::upstream::UpstreamTlsFailure::COUNT],
}

impl LoopStats {
    /// One writer per counter (its loop): a plain load and store does what
    /// fetch_add would without the locked read-modify-write, several of
    /// which run per request.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }
}
