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

    /// Why this output is never rendered in chunks, if it is not.
    pub fn unchunkable(&self) -> Option<&'static str> {
        if self.video.is_none() {
            return Some(
                "an audio-only output has no video to split: its frames are only visited for their audio, which is mixed once anyway",
            );
        }
        if encode::chunk_container(self.output.codec).is_none() {
            return Some(
                "gif frames are written as differences to the frame before, so gif chunks cannot be joined without re-encoding",
            );
        }
        None
    }

    /// The plan's frames in contiguous ranges of `frames_per_chunk` (the last may be
    /// shorter); one range when the output is never chunked.
    pub fn chunks(&self, frames_per_chunk: u64) -> Vec<ChunkRange> {
        let total = self.total();
        if self.unchunkable().is_some() || frames_per_chunk == 0 {
            return vec![self.whole()];
        }
        (0..total)
            .step_by(frames_per_chunk as usize)
            .map(|first| ChunkRange {
                first,
                last: (first + frames_per_chunk - 1).min(total - 1),
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{Concurrency, FrameRange};

    fn composition(width: u32, height: u32, fps: f64, frames: u64) -> ResolvedComposition {
        let info = CompositionInfo {
            id: "Frames".into(),
            width,
            height,
            fps,
            duration_in_frames: frames,
            default_codec: None,
            default_out_name: None,
            default_video_image_format: None,
            default_pixel_format: None,
            default_pro_res_profile: None,
            default_sample_rate: None,
            serialized_resolved_props_with_custom_schema: r#"{"computed":true}"#.into(),
            serialized_default_props_with_custom_schema: "{}".into(),
        };
        ResolvedComposition::new(info, &CompositionOverrides::default()).unwrap()
    }

    fn plan(media: &MediaOptions, frames: u64) -> MediaPlan {
        MediaPlan::new(media, composition(640, 360, 30.0, frames), 2).unwrap()
    }

    #[test]
    fn chunks_are_contiguous_ranges_of_output_positions() {
        let m = MediaOptions::new("Frames");
        let p = plan(&m, 90);
        let ranges: Vec<(u64, u64)> = p.chunks(23).iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(ranges, [(0, 22), (23, 45), (46, 68), (69, 89)]);
        assert_eq!(p.chunks(90), [p.whole()]);
        assert_eq!(p.chunks(1000), [p.whole()]);
        assert_eq!(p.chunks(1).len(), 90);

        // Positions, not frame numbers: frames 10, 13, …, 37 are positions 0..=9.
        let mut m = MediaOptions::new("Frames");
        m.frame_range = FrameRange::Ranges(vec![(10, Some(39))]);
        m.every_nth_frame = 3;
        let p = plan(&m, 90);
        assert_eq!(p.frames, (10..40).step_by(3).collect::<Vec<_>>());
        let ranges: Vec<(u64, u64)> = p.chunks(4).iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(ranges, [(0, 3), (4, 7), (8, 9)]);
        assert_eq!(p.output_fps, 10.0);
    }

    #[test]
    fn gif_and_audio_only_outputs_are_one_chunk() {
        let mut m = MediaOptions::new("Frames");
        m.codec = Codec::Gif;
        let p = plan(&m, 90);
        assert!(p.unchunkable().unwrap().contains("gif"));
        assert_eq!(p.chunks(10), [p.whole()]);
        m.codec = Codec::Mp3;
        let p = plan(&m, 90);
        assert!(p.unchunkable().unwrap().contains("audio-only"));
        assert_eq!(p.chunks(10), [p.whole()]);
        for codec in [
            Codec::H264,
            Codec::H265,
            Codec::Vp8,
            Codec::Vp9,
            Codec::Prores,
        ] {
            m.codec = codec;
            assert_eq!(plan(&m, 90).unchunkable(), None, "{codec}");
        }
    }

    #[test]
    fn a_worker_builds_the_same_plan_from_the_serialized_composition() {
        let c = composition(641, 361, 30.0, 30);
        let json = serde_json::to_string(&c).unwrap();
        let received: ResolvedComposition = serde_json::from_str(&json).unwrap();
        assert_eq!(received, c);
        assert_eq!(
            received.info.serialized_resolved_props_with_custom_schema,
            r#"{"computed":true}"#
        );
        let m = MediaOptions::new("Frames");
        let (a, b) = (
            MediaPlan::new(&m, c, 2).unwrap(),
            MediaPlan::new(&m, received, 2).unwrap(),
        );
        assert_eq!((a.width, a.height), (640, 360), "h264 needs even sizes");
        assert_eq!((a.frames, a.width, a.height), (b.frames, b.width, b.height));
        let range: ChunkRange = serde_json::from_str(r#"{"first":3,"last":9}"#).unwrap();
        assert_eq!(range.frames(), 7);
    }

    #[test]
    fn the_output_is_resolved_from_the_options_alone() {
        let mut m = MediaOptions::new("Frames");
        let f = OutputFormat::resolve(&m).unwrap();
        assert_eq!((f.extension, f.default_name()), ("mp4", "out.mp4".into()));
        assert_eq!(f.audio_codec, Some(AudioCodec::Aac));
        assert_eq!(OutputFormat::content_type("x/out.mp4"), "video/mp4");
        m.prefer_lossless = true;
        assert_eq!(OutputFormat::resolve(&m).unwrap().extension, "mkv");
        assert_eq!(
            f.container_for(std::path::Path::new("a.mkv")),
            "matroska",
            "the name decides the container"
        );
        m.codec = Codec::Wav;
        m.muted = true;
        let e = preflight(&m, 2).unwrap_err();
        assert!(e.to_string().contains("neither audio nor video"), "{e}");
        let mut m = MediaOptions::new("Frames");
        m.concurrency = Concurrency::Count(3.0);
        assert!(preflight(&m, 2).is_err());
        m.muted = true;
        m.concurrency = Concurrency::Default;
        let p = plan(&m, 10);
        assert!(p.audio.is_none() && p.video.is_some());
    }
}
