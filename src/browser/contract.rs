//! The serve-URL page contract: what a deployed Remotion site expects its driver to do.
//!
//! Injections before navigation, validation after it, the bundle modes, and per frame
//! `remotion_setFrame` → ready → fonts → capture. Function and global names are the site's
//! API and must not change.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use chromiumoxide::cdp::browser_protocol::dom::Rgba;
use chromiumoxide::cdp::browser_protocol::emulation::{
    MediaFeature, ScreenOrientation, ScreenOrientationType,
    SetDefaultBackgroundColorOverrideParams, SetDeviceMetricsOverrideParams,
    SetEmulatedMediaParams, SetUserAgentOverrideParams,
};
use chromiumoxide::cdp::browser_protocol::page::{
    AddScriptToEvaluateOnNewDocumentParams, CaptureScreenshotFormat, CaptureScreenshotParams,
    EventLoadEventFired, NavigateParams, PrintToPdfParams, Viewport,
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::BrowserError;
use super::tab::{COMMAND_DEADLINE, Tab};
use crate::options::LogLevel;

/// The only bundle format we speak (Remotion 4.0.200 and later).
pub const SITE_VERSION: &str = "11";

/// Everything injected into a tab before it loads the site.
#[derive(Debug, Clone)]
pub struct PageSetup {
    /// The normalised `…/index.html` URL.
    pub url: String,
    pub timeout: Duration,
    pub serialized_input_props: String,
    pub env_variables: BTreeMap<String, String>,
    pub log_level: LogLevel,
    pub proxy_port: u16,
    pub initial_frame: u64,
    pub is_main_tab: bool,
    pub audio_enabled: bool,
    pub video_enabled: bool,
    pub sample_rate: u32,
    pub media_cache_size_in_bytes: Option<u64>,
    pub user_agent: Option<String>,
    pub dark_mode: bool,
    /// CSS size and device scale factor; `None` keeps the browser's default viewport.
    pub viewport: Option<PageViewport>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageViewport {
    pub width: u32,
    pub height: u32,
    pub scale: f64,
}

/// What `remotion_calculateComposition()` / `getStaticCompositions()` return.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompositionInfo {
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub duration_in_frames: u64,
    #[serde(default)]
    pub default_codec: Option<String>,
    #[serde(default)]
    pub default_out_name: Option<String>,
    #[serde(default)]
    pub default_video_image_format: Option<String>,
    #[serde(default)]
    pub default_pixel_format: Option<String>,
    #[serde(default)]
    pub default_pro_res_profile: Option<String>,
    #[serde(default)]
    pub default_sample_rate: Option<u32>,
    /// Carried through verbatim into composition mode.
    #[serde(default = "empty_props")]
    pub serialized_resolved_props_with_custom_schema: String,
    #[serde(default = "empty_props")]
    pub serialized_default_props_with_custom_schema: String,
}

fn empty_props() -> String {
    "{}".into()
}

/// How a frame is captured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CaptureFormat {
    Jpeg { quality: u8 },
    Png,
    Webp,
}

fn js(v: impl serde::Serialize) -> String {
    serde_json::to_string(&v).expect("JSON values serialize")
}

/// The injected scripts, in the order the renderer registers them.
fn injections(setup: &PageSetup) -> Vec<String> {
    let first = format!(
        "window.remotion_puppeteerTimeout = {timeout};
window.remotion_isMainTab = {main};
window.remotion_mediaCacheSizeInBytes = {cache};
window.remotion_initialMemoryAvailable = {memory};
window.remotion_sampleRate = {rate};
if (!window.process) {{ window.process = {{}}; }}
if (!window.process.env) {{ window.process.env = {{}}; }}
window.process.env.NODE_ENV = 'production';",
        timeout = setup.timeout.as_millis(),
        main = setup.is_main_tab,
        cache = js(setup.media_cache_size_in_bytes),
        memory = crate::system::available_memory().min(1 << 52),
        rate = setup.sample_rate,
    );
    let broadcast = "window.remotion_broadcastChannel = new BroadcastChannel('remotion-video-frame-extraction');".to_string();
    let env = format!(
        "window.remotion_envVariables = {};",
        js(js(&setup.env_variables))
    );
    let props = format!(
        "window.remotion_inputProps = {props};
window.remotion_initialFrame = {frame};
window.remotion_attempt = 1;
window.remotion_proxyPort = {port};
window.remotion_audioEnabled = {audio};
window.remotion_videoEnabled = {video};
window.remotion_logLevel = {level};
window.alert = (message) => {{
  const error = new Error('alert(\"' + message + '\") was called. It cannot be called in a headless browser.');
  window.remotion_cancelledError = error.stack;
}};
window.confirm = (message) => {{
  const error = new Error('confirm(\"' + message + '\") was called. It cannot be called in a headless browser.');
  window.remotion_cancelledError = error.stack;
  return false;
}};",
        props = js(&setup.serialized_input_props),
        frame = setup.initial_frame,
        port = setup.proxy_port,
        audio = setup.audio_enabled,
        video = setup.video_enabled,
        level = js(setup.log_level.as_str()),
    );
    vec![first, broadcast, env, props]
}

