//! Each load balancer's distribution, observed through real backends that
//! answer with their id.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

fn counts(seq: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in seq {
        *m.entry(id.clone()).or_default() += 1;
    }
    m
}

#[test]
fn round_robin_spreads_evenly() {
    let bs: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|id| Backend::start(id))
        .collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let p = Cfg::new(&addrs).balancer("round_robin").start();
    let seq = p.answer_ids(30);
    let m = counts(&seq);
    for id in ["a", "b", "c"] {
        assert_eq!(m.get(id), Some(&10), "{seq:?}");
    }
    // And in turn: no backend twice in a row.
    assert!(seq.windows(2).all(|w| w[0] != w[1]), "{seq:?}");
}

#[test]
fn round_robin_spreads_requests_from_separate_connections() {
    let bs: Vec<Backend> = ["a", "b"].iter().map(|id| Backend::start(id)).collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let p = Cfg::new(&addrs).balancer("round_robin").start();
    let seq: Vec<String> = (0..10).map(|_| p.client().get("/").text()).collect();
    let m = counts(&seq);
    assert_eq!(m.get("a"), Some(&5), "{seq:?}");
    assert_eq!(m.get("b"), Some(&5), "{seq:?}");
}

#[test]
fn weight_5_1_1_gives_smooth_sequence() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let p = Cfg::weighted(&[(a.addr, 5), (b.addr, 1), (c.addr, 1)])
        .balancer("weight")
        .start();
    let seq = p.answer_ids(14);
    let want: Vec<&str> = "a a b a c a a a a b a c a a".split(' ').collect();
    assert_eq!(seq, want);
}

#[test]
fn least_conn_avoids_backend_holding_requests() {
    let slow = Backend::start("slow");
    let fast = Backend::start("fast");
    fast.release(); // /hold answers at once on the fast one
    let p = Cfg::new(&[slow.addr, fast.addr])
        .balancer("least_conn")
        .start();
    // Send /hold until one request is parked on the slow backend.
    let mut holder = None;
    for _ in 0..10 {
        let mut c = p.client();
        let fast_before = fast.requests();
        c.send(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n");
        wait_until("the request to reach a backend", || {
            slow.active() == 1 || fast.requests() > fast_before
        });
        if slow.active() == 1 {
            holder = Some(c);
            break;
        }
        assert_eq!(c.read_response().text(), "fast");
    }
    let mut holder = holder.expect("least_conn never picked the slow backend");
    let slow_before = slow.requests();
    // One request in flight on slow, none on fast: every new one goes to fast.
    let mut c = p.client();
    for _ in 0..20 {
        assert_eq!(c.get("/").text(), "fast");
    }
    assert_eq!(slow.requests(), slow_before);
    slow.release();
    assert_eq!(holder.read_response().text(), "slow");
}

#[test]
fn least_conn_uses_every_backend_when_idle() {
    let bs: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|id| Backend::start(id))
        .collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let p = Cfg::new(&addrs).balancer("least_conn").start();
    let m = counts(&p.answer_ids(30));
    for id in ["a", "b", "c"] {
        assert!(m.get(id).copied().unwrap_or(0) > 0, "{m:?}");
    }
}

/// Source addresses 127.0.0.2 ..= 127.0.0.50.
fn sources() -> Vec<IpAddr> {
    (2..=50)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// The backend each source address lands on (asserting it is stable over
/// three connections).
fn ip_map(p: &Proxy) -> Vec<String> {
    sources()
        .into_iter()
        .map(|src| {
            let ids: Vec<String> = (0..3)
                .map(|_| {
                    let mut c = Client::connect_from(p.addr, src);
                    let r = c.get("/");
                    assert_eq!(r.status, 200);
                    r.text()
                })
                .collect();
            assert!(ids.iter().all(|i| *i == ids[0]), "{src} moved: {ids:?}");
            ids[0].clone()
        })
        .collect()
}

#[test]
fn ip_hash_keeps_each_client_on_one_backend_and_spreads_clients() {
    let bs: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|id| Backend::start(id))
        .collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let p = Cfg::new(&addrs).balancer("ip_hash").start();
    let map = ip_map(&p);
    let m = counts(&map);
    // 49 clients over 3 backends: each gets some (about 16).
    for id in ["a", "b", "c"] {
        assert!(m.get(id).copied().unwrap_or(0) >= 5, "{m:?}");
    }
}

