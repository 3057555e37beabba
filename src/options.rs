//! Render options as plain Rust types.
//!
//! These are what every stage works with. The wire JSON (`api::wire`) and the CLI flags
//! (`cli`) are both converted into these types once, at their boundary, and nothing
//! inside the pipeline ever sees a string-typed option again.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Declares a closed set of string-named options with `FromStr`, `as_str` and `ALL`.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The accepted spellings, for error messages.
            pub fn names() -> String {
                Self::ALL.iter().map(|v| format!("\"{}\"", v.as_str())).collect::<Vec<_>>().join(", ")
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("\"{}\" is not one of {}", s, Self::names())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// Output codec, with the names Remotion uses.
    Codec {
        H264 = "h264",
        H265 = "h265",
        Vp8 = "vp8",
        Vp9 = "vp9",
        Mp3 = "mp3",
        Aac = "aac",
        Wav = "wav",
        Prores = "prores",
        H264Mkv = "h264-mkv",
        H264Ts = "h264-ts",
        Gif = "gif",
    }
);

impl Codec {
    /// Audio-only codecs capture no pixels: frames are only stepped to collect audio assets.
    pub fn is_audio_only(self) -> bool {
        matches!(self, Codec::Mp3 | Codec::Aac | Codec::Wav)
    }

    /// The H.264/H.265 family needs even frame dimensions.
    pub fn needs_even_dimensions(self) -> bool {
        matches!(
            self,
            Codec::H264 | Codec::H265 | Codec::H264Mkv | Codec::H264Ts
        )
    }
}

named_enum!(
    AudioCodec {
        Pcm16 = "pcm-16",
        Aac = "aac",
        Mp3 = "mp3",
        Opus = "opus",
    }
);

named_enum!(
    /// How each video frame is captured from the page.
    VideoImageFormat {
        Png = "png",
        Jpeg = "jpeg",
        None = "none",
    }
);

named_enum!(
    StillImageFormat {
        Png = "png",
        Jpeg = "jpeg",
        Webp = "webp",
        Pdf = "pdf",
    }
);

impl StillImageFormat {
    pub fn extension(self) -> &'static str {
        self.as_str()
    }

    pub fn content_type(self) -> &'static str {
        match self {
            StillImageFormat::Png => "image/png",
            StillImageFormat::Jpeg => "image/jpeg",
            StillImageFormat::Webp => "image/webp",
            StillImageFormat::Pdf => "application/pdf",
        }
    }
}

named_enum!(
    PixelFormat {
        Yuv420p = "yuv420p",
        Yuva420p = "yuva420p",
        Yuv422p = "yuv422p",
        Yuv444p = "yuv444p",
        Yuv420p10le = "yuv420p10le",
        Yuv422p10le = "yuv422p10le",
        Yuv444p10le = "yuv444p10le",
        Yuva444p10le = "yuva444p10le",
    }
);

impl PixelFormat {
    pub fn has_alpha(self) -> bool {
        matches!(self, PixelFormat::Yuva420p | PixelFormat::Yuva444p10le)
    }
}

named_enum!(
    ProResProfile {
        XqProRes4444 = "4444-xq",
        ProRes4444 = "4444",
        Hq = "hq",
        Standard = "standard",
        Light = "light",
        Proxy = "proxy",
    }
);

impl ProResProfile {
    /// The `prores_ks` `profile` number.
    pub fn ffmpeg_profile(self) -> i32 {
        match self {
            ProResProfile::XqProRes4444 => 5,
            ProResProfile::ProRes4444 => 4,
            ProResProfile::Hq => 3,
            ProResProfile::Standard => 2,
            ProResProfile::Light => 1,
            ProResProfile::Proxy => 0,
        }
    }
}

named_enum!(
    X264Preset {
        Ultrafast = "ultrafast",
        Superfast = "superfast",
        Veryfast = "veryfast",
        Faster = "faster",
        Fast = "fast",
        Medium = "medium",
        Slow = "slow",
        Slower = "slower",
        Veryslow = "veryslow",
        Placebo = "placebo",
    }
);

named_enum!(
    ColorSpace {
        Default = "default",
        Bt709 = "bt709",
        Bt2020Ncl = "bt2020-ncl",
        Bt2020Cl = "bt2020-cl",
    }
);

