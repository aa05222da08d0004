//! The API's errors: `{"error":{"code","message"}}` with a fitting status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::clock::rfc3339;
use crate::domain::VerifyError;
use crate::store::StoreError;
use crate::support::SupportError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// When a 429 may be retried (Unix ms).
    pub retry_at: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_at: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an API key as `Authorization: Bearer cvk_...` (create one with `callverify keys create`)",
        )
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        let status = match &e {
            VerifyError::InvalidPhone(_)
            | VerifyError::InvalidUserRef(_)
            | VerifyError::InvalidLocale(_)
            | VerifyError::UnsupportedLocale { .. }
            | VerifyError::InvalidCodeLength(_)
            | VerifyError::InvalidCode(_)
            | VerifyError::InvalidCallbackUrl
            | VerifyError::PrivateCallbackUrl
            | VerifyError::UnsignedCallbacks => StatusCode::UNPROCESSABLE_ENTITY,
            VerifyError::LockedOut { .. } | VerifyError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            // As another key's verification is answered: an id's existence is not told.
            VerifyError::NotFound(_) => return ApiError::not_found(),
            VerifyError::IdempotencyConflict
            | VerifyError::NotCancelable(_)
            | VerifyError::WrongMode
            | VerifyError::CodeNotDelivered
            | VerifyError::NotCheckable(_) => StatusCode::CONFLICT,
            VerifyError::NameRace(_) | VerifyError::Unsealable(_) | VerifyError::Store(_) => {
                return store_failure(&e)
            }
        };
        let retry_at = match &e {
            VerifyError::LockedOut { retry_at } | VerifyError::RateLimited { retry_at, .. } => {
                Some(*retry_at)
            }
            _ => None,
        };
        Self {
            status,
            code: e.code(),
            message: e.to_string(),
            retry_at,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        store_failure(&e)
    }
}

impl From<SupportError> for ApiError {
    fn from(e: SupportError) -> Self {
        let status = match &e {
            SupportError::NotFound => StatusCode::NOT_FOUND,
            SupportError::AlreadyDecided(_) => StatusCode::CONFLICT,
            SupportError::NoVerification
            | SupportError::NotApprovable(_)
            | SupportError::InvalidReason => StatusCode::UNPROCESSABLE_ENTITY,
            SupportError::Store(store) => return store_failure(store),
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

fn store_failure(e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "API request failed on the store");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the request could not be completed; it is safe to retry",
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(at) = self.retry_at {
            error["retry_at"] = rfc3339(at).into();
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(at) = self.retry_at {
            let secs = (at - crate::domain::clock::now_ms()).max(0) / 1000 + 1;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
