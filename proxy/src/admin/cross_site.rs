//! Defences against web pages opened in the administrator's own browser.
//! Any site can make that browser send requests to 127.0.0.1:9091: a form
//! POST with `Content-Type: text/plain` needs no CORS preflight, and DNS
//! rebinding points the site's own name at 127.0.0.1, so that even answers
//! can be read. Without `admin.token` such requests would be obeyed, so:
//!
//! - without a token, the request must be addressed to loopback: its Host
//!   (and an absolute-form target, which RFC 9112 §3.2.2 puts before Host)
//!   must be `localhost`, a `*.localhost` name, an address in 127.0.0.0/8
//!   or `[::1]`, with any port; otherwise 421. A rebound name is the
//!   attacker's and never one of these.
//! - with or without a token, a request that carries a body to write needs
//!   `Content-Type: application/json` (parameters allowed); otherwise 415.
//!   A page can send that type only after a preflight, which this API
//!   never grants (it answers no `OPTIONS`).

use std::net::{IpAddr, Ipv6Addr};

use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use hyper::{HeaderMap, Method, Uri};

use super::error::ApiError;

/// Longest Host value quoted back in an error.
const QUOTED: usize = 100;

/// Refuses (421) a request not addressed to a loopback name or address.
/// Only called when no token is configured.
pub fn check_host(headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let hosts: Vec<&[u8]> = headers.get_all(HOST).iter().map(|v| v.as_bytes()).collect();
    if hosts.is_empty() && uri.authority().is_none() {
        return Err(ApiError::misdirected(
            "the request has no Host; without admin.token this API answers only requests \
             with Host: localhost, 127.0.0.1 or [::1] (any port)",
        ));
    }
    if hosts.len() > 1 {
        return Err(ApiError::misdirected(
            "the request has several Host fields; send one",
        ));
    }
    let named = uri.authority().map(|a| a.as_str().as_bytes());
    match hosts
        .into_iter()
        .chain(named)
        .find(|h| !is_loopback_authority(h))
    {
        None => Ok(()),
        Some(host) => {
            let shown: String = String::from_utf8_lossy(host).chars().take(QUOTED).collect();
            Err(ApiError::misdirected(format!(
                "Host \"{shown}\" is not a loopback name; without admin.token this API answers \
                 only requests addressed to localhost, 127.0.0.1 or [::1] (any port), so that a \
                 web page cannot reach it through DNS rebinding; use one of those, or set \
                 admin.token"
            )))
        }
    }
}

/// Whether `authority` (`host[:port]`, no userinfo) names this machine
/// through loopback.
fn is_loopback_authority(authority: &[u8]) -> bool {
    let Ok(authority) = std::str::from_utf8(authority) else {
        return false;
    };
    let digits = |port: &str| port.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:PORT`.
        let Some((ip, port)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(digits);
        return port_ok && ip.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if digits(port) => host,
        Some(_) => return false,
        None => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host == "localhost" {
        return true;
    }
    if let Some(sub) = host.strip_suffix(".localhost") {
        // RFC 6761 §6.3: every name under localhost is loopback, and no
        // one can register one in the DNS.
        return !sub.is_empty()
            && sub.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
    }
    // Dotted-quad only: `parse` refuses `127.1` and octal forms.
    host.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_ipv4() && ip.is_loopback())
}

/// Refuses (415) a request that writes with a body that is not declared
/// JSON. `reads_body`: the handler reads a body (PUT, POST); a request of
/// another method that writes (DELETE) is held to the same rule when it
/// carries a body anyway.
pub fn check_content_type(
    method: &Method,
    headers: &HeaderMap,
    reads_body: bool,
) -> Result<(), ApiError> {
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !reads_body && (safe || !has_body(headers)) {
        return Ok(());
    }
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (types.next(), types.next()) else {
        return Err(ApiError::unsupported_media_type(
            "send the body with one Content-Type: application/json",
        ));
    };
    let media_type = value.as_bytes().split(|&b| b == b';').next().unwrap_or(b"");
    if media_type
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/json")
    {
        Ok(())
    } else {
        let shown: String = String::from_utf8_lossy(value.as_bytes())
            .chars()
            .take(QUOTED)
            .collect();
        Err(ApiError::unsupported_media_type(format!(
            "Content-Type \"{shown}\" is not application/json; this API takes JSON bodies only \
             (so that a web page cannot post a form to it)"
        )))
    }
}

/// Whether the request declares a body: chunked, or a length above zero.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|&b| b != b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(hyper::header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn loopback_names_and_addresses_with_or_without_port() {
        for good in [
            "localhost",
            "LOCALHOST:9091",
            "localhost.",
            "admin.localhost:80",
            "127.0.0.1",
            "127.0.0.1:9091",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:9091",
            "[0:0:0:0:0:0:0:1]:9091",
            "localhost:",
        ] {
            assert!(is_loopback_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "evil.example",
            "evil.example:9091",
            "localhost.evil.example",
            "evillocalhost",
            ".localhost",
            "a..localhost",
            "128.0.0.1",
            "127.1",
            "0177.0.0.1",
            "0.0.0.0",
            "[::]",
            "[::ffff:127.0.0.1]",
            "[::1",
            "[::1]x",
            "localhost:x",
            "::1",
            "",
        ] {
            assert!(!is_loopback_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn host_must_be_present_single_and_loopback() {
        let origin: Uri = "/api/v1/health".parse().unwrap();
        assert!(check_host(&headers(&[(HOST, "127.0.0.1:9091")]), &origin).is_ok());
        for h in [
            headers(&[]),
            headers(&[(HOST, "evil.example")]),
            headers(&[(HOST, "localhost"), (HOST, "localhost")]),
        ] {
            let e = check_host(&h, &origin).unwrap_err();
            assert_eq!(e.status, hyper::StatusCode::MISDIRECTED_REQUEST);
        }
        // An absolute-form target wins over Host, so it is held to the rule too.
        let absolute: Uri = "http://evil.example/api/v1/health".parse().unwrap();
        assert!(check_host(&headers(&[(HOST, "localhost")]), &absolute).is_err());
        let absolute: Uri = "http://localhost:9091/api/v1/health".parse().unwrap();
        assert!(check_host(&headers(&[]), &absolute).is_ok());
    }

    #[test]
    fn writes_need_json() {
        let json = headers(&[(CONTENT_TYPE, "Application/JSON; charset=utf-8")]);
        assert!(check_content_type(&Method::POST, &json, true).is_ok());
        for h in [
            headers(&[]),
            headers(&[(CONTENT_TYPE, "text/plain")]),
            headers(&[(CONTENT_TYPE, "application/x-www-form-urlencoded")]),
            headers(&[(CONTENT_TYPE, "application/jsonx")]),
            headers(&[
                (CONTENT_TYPE, "application/json"),
                (CONTENT_TYPE, "text/plain"),
            ]),
        ] {
            let e = check_content_type(&Method::PUT, &h, true).unwrap_err();
            assert_eq!(e.status, hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        // A DELETE needs no body, so no type; with a body it does.
        assert!(check_content_type(&Method::DELETE, &headers(&[]), false).is_ok());
        let zero = headers(&[(CONTENT_LENGTH, "0")]);
        assert!(check_content_type(&Method::DELETE, &zero, false).is_ok());
        let text = headers(&[(CONTENT_LENGTH, "2"), (CONTENT_TYPE, "text/plain")]);
        assert!(check_content_type(&Method::DELETE, &text, false).is_err());
        assert!(check_content_type(&Method::GET, &text, false).is_ok());
    }
}
