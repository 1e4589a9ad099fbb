//! HTTP/1.1 message framing shared by the load engine (responses) and the
//! benchmark backend (requests): body length rules from RFC 9112 §6 and an
//! incremental chunked decoder that needs no buffer, so a connection can sit
//! between reads holding only a few bytes of state.

use std::fmt;

/// Why a message's framing could not be determined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// Two Content-Length values that differ, or one that is not a number.
    BadContentLength,
    /// Transfer-Encoding whose last coding is not `chunked` (RFC 9112 §6.3).
    BadTransferEncoding,
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.3 rule 3).
    LengthAndEncoding,
    /// The chunked body is malformed (bad size line or missing CRLF).
    BadChunk,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FramingError::BadContentLength => "invalid or conflicting Content-Length",
            FramingError::BadTransferEncoding => "Transfer-Encoding does not end in chunked",
            FramingError::LengthAndEncoding => "both Content-Length and Transfer-Encoding",
            FramingError::BadChunk => "malformed chunked body",
        };
        f.write_str(s)
    }
}

impl std::error::Error for FramingError {}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Responses only: the body runs until the server closes.
    UntilClose,
}

/// What the head of a message says about its body and its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub body: BodyKind,
    /// The connection must be closed after this message.
    pub close: bool,
}

fn eq_token(a: &[u8], b: &str) -> bool {
    a.trim_ascii().eq_ignore_ascii_case(b.as_bytes())
}

/// Reads the framing headers. `version` is httparse's minor version (0 or 1).
/// `no_body` is true for responses that never have one (HEAD, 1xx, 204, 304);
/// `is_request` makes a missing length mean "no body" instead of "until close".
pub fn head(
    headers: &[httparse::Header<'_>],
    version: u8,
    no_body: bool,
    is_request: bool,
) -> Result<Head, FramingError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut close = version == 0;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_length(h.value).ok_or(FramingError::BadContentLength)?;
            if length.is_some_and(|old| old != v) {
                return Err(FramingError::BadContentLength);
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            // Only the last coding matters for framing; it must be chunked.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = eq_token(last, "chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for tok in h.value.split(|&b| b == b',') {
                if eq_token(tok, "close") {
                    close = true;
                } else if eq_token(tok, "keep-alive") && version == 0 {
                    close = false;
                }
            }
        }
    }
    let body = if no_body {
        BodyKind::Length(0)
    } else if has_te {
        if length.is_some() {
            return Err(FramingError::LengthAndEncoding);
        }
        if !chunked {
            if is_request {
                return Err(FramingError::BadTransferEncoding);
            }
            BodyKind::UntilClose
        } else {
            BodyKind::Chunked
        }
    } else if let Some(n) = length {
        BodyKind::Length(n)
    } else if is_request {
        BodyKind::Length(0)
    } else {
        BodyKind::UntilClose
    };
    if body == BodyKind::UntilClose {
        close = true;
    }
    Ok(Head { body, close })
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Incremental decoder for a chunked body. It keeps only its position in
/// the grammar, so it can be fed any split of the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Reading the hex size; `digits` guards against overflow.
    Size {
        value: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to the line's end.
    Ext {
        value: u64,
    },
    /// Saw CR after the size line; LF must follow.
    SizeLf {
        value: u64,
    },
    /// This many data bytes remain in the chunk.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size {
            value: 0,
            digits: 0,
        }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        *self == Chunked::Done
    }

    fn after_size(value: u64) -> Chunked {
        if value == 0 {
            Chunked::TrailerStart
        } else {
            Chunked::Data(value)
        }
    }

    /// Consumes bytes from `buf`; returns how many were used. The body is
    /// complete when `is_done()`; bytes after it are left for the caller.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < buf.len() {
            if let Chunked::Data(n) = *self {
                let take = n.min((buf.len() - i) as u64);
                i += take as usize;
                *self = if n == take {
                    Chunked::DataCr
                } else {
                    Chunked::Data(n - take)
                };
                continue;
            }
            let b = buf[i];
            *self = match *self {
                Chunked::Done => return Ok(i),
                Chunked::Size { value, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => Chunked::Size {
                        value: value * 16 + u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(FramingError::BadChunk),
                    None if digits == 0 => return Err(FramingError::BadChunk),
                    None => match b {
                        b';' | b' ' | b'\t' => Chunked::Ext { value },
                        b'\r' => Chunked::SizeLf { value },
                        b'\n' => Chunked::after_size(value),
                        _ => return Err(FramingError::BadChunk),
                    },
                },
                Chunked::Ext { value } => match b {
                    b'\r' => Chunked::SizeLf { value },
                    b'\n' => Chunked::after_size(value),
                    _ => Chunked::Ext { value },
                },
                Chunked::SizeLf { value } if b == b'\n' => Chunked::after_size(value),
                Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                Chunked::DataCr if b == b'\n' => Chunked::default(),
                Chunked::DataLf if b == b'\n' => Chunked::default(),
                Chunked::TrailerStart => match b {
                    b'\r' => Chunked::EndLf,
                    b'\n' => Chunked::Done,
                    _ => Chunked::TrailerLine,
                },
                Chunked::TrailerLine if b == b'\n' => Chunked::TrailerStart,
                Chunked::TrailerLine => Chunked::TrailerLine,
                Chunked::EndLf if b == b'\n' => Chunked::Done,
                _ => return Err(FramingError::BadChunk),
            };
            i += 1;
            if self.is_done() {
                return Ok(i);
            }
        }
        Ok(i)
    }
}

