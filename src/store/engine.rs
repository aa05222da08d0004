//! How store operations reach the database.
//!
//! Postgres: each operation runs on a connection from a pool. SQLite has one writer at a
//! time anyway, and sqlx's pool costs more per statement (a ping on every release) than the
//! statement itself; so one connection is owned by a writer thread that runs the operations
//! waiting in its queue together in one transaction (group commit) and answers each
//! operation only after that transaction has committed. Each operation runs in a savepoint
//! of the group's transaction, so that one that fails is undone whole while the others
//! commit; on Postgres an operation of several statements that must be atomic opens a
//! transaction of its own. A connection whose BEGIN or COMMIT failed (the disk full, say) is closed
//! and a new one opened for the next group: after such a failure SQLite may have rolled the
//! transaction back on its own, and the count of open transactions no longer says where
//! the connection stands. The SQLite connection is rusqlite's, not sqlx's: sqlx hands every
//! statement to a thread of its own and back, two thread wake-ups a statement, which cost
//! ten times SQLite's own work (see [`super::sql`]).

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::sql::Conn;
use super::StoreError;

/// An operation on a connection.
pub type Op<T> =
    Box<dyn for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, StoreError>> + Send>;

/// What became of an operation's transaction.
#[derive(Clone, Copy)]
pub(super) enum Fate<'a> {
    Committed,
    /// The commit failed, with why: nothing of the group was written.
    Failed(&'a str),
    /// Not run: there is no connection to run it on, and why.
    NotRun(&'a str),
}

/// Delivers an operation's result once its transaction's fate is known.
type Finish = Box<dyn FnOnce(Fate<'_>) + Send>;
/// An operation, run on the connection (or, with `None`, refused unrun).
type Job = Box<dyn for<'c> FnOnce(Option<&'c mut Conn>) -> BoxFuture<'c, Finish> + Send>;

/// What the writer's thread is sent.
pub enum Message {
    Job(Job),
    /// Finish what is queued, close the connection, and say so.
    Close(oneshot::Sender<()>),
}

/// Opens the writer's connection, at start and after a failure.
pub type Connect = Arc<dyn Fn() -> Result<Conn, StoreError> + Send + Sync>;

/// Most operations committed together.
const MAX_GROUP: usize = 256;

#[derive(Clone)]
pub enum Engine {
    Pool(PgPool),
    Writer(mpsc::Sender<Message>),
}

impl Engine {
    /// Start the group-commit writer's thread on `conn`, opened by `connect` (which opens
    /// the next one when a transaction fails).
    pub fn writer(conn: Conn, connect: Connect) -> Self {
        let (jobs, queue) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("callverify-sqlite".into())
            .spawn(move || {
                write_loop(
                    Writer {
                        conn: Some(conn),
                        connect,
                    },
                    queue,
                )
            })
            .expect("starting the SQLite writer's thread");
        Engine::Writer(jobs)
    }

    /// Run `op` and return its result once it is durable.
    pub async fn run<T: Send + 'static>(&self, op: Op<T>) -> Result<T, StoreError> {
        match self {
            Engine::Pool(pool) => {
                let mut conn = Conn::postgres(pool.acquire().await?);
                let result = op(&mut conn).await;
                conn.settle().await?;
                result
            }
            Engine::Writer(jobs) => {
                let (reply, answer) = oneshot::channel();
                let job: Job = Box::new(move |conn| {
                    Box::pin(async move {
                        let result = match conn {
                            Some(conn) => Some(atomically(conn, op).await),
                            None => None,
                        };
                        Box::new(move |fate: Fate<'_>| {
                            let _ = reply.send(match (fate, result) {
                                (Fate::Committed, Some(result)) => result,
                                (Fate::Failed(why), _) => Err(StoreError::Commit(why.to_owned())),
                                (Fate::NotRun(why), _) => {
                                    Err(StoreError::Unavailable(why.to_owned()))
                                }
                                // A job given no connection is never told it committed.
                                (Fate::Committed, None) => Err(StoreError::Closed),
                            });
                        }) as Finish
                    })
                });
                jobs.send(Message::Job(job))
                    .await
                    .map_err(|_| StoreError::Closed)?;
                answer.await.map_err(|_| StoreError::Closed)?
            }
        }
    }

    /// Finish what is queued and close the connection(s).
    pub async fn close(&self) {
        match self {
            Engine::Pool(pool) => pool.close().await,
            Engine::Writer(jobs) => {
                let (done, closed) = oneshot::channel();
                if jobs.send(Message::Close(done)).await.is_ok() {
                    let _ = closed.await;
                }
            }
        }
    }
}

/// `op` in a savepoint of the group's transaction: an operation that fails leaves nothing
/// of itself behind, whatever it wrote before failing, while the group's others commit.
async fn atomically<T>(conn: &mut Conn, op: Op<T>) -> Result<T, StoreError> {
    let mut tx = conn.begin().await?;
    let result = op(&mut tx).await;
    if result.is_ok() {
        tx.commit().await?;
    }
    result
}

/// The writer's connection: `None` after a failure, until one is opened again.
struct Writer {
    conn: Option<Conn>,
    connect: Connect,
}

impl Writer {
    /// The connection, opened again if the last one failed.
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.is_none() {
            self.conn = Some((self.connect)()?);
            tracing::info!("database connection opened again");
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    /// Run `group` in one transaction (see [`commit_group`]), on a new connection if the last
    /// one failed. Without a database to write to, every operation is refused unrun.
    fn write(&mut self, group: Vec<Job>) -> Result<(), (Vec<Job>, StoreError)> {
        use futures::executor::block_on;
        let conn = match self.conn() {
            Ok(conn) => conn,
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, "the database cannot be opened");
                for job in group {
                    (block_on(job(None)))(Fate::NotRun(&why));
                }
                return Ok(());
            }
        };
        let outcome = commit_group(conn, group);
        if !matches!(outcome, Ok(true)) {
            self.discard();
        }
        outcome.map(drop)
    }

    /// Close the connection: its state is not known any more.
    fn discard(&mut self) {
        self.conn = None;
    }
}

