//! The `selftests` table: `callverify doctor`'s self-test calls, a plan in and a report out,
//! both as the JSON the doctor and the `selftest` flow agree on.

use super::sql::query;

use super::{op, Store, StoreError};

/// Self-test rows older than this are a doctor's that was stopped: dropped on the next insert.
const FORGOTTEN_AFTER_MS: i64 = 24 * 3600 * 1000;

/// Where a self-test stands, as the doctor polls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelftestRow {
    pub reached_at: Option<i64>,
    pub report: Option<String>,
}

impl Store {
    pub async fn insert_selftest(
        &self,
        token: &str,
        plan: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let (token, plan) = (token.to_owned(), plan.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query("DELETE FROM selftests WHERE created_at < $1")
                        .bind(now - FORGOTTEN_AFTER_MS)
                        .execute(&mut *c)
                        .await?;
                    query("INSERT INTO selftests (token, plan, created_at) VALUES ($1, $2, $3)")
                        .bind(&token)
                        .bind(&plan)
                        .bind(now)
                        .execute(&mut *c)
                        .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// Take the self-test `token` for a call: its plan, once, if it was created at or after
    /// `not_before`; `None` for an unknown, used or stale token.
    pub async fn reach_selftest(
        &self,
        token: &str,
        now: i64,
        not_before: i64,
    ) -> Result<Option<String>, StoreError> {
        let token = token.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query(
                        "UPDATE selftests SET reached_at = $1 \
                         WHERE token = $2 AND reached_at IS NULL AND created_at >= $3 \
                         RETURNING plan",
                    )
                    .bind(now)
                    .bind(&token)
                    .bind(not_before)
                    .fetch_optional(&mut *c)
                    .await?;
                    row.map(|r| r.try_get("plan")).transpose()
                })
            }))
            .await
    }

    /// Write the report of a reached self-test; false if the row is gone (the doctor gave up).
    pub async fn finish_selftest(&self, token: &str, report: &str) -> Result<bool, StoreError> {
        let (token, report) = (token.to_owned(), report.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let done = query(
                        "UPDATE selftests SET report = $1 \
                         WHERE token = $2 AND reached_at IS NOT NULL AND report IS NULL",
                    )
                    .bind(&report)
                    .bind(&token)
                    .execute(&mut *c)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    pub async fn selftest(&self, token: &str) -> Result<Option<SelftestRow>, StoreError> {
        let token = token.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query("SELECT reached_at, report FROM selftests WHERE token = $1")
                        .bind(&token)
                        .fetch_optional(&mut *c)
                        .await?;
                    row.map(|r| {
                        Ok(SelftestRow {
                            reached_at: r.try_get("reached_at")?,
                            report: r.try_get("report")?,
                        })
                    })
                    .transpose()
                })
            }))
            .await
    }

    pub async fn delete_selftest(&self, token: &str) -> Result<(), StoreError> {
        let token = token.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query("DELETE FROM selftests WHERE token = $1")
                        .bind(&token)
                        .execute(&mut *c)
                        .await?;
                    Ok(())
                })
            }))
            .await
    }
}
