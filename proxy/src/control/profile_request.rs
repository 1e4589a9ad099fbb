//! The master's latest CPU-profile request as the board holds it (zeroed:
//! none yet). What the request means and how workers answer it is
//! `profiler::relay`; this is the cell, below the board.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};

#[repr(C)]
#[derive(Default)]
pub struct ProfileRequest {
    /// Id of the latest request; written last, so a worker that sees it
    /// sees `seconds` and `target` too.
    id: AtomicU64,
    seconds: AtomicU64,
    /// The worker asked (the relay's own encoding, e.g. one index or all).
    target: AtomicU32,
    /// The latest request the master stopped waiting for.
    closed: AtomicU64,
}

impl ProfileRequest {
    /// Master: publishes a new request; returns its id. Requests must not
    /// overlap (one writer).
    pub fn ask(&self, seconds: u64, target: u32) -> u64 {
        let id = self.id.load(Relaxed) + 1;
        self.seconds.store(seconds, Relaxed);
        self.target.store(target, Relaxed);
        self.id.store(id, Release);
        id
    }

    /// Id of the latest request (0: none). Read before `asked`.
    pub fn latest(&self) -> u64 {
        self.id.load(Acquire)
    }

    /// Seconds and target of the request `latest` returned.
    pub fn asked(&self) -> (u64, u32) {
        (self.seconds.load(Relaxed), self.target.load(Relaxed))
    }

    /// Master: stops waiting for request `id` (a worker still sampling stops).
    pub fn close(&self, id: u64) {
        self.closed.store(id, Release);
    }

    pub fn is_closed(&self, id: u64) -> bool {
        self.closed.load(Acquire) >= id
    }
}
