//! Google Cloud Storage over its JSON API, through the community `gcloud-storage` client.
//!
//! Every object goes through one resumable session, whatever its size: the same metadata
//! handling for a 200-byte `error.txt` and a 2 GiB video, and a session never shows an object
//! before its last byte is in. Chunks are read from disk as they are sent, so memory stays at
//! one chunk. The CRC32C is computed first and declared in the session's metadata: GCS then
//! refuses to finalize anything else, and we check what it reports once more.
//!
//! A transient failure is retried where it happened; a session that can no longer take the
//! upload (404/410, or an object that does not match) is replaced by a new one from byte 0.
//! Both draw on one [`RetryPolicy`] budget per upload, so a storage path that never works
//! ends in bounded time.
//!
//! Why not the official `google-cloud-storage`: its HTTP layer sends `Host` without the port
//! of a custom endpoint (`google-cloud-gax-internal` `host::header` keeps `authority.host()`),
//! and neither client-wide nor per-request headers can replace it. Emulators build the upload
//! session URL from `Host`, so every resumable upload to an emulator on a port other than 80
//! went to port 80. Credentials still come from the official `google-cloud-auth`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::object_access_controls::PredefinedObjectAcl;
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{
    ChunkSize, ResumableUploadClient, UploadStatus,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ObjectOptions, StorageError, StoredObject};
use crate::options::Privacy;

mod objects;
pub use objects::{ObjectInfo, encode_crc32c};

/// The convention of Google's client libraries: `host:port` or a URL of a GCS emulator.
pub const EMULATOR_ENV: &str = "STORAGE_EMULATOR_HOST";

const PRODUCTION_ENDPOINT: &str = "https://storage.googleapis.com";

/// How hard an upload tries before it reports a failure. One budget covers the whole upload:
/// every exchange, and every session started over.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Failed attempts in a row before the upload gives up (the first one included). Bytes the
    /// session confirms start a new row. Also the number of sessions one upload may start.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// One HTTP exchange, a whole chunk included. A stalled connection fails here and is
    /// retried instead of hanging the render.
    pub attempt_timeout: Duration,
    /// No retry begins once the upload has run this long, so a storage path that fails slowly
    /// (every exchange stalling) still ends in bounded time.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(120),
            give_up_after: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, failed_attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed_attempts.saturating_sub(1));
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What one upload has left of its [`RetryPolicy`].
struct Budget<'a> {
    policy: &'a RetryPolicy,
    bucket: &'a str,
    key: &'a str,
    started: Instant,
    /// Failed attempts since the session last confirmed new bytes.
    failures: u32,
    /// Sessions started over.
    restarts: u32,
}

