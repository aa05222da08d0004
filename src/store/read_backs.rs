//! The wrong spoken codes read back to callers (`spoken_read_backs`): one row for the number
//! and one for the user each, counted over the last lockout window as wrong codes are. The
//! domain decides how many a number and a user may have ([`ReadBackRule`]); the store counts
//! them, and takes one only under the number's and the user's locks ([`subject_locks`]), as
//! a code check does, so that calls racing for the last one (even on several daemons on one
//! Postgres) get it once. The history purge deletes those that no longer count.

use super::lockouts::{refusal, Checker};
use super::sql::{query, Conn};
use super::subject_locks;
use super::{op, Store, StoreError};
use crate::domain::status::EntryMethod;
use crate::domain::verification::Verification;

/// How many read-backs a number and a user may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBackRule {
    /// Read-backs a number or a user may have within the window.
    pub max: i64,
    /// Read-backs from before this are not counted (the window slides, as for wrong codes).
    pub forget_before: i64,
}

impl Store {
    /// The read-backs of number `phone` or of user `user_ref` (the higher count) since
    /// `forget_before`.
    pub async fn read_backs(
        &self,
        phone: &str,
        user_ref: &str,
        forget_before: i64,
    ) -> Result<i64, StoreError> {
        let (phone, user_ref) = (phone.to_owned(), user_ref.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move { read_backs(c, &phone, &user_ref, forget_before).await })
            }))
            .await
    }

    /// Take one read-back of a wrong spoken code for verification `v` in call attempt
    /// `attempt`: under the number's and the user's locks, it is recorded at `now` for both
    /// if each has had fewer than `rule.max` in the window. Nothing is taken (false) when none
    /// is left, or when the call may not check a code any more (its attempt closed, the
    /// verification no longer `calling`, the number or the user locked out): the code is then
    /// to be checked as an attempt, and that check says why.
    pub async fn take_read_back(
        &self,
        v: &Verification,
        attempt: i64,
        rule: ReadBackRule,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (id, phone, user_ref) = (v.id.clone(), v.phone.clone(), v.user_ref.clone());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    subject_locks::lock_number_and_user(&mut tx, &phone, &user_ref).await?;
                    // The same refusals as the code check this read-back stands for.
                    let by = Checker::Call {
                        attempt,
                        method: EntryMethod::Speech,
                    };
                    if refusal(&mut tx, &by, &id, &phone, &user_ref, now)
                        .await?
                        .is_some()
                    {
                        return Ok(false);
                    }
                    if read_backs(&mut tx, &phone, &user_ref, rule.forget_before).await? >= rule.max
                    {
                        return Ok(false);
                    }
                    query(
                        "INSERT INTO spoken_read_backs (kind, subject, at) \
                         VALUES ('phone', $1, $3), ('user', $2, $3)",
                    )
                    .bind(&phone)
                    .bind(&user_ref)
                    .bind(now)
                    .execute(&mut tx)
                    .await?;
                    tx.commit().await?;
                    Ok(true)
                })
            }))
            .await
    }
}

/// [`Store::read_backs`] on a connection.
async fn read_backs(
    c: &mut Conn,
    phone: &str,
    user_ref: &str,
    forget_before: i64,
) -> Result<i64, StoreError> {
    let row = query(
        "SELECT (SELECT COUNT(*) FROM spoken_read_backs \
             WHERE kind = 'phone' AND subject = $1 AND at >= $3) AS phone_n, \
         (SELECT COUNT(*) FROM spoken_read_backs \
             WHERE kind = 'user' AND subject = $2 AND at >= $3) AS user_n",
    )
    .bind(phone)
    .bind(user_ref)
    .bind(forget_before)
    .fetch_one(c)
    .await?;
    Ok(row.try_get::<i64>("phone_n")?.max(row.try_get("user_n")?))
}
