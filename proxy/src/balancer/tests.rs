//! Distribution tests for every balancer, on backend state built in memory
//! (a pick needs no network).

use super::*;
use crate::config::{BackendConfig, UpstreamConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

fn upstream(weights: &[u32]) -> UpstreamState {
    upstream_at(&(0..weights.len() as u16).collect::<Vec<_>>(), weights)
}

/// Backends on ports 9000 + `ports[i]`, so tests can drop one and keep the
/// others' identities.
fn upstream_at(ports: &[u16], weights: &[u32]) -> UpstreamState {
    let cfg = UpstreamConfig {
        backends: ports
            .iter()
            .zip(weights)
            .map(|(&p, &weight)| BackendConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + p)),
                weight,
                tls: None,
            })
            .collect(),
        keepalive: None,
        keepalive_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
        max_fails: 1,
        fail_timeout: Duration::from_secs(10),
        retries: 2,
        max_conns: 0,
        adaptive_conns: false,
        queue_timeout: Duration::from_secs(5),
        health_check: None,
    };
    UpstreamState::from_config(&cfg)
}

fn ctx(now: Instant) -> PickContext<'static> {
    PickContext {
        client_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        exclude: &[],
        now,
    }
}

fn counts(b: &mut dyn Balancer, u: &UpstreamState, picks: usize) -> Vec<usize> {
    let now = Instant::now();
    let mut c = vec![0; u.backends.len()];
    for _ in 0..picks {
        c[b.pick(u, &ctx(now)).unwrap()] += 1;
    }
    c
}

const ALL: [Algorithm; 5] = [
    Algorithm::RoundRobin,
    Algorithm::Weight,
    Algorithm::LeastConn,
    Algorithm::IpHash,
    Algorithm::P2c,
];

#[test]
fn round_robin_takes_turns() {
    let u = upstream(&[5, 1, 1]);
    let mut b = new_balancer(Algorithm::RoundRobin, &u);
    let now = Instant::now();
    let seq: Vec<usize> = (0..6).map(|_| b.pick(&u, &ctx(now)).unwrap()).collect();
    assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn smooth_weighted_gives_the_exact_nginx_sequence() {
    let u = upstream(&[5, 1, 1]);
    let mut b = new_balancer(Algorithm::Weight, &u);
    let now = Instant::now();
    let seq: String = (0..21)
        .map(|_| (b'a' + b.pick(&u, &ctx(now)).unwrap() as u8) as char)
        .collect();
    assert_eq!(seq, "aabacaa".repeat(3));
}

#[test]
fn smooth_weighted_follows_weights() {
    let u = upstream(&[3, 2, 1]);
    let mut b = new_balancer(Algorithm::Weight, &u);
    assert_eq!(counts(b.as_mut(), &u, 6000), [3000, 2000, 1000]);
}

#[test]
fn smooth_weighted_redistributes_around_a_down_backend() {
    let mut u = upstream(&[5, 1, 1]);
    let now = Instant::now();
    u.record_failure(0, now);
    let mut b = new_balancer(Algorithm::Weight, &u);
    assert_eq!(counts(b.as_mut(), &u, 100), [0, 50, 50]);
}

#[test]
fn least_conn_follows_active_requests() {
    let mut u = upstream(&[1, 1, 1]);
    let mut b = new_balancer(Algorithm::LeastConn, &u);
    let now = Instant::now();
    u.backends[0].active = 3;
    u.backends[1].active = 1;
    u.backends[2].active = 2;
    assert_eq!(b.pick(&u, &ctx(now)), Some(1));
    // As requests start on the pick, the load evens out.
    let mut seq = Vec::new();
    for _ in 0..6 {
        let i = b.pick(&u, &ctx(now)).unwrap();
        u.request_started(i);
        seq.push(i);
    }
    assert_eq!(
        u.backends.iter().map(|b| b.active).collect::<Vec<_>>(),
        [4, 4, 4]
    );
    assert_eq!(seq[0], 1);
}

#[test]
fn least_conn_breaks_ties_round_robin() {
    let u = upstream(&[1, 1, 1]);
    let mut b = new_balancer(Algorithm::LeastConn, &u);
    let now = Instant::now();
    let seq: Vec<usize> = (0..6).map(|_| b.pick(&u, &ctx(now)).unwrap()).collect();
    assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn least_conn_counts_per_unit_of_weight() {
    let mut u = upstream(&[4, 1]);
    let mut b = new_balancer(Algorithm::LeastConn, &u);
    let now = Instant::now();
    u.backends[0].active = 3; // 0.75 per weight
    u.backends[1].active = 1; // 1.0 per weight
    assert_eq!(b.pick(&u, &ctx(now)), Some(0));
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919))
}

