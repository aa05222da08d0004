//! Who may call `probe answer`: an allowlist of addresses and networks (`--allow`), in the
//! daemon's form (`agi.allow`: `10.0.0.0/8`, `192.0.2.10`, `::1/128`).

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// An address, or a network (an IPv4-mapped IPv6 network is the IPv4 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(IpNet);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an address or network like 192.0.2.10 or 10.0.0.0/8")]
pub struct NetworkError(String);

impl FromStr for Network {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| NetworkError(s.to_string()))?;
        // ::ffff:192.0.2.10 is the IPv4 address, as the sources it is checked against.
        let mapped = match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
                .addr()
                .to_ipv4_mapped()
                .and_then(|v4| IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).ok()),
            _ => None,
        };
        Ok(Self(mapped.unwrap_or(net)))
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0.addr(), self.0.prefix_len())
    }
}

impl Network {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }

    /// Whether the whole network is loopback (127.0.0.0/8 or inside it, ::1).
    pub fn is_loopback(&self) -> bool {
        self.0.network().is_loopback() && self.0.broadcast().is_loopback()
    }
}

/// Whether `ip` is in one of the networks.
pub fn allowed(allow: &[Network], ip: IpAddr) -> bool {
    allow.iter().any(|net| net.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_hold_their_addresses_and_no_others() {
        let loopback = [net("127.0.0.0/8"), net("::1/128")];
        assert!(allowed(&loopback, ip("127.0.0.1")));
        assert!(allowed(&loopback, ip("127.255.0.9")));
        assert!(allowed(&loopback, ip("::1")));
        assert!(
            allowed(&loopback, ip("::ffff:127.0.0.1")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!allowed(&loopback, ip("128.0.0.1")));
        assert!(!allowed(&loopback, ip("10.0.0.1")));
        assert!(!allowed(&loopback, ip("::2")));
        let host = net("192.0.2.10");
        assert!(host.contains(ip("192.0.2.10")));
        assert!(!host.contains(ip("192.0.2.11")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.7")));
        assert!(
            !net("0.0.0.0/0").contains(ip("2001:db8::1")),
            "v4 holds no v6"
        );
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        // Host bits in the address do not matter, as in ipnet.
        assert!(net("10.1.2.3/8").contains(ip("10.200.0.1")));
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("192.0.2.10").to_string(), "192.0.2.10/32");
        assert_eq!(net("::ffff:192.0.2.10"), net("192.0.2.10"));
        assert!(net("::ffff:127.0.0.0/104").is_loopback());
        assert!(net("127.0.0.0/8").is_loopback() && net("::1").is_loopback());
        assert!(!net("0.0.0.0/0").is_loopback() && !net("::/0").is_loopback());
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "pbx",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "10.0.0.0/8/8",
            "192.0.2.10:5060",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?}");
        }
    }
}