impl<'a> Budget<'a> {
    fn new(policy: &'a RetryPolicy, bucket: &'a str, key: &'a str) -> Budget<'a> {
        Budget {
            policy,
            bucket,
            key,
            started: Instant::now(),
            failures: 0,
            restarts: 0,
        }
    }

    fn progressed(&mut self) {
        self.failures = 0;
    }

    /// Counts a failed attempt: the wait before the next one, or why there is none.
    fn next_wait(&mut self) -> Result<Duration, String> {
        self.failures += 1;
        if self.failures >= self.policy.attempts {
            return Err(format!("{} attempts in a row failed", self.failures));
        }
        let wait = self.policy.backoff(self.failures);
        let elapsed = self.started.elapsed();
        if elapsed + wait > self.policy.give_up_after {
            return Err(format!("gave up after {}s", elapsed.as_secs()));
        }
        Ok(wait)
    }

    /// After a transient failure of `what`: Ok once the backoff is over, or the message the
    /// upload fails with.
    async fn failed(
        &mut self,
        what: &str,
        error: &(dyn std::fmt::Display + Sync),
    ) -> Result<(), String> {
        let wait = self
            .next_wait()
            .map_err(|limit| format!("could not {what} ({limit}): {error}"))?;
        let (bucket, key, failures) = (self.bucket, self.key, self.failures);
        tracing::warn!(
            bucket,
            key,
            failures,
            "could not {what}, retrying in {wait:?}: {error}"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// After a session that can no longer take the upload: Ok once the backoff is over and a
    /// new session may start, or the message the upload fails with.
    async fn session_lost(&mut self, why: &str) -> Result<(), String> {
        self.restarts += 1;
        let wait = if self.restarts >= self.policy.attempts {
            Err(format!("{} sessions lost", self.restarts))
        } else {
            self.next_wait()
        };
        let wait = wait.map_err(|limit| format!("the upload session was lost ({limit}): {why}"))?;
        let (bucket, key, restarts) = (self.bucket, self.key, self.restarts);
        tracing::warn!(
            bucket,
            key,
            restarts,
            "the upload session was lost, starting over from byte 0 in {wait:?}: {why}"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// Where the bytes of an upload come from; read one chunk at a time.
pub enum Source<'a> {
    File(&'a Path),
    Bytes(Bytes),
}

impl Source<'_> {
    fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Bytes(_) => "memory".into(),
        }
    }
}

/// An open source: its size, and chunks at any offset (a retry re-reads from disk).
enum Reader {
    File(tokio::fs::File, u64),
    Bytes(Bytes),
}

impl Reader {
    async fn open(source: &Source<'_>) -> std::io::Result<Reader> {
        Ok(match source {
            Source::File(path) => {
                let file = tokio::fs::File::open(path).await?;
                let len = file.metadata().await?.len();
                Reader::File(file, len)
            }
            Source::Bytes(b) => Reader::Bytes(b.clone()),
        })
    }

    fn len(&self) -> u64 {
        match self {
            Reader::File(_, len) => *len,
            Reader::Bytes(b) => b.len() as u64,
        }
    }

    async fn read(&mut self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        match self {
            Reader::File(file, _) => {
                file.seek(std::io::SeekFrom::Start(offset)).await?;
                let mut buf = vec![0; len];
                file.read_exact(&mut buf).await?;
                Ok(Bytes::from(buf))
            }
            Reader::Bytes(b) => Ok(b.slice(offset as usize..offset as usize + len)),
        }
    }

    async fn crc32c(&mut self) -> std::io::Result<u32> {
        const STEP: usize = 1 << 20;
        let total = self.len();
        let mut crc = 0;
        let mut offset = 0;
        while offset < total {
            let n = STEP.min((total - offset) as usize);
            crc = crc32c::crc32c_append(crc, &self.read(offset, n).await?);
            offset += n as u64;
        }
        Ok(crc)
    }
}

pub struct GcsStore {
    client: Client,
    endpoint: String,
    policy: RetryPolicy,
    chunk_size: usize,
}

/// GCS wants every chunk but the last to be a multiple of 256 KiB.
const CHUNK_QUANTUM: usize = 256 * 1024;
/// The official clients' default; memory per upload is one chunk.
pub const DEFAULT_CHUNK_SIZE: usize = 32 * CHUNK_QUANTUM;

impl GcsStore {
    /// The emulator named by `STORAGE_EMULATOR_HOST`, or production with Application Default
    /// Credentials (on Cloud Run, the metadata server). Credentials are only fetched when an
    /// upload needs them, so the service starts on a machine without any.
    pub fn from_env() -> Result<GcsStore, StorageError> {
        match std::env::var(EMULATOR_ENV) {
            Ok(host) if !host.trim().is_empty() => Ok(GcsStore::emulator(&host)),
            _ => GcsStore::production(),
        }
    }

    pub fn production() -> Result<GcsStore, StorageError> {
        let credentials = google_cloud_auth::credentials::Builder::default()
            .build_access_token_credentials()
            .map_err(|e| {
                StorageError::Config(format!("no Application Default Credentials: {e}"))
            })?;
        let config = ClientConfig {
            http: Some(http_client()),
            storage_endpoint: PRODUCTION_ENDPOINT.into(),
            token_source_provider: Some(Box::new(AdcTokenProvider(Arc::new(AdcToken(
                credentials,
            ))))),
            ..ClientConfig::default()
        };
        Ok(GcsStore::with_client(
            Client::new(config),
            PRODUCTION_ENDPOINT.into(),
        ))
    }

    /// Anonymous access to an emulator at `host` (`127.0.0.1:4443` or `http://…`), any port.
    pub fn emulator(host: &str) -> GcsStore {
        let host = host.trim().trim_end_matches('/');
        let endpoint = if host.starts_with("http://") || host.starts_with("https://") {
            host.to_string()
        } else {
            format!("http://{host}")
        };
        let config = ClientConfig {
            http: Some(http_client()),
            storage_endpoint: endpoint.clone(),
            ..ClientConfig::default()
        }
        .anonymous();
        GcsStore::with_client(Client::new(config), endpoint)
    }

    fn with_client(client: Client, endpoint: String) -> GcsStore {
        GcsStore {
            client,
            endpoint,
            policy: RetryPolicy::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn with_policy(mut self, policy: RetryPolicy) -> GcsStore {
        self.policy = policy;
        self
    }

    /// Rounded down to a multiple of 256 KiB, at least one.
    pub fn with_chunk_size(mut self, bytes: usize) -> GcsStore {
        self.chunk_size = (bytes / CHUNK_QUANTUM).max(1) * CHUNK_QUANTUM;
        self
    }

    /// Uploads `source` to `gs://bucket/key`. The object exists only once every byte is in
    /// and its CRC32C matches.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        source: Source<'_>,
        options: &ObjectOptions,
    ) -> Result<StoredObject, StorageError> {
        let fail = |message: String| StorageError::Upload {
            bucket: bucket.into(),
            key: key.into(),
            message,
        };
        let mut reader = Reader::open(&source)
            .await
            .map_err(|e| fail(format!("cannot read {}: {e}", source.describe())))?;
        let size = reader.len();
        let crc = reader
            .crc32c()
            .await
            .map_err(|e| fail(format!("cannot read {}: {e}", source.describe())))?;
        let crc_b64 = base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes());

        let request = UploadObjectRequest {
            bucket: bucket.into(),
            predefined_acl: predefined_acl(options.privacy),
            ..Default::default()
        };
        let metadata = UploadType::Multipart(Box::new(Object {
            name: key.into(),
            content_type: Some(options.content_type.clone()),
            content_disposition: options.content_disposition.clone(),
            crc32c: Some(crc_b64.clone()),
            ..Default::default()
        }));
        let mut budget = Budget::new(&self.policy, bucket, key);
        loop {
            let session = self
                .retrying(&mut budget, "start the upload", || {
                    self.client.prepare_resumable_upload(&request, &metadata)
                })
                .await
                .map_err(fail)?;
            let lost = match self
                .send_session(&session, &mut reader, size, &mut budget)
                .await
            {
                Ok(object)
                    if object.size as u64 == size
                        && object.crc32c.as_deref() == Some(crc_b64.as_str()) =>
                {
                    return Ok(StoredObject {
                        bucket: bucket.into(),
                        key: key.into(),
                        size: object.size as u64,
                        public_url: Some(super::public_url(bucket, key)),
                        cloud_storage_uri: super::cloud_storage_uri(bucket, key),
                    });
                }
                // GCS refuses to finalize bytes that do not match the declared CRC32C, but
                // fake-gcs-server finalizes whatever it has when asked for a session's status.
                // Nothing incomplete may stay at the key.
                Ok(object) => {
                    self.delete_generation(bucket, key, object.generation, &mut budget)
                        .await
                        .map_err(fail)?;
                    format!(
                        "it finalized an object that does not match what was sent: {} bytes, crc32c {}; sent {size} bytes, crc32c {crc_b64}",
                        object.size,
                        object.crc32c.as_deref().unwrap_or("none")
                    )
                }
                Err(SessionEnd::Lost(why)) => why,
                Err(SessionEnd::Failed(message)) => return Err(fail(message)),
            };
            budget.session_lost(&lost).await.map_err(fail)?;
        }
    }

    /// Sends the file through one session, chunk by chunk. After a transient failure it asks
    /// the session how much it has and goes on from there.
    async fn send_session(
        &self,
        session: &ResumableUploadClient,
        reader: &mut Reader,
        size: u64,
        budget: &mut Budget<'_>,
    ) -> Result<Object, SessionEnd> {
        let mut offset = 0u64;
        let mut ask_status = false;
        loop {
            let (what, answer) = if ask_status {
                let what = "ask the upload session how far it got";
                (what, self.attempt(session.status(Some(size))).await)
            } else {
                let len = self.chunk_size.min((size - offset) as usize);
                let chunk = reader.read(offset, len).await.map_err(|e| {
                    SessionEnd::Failed(format!("cannot read the file at {offset}: {e}"))
                })?;
                // An empty object is finalized by `bytes */0`, which ChunkSize writes when the
                // first byte equals the total.
                let range = ChunkSize::new(offset, (offset + len as u64).max(1) - 1, Some(size));
                let answer = self
                    .attempt(session.upload_multiple_chunk(chunk, &range))
                    .await;
                ("send a chunk", answer)
            };
            let confirmed = match answer {
                Ok(UploadStatus::Ok(object)) => return Ok(object),
                Ok(UploadStatus::NotStarted) => 0,
                Ok(UploadStatus::ResumeIncomplete(range)) => range.last_byte + 1,
                Err(e) if e.session_gone() => {
                    return Err(SessionEnd::Lost(format!("{what}: {e}")));
                }
                Err(e) if e.is_transient() => {
                    budget.failed(what, &e).await.map_err(SessionEnd::Failed)?;
                    ask_status = true;
                    continue;
                }
                Err(e) => return Err(SessionEnd::Failed(format!("could not {what}: {e}"))),
            };
            if confirmed >= size {
                return Err(SessionEnd::Lost(format!(
                    "it has all {size} bytes but did not finalize the object"
                )));
            }
            if confirmed > offset {
                budget.progressed();
            } else if !ask_status {
                // A chunk the session did not take counts as a failed attempt, so a session
                // that never takes anything cannot keep the upload going.
                budget
                    .failed(what, &format!("the session kept {confirmed} bytes"))
                    .await
                    .map_err(SessionEnd::Failed)?;
            }
            offset = confirmed;
            ask_status = false;
        }
    }

    /// Removes the object a session finalized by mistake. Its generation only: a newer
    /// upload to the same key stays.
    async fn delete_generation(
        &self,
        bucket: &str,
        key: &str,
        generation: i64,
        budget: &mut Budget<'_>,
    ) -> Result<(), String> {
        let request = DeleteObjectRequest {
            bucket: bucket.into(),
            object: key.into(),
            generation: Some(generation),
            ..Default::default()
        };
        let deleted = self
            .retrying(budget, "remove an object that does not match", || async {
                match self.client.delete_object(&request).await {
                    Err(e) if status_of(&e) == Some(404) => Ok(()),
                    other => other,
                }
            })
            .await;
        match deleted {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(bucket, key, generation, "{e}");
                Err(format!(
                    "{e}; a wrong object may be left at generation {generation}"
                ))
            }
        }
    }

    /// `op` under the attempt deadline, retried with backoff while it fails transiently.
    async fn retrying<T, F, Fut>(
        &self,
        budget: &mut Budget<'_>,
        what: &str,
        mut op: F,
    ) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GcsError>>,
    {
        loop {
            match self.attempt(op()).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => budget.failed(what, &e).await?,
                Err(e) => return Err(format!("could not {what}: {e}")),
            }
        }
    }

    async fn attempt<T>(
        &self,
        op: impl Future<Output = Result<T, GcsError>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.policy.attempt_timeout, op).await {
            Ok(r) => r.map_err(Failure::from),
            Err(_) => Err(Failure::Stalled(self.policy.attempt_timeout)),
        }
    }
}

