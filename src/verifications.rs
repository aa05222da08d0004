//! The rules of a verification: creation (number policy, lockouts, the code), status, and
//! what a call may do to it (start, check an entered code, end). Flows and the CLI call these;
//! only this module decides state changes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use rand::Rng;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::codes::{self, CodeHasher};
use crate::metrics::Metrics;
use crate::phone::{PhoneError, PhoneNumber, PhonePolicy};
use crate::store::{
    CallOutcome, Created, Earlier, IdempotencyKey, RateLimit, RateSubject, Recovered, Status,
    Store, StoreError, VerificationRow,
};

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
    /// Accept `callback_url`s on loopback or private networks (for tests and labs only:
    /// otherwise an API caller could make the daemon post into the internal network).
    pub allow_private_callbacks: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("invalid phone number: {0}")]
    InvalidPhone(#[from] PhoneError),
    #[error("invalid user reference: {0}")]
    InvalidUserRef(&'static str),
    #[error("invalid locale {0:?}: use a language tag such as en or en_US")]
    InvalidLocale(String),
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
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyConflict,
    #[error("the verification has ended ({0}) and cannot be canceled")]
    NotCancelable(Status),
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
            VerifyError::InvalidCodeLength(_) => "invalid_code_length",
            VerifyError::LockedOut { .. } => "locked_out",
            VerifyError::NotFound(_) => "not_found",
            VerifyError::RateLimited { .. } => "rate_limited",
            VerifyError::InvalidCallbackUrl | VerifyError::PrivateCallbackUrl => {
                "invalid_callback_url"
            }
            VerifyError::IdempotencyConflict => "idempotency_conflict",
            VerifyError::NotCancelable(_) => "not_cancelable",
            VerifyError::Store(_) => "internal",
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

/// A verification as shown to the web app (never with its code, except at creation).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct View {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub status: Status,
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

/// A call in progress on a verification.
#[derive(Debug, Clone)]
pub struct Call {
    pub attempt_id: i64,
    pub verification: VerificationRow,
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
    Wrong { remaining: i64 },
    LockedOut,
    Expired,
}

/// How long a call attempt can possibly last: an attempt open longer was left by a daemon
/// that is gone, and recovery closes it whoever owned it.
const STALE_ATTEMPT: Duration = Duration::from_secs(3600);

pub struct Verifications {
    store: Store,
    hasher: CodeHasher,
    phones: PhonePolicy,
    policy: Policy,
    /// Which daemon this is (host and FastAGI address), recorded on each call attempt.
    daemon: String,
    metrics: Arc<Metrics>,
}

impl Verifications {
    pub fn new(
        store: Store,
        hasher: CodeHasher,
        phones: PhonePolicy,
        policy: Policy,
        daemon: String,
    ) -> Self {
        Self {
            store,
            hasher,
            phones,
            policy,
            daemon,
            metrics: Arc::default(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// At start: close the call attempts an earlier run of this daemon left open.
    pub async fn recover_interrupted(&self) -> Result<Recovered, VerifyError> {
        let now = now_ms();
        Ok(self
            .store
            .recover_interrupted(&self.daemon, now - millis(STALE_ATTEMPT), now)
            .await?)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Create a verification and its code. The code is returned here and never again.
    pub async fn start(&self, new: NewVerification) -> Result<Started, VerifyError> {
        let phone = self.phones.parse(&new.phone)?;
        let user_ref = validate_user_ref(&new.user_ref)?;
        let code_length = new.code_length.unwrap_or(self.policy.code_length);
        if !codes::LENGTHS.contains(&code_length) {
            return Err(VerifyError::InvalidCodeLength(code_length));
        }
        let locale = validate_locale(new.locale.as_deref())?;
        let callback_url = new
            .callback_url
            .map(|url| validate_callback_url(url, self.policy.allow_private_callbacks))
            .transpose()?;
        let limits = [
            (
                RateSubject::Phone,
                Some(phone.as_str()),
                self.policy.per_number_per_hour,
            ),
            (
                RateSubject::User,
                Some(user_ref),
                self.policy.per_user_per_hour,
            ),
            (
                RateSubject::ApiKey,
                new.api_key_id.as_deref(),
                self.policy.per_key_per_hour,
            ),
        ]
        .into_iter()
        // u32::MAX means no limit: no need to count.
        .filter(|(_, _, max)| *max != u32::MAX)
        .filter_map(|(subject, value, max)| {
            Some(RateLimit {
                subject,
                value: value?.to_owned(),
                max: i64::from(max),
            })
        })
        .collect();
        let code = codes::generate(code_length);
        let mut row = self.new_row(phone.as_str(), user_ref, &code, locale, false);
        row.api_key_id = new.api_key_id.clone();
        row.callback_url = callback_url;
        let idempotency = match (&new.api_key_id, &new.idempotency) {
            (Some(api_key_id), Some((key, request_hash))) => Some(IdempotencyKey {
                api_key_id: api_key_id.clone(),
                key: key.clone(),
                request_hash: request_hash.clone(),
            }),
            _ => None,
        };
        let hour = 3_600_000;
        // A retry with a used Idempotency-Key gets the first answer, not a rate limit: the
        // store looks the key up before it checks lockouts and limits.
        let created = self
            .store
            .create_verification(&row, idempotency, limits, row.created_at - hour)
            .await?;
        match created {
            Created::Inserted => {}
            Created::Existing(earlier) => {
                let request_hash = new.idempotency.as_ref().map_or("", |(_, h)| h.as_str());
                return self.replay(earlier, request_hash).await;
            }
            Created::LockedOut(retry_at) => return Err(VerifyError::LockedOut { retry_at }),
            Created::Limited { subject, oldest } => {
                return Err(VerifyError::RateLimited {
                    subject: match subject {
                        RateSubject::Phone => "number",
                        RateSubject::User => "user",
                        RateSubject::ApiKey => "API key",
                    },
                    retry_at: oldest.unwrap_or(row.created_at) + hour,
                })
            }
        }
        tracing::info!(verification = %row.id, phone = %phone.masked(), "verification created");
        self.metrics.verification_created();
        let mut view = view(&row);
        view.code = Some(code);
        Ok(Started {
            view,
            replayed: false,
        })
    }

    /// The answer to a retried request: the verification the key made, if the request is
    /// the same.
    async fn replay(&self, earlier: Earlier, request_hash: &str) -> Result<Started, VerifyError> {
        if earlier.request_hash != request_hash {
            return Err(VerifyError::IdempotencyConflict);
        }
        Ok(Started {
            view: self.get(&earlier.verification_id).await?,
            replayed: true,
        })
    }

    /// A throw-away verification for a QA test call on `channel_id` (its uniqueid), with
    /// `code` (e.g. from `qa.code`, so a scripted caller can key it) or a random one. It is
    /// marked as a test and its number and user are the call's own, so that its lockouts
    /// touch no real user.
    pub async fn start_test(
        &self,
        channel_id: &str,
        code: Option<&str>,
    ) -> Result<View, VerifyError> {
        let code = match code {
            Some(c) if codes::is_valid_code(c) => c.to_owned(),
            Some(c) => return Err(VerifyError::InvalidCodeLength(c.len() as u32)),
            None => codes::generate(self.policy.code_length),
        };
        let subject = format!("qa:{}", channel_id.chars().take(64).collect::<String>());
        let row = self.new_row(&subject, &subject, &code, "en".into(), true);
        self.store.insert_verification(&row).await?;
        let mut view = view(&row);
        view.code = Some(code);
        Ok(view)
    }

    fn new_row(
        &self,
        phone: &str,
        user_ref: &str,
        code: &str,
        locale: String,
        is_test: bool,
    ) -> VerificationRow {
        let now = now_ms();
        let id = new_id();
        VerificationRow {
            code_hash: self.hasher.hash(&id, code),
            id,
            phone: phone.to_owned(),
            user_ref: user_ref.to_owned(),
            code_length: code.len() as i64,
            status: Status::Pending,
            attempts_used: 0,
            max_attempts: self.policy.max_attempts.into(),
            locale,
            is_test,
            created_at: now,
            updated_at: now,
            expires_at: now + millis(self.policy.code_ttl),
            verified_at: None,
            api_key_id: None,
            callback_url: None,
        }
    }

    /// The verification as it stands; one past its expiry while waiting becomes `expired`.
    pub async fn get(&self, id: &str) -> Result<View, VerifyError> {
        let mut row = self.row(id).await?;
        let now = now_ms();
        if row.status == Status::Pending
            && now >= row.expires_at
            && self
                .store
                .transition(id, &[Status::Pending], Status::Expired, now)
                .await?
        {
            row.status = Status::Expired;
        }
        Ok(view(&row))
    }

    /// The API key that made verification `id` (none: made with the CLI).
    pub async fn owner(&self, id: &str) -> Result<Option<String>, VerifyError> {
        Ok(self.row(id).await?.api_key_id)
    }

    /// Cancel a verification that has not ended.
    pub async fn cancel(&self, id: &str) -> Result<View, VerifyError> {
        let current = self.get(id).await?;
        let canceled = self
            .store
            .transition(
                id,
                &[Status::Pending, Status::Calling],
                Status::Canceled,
                now_ms(),
            )
            .await?;
        if !canceled {
            return Err(VerifyError::NotCancelable(current.status));
        }
        self.get(id).await
    }

    async fn row(&self, id: &str) -> Result<VerificationRow, VerifyError> {
        if !valid_id(id) {
            return Err(VerifyError::NotFound(id.chars().take(64).collect()));
        }
        self.store
            .verification(id)
            .await?
            .ok_or_else(|| VerifyError::NotFound(id.to_owned()))
    }

    /// A call for verification `id` has reached the daemon on `channel`.
    pub async fn begin_call(
        &self,
        id: &str,
        channel: &str,
        uniqueid: &str,
    ) -> Result<CallStart, VerifyError> {
        let now = now_ms();
        let started = self
            .store
            .begin_attempt(id, channel, uniqueid, &self.daemon, now)
            .await?;
        if let Some((attempt_id, verification)) = started {
            return Ok(CallStart::Ready(Box::new(Call {
                attempt_id,
                verification,
            })));
        }
        // Not callable: say why (expiring it if it is due).
        let row = self.row(id).await?;
        if row.status == Status::Pending
            && self
                .store
                .locked_until(&row.phone, &row.user_ref, now)
                .await?
                .is_some()
        {
            return Ok(CallStart::LockedOut);
        }
        Ok(CallStart::NotCallable(self.get(id).await?.status))
    }

    /// Check a code the callee entered. Wrong entries are counted in the store at once, so a
    /// crash cannot give an attempt back.
    /// Whether `entered` is the code, without using an attempt (a spoken code is checked so
    /// before the caller is asked to confirm a wrong one).
    pub fn code_matches(&self, call: &Call, entered: &str) -> bool {
        let v = &call.verification;
        self.hasher.matches(&v.id, entered, &v.code_hash)
    }

    pub async fn check_code(&self, call: &Call, entered: &str) -> Result<CodeCheck, VerifyError> {
        let v = &call.verification;
        let now = now_ms();
        if now >= v.expires_at {
            self.store
                .transition(&v.id, &[Status::Calling], Status::Expired, now)
                .await?;
            return Ok(CodeCheck::Expired);
        }
        if self.hasher.matches(&v.id, entered, &v.code_hash) {
            // Verified and the attempt closed in one go: the common end of a call.
            let verified = self
                .store
                .verify_in_call(&v.id, call.attempt_id, now)
                .await?;
            // Not `calling` any more: canceled meanwhile.
            return Ok(if verified {
                tracing::info!("code correct: verified");
                CodeCheck::Verified
            } else {
                CodeCheck::Expired
            });
        }
        let lock_until = now + millis(self.policy.lockout);
        let Some(used) = self.store.count_wrong_entry(v, lock_until, now).await? else {
            return Ok(CodeCheck::Expired);
        };
        let remaining = (v.max_attempts - used).max(0);
        tracing::info!(remaining, "wrong code entered");
        if remaining > 0 {
            return Ok(CodeCheck::Wrong { remaining });
        }
        tracing::warn!(
            phone = %PhoneNumber::from_stored(v.phone.clone()).masked(),
            "attempts used up: number and user locked out"
        );
        Ok(CodeCheck::LockedOut)
    }

    /// Periodic upkeep of the queue: stale dialer claims released, overdue verifications
    /// expired (which sends their `expired` webhook).
    pub async fn maintain(&self) -> Result<(), VerifyError> {
        let now = now_ms();
        let stale = millis(self.policy.ring_timeout * 2 + Duration::from_secs(5));
        let (released, expired) = self.store.maintain(now - stale, now).await?;
        if released > 0 {
            tracing::warn!(
                released,
                "dialer calls nobody answered for released (a daemon died or lost events)"
            );
        }
        if expired > 0 {
            tracing::info!(expired, "verifications expired");
        }
        Ok(())
    }

    /// When a verification whose call ended with `outcome` is due its next call, if ever.
    pub fn next_call(&self, outcome: CallOutcome, now: i64) -> Option<i64> {
        outcome
            .retried()
            .then(|| now + millis(self.policy.retry_delay))
    }

    /// Whether `phone` may be called under the destination policy in force now (it may
    /// have changed since the verification was made).
    pub fn may_call(&self, phone: &str) -> Result<(), PhoneError> {
        self.phones.parse(phone).map(drop)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn daemon(&self) -> &str {
        &self.daemon
    }

    /// Record how the call ended.
    pub async fn end_call(&self, call: &Call, outcome: CallOutcome) -> Result<(), VerifyError> {
        self.metrics.call_ended(outcome);
        if outcome == CallOutcome::Verified {
            return Ok(()); // Recorded with the verification by check_code.
        }
        let now = now_ms();
        self.store
            .finish_attempt(
                call.attempt_id,
                &call.verification.id,
                outcome,
                self.next_call(outcome, now),
                self.policy.max_dials.into(),
                now,
            )
            .await?;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    millis(since)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An RFC 3339 UTC timestamp, as the API shows times.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn view(row: &VerificationRow) -> View {
    View {
        id: row.id.clone(),
        code: None,
        status: row.status,
        phone: row.phone.clone(),
        user_ref: row.user_ref.clone(),
        locale: row.locale.clone(),
        attempts_remaining: (row.max_attempts - row.attempts_used).max(0),
        created_at: rfc3339(row.created_at),
        expires_at: rfc3339(row.expires_at),
        verified_at: row.verified_at.map(rfc3339),
        test: row.is_test,
    }
}

const ID_PREFIX: &str = "vf_";
const ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// `vf_` and 24 characters from a 32-letter alphabet: 120 random bits.
fn new_id() -> String {
    random_token(ID_PREFIX, 24)
}

/// `prefix` and `len` random characters from a 32-letter alphabet without look-alikes.
pub fn random_token(prefix: &str, len: usize) -> String {
    let mut token = String::from(prefix);
    token.extend((0..len).map(|_| char::from(ID_ALPHABET[OsRng.gen_range(0..ID_ALPHABET.len())])));
    token
}

/// Ids come from callers (AGI arguments, URLs): anything not shaped like one is unknown.
pub fn valid_id(id: &str) -> bool {
    (ID_PREFIX.len() + 1..=64).contains(&id.len())
        && id.starts_with(ID_PREFIX)
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn validate_user_ref(user_ref: &str) -> Result<&str, VerifyError> {
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
    Ok(user_ref)
}

fn validate_callback_url(url: String, allow_private: bool) -> Result<String, VerifyError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or(VerifyError::InvalidCallbackUrl)?;
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(VerifyError::InvalidCallbackUrl);
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err(VerifyError::InvalidCallbackUrl);
    }
    if !allow_private && is_internal_host(host) {
        return Err(VerifyError::PrivateCallbackUrl);
    }
    Ok(url)
}

/// Loopback, private, link-local (cloud metadata) or unspecified addresses, and localhost.
fn is_internal_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(std::net::IpAddr::V4(v4)) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

fn validate_locale(locale: Option<&str>) -> Result<String, VerifyError> {
    let locale = locale.unwrap_or("en");
    let ok = (2..=16).contains(&locale.len())
        && locale
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(locale.to_owned())
    } else {
        Err(VerifyError::InvalidLocale(
            locale.chars().take(32).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_recognised() {
        let a = new_id();
        assert_ne!(a, new_id());
        assert!(valid_id(&a));
        assert_eq!(a.len(), 27);
        for bad in ["", "vf_", "x", "vf_a b", "vf_a;DROP", &"vf_a".repeat(20)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn user_refs() {
        assert!(validate_user_ref("alice").is_ok());
        assert!(validate_user_ref("").is_err());
        assert!(validate_user_ref("a\nb").is_err());
        assert!(validate_user_ref(&"x".repeat(129)).is_err());
    }

    #[test]
    fn callback_urls_into_the_internal_network_are_refused() {
        for url in [
            "http://127.0.0.1/hook",
            "http://localhost:8080/x",
            "https://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9000/",
            "http://user@192.168.1.1/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            assert!(
                matches!(
                    validate_callback_url(url.into(), false),
                    Err(VerifyError::PrivateCallbackUrl)
                ),
                "{url}"
            );
            assert!(validate_callback_url(url.into(), true).is_ok(), "{url}");
        }
        assert!(validate_callback_url("https://app.example.com/hooks?a=1".into(), false).is_ok());
        assert!(validate_callback_url("https://93.184.216.34:8443/h".into(), false).is_ok());
        for bad in [
            "ftp://x",
            "http://",
            "https:// spaced",
            "javascript:alert(1)",
        ] {
            assert!(validate_callback_url(bad.into(), true).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.5Z");
    }
}
