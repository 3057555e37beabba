//! A render job: it ties the stages together and reports progress.
//!
//! site → composition → frame plan → (tab pool ‖ decode ‖ encoder) → file. The CLI and the
//! HTTP service both call [`Renderer`]; neither knows how the stages work.
//!
//! **Architecture Invariant:** data flows one way: `render` calls `browser`, `encode` and
//! `storage`; none of them calls back into `render` or into each other.

pub mod frames;
pub mod progress;
mod still;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::audio::{self, AudioError, Fetcher};
use crate::browser::{
    self, Browser, BrowserError, CaptureFormat, CompositionInfo, CompositionMode, LaunchOptions,
    PageGuard, PageSetup, PageViewport, contract, pool,
};
use crate::encode::{self, AudioSettings, EncodeError, FramePreparer, PreparedFrame, VideoEncoder};
use crate::offthread::FrameServer;
use crate::options::{CompositionOverrides, MediaOptions, SiteOptions, VideoImageFormat};
use crate::site::{Access, Site, SiteError};
use crate::timing::Elapsed;

pub use progress::{ProgressSender, RenderProgress};

/// Everything that can fail a render, with the JS-style name the wire error carries.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Browser(#[from] BrowserError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Site(#[from] SiteError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// An option that does not fit this composition (frame range, concurrency, size).
    #[error("{0}")]
    Invalid(String),
    #[error("The render was cancelled")]
    Cancelled,
    #[error("{during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl RenderError {
    pub fn name(&self) -> String {
        match self {
            RenderError::Browser(e) => e.name().to_string(),
            RenderError::Cancelled => "CancelledError".into(),
            _ => "Error".into(),
        }
    }

    /// The page's own stack when there is one, else `Name: message`.
    pub fn stack(&self) -> String {
        match self {
            RenderError::Browser(e) => match e.stack() {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => format!("{}: {}", e.name(), e),
            },
            other => format!("{}: {}", other.name(), other),
        }
    }
}

fn io(during: &'static str) -> impl FnOnce(std::io::Error) -> RenderError {
    move |source| RenderError::Io { during, source }
}

/// The composition a render uses, after calculateMetadata and the caller's overrides.
#[derive(Debug, Clone)]
pub struct ResolvedComposition {
    pub info: CompositionInfo,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub duration_in_frames: u64,
}

impl ResolvedComposition {
    pub(crate) fn new(
        info: CompositionInfo,
        o: &CompositionOverrides,
    ) -> Result<Self, RenderError> {
        let r = ResolvedComposition {
            width: o.width.unwrap_or(info.width),
            height: o.height.unwrap_or(info.height),
            fps: o.fps.unwrap_or(info.fps),
            duration_in_frames: o.duration_in_frames.unwrap_or(info.duration_in_frames),
            info,
        };
        if r.width == 0 || r.height == 0 || r.duration_in_frames == 0 {
            return Err(RenderError::Invalid(format!(
                "The forced size {}x{} and duration {} must all be positive",
                r.width, r.height, r.duration_in_frames
            )));
        }
        Ok(r)
    }

    fn mode(&self, width: u32, height: u32) -> CompositionMode {
        CompositionMode {
            id: self.info.id.clone(),
            width,
            height,
            fps: self.fps,
            duration_in_frames: self.duration_in_frames,
            serialized_resolved_props: self
                .info
                .serialized_resolved_props_with_custom_schema
                .clone(),
            default_codec: self.info.default_codec.clone(),
            default_out_name: self.info.default_out_name.clone(),
            default_video_image_format: self.info.default_video_image_format.clone(),
            default_pixel_format: self.info.default_pixel_format.clone(),
            default_pro_res_profile: self.info.default_pro_res_profile.clone(),
            default_sample_rate: self.info.default_sample_rate,
        }
    }
}

/// What a finished media render produced.
#[derive(Debug, Clone)]
pub struct MediaOutcome {
    pub composition: ResolvedComposition,
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    /// Per captured frame, in output order: the assets the page registered (for audio).
    pub assets: Vec<(u64, Value)>,
    pub elapsed: Duration,
}

