//! Request framing and the proxy's own answers: every malformed or
//! ambiguous request gets its status and a closed connection, backend
//! failures map to 502/503/504, and the proxy keeps serving afterwards.

mod common;

use common::*;
use std::time::Duration;

fn proxy_with_backend() -> (Backend, Proxy) {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    (b, p)
}

#[test]
fn rejects_malformed_request_line() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(&mut p, b"GET /\r\nHost: a\r\n\r\n", 400);
    assert_rejected(&mut p, b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400);
    assert_rejected(&mut p, b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

#[test]
fn rejects_unknown_http_version() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(&mut p, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400);
}

#[test]
fn rejects_content_length_with_transfer_encoding() {
    let (b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
    assert!(
        b.received().iter().all(|r| r.method != "POST"),
        "the ambiguous request reached the backend"
    );
}

#[test]
fn rejects_differing_duplicate_content_length() {
    let (b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    );
    assert_rejected(
        &mut p,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    );
    assert!(b.received().iter().all(|r| r.method != "POST"));
}

#[test]
fn rejects_invalid_content_length() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        400,
    );
    assert_rejected(
        &mut p,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
        400,
    );
}

#[test]
fn accepts_identical_duplicate_content_length() {
    let (b, p) = proxy_with_backend();
    let mut c = p.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(b.last().body, b"hello");
}

#[test]
fn rejects_obs_fold() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n  folded\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_bare_cr() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_nul_in_header() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_whitespace_before_colon() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(&mut p, b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);
}

#[test]
fn rejects_invalid_chunk_size() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_chunk_size_overflow() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_missing_host_in_http11() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(&mut p, b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400);
}

#[test]
fn rejects_repeated_host() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(&mut p, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
}

#[test]
fn rejects_transfer_encoding_gzip_with_501() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    );
}

#[test]
fn rejects_transfer_encoding_not_ending_in_chunked() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_uri_over_8k_with_414() {
    let (_b, mut p) = proxy_with_backend();
    let req = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    assert_rejected(&mut p, req.as_bytes(), 414);
}

#[test]
fn rejects_headers_over_max_header_size_with_431() {
    let (_b, mut p) = proxy_with_backend();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    assert_rejected(&mut p, req.as_bytes(), 431);
}

#[test]
fn rejects_too_many_header_lines_with_431() {
    let (_b, mut p) = proxy_with_backend();
    let mut req = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..150 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    assert_rejected(&mut p, req.as_bytes(), 431);
}

#[test]
fn answers_408_when_head_stalls_past_header_timeout() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.header_timeout = "500ms";
    let mut p = cfg.start();
    let mut c = p.client();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n"); // no blank line: the head never ends
    let r = c.read_response();
    assert_eq!(r.status, 408);
    assert!(c.is_closed(), "the connection stays open after a 408");
    assert_eq!(b.requests(), 0);
    assert_still_serves(&mut p);
}