/// Injects, navigates and validates. After this the site is loaded and is a Remotion bundle.
pub async fn open(tab: &Tab, setup: &PageSetup) -> Result<(), BrowserError> {
    if let Some(v) = setup.viewport {
        set_viewport(tab, v).await?;
    }
    for source in injections(setup) {
        tab.call(
            "injecting the page globals",
            AddScriptToEvaluateOnNewDocumentParams::new(source),
        )
        .await?;
    }
    if setup.dark_mode {
        tab.call(
            "emulating dark mode",
            SetEmulatedMediaParams::builder()
                .media("screen")
                .feature(MediaFeature::new("prefers-color-scheme", "dark"))
                .build(),
        )
        .await?;
    }
    if let Some(ua) = &setup.user_agent {
        let params = SetUserAgentOverrideParams::builder()
            .user_agent(ua.clone())
            .build()
            .map_err(|e| BrowserError::protocol("setting the user agent", e))?;
        tab.call("setting the user agent", params).await?;
    }

    let mut retries_left = 2;
    loop {
        match navigate(tab, setup).await {
            Err(BrowserError::Navigation { reason, url })
                if retries_left > 0
                    && (reason.contains("ECONNRESET")
                        || reason.contains("ERR_CONNECTION_TIMED_OUT")
                        || reason.contains("ERR_CONNECTION_RESET")) =>
            {
                tracing::warn!(%url, %reason, "navigation failed, retrying in 2 s");
            }
            Err(BrowserError::HttpStatus { status, url })
                if retries_left > 0 && (500..=504).contains(&status) =>
            {
                tracing::warn!(%url, status, "serve URL answered with a server error, retrying in 2 s");
            }
            other => return other,
        }
        retries_left -= 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

pub async fn set_viewport(tab: &Tab, v: PageViewport) -> Result<(), BrowserError> {
    let params = SetDeviceMetricsOverrideParams::builder()
        .width(v.width as i64)
        .height(v.height as i64)
        .device_scale_factor(v.scale)
        .mobile(false)
        .screen_width(v.width as i64)
        .screen_height(v.height as i64)
        .screen_orientation(ScreenOrientation::new(
            ScreenOrientationType::PortraitPrimary,
            0,
        ))
        .build()
        .map_err(|e| BrowserError::protocol("setting the viewport", e))?;
    tab.call("setting the viewport", params).await?;
    Ok(())
}

async fn navigate(tab: &Tab, setup: &PageSetup) -> Result<(), BrowserError> {
    tab.clear_failure();
    let url = &setup.url;
    let during = "loading the serve URL";
    let mut loaded = tab.subscribe::<EventLoadEventFired>(during).await?;
    let nav = tab.call(during, NavigateParams::new(url.clone())).await?;
    if let Some(error) = nav.error_text.filter(|e| !e.is_empty()) {
        return Err(BrowserError::Navigation {
            url: url.clone(),
            reason: error,
        });
    }
    let wait = async {
        loaded.next().await;
        Ok::<(), BrowserError>(())
    };
    match tokio::time::timeout(setup.timeout, tab.guarded(during, wait)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(BrowserError::Deadline {
                during: format!("setting up the headless browser: {url} did not finish loading"),
                after: setup.timeout,
            });
        }
    }

    let probe = tab
        .evaluate(
            "checking the loaded site",
            COMMAND_DEADLINE,
            "(() => {
                const nav = performance.getEntriesByType('navigation')[0];
                return {
                    status: nav && typeof nav.responseStatus === 'number' ? nav.responseStatus : 0,
                    hasCompositions: typeof window.getStaticCompositions !== 'undefined',
                    siteVersion: window.siteVersion === undefined ? null : String(window.siteVersion),
                    remotionVersion: window.remotion_version === undefined ? null : String(window.remotion_version),
                    body: document.body ? document.body.innerHTML.slice(0, 500) : '',
                };
            })()",
        )
        .await?;
    let status = probe["status"].as_u64().unwrap_or(0) as u16;
    if status >= 400 {
        return Err(BrowserError::HttpStatus {
            url: url.clone(),
            status,
        });
    }
    if probe["hasCompositions"] != Value::Bool(true) {
        return Err(BrowserError::NotARemotionSite {
            url: url.clone(),
            body_start: probe["body"].as_str().unwrap_or("").to_string(),
        });
    }
    let version = probe["siteVersion"].as_str().unwrap_or("(none)");
    if version != SITE_VERSION {
        return Err(BrowserError::IncompatibleSite {
            url: url.clone(),
            found: version.to_string(),
        });
    }
    match probe["remotionVersion"].as_str() {
        Some(v) => tracing::debug!(remotion_version = v, "site loaded"),
        None => tracing::warn!("the site does not say which Remotion version built it"),
    }
    Ok(())
}