/// Owns the warm browser; one per process.
pub struct Renderer {
    browser: Arc<Browser>,
    guard: PageGuard,
    cpus: usize,
    /// The tab of the last still, left in composition mode for the next one.
    warm_still: tokio::sync::Mutex<Option<still::WarmStill>>,
}

/// The browser a render runs in: the warm one, or one of its own for special launch flags.
struct BrowserLease {
    browser: Arc<Browser>,
    dedicated: bool,
}

impl Drop for BrowserLease {
    fn drop(&mut self) {
        if self.dedicated {
            let b = self.browser.clone();
            tokio::spawn(async move { b.shutdown().await });
        }
    }
}

impl Renderer {
    /// Starts the warm browser. `guard` says what pages must never reach.
    pub async fn start(guard: PageGuard) -> Result<Renderer, RenderError> {
        let browser = Browser::launch(LaunchOptions::service_default(), guard.clone()).await?;
        Ok(Renderer {
            browser: Arc::new(browser),
            guard,
            cpus: crate::system::cpu_count(),
            warm_still: tokio::sync::Mutex::new(None),
        })
    }

    pub fn browser(&self) -> &Arc<Browser> {
        &self.browser
    }

    pub async fn shutdown(&self) {
        if let Some(warm) = self.warm_still.lock().await.take() {
            warm.close().await;
        }
        self.browser.shutdown().await;
    }

    async fn lease(&self, site: &SiteOptions) -> Result<BrowserLease, RenderError> {
        if !site.chromium.headless {
            tracing::warn!(
                "chromiumOptions.headless=false asked for a visible browser; there is no display here, so it stays headless"
            );
        }
        let wanted = LaunchOptions::for_render(&site.chromium);
        if &wanted == self.browser.options() {
            return Ok(BrowserLease {
                browser: self.browser.clone(),
                dedicated: false,
            });
        }
        tracing::info!(
            ?wanted,
            "this render's chromiumOptions need a browser of its own"
        );
        Ok(BrowserLease {
            browser: Arc::new(Browser::launch(wanted, self.guard.clone()).await?),
            dedicated: true,
        })
    }

    /// Opens the serve URL with a loopback server whose `/proxy` decodes OffthreadVideo
    /// frames; the returned fetcher holds this render's downloaded media.
    async fn open_site(
        &self,
        site: &SiteOptions,
        access: Access,
    ) -> Result<(Site, Arc<Fetcher>), RenderError> {
        let fetcher = Arc::new(Fetcher::new(self.guard.clone())?);
        let frames = Arc::new(FrameServer::new(
            fetcher.clone(),
            site.offthread_video_cache_size_in_bytes,
            site.offthread_video_threads,
        ));
        Ok((Site::open(&site.serve_url, access, frames).await?, fetcher))
    }

    fn page_setup(site: &SiteOptions, opened: &Site) -> PageSetup {
        PageSetup {
            url: opened.url.clone(),
            timeout: site.timeout,
            serialized_input_props: site.serialized_input_props.clone(),
            env_variables: site.env_variables.clone(),
            log_level: site.log_level,
            proxy_port: opened.proxy_port,
            initial_frame: 0,
            is_main_tab: true,
            audio_enabled: false,
            video_enabled: false,
            sample_rate: 48_000,
            media_cache_size_in_bytes: site.offthread_video_cache_size_in_bytes,
            user_agent: site.chromium.user_agent.clone(),
            dark_mode: site.chromium.dark_mode,
            viewport: None,
        }
    }

    /// Opens the site in a fresh tab in evaluation mode and runs `f` on it.
    async fn with_evaluation_tab<T>(
        browser: &Browser,
        setup: &PageSetup,
        f: impl AsyncFnOnce(&browser::Tab) -> Result<T, BrowserError>,
    ) -> Result<T, RenderError> {
        let tab = browser
            .new_tab("compositions", setup.log_level.forwards_page_console())
            .await?;
        let result = async {
            contract::open(&tab, setup).await?;
            f(&tab).await
        }
        .await;
        tab.close().await;
        Ok(result?)
    }

