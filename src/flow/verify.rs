//! The verification call, as users of the product know it: acknowledge with `#`, enter the
//! code shown on screen (or say it, when spoken codes are on), three attempts, then a 24-hour
//! lockout. In read-code mode the `#` leads to the code being read instead (`read_code`).
//!
//! A recognition slip must not cost an attempt as easily as a keyed mistake. The rule: a
//! spoken code that is right verifies at once. Anything else heard (no digits, the wrong
//! number of digits) costs nothing and tells nothing: "I did not catch that", and the caller
//! tries again. A wrong code of the right length is read back ("I heard 4 8 2 ...") and counts
//! as an attempt only if the caller confirms with 1 that it is what they said; 2 or silence
//! costs nothing. But a read-back tells the caller the code was wrong: it is a guess, and
//! uncounted. So read-backs are few: the domain keeps a budget of them per number and per
//! user over the lockout window, across all their calls and verifications
//! (`Verifications::read_backs_left`, `take_read_back`). The call offers spoken entry only
//! while the budget has some left, and takes one before reading a code back; when it gets
//! none (another call took the last), the code is checked as a spoken attempt instead. After
//! two spoken tries that cost nothing in one call, the call asks for the keypad too.

use tokio::io::{AsyncRead, AsyncWrite};

use super::entry::{self, Entry};
use super::prompts::Prompt;
use super::{goodbye, play, read_code, FlowError, FlowSettings, Hearing};
use crate::domain::status::EntryMethod;
use crate::domain::{Call, CallStart, CodeCheck, Verifications, VerifyError};
use crate::domain::{CallOutcome, Mode, Status};
use callverify_pbx::agi::Session;

/// Keys accepted while the "press #" prompt plays: any key stops it, only `#` acknowledges.
const ANY_KEY: &str = "0123456789*#";

/// Run the `verify` script for verification `id` (from `agi_arg_1`).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    service: &Verifications,
    settings: &FlowSettings,
    hearing: &Hearing,
    id: &str,
) -> Result<(), FlowError> {
    let (channel, uniqueid) = (
        session.env().channel().to_owned(),
        session.env().uniqueid().to_owned(),
    );
    let call = match service.begin_call(id, &channel, &uniqueid).await {
        Ok(CallStart::Ready(call)) => call,
        Ok(CallStart::NotCallable(status)) => {
            tracing::warn!(%status, "verification is not waiting for a call");
            let prompt = match status {
                Status::Expired => Prompt::Expired,
                _ => Prompt::NotAvailable,
            };
            return goodbye(session, prompt).await;
        }
        Ok(CallStart::LockedOut) => {
            tracing::warn!("number or user is locked out");
            return goodbye(session, Prompt::LockedOut).await;
        }
        Err(VerifyError::NotFound(_)) => {
            tracing::warn!("unknown verification id");
            return goodbye(session, Prompt::NotAvailable).await;
        }
        Err(e) => return Err(e.into()),
    };
    let result = converse(session, service, settings, hearing, &call).await;
    let outcome = match &result {
        Ok(outcome) => *outcome,
        Err(FlowError::Agi(e)) if e.is_hangup() => CallOutcome::HungUp,
        Err(_) => CallOutcome::Error,
    };
    tracing::info!(%outcome, "call ended");
    service.end_call(&call, outcome).await?;
    if let Err(e) = result {
        if !matches!(&e, FlowError::Agi(a) if a.is_hangup()) {
            return Err(e);
        }
    }
    Ok(())
}

