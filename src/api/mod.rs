//! The HTTP service: the Cloud Run endpoint the Remotion client calls.
//!
//! **Architecture Invariant:** `api` is the only module that knows the wire JSON. Requests are
//! converted to `options` types once, in [`wire`]; errors become the wire error shape only
//! here.

pub mod chunk;
pub mod client;
pub mod coordinator;
pub mod id_token;
pub mod stream;
pub mod webhook;
pub mod wire;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::options::StillImageFormat;
use crate::render::{self, RenderError, Renderer};
use crate::site::Access;
use crate::storage::{self, ObjectOptions, Storage, StorageError, StoredObject};
use wire::{ErrorBody, MediaRequest, RenderRequest, StillRequest, SuccessResponse};

/// Cloud Run's request cap for HTTP/1; a render payload is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How many renders run at once per instance unless `CLOUDRUN_RENDER_MAX_RENDERS` says
/// otherwise: one, since a render uses every CPU (Cloud Run's concurrency is 1 too).
pub const MAX_RENDERS_ENV: &str = "CLOUDRUN_RENDER_MAX_RENDERS";

/// Cloud Run sends SIGKILL 10 s after SIGTERM; everything must be closed before that.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(8);

pub struct AppState {
    pub renderer: Arc<Renderer>,
    pub storage: Arc<Storage>,
    /// Free slots for renders; a request that finds none is refused at once with 429.
    pub admission: Arc<Semaphore>,
    /// Cancelled on SIGTERM: every running render stops and tells its client why.
    pub shutdown: CancellationToken,
    /// Every render's task, up to its final webhook call, which outlives the response.
    /// Shutdown waits for them within its budget.
    pub tasks: TaskTracker,
    /// Set: media renders may be spread over instances (`fanout`).
    pub fanout: Option<crate::fanout::FanoutConfig>,
}

impl AppState {
    pub fn new(renderer: Arc<Renderer>, storage: Arc<Storage>) -> AppState {
        let slots = std::env::var(MAX_RENDERS_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        AppState {
            renderer,
            storage,
            admission: Arc::new(Semaphore::new(slots)),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            fanout: match crate::fanout::FanoutConfig::from_env() {
                Ok(config) => config,
                Err(e) => {
                    tracing::error!("fan-out is off: {e}");
                    None
                }
            },
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/favicon.ico", get(|| async { StatusCode::NOT_FOUND }))
        .route("/robots.txt", get(|| async { StatusCode::NOT_FOUND }))
        .fallback(render_endpoint)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone())
        .merge(chunk::router(&state))
}

/// Serves until SIGTERM (or Ctrl-C); then stops accepting, stops every render with an error
/// line to its client, lets final webhook calls finish, and returns within Cloud Run's grace
/// period.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let signalled = CancellationToken::new();
    let on_signal = signalled.clone();
    tokio::spawn(async move {
        crate::system::termination_requested().await;
        on_signal.cancel();
        shutdown.cancel();
        // After the cancel: whoever reads this line may rely on new requests being refused.
        tracing::info!("shutting down: stopping running renders");
    });
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(signalled.clone().cancelled_owned())
        .into_future();
    tokio::pin!(server);
    let budget = async {
        signalled.cancelled().await;
        tokio::time::sleep(SHUTDOWN_BUDGET).await
    };
    tokio::pin!(budget);
    // Graceful shutdown waits for open streams; they end once their renders have reported
    // the shutdown, but never wait past the budget.
    tokio::select! {
        r = &mut server => r?,
        _ = &mut budget => {
            tracing::warn!("renders did not stop in time; exiting anyway");
            return Ok(());
        }
    }
    // Every response has ended; final webhook calls (and renders whose client left but
    // asked for a webhook) may still be going, each with its own deadline. What is left of
    // the budget is theirs.
    tasks.close();
    if !tasks.is_empty() {
        tracing::info!(
            tasks = tasks.len(),
            "waiting for in-flight final webhook calls"
        );
    }
    tokio::select! {
        _ = tasks.wait() => tracing::info!("shutdown complete"),
        _ = &mut budget => tracing::warn!("final webhook calls did not finish in time; exiting anyway"),
    }
    Ok(())
}

fn error_json(e: &ErrorBody) -> Bytes {
    Bytes::from(serde_json::to_vec(e).expect("serializable"))
}

fn render_error_body(e: &RenderError) -> ErrorBody {
    ErrorBody::new(e.name(), e.to_string(), e.stack())
}

fn storage_error_body(e: &StorageError) -> ErrorBody {
    ErrorBody::new(e.name(), e.to_string(), format!("{}: {e}", e.name()))
}

fn json_response(status: StatusCode, e: &ErrorBody) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        error_json(e),
    )
        .into_response()
}

