//! Reading the code the callee gives: on the keypad, or, when a recogniser is loaded, said
//! aloud over AudioSocket (keys pressed while the daemon listens still count as keyed).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::listen::{listen, Listened};
use super::prompts::Prompt;
use super::{Hearing, SpokenCodes};
use callverify_pbx::agi::{AgiError, Session};
use callverify_pbx::audiosocket::{AudioStream, Heard};
use callverify_speech as speech;

/// What one round of code entry produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Nothing was entered or said before the time ran out.
    Nothing,
    /// Digits keyed (may be shorter than the code, if the callee stopped early).
    Code(String),
    /// Digits the recogniser heard (empty: speech, but no digits in it).
    Spoken(String),
}

/// Keys that stop the spoken-code prompt and start keypad entry.
const KEYS: &str = "0123456789*#";
/// Asterisk core sound: one second of silence, for GET DATA after a key stopped the prompt.
const SILENCE: &str = "silence/1";

/// Play the prompt and read up to `length` keys; `#` ends early.
pub async fn keypad<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    prompt: Prompt,
    length: u32,
    per_digit_timeout: Duration,
) -> Result<Entry, AgiError> {
    let read = session
        .get_data(prompt.file(), per_digit_timeout, length)
        .await?;
    Ok(keyed(&read.digits))
}

fn keyed(keys: &str) -> Entry {
    let digits: String = keys.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        Entry::Nothing
    } else {
        Entry::Code(digits)
    }
}

/// One round of code entry: said or keyed when spoken codes are on and `spoken` allows it,
/// else keyed after `keypad_prompt`.
pub async fn code<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    hearing: &Hearing,
    spoken: bool,
    keypad_prompt: Prompt,
    length: u32,
    per_digit_timeout: Duration,
) -> Result<Entry, AgiError> {
    let Some(speech) = hearing.speech.as_deref().filter(|_| spoken) else {
        return keypad(session, keypad_prompt, length, per_digit_timeout).await;
    };
    // A caller who starts keying during the prompt is reading keys, not speaking.
    if let Some(first) = session
        .stream_file(Prompt::SayOrEnterCode.file(), KEYS)
        .await?
    {
        if first == '#' {
            return Ok(Entry::Nothing);
        }
        let rest = session
            .get_data(SILENCE, per_digit_timeout, length.saturating_sub(1))
            .await?;
        return Ok(keyed(&format!("{first}{}", rest.digits)));
    }
    session.stream_file("beep", "").await?;
    let code_length = length as usize;
    let heard = listen(session, &hearing.audio, |stream| {
        hear(stream, speech, code_length, per_digit_timeout)
    })
    .await?;
    match heard {
        Listened::Heard(entry) => Ok(entry),
        Listened::HungUp(_) => Err(AgiError::Hangup),
        Listened::Unavailable(_) => {
            keypad(session, Prompt::UseKeypad, length, per_digit_timeout).await
        }
    }
}

/// Listen to one turn: the recogniser's digits, or the keys pressed. A digit key ends the
/// spoken turn and starts keypad entry (keys until `#`, the code's length, or a key's
/// timeout); `#` or `*` ends the spoken turn, and what was said is recognised.
async fn hear(
    mut stream: AudioStream,
    speech: &SpokenCodes,
    code_length: usize,
    per_digit_timeout: Duration,
) -> Entry {
    let mut keys = String::new();
    let mut frames = 0usize;
    let turn = {
        let state = (&mut stream, &mut keys, &mut frames);
        let audio = futures::stream::unfold(state, |(stream, keys, frames)| async move {
            match stream.next().await? {
                Heard::Audio(samples) => {
                    *frames += 1;
                    Some((samples, (stream, keys, frames)))
                }
                Heard::Key(key) => {
                    keys.push(key);
                    None
                }
            }
        });
        // A channel that sends no frames while its caller is silent leaves gaps: silence
        // the endpointer counts by the wall clock, so listening ends on it.
        let sounds = speech::with_gaps(Box::pin(audio), speech::GAP_TICK);
        speech::listen_for_code(&speech.recogniser, &speech.endpoint, code_length, sounds).await
    };
    if keys.starts_with(|k: char| k.is_ascii_digit()) {
        // Only a key moves the deadline on: the caller's audio keeps coming while they wait.
        let mut deadline = tokio::time::Instant::now() + per_digit_timeout;
        while !keys.ends_with('#') && keys.len() < code_length {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Heard::Key(key))) => {
                    keys.push(key);
                    deadline = tokio::time::Instant::now() + per_digit_timeout;
                }
                Ok(Some(Heard::Audio(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        stream.hang_up().await;
        return keyed(&keys);
    }
    // Asterisk closes the stream when the caller hangs up: nobody is left to hear a result.
    let caller_gone = stream.ended_by_asterisk();
    // The caller hears the call go on (and Asterisk stops sending) while the last
    // recognition runs.
    stream.hang_up().await;
    if frames == 0 {
        tracing::warn!(
            "no audio frames from Asterisk while listening for a spoken code: a silent caller \
             on a channel that sends none, or a stalled stream"
        );
    }
    let heard = match turn {
        Ok(turn) if caller_gone || !turn.heard_speech() => return Entry::Nothing,
        Ok(turn) => turn.recognise(&speech.recogniser).await,
        Err(e) => Err(e),
    };
    match heard {
        Ok(heard) => Entry::Spoken(heard.digits),
        Err(e) => {
            tracing::error!(error = %e, "speech recognition failed");
            Entry::Spoken(String::new())
        }
    }
}
