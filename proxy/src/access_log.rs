//! The access log: one JSON line per request, written by its own thread so
//! an event loop never waits on a disk. Each loop collects lines in a batch
//! and hands it over a bounded channel when it is big or old enough; when
//! the writer falls behind, batches are dropped and counted, never waited for.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Batches in flight to the writer before loops start dropping.
const QUEUE: usize = 64;
const BATCH_BYTES: usize = 32 * 1024;
const BATCH_AGE: Duration = Duration::from_millis(200);

/// The writer thread's end, shared by the loops of a process.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    /// Lines the writer could not write (disk full, closed), until a loop
    /// claims them into its counters.
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `target` (a path, or "stderr") and starts the writer thread.
    pub fn start(target: &str) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = if target == "stderr" {
            Box::new(io::stderr())
        } else {
            Box::new(OpenOptions::new().create(true).append(true).open(target)?)
        };
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = dropped.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_batches(rx, out, &writer_dropped))?;
        Ok(AccessLog { tx, dropped })
    }

    pub fn for_loop(&self) -> LoopLog {
        LoopLog {
            log: self.clone(),
            batch: Vec::with_capacity(BATCH_BYTES),
            lines: 0,
            oldest: None,
            dropped: 0,
        }
    }
}

/// Writes batches until the loops are gone. A batch that cannot be written
/// (disk full) is counted as dropped and the next one is tried: logging
/// resumes once there is room again.
fn write_batches(rx: Receiver<Vec<u8>>, mut out: Box<dyn Write + Send>, dropped: &AtomicU64) {
    while let Ok(batch) = rx.recv() {
        if out.write_all(&batch).is_err() {
            let lines = memchr::memchr_iter(b'\n', &batch).count() as u64;
            dropped.fetch_add(lines, Relaxed);
        }
        let _ = out.flush();
    }
}

/// One loop's batch of lines.
pub struct LoopLog {
    log: AccessLog,
    batch: Vec<u8>,
    lines: u64,
    oldest: Option<Instant>,
    /// Lines dropped (by this loop or the writer) not yet in the loop's
    /// counters; see `take_dropped`.
    dropped: u64,
}

/// What a line says about one request.
pub struct Entry<'a> {
    pub client: IpAddr,
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub status: u16,
    pub upstream: &'a str,
    pub backend: &'a str,
    pub bytes_out: u64,
    pub duration: Duration,
    /// TLS version and cipher suite, when the client spoke TLS.
    pub tls: Option<(&'static str, &'static str)>,
}

impl LoopLog {
    pub fn record(&mut self, now: Instant, e: &Entry) {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let b = &mut self.batch;
        let _ = write!(
            b,
            "{{\"ts\":{ts:.3},\"client\":\"{}\",\"method\":\"",
            e.client
        );
        escape_into(b, e.method);
        b.extend_from_slice(b"\",\"target\":\"");
        escape_into(b, e.target);
        let _ = writeln!(
            b,
            "\",\"status\":{},\"upstream\":\"{}\",\"backend\":\"{}\",\"bytes_out\":{},\"duration_ms\":{:.3}}}",
            e.status,
            e.upstream,
            e.backend,
            e.bytes_out,
            e.duration.as_secs_f64() * 1e3
        );
        if let Some((version, cipher)) = e.tls {
            // Before the line's closing brace and newline.
            b.truncate(b.len() - 2);
            let _ = writeln!(
                b,
                ",\"tls_version\":\"{version}\",\"tls_cipher\":\"{cipher}\"}}"
            );
        }
        self.lines += 1;
        self.oldest.get_or_insert(now);
        if self.batch.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Hands the batch over once it has waited long enough.
    pub fn flush_if_due(&mut self, now: Instant) {
        if self
            .oldest
            .is_some_and(|t| now.duration_since(t) >= BATCH_AGE)
        {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_BYTES));
        match self.log.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped += self.lines;
            }
        }
        self.lines = 0;
        self.oldest = None;
    }

    /// Lines dropped since the last call (this loop's and the writer's),
    /// for the loop's counters. A plain load per loop turn; the shared
    /// counter is only written when lines are dropped.
    pub fn take_dropped(&mut self) -> u64 {
        if self.log.dropped.load(Relaxed) > 0 {
            self.dropped += self.log.dropped.swap(0, Relaxed);
        }
        std::mem::take(&mut self.dropped)
    }
}

/// JSON string escaping for bytes from the network.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &c in bytes {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(c),
            _ => {
                let _ = write!(out, "\\u{c:04x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(path.to_str().unwrap()).unwrap();
        let mut l = log.for_loop();
        let now = Instant::now();
        l.record(
            now,
            &Entry {
                client: "10.0.0.1".parse().unwrap(),
                method: b"GET",
                target: b"/a\"b\x01",
                status: 200,
                upstream: "default",
                backend: "127.0.0.1:9000",
                bytes_out: 12,
                duration: Duration::from_micros(1500),
                tls: Some(("TLSv1_3", "TLS13_AES_128_GCM_SHA256")),
            },
        );
        l.flush_if_due(now + BATCH_AGE);
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["target"], "/a\"b\u{1}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
    }
}
