//! The coordinator's side of a chunk call: [`HttpChunkRunner`] POSTs the signed request to
//! the service's own URL, reads the worker's streamed progress and result, and tells the
//! scheduler what a failure means.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::auth::{ChunkAuth, IdTokenSource, SIGNATURE_HEADER};
use super::plan::ChunkSpan;
use super::progress::AttemptProgress;
use super::protocol::{CHUNK_PATH, ChunkError, ChunkRequest, Decoder, WorkerMessage, names};
use super::scheduler::{ChunkFailure, ChunkRunner};

/// A chunk's result is a few object keys and the frames' audio records; far below this.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// A refusal's body is one small error object.
const MAX_REFUSAL_BYTES: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs chunks by calling the chunk endpoint through `{fan-out URL}/_cloudrun-render/chunk`.
/// `J` is the part of the request every chunk shares (what the render stage needs), `R` the
/// worker's result.
pub struct HttpChunkRunner<J, R> {
    http: reqwest::Client,
    endpoint: Url,
    auth: ChunkAuth,
    id_tokens: Arc<dyn IdTokenSource>,
    version: String,
    render_id: String,
    job: J,
    idle_timeout: Duration,
    _result: PhantomData<fn() -> R>,
}

/// Where a runner sends and how it signs: from `FanoutConfig` in the service.
#[derive(Debug, Clone)]
pub struct Target {
    pub base_url: Url,
    pub auth: ChunkAuth,
    pub version: String,
    pub idle_timeout: Duration,
}