/// Run `group` in one transaction on `conn` and answer each operation once the commit's fate
/// is known; `Ok(false)` when the commit failed (the connection is then to be discarded).
/// When the transaction cannot begin, the operations come back unrun with why.
fn commit_group(conn: &mut Conn, group: Vec<Job>) -> Result<bool, (Vec<Job>, StoreError)> {
    use futures::executor::block_on;
    // IMMEDIATE: take the write lock up front (waiting on busy_timeout), rather than fail on
    // upgrading a read lock when another process (a CLI, a second daemon) wrote.
    let mut tx = match block_on(conn.begin_with("BEGIN IMMEDIATE")) {
        Ok(tx) => tx,
        Err(e) => return Err((group, e)),
    };
    let mut finishes = Vec::with_capacity(group.len());
    for job in group {
        // SQLite rolls a transaction back on its own after some errors (a full disk): the
        // rest of the group would run outside it, each statement committed alone. It is
        // refused instead; the commit fails the others.
        if tx.in_transaction() {
            finishes.push(block_on(job(Some(&mut tx))));
        } else {
            (block_on(job(None)))(Fate::NotRun("the transaction was rolled back"));
        }
    }
    let error = block_on(tx.commit()).err().map(|e| e.to_string());
    if let Some(e) = &error {
        tracing::error!(error = %e, "database commit failed");
    }
    let fate = error.as_deref().map_or(Fate::Committed, Fate::Failed);
    for finish in finishes {
        finish(fate);
    }
    Ok(error.is_none())
}

/// The writer's thread: each group of queued operations in one transaction. The
/// operations' statements complete at once on this thread, so an operation is polled to
/// its end here (`block_on`) without a hand-over per statement.
fn write_loop(mut writer: Writer, mut queue: mpsc::Receiver<Message>) {
    use futures::executor::block_on;
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = queue.blocking_recv() else {
            break;
        };
        let mut group = Vec::new();
        match first {
            Message::Job(job) => group.push(job),
            Message::Close(done) => closing = Some(done),
        }
        // What is queued goes in this group (and, when closing, is finished first).
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(Message::Job(job)) => group.push(job),
                Ok(Message::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        if let Err((group, e)) = writer.write(group) {
            // Once more on a new connection (the last one's state is not known); then the
            // operations are refused, unrun.
            tracing::warn!(error = %e, "database BEGIN failed; trying a new connection");
            if let Err((group, e)) = writer.write(group) {
                let why = e.to_string();
                for job in group {
                    (block_on(job(None)))(Fate::NotRun(&why));
                }
            }
        }
    }
    // Answer whatever is still queued with `Closed` (their senders see the drop).
    drop(queue);
    writer.discard();
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::query;

    /// A writer on a new SQLite file with a table `t`; `first` is handed the writer's first
    /// connection to leave it in some state.
    fn writer(dir: &std::path::Path, first: impl FnOnce(&rusqlite::Connection)) -> Engine {
        let path = dir.join("engine.db");
        let open = move || -> Result<Conn, StoreError> {
            Ok(Conn::sqlite(rusqlite::Connection::open(&path)?))
        };
        let db = rusqlite::Connection::open(dir.join("engine.db")).unwrap();
        db.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        first(&db);
        Engine::writer(Conn::sqlite(db), Arc::new(open))
    }

    /// Inserts `n`, then fails if `fail`.
    fn insert(n: i64, fail: bool) -> Op<()> {
        Box::new(move |c| {
            Box::pin(async move {
                query("INSERT INTO t (n) VALUES ($1)")
                    .bind(n)
                    .execute(&mut *c)
                    .await?;
                if fail {
                    query("INSERT INTO nowhere VALUES (1)")
                        .execute(&mut *c)
                        .await?;
                }
                Ok(())
            })
        })
    }

    async fn rows(engine: &Engine) -> Vec<i64> {
        let read: Op<Vec<i64>> = Box::new(|c| {
            Box::pin(async move {
                query("SELECT n FROM t ORDER BY n")
                    .fetch_all(&mut *c)
                    .await?
                    .iter()
                    .map(|row| row.try_get("n"))
                    .collect()
            })
        });
        engine.run(read).await.unwrap()
    }

    /// Three operations at once, the middle one failing after its first write.
    async fn run_three(engine: &Engine) {
        let (a, b, c) = tokio::join!(
            engine.run(insert(1, false)),
            engine.run(insert(2, true)),
            engine.run(insert(3, false)),
        );
        assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
        assert!(b.is_err());
    }

    #[tokio::test]
    async fn an_operation_that_fails_leaves_nothing_and_its_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let engine = writer(dir.path(), |_| {});
        run_three(&engine).await;
        assert_eq!(rows(&engine).await, [1, 3]);
        engine.close().await;
    }

    /// A connection whose BEGIN fails (here: a transaction left open on it): the group runs
    /// again on a new connection, each operation still whole or not at all.
    #[tokio::test]
    async fn without_a_group_transaction_each_operation_is_still_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let engine = writer(dir.path(), |db| db.execute_batch("BEGIN").unwrap());
        run_three(&engine).await;
        assert_eq!(rows(&engine).await, [1, 3]);
        engine.close().await;
    }
}
