//! The manual-verification queue over the API (the support console's twin for the web app):
//! `GET /v1/manual-requests` (searched, paged by cursor), `GET /v1/manual-requests/{id}`
//! (+ `/recording`),
//! `POST /v1/manual-requests/{id}/approve|reject`. A key sees requests about its own
//! verifications and those that matched none.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{authenticate, json_body, ApiError, ApiState};
use crate::domain::api_keys::ApiKey;
use crate::domain::clock::now_ms;
use crate::domain::status::RequestStatus;
use crate::support::request::{Cursor, RequestFilter, Search};
use crate::support::{Actor, SupportError};
use crate::web::request_view::RequestView;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `open` (default), `approved`, `rejected` or `all`.
    status: Option<String>,
    limit: Option<i64>,
    /// A phone number in any format, a user_ref, a request or verification id, or words of
    /// the transcript.
    q: Option<String>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = authenticate(&state, &headers).await?;
    let Query(query) = query.map_err(|e| invalid_query(e.body_text()))?;
    let status = match query.status.as_deref().unwrap_or("open") {
        "all" => None,
        s => Some(
            s.parse::<RequestStatus>()
                .map_err(|()| invalid_query("status must be open, approved, rejected or all"))?,
        ),
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid_query(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    let search = Search::parse(query.q.as_deref().unwrap_or_default())
        .map_err(|e| invalid_query(format!("q: {e}")))?;
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(Cursor::decode(text).ok_or_else(|| {
            invalid_query("cursor is not one this API gave out (pass next_cursor as it came)")
        })?),
    };
    let page = state
        .support
        .list(RequestFilter {
            status,
            api_key_id: Some(key.id),
            search,
            after,
            limit,
        })
        .await?;
    let views = RequestView::listed(&page.requests, &state.support);
    let next_cursor = page.next.as_ref().map(Cursor::encode);
    Ok(
        Json(serde_json::json!({ "manual_requests": views, "next_cursor": next_cursor }))
            .into_response(),
    )
}

pub async fn show(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (key, id) = visible(&state, &headers, id).await?;
    let row = state
        .support
        .open(&id, &Actor::api_key(&key.id), false)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(RequestView::new(&row, &state.support, true, now_ms())).into_response())
}

pub async fn recording(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (key, id) = visible(&state, &headers, id).await?;
    let wav = state
        .support
        .recording(&id, &Actor::api_key(&key.id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    // A caller's voice: kept by no cache on the way, so that it outlives no purge.
    let headers = [
        (header::CONTENT_TYPE, "audio/wav"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    Ok((headers, wav).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// For a request that matched no verification.
    verification_id: Option<String>,
}

pub async fn approve(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let (key, id) = visible(&state, &headers, id).await?;
    let has_body = headers.contains_key(header::CONTENT_TYPE);
    let body: ApproveBody = if has_body {
        json_body(&state, &headers, body).await?
    } else {
        ApproveBody::default()
    };
    if let Some(vid) = &body.verification_id {
        // Only the key's own verifications: not another key's, nor one made with the CLI.
        let owner = state.service.owner(vid).await?;
        if owner.as_deref() != Some(key.id.as_str()) {
            return Err(ApiError::from(SupportError::NotApprovable(
                "no such verification".into(),
            )));
        }
    }
    let actor = Actor::api_key(&key.id);
    state
        .support
        .approve(&id, body.verification_id, &actor)
        .await?;
    decided(&state, &id).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    reason: String,
}

pub async fn reject(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let (key, id) = visible(&state, &headers, id).await?;
    let body: RejectBody = json_body(&state, &headers, body).await?;
    let actor = Actor::api_key(&key.id);
    state.support.reject(&id, &body.reason, &actor).await?;
    decided(&state, &id).await
}

async fn decided(state: &ApiState, id: &str) -> Result<Response, ApiError> {
    let row = state
        .support
        .peek(id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(RequestView::new(&row, &state.support, false, now_ms())).into_response())
}

/// The caller's key and the request id, if the key may see it (see
/// [`ManualRequest::visible_to`]): others are not found.
async fn visible(
    state: &ApiState,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<(ApiKey, String), ApiError> {
    let key = authenticate(state, headers).await?;
    let Ok(Path(id)) = id else {
        return Err(ApiError::not_found());
    };
    let row = state
        .support
        .peek(&id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if !row.visible_to(&key.id) {
        return Err(ApiError::not_found());
    }
    Ok((key, id))
}

fn invalid_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}
