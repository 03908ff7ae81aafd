//! Gathering concurrent requests into batches, with no timer.
//!
//! Why: the API records submissions and a worker claims and completes its
//! jobs with one statement for many requests (group commit), because
//! single-row statements spent PostgreSQL's CPU on per-statement work. Both
//! gather requests the same way, so the gathering lives here once.
//!
//! How: each request goes into a channel with its own reply. One task takes
//! the first request waiting, waits for a free slot (at most
//! [`Limits::in_flight`] batches run at once), then takes whatever else is
//! already waiting, up to [`Limits::max_batch`], and runs the batch on a
//! task of its own. There is no linger timer: a lone request goes at once,
//! and while the slots are busy the next requests gather in the channel, so
//! batches grow with the load by themselves and an idle service never waits
//! for a batch to fill.
//!
//! Why batching is safe here: the batcher only decides which requests share
//! one run; it never answers for them. The function that runs a batch
//! answers each request for itself (see [`Request::answer`]), and the
//! callers' run functions keep the answer a request would have had alone
//! (a batch that fails as a whole is retried one by one, or every request
//! is told the error). A request is answered only once its batch's work has
//! returned, so an answer is as durable as it was without batching. If the
//! batcher stops, or a run drops a request without answering, the caller
//! gets a [`BatchError`] rather than waiting forever.

use std::{future::Future, sync::Arc};

use tokio::sync::{Semaphore, mpsc, oneshot};

/// How a [`Batcher`] gathers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most requests in one batch.
    pub max_batch: usize,
    /// Batches running at once; while they all run, the next requests gather.
    pub in_flight: usize,
    /// Requests waiting in the channel before a caller waits to hand in its own.
    pub queue: usize,
}

/// A request of a batch: what was asked, and where its answer goes.
#[derive(Debug)]
pub struct Request<I, O> {
    /// What the caller asked.
    pub input: I,
    reply: oneshot::Sender<O>,
}

impl<I, O> Request<I, O> {
    /// Answers this request's caller. A caller that went away is not an error.
    pub fn answer(self, answer: O) {
        let _ = self.reply.send(answer);
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// The batcher's task has ended; nothing was run.
    #[error("the batcher has stopped")]
    Stopped,
    /// The batch's run dropped the request without answering it.
    #[error("the batcher dropped a request")]
    Dropped,
}

/// Runs requests of type `I` in batches, answering each with an `O`; cheap to clone.
#[derive(Debug)]
pub struct Batcher<I, O> {
    tx: mpsc::Sender<Request<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the gathering task. `run` takes a batch and answers each of
    /// its requests (in any order, as each is known). The task ends once
    /// every clone of the `Batcher` is dropped and the channel is drained.
    pub fn start<F, Fut>(limits: Limits, run: F) -> Self
    where
        F: Fn(Vec<Request<I, O>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Request<I, O>>(limits.queue.max(1));
        let max_batch = limits.max_batch.max(1);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
            while let Some(first) = rx.recv().await {
                // Wait for a free slot first: what arrives meanwhile joins this batch.
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let running = run(batch);
                tokio::spawn(async move {
                    running.await;
                    drop(slot);
                });
            }
        });
        Self { tx }
    }

    /// Like [`Batcher::start`] for a `run` that returns one answer per
    /// input, in the inputs' order; the answers are sent once it returns.
    pub fn start_in_order<F, Fut>(limits: Limits, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        Self::start(limits, move |batch: Vec<Request<I, O>>| {
            let (inputs, replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
                batch.into_iter().map(|r| (r.input, r.reply)).unzip();
            let answers = run(inputs);
            async move {
                for (reply, answer) in replies.into_iter().zip(answers.await) {
                    let _ = reply.send(answer);
                }
            }
        })
    }

    /// Hands `input` to the batcher and waits for its answer.
    pub async fn call(&self, input: I) -> Result<O, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request { input, reply }).await.map_err(|_| BatchError::Stopped)?;
        answer.await.map_err(|_| BatchError::Dropped)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;

    const LIMITS: Limits = Limits { max_batch: 3, in_flight: 1, queue: 64 };

    #[tokio::test]
    async fn a_lone_request_runs_at_once_and_gets_its_answer() {
        let batcher =
            Batcher::start_in_order(LIMITS, |xs: Vec<u32>| async move { xs.iter().map(|x| x * 10).collect() });
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), batcher.call(4)).await;
        assert_eq!(answer.expect("no linger timer delays a lone request"), Ok(40));
    }

    #[tokio::test]
    async fn requests_gather_while_a_batch_runs_and_each_gets_its_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let batcher = {
            let (sizes, release) = (sizes.clone(), release.clone());
            Batcher::start_in_order(LIMITS, move |xs: Vec<u32>| {
                let (sizes, release) = (sizes.clone(), release.clone());
                async move {
                    let first = sizes.lock().unwrap().is_empty();
                    sizes.lock().unwrap().push(xs.len());
                    if first {
                        // Hold the only slot until the others have queued.
                        release.notified().await;
                    }
                    xs.iter().map(|x| x + 1).collect()
                }
            })
        };
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.call(0).await }
        });
        while sizes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=5)
            .map(|x| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(x).await })
            })
            .collect();
        // Let the five reach the channel, then free the slot.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        assert_eq!(first.await.unwrap(), Ok(1));
        for (x, handle) in (1..=5).zip(rest) {
            assert_eq!(handle.await.unwrap(), Ok(x + 1));
        }
        // The first alone, then the five that gathered, at most 3 a batch.
        assert_eq!(*sizes.lock().unwrap(), vec![1, 3, 2]);
    }

    #[tokio::test]
    async fn a_request_its_run_drops_is_told_so() {
        let batcher: Batcher<u32, u32> = Batcher::start(LIMITS, |batch| async move { drop(batch) });
        assert_eq!(batcher.call(1).await, Err(BatchError::Dropped));
    }
}
