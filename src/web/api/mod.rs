//! The HTTP JSON API the web application calls (DESIGN.md): start a verification, read it,
//! cancel it, check a code a read-code call said. Every `/v1` call needs `Authorization: Bearer <key>`.

mod error;
pub mod manual;
mod replays;

pub use error::ApiError;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use callverify_pbx::ami::AmiState;

use crate::domain::api_keys::{ApiKey, ApiKeys};
use crate::domain::metrics::Snapshot;
use crate::domain::{Mode, NewVerification, Verifications};
use crate::support::Support;
use replays::Replays;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the API's handlers share.
pub struct ApiState {
    pub service: Arc<Verifications>,
    pub support: Arc<Support>,
    pub keys: ApiKeys,
    pub max_body_bytes: usize,
    /// The AMI connection's state, when the dialer runs.
    pub ami: Option<watch::Receiver<AmiState>>,
    replays: Replays,
}

impl ApiState {
    pub fn new(
        service: Arc<Verifications>,
        support: Arc<Support>,
        keys: ApiKeys,
        max_body_bytes: usize,
        ami: Option<watch::Receiver<AmiState>>,
    ) -> Self {
        Self {
            service,
            support,
            keys,
            max_body_bytes,
            ami,
            replays: Replays::default(),
        }
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/verifications", post(create))
        .route("/v1/verifications/{id}", get(show))
        .route("/v1/verifications/{id}/cancel", post(cancel))
        .route("/v1/verifications/{id}/check", post(check))
        .route("/v1/manual-requests", get(manual::list))
        .route("/v1/manual-requests/{id}", get(manual::show))
        .route("/v1/manual-requests/{id}/recording", get(manual::recording))
        .route("/v1/manual-requests/{id}/approve", post(manual::approve))
        .route("/v1/manual-requests/{id}/reject", post(manual::reject))
        .with_state(state)
}

async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    if let Err(e) = state.service.check_store().await {
        return ApiError::from(e).into_response();
    }
    let ami = match &state.ami {
        Some(rx) => rx.borrow().as_str(),
        None => "not_configured",
    };
    Json(serde_json::json!({ "status": "ok", "ami": ami })).into_response()
}

/// Prometheus text; like /healthz, no key (the API listens on loopback by default).
async fn metrics(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let (queue_due, webhooks_undelivered) = state.service.backlog().await?;
    let snapshot = Snapshot {
        ami_state: state.ami.as_ref().map(|rx| rx.borrow().as_str()),
        queue_due,
        webhooks_undelivered,
    };
    let text = state.service.metrics().render(&snapshot);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The API's own documentation: public, like `/healthz`.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The caller's API key, from `Authorization: Bearer ...` (the scheme in any case, as
/// RFC 9110 has it).
async fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<ApiKey, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or_else(ApiError::unauthorized)?;
    state
        .keys
        .authenticate(presented.trim())
        .await?
        .ok_or_else(ApiError::unauthorized)
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    phone: String,
    user_ref: String,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    code_length: Option<u32>,
    /// Left out of the request's hash when not given, as before there were modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<Mode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    code: String,
}

/// Read a JSON body: 415 unless it says it is JSON, 413 past the limit, 400 if it is not
/// JSON, 422 if its fields are wrong.
async fn json_body<T: serde::de::DeserializeOwned>(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {} bytes", state.max_body_bytes),
            )
        })?;
    // An object, and nothing else: serde would take an array for a struct's fields in order,
    // and name the struct in its complaint about anything else.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') && serde_json::from_slice::<Value>(&bytes).is_ok() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            e.to_string(),
        ),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        ),
    })
}

/// The `Idempotency-Key` header, if any: at most 128 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default().trim();
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 128 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = authenticate(&state, &headers).await?;
    let request: CreateRequest = json_body(&state, &headers, body).await?;
    let idem_key = idempotency_key(&headers)?;
    let request_hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&request).expect("requests serialize"),
    ));
    let started = state
        .service
        .start(NewVerification {
            phone: request.phone,
            user_ref: request.user_ref,
            locale: request.locale,
            code_length: request.code_length,
            callback_url: request.callback_url,
            mode: request.mode,
            api_key_id: Some(key.id.clone()),
            idempotency: idem_key.clone().map(|k| (k, request_hash)),
        })
        .await?;
    let body = serde_json::to_vec(&started.view).expect("views serialize");
    if let Some(idem_key) = idem_key {
        let slot = (key.id, idem_key);
        if !started.replayed {
            state.replays.remember(slot, body.clone());
        } else if let Some(first) = state.replays.get(&slot) {
            // The same answer as the first time, code included.
            return Ok(json_response(StatusCode::CREATED, first));
        } else {
            // The first answer is gone (the daemon restarted): the verification without
            // its code, and no second call.
            let mut response = json_response(StatusCode::OK, body);
            response
                .headers_mut()
                .insert("idempotent-replayed", "true".parse().expect("header value"));
            return Ok(response);
        }
    }
    Ok(json_response(StatusCode::CREATED, body))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The id in the path, once the caller is known: a verification another key made, or one
/// made with the CLI (no key's), is reported as not found, and so is an id that is not even
/// a path segment.
async fn owned_id(
    state: &ApiState,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let key = authenticate(state, headers).await?;
    let Ok(Path(id)) = id else {
        return Err(ApiError::not_found());
    };
    let owner = state.service.owner(&id).await?;
    if owner.as_deref() != Some(key.id.as_str()) {
        return Err(ApiError::not_found());
    }
    Ok(id)
}

async fn show(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = owned_id(&state, &headers, id).await?;
    Ok(Json(state.service.get(&id).await?).into_response())
}

async fn cancel(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = owned_id(&state, &headers, id).await?;
    Ok(Json(state.service.cancel(&id).await?).into_response())
}

/// The web app checks the code its user typed in (read-code mode).
async fn check(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let id = owned_id(&state, &headers, id).await?;
    let request: CheckRequest = json_body(&state, &headers, body).await?;
    Ok(Json(state.service.check(&id, &request.code).await?).into_response())
}
