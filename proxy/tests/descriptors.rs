//! Running out of file descriptors (EMFILE on accept): the proxy pauses
//! accepting instead of spinning or logging every failure, and serves what
//! waits in the backlog as soon as descriptors come back, without a new
//! connection having to arrive. Runs the proxy under a low hard limit
//! (`prlimit`), which its start-up raise of the soft limit cannot undo.

mod common;

use std::time::Duration;

use common::*;

const LIMIT: usize = 64;

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn backlog_is_served_once_descriptors_free_up_and_warnings_are_rate_limited() {
    let backend = Backend::start("A");
    let nofile = format!("--nofile={LIMIT}:{LIMIT}");
    let mut cfg = Cfg::new(&[backend.addr]);
    // The idle connections must outlive the test, however slow the machine.
    cfg.header_timeout = "60s";
    let p = Proxy::start_under(&["prlimit", &nofile, "--"], &cfg.yaml());
    p.admin(); // learn its address now, before descriptors run out
    wait_until("the start-up warning about max_conn", || {
        p.log().contains("RLIMIT_NOFILE is 64")
    });
    let spare = LIMIT.saturating_sub(open_descriptors(p.pid()));
    assert!(spare > 10, "only {spare} descriptors left at start");
    // More connections than descriptors: the kernel completes them all,
    // the proxy can accept only some; the rest wait in the backlog.
    let mut idle: Vec<Client> = (0..spare + 10).map(|_| p.client()).collect();
    wait_until("an accept failure", || p.log().contains("accept failed"));
    let mut queued = p.client();
    queued.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    // Retries fail for a while (each counted, few logged).
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        queued.stays_open(Duration::from_millis(100)),
        "answered while out of descriptors"
    );
    // Descriptors come back; no new connection arrives.
    idle.truncate(5);
    let r = queued.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    drop(idle);
    // The proxy is healthy again and tells how often accept failed.
    assert_eq!(p.client().get("/").status, 200);
    let failures = p.metric("speedmimi_accept_failures_total");
    let log = p.log();
    let warnings = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(warnings >= 1);
    assert!(
        (warnings as f64) < failures,
        "{warnings} warnings for {failures} failures:\n{log}"
    );
    assert!(
        warnings <= 3,
        "{warnings} warnings in about a second:\n{log}"
    );
}
