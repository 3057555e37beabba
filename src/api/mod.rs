//! The HTTP service: the Cloud Run endpoint the Remotion client calls.
//!
//! **Architecture Invariant:** `api` is the only module that knows the wire JSON. Requests are
//! converted to `options` types once, in [`wire`]; errors become the wire error shape only
//! here.

pub mod stream;
pub mod webhook;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::encode;
use crate::options::StillImageFormat;
use crate::render::{self, RenderError, Renderer};
use crate::site::Access;
use crate::storage::{self, ObjectOptions, Storage, StorageError, StoredObject};
use wire::{ErrorBody, MediaRequest, RenderRequest, StillRequest, SuccessResponse};

/// Cloud Run's request cap for HTTP/1; a render payload is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

pub struct AppState {
    pub renderer: Arc<Renderer>,
    pub storage: Arc<Storage>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/favicon.ico", get(|| async { StatusCode::NOT_FOUND }))
        .route("/robots.txt", get(|| async { StatusCode::NOT_FOUND }))
        .fallback(render_endpoint)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

pub async fn serve(addr: SocketAddr, state: Arc<AppState>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

fn error_json(e: &ErrorBody) -> Bytes {
    Bytes::from(serde_json::to_vec(e).expect("serializable"))
}

fn render_error_body(e: &RenderError) -> ErrorBody {
    ErrorBody::new(e.name(), e.to_string(), e.stack())
}

fn storage_error_body(e: &StorageError) -> ErrorBody {
    ErrorBody::new("StorageError", e.to_string(), format!("StorageError: {e}"))
}

/// Any method on any path but the few above: the original routes everything to the handler.
async fn render_endpoint(
    State(state): State<Arc<AppState>>,
    method: Method,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        let e = ErrorBody::new(
            "MethodNotAllowed",
            format!("{method} is not supported: POST a render payload to this URL"),
            "",
        );
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::CONTENT_TYPE, "application/json")],
            error_json(&e),
        )
            .into_response();
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
    match request {
        RenderRequest::Media(m) => start_media(state, *m),
        RenderRequest::Still(s) => start_still(state, *s),
    }
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

/// A streamed response whose render is cancelled when the body is dropped (the client left).
fn streaming_response(
    content_type: Option<&'static str>,
    cancel: CancellationToken,
) -> (mpsc::Sender<Bytes>, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let guard = cancel.drop_guard();
    let stream = futures::StreamExt::map(ReceiverStream::new(rx), move |b| {
        let _keep = &guard;
        Ok::<_, std::convert::Infallible>(b)
    });
    let mut response = Response::new(Body::from_stream(stream));
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    (tx, response)
}

fn start_media(state: Arc<AppState>, request: MediaRequest) -> Response {
    log_client_version(&request.client_version);
    let render_id = request
        .upload
        .render_id_override
        .clone()
        .unwrap_or_else(storage::random_render_id);
    let cancel = CancellationToken::new();
    let (out, response) = streaming_response(Some("text/html"), cancel.clone());
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
    tokio::spawn(stream::pump(Some(progress_rx), done_rx, out.clone()));
    tokio::spawn(async move {
        let result = run_media(&state, &request, &render_id, &progress_tx, &cancel).await;
        let result = settle(&state, &request.upload, &render_id, result, &cancel).await;
        let _ = done_tx.send(final_message(&result));
        if let Some(hook) = hook {
            hook.finish(match result {
                Ok(r) => webhook::Outcome::Success(r),
                Err(e) => webhook::Outcome::Error(e),
            })
            .await;
        }
        // Our sender kept the response open until here: on Cloud Run a request's CPU may be
        // throttled once its response is over, and the final webhook call must still go out.
        drop(out);
    });
    response
}

/// After a failure that the client will hear about: `error.txt` beside where the output would
/// have been.
async fn settle(
    state: &AppState,
    upload: &crate::options::UploadOptions,
    render_id: &str,
    result: Result<SuccessResponse, ErrorBody>,
    cancel: &CancellationToken,
) -> Result<SuccessResponse, ErrorBody> {
    if let Err(e) = &result {
        tracing::warn!(render_id, "render failed: {}", e.message);
        if !cancel.is_cancelled() {
            write_error_txt(&state.storage, upload, render_id, e).await;
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
    render_id: &str,
    progress: &render::ProgressSender,
    cancel: &CancellationToken,
) -> Result<SuccessResponse, ErrorBody> {
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
    let codec = request.media.codec;
    // The extension follows the codec and the audio codec actually used (the original named
    // the file after the raw setting, which broke preferLossless).
    let extension = encode::file_extension(codec, request.media.audio_codec);
    let local: PathBuf = work.path().join(format!("out.{extension}"));
    state
        .renderer
        .render_media(
            &request.site,
            &request.media,
            Access::RemoteOnly,
            &local,
            progress,
            cancel,
        )
        .await
        .map_err(|e| render_error_body(&e))?;
    let name = request
        .upload
        .out_name
        .clone()
        .unwrap_or_else(|| format!("out.{extension}"));
    let key = storage::object_key(render_id, &name);
    let options = ObjectOptions {
        content_type: encode::content_type_for_name(&name).to_string(),
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
    Ok(success(stored, render_id, request.upload.privacy))
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

fn start_still(state: Arc<AppState>, request: StillRequest) -> Response {
    log_client_version(&request.client_version);
    let render_id = request
        .upload
        .render_id_override
        .clone()
        .unwrap_or_else(storage::random_render_id);
    let cancel = CancellationToken::new();
    let (out, response) = streaming_response(None, cancel.clone());
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(stream::pump(None, done_rx, out));
    tokio::spawn(async move {
        let result = run_still(&state, &request, &render_id, &cancel).await;
        let result = settle(&state, &request.upload, &render_id, result, &cancel).await;
        let _ = done_tx.send(final_message(&result));
    });
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
    Ok(success(stored, render_id, request.upload.privacy))
}
