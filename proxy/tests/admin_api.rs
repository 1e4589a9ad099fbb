//! The admin API over real sockets: `admin::spawn` against a test control
//! plane (a configuration in a mutex and canned snapshots), a raw HTTP/1.1
//! client, one behaviour per test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use speedmimi::admin::{self, AdminHandle};
use speedmimi::config::{validate, Config, RawConfig};
use speedmimi::control::{
    ApplyError, BackendSnapshot, ControlPlane, Counters, Histogram, ServerSnapshot, WorkerSnapshot,
    LATENCY_BUCKETS,
};

const IO_TIMEOUT: Duration = Duration::from_secs(20);
const TOKEN: &str = "s3cret-token";

const YAML: &str = "\
server: { listen: \"127.0.0.1:8080\", workers: 2 }
upstreams:
  app:
    backends:
      - { addr: \"127.0.0.1:9000\", weight: 5 }
      - { addr: \"127.0.0.1:9001\", weight: 1 }
  api:
    backends:
      - { addr: \"127.0.0.1:9100\" }
routing:
  default: { upstream: app, load_balancer: round_robin }
";

// ------------------------------------------------------------ test plane --

/// Holds the configuration in force; `apply` refuses a change of
/// `server.workers` as the real server does (restart-only).
struct TestPlane {
    current: Mutex<(RawConfig, Config)>,
    applied: Mutex<usize>,
}

impl TestPlane {
    fn new(yaml: &str) -> Arc<TestPlane> {
        let raw = RawConfig::from_yaml_str(yaml, "test.yaml").expect("test yaml");
        let config = validate(raw.clone(), "test.yaml", Some(yaml)).expect("valid test yaml");
        Arc::new(TestPlane {
            current: Mutex::new((raw, config)),
            applied: Mutex::new(0),
        })
    }

    fn config(&self) -> Config {
        self.current.lock().unwrap().1.clone()
    }

    fn applied(&self) -> usize {
        *self.applied.lock().unwrap()
    }
}

fn histogram(seed: u64) -> Histogram {
    let mut counts = vec![0; LATENCY_BUCKETS.len() + 1];
    counts[1] = seed;
    counts[4] = 2 * seed;
    counts[LATENCY_BUCKETS.len()] = 1;
    Histogram {
        counts,
        sum_seconds: 6.5,
    }
}

fn counters(scale: u64) -> Counters {
    Counters {
        connections_current: 3 * scale as i64,
        connections_total: 100 * scale,
        connections_refused: scale,
        requests: 1000 * scale,
        bytes_in: 50_000 * scale,
        bytes_out: 90_000 * scale,
        upstream_connects: 10 * scale,
        upstream_reuses: 990 * scale,
        upstream_retries: scale,
        upstream_queued: scale,
        queue_timeouts: 0,
        slow_request_bodies: 0,
        slow_response_readers: 0,
        accept_failures: 0,
        access_log_dropped: 0,
        errors: vec![("bad_request", 400, 2 * scale), ("bad_gateway", 502, scale)],
        tls: Default::default(),
    }
}

impl ControlPlane for TestPlane {
    fn raw_config(&self) -> RawConfig {
        self.current.lock().unwrap().0.clone()
    }

    fn apply(&self, raw: RawConfig, config: Config) -> Result<(), ApplyError> {
        let mut current = self.current.lock().unwrap();
        if current.1.server.workers != config.server.workers {
            return Err(ApplyError {
                field: Some("server.workers".into()),
                message: "the number of event loops cannot change while running; restart the proxy"
                    .into(),
            });
        }
        *current = (raw, config);
        *self.applied.lock().unwrap() += 1;
        Ok(())
    }

    fn server(&self) -> ServerSnapshot {
        let workers: Vec<WorkerSnapshot> = (0..2)
            .map(|i| WorkerSnapshot {
                process: i,
                pid: 4000 + i as u32,
                event_loop: 0,
                counters: counters(i as u64 + 1),
            })
            .collect();
        let mut total = counters(3);
        total.connections_current = 9;
        ServerSnapshot {
            uptime_seconds: 12.5,
            requests_per_second: 250.0,
            rss_bytes: 8 << 20,
            processes: 2,
            worker_restarts: 1,
            total,
            workers,
        }
    }

    fn backends(&self, upstream: &str) -> Option<Vec<BackendSnapshot>> {
        let current = self.current.lock().unwrap();
        let u = current.1.upstreams.get(upstream)?;
        let states = ["up", "down", "draining"];
        Some(
            u.backends
                .iter()
                .enumerate()
                .map(|(i, b)| BackendSnapshot {
                    addr: b.addr.to_string(),
                    weight: b.weight,
                    health: states[i % states.len()],
                    active: i as i64,
                    requests: 40 + i as u64,
                    failures: i as u64,
                    latency_ewma_ms: 1.5,
                    responses: [0, 30, 1, 5, 4 + i as u64],
                    connect_latency: histogram(1),
                    response_latency: histogram(3),
                    active_health: Default::default(),
                })
                .collect(),
        )
    }

    fn upstreams(&self) -> Vec<String> {
        self.current
            .lock()
            .unwrap()
            .1
            .upstreams
            .keys()
            .cloned()
            .collect()
    }
}

fn start() -> (Arc<TestPlane>, AdminHandle) {
    let plane = TestPlane::new(YAML);
    let handle = admin::spawn("127.0.0.1:0".parse().unwrap(), None, plane.clone())
        .expect("admin API starts");
    (plane, handle)
}

// ---------------------------------------------------------------- client --

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request with `Connection: close` and reads the whole reply.
fn send(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect to the admin API");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request = head.replace('\n', "\r\n").into_bytes();
    request.extend_from_slice(body);
    // The server may answer (413) and close before reading everything.
    let _ = s.write_all(&request);
    read_reply(&mut s)
}

fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // SIGPROF from a profile test interrupts reads with a timeout set.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!("reading the reply: {e} (got {} bytes)", raw.len()),
        }
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no reply head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &str) -> Reply {
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\nHost: {addr}\n{auth}Content-Type: application/json\n\
         Content-Length: {}\nConnection: close\n\n",
        body.len()
    );
    send(addr, &head, body.as_bytes())
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, None, "")
}