/// A body being skipped: the state a connection keeps between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl BodyState {
    pub fn new(kind: BodyKind) -> BodyState {
        match kind {
            BodyKind::Length(n) => BodyState::Length(n),
            BodyKind::Chunked => BodyState::Chunked(Chunked::default()),
            BodyKind::UntilClose => BodyState::UntilClose,
        }
    }

    /// Consumes body bytes; returns (bytes used, body complete).
    pub fn feed(&mut self, buf: &[u8]) -> Result<(usize, bool), FramingError> {
        match self {
            BodyState::Length(n) => {
                let take = (*n).min(buf.len() as u64);
                *n -= take;
                Ok((take as usize, *n == 0))
            }
            BodyState::Chunked(c) => {
                let used = c.feed(buf)?;
                Ok((used, c.is_done()))
            }
            BodyState::UntilClose => Ok((buf.len(), false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(body: &[u8], split: usize) -> Result<(usize, bool), FramingError> {
        let mut c = Chunked::default();
        let a = c.feed(&body[..split])?;
        if c.is_done() {
            return Ok((a, true));
        }
        let b = c.feed(&body[split..])?;
        Ok((a + b, c.is_done()))
    }

    #[test]
    fn chunked_decodes_at_every_split() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            assert_eq!(
                decode_split(body, split),
                Ok((body.len() - 4, true)),
                "split {split}"
            );
        }
    }

    #[test]
    fn chunked_rejects_garbage() {
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"zz\r\n"), Err(FramingError::BadChunk));
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"2\r\nabX"), Err(FramingError::BadChunk));
    }

    #[test]
    fn framing_rules() {
        let h = |name: &'static str, value: &'static [u8]| httparse::Header { name, value };
        let cl = [h("Content-Length", b"12")];
        assert_eq!(
            head(&cl, 1, false, false).unwrap().body,
            BodyKind::Length(12)
        );
        let both = [
            h("Content-Length", b"1"),
            h("Transfer-Encoding", b"chunked"),
        ];
        assert_eq!(
            head(&both, 1, false, true),
            Err(FramingError::LengthAndEncoding)
        );
        let dup = [h("Content-Length", b"1"), h("Content-Length", b"2")];
        assert_eq!(
            head(&dup, 1, false, true),
            Err(FramingError::BadContentLength)
        );
        let old = [h("Connection", b"keep-alive"), h("Content-Length", b"0")];
        assert!(!head(&old, 0, false, false).unwrap().close);
        assert!(head(&[], 0, false, true).unwrap().close);
        assert_eq!(
            head(&[], 1, false, false).unwrap().body,
            BodyKind::UntilClose
        );
    }
}
