//! Console sign-in attempts, one row each per name typed, in the store: every daemon on it
//! counts them together, and a restart forgets none. An attempt is counted before its
//! password is checked, under its name's lock ([`subject_locks`]; SQLite's single writer
//! needs none), so that parallel attempts at one name, on any daemon, are counted one after
//! the other and no more pass than the rule lets through. The rows go once their window has
//! passed ([`Store::purge_sign_ins`]).

use super::sql::query;
use super::subject_locks;
use super::{op, Store, StoreError};

/// How a name's sign-in attempts are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptRule {
    /// Attempts a name may make within the window.
    pub max: i64,
    /// The window's start: attempts made at or before it no longer count.
    pub since: i64,
}

/// What became of a sign-in attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Counted: its password may be checked.
    Counted,
    /// Not counted: the name's attempts within the window are used up. `first`: no attempt
    /// at the name was refused before within the window.
    Refused { first: bool },
}

impl Store {
    /// Count an attempt to sign in as `name` at `now`, unless `rule.max` attempts at it were
    /// counted since `rule.since`; a refusal is noted, so that only the window's first is
    /// said to be one.
    pub async fn count_sign_in(
        &self,
        name: &str,
        rule: AttemptRule,
        now: i64,
    ) -> Result<Attempt, StoreError> {
        let name = name.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    subject_locks::lock(&mut tx, [subject_locks::sign_in(&name)]).await?;
                    let row = query(
                        "SELECT \
                         (SELECT COUNT(*) FROM sign_in_attempts \
                             WHERE name = $1 AND kind = 'attempt' AND at > $2) AS attempts, \
                         (SELECT COUNT(*) FROM sign_in_attempts \
                             WHERE name = $1 AND kind = 'refused' AND at > $2) AS refused",
                    )
                    .bind(&name)
                    .bind(rule.since)
                    .fetch_one(&mut tx)
                    .await?;
                    let (kind, attempt) = if row.try_get::<i64>("attempts")? < rule.max {
                        ("attempt", Attempt::Counted)
                    } else if row.try_get::<i64>("refused")? == 0 {
                        ("refused", Attempt::Refused { first: true })
                    } else {
                        return Ok(Attempt::Refused { first: false });
                    };
                    query("INSERT INTO sign_in_attempts (name, kind, at) VALUES ($1, $2, $3)")
                        .bind(&name)
                        .bind(kind)
                        .bind(now)
                        .execute(&mut tx)
                        .await?;
                    tx.commit().await?;
                    Ok(attempt)
                })
            }))
            .await
    }

    /// Forget the sign-in attempts at `name` (it signed in).
    pub async fn forget_sign_ins(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    subject_locks::lock(&mut tx, [subject_locks::sign_in(&name)]).await?;
                    query("DELETE FROM sign_in_attempts WHERE name = $1")
                        .bind(&name)
                        .execute(&mut tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                })
            }))
            .await
    }
}
