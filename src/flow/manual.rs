//! The support line (`agi://HOST/manual`): callers whose automated verification did not work
//! leave a message for manual verification, any time; within business hours they may ask
//! for a live agent instead, whom the dialplan reaches (`CALLVERIFY_SUPPORT_ROUTE=agent`).
//! Messages come over AudioSocket into the daemon's store, never onto the PBX's disk.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::listen::{listen, Listened};
use super::prompts::Prompt;
use super::{goodbye, play, FlowError};
use crate::domain::clock::now_ms;
use crate::domain::metrics::Metrics;
use crate::domain::phone::masked;
use crate::support::message::{self, Message};
use crate::support::{Caller, Kept, Room, Support};
use callverify_pbx::agi::{AgiError, Session};
use callverify_pbx::audiosocket::Hub;

/// The channel variable the dialplan reads after the AGI: `agent` sends the caller to staff.
pub const ROUTE_VARIABLE: &str = "CALLVERIFY_SUPPORT_ROUTE";
/// Menu key for a live agent.
const AGENT_KEY: &str = "1";
const MENU_WAIT: Duration = Duration::from_secs(5);
/// Tries at leaving a message when nothing was heard.
const MESSAGE_TRIES: u32 = 2;

pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    support: &Support,
    audio: &Hub,
    metrics: &Metrics,
) -> Result<(), FlowError> {
    let caller = identify(session, support).await?;
    session.answer().await?;
    // The dialplan comes back with "message" when no agent answered: no menu again.
    let agent_tried = session.env().arg(1) == Some("message");
    if !agent_tried {
        play(session, Prompt::SupportWelcome).await?;
    }
    if agent_tried {
        play(session, Prompt::SupportNoAgent).await?;
    } else if support.staff_answer_at(now_ms()) {
        let choice = session
            .get_data(Prompt::SupportMenu.file(), MENU_WAIT, 1)
            .await?;
        if choice.digits == AGENT_KEY {
            tracing::info!("support caller asked for a live agent");
            session.set_variable(ROUTE_VARIABLE, "agent").await?;
            return Ok(());
        }
    } else {
        play(session, Prompt::SupportClosed).await?;
    }
    session.set_variable(ROUTE_VARIABLE, "message").await?;
    let room = support.room_for(&caller).await?;
    if room != Room::Open {
        metrics.support_message_refused(room);
        tracing::warn!(room = room.as_str(), "support line takes no message now");
        return goodbye(session, Prompt::SupportFull).await;
    }
    // Far more callers recording at once than the line takes in an hour could not all be
    // kept.
    let Some(_recording) = support.recording_place() else {
        metrics.support_message_refused(Room::RecordingFull);
        tracing::warn!("support line takes no message now: as many callers are recording");
        return goodbye(session, Prompt::SupportFull).await;
    };
    for _ in 0..MESSAGE_TRIES {
        play(session, Prompt::SupportInstructions).await?;
        session.stream_file("beep", "").await?;
        let limits = support.settings().limits;
        let heard = listen(session, audio, |stream| message::record(stream, limits)).await?;
        match heard {
            Listened::Heard(message) if !message.is_empty() => {
                let language = session.env().language().to_owned();
                let thanks = match keep(support, &caller, message, &language, metrics).await? {
                    Kept::Request(_) => Prompt::SupportThanks,
                    Kept::NoRoom(_) => Prompt::SupportFull,
                };
                return goodbye(session, thanks).await;
            }
            Listened::Heard(_) => {
                tracing::info!("support caller said nothing");
                play(session, Prompt::SupportNoMessage).await?;
            }
            Listened::HungUp(message) => {
                match message.filter(|m| !m.is_empty()) {
                    Some(message) => {
                        let language = session.env().language().to_owned();
                        keep(support, &caller, message, &language, metrics).await?;
                    }
                    None => tracing::info!("support caller hung up before leaving a message"),
                }
                return Err(AgiError::Hangup.into());
            }
            Listened::Unavailable(_) => {
                tracing::error!("cannot take a support message: AudioSocket is not working");
                return goodbye(session, Prompt::TechnicalProblem).await;
            }
        }
    }
    play(session, Prompt::Goodbye).await?;
    session.hangup().await?;
    Ok(())
}

async fn identify<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    support: &Support,
) -> Result<Caller, FlowError> {
    let env = session.env();
    let caller_id = env.get("agi_callerid").unwrap_or_default().to_owned();
    let presentation = env
        .get("agi_callingpres")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let caller = support.identify(&caller_id, presentation).await?;
    if let Some(id) = &caller.verification_id {
        tracing::Span::current().record("verification", id.as_str());
    }
    tracing::info!(
        caller = %masked(caller.number.as_ref().map_or("", |n| n.as_str())),
        matched = caller.matched.as_str(),
        "support call"
    );
    Ok(caller)
}

async fn keep(
    support: &Support,
    caller: &Caller,
    message: Message,
    language: &str,
    metrics: &Metrics,
) -> Result<Kept, FlowError> {
    let (seconds, ended_by) = (message.duration().as_secs(), message.ended_by.as_str());
    let kept = support.keep(caller, message, language).await?;
    match &kept {
        Kept::Request(id) => tracing::info!(
            request = %id,
            seconds,
            ended_by,
            "support message kept"
        ),
        Kept::NoRoom(room) => {
            metrics.support_message_refused(*room);
            tracing::warn!(
                room = room.as_str(),
                seconds,
                "support message not kept: the line took as many as it may meanwhile"
            )
        }
    }
    Ok(kept)
}
