//! Bodies stream through without being buffered whole, in both directions
//! and every framing; broken responses end the client connection; HTTP/1.0
//! clients, pipelining, HEAD/204/304 and 100-continue.

mod common;

use common::*;

const MB: u64 = 1024 * 1024;
const BIG: u64 = 100 * MB;
/// Peak proxy RSS allowed while 100 MB stream through it.
const RSS_LIMIT: u64 = 64 * MB;

/// Writes `n` pattern bytes to the client, raw or as chunks.
fn send_pattern(c: &mut Client, n: u64, chunked: bool) {
    const PIECE: usize = 256 * 1024;
    let block: Vec<u8> = (0..(PIECE + 251) as u64).map(pattern_byte).collect();
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(PIECE as u64) as usize;
        let off = (sent % 251) as usize;
        let data = &block[off..off + len];
        if chunked {
            c.send(format!("{len:x}\r\n").as_bytes());
            c.send(data);
            c.send(b"\r\n");
        } else {
            c.send(data);
        }
        sent += len as u64;
    }
    if chunked {
        c.send(b"0\r\n\r\n");
    }
}

fn upload(chunked: bool) {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let sampler = RssSampler::start(p.pid());
    let mut c = p.client();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {BIG}")
    };
    c.send(format!("POST /upload HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n").as_bytes());
    send_pattern(&mut c, BIG, chunked);
    let r = c.read_response();
    let peak = sampler.finish();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), format!("len={BIG} pattern=ok chunked={chunked}"));
    eprintln!(
        "upload (chunked={chunked}): peak proxy RSS {} KiB",
        peak / 1024
    );
    assert!(peak > 0, "RSS was never sampled");
    assert!(peak < RSS_LIMIT, "proxy RSS reached {} MiB", peak / MB);
    // The connection is still usable.
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn streams_100mb_upload_with_content_length_in_bounded_memory() {
    upload(false);
}

#[test]
fn streams_100mb_chunked_upload_in_bounded_memory() {
    upload(true);
}

#[test]
fn streams_100mb_download_in_bounded_memory() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let sampler = RssSampler::start(p.pid());
    let mut c = p.client();
    c.send(format!("GET /download/{BIG} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    let (r, len, pattern_ok) = c.read_response_counting();
    let peak = sampler.finish();
    assert_eq!(r.status, 200);
    assert_eq!(len, BIG);
    assert!(pattern_ok, "the body arrived altered");
    eprintln!("download: peak proxy RSS {} KiB", peak / 1024);
    assert!(peak > 0, "RSS was never sampled");
    assert!(peak < RSS_LIMIT, "proxy RSS reached {} MiB", peak / MB);
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn relays_slow_backend_body_whole() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/trickle/10");
    assert_eq!(r.status, 200);
    let want: Vec<u8> = (0..1000).map(pattern_byte).collect();
    assert_eq!(r.body, want);
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn relays_slow_backend_answer_within_read_timeout() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.upstream_read_timeout = "3s";
    let p = cfg.start();
    let mut c = p.client();
    let r = c.get("/slow/300");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "a");
}

#[test]
fn closes_client_when_backend_resets_mid_response() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /reset-mid HTTP/1.1\r\nHost: a\r\n\r\n");
    // The head (Content-Length 100000) and 1000 bytes came through; the rest
    // never will: the client must see the connection end, not hang on a
    // keep-alive connection and not get a response that looks whole.
    let res = c.try_read_response(false);
    match res {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "expected the connection to end, got {e}"
        ),
        Ok(r) => panic!(
            "a truncated response looked whole: {} ({} bytes)",
            r.head,
            r.body.len()
        ),
    }
    assert_still_serves(&mut p);
}

#[test]
fn closes_client_when_backend_closes_mid_response() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /close-mid HTTP/1.1\r\nHost: a\r\n\r\n");
    let res = c.try_read_response(false);
    match res {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "expected the connection to end, got {e}"
        ),
        Ok(r) => panic!(
            "a truncated response looked whole: {} ({} bytes)",
            r.head,
            r.body.len()
        ),
    }
    assert_still_serves(&mut p);
}

#[test]
fn answers_pipelined_requests_in_order() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    // The first is the slowest: its answer must still come first.
    c.send(
        b"GET /slow/200?n=1 HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /echo?n=2 HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /echo?n=3 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let r1 = c.read_response();
    let r2 = c.read_response();
    let r3 = c.read_response();
    assert_eq!((r1.status, r2.status, r3.status), (200, 200, 200));
    assert_eq!(r1.text(), "a");
    assert!(r2.text().contains("GET /echo?n=2 "), "{}", r2.text());
    assert!(r3.text().contains("GET /echo?n=3 "), "{}", r3.text());
    assert!(c.stays_open(std::time::Duration::from_millis(100)));
}

