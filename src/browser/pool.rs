//! Capturing many frames with a pool of tabs.
//!
//! Each tab is a worker. A free worker takes the lowest frame nobody has taken yet, so frames
//! leave roughly in order and the consumer's reorder buffer stays small. Before it takes a
//! frame a worker needs a permit from the caller's semaphore; the permit travels with the
//! captured frame and is released when the consumer is done with it. That bounds memory
//! whatever the frame count, and cannot deadlock: the lowest frame in flight always holds one.
//!
//! A crash, of the tab's renderer or of the whole browser, fails the tab's pending calls at
//! once; the worker retries its frame on a new tab (in a new browser if the old one died,
//! which [`Browser::new_tab`] starts). Frames already sent stay sent, so the render goes on
//! from where each worker was, with the frame that was in the crash tried again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::contract::{self, CaptureFormat, CompositionMode, PageSetup};
use super::{Browser, BrowserError, Tab};
use crate::timing::Elapsed;

/// A page-side delayRender retry may ask for a fresh tab this many times per frame at most.
const MAX_PAGE_RETRIES: u32 = 10;
/// A crashed tab or browser is replaced, and the frame retried, once: a browser that keeps
/// dying fails the render after its second death instead of going round in circles.
const MAX_CRASH_RETRIES: u32 = 1;

#[derive(Debug, Clone)]
pub struct CaptureJob {
    /// Per-tab fields (`initial_frame`, `is_main_tab`) are filled in for each tab.
    pub setup: PageSetup,
    pub mode: CompositionMode,
    /// Composition frame numbers, in output order.
    pub frames: Vec<u64>,
    pub tabs: usize,
    /// `None` for audio-only renders: frames are stepped for their assets, not captured.
    pub format: Option<CaptureFormat>,
    pub timings: Arc<CaptureTimings>,
}

/// Where the tabs' time went, summed over tabs, for the render's timing log.
#[derive(Debug, Default)]
pub struct CaptureTimings {
    /// Opening tabs up to the composition's first frame.
    pub opening_tabs: Elapsed,
    /// Waiting for a permit or for the consumer to take a frame: the consumer is behind.
    pub waiting_for_consumer: Elapsed,
    /// `remotion_setFrame` until the page is ready and its fonts are loaded.
    pub seeking: Elapsed,
    /// The screenshot and the frame's assets.
    pub capturing: Elapsed,
}

#[derive(Debug)]
pub struct CapturedFrame {
    /// Index into `CaptureJob::frames`.
    pub position: usize,
    pub frame: u64,
    pub image: Option<Bytes>,
    pub assets: Value,
    /// Released when the consumer drops the frame.
    pub permit: OwnedSemaphorePermit,
}

/// Captures every frame of `job` into `out`. Returns when all frames were sent, on the first
/// error, or when `cancel` fires.
pub async fn capture(
    browser: Arc<Browser>,
    job: CaptureJob,
    admission: Arc<Semaphore>,
    out: mpsc::Sender<CapturedFrame>,
    cancel: CancellationToken,
) -> Result<(), BrowserError> {
    let tabs = job.tabs.clamp(1, job.frames.len().max(1));
    let queue = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let stop = cancel.child_token();
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..tabs {
        let worker = Worker {
            index,
            browser: browser.clone(),
            job: job.clone(),
            queue: queue.clone(),
            admission: admission.clone(),
            out: out.clone(),
            stop: stop.clone(),
        };
        workers.spawn(worker.run());
    }
    drop(out);
    let mut first_error = None;
    while let Some(result) = workers.join_next().await {
        let result = result.unwrap_or_else(|e| {
            Err(BrowserError::Protocol {
                during: "capturing frames".into(),
                message: format!("a capture worker panicked: {e}"),
            })
        });
        if let Err(e) = result
            && first_error.is_none()
        {
            first_error = Some(e);
            stop.cancel();
        }
    }
    match first_error {
        Some(e) => Err(e),
        None if cancel.is_cancelled() => Err(BrowserError::Cancelled {
            message: "The render was cancelled".into(),
            stack: String::new(),
        }),
        None => Ok(()),
    }
}

struct Worker {
    index: usize,
    browser: Arc<Browser>,
    job: Arc<CaptureJob>,
    /// The next position nobody has taken. A retried frame stays with its worker, so
    /// positions are handed out strictly in order.
    queue: Arc<AtomicUsize>,
    admission: Arc<Semaphore>,
    out: mpsc::Sender<CapturedFrame>,
    stop: CancellationToken,
}

impl Worker {
    async fn run(self) -> Result<(), BrowserError> {
        let stop = self.stop.clone();
        tokio::select! {
            r = self.work() => r,
            _ = stop.cancelled() => Ok(()),
        }
    }

