//! Who may connect to the daemon's Asterisk-facing listeners (FastAGI, AudioSocket): neither
//! protocol authenticates, so peers are checked against an allowlist, and a cap bounds how
//! many connections are served at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Whether `ip` is in the allowlist (IPv4-mapped IPv6 addresses count as IPv4).
pub fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    allow.iter().any(|net| net.contains(&ip))
}

/// An allowlist and a connection cap, for one listener named `what` in logs.
pub struct Admission {
    allow: Vec<IpNet>,
    limit: Arc<Semaphore>,
    max: usize,
    what: &'static str,
}

impl Admission {
    pub fn new(what: &'static str, allow: Vec<IpNet>, max: usize) -> Self {
        Self {
            allow,
            limit: Arc::new(Semaphore::new(max)),
            max,
            what,
        }
    }

    /// Admit an accepted connection, or log why not. A connection over the cap is closed at
    /// once, so that Asterisk fails fast instead of leaving the caller in dead air.
    pub async fn admit(
        &self,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::error!(error = %e, listener = self.what, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return None;
            }
        };
        if !allowed(&self.allow, peer.ip()) {
            tracing::warn!(%peer, listener = self.what, "connection refused: peer not in agi.allow");
            return None;
        }
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, listener = self.what, max = self.max,
                "connection refused: connection limit reached (agi.max_sessions)");
            return None;
        };
        Some((stream, peer, permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_networks_and_mapped_addresses() {
        let allow: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(allowed(&allow, "127.9.9.9".parse().unwrap()));
        assert!(allowed(&allow, "::1".parse().unwrap()));
        assert!(allowed(&allow, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!allowed(&allow, "10.0.0.5".parse().unwrap()));
        assert!(!allowed(&allow, "::ffff:10.0.0.5".parse().unwrap()));
    }
}
