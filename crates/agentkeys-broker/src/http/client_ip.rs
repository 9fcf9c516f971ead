//! Who the client is, for per-IP limits and audit details.
//!
//! Behind the TLS proxy the docs prescribe, every TCP peer is the proxy. Its `X-Forwarded-For`
//! is believed only when the peer is one of `BROKER_TRUSTED_PROXIES`: the client is then the
//! rightmost address in that header that is not itself a trusted proxy (addresses further left
//! were written by the client and prove nothing). Any other peer is the client itself, whatever
//! headers it sends.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use super::error::ApiError;
use crate::state::AppState;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets.into_iter().map(|n| n.trunc()).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`, given the request's headers.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        // Every X-Forwarded-For line, in order, is one list (RFC 7230 §3.2.2).
        let hops: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut nearest = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // A hop a trusted proxy would not write: believe nothing further left.
                return nearest;
            };
            if !self.contains(ip) {
                return ip;
            }
            nearest = ip;
        }
        // Only proxies on the path: the leftmost one is the best we know.
        nearest
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Parses one `BROKER_TRUSTED_PROXIES` entry: an address (`10.0.0.5`) or a network
/// (`10.0.0.0/8`, `fd00::/8`).
pub fn parse_trusted_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            "each entry is an IP address or a CIDR network, for example 127.0.0.1 or 10.0.0.0/8"
                .to_owned()
        })
}

/// The client's IP address: the TCP peer, or the forwarded client when the peer is a trusted
/// proxy. Every route that needs the client's address takes this, never `ConnectInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// From the request parts; `None` if the connection's address was not recorded (a router
    /// served without [`super::serve`]).
    pub fn of(parts: &Parts, proxies: &TrustedProxies) -> Option<Self> {
        let ConnectInfo(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
        Some(ClientIp(proxies.client_ip(peer.ip(), &parts.headers)))
    }
}

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Self::of(parts, &state.settings.trusted_proxies).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "no peer address on the request; serve the router with http::serve"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            list.iter()
                .map(|s| parse_trusted_proxy(s).expect("test proxy"))
                .collect(),
        )
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let p = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            p.client_ip(ip("203.0.113.9"), &xff(&["198.51.100.1"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            TrustedProxies::default().client_ip(ip("127.0.0.1"), &xff(&["198.51.100.1"])),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        // The client sent a spoofed entry; the proxy appended the address it saw.
        let h = xff(&["1.1.1.1, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(p.client_ip(ip("127.0.0.1"), &h), ip("198.51.100.7"));
        assert_eq!(
            p.client_ip(ip("10.9.9.9"), &xff(&["[2001:db8::5]:4711"])),
            ip("2001:db8::5")
        );
        assert_eq!(
            p.client_ip(ip("10.9.9.9"), &xff(&["198.51.100.7:80"])),
            ip("198.51.100.7")
        );
        // No header: the proxy itself is all we know.
        assert_eq!(
            p.client_ip(ip("10.9.9.9"), &HeaderMap::new()),
            ip("10.9.9.9")
        );
        // Garbage where a proxy should have written an address: stop at the last proxy.
        assert_eq!(
            p.client_ip(ip("127.0.0.1"), &xff(&["198.51.100.7, junk, 10.0.0.2"])),
            ip("10.0.0.2")
        );
        // IPv4-mapped peers count as IPv4.
        assert_eq!(
            p.client_ip(ip("::ffff:127.0.0.1"), &xff(&["198.51.100.8"])),
            ip("198.51.100.8")
        );
    }

    #[test]
    fn trusted_proxy_entries_parse_as_addresses_or_networks() {
        assert!(parse_trusted_proxy("127.0.0.1").is_ok());
        assert!(parse_trusted_proxy(" 10.0.0.0/8 ").is_ok());
        assert!(parse_trusted_proxy("fd00::/8").is_ok());
        assert!(parse_trusted_proxy("10.0.0.0/33").is_err());
        assert!(parse_trusted_proxy("proxy.local").is_err());
    }
}