/// Polls the page until it is ready or cancelled, the way the renderer's waitForFunction does:
/// on every animation frame, with a timer as a fallback for pages that stop painting.
const WAIT_FOR_READY: &str = "new Promise((resolve) => {
  let done = false;
  const check = () => {
    if (done) return true;
    if (window.remotion_renderReady === true) { done = true; resolve('ready'); }
    else if (window.remotion_cancelledError !== undefined) { done = true; resolve('cancelled'); }
    return done;
  };
  if (check()) return;
  const onFrame = () => { if (!check()) requestAnimationFrame(onFrame); };
  requestAnimationFrame(onFrame);
  const timer = setInterval(() => { if (check()) clearInterval(timer); }, 50);
})";

/// Waits until `remotion_renderReady`, failing with the page's cancel reason or, after T + 3 s,
/// with the labels of the delayRender() handles still open.
pub async fn wait_for_ready(
    tab: &Tab,
    timeout: Duration,
    frame: Option<u64>,
) -> Result<(), BrowserError> {
    let deadline = timeout + Duration::from_secs(3);
    let outcome = tab
        .evaluate("waiting for the page to be ready", deadline, WAIT_FOR_READY)
        .await;
    match outcome {
        Ok(v) if v == "ready" => Ok(()),
        Ok(v) if v == "cancelled" => Err(cancelled_error(tab).await),
        Ok(other) => Err(BrowserError::protocol(
            "waiting for the page to be ready",
            format!("unexpected answer {other}"),
        )),
        Err(BrowserError::Deadline { .. }) => {
            let labels = tab
                .evaluate_diagnostics(
                    "reading the open delayRender() handles",
                    Duration::from_secs(5),
                    "Object.values(window.remotion_delayRenderTimeouts || {}).map((t) => t && t.label ? String(t.label) : '(no label)')",
                )
                .await
                .ok()
                .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
                .unwrap_or_default();
            Err(BrowserError::ReadyTimeout {
                timeout,
                frame,
                labels,
            })
        }
        Err(e) => Err(e),
    }
}

async fn cancelled_error(tab: &Tab) -> BrowserError {
    let stack = tab
        .evaluate_diagnostics(
            "reading why the render was cancelled",
            Duration::from_secs(5),
            "window.remotion_cancelledError === undefined ? null : String(window.remotion_cancelledError)",
        )
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_string));
    match stack {
        Some(stack) => {
            let first = stack.lines().next().unwrap_or("").trim();
            let message = first.strip_prefix("Error: ").unwrap_or(first);
            let message = match message.find("The delayRender was called:") {
                Some(cut) => message[..cut].trim(),
                None => message,
            };
            BrowserError::Cancelled {
                message: message.to_string(),
                stack,
            }
        }
        None => BrowserError::Cancelled {
            message: "Render was cancelled using cancelRender()".into(),
            stack: String::new(),
        },
    }
}