named_enum!(
    LogLevel {
        Trace = "trace",
        Verbose = "verbose",
        Info = "info",
        Warn = "warn",
        Error = "error",
    }
);

impl LogLevel {
    /// Verbose and trace forward the page's console to our log.
    pub fn forwards_page_console(self) -> bool {
        matches!(self, LogLevel::Trace | LogLevel::Verbose)
    }
}

named_enum!(
    /// `chromiumOptions.gl`: the OpenGL backend flag Chromium is launched with.
    GlRenderer {
        Swangle = "swangle",
        Angle = "angle",
        Egl = "egl",
        Swiftshader = "swiftshader",
        Vulkan = "vulkan",
        AngleEgl = "angle-egl",
    }
);

named_enum!(
    Privacy {
        Public = "public",
        Private = "private",
        NoAcl = "no-acl",
    }
);

/// `concurrency`: how many tabs render frames at once.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Concurrency {
    /// The renderer's default: `round(min(8, max(1, cpus / 2)))`.
    #[default]
    Default,
    Count(f64),
    /// `"50%"` → half of the CPUs.
    Percent(f64),
}

impl FromStr for Concurrency {
    type Err = String;

    /// Accepts `N` or `P%` (the CLI and a string-valued `concurrency` field).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let valid = !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit() || c == '.')
                && p.chars().filter(|&c| c == '.').count() <= 1;
            match p.parse::<f64>() {
                Ok(v) if valid => Ok(Concurrency::Percent(v)),
                _ => Err(format!("\"{s}\" is not a percentage like \"50%\"")),
            }
        } else {
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Concurrency::Count(v)),
                _ => Err(format!(
                    "\"{s}\" is neither a number nor a percentage like \"50%\""
                )),
            }
        }
    }
}

impl Concurrency {
    /// Resolves to a tab count for a machine with `cpus` CPUs, with the renderer's errors.
    pub fn resolve(self, cpus: usize) -> Result<usize, String> {
        let cpus_f = cpus as f64;
        let n = match self {
            Concurrency::Default => (cpus_f / 2.0).clamp(1.0, 8.0).round(),
            Concurrency::Count(n) => n.floor(),
            Concurrency::Percent(p) => (p / 100.0 * cpus_f).floor(),
        };
        if n > cpus_f {
            return Err(format!(
                "Maximum for --concurrency is {cpus} (number of cores on this system)"
            ));
        }
        if n < 1.0 {
            return Err("Minimum for concurrency is 1.".to_string());
        }
        Ok(n as usize)
    }
}

/// `frameRange`: which composition frames to render.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum FrameRange {
    #[default]
    All,
    Single(u64),
    /// Inclusive ranges, ordered and non-overlapping; only the last may be open (`None`).
    Ranges(Vec<(u64, Option<u64>)>),
}

impl FromStr for FrameRange {
    type Err = String;

    /// The CLI's `--frames`: `N`, `A-B`, `A-`, or several comma-separated.
    fn from_str(s: &str) -> Result<Self, String> {
        let parse_n = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("\"{t}\" in --frames is not a non-negative integer"))
        };
        let parts: Vec<&str> = s.split(',').collect();
        if parts.len() == 1 && !s.contains('-') {
            return Ok(FrameRange::Single(parse_n(s)?));
        }
        let mut ranges = Vec::new();
        for part in parts {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a, Some(b)),
                None => (part, None),
            };
            let start = parse_n(a)?;
            let end = match b {
                None => Some(start),
                Some(b) if b.trim().is_empty() => None,
                Some(b) => Some(parse_n(b)?),
            };
            ranges.push((start, end));
        }
        let range = FrameRange::Ranges(ranges);
        range.validate_shape()?;
        Ok(range)
    }
}

impl FrameRange {
    /// Checks what can be checked without knowing the composition's duration.
    pub fn validate_shape(&self) -> Result<(), String> {
        let FrameRange::Ranges(ranges) = self else {
            return Ok(());
        };
        if ranges.is_empty() {
            return Err("frameRange must contain at least one range".into());
        }
        let mut previous_end: Option<u64> = None;
        for (i, (start, end)) in ranges.iter().enumerate() {
            match end {
                Some(end) if end < start => {
                    return Err(format!(
                        "frameRange: the end {end} is before the start {start}"
                    ));
                }
                None if i + 1 != ranges.len() => {
                    return Err("frameRange: only the last range may be open-ended".into());
                }
                _ => {}
            }
            if let Some(prev) = previous_end
                && *start <= prev
            {
                return Err(
                    "frameRange: ranges must be in ascending order and must not overlap".into(),
                );
            }
            previous_end = *end;
        }
        Ok(())
    }
}

