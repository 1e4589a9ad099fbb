//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally.
//!
//! The decoder never copies: it walks the bytes and says which are framing
//! and which are data, so the proxy can forward the coding as it is or strip
//! it (for HTTP/1.0 clients). Strict: CRLF line ends only, hex sizes of at
//! most 15 digits, no control characters in extensions or trailers.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The chunk size is missing, not hex, or too large.
    InvalidSize,
    /// A line did not end in CRLF, or a forbidden byte appeared.
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
    /// After the size: optional whitespace and `;extensions`.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
        }
    }
}

const MAX_SIZE_DIGITS: u8 = 15;

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Classifies the bytes at the start of `input`. `None` when `input` is
    /// empty or the body has ended.
    pub fn next(&mut self, input: &[u8]) -> Result<Option<Piece>, ChunkError> {
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
            match self.state {
                State::Size { digits } => match hex_value(b) {
                    Some(v) => {
                        if digits == MAX_SIZE_DIGITS {
                            return Err(ChunkError::InvalidSize);
                        }
                        self.size = self.size * 16 + v as u64;
                        self.state = State::Size { digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(ChunkError::InvalidSize),
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' | b' ' | b'\t' => self.state = State::Extension,
                        _ => return Err(ChunkError::InvalidSize),
                    },
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' | 0..=8 | 10..=31 | 127 => return Err(ChunkError::InvalidFraming),
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data;
                        return Ok(Some(Piece::Framing(i)));
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    self.state = State::Size { digits: 0 };
                    self.size = 0;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::FinalLf,
                    b'\n' | 0..=8 | 10..=31 | 127 => return Err(ChunkError::InvalidFraming),
                    _ => self.state = State::Trailer,
                },
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' | 0..=8 | 10..=31 | 127 => return Err(ChunkError::InvalidFraming),
                    _ => {}
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidFraming);
                    }
                    self.state = State::Done;
                    return Ok(Some(Piece::End(i)));
                }
                State::Data | State::Done => unreachable!("handled above"),
            }
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
    fn stops_at_the_end_of_the_body() {
        let mut d = ChunkedDecoder::default();
        let input = b"0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(d.next(input), Ok(Some(Piece::End(5))));
        assert_eq!(d.next(&input[5..]), Ok(None));
    }
}
