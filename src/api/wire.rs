//! The JSON the Remotion Cloud Run client sends and reads, and its conversion to our options.
//!
//! Tolerant like the original's zod schema: unknown keys are ignored, and a key an older or
//! newer client leaves out gets the client's default. Every value is checked once here, and
//! a bad one is refused with a message naming the field.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::options::{
    AudioCodec, ChromiumOptions, Codec, ColorSpace, CompositionOverrides, Concurrency,
    DownloadBehavior, FrameRange, GlRenderer, LogLevel, MediaOptions, PixelFormat, Privacy,
    ProResProfile, SiteOptions, StillImageFormat, StillOptions, UploadOptions, VideoImageFormat,
    WebhookOptions, X264Preset, parse_bitrate,
};

/// A payload field that failed validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Invalid payload: \"{field}\": {message}")]
pub struct PayloadError {
    pub field: String,
    pub message: String,
}

impl PayloadError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        PayloadError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChromiumOptionsPayload {
    pub ignore_certificate_errors: Option<bool>,
    pub disable_web_security: Option<bool>,
    pub gl: Option<String>,
    pub headless: Option<bool>,
    pub user_agent: Option<String>,
    pub dark_mode: Option<bool>,
    /// Sent by the client, meaningless for us: every tab shares one multi-process browser.
    #[allow(dead_code)]
    pub enable_multi_process_on_linux: Option<bool>,
}

/// `{type: "play-in-browser"}` or `{type: "download", fileName}`. A struct, not a tagged
/// enum: serde's tagged enums buffer their content and a bad `fileName` would lose its path.
#[derive(Debug, Deserialize)]
pub struct DownloadBehaviorPayload {
    #[serde(rename = "type")]
    pub kind: DownloadKind,
    /// Only read for `download`; the original's schema strips it from `play-in-browser`.
    #[serde(rename = "fileName", default)]
    pub file_name: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownloadKind {
    PlayInBrowser,
    Download,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub data: Value,
    pub webhook_progress_interval: Option<f64>,
}

/// `renderMediaOnCloudrun()`'s body. Everything optional that a client of some 4.x version may
/// leave out; the defaults are the client's.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaPayload {
    pub serve_url: String,
    pub composition: String,
    pub force_width: Option<u32>,
    pub force_height: Option<u32>,
    pub force_fps: Option<f64>,
    pub force_duration_in_frames: Option<u64>,
    pub codec: Option<String>,
    pub serialized_input_props_with_custom_schema: Option<String>,
    pub jpeg_quality: Option<f64>,
    pub audio_codec: Option<String>,
    pub audio_bitrate: Option<String>,
    pub video_bitrate: Option<String>,
    pub encoding_max_rate: Option<String>,
    pub encoding_buffer_size: Option<String>,
    pub crf: Option<f64>,
    pub pixel_format: Option<String>,
    pub image_format: Option<String>,
    pub scale: Option<f64>,
    pub pro_res_profile: Option<String>,
    pub x264_preset: Option<String>,
    pub gop_size: Option<f64>,
    pub every_nth_frame: Option<f64>,
    pub number_of_gif_loops: Option<f64>,
    pub frame_range: Option<Value>,
    pub env_variables: Option<BTreeMap<String, String>>,
    pub chromium_options: Option<ChromiumOptionsPayload>,
    pub muted: Option<bool>,
    pub output_bucket: Option<String>,
    pub out_name: Option<String>,
    pub privacy: Option<String>,
    pub log_level: Option<String>,
    pub delay_render_timeout_in_milliseconds: Option<f64>,
    pub concurrency: Option<Value>,
    pub enforce_audio_track: Option<bool>,
    pub prefer_lossless: Option<bool>,
    pub offthread_video_cache_size_in_bytes: Option<f64>,
    pub offthread_video_threads: Option<f64>,
    pub color_space: Option<String>,
    pub client_version: Option<String>,
    pub download_behavior: Option<DownloadBehaviorPayload>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub render_id_override: Option<String>,
    pub render_status_webhook: Option<WebhookPayload>,
    /// Our extension (the client never sends it): frames per chunk when the render is spread
    /// over instances.
    pub frames_per_chunk: Option<f64>,
}

