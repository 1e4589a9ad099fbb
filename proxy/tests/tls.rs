//! TLS termination over real sockets: the real proxy on a `server.tls`
//! listener with certificates the test makes (rcgen), real rustls clients,
//! and the harness's backend, which records what it parsed. Requests reach
//! the backend with `X-Forwarded-Proto: https`; SNI picks the certificate;
//! TLS 1.2 and 1.3; tickets resume across event loops and worker
//! processes; a handshake that stalls or is not TLS is closed and counted;
//! certificates reload on SIGHUP and PUT without dropping a connection, and
//! a bad one is refused with its field and file named.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use common::pki::{Leaf, Pki};
use common::{wait_until, Backend, Cfg, Proxy, IO_TIMEOUT};

/// Accepts any certificate: for looking at the one the proxy chose for a
/// name the certificate does not carry.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn any_cert_client() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let c = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    Arc::new(c)
}

// ------------------------------------------------------------------ client --

/// One HTTPS connection to the proxy.
struct TlsClient {
    r: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> io::Result<TlsClient> {
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let name = ServerName::try_from(name.to_string()).unwrap();
        let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient {
            r: BufReader::new(stream),
        })
    }

    fn conn(&self) -> &ClientConnection {
        &self.r.get_ref().conn
    }

    fn peer_leaf(&self) -> CertificateDer<'static> {
        self.conn().peer_certificates().expect("certificates")[0].clone()
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let s = self.r.get_mut();
        s.write_all(bytes)?;
        s.flush()
    }

    fn get(&mut self, path: &str) -> io::Result<Answer> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
        self.read_answer()
    }

    /// One response framed by Content-Length (the harness backend's way).
    fn read_answer(&mut self) -> io::Result<Answer> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok(Answer { status, head, body })
    }
}

// ------------------------------------------------------------------- setup --

fn tls_yaml(backend: SocketAddr, certs: &[&Leaf], server_extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|l| format!("      - {{ cert: \"{}\", key: \"{}\" }}\n", l.cert, l.key))
        .collect();
    let mut cfg = Cfg::new(&[backend]);
    cfg.extra_server = format!("{server_extra}  tls:\n    certificates:\n{}", list.concat());
    cfg.yaml()
}

fn start(backend: &Backend, certs: &[&Leaf], server_extra: &str) -> Proxy {
    Proxy::start(&tls_yaml(backend.addr, certs, server_extra))
}

fn tls_metric(proxy: &Proxy, series: &str) -> f64 {
    proxy.metric(&format!("speedmimi_tls_{series}"))
}

