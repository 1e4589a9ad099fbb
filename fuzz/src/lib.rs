//! What the fuzz targets share: the proxy's framing of a request, driven
//! through the calls the event loop makes (head parse, upstream head,
//! body scan fed a few bytes at a time), and the independent strict parser
//! of the tests (`proxy/tests/reference`), which shares no code with it.

#[path = "../../proxy/tests/reference/mod.rs"]
pub mod reference;

use speedmimi::buffer::BufPool;
use speedmimi::http::body::BodyScan;
use speedmimi::http::request::{parse_request_into, write_upstream_head, Limits, RequestHead};
use std::net::{IpAddr, Ipv4Addr};

/// The proxy's defaults (`server.max_header_size`, the request-line cap).
pub const LIMITS: Limits = Limits {
    max_head: 16 * 1024,
    max_uri: 8 * 1024,
};

/// A request the proxy accepted, and what it would send for it.
#[derive(Debug)]
pub struct Forwarded {
    /// Bytes of the input the request took (head, body, framing).
    pub end: usize,
    /// The head and body the backend would receive.
    pub upstream: Vec<u8>,
    /// The body's data (chunked coding removed).
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum ProxyFraming {
    /// Answered with an error status; nothing of it goes upstream.
    Rejected,
    /// The input ends before the request does.
    Incomplete,
    Accepted(Forwarded),
}

/// Frames the first request of `input` as the proxy does, feeding the body
/// `step` bytes at a time (as reads would deliver it).
pub fn proxy_request(input: &[u8], step: usize) -> ProxyFraming {
    let mut head = RequestHead::boxed();
    match parse_request_into(input, &LIMITS, &mut head) {
        Err(_) => return ProxyFraming::Rejected,
        Ok(false) => return ProxyFraming::Incomplete,
        Ok(true) => {}
    }
    let mut pool = BufPool::new(16 * 1024, 1);
    let mut out = pool.get();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if !write_upstream_head(input, &head, &mut out, ip, "fallback.invalid", false) {
        return ProxyFraming::Rejected;
    }
    let mut upstream = out.data().to_vec();
    let rest = &input[head.head_len..];
    let Some((coded, used)) = scan_body(&head, rest, step, false) else {
        return ProxyFraming::Rejected;
    };
    let Some((body, used_stripped)) = scan_body(&head, rest, step, true) else {
        panic!("strip mode refused a body that re-encoding accepted");
    };
    match (used, used_stripped) {
        (Some(a), Some(b)) => assert_eq!(a, b, "strip and re-encode end the body apart"),
        (None, None) => return ProxyFraming::Incomplete,
        _ => panic!("strip and re-encode disagree on whether the body ended"),
    }
    upstream.extend_from_slice(&coded);
    ProxyFraming::Accepted(Forwarded {
        end: head.head_len + used.unwrap(),
        upstream,
        body,
    })
}

/// Runs a body scan over `rest`; `None` when the proxy refuses the body,
/// else what it forwards and how many bytes of `rest` the body took (`None`:
/// it had not ended).
fn scan_body(
    head: &RequestHead,
    rest: &[u8],
    step: usize,
    strip: bool,
) -> Option<(Vec<u8>, Option<usize>)> {
    let mut pool = BufPool::new(16 * 1024, 1);
    let mut buf = pool.get();
    let mut scan = BodyScan::new(head.framing.clone(), strip);
    let mut sent = Vec::new();
    let mut fed = 0;
    loop {
        scan.scan(&mut buf).ok()?;
        let n = scan.pending();
        sent.extend_from_slice(&buf.data()[..n]);
        buf.consume(n);
        scan.sent(n);
        if scan.is_complete() {
            return Some((sent, Some(fed - buf.len())));
        }
        if n > 0 {
            continue; // what follows the sent bytes is scanned next
        }
        if fed == rest.len() {
            return Some((sent, None));
        }
        // A buffer that cannot take more stalls the connection: the proxy
        // must never get there (it would wait for the read timeout).
        let take = step.min(rest.len() - fed);
        let took = buf.push(&rest[fed..fed + take]);
        assert!(took > 0, "the body scan holds a full buffer it cannot place");
        fed += took;
    }
}
