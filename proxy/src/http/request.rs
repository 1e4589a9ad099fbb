//! Request heads: strict parsing (RFC 9112) and the head sent upstream.
//!
//! `parse_request` tokenizes with httparse and applies our framing rules; it
//! returns offsets into the buffer so the caller can pick a route and a
//! backend and then `write_upstream_head` without parsing twice. Anything
//! ambiguous is refused: a proxy that guesses enables request smuggling.

use std::io::Write as _;
use std::net::IpAddr;

use super::body::Framing;
use super::chunked::ChunkedDecoder;
use super::errors::Reject;
use super::{classify, lines_end_in_crlf, list_tokens, ConnectionTokens, Name};
use crate::buffer::Buf;

/// Fields a request is framed or routed by: a `Connection` header naming
/// one of them is refused.
const FRAMING_FIELDS: &[&str] = &["content-length", "transfer-encoding", "host"];

/// Most header lines accepted in one request (431 beyond it).
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (431 beyond it).
    pub max_head: usize,
    /// Longest request line (414 beyond it).
    pub max_uri: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Other,
}

impl Method {
    fn from_bytes(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }
    /// RFC 9110 §9.2.2: safe to send twice.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post | Method::Other)
    }
}

/// A byte range in the buffer holding the head.
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn of(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct HeaderLine {
    name: Span,
    value: Span,
    forward: bool,
    xff: bool,
}

/// A parsed request head: offsets into the buffer it was parsed from.
#[derive(Debug)]
pub struct RequestHead {
    pub head_len: usize,
    pub method: Method,
    method_span: Span,
    pub target: Span,
    /// The origin-form part sent upstream (path and query); empty for an
    /// absolute-form target without a path, which is sent as "/".
    pub origin: Span,
    /// The authority of an absolute-form target: it replaces Host.
    pub authority: Option<Span>,
    pub http10: bool,
    /// Host header value (port included), if any.
    pub host: Option<Span>,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Connection: upgrade with an Upgrade header: becomes a tunnel after 101.
    pub upgrade: Option<Span>,
    headers: [HeaderLine; MAX_HEADERS],
    header_count: usize,
}

impl RequestHead {
    /// An empty head to parse into.
    pub fn boxed() -> Box<RequestHead> {
        Box::new(RequestHead {
            head_len: 0,
            method: Method::Other,
            method_span: Span::default(),
            target: Span::default(),
            origin: Span::default(),
            authority: None,
            http10: false,
            host: None,
            framing: Framing::Empty,
            keep_alive: false,
            expect_continue: false,
            upgrade: None,
            headers: [HeaderLine::default(); MAX_HEADERS],
            header_count: 0,
        })
    }

    pub fn method_bytes<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.method_span.get(buf)
    }
    /// The path of the target, without query (for routing).
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let t = self.origin.get(buf);
        let t = match t.iter().position(|&b| b == b'?') {
            Some(q) => &t[..q],
            None => t,
        };
        if t.is_empty() {
            b"/"
        } else {
            t
        }
    }

    /// The host a route is chosen by: an absolute-form target's authority
    /// wins over the Host header (RFC 9112 §3.2.2).
    pub fn route_host<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        match (self.authority, self.host) {
            (Some(a), _) => a.get(buf),
            (None, Some(h)) => h.get(buf),
            (None, None) => b"",
        }
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)` means the head is
/// incomplete (read more), within the limits.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<Box<RequestHead>>, Reject> {
    let mut head = RequestHead::boxed();
    Ok(parse_request_into(buf, limits, &mut head)?.then_some(head))
}

/// `parse_request` into a head the caller keeps and reuses (it is ~2 KiB:
/// building and moving a fresh one per request shows in profiles). Returns
/// false while the head is incomplete.
pub fn parse_request_into(
    buf: &[u8],
    limits: &Limits,
    out: &mut RequestHead,
) -> Result<bool, Reject> {
    // Uninitialized: zeroing 100 headers per request is measurable work.
    let mut raw = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadersTooLarge),
        Err(_) => return Err(classify_garbage(buf, limits)),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            let line_end = buf.iter().position(|&b| b == b'\n');
            if line_end.is_none_or(|p| p > limits.max_uri) && buf.len() > limits.max_uri {
                return Err(Reject::UriTooLong);
            }
            if buf.len() >= limits.max_head {
                return Err(Reject::HeadersTooLarge);
            }
            return Ok(false);
        }
    };
    if head_len > limits.max_head {
        return Err(Reject::HeadersTooLarge);
    }
    let head = &buf[..head_len];
    // httparse accepts some bytes RFC 9112 forbids: NUL and a CR that does
    // not end a line. Refuse them outright.
    for i in memchr::memchr2_iter(0, b'\r', head) {
        if head[i] == 0 || head.get(i + 1) != Some(&b'\n') {
            return Err(Reject::BadRequest);
        }
    }
    let method_str = req.method.ok_or(Reject::BadRequest)?;
    let target = req.path.ok_or(Reject::BadRequest)?;
    if target.len() > limits.max_uri {
        return Err(Reject::UriTooLong);
    }
    let http10 = match req.version {
        Some(1) => false,
        Some(0) => true,
        _ => return Err(Reject::BadRequest),
    };
    if method_str == "CONNECT" {
        return Err(Reject::NotImplemented);
    }
    if !valid_target_bytes(target.as_bytes()) {
        return Err(Reject::BadRequest);
    }
    let method = Method::from_bytes(method_str);
    let (origin, authority) = target_form(buf, target.as_bytes(), method_str)?;

    let mut conn = ConnectionTokens::default();
    let mut host: Option<Span> = None;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut saw_te = false;
    let mut expect_continue = false;
    let mut upgrade_value: Option<Span> = None;
    // Each name classified once; the forwarding pass below reuses it.
    let mut names = [Name::Other; MAX_HEADERS];
    for (h, kind) in req.headers.iter().zip(names.iter_mut()) {
        *kind = classify(h.name);
        match *kind {
            Name::Host => {
                if host.is_some() {
                    return Err(Reject::BadRequest);
                }
                let empty_http10_host = http10 && h.value.is_empty();
                if !(valid_host(h.value) || empty_http10_host) {
                    return Err(Reject::BadRequest);
                }
                host = Some(Span::of(buf, h.value));
            }
            Name::ContentLength => {
                let n = parse_content_length(h.value).ok_or(Reject::BadRequest)?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(Reject::BadRequest);
                }
                content_length = Some(n);
            }
            Name::TransferEncoding => {
                for coding in list_tokens(h.value) {
                    if chunked {
                        // chunked must be the last coding, applied once
                        return Err(Reject::BadRequest);
                    }
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        chunked = true;
                    } else {
                        return Err(Reject::NotImplemented);
                    }
                }
                saw_te = true;
            }
            Name::Connection if !conn.add(h.value) => return Err(Reject::HeadersTooLarge),
            Name::Expect if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") => {
                expect_continue = true;
            }
            Name::Upgrade => upgrade_value = Some(Span::of(buf, h.value)),
            Name::FramingLookalike => return Err(Reject::BadRequest),
            _ => {}
        }
    }
    // Framing is never hop-by-hop: a Connection header naming a field the
    // message is framed or routed by would have it dropped upstream while
    // we framed by it (the backend would read the body as a request).
    if conn.names_any(FRAMING_FIELDS) {
        return Err(Reject::BadRequest);
    }
    if saw_te && (!chunked || content_length.is_some() || http10) {
        return Err(Reject::BadRequest);
    }
    if host.is_none() && !http10 {
        return Err(Reject::BadRequest);
    }
    let framing = if chunked {
        Framing::Chunked(ChunkedDecoder::default())
    } else {
        match content_length {
            Some(n) => Framing::Length(n),
            None => Framing::Empty,
        }
    };
    let upgrade = if conn.upgrade && !http10 {
        upgrade_value
    } else {
        None
    };
    let keep_alive = if http10 {
        conn.keep_alive && !conn.close
    } else {
        !conn.close
    };

    for ((line, h), &name) in out.headers.iter_mut().zip(req.headers.iter()).zip(&names) {
        let xff = name == Name::XForwardedFor;
        // Content-Length goes upstream once, normalized, written by us.
        let forward = !(name.is_hop_by_hop()
            || name == Name::ContentLength
            || conn.names(h.name)
            || xff
            || name == Name::XForwardedProto
            || (authority.is_some() && name == Name::Host));
        *line = HeaderLine {
            name: Span::of(buf, h.name.as_bytes()),
            value: Span::of(buf, h.value),
            forward,
            xff,
        };
    }
    out.head_len = head_len;
    out.method = method;
    out.method_span = Span::of(buf, method_str.as_bytes());
    out.target = Span::of(buf, target.as_bytes());
    out.origin = origin;
    out.authority = authority;
    out.http10 = http10;
    out.host = host;
    out.framing = framing;
    out.keep_alive = keep_alive;
    out.expect_continue = expect_continue;
    out.upgrade = upgrade;
    out.header_count = req.headers.len();
    Ok(true)
}

/// The request-target forms of RFC 9112 §3.2: origin-form ("/path"),
/// absolute-form ("http://host/path", its authority replacing Host), and
/// asterisk-form ("*", OPTIONS only). Anything else is refused.
fn target_form(buf: &[u8], target: &[u8], method: &str) -> Result<(Span, Option<Span>), Reject> {
    if target.starts_with(b"/") || (target == b"*" && method == "OPTIONS") {
        return Ok((Span::of(buf, target), None));
    }
    let scheme_len = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return Err(Reject::BadRequest);
    };
    let rest = &target[scheme_len..];
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if !valid_host(authority) {
        return Err(Reject::BadRequest);
    }
    Ok((Span::of(buf, &rest[end..]), Some(Span::of(buf, authority))))
}

/// Bytes a request-target may hold as sent: visible ASCII (RFC 9112 §3.2,
/// RFC 3986 §2) without '#' (a fragment is never sent). httparse lets
/// bytes >= 0x80 through; a strict next hop refuses them, a lenient one
/// may decode them otherwise than we route. The characters RFC 3986 wants
/// percent-encoded but browsers send raw in paths and queries (`{}|^[]`
/// and the like) stay accepted, as nginx and HAProxy accept them.
const TARGET_BYTE: [u8; 256] = {
    let mut table = [BAD; 256];
    let mut b = 0x21;
    while b < 0x7f {
        table[b] = OK;
        b += 1;
    }
    table[b'#' as usize] = BAD;
    table[b'%' as usize] = PERCENT;
    table
};
const BAD: u8 = 0;
const OK: u8 = 1;
const PERCENT: u8 = 2;

/// The target's bytes, and every '%' followed by two hex digits: "%zz" or
/// a cut-off "%4" is decoded differently by different backends. One pass:
/// this runs on every request.
fn valid_target_bytes(target: &[u8]) -> bool {
    let mut i = 0;
    while i < target.len() {
        match TARGET_BYTE[target[i] as usize] {
            OK => i += 1,
            PERCENT => match target.get(i + 1..i + 3) {
                Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return false,
            },
            _ => return false,
        }
    }
    true
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2), strictly: a reg-name of
/// unreserved characters, percent-encodings and sub-delimiters other than
/// the comma (a comma is how two Host values look once joined), or a
/// bracketed IPv6 literal; a port of at most 5 digits.
/// Bytes of a reg-name or IPv4 host (RFC 3986: unreserved, pct-encoded,
/// sub-delims), as a table: this runs on every request's Host.
const HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~%!$&'()*+;=";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &value[close + 1..] {
            [] => (&value[..=close], None),
            [b':', port @ ..] => (&value[..=close], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        }
    };
    let host_ok =
        host.starts_with(b"[") || (!host.is_empty() && host.iter().all(|&b| HOST_BYTE[b as usize]));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// A head httparse refused: 414 when it is the request line that is too
/// long, otherwise 400.
fn classify_garbage(buf: &[u8], limits: &Limits) -> Reject {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line_end > limits.max_uri {
        Reject::UriTooLong
    } else {
        Reject::BadRequest
    }
}

/// `1*DIGIT`, or a list of identical values ("5, 5"), at most 18 digits.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + (d - b'0') as u64);
        if result.is_some_and(|r| r != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

/// Writes the head sent to the backend: hop-by-hop headers dropped,
/// X-Forwarded-For appended, X-Forwarded-Proto (`https` when the client
/// spoke TLS to us) and Via added. Returns false when it does not fit in `out`.
pub fn write_upstream_head(
    buf: &[u8],
    head: &RequestHead,
    out: &mut Buf,
    client_ip: IpAddr,
    fallback_host: &str,
    https: bool,
) -> bool {
    let mut w = Writer { out, ok: true };
    // The request line goes out as it came when it already is origin-form
    // HTTP/1.1 (httparse allows one space between its parts, nothing else).
    let line_end = head.target.end as usize + b" HTTP/1.1\r\n".len();
    let line_verbatim = !head.http10
        && head.authority.is_none()
        && head.method_span.start == 0
        && head.origin.start == head.target.start
        && head.origin.end == head.target.end
        && buf.get(head.target.end as usize..line_end) == Some(b" HTTP/1.1\r\n");
    if line_verbatim {
        w.put(&buf[..line_end]);
    } else {
        w.put(head.method_span.get(buf));
        w.put(b" ");
        let origin = head.origin.get(buf);
        if !origin.starts_with(b"/") && origin != b"*" {
            w.put(b"/"); // absolute-form without a path
        }
        w.put(origin);
        w.put(b" HTTP/1.1\r\n");
    }
    if let Some(authority) = head.authority {
        w.put(b"Host: ");
        w.put(authority.get(buf));
        w.put(b"\r\n");
    }
    let lines = &head.headers[..head.header_count];
    let starts = lines.iter().map(|l| l.name.start as usize);
    if lines_end_in_crlf(&buf[..head.head_len], starts) {
        // Kept lines go out verbatim, a run of them in one copy.
        let mut run_start = None;
        for line in lines {
            let start = line.name.start as usize;
            match run_start {
                None if line.forward => run_start = Some(start),
                Some(from) if !line.forward => {
                    w.put(&buf[from..start]);
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(from) = run_start {
            w.put(&buf[from..head.head_len - 2]);
        }
    } else {
        for line in lines.iter().filter(|l| l.forward) {
            w.put(line.name.get(buf));
            w.put(b": ");
            w.put(line.value.get(buf));
            w.put(b"\r\n");
        }
    }
    let mut xff_seen = false;
    if head.host.is_none() && head.authority.is_none() {
        w.put(b"Host: ");
        w.put(fallback_host.as_bytes());
        w.put(b"\r\n");
    }
    w.put(b"X-Forwarded-For: ");
    for line in head.headers[..head.header_count].iter().filter(|l| l.xff) {
        let value = line.value.get(buf).trim_ascii();
        if !value.is_empty() {
            if xff_seen {
                w.put(b", ");
            }
            w.put(value);
            xff_seen = true;
        }
    }
    if xff_seen {
        w.put(b", ");
    }
    put_ip(&mut w, client_ip);
    w.put(if https {
        b"\r\nX-Forwarded-Proto: https\r\nVia: 1.1 speedmimi\r\n"
    } else {
        b"\r\nX-Forwarded-Proto: http\r\nVia: 1.1 speedmimi\r\n"
    });
    match head.framing {
        // Transfer-Encoding is hop-by-hop: the body goes on re-encoded
        // chunked, so this hop says so again.
        Framing::Chunked(_) => w.put(b"Transfer-Encoding: chunked\r\n"),
        Framing::Length(n) => put_content_length(&mut w, n),
        Framing::Empty | Framing::UntilClose => {}
    }
    if let Some(up) = head.upgrade {
        w.put(b"Connection: upgrade\r\nUpgrade: ");
        w.put(up.get(buf));
        w.put(b"\r\n");
    }
    w.put(b"\r\n");
    w.ok
}

/// `Content-Length: N` as one line, whatever form the value came in.
pub(crate) fn put_content_length(w: &mut Writer, n: u64) {
    let mut line = *b"Content-Length: 00000000000000000000\r\n";
    let digits_end = line.len() - 2;
    let mut at = digits_end;
    let mut left = n;
    loop {
        at -= 1;
        line[at] = b'0' + (left % 10) as u8;
        left /= 10;
        if left == 0 {
            break;
        }
    }
    w.put(&line[..16]);
    w.put(&line[at..]);
}

/// Writes an address without the formatting machinery (it runs per
/// request), in one copy.
fn put_ip(w: &mut Writer, ip: IpAddr) {
    let mut text = [0u8; 48];
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            let mut cursor = &mut text[..];
            let _ = write!(cursor, "{ip}");
            48 - cursor.len()
        }
    };
    w.put(&text[..len]);
}

/// Appends to a buffer and remembers whether everything fit.
pub(crate) struct Writer<'a> {
    pub out: &'a mut Buf,
    pub ok: bool,
}

impl Writer<'_> {
    pub fn put(&mut self, bytes: &[u8]) {
        if self.ok && self.out.push(bytes) != bytes.len() {
            self.ok = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::BufPool;

    #[test]
    fn host_byte_table_is_rfc_3986_reg_name() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~%!$&'()*+;=".contains(&b);
            assert_eq!(HOST_BYTE[b as usize], expected, "byte {b:#04x}");
        }
    }

    const LIMITS: Limits = Limits {
        max_head: 16384,
        max_uri: 8192,
    };

    fn parse(s: &str) -> Result<Option<Box<RequestHead>>, Reject> {
        parse_request(s.as_bytes(), &LIMITS)
    }

    #[test]
    fn framing_rules() {
        use Reject::*;
        let cases: &[(&str, Option<Reject>)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
            ("GET / HTTP/1.1\r\n\r\n", Some(BadRequest)),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Some(BadRequest)),
            ("GET / HTTP/1.0\r\n\r\n", None),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Some(BadRequest)),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", Some(BadRequest)),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", None),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", Some(BadRequest)),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Some(BadRequest)),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Some(BadRequest)),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Some(NotImplemented)),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Some(BadRequest)),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Some(BadRequest)),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Some(BadRequest)),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", Some(BadRequest)),
            ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", Some(BadRequest)),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", Some(BadRequest)),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", Some(BadRequest)),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", Some(NotImplemented)),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", Some(BadRequest)),
            // Request-target bytes: visible ASCII without '#', '%' + 2 hex.
            ("GET /a%20b?q={x}|^[y] HTTP/1.1\r\nHost: a\r\n\r\n", None),
            ("GET /\u{451} HTTP/1.1\r\nHost: a\r\n\r\n", Some(BadRequest)),
            ("GET http://ub.example:8?0<0\u{451} HTTP/1.1\r\nHost: a\r\n\r\n", Some(BadRequest)),
            ("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", Some(BadRequest)),
            ("GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", Some(BadRequest)),
            ("GET /a%4 HTTP/1.1\r\nHost: a\r\n\r\n", Some(BadRequest)),
            ("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", Some(BadRequest)),
        ];
        for (req, want) in cases {
            let got = parse(req).map(|h| h.is_some());
            match want {
                None => assert_eq!(got, Ok(true), "{req:?}"),
                Some(r) => assert_eq!(got, Err(*r), "{req:?}"),
            }
        }
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(&long).err(), Some(Reject::UriTooLong));
        let partial_long = format!("GET /{}", "a".repeat(9000));
        assert_eq!(parse(&partial_long).err(), Some(Reject::UriTooLong));
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "a".repeat(17000));
        assert_eq!(parse(&big).err(), Some(Reject::HeadersTooLarge));
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn rewrites_hop_by_hop_and_forwarding_headers() {
        let req = "GET /x?y HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\nTE: trailers\r\nAccept: */*\r\n\r\n";
        let head = parse(req).unwrap().unwrap();
        assert!(head.keep_alive);
        assert_eq!(head.path(req.as_bytes()), b"/x");
        let mut pool = BufPool::new(4096, 1);
        let mut out = pool.get();
        assert!(write_upstream_head(
            req.as_bytes(),
            &head,
            &mut out,
            "10.0.0.9".parse().unwrap(),
            "backend",
            false
        ));
        let text = std::str::from_utf8(out.data()).unwrap();
        assert_eq!(
            text,
            "GET /x?y HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nX-Forwarded-Proto: http\r\nVia: 1.1 speedmimi\r\n\r\n"
        );
    }

    #[test]
    fn http10_keep_alive_and_upgrade() {
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h =
            parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.upgrade.is_some());
    }
}
