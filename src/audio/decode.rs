//! Decoding one audio source through a libavfilter chain into stereo f32 samples.
//!
//! The chain does what the renderer's per-track ffmpeg filter script does: resample, change
//! tempo, trim, and shift the pitch; volume and mixing happen in Rust afterwards.

use std::path::Path;

use ffmpeg_next as ff;

use super::AudioError;

fn libav(during: &'static str) -> impl FnOnce(ff::Error) -> AudioError {
    move |e| AudioError::Decode(format!("{during}: {e}"))
}

/// `atempo` takes 0.5..=2 reliably; larger changes are a chain of steps.
fn atempo_chain(mut factor: f64) -> Vec<String> {
    let mut steps = Vec::new();
    while factor > 2.0 {
        steps.push("atempo=2.0".to_string());
        factor /= 2.0;
    }
    while factor < 0.5 {
        steps.push("atempo=0.5".to_string());
        factor /= 0.5;
    }
    if (factor - 1.0).abs() > 1e-9 {
        steps.push(format!("atempo={factor:.5}"));
    }
    steps
}

/// What to take from a source and how to change it.
#[derive(Debug, Clone, PartialEq)]
pub struct Extract {
    pub stream_index: usize,
    pub sample_rate: u32,
    pub playback_rate: f64,
    /// Start and end in seconds on the tempo-changed timeline.
    pub start: f64,
    pub end: f64,
    pub tone_frequency: f64,
}

/// The filter chain between the decoder and the stereo f32 output.
pub fn filter_spec(x: &Extract, mono: bool) -> String {
    let sr = x.sample_rate;
    let mut chain = Vec::new();
    if mono {
        // Like the browser's up-mixing: the one channel on both sides at full level.
        chain.push("pan=stereo|c0=c0|c1=c0".to_string());
    }
    chain.extend([
        format!("aresample={sr}"),
        "aformat=sample_fmts=flt:channel_layouts=stereo".to_string(),
    ]);
    chain.extend(atempo_chain(x.playback_rate));
    let start_us = (x.start * 1e6).round().max(0.0) as i64;
    let end_us = (x.end * 1e6).round().max(0.0) as i64;
    chain.push(format!("atrim=start={start_us}us:end={end_us}us"));
    chain.push("asetpts=PTS-STARTPTS".to_string());
    chain.extend(tone_chain(sr, x.tone_frequency));
    chain.join(",")
}

/// `toneFrequency` like the renderer: play at `sr × f` (pitch and speed × f), back to `sr`,
/// then undo the speed change with `atempo`; ends in stereo f32 at `sr`.
fn tone_chain(sr: u32, tone_frequency: f64) -> Vec<String> {
    let mut chain = Vec::new();
    if (tone_frequency - 1.0).abs() > 1e-9 {
        let shifted = (sr as f64 * tone_frequency).round() as u32;
        chain.push(format!("asetrate={shifted}"));
        chain.push(format!("aresample={sr}"));
        chain.extend(atempo_chain(1.0 / tone_frequency));
    }
    chain.push(format!(
        "aformat=sample_fmts=flt:channel_layouts=stereo:sample_rates={sr}"
    ));
    chain
}

/// An `abuffer` → `spec` → `abuffersink` graph; `source_args` describe what is fed in.
fn filter_graph(source_args: &str, spec: &str) -> Result<ff::filter::Graph, AudioError> {
    let mut graph = ff::filter::Graph::new();
    graph
        .add(
            &ff::filter::find("abuffer").expect("abuffer exists"),
            "in",
            source_args,
        )
        .map_err(libav("creating the filter input"))?;
    graph
        .add(
            &ff::filter::find("abuffersink").expect("abuffersink exists"),
            "out",
            "",
        )
        .map_err(libav("creating the filter output"))?;
    graph
        .output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| p.parse(spec))
        .map_err(libav("building the filter chain"))?;
    graph
        .validate()
        .map_err(libav("validating the filter chain"))?;
    Ok(graph)
}

