//! Audio encoding: the mix (interleaved stereo f32) → aac, mp3, opus or pcm-16.
//!
//! [`super::mux`] pulls from the mix one encoder frame at a time, so a long track never has
//! to exist twice in memory.

use ffmpeg_next as ff;

use super::codec::audio_encoder_name;
use super::{EncodeError, init, libav};
use crate::options::{AudioCodec, parse_bitrate};
use crate::pcm::{CHANNELS, Pcm};

/// `audioBitrate` when none is given.
pub const DEFAULT_AUDIO_BITRATE: &str = "320k";

/// What the mix hands the encoder: packed f32.
const INPUT: ff::format::Sample = ff::format::Sample::F32(ff::format::sample::Type::Packed);
const INPUT_BYTES: usize = 4;

/// How the audio track is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSettings {
    pub codec: AudioCodec,
    /// Bits per second; pcm-16 ignores it.
    pub bitrate: u64,
}

impl AudioSettings {
    /// `audioBitrate` as the client sends it (`"320k"` when absent).
    pub fn new(codec: AudioCodec, audio_bitrate: Option<&str>) -> Result<Self, EncodeError> {
        let bitrate = parse_bitrate(audio_bitrate.unwrap_or(DEFAULT_AUDIO_BITRATE))
            .map_err(|e| EncodeError::InvalidOption(format!("\"audioBitrate\": {e}")))?;
        Ok(AudioSettings { codec, bitrate })
    }
}

/// One audio encoder with its sample-format converter.
pub(crate) struct AudioEncoder {
    encoder: ff::encoder::Audio,
    resampler: ff::software::resampling::Context,
    rate: u32,
    frame_samples: usize,
    /// The encoder takes a short last frame; otherwise it gets padded with silence.
    short_last_frame: bool,
    next_pts: i64,
}

// SAFETY: owned and used by one thread at a time, like `VideoEncoder`.
unsafe impl Send for AudioEncoder {}

impl AudioEncoder {
    pub fn new(
        settings: &AudioSettings,
        rate: u32,
        global_header: bool,
    ) -> Result<AudioEncoder, EncodeError> {
        init();
        let name = audio_encoder_name(settings.codec);
        let codec = ff::encoder::find_by_name(name)
            .ok_or_else(|| EncodeError::MissingEncoder(name.into()))?;
        let audio = codec
            .audio()
            .map_err(libav("looking up the audio encoder"))?;
        if let Some(mut rates) = audio.rates()
            && !rates.any(|r| r == rate as i32)
        {
            return Err(EncodeError::InvalidOption(format!(
                "The audio codec {} (\"audioCodec\") does not take {rate} Hz audio",
                settings.codec
            )));
        }
        let supported: Vec<ff::format::Sample> =
            audio.formats().map(Iterator::collect).unwrap_or_default();
        use ff::format::Sample;
        use ff::format::sample::Type;
        let preferred = [
            INPUT,
            Sample::F32(Type::Planar),
            Sample::I16(Type::Planar),
            Sample::I16(Type::Packed),
        ];
        let format = preferred
            .into_iter()
            .find(|f| supported.contains(f))
            .or_else(|| supported.first().copied())
            .ok_or_else(|| EncodeError::MissingEncoder(format!("{name} (no sample format)")))?;

        let mut enc = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(libav("creating the audio encoder"))?;
        enc.set_rate(rate as i32);
        enc.set_format(format);
        // FFmpeg 5.1 through ffmpeg-next 9 uses the old channel-layout API: both are needed.
        enc.set_channel_layout(ff::ChannelLayout::STEREO);
        enc.set_channels(CHANNELS as i32);
        enc.set_time_base(ff::Rational::new(1, rate as i32));
        if settings.codec != AudioCodec::Pcm16 {
            enc.set_bit_rate(settings.bitrate as usize);
        }
        if global_header {
            enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        let mut opts = ff::Dictionary::new();
        if settings.codec == AudioCodec::Aac {
            // The renderer compresses aac with `-cutoff 18000`.
            opts.set("cutoff", "18000");
        }
        let encoder = enc
            .open_as_with(codec, opts)
            .map_err(libav("opening the audio encoder"))?;
        let caps = codec.capabilities();
        let variable = caps.contains(ff::codec::Capabilities::VARIABLE_FRAME_SIZE);
        let frame_samples = match encoder.frame_size() as usize {
            0 => 1024,
            n if variable => n.max(1024),
            n => n,
        };
        let resampler = ff::software::resampling::Context::get(
            INPUT,
            ff::ChannelLayout::STEREO,
            rate,
            format,
            ff::ChannelLayout::STEREO,
            rate,
        )
        .map_err(libav("creating the sample converter"))?;
        Ok(AudioEncoder {
            encoder,
            resampler,
            rate,
            frame_samples,
            short_last_frame: variable || caps.contains(ff::codec::Capabilities::SMALL_LAST_FRAME),
            next_pts: 0,
        })
    }

    pub fn encoder(&self) -> &ff::encoder::Audio {
        &self.encoder
    }

    pub fn time_base(&self) -> ff::Rational {
        ff::Rational::new(1, self.rate as i32)
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// An empty frame of interleaved input, the encoder's frame size long.
    pub fn input_frame(&self) -> ff::frame::Audio {
        audio_frame(INPUT, self.frame_samples, self.rate)
    }

    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Encodes `samples` stereo frames of `input` (the last may be short).
    pub fn send(
        &mut self,
        input: &mut ff::frame::Audio,
        samples: usize,
    ) -> Result<(), EncodeError> {
        let mut samples = samples;
        if samples < self.frame_samples && !self.short_last_frame {
            let frame_bytes = INPUT_BYTES * CHANNELS;
            input.data_mut(0)[samples * frame_bytes..self.frame_samples * frame_bytes].fill(0);
            samples = self.frame_samples;
        }
        input.set_samples(samples);
        let mut converted = audio_frame(self.encoder.format(), samples, self.rate);
        self.resampler
            .run(input, &mut converted)
            .map_err(libav("converting samples"))?;
        converted.set_pts(Some(self.next_pts));
        self.next_pts += samples as i64;
        self.encoder
            .send_frame(&converted)
            .map_err(libav("encoding audio"))
    }

    pub fn send_eof(&mut self) -> Result<(), EncodeError> {
        self.encoder
            .send_eof()
            .map_err(libav("flushing the audio encoder"))
    }

    pub fn receive(&mut self, packet: &mut ff::Packet) -> bool {
        self.encoder.receive_packet(packet).is_ok()
    }
}

fn audio_frame(format: ff::format::Sample, samples: usize, rate: u32) -> ff::frame::Audio {
    let mut frame = ff::frame::Audio::empty();
    frame.set_format(format);
    frame.set_samples(samples);
    frame.set_channel_layout(ff::ChannelLayout::STEREO);
    frame.set_channels(CHANNELS as u16);
    frame.set_rate(rate);
    // SAFETY: format, sample count and channels are set, which is what the allocator reads.
    let status = unsafe { ff::ffi::av_frame_get_buffer(frame.as_mut_ptr(), 0) };
    assert!(status >= 0, "out of memory for an audio frame");
    frame
}

/// An audio track as it is written: reads the mix, pads it with silence or cuts it to
/// `total` stereo frames, and hands out encoded packets.
pub(crate) struct Track<'s> {
    pcm: &'s Pcm,
    encoder: AudioEncoder,
    total: Option<u64>,
    /// Stereo frames handed to the encoder so far.
    sent: u64,
    flushed: bool,
}

impl<'s> Track<'s> {
    pub fn new(
        pcm: &'s Pcm,
        settings: &AudioSettings,
        total: Option<u64>,
        global_header: bool,
    ) -> Result<Track<'s>, EncodeError> {
        let encoder = AudioEncoder::new(settings, pcm.sample_rate, global_header)?;
        Ok(Track {
            pcm,
            encoder,
            total,
            sent: 0,
            flushed: false,
        })
    }

