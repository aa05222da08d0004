//! The `daemons` table: each running daemon's heartbeat, and the takeover of one that
//! stopped heartbeating: its open call attempts closed as `interrupted`, their
//! verifications released as at the end of a call, its trunk calls forgotten.

use super::sql::{query, Row};

use super::attempts::{release, Releaser};
use super::outbox::release_claims;
use super::{op, Backend, Store, StoreError};

/// A daemon as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonRow {
    pub name: String,
    /// This run of the name (random, new at every start).
    pub incarnation: String,
    /// The machine's boot (`/proc/sys/kernel/random/boot_id`) and the process: an earlier
    /// run on this machine is known by them.
    pub boot_id: String,
    pub pid: i64,
    pub started_at: i64,
    pub last_seen: i64,
    /// The live daemon that took this one over once it stopped heartbeating.
    pub taken_over_by: Option<String>,
}

const DAEMON_COLUMNS: &str =
    "name, incarnation, boot_id, pid, started_at, last_seen, taken_over_by";

fn daemon_row(r: &Row) -> Result<DaemonRow, StoreError> {
    Ok(DaemonRow {
        name: r.try_get("name")?,
        incarnation: r.try_get("incarnation")?,
        boot_id: r.try_get("boot_id")?,
        pid: r.try_get("pid")?,
        started_at: r.try_get("started_at")?,
        last_seen: r.try_get("last_seen")?,
        taken_over_by: r.try_get("taken_over_by")?,
    })
}

/// What [`Store::take_over`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakenOver {
    /// The daemons declared dead, by name.
    pub daemons: Vec<String>,
    /// Their call attempts closed as `interrupted`.
    pub attempts: u64,
    /// The verifications those calls left `calling`, released (queued again, or
    /// `unanswered` past `dialer.max_dials`).
    pub released: u64,
    /// The webhook events they were sending, due again.
    pub events: u64,
}

