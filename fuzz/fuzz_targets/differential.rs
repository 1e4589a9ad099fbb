//! The proxy's framing against an independent strict parser: on any input
//! the proxy accepts, (1) what it sends upstream is one complete strict
//! message, ending where its bytes end, with the body the proxy read; and
//! (2) where a strict reading of the input finds a message, it ends where
//! the proxy's does, with the same body. The proxy may refuse what the
//! strict reader accepts (it is stricter in places), never the reverse
//! silently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use speedmimi_fuzz::reference::{self, Outcome};
use speedmimi_fuzz::{proxy_request, ProxyFraming};

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let step = 1 + first as usize % 64;
    let strict = reference::request(input);
    match proxy_request(input, step) {
        ProxyFraming::Accepted(f) => {
            match reference::request(&f.upstream) {
                Outcome::Complete(m) => {
                    assert_eq!(m.len, f.upstream.len(), "upstream bytes after the message");
                    assert_eq!(m.body, f.body, "upstream body differs from what was read");
                }
                other => panic!(
                    "the proxy sends what a strict backend reads as {other:?}:\n{:?}",
                    String::from_utf8_lossy(&f.upstream)
                ),
            }
            if let Outcome::Complete(m) = strict {
                assert_eq!(m.len, f.end, "the message ends elsewhere for a strict reader");
                assert_eq!(m.body, f.body, "a strict reader sees another body");
            }
        }
        ProxyFraming::Incomplete => {
            if let Outcome::Complete(m) = strict {
                panic!("a strict reader has a whole message of {} bytes, the proxy waits for more", m.len);
            }
        }
        ProxyFraming::Rejected => {}
    }
});
