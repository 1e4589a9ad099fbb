//! Keep-alive on both sides: client connections carry many requests, and
//! upstream connections are pooled and reused instead of reopened.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn sequential_requests_on_one_client_connection_reuse_one_upstream_connection() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    for i in 0..10_000 {
        let r = c.get("/");
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
        assert_eq!(r.body, b"a");
        assert!(!r.says_close(), "request {i}: {}", r.head);
    }
    assert_eq!(b.requests(), 10_000);
    assert_eq!(b.connections(), 1);
}

/// `clients` keep-alive clients at once, each sending `per_client` GETs
/// that must all get 200.
fn keep_alive_clients(addr: std::net::SocketAddr, clients: usize, per_client: usize) {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..per_client {
                    assert_eq!(c.get("/").status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn concurrent_clients_use_at_most_one_upstream_connection_each() {
    const K: usize = 4;
    const PER_CLIENT: usize = 2_500;
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.keepalive = 8; // K ≤ keepalive
    let p = cfg.start();
    let addr = p.addr;
    keep_alive_clients(addr, K, PER_CLIENT);
    assert_eq!(b.requests(), K * PER_CLIENT);
    assert!(
        b.connections() <= K,
        "{} upstream connections for {K} clients",
        b.connections()
    );
}

#[test]
fn new_client_connections_reuse_pooled_upstream_connection() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    for _ in 0..50 {
        let mut c = p.client();
        assert_eq!(c.get("/").status, 200);
    }
    assert_eq!(b.requests(), 50);
    assert_eq!(b.connections(), 1);
}

#[test]
fn upstream_connection_closed_by_backend_is_not_reused() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    // The backend closes after an HTTP/1.0-style answer to Connection: close;
    // the proxy must open a new upstream connection for the next request.
    c.send(b"GET /until-close/10 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 10);
    // Read-until-close bodies end with the client connection too.
    assert!(c.is_closed());
    let mut c = p.client();
    for _ in 0..3 {
        assert_eq!(c.get("/").status, 200);
    }
    assert_eq!(b.connections(), 2);
}

#[test]
fn backend_closing_an_idle_pooled_connection_is_not_an_error() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    // A keep-alive answer, after which the backend closes the idle connection.
    let r = c.get("/then-close");
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let r = c.get("/");
        assert_eq!(r.status, 200, "{}", r.head);
    }
    assert_eq!(b.connections(), 2);
}

#[test]
fn pooled_connection_closed_by_backend_at_the_same_moment_is_retried() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    // The backend closes right after answering: the next request races the
    // FIN and may be written to the dead pooled connection; the proxy must
    // retry it on a fresh one (GET, nothing answered yet).
    for i in 0..50 {
        let r = c.get("/close-after/0");
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
    }
}

#[test]
fn client_keep_alive_connection_stays_open_between_requests() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    assert_eq!(c.get("/").status, 200);
    assert!(c.stays_open(Duration::from_millis(300)));
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn connection_close_from_client_closes_after_response() {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.says_close(), "{}", r.head);
    assert!(c.is_closed());
}

#[test]
fn idle_client_connection_closes_after_idle_timeout() {
    let b = Backend::start("a");
    let yaml = Cfg::new(&[b.addr])
        .yaml()
        .replace("idle_timeout: 30s", "idle_timeout: 300ms");
    let p = Proxy::start(&yaml);
    let mut c = p.client();
    assert_eq!(c.get("/").status, 200);
    let rest = c
        .read_rest()
        .expect("closed by the proxy within the client timeout");
    assert!(rest.is_empty());
}

#[test]
fn closes_idle_upstream_connection_after_keepalive_timeout() {
    let b = Backend::start("a");
    let yaml = Cfg::new(&[b.addr])
        .yaml()
        .replace("keepalive_timeout: 30s", "keepalive_timeout: 300ms");
    let p = Proxy::start(&yaml);
    let mut c = p.client();
    assert_eq!(c.get("/").status, 200);
    wait_until("the pooled connection to be closed", || b.closed() == 1);
    // The client connection is unaffected and a new upstream one is opened.
    assert_eq!(c.get("/").status, 200);
    assert_eq!(b.connections(), 2);
}

