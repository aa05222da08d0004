//! Accepts AudioSocket connections: allowlist (the protocol has no authentication), a cap on
//! connections, and the UUID message within a deadline, before the stream goes to its call.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::codec::FramedRead;

use super::frame::{Frame, FrameCodec};
use super::{AudioStream, Hub};
use crate::admission::Admission;

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Asterisk hosts allowed to connect.
    pub allow: Vec<IpNet>,
    pub max_connections: usize,
    /// Asterisk sends the UUID message at once; a connection silent this long is dropped.
    pub uuid_timeout: Duration,
}

/// Accept AudioSocket connections on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: ListenerConfig,
    hub: Hub,
    shutdown: impl Future<Output = ()>,
) {
    let gate = Admission::new("AudioSocket", config.allow, config.max_connections);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Some((stream, peer, permit)) = gate.admit(accepted).await else {
            continue;
        };
        let hub = hub.clone();
        tokio::spawn(hand_over(stream, peer, permit, hub, config.uuid_timeout));
    }
}

async fn hand_over(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    hub: Hub,
    uuid_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec);
    let uuid = match tokio::time::timeout(uuid_timeout, frames.next()).await {
        Ok(Some(Ok(Frame::Uuid(uuid)))) => uuid,
        Ok(Some(Ok(other))) => {
            tracing::warn!(%peer, kind = ?std::mem::discriminant(&other),
                "AudioSocket connection closed: the first message was not the call's UUID");
            return;
        }
        Ok(Some(Err(e))) => {
            tracing::warn!(%peer, error = %e, "AudioSocket connection closed: malformed first message");
            return;
        }
        Ok(None) => {
            tracing::debug!(%peer, "AudioSocket peer closed before naming a UUID");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?uuid_timeout, "AudioSocket connection closed: no UUID message in time");
            return;
        }
    };
    let stream = AudioStream::start(frames, write, permit);
    if !hub.deliver(uuid, stream) {
        // A late connection (the call moved on) or a stranger guessing: close it.
        tracing::warn!(%peer, "AudioSocket connection closed: no call waits for its UUID");
    }
}
