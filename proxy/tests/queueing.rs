//! `upstreams.NAME.max_conns`: at most that many connections per backend
//! (per event loop); requests beyond wait in a FIFO queue, are served as
//! connections come back, and get 503 after `queue_timeout`.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

fn upstream_counter(p: &Proxy, name: &str) -> u64 {
    p.admin().get_json("/api/v1/stats/server")["upstream"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats.upstream.{name}"))
}

/// Starts a request that the backend holds until `release()`, and waits
/// until the backend has it (so the one connection slot is taken).
fn hold_one(p: &Proxy, b: &Backend) -> Client {
    let mut holder = p.client();
    holder.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the backend holds a request", || b.active() == 1);
    holder
}

/// A backend behind a proxy with `max_conns: 1`, and a client whose
/// request the backend holds, so that the one connection slot is taken.
fn one_slot_taken(queue_timeout: &'static str) -> (Backend, Proxy, Client) {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.max_conns = 1;
    cfg.queue_timeout = queue_timeout;
    let p = cfg.start();
    let holder = hold_one(&p, &b);
    (b, p, holder)
}

#[test]
fn many_clients_share_a_capped_number_of_backend_connections() {
    const CLIENTS: usize = 12;
    const EACH: usize = 5;
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.max_conns = 2;
    let p = cfg.start();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut c = p.client();
            thread::spawn(move || {
                for i in 0..EACH {
                    let r = c.get("/slow/20");
                    assert_eq!(r.status, 200, "request {i}: {}", r.head);
                    assert_eq!(r.body, b"a");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(b.requests(), CLIENTS * EACH);
    assert!(
        b.connections() <= 2,
        "{} backend connections",
        b.connections()
    );
    assert!(
        upstream_counter(&p, "queued") > 0,
        "nobody waited: the cap was not reached"
    );
    assert_eq!(upstream_counter(&p, "queue_timeouts"), 0);
}

#[test]
fn a_request_that_waits_past_queue_timeout_gets_503_and_the_queue_keeps_working() {
    let (b, p, mut holder) = one_slot_taken("300ms");

    let mut waiter = p.client();
    let started = Instant::now();
    let r = waiter.get("/");
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(r.says_close(), "{}", r.head);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "answered before the queue timeout"
    );
    assert_eq!(
        b.requests(),
        1,
        "the timed-out request must not reach the backend"
    );

    b.release();
    assert_eq!(holder.read_response().status, 200);
    assert_eq!(p.client().get("/").status, 200);
    assert_eq!(upstream_counter(&p, "queue_timeouts"), 1);
    let errors = &p.admin().get_json("/api/v1/stats/server")["errors"];
    assert_eq!(errors["service_unavailable"]["count"], 1);
}

#[test]
fn queued_requests_are_served_in_arrival_order() {
    let (b, p, mut holder) = one_slot_taken("10s");
    let mut waiters: Vec<Client> = Vec::new();
    for i in 0..5 {
        let mut c = p.client();
        c.send(format!("GET /echo HTTP/1.1\r\nHost: t\r\nX-Order: {i}\r\n\r\n").as_bytes());
        wait_until("the request is queued", || {
            upstream_counter(&p, "queued") == i + 1
        });
        waiters.push(c);
    }
    b.release();
    assert_eq!(holder.read_response().status, 200);
    for c in waiters.iter_mut() {
        assert_eq!(c.read_response().status, 200);
    }
    let order: Vec<String> = b
        .received()
        .iter()
        .filter_map(|r| r.header("X-Order").map(str::to_string))
        .collect();
    assert_eq!(order, ["0", "1", "2", "3", "4"]);
    assert_eq!(b.connections(), 1);
}

#[test]
fn clients_that_reset_while_queued_do_not_hold_up_the_queue() {
    let (b, p, mut holder) = one_slot_taken("10s");
    for i in 0..5 {
        let mut c = p.client();
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        wait_until("the request is queued", || {
            upstream_counter(&p, "queued") == i + 1
        });
        c.reset(); // RST: the proxy drops it, its queue entry goes stale
    }
    wait_until("the reset clients are gone", || {
        p.admin().get_json("/api/v1/stats/server")["connections"]["current"] == 1
    });
    b.release();
    assert_eq!(holder.read_response().status, 200);
    let started = Instant::now();
    assert_eq!(p.client().get("/").status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stale entries held the queue"
    );
    assert_eq!(
        b.requests(),
        2,
        "requests of clients that left reached the backend"
    );
}

#[test]
fn a_client_that_half_closes_while_queued_still_gets_its_answer() {
    let (b, p, mut holder) = one_slot_taken("2s");
    let mut c = p.client();
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the request is queued", || {
        upstream_counter(&p, "queued") == 1
    });
    c.stream()
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    thread::sleep(Duration::from_millis(100));
    b.release();
    assert_eq!(holder.read_response().status, 200);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"a");
}

#[test]
fn raising_max_conns_through_the_admin_api_serves_waiting_requests() {
    let (b, p, mut holder) = one_slot_taken("20s");
    let mut waiter = p.client();
    waiter.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the request is queued", || {
        upstream_counter(&p, "queued") == 1
    });

    let reply = p.admin().put(
        "/api/v1/config",
        r#"{"upstreams":{"default":{"max_conns":4}}}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let r = waiter.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        b.requests(),
        2,
        "served while the first request is still held"
    );
    b.release();
    assert_eq!(holder.read_response().status, 200);
}

#[test]
fn a_full_backend_is_passed_over_for_one_with_room() {
    let a = Backend::start("a");
    let z = Backend::start("z");
    let mut cfg = Cfg::new(&[a.addr, z.addr]);
    cfg.max_conns = 1;
    let p = cfg.start();
    // Round robin sends the first request to a, where it is held...
    let mut holder = p.client();
    holder.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("a backend holds a request", || a.active() + z.active() == 1);
    let held_on_a = a.active() == 1;
    // ...and every following one goes to the other backend, with no wait.
    for _ in 0..6 {
        let r = p.client().get("/");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body, if held_on_a { b"z" } else { b"a" });
    }
    assert_eq!(upstream_counter(&p, "queued"), 0);
    a.release();
    z.release();
    assert_eq!(holder.read_response().status, 200);
}

#[test]
fn max_conns_is_refused_with_the_field_named_when_out_of_range() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    let reply = p.admin().put(
        "/api/v1/config",
        r#"{"upstreams":{"default":{"max_conns":5000000}}}"#,
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("upstreams.default.max_conns"),
        "{}",
        reply.body
    );
    assert_still_serves(&mut p);
}

#[test]
fn past_sixteen_full_backends_any_backend_with_room_is_used() {
    // ip_hash sends one client's requests to one backend; with max_conns 1
    // each held request fills it, so later ones pass over more and more full
    // backends (more than the 16 looked at one by one).
    const N: usize = 18;
    let backends: Vec<Backend> = (0..N).map(|i| Backend::start(&format!("b{i}"))).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let mut cfg = Cfg::new(&addrs).balancer("ip_hash");
    cfg.max_conns = 1;
    let p = cfg.start();
    let mut holders = Vec::new();
    for i in 0..N {
        let mut c = p.client();
        c.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
        wait_until("the request is held", || {
            backends.iter().map(Backend::active).sum::<usize>() == i + 1
        });
        holders.push(c);
    }
    assert!(
        backends.iter().all(|b| b.active() == 1),
        "one held request per backend"
    );
    assert_eq!(upstream_counter(&p, "queued"), 0);
    for b in &backends {
        b.release();
    }
    for c in holders.iter_mut() {
        assert_eq!(c.read_response().status, 200);
    }
}
