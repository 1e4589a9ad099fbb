//! A strict HTTP/1.1 message parser written from RFC 9112 for the tests: it
//! stands for a strict next hop (the backend reading what the proxy sent,
//! the client reading what the proxy answered). It shares no code with the
//! proxy, so the smuggling suite and the differential fuzz target can ask
//! whether the proxy and an independent reading agree on where every
//! message ends.
//!
//! Strict means: CRLF line ends only, no obs-fold, field values of visible
//! bytes, spaces and tabs; Transfer-Encoding a list ending in one
//! `chunked` (or, in a response, anything: the body then runs to the
//! close); Content-Length digits only, repeated values equal; chunk
//! extensions and trailers by their grammar.
#![allow(dead_code)]

/// The longest head or framing line read before giving up.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The request line or status line, without its CRLF.
    pub start_line: String,
    pub method: String,
    pub target: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub chunked: bool,
    /// Bytes of the whole message (head, body, framing).
    pub len: usize,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// More bytes are needed.
    Incomplete,
    /// A strict reader refuses these bytes, for this reason.
    Invalid(String),
    Complete(Message),
}

fn invalid<T>(why: impl Into<String>) -> Result<T, String> {
    Err(why.into())
}

/// RFC 9110 §5.6.2.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn field_vchar(b: u8) -> bool {
    b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Reads one CRLF-terminated line at `at`: `Ok(None)` when incomplete.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, String> {
    let rest = &buf[at..];
    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > MAX_HEAD {
            return invalid("line too long");
        }
        return Ok(None);
    };
    if lf == 0 || rest[lf - 1] != b'\r' {
        return invalid("bare LF");
    }
    let content = &rest[..lf - 1];
    if content.contains(&b'\r') {
        return invalid("bare CR");
    }
    Ok(Some((content, at + lf + 1)))
}

/// `name: value` by RFC 9112 §5.1 (no whitespace before the colon, none
/// starting the line).
fn field_line(l: &[u8]) -> Result<(String, String), String> {
    let colon = l
        .iter()
        .position(|&b| b == b':')
        .ok_or("field line without a colon")?;
    let name = &l[..colon];
    if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
        return invalid(format!(
            "bad field name {:?}",
            String::from_utf8_lossy(name)
        ));
    }
    let value = l[colon + 1..].trim_ascii();
    if !value.iter().all(|&b| field_vchar(b)) {
        return invalid("bad byte in a field value");
    }
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

struct Head {
    start_line: String,
    headers: Vec<(String, String)>,
    len: usize,
}

fn head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some((start, mut at)) = line(buf, 0)? else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    loop {
        let Some((l, next)) = line(buf, at)? else {
            return Ok(None);
        };
        at = next;
        if l.is_empty() {
            break;
        }
        if l[0] == b' ' || l[0] == b'\t' {
            return invalid("obs-fold");
        }
        headers.push(field_line(l)?);
        if at > MAX_HEAD {
            return invalid("head too long");
        }
    }
    Ok(Some(Head {
        start_line: String::from_utf8_lossy(start).into_owned(),
        headers,
        len: at,
    }))
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The members of a comma-separated list over every line of a field.
fn list<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    values(headers, name)
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| !t.is_empty())
        .collect()
}

fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, String> {
    let mut n = None;
    for v in values(headers, "content-length") {
        for part in v.split(',') {
            let part = part.trim_matches([' ', '\t']);
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return invalid(format!("bad Content-Length {v:?}"));
            }
            let v: u64 = part.parse().map_err(|_| "Content-Length overflows")?;
            if n.is_some_and(|p| p != v) {
                return invalid("differing Content-Length");
            }
            n = Some(v);
        }
    }
    Ok(n)
}

