//! Accepts AudioSocket connections: allowlist (the protocol has no authentication), the UUID
//! message within a deadline in the greeting stage, then, if a call waits for that UUID, a
//! place under the connection cap, before the stream goes to its call (see
//! [`crate::admission`]). A connection naming a UUID no call waits for is closed at once: it
//! never waits for a place, so strangers cannot pile up over the cap.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

use super::frame::{Frame, FrameCodec};
use super::{AudioStream, Hub};
use crate::admission::{Admission, Greeting, LogBudget};

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
    let shared = Arc::new(Shared {
        admission: Admission::new("AudioSocket", config.allow, config.max_connections),
        hub,
        uuid_timeout: config.uuid_timeout,
        strangers: LogBudget::default(),
    });
    tokio::pin!(shutdown);
    loop {
        let greeting = tokio::select! {
            () = &mut shutdown => break,
            greeting = shared.admission.accept(&listener) => greeting,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            hand_over(greeting, &shared).await;
        });
    }
}

/// What every connection's task needs.
struct Shared {
    admission: Admission,
    hub: Hub,
    uuid_timeout: Duration,
    /// Connections naming a UUID no call waits for (logged sparingly: anyone allowed can
    /// make them).
    strangers: LogBudget,
}

async fn hand_over(greeting: Greeting, shared: &Shared) {
    let Shared {
        admission,
        hub,
        uuid_timeout,
        strangers,
    } = shared;
    let Greeting {
        stream,
        peer,
        mut place,
    } = greeting;
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec);
    // The UUID first: one waiting in the socket is not silence (see the FastAGI server).
    let first = tokio::select! {
        biased;
        first = tokio::time::timeout(*uuid_timeout, frames.next()) => first,
        () = place.evicted() => {
            admission.silent(peer, "silent while newer connections needed its place");
            return;
        }
    };
    let uuid = match first {
        Ok(Some(Ok(Frame::Uuid(uuid)))) => uuid,
        // Any allowed peer can send these, as often as it likes: counted, as refusals are.
        Ok(Some(Ok(other))) => {
            if let Some(suppressed) = admission.log_budget().allow() {
                tracing::warn!(%peer, kind = ?std::mem::discriminant(&other), suppressed,
                    "AudioSocket connection closed: the first message was not the call's UUID");
            }
            return;
        }
        Ok(Some(Err(e))) => {
            if let Some(suppressed) = admission.log_budget().allow() {
                tracing::warn!(%peer, error = %e, suppressed,
                    "AudioSocket connection closed: malformed first message");
            }
            return;
        }
        Ok(None) => {
            tracing::debug!(%peer, "AudioSocket peer closed before naming a UUID");
            return;
        }
        Err(_) => {
            admission.silent(peer, "no UUID message in time");
            return;
        }
    };
    // Before a place is waited for: a stranger guessing, or a late connection (the call moved
    // on), is closed now, not after waiting out the cap. A call's UUID is waited for before
    // Asterisk is told it, so a connection naming it never comes too early for this check.
    if !hub.waits_for(&uuid) {
        if let Some(suppressed) = strangers.allow() {
            tracing::info!(%peer, suppressed,
                "AudioSocket connection closed: no call waits for its UUID");
        }
        return;
    }
    drop(place);
    let Some(permit) = admission.establish(peer).await else {
        return;
    };
    let stream = AudioStream::start(frames, write, permit);
    if !hub.deliver(uuid, stream) {
        // The call stopped waiting while this connection waited for a place: close it.
        tracing::warn!(%peer, "AudioSocket connection closed: its call stopped waiting for it");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;

    /// An allowed local process sending malformed first messages in a loop: its warnings
    /// spend the listener's log budget, as refusals do, instead of one line each.
    #[tokio::test]
    async fn malformed_first_messages_are_logged_within_the_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            admission: Admission::new("AudioSocket", vec!["127.0.0.1/32".parse().unwrap()], 4),
            hub: Hub::new("127.0.0.1:9092"),
            uuid_timeout: Duration::from_secs(2),
            strangers: LogBudget::default(),
        };
        for first in [[0x42, 0, 0], [0x10, 0, 0]].into_iter().cycle().take(12) {
            // An unknown kind (malformed), and audio before the UUID (not the UUID).
            let mut peer = TcpStream::connect(addr).await.unwrap();
            peer.write_all(&first).await.unwrap();
            let greeting = shared.admission.accept(&listener).await;
            hand_over(greeting, &shared).await;
        }
        assert_eq!(
            shared.admission.log_budget().allow(),
            None,
            "budget not spent"
        );
    }
}
