//! Stage 2, frames → video: a range of the plan's frames captured by the tab pool, decoded in
//! parallel, put in order and encoded on the encoder thread into a video-only file. What the
//! pages registered for audio comes back as asset records; audio is never rendered here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::order::{self, Counters, OrderError, OrderedFrame, ToEncoder};
use super::plan::{ChunkRange, MediaPlan};
use super::{RenderError, RenderProgress, Session};
use crate::audio::AssetRecord;
use crate::browser::{BrowserError, pool};
use crate::encode::{
    self, EncodeError, FramePreparer, PreparedFrame, StreamParameters, Target, VideoEncoder,
};
use crate::timing::Elapsed;

/// What stage 2 hands back. Serializable: a remote worker returns it to the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkOutcome {
    pub range: ChunkRange,
    /// Frames written to the video file; 0 for audio-only renders, which write none.
    pub frames: u64,
    /// The chunk file's video parameters, which every chunk of a render must share to be
    /// joined; `None` when stage 2 wrote the output itself or no video.
    pub parameters: Option<StreamParameters>,
    /// Per frame of the range, in output order: what the page registered for audio.
    pub assets: Vec<AssetRecord>,
}

/// Where stage 2 writes its video.
pub(super) enum VideoFile {
    /// The output itself: nothing is added to it afterwards.
    Output(PathBuf),
    /// A video-only file that stage 4 joins with the others and with the audio.
    Intermediate(PathBuf),
    /// Audio-only renders: frames are only visited for their assets.
    None,
}

impl VideoFile {
    fn path(&self) -> Option<&Path> {
        match self {
            VideoFile::Output(p) | VideoFile::Intermediate(p) => Some(p),
            VideoFile::None => None,
        }
    }

    fn target(&self, plan: &MediaPlan) -> Target {
        match self {
            VideoFile::Output(p) => Target::Output {
                muxer: plan.output.container_for(p),
            },
            _ => Target::Chunk,
        }
    }
}

impl Session {
    /// The tab pool's job for `range` of `plan`.
    pub(super) fn capture_job(&self, plan: &MediaPlan, range: ChunkRange) -> pool::CaptureJob {
        let mut setup = self.page_setup();
        setup.audio_enabled = plan.audio.is_some() || plan.output.codec.is_audio_only();
        setup.video_enabled = plan.capture.is_some();
        setup.sample_rate = plan.composition.sample_rate();
        setup.viewport = Some(plan.viewport);
        let frames = plan.frames[range.first as usize..=range.last as usize].to_vec();
        pool::CaptureJob {
            setup,
            mode: plan
                .composition
                .mode(plan.viewport.width, plan.viewport.height),
            tabs: plan.tabs.min(frames.len()).max(1),
            frames,
            format: plan.capture,
            timings: Default::default(),
        }
    }

    /// Starts the tab pool. Frames in flight (captured, decoding, waiting for their turn,
    /// queued to the encoder) are bounded by the admission permits.
    pub(super) fn start_capture(
        &self,
        job: pool::CaptureJob,
        cancel: &CancellationToken,
    ) -> (
        tokio::task::JoinHandle<Result<(), BrowserError>>,
        mpsc::Receiver<pool::CapturedFrame>,
        CancellationToken,
    ) {
        let tabs = job.tabs;
        let in_flight = (tabs * 2).max(tabs + 4);
        let admission = Arc::new(Semaphore::new(in_flight));
        let (tx, rx) = mpsc::channel(in_flight);
        let stop = cancel.child_token();
        let task = tokio::spawn(pool::capture(
            self.lease.browser.clone(),
            job,
            admission,
            tx,
            stop.clone(),
        ));
        (task, rx, stop)
    }

