//! The `call_attempts` table: opening and closing call attempts, releasing a verification
//! after a call, crash recovery.

use std::sync::LazyLock;

use super::sql::{query, Conn, Row};

use super::lockouts::LOCKED_OUT;
use super::outbox::release_claims;
use super::trunk::{end_attempts_trunk_call, END_ATTEMPTS_TRUNK_CALL};
use super::verifications::{parse_column, verification_from_row, VERIFICATION_COLUMNS};
use super::{op, Store, StoreError};
use crate::domain::status::CallOutcome;
use crate::domain::verification::{CallAttempt, Verification};

/// What recovery after a crash closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    pub attempts: u64,
    pub verifications: u64,
    /// Webhook events an earlier run was sending, due again.
    pub events: u64,
}

/// What [`Store::begin_attempt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// The call is on: its attempt, and the verification as it now stands (`calling`).
    Started {
        attempt_id: i64,
        verification: Verification,
    },
    /// The call may not go on: the verification as it stands (none: unknown), and whether
    /// its number or user is locked out now. Read in the same operation.
    Refused {
        verification: Option<Verification>,
        locked_out: bool,
    },
}

impl Store {
    /// Start a call attempt by `daemon`: `pending` becomes `calling`, then an attempt row is
    /// opened. Refused when the verification may not be called: unknown, not `pending` (a
    /// verification is never in two calls at once), expired, out of attempts, or its number
    /// or user locked out; the refusal carries the verification as it stands, so that the
    /// caller can say why without reading it again.
    ///
    /// On Postgres the claim and the attempt's row are one statement, so one round trip
    /// and one commit. On SQLite they are two statements, which the writer runs in a
    /// savepoint of their own: if the second fails, the claim is undone with it; a
    /// verification left `calling` with no open attempt by a crash is put back by recovery
    /// at the next start.
    pub async fn begin_attempt(
        &self,
        id: &str,
        channel: &str,
        uniqueid: &str,
        daemon: &str,
        now: i64,
    ) -> Result<Begun, StoreError> {
        let (id, channel, uniqueid, daemon) = (
            id.to_owned(),
            channel.to_owned(),
            uniqueid.to_owned(),
            daemon.to_owned(),
        );
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let started = if c.is_postgres() {
                        query(CLAIM_WITH_ATTEMPT.as_str())
                            .bind(now)
                            .bind(&id)
                            .bind(&uniqueid)
                            .bind(&channel)
                            .bind(&daemon)
                            .fetch_optional(&mut *c)
                            .await?
                            .map(|row| Ok::<_, StoreError>((row.try_get("attempt_id")?, row)))
                            .transpose()?
                    } else {
                        let claimed = query(CLAIM.as_str())
                            .bind(now)
                            .bind(&id)
                            .bind(&uniqueid)
                            .execute(&mut *c)
                            .await?
                            .rows_affected()
                            == 1;
                        if claimed {
                            let opened = open_attempt(c, &id, &channel, &uniqueid, &daemon, now);
                            Some(opened.await?)
                        } else {
                            None
                        }
                    };
                    if let Some((attempt_id, row)) = started {
                        return Ok(Begun::Started {
                            attempt_id,
                            verification: verification_from_row(&row)?,
                        });
                    }
                    let row = query(format!(
                        "SELECT {VERIFICATION_COLUMNS}, \
                         CASE WHEN EXISTS ({LOCKED_OUT}) THEN 1 ELSE 0 END AS locked_out \
                         FROM verifications WHERE id = $2"
                    ))
                    .bind(now)
                    .bind(&id)
                    .fetch_optional(&mut *c)
                    .await?;
                    Ok(Begun::Refused {
                        locked_out: match &row {
                            Some(r) => r.try_get::<i64>("locked_out")? != 0,
                            None => false,
                        },
                        verification: row.map(|r| verification_from_row(&r)).transpose()?,
                    })
                })
            }))
            .await
    }

    /// Close an attempt with its outcome. A verification the call did not end (`calling`
    /// still) is released: `pending` again, due its next call at `next_call_at` (none: the
    /// dialer leaves it), or `unanswered` once it has had `max_dials` dialer calls. An
    /// attempt closed already (by its right code, or by a takeover) releases nothing. The
    /// call no longer counts on the trunk.
    pub async fn finish_attempt(
        &self,
        attempt: i64,
        verification_id: &str,
        outcome: CallOutcome,
        next_call_at: Option<i64>,
        max_dials: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let verification_id = verification_id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let releases = !outcome.ends_verification();
                    if c.is_postgres() {
                        // One statement: a daemon that dies, or a connection lost, between
                        // the attempt's end and the release would leave the verification
                        // `calling`, with no open attempt for a takeover to find.
                        let finish = if releases {
                            &*FINISH_AND_RELEASE
                        } else {
                            &*FINISH
                        };
                        let finish = query(finish.as_str())
                            .bind(attempt)
                            .bind(now)
                            .bind(outcome.as_str());
                        let finish = if releases {
                            finish
                                .bind(give_up_at(next_call_at, max_dials))
                                .bind(next_call_at)
                                .bind(&verification_id)
                        } else {
                            finish
                        };
                        finish.execute(&mut *c).await?;
                        return Ok(());
                    }
                    // SQLite: one writer, which runs the operation in a savepoint of its own.
                    let closed = query(CLOSE)
                        .bind(attempt)
                        .bind(now)
                        .bind(outcome.as_str())
                        .execute(&mut *c)
                        .await?
                        .rows_affected()
                        == 1;
                    end_attempts_trunk_call(c, attempt).await?;
                    // Closed already (verified, or taken over after this daemon was declared
                    // dead): the verification is not this call's to release any more.
                    if closed && releases {
                        let by = Releaser::Attempt(attempt);
                        release(c, &verification_id, by, next_call_at, max_dials, now).await?;
                    }
                    Ok(())
                })
            }))
            .await
    }

    pub async fn attempts(&self, verification_id: &str) -> Result<Vec<CallAttempt>, StoreError> {
        let verification_id = verification_id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = query(
                        "SELECT id, verification_id, channel, uniqueid, started_at, ended_at, \
                         outcome, daemon FROM call_attempts WHERE verification_id = $1 ORDER BY id",
                    )
                    .bind(&verification_id)
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter().map(attempt_from_row).collect()
                })
            }))
            .await
    }

    /// After a crash, or calls cut off at the end of a stop's grace: close as `interrupted`
    /// the attempts left open by `daemon` (which, starting or stopping, has no calls) and any
    /// attempt started before `stale_before`, forget their trunk calls (as the end of any
    /// attempt does), put verifications left `calling` by a session without an open attempt
    /// back to `pending` (dialer calls that may still ring are [`Store::maintain`]'s), and
    /// make the webhook events `daemon` was sending due again. Wrong entries were counted as
    /// they happened and stay counted. Other daemons' live calls on a shared database are
    /// left alone.
    pub async fn recover_interrupted(
        &self,
        daemon: &str,
        stale_before: i64,
        now: i64,
    ) -> Result<Recovered, StoreError> {
        let daemon = daemon.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    // The trunk calls of the attempts closed next (a call's ChannelId is its
                    // attempt's uniqueid): over with them, they no longer hold a place.
                    query(
                        "DELETE FROM trunk_calls WHERE channel_id IN (SELECT uniqueid \
                         FROM call_attempts WHERE ended_at IS NULL \
                         AND (daemon = $1 OR started_at < $2))",
                    )
                    .bind(&daemon)
                    .bind(stale_before)
                    .execute(&mut tx)
                    .await?;
                    let attempts = query(
                        "UPDATE call_attempts SET ended_at = $1, outcome = 'interrupted' \
                         WHERE ended_at IS NULL AND (daemon = $2 OR started_at < $3)",
                    )
                    .bind(now)
                    .bind(&daemon)
                    .bind(stale_before)
                    .execute(&mut tx)
                    .await?
                    .rows_affected();
                    let verifications = query(
                        "UPDATE verifications SET status = 'pending', updated_at = $1, \
                         channel_id = NULL \
                         WHERE status = 'calling' AND claimed_at IS NULL \
                         AND NOT EXISTS (SELECT 1 FROM call_attempts a \
                             WHERE a.verification_id = verifications.id AND a.ended_at IS NULL)",
                    )
                    .bind(now)
                    .execute(&mut tx)
                    .await?
                    .rows_affected();
                    let events = release_claims(&mut tx, &daemon, now).await?;
                    tx.commit().await?;
                    Ok(Recovered {
                        attempts,
                        verifications,
                        events,
                    })
                })
            }))
            .await
    }
}

