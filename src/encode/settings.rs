//! From render options to validated encoder settings, with the renderer's refusals.

use std::collections::BTreeMap;

use ff::format::Pixel;
use ffmpeg_next as ff;

use super::codec::{resolve_audio_codec, traits};
use super::{EncodeError, MADE_WITH, init};
use crate::options::{
    Codec, ColorSpace, MediaOptions, PixelFormat, ProResProfile, VideoImageFormat, X264Preset,
    parse_bitrate,
};

/// A frame rate as a fraction, from the composition's floating-point fps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRate {
    pub num: i32,
    pub den: i32,
}

impl FrameRate {
    pub fn from_fps(fps: f64) -> FrameRate {
        // NTSC rates (29.97 = 30000/1001) are common; keep them exact.
        let ntsc = fps * 1001.0;
        if (ntsc - (ntsc / 1000.0).round() * 1000.0).abs() < 0.5 && (ntsc / 1000.0).round() > 0.0 {
            return FrameRate {
                num: ((ntsc / 1000.0).round() * 1000.0) as i32,
                den: 1001,
            }
            .reduced();
        }
        FrameRate {
            num: (fps * 1000.0).round() as i32,
            den: 1000,
        }
        .reduced()
    }

    fn reduced(self) -> FrameRate {
        fn gcd(a: i32, b: i32) -> i32 {
            if b == 0 { a.abs() } else { gcd(b, a % b) }
        }
        let g = gcd(self.num, self.den).max(1);
        FrameRate {
            num: self.num / g,
            den: self.den / g,
        }
    }

    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    pub(crate) fn rational(self) -> ff::Rational {
        ff::Rational::new(self.num, self.den)
    }

    /// One tick per frame.
    pub(crate) fn time_base(self) -> ff::Rational {
        ff::Rational::new(self.den, self.num)
    }
}

/// Overrides the encoder's thread count (default: the CPUs).
pub const ENCODER_THREADS_ENV: &str = "CLOUDRUN_RENDER_ENCODER_THREADS";

fn encoder_threads() -> usize {
    std::env::var(ENCODER_THREADS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| crate::system::cpu_count().max(1))
}

/// Container tags like the renderer's: keys lowercased, a `comment` that credits us first.
pub fn metadata_tags(user: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::from([("comment".to_string(), MADE_WITH.to_string())]);
    for (k, v) in user {
        let key = k.to_lowercase();
        if key == "comment" {
            metadata.insert(key, format!("{MADE_WITH}; {v}"));
        } else {
            metadata.insert(key, v.clone());
        }
    }
    metadata
}

/// The resolved, validated video encoding settings of one render.
#[derive(Debug, Clone)]
pub struct VideoSettings {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub frame_rate: FrameRate,
    /// As asked (default `yuv420p`); [`VideoSettings::encoder_pixel`] is what libav gets.
    pub pixel_format: PixelFormat,
    pub crf: Option<f64>,
    pub bitrate: Option<u64>,
    pub max_rate: Option<u64>,
    pub buffer_size: Option<u64>,
    pub preset: Option<X264Preset>,
    pub prores_profile: ProResProfile,
    pub gop_size: Option<u32>,
    pub color_space: ColorSpace,
    pub gif_loops: Option<u32>,
    /// Frames are PNGs, so they may carry alpha (kept for alpha formats and gif).
    pub png_frames: bool,
    pub metadata: BTreeMap<String, String>,
    /// Encoder threads. Capture runs beside the encoder, so more than the CPUs only adds
    /// contention and per-thread frame buffers.
    pub threads: usize,
}

impl VideoSettings {
    /// The pixel format the encoder is opened with.
    pub fn encoder_pixel(&self) -> Pixel {
        match self.codec {
            // prores_ks takes only 4:2:2/4:4:4 10-bit. The ffmpeg CLI silently swaps 4:2:0 for
            // 4:2:2 10-bit; we do the same, except that the 4444 profiles get the 4:4:4 they
            // are named after.
            Codec::Prores => match self.pixel_format {
                PixelFormat::Yuva444p10le => Pixel::YUVA444P10LE,
                PixelFormat::Yuv444p | PixelFormat::Yuv444p10le => Pixel::YUV444P10LE,
                PixelFormat::Yuv422p | PixelFormat::Yuv422p10le => Pixel::YUV422P10LE,
                _ if self.prores_profile.is_4444() => Pixel::YUV444P10LE,
                _ => Pixel::YUV422P10LE,
            },
            Codec::Gif => Pixel::PAL8,
            _ => pixel_for(self.pixel_format),
        }
    }