enum BodyKind {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Parses a request at the start of `buf`.
pub fn request(buf: &[u8]) -> Outcome {
    match request_inner(buf) {
        Ok(Some(m)) => Outcome::Complete(m),
        Ok(None) => Outcome::Incomplete,
        Err(why) => Outcome::Invalid(why),
    }
}

fn request_inner(buf: &[u8]) -> Result<Option<Message>, String> {
    let Some(h) = head(buf)? else {
        return Ok(None);
    };
    let parts: Vec<&str> = h.start_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return invalid("request line is not three words");
    };
    if method.is_empty() || !method.bytes().all(tchar) {
        return invalid("bad method");
    }
    if target.is_empty() || !target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return invalid("bad target");
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return invalid("bad version"),
    };
    let hosts = values(&h.headers, "host");
    if !http10 && hosts.len() != 1 || hosts.len() > 1 {
        return invalid("not exactly one Host");
    }
    let te = list(&h.headers, "transfer-encoding");
    let has_te = !values(&h.headers, "transfer-encoding").is_empty();
    let cl = content_length(&h.headers)?;
    let kind = if has_te {
        if http10 || cl.is_some() {
            return invalid("Transfer-Encoding with Content-Length or in HTTP/1.0");
        }
        // A strict backend knows no coding but chunked, applied once.
        if !(te.len() == 1 && te[0].eq_ignore_ascii_case("chunked")) {
            return invalid(format!("coding {te:?}"));
        }
        BodyKind::Chunked
    } else {
        match cl {
            Some(n) => BodyKind::Length(n),
            None => BodyKind::None,
        }
    };
    let mut m = Message {
        start_line: h.start_line.clone(),
        method: method.to_string(),
        target: target.to_string(),
        status: 0,
        headers: h.headers,
        body: Vec::new(),
        trailers: Vec::new(),
        chunked: false,
        len: h.len,
    };
    body(buf, kind, &mut m, false).map(|done| done.then_some(m))
}

/// Parses a response at the start of `buf`, to a request that was `HEAD`
/// when `head_request`; `eof`: the connection closed after `buf`.
pub fn response(buf: &[u8], head_request: bool, eof: bool) -> Outcome {
    match response_inner(buf, head_request, eof) {
        Ok(Some(m)) => Outcome::Complete(m),
        Ok(None) => Outcome::Incomplete,
        Err(why) => Outcome::Invalid(why),
    }
}

fn response_inner(buf: &[u8], head_request: bool, eof: bool) -> Result<Option<Message>, String> {
    let Some(h) = head(buf)? else {
        return Ok(None);
    };
    let sl = h.start_line.as_bytes();
    let ok_line = sl.len() >= 13
        && (sl.starts_with(b"HTTP/1.1 ") || sl.starts_with(b"HTTP/1.0 "))
        && sl[9..12].iter().all(u8::is_ascii_digit)
        && sl[12] == b' ';
    if !ok_line {
        return invalid("bad status line");
    }
    let status: u16 = h.start_line[9..12].parse().unwrap();
    let te = list(&h.headers, "transfer-encoding");
    let has_te = !values(&h.headers, "transfer-encoding").is_empty();
    let cl = content_length(&h.headers)?;
    if te
        .iter()
        .filter(|t| t.eq_ignore_ascii_case("chunked"))
        .count()
        > 1
    {
        return invalid("chunked applied twice");
    }
    let kind = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyKind::None
    } else if has_te {
        if te.last().is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            BodyKind::Chunked
        } else {
            BodyKind::UntilClose
        }
    } else {
        match cl {
            Some(n) => BodyKind::Length(n),
            None => BodyKind::UntilClose,
        }
    };
    let mut m = Message {
        start_line: h.start_line.clone(),
        method: String::new(),
        target: String::new(),
        status,
        headers: h.headers,
        body: Vec::new(),
        trailers: Vec::new(),
        chunked: false,
        len: h.len,
    };
    body(buf, kind, &mut m, eof).map(|done| done.then_some(m))
}

