//! Stages 3 and 4: the audio of the whole timeline is mixed once, from every frame's asset
//! records, and encoded straight into the final file while the chunks' video packets are
//! copied into it. Audio is never rendered per chunk, so there is no encoder priming and no
//! seam at a chunk boundary.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::plan::MediaPlan;
use super::{RenderError, cancellable};
use crate::audio::{self, AssetRecord};
use crate::encode::{self, ChunkFile, JoinAudio};
use crate::fetch::Fetcher;
use crate::pcm::Pcm;

/// Stages 3 and 4 as an instance that joins runs them: `chunks` (the video-only files of
/// the plan's frames, in order, with their frame counts; none for audio-only outputs) and
/// the audio mixed from `assets` (the records of every frame of the plan, in output order)
/// into `output`. On error nothing is left at `output`.
pub async fn join(
    plan: &MediaPlan,
    chunks: &[ChunkFile],
    assets: &[AssetRecord],
    media_files: Arc<Fetcher>,
    output: &Path,
    cancel: &CancellationToken,
) -> Result<(), RenderError> {
    join_reporting(plan, chunks, assets, media_files, output, cancel, |_| {}).await
}

/// [`join`], telling `report` how far it got, from 0 to 1: half once the audio is mixed, all
/// once the file is written.
pub async fn join_reporting(
    plan: &MediaPlan,
    chunks: &[ChunkFile],
    assets: &[AssetRecord],
    media_files: Arc<Fetcher>,
    output: &Path,
    cancel: &CancellationToken,
    report: impl Fn(f64),
) -> Result<(), RenderError> {
    // Checked before the mix too: a wrong set of chunks should not cost a mix first.
    check_chunks(plan, chunks, output)?;
    let mixing = Instant::now();
    let mix = mix(plan, assets, media_files, cancel).await?;
    report(0.5);
    mux_mixed(plan, chunks, mix, mixing.elapsed(), output).await?;
    report(1.0);
    Ok(())
}

/// Stage 4 with a mix made beforehand (`mix_took` to make, for the log): what [`join`]
/// does once it has mixed, and what a render that mixed while its last chunk's encoder was
/// flushing calls. On error nothing is left at `output`.
pub async fn mux_mixed(
    plan: &MediaPlan,
    chunks: &[ChunkFile],
    mix: Option<Pcm>,
    mix_took: Duration,
    output: &Path,
) -> Result<(), RenderError> {
    check_chunks(plan, chunks, output)?;
    let muxing = Instant::now();
    mux(plan, chunks.to_vec(), mix, output).await?;
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round();
    tracing::info!(
        chunks = chunks.len(),
        mix_ms = ms(mix_took),
        mux_ms = ms(muxing.elapsed()),
        "join timings"
    );
    Ok(())
}

fn check_chunks(plan: &MediaPlan, chunks: &[ChunkFile], output: &Path) -> Result<(), RenderError> {
    plan.check_output_name(output)?;
    let frames: u64 = chunks.iter().map(|c| c.frames).sum();
    if plan.video.is_some() && frames != plan.total() {
        return Err(RenderError::Invalid(format!(
            "The chunks hold {frames} frames, the render has {}",
            plan.total()
        )));
    }
    Ok(())
}

/// Stage 3: the mix of the whole timeline, or `None` when the output gets no audio track
/// (muted, a codec without audio, or nothing audible and no `enforceAudioTrack`).
pub async fn mix(
    plan: &MediaPlan,
    assets: &[AssetRecord],
    media_files: Arc<Fetcher>,
    cancel: &CancellationToken,
) -> Result<Option<Pcm>, RenderError> {
    if plan.audio.is_none() {
        return Ok(None);
    }
    if assets.len() as u64 != plan.total() {
        return Err(RenderError::Invalid(format!(
            "The audio mix needs the asset records of all {} frames, got {}",
            plan.total(),
            assets.len()
        )));
    }
    let parsed = audio::parse_frames(assets);
    let wanted =
        plan.enforce_audio_track || plan.output.codec.is_audio_only() || audio::has_audio(&parsed);
    if !wanted {
        return Ok(None);
    }
    let timeline = audio::Timeline {
        frames: plan.frames.len(),
        output_fps: plan.output_fps,
        composition_fps: plan.composition.fps,
        every_nth_frame: plan.every_nth_frame as u64,
        sample_rate: plan.composition.sample_rate(),
    };
    let mixed = cancellable(cancel, async {
        Ok(audio::mix(&parsed, timeline, media_files).await?)
    })
    .await?;
    Ok(Some(mixed))
}

/// Stage 4: the chunks' video packets, copied, and the mix, encoded, into `output`. On error
/// nothing is left at `output`.
pub async fn mux(
    plan: &MediaPlan,
    chunks: Vec<ChunkFile>,
    mix: Option<Pcm>,
    output: &Path,
) -> Result<(), RenderError> {
    let container = plan.output.container_for(output);
    let output_path = output.to_path_buf();
    let (metadata, settings) = (plan.metadata.clone(), plan.audio);
    let frame_rate = plan.video.as_ref().map(|v| v.frame_rate);
    let duration = plan.total() as f64 / plan.output_fps;
    let result = tokio::task::spawn_blocking(move || match (frame_rate, mix, settings) {
        (Some(frame_rate), mix, settings) => {
            let audio = match (&mix, &settings) {
                (Some(pcm), Some(settings)) => Some(JoinAudio { pcm, settings }),
                _ => None,
            };
            encode::join(
                &chunks,
                frame_rate,
                audio,
                &output_path,
                container,
                &metadata,
            )
        }
        (None, Some(mix), Some(settings)) => {
            encode::write_audio_only(&mix, &settings, Some(duration), &output_path, container)
        }
        (None, _, _) => Err(encode::EncodeError::Join(
            "there is neither video nor audio to write".into(),
        )),
    })
    .await
    .map_err(|e| RenderError::internal("muxing", e))
    .and_then(|r| r.map_err(RenderError::from));
    if result.is_err() {
        let _ = std::fs::remove_file(output);
    }
    result
}
