//! `loadgen backend` over real sockets: keep-alive, pipelining, request
//! bodies (Content-Length and chunked), HTTP/1.0, Connection: close.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Backend;

fn exchange(b: &Backend, request: &[u8]) -> String {
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn answers_pipelined_requests_with_bodies_in_order_then_closes() {
    let b = Backend::start(&["--body-size", "5"]);
    let got = exchange(
        &b,
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyz\
          GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        got.matches("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
            .count(),
        3,
        "{got}"
    );
    assert!(got.ends_with("Connection: close\r\n\r\nxxxxx"), "{got}");
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_asked() {
    let b = Backend::start(&[]);
    let got = exchange(&b, b"GET / HTTP/1.0\r\n\r\n");
    assert!(got.contains("Connection: close"), "{got}");
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.contains("Connection: keep-alive"), "{head}");
}

#[test]
fn a_request_split_across_writes_is_answered_once() {
    let b = Backend::start(&[]);
    let mut s = TcpStream::connect(b.addr).unwrap();
    for part in [&b"GET / HT"[..], b"TP/1.1\r\nHost: x\r", b"\n\r\n"] {
        s.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("200 OK").count(), 2, "{out}");
}

#[test]
fn malformed_requests_get_400_and_a_close() {
    let b = Backend::start(&[]);
    let got = exchange(
        &b,
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
}

#[test]
fn delay_still_answers_every_request() {
    let b = Backend::start(&["--delay", "20ms"]);
    let got = exchange(
        &b,
        b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(got.matches("200 OK").count(), 3, "{got}");
}
