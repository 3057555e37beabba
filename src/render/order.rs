//! The reorder buffer between the tabs and the encoder: captured frames arrive in any order,
//! are decoded in parallel, and leave strictly in output order.
//!
//! Memory stays bounded because every frame carries its admission permit from the tab to
//! the encoder: a frame waiting here for its turn still holds it, so the tabs cannot run
//! further ahead than the permits allow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::ProgressSender;
use crate::audio::AssetRecord;
use crate::browser::pool::CapturedFrame;
use crate::encode::EncodeError;
use crate::timing::Elapsed;

/// What the encoder thread receives.
pub(super) enum OrderedFrame<T> {
    Frame(T, OwnedSemaphorePermit),
    /// Stop without finalising the file.
    Abort,
}

/// Turns a captured image into what the encoder takes; runs on the blocking pool.
pub(super) type Prepare<T> = Arc<dyn Fn(Bytes) -> Result<T, EncodeError> + Send + Sync>;

/// The way to the encoder; `None` for audio-only renders, whose frames carry only assets.
pub(super) struct ToEncoder<T> {
    pub frames: mpsc::Sender<OrderedFrame<T>>,
    pub prepare: Prepare<T>,
}

/// Why the frames did not all reach the encoder.
#[derive(Debug, thiserror::Error)]
pub(super) enum OrderError {
    /// The capture ended before every frame arrived: it failed, and will say why.
    #[error("frame capture stopped before every frame arrived")]
    CaptureEnded,
    /// The encoder thread is gone: its own error explains why.
    #[error("the encoder stopped early")]
    EncoderGone,
    #[error(transparent)]
    Decode(EncodeError),
    #[error("a decode task failed: {0}")]
    Task(String),
    #[error("the render was cancelled")]
    Cancelled,
}

/// Counters the render's progress is made of.
pub(super) struct Counters<'a> {
    pub progress: &'a ProgressSender,
    /// Frames the encoder has written, as its thread reports them.
    pub encoded: &'a AtomicU64,
    pub decoding: Arc<Elapsed>,
}