/// `speedmimi --check` on a YAML text: (success, stdout + stderr).
fn check(yaml: &str) -> (bool, String) {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_speedmimi"))
        .arg("--check")
        .arg("--config")
        .arg(file.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ------------------------------------------------------------------- tests --

#[test]
fn https_requests_reach_the_backend_marked_https_on_one_kept_alive_connection() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let backend = Backend::start("b1");
    let proxy = start(&backend, &[&leaf], "");
    for (version, label) in [
        (&rustls::version::TLS13, "TLSv1_3"),
        (&rustls::version::TLS12, "TLSv1_2"),
    ] {
        let mut c = TlsClient::connect(proxy.addr, &pki.client(Some(version)), "localhost")
            .unwrap_or_else(|e| panic!("{label} handshake: {e}"));
        assert_eq!(c.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(
            c.conn().protocol_version().and_then(|v| v.as_str()),
            Some(label)
        );
        for i in 0..3 {
            let a = c.get(&format!("/echo/{i}")).unwrap();
            assert_eq!(a.status, 200, "{}", a.head);
            assert!(String::from_utf8_lossy(&a.body).starts_with("b1\n"));
            let r = backend.last();
            assert_eq!(r.target, format!("/echo/{i}"));
            assert_eq!(r.header("x-forwarded-proto"), Some("https"));
        }
    }
    assert_eq!(backend.requests(), 6);
    assert_eq!(tls_metric(&proxy, "handshakes_total{kind=\"full\"}"), 2.0);
    assert_eq!(tls_metric(&proxy, "handshake_seconds_count"), 2.0);
}

#[test]
fn large_bodies_cross_tls_both_ways_intact() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let backend = Backend::start("b1");
    let proxy = start(&backend, &[&leaf], "");
    let mut c = TlsClient::connect(proxy.addr, &pki.client(None), "localhost").unwrap();
    // An upload of 3 MB in the harness's pattern, checked by the backend.
    let len: u64 = 3 << 20;
    let body: Vec<u8> = (0..len).map(common::pattern_byte).collect();
    c.send(format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").as_bytes())
        .unwrap();
    c.send(&body).unwrap();
    let a = c.read_answer().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        format!("len={len} pattern=ok chunked=false")
    );
    // A 5 MB answer, read slowly at first so the proxy's TLS writes fill
    // the socket and wait for writable.
    let len: u64 = 5 << 20;
    c.send(format!("GET /download/{len} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let a = c.read_answer().unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len() as u64, len);
    assert!(
        a.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == common::pattern_byte(i as u64)),
        "the body came through intact"
    );
    // The connection still serves after it.
    assert_eq!(c.get("/").unwrap().status, 200);
}

#[test]
fn sni_picks_the_certificate_and_an_unknown_name_gets_the_first() {
    let pki = Pki::new();
    let first = pki.leaf("first", &["localhost", "a.test"]);
    let wild = pki.leaf("wild", &["*.b.test"]);
    let backend = Backend::start("b1");
    let proxy = start(&backend, &[&first, &wild], "");
    let shown = |name: &str| {
        let c = TlsClient::connect(proxy.addr, &any_cert_client(), name).unwrap();
        c.peer_leaf()
    };
    assert_eq!(shown("a.test"), first.der);
    assert_eq!(shown("A.TEST"), first.der, "names compare without case");
    assert_eq!(shown("x.b.test"), wild.der);
    assert_eq!(
        shown("y.x.b.test"),
        first.der,
        "a wildcard covers one label"
    );
    assert_eq!(shown("b.test"), first.der);
    assert_eq!(shown("unknown.example"), first.der);
    // And the one chosen verifies for its name against the CA.
    let mut c = TlsClient::connect(proxy.addr, &pki.client(None), "x.b.test").unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
}

#[test]
fn a_handshake_that_stalls_is_closed_at_handshake_timeout_and_counted() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let backend = Backend::start("b1");
    let proxy = Proxy::start(
        &tls_yaml(backend.addr, &[&leaf], "")
            .replace("  tls:\n", "  tls:\n    handshake_timeout: 300ms\n"),
    );
    // Silent, and a ClientHello cut short: both are closed by the proxy.
    let mut silent = TcpStream::connect(proxy.addr).unwrap();
    let mut partial = TcpStream::connect(proxy.addr).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for s in [&mut silent, &mut partial] {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = [0u8; 64];
        let closed =
            matches!(s.read(&mut buf), Ok(0)) || matches!(s.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "the proxy closed the stalled handshake");
    }
    wait_until("both timeouts counted", || {
        tls_metric(&proxy, "handshake_failures_total{reason=\"timeout\"}") == 2.0
    });
    assert_eq!(tls_metric(&proxy, "connections_active"), 0.0);
    // A real handshake still works, and had the whole timeout to itself.
    let mut c = TlsClient::connect(proxy.addr, &pki.client(None), "localhost").unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
    assert_eq!(backend.requests(), 1);
}

#[test]
fn plaintext_or_garbage_on_the_tls_port_is_closed_counted_and_never_forwarded() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let backend = Backend::start("b1");
    let proxy = start(&backend, &[&leaf], "");
    for bytes in [
        &b"GET /smuggle HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff][..],
    ] {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(bytes).unwrap();
        // At most a TLS alert comes back, then the close.
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.len() <= 7, "only an alert record: {got:?}");
        if !got.is_empty() {
            assert_eq!(got[0], 0x15, "an alert record: {got:?}");
        }
    }
    wait_until("both counted as malformed", || {
        tls_metric(&proxy, "handshake_failures_total{reason=\"malformed\"}") == 2.0
    });
    assert_eq!(backend.requests(), 0, "nothing reached the backend");
    let mut c = TlsClient::connect(proxy.addr, &pki.client(None), "localhost").unwrap();
    assert_eq!(c.get("/after").unwrap().status, 200);
}

