//! `loadgen run https://...` over real sockets against a rustls server the
//! test starts, with certificates the test makes (rcgen): exact request
//! counts in the closed, open and hold modes, a handshake per connection,
//! TLS 1.2 and 1.3, resumption that resumes, a new connection per request,
//! and each handshake failure counted as its own kind.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;

use common::run_json;

/// A CA, written to `dir/NAME.pem`, and leaf certificates it signs.
struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
    pem_path: String,
}

impl Ca {
    fn new(dir: &TempDir, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("loadgen test CA {name}"));
        let cert = params.self_signed(&key).unwrap();
        let pem_path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&pem_path, cert.pem()).unwrap();
        Ca {
            key,
            cert,
            pem_path: pem_path.display().to_string(),
        }
    }

    /// A leaf for localhost and 127.0.0.1; `expired` dates it in the past.
    fn leaf(&self, expired: bool) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let der = PrivatePkcs8KeyDer::from(key.serialize_der());
        (vec![cert.der().clone()], PrivateKeyDer::Pkcs8(der))
    }
}

/// A threaded rustls HTTP/1.1 server: answers every request head with a
/// 2-byte body, keeps the connection unless asked to close.
struct TlsServer {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl TlsServer {
    fn start(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsServer {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                conns.fetch_add(1, Ordering::Relaxed);
                let (config, reqs) = (config.clone(), reqs.clone());
                std::thread::spawn(move || serve(config, stream, &reqs));
            }
        });
        TlsServer {
            addr,
            connections,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }
}

fn serve(config: Arc<rustls::ServerConfig>, stream: TcpStream, requests: &AtomicU64) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            pending.drain(..end + 4);
            requests.fetch_add(1, Ordering::Relaxed);
            let close = head.contains("connection: close");
            let answer: &[u8] = if close {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            if tls.write_all(answer).and_then(|_| tls.flush()).is_err() {
                return;
            }
            if close {
                tls.conn.send_close_notify();
                let _ = tls.flush();
                return;
            }
        }
    }
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn good_server(dir: &TempDir) -> (Ca, TlsServer) {
    let ca = Ca::new(dir, "ca");
    let (chain, key) = ca.leaf(false);
    let server = TlsServer::start(chain, key, BOTH);
    (ca, server)
}

