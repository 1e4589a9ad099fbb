//! `loadgen merge`: shard logs add up exactly to one histogram of both.

mod common;

use base64::Engine;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use common::{run, run_json, Backend};

fn read_log(path: &std::path::Path, into: &mut Histogram<u64>) {
    let text = std::fs::read(path).unwrap();
    for e in IntervalLogIterator::new(&text) {
        if let LogEntry::Interval(iv) = e.unwrap() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(iv.encoded_histogram())
                .unwrap();
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut raw.as_slice())
                .unwrap();
            into.add(&h).unwrap();
        }
    }
}

#[test]
fn merging_two_shard_logs_equals_one_histogram_of_both() {
    let b = Backend::start(&["--delay", "1ms"]);
    let dir = std::env::temp_dir().join(format!("loadgen-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, c) = (dir.join("a.hlog"), dir.join("b.hlog"));
    let url = b.url();
    let (_, ra) = run_json(&[
        &url,
        "-c",
        "3",
        "-n",
        "3000",
        "--hdr-log",
        a.to_str().unwrap(),
    ]);
    let (_, rb) = run_json(&[
        &url,
        "-c",
        "8",
        "-n",
        "5000",
        "--hdr-log",
        c.to_str().unwrap(),
    ]);

    let mut both = Histogram::<u64>::new(3).unwrap();
    read_log(&a, &mut both);
    read_log(&c, &mut both);
    assert_eq!(both.len(), 8000);

    let out = run(&["merge", a.to_str().unwrap(), c.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["requests"], 8000);
    assert_eq!(
        m["requests"].as_u64(),
        Some(ra["requests"].as_u64().unwrap() + rb["requests"].as_u64().unwrap())
    );
    let l = &m["latency_us"];
    assert_eq!(l["p50"], both.value_at_quantile(0.5));
    assert_eq!(l["p90"], both.value_at_quantile(0.9));
    assert_eq!(l["p99"], both.value_at_quantile(0.99));
    assert_eq!(l["p999"], both.value_at_quantile(0.999));
    assert_eq!(l["max"], both.max());
    assert_eq!(m["errors"]["total"], 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn merge_rejects_a_file_that_is_not_a_log() {
    let p = std::env::temp_dir().join(format!("loadgen-notalog-{}", std::process::id()));
    std::fs::write(&p, "hello\n").unwrap();
    let out = run(&["merge", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_file(p);
}
