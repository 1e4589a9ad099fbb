//! The chunked decoder: the same verdict and the same data however the
//! input is split; re-encoding gives a body that decodes to the same data
//! and re-encodes to itself (our framing is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use speedmimi::buffer::BufPool;
use speedmimi::http::body::{BodyScan, Framing};
use speedmimi::http::chunked::{ChunkError, ChunkedDecoder, Piece};

/// Decodes `input` fed `step` bytes at a time: the data, and how many
/// bytes the body took (`None`: not ended).
fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<usize>), ChunkError> {
    let mut d = ChunkedDecoder::default();
    let mut data = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let end = (at + step).min(input.len());
        let mut slice = &input[at..end];
        while let Some(p) = d.next(slice)? {
            let n = match p {
                Piece::Data(n) => {
                    data.extend_from_slice(&slice[..n]);
                    n
                }
                Piece::Framing(n) => n,
                Piece::End(n) => return Ok((data, Some(end - slice.len() + n))),
            };
            slice = &slice[n..];
        }
        at = end;
    }
    Ok((data, None))
}

fn reencode(input: &[u8], step: usize) -> Option<Vec<u8>> {
    let mut pool = BufPool::new(16 * 1024, 1);
    let mut buf = pool.get();
    let mut scan = BodyScan::new(Framing::Chunked(ChunkedDecoder::default()), false);
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        scan.scan(&mut buf).ok()?;
        let n = scan.pending();
        out.extend_from_slice(&buf.data()[..n]);
        buf.consume(n);
        scan.sent(n);
        if scan.is_complete() {
            return Some(out);
        }
        if n > 0 {
            continue; // what follows the sent bytes is scanned next
        }
        if fed == input.len() {
            return None;
        }
        let took = buf.push(&input[fed..(fed + step).min(input.len())]);
        assert!(took > 0, "re-encoding stalls on a full buffer");
        fed += took;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let step = 1 + first as usize % 32;
    let whole = decode(input, input.len().max(1));
    let split = decode(input, step);
    assert_eq!(whole, split, "the verdict depends on how the input is split");
    if let Ok((data, Some(_))) = whole {
        let coded = reencode(input, step).expect("re-encoding refused an accepted body");
        let again = decode(&coded, coded.len());
        assert_eq!(again, Ok((data, Some(coded.len()))), "re-encoded body decodes differently");
        assert_eq!(reencode(&coded, 7).as_deref(), Some(&coded[..]), "our framing is not canonical");
    }
});
