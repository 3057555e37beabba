//! Encoding captured frames into a video file with libav (through `ffmpeg-next`).
//!
//! Frames arrive as encoded screenshots; they are decoded, converted with swscale and fed to
//! the encoder in order, straight into the output container. No frame touches the disk.
//!
//! **Architecture Invariant:** this module knows nothing of Chromium or pages. Its inputs are
//! image bytes and plain settings.

pub mod codec;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use ff::format::Pixel;
use ffmpeg_next as ff;

use crate::options::{
    Codec, ColorSpace, MediaOptions, PixelFormat, ProResProfile, VideoImageFormat, parse_bitrate,
};

pub use codec::{CodecTraits, content_type_for_name, file_extension, traits};

/// The version string written into the `comment` tag, like Remotion's "Made with Remotion".
const MADE_WITH: &str = concat!("Made with cloudrun-render ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// An option or combination of options the encoder refuses; names the option.
    #[error("{0}")]
    InvalidOption(String),
    #[error("The encoder \"{0}\" is not available in this libav build")]
    MissingEncoder(String),
    #[error("Could not decode a captured frame: {0}")]
    Decode(String),
    #[error("libav failed while {during}: {source}")]
    Libav {
        during: &'static str,
        #[source]
        source: ff::Error,
    },
}

fn libav(during: &'static str) -> impl FnOnce(ff::Error) -> EncodeError {
    move |source| EncodeError::Libav { during, source }
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        ff::init().expect("libav initialises");
        ff::util::log::set_level(ff::util::log::Level::Error);
    });
}

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
}

