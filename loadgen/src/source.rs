//! Source-address pools (`--source 127.0.0.2-127.0.0.250`, `--source 127.0.1.0/24`).
//! Connection g binds to pool[g % len], so connections spread evenly and no
//! address needs more than conns/len ports toward the target.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Largest pool accepted: enough for 10M connections at ~150 ports each.
pub const MAX_POOL: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError(pub String);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad --source {:?}: expected an address, FIRST-LAST (same family) or ADDR/PREFIX, \
             with at most {MAX_POOL} addresses",
            self.0
        )
    }
}

impl std::error::Error for SourceError {}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// Parses one --source value into its addresses, appended to `pool`.
pub fn parse_into(spec: &str, pool: &mut Vec<IpAddr>) -> Result<(), SourceError> {
    let err = || SourceError(spec.to_string());
    let (first, last) = if let Some((a, b)) = spec.split_once('-') {
        let a: IpAddr = a.trim().parse().map_err(|_| err())?;
        let b: IpAddr = b.trim().parse().map_err(|_| err())?;
        if a.is_ipv4() != b.is_ipv4() || to_u128(a) > to_u128(b) {
            return Err(err());
        }
        (a, b)
    } else if let Some((a, p)) = spec.split_once('/') {
        let a: IpAddr = a.trim().parse().map_err(|_| err())?;
        let bits = if a.is_ipv4() { 32 } else { 128 };
        let p: u32 = p.trim().parse().map_err(|_| err())?;
        if p > bits || bits - p > 16 {
            return Err(err());
        }
        let size = 1u128 << (bits - p);
        let base = to_u128(a) & !(size - 1);
        // Skip the network and broadcast addresses of ordinary IPv4 subnets.
        let (lo, hi) = if a.is_ipv4() && size >= 4 {
            (base + 1, base + size - 2)
        } else {
            (base, base + size - 1)
        };
        (from_u128(lo, a.is_ipv4()), from_u128(hi, a.is_ipv4()))
    } else {
        let a: IpAddr = spec.trim().parse().map_err(|_| err())?;
        (a, a)
    };
    let (lo, hi) = (to_u128(first), to_u128(last));
    if (hi - lo) as usize >= MAX_POOL || pool.len() + ((hi - lo) as usize) >= MAX_POOL {
        return Err(err());
    }
    pool.extend((lo..=hi).map(|v| from_u128(v, first.is_ipv4())));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_cidrs() {
        let mut p = Vec::new();
        parse_into("127.0.0.2-127.0.0.4", &mut p).unwrap();
        parse_into("127.0.1.0/30", &mut p).unwrap();
        let want: Vec<IpAddr> = [
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.1.1",
            "127.0.1.2",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(p, want);
        assert!(parse_into("127.0.0.9-127.0.0.1", &mut p).is_err());
        assert!(parse_into("10.0.0.0/8", &mut p).is_err());
    }
}
