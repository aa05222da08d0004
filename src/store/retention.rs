//! The end of the history: ended verifications past the retention period are deleted with
//! every row that names them (call attempts, code checks, webhook events, idempotency keys,
//! ended lockouts, decided support requests), and so are decided support requests that
//! matched no verification; and the wrong codes, and the read-backs of wrong spoken codes,
//! that no longer count (they count over the lockout window). What a rule still needs
//! stays: a verification whose lockout is in force, one a support request still waits on,
//! one whose webhook is still being sent. Sign-in attempts go once their window has passed,
//! and the audit log's entries of failed sign-ins after the support line's retention.

use super::sql::{placeholder_list, query, Conn, Query};
use super::{op, Store, StoreError};

/// How often at most the history purge empties SQLite's WAL.
const WAL_EMPTIED_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Deletions whose old page images may still be in SQLite's WAL.
#[derive(Debug, Default)]
pub(super) struct WalDebt {
    /// Something was deleted since the WAL was last emptied.
    owed: bool,
    /// When the purge last emptied it.
    emptied: Option<std::time::Instant>,
}

/// The tables that name a verification, emptied of its rows before it goes.
const NAMING_TABLES: [&str; 6] = [
    "code_checks",
    "call_attempts",
    "outbox",
    "lockouts",
    "idempotency_keys",
    "manual_requests",
];

impl Store {
    /// Delete up to `batch` ended verifications created before `before` (none: the
    /// history is kept), and what names them, and the decided support requests made before
    /// it that matched none, and the wrong codes and the read-backs of wrong spoken codes
    /// made before `strikes_before` (which no longer count), in one transaction; on SQLite, the write-ahead log is then emptied of
    /// what was deleted (see [`Store::settle_wal`]). Returns the verifications deleted
    /// (fewer than `batch`: no more are due).
    pub async fn purge_history(
        &self,
        before: Option<i64>,
        strikes_before: i64,
        now: i64,
        batch: i64,
    ) -> Result<u64, StoreError> {
        // Another daemon purging at once takes other rows; an approval waits, then finds
        // none.
        let lock = self.backend.skip_locked();
        let (deleted, unmatched) = self
            .engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    query("DELETE FROM wrong_codes WHERE at < $1")
                        .bind(strikes_before)
                        .execute(&mut tx)
                        .await?;
                    // Read-backs of wrong spoken codes count over the same window.
                    query("DELETE FROM spoken_read_backs WHERE at < $1")
                        .bind(strikes_before)
                        .execute(&mut tx)
                        .await?;
                    let Some(before) = before else {
                        tx.commit().await?;
                        return Ok((0, 0));
                    };
                    let due = query(format!(
                        "SELECT id FROM verifications v WHERE v.created_at < $1 \
                         AND v.status IN ('verified', 'failed', 'unanswered', 'expired', \
                             'canceled') \
                         AND NOT EXISTS (SELECT 1 FROM lockouts l \
                             WHERE l.verification_id = v.id AND l.locked_until > $2) \
                         AND NOT EXISTS (SELECT 1 FROM manual_requests r \
                             WHERE r.verification_id = v.id AND r.status = 'open') \
                         AND NOT EXISTS (SELECT 1 FROM outbox o \
                             WHERE o.verification_id = v.id AND o.delivered_at IS NULL) \
                         ORDER BY v.created_at LIMIT $3 {lock}"
                    ))
                    .bind(before)
                    .bind(now)
                    .bind(batch)
                    .fetch_all(&mut tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String>("id"))
                    .collect::<Result<Vec<_>, _>>()?;
                    if !due.is_empty() {
                        for table in NAMING_TABLES {
                            delete_naming(&mut tx, table, "verification_id", &due).await?;
                        }
                        delete_naming(&mut tx, "verifications", "id", &due).await?;
                    }
                    let unmatched = query(
                        "DELETE FROM manual_requests WHERE verification_id IS NULL \
                         AND status <> 'open' AND created_at < $1",
                    )
                    .bind(before)
                    .execute(&mut tx)
                    .await?
                    .rows_affected();
                    tx.commit().await?;
                    Ok((due.len() as u64, unmatched))
                })
            }))
            .await?;
        self.settle_wal(deleted + unmatched > 0).await;
        Ok(deleted)
    }

    /// Delete the console's sign-in attempts made at or before `attempts_before` (they no
    /// longer count), and up to `batch` entries of the audit log with one of `actions` made
    /// before `audit_before`; on SQLite, the write-ahead log is then emptied of what was
    /// deleted (see [`Store::settle_wal`]). Returns the audit entries deleted (fewer than
    /// `batch`: no more are due).
    pub async fn purge_sign_ins(
        &self,
        attempts_before: i64,
        actions: &'static [&'static str],
        audit_before: i64,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let (attempts, audited) = self
            .engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    let attempts = query("DELETE FROM sign_in_attempts WHERE at <= $1")
                        .bind(attempts_before)
                        .execute(&mut tx)
                        .await?
                        .rows_affected();
                    let list = placeholder_list(3, actions.len());
                    let delete = query(format!(
                        "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log \
                         WHERE at < $1 AND action IN ({list}) LIMIT $2)"
                    ))
                    .bind(audit_before)
                    .bind(batch);
                    let audited = actions
                        .iter()
                        .fold(delete, |delete, action| delete.bind(*action))
                        .execute(&mut tx)
                        .await?
                        .rows_affected();
                    tx.commit().await?;
                    Ok((attempts, audited))
                })
            }))
            .await?;
        self.settle_wal(attempts + audited > 0).await;
        Ok(audited)
    }

    /// Numbers and users deleted are gone from the database's pages (secure_delete); the
    /// write-ahead log's older images of them go too, at the first purge that deletes and
    /// then at most every [`WAL_EMPTIED_EVERY`]: on a busy installation every purge deletes,
    /// and each emptying holds the writer a moment. A failure is logged: the rows are gone,
    /// and the next purge tries again.
    async fn settle_wal(&self, deleted: bool) {
        let due = {
            let mut debt = self.history_wal.lock().unwrap_or_else(|e| e.into_inner());
            debt.owed |= deleted;
            let due = debt.owed
                && debt
                    .emptied
                    .is_none_or(|at| at.elapsed() >= WAL_EMPTIED_EVERY);
            if due {
                *debt = WalDebt {
                    owed: false,
                    emptied: Some(std::time::Instant::now()),
                };
            }
            due
        };
        if due {
            if let Err(e) = self.empty_wal().await {
                self.history_wal
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .owed = true;
                tracing::warn!(error = %e, "the SQLite WAL could not be emptied after a purge");
            }
        }
    }
}

/// Delete the rows of `table` whose `column` is one of `ids`.
async fn delete_naming(
    c: &mut Conn,
    table: &str,
    column: &str,
    ids: &[String],
) -> Result<(), StoreError> {
    let list = placeholder_list(1, ids.len());
    let delete: Query = query(format!("DELETE FROM {table} WHERE {column} IN ({list})"));
    ids.iter()
        .fold(delete, |delete, id| delete.bind(id))
        .execute(c)
        .await?;
    Ok(())
}
