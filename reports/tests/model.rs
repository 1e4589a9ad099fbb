//! The results model survives a write and a read unchanged, and refuses other schemas.

use std::fs;
use std::path::Path;

use reports::model::{self, ModelError};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[test]
fn fixture_reads_as_schema_v1() {
    let data = reports::load_dir(Path::new(FIXTURE)).unwrap();
    assert_eq!(data.run.schema, reports::SCHEMA);
    assert_eq!(data.run.schema, "speedmimi.bench/v1");
    assert_eq!(data.run.targets.len(), 2);
    assert_eq!(data.run.steps.len(), 7);
    assert!(data.run.note.as_deref().unwrap().starts_with("FIXTURE"));
    assert!(data.run.env.tuner.is_some());
    let hold = &data.run.steps[3];
    assert_eq!(hold.mode, model::Mode::Hold);
    assert_eq!(hold.rate, Some(5000.0));
    assert_eq!(data.intervals.len(), 90);
}

#[test]
fn results_and_intervals_round_trip() {
    let data = reports::load_dir(Path::new(FIXTURE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    reports::save_dir(dir.path(), &data).unwrap();
    let back = reports::load_dir(dir.path()).unwrap();
    assert_eq!(back, data);
    // And the JSON is stable: writing what was read gives the same text.
    let again = tempfile::tempdir().unwrap();
    reports::save_dir(again.path(), &back).unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join("results.json")).unwrap(),
        fs::read_to_string(again.path().join("results.json")).unwrap()
    );
}

#[test]
fn slab_and_rss_start_round_trip_and_stay_absent_when_unmeasured() {
    let mut data = reports::load_dir(Path::new(FIXTURE)).unwrap();
    data.run.steps[0].kernel.slab_unreclaim_grown_bytes = Some(1_234_567);
    data.run.steps[0].proxy.rss_start_bytes = Some(3_000_000);
    let dir = tempfile::tempdir().unwrap();
    reports::save_dir(dir.path(), &data).unwrap();
    let back = reports::load_dir(dir.path()).unwrap();
    assert_eq!(back, data);
    let json = fs::read_to_string(dir.path().join("results.json")).unwrap();
    // Written for the step that has them, left out (not null) for the others.
    assert_eq!(json.matches("slab_unreclaim_grown_bytes").count(), 1);
    assert_eq!(json.matches("rss_start_bytes").count(), 1);
    assert!(!json.contains("null"));
}

#[test]
fn older_results_take_slab_and_rss_start_from_kernel_json() {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        Path::new(FIXTURE).join("results.json"),
        dir.path().join("results.json"),
    )
    .unwrap();
    // As `loadgen bench` writes it (extra fields are ignored).
    fs::write(
        dir.path().join(model::KERNEL_FILE),
        r#"[{"target": "speedmimi", "round": 0, "step": 3, "peak_open": 50000,
            "slab_unreclaim_grown_bytes": 160000000, "proxy_rss_start_bytes": 20000000,
            "slab_bytes_per_open_connection": 3200.0}]"#,
    )
    .unwrap();
    let data = reports::load_dir(dir.path()).unwrap();
    let s = &data.run.steps[3];
    assert_eq!(s.kernel.slab_unreclaim_grown_bytes, Some(160_000_000));
    assert_eq!(s.proxy.rss_start_bytes, Some(20_000_000));
    let mem = s.memory();
    assert_eq!(mem.proxy_rss_bytes, 1_500_000);
    assert_eq!(mem.sock_mem_bytes, 292_000_000);
    assert_eq!(s.memory_bytes(), 1_500_000 + 292_000_000 + 160_000_000);
    // Steps kernel.json does not name stay unmeasured.
    assert_eq!(data.run.steps[0].kernel.slab_unreclaim_grown_bytes, None);
    assert_eq!(data.run.steps[0].memory().slab_bytes, None);

    fs::write(dir.path().join(model::KERNEL_FILE), "{not json").unwrap();
    let err = reports::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("kernel.json"), "{err}");
}

#[test]
fn other_schema_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.json");
    let text = fs::read_to_string(Path::new(FIXTURE).join("results.json")).unwrap();
    fs::write(
        &path,
        text.replace("speedmimi.bench/v1", "speedmimi.bench/v0"),
    )
    .unwrap();
    match model::read_results(&path) {
        Err(ModelError::Schema { found, .. }) => assert_eq!(found, "speedmimi.bench/v0"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[test]
fn derived_step_figures() {
    let data = reports::load_dir(Path::new(FIXTURE)).unwrap();
    let s = &data.run.steps[0];
    // 214,000 requests at 22.5 µs each = 4.815 CPU-seconds over 10 s.
    assert!((s.proxy_cores_busy() - 0.4815).abs() < 1e-9);
    assert!((s.rps_per_busy_core().unwrap() - 21_400.0 / 0.4815).abs() < 1e-6);
    assert_eq!(s.errors.total(), 0);
    assert_eq!(data.run.steps[2].errors.total(), 3);
}