/// `n` new connections, one request each, with one client's ticket store.
fn connections_resume(proxy: &Proxy, config: &Arc<ClientConfig>, n: usize) {
    for i in 0..n {
        let mut c = TlsClient::connect(proxy.addr, config, "localhost").unwrap();
        assert_eq!(c.get(&format!("/r/{i}")).unwrap().status, 200);
    }
}

#[test]
fn tickets_resume_on_every_event_loop_and_worker_process() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let backend = Backend::start("b1");
    for (shape, extra) in [
        ("2 event loops", "  workers: 2\n"),
        ("2 worker processes", "  processes: 2\n"),
    ] {
        let yaml = tls_yaml(backend.addr, &[&leaf], "").replace("  workers: 1\n", extra);
        let proxy = Proxy::start(&yaml);
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let config = pki.client(Some(version));
            let full_before = tls_metric(&proxy, "handshakes_total{kind=\"full\"}");
            let resumed_before = tls_metric(&proxy, "handshakes_total{kind=\"resumed\"}");
            connections_resume(&proxy, &config, 12);
            let full = tls_metric(&proxy, "handshakes_total{kind=\"full\"}") - full_before;
            let resumed = tls_metric(&proxy, "handshakes_total{kind=\"resumed\"}") - resumed_before;
            assert_eq!(
                (full, resumed),
                (1.0, 11.0),
                "{shape}, {version:?}: one full handshake, then every connection resumes"
            );
        }
    }
}

#[test]
fn session_tickets_off_gives_full_handshakes() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let backend = Backend::start("b1");
    let yaml = tls_yaml(backend.addr, &[&leaf], "")
        .replace("  tls:\n", "  tls:\n    session_tickets: false\n");
    let proxy = Proxy::start(&yaml);
    connections_resume(&proxy, &pki.client(Some(&rustls::version::TLS13)), 4);
    assert_eq!(tls_metric(&proxy, "handshakes_total{kind=\"full\"}"), 4.0);
    assert_eq!(
        tls_metric(&proxy, "handshakes_total{kind=\"resumed\"}"),
        0.0
    );
}

#[test]
fn versions_limit_what_the_listener_speaks() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let backend = Backend::start("b1");
    let yaml = tls_yaml(backend.addr, &[&leaf], "")
        .replace("  tls:\n", "  tls:\n    versions: [\"1.3\"]\n");
    let proxy = Proxy::start(&yaml);
    assert!(TlsClient::connect(
        proxy.addr,
        &pki.client(Some(&rustls::version::TLS12)),
        "localhost"
    )
    .is_err());
    wait_until("counted as incompatible", || {
        tls_metric(&proxy, "handshake_failures_total{reason=\"incompatible\"}") == 1.0
    });
    let mut c = TlsClient::connect(
        proxy.addr,
        &pki.client(Some(&rustls::version::TLS13)),
        "localhost",
    )
    .unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
}

