//! A render job, in stages that can be called one by one:
//!
//! 1. [`plan`]: the site is opened, the composition selected (calculateMetadata runs once),
//!    the frames chosen and the output resolved ([`Session::resolve`], [`MediaPlan::new`]);
//! 2. [`chunk`]: a range of the plan's frames is captured and encoded into a video-only
//!    file, and the pages' audio asset records come back;
//! 3. [`join::mix`]: the asset records of the whole timeline are mixed once;
//! 4. [`join::mux`]: video and audio go into the final file.
//!
//! [`Renderer::render_media`] runs them in a row. The CLI and the HTTP service both call it;
//! neither knows how the stages work.
//!
//! **Architecture Invariant:** data flows one way: `render` calls `browser`, `encode` and
//! `audio`; none of them calls back into `render`. `render` never uploads: its callers do.

pub mod chunk;
pub mod frames;
pub mod join;
mod order;
pub mod plan;
pub mod progress;
mod still;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::audio::AudioError;
use crate::browser::{
    self, Browser, BrowserError, CompositionInfo, LaunchOptions, PageGuard, PageSetup, contract,
};
use crate::encode::{self, EncodeError};
use crate::fetch::{FetchError, Fetcher};
use crate::offthread::FrameServer;
use crate::options::{CompositionOverrides, MediaOptions, SiteOptions};
use crate::site::{Access, Site, SiteError};

/// A frame's asset records travel with its chunk, so callers name them through `render`.
pub use crate::audio::AssetRecord;
pub use crate::encode::{ChunkFile, StreamParameters};
pub use chunk::ChunkOutcome;
pub use plan::{ChunkRange, MediaPlan, OutputFormat, ResolvedComposition};
pub use progress::{ProgressSender, RenderProgress};

