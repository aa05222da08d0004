//! The SIP socket: one UDP socket, a task that parses what arrives, and a queue of the
//! requests that came in while a transaction was waiting for its response.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

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
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Endpoint {
    /// Binds `bind` (port 0: any); `advertised_ip` is put in headers when `bind` is a
    /// wildcard address.
    pub async fn bind(bind: SocketAddr, advertised_ip: std::net::IpAddr) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        let local = SocketAddr::new(advertised_ip, socket.local_addr()?.port());
        let (tx, inbound) = mpsc::channel(64);
        let reader = tokio::spawn(read_loop(socket.clone(), tx));
        Ok(Self {
            socket,
            local,
            inbound,
            deferred: VecDeque::new(),
            last_malformed: None,
            reader,
        })
    }

    pub async fn send(
        &self,
        message: impl std::fmt::Display,
        to: SocketAddr,
    ) -> std::io::Result<()> {
        let text = message.to_string();
        tracing::trace!("SIP to {to}:\n{text}");
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

async fn read_loop(socket: Arc<UdpSocket>, tx: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let data = &buf[..len];
        if data.iter().all(u8::is_ascii_whitespace) {
            continue; // RFC 5626 keep-alive
        }
        tracing::trace!("SIP from {from}:\n{}", String::from_utf8_lossy(data));
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
