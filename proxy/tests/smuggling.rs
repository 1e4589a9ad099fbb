//! Request smuggling and response desync, played over real sockets.
//!
//! Each case sends attack bytes from the public request-smuggling
//! literature (CL.TE, TE.CL, TE.TE obfuscations, Connection-named framing,
//! chunk size / extension / trailer junk, sizes that wrap, pipelining after
//! an error, response-side desync) through a fresh proxy to a backend that
//! records every byte and reads it with an independent strict parser
//! (tests/reference). A case asserts what the backend parsed (exactly the
//! requests the proxy meant to send, bodies byte-exact, nothing left over,
//! nothing a strict reader refuses) and what the client got.

mod common;
mod reference;

use common::*;
use reference::{Message, Outcome};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ------------------------------------------------------------ recorder --

/// What a recording backend answers to its `n`-th request (counted over
/// all its connections), and whether it closes afterwards.
type Answer = dyn Fn(&Message, usize) -> (Vec<u8>, bool) + Send + Sync;

#[derive(Default)]
struct ConnLog {
    raw: Vec<u8>,
    /// Bytes of `raw` that formed complete requests.
    consumed: usize,
    parsed: Vec<Message>,
    /// Why the strict parser refused the bytes after `consumed`.
    invalid: Option<String>,
    /// The proxy closed the connection.
    eof: bool,
}

struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<ConnLog>>>>>,
}

/// Answers `200` with the request's target as its body.
fn echo_target(m: &Message) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
        m.target.len(),
        m.target
    )
    .into_bytes()
}

impl Recorder {
    fn start() -> Recorder {
        Recorder::answering(Arc::new(|m, _| (echo_target(m), false)))
    }

    fn answering(answer: Arc<Answer>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<Mutex<ConnLog>>>>> = Arc::default();
        let served = Arc::new(Mutex::new(0usize));
        let list = conns.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = Arc::new(Mutex::new(ConnLog::default()));
                list.lock().unwrap().push(log.clone());
                let (answer, served) = (answer.clone(), served.clone());
                thread::spawn(move || record(stream, &log, &*answer, &served));
            }
        });
        Recorder { addr, conns }
    }

    fn logs(&self) -> Vec<Arc<Mutex<ConnLog>>> {
        self.conns.lock().unwrap().clone()
    }

    /// Every request parsed, in the order of connections then arrival.
    fn parsed(&self) -> Vec<Message> {
        self.logs()
            .iter()
            .flat_map(|l| l.lock().unwrap().parsed.clone())
            .collect()
    }

    fn raw(&self) -> Vec<u8> {
        self.logs()
            .iter()
            .flat_map(|l| l.lock().unwrap().raw.clone())
            .collect()
    }

    /// Asserts no connection carries bytes a strict reader refuses, and
    /// none is left holding part of a request unless the proxy closed it
    /// (waits, bounded, for that close).
    fn assert_clean(&self, case: &str) {
        let until = Instant::now() + Duration::from_secs(5);
        for log in self.logs() {
            loop {
                let l = log.lock().unwrap();
                if let Some(why) = &l.invalid {
                    panic!(
                        "{case}: the backend was sent bytes a strict parser refuses ({why}):\n{}",
                        String::from_utf8_lossy(&l.raw[l.consumed..])
                    );
                }
                if l.consumed == l.raw.len() || l.eof {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "{case}: a backend connection holds part of a request and stays open:\n{}",
                    String::from_utf8_lossy(&l.raw[l.consumed..])
                );
                drop(l);
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn record(mut stream: TcpStream, log: &Mutex<ConnLog>, answer: &Answer, served: &Mutex<usize>) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                log.lock().unwrap().eof = true;
                return;
            }
            Ok(n) => n,
        };
        let mut l = log.lock().unwrap();
        l.raw.extend_from_slice(&buf[..n]);
        while l.invalid.is_none() && l.consumed < l.raw.len() {
            match reference::request(&l.raw[l.consumed..]) {
                Outcome::Incomplete => break,
                Outcome::Invalid(why) => l.invalid = Some(why),
                Outcome::Complete(m) => {
                    l.consumed += m.len;
                    let index = {
                        let mut s = served.lock().unwrap();
                        *s += 1;
                        *s - 1
                    };
                    let (bytes, close) = answer(&m, index);
                    l.parsed.push(m);
                    let _ = stream.write_all(&bytes);
                    if close {
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                }
            }
        }
    }
}

// -------------------------------------------------------------- client --

/// What a strict client read on one connection.
struct Exchanged {
    responses: Vec<Message>,
    /// The connection was closed (after the responses).
    closed: bool,
    /// Bytes after the last complete response.
    rest: Vec<u8>,
    /// Why a strict client refused the rest, if it did.
    invalid: Option<String>,
}