fn hash_picks(u: &UpstreamState, clients: u32) -> Vec<SocketAddr> {
    let mut b = new_balancer(Algorithm::IpHash, u);
    let now = Instant::now();
    (0..clients)
        .map(|i| {
            let c = PickContext {
                client_ip: ip(i),
                exclude: &[],
                now,
            };
            u.backends[b.pick(u, &c).unwrap()].addr
        })
        .collect()
}

#[test]
fn ip_hash_is_stable_per_client() {
    let u = upstream(&[1, 1, 1, 1]);
    assert_eq!(hash_picks(&u, 1000), hash_picks(&u, 1000));
    // Listing the backends in another order moves nobody.
    let shuffled = upstream_at(&[2, 0, 3, 1], &[1, 1, 1, 1]);
    assert_eq!(hash_picks(&u, 1000), hash_picks(&shuffled, 1000));
}

#[test]
fn ip_hash_spreads_by_weight() {
    let u = upstream(&[1, 1, 2]);
    let picks = hash_picks(&u, 10_000);
    let share = |k: usize| picks.iter().filter(|a| **a == u.backends[k].addr).count();
    let (a, b, c) = (share(0), share(1), share(2));
    // Expected 2500 / 2500 / 5000; ±10 % absorbs hashing noise.
    assert!((2250..2750).contains(&a), "{a} {b} {c}");
    assert!((2250..2750).contains(&b), "{a} {b} {c}");
    assert!((4500..5500).contains(&c), "{a} {b} {c}");
}

#[test]
fn ip_hash_removing_one_of_n_remaps_about_one_nth() {
    let n = 5;
    let before = upstream(&[1; 5]);
    let after = upstream_at(&[0, 1, 3, 4], &[1; 4]); // backend 2 removed
    let removed = before.backends[2].addr;
    let (p0, p1) = (hash_picks(&before, 10_000), hash_picks(&after, 10_000));
    let mut moved = 0;
    for (a, b) in p0.iter().zip(&p1) {
        if a != b {
            assert_eq!(*a, removed, "a client of a kept backend moved");
            moved += 1;
        }
    }
    let on_removed = p0.iter().filter(|a| **a == removed).count();
    assert_eq!(
        moved, on_removed,
        "every client of the removed backend moved"
    );
    let fraction = moved as f64 / 10_000.0;
    println!(
        "ip_hash: removing 1 of {n} backends remapped {moved} of 10000 clients ({fraction:.3})"
    );
    assert!((0.17..0.23).contains(&fraction), "{fraction}");
}

#[test]
fn ip_hash_down_backend_moves_only_its_clients() {
    let mut u = upstream(&[1; 4]);
    let p0 = hash_picks(&u, 5000);
    u.record_failure(1, Instant::now());
    let p1 = hash_picks(&u, 5000);
    for (a, b) in p0.iter().zip(&p1) {
        assert!(a == b || *a == u.backends[1].addr);
        assert_ne!(*b, u.backends[1].addr);
    }
}

#[test]
fn p2c_prefers_low_latency() {
    let mut u = upstream(&[1, 1, 1]);
    let now = Instant::now();
    u.record_success(0, Duration::from_millis(1), now);
    u.record_success(1, Duration::from_millis(10), now);
    u.record_success(2, Duration::from_millis(10), now);
    let mut b = P2c::with_seed(42);
    let c = counts(&mut b, &u, 9000);
    // The fast one wins every draw it is in: 2 of 3 draws.
    assert!((5500..6500).contains(&c[0]), "{c:?}");
    assert!(c[1] > 1000 && c[2] > 1000, "{c:?}");
}

#[test]
fn p2c_weighs_latency_by_load() {
    let mut u = upstream(&[1, 1]);
    let now = Instant::now();
    u.record_success(0, Duration::from_millis(1), now);
    u.record_success(1, Duration::from_millis(2), now);
    let mut b = P2c::with_seed(7);
    // Requests pile up on the fast backend until it costs more than the
    // slow one: 1 ms × (active + 1) > 2 ms × 1 once two are in flight.
    for _ in 0..3 {
        let i = b.pick(&u, &ctx(now)).unwrap();
        u.request_started(i);
    }
    assert_eq!(u.backends[0].active, 2);
    assert_eq!(u.backends[1].active, 1);
}

#[test]
fn p2c_sends_one_request_at_a_time_to_an_unmeasured_backend() {
    let mut u = upstream(&[1, 1]);
    let now = Instant::now();
    u.record_success(0, Duration::from_millis(5), now);
    let mut b = P2c::with_seed(1);
    let first = b.pick(&u, &ctx(now)).unwrap();
    assert_eq!(first, 1, "an idle, unmeasured backend is tried");
    u.request_started(1);
    assert_eq!(b.pick(&u, &ctx(now)), Some(0));
}

