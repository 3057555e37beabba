//! The response body the client reads: progress lines, then one final object.
//!
//! The client JSON-parses its *whole* accumulated buffer after every socket read, so two
//! messages in one read are fatal to it. Each message is therefore its own chunk, written at
//! least [`MIN_GAP`] after the server took the previous one, and a progress line is only sent
//! when the value changed. The last value a render published goes out before the final
//! message, however close they are: a finished render's 1 always reaches the client.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::render::RenderProgress;

pub const MIN_GAP: Duration = Duration::from_millis(100);

/// The body's channel. It holds one message, so the pump knows when the server took the
/// previous one and can count the gap from there: a message waiting in a queue while the
/// server is busy would otherwise be written in the same socket write as the next.
pub fn channel() -> (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
    mpsc::channel(1)
}

/// `{"onProgress":0.42}\n`
pub fn progress_line(p: f64) -> Bytes {
    Bytes::from(format!("{{\"onProgress\":{p}}}\n"))
}

/// Feeds `out` (from [`channel`]) until `done` yields the final message (already serialized,
/// no newline). Returns early, dropping everything, when the client goes away.
pub async fn pump(
    progress: Option<watch::Receiver<RenderProgress>>,
    done: oneshot::Receiver<Bytes>,
    out: mpsc::Sender<Bytes>,
) {
    pump_with(progress, done, out, |p| progress_line(p.fraction())).await
}

/// [`pump`] with another progress line (the chunk endpoint's): a line goes out only when it
/// differs from the last one sent.
pub async fn pump_with(
    progress: Option<watch::Receiver<RenderProgress>>,
    done: oneshot::Receiver<Bytes>,
    out: mpsc::Sender<Bytes>,
    line: impl Fn(&RenderProgress) -> Bytes,
) {
    let mut writer = Writer {
        out,
        taken_at: None,
    };
    let mut last_line: Option<Bytes> = None;
    let mut done = std::pin::pin!(done);
    let mut progress = progress;
    // Whether the render may still publish; its last value stays readable after that.
    let mut open = progress.is_some();
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
                // The render published its last value just before it ended (the 1 before the
                // upload): that line still goes first.
                if let Some(rx) = &progress {
                    let p = *rx.borrow();
                    let last = line(&p);
                    if p.total > 0 && last_line.as_ref() != Some(&last) {
                        writer.wait_for_gap().await;
                        if !writer.send(last).await {
                            return;
                        }
                    }
                }
                if let Ok(bytes) = final_message {
                    writer.wait_for_gap().await;
                    writer.send(bytes).await;
                }
                return;
            }
            alive = changed, if open => {
                if !alive {
                    open = false;
                    continue;
                }
                writer.wait_for_gap().await;
                // The newest value once the gap has passed, not the one that woke us.
                let Some(next) = progress.as_mut().map(|rx| line(&rx.borrow_and_update())) else {
                    continue;
                };
                if last_line.as_ref() != Some(&next) {
                    last_line = Some(next.clone());
                    if !writer.send(next).await {
                        return;
                    }
                }
            }
            _ = writer.out.closed() => return,
        }
    }
}

/// One message at a time into the body, each written at least [`MIN_GAP`] after the server
/// took the one before.
struct Writer {
    out: mpsc::Sender<Bytes>,
    taken_at: Option<Instant>,
}

impl Writer {
    async fn wait_for_gap(&self) {
        if let Some(t) = self.taken_at {
            tokio::time::sleep_until(t + MIN_GAP).await;
        }
    }

