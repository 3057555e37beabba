//! Runs every chunk of a render at once and decides what a failure means.
//!
//! - A worker that vanished (connection refused or reset, instance killed, 5xx, a stream that
//!   ended without a result) is retried as a new attempt, up to [`Policy::retries`] times.
//! - No capacity (429/503 before the chunk started) is waited out with exponential backoff
//!   and spends no retry, up to [`Policy::capacity_wait`].
//! - A deterministic error (page exception, delayRender timeout, invalid option) fails the
//!   render at once with that chunk's message and stack; every other attempt is dropped,
//!   which closes its request and so cancels its worker.
//! - A straggler, still running after [`Policy::straggler_factor`] times the median time of
//!   the chunks already done (once at least half are), gets one duplicate attempt; the first
//!   result wins and the other attempt is dropped.
//!
//! Each call of a chunk gets a new attempt number, so no two calls write the same objects.
//! Attempts are futures polled by this one task: they are I/O (requests to other instances),
//! and dropping one is how it is cancelled.

use std::time::Duration;

use futures::StreamExt;
use futures::future::{AbortHandle, Abortable};
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::plan::ChunkSpan;
use super::progress::{AttemptProgress, ProgressBoard};
use super::protocol::ChunkError;

/// How one attempt of one chunk failed, as far as the scheduler cares.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkFailure {
    /// The worker went away; another instance may do better.
    Vanished(String),
    /// No instance took the chunk; try again later.
    NoCapacity {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The chunk itself fails; so does the render.
    Fatal(ChunkError),
}

/// Runs one attempt of one chunk: reports progress through `progress` and returns the
/// chunk's result. Dropping the future must cancel the attempt.
#[async_trait::async_trait]
pub trait ChunkRunner: Send + Sync {
    type Output: Send;
    async fn run(
        &self,
        chunk: ChunkSpan,
        attempt: u32,
        progress: AttemptProgress,
    ) -> Result<Self::Output, ChunkFailure>;
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// Retries of a chunk whose worker vanished.
    pub retries: u32,
    /// A chunk running longer than this many median chunk times gets a duplicate (0: never)...
    pub straggler_factor: u32,
    /// ...but never before it ran this long: a duplicate costs a whole chunk's setup, and
    /// renders whose chunks take seconds gain nothing from one.
    pub straggler_min: Duration,
    /// The first wait after "no capacity"; it doubles up to `backoff_max`.
    pub backoff_start: Duration,
    pub backoff_max: Duration,
    /// The longest a chunk waits for an instance before the render fails.
    pub capacity_wait: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            retries: super::DEFAULT_RETRIES,
            straggler_factor: 2,
            straggler_min: Duration::from_secs(10),
            backoff_start: Duration::from_millis(500),
            backoff_max: Duration::from_secs(16),
            capacity_wait: Duration::from_secs(600),
        }
    }
}

/// A chunk's winning attempt.
#[derive(Debug)]
pub struct Finished<O> {
    pub span: ChunkSpan,
    pub attempt: u32,
    pub output: O,
    /// From the winning attempt's start to its result.
    pub elapsed: Duration,
}

#[derive(Debug)]
pub struct Report<O> {
    /// In chunk order.
    pub chunks: Vec<Finished<O>>,
    /// Attempts started because a worker vanished.
    pub retries: u32,
    /// Attempts started for stragglers.
    pub duplicates: u32,
    /// Attempts started again after "no capacity".
    pub capacity_retries: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("chunk {} (frames {}-{}) failed: {}", .span.index, .span.start, .span.end.saturating_sub(1), .error.message)]
    Failed {
        span: ChunkSpan,
        attempt: u32,
        error: ChunkError,
    },
    #[error("chunk {} lost its worker {attempts} times; the last time: {last}", .span.index)]
    Lost {
        span: ChunkSpan,
        /// How many of its attempts lost their worker (waits for capacity not counted).
        attempts: u32,
        last: String,
    },
    #[error("no instance took chunk {} for {} s: {last}", .span.index, .waited.as_secs())]
    NoCapacity {
        span: ChunkSpan,
        waited: Duration,
        last: String,
    },
    #[error("the render was cancelled")]
    Cancelled,
}

