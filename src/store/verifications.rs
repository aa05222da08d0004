//! The `verifications` table: inserting and reading verifications, and their status changes
//! outside the dialer (a transition, a read code delivered).

use std::str::FromStr;
use std::sync::LazyLock;

use super::sql::{placeholder_rows, query, Conn, Row};

use super::{op, Store, StoreError};
use crate::domain::status::Status;
use crate::domain::verification::Verification;

/// The columns [`verification_from_row`] reads, in the order [`insert_verifications`] binds
/// them.
pub(super) const VERIFICATION_COLUMNS: &str = "id, phone, user_ref, code_hash, code_length, \
     status, attempts_used, max_attempts, locale, is_test, created_at, updated_at, expires_at, \
     verified_at, api_key_id, callback_url, mode, sealed_code, code_delivered_at";

impl Store {
    pub async fn insert_verification(&self, v: &Verification) -> Result<(), StoreError> {
        let v = v.clone();
        self.engine
            .run(op(move |c| {
                Box::pin(async move { insert_verification(c, &v).await })
            }))
            .await
    }

    pub async fn verification(&self, id: &str) -> Result<Option<Verification>, StoreError> {
        let id = id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query(format!(
                        "SELECT {VERIFICATION_COLUMNS} FROM verifications WHERE id = $1"
                    ))
                    .bind(&id)
                    .fetch_optional(&mut *c)
                    .await?;
                    row.map(|r| verification_from_row(&r)).transpose()
                })
            }))
            .await
    }

    /// Call attempt `attempt` began to say the code of verification `id` (read-code mode):
    /// noted the first time; false if the verification is no longer in that call (the code
    /// is not to be said).
    pub async fn code_delivered(
        &self,
        id: &str,
        attempt: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let done = query(
                        "UPDATE verifications SET code_delivered_at = \
                         COALESCE(code_delivered_at, $1) \
                         WHERE id = $2 AND status = 'calling' AND sealed_code IS NOT NULL \
                         AND EXISTS (SELECT 1 FROM call_attempts \
                             WHERE id = $3 AND ended_at IS NULL)",
                    )
                    .bind(now)
                    .bind(&id)
                    .bind(attempt)
                    .execute(&mut *c)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    /// Move a verification from one of `from` to `to`; false if it was in another state.
    pub async fn transition(
        &self,
        id: &str,
        from: &[Status],
        to: Status,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (id, from) = (id.to_owned(), status_list(from));
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let verified_at = (to == Status::Verified).then_some(now);
                    let done = query(format!(
                        "UPDATE verifications SET status = $1, updated_at = $2, \
                         verified_at = COALESCE($3, verified_at) \
                         WHERE id = $4 AND status IN ({from})"
                    ))
                    .bind(to.as_str())
                    .bind(now)
                    .bind(verified_at)
                    .bind(&id)
                    .execute(&mut *c)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }
}

/// Insert `v`, due a call at once unless it is a test verification.
async fn insert_verification(c: &mut Conn, v: &Verification) -> Result<(), StoreError> {
    insert_verifications(c, &[v]).await
}

/// Insert `rows` in one statement (see [`insert_verification`]). Also run by
/// [`Store::create_verification`] inside its transaction.
pub(super) async fn insert_verifications(
    c: &mut Conn,
    rows: &[&Verification],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = match rows.len() {
        1 => query(INSERT_ONE.as_str()),
        // Kept prepared for a batch's sizes (1, 2, 4, ...); creations a batch refused leave
        // other counts, planned each time.
        n if n.is_power_of_two() => query(insert_sql(n)),
        n => query(insert_sql(n)).once(),
    };
    for v in rows {
        insert = insert
            .bind(&v.id)
            .bind(&v.phone)
            .bind(&v.user_ref)
            .bind(&v.code_hash)
            .bind(v.code_length)
            .bind(v.status.as_str())
            .bind(v.attempts_used)
            .bind(v.max_attempts)
            .bind(&v.locale)
            .bind(i64::from(v.is_test))
            .bind(v.created_at)
            .bind(v.updated_at)
            .bind(v.expires_at)
            .bind(v.verified_at)
            .bind(&v.api_key_id)
            .bind(&v.callback_url)
            .bind(v.mode.as_str())
            .bind(&v.sealed_code)
            .bind(v.code_delivered_at)
            // Due a call at once, except test verifications, which the QA line calls itself.
            .bind((!v.is_test).then_some(v.created_at));
    }
    insert.execute(c).await?;
    Ok(())
}

/// Values bound for each row [`insert_verifications`] inserts.
const INSERTED_VALUES: usize = 20;

/// The statement that inserts `n` verifications.
fn insert_sql(n: usize) -> String {
    format!(
        "INSERT INTO verifications ({VERIFICATION_COLUMNS}, next_call_at) VALUES {}",
        placeholder_rows(n, INSERTED_VALUES)
    )
}

/// [`insert_sql`] for one row, built once: the QA line inserts one for every test call.
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));

/// A verification from a row with the [`VERIFICATION_COLUMNS`].
pub(super) fn verification_from_row(r: &Row) -> Result<Verification, StoreError> {
    let status: String = r.try_get("status")?;
    let mode: String = r.try_get("mode")?;
    Ok(Verification {
        id: r.try_get("id")?,
        phone: r.try_get("phone")?,
        user_ref: r.try_get("user_ref")?,
        code_hash: r.try_get("code_hash")?,
        code_length: r.try_get("code_length")?,
        status: parse_column("status", &status)?,
        attempts_used: r.try_get("attempts_used")?,
        max_attempts: r.try_get("max_attempts")?,
        locale: r.try_get("locale")?,
        is_test: r.try_get::<i64>("is_test")? != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        expires_at: r.try_get("expires_at")?,
        verified_at: r.try_get("verified_at")?,
        api_key_id: r.try_get("api_key_id")?,
        callback_url: r.try_get("callback_url")?,
        mode: parse_column("mode", &mode)?,
        sealed_code: r.try_get("sealed_code")?,
        code_delivered_at: r.try_get("code_delivered_at")?,
    })
}

/// A stored text value (a status, an outcome) as what it names, or `Corrupt`.
pub(super) fn parse_column<T: FromStr>(column: &'static str, value: &str) -> Result<T, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt {
        column,
        value: value.to_owned(),
    })
}

fn status_list(statuses: &[Status]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