fn u(v: &serde_json::Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[test]
fn exact_requests_over_https_with_one_full_handshake_per_connection() {
    let dir = TempDir::new().unwrap();
    let (ca, server) = good_server(&dir);
    let url = server.url();
    let (code, v) = run_json(&[
        &url,
        "-c",
        "4",
        "-t",
        "2",
        "-n",
        "200",
        "--cacert",
        &ca.pem_path,
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(u(&v, "/requests"), 200, "{v}");
    assert_eq!(u(&v, "/errors/total"), 0, "{v}");
    assert_eq!(server.requests.load(Ordering::Relaxed), 200);
    assert_eq!(u(&v, "/tls/full"), 4, "{v}");
    assert_eq!(u(&v, "/tls/resumed"), 0, "{v}");
    assert_eq!(v["tls"]["version"], "TLSv1.3", "{v}");
    assert!(
        v["tls"]["cipher_suite"]
            .as_str()
            .unwrap()
            .starts_with("TLS13_"),
        "{v}"
    );
    assert_eq!(v["tls"]["server_name"], "127.0.0.1", "{v}");
    assert!(u(&v, "/tls/handshake_latency_us/p50") > 0, "{v}");
    assert_eq!(v["tls"]["insecure"], false);
    assert_eq!(v["tls"]["kx_group"], "X25519MLKEM768", "{v}");
    let (code, v) = run_json(&[
        &url,
        "-n",
        "4",
        "--cacert",
        &ca.pem_path,
        "--tls-kx",
        "secp256r1",
    ]);
    assert_eq!((code, u(&v, "/requests")), (0, 4), "{v}");
    assert_eq!(v["tls"]["kx_group"], "secp256r1", "{v}");
    let out = common::run(&["run", &url, "-n", "1", "--tls-kx", "nonesuch"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn open_loop_and_hold_modes_over_https_count_exactly() {
    let dir = TempDir::new().unwrap();
    let (ca, server) = good_server(&dir);
    let url = server.url();
    let (code, v) = run_json(&[
        &url,
        "-c",
        "5",
        "-n",
        "100",
        "-R",
        "400",
        "--cacert",
        &ca.pem_path,
    ]);
    assert_eq!((code, u(&v, "/requests")), (0, 100), "{v}");
    assert_eq!(u(&v, "/errors/total"), 0, "{v}");
    let (code, v) = run_json(&[
        &url,
        "-c",
        "20",
        "--hold",
        "--interval",
        "200ms",
        "-n",
        "60",
        "--cacert",
        &ca.pem_path,
    ]);
    assert_eq!((code, u(&v, "/requests")), (0, 60), "{v}");
    assert_eq!(u(&v, "/tls/full"), 20, "{v}");
    assert_eq!(u(&v, "/errors/total"), 0, "{v}");
}

#[test]
fn tls_1_2_is_negotiated_when_asked() {
    let dir = TempDir::new().unwrap();
    let (ca, server) = good_server(&dir);
    let url = server.url();
    let (code, v) = run_json(&[
        &url,
        "-c",
        "2",
        "-n",
        "20",
        "--cacert",
        &ca.pem_path,
        "--tls-version",
        "1.2",
    ]);
    assert_eq!((code, u(&v, "/requests")), (0, 20), "{v}");
    assert_eq!(v["tls"]["version"], "TLSv1.2", "{v}");
    assert!(
        v["tls"]["cipher_suite"]
            .as_str()
            .unwrap()
            .starts_with("TLS_ECDHE_"),
        "{v}"
    );
}

#[test]
fn a_new_connection_per_request_makes_a_handshake_per_request() {
    let dir = TempDir::new().unwrap();
    let (ca, server) = good_server(&dir);
    let url = server.url();
    let (code, v) = run_json(&[
        &url,
        "-c",
        "2",
        "-n",
        "30",
        "--cacert",
        &ca.pem_path,
        "--new-conn-per-request",
    ]);
    assert_eq!((code, u(&v, "/requests")), (0, 30), "{v}");
    assert_eq!(u(&v, "/errors/total"), 0, "{v}");
    assert_eq!(u(&v, "/tls/full"), 30, "{v}");
    assert_eq!(server.connections.load(Ordering::Relaxed), 30);
}

#[test]
fn resumption_resumes_when_asked_and_only_then() {
    let dir = TempDir::new().unwrap();
    let (ca, server) = good_server(&dir);
    let url = server.url();
    for version in ["1.3", "1.2"] {
        let (code, v) = run_json(&[
            &url,
            "-c",
            "1",
            "-n",
            "20",
            "--cacert",
            &ca.pem_path,
            "--new-conn-per-request",
            "--tls-resume",
            "--tls-version",
            version,
        ]);
        assert_eq!((code, u(&v, "/requests")), (0, 20), "{v}");
        assert_eq!(u(&v, "/tls/full") + u(&v, "/tls/resumed"), 20, "{v}");
        assert!(u(&v, "/tls/resumed") >= 10, "TLS {version}: {v}");
        assert_eq!(v["tls"]["resumption_offered"], true);
    }
}

/// One run of a single request that cannot get through the handshake.
fn failing(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-c", "1", "-t", "1", "-n", "1", "--timeout", "500ms"];
    all.extend_from_slice(args);
    let (code, v) = run_json(&all);
    assert_eq!(code, 0, "handshake failures are counted, not fatal: {v}");
    assert_eq!(u(&v, "/requests"), 0, "{v}");
    assert_eq!(u(&v, "/errors/total"), 1, "{v}");
    assert_eq!(u(&v, "/tls/failed"), 1, "{v}");
    v
}

#[test]
fn each_handshake_failure_is_its_own_error_kind() {
    let dir = TempDir::new().unwrap();
    let (ca, server) = good_server(&dir);
    let url = server.url();
    let other = Ca::new(&dir, "other");

    let v = failing(&[&url, "--cacert", &other.pem_path]);
    assert_eq!(u(&v, "/errors/tls_untrusted"), 1, "{v}");

    let v = failing(&[&url, "--cacert", &ca.pem_path, "--sni", "elsewhere.example"]);
    assert_eq!(u(&v, "/errors/tls_name_mismatch"), 1, "{v}");

    let (chain, key) = ca.leaf(true);
    let expired = TlsServer::start(chain, key, BOTH);
    let v = failing(&[&expired.url(), "--cacert", &ca.pem_path]);
    assert_eq!(u(&v, "/errors/tls_expired"), 1, "{v}");

    let (chain, key) = ca.leaf(false);
    let only13 = TlsServer::start(chain, key, &[&rustls::version::TLS13]);
    let v = failing(&[
        &only13.url(),
        "--cacert",
        &ca.pem_path,
        "--tls-version",
        "1.2",
    ]);
    assert_eq!(u(&v, "/errors/tls_alert"), 1, "{v}");

    // A listener that never answers: the kernel completes the TCP
    // connect from its backlog, and the ClientHello is never answered.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("https://{}/", silent.local_addr().unwrap());
    let v = failing(&[&silent_url, "--cacert", &ca.pem_path]);
    assert_eq!(u(&v, "/errors/tls_handshake_timeout"), 1, "{v}");
}

#[test]
fn insecure_skips_the_check_and_says_so() {
    let dir = TempDir::new().unwrap();
    let (_ca, server) = good_server(&dir);
    let url = server.url();
    let (code, v) = run_json(&[&url, "-c", "1", "-n", "5", "--insecure"]);
    assert_eq!((code, u(&v, "/requests")), (0, 5), "{v}");
    assert_eq!(v["tls"]["insecure"], true);
    let out = common::run(&["run", &url, "-c", "1", "-n", "5", "--insecure", "-q"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NOT checked"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
}

#[test]
fn tls_options_need_an_https_url() {
    let out = common::run(&["run", "http://127.0.0.1:9/", "-n", "1", "--insecure"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need an https:// URL"), "{err}");
    let out = common::run(&[
        "run",
        "https://127.0.0.1:9/",
        "-n",
        "1",
        "--cacert",
        "/nonexistent.pem",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cacert /nonexistent.pem"));
}