#[test]
fn answers_pipelined_requests_with_bodies_in_order() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\none\
          POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n\
          GET /echo?n=3 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let r1 = c.read_response();
    let r2 = c.read_response();
    let r3 = c.read_response();
    assert!(r1.text().ends_with("one"), "{}", r1.text());
    assert!(r2.text().ends_with("two"), "{}", r2.text());
    assert!(r3.text().contains("GET /echo?n=3 "), "{}", r3.text());
}

#[test]
fn closes_http10_connection_without_keep_alive() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.version.starts_with("HTTP/1."), "{}", r.head);
    assert_eq!(r.text(), "a");
    assert!(
        c.is_closed(),
        "an HTTP/1.0 connection without keep-alive stayed open"
    );
}

#[test]
fn keeps_http10_connection_alive_when_asked() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    for _ in 0..3 {
        c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive"),
            "{}",
            r.head
        );
    }
}

#[test]
fn dechunks_response_for_http10_client() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /chunked/5000 HTTP/1.0\r\nHost: a\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(
        !r.chunked,
        "chunked coding sent to an HTTP/1.0 client: {}",
        r.head
    );
    assert!(!r.has_header("transfer-encoding"), "{}", r.head);
    let want: Vec<u8> = (0..5000).map(pattern_byte).collect();
    assert_eq!(r.body, want);
}

#[test]
fn relays_chunked_response_to_http11_client() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/chunked/5000");
    assert_eq!(r.status, 200);
    let want: Vec<u8> = (0..5000).map(pattern_byte).collect();
    assert_eq!(r.body, want);
    assert_eq!(
        c.get("/").status,
        200,
        "keep-alive after a chunked response"
    );
}

#[test]
fn relays_read_until_close_response_and_closes() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /until-close/70000 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response(); // no length: read until the close
    assert_eq!(r.status, 200);
    let want: Vec<u8> = (0..70000).map(pattern_byte).collect();
    assert_eq!(r.body.len(), want.len());
    assert_eq!(r.body, want);
}

#[test]
fn head_response_has_no_body() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"HEAD /download/1000 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    // Had the proxy sent (or waited for) a body, this would not parse.
    let r = c.get("/echo");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.text().starts_with("a\nGET /echo "), "{}", r.text());
}

#[test]
fn head_response_to_chunked_resource_has_no_body() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"HEAD /chunked/1000 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    let r = c.get("/echo");
    assert_eq!(r.status, 200, "{}", r.head);
}

#[test]
fn no_content_204_has_no_body() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/status/204");
    assert_eq!(r.status, 204);
    assert!(!r.has_header("transfer-encoding"), "{}", r.head);
    let r = c.get("/echo");
    assert_eq!(r.status, 200, "{}", r.head);
}

#[test]
fn not_modified_304_has_no_body() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/status/304");
    assert_eq!(r.status, 304);
    let r = c.get("/echo");
    assert_eq!(r.status, 200, "{}", r.head);
}

#[test]
fn relays_backend_error_statuses_unchanged() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    for code in [404u16, 500] {
        let r = c.get(&format!("/status/{code}"));
        assert_eq!(r.status, code);
        assert_eq!(r.text(), "a");
    }
}

#[test]
fn relays_expect_100_continue() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    // The body goes only after the backend's go-ahead came through.
    let interim = c.read_response();
    assert_eq!(interim.status, 100, "{}", interim.head);
    c.send(b"hello");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.text().ends_with("hello"), "{}", r.text());
    assert!(b
        .last()
        .head
        .to_ascii_lowercase()
        .contains("expect: 100-continue"));
}

#[test]
fn http10_client_gets_no_interim_100() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(
        b"POST /echo HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.text().ends_with("hello"));
}

#[test]
fn request_body_is_forwarded_intact() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let n = 300_000u64;
    c.send(format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n").as_bytes());
    send_pattern(&mut c, n, false);
    let r = c.read_response();
    assert_eq!(r.text(), format!("len={n} pattern=ok chunked=false"));
    assert_eq!(b.last().body.len(), 64 * 1024); // first 64 KiB kept
}

#[test]
fn client_leaving_mid_body_does_not_disturb_others() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    {
        let mut c = p.client();
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nabc");
    } // dropped mid-body
    assert_still_serves(&mut p);
}

#[test]
fn answers_client_that_half_closed_after_its_request() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /slow/100 HTTP/1.1\r\nHost: a\r\n\r\n");
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let r = c
        .try_read_response(false)
        .expect("an answer after the client's FIN");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "a");
}

#[test]
fn forwards_chunked_request_with_extensions_and_trailers() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    let req = b.last();
    assert!(
        req.chunked,
        "the backend did not get a chunked body:\n{}",
        req.head
    );
    assert_eq!(req.body, b"hello world");
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn forwards_http10_request_body() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("hello"));
    assert_eq!(b.last().body, b"hello");
}

