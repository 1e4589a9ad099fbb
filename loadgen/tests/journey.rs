//! `loadgen journey`: goose runs the YAML scenario; figures come back in
//! loadgen's JSON shape, goose writes its HTML report, thresholds exit 3.

mod common;

use common::{run, Backend};

fn scenario(dir: &std::path::Path, host: &str, extra: &str) -> std::path::PathBuf {
    let p = dir.join("journey.yaml");
    let report = dir.join("report.html");
    std::fs::write(
        &p,
        format!(
            "host: {host}\nusers: 3\nramp_up: 1s\nduration: 2s\nreport: {}\n{extra}\
             transactions:\n\
             \x20 - name: home\n    weight: 3\n    path: /\n\
             \x20 - name: login\n    weight: 1\n    method: POST\n    path: /login\n\
             \x20   headers: {{Content-Type: application/json}}\n    body: '{{\"u\":1}}'\n    think: 10ms\n",
            report.display()
        ),
    )
    .unwrap();
    p
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("loadgen-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn journey_reports_in_loadgen_json_and_writes_the_goose_report() {
    let b = Backend::start(&[]);
    let dir = tempdir("journey");
    let host = format!("http://{}", b.addr);
    let p = scenario(&dir, &host, "");
    let out = run(&["journey", "--scenario", p.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], "loadgen.result/1");
    assert_eq!(v["mode"], "journey");
    assert!(v["requests"].as_u64().unwrap() > 0);
    assert_eq!(v["errors"]["total"], 0);
    assert!(v["latency_us"]["p99"].as_u64().unwrap() > 0);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("Goose"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn failing_goose_threshold_exits_3() {
    let b = Backend::start(&[]);
    let dir = tempdir("journey-th");
    let p = scenario(
        &dir,
        &format!("http://{}", b.addr),
        "thresholds: ['rps>=100000000']\n",
    );
    let out = run(&["journey", "--scenario", p.to_str().unwrap(), "-q"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_scenario_is_a_usage_error() {
    let dir = tempdir("journey-bad");
    let p = dir.join("bad.yaml");
    std::fs::write(
        &p,
        "host: http://127.0.0.1:1\nusers: 1\nduration: 1s\nbogus: 1\ntransactions: []\n",
    )
    .unwrap();
    let out = run(&["journey", "--scenario", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
    let _ = std::fs::remove_dir_all(dir);
}
