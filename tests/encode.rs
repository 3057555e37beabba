//! The encode stage with synthetic frames and tones: real libav, real files, checked with
//! ffprobe and ffmpeg. No Chromium.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cloudrun_render::encode::{
    self, AudioSettings, ChunkFile, EncodeError, FramePreparer, FrameRate, JoinAudio, Target,
    VideoEncoder, VideoSettings, write_audio_only,
};
use cloudrun_render::options::{
    AudioCodec, Codec, ColorSpace, MediaOptions, PixelFormat, ProResProfile, VideoImageFormat,
    X264Preset,
};
use cloudrun_render::pcm::Pcm;
use common::{
    RgbFrames, audio_stream, bar_code, bars_picture, ffprobe, frequency, left, rms, stereo_pcm,
    video_stream,
};
use serde_json::Value;

const W: u32 = 320;
const H: u32 = 180;

fn jpeg(rgb: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(rgb, width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn png_rgba(rgba: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        rgba,
        width,
        height,
        image::ExtendedColorType::Rgba8,
    )
    .unwrap();
    out
}

/// The picture with its bottom half transparent and a half-transparent red square at the
/// bottom right, like the `FramesAlpha` fixture.
fn picture_alpha(f: u64, width: u32, height: u32) -> Vec<u8> {
    let rgb = bars_picture(f, width, height, false);
    let (w, h) = (width as usize, height as usize);
    let mut rgba = Vec::with_capacity(w * h * 4);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        let (x, y) = (i % w, i / w);
        if y < h.div_ceil(2) {
            rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
        } else if x >= w - 40 && y >= h - 40 {
            rgba.extend_from_slice(&[255, 0, 0, 128]);
        } else {
            rgba.extend_from_slice(&[0, 0, 0, 0]);
        }
    }
    rgba
}

struct Encoded {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn settings_for(media: &MediaOptions, image_format: VideoImageFormat, fps: f64) -> VideoSettings {
    encode::validate(media, image_format).expect("valid options");
    encode::settings(media, image_format, W, H, fps).expect("settings")
}

/// Encodes `frames` JPEG screenshots of the test picture through the real decode path.
fn encode_jpeg(media: &MediaOptions, frames: u64, fps: f64, noise: bool) -> Encoded {
    let s = settings_for(media, VideoImageFormat::Jpeg, fps);
    let shots = (0..frames).map(|f| jpeg(&bars_picture(f, W, H, noise), W, H));
    encode_shots(&s, shots)
}

fn encode_png_alpha(media: &MediaOptions, frames: u64, fps: f64) -> Encoded {
    let s = settings_for(media, VideoImageFormat::Png, fps);
    let shots = (0..frames).map(|f| png_rgba(&picture_alpha(f, W, H), W, H));
    encode_shots(&s, shots)
}

/// The output itself, in the codec's own container.
fn output_of(s: &VideoSettings) -> Target {
    Target::Output {
        muxer: encode::traits(s.codec).muxer,
    }
}

fn encode_shots(s: &VideoSettings, shots: impl Iterator<Item = Vec<u8>>) -> Encoded {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(match s.codec {
        Codec::H264 | Codec::H265 => "out.mp4",
        Codec::H264Mkv => "out.mkv",
        Codec::H264Ts => "out.ts",
        Codec::Vp8 | Codec::Vp9 => "out.webm",
        Codec::Prores => "out.mov",
        Codec::Gif => "out.gif",
        audio_only => panic!("{audio_only} has no video"),
    });
    let preparer = FramePreparer::new(s);
    let mut encoder = VideoEncoder::create(&path, s, output_of(s)).expect("create the encoder");
    let mut n = 0;
    for shot in shots {
        encoder.push(preparer.prepare(&shot).unwrap()).unwrap();
        n += 1;
    }
    assert_eq!(encoder.finish().unwrap(), n);
    Encoded { path, _dir: dir }
}

fn media(codec: Codec) -> MediaOptions {
    let mut m = MediaOptions::new("test");
    m.codec = codec;
    m
}

fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        other => other.as_f64().unwrap(),
    }
}