#[test]
fn check_names_the_field_and_the_file_of_a_bad_certificate_or_key() {
    let pki = Pki::new();
    let good = pki.leaf("good", &["localhost"]);
    let other = pki.leaf("other", &["localhost"]);
    let backend = common::closed_port();
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = pki.path("missing.pem");
    let cases = [
        (good.cert.clone(), good.key.clone(), None, ""),
        (
            missing.clone(),
            good.key.clone(),
            Some("server.tls.certificates[0].cert"),
            missing.as_str(),
        ),
        (
            not_pem.clone(),
            good.key.clone(),
            Some("server.tls.certificates[0].cert"),
            "no certificate",
        ),
        (
            good.cert.clone(),
            not_pem.clone(),
            Some("server.tls.certificates[0].key"),
            not_pem.as_str(),
        ),
        (
            good.cert.clone(),
            other.key.clone(),
            Some("server.tls.certificates[0].key"),
            "does not belong",
        ),
    ];
    for (cert, key, field, words) in cases {
        let leaf = Leaf {
            cert: cert.clone(),
            key: key.clone(),
            der: good.der.clone(),
        };
        let (ok, out) = check(&tls_yaml(backend, &[&leaf], ""));
        match field {
            None => assert!(ok, "good files pass --check: {out}"),
            Some(field) => {
                assert!(!ok, "{cert} / {key} refused: {out}");
                assert!(out.contains(field), "names {field}: {out}");
                assert!(out.contains(words), "says {words:?}: {out}");
            }
        }
    }
    let (ok, out) = check(
        &Cfg::new(&[backend])
            .yaml()
            .replace("admin:\n", "  tls:\n    certificates: []\nadmin:\n"),
    );
    assert!(!ok && out.contains("server.tls.certificates"), "{out}");
}

#[test]
fn certificates_reload_on_sighup_and_put_without_dropping_a_connection() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["localhost"]);
    let b = pki.leaf("b", &["localhost"]);
    let c_leaf = pki.leaf("c", &["localhost"]);
    let stray = pki.leaf("stray", &["localhost"]);
    let backend = Backend::start("b1");
    let proxy = start(&backend, &[&a], "");
    let config = pki.client(None);
    let mut kept = TlsClient::connect(proxy.addr, &config, "localhost").unwrap();
    assert_eq!(kept.peer_leaf(), a.der);
    assert_eq!(kept.get("/1").unwrap().status, 200);
    let shown = || {
        TlsClient::connect(proxy.addr, &any_cert_client(), "localhost")
            .unwrap()
            .peer_leaf()
    };

    // SIGHUP with B: new handshakes get B, the open connection goes on.
    proxy.rewrite_config(&tls_yaml(backend.addr, &[&b], ""));
    proxy.signal("HUP");
    wait_until("new handshakes use B", || shown() == b.der);
    assert_eq!(kept.get("/2").unwrap().status, 200);

    // A key that is not the certificate's: refused, B keeps serving.
    let bad = Leaf {
        cert: c_leaf.cert.clone(),
        key: stray.key.clone(),
        der: c_leaf.der.clone(),
    };
    proxy.rewrite_config(&tls_yaml(backend.addr, &[&bad], ""));
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(shown(), b.der);
    let admin = proxy.admin();
    let mut raw = admin.get_json("/api/v1/config");
    let put_bad = {
        raw["server"]["tls"]["certificates"][0] =
            serde_json::json!({ "cert": bad.cert, "key": bad.key });
        admin.put("/api/v1/config", &raw.to_string())
    };
    assert_eq!(put_bad.status, 400, "{}", put_bad.body);
    assert!(
        put_bad.body.contains("server.tls.certificates[0].key"),
        "{}",
        put_bad.body
    );
    assert_eq!(shown(), b.der);

    // PUT with C: applied at once.
    raw["server"]["tls"]["certificates"][0] =
        serde_json::json!({ "cert": c_leaf.cert, "key": c_leaf.key });
    let put = admin.put("/api/v1/config", &raw.to_string());
    assert_eq!(put.status, 200, "{}", put.body);
    wait_until("new handshakes use C", || shown() == c_leaf.der);
    assert_eq!(kept.get("/3").unwrap().status, 200);
    assert_eq!(
        kept.peer_leaf(),
        a.der,
        "the kept connection is the first one"
    );
    assert!(Path::new(&a.cert).exists());
}
