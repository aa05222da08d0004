//! How store operations reach the database.
//!
//! Postgres: each operation runs on a connection from a pool. SQLite has one writer at a
//! time anyway, and sqlx's pool costs more per statement (a ping on every release) than the
//! statement itself; so one connection is owned by a writer task that runs the operations
//! waiting in its queue together in one transaction (group commit) and answers each
//! operation only after that transaction has committed. Operations that need several
//! statements to be atomic open a transaction of their own, which inside the group becomes
//! a savepoint.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::{AnyConnection, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot, Notify};

use super::StoreError;

/// An operation on a connection.
pub type Op<T> =
    Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send>;

/// Delivers an operation's result once its transaction's fate is known (`Some` = the commit
/// failed, with why).
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;
type Job = Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Finish> + Send>;

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
    /// Start the group-commit writer on `conn`.
    pub fn writer(conn: AnyConnection) -> Self {
        let (jobs, queue) = mpsc::channel(4096);
        let closing = Arc::new(Notify::new());
        let closed = Arc::new(Notify::new());
        tokio::spawn(write_loop(conn, queue, closing.clone(), closed.clone()));
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
                        let result = op(conn).await;
                        Box::new(move |commit_error: Option<&str>| {
                            let _ = reply.send(match commit_error {
                                Some(why) => Err(StoreError::Commit(why.to_owned())),
                                None => result,
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

async fn write_loop(
    mut conn: AnyConnection,
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
        // IMMEDIATE: take the write lock up front (waiting on busy_timeout), rather than
        // fail on upgrading a read lock when another process (a CLI, a second daemon) wrote.
        let ungrouped = match conn.begin_with("BEGIN IMMEDIATE").await {
            Ok(mut tx) => {
                let mut finishes = Vec::with_capacity(group.len());
                for job in group {
                    finishes.push(job(&mut tx).await);
                }
                let error = tx.commit().await.err().map(|e| e.to_string());
                if let Some(e) = &error {
                    tracing::error!(error = %e, "database commit failed");
                }
                for finish in finishes {
                    finish(error.as_deref());
                }
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "database BEGIN failed; writing without grouping");
                Some(group)
            }
        };
        // No transaction to be had: run each operation on its own instead.
        for job in ungrouped.into_iter().flatten() {
            (job(&mut conn).await)(None);
        }
    }
    // Answer whatever is still queued with `Closed` (their senders see the drop).
    drop(queue);
    let _ = conn.close().await;
    closed.notify_one();
}
