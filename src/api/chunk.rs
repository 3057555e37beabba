//! The chunk endpoint, `POST /_cloudrun-render/chunk`: where a coordinator's chunk calls
//! arrive (see `fanout`). It refuses what `fanout::worker::accept` refuses, takes the same
//! admission slot as a client's render (one render per instance), and streams the chunk's
//! progress and result with the client stream's framing (`stream`).
//!
//! What a call carries ([`JobRef`]) and what a worker answers ([`ChunkResult`]) are defined
//! here, beside the worker that reads and writes them ([`StageExecutor`]); the coordinator
//! (`coordinator`) sends and reads the same types.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::wire::{self, MediaRequest, RenderRequest};
use super::{AppState, MAX_BODY_BYTES, OnLeave, stream, streaming_response};
use crate::fanout::auth::{ChunkAuth, SIGNATURE_HEADER};
use crate::fanout::protocol::{self, CHUNK_PATH, ChunkError, ChunkRequest, names};
use crate::fanout::worker::{self, ChunkExecutor, WorkerFailure};
use crate::options::Privacy;
use crate::render::{
    AssetRecord, ChunkRange, ProgressSender, RenderError, Renderer, ResolvedComposition,
    StreamParameters,
};
use crate::site::Access;
use crate::storage::{ObjectOptions, Storage, StorageError};

/// Everything the endpoint needs; the service builds it from `AppState`, tests their own.
pub struct Worker {
    /// `None`: no chunk secret configured, every call is refused.
    pub auth: Option<ChunkAuth>,
    /// `None`: this executable's (`fanout::version::current`).
    pub version: Option<String>,
    pub admission: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub executor: Arc<dyn ChunkExecutor>,
}

/// The chunk endpoint of the service.
pub fn router(state: &AppState) -> Router {
    crate::fanout::version::compute_in_background();
    let auth = match ChunkAuth::from_env() {
        Ok(auth) => auth,
        Err(e) => {
            tracing::error!("the chunk endpoint is off: {e}");
            None
        }
    };
    worker_router(Arc::new(Worker {
        auth,
        version: None,
        admission: state.admission.clone(),
        shutdown: state.shutdown.clone(),
        executor: Arc::new(StageExecutor {
            renderer: state.renderer.clone(),
            storage: state.storage.clone(),
        }),
    }))
}

pub fn worker_router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route(CHUNK_PATH, post(endpoint))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(worker)
}

fn refusal(status: StatusCode, error: &ChunkError) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        protocol::error_message(error, false),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        // The front end may route the retry elsewhere; the coordinator backs off anyway.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

async fn endpoint(State(worker): State<Arc<Worker>>, headers: HeaderMap, body: Bytes) -> Response {
    let version = match &worker.version {
        Some(v) => v.as_str(),
        None => crate::fanout::version::current_async().await,
    };
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let request = match worker::accept(
        worker.auth.as_ref(),
        version,
        signature,
        &body,
        SystemTime::now(),
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("refused a chunk call: {e}");
            let status = StatusCode::from_u16(e.status()).expect("a valid status");
            return refusal(status, &e.error());
        }
    };
    if worker.shutdown.is_cancelled() {
        let e = ChunkError::new(names::SHUTTING_DOWN, "this instance is shutting down");
        return refusal(StatusCode::SERVICE_UNAVAILABLE, &e);
    }
    let Ok(slot) = worker.admission.clone().try_acquire_owned() else {
        let e = ChunkError::new(names::BUSY, "this instance is already rendering");
        return refusal(StatusCode::TOO_MANY_REQUESTS, &e);
    };
    let span = tracing::info_span!(
        "chunk",
        render_id = request.render_id.as_str(),
        chunk = request.chunk.index,
        attempt = request.attempt
    );
    span.in_scope(|| {
        tracing::info!(
            start = request.chunk.start,
            end = request.chunk.end,
            "chunk call taken"
        )
    });
    // The coordinator dropping the call drops the body, which cancels the chunk.
    let cancel = worker.shutdown.child_token();
    let (out, response) = streaming_response(
        Some("application/x-ndjson"),
        OnLeave::Cancel(cancel.clone()),
        span.clone(),
    );
    let (progress_tx, progress_rx) = crate::render::progress::channel();
    let (done_tx, done_rx) = oneshot::channel();
    // The pump holds the only sender: the response ends with the final message.
    tokio::spawn(stream::pump_with(Some(progress_rx), done_rx, out, |p| {
        protocol::progress_line(p.rendered, p.encoded)
    }));
    let executor = worker.executor.clone();
    let shutdown = worker.shutdown.clone();
    let task = async move {
        let result = executor.run(request, progress_tx, cancel).await;
        let message = match result {
            Ok(value) => {
                tracing::info!("chunk done");
                protocol::result_message(&value)
            }
            Err(failure) => {
                tracing::warn!("chunk failed: {}", failure.error.message);
                // Stopped by SIGTERM, the chunk itself may be fine: another instance may retry.
                let retryable = failure.retryable || shutdown.is_cancelled();
                protocol::error_message(&failure.error, retryable)
            }
        };
        // Free before the coordinator hears the outcome: the front end sends this instance
        // its next call as soon as the response ends, and a busy answer would cost a backoff.
        drop(slot);
        let _ = done_tx.send(message);
    };
    tokio::spawn(task.instrument(span));
    response
}

