//! The order of the operations on one subject of the rules: a number, a user, an API key's
//! creations, a name typed into the console's sign-in form. Creating a verification, checking
//! a code, a staff approval and counting a sign-in attempt each read a subject's standing (its
//! lockout, its wrong codes, its count in a rate limit) and change it in one transaction; two
//! of them on one subject must run one after the other, or both could pass a rule together.
//!
//! On Postgres (several daemons on one database) each takes its subjects' transaction
//! advisory locks as its first statement, all in one fixed order, so that none waits for
//! another's second lock: sorted by name, an API key's subject last. A web app's creations
//! all count against its API key: taking that lock last, none of them holds it while it waits
//! for a number or a user. On SQLite the single writer already runs operations one at a time:
//! nothing is taken there.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use super::sql::{placeholder_rows, query, Conn};
use super::StoreError;

/// The subject of a number's lockout, wrong codes and rate limit.
pub(super) fn number(phone: &str) -> String {
    format!("phone:{phone}")
}

/// The subject of a user's lockout and wrong codes.
pub(super) fn user(user_ref: &str) -> String {
    format!("user:{user_ref}")
}

/// The subject of an API key's creations (its rate limit).
pub(super) fn api_key(id: &str) -> String {
    format!("{API_KEY}{id}")
}

/// The subject of an API key's `Idempotency-Key`: one creation may use it.
pub(super) fn idempotency_key(api_key_id: &str, key: &str) -> String {
    format!("idempotency:{api_key_id}:{key}")
}

/// What an API key's subject begins with.
const API_KEY: &str = "api_key_id:";

/// The subject of the sign-in attempts at a name.
pub(super) fn sign_in(name: &str) -> String {
    format!("sign-in:{name}")
}

/// The subject of a budget of audit entries (see `Store::audit_within`).
pub(super) fn audit_budget(detail: &str) -> String {
    format!("audit:{detail}")
}

/// Take the transaction advisory locks of `subjects` (on Postgres), in one statement and in
/// the fixed order: by name, API keys' subjects last.
pub(super) async fn lock(
    c: &mut Conn,
    subjects: impl IntoIterator<Item = String>,
) -> Result<(), StoreError> {
    if !c.is_postgres() {
        return Ok(());
    }
    let subjects: BTreeSet<(bool, String)> = subjects
        .into_iter()
        .map(|s| (s.starts_with(API_KEY), s))
        .collect();
    let cached = subjects
        .len()
        .checked_sub(1)
        .and_then(|i| STATEMENTS.get(i));
    let mut locks = match cached {
        Some(statement) => query(statement.as_str()),
        None => query(statement(subjects.len())).once(),
    };
    for (_, subject) in subjects {
        locks = locks.bind(subject);
    }
    locks.execute(c).await?;
    Ok(())
}

/// The statement that locks `n` subjects, bound `$1` to `$n` in order (VALUES rows are
/// taken in the order written).
fn statement(n: usize) -> String {
    format!(
        "SELECT pg_advisory_xact_lock(hashtextextended(s, 0)) FROM (VALUES {}) AS t (s)",
        placeholder_rows(n, 1)
    )
}

/// [`statement`] for 1 to 4 subjects (a check takes two, a creation alone two to four),
/// built once: a check is on every call's path.
static STATEMENTS: LazyLock<Vec<String>> = LazyLock::new(|| (1..=4).map(statement).collect());

/// Take the locks of a number and a user (see [`lock`]).
pub(super) async fn lock_number_and_user(
    c: &mut Conn,
    phone: &str,
    user_ref: &str,
) -> Result<(), StoreError> {
    lock(c, [number(phone), user(user_ref)]).await
}
