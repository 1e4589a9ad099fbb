//! TLS to backends over real sockets: the proxy under test speaks plaintext
//! to its client and TLS to its backend, which is a second real proxy on a
//! `server.tls` listener (certificates made by the test) in front of the
//! harness's recording backend. Requests and bodies arrive whole; the pool
//! keeps the TLS session alive across requests; a new connection resumes;
//! a backend whose certificate is untrusted or for another name gets 502,
//! counted by reason and logged, and never sees the request; `insecure`
//! skips the check; a bad `ca` is refused with the field named; health
//! probes speak TLS too.

mod common;

use std::io::Write;
use std::time::Duration;

use common::pki::{Leaf, Pki};
use common::{wait_until, Backend, Cfg, Client, Proxy};

/// A TLS terminating proxy in front of `backend`: the TLS backend of the
/// proxy under test.
fn tls_front(backend: &Backend, leaf: &Leaf) -> Proxy {
    let mut cfg = Cfg::new(&[backend.addr]);
    cfg.extra_server = format!(
        "  tls:\n    certificates:\n      - {{ cert: \"{}\", key: \"{}\" }}\n",
        leaf.cert, leaf.key
    );
    cfg.start()
}

/// The configuration of a proxy whose one backend is `front`, spoken to
/// with `tls` (a YAML flow mapping).
fn yaml_to(front: &Proxy, tls: &str, keepalive: u32, extra_upstream: &str) -> String {
    let mut cfg = Cfg::new(&[front.addr]);
    cfg.keepalive = keepalive;
    cfg.retries = 0;
    let yaml = cfg.yaml();
    let plain = format!("{{ addr: \"{}\", weight: 1 }}", front.addr);
    assert!(yaml.contains(&plain));
    let with_tls = format!("{{ addr: \"{}\", weight: 1, tls: {tls} }}", front.addr);
    let yaml = yaml.replace(&plain, &with_tls);
    yaml.replace(
        "    queue_timeout: 2s\n",
        &format!("    queue_timeout: 2s\n{extra_upstream}"),
    )
}

fn proxy_to(front: &Proxy, tls: &str, keepalive: u32) -> Proxy {
    Proxy::start(&yaml_to(front, tls, keepalive, ""))
}

fn trusted(pki: &Pki, sni: &str) -> String {
    format!("{{ sni: \"{sni}\", ca: \"{}\" }}", pki.ca_file())
}

fn upstream_metric(proxy: &Proxy, series: &str) -> f64 {
    proxy.metric(&format!("speedmimi_upstream_tls_{series}"))
}

