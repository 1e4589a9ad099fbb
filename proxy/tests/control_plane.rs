//! The control plane under load, end to end: the real `speedmimi` binary,
//! real backends, client threads the test drives itself, and changes made
//! through the admin API or SIGHUP while the requests flow. What is
//! asserted is that no request fails and that the change took effect;
//! every wait is bounded and nothing is timed.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// -------------------------------------------------------------- traffic --

/// What the client threads saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Every non-200 answer and socket error, described.
    failures: Mutex<Vec<String>>,
    /// 200 answers by backend id (the body of `GET /`).
    by_backend: Mutex<HashMap<String, u64>>,
}

/// Client threads sending `GET /` on keep-alive connections until stopped;
/// each opens a new connection after `per_connection` requests (0: never).
struct Traffic {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr, clients: usize, per_connection: u64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..clients)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                thread::spawn(move || drive(addr, per_connection, &stop, &tally))
            })
            .collect();
        let traffic = Traffic {
            stop,
            tally,
            threads,
        };
        traffic.wait_for(50);
        traffic
    }

    fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::SeqCst)
    }

    fn failures(&self) -> Vec<String> {
        self.tally.failures.lock().unwrap().clone()
    }

    fn by_backend(&self) -> HashMap<String, u64> {
        self.tally.by_backend.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` more requests have succeeded.
    fn wait_for(&self, n: u64) {
        let target = self.ok() + n;
        let until = Instant::now() + 3 * IO_TIMEOUT;
        while self.ok() < target {
            assert!(
                Instant::now() < until,
                "traffic stalled at {} requests (wanted {target}); failures: {:?}",
                self.ok(),
                self.failures()
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Requests per backend over the next `n` successful requests.
    fn window(&self, n: u64) -> HashMap<String, u64> {
        let before = self.by_backend();
        self.wait_for(n);
        let mut after = self.by_backend();
        for (id, count) in &mut after {
            *count -= before.get(id).copied().unwrap_or(0);
        }
        after.retain(|_, c| *c > 0);
        after
    }

    /// Stops the threads; returns the requests that succeeded.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("a client thread panicked");
        }
        (self.ok(), self.failures())
    }

    /// Stops the threads and asserts that no request failed.
    fn finish_without_failures(self) -> u64 {
        let (ok, failures) = self.finish();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {:?}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(20)]
        );
        ok
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn drive(addr: SocketAddr, per_connection: u64, stop: &AtomicBool, tally: &Tally) {
    let fail = |what: String| tally.failures.lock().unwrap().push(what);
    let mut conn: Option<(Client, u64)> = None;
    while !stop.load(Ordering::SeqCst) {
        let (client, sent) = match conn.take() {
            Some(c) => c,
            None => match Client::try_connect(addr) {
                Ok(c) => (c, 0),
                Err(e) => {
                    fail(format!("connect: {e}"));
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        let mut client = client;
        if let Err(e) = client.try_send(b"GET / HTTP/1.1\r\nHost: traffic\r\n\r\n") {
            fail(format!("send on request {} of a connection: {e}", sent + 1));
            continue;
        }
        match client.try_read_response(false) {
            Ok(r) if r.status == 200 => {
                tally.ok.fetch_add(1, Ordering::SeqCst);
                *tally
                    .by_backend
                    .lock()
                    .unwrap()
                    .entry(r.text())
                    .or_default() += 1;
                let done = per_connection > 0 && sent + 1 >= per_connection;
                if !r.says_close() && !done {
                    conn = Some((client, sent + 1));
                }
            }
            Ok(r) => fail(format!("status {}: {}", r.status, r.text())),
            Err(e) => fail(format!("read on request {} of a connection: {e}", sent + 1)),
        }
    }
}

// --------------------------------------------------------------- helpers --

/// `a / (a + b)` over a window, with the window in the message.
fn share(window: &HashMap<String, u64>, id: &str) -> f64 {
    let total: u64 = window.values().sum();
    window.get(id).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

fn put_config(admin: &Admin, patch: Value) -> Value {
    let r = admin.put("/api/v1/config", &patch.to_string());
    assert_eq!(r.status, 200, "PUT {patch}: {}", r.body);
    r.json()
}

fn requests_total(admin: &Admin) -> u64 {
    let stats = admin.get_json("/api/v1/stats/server");
    stats["requests"].as_u64().expect("requests in stats")
}

/// `speedmimi_requests_total` from /metrics.
fn metrics_requests_total(admin: &Admin) -> u64 {
    let r = admin.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("speedmimi_requests_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no speedmimi_requests_total in /metrics:\n{}", r.body))
        as u64
}

/// The per-worker rows of a stats answer must add up to its totals.
fn assert_rows_sum_to_totals(stats: &Value) {
    let rows = stats["workers"].as_array().expect("workers rows");
    let sum: u64 = rows.iter().map(|w| w["requests"].as_u64().unwrap()).sum();
    assert_eq!(
        sum,
        stats["requests"].as_u64().unwrap(),
        "requests: {stats:#}"
    );
    for field in ["total", "refused"] {
        let sum: u64 = rows
            .iter()
            .map(|w| w["connections"][field].as_u64().unwrap())
            .sum();
        assert_eq!(
            sum,
            stats["connections"][field].as_u64().unwrap(),
            "connections.{field}: {stats:#}"
        );
    }
}

fn two_process_yaml(cfg: &Cfg) -> String {
    cfg.yaml()
        .replace("workers: 1", "workers: 1\n  processes: 2")
}

/// One request on a fresh connection; the backend id that answered.
fn fresh_request(proxy: &Proxy) -> String {
    let mut c = proxy.client();
    let r = c.get("/");
    assert_eq!(r.status, 200, "{}", r.head);
    r.text()
}

// ----------------------------------------------------------------- tests --

#[test]
fn switching_the_balancer_under_traffic_fails_no_request() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = Cfg::weighted(&[(a.addr, 5), (b.addr, 1)]).start();
    let admin = p.admin();
    let traffic = Traffic::start(p.addr, 4, 0);
    let order = ["round_robin", "weight", "least_conn", "p2c", "ip_hash"];
    for round in 0..2 {
        for lb in order {
            let answer = put_config(
                &admin,
                json!({"routing": {"default": {"load_balancer": lb}}}),
            );
            assert_eq!(answer["routing"]["default"]["load_balancer"], lb);
            // Every loop confirmed before the answer; skip a few requests
            // that may have been balanced just before.
            traffic.wait_for(20);
            let window = traffic.window(600);
            match lb {
                "round_robin" => {
                    let s = share(&window, "a");
                    assert!((0.4..=0.6).contains(&s), "round {round} {lb}: {window:?}");
                }
                "weight" => {
                    // Weights 5 and 1: a takes 5 of every 6 requests.
                    let s = share(&window, "a");
                    assert!((0.75..=0.92).contains(&s), "round {round} {lb}: {window:?}");
                }
                "ip_hash" => {
                    // Every client is 127.0.0.1: one backend takes them all.
                    assert_eq!(window.len(), 1, "round {round} {lb}: {window:?}");
                }
                _ => {}
            }
        }
    }
    let done = traffic.finish_without_failures();
    assert!(done >= 6000, "{done} requests");
    assert_eq!(
        admin.get_json("/api/v1/config")["routing"]["default"]["load_balancer"],
        "ip_hash"
    );
}

#[test]
fn adding_and_removing_a_backend_under_traffic_fails_no_request() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = Cfg::new(&[a.addr]).start();
    let admin = p.admin();
    let traffic = Traffic::start(p.addr, 4, 0);

    let r = admin.post(
        "/api/v1/upstreams/default/backends",
        &json!({"addr": b.addr.to_string()}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let window = traffic.window(400);
    assert!(
        (0.4..=0.6).contains(&share(&window, "b")),
        "round robin over a and b after the POST: {window:?}"
    );

    // Slow requests, each on its own connection, until two are in flight
    // on b (round robin puts about every other one there).
    let slow_on = |backend: &Backend| {
        backend
            .received()
            .iter()
            .filter(|r| r.target.starts_with("/slow/"))
            .count()
    };
    let mut slow = Vec::new();
    while slow_on(&b) < 2 {
        assert!(slow.len() < 40, "no slow request reached b");
        let addr = p.addr;
        slow.push(thread::spawn(move || {
            Client::connect(addr).get("/slow/2000")
        }));
        let sent = slow.len();
        wait_until("the slow request to reach a backend", || {
            slow_on(&a) + slow_on(&b) == sent
        });
    }
    let in_flight_on_b = slow_on(&b);

    let r = admin.delete(&format!("/api/v1/upstreams/default/backends/{}", b.addr));
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = admin.get_json("/api/v1/backends?upstream=default");
    let b_row = listed["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["address"] == b.addr.to_string())
        .cloned();
    if let Some(row) = b_row {
        // Still listed only while its requests finish.
        assert_eq!(row["health"], "draining", "{listed:#}");
    }

    let mut on_b = 0;
    for t in slow {
        let r = t.join().expect("a slow client");
        assert_eq!(r.status, 200, "a slow request in flight: {}", r.head);
        on_b += usize::from(r.text() == "b");
    }
    assert!(
        on_b >= in_flight_on_b,
        "{on_b} slow answers from b, {in_flight_on_b} were in flight there"
    );

    // Once drained, b is gone and takes nothing more.
    let b_requests = b.requests();
    let window = traffic.window(400);
    assert_eq!(window.get("b"), None, "after DELETE: {window:?}");
    assert_eq!(b.requests(), b_requests, "b received requests after DELETE");
    traffic.finish_without_failures();
    // Its requests done, b leaves the list (no longer `draining`).
    let mut listed = Value::Null;
    let until = Instant::now() + IO_TIMEOUT;
    while Instant::now() < until {
        listed = admin.get_json("/api/v1/backends?upstream=default");
        let rows = listed["backends"].as_array().unwrap();
        if rows.iter().all(|row| row["address"] != b.addr.to_string()) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        listed["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["address"] != b.addr.to_string()),
        "b still listed once its slow requests ({in_flight_on_b}) finished: {listed:#}"
    );
}

#[test]
fn a_refused_change_under_traffic_changes_nothing() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = Cfg::new(&[a.addr, b.addr]).start();
    let admin = p.admin();
    let before = admin.get_json("/api/v1/config");
    let traffic = Traffic::start(p.addr, 4, 0);

    let refusals = [
        (
            json!({"routing": {"default": {"load_balancer": "wieght"}}}),
            400,
            "routing.default.load_balancer",
        ),
        (
            json!({"server": {"max_conn": "lots"}}),
            400,
            "server.max_conn",
        ),
        (
            json!({"upstreams": {"default": {"backends": [{"addr": "nowhere"}]}}}),
            400,
            "upstreams.default.backends[0].addr",
        ),
        (json!({"server": {"workers": 2}}), 409, "server.workers"),
        (json!({"server": {"processes": 2}}), 409, "server.processes"),
        // A valid part beside a refused one is not applied either.
        (
            json!({"routing": {"default": {"load_balancer": "weight"}}, "server": {"workers": 3}}),
            409,
            "server.workers",
        ),
    ];
    for (patch, status, field) in refusals {
        let r = admin.put("/api/v1/config", &patch.to_string());
        assert_eq!(r.status, status, "PUT {patch}: {}", r.body);
        let body = r.json();
        assert_eq!(body["field"], field, "PUT {patch}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        traffic.wait_for(100);
        assert_eq!(
            admin.get_json("/api/v1/config"),
            before,
            "after PUT {patch}"
        );
    }
    let window = traffic.window(400);
    assert!(
        (0.4..=0.6).contains(&share(&window, "a")),
        "still round robin: {window:?}"
    );
    traffic.finish_without_failures();
}

#[test]
fn a_killed_worker_process_keeps_the_port_open_and_the_sums_consistent() {
    let b = Backend::start("a");
    let p = Proxy::start(&two_process_yaml(&Cfg::new(&[b.addr])));
    let admin = p.admin();
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    // Short connections so both workers take some.
    let traffic = Traffic::start(p.addr, 4, 10);
    traffic.wait_for(300);

    let mut last = requests_total(&admin);
    let victim = children_of(p.pid())[0];
    signal(victim, "KILL");

    // New connections keep being served (the other worker holds the port).
    let until = Instant::now() + IO_TIMEOUT;
    let mut served = 0;
    while served < 20 {
        assert!(
            Instant::now() < until,
            "new connections not served after the kill"
        );
        if let Ok(mut c) = Client::try_connect(p.addr) {
            let _ = c.try_send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
            if matches!(c.try_read_response(false), Ok(r) if r.status == 200) {
                served += 1;
            }
        }
    }
    wait_until("a replacement worker", || {
        let kids = children_of(p.pid());
        kids.len() == 2 && !kids.contains(&victim)
    });
    // The totals never go down: the dead worker's counts stay in the sum.
    for _ in 0..10 {
        traffic.wait_for(50);
        let now = requests_total(&admin);
        assert!(now >= last, "requests went from {last} to {now}");
        last = now;
    }
    let (ok, failures) = traffic.finish();
    // Only requests caught on the killed worker may fail.
    assert!(
        failures.len() <= 40,
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );

    let stats = admin.get_json("/api/v1/stats/server");
    let total = stats["requests"].as_u64().unwrap();
    assert!(
        total >= ok + served,
        "stats count {total} requests, the clients completed {}",
        ok + served
    );
    assert!(total >= last, "requests went from {last} to {total}");
    assert_rows_sum_to_totals(&stats);
    // Nothing runs now: /metrics and the stats agree exactly.
    assert_eq!(metrics_requests_total(&admin), total);
    assert_eq!(requests_total(&admin), total);
}

#[test]
fn open_connections_of_a_killed_worker_leave_the_connection_gauge() {
    let b = Backend::start("a");
    let p = Proxy::start(&two_process_yaml(&Cfg::new(&[b.addr])));
    let admin = p.admin();
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    // Idle keep-alive connections spread over both workers.
    let mut idle: Vec<Client> = (0..40).map(|_| p.client()).collect();
    for c in &mut idle {
        assert_eq!(c.get("/").status, 200);
    }
    wait_until("40 open connections in the stats", || {
        admin.get_json("/api/v1/stats/server")["connections"]["current"] == 40
    });
    let victim = children_of(p.pid())[0];
    signal(victim, "KILL");
    wait_until("a replacement worker", || {
        let kids = children_of(p.pid());
        kids.len() == 2 && !kids.contains(&victim)
    });
    drop(idle);
    let mut current = Value::Null;
    let until = Instant::now() + IO_TIMEOUT;
    while Instant::now() < until {
        current = admin.get_json("/api/v1/stats/server")["connections"]["current"].clone();
        if current == 0 {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        current, 0,
        "connections.current once every client closed (the killed worker's connections are gone too)"
    );
}

#[test]
fn requests_in_flight_in_a_killed_worker_leave_the_backend_active_gauge() {
    let b = Backend::start("a");
    let p = Proxy::start(&two_process_yaml(&Cfg::new(&[b.addr])));
    let admin = p.admin();
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    let active =
        || admin.get_json("/api/v1/backends?upstream=default")["backends"][0]["active"].clone();
    // Held requests spread over both workers.
    let mut held: Vec<Client> = (0..8).map(|_| p.client()).collect();
    for c in &mut held {
        c.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    wait_until("8 requests in flight", || active() == 8);
    let workers = children_of(p.pid());
    for w in &workers {
        signal(*w, "KILL");
    }
    wait_until("replacement workers", || {
        let kids = children_of(p.pid());
        kids.len() == 2 && kids.iter().all(|k| !workers.contains(k))
    });
    wait_until("the gauge forgets the killed workers' requests", || {
        active() == 0
    });
    b.release();
    // Both workers died, so the port was closed until a replacement listens.
    wait_until("a replacement worker listens", || {
        Client::try_connect(p.addr).is_ok()
    });
    assert_eq!(p.client().get("/").status, 200);
    // The loop counts the request finished just after writing its last
    // byte, so the client can read the answer a moment before.
    wait_until("the new request leaves the gauge", || active() == 0);
}

#[test]
fn sigterm_after_a_worker_was_killed_exits_once_idle() {
    let b = Backend::start("a");
    let yaml = two_process_yaml(&Cfg::new(&[b.addr])).replace(
        "idle_timeout: 30s",
        "idle_timeout: 30s\n  graceful_timeout: 60s",
    );
    let mut p = Proxy::start(&yaml);
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    let mut idle: Vec<Client> = (0..40).map(|_| p.client()).collect();
    for c in &mut idle {
        assert_eq!(c.get("/").status, 200);
    }
    let victim = children_of(p.pid())[0];
    signal(victim, "KILL");
    wait_until("a replacement worker", || {
        let kids = children_of(p.pid());
        kids.len() == 2 && !kids.contains(&victim)
    });
    drop(idle);
    // Give the surviving worker's loop a moment to see the closes.
    assert_eq!(fresh_request(&p), "a");
    p.signal("TERM");
    // Nothing is in flight: the drain ends at once, not after graceful_timeout.
    let status = p
        .wait_exit(Duration::from_secs(15))
        .expect("an idle proxy exits on SIGTERM well before its 60 s graceful_timeout");
    assert!(status.success(), "{status}");
}

/// `two_process_yaml` on a fixed free port (the file a reload re-reads
/// names it).
fn two_process_yaml_on(cfg: &Cfg, port: SocketAddr) -> String {
    two_process_yaml(cfg).replace(
        "listen: \"127.0.0.1:0\"\n  workers",
        &format!("listen: \"{port}\"\n  workers"),
    )
}

#[test]
fn sighup_with_worker_processes_moves_every_worker_to_the_new_backend() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let port = closed_port();
    let p = Proxy::start(&two_process_yaml_on(&Cfg::new(&[a.addr]), port));
    let admin = p.admin();
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    let traffic = Traffic::start(p.addr, 2, 5);
    assert_eq!(fresh_request(&p), "a");

    // The file as the operator wrote it: same shape, another backend.
    p.rewrite_config(&two_process_yaml_on(&Cfg::new(&[b.addr]), port));
    p.signal("HUP");
    // Fresh connections are spread over both workers by the kernel: once
    // 20 in a row land on b, every worker has the reload ...
    wait_until("the reload to reach every worker", || {
        (0..20).all(|_| fresh_request(&p) == "b")
    });
    // ... and from then on nothing reaches a.
    let a_before = a.requests();
    for i in 0..60 {
        assert_eq!(
            fresh_request(&p),
            "b",
            "fresh connection {i} after the reload"
        );
    }
    let window = traffic.window(200);
    assert_eq!(
        window.get("a"),
        None,
        "traffic after the reload: {window:?}"
    );
    assert_eq!(
        a.requests(),
        a_before,
        "a received requests after the reload"
    );
    let backends = admin.get_json("/api/v1/config")["upstreams"]["default"]["backends"].clone();
    assert_eq!(backends[0]["addr"], b.addr.to_string(), "{backends:#}");
    traffic.finish_without_failures();
}

#[test]
fn sighup_with_worker_processes_rereads_a_file_that_asks_for_any_port() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    // `listen: 127.0.0.1:0`: the master picked the port at start.
    let p = Proxy::start(&two_process_yaml(&Cfg::new(&[a.addr])));
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    assert_eq!(fresh_request(&p), "a");
    p.rewrite_config(&two_process_yaml(&Cfg::new(&[b.addr])));
    p.signal("HUP");
    wait_until("the reload to reach every worker", || {
        (0..20).all(|_| fresh_request(&p) == "b")
    });
    assert_eq!(
        p.admin().get_json("/api/v1/config")["server"]["listen"],
        p.addr.to_string()
    );
}

#[test]
fn a_change_the_workers_refuse_is_not_left_for_restarted_workers() {
    let a = Backend::start("a");
    let p = Proxy::start(&two_process_yaml_on(&Cfg::new(&[a.addr]), closed_port()));
    let admin = p.admin();
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    let before = admin.get_json("/api/v1/config");
    // A port another socket holds (without SO_REUSEPORT): no worker can bind it.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let patch = json!({"server": {"listen": busy.local_addr().unwrap().to_string()}});
    let r = admin.put("/api/v1/config", &patch.to_string());
    assert!(
        r.status == 400 || r.status == 409,
        "PUT {patch}: {} {}",
        r.status,
        r.body
    );
    assert_eq!(admin.get_json("/api/v1/config"), before);
    // A worker started now must start from the configuration in force.
    let victim = children_of(p.pid())[0];
    signal(victim, "KILL");
    wait_until("a replacement worker serving on the old port", || {
        let stats = admin.get_json("/api/v1/stats/server");
        let kids = children_of(p.pid());
        let pids: Vec<u32> = stats["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_u64().unwrap() as u32)
            .collect();
        !pids.contains(&victim) && pids.iter().all(|pid| kids.contains(pid))
    });
    for _ in 0..20 {
        assert_eq!(fresh_request(&p), "a");
    }
}

/// The master's files in /dev/shm (`speedmimi-PID-RANDOM.*`).
fn shm_files_of(master: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("speedmimi-{master}-");
    std::fs::read_dir("/dev/shm")
        .expect("/dev/shm")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

#[test]
fn shared_memory_files_are_private_and_hold_no_token() {
    use std::os::unix::fs::MetadataExt;
    const TOKEN: &str = "shm-test-secret-7f3a9c";
    let a = Backend::start("a");
    let yaml = two_process_yaml(&Cfg::new(&[a.addr])).replace(
        "admin:\n  listen: \"127.0.0.1:0\"\n",
        &format!("admin:\n  listen: \"127.0.0.1:0\"\n  token: {TOKEN}\n"),
    );
    let p = Proxy::start(&yaml);
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    // A change the workers must apply: the configuration copy is rewritten
    // (and must still validate without the token).
    let mut c = Client::connect(p.admin_addr());
    let patch = r#"{"routing":{"default":{"load_balancer":"least_conn"}}}"#;
    c.send(
        format!(
            "PUT /api/v1/config HTTP/1.1\r\nHost: speedmimi.example\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{patch}",
            patch.len()
        )
        .as_bytes(),
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fresh_request(&p), "a");
    let files = shm_files_of(p.pid());
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for ext in ["board", "yaml"] {
        assert!(
            names.iter().any(|n| n.ends_with(&format!(".{ext}"))),
            "no .{ext} in {names:?}"
        );
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for file in &files {
        let meta = std::fs::symlink_metadata(file).unwrap();
        assert!(meta.file_type().is_file(), "{}", file.display());
        assert_eq!(meta.mode() & 0o777, 0o600, "{}", file.display());
        assert_eq!(meta.uid(), me, "{}", file.display());
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "the token is in {}",
            file.display()
        );
    }
    // The random part: 16 hex digits after the pid.
    let stem = names[0].split('.').next().unwrap();
    let random = stem.rsplit('-').next().unwrap();
    assert_eq!(random.len(), 16, "{stem}");
    assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{stem}");
}
