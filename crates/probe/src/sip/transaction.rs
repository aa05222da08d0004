//! RFC 3261 §17.1 client transactions over UDP: retransmission with Timer A/E (T1 doubling;
//! capped at T2 for non-INVITE), Timer B/F for giving up, and the ACK of a non-2xx final
//! response to an INVITE.

use std::net::SocketAddr;
use std::time::Duration;

use rsip::prelude::HeadersExt;
use tokio::time::Instant;

use super::message::{branch, cseq, derived_from_invite};
use super::transport::{Endpoint, Inbound};

/// Timer values; RFC 3261's defaults except `timeout`, which tests and impatient users shorten.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    /// Timer B (INVITE) and F (others): no response at all for this long fails the request.
    pub timeout: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            timeout: Duration::from_secs(32),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error("no response to {method} from {to} within {:.1} s (host unreachable, or no SIP peer there)", waited.as_secs_f64())]
    Timeout {
        method: rsip::Method,
        to: SocketAddr,
        waited: Duration,
    },
    #[error("no valid response to {method} from {to} within {:.1} s; the peer sent malformed SIP: {detail}", waited.as_secs_f64())]
    Malformed {
        method: rsip::Method,
        to: SocketAddr,
        waited: Duration,
        detail: String,
    },
    #[error("the peer rang for {:.1} s without answering", waited.as_secs_f64())]
    RingTimeout { waited: Duration },
    #[error("cannot send SIP to {to}: {source}")]
    Io {
        to: SocketAddr,
        source: std::io::Error,
    },
}

/// Sends `request` to `to` and waits for its final response. Provisional responses go to
/// `on_provisional`; after one, an INVITE waits up to `ring_timeout` for the final one.
/// Requests arriving meanwhile, and responses of other transactions (the INVITE's 2xx that
/// crosses its CANCEL), are kept for the caller.
pub async fn run(
    endpoint: &mut Endpoint,
    request: &rsip::Request,
    to: SocketAddr,
    timers: Timers,
    ring_timeout: Duration,
    mut on_provisional: impl FnMut(&rsip::Response),
) -> Result<rsip::Response, TransactionError> {
    let is_invite = request.method == rsip::Method::Invite;
    let text = request.to_string();
    let io = |source| TransactionError::Io { to, source };
    endpoint.send(&text, to).await.map_err(io)?;
    let started = Instant::now();
    let mut interval = timers.t1;
    let mut retransmit_at = Some(started + interval);
    let mut deadline = started + timers.timeout;
    let mut ringing = false;
    loop {
        let wake = retransmit_at.map_or(deadline, |r| r.min(deadline));
        match endpoint.next_from_network(wake).await {
            None if Instant::now() >= deadline => {
                let waited = started.elapsed();
                let method = request.method;
                return Err(match (ringing, endpoint.last_malformed.take()) {
                    (true, _) => TransactionError::RingTimeout { waited },
                    (false, Some(detail)) => TransactionError::Malformed {
                        method,
                        to,
                        waited,
                        detail,
                    },
                    (false, None) => TransactionError::Timeout { method, to, waited },
                });
            }
            None => {
                endpoint.send(&text, to).await.map_err(io)?;
                interval = if is_invite {
                    interval * 2
                } else {
                    (interval * 2).min(timers.t2)
                };
                retransmit_at = Some(Instant::now() + interval);
            }
            Some(Inbound::Response(response, _)) if matches(&response, request) => {
                let code = response.status_code.code();
                if code < 200 {
                    on_provisional(&response);
                    if is_invite {
                        retransmit_at = None;
                        if !ringing {
                            deadline = Instant::now() + ring_timeout;
                        }
                    } else {
                        interval = timers.t2;
                    }
                    ringing = true;
                    continue;
                }
                if is_invite && code >= 300 {
                    let ack =
                        derived_from_invite(request, rsip::Method::Ack, response.to_header().ok());
                    endpoint
                        .send(ack, to)
                        .await
                        .map_err(|source| TransactionError::Io { to, source })?;
                }
                return Ok(response);
            }
            Some(request @ Inbound::Request(..)) => endpoint.defer(request),
            Some(Inbound::Response(response, _))
                if branch(&response).is_none() || cseq(&response).is_none() =>
            {
                // Parsed, but no transaction could ever match it.
                let status = response.status_code.to_string();
                tracing::warn!("discarded a {status} response without a Via branch or CSeq");
                endpoint.last_malformed =
                    Some(format!("a {status} response without a Via branch or CSeq"));
            }
            Some(other @ Inbound::Response(..)) => endpoint.defer(other),
            Some(_) => {} // malformed datagrams (noted by the endpoint)
        }
    }
}

