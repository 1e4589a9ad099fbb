//! The board: every counter of the proxy in one flat block of atomics, so
//! it can live in memory shared between the master and worker processes
//! (a file under /dev/shm) or, with one process, on the heap. Sums over
//! processes and loops are then exact reads, and a worker that dies leaves
//! its counts behind for the sums.
//!
//! Loops write their own slot (no contention); backend counters are shared
//! by every loop and process using that backend (relaxed atomic adds).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

use super::active_health::ActiveHealth;
use super::profile_request::ProfileRequest;
use super::{shm, Histogram, LATENCY_BUCKETS};
use crate::stats::LoopStats;

pub const MAX_PROCESSES: usize = 128;
pub const MAX_LOOPS: usize = 32;
pub const MAX_BACKENDS: usize = 1024;
const KEY_LEN: usize = 120;
const MAGIC: u64 = 0x5350_4545_444d_494d; // "SPEEDMIM"
const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// Per worker process.
#[repr(C)]
#[derive(Default)]
pub struct ProcessSlot {
    pub pid: AtomicU32,
    /// Event loops running in the process.
    pub loops: AtomicU32,
    /// Configuration generation every loop of the process has applied.
    pub applied_generation: AtomicU64,
    pub rss_bytes: AtomicU64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct LatencyCounters {
    pub buckets: [AtomicU64; BUCKETS],
    pub sum_micros: AtomicU64,
}

impl LatencyCounters {
    pub fn record(&self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
    }
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// Counters of one backend of one upstream, summed over loops and processes.
#[repr(C)]
pub struct BackendCounters {
    /// Requests in flight, by worker process: a process that dies takes
    /// its requests with it, and its column is zeroed (`forget_process`).
    active: [AtomicI64; MAX_PROCESSES],
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// By status class, 1xx at index 0.
    pub responses: [AtomicU64; 5],
    /// Latest peak-EWMA latency any loop computed, f64 bits (ns).
    pub ewma_ns_bits: AtomicU64,
    /// Unix milliseconds until which some loop holds the backend down.
    pub down_until_ms: AtomicU64,
    pub connect: LatencyCounters,
    pub response: LatencyCounters,
    /// The active health check's verdict, written by the one prober (the
    /// master's with worker processes), read by every loop's balancers.
    pub active_health: ActiveHealth,
}

impl BackendCounters {
    pub fn request_started(&self, process: usize) {
        self.active[process.min(MAX_PROCESSES - 1)].fetch_add(1, Relaxed);
    }

    pub fn request_finished(&self, process: usize) {
        self.active[process.min(MAX_PROCESSES - 1)].fetch_sub(1, Relaxed);
    }

    /// Requests in flight in every process.
    pub fn active(&self) -> i64 {
        self.active.iter().map(|a| a.load(Relaxed)).sum()
    }

    pub fn response_status(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Relaxed);
    }
}

#[repr(C)]
pub struct BackendSlot {
    /// 0 free, 1 being claimed, 2 ready.
    state: AtomicU32,
    key_len: AtomicU32,
    key: [AtomicU64; KEY_LEN / 8],
    pub counters: BackendCounters,
}

#[repr(C)]
pub struct Board {
    magic: AtomicU64,
    /// Configuration generation the master published (worker processes
    /// pick it up from the configuration file beside the board).
    pub generation: AtomicU64,
    pub started_unix_ms: AtomicU64,
    pub processes: [ProcessSlot; MAX_PROCESSES],
    loops: [LoopStats; MAX_PROCESSES * MAX_LOOPS],
    backends: [BackendSlot; MAX_BACKENDS],
    /// The CPU profile the master last asked of its workers.
    pub profile: ProfileRequest,
    /// Session-ticket keys of every process of this proxy (`tls::tickets`).
    pub tls_tickets: crate::tls::tickets::TicketKeys,
}

impl Board {
    /// A board for one process, on the heap, living as long as the process.
    pub fn in_process() -> &'static Board {
        // SAFETY: every field is an atomic integer (or array of them), for
        // which all-zero bytes are a valid value.
        let board: Box<Board> = unsafe { Box::<Board>::new_zeroed().assume_init() };
        let board = Box::leak(board);
        board.init();
        board
    }

