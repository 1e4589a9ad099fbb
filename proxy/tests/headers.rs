//! What the proxy changes in heads: hop-by-hop fields dropped both ways,
//! X-Forwarded-For appended, X-Forwarded-Proto and Via added.

mod common;

use common::*;

fn echo_of(request: &[u8]) -> (Received, Response) {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(request);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    (b.last(), r)
}

#[test]
fn drops_hop_by_hop_request_headers() {
    let (req, _) = echo_of(
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Checksum\r\n\
          Upgrade: h2c\r\nX-Kept: yes\r\n\r\n",
    );
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            req.header(name).is_none(),
            "{name} was forwarded:\n{}",
            req.head
        );
    }
    assert_eq!(req.header("x-kept"), Some("yes"));
    assert_eq!(req.header("host"), Some("a"));
}

#[test]
fn drops_headers_named_in_connection() {
    let (req, _) = echo_of(
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, x-other\r\nX-Secret: 1\r\n\
          X-Other: 2\r\nX-Public: 3\r\n\r\n",
    );
    assert!(req.header("x-secret").is_none(), "{}", req.head);
    assert!(req.header("x-other").is_none(), "{}", req.head);
    assert_eq!(req.header("x-public"), Some("3"));
}

#[test]
fn adds_x_forwarded_for_with_client_address() {
    let (req, _) = echo_of(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        req.header_all("x-forwarded-for"),
        vec!["127.0.0.1"],
        "{}",
        req.head
    );
}

#[test]
fn appends_to_existing_x_forwarded_for() {
    let (req, _) =
        echo_of(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n\r\n");
    assert_eq!(
        req.header_all("x-forwarded-for"),
        vec!["203.0.113.7, 10.0.0.1, 127.0.0.1"],
        "{}",
        req.head
    );
}

#[test]
fn merges_repeated_x_forwarded_for_in_order() {
    let (req, _) = echo_of(
        b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n",
    );
    assert_eq!(
        req.header_all("x-forwarded-for"),
        vec!["1.1.1.1, 2.2.2.2, 127.0.0.1"],
        "{}",
        req.head
    );
}

#[test]
fn x_forwarded_for_uses_the_client_source_address() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = Client::connect_from(p.addr, "127.0.0.9".parse().unwrap());
    assert_eq!(c.get("/echo").status, 200);
    assert_eq!(b.last().header("x-forwarded-for"), Some("127.0.0.9"));
}

#[test]
fn sets_x_forwarded_proto_replacing_the_clients() {
    let (req, _) = echo_of(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n");
    assert_eq!(
        req.header_all("x-forwarded-proto"),
        vec!["http"],
        "{}",
        req.head
    );
}

#[test]
fn adds_via_to_request_and_response() {
    let (req, resp) = echo_of(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        req.header("via").is_some_and(|v| v.contains("speedmimi")),
        "{}",
        req.head
    );
    assert!(
        resp.header("via").is_some_and(|v| v.contains("speedmimi")),
        "{}",
        resp.head
    );
}

#[test]
fn keeps_request_line_and_end_to_end_headers() {
    let (req, _) = echo_of(
        b"GET /echo/x?q=1&r=%20 HTTP/1.1\r\nHost: example.test:8080\r\nAccept: */*\r\n\
          Cookie: a=b\r\nX-Custom: v1\r\n\r\n",
    );
    assert_eq!(req.target, "/echo/x?q=1&r=%20");
    assert_eq!(req.header("host"), Some("example.test:8080"));
    assert_eq!(req.header("accept"), Some("*/*"));
    assert_eq!(req.header("cookie"), Some("a=b"));
    assert_eq!(req.header("x-custom"), Some("v1"));
    assert!(req.head.starts_with("GET /echo/x?q=1&r=%20 HTTP/1.1\r\n"));
}

#[test]
fn adds_host_for_http10_request_without_one() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /echo HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let req = b.last();
    assert!(
        req.head.starts_with("GET /echo HTTP/1.1\r\n"),
        "{}",
        req.head
    );
    assert_eq!(req.header_all("host").len(), 1, "{}", req.head);
}

#[test]
fn drops_hop_by_hop_response_headers() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/hop");
    assert_eq!(r.status, 200);
    for name in [
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
        "x-private",
    ] {
        assert!(
            !r.has_header(name),
            "{name} reached the client:\n{}",
            r.head
        );
    }
    assert_eq!(r.header("x-end"), Some("1"));
    assert_eq!(r.text(), "a");
    // The backend's Connection tokens are not the client's: still keep-alive.
    assert!(!r.says_close(), "{}", r.head);
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn forwards_obs_text_in_header_values_unchanged() {
    let (req, _) = echo_of("GET /echo HTTP/1.1\r\nHost: a\r\nX-Name: café\r\n\r\n".as_bytes());
    assert_eq!(req.header("x-name"), Some("café"));
}

#[test]
fn keeps_transfer_codings_other_than_chunked_in_responses() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/te-gzip");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "GZIPD");
    let te = r
        .header("transfer-encoding")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        te.contains("gzip"),
        "the gzip coding was dropped; the client cannot decode the body:\n{}",
        r.head
    );
}
