//! Code checks, in a call or from the web app (read-code mode), and what they lead to: the
//! `wrong_codes` of each number and user (the three tries are theirs, across all their
//! verifications, counted over the last lockout window) and the `lockouts` table.
//!
//! A check takes the number's and the user's locks first ([`subject_locks`]), as a creation
//! and a staff approval do: checks of one number or user (even on several daemons on one
//! Postgres) are then one after the other, so the right code in one call cannot pass while
//! a sibling's last wrong code locks the number out, no more than the allowed wrong codes
//! are ever counted, and no verification is created while its number's last wrong code is
//! being counted. The change a check makes to its verification is conditional on what the
//! check was allowed on (a cancel or an expiry does not take those locks).

use std::sync::LazyLock;

use super::sql::{query, Conn, Row};
use super::subject_locks;

use super::verifications::parse_column;
use super::{op, Store, StoreError};
use crate::domain::status::{EntryMethod, Status};
use crate::domain::verification::Verification;

/// A lockout in force for the verification's number or user (at time `$1`).
pub(super) const LOCKED_OUT: &str = "SELECT 1 FROM lockouts l WHERE l.locked_until > $1 AND \
     ((l.kind = 'phone' AND l.subject = verifications.phone) OR \
      (l.kind = 'user' AND l.subject = verifications.user_ref))";

/// Who checks a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checker {
    /// The call, in its attempt (which must be open, and the verification `calling`), with
    /// how the code came (keyed or said).
    Call { attempt: i64, method: EntryMethod },
    /// The web app, for a read-code verification (`pending` or `calling`, once a call began
    /// to say the code), with the keyed hash of the code it sent: the same wrong code sent
    /// again is answered as before, not counted again.
    WebApp { entered_hash: String },
}

/// What a code check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The right code: `verified`, the call's attempt closed, the strikes of the number and
    /// the user cleared.
    Verified,
    /// A wrong code, counted: the strikes of the number or of the user so far (the higher).
    Wrong { strikes: i64 },
    /// This wrong code was the last try: the number and the user are locked out, and every
    /// open verification of either (this one included) is `failed`.
    LockedOut,
    /// Nothing done: the number or the user is locked out already.
    AlreadyLockedOut,
    /// Nothing done: the verification cannot be checked by this checker any more; its
    /// status now.
    Ended(Status),
    /// Nothing done: the web app checked a read-code verification no call has said yet.
    NotDelivered,
    /// Nothing done: the web app sent the last wrong code it sent again (a retry).
    Repeated,
    /// Nothing done: the call's attempt was closed under it (its daemon was declared dead
    /// and its calls taken over).
    Fenced,
}

/// How a wrong code is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrikeRule {
    /// Wrong codes a number or a user may make before the lockout.
    pub max: i64,
    /// Wrong codes from before this are not counted (the window slides: each wrong code
    /// counts for the window's length after it was made).
    pub forget_before: i64,
    /// When the lockout that the last strike starts ends.
    pub lock_until: i64,
}