    /// The pixel format prepared frames have: the encoder's, or packed RGB(A) for the gif
    /// palette filter.
    pub(crate) fn prepared_pixel(&self) -> Pixel {
        match self.codec {
            Codec::Gif if self.png_frames => Pixel::RGBA,
            Codec::Gif => Pixel::RGB24,
            _ => self.encoder_pixel(),
        }
    }
}

impl ProResProfile {
    fn is_4444(self) -> bool {
        matches!(
            self,
            ProResProfile::ProRes4444 | ProResProfile::XqProRes4444
        )
    }
}

fn pixel_for(pf: PixelFormat) -> Pixel {
    match pf {
        PixelFormat::Yuv420p => Pixel::YUV420P,
        PixelFormat::Yuva420p => Pixel::YUVA420P,
        PixelFormat::Yuv422p => Pixel::YUV422P,
        PixelFormat::Yuv444p => Pixel::YUV444P,
        PixelFormat::Yuv420p10le => Pixel::YUV420P10LE,
        PixelFormat::Yuv422p10le => Pixel::YUV422P10LE,
        PixelFormat::Yuv444p10le => Pixel::YUV444P10LE,
        PixelFormat::Yuva444p10le => Pixel::YUVA444P10LE,
    }
}

/// The image format frames are captured in for this render (`none` for audio-only codecs).
pub fn resolve_image_format(
    media: &MediaOptions,
    composition_default: Option<&str>,
) -> VideoImageFormat {
    if media.codec.is_audio_only() {
        return VideoImageFormat::None;
    }
    media
        .image_format
        .or_else(|| composition_default.and_then(|d| d.parse().ok()))
        .unwrap_or(VideoImageFormat::Jpeg)
}

fn is_h264(codec: Codec) -> bool {
    matches!(codec, Codec::H264 | Codec::H264Mkv | Codec::H264Ts)
}

/// Checks the option combinations the renderer refuses, before any frame is captured.
pub fn validate(media: &MediaOptions, image_format: VideoImageFormat) -> Result<(), EncodeError> {
    let codec = media.codec;
    let t = traits(codec);
    let bad = |m: String| Err(EncodeError::InvalidOption(m));
    // A crf of 0 is falsy in the renderer and slips through this check; so it does here.
    if media.crf.is_some() && media.video_bitrate.is_some() && media.crf != Some(0.0) {
        return bad(
            "\"crf\" and \"videoBitrate\" can not both be set. Choose one of either.".into(),
        );
    }
    if media.encoding_max_rate.is_some() && media.encoding_buffer_size.is_none() {
        return bad(
            "\"encodingMaxRate\" can not be set without also setting \"encodingBufferSize\"."
                .into(),
        );
    }
    if let Some(crf) = media.crf {
        match t.crf_range {
            None if !codec.is_audio_only() => {
                return bad(format!(
                    "The \"{codec}\" codec does not support the --crf option (\"crf\")."
                ));
            }
            Some(_) if is_h264(codec) && crf == 0.0 => {
                return bad("Setting the CRF (\"crf\") to 0 with a H264 codec is not supported anymore because of it's inconsistencies between platforms. Videos with CRF 0 cannot be played on iOS/macOS. 0 is a extreme value with inefficient settings which you probably do not want. Set CRF to a higher value to fix this error.".into());
            }
            Some((lo, hi)) if !crf.is_finite() || !(lo..=hi).contains(&crf) => {
                return bad(format!(
                    "CRF (\"crf\") must be between {lo} and {hi} for codec {codec}. Passed: {crf}"
                ));
            }
            _ => {}
        }
    }
    for (field, value) in [
        ("videoBitrate", &media.video_bitrate),
        ("audioBitrate", &media.audio_bitrate),
        ("encodingMaxRate", &media.encoding_max_rate),
        ("encodingBufferSize", &media.encoding_buffer_size),
    ] {
        if let Some(v) = value {
            parse_bitrate(v)
                .map_err(|e| EncodeError::InvalidOption(format!("\"{field}\": {e}")))?;
        }
    }
    if media.jpeg_quality > 100 {
        return bad(format!(
            "\"jpegQuality\" must be between 0 and 100, got {}",
            media.jpeg_quality
        ));
    }
    if media.prores_profile.is_some() && codec != Codec::Prores {
        return bad(format!(
            "You have set a ProRes profile (\"proResProfile\") but the codec is \"{codec}\". Set the codec to \"prores\" or remove the ProRes profile."
        ));
    }
    if media.x264_preset.is_some() && !is_h264(codec) {
        return bad(format!(
            "You have set a x264 preset (\"x264Preset\") but the codec is \"{codec}\". Set the codec to \"h264\" or remove the preset."
        ));
    }
    if media.gop_size == Some(0) {
        return bad("\"gopSize\" must be a positive integer, got 0".into());
    }
    if let Some(pf) = media.pixel_format {
        validate_pixel_format(media, pf, image_format)?;
    }
    if media.number_of_gif_loops.is_some() && codec != Codec::Gif {
        return bad(format!(
            "\"numberOfGifLoops\" can only be set if the codec is \"gif\", but it is \"{codec}\"."
        ));
    }
    if !codec.is_audio_only() && image_format == VideoImageFormat::None {
        return bad(format!(
            "The image format (\"imageFormat\") \"none\" can only be used with audio codecs, not with \"{codec}\"."
        ));
    }
    resolve_audio_codec(codec, media.audio_codec, media.prefer_lossless)?;
    Ok(())
}

