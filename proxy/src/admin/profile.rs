//! `GET /debug/pprof/profile?seconds=N[&worker=K]`: a CPU profile as a
//! gzip-compressed pprof protobuf, as Go's net/http/pprof serves it, so
//! `go tool pprof http://HOST/debug/pprof/profile?seconds=5` reads it.
//! With one process, that process samples itself (`profiler::sample`).
//! With worker processes, the master (which serves this API but carries
//! no traffic) has every worker, or worker K, sample itself for the same
//! seconds (`profiler::relay`) and merges their profiles into one, each
//! sample labelled with its worker (`profiler::merge`). Runs on the
//! blocking pool; one profile at a time.

use std::sync::atomic::Ordering::{AcqRel, Release};

use super::error::ApiError;
use super::State;
use crate::profiler::merge::{self, Part, Tag};
use crate::profiler::{self, sample, ProfileError};

pub const DEFAULT_SECONDS: u64 = 30;
pub const MAX_SECONDS: u64 = 60;

/// The first `name=value` of the query, decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `seconds` from the query: 1..=60, 30 when absent.
pub fn seconds(query: Option<&str>) -> Result<u64, ApiError> {
    let Some(value) = query_param(query, "seconds") else {
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

/// `worker` from the query: a worker process index below `processes`
/// (with no worker processes, the one process is worker 0), or `None`
/// for all of them.
pub fn worker(query: Option<&str>, processes: usize) -> Result<Option<usize>, ApiError> {
    let Some(value) = query_param(query, "worker") else {
        return Ok(None);
    };
    let processes = processes.max(1);
    match value.parse::<usize>() {
        Ok(k) if k < processes => Ok(Some(k)),
        _ => Err(ApiError::bad_request(format!(
            "worker={value}: give a worker process index from 0 to {} (server.processes is \
             {processes}), or leave worker out to profile them all",
            processes - 1
        ))
        .with_field("worker")),
    }
}

/// A profile ready to serve.
pub struct Profiled {
    /// The gzip-compressed protobuf.
    pub gz: Vec<u8>,
    /// Worker processes whose samples it holds (empty without workers).
    pub workers: Vec<usize>,
    /// Worker processes asked that sent nothing, each with why.
    pub missing: Vec<String>,
}

/// Profiles for `seconds`: this process, or the worker processes (all or
/// `only`) when there are some.
pub fn profile(state: &State, seconds: u64, only: Option<usize>) -> Result<Profiled, ApiError> {
    if state.profiling.swap(true, AcqRel) {
        return Err(busy());
    }
    let result = if state.plane.worker_processes() == 0 {
        take_here(state, seconds)
    } else {
        take_in_workers(state, seconds, only)
    };
    state.profiling.store(false, Release);
    result
}

fn busy() -> ApiError {
    ApiError::new(hyper::StatusCode::CONFLICT, ProfileError::Busy.to_string())
}

fn api_error(e: ProfileError) -> ApiError {
    match e {
        ProfileError::Busy => busy(),
        ProfileError::Failed(why) => ApiError::internal(why),
    }
}

fn take_here(state: &State, seconds: u64) -> Result<Profiled, ApiError> {
    let profile = sample::take(seconds, &|| state.stopping()).map_err(api_error)?;
    Ok(Profiled {
        gz: profiler::gzip(&profile).map_err(api_error)?,
        workers: Vec::new(),
        missing: Vec::new(),
    })
}

fn take_in_workers(state: &State, seconds: u64, only: Option<usize>) -> Result<Profiled, ApiError> {
    let answers = state
        .plane
        .profile_workers(seconds, only, &|| state.stopping());
    let mut parts = Vec::new();
    let mut workers = Vec::new();
    let mut missing = Vec::new();
    let mut comments = Vec::new();
    let mut all_busy = true;
    for a in &answers {
        let who = format!("worker {} (pid {})", a.index, a.pid);
        match &a.result {
            Ok(profile) => {
                parts.push(Part {
                    profile,
                    tags: vec![
                        // Numbers, so that `-tagfocus=worker=1` matches
                        // (a string "1" would be read as a range); the unit
                        // keeps worker 0 from being dropped.
                        Tag::Num("worker", a.index as i64, "index"),
                        Tag::Num("pid", i64::from(a.pid), ""),
                    ],
                });
                workers.push(a.index);
                let samples: i64 = profile.sample.iter().filter_map(|s| s.value.first()).sum();
                comments.push(format!("{who}: {samples} samples"));
            }
            Err(e) => {
                all_busy &= *e == ProfileError::Busy;
                missing.push(format!("{who}: {e}"));
            }
        }
    }
    comments.extend(missing.iter().map(|m| format!("no samples from {m}")));
    if parts.is_empty() {
        if all_busy && !answers.is_empty() {
            return Err(busy());
        }
        return Err(ApiError::new(
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no worker process sent a CPU profile: {}",
                missing.join("; ")
            ),
        ));
    }
    let merged = merge::merge(&parts, &comments).map_err(api_error)?;
    Ok(Profiled {
        gz: profiler::gzip(&merged).map_err(api_error)?,
        workers,
        missing,
    })
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

    #[test]
    fn worker_is_an_index_below_the_process_count() {
        assert_eq!(worker(None, 2).unwrap(), None);
        assert_eq!(worker(Some("seconds=1"), 2).unwrap(), None);
        assert_eq!(worker(Some("worker=1"), 2).unwrap(), Some(1));
        assert_eq!(worker(Some("worker=0"), 0).unwrap(), Some(0));
        for (bad, processes) in [
            ("worker=2", 2),
            ("worker=1", 0),
            ("worker=x", 2),
            ("worker=", 2),
        ] {
            let e = worker(Some(bad), processes).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("worker"), "{bad}");
            assert_eq!(e.status, hyper::StatusCode::BAD_REQUEST);
        }
    }
}
