//! Where a verification's webhooks may go. A `callback_url` comes from an API caller, so
//! unless the admin allows it (`webhooks.allow_private_callbacks`) it must not reach this host
//! or an internal network: not by name, not by any spelling of an address (`2130706433`,
//! `0x7f.1`, `127.1` and `0` are all addresses of this host), and not by what a name resolves
//! to when the webhook is sent (the sender checks the addresses it connects to).

use std::net::IpAddr;

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
/// broadcast and unspecified addresses, in IPv4 or IPv6 (IPv4-mapped included).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                // 100.64.0.0/10: carrier-grade NAT, often the provider's own network.
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
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
    fn public_hosts_pass_normalised() {
        assert_eq!(
            validate("https://App.Example.com/hooks?a=1", false),
            Ok("https://app.example.com/hooks?a=1".into())
        );
        assert!(validate("https://93.184.216.34:8443/h", false).is_ok());
        assert!(validate("http://[2001:db8::1]/h", false).is_ok());
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