    /// Every composition of a site (calculateMetadata applied).
    pub async fn compositions(
        &self,
        site: &SiteOptions,
        access: Access,
    ) -> Result<Vec<CompositionInfo>, RenderError> {
        let (opened, _media) = self.open_site(site, access).await?;
        let lease = self.lease(site).await?;
        let setup = Self::page_setup(site, &opened);
        let timeout = site.timeout;
        Self::with_evaluation_tab(&lease.browser, &setup, async |tab| {
            contract::list_compositions(tab, timeout).await
        })
        .await
    }

    async fn select(
        browser: &Browser,
        site: &SiteOptions,
        opened: &Site,
        id: &str,
        overrides: &CompositionOverrides,
    ) -> Result<ResolvedComposition, RenderError> {
        let setup = Self::page_setup(site, opened);
        let timeout = site.timeout;
        let info = Self::with_evaluation_tab(browser, &setup, async |tab| {
            contract::select_composition(tab, id, timeout).await
        })
        .await?;
        ResolvedComposition::new(info, overrides)
    }

    /// Renders a video (or audio-only) file to `output`. On error nothing is left at `output`.
    pub async fn render_media(
        &self,
        site: &SiteOptions,
        media: &MediaOptions,
        access: Access,
        output: &Path,
        progress: &ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<MediaOutcome, RenderError> {
        let result = self
            .render_media_inner(site, media, access, output, progress, cancel)
            .await;
        if result.is_err() {
            let _ = std::fs::remove_file(output);
        }
        result
    }

    /// Everything a media render decides before the first frame.
    async fn plan(
        &self,
        site: &SiteOptions,
        media: &MediaOptions,
        access: Access,
        cancel: &CancellationToken,
    ) -> Result<Plan, RenderError> {
        let tabs_wanted = media
            .concurrency
            .resolve(self.cpus)
            .map_err(RenderError::Invalid)?;
        let (opened, media_files) = self.open_site(site, access).await?;
        let lease = self.lease(site).await?;
        let composition = cancellable(
            cancel,
            Self::select(
                &lease.browser,
                site,
                &opened,
                &media.composition_id,
                &media.overrides,
            ),
        )
        .await?;

        let image_format = encode::resolve_image_format(
            media,
            composition.info.default_video_image_format.as_deref(),
        );
        encode::validate(media, image_format)?;
        let frames = frames::select_frames(
            &media.frame_range,
            media.every_nth_frame,
            composition.duration_in_frames,
        )
        .map_err(RenderError::Invalid)?;
        let (css_width, css_height) = even_dimensions(media, composition.width, composition.height);
        let format = match image_format {
            VideoImageFormat::Jpeg => Some(CaptureFormat::Jpeg {
                quality: media.jpeg_quality,
            }),
            VideoImageFormat::Png => Some(CaptureFormat::Png),
            VideoImageFormat::None => None,
        };
        let mut setup = Self::page_setup(site, &opened);
        setup.audio_enabled = !media.muted;
        setup.video_enabled = format.is_some();
        setup.sample_rate = composition.info.default_sample_rate.unwrap_or(48_000);
        setup.viewport = Some(PageViewport {
            width: css_width,
            height: css_height,
            scale: media.scale,
        });
        let tabs = tabs_wanted.min(frames.len()).max(1);
        Ok(Plan {
            width: (css_width as f64 * media.scale).round() as u32,
            height: (css_height as f64 * media.scale).round() as u32,
            output_fps: composition.fps / media.every_nth_frame as f64,
            image_format,
            job: pool::CaptureJob {
                setup,
                mode: composition.mode(css_width, css_height),
                frames,
                tabs,
                format,
                timings: Default::default(),
            },
            composition,
            media_files,
            lease,
            _site: opened,
        })
    }

    /// Captures every frame of a render and returns the images in output order, without
    /// encoding them: the capture half of a render, for benchmarks.
    pub async fn capture_only(
        &self,
        site: &SiteOptions,
        media: &MediaOptions,
        access: Access,
    ) -> Result<(ResolvedComposition, Vec<Bytes>), RenderError> {
        let cancel = CancellationToken::new();
        let plan = self.plan(site, media, access, &cancel).await?;
        let total = plan.job.frames.len();
        let (capture, mut captured, _stop) = plan.start_capture(&cancel);
        let mut images = vec![Bytes::new(); total];
        while let Some(frame) = captured.recv().await {
            images[frame.position] = frame.image.unwrap_or_default();
        }
        capture
            .await
            .map_err(|e| RenderError::Invalid(format!("the capture task failed: {e}")))??;
        Ok((plan.composition, images))
    }

    async fn render_media_inner(
        &self,
        site: &SiteOptions,
        media: &MediaOptions,
        access: Access,
        output: &Path,
        progress: &ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<MediaOutcome, RenderError> {
        let started = Instant::now();
        let plan = self.plan(site, media, access, cancel).await?;
        let (width, height, output_fps, image_format) =
            (plan.width, plan.height, plan.output_fps, plan.image_format);
        let audio_codec =
            encode::resolve_audio_codec(media.codec, media.audio_codec, media.prefer_lossless)?;
        if let Some(name) = output.file_name().and_then(|n| n.to_str())
            && output.extension().is_some()
        {
            let audio = if media.muted { None } else { audio_codec };
            encode::validate_output_name(name, media.codec, audio)?;
        }
        if media.codec.is_audio_only() && media.muted {
            return Err(RenderError::Invalid(
                "The output format has neither audio nor video. This can happen if you are rendering an audio codec and the output file has no audio or the muted flag was passed.".into(),
            ));
        }
        let audio_settings = match audio_codec {
            Some(a) if !media.muted => Some(AudioSettings::new(a, media.audio_bitrate.as_deref())?),
            _ => None,
        };
        let settings = if media.codec.is_audio_only() {
            None
        } else {
            Some(encode::settings(
                media,
                image_format,
                width,
                height,
                output_fps,
            )?)
        };
        // When audio may follow, the video goes to a file beside the output first and is
        // remuxed with the mix once every frame's assets are known.
        let video_path = match (&settings, &audio_settings) {
            (Some(_), Some(_)) => Some(sibling(
                output,
                "video",
                encode::traits(media.codec).extension,
            )),
            (Some(_), None) => Some(output.to_path_buf()),
            (None, _) => None,
        };
        let _remove_intermediate = video_path
            .as_ref()
            .filter(|p| p.as_path() != output)
            .map(|p| RemoveOnDrop(p.clone()));
        let total = plan.job.frames.len() as u64;
        progress.send_replace(RenderProgress {
            rendered: 0,
            encoded: 0,
            total,
        });
        tracing::info!(
            composition = %plan.composition.info.id,
            frames = total,
            tabs = plan.job.tabs,
            width,
            height,
            fps = output_fps,
            codec = %media.codec,
            "rendering"
        );
        let frames_started = Instant::now();
        let (capture, captured_rx, stop) = plan.start_capture(cancel);

        let encoded = Arc::new(AtomicU64::new(0));
        let decoding = Arc::new(Elapsed::default());
        let encoding = Arc::new(Elapsed::default());
        let (encoder, encoder_thread) = match (settings, &video_path) {
            (Some(settings), Some(path)) => {
                let preparer = Arc::new(FramePreparer::new(&settings));
                let (tx, thread) =
                    spawn_encoder(path.clone(), settings, encoded.clone(), encoding.clone())?;
                (Some((tx, preparer)), Some(thread))
            }
            _ => (None, None),
        };

        let ordered = order_and_decode(
            captured_rx,
            encoder,
            total,
            progress,
            &encoded,
            &stop,
            decoding.clone(),
        )
        .await;
        if ordered.is_err() {
            stop.cancel();
        }
        let captured = capture.await.unwrap_or_else(|e| {
            Err(BrowserError::Protocol {
                during: "capturing frames".into(),
                message: format!("the capture task failed: {e}"),
            })
        });
        let captured_all = Instant::now();
        // Errors, in order of what explains the failure best.
        let encoder_result = match encoder_thread {
            Some(thread) => Some(
                tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_err(|e| RenderError::Invalid(format!("the encoder thread failed: {e}")))?
                    .map_err(|_| RenderError::Invalid("the encoder thread panicked".into()))?,
            ),
            None => None,
        };
        if cancel.is_cancelled() {
            return Err(RenderError::Cancelled);
        }
        captured?;
        let assets = ordered?;
        let frames_written = encoder_result.transpose()?.unwrap_or(total);
        let frames_done = Instant::now();

        if let Some(audio_settings) = audio_settings {
            let timeline = audio::Timeline {
                frames: total as usize,
                output_fps,
                composition_fps: plan.composition.fps,
                every_nth_frame: media.every_nth_frame as u64,
                sample_rate: plan
                    .composition
                    .info
                    .default_sample_rate
                    .unwrap_or(audio::DEFAULT_SAMPLE_RATE),
            };
            let parsed = audio::parse_frames(&assets);
            let wanted = media.enforce_audio_track
                || media.codec.is_audio_only()
                || audio::has_audio(&parsed);
            if wanted {
                let mix = cancellable(cancel, async {
                    Ok(audio::mix(&parsed, timeline, plan.media_files.clone()).await?)
                })
                .await?;
                let video = video_path.clone();
                let container = container_for(output, media.codec);
                let output = output.to_path_buf();
                let metadata = encode::metadata_tags(&media.metadata);
                let duration = total as f64 / output_fps;
                tokio::task::spawn_blocking(move || {
                    let mut samples = mix.samples;
                    for s in &mut samples {
                        // A plain sum can exceed full scale; clip, never wrap around.
                        *s = s.clamp(-1.0, 1.0);
                    }
                    let mut pcm = encode::Pcm::f32(&samples, mix.sample_rate);
                    match video {
                        Some(video) => encode::remux_with_audio(
                            &video,
                            &mut pcm,
                            &audio_settings,
                            &output,
                            container,
                            &metadata,
                        ),
                        None => encode::write_audio_only(
                            &mut pcm,
                            &audio_settings,
                            Some(duration),
                            &output,
                            container,
                        ),
                    }
                })
                .await
                .map_err(|e| RenderError::Invalid(format!("the audio task failed: {e}")))??;
            } else if let Some(video) = &video_path
                && video.as_path() != output
            {
                std::fs::rename(video, output).map_err(io("moving the video into place"))?;
            }
        }
        progress.send_modify(|p| {
            p.rendered = total;
            p.encoded = total;
        });
        log_timings(
            total,
            plan.job.tabs,
            [started, frames_started, captured_all, frames_done],
            &plan.job.timings,
            [&decoding, &encoding],
        );
        Ok(MediaOutcome {
            composition: plan.composition,
            frames: frames_written,
            width,
            height,
            assets,
            elapsed: started.elapsed(),
        })
    }
}

/// A media render's decisions, and what must live as long as it runs.
struct Plan {
    composition: ResolvedComposition,
    image_format: VideoImageFormat,
    width: u32,
    height: u32,
    output_fps: f64,
    job: pool::CaptureJob,
    /// This render's downloaded media (audio sources, OffthreadVideo).
    media_files: Arc<Fetcher>,
    lease: BrowserLease,
    /// The loopback server the page loads from and calls `/proxy` on.
    _site: Site,
}

type CaptureTask = tokio::task::JoinHandle<Result<(), BrowserError>>;

impl Plan {
    /// Starts the tab pool. Frames in flight (captured, decoding, waiting for their turn,
    /// queued to the encoder) are bounded by the admission permits.
    fn start_capture(
        &self,
        cancel: &CancellationToken,
    ) -> (
        CaptureTask,
        mpsc::Receiver<pool::CapturedFrame>,
        CancellationToken,
    ) {
        let tabs = self.job.tabs;
        let in_flight = (tabs * 2).max(tabs + 4);
        let admission = Arc::new(Semaphore::new(in_flight));
        let (tx, rx) = mpsc::channel(in_flight);
        let stop = cancel.child_token();
        let task = tokio::spawn(pool::capture(
            self.lease.browser.clone(),
            self.job.clone(),
            admission,
            tx,
            stop.clone(),
        ));
        (task, rx, stop)
    }
}

/// A hidden file beside `output` (same filesystem, so a rename is enough).
fn sibling(output: &Path, what: &str, extension: &str) -> PathBuf {
    let name = output.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    output.with_file_name(format!(".{name}.{what}.{extension}"))
}

/// Removes an intermediate file on every path out of a render.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The muxer for the output: from its extension, else the codec's own.
fn container_for(output: &Path, codec: crate::options::Codec) -> &'static str {
    output
        .extension()
        .and_then(|e| e.to_str())
        .and_then(encode::muxer_for_extension)
        .unwrap_or(encode::traits(codec).muxer)
}

/// H.264/H.265 need even sizes: like the renderer, shrink each side until `round(side ×
/// scale)` is even, instead of failing.
fn even_dimensions(media: &MediaOptions, width: u32, height: u32) -> (u32, u32) {
    if !media.codec.needs_even_dimensions() {
        return (width, height);
    }
    let fix = |mut d: u32| {
        while d > 1 && ((d as f64 * media.scale).round() as u64) % 2 == 1 {
            d -= 1;
        }
        d
    };
    let (w, h) = (fix(width), fix(height));
    if (w, h) != (width, height) {
        tracing::warn!(
            "{} needs even dimensions: rendering {width}x{height} as {w}x{h}",
            media.codec
        );
    }
    (w, h)
}

async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl Future<Output = Result<T, RenderError>>,
) -> Result<T, RenderError> {
    tokio::select! {
        r = fut => r,
        _ = cancel.cancelled() => Err(RenderError::Cancelled),
    }
}

