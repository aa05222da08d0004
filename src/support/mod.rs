//! The support line's rules: who is calling (caller ID against verifications support can
//! act on), when live staff answer, keeping messages, staff decisions with an audit trail,
//! and deleting recordings after the retention period.

pub mod account;
mod actor;
pub mod hours;
pub mod message;
mod passwords;
pub mod request;
pub mod staff;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callverify_audio::SAMPLE_RATE;
use callverify_speech::CodeRecogniser;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::clock::now_ms;
use crate::domain::ids::random_token;
use crate::domain::phone::{PhoneNumber, PhonePolicy};
pub use crate::domain::status::Room;
use crate::domain::status::{CallerMatch, RequestStatus};
use crate::store::{Store, StoreError};
pub use account::{StaffAccount, StaffSession};
pub use actor::Actor;
use hours::BusinessHours;
use message::{Message, MessageLimits};
use request::{
    AuditEntry, AuditFilter, Decided, Decision, NewManualRequest, RequestHistory, RequestPage,
    Search,
};
pub use request::{ManualRequest, MessageQuota, RequestFilter};

/// How long after a decision the page that shows it (`after_decision`) is part of it.
const DECISION_VIEW_MS: i64 = 60_000;

#[derive(Debug, Clone)]
pub struct SupportSettings {
    pub hours: BusinessHours,
    pub limits: MessageLimits,
    /// Recordings and transcripts are deleted this long after the message.
    pub retention: Duration,
    /// A request still open this long after the message is overdue.
    pub overdue_after: Duration,
    /// How many messages the line takes.
    pub quota: MessageQuota,
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// An open request, with its id.
    Request(String),
    /// Not kept: the line had no room for it (see [`MessageQuota`]).
    NoRoom(Room),
}

/// The caller as the support line sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub number: Option<PhoneNumber>,
    pub matched: CallerMatch,
    pub verification_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("no such manual request")]
    NotFound,
    #[error("the request was {0} already")]
    AlreadyDecided(&'static str),
    #[error("the request matched no verification: name the verification_id to approve")]
    NoVerification,
    #[error("the verification cannot be verified by hand now ({0})")]
    NotApprovable(String),
    #[error("a reason of 1 to 500 characters is needed to reject")]
    InvalidReason,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SupportError {
    pub fn code(&self) -> &'static str {
        match self {
            SupportError::NotFound => "not_found",
            SupportError::AlreadyDecided(_) => "already_decided",
            SupportError::NoVerification => "no_verification",
            SupportError::NotApprovable(_) => "not_approvable",
            SupportError::InvalidReason => "invalid_reason",
            SupportError::Store(_) => "internal",
        }
    }
}

pub struct Support {
    store: Store,
    phones: PhonePolicy,
    settings: SupportSettings,
    /// Writes transcripts of messages, when a recogniser is loaded.
    transcriber: Option<CodeRecogniser>,
    /// When lost transcripts were last looked for ([`Support::transcribe_lost`]).
    lost_looked_for: AtomicI64,
    /// Messages being recorded ([`Support::recording_place`]).
    recording_places: Arc<Semaphore>,
}

impl Support {
    pub fn new(
        store: Store,
        phones: PhonePolicy,
        settings: SupportSettings,
        transcriber: Option<CodeRecogniser>,
    ) -> Self {
        let places = usize::try_from(settings.quota.per_hour.clamp(1, 10_000)).unwrap_or(1) * 2;
        Self {
            store,
            phones,
            recording_places: Arc::new(Semaphore::new(places)),
            settings,
            transcriber,
            lost_looked_for: AtomicI64::new(i64::MIN),
        }
    }

    pub fn settings(&self) -> &SupportSettings {
        &self.settings
    }

