//! The response body the client reads: progress lines, then one final object.
//!
//! The client JSON-parses its *whole* accumulated buffer after every socket read, so two
//! messages in one read are fatal to it. Each message is therefore its own chunk, offered to
//! the HTTP layer at least [`MIN_GAP`] after it took the previous one, and a progress line is
//! only sent when the value changed.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::render::RenderProgress;

pub const MIN_GAP: Duration = Duration::from_millis(100);

/// `{"onProgress":0.42}\n`
pub fn progress_line(p: f64) -> Bytes {
    Bytes::from(format!("{{\"onProgress\":{p}}}\n"))
}

/// Feeds `out` until `done` yields the final message (already serialized, no newline).
/// Returns early, dropping everything, when the client goes away.
pub async fn pump(
    progress: Option<watch::Receiver<RenderProgress>>,
    done: oneshot::Receiver<Bytes>,
    out: mpsc::Sender<Bytes>,
) {
    pump_with(progress, done, out, |p| progress_line(p.fraction())).await
}

/// [`pump`] with another progress line (the chunk endpoint's); a line is sent only when it
/// differs from the last one sent.
pub async fn pump_with(
    mut progress: Option<watch::Receiver<RenderProgress>>,
    done: oneshot::Receiver<Bytes>,
    out: mpsc::Sender<Bytes>,
    line: impl Fn(&RenderProgress) -> Bytes,
) {
    let mut last_sent_at: Option<Instant> = None;
    let mut last_line: Option<Bytes> = None;
    let mut done = std::pin::pin!(done);
    let send = async |bytes: Bytes, last_sent_at: &mut Option<Instant>| -> bool {
        if let Some(t) = *last_sent_at {
            tokio::time::sleep_until(t + MIN_GAP).await;
        }
        if out.send(bytes).await.is_err() {
            return false;
        }
        // The gap counts from when the HTTP layer took the message, not from when it was
        // queued: a stalled connection task that found two messages waiting would write them
        // in one go, and through a proxy they would reach the client in one read.
        let drained = out.reserve_many(out.max_capacity()).await.is_ok();
        *last_sent_at = Some(Instant::now());
        drained
    };
    loop {
        let changed = async {
            match progress.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            final_message = &mut done => {
                if let Ok(bytes) = final_message {
                    send(bytes, &mut last_sent_at).await;
                }
                return;
            }
            alive = changed => {
                if !alive {
                    progress = None;
                    continue;
                }
                let Some(next) = progress.as_ref().map(|rx| line(&rx.borrow())) else {
                    continue;
                };
                if last_line.as_ref() != Some(&next) {
                    last_line = Some(next.clone());
                    if !send(next, &mut last_sent_at).await {
                        return;
                    }
                }
            }
            _ = out.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pump fed by `set(rendered)` (out of 10 frames), its output, and its final message.
    struct Pumping {
        progress: watch::Sender<RenderProgress>,
        done: Option<oneshot::Sender<Bytes>>,
        out: mpsc::Receiver<Bytes>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Pumping {
        fn start() -> Pumping {
            let (progress, prx) = watch::channel(RenderProgress::default());
            let (done, drx) = oneshot::channel();
            let (otx, out) = mpsc::channel(16);
            let task = tokio::spawn(pump(Some(prx), drx, otx));
            Pumping {
                progress,
                done: Some(done),
                out,
                task,
            }
        }

        fn set(&self, rendered: u64) {
            self.progress.send_replace(RenderProgress {
                rendered,
                encoded: 0,
                total: 10,
            });
        }

        fn finish(&mut self, last: &'static str) {
            self.done.take().unwrap().send(Bytes::from(last)).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn messages_are_spaced_and_deduplicated() {
        let mut p = Pumping::start();
        p.set(1);
        tokio::task::yield_now().await;
        let first = p.out.recv().await.unwrap();
        let t0 = Instant::now();
        assert_eq!(first, Bytes::from("{\"onProgress\":0.07}\n"));
        p.set(1); // unchanged value: no line
        p.set(2);
        let second = p.out.recv().await.unwrap();
        assert_eq!(second, Bytes::from("{\"onProgress\":0.14}\n"));
        assert!(Instant::now() - t0 >= MIN_GAP);
        p.finish("{\"response\":{}}");
        let last = p.out.recv().await.unwrap();
        assert_eq!(last, Bytes::from("{\"response\":{}}"));
        assert!(Instant::now() - t0 >= MIN_GAP * 2);
        (&mut p.task).await.unwrap();
        assert!(p.out.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_falls_behind_never_finds_two_messages_waiting() {
        let mut p = Pumping::start();
        p.set(1);
        p.out.recv().await.unwrap();
        // The reader stalls for a second while the render moves on.
        p.set(2);
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.set(3);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(p.out.recv().await.unwrap(), progress_line(0.14));
        assert!(
            p.out.try_recv().is_err(),
            "a second message was already waiting"
        );
        let taken = Instant::now();
        assert_eq!(p.out.recv().await.unwrap(), progress_line(0.21));
        assert!(Instant::now() - taken >= MIN_GAP);
        p.finish("{}");
        assert_eq!(p.out.recv().await.unwrap(), Bytes::from("{}"));
        (&mut p.task).await.unwrap();
    }
}
