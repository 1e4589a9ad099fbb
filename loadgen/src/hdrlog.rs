//! `--hdr-log FILE` and `loadgen merge`: HdrHistogram interval logs (the
//! format of HdrHistogram's HistogramLogWriter, readable by its tools),
//! with loadgen's counters for each interval carried in comment lines
//! (`#[loadgen-interval] INDEX {json}`) that other readers skip. Merging adds
//! histograms, so percentiles of merged shards are exact.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::report::Meta;
use crate::stats::{Counters, Interval};

const RUN_TAG: &str = "#[loadgen-run] ";
const INTERVAL_TAG: &str = "#[loadgen-interval] ";

#[derive(Debug)]
pub enum HdrLogError {
    Io(PathBuf, io::Error),
    /// A line that is neither a comment nor an interval histogram.
    Parse(PathBuf, String),
}

impl fmt::Display for HdrLogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HdrLogError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            HdrLogError::Parse(p, why) => write!(
                f,
                "{}: not an HdrHistogram interval log ({why}); pass files written by --hdr-log",
                p.display()
            ),
        }
    }
}

impl std::error::Error for HdrLogError {}

/// Writes one interval per second as the run goes.
pub struct HdrLogWriter {
    path: PathBuf,
    file: BufWriter<File>,
    ser: V2DeflateSerializer,
}

impl HdrLogWriter {
    pub fn create(
        path: &Path,
        meta: &Meta,
        start: SystemTime,
    ) -> Result<HdrLogWriter, HdrLogError> {
        let io_err = |e| HdrLogError::Io(path.to_path_buf(), e);
        let mut file = BufWriter::new(File::create(path).map_err(io_err)?);
        let mut ser = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment("loadgen interval log: latencies in microseconds")
            .with_start_time(start)
            .begin_log_with(&mut file, &mut ser)
            .map_err(io_err)?;
        let run = serde_json::json!({
            "url": meta.url, "mode": meta.mode, "threads": meta.threads,
            "shards": meta.shards, "conns": meta.conns, "rate": meta.rate,
        });
        writeln!(file, "{RUN_TAG}{run}").map_err(io_err)?;
        writeln!(
            file,
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        )
        .map_err(io_err)?;
        Ok(HdrLogWriter {
            path: path.to_path_buf(),
            file,
            ser,
        })
    }

    pub fn write(&mut self, iv: &Interval) -> Result<(), HdrLogError> {
        let io_err = |e| HdrLogError::Io(self.path.clone(), e);
        let counters = serde_json::to_string(&iv.counters).expect("counters serialize");
        writeln!(self.file, "{INTERVAL_TAG}{} {counters}", iv.index).map_err(io_err)?;
        let mut w = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.file, &mut self.ser)
            .map_err(io_err)?;
        w.write_histogram(&iv.hist, Duration::from_secs(iv.index), iv.duration, None)
            .map_err(|e| HdrLogError::Io(self.path.clone(), io::Error::other(format!("{e:?}"))))?;
        self.file.flush().map_err(io_err)
    }
}

/// Several logs added together.
#[derive(Debug, Clone)]
pub struct Merged {
    pub hist: Histogram<u64>,
    pub counters: Counters,
    /// The longest span any one log covers (shards run side by side).
    pub elapsed: Duration,
    pub meta: Meta,
}

/// Reads and adds up interval logs.
pub fn merge(paths: &[PathBuf]) -> Result<Merged, HdrLogError> {
    let mut hist = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut flows = Counters::default();
    let mut by_index: BTreeMap<u64, Counters> = BTreeMap::new();
    let mut elapsed = Duration::ZERO;
    let mut meta = Meta::default();
    for path in paths {
        let parse_err = |why: String| HdrLogError::Parse(path.clone(), why);
        let text = std::fs::read(path).map_err(|e| HdrLogError::Io(path.clone(), e))?;
        let mut has_counters = false;
        for line in String::from_utf8_lossy(&text).lines() {
            if let Some(run) = line.strip_prefix(RUN_TAG) {
                let v: serde_json::Value =
                    serde_json::from_str(run).map_err(|e| parse_err(e.to_string()))?;
                meta.url = v["url"].as_str().unwrap_or_default().to_string();
                meta.mode = v["mode"].as_str().unwrap_or_default().to_string();
                meta.threads += v["threads"].as_u64().unwrap_or(0);
                meta.shards += v["shards"].as_u64().unwrap_or(1);
                meta.conns += v["conns"].as_u64().unwrap_or(0);
                meta.rate = match (meta.rate, v["rate"].as_f64()) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
            } else if let Some(rest) = line.strip_prefix(INTERVAL_TAG) {
                let (index, json) = rest
                    .split_once(' ')
                    .ok_or_else(|| parse_err("bad loadgen-interval line".into()))?;
                let index: u64 = index.parse().map_err(|_| parse_err("bad index".into()))?;
                let c: Counters =
                    serde_json::from_str(json).map_err(|e| parse_err(e.to_string()))?;
                flows.accumulate(&c);
                by_index.entry(index).or_default().add(&c);
                has_counters = true;
            }
        }
        let mut first: Option<Duration> = None;
        let mut last = Duration::ZERO;
        let mut count = 0u64;
        for entry in IntervalLogIterator::new(&text) {
            let entry = entry.map_err(|e| parse_err(format!("{e:?}")))?;
            let LogEntry::Interval(iv) = entry else {
                continue;
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(iv.encoded_histogram())
                .map_err(|e| parse_err(e.to_string()))?;
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut raw.as_slice())
                .map_err(|e| parse_err(format!("{e:?}")))?;
            count += h.len();
            hist.add(&h).map_err(|e| parse_err(format!("{e:?}")))?;
            first = Some(first.map_or(iv.start_timestamp(), |f| f.min(iv.start_timestamp())));
            last = last.max(iv.start_timestamp() + iv.duration());
        }
        if !has_counters {
            // A log from another tool: only the latencies are known.
            flows.requests += count;
        }
        elapsed = elapsed.max(last.saturating_sub(first.unwrap_or_default()));
    }
    // Peak connections: the largest per-interval sum over all logs.
    flows.peak_open = by_index.values().map(|c| c.peak_open).max().unwrap_or(0);
    flows.open = by_index.values().last().map_or(0, |c| c.open);
    Ok(Merged {
        hist,
        counters: flows,
        elapsed,
        meta,
    })
}