/// The claim of `begin_attempt`: `$1` now, `$2` the verification, `$3` the channel's
/// uniqueid. The attempts are looked up by the id given (`$2`), not by the outer row:
/// correlated, Postgres may plan them as a hash of every attempt on this channel, built by
/// reading the whole table on every claim, and it does while its statistics call the table
/// small (a new database); a connection keeps that plan as the table grows.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE verifications SET status = 'calling', updated_at = $1, \
         claimed_by = NULL, claimed_at = NULL \
         WHERE id = $2 AND expires_at > $1 AND attempts_used < max_attempts \
         AND ((status = 'pending' AND channel_id IS NULL \
               AND NOT EXISTS (SELECT 1 FROM call_attempts a \
                   WHERE a.verification_id = $2 AND a.uniqueid = $3)) \
              OR (status = 'calling' AND channel_id = $3 AND claimed_at IS NOT NULL)) \
         AND NOT EXISTS ({LOCKED_OUT})"
    )
});

/// Postgres: the claim and the attempt's row in one statement (`$4` the channel, `$5` the
/// daemon).
static CLAIM_WITH_ATTEMPT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH claimed AS ({} RETURNING {VERIFICATION_COLUMNS}), \
         attempt AS (INSERT INTO call_attempts \
             (verification_id, channel, uniqueid, daemon, started_at) \
             SELECT id, $4, $3, $5, $1 FROM claimed RETURNING id) \
         SELECT claimed.*, attempt.id AS attempt_id \
         FROM claimed CROSS JOIN attempt",
        *CLAIM
    )
});