/// `renderStillOnCloudrun()`'s body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StillPayload {
    pub serve_url: String,
    pub composition: String,
    pub force_width: Option<u32>,
    pub force_height: Option<u32>,
    pub serialized_input_props_with_custom_schema: Option<String>,
    pub jpeg_quality: Option<f64>,
    pub image_format: Option<String>,
    pub scale: Option<f64>,
    pub privacy: Option<String>,
    pub env_variables: Option<BTreeMap<String, String>>,
    pub chromium_options: Option<ChromiumOptionsPayload>,
    pub output_bucket: Option<String>,
    pub out_name: Option<String>,
    pub frame: Option<f64>,
    pub log_level: Option<String>,
    pub delay_render_timeout_in_milliseconds: Option<f64>,
    pub offthread_video_cache_size_in_bytes: Option<f64>,
    pub offthread_video_threads: Option<f64>,
    pub client_version: Option<String>,
    pub download_behavior: Option<DownloadBehaviorPayload>,
    pub render_id_override: Option<String>,
}

/// A validated media request: what to open, how to render, where to put it.
#[derive(Debug, Clone)]
pub struct MediaRequest {
    pub site: SiteOptions,
    pub media: MediaOptions,
    pub upload: UploadOptions,
    pub webhook: Option<WebhookOptions>,
    pub client_version: Option<String>,
    /// `framesPerChunk`, our extension: how a render spread over instances is cut (else the
    /// fan-out's own rule decides). Ignored when fan-out is off.
    pub frames_per_chunk: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct StillRequest {
    pub site: SiteOptions,
    pub still: StillOptions,
    pub upload: UploadOptions,
    pub client_version: Option<String>,
}

#[derive(Debug, Clone)]
pub enum RenderRequest {
    Media(Box<MediaRequest>),
    Still(Box<StillRequest>),
}

/// Parses a request body. The error names the field that is wrong.
pub fn parse_request(body: &[u8]) -> Result<RenderRequest, PayloadError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| PayloadError::new("(body)", format!("is not JSON: {e}")))?;
    // Dispatch on `type` by hand: serde's internally tagged enums buffer the content and
    // lose the path of a bad field.
    match value.get("type").and_then(Value::as_str) {
        Some("media") => Ok(RenderRequest::Media(Box::new(
            from_value::<MediaPayload>(value)?.into_request()?,
        ))),
        Some("still") => Ok(RenderRequest::Still(Box::new(
            from_value::<StillPayload>(value)?.into_request()?,
        ))),
        other => Err(PayloadError::new(
            "type",
            format!(
                "expected \"media\" or \"still\", got {}",
                other
                    .map(|t| format!("\"{t}\""))
                    .unwrap_or_else(|| "nothing".into())
            ),
        )),
    }
}

fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, PayloadError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde reports a missing key at its parent; the caller wants the key.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'));
        let field = match (path.as_str(), missing) {
            (".", Some(key)) => key.to_string(),
            (parent, Some(key)) => format!("{parent}.{key}"),
            (".", None) => "(body)".to_string(),
            (path, None) => path.to_string(),
        };
        PayloadError::new(&field, message)
    })
}

fn parse_named<T: std::str::FromStr<Err = String>>(
    field: &str,
    value: Option<String>,
) -> Result<Option<T>, PayloadError> {
    value
        .map(|v| v.parse::<T>().map_err(|e| PayloadError::new(field, e)))
        .transpose()
}

fn integer(field: &str, v: f64, min: f64, max: f64) -> Result<u64, PayloadError> {
    if !v.is_finite() || v.fract() != 0.0 || v < min || v > max {
        return Err(PayloadError::new(
            field,
            format!("must be an integer between {min} and {max}, got {v}"),
        ));
    }
    Ok(v as u64)
}

/// Any finite number from 0 to 100, fractions included, as Remotion's validator allows;
/// rounded here because the screenshot's quality is an integer.
fn jpeg_quality(v: Option<f64>) -> Result<u8, PayloadError> {
    match v {
        None => Ok(MediaOptions::DEFAULT_JPEG_QUALITY),
        Some(q) if q.is_finite() && (0.0..=100.0).contains(&q) => Ok(q.round() as u8),
        Some(q) => Err(PayloadError::new(
            "jpegQuality",
            format!("must be a number between 0 and 100, got {q}"),
        )),
    }
}

fn scale(v: Option<f64>) -> Result<f64, PayloadError> {
    let s = v.unwrap_or(1.0);
    if !s.is_finite() || s <= 0.0 || s > 16.0 {
        return Err(PayloadError::new(
            "scale",
            format!("must be a number greater than 0 and at most 16, got {s}"),
        ));
    }
    Ok(s)
}

fn bitrate(field: &str, v: Option<String>) -> Result<Option<String>, PayloadError> {
    if let Some(b) = &v {
        parse_bitrate(b).map_err(|e| PayloadError::new(field, e))?;
    }
    Ok(v)
}

