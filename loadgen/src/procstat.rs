//! Samples for `--csv`: CPU % and RSS of each `--watch-pid` from
//! /proc/PID/stat, and the kernel's TCP socket count and memory from
//! /proc/net/sockstat. A process that is gone reads as empty, not an error.

use std::time::Instant;

/// CPU ticks per second for /proc times; 100 on every Linux we run on.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// utime+stime (ticks) and RSS (pages) of a process, from /proc/PID/stat.
pub fn proc_times(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15, rss 24.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss: u64 = f.get(21)?.parse().ok()?;
    Some((utime + stime, rss))
}

/// (sockets in use, memory in KiB) from the TCP line of /proc/net/sockstat.
pub fn tcp_sockstat() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |key: &str| -> Option<u64> {
        let i = f.iter().position(|w| *w == key)?;
        f.get(i + 1)?.parse().ok()
    };
    Some((get("inuse")?, get("mem")? * page_size() / 1024))
}

/// One watched process's figures for an interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_pct: Option<f64>,
    pub rss_kb: Option<u64>,
}

/// Turns successive /proc readings into CPU % per interval.
pub struct Sampler {
    pids: Vec<u32>,
    last: Vec<Option<u64>>,
    at: Instant,
    ticks: f64,
    page_kb: u64,
}

impl Sampler {
    pub fn new(pids: &[u32]) -> Sampler {
        Sampler {
            pids: pids.to_vec(),
            last: pids.iter().map(|&p| proc_times(p).map(|t| t.0)).collect(),
            at: Instant::now(),
            ticks: clock_ticks(),
            page_kb: page_size() / 1024,
        }
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    pub fn sample(&mut self) -> Vec<ProcSample> {
        let now = Instant::now();
        let wall = now.duration_since(self.at).as_secs_f64().max(1e-3);
        self.at = now;
        self.pids
            .iter()
            .zip(self.last.iter_mut())
            .map(|(&pid, last)| match proc_times(pid) {
                Some((cpu, rss)) => {
                    let pct =
                        last.map(|l| 100.0 * (cpu.saturating_sub(l)) as f64 / self.ticks / wall);
                    *last = Some(cpu);
                    ProcSample {
                        cpu_pct: pct,
                        rss_kb: Some(rss * self.page_kb),
                    }
                }
                None => {
                    *last = None;
                    ProcSample::default()
                }
            })
            .collect()
    }
}
