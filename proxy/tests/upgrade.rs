//! `Upgrade` (WebSocket): after a 101 the connection is a two-way byte pipe
//! through the proxy; without a proper upgrade request it stays HTTP.

mod common;

use common::*;

const UPGRADE: &[u8] = b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn websocket_upgrade_echoes_bytes_both_ways() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(UPGRADE);
    let r = c.read_head_response();
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(
        r.header("upgrade").map(str::to_ascii_lowercase).as_deref(),
        Some("websocket"),
        "{}",
        r.head
    );
    assert!(
        r.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{}",
        r.head
    );
    // The backend speaks first, then echoes.
    assert_eq!(c.read_exact(7), b"welcome");
    for msg in [&b"hello"[..], b"\x81\x05world", &[0u8; 3000][..]] {
        c.send(msg);
        assert_eq!(c.read_exact(msg.len()), msg);
    }
    // The backend saw the upgrade request with its Upgrade headers intact.
    let req = b.last();
    assert_eq!(req.header("upgrade"), Some("websocket"));
    assert!(req
        .header("connection")
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));
    assert_eq!(
        req.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
}

#[test]
fn websocket_tunnel_carries_large_transfer() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(UPGRADE);
    assert_eq!(c.read_head_response().status, 101);
    assert_eq!(c.read_exact(7), b"welcome");
    let data: Vec<u8> = (0..2_000_000u64).map(pattern_byte).collect();
    // Write on a thread while reading the echo, or both sides' buffers fill.
    let mut writer = c.stream().try_clone().unwrap();
    let d = data.clone();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&d).unwrap();
    });
    let echoed = c.read_exact(data.len());
    t.join().unwrap();
    assert!(echoed == data, "the tunnel altered the bytes");
}

#[test]
fn tunnel_closes_client_when_backend_closes() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(UPGRADE);
    assert_eq!(c.read_head_response().status, 101);
    assert_eq!(c.read_exact(7), b"welcome");
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    // The backend sees our FIN, ends its echo loop and closes; so do we.
    assert!(c.is_closed());
}

#[test]
fn upgrade_header_without_connection_upgrade_is_not_forwarded() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(b.last().header("upgrade").is_none(), "{}", b.last().head);
}

#[test]
fn unrequested_101_from_backend_is_bad_gateway() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    // /upgrade answers 101 whatever was asked: without an upgrade request the
    // proxy must not open a tunnel.
    let (r, closed) = exchange_raw(&p, b"GET /upgrade HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(closed);
    assert_still_serves(&mut p);
}

#[test]
fn bytes_sent_with_the_upgrade_request_arrive_after_101() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let mut req = UPGRADE.to_vec();
    req.extend_from_slice(b"early bytes");
    c.send(&req);
    assert_eq!(c.read_head_response().status, 101);
    // welcome, then the echo of what we sent before the 101 came.
    assert_eq!(c.read_exact(7 + 11), b"welcomeearly bytes");
}

#[test]
fn declined_upgrade_stays_http() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    // /echo answers 200: the backend did not switch protocols.
    c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(
        c.get("/").status,
        200,
        "the connection stays usable for HTTP"
    );
}
