//! How store operations reach the database.
//!
//! Postgres: each operation runs on a connection from a pool. SQLite has one writer at a
//! time anyway, and sqlx's pool costs more per statement (a ping on every release) than the
//! statement itself; so one connection is owned by a writer task that runs the operations
//! waiting in its queue together in one transaction (group commit) and answers each
//! operation only after that transaction has committed. Operations that need several
//! statements to be atomic open a transaction of their own, which inside the group becomes
//! a savepoint. A connection whose BEGIN or COMMIT failed (the disk full, say) is closed
//! and a new one opened for the next group: after such a failure SQLite may have rolled the
//! transaction back on its own, and sqlx's count of open transactions no longer says where
//! the connection stands.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::{AnyConnection, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot, Notify};

use super::StoreError;

/// An operation on a connection.
pub type Op<T> =
    Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send>;

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
type Job = Box<dyn for<'c> FnOnce(Option<&'c mut AnyConnection>) -> BoxFuture<'c, Finish> + Send>;

/// Opens the writer's connection, at start and after a failure.
pub type Connect =
    Arc<dyn Fn() -> BoxFuture<'static, Result<AnyConnection, StoreError>> + Send + Sync>;

/// Most operations committed together.
const MAX_GROUP: usize = 256;

#[derive(Clone)]
pub enum Engine {
    Pool(AnyPool),
    Writer {
        jobs: mpsc::Sender<Job>,
        closing: Arc<Notify>,
        closed: Arc<Notify>,
    },
}

impl Engine {
    /// Start the group-commit writer on `conn`, opened by `connect` (which opens the next
    /// one when a transaction fails).
    pub fn writer(conn: AnyConnection, connect: Connect) -> Self {
        let (jobs, queue) = mpsc::channel(4096);
        let closing = Arc::new(Notify::new());
        let closed = Arc::new(Notify::new());
        tokio::spawn(write_loop(
            Writer {
                conn: Some(conn),
                connect,
            },
            queue,
            closing.clone(),
            closed.clone(),
        ));
        Engine::Writer {
            jobs,
            closing,
            closed,
        }
    }

    /// Run `op` and return its result once it is durable.
    pub async fn run<T: Send + 'static>(&self, op: Op<T>) -> Result<T, StoreError> {
        match self {
            Engine::Pool(pool) => {
                let mut conn = pool.acquire().await?;
                op(&mut conn).await
            }
            Engine::Writer { jobs, .. } => {
                let (reply, answer) = oneshot::channel();
                let job: Job = Box::new(move |conn| {
                    Box::pin(async move {
                        let result = match conn {
                            Some(conn) => Some(op(conn).await),
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
                jobs.send(job).await.map_err(|_| StoreError::Closed)?;
                answer.await.map_err(|_| StoreError::Closed)?
            }
        }
    }

    /// Finish what is queued and close the connection(s).
    pub async fn close(&self) {
        match self {
            Engine::Pool(pool) => pool.close().await,
            Engine::Writer {
                closing, closed, ..
            } => {
                let done = closed.notified();
                closing.notify_one();
                done.await;
            }
        }
    }
}

/// The writer's connection: `None` after a failure, until one is opened again.
struct Writer {
    conn: Option<AnyConnection>,
    connect: Connect,
}

impl Writer {
    /// The connection, opened again if the last one failed.
    async fn conn(&mut self) -> Result<&mut AnyConnection, StoreError> {
        if self.conn.is_none() {
            self.conn = Some((self.connect)().await?);
            tracing::info!("database connection opened again");
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    /// Close the connection: its state is not known any more.
    async fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

async fn write_loop(
    mut writer: Writer,
    mut queue: mpsc::Receiver<Job>,
    closing: Arc<Notify>,
    closed: Arc<Notify>,
) {
    loop {
        let first = tokio::select! {
            job = queue.recv() => job,
            () = closing.notified() => None,
        };
        let Some(first) = first else { break };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let conn = match writer.conn().await {
            Ok(conn) => conn,
            Err(e) => {
                // No database to write to: every operation of the group is refused, unrun.
                let why = e.to_string();
                tracing::error!(error = %why, "the database cannot be opened");
                for job in group {
                    (job(None).await)(Fate::NotRun(&why));
                }
                continue;
            }
        };
        // IMMEDIATE: take the write lock up front (waiting on busy_timeout), rather than
        // fail on upgrading a read lock when another process (a CLI, a second daemon) wrote.
        let (ungrouped, failed) = match conn.begin_with("BEGIN IMMEDIATE").await {
            Ok(mut tx) => {
                let mut finishes = Vec::with_capacity(group.len());
                for job in group {
                    finishes.push(job(Some(&mut tx)).await);
                }
                let error = tx.commit().await.err().map(|e| e.to_string());
                if let Some(e) = &error {
                    tracing::error!(error = %e, "database commit failed");
                }
                let fate = error.as_deref().map_or(Fate::Committed, Fate::Failed);
                for finish in finishes {
                    finish(fate);
                }
                (None, error.is_some())
            }
            Err(e) => {
                tracing::warn!(error = %e, "database BEGIN failed; writing without grouping");
                (Some(group), true)
            }
        };
        if failed {
            writer.discard().await;
        }
        // No transaction to be had: run each operation on its own instead, on a new
        // connection.
        for job in ungrouped.into_iter().flatten() {
            match writer.conn().await {
                Ok(conn) => (job(Some(conn)).await)(Fate::Committed),
                Err(e) => (job(None).await)(Fate::NotRun(&e.to_string())),
            }
        }
    }
    // Answer whatever is still queued with `Closed` (their senders see the drop).
    drop(queue);
    writer.discard().await;
    closed.notify_one();
}