impl Store {
    /// The right code: the verification becomes `verified`, a call's attempt is closed as
    /// verified and the strikes of the number and user are cleared, in one transaction;
    /// refused if the number or user is locked out or `by` may not check it (see
    /// [`Checker`]).
    pub async fn verify_code(
        &self,
        v: &Verification,
        by: Checker,
        now: i64,
    ) -> Result<Checked, StoreError> {
        let (id, phone, user_ref) = (v.id.clone(), v.phone.clone(), v.user_ref.clone());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    subject_locks::lock_number_and_user(&mut tx, &phone, &user_ref).await?;
                    forget_strikes(&mut tx, &phone, &user_ref).await?;
                    // One statement checks and verifies; the refusal is read only when it
                    // did not.
                    let verify = query(changes(&by).verify.as_str()).bind(now).bind(&id);
                    let verify = match &by {
                        Checker::Call { attempt, .. } => verify.bind(*attempt),
                        Checker::WebApp { .. } => verify,
                    };
                    if verify.execute(&mut tx).await?.rows_affected() != 1 {
                        return changed_under(&mut tx, &by, &id, &phone, &user_ref, now).await;
                    }
                    record_check(&mut tx, &id, &by, true, now).await?;
                    if let Checker::Call { attempt, .. } = by {
                        query(
                            "UPDATE call_attempts SET ended_at = $1, outcome = 'verified' \
                             WHERE id = $2 AND ended_at IS NULL",
                        )
                        .bind(now)
                        .bind(attempt)
                        .execute(&mut tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(Checked::Verified)
                })
            }))
            .await
    }

    /// A wrong code: one strike for the number and one for the user, and one attempt of the
    /// verification used. The strike that reaches `rule.max` locks the number and the user
    /// out until `rule.lock_until` and fails every open verification of either, in the same
    /// transaction. Nothing is counted if the number or user is locked out already or `by`
    /// may not check it (see [`Checker`]).
    pub async fn count_wrong_code(
        &self,
        v: &Verification,
        by: Checker,
        rule: StrikeRule,
        now: i64,
    ) -> Result<Checked, StoreError> {
        let (id, phone, user_ref) = (v.id.clone(), v.phone.clone(), v.user_ref.clone());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    subject_locks::lock_number_and_user(&mut tx, &phone, &user_ref).await?;
                    query(
                        "INSERT INTO wrong_codes (kind, subject, at) \
                         VALUES ('phone', $1, $3), ('user', $2, $3)",
                    )
                    .bind(&phone)
                    .bind(&user_ref)
                    .bind(now)
                    .execute(&mut tx)
                    .await?;
                    let strikes =
                        strikes_of(&mut tx, &phone, &user_ref, rule.forget_before).await?;
                    // A refusal drops the transaction: the strikes above are not kept.
                    let refused = refusal(&mut tx, &by, &id, &phone, &user_ref, now).await?;
                    if let Some(refusal) = refused {
                        return Ok(refusal);
                    }
                    let wrong = query(changes(&by).wrong.as_str()).bind(now).bind(&id);
                    let wrong = match &by {
                        Checker::Call { attempt, .. } => wrong.bind(*attempt),
                        Checker::WebApp { entered_hash } => wrong.bind(entered_hash),
                    };
                    let Some(row) = wrong.fetch_optional(&mut tx).await? else {
                        return changed_under(&mut tx, &by, &id, &phone, &user_ref, now).await;
                    };
                    record_check(&mut tx, &id, &by, false, now).await?;
                    let strikes = strikes.max(row.try_get("attempts_used")?);
                    if strikes < rule.max {
                        tx.commit().await?;
                        return Ok(Checked::Wrong { strikes });
                    }
                    lock_out(&mut tx, &id, &phone, &user_ref, rule.lock_until, now).await?;
                    tx.commit().await?;
                    Ok(Checked::LockedOut)
                })
            }))
            .await
    }

    /// The counted code checks of a verification, oldest first, and the lockouts it caused.
    pub async fn checks_of(&self, verification_id: &str) -> Result<Checks, StoreError> {
        let id = verification_id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = query(
                        "SELECT at, method, right_code FROM code_checks \
                         WHERE verification_id = $1 ORDER BY id",
                    )
                    .bind(&id)
                    .fetch_all(&mut *c)
                    .await?;
                    let checks = rows
                        .iter()
                        .map(|r| {
                            let method: String = r.try_get("method")?;
                            Ok(CheckRow {
                                at: r.try_get("at")?,
                                method: parse_column("method", &method)?,
                                right: r.try_get::<i64>("right_code")? != 0,
                            })
                        })
                        .collect::<Result<_, StoreError>>()?;
                    let locked_until = query(
                        "SELECT MAX(locked_until) AS until FROM lockouts \
                         WHERE verification_id = $1",
                    )
                    .bind(&id)
                    .fetch_one(&mut *c)
                    .await?
                    .try_get("until")?;
                    Ok(Checks {
                        checks,
                        locked_until,
                    })
                })
            }))
            .await
    }

    /// Where a number and a user stand at `now`: the lockout in force, and the wrong codes
    /// counted since `forget_before` (the higher of the two subjects').
    pub async fn standing(
        &self,
        phone: &str,
        user_ref: &str,
        now: i64,
        forget_before: i64,
    ) -> Result<Standing, StoreError> {
        let (phone, user_ref) = (phone.to_owned(), user_ref.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move { standing(c, &phone, &user_ref, now, forget_before).await })
            }))
            .await
    }
}

/// One counted code check, as a verification's history shows it (never the digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub at: i64,
    pub method: EntryMethod,
    pub right: bool,
}

/// A verification's counted checks, and the end of the lockout it caused, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks {
    pub checks: Vec<CheckRow>,
    pub locked_until: Option<i64>,
}

