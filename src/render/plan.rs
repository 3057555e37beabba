//! Stage 1, the plan: everything a media render decides before its first frame.
//!
//! A plan is built from the options and an already resolved composition, without a browser:
//! the instance that resolved the composition (calculateMetadata runs once, there) and every
//! instance that renders a chunk of it build the same plan from the same inputs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RenderError;
use crate::browser::{CaptureFormat, CompositionInfo, CompositionMode, PageViewport};
use crate::encode::{self, AudioSettings, VideoSettings};
use crate::options::{AudioCodec, Codec, CompositionOverrides, MediaOptions, VideoImageFormat};
use crate::pcm::DEFAULT_SAMPLE_RATE;

/// The composition a render uses, after calculateMetadata and the caller's overrides.
/// Serializable: a coordinator sends it to the instances that render its chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedComposition {
    /// What the page said, including the serialized resolved props.
    pub info: CompositionInfo,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub duration_in_frames: u64,
}

impl ResolvedComposition {
    pub fn new(info: CompositionInfo, o: &CompositionOverrides) -> Result<Self, RenderError> {
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

    pub(super) fn mode(&self, width: u32, height: u32) -> CompositionMode {
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

    /// The sample rate of this composition's audio.
    pub fn sample_rate(&self) -> u32 {
        self.info.default_sample_rate.unwrap_or(DEFAULT_SAMPLE_RATE)
    }
}

/// The kind of file a media render makes, from the options alone: what a caller needs to
/// name and label the output before anything is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFormat {
    pub codec: Codec,
    /// The audio codec as the renderer resolves it (`preferLossless`, then `audioCodec`, then
    /// the codec's default); `None` for codecs without audio.
    pub audio_codec: Option<AudioCodec>,
    /// The extension of the default name, which follows the resolved audio codec.
    pub extension: &'static str,
}

impl OutputFormat {
    pub fn resolve(media: &MediaOptions) -> Result<OutputFormat, RenderError> {
        let audio_codec =
            encode::resolve_audio_codec(media.codec, media.audio_codec, media.prefer_lossless)?;
        Ok(OutputFormat {
            codec: media.codec,
            audio_codec,
            extension: encode::file_extension(media.codec, audio_codec),
        })
    }

    /// `out.<extension>`.
    pub fn default_name(&self) -> String {
        format!("out.{}", self.extension)
    }

    /// The Content-Type of an output stored under `name` (its extension decides).
    pub fn content_type(name: &str) -> &'static str {
        encode::content_type_for_name(name)
    }

    /// The muxer of an output written to `name`: from its extension, else the codec's own.
    pub fn container_for(&self, name: &std::path::Path) -> &'static str {
        name.extension()
            .and_then(|e| e.to_str())
            .and_then(encode::muxer_for_extension)
            .unwrap_or(encode::traits(self.codec).muxer)
    }
}

/// Output frames `first..=last` of a plan: positions in [`MediaPlan::frames`], not
/// composition frame numbers (which differ with `frameRange` and `everyNthFrame`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRange {
    pub first: u64,
    pub last: u64,
}