#[test]
fn requests_and_bodies_reach_a_tls_backend_over_one_pooled_session() {
    let pki = Pki::new();
    let leaf = pki.leaf("backend", &["backend.test"]);
    let backend = Backend::start("b1");
    let front = tls_front(&backend, &leaf);
    let proxy = proxy_to(&front, &trusted(&pki, "backend.test"), 64);
    let mut c = Client::connect(proxy.addr);
    for i in 0..5 {
        let r = c.get(&format!("/echo/{i}"));
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.text().starts_with("b1\n"));
        assert_eq!(backend.last().target, format!("/echo/{i}"));
        // The TLS hop is the front's: it marks what it received as https.
        assert_eq!(backend.last().header("x-forwarded-proto"), Some("https"));
    }
    // An upload of 2 MB (many TLS records, writes that fill the socket)
    // and a 3 MB answer, both checked byte for byte.
    let len: u64 = 2 << 20;
    let body: Vec<u8> = (0..len).map(common::pattern_byte).collect();
    c.send(format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").as_bytes());
    c.send(&body);
    let r = c.read_response();
    assert_eq!(r.text(), format!("len={len} pattern=ok chunked=false"));
    let len: u64 = 3 << 20;
    let r = c.get(&format!("/download/{len}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, len);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == common::pattern_byte(i as u64)));
    // Seven requests, one TLS session: the pool kept it.
    assert_eq!(backend.requests(), 7);
    assert_eq!(
        upstream_metric(&proxy, "handshakes_total{kind=\"full\"}"),
        1.0
    );
    assert_eq!(
        front.metric("speedmimi_tls_handshakes_total{kind=\"full\"}"),
        1.0
    );
    assert_eq!(
        proxy.metric("speedmimi_upstream_connections_opened_total"),
        1.0
    );
}

#[test]
fn a_new_backend_connection_resumes_the_session_of_an_earlier_one() {
    let pki = Pki::new();
    let leaf = pki.leaf("backend", &["backend.test"]);
    let backend = Backend::start("b1");
    let front = tls_front(&backend, &leaf);
    // keepalive 0: every request opens (and closes) its own connection.
    let proxy = proxy_to(&front, &trusted(&pki, "backend.test"), 0);
    let mut c = Client::connect(proxy.addr);
    for _ in 0..3 {
        assert_eq!(c.get("/").status, 200);
    }
    assert_eq!(
        upstream_metric(&proxy, "handshakes_total{kind=\"full\"}"),
        1.0
    );
    assert_eq!(
        upstream_metric(&proxy, "handshakes_total{kind=\"resumed\"}"),
        2.0
    );
    assert_eq!(
        front.metric("speedmimi_tls_handshakes_total{kind=\"resumed\"}"),
        2.0
    );
}

#[test]
fn a_backend_certificate_that_is_untrusted_or_for_another_name_gets_502_counted_and_logged() {
    let pki = Pki::new();
    let backend = Backend::start("b1");
    // Signed by our CA but for another name.
    let wrong_name = pki.leaf("other", &["other.test"]);
    let front = tls_front(&backend, &wrong_name);
    let proxy = proxy_to(&front, &trusted(&pki, "backend.test"), 64);
    let r = Client::connect(proxy.addr).get("/");
    assert_eq!(r.status, 502, "{}", r.head);
    assert_eq!(
        upstream_metric(&proxy, "failures_total{reason=\"name_mismatch\"}"),
        1.0
    );
    wait_until("the log line", || {
        proxy
            .log()
            .contains("TLS handshake with the backend failed")
    });
    assert!(proxy.log().contains("name_mismatch"), "{}", proxy.log());
    // Signed by a CA the proxy does not trust.
    let stranger = Pki::new();
    let untrusted = stranger.leaf("backend", &["backend.test"]);
    let front2 = tls_front(&backend, &untrusted);
    let proxy2 = proxy_to(&front2, &trusted(&pki, "backend.test"), 64);
    let r = Client::connect(proxy2.addr).get("/");
    assert_eq!(r.status, 502);
    assert_eq!(
        upstream_metric(&proxy2, "failures_total{reason=\"untrusted\"}"),
        1.0
    );
    // Neither request reached the backend.
    assert_eq!(backend.requests(), 0);
    // `insecure: true` takes the stranger's certificate.
    let proxy3 = proxy_to(&front2, "{ sni: \"backend.test\", insecure: true }", 64);
    let r = Client::connect(proxy3.addr).get("/");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(backend.requests(), 1);
}

#[test]
fn a_bad_ca_or_sni_is_refused_with_the_field_named() {
    let pki = Pki::new();
    let leaf = pki.leaf("backend", &["backend.test"]);
    let backend = Backend::start("b1");
    let front = tls_front(&backend, &leaf);
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for (tls, field, says) in [
        (
            "{ ca: \"/nonexistent/ca.pem\" }".to_string(),
            "upstreams.default.backends[0].tls.ca",
            "/nonexistent/ca.pem",
        ),
        (
            format!("{{ ca: \"{empty}\" }}"),
            "upstreams.default.backends[0].tls.ca",
            "no PEM certificate",
        ),
        (
            "{ sni: \"bad name!\", insecure: true }".to_string(),
            "upstreams.default.backends[0].tls.sni",
            "not a DNS name",
        ),
        (
            format!("{{ ca: \"{empty}\", insecure: true }}"),
            "upstreams.default.backends[0].tls.insecure",
            "ignored",
        ),
    ] {
        let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        file.write_all(yaml_to(&front, &tls, 64, "").as_bytes())
            .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_speedmimi"))
            .arg("--check")
            .arg("--config")
            .arg(file.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{tls}: accepted");
        assert!(text.contains(field), "{tls}: {text}");
        assert!(text.contains(says), "{tls}: {text}");
    }
}

#[test]
fn health_probes_to_a_tls_backend_speak_tls() {
    let pki = Pki::new();
    let leaf = pki.leaf("backend", &["backend.test"]);
    let backend = Backend::start("b1");
    let front = tls_front(&backend, &leaf);
    let check =
        "    health_check: { path: /healthz, interval: 50ms, timeout: 1s, rise: 1, fall: 1 }\n";
    let proxy = Proxy::start(&yaml_to(&front, &trusted(&pki, "backend.test"), 64, check));
    wait_until("a probe through TLS", || {
        backend.received().iter().any(|r| r.target == "/healthz")
    });
    let probe = backend
        .received()
        .into_iter()
        .find(|r| r.target == "/healthz")
        .unwrap();
    assert_eq!(probe.header("x-forwarded-proto"), Some("https"));
    // The probes keep the backend up: requests still go through.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(Client::connect(proxy.addr).get("/").status, 200);
}

#[test]
fn a_backend_that_stalls_the_handshake_or_answers_in_plaintext_is_counted_and_answered() {
    // Accepts, reads the ClientHello, never answers: connect_timeout (2 s).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let (s, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_secs(4));
        drop(s);
    });
    let mut cfg = Cfg::new(&[silent_addr]);
    cfg.retries = 0;
    let plain = format!("{{ addr: \"{silent_addr}\", weight: 1 }}");
    let yaml = cfg.yaml().replace(
        &plain,
        &format!("{{ addr: \"{silent_addr}\", weight: 1, tls: {{ insecure: true }} }}"),
    );
    let proxy = Proxy::start(&yaml);
    let r = Client::connect(proxy.addr).get("/");
    assert_eq!(r.status, 504, "{}", r.head);
    assert_eq!(
        upstream_metric(&proxy, "failures_total{reason=\"timeout\"}"),
        1.0
    );
    // A plaintext HTTP server where TLS was configured: it answers the
    // ClientHello with an HTTP 400, which is not TLS.
    let plain_server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = plain_server.local_addr().unwrap();
    let answered = std::thread::spawn(move || {
        let (mut s, _) = plain_server.accept().unwrap();
        let mut hello = [0u8; 512];
        let _ = std::io::Read::read(&mut s, &mut hello);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        std::thread::sleep(Duration::from_millis(200));
    });
    let mut cfg = Cfg::new(&[plain_addr]);
    cfg.retries = 0;
    let plain = format!("{{ addr: \"{plain_addr}\", weight: 1 }}");
    let yaml = cfg.yaml().replace(
        &plain,
        &format!("{{ addr: \"{plain_addr}\", weight: 1, tls: {{ insecure: true }} }}"),
    );
    let proxy = Proxy::start(&yaml);
    let r = Client::connect(proxy.addr).get("/");
    assert_eq!(r.status, 502, "{}", r.head);
    assert_eq!(
        upstream_metric(&proxy, "failures_total{reason=\"other\"}"),
        1.0
    );
    answered.join().unwrap();
    held.join().unwrap();
}