    pub fn encoder(&self) -> &AudioEncoder {
        &self.encoder
    }

    /// Seconds of audio handed to the encoder so far.
    pub fn position(&self) -> f64 {
        self.sent as f64 / self.encoder.rate() as f64
    }

    pub fn is_finished(&self) -> bool {
        self.flushed
    }

    /// Encodes one more frame (or flushes at the end) and passes every packet that came out
    /// to `write`.
    pub fn step(
        &mut self,
        write: &mut dyn FnMut(&mut ff::Packet) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        if self.flushed {
            return Ok(());
        }
        let available = self.pcm.frames() as u64;
        let end = self.total.unwrap_or(available);
        let want = (end - self.sent).min(self.encoder.frame_samples() as u64) as usize;
        let mut frame = self.encoder.input_frame();
        if want > 0 {
            let from = (self.sent as usize).min(self.pcm.frames());
            let to = (self.sent as usize + want).min(self.pcm.frames());
            let source: &[u8] =
                bytemuck::cast_slice(&self.pcm.samples[from * CHANNELS..to * CHANNELS]);
            let buf = &mut frame.data_mut(0)[..want * INPUT_BYTES * CHANNELS];
            buf[..source.len()].copy_from_slice(source);
            // Shorter than the video: the rest is silence, as the renderer pads its mix.
            buf[source.len()..].fill(0);
            self.encoder.send(&mut frame, want)?;
            self.sent += want as u64;
        }
        if self.sent >= end {
            self.encoder.send_eof()?;
            self.flushed = true;
        }
        let mut packet = ff::Packet::empty();
        while self.encoder.receive(&mut packet) {
            write(&mut packet)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_bitrate_defaults_to_320k_and_names_the_option() {
        let s = AudioSettings::new(AudioCodec::Aac, None).unwrap();
        assert_eq!(s.bitrate, 320_000);
        let e = AudioSettings::new(AudioCodec::Mp3, Some("x")).unwrap_err();
        assert!(e.to_string().contains("\"audioBitrate\""), "{e}");
    }
}