/// Any method on any path but the few above: the original routes everything to the handler.
async fn render_endpoint(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let trace_id = headers
        .get("x-cloud-trace-context")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::logging::trace_id_from_header);
    let span = tracing::info_span!(
        "request",
        trace_id = trace_id.as_deref(),
        render_id = tracing::field::Empty
    );
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let e = ErrorBody::new(
                "PayloadTooLarge",
                format!(
                    "The request body could not be read ({rejection}). Render payloads are limited to {} bytes.",
                    MAX_BODY_BYTES
                ),
                "",
            );
            return json_response(status, &e);
        }
    };
    if method != Method::POST {
        let e = ErrorBody::new(
            "MethodNotAllowed",
            format!("{method} is not supported: POST a render payload to this URL"),
            "",
        );
        return json_response(StatusCode::METHOD_NOT_ALLOWED, &e);
    }
    let request = match wire::parse_request(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!("refused a payload: {e}");
            // Status 200 like the original: the client reads the error object from the body
            // and rejects with it, where a 4xx would only give the caller "status code 400".
            return (StatusCode::OK, error_json(&ErrorBody::from(&e))).into_response();
        }
    };
    if state.shutdown.is_cancelled() {
        let e = ErrorBody::new("ServiceUnavailable", "The service is shutting down.", "");
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &e);
    }
    // Refuse at once rather than queue: a queued request would only time out at Cloud Run's
    // front end, where the caller can neither see nor retry it sensibly.
    let Ok(slot) = state.admission.clone().try_acquire_owned() else {
        let e = ErrorBody::new(
            "TooManyRequests",
            "This instance is already rendering. Retry, or allow more instances.",
            "",
        );
        return json_response(StatusCode::TOO_MANY_REQUESTS, &e);
    };
    match request {
        RenderRequest::Media(m) => start_media(state, *m, body, slot, span),
        RenderRequest::Still(s) => start_still(state, *s, slot, span),
    }
}

/// The error a client sees when SIGTERM stopped its render.
fn shutdown_error() -> ErrorBody {
    ErrorBody::new(
        "ShutdownError",
        "The service instance received SIGTERM (Cloud Run is stopping it) and stopped this render. Retry the request.",
        "",
    )
}

fn log_client_version(v: &Option<String>) {
    match v.as_deref() {
        Some(v) if v.starts_with("4.") => tracing::info!(client_version = v, "render requested"),
        Some(v) => tracing::warn!(
            client_version = v,
            "a client outside 4.x called; serving it anyway"
        ),
        None => tracing::warn!("the client did not say its version"),
    }
}

/// What a client that leaves before the final message does to its render.
enum OnLeave {
    Cancel(CancellationToken),
    /// It asked for a webhook, so it has said how it learns the outcome (some callers use a
    /// short client timeout on purpose): the render goes on and reports there.
    Continue,
}

/// The response body: the messages of a channel until its senders are gone. Dropped before
/// that, the client left.
struct MessageBody {
    rx: mpsc::Receiver<Bytes>,
    ended: bool,
    on_leave: OnLeave,
    span: tracing::Span,
}

impl futures::Stream for MessageBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = this.rx.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled.map(|message| message.map(Ok))
    }
}

impl Drop for MessageBody {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let _entered = self.span.enter();
        match &self.on_leave {
            OnLeave::Cancel(token) => {
                tracing::info!("the client left: stopping its render");
                token.cancel();
            }
            OnLeave::Continue => {
                tracing::info!("the client left: the render goes on and reports to its webhook")
            }
        }
    }
}

/// A streamed response of one message per chunk, fed by the returned sender.
fn streaming_response(
    content_type: Option<&'static str>,
    on_leave: OnLeave,
    span: tracing::Span,
) -> (mpsc::Sender<Bytes>, Response) {
    let (tx, rx) = stream::channel();
    let body = MessageBody {
        rx,
        ended: false,
        on_leave,
        span,
    };
    let mut response = Response::new(Body::from_stream(body));
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    (tx, response)
}

/// What every render starts with: its id (the payload's override, else a new one), recorded
/// in its span, and its cancellation, a child of the shutdown.
fn begin(
    state: &AppState,
    upload: &crate::options::UploadOptions,
    client_version: &Option<String>,
    span: &tracing::Span,
) -> (String, CancellationToken) {
    let render_id = upload
        .render_id_override
        .clone()
        .unwrap_or_else(storage::random_render_id);
    span.record("render_id", render_id.as_str());
    log_client_version(client_version);
    (render_id, state.shutdown.child_token())
}

