//! The request head parser and the upstream head writer: no panic on any
//! input, and an accepted head is rewritten into one that ends in a blank
//! line and is sent whole (it fits or the request is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use speedmimi::buffer::BufPool;
use speedmimi::http::request::{parse_request_into, write_upstream_head, RequestHead};
use speedmimi_fuzz::LIMITS;
use std::net::{IpAddr, Ipv6Addr};

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::boxed();
    if let Ok(true) = parse_request_into(data, &LIMITS, &mut head) {
        assert!(head.head_len <= data.len());
        let _ = head.route_host(data);
        let _ = head.path(data);
        let mut pool = BufPool::new(16 * 1024, 1);
        let mut out = pool.get();
        let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        if write_upstream_head(data, &head, &mut out, ip, "fallback.invalid", true) {
            assert!(out.data().ends_with(b"\r\n\r\n"), "upstream head without its blank line");
        }
    }
});
