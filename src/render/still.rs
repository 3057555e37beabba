//! Stills. The composition is selected and rendered in one tab (no second page load), and
//! that tab stays in composition mode afterwards: the next still of the same composition,
//! site and props only sets the frame and captures.

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{RenderError, Renderer, ResolvedComposition, Session, cancellable};
use crate::browser::{BrowserError, CaptureFormat, CompositionMode, PageViewport, Tab, contract};
use crate::options::{CompositionOverrides, LogLevel, SiteOptions, StillImageFormat, StillOptions};
use crate::site::Access;

/// What must be equal for a warm tab to serve a still: the page it shows and how it shows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StillKey {
    serve_url: String,
    props: String,
    env: Vec<(String, String)>,
    timeout_ms: u128,
    log_level: LogLevel,
    user_agent: Option<String>,
    dark_mode: bool,
    composition_id: String,
    overrides: CompositionOverrides,
    scale_bits: u64,
}

impl StillKey {
    fn new(site: &SiteOptions, still: &StillOptions) -> StillKey {
        StillKey {
            serve_url: site.serve_url.clone(),
            props: site.serialized_input_props.clone(),
            env: site.env_variables.clone().into_iter().collect(),
            timeout_ms: site.timeout.as_millis(),
            log_level: site.log_level,
            user_agent: site.chromium.user_agent.clone(),
            dark_mode: site.chromium.dark_mode,
            composition_id: still.composition_id.clone(),
            overrides: still.overrides.clone(),
            scale_bits: still.scale.to_bits(),
        }
    }
}

/// A tab left in composition mode by the last still, with what keeps its page working.
pub(super) struct WarmStill {
    key: StillKey,
    tab: Tab,
    composition: ResolvedComposition,
    browser_generation: Option<u64>,
    /// The loopback server the page's `/proxy` calls go to, and its downloaded media.
    _session: Session,
}

impl WarmStill {
    pub(super) async fn close(self) {
        self.tab.close().await;
    }
}

/// `frame`, with negative values counting from the end, checked against the composition.
fn absolute_frame(
    still: &StillOptions,
    composition: &ResolvedComposition,
) -> Result<u64, RenderError> {
    let duration = composition.duration_in_frames as i64;
    let frame = if still.frame < 0 {
        duration + still.frame
    } else {
        still.frame
    };
    if frame < 0 || frame >= duration {
        return Err(RenderError::Invalid(format!(
            "Cannot use frame {}: the composition \"{}\" has {} frames (0 to {}; negative numbers count from the end)",
            still.frame,
            composition.info.id,
            duration,
            duration - 1
        )));
    }
    Ok(frame as u64)
}

/// Shows `frame` in a tab that is in composition mode and takes the picture.
async fn shoot(
    tab: &Tab,
    mode: &CompositionMode,
    still: &StillOptions,
    frame: u64,
    site: &SiteOptions,
) -> Result<Bytes, BrowserError> {
    let format = still.image_format;
    if matches!(format, StillImageFormat::Png | StillImageFormat::Webp) {
        contract::make_background_transparent(tab).await?;
    }
    let background = if format == StillImageFormat::Jpeg {
        "black"
    } else {
        "transparent"
    };
    // A still passes attempt 0, like the renderer's renderStill.
    contract::seek(tab, &mode.id, frame, 0, site.timeout, background).await?;
    let (w, h) = (mode.width, mode.height);
    match format {
        StillImageFormat::Pdf => contract::print_pdf(tab, w, h).await,
        StillImageFormat::Png => contract::capture(tab, CaptureFormat::Png, w, h).await,
        StillImageFormat::Webp => contract::capture(tab, CaptureFormat::Webp, w, h).await,
        StillImageFormat::Jpeg => {
            let quality = still.jpeg_quality;
            contract::capture(tab, CaptureFormat::Jpeg { quality }, w, h).await
        }
    }
}

impl Renderer {
    /// Renders one frame to an image (or a PDF) and returns its bytes.
    pub async fn render_still(
        &self,
        site: &SiteOptions,
        still: &StillOptions,
        access: Access,
        cancel: &CancellationToken,
    ) -> Result<(ResolvedComposition, Bytes), RenderError> {
        let key = StillKey::new(site, still);
        let lease = self.lease(site).await?;
        let reusable = !lease.dedicated;
        // Taken out while in use: a concurrent still opens its own tab.
        let warm = if reusable {
            self.warm_still.lock().await.take()
        } else {
            None
        };
        if let Some(warm) = warm {
            let alive = warm.browser_generation == lease.browser.current_generation().await
                && warm.tab.failure().is_none();
            if warm.key == key && alive {
                let frame = absolute_frame(still, &warm.composition)?;
                let mode = warm
                    .composition
                    .mode(warm.composition.width, warm.composition.height);
                let shot = cancellable(cancel, async {
                    Ok(shoot(&warm.tab, &mode, still, frame, site).await?)
                })
                .await;
                match shot {
                    Ok(bytes) => {
                        let composition = warm.composition.clone();
                        *self.warm_still.lock().await = Some(warm);
                        return Ok((composition, bytes));
                    }
                    // A page that misbehaved once gets a fresh tab, and one more try.
                    Err(e) => tracing::info!("the warm still tab failed ({e}); using a new one"),
                }
            }
            warm.close().await;
        }

        let browser = lease.browser.clone();
        let session = self.open_with(site, access, lease).await?;
        let mut setup = session.page_setup();
        setup.video_enabled = true;
        let tab = browser
            .new_tab("still", site.log_level.forwards_page_console())
            .await?;
        let cold = async {
            contract::open(&tab, &setup).await?;
            let info =
                contract::select_composition(&tab, &still.composition_id, site.timeout).await?;
            let composition = ResolvedComposition::new(info, &still.overrides)?;
            let frame = absolute_frame(still, &composition)?;
            // The same page goes on from evaluation to composition mode: one load, not two.
            contract::set_viewport(
                &tab,
                PageViewport {
                    width: composition.width,
                    height: composition.height,
                    scale: still.scale,
                },
            )
            .await?;
            let mode = composition.mode(composition.width, composition.height);
            contract::enter_composition_mode(&tab, &mode, site.timeout).await?;
            let bytes = shoot(&tab, &mode, still, frame, site).await?;
            Ok::<_, RenderError>((composition, bytes))
        };
        let result = cancellable(cancel, cold).await;
        match result {
            Ok((composition, bytes)) if reusable => {
                let warm = WarmStill {
                    key,
                    tab,
                    composition: composition.clone(),
                    browser_generation: browser.current_generation().await,
                    _session: session,
                };
                if let Some(previous) = self.warm_still.lock().await.replace(warm) {
                    previous.close().await;
                }
                Ok((composition, bytes))
            }
            other => {
                tab.close().await;
                other
            }
        }
    }
}