fn start_media(
    state: Arc<AppState>,
    request: MediaRequest,
    payload: Bytes,
    slot: OwnedSemaphorePermit,
    span: tracing::Span,
) -> Response {
    let _entered = span.enter();
    let (render_id, cancel) = begin(&state, &request.upload, &request.client_version, &span);
    let on_leave = match request.webhook {
        Some(_) => OnLeave::Continue,
        None => OnLeave::Cancel(cancel.clone()),
    };
    let (out, response) = streaming_response(Some("text/html"), on_leave, span.clone());
    let (progress_tx, progress_rx) = render::progress::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let hook = request.webhook.clone().map(|w| {
        webhook::RenderWebhook::spawn(
            webhook::Sender::global(),
            w,
            render_id.clone(),
            progress_rx.clone(),
        )
    });
    // The pump holds the only sender: the response ends with the final message.
    tokio::spawn(stream::pump(Some(progress_rx), done_rx, out));
    let tasks = state.tasks.clone();
    let task = async move {
        let result = run_media(
            &state,
            &request,
            &payload,
            &render_id,
            &progress_tx,
            &cancel,
        )
        .await;
        let result = settle(&state, &request.upload, &render_id, result, &cancel).await;
        // Free before the client hears the outcome: a caller (or Cloud Run) that sends the
        // next render as soon as it has the final message must find the instance free.
        drop(slot);
        let _ = done_tx.send(final_message(&result));
        // The client's answer does not wait for the receiver. The call goes on here, tracked
        // for shutdown (CPU stays allocated: deploy/service.yaml turns throttling off).
        if let Some(hook) = hook {
            hook.finish(match result {
                Ok(r) => webhook::Outcome::Success(r),
                Err(e) => webhook::Outcome::Error(e),
            })
            .await;
        }
    };
    tasks.spawn(task.instrument(span.clone()));
    response
}

/// After a failure that the client will hear about: `error.txt` beside where the output would
/// have been. A render stopped by SIGTERM says so instead of "cancelled".
async fn settle(
    state: &AppState,
    upload: &crate::options::UploadOptions,
    render_id: &str,
    result: Result<SuccessResponse, ErrorBody>,
    cancel: &CancellationToken,
) -> Result<SuccessResponse, ErrorBody> {
    let result = match result {
        Err(_) if state.shutdown.is_cancelled() => Err(shutdown_error()),
        other => other,
    };
    if let Err(e) = &result {
        tracing::warn!(render_id, "render failed: {}", e.message);
        // A client that left needs no error.txt; one stopped by SIGTERM may look for it.
        if !cancel.is_cancelled() || state.shutdown.is_cancelled() {
            let write = write_error_txt(&state.storage, upload, render_id, e);
            if tokio::time::timeout(Duration::from_secs(3), write)
                .await
                .is_err()
            {
                tracing::warn!(render_id, "writing error.txt took too long; skipped");
            }
        }
    }
    result
}

/// `{"response":{…}}` or the error object: the last message of the stream.
fn final_message(result: &Result<SuccessResponse, ErrorBody>) -> Bytes {
    match result {
        Ok(ok) => Bytes::from(format!(
            "{{\"response\":{}}}",
            serde_json::to_string(ok).expect("serializable")
        )),
        Err(e) => error_json(e),
    }
}

