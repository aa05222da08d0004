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

/// Which requests a listing shows.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// None: all.
    pub status: Option<RequestStatus>,
    /// Only requests matched to this API key's verifications, and unmatched ones.
    pub api_key_id: Option<String>,
    pub limit: i64,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}