#[test]
fn p2c_is_reproducible_with_a_seed() {
    let u = upstream(&[1, 1, 1, 1]);
    let (mut a, mut b) = (P2c::with_seed(9), P2c::with_seed(9));
    assert_eq!(counts(&mut a, &u, 500), counts(&mut b, &u, 500));
}

#[test]
fn every_balancer_skips_down_and_excluded_backends() {
    for alg in ALL {
        let mut u = upstream(&[1, 2, 3, 4]);
        let now = Instant::now();
        u.record_failure(1, now); // max_fails 1: down for 10 s
        let mut b = new_balancer(alg, &u);
        let exclude = [2];
        for i in 0..200 {
            let c = PickContext {
                client_ip: ip(i),
                exclude: &exclude,
                now,
            };
            let got = b.pick(&u, &c);
            assert!(matches!(got, Some(0) | Some(3)), "{alg:?} picked {got:?}");
        }
        // Down and excluded: nothing left.
        let c = PickContext {
            client_ip: ip(0),
            exclude: &[0, 2, 3],
            now,
        };
        assert_eq!(b.pick(&u, &c), None, "{alg:?}");
        // After fail_timeout the backend is back.
        let later = now + Duration::from_secs(11);
        let c = PickContext {
            client_ip: ip(0),
            exclude: &[0, 2, 3],
            now: later,
        };
        assert_eq!(b.pick(&u, &c), Some(1), "{alg:?}");
    }
}

#[test]
fn every_balancer_returns_none_without_backends_available() {
    for alg in ALL {
        let mut u = upstream(&[1, 1]);
        let now = Instant::now();
        u.record_failure(0, now);
        u.record_failure(1, now);
        let mut b = new_balancer(alg, &u);
        assert_eq!(b.pick(&u, &ctx(now)), None, "{alg:?}");
    }
}

#[test]
fn every_balancer_falls_back_to_the_least_recently_failed_when_all_are_out() {
    for alg in ALL {
        let mut u = upstream(&[1, 1, 1]);
        let now = Instant::now();
        let ms = Duration::from_millis;
        u.record_failure(2, now);
        u.record_failure(0, now + ms(1));
        u.record_failure(1, now + ms(2));
        let mut b = new_balancer(alg, &u);
        let at = now + ms(3);
        assert_eq!(
            pick_or_fallback(b.as_mut(), &u, &ctx(at)),
            Some(2),
            "{alg:?}"
        );
        let tried = [2];
        let c = PickContext {
            client_ip: ip(0),
            exclude: &tried,
            now: at,
        };
        assert_eq!(pick_or_fallback(b.as_mut(), &u, &c), Some(0), "{alg:?}");
        // One in rotation again: the balancer's own pick, no fallback.
        let mut u = upstream(&[1, 1, 1]);
        u.record_failure(0, now);
        u.record_failure(1, now);
        for _ in 0..10 {
            assert_eq!(
                pick_or_fallback(b.as_mut(), &u, &ctx(at)),
                Some(2),
                "{alg:?}"
            );
        }
    }
}

#[test]
fn every_balancer_spreads_over_all_backends() {
    for alg in ALL {
        let u = upstream(&[1, 1, 1]);
        let mut b = new_balancer(alg, &u);
        let now = Instant::now();
        let mut c = [0usize; 3];
        for i in 0..3000 {
            let ctx = PickContext {
                client_ip: ip(i),
                exclude: &[],
                now,
            };
            c[b.pick(&u, &ctx).unwrap()] += 1;
        }
        assert!(c.iter().all(|&k| k > 700), "{alg:?}: {c:?}");
    }
}

/// Counts heap allocations made by the current thread, to check that picks
/// (which run on the request path) allocate nothing.
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static ALLOCS: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: forwards every call to the system allocator unchanged; the
    // thread-local counter is const-initialized and has no destructor, so
    // touching it never allocates or re-enters the allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: same contract as our caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System.alloc` above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    pub fn allocations() -> usize {
        ALLOCS.with(|c| c.get())
    }
}

#[global_allocator]
static COUNTING: alloc_count::Counting = alloc_count::Counting;

#[test]
fn picks_do_not_allocate() {
    for alg in ALL {
        let mut u = upstream(&[5, 1, 1, 3]);
        let now = Instant::now();
        u.record_success(0, Duration::from_millis(2), now);
        u.record_success(1, Duration::from_millis(1), now);
        u.record_failure(3, now);
        let mut b = new_balancer(alg, &u);
        let exclude = [2];
        let before = alloc_count::allocations();
        for i in 0..1000 {
            let c = PickContext {
                client_ip: ip(i),
                exclude: &exclude,
                now,
            };
            let picked = b.pick(&u, &c).unwrap();
            u.request_started(picked);
            u.record_success(picked, Duration::from_micros(100 + u64::from(i % 7)), now);
            u.request_finished(picked);
        }
        assert_eq!(alloc_count::allocations(), before, "{alg:?} allocated");
    }
}
