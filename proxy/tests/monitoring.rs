//! The monitoring files under deploy/ against a running proxy: every metric
//! a Grafana query of deploy/grafana/speedmimi.json names is exported by
//! /metrics; the worker-restart counter counts a killed worker; and a real
//! Prometheus (Debian's `prometheus`, skipped with a message when it is not
//! installed) scrapes the proxy with deploy/prometheus/prometheus.yml, answers
//! a request counter, and evaluates every dashboard query without an error.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn dashboard() -> serde_json::Value {
    let path = repo_file("deploy/grafana/speedmimi.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard: panel targets and the
/// template variables' queries.
fn dashboard_queries(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The `speedmimi_*` names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("speedmimi_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The sample names (before labels or the value) in a /metrics text.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// One upstream with an active health check, so the check's families exist.
fn monitored_yaml(backend: SocketAddr, extra_server: &str) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  workers: 1\n{extra_server}\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         upstreams:\n  app:\n    backends: [ {{ addr: \"{backend}\" }} ]\n    \
         health_check: {{ path: /healthz, interval: 200ms }}\n\
         routing:\n  default: {{ upstream: app }}\n"
    )
}

/// Some 200s, one 400 the proxy answers itself (so `speedmimi_errors_total`
/// has a series), and a wait for an active health-check probe.
fn traffic(proxy: &Proxy) {
    let mut c = proxy.client();
    for _ in 0..20 {
        assert_eq!(c.get("/").status, 200);
    }
    let mut bad = proxy.client();
    bad.send(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n");
    assert_eq!(bad.read_response().status, 400);
    let until = Instant::now() + IO_TIMEOUT;
    while !proxy
        .admin()
        .get("/metrics")
        .body
        .contains("speedmimi_backend_health_check_up{")
    {
        assert!(
            Instant::now() < until,
            "no health-check verdict within 10 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_metric_the_dashboard_names_is_exported() {
    let d = dashboard();
    assert_eq!(d["uid"], "speedmimi");
    let queries = dashboard_queries(&d);
    assert!(queries.len() > 30, "only {} queries", queries.len());
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] != "row" {
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
        }
    }

    let backend = Backend::start("a");
    let proxy = Proxy::start(&monitored_yaml(backend.addr, ""));
    traffic(&proxy);
    let text = proxy.admin().get("/metrics").body;
    let have = exported(&text);
    let mut missing = Vec::new();
    let mut named = BTreeSet::new();
    for q in &queries {
        for name in metric_names(q) {
            if !have.contains(&name) {
                missing.push(format!("{name} (in {q})"));
            }
            named.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "not in /metrics:\n{}\n\n/metrics:\n{text}",
        missing.join("\n")
    );
    // The panels the operations guide promises.
    for want in [
        "speedmimi_requests_total",
        "speedmimi_errors_total",
        "speedmimi_upstream_requests_total",
        "speedmimi_upstream_response_duration_seconds_bucket",
        "speedmimi_connections_active",
        "speedmimi_upstream_health",
        "speedmimi_upstream_connections_reused_total",
        "speedmimi_worker_restarts_total",
        "speedmimi_resident_memory_bytes",
    ] {
        assert!(named.contains(want), "the dashboard has no query on {want}");
    }
    assert!(
        queries
            .iter()
            .any(|q| q.contains("histogram_quantile(0.99")),
        "no p99 from the histograms"
    );
}

#[test]
fn worker_restarts_are_counted() {
    let backend = Backend::start("a");
    let proxy = Proxy::start(&monitored_yaml(backend.addr, "  processes: 2\n"));
    assert_eq!(proxy.metric("speedmimi_worker_restarts_total"), 0.0);
    let workers = children_of(proxy.pid());
    assert_eq!(workers.len(), 2, "worker processes: {workers:?}");
    signal(workers[0], "KILL");
    let until = Instant::now() + IO_TIMEOUT;
    while proxy.metric("speedmimi_worker_restarts_total") < 1.0 {
        assert!(Instant::now() < until, "restart not counted within 10 s");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(proxy.metric("speedmimi_worker_restarts_total"), 1.0);
    assert_eq!(
        proxy.admin().get_json("/api/v1/stats/server")["worker_restarts"],
        1
    );
}

/// A Prometheus server on a free loopback port; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn http_get(addr: SocketAddr, target: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    c.read_response()
}

fn query(prom: SocketAddr, expr: &str) -> serde_json::Value {
    let enc: String =
        percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC).collect();
    let r = http_get(prom, &format!("/api/v1/query?query={enc}"));
    serde_json::from_str(&r.text())
        .unwrap_or_else(|e| panic!("query {expr}: not JSON ({e}): {}", r.text()))
}

#[test]
fn prometheus_scrapes_the_proxy_and_evaluates_the_dashboard() {
    let config = repo_file("deploy/prometheus/prometheus.yml");
    let shipped = std::fs::read_to_string(&config).expect("read prometheus.yml");
    let Ok(binary) = which("prometheus") else {
        eprintln!("SKIPPED: no `prometheus` in PATH (apt-get install prometheus); the scrape test did not run");
        return;
    };
    if let Ok(promtool) = which("promtool") {
        let out = Command::new(promtool)
            .arg("check")
            .arg("config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check config: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let backend = Backend::start("a");
    let proxy = Proxy::start(&monitored_yaml(backend.addr, ""));
    let admin = proxy.admin_addr();
    // The shipped file scrapes the default admin address every 5 s; point it
    // at this proxy and scrape every second so the test is short.
    for part in [
        "\"127.0.0.1:9091\"",
        "scrape_interval: 5s",
        "scrape_timeout: 4s",
    ] {
        assert!(shipped.contains(part), "prometheus.yml has no {part}");
    }
    let ours = shipped
        .replace("\"127.0.0.1:9091\"", &format!("\"{admin}\""))
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("scrape_timeout: 4s", "scrape_timeout: 1s");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, ours).unwrap();
    let addr = free_port();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .expect("start prometheus");
    let log = dir.path().join("log");
    let prom = Prometheus {
        child,
        addr,
        _dir: dir,
    };
    let log = || std::fs::read_to_string(&log).unwrap_or_default();

    let until = Instant::now() + Duration::from_secs(30);
    while Client::try_connect(prom.addr).is_err() || http_get(prom.addr, "/-/ready").status != 200 {
        assert!(
            Instant::now() < until,
            "prometheus not ready within 30 s:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    traffic(&proxy);
    // Non-empty, from the proxy's job, and counting our 20 good requests (the
    // 400 is refused before it counts as a request); then a
    // rate, which needs two scrapes after them.
    loop {
        let last = query(prom.addr, "speedmimi_requests_total");
        let result = &last["data"]["result"];
        let value = result[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok());
        if value.is_some_and(|v| v >= 20.0) {
            assert_eq!(result[0]["metric"]["job"], "speedmimi", "{last}");
            break;
        }
        assert!(
            Instant::now() < until,
            "no speedmimi_requests_total >= 20 from prometheus: {last}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let r = query(prom.addr, "rate(speedmimi_requests_total[1m])");
        if !r["data"]["result"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < until, "no rate within 15 s: {r}");
        thread::sleep(Duration::from_millis(200));
    }

    // Every dashboard query parses and evaluates (Grafana's variables
    // replaced as Grafana would).
    let d = dashboard();
    for q in dashboard_queries(&d) {
        if q.starts_with("label_values(") {
            continue; // Grafana's own function, not PromQL
        }
        let expr = q
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$instance", ".*");
        let r = query(prom.addr, &expr);
        assert_eq!(r["status"], "success", "{expr}: {r}");
    }
    let rps = query(
        prom.addr,
        "sum by (instance) (rate(speedmimi_requests_total{instance=~\".*\"}[1m]))",
    );
    assert!(
        !rps["data"]["result"].as_array().unwrap().is_empty(),
        "{rps}"
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