    /// Identify a caller by `agi_callerid` and `agi_callingpres`.
    pub async fn identify(&self, caller_id: &str, presentation: u32) -> Result<Caller, StoreError> {
        // Presentation bits 0x60: 0x20 restricted, 0x40 unavailable.
        if presentation & 0x60 != 0 {
            return Ok(Caller {
                number: None,
                matched: CallerMatch::Withheld,
                verification_id: None,
            });
        }
        let Some(number) = self.phones.caller_id(caller_id) else {
            let withheld = !caller_id.chars().any(|c| c.is_ascii_digit());
            return Ok(Caller {
                number: None,
                matched: if withheld {
                    CallerMatch::Withheld
                } else {
                    CallerMatch::Unmatched
                },
                verification_id: None,
            });
        };
        let verification_id = self.store.support_match(number.as_str(), now_ms()).await?;
        Ok(Caller {
            matched: if verification_id.is_some() {
                CallerMatch::Matched
            } else {
                CallerMatch::Unmatched
            },
            number: Some(number),
            verification_id,
        })
    }

    /// The zone a staff member's times are shown in: their own, else the support desk's.
    pub fn zone_for(&self, staff_zone: Option<&str>) -> jiff::tz::TimeZone {
        staff_zone
            .and_then(|z| jiff::tz::TimeZone::get(z).ok())
            .unwrap_or_else(|| self.settings.hours.zone().clone())
    }

    pub fn staff_answer_at(&self, at_ms: i64) -> bool {
        self.settings.hours.is_open(at_ms)
    }

    /// Whether the line takes a message from `caller` now: asked before the tone, so that
    /// nobody speaks for nothing ([`Support::keep`] counts again as it keeps one).
    pub async fn room_for(&self, caller: &Caller) -> Result<Room, StoreError> {
        let number = caller.number.as_ref().map(|n| n.as_str().to_owned());
        self.store
            .message_room(number, self.settings.quota, now_ms())
            .await
    }

