//! The read-code call (mode `read_code`), once the callee has pressed `#`: the code digit by
//! digit with a pause after each, twice, then "press 1 to hear it again" (a few times at
//! most), then where to enter it, and the call ends. The digits are Asterisk's own sounds
//! (`SAY DIGITS`, in the channel's language). The code leaves its seal only here, to be said,
//! and is never logged (`SAY DIGITS` is redacted in the session's log).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::prompts::Prompt;
use super::{goodbye, play, FlowError};
use crate::domain::{Call, CallOutcome, Verifications};
use callverify_pbx::agi::Session;

/// Times the callee may ask to hear the code again after the first two readings.
pub const REPEATS: u32 = 3;
/// How long "press 1 to hear it again" waits for the key.
const REPEAT_WAIT: Duration = Duration::from_secs(5);
/// The pause after each digit (Asterisk's `Wait` takes fractions of a second), so that the
/// code is said slowly enough to be written down.
const DIGIT_PAUSE: &str = "0.4";

/// Say the code of `call`'s verification and end the call.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    service: &Verifications,
    call: &Call,
) -> Result<CallOutcome, FlowError> {
    let Some(code) = service.code_to_say(call).await? else {
        // Canceled or expired while the callee listened to the greeting.
        tracing::warn!("verification left the call before its code was said");
        goodbye(session, Prompt::NotAvailable).await?;
        return Ok(CallOutcome::Expired);
    };
    tracing::info!("saying the code");
    say(session, Prompt::YourCodeIs, &code).await?;
    say(session, Prompt::CodeAgain, &code).await?;
    for _ in 0..REPEATS {
        let choice = session
            .get_data(Prompt::RepeatCode.file(), REPEAT_WAIT, 1)
            .await?;
        if choice.digits != "1" {
            break;
        }
        say(session, Prompt::CodeAgain, &code).await?;
    }
    goodbye(session, Prompt::EnterCodeOnPage).await?;
    Ok(CallOutcome::CodeRead)
}

/// `intro`, then the code one digit at a time.
async fn say<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    intro: Prompt,
    code: &str,
) -> Result<(), FlowError> {
    play(session, intro).await?;
    for digit in code.chars() {
        session.say_digits(&digit.to_string(), "").await?;
        session.exec("Wait", DIGIT_PAUSE).await?;
    }
    Ok(())
}
