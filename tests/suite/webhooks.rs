//! End to end as the web app sees it: `POST /v1/verifications` leads to an Originate on the
//! emulated AMI; the answered call's FastAGI session verifies; the webhook receiver gets the
//! status changes, in order, correctly signed, also when it fails at first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::hooks::{receiver, verify_signature, SECRET};
use crate::common::{Db, PHONE};
use callverify::config::Config;
use callverify::domain::api_keys::ApiKeys;
use callverify::domain::status::Status;
use callverify::domain::{NewVerification, VerifyError};
use callverify_testkit::emulator::ami::{AmiPeer, Callee, Keys};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get_text(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw.split_once("\r\n\r\n").unwrap().1.to_owned()
}

async fn post_json(addr: SocketAddr, key: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/verifications HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 201"), "{raw}");
    serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap()
}

async fn api_call_verifies_and_the_webhook_follows(db: Db) {
    let (hook, received) = receiver(2).await;
    let peer = AmiPeer::start("callverify", "ami-secret").await.unwrap();
    let peer_port = peer.addr.port();
    let d = crate::common::start_with(db, move |c: &mut Config| {
        c.ami.host = "127.0.0.1".into();
        c.ami.port = peer_port;
        c.ami.secret = "ami-secret".into();
        c.dialer.max_per_second = 50;
        c.webhooks.secret = SECRET.into();
        c.webhooks.retry_base_ms = 50;
    })
    .await;
    peer.set_agi(d.addr);
    let keys: Keys = Arc::default();
    peer.callee(PHONE, Callee::Answer(keys.clone()));
    let (_, api_key) = ApiKeys::new(d.store.clone()).create("web").await.unwrap();
    let created = post_json(
        d.http,
        &api_key,
        &serde_json::json!({
            "phone": PHONE,
            "user_ref": "alice",
            "callback_url": format!("http://{hook}/hook"),
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    *keys.lock().unwrap() = vec!["#".into(), created["code"].as_str().unwrap().into()];

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = received.got.lock().unwrap().clone();
        let statuses: Vec<String> = got
            .iter()
            .map(|(_, body)| {
                let v: Value = serde_json::from_slice(body).unwrap();
                v["status"].as_str().unwrap().to_owned()
            })
            .collect();
        if statuses.last().map(String::as_str) == Some("verified") {
            assert_eq!(statuses, ["calling", "verified"], "in order, each once");
            for (signature, body) in &got {
                verify_signature(signature, body);
                let v: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(v["verification_id"], id.as_str());
                assert_eq!(v["type"], "verification.status_changed");
            }
            break;
        }
        assert!(Instant::now() < deadline, "webhooks so far: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(d.status(&id).await.status, Status::Verified);
    assert_eq!(peer.originated().len(), 1);
    let outbox = d.store.events(&id).await.unwrap();
    assert_eq!(outbox.len(), 2);
    assert!(outbox.iter().all(|(_, delivered, _)| *delivered));
    assert!(
        outbox[0].2 >= 3,
        "the first event was retried after two failures"
    );
    let metrics = get_text(d.http, "/metrics").await;
    for line in [
        "callverify_calls_total{outcome=\"verified\"} 1",
        "callverify_verifications_created_total 1",
        "callverify_ami_connected{state=\"connected\"} 1",
        "callverify_calls_in_progress 0",
        "callverify_webhooks_undelivered 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    d.stop().await;
}

/// Without a receiver (no callback_url, no webhooks.url) nothing is queued; with
/// webhooks.url set, verifications without a callback_url go there.
async fn events_are_queued_only_for_a_receiver(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.verify_by_keypad(PHONE, "quiet").await;
    assert!(d.store.events(&v.id).await.unwrap().is_empty());
    d.stop().await;

    let (hook, received) = receiver(0).await;
    let d = crate::common::start_with(db, move |c: &mut Config| {
        c.webhooks.url = format!("http://{hook}/hook");
        c.webhooks.secret = SECRET.into();
        c.webhooks.retry_base_ms = 50;
    })
    .await;
    let v = d.new_verification(PHONE, "default-receiver").await;
    d.service.cancel(&v.id).await.unwrap();
    // A hang guard, not a timing target (a loaded machine is slow).
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.got.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no webhook at webhooks.url");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (signature, body) = received.got.lock().unwrap()[0].clone();
    verify_signature(&signature, &body);
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["status"], "canceled");
    d.stop().await;
}

/// A callback URL into this host is refused in every spelling of its address when the
/// verification is made, and one already stored (as a DNS name that resolved elsewhere when
/// it was checked would be) reaches nothing when the webhook is sent.
async fn callback_urls_cannot_reach_this_host(db: Db) {
    let (hook, received) = receiver(0).await;
    let d = crate::common::start_with(db, move |c: &mut Config| {
        c.webhooks.secret = SECRET.into();
        c.webhooks.retry_base_ms = 50;
        c.webhooks.allow_private_callbacks = false;
    })
    .await;
    let port = hook.port();
    for host in [
        "2130706433",
        "0x7f.1",
        "127.1",
        "0",
        "0177.0.0.1",
        "[::ffff:7f00:1]",
    ] {
        let err = d
            .service
            .start(NewVerification {
                phone: PHONE.into(),
                user_ref: format!("ssrf-{host}"),
                callback_url: Some(format!("http://{host}:{port}/hook")),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::PrivateCallbackUrl),
            "{host}: {err:?}"
        );
    }
    let mut row = crate::common::pending_row("vf_ssrf", PHONE, "ssrf-stored");
    row.callback_url = Some(format!("http://2130706433:{port}/hook"));
    d.store.insert_verification(&row).await.unwrap();
    d.service.cancel("vf_ssrf").await.unwrap();
    // A hang guard, not a timing target.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = d.store.events("vf_ssrf").await.unwrap();
        if events.iter().any(|(_, _, attempts)| *attempts > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the event was never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Given up at once (closed after one try), not retried: it can never be delivered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = d.store.events("vf_ssrf").await.unwrap();
    assert_eq!(events, vec![("canceled".to_owned(), true, 1)]);
    assert!(
        received.got.lock().unwrap().is_empty(),
        "the webhook reached this host"
    );
    d.stop().await;
}

on_both_backends!(
    callback_urls_cannot_reach_this_host,
    api_call_verifies_and_the_webhook_follows,
    events_are_queued_only_for_a_receiver,
);