    async fn work(&self) -> Result<(), BrowserError> {
        let timings = &self.job.timings;
        let first = self.job.frames.get(self.index).copied().unwrap_or(0);
        let opening = Instant::now();
        let mut tab = match self.open_tab(first).await {
            Ok(tab) => Some(tab),
            // The browser died before this worker took a frame: its first frame opens a new
            // tab, in a new browser, under that frame's crash budget.
            Err(e) if e.is_crash() => {
                tracing::warn!(
                    tab = self.index,
                    "{e}; opening a new tab for the first frame"
                );
                None
            }
            Err(e) => return Err(e),
        };
        timings.opening_tabs.add_since(opening);
        loop {
            let waiting = Instant::now();
            let permit = self
                .admission
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| BrowserError::protocol("capturing frames", "admission closed"))?;
            timings.waiting_for_consumer.add_since(waiting);
            let position = self.queue.fetch_add(1, Ordering::SeqCst);
            if position >= self.job.frames.len() {
                break;
            }
            let frame = self.job.frames[position];
            let (image, assets) = self.capture_with_retries(&mut tab, frame).await?;
            let captured = CapturedFrame {
                position,
                frame,
                image,
                assets,
                permit,
            };
            let handing_over = Instant::now();
            let sent = self.out.send(captured).await;
            timings.waiting_for_consumer.add_since(handing_over);
            if sent.is_err() {
                // The consumer is gone: it failed or was cancelled, and will say why.
                break;
            }
        }
        if let Some(t) = tab.take() {
            t.close().await;
        }
        Ok(())
    }

    async fn open_tab(&self, initial_frame: u64) -> Result<Tab, BrowserError> {
        let job = &self.job;
        let tab = self
            .browser
            .new_tab(
                &format!("tab {}", self.index),
                job.setup.log_level.forwards_page_console(),
            )
            .await?;
        let setup = PageSetup {
            initial_frame,
            is_main_tab: self.index == 0,
            ..job.setup.clone()
        };
        let ready = async {
            contract::open(&tab, &setup).await?;
            if matches!(job.format, Some(CaptureFormat::Png | CaptureFormat::Webp)) {
                contract::make_background_transparent(&tab).await?;
            }
            contract::enter_composition_mode(&tab, &job.mode, setup.timeout).await
        };
        match ready.await {
            Ok(()) => Ok(tab),
            Err(e) => {
                tab.close().await;
                Err(e)
            }
        }
    }

    async fn capture_with_retries(
        &self,
        tab: &mut Option<Tab>,
        frame: u64,
    ) -> Result<(Option<Bytes>, Value), BrowserError> {
        let mut attempt = 1;
        let mut page_retries = 0;
        let mut crash_retries = 0;
        loop {
            let result = match tab {
                Some(t) => self.capture_one(t, frame, attempt).await,
                None => match self.open_tab(frame).await {
                    Ok(t) => self.capture_one(tab.insert(t), frame, attempt).await,
                    Err(e) => Err(e),
                },
            };
            let error = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retry = if error.asks_for_retry() && page_retries < MAX_PAGE_RETRIES {
                page_retries += 1;
                true
            } else if error.is_crash() && crash_retries < MAX_CRASH_RETRIES {
                crash_retries += 1;
                true
            } else {
                false
            };
            if !retry {
                return Err(if crash_retries > 0 {
                    error.after_crash_retries(frame)
                } else {
                    error
                });
            }
            tracing::warn!(
                tab = self.index,
                frame,
                attempt,
                "{error}; retrying the frame on a new tab"
            );
            if let Some(old) = tab.take() {
                old.close().await;
            }
            attempt += 1;
        }
    }

    async fn capture_one(
        &self,
        tab: &Tab,
        frame: u64,
        attempt: u32,
    ) -> Result<(Option<Bytes>, Value), BrowserError> {
        let job = &self.job;
        let timeout = job.setup.timeout;
        let background = match job.format {
            Some(CaptureFormat::Jpeg { .. }) | None => "black",
            Some(CaptureFormat::Png | CaptureFormat::Webp) => "transparent",
        };
        let seeking = Instant::now();
        contract::seek(tab, &job.mode.id, frame, attempt, timeout, background).await?;
        job.timings.seeking.add_since(seeking);
        let capturing = Instant::now();
        let image = async {
            match job.format {
                Some(format) => contract::capture(tab, format, job.mode.width, job.mode.height)
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let (image, assets) = tokio::try_join!(image, contract::collect_assets(tab))?;
        job.timings.capturing.add_since(capturing);
        Ok((image, assets))
    }
}
