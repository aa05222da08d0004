//! A verification and the rules that need no store: its shape, its call attempts and status
//! events, its policy, what the web app sees of it, and the checks on what callers send.

use std::time::Duration;

use serde::Serialize;

use super::clock::{millis, rfc3339};
use super::phone::PhoneError;
use super::status::{CallOutcome, Mode, Status};
use crate::store::error::StoreError;

/// A verification: the number, the user, the keyed hash of its code, where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub id: String,
    pub phone: String,
    pub user_ref: String,
    pub code_hash: String,
    pub code_length: i64,
    pub status: Status,
    pub attempts_used: i64,
    pub max_attempts: i64,
    pub locale: String,
    pub is_test: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
    pub verified_at: Option<i64>,
    /// The API key that created it (none when made with the CLI).
    pub api_key_id: Option<String>,
    /// Where its status changes are posted, if not the configured URL.
    pub callback_url: Option<String>,
    pub mode: Mode,
    /// Read-code mode: the code, sealed (`sealed`), for the call to say; wiped when the
    /// verification ends.
    pub sealed_code: Option<String>,
    /// Read-code mode: when a call first began to say the code (before that, the web app's
    /// checks are refused).
    pub code_delivered_at: Option<i64>,
}

impl Verification {
    /// As shown to the web app, without its code; `strikes` are the wrong codes its number
    /// or user have against them (in any of their verifications), which an open
    /// verification's remaining tries count too.
    pub fn view(&self, strikes: i64) -> View {
        View {
            id: self.id.clone(),
            code: None,
            status: self.status,
            mode: self.mode,
            phone: self.phone.clone(),
            user_ref: self.user_ref.clone(),
            locale: self.locale.clone(),
            // Failed: the tries of its number or user are used up, maybe in another
            // verification of theirs.
            attempts_remaining: match self.status {
                Status::Failed => 0,
                s if s.is_final() => (self.max_attempts - self.attempts_used).max(0),
                _ => (self.max_attempts - self.attempts_used.max(strikes)).max(0),
            },
            created_at: rfc3339(self.created_at),
            expires_at: rfc3339(self.expires_at),
            verified_at: self.verified_at.map(rfc3339),
            test: self.is_test,
        }
    }
}

/// Tunables of the verification rules.
#[derive(Debug, Clone)]
pub struct Policy {
    pub code_length: u32,
    pub code_ttl: Duration,
    pub max_attempts: u32,
    pub lockout: Duration,
    /// Verifications one number, one user, one API key may start in an hour.
    pub per_number_per_hour: u32,
    pub per_user_per_hour: u32,
    pub per_key_per_hour: u32,
    /// Calls the dialer makes at most for one verification, and the wait between them.
    pub max_dials: u32,
    pub retry_delay: Duration,
    /// How long a dialer call may ring: a claim older than twice this (and a margin) that
    /// no session took is released.
    pub ring_timeout: Duration,
    /// The longest an answered call can last (`FlowSettings::longest_call`): a verification
    /// still `calling` that long plus a ring past its expiry is expired.
    pub longest_call: Duration,
    /// A daemon not heard from for this long is declared dead, and its calls taken over.
    pub dead_after: Duration,
    /// Accept `callback_url`s on loopback or private networks (for tests and labs only:
    /// otherwise an API caller could make the daemon post into the internal network).
    pub allow_private_callbacks: bool,
    /// How long after its creation an ended verification is deleted, with its calls, code
    /// checks, webhook events and support requests (none: kept for ever).
    pub retention: Option<Duration>,
    /// Whether webhooks can be signed (`webhooks.secret` is set): without, a `callback_url`
    /// is refused, as its webhooks could never be sent.
    pub signs_webhooks: bool,
}