/// Reads the body after the head into `m`; false when incomplete.
fn body(buf: &[u8], kind: BodyKind, m: &mut Message, eof: bool) -> Result<bool, String> {
    match kind {
        BodyKind::None => Ok(true),
        BodyKind::Length(n) => {
            let have = (buf.len() - m.len) as u64;
            if have < n {
                return Ok(false);
            }
            m.body = buf[m.len..m.len + n as usize].to_vec();
            m.len += n as usize;
            Ok(true)
        }
        BodyKind::UntilClose => {
            if !eof {
                return Ok(false);
            }
            m.body = buf[m.len..].to_vec();
            m.len = buf.len();
            Ok(true)
        }
        BodyKind::Chunked => {
            m.chunked = true;
            chunked(buf, m)
        }
    }
}

fn chunked(buf: &[u8], m: &mut Message) -> Result<bool, String> {
    let mut at = m.len;
    loop {
        let Some((l, next)) = line(buf, at)? else {
            return Ok(false);
        };
        let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return invalid("bad chunk size");
        }
        let size = u64::from_str_radix(std::str::from_utf8(&l[..digits]).unwrap(), 16)
            .map_err(|_| "chunk size overflows")?;
        chunk_ext(&l[digits..])?;
        at = next;
        if size == 0 {
            break;
        }
        let end = at as u64 + size;
        if (buf.len() as u64) < end + 2 {
            return Ok(false);
        }
        let end = end as usize;
        m.body.extend_from_slice(&buf[at..end]);
        if &buf[end..end + 2] != b"\r\n" {
            return invalid("chunk data not followed by CRLF");
        }
        at = end + 2;
    }
    loop {
        let Some((l, next)) = line(buf, at)? else {
            return Ok(false);
        };
        at = next;
        if l.is_empty() {
            m.len = at;
            return Ok(true);
        }
        if l[0] == b' ' || l[0] == b'\t' {
            return invalid("obs-fold in trailers");
        }
        m.trailers.push(field_line(l)?);
    }
}

/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`
/// (RFC 9112 §7.1.1).
fn chunk_ext(mut s: &[u8]) -> Result<(), String> {
    fn skip_ws(s: &[u8]) -> &[u8] {
        let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        &s[n..]
    }
    fn token(s: &[u8]) -> Result<&[u8], String> {
        let n = s.iter().take_while(|&&b| tchar(b)).count();
        if n == 0 {
            return invalid("chunk extension: token expected");
        }
        Ok(&s[n..])
    }
    loop {
        s = skip_ws(s);
        if s.is_empty() {
            return Ok(());
        }
        if s[0] != b';' {
            return invalid("chunk extension: ';' expected");
        }
        s = token(skip_ws(&s[1..]))?;
        let after = skip_ws(s);
        if after.first() == Some(&b'=') {
            s = skip_ws(&after[1..]);
            if s.first() == Some(&b'"') {
                let mut i = 1;
                loop {
                    match s.get(i) {
                        None => return invalid("chunk extension: open quote"),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            if !s.get(i + 1).is_some_and(|&b| field_vchar(b)) {
                                return invalid("chunk extension: bad quoted pair");
                            }
                            i += 2;
                        }
                        Some(&b) if field_vchar(b) => i += 1,
                        Some(_) => return invalid("chunk extension: bad byte in quotes"),
                    }
                }
                s = &s[i + 1..];
            } else {
                s = token(s)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(o: Outcome) -> Message {
        match o {
            Outcome::Complete(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_requests_strictly() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;x=\"y\"\r\nhello\r\n0\r\nT: 1\r\n\r\nGET";
        let m = complete(request(input));
        assert_eq!(m.body, b"hello");
        assert_eq!(m.trailers, vec![("T".into(), "1".into())]);
        assert_eq!(m.len, input.len() - 3);
        assert!(matches!(
            request(b"GET / HTTP/1.1\nHost: h\n\n"),
            Outcome::Invalid(_)
        ));
        assert!(matches!(
            request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel"),
            Outcome::Incomplete
        ));
    }
}
