//! A webhook receiver for tests: records what the daemon posts, can fail at first.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use callverify::outbound::webhooks::sign;

pub const SECRET: &str = "whsec-test-0123456789";

/// (signature header, body) of each request received.
pub type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Received,
    /// Answer 500 to this many requests first.
    failures: Arc<Mutex<usize>>,
}

pub async fn receiver(failures: usize) -> (SocketAddr, Receiver) {
    let r = Receiver {
        failures: Arc::new(Mutex::new(failures)),
        ..Default::default()
    };
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let signature = headers
                    .get("callverify-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let mut failures = state.failures.lock().unwrap();
                if *failures > 0 {
                    *failures -= 1;
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                state.got.lock().unwrap().push((signature, body.to_vec()));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, r)
}

pub fn verify_signature(header: &str, body: &[u8]) {
    let t: i64 = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("bad header {header:?}"));
    assert_eq!(header, sign(SECRET, t, body), "signature matches the body");
    let age = callverify::domain::clock::now_ms() / 1000 - t;
    assert!((0..60).contains(&age), "fresh timestamp");
}