impl Policy {
    /// When a verification whose call ended with `outcome` is due its next call, if ever.
    pub fn next_call(&self, outcome: CallOutcome, now: i64) -> Option<i64> {
        outcome
            .retried()
            .then(|| now.saturating_add(millis(self.retry_delay)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("invalid phone number: {0}")]
    InvalidPhone(#[from] PhoneError),
    #[error("invalid user reference: {0}")]
    InvalidUserRef(&'static str),
    #[error("invalid locale {0:?}: use a language tag such as en or en-US")]
    InvalidLocale(String),
    #[error("no prompts in the language of locale {locale:?}: the call can speak {}", LANGUAGES.join(", "))]
    UnsupportedLocale { locale: String },
    #[error("invalid code length {0}: it must be between 4 and 10")]
    InvalidCodeLength(u32),
    #[error("this number or user is locked out until {}", rfc3339(*retry_at))]
    LockedOut { retry_at: i64 },
    #[error("no verification with id {0:?}")]
    NotFound(String),
    #[error("too many verifications for this {subject}: try again after {}", rfc3339(*retry_at))]
    RateLimited {
        subject: &'static str,
        retry_at: i64,
    },
    #[error(
        "invalid callback_url: it must be an http:// or https:// URL of at most 2048 characters"
    )]
    InvalidCallbackUrl,
    #[error("callback_url points into a private network or this host (webhooks.allow_private_callbacks)")]
    PrivateCallbackUrl,
    #[error(
        "callback_url needs webhooks.secret set on the daemon (CALLVERIFY_WEBHOOKS_SECRET): \
         every webhook is signed with it"
    )]
    UnsignedCallbacks,
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyConflict,
    #[error("the verification has ended ({0}) and cannot be canceled")]
    NotCancelable(Status),
    #[error("this verification's code is entered on the phone (mode enter_code): there is nothing to check here")]
    WrongMode,
    #[error("invalid code: it must be the {0} digits the call read")]
    InvalidCode(i64),
    #[error(
        "no call has read this verification's code yet: check it once the callee has heard it"
    )]
    CodeNotDelivered,
    #[error("the verification has ended ({0}): start a new one")]
    NotCheckable(Status),
    #[error("another daemon registered as {0:?} at the same moment")]
    NameRace(String),
    #[error(transparent)]
    Unsealable(#[from] super::sealed::Unsealable),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl VerifyError {
    /// The stable error code the web app and scripts match on.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::InvalidPhone(_) => "invalid_phone",
            VerifyError::InvalidUserRef(_) => "invalid_user_ref",
            VerifyError::InvalidLocale(_) => "invalid_locale",
            VerifyError::UnsupportedLocale { .. } => "unsupported_locale",
            VerifyError::InvalidCodeLength(_) => "invalid_code_length",
            VerifyError::LockedOut { .. } => "locked_out",
            VerifyError::NotFound(_) => "not_found",
            VerifyError::RateLimited { .. } => "rate_limited",
            VerifyError::InvalidCallbackUrl
            | VerifyError::PrivateCallbackUrl
            | VerifyError::UnsignedCallbacks => "invalid_callback_url",
            VerifyError::IdempotencyConflict => "idempotency_conflict",
            VerifyError::NotCancelable(_) => "not_cancelable",
            VerifyError::WrongMode => "wrong_mode",
            VerifyError::InvalidCode(_) => "invalid_code",
            VerifyError::CodeNotDelivered => "code_not_delivered",
            VerifyError::NotCheckable(_) => "not_checkable",
            VerifyError::NameRace(_) | VerifyError::Unsealable(_) | VerifyError::Store(_) => {
                "internal"
            }
        }
    }
}

/// What the web app asks for.
#[derive(Debug, Clone, Default)]
pub struct NewVerification {
    pub phone: String,
    pub user_ref: String,
    pub locale: Option<String>,
    pub code_length: Option<u32>,
    pub callback_url: Option<String>,
    /// `enter_code` when not given.
    pub mode: Option<Mode>,
    /// The API key asking (rate-limited per key); none from the CLI.
    pub api_key_id: Option<String>,
    /// `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
}

/// What [`Verifications::start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub view: View,
    /// The idempotency key was used before: this is the verification it made (no new call,
    /// and the code is not shown again).
    pub replayed: bool,
}

/// A verification as shown to the web app (never with its code, except at the creation of an
/// `enter_code` one).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct View {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub status: Status,
    pub mode: Mode,
    pub phone: String,
    pub user_ref: String,
    pub locale: String,
    pub attempts_remaining: i64,
    pub created_at: String,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// A verification the dialer is to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialJob {
    pub verification_id: String,
    pub phone: String,
    pub locale: String,
    /// The Originate's ChannelId and ActionID; Asterisk makes it the channel's Uniqueid.
    pub channel_id: String,
    pub dial_attempts: i64,
}

/// One call attempt of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallAttempt {
    pub id: i64,
    pub verification_id: String,
    pub channel: String,
    pub uniqueid: String,
    /// Which daemon handled it (host/FastAGI address).
    pub daemon: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<CallOutcome>,
}

/// A status change waiting to be posted to the web app (the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    pub id: i64,
    pub verification_id: String,
    pub status: String,
    pub created_at: i64,
    pub attempts: i64,
    pub callback_url: Option<String>,
}

/// A call in progress on a verification.
#[derive(Debug, Clone)]
pub struct Call {
    pub attempt_id: i64,
    pub verification: Verification,
}

/// Whether a call may go ahead.
#[derive(Debug)]
pub enum CallStart {
    Ready(Box<Call>),
    /// The verification is not waiting for a call: already in one, or ended.
    NotCallable(Status),
    /// Its number or user is locked out (after another verification used up its attempts).
    LockedOut,
}

/// The verdict on one entered code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    Verified,
    Wrong {
        remaining: i64,
    },
    LockedOut,
    Expired,
    /// The call's attempt was closed under it: this daemon was declared dead and another
    /// took its calls over. The call must stop.
    TakenOver,
}

