//! A manual-verification request as the support desk sees it: a caller's message, the
//! listing filter, a staff decision and its outcome, and the audit trail. Value types: the
//! store persists them and returns them; the support service, the API and the console use them.

use crate::domain::status::{CallerMatch, RequestStatus, Status};

/// A message as the support line stores it.
#[derive(Debug, Clone)]
pub struct NewManualRequest {
    pub id: String,
    pub created_at: i64,
    pub caller: Option<String>,
    pub caller_match: CallerMatch,
    pub verification_id: Option<String>,
    pub ended_by: &'static str,
    pub duration_ms: i64,
    /// A WAV file.
    pub recording: Vec<u8>,
    pub transcript: Option<String>,
    pub language: String,
}

/// How many messages the support line takes: anyone on the phone network can call it, and
/// each message is up to a minute and a half of audio kept for weeks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageQuota {
    /// From one caller ID in 24 hours.
    pub per_caller_per_day: i64,
    /// From all callers together in an hour (caller IDs can be faked or withheld).
    pub per_hour: i64,
    /// Bytes of recordings of open requests at most: a flood that fills them closes the line
    /// only until staff decide (reject) what it left.
    pub max_bytes: i64,
}

/// A request as listed (the recording itself is fetched on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualRequest {
    pub id: String,
    pub created_at: i64,
    pub caller: Option<String>,
    pub caller_match: CallerMatch,
    pub verification_id: Option<String>,
    /// Of the matched verification.
    pub user_ref: Option<String>,
    pub verification_status: Option<Status>,
    pub api_key_id: Option<String>,
    pub status: RequestStatus,
    pub ended_by: String,
    pub duration_ms: i64,
    pub has_recording: bool,
    pub transcript: Option<String>,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

impl ManualRequest {
    /// Whether API key `key_id` may see and decide it: a request about one of its own
    /// verifications, or one that matched none. A request matched to another key's
    /// verification, or to one made with the CLI (no key's), is not its.
    pub fn visible_to(&self, key_id: &str) -> bool {
        self.verification_id.is_none() || self.api_key_id.as_deref() == Some(key_id)
    }
}

/// Which requests a listing shows.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// None: all.
    pub status: Option<RequestStatus>,
    /// Only the requests this API key may see ([`ManualRequest::visible_to`]).
    pub api_key_id: Option<String>,
    /// Only requests this search finds.
    pub search: Option<Search>,
    /// The page after this request (keyset paging), in the listing's order.
    pub after: Option<Cursor>,
    pub limit: i64,
}

/// One page of a listing, and where the next one starts (none: this was the last).
#[derive(Debug, Clone, Default)]
pub struct RequestPage {
    pub requests: Vec<ManualRequest>,
    pub next: Option<Cursor>,
}

/// A search from the desk's one box: a request or verification id, a `user_ref`, words of
/// the transcript, or a phone number in any format (its digits; the country code may be left
/// out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// The text as typed, trimmed.
    pub text: String,
    /// Its digits, when it could be a phone number (only digits and `+ - . ( )` and spaces,
    /// six digits at least).
    pub digits: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("the search is longer than 200 characters")]
    TooLong,
    #[error("the search contains control characters")]
    Control,
}

impl Search {
    /// The search `q` asks for; `None` for an empty one.
    pub fn parse(q: &str) -> Result<Option<Self>, SearchError> {
        let text = q.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if text.chars().count() > 200 {
            return Err(SearchError::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(SearchError::Control);
        }
        let phone_like = text
            .chars()
            .all(|c| c.is_ascii_digit() || " +-.()".contains(c));
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        Ok(Some(Self {
            text: text.to_owned(),
            digits: (phone_like && digits.len() >= 6).then_some(digits),
        }))
    }
}

/// Where a page of requests starts: after the request received at `created_at` with `id`
/// (the listing's order is by both). Shown to clients as an opaque string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

impl Cursor {
    pub fn of(request: &ManualRequest) -> Self {
        Self {
            created_at: request.created_at,
            id: request.id.clone(),
        }
    }

    /// The cursor as clients pass it back.
    pub fn encode(&self) -> String {
        format!("{}-{}", self.created_at, self.id)
    }

    /// A cursor this service gave out; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let (at, id) = text.split_once('-')?;
        let created_at = at.parse().ok().filter(|at| *at >= 0)?;
        let shaped = id.len() <= 64
            && id.starts_with("mr_")
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        shaped.then(|| Self {
            created_at,
            id: id.to_owned(),
        })
    }
}

/// A staff member's decision on a request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Verify `verification_id` (the matched one when none is named).
    Approve {
        verification_id: Option<String>,
    },
    Reject {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    Done {
        verification_id: Option<String>,
    },
    NotFound,
    /// Already approved or rejected.
    AlreadyDecided(RequestStatus),
    /// Approving needs a verification and the request matched none.
    NoVerification,
    /// The verification cannot be verified by hand in this state (in a call, canceled) or
    /// does not exist.
    NotApprovable(Option<Status>),
    /// The request matched a verification by caller ID; it cannot be approved for another.
    MatchedOther,
}

/// What the desk sees of a request's past: its verification's calls and counted code checks
/// (never the digits), the lockout they caused, and the other requests from its number.
#[derive(Debug, Clone, Default)]
pub struct RequestHistory {
    pub calls: Vec<crate::domain::verification::CallAttempt>,
    pub checks: crate::store::Checks,
    /// Newest first.
    pub others: Vec<ManualRequest>,
}

/// Which entries of the audit log an administrator looks at.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// `staff:alice`, `api:key_...`, `accounts`, ...
    pub actor: Option<String>,
    /// `open`, `play`, `approve`, `reject`, `staff_add`, ...
    pub action: Option<String>,
    /// Entries at or after this time, and before `until`.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// The page after (older than) the entry with this id.
    pub before_id: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_tell_numbers_from_text() {
        let s = Search::parse(" +1 (415) 555-0101 ").unwrap().unwrap();
        assert_eq!(s.text, "+1 (415) 555-0101");
        assert_eq!(s.digits.as_deref(), Some("14155550101"));
        assert_eq!(
            Search::parse("4155550101")
                .unwrap()
                .unwrap()
                .digits
                .as_deref(),
            Some("4155550101")
        );
        assert_eq!(Search::parse("alice").unwrap().unwrap().digits, None);
        assert_eq!(
            Search::parse("12345").unwrap().unwrap().digits,
            None,
            "too short"
        );
        assert_eq!(Search::parse("vf_123456").unwrap().unwrap().digits, None);
        assert_eq!(Search::parse("  ").unwrap(), None);
        assert_eq!(Search::parse(&"x".repeat(201)), Err(SearchError::TooLong));
        assert_eq!(Search::parse("a\u{0}b"), Err(SearchError::Control));
    }

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let c = Cursor {
            created_at: 1_795_786_096_123,
            id: "mr_abc123".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in [
            "",
            "x-mr_abc",
            "-1-mr_abc",
            "123",
            "123-",
            "123-a b",
            "123-mr_'; --",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