impl ScheduleError {
    /// What the client sees: a chunk's own error keeps its name and the page's stack.
    pub fn to_chunk_error(&self) -> ChunkError {
        match self {
            ScheduleError::Failed { error, .. } => error.clone(),
            ScheduleError::Lost { .. } => ChunkError::new("ChunkLostError", self.to_string()),
            ScheduleError::NoCapacity { .. } => {
                ChunkError::new("NoCapacityError", self.to_string())
            }
            ScheduleError::Cancelled => ChunkError::new("CancelledError", self.to_string()),
        }
    }
}

struct Live {
    attempt: u32,
    started: Instant,
    abort: AbortHandle,
}

struct ChunkState {
    next_attempt: u32,
    live: Vec<Live>,
    retries_used: u32,
    duplicated: bool,
    done: bool,
    /// Since when the chunk has found no capacity, and the next wait.
    waiting_since: Option<Instant>,
    backoff: Duration,
}

type AttemptFuture<'a, O> = std::pin::Pin<
    Box<
        dyn Future<
                Output = (
                    usize,
                    u32,
                    Result<Result<O, ChunkFailure>, futures::future::Aborted>,
                ),
            > + Send
            + 'a,
    >,
>;

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

/// Runs `chunks` (indexed 0..n in order) to completion or to the first failure that ends the
/// render. Progress goes to `board`.
pub async fn run_chunks<R: ChunkRunner>(
    runner: &R,
    chunks: &[ChunkSpan],
    board: &ProgressBoard,
    policy: &Policy,
    cancel: &CancellationToken,
) -> Result<Report<R::Output>, ScheduleError> {
    let mut running = FuturesUnordered::new();
    let mut states: Vec<ChunkState> = chunks
        .iter()
        .map(|_| ChunkState {
            next_attempt: 1,
            live: Vec::new(),
            retries_used: 0,
            duplicated: false,
            done: false,
            waiting_since: None,
            backoff: Duration::ZERO,
        })
        .collect();
    let mut finished: Vec<Option<Finished<R::Output>>> = chunks.iter().map(|_| None).collect();
    let mut durations: Vec<Duration> = Vec::new();
    let (mut retries, mut duplicates, mut capacity_retries) = (0u32, 0u32, 0u32);

    // Starts a new attempt of chunk `index` after `delay`; the caller pushes it to `running`.
    let launch = |index: usize, delay: Duration, states: &mut [ChunkState]| {
        let state = &mut states[index];
        let attempt = state.next_attempt;
        state.next_attempt += 1;
        let (abort, registration) = AbortHandle::new_pair();
        state.live.push(Live {
            attempt,
            started: Instant::now() + delay,
            abort,
        });
        let progress = board.attempt(index, attempt);
        let span = chunks[index];
        let work = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            runner.run(span, attempt, progress).await
        };
        let attempt_future: AttemptFuture<'_, R::Output> =
            Box::pin(async move { (index, attempt, Abortable::new(work, registration).await) });
        attempt_future
    };

    for index in 0..chunks.len() {
        running.push(launch(index, Duration::ZERO, &mut states));
    }

    while states.iter().any(|s| !s.done) {
        // How long an attempt may run before it counts as a straggler: known once at least
        // half the chunks are done. When the first such attempt is due.
        let straggler_after = (policy.straggler_factor > 0
            && chunks.len() >= 2
            && durations.len() * 2 >= chunks.len())
        .then(|| {
            let mut sorted = durations.clone();
            sorted.sort();
            (median(&sorted) * policy.straggler_factor).max(policy.straggler_min)
        });
        let straggler_at = straggler_after.and_then(|after| {
            states
                .iter()
                .filter(|s| !s.done && !s.duplicated)
                .filter_map(|s| s.live.iter().map(|l| l.started).min())
                .map(|started| started + after)
                .min()
        });
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(ScheduleError::Cancelled),
            next = running.next() => {
                let Some((index, attempt, result)) = next else {
                    unreachable!("every chunk not done has a live attempt");
                };
                let Ok(result) = result else {
                    continue; // aborted by us; already accounted for
                };
                let state = &mut states[index];
                let Some(pos) = state.live.iter().position(|l| l.attempt == attempt) else {
                    continue; // finished in the same poll as its chunk's winner
                };
                let live = state.live.remove(pos);
                if state.done {
                    continue;
                }
                let span = chunks[index];
                match result {
                    Ok(output) => {
                        let elapsed = live.started.elapsed();
                        state.done = true;
                        for other in state.live.drain(..) {
                            other.abort.abort();
                            board.attempt_ended(index, other.attempt);
                        }
                        board.chunk_done(index);
                        durations.push(elapsed);
                        finished[index] = Some(Finished { span, attempt, output, elapsed });
                    }
                    Err(ChunkFailure::Fatal(error)) => {
                        tracing::warn!(chunk = index, attempt, "chunk failed: {}", error.message);
                        return Err(ScheduleError::Failed { span, attempt, error });
                    }
                    Err(ChunkFailure::Vanished(why)) => {
                        board.attempt_ended(index, attempt);
                        state.waiting_since = None;
                        state.backoff = Duration::ZERO;
                        if !state.live.is_empty() {
                            tracing::info!(chunk = index, attempt, "an attempt vanished ({why}); another is running");
                            continue;
                        }
                        if state.retries_used >= policy.retries {
                            return Err(ScheduleError::Lost { span, attempts: state.retries_used + 1, last: why });
                        }
                        state.retries_used += 1;
                        retries += 1;
                        tracing::warn!(chunk = index, attempt, "the worker vanished ({why}); retrying");
                        running.push(launch(index, Duration::ZERO, &mut states));
                    }
                    Err(ChunkFailure::NoCapacity { message, retry_after }) => {
                        board.attempt_ended(index, attempt);
                        if !state.live.is_empty() {
                            continue;
                        }
                        let now = Instant::now();
                        let since = *state.waiting_since.get_or_insert(now);
                        if now - since >= policy.capacity_wait {
                            return Err(ScheduleError::NoCapacity { span, waited: now - since, last: message });
                        }
                        state.backoff = if state.backoff.is_zero() {
                            policy.backoff_start
                        } else {
                            (state.backoff * 2).min(policy.backoff_max)
                        };
                        let delay = retry_after.unwrap_or_default().max(state.backoff).min(policy.backoff_max);
                        capacity_retries += 1;
                        tracing::info!(chunk = index, attempt, delay_ms = delay.as_millis() as u64, "no capacity ({message}); waiting");
                        running.push(launch(index, delay, &mut states));
                    }
                }
            }
            _ = tokio::time::sleep_until(straggler_at.unwrap_or_else(Instant::now)), if straggler_at.is_some() => {
                let now = Instant::now();
                let after = straggler_after.expect("straggler_at comes from it");
                for index in 0..states.len() {
                    let s = &states[index];
                    let oldest = s.live.iter().map(|l| l.started).min();
                    if s.done || s.duplicated || oldest.is_none_or(|t| t + after > now) {
                        continue;
                    }
                    states[index].duplicated = true;
                    duplicates += 1;
                    tracing::info!(chunk = index, "chunk is a straggler; starting a duplicate attempt");
                    running.push(launch(index, Duration::ZERO, &mut states));
                }
            }
        }
    }
    Ok(Report {
        chunks: finished
            .into_iter()
            .map(|f| f.expect("every chunk is done"))
            .collect(),
        retries,
        duplicates,
        capacity_retries,
    })
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// One call of the fake runner, answered by the test.
    struct Call {
        span: ChunkSpan,
        attempt: u32,
        progress: AttemptProgress,
        reply: oneshot::Sender<Result<(usize, u32), ChunkFailure>>,
    }

    struct FakeRunner {
        calls: mpsc::UnboundedSender<Call>,
    }

    #[async_trait::async_trait]
    impl ChunkRunner for FakeRunner {
        type Output = (usize, u32);
        async fn run(
            &self,
            span: ChunkSpan,
            attempt: u32,
            progress: AttemptProgress,
        ) -> Result<(usize, u32), ChunkFailure> {
            let (reply, answer) = oneshot::channel();
            self.calls
                .send(Call {
                    span,
                    attempt,
                    progress,
                    reply,
                })
                .expect("the test listens");
            answer
                .await
                .unwrap_or_else(|_| Err(ChunkFailure::Vanished("the test dropped it".into())))
        }
    }

    struct Harness {
        calls: mpsc::UnboundedReceiver<Call>,
        result: tokio::task::JoinHandle<Result<Report<(usize, u32)>, ScheduleError>>,
        cancel: CancellationToken,
        progress: tokio::sync::watch::Receiver<super::super::progress::FanoutProgress>,
    }

    fn spans(n: usize) -> Vec<ChunkSpan> {
        (0..n)
            .map(|index| ChunkSpan {
                index,
                start: index as u64 * 10,
                end: index as u64 * 10 + 10,
            })
            .collect()
    }

    fn start(n: usize, policy: Policy) -> Harness {
        let (tx, calls) = mpsc::unbounded_channel();
        let runner = FakeRunner { calls: tx };
        let chunks = spans(n);
        let (board, progress) = ProgressBoard::new(&chunks);
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let result =
            tokio::spawn(
                async move { run_chunks(&runner, &chunks, &board, &policy, &token).await },
            );
        Harness {
            calls,
            result,
            cancel,
            progress,
        }
    }

    impl Harness {
        async fn call(&mut self) -> Call {
            self.calls.recv().await.expect("another call")
        }

        /// The first calls of every chunk, by chunk.
        async fn first_calls(&mut self, n: usize) -> Vec<Call> {
            let mut calls = Vec::new();
            for _ in 0..n {
                calls.push(self.call().await);
            }
            calls.sort_by_key(|c| c.span.index);
            assert!(calls.iter().all(|c| c.attempt == 1));
            calls
        }

        /// The render's end. Bounded, so a scheduler waiting for a call nobody answers fails
        /// the test (time is paused: the bound passes as soon as everything is idle).
        async fn outcome(&mut self) -> Result<Report<(usize, u32)>, ScheduleError> {
            tokio::time::timeout(Duration::from_secs(24 * 3600), &mut self.result)
                .await
                .expect("the scheduler ended")
                .unwrap()
        }
    }

    fn ok(call: Call) {
        let _ = call.reply.send(Ok((call.span.index, call.attempt)));
    }

    fn fail(call: Call, failure: ChunkFailure) {
        let _ = call.reply.send(Err(failure));
    }

    fn vanished() -> ChunkFailure {
        ChunkFailure::Vanished("connection reset".into())
    }

    fn no_capacity() -> ChunkFailure {
        ChunkFailure::NoCapacity {
            message: "429".into(),
            retry_after: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_chunk_runs_at_once_and_results_come_back_in_order() {
        let mut h = start(3, Policy::default());
        let calls = h.first_calls(3).await;
        for call in calls.into_iter().rev() {
            call.progress.report(10, 10);
            ok(call);
        }
        let progress = h.progress.clone();
        let report = h.outcome().await.unwrap();
        let got: Vec<_> = report.chunks.iter().map(|f| f.output).collect();
        assert_eq!(got, [(0, 1), (1, 1), (2, 1)]);
        assert_eq!(
            (report.retries, report.duplicates, report.capacity_retries),
            (0, 0, 0)
        );
        assert_eq!(progress.borrow().fraction, 0.95);
    }

    #[tokio::test(start_paused = true)]
    async fn a_vanished_worker_is_retried_as_the_next_attempt() {
        let mut h = start(2, Policy::default());
        let mut calls = h.first_calls(2).await;
        let second = calls.pop().unwrap();
        ok(calls.pop().unwrap());
        let t0 = Instant::now();
        fail(second, vanished());
        let retry = h.call().await;
        assert_eq!((retry.span.index, retry.attempt), (1, 2));
        assert_eq!(Instant::now(), t0, "retried at once");
        ok(retry);
        let report = h.outcome().await.unwrap();
        assert_eq!(report.retries, 1);
        assert_eq!(report.chunks[1].attempt, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_lost_more_often_than_the_retries_fails_the_render() {
        let policy = Policy {
            retries: 2,
            ..Policy::default()
        };
        let mut h = start(2, policy);
        let mut calls = h.first_calls(2).await;
        let other = calls.pop().unwrap();
        fail(calls.pop().unwrap(), vanished());
        for attempt in 2..=3 {
            let call = h.call().await;
            assert_eq!((call.span.index, call.attempt), (0, attempt));
            fail(call, vanished());
        }
        match h.outcome().await {
            Err(ScheduleError::Lost { span, attempts, .. }) => {
                assert_eq!((span.index, attempts), (0, 3));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            other.reply.is_closed(),
            "the other chunk's call was dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_capacity_backs_off_without_spending_a_retry() {
        let policy = Policy {
            retries: 0,
            ..Policy::default()
        };
        let mut h = start(1, policy.clone());
        let mut call = h.call().await;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let t = Instant::now();
            fail(call, no_capacity());
            call = h.call().await;
            waits.push(Instant::now() - t);
        }
        let s = |ms| Duration::from_millis(ms);
        assert_eq!(
            waits,
            [s(500), s(1000), s(2000), s(4000), s(8000), s(16000)]
        );
        assert_eq!(call.attempt, 7);
        // One more: the wait stays at the maximum. A Retry-After longer than the backoff wins
        // (up to the maximum too).
        let t = Instant::now();
        fail(call, no_capacity());
        call = h.call().await;
        assert_eq!(Instant::now() - t, policy.backoff_max);
        ok(call);
        let report = h.outcome().await.unwrap();
        assert_eq!((report.retries, report.capacity_retries), (0, 7));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured() {
        let mut h = start(1, Policy::default());
        let call = h.call().await;
        let t = Instant::now();
        fail(
            call,
            ChunkFailure::NoCapacity {
                message: "503".into(),
                retry_after: Some(Duration::from_secs(3)),
            },
        );
        let call = h.call().await;
        assert_eq!(Instant::now() - t, Duration::from_secs(3));
        ok(call);
        h.outcome().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_capacity_is_bounded() {
        let policy = Policy {
            capacity_wait: Duration::from_secs(30),
            ..Policy::default()
        };
        let mut h = start(1, policy);
        let t0 = Instant::now();
        let outcome = loop {
            let call = tokio::select! {
                biased;
                r = &mut h.result => break r.unwrap(),
                call = h.calls.recv() => call.expect("a call while running"),
            };
            fail(call, no_capacity());
        };
        match outcome {
            Err(ScheduleError::NoCapacity { waited, .. }) => {
                assert!(waited >= Duration::from_secs(30));
                assert!(Instant::now() - t0 < Duration::from_secs(30 + 16 + 1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deterministic_error_fails_at_once_and_drops_the_others() {
        let mut h = start(3, Policy::default());
        let mut calls = h.first_calls(3).await;
        let failing = calls.remove(2);
        let error = ChunkError {
            name: "Error".into(),
            message: "boom at frame 25".into(),
            stack: "Error: boom at frame 25\n    at Comp (bundle.js:1:2)".into(),
        };
        let t0 = Instant::now();
        fail(failing, ChunkFailure::Fatal(error.clone()));
        match h.outcome().await {
            Err(e @ ScheduleError::Failed { .. }) => {
                assert_eq!(e.to_chunk_error(), error, "message and stack kept");
                let ScheduleError::Failed { span, attempt, .. } = e else {
                    unreachable!()
                };
                assert_eq!((span.index, attempt), (2, 1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Instant::now(), t0, "at once");
        for c in calls {
            assert!(c.reply.is_closed(), "chunk {} still running", c.span.index);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_straggler_gets_a_duplicate_and_the_first_result_wins() {
        let mut h = start(4, Policy::default());
        let t0 = Instant::now();
        let mut calls = h.first_calls(4).await;
        let straggler = calls.pop().unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        for c in calls {
            ok(c);
        }
        // The median is 10 s, so the duplicate is due 20 s after the straggler started.
        let duplicate = h.call().await;
        assert_eq!((duplicate.span.index, duplicate.attempt), (3, 2));
        assert_eq!(Instant::now() - t0, Duration::from_secs(20));
        ok(duplicate);
        let report = h.outcome().await.unwrap();
        assert_eq!(report.chunks[3].attempt, 2);
        assert_eq!(report.duplicates, 1);
        assert!(
            straggler.reply.is_closed(),
            "the slower attempt was dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_losing_attempt_is_dropped_as_soon_as_its_chunk_is_won() {
        let mut h = start(5, Policy::default());
        let t0 = Instant::now();
        let mut calls = h.first_calls(5).await;
        let last = calls.pop().unwrap();
        let mut straggler = calls.pop().unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        for c in calls {
            ok(c);
        }
        // Both stragglers get duplicates at 20 s.
        let mut duplicates = vec![h.call().await, h.call().await];
        duplicates.sort_by_key(|c| c.span.index);
        assert_eq!(Instant::now() - t0, Duration::from_secs(20));
        let last_duplicate = duplicates.pop().unwrap();
        ok(duplicates.pop().unwrap());
        // Chunk 3 is won while chunk 4 still runs: its first attempt goes now, not at the end.
        tokio::time::timeout(Duration::from_secs(3600), straggler.reply.closed())
            .await
            .expect("the losing attempt was dropped");
        assert!(!last.reply.is_closed() && !last_duplicate.reply.is_closed());
        ok(last);
        let report = h.outcome().await.unwrap();
        assert_eq!(
            report.chunks.iter().map(|f| f.attempt).collect::<Vec<_>>(),
            [1, 1, 1, 2, 1]
        );
        assert!(last_duplicate.reply.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_original_may_still_win_over_its_duplicate() {
        let mut h = start(2, Policy::default());
        let mut calls = h.first_calls(2).await;
        let slow = calls.pop().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        ok(calls.pop().unwrap());
        let duplicate = h.call().await;
        // A vanished duplicate spends no retry while the original runs.
        fail(duplicate, vanished());
        tokio::task::yield_now().await;
        ok(slow);
        let report = h.outcome().await.unwrap();
        assert_eq!(report.chunks[1].attempt, 1);
        assert_eq!((report.duplicates, report.retries), (1, 0));
        assert!(h.calls.try_recv().is_err(), "no call after the duplicate");
    }

    #[tokio::test(start_paused = true)]
    async fn quick_chunks_make_no_stragglers_before_the_minimum() {
        let mut h = start(2, Policy::default());
        let t0 = Instant::now();
        let mut calls = h.first_calls(2).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        ok(calls.remove(0));
        // Twice the median is 2 s, but the minimum holds the duplicate back to 10 s.
        let duplicate = h.call().await;
        assert_eq!(Instant::now() - t0, Policy::default().straggler_min);
        ok(duplicate);
        assert_eq!(h.outcome().await.unwrap().duplicates, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_factor_of_zero_never_duplicates() {
        let policy = Policy {
            straggler_factor: 0,
            ..Policy::default()
        };
        let mut h = start(2, policy);
        let mut calls = h.first_calls(2).await;
        ok(calls.remove(0));
        let waited = tokio::time::timeout(Duration::from_secs(3600), h.call()).await;
        assert!(waited.is_err(), "a duplicate started");
        ok(calls.remove(0));
        assert_eq!(h.outcome().await.unwrap().duplicates, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_straggler_before_half_the_chunks_are_done() {
        let mut h = start(4, Policy::default());
        let mut calls = h.first_calls(4).await;
        ok(calls.remove(0));
        // One of four done: no median yet, so a long wait starts nothing.
        let waited = tokio::time::timeout(Duration::from_secs(3600), h.call()).await;
        assert!(waited.is_err(), "a duplicate started before half were done");
        h.cancel.cancel();
        assert_eq!(h.outcome().await.unwrap_err(), ScheduleError::Cancelled);
        for c in calls {
            assert!(c.reply.is_closed());
        }
    }
}