/// Puts the site into evaluation mode, where compositions register but nothing renders.
pub async fn enter_evaluation_mode(tab: &Tab, timeout: Duration) -> Result<(), BrowserError> {
    tab.evaluate(
        "switching the site to evaluation mode",
        timeout,
        "window.remotion_setBundleMode({type: 'evaluation'}); true",
    )
    .await?;
    wait_for_ready(tab, timeout, None).await
}

/// `remotion_calculateComposition(id)`: one composition, with calculateMetadata applied.
pub async fn select_composition(
    tab: &Tab,
    id: &str,
    timeout: Duration,
) -> Result<CompositionInfo, BrowserError> {
    enter_evaluation_mode(tab, timeout).await?;
    let names = tab
        .evaluate(
            "listing composition ids",
            COMMAND_DEADLINE,
            "typeof window.remotion_getCompositionNames === 'function' ? window.remotion_getCompositionNames() : null",
        )
        .await?;
    if let Ok(names) = serde_json::from_value::<Vec<String>>(names)
        && !names.iter().any(|n| n == id)
    {
        return Err(BrowserError::UnknownComposition {
            id: id.to_string(),
            available: names,
        });
    }
    let value = tab
        .evaluate(
            "calculating the composition's metadata",
            timeout + Duration::from_secs(3),
            format!("window.remotion_calculateComposition({})", js(id)),
        )
        .await?;
    parse_composition(value)
}

/// `getStaticCompositions()`: every composition, with calculateMetadata applied.
pub async fn list_compositions(
    tab: &Tab,
    timeout: Duration,
) -> Result<Vec<CompositionInfo>, BrowserError> {
    enter_evaluation_mode(tab, timeout).await?;
    let value = tab
        .evaluate(
            "listing the compositions",
            timeout + Duration::from_secs(3),
            "window.getStaticCompositions()",
        )
        .await?;
    match value {
        Value::Array(items) => items.into_iter().map(parse_composition).collect(),
        other => Err(BrowserError::InvalidComposition(format!(
            "getStaticCompositions() returned {other} instead of a list"
        ))),
    }
}

fn parse_composition(value: Value) -> Result<CompositionInfo, BrowserError> {
    let info: CompositionInfo = serde_json::from_value(value.clone()).map_err(|e| {
        BrowserError::InvalidComposition(format!(
            "The site returned a composition we cannot read ({e}): {value}"
        ))
    })?;
    if info.width == 0 || info.height == 0 {
        return Err(BrowserError::InvalidComposition(format!(
            "Composition \"{}\" has a size of {}x{}",
            info.id, info.width, info.height
        )));
    }
    if !info.fps.is_finite() || info.fps <= 0.0 {
        return Err(BrowserError::InvalidComposition(format!(
            "Composition \"{}\" has an fps of {}, which is not a positive number",
            info.id, info.fps
        )));
    }
    if info.duration_in_frames == 0 {
        return Err(BrowserError::InvalidComposition(format!(
            "Composition \"{}\" has a durationInFrames of 0",
            info.id
        )));
    }
    Ok(info)
}

/// The composition as the page is told to mount it (exact keys of the bundle-mode state).
#[derive(Debug, Clone)]
pub struct CompositionMode {
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub duration_in_frames: u64,
    pub serialized_resolved_props: String,
    pub default_codec: Option<String>,
    pub default_out_name: Option<String>,
    pub default_video_image_format: Option<String>,
    pub default_pixel_format: Option<String>,
    pub default_pro_res_profile: Option<String>,
    pub default_sample_rate: Option<u32>,
}

