//! HTTP/1.1 on both sides of the proxy: request heads (strict RFC 9112
//! framing rules), response heads, chunked bodies, and the catalogue of
//! answers the proxy synthesizes itself. No I/O here: pure byte rules.

pub mod body;
pub mod chunked;
pub mod errors;
pub mod request;
pub mod response;

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

/// The header names the proxy acts on. `classify` finds a name's kind with
/// one switch on its length and at most two comparisons, instead of testing
/// it against every name in turn (several headers per message, two messages
/// per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    /// The other hop-by-hop headers (RFC 9110 §7.6.1): never forwarded.
    HopByHop,
    /// `Content_Length`, `Transfer_Encoding`: not framing to us, but CGI-style
    /// servers (and frameworks on them) map `_` to `-` and would frame by
    /// them. A request carrying one is refused, as nginx drops them.
    FramingLookalike,
    Other,
}

/// `bytes` equals the lower-case constant `lower` ignoring ASCII case, for
/// header names and list tokens after httparse (no CR, no control bytes):
/// among those bytes OR-ing in 0x20 folds only A–Z onto a–z, and a fold
/// without early exit compiles to a few wide operations for a constant.
#[inline(always)]
fn eq_lower(bytes: &[u8], lower: &[u8]) -> bool {
    bytes.len() == lower.len()
        && bytes
            .iter()
            .zip(lower)
            .fold(0, |diff, (&b, &l)| diff | ((b | 0x20) ^ l))
            == 0
}

/// `bytes` is `lower` with some `-` written `_` (and any case).
fn underscored(bytes: &[u8], lower: &[u8]) -> bool {
    bytes.len() == lower.len()
        && bytes.contains(&b'_')
        && bytes.iter().zip(lower).all(|(&b, &l)| match b {
            b'_' => l == b'-',
            _ => b | 0x20 == l,
        })
}

pub(crate) fn classify(name: &str) -> Name {
    let is = |lower: &str| eq_lower(name.as_bytes(), lower.as_bytes());
    let like = |lower: &str| underscored(name.as_bytes(), lower.as_bytes());
    match name.len() {
        2 if is("te") => Name::HopByHop,
        4 if is("host") => Name::Host,
        6 if is("expect") => Name::Expect,
        7 if is("upgrade") => Name::Upgrade,
        7 if is("trailer") => Name::HopByHop,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::HopByHop,
        14 if is("content-length") => Name::ContentLength,
        14 if like("content-length") => Name::FramingLookalike,
        15 if is("x-forwarded-for") => Name::XForwardedFor,
        16 if is("proxy-connection") => Name::HopByHop,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if like("transfer-encoding") => Name::FramingLookalike,
        17 if is("x-forwarded-proto") => Name::XForwardedProto,
        18 if is("proxy-authenticate") => Name::HopByHop,
        _ => Name::Other,
    }
}

impl Name {
    /// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded as they are.
    pub(crate) fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection | Name::TransferEncoding | Name::Upgrade | Name::HopByHop
        )
    }
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
            if eq_lower(t, b"close") {
                self.close = true;
            } else if eq_lower(t, b"keep-alive") {
                self.keep_alive = true;
            } else if eq_lower(t, b"upgrade") {
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
    /// Whether any of `names` is listed.
    pub fn names_any(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.names(n))
    }
    pub fn names(&self, name: &str) -> bool {
        self.tokens[..self.len]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_lower_is_case_insensitive_equality_on_token_bytes() {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        let constants: [&[u8]; 4] = [b"close", b"keep-alive", b"x-forwarded-proto", b"te"];
        for lower in constants {
            for i in 0..lower.len() {
                for b in (0..=255u8).filter(|&b| token(b)) {
                    let mut probe = lower.to_vec();
                    probe[i] = b;
                    assert_eq!(
                        eq_lower(&probe, lower),
                        probe.eq_ignore_ascii_case(lower),
                        "{probe:?}"
                    );
                }
            }
            assert!(!eq_lower(&lower[1..], lower));
        }
    }

    #[test]
    fn classify_knows_each_name_in_any_case_and_nothing_else() {
        let known = [
            ("te", Name::HopByHop),
            ("Host", Name::Host),
            ("EXPECT", Name::Expect),
            ("upgrade", Name::Upgrade),
            ("Trailer", Name::HopByHop),
            ("Connection", Name::Connection),
            ("Keep-Alive", Name::HopByHop),
            ("content-LENGTH", Name::ContentLength),
            ("X-Forwarded-For", Name::XForwardedFor),
            ("Proxy-Connection", Name::HopByHop),
            ("Transfer-Encoding", Name::TransferEncoding),
            ("x-forwarded-proto", Name::XForwardedProto),
            ("Proxy-Authenticate", Name::HopByHop),
        ];
        for (name, kind) in known {
            assert_eq!(classify(name), kind, "{name}");
        }
        for other in [
            "",
            "t",
            "tx",
            "hosts",
            "content-type",
            "x-forwarded-host",
            "connectio",
            "Via",
        ] {
            assert_eq!(classify(other), Name::Other, "{other}");
        }
        let hop: Vec<_> = known
            .iter()
            .filter(|(_, k)| k.is_hop_by_hop())
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        assert_eq!(
            hop,
            [
                "te",
                "upgrade",
                "trailer",
                "connection",
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
                "proxy-authenticate"
            ]
        );
    }
}
