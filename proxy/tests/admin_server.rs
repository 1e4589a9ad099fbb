//! The admin API on the real in-process server (event loops, counter
//! board): snapshots reflect proxied traffic, and configuration changes
//! made through the API reach the loops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use speedmimi::admin;
use speedmimi::config::Config;
use speedmimi::control::board::Board;
use speedmimi::server::Server;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A keep-alive HTTP/1.1 backend answering every request with `id`.
fn backend(id: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    // Request head only: the test sends no bodies.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{id}",
                        id.len()
                    );
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One request through the proxy; returns the body (the backend's id).
fn through(proxy: SocketAddr) -> String {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply.split("\r\n\r\n").nth(1).unwrap().to_string()
}

/// One admin request; returns (status, body).
fn call(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    // A profile is binary; the JSON answers are text.
    let reply = String::from_utf8_lossy(&reply);
    let status = reply[9..12].parse().unwrap();
    let body = reply.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

fn json_of(admin: SocketAddr, path: &str) -> Value {
    let (status, body) = call(admin, "GET", path, "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The value of an unlabelled sample or of the first one with `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with([' ', '{']) && l.contains(labels)
        })
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no {name} {labels} in\n{text}"))
}

#[test]
fn admin_api_observes_and_reconfigures_the_running_server() {
    let a = backend("A");
    let b = backend("B");
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:0\", workers: 1 }}\n\
         upstreams:\n  app:\n    backends:\n      - {{ addr: \"{a}\" }}\n\
         routing:\n  default: {{ upstream: app, load_balancer: round_robin }}\n"
    );
    let (raw, config) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, &yaml).unwrap();
        Config::load(&path).unwrap()
    };
    let server = Server::start(raw, config, Board::in_process(), 0).unwrap();
    let proxy = server.local_addr;
    let handle = admin::spawn("127.0.0.1:0".parse().unwrap(), None, server.clone()).unwrap();
    let api = handle.local_addr();

    for _ in 0..10 {
        assert_eq!(through(proxy), "A");
    }
    let v = json_of(api, "/api/v1/backends?upstream=app");
    let first = &v["backends"][0];
    assert_eq!(first["address"], json!(a.to_string()));
    assert_eq!(first["health"], "up");
    assert_eq!(first["requests"], 10);
    assert_eq!(first["responses"]["2xx"], 10);

    let (_, text) = call(api, "GET", "/metrics", "");
    assert_eq!(metric(&text, "speedmimi_requests_total", ""), 10.0);
    let labels = format!("backend=\"{a}\",class=\"2xx\"");
    assert_eq!(
        metric(&text, "speedmimi_upstream_requests_total", &labels),
        10.0
    );
    let labels = format!("backend=\"{a}\",le=\"+Inf\"");
    assert_eq!(
        metric(
            &text,
            "speedmimi_upstream_response_duration_seconds_bucket",
            &labels
        ),
        10.0
    );

    // Add B: round robin now alternates.
    let body = format!(r#"{{"addr": "{b}"}}"#);
    let (status, reply) = call(api, "POST", "/api/v1/upstreams/app/backends", &body);
    assert_eq!(status, 201, "{reply}");
    let seen: Vec<String> = (0..6).map(|_| through(proxy)).collect();
    assert!(
        seen.iter().any(|s| s == "A") && seen.iter().any(|s| s == "B"),
        "{seen:?}"
    );

    // Switch the balancer with the seed's merge patch.
    let (status, reply) = call(
        api,
        "PUT",
        "/api/v1/config",
        r#"{"routing":{"default":{"load_balancer":"least_conn"}}}"#,
    );
    assert_eq!(status, 200, "{reply}");
    let v = json_of(api, "/api/v1/config");
    assert_eq!(v["routing"]["default"]["load_balancer"], "least_conn");

    // Remove A: everything goes to B.
    let path = format!("/api/v1/upstreams/app/backends/{a}");
    let (status, reply) = call(api, "DELETE", &path, "");
    assert_eq!(status, 200, "{reply}");
    for _ in 0..4 {
        assert_eq!(through(proxy), "B");
    }

    // A restart-only change is refused by the server itself.
    let (status, reply) = call(api, "PUT", "/api/v1/config", r#"{"server":{"workers":2}}"#);
    assert_eq!(status, 409, "{reply}");
    let v: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(v["field"], "server.workers");

    let v = json_of(api, "/api/v1/stats/server");
    assert_eq!(v["requests"], 20);
    assert_eq!(v["workers"].as_array().unwrap().len(), 1);
    assert_eq!(v["workers"][0]["requests"], 20);
    assert!(v["rss_bytes"].as_u64().unwrap() > 0);

    drop(handle);
    server.drain(Duration::ZERO);
    let _ = server.wait();
}

/// Starts the in-process server with one upstream of `backends`.
fn start_server(backends: &[SocketAddr], workers: usize) -> Arc<Server> {
    let list: String = backends
        .iter()
        .map(|b| format!("      - {{ addr: \"{b}\" }}\n"))
        .collect();
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:0\", workers: {workers} }}\n\
         upstreams:\n  app:\n    backends:\n{list}\
         routing:\n  default: {{ upstream: app }}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (raw, config) = Config::load(&path).unwrap();
    Server::start(raw, config, Board::in_process(), 0).unwrap()
}

#[test]
fn traffic_flows_while_a_profile_samples_the_event_loops() {
    // SIGPROF interrupts every thread 99 times a second: the loops must
    // take the interrupted system calls in their stride.
    let server = start_server(&[backend("A")], 2);
    let proxy = server.local_addr;
    let handle = admin::spawn("127.0.0.1:0".parse().unwrap(), None, server.clone()).unwrap();
    let api = handle.local_addr();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let done = done.clone();
        thread::spawn(move || {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) && n < 100_000 {
                assert_eq!(through(proxy), "A");
                n += 1;
            }
            n
        })
    };
    let (status, body) = call(api, "GET", "/debug/pprof/profile?seconds=1", "");
    done.store(true, std::sync::atomic::Ordering::Release);
    let sent = traffic.join().expect("every request answered 200");
    assert_eq!(status, 200, "{body}");
    assert!(sent > 0);
    let v = json_of(api, "/api/v1/stats/server");
    assert_eq!(v["requests"], sent);
    drop(handle);
    server.drain(Duration::ZERO);
    let _ = server.wait();
}