/// The trunk the dialer calls through and its caps, which every daemon on the store shares.
#[derive(Debug, Clone)]
pub struct TrunkCaps {
    /// What names the trunk (the dialer's channel template).
    pub name: String,
    pub max_calls: u32,
    pub per_second: u32,
    /// A call whose end was never heard stops counting after this.
    pub longest_call: Duration,
}

/// This machine, as a daemon registering sees it: its boot and process, and whether a
/// process id is running here.
pub struct Machine {
    pub boot_id: String,
    pub pid: i64,
    pub is_running: fn(i64) -> bool,
}

/// What [`Verifications::register`](super::Verifications::register) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The name was free.
    Fresh,
    /// The name was an earlier run's (on this machine, or declared dead): its open calls
    /// are this run's to recover.
    Replaced { last_seen: i64 },
    /// Another live daemon has the name: this one must not run under it.
    InUse {
        boot_id: String,
        pid: i64,
        last_seen: i64,
    },
}

pub(super) fn validate_user_ref(user_ref: &str) -> Result<&str, VerifyError> {
    if user_ref.is_empty() {
        return Err(VerifyError::InvalidUserRef("it is empty"));
    }
    if user_ref.chars().count() > 128 {
        return Err(VerifyError::InvalidUserRef(
            "it is longer than 128 characters",
        ));
    }
    if user_ref.chars().any(char::is_control) {
        return Err(VerifyError::InvalidUserRef(
            "it contains control characters",
        ));
    }
    // Strikes, lockouts and limits count per user_ref, compared byte for byte: spellings of
    // one name that look alike must not count as other users.
    if user_ref.trim() != user_ref {
        return Err(VerifyError::InvalidUserRef(
            "it starts or ends with white space",
        ));
    }
    if !unicode_normalization::is_nfc(user_ref) {
        return Err(VerifyError::InvalidUserRef(
            "it is not in Unicode normal form C (compose it, e.g. NFC in your language's \
             unicodedata)",
        ));
    }
    Ok(user_ref)
}

/// The languages calls can speak: the prompts' (`asterisk/sounds/`) and Asterisk's own
/// sounds exist in each.
pub const LANGUAGES: &[&str] = &["en", "es"];

/// A verification's language: a tag's language (`en-US`, `en_us` and `EN` are `en`), which
/// must be one the calls speak; `en` when none is given.
pub(super) fn validate_locale(locale: Option<&str>) -> Result<String, VerifyError> {
    let locale = locale.unwrap_or("en");
    let well_formed = (2..=16).contains(&locale.len())
        && locale
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return Err(VerifyError::InvalidLocale(
            locale.chars().take(32).collect(),
        ));
    }
    let language = locale
        .split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match LANGUAGES.iter().find(|l| **l == language) {
        Some(l) => Ok((*l).to_owned()),
        None => Err(VerifyError::UnsupportedLocale {
            locale: locale.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lookalike spellings of one name would each get three attempts of their own.
    #[test]
    fn a_user_ref_has_one_spelling() {
        assert_eq!(validate_user_ref("alice").ok(), Some("alice"));
        assert_eq!(validate_user_ref("Zoë 42").ok(), Some("Zoë 42"));
        for refused in [
            "alice ",
            " alice",
            "\u{a0}alice",
            "Zoe\u{308}",
            "x".repeat(129).as_str(),
            "",
        ] {
            assert!(
                matches!(
                    validate_user_ref(refused),
                    Err(VerifyError::InvalidUserRef(_))
                ),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn locales_are_the_languages_calls_speak() {
        for (given, language) in [
            (None, "en"),
            (Some("en"), "en"),
            (Some("en-US"), "en"),
            (Some("en_us"), "en"),
            (Some("ES"), "es"),
            (Some("es-419"), "es"),
        ] {
            assert_eq!(validate_locale(given).unwrap(), language, "{given:?}");
        }
        for unsupported in ["fr", "fr-CA", "zz"] {
            let e = validate_locale(Some(unsupported)).unwrap_err();
            assert_eq!(e.code(), "unsupported_locale", "{unsupported}");
            assert!(e.to_string().contains("en, es"), "{e}");
        }
        for invalid in ["", "e", "../../etc", "en US", &"x".repeat(17)] {
            assert_eq!(
                validate_locale(Some(invalid)).unwrap_err().code(),
                "invalid_locale",
                "{invalid:?}"
            );
        }
    }

    /// Config bounds the delay; beyond it, the next call is never rather than long ago.
    #[test]
    fn a_next_call_past_the_end_of_time_saturates() {
        let mut policy = crate::config::Config::default().policy();
        policy.retry_delay = Duration::MAX;
        assert_eq!(policy.next_call(CallOutcome::Busy, 1), Some(i64::MAX));
    }

    #[test]
    fn user_refs() {
        assert!(validate_user_ref("alice").is_ok());
        assert!(validate_user_ref("").is_err());
        assert!(validate_user_ref("a\nb").is_err());
        assert!(validate_user_ref(&"x".repeat(129)).is_err());
    }
}