/// What every chunk of a render needs beyond its frame range.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkJob {
    /// The client's payload as it came: the worker reads it with the same rules
    /// (`wire::parse_request`), so its options are the coordinator's, field for field.
    pub payload: Value,
    /// Stage 1's answer, with the resolved props: a worker never runs calculateMetadata.
    pub composition: ResolvedComposition,
}

/// A chunk call's job: in the call, or, when that would make the call large (big props), in
/// the output bucket beside the render's chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobRef {
    Inline(Box<ChunkJob>),
    Stored { bucket: String, key: String },
}

/// The asset records of a chunk's frames: in the result, or in an object beside the chunk
/// when there are many (pages that register `data:` URLs repeat them in every frame).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChunkAssets {
    Inline(Vec<AssetRecord>),
    Stored { key: String },
}

/// What a worker answers: where its chunk file is, and what the join needs to know of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkResult {
    /// The chunk file's object key in the output bucket.
    pub video_key: String,
    pub frames: u64,
    pub parameters: Option<StreamParameters>,
    pub assets: ChunkAssets,
    /// From taking the call to this answer, on the worker.
    pub worker_seconds: f64,
}

/// Above this, a chunk's asset records go beside the chunk file rather than in its result.
pub const MAX_INLINE_ASSETS_BYTES: usize = 1 << 20;

/// Chunk objects are for our instances only: never public, whatever the output will be. A
/// bucket that takes no ACLs (`no-acl`) gets none.
pub fn chunk_privacy(output: Privacy) -> Privacy {
    match output {
        Privacy::Public | Privacy::Private => Privacy::Private,
        Privacy::NoAcl => Privacy::NoAcl,
    }
}

pub fn chunk_object_options(output: Privacy) -> ObjectOptions {
    ObjectOptions {
        content_type: "application/octet-stream".into(),
        content_disposition: None,
        privacy: chunk_privacy(output),
    }
}

/// Renders a verified chunk with this instance's renderer (stage 2 of the coordinator's plan)
/// and stores the file with its storage.
pub struct StageExecutor {
    pub renderer: Arc<Renderer>,
    pub storage: Arc<Storage>,
}

