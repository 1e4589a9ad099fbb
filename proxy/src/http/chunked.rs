//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally.
//!
//! The decoder never copies: it walks the bytes and says which are framing
//! and which are data, and what canonical framing stands for the framing it
//! read (`canonical`), so the proxy can re-encode the body with its own size
//! lines or strip the coding (for HTTP/1.0 clients). Strict: CRLF line ends
//! only, hex sizes of at most 15 digits, chunk extensions by the §7.1.1
//! grammar, trailer lines by the field-line grammar (§5), no line over
//! `MAX_LINE` bytes. Extensions and trailers are validated, then dropped.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The chunk size is missing, not hex, or too large.
    InvalidSize,
    /// A line did not end in CRLF, broke the extension or trailer grammar,
    /// or was too long.
    InvalidFraming,
}

/// One step over the input: the next `n` bytes are of this kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Framing(usize),
    Data(usize),
    /// The last `n` framing bytes of the body (after the trailers).
    End(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits; `digits` counts them.
    Size {
        digits: u8,
    },
    /// Whitespace after the size or an extension, before `;`.
    ExtBeforeSemi,
    /// After `;`: whitespace, then the extension's name.
    ExtBeforeName,
    ExtName,
    /// Whitespace after the name: `=`, `;` or nothing else.
    ExtAfterName,
    /// After `=`: whitespace, then a token or a quoted string.
    ExtBeforeValue,
    ExtToken,
    ExtQuoted,
    ExtQuotedPair,
    ExtAfterQuoted,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
}

/// Longest chunk-size line (extensions included) or trailer line accepted.
pub const MAX_LINE: u32 = 4096;
/// Most trailer lines accepted (as for header lines).
pub const MAX_TRAILERS: u8 = 100;
/// Most canonical framing bytes one `next` can produce: the CRLF closing
/// a chunk's data, then a size line of 15 hex digits.
const CANON_MAX: usize = 2 + 15 + 2;

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    /// Bytes of the current framing line so far.
    line: u32,
    trailers: u8,
    canon: [u8; CANON_MAX],
    canon_len: u8,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: 0,
            canon: [0; CANON_MAX],
            canon_len: 0,
        }
    }
}

const MAX_SIZE_DIGITS: u8 = 15;

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §5.6.4 qdtext (obs-text included).
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