/// Moves what the graph has produced (stereo f32) into `samples`.
fn drain(graph: &mut ff::filter::Graph, samples: &mut Vec<f32>) {
    let mut filtered = ff::frame::Audio::empty();
    let mut sink = graph.get("out").expect("sink exists");
    while sink.sink().frame(&mut filtered).is_ok() {
        let n = filtered.samples() * 2;
        let bytes = &filtered.data(0)[..n * 4];
        samples.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
}

/// Ends the graph's input and collects the rest of its output.
fn finish(mut graph: ff::filter::Graph, samples: &mut Vec<f32>) -> Result<(), AudioError> {
    graph
        .get("in")
        .expect("source exists")
        .source()
        .flush()
        .map_err(libav("flushing the filters"))?;
    drain(&mut graph, samples);
    Ok(())
}

/// Applies `toneFrequency` to interleaved stereo samples at `sample_rate` (inline audio, which
/// arrives as samples rather than as a file).
pub fn shift_pitch(
    stereo: &[f32],
    sample_rate: u32,
    tone_frequency: f64,
) -> Result<Vec<f32>, AudioError> {
    crate::libav::init();
    let args = format!(
        "time_base=1/{sample_rate}:sample_rate={sample_rate}:sample_fmt=flt:channel_layout=0x{:x}",
        ff::ChannelLayout::STEREO.bits()
    );
    let mut graph = filter_graph(&args, &tone_chain(sample_rate, tone_frequency).join(","))?;
    let mut samples = Vec::with_capacity(stereo.len());
    const CHUNK: usize = 4096;
    for (i, chunk) in stereo.chunks(CHUNK * 2).enumerate() {
        let mut frame = ff::frame::Audio::new(
            ff::format::Sample::F32(ff::format::sample::Type::Packed),
            chunk.len() / 2,
            ff::ChannelLayout::STEREO,
        );
        frame.set_rate(sample_rate);
        frame.set_pts(Some((i * CHUNK) as i64));
        for (out, v) in frame.data_mut(0).chunks_exact_mut(4).zip(chunk) {
            out.copy_from_slice(&v.to_ne_bytes());
        }
        graph
            .get("in")
            .expect("source exists")
            .source()
            .add(&frame)
            .map_err(libav("filtering"))?;
        drain(&mut graph, &mut samples);
    }
    finish(graph, &mut samples)?;
    Ok(samples)
}

/// Duration of an audio stream in seconds (0 when unknown).
pub fn duration(path: &Path, stream_index: usize) -> Result<Option<f64>, AudioError> {
    let input = ff::format::input(path).map_err(libav("opening the source"))?;
    let Some(stream) = input
        .streams()
        .filter(|s| s.parameters().medium() == ff::media::Type::Audio)
        .nth(stream_index)
    else {
        return Ok(None);
    };
    let tb = stream.time_base();
    let d = if stream.duration() > 0 {
        stream.duration() as f64 * tb.numerator() as f64 / tb.denominator() as f64
    } else if input.duration() > 0 {
        input.duration() as f64 / ff::ffi::AV_TIME_BASE as f64
    } else {
        0.0
    };
    Ok(Some(d))
}

/// Decodes the `stream_index`-th audio stream of `path` through [`filter_spec`].
/// Returns interleaved stereo samples, or `None` when the file has no such audio stream.
pub fn decode(path: &Path, x: &Extract) -> Result<Option<Vec<f32>>, AudioError> {
    crate::libav::init();
    let mut input = ff::format::input(path).map_err(libav("opening the source"))?;
    let Some(stream) = input
        .streams()
        .filter(|s| s.parameters().medium() == ff::media::Type::Audio)
        .nth(x.stream_index)
    else {
        return Ok(None);
    };
    let index = stream.index();
    let time_base = stream.time_base();
    let context = ff::codec::context::Context::from_parameters(stream.parameters())
        .map_err(libav("reading the stream parameters"))?;
    let mut decoder = context
        .decoder()
        .audio()
        .map_err(libav("opening the decoder"))?;
    if decoder.channels() == 0 {
        return Ok(None);
    }
    let layout = if decoder.channel_layout().bits() == 0 {
        ff::ChannelLayout::default(decoder.channels() as i32)
    } else {
        decoder.channel_layout()
    };
    let args = format!(
        "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
        time_base.numerator(),
        time_base.denominator(),
        decoder.rate(),
        decoder.format().name(),
        layout.bits()
    );
    let mut graph = filter_graph(&args, &filter_spec(x, decoder.channels() == 1))?;

    let mut samples = Vec::new();
    let mut decoded = ff::frame::Audio::empty();
    let mut feed = |decoder: &mut ff::decoder::Audio,
                    graph: &mut ff::filter::Graph,
                    samples: &mut Vec<f32>|
     -> Result<(), AudioError> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            if decoded.channel_layout().bits() == 0 {
                decoded.set_channel_layout(layout);
            }
            graph
                .get("in")
                .expect("source exists")
                .source()
                .add(&decoded)
                .map_err(libav("filtering"))?;
            drain(graph, samples);
        }
        Ok(())
    };
    for (s, packet) in input.packets() {
        if s.index() != index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            // A damaged packet loses its samples, not the render.
            continue;
        }
        feed(&mut decoder, &mut graph, &mut samples)?;
    }
    decoder.send_eof().map_err(libav("flushing the decoder"))?;
    feed(&mut decoder, &mut graph, &mut samples)?;
    finish(graph, &mut samples)?;
    Ok(Some(samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pitch_shift_keeps_the_length_and_moves_the_frequency() {
        let sr = 48_000;
        let stereo: Vec<f32> = (0..sr)
            .flat_map(|i| {
                let v = 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / sr as f32).sin();
                [v, v]
            })
            .collect();
        let shifted = shift_pitch(&stereo, sr, 1.5).unwrap();
        let length = shifted.len() as f64 / stereo.len() as f64;
        assert!((length - 1.0).abs() < 0.02, "length ratio {length}");
        // Rising zero crossings of the left channel over the middle, away from the edges.
        let left: Vec<f32> = shifted.chunks_exact(2).map(|p| p[0]).collect();
        let middle = &left[left.len() / 4..left.len() * 3 / 4];
        let crossings = middle
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        let hz = crossings as f64 / (middle.len() as f64 / sr as f64);
        assert!((hz - 660.0).abs() < 10.0, "{hz} Hz");
    }

    #[test]
    fn tempo_chains_stay_in_range() {
        assert!(atempo_chain(1.0).is_empty());
        assert_eq!(atempo_chain(1.5), vec!["atempo=1.50000"]);
        assert_eq!(atempo_chain(4.0), vec!["atempo=2.0", "atempo=2.00000"]);
        assert_eq!(atempo_chain(0.25), vec!["atempo=0.5", "atempo=0.50000"]);
    }

    #[test]
    fn the_chain_trims_on_the_tempo_changed_timeline() {
        let spec = filter_spec(
            &Extract {
                stream_index: 0,
                sample_rate: 48000,
                playback_rate: 2.0,
                start: 0.5,
                end: 1.25,
                tone_frequency: 1.0,
            },
            false,
        );
        assert_eq!(
            spec,
            "aresample=48000,aformat=sample_fmts=flt:channel_layouts=stereo,atempo=2.00000,atrim=start=500000us:end=1250000us,asetpts=PTS-STARTPTS,aformat=sample_fmts=flt:channel_layouts=stereo:sample_rates=48000"
        );
    }
}
