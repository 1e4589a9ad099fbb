//! HTTP/1.1 on both sides of the proxy: request heads (strict RFC 9112
//! framing rules), response heads, chunked bodies, and the catalogue of
//! answers the proxy synthesizes itself. No I/O here: pure byte rules.

pub mod body;
pub mod chunked;
pub mod errors;
pub mod request;
pub mod response;

/// Header names compared case-insensitively.
pub(crate) fn name_is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// Iterates the comma-separated, trimmed, non-empty tokens of a list header.
pub(crate) fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether every header line of `head` ends in CRLF, as the head itself
/// does: then kept lines can be copied as they came (a bare LF must be
/// rewritten). `line_starts`: where each header line starts, in order.
pub(crate) fn lines_end_in_crlf(head: &[u8], line_starts: impl Iterator<Item = usize>) -> bool {
    head.ends_with(b"\r\n\r\n")
        && line_starts
            .skip(1)
            .chain([head.len() - 2])
            .all(|end| end >= 2 && &head[end - 2..end] == b"\r\n")
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded as they are.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
    ];
    HOP.iter().any(|h| name_is(name, h))
}

/// Up to this many distinct header names may be listed in `Connection`;
/// beyond it the request is refused rather than partly honoured.
pub(crate) const MAX_CONNECTION_TOKENS: usize = 16;

/// Names listed in a `Connection` header, collected without allocating.
#[derive(Default)]
pub(crate) struct ConnectionTokens<'a> {
    tokens: [&'a [u8]; MAX_CONNECTION_TOKENS],
    len: usize,
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl<'a> ConnectionTokens<'a> {
    /// Adds the tokens of one Connection header; false when there are too many.
    pub fn add(&mut self, value: &'a [u8]) -> bool {
        for t in list_tokens(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                if self.len == MAX_CONNECTION_TOKENS {
                    return false;
                }
                self.tokens[self.len] = t;
                self.len += 1;
            }
        }
        true
    }
    pub fn names(&self, name: &str) -> bool {
        self.tokens[..self.len]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}
