//! The join, the last stage of a render: the video packets of one or more video-only files
//! (chunks, each holding a range of the output's frames) are copied in order, not
//! re-encoded, into the final container, next to the audio, which is encoded from the mix of
//! the whole timeline as it goes in. Also the audio-only outputs.
//!
//! Timestamps are counted in frames: a chunk's packet at frame `k` of the chunk lands at
//! frame `frames before the chunk + k`, whatever the chunk container's clock; container
//! durations are never used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ffmpeg_next as ff;
use serde::{Deserialize, Serialize};

use super::audio::{AudioSettings, Track};
use super::settings::FrameRate;
use super::{EncodeError, init, libav};
use crate::options::Codec;
use crate::pcm::Pcm;

/// The container a chunk of `codec` is written in, and its extension: one whose clock holds
/// every frame's time exactly where libav has one, and that keeps what the codec needs.
///
/// - h264, h265, prores: MOV. Its timescale is a multiple of the frame rate's denominator
///   (24000/1001 fps → 1/24000 s ticks, 1001 per frame), so timestamps are exact; MPEG-TS's
///   90 kHz clock is not (3753.75 ticks per frame at 23.976 fps).
/// - vp8, vp9: Matroska. libav writes VP8 in no ISO-BMFF container, and NUT and IVF, which
///   hold exact timestamps, drop the alpha plane (Matroska's BlockAdditional side data that
///   `yuva420p` needs). Matroska counts milliseconds, which is not exact at 30 fps, but a
///   frame is always more than a millisecond long, so the nearest frame of each timestamp is
///   the exact frame, and the output (webm, the same clock) gets the same timestamps a
///   single render writes. libvpx puts one frame in each packet and never reorders.
/// - gif and audio-only outputs are never chunked.
pub fn chunk_container(codec: Codec) -> Option<(&'static str, &'static str)> {
    match codec {
        Codec::H264 | Codec::H264Mkv | Codec::H264Ts | Codec::H265 | Codec::Prores => {
            Some(("mov", "mov"))
        }
        Codec::Vp8 | Codec::Vp9 => Some(("matroska", "mkv")),
        Codec::Gif | Codec::Mp3 | Codec::Aac | Codec::Wav => None,
    }
}

/// One video-only file to join, and how many frames of the output it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFile {
    pub path: PathBuf,
    pub frames: u64,
}

/// What every chunk of a render must share to be joined without re-encoding. Serializable:
/// an instance that rendered a chunk reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamParameters {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub pixel_format: String,
    /// The decoder configuration (avcC, hvcC, …), hex-encoded.
    #[serde(with = "hex::serde")]
    pub extradata: Vec<u8>,
}

impl StreamParameters {
    fn of(parameters: &ff::codec::Parameters) -> StreamParameters {
        // SAFETY: the parameters belong to an open stream; extradata is `extradata_size` bytes.
        unsafe {
            let p = &*parameters.as_ptr();
            let extradata = if p.extradata.is_null() || p.extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.extradata, p.extradata_size as usize).to_vec()
            };
            let pixel: ff::format::Pixel =
                std::mem::transmute::<i32, ff::ffi::AVPixelFormat>(p.format).into();
            StreamParameters {
                codec: parameters.id().name().to_string(),
                width: p.width.max(0) as u32,
                height: p.height.max(0) as u32,
                pixel_format: pixel
                    .descriptor()
                    .map(|d| d.name().to_string())
                    .unwrap_or_else(|| "none".into()),
                extradata,
            }
        }
    }
}

/// The video stream's parameters of a video file.
pub fn stream_parameters(path: &Path) -> Result<StreamParameters, EncodeError> {
    init();
    let input = ff::format::input(path).map_err(libav("opening a video file"))?;
    let stream = input
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| EncodeError::Join(format!("{} has no video", path.display())))?;
    Ok(StreamParameters::of(&stream.parameters()))
}

