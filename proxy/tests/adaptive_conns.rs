//! `max_conns: auto` (the default): the per-backend connection limit adapts.
//! A backend that holds many requests open gets them all (the limit grows
//! past its start of 64); a backend whose latency grows with the
//! connections it is given is not handed one connection per client.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn auto_cfg(b: SocketAddr) -> Cfg {
    let mut cfg = Cfg::new(&[b]);
    cfg.max_conns_auto = true;
    cfg.keepalive = 10_000;
    cfg.queue_timeout = "20s";
    cfg.max_fails = 0;
    cfg
}

#[test]
fn a_backend_holding_300_requests_open_gets_all_300() {
    const CLIENTS: usize = 300;
    let b = Backend::start("a");
    let p = auto_cfg(b.addr).start();
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let mut c = p.client();
            c.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
            c
        })
        .collect();
    // Starting at 64, the limit must grow while nothing answers, or the
    // rest would wait until queue_timeout.
    wait_until("the backend holds every request", || b.active() == CLIENTS);
    b.release();
    for mut c in clients {
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.head);
    }
    let stats = p.admin().get_json("/api/v1/stats/server");
    assert_eq!(stats["upstream"]["queue_timeouts"], 0, "{stats}");
}

/// A backend that serves 32 requests at once and queues the rest: each
/// answer waits 1 ms per request in progress beyond 32 (at least 2 ms).
/// Counts the most connections it ever had open.
struct QueueingBackend {
    addr: SocketAddr,
    peak_connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl QueueingBackend {
    fn start() -> QueueingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peak_connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (peak, reqs) = (peak_connections.clone(), requests.clone());
        let open = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (peak, reqs, open, busy) =
                    (peak.clone(), reqs.clone(), open.clone(), busy.clone());
                thread::spawn(move || {
                    let n = open.fetch_add(1, SeqCst) + 1;
                    peak.fetch_max(n, SeqCst);
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut line = String::new();
                    'conn: loop {
                        // A GET head: lines until the empty one.
                        loop {
                            line.clear();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => break 'conn,
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => {}
                            }
                        }
                        let now_busy = busy.fetch_add(1, SeqCst) + 1;
                        let wait = now_busy.saturating_sub(32).max(2) as u64;
                        thread::sleep(Duration::from_millis(wait));
                        busy.fetch_sub(1, SeqCst);
                        reqs.fetch_add(1, SeqCst);
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nq";
                        if stream.write_all(ok).is_err() {
                            break;
                        }
                    }
                    open.fetch_sub(1, SeqCst);
                });
            }
        });
        QueueingBackend {
            addr,
            peak_connections,
            requests,
        }
    }
}

#[test]
fn a_backend_that_queues_is_not_given_a_connection_per_client() {
    const CLIENTS: usize = 400;
    const EACH: usize = 15;
    let b = QueueingBackend::start();
    // The defaults (max_conns and keepalive unset: auto), one event loop.
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  workers: 1\nadmin:\n  listen: \"127.0.0.1:0\"\n\
         upstreams:\n  default:\n    backends: [ {{ addr: \"{}\" }} ]\n\
         routing:\n  default: {{ upstream: default }}\n",
        b.addr
    );
    let p = Proxy::start(&yaml);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut c = p.client();
            thread::spawn(move || {
                for i in 0..EACH {
                    let r = c.get("/");
                    assert_eq!(r.status, 200, "request {i}: {}", r.head);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(b.requests.load(SeqCst), CLIENTS * EACH);
    let peak = b.peak_connections.load(SeqCst);
    // Unlimited, 400 clients mean 400 backend connections.
    assert!(
        peak < CLIENTS,
        "{peak} backend connections for {CLIENTS} clients"
    );
    let stats = p.admin().get_json("/api/v1/stats/server");
    assert_eq!(stats["upstream"]["queue_timeouts"], 0, "{stats}");
    assert!(stats["upstream"]["queued"].as_u64() > Some(0), "{stats}");
}
