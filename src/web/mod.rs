//! HTTP, on one listener (`http.listen`): the JSON API the web app calls ([`api`]) and the
//! support staff's console ([`console`]), side by side, each over its own state.
//!
//! The listener has its own accept loop, in the manner of mini-redis: at most
//! `http.max_connections` connections at once (more wait in the kernel's backlog, and the
//! calls' FastAGI and AudioSocket places are never touched), a time limit on each request's
//! headers and on the idle wait for the next one, another on each request's handling, its
//! body included, a write deadline (a client that reads nothing of its answers for that time
//! is cut off, see [`write_deadline`]) and a graceful shutdown.

pub mod api;
pub mod console;
pub mod request_view;
mod write_deadline;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use callverify_pbx::admission::{allowed, LogBudget};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use api::{ApiError, ApiState};
use console::ConsoleState;
use write_deadline::WriteDeadline;

/// Limits of the HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Who may connect; others are closed at once.
    pub allow: Vec<IpNet>,
    pub max_connections: usize,
    /// For a request's headers and the idle wait for the next one; for a request's
    /// handling, its body included; and for writes of its answer that make no progress.
    pub timeout: Duration,
}

/// The API and the console, and one answer for everything else.
pub fn router(api: Arc<ApiState>, console: Arc<ConsoleState>, timeout: Duration) -> Router {
    api::router(api)
        .merge(console::router(console))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed here",
            )
        })
        .layer(middleware::from_fn_with_state(timeout, within))
        .layer(middleware::map_response(hardened))
}

/// A request's handling, reading its body included, within the time limit: a client that
/// sends its body a byte at a time gets 408.
async fn within(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request was not complete within {limit:?}"),
        )
        .into_response(),
    }
}

/// Every response, the framework's own error pages included: never content-sniffed, never
/// framed, and without a policy of its own (the console's pages set theirs) allowed to load
/// nothing.
async fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ));
    headers
        .entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    response
}

/// Serve the API and the console on `listener` until `shutdown` completes, then let
/// requests in progress finish (for `limits.timeout` at most).
pub async fn serve(
    listener: TcpListener,
    api: Arc<ApiState>,
    console: Arc<ConsoleState>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let app = router(api, console, limits.timeout);
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let failures = LogBudget::default();
    let refusals = LogBudget::default();
    tokio::pin!(shutdown);
    loop {
        let place = tokio::select! {
            () = &mut shutdown => break,
            place = places.clone().acquire_owned() => place.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if allowed(&limits.allow, peer.ip()) => (stream, peer),
                Ok((_, peer)) => {
                    if let Some(suppressed) = refusals.allow() {
                        tracing::warn!(%peer, suppressed,
                            "HTTP connection from outside http.allow refused");
                    }
                    continue;
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    if let Some(suppressed) = failures.allow() {
                        tracing::error!(error = %e, suppressed,
                            "accepting an HTTP connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // hyper has no write timeout: a client that pipelines requests and never reads the
        // answers would otherwise hold its place for as long as it keeps the socket open.
        let stream = WriteDeadline::new(stream, limits.timeout, peer);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that went away or timed out: nothing to report.
            let _ = connection.await;
            drop(place);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still running at shutdown were cut off");
    }
}
