//! One progress number for a render spread over chunks: every chunk's progress weighted by its
//! frames, then the join. It never goes backwards: a retried chunk restarts at zero, which
//! lowers only its own share, and what is published is the running maximum.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::plan::ChunkSpan;

/// The part of the bar left for the coordinator's tail: the join, the audio mix and the
/// upload. The chunks fill the rest.
pub const JOIN_SHARE: f64 = 0.05;

/// What the coordinator publishes. `rendered` and `encoded` are summed over chunks (for the
/// webhook's `renderedFrames`/`encodedFrames`), `fraction` is the client's `onProgress`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FanoutProgress {
    pub rendered: u64,
    pub encoded: u64,
    pub total: u64,
    pub fraction: f64,
}

#[derive(Debug)]
struct ChunkShare {
    frames: u64,
    /// `(attempt, rendered, encoded)` of every running attempt.
    attempts: Vec<(u32, u64, u64)>,
    done: bool,
}

impl ChunkShare {
    fn counts(&self) -> (u64, u64) {
        if self.done {
            return (self.frames, self.frames);
        }
        // With a straggler's duplicate running, the chunk is as far as its best attempt.
        let rendered = self.attempts.iter().map(|a| a.1).max().unwrap_or(0);
        let encoded = self.attempts.iter().map(|a| a.2).max().unwrap_or(0);
        (rendered.min(self.frames), encoded.min(self.frames))
    }
}

#[derive(Debug)]
struct Board {
    chunks: Vec<ChunkShare>,
    join: f64,
    published: FanoutProgress,
}

impl Board {
    fn current(&self) -> FanoutProgress {
        let total: u64 = self.chunks.iter().map(|c| c.frames).sum();
        let (mut rendered, mut encoded) = (0, 0);
        for c in &self.chunks {
            let (r, e) = c.counts();
            rendered += r;
            encoded += e;
        }
        // The renderer's own weighting (70 % capture, 30 % encode), over all chunks.
        let chunks = if total == 0 {
            0.0
        } else {
            (0.7 * rendered as f64 + 0.3 * encoded as f64) / total as f64
        };
        let raw = (1.0 - JOIN_SHARE) * chunks + JOIN_SHARE * self.join;
        // Hundredths, rounded down, so 1 means finished.
        let fraction = ((raw * 100.0 + 1e-9).floor() / 100.0).clamp(0.0, 1.0);
        FanoutProgress {
            rendered,
            encoded,
            total,
            fraction,
        }
    }

    /// Folds the current value into the running maximum; true if that changed it.
    fn publish(&mut self) -> bool {
        let now = self.current();
        let p = &mut self.published;
        let next = FanoutProgress {
            rendered: p.rendered.max(now.rendered),
            encoded: p.encoded.max(now.encoded),
            total: now.total,
            fraction: p.fraction.max(now.fraction),
        };
        let changed = next != *p;
        *p = next;
        changed
    }
}

/// Shared by the scheduler and every attempt's reporter.
#[derive(Debug, Clone)]
pub struct ProgressBoard {
    board: Arc<Mutex<Board>>,
    tx: Arc<watch::Sender<FanoutProgress>>,
}

impl ProgressBoard {
    pub fn new(spans: &[ChunkSpan]) -> (ProgressBoard, watch::Receiver<FanoutProgress>) {
        let board = Board {
            chunks: spans
                .iter()
                .map(|s| ChunkShare {
                    frames: s.frames(),
                    attempts: Vec::new(),
                    done: false,
                })
                .collect(),
            join: 0.0,
            published: FanoutProgress::default(),
        };
        let initial = FanoutProgress {
            total: board.current().total,
            ..Default::default()
        };
        let (tx, rx) = watch::channel(initial);
        (
            ProgressBoard {
                board: Arc::new(Mutex::new(board)),
                tx: Arc::new(tx),
            },
            rx,
        )
    }