fn timeout(v: Option<f64>) -> Result<Duration, PayloadError> {
    match v {
        None => Ok(SiteOptions::DEFAULT_TIMEOUT),
        Some(ms) if ms.is_finite() && ms > 0.0 => Ok(Duration::from_millis(ms as u64)),
        Some(ms) => Err(PayloadError::new(
            "delayRenderTimeoutInMilliseconds",
            format!("must be a positive number of milliseconds, got {ms}"),
        )),
    }
}

fn optional_count(field: &str, v: Option<f64>) -> Result<Option<u64>, PayloadError> {
    v.map(|n| integer(field, n, 0.0, 9.007_199_254_740_991e15))
        .transpose()
}

/// A count we keep as `u32`: a larger one is refused, not wrapped (2^32 loops would be 0).
fn optional_u32(field: &str, v: Option<f64>) -> Result<Option<u32>, PayloadError> {
    v.map(|n| integer(field, n, 0.0, u32::MAX as f64).map(|n| n as u32))
        .transpose()
}

fn chromium_options(p: Option<ChromiumOptionsPayload>) -> Result<ChromiumOptions, PayloadError> {
    let p = p.unwrap_or_default();
    Ok(ChromiumOptions {
        gl: parse_named::<GlRenderer>("chromiumOptions.gl", p.gl)?,
        ignore_certificate_errors: p.ignore_certificate_errors.unwrap_or(false),
        disable_web_security: p.disable_web_security.unwrap_or(false),
        headless: p.headless.unwrap_or(true),
        user_agent: p.user_agent,
        dark_mode: p.dark_mode.unwrap_or(false),
    })
}

/// The fields both payload kinds share about opening the site.
struct SiteFields {
    serve_url: String,
    props: Option<String>,
    env: Option<BTreeMap<String, String>>,
    chromium: Option<ChromiumOptionsPayload>,
    timeout_ms: Option<f64>,
    log_level: Option<String>,
    cache_size: Option<f64>,
    threads: Option<f64>,
}

fn site_options(f: SiteFields) -> Result<SiteOptions, PayloadError> {
    let SiteFields {
        serve_url,
        props,
        env,
        chromium,
        timeout_ms,
        log_level,
        cache_size,
        threads,
    } = f;
    if serve_url.trim().is_empty() {
        return Err(PayloadError::new("serveUrl", "must not be empty"));
    }
    let props = props
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "{}".into());
    serde_json::from_str::<Value>(&props).map_err(|e| {
        PayloadError::new(
            "serializedInputPropsWithCustomSchema",
            format!("is not valid JSON: {e}"),
        )
    })?;
    Ok(SiteOptions {
        serve_url,
        serialized_input_props: props,
        env_variables: env.unwrap_or_default(),
        chromium: chromium_options(chromium)?,
        timeout: timeout(timeout_ms)?,
        log_level: parse_named::<LogLevel>("logLevel", log_level)?.unwrap_or(LogLevel::Info),
        offthread_video_cache_size_in_bytes: optional_count(
            "offthreadVideoCacheSizeInBytes",
            cache_size,
        )?,
        offthread_video_threads: optional_u32("offthreadVideoThreads", threads)?,
    })
}

fn upload_options(
    bucket: Option<String>,
    out_name: Option<String>,
    privacy: Option<String>,
    download: Option<DownloadBehaviorPayload>,
    render_id_override: Option<String>,
) -> Result<UploadOptions, PayloadError> {
    let bucket = bucket
        .filter(|b| !b.is_empty())
        .ok_or_else(|| PayloadError::new("outputBucket", "is required"))?;
    if let Some(name) = &out_name {
        validate_out_name(name).map_err(|e| PayloadError::new("outName", e))?;
    }
    Ok(UploadOptions {
        bucket,
        out_name,
        privacy: parse_named::<Privacy>("privacy", privacy)?.unwrap_or(Privacy::Public),
        download_behavior: match download {
            None
            | Some(DownloadBehaviorPayload {
                kind: DownloadKind::PlayInBrowser,
                ..
            }) => DownloadBehavior::PlayInBrowser,
            Some(DownloadBehaviorPayload {
                kind: DownloadKind::Download,
                file_name,
            }) => DownloadBehavior::Download {
                file_name: match file_name {
                    Value::Null => None,
                    Value::String(name) => Some(name),
                    other => {
                        return Err(PayloadError::new(
                            "downloadBehavior.fileName",
                            format!("expected a string or null, got {other}"),
                        ));
                    }
                },
            },
        },
        render_id_override,
    })
}

