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
        _options: &ObjectOptions,
    ) -> Result<StoredObject, StorageError> {
        let target = self.target(bucket, key)?;
        let partial = self.prepare(bucket, key, &target).await?;
        if let Err(e) = tokio::fs::copy(path, &partial).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(StorageError::Upload {
                bucket: bucket.into(),
                key: key.into(),
                message: format!("cannot copy {}: {e}", path.display()),
            });
        }
        self.commit(bucket, key, &partial, &target).await
    }

    pub async fn put_bytes(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        _options: &ObjectOptions,
    ) -> Result<StoredObject, StorageError> {
        let target = self.target(bucket, key)?;
        let partial = self.prepare(bucket, key, &target).await?;
        if let Err(e) = tokio::fs::write(&partial, bytes).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(fail(bucket, key, e));
        }
        self.commit(bucket, key, &partial, &target).await
    }

    /// Creates the target's directory and names the file to write before renaming: a reader
    /// never sees half a file.
    async fn prepare(
        &self,
        bucket: &str,
        key: &str,
        target: &Path,
    ) -> Result<PathBuf, StorageError> {
        let parent = target.parent().expect("target has a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| fail(bucket, key, e))?;
        Ok(parent.join(format!(
            ".{}.partial",
            target.file_name().unwrap().to_string_lossy()
        )))
    }

    async fn commit(
        &self,
        bucket: &str,
        key: &str,
        partial: &Path,
        target: &Path,
    ) -> Result<StoredObject, StorageError> {
        let renamed = tokio::fs::rename(partial, target).await;
        if let Err(e) = renamed {
            let _ = tokio::fs::remove_file(partial).await;
            return Err(fail(bucket, key, e));
        }
        let size = tokio::fs::metadata(target)
            .await
            .map_err(|e| fail(bucket, key, e))?
            .len();
        Ok(StoredObject {
            bucket: bucket.into(),
            key: key.into(),
            size,
            public_url: Some(format!("file://{}", target.display())),
            cloud_storage_uri: super::cloud_storage_uri(bucket, key),
        })
    }
}

impl LocalStore {
    /// Copies an object out, to a temporary name beside `dest` first.
    pub async fn get_file(
        &self,
        bucket: &str,
        key: &str,
        dest: &Path,
    ) -> Result<u64, StorageError> {
        let source = self.target(bucket, key)?;
        if !tokio::fs::try_exists(&source).await.unwrap_or(false) {
            return Err(StorageError::NotFound {
                bucket: bucket.into(),
                key: key.into(),
            });
        }
        let fail = |e: std::io::Error| StorageError::Object {
            action: "download",
            bucket: bucket.into(),
            key: key.into(),
            message: e.to_string(),
        };
        let partial = super::partial_beside(dest).map_err(fail)?;
        let size = tokio::fs::copy(&source, partial.path())
            .await
            .map_err(fail)?;
        partial.persist(dest).map_err(|e| fail(e.error))?;
        Ok(size)
    }
}

fn fail(bucket: &str, key: &str, e: std::io::Error) -> StorageError {
    StorageError::Upload {
        bucket: bucket.into(),
        key: key.into(),
        message: e.to_string(),
    }
}