#[test]
fn closes_silent_connection_past_header_timeout_without_answer() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.header_timeout = "300ms";
    let p = cfg.start();
    let mut c = p.client();
    let rest = c
        .read_rest()
        .expect("the proxy closes, not the 10 s client timeout");
    assert!(
        rest.is_empty(),
        "a silent connection got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn answers_502_when_backend_refuses() {
    let good = Backend::start("good");
    let dead = closed_port();
    let mut cfg = Cfg::new(&[good.addr]);
    cfg.extra_upstreams = format!(
        "  dead:\n    backends: [ {{ addr: \"{dead}\" }} ]\n    max_fails: 100\n    connect_timeout: 2s\n"
    );
    cfg.extra_routes =
        "  dead: { upstream: dead, match: { path_prefix: \"/dead\" } }\n".to_string();
    let mut p = cfg.start();
    let (r, closed) = exchange_raw(&p, b"GET /dead HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(closed);
    assert_still_serves(&mut p);
}

#[test]
fn answers_502_when_backend_resets_before_answering() {
    let (b, mut p) = proxy_with_backend();
    let (r, closed) = exchange_raw(&p, b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(closed);
    assert!(b.requests() >= 1);
    assert_still_serves(&mut p);
}

#[test]
fn answers_502_when_post_backend_resets_before_answering() {
    let (_b, mut p) = proxy_with_backend();
    let (r, closed) = exchange_raw(
        &p,
        b"POST /reset HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(closed);
    assert_still_serves(&mut p);
}

#[test]
fn answers_502_when_backend_answers_garbage() {
    let (_b, mut p) = proxy_with_backend();
    let (r, closed) = exchange_raw(&p, b"GET /garbage HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(closed);
    assert_still_serves(&mut p);
}

#[test]
fn a_sole_dead_backend_is_tried_for_every_request() {
    let good = Backend::start("good");
    let dead = closed_port();
    let mut cfg = Cfg::new(&[good.addr]);
    cfg.extra_upstreams = format!(
        "  dead:\n    backends: [ {{ addr: \"{dead}\" }} ]\n    max_fails: 1\n    fail_timeout: 30s\n"
    );
    cfg.extra_routes =
        "  dead: { upstream: dead, match: { path_prefix: \"/dead\" } }\n".to_string();
    let mut p = cfg.start();
    // Passive health never takes out an upstream's only backend (only an
    // active check can): each request is tried on it, and gets 502.
    for _ in 0..2 {
        let (r, closed) = exchange_raw(&p, b"GET /dead HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.status, 502, "{}", r.head);
        assert!(closed);
    }
    assert_still_serves(&mut p);
}

#[test]
fn skips_failed_backend_after_max_fails() {
    let good = Backend::start("good");
    let dead = closed_port();
    let mut cfg = Cfg::new(&[good.addr, dead]);
    cfg.max_fails = 1;
    cfg.fail_timeout = "30s";
    let p = cfg.start();
    let mut c = p.client();
    // Connects to the dead one are retried on the good one: every request succeeds.
    for _ in 0..10 {
        let r = c.get("/");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.text(), "good");
    }
    assert_eq!(good.requests(), 10);
}

#[test]
fn answers_503_and_closes_past_max_conn() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.max_conn = 2;
    let p = cfg.start();
    let mut c1 = p.client();
    let mut c2 = p.client();
    assert_eq!(c1.get("/").status, 200);
    assert_eq!(c2.get("/").status, 200);
    let mut c3 = p.client();
    let _ = c3.try_send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c3.read_response();
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(c3.is_closed(), "the refused connection stays open");
    // The first two still work.
    assert_eq!(c1.get("/").status, 200);
    assert_eq!(c2.get("/").status, 200);
    assert_eq!(b.requests(), 4);
}

#[test]
fn accepts_again_after_a_connection_under_max_conn_closes() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.max_conn = 1;
    let p = cfg.start();
    let mut c1 = p.client();
    assert_eq!(c1.get("/").status, 200);
    drop(c1);
    // The slot frees once the proxy has seen the close: retry a few times.
    let mut ok = false;
    for _ in 0..100 {
        let mut c = p.client();
        let _ = c.try_send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        if let Ok(r) = c.try_read_response(false) {
            if r.status == 200 {
                ok = true;
                break;
            }
            assert_eq!(r.status, 503);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "the freed slot was never reused");
}

#[test]
fn answers_504_on_upstream_read_timeout() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.upstream_read_timeout = "500ms";
    let mut p = cfg.start();
    let (r, closed) = exchange_raw(&p, b"GET /slow/3000 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(closed);
    assert_still_serves(&mut p);
}

#[test]
fn error_answers_say_connection_close() {
    let (_b, p) = proxy_with_backend();
    let (r, closed) = exchange_raw(&p, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(r.says_close(), "{}", r.head);
    assert!(closed);
}

#[test]
fn does_not_answer_bytes_pipelined_after_a_rejected_request() {
    let (b, p) = proxy_with_backend();
    let mut c = p.client();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 400);
    assert!(
        c.is_closed(),
        "bytes after a rejected request were answered"
    );
    assert_eq!(b.requests(), 0);
}

#[test]
fn survives_random_garbage() {
    let (_b, mut p) = proxy_with_backend();
    // A fixed pseudo-random sequence: reproducible failures.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20 {
        let mut bytes = Vec::new();
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(x as u8);
        }
        let mut c = p.client();
        let _ = c.try_send(&bytes);
        // Whatever the answer, the connection ends within the timeout.
        let _ = c.read_rest();
    }
    assert_still_serves(&mut p);
}

#[test]
fn rejects_transfer_encoding_in_http10() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_empty_host_in_http11() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(&mut p, b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400);
}