fn validate_pixel_format(
    media: &MediaOptions,
    pf: PixelFormat,
    image_format: VideoImageFormat,
) -> Result<(), EncodeError> {
    let codec = media.codec;
    let bad = |m: String| Err(EncodeError::InvalidOption(m));
    if pf == PixelFormat::Yuva420p && !matches!(codec, Codec::Vp8 | Codec::Vp9) {
        return bad(format!(
            "Pixel format (\"pixelFormat\") was set to 'yuva420p' but codec {codec} does not support it. Supported codecs: vp8, vp9."
        ));
    }
    if pf.has_alpha() && image_format != VideoImageFormat::Png {
        return bad(format!(
            "Pixel format (\"pixelFormat\") was set to '{pf}', which is a transparent format. To render transparent videos, you need to set PNG as the image format (\"imageFormat\")."
        ));
    }
    match codec {
        // The renderer passes no pixel format to the gif encoder; neither do we.
        Codec::Gif => Ok(()),
        Codec::Prores => match media.prores_profile {
            // prores_ks would silently drop the alpha plane with a profile that has none.
            Some(p) if pf.has_alpha() && !p.is_4444() => bad(format!(
                "Pixel format (\"pixelFormat\") '{pf}' keeps transparency only with the ProRes profiles \"4444\" and \"4444-xq\", but the ProRes profile (\"proResProfile\") is \"{p}\"."
            )),
            _ => Ok(()),
        },
        _ if codec.is_audio_only() => Ok(()),
        _ => {
            let name = traits(codec).video_encoder.expect("a video codec");
            init();
            let encoder = ff::encoder::find_by_name(name)
                .ok_or_else(|| EncodeError::MissingEncoder(name.into()))?;
            let supported: Vec<Pixel> = encoder
                .video()
                .ok()
                .and_then(|v| v.formats().map(Iterator::collect))
                .unwrap_or_default();
            if supported.contains(&pixel_for(pf)) {
                return Ok(());
            }
            let names: Vec<&str> = PixelFormat::ALL
                .iter()
                .filter(|p| supported.contains(&pixel_for(**p)))
                .map(|p| p.as_str())
                .collect();
            bad(format!(
                "Pixel format (\"pixelFormat\") '{pf}' is not supported by codec {codec}. Supported: {}.",
                names.join(", ")
            ))
        }
    }
}

fn bitrate(field: &str, value: &Option<String>) -> Result<Option<u64>, EncodeError> {
    value
        .as_deref()
        .map(parse_bitrate)
        .transpose()
        .map_err(|e| EncodeError::InvalidOption(format!("\"{field}\": {e}")))
}

