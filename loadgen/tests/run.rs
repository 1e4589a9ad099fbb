//! `loadgen run` against real servers: request counts, schedules,
//! response validation, reconnects, source pools, shards, Ctrl-C.

mod common;

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use common::{ok_12, run_json, Backend, TestServer};

#[test]
fn sends_exactly_n_requests() {
    let server = TestServer::start(|_, s| ok_12(s));
    let (code, v) = run_json(&[&server.url(), "-c", "10", "-t", "2", "-n", "10000"]);
    assert_eq!(code, 0);
    assert_eq!(server.requests(), 10_000);
    assert_eq!(v["requests"], 10_000);
    assert_eq!(v["sent"], 10_000);
    assert_eq!(v["errors"]["total"], 0);
}

#[test]
fn sends_exactly_n_requests_to_the_backend() {
    let b = Backend::start(&[]);
    let (code, v) = run_json(&[&b.url(), "-c", "7", "-t", "3", "-n", "10000"]);
    assert_eq!(code, 0);
    assert_eq!(v["requests"], 10_000);
    assert_eq!(v["errors"]["total"], 0);
    assert_eq!(v["connections"]["peak_open"], 7);
}

#[test]
fn open_loop_paces_requests_on_schedule() {
    let server = TestServer::start(|_, s| ok_12(s));
    // 100 requests at 200/s cannot finish before their schedule (~0.5 s).
    let (code, v) = run_json(&[&server.url(), "-c", "4", "-R", "200", "-n", "100"]);
    assert_eq!(code, 0);
    assert_eq!(v["mode"], "open");
    assert_eq!(server.requests(), 100);
    assert_eq!(v["schedule"]["rate"], 200.0);
    assert_eq!(v["schedule"]["paced_requests"], 100);
    assert!(v["duration_s"].as_f64().unwrap() >= 0.45, "{v}");
    assert!(v["schedule"]["behind_max_us"].is_u64());
}

#[test]
fn hold_mode_keeps_connections_and_paces_each() {
    let b = Backend::start(&[]);
    let (code, v) = run_json(&[
        &b.url(),
        "-c",
        "50",
        "--hold",
        "--interval",
        "1s",
        "--connect-rate",
        "500",
        "-d",
        "2500ms",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["mode"], "hold");
    assert_eq!(v["connections"]["peak_open"], 50);
    assert_eq!(v["connections"]["reconnects"], 0);
    // Each connection sends once per second: 2 or 3 requests each.
    let n = v["requests"].as_u64().unwrap();
    assert!((100..=150).contains(&n), "{n}");
}

#[test]
fn malformed_responses_are_counted_not_fatal() {
    let server = TestServer::start(|_, s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n");
        true
    });
    let (code, v) = run_json(&[&server.url(), "-c", "2", "-n", "20"]);
    assert_eq!(code, 0);
    assert_eq!(v["errors"]["parse"], 20);
    assert_eq!(v["requests"], 0);
}

#[test]
fn bytes_after_a_response_are_a_parse_error() {
    // Content-Length says 2 but 12 bytes come: the extra bytes are malformed.
    let server = TestServer::start(|_, s| {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello world\n")
            .is_ok()
    });
    let (_, v) = run_json(&[&server.url(), "-c", "1", "-n", "10"]);
    assert_eq!(v["errors"]["parse"], 10);
}

#[test]
fn chunked_and_close_delimited_bodies_are_read() {
    let server = TestServer::start(|n, s| {
        if n % 2 == 1 {
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
            )
            .is_ok()
        } else {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the close");
            false
        }
    });
    let (code, v) = run_json(&[&server.url(), "-c", "3", "-n", "300"]);
    assert_eq!(code, 0);
    assert_eq!(v["requests"], 300);
    assert_eq!(v["errors"]["total"], 0, "{v}");
}

#[test]
fn reconnects_after_connection_close() {
    let server = TestServer::start(|_, s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        false
    });
    let (code, v) = run_json(&[&server.url(), "-c", "2", "-n", "50"]);
    assert_eq!(code, 0);
    assert_eq!(v["requests"], 50);
    assert_eq!(v["errors"]["total"], 0);
    assert_eq!(server.seen.connections.load(Ordering::SeqCst), 50);
    assert!(v["connections"]["reconnects"].as_u64().unwrap() >= 48);
}

#[test]
fn status_errors_are_counted_by_class() {
    let server = TestServer::start(|n, s| {
        let status = if n % 2 == 0 { "503 Busy" } else { "404 Nope" };
        s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .is_ok()
    });
    let (_, v) = run_json(&[&server.url(), "-c", "1", "-n", "10"]);
    assert_eq!(v["errors"]["status_4xx"], 5);
    assert_eq!(v["errors"]["status_5xx"], 5);
    assert_eq!(v["requests"], 10);
}

#[test]
fn source_pool_addresses_are_used() {
    let server = TestServer::start(|_, s| ok_12(s));
    let (code, v) = run_json(&[
        &server.url(),
        "-c",
        "9",
        "-n",
        "90",
        "--source",
        "127.0.0.2-127.0.0.4",
    ]);
    assert_eq!(code, 0, "{v}");
    let mut peers = server.seen.peers.lock().unwrap().clone();
    peers.sort();
    peers.dedup();
    let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(peers, want);
}

#[test]
fn connect_errors_are_counted_and_end_the_run() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_, v) = run_json(&[&format!("http://127.0.0.1:{port}/"), "-c", "2", "-n", "6"]);
    assert_eq!(v["errors"]["connect"], 6);
    assert_eq!(v["requests"], 0);
}

#[test]
fn shards_add_up_to_one_run() {
    let server = TestServer::start(|_, s| ok_12(s));
    let mut cmd = common::loadgen();
    cmd.env("LOADGEN_MAX_CONNS_PER_PROCESS", "10").args([
        "run",
        &server.url(),
        "-c",
        "30",
        "-n",
        "3000",
        "--json",
        "-q",
    ]);
    let out = cmd.output().expect("run loadgen");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["shards"], 3);
    assert_eq!(v["requests"], 3000);
    assert_eq!(server.requests(), 3000);
    assert_eq!(v["connections"]["peak_open"], 30);
}

#[test]
fn ctrl_c_stops_and_still_prints_the_summary() {
    let b = Backend::start(&[]);
    let child = common::loadgen()
        .args(["run", &b.url(), "-c", "4", "-d", "60s", "--json", "-q"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: signalling the child we just spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["requests"].as_u64().unwrap() > 0);
    assert!(v["duration_s"].as_f64().unwrap() < 60.0);
}
