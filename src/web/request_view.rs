//! A manual-verification request as the API and the console show it.

use serde::Serialize;

use crate::domain::clock::{now_ms, rfc3339};
use crate::domain::phone::masked;
use crate::domain::status::RequestStatus;
use crate::support::request::ManualRequest;
use crate::support::Support;

/// A request as the API and the console show it.
#[derive(Debug, Serialize)]
pub struct RequestView {
    pub id: String,
    pub status: RequestStatus,
    pub created_at: String,
    /// The same, in Unix ms (for the console's local times).
    #[serde(skip)]
    pub received_ms: i64,
    /// Masked in lists; in full when one request is opened.
    pub caller: Option<String>,
    pub caller_match: &'static str,
    pub verification: Option<VerificationRef>,
    /// Still open 24 hours after the message.
    pub overdue: bool,
    pub duration_ms: i64,
    pub ended_by: String,
    pub recording_url: Option<String>,
    pub transcript: Option<String>,
    pub decided_at: Option<String>,
    #[serde(skip)]
    pub decided_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VerificationRef {
    pub id: String,
    pub user_ref: Option<String>,
    pub status: Option<String>,
}

impl RequestView {
    /// Requests as a queue shows them: numbers masked.
    pub fn listed(requests: &[ManualRequest], support: &Support) -> Vec<Self> {
        let now = now_ms();
        requests
            .iter()
            .map(|r| Self::new(r, support, false, now))
            .collect()
    }

    pub fn new(request: &ManualRequest, support: &Support, full_number: bool, now: i64) -> Self {
        let caller = request.caller.as_deref().map(|number| {
            if full_number {
                number.to_owned()
            } else {
                masked(number).to_string()
            }
        });
        Self {
            id: request.id.clone(),
            status: request.status,
            created_at: rfc3339(request.created_at),
            received_ms: request.created_at,
            caller,
            caller_match: request.caller_match.as_str(),
            verification: request.verification_id.as_ref().map(|id| VerificationRef {
                id: id.clone(),
                user_ref: request.user_ref.clone(),
                status: request.verification_status.map(|s| s.to_string()),
            }),
            overdue: support.is_overdue(request, now),
            duration_ms: request.duration_ms,
            ended_by: request.ended_by.clone(),
            recording_url: request
                .has_recording
                .then(|| format!("/v1/manual-requests/{}/recording", request.id)),
            transcript: request.transcript.clone(),
            decided_at: request.decided_at.map(rfc3339),
            decided_ms: request.decided_at,
            decided_by: request.decided_by.clone(),
            reason: request.reason.clone(),
        }
    }
}
