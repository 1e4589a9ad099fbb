//! `server.min_rate`: a client the proxy waits on must keep moving bytes.
//! Trickling a request body gets 408 and frees the backend connection; a
//! client reading a large response too slowly is closed; clients at
//! loopback speed never notice the rule.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// 64 KiB/s with a 1 s grace: far above a byte a second, far below loopback.
fn strict(backend: SocketAddr) -> Cfg {
    let mut cfg = Cfg::new(&[backend]);
    cfg.extra_server = "  min_rate: 64KiB\n  min_rate_grace: 1s\n".into();
    cfg
}

#[test]
fn a_body_trickled_a_byte_a_second_gets_408_and_frees_the_backend_slot() {
    let backend = Backend::start("A");
    let mut cfg = strict(backend.addr);
    cfg.max_conns = 1; // the trickler holds the only backend connection
    cfg.queue_timeout = "5s";
    let mut p = cfg.start();
    let mut c = p.client();
    c.send(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n");
    // One byte a second until the proxy answers (at most 20 bytes).
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = c.stream().try_clone().unwrap();
    let trickle = {
        let stop = stop.clone();
        thread::spawn(move || {
            for _ in 0..20 {
                if stop.load(Ordering::SeqCst) || writer.write_all(b"x").is_err() {
                    return;
                }
                thread::sleep(Duration::from_secs(1));
            }
        })
    };
    // read_timeout (10 s) never fires on a byte a second: only the rate
    // rule can answer (the counter below says it did).
    let r = c.read_response();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(r.status, 408, "{}", r.head);
    c.set_timeout(Duration::from_secs(3));
    assert!(c.is_closed(), "the connection closes after the 408");
    trickle.join().unwrap();
    // The backend connection went with it: the next request gets the slot.
    let mut next = p.client();
    let r = next.get("/");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(p.metric("speedmimi_client_slow_request_bodies_total"), 1.0);
    assert_eq!(
        p.metric("speedmimi_client_slow_response_readers_total"),
        0.0
    );
    p.assert_alive();
}

#[test]
fn a_client_reading_a_large_response_too_slowly_is_closed() {
    let backend = Backend::start("A");
    let p = strict(backend.addr).start();
    // A small receive buffer, so what the client does not read stays
    // in the proxy's send buffer rather than in the client's kernel.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&p.addr.into(), IO_TIMEOUT).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let size: u64 = 32 << 20; // far more than every socket buffer on the way
    s.write_all(format!("GET /download/{size} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .unwrap();
    // About 20 KiB/s, under the 64 KiB/s minimum, for at most 15 s.
    let mut got = 0u64;
    let mut buf = [0u8; 1024];
    let until = Instant::now() + Duration::from_secs(15);
    let mut cut_off = false;
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {
                cut_off = true;
                break;
            }
            Ok(n) => got += n as u64,
        }
        if backend.closed() == 1 {
            cut_off = true; // the proxy dropped the exchange, backend side too
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(cut_off, "a reader at 20 KiB/s kept the response for 15 s");
    // What was still buffered drains, then the connection ends short.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(got < size, "the whole response arrived ({got} bytes)");
    wait_until("the backend connection to close", || backend.closed() == 1);
    assert_eq!(
        p.metric("speedmimi_client_slow_response_readers_total"),
        1.0
    );
    assert_eq!(p.metric("speedmimi_client_slow_request_bodies_total"), 0.0);
}

#[test]
fn clients_at_full_speed_are_untouched_by_the_minimum_rate() {
    let backend = Backend::start("A");
    let p = strict(backend.addr).start();
    let mut c = p.client();
    // A large upload and a large download on one keep-alive connection.
    let size = 8 << 20;
    let body: Vec<u8> = (0..size as u64).map(pattern_byte).collect();
    let mut req = format!("POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {size}\r\n\r\n")
        .into_bytes();
    req.extend_from_slice(&body);
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.text().contains(&format!("len={size} pattern=ok")),
        "{}",
        r.text()
    );
    c.send(format!("GET /download/{size} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    let (r, len, pattern_ok) = c.read_response_counting();
    assert_eq!(r.status, 200);
    assert_eq!(len, size as u64);
    assert!(pattern_ok);
    // A pause shorter than the grace between requests is idle time, not owed.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.get("/").status, 200);
    assert_eq!(p.metric("speedmimi_client_slow_request_bodies_total"), 0.0);
    assert_eq!(
        p.metric("speedmimi_client_slow_response_readers_total"),
        0.0
    );
}