/// Whether a response belongs to the transaction of `request` (same branch and method).
pub fn matches(response: &rsip::Response, request: &rsip::Request) -> bool {
    let same_branch = branch(response).is_some() && branch(response) == branch(request);
    let same_method = cseq(response).map(|(_, m)| m) == Some(request.method.to_string());
    same_branch && same_method
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{new_tag, response};
    use crate::sip::Dialog;

    async fn setup(method: rsip::Method) -> (Endpoint, std::net::UdpSocket, rsip::Request) {
        let ip = "127.0.0.1".parse().unwrap();
        let endpoint = Endpoint::bind_to_peer("127.0.0.1:0".parse().unwrap(), ip, ip)
            .await
            .unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_nonblocking(true).unwrap();
        let mut dialog = Dialog {
            call_id: "t@probe".into(),
            local_uri: "<sip:probe@127.0.0.1>".into(),
            local_tag: new_tag(),
            remote_uri: "<sip:100@127.0.0.1>".into(),
            remote_tag: None,
            remote_target: rsip::Uri::try_from("sip:100@127.0.0.1").unwrap(),
            remote_addr: peer.local_addr().unwrap(),
            local_addr: endpoint.local,
            local_cseq: 0,
            route_set: Vec::new(),
        };
        let request = dialog.request(method, None, None);
        (endpoint, peer, request)
    }

    fn received(peer: &std::net::UdpSocket) -> usize {
        let mut buf = [0u8; 4096];
        std::iter::from_fn(|| peer.recv(&mut buf).ok()).count()
    }

    /// How many times an unanswered request is sent before Timer B/F gives up.
    async fn transmissions_until_timeout(method: rsip::Method) -> usize {
        let (mut endpoint, peer, request) = setup(method).await;
        let to = peer.local_addr().unwrap();
        let ring = Duration::from_secs(60);
        let result = run(&mut endpoint, &request, to, Timers::default(), ring, |_| {}).await;
        assert!(
            matches!(result, Err(TransactionError::Timeout { .. })),
            "{result:?}"
        );
        received(&peer)
    }

    /// Timer A doubles from T1 until Timer B (64·T1): sent at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_invite_is_sent_seven_times_then_times_out() {
        assert_eq!(transmissions_until_timeout(rsip::Method::Invite).await, 7);
    }

    /// Timer E doubles up to T2 (4 s) until Timer F: 0, 0.5, 1.5, 3.5, 7.5, then every 4 s to 31.5.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_bye_is_retransmitted_at_most_every_t2() {
        assert_eq!(transmissions_until_timeout(rsip::Method::Bye).await, 11);
    }

    /// A provisional response stops the INVITE's retransmissions; the ring timeout then ends it.
    #[tokio::test(start_paused = true)]
    async fn a_provisional_response_stops_retransmissions() {
        let (mut endpoint, peer, invite) = setup(rsip::Method::Invite).await;
        let to = peer.local_addr().unwrap();
        let ringing = response(&invite, 180, "t2", to, None).to_string();
        let answering = async {
            let mut buf = [0u8; 4096];
            loop {
                if let Ok((_, from)) = peer.recv_from(&mut buf) {
                    peer.send_to(ringing.as_bytes(), from).unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let mut provisional = 0;
        let (result, ()) = tokio::join!(
            run(
                &mut endpoint,
                &invite,
                to,
                Timers::default(),
                Duration::from_secs(5),
                |_| provisional += 1
            ),
            answering
        );
        assert!(
            matches!(result, Err(TransactionError::RingTimeout { .. })),
            "{result:?}"
        );
        assert_eq!(provisional, 1);
        assert_eq!(received(&peer), 0, "no retransmission after the 180");
    }
}
