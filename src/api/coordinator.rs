//! The media path of a request: the render here, or, with fan-out on and a render worth
//! cutting, the coordinator's side of `fanout`. It plans once (stage 1), sends every chunk to
//! the service's own URL, downloads each chunk as soon as its worker answers (while the others
//! still render), joins them with the one audio mix of the whole timeline (stages 3 and 4)
//! and deletes the chunk objects, whatever happened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::chunk::{ChunkAssets, ChunkJob, ChunkResult, JobRef, chunk_object_options};
use super::wire::{ErrorBody, MediaRequest};
use super::{AppState, render_error_body, storage_error_body};
use crate::fanout::auth::{GoogleIdTokens, IdTokenSource, NoIdToken};
use crate::fanout::client::{HttpChunkRunner, Target};
use crate::fanout::plan::{ChunkPlan, ChunkSpan, plan_chunks};
use crate::fanout::progress::{AttemptProgress, FanoutProgress, ProgressBoard};
use crate::fanout::protocol::{self, ChunkError};
use crate::fanout::scheduler::{self, ChunkFailure, ChunkRunner, ScheduleError};
use crate::fanout::{FanoutConfig, version};
use crate::render::{
    self, AssetRecord, ChunkFile, MediaPlan, ProgressSender, RenderError, RenderProgress, Session,
};
use crate::site::Access;
use crate::storage::Storage;

/// A job larger than this goes to the bucket, and the calls carry its key: every call would
/// otherwise carry the props again, and Cloud Run caps an HTTP/1 request at 32 MiB.
pub const MAX_INLINE_JOB_BYTES: usize = 4 << 20;
/// Deleting a render's chunk objects never holds its answer longer than this; the bucket's
/// lifecycle rule (`deploy/lifecycle.json`) removes what is left.
const CLEANUP_BUDGET: Duration = Duration::from_secs(30);

/// How a render spread over instances went, for the response's extra fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    pub chunks: usize,
    pub retries: u32,
    pub duplicates: u32,
    /// What the winning chunk calls took on their workers.
    pub worker_seconds: f64,
}

/// Renders `request` into `output`: here, or spread over instances when fan-out is on and
/// the chunk rule cuts the render. `payload` is the client's body as it came, for the
/// workers. `Some` when the render was spread.
pub async fn render_media(
    state: &AppState,
    request: &MediaRequest,
    payload: &Bytes,
    render_id: &str,
    output: &Path,
    progress: &ProgressSender,
    cancel: &CancellationToken,
) -> Result<Option<Spread>, ErrorBody> {
    let renderer = &state.renderer;
    let Some(config) = &state.fanout else {
        renderer
            .render_media(
                &request.site,
                &request.media,
                Access::RemoteOnly,
                output,
                progress,
                cancel,
            )
            .await
            .map_err(|e| render_error_body(&e))?;
        return Ok(None);
    };
    let started = Instant::now();
    let (session, plan) = renderer
        .plan_media(&request.site, &request.media, Access::RemoteOnly, cancel)
        .await
        .map_err(|e| render_error_body(&e))?;
    let unchunkable = plan.unchunkable();
    let chunks = plan_chunks(
        plan.total(),
        unchunkable,
        request.frames_per_chunk,
        config.max_chunks,
    )
    .map_err(|e| render_error_body(&RenderError::Invalid(e.to_string())))?;
    if chunks.is_single() {
        tracing::info!(
            frames = plan.total(),
            why = ?chunks.why,
            unchunkable,
            "rendering in this instance"
        );
        session
            .render_planned(plan, output, None, progress, cancel, started)
            .await
            .map_err(|e| render_error_body(&e))?;
        return Ok(None);
    }
    let bucket = request.upload.bucket.as_str();
    let result = Coordinator {
        state,
        config,
        request,
        render_id,
        bucket,
    }
    .spread(payload, &session, plan, chunks, output, progress, cancel)
    .await;
    delete_chunk_objects(&state.storage, bucket, render_id).await;
    result
}

