//! Stages 3 and 4: the audio of the whole timeline is mixed once, from every frame's asset
//! records, and written with the video into the final file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::plan::MediaPlan;
use super::{RenderError, cancellable};
use crate::audio::{self, AssetRecord};
use crate::encode;
use crate::fetch::Fetcher;
use crate::pcm::Pcm;

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

/// Stage 4: the video file(s) and the mix into `output`. On error nothing is left at
/// `output`.
pub async fn mux(
    plan: &MediaPlan,
    video: Option<PathBuf>,
    mix: Option<Pcm>,
    output: &Path,
) -> Result<(), RenderError> {
    let container = plan.output.container_for(output);
    let (output_path, metadata, audio) = (output.to_path_buf(), plan.metadata.clone(), plan.audio);
    let duration = plan.total() as f64 / plan.output_fps;
    let result = match (video, mix, audio) {
        (Some(video), None, _) => {
            std::fs::rename(&video, output).map_err(super::io("moving the video into place"))
        }
        (video, Some(mix), Some(settings)) => tokio::task::spawn_blocking(move || match video {
            Some(video) => encode::remux_with_audio(
                &video,
                &mix,
                &settings,
                &output_path,
                container,
                &metadata,
            ),
            None => {
                encode::write_audio_only(&mix, &settings, Some(duration), &output_path, container)
            }
        })
        .await
        .map_err(|e| RenderError::internal("muxing", e))?
        .map_err(RenderError::from),
        _ => Err(RenderError::internal(
            "muxing",
            "there is neither video nor audio to write",
        )),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(output);
    }
    result
}