#[test]
fn slow_reading_client_keeps_proxy_memory_bounded() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let n = 50 * MB;
    c.send(format!("GET /download/{n} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    // Do not read for a while: the backend pushes until buffers are full.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sampler = RssSampler::start(p.pid());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (r, len, ok) = c.read_response_counting();
    let peak = sampler.finish();
    assert_eq!(r.status, 200);
    assert_eq!(len, n);
    assert!(ok);
    eprintln!("slow reader: peak proxy RSS {} KiB", peak / 1024);
    assert!(peak < RSS_LIMIT, "proxy RSS reached {} MiB", peak / MB);
}

#[test]
fn response_with_content_length_and_chunked_is_read_as_chunked_and_not_reused() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/cl-te");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "hello");
    assert!(!r.has_header("content-length"), "{}", r.head);
    assert_eq!(c.get("/").status, 200);
    assert_eq!(
        b.connections(),
        2,
        "a connection with smuggled framing was reused"
    );
}

#[test]
fn relays_interim_103_before_the_final_response() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /early-hints HTTP/1.1\r\nHost: a\r\n\r\n");
    let interim = c.read_response();
    assert_eq!(interim.status, 103, "{}", interim.head);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "a");
}

#[test]
fn relays_chunked_response_with_extensions_and_trailers() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/trailers");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "hello");
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn answers_pipelined_head_request_without_body() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(
        b"GET /echo?n=1 HTTP/1.1\r\nHost: a\r\n\r\n\
          HEAD /download/500 HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /echo?n=3 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let r1 = c.read_response();
    let r2 = c.read_head_response();
    let r3 = c.read_response();
    assert!(r1.text().contains("GET /echo?n=1 "));
    assert_eq!(r2.header("content-length"), Some("500"));
    assert!(r3.text().contains("GET /echo?n=3 "), "{}", r3.head);
}

#[test]
fn answers_many_pipelined_requests_in_order() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let n = 1000;
    let mut all = Vec::new();
    for i in 0..n {
        all.extend_from_slice(format!("GET /echo?n={i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    // ~40 KB of requests: more than one read buffer; write them while reading.
    let mut w = c.stream().try_clone().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        w.write_all(&all).unwrap();
    });
    for i in 0..n {
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert!(
            r.text().contains(&format!("GET /echo?n={i} ")),
            "response {i}: {}",
            r.text()
        );
    }
    t.join().unwrap();
    assert_eq!(b.connections(), 1);
}

#[test]
fn parses_head_arriving_in_pieces() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let req = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    for piece in req.chunks(3) {
        c.send(piece);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.text().ends_with("hello"));
}

#[test]
fn does_not_answer_requests_pipelined_after_connection_close() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(
        b"GET /echo?n=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n\
          GET /echo?n=2 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let r = c.read_response();
    assert!(r.text().contains("n=1"));
    assert!(r.says_close());
    assert!(
        c.is_closed(),
        "a request after Connection: close was answered"
    );
    assert_eq!(b.requests(), 1);
}

#[test]
fn not_modified_304_with_content_length_has_no_body() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/304-with-length");
    assert_eq!(r.status, 304);
    let r = c.get("/echo");
    assert_eq!(r.status, 200, "{}", r.head);
}

#[test]
fn relays_large_response_head() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/big-head/12000");
    assert_eq!(r.status, 200, "{}", &r.head[..r.head.len().min(200)]);
    assert_eq!(r.header("x-big").map(str::len), Some(12000));
    assert_eq!(r.text(), "a");
}

#[test]
fn forwards_large_request_head_under_the_limit() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let big = "v".repeat(15_000);
    c.send(format!("GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(b.last().header("x-big").map(str::len), Some(15_000));
}

#[test]
fn client_leaving_mid_download_does_not_disturb_others() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    {
        let mut c = p.client();
        c.send(b"GET /download/50000000 HTTP/1.1\r\nHost: a\r\n\r\n");
        let _ = c.read_exact(100_000);
    } // dropped mid-body
    assert_still_serves(&mut p);
    wait_until("the abandoned upstream connection to close", || {
        b.closed() >= 1
    });
}

#[test]
fn post_with_zero_content_length_is_forwarded() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(b.last().header("content-length"), Some("0"));
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn relays_large_chunked_response_across_buffer_boundaries() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let n = 3_000_000u64;
    let r = c.get(&format!("/chunked/{n}"));
    assert_eq!(r.status, 200);
    assert!(r.chunked);
    assert_eq!(r.body.len() as u64, n);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &x)| x == pattern_byte(i as u64)));
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn dechunks_large_response_for_http10_client() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let n = 3_000_000u64;
    c.send(format!("GET /chunked/{n} HTTP/1.0\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(!r.chunked, "{}", r.head);
    assert_eq!(r.body.len() as u64, n);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &x)| x == pattern_byte(i as u64)));
}

