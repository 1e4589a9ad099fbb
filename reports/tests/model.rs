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
