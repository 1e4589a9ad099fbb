//! Active health checks (`upstreams.NAME.health_check`) through the real
//! binary: backends whose health endpoint fails, closes or hangs leave
//! rotation after `fall` probes and come back after `rise`; the checks follow
//! PUT /api/v1/config and SIGHUP; with worker processes one prober serves all.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Probes every 100 ms; two in a row decide either way.
const FAST: &str = "{ interval: 100ms, timeout: 1s, rise: 2, fall: 2 }";

/// What a `CheckedBackend` does with a probe of `/healthz`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// 200, then close.
    Ok = 0,
    /// 500, then close.
    Error = 1,
    /// Close without answering.
    Close = 2,
    /// Never answer (until the mode changes, at most 5 s).
    Hang = 3,
}

/// A keep-alive backend answering every request with its id, except
/// `/healthz`, answered as its `Mode` says. Counts both kinds.
struct CheckedBackend {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    id: String,
    mode: AtomicU8,
    probes: AtomicUsize,
    served: AtomicUsize,
    last_probe: Mutex<String>,
}

impl CheckedBackend {
    fn start(id: &str) -> CheckedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            id: id.to_string(),
            mode: AtomicU8::new(Mode::Ok as u8),
            probes: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            last_probe: Mutex::new(String::new()),
        });
        let st = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let st = st.clone();
                thread::spawn(move || serve(stream, &st));
            }
        });
        CheckedBackend { addr, state }
    }

    fn set(&self, mode: Mode) {
        self.state.mode.store(mode as u8, SeqCst);
    }

    /// Probes received (heads of `GET /healthz`).
    fn probes(&self) -> usize {
        self.state.probes.load(SeqCst)
    }

    /// Other requests received (client traffic).
    fn served(&self) -> usize {
        self.state.served.load(SeqCst)
    }

    fn last_probe(&self) -> String {
        self.state.last_probe.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, st: &State) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let path = head.split(' ').nth(1).unwrap_or("");
        if path != "/healthz" {
            st.served.fetch_add(1, SeqCst);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                st.id.len(),
                st.id
            );
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        *st.last_probe.lock().unwrap() = head.clone();
        st.probes.fetch_add(1, SeqCst);
        let reply = |status: &str| {
            format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        };
        match st.mode.load(SeqCst) {
            0 => {
                let _ = out.write_all(reply("200 OK").as_bytes());
            }
            1 => {
                let _ = out.write_all(reply("500 Internal Server Error").as_bytes());
            }
            3 => {
                let until = Instant::now() + Duration::from_secs(5);
                while st.mode.load(SeqCst) == 3 && Instant::now() < until {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            _ => {}
        }
        let _ = out.shutdown(Shutdown::Both);
        return;
    }
}

/// `Cfg`'s YAML for `backends` with `health_check: CHECK` on the upstream.
fn yaml(backends: &[SocketAddr], check: Option<&str>) -> String {
    let text = Cfg::new(backends).yaml();
    match check {
        None => text,
        Some(check) => text.replace(
            "    queue_timeout: 2s\n",
            &format!("    queue_timeout: 2s\n    health_check: {check}\n"),
        ),
    }
}

/// Polls `cond` every 25 ms until it holds, at most 10 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(25));
    }
}

/// The admin API's entry for backend `addr` of upstream `default`.
fn backend(admin: &Admin, addr: SocketAddr) -> Value {
    let v = admin.get_json("/api/v1/backends?upstream=default");
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in {v}"))
}

