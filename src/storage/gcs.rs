//! Google Cloud Storage over its JSON API, through the community `gcloud-storage` client.
//!
//! Every object goes through one resumable session, whatever its size: the same metadata
//! handling for a 200-byte `error.txt` and a 2 GiB video, and a session never shows an object
//! before its last byte is in. Chunks are read from disk as they are sent, so memory stays at
//! one chunk. The CRC32C is computed first and declared in the session's metadata: GCS then
//! refuses to finalize anything else, and we check what it reports once more.
//!
//! Why not the official `google-cloud-storage`: its HTTP layer sends `Host` without the port
//! of a custom endpoint (`google-cloud-gax-internal` `host::header` keeps `authority.host()`),
//! and neither client-wide nor per-request headers can replace it. Emulators build the upload
//! session URL from `Host`, so every resumable upload to an emulator on a port other than 80
//! went to port 80. Credentials still come from the official `google-cloud-auth`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

/// How hard an upload tries before it reports a failure.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per request, the first one included.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// One HTTP exchange, a whole chunk included. A stalled connection fails here and is
    /// retried instead of hanging the render.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(120),
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
        let session = self
            .retrying("start the upload", || {
                self.client.prepare_resumable_upload(&request, &metadata)
            })
            .await
            .map_err(|e| fail(e.to_string()))?;

        let object = self
            .send_chunks(&session, &mut reader, size)
            .await
            .map_err(fail)?;

        // Only a broken emulator finalizes a short upload (fake-gcs-server does so on a status
        // query), but then nothing incomplete may stay at the key.
        if object.size as u64 != size || object.crc32c.as_deref() != Some(crc_b64.as_str()) {
            let delete = DeleteObjectRequest {
                bucket: bucket.into(),
                object: key.into(),
                generation: Some(object.generation),
                ..Default::default()
            };
            if let Err(e) = self.attempt(self.client.delete_object(&delete)).await {
                tracing::error!(bucket, key, "could not remove a corrupt upload: {e}");
            }
            return Err(fail(format!(
                "the stored object does not match what was sent: {} bytes, crc32c {:?}; sent {size} bytes, crc32c {crc_b64}",
                object.size, object.crc32c
            )));
        }
        Ok(StoredObject {
            bucket: bucket.into(),
            key: key.into(),
            size: object.size as u64,
            public_url: Some(super::public_url(bucket, key)),
            cloud_storage_uri: format!("gs://{bucket}/{key}"),
        })
    }

    /// Sends the file chunk by chunk. After a transient failure it asks the session how much it
    /// has and goes on from there; the failure budget is per stretch without progress.
    async fn send_chunks(
        &self,
        session: &ResumableUploadClient,
        reader: &mut Reader,
        size: u64,
    ) -> Result<Object, String> {
        let mut offset = 0u64;
        let mut failures_here = 0u32;
        loop {
            let len = self.chunk_size.min((size - offset) as usize);
            let chunk = reader
                .read(offset, len)
                .await
                .map_err(|e| format!("cannot read the file at {offset}: {e}"))?;
            // An empty object is finalized by `bytes */0`, which ChunkSize writes when the
            // first byte equals the total.
            let range = ChunkSize::new(offset, (offset + len as u64).max(1) - 1, Some(size));
            let status = match self
                .attempt(session.upload_multiple_chunk(chunk, &range))
                .await
            {
                Ok(status) => status,
                Err(e) if e.is_transient() && failures_here + 1 < self.policy.attempts => {
                    failures_here += 1;
                    tracing::warn!(
                        offset,
                        failures_here,
                        "an upload chunk failed, resuming: {e}"
                    );
                    tokio::time::sleep(self.policy.backoff(failures_here)).await;
                    self.retrying("ask the upload session how far it got", || {
                        session.status(Some(size))
                    })
                    .await
                    .map_err(|e| e.to_string())?
                }
                Err(e) => return Err(e.to_string()),
            };
            let before = offset;
            match status {
                UploadStatus::Ok(object) => return Ok(object),
                UploadStatus::NotStarted => offset = 0,
                UploadStatus::ResumeIncomplete(range) => offset = range.last_byte + 1,
            }
            if offset > before {
                failures_here = 0;
            }
            if offset >= size {
                return Err(format!(
                    "the server has all {size} bytes but did not finalize the object"
                ));
            }
        }
    }

    /// `op` under the attempt deadline, retried with backoff while it fails transiently.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GcsError>>,
    {
        let mut failures = 0;
        loop {
            match self.attempt(op()).await {
                Err(e) if e.is_transient() && failures + 1 < self.policy.attempts => {
                    failures += 1;
                    tracing::warn!(failures, "could not {what}, retrying: {e}");
                    tokio::time::sleep(self.policy.backoff(failures)).await;
                }
                other => return other,
            }
        }
    }

    async fn attempt<T>(
        &self,
        op: impl Future<Output = Result<T, GcsError>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.policy.attempt_timeout, op).await {
            Ok(r) => r.map_err(Failure::Gcs),
            Err(_) => Err(Failure::Stalled(self.policy.attempt_timeout)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Gcs(GcsError),
    #[error("no answer within {0:?}")]
    Stalled(Duration),
}

impl Failure {
    /// The retry strategy GCS documents: 408, 429, 5xx, and connections that broke or stalled.
    fn is_transient(&self) -> bool {
        let e = match self {
            Failure::Stalled(_) => return true,
            Failure::Gcs(e) => e,
        };
        match e {
            GcsError::Response(r) => r.is_retriable(),
            GcsError::HttpClient(e) | GcsError::RawResponse(e, _) => match e.status() {
                Some(s) => matches!(s.as_u16(), 408 | 429 | 500..=599),
                None => e.is_connect() || e.is_timeout() || e.is_request() || e.is_body(),
            },
            GcsError::HttpMiddleware(_)
            | GcsError::TokenSource(_)
            | GcsError::InvalidRangeHeader(_) => false,
        }
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
            attempt_timeout: Duration::from_secs(1),
        };
        let waits: Vec<_> = (1..=5).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
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
