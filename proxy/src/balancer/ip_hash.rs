//! `ip_hash`: the same client address goes to the same backend, by
//! weighted rendezvous hashing. Every backend gets a score from a hash of
//! (client, backend address) and the highest wins, so removing one of N
//! backends moves only the clients it had (about 1/N) and nobody else, and
//! a backend that is down or excluded hands its clients to each one's
//! second choice. The hash is fixed (no random seed), so every loop,
//! process and restart maps a client the same way.

use super::{Balancer, PickContext};
use crate::upstream::UpstreamState;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Default)]
pub struct IpHash;

impl IpHash {
    pub fn new() -> IpHash {
        IpHash
    }
}

impl Balancer for IpHash {
    fn pick(&mut self, upstream: &UpstreamState, ctx: &PickContext) -> Option<usize> {
        let client = hash_ip(ctx.client_ip);
        let mut best: Option<(usize, f64)> = None;
        for (i, b) in upstream.backends.iter().enumerate() {
            if !ctx.eligible(upstream, i) {
                continue;
            }
            let s = score(client, hash_addr(b.addr), b.weight);
            if best.is_none_or(|(_, top)| s > top) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Weighted rendezvous score: −w / ln(u) with u uniform in (0, 1) from the
/// pair's hash. The highest score wins with probability w / Σw.
fn score(client: u64, backend: u64, weight: u32) -> f64 {
    let h = mix(client ^ mix(backend));
    // 53 random bits into (0, 1), never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight.max(1)) / u.ln()
}

/// Keys on the client's IP address only (not its port); an IPv4 address
/// seen as IPv4-mapped IPv6 hashes as the IPv4 one.
fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => mix(u64::from(u32::from(v4)) | 4 << 32),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            mix(mix(bits as u64) ^ (bits >> 64) as u64)
        }
    }
}

/// Backends are keyed by address, not by position, so reordering the list
/// in the configuration moves no client.
fn hash_addr(addr: SocketAddr) -> u64 {
    let ip = hash_ip(addr.ip());
    mix(ip ^ u64::from(addr.port()))
}

/// splitmix64's finalizer: a fast bijective mixer with full avalanche.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