/// A container tag, whatever its case (matroska upper-cases them).
fn tag<'a>(format: &'a Value, key: &str) -> Option<&'a str> {
    let tags = format["tags"].as_object()?;
    tags.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .and_then(|(_, v)| v.as_str())
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn every_video_codec_has_the_right_stream() {
    // codec, format_name, codec_name, pix_fmt
    let cases = [
        (Codec::H264, "mov,mp4,m4a,3gp,3g2,mj2", "h264", "yuv420p"),
        (Codec::H265, "mov,mp4,m4a,3gp,3g2,mj2", "hevc", "yuv420p"),
        (Codec::Vp8, "matroska,webm", "vp8", "yuv420p"),
        (Codec::Vp9, "matroska,webm", "vp9", "yuv420p"),
        (
            Codec::Prores,
            "mov,mp4,m4a,3gp,3g2,mj2",
            "prores",
            "yuv422p10le",
        ),
        (Codec::Gif, "gif", "gif", "bgra"),
        (Codec::H264Mkv, "matroska,webm", "h264", "yuv420p"),
        (Codec::H264Ts, "mpegts", "h264", "yuv420p"),
    ];
    let frames = 15;
    let fps = 25.0;
    for (codec, format, codec_name, pix_fmt) in cases {
        let out = encode_jpeg(&media(codec), frames, fps, false);
        let probe = ffprobe(&out.path);
        let v = video_stream(&probe);
        eprintln!("{codec}: {} {}", probe.format, v);
        assert_eq!(probe.format["format_name"], format, "{codec}");
        assert_eq!(v["codec_name"], codec_name, "{codec}");
        assert_eq!(v["pix_fmt"], pix_fmt, "{codec}");
        assert_eq!(v["nb_read_frames"], frames.to_string(), "{codec}");
        assert_eq!(v["avg_frame_rate"], "25/1", "{codec}");
        let duration = num(&probe.format["duration"]);
        assert!(
            (duration - frames as f64 / fps).abs() < 0.03,
            "{codec}: duration {duration}"
        );
        let decoded = RgbFrames::decode(&out.path);
        for k in [0, frames as usize - 1] {
            assert_eq!(decoded.frame_number(k), k as u64, "{codec}: frame {k}");
        }
        // Neither gif nor mpegts has a place for a comment.
        if !matches!(codec, Codec::Gif | Codec::H264Ts) {
            let comment = tag(&probe.format, "comment").unwrap_or_default();
            assert!(
                comment.starts_with("Made with cloudrun-render"),
                "{codec}: {comment}"
            );
        }
    }
}

/// The container's overall bitrate in bit/s.
fn bitrate(path: &Path) -> f64 {
    num(&ffprobe(path).format["bit_rate"])
}

#[test]
fn crf_and_bitrates_take_effect() {
    let frames = 50;
    let fps = 25.0;
    let mut sizes = Vec::new();
    for crf in [18.0, 35.0] {
        let mut m = media(Codec::H264);
        m.crf = Some(crf);
        sizes.push(size(&encode_jpeg(&m, frames, fps, true).path));
    }
    eprintln!(
        "h264 crf 18: {} bytes, crf 35: {} bytes",
        sizes[0], sizes[1]
    );
    assert!(sizes[0] > sizes[1] * 3, "{sizes:?}");

    // libvpx's constant-quality modes: CRF must not be swallowed by a bitrate ceiling.
    for codec in [Codec::Vp8, Codec::Vp9] {
        let sizes: Vec<u64> = [10.0, 50.0]
            .into_iter()
            .map(|crf| {
                let mut m = media(codec);
                m.crf = Some(crf);
                size(&encode_jpeg(&m, 10, fps, true).path)
            })
            .collect();
        eprintln!(
            "{codec} crf 10: {} bytes, crf 50: {} bytes",
            sizes[0], sizes[1]
        );
        assert!(
            sizes[0] as f64 > sizes[1] as f64 * 1.5,
            "{codec}: {sizes:?}"
        );
    }

    for (codec, target) in [(Codec::H264, 400_000.0), (Codec::Vp8, 300_000.0)] {
        let mut m = media(codec);
        m.video_bitrate = Some(format!("{}k", target / 1000.0));
        let rate = bitrate(&encode_jpeg(&m, frames, fps, true).path);
        eprintln!("{codec} at {target}: {rate}");
        assert!(
            (rate - target).abs() < target * 0.3,
            "{codec}: {rate} bit/s for a {target} target"
        );
    }

    // A cap on constant quality: crf 18 alone makes several times this rate.
    let mut m = media(Codec::H264);
    m.encoding_max_rate = Some("250k".into());
    m.encoding_buffer_size = Some("250k".into());
    let capped = bitrate(&encode_jpeg(&m, frames, fps, true).path);
    let uncapped = sizes[0] as f64 * 8.0 / (frames as f64 / fps);
    eprintln!("h264 crf 18 capped at 250k: {capped} (uncapped {uncapped})");
    assert!(
        capped < 250_000.0 * 1.5 && uncapped > capped * 4.0,
        "{capped} vs {uncapped}"
    );
}

