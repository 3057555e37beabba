//! The chunk endpoint, `POST /_cloudrun-render/chunk`: where a coordinator's chunk calls
//! arrive (see `fanout`). It refuses what `fanout::worker::accept` refuses, takes the same
//! admission slot as a client's render (one render per instance), and streams the chunk's
//! progress and result with the client stream's framing (`stream`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{AppState, MAX_BODY_BYTES, OnLeave, stream, streaming_response};
use crate::fanout::auth::{ChunkAuth, SIGNATURE_HEADER};
use crate::fanout::protocol::{self, CHUNK_PATH, ChunkError, ChunkRequest, names};
use crate::fanout::worker::{self, ChunkExecutor, WorkerFailure};
use crate::render::ProgressSender;

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
        executor: Arc::new(NoChunkStage),
    }))
}

pub fn worker_router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route(CHUNK_PATH, post(endpoint))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(worker)
}

/// Until the render core runs a frame range on its own, a verified chunk call fails with this.
struct NoChunkStage;

impl ChunkExecutor for NoChunkStage {
    fn run(
        &self,
        _: ChunkRequest<Value>,
        _: ProgressSender,
        _: CancellationToken,
    ) -> BoxFuture<'static, Result<Value, WorkerFailure>> {
        Box::pin(async {
            Err(WorkerFailure {
                error: ChunkError::new(
                    "ChunkStageUnavailable",
                    "this build cannot render a chunk yet (the render core has no frame-range stage)",
                ),
                retryable: false,
            })
        })
    }
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
        let _slot = slot;
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
        let _ = done_tx.send(message);
    };
    tokio::spawn(task.instrument(span));
    response
}