/// A field-value byte (RFC 9110 §5.5): VCHAR, obs-text, SP, HTAB.
fn is_field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff)
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Every byte read so far has had its canonical framing given: in or
    /// right after the data, at the start of a size line, anywhere in the
    /// trailers (they give nothing). Re-encoding commits only here: the
    /// canonical form of a half-read size line is not known yet.
    pub fn nothing_owed(&self) -> bool {
        matches!(
            self.state,
            State::Data
                | State::DataCr
                | State::Size { digits: 0 }
                | State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::Done
        )
    }

    /// The canonical framing for the framing bytes the last `next` read:
    /// the CRLF ending a chunk's data, `<size in lower-case hex, no leading
    /// zeros>\r\n` for a size line (its extensions dropped), the final
    /// CRLF; trailer lines give nothing. Never longer than the framing it
    /// stands for, once whole lines are counted.
    pub fn canonical(&self) -> &[u8] {
        &self.canon[..self.canon_len as usize]
    }

    fn emit(&mut self, bytes: &[u8]) {
        let at = self.canon_len as usize;
        self.canon[at..at + bytes.len()].copy_from_slice(bytes);
        self.canon_len += bytes.len() as u8;
    }

    fn emit_size_line(&mut self) {
        let mut digits = [0u8; 16];
        let mut n = self.size;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        self.emit(&digits[i..]);
        self.emit(b"\r\n");
    }

    /// Classifies the bytes at the start of `input`. `None` when `input` is
    /// empty or the body has ended.
    pub fn next(&mut self, input: &[u8]) -> Result<Option<Piece>, ChunkError> {
        self.canon_len = 0;
        if input.is_empty() || self.state == State::Done {
            return Ok(None);
        }
        if self.state == State::Data {
            let n = (self.size.min(input.len() as u64)) as usize;
            self.size -= n as u64;
            if self.size == 0 {
                self.state = State::DataCr;
            }
            return Ok(Some(Piece::Data(n)));
        }
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(ChunkError::InvalidFraming);
            }
            self.state = match self.state {
                State::Size { digits } => match hex_value(b) {
                    Some(v) => {
                        if digits == MAX_SIZE_DIGITS {
                            return Err(ChunkError::InvalidSize);
                        }
                        self.size = self.size * 16 + v as u64;
                        State::Size { digits: digits + 1 }
                    }
                    None if digits == 0 => return Err(ChunkError::InvalidSize),
                    None => match b {
                        b'\r' => State::SizeLf,
                        b';' => State::ExtBeforeName,
                        b' ' | b'\t' => State::ExtBeforeSemi,
                        _ => return Err(ChunkError::InvalidSize),
                    },
                },
                State::ExtBeforeSemi => match b {
                    b';' => State::ExtBeforeName,
                    b' ' | b'\t' => State::ExtBeforeSemi,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::ExtBeforeName => match b {
                    b' ' | b'\t' => State::ExtBeforeName,
                    _ if is_tchar(b) => State::ExtName,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::ExtName => match b {
                    b'\r' => State::SizeLf,
                    b';' => State::ExtBeforeName,
                    b'=' => State::ExtBeforeValue,
                    b' ' | b'\t' => State::ExtAfterName,
                    _ if is_tchar(b) => State::ExtName,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::ExtAfterName => match b {
                    b';' => State::ExtBeforeName,
                    b'=' => State::ExtBeforeValue,
                    b' ' | b'\t' => State::ExtAfterName,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::ExtBeforeValue => match b {
                    b'"' => State::ExtQuoted,
                    b' ' | b'\t' => State::ExtBeforeValue,
                    _ if is_tchar(b) => State::ExtToken,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::ExtToken => match b {
                    b'\r' => State::SizeLf,
                    b';' => State::ExtBeforeName,
                    b' ' | b'\t' => State::ExtBeforeSemi,
                    _ if is_tchar(b) => State::ExtToken,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::ExtQuoted => match b {
                    b'"' => State::ExtAfterQuoted,
                    b'\\' => State::ExtQuotedPair,
                    _ if is_qdtext(b) => State::ExtQuoted,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::ExtQuotedPair => match b {
                    _ if is_field_byte(b) => State::ExtQuoted,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::ExtAfterQuoted => match b {
                    b'\r' => State::SizeLf,
                    b';' => State::ExtBeforeName,
                    b' ' | b'\t' => State::ExtBeforeSemi,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    self.line = 0;
                    self.emit_size_line();
                    // Each framing line is its own piece, so a caller never
                    // has to hold more than one line it cannot place yet.
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                    return Ok(Some(Piece::Framing(i)));
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    State::DataLf
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    self.line = 0;
                    self.size = 0;
                    self.emit(b"\r\n");
                    State::Size { digits: 0 }
                }
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    _ if is_tchar(b) && self.trailers < MAX_TRAILERS => {
                        self.trailers += 1;
                        State::TrailerName
                    }
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::TrailerName => match b {
                    b':' => State::TrailerValue,
                    _ if is_tchar(b) => State::TrailerName,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::TrailerValue => match b {
                    b'\r' => State::TrailerLf,
                    _ if is_field_byte(b) => State::TrailerValue,
                    _ => return Err(ChunkError::InvalidFraming),
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    self.line = 0;
                    self.state = State::TrailerStart;
                    return Ok(Some(Piece::Framing(i)));
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    self.state = State::Done;
                    self.emit(b"\r\n");
                    return Ok(Some(Piece::End(i)));
                }
                State::Data | State::Done => unreachable!("handled above"),
            };
        }
        Ok(Some(Piece::Framing(i)))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the data.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut data = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let mut slice = &input[pos..end];
            while let Some(p) = d.next(slice)? {
                let n = match p {
                    Piece::Data(n) => {
                        data.extend_from_slice(&slice[..n]);
                        n
                    }
                    Piece::Framing(n) | Piece::End(n) => n,
                };
                slice = &slice[n..];
            }
            pos = end;
        }
        Ok((data, d.is_done()))
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
        for step in 1..body.len() {
            let (data, done) = decode(body, step).unwrap();
            assert_eq!(data, b"hello world");
            assert!(done);
        }
    }

    #[test]
    fn rejects_bad_sizes_and_line_ends() {
        assert_eq!(decode(b"x\r\n", 64), Err(ChunkError::InvalidSize));
        assert_eq!(decode(b"\r\n", 64), Err(ChunkError::InvalidSize));
        assert_eq!(
            decode(b"1000000000000000\r\n", 64),
            Err(ChunkError::InvalidSize)
        );
        assert_eq!(decode(b"5\nhello", 64), Err(ChunkError::InvalidSize));
        assert_eq!(decode(b"5\r\nhelloXY", 64), Err(ChunkError::InvalidFraming));
        assert_eq!(decode(b"0\r\n\n", 64), Err(ChunkError::InvalidFraming));
    }

    #[test]
    fn extensions_follow_the_rfc_9112_grammar() {
        for ok in [
            &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
            b"5 ; a = b\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"q \\\" ;\";b\r\nhello\r\n0\r\n\r\n",
            b"5\t;a=b;c\r\nhello\r\n0;last\r\n\r\n",
        ] {
            assert!(
                decode(ok, 1).unwrap().1,
                "{:?}",
                String::from_utf8_lossy(ok)
            );
        }
        for bad in [
            &b"5 junk\r\nhello\r\n0\r\n\r\n"[..],
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"open\r\nhello\r\n0\r\n\r\n",
            b"5;a b\r\nhello\r\n0\r\n\r\n",
            b"5;a=b\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
            b"5;a\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE as usize));
        long.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(decode(&long, 512), Err(ChunkError::InvalidFraming));
    }

    #[test]
    fn trailers_are_field_lines() {
        assert!(decode(b"0\r\nA: 1\r\nB:\r\n\r\n", 1).unwrap().1);
        for bad in [
            &b"0\r\nGET /x HTTP/1.1\r\n\r\n"[..],
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\nA : 1\r\n\r\n",
            b"0\r\nA: 1\nB: 2\r\n\r\n",
            b"0\r\nA: \x7f\r\n\r\n",
            b"0\r\n\n",
        ] {
            assert!(
                decode(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut many = b"0\r\n".to_vec();
        for _ in 0..=MAX_TRAILERS {
            many.extend_from_slice(b"A: 1\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(decode(&many, 64), Err(ChunkError::InvalidFraming));
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let mut d = ChunkedDecoder::default();
        let input = b"0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(d.next(input), Ok(Some(Piece::Framing(3))));
        assert_eq!(d.canonical(), b"0\r\n");
        assert_eq!(d.next(&input[3..]), Ok(Some(Piece::End(2))));
        assert_eq!(d.canonical(), b"\r\n");
        assert_eq!(d.next(&input[5..]), Ok(None));
    }
}