struct Coordinator<'a> {
    state: &'a AppState,
    config: &'a FanoutConfig,
    request: &'a MediaRequest,
    render_id: &'a str,
    bucket: &'a str,
}

impl Coordinator<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn spread(
        &self,
        payload: &Bytes,
        session: &Session,
        plan: MediaPlan,
        chunks: ChunkPlan,
        output: &Path,
        progress: &ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<Option<Spread>, ErrorBody> {
        let spans = chunks.spans;
        tracing::info!(
            frames = plan.total(),
            chunks = spans.len(),
            why = ?chunks.why,
            "spreading the render over instances"
        );
        let job = self.job(payload, &plan).await?;
        let runner = HttpChunkRunner::<JobRef, ChunkResult>::new(
            self.target().await,
            self.id_tokens()?,
            self.render_id.to_string(),
            job,
        );
        // The chunk files go beside the output (same file system), removed with it.
        let dir = tempfile::Builder::new()
            .prefix(".chunks-")
            .tempdir_in(output.parent().unwrap_or(Path::new(".")))
            .map_err(|e| {
                render_error_body(&RenderError::Io {
                    during: "creating the directory for the chunks",
                    source: e,
                })
            })?;
        let runner = Downloading {
            inner: runner,
            storage: &self.state.storage,
            bucket: self.bucket,
            dir: dir.path(),
        };
        let (board, board_rx) = ProgressBoard::new(&spans);
        let forwarding = tokio::spawn(forward_progress(board_rx, progress.clone()));
        let outcome = async {
            let report =
                scheduler::run_chunks(&runner, &spans, &board, &self.config.policy(), cancel)
                    .await
                    .map_err(|e| schedule_error_body(&e))?;
            let files: Vec<ChunkFile> = report
                .chunks
                .iter()
                .map(|f| ChunkFile {
                    path: f.output.path.clone(),
                    frames: f.output.result.frames,
                })
                .collect();
            let assets: Vec<AssetRecord> = report
                .chunks
                .iter()
                .flat_map(|f| f.output.assets.iter().cloned())
                .collect();
            let joining = Instant::now();
            render::join::join_reporting(
                &plan,
                &files,
                &assets,
                session.media_files().clone(),
                output,
                cancel,
                |fraction| board.join(fraction),
            )
            .await
            .map_err(|e| render_error_body(&e))?;
            let seconds = report.chunks.iter().map(|f| f.output.result.worker_seconds);
            let slowest = seconds.clone().fold(0.0, f64::max);
            let spread = Spread {
                chunks: spans.len(),
                retries: report.retries,
                duplicates: report.duplicates,
                worker_seconds: seconds.sum(),
            };
            tracing::info!(
                chunks = spread.chunks,
                retries = spread.retries,
                duplicates = spread.duplicates,
                capacity_retries = report.capacity_retries,
                worker_seconds = (spread.worker_seconds * 10.0).round() / 10.0,
                slowest_chunk_ms = (slowest * 1000.0).round(),
                join_ms = (joining.elapsed().as_secs_f64() * 1000.0).round(),
                "spread render joined"
            );
            Ok(Some(spread))
        }
        .await;
        // The forwarder stops before the last value goes out, so that nothing older follows
        // it: the client's last progress line before the final message is the render's end.
        forwarding.abort();
        let _ = forwarding.await;
        progress.send_replace(as_render_progress(board.published()));
        outcome
    }

    /// What every call carries: the client's payload and the resolved composition, or, when
    /// that is large, the key of an object holding them.
    async fn job(&self, payload: &Bytes, plan: &MediaPlan) -> Result<JobRef, ErrorBody> {
        let payload: Value = serde_json::from_slice(payload).map_err(|e| {
            render_error_body(&RenderError::internal("reading the payload again", e))
        })?;
        let job = ChunkJob {
            payload,
            composition: plan.composition.clone(),
        };
        let bytes = serde_json::to_vec(&job).expect("serializable");
        if bytes.len() <= MAX_INLINE_JOB_BYTES {
            return Ok(JobRef::Inline(Box::new(job)));
        }
        let key = protocol::job_object_key(self.render_id);
        tracing::info!(
            bytes = bytes.len(),
            key,
            "the chunk job is large: the calls carry its key"
        );
        let options = chunk_object_options(self.request.upload.privacy);
        self.state
            .storage
            .upload_bytes(self.bucket, &key, bytes, &options)
            .await
            .map_err(|e| storage_error_body(&e))?;
        Ok(JobRef::Stored {
            bucket: self.bucket.to_string(),
            key,
        })
    }

    async fn target(&self) -> Target {
        Target {
            base_url: self.config.url.clone(),
            auth: self.config.auth.clone(),
            version: version::current_async().await.to_string(),
            idle_timeout: self.config.idle_timeout,
        }
    }

    fn id_tokens(&self) -> Result<Arc<dyn IdTokenSource>, ErrorBody> {
        if !self.config.wants_id_token(crate::fanout::on_cloud_run()) {
            return Ok(Arc::new(NoIdToken));
        }
        // The audience is the service's URL as Cloud Run names it: no trailing slash.
        let audience = self.config.url.as_str().trim_end_matches('/');
        GoogleIdTokens::new(audience)
            .map(|t| Arc::new(t) as Arc<dyn IdTokenSource>)
            .map_err(|message| ErrorBody::new("ChunkAuthError", message.clone(), message))
    }
}

