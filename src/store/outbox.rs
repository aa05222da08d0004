//! The `outbox` table (and its `settings` switch): status changes waiting to be posted to the
//! web app as webhooks, claimed by senders, marked delivered or failed.

use super::sql::{query, Conn};

use super::{op, Store, StoreError};
use crate::domain::verification::StatusEvent;

impl Store {
    /// Take up to `limit` events due for sending, the oldest undelivered one of each
    /// verification only (so that each verification's events go out in order), and hold
    /// them for `lease` ms so that another sender (another daemon) does not take them too.
    pub async fn claim_events(
        &self,
        daemon: &str,
        limit: i64,
        lease: i64,
        now: i64,
    ) -> Result<Vec<StatusEvent>, StoreError> {
        let daemon = daemon.to_owned();
        let skip_locked = self.backend.skip_locked();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = query(format!(
                        "WITH due AS MATERIALIZED (SELECT o.id FROM outbox o \
                             WHERE o.delivered_at IS NULL AND o.next_attempt_at <= $1 \
                             AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.delivered_at IS NULL \
                                 AND p.verification_id = o.verification_id AND p.id < o.id) \
                             ORDER BY o.id LIMIT $2 {skip_locked}) \
                         UPDATE outbox SET next_attempt_at = $3, claimed_by = $4 \
                         WHERE id IN (SELECT id FROM due) \
                         RETURNING id, verification_id, status, created_at, attempts, \
                         (SELECT callback_url FROM verifications v \
                             WHERE v.id = outbox.verification_id) AS callback_url"
                    ))
                    .bind(now)
                    .bind(limit)
                    .bind(now + lease)
                    .bind(&daemon)
                    .fetch_all(&mut *c)
                    .await?;
                    let mut events = rows
                        .iter()
                        .map(|r| {
                            Ok(StatusEvent {
                                id: r.try_get("id")?,
                                verification_id: r.try_get("verification_id")?,
                                status: r.try_get("status")?,
                                created_at: r.try_get("created_at")?,
                                attempts: r.try_get("attempts")?,
                                callback_url: r.try_get("callback_url")?,
                            })
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    events.sort_by_key(|e| e.id);
                    Ok(events)
                })
            }))
            .await
    }

    /// Record a failed delivery: retried at `retry_at`, or given up (none).
    pub async fn event_failed(
        &self,
        id: i64,
        retry_at: Option<i64>,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let error: String = error.chars().take(500).collect();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $1, \
                         claimed_by = NULL, \
                         delivered_at = CASE WHEN $2 = 0 THEN $3 ELSE NULL END, \
                         next_attempt_at = CASE WHEN $2 = 0 THEN next_attempt_at ELSE $2 END \
                         WHERE id = $4",
                    )
                    .bind(&error)
                    .bind(retry_at.unwrap_or(0))
                    .bind(now)
                    .bind(id)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// Note whether status changes of verifications without a `callback_url` have a
    /// receiver (`webhooks.url`): the outbox trigger records them only then.
    pub async fn set_default_webhook(&self, enabled: bool) -> Result<(), StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query(
                        "INSERT INTO settings (key, value) VALUES ('webhooks_default', $1) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )
                    .bind(if enabled { "1" } else { "0" })
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// Mark events delivered (or skipped, having no receiver), in one statement.
    pub async fn events_delivered(&self, ids: &[i64], now: i64) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Integers only, so they can be spelled out in the statement.
        let list = ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query(format!(
                        "UPDATE outbox SET attempts = attempts + 1, delivered_at = $1, \
                         last_error = NULL, claimed_by = NULL WHERE id IN ({list})"
                    ))
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// The outbox of one verification: (status, delivered, attempts), oldest first.
    pub async fn events(
        &self,
        verification_id: &str,
    ) -> Result<Vec<(String, bool, i64)>, StoreError> {
        let verification_id = verification_id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = query(
                        "SELECT status, \
                         CASE WHEN delivered_at IS NULL THEN 0 ELSE 1 END AS delivered, attempts \
                         FROM outbox \
                         WHERE verification_id = $1 ORDER BY id",
                    )
                    .bind(&verification_id)
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter()
                        .map(|r| {
                            Ok((
                                r.try_get("status")?,
                                r.try_get::<i64>("delivered")? != 0,
                                r.try_get("attempts")?,
                            ))
                        })
                        .collect()
                })
            }))
            .await
    }
}

/// Make the events `daemon` claimed and never reported on due again at `now`: it died (or an
/// earlier run of its name did) while sending them, so nobody else would send them, nor any
/// later event of their verifications, before the claim's lease ran out. Sent at least once:
/// an event it delivered but did not record is sent again.
pub(super) async fn release_claims(
    c: &mut Conn,
    daemon: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let done = query(
        "UPDATE outbox SET next_attempt_at = $1, claimed_by = NULL \
         WHERE claimed_by = $2 AND delivered_at IS NULL",
    )
    .bind(now)
    .bind(daemon)
    .execute(&mut *c)
    .await?;
    Ok(done.rows_affected())
}
