//! HTTP, on one listener (`http.listen`): the JSON API the web app calls ([`api`]) and the
//! support staff's console ([`console`]), side by side, each over its own state.

pub mod api;
pub mod console;
pub mod request_view;

use std::future::Future;
use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::{middleware, Router};
use tokio::net::TcpListener;

use api::{ApiError, ApiState};
use console::ConsoleState;

/// The API and the console, and one answer for everything else.
pub fn router(api: Arc<ApiState>, console: Arc<ConsoleState>) -> Router {
    api::router(api)
        .merge(console::router(console))
        .layer(middleware::map_response(hardened))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed here",
            )
        })
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

/// Serve the API and the console on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    api: Arc<ApiState>,
    console: Arc<ConsoleState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api, console))
        .with_graceful_shutdown(shutdown)
        .await
}
