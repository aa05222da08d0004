//! The support console at `/console/`: staff sign in (accounts from `callverify staff add`),
//! work the manual-verification queue (open requests oldest first), open a request (the full number, the
//! recording, the transcript; opening and playing are audited), approve or reject it.
//!
//! Sessions are a random token in an HttpOnly, SameSite=Strict cookie scoped to /console;
//! every form carries the session's CSRF token (the sign-in form a cookie-bound one), checked
//! in constant time. Pages are plain HTML, sent with a strict Content-Security-Policy.

mod html;

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::clock::now_ms;
use crate::domain::ids::random_token;
use crate::domain::status::RequestStatus;
use crate::domain::status::StaffRole;
use crate::store::StoreError;
use crate::support::account::StaffSession;
use crate::support::request::{AuditFilter, Cursor, RequestFilter, Search};
use crate::support::staff::{csrf_matches, Staff, StaffError};
use crate::support::{Actor, Support, SupportError};
use crate::web::request_view::RequestView;

const SESSION_COOKIE: &str = "cv_session";
const LOGIN_COOKIE: &str = "cv_login";
/// Requests per page of the queue.
const QUEUE_PAGE: i64 = 50;
/// The largest form body the console reads.
const FORM_LIMIT: usize = 16 * 1024;

/// What the console's handlers share.
pub struct ConsoleState {
    pub support: Arc<Support>,
    /// Staff accounts and their sessions.
    pub staff: Staff,
    /// The console's cookies are `Secure` (served behind TLS).
    pub secure_cookies: bool,
    /// Signs the sign-in form's token: the server's key (`security.secret`, shared by the
    /// daemons of one store), so that only a token a daemon issued is taken.
    pub form_key: Vec<u8>,
}

pub fn router(state: Arc<ConsoleState>) -> Router {
    Router::new()
        .route("/console", get(|| async { redirect("/console/") }))
        .route("/console/", get(queue))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/audit", get(audit))
        .route("/console/audit/decisions.csv", get(decisions_csv))
        .route("/console/requests/{id}", get(show))
        .route("/console/requests/{id}/recording.wav", get(recording))
        .route("/console/requests/{id}/approve", post(approve))
        .route("/console/requests/{id}/reject", post(reject))
        // Forms hold a name, a password (at most 1,024 characters), a token, a reason: a
        // bigger body is refused before it is read, so failed sign-ins cost no memory.
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .with_state(state)
}

/// What a console request can end in, as an HTML page with a fitting status.
enum Refusal {
    SignedOut,
    Forged,
    /// For administrators only.
    NotAllowed,
    NotFound,
    Conflict(String),
    Throttled(String),
    Store(StoreError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            Refusal::SignedOut => (
                StatusCode::UNAUTHORIZED,
                "Signed out",
                "Please sign in again.".to_owned(),
            ),
            Refusal::Forged => (
                StatusCode::FORBIDDEN,
                "Form refused",
                "This form is out of date or did not come from the console: reload the page and try again."
                    .to_owned(),
            ),
            Refusal::NotFound => (StatusCode::NOT_FOUND, "Not found", "No such request.".to_owned()),
            Refusal::NotAllowed => (
                StatusCode::FORBIDDEN,
                "Administrators only",
                "The audit log is for administrators (callverify staff set NAME --admin)."
                    .to_owned(),
            ),
            Refusal::Conflict(text) => (StatusCode::CONFLICT, "Not done", text),
            Refusal::Throttled(text) => (StatusCode::TOO_MANY_REQUESTS, "Signed out", text),
            Refusal::Store(e) => {
                tracing::error!(error = %e, "support console request failed on the store");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error",
                    "The store could not be reached; try again.".to_owned(),
                )
            }
        };
        let link = matches!(status, StatusCode::UNAUTHORIZED)
            .then_some("<p><a href=\"/console/login\">Sign in</a></p>")
            .unwrap_or_default();
        let body = html::message(title, &text, None) + link;
        (status, page_headers(), body).into_response()
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

impl From<SupportError> for Refusal {
    fn from(e: SupportError) -> Self {
        match e {
            SupportError::NotFound => Refusal::NotFound,
            SupportError::Store(e) => Refusal::Store(e),
            other => Refusal::Conflict(other.to_string()),
        }
    }
}

fn page_headers() -> [(header::HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; media-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ]
}

