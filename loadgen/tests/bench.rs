//! `loadgen bench` and `loadgen report` end to end: a real speedmimi in front of
//! a real `loadgen backend`, one short step, then the run directory and the
//! processes left behind (none).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The speedmimi binary next to loadgen (built by `cargo test --workspace`;
/// built here when a test of this package alone runs first).
fn ensure_speedmimi() {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let dir = loadgen.parent().expect("bin dir");
    if dir.join("speedmimi").exists() && dir.join("tuner").exists() {
        return;
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "speedmimi", "-p", "tuner"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p speedmimi -p tuner failed");
}

/// Runs loadgen with a bounded wait; panics if it hangs.
fn loadgen(args: &[&str], cwd: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen {args:?} did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok())
        {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(needle) {
                    found.push(cmd);
                }
            }
        }
    }
    found
}

const SCENARIO: &str = r#"
name: tiny
rounds: 1
settle: 200ms
backends: { kind: loadgen, count: 1, workers: 1 }
targets:
  - name: speedmimi
    kind: speedmimi
    config: { server: { processes: 2, workers: 1 } }
loadgen: { threads: 1 }
steps:
  - { connections: 20, mode: closed, duration: 2s, thresholds: [errors=0] }
"#;

#[test]
fn bench_writes_a_run_directory_renders_it_and_stops_everything() {
    ensure_speedmimi();
    let tmp = tempfile::tempdir().expect("tempdir");
    let scenario = tmp.path().join("tiny.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let run_dir = tmp.path().join("run");
    let out = loadgen(
        &[
            "bench",
            "--scenario",
            scenario.to_str().unwrap(),
            "--out",
            run_dir.to_str().unwrap(),
        ],
        tmp.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout} stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The last line is the report's path.
    let last = stdout.lines().last().unwrap_or("");
    assert_eq!(Path::new(last), run_dir.join("report.html"));
    assert!(run_dir.join("report.html").exists());

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["schema"], "speedmimi.bench/v1");
    let steps = results["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0]["target"], "speedmimi");
    assert_eq!(steps[0]["peak_open"], 20);
    assert!(steps[0]["requests"].as_u64().unwrap() > 0);
    assert!(steps[0]["proxy"]["rss_peak_bytes"].as_u64().unwrap() > 0);
    // What the report's memory per connection counts beyond sockstat: the RSS baseline
    // (to count RSS grown) and the kernel slab grown (0 is a valid reading).
    assert!(steps[0]["proxy"]["rss_start_bytes"].as_u64().unwrap() > 0);
    assert!(steps[0]["kernel"]["slab_unreclaim_grown_bytes"].is_u64());
    let summary = std::fs::read_to_string(run_dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("proxy RSS grown + kernel socket buffers + kernel slab grown"),
        "{summary}"
    );
    let env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("env.json")).unwrap()).unwrap();
    assert!(env["cores"].as_u64().unwrap() >= 1);
    assert!(env["versions"]["speedmimi"].is_string());
    let intervals = std::fs::read_to_string(run_dir.join("intervals.csv")).unwrap();
    assert!(intervals.lines().count() >= 2, "{intervals}");

    // Nothing it started is left: the proxy (master and workers) and the backend.
    let config = run_dir.join("speedmimi.yaml");
    let left = processes_mentioning(config.to_str().unwrap());
    assert!(left.is_empty(), "left running: {left:?}");

    // `loadgen report` re-renders from the saved files.
    std::fs::remove_file(run_dir.join("report.html")).unwrap();
    let out = loadgen(&["report", run_dir.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(0));
    assert!(run_dir.join("report.html").exists());
}

#[test]
fn bench_refuses_a_scenario_with_an_unknown_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let scenario = tmp.path().join("bad.yaml");
    std::fs::write(&scenario, SCENARIO.replace("rounds: 1", "roundz: 1")).unwrap();
    let out = loadgen(
        &["bench", "--scenario", scenario.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("roundz"), "{err}");
}

/// A plaintext step and an HTTPS step on one speedmimi target: the bench makes
/// the certificates, starts a TLS instance beside the plaintext one, and the
/// results say which step was which, with the handshakes.
const TLS_SCENARIO: &str = r#"
name: tiny-tls
rounds: 1
settle: 200ms
backends: { kind: loadgen, count: 1, workers: 1 }
targets:
  - name: speedmimi
    kind: speedmimi
    config: { server: { processes: 1, workers: 1 } }
