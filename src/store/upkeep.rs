//! Queue upkeep over the `verifications` table (stale dialer claims, missed trunk call ends,
//! expiry) and the backlog
//! `/metrics` reports (calls due, webhooks undelivered).

use super::sql::query;

use super::{op, Store, StoreError};

impl Store {
    /// (verifications due a call now, status changes not yet delivered), for `/metrics`.
    pub async fn backlog(&self, now: i64) -> Result<(i64, i64), StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query(
                        "SELECT (SELECT COUNT(*) FROM verifications WHERE status = 'pending' \
                             AND next_call_at <= $1 AND expires_at > $1) AS due_calls, \
                         (SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL) AS undelivered",
                    )
                    .bind(now)
                    .fetch_one(&mut *c)
                    .await?;
                    Ok((row.try_get("due_calls")?, row.try_get("undelivered")?))
                })
            }))
            .await
    }

    /// Periodic upkeep: dialer claims older than `claims_before` that no FastAGI session
    /// took go back to `pending` when they are another daemon's (it died, or lost their
    /// events) or this daemon's (`daemon`) from before it started at `started_at` (an
    /// earlier run of it died); this daemon's own claims of this run are its dialer's to
    /// give up, by the monotonic clock, so that a jump of the wall clock cannot release a
    /// call that still rings. Verifications waiting past their expiry become `expired`, and
    /// so do those still `calling` when they expired before `stranded_before` (no call
    /// lasts that long: its daemon died), their open attempts closed as `interrupted`. Trunk
    /// calls counted since before `claims_before` that neither ring nor are in a call are
    /// forgotten. Returns (released, expired).
    pub async fn maintain(
        &self,
        claims_before: i64,
        daemon: &str,
        started_at: i64,
        stranded_before: i64,
        now: i64,
    ) -> Result<(u64, u64), StoreError> {
        let daemon = daemon.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let released = query(
                        "UPDATE verifications SET status = 'pending', next_call_at = $1, \
                         channel_id = NULL, claimed_by = NULL, claimed_at = NULL, updated_at = $1 \
                         WHERE status = 'calling' AND claimed_at IS NOT NULL AND claimed_at < $2 \
                         AND (claimed_by IS NULL OR claimed_by <> $3 OR claimed_at < $4)",
                    )
                    .bind(now)
                    .bind(claims_before)
                    .bind(&daemon)
                    .bind(started_at)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                    // Trunk calls whose end was missed (their daemon died while they rang,
                    // or a Hangup was lost): neither ringing nor in a FastAGI call.
                    query(
                        "DELETE FROM trunk_calls WHERE since < $1 AND NOT EXISTS \
                         (SELECT 1 FROM verifications v WHERE v.id = trunk_calls.verification_id \
                             AND v.status = 'calling' AND v.channel_id = trunk_calls.channel_id) \
                         AND NOT EXISTS (SELECT 1 FROM call_attempts a \
                             WHERE a.verification_id = trunk_calls.verification_id \
                             AND a.uniqueid = trunk_calls.channel_id AND a.ended_at IS NULL)",
                    )
                    .bind(claims_before)
                    .execute(&mut *c)
                    .await?;
                    let mut tx = c.begin().await?;
                    query(
                        "UPDATE call_attempts SET ended_at = $1, outcome = 'interrupted' \
                         WHERE ended_at IS NULL AND verification_id IN (SELECT id FROM \
                             verifications WHERE status = 'calling' AND expires_at <= $2)",
                    )
                    .bind(now)
                    .bind(stranded_before)
                    .execute(&mut tx)
                    .await?;
                    let expired = query(
                        "UPDATE verifications SET status = 'expired', updated_at = $1, \
                         channel_id = NULL, claimed_by = NULL, claimed_at = NULL \
                         WHERE (status = 'pending' AND expires_at <= $1) \
                         OR (status = 'calling' AND expires_at <= $2)",
                    )
                    .bind(now)
                    .bind(stranded_before)
                    .execute(&mut tx)
                    .await?
                    .rows_affected();
                    tx.commit().await?;
                    Ok((released, expired))
                })
            }))
            .await
    }
}
