//! Reading the code the callee gives. Keypad entry lives here; spoken entry (AudioSocket and a
//! recogniser) will be a second way of filling the same [`Entry`].

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::prompts::Prompt;
use crate::agi::{AgiError, Session};

/// What one round of code entry produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Nothing was entered before the time ran out.
    Nothing,
    /// Digits entered (may be shorter than the code, if the callee stopped early).
    Code(String),
}

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
    let digits: String = read.digits.chars().filter(char::is_ascii_digit).collect();
    Ok(if digits.is_empty() {
        Entry::Nothing
    } else {
        Entry::Code(digits)
    })
}