/// Mounts the composition in `#remotion-canvas` and waits until it is ready.
pub async fn enter_composition_mode(
    tab: &Tab,
    mode: &CompositionMode,
    timeout: Duration,
) -> Result<(), BrowserError> {
    let state = json!({
        "type": "composition",
        "compositionName": mode.id,
        "serializedResolvedPropsWithSchema": mode.serialized_resolved_props,
        "compositionDurationInFrames": mode.duration_in_frames,
        "compositionFps": mode.fps,
        "compositionHeight": mode.height,
        "compositionWidth": mode.width,
        "compositionDefaultCodec": mode.default_codec,
        "compositionDefaultOutName": mode.default_out_name,
        "compositionDefaultVideoImageFormat": mode.default_video_image_format,
        "compositionDefaultPixelFormat": mode.default_pixel_format,
        "compositionDefaultProResProfile": mode.default_pro_res_profile,
        "compositionDefaultSampleRate": mode.default_sample_rate,
    });
    tab.evaluate(
        "mounting the composition",
        timeout,
        format!("window.remotion_setBundleMode({state}); true"),
    )
    .await?;
    wait_for_ready(tab, timeout, None).await
}

/// Shows `frame` and waits until the page is ready and its fonts are loaded.
pub async fn seek(
    tab: &Tab,
    composition_id: &str,
    frame: u64,
    attempt: u32,
    timeout: Duration,
    background: &str,
) -> Result<(), BrowserError> {
    wait_for_ready(tab, timeout, None).await?;
    match tab
        .evaluate(
            "setting the frame",
            timeout,
            format!(
                "window.remotion_setFrame({frame}, {}, {attempt}); true",
                js(composition_id)
            ),
        )
        .await
    {
        Err(BrowserError::Deadline { after, .. }) => {
            return Err(BrowserError::Deadline {
                during: format!("evaluating page function remotion_setFrame({frame})"),
                after,
            });
        }
        other => other?,
    };
    wait_for_ready(tab, timeout, Some(frame)).await?;
    tab.evaluate(
        "waiting for fonts",
        timeout,
        format!(
            "document.fonts.ready.then(() => {{ document.body.style.background = {}; return true; }})",
            js(background)
        ),
    )
    .await?;
    Ok(())
}

/// Makes the default page background transparent so PNG/WebP captures keep alpha.
pub async fn make_background_transparent(tab: &Tab) -> Result<(), BrowserError> {
    tab.call(
        "making the background transparent",
        SetDefaultBackgroundColorOverrideParams::builder()
            .color(Rgba {
                r: 0,
                g: 0,
                b: 0,
                a: Some(0.0),
            })
            .build(),
    )
    .await?;
    Ok(())
}

/// Screenshots the `width`×`height` CSS-pixel canvas at the tab's device scale factor.
pub async fn capture(
    tab: &Tab,
    format: CaptureFormat,
    width: u32,
    height: u32,
) -> Result<Bytes, BrowserError> {
    let (cdp_format, quality) = match format {
        CaptureFormat::Jpeg { quality } => (CaptureScreenshotFormat::Jpeg, Some(quality as i64)),
        CaptureFormat::Png => (CaptureScreenshotFormat::Png, None),
        CaptureFormat::Webp => (CaptureScreenshotFormat::Webp, None),
    };
    let mut params = CaptureScreenshotParams::builder()
        .format(cdp_format)
        .clip(Viewport {
            x: 0.0,
            y: 0.0,
            width: width as f64,
            height: height as f64,
            scale: 1.0,
        })
        // Remotion asks for `captureBeyondViewport: true`, but the viewport already is the
        // composition, and that flag makes Chromium resize the view for every shot: a relayout
        // and a full re-raster. Off, a 1080p frame takes ~190 ms of CPU instead of ~275 ms, with
        // byte-identical JPEGs (BENCHMARKS.md, "captureBeyondViewport").
        .capture_beyond_viewport(false)
        .optimize_for_speed(true)
        .from_surface(true)
        .build();
    params.quality = quality;
    let shot = match tab.call("taking a screenshot", params).await {
        Err(BrowserError::Protocol { message, .. })
            if message.contains("Unable to capture screenshot") =>
        {
            return Err(BrowserError::Protocol {
                during: "taking a screenshot".into(),
                message: format!(
                    "{message}. Chromium could not take a screenshot; this usually means it ran out of memory or disk space. Try a lower concurrency or scale."
                ),
            });
        }
        other => other?,
    };
    base64::engine::general_purpose::STANDARD
        .decode(AsRef::<str>::as_ref(&shot.data))
        .map(Bytes::from)
        .map_err(|e| BrowserError::protocol("decoding a screenshot", e))
}

