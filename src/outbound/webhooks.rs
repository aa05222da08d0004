//! Webhooks: every status change in the outbox is POSTed to the verification's
//! `callback_url` or `webhooks.url`, signed, retried with backoff until delivered: at least
//! once, in order per verification.
//!
//! Signature: header `Callverify-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `<t>.<body>` with `webhooks.secret`, as a receiver checks it (and rejects old `t`).
//!
//! A `callback_url` (the API caller's) is checked again when it is used, unless
//! `webhooks.allow_private_callbacks`: its host as parsed, and every address its name
//! resolves to, the addresses the request may connect to (a name that resolves into an
//! internal network, at once or after a DNS change, reaches nothing), and never through a
//! proxy (which would resolve the name itself). Redirects are never followed.
//! `webhooks.url` is the admin's and is sent as configured, through `HTTP(S)_PROXY` if set.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, Mac};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;
use tokio::sync::watch;

use crate::domain::callback;
use crate::domain::clock::{now_ms, rfc3339};
use crate::domain::verification::StatusEvent;
use crate::store::Store;

pub const SIGNATURE_HEADER: &str = "Callverify-Signature";

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where events go when the verification has no `callback_url`; empty: nowhere.
    pub url: String,
    pub secret: String,
    pub timeout: Duration,
    /// First retry after this; doubling up to an hour.
    pub retry_base: Duration,
    /// `callback_url`s may reach this host and internal networks (tests and labs only).
    pub allow_private_callbacks: bool,
}

/// Why an event was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undelivered {
    /// Tried again later, with backoff.
    Retry(String),
    /// Never deliverable (a callback URL into an internal network): given up at once.
    Never(String),
}

/// Name resolution that keeps only addresses outside this host and internal networks.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !callback::is_internal(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves only to internal addresses (webhooks.allow_private_callbacks)"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Events are given up after this long undelivered (the web app can still read statuses).
const GIVE_UP_AFTER: i64 = 72 * 3600 * 1000;
/// Events claimed at a time.
const BATCH: usize = 100;
/// Events sent at once.
const PARALLEL: usize = 16;

/// The signature header's value for `body` sent at `t` (Unix seconds).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON body of an event.
pub fn body(event: &StatusEvent) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": format!("evt_{}", event.id),
        "type": "verification.status_changed",
        "verification_id": event.verification_id,
        "status": event.status,
        "occurred_at": rfc3339(event.created_at),
    }))
    .expect("events serialize")
}

pub struct Sender {
    config: WebhookConfig,
    store: Store,
    /// This daemon's name, on the events it claims.
    daemon: String,
    /// For `webhooks.url`.
    client: reqwest::Client,
    /// For `callback_url`s: connects to public addresses only, never through a proxy.
    guarded: reqwest::Client,
}

impl Sender {
    pub fn new(
        config: WebhookConfig,
        store: Store,
        daemon: String,
    ) -> Result<Self, reqwest::Error> {
        let builder = || {
            reqwest::Client::builder()
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
        };
        // `webhooks.url` is the admin's: it goes through a proxy the environment names
        // (`HTTP(S)_PROXY`), as other outbound HTTP on a locked-down host may have to.
        let client = builder().build()?;
        // A `callback_url` never does: the proxy would resolve its name and connect, and
        // what `PublicOnly` checks would never be asked.
        let guarded = if config.allow_private_callbacks {
            builder().no_proxy().build()?
        } else {
            builder().no_proxy().dns_resolver(PublicOnly).build()?
        };
        Ok(Self {
            config,
            store,
            daemon,
            client,
            guarded,
        })
    }