    /// A place to record a message in: twice as many messages are recorded at once as the
    /// line takes in an hour at most (each holds up to a minute and a half of audio in
    /// memory until it is kept; twice, so that a flood whose messages will not be kept
    /// leaves room for others); `None` when all are taken.
    pub fn recording_place(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.recording_places).try_acquire_owned().ok()
    }

    /// Keep a message as an open request, if the line still has room for it.
    pub async fn keep(
        &self,
        caller: &Caller,
        message: Message,
        language: &str,
    ) -> Result<Kept, StoreError> {
        let id = random_token("mr_", 20);
        let room = self
            .store
            .keep_manual_request(
                NewManualRequest {
                    id: id.clone(),
                    created_at: now_ms(),
                    caller: caller.number.as_ref().map(|n| n.as_str().to_owned()),
                    caller_match: caller.matched,
                    verification_id: caller.verification_id.clone(),
                    ended_by: message.ended_by.as_str(),
                    duration_ms: i64::try_from(message.duration().as_millis()).unwrap_or(i64::MAX),
                    recording: callverify_audio::wav::encode(&message.samples, SAMPLE_RATE),
                    transcript: None,
                    language: language.to_owned(),
                },
                self.settings.quota,
            )
            .await?;
        if room != Room::Open {
            return Ok(Kept::NoRoom(room));
        }
        if let Some(recogniser) = &self.transcriber {
            // In the background: the caller hears "thank you" without waiting for it.
            let (store, recogniser) = (self.store.clone(), recogniser.clone());
            let (id, language) = (id.clone(), language.to_owned());
            tokio::spawn(async move {
                transcribe(&store, &recogniser, id, message.samples, language, false).await
            });
        }
        Ok(Kept::Request(id))
    }

    /// A page of the requests `filter` finds.
    pub async fn list(&self, filter: RequestFilter) -> Result<RequestPage, StoreError> {
        self.store.manual_requests(filter).await
    }

    /// How many requests of each status `filter` finds (its status and page aside).
    pub async fn counts(
        &self,
        filter: RequestFilter,
    ) -> Result<Vec<(RequestStatus, i64)>, StoreError> {
        self.store.manual_request_counts(filter).await
    }

    /// Why the automated call did not do it: the request's verification's calls and code
    /// checks, its lockout, and the other requests from the same number (at most 20).
    pub async fn history(&self, request: &ManualRequest) -> Result<RequestHistory, StoreError> {
        let mut history = RequestHistory::default();
        if let Some(id) = &request.verification_id {
            history.calls = self.store.attempts(id).await?;
            history.checks = self.store.checks_of(id).await?;
        }
        if let Some(caller) = &request.caller {
            let page = self
                .store
                .manual_requests(RequestFilter {
                    search: Some(Search {
                        text: caller.clone(),
                        digits: Some(caller.trim_start_matches('+').to_owned()),
                    }),
                    limit: 21,
                    ..Default::default()
                })
                .await?;
            history.others = page
                .requests
                .into_iter()
                .filter(|r| r.id != request.id)
                .take(20)
                .collect();
        }
        Ok(history)
    }

    /// The audit log, newest first (for administrators).
    pub async fn audit_log(&self, filter: AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.store.audit_log(filter).await
    }

    /// One request; opening it (it shows the full number) is audited, once per look: not
    /// again when the actor's own last entry on it, within a minute, is an open (a reload, a
    /// canceled decision) or, for the page shown right after it (`after_decision`), their
    /// approve or reject.
    pub async fn open(
        &self,
        id: &str,
        actor: &Actor,
        after_decision: bool,
    ) -> Result<Option<ManualRequest>, StoreError> {
        let request = self.store.manual_request(id).await?;
        if request.is_some() {
            let now = now_ms();
            let trail = self.store.audit_entries(id).await?;
            let seen = trail.last().is_some_and(|last| {
                last.actor == actor.as_str()
                    && now - last.at < DECISION_VIEW_MS
                    && (last.action == "open"
                        || after_decision && matches!(last.action.as_str(), "approve" | "reject"))
            });
            if !seen {
                self.store
                    .audit(actor.as_str(), "open", id, "", now)
                    .await?;
            }
        }
        Ok(request)
    }

    /// A request without auditing (to check access before acting).
    pub async fn peek(&self, id: &str) -> Result<Option<ManualRequest>, StoreError> {
        self.store.manual_request(id).await
    }

    /// The recording; playing it is audited.
    pub async fn recording(&self, id: &str, actor: &Actor) -> Result<Option<Vec<u8>>, StoreError> {
        let recording = self.store.manual_recording(id).await?;
        if recording.is_some() {
            self.store
                .audit(actor.as_str(), "play", id, "", now_ms())
                .await?;
        }
        Ok(recording)
    }

    pub async fn approve(
        &self,
        id: &str,
        verification_id: Option<String>,
        actor: &Actor,
    ) -> Result<Option<String>, SupportError> {
        self.decide(id, Decision::Approve { verification_id }, actor)
            .await
    }

    pub async fn reject(&self, id: &str, reason: &str, actor: &Actor) -> Result<(), SupportError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(SupportError::InvalidReason);
        }
        let decision = Decision::Reject {
            reason: reason.to_owned(),
        };
        self.decide(id, decision, actor).await.map(drop)
    }

    async fn decide(
        &self,
        id: &str,
        decision: Decision,
        actor: &Actor,
    ) -> Result<Option<String>, SupportError> {
        match self
            .store
            .decide_manual(id, decision, actor.as_str(), now_ms())
            .await?
        {
            Decided::Done { verification_id } => Ok(verification_id),
            Decided::NotFound => Err(SupportError::NotFound),
            Decided::AlreadyDecided(status) => Err(SupportError::AlreadyDecided(status.as_str())),
            Decided::NoVerification => Err(SupportError::NoVerification),
            Decided::NotApprovable(status) => Err(SupportError::NotApprovable(
                status.map_or("no such verification".into(), |s| s.to_string()),
            )),
            Decided::MatchedOther => Err(SupportError::NotApprovable(
                "the request matched another verification by caller ID".into(),
            )),
        }
    }

    pub fn is_overdue(&self, request: &ManualRequest, now: i64) -> bool {
        let after = i64::try_from(self.settings.overdue_after.as_millis()).unwrap_or(i64::MAX);
        request.status == RequestStatus::Open && now.saturating_sub(request.created_at) >= after
    }

    /// Write again, in the background, the transcripts a stopped daemon left unwritten (a few
    /// at a time, every ten minutes); returns how many. Nothing without a recogniser. A
    /// message whose transcription fails again is left with an empty transcript, so that it
    /// does not hold the others' turn for good.
    pub async fn transcribe_lost(&self, now: i64) -> Result<usize, StoreError> {
        if self.transcriber.is_none() {
            return Ok(0);
        }
        let last = self.lost_looked_for.load(Ordering::Relaxed);
        if now.saturating_sub(last) < LOST_TRANSCRIPTS_EVERY
            || self
                .lost_looked_for
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(0);
        }
        let lost = self
            .store
            .untranscribed(now - TRANSCRIPT_LOST_AFTER, LOST_TRANSCRIPTS_AT_ONCE)
            .await?;
        let count = lost.len();
        if let Some(recogniser) = &self.transcriber {
            let (store, recogniser) = (self.store.clone(), recogniser.clone());
            tokio::spawn(async move {
                for (id, wav, language) in lost {
                    match callverify_audio::wav::decode(&wav) {
                        Ok((_, samples)) => {
                            transcribe(&store, &recogniser, id, samples, language, true).await
                        }
                        Err(e) => tracing::error!(request = %id, error = %e,
                            "a support recording cannot be read back to transcribe it"),
                    }
                }
            });
        }
        Ok(count)
    }

    /// Delete recordings and transcripts past the retention period, and the console's
    /// failed sign-ins with them (see [`staff`]); returns how many recordings went.
    pub async fn purge(&self, now: i64) -> Result<u64, StoreError> {
        let retention = i64::try_from(self.settings.retention.as_millis()).unwrap_or(i64::MAX);
        // Apart: a failure here must not keep the recordings past their time.
        if let Err(e) = staff::purge_sign_ins(&self.store, now, self.settings.retention).await {
            tracing::error!(error = %e, "cannot purge old sign-in attempts");
        }
        self.store
            .purge_support(now.saturating_sub(retention), now)
            .await
    }
}

