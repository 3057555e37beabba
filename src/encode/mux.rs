//! The second pass, as the renderer does it: audio is only known once every frame was visited,
//! so the video is encoded first and its packets are then copied (not re-encoded) next to the
//! freshly encoded audio. Also the audio-only outputs.

use std::collections::BTreeMap;
use std::path::Path;

use ffmpeg_next as ff;

use super::audio::{AudioSettings, Track};
use super::{EncodeError, init, libav};
use crate::pcm::Pcm;

/// Writes `output` as `container` (a libav muxer name, see
/// [`super::codec::muxer_for_extension`]) with the video packets of `video` and `audio`
/// encoded beside them. The audio is padded with silence, or cut, to the video's duration,
/// as the renderer's mix always spans the whole video. `metadata` replaces the container tags.
pub fn remux_with_audio(
    video: &Path,
    audio: &Pcm,
    settings: &AudioSettings,
    output: &Path,
    container: &str,
    metadata: &BTreeMap<String, String>,
) -> Result<(), EncodeError> {
    init();
    let (start, duration) = video_span(video)?;
    let mut input = ff::format::input(video).map_err(libav("opening the video-only file"))?;
    let (in_index, in_time_base, frame_rate) = {
        let stream = input
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| EncodeError::Decode(format!("{} has no video", video.display())))?;
        (stream.index(), stream.time_base(), stream.avg_frame_rate())
    };
    let mut out = open_output(output, container, metadata)?;
    let global_header = out
        .format()
        .flags()
        .contains(ff::format::Flags::GLOBAL_HEADER);
    let total = (duration * audio.sample_rate as f64).round() as u64;
    let mut track = Track::new(audio, settings, Some(total), global_header)?;
    let video_out = {
        let in_stream = input.stream(in_index).expect("the stream exists");
        let mut stream = out
            .add_stream(ff::encoder::find(ff::codec::Id::None))
            .map_err(libav("adding the video stream"))?;
        stream.set_parameters(in_stream.parameters());
        // The tag belongs to the source container (`avc1` in mp4 means nothing to matroska).
        // SAFETY: the parameters belong to a stream of `out`, which we own.
        unsafe { (*stream.parameters().as_mut_ptr()).codec_tag = 0 };
        stream.set_time_base(in_time_base);
        stream.set_rate(frame_rate);
        stream.set_avg_frame_rate(frame_rate);
        stream.index()
    };
    let audio_out = add_audio_stream(&mut out, &track)?;
    write_header(&mut out, container)?;
    let video_tb = out
        .stream(video_out)
        .expect("the stream exists")
        .time_base();
    let audio_tb = out
        .stream(audio_out)
        .expect("the stream exists")
        .time_base();
    let encoder_tb = track.encoder().time_base();

    let write_audio = |packet: &mut ff::Packet, out: &mut ff::format::context::Output| {
        packet.set_stream(audio_out);
        packet.rescale_ts(encoder_tb, audio_tb);
        packet
            .write_interleaved(out)
            .map_err(libav("writing an audio packet"))
    };
    for (stream, mut packet) in input.packets() {
        if stream.index() != in_index {
            continue;
        }
        // The audio starts at 0, so the video does too (mpegts starts later, for one).
        packet.set_pts(packet.pts().map(|t| t - start));
        packet.set_dts(packet.dts().map(|t| t - start));
        // Keep the audio just ahead of the video, so the interleaver holds little.
        let at = packet.dts().or(packet.pts()).unwrap_or(0) as f64 * f64::from(in_time_base);
        while !track.is_finished() && track.position() <= at {
            track.step(&mut |p| write_audio(p, &mut out))?;
        }
        packet.set_stream(video_out);
        packet.rescale_ts(in_time_base, video_tb);
        packet.set_position(-1);
        packet
            .write_interleaved(&mut out)
            .map_err(libav("copying a video packet"))?;
    }
    while !track.is_finished() {
        track.step(&mut |p| write_audio(p, &mut out))?;
    }
    out.write_trailer()
        .map_err(libav("finalising the container"))
}