/// Sends `input` on `stream` and reads responses with the strict parser
/// until `want` final (non-1xx) responses came, or the proxy closed, or
/// `IO_TIMEOUT` passed. `until_close`: keep reading to the close.
fn exchange(
    stream: &mut TcpStream,
    input: &[u8],
    want: usize,
    until_close: bool,
    head: bool,
) -> Exchanged {
    let _ = stream.write_all(input);
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + IO_TIMEOUT;
    let mut raw = Vec::new();
    let mut at = 0;
    let mut out = Exchanged {
        responses: Vec::new(),
        closed: false,
        rest: Vec::new(),
        invalid: None,
    };
    let mut buf = [0u8; 16 * 1024];
    loop {
        // Parse what there is.
        while out.invalid.is_none() {
            match reference::response(&raw[at..], head && out.responses.is_empty(), out.closed) {
                Outcome::Complete(m) if m.len > 0 => {
                    at += m.len;
                    if m.status >= 200 {
                        out.responses.push(m);
                    }
                }
                Outcome::Invalid(why) => out.invalid = Some(why),
                _ => break,
            }
        }
        let enough = out.responses.len() >= want && !until_close;
        if enough || out.closed || out.invalid.is_some() || Instant::now() >= until {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => out.closed = true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => out.closed = true,
        }
    }
    out.rest = raw[at..].to_vec();
    out
}

// --------------------------------------------------------------- cases --

/// A request the backend must parse: method, target, body.
type Req = (&'static str, &'static str, &'static [u8]);

enum Expect {
    /// The backend parses exactly these; the client gets each answer.
    Pass(&'static [Req]),
    /// The backend parses exactly `passed`, then the client gets one of
    /// `statuses` and the connection closes.
    Reject {
        passed: &'static [Req],
        statuses: &'static [u16],
    },
}
use Expect::*;

const fn reject(statuses: &'static [u16]) -> Expect {
    Reject {
        passed: &[],
        statuses,
    }
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    expect: Expect,
    /// Strings that must never reach the backend.
    absent: &'static [&'static str],
}

fn case(name: &'static str, input: impl AsRef<[u8]>, expect: Expect) -> Case {
    Case {
        name,
        input: input.as_ref().to_vec(),
        expect,
        absent: &[],
    }
}

impl Case {
    fn never_sent(mut self, absent: &'static [&'static str]) -> Case {
        self.absent = absent;
        self
    }
}