/// The resolved, validated video encoding settings of one render.
#[derive(Debug, Clone)]
pub struct VideoSettings {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub frame_rate: FrameRate,
    pub pixel_format: PixelFormat,
    pub crf: Option<f64>,
    pub bitrate: Option<u64>,
    pub max_rate: Option<u64>,
    pub buffer_size: Option<u64>,
    pub preset: Option<String>,
    pub prores_profile: ProResProfile,
    pub gop_size: Option<u32>,
    pub color_space: ColorSpace,
    pub gif_loops: Option<u32>,
    pub metadata: BTreeMap<String, String>,
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

/// Checks the option combinations the renderer refuses, before any frame is captured.
pub fn validate(media: &MediaOptions, image_format: VideoImageFormat) -> Result<(), EncodeError> {
    let codec = media.codec;
    let t = traits(codec);
    let bad = |m: String| Err(EncodeError::InvalidOption(m));
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
            Some(_)
                if matches!(codec, Codec::H264 | Codec::H264Mkv | Codec::H264Ts) && crf == 0.0 =>
            {
                return bad("Setting the CRF (\"crf\") to 0 with a H264 codec is not supported anymore because of it's inconsistencies between platforms. Videos with CRF 0 cannot be played on iOS/macOS. 0 is a extreme value with inefficient settings which you probably do not want. Set CRF to a higher value to fix this error.".into());
            }
            Some((lo, hi)) if !(lo..=hi).contains(&crf) || !crf.is_finite() => {
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
    if media.prores_profile.is_some() && codec != Codec::Prores {
        return bad(format!(
            "You have set a ProRes profile (\"proResProfile\") but the codec is \"{codec}\". Set the codec to \"prores\" or remove the ProRes profile."
        ));
    }
    if media.x264_preset.is_some() && !matches!(codec, Codec::H264 | Codec::H264Mkv | Codec::H264Ts)
    {
        return bad(format!(
            "You have set a x264 preset (\"x264Preset\") but the codec is \"{codec}\". Set the codec to \"h264\" or remove the preset."
        ));
    }
    if let Some(pf) = media.pixel_format {
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
    Ok(())
}

/// Resolves the encoding settings for an output of `width`×`height` pixels at `fps`.
pub fn settings(
    media: &MediaOptions,
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
    let bitrate = media
        .video_bitrate
        .as_deref()
        .map(parse_bitrate)
        .transpose()
        .map_err(EncodeError::InvalidOption)?;
    let crf = match (media.crf, bitrate) {
        (_, Some(_)) => None,
        (Some(c), None) => Some(c),
        (None, None) => t.default_crf,
    };
    let mut metadata = BTreeMap::from([("comment".to_string(), MADE_WITH.to_string())]);
    for (k, v) in &media.metadata {
        let key = k.to_lowercase();
        if key == "comment" {
            metadata.insert(key, format!("{MADE_WITH}; {v}"));
        } else {
            metadata.insert(key, v.clone());
        }
    }
    Ok(VideoSettings {
        codec,
        width,
        height,
        frame_rate: FrameRate::from_fps(fps),
        pixel_format: media.pixel_format.unwrap_or(PixelFormat::Yuv420p),
        crf,
        bitrate,
        max_rate: media
            .encoding_max_rate
            .as_deref()
            .map(parse_bitrate)
            .transpose()
            .map_err(EncodeError::InvalidOption)?,
        buffer_size: media
            .encoding_buffer_size
            .as_deref()
            .map(parse_bitrate)
            .transpose()
            .map_err(EncodeError::InvalidOption)?,
        preset: media.x264_preset.map(|p| p.as_str().to_string()),
        prores_profile: media.prores_profile.unwrap_or(ProResProfile::Hq),
        gop_size: media.gop_size,
        color_space: media.color_space,
        gif_loops: media.number_of_gif_loops,
        metadata,
    })
}

/// A screenshot decoded to packed RGB or RGBA.
pub struct DecodedFrame {
    pub width: u32,
    pub height: u32,
    pub has_alpha: bool,
    pub pixels: Vec<u8>,
}

/// Decodes a JPEG or PNG screenshot.
pub fn decode_frame(bytes: &[u8]) -> Result<DecodedFrame, EncodeError> {
    let format = image::guess_format(bytes).map_err(|e| EncodeError::Decode(e.to_string()))?;
    let img = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| EncodeError::Decode(e.to_string()))?;
    let (width, height) = (img.width(), img.height());
    if img.color().has_alpha() {
        Ok(DecodedFrame {
            width,
            height,
            has_alpha: true,
            pixels: img.into_rgba8().into_raw(),
        })
    } else {
        Ok(DecodedFrame {
            width,
            height,
            has_alpha: false,
            pixels: img.into_rgb8().into_raw(),
        })
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

/// Encodes frames, in order, into one output file.
pub struct VideoEncoder {
    output: ff::format::context::Output,
    encoder: ff::encoder::Video,
    stream_index: usize,
    encoder_time_base: ff::Rational,
    stream_time_base: ff::Rational,
    scaler: Option<(ff::software::scaling::Context, Pixel, u32, u32)>,
    converted: ff::frame::Video,
    next_pts: i64,
    packets: u64,
}

// SAFETY: the libav contexts are owned exclusively by this value and only used from the
// thread that currently owns it; libav does not tie them to the creating thread.
unsafe impl Send for VideoEncoder {}

impl VideoEncoder {
    pub fn create(path: &Path, s: &VideoSettings) -> Result<VideoEncoder, EncodeError> {
        init();
        let t = traits(s.codec);
        let encoder_name = t.video_encoder.ok_or_else(|| {
            EncodeError::InvalidOption(format!("\"{}\" is an audio codec", s.codec))
        })?;
        let codec = ff::encoder::find_by_name(encoder_name)
            .ok_or_else(|| EncodeError::MissingEncoder(encoder_name.into()))?;
        let mut output =
            ff::format::output_as(path, t.muxer).map_err(libav("opening the output file"))?;
        let global_header = output
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER);

        let mut enc = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(libav("creating the video encoder"))?;
        let pixel = match s.codec {
            // prores_ks takes only 4:2:2/4:4:4 10-bit; the ffmpeg CLI silently swaps 4:2:0 for
            // 4:2:2 10-bit, and so do we.
            Codec::Prores => match s.pixel_format {
                PixelFormat::Yuv444p10le | PixelFormat::Yuv444p => Pixel::YUV444P10LE,
                PixelFormat::Yuva444p10le => Pixel::YUVA444P10LE,
                _ => Pixel::YUV422P10LE,
            },
            Codec::Gif => Pixel::RGB8,
            _ => pixel_for(s.pixel_format),
        };
        enc.set_width(s.width);
        enc.set_height(s.height);
        enc.set_format(pixel);
        let time_base = ff::Rational::new(s.frame_rate.den, s.frame_rate.num);
        enc.set_time_base(time_base);
        enc.set_frame_rate(Some(ff::Rational::new(s.frame_rate.num, s.frame_rate.den)));
        if let Some(g) = s.gop_size {
            enc.set_gop(g);
        }
        if let Some(b) = s.bitrate {
            enc.set_bit_rate(b as usize);
        }
        if let Some(m) = s.max_rate {
            enc.set_max_bit_rate(m as usize);
        }
        if global_header {
            enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        let mut opts = ff::Dictionary::new();
        if let Some(crf) = s.crf {
            opts.set("crf", &crf.to_string());
        }
        if let Some(b) = s.buffer_size {
            opts.set("bufsize", &b.to_string());
        }
        if let Some(p) = &s.preset {
            opts.set("preset", p);
        }
        match s.codec {
            Codec::Prores => opts.set("profile", &s.prores_profile.ffmpeg_profile().to_string()),
            Codec::Vp8 | Codec::Vp9 => {
                if s.bitrate.is_none() {
                    // libvpx's default target of 256 kbit/s would cap constant-quality mode.
                    enc.set_bit_rate(if s.codec == Codec::Vp8 { 8_000_000 } else { 0 });
                }
                if s.pixel_format == PixelFormat::Yuva420p {
                    opts.set("auto-alt-ref", "0");
                }
            }
            _ => {}
        }
        let encoder = enc
            .open_as_with(codec, opts)
            .map_err(libav("opening the video encoder"))?;

        let stream_index;
        {
            let mut stream = output
                .add_stream(codec)
                .map_err(libav("adding the video stream"))?;
            stream.set_parameters(&encoder);
            stream.set_time_base(time_base);
            stream.set_rate(ff::Rational::new(s.frame_rate.num, s.frame_rate.den));
            stream.set_avg_frame_rate(ff::Rational::new(s.frame_rate.num, s.frame_rate.den));
            stream_index = stream.index();
        }
        let mut tags = ff::Dictionary::new();
        for (k, v) in &s.metadata {
            tags.set(k, v);
        }
        output.set_metadata(tags);
        let mut muxer_opts = ff::Dictionary::new();
        if s.codec == Codec::H264 || (t.muxer == "mp4" || t.muxer == "mov") {
            muxer_opts.set("movflags", "faststart");
        }
        if s.codec == Codec::Gif {
            // Remotion: 0 → play once ("-loop -1"), N → N, unset → infinite.
            let loops = match s.gif_loops {
                None => 0,
                Some(0) => -1,
                Some(n) => n as i64,
            };
            muxer_opts.set("loop", &loops.to_string());
        }
        output
            .write_header_with(muxer_opts)
            .map_err(libav("writing the container header"))?;
        let stream_time_base = output
            .stream(stream_index)
            .expect("stream exists")
            .time_base();
        let converted = ff::frame::Video::new(pixel, s.width, s.height);
        Ok(VideoEncoder {
            output,
            encoder,
            stream_index,
            encoder_time_base: time_base,
            stream_time_base,
            scaler: None,
            converted,
            next_pts: 0,
            packets: 0,
        })
    }

    /// Frames whose packets have been written.
    pub fn encoded_frames(&self) -> u64 {
        self.packets
    }

    pub fn push(&mut self, frame: &DecodedFrame) -> Result<(), EncodeError> {
        let src_format = if frame.has_alpha {
            Pixel::RGBA
        } else {
            Pixel::RGB24
        };
        let needs_new_scaler = match &self.scaler {
            Some((_, f, w, h)) => *f != src_format || *w != frame.width || *h != frame.height,
            None => true,
        };
        if needs_new_scaler {
            let ctx = ff::software::scaling::Context::get(
                src_format,
                frame.width,
                frame.height,
                self.encoder.format(),
                self.encoder.width(),
                self.encoder.height(),
                ff::software::scaling::Flags::BILINEAR,
            )
            .map_err(libav("creating the pixel converter"))?;
            self.scaler = Some((ctx, src_format, frame.width, frame.height));
        }
        let mut input = ff::frame::Video::new(src_format, frame.width, frame.height);
        let bpp = if frame.has_alpha { 4 } else { 3 };
        let row = frame.width as usize * bpp;
        let stride = input.stride(0);
        let data = input.data_mut(0);
        for y in 0..frame.height as usize {
            data[y * stride..y * stride + row]
                .copy_from_slice(&frame.pixels[y * row..(y + 1) * row]);
        }
        let (scaler, ..) = self.scaler.as_mut().expect("scaler was just set");
        scaler
            .run(&input, &mut self.converted)
            .map_err(libav("converting pixels"))?;
        self.converted.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.encoder
            .send_frame(&self.converted)
            .map_err(libav("encoding a frame"))?;
        self.drain()
    }

    fn drain(&mut self) -> Result<(), EncodeError> {
        let mut packet = ff::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            if packet.duration() == 0 {
                packet.set_duration(1);
            }
            packet.set_stream(self.stream_index);
            packet.rescale_ts(self.encoder_time_base, self.stream_time_base);
            packet
                .write_interleaved(&mut self.output)
                .map_err(libav("writing a packet"))?;
            self.packets += 1;
        }
        Ok(())
    }

    /// Flushes the encoder and finalises the container.
    pub fn finish(mut self) -> Result<u64, EncodeError> {
        self.encoder
            .send_eof()
            .map_err(libav("flushing the encoder"))?;
        self.drain()?;
        self.output
            .write_trailer()
            .map_err(libav("finalising the container"))?;
        Ok(self.next_pts as u64)
    }
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

    #[test]
    fn validation_names_the_option() {
        let mut m = MediaOptions::new("x");
        m.crf = Some(20.0);
        m.video_bitrate = Some("1M".into());
        assert!(
            validate(&m, VideoImageFormat::Jpeg)
                .unwrap_err()
                .to_string()
                .contains("\"crf\"")
        );
        let mut m = MediaOptions::new("x");
        m.crf = Some(60.0);
        assert!(
            validate(&m, VideoImageFormat::Jpeg)
                .unwrap_err()
                .to_string()
                .contains("between 1 and 51")
        );
        let mut m = MediaOptions::new("x");
        m.prores_profile = Some(ProResProfile::Light);
        assert!(
            validate(&m, VideoImageFormat::Jpeg)
                .unwrap_err()
                .to_string()
                .contains("proResProfile")
        );
        let mut m = MediaOptions::new("x");
        m.encoding_max_rate = Some("2M".into());
        assert!(
            validate(&m, VideoImageFormat::Jpeg)
                .unwrap_err()
                .to_string()
                .contains("encodingBufferSize")
        );
        let mut m = MediaOptions::new("x");
        m.codec = Codec::Vp8;
        m.pixel_format = Some(PixelFormat::Yuva420p);
        assert!(
            validate(&m, VideoImageFormat::Jpeg)
                .unwrap_err()
                .to_string()
                .contains("PNG")
        );
        assert!(validate(&m, VideoImageFormat::Png).is_ok());
        let m = MediaOptions::new("x");
        assert!(validate(&m, VideoImageFormat::Jpeg).is_ok());
    }

    #[test]
    fn metadata_is_lowercased_and_comment_is_prefixed() {
        let mut m = MediaOptions::new("x");
        m.metadata.insert("Author".into(), "me".into());
        m.metadata.insert("COMMENT".into(), "hi".into());
        let s = settings(&m, 2, 2, 30.0).unwrap();
        assert_eq!(s.metadata["author"], "me");
        assert_eq!(s.metadata["comment"], format!("{MADE_WITH}; hi"));
        assert_eq!(s.crf, Some(18.0));
    }
}