#[test]
fn backend_answering_before_the_body_ends_closes_the_client_connection() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"POST /early-reply HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n");
    let mut w = c.stream().try_clone().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let block = [b'x'; 65536];
        for _ in 0..150 {
            if w.write_all(&block).is_err() {
                return;
            }
        }
    });
    let r = c.read_response();
    assert_eq!(r.status, 413);
    // The rest of the body cannot be read as a next request: close.
    assert!(c.is_closed());
    assert_still_serves(&mut p);
}

#[test]
fn backend_connection_close_does_not_close_the_client_connection() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/server-close");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "a");
    assert_eq!(c.get("/").status, 200);
    assert_eq!(
        b.connections(),
        2,
        "a closed upstream connection was reused"
    );
}

#[test]
fn http10_backend_answer_reaches_http11_client_as_http11() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get("/http10");
    assert_eq!(r.status, 200);
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.text(), "a");
    assert_eq!(c.get("/").status, 200);
    assert_eq!(b.connections(), 2);
}

#[test]
fn upstream_read_timeout_does_not_cut_a_streaming_body() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.upstream_read_timeout = "200ms";
    let p = cfg.start();
    let mut c = p.client();
    // The head comes at once; body pieces 400 ms apart, under the server's
    // read_timeout (10 s) but over the upstream's head timeout.
    let r = c.get("/drip/400");
    assert_eq!(r.status, 200);
    let want: Vec<u8> = (0..300).map(pattern_byte).collect();
    assert_eq!(r.body, want);
}

#[test]
fn client_stalling_mid_body_does_not_count_against_the_backend() {
    let b = Backend::start("a");
    // A second backend: passive health never takes out a sole one, which
    // would make the check below hold whatever the proxy blamed.
    let spare = Backend::start("spare");
    let mut cfg = Cfg::new(&[b.addr, spare.addr]);
    cfg.upstream_read_timeout = "300ms";
    cfg.max_fails = 1;
    cfg.fail_timeout = "30s";
    let p = cfg.start();
    let mut slow = p.client();
    slow.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789");
    // The client, not the backend, is late: whatever the proxy does with
    // this connection, the backend must stay in rotation.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    // Whatever answer the stalled client already has (none is fine too).
    slow.set_timeout(std::time::Duration::from_millis(200));
    let first = slow.try_read_response(false);
    let backends = p.admin().get_json("/api/v1/backends?upstream=default");
    assert_eq!(
        backends["backends"][0]["health"], "up",
        "a stalled client took the backend down: {backends}"
    );
    let mut other = p.client();
    let r = other.get("/");
    assert_eq!(r.status, 200, "{}", r.head);
    if let Ok(r) = first {
        assert_ne!(
            r.status, 504,
            "a stalled client got 504: the backend was blamed"
        );
    }
}

#[test]
fn closes_client_that_stops_reading_after_write_timeout() {
    let b = Backend::start("a");
    let yaml = Cfg::new(&[b.addr]).yaml().replace(
        "  read_timeout: 10s\n  write_timeout: 10s",
        "  read_timeout: 60s\n  write_timeout: 500ms",
    );
    let p = Proxy::start(&yaml);
    let mut c = p.client();
    c.send(b"GET /download/500000000 HTTP/1.1\r\nHost: a\r\n\r\n");
    // Never read: once buffers fill, nothing moves for write_timeout and the
    // proxy gives up on the client and the backend connection.
    wait_until("the proxy to drop the stuck exchange", || b.closed() >= 1);
}

#[test]
fn answers_pipelined_requests_for_large_responses() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let n = 100;
    let mut all = Vec::new();
    for _ in 0..n {
        all.extend_from_slice(b"GET /download/200000 HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    let mut w = c.stream().try_clone().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        w.write_all(&all).unwrap();
    });
    for i in 0..n {
        let (r, len, ok) = c.read_response_counting();
        assert_eq!(r.status, 200, "response {i}");
        assert_eq!(len, 200_000);
        assert!(ok);
    }
    t.join().unwrap();
}

#[test]
fn closes_client_when_chunked_response_is_cut_short() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /chunked-cut HTTP/1.1\r\nHost: a\r\n\r\n");
    match c.try_read_response(false) {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "expected the connection to end, got {e}"
        ),
        Ok(r) => panic!(
            "a cut chunked response looked whole: {} {:?}",
            r.head,
            r.text()
        ),
    }
    assert_still_serves(&mut p);
}

#[test]
fn dechunked_response_closes_http10_keep_alive_connection() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    // HTTP/1.0 has no chunked coding: the end of the body is the close.
    c.send(b"GET /chunked/3000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3000);
    assert!(!r.has_header("transfer-encoding"), "{}", r.head);
}
