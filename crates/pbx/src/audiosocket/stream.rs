//! One call's AudioSocket connection, as the flow sees it: what the caller says and keys,
//! while a writer task keeps Asterisk's 2-second inactivity timer from firing.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::frame::{samples, Frame, FrameCodec, SAMPLES_PER_FRAME};

/// app_audiosocket ends the call's stream after 2 s with no message either way, and the
/// caller may be silent (no frames at all on some channels): we send 20 ms of silence every
/// 20 ms, as Asterisk itself paces audio.
const KEEPALIVE: Duration = Duration::from_millis(20);
/// A write that takes longer means Asterisk stopped reading, or vanished without closing:
/// the writer gives up on the stream rather than hold the call (and `hang_up`) until TCP
/// does, many minutes later.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What came from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// 8 kHz mono samples.
    Audio(Vec<i16>),
    /// A key the caller pressed.
    Key(char),
}

pub struct AudioStream {
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
    hang_up: Option<oneshot::Sender<()>>,
    writer: Option<JoinHandle<()>>,
    ended: bool,
    _permit: OwnedSemaphorePermit,
}

impl AudioStream {
    /// Take over a connection whose UUID message has been read (`frames` holds what followed).
    pub(super) fn start(
        frames: FramedRead<OwnedReadHalf, FrameCodec>,
        write: OwnedWriteHalf,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let (hang_up, hang_up_rx) = oneshot::channel();
        let writer = tokio::spawn(keep_alive(FramedWrite::new(write, FrameCodec), hang_up_rx));
        Self {
            frames,
            hang_up: Some(hang_up),
            writer: Some(writer),
            ended: false,
            _permit: permit,
        }
    }

    /// Whether Asterisk ended the stream (it closes the connection when the caller hangs
    /// up), rather than this side.
    pub fn ended_by_asterisk(&self) -> bool {
        self.ended
    }

    /// The next audio or key; `None` once Asterisk has ended the stream (hang-up message,
    /// closed connection, or a malformed message, which is logged).
    pub async fn next(&mut self) -> Option<Heard> {
        while !self.ended {
            match self.frames.next().await {
                Some(Ok(Frame::Audio(payload))) => return Some(Heard::Audio(samples(&payload))),
                Some(Ok(Frame::Dtmf(key))) => return Some(Heard::Key(key)),
                Some(Ok(Frame::Hangup)) | None => self.ended = true,
                Some(Ok(Frame::Error(payload))) => {
                    tracing::warn!(code = ?payload.first(), "Asterisk reported an AudioSocket error");
                    self.ended = true;
                }
                Some(Ok(Frame::Uuid(_))) => {
                    tracing::warn!("AudioSocket sent a second UUID message: ignored");
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "AudioSocket stream from Asterisk is malformed: ending it");
                    self.ended = true;
                }
            }
        }
        None
    }

    /// End the stream: Asterisk's `AudioSocket` application returns and the call goes on.
    pub async fn hang_up(mut self) {
        if let Some(tx) = self.hang_up.take() {
            let _ = tx.send(());
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
    }
}

impl Drop for AudioStream {
    fn drop(&mut self) {
        // Dropped without hang_up (e.g. the flow was cancelled): close without the message.
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
    }
}

async fn keep_alive(
    mut sink: FramedWrite<OwnedWriteHalf, FrameCodec>,
    mut hang_up: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence = Frame::silence(SAMPLES_PER_FRAME);
    loop {
        tokio::select! {
            asked = &mut hang_up => {
                if asked.is_ok() {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Frame::Hangup)).await;
                }
                break;
            }
            _ = tick.tick() => {
                let sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(silence.clone())).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.get_mut().shutdown()).await;
}
