//! Once a second: CPU ticks and RSS of the proxy (its whole process tree:
//! master and workers), of the backends and of the step's load generator, and the kernel's TCP socket
//! memory from /proc/net/sockstat. The step runner slices these samples.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::procstat::proc_times;

/// CPU ticks per second for /proc times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// CPU ticks and RSS (bytes) summed over a group of process trees.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub ticks: u64,
    pub rss_bytes: u64,
}

/// The roots and every descendant, from one scan of /proc.
pub fn tree_pids(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(p) = todo.pop() {
        out.push(p);
        if let Some(c) = children.get(&p) {
            todo.extend(c);
        }
    }
    out
}

pub fn usage(pids: &[u32]) -> Usage {
    let page = page_size();
    pids.iter()
        .filter_map(|&p| proc_times(p))
        .fold(Usage::default(), |u, (t, rss)| Usage {
            ticks: u.ticks + t,
            rss_bytes: u.rss_bytes + rss * page,
        })
}

/// TCP socket memory (bytes) from /proc/net/sockstat: `mem` pages × page size.
pub fn sock_mem_bytes() -> u64 {
    crate::procstat::tcp_sockstat().map_or(0, |(_, kb)| kb * 1024)
}

/// Unreclaimable kernel slab (bytes, /proc/meminfo SUnreclaim): where socket
/// structures live. sockstat's `mem` counts only buffer pages, so an idle socket
/// shows there as ~0 while costing ~2.8 KB of slab.
pub fn slab_unreclaim_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("SUnreclaim:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub proxy: Usage,
    pub backend: Usage,
    /// The step's `loadgen run` and its shards.
    pub client: Usage,
    pub sock_mem: u64,
    pub slab: u64,
}

/// What the sampler watches: the proxy under test now (changes per step) and the backends.
#[derive(Default)]
pub struct Watch {
    pub proxy_roots: Vec<u32>,
    pub backend_roots: Vec<u32>,
    pub client_roots: Vec<u32>,
}

pub struct Sampler {
    pub watch: Arc<Mutex<Watch>>,
    pub samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Takes one sample now.
pub fn take(watch: &Watch) -> Sample {
    Sample {
        at: Instant::now(),
        proxy: usage(&tree_pids(&watch.proxy_roots)),
        backend: usage(&tree_pids(&watch.backend_roots)),
        client: usage(&tree_pids(&watch.client_roots)),
        sock_mem: sock_mem_bytes(),
        slab: slab_unreclaim_bytes(),
    }
}

impl Sampler {
    pub fn start() -> Sampler {
        let watch = Arc::new(Mutex::new(Watch::default()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s, st) = (watch.clone(), samples.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) {
                next += Duration::from_secs(1);
                let sample = {
                    let watch = w.lock().expect("watch lock");
                    take(&watch)
                };
                s.lock().expect("samples lock").push(sample);
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Sampler {
            watch,
            samples,
            stop,
            handle: Some(handle),
        }
    }

    pub fn set_proxy(&self, roots: Vec<u32>) {
        self.watch.lock().expect("watch lock").proxy_roots = roots;
    }

    pub fn set_client(&self, roots: Vec<u32>) {
        self.watch.lock().expect("watch lock").client_roots = roots;
    }

    pub fn set_backends(&self, roots: Vec<u32>) {
        self.watch.lock().expect("watch lock").backend_roots = roots;
    }

    pub fn now(&self) -> Sample {
        take(&self.watch.lock().expect("watch lock"))
    }

    /// Samples taken in [from, to].
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("samples lock")
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .copied()
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