fn put(addr: SocketAddr, path: &str, body: &str) -> Reply {
    request(addr, "PUT", path, None, body)
}

fn assert_error(r: &Reply, status: u16, field: Option<&str>, words: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let message = v["error"].as_str().expect("error message");
    assert!(message.contains(words), "expected {words:?} in {message:?}");
    match field {
        Some(f) => assert_eq!(v["field"], json!(f), "{v}"),
        None => assert!(v.get("field").is_none(), "no field expected: {v}"),
    }
}

// ------------------------------------------------------------- endpoints --

#[test]
fn health_answers_ok() {
    let (_, admin) = start();
    let r = get(admin.local_addr(), "/api/v1/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({ "status": "ok" }));
}

#[test]
fn backends_of_one_upstream_show_every_field() {
    let (_, admin) = start();
    let r = get(admin.local_addr(), "/api/v1/backends?upstream=app");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["upstream"], "app");
    let list = v["backends"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        list[0],
        json!({
            "address": "127.0.0.1:9000", "weight": 5, "health": "up", "active": 0,
            "requests": 40, "failures": 0, "latency_ewma_ms": 1.5,
            "responses": { "1xx": 0, "2xx": 30, "3xx": 1, "4xx": 5, "5xx": 4 },
            "active_check": {
                "state": "off", "consecutive_successes": 0, "consecutive_failures": 0,
                "last_status": null, "last_result": null, "last_probe_unix_ms": null,
                "probes": { "ok": 0, "connect_failed": 0, "timeout": 0, "bad_status": 0,
                            "malformed_response": 0 },
            },
        })
    );
    assert_eq!(list[1]["health"], "down");
    assert_eq!(list[1]["weight"], 1);
}

#[test]
fn backends_without_query_list_every_upstream() {
    let (_, admin) = start();
    let v = get(admin.local_addr(), "/api/v1/backends").json();
    let names: Vec<&str> = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["upstream"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "api"]);
    assert_eq!(
        v["upstreams"][1]["backends"][0]["address"],
        "127.0.0.1:9100"
    );
}

#[test]
fn unknown_upstream_is_404_naming_the_parameter() {
    let (_, admin) = start();
    let r = get(admin.local_addr(), "/api/v1/backends?upstream=nope");
    assert_error(&r, 404, Some("upstream"), "no upstream named \"nope\"");
    assert!(r.json()["error"].as_str().unwrap().contains("app, api"));
}

#[test]
fn server_stats_have_totals_and_per_worker_rows() {
    let (_, admin) = start();
    let r = get(admin.local_addr(), "/api/v1/stats/server");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        v["connections"],
        json!({ "current": 9, "total": 300, "refused": 3 })
    );
    assert_eq!(v["requests"], 3000);
    assert_eq!(v["requests_per_second"], 250.0);
    assert_eq!(v["bytes"], json!({ "in": 150_000, "out": 270_000 }));
    assert_eq!(
        v["errors"]["bad_request"],
        json!({ "status": 400, "count": 6 })
    );
    assert_eq!(
        v["errors"]["bad_gateway"],
        json!({ "status": 502, "count": 3 })
    );
    assert_eq!(v["uptime_seconds"], 12.5);
    assert_eq!(v["rss_bytes"], 8 << 20);
    assert_eq!(v["worker_restarts"], 1);
    assert_eq!(v["processes"], 2);
    assert_eq!(v["upstream"]["retries"], 3);
    let workers = v["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[1]["process"], 1);
    assert_eq!(workers[1]["pid"], 4001);
    assert_eq!(workers[1]["loop"], 0);
    assert_eq!(workers[1]["requests"], 2000);
    assert_eq!(workers[1]["connections"]["current"], 6);
}

#[test]
fn config_is_shown_as_json() {
    let (_, admin) = start();
    let r = get(admin.local_addr(), "/api/v1/config");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["routing"]["default"]["load_balancer"], "round_robin");
    assert_eq!(v["upstreams"]["app"]["backends"][0]["weight"], 5);
    assert_eq!(v["server"]["workers"], 2);
}