/// Everything that can fail a render. Each variant knows the JS-style `name` the wire error
/// carries; `api` maps it to the wire's shape.
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
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// An option that does not fit this composition (frame range, concurrency, size).
    #[error("{0}")]
    Invalid(String),
    #[error("The render was cancelled")]
    Cancelled,
    /// Our own machinery failed: a task or thread died, a channel closed early.
    #[error("Internal error while {during}: {message}")]
    Internal {
        during: &'static str,
        message: String,
    },
    #[error("{during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl RenderError {
    pub fn name(&self) -> &str {
        match self {
            RenderError::Browser(e) => e.name(),
            RenderError::Encode(e) => e.name(),
            RenderError::Site(e) => e.name(),
            RenderError::Audio(e) => e.name(),
            RenderError::Fetch(e) => e.name(),
            RenderError::Cancelled => "CancelledError",
            RenderError::Invalid(_) | RenderError::Internal { .. } | RenderError::Io { .. } => {
                "Error"
            }
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

    pub(crate) fn internal(during: &'static str, message: impl std::fmt::Display) -> Self {
        RenderError::Internal {
            during,
            message: message.to_string(),
        }
    }
}

fn io(during: &'static str) -> impl FnOnce(std::io::Error) -> RenderError {
    move |source| RenderError::Io { during, source }
}

/// What a finished media render produced.
#[derive(Debug, Clone)]
pub struct MediaOutcome {
    pub composition: ResolvedComposition,
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    /// Per captured frame, in output order: the assets the page registered (for audio).
    pub assets: Vec<AssetRecord>,
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

/// An opened site: the loopback server the page loads from (and calls `/proxy` on), the
/// media this render downloaded, and the browser it runs in. Stages 1 and 2 run in one; an
/// instance that renders chunks of someone else's plan opens its own.
pub struct Session {
    options: SiteOptions,
    site: Site,
    media_files: Arc<Fetcher>,
    lease: BrowserLease,
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

    /// CPUs this instance renders with (tabs are chosen from it).
    pub fn cpus(&self) -> usize {
        self.cpus
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

    /// Opens `site` for stages 1 and 2.
    pub async fn open(&self, site: &SiteOptions, access: Access) -> Result<Session, RenderError> {
        let lease = self.lease(site).await?;
        self.open_with(site, access, lease).await
    }

    async fn open_with(
        &self,
        site: &SiteOptions,
        access: Access,
        lease: BrowserLease,
    ) -> Result<Session, RenderError> {
        let (opened, media_files) = self.open_site(site, access).await?;
        Ok(Session {
            options: site.clone(),
            site: opened,
            media_files,
            lease,
        })
    }

    /// A fetcher for media a render refers to, for an instance that mixes audio without
    /// having opened the site (a coordinator joining chunks rendered elsewhere).
    pub fn media_fetcher(&self) -> Result<Arc<Fetcher>, RenderError> {
        Ok(Arc::new(Fetcher::new(self.guard.clone())?))
    }

    /// Every composition of a site (calculateMetadata applied).
    pub async fn compositions(
        &self,
        site: &SiteOptions,
        access: Access,
    ) -> Result<Vec<CompositionInfo>, RenderError> {
        let session = self.open(site, access).await?;
        let timeout = site.timeout;
        session
            .with_evaluation_tab(async |tab| contract::list_compositions(tab, timeout).await)
            .await
    }

    /// Renders a video (or audio-only) file to `output`: the stages in a row. On error
    /// nothing is left at `output`.
    pub async fn render_media(
        &self,
        site: &SiteOptions,
        media: &MediaOptions,
        access: Access,
        output: &Path,
        progress: &ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<MediaOutcome, RenderError> {
        self.render_media_in_chunks(site, media, access, output, None, progress, cancel)
            .await
    }

    /// [`Renderer::render_media`], with stage 2 run once per `frames_per_chunk` frames, one
    /// chunk after the other, and the chunks joined without re-encoding: what a render spread
    /// over instances does, in one process. Outputs that are never chunked (gif, audio-only)
    /// are rendered in one piece, with a warning.
    #[allow(clippy::too_many_arguments)]
    pub async fn render_media_in_chunks(
        &self,
        site: &SiteOptions,
        media: &MediaOptions,
        access: Access,
        output: &Path,
        frames_per_chunk: Option<u64>,
        progress: &ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<MediaOutcome, RenderError> {
        let started = Instant::now();
        let (session, plan) = self.plan_media(site, media, access, cancel).await?;
        session
            .render_planned(plan, output, frames_per_chunk, progress, cancel, started)
            .await
    }

    /// Stage 1 as the instance that plans runs it: opens `site`, selects the composition
    /// (calculateMetadata runs here, once) and builds the plan. The session stays open for
    /// what this instance does next: the other stages, or, when other instances render the
    /// frames, the audio mix (it holds the media the pages referred to).
    pub async fn plan_media(
        &self,
        site: &SiteOptions,
        media: &MediaOptions,
        access: Access,
        cancel: &CancellationToken,
    ) -> Result<(Session, MediaPlan), RenderError> {
        plan::preflight(media, self.cpus)?;
        let session = self.open(site, access).await?;
        let composition = session
            .resolve(&media.composition_id, &media.overrides, cancel)
            .await?;
        let plan = MediaPlan::new(media, composition, self.cpus)?;
        Ok((session, plan))
    }

    /// Stage 2 as an instance that renders one chunk of someone else's plan runs it: opens
    /// `site`, builds the plan of `media` from the `composition` the planning instance
    /// resolved (calculateMetadata does not run again; the resolved props come with it) and
    /// renders `range` of it into `output` (see [`Session::render_chunk`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn render_chunk(
        &self,
        site: &SiteOptions,
        media: &MediaOptions,
        composition: ResolvedComposition,
        range: ChunkRange,
        access: Access,
        output: &Path,
        progress: &ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<ChunkOutcome, RenderError> {
        let plan = MediaPlan::new(media, composition, self.cpus)?;
        let session = self.open(site, access).await?;
        session
            .render_chunk(&plan, range, output, progress, cancel)
            .await
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
        let session = self.open(site, access).await?;
        let composition = session
            .resolve(&media.composition_id, &media.overrides, &cancel)
            .await?;
        let plan = MediaPlan::new(media, composition, self.cpus)?;
        let job = session.capture_job(&plan, plan.whole());
        let total = job.frames.len();
        let (capture, mut captured, _stop) = session.start_capture(job, &cancel);
        let mut images = vec![Bytes::new(); total];
        while let Some(frame) = captured.recv().await {
            images[frame.position] = frame.image.unwrap_or_default();
        }
        capture
            .await
            .map_err(|e| RenderError::internal("capturing frames", e))??;
        Ok((plan.composition, images))
    }
}

impl Session {
    /// The browser-side settings every tab of this session starts from.
    fn page_setup(&self) -> PageSetup {
        let site = &self.options;
        PageSetup {
            url: self.site.url.clone(),
            timeout: site.timeout,
            serialized_input_props: site.serialized_input_props.clone(),
            env_variables: site.env_variables.clone(),
            log_level: site.log_level,
            proxy_port: self.site.proxy_port,
            initial_frame: 0,
            is_main_tab: true,
            audio_enabled: false,
            video_enabled: false,
            sample_rate: crate::pcm::DEFAULT_SAMPLE_RATE,
            media_cache_size_in_bytes: site.offthread_video_cache_size_in_bytes,
            user_agent: site.chromium.user_agent.clone(),
            dark_mode: site.chromium.dark_mode,
            viewport: None,
        }
    }

    /// The media this session downloaded (audio sources, OffthreadVideo), for the mix.
    pub fn media_files(&self) -> &Arc<Fetcher> {
        &self.media_files
    }

    /// Opens the site in a fresh tab in evaluation mode and runs `f` on it.
    async fn with_evaluation_tab<T>(
        &self,
        f: impl AsyncFnOnce(&browser::Tab) -> Result<T, BrowserError>,
    ) -> Result<T, RenderError> {
        let setup = self.page_setup();
        let tab = self
            .lease
            .browser
            .new_tab("compositions", setup.log_level.forwards_page_console())
            .await?;
        let result = async {
            contract::open(&tab, &setup).await?;
            f(&tab).await
        }
        .await;
        tab.close().await;
        Ok(result?)
    }

    /// Stage 1, on the instance that plans: selects the composition (its calculateMetadata
    /// runs here, once) and applies the caller's overrides.
    pub async fn resolve(
        &self,
        id: &str,
        overrides: &CompositionOverrides,
        cancel: &CancellationToken,
    ) -> Result<ResolvedComposition, RenderError> {
        let timeout = self.options.timeout;
        let info = cancellable(
            cancel,
            self.with_evaluation_tab(async |tab| {
                contract::select_composition(tab, id, timeout).await
            }),
        )
        .await?;
        ResolvedComposition::new(info, overrides)
    }

    /// Stages 2 to 4 of `plan` on this instance, into `output`: in one piece, or with stage
    /// 2 run once per `frames_per_chunk` frames, one chunk after the other, and the chunks
    /// joined without re-encoding. `started` is when the render began (for its timings). On
    /// error nothing is left at `output`.
    pub async fn render_planned(
        &self,
        plan: MediaPlan,
        output: &Path,
        frames_per_chunk: Option<u64>,
        progress: &ProgressSender,
        cancel: &CancellationToken,
        started: Instant,
    ) -> Result<MediaOutcome, RenderError> {
        let mut output_guard = RemoveUnlessKept(output, false);
        plan.check_output_name(output)?;
        let ranges = match frames_per_chunk {
            Some(n) => {
                if let Some(why) = plan.unchunkable() {
                    tracing::warn!("rendering in one piece, not in chunks: {why}");
                }
                plan.chunks(n)
            }
            None => vec![plan.whole()],
        };
        tracing::info!(
            composition = %plan.composition.info.id,
            frames = plan.total(),
            chunks = ranges.len(),
            tabs = plan.tabs,
            width = plan.width,
            height = plan.height,
            fps = plan.output_fps,
            codec = %plan.output.codec,
            "rendering"
        );
        let outcome = |frames: u64, assets: Vec<AssetRecord>, plan: MediaPlan| MediaOutcome {
            frames,
            width: plan.width,
            height: plan.height,
            assets,
            composition: plan.composition,
            elapsed: started.elapsed(),
        };
        if ranges.len() == 1 && plan.audio.is_none() && plan.video.is_some() {
            // Nothing to add afterwards: the encoder writes the output itself.
            let video = chunk::VideoFile::Output(output.to_path_buf());
            let rendered = self
                .frames_to_video(&plan, ranges[0], video, progress, cancel, started, None)
                .await?;
            output_guard.1 = true;
            return Ok(outcome(rendered.frames, rendered.assets, plan));
        }
        // The chunks go to a directory beside the output (same filesystem), removed with it.
        let name = output.file_name().and_then(|n| n.to_str()).unwrap_or("out");
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{name}.chunks-"))
            .tempdir_in(output.parent().unwrap_or(Path::new(".")))
            .map_err(io("creating the directory for the chunks"))?;
        let extension = encode::chunk_container(plan.output.codec)
            .map(|(_, e)| e)
            .unwrap_or("video");
        let mut files = Vec::new();
        let mut assets = Vec::with_capacity(plan.frames.len());
        let mut mix = None;
        for (index, range) in ranges.iter().enumerate() {
            let (video, file) = match plan.video {
                Some(_) => {
                    let path = dir.path().join(format!("chunk-{index}.{extension}"));
                    (chunk::VideoFile::Intermediate(path.clone()), Some(path))
                }
                None => (chunk::VideoFile::None, None),
            };
            // The mix needs every frame's asset records, and nothing else: they are all
            // known once the last chunk's frames are captured, so stage 3 runs while that
            // chunk's encoder is still flushing.
            let last = index + 1 == ranges.len();
            let (captured_tx, captured_rx) = tokio::sync::oneshot::channel();
            let (chunk_progress, mut watched) = progress::channel();
            let rendering = self.frames_to_video(
                &plan,
                *range,
                video,
                &chunk_progress,
                cancel,
                started,
                last.then_some(captured_tx),
            );
            let done = range.first;
            let rendering = async {
                tokio::pin!(rendering);
                loop {
                    tokio::select! {
                        r = &mut rendering => break r,
                        Ok(()) = watched.changed() => {
                            let p = *watched.borrow_and_update();
                            progress.send_replace(RenderProgress {
                                rendered: done + p.rendered,
                                encoded: done + p.encoded,
                                total: plan.total(),
                                overall: None,
                            });
                        }
                    }
                }
            };
            let earlier = &assets;
            let mixing = async {
                // No records: not the last chunk, or stage 2 failed and says why.
                let Ok(records) = captured_rx.await else {
                    return Ok(None);
                };
                let all = [earlier.as_slice(), &records].concat();
                let mixing = Instant::now();
                let mix = join::mix(&plan, &all, self.media_files.clone(), cancel).await?;
                Ok::<_, RenderError>(Some((mix, mixing.elapsed())))
            };
            // Both run to their end, whichever fails: the encoder thread is never left
            // writing into the chunk directory after this returns. Stage 2's error explains
            // a failure best (the mix only starts once its frames were captured).
            let (rendered, mixed) = tokio::join!(rendering, mixing);
            let rendered = rendered?;
            if let Some(mixed) = mixed? {
                mix = Some(mixed);
            }
            if let Some(path) = file {
                files.push(ChunkFile {
                    path,
                    frames: rendered.frames,
                });
            }
            assets.extend(rendered.assets);
        }
        let frames = files.iter().map(|f| f.frames).sum::<u64>();
        let (mix, mix_took) = mix.ok_or_else(|| {
            RenderError::internal("mixing the audio", "the last chunk sent no asset records")
        })?;
        join::mux_mixed(&plan, &files, mix, mix_took, output).await?;
        progress.send_replace(RenderProgress {
            rendered: plan.total(),
            encoded: plan.total(),
            total: plan.total(),
            overall: None,
        });
        let frames = if plan.video.is_some() {
            frames
        } else {
            plan.total()
        };
        output_guard.1 = true;
        Ok(outcome(frames, assets, plan))
    }

    /// Stage 2 alone, as an instance rendering one chunk of a plan runs it: `range` of
    /// `plan` encoded into `output`, a video-only file in the codec's chunk container
    /// ([`encode::chunk_container`]) that [`join::join`] joins with the others. Progress
    /// counts the range's frames. Refuses outputs that are never chunked (gif, audio-only).
    /// On error nothing is left at `output`.
    pub async fn render_chunk(
        &self,
        plan: &MediaPlan,
        range: ChunkRange,
        output: &Path,
        progress: &ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<ChunkOutcome, RenderError> {
        if let Some(why) = plan.unchunkable() {
            return Err(RenderError::Invalid(format!(
                "A {} render is never split into chunks: {why}. Render it in one piece.",
                plan.output.codec
            )));
        }
        let mut output_guard = RemoveUnlessKept(output, false);
        let video = chunk::VideoFile::Intermediate(output.to_path_buf());
        let outcome = self
            .frames_to_video(plan, range, video, progress, cancel, Instant::now(), None)
            .await?;
        output_guard.1 = true;
        Ok(outcome)
    }
}

/// Removes a render's output on every way out but success: nothing partial is left.
struct RemoveUnlessKept<'a>(&'a Path, bool);

impl Drop for RemoveUnlessKept<'_> {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(self.0);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_knows_its_wire_name() {
        let page = RenderError::Browser(BrowserError::PageException {
            name: "TypeError".into(),
            message: "boom".into(),
            stack: "TypeError: boom\n    at f".into(),
        });
        assert_eq!(page.name(), "TypeError");
        assert_eq!(page.stack(), "TypeError: boom\n    at f");
        assert_eq!(RenderError::Cancelled.name(), "CancelledError");
        let internal = RenderError::internal("encoding", "the encoder thread panicked");
        assert_eq!(internal.name(), "Error");
        assert_eq!(
            internal.stack(),
            "Error: Internal error while encoding: the encoder thread panicked"
        );
        let fetch = RenderError::Audio(AudioError::Fetch(FetchError::Download {
            src: "https://x/a.mp3".into(),
            reason: "HTTP status 404".into(),
        }));
        assert_eq!(fetch.name(), "Error");
        assert_eq!(
            fetch.to_string(),
            "Error while downloading https://x/a.mp3: HTTP status 404"
        );
        assert_eq!(RenderError::Encode(EncodeError::Aborted).name(), "Error");
    }
}
