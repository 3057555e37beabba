//! Codecs end to end: the fixture site through real Chromium, the frame preparer and libav.
//! tests/encode.rs covers each option with synthetic frames; these check that a real render
//! wires them up (capture format, pixel format, fps, frame order, container).

mod common;

use cloudrun_render::options::{
    Codec, ColorSpace, FrameRange, PixelFormat, ProResProfile, VideoImageFormat,
};
use common::*;
use serde_json::Value;

fn duration(probe: &Probe) -> f64 {
    probe.format["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("a duration")
}

#[test]
fn vp8_from_png_frames_keeps_the_transparency() {
    let mut m = media("FramesAlpha");
    m.codec = Codec::Vp8;
    m.image_format = Some(VideoImageFormat::Png);
    m.pixel_format = Some(PixelFormat::Yuva420p);
    let r = render(&m);
    let probe = ffprobe(&r.path);
    let v = video_stream(&probe);
    assert_eq!(probe.format["format_name"], "matroska,webm");
    assert_eq!(v["codec_name"], "vp8");
    assert_eq!(v["tags"]["alpha_mode"], "1");
    assert_eq!(v["nb_read_frames"], "30");
    assert_eq!(v["avg_frame_rate"], "30/1");
    assert!((duration(&probe) - 1.0).abs() < 0.01);
    let (w, h) = (320, 180);
    let frames = rgba_frames(&r.path, Some("libvpx"), w, h);
    assert_eq!(frames.len(), 30);
    let at =
        |f: &[u8], x: usize, y: usize| -> [u8; 4] { f[(y * w + x) * 4..][..4].try_into().unwrap() };
    for (k, f) in frames.iter().enumerate() {
        let n = bar_code(w, h, |x, y| {
            let [r, g, b, _] = at(f, x, y);
            [r, g, b]
        });
        assert_eq!(n, k as u64, "frame {k}");
        assert_eq!(at(f, w / 2, h / 4)[3], 255, "frame {k}: bars are opaque");
        assert!(at(f, w / 4, h * 3 / 4)[3] < 8, "frame {k}: bottom is clear");
        let square = at(f, w - 20, h - 20);
        assert!(
            square[0] > 200 && square[3].abs_diff(128) < 16,
            "frame {k}: half-transparent red, got {square:?}"
        );
    }
}

#[test]
fn prores_4444_and_hq() {
    let mut m = media("Frames");
    m.codec = Codec::Prores;
    m.frame_range = FrameRange::Ranges(vec![(0, Some(29))]);
    let r = render(&m);
    let probe = ffprobe(&r.path);
    let v = video_stream(&probe);
    assert_eq!(v["codec_name"], "prores");
    assert_eq!(v["profile"], "HQ");
    assert_eq!(v["pix_fmt"], "yuv422p10le");
    assert_eq!(v["nb_read_frames"], "30");
    assert_eq!(v["avg_frame_rate"], "30/1");
    assert!((duration(&probe) - 1.0).abs() < 0.01);
    assert_frames(&r.path, &(0..30).collect::<Vec<_>>());

    m.prores_profile = Some(ProResProfile::ProRes4444);
    m.frame_range = FrameRange::Ranges(vec![(40, Some(44))]);
    let r = render(&m);
    let v = video_stream(&ffprobe(&r.path)).clone();
    assert_eq!(v["profile"], "4444");
    assert_frames(&r.path, &[40, 41, 42, 43, 44]);
}

#[test]
fn gif_with_every_nth_frame_and_loops() {
    let mut m = media("Frames");
    m.codec = Codec::Gif;
    m.frame_range = FrameRange::Ranges(vec![(0, Some(29))]);
    m.every_nth_frame = 3;
    m.number_of_gif_loops = Some(2);
    let r = render(&m);
    let probe = ffprobe(&r.path);
    let v = video_stream(&probe);
    assert_eq!(v["codec_name"], "gif");
    assert_eq!(v["nb_read_frames"], "10");
    assert_eq!(v["avg_frame_rate"], "10/1");
    assert!((duration(&probe) - 1.0).abs() < 0.01);
    assert_eq!(gif_loop_count(&r.path), Some(2));
    assert_frames(&r.path, &(0..30).step_by(3).collect::<Vec<_>>());
    // The palette keeps the bottom colour: frame 27 is rgb(54, 128, 201).
    let frames = RgbFrames::decode(&r.path);
    assert_close(frames.pixel(9, 320, 270), [54, 128, 201], 8, "gif colour");
}

#[test]
fn h264_bt709_is_tagged_and_metadata_is_written() {
    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(0, Some(4))]);
    m.color_space = ColorSpace::Bt709;
    m.metadata.insert("Artist".into(), "fixture".into());
    let r = render(&m);
    let probe = ffprobe(&r.path);
    let v = video_stream(&probe);
    for (key, value) in [
        ("color_space", "bt709"),
        ("color_primaries", "bt709"),
        ("color_transfer", "bt709"),
        ("color_range", "tv"),
    ] {
        assert_eq!(v[key], value, "{key}");
    }
    assert_eq!(probe.format["tags"]["artist"], Value::from("fixture"));
    assert_frames(&r.path, &[0, 1, 2, 3, 4]);
    // Decoded as BT.709, the bottom colour of frame 2 is back to rgb(4, 128, 251).
    let frames = RgbFrames::decode(&r.path);
    assert_close(frames.pixel(2, 320, 270), [4, 128, 251], 6, "bt709 colour");
}
