//! The response body the client reads: progress lines, then one final object.
//!
//! The client JSON-parses its *whole* accumulated buffer after every socket read, so two
//! messages in one read are fatal to it. Each message is therefore its own chunk, written at
//! least [`MIN_GAP`] after the previous one, and a progress line is only sent when the value
//! changed.

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
        let ok = out.send(bytes).await.is_ok();
        *last_sent_at = Some(Instant::now());
        ok
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

    #[tokio::test(start_paused = true)]
    async fn messages_are_spaced_and_deduplicated() {
        let (ptx, prx) = watch::channel(RenderProgress::default());
        let (dtx, drx) = oneshot::channel();
        let (otx, mut orx) = mpsc::channel(16);
        let task = tokio::spawn(pump(Some(prx), drx, otx));
        let set = |r| {
            ptx.send_replace(RenderProgress {
                rendered: r,
                encoded: 0,
                total: 10,
            })
        };
        set(1);
        tokio::task::yield_now().await;
        let first = orx.recv().await.unwrap();
        let t0 = Instant::now();
        assert_eq!(first, Bytes::from("{\"onProgress\":0.07}\n"));
        set(1); // unchanged value: no line
        set(2);
        let second = orx.recv().await.unwrap();
        assert_eq!(second, Bytes::from("{\"onProgress\":0.14}\n"));
        assert!(Instant::now() - t0 >= MIN_GAP);
        dtx.send(Bytes::from("{\"response\":{}}")).unwrap();
        let last = orx.recv().await.unwrap();
        assert_eq!(last, Bytes::from("{\"response\":{}}"));
        assert!(Instant::now() - t0 >= MIN_GAP * 2);
        task.await.unwrap();
        assert!(orx.recv().await.is_none());
    }
}