    /// False when the client went away.
    async fn send(&mut self, bytes: Bytes) -> bool {
        if self.out.send(bytes).await.is_err() {
            return false;
        }
        // The one slot frees when the server takes the message; it writes it to the socket
        // as soon as the body has nothing more for it, which is for the next MIN_GAP.
        match self.out.reserve().await {
            Ok(permit) => drop(permit),
            Err(_) => return false,
        }
        self.taken_at = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(rendered: u64, encoded: u64) -> RenderProgress {
        RenderProgress {
            rendered,
            encoded,
            total: 10,
            overall: None,
        }
    }

    type Started = (
        watch::Sender<RenderProgress>,
        oneshot::Sender<Bytes>,
        mpsc::Receiver<Bytes>,
        tokio::task::JoinHandle<()>,
    );

    /// A pump on a render's progress: the render's side, the final message's, the server's.
    fn start() -> Started {
        let (ptx, prx) = watch::channel(RenderProgress::default());
        let (dtx, drx) = oneshot::channel();
        let (otx, orx) = channel();
        (ptx, dtx, orx, tokio::spawn(pump(Some(prx), drx, otx)))
    }

    /// What the server takes from the body, with when it took it (on the paused clock).
    async fn take(orx: &mut mpsc::Receiver<Bytes>) -> (Bytes, Instant) {
        let message = orx.recv().await.expect("a message");
        (message, Instant::now())
    }

    /// Everything else the server takes until the body ends, each with its time after `t0`.
    async fn rest(orx: &mut mpsc::Receiver<Bytes>, t0: Instant) -> Vec<(Bytes, Duration)> {
        let mut out = vec![];
        while let Some(message) = orx.recv().await {
            out.push((message, Instant::now() - t0));
        }
        out
    }

    fn line(text: &'static str, after_ms: u64) -> (Bytes, Duration) {
        (Bytes::from(text), Duration::from_millis(after_ms))
    }

    const FINAL: &str = "{\"response\":{}}";

    #[tokio::test(start_paused = true)]
    async fn messages_are_spaced_and_deduplicated() {
        let (ptx, dtx, mut orx, task) = start();
        ptx.send_replace(progress(1, 0));
        let (first, t0) = take(&mut orx).await;
        assert_eq!(first, "{\"onProgress\":0.07}\n");
        ptx.send_replace(progress(1, 0)); // unchanged value: no line
        ptx.send_replace(progress(2, 0));
        let (second, _) = take(&mut orx).await;
        assert_eq!(second, "{\"onProgress\":0.14}\n");
        dtx.send(Bytes::from(FINAL)).unwrap();
        assert_eq!(rest(&mut orx, t0).await, [line(FINAL, 200)]);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_last_value_right_before_the_final_message_still_goes_out_first() {
        let (ptx, dtx, mut orx, task) = start();
        ptx.send_replace(progress(5, 0));
        let (first, t0) = take(&mut orx).await;
        assert_eq!(first, "{\"onProgress\":0.35}\n");
        // Within the gap the render finishes, its upload is instant and its task is gone.
        ptx.send_replace(progress(10, 10));
        dtx.send(Bytes::from(FINAL)).unwrap();
        drop(ptx);
        assert_eq!(
            rest(&mut orx, t0).await,
            [line("{\"onProgress\":1}\n", 100), line(FINAL, 200)]
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_gap_counts_from_when_the_server_took_the_message() {
        let (ptx, dtx, mut orx, task) = start();
        ptx.send_replace(progress(1, 0));
        tokio::task::yield_now().await;
        // The server is busy for a second; the render moves on meanwhile.
        ptx.send_replace(progress(2, 0));
        ptx.send_replace(progress(3, 0));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (first, t0) = take(&mut orx).await;
        assert_eq!(first, "{\"onProgress\":0.07}\n");
        // The newest value, once, a gap after the server took the first.
        let (second, t1) = take(&mut orx).await;
        assert_eq!((second, t1 - t0), line("{\"onProgress\":0.21}\n", 100));
        dtx.send(Bytes::from(FINAL)).unwrap();
        assert_eq!(rest(&mut orx, t0).await, [line(FINAL, 200)]);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_before_any_progress_is_the_error_alone() {
        let (_ptx, dtx, mut orx, task) = start();
        dtx.send(Bytes::from("{\"type\":\"error\"}")).unwrap();
        assert_eq!(
            rest(&mut orx, Instant::now()).await,
            [line("{\"type\":\"error\"}", 0)]
        );
        task.await.unwrap();
    }
}