async fn converse<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    service: &Verifications,
    settings: &FlowSettings,
    hearing: &Hearing,
    call: &Call,
) -> Result<CallOutcome, FlowError> {
    // The dialer's call is already up; ANSWER is harmless then and needed for inbound tests.
    session.answer().await?;
    let reads_code = call.verification.mode == Mode::ReadCode;
    let ask = if reads_code {
        Prompt::PressPoundForCode
    } else {
        Prompt::PressPound
    };
    if !acknowledged(session, settings, ask).await? {
        goodbye(session, Prompt::NoAcknowledgement).await?;
        return Ok(CallOutcome::NoAcknowledgement);
    }
    if reads_code {
        return read_code::run(session, service, call).await;
    }
    let length = u32::try_from(call.verification.code_length).unwrap_or(6);
    let mut silences = 0;
    let mut free_spoken_tries = 0;
    let understood = hearing.understands(&call.verification.locale);
    // Whether the number and user may still have wrong spoken codes read back: asked before
    // each spoken round, until the answer is no (the budget does not grow within a call).
    let mut read_backs_left = understood;
    loop {
        if read_backs_left && free_spoken_tries < FREE_SPOKEN_TRIES {
            read_backs_left = service.read_backs_left(call).await?;
        }
        let spoken = read_backs_left && free_spoken_tries < FREE_SPOKEN_TRIES;
        let keypad_prompt = if understood {
            Prompt::UseKeypad
        } else {
            Prompt::EnterCode
        };
        let entered = entry::code(
            session,
            hearing,
            spoken,
            keypad_prompt,
            length,
            settings.digit_timeout,
        )
        .await?;
        let (digits, method) = match entered {
            Entry::Code(digits) => (digits, EntryMethod::Keypad),
            Entry::Spoken(digits) => {
                if !spoken_counts(session, service, call, &digits, length).await? {
                    free_spoken_tries += 1;
                    continue;
                }
                (digits, EntryMethod::Speech)
            }
            Entry::Nothing => {
                silences += 1;
                if silences >= settings.entry_silences {
                    goodbye(session, Prompt::NoInput).await?;
                    return Ok(CallOutcome::NoInput);
                }
                continue;
            }
        };
        match service.check_code(call, &digits, method).await? {
            CodeCheck::Verified => {
                goodbye(session, Prompt::Verified).await?;
                return Ok(CallOutcome::Verified);
            }
            CodeCheck::Wrong { .. } => play(session, Prompt::CodeIncorrect).await?,
            CodeCheck::LockedOut => {
                play(session, Prompt::CodeIncorrect).await?;
                goodbye(session, Prompt::LockedOut).await?;
                return Ok(CallOutcome::LockedOut);
            }
            CodeCheck::Expired => {
                goodbye(session, Prompt::Expired).await?;
                return Ok(CallOutcome::Expired);
            }
            CodeCheck::TakenOver => {
                goodbye(session, Prompt::TechnicalProblem).await?;
                return Ok(CallOutcome::Interrupted);
            }
        }
    }
}

/// Spoken tries that cost no attempt in one call before it asks for the keypad.
const FREE_SPOKEN_TRIES: u32 = 2;
/// How long the caller has to confirm a read-back code.
const CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a spoken code is to be checked as an attempt: it is right, or no read-back of it
/// was left, or the caller confirms that the wrong code read back is what they said (see the
/// module's rule).
async fn spoken_counts<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    service: &Verifications,
    call: &Call,
    digits: &str,
    length: u32,
) -> Result<bool, FlowError> {
    if digits.len() != length as usize {
        play(session, Prompt::NotUnderstood).await?;
        return Ok(false);
    }
    if service.code_matches(call, digits) || !service.take_read_back(call).await? {
        return Ok(true);
    }
    play(session, Prompt::YouSaid).await?;
    session.say_digits(digits, "").await?;
    let choice = session
        .get_data(Prompt::ConfirmSpoken.file(), CONFIRM_WAIT, 1)
        .await?;
    Ok(choice.digits == "1")
}

/// Greeting, then `ask` ("press # if you were expecting this call"), asked again a few times
/// on silence or a wrong key.
async fn acknowledged<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    settings: &FlowSettings,
    ask: Prompt,
) -> Result<bool, FlowError> {
    if session.stream_file(Prompt::Greeting.file(), "#").await? == Some('#') {
        return Ok(true);
    }
    for _ in 0..settings.ack_prompts {
        let key = match session.stream_file(ask.file(), ANY_KEY).await? {
            Some(key) => Some(key),
            None => session.wait_for_digit(settings.ack_wait).await?,
        };
        match key {
            Some('#') => return Ok(true),
            Some(_) => play(session, Prompt::NotPound).await?,
            None => {}
        }
    }
    Ok(false)
}
