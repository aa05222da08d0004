//! HTTP/1.1 spoken raw to the daemon, so that hostile bodies reach it as sent.

use std::net::SocketAddr;

use callverify::domain::api_keys::ApiKeys;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Daemon, Db};

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    // A server may answer before reading a body it refuses.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        headers: head,
        body: raw[split + 4..].to_vec(),
    }
}

/// A daemon and an API key for it.
pub struct Api {
    pub d: Daemon,
    pub key: String,
}

impl Api {
    pub async fn new(db: Db) -> Self {
        Self::with(db, |_| {}).await
    }

    pub async fn with(db: Db, tweak: impl FnOnce(&mut callverify::config::Config)) -> Self {
        let d = crate::common::start_with(db, tweak).await;
        let (_, key) = ApiKeys::new(d.store.clone()).create("tests").await.unwrap();
        Self { d, key }
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.key)
    }

    pub async fn post(&self, path: &str, body: &Value, extra: &[(&str, &str)]) -> Reply {
        let auth = self.auth();
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        http(
            self.d.http,
            "POST",
            path,
            &headers,
            body.to_string().as_bytes(),
        )
        .await
    }

    pub async fn raw_post(&self, content_type: &str, body: &[u8]) -> Reply {
        let auth = self.auth();
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", content_type),
        ];
        http(self.d.http, "POST", "/v1/verifications", &headers, body).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let auth = self.auth();
        http(
            self.d.http,
            "GET",
            path,
            &[("Authorization", auth.as_str())],
            b"",
        )
        .await
    }
}