/// A number's and a user's standing: their lockout, their wrong codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The latest end of a lockout in force for the number or the user.
    pub locked_until: Option<i64>,
    /// Wrong codes counted for the number or the user (the higher), not yet forgotten.
    pub strikes: i64,
}

/// [`Store::standing`] on a connection.
pub(super) async fn standing(
    c: &mut Conn,
    phone: &str,
    user_ref: &str,
    now: i64,
    forget_before: i64,
) -> Result<Standing, StoreError> {
    let row = query(STANDING.as_str())
        .bind(now)
        .bind(phone)
        .bind(user_ref)
        .bind(forget_before)
        .fetch_one(&mut *c)
        .await?;
    standing_from(&row)
}

/// A [`Standing`] from a row with the [`standing_columns`].
pub(super) fn standing_from(row: &Row) -> Result<Standing, StoreError> {
    Ok(Standing {
        locked_until: row.try_get("latest")?,
        strikes: row.try_get("strikes")?,
    })
}

/// The wrong codes of number `phone` or of user `user` (the higher count) since `since`,
/// each a placeholder or a column.
fn strikes_sql(phone: &str, user: &str, since: &str) -> String {
    format!(
        "(SELECT MAX(n) FROM (\
         SELECT COUNT(*) AS n FROM wrong_codes \
             WHERE kind = 'phone' AND subject = {phone} AND at >= {since} \
         UNION ALL \
         SELECT COUNT(*) AS n FROM wrong_codes \
             WHERE kind = 'user' AND subject = {user} AND at >= {since}) AS counts)"
    )
}

/// The columns of a [`Standing`] ([`standing_from`] reads them): at `at`, of number `phone`
/// and user `user`, the wrong codes since `since`; each a placeholder or a column.
pub(super) fn standing_columns(at: &str, phone: &str, user: &str, since: &str) -> String {
    format!(
        "(SELECT MAX(locked_until) FROM lockouts WHERE locked_until > {at} AND \
             ((kind = 'phone' AND subject = {phone}) OR (kind = 'user' AND subject = {user}))) \
             AS latest, \
         {} AS strikes",
        strikes_sql(phone, user, since)
    )
}

/// [`standing`]'s statement.
static STANDING: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {}", standing_columns("$1", "$2", "$3", "$4")));

/// [`strikes_of`]: of number `$1` and user `$2` since `$3`.
static STRIKES_OF: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {} AS strikes", strikes_sql("$1", "$2", "$3")));

/// The wrong codes of `phone` or of `user_ref` (the higher count) since `since`.
async fn strikes_of(
    c: &mut Conn,
    phone: &str,
    user_ref: &str,
    since: i64,
) -> Result<i64, StoreError> {
    query(STRIKES_OF.as_str())
        .bind(phone)
        .bind(user_ref)
        .bind(since)
        .fetch_one(c)
        .await?
        .try_get("strikes")
}

/// The changes a check makes to its verification, each conditional on what its checker may
/// check (see [`Checker`]): a cancel, an expiry or a takeover does not take the check's
/// locks, and may commit between the refusal's read and the change. `$1` now, `$2` the
/// verification, `$3` the call's attempt, or (a wrong code) the web app's entered hash.
struct Changes {
    /// Verified, unless the number or the user is locked out.
    verify: String,
    /// One attempt used; returns `attempts_used`.
    wrong: String,
}

impl Changes {
    fn new(checkable: &str, wrong_also: &str) -> Self {
        Self {
            verify: format!(
                "UPDATE verifications SET status = 'verified', updated_at = $1, verified_at = $1 \
                 WHERE id = $2 AND {checkable} AND NOT EXISTS ({LOCKED_OUT})"
            ),
            wrong: format!(
                "UPDATE verifications SET attempts_used = attempts_used + 1, updated_at = $1\
                 {wrong_also} WHERE id = $2 AND {checkable} RETURNING attempts_used"
            ),
        }
    }
}

static IN_CALL: LazyLock<Changes> = LazyLock::new(|| {
    Changes::new(
        "status = 'calling' AND EXISTS (SELECT 1 FROM call_attempts a \
         WHERE a.id = $3 AND a.ended_at IS NULL)",
        "",
    )
});

static FROM_WEB_APP: LazyLock<Changes> = LazyLock::new(|| {
    Changes::new(
        "status IN ('pending', 'calling') AND code_delivered_at IS NOT NULL",
        ", last_wrong_check = $3",
    )
});

