//! Where finished renders go: Google Cloud Storage in production, a local directory for
//! development and the demo.
//!
//! **Architecture Invariant:** an object appears at its final key only when it is complete.

pub mod gcs;
mod local;

use std::path::{Path, PathBuf};

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::options::{DownloadBehavior, Privacy};

pub use gcs::GcsStore;
pub use local::LocalStore;

/// Selects the local backend for `serve`: objects land in `<dir>/<bucket>/<key>`.
pub const LOCAL_STORAGE_ENV: &str = "CLOUDRUN_RENDER_LOCAL_STORAGE";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("Could not upload {key} to bucket {bucket}: {message}")]
    Upload {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("Storage is not configured: {0}")]
    Config(String),
    #[error("Could not {action} gs://{bucket}/{key}: {message}")]
    Object {
        action: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    #[error("There is no object gs://{bucket}/{key}")]
    NotFound { bucket: String, key: String },
}

impl StorageError {
    /// The JS-style name of the wire error.
    pub fn name(&self) -> &'static str {
        "StorageError"
    }
}

/// An object as the storage reports it after the upload.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub public_url: Option<String>,
    pub cloud_storage_uri: String,
}

/// How an object is written: its type, disposition and ACL.
#[derive(Debug, Clone)]
pub struct ObjectOptions {
    pub content_type: String,
    pub content_disposition: Option<String>,
    pub privacy: Privacy,
}

pub enum Storage {
    Local(LocalStore),
    Gcs(Box<GcsStore>),
}

impl Storage {
    /// The backend the environment asks for: the local directory if
    /// `CLOUDRUN_RENDER_LOCAL_STORAGE` is set, else GCS (the emulator of
    /// `STORAGE_EMULATOR_HOST` if set, else Application Default Credentials).
    pub async fn from_env() -> Result<Storage, StorageError> {
        if let Ok(dir) = std::env::var(LOCAL_STORAGE_ENV)
            && !dir.is_empty()
        {
            tracing::info!(dir, "storing renders in a local directory");
            return Ok(Storage::Local(LocalStore::new(PathBuf::from(dir))?));
        }
        let store = GcsStore::from_env()?;
        tracing::info!(
            endpoint = store.endpoint(),
            "storing renders in Google Cloud Storage"
        );
        Ok(Storage::Gcs(Box::new(store)))
    }

    /// Uploads a finished file. The object appears at `key` only once it is complete.
    pub async fn upload_file(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        options: &ObjectOptions,
    ) -> Result<StoredObject, StorageError> {
        match self {
            Storage::Local(s) => s.put_file(bucket, key, path, options).await,
            Storage::Gcs(s) => s.put(bucket, key, gcs::Source::File(path), options).await,
        }
    }

    pub async fn upload_bytes(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        options: &ObjectOptions,
    ) -> Result<StoredObject, StorageError> {
        match self {
            Storage::Local(s) => s.put_bytes(bucket, key, bytes, options).await,
            Storage::Gcs(s) => {
                s.put(bucket, key, gcs::Source::Bytes(bytes.into()), options)
                    .await
            }
        }
    }
}

impl Storage {
    /// Copies `bucket/key` to `dest`, which appears only once complete (and, from GCS, checked
    /// against the object's CRC32C).
    pub async fn download(
        &self,
        bucket: &str,
        key: &str,
        dest: &Path,
    ) -> Result<u64, StorageError> {
        match self {
            Storage::Local(s) => s.get_file(bucket, key, dest).await,
            Storage::Gcs(s) => s.download(bucket, key, dest).await,
        }
    }

    /// The keys of every object under `prefix`, in key order.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Storage::Local(s) => s.list_keys(bucket, prefix).await,
            Storage::Gcs(s) => Ok(s
                .list(bucket, prefix)
                .await?
                .into_iter()
                .map(|o| o.key)
                .collect()),
        }
    }

    /// Deletes `bucket/key`; an object that is already gone counts as deleted.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(s) => s.delete(bucket, key).await,
            Storage::Gcs(s) => s.delete(bucket, key).await,
        }
    }
}

/// The temporary file a download is written to: beside `dest`, so that persisting it is a
/// rename on the same file system. Removed when dropped unpersisted.
fn partial_beside(dest: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(dir)
}

/// `renders/{renderId}/{name}`.
pub fn object_key(render_id: &str, name: &str) -> String {
    format!("renders/{render_id}/{name}")
}

/// 10 characters of `[a-z0-9]`, like the original's render ids.
pub fn random_render_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// JavaScript's `encodeURIComponent`: everything but `A–Z a–z 0–9 - _ . ! ~ * ' ( )`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