#[test]
fn ip_hash_same_client_same_backend_across_requests_on_one_connection() {
    let bs: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|id| Backend::start(id))
        .collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let p = Cfg::new(&addrs).balancer("ip_hash").start();
    let seq = p.answer_ids(20);
    assert!(seq.iter().all(|i| *i == seq[0]), "{seq:?}");
}

#[test]
fn ip_hash_removing_a_backend_moves_only_its_clients() {
    let bs: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|id| Backend::start(id))
        .collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let before = {
        let p = Cfg::new(&addrs).balancer("ip_hash").start();
        ip_map(&p)
    };
    let after = {
        let p = Cfg::new(&addrs[..2]).balancer("ip_hash").start();
        ip_map(&p)
    };
    let mut moved = Vec::new();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b != "c" && b != a {
            moved.push(format!("127.0.0.{}: {b} -> {a}", i + 2));
        }
    }
    assert!(
        moved.is_empty(),
        "clients of the remaining backends moved: {moved:?}"
    );
    assert!(after.iter().all(|a| a != "c"));
}

#[test]
fn p2c_prefers_fast_backend() {
    let fast = Backend::start("fast");
    let slow = Backend::start_with_delay("slow", Duration::from_millis(40));
    let p = Cfg::new(&[fast.addr, slow.addr]).balancer("p2c").start();
    let seq = p.answer_ids(60);
    let m = counts(&seq);
    let (f, s) = (
        m.get("fast").copied().unwrap_or(0),
        m.get("slow").copied().unwrap_or(0),
    );
    assert!(f >= 4 * s.max(1), "fast {f}, slow {s}: {seq:?}");
}

#[test]
fn every_balancer_skips_a_backend_that_is_down() {
    for lb in ["round_robin", "weight", "least_conn", "ip_hash", "p2c"] {
        let good = Backend::start("good");
        let dead = closed_port();
        // The dead one is heavier and listed first: it would be picked often.
        let mut cfg = Cfg::weighted(&[(dead, 5), (good.addr, 1)]).balancer(lb);
        cfg.max_fails = 1;
        cfg.fail_timeout = "30s";
        let p = cfg.start();
        let mut c = p.client();
        for i in 0..10 {
            let r = c.get("/");
            assert_eq!(r.status, 200, "{lb}, request {i}: {}", r.head);
            assert_eq!(r.text(), "good", "{lb}");
        }
    }
}

#[test]
fn backend_returns_to_rotation_after_fail_timeout() {
    let good = Backend::start("good");
    let down = closed_port();
    let mut cfg = Cfg::new(&[good.addr, down]);
    cfg.max_fails = 1;
    cfg.fail_timeout = "300ms";
    let p = cfg.start();
    let mut c = p.client();
    for _ in 0..4 {
        assert_eq!(c.get("/").text(), "good");
    }
    // It comes back up; after fail_timeout it gets its share again.
    let back = Backend::start_on("back", down);
    std::thread::sleep(Duration::from_millis(400));
    let seq = p.answer_ids(10);
    assert!(seq.iter().any(|id| id == "back"), "{seq:?}");
    assert!(back.requests() > 0);
}

#[test]
fn ip_hash_maps_a_client_the_same_way_on_every_event_loop() {
    let bs: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|id| Backend::start(id))
        .collect();
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let yaml = Cfg::new(&addrs)
        .balancer("ip_hash")
        .yaml()
        .replace("workers: 1", "workers: 2");
    let p = Proxy::start(&yaml);
    // Connections from one address land on either loop (SO_REUSEPORT hashes
    // the source port); they must all reach the same backend.
    for src in [2u8, 3, 4, 5] {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, src));
        let ids: Vec<String> = (0..12)
            .map(|_| Client::connect_from(p.addr, ip).get("/").text())
            .collect();
        assert!(ids.iter().all(|i| *i == ids[0]), "127.0.0.{src}: {ids:?}");
    }
}
