//! Listening to the caller over AudioSocket while the AGI session waits in
//! `EXEC AudioSocket`: the one place that knows how the two connections relate.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

use callverify_pbx::agi::{AgiError, Session};
use callverify_pbx::audiosocket::{AudioStream, Hub};

/// What a listening phase gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Listened<T> {
    /// The stream came and `consume` ran over it (to its own end, or to Asterisk's).
    Heard(T),
    /// AudioSocket did not work and the channel is still up: fall back to the keypad.
    Unavailable(Why),
    /// The caller hung up, with what `consume` got until then (a message is kept).
    HungUp(Option<T>),
}

/// Why AudioSocket did not work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Asterisk has no `AudioSocket` application (app_audiosocket is not loaded): `EXEC`
    /// answers `result=-2`, as res_agi.c does for an unknown application.
    NoApplication,
    /// Nothing was reachable at the advertised address, or the stream failed at once.
    NotReached,
}

/// Run `AudioSocket` on the channel and hand the stream to `consume`, which reads what the
/// caller says and ends the stream ([`AudioStream::hang_up`]) when it has enough; the call
/// then carries on.
pub async fn listen<S, F, Fut, T>(
    session: &mut Session<S>,
    hub: &Hub,
    consume: F,
) -> Result<Listened<T>, AgiError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: FnOnce(AudioStream) -> Fut,
    Fut: Future<Output = T>,
{
    let mut expected = hub.expect();
    let options = expected.application_options();
    let (reply, heard) = {
        let exec = session.exec("AudioSocket", &options);
        tokio::pin!(exec);
        tokio::select! {
            // Asterisk gave up before connecting (refused connection, missing module).
            reply = &mut exec => (reply, None),
            Some(stream) = expected.connected() => {
                let (reply, heard) = tokio::join!(exec, consume(stream));
                (reply, Some(heard))
            }
        }
    };
    drop(expected);
    let reply = match reply {
        Ok(reply) => reply,
        Err(AgiError::Hangup) => return Ok(Listened::HungUp(heard)),
        Err(e) => return Err(e),
    };
    // result=-1: the caller hung up (HANGUP follows) or the stream failed on a live channel.
    if reply.is_failure() && !channel_up(session).await? {
        return Ok(Listened::HungUp(heard));
    }
    Ok(match heard {
        Some(heard) => Listened::Heard(heard),
        None if reply.result == "-2" => {
            tracing::warn!("Asterisk has no AudioSocket application: load app_audiosocket");
            Listened::Unavailable(Why::NoApplication)
        }
        None => {
            tracing::warn!(
                address = hub.advertise(),
                "AudioSocket failed: is speech.advertise reachable from Asterisk?"
            );
            Listened::Unavailable(Why::NotReached)
        }
    })
}

async fn channel_up<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
) -> Result<bool, AgiError> {
    if session.hung_up() {
        return Ok(false);
    }
    match session.channel_status().await {
        // 6: "Line is up".
        Ok(status) => Ok(status == 6),
        Err(AgiError::Hangup) => Ok(false),
        Err(e) => Err(e),
    }
}