/// The audio that goes into the joined file: the mix, and how to encode it.
pub struct JoinAudio<'a> {
    pub pcm: &'a Pcm,
    pub settings: &'a AudioSettings,
}

/// A chunk's video stream, as the join reads it.
struct ChunkStream {
    input: ff::format::context::Input,
    index: usize,
    time_base: ff::Rational,
    /// The first presentation timestamp: where frame 0 of the chunk is.
    start: i64,
    parameters: StreamParameters,
}

impl ChunkStream {
    fn open(chunk: &ChunkFile, name: &str) -> Result<ChunkStream, EncodeError> {
        let input = ff::format::input(&chunk.path).map_err(libav("opening a chunk"))?;
        let stream = input
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| EncodeError::Join(format!("{name} has no video")))?;
        let (index, time_base) = (stream.index(), stream.time_base());
        let start = match stream.start_time() {
            t if t == ff::ffi::AV_NOPTS_VALUE => 0,
            t => t,
        };
        let parameters = StreamParameters::of(&stream.parameters());
        Ok(ChunkStream {
            input,
            index,
            time_base,
            start,
            parameters,
        })
    }

    /// The next video packet with its presentation and decode time in frames of the chunk.
    fn next(
        &mut self,
        rate: FrameRate,
        name: &str,
    ) -> Result<Option<(ff::Packet, i64, i64)>, EncodeError> {
        let mut packet = ff::Packet::empty();
        loop {
            match packet.read(&mut self.input) {
                Ok(()) if packet.stream() != self.index => continue,
                Ok(()) => break,
                Err(ff::Error::Eof) => return Ok(None),
                Err(e) => {
                    return Err(EncodeError::Libav {
                        during: "reading a chunk",
                        source: e,
                    });
                }
            }
        }
        let (Some(pts), Some(dts)) = (packet.pts(), packet.dts()) else {
            // Matroska keeps no decode timestamps, which reordering codecs need.
            return Err(EncodeError::Join(format!(
                "{name} has packets without timestamps: write chunks in the codec's chunk container"
            )));
        };
        let frame = to_frames(pts - self.start, self.time_base, rate);
        let dts = to_frames(dts - self.start, self.time_base, rate);
        Ok(Some((packet, frame, dts)))
    }
}