    /// Removes the files (`speedmimi-PID-RANDOM.*`, or `speedmimi-PID.*`
    /// of older versions: board, configuration, profile answers) of masters
    /// that are gone: one killed with SIGKILL never ran its cleanup, and
    /// each board holds ~1 MB of shared memory. Files of a PID that exists
    /// are kept, whatever runs under it now: a master may run from a
    /// renamed binary, and a stale file is cheaper than unlinking a live
    /// master's board. Returns how many files went.
    pub fn remove_stale(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let master_alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
        let mut removed = 0;
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(shm::master_pid) else {
                continue;
            };
            if !master_alive(pid) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Creates (master) or opens (worker) a board in a shared-memory file.
    /// The master's is new and private (`shm::create`: an existing name is
    /// an `AlreadyExists` error); a worker opens only its own user's.
    pub fn shared(path: &Path, create: bool) -> io::Result<&'static Board> {
        use std::os::fd::AsRawFd;
        let size = std::mem::size_of::<Board>();
        let file = if create {
            shm::create(path)?
        } else {
            shm::open_own(path, true)?
        };
        if create {
            file.set_len(size as u64)?;
        }
        // SAFETY: maps `size` bytes of a file we just sized (or the master
        // sized); the mapping stays valid for the whole process (never
        // unmapped), and the file's zeroed bytes are valid atomics.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is `size_of::<Board>()` bytes, page aligned,
        // shared only through atomics, and never unmapped.
        let board: &'static Board = unsafe { &*(ptr as *const Board) };
        if create {
            board.init();
        } else if board.magic.load(Relaxed) != MAGIC {
            return Err(io::Error::other(format!(
                "{} is not a speedmimi board",
                path.display()
            )));
        }
        Ok(board)
    }