#[test]
fn pool_keeps_at_most_keepalive_idle_connections() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.keepalive = 2;
    let p = cfg.start();
    // Six requests in flight at once need six upstream connections.
    let mut clients: Vec<Client> = (0..6).map(|_| p.client()).collect();
    for c in &mut clients {
        c.send(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    wait_until("six held requests", || b.active() == 6);
    b.release();
    for c in &mut clients {
        assert_eq!(c.read_response().status, 200);
    }
    // Only two go back to the pool; the other four are closed.
    wait_until("four upstream connections closed", || b.closed() >= 4);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.closed(), 4);
    assert_eq!(b.connections(), 6);
    // The pooled two serve the next requests.
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    assert_eq!(b.connections(), 6);
}

#[test]
fn keepalive_zero_opens_a_connection_per_request() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.keepalive = 0;
    let p = cfg.start();
    let mut c = p.client();
    for _ in 0..5 {
        assert_eq!(c.get("/").status, 200);
    }
    assert_eq!(b.connections(), 5);
}

#[test]
fn serves_many_concurrent_clients_on_two_event_loops() {
    let b = Backend::start("a");
    let yaml = Cfg::new(&[b.addr])
        .yaml()
        .replace("workers: 1", "workers: 2");
    let p = Proxy::start(&yaml);
    let addr = p.addr;
    let threads: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..20 {
                    let r = c.get("/echo");
                    assert_eq!(r.status, 200);
                    assert!(r.text().starts_with("a\nGET /echo "));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(b.requests(), 1000);
    assert!(
        b.connections() <= 50,
        "{} upstream connections",
        b.connections()
    );
}

#[test]
fn idle_keep_alive_connection_outlives_header_timeout() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.header_timeout = "300ms";
    let p = cfg.start();
    let mut c = p.client();
    assert_eq!(c.get("/").status, 200);
    // Idle between requests: idle_timeout (30 s) applies, not header_timeout.
    assert!(c.stays_open(Duration::from_millis(800)));
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn partial_head_after_idle_gets_408() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.header_timeout = "300ms";
    let p = cfg.start();
    let mut c = p.client();
    assert_eq!(c.get("/").status, 200);
    c.send(b"GET / HTTP/1.1\r\nHo");
    let r = c.read_response();
    assert_eq!(r.status, 408);
    assert!(c.is_closed());
}

#[test]
fn refused_connections_do_not_use_up_slots() {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.max_conn = 1;
    let p = cfg.start();
    let mut c1 = p.client();
    assert_eq!(c1.get("/").status, 200);
    for _ in 0..5 {
        let mut c = p.client();
        let _ = c.try_send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response().status, 503);
        assert!(c.is_closed());
    }
    drop(c1);
    let mut ok = false;
    for _ in 0..100 {
        let mut c = p.client();
        let _ = c.try_send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        if c.try_read_response(false).is_ok_and(|r| r.status == 200) {
            ok = true;
            // And the slot is held by this one again.
            let mut other = p.client();
            let _ = other.try_send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(other.read_response().status, 503);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "the slot never came back after 5 refusals");
}