/// Writes `output` as `container` (a libav muxer name, see
/// [`super::codec::muxer_for_extension`]) from the video packets of `chunks`, in order, at
/// `frame_rate`, with `audio` encoded beside them, padded with silence or cut to the video's
/// length. `metadata` becomes the container tags. Refuses chunks that do not fit together:
/// other codec parameters than the first, no keyframe first, or other frames than declared.
///
/// An encoder that reorders frames decodes the first ones ahead of time: their decode
/// timestamps start below 0 by its delay (2 frames for x264's defaults). A short chunk can
/// have less; its decode timestamps are moved down to the largest delay, so they run on
/// without a gap, as in a single encode.
pub fn join(
    chunks: &[ChunkFile],
    frame_rate: FrameRate,
    audio: Option<JoinAudio<'_>>,
    output: &Path,
    container: &str,
    metadata: &BTreeMap<String, String>,
) -> Result<(), EncodeError> {
    init();
    if chunks.is_empty() {
        return Err(EncodeError::Join("there are no chunks to join".into()));
    }
    let name = |i: usize| format!("chunk {i} ({})", chunks[i].path.display());
    // Everything is checked before a byte is written: every chunk's parameters, and each
    // one's first packet (a keyframe, and its decode delay).
    let mut delays = Vec::with_capacity(chunks.len());
    let mut expected: Option<StreamParameters> = None;
    for (i, chunk) in chunks.iter().enumerate() {
        let mut stream = ChunkStream::open(chunk, &name(i))?;
        match &expected {
            None => expected = Some(stream.parameters.clone()),
            Some(e) if *e != stream.parameters => {
                let f = &stream.parameters;
                return Err(EncodeError::Join(format!(
                    "{} has other codec parameters than the first chunk ({} {}x{} {}, {} bytes of extradata, against {} {}x{} {}, {} bytes): it cannot be joined without re-encoding",
                    name(i),
                    f.codec,
                    f.width,
                    f.height,
                    f.pixel_format,
                    f.extradata.len(),
                    e.codec,
                    e.width,
                    e.height,
                    e.pixel_format,
                    e.extradata.len()
                )));
            }
            Some(_) => {}
        }
        match stream.next(frame_rate, &name(i))? {
            Some((packet, _, dts)) if packet.is_key() => delays.push((-dts).max(0)),
            Some(_) => {
                return Err(EncodeError::Join(format!(
                    "{} does not start with a keyframe",
                    name(i)
                )));
            }
            None => return Err(EncodeError::Join(format!("{} has no frames", name(i)))),
        }
    }
    let delay = delays.iter().copied().max().unwrap_or(0);

    let frame_tb = frame_rate.time_base();
    let total_frames: u64 = chunks.iter().map(|c| c.frames).sum();
    let mut out = open_output(output, container, metadata)?;
    let global_header = out
        .format()
        .flags()
        .contains(ff::format::Flags::GLOBAL_HEADER);
    let mut track = match &audio {
        Some(a) => {
            // As long as the video, counted in frames.
            let samples =
                (total_frames as u128 * frame_rate.den as u128 * a.pcm.sample_rate as u128
                    + frame_rate.num as u128 / 2)
                    / frame_rate.num as u128;
            Some(Track::new(
                a.pcm,
                a.settings,
                Some(samples as u64),
                global_header,
            )?)
        }
        None => None,
    };
    // SAFETY: the output format's tag table is static.
    let output_tags = unsafe { (*out.format().as_ptr()).codec_tag };
    {
        let first = ChunkStream::open(&chunks[0], &name(0))?;
        let stream = first.input.stream(first.index).expect("the stream exists");
        let mut added = out
            .add_stream(ff::encoder::find(ff::codec::Id::None))
            .map_err(libav("adding the video stream"))?;
        added.set_parameters(stream.parameters());
        let alpha = stream
            .metadata()
            .get("alpha_mode")
            .is_some_and(|v| v.trim() == "1");
        // SAFETY: the parameters belong to a stream of `out`, which we own.
        unsafe {
            let p = added.parameters().as_mut_ptr();
            // The tag belongs to the source container (`avc1` in mov means nothing to mkv).
            // Kept where the output's container reads it as the same codec: ProRes says its
            // profile in it (`ap4h` is 4444, `apch` HQ).
            if output_tags.is_null()
                || ff::ffi::av_codec_get_id(output_tags, (*p).codec_tag) != (*p).codec_id
            {
                (*p).codec_tag = 0;
            }
            // VP8/VP9 alpha travels as side data in each packet; the Matroska muxer marks
            // the track as having it from the pixel format, which the demuxer reported only
            // as the `alpha_mode` tag.
            if alpha {
                (*p).format = ff::ffi::AVPixelFormat::AV_PIX_FMT_YUVA420P as i32;
            }
        }
        added.set_time_base(frame_tb);
        added.set_rate(frame_rate.rational());
        added.set_avg_frame_rate(frame_rate.rational());
    }
    let video_out = 0;
    let audio_out = match &track {
        Some(t) => Some(add_audio_stream(&mut out, t)?),
        None => None,
    };
    write_header(&mut out, container)?;
    let video_tb = out
        .stream(video_out)
        .expect("the stream exists")
        .time_base();
    let audio_tb = audio_out.map(|i| out.stream(i).expect("the stream exists").time_base());

    let mut before = 0i64;
    let mut last_dts: Option<i64> = None;
    for (i, chunk) in chunks.iter().enumerate() {
        let mut stream = ChunkStream::open(chunk, &name(i))?;
        let mut packets = 0u64;
        while let Some((mut packet, frame, dts)) = stream.next(frame_rate, &name(i))? {
            if frame < 0 || frame as u64 >= chunk.frames {
                return Err(EncodeError::Join(format!(
                    "{} holds frame {frame}, outside the {} frames it was said to have",
                    name(i),
                    chunk.frames
                )));
            }
            let dts = before + dts - (delay - delays[i]);
            if last_dts.is_some_and(|last| dts <= last) {
                return Err(EncodeError::Join(format!(
                    "{}: its decode timestamps would not follow those of the chunk before",
                    name(i)
                )));
            }
            last_dts = Some(dts);
            packets += 1;
            // Keep the audio just ahead of the video, so the interleaver holds little.
            if let (Some(track), Some(audio_out), Some(audio_tb)) =
                (track.as_mut(), audio_out, audio_tb)
            {
                let at = dts as f64 * f64::from(frame_tb);
                while !track.is_finished() && track.position() <= at {
                    step_audio(track, &mut out, audio_out, audio_tb)?;
                }
            }
            packet.set_pts(Some(before + frame));
            packet.set_dts(Some(dts));
            packet.set_duration(1);
            packet.set_stream(video_out);
            packet.rescale_ts(frame_tb, video_tb);
            packet.set_position(-1);
            packet
                .write_interleaved(&mut out)
                .map_err(libav("copying a video packet"))?;
        }
        if packets != chunk.frames {
            return Err(EncodeError::Join(format!(
                "{} holds {packets} frames, not the {} it was said to have",
                name(i),
                chunk.frames
            )));
        }
        before += chunk.frames as i64;
    }
    if let (Some(track), Some(audio_out), Some(audio_tb)) = (track.as_mut(), audio_out, audio_tb) {
        while !track.is_finished() {
            step_audio(track, &mut out, audio_out, audio_tb)?;
        }
    }
    out.write_trailer()
        .map_err(libav("finalising the container"))
}