fn changes(by: &Checker) -> &'static Changes {
    match by {
        Checker::Call { .. } => &IN_CALL,
        Checker::WebApp { .. } => &FROM_WEB_APP,
    }
}

/// A check whose change did nothing: why, read in its transaction (which is dropped, and with
/// it whatever the check did before). Should no rule say, the verification was closed under
/// the check.
async fn changed_under(
    c: &mut Conn,
    by: &Checker,
    id: &str,
    phone: &str,
    user_ref: &str,
    now: i64,
) -> Result<Checked, StoreError> {
    Ok(refusal(c, by, id, phone, user_ref, now)
        .await?
        .unwrap_or(Checked::Fenced))
}

/// Why a code check does nothing: `by` may not check the verification (see [`Checker`]), or
/// its number or user is locked out. `None`: it may go on.
pub(super) async fn refusal(
    c: &mut Conn,
    by: &Checker,
    id: &str,
    phone: &str,
    user_ref: &str,
    now: i64,
) -> Result<Option<Checked>, StoreError> {
    let row = query(
        "SELECT status, code_delivered_at, last_wrong_check FROM verifications WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *c)
    .await?;
    // Deleted under the check: as good as ended.
    let Some(row) = row else {
        return Ok(Some(Checked::Ended(Status::Canceled)));
    };
    let status = parse_column::<Status>("status", &row.try_get::<String>("status")?)?;
    match by {
        Checker::Call { attempt, .. } => {
            let open =
                query("SELECT 1 AS open FROM call_attempts WHERE id = $1 AND ended_at IS NULL")
                    .bind(attempt)
                    .fetch_optional(&mut *c)
                    .await?;
            if open.is_none() {
                return Ok(Some(Checked::Fenced));
            }
            if status != Status::Calling {
                return Ok(Some(Checked::Ended(status)));
            }
        }
        Checker::WebApp { entered_hash } => {
            let last_wrong: Option<String> = row.try_get("last_wrong_check")?;
            if last_wrong.as_deref() == Some(entered_hash.as_str()) {
                return Ok(Some(Checked::Repeated));
            }
            if status.is_final() {
                return Ok(Some(Checked::Ended(status)));
            }
            if row.try_get::<Option<i64>>("code_delivered_at")?.is_none() {
                return Ok(Some(Checked::NotDelivered));
            }
        }
    }
    let locked = standing(c, phone, user_ref, now, now).await?.locked_until;
    Ok(locked.map(|_| Checked::AlreadyLockedOut))
}

/// Note a counted check of verification `id` for its history (how it came, right or not).
async fn record_check(
    c: &mut Conn,
    id: &str,
    by: &Checker,
    right: bool,
    now: i64,
) -> Result<(), StoreError> {
    let (attempt, method) = match by {
        Checker::Call { attempt, method } => (Some(*attempt), *method),
        Checker::WebApp { .. } => (None, EntryMethod::WebPage),
    };
    query(
        "INSERT INTO code_checks (verification_id, attempt_id, at, method, right_code) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(attempt)
    .bind(now)
    .bind(method.as_str())
    .bind(i64::from(right))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Lock the number and the user out until `until` (on behalf of verification `id`), forget
/// their strikes, and fail every open verification of either.
async fn lock_out(
    c: &mut Conn,
    id: &str,
    phone: &str,
    user_ref: &str,
    until: i64,
    now: i64,
) -> Result<(), StoreError> {
    for (kind, subject) in [("phone", phone), ("user", user_ref)] {
        query(
            "INSERT INTO lockouts (kind, subject, locked_until, verification_id, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(kind)
        .bind(subject)
        .bind(until)
        .bind(id)
        .bind(now)
        .execute(&mut *c)
        .await?;
    }
    forget_strikes(c, phone, user_ref).await?;
    query(
        "UPDATE verifications SET status = 'failed', updated_at = $1 \
         WHERE status IN ('pending', 'calling') AND (phone = $2 OR user_ref = $3)",
    )
    .bind(now)
    .bind(phone)
    .bind(user_ref)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Forget the wrong codes of a number and a user (under their locks, see
/// [`subject_locks`]).
pub(super) async fn forget_strikes(
    c: &mut Conn,
    phone: &str,
    user_ref: &str,
) -> Result<(), StoreError> {
    query(
        "DELETE FROM wrong_codes WHERE (kind = 'phone' AND subject = $1) \
         OR (kind = 'user' AND subject = $2)",
    )
    .bind(phone)
    .bind(user_ref)
    .execute(c)
    .await?;
    Ok(())
}