/// After `/extra/MS` the backend's connection holds a stray response; no
/// later request may receive it.
fn stray_bytes_after_a_response_are_never_delivered(ms: u64) {
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    let r = c.get(&format!("/extra/{ms}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "a");
    // Bytes that come later than this (a backend answering nothing, after
    // a new request went out) cannot be told from an answer by any proxy:
    // the test waits until the proxy has dropped the connection.
    wait_until("the proxy to drop the connection with stray bytes", || {
        b.closed() >= 1
    });
    for _ in 0..3 {
        let mut fresh = p.client();
        let r = fresh.get("/");
        assert_eq!(r.text(), "a", "a stray response was delivered: {}", r.head);
        let r = c.get("/");
        assert_eq!(r.text(), "a", "a stray response was delivered: {}", r.head);
    }
    assert_eq!(
        b.connections(),
        2,
        "the connection with stray bytes was reused"
    );
}

#[test]
fn stray_bytes_in_the_same_segment_as_a_response_are_not_delivered() {
    stray_bytes_after_a_response_are_never_delivered(0);
}

#[test]
fn stray_bytes_arriving_on_an_idle_pooled_connection_are_not_delivered() {
    stray_bytes_after_a_response_are_never_delivered(50);
}

#[test]
fn idle_keep_alive_connections_hold_little_memory() {
    // 900 keeps the test under a 1024-descriptor soft limit (CI).
    const N: usize = 900;
    let b = Backend::start("a");
    let p = Cfg::new(&[b.addr]).start();
    let mut warm = p.client();
    for _ in 0..10 {
        assert_eq!(warm.get("/").status, 200);
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = p.rss();
    let mut idle = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = p.client();
        assert_eq!(c.get("/").status, 200);
        idle.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = p.rss();
    let per_conn = after.saturating_sub(before) / N as u64;
    eprintln!("idle keep-alive: {before} -> {after} bytes RSS, {per_conn} B per connection");
    // The budget is 256 B at 15,000 connections; at 900 the slab's and the
    // allocator's step sizes weigh more, so allow 1 KiB here.
    assert!(
        per_conn < 1024,
        "{per_conn} bytes of RSS per idle connection"
    );
    // They are all still usable.
    for c in idle.iter_mut().step_by(100) {
        assert_eq!(c.get("/").status, 200);
    }
}

#[test]
fn the_default_pool_follows_demand_instead_of_reconnecting() {
    const CLIENTS: usize = 300;
    const PER_CLIENT: usize = 20;
    let b = Backend::start("a");
    // The default `keepalive` (auto): no cap to churn against.
    let yaml: String = Cfg::new(&[b.addr])
        .yaml()
        .lines()
        .filter(|l| !l.starts_with("    keepalive:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let p = Proxy::start(&yaml);
    let addr = p.addr;
    keep_alive_clients(addr, CLIENTS, PER_CLIENT);
    assert_eq!(b.requests(), CLIENTS * PER_CLIENT);
    // At most one backend connection per request in flight, and nothing
    // closed that a later request then had to reopen.
    assert!(
        b.connections() <= CLIENTS,
        "{} backend connections for {CLIENTS} clients and {} requests",
        b.connections(),
        CLIENTS * PER_CLIENT
    );
    assert_eq!(b.closed(), 0, "pooled connections were closed under load");
}

#[test]
fn heads_trickling_past_a_second_are_still_served_whole() {
    // A head arriving over more than a second is served from the loop's
    // slow-head queue (event_loop::SLOW_HEAD), 64 per turn: 150 of them,
    // finished together, must each reach the backend once, parsed whole.
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.header_timeout = "5s";
    let p = cfg.start();
    let mut slow: Vec<Client> = (0..150).map(|_| p.client()).collect();
    for (i, c) in slow.iter_mut().enumerate() {
        c.send(format!("GET /slow/{i} HTTP/1.1\r\n").as_bytes());
    }
    std::thread::sleep(Duration::from_millis(700));
    for c in slow.iter_mut() {
        c.send(b"Host: a\r\nX-Trickle: 1\r\n");
    }
    std::thread::sleep(Duration::from_millis(700));
    // A well-behaved client meanwhile is not held up by them.
    assert_eq!(p.client().get("/fast").status, 200);
    for c in slow.iter_mut() {
        c.send(b"\r\n");
    }
    for c in slow.iter_mut() {
        let r = c.read_response();
        assert_eq!(r.status, 200);
    }
    let mut paths: Vec<String> = b
        .received()
        .iter()
        .filter(|r| r.target.starts_with("/slow/"))
        .map(|r| {
            assert_eq!(r.header("x-trickle"), Some("1"));
            r.target.clone()
        })
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 150);
}
