//! A render in chunks: each chunk a range of the plan's frames rendered by stage 2 into its
//! own file, the files joined without re-encoding and the audio mixed once. Real Chromium,
//! real libav; packets compared by their bytes (ffprobe's data hashes).

mod common;

use cloudrun_render::options::{Codec, FrameRange, PixelFormat, VideoImageFormat};
use cloudrun_render::render::{MediaPlan, RenderError, RenderProgress};
use cloudrun_render::site::Access;
use common::chunks::{Chunked, Packet, render_in_chunks, render_locally_in_chunks};
use common::*;
use tokio_util::sync::CancellationToken;

fn duration(probe: &Probe) -> f64 {
    probe.format["duration"].as_str().unwrap().parse().unwrap()
}

/// What every joined file must be: the chunks' packets, byte for byte, in order, with
/// strictly rising decode timestamps (one frame apart where the container keeps exact
/// ones) and a keyframe where each chunk starts.
fn assert_joined_without_reencoding(c: &Chunked) -> Vec<Packet> {
    let joined = common::chunks::video_packets(&c.output);
    let mut expected = Vec::new();
    let mut starts = Vec::new();
    for (path, outcome) in &c.chunks {
        let packets = common::chunks::video_packets(path);
        assert_eq!(packets.len() as u64, outcome.frames, "{}", path.display());
        assert!(packets[0].key, "{} starts with a keyframe", path.display());
        starts.push(expected.len());
        expected.extend(packets.into_iter().map(|p| p.hash));
    }
    let hashes: Vec<String> = joined.iter().map(|p| p.hash.clone()).collect();
    assert_eq!(
        hashes, expected,
        "the joined packets are the chunks' packets"
    );
    let format = ffprobe(&c.output).format["format_name"].clone();
    for pair in joined.windows(2) {
        match (pair[0].dts, pair[1].dts) {
            (Some(a), Some(b)) => assert!(a < b, "dts rise: {pair:?}"),
            // Matroska keeps presentation times only.
            _ => assert_eq!(format, "matroska,webm", "{pair:?}"),
        }
    }
    if format.as_str().unwrap().starts_with("mov") {
        let steps: Vec<i64> = joined
            .windows(2)
            .map(|p| p[1].dts.unwrap() - p[0].dts.unwrap())
            .collect();
        assert!(
            steps.iter().all(|s| *s == steps[0]),
            "one frame between decode timestamps, joins included: {steps:?}"
        );
    }
    for start in starts {
        assert!(
            joined[start].key,
            "a keyframe where a chunk starts ({start})"
        );
    }
    joined
}

#[test]
fn the_barcode_in_four_chunks_decodes_like_the_single_render() {
    let m = media("Frames");
    let single = render(&m);
    let c = render_in_chunks(&m, 23);
    assert_eq!(c.chunks.len(), 4);

    assert_frames(&c.output, &(0..90).collect::<Vec<_>>());
    let (a, b) = (ffprobe(&single.path), ffprobe(&c.output));
    let (va, vb) = (video_stream(&a), video_stream(&b));
    assert_eq!(vb["nb_read_frames"], "90");
    assert_eq!(va["nb_read_frames"], vb["nb_read_frames"]);
    assert_eq!(va["duration_ts"], vb["duration_ts"]);
    assert_eq!(va["time_base"], vb["time_base"]);
    assert_eq!(duration(&a), duration(&b));
    assert_eq!(b.format["format_name"], a.format["format_name"]);

    let joined = assert_joined_without_reencoding(&c);
    // The same timing as the single render: frame times, and decode times that start as far
    // below 0 as x264's delay.
    let single_packets = common::chunks::video_packets(&single.path);
    let times = |p: &[Packet]| {
        let mut pts: Vec<i64> = p.iter().map(|p| p.pts).collect();
        pts.sort();
        (pts, p.iter().map(|p| p.dts).collect::<Vec<_>>())
    };
    assert_eq!(times(&joined), times(&single_packets));
    let first = c.chunks[0].1.parameters.clone().expect("parameters");
    assert!(!first.extradata.is_empty(), "an avcC");
    for (_, o) in &c.chunks {
        assert_eq!(o.parameters.as_ref(), Some(&first), "every chunk alike");
        assert_eq!(o.frames, o.range.frames());
        assert_eq!(o.assets.len() as u64, o.range.frames());
        assert_eq!(o.assets[0].frame, o.range.first, "frame numbers");
    }
    // Each chunk's progress counts its own frames, for a coordinator to sum.
    for ((_, o), p) in c.chunks.iter().zip(&c.progress) {
        let n = o.range.frames();
        assert_eq!(
            *p,
            RenderProgress {
                rendered: n,
                encoded: n,
                total: n,
                overall: None,
            }
        );
    }
}

