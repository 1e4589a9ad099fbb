//! The response head parser: no panic on any input and client kind, and
//! what it writes for the client is a head a strict client accepts, with at
//! most one Content-Length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use speedmimi::buffer::BufPool;
use speedmimi::http::response::{parse_and_rewrite, ClientSide};
use speedmimi_fuzz::reference::{self, Outcome};

fuzz_target!(|data: &[u8]| {
    let Some((&bits, input)) = data.split_first() else {
        return;
    };
    let client = ClientSide {
        http10: bits & 1 != 0,
        keep_alive: bits & 2 != 0,
        head_request: bits & 4 != 0,
        upgrade_requested: bits & 8 != 0,
    };
    let mut pool = BufPool::new(16 * 1024, 1);
    let mut out = pool.get();
    if let Ok(Some(head)) = parse_and_rewrite(input, client, &mut out) {
        assert!(head.head_len <= input.len());
        if out.is_empty() {
            return; // an interim answer swallowed for an HTTP/1.0 client
        }
        // Read as the answer to a HEAD request: the head alone must parse.
        match reference::response(out.data(), true, false) {
            Outcome::Complete(m) => {
                assert_eq!(m.len, out.len());
                assert!(m.header_all("content-length").len() <= 1);
            }
            other => panic!(
                "the client gets a head a strict client reads as {other:?}:\n{:?}",
                String::from_utf8_lossy(out.data())
            ),
        }
    }
});
