//! The process around the data plane: SIGTERM drains in-flight requests,
//! SIGHUP reloads the configuration without dropping connections, and
//! worker processes share the port and are restarted when they die.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    c.send(b"GET /slow/500 HTTP/1.1\r\nHost: a\r\n\r\n");
    wait_until("the request to reach the backend", || b.active() == 1);
    p.signal("TERM");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "a");
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits once drained");
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[test]
fn sigterm_exits_promptly_when_idle() {
    let b = Backend::start("a");
    let mut p = Cfg::new(&[b.addr]).start();
    let mut c = p.client();
    assert_eq!(c.get("/").status, 200);
    drop(c);
    p.signal("TERM");
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("an idle proxy exits on SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn sighup_reload_moves_traffic_without_dropping_the_connection() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let mut p = Cfg::new(&[a.addr]).start();
    let mut c = p.client();
    assert_eq!(c.get("/").text(), "a");
    p.rewrite_config(&Cfg::new(&[b.addr]).yaml());
    p.signal("HUP");
    // Same client connection: answers move to b once the reload applied.
    let mut moved = false;
    for _ in 0..200 {
        let r = c.get("/");
        assert_eq!(r.status, 200, "{}", r.head);
        if r.text() == "b" {
            moved = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(moved, "the reload never took effect");
    assert_eq!(c.get("/").text(), "b");
    p.assert_alive();
}

#[test]
fn sighup_with_an_invalid_file_keeps_the_running_configuration() {
    let a = Backend::start("a");
    let mut p = Cfg::new(&[a.addr]).start();
    let mut c = p.client();
    assert_eq!(c.get("/").text(), "a");
    p.rewrite_config("server: { listen: [oops\n");
    p.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    p.assert_alive();
    assert_eq!(c.get("/").text(), "a");
    assert_eq!(p.client().get("/").text(), "a");
}

fn two_process_yaml(b: &Backend) -> String {
    Cfg::new(&[b.addr])
        .yaml()
        .replace("workers: 1", "workers: 1\n  processes: 2")
}

#[test]
fn worker_processes_share_the_port() {
    let b = Backend::start("a");
    let p = Proxy::start(&two_process_yaml(&b));
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    for _ in 0..40 {
        let mut c = p.client();
        let r = c.get("/");
        assert_eq!(r.status, 200, "{}", r.head);
    }
    assert_eq!(b.requests(), 40);
}

#[test]
fn a_killed_worker_is_replaced_and_the_port_stays_open() {
    let b = Backend::start("a");
    let mut p = Proxy::start(&two_process_yaml(&b));
    wait_until("two worker processes", || children_of(p.pid()).len() == 2);
    let victim = children_of(p.pid())[0];
    signal(victim, "KILL");
    // kill(2) returns before the worker is gone; a connection the kernel
    // queued on its listener in between is reset with it (not our bug).
    wait_until("the killed worker is gone", || {
        !children_of(p.pid()).contains(&victim)
    });
    // Requests keep working (the other worker holds the port) ...
    for _ in 0..20 {
        let mut c = p.client();
        assert_eq!(c.get("/").status, 200);
    }
    // ... and the master starts a new worker.
    wait_until("a replacement worker", || {
        let kids = children_of(p.pid());
        kids.len() == 2 && !kids.contains(&victim)
    });
    p.assert_alive();
}

/// Status of `GET /api/v1/backends` on the admin API with a bearer token
/// (not /api/v1/health, which answers without one).
fn admin_status(p: &Proxy, token: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(p.admin_addr()).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /api/v1/backends HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"))
}

#[test]
fn sighup_changes_the_admin_token_of_the_running_admin_api() {
    let b = Backend::start("a");
    let with_token = |t: &str| {
        Cfg::new(&[b.addr]).yaml().replace(
            "admin:\n  listen: \"127.0.0.1:0\"\n",
            &format!("admin:\n  listen: \"127.0.0.1:0\"\n  token: {t}\n"),
        )
    };
    let mut p = Proxy::start(&with_token("first-secret"));
    assert_eq!(admin_status(&p, "first-secret"), 200);
    assert_eq!(admin_status(&p, "second-secret"), 401);
    p.rewrite_config(&with_token("second-secret"));
    p.signal("HUP");
    wait_until("the new token is accepted", || {
        admin_status(&p, "second-secret") == 200
    });
    assert_eq!(admin_status(&p, "first-secret"), 401);
    p.assert_alive();
}

#[test]
fn admin_token_file_is_read_at_start_and_again_on_sighup() {
    // A mounted Secret: the token file is re-read on SIGHUP (rotation);
    // one made unreadable is refused with the field named, the old token
    // kept.
    let b = Backend::start("a");
    let dir = std::env::temp_dir().join(format!("speedmimi-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let yaml = Cfg::new(&[b.addr]).yaml().replace(
        "admin:\n  listen: \"127.0.0.1:0\"\n",
        &format!(
            "admin:\n  listen: \"127.0.0.1:0\"\n  token_file: \"{}\"\n",
            file.display()
        ),
    );
    let mut p = Proxy::start(&yaml);
    assert_eq!(
        admin_status(&p, "from-a-file"),
        200,
        "the line end is not part of it"
    );
    assert_eq!(admin_status(&p, "rotated"), 401);
    std::fs::write(&file, "rotated").unwrap();
    p.signal("HUP");
    wait_until("the rotated token is accepted", || {
        admin_status(&p, "rotated") == 200
    });
    assert_eq!(admin_status(&p, "from-a-file"), 401);
    std::fs::remove_file(&file).unwrap();
    p.signal("HUP");
    wait_until("the reload error names admin.token_file", || {
        p.log().contains("admin.token_file")
    });
    assert_eq!(
        admin_status(&p, "rotated"),
        200,
        "the old token keeps serving"
    );
    p.assert_alive();
    let _ = std::fs::remove_dir_all(&dir);
}