impl ChunkExecutor for StageExecutor {
    fn run(
        &self,
        request: ChunkRequest<Value>,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<Value, WorkerFailure>> {
        let (renderer, storage) = (self.renderer.clone(), self.storage.clone());
        Box::pin(async move {
            let result = run_chunk(&renderer, &storage, request, &progress, &cancel).await?;
            Ok(serde_json::to_value(result).expect("serializable"))
        })
    }
}

fn invalid(message: impl Into<String>) -> WorkerFailure {
    WorkerFailure {
        error: ChunkError::new(names::INVALID, message),
        retryable: false,
    }
}

/// This instance's storage failed, not the chunk: another instance may do better.
fn storage_failure(e: &StorageError) -> WorkerFailure {
    WorkerFailure {
        error: ChunkError::new(e.name(), e.to_string()),
        retryable: true,
    }
}

fn render_failure(e: &RenderError) -> WorkerFailure {
    let mut error = ChunkError::new(e.name(), e.to_string());
    error.stack = e.stack();
    WorkerFailure {
        error,
        // Stopped, or this instance's disk: nothing the chunk's content decides. Anything
        // else (a page error, a timeout, an option that does not fit) would fail anywhere.
        retryable: matches!(e, RenderError::Cancelled | RenderError::Io { .. }),
    }
}

fn cancelled() -> WorkerFailure {
    render_failure(&RenderError::Cancelled)
}

/// Reads the job, from the call or from the bucket.
async fn read_job(
    storage: &Storage,
    job: Value,
    dir: &Path,
) -> Result<(ChunkJob, MediaRequest), WorkerFailure> {
    let job: JobRef = serde_json::from_value(job)
        .map_err(|e| invalid(format!("the call's job is not a chunk job: {e}")))?;
    let job = match job {
        JobRef::Inline(job) => *job,
        JobRef::Stored { bucket, key } => {
            let path = dir.join("job.json");
            storage
                .download(&bucket, &key, &path)
                .await
                .map_err(|e| storage_failure(&e))?;
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| invalid(format!("cannot read the stored job {key}: {e}")))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("the stored job {key} is not a chunk job: {e}")))?
        }
    };
    let payload = serde_json::to_vec(&job.payload).expect("serializable");
    match wire::parse_request(&payload) {
        Ok(RenderRequest::Media(media)) => Ok((job, *media)),
        Ok(RenderRequest::Still(_)) => Err(invalid("a chunk of a still was asked for")),
        Err(e) => Err(invalid(format!("the job's payload does not parse: {e}"))),
    }
}

/// Stage 2 of the coordinator's plan for the call's frames, the file uploaded under the
/// call's own key (the attempt is in it), the asset records beside it when they are many.
async fn run_chunk(
    renderer: &Renderer,
    storage: &Storage,
    request: ChunkRequest<Value>,
    progress: &ProgressSender,
    cancel: &CancellationToken,
) -> Result<ChunkResult, WorkerFailure> {
    let started = Instant::now();
    let span = request.chunk;
    if span.end <= span.start {
        return Err(invalid(format!(
            "chunk {} has no frames ({}..{})",
            span.index, span.start, span.end
        )));
    }
    // Removed with everything in it whatever happens.
    let work = tempfile::Builder::new()
        .prefix("cloudrun-render-chunk-")
        .tempdir()
        .map_err(|e| {
            render_failure(&RenderError::Io {
                during: "creating the chunk's temporary directory",
                source: e,
            })
        })?;
    let (job, media) = read_job(storage, request.job, work.path()).await?;
    let local: PathBuf = work.path().join("chunk");
    let range = ChunkRange {
        first: span.start,
        last: span.end - 1,
    };
    let outcome = renderer
        .render_chunk(
            &media.site,
            &media.media,
            job.composition,
            range,
            Access::RemoteOnly,
            &local,
            progress,
            cancel,
        )
        .await
        .map_err(|e| render_failure(&e))?;
    let bucket = &media.upload.bucket;
    let options = chunk_object_options(media.upload.privacy);
    let (render_id, attempt) = (request.render_id.as_str(), request.attempt);
    let video_key = protocol::chunk_object_key(render_id, span.index, attempt, "video");
    let assets_key = protocol::chunk_object_key(render_id, span.index, attempt, "assets");
    let stored = async {
        storage
            .upload_file(bucket, &video_key, &local, &options)
            .await?;
        let assets = serde_json::to_vec(&outcome.assets).expect("serializable");
        if assets.len() <= MAX_INLINE_ASSETS_BYTES {
            return Ok(ChunkAssets::Inline(outcome.assets));
        }
        storage
            .upload_bytes(bucket, &assets_key, assets, &options)
            .await?;
        Ok(ChunkAssets::Stored {
            key: assets_key.clone(),
        })
    };
    // Dropping an upload abandons its session, so no object appears; one finished before the
    // coordinator left is deleted here, since nobody will read it (and the coordinator may
    // have cleaned up already).
    let assets = tokio::select! {
        stored = stored => Some(stored.map_err(|e: StorageError| storage_failure(&e))?),
        _ = cancel.cancelled() => None,
    };
    let Some(assets) = assets.filter(|_| !cancel.is_cancelled()) else {
        for key in [&video_key, &assets_key] {
            let _ = storage.delete(bucket, key).await;
        }
        return Err(cancelled());
    };
    Ok(ChunkResult {
        video_key,
        frames: outcome.frames,
        parameters: outcome.parameters,
        assets,
        worker_seconds: started.elapsed().as_secs_f64(),
    })
}
