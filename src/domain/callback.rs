//! Where a verification's webhooks may go. A `callback_url` comes from an API caller, so
//! unless the admin allows it (`webhooks.allow_private_callbacks`) it must not reach this host
//! or an internal network: not by name, not by any spelling of an address (`2130706433`,
//! `0x7f.1`, `127.1` and `0` are all addresses of this host), and not by what a name resolves
//! to when the webhook is sent (the sender checks the addresses it connects to).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Why a callback URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("it must be an http:// or https:// URL with a host, of at most 2048 characters")]
    Invalid,
    #[error("it points into a private network or this host")]
    Internal,
}

/// The URL as it will be used (normalised, so that what was checked is what is sent), if
/// it may receive webhooks.
pub fn validate(url: &str, allow_internal: bool) -> Result<String, CallbackError> {
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(CallbackError::Invalid);
    }
    let parsed = Url::parse(url).map_err(|_| CallbackError::Invalid)?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(CallbackError::Invalid);
    }
    if !allow_internal {
        check_host(&parsed)?;
    }
    Ok(parsed.into())
}

/// The URL's host, as the URL standard reads it, is not internal. A name is checked by
/// spelling here (`localhost`); what it resolves to is checked when it is used.
pub fn check_host(url: &Url) -> Result<(), CallbackError> {
    match url.host() {
        None => Err(CallbackError::Invalid),
        Some(Host::Ipv4(ip)) if is_internal(IpAddr::V4(ip)) => Err(CallbackError::Internal),
        Some(Host::Ipv6(ip)) if is_internal(IpAddr::V6(ip)) => Err(CallbackError::Internal),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Err(CallbackError::Internal)
            } else {
                Ok(())
            }
        }
        Some(_) => Ok(()),
    }
}

/// This host, private and shared networks, link-local (cloud metadata), multicast,
/// broadcast, unspecified, reserved, benchmarking and documentation addresses, in IPv4 or
/// IPv6. An IPv6 address that stands for an IPv4 one (IPv4-mapped, -compatible and
/// -translated, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged by that IPv4 address; any
/// other IPv6 address must be global unicast (`2000::/3`).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => embedded_v4(v6).map_or_else(|| is_internal_v6(v6), is_internal_v4),
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        // 0.0.0.0/8: "this network", which Linux connects to this host.
        || a == 0
        // 100.64.0.0/10: carrier-grade NAT, often the provider's own network.
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24: IETF protocol assignments.
        || (a, b, c) == (192, 0, 0)
        // 198.18.0.0/15: benchmarking.
        || (a == 198 && (b & 0xfe) == 18)
        // 240.0.0.0/4: reserved.
        || a >= 240
}

/// The IPv4 address an IPv6 address carries and stands for, if it is one of those.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let [.., w, x, y, z] = v6.octets();
    let last = Ipv4Addr::new(w, x, y, z);
    match v6.segments() {
        // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible, :: and ::1 included: they map
        // to 0.0.0.0/8), ::ffff:0:a.b.c.d (translated), 64:ff9b::a.b.c.d (NAT64).
        [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0, 0, _, _]
        | [0, 0, 0, 0, 0xffff, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last),
        // 2002:AABB:CCDD::/48: 6to4, the site of A.B.C.D.
        [0x2002, high, low, ..] => {
            let [a, b] = high.to_be_bytes();
            let [c, d] = low.to_be_bytes();
            Some(Ipv4Addr::new(a, b, c, d))
        }
        _ => None,
    }
}

fn is_internal_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    // Only global unicast reaches other networks: this host, unique local, link-local,
    // site-local, multicast, discard-only (100::/64) and the local-use NAT64 prefix
    // (64:ff9b:1::/48, whose IPv4 address's place the local translator decides) are all
    // outside 2000::/3.
    (s[0] & 0xe000) != 0x2000
        // 2001::/32: Teredo, a tunnel to an IPv4 address (client) behind a relay.
        || (s[0], s[1]) == (0x2001, 0)
        // 2001:db8::/32 and 3fff::/20: documentation.
        || (s[0], s[1]) == (0x2001, 0xdb8)
        || (s[0] == 0x3fff && s[1] < 0x1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_hosts_are_refused_in_every_spelling() {
        for url in [
            "http://127.0.0.1/hook",
            "http://localhost:8080/x",
            "http://LOCALHOST./x",
            "http://a.localhost/",
            "https://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9000/",
            "http://user@192.168.1.1/",
            "http://[::ffff:10.0.0.1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433:8080/",
            "http://0x7f.1:8080/",
            "http://0177.0.0.1/",
            "http://127.1:8080/",
            "http://0:8080/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
        ] {
            assert_eq!(validate(url, false), Err(CallbackError::Internal), "{url}");
            assert!(validate(url, true).is_ok(), "{url}");
        }
    }

    #[test]
    fn reserved_ranges_and_embedded_ipv4_are_refused() {
        for url in [
            // NAT64 (well-known and local-use), 6to4, IPv4-compatible and -translated
            // addresses of internal IPv4 ones.
            "http://[64:ff9b::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[64:ff9b::10.0.0.1]/",
            "http://[64:ff9b:1::5db8:d822]/",
            "http://[2002:7f00:1::]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://[2002:c0a8:101::1]/",
            "http://[::127.0.0.1]/",
            "http://[::10.0.0.1]/",
            "http://[::169.254.169.254]/",
            "http://[::ffff:0:10.0.0.1]/",
            "http://[::]/",
            // IPv4: benchmarking, IETF protocol assignments, reserved, broadcast,
            // "this network", shared, multicast, documentation.
            "http://198.18.0.1/",
            "http://198.19.255.254/",
            "http://192.0.0.1/",
            "http://192.0.0.170/",
            "http://240.0.0.1/",
            "http://254.1.2.3/",
            "http://255.255.255.255/",
            "http://0.1.2.3/",
            "http://100.127.255.254/",
            "http://224.0.0.1/",
            "http://239.255.255.250/",
            "http://192.0.2.1/",
            "http://198.51.100.1/",
            "http://203.0.113.1/",
            // IPv6: multicast, link- and site-local, discard, documentation, Teredo, and
            // whatever is not global unicast.
            "http://[ff02::1]/",
            "http://[fe80::1]/",
            "http://[fec0::1]/",
            "http://[100::1]/",
            "http://[2001:db8::1]/",
            "http://[3fff::1]/",
            "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
            "http://[4000::1]/",
        ] {
            assert_eq!(validate(url, false), Err(CallbackError::Internal), "{url}");
        }
        // Public IPv4 addresses behind those prefixes are public.
        for url in [
            "http://[64:ff9b::93.184.216.34]/",
            "http://[2002:5db8:d822::1]/",
            "http://198.20.0.1/",
            "http://192.0.1.1/",
            "http://100.128.0.1/",
        ] {
            assert!(validate(url, false).is_ok(), "{url}");
        }
    }

    #[test]
    fn public_hosts_pass_normalised() {
        assert_eq!(
            validate("https://App.Example.com/hooks?a=1", false),
            Ok("https://app.example.com/hooks?a=1".into())
        );
        assert!(validate("https://93.184.216.34:8443/h", false).is_ok());
        assert!(validate("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/h", false).is_ok());
    }

    #[test]
    fn malformed_urls_are_refused() {
        for bad in [
            "ftp://x",
            "http://",
            "https:// spaced",
            "javascript:alert(1)",
            "file:///etc/passwd",
            &format!("https://example.com/{}", "a".repeat(2048)),
        ] {
            assert_eq!(validate(bad, true), Err(CallbackError::Invalid), "{bad}");
        }
    }
}