#[test]
fn every_chunked_codec_joins() {
    for codec in [
        Codec::H264,
        Codec::H265,
        Codec::Vp8,
        Codec::Vp9,
        Codec::Prores,
        Codec::H264Mkv,
        Codec::H264Ts,
    ] {
        let mut m = media("Frames");
        m.codec = codec;
        m.frame_range = FrameRange::Ranges(vec![(0, Some(23))]);
        let c = render_in_chunks(&m, 6);
        assert_eq!(c.chunks.len(), 4, "{codec}");
        assert_frames(&c.output, &(0..24).collect::<Vec<_>>());
        if codec == Codec::H264Ts {
            // mpegts takes Annex B, not the chunks' length-prefixed packets: libav rewrites
            // each packet's framing on the way in, which is not a re-encode but changes bytes.
            let joined = common::chunks::video_packets(&c.output);
            assert_eq!(joined.len(), 24);
            continue;
        }
        assert_joined_without_reencoding(&c);
    }
}

#[test]
fn vp8_chunks_keep_the_transparency() {
    let mut m = media("FramesAlpha");
    m.codec = Codec::Vp8;
    m.image_format = Some(VideoImageFormat::Png);
    m.pixel_format = Some(PixelFormat::Yuva420p);
    let c = render_in_chunks(&m, 10);
    assert_eq!(c.chunks.len(), 3);
    assert_joined_without_reencoding(&c);
    let probe = ffprobe(&c.output);
    assert_eq!(video_stream(&probe)["tags"]["alpha_mode"], "1");
    let (w, h) = (320, 180);
    let frames = rgba_frames(&c.output, Some("libvpx"), w, h);
    assert_eq!(frames.len(), 30);
    for (k, f) in frames.iter().enumerate() {
        let at = |x: usize, y: usize| -> [u8; 4] { f[(y * w + x) * 4..][..4].try_into().unwrap() };
        let n = bar_code(w, h, |x, y| {
            let [r, g, b, _] = at(x, y);
            [r, g, b]
        });
        assert_eq!(n, k as u64);
        assert!(at(w / 4, h * 3 / 4)[3] < 8, "frame {k}: bottom is clear");
    }
}

#[test]
fn a_worker_uses_the_resolved_composition_and_its_props() {
    // Metadata's calculateMetadata makes it 320x240 at 25 fps and sets `computed`, which
    // turns the picture green: the workers only got the resolved composition.
    let c = render_in_chunks(&media("Metadata"), 5);
    assert_eq!(c.chunks.len(), 3);
    assert_joined_without_reencoding(&c);
    let frames = RgbFrames::decode(&c.output);
    assert_eq!(
        (frames.width, frames.height, frames.frames.len()),
        (320, 240, 12)
    );
    for k in 0..12 {
        assert_close(frames.pixel(k, 160, 120), [0, 255, 0], 8, "resolved props");
    }
    assert_eq!(video_stream(&ffprobe(&c.output))["avg_frame_rate"], "25/1");
}

#[test]
fn the_audio_of_a_chunked_render_is_the_single_renders() {
    let m = media("Audio");
    let single = render(&m);
    let (chunked, progress) = render_locally_in_chunks(&m, 15);
    assert_frames(&chunked.path, &(0..60).collect::<Vec<_>>());
    let (a, b) = (stereo_pcm(&single.path), stereo_pcm(&chunked.path));
    assert!(a.len() > 48_000 * 2, "two seconds of stereo");
    assert!(a.iter().any(|s| s.abs() > 0.1), "audible");
    // One mix of the same records, encoded once by the same encoder: identical samples.
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the decoded audio is identical");
    // The overall progress never goes back and ends at the total.
    for pair in progress.windows(2) {
        assert!(pair[0].rendered <= pair[1].rendered, "{pair:?}");
        assert!(pair[0].encoded <= pair[1].encoded, "{pair:?}");
    }
    assert_eq!(
        progress.last(),
        Some(&RenderProgress {
            rendered: 60,
            encoded: 60,
            total: 60,
            overall: None,
        })
    );
    assert!(progress.iter().all(|p| p.total == 60));
}

#[test]
fn gif_and_audio_only_outputs_are_rendered_in_one_piece() {
    let mut m = media("Frames");
    m.codec = Codec::Gif;
    m.frame_range = FrameRange::Ranges(vec![(0, Some(19))]);
    let (gif, _) = render_locally_in_chunks(&m, 5);
    assert_frames(&gif.path, &(0..20).collect::<Vec<_>>());

    let mut m = media("Audio");
    m.codec = Codec::Mp3;
    let (mp3, _) = render_locally_in_chunks(&m, 15);
    let probe = ffprobe(&mp3.path);
    assert_eq!(probe.streams.len(), 1);
    assert!(
        (duration(&probe) - 2.0).abs() < 0.06,
        "{}",
        duration(&probe)
    );

    // A worker is never asked for a gif chunk; if it is, it says why not.
    let mut m = media("Frames");
    m.codec = Codec::Gif;
    let (r, site) = (renderer(), site());
    let e = runtime().block_on(async {
        let session = r.open(&site, Access::RemoteOnly).await.unwrap();
        let cancel = CancellationToken::new();
        let resolved = session
            .resolve("Frames", &m.overrides, &cancel)
            .await
            .unwrap();
        let plan = MediaPlan::new(&m, resolved, r.cpus()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = cloudrun_render::render::progress::channel();
        session
            .render_chunk(&plan, plan.whole(), &dir.path().join("x"), &tx, &cancel)
            .await
            .unwrap_err()
    });
    assert!(
        matches!(&e, RenderError::Invalid(m) if m.contains("never split into chunks") && m.contains("gif")),
        "{e}"
    );
}