pub fn encode_uri_component(s: &str) -> String {
    utf8_percent_encode(s, URI_COMPONENT).to_string()
}

/// `downloadBehavior` → `Content-Disposition`, exactly as the original service builds it.
pub fn content_disposition(behavior: &DownloadBehavior) -> Option<String> {
    const ALREADY_ENCODED: &[&str] = &[
        "%3A", "%2F", "%3F", "%23", "%5B", "%5D", "%40", "%21", "%24", "%26", "%27", "%28", "%29",
        "%2A", "%2B", "%2C", "%3B",
    ];
    match behavior {
        DownloadBehavior::PlayInBrowser => None,
        DownloadBehavior::Download { file_name: None } => Some("attachment".into()),
        DownloadBehavior::Download {
            file_name: Some(name),
        } => {
            let encoded = if ALREADY_ENCODED.iter().any(|e| name.contains(e)) {
                name.clone()
            } else {
                encode_uri_component(name)
            };
            Some(format!("attachment; filename=\"{encoded}\""))
        }
    }
}

/// `https://storage.googleapis.com/{bucket}/{encodeURIComponent(key)}`, slashes as `%2F`
/// like the Node SDK's `publicUrl()`.
pub fn public_url(bucket: &str, key: &str) -> String {
    format!(
        "https://storage.googleapis.com/{bucket}/{}",
        encode_uri_component(key)
    )
}

/// WHATWG's path percent-encode set (C0 controls, DEL and non-ASCII, space, `"`, `#`, `<`,
/// `>`, `?`, backtick, `{`, `}`): what a URL's `pathname` setter escapes. `%` and `/` stay.
const URL_PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// `gs://{bucket}/{key}` as the Node storage client's `cloudStorageURI` builds it: the key is
/// assigned to a `gs://` URL's `pathname`, so it is escaped with the path set, not
/// `encodeURIComponent` as in [`public_url`]. Unlike a URL parser we keep dot segments (also
/// `%2e` ones) and escape tabs and newlines rather than drop them, so the URI always names
/// the object that was written; only odd `renderIdOverride`s or `%2e` segments in `outName`
/// (which refuses `.`, `..` and control characters) can tell the difference.
pub fn cloud_storage_uri(bucket: &str, key: &str) -> String {
    format!("gs://{bucket}/{}", utf8_percent_encode(key, URL_PATH))
}

/// The wire's `privacy` for a setting.
pub fn privacy_label(p: Privacy) -> &'static str {
    match p {
        Privacy::Public => "public-read",
        Privacy::Private => "project-private",
        Privacy::NoAcl => "no-acl",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions() {
        assert_eq!(content_disposition(&DownloadBehavior::PlayInBrowser), None);
        assert_eq!(
            content_disposition(&DownloadBehavior::Download { file_name: None }).as_deref(),
            Some("attachment")
        );
        let d = |n: &str| {
            content_disposition(&DownloadBehavior::Download {
                file_name: Some(n.into()),
            })
            .unwrap()
        };
        assert_eq!(d("my video.mp4"), "attachment; filename=\"my%20video.mp4\"");
        assert_eq!(d("ä(1)!.mp4"), "attachment; filename=\"%C3%A4(1)!.mp4\"");
        assert_eq!(d("a%2Fb.mp4"), "attachment; filename=\"a%2Fb.mp4\"");
        assert_eq!(d("a\"b.mp4"), "attachment; filename=\"a%22b.mp4\"");
    }

    #[test]
    fn urls_and_ids() {
        assert_eq!(
            public_url("b", "renders/abc/out.mp4"),
            "https://storage.googleapis.com/b/renders%2Fabc%2Fout.mp4"
        );
        let id = random_render_id();
        assert_eq!(id.len(), 10);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(random_render_id(), random_render_id());
        assert_eq!(object_key("x", "a/b.mp4"), "renders/x/a/b.mp4");
    }

    #[test]
    fn cloud_storage_uris_escape_like_a_url_pathname() {
        assert_eq!(
            cloud_storage_uri("b", "renders/x/out.mp4"),
            "gs://b/renders/x/out.mp4"
        );
        assert_eq!(
            cloud_storage_uri(
                "b",
                "renders/x/a b\"c#d<e>f?g`h{i}j%20k/ü\u{7f}'^!|[]\\;=@$&+,~.mp4"
            ),
            // What Node 20 prints for `u = new URL("gs://b"); u.pathname = <that key>; u.href`.
            "gs://b/renders/x/a%20b%22c%23d%3Ce%3Ef%3Fg%60h%7Bi%7Dj%20k/%C3%BC%7F'^!|[]\\;=@$&+,~.mp4"
        );
    }
}