/// SQLite, after the claim of verification `id`: the claimed row (read again: SQLite builds a
/// temporary table for a RETURNING clause, which costs more than the read) and the new
/// attempt's id. Should the attempt's row fail, the writer undoes the claim with it.
async fn open_attempt(
    c: &mut Conn,
    id: &str,
    channel: &str,
    uniqueid: &str,
    daemon: &str,
    now: i64,
) -> Result<(i64, Row), StoreError> {
    let row = query(format!(
        "SELECT {VERIFICATION_COLUMNS} FROM verifications WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(&mut *c)
    .await?;
    let attempt_id = query(
        "INSERT INTO call_attempts (verification_id, channel, uniqueid, daemon, started_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(channel)
    .bind(uniqueid)
    .bind(daemon)
    .bind(now)
    .insert_id(&mut *c)
    .await?;
    Ok((attempt_id, row))
}

/// Which call asks to release a `calling` verification.
#[derive(Clone, Copy)]
pub(super) enum Releaser<'a> {
    /// The dialer's call with this ChannelId, while no FastAGI session has taken it.
    Dial(&'a str),
    /// This FastAGI attempt, unless the verification is in a newer dialer call.
    Attempt(i64),
}

/// Put a `calling` verification back to `pending`, due again at `next_call_at`, or make it
/// `unanswered` when a retry is due but it has had `max_dials` calls. Shared by the end of
/// an attempt ([`Store::finish_attempt`]) and a dialer call that never reached the daemon
/// ([`Store::dial_failed`]).
pub(super) async fn release(
    c: &mut Conn,
    id: &str,
    by: Releaser<'_>,
    next_call_at: Option<i64>,
    max_dials: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let release = query(match by {
        Releaser::Dial(_) => RELEASE_BY_DIAL.as_str(),
        Releaser::Attempt(_) => RELEASE_BY_ATTEMPT.as_str(),
    })
    .bind(give_up_at(next_call_at, max_dials))
    .bind(next_call_at)
    .bind(now)
    .bind(id);
    let release = match by {
        Releaser::Dial(channel_id) => release.bind(channel_id),
        Releaser::Attempt(attempt) => release.bind(attempt),
    };
    Ok(release.execute(c).await?.rows_affected() == 1)
}

/// The dialer calls this many times at most: `max_dials` when another call is due, else no
/// limit (the verification goes back to `pending`).
fn give_up_at(next_call_at: Option<i64>, max_dials: i64) -> i64 {
    if next_call_at.is_some() {
        max_dials
    } else {
        i64::MAX
    }
}

/// A release as SQL, its values at these placeholders; `by` the condition of who releases.
fn release_sql(give_up_at: &str, next_call_at: &str, now: &str, id: &str, by: &str) -> String {
    format!(
        "UPDATE verifications SET \
         status = CASE WHEN dial_attempts >= {give_up_at} THEN 'unanswered' ELSE 'pending' END, \
         next_call_at = {next_call_at}, channel_id = NULL, claimed_by = NULL, claimed_at = NULL, \
         updated_at = {now} WHERE id = {id} AND status = 'calling' AND {by}"
    )
}

/// Released by attempt `attempt`'s end, unless the verification is in a newer dialer call.
fn by_attempt(attempt: &str) -> String {
    format!(
        "(channel_id IS NULL OR channel_id = \
         (SELECT a.uniqueid FROM call_attempts a WHERE a.id = {attempt}))"
    )
}

/// [`release`] by the dialer's call with ChannelId `$5` while no session has taken it.
static RELEASE_BY_DIAL: LazyLock<String> = LazyLock::new(|| {
    release_sql(
        "$1",
        "$2",
        "$3",
        "$4",
        "channel_id = $5 AND claimed_at IS NOT NULL",
    )
});

/// [`release`] by attempt `$5`.
static RELEASE_BY_ATTEMPT: LazyLock<String> =
    LazyLock::new(|| release_sql("$1", "$2", "$3", "$4", &by_attempt("$5")));

/// The end of attempt `$1` at `$2` with outcome `$3`.
const CLOSE: &str = "UPDATE call_attempts SET ended_at = $2, outcome = $3 \
                     WHERE id = $1 AND ended_at IS NULL";

/// Postgres: [`CLOSE`] and the end of the attempt's trunk call, and `also` (more `WITH`
/// parts), in one statement.
fn finish_sql(also: &str) -> String {
    format!(
        "WITH closed AS ({CLOSE} RETURNING id), trunk AS ({END_ATTEMPTS_TRUNK_CALL}){also} \
         SELECT COUNT(*) AS closed FROM closed"
    )
}

/// Postgres: the end of an attempt whose verification the call ended itself.
static FINISH: LazyLock<String> = LazyLock::new(|| finish_sql(""));

/// Postgres: the end of an attempt and, when it closed the attempt (not closed already by its
/// right code or a takeover), the release of verification `$6` (`$4` the dials to give up
/// at, `$5` the next call), in one statement.
static FINISH_AND_RELEASE: LazyLock<String> = LazyLock::new(|| {
    finish_sql(&format!(
        ", released AS ({} AND EXISTS (SELECT 1 FROM closed))",
        release_sql("$4", "$5", "$2", "$6", &by_attempt("$1"))
    ))
});

fn attempt_from_row(r: &Row) -> Result<CallAttempt, StoreError> {
    let outcome: Option<String> = r.try_get("outcome")?;
    Ok(CallAttempt {
        id: r.try_get("id")?,
        verification_id: r.try_get("verification_id")?,
        channel: r.try_get("channel")?,
        uniqueid: r.try_get("uniqueid")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        outcome: outcome.map(|o| parse_column("outcome", &o)).transpose()?,
        daemon: r.try_get("daemon")?,
    })
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection as _, Executor as _, Row as _};

    /// A connection plans the claim once and keeps the plan (Postgres's generic plan, after
    /// five runs) while `call_attempts` grows. Planned on a new database (no attempts yet,
    /// no statistics), the claim reads only its verification's attempts, through their
    /// index. Correlated to the outer row, it was planned as a hash of every attempt on the
    /// channel, the whole table read on every claim until autovacuum's next analysis: in
    /// the benchmark, 5,000 rows a call by the end of a run.
    #[tokio::test]
    async fn the_claim_reads_only_its_verifications_attempts_on_postgres() {
        const ENV: &str = "CALLVERIFY_TEST_POSTGRES_URL";
        let admin = std::env::var(ENV).unwrap_or_else(|_| {
            panic!("{ENV} is not set: this test needs a real Postgres (./scripts/test starts one)")
        });
        let mut server = sqlx::PgConnection::connect(&admin).await.unwrap();
        let name = format!("cvunit_{}", crate::domain::codes::generate(10));
        server
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        let store = super::Store::connect(&url, 1).await.unwrap();
        store.migrate().await.unwrap();
        store.close().await;

        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO verifications (id, phone, user_ref, code_hash, code_length, status, \
                 max_attempts, locale, created_at, updated_at, expires_at) \
             SELECT 'vf_' || i, '+14155550101', 'u' || i, 'h', 6, 'verified', 3, 'en', 1, 1, 2 \
             FROM generate_series(1, 200) AS i; \
             SET plan_cache_mode = force_generic_plan;",
        )
        .execute(&mut db)
        .await
        .unwrap();
        let prepare = format!(
            "PREPARE claim(bigint, text, text) AS {}",
            super::CLAIM.as_str()
        );
        sqlx::raw_sql(&prepare).execute(&mut db).await.unwrap();
        let plan: Vec<String> = sqlx::raw_sql("EXPLAIN EXECUTE claim(1, 'vf_7', 'chan-7')")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains("call_attempts_verification"),
            "the attempts are not read through their index:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan on call_attempts") && !plan.contains("hashed SubPlan"),
            "the claim reads the whole table:\n{plan}"
        );
        db.close().await.unwrap();
        server
            .execute(format!("DROP DATABASE {name}").as_str())
            .await
            .unwrap();
    }
}
