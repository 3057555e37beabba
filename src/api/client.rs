//! The other side of the wire: the payload `renderMediaOnCloudrun()` and
//! `renderStillOnCloudrun()` build, and the way they read the answer. The CLI's `--service`
//! calls a deployed service through this, so it behaves exactly like the Node client.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::wire::{ErrorBody, SuccessResponse};
use crate::options::{
    ChromiumOptions, ColorSpace, Concurrency, DownloadBehavior, FrameRange, MediaOptions, Privacy,
    SiteOptions, StillOptions,
};

/// The client release whose payload this reproduces, sent as `clientVersion`.
pub const CLIENT_VERSION: &str = "4.0.270";

/// Cloud Run ends any request after at most an hour; a stream that outlives that is dead.
const REQUEST_LIMIT: Duration = Duration::from_secs(3600 + 60);

/// Where the caller wants the output, as the client's options say it. `None` is an option
/// the caller did not set, which the client leaves out of the payload.
#[derive(Debug, Clone, Default)]
pub struct OutputTarget {
    pub bucket: String,
    pub out_name: Option<String>,
    pub privacy: Option<Privacy>,
    pub download_behavior: DownloadBehavior,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChromiumOptionsCall {
    #[serde(skip_serializing_if = "Option::is_none")]
    gl: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_certificate_errors: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_web_security: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dark_mode: bool,
}

impl From<&ChromiumOptions> for ChromiumOptionsCall {
    fn from(c: &ChromiumOptions) -> Self {
        ChromiumOptionsCall {
            gl: c.gl.map(|g| g.as_str()),
            ignore_certificate_errors: c.ignore_certificate_errors,
            disable_web_security: c.disable_web_security,
            user_agent: c.user_agent.clone(),
            dark_mode: c.dark_mode,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum DownloadBehaviorCall {
    PlayInBrowser,
    Download {
        #[serde(rename = "fileName")]
        file_name: Option<String>,
    },
}

impl From<&DownloadBehavior> for DownloadBehaviorCall {
    fn from(d: &DownloadBehavior) -> Self {
        match d {
            DownloadBehavior::PlayInBrowser => DownloadBehaviorCall::PlayInBrowser,
            DownloadBehavior::Download { file_name } => DownloadBehaviorCall::Download {
                file_name: file_name.clone(),
            },
        }
    }
}

/// `renderMediaOnCloudrun()`'s body, field by field in its order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaCall {
    #[serde(rename = "type")]
    kind: &'static str,
    serve_url: String,
    composition: String,
    serialized_input_props_with_custom_schema: String,
    codec: &'static str,
    audio_codec: Option<&'static str>,
    force_height: Option<u32>,
    force_width: Option<u32>,
    jpeg_quality: u8,
    audio_bitrate: Option<String>,
    video_bitrate: Option<String>,
    encoding_max_rate: Option<String>,
    encoding_buffer_size: Option<String>,
    crf: Option<f64>,
    pixel_format: Option<&'static str>,
    image_format: Option<&'static str>,
    scale: f64,
    pro_res_profile: Option<&'static str>,
    x264_preset: Option<&'static str>,
    /// Ours: 4.0.270 has no `gopSize`, so it is only sent when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    gop_size: Option<u32>,
    every_nth_frame: u32,
    number_of_gif_loops: Option<u32>,
    frame_range: Value,
    env_variables: BTreeMap<String, String>,
    chromium_options: ChromiumOptionsCall,
    muted: bool,
    output_bucket: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    privacy: Option<&'static str>,
    log_level: &'static str,
    delay_render_timeout_in_milliseconds: u64,
    concurrency: Value,
    enforce_audio_track: bool,
    prefer_lossless: bool,
    offthread_video_cache_size_in_bytes: Option<u64>,
    offthread_video_threads: Option<u32>,
    color_space: Option<&'static str>,
    client_version: &'static str,
    download_behavior: DownloadBehaviorCall,
    metadata: Option<BTreeMap<String, String>>,
}

/// `renderStillOnCloudrun()`'s body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StillCall {
    #[serde(rename = "type")]
    kind: &'static str,
    serve_url: String,
    composition: String,
    force_height: Option<u32>,
    force_width: Option<u32>,
    serialized_input_props_with_custom_schema: String,
    jpeg_quality: u8,
    image_format: &'static str,
    scale: f64,
    privacy: &'static str,
    env_variables: BTreeMap<String, String>,
    chromium_options: ChromiumOptionsCall,
    output_bucket: String,
    out_name: Option<String>,
    frame: i64,
    delay_render_timeout_in_milliseconds: u64,
    log_level: &'static str,
    offthread_video_cache_size_in_bytes: Option<u64>,
    offthread_video_threads: Option<u32>,
    client_version: &'static str,
    download_behavior: DownloadBehaviorCall,
}

/// `frameRange`: what the client sends for each shape (several ranges are ours).
fn frame_range(r: &FrameRange) -> Value {
    let pair = |(a, b): &(u64, Option<u64>)| Value::from(vec![Value::from(*a), Value::from(*b)]);
    match r {
        FrameRange::All => Value::Null,
        FrameRange::Single(n) => Value::from(*n),
        FrameRange::Ranges(ranges) if ranges.len() == 1 => pair(&ranges[0]),
        FrameRange::Ranges(ranges) => Value::from(ranges.iter().map(pair).collect::<Vec<_>>()),
    }
}

fn concurrency(c: Concurrency) -> Value {
    match c {
        Concurrency::Default => Value::Null,
        Concurrency::Count(n) => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
        Concurrency::Percent(p) => Value::from(format!("{p}%")),
    }
}

fn timeout_ms(site: &SiteOptions) -> u64 {
    site.timeout.as_millis().try_into().unwrap_or(u64::MAX)
}

pub fn media_call(site: &SiteOptions, media: &MediaOptions, target: &OutputTarget) -> MediaCall {
    MediaCall {
        kind: "media",
        serve_url: site.serve_url.clone(),
        composition: media.composition_id.clone(),
        serialized_input_props_with_custom_schema: site.serialized_input_props.clone(),
        codec: media.codec.as_str(),
        audio_codec: media.audio_codec.map(|c| c.as_str()),
        force_height: media.overrides.height,
        force_width: media.overrides.width,
        jpeg_quality: media.jpeg_quality,
        audio_bitrate: media.audio_bitrate.clone(),
        video_bitrate: media.video_bitrate.clone(),
        encoding_max_rate: media.encoding_max_rate.clone(),
        encoding_buffer_size: media.encoding_buffer_size.clone(),
        crf: media.crf,
        pixel_format: media.pixel_format.map(|p| p.as_str()),
        image_format: media.image_format.map(|f| f.as_str()),
        scale: media.scale,
        pro_res_profile: media.prores_profile.map(|p| p.as_str()),
        x264_preset: media.x264_preset.map(|p| p.as_str()),
        gop_size: media.gop_size,
        every_nth_frame: media.every_nth_frame,
        number_of_gif_loops: media.number_of_gif_loops,
        frame_range: frame_range(&media.frame_range),
        env_variables: site.env_variables.clone(),
        chromium_options: (&site.chromium).into(),
        muted: media.muted,
        output_bucket: target.bucket.clone(),
        out_name: target.out_name.clone(),
        privacy: target.privacy.map(|p| p.as_str()),
        log_level: site.log_level.as_str(),
        delay_render_timeout_in_milliseconds: timeout_ms(site),
        concurrency: concurrency(media.concurrency),
        enforce_audio_track: media.enforce_audio_track,
        prefer_lossless: media.prefer_lossless,
        offthread_video_cache_size_in_bytes: site.offthread_video_cache_size_in_bytes,
        offthread_video_threads: site.offthread_video_threads,
        color_space: match media.color_space {
            ColorSpace::Default => None,
            other => Some(other.as_str()),
        },
        client_version: CLIENT_VERSION,
        download_behavior: (&target.download_behavior).into(),
        metadata: (!media.metadata.is_empty()).then(|| media.metadata.clone()),
    }
}

pub fn still_call(site: &SiteOptions, still: &StillOptions, target: &OutputTarget) -> StillCall {
    StillCall {
        kind: "still",
        serve_url: site.serve_url.clone(),
        composition: still.composition_id.clone(),
        force_height: still.overrides.height,
        force_width: still.overrides.width,
        serialized_input_props_with_custom_schema: site.serialized_input_props.clone(),
        jpeg_quality: still.jpeg_quality,
        image_format: still.image_format.as_str(),
        scale: still.scale,
        privacy: target.privacy.unwrap_or(Privacy::Public).as_str(),
        env_variables: site.env_variables.clone(),
        chromium_options: (&site.chromium).into(),
        output_bucket: target.bucket.clone(),
        out_name: target.out_name.clone(),
        frame: still.frame,
        delay_render_timeout_in_milliseconds: timeout_ms(site),
        log_level: site.log_level.as_str(),
        offthread_video_cache_size_in_bytes: site.offthread_video_cache_size_in_bytes,
        offthread_video_threads: site.offthread_video_threads,
        client_version: CLIENT_VERSION,
        download_behavior: (&target.download_behavior).into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service's own error object: the client rejects with it.
    #[error("{}: {}", .0.name, .0.message)]
    Service(ErrorBody),
    /// The stream ended without a final response (the client's `type: "crash"`).
    #[error(
        "Service crashed without sending a response. Check the logs in GCP console.{}",
        if .leftover.is_empty() { String::new() } else { format!(" Unparsed end of the stream: {}", .leftover) }
    )]
    Crash { leftover: String },
    #[error("The service answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("Could not talk to the service: {0}")]
    Transport(String),
}

/// One message of the stream, as the client parsed it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The message's text, trimmed.
    pub text: &'a str,
    /// `onProgress`, when truthy (the client ignores 0).
    pub progress: Option<f64>,
}

