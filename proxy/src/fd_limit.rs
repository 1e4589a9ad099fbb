//! The descriptor limit (RLIMIT_NOFILE). Many systems start processes with a
//! soft limit of 1024 under a much higher hard one; the proxy raises the
//! soft limit to the hard one at start, and says so when `server.max_conn`
//! still cannot be reached under it.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors a proxied client connection needs: its own and its backend's.
pub const PER_CONNECTION: u64 = 2;
/// Descriptors beside the connections: standard streams, the admin API and
/// its runtime, the access log, the health checker (a generous estimate).
const BASE: u64 = 64;
/// Per event loop: its epoll instance, its waker and its listener.
const PER_LOOP: u64 = 3;
/// Linux refuses a soft limit above fs.nr_open, which an "unlimited" hard
/// limit would ask for.
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

/// What `raise` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The soft limit before and after.
    pub was: u64,
    pub now: u64,
    /// Descriptors `max_conn` connections on `workers` loops need.
    pub needed: u64,
}

/// Descriptors one process needs for `max_conn` proxied connections.
pub fn needed(max_conn: usize, workers: usize) -> u64 {
    (max_conn as u64)
        .saturating_mul(PER_CONNECTION)
        .saturating_add(BASE + PER_LOOP * workers as u64)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and warns when
/// `max_conn` connections would not fit under it.
pub fn raise(max_conn: usize, workers: usize) -> Outcome {
    let limit = getrlimit(Resource::Nofile);
    let was = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or_else(|| {
        std::fs::read_to_string(NR_OPEN)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1 << 20)
    });
    let mut now = was;
    if hard > was {
        let raised = Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => now = hard,
            Err(e) => tracing::warn!("cannot raise RLIMIT_NOFILE from {was} to {hard}: {e}"),
        }
    }
    let needed = needed(max_conn, workers);
    if now < needed {
        tracing::warn!(
            "server.max_conn {max_conn} needs about {needed} file descriptors \
             ({PER_CONNECTION} per proxied connection) but RLIMIT_NOFILE is {now} (hard limit {hard}); \
             connections past it wait in the listen backlog. Raise the hard limit \
             (ulimit -Hn, systemd LimitNOFILE=) or lower server.max_conn"
        );
    }
    Outcome { was, now, needed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_per_connection_plus_the_loops() {
        assert_eq!(needed(10_000, 2), 20_000 + 64 + 6);
        assert_eq!(needed(usize::MAX, 1), u64::MAX);
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let out = raise(1, 1);
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(Some(out.now), limit.current);
        assert!(out.now >= out.was);
        if let Some(hard) = limit.maximum {
            assert_eq!(out.now, hard);
        }
    }
}