/// The board's number as the client's stream and the webhook read it.
fn as_render_progress(p: FanoutProgress) -> RenderProgress {
    RenderProgress {
        rendered: p.rendered,
        encoded: p.encoded,
        total: p.total,
        overall: Some(p.fraction),
    }
}

async fn forward_progress(
    mut board: tokio::sync::watch::Receiver<FanoutProgress>,
    progress: ProgressSender,
) {
    loop {
        let p = *board.borrow_and_update();
        progress.send_replace(as_render_progress(p));
        if board.changed().await.is_err() {
            return;
        }
    }
}

/// A chunk's failure as the client sees it: a page error keeps the chunk's name, message
/// and stack; a cancelled render says so as a single-instance render does.
fn schedule_error_body(e: &ScheduleError) -> ErrorBody {
    if let ScheduleError::Cancelled = e {
        return render_error_body(&RenderError::Cancelled);
    }
    let ChunkError {
        name,
        message,
        stack,
    } = e.to_chunk_error();
    let stack = if stack.is_empty() {
        format!("{name}: {message}")
    } else {
        stack
    };
    ErrorBody::new(name, message, stack)
}

/// A chunk file on this instance, with what its worker said of it.
#[derive(Debug)]
struct Downloaded {
    path: PathBuf,
    result: ChunkResult,
    assets: Vec<AssetRecord>,
}

/// Runs a chunk call, then downloads its file (and its asset records, when stored), so that
/// each chunk arrives while the others still render. A chunk whose objects cannot be read is
/// lost like a vanished worker: rendered again, as a new attempt.
struct Downloading<'a, R> {
    inner: R,
    storage: &'a Storage,
    bucket: &'a str,
    dir: &'a Path,
}

impl<R> Downloading<'_, R> {
    async fn fetch(
        &self,
        chunk: ChunkSpan,
        attempt: u32,
        result: ChunkResult,
    ) -> Result<Downloaded, ChunkFailure> {
        let lost = |e: &dyn std::fmt::Display| {
            ChunkFailure::Vanished(format!(
                "chunk {} could not be downloaded: {e}",
                chunk.index
            ))
        };
        let path = self.dir.join(format!("{:05}.{attempt}.video", chunk.index));
        self.storage
            .download(self.bucket, &result.video_key, &path)
            .await
            .map_err(|e| lost(&e))?;
        let assets = match &result.assets {
            ChunkAssets::Inline(assets) => assets.clone(),
            ChunkAssets::Stored { key } => {
                let at = self
                    .dir
                    .join(format!("{:05}.{attempt}.assets", chunk.index));
                self.storage
                    .download(self.bucket, key, &at)
                    .await
                    .map_err(|e| lost(&e))?;
                let bytes = tokio::fs::read(&at).await.map_err(|e| lost(&e))?;
                let _ = tokio::fs::remove_file(&at).await;
                serde_json::from_slice(&bytes).map_err(|e| lost(&e))?
            }
        };
        if result.frames != chunk.frames() || assets.len() as u64 != chunk.frames() {
            let e = ChunkError::new(
                "ChunkProtocolError",
                format!(
                    "chunk {} has {} frames and {} asset records, not the {} of frames {}-{}",
                    chunk.index,
                    result.frames,
                    assets.len(),
                    chunk.frames(),
                    chunk.start,
                    chunk.end - 1
                ),
            );
            return Err(ChunkFailure::Fatal(e));
        }
        tracing::info!(chunk = chunk.index, attempt, "chunk downloaded");
        Ok(Downloaded {
            path,
            result,
            assets,
        })
    }
}

