//! Reading what is in a bucket: listings, one object's metadata, deletion, and downloads.
//!
//! Same client, deadlines and retry rules as the uploads beside it: every exchange has the
//! attempt deadline, transient failures are retried with backoff, and a download lands at its
//! path only once every byte is in and its CRC32C matches what GCS reports.

use std::path::Path;

use base64::Engine;
use futures::StreamExt;
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use tokio::io::AsyncWriteExt;

use super::{Failure, GcsStore};
use crate::storage::StorageError;

/// An object as GCS lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// As GCS reports it; `None` for composite objects of some emulators.
    pub crc32c: Option<u32>,
    pub content_type: Option<String>,
    pub updated: Option<time::OffsetDateTime>,
    pub generation: i64,
}

impl ObjectInfo {
    fn from_object(o: Object) -> ObjectInfo {
        ObjectInfo {
            crc32c: o.crc32c.as_deref().and_then(decode_crc32c),
            key: o.name,
            size: o.size.max(0) as u64,
            content_type: o.content_type,
            updated: o.updated,
            generation: o.generation,
        }
    }
}

/// GCS writes a CRC32C as the base64 of its four big-endian bytes.
pub fn encode_crc32c(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

fn decode_crc32c(b64: &str) -> Option<u32> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn http_status(f: &Failure) -> Option<u16> {
    match f {
        Failure::Gcs(GcsError::Response(r)) => Some(r.code),
        Failure::Gcs(GcsError::HttpClient(e) | GcsError::RawResponse(e, _)) => {
            e.status().map(|s| s.as_u16())
        }
        _ => None,
    }
}

impl GcsStore {
    /// Where objects are served over plain HTTP: `https://storage.googleapis.com`, or the
    /// emulator itself (fake-gcs-server serves `/{bucket}/{object}` when started with
    /// `-public-host` set to its own address).
    pub fn public_base(&self) -> &str {
        self.endpoint()
    }

    /// Every object whose key starts with `prefix`, in key order, all pages.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut objects = Vec::new();
        let mut page_token = None;
        loop {
            let request = ListObjectsRequest {
                bucket: bucket.into(),
                prefix: Some(prefix.into()),
                page_token: page_token.take(),
                ..Default::default()
            };
            let page = self
                .reading("list objects", || self.client.list_objects(&request))
                .await
                .map_err(|e| object_error("list", bucket, prefix, e))?;
            objects.extend(
                page.items
                    .unwrap_or_default()
                    .into_iter()
                    .map(ObjectInfo::from_object),
            );
            match page.next_page_token {
                Some(token) if !token.is_empty() => page_token = Some(token),
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// The object's metadata, or `None` if there is no object at `key`.
    pub async fn metadata(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<ObjectInfo>, StorageError> {
        let request = GetObjectRequest {
            bucket: bucket.into(),
            object: key.into(),
            ..Default::default()
        };
        match self
            .reading("read object metadata", || self.client.get_object(&request))
            .await
        {
            Ok(o) => Ok(Some(ObjectInfo::from_object(o))),
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(object_error("read the metadata of", bucket, key, e)),
        }
    }

    /// Deletes the object at `key`. One that is already gone counts as deleted.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        let request = DeleteObjectRequest {
            bucket: bucket.into(),
            object: key.into(),
            ..Default::default()
        };
        match self
            .reading("delete an object", || self.client.delete_object(&request))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if http_status(&e) == Some(404) => Ok(()),
            Err(e) => Err(object_error("delete", bucket, key, e)),
        }
    }

    /// Downloads `gs://bucket/key` to `dest`. The bytes go to a temporary file beside it,
    /// which becomes `dest` only once the size and CRC32C match the object's metadata. After
    /// a transient failure the download goes on from the last byte received, pinned to the
    /// generation it started with, so an object replaced meanwhile cannot mix into it.
    pub async fn download(
        &self,
        bucket: &str,
        key: &str,
        dest: &Path,
    ) -> Result<u64, StorageError> {
        let fail = |message: String| StorageError::Object {
            action: "download",
            bucket: bucket.into(),
            key: key.into(),
            message,
        };
        let info = self
            .metadata(bucket, key)
            .await?
            .ok_or_else(|| StorageError::NotFound {
                bucket: bucket.into(),
                key: key.into(),
            })?;
        let partial = crate::storage::partial_beside(dest).map_err(|e| {
            fail(format!(
                "cannot create a file beside {}: {e}",
                dest.display()
            ))
        })?;
        let mut file = tokio::fs::File::from_std(
            partial
                .reopen()
                .map_err(|e| fail(format!("cannot open {}: {e}", partial.path().display())))?,
        );
        let request = GetObjectRequest {
            bucket: bucket.into(),
            object: key.into(),
            generation: Some(info.generation),
            ..Default::default()
        };
        let mut received = 0u64;
        let mut crc = 0u32;
        let mut failures_here = 0u32;
        loop {
            let range = Range(Some(received).filter(|n| *n > 0), None);
            let result = self
                .receive(&request, &range, &mut file, &mut received, &mut crc)
                .await;
            let retryable = match &result {
                Err(Receive::Start(e)) => e.is_transient(),
                Err(Receive::Broken(_)) => true,
                _ => false,
            };
            match result {
                Ok(()) => break,
                Err(Receive::Write(e)) => return Err(fail(format!("cannot write: {e}"))),
                Err(Receive::Progress) => failures_here = 0,
                Err(Receive::Start(e) | Receive::Broken(e))
                    if retryable && failures_here + 1 < self.policy.attempts =>
                {
                    failures_here += 1;
                    tracing::warn!(received, failures_here, "a download failed, retrying: {e}");
                    tokio::time::sleep(self.policy.backoff(failures_here)).await;
                }
                Err(Receive::Start(e) | Receive::Broken(e)) => return Err(fail(e.to_string())),
            }
        }
        file.flush()
            .await
            .and(file.sync_all().await)
            .map_err(|e| fail(format!("cannot write: {e}")))?;
        if received != info.size || info.crc32c.is_some_and(|want| want != crc) {
            return Err(fail(format!(
                "received {received} bytes with crc32c {}; the object has {} bytes, crc32c {}",
                encode_crc32c(crc),
                info.size,
                info.crc32c
                    .map(encode_crc32c)
                    .unwrap_or_else(|| "unknown".into())
            )));
        }
        partial
            .persist(dest)
            .map_err(|e| fail(format!("cannot move it to {}: {e}", dest.display())))?;
        Ok(received)
    }

    /// A request that reads (or deletes): under the attempt deadline, retried with backoff
    /// while it fails transiently, up to the policy's attempts.
    async fn reading<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Failure>
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

    /// One ranged GET, appended to `file`. Returns `Err(Receive::Progress)` when the body
    /// broke off after some bytes arrived, so the caller resets its failure budget and resumes.
    async fn receive(
        &self,
        request: &GetObjectRequest,
        range: &Range,
        file: &mut tokio::fs::File,
        received: &mut u64,
        crc: &mut u32,
    ) -> Result<(), Receive> {
        let stream = self
            .attempt(self.client.download_streamed_object(request, range))
            .await
            .map_err(Receive::Start)?;
        let mut stream = std::pin::pin!(stream);
        let before = *received;
        loop {
            // The deadline is per chunk: a large download may take long, a stalled one may not.
            let next = self
                .attempt(async { stream.next().await.transpose() })
                .await;
            match next {
                Ok(Some(bytes)) => {
                    file.write_all(&bytes).await.map_err(Receive::Write)?;
                    *crc = crc32c::crc32c_append(*crc, &bytes);
                    *received += bytes.len() as u64;
                }
                Ok(None) => return Ok(()),
                // A body that breaks off is the connection's fault, whatever reqwest calls it.
                Err(e) if *received > before => {
                    tracing::warn!(received = *received, "a download broke off, resuming: {e}");
                    return Err(Receive::Progress);
                }
                Err(e) => return Err(Receive::Broken(e)),
            }
        }
    }
}

enum Receive {
    /// The request failed before any body arrived.
    Start(Failure),
    /// The body broke off before its first byte.
    Broken(Failure),
    Write(std::io::Error),
    Progress,
}

fn object_error(action: &'static str, bucket: &str, key: &str, e: Failure) -> StorageError {
    StorageError::Object {
        action,
        bucket: bucket.into(),
        key: key.into(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_round_trips_through_the_gcs_spelling() {
        let crc = crc32c::crc32c(b"<html>hi</html>");
        // What fake-gcs-server (and GCS) report for those bytes.
        assert_eq!(encode_crc32c(crc), "/3Exgw==");
        assert_eq!(decode_crc32c("/3Exgw=="), Some(crc));
        assert_eq!(decode_crc32c("not base64!"), None);
        assert_eq!(decode_crc32c("AAAA"), None, "three bytes are not a CRC32C");
    }
}