#[test]
fn x264_preset_and_gop_size_reach_the_encoder() {
    let mut m = media(Codec::H264);
    m.x264_preset = Some(X264Preset::Ultrafast);
    m.gop_size = Some(5);
    let out = encode_jpeg(&m, 20, 25.0, true);
    // x264 writes its settings into the stream as an SEI string.
    let bytes = std::fs::read(&out.path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("keyint=5 "), "gop size");
    // ultrafast turns CABAC and B-frames off.
    assert!(
        text.contains("cabac=0") && text.contains("bframes=0"),
        "preset"
    );
    let keyframes = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=flags",
            "-of",
            "csv=p=0",
        ])
        .arg(&out.path)
        .output()
        .unwrap();
    let flags = String::from_utf8(keyframes.stdout).unwrap();
    assert_eq!(
        flags.lines().filter(|l| l.starts_with('K')).count(),
        4,
        "{flags}"
    );
}

#[test]
fn prores_profiles_and_pixel_formats() {
    let cases = [
        (ProResProfile::Proxy, "Proxy", "yuv422p10le"),
        (ProResProfile::Light, "LT", "yuv422p10le"),
        (ProResProfile::Standard, "Standard", "yuv422p10le"),
        (ProResProfile::Hq, "HQ", "yuv422p10le"),
        // libav's decoder reports 12 bits for the 4444 profiles, whatever went in.
        (ProResProfile::ProRes4444, "4444", "yuv444p12le"),
        (ProResProfile::XqProRes4444, "XQ", "yuv444p12le"),
    ];
    let mut sizes = Vec::new();
    for (profile, name, pix_fmt) in cases {
        let mut m = media(Codec::Prores);
        m.prores_profile = Some(profile);
        let out = encode_jpeg(&m, 3, 25.0, true);
        let probe = ffprobe(&out.path);
        let v = video_stream(&probe);
        assert_eq!(v["profile"], name, "{profile}");
        assert_eq!(v["pix_fmt"], pix_fmt, "{profile}");
        sizes.push(size(&out.path));
    }
    // Each profile spends more bits than the one before.
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
}

fn rgba_frames(path: &Path, decoder: Option<&str>) -> Vec<Vec<u8>> {
    common::rgba_frames(path, decoder, W as usize, H as usize)
}

fn rgba_at(frame: &[u8], x: u32, y: u32) -> [u8; 4] {
    let i = ((y * W + x) * 4) as usize;
    frame[i..i + 4].try_into().unwrap()
}

/// Bars opaque on top, transparent bottom, half-transparent red square bottom right.
fn assert_alpha_picture(frames: &[Vec<u8>], what: &str) {
    for (k, f) in frames.iter().enumerate() {
        let number = bar_code(W as usize, H as usize, |x, y| {
            let [r, g, b, _] = rgba_at(f, x as u32, y as u32);
            [r, g, b]
        });
        assert_eq!(number, k as u64, "{what}: frame {k}");
        assert_eq!(rgba_at(f, W / 2, H / 4)[3], 255, "{what}: top is opaque");
        assert!(
            rgba_at(f, W / 4, H * 3 / 4)[3] < 8,
            "{what}: bottom is transparent"
        );
        let square = rgba_at(f, W - 20, H - 20);
        assert!(
            square[3].abs_diff(128) < 12 && square[0] > 200,
            "{what}: square {square:?}"
        );
    }
}

#[test]
fn transparency_survives_vp8_vp9_and_prores_4444() {
    for (codec, pf, decoder) in [
        (Codec::Vp8, PixelFormat::Yuva420p, Some("libvpx")),
        (Codec::Vp9, PixelFormat::Yuva420p, Some("libvpx-vp9")),
        (Codec::Prores, PixelFormat::Yuva444p10le, None),
    ] {
        let mut m = media(codec);
        m.pixel_format = Some(pf);
        let out = encode_png_alpha(&m, 4, 25.0);
        let probe = ffprobe(&out.path);
        let v = video_stream(&probe);
        if codec == Codec::Prores {
            assert_eq!(v["pix_fmt"], "yuva444p12le");
            assert_eq!(v["profile"], "4444");
        } else {
            // webm keeps alpha as side data and says so in a tag.
            assert_eq!(v["tags"]["alpha_mode"], "1", "{codec}");
        }
        assert_alpha_picture(&rgba_frames(&out.path, decoder), &codec.to_string());
    }
}