/// `downloadBehavior`: how a browser opening the output URL should treat it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum DownloadBehavior {
    #[default]
    PlayInBrowser,
    Download {
        file_name: Option<String>,
    },
}

/// `chromiumOptions`. The options that need launch flags get a browser of their own.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChromiumOptions {
    pub gl: Option<GlRenderer>,
    pub ignore_certificate_errors: bool,
    pub disable_web_security: bool,
    /// `false` asks for a headed browser; there is no display on Cloud Run, so we log and stay headless.
    pub headless: bool,
    pub user_agent: Option<String>,
    pub dark_mode: bool,
}

impl ChromiumOptions {
    pub fn headless_default() -> Self {
        ChromiumOptions {
            headless: true,
            ..Default::default()
        }
    }
}

/// Where the composition comes from and how to open it: shared by media, still and listing.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// An http(s) serve URL, or a local bundle directory (CLI only).
    pub serve_url: String,
    pub serialized_input_props: String,
    pub env_variables: BTreeMap<String, String>,
    pub chromium: ChromiumOptions,
    /// `delayRenderTimeoutInMilliseconds`.
    pub timeout: Duration,
    pub log_level: LogLevel,
    pub offthread_video_cache_size_in_bytes: Option<u64>,
    pub offthread_video_threads: Option<u32>,
}

impl SiteOptions {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30_000);

    pub fn new(serve_url: impl Into<String>) -> Self {
        SiteOptions {
            serve_url: serve_url.into(),
            serialized_input_props: "{}".into(),
            env_variables: BTreeMap::new(),
            chromium: ChromiumOptions::headless_default(),
            timeout: Self::DEFAULT_TIMEOUT,
            log_level: LogLevel::Info,
            offthread_video_cache_size_in_bytes: None,
            offthread_video_threads: None,
        }
    }
}

/// Overrides of the composition's own metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompositionOverrides {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    pub duration_in_frames: Option<u64>,
}

/// Everything that decides how a video (or audio-only) file is made.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    pub composition_id: String,
    pub overrides: CompositionOverrides,
    pub codec: Codec,
    pub audio_codec: Option<AudioCodec>,
    pub audio_bitrate: Option<String>,
    pub video_bitrate: Option<String>,
    pub encoding_max_rate: Option<String>,
    pub encoding_buffer_size: Option<String>,
    pub crf: Option<f64>,
    pub pixel_format: Option<PixelFormat>,
    pub image_format: Option<VideoImageFormat>,
    pub jpeg_quality: u8,
    pub scale: f64,
    pub prores_profile: Option<ProResProfile>,
    pub x264_preset: Option<X264Preset>,
    pub gop_size: Option<u32>,
    pub every_nth_frame: u32,
    pub number_of_gif_loops: Option<u32>,
    pub frame_range: FrameRange,
    pub muted: bool,
    pub enforce_audio_track: bool,
    pub prefer_lossless: bool,
    pub concurrency: Concurrency,
    pub color_space: ColorSpace,
    pub metadata: BTreeMap<String, String>,
}

impl MediaOptions {
    pub const DEFAULT_JPEG_QUALITY: u8 = 80;

    pub fn new(composition_id: impl Into<String>) -> Self {
        MediaOptions {
            composition_id: composition_id.into(),
            overrides: CompositionOverrides::default(),
            codec: Codec::H264,
            audio_codec: None,
            audio_bitrate: None,
            video_bitrate: None,
            encoding_max_rate: None,
            encoding_buffer_size: None,
            crf: None,
            pixel_format: None,
            image_format: None,
            jpeg_quality: Self::DEFAULT_JPEG_QUALITY,
            scale: 1.0,
            prores_profile: None,
            x264_preset: None,
            gop_size: None,
            every_nth_frame: 1,
            number_of_gif_loops: None,
            frame_range: FrameRange::All,
            muted: false,
            enforce_audio_track: false,
            prefer_lossless: false,
            concurrency: Concurrency::Default,
            color_space: ColorSpace::Default,
            metadata: BTreeMap::new(),
        }
    }
}