loadgen: { threads: 1 }
steps:
  - { connections: 10, mode: closed, duration: 2s, thresholds: [errors=0] }
  - { connections: 10, mode: closed, duration: 2s, tls: true, thresholds: [errors=0] }
  - { connections: 4, mode: closed, duration: 2s, tls: true, tls_resume: true, new_conn_per_request: true, thresholds: [errors=0] }
"#;

#[test]
fn bench_runs_https_steps_beside_plaintext_ones() {
    ensure_speedmimi();
    let tmp = tempfile::tempdir().expect("tempdir");
    let scenario = tmp.path().join("tiny-tls.yaml");
    std::fs::write(&scenario, TLS_SCENARIO).unwrap();
    let run_dir = tmp.path().join("run");
    let out = loadgen(
        &[
            "bench",
            "--scenario",
            scenario.to_str().unwrap(),
            "--out",
            run_dir.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("results.json")).unwrap()).unwrap();
    let steps = results["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for s in steps {
        assert_eq!(s["errors"]["connect"], 0, "{s}");
        assert!(s["requests"].as_u64().unwrap() > 0, "{s}");
        assert!(s["client"]["rss_peak_bytes"].as_u64().unwrap() > 0, "{s}");
    }
    assert!(
        steps[0].get("tls").is_none(),
        "plaintext step: {}",
        steps[0]
    );
    let tls = &steps[1]["tls"];
    assert!(tls["handshakes"].as_u64().unwrap() >= 10, "{tls}");
    assert_eq!(tls["failed"], 0);
    assert_eq!(tls["resumed"], 0);
    assert!(tls["handshake_latency_us"]["p50"].as_f64().unwrap() > 0.0);
    let resumed = &steps[2]["tls"];
    assert_eq!(steps[2]["new_conn_per_request"], true);
    assert!(resumed["resumed"].as_u64().unwrap() > 0, "{resumed}");

    // Both instances ran (their own configs) and the TLS one had the bench's certificate.
    let tls_config = std::fs::read_to_string(run_dir.join("speedmimi-tls.yaml")).unwrap();
    assert!(tls_config.contains("certificates"), "{tls_config}");
    let plain_config = std::fs::read_to_string(run_dir.join("speedmimi.yaml")).unwrap();
    assert!(!plain_config.contains("tls"), "{plain_config}");
    assert!(run_dir.join("tls").join("ca.pem").exists());

    // The report tells the steps apart: scheme and handshake columns, an https line.
    let summary = std::fs::read_to_string(run_dir.join("summary.md")).unwrap();
    assert!(summary.contains("handshakes/s"), "{summary}");
    assert!(summary.contains("| https |"), "{summary}");
    assert!(summary.contains("| http |"), "{summary}");
    let rps_svg = std::fs::read_to_string(run_dir.join("rps.svg")).unwrap();
    assert!(
        rps_svg.contains("speedmimi https"),
        "no https series in rps.svg"
    );

    for f in ["speedmimi.yaml", "speedmimi-tls.yaml"] {
        let left = processes_mentioning(run_dir.join(f).to_str().unwrap());
        assert!(left.is_empty(), "left running: {left:?}");
    }
}

#[test]
fn bench_refuses_an_https_step_on_a_target_without_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let scenario = tmp.path().join("nginx-tls.yaml");
    let text = TLS_SCENARIO.replace(
        "  - name: speedmimi\n    kind: speedmimi\n    config: { server: { processes: 1, workers: 1 } }\n",
        "  - name: nginx\n    kind: nginx\n",
    );
    assert!(text.contains("kind: nginx"));
    std::fs::write(&scenario, text).unwrap();
    let out = loadgen(
        &["bench", "--scenario", scenario.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("steps[1].tls") && err.contains("nginx"),
        "{err}"
    );

    // tls_resume without tls names its field too.
    std::fs::write(
        &scenario,
        SCENARIO.replace("mode: closed,", "mode: closed, tls_resume: true,"),
    )
    .unwrap();
    let out = loadgen(
        &["bench", "--scenario", scenario.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("steps[0].tls_resume"), "{err}");
}