/// Why a session did not produce the object.
enum SessionEnd {
    /// The session can no longer take the upload; a new one may.
    Lost(String),
    /// Retrying would not help, or the budget is spent.
    Failed(String),
}

#[derive(Debug)]
enum Failure {
    Gcs(GcsError),
    Stalled(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // GCS's own message does not say its status, which tells transient from not.
            Failure::Gcs(GcsError::Response(r)) => write!(f, "HTTP {}: {}", r.code, r.message),
            Failure::Gcs(e) => {
                // reqwest's own message is often just "error sending request"; the cause
                // (a reset connection, a refused connect) is further down.
                write!(f, "{e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
            Failure::Stalled(limit) => write!(f, "no answer within {limit:?}"),
        }
    }
}

impl From<GcsError> for Failure {
    /// A session's URL is all it takes to write to the session: it stays out of messages
    /// and logs.
    fn from(e: GcsError) -> Failure {
        Failure::Gcs(match e {
            GcsError::HttpClient(e) => GcsError::HttpClient(e.without_url()),
            GcsError::RawResponse(e, body) => GcsError::RawResponse(e.without_url(), body),
            other => other,
        })
    }
}

fn status_of(e: &GcsError) -> Option<u16> {
    match e {
        GcsError::Response(r) => Some(r.code),
        GcsError::HttpClient(e) | GcsError::RawResponse(e, _) => e.status().map(|s| s.as_u16()),
        _ => None,
    }
}

impl Failure {
    fn status(&self) -> Option<u16> {
        match self {
            Failure::Gcs(e) => status_of(e),
            Failure::Stalled(_) => None,
        }
    }

