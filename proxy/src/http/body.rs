//! Message body framing while streaming: which buffered bytes belong to the
//! current message and may be forwarded, and when the message is complete.

use super::chunked::{ChunkError, ChunkedDecoder, Piece};
use crate::buffer::Buf;

#[derive(Debug, Clone)]
pub enum Framing {
    /// No body (GET without length, HEAD responses, 204, 304, 1xx).
    Empty,
    /// Content-Length bytes not yet scanned.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Response body delimited by the backend closing the connection.
    UntilClose,
}

/// Tracks how far a body has been classified in a buffer.
#[derive(Debug, Clone)]
pub struct BodyScan {
    framing: Framing,
    /// Bytes at the front of the buffer that belong to the body and are ready to forward.
    pending: usize,
    /// Strip the chunked coding (forward data only) instead of passing it through.
    strip: bool,
    /// Every byte of the body has been classified.
    scanned: bool,
    /// Body bytes forwarded so far.
    pub forwarded: u64,
}

impl BodyScan {
    pub fn new(framing: Framing, strip: bool) -> BodyScan {
        let scanned = matches!(framing, Framing::Empty | Framing::Length(0));
        BodyScan {
            framing,
            pending: 0,
            strip,
            scanned,
            forwarded: 0,
        }
    }

    /// Bytes at the front of the buffer ready to forward.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The whole body was classified and forwarded.
    pub fn is_complete(&self) -> bool {
        self.scanned && self.pending == 0
    }

    /// Every byte of the body has arrived (some may still wait to be sent).
    pub fn is_scanned(&self) -> bool {
        self.scanned
    }

    /// The peer closed its side: for read-until-close bodies that is the end.
    /// Returns false when the body was cut short.
    pub fn on_eof(&mut self) -> bool {
        if matches!(self.framing, Framing::UntilClose) {
            self.scanned = true;
        }
        self.scanned
    }

    /// Classifies newly buffered bytes; in strip mode consumes chunk framing
    /// from the buffer's front.
    pub fn scan(&mut self, buf: &mut Buf) -> Result<(), ChunkError> {
        if self.scanned {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Empty => self.scanned = true,
            Framing::Length(left) => {
                let n = (*left).min((buf.len() - self.pending) as u64);
                *left -= n;
                self.pending += n as usize;
                if *left == 0 {
                    self.scanned = true;
                }
            }
            Framing::UntilClose => self.pending = buf.len(),
            Framing::Chunked(decoder) => {
                if self.strip {
                    while self.pending == 0 {
                        match decoder.next(buf.data())? {
                            Some(Piece::Framing(n)) => buf.consume(n),
                            Some(Piece::End(n)) => {
                                buf.consume(n);
                                self.scanned = true;
                            }
                            Some(Piece::Data(n)) => self.pending = n,
                            None => break,
                        }
                    }
                } else {
                    while let Some(piece) = decoder.next(&buf.data()[self.pending..])? {
                        match piece {
                            Piece::Framing(n) | Piece::Data(n) => self.pending += n,
                            Piece::End(n) => {
                                self.pending += n;
                                self.scanned = true;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `n` pending bytes were forwarded (and consumed from the buffer).
    pub fn sent(&mut self, n: usize) {
        debug_assert!(n <= self.pending);
        self.pending -= n;
        self.forwarded += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::BufPool;

    #[test]
    fn length_body_stops_at_the_next_request() {
        let mut pool = BufPool::new(64, 1);
        let mut buf = pool.get();
        buf.push(b"helloGET /");
        let mut scan = BodyScan::new(Framing::Length(5), false);
        scan.scan(&mut buf).unwrap();
        assert_eq!(scan.pending(), 5);
        assert!(scan.is_scanned());
        buf.consume(5);
        scan.sent(5);
        assert!(scan.is_complete());
        assert_eq!(buf.data(), b"GET /");
    }

    #[test]
    fn strip_mode_forwards_only_data() {
        let mut pool = BufPool::new(64, 1);
        let mut buf = pool.get();
        buf.push(b"3\r\nabc\r\n0\r\n\r\n");
        let mut scan = BodyScan::new(Framing::Chunked(Default::default()), true);
        let mut out = Vec::new();
        loop {
            scan.scan(&mut buf).unwrap();
            let n = scan.pending();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf.data()[..n]);
            buf.consume(n);
            scan.sent(n);
        }
        assert_eq!(out, b"abc");
        assert!(scan.is_complete());
        assert!(buf.is_empty());
    }
}