/// Resolves the encoding settings for an output of `width`×`height` pixels at `fps`.
pub fn settings(
    media: &MediaOptions,
    image_format: VideoImageFormat,
    width: u32,
    height: u32,
    fps: f64,
) -> Result<VideoSettings, EncodeError> {
    let codec = media.codec;
    let t = traits(codec);
    if codec == Codec::Gif && fps > 50.0 {
        return Err(EncodeError::InvalidOption(format!(
            "The FPS for a GIF cannot be higher than 50. Use the --every-nth-frame option (\"everyNthFrame\") to lower the FPS (currently {fps})."
        )));
    }
    let mut video_bitrate = bitrate("videoBitrate", &media.video_bitrate)?;
    let mut max_rate = bitrate("encodingMaxRate", &media.encoding_max_rate)?;
    let mut buffer_size = bitrate("encodingBufferSize", &media.encoding_buffer_size)?;
    if matches!(codec, Codec::Prores | Codec::Gif)
        && (video_bitrate.is_some() || max_rate.is_some() || buffer_size.is_some())
    {
        tracing::warn!(
            "{codec} has no rate control: \"videoBitrate\", \"encodingMaxRate\" and \"encodingBufferSize\" are ignored"
        );
        (video_bitrate, max_rate, buffer_size) = (None, None, None);
    }
    if codec == Codec::Gif && media.color_space != ColorSpace::Default {
        tracing::warn!(
            "gif has a palette, not a colour matrix: \"colorSpace\" {} is ignored",
            media.color_space
        );
    }
    let crf = match (media.crf, video_bitrate) {
        (_, Some(_)) => None,
        (Some(c), None) => Some(c),
        (None, None) => t.default_crf,
    };
    let metadata = metadata_tags(&media.metadata);
    let pixel_format = media.pixel_format.unwrap_or(PixelFormat::Yuv420p);
    let prores_profile = media.prores_profile.unwrap_or(
        // Asking for a transparent ProRes without a profile means the profile that has alpha.
        if pixel_format == PixelFormat::Yuva444p10le {
            ProResProfile::ProRes4444
        } else {
            ProResProfile::Hq
        },
    );
    Ok(VideoSettings {
        codec,
        width,
        height,
        frame_rate: FrameRate::from_fps(fps),
        pixel_format,
        crf,
        bitrate: video_bitrate,
        max_rate,
        buffer_size,
        preset: media.x264_preset,
        prores_profile,
        gop_size: media.gop_size,
        color_space: media.color_space,
        gif_loops: media.number_of_gif_loops,
        png_frames: image_format == VideoImageFormat::Png,
        metadata,
        threads: encoder_threads(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rates() {
        assert_eq!(FrameRate::from_fps(30.0), FrameRate { num: 30, den: 1 });
        assert_eq!(FrameRate::from_fps(15.0), FrameRate { num: 15, den: 1 });
        assert_eq!(
            FrameRate::from_fps(29.97002997),
            FrameRate {
                num: 30000,
                den: 1001
            }
        );
        assert_eq!(FrameRate::from_fps(12.5), FrameRate { num: 25, den: 2 });
        assert_eq!(
            FrameRate::from_fps(23.976),
            FrameRate {
                num: 24000,
                den: 1001
            }
        );
    }

    fn refusal(m: &MediaOptions, image_format: VideoImageFormat) -> String {
        validate(m, image_format)
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn validation_names_the_option() {
        let mut m = MediaOptions::new("x");
        m.crf = Some(20.0);
        m.video_bitrate = Some("1M".into());
        assert!(refusal(&m, VideoImageFormat::Jpeg).contains("\"crf\""));
        let mut m = MediaOptions::new("x");
        m.crf = Some(60.0);
        assert!(refusal(&m, VideoImageFormat::Jpeg).contains("between 1 and 51"));
        let mut m = MediaOptions::new("x");
        m.prores_profile = Some(ProResProfile::Light);
        assert!(refusal(&m, VideoImageFormat::Jpeg).contains("proResProfile"));
        let mut m = MediaOptions::new("x");
        m.encoding_max_rate = Some("2M".into());
        assert!(refusal(&m, VideoImageFormat::Jpeg).contains("encodingBufferSize"));
        let mut m = MediaOptions::new("x");
        m.codec = Codec::Vp8;
        m.pixel_format = Some(PixelFormat::Yuva420p);
        assert!(refusal(&m, VideoImageFormat::Jpeg).contains("PNG"));
        assert!(validate(&m, VideoImageFormat::Png).is_ok());
        let m = MediaOptions::new("x");
        assert!(validate(&m, VideoImageFormat::Jpeg).is_ok());
        let mut m = MediaOptions::new("x");
        m.jpeg_quality = 101;
        assert!(refusal(&m, VideoImageFormat::Jpeg).contains("\"jpegQuality\""));
        let mut m = MediaOptions::new("x");
        m.gop_size = Some(0);
        assert!(refusal(&m, VideoImageFormat::Jpeg).contains("\"gopSize\""));
        let mut m = MediaOptions::new("x");
        m.video_bitrate = Some("fast".into());
        assert!(refusal(&m, VideoImageFormat::Jpeg).contains("\"videoBitrate\""));
    }

    #[test]
    fn pixel_formats_are_checked_against_the_encoder() {
        let mut m = MediaOptions::new("x");
        m.codec = Codec::Vp8;
        m.pixel_format = Some(PixelFormat::Yuv444p);
        let e = refusal(&m, VideoImageFormat::Jpeg);
        assert!(
            e.contains("\"pixelFormat\"") && e.contains("yuva420p"),
            "{e}"
        );
        m.codec = Codec::H264;
        m.pixel_format = Some(PixelFormat::Yuva444p10le);
        let e = refusal(&m, VideoImageFormat::Png);
        assert!(
            e.contains("\"pixelFormat\"") && e.contains("yuv444p10le"),
            "{e}"
        );
        m.pixel_format = Some(PixelFormat::Yuv444p10le);
        assert!(validate(&m, VideoImageFormat::Jpeg).is_ok());
        m.codec = Codec::Prores;
        m.pixel_format = Some(PixelFormat::Yuva444p10le);
        m.prores_profile = Some(ProResProfile::Hq);
        let e = refusal(&m, VideoImageFormat::Png);
        assert!(e.contains("\"proResProfile\""), "{e}");
        m.prores_profile = None;
        assert!(validate(&m, VideoImageFormat::Png).is_ok());
    }

    #[test]
    fn prores_pixel_formats_follow_the_profile() {
        let mut m = MediaOptions::new("x");
        m.codec = Codec::Prores;
        let s = |m: &MediaOptions| {
            settings(m, VideoImageFormat::Png, 2, 2, 30.0)
                .unwrap()
                .encoder_pixel()
        };
        assert_eq!(s(&m), Pixel::YUV422P10LE);
        m.prores_profile = Some(ProResProfile::ProRes4444);
        assert_eq!(s(&m), Pixel::YUV444P10LE);
        m.pixel_format = Some(PixelFormat::Yuv422p10le);
        assert_eq!(s(&m), Pixel::YUV422P10LE);
        m.prores_profile = None;
        m.pixel_format = Some(PixelFormat::Yuva444p10le);
        assert_eq!(s(&m), Pixel::YUVA444P10LE);
        let resolved = settings(&m, VideoImageFormat::Png, 2, 2, 30.0).unwrap();
        assert_eq!(resolved.prores_profile, ProResProfile::ProRes4444);
    }

    #[test]
    fn metadata_is_lowercased_and_comment_is_prefixed() {
        let mut m = MediaOptions::new("x");
        m.metadata.insert("Author".into(), "me".into());
        m.metadata.insert("COMMENT".into(), "hi".into());
        let s = settings(&m, VideoImageFormat::Jpeg, 2, 2, 30.0).unwrap();
        assert_eq!(s.metadata["author"], "me");
        assert_eq!(s.metadata["comment"], format!("{MADE_WITH}; hi"));
        assert_eq!(s.crf, Some(18.0));
    }

    #[test]
    fn rate_control_is_ignored_where_the_renderer_ignores_it() {
        let mut m = MediaOptions::new("x");
        m.codec = Codec::Prores;
        m.video_bitrate = Some("5M".into());
        let s = settings(&m, VideoImageFormat::Jpeg, 2, 2, 30.0).unwrap();
        assert_eq!((s.bitrate, s.crf), (None, None));
        m.codec = Codec::Vp9;
        let s = settings(&m, VideoImageFormat::Jpeg, 2, 2, 30.0).unwrap();
        assert_eq!((s.bitrate, s.crf), (Some(5_000_000), None));
        m.codec = Codec::Gif;
        let e = settings(&m, VideoImageFormat::Jpeg, 2, 2, 60.0).unwrap_err();
        assert!(e.to_string().contains("\"everyNthFrame\""), "{e}");
    }
}