/// An object name must stay inside `renders/{renderId}/`.
pub fn validate_out_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.starts_with('/') {
        return Err(format!("\"{name}\" must not start with \"/\""));
    }
    if name.split('/').any(|part| part == ".." || part == ".") {
        return Err(format!(
            "\"{name}\" must not contain \".\" or \"..\" path segments"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// `frameRange`: a number, `[a, b]`, `[a, null]`, or a list of such pairs.
fn frame_range(v: Option<Value>) -> Result<FrameRange, PayloadError> {
    const FIELD: &str = "frameRange";
    let frame = |v: &Value| -> Result<u64, PayloadError> {
        match v.as_f64() {
            Some(n) => integer(FIELD, n, 0.0, 9.007_199_254_740_991e15),
            None => Err(PayloadError::new(
                FIELD,
                format!("expected a frame number, got {v}"),
            )),
        }
    };
    let pair = |v: &Value| -> Result<(u64, Option<u64>), PayloadError> {
        match v.as_array().map(Vec::as_slice) {
            Some([a, b]) => Ok((frame(a)?, if b.is_null() { None } else { Some(frame(b)?) })),
            _ => Err(PayloadError::new(
                FIELD,
                format!("expected [start, end] or [start, null], got {v}"),
            )),
        }
    };
    let range = match v {
        None | Some(Value::Null) => return Ok(FrameRange::All),
        Some(n @ Value::Number(_)) => return Ok(FrameRange::Single(frame(&n)?)),
        Some(Value::Array(items)) if items.iter().all(Value::is_array) && !items.is_empty() => {
            FrameRange::Ranges(items.iter().map(pair).collect::<Result<_, _>>()?)
        }
        Some(v @ Value::Array(_)) => FrameRange::Ranges(vec![pair(&v)?]),
        Some(other) => {
            return Err(PayloadError::new(
                FIELD,
                format!("expected a number, a [start, end] pair or null, got {other}"),
            ));
        }
    };
    range
        .validate_shape()
        .map_err(|e| PayloadError::new(FIELD, e))?;
    Ok(range)
}

fn concurrency(v: Option<Value>) -> Result<Concurrency, PayloadError> {
    match v {
        None | Some(Value::Null) => Ok(Concurrency::Default),
        Some(Value::Number(n)) => Ok(Concurrency::Count(n.as_f64().unwrap_or(f64::NAN))),
        Some(Value::String(s)) => s.parse().map_err(|e| PayloadError::new("concurrency", e)),
        Some(other) => Err(PayloadError::new(
            "concurrency",
            format!("expected a number, a string like \"50%\" or null, got {other}"),
        )),
    }
}

impl MediaPayload {
    pub fn into_request(self) -> Result<MediaRequest, PayloadError> {
        let codec = parse_named::<Codec>("codec", self.codec)?.unwrap_or(Codec::H264);
        let webhook = self
            .render_status_webhook
            .map(|w| {
                let interval = w.webhook_progress_interval.unwrap_or(0.1);
                if !(0.0..=1.0).contains(&interval) {
                    return Err(PayloadError::new(
                        "renderStatusWebhook.webhookProgressInterval",
                        format!("must be between 0 and 1, got {interval}"),
                    ));
                }
                Ok(WebhookOptions {
                    url: w.url,
                    headers: w.headers,
                    data: w.data,
                    progress_interval: interval,
                })
            })
            .transpose()?;
        let every_nth_frame = match self.every_nth_frame {
            None => 1,
            Some(n) => integer("everyNthFrame", n, 1.0, 1e9)? as u32,
        };
        let media = MediaOptions {
            composition_id: self.composition,
            overrides: CompositionOverrides {
                width: self.force_width,
                height: self.force_height,
                fps: self.force_fps,
                duration_in_frames: self.force_duration_in_frames,
            },
            codec,
            audio_codec: parse_named::<AudioCodec>("audioCodec", self.audio_codec)?,
            audio_bitrate: bitrate("audioBitrate", self.audio_bitrate)?,
            video_bitrate: bitrate("videoBitrate", self.video_bitrate)?,
            encoding_max_rate: bitrate("encodingMaxRate", self.encoding_max_rate)?,
            encoding_buffer_size: bitrate("encodingBufferSize", self.encoding_buffer_size)?,
            crf: self.crf,
            pixel_format: parse_named::<PixelFormat>("pixelFormat", self.pixel_format)?,
            image_format: parse_named::<VideoImageFormat>("imageFormat", self.image_format)?,
            jpeg_quality: jpeg_quality(self.jpeg_quality)?,
            scale: scale(self.scale)?,
            prores_profile: parse_named::<ProResProfile>("proResProfile", self.pro_res_profile)?,
            x264_preset: parse_named::<X264Preset>("x264Preset", self.x264_preset)?,
            gop_size: optional_u32("gopSize", self.gop_size)?,
            every_nth_frame,
            number_of_gif_loops: optional_u32("numberOfGifLoops", self.number_of_gif_loops)?,
            frame_range: frame_range(self.frame_range)?,
            muted: self.muted.unwrap_or(false),
            enforce_audio_track: self.enforce_audio_track.unwrap_or(false),
            prefer_lossless: self.prefer_lossless.unwrap_or(false),
            concurrency: concurrency(self.concurrency)?,
            color_space: parse_named::<ColorSpace>("colorSpace", self.color_space)?
                .unwrap_or(ColorSpace::Default),
            metadata: self.metadata.unwrap_or_default(),
        };
        if let Some(fps) = media.overrides.fps
            && (!fps.is_finite() || fps <= 0.0)
        {
            return Err(PayloadError::new(
                "forceFps",
                format!("must be a positive number, got {fps}"),
            ));
        }
        Ok(MediaRequest {
            site: site_options(SiteFields {
                serve_url: self.serve_url,
                props: self.serialized_input_props_with_custom_schema,
                env: self.env_variables,
                chromium: self.chromium_options,
                timeout_ms: self.delay_render_timeout_in_milliseconds,
                log_level: self.log_level,
                cache_size: self.offthread_video_cache_size_in_bytes,
                threads: self.offthread_video_threads,
            })?,
            media,
            upload: upload_options(
                self.output_bucket,
                self.out_name,
                self.privacy,
                self.download_behavior,
                self.render_id_override,
            )?,
            webhook,
            client_version: self.client_version,
            frames_per_chunk: self
                .frames_per_chunk
                .map(|n| {
                    integer(
                        "framesPerChunk",
                        n,
                        crate::fanout::plan::MIN_FRAMES_PER_CHUNK as f64,
                        9.007_199_254_740_991e15,
                    )
                })
                .transpose()?,
        })
    }
}

impl StillPayload {
    pub fn into_request(self) -> Result<StillRequest, PayloadError> {
        let frame = match self.frame {
            None => 0,
            Some(f) if f.is_finite() && f.fract() == 0.0 => f as i64,
            Some(f) => {
                return Err(PayloadError::new(
                    "frame",
                    format!("must be an integer, got {f}"),
                ));
            }
        };
        let still = StillOptions {
            composition_id: self.composition,
            overrides: CompositionOverrides {
                width: self.force_width,
                height: self.force_height,
                ..Default::default()
            },
            frame,
            image_format: parse_named::<StillImageFormat>("imageFormat", self.image_format)?
                .unwrap_or(StillImageFormat::Png),
            jpeg_quality: jpeg_quality(self.jpeg_quality)?,
            scale: scale(self.scale)?,
        };
        Ok(StillRequest {
            site: site_options(SiteFields {
                serve_url: self.serve_url,
                props: self.serialized_input_props_with_custom_schema,
                env: self.env_variables,
                chromium: self.chromium_options,
                timeout_ms: self.delay_render_timeout_in_milliseconds,
                log_level: self.log_level,
                cache_size: self.offthread_video_cache_size_in_bytes,
                threads: self.offthread_video_threads,
            })?,
            still,
            upload: upload_options(
                self.output_bucket,
                self.out_name,
                self.privacy,
                self.download_behavior,
                self.render_id_override,
            )?,
            client_version: self.client_version,
        })
    }
}

/// The success object, in the key order of the original service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SuccessResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub public_url: Option<String>,
    pub cloud_storage_uri: String,
    /// A decimal string of bytes, as the GCS JSON API reports it.
    pub size: String,
    pub bucket_name: String,
    pub render_id: String,
    pub privacy: String,
    /// Ours, after `privacy`: how a render spread over instances went. The client ignores it.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<FanoutStats>,
}

/// The extra fields of a render spread over instances.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FanoutStats {
    /// Chunks the frames were cut into.
    pub chunks: usize,
    /// Chunk calls started again because a worker vanished.
    pub retries: u32,
    /// Duplicate calls started for stragglers.
    pub duplicates: u32,
    /// Instance time: the coordinator's whole render plus what every winning chunk call
    /// took on its worker, as the workers measured it.
    pub instance_seconds: f64,
}

/// `{"type":"error","message","name","stack"}`: the only failure shape the client understands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub name: String,
    pub stack: String,
}

