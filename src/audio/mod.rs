//! The audio stage: the assets pages register per frame become tracks, tracks are fetched,
//! decoded, trimmed, stretched, pitched and faded, and summed into one stereo mix.
//!
//! **Architecture Invariant:** this module knows nothing of Chromium (it reads plain asset
//! records) and nothing of the output container (it hands back PCM samples).

pub mod assets;
pub mod decode;

use std::sync::Arc;

pub use assets::{AssetRecord, FrameAssets, Track};

use crate::fetch::{FetchError, Fetcher};
use crate::pcm::Pcm;

/// Tracks decoded at the same time (the renderer uses 2 too).
const PARALLEL_TRACKS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("Could not decode audio: {0}")]
    Decode(String),
}

impl AudioError {
    /// The JS-style name of the wire error.
    pub fn name(&self) -> &'static str {
        match self {
            AudioError::Fetch(e) => e.name(),
            AudioError::Decode(_) => "Error",
        }
    }
}

/// The timeline the mix is laid on.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Frames in the output.
    pub frames: usize,
    /// Output frame rate (composition fps / everyNthFrame).
    pub output_fps: f64,
    /// The composition's own frame rate: `mediaFrame` counts in it.
    pub composition_fps: f64,
    pub every_nth_frame: u64,
    pub sample_rate: u32,
}

impl Timeline {
    fn sample_at(&self, output_frame: f64) -> usize {
        (output_frame / self.output_fps * self.sample_rate as f64).round() as usize
    }
}

/// Reads the per-frame records (in output order) the capture stage collected.
pub fn parse_frames(frames: &[AssetRecord]) -> Vec<(u64, FrameAssets)> {
    frames
        .iter()
        .map(|r| (r.frame, assets::parse_frame(&r.assets)))
        .collect()
}

/// Whether any frame registered something audible.
pub fn has_audio(frames: &[(u64, FrameAssets)]) -> bool {
    frames.iter().any(|(_, a)| !a.is_empty())
}

/// Mixes every track and inline-audio stream of `frames` into one stereo track as long as
/// the video. A plain sum, no normalisation, like the renderer's `amix normalize=0`, clipped
/// to full scale.
pub async fn mix(
    frames: &[(u64, FrameAssets)],
    timeline: Timeline,
    fetcher: Arc<Fetcher>,
) -> Result<Pcm, AudioError> {
    let length = timeline.sample_at(timeline.frames as f64);
    let mut master = vec![0f32; length * 2];

    let tracks = assets::tracks(frames, timeline.every_nth_frame);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(PARALLEL_TRACKS));
    let mut jobs = tokio::task::JoinSet::new();
    for track in tracks {
        let fetcher = fetcher.clone();
        let semaphore = semaphore.clone();
        jobs.spawn(async move {
            let _permit = semaphore.acquire_owned().await.expect("never closed");
            let path = fetcher.get(&track.src).await?;
            let t = timeline;
            tokio::task::spawn_blocking(move || render_track(&path, &track, &t))
                .await
                .map_err(|e| AudioError::Decode(format!("a decode task failed: {e}")))?
        });
    }
    while let Some(done) = jobs.join_next().await {
        let placed =
            done.map_err(|e| AudioError::Decode(format!("a track task failed: {e}")))??;
        if let Some((offset, samples)) = placed {
            add_into(&mut master, offset, &samples);
        }
    }
    mix_inline(frames, &timeline, &mut master)?;
    // A plain sum can exceed full scale; clip, never wrap around in the encoder.
    for s in &mut master {
        *s = s.clamp(-1.0, 1.0);
    }
    Ok(Pcm {
        sample_rate: timeline.sample_rate,
        samples: master,
    })
}

/// Adds `samples` (stereo) into `master` from stereo frame `offset`, cutting what overhangs.
fn add_into(master: &mut [f32], offset: usize, samples: &[f32]) {
    let start = offset * 2;
    if start >= master.len() {
        return;
    }
    for (m, s) in master[start..].iter_mut().zip(samples) {
        *m += s;
    }
}

/// Decodes one track and applies its volume. Returns where it goes in the mix, or `None`
/// when the source has no audio or the track starts past the source's end.
fn render_track(
    path: &std::path::Path,
    track: &Track,
    t: &Timeline,
) -> Result<Option<(usize, Vec<f32>)>, AudioError> {
    let rate = if track.playback_rate > 0.0 {
        track.playback_rate
    } else {
        1.0
    };
    // Seconds into the source, on the timeline after the tempo change. Everything before
    // audioStartFrame plays at the sequence's speed, what follows at the media's rate.
    let start = track.audio_start_frame / t.composition_fps / rate
        + (track.trim_left - track.audio_start_frame) / t.composition_fps;
    let mut end = start + track.duration as f64 / t.output_fps;
    if let Some(d) = decode::duration(path, track.audio_stream_index)?
        && d > 0.0
    {
        end = end.min(d / rate);
    }
    if start >= end {
        return Ok(None);
    }
    let extract = decode::Extract {
        stream_index: track.audio_stream_index,
        sample_rate: t.sample_rate,
        playback_rate: rate,
        start: start.max(0.0),
        end,
        tone_frequency: if track.tone_frequency > 0.0 {
            track.tone_frequency
        } else {
            1.0
        },
    };
    let Some(mut samples) = decode::decode(path, &extract)? else {
        return Ok(None);
    };
    apply_volume(&mut samples, &track.volume, t);
    Ok(Some((t.sample_at(track.start_in_video as f64), samples)))
}