#[test]
fn answers_408_to_a_head_trickled_byte_by_byte() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.header_timeout = "500ms";
    let mut p = cfg.start();
    let c = p.client();
    let mut writer = c.stream().try_clone().unwrap();
    // One byte every 50 ms: each read makes progress, the whole head never
    // arrives in time (slowloris). The deadline is for the head, not per byte.
    std::thread::spawn(move || {
        use std::io::Write;
        let head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: {}\r\n\r\n",
            "s".repeat(200)
        );
        for byte in head.as_bytes() {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut c = c;
    let r = c.read_response();
    assert_eq!(r.status, 408, "{}", r.head);
    assert_eq!(b.requests(), 0);
    assert_still_serves(&mut p);
}

/// Two backends that both reset `/reset` requests.
fn two_resetting_backends() -> (Backend, Backend, Proxy) {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = Cfg::new(&[a.addr, b.addr]).start();
    (a, b, p)
}

#[test]
fn retries_idempotent_request_on_another_backend_after_reset() {
    let (a, b, p) = two_resetting_backends();
    let (r, _) = exchange_raw(&p, b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 502);
    // Nothing was answered, GET is idempotent: the second backend got it too.
    assert_eq!((a.requests(), b.requests()), (1, 1));
}

#[test]
fn does_not_resend_post_after_it_reached_a_backend() {
    let (a, b, p) = two_resetting_backends();
    let (r, _) = exchange_raw(
        &p,
        b"POST /reset HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status, 502);
    assert_eq!(a.requests() + b.requests(), 1, "a POST was sent twice");
}

#[test]
fn answers_502_to_a_response_with_differing_content_lengths() {
    let (_b, mut p) = proxy_with_backend();
    let (r, closed) = exchange_raw(&p, b"GET /bad-cl HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(closed);
    assert_still_serves(&mut p);
}

#[test]
fn retries_at_most_the_configured_number_of_times() {
    let bs: Vec<Backend> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|id| Backend::start(id))
        .collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let mut cfg = Cfg::new(&addrs);
    cfg.retries = 2;
    let p = cfg.start();
    let (r, _) = exchange_raw(&p, b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 502);
    let tries: usize = bs.iter().map(Backend::requests).sum();
    assert_eq!(tries, 3, "retries: 2 means one try and two retries");
}

#[test]
fn rejects_headers_over_a_configured_max_header_size() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.max_header_size = 4096;
    let mut p = cfg.start();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    assert_rejected(&mut p, req.as_bytes(), 431);
    // Under the limit: forwarded.
    let mut c = p.client();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(3000)
    );
    c.send(req.as_bytes());
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn answers_504_when_backend_connect_times_out() {
    let good = Backend::start("good");
    let hole = Blackhole::start();
    let mut cfg = Cfg::new(&[good.addr]);
    cfg.extra_upstreams = format!(
        "  dead:\n    backends: [ {{ addr: \"{}\" }} ]\n    connect_timeout: 300ms\n",
        hole.addr
    );
    cfg.extra_routes =
        "  dead: { upstream: dead, match: { path_prefix: \"/dead\" } }\n".to_string();
    let mut p = cfg.start();
    let (r, closed) = exchange_raw(&p, b"GET /dead HTTP/1.1\r\nHost: a\r\n\r\n");
    // LIFECYCLE.md: "retry or 504"; with no other backend to try it is a
    // timeout, as nginx answers it, not a refusal.
    assert_eq!(r.status, 504, "a connect timeout got {}", r.head);
    assert!(closed);
    assert_still_serves(&mut p);
}

#[test]
fn rejects_content_length_too_large_to_represent() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(
        &mut p,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
    );
}

#[test]
fn rejects_repeated_host_in_another_case() {
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(&mut p, b"GET / HTTP/1.1\r\nHost: a\r\nhOsT: a\r\n\r\n", 400);
}

