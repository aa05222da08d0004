//! The dialer's queue in the `verifications` table: claiming verifications due a call within
//! the trunk's caps (shared by every daemon on the store, in `trunk_calls` and `trunks`),
//! giving a claim back, and recording a dialer call that never reached the daemon.

use super::sql::query;

use super::attempts::{release, Releaser};
use super::lockouts::LOCKED_OUT;
use super::trunk::{end_trunk_call, trunk_room, Trunk};
use super::{op, Backend, Store, StoreError};
use crate::domain::status::CallOutcome;
use crate::domain::verification::DialJob;

impl Store {
    /// Claim up to `limit` verifications due a call for `daemon`'s dialer, as far as the
    /// trunk's caps allow: each becomes `calling` with a fresh ChannelId and counts as a
    /// call in progress on the trunk until it ends. On Postgres, daemons sharing the queue
    /// skip each other's rows (`FOR UPDATE SKIP LOCKED`), and a lock on the trunk makes their
    /// claims one after the other, so that together they keep its caps.
    pub async fn claim_due(
        &self,
        daemon: &str,
        trunk: &Trunk,
        limit: i64,
        now: i64,
    ) -> Result<Vec<DialJob>, StoreError> {
        let (daemon, trunk) = (daemon.to_owned(), trunk.clone());
        let backend = self.backend;
        let skip_locked = backend.skip_locked();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    if backend == Backend::Postgres {
                        query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))")
                            .bind(format!("trunk:{}", trunk.name))
                            .execute(&mut tx)
                            .await?;
                    }
                    let limit = limit.min(trunk_room(&mut tx, &trunk, now).await?);
                    if limit <= 0 {
                        return Ok(Vec::new());
                    }
                    // MATERIALIZED: Postgres would otherwise rescan the LIMIT subquery and
                    // claim more rows than asked.
                    let rows = query(format!(
                        "WITH due AS MATERIALIZED (SELECT id FROM verifications \
                             WHERE status = 'pending' AND next_call_at <= $1 AND expires_at > $1 \
                             AND attempts_used < max_attempts AND NOT EXISTS ({LOCKED_OUT}) \
                             ORDER BY next_call_at LIMIT $3 {skip_locked}) \
                         UPDATE verifications SET status = 'calling', \
                         dial_attempts = dial_attempts + 1, \
                         channel_id = id || '-' || CAST(dial_attempts + 1 AS TEXT), \
                         claimed_by = $2, claimed_at = $1, updated_at = $1 \
                         WHERE status = 'pending' AND id IN (SELECT id FROM due) \
                         RETURNING id, phone, locale, channel_id, dial_attempts"
                    ))
                    .bind(now)
                    .bind(&daemon)
                    .bind(limit)
                    .fetch_all(&mut tx)
                    .await?;
                    let jobs = rows
                        .iter()
                        .map(|r| {
                            Ok(DialJob {
                                verification_id: r.try_get("id")?,
                                phone: r.try_get("phone")?,
                                locale: r.try_get("locale")?,
                                channel_id: r.try_get("channel_id")?,
                                dial_attempts: r.try_get("dial_attempts")?,
                            })
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    for job in &jobs {
                        query(
                            "INSERT INTO trunk_calls (channel_id, verification_id, trunk, \
                             daemon, since) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (channel_id) DO NOTHING",
                        )
                        .bind(&job.channel_id)
                        .bind(&job.verification_id)
                        .bind(&trunk.name)
                        .bind(&daemon)
                        .bind(now)
                        .execute(&mut tx)
                        .await?;
                    }
                    if !jobs.is_empty() {
                        query(
                            "INSERT INTO trunks (trunk, next_dial_at) VALUES ($1, $2) \
                             ON CONFLICT (trunk) DO UPDATE SET next_dial_at = $2",
                        )
                        .bind(&trunk.name)
                        .bind(now + trunk.gap_ms * jobs.len() as i64)
                        .execute(&mut tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(jobs)
                })
            }))
            .await
    }

    /// Give back a claim whose Originate was never sent (AMI down): pending again, and the
    /// dial not counted.
    pub async fn unclaim(&self, job: &DialJob, now: i64) -> Result<bool, StoreError> {
        let job = job.clone();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let done = query(
                        "UPDATE verifications SET status = 'pending', \
                         dial_attempts = dial_attempts - 1, channel_id = NULL, \
                         claimed_by = NULL, claimed_at = NULL, updated_at = $1 \
                         WHERE id = $2 AND status = 'calling' AND channel_id = $3 \
                         AND claimed_at IS NOT NULL",
                    )
                    .bind(now)
                    .bind(&job.verification_id)
                    .bind(&job.channel_id)
                    .execute(&mut *c)
                    .await?;
                    end_trunk_call(c, &job.channel_id).await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    /// A dialer call that never reached the daemon (busy, no answer, failed): recorded as
    /// an attempt and the verification released as [`Store::finish_attempt`] does. Nothing
    /// happens if the call did reach the daemon (an attempt with this ChannelId exists) or
    /// the verification has moved on. Returns whether it applied.
    #[allow(clippy::too_many_arguments)]
    pub async fn dial_failed(
        &self,
        job: &DialJob,
        channel: &str,
        daemon: &str,
        outcome: CallOutcome,
        next_call_at: Option<i64>,
        max_dials: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (job, channel, daemon) = (job.clone(), channel.to_owned(), daemon.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    let claimed_at: Option<i64> =
                        query("SELECT claimed_at FROM verifications WHERE id = $1")
                            .bind(&job.verification_id)
                            .fetch_optional(&mut tx)
                            .await?
                            .map(|r| r.try_get("claimed_at"))
                            .transpose()?
                            .flatten();
                    let released = release(
                        &mut tx,
                        &job.verification_id,
                        Releaser::Dial(&job.channel_id),
                        next_call_at,
                        max_dials,
                        now,
                    )
                    .await?;
                    if released {
                        query(
                            "INSERT INTO call_attempts (verification_id, channel, uniqueid, \
                             daemon, started_at, ended_at, outcome) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        )
                        .bind(&job.verification_id)
                        .bind(&channel)
                        .bind(&job.channel_id)
                        .bind(&daemon)
                        .bind(claimed_at.unwrap_or(now))
                        .bind(now)
                        .bind(outcome.as_str())
                        .execute(&mut tx)
                        .await?;
                    }
                    end_trunk_call(&mut tx, &job.channel_id).await?;
                    tx.commit().await?;
                    Ok(released)
                })
            }))
            .await
    }
}
