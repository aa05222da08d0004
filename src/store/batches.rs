//! Operations of one kind that arrive while one of their kind runs wait for it, and then run
//! together as one: one transaction, one commit, one round trip per statement for all of
//! them, where each alone pays its own (on Postgres the commit's flush and the round trips
//! are most of what an operation costs). An operation that arrives when none of its kind runs
//! starts at once, so nothing waits for a batch to fill. A batch holds 1, 2, 4, ... of them
//! (those left over run in the next), so that the statements sized to a batch have a few
//! sizes, each prepared once.
//!
//! Batches run in a task of their own, so a caller that goes away (an HTTP client that hangs
//! up, a request past its timeout) leaves the others' batch running; an operation whose
//! caller went away before its batch began is not run. A batch that fails (or panics) before
//! its commit runs again one operation at a time, so that one operation's failure is only its
//! own; one whose commit failed does not, since it may have committed.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::oneshot;

use super::engine::Engine;
use super::StoreError;

/// Runs a batch of operations on `engine`: all of them or, on an error, none; one result for
/// each, in order. A failed commit is [`StoreError::Commit`].
pub(super) type RunBatch<T, R> =
    fn(Engine, Arc<Vec<T>>) -> BoxFuture<'static, Result<Vec<R>, StoreError>>;

pub(super) struct Batcher<T, R> {
    waiting: Mutex<Waiting<T, R>>,
    run: RunBatch<T, R>,
    /// Whether an operation may run in one batch with the batch's first.
    joins: fn(&T, &T) -> bool,
    /// Most operations in one batch.
    max: usize,
}

struct Waiting<T, R> {
    queue: VecDeque<Waiter<T, R>>,
    /// A task is running batches.
    running: bool,
}

struct Waiter<T, R> {
    operation: T,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<T, R> Batcher<T, R>
where
    T: Clone + Send + Sync + 'static,
    R: Send + 'static,
{
    pub fn new(run: RunBatch<T, R>, joins: fn(&T, &T) -> bool, max: usize) -> Self {
        Self {
            waiting: Mutex::new(Waiting {
                queue: VecDeque::new(),
                running: false,
            }),
            run,
            joins,
            max: max.max(1),
        }
    }

    /// Run `operation` on `engine`, in a batch with those waiting beside it.
    pub async fn run(self: &Arc<Self>, engine: &Engine, operation: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut waiting = self.lock();
            waiting.queue.push_back(Waiter { operation, reply });
            !std::mem::replace(&mut waiting.running, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).drain(engine.clone()));
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting<T, R>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run batches until none is waiting.
    async fn drain(self: Arc<Self>, engine: Engine) {
        let mut draining = Draining {
            batcher: &self,
            done: false,
        };
        while let Some(batch) = self.next_batch() {
            self.run_batch(&engine, batch).await;
        }
        draining.done = true;
    }

    /// The next batch: the first operation waiting and those after it that join it, leaving
    /// out those whose caller went away. `None` when none waits: the next to arrive starts a
    /// new task.
    fn next_batch(&self) -> Option<Vec<Waiter<T, R>>> {
        let mut waiting = self.lock();
        let mut batch: Vec<Waiter<T, R>> = Vec::new();
        while batch.len() < self.max {
            let Some(next) = waiting.queue.pop_front() else {
                break;
            };
            if next.reply.is_closed() {
                continue;
            }
            if let Some(first) = batch.first() {
                if !(self.joins)(&first.operation, &next.operation) {
                    waiting.queue.push_front(next);
                    break;
                }
            }
            batch.push(next);
        }
        if batch.is_empty() {
            waiting.running = false;
            return None;
        }
        // A power of two: a statement sized to a batch has few sizes, each prepared once.
        let size = 1 << batch.len().ilog2();
        for later in batch.drain(size..).rev() {
            waiting.queue.push_front(later);
        }
        Some(batch)
    }

    async fn run_batch(&self, engine: &Engine, batch: Vec<Waiter<T, R>>) {
        let (operations, replies): (Vec<T>, Vec<_>) =
            batch.into_iter().map(|w| (w.operation, w.reply)).unzip();
        let operations = Arc::new(operations);
        let failed = match self.attempt(engine, Arc::clone(&operations)).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
                return;
            }
            Err(e) => e,
        };
        if replies.len() > 1 && failed.before_commit() {
            tracing::warn!(
                operations = replies.len(),
                error = %failed,
                "a batch of store operations failed: running them one at a time"
            );
            for (operation, reply) in operations.iter().zip(replies) {
                let alone = self.attempt(engine, Arc::new(vec![operation.clone()]));
                let _ = reply.send(alone.await.map(|mut results| results.remove(0)));
            }
            return;
        }
        // The first caller gets the error itself, the others its like.
        let like = failed.again();
        let mut first = Some(failed);
        for reply in replies {
            let error = first.take().unwrap_or_else(|| like.again());
            let _ = reply.send(Err(error));
        }
    }

    /// Run `operations` as one batch: a result for each, or why not.
    async fn attempt(
        &self,
        engine: &Engine,
        operations: Arc<Vec<T>>,
    ) -> Result<Vec<R>, StoreError> {
        let expected = operations.len();
        let run = (self.run)(engine.clone(), operations);
        match AssertUnwindSafe(run).catch_unwind().await {
            Ok(Ok(results)) if results.len() == expected => Ok(results),
            Ok(Ok(results)) => Err(StoreError::Results {
                operations: expected,
                results: results.len(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Panicked),
        }
    }
}

/// While batches run: if their task ends before none waits (its runtime shut down), the next
/// operation to arrive starts a new one.
struct Draining<'a, T, R> {
    batcher: &'a Batcher<T, R>,
    done: bool,
}