/// Prints the page to a PDF whose paper is the composition's size.
pub async fn print_pdf(tab: &Tab, width: u32, height: u32) -> Result<Bytes, BrowserError> {
    let params = PrintToPdfParams::builder()
        .paper_width(width as f64 / 96.0)
        .paper_height(height as f64 / 96.0)
        .margin_top(0.0)
        .margin_bottom(0.0)
        .margin_left(0.0)
        .margin_right(0.0)
        .scale(1.0)
        .print_background(true)
        .build();
    let pdf = tab.call("printing a PDF", params).await?;
    base64::engine::general_purpose::STANDARD
        .decode(AsRef::<str>::as_ref(&pdf.data))
        .map(Bytes::from)
        .map_err(|e| BrowserError::protocol("decoding a PDF", e))
}

/// `remotion_collectAssets()`: the audio/video assets registered for the current frame.
pub async fn collect_assets(tab: &Tab) -> Result<Value, BrowserError> {
    tab.evaluate(
        "collecting the frame's assets",
        COMMAND_DEADLINE,
        "typeof window.remotion_collectAssets === 'function' ? window.remotion_collectAssets() : []",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> PageSetup {
        PageSetup {
            url: "http://localhost:1/index.html".into(),
            timeout: Duration::from_millis(12_000),
            serialized_input_props: "{\"a\":\"</script>\\u2028\"}".into(),
            env_variables: BTreeMap::from([("K".to_string(), "v'\"".to_string())]),
            log_level: LogLevel::Verbose,
            proxy_port: 3000,
            initial_frame: 7,
            is_main_tab: false,
            audio_enabled: true,
            video_enabled: false,
            sample_rate: 48000,
            media_cache_size_in_bytes: None,
            user_agent: None,
            dark_mode: false,
            viewport: None,
        }
    }

    #[test]
    fn injections_are_ordered_and_quote_their_strings() {
        let scripts = injections(&setup());
        assert_eq!(scripts.len(), 4);
        assert!(scripts[0].contains("window.remotion_puppeteerTimeout = 12000;"));
        assert!(scripts[0].contains("window.remotion_isMainTab = false;"));
        assert!(scripts[0].contains("NODE_ENV = 'production'"));
        assert!(scripts[1].contains("remotion-video-frame-extraction"));
        // The env object travels as a JSON *string*, as the site expects.
        assert!(
            scripts[2].contains(r#"window.remotion_envVariables = "{\"K\":\"v'\\\"\"}";"#),
            "{}",
            scripts[2]
        );
        assert!(scripts[3].contains("window.remotion_initialFrame = 7;"));
        assert!(scripts[3].contains("window.remotion_attempt = 1;"));
        assert!(scripts[3].contains("window.remotion_videoEnabled = false;"));
        assert!(scripts[3].contains("window.remotion_logLevel = \"verbose\";"));
        assert!(scripts[3].contains("window.alert = "));
    }

    #[test]
    fn composition_info_reads_the_site_shape() {
        let v = json!({
            "id": "Frames", "width": 640, "height": 360, "fps": 30, "durationInFrames": 90,
            "defaultCodec": null, "defaultOutName": null, "defaultVideoImageFormat": null,
            "defaultPixelFormat": null, "defaultProResProfile": null, "defaultSampleRate": null,
            "serializedResolvedPropsWithCustomSchema": "{\"a\":1}",
            "serializedDefaultPropsWithCustomSchema": "{}"
        });
        let info = parse_composition(v).unwrap();
        assert_eq!(info.width, 640);
        assert_eq!(
            info.serialized_resolved_props_with_custom_schema,
            "{\"a\":1}"
        );
        assert!(
            parse_composition(
                json!({"id": "x", "width": 0, "height": 1, "fps": 30, "durationInFrames": 1})
            )
            .is_err()
        );
        assert!(
            parse_composition(
                json!({"id": "x", "width": 2, "height": 1, "fps": 0, "durationInFrames": 1})
            )
            .is_err()
        );
    }
}