impl Store {
    /// The registration of `name`, if any.
    pub async fn daemon(&self, name: &str) -> Result<Option<DaemonRow>, StoreError> {
        let name = name.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query(format!(
                        "SELECT {DAEMON_COLUMNS} FROM daemons WHERE name = $1"
                    ))
                    .bind(&name)
                    .fetch_optional(&mut *c)
                    .await?;
                    row.as_ref().map(daemon_row).transpose()
                })
            }))
            .await
    }

    /// Every daemon registered, live or not (none on a store older than the list, or
    /// with no schema yet).
    pub async fn daemons(&self) -> Result<Vec<DaemonRow>, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = query(format!(
                        "SELECT {DAEMON_COLUMNS} FROM daemons ORDER BY name"
                    ))
                    .fetch_all(&mut *c)
                    .await;
                    match rows {
                        Ok(rows) => rows.iter().map(daemon_row).collect(),
                        Err(e) if e.is_missing_table() => Ok(Vec::new()),
                        Err(e) => Err(e),
                    }
                })
            }))
            .await
    }

    /// Register `row` as the running daemon of its name, in place of the registration of
    /// incarnation `replacing` (`None`: the name has none). False when the registration
    /// changed meanwhile (another daemon of the name started at the same moment).
    pub async fn register_daemon(
        &self,
        row: &DaemonRow,
        replacing: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (row, replacing) = (row.clone(), replacing.map(str::to_owned));
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let statement = match replacing {
                        None => {
                            "INSERT INTO daemons (name, incarnation, boot_id, pid, started_at, \
                             last_seen) VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (name) DO NOTHING"
                        }
                        Some(_) => {
                            "UPDATE daemons SET incarnation = $2, boot_id = $3, pid = $4, \
                             started_at = $5, last_seen = $6, taken_over_by = NULL, \
                             taken_over_at = NULL WHERE name = $1 AND incarnation = $7"
                        }
                    };
                    let mut query = query(statement)
                        .bind(&row.name)
                        .bind(&row.incarnation)
                        .bind(&row.boot_id)
                        .bind(row.pid)
                        .bind(row.started_at)
                        .bind(row.last_seen);
                    if let Some(replacing) = &replacing {
                        query = query.bind(replacing);
                    }
                    let done = query.execute(&mut *c).await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    /// A running daemon's heartbeat. False when its registration is gone: it was declared
    /// dead and taken over, or another run of its name registered since.
    pub async fn heartbeat(
        &self,
        name: &str,
        incarnation: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (name, incarnation) = (name.to_owned(), incarnation.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let done = query(
                        "UPDATE daemons SET last_seen = $1 WHERE name = $2 \
                         AND incarnation = $3 AND taken_over_by IS NULL",
                    )
                    .bind(now)
                    .bind(&name)
                    .bind(&incarnation)
                    .execute(&mut *c)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    /// A daemon that stopped cleanly (its calls done) leaves: nothing to take over.
    pub async fn deregister(&self, name: &str, incarnation: &str) -> Result<(), StoreError> {
        let (name, incarnation) = (name.to_owned(), incarnation.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query("DELETE FROM daemons WHERE name = $1 AND incarnation = $2")
                        .bind(&name)
                        .bind(&incarnation)
                        .execute(&mut *c)
                        .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// Declare dead, on behalf of live daemon `me`, every other daemon not seen since
    /// `dead_before`, and take over its calls in the same transaction: its open call
    /// attempts closed as `interrupted` (a late write of the dead daemon for one of them is
    /// then refused, as for any closed attempt), their verifications released as at the end
    /// of a call that is retried (due again now, or `unanswered` after `max_dials` calls),
    /// its trunk calls forgotten, the webhook events it was sending due again. Each dead daemon is taken over once: the daemon that marks
    /// its row does it, whoever else noticed at the same moment.
    pub async fn take_over(
        &self,
        me: &str,
        dead_before: i64,
        max_dials: i64,
        now: i64,
    ) -> Result<TakenOver, StoreError> {
        let me = me.to_owned();
        let lock_calls_first = self.backend == Backend::Postgres;
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    let dead: Vec<String> = query(
                        "UPDATE daemons SET taken_over_by = $1, taken_over_at = $2 \
                         WHERE last_seen < $3 AND taken_over_by IS NULL AND name <> $1 \
                         RETURNING name",
                    )
                    .bind(&me)
                    .bind(now)
                    .bind(dead_before)
                    .fetch_all(&mut tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get("name"))
                    .collect::<Result<_, _>>()?;
                    let mut taken = TakenOver::default();
                    for name in &dead {
                        if lock_calls_first {
                            // The verifications first, then their attempts: the order a code
                            // check in one of these calls takes them in (a daemon declared
                            // dead may only be paused). The other order deadlocks with it,
                            // and Postgres aborts one of the two.
                            query(
                                "SELECT id FROM verifications WHERE id IN \
                                 (SELECT verification_id FROM call_attempts \
                                 WHERE ended_at IS NULL AND daemon = $1) \
                                 ORDER BY id FOR UPDATE",
                            )
                            .bind(name)
                            .execute(&mut tx)
                            .await?;
                        }
                        let attempts = query(
                            "UPDATE call_attempts SET ended_at = $1, outcome = 'interrupted' \
                             WHERE ended_at IS NULL AND daemon = $2 \
                             RETURNING id, verification_id",
                        )
                        .bind(now)
                        .bind(name)
                        .fetch_all(&mut tx)
                        .await?;
                        for a in &attempts {
                            let id: String = a.try_get("verification_id")?;
                            let by = Releaser::Attempt(a.try_get("id")?);
                            if release(&mut tx, &id, by, Some(now), max_dials, now).await? {
                                taken.released += 1;
                            }
                        }
                        taken.attempts += attempts.len() as u64;
                        taken.events += release_claims(&mut tx, name, now).await?;
                        query("DELETE FROM trunk_calls WHERE daemon = $1")
                            .bind(name)
                            .execute(&mut tx)
                            .await?;
                    }
                    tx.commit().await?;
                    taken.daemons = dead;
                    Ok(taken)
                })
            }))
            .await
    }
}