/// POSTs `payload` to `url` and reads the answer as the Node client does: each read is
/// appended to a buffer and the whole trimmed buffer is parsed; once it parses, it is one
/// message and the buffer starts over. `on_message` sees every message as it arrives.
pub async fn call(
    http: &reqwest::Client,
    url: &str,
    id_token: Option<&str>,
    payload: &impl Serialize,
    mut on_message: impl FnMut(Message<'_>),
) -> Result<SuccessResponse, ClientError> {
    let mut request = http.post(url).json(payload).timeout(REQUEST_LIMIT);
    if let Some(token) = id_token {
        request = request.bearer_auth(token);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| ClientError::Transport(error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(ClientError::Status {
            status: status.as_u16(),
            message: status_message(status.as_u16(), &body),
        });
    }
    let mut buffer = String::new();
    let mut success: Option<Value> = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ClientError::Transport(error_chain(&e)))?
    {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        let Ok(message) = serde_json::from_str::<Value>(buffer.trim()) else {
            continue;
        };
        let progress = message
            .get("onProgress")
            .and_then(Value::as_f64)
            .filter(|p| *p != 0.0);
        on_message(Message {
            text: buffer.trim(),
            progress,
        });
        buffer.clear();
        if let Some(r) = message.get("response").filter(|r| truthy(r)) {
            success = Some(r.clone());
        }
        if message.get("type").and_then(Value::as_str) == Some("error") {
            return Err(ClientError::Service(error_body(message)));
        }
    }
    let Some(response) = success else {
        return Err(ClientError::Crash {
            leftover: buffer.trim().to_string(),
        });
    };
    serde_json::from_value::<SuccessResponse>(response.clone())
        .ok()
        .filter(|r| r.kind == "success")
        .ok_or_else(|| ClientError::Service(error_body(response)))
}

/// JavaScript's truthiness, for the client's `if (parsed.response)`.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The error object, with whatever fields it has.
fn error_body(v: Value) -> ErrorBody {
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let message = match field("message") {
        m if m.is_empty() => v.to_string(),
        m => m,
    };
    ErrorBody::new(
        match field("name") {
            n if n.is_empty() => "Error".to_string(),
            n => n,
        },
        message,
        field("stack"),
    )
}

/// A refusal before the stream: our own error object's message if it is one, with a hint
/// for what Cloud Run's front end refuses.
fn status_message(status: u16, body: &str) -> String {
    let own = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string));
    let text = own.unwrap_or_else(|| body.trim().chars().take(500).collect());
    match status {
        401 | 403 => format!(
            "{text} (Cloud Run refused the caller: the service is private and the request carried no ID token it accepts. Run `gcloud auth login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key, with roles/run.invoker on the service.)"
        ),
        _ => text,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire::{RenderRequest, parse_request};
    use serde_json::json;

    fn target() -> OutputTarget {
        OutputTarget {
            bucket: "out-bucket".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_make_the_payload_the_client_sends() {
        let site = SiteOptions::new("https://storage.googleapis.com/b/sites/s/index.html");
        let media = MediaOptions::new("Frames");
        let payload = serde_json::to_value(media_call(&site, &media, &target())).unwrap();
        // renderMediaOnCloudrun() 4.0.270 with only serveUrl, composition, codec and
        // forceBucketName given (cloudrun-wire-contract.md, 1.3).
        let expected = json!({
            "type": "media",
            "serveUrl": "https://storage.googleapis.com/b/sites/s/index.html",
            "composition": "Frames",
            "serializedInputPropsWithCustomSchema": "{}",
            "codec": "h264",
            "audioCodec": null,
            "forceHeight": null,
            "forceWidth": null,
            "jpegQuality": 80,
            "audioBitrate": null,
            "videoBitrate": null,
            "encodingMaxRate": null,
            "encodingBufferSize": null,
            "crf": null,
            "pixelFormat": null,
            "imageFormat": null,
            "scale": 1.0,
            "proResProfile": null,
            "x264Preset": null,
            "everyNthFrame": 1,
            "numberOfGifLoops": null,
            "frameRange": null,
            "envVariables": {},
            "chromiumOptions": {},
            "muted": false,
            "outputBucket": "out-bucket",
            "logLevel": "info",
            "delayRenderTimeoutInMilliseconds": 30000,
            "concurrency": null,
            "enforceAudioTrack": false,
            "preferLossless": false,
            "offthreadVideoCacheSizeInBytes": null,
            "offthreadVideoThreads": null,
            "colorSpace": null,
            "clientVersion": "4.0.270",
            "downloadBehavior": {"type": "play-in-browser"},
            "metadata": null,
        });
        assert_eq!(payload, expected);

        let still = StillOptions::new("Stills");
        let payload = serde_json::to_value(still_call(&site, &still, &target())).unwrap();
        let expected = json!({
            "type": "still",
            "serveUrl": "https://storage.googleapis.com/b/sites/s/index.html",
            "composition": "Stills",
            "forceHeight": null,
            "forceWidth": null,
            "serializedInputPropsWithCustomSchema": "{}",
            "jpegQuality": 80,
            "imageFormat": "png",
            "scale": 1.0,
            "privacy": "public",
            "envVariables": {},
            "chromiumOptions": {},
            "outputBucket": "out-bucket",
            "outName": null,
            "frame": 0,
            "delayRenderTimeoutInMilliseconds": 30000,
            "logLevel": "info",
            "offthreadVideoCacheSizeInBytes": null,
            "offthreadVideoThreads": null,
            "clientVersion": "4.0.270",
            "downloadBehavior": {"type": "play-in-browser"},
        });
        assert_eq!(payload, expected);
    }

    /// Every option survives the trip through the payload and the service's parser.
    #[test]
    fn the_service_reads_back_every_option_the_payload_carries() {
        use crate::options::*;
        let mut site = SiteOptions::new("https://x/site/");
        site.serialized_input_props = r#"{"a":1}"#.into();
        site.env_variables.insert("K".into(), "V".into());
        site.timeout = Duration::from_millis(12_345);
        site.log_level = LogLevel::Verbose;
        site.chromium.gl = Some(GlRenderer::Angle);
        site.chromium.user_agent = Some("UA".into());
        site.chromium.ignore_certificate_errors = true;
        site.chromium.disable_web_security = true;
        site.chromium.dark_mode = true;
        site.offthread_video_cache_size_in_bytes = Some(1000);
        site.offthread_video_threads = Some(3);
        let mut m = MediaOptions::new("Frames");
        m.codec = Codec::Vp9;
        m.audio_codec = Some(AudioCodec::Opus);
        m.overrides.width = Some(320);
        m.overrides.height = Some(180);
        m.jpeg_quality = 55;
        m.audio_bitrate = Some("96k".into());
        m.video_bitrate = Some("2M".into());
        m.encoding_max_rate = Some("3M".into());
        m.encoding_buffer_size = Some("6M".into());
        m.crf = Some(30.0);
        m.pixel_format = Some(PixelFormat::Yuva420p);
        m.image_format = Some(VideoImageFormat::Png);
        m.scale = 1.5;
        m.prores_profile = Some(ProResProfile::Hq);
        m.x264_preset = Some(X264Preset::Fast);
        m.gop_size = Some(12);
        m.every_nth_frame = 2;
        m.number_of_gif_loops = Some(3);
        m.frame_range = FrameRange::Ranges(vec![(0, Some(4)), (8, None)]);
        m.muted = true;
        m.enforce_audio_track = true;
        m.prefer_lossless = true;
        m.concurrency = Concurrency::Percent(50.0);
        m.color_space = ColorSpace::Bt709;
        m.metadata.insert("Author".into(), "me".into());
        let target = OutputTarget {
            bucket: "b".into(),
            out_name: Some("dir/x.webm".into()),
            privacy: Some(Privacy::NoAcl),
            download_behavior: DownloadBehavior::Download {
                file_name: Some("x.webm".into()),
            },
        };
        let body = serde_json::to_vec(&media_call(&site, &m, &target)).unwrap();
        let RenderRequest::Media(r) = parse_request(&body).unwrap() else {
            panic!("a media request")
        };
        assert_eq!(format!("{:?}", r.site), format!("{site:?}"));
        assert_eq!(format!("{:?}", r.media), format!("{m:?}"));
        assert_eq!(r.upload.bucket, "b");
        assert_eq!(r.upload.out_name.as_deref(), Some("dir/x.webm"));
        assert_eq!(r.upload.privacy, Privacy::NoAcl);
        assert_eq!(r.upload.download_behavior, target.download_behavior);
        assert_eq!(r.client_version.as_deref(), Some(CLIENT_VERSION));

        for (range, sent) in [
            (FrameRange::Single(7), json!(7)),
            (FrameRange::Ranges(vec![(2, Some(9))]), json!([2, 9])),
            (FrameRange::Ranges(vec![(2, None)]), json!([2, null])),
        ] {
            m.frame_range = range.clone();
            let v = serde_json::to_value(media_call(&site, &m, &target)).unwrap();
            assert_eq!(v["frameRange"], sent);
            let RenderRequest::Media(r) = parse_request(v.to_string().as_bytes()).unwrap() else {
                panic!()
            };
            assert_eq!(r.media.frame_range, range);
        }
        m.concurrency = Concurrency::Count(3.0);
        let v = serde_json::to_value(media_call(&site, &m, &target)).unwrap();
        assert_eq!(v["concurrency"], json!(3.0));

        let mut s = StillOptions::new("Stills");
        s.frame = -1;
        s.image_format = StillImageFormat::Webp;
        s.scale = 2.0;
        s.jpeg_quality = 90;
        s.overrides.width = Some(100);
        let body = serde_json::to_vec(&still_call(&site, &s, &target)).unwrap();
        let RenderRequest::Still(r) = parse_request(&body).unwrap() else {
            panic!("a still request")
        };
        assert_eq!(format!("{:?}", r.still), format!("{s:?}"));
        assert_eq!(format!("{:?}", r.site), format!("{site:?}"));
        assert_eq!(r.upload.privacy, Privacy::NoAcl);
    }

    /// Serves `chunks` as the body, each its own HTTP chunk. hyper hands the client at most
    /// one chunk per read (less when a chunk arrives in pieces), whatever the timing.
    async fn serve_chunks(status: u16, chunks: Vec<&'static str>) -> String {
        let app = axum::Router::new().fallback(move || {
            let chunks = chunks.clone();
            async move {
                let (tx, rx) =
                    tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
                tokio::spawn(async move {
                    for c in chunks {
                        if tx.send(Ok(bytes::Bytes::from(c))).await.is_err() {
                            return;
                        }
                    }
                });
                axum::http::Response::builder()
                    .status(status)
                    .body(axum::body::Body::from_stream(futures::stream::unfold(
                        rx,
                        |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
                    )))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    const OK: &str = r#"{"response":{"type":"success","publicUrl":null,"cloudStorageUri":"gs://b/renders/x/out.mp4","size":"12","bucketName":"b","renderId":"x","privacy":"project-private"}}"#;

    async fn run(
        status: u16,
        chunks: Vec<&'static str>,
    ) -> (Result<SuccessResponse, ClientError>, Vec<String>, Vec<f64>) {
        let url = serve_chunks(status, chunks).await;
        let (mut texts, mut progress) = (vec![], vec![]);
        let result = call(&reqwest::Client::new(), &url, None, &json!({}), |m| {
            texts.push(m.text.to_string());
            progress.extend(m.progress);
        })
        .await;
        (result, texts, progress)
    }

    #[tokio::test]
    async fn progress_lines_then_the_response() {
        let (result, texts, progress) = run(
            200,
            vec![
                "{\"onProgress\":0}\n",
                "{\"onProgress\":0.5}\n",
                "{\"onPro",
                "gress\":0.75}\n",
                OK,
            ],
        )
        .await;
        let ok = result.unwrap();
        assert_eq!(ok.cloud_storage_uri, "gs://b/renders/x/out.mp4");
        assert_eq!(ok.size, "12");
        assert_eq!(
            progress,
            [0.5, 0.75],
            "0 is not progress; a split line is one message"
        );
        assert_eq!(texts.len(), 4);
        assert_eq!(texts[2], "{\"onProgress\":0.75}");
    }

    #[tokio::test]
    async fn the_error_object_is_the_failure_with_its_stack() {
        let (result, _, progress) = run(
            200,
            vec![
                "{\"onProgress\":0.1}\n",
                r#"{"type":"error","message":"fixture exploded at frame 5","name":"TypeError","stack":"TypeError: fixture exploded\n    at x.js:1"}"#,
            ],
        )
        .await;
        let Err(ClientError::Service(e)) = result else {
            panic!("{result:?}")
        };
        assert_eq!(e.name, "TypeError");
        assert_eq!(e.message, "fixture exploded at frame 5");
        assert!(e.stack.contains("at x.js:1"));
        assert_eq!(progress, [0.1]);
    }

    #[tokio::test]
    async fn a_stream_without_a_response_is_a_crash() {
        let (result, _, _) = run(
            200,
            vec![
                "{\"onProgress\":0.1}\n",
                "{\"onProgress\":0.2}\n{\"onProgress\":0.3}\n",
            ],
        )
        .await;
        // Two messages in one chunk never parse (unless the chunk arrives split exactly
        // between them), as in the client; either way no response came.
        assert!(
            matches!(result, Err(ClientError::Crash { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_refusal_before_the_stream_says_why() {
        let (result, _, _) = run(
            429,
            vec![r#"{"type":"error","message":"This instance is already rendering.","name":"TooManyRequests","stack":""}"#],
        )
        .await;
        let Err(ClientError::Status { status, message }) = result else {
            panic!("{result:?}")
        };
        assert_eq!(status, 429);
        assert_eq!(message, "This instance is already rendering.");
        let (result, _, _) = run(403, vec!["<html>Forbidden</html>"]).await;
        let e = result.unwrap_err().to_string();
        assert!(e.contains("403") && e.contains("ID token"), "{e}");
    }
}