/// Each output frame's volume holds from half a frame before it to half a frame after.
fn apply_volume(samples: &mut [f32], volume: &[f64], t: &Timeline) {
    if volume.iter().all(|v| (*v - 1.0).abs() < 1e-9) {
        return;
    }
    let per_frame = t.sample_rate as f64 / t.output_fps;
    let last = volume.len().saturating_sub(1);
    for (i, pair) in samples.chunks_exact_mut(2).enumerate() {
        let frame = ((i as f64 / per_frame).round() as usize).min(last);
        let v = volume[frame] as f32;
        pair[0] *= v;
        pair[1] *= v;
    }
}

/// `inline-audio` records carry their own samples per frame: within one id a later write
/// wins, and the ids are summed. `toneFrequency` is constant per id and, as in the renderer,
/// applied once to the id's whole stream.
fn mix_inline(
    frames: &[(u64, FrameAssets)],
    t: &Timeline,
    master: &mut [f32],
) -> Result<(), AudioError> {
    /// One inline id: its tone, and its writes (stereo sample position, samples).
    struct Stream<'a> {
        tone_frequency: f64,
        writes: Vec<(usize, &'a [i16])>,
    }
    let mut streams: std::collections::BTreeMap<&str, Stream> = Default::default();
    for (index, (_, assets)) in frames.iter().enumerate() {
        for a in &assets.inline {
            let at = match a.start_in_video {
                Some(s) if s > index as f64 => t.sample_at(s),
                _ => t.sample_at(index as f64),
            };
            streams
                .entry(&a.id)
                .or_insert_with(|| Stream {
                    tone_frequency: a.tone_frequency,
                    writes: Vec::new(),
                })
                .writes
                .push((at, &a.audio));
        }
    }
    for Stream {
        tone_frequency,
        writes,
    } in streams.into_values()
    {
        let end = writes
            .iter()
            .map(|(at, s)| at * 2 + s.len())
            .max()
            .unwrap_or(0)
            .min(master.len());
        let first = writes.iter().map(|(at, _)| at * 2).min().unwrap_or(0);
        if first >= end {
            continue;
        }
        let mut own = vec![0f32; end - first];
        for (at, s) in writes {
            let from = (at * 2 - first).min(own.len());
            for (o, v) in own[from..].iter_mut().zip(s) {
                *o = *v as f32 / 32768.0;
            }
        }
        if (tone_frequency - 1.0).abs() > 1e-9 {
            own = decode::shift_pitch(&own, t.sample_rate, tone_frequency)?;
        }
        add_into(master, first / 2, &own);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(frames: usize) -> Timeline {
        Timeline {
            frames,
            output_fps: 30.0,
            composition_fps: 30.0,
            every_nth_frame: 1,
            sample_rate: 48_000,
        }
    }

    #[test]
    fn volume_steps_at_frame_boundaries() {
        let t = timeline(2);
        let mut s = vec![1.0f32; 3200 * 2];
        apply_volume(&mut s, &[1.0, 0.5], &t);
        assert_eq!(s[0], 1.0);
        assert_eq!(s[2 * 700], 1.0, "still frame 0 before its half-way point");
        assert_eq!(s[2 * 900], 0.5, "frame 1 from half a frame before it");
        assert_eq!(s[2 * 3199], 0.5);
    }

    #[test]
    fn adding_cuts_what_overhangs() {
        let mut m = vec![0f32; 8];
        add_into(&mut m, 2, &[1.0; 8]);
        assert_eq!(m, vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        add_into(&mut m, 9, &[1.0; 2]);
        assert_eq!(m.iter().sum::<f32>(), 4.0);
    }

    #[test]
    fn inline_audio_lands_at_its_frame_and_later_writes_win() {
        let t = timeline(3);
        let inline = |frame: i64, v: i16| assets::InlineAudio {
            id: "i".into(),
            frame,
            audio: vec![v; 4],
            start_in_video: None,
            tone_frequency: 1.0,
        };
        let frames = vec![
            (
                0,
                FrameAssets {
                    media: vec![],
                    inline: vec![inline(0, 16384)],
                },
            ),
            (
                1,
                FrameAssets {
                    media: vec![],
                    inline: vec![inline(1, -16384)],
                },
            ),
        ];
        let mut master = vec![0f32; t.sample_at(3.0) * 2];
        mix_inline(&frames, &t, &mut master).unwrap();
        assert_eq!(master[0], 0.5);
        assert_eq!(master[2 * 1600], -0.5, "frame 1 starts at sample 1600");
        assert_eq!(master[2 * 1600 + 4], 0.0);
    }
}