#[test]
fn survives_mutated_responses_from_backends() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.max_fails = 1_000_000; // garbage answers must not take it out of rotation here
    let mut p = cfg.start();
    for seed in 1..=500 {
        let mut c = p.client();
        c.set_timeout(Duration::from_secs(3));
        c.send(format!("GET /random/{seed} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        // Our FIN: after any answer (or none) the proxy closes; the backend
        // closes after its bytes.
        let _ = c.stream().shutdown(std::net::Shutdown::Write);
        let rest = c.read_rest();
        assert!(
            rest.is_ok(),
            "seed {seed}: the connection neither closed nor finished"
        );
    }
    assert_still_serves(&mut p);
}

#[test]
fn survives_mutated_requests() {
    let (_b, mut p) = proxy_with_backend();
    let templates: [&[u8]; 4] = [
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhi",
    ];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..1000 {
        let mut bytes = templates[(next() % 4) as usize].to_vec();
        for _ in 0..1 + next() % 3 {
            let i = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[i] = next() as u8,
                1 => bytes.insert(i, b"\r\n:; \t0fF-\0,"[(next() % 12) as usize]),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        let mut c = p.client();
        c.set_timeout(Duration::from_secs(3));
        let _ = c.try_send(&bytes);
        // Our FIN ends anything the mutation left incomplete.
        let _ = c.stream().shutdown(std::net::Shutdown::Write);
        let rest = c.read_rest();
        assert!(
            rest.is_ok(),
            "{:?}: the connection neither closed nor finished",
            String::from_utf8_lossy(&bytes)
        );
    }
    assert_still_serves(&mut p);
}

#[test]
fn does_not_resend_idempotent_request_whose_body_went_upstream() {
    let (a, b, p) = two_resetting_backends();
    let (r, _) = exchange_raw(
        &p,
        b"PUT /reset HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status, 502);
    assert_eq!(
        a.requests() + b.requests(),
        1,
        "a PUT whose body was streamed was sent twice"
    );
}

#[test]
fn max_conn_is_shared_by_event_loops() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.max_conn = 4;
    let yaml = cfg.yaml().replace("workers: 1", "workers: 2");
    let p = Proxy::start(&yaml);
    let mut held: Vec<Client> = Vec::new();
    for _ in 0..4 {
        let mut c = p.client();
        assert_eq!(c.get("/").status, 200);
        held.push(c);
    }
    // Whichever loop the kernel hands them to, the fifth and sixth are refused.
    for _ in 0..2 {
        let mut c = p.client();
        let _ = c.try_send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response().status, 503);
        assert!(c.is_closed());
    }
}

#[test]
fn rejects_invalid_host_value() {
    // RFC 9112 §3.2: a Host field with an invalid value gets 400.
    let (b, mut p) = proxy_with_backend();
    for host in ["a b", "a/b", "user@a", "a:port", "[::1", "a,b"] {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_rejected(&mut p, req.as_bytes(), 400);
    }
    assert!(
        b.received()
            .iter()
            .all(|r| r.header("host") == Some("test")),
        "an invalid Host reached the backend"
    );
}

#[test]
fn rejects_invalid_request_target_forms() {
    // RFC 9112 §3.2: origin-form starts with "/", asterisk-form is for
    // OPTIONS only; anything else is an invalid request-line (400).
    let (_b, mut p) = proxy_with_backend();
    assert_rejected(&mut p, b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(&mut p, b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

#[test]
fn forwards_options_asterisk() {
    let (b, p) = proxy_with_backend();
    let mut c = p.client();
    c.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    assert_eq!(b.last().target, "*");
}

#[test]
fn heads_that_stall_together_all_get_408_across_poll_turns() {
    // 200 heads expiring in the same tick: the loop acts on 16 deadlines
    // per turn (EXPIRE_BATCH), so this spans many turns; every one of them
    // must still get its 408, and a normal request is served meanwhile.
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.header_timeout = "500ms";
    let mut p = cfg.start();
    let mut stalled: Vec<Client> = (0..200).map(|_| p.client()).collect();
    for c in &mut stalled {
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n");
    }
    for c in &mut stalled {
        assert_eq!(c.read_response().status, 408);
    }
    assert_eq!(b.requests(), 0);
    assert_still_serves(&mut p);
}

/// A client's bytes start in a 4 KiB buffer: a head that outgrows it, sent
/// in pieces, and the body and pipelined request behind it, arrive whole.
#[test]
fn a_head_larger_than_the_first_buffer_arrives_whole() {
    let (b, p) = proxy_with_backend();
    let big = "v".repeat(10_000);
    let head =
        format!("POST /big HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nContent-Length: 6\r\n\r\n");
    let mut c = Client::connect(p.addr);
    let bytes = head.as_bytes();
    for piece in [&bytes[..3000], &bytes[3000..4096], &bytes[4096..]] {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(30));
    }
    c.send(b"body!\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.read_response().status, 200);
    let got = b.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].header("x-big"), Some(big.as_str()));
    assert_eq!(got[0].body, b"body!\n");
    assert_eq!(got[1].target, "/after");
}