async fn run_media(
    state: &AppState,
    request: &MediaRequest,
    payload: &Bytes,
    render_id: &str,
    progress: &render::ProgressSender,
    cancel: &CancellationToken,
) -> Result<SuccessResponse, ErrorBody> {
    let started = std::time::Instant::now();
    let work = tempfile::Builder::new()
        .prefix("cloudrun-render-work-")
        .tempdir()
        .map_err(|e| {
            ErrorBody::new(
                "Error",
                format!("cannot create a temporary directory: {e}"),
                "",
            )
        })?;
    // The extension follows the codec and the audio codec actually used (the original named
    // the file after the raw setting, which broke preferLossless).
    let format =
        render::OutputFormat::resolve(&request.media).map_err(|e| render_error_body(&e))?;
    let local: PathBuf = work.path().join(format.default_name());
    let spread =
        coordinator::render_media(state, request, payload, render_id, &local, progress, cancel)
            .await?;
    let name = request
        .upload
        .out_name
        .clone()
        .unwrap_or_else(|| format.default_name());
    let key = storage::object_key(render_id, &name);
    let options = ObjectOptions {
        content_type: render::OutputFormat::content_type(&name).to_string(),
        content_disposition: storage::content_disposition(&request.upload.download_behavior),
        privacy: request.upload.privacy,
    };
    // A client that left gets no output: dropping the upload abandons its session, and GCS
    // never shows an unfinished one.
    let stored = tokio::select! {
        stored = state.storage.upload_file(&request.upload.bucket, &key, &local, &options) => stored,
        _ = cancel.cancelled() => return Err(render_error_body(&RenderError::Cancelled)),
    };
    let stored = stored.map_err(|e| storage_error_body(&e))?;
    // `work` and the rendered file in it are removed here, whatever happened above.
    let mut response = success(stored, render_id, request.upload.privacy);
    response.fanout = spread.map(|s| wire::FanoutStats {
        chunks: s.chunks,
        retries: s.retries,
        duplicates: s.duplicates,
        instance_seconds: ((started.elapsed().as_secs_f64() + s.worker_seconds) * 10.0).round()
            / 10.0,
    });
    Ok(response)
}

fn success(
    stored: StoredObject,
    render_id: &str,
    privacy: crate::options::Privacy,
) -> SuccessResponse {
    SuccessResponse {
        kind: "success".into(),
        public_url: match privacy {
            crate::options::Privacy::Public => stored.public_url,
            _ => None,
        },
        cloud_storage_uri: stored.cloud_storage_uri,
        size: stored.size.to_string(),
        bucket_name: stored.bucket,
        render_id: render_id.to_string(),
        privacy: storage::privacy_label(privacy).to_string(),
        fanout: None,
    }
}

/// `renders/{id}/error.txt`, so a caller that lost the stream can still find out what happened.
async fn write_error_txt(
    storage: &Storage,
    upload: &crate::options::UploadOptions,
    render_id: &str,
    e: &ErrorBody,
) {
    let body = serde_json::to_vec(&wire::ErrorTxt::from(e)).expect("serializable");
    let options = ObjectOptions {
        content_type: "text/plain; charset=utf-8".into(),
        content_disposition: None,
        privacy: upload.privacy,
    };
    let key = storage::object_key(render_id, "error.txt");
    if let Err(err) = storage
        .upload_bytes(&upload.bucket, &key, body, &options)
        .await
    {
        tracing::warn!(render_id, "could not write error.txt: {err}");
    }
}

fn start_still(
    state: Arc<AppState>,
    request: StillRequest,
    slot: OwnedSemaphorePermit,
    span: tracing::Span,
) -> Response {
    let _entered = span.enter();
    let (render_id, cancel) = begin(&state, &request.upload, &request.client_version, &span);
    let (out, response) = streaming_response(None, OnLeave::Cancel(cancel.clone()), span.clone());
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(stream::pump(None, done_rx, out));
    let tasks = state.tasks.clone();
    let task = async move {
        let result = run_still(&state, &request, &render_id, &cancel).await;
        let result = settle(&state, &request.upload, &render_id, result, &cancel).await;
        drop(slot);
        let _ = done_tx.send(final_message(&result));
    };
    tasks.spawn(task.instrument(span.clone()));
    response
}

async fn run_still(
    state: &AppState,
    request: &StillRequest,
    render_id: &str,
    cancel: &CancellationToken,
) -> Result<SuccessResponse, ErrorBody> {
    let (_, bytes) = state
        .renderer
        .render_still(&request.site, &request.still, Access::RemoteOnly, cancel)
        .await
        .map_err(|e| render_error_body(&e))?;
    let format: StillImageFormat = request.still.image_format;
    let name = request
        .upload
        .out_name
        .clone()
        .unwrap_or_else(|| format!("out.{}", format.extension()));
    let key = storage::object_key(render_id, &name);
    let options = ObjectOptions {
        content_type: format.content_type().to_string(),
        content_disposition: storage::content_disposition(&request.upload.download_behavior),
        privacy: request.upload.privacy,
    };
    let stored = state
        .storage
        .upload_bytes(&request.upload.bucket, &key, bytes.to_vec(), &options)
        .await
        .map_err(|e| storage_error_body(&e))?;
    // The original's still server answers with the public URL whatever the privacy (media
    // says null unless public).
    let public_url = stored.public_url.clone();
    Ok(SuccessResponse {
        public_url,
        ..success(stored, render_id, request.upload.privacy)
    })
}