#[test]
fn put_merge_patch_switches_the_balancer() {
    let (plane, admin) = start();
    let r = put(
        admin.local_addr(),
        "/api/v1/config",
        r#"{"routing":{"default":{"load_balancer":"weight"}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["routing"]["default"]["load_balancer"], "weight");
    assert_eq!(
        r.json()["upstreams"]["api"]["backends"][0]["addr"],
        "127.0.0.1:9100"
    );
    assert_eq!(plane.applied(), 1);
    assert_eq!(
        plane.config().routing["default"].load_balancer,
        speedmimi::config::Algorithm::Weight
    );
    let v = get(admin.local_addr(), "/api/v1/config").json();
    assert_eq!(v["routing"]["default"]["load_balancer"], "weight");
}

#[test]
fn merge_patch_null_removes_a_field() {
    let (plane, admin) = start();
    let r = put(
        admin.local_addr(),
        "/api/v1/config",
        r#"{"routing":{"default":{"load_balancer":null}},"upstreams":{"api":{"retries":0}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(
        v["routing"]["default"].get("load_balancer").is_none(),
        "{v}"
    );
    assert_eq!(v["upstreams"]["api"]["retries"], 0);
    assert_eq!(plane.config().upstreams["api"].retries, 0);
}

#[test]
fn invalid_value_is_400_naming_the_field_and_changes_nothing() {
    let (plane, admin) = start();
    let before = get(admin.local_addr(), "/api/v1/config").json();
    let r = put(
        admin.local_addr(),
        "/api/v1/config",
        r#"{"routing":{"default":{"load_balancer":"wieght"}}}"#,
    );
    assert_error(&r, 400, Some("routing.default.load_balancer"), "wieght");
    assert_eq!(plane.applied(), 0);
    assert_eq!(get(admin.local_addr(), "/api/v1/config").json(), before);
}

#[test]
fn merge_patch_errors_name_their_field() {
    let (plane, admin) = start();
    let cases = [
        (r#"{"server":{"max_conn":"many"}}"#, "server.max_conn"),
        (r#"{"server":{"tiemout":"1s"}}"#, "server.tiemout"),
        (
            r#"{"routing":{"default":{"upstream":"nope"}}}"#,
            "routing.default.upstream",
        ),
        (
            r#"{"upstreams":{"app":{"backends":[{"addr":"127.0.0.1:1","weight":0}]}}}"#,
            "upstreams.app.backends[0].weight",
        ),
        (
            r#"{"server":{"idle_timeout":"soon"}}"#,
            "server.idle_timeout",
        ),
    ];
    for (patch, field) in cases {
        let r = put(admin.local_addr(), "/api/v1/config", patch);
        assert_eq!(r.status, 400, "{patch}: {}", r.text());
        assert_eq!(r.json()["field"], json!(field), "{patch}");
    }
    assert_eq!(plane.applied(), 0);
}

#[test]
fn bad_json_is_400_without_a_field() {
    let (plane, admin) = start();
    let r = put(admin.local_addr(), "/api/v1/config", r#"{"routing": "#);
    assert_error(&r, 400, None, "not valid JSON");
    let r = put(admin.local_addr(), "/api/v1/config", "[1, 2]");
    assert_error(&r, 400, None, "JSON object");
    assert_eq!(plane.applied(), 0);
}

#[test]
fn change_the_server_refuses_is_409_and_changes_nothing() {
    let (plane, admin) = start();
    let r = put(
        admin.local_addr(),
        "/api/v1/config",
        r#"{"server":{"workers":3}}"#,
    );
    assert_error(&r, 409, Some("server.workers"), "restart");
    assert_eq!(plane.config().server.workers, 2);
}

#[test]
fn add_backend_applies_a_new_configuration() {
    let (plane, admin) = start();
    let r = request(
        admin.local_addr(),
        "POST",
        "/api/v1/upstreams/app/backends",
        None,
        r#"{"addr": "127.0.0.1:9002", "weight": 3}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({ "upstream": "app", "backends": [
            { "addr": "127.0.0.1:9000", "weight": 5 },
            { "addr": "127.0.0.1:9001", "weight": 1 },
            { "addr": "127.0.0.1:9002", "weight": 3 },
        ]})
    );
    let backends = &plane.config().upstreams["app"].backends;
    assert_eq!(backends[2].addr, "127.0.0.1:9002".parse().unwrap());
    let v = get(admin.local_addr(), "/api/v1/backends?upstream=app").json();
    assert_eq!(v["backends"][2]["address"], "127.0.0.1:9002");
}

#[test]
fn add_backend_weight_is_optional() {
    let (plane, admin) = start();
    let r = request(
        admin.local_addr(),
        "POST",
        "/api/v1/upstreams/api/backends",
        None,
        r#"{"addr": "127.0.0.1:9101"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(plane.config().upstreams["api"].backends.len(), 2);
}

#[test]
fn add_backend_refusals_name_the_field() {
    let (plane, admin) = start();
    let post = |path: &str, body: &str| request(admin.local_addr(), "POST", path, None, body);
    let path = "/api/v1/upstreams/app/backends";
    assert_error(
        &post(path, r#"{"addr": "nowhere"}"#),
        400,
        Some("upstreams.app.backends[2].addr"),
        "",
    );
    assert_error(
        &post(path, r#"{"addr": "127.0.0.1:9002", "weight": 0}"#),
        400,
        Some("upstreams.app.backends[2].weight"),
        "",
    );
    assert_error(
        &post(path, r#"{"addr": "127.0.0.1:9000"}"#),
        400,
        Some("upstreams.app.backends[2].addr"),
        "duplicate",
    );
    assert_error(
        &post(path, r#"{"weight": 2}"#),
        400,
        Some("addr"),
        "missing field",
    );
    assert_error(
        &post(path, r#"{"addr": "127.0.0.1:9002", "wieght": 2}"#),
        400,
        Some("wieght"),
        "unknown field",
    );
    assert_error(&post(path, r#"{"addr": "#), 400, None, "not valid JSON");
    assert_error(
        &post(
            "/api/v1/upstreams/nope/backends",
            r#"{"addr": "127.0.0.1:9002"}"#,
        ),
        404,
        Some("upstream"),
        "no upstream named",
    );
    assert_eq!(plane.applied(), 0);
}

#[test]
fn remove_backend_applies_a_new_configuration() {
    let (plane, admin) = start();
    let r = request(
        admin.local_addr(),
        "DELETE",
        "/api/v1/upstreams/app/backends/127.0.0.1:9000",
        None,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({ "upstream": "app", "backends": [{ "addr": "127.0.0.1:9001", "weight": 1 }] })
    );
    assert_eq!(plane.config().upstreams["app"].backends.len(), 1);
}

#[test]
fn remove_backend_refusals() {
    let (plane, admin) = start();
    let delete = |path: &str| request(admin.local_addr(), "DELETE", path, None, "");
    assert_error(
        &delete("/api/v1/upstreams/app/backends/127.0.0.1:9999"),
        404,
        Some("addr"),
        "no backend 127.0.0.1:9999",
    );
    assert_error(
        &delete("/api/v1/upstreams/nope/backends/127.0.0.1:9000"),
        404,
        Some("upstream"),
        "no upstream",
    );
    // The last backend of an upstream: the validator refuses an empty list.
    assert_error(
        &delete("/api/v1/upstreams/api/backends/127.0.0.1:9100"),
        400,
        Some("upstreams.api.backends"),
        "",
    );
    assert_eq!(plane.applied(), 0);
}

// ---------------------------------------------------------------- errors --

#[test]
fn unknown_path_is_404() {
    let (_, admin) = start();
    for path in ["/", "/api/v1/nope", "/api/v1/health/extra", "/metricsx"] {
        assert_error(&get(admin.local_addr(), path), 404, None, "no endpoint");
    }
}

#[test]
fn wrong_method_is_405_with_allow() {
    let (_, admin) = start();
    let cases = [
        ("POST", "/api/v1/health", "GET"),
        ("DELETE", "/api/v1/config", "GET, PUT"),
        ("PUT", "/metrics", "GET"),
        ("GET", "/api/v1/upstreams/app/backends", "POST"),
        (
            "POST",
            "/api/v1/upstreams/app/backends/127.0.0.1:9000",
            "DELETE",
        ),
    ];
    for (method, path, allow) in cases {
        let r = request(admin.local_addr(), method, path, None, "");
        assert_error(&r, 405, None, "not allowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn declared_body_over_1_mib_is_413_before_reading() {
    let (plane, admin) = start();
    let head = format!(
        "PUT /api/v1/config HTTP/1.1\nHost: localhost\nContent-Type: application/json\n\
         Content-Length: {}\nConnection: close\n\n",
        admin::MAX_BODY + 1
    );
    // Only the head is sent: the answer must not wait for the body.
    let r = send(admin.local_addr(), &head, b"");
    assert_error(&r, 413, None, "over 1048576 bytes");
    assert_eq!(plane.applied(), 0);
}

#[test]
fn chunked_body_over_1_mib_is_413_while_reading() {
    let (plane, admin) = start();
    let head = "PUT /api/v1/config HTTP/1.1\nHost: localhost\nContent-Type: application/json\n\
                Transfer-Encoding: chunked\nConnection: close\n\n";
    // 1 MiB of valid chunks, then more: refused once past the limit.
    let mut body = Vec::new();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..17 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let r = send(admin.local_addr(), head, &body);
    assert_error(&r, 413, None, "over 1048576 bytes");
    assert_eq!(plane.applied(), 0);
}

#[test]
fn body_just_under_the_limit_is_read() {
    let (plane, admin) = start();
    let patch = r#"{"routing":{"default":{"load_balancer":"weight"}}}"#;
    let body = format!("{patch}{}", " ".repeat(admin::MAX_BODY - patch.len()));
    let r = put(admin.local_addr(), "/api/v1/config", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(plane.applied(), 1);
}

// -------------------------------------------------------------- security --

#[test]
fn non_loopback_listen_without_token_refuses_to_start() {
    let plane = TestPlane::new(YAML);
    let e = admin::spawn("0.0.0.0:0".parse().unwrap(), None, plane.clone())
        .err()
        .expect("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("admin.token"), "{e}");
    let e = admin::spawn("127.0.0.1:0".parse().unwrap(), Some(" ".into()), plane)
        .err()
        .expect("empty token refused");
    assert!(e.to_string().contains("empty"), "{e}");
}

fn start_with_token() -> (Arc<TestPlane>, AdminHandle) {
    let yaml = YAML.replace(
        "upstreams:",
        &format!("admin: {{ listen: \"127.0.0.1:9091\", token: {TOKEN} }}\nupstreams:"),
    );
    let plane = TestPlane::new(&yaml);
    let admin = admin::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Some(TOKEN.into()),
        plane.clone(),
    )
    .unwrap();
    (plane, admin)
}

#[test]
fn with_a_token_every_request_needs_it() {
    let (plane, admin) = start_with_token();
    let addr = admin.local_addr();
    let paths = [
        ("POST", "/api/v1/health"),
        ("GET", "/api/v1/backends"),
        ("GET", "/api/v1/config"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/nope"),
        ("PUT", "/api/v1/config"),
        ("DELETE", "/api/v1/upstreams/app/backends/127.0.0.1:9000"),
    ];
    for (method, path) in paths {
        for auth in [
            None,
            Some("wrong"),
            Some("s3cret-toke"),
            Some("s3cret-token2"),
        ] {
            let r = request(addr, method, path, auth, "{}");
            assert_error(&r, 401, None, "token");
            let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
    }
    let head = "GET /api/v1/config HTTP/1.1\nHost: a\nAuthorization: Basic czNjcmV0\n\
                Connection: close\n\n";
    assert_eq!(send(addr, head, b"").status, 401);
    assert_eq!(plane.applied(), 0);
    let r = request(addr, "GET", "/api/v1/config", Some(TOKEN), "");
    assert_eq!(r.status, 200);
    let head = format!("GET /api/v1/config HTTP/1.1\nHost: a\nAuthorization: bearer {TOKEN}\nConnection: close\n\n");
    assert_eq!(
        send(addr, &head, b"").status,
        200,
        "scheme is case-insensitive"
    );
}

#[test]
fn liveness_answers_without_the_token_and_says_nothing_else() {
    // Probes (Kubernetes httpGet, a load balancer's check) cannot send a
    // secret: GET /api/v1/health needs none, and tells only "ok".
    let (_, admin) = start_with_token();
    let addr = admin.local_addr();
    for auth in [None, Some("wrong")] {
        let r = request(addr, "GET", "/api/v1/health", auth, "");
        assert_eq!(r.status, 200, "{}", r.text());
        let body: Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(body, json!({ "status": "ok" }));
    }
    // Nothing beside it: a path under it, or the metrics, still need it.
    for path in ["/api/v1/health/", "/api/v1/healthz", "/metrics"] {
        assert_eq!(request(addr, "GET", path, None, "").status, 401, "{path}");
    }
}

#[test]
fn config_never_shows_the_token() {
    let (_, admin) = start_with_token();
    let r = request(admin.local_addr(), "GET", "/api/v1/config", Some(TOKEN), "");
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(TOKEN), "{}", r.text());
    assert_eq!(r.json()["admin"]["token"], "<redacted>");
    // The patch's answer is redacted too.
    let r = request(
        admin.local_addr(),
        "PUT",
        "/api/v1/config",
        Some(TOKEN),
        r#"{"routing":{"default":{"load_balancer":"weight"}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains(TOKEN));
}

#[test]
fn sending_back_the_redacted_placeholder_is_refused() {
    let (plane, admin) = start_with_token();
    let shown = request(admin.local_addr(), "GET", "/api/v1/config", Some(TOKEN), "").text();
    let r = request(
        admin.local_addr(),
        "PUT",
        "/api/v1/config",
        Some(TOKEN),
        &shown,
    );
    assert_error(&r, 400, Some("admin.token"), "placeholder");
    assert_eq!(plane.applied(), 0);
    // Leaving the token out of the whole document keeps it.
    let mut v: Value = serde_json::from_str(&shown).unwrap();
    v["admin"].as_object_mut().unwrap().remove("token");
    let r = request(
        admin.local_addr(),
        "PUT",
        "/api/v1/config",
        Some(TOKEN),
        &v.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(admin.local_addr(), "GET", "/api/v1/health", Some(TOKEN), "");
    assert_eq!(r.status, 200);
}

#[test]
fn a_token_changed_by_a_patch_is_the_one_required_next() {
    let (_, admin) = start_with_token();
    let addr = admin.local_addr();
    let r = request(
        addr,
        "PUT",
        "/api/v1/config",
        Some(TOKEN),
        r#"{"admin":{"token":"n3w"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        request(addr, "GET", "/api/v1/backends", Some(TOKEN), "").status,
        401
    );
    assert_eq!(
        request(addr, "GET", "/api/v1/backends", Some("n3w"), "").status,
        200
    );
}

// ------------------------------------------------------------ cross-site --

/// A request with the given Host and Content-Type (either left out when
/// `None`), as a browser on another site could send it.
fn from_page(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
    content_type: Option<&str>,
    auth: Option<&str>,
    body: &str,
) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\n");
    if let Some(h) = host {
        head += &format!("Host: {h}\n");
    }
    if let Some(t) = content_type {
        head += &format!("Content-Type: {t}\n");
    }
    if let Some(t) = auth {
        head += &format!("Authorization: Bearer {t}\n");
    }
    head += &format!("Content-Length: {}\nConnection: close\n\n", body.len());
    send(addr, &head, body.as_bytes())
}

const NEW_BACKEND: &str = r#"{"addr": "127.0.0.1:9002"}"#;
const BACKENDS: &str = "/api/v1/upstreams/app/backends";

fn app_backends(addr: SocketAddr) -> Value {
    let r = get(addr, "/api/v1/backends?upstream=app");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["backends"].clone()
}

#[test]
fn a_cross_site_text_plain_post_is_415_and_adds_no_backend() {
    let (plane, admin) = start();
    let addr = admin.local_addr();
    let host = addr.to_string();
    let before = app_backends(addr);
    // What an HTML form (or fetch without preflight) can send.
    for content_type in [
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let r = from_page(
            addr,
            "POST",
            BACKENDS,
            Some(&host),
            content_type,
            None,
            NEW_BACKEND,
        );
        assert_error(&r, 415, None, "application/json");
        let r = from_page(
            addr,
            "PUT",
            "/api/v1/config",
            Some(&host),
            content_type,
            None,
            r#"{"routing":{"default":{"load_balancer":"weight"}}}"#,
        );
        assert_error(&r, 415, None, "application/json");
    }
    assert_eq!(plane.applied(), 0);
    assert_eq!(app_backends(addr), before);
    assert_eq!(plane.config().upstreams["app"].backends.len(), 2);
    // JSON, whatever its case and parameters, is taken.
    let r = from_page(
        addr,
        "POST",
        BACKENDS,
        Some(&host),
        Some("Application/JSON; charset=utf-8"),
        None,
        NEW_BACKEND,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(plane.config().upstreams["app"].backends.len(), 3);
}

#[test]
fn a_request_for_another_host_is_421_and_changes_nothing() {
    let (plane, admin) = start();
    let addr = admin.local_addr();
    let before = app_backends(addr);
    let port = addr.port();
    // A DNS-rebound page sends its own name, with or without the port.
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("0.0.0.0:{port}"),
    ] {
        let json = Some("application/json");
        let r = from_page(addr, "POST", BACKENDS, Some(&host), json, None, NEW_BACKEND);
        assert_error(&r, 421, None, "loopback");
        let r = from_page(addr, "GET", "/api/v1/config", Some(&host), None, None, "");
        assert_error(&r, 421, None, "DNS rebinding");
        let r = from_page(addr, "GET", "/metrics", Some(&host), None, None, "");
        assert_eq!(r.status, 421, "{host}: {}", r.text());
    }
    let r = from_page(addr, "GET", "/api/v1/health", None, None, None, "");
    assert_error(&r, 421, None, "no Host");
    assert_eq!(plane.applied(), 0);
    assert_eq!(app_backends(addr), before);
}

#[test]
fn loopback_hosts_are_accepted() {
    let (plane, admin) = start();
    let addr = admin.local_addr();
    let port = addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("admin.localhost:{port}"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ] {
        let r = from_page(addr, "GET", "/api/v1/health", Some(&host), None, None, "");
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    let json = Some("application/json");
    for (i, host) in [format!("localhost:{port}"), format!("127.0.0.1:{port}")]
        .iter()
        .enumerate()
    {
        let body = format!(r#"{{"addr": "127.0.0.1:{}"}}"#, 9002 + i);
        let r = from_page(addr, "POST", BACKENDS, Some(host), json, None, &body);
        assert_eq!(r.status, 201, "{host}: {}", r.text());
    }
    assert_eq!(plane.applied(), 2);
    // A DELETE has no body, so needs no Content-Type.
    let path = format!("{BACKENDS}/127.0.0.1:9003");
    let r = from_page(
        addr,
        "DELETE",
        &path,
        Some(&format!("localhost:{port}")),
        None,
        None,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn with_a_token_any_host_is_served_but_writes_still_need_json() {
    let (plane, admin) = start_with_token();
    let addr = admin.local_addr();
    let json = Some("application/json");
    for host in ["evil.example", "proxy.internal:9091", "10.0.0.7"] {
        let r = from_page(
            addr,
            "GET",
            "/api/v1/backends",
            Some(host),
            None,
            Some(TOKEN),
            "",
        );
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        // The token still decides.
        let r = from_page(addr, "GET", "/api/v1/backends", Some(host), None, None, "");
        assert_eq!(r.status, 401, "{host}: {}", r.text());
    }
    let r = from_page(
        addr,
        "POST",
        BACKENDS,
        Some("evil.example"),
        Some("text/plain"),
        Some(TOKEN),
        NEW_BACKEND,
    );
    assert_error(&r, 415, None, "application/json");
    assert_eq!(plane.applied(), 0);
    let r = from_page(
        addr,
        "POST",
        BACKENDS,
        Some("evil.example"),
        json,
        Some(TOKEN),
        NEW_BACKEND,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(plane.config().upstreams["app"].backends.len(), 3);
}

// ------------------------------------------------------------- lifecycle --

#[test]
fn dropping_the_handle_closes_the_port() {
    let (_, admin) = start();
    let addr = admin.local_addr();
    assert_eq!(get(addr, "/api/v1/health").status, 200);
    admin.shutdown();
    assert!(TcpStream::connect(addr).is_err(), "{addr} still accepts");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let (_, admin) = start();
    let mut s = TcpStream::connect(admin.local_addr()).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let one = "GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let last = "GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    s.write_all(format!("{one}{one}{last}").as_bytes()).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");
}

// ------------------------------------------------------------ blocking --

/// A plane whose `apply` waits until the test releases it, as a master
/// waiting for its worker processes would.
struct GatedPlane {
    inner: Arc<TestPlane>,
    entered: Mutex<std::sync::mpsc::Sender<()>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl ControlPlane for GatedPlane {
    fn raw_config(&self) -> RawConfig {
        self.inner.raw_config()
    }
    fn apply(&self, raw: RawConfig, config: Config) -> Result<(), ApplyError> {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self.release.lock().unwrap().recv_timeout(IO_TIMEOUT);
        self.inner.apply(raw, config)
    }
    fn server(&self) -> ServerSnapshot {
        self.inner.server()
    }
    fn backends(&self, upstream: &str) -> Option<Vec<BackendSnapshot>> {
        self.inner.backends(upstream)
    }
    fn upstreams(&self) -> Vec<String> {
        self.inner.upstreams()
    }
}

#[test]
fn a_slow_apply_does_not_hold_up_other_requests() {
    let inner = TestPlane::new(YAML);
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let plane = Arc::new(GatedPlane {
        inner: inner.clone(),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    });
    let admin = admin::spawn("127.0.0.1:0".parse().unwrap(), None, plane).unwrap();
    let addr = admin.local_addr();
    let change = std::thread::spawn(move || {
        put(
            addr,
            "/api/v1/config",
            r#"{"routing":{"default":{"load_balancer":"weight"}}}"#,
        )
        .status
    });
    entered
        .recv_timeout(IO_TIMEOUT)
        .expect("the PUT reached apply");
    // apply is blocked now: reads are still served, and see the old config.
    assert_eq!(get(addr, "/api/v1/health").status, 200);
    let v = get(addr, "/api/v1/config").json();
    assert_eq!(v["routing"]["default"]["load_balancer"], "round_robin");
    assert_eq!(get(addr, "/metrics").status, 200);
    release.send(()).unwrap();
    assert_eq!(change.join().unwrap(), 200);
    assert_eq!(inner.applied(), 1);
}

// --------------------------------------------------------------- metrics --

/// One sample line of the text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the Prometheus text format strictly enough to catch a malformed
/// line: HELP and TYPE before every family's samples, valid names and label
/// sets, numeric values. Returns (family name → type, samples).
fn parse_metrics(text: &str) -> (Vec<(String, String)>, Vec<Sample>) {
    let mut types: Vec<(String, String)> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            helped.push(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name type");
            assert_eq!(
                helped.last().map(String::as_str),
                Some(name),
                "HELP before TYPE: {line}"
            );
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.push((name.to_string(), kind.to_string()));
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let labels = inner
                        .split("\",")
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                            assert!(valid_name(k), "{line}");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, Vec::new()),
            };
            assert!(valid_name(name), "{line}");
            let (family, kind) = types.last().expect("TYPE before samples");
            let ok = match kind.as_str() {
                "histogram" => [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&name.to_string()),
                _ => name == family,
            };
            assert!(ok, "sample {name} under family {family}");
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    (types, samples)
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> &'a Sample {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[test]
fn metrics_are_prometheus_text_with_conventional_names() {
    let (_, admin) = start();
    let r = get(admin.local_addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    let (types, samples) = parse_metrics(&text);
    for (name, kind) in &types {
        assert!(name.starts_with("speedmimi_"), "{name}");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{name}");
        }
    }
    let kind_of = |n: &str| types.iter().find(|(t, _)| t == n).map(|(_, k)| k.as_str());
    assert_eq!(kind_of("speedmimi_requests_total"), Some("counter"));
    assert_eq!(kind_of("speedmimi_connections_active"), Some("gauge"));
    assert_eq!(
        kind_of("speedmimi_upstream_connect_duration_seconds"),
        Some("histogram")
    );
    assert_eq!(
        kind_of("speedmimi_upstream_response_duration_seconds"),
        Some("histogram")
    );
    assert_eq!(
        kind_of("speedmimi_client_received_bytes_total"),
        Some("counter")
    );
    assert_eq!(
        kind_of("speedmimi_client_sent_bytes_total"),
        Some("counter")
    );

    // Totals have no labels; per event loop they carry process and loop.
    assert_eq!(
        find(&samples, "speedmimi_requests_total", &[]).value,
        3000.0
    );
    assert!(find(&samples, "speedmimi_requests_total", &[])
        .labels
        .is_empty());
    let w = find(
        &samples,
        "speedmimi_worker_requests_total",
        &[("process", "1"), ("loop", "0")],
    );
    assert_eq!(w.value, 2000.0);
    assert_eq!(
        find(&samples, "speedmimi_connections_active", &[]).value,
        9.0
    );
    assert_eq!(
        find(&samples, "speedmimi_connections_total", &[]).value,
        300.0
    );
    assert_eq!(
        find(&samples, "speedmimi_connections_refused_total", &[]).value,
        3.0
    );
    assert_eq!(
        find(&samples, "speedmimi_client_received_bytes_total", &[]).value,
        150_000.0
    );
    let errors = find(
        &samples,
        "speedmimi_errors_total",
        &[("kind", "bad_request"), ("status", "400")],
    );
    assert_eq!(errors.value, 6.0);
    let worker_errors = find(
        &samples,
        "speedmimi_worker_errors_total",
        &[("process", "0"), ("kind", "bad_gateway"), ("status", "502")],
    );
    assert_eq!(worker_errors.value, 1.0);

    // Per backend: requests by status class, health as one 1 per backend.
    let ok = find(
        &samples,
        "speedmimi_upstream_requests_total",
        &[
            ("upstream", "app"),
            ("backend", "127.0.0.1:9000"),
            ("class", "2xx"),
        ],
    );
    assert_eq!(ok.value, 30.0);
    for (upstream, backend, state) in [
        ("app", "127.0.0.1:9000", "up"),
        ("app", "127.0.0.1:9001", "down"),
        ("api", "127.0.0.1:9100", "up"),
    ] {
        let states: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == "speedmimi_upstream_health"
                    && s.label("upstream") == Some(upstream)
                    && s.label("backend") == Some(backend)
            })
            .collect();
        assert_eq!(states.len(), 3, "up, down, draining");
        let on: Vec<&str> = states
            .iter()
            .filter(|s| s.value == 1.0)
            .map(|s| s.label("state").unwrap())
            .collect();
        assert_eq!(on, [state], "{upstream} {backend}");
    }
}

#[test]
fn metrics_histogram_buckets_are_cumulative_and_end_at_inf() {
    let (_, admin) = start();
    let (_, samples) = parse_metrics(&get(admin.local_addr(), "/metrics").text());
    for family in [
        "speedmimi_upstream_connect_duration_seconds",
        "speedmimi_upstream_response_duration_seconds",
    ] {
        for backend in ["127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9100"] {
            let buckets: Vec<&Sample> = samples
                .iter()
                .filter(|s| {
                    s.name == format!("{family}_bucket") && s.label("backend") == Some(backend)
                })
                .collect();
            assert_eq!(
                buckets.len(),
                LATENCY_BUCKETS.len() + 1,
                "{family} {backend}"
            );
            for pair in buckets.windows(2) {
                assert!(pair[0].value <= pair[1].value, "not cumulative: {pair:?}");
                let le = |s: &Sample| -> f64 {
                    match s.label("le").unwrap() {
                        "+Inf" => f64::INFINITY,
                        v => v.parse().unwrap(),
                    }
                };
                assert!(le(pair[0]) < le(pair[1]), "le not increasing: {pair:?}");
            }
            let last = buckets.last().unwrap();
            assert_eq!(last.label("le"), Some("+Inf"));
            let count = find(
                &samples,
                &format!("{family}_count"),
                &[("backend", backend)],
            );
            assert_eq!(last.value, count.value);
            let sum = find(&samples, &format!("{family}_sum"), &[("backend", backend)]);
            assert_eq!(sum.value, 6.5);
        }
    }
    // connect_latency = histogram(1): 1 at 0.00025 s, 2 at 0.0025 s, 1 over 5 s.
    let bucket = |le: &str| {
        find(
            &samples,
            "speedmimi_upstream_connect_duration_seconds_bucket",
            &[("backend", "127.0.0.1:9000"), ("le", le)],
        )
        .value
    };
    assert_eq!(bucket("0.0001"), 0.0);
    assert_eq!(bucket("0.00025"), 1.0);
    assert_eq!(bucket("0.0025"), 3.0);
    assert_eq!(bucket("5"), 3.0);
    assert_eq!(bucket("+Inf"), 4.0);
}

// --------------------------------------------------------------- profile --

/// The profiler is process-wide: profile tests take turns.
static PROFILER: Mutex<()> = Mutex::new(());

#[test]
fn cpu_profile_is_gzipped_pprof_protobuf() {
    use pprof::protos::Message;
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let (_, admin) = start();
    // Some CPU to sample while the profile runs (bounded: 1.5 s).
    let spin = std::thread::spawn(|| {
        let end = std::time::Instant::now() + Duration::from_millis(1500);
        let mut x = 0u64;
        while std::time::Instant::now() < end {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        x
    });
    let r = get(admin.local_addr(), "/debug/pprof/profile?seconds=1");
    let _ = spin.join();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(&r.body[..2], &[0x1f, 0x8b], "gzip magic");
    let mut proto = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut proto)
        .expect("valid gzip");
    assert!(!proto.is_empty());
    let profile = pprof::protos::Profile::decode(&proto[..]).expect("pprof protobuf");
    let strings = &profile.string_table;
    assert_eq!(
        strings.first().map(String::as_str),
        Some(""),
        "pprof string table starts empty"
    );
    let sample_types: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|t| strings[t.ty as usize].as_str())
        .collect();
    assert!(sample_types.contains(&"cpu"), "{sample_types:?}");
    assert!(profile.duration_nanos > 0);
}

#[test]
fn one_profile_at_a_time() {
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let (_, admin) = start();
    let addr = admin.local_addr();
    // Two 3-second profiles asked together: one runs, the other is refused.
    let ask = move || get(addr, "/debug/pprof/profile?seconds=3").status;
    let a = std::thread::spawn(ask);
    let b = std::thread::spawn(ask);
    let mut statuses = [a.join().unwrap(), b.join().unwrap()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
}

#[test]
fn profile_seconds_are_validated() {
    let (_, admin) = start();
    for bad in ["0", "61", "abc", "2.5"] {
        let r = get(
            admin.local_addr(),
            &format!("/debug/pprof/profile?seconds={bad}"),
        );
        assert_error(&r, 400, Some("seconds"), "from 1 to 60");
    }
}
