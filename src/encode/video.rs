//! The video encoder: prepared frames → libav encoder → muxer, in order, straight into the file.

use std::path::Path;

use ff::format::Pixel;
use ffmpeg_next as ff;

use super::codec::traits;
use super::filter::VideoFilter;
use super::frame::PreparedFrame;
use super::join::chunk_container;
use super::settings::VideoSettings;
use super::{EncodeError, init, libav};
use crate::options::{Codec, ColorSpace, PixelFormat};

/// What an encoder writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The output itself, in this libav muxer: container tags, `faststart`, gif loops.
    Output { muxer: &'static str },
    /// A video-only file in the codec's chunk container ([`super::chunk_container`]), to be
    /// joined with others and the audio: no tags, no second pass for `faststart`.
    Chunk,
}

/// Encodes frames, in order, into one output file.
pub struct VideoEncoder {
    output: ff::format::context::Output,
    encoder: ff::encoder::Video,
    stream_index: usize,
    encoder_time_base: ff::Rational,
    stream_time_base: ff::Rational,
    palette: Option<VideoFilter>,
    next_pts: i64,
    packets: u64,
}

// SAFETY: the libav contexts are owned exclusively by this value and only used from the
// thread that currently owns it; libav does not tie them to the creating thread.
unsafe impl Send for VideoEncoder {}

impl VideoEncoder {
    pub fn create(
        path: &Path,
        s: &VideoSettings,
        target: Target,
    ) -> Result<VideoEncoder, EncodeError> {
        init();
        let t = traits(s.codec);
        let encoder_name = t.video_encoder.ok_or_else(|| {
            EncodeError::InvalidOption(format!("\"{}\" is an audio codec", s.codec))
        })?;
        let codec = ff::encoder::find_by_name(encoder_name)
            .ok_or_else(|| EncodeError::MissingEncoder(encoder_name.into()))?;
        let muxer = match target {
            Target::Output { muxer } => muxer,
            Target::Chunk => {
                chunk_container(s.codec)
                    .ok_or_else(|| {
                        EncodeError::InvalidOption(format!(
                            "{} output is never rendered in chunks",
                            s.codec
                        ))
                    })?
                    .0
            }
        };
        let mut output =
            ff::format::output_as(path, muxer).map_err(libav("opening the output file"))?;
        let global_header = output
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER);