/// A message kept this long ago without a transcript lost it: its daemon stopped while the
/// transcript was being written (a message waits behind the spoken codes, up to half a
/// minute a part).
const TRANSCRIPT_LOST_AFTER: i64 = 10 * 60_000;
/// How often lost transcripts are looked for, and how many are written again each time.
const LOST_TRANSCRIPTS_EVERY: i64 = 10 * 60_000;
const LOST_TRANSCRIPTS_AT_ONCE: i64 = 5;

/// Whisper reads 30 s at a time: longer messages are recognised in parts.
const TRANSCRIBE_PART: usize = 25 * SAMPLE_RATE as usize;

/// Write the transcript of message `id` beside its recording, to help staff (what was said,
/// the spelled username). Never logged: only its length.
/// `last_try`: a recognition that fails leaves the transcript empty, not missing, so that the
/// message is not tried again.
async fn transcribe(
    store: &Store,
    recogniser: &CodeRecogniser,
    id: String,
    samples: Vec<i16>,
    language: String,
    last_try: bool,
) {
    let mut parts = Vec::new();
    for part in samples.chunks(TRANSCRIBE_PART) {
        match recogniser.transcribe(part.to_vec(), &language).await {
            Ok(text) => parts.push(text.trim().to_owned()),
            Err(e) => {
                tracing::error!(request = %id, error = %e, last_try,
                    "transcribing a support message failed");
                if !last_try {
                    return;
                }
                parts.clear();
                break;
            }
        }
    }
    let transcript = parts.join(" ");
    match store.set_transcript(&id, &transcript).await {
        Ok(()) => {
            tracing::info!(request = %id, chars = transcript.chars().count(), "support message transcribed")
        }
        Err(e) => tracing::error!(request = %id, error = %e, "storing a transcript failed"),
    }
}
