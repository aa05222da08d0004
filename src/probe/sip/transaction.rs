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
    #[error("no response to {method} from {to} within {} s (host unreachable, or no SIP peer there)", waited.as_secs_f64())]
    Timeout {
        method: rsip::Method,
        to: SocketAddr,
        waited: Duration,
    },
    #[error("no valid response to {method} from {to} within {} s; the peer sent malformed SIP: {detail}", waited.as_secs_f64())]
    Malformed {
        method: rsip::Method,
        to: SocketAddr,
        waited: Duration,
        detail: String,
    },
    #[error("the peer rang for {} s without answering", waited.as_secs_f64())]
    RingTimeout { waited: Duration },
    #[error("cannot send SIP to {to}: {source}")]
    Io {
        to: SocketAddr,
        source: std::io::Error,
    },
}

/// Sends `request` to `to` and waits for its final response. Provisional responses go to
/// `on_provisional`; after one, an INVITE waits up to `ring_timeout` for the final one.
/// Requests arriving meanwhile are kept for the caller.
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
            Some(_) => {} // strays and malformed datagrams (noted by the endpoint)
        }
    }
}

/// Whether a response belongs to the transaction of `request` (same branch and method).
fn matches(response: &rsip::Response, request: &rsip::Request) -> bool {
    let same_branch = branch(response).is_some() && branch(response) == branch(request);
    let same_method = cseq(response).map(|(_, m)| m) == Some(request.method.to_string());
    same_branch && same_method
}