        let mut enc = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(libav("creating the video encoder"))?;
        let pixel = s.encoder_pixel();
        enc.set_width(s.width);
        enc.set_height(s.height);
        enc.set_format(pixel);
        let time_base = s.frame_rate.time_base();
        enc.set_time_base(time_base);
        enc.set_frame_rate(Some(s.frame_rate.rational()));
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
        if s.codec != Codec::Gif {
            set_color(&mut enc, s.color_space);
        }
        let mut opts = ff::Dictionary::new();
        if let Some(crf) = s.crf {
            opts.set("crf", &crf.to_string());
        }
        if let Some(b) = s.buffer_size {
            opts.set("bufsize", &b.to_string());
        }
        if let Some(p) = s.preset {
            opts.set("preset", p.as_str());
        }
        let threads = s.threads.to_string();
        match s.codec {
            Codec::H264 | Codec::H264Mkv | Codec::H264Ts => opts.set("threads", &threads),
            Codec::H265 => {
                opts.set("threads", &threads);
                // x265 prints its whole configuration to stderr unless told otherwise, and
                // writes it (thread counts included) into the stream headers unless told
                // otherwise: chunks from machines with other CPU counts could not be joined.
                opts.set("x265-params", "log-level=error:info=0");
            }
            Codec::Prores => {
                opts.set("profile", &s.prores_profile.ffmpeg_profile().to_string());
                opts.set("threads", &threads);
            }
            Codec::Vp8 | Codec::Vp9 => {
                if s.bitrate.is_none() {
                    enc.set_bit_rate(if s.codec == Codec::Vp8 {
                        vp8_quality_ceiling(s)
                    } else {
                        // vp9's pure constant-quality mode.
                        0
                    });
                }
                if s.pixel_format == PixelFormat::Yuva420p {
                    opts.set("auto-alt-ref", "0");
                }
                // libvpx encodes on one thread unless asked.
                opts.set("threads", &threads);
                if s.codec == Codec::Vp9 {
                    opts.set("row-mt", "1");
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
            stream.set_rate(s.frame_rate.rational());
            stream.set_avg_frame_rate(s.frame_rate.rational());
            stream_index = stream.index();
        }
        let mut muxer_opts = ff::Dictionary::new();
        if let Target::Output { .. } = target {
            let mut tags = ff::Dictionary::new();
            for (k, v) in &s.metadata {
                tags.set(k, v);
            }
            output.set_metadata(tags);
            if muxer == "mp4" || muxer == "mov" {
                muxer_opts.set("movflags", "faststart");
            }
        }
        if s.codec == Codec::Gif {
            // Remotion: 0 → play once ("-loop -1"), N → N, unset → the muxer's infinite.
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
        let palette = match s.codec {
            Codec::Gif => Some(palette(s)?),
            _ => None,
        };
        Ok(VideoEncoder {
            output,
            encoder,
            stream_index,
            encoder_time_base: time_base,
            stream_time_base,
            palette,
            next_pts: 0,
            packets: 0,
        })
    }

    /// Frames whose packets have been written.
    pub fn encoded_frames(&self) -> u64 {
        self.packets
    }

    /// Encodes the next frame (frames must come in output order).
    pub fn push(&mut self, frame: PreparedFrame) -> Result<(), EncodeError> {
        let mut frame = frame.0;
        frame.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        match &mut self.palette {
            Some(palette) => {
                palette.push(Some(&frame))?;
                self.drain_palette()
            }
            None => {
                self.encoder
                    .send_frame(&frame)
                    .map_err(libav("encoding a frame"))?;
                self.drain()
            }
        }
    }

    fn drain_palette(&mut self) -> Result<(), EncodeError> {
        let mut quantised = ff::frame::Video::empty();
        while self
            .palette
            .as_mut()
            .expect("gif encoders have a palette")
            .pull(&mut quantised)?
        {
            self.encoder
                .send_frame(&quantised)
                .map_err(libav("encoding a frame"))?;
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), EncodeError> {
        let mut packet = ff::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            // Without a duration the last frame counts for nothing and mp4 comes out a frame
            // short.
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

    /// Flushes the encoder and finalises the container. Returns the frames written.
    pub fn finish(mut self) -> Result<u64, EncodeError> {
        if let Some(palette) = &mut self.palette {
            palette.push(None)?;
            self.drain_palette()?;
        }
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

/// vp8's constant-quality mode needs a bitrate ceiling; libvpx's default of 256 kbit/s (what
/// the renderer's ffmpeg ends up with) overrides any CRF at HD sizes. Half a bit per pixel is
/// out of the way of every CRF but the lowest.
fn vp8_quality_ceiling(s: &VideoSettings) -> usize {
    let pixels_per_second = s.width as f64 * s.height as f64 * s.frame_rate.as_f64();
    (pixels_per_second * 0.5).max(1_000_000.0) as usize
}

/// Tags the stream with the colour space the frames were converted to (`frame.rs`), with the
/// renderer's values: bt2020-ncl is tagged HLG (arib-std-b67) as the renderer does.
fn set_color(enc: &mut ff::encoder::video::Video, color: ColorSpace) {
    use ff::color::{Primaries, Range, Space, TransferCharacteristic as Trc};
    let (space, primaries, trc) = match color {
        ColorSpace::Default => return,
        ColorSpace::Bt709 => (Space::BT709, Primaries::BT709, Trc::BT709),
        ColorSpace::Bt2020Ncl => (Space::BT2020NCL, Primaries::BT2020, Trc::ARIB_STD_B67),
        ColorSpace::Bt2020Cl => (Space::BT2020CL, Primaries::BT2020, Trc::BT2020_10),
    };
    enc.set_colorspace(space);
    enc.set_color_primaries(primaries);
    enc.set_color_transfer_characteristic(trc);
    enc.set_color_range(Range::MPEG);
}

/// GIF colours: libavfilter's palettegen → paletteuse, one palette per frame.
///
/// The renderer builds one palette from all frames, which means holding every frame until
/// the end. A palette per frame streams with bounded memory and fits each frame better
/// (measured: +4 dB PSNR, ~10 % larger files); the gif encoder writes it as a local table.
fn palette(s: &VideoSettings) -> Result<VideoFilter, EncodeError> {
    VideoFilter::new(
        (s.prepared_pixel(), s.width, s.height),
        s.frame_rate.time_base(),
        Pixel::PAL8,
        "split[a][b];[a]palettegen=stats_mode=single[p];[b][p]paletteuse=new=1",
        "making the gif palette",
    )
}