fn html_page(body: String) -> Response {
    (page_headers(), body).into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(
    state: &ConsoleState,
    name: &str,
    value: &str,
    max_age_secs: u64,
) -> (header::HeaderName, String) {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    (
        header::SET_COOKIE,
        format!(
            "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
        ),
    )
}

/// The signed-in staff member, or the refusal a signed-out request gets.
async fn staff(
    state: &ConsoleState,
    headers: &HeaderMap,
) -> Result<(StaffSession, Actor), Refusal> {
    let token = cookie(headers, SESSION_COOKIE).ok_or(Refusal::SignedOut)?;
    let session = state
        .staff
        .session(token)
        .await?
        .ok_or(Refusal::SignedOut)?;
    let actor = Actor::staff(&session.username);
    Ok((session, actor))
}

#[derive(Deserialize)]
struct QueueQuery {
    status: Option<String>,
    /// The search box.
    q: Option<String>,
    /// Where the page starts (the link to the next page carries it).
    cursor: Option<String>,
}

async fn queue(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    query: Result<Query<QueueQuery>, QueryRejection>,
) -> Result<Response, Refusal> {
    let Ok((session, _)) = staff(&state, &headers).await else {
        return Ok(redirect("/console/login"));
    };
    let query = query.ok().map(|Query(q)| q);
    let (shown, q, cursor) = match query {
        Some(q) => (q.status, q.q.unwrap_or_default(), q.cursor),
        None => (None, String::new(), None),
    };
    let status = match shown.as_deref().unwrap_or("open") {
        "all" => None,
        other => Some(
            other
                .parse::<RequestStatus>()
                .unwrap_or(RequestStatus::Open),
        ),
    };
    let (search, problem) = match Search::parse(&q) {
        Ok(search) => (search, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let filter = RequestFilter {
        status,
        api_key_id: None,
        search,
        after: cursor.as_deref().and_then(Cursor::decode),
        limit: QUEUE_PAGE,
    };
    let counts = state.support.counts(filter.clone()).await?;
    let page = state.support.list(filter).await?;
    let views = RequestView::listed(&page.requests, &state.support);
    Ok(html_page(html::queue(
        &html::Queue {
            requests: &views,
            status: status.map_or("all", RequestStatus::as_str),
            search: &q,
            problem: problem.as_deref(),
            counts: &counts,
            first_page: cursor.is_some(),
            next: page.next.as_ref().map(Cursor::encode),
            times: &times(&state, &session),
            admin: session.role == StaffRole::Admin,
        },
        (&session.username, &session.csrf_token),
    )))
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    /// First and last day (YYYY-MM-DD, in the staff member's zone).
    from: Option<String>,
    to: Option<String>,
    /// The page after (older than) this entry.
    before: Option<i64>,
}

/// Entries of the audit log per page.
const AUDIT_PAGE: i64 = 100;

/// The audit log for administrators: who did what when, filtered by actor, action and days.
async fn audit(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Refusal> {
    let session = administrator(&state, &headers).await?;
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let times = times(&state, &session);
    let (mut filter, problem) = audit_filter(&query, &times);
    filter.limit = AUDIT_PAGE + 1;
    let mut entries = state.support.audit_log(filter).await?;
    let more = entries.len() as i64 > AUDIT_PAGE;
    entries.truncate(AUDIT_PAGE as usize);
    let next = more.then(|| entries.last().map(|e| e.id)).flatten();
    Ok(html_page(html::audit(
        &html::AuditPage {
            entries: &entries,
            actor: query.actor.as_deref().unwrap_or_default(),
            action: query.action.as_deref().unwrap_or_default(),
            from: query.from.as_deref().unwrap_or_default(),
            to: query.to.as_deref().unwrap_or_default(),
            problem: problem.as_deref(),
            next,
            times: &times,
        },
        (&session.username, &session.csrf_token),
    )))
}

/// The decisions (approvals and rejections) of the days asked for, as CSV, oldest first.
async fn decisions_csv(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Refusal> {
    let session = administrator(&state, &headers).await?;
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let times = times(&state, &session);
    let (filter, problem) = audit_filter(&query, &times);
    if let Some(problem) = problem {
        return Err(Refusal::Conflict(problem));
    }
    let mut decisions = Vec::new();
    let mut before = None;
    loop {
        let page = state
            .support
            .audit_log(AuditFilter {
                before_id: before,
                limit: 1000,
                ..filter.clone()
            })
            .await?;
        before = page.last().map(|e| e.id);
        let done = page.len() < 1000;
        decisions.extend(
            page.into_iter()
                .filter(|e| matches!(e.action.as_str(), "approve" | "reject")),
        );
        if done {
            break;
        }
    }
    decisions.reverse();
    // Days only (they were parsed above): nothing else reaches the header.
    let day = |d: Option<&str>, none: &str| -> String {
        let d: String = d
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        if d.is_empty() {
            none.to_owned()
        } else {
            d
        }
    };
    let name = format!(
        "decisions-{}-{}.csv",
        day(query.from.as_deref(), "start"),
        day(query.to.as_deref(), "now")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        html::decisions_csv(&decisions, &times),
    )
        .into_response())
}

/// The signed-in staff member, if an administrator.
async fn administrator(state: &ConsoleState, headers: &HeaderMap) -> Result<StaffSession, Refusal> {
    let (session, _) = staff(state, headers).await?;
    if session.role != StaffRole::Admin {
        return Err(Refusal::NotAllowed);
    }
    Ok(session)
}

/// The store's filter for an audit query, and what was wrong with its days, if anything.
fn audit_filter(query: &AuditQuery, times: &html::Times) -> (AuditFilter, Option<String>) {
    let day = |text: Option<&str>, next: bool| -> Result<Option<i64>, String> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let date: jiff::civil::Date = text
            .parse()
            .map_err(|_| format!("{text:?} is not a day like 2026-12-01"))?;
        let date = if next {
            date.tomorrow().map_err(|e| e.to_string())?
        } else {
            date
        };
        date.to_zoned_datetime(times.zone.clone())
            .map(|z| Some(z.timestamp().as_millisecond()))
            .map_err(|e| e.to_string())
    };
    let blank = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let mut problem = None;
    let mut since = None;
    let mut until = None;
    match (
        day(query.from.as_deref(), false),
        day(query.to.as_deref(), true),
    ) {
        (Ok(a), Ok(b)) => (since, until) = (a, b),
        (Err(e), _) | (_, Err(e)) => problem = Some(e),
    }
    (
        AuditFilter {
            actor: blank(&query.actor),
            action: blank(&query.action),
            since,
            until,
            before_id: query.before,
            limit: AUDIT_PAGE,
        },
        problem,
    )
}

/// How this staff member's pages show times: in their zone, else the support desk's.
fn times(state: &ConsoleState, session: &StaffSession) -> html::Times {
    html::Times {
        zone: state.support.zone_for(session.time_zone.as_deref()),
        now: now_ms(),
    }
}

/// A sign-in form's token: a random nonce and its HMAC under the server's key. Compared
/// with the cookie as well, it cannot be one the client chose (a cookie planted from a
/// sibling domain, say): only a token a daemon issued verifies.
fn login_token(key: &[u8]) -> String {
    let nonce = random_token("", 24);
    let signature = login_signature(key, &nonce);
    format!("{nonce}.{signature}")
}

fn login_token_valid(key: &[u8], token: &str) -> bool {
    let Some((nonce, signature)) = token.split_once('.') else {
        return false;
    };
    bool::from(
        login_signature(key, nonce)
            .as_bytes()
            .ct_eq(signature.as_bytes()),
    )
}

fn login_signature(key: &[u8], nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(b"callverify console sign-in form\0");
    mac.update(nonce.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn login_page(State(state): State<Arc<ConsoleState>>) -> Response {
    let token = login_token(&state.form_key);
    let body = html::login(&token, None);
    let cookie = set_cookie(&state, LOGIN_COOKIE, &token, 3600);
    (page_headers(), [cookie], body).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, Refusal> {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty()
        || !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes()))
        || !login_token_valid(&state.form_key, &form.csrf)
    {
        return Err(Refusal::Forged);
    }
    let signed_in = state
        .staff
        .sign_in(&form.username, &form.password)
        .await
        .map_err(|e| match e {
            StaffError::Store(e) => Refusal::Store(e),
            throttled @ StaffError::Throttled(_) => Refusal::Throttled(throttled.to_string()),
            other => Refusal::Conflict(other.to_string()),
        })?;
    let Some(signed_in) = signed_in else {
        let body = html::login(expected, Some("Wrong name or password."));
        return Ok((StatusCode::UNAUTHORIZED, page_headers(), body).into_response());
    };
    let cookie = set_cookie(
        &state,
        SESSION_COOKIE,
        &signed_in.token,
        state.staff.session_secs(),
    );
    Ok((
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/console/".to_owned()), cookie],
    )
        .into_response())
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Refusal> {
    let (session, _) = staff(&state, &headers).await?;
    if !csrf_matches(&session, &form.csrf) {
        return Err(Refusal::Forged);
    }
    state
        .staff
        .sign_out(&session, cookie(&headers, SESSION_COOKIE))
        .await?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/console/login".to_owned()),
            set_cookie(&state, SESSION_COOKIE, "", 0),
        ],
    )
        .into_response())
}

fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, Refusal> {
    id.map(|Path(id)| id).map_err(|_| Refusal::NotFound)
}

#[derive(Deserialize)]
struct ShowQuery {
    /// Set by the redirect after approve or reject (`back_to`).
    #[serde(default)]
    after: Option<String>,
}

async fn show(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> Result<Response, Refusal> {
    let (session, actor) = staff(&state, &headers).await?;
    let id = path_id(id)?;
    let after_decision = query.is_ok_and(|Query(q)| q.after.as_deref() == Some("decision"));
    let row = state
        .support
        .open(&id, &actor, after_decision)
        .await?
        .ok_or(Refusal::NotFound)?;
    let history = state.support.history(&row).await?;
    let view = RequestView::new(&row, &state.support, true, now_ms());
    Ok(html_page(html::request(
        &view,
        &history,
        &times(&state, &session),
        (&session.username, &session.csrf_token),
    )))
}

async fn recording(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Refusal> {
    let (_, actor) = staff(&state, &headers).await?;
    let id = path_id(id)?;
    let wav = state
        .support
        .recording(&id, &actor)
        .await?
        .ok_or(Refusal::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, "audio/wav"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        wav,
    )
        .into_response())
}

#[derive(Deserialize)]
struct ApproveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    verification_id: Option<String>,
    /// `yes` from the confirmation page; otherwise that page is shown first.
    #[serde(default)]
    confirm: Option<String>,
}

async fn approve(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    Form(form): Form<ApproveForm>,
) -> Result<Response, Refusal> {
    let (session, actor) = staff(&state, &headers).await?;
    if !csrf_matches(&session, &form.csrf) {
        return Err(Refusal::Forged);
    }
    let id = path_id(id)?;
    let verification_id = form
        .verification_id
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    if form.confirm.as_deref() != Some("yes") {
        let decision = html::Confirming::Approve {
            verification_id: verification_id.as_deref(),
        };
        return confirmation(&state, &session, &id, &decision).await;
    }
    state.support.approve(&id, verification_id, &actor).await?;
    Ok(back_to(&id))
}

/// The confirmation page of a decision on request `id` (nothing is audited: the request is
/// not opened again, and its number is not shown).
async fn confirmation(
    state: &ConsoleState,
    session: &StaffSession,
    id: &str,
    decision: &html::Confirming<'_>,
) -> Result<Response, Refusal> {
    let request = state.support.peek(id).await?.ok_or(Refusal::NotFound)?;
    if request.status != RequestStatus::Open {
        return Err(Refusal::Conflict(format!(
            "This request was {} already.",
            request.status
        )));
    }
    let view = RequestView::new(&request, &state.support, false, now_ms());
    Ok(html_page(html::confirm(
        &view,
        decision,
        (&session.username, &session.csrf_token),
    )))
}

#[derive(Deserialize)]
struct RejectForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    /// `yes` from the confirmation page; otherwise that page is shown first.
    #[serde(default)]
    confirm: Option<String>,
}

async fn reject(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    Form(form): Form<RejectForm>,
) -> Result<Response, Refusal> {
    let (session, actor) = staff(&state, &headers).await?;
    if !csrf_matches(&session, &form.csrf) {
        return Err(Refusal::Forged);
    }
    let id = path_id(id)?;
    if form.confirm.as_deref() != Some("yes") {
        let decision = html::Confirming::Reject {
            reason: form.reason.trim(),
        };
        return confirmation(&state, &session, &id, &decision).await;
    }
    state.support.reject(&id, &form.reason, &actor).await?;
    Ok(back_to(&id))
}

/// After a decision, the request's page (which shows it).
/// The request's page again, after a decision on it.
fn back_to(id: &str) -> Response {
    let location = format!("/console/requests/{}?after=decision", urlencode(id));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_signed_with_the_key_are_valid() {
        let token = login_token(b"key");
        assert!(login_token_valid(b"key", &token));
        assert!(!login_token_valid(b"other key", &token));
        assert!(!login_token_valid(b"key", "chosen-by-the-client"));
        let (nonce, _) = token.split_once('.').unwrap();
        assert!(!login_token_valid(b"key", &format!("{nonce}.00")));
    }
}