/// Where a render's time went, as one log line: the stages' wall time, then per frame what
/// the tabs (summed over tabs) and the encode half spent. The first place to look when a
/// render is slower than expected.
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
        audio_and_mux_ms = ms(frames_done.elapsed()).round(),
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

type EncoderJoin = std::thread::JoinHandle<Result<u64, RenderError>>;

/// The encoder runs on its own thread, fed in frame order; memory is bounded by the channel
/// and the capture admission permits that travel with each frame.
fn spawn_encoder(
    path: std::path::PathBuf,
    settings: encode::VideoSettings,
    encoded: Arc<AtomicU64>,
    encoding: Arc<Elapsed>,
) -> Result<(mpsc::Sender<OrderedFrame>, EncoderJoin), RenderError> {
    let (tx, mut rx) = mpsc::channel::<OrderedFrame>(2);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("encoder".into())
        .spawn(move || {
            crate::system::deprioritize_encoder_thread();
            let mut encoder = match VideoEncoder::create(&path, &settings) {
                Ok(e) => {
                    let _ = ready_tx.send(Ok(()));
                    e
                }
                Err(e) => {
                    let msg = e.to_string();
                    let _ = ready_tx.send(Err(e));
                    return Err(RenderError::Invalid(msg));
                }
            };
            let mut complete = true;
            while let Some(frame) = rx.blocking_recv() {
                match frame {
                    OrderedFrame::Frame(prepared, _permit) => {
                        let pushing = Instant::now();
                        encoder.push(prepared)?;
                        encoding.add_since(pushing);
                        encoded.store(encoder.encoded_frames(), Ordering::Relaxed);
                    }
                    OrderedFrame::Abort => {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                return Err(RenderError::Cancelled);
            }
            let n = encoder.finish()?;
            encoded.store(n, Ordering::Relaxed);
            Ok(n)
        })
        .map_err(io("starting the encoder thread"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((tx, handle)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e.into())
        }
        Err(_) => Err(RenderError::Invalid("the encoder thread died".into())),
    }
}

enum OrderedFrame {
    Frame(PreparedFrame, tokio::sync::OwnedSemaphorePermit),
    /// Stop without finalising the file.
    Abort,
}

/// Decodes and converts captured frames in parallel and hands them to the encoder in order
/// (audio-only renders have no encoder: their frames only carry assets).
/// Returns the assets of every frame, in output order.
async fn order_and_decode(
    mut captured: mpsc::Receiver<pool::CapturedFrame>,
    encoder: Option<(mpsc::Sender<OrderedFrame>, Arc<FramePreparer>)>,
    total: u64,
    progress: &ProgressSender,
    encoded: &AtomicU64,
    stop: &CancellationToken,
    decoding_time: Arc<Elapsed>,
) -> Result<Vec<(u64, Value)>, RenderError> {
    let mut decoding = tokio::task::JoinSet::new();
    let mut ready: BTreeMap<usize, OrderedFrame> = BTreeMap::new();
    let mut assets = Vec::with_capacity(total as usize);
    let mut next = 0usize;
    let mut rendered = 0u64;
    let mut capture_open = true;
    let abort = async |encoder: &Option<(mpsc::Sender<OrderedFrame>, Arc<FramePreparer>)>| {
        if let Some((tx, _)) = encoder {
            let _ = tx.send(OrderedFrame::Abort).await;
        }
    };
    while (next as u64) < total {
        if !capture_open && decoding.is_empty() {
            // Capture ended before every frame arrived: it failed, and will say why.
            abort(&encoder).await;
            return Err(RenderError::Invalid("frame capture stopped early".into()));
        }
        tokio::select! {
            frame = captured.recv(), if capture_open => match frame {
                Some(f) => {
                    rendered += 1;
                    assets.push((f.position, f.frame, f.assets));
                    match &encoder {
                        Some((_, preparer)) => {
                            let permit = f.permit;
                            let position = f.position;
                            let image = f.image;
                            let preparer = preparer.clone();
                            let decoding_time = decoding_time.clone();
                            decoding.spawn_blocking(move || {
                                let started = Instant::now();
                                let decoded = match image {
                                    Some(bytes) => preparer.prepare(&bytes),
                                    None => Err(EncodeError::Decode("no image was captured".into())),
                                };
                                decoding_time.add_since(started);
                                (position, decoded.map(|d| OrderedFrame::Frame(d, permit)))
                            });
                        }
                        // Audio-only: the frame was only visited for its assets.
                        None => {
                            next += 1;
                            encoded.store(rendered, Ordering::Relaxed);
                        }
                    }
                }
                None => capture_open = false,
            },
            Some(done) = decoding.join_next() => {
                let (position, decoded) = done.map_err(|e| RenderError::Invalid(format!("a decode task failed: {e}")))?;
                match decoded {
                    Ok(frame) => { ready.insert(position, frame); }
                    Err(e) => { abort(&encoder).await; return Err(e.into()); }
                }
                let (tx, _) = encoder.as_ref().expect("decoding implies an encoder");
                while let Some(frame) = ready.remove(&next) {
                    if tx.send(frame).await.is_err() {
                        // The encoder thread stopped; its own error explains why.
                        return Err(RenderError::Invalid("the encoder stopped early".into()));
                    }
                    next += 1;
                }
            },
            _ = stop.cancelled() => { abort(&encoder).await; return Err(RenderError::Cancelled); }
        }
        progress.send_if_modified(|p| {
            let e = encoded.load(Ordering::Relaxed);
            let changed = p.rendered != rendered || p.encoded != e;
            p.rendered = rendered;
            p.encoded = e;
            changed
        });
    }
    drop(encoder);
    assets.sort_by_key(|(position, _, _)| *position);
    Ok(assets.into_iter().map(|(_, frame, a)| (frame, a)).collect())
}
