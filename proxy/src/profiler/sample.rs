//! Samples this process's CPU (SIGPROF at 99 Hz, every thread, event loops
//! included) with pprof-rs for a given time. One profile at a time per
//! process: the profiler and its signal handler are process-wide.

use std::time::{Duration, Instant};

use super::{Profile, ProfileError};

/// Odd, so sampling does not beat against 100 Hz timers.
pub const FREQUENCY: i32 = 99;

/// Profiles this process for `seconds`, or until `stop` says so (checked
/// every 100 ms), and returns the symbolized profile.
pub fn take(seconds: u64, stop: &dyn Fn() -> bool) -> Result<Profile, ProfileError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ProfileError::Failed(format!("CPU profile failed while {what}: {e}"))
    };
    // framehop unwinds from signal handlers without locks or allocation,
    // so samples inside libc (system calls: most of a proxy's CPU) are
    // kept; only the vDSO, whose unwind tables some kernels get wrong, is
    // skipped.
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["vdso"])
        .build()
        .map_err(|e| match e {
            // Another profile in this process.
            pprof::Error::Running => ProfileError::Busy,
            e => failed("starting the profiler", &e),
        })?;
    // SAFETY: raise() only sends SIGPROF to this thread, whose handler
    // pprof has just installed. The handler's first run builds the
    // unwinder's tables (it allocates); running it here, where this thread
    // holds no lock, keeps that out of a sample that could interrupt another
    // thread inside malloc.
    unsafe {
        libc::raise(libc::SIGPROF);
    }
    // Short naps so that a stop (the admin API closing, the master giving
    // up) does not wait a minute.
    let end = Instant::now() + Duration::from_secs(seconds);
    while !stop() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    let report = guard
        .report()
        .build()
        .map_err(|e| failed("collecting samples", &e))?;
    drop(guard);
    report
        .pprof()
        .map_err(|e| failed("encoding the profile", &e))
}