fn check_state(admin: &Admin, addr: SocketAddr) -> String {
    backend(admin, addr)["active_check"]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_state(admin: &Admin, addr: SocketAddr, state: &str) {
    wait_for(&format!("{addr} to be {state}"), || {
        check_state(admin, addr) == state
    });
}

/// The value of the metrics line of `family` for `addr` (and `extra` label).
fn metric(admin: &Admin, family: &str, addr: SocketAddr, extra: &str) -> Option<String> {
    let text = admin.get("/metrics").body;
    text.lines()
        .find(|l| {
            l.starts_with(&format!("{family}{{"))
                && l.contains(&format!("backend=\"{addr}\""))
                && l.contains(extra)
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

fn put(admin: &Admin, patch: Value) -> Value {
    let r = admin.put("/api/v1/config", &patch.to_string());
    assert_eq!(r.status, 200, "PUT {patch}: {}", r.body);
    r.json()
}

/// Thread names of a process (from /proc; the kernel keeps 15 bytes).
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

// ----------------------------------------------------------------- tests --

#[test]
fn a_backend_answering_500_leaves_rotation_after_fall_probes_and_returns_after_rise() {
    let a = CheckedBackend::start("a");
    let b = CheckedBackend::start("b");
    let p = Proxy::start(&yaml(&[a.addr, b.addr], Some(FAST)));
    let admin = p.admin();
    wait_for("a good probe of b", || {
        backend(&admin, b.addr)["active_check"]["last_result"] == "ok"
    });
    assert_eq!(check_state(&admin, b.addr), "up");
    assert!(
        b.last_probe()
            .starts_with("GET /healthz HTTP/1.1\r\nHost: "),
        "{}",
        b.last_probe()
    );
    assert!(b.last_probe().contains(&format!("Host: {}\r\n", b.addr)));

    b.set(Mode::Error);
    wait_state(&admin, b.addr, "down");
    let entry = backend(&admin, b.addr);
    let check = &entry["active_check"];
    assert_eq!(entry["health"], "down", "{entry}");
    assert_eq!(check["last_status"], 500, "{check}");
    assert_eq!(check["last_result"], "bad_status", "{check}");
    assert!(
        check["consecutive_failures"].as_u64().unwrap() >= 2,
        "{check}"
    );
    assert!(
        check["probes"]["bad_status"].as_u64().unwrap() >= 2,
        "{check}"
    );
    assert_eq!(backend(&admin, a.addr)["active_check"]["state"], "up");

    let before = b.served();
    let ids = p.answer_ids(20);
    assert!(ids.iter().all(|id| id == "a"), "{ids:?}");
    assert_eq!(b.served(), before, "no client request reached b while down");

    assert_eq!(
        metric(&admin, "speedmimi_backend_health_check_up", b.addr, "").as_deref(),
        Some("0")
    );
    assert_eq!(
        metric(&admin, "speedmimi_backend_health_check_up", a.addr, "").as_deref(),
        Some("1")
    );
    let bad = metric(
        &admin,
        "speedmimi_backend_health_check_probes_total",
        b.addr,
        "result=\"bad_status\"",
    );
    assert!(bad.is_some_and(|n| n.parse::<u64>().unwrap() >= 2));
    assert!(
        p.log()
            .contains(&format!("default backend {} is down", b.addr)),
        "{}",
        p.log()
    );

    b.set(Mode::Ok);
    wait_state(&admin, b.addr, "up");
    assert!(backend(&admin, b.addr)["active_check"]["consecutive_successes"].as_u64() >= Some(2));
    wait_for("b back in rotation", || {
        p.answer_ids(4).iter().any(|id| id == "b")
    });
    assert!(p.log().contains("is up again"), "{}", p.log());
}

#[test]
fn a_backend_that_closes_probes_without_answering_is_marked_down() {
    let a = CheckedBackend::start("a");
    let b = CheckedBackend::start("b");
    b.set(Mode::Close);
    let p = Proxy::start(&yaml(&[a.addr, b.addr], Some(FAST)));
    let admin = p.admin();
    wait_state(&admin, b.addr, "down");
    let check = backend(&admin, b.addr)["active_check"].clone();
    assert_eq!(check["last_result"], "malformed_response", "{check}");
    assert_eq!(check["last_status"], Value::Null, "{check}");
    let ids = p.answer_ids(10);
    assert!(ids.iter().all(|id| id == "a"), "{ids:?}");
}

#[test]
fn a_backend_that_times_out_on_probes_is_marked_down() {
    let a = CheckedBackend::start("a");
    let b = CheckedBackend::start("b");
    b.set(Mode::Hang);
    let p = Proxy::start(&yaml(
        &[a.addr, b.addr],
        Some("{ interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }"),
    ));
    let admin = p.admin();
    wait_state(&admin, b.addr, "down");
    let check = backend(&admin, b.addr)["active_check"].clone();
    assert_eq!(check["last_result"], "timeout", "{check}");
    let ids = p.answer_ids(10);
    assert!(ids.iter().all(|id| id == "a"), "{ids:?}");
    b.set(Mode::Ok);
    wait_state(&admin, b.addr, "up");
}

#[test]
fn every_backend_down_answers_503() {
    let a = CheckedBackend::start("a");
    let b = CheckedBackend::start("b");
    a.set(Mode::Error);
    b.set(Mode::Error);
    let p = Proxy::start(&yaml(&[a.addr, b.addr], Some(FAST)));
    let admin = p.admin();
    wait_state(&admin, a.addr, "down");
    wait_state(&admin, b.addr, "down");
    let served = a.served() + b.served();
    let mut c = p.client();
    let r = c.get("/");
    assert_eq!(r.status, 503, "{}", r.head);
    assert_eq!(a.served() + b.served(), served, "no backend was tried");
    a.set(Mode::Ok);
    wait_state(&admin, a.addr, "up");
    let ids = p.answer_ids(4);
    assert!(ids.iter().all(|id| id == "a"), "{ids:?}");
}

#[test]
fn the_active_check_takes_out_a_sole_backend_that_passive_health_keeps() {
    let a = CheckedBackend::start("a");
    let p = Proxy::start(&yaml(&[a.addr], Some(FAST)).replace("max_fails: 100", "max_fails: 1"));
    let admin = p.admin();
    wait_state(&admin, a.addr, "up");
    assert_eq!(p.answer_ids(2), ["a", "a"]);
    a.set(Mode::Error);
    wait_state(&admin, a.addr, "down");
    let r = p.client().get("/");
    assert_eq!(r.status, 503, "{}", r.head);
    a.set(Mode::Ok);
    wait_state(&admin, a.addr, "up");
    assert_eq!(p.answer_ids(2), ["a", "a"]);
}

#[test]
fn checks_are_off_by_default_and_send_no_probes() {
    let a = CheckedBackend::start("a");
    let b = CheckedBackend::start("b");
    b.set(Mode::Error);
    let p = Proxy::start(&yaml(&[a.addr, b.addr], None));
    let admin = p.admin();
    let ids = p.answer_ids(10);
    assert_eq!(ids.iter().filter(|id| *id == "b").count(), 5, "{ids:?}");
    // The default interval is 2 s and a check probes at once when it starts.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(a.probes() + b.probes(), 0);
    assert_eq!(check_state(&admin, b.addr), "off");
    assert_eq!(backend(&admin, b.addr)["health"], "up");
    let config = admin.get_json("/api/v1/config");
    assert!(
        config["upstreams"]["default"].get("health_check").is_none(),
        "{config}"
    );
    assert!(!admin.get("/metrics").body.contains("health_check_up"));
    assert!(!threads(p.pid())
        .iter()
        .any(|t| t.starts_with("speedmimi-heal")));
}

/// TCP sockets on this host in TIME_WAIT with `port` at either end.
fn time_wait_with(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap_or(""), 16).ok();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3
                && f[3] == "06"
                && (port_of(f[1]) == Some(port) || port_of(f[2]) == Some(port))
        })
        .count()
}

#[test]
fn probes_leave_no_time_wait_sockets() {
    let a = CheckedBackend::start("a");
    // The port may have been some earlier connection's, still in TIME_WAIT.
    let before = time_wait_with(a.addr.port());
    let check = "{ interval: 20ms, timeout: 1s, rise: 1, fall: 1 }";
    let _p = Proxy::start(&yaml(&[a.addr], Some(check)));
    wait_for("10 probes", || a.probes() >= 10);
    // Each probe's connection was reset, not closed: nothing lingers for 60 s.
    let after = time_wait_with(a.addr.port());
    assert!(
        after <= before,
        "{after} TIME_WAIT sockets, {before} before the probes"
    );
}

#[test]
fn bad_health_check_fields_are_refused_naming_the_field() {
    let a = CheckedBackend::start("a");
    let cases = [
        (
            "{ interval: 1ms }",
            "upstreams.default.health_check.interval",
        ),
        ("{ path: healthz }", "upstreams.default.health_check.path"),
        ("{ fall: 0 }", "upstreams.default.health_check.fall"),
        (
            "{ expect_status: \"500-200\" }",
            "upstreams.default.health_check.expect_status",
        ),
    ];
    for (check, field) in cases {
        let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        file.write_all(yaml(&[a.addr], Some(check)).as_bytes())
            .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_speedmimi"))
            .arg("--check")
            .arg("--config")
            .arg(file.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{check}: {err}");
        assert!(err.contains(&format!(": {field}: ")), "{check}: {err}");
    }
    let p = Proxy::start(&yaml(&[a.addr], None));
    let admin = p.admin();
    let r = admin.put(
        "/api/v1/config",
        &json!({"upstreams": {"default": {"health_check": {"rise": 1000}}}}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.json()["field"],
        "upstreams.default.health_check.rise",
        "{}",
        r.body
    );
    let config = admin.get_json("/api/v1/config");
    assert!(config["upstreams"]["default"].get("health_check").is_none());
    assert_eq!(a.probes(), 0, "the refused patch changed nothing");
}

#[test]
fn a_patch_turns_checks_on_and_off_without_dropping_connections() {
    let a = CheckedBackend::start("a");
    let b = CheckedBackend::start("b");
    let c = CheckedBackend::start("c");
    b.set(Mode::Error); // only its health endpoint fails
    let p = Proxy::start(&yaml(&[a.addr, b.addr], None));
    let admin = p.admin();
    let mut client = p.client();
    assert_eq!(client.get("/").status, 200);

    let shown = put(
        &admin,
        json!({"upstreams": {"default": {"health_check": {
            "interval": "100ms", "timeout": "1s", "rise": 1, "fall": 1, "expect_status": 200
        }}}}),
    );
    assert_eq!(
        shown["upstreams"]["default"]["health_check"]["expect_status"],
        200
    );
    // As written: defaults are not filled in.
    assert!(shown["upstreams"]["default"]["health_check"]
        .get("path")
        .is_none());
    wait_state(&admin, b.addr, "down");
    assert!(threads(p.pid())
        .iter()
        .any(|t| t.starts_with("speedmimi-heal")));
    // The connection opened before the change still serves, from a only.
    for _ in 0..10 {
        let r = client.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "a"), "{}", r.head);
    }
    let config = admin.get_json("/api/v1/config");
    assert_eq!(
        config["upstreams"]["default"]["health_check"]["interval"],
        "100ms"
    );

    // A backend added by a patch is probed; a removed one no longer is.
    put(
        &admin,
        json!({"upstreams": {"default": {"backends": [
            {"addr": a.addr.to_string()}, {"addr": c.addr.to_string()}
        ]}}}),
    );
    wait_for("c probed", || c.probes() > 0);
    wait_state(&admin, c.addr, "up");
    let probes = b.probes();
    thread::sleep(Duration::from_millis(500));
    assert!(
        b.probes() <= probes + 1,
        "b still probed: {probes} -> {}",
        b.probes()
    );

    // Removing the section: back to passive health only.
    put(
        &admin,
        json!({"upstreams": {"default": {
            "backends": [{"addr": a.addr.to_string()}, {"addr": b.addr.to_string()}],
            "health_check": null
        }}}),
    );
    wait_state(&admin, b.addr, "off");
    wait_for("b back in rotation", || {
        let r = client.get("/");
        assert_eq!(r.status, 200, "{}", r.head);
        r.text() == "b"
    });
    let probes = a.probes();
    thread::sleep(Duration::from_millis(300));
    assert!(a.probes() <= probes + 1, "a still probed");
}

#[test]
fn sighup_adds_changes_and_removes_the_check() {
    let a = CheckedBackend::start("a");
    let b = CheckedBackend::start("b");
    b.set(Mode::Error);
    let p = Proxy::start(&yaml(&[a.addr, b.addr], None));
    let admin = p.admin();
    p.rewrite_config(&yaml(
        &[a.addr, b.addr],
        Some("{ interval: 100ms, fall: 1, host: health.example }"),
    ));
    p.signal("HUP");
    wait_state(&admin, b.addr, "down");
    assert!(
        b.last_probe().contains("Host: health.example\r\n"),
        "{}",
        b.last_probe()
    );
    // A changed check probes the new path (the verdict carries over).
    p.rewrite_config(&yaml(
        &[a.addr, b.addr],
        Some("{ interval: 100ms, fall: 1, path: /other }"),
    ));
    p.signal("HUP");
    wait_for("the new path probed (200 from the id answer)", || {
        check_state(&admin, b.addr) == "up"
    });
    p.rewrite_config(&yaml(&[a.addr, b.addr], None));
    p.signal("HUP");
    wait_state(&admin, b.addr, "off");
}

#[test]
fn with_two_worker_processes_both_honour_the_down_state_and_each_backend_is_probed_once() {
    let a = CheckedBackend::start("a");
    let b = CheckedBackend::start("b");
    b.set(Mode::Error);
    let text =
        yaml(&[a.addr, b.addr], Some(FAST)).replace("workers: 1", "workers: 1\n  processes: 2");
    let p = Proxy::start(&text);
    let admin = p.admin();
    wait_state(&admin, b.addr, "down");
    let served = b.served();
    let per_process = |admin: &Admin| -> Vec<u64> {
        let stats = admin.get_json("/api/v1/stats/server");
        let mut sums = vec![0u64; 2];
        for w in stats["workers"].as_array().unwrap() {
            sums[w["process"].as_u64().unwrap() as usize] += w["requests"].as_u64().unwrap();
        }
        sums
    };
    let start = per_process(&admin);
    wait_for("requests in both worker processes", || {
        for _ in 0..10 {
            let mut c = p.client();
            let r = c.get("/");
            assert_eq!((r.status, r.text().as_str()), (200, "a"), "{}", r.head);
        }
        let now = per_process(&admin);
        now[0] > start[0] && now[1] > start[1]
    });
    assert_eq!(b.served(), served, "no worker sent b a request while down");
    // The master probes; the workers do not (they would triple the count).
    let counted: u64 = backend(&admin, b.addr)["active_check"]["probes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(
        b.probes() as u64 <= counted + 2,
        "b received {} probes, the prober sent {counted}",
        b.probes()
    );
}
