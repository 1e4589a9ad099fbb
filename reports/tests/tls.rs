//! HTTPS steps: their TLS figures round-trip, they get lines of their own beside
//! the plaintext ones, and the steps table shows their handshakes.

use std::path::Path;

use reports::model::{Latency, TlsFigures};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The fixture plus an HTTPS copy of speedmimi's closed step at 1,000 connections.
fn with_https_step() -> reports::model::RunData {
    let mut data = reports::load_dir(Path::new(FIXTURE)).unwrap();
    let mut s = data.run.steps[1].clone();
    s.step = 7;
    s.rps *= 0.8;
    s.tls = Some(TlsFigures {
        handshakes: 1000,
        full: 1000,
        resumed: 0,
        handshakes_per_s: 100.0,
        failed: 0,
        resumption_offered: false,
        version: "TLSv1.3".into(),
        cipher_suite: "TLS13_AES_256_GCM_SHA384".into(),
        kx_group: "X25519".into(),
        handshake_latency_us: Latency {
            p50: 1500.0,
            p99: 9000.0,
            ..Latency::default()
        },
    });
    data.run.steps.push(s);
    data
}

#[test]
fn tls_figures_round_trip_and_plaintext_steps_carry_none() {
    let data = with_https_step();
    let dir = tempfile::tempdir().unwrap();
    reports::save_dir(dir.path(), &data).unwrap();
    assert_eq!(reports::load_dir(dir.path()).unwrap(), data);
    let json = std::fs::read_to_string(dir.path().join("results.json")).unwrap();
    assert_eq!(json.matches("\"handshakes\"").count(), 1);
    assert!(!json.contains("null"));
}

#[test]
fn https_steps_are_a_line_of_their_own() {
    let data = with_https_step();
    let lines = reports::charts::points(&data);
    let labels: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    assert!(labels.contains(&"speedmimi closed http"), "{labels:?}");
    assert!(labels.contains(&"speedmimi closed https"), "{labels:?}");
    // nginx ran no HTTPS step: its label says nothing of schemes.
    assert!(labels.contains(&"nginx"), "{labels:?}");
    let https = &lines
        .iter()
        .find(|(l, _)| l == "speedmimi closed https")
        .unwrap()
        .1;
    assert_eq!(https.len(), 1);
    assert_eq!(https[0].connections, 1000);
    // The plaintext line keeps its own 1,000-connection point, not a median with TLS.
    let http = &lines
        .iter()
        .find(|(l, _)| l == "speedmimi closed http")
        .unwrap()
        .1;
    assert_eq!(http.iter().filter(|p| p.connections == 1000).count(), 1);
    assert_eq!(
        http.iter().find(|p| p.connections == 1000).unwrap().rounds,
        1
    );
}

#[test]
fn steps_table_shows_scheme_and_handshakes_only_when_a_step_is_https() {
    let plain = reports::load_dir(Path::new(FIXTURE)).unwrap();
    let t = reports::tables::steps_table(&plain);
    assert!(!t.headers.iter().any(|h| h == "scheme"));

    let data = with_https_step();
    let t = reports::tables::steps_table(&data);
    let col = |name: &str| t.headers.iter().position(|h| h == name).unwrap();
    let last = t.rows.last().unwrap();
    assert_eq!(last[col("scheme")], "https");
    assert_eq!(
        last[col("TLS handshakes (full / resumed)")],
        "1,000 (1,000 / 0)"
    );
    assert_eq!(last[col("handshakes/s")], "100");
    assert_eq!(last[col("handshake p50 ms")], "1.50");
    assert_eq!(t.rows[0][col("scheme")], "http");
    assert!(t.rows.iter().all(|r| r.len() == t.headers.len()));
}
