//! Chromium: one warm browser per process, its tabs, and the page contract of serve URLs.
//!
//! **Architecture Invariant:** this module knows nothing of codecs, containers or storage.
//! It turns a serve URL and a frame number into image bytes and asset records.

pub mod contract;
mod error;
pub mod launch;
pub mod pool;
mod tab;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::network::{BlockPattern, SetBlockedUrLsParams};
use chromiumoxide::cdp::browser_protocol::target::{CreateTargetParams, GetTargetsParams};
use chromiumoxide::error::CdpError;
use chromiumoxide::handler::HandlerConfig;
use futures::StreamExt;
use tokio::sync::{Mutex, watch};

pub use crate::guard::PageGuard;
pub use contract::{CaptureFormat, CompositionInfo, CompositionMode, PageSetup, PageViewport};
pub use error::BrowserError;
pub use launch::{BrowserKind, Executable, LaunchOptions};
pub use tab::Tab;

use launch::ChromiumProcess;
use tab::{COMMAND_DEADLINE, Lifeline, cdp_call, with_deadline};

const LAUNCH_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a lost connection waits for the process's exit before it is the crash's cause.
const EXIT_AFTER_DISCONNECT: Duration = Duration::from_secs(2);

/// One running Chromium and our CDP connection to it.
struct Instance {
    process: ChromiumProcess,
    cdp: Arc<chromiumoxide::Browser>,
    handler: tokio::task::JoinHandle<()>,
    /// Tripped when the process exits or the connection ends; every tab's calls race it.
    lifeline: Lifeline,
    generation: u64,
}

impl Instance {
    async fn start(
        exe: &Executable,
        options: &LaunchOptions,
        generation: u64,
    ) -> Result<Instance, BrowserError> {
        let lifeline = Lifeline::default();
        let exe2 = exe.clone();
        let opts = options.clone();
        let exited = lifeline.clone();
        let process = tokio::task::spawn_blocking(move || {
            ChromiumProcess::spawn(&exe2, &opts, LAUNCH_TIMEOUT, move |cause| {
                exited.trip(cause)
            })
        })
        .await
        .map_err(|e| BrowserError::Launch(e.to_string()))??;
        let config = HandlerConfig {
            ignore_https_errors: options.ignore_certificate_errors,
            viewport: None,
            // Our own deadlines bound every call; chromiumoxide's must never cut a long,
            // legitimate page-side wait short.
            request_timeout: Duration::from_secs(24 * 3600),
            ..HandlerConfig::default()
        };
        let (cdp, mut handler) = with_deadline(
            "connecting to the browser",
            COMMAND_DEADLINE,
            chromiumoxide::Browser::connect_with_config(process.websocket_url.clone(), config),
        )
        .await?;
        let closed = lifeline.clone();
        let handler = tokio::spawn(async move {
            let cause = loop {
                match handler.next().await {
                    // chromiumoxide's handler does not end when the websocket breaks (it
                    // reports the error, then waits forever), and its pending calls would
                    // wait for their deadlines: the connection is gone, say so.
                    Some(Err(CdpError::Ws(e))) => {
                        break format!("the DevTools connection broke: {e}");
                    }
                    // A message chromiumoxide cannot parse is not a reason to drop it.
                    Some(Err(e)) => tracing::debug!("CDP handler: {e}"),
                    Some(Ok(())) => {}
                    None => break "the DevTools connection closed".to_string(),
                }
            };
            // A dying process closes its sockets just before it exits, and the exit says
            // more (a signal: SIGKILL is how the kernel ends a process out of memory), so
            // give the exit a moment to be the cause.
            let _ = tokio::time::timeout(EXIT_AFTER_DISCONNECT, closed.tripped()).await;
            closed.trip(cause);
        });
        tracing::info!(pid = process.pid(), browser = %exe.path.display(), "browser started");
        Ok(Instance {
            process,
            cdp: Arc::new(cdp),
            handler,
            lifeline,
            generation,
        })
    }

    fn is_alive(&self) -> bool {
        !self.lifeline.is_tripped()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.handler.abort();
    }
}

/// Chromium refuses every request matching the guard's patterns, before it leaves the tab.
fn blocking_params(guard: &PageGuard) -> SetBlockedUrLsParams {
    SetBlockedUrLsParams {
        url_patterns: Some(
            guard
                .patterns()
                .iter()
                .map(|p| BlockPattern::new(p.clone(), true))
                .collect(),
        ),
    }
}