    fn update(&self, f: impl FnOnce(&mut Board)) {
        let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut board);
        if board.publish() {
            self.tx.send_replace(board.published);
        }
    }

    /// Registers a new attempt of `chunk` at zero and returns its reporter.
    pub fn attempt(&self, chunk: usize, attempt: u32) -> AttemptProgress {
        self.update(|b| b.chunks[chunk].attempts.push((attempt, 0, 0)));
        AttemptProgress {
            board: self.clone(),
            chunk,
            attempt,
        }
    }

    /// The attempt failed or was dropped: its share goes (the running maximum stays).
    pub fn attempt_ended(&self, chunk: usize, attempt: u32) {
        self.update(|b| b.chunks[chunk].attempts.retain(|a| a.0 != attempt));
    }

    pub fn chunk_done(&self, chunk: usize) {
        self.update(|b| {
            let c = &mut b.chunks[chunk];
            c.done = true;
            c.attempts.clear();
        });
    }

    /// The join's own progress, 0 to 1, once every chunk is done.
    pub fn join(&self, fraction: f64) {
        self.update(|b| b.join = fraction.clamp(0.0, 1.0));
    }

    pub fn published(&self) -> FanoutProgress {
        *self.tx.borrow()
    }
}

/// Handed to one attempt of one chunk; it reports the worker's counts.
#[derive(Debug, Clone)]
pub struct AttemptProgress {
    board: ProgressBoard,
    chunk: usize,
    attempt: u32,
}

impl AttemptProgress {
    pub fn report(&self, rendered: u64, encoded: u64) {
        let (chunk, attempt) = (self.chunk, self.attempt);
        self.board.update(|b| {
            if let Some(a) = b.chunks[chunk].attempts.iter_mut().find(|a| a.0 == attempt) {
                a.1 = rendered;
                a.2 = encoded;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(sizes: &[u64]) -> Vec<ChunkSpan> {
        crate::fanout::plan::contiguous(sizes.iter().copied())
    }

    #[test]
    fn chunks_add_up_by_their_frames_then_the_join() {
        let (board, rx) = ProgressBoard::new(&spans(&[100, 300]));
        assert_eq!(rx.borrow().total, 400);
        let a = board.attempt(0, 1);
        let b = board.attempt(1, 1);
        a.report(100, 100); // a quarter of the frames, fully done
        assert_eq!(rx.borrow().fraction, 0.23); // 0.95 × 0.25 = 0.2375
        b.report(300, 0);
        // 0.95 × (100 + 0.7 × 300) / 400 = 0.736
        assert_eq!(rx.borrow().fraction, 0.73);
        assert_eq!((rx.borrow().rendered, rx.borrow().encoded), (400, 100));
        board.chunk_done(0);
        board.chunk_done(1);
        assert_eq!(rx.borrow().fraction, 0.95);
        board.join(0.5);
        assert_eq!(rx.borrow().fraction, 0.97);
        board.join(1.0);
        assert_eq!(rx.borrow().fraction, 1.0);
    }

    #[test]
    fn a_retry_resets_only_its_own_share_and_nothing_goes_backwards() {
        let (board, rx) = ProgressBoard::new(&spans(&[100, 100]));
        let a1 = board.attempt(0, 1);
        let b1 = board.attempt(1, 1);
        a1.report(80, 80);
        b1.report(50, 50);
        let before = *rx.borrow();
        assert_eq!(before.fraction, 0.61); // 0.95 × 130 / 200 = 0.6175
        // Chunk 0's worker vanished: its 80 frames are lost and a new attempt starts at 0.
        board.attempt_ended(0, 1);
        let a2 = board.attempt(0, 2);
        assert_eq!(*rx.borrow(), before, "the published value holds");
        // Chunk 1 keeps its share: its progress counts again as soon as the sum passes the
        // old maximum.
        b1.report(100, 100);
        a2.report(40, 40);
        // 0.95 × 140 / 200 = 0.665: above 0.61, published.
        assert_eq!(rx.borrow().fraction, 0.66);
        let mut last = 0.0;
        for k in 0..=100 {
            a2.report(k, k);
            let f = rx.borrow().fraction;
            assert!(f >= last);
            last = f;
        }
        // A late report of a dropped attempt changes nothing.
        a1.report(100, 100);
        assert_eq!(rx.borrow().fraction, last);
    }

    #[test]
    fn a_duplicate_counts_as_far_as_the_best_attempt() {
        let (board, rx) = ProgressBoard::new(&spans(&[100]));
        let slow = board.attempt(0, 1);
        let dup = board.attempt(0, 2);
        slow.report(60, 60);
        dup.report(20, 20);
        assert_eq!(rx.borrow().rendered, 60);
        board.attempt_ended(0, 1);
        dup.report(30, 30);
        assert_eq!(rx.borrow().rendered, 60, "the maximum holds");
        assert_eq!(board.published().fraction, 0.57);
    }
}