    /// The retry strategy GCS documents: 408, 429, 5xx, and connections that broke or stalled,
    /// before or while the answer was read.
    fn is_transient(&self) -> bool {
        if let Some(status) = self.status() {
            return matches!(status, 408 | 429 | 500..=599);
        }
        match self {
            Failure::Stalled(_) => true,
            Failure::Gcs(GcsError::HttpClient(e) | GcsError::RawResponse(e, _)) => {
                e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode()
            }
            Failure::Gcs(_) => false,
        }
    }

    /// On a session's URL, 404 and 410 say that the session is over (expired, or failed on
    /// the server's side); GCS's remedy is a new session from the start.
    fn session_gone(&self) -> bool {
        matches!(self.status(), Some(404 | 410))
    }
}

/// Shared by every request; a dead endpoint fails the connect instead of hanging.
fn http_client() -> reqwest_middleware::ClientWithMiddleware {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client with rustls");
    reqwest_middleware::ClientBuilder::new(client).build()
}

fn predefined_acl(privacy: Privacy) -> Option<PredefinedObjectAcl> {
    match privacy {
        Privacy::Public => Some(PredefinedObjectAcl::PublicRead),
        Privacy::Private => Some(PredefinedObjectAcl::ProjectPrivate),
        // Buckets with uniform bucket-level access refuse any ACL.
        Privacy::NoAcl => None,
    }
}

/// Application Default Credentials from the official `google-cloud-auth`, as the token source
/// `gcloud-storage` asks for. The credentials cache and refresh the token themselves.
#[derive(Debug)]
struct AdcToken(google_cloud_auth::credentials::AccessTokenCredentials);

#[async_trait::async_trait]
impl token_source::TokenSource for AdcToken {
    async fn token(&self) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let token = self.0.access_token().await?;
        Ok(format!("Bearer {}", token.token))
    }
}

