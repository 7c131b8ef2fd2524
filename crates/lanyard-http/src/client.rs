//! Who the client is: the one place a request's client address is worked out, for sign-in
//! throttling and every other per-address rule.
//!
//! The client is the TCP peer, unless the peer is a trusted proxy (`--trusted-proxy`, a list of
//! CIDR ranges): then it is the right-most `X-Forwarded-For` entry that is not itself a trusted
//! proxy (entries left of that were written by the client and prove nothing). A peer that is not
//! trusted cannot name another address: its `X-Forwarded-For` is ignored. Serving plain HTTP
//! (`--behind-proxy`) trusts no one by itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::ExtensionRejection;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;

/// An address range: a network address and a prefix length (`10.0.0.0/8`, `fd00::/8`; a bare
/// address is a range of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bad = || format!("`{text}` is not an address range like 10.0.0.0/8 or fd00::/8");
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let network = addr.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The proxies whose `X-Forwarded-For` is believed. Empty (the default): none.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[Cidr]>);

impl TrustedProxies {
    pub fn new(ranges: Vec<Cidr>) -> Self {
        Self(ranges.into())
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client of a request from `peer` carrying these headers (see the module docs).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Later headers were appended later: read every entry right to left.
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded(entry) else {
                // Garbage where an address should be: stop at the last one known good.
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    e.parse::<SocketAddr>().ok().map(|s| s.ip().to_canonical())
}

/// The client address of a request: what handlers pass to the domain. `None` only when the
/// server was not started with peer addresses (unit tests).
pub fn client_address(
    proxies: &TrustedProxies,
    peer: &Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    match peer {
        Ok(ConnectInfo(addr)) => Some(proxies.client(addr.ip(), headers)),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::http::HeaderValue;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|c| c.parse().unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        let h = xff(&["198.51.100.9"]);
        assert_eq!(none.client(ip("127.0.0.1"), &h), ip("127.0.0.1"));

        let p = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        // From an untrusted peer: ignored.
        assert_eq!(p.client(ip("203.0.113.5"), &h), ip("203.0.113.5"));
        // From a trusted one: the right-most entry that is not a trusted proxy.
        assert_eq!(p.client(ip("127.0.0.1"), &h), ip("198.51.100.9"));
        let chain = xff(&["1.1.1.1, 198.51.100.9, 10.1.2.3"]);
        assert_eq!(p.client(ip("127.0.0.1"), &chain), ip("198.51.100.9"));
        // A client-written spoof left of the real entry changes nothing.
        let spoof = xff(&["10.9.9.9, 198.51.100.9"]);
        assert_eq!(p.client(ip("127.0.0.1"), &spoof), ip("198.51.100.9"));
        // Several headers read as one list, in order.
        let split = xff(&["1.1.1.1", "198.51.100.9:4711"]);
        assert_eq!(p.client(ip("127.0.0.1"), &split), ip("198.51.100.9"));
        // Only proxies: the left-most of them; no header: the peer; garbage: the last good.
        assert_eq!(
            p.client(ip("127.0.0.1"), &xff(&["10.0.0.2, 10.0.0.1"])),
            ip("10.0.0.2")
        );
        assert_eq!(
            p.client(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        assert_eq!(
            p.client(ip("127.0.0.1"), &xff(&["198.51.100.9, bogus"])),
            ip("127.0.0.1")
        );
        // An IPv4 peer seen as IPv4-mapped IPv6 is still the trusted proxy.
        assert_eq!(p.client(ip("::ffff:127.0.0.1"), &h), ip("198.51.100.9"));
    }
}
