//! Shards: when a run needs more connections than one process may open
//! (RLIMIT_NOFILE), loadgen re-executes itself N times with `--shard I/N`.
//! Each shard runs its slice of the connections, rate and request count
//! on a common start time and streams its finished intervals on stdout,
//! one line each; the parent adds them up like its own threads' reports.
//!
//! Lines: `I INDEX DURATION_NS COUNTERS_JSON HIST_BASE64 HANDSHAKE_HIST_BASE64`
//! (V2 encoding),
//! `D ELAPSED_NS`, `X MESSAGE`.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use crate::stats::{Counters, Interval, Msg};

/// Writes a shard's intervals to stdout for its parent.
pub struct ShardOut {
    ser: V2Serializer,
    buf: Vec<u8>,
}

impl Default for ShardOut {
    fn default() -> Self {
        ShardOut {
            ser: V2Serializer::new(),
            buf: Vec::new(),
        }
    }
}

impl ShardOut {
    /// Fails when the parent is gone (broken pipe): the shard should stop.
    pub fn interval(&mut self, iv: &Interval) -> io::Result<()> {
        let latency = self.encode(&iv.hist)?;
        let handshake = self.encode(&iv.handshake)?;
        let line = format!(
            "I {} {} {} {latency} {handshake}\n",
            iv.index,
            iv.duration.as_nanos(),
            serde_json::to_string(&iv.counters).expect("counters serialize"),
        );
        let mut out = io::stdout().lock();
        out.write_all(line.as_bytes())?;
        out.flush()
    }

    fn encode(&mut self, h: &hdrhistogram::Histogram<u64>) -> io::Result<String> {
        self.buf.clear();
        self.ser
            .serialize(h, &mut self.buf)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(&self.buf))
    }

    pub fn done(&mut self, elapsed: Duration, errors: &[String]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        for e in errors {
            writeln!(out, "X {}", e.replace('\n', " "))?;
        }
        writeln!(out, "D {}", elapsed.as_nanos())?;
        out.flush()
    }
}

fn parse_line(line: &str, source: usize) -> Option<Msg> {
    let mut it = line.splitn(6, ' ');
    match it.next()? {
        "I" => {
            let index = it.next()?.parse().ok()?;
            let _duration: u64 = it.next()?.parse().ok()?;
            let counters: Counters = serde_json::from_str(it.next()?).ok()?;
            let hist = decode(it.next()?)?;
            let handshake = decode(it.next()?)?;
            Some(Msg::Interval {
                source,
                index,
                hist,
                handshake,
                counters,
            })
        }
        "D" => Some(Msg::Done {
            source,
            elapsed: Duration::from_nanos(it.next()?.trim_end().parse().ok()?),
            error: None,
        }),
        _ => None,
    }
}

fn decode(field: &str) -> Option<Box<hdrhistogram::Histogram<u64>>> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(field.trim_end())
        .ok()?;
    let hist: hdrhistogram::Histogram<u64> =
        Deserializer::new().deserialize(&mut raw.as_slice()).ok()?;
    let mut h = crate::stats::new_hist();
    h.add(&hist).ok()?;
    Some(Box::new(h))
}

/// The running shard processes.
pub struct Shards {
    children: Vec<Child>,
}

impl Shards {
    /// Starts `n` shards: `exe ARGS --shard I/N --shard-start UNIX_NS`.
    pub fn spawn(
        args: &[String],
        n: usize,
        start_unix_ns: u128,
        tx: &Sender<Msg>,
    ) -> io::Result<Shards> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for i in 0..n {
            let mut child = Command::new(&exe)
                .args(args)
                .arg("--shard")
                .arg(format!("{i}/{n}"))
                .arg("--shard-start")
                .arg(start_unix_ns.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let stdout = child.stdout.take().expect("stdout was piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut finished = false;
                let mut error = None;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(msg) = line.strip_prefix("X ") {
                        error = Some(format!("shard {i}: {msg}"));
                        continue;
                    }
                    match parse_line(&line, i) {
                        Some(Msg::Done {
                            source, elapsed, ..
                        }) => {
                            finished = true;
                            let _ = tx.send(Msg::Done {
                                source,
                                elapsed,
                                error: error.take(),
                            });
                        }
                        Some(m) => {
                            let _ = tx.send(m);
                        }
                        None => {}
                    }
                }
                if !finished {
                    let _ = tx.send(Msg::Done {
                        source: i,
                        elapsed: Duration::ZERO,
                        error: Some(
                            error.unwrap_or_else(|| format!("shard {i} ended without a result")),
                        ),
                    });
                }
            });
            children.push(child);
        }
        Ok(Shards { children })
    }

    /// Asks every shard to stop and report (as Ctrl-C would).
    pub fn interrupt(&self) {
        for c in &self.children {
            // SAFETY: kill(2) with a pid we spawned and have not reaped, so
            // it cannot name another process.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGINT);
            }
        }
    }

    pub fn wait(mut self) {
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}
