//! Availability under passive health, through the real binary: a backend
//! that comes back is served at once (a sole backend is never taken out,
//! and when every backend is out the proxy still tries them), one failed
//! request takes no backend out by default, and one request's failures count
//! against one backend only.

mod common;

use common::*;
use serde_json::Value;

/// `cfg`'s YAML with the upstream fields `fields` removed, so that they
/// take their defaults.
fn with_defaults(cfg: &Cfg, fields: &[&str]) -> String {
    cfg.yaml()
        .lines()
        .filter(|l| !fields.iter().any(|f| l.starts_with(&format!("    {f}:"))))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The admin API's `health` of each backend of upstream `default`, in order.
fn health(p: &Proxy) -> Vec<String> {
    let v: Value = p.admin().get_json("/api/v1/backends?upstream=default");
    v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["health"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn status(p: &Proxy, path: &str) -> u16 {
    p.client().get(path).status
}

#[test]
fn a_sole_backend_that_restarts_serves_the_first_request_after_it_is_up() {
    let b = Backend::start("a");
    // Even with max_fails 1 the only backend stays in rotation.
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.max_fails = 1;
    cfg.fail_timeout = "30s";
    let p = cfg.start();
    assert_eq!(status(&p, "/"), 200);
    let addr = b.stop();
    let failed = status(&p, "/");
    assert!(failed == 502 || failed == 503, "{failed}");
    assert_eq!(health(&p), ["up"]);
    let b = Backend::start_on("a", addr);
    let r = p.client().get("/");
    assert_eq!(
        r.status, 200,
        "the first request after the restart: {}",
        r.head
    );
    assert_eq!(r.text(), "a");
    assert_eq!(b.requests(), 1);
}

#[test]
fn a_sole_backend_stays_in_rotation_after_many_failures() {
    let b = Backend::start("a");
    let p = Proxy::start(&with_defaults(&Cfg::new(&[b.addr]), &["max_fails"]));
    for i in 0..20 {
        assert_eq!(status(&p, "/reset"), 502, "request {i}");
    }
    assert_eq!(health(&p), ["up"]);
    let v = p.admin().get_json("/api/v1/backends?upstream=default");
    assert_eq!(v["backends"][0]["failures"], 20, "{v}");
    let r = p.client().get("/");
    assert_eq!(r.status, 200, "{}", r.head);
}

#[test]
fn two_backends_stopped_then_started_serve_the_first_request() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = Proxy::start(&with_defaults(&Cfg::new(&[a.addr, b.addr]), &["max_fails"]));
    assert_eq!(p.answer_ids(2), ["a", "b"]);
    let (addr_a, addr_b) = (a.stop(), b.stop());
    // Each failed request counts against one backend: with max_fails 3,
    // six requests take both out.
    let mut sent = 0;
    while health(&p) != ["down", "down"] {
        assert!(
            sent < 12,
            "still {:?} after {sent} failed requests",
            health(&p)
        );
        let s = status(&p, "/");
        assert!(s == 502 || s == 503, "{s}");
        sent += 1;
    }
    assert!(sent >= 6, "both out after only {sent} failed requests");
    // Every backend is out: requests still go to them, and fail.
    assert_eq!(status(&p, "/"), 502);
    let (a, b) = (
        Backend::start_on("a", addr_a),
        Backend::start_on("b", addr_b),
    );
    let r = p.client().get("/");
    assert_eq!(
        r.status, 200,
        "the first request after both came back: {}",
        r.head
    );
    assert_eq!(a.requests() + b.requests(), 1);
    // The one that answered is back in rotation; the other follows on its
    // first answer.
    let ids = p.answer_ids(6);
    assert!(ids.iter().all(|id| id == "a" || id == "b"), "{ids:?}");
}

#[test]
fn one_failed_request_takes_no_backend_out_by_default() {
    let good = Backend::start("good");
    let dead = closed_port();
    let p = Proxy::start(&with_defaults(
        &Cfg::new(&[dead, good.addr]),
        &["max_fails"],
    ));
    // The connect to the dead one is retried on the good one.
    let r = p.client().get("/");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(health(&p), ["up", "up"], "one failure of max_fails 3");
}

#[test]
fn one_request_that_breaks_every_backend_counts_against_one() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let mut cfg = Cfg::new(&[a.addr, b.addr]);
    cfg.max_fails = 1; // one counted failure would take a backend out
    cfg.fail_timeout = "30s";
    let p = cfg.start();
    // Both backends reset it: the retry reaches the second, which resets too.
    assert_eq!(status(&p, "/reset"), 502);
    assert_eq!(a.requests() + b.requests(), 2, "tried on both");
    let h = health(&p);
    assert_eq!(
        h.iter().filter(|s| *s == "down").count(),
        1,
        "only the first backend is blamed: {h:?}"
    );
    // The other one keeps serving.
    let ids = p.answer_ids(4);
    let up = if h[0] == "up" { "a" } else { "b" };
    assert!(ids.iter().all(|id| id == up), "{ids:?}");
}