#[derive(Debug)]
struct AdcTokenProvider(Arc<AdcToken>);

impl token_source::TokenSourceProvider for AdcTokenProvider {
    fn token_source(&self) -> Arc<dyn token_source::TokenSource> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            attempts: 10,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(3),
            ..RetryPolicy::default()
        };
        let waits: Vec<_> = (1..=5).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
    }

    fn three_attempts() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn a_budget_allows_failures_in_a_row_and_progress_starts_a_new_row() {
        let p = three_attempts();
        let mut b = Budget::new(&p, "b", "k");
        assert_eq!(b.next_wait(), Ok(Duration::from_millis(500)));
        assert_eq!(b.next_wait(), Ok(Duration::from_secs(1)));
        assert_eq!(b.next_wait(), Err("3 attempts in a row failed".into()));

        let mut b = Budget::new(&p, "b", "k");
        for _ in 0..5 {
            assert!(b.next_wait().is_ok());
            assert!(b.next_wait().is_ok());
            b.progressed();
        }
    }

    #[test]
    fn no_retry_begins_after_the_time_limit() {
        let p = RetryPolicy {
            give_up_after: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        let mut b = Budget::new(&p, "b", "k");
        assert!(b.next_wait().is_ok());
        b.started = Instant::now() - Duration::from_secs(61);
        let e = b.next_wait().unwrap_err();
        assert!(e.starts_with("gave up after 6"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn lost_sessions_are_bounded_even_when_each_made_progress() {
        let p = three_attempts();
        let mut b = Budget::new(&p, "b", "k");
        assert_eq!(b.session_lost("first").await, Ok(()));
        b.progressed();
        assert_eq!(b.session_lost("second").await, Ok(()));
        b.progressed();
        let e = b.session_lost("third").await.unwrap_err();
        assert_eq!(e, "the upload session was lost (3 sessions lost): third");
        // A lost session counts in the row of failures too.
        let mut b = Budget::new(&p, "b", "k");
        assert!(b.next_wait().is_ok());
        assert!(b.session_lost("after a failure").await.is_ok());
        assert!(b.next_wait().is_err());
    }

    #[test]
    fn which_failures_are_retried_and_which_end_a_session() {
        let answer = |code: u16| {
            let body = serde_json::json!({"code": code, "errors": [], "message": "m"});
            Failure::Gcs(GcsError::Response(serde_json::from_value(body).unwrap()))
        };
        for code in [408, 429, 500, 503] {
            assert!(answer(code).is_transient(), "{code}");
            assert!(!answer(code).session_gone(), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 412] {
            assert!(!answer(code).is_transient(), "{code}");
        }
        assert!(answer(404).session_gone() && answer(410).session_gone());
        assert!(Failure::Stalled(Duration::from_secs(1)).is_transient());
        assert_eq!(answer(503).to_string(), "HTTP 503: m");
    }

    #[test]
    fn emulator_hosts_with_and_without_scheme() {
        assert_eq!(
            GcsStore::emulator("127.0.0.1:9023").endpoint(),
            "http://127.0.0.1:9023"
        );
        assert_eq!(
            GcsStore::emulator("https://gcs.local:4443/").endpoint(),
            "https://gcs.local:4443"
        );
    }

    #[test]
    fn chunks_are_whole_quanta() {
        let s = GcsStore::emulator("127.0.0.1:1").with_chunk_size(300 * 1024);
        assert_eq!(s.chunk_size, 256 * 1024);
        let s = GcsStore::emulator("127.0.0.1:1").with_chunk_size(1);
        assert_eq!(s.chunk_size, 256 * 1024);
    }

    #[test]
    fn privacy_to_acl() {
        assert_eq!(
            predefined_acl(Privacy::Public),
            Some(PredefinedObjectAcl::PublicRead)
        );
        assert_eq!(
            predefined_acl(Privacy::Private),
            Some(PredefinedObjectAcl::ProjectPrivate)
        );
        assert_eq!(predefined_acl(Privacy::NoAcl), None);
    }

    #[tokio::test]
    async fn crc_of_a_file_read_in_steps_matches_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut r = Reader::open(&Source::File(&path)).await.unwrap();
        assert_eq!(r.len(), data.len() as u64);
        assert_eq!(r.crc32c().await.unwrap(), crc32c::crc32c(&data));
        assert_eq!(
            &r.read(1_000_000, 5).await.unwrap()[..],
            &data[1_000_000..1_000_005]
        );
    }
}