#[test]
fn gif_palette_quality_transparency_and_loops() {
    // Quality: a palette per frame keeps the smooth bottom colour close to the source.
    let out = encode_jpeg(&media(Codec::Gif), 6, 25.0, false);
    let decoded = RgbFrames::decode(&out.path);
    for k in 0..6usize {
        let c = ((2 * k) % 256) as u8;
        common::assert_close(
            decoded.pixel(k, W as usize / 2, H as usize * 3 / 4),
            [c, 128, 255 - c],
            6,
            "gif colour",
        );
        assert_eq!(decoded.frame_number(k), k as u64);
    }

    // PNG frames keep their transparency.
    let out = encode_png_alpha(&media(Codec::Gif), 3, 25.0);
    let frames = rgba_frames(&out.path, None);
    for f in &frames {
        assert_eq!(rgba_at(f, W / 2, H / 4)[3], 255);
        assert_eq!(rgba_at(f, W / 4, H * 3 / 4)[3], 0);
    }

    // Loops: unset → forever (0), 0 → play once (no loop block), N → N.
    for (loops, expected) in [(None, Some(0u16)), (Some(0), None), (Some(3), Some(3))] {
        let mut m = media(Codec::Gif);
        m.number_of_gif_loops = loops;
        let out = encode_jpeg(&m, 2, 25.0, false);
        assert_eq!(
            common::gif_loop_count(&out.path),
            expected,
            "numberOfGifLoops {loops:?}"
        );
    }
}

#[test]
fn gif_frames_stream_through_the_palette() {
    // A palette per frame means no frame waits for the end: memory does not grow with length.
    let s = settings_for(&media(Codec::Gif), VideoImageFormat::Jpeg, 25.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gif");
    let preparer = FramePreparer::new(&s);
    let mut encoder = VideoEncoder::create(&path, &s, output_of(&s)).unwrap();
    let rgb = bars_picture(1, W, H, false);
    for pushed in 1..=20u64 {
        encoder
            .push(preparer.prepare_raw(&rgb, W, H, false).unwrap())
            .unwrap();
        assert!(
            encoder.encoded_frames() + 2 >= pushed,
            "{} of {pushed} frames written",
            encoder.encoded_frames()
        );
    }
    assert_eq!(encoder.finish().unwrap(), 20);
}

/// Y, Cb, Cr at the centre of the first frame, as stored (no colour conversion).
fn first_yuv(path: &Path) -> [u8; 3] {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv444p",
            "-",
        ])
        .output()
        .unwrap();
    let plane = (W * H) as usize;
    let center = (H / 2 * W + W / 2) as usize;
    [
        out.stdout[center],
        out.stdout[plane + center],
        out.stdout[2 * plane + center],
    ]
}

/// Chromium's JPEG screenshots are 4:2:0; the `image` encoder only writes 4:4:4.
fn jpeg_420(rgb: &[u8], dir: &Path) -> Vec<u8> {
    let png = dir.join("in.png");
    image::save_buffer(&png, rgb, W, H, image::ExtendedColorType::Rgb8).unwrap();
    let jpg = dir.join("in.jpg");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&png)
        .args(["-pix_fmt", "yuvj420p", "-q:v", "3"])
        .arg(&jpg)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(jpg).unwrap()
}

