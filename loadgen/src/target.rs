//! The target of a run: an `http[s]://host[:port]/path` URL resolved once,
//! and the request serialized once into the bytes every connection writes.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Not an http:// or https:// URL with a host.
    BadUrl(String),
    /// The host did not resolve.
    Resolve(String),
    /// A -H value without a colon.
    BadHeader(String),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::BadUrl(u) => {
                write!(f, "bad URL {u:?}: expected http[s]://HOST[:PORT][/PATH]")
            }
            TargetError::Resolve(h) => write!(f, "cannot resolve {h:?}: check the host name"),
            TargetError::BadHeader(h) => {
                write!(f, "bad header {h:?}: expected 'Name: value'")
            }
        }
    }
}

impl std::error::Error for TargetError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Host header value, as written in the URL.
    pub authority: String,
    /// Path and query, starting with '/'.
    pub path: String,
    pub addr: SocketAddr,
    /// https://: the connection speaks TLS.
    pub tls: bool,
    /// The host without its port (the TLS server name by default).
    pub host: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let bad = || TargetError::BadUrl(url.to_string());
        let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => return Err(bad()),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let has_port = !authority.ends_with(']') && authority.contains(':');
        let with_port = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let host = match authority.rfind(':') {
            Some(i) if has_port => &authority[..i],
            _ => authority,
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|_| TargetError::Resolve(authority.to_string()))?
            .next()
            .ok_or_else(|| TargetError::Resolve(authority.to_string()))?;
        Ok(Target {
            authority: authority.to_string(),
            path,
            addr,
            tls,
            host: host.to_string(),
        })
    }
}

/// Serializes the request once. A Host header and, when there is a body,
/// Content-Length are added unless given.
pub fn build_request(
    target: &Target,
    method: &str,
    headers: &[String],
    body: &[u8],
) -> Result<Vec<u8>, TargetError> {
    let mut out = format!("{method} {} HTTP/1.1\r\n", target.path);
    let mut has_host = false;
    let mut has_len = false;
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| TargetError::BadHeader(h.clone()))?;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(TargetError::BadHeader(h.clone()));
        }
        has_host |= name.eq_ignore_ascii_case("host");
        has_len |= name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        out.push_str(&format!("{name}: {}\r\n", value.trim()));
    }
    if !has_host {
        out.push_str(&format!("Host: {}\r\n", target.authority));
    }
    if !has_len && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/a?b=1");
        assert_eq!(Target::parse("http://127.0.0.1").unwrap().addr.port(), 80);
        assert!(Target::parse("ftp://x/").is_err());
        let s = Target::parse("https://127.0.0.1/").unwrap();
        assert!(s.tls);
        assert_eq!((s.addr.port(), s.host.as_str()), (443, "127.0.0.1"));
        let s = Target::parse("https://[::1]:8443/").unwrap();
        assert_eq!((s.addr.port(), s.host.as_str()), (8443, "[::1]"));
        let r = build_request(&t, "POST", &["X-A: 1".into()], b"hi").unwrap();
        assert_eq!(
            r,
            b"POST /a?b=1 HTTP/1.1\r\nX-A: 1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 2\r\n\r\nhi"
        );
    }
}