/// `ts` (in `tb`) as a number of frames at `rate`, to the nearest frame.
fn to_frames(ts: i64, tb: ff::Rational, rate: FrameRate) -> i64 {
    let num = ts as i128 * tb.numerator() as i128 * rate.num as i128;
    let den = tb.denominator() as i128 * rate.den as i128;
    let rounded = if num >= 0 {
        (num + den / 2) / den
    } else {
        -((-num + den / 2) / den)
    };
    rounded as i64
}

fn step_audio(
    track: &mut Track<'_>,
    out: &mut ff::format::context::Output,
    index: usize,
    stream_tb: ff::Rational,
) -> Result<(), EncodeError> {
    let encoder_tb = track.encoder().time_base();
    track.step(&mut |packet| {
        packet.set_stream(index);
        packet.rescale_ts(encoder_tb, stream_tb);
        packet
            .write_interleaved(out)
            .map_err(libav("writing an audio packet"))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_become_frames_exactly_or_to_the_nearest_frame() {
        let ntsc = FrameRate {
            num: 24000,
            den: 1001,
        };
        // MOV at 23.976 fps: 1/24000 s ticks, 1001 per frame.
        let mov = ff::Rational::new(1, 24000);
        assert_eq!(to_frames(1001 * 7, mov, ntsc), 7);
        assert_eq!(to_frames(-1001 * 2, mov, ntsc), -2);
        // Matroska's milliseconds: frame 7 is at 291.958 ms, written as 292.
        let ms = ff::Rational::new(1, 1000);
        assert_eq!(to_frames(292, ms, ntsc), 7);
        assert_eq!(to_frames(-42, ms, ntsc), -1);
        let thirty = FrameRate { num: 30, den: 1 };
        for k in 0..10_000i64 {
            let written = (k as f64 * 1000.0 / 30.0).round() as i64;
            assert_eq!(to_frames(written, ms, thirty), k);
        }
    }
}