#[test]
fn jpeg_frames_become_what_ffmpeg_makes_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let shot = jpeg_420(&bars_picture(300, W, H, true), dir.path());
    std::fs::write(dir.path().join("shot.jpg"), &shot).unwrap();
    let reference = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(dir.path().join("shot.jpg"))
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .unwrap()
        .stdout;
    let s = settings_for(&media(Codec::H264), VideoImageFormat::Jpeg, 25.0);
    let prepared = FramePreparer::new(&s).prepare(&shot).unwrap();
    let (w, h) = (W as usize, H as usize);
    let mut offset = 0;
    for (plane, (pw, ph)) in [(w, h), (w / 2, h / 2), (w / 2, h / 2)]
        .into_iter()
        .enumerate()
    {
        let ours = prepared.plane(plane);
        let stride = prepared.stride(plane);
        let mut worst = 0;
        for y in 0..ph {
            for x in 0..pw {
                worst = worst.max(ours[y * stride + x].abs_diff(reference[offset + y * pw + x]));
            }
        }
        offset += pw * ph;
        assert!(
            worst <= 1,
            "plane {plane} differs by up to {worst}: ours {} ffmpeg {}",
            ours[stride * 10 + 5],
            reference[offset - pw * ph + pw * 10 + 5]
        );
    }
}

#[test]
fn color_spaces_are_converted_and_tagged() {
    let red = {
        let mut rgb = vec![0u8; (W * H * 3) as usize];
        rgb.chunks_exact_mut(3).for_each(|p| p[0] = 255);
        rgb
    };
    // Pure red in each matrix, limited range: Y = 16 + 219·Kr (constant luminance: through
    // the BT.2020 curve), Cr = 240.
    let cases = [
        (ColorSpace::Default, None, 82),
        (ColorSpace::Bt709, Some(("bt709", "bt709", "bt709")), 63),
        (
            ColorSpace::Bt2020Ncl,
            Some(("bt2020nc", "bt2020", "arib-std-b67")),
            74,
        ),
        (
            ColorSpace::Bt2020Cl,
            Some(("bt2020c", "bt2020", "bt2020-10")),
            126,
        ),
    ];
    for (cs, tags, y) in cases {
        let mut m = media(Codec::H264);
        m.color_space = cs;
        m.crf = Some(1.0);
        let s = settings_for(&m, VideoImageFormat::Jpeg, 25.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.mp4");
        let preparer = FramePreparer::new(&s);
        let mut encoder = VideoEncoder::create(&path, &s, output_of(&s)).unwrap();
        encoder
            .push(preparer.prepare_raw(&red, W, H, false).unwrap())
            .unwrap();
        encoder.finish().unwrap();
        let probe = ffprobe(&path);
        let v = video_stream(&probe);
        match tags {
            Some((space, primaries, transfer)) => {
                assert_eq!(v["color_space"], space, "{cs}");
                assert_eq!(v["color_primaries"], primaries, "{cs}");
                assert_eq!(v["color_transfer"], transfer, "{cs}");
                assert_eq!(v["color_range"], "tv", "{cs}");
            }
            None => assert!(v.get("color_space").is_none(), "{cs}: {v}"),
        }
        let yuv = first_yuv(&path);
        assert!(
            yuv[0].abs_diff(y) <= 2 && yuv[2].abs_diff(240) <= 2,
            "{cs}: {yuv:?}"
        );
    }
}

#[test]
fn invalid_combinations_name_the_option() {
    use VideoImageFormat::{Jpeg, Png};
    type Tweak = fn(&mut MediaOptions);
    let cases: [(Codec, VideoImageFormat, Tweak, &str); 12] = [
        (
            Codec::H264,
            Jpeg,
            |m| {
                m.crf = Some(20.0);
                m.video_bitrate = Some("2M".into());
            },
            "\"crf\" and \"videoBitrate\"",
        ),
        (
            Codec::Vp8,
            Jpeg,
            |m| m.crf = Some(2.0),
            "(\"crf\") must be between 4 and 63",
        ),
        (
            Codec::H264,
            Jpeg,
            |m| m.crf = Some(0.0),
            "CRF (\"crf\") to 0",
        ),
        (Codec::Prores, Jpeg, |m| m.crf = Some(20.0), "(\"crf\")"),
        (
            Codec::H265,
            Png,
            |m| m.pixel_format = Some(PixelFormat::Yuva420p),
            "(\"pixelFormat\")",
        ),
        (
            Codec::Vp8,
            Jpeg,
            |m| m.pixel_format = Some(PixelFormat::Yuv420p10le),
            "(\"pixelFormat\")",
        ),
        (
            Codec::H264,
            Jpeg,
            |m| m.prores_profile = Some(ProResProfile::Hq),
            "(\"proResProfile\")",
        ),
        (
            Codec::Vp9,
            Jpeg,
            |m| m.x264_preset = Some(X264Preset::Fast),
            "(\"x264Preset\")",
        ),
        (
            Codec::H264,
            Jpeg,
            |m| m.encoding_max_rate = Some("1M".into()),
            "\"encodingBufferSize\"",
        ),
        (
            Codec::Vp9,
            Jpeg,
            |m| m.pixel_format = Some(PixelFormat::Yuva420p),
            "(\"imageFormat\")",
        ),
        (
            Codec::H264,
            Jpeg,
            |m| m.audio_codec = Some(AudioCodec::Opus),
            "(\"audioCodec\")",
        ),
        (
            Codec::H264,
            Jpeg,
            |m| m.audio_bitrate = Some("loud".into()),
            "\"audioBitrate\"",
        ),
    ];
    for (codec, image_format, tweak, named) in cases {
        let mut m = media(codec);
        tweak(&mut m);
        let e = encode::validate(&m, image_format)
            .expect_err(named)
            .to_string();
        assert!(e.contains(named), "{codec}: {e}");
    }
}

// ---- audio ----

const RATE: u32 = 48_000;

/// A stereo sine, interleaved, `seconds` long at amplitude `level`.
fn tone(freq: f64, level: f64, seconds: f64) -> Pcm {
    let n = (seconds * RATE as f64) as usize;
    Pcm {
        sample_rate: RATE,
        samples: (0..n)
            .flat_map(|i| {
                let v = (level * (2.0 * std::f64::consts::PI * freq * i as f64 / RATE as f64).sin())
                    as f32;
                [v, v]
            })
            .collect(),
    }
}

fn assert_tone(samples: &[f32], freq: f64, level: f64, what: &str) {
    let (f, rms) = (frequency(samples, RATE), rms(samples));
    assert!((f - freq).abs() < freq * 0.02, "{what}: {f} Hz, not {freq}");
    let want = level / 2f64.sqrt();
    assert!(
        (rms - want).abs() < want * 0.1,
        "{what}: RMS {rms}, not {want}"
    );
}

#[test]
fn audio_only_outputs_carry_the_tone() {
    let pcm = tone(440.0, 0.5, 1.0);
    // codec, container, codec_name, duration tolerance (ADTS durations are estimates)
    let cases = [
        (AudioCodec::Aac, "aac", "aac", 0.06),
        (AudioCodec::Mp3, "mp3", "mp3", 0.06),
        (AudioCodec::Pcm16, "wav", "pcm_s16le", 0.001),
        (AudioCodec::Opus, "opus", "opus", 0.03),
    ];
    for (codec, ext, codec_name, tolerance) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("out.{ext}"));
        let settings = AudioSettings::new(codec, Some("128k")).unwrap();
        let container = encode::muxer_for_extension(ext).unwrap();
        write_audio_only(&pcm, &settings, None, &path, container).unwrap();
        let a = audio_stream(&path).expect("an audio stream");
        assert_eq!(a["codec_name"], codec_name, "{codec}");
        assert_eq!(a["sample_rate"], "48000", "{codec}");
        assert_eq!(a["channels"], 2, "{codec}");
        let duration = num(&ffprobe(&path).format["duration"]);
        assert!((duration - 1.0).abs() < tolerance, "{codec}: {duration} s");
        let decoded = left(&stereo_pcm(&path));
        // Skip the encoders' ramp-in and ramp-out.
        assert_tone(&decoded[4800..40000], 440.0, 0.5, &codec.to_string());
        if codec != AudioCodec::Pcm16 {
            let rate = num(&a
                .get("bit_rate")
                .cloned()
                .unwrap_or(ffprobe(&path).format["bit_rate"].clone()));
            assert!(rate < 200_000.0, "{codec}: {rate} bit/s for 128k");
        }
    }
}