impl ChunkRange {
    /// Frames in the range (never 0).
    pub fn frames(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// Everything a media render decided before the first frame.
#[derive(Debug, Clone)]
pub struct MediaPlan {
    pub composition: ResolvedComposition,
    pub output: OutputFormat,
    /// Composition frames to capture, in output order.
    pub frames: Vec<u64>,
    pub image_format: VideoImageFormat,
    /// How frames are captured; `None` for audio-only outputs (frames are only visited).
    pub capture: Option<CaptureFormat>,
    /// The page's size in CSS pixels (even where the codec needs it) and the scale.
    pub viewport: PageViewport,
    /// The output's size in pixels.
    pub width: u32,
    pub height: u32,
    /// Composition fps / everyNthFrame.
    pub output_fps: f64,
    /// `None` for audio-only outputs.
    pub video: Option<VideoSettings>,
    /// `None` when muted or when the codec has no audio.
    pub audio: Option<AudioSettings>,
    /// Tabs that capture at once on this instance.
    pub tabs: usize,
    pub every_nth_frame: u32,
    pub enforce_audio_track: bool,
    /// The container tags of the output.
    pub metadata: BTreeMap<String, String>,
}

/// The checks that need nothing but the options, so a request that cannot work fails before
/// a page is opened. [`MediaPlan::new`] makes them again.
pub fn preflight(media: &MediaOptions, cpus: usize) -> Result<usize, RenderError> {
    let tabs = media
        .concurrency
        .resolve(cpus)
        .map_err(RenderError::Invalid)?;
    OutputFormat::resolve(media)?;
    if media.codec.is_audio_only() && media.muted {
        return Err(RenderError::Invalid(
            "The output format has neither audio nor video. This can happen if you are rendering an audio codec and the output file has no audio or the muted flag was passed.".into(),
        ));
    }
    Ok(tabs)
}

impl MediaPlan {
    /// The plan of rendering `composition` with `media` on an instance with `cpus` CPUs.
    pub fn new(
        media: &MediaOptions,
        composition: ResolvedComposition,
        cpus: usize,
    ) -> Result<MediaPlan, RenderError> {
        let tabs_wanted = preflight(media, cpus)?;
        let output = OutputFormat::resolve(media)?;
        let image_format = encode::resolve_image_format(
            media,
            composition.info.default_video_image_format.as_deref(),
        );
        encode::validate(media, image_format)?;
        let frames = super::frames::select_frames(
            &media.frame_range,
            media.every_nth_frame,
            composition.duration_in_frames,
        )
        .map_err(RenderError::Invalid)?;
        let (css_width, css_height) = even_dimensions(media, composition.width, composition.height);
        let capture = match image_format {
            VideoImageFormat::Jpeg => Some(CaptureFormat::Jpeg {
                quality: media.jpeg_quality,
            }),
            VideoImageFormat::Png => Some(CaptureFormat::Png),
            VideoImageFormat::None => None,
        };
        let width = (css_width as f64 * media.scale).round() as u32;
        let height = (css_height as f64 * media.scale).round() as u32;
        let output_fps = composition.fps / media.every_nth_frame as f64;
        let audio = match output.audio_codec {
            Some(a) if !media.muted => Some(AudioSettings::new(a, media.audio_bitrate.as_deref())?),
            _ => None,
        };
        let video = if media.codec.is_audio_only() {
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
        Ok(MediaPlan {
            tabs: tabs_wanted.min(frames.len()).max(1),
            output,
            frames,
            image_format,
            capture,
            viewport: PageViewport {
                width: css_width,
                height: css_height,
                scale: media.scale,
            },
            width,
            height,
            output_fps,
            video,
            audio,
            every_nth_frame: media.every_nth_frame,
            enforce_audio_track: media.enforce_audio_track,
            metadata: encode::metadata_tags(&media.metadata),
            composition,
        })
    }

    /// Frames in the output.
    pub fn total(&self) -> u64 {
        self.frames.len() as u64
    }

    /// Every frame of the plan as one range.
    pub fn whole(&self) -> ChunkRange {
        ChunkRange {
            first: 0,
            last: self.total() - 1,
        }
    }

    /// The audio codec the output gets: none when muted.
    pub fn audio_codec(&self) -> Option<AudioCodec> {
        self.audio.map(|a| a.codec)
    }

    /// Refuses an output name whose container cannot hold this render's codecs.
    pub fn check_output_name(&self, output: &std::path::Path) -> Result<(), RenderError> {
        if let Some(name) = output.file_name().and_then(|n| n.to_str())
            && output.extension().is_some()
        {
            encode::validate_output_name(name, self.output.codec, self.audio_codec())?;
        }
        Ok(())
    }
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