/// A POST to `/` with these header lines (each ending in CRLF) and body.
fn post(headers: &str, body: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: a\r\n{headers}\r\n{body}")
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// The shape every request the proxy forwards must have, whatever came in.
fn assert_forwarded_framing(case: &str, m: &Message) {
    let cls = m.header_all("content-length");
    assert!(cls.len() <= 1, "{case}: {} Content-Length lines", cls.len());
    if let Some(cl) = cls.first() {
        assert_eq!(
            *cl,
            m.body.len().to_string(),
            "{case}: Content-Length not normalized"
        );
        assert!(
            m.header("transfer-encoding").is_none(),
            "{case}: CL beside TE"
        );
    }
    assert!(m.trailers.is_empty(), "{case}: trailers forwarded");
    assert_eq!(m.header_all("host").len(), 1, "{case}: Host lines");
}

fn run(c: &Case) {
    let rec = Recorder::start();
    let mut proxy = Cfg::new(&[rec.addr]).start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect to proxy");
    let (passed, statuses): (&[Req], &[u16]) = match &c.expect {
        Pass(reqs) => (reqs, &[]),
        Reject { passed, statuses } => (passed, statuses),
    };
    let rejected = !statuses.is_empty();
    let want = passed.len() + rejected as usize;
    let got = exchange(&mut stream, &c.input, want, rejected, false);
    let name = c.name;
    let input = String::from_utf8_lossy(&c.input);
    assert!(
        got.invalid.is_none(),
        "{name}: the client got bytes a strict client refuses: {:?}\n{:?}",
        got.invalid,
        String::from_utf8_lossy(&got.rest)
    );
    let statuses_got: Vec<u16> = got.responses.iter().map(|r| r.status).collect();
    assert_eq!(
        got.responses.len(),
        want,
        "{name}: answers {statuses_got:?} to {input:?}\nproxy log:\n{}",
        proxy.log()
    );
    for (resp, (_, target, _)) in got.responses.iter().zip(passed) {
        assert_eq!(resp.status, 200, "{name}: answers {statuses_got:?}");
        assert_eq!(resp.body, target.as_bytes(), "{name}: answer body");
    }
    if rejected {
        let last = got.responses.last().unwrap().status;
        assert!(
            statuses.contains(&last),
            "{name}: answered {last}, expected one of {statuses:?} to {input:?}"
        );
        assert!(got.closed, "{name}: the connection stays open after {last}");
    }
    rec.assert_clean(name);
    let parsed = rec.parsed();
    let seen: Vec<(String, String, Vec<u8>)> = parsed
        .iter()
        .map(|m| (m.method.clone(), m.target.clone(), m.body.clone()))
        .collect();
    let expected: Vec<(String, String, Vec<u8>)> = passed
        .iter()
        .map(|(m, t, b)| (m.to_string(), t.to_string(), b.to_vec()))
        .collect();
    assert_eq!(
        seen, expected,
        "{name}: what the backend parsed from {input:?}"
    );
    for m in &parsed {
        assert_forwarded_framing(name, m);
    }
    let raw = String::from_utf8_lossy(&rec.raw()).into_owned();
    for s in c.absent.iter().chain(&["/smuggled"]) {
        let allowed_in_body = passed
            .iter()
            .any(|(_, _, b)| String::from_utf8_lossy(b).contains(s));
        assert!(
            allowed_in_body || !raw.contains(s),
            "{name}: {s:?} reached the backend:\n{raw}"
        );
    }
    proxy.assert_alive();
}

fn run_all(cases: Vec<Case>) -> usize {
    for c in &cases {
        run(c);
    }
    cases.len()
}

const REJECT_400: Expect = reject(&[400]);
/// An unknown transfer coding: 501 (or 400 where the list is also malformed).
const REJECT_CODING: Expect = reject(&[400, 501]);

#[test]
fn cl_te_conflicts_and_te_obfuscations() {
    let te_body = "0\r\n\r\nG";
    let n = run_all(vec![
        case(
            "cl-te",
            post(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                te_body,
            ),
            REJECT_400,
        ),
        case(
            "te-cl",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "8\r\nSMUGGLED\r\n0\r\n\r\n",
            ),
            REJECT_400,
        ),
        case(
            "te-with-cl-zero",
            post(
                "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                te_body,
            ),
            REJECT_400,
        ),
        case(
            "te-space-before-colon",
            post(
                "Transfer-Encoding : chunked\r\nContent-Length: 4\r\n",
                "0\r\n\r\n",
            ),
            REJECT_400,
        ),
        case(
            "te-tab-before-colon",
            post("Transfer-Encoding\t: chunked\r\n", "0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "te-xchunked",
            post(
                "Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n",
                "hello",
            ),
            REJECT_CODING,
        ),
        case(
            "te-chunked-then-x-lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
                "0\r\n\r\n",
            ),
            REJECT_CODING,
        ),
        case(
            "te-x-then-chunked-lines",
            post(
                "Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            REJECT_CODING,
        ),
        case(
            "te-chunked-twice-list",
            post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "te-chunked-twice-lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            REJECT_400,
        ),
        case(
            "te-quoted",
            post("Transfer-Encoding: \"chunked\"\r\n", "0\r\n\r\n"),
            REJECT_CODING,
        ),
        case(
            "te-identity",
            post(
                "Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
                "hello",
            ),
            REJECT_CODING,
        ),
        case(
            "te-chunked-identity",
            post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
            REJECT_CODING,
        ),
        case(
            "te-empty-value",
            post("Transfer-Encoding: \r\nContent-Length: 5\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "te-obs-fold",
            post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "te-folded-onto-other-field",
            post(
                "X-A: 1\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "hello",
            ),
            REJECT_400,
        ),
        case(
            "te-vertical-tab",
            post("Transfer-Encoding:\x0bchunked\r\n", "0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "te-form-feed",
            post("Transfer-Encoding: chunked\x0c\r\n", "0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "te-nul",
            post("Transfer-Encoding: chunked\x00\r\n", "0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "te-bare-cr",
            post("Transfer-Encoding: chunked\rX: y\r\n", "0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "te-in-http10",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            REJECT_400,
        ),
        case(
            "te-mixed-case-with-cl",
            post(
                "tRANSFER-eNCODING: ChUnKeD\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
            REJECT_400,
        ),
        case(
            "te-parameter",
            post("Transfer-Encoding: chunked;q=1\r\n", "0\r\n\r\n"),
            REJECT_CODING,
        ),
        case(
            "te-mixed-case-alone",
            post("Transfer-Encoding: ChUnKeD\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Pass(&[("POST", "/", b"hello")]),
        ),
        case(
            "te-tab-value",
            post(
                "Transfer-Encoding:\tchunked\t\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Pass(&[("POST", "/", b"hello")]),
        ),
        // Not Transfer-Encoding to a strict backend, but Transfer-Encoding to
        // a CGI-style one (`_` read as `-`): refused (framing_names_with_underscores).
        case(
            "te-underscore-name",
            post(
                "Transfer_Encoding: chunked\r\nContent-Length: 5\r\n",
                "hello",
            ),
            REJECT_400,
        ),
    ]);
    eprintln!("{n} cases");
}

#[test]
fn content_length_variants() {
    let n = run_all(vec![
        case(
            "cl-differing-lines",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            REJECT_400,
        ),
        case(
            "cl-differing-list",
            post("Content-Length: 5, 6\r\n", "hello!"),
            REJECT_400,
        ),
        case(
            "cl-plus",
            post("Content-Length: +5\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-minus",
            post("Content-Length: -5\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-hex",
            post("Content-Length: 0x5\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-space-inside",
            post("Content-Length: 5 5\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-exponent",
            post("Content-Length: 5e0\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-empty",
            post("Content-Length: \r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-wraps-64-bits",
            post("Content-Length: 18446744073709551621\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-space-before-colon",
            post("Content-Length : 5\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-obs-fold",
            post("Content-Length:\r\n 5\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-nul",
            post("Content-Length: 5\x00\r\n", "hello"),
            REJECT_400,
        ),
        case(
            "cl-two-equal-lines",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            Pass(&[("POST", "/", b"hello")]),
        ),
        case(
            "cl-equal-list",
            post("Content-Length: 5, 5\r\n", "hello"),
            Pass(&[("POST", "/", b"hello")]),
        ),
        case(
            "cl-leading-zeros",
            post("Content-Length: 0005\r\n", "hello"),
            Pass(&[("POST", "/", b"hello")]),
        ),
        case(
            "cl-tab-ows",
            post("Content-Length:\t5\t\r\n", "hello"),
            Pass(&[("POST", "/", b"hello")]),
        ),
        case(
            "cl-body-is-a-request",
            post("Content-Length: 35\r\n", SMUGGLED),
            Pass(&[("POST", "/", b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")]),
        ),
        case(
            "get-with-body",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            Pass(&[("GET", "/", b"hello")]),
        ),
        case(
            "cl-zero-then-pipelined",
            format!(
                "{}GET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
                post("Content-Length: 0\r\n", "")
            ),
            Pass(&[("POST", "/", b""), ("GET", "/2", b"")]),
        ),
    ]);
    eprintln!("{n} cases");
}

#[test]
fn framing_named_in_connection() {
    let n = run_all(vec![
        // The issue's reproduction: the body would become a second request.
        case("connection-content-length", post("Connection: Content-Length\r\nContent-Length: 35\r\n", SMUGGLED), REJECT_400),
        case(
            "connection-transfer-encoding",
            post("Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", &format!("23\r\n{SMUGGLED}\r\n0\r\n\r\n")),
            REJECT_400,
        ),
        case("connection-host", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Host\r\n\r\n", REJECT_400),
        case("connection-close-and-content-length", post("Connection: close, Content-Length\r\nContent-Length: 35\r\n", SMUGGLED), REJECT_400),
        case(
            "connection-second-line-upper-case",
            post("Connection: keep-alive\r\nConnection: CONTENT-LENGTH\r\nContent-Length: 35\r\n", SMUGGLED),
            REJECT_400,
        ),
        case(
            "connection-content-length-http10",
            "POST / HTTP/1.0\r\nConnection: keep-alive, content-length\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.0\r\n\r\n\r\n",
            REJECT_400,
        ),
    ]);
    eprintln!("{n} cases");
}

#[test]
fn framing_names_with_underscores() {
    // CGI-style servers map `_` to `-`: to them these frame the message,
    // to us they are ordinary fields. Refused, never forwarded.
    let n = run_all(vec![
        case(
            "underscore-transfer-encoding",
            post(
                "Transfer_Encoding: chunked\r\nContent-Length: 35\r\n",
                SMUGGLED,
            ),
            REJECT_400,
        ),
        case(
            "underscore-content-length",
            post("Content_Length: 0\r\nContent-Length: 35\r\n", SMUGGLED),
            REJECT_400,
        ),
        case(
            "underscore-content-length-alone",
            post("content_length: 35\r\n", SMUGGLED),
            REJECT_400,
        ),
        case(
            "underscore-transfer-encoding-mixed-case",
            post(
                "TRANSFER_encoding: chunked\r\n",
                &format!("23\r\n{SMUGGLED}\r\n0\r\n\r\n"),
            ),
            REJECT_400,
        ),
    ]);
    eprintln!("{n} cases");
}

#[test]
fn head_syntax() {
    let n = run_all(vec![
        case(
            "duplicate-host",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            REJECT_400,
        ),
        case("missing-host", "GET / HTTP/1.1\r\n\r\n", REJECT_400),
        case(
            "host-with-space",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            REJECT_400,
        ),
        case(
            "bare-cr-in-value",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            REJECT_400,
        ),
        case(
            "nul-in-name",
            "GET / HTTP/1.1\r\nHost: a\r\nX\x00Y: 1\r\n\r\n",
            REJECT_400,
        ),
        case(
            "space-in-name",
            "GET / HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n",
            REJECT_400,
        ),
        case(
            "field-without-colon",
            "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
            REJECT_400,
        ),
        case(
            "request-line-double-space",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            REJECT_400,
        ),
        case(
            "request-line-tab",
            "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
            REJECT_400,
        ),
        case(
            "version-2",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            reject(&[400, 505]),
        ),
        case(
            "head-over-the-limit",
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
                "a".repeat(20_000)
            ),
            reject(&[431]),
        ),
        // Bare LF ends lines (RFC 9112 §2.2 lets a recipient accept it): the
        // backend gets CRLF only.
        case(
            "bare-lf-line-ends",
            "POST / HTTP/1.1\nHost: a\nContent-Length: 5\n\nhello",
            Pass(&[("POST", "/", b"hello")]),
        ),
        case(
            "lower-case-method",
            "get / HTTP/1.1\r\nHost: a\r\n\r\n",
            Pass(&[("get", "/", b"")]),
        ),
        // Request-target bytes (found by the differential fuzz target): raw
        // UTF-8 in an absolute-form target was forwarded as `GET /?0<0ё`.
        case(
            "target-non-ascii-absolute-form",
            b"GET http://ub.example:8?0<0\xd1\x91 HTTP/1.1\r\nHost: a\r\n\r\n",
            REJECT_400,
        ),
        case(
            "target-non-ascii-origin-form",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
            REJECT_400,
        ),
        case(
            "target-del",
            "GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n",
            REJECT_400,
        ),
        case(
            "target-fragment",
            "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
            REJECT_400,
        ),
        case(
            "target-bad-percent",
            "GET /a%2g HTTP/1.1\r\nHost: a\r\n\r\n",
            REJECT_400,
        ),
        case(
            "target-cut-percent",
            "GET /a?b=%4 HTTP/1.1\r\nHost: a\r\n\r\n",
            REJECT_400,
        ),
        // What browsers send raw passes as it came.
        case(
            "target-browser-raw-chars",
            "GET /a%2Fb/{x}|^[y]?q=<1>&r=\"2\" HTTP/1.1\r\nHost: a\r\n\r\n",
            Pass(&[("GET", "/a%2Fb/{x}|^[y]?q=<1>&r=\"2\"", b"")]),
        ),
    ]);
    eprintln!("{n} cases");
}

#[test]
fn chunk_size_and_extension_junk() {
    let chunked = |body: &str| post("Transfer-Encoding: chunked\r\n", body);
    let hello = Pass(&[("POST", "/", b"hello")]);
    let n = run_all(vec![
        case(
            "chunk-size-junk",
            chunked("5 junk\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-size-trailing-space",
            chunked("5 \r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-size-leading-space",
            chunked(" 5\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-size-0x",
            chunked("0x5\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-size-plus",
            chunked("+5\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-size-minus",
            chunked("-5\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-size-bare-lf",
            chunked("5\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-size-empty",
            chunked("\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-size-wraps-64-bits",
            chunked("10000000000000005\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-size-16-digits",
            chunked("ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-ext-semicolon-only",
            chunked("5;\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-ext-open-quote",
            chunked("5;a=\"b\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-ext-bare-cr",
            chunked("5;a\rb\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-ext-control-byte",
            chunked("5;a=\x01\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-ext-space-in-name",
            chunked("5;a b\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-ext-no-value",
            chunked("5;a=\r\nhello\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-ext-over-4-kib",
            chunked(&format!("5;a={}\r\nhello\r\n0\r\n\r\n", "b".repeat(5000))),
            REJECT_400,
        ),
        case(
            "chunk-data-too-long",
            chunked("5\r\nhelloXX\r\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-data-without-crlf",
            chunked("5\r\nhello0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-data-bare-lf",
            chunked("5\r\nhello\n0\r\n\r\n"),
            REJECT_400,
        ),
        case(
            "chunk-ext-valid",
            chunked("5;a=b;c=\"d \\\" e\"\r\nhello\r\n0\r\n\r\n"),
            hello,
        )
        .never_sent(&[";a=b", "d \\\" e"]),
        case(
            "chunk-ext-bws",
            chunked("5 ; a = b\r\nhello\r\n0\r\n\r\n"),
            Pass(&[("POST", "/", b"hello")]),
        )
        .never_sent(&["; a"]),
        case(
            "chunk-upper-case-hex",
            chunked("A\r\n0123456789\r\n0\r\n\r\n"),
            Pass(&[("POST", "/", b"0123456789")]),
        ),
        case(
            "chunk-leading-zeros",
            chunked("0005\r\nhello\r\n0000\r\n\r\n"),
            Pass(&[("POST", "/", b"hello")]),
        )
        .never_sent(&["0005", "0000"]),
        case(
            "chunk-data-is-a-request",
            chunked(&format!("23\r\n{SMUGGLED}\r\n0\r\n\r\n")),
            Pass(&[("POST", "/", b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")]),
        ),
        case(
            "chunked-then-pipelined",
            chunked("5\r\nhello\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Pass(&[("POST", "/", b"hello"), ("GET", "/2", b"")]),
        ),
        case(
            "last-chunk-extension",
            chunked("5\r\nhello\r\n0;x=y\r\n\r\n"),
            Pass(&[("POST", "/", b"hello")]),
        )
        .never_sent(&["x=y"]),
    ]);
    eprintln!("{n} cases");
}

#[test]
fn trailer_junk() {
    let chunked = |trailers: &str| {
        post(
            "Transfer-Encoding: chunked\r\n",
            &format!("5\r\nhello\r\n0\r\n{trailers}\r\n"),
        )
    };
    let hello = || Pass(&[("POST", "/", b"hello")]);
    let n = run_all(vec![
        case(
            "trailer-request-line",
            chunked("GET /smuggled HTTP/1.1\r\n"),
            REJECT_400,
        ),
        case("trailer-without-colon", chunked("NoColon\r\n"), REJECT_400),
        case(
            "trailer-obs-fold",
            chunked("A: 1\r\n folded\r\n"),
            REJECT_400,
        ),
        case(
            "trailer-space-before-colon",
            chunked("A : 1\r\n"),
            REJECT_400,
        ),
        case("trailer-bare-lf", chunked("A: 1\nB: 2\r\n"), REJECT_400),
        case("trailer-control-byte", chunked("A: \x7f\r\n"), REJECT_400),
        case(
            "trailers-over-100",
            chunked(&"A: 1\r\n".repeat(101)),
            REJECT_400,
        ),
        case(
            "trailer-valid-is-dropped",
            chunked("X-Trailer: 1\r\n"),
            hello(),
        )
        .never_sent(&["X-Trailer"]),
        case(
            "trailer-content-length",
            chunked("Content-Length: 50\r\n"),
            hello(),
        )
        .never_sent(&["Content-Length: 50"]),
        case(
            "trailer-transfer-encoding",
            chunked("Transfer-Encoding: chunked\r\n"),
            hello(),
        ),
    ]);
    eprintln!("{n} cases");
}

#[test]
fn pipelining_after_an_error() {
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    let n = run_all(vec![
        case("bad-cl-then-pipelined", format!("{}{SMUGGLED}", post("Content-Length: x\r\n", "")), REJECT_400),
        case(
            "good-bad-good",
            format!("{}{}{}", get("/1"), post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), get("/smuggled")),
            Reject {
                passed: &[("GET", "/1", b"")],
                statuses: &[400],
            },
        ),
        case(
            "chunk-junk-then-pipelined",
            format!("{}{SMUGGLED}", post("Transfer-Encoding: chunked\r\n", "5 junk\r\nhello\r\n0\r\n\r\n")),
            REJECT_400,
        ),
        case(
            "refused-upgrade-then-pipelined",
            format!("GET /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n{}", get("/2")),
            Pass(&[("GET", "/up", b""), ("GET", "/2", b"")]),
        ),
        case(
            "expect-continue-with-body",
            post("Expect: 100-continue\r\nContent-Length: 5\r\n", "hello"),
            Pass(&[("POST", "/", b"hello")]),
        ),
        case(
            "http10-keep-alive-pipelined",
            "POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.0\r\n\r\n",
            Pass(&[("POST", "/", b"hello"), ("GET", "/2", b"")]),
        ),
    ]);
    eprintln!("{n} cases");
}

/// Sends `attack`, whose body carries a request, and asserts the backend
/// got that request as body bytes only: `upstream` shows in the raw bytes,
/// no request is parsed out of the body, nothing a strict reader refuses.
fn assert_stays_body(attack: &str, upstream: &str) {
    let rec = Recorder::start();
    let proxy = Cfg::new(&[rec.addr]).start();
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    stream.write_all(attack.as_bytes()).unwrap();
    wait_until("the body to reach the backend", || {
        String::from_utf8_lossy(&rec.raw()).contains(SMUGGLED)
    });
    let raw = String::from_utf8_lossy(&rec.raw()).into_owned();
    assert!(raw.contains(upstream), "{raw}");
    assert!(
        rec.parsed().is_empty(),
        "a request was parsed out of the body"
    );
    rec.assert_clean_prefix();
}

/// A chunk size of 2^32 + 5 is 5 to a parser that keeps 32 bits: we say
/// the full size upstream, so the bytes after `hello` stay body data.
#[test]
fn chunk_size_that_wraps_in_32_bits_stays_body() {
    let attack = post(
        "Transfer-Encoding: chunked\r\n",
        &format!("100000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
    );
    assert_stays_body(&attack, "\r\n\r\n100000005\r\nhello");
}

/// Same for Content-Length 2^32 + 5.
#[test]
fn content_length_that_wraps_in_32_bits_stays_body() {
    let attack = post(
        "Content-Length: 4294967301\r\n",
        &format!("hello{SMUGGLED}"),
    );
    assert_stays_body(&attack, "Content-Length: 4294967301\r\n");
}

impl Recorder {
    /// No connection holds bytes a strict reader refuses (a body may be
    /// still under way).
    fn assert_clean_prefix(&self) {
        for log in self.logs() {
            let l = log.lock().unwrap();
            assert!(l.invalid.is_none(), "{:?}", l.invalid);
        }
    }
}

// ------------------------------------------------------ response side --

/// The smuggled second response a desync would hand to the next client.
const SMUGGLED_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED";

/// How the client's first request may be answered.
enum First {
    /// This status and body.
    Answer(u16, &'static [u8]),
    /// 502, or the response cut short and the connection closed (the head
    /// had gone out before the body's framing proved bad).
    BadGateway,
}

struct RespCase {
    name: &'static str,
    /// The backend's answer to the first request (then it keeps serving).
    answer: String,
    first: First,
    head: bool,
}

fn resp(name: &'static str, answer: impl Into<String>, first: First) -> RespCase {
    RespCase {
        name,
        answer: answer.into(),
        first,
        head: false,
    }
}

fn run_resp(c: &RespCase) {
    let answer = c.answer.clone().into_bytes();
    let rec = Recorder::answering(Arc::new(move |m, i| {
        if i == 0 {
            (answer.clone(), false)
        } else {
            (echo_target(m), false)
        }
    }));
    let mut cfg = Cfg::new(&[rec.addr]);
    cfg.retries = 0;
    let proxy = cfg.start();
    let name = c.name;
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    let method = if c.head { "HEAD" } else { "GET" };
    let first = format!("{method} /1 HTTP/1.1\r\nHost: a\r\n\r\n");
    let got = exchange(&mut stream, first.as_bytes(), 1, false, c.head);
    let statuses: Vec<u16> = got.responses.iter().map(|r| r.status).collect();
    let says_close = got.responses.iter().any(|r| {
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    });
    let open = !got.closed && !says_close;
    match c.first {
        First::Answer(status, body) => {
            assert!(got.invalid.is_none(), "{name}: {:?}", got.invalid);
            assert_eq!(statuses, [status], "{name}");
            assert_eq!(got.responses[0].body, body, "{name}");
            let cls = got.responses[0].header_all("content-length");
            assert!(
                cls.len() <= 1,
                "{name}: {} Content-Length lines to the client",
                cls.len()
            );
        }
        First::BadGateway => {
            if statuses == [502] {
                assert!(got.invalid.is_none(), "{name}: {:?}", got.invalid);
            } else {
                // Cut short: the strict client saw no complete response.
                assert!(statuses.is_empty(), "{name}: answered {statuses:?}");
                assert!(
                    got.closed,
                    "{name}: a cut response left the connection open"
                );
            }
        }
    }
    // The next request, on the same connection if it stayed open, or on a
    // new one, gets its own answer: never the smuggled one.
    if !open {
        stream = TcpStream::connect(proxy.addr).unwrap();
    }
    let got = exchange(
        &mut stream,
        b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        1,
        false,
        false,
    );
    assert_eq!(
        got.responses.len(),
        1,
        "{name}: no answer to the next request (closed {}, invalid {:?}, rest {:?})\nproxy log:\n{}",
        got.closed,
        got.invalid,
        String::from_utf8_lossy(&got.rest),
        proxy.log()
    );
    assert_eq!(got.responses[0].status, 200, "{name}: next answer");
    assert_eq!(
        got.responses[0].body, b"/2",
        "{name}: the next request got another answer"
    );
}

#[test]
fn response_side_desync() {
    let ok = |extra: &str| format!("HTTP/1.1 200 OK\r\n{extra}\r\n");
    let s = SMUGGLED_RESPONSE;
    let cases = vec![
        resp(
            "resp-cl-te",
            ok("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n",
            First::Answer(200, b"hello"),
        ),
        resp(
            "resp-differing-cl",
            ok("Content-Length: 2\r\nContent-Length: 3\r\n") + "ok" + s,
            First::BadGateway,
        ),
        resp(
            "resp-connection-content-length",
            ok("Connection: Content-Length\r\nContent-Length: 2\r\n") + "ok" + s,
            First::BadGateway,
        ),
        resp(
            "resp-connection-transfer-encoding",
            ok("Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n")
                + "2\r\nok\r\n0\r\n\r\n"
                + s,
            First::BadGateway,
        ),
        resp(
            "resp-chunked-twice",
            ok("Transfer-Encoding: chunked, chunked\r\n") + "2\r\nok\r\n0\r\n\r\n",
            First::BadGateway,
        ),
        resp(
            "resp-chunked-twice-lines",
            ok("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n")
                + "2\r\nok\r\n0\r\n\r\n",
            First::BadGateway,
        ),
        resp(
            "resp-te-empty",
            ok("Transfer-Encoding: \r\nContent-Length: 2\r\n") + "ok" + s,
            First::BadGateway,
        ),
        resp(
            "resp-cl-plus",
            ok("Content-Length: +2\r\n") + "ok" + s,
            First::BadGateway,
        ),
        resp(
            "resp-cl-too-large",
            ok("Content-Length: 18446744073709551618\r\n") + "ok" + s,
            First::BadGateway,
        ),
        resp(
            "resp-chunk-size-junk",
            ok("Transfer-Encoding: chunked\r\n") + "2 junk\r\nok\r\n0\r\n\r\n" + s,
            First::BadGateway,
        ),
        resp(
            "resp-trailer-request-line",
            ok("Transfer-Encoding: chunked\r\n") + "2\r\nok\r\n0\r\nGET / HTTP/1.1\r\n\r\n" + s,
            First::BadGateway,
        ),
        resp(
            "resp-chunk-ext-junk",
            ok("Transfer-Encoding: chunked\r\n") + "2;\"\r\nok\r\n0\r\n\r\n" + s,
            First::BadGateway,
        ),
        resp(
            "resp-nul-in-head",
            ok("X: a\x00b\r\nContent-Length: 2\r\n") + "ok",
            First::BadGateway,
        ),
        resp(
            "resp-obs-fold",
            ok("X: a\r\n Content-Length: 50\r\nContent-Length: 2\r\n") + "ok",
            First::BadGateway,
        ),
        resp(
            "resp-space-before-colon",
            ok("Content-Length : 2\r\n") + "ok",
            First::BadGateway,
        ),
        resp(
            "resp-101-unasked",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
                .to_string()
                + s,
            First::BadGateway,
        ),
        resp(
            "resp-body-longer-than-cl",
            ok("Content-Length: 2\r\n") + "ok" + s,
            First::Answer(200, b"ok"),
        ),
        resp(
            "resp-204-with-body",
            "HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n".to_string() + s,
            First::Answer(204, b""),
        ),
        resp(
            "resp-304-with-body",
            "HTTP/1.1 304 Not Modified\r\n\r\n".to_string() + s,
            First::Answer(304, b""),
        ),
        resp(
            "resp-two-equal-cl",
            ok("Content-Length: 2\r\nContent-Length: 2\r\n") + "ok",
            First::Answer(200, b"ok"),
        ),
        resp(
            "resp-cl-leading-zeros",
            ok("Content-Length: 002\r\n") + "ok",
            First::Answer(200, b"ok"),
        ),
        resp(
            "resp-bare-lf-head",
            "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
            First::Answer(200, b"ok"),
        ),
        resp(
            "resp-chunk-ext-and-trailer",
            ok("Transfer-Encoding: chunked\r\n") + "2;a=b\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
            First::Answer(200, b"ok"),
        ),
        resp(
            "resp-interim-then-answer",
            "HTTP/1.1 100 Continue\r\n\r\n".to_string() + &ok("Content-Length: 2\r\n") + "ok",
            First::Answer(200, b"ok"),
        ),
        RespCase {
            head: true,
            ..resp(
                "resp-head-with-body",
                ok("Content-Length: 8\r\n") + "SMUGGLED",
                First::Answer(200, b""),
            )
        },
    ];
    for c in &cases {
        run_resp(c);
    }
    eprintln!("{} cases", cases.len());
}