#[test]
fn the_join_copies_the_video_and_pads_or_cuts_the_audio() {
    // One second of video; half a second and two seconds of audio.
    let mut m = media(Codec::H264);
    m.metadata = BTreeMap::from([("title".to_string(), "tone".to_string())]);
    let video = encode_jpeg(&m, 25, 25.0, false);
    let video_bytes = std::fs::read(&video.path).unwrap();
    for seconds in [0.5, 2.0] {
        let samples = tone(440.0, 0.5, seconds);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.mp4");
        let settings = AudioSettings::new(AudioCodec::Aac, None).unwrap();
        let tags = BTreeMap::from([("title".to_string(), "tone".to_string())]);
        encode::join(
            &[ChunkFile {
                path: video.path.clone(),
                frames: 25,
            }],
            FrameRate::from_fps(25.0),
            Some(JoinAudio {
                pcm: &samples,
                settings: &settings,
            }),
            &out,
            "mp4",
            &tags,
        )
        .unwrap();
        let probe = ffprobe(&out);
        let v = video_stream(&probe);
        assert_eq!(v["nb_read_frames"], "25");
        assert_eq!(v["codec_name"], "h264");
        let a = audio_stream(&out).expect("an audio stream");
        assert_eq!(a["codec_name"], "aac");
        let audio_duration = num(&a["duration"]);
        assert!(
            (audio_duration - 1.0).abs() < 0.03,
            "{seconds} s of audio → {audio_duration}"
        );
        assert_eq!(tag(&probe.format, "title"), Some("tone"));
        // faststart: the index comes before the media.
        let bytes = std::fs::read(&out).unwrap();
        let at = |box_name: &[u8]| bytes.windows(4).position(|w| w == box_name).unwrap();
        assert!(at(b"moov") < at(b"mdat"), "faststart");
        // The video is copied, not re-encoded: the encoded frames are in the new file as is.
        let video_mdat = video_bytes.windows(4).position(|w| w == b"mdat").unwrap();
        let first_sample = &video_bytes[video_mdat + 4..][..64];
        assert!(
            bytes.windows(64).any(|w| w == first_sample),
            "video packets copied"
        );
        let decoded = left(&stereo_pcm(&out));
        let tone_until = (seconds.min(1.0) * RATE as f64) as usize;
        assert_tone(&decoded[2400..tone_until - 2400], 440.0, 0.5, "tone part");
        if seconds < 1.0 {
            let rms = rms(&decoded[tone_until + 2400..]);
            assert!(rms < 0.01, "padding is silence: {rms}");
        }
        let frames = RgbFrames::decode(&out);
        assert_eq!(frames.frame_number(24), 24);
    }
}

