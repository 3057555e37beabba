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

impl LocalStore {
    /// Keys under `prefix` (which ends at a `/`, or names a file), in key order. Files being
    /// written (`.{name}.partial`) are not objects yet.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StorageError> {
        let root = self.target(bucket, "x")?.parent().unwrap().to_path_buf();
        let fail = |e: std::io::Error| StorageError::Object {
            action: "list",
            bucket: bucket.into(),
            key: prefix.into(),
            message: e.to_string(),
        };
        // From the prefix's deepest directory: a render's chunks, not the whole bucket.
        let start = match prefix.rfind('/') {
            Some(i) => root.join(&prefix[..i]),
            None => root.clone(),
        };
        let walk_root = root.clone();
        let mut keys = tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            let mut dirs = vec![start];
            while let Some(dir) = dirs.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    if entry.file_type()?.is_dir() {
                        dirs.push(path);
                    } else if !entry.file_name().to_string_lossy().ends_with(".partial") {
                        let relative = path.strip_prefix(&walk_root).expect("under the root");
                        keys.push(relative.to_string_lossy().into_owned());
                    }
                }
            }
            Ok(keys)
        })
        .await
        .map_err(|e| fail(std::io::Error::other(e)))?
        .map_err(fail)?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        Ok(keys)
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        let target = self.target(bucket, key)?;
        match tokio::fs::remove_file(&target).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::Object {
                action: "delete",
                bucket: bucket.into(),
                key: key.into(),
                message: e.to_string(),
            }),
        }
    }
}

fn fail(bucket: &str, key: &str, e: std::io::Error) -> StorageError {
    StorageError::Upload {
        bucket: bucket.into(),
        key: key.into(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Privacy;

    #[tokio::test]
    async fn objects_are_listed_by_prefix_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf()).unwrap();
        let options = ObjectOptions {
            content_type: "application/octet-stream".into(),
            content_disposition: None,
            privacy: Privacy::Private,
        };
        for key in [
            "renders/a/chunks/00000.1.video.chunk",
            "renders/a/chunks/00001.1.video.chunk",
            "renders/a/out.mp4",
            "renders/ab/chunks/00000.1.video.chunk",
        ] {
            store.put_bytes("b", key, vec![1], &options).await.unwrap();
        }
        // A file still being written is not an object.
        std::fs::write(dir.path().join("b/renders/a/chunks/.x.partial"), b"").unwrap();
        let listed = store.list_keys("b", "renders/a/chunks/").await.unwrap();
        assert_eq!(
            listed,
            [
                "renders/a/chunks/00000.1.video.chunk",
                "renders/a/chunks/00001.1.video.chunk"
            ]
        );
        assert_eq!(store.list_keys("b", "renders/a").await.unwrap().len(), 4);
        assert!(
            store
                .list_keys("b", "renders/zz/")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .list_keys("nobucket", "renders/")
                .await
                .unwrap()
                .is_empty()
        );
        store.delete("b", &listed[0]).await.unwrap();
        store.delete("b", &listed[0]).await.unwrap();
        assert_eq!(
            store.list_keys("b", "renders/a/chunks/").await.unwrap(),
            [listed[1].clone()]
        );
    }
}