impl<T, R> Drop for Draining<'_, T, R> {
    fn drop(&mut self) {
        if !self.done {
            let mut waiting = self
                .batcher
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            waiting.running = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::Conn;

    /// An operation: its number, and where its batch is noted.
    #[derive(Clone)]
    struct Numbered {
        n: u32,
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
    }

    /// Notes the batch; fails a batch with 13 in it before its commit, one with 77 at its
    /// commit, and panics in one with 99; answers each number doubled. Odd and even numbers
    /// do not join.
    fn batcher(max: usize) -> Arc<Batcher<Numbered, u32>> {
        Arc::new(Batcher::new(
            |_, batch| {
                Box::pin(async move {
                    let numbers: Vec<u32> = batch.iter().map(|o| o.n).collect();
                    batch[0].batches.lock().unwrap().push(numbers.clone());
                    if numbers.contains(&99) {
                        panic!("a bug in a batch");
                    }
                    if numbers.contains(&13) {
                        return Err(StoreError::NoRow);
                    }
                    if numbers.contains(&77) {
                        return Err(StoreError::Commit("the connection was lost".into()));
                    }
                    Ok(numbers.iter().map(|n| n * 2).collect())
                })
            },
            |first, next| first.n % 2 == next.n % 2,
            max,
        ))
    }

    fn engine() -> Engine {
        let open = || Ok(Conn::sqlite(rusqlite::Connection::open_in_memory()?));
        Engine::writer(open().unwrap(), Arc::new(open))
    }

    /// Run `numbers` at once (on this test's one thread, all wait before the first batch
    /// runs); the batches, and each one's result.
    async fn run_together(
        max: usize,
        numbers: &[u32],
    ) -> (Vec<Vec<u32>>, Vec<Result<u32, StoreError>>) {
        let (b, engine, batches) = (batcher(max), engine(), Arc::default());
        let results = futures::future::join_all(numbers.iter().map(|&n| {
            let op = Numbered {
                n,
                batches: Arc::clone(&batches),
            };
            let (b, engine) = (Arc::clone(&b), engine.clone());
            async move { b.run(&engine, op).await }
        }))
        .await;
        let batches = batches.lock().unwrap().clone();
        (batches, results)
    }

    #[tokio::test]
    async fn operations_waiting_together_run_as_one_batch_in_order() {
        let (batches, results) = run_together(64, &[2, 4, 6, 8]).await;
        assert_eq!(batches, vec![vec![2, 4, 6, 8]]);
        let answers: Vec<u32> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, vec![4, 8, 12, 16]);
    }

    #[tokio::test]
    async fn batches_hold_a_power_of_two_up_to_max_and_only_operations_that_join() {
        let (batches, results) = run_together(4, &[2, 4, 6, 8, 12, 14, 16, 1, 3, 10]).await;
        // Four evens, then three: two of them, and one; two odds; the last even.
        assert_eq!(
            batches,
            vec![
                vec![2, 4, 6, 8],
                vec![12, 14],
                vec![16],
                vec![1, 3],
                vec![10]
            ]
        );
        assert!(results.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn a_failed_batch_runs_again_one_operation_at_a_time() {
        let (batches, results) = run_together(64, &[1, 13, 5, 7]).await;
        assert_eq!(
            batches,
            vec![vec![1, 13, 5, 7], vec![1], vec![13], vec![5], vec![7]]
        );
        assert_eq!(results[0].as_ref().unwrap(), &2);
        assert!(matches!(results[1], Err(StoreError::NoRow)));
        assert_eq!(results[2].as_ref().unwrap(), &10);
        assert_eq!(results[3].as_ref().unwrap(), &14);
    }

    #[tokio::test]
    async fn a_batch_that_panics_runs_again_one_operation_at_a_time() {
        let (batches, results) = run_together(2, &[1, 99, 3, 5]).await;
        assert_eq!(batches, vec![vec![1, 99], vec![1], vec![99], vec![3, 5]]);
        assert_eq!(results[0].as_ref().unwrap(), &2);
        assert!(matches!(results[1], Err(StoreError::Panicked)));
        assert_eq!(results[2].as_ref().unwrap(), &6);
        assert_eq!(results[3].as_ref().unwrap(), &10);
    }

    #[tokio::test]
    async fn a_batch_whose_commit_failed_is_not_run_again() {
        let (batches, results) = run_together(64, &[1, 77]).await;
        assert_eq!(batches, vec![vec![1, 77]]);
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(StoreError::Commit(_)))));
    }

    #[tokio::test]
    async fn operations_whose_callers_went_away_are_not_run() {
        let (b, engine, batches) = (batcher(64), engine(), Arc::new(Mutex::new(Vec::new())));
        let op = |n| Numbered {
            n,
            batches: Arc::clone(&batches),
        };
        // The first starts the batches' task, which has not run yet on this one thread; its
        // caller goes away before it does.
        let mut gone = Box::pin(b.run(&engine, op(4)));
        assert!(futures::poll!(gone.as_mut()).is_pending());
        drop(gone);
        assert_eq!(b.run(&engine, op(6)).await.unwrap(), 12);
        let batches = batches.lock().unwrap().clone();
        assert!(batches.iter().flatten().all(|&n| n != 4), "{batches:?}");
    }
}