/// An audio-only file (`mp3`, raw ADTS `aac`, `wav`, …) from `audio`, cut or padded to
/// `duration` seconds when given. Like the renderer, no metadata tags are written.
pub fn write_audio_only(
    audio: &Pcm,
    settings: &AudioSettings,
    duration: Option<f64>,
    output: &Path,
    container: &str,
) -> Result<(), EncodeError> {
    init();
    let mut out = open_output(output, container, &BTreeMap::new())?;
    let global_header = out
        .format()
        .flags()
        .contains(ff::format::Flags::GLOBAL_HEADER);
    let total = duration.map(|d| (d * audio.sample_rate as f64).round() as u64);
    let mut track = Track::new(audio, settings, total, global_header)?;
    let index = add_audio_stream(&mut out, &track)?;
    write_header(&mut out, container)?;
    let stream_tb = out.stream(index).expect("the stream exists").time_base();
    let encoder_tb = track.encoder().time_base();
    while !track.is_finished() {
        track.step(&mut |packet| {
            packet.set_stream(index);
            packet.rescale_ts(encoder_tb, stream_tb);
            packet
                .write_interleaved(&mut out)
                .map_err(libav("writing an audio packet"))
        })?;
    }
    out.write_trailer()
        .map_err(libav("finalising the container"))
}

fn open_output(
    path: &Path,
    container: &str,
    metadata: &BTreeMap<String, String>,
) -> Result<ff::format::context::Output, EncodeError> {
    let mut out =
        ff::format::output_as(path, container).map_err(libav("opening the output file"))?;
    let mut tags = ff::Dictionary::new();
    for (k, v) in metadata {
        tags.set(k, v);
    }
    out.set_metadata(tags);
    Ok(out)
}

fn add_audio_stream(
    out: &mut ff::format::context::Output,
    track: &Track<'_>,
) -> Result<usize, EncodeError> {
    let encoder = track.encoder();
    let mut stream = out
        .add_stream(ff::encoder::find(encoder.encoder().id()))
        .map_err(libav("adding the audio stream"))?;
    stream.set_parameters(encoder.encoder());
    stream.set_time_base(encoder.time_base());
    Ok(stream.index())
}

fn write_header(out: &mut ff::format::context::Output, container: &str) -> Result<(), EncodeError> {
    let mut opts = ff::Dictionary::new();
    if container == "mp4" || container == "mov" {
        opts.set("movflags", "faststart");
    }
    out.write_header_with(opts)
        .map_err(libav("writing the container header"))?;
    Ok(())
}

/// The video's first timestamp (in its stream's time base) and its length in seconds, from
/// the packets themselves: container durations are estimates in some formats (mpegts).
fn video_span(video: &Path) -> Result<(i64, f64), EncodeError> {
    let mut input = ff::format::input(video).map_err(libav("opening the video-only file"))?;
    let stream = input
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| EncodeError::Decode(format!("{} has no video", video.display())))?;
    let (index, tb, rate) = (stream.index(), stream.time_base(), stream.avg_frame_rate());
    // Matroska leaves most block durations out; a frame lasts 1/fps there.
    let frame = if rate.numerator() > 0 {
        (f64::from(rate.invert()) / f64::from(tb)).round() as i64
    } else {
        0
    };
    let (mut start, mut end) = (i64::MAX, i64::MIN);
    for (stream, packet) in input.packets() {
        if stream.index() != index {
            continue;
        }
        if let Some(pts) = packet.pts() {
            let d = if packet.duration() > 0 {
                packet.duration()
            } else {
                frame
            };
            start = start.min(pts);
            end = end.max(pts + d);
        }
    }
    if end < start {
        return Ok((0, 0.0));
    }
    Ok((start, (end - start) as f64 * f64::from(tb)))
}
