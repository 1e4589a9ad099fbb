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

/// Re-encodes the chunked bytes of `buf` after its first `from` (already
/// classified) in place: data as it came, our own size lines, extensions and
/// trailers dropped. The canonical form is never longer than what it stands
/// for, so it is written over what was read. Framing is written only once
/// its canonical form is known: a size line read in part is left for the
/// next call (the decoder goes back to before it). Returns how many bytes at
/// the front of `buf` are now ready to forward.
fn reencode(decoder: &mut ChunkedDecoder, buf: &mut Buf, from: usize) -> Result<usize, ChunkError> {
    let data = buf.data_mut();
    let (mut read, mut written) = (from, from);
    loop {
        let before = decoder.clone();
        match decoder.next(&data[read..])? {
            None => break,
            Some(Piece::Data(n)) => {
                if written != read {
                    data.copy_within(read..read + n, written);
                }
                read += n;
                written += n;
            }
            // Only the last piece of the input can stop short of a point
            // where everything read has its canonical form.
            Some(Piece::Framing(_)) if !decoder.nothing_owed() => {
                *decoder = before;
                break;
            }
            Some(Piece::Framing(n) | Piece::End(n)) => {
                let canonical = decoder.canonical();
                data[written..written + canonical.len()].copy_from_slice(canonical);
                read += n;
                written += canonical.len();
            }
        }
    }
    buf.remove(written, read);
    Ok(written)
}

/// Tracks how far a body has been classified in a buffer.
#[derive(Debug, Clone)]
pub struct BodyScan {
    framing: Framing,
    /// Bytes at the front of the buffer that belong to the body and are ready to forward.
    pending: usize,
    /// Strip the chunked coding (forward data only) instead of re-encoding it.
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

    /// Classifies newly buffered bytes. A chunked body is re-encoded in
    /// place, or in strip mode its framing is consumed from the buffer's
    /// front.
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
                    self.pending = reencode(decoder, buf, self.pending)?;
                    self.scanned = decoder.is_done();
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

    /// Scans `input` fed `step` bytes at a time, forwarding what is
    /// pending after each scan; returns what went out and what is left.
    fn forward_in_steps(input: &[u8], step: usize, strip: bool) -> (Vec<u8>, Vec<u8>) {
        let mut pool = BufPool::new(256, 1);
        let mut buf = pool.get();
        let mut scan = BodyScan::new(Framing::Chunked(Default::default()), strip);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            assert_eq!(buf.push(piece), piece.len(), "buffer full at step {step}");
            scan.scan(&mut buf).unwrap();
            let n = scan.pending();
            out.extend_from_slice(&buf.data()[..n]);
            buf.consume(n);
            scan.sent(n);
        }
        assert!(scan.is_complete(), "step {step}");
        (out, buf.data().to_vec())
    }

    #[test]
    fn chunked_is_re_encoded_with_our_own_framing_in_any_split() {
        let input: &[u8] =
            b"005;a=b ; q=\"x\\\"y\"\r\nhello\r\n00A\r\n0123456789\r\n0;z\r\nT: x\r\nU:\r\n\r\nGET /";
        for step in 1..=input.len() {
            let (out, left) = forward_in_steps(input, step, false);
            assert_eq!(
                out, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n",
                "step {step}"
            );
            assert_eq!(left, b"GET /", "step {step}");
        }
    }

    #[test]
    fn trailers_larger_than_the_buffer_stream_through() {
        let mut input = b"1\r\na\r\n0\r\n".to_vec();
        for _ in 0..30 {
            input.extend_from_slice(b"Name: ");
            input.extend(std::iter::repeat_n(b'v', 90));
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"\r\n");
        for step in [1, 7, 64, 200] {
            let (out, left) = forward_in_steps(&input, step, false);
            assert_eq!(out, b"1\r\na\r\n0\r\n\r\n");
            assert!(left.is_empty());
        }
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