#[async_trait::async_trait]
impl<R> ChunkRunner for Downloading<'_, R>
where
    R: ChunkRunner<Output = ChunkResult>,
{
    type Output = Downloaded;

    async fn run(
        &self,
        chunk: ChunkSpan,
        attempt: u32,
        progress: AttemptProgress,
    ) -> Result<Downloaded, ChunkFailure> {
        let result = self.inner.run(chunk, attempt, progress).await?;
        self.fetch(chunk, attempt, result).await
    }
}

/// Deletes every object of the render's fan-out (chunk files, stored asset records and job),
/// on success and failure alike, within [`CLEANUP_BUDGET`].
async fn delete_chunk_objects(storage: &Storage, bucket: &str, render_id: &str) {
    let prefix = protocol::chunks_prefix(render_id);
    let work = async {
        let keys = storage.list_keys(bucket, &prefix).await?;
        let deleted = keys.len();
        let results: Vec<_> = futures::stream::iter(keys)
            .map(|key| async move { storage.delete(bucket, &key).await })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok::<usize, crate::storage::StorageError>(deleted)
    };
    match tokio::time::timeout(CLEANUP_BUDGET, work).await {
        Ok(Ok(n)) => tracing::info!(objects = n, prefix, "chunk objects deleted"),
        Ok(Err(e)) => tracing::warn!(
            prefix,
            "could not delete the chunk objects ({e}); the bucket's lifecycle rule will"
        ),
        Err(_) => tracing::warn!(
            prefix,
            "deleting the chunk objects took too long; the bucket's lifecycle rule will finish it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::plan::ChunkSpan;

    #[test]
    fn a_page_error_in_a_chunk_keeps_its_name_message_and_stack() {
        let span = ChunkSpan {
            index: 2,
            start: 20,
            end: 30,
        };
        let failed = ScheduleError::Failed {
            span,
            attempt: 1,
            error: ChunkError {
                name: "TypeError".into(),
                message: "fixture exploded at frame 25".into(),
                stack: "TypeError: fixture exploded at frame 25\n    at render".into(),
            },
        };
        let body = schedule_error_body(&failed);
        assert_eq!(
            (body.name.as_str(), body.message.as_str()),
            ("TypeError", "fixture exploded at frame 25")
        );
        assert!(body.stack.contains("at render"));
        let lost = schedule_error_body(&ScheduleError::Lost {
            span,
            attempts: 3,
            last: "connection reset".into(),
        });
        assert_eq!(lost.name, "ChunkLostError");
        assert!(lost.message.contains("connection reset") && lost.stack.contains("ChunkLost"));
        assert_eq!(
            schedule_error_body(&ScheduleError::Cancelled).name,
            "CancelledError"
        );
    }

    #[test]
    fn the_board_reaches_the_client_as_its_fraction() {
        let p = as_render_progress(FanoutProgress {
            rendered: 40,
            encoded: 40,
            total: 40,
            fraction: 0.97,
        });
        assert_eq!(p.fraction(), 0.97, "the join's share, not the frames' 1");
        assert_eq!((p.rendered, p.encoded, p.total), (40, 40, 40));
    }
}