    fn init(&self) {
        self.magic.store(MAGIC, Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.started_unix_ms.store(now, Relaxed);
    }

    pub fn loop_stats(&self, process: usize, event_loop: usize) -> &LoopStats {
        &self.loops[process.min(MAX_PROCESSES - 1) * MAX_LOOPS + event_loop.min(MAX_LOOPS - 1)]
    }

    /// A worker process died: its connections and requests are gone, so
    /// its gauges drop to zero (its counters keep their totals).
    pub fn forget_process(&self, process: usize) {
        for l in 0..MAX_LOOPS {
            self.loop_stats(process, l)
                .connections_current
                .store(0, Relaxed);
        }
        let column = process.min(MAX_PROCESSES - 1);
        for slot in &self.backends {
            slot.counters.active[column].store(0, Relaxed);
        }
    }

    /// The counters of `upstream`'s backend `addr`, claimed on first use.
    /// When the table is full, the last slot is shared (counts still add up).
    pub fn backend(&self, upstream: &str, addr: &str) -> &BackendCounters {
        let mut key = [0u8; KEY_LEN];
        let text = format!("{upstream}\n{addr}");
        let n = text.len().min(KEY_LEN);
        key[..n].copy_from_slice(&text.as_bytes()[..n]);
        let start = (fnv1a(&key[..n]) as usize) % MAX_BACKENDS;
        for i in 0..MAX_BACKENDS {
            let slot = &self.backends[(start + i) % MAX_BACKENDS];
            loop {
                match slot.state.load(Relaxed) {
                    2 => {
                        if slot.key_len.load(Relaxed) as usize == n && slot.key_matches(&key) {
                            return &slot.counters;
                        }
                        break;
                    }
                    0 => {
                        if slot
                            .state
                            .compare_exchange(0, 1, std::sync::atomic::Ordering::AcqRel, Relaxed)
                            .is_ok()
                        {
                            for (w, chunk) in slot.key.iter().zip(key.chunks(8)) {
                                w.store(u64::from_le_bytes(chunk.try_into().expect("8")), Relaxed);
                            }
                            slot.key_len.store(n as u32, Relaxed);
                            slot.state.store(2, std::sync::atomic::Ordering::Release);
                            return &slot.counters;
                        }
                    }
                    _ => std::hint::spin_loop(), // another process is claiming it
                }
            }
        }
        &self.backends[MAX_BACKENDS - 1].counters
    }

    /// Every claimed backend of `upstream`: (addr, counters).
    pub fn backends_of(&self, upstream: &str) -> Vec<(String, &BackendCounters)> {
        let prefix = format!("{upstream}\n");
        self.backends
            .iter()
            .filter(|s| s.state.load(std::sync::atomic::Ordering::Acquire) == 2)
            .filter_map(|s| {
                let key = s.key_string();
                key.strip_prefix(&prefix)
                    .map(|addr| (addr.to_string(), &s.counters))
            })
            .collect()
    }
}

impl BackendSlot {
    fn key_bytes(&self) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        for (chunk, w) in out.chunks_mut(8).zip(self.key.iter()) {
            chunk.copy_from_slice(&w.load(Relaxed).to_le_bytes());
        }
        out
    }
    fn key_matches(&self, key: &[u8; KEY_LEN]) -> bool {
        &self.key_bytes() == key
    }
    fn key_string(&self) -> String {
        let n = (self.key_len.load(Relaxed) as usize).min(KEY_LEN);
        String::from_utf8_lossy(&self.key_bytes()[..n]).into_owned()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_claimed_once_and_found_again() {
        let board = Board::in_process();
        let a = board.backend("default", "127.0.0.1:9000") as *const _;
        let b = board.backend("default", "127.0.0.1:9001") as *const _;
        assert_ne!(a, b);
        assert_eq!(a, board.backend("default", "127.0.0.1:9000") as *const _);
        let mut names: Vec<String> = board
            .backends_of("default")
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        names.sort();
        assert_eq!(names, ["127.0.0.1:9000", "127.0.0.1:9001"]);
        assert!(board.backends_of("other").is_empty());
    }

    #[test]
    fn stale_files_of_gone_masters_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A PID that has exited: a child we waited for.
        let gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        let mut gone = gone;
        gone.wait().unwrap();
        // A live PID (this test binary): kept, whatever runs under it.
        let live = std::process::id();
        let names = [
            format!("speedmimi-{gone_pid}.board"),
            format!("speedmimi-{gone_pid}-0a1b.yaml"),
            format!("speedmimi-{gone_pid}-0a1b.profile-3-77.pb"),
            format!("speedmimi-{gone_pid}-0a1b.yaml.tmp-99"),
            format!("speedmimi-{live}-2c3d.board"),
            "speedmimi-notapid.board".to_string(),
            "other-file".to_string(),
        ];
        for n in &names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        assert_eq!(Board::remove_stale(dir.path()), 4);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let live_board = format!("speedmimi-{live}-2c3d.board");
        assert_eq!(left, ["other-file", &live_board, "speedmimi-notapid.board"]);
    }

    #[test]
    fn shared_board_is_seen_by_a_second_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board");
        let master = Board::shared(&path, true).unwrap();
        let worker = Board::shared(&path, false).unwrap();
        worker.loop_stats(1, 0).requests.fetch_add(5, Relaxed);
        assert_eq!(master.loop_stats(1, 0).requests.load(Relaxed), 5);
        worker.backend("u", "a:1").requests.fetch_add(2, Relaxed);
        assert_eq!(master.backend("u", "a:1").requests.load(Relaxed), 2);
    }

    #[test]
    fn a_master_never_takes_over_an_existing_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board");
        Board::shared(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = Board::shared(&path, true)
            .err()
            .expect("second create refused");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        // A symlink planted at the name: neither the master nor a worker
        // follows it, and its target is not touched.
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(Board::shared(&link, true).is_err());
        assert!(Board::shared(&link, false).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
    }
}