impl ErrorBody {
    pub fn new(
        name: impl Into<String>,
        message: impl Into<String>,
        stack: impl Into<String>,
    ) -> Self {
        ErrorBody {
            kind: "error".into(),
            message: message.into(),
            name: name.into(),
            stack: stack.into(),
        }
    }
}

/// `renders/{renderId}/error.txt`: `{"name","message","stack","type":"renderer"}`, in that
/// order, like the original's `errorInfo.txt`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorTxt {
    pub name: String,
    pub message: String,
    pub stack: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl From<&ErrorBody> for ErrorTxt {
    fn from(e: &ErrorBody) -> Self {
        ErrorTxt {
            name: e.name.clone(),
            message: e.message.clone(),
            stack: e.stack.clone(),
            kind: "renderer".into(),
        }
    }
}

impl From<&PayloadError> for ErrorBody {
    fn from(e: &PayloadError) -> Self {
        let message = e.to_string();
        ErrorBody::new(
            "ValidationError",
            message.clone(),
            format!("ValidationError: {message}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn media(extra: Value) -> Result<MediaRequest, PayloadError> {
        let mut body = json!({
            "type": "media",
            "serveUrl": "https://example.com/site",
            "composition": "Frames",
            "outputBucket": "bucket",
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        match parse_request(body.to_string().as_bytes())? {
            RenderRequest::Media(m) => Ok(*m),
            RenderRequest::Still(_) => panic!("expected media"),
        }
    }

    /// A body exactly like `renderMediaOnCloudrun()` 4.0.270 sends, with every field (and one
    /// from a future client).
    fn full_client_body() -> Value {
        serde_json::from_str(include_str!("../../fixtures/payloads/media.json")).unwrap()
    }

    #[test]
    fn every_client_field_reaches_the_options() {
        let RenderRequest::Media(r) =
            parse_request(full_client_body().to_string().as_bytes()).unwrap()
        else {
            panic!()
        };
        let m = &r.media;
        assert_eq!(m.codec, Codec::Vp8);
        assert_eq!(m.audio_codec, Some(AudioCodec::Opus));
        assert_eq!(m.overrides.width, Some(640));
        assert_eq!(m.overrides.height, Some(360));
        assert_eq!(m.jpeg_quality, 70);
        assert_eq!(m.audio_bitrate.as_deref(), Some("128k"));
        assert_eq!(m.video_bitrate.as_deref(), Some("2M"));
        assert_eq!(m.encoding_max_rate.as_deref(), Some("3M"));
        assert_eq!(m.encoding_buffer_size.as_deref(), Some("6M"));
        assert_eq!(m.crf, None);
        assert_eq!(m.pixel_format, Some(PixelFormat::Yuva420p));
        assert_eq!(m.image_format, Some(VideoImageFormat::Png));
        assert_eq!(m.scale, 1.5);
        assert_eq!(m.every_nth_frame, 2);
        assert_eq!(m.frame_range, FrameRange::Ranges(vec![(10, Some(20))]));
        assert!(m.muted && m.enforce_audio_track && !m.prefer_lossless);
        assert_eq!(m.concurrency, Concurrency::Percent(50.0));
        assert_eq!(m.color_space, ColorSpace::Bt709);
        assert_eq!(m.metadata.get("Author").map(String::as_str), Some("me"));
        let s = &r.site;
        assert!(s.serialized_input_props.contains("remotion-date:"));
        assert_eq!(s.env_variables.get("A").map(String::as_str), Some("1"));
        assert_eq!(s.chromium.gl, Some(GlRenderer::Swangle));
        assert!(s.chromium.ignore_certificate_errors);
        assert_eq!(s.chromium.user_agent.as_deref(), Some("UA"));
        assert_eq!(s.timeout, Duration::from_millis(12000));
        assert_eq!(s.log_level, LogLevel::Verbose);
        assert_eq!(s.offthread_video_cache_size_in_bytes, Some(1_000_000));
        assert_eq!(s.offthread_video_threads, Some(2));
        let u = &r.upload;
        assert_eq!(u.bucket, "out-bucket");
        assert_eq!(u.out_name.as_deref(), Some("dir/video.webm"));
        assert_eq!(u.privacy, Privacy::Private);
        assert_eq!(
            u.download_behavior,
            DownloadBehavior::Download {
                file_name: Some("a b.webm".into())
            }
        );
        assert_eq!(u.render_id_override.as_deref(), Some("fixedid"));
        let w = r.webhook.unwrap();
        assert_eq!(w.url, "http://h/x");
        assert_eq!(w.progress_interval, 0.25);
        assert_eq!(w.headers.get("k").map(String::as_str), Some("v"));
        assert_eq!(w.data, json!({"d": 1}));
        assert_eq!(r.client_version.as_deref(), Some("4.0.270"));
    }

    #[test]
    fn omitted_fields_get_the_client_defaults() {
        let r = media(json!({})).unwrap();
        let m = &r.media;
        assert_eq!(m.codec, Codec::H264);
        assert_eq!(m.jpeg_quality, 80);
        assert_eq!(m.scale, 1.0);
        assert_eq!(m.every_nth_frame, 1);
        assert_eq!(m.frame_range, FrameRange::All);
        assert_eq!(m.concurrency, Concurrency::Default);
        assert_eq!(m.color_space, ColorSpace::Default);
        assert!(!m.muted);
        assert_eq!(r.site.serialized_input_props, "{}");
        assert_eq!(r.site.timeout, Duration::from_secs(30));
        assert_eq!(r.site.log_level, LogLevel::Info);
        assert!(r.site.chromium.headless);
        assert_eq!(r.upload.privacy, Privacy::Public);
        assert_eq!(r.upload.download_behavior, DownloadBehavior::PlayInBrowser);
        assert!(r.webhook.is_none());
    }

    #[test]
    fn nulls_are_the_same_as_absent() {
        let r = media(json!({
            "crf": null, "pixelFormat": null, "imageFormat": null, "frameRange": null,
            "concurrency": null, "colorSpace": null, "metadata": null, "renderIdOverride": null,
            "renderStatusWebhook": null, "audioCodec": null, "jpegQuality": null,
        }))
        .unwrap();
        assert_eq!(r.media.jpeg_quality, 80);
        assert_eq!(r.media.frame_range, FrameRange::All);
    }

    #[test]
    fn jpeg_quality_takes_any_number_from_0_to_100() {
        let q = |v: Value| media(json!({ "jpegQuality": v })).map(|r| r.media.jpeg_quality);
        assert_eq!(q(json!(72.5)), Ok(73));
        assert_eq!(q(json!(0.4)), Ok(0));
        assert_eq!(q(json!(99.6)), Ok(100));
        assert_eq!(q(json!(0)), Ok(0));
        assert_eq!(q(json!(100)), Ok(100));
        for bad in [json!(-0.1), json!(100.01), json!(1e308), json!("80")] {
            assert_eq!(q(bad.clone()).unwrap_err().field, "jpegQuality", "{bad}");
        }
        let still = json!({"type": "still", "serveUrl": "https://x/", "composition": "S",
            "outputBucket": "b", "imageFormat": "jpeg", "jpegQuality": 33.3});
        let RenderRequest::Still(r) = parse_request(still.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(r.still.jpeg_quality, 33);
    }

    #[test]
    fn frames_per_chunk_is_our_extension() {
        let fpc = |v: Value| media(json!({ "framesPerChunk": v })).map(|r| r.frames_per_chunk);
        assert_eq!(media(json!({})).unwrap().frames_per_chunk, None);
        assert_eq!(fpc(Value::Null), Ok(None));
        assert_eq!(fpc(json!(4)), Ok(Some(4)));
        assert_eq!(fpc(json!(300)), Ok(Some(300)));
        for bad in [
            json!(3),
            json!(0),
            json!(-5),
            json!(10.5),
            json!("10"),
            json!(1e300),
        ] {
            let e = fpc(bad.clone()).unwrap_err();
            assert_eq!(e.field, "framesPerChunk", "{bad}: {e}");
        }
        assert!(fpc(json!(2)).unwrap_err().message.contains("between 4"));
    }

    #[test]
    fn frame_range_shapes() {
        let fr = |v: Value| media(json!({ "frameRange": v })).map(|r| r.media.frame_range);
        assert_eq!(fr(json!(5)), Ok(FrameRange::Single(5)));
        assert_eq!(
            fr(json!([2, 8])),
            Ok(FrameRange::Ranges(vec![(2, Some(8))]))
        );
        assert_eq!(
            fr(json!([2, null])),
            Ok(FrameRange::Ranges(vec![(2, None)]))
        );
        assert_eq!(
            fr(json!([[0, 1], [4, null]])),
            Ok(FrameRange::Ranges(vec![(0, Some(1)), (4, None)]))
        );
        for bad in [
            json!([8, 2]),
            json!(-1),
            json!(1.5),
            json!("3"),
            json!([1, 2, 3]),
            json!([[0, null], [3, 4]]),
        ] {
            let e = fr(bad.clone()).unwrap_err();
            assert_eq!(e.field, "frameRange", "{bad}: {e}");
        }
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (json!({"codec": "h266"}), "codec"),
            (json!({"codec": 5}), "codec"),
            (json!({"jpegQuality": 101}), "jpegQuality"),
            (json!({"scale": 0}), "scale"),
            (json!({"scale": 17}), "scale"),
            (json!({"everyNthFrame": 0}), "everyNthFrame"),
            (json!({"pixelFormat": "rgb24"}), "pixelFormat"),
            (json!({"imageFormat": "webp"}), "imageFormat"),
            (json!({"proResProfile": "ultra"}), "proResProfile"),
            (json!({"x264Preset": "ludicrous"}), "x264Preset"),
            (json!({"concurrency": "lots"}), "concurrency"),
            (json!({"concurrency": true}), "concurrency"),
            (json!({"privacy": "secret"}), "privacy"),
            (json!({"logLevel": "loud"}), "logLevel"),
            (json!({"colorSpace": "p3"}), "colorSpace"),
            (json!({"videoBitrate": "fast"}), "videoBitrate"),
            (json!({"forceWidth": -4}), "forceWidth"),
            (
                json!({"numberOfGifLoops": 4294967296u64}),
                "numberOfGifLoops",
            ),
            (json!({"gopSize": 1.5}), "gopSize"),
            (
                json!({"delayRenderTimeoutInMilliseconds": 0}),
                "delayRenderTimeoutInMilliseconds",
            ),
            (json!({"outName": "../escape.mp4"}), "outName"),
            (json!({"outName": "/abs.mp4"}), "outName"),
            (json!({"outName": "a\u{7}b.mp4"}), "outName"),
            (json!({"outputBucket": ""}), "outputBucket"),
            (
                json!({"serializedInputPropsWithCustomSchema": "{nope"}),
                "serializedInputPropsWithCustomSchema",
            ),
            (
                json!({"chromiumOptions": {"gl": "opengl"}}),
                "chromiumOptions.gl",
            ),
            (
                json!({"renderStatusWebhook": {"url": "x", "headers": {}, "data": null, "webhookProgressInterval": 2}}),
                "renderStatusWebhook.webhookProgressInterval",
            ),
            (
                json!({"downloadBehavior": {"type": "stream"}}),
                "downloadBehavior.type",
            ),
            (
                json!({"downloadBehavior": {"type": "download", "fileName": false}}),
                "downloadBehavior.fileName",
            ),
        ];
        for (extra, field) in cases {
            let e = media(extra.clone()).unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn wrong_type_and_missing_keys() {
        let e = parse_request(br#"{"type":"video"}"#).unwrap_err();
        assert!(e.message.contains("media"), "{e}");
        let e = parse_request(br#"{"type":"media","composition":"x"}"#).unwrap_err();
        assert_eq!(e.field, "serveUrl", "{e}");
        let e = media(json!({"renderStatusWebhook": {"headers": {}}})).unwrap_err();
        assert_eq!(e.field, "renderStatusWebhook.url", "{e}");
        let e = media(json!({"downloadBehavior": {}})).unwrap_err();
        assert_eq!(e.field, "downloadBehavior.type", "{e}");
        let e = parse_request(b"not json").unwrap_err();
        assert_eq!(e.field, "(body)");
    }

    #[test]
    fn still_payload() {
        let body = json!({
            "type": "still", "serveUrl": "https://x/", "composition": "Stills",
            "imageFormat": "webp", "frame": -1, "scale": 2, "privacy": "public",
            "outputBucket": "b", "outName": null, "jpegQuality": 90, "envVariables": {},
            "clientVersion": "4.0.300",
        });
        let RenderRequest::Still(r) = parse_request(body.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(r.still.frame, -1);
        assert_eq!(r.still.image_format, StillImageFormat::Webp);
        assert_eq!(r.still.scale, 2.0);
        assert_eq!(r.still.jpeg_quality, 90);
        assert_eq!(r.upload.out_name, None);
        let bad = json!({"type":"still","serveUrl":"https://x/","composition":"S","outputBucket":"b","imageFormat":"gif"});
        let e = parse_request(bad.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "imageFormat");
    }

    #[test]
    fn response_shapes_keep_the_original_key_order() {
        let ok = SuccessResponse {
            kind: "success".into(),
            public_url: None,
            cloud_storage_uri: "gs://b/renders/x/out.mp4".into(),
            size: "12".into(),
            bucket_name: "b".into(),
            render_id: "x".into(),
            privacy: "project-private".into(),
            fanout: None,
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"type":"success","publicUrl":null,"cloudStorageUri":"gs://b/renders/x/out.mp4","size":"12","bucketName":"b","renderId":"x","privacy":"project-private"}"#
        );
        let spread = SuccessResponse {
            fanout: Some(FanoutStats {
                chunks: 4,
                retries: 1,
                duplicates: 0,
                instance_seconds: 12.5,
            }),
            ..ok.clone()
        };
        let text = serde_json::to_string(&spread).unwrap();
        assert!(
            text.ends_with(r#""privacy":"project-private","chunks":4,"retries":1,"duplicates":0,"instanceSeconds":12.5}"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<SuccessResponse>(&text).unwrap(),
            spread
        );
        let plain = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<SuccessResponse>(&plain).unwrap(), ok);
        let err = ErrorBody::new("Error", "boom", "Error: boom");
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"type":"error","message":"boom","name":"Error","stack":"Error: boom"}"#
        );
    }
}
