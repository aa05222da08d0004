//! The daemon's AudioSocket listener: Asterisk's `AudioSocket(<uuid>,<host:port>)` application
//! connects here and streams the caller's audio and keys. Spoken codes and the support line's
//! messages both arrive this way.
//!
//! A flow asks the [`Hub`] for an [`Expected`] stream (a fresh UUID), tells Asterisk to run
//! `EXEC AudioSocket <uuid>,<advertised address>`, and receives the [`AudioStream`] once
//! Asterisk has connected and named that UUID. Connections naming no waiting UUID are closed.

pub mod frame;
mod server;
mod stream;

pub use frame::{Frame, FrameCodec, FrameError, SAMPLES_PER_FRAME};
pub use server::{serve, ListenerConfig};
pub use stream::{AudioStream, Heard};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use uuid::Uuid;

/// Hands each incoming AudioSocket connection to the flow that asked for its UUID.
#[derive(Clone)]
pub struct Hub {
    waiting: Arc<Mutex<HashMap<Uuid, oneshot::Sender<AudioStream>>>>,
    advertise: Arc<str>,
}

impl Hub {
    /// `advertise` is the `host:port` Asterisk is told to connect to (it can differ from the
    /// listening address, behind NAT).
    pub fn new(advertise: &str) -> Self {
        Self {
            waiting: Arc::default(),
            advertise: advertise.into(),
        }
    }

    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// Wait for a stream under a fresh random UUID (not guessable: it is the only thing that
    /// ties a connection to a call).
    pub fn expect(&self) -> Expected {
        let uuid = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        self.waiting_streams().insert(uuid, tx);
        Expected {
            uuid,
            rx,
            hub: self.clone(),
        }
    }

    /// Whether a flow waits for `uuid`. A flow registers its UUID ([`Hub::expect`]) before it
    /// tells Asterisk, so a connection naming it cannot come before it is waited for.
    fn waits_for(&self, uuid: &Uuid) -> bool {
        self.waiting_streams().contains_key(uuid)
    }

    /// Give `stream` to whoever waits for `uuid`; false (and the stream closed) if nobody does.
    fn deliver(&self, uuid: Uuid, stream: AudioStream) -> bool {
        let waiting = self.waiting_streams().remove(&uuid);
        waiting.is_some_and(|tx| tx.send(stream).is_ok())
    }

    fn waiting_streams(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<AudioStream>>> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn waiting_count(&self) -> usize {
        self.waiting_streams().len()
    }
}

/// A stream the flow is waiting for; dropping it stops waiting.
pub struct Expected {
    uuid: Uuid,
    rx: oneshot::Receiver<AudioStream>,
    hub: Hub,
}

impl Expected {
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The `AudioSocket` application's options: `<uuid>,<host:port>`.
    pub fn application_options(&self) -> String {
        format!("{},{}", self.uuid, self.hub.advertise)
    }

    /// Resolves once Asterisk has connected with this UUID.
    pub async fn connected(&mut self) -> Option<AudioStream> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.hub.waiting_streams().remove(&self.uuid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_streams_are_forgotten_when_dropped() {
        let hub = Hub::new("192.0.2.10:4574");
        let a = hub.expect();
        let b = hub.expect();
        assert_ne!(a.uuid(), b.uuid());
        assert_eq!(
            a.application_options(),
            format!("{},192.0.2.10:4574", a.uuid())
        );
        assert_eq!(hub.waiting_count(), 2);
        assert!(hub.waits_for(&a.uuid()));
        let uuid = a.uuid();
        drop(a);
        assert!(!hub.waits_for(&uuid));
        drop(b);
        assert_eq!(hub.waiting_count(), 0);
    }
}
