//! A directory that stands in for buckets: `<root>/<bucket>/<key>`.

use std::path::{Path, PathBuf};

use super::{ObjectOptions, StorageError, StoredObject};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Result<LocalStore, StorageError> {
        std::fs::create_dir_all(&root)
            .map_err(|e| StorageError::Config(format!("cannot create {}: {e}", root.display())))?;
        Ok(LocalStore { root })
    }

    fn target(&self, bucket: &str, key: &str) -> Result<PathBuf, StorageError> {
        let bad = |why: &str| StorageError::Upload {
            bucket: bucket.into(),
            key: key.into(),
            message: why.into(),
        };
        if bucket.is_empty() || bucket.contains('/') || bucket == "." || bucket == ".." {
            return Err(bad("invalid bucket name"));
        }
        if key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(bad("invalid object name"));
        }
        Ok(self.root.join(bucket).join(key))
    }

    pub async fn put_file(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        options: &ObjectOptions,
    ) -> Result<StoredObject, StorageError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| StorageError::Upload {
                bucket: bucket.into(),
                key: key.into(),
                message: format!("cannot read {}: {e}", path.display()),
            })?;
        self.put_bytes(bucket, key, bytes, options).await
    }

    pub async fn put_bytes(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        _options: &ObjectOptions,
    ) -> Result<StoredObject, StorageError> {
        let target = self.target(bucket, key)?;
        let fail = |e: std::io::Error| StorageError::Upload {
            bucket: bucket.into(),
            key: key.into(),
            message: e.to_string(),
        };
        let parent = target.parent().expect("target has a parent");
        tokio::fs::create_dir_all(parent).await.map_err(fail)?;
        let size = bytes.len() as u64;
        // Write beside the target and rename: a reader never sees half a file.
        let partial = parent.join(format!(
            ".{}.partial",
            target.file_name().unwrap().to_string_lossy()
        ));
        tokio::fs::write(&partial, bytes).await.map_err(fail)?;
        tokio::fs::rename(&partial, &target).await.map_err(fail)?;
        Ok(StoredObject {
            bucket: bucket.into(),
            key: key.into(),
            size,
            public_url: Some(format!("file://{}", target.display())),
            cloud_storage_uri: format!("gs://{bucket}/{key}"),
        })
    }
}
