//! The SIP socket: one UDP socket, a task that parses what arrives (from the allowed hosts
//! or the called host only), and a queue of the requests that came in while a transaction
//! was waiting for its response.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::allow::{allowed, Network};

/// Hosts outside the allowlist named one by one in warnings (and in [`Refused`]); datagrams
/// from further ones are only counted, so that a flood writes a few lines at most.
const NAMED_REFUSED_HOSTS: usize = 8;

/// A message from the network.
#[derive(Debug)]
pub enum Inbound {
    Request(rsip::Request, SocketAddr),
    Response(rsip::Response, SocketAddr),
    /// A datagram that is not SIP rsip can parse: its first line and the parse error.
    /// RFC 3261 §18.3 says to discard it; the probe remembers it to explain a failure.
    Malformed {
        first_line: String,
        error: String,
    },
}

pub struct Endpoint {
    socket: Arc<UdpSocket>,
    /// The address the probe puts in Via, Contact and SDP.
    pub local: SocketAddr,
    inbound: mpsc::Receiver<Inbound>,
    deferred: VecDeque<Inbound>,
    /// The last malformed message seen, for the error when a transaction then times out.
    pub last_malformed: Option<String>,
    refused: Arc<Mutex<Refused>>,
    reader: tokio::task::JoinHandle<()>,
}

/// What the allowlist (or, calling, the called host's filter) kept out: datagrams dropped
/// unread and unanswered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refused {
    pub datagrams: u64,
    /// The first hosts they came from.
    pub hosts: Vec<IpAddr>,
}

impl Refused {
    /// A datagram from `from` dropped, `why`: named in a warning the first time its host
    /// is seen.
    fn note(&mut self, from: SocketAddr, why: &str) {
        self.datagrams += 1;
        let host = from.ip().to_canonical();
        if self.hosts.contains(&host) || self.hosts.len() >= NAMED_REFUSED_HOSTS {
            tracing::debug!("dropped SIP from {from}: {why}");
            return;
        }
        self.hosts.push(host);
        tracing::warn!("dropped SIP from {from}: {why}; it gets no answer");
    }
}

/// Whose datagrams an endpoint reads; those of any other host are dropped before they are
/// parsed, and never answered.
enum Senders {
    /// The hosts allowed to call (`probe answer --allow`): those kept out are named in
    /// warnings and counted (see [`Refused`]).
    Allowed(Vec<Network>),
    /// The host called (`probe call`): every request of the call goes to it (the route set
    /// travels in Route headers), so nobody else has anything to say to the probe.
    Peer(IpAddr),
}

impl Senders {
    fn admit(&self, from: SocketAddr, refused: &Mutex<Refused>) -> bool {
        match self {
            Self::Allowed(allow) if !allowed(allow, from.ip()) => {
                let why = "the host is not allowed to call the probe (--allow)";
                refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .note(from, why);
                false
            }
            Self::Peer(peer) if from.ip().to_canonical() != *peer => {
                // Named, so that a peer answering from another address (a multi-homed PBX)
                // shows why the call then times out.
                let why = format!("only the called host {peer} is listened to");
                refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .note(from, &why);
                false
            }
            _ => true,
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Endpoint {
    /// Binds `bind` (port 0: any) for a call to `peer` (a UAC); `advertised_ip` is put in
    /// headers when `bind` is a wildcard address. Datagrams from any other host are dropped
    /// unread (a warning names each such host once): a third party that learns the Call-ID cannot end or alter
    /// the call, nor make the probe send anything anywhere.
    pub async fn bind_to_peer(
        bind: SocketAddr,
        advertised_ip: IpAddr,
        peer: IpAddr,
    ) -> std::io::Result<Self> {
        Self::open(bind, advertised_ip, Senders::Peer(peer.to_canonical())).await
    }

    /// Binds `bind` like [`Endpoint::bind_to_peer`] for calls from the hosts in `allow` (a
    /// UAS); a datagram from any other is dropped unread and never answered: no response
    /// for a scanner to fingerprint, none reflected towards a forged source address.
    pub async fn bind_allowing(
        bind: SocketAddr,
        advertised_ip: IpAddr,
        allow: Vec<Network>,
    ) -> std::io::Result<Self> {
        Self::open(bind, advertised_ip, Senders::Allowed(allow)).await
    }

    async fn open(
        bind: SocketAddr,
        advertised_ip: IpAddr,
        senders: Senders,
    ) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        let local = SocketAddr::new(advertised_ip, socket.local_addr()?.port());
        let (tx, inbound) = mpsc::channel(64);
        let refused = Arc::new(Mutex::new(Refused::default()));
        let reader = tokio::spawn(read_loop(socket.clone(), tx, senders, refused.clone()));
        Ok(Self {
            socket,
            local,
            inbound,
            deferred: VecDeque::new(),
            last_malformed: None,
            refused,
            reader,
        })
    }

    /// What the allowlist has kept out so far.
    pub fn refused(&self) -> Refused {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub async fn send(
        &self,
        message: impl std::fmt::Display,
        to: SocketAddr,
    ) -> std::io::Result<()> {
        let text = message.to_string();
        // Escaped: responses copy the peer's headers.
        tracing::trace!("SIP to {to}: {text:?}");
        self.socket.send_to(text.as_bytes(), to).await.map(|_| ())
    }

    /// The next message, requests deferred by a transaction first; None at the deadline.
    pub async fn next(&mut self, deadline: Instant) -> Option<Inbound> {
        if let Some(message) = self.deferred.pop_front() {
            return Some(message);
        }
        self.next_from_network(deadline).await
    }

    pub(crate) async fn next_from_network(&mut self, deadline: Instant) -> Option<Inbound> {
        let message = tokio::time::timeout_at(deadline, self.inbound.recv())
            .await
            .ok()??;
        if let Inbound::Malformed { first_line, error } = &message {
            tracing::warn!("discarded malformed SIP from the peer ({first_line:?}): {error}");
            self.last_malformed = Some(format!("{first_line:?}: {error}"));
        }
        Some(message)
    }

    pub(crate) fn defer(&mut self, message: Inbound) {
        self.deferred.push_back(message);
    }
}

async fn read_loop(
    socket: Arc<UdpSocket>,
    tx: mpsc::Sender<Inbound>,
    senders: Senders,
    refused: Arc<Mutex<Refused>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if !senders.admit(from, &refused) {
            continue;
        }
        let data = &buf[..len];
        if data.iter().all(u8::is_ascii_whitespace) {
            continue; // RFC 5626 keep-alive
        }
        // Escaped: the peer's bytes may hold terminal control sequences.
        tracing::trace!("SIP from {from}: {:?}", String::from_utf8_lossy(data));
        let message = match rsip::SipMessage::try_from(data) {
            Ok(rsip::SipMessage::Request(r)) => Inbound::Request(r, from),
            Ok(rsip::SipMessage::Response(r)) => Inbound::Response(r, from),
            Err(e) => Inbound::Malformed {
                first_line: String::from_utf8_lossy(data)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect(),
                error: e.to_string(),
            },
        };
        if tx.send(message).await.is_err() {
            break;
        }
    }
}