impl<J, R> HttpChunkRunner<J, R> {
    pub fn new(
        target: Target,
        id_tokens: Arc<dyn IdTokenSource>,
        render_id: String,
        job: J,
    ) -> HttpChunkRunner<J, R> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("a plain reqwest client builds");
        HttpChunkRunner {
            http,
            endpoint: target.base_url.join(CHUNK_PATH).expect("an absolute path"),
            auth: target.auth,
            id_tokens,
            version: target.version,
            render_id,
            job,
            idle_timeout: target.idle_timeout,
            _result: PhantomData,
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    // reqwest's Display stops at "error sending request"; the cause says what happened.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What a non-200 answer means for the scheduler. `body` is the refusal's error object when
/// the worker sent one (a front end's own error page is not).
pub fn classify_refusal(
    status: StatusCode,
    body: Option<ChunkError>,
    retry_after: Option<Duration>,
) -> ChunkFailure {
    let said = body
        .as_ref()
        .map(|e| format!("{}: {}", e.name, e.message))
        .unwrap_or_else(|| format!("status {status}"));
    match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            ChunkFailure::NoCapacity {
                message: said,
                retry_after,
            }
        }
        s if s.is_server_error() => ChunkFailure::Vanished(format!("the worker answered {said}")),
        StatusCode::CONFLICT => ChunkFailure::Fatal(body.unwrap_or_else(|| {
            ChunkError::new(
                names::VERSION_MISMATCH,
                format!("the worker answered {said}"),
            )
        })),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            let e = ChunkError::new(
                names::AUTH,
                format!(
                    "a worker refused the chunk call ({said}); every instance needs the same {} and, on Cloud Run, the service account needs roles/run.invoker on the service",
                    super::CHUNK_SECRET_ENV
                ),
            );
            ChunkFailure::Fatal(e)
        }
        _ => ChunkFailure::Fatal(
            body.unwrap_or_else(|| ChunkError::new("Error", format!("the worker answered {said}"))),
        ),
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

async fn read_refusal(mut response: reqwest::Response) -> Option<ChunkError> {
    let read = async {
        let mut body = Vec::new();
        while let Ok(Some(bytes)) = response.chunk().await {
            body.extend_from_slice(&bytes);
            if body.len() > MAX_REFUSAL_BYTES {
                return None;
            }
        }
        let value: Value = serde_json::from_slice(&body).ok()?;
        match WorkerMessage::<Value>::from_value(value).ok()? {
            WorkerMessage::Error { error, .. } => Some(error),
            _ => None,
        }
    };
    tokio::time::timeout(REFUSAL_READ_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

#[async_trait::async_trait]
impl<J, R> ChunkRunner for HttpChunkRunner<J, R>
where
    J: Serialize + Send + Sync,
    R: DeserializeOwned + Send,
{
    type Output = R;

    async fn run(
        &self,
        chunk: ChunkSpan,
        attempt: u32,
        progress: AttemptProgress,
    ) -> Result<R, ChunkFailure> {
        let request = ChunkRequest {
            version: self.version.clone(),
            render_id: self.render_id.clone(),
            chunk,
            attempt,
            job: &self.job,
        };
        let body = serde_json::to_vec(&request).expect("serializable");
        let mut call = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, self.auth.sign(&body, SystemTime::now()));
        if let Some(token) = self
            .id_tokens
            .id_token()
            .await
            .map_err(ChunkFailure::Vanished)?
        {
            call = call.bearer_auth(token);
        }
        let mut response = call.body(body).send().await.map_err(|e| {
            ChunkFailure::Vanished(format!("the chunk call failed: {}", describe(&e)))
        })?;
        let status = response.status();
        if status != StatusCode::OK {
            let after = retry_after(response.headers());
            return Err(classify_refusal(
                status,
                read_refusal(response).await,
                after,
            ));
        }
        let mut decoder = Decoder::new(MAX_MESSAGE_BYTES);
        loop {
            let read = tokio::time::timeout(self.idle_timeout, response.chunk()).await;
            let bytes = match read {
                Err(_) => {
                    return Err(ChunkFailure::Vanished(format!(
                        "the worker said nothing for {} s",
                        self.idle_timeout.as_secs()
                    )));
                }
                Ok(Err(e)) => {
                    return Err(ChunkFailure::Vanished(format!(
                        "the worker's stream broke: {}",
                        describe(&e)
                    )));
                }
                Ok(Ok(None)) => {
                    return Err(ChunkFailure::Vanished(
                        "the worker's stream ended without a result".into(),
                    ));
                }
                Ok(Ok(Some(bytes))) => bytes,
            };
            let values = decoder.feed(&bytes).map_err(|e| {
                ChunkFailure::Fatal(ChunkError::new("ChunkProtocolError", e.to_string()))
            })?;
            for value in values {
                let message = WorkerMessage::<R>::from_value(value).map_err(|e| {
                    ChunkFailure::Fatal(ChunkError::new("ChunkProtocolError", e.to_string()))
                })?;
                match message {
                    WorkerMessage::Progress { rendered, encoded } => {
                        progress.report(rendered, encoded)
                    }
                    WorkerMessage::Result(result) => return Ok(result),
                    WorkerMessage::Error {
                        error,
                        retryable: true,
                    } => {
                        return Err(ChunkFailure::Vanished(format!(
                            "the worker gave up: {}: {}",
                            error.name, error.message
                        )));
                    }
                    WorkerMessage::Error { error, .. } => return Err(ChunkFailure::Fatal(error)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_what_the_scheduler_does() {
        let no_capacity = |s: u16| {
            matches!(
                classify_refusal(StatusCode::from_u16(s).unwrap(), None, None),
                ChunkFailure::NoCapacity { .. }
            )
        };
        assert!(no_capacity(429) && no_capacity(503));
        for s in [500, 502, 504] {
            assert!(matches!(
                classify_refusal(StatusCode::from_u16(s).unwrap(), None, None),
                ChunkFailure::Vanished(_)
            ));
        }
        let version = classify_refusal(
            StatusCode::CONFLICT,
            Some(ChunkError::new(
                names::VERSION_MISMATCH,
                "worker abc, call def",
            )),
            None,
        );
        assert_eq!(
            version,
            ChunkFailure::Fatal(ChunkError::new(
                names::VERSION_MISMATCH,
                "worker abc, call def"
            ))
        );
        match classify_refusal(StatusCode::UNAUTHORIZED, None, None) {
            ChunkFailure::Fatal(e) => {
                assert_eq!(e.name, names::AUTH);
                assert!(e.message.contains("CLOUDRUN_RENDER_CHUNK_SECRET"));
                assert!(e.message.contains("run.invoker"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_refusal(StatusCode::BAD_REQUEST, None, None),
            ChunkFailure::Fatal(_)
        ));
    }
}