/// A single still image.
#[derive(Debug, Clone)]
pub struct StillOptions {
    pub composition_id: String,
    pub overrides: CompositionOverrides,
    /// Negative counts from the end: -1 is the last frame.
    pub frame: i64,
    pub image_format: StillImageFormat,
    pub jpeg_quality: u8,
    pub scale: f64,
}

impl StillOptions {
    pub fn new(composition_id: impl Into<String>) -> Self {
        StillOptions {
            composition_id: composition_id.into(),
            overrides: CompositionOverrides::default(),
            frame: 0,
            image_format: StillImageFormat::Png,
            jpeg_quality: MediaOptions::DEFAULT_JPEG_QUALITY,
            scale: 1.0,
        }
    }
}

/// Where the service puts a finished file, and how.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub bucket: String,
    pub out_name: Option<String>,
    pub privacy: Privacy,
    pub download_behavior: DownloadBehavior,
    pub render_id_override: Option<String>,
}

/// `renderStatusWebhook`.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// The caller's `data`, echoed into every call.
    pub data: serde_json::Value,
    pub progress_interval: f64,
}

/// Parses a bitrate the way ffmpeg reads Remotion's strings: `"5000k"`, `"5M"`, `"800000"`.
pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000.0),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000.0),
        _ => (s, 1.0),
    };
    match digits.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok((v * mult).round() as u64),
        _ => Err(format!(
            "\"{s}\" is not a bitrate: use a string like \"5000k\" or \"5M\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_resolves_like_the_renderer() {
        assert_eq!(Concurrency::Default.resolve(1), Ok(1));
        assert_eq!(Concurrency::Default.resolve(2), Ok(1));
        assert_eq!(Concurrency::Default.resolve(4), Ok(2));
        assert_eq!(Concurrency::Default.resolve(3), Ok(2));
        assert_eq!(Concurrency::Default.resolve(32), Ok(8));
        assert_eq!("50%".parse::<Concurrency>().unwrap().resolve(4), Ok(2));
        assert_eq!("100%".parse::<Concurrency>().unwrap().resolve(2), Ok(2));
        assert_eq!(Concurrency::Count(2.7).resolve(4), Ok(2));
        assert_eq!(
            "50%".parse::<Concurrency>().unwrap().resolve(1),
            Err("Minimum for concurrency is 1.".into())
        );
        assert_eq!(
            Concurrency::Count(3.0).resolve(2),
            Err("Maximum for --concurrency is 2 (number of cores on this system)".into())
        );
        assert!("x%".parse::<Concurrency>().is_err());
        assert!("abc".parse::<Concurrency>().is_err());
    }

    #[test]
    fn frames_flag_parses() {
        assert_eq!("7".parse::<FrameRange>(), Ok(FrameRange::Single(7)));
        assert_eq!(
            "3-9".parse::<FrameRange>(),
            Ok(FrameRange::Ranges(vec![(3, Some(9))]))
        );
        assert_eq!(
            "3-".parse::<FrameRange>(),
            Ok(FrameRange::Ranges(vec![(3, None)]))
        );
        assert_eq!(
            "0-2,5-".parse::<FrameRange>(),
            Ok(FrameRange::Ranges(vec![(0, Some(2)), (5, None)]))
        );
        assert!("9-3".parse::<FrameRange>().is_err());
        assert!("0-,5-6".parse::<FrameRange>().is_err());
        assert!("0-5,3-6".parse::<FrameRange>().is_err());
        assert!("a".parse::<FrameRange>().is_err());
    }

    #[test]
    fn named_enums_round_trip_and_explain() {
        for c in Codec::ALL {
            assert_eq!(c.as_str().parse::<Codec>().unwrap(), *c);
        }
        let err = "h266".parse::<Codec>().unwrap_err();
        assert!(err.contains("\"h264\""), "{err}");
    }

    #[test]
    fn bitrates() {
        assert_eq!(parse_bitrate("5000k"), Ok(5_000_000));
        assert_eq!(parse_bitrate("2M"), Ok(2_000_000));
        assert_eq!(parse_bitrate("1.5M"), Ok(1_500_000));
        assert_eq!(parse_bitrate("800000"), Ok(800_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("-1k").is_err());
    }
}