    /// Stage 2: captures `range` of `plan` and encodes it into `video`. `captured`, if given,
    /// gets the range's asset records as soon as the last frame was captured, while the
    /// encoder is still flushing (x264's lookahead: seconds at 1080p), so that the caller
    /// can mix the audio meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn frames_to_video(
        &self,
        plan: &MediaPlan,
        range: ChunkRange,
        video: VideoFile,
        progress: &super::ProgressSender,
        cancel: &CancellationToken,
        started: Instant,
        captured: Option<oneshot::Sender<Vec<AssetRecord>>>,
    ) -> Result<ChunkOutcome, RenderError> {
        if range.first > range.last || range.last >= plan.total() {
            return Err(RenderError::Invalid(format!(
                "The frame range {}-{} is not within the {} frames of the render",
                range.first,
                range.last,
                plan.total()
            )));
        }
        let job = self.capture_job(plan, range);
        let (tabs, timings) = (job.tabs, job.timings.clone());
        let total = range.frames();
        progress.send_replace(RenderProgress {
            rendered: 0,
            encoded: 0,
            total,
            overall: None,
        });
        let frames_started = Instant::now();
        let encoded = Arc::new(AtomicU64::new(0));
        let decoding = Arc::new(Elapsed::default());
        let encoding = Arc::new(Elapsed::default());
        let (to_encoder, encoder_thread) = match (&plan.video, video.path()) {
            (Some(settings), Some(path)) => {
                let preparer = Arc::new(FramePreparer::new(settings));
                let (frames, thread) = spawn_encoder(
                    path.to_path_buf(),
                    settings.clone(),
                    video.target(plan),
                    encoded.clone(),
                    encoding.clone(),
                )?;
                let prepare: order::Prepare<PreparedFrame> =
                    Arc::new(move |image| preparer.prepare(&image));
                (Some(ToEncoder { frames, prepare }), Some(thread))
            }
            _ => (None, None),
        };
        let (capture, frames, stop) = self.start_capture(job, cancel);
        let counters = Counters {
            progress,
            encoded: &encoded,
            decoding: decoding.clone(),
        };
        let ordered = order::order_and_decode(frames, to_encoder, total, counters, &stop).await;
        match (&ordered, captured) {
            (Err(_), _) => stop.cancel(),
            (Ok(assets), Some(tx)) => {
                let _ = tx.send(assets.clone());
            }
            (Ok(_), None) => {}
        }
        let captured = capture.await.unwrap_or_else(|e| {
            Err(BrowserError::Protocol {
                during: "capturing frames".into(),
                message: format!("the capture task failed: {e}"),
            })
        });
        let captured_all = Instant::now();
        let encoder_result = match encoder_thread {
            Some(thread) => Some(
                tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_err(|e| RenderError::internal("waiting for the encoder thread", e))?
                    .map_err(|_| {
                        RenderError::internal("encoding", "the encoder thread panicked")
                    })?,
            ),
            None => None,
        };
        // Errors, in the order of what explains the failure best.
        if cancel.is_cancelled() {
            return Err(RenderError::Cancelled);
        }
        captured?;
        let assets = match (ordered, encoder_result) {
            (Err(OrderError::EncoderGone), Some(Err(e))) => return Err(e.into()),
            (Err(e), _) => return Err(e.into()),
            (Ok(_), Some(Err(e))) => return Err(e.into()),
            (Ok(assets), _) => assets,
        };
        let frames = match &video {
            VideoFile::None => 0,
            _ => encoded.load(Ordering::Relaxed),
        };
        let parameters = match video {
            VideoFile::Intermediate(path) => Some(
                tokio::task::spawn_blocking(move || encode::stream_parameters(&path))
                    .await
                    .map_err(|e| RenderError::internal("reading the chunk's parameters", e))??,
            ),
            _ => None,
        };
        progress.send_modify(|p| {
            p.rendered = total;
            p.encoded = total;
        });
        log_timings(
            total,
            tabs,
            [started, frames_started, captured_all, Instant::now()],
            &timings,
            [&decoding, &encoding],
        );
        Ok(ChunkOutcome {
            range,
            frames,
            parameters,
            assets,
        })
    }
}

impl From<OrderError> for RenderError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Cancelled => RenderError::Cancelled,
            OrderError::Decode(e) => RenderError::Encode(e),
            other => RenderError::internal("ordering frames", other),
        }
    }
}

type EncoderJoin = std::thread::JoinHandle<Result<u64, EncodeError>>;

/// The encoder runs on its own thread, fed in frame order; memory is bounded by the channel
/// and the capture admission permits that travel with each frame. The thread ends with the
/// frames written, or with `EncodeError::Aborted` when told to stop.
fn spawn_encoder(
    path: PathBuf,
    settings: encode::VideoSettings,
    target: Target,
    encoded: Arc<AtomicU64>,
    encoding: Arc<Elapsed>,
) -> Result<(mpsc::Sender<OrderedFrame<PreparedFrame>>, EncoderJoin), RenderError> {
    let (tx, mut rx) = mpsc::channel::<OrderedFrame<PreparedFrame>>(2);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("encoder".into())
        .spawn(move || {
            crate::system::deprioritize_encoder_thread();
            let mut encoder = match VideoEncoder::create(&path, &settings, target) {
                Ok(e) => {
                    let _ = ready_tx.send(Ok(()));
                    e
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Err(EncodeError::Aborted);
                }
            };
            while let Some(frame) = rx.blocking_recv() {
                match frame {
                    OrderedFrame::Frame(prepared, _permit) => {
                        let pushing = Instant::now();
                        encoder.push(prepared)?;
                        encoding.add_since(pushing);
                        encoded.store(encoder.encoded_frames(), Ordering::Relaxed);
                    }
                    OrderedFrame::Abort => return Err(EncodeError::Aborted),
                }
            }
            let n = encoder.finish()?;
            encoded.store(n, Ordering::Relaxed);
            Ok(n)
        })
        .map_err(|e| RenderError::internal("starting the encoder thread", e))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((tx, handle)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e.into())
        }
        Err(_) => Err(RenderError::internal(
            "starting the encoder",
            "the encoder thread died",
        )),
    }
}

/// Where a stage 2 run's time went, as one log line: the wall time of its parts, then per
/// frame what the tabs (summed over tabs) and the encode half spent. The first place to look
/// when a render is slower than expected.
fn log_timings(
    frames: u64,
    tabs: usize,
    [started, frames_started, captured_all, frames_done]: [Instant; 4],
    capture: &pool::CaptureTimings,
    [decoding, encoding]: [&Elapsed; 2],
) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let per_frame = |e: &Elapsed| (e.millis() / frames.max(1) as f64 * 10.0).round() / 10.0;
    let frames_seconds = (frames_done - frames_started).as_secs_f64();
    tracing::info!(
        frames,
        tabs,
        setup_ms = ms(frames_started - started).round(),
        frames_ms = ms(frames_done - frames_started).round(),
        // x264's lookahead and frame threads hold frames until the end: the encoder's tail.
        encoder_flush_ms = ms(frames_done - captured_all).round(),
        fps = (frames as f64 / frames_seconds.max(1e-9) * 100.0).round() / 100.0,
        opening_tabs_ms = capture.opening_tabs.millis().round(),
        seek_ms_per_frame = per_frame(&capture.seeking),
        screenshot_ms_per_frame = per_frame(&capture.capturing),
        waiting_for_encoder_ms_per_frame = per_frame(&capture.waiting_for_consumer),
        decode_ms_per_frame = per_frame(decoding),
        encode_ms_per_frame = per_frame(encoding),
        "render timings"
    );
}