#[test]
fn one_chunk_joins_into_every_container_the_codecs_use() {
    let cases = [
        (Codec::H264, AudioCodec::Pcm16, "mkv", "pcm_s16le"),
        (Codec::H264, AudioCodec::Mp3, "mp4", "mp3"),
        (Codec::H265, AudioCodec::Aac, "mp4", "aac"),
        (Codec::Vp8, AudioCodec::Opus, "webm", "opus"),
        (Codec::Vp9, AudioCodec::Pcm16, "mkv", "pcm_s16le"),
        (Codec::Prores, AudioCodec::Pcm16, "mov", "pcm_s16le"),
        (Codec::Prores, AudioCodec::Aac, "mov", "aac"),
        (Codec::H264Mkv, AudioCodec::Mp3, "mkv", "mp3"),
        (Codec::H264Ts, AudioCodec::Aac, "ts", "aac"),
    ];
    let samples = tone(440.0, 0.5, 0.6);
    for (codec, audio, ext, codec_name) in cases {
        assert_eq!(
            encode::file_extension(codec, Some(audio)),
            ext,
            "{codec} + {audio}"
        );
        // Renders join chunk files; an mpegts that starts at 1.4 s joins as well.
        let video = match codec {
            Codec::H264Ts => encode_jpeg(&media(codec), 10, 25.0, false),
            _ => encode_chunk(&media(codec), 0..10, 25.0),
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(format!("out.{ext}"));
        let settings = AudioSettings::new(audio, None).unwrap();
        encode::join(
            &[ChunkFile {
                path: video.path.clone(),
                frames: 10,
            }],
            FrameRate::from_fps(25.0),
            Some(JoinAudio {
                pcm: &samples,
                settings: &settings,
            }),
            &out,
            encode::muxer_for_extension(ext).unwrap(),
            &BTreeMap::new(),
        )
        .unwrap_or_else(|e| panic!("{codec} + {audio}: {e}"));
        let probe = ffprobe(&out);
        let v = video_stream(&probe);
        assert_eq!(v["nb_read_frames"], "10", "{codec} + {audio}");
        let a = audio_stream(&out).expect("an audio stream");
        assert_eq!(a["codec_name"], codec_name, "{codec} + {audio}");
        let duration = num(&probe.format["duration"]);
        assert!(
            (duration - 0.4).abs() < 0.05,
            "{codec} + {audio}: {duration} s: {:?}",
            probe
                .streams
                .iter()
                .map(|s| (&s["start_time"], &s["duration"]))
                .collect::<Vec<_>>()
        );
        let decoded = left(&stereo_pcm(&out));
        assert_tone(
            &decoded[2400..14400],
            440.0,
            0.5,
            &format!("{codec} + {audio}"),
        );
    }
}

// ---- joining chunks ----

/// Frames `frames` of the test picture encoded as one chunk of `media` at `fps`.
fn encode_chunk(media: &MediaOptions, frames: std::ops::Range<u64>, fps: f64) -> Encoded {
    let s = settings_for(media, VideoImageFormat::Jpeg, fps);
    let dir = tempfile::tempdir().unwrap();
    let (_, extension) = encode::chunk_container(s.codec).expect("a chunked codec");
    let path = dir.path().join(format!("chunk.{extension}"));
    let preparer = FramePreparer::new(&s);
    let mut encoder = VideoEncoder::create(&path, &s, Target::Chunk).unwrap();
    for f in frames {
        let shot = jpeg(&bars_picture(f, W, H, false), W, H);
        encoder.push(preparer.prepare(&shot).unwrap()).unwrap();
    }
    encoder.finish().unwrap();
    Encoded { path, _dir: dir }
}

/// Every video packet's pts, in decode order, in the stream's time base.
fn packet_pts(path: &Path) -> Vec<i64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=pts", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

#[test]
fn chunks_at_23_976_fps_join_at_exact_frame_times() {
    let fps = 24000.0 / 1001.0;
    let m = media(Codec::H264);
    let chunks: Vec<(Encoded, u64)> = [0..10, 10..20, 20..30]
        .into_iter()
        .map(|r| (encode_chunk(&m, r.clone(), fps), r.end - r.start))
        .collect();
    let files: Vec<ChunkFile> = chunks
        .iter()
        .map(|(e, frames)| ChunkFile {
            path: e.path.clone(),
            frames: *frames,
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let rate = FrameRate::from_fps(fps);
    encode::join(&files, rate, None, &out, "mp4", &BTreeMap::new()).unwrap();

    let frames = RgbFrames::decode(&out);
    let numbers: Vec<u64> = (0..frames.frames.len())
        .map(|k| frames.frame_number(k))
        .collect();
    assert_eq!(numbers, (0..30).collect::<Vec<_>>());
    let probe = ffprobe(&out);
    let v = video_stream(&probe);
    assert_eq!(v["time_base"], "1/24000");
    assert_eq!(v["avg_frame_rate"], "24000/1001");
    // Frame k at exactly k × 1001 / 24000 s, across both joins.
    let mut pts = packet_pts(&out);
    pts.sort();
    assert_eq!(pts, (0..30).map(|k| k * 1001).collect::<Vec<i64>>());
    assert_eq!(v["duration_ts"], 30 * 1001);
}

#[test]
fn chunks_that_do_not_fit_together_are_refused() {
    let m = media(Codec::H264);
    let mut fast = m.clone();
    fast.x264_preset = Some(cloudrun_render::options::X264Preset::Ultrafast);
    let a = encode_chunk(&m, 0..5, 25.0);
    let b = encode_chunk(&fast, 5..10, 25.0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let join = |files: &[ChunkFile]| {
        encode::join(
            files,
            FrameRate::from_fps(25.0),
            None,
            &out,
            "mp4",
            &BTreeMap::new(),
        )
    };
    let chunk = |e: &Encoded, frames| ChunkFile {
        path: e.path.clone(),
        frames,
    };
    // Other parameters (ultrafast has no CABAC: another PPS in the extradata).
    let e = join(&[chunk(&a, 5), chunk(&b, 5)]).unwrap_err();
    assert!(
        matches!(&e, EncodeError::Join(m) if m.contains("other codec parameters")),
        "{e}"
    );
    // A chunk that holds other frames than it is said to.
    let e = join(&[chunk(&a, 6)]).unwrap_err();
    assert!(
        matches!(&e, EncodeError::Join(m) if m.contains("holds 5 frames, not the 6")),
        "{e}"
    );
    let e = join(&[chunk(&a, 4)]).unwrap_err();
    assert!(
        matches!(&e, EncodeError::Join(m) if m.contains("outside the 4 frames")),
        "{e}"
    );
    assert!(join(&[chunk(&a, 5), chunk(&a, 5)]).is_ok());
}