    /// Send events until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let sent = self.send_due().await;
            if *shutdown.borrow() {
                return;
            }
            // A full batch means more are waiting; otherwise look again shortly (this
            // keeps the outbox query off a busy store).
            if sent < BATCH {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Send what is due; returns how many events were tried.
    async fn send_due(&self) -> usize {
        let now = now_ms();
        // Held long enough for the whole batch, so that another daemon does not send them too.
        let lease = self.config.timeout * BATCH.div_ceil(PARALLEL) as u32 + Duration::from_secs(30);
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let events = match self
            .store
            .claim_events(&self.daemon, BATCH as i64, lease, now)
            .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook outbox");
                return 0;
            }
        };
        // A batch holds at most one event per verification, so sending its events side by
        // side keeps each verification's order; a slow receiver holds up only its own.
        let claimed = events.len();
        let results: Vec<(StatusEvent, Result<(), Undelivered>)> = futures::stream::iter(events)
            .map(|event| async move {
                let result = self.deliver(&event).await;
                (event, result)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut done = Vec::with_capacity(claimed);
        for (event, result) in results {
            let e = match result {
                Ok(()) => {
                    done.push(event.id);
                    continue;
                }
                Err(Undelivered::Retry(e)) => e,
                Err(Undelivered::Never(e)) => {
                    tracing::error!(event = event.id, verification = %event.verification_id,
                        error = %e, "webhook given up");
                    if let Err(e) = self.store.event_failed(event.id, None, &e, now_ms()).await {
                        tracing::error!(error = %e, "cannot record a webhook attempt");
                    }
                    continue;
                }
            };
            let now = now_ms();
            let retry_at = if now - event.created_at > GIVE_UP_AFTER {
                tracing::error!(event = event.id, error = %e, "webhook given up after 72 h");
                None
            } else {
                let base = i64::try_from(self.config.retry_base.as_millis()).unwrap_or(5_000);
                let backoff = (base << event.attempts.clamp(0, 10)).min(3_600_000);
                tracing::warn!(event = event.id, verification = %event.verification_id,
                    error = %e, retry_in_ms = backoff, "webhook not delivered");
                Some(now + backoff)
            };
            if let Err(e) = self.store.event_failed(event.id, retry_at, &e, now).await {
                tracing::error!(error = %e, "cannot record a webhook attempt");
            }
        }
        if let Err(e) = self.store.events_delivered(&done, now_ms()).await {
            tracing::error!(error = %e, "cannot record delivered webhooks");
        }
        claimed
    }

    async fn deliver(&self, event: &StatusEvent) -> Result<(), Undelivered> {
        let (url, client) = match event.callback_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) if !self.config.allow_private_callbacks => {
                let parsed = url::Url::parse(url)
                    .map_err(|_| Undelivered::Never("callback_url is not a URL".into()))?;
                callback::check_host(&parsed)
                    .map_err(|e| Undelivered::Never(format!("callback_url refused: {e}")))?;
                (url, &self.guarded)
            }
            Some(url) => (url, &self.guarded),
            None => (self.config.url.as_str(), &self.client),
        };
        if url.is_empty() {
            return Ok(()); // No receiver configured: nothing to deliver.
        }
        if self.config.secret.is_empty() {
            return Err(Undelivered::Retry(
                "webhooks.secret is not set, so events cannot be signed".into(),
            ));
        }
        let body = body(event);
        let signature = sign(&self.config.secret, now_ms() / 1000, &body);
        let response = client
            .post(url)
            .header("Content-Type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| Undelivered::Retry(post_failed(url, e)))?;
        if response.status().is_success() {
            tracing::debug!(event = event.id, "webhook delivered");
            Ok(())
        } else {
            Err(Undelivered::Retry(format!(
                "receiver answered {}",
                response.status()
            )))
        }
    }
}

/// Why a POST to `url` failed, naming its host only: a callback URL's path or query may hold
/// the receiver's token, which is logged and stored with the attempt otherwise.
fn post_failed(url: &str, e: reqwest::Error) -> String {
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "the receiver".into());
    format!("POST to {host} failed: {}", causes(&e.without_url()))
}

/// An error and its causes, `: `-separated (reqwest's own message leaves out why).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_post_names_the_host_not_the_url() {
        let url = "http://127.0.0.1:1/hooks/T0KEN-PATH?token=S3CRET";
        let e = reqwest::Client::new().post(url).send().await.unwrap_err();
        let why = post_failed(url, e);
        assert!(why.starts_with("POST to 127.0.0.1 failed: "), "{why}");
        assert!(!why.contains("S3CRET") && !why.contains("T0KEN"), "{why}");
    }

    #[test]
    fn signature_is_hmac_over_time_and_body() {
        let s = sign("whsec", 1_700_000_000, b"{}");
        assert!(s.starts_with("t=1700000000,v1="));
        assert_eq!(s.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(s, sign("other", 1_700_000_000, b"{}"));
        assert_ne!(s, sign("whsec", 1_700_000_001, b"{}"));
    }

    /// A proxy would resolve the callback URL's name itself, past `PublicOnly`: the client
    /// for `callback_url`s has none (reqwest lists the proxies a client has, the one from
    /// `HTTP(S)_PROXY` among them, in its `Debug`), whatever `allow_private_callbacks` says.
    #[tokio::test]
    async fn callback_urls_are_sent_without_a_proxy() {
        for allow_private_callbacks in [false, true] {
            let config = WebhookConfig {
                url: String::new(),
                secret: "0123456789abcdef".into(),
                timeout: Duration::from_secs(1),
                retry_base: Duration::from_secs(1),
                allow_private_callbacks,
            };
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("t.db").display());
            let store = Store::connect(&url, 1).await.unwrap();
            let sender = Sender::new(config, store, "test".into()).unwrap();
            let (client, guarded) = (
                format!("{:?}", sender.client),
                format!("{:?}", sender.guarded),
            );
            assert!(
                client.contains("proxies"),
                "webhooks.url honours a proxy: {client}"
            );
            assert!(!guarded.contains("proxies"), "{guarded}");
        }
    }

    #[tokio::test]
    async fn names_resolving_into_this_host_reach_nothing() {
        let err = PublicOnly
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is refused");
        assert!(err.to_string().contains("internal"), "{err}");
    }
}