/// A browser that is started once and replaced when it dies.
pub struct Browser {
    exe: Executable,
    options: LaunchOptions,
    guard: PageGuard,
    current: Mutex<Option<Arc<Instance>>>,
    generations: AtomicU64,
    /// The PID of the running browser, published as each one starts.
    started: watch::Sender<Option<u32>>,
}

impl Browser {
    /// Starts Chromium now, so the first render does not pay for it.
    pub async fn launch(options: LaunchOptions, guard: PageGuard) -> Result<Browser, BrowserError> {
        let exe = Executable::find()?;
        let browser = Browser {
            exe,
            options,
            guard,
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            started: watch::Sender::new(None),
        };
        browser.instance().await?;
        Ok(browser)
    }

    pub fn options(&self) -> &LaunchOptions {
        &self.options
    }

    pub fn kind(&self) -> BrowserKind {
        self.exe.kind
    }

    /// The live instance, restarting Chromium if it has died.
    async fn instance(&self) -> Result<Arc<Instance>, BrowserError> {
        let mut current = self.current.lock().await;
        if let Some(i) = current.as_ref()
            && i.is_alive()
        {
            return Ok(i.clone());
        }
        if current.is_some() {
            tracing::warn!("the browser died; starting a new one");
        }
        // Drop (and kill) the dead one before starting its replacement.
        *current = None;
        self.started.send_replace(None);
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let instance = Arc::new(Instance::start(&self.exe, &self.options, generation).await?);
        *current = Some(instance.clone());
        self.started.send_replace(Some(instance.process.pid()));
        Ok(instance)
    }

    /// The PID of the running browser process (for tests and diagnostics).
    pub async fn pid(&self) -> Option<u32> {
        self.current.lock().await.as_ref().map(|i| i.process.pid())
    }

    /// The PID of each browser as it starts, `None` between one's death being noticed and
    /// the next start (for tests and diagnostics).
    pub fn started(&self) -> watch::Receiver<Option<u32>> {
        self.started.subscribe()
    }

    /// How many browsers this handle has started.
    pub fn generation(&self) -> u64 {
        self.generations.load(Ordering::SeqCst)
    }

    /// Opens a tab in the default browser context. Tabs of one render must share it: the
    /// site's tabs talk over a same-origin BroadcastChannel.
    pub async fn new_tab(&self, label: &str, forward_console: bool) -> Result<Tab, BrowserError> {
        let instance = self.instance().await?;
        let params = CreateTargetParams {
            url: "about:blank".into(),
            // Full Chromium stops painting background tabs that share a window.
            new_window: (self.exe.kind == BrowserKind::Chromium).then_some(true),
            background: (self.exe.kind == BrowserKind::Chromium).then_some(false),
            ..CreateTargetParams::new("about:blank")
        };
        let during = "opening a tab";
        let page = instance
            .lifeline
            .within(
                during,
                COMMAND_DEADLINE,
                cdp_call(during, instance.cdp.new_page(params)),
            )
            .await?;
        let tab = Tab::attach(
            page,
            instance.cdp.clone(),
            instance.lifeline.clone(),
            label.to_string(),
            forward_console,
        )
        .await?;
        tab.call("blocking internal hosts", blocking_params(&self.guard))
            .await?;
        Ok(tab)
    }

    /// How many page targets are open (for tests and diagnostics).
    pub async fn page_count(&self) -> Result<usize, BrowserError> {
        let instance = self.instance().await?;
        let during = "listing targets";
        let targets = instance
            .lifeline
            .within(
                during,
                COMMAND_DEADLINE,
                cdp_call(during, instance.cdp.execute(GetTargetsParams::default())),
            )
            .await?;
        Ok(targets
            .result
            .target_infos
            .iter()
            .filter(|t| t.r#type == "page")
            .count())
    }

    /// The generation of the running browser; `None` if it has died (and not been replaced
    /// yet), so tabs of a dead browser are never taken for live ones.
    pub async fn current_generation(&self) -> Option<u64> {
        self.current
            .lock()
            .await
            .as_ref()
            .filter(|i| i.is_alive())
            .map(|i| i.generation)
    }

    /// Stops Chromium and every process it started.
    pub async fn shutdown(&self) {
        // Dropping the instance kills the browser's process group.
        self.current.lock().await.take();
        self.started.send_replace(None);
    }
}
