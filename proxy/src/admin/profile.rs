//! `GET /debug/pprof/profile?seconds=N`: samples the whole process's CPU
//! (SIGPROF at 99 Hz, every thread, event loops included) for N seconds and
//! answers with a gzip-compressed pprof protobuf, as Go's net/http/pprof
//! does, so `go tool pprof http://HOST/debug/pprof/profile?seconds=5` reads
//! it. Runs on the blocking pool; one profile at a time (the profiler is
//! process-wide).

use std::io::Write;
use std::sync::atomic::Ordering::{AcqRel, Release};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;
use pprof::protos::Message;

use super::error::ApiError;
use super::State;

pub const DEFAULT_SECONDS: u64 = 30;
pub const MAX_SECONDS: u64 = 60;
/// Odd, so sampling does not beat against 100 Hz timers.
const FREQUENCY: i32 = 99;

/// `seconds` from the query: 1..=60, 30 when absent.
pub fn seconds(query: Option<&str>) -> Result<u64, ApiError> {
    let value = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "seconds")
            .map(|(_, v)| v.into_owned())
    });
    let Some(value) = value else {
        return Ok(DEFAULT_SECONDS);
    };
    match value.parse::<u64>() {
        Ok(n) if (1..=MAX_SECONDS).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "seconds={value}: give a whole number of seconds from 1 to {MAX_SECONDS}"
        ))
        .with_field("seconds")),
    }
}

/// Profiles for `seconds` and returns the gzip-compressed protobuf.
pub fn profile(state: &State, seconds: u64) -> Result<Vec<u8>, ApiError> {
    if state.profiling.swap(true, AcqRel) {
        return Err(busy());
    }
    let result = take(state, seconds);
    state.profiling.store(false, Release);
    result
}

fn busy() -> ApiError {
    ApiError::new(
        hyper::StatusCode::CONFLICT,
        "a CPU profile is already being taken; retry when it ends",
    )
}

fn take(state: &State, seconds: u64) -> Result<Vec<u8>, ApiError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ApiError::internal(format!("CPU profile failed while {what}: {e}"))
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
            // Another profiler in this process (a second admin server).
            pprof::Error::Running => busy(),
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
    // Short naps so that stopping the admin API does not wait a minute.
    let end = Instant::now() + Duration::from_secs(seconds);
    while !state.stopping() {
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
    let proto = report
        .pprof()
        .map_err(|e| failed("encoding the profile", &e))?
        .encode_to_vec();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&proto)
        .and_then(|()| gz.finish())
        .map_err(|e| failed("compressing the profile", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_default_and_bounds() {
        assert_eq!(seconds(None).unwrap(), 30);
        assert_eq!(seconds(Some("x=1")).unwrap(), 30);
        assert_eq!(seconds(Some("seconds=1")).unwrap(), 1);
        assert_eq!(seconds(Some("seconds=60")).unwrap(), 60);
        for bad in [
            "seconds=0",
            "seconds=61",
            "seconds=1.5",
            "seconds=",
            "seconds=-1",
        ] {
            let e = seconds(Some(bad)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("seconds"), "{bad}");
            assert_eq!(e.status, hyper::StatusCode::BAD_REQUEST);
        }
    }
}
