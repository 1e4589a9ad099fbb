//! Upgrading the binary (SIGUSR2): the new process serves on the old one's
//! listening sockets, the old one drains and exits, and under load no
//! request fails, no connection is refused and the admin API answers
//! throughout. A new binary that cannot start leaves the old one serving.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Kills the process that took over (not the harness's child) at the end.
struct Reaper(Option<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            signal(pid, "KILL");
        }
    }
}

/// What one client thread saw: requests answered 200, and every failure.
type Tally = (u64, Vec<String>);

/// Keep-alive GETs until `stop`; reconnects when an answer says close.
/// With `fresh`, a new connection for every request.
fn clients(addr: SocketAddr, stop: Arc<AtomicBool>, fresh: bool) -> JoinHandle<Tally> {
    thread::spawn(move || {
        let (mut ok, mut failures) = (0u64, Vec::new());
        let mut conn: Option<Client> = None;
        while !stop.load(Ordering::Relaxed) {
            let mut c = match conn.take() {
                Some(c) => c,
                None => match Client::try_connect(addr) {
                    Ok(c) => c,
                    Err(e) => {
                        failures.push(format!("connect: {e}"));
                        continue;
                    }
                },
            };
            let answer = c
                .try_send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .and_then(|()| c.try_read_response(false));
            match answer {
                Ok(r) if r.status == 200 => {
                    ok += 1;
                    if !fresh && !r.says_close() {
                        conn = Some(c);
                    }
                }
                Ok(r) => failures.push(format!("status {}", r.status)),
                Err(e) => failures.push(format!("request: {e}")),
            }
        }
        (ok, failures)
    })
}

/// Admin health checks until `stop`.
fn admin_checks(admin: Admin, stop: Arc<AtomicBool>) -> JoinHandle<Tally> {
    thread::spawn(move || {
        let (mut ok, mut failures) = (0u64, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match std::panic::catch_unwind(|| admin.get("/api/v1/health").status) {
                Ok(200) => ok += 1,
                Ok(s) => failures.push(format!("admin status {s}")),
                Err(_) => failures.push("admin request failed".into()),
            }
            thread::sleep(Duration::from_millis(5));
        }
        (ok, failures)
    })
}

fn swap_under_load(extra_server: &str) {
    let b = Backend::start("a");
    let mut cfg = Cfg::new(&[b.addr]);
    cfg.extra_server = extra_server.into();
    let mut p = cfg.start();
    let admin_addr = p.admin_addr();
    let old_pid = p.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads: Vec<JoinHandle<Tally>> = (0..4)
        .map(|i| clients(p.addr, stop.clone(), i == 3))
        .collect();
    threads.push(admin_checks(p.admin(), stop.clone()));
    thread::sleep(Duration::from_millis(300));

    p.signal("USR2");
    let line = p
        .wait_line("upgraded: pid ", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no `upgraded:` line; log:\n{}", p.log()));
    let new_pid: u32 = line["upgraded: pid ".len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the new pid");
    let _reaper = Reaper(Some(new_pid));
    assert_ne!(new_pid, old_pid);
    assert!(
        line.ends_with(&format!("in place of pid {old_pid}")),
        "{line}"
    );
    let status = p
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the old process did not drain and exit; log:\n{}", p.log()));
    assert!(status.success(), "old process: {status}");
    // Load goes on against the new process alone for a while.
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, (ok, failures)) in tallies.iter().enumerate() {
        assert!(*ok > 0, "thread {i} got no answer at all");
        assert!(
            failures.is_empty(),
            "thread {i}: {} failures: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
    // The same addresses, now the new process's.
    let mut c = Client::connect(p.addr);
    assert_eq!(c.get("/").status, 200);
    let health = Admin { addr: admin_addr }.get("/api/v1/health");
    assert_eq!(health.status, 200);
    assert!(
        std::path::Path::new(&format!("/proc/{new_pid}")).exists(),
        "the new process runs"
    );
}

#[test]
fn sigusr2_swaps_the_binary_under_load_without_a_failed_request() {
    swap_under_load("");
}

#[test]
fn sigusr2_swaps_master_and_worker_processes_without_a_failed_request() {
    swap_under_load("  processes: 2\n");
}

#[test]
fn a_new_binary_that_cannot_start_leaves_the_old_one_serving() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    let _ = p.admin_addr();
    // The new process reads the file on disk: make it fail there.
    p.rewrite_config("server: { listen: nope");
    p.signal("USR2");
    wait_until("the upgrade to fail", || p.log().contains("upgrade failed"));
    p.assert_alive();
    assert_still_serves(&mut p);
    assert_eq!(p.admin().get("/api/v1/health").status, 200);
    // And a later upgrade, once the file is right again, still works.
    p.rewrite_config(&Cfg::new(&[b.addr]).yaml());
    p.signal("USR2");
    let line = p.wait_line("upgraded: pid ", Duration::from_secs(20));
    let new_pid = line
        .as_deref()
        .and_then(|l| l["upgraded: pid ".len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok());
    let _reaper = Reaper(new_pid);
    assert!(
        new_pid.is_some(),
        "no upgrade after the fix; log:\n{}",
        p.log()
    );
    assert!(
        p.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process exits"
    );
}

#[test]
fn systemd_hears_ready_and_the_new_main_pid() {
    // Type=notify with NotifyAccess=all: the unit follows the process that
    // took over instead of taking the old one's exit for the service's.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let b = Backend::start("a");
    let env = format!("NOTIFY_SOCKET={}", path.display());
    let mut p = Proxy::start_under(&["env", &env], &Cfg::new(&[b.addr]).yaml());
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 at start");
    assert_eq!(&buf[..n], b"READY=1\n");
    p.signal("USR2");
    let n = socket
        .recv(&mut buf)
        .expect("a message from the new process");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let pid: u32 = text
        .strip_prefix("READY=1\nMAINPID=")
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"));
    let _reaper = Reaper(Some(pid));
    assert_ne!(pid, p.pid());
    assert!(
        p.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process exits"
    );
}