/// Decodes captured frames in parallel and hands them to the encoder in order. Returns the
/// assets of every frame, in output order.
pub(super) async fn order_and_decode<T: Send + 'static>(
    mut captured: mpsc::Receiver<CapturedFrame>,
    encoder: Option<ToEncoder<T>>,
    total: u64,
    counters: Counters<'_>,
    stop: &CancellationToken,
) -> Result<Vec<AssetRecord>, OrderError> {
    let mut decoding = tokio::task::JoinSet::new();
    let mut ready: BTreeMap<usize, OrderedFrame<T>> = BTreeMap::new();
    let mut assets = Vec::with_capacity(total as usize);
    let mut next = 0usize;
    let mut rendered = 0u64;
    let mut capture_open = true;
    let abort = async |encoder: &Option<ToEncoder<T>>| {
        if let Some(e) = encoder {
            let _ = e.frames.send(OrderedFrame::Abort).await;
        }
    };
    while (next as u64) < total {
        if !capture_open && decoding.is_empty() {
            abort(&encoder).await;
            return Err(OrderError::CaptureEnded);
        }
        tokio::select! {
            frame = captured.recv(), if capture_open => match frame {
                Some(f) => {
                    rendered += 1;
                    assets.push((f.position, AssetRecord { frame: f.frame, assets: f.assets }));
                    match &encoder {
                        Some(e) => {
                            let (permit, position, image) = (f.permit, f.position, f.image);
                            let prepare = e.prepare.clone();
                            let decoding_time = counters.decoding.clone();
                            decoding.spawn_blocking(move || {
                                let started = Instant::now();
                                let prepared = match image {
                                    Some(bytes) => prepare(bytes),
                                    None => Err(EncodeError::Decode("no image was captured".into())),
                                };
                                decoding_time.add_since(started);
                                (position, prepared.map(|p| OrderedFrame::Frame(p, permit)))
                            });
                        }
                        None => {
                            next += 1;
                            counters.encoded.store(rendered, Ordering::Relaxed);
                        }
                    }
                }
                None => capture_open = false,
            },
            Some(done) = decoding.join_next() => {
                let (position, prepared) = done.map_err(|e| OrderError::Task(e.to_string()))?;
                match prepared {
                    Ok(frame) => { ready.insert(position, frame); }
                    Err(e) => { abort(&encoder).await; return Err(OrderError::Decode(e)); }
                }
                let e = encoder.as_ref().expect("decoding implies an encoder");
                while let Some(frame) = ready.remove(&next) {
                    if e.frames.send(frame).await.is_err() {
                        return Err(OrderError::EncoderGone);
                    }
                    next += 1;
                }
            },
            _ = stop.cancelled() => { abort(&encoder).await; return Err(OrderError::Cancelled); }
        }
        counters.progress.send_if_modified(|p| {
            let e = counters.encoded.load(Ordering::Relaxed);
            let changed = p.rendered != rendered || p.encoded != e;
            p.rendered = rendered;
            p.encoded = e;
            changed
        });
    }
    drop(encoder);
    assets.sort_by_key(|(position, _)| *position);
    Ok(assets.into_iter().map(|(_, a)| a).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::sync::Semaphore;

    use crate::render::progress;

    /// A frame at `position` whose image is its position as one byte.
    fn frame(semaphore: &Arc<Semaphore>, position: usize) -> CapturedFrame {
        CapturedFrame {
            position,
            frame: position as u64 * 10,
            image: Some(Bytes::from(vec![position as u8])),
            assets: json!([{ "at": position }]),
            permit: semaphore
                .clone()
                .try_acquire_owned()
                .expect("a free permit"),
        }
    }

    fn byte_value() -> Prepare<u8> {
        Arc::new(|b: Bytes| match b.first() {
            Some(0xff) => Err(EncodeError::Decode("bad image".into())),
            Some(v) => Ok(*v),
            None => Err(EncodeError::Decode("empty".into())),
        })
    }

    struct Harness {
        semaphore: Arc<Semaphore>,
        captured: mpsc::Sender<CapturedFrame>,
        encoder: mpsc::Receiver<OrderedFrame<u8>>,
        run: tokio::task::JoinHandle<Result<Vec<AssetRecord>, OrderError>>,
        progress: tokio::sync::watch::Receiver<progress::RenderProgress>,
        stop: CancellationToken,
    }

    /// The buffer running on its own task, fed by the test through `captured`.
    fn start(total: u64, with_encoder: bool) -> Harness {
        let semaphore = Arc::new(Semaphore::new(16));
        let (captured, captured_rx) = mpsc::channel(16);
        let (encoder_tx, encoder) = mpsc::channel(16);
        let (progress_tx, progress) = progress::channel();
        let stop = CancellationToken::new();
        let to_encoder = with_encoder.then(|| ToEncoder {
            frames: encoder_tx,
            prepare: byte_value(),
        });
        let stop2 = stop.clone();
        let run = tokio::spawn(async move {
            let encoded = AtomicU64::new(0);
            let counters = Counters {
                progress: &progress_tx,
                encoded: &encoded,
                decoding: Arc::default(),
            };
            order_and_decode(captured_rx, to_encoder, total, counters, &stop2).await
        });
        Harness {
            semaphore,
            captured,
            encoder,
            run,
            progress,
            stop,
        }
    }

    async fn next_frame(rx: &mut mpsc::Receiver<OrderedFrame<u8>>) -> Option<u8> {
        match rx.recv().await {
            Some(OrderedFrame::Frame(v, _permit)) => Some(v),
            Some(OrderedFrame::Abort) | None => None,
        }
    }

    #[tokio::test]
    async fn frames_leave_in_output_order_whatever_order_they_arrive_in() {
        let mut h = start(5, true);
        for position in [3, 1, 4, 0, 2] {
            h.captured
                .send(frame(&h.semaphore, position))
                .await
                .unwrap();
        }
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(next_frame(&mut h.encoder).await.expect("a frame"));
        }
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
        let assets = h.run.await.unwrap().unwrap();
        let frames: Vec<u64> = assets.iter().map(|a| a.frame).collect();
        assert_eq!(frames, vec![0, 10, 20, 30, 40], "assets in output order");
        assert_eq!(assets[3].assets, json!([{ "at": 3 }]));
        assert_eq!(h.progress.borrow().rendered, 5);
    }

    #[tokio::test]
    async fn a_frame_waiting_for_its_turn_keeps_its_permit() {
        let mut h = start(2, true);
        h.captured.send(frame(&h.semaphore, 1)).await.unwrap();
        // Frame 1 is decoded but cannot go before frame 0: wait until it was counted, then
        // its permit must still be taken.
        h.progress
            .wait_for(|p| p.rendered == 1)
            .await
            .expect("progress");
        assert_eq!(h.semaphore.available_permits(), 15);
        assert!(h.encoder.try_recv().is_err(), "nothing leaves out of order");
        h.captured.send(frame(&h.semaphore, 0)).await.unwrap();
        assert_eq!(next_frame(&mut h.encoder).await, Some(0));
        assert_eq!(next_frame(&mut h.encoder).await, Some(1));
        h.run.await.unwrap().unwrap();
        // The test dropped both frames: every permit is back.
        assert_eq!(h.semaphore.available_permits(), 16);
    }

    #[tokio::test]
    async fn a_capture_that_ends_early_aborts_the_encoder() {
        let mut h = start(3, true);
        h.captured.send(frame(&h.semaphore, 0)).await.unwrap();
        drop(h.captured);
        assert_eq!(next_frame(&mut h.encoder).await, Some(0));
        assert!(
            matches!(h.encoder.recv().await, Some(OrderedFrame::Abort)),
            "the encoder is told to stop without finishing the file"
        );
        let e = h.run.await.unwrap().unwrap_err();
        assert!(matches!(e, OrderError::CaptureEnded), "{e}");
    }

    #[tokio::test]
    async fn a_frame_that_does_not_decode_fails_with_the_decoders_error() {
        let mut h = start(3, true);
        let mut bad = frame(&h.semaphore, 0);
        bad.image = Some(Bytes::from_static(&[0xff]));
        h.captured.send(bad).await.unwrap();
        assert!(matches!(h.encoder.recv().await, Some(OrderedFrame::Abort)));
        let e = h.run.await.unwrap().unwrap_err();
        assert!(
            matches!(&e, OrderError::Decode(EncodeError::Decode(m)) if m == "bad image"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_encoder_that_went_away_is_reported_as_such() {
        let h = start(2, true);
        drop(h.encoder);
        h.captured.send(frame(&h.semaphore, 0)).await.unwrap();
        let e = h.run.await.unwrap().unwrap_err();
        assert!(matches!(e, OrderError::EncoderGone), "{e}");
    }

    #[tokio::test]
    async fn stopping_aborts_the_encoder() {
        let mut h = start(3, true);
        h.stop.cancel();
        assert!(matches!(h.encoder.recv().await, Some(OrderedFrame::Abort)));
        let e = h.run.await.unwrap().unwrap_err();
        assert!(matches!(e, OrderError::Cancelled), "{e}");
    }

    #[tokio::test]
    async fn audio_only_frames_only_carry_their_assets() {
        let mut h = start(2, false);
        h.captured.send(frame(&h.semaphore, 1)).await.unwrap();
        h.captured.send(frame(&h.semaphore, 0)).await.unwrap();
        let assets = h.run.await.unwrap().unwrap();
        assert_eq!(assets.iter().map(|a| a.frame).collect::<Vec<_>>(), [0, 10]);
        assert!(h.encoder.recv().await.is_none(), "no encoder was fed");
        let p = *h.progress.borrow();
        assert_eq!((p.rendered, p.encoded), (2, 2));
    }
}
