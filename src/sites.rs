//! Sites: a bundle directory (what `remotion bundle` writes, `index.html` at its root) deployed
//! to `gs://<bucket>/sites/<name>/`, where a render's Chromium loads it from over HTTP.
//!
//! A deploy is a sync: it lists what the site already has, uploads only files whose CRC32C
//! or Content-Type differ, and deletes what the bundle no longer has. Uploads go through the
//! same resumable, checked, retried path as render outputs (`storage::gcs`). `index.html`
//! goes up after every other file, and stale files are deleted only after every upload
//! succeeded, so a page is never served that points at files not yet (or no longer) there.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use sha2::Digest;

use crate::options::Privacy;
use crate::storage::gcs::{GcsStore, Source};
use crate::storage::{ObjectOptions, StorageError};

/// Every site lives under this prefix, as the original's `sites create` puts them.
pub const SITES_PREFIX: &str = "sites/";

/// Uploads (and deletions) running at once. Each upload holds at most one chunk in memory.
const PARALLEL: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SitesError {
    #[error(
        "{0} is not a bundle directory: it has no index.html. Pass the directory `remotion bundle` writes (build/ by default)."
    )]
    NotABundle(String),
    #[error("Could not read the bundle: {0}")]
    Read(String),
    #[error(
        "\"{0}\" is not a valid site name: use letters, digits and - _ . ! * ' ( ), and not \".\" or \"..\""
    )]
    InvalidName(String),
    #[error("{0}")]
    Privacy(String),
    #[error("There is no site \"{name}\" in bucket {bucket}")]
    NoSuchSite { name: String, bucket: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The original's rule for site names: they become one path segment of the serve URL.
pub fn validate_site_name(name: &str) -> Result<(), SitesError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-!_.*'()".contains(c);
    if name.is_empty() || name == "." || name == ".." || !name.chars().all(allowed) {
        return Err(SitesError::InvalidName(name.to_string()));
    }
    Ok(())
}

/// `sites/<name>/`
pub fn site_prefix(name: &str) -> String {
    format!("{SITES_PREFIX}{name}/")
}

/// `https://storage.googleapis.com/<bucket>/sites/<name>/index.html`, or the emulator's.
pub fn serve_url(store: &GcsStore, bucket: &str, name: &str) -> String {
    format!(
        "{}/{bucket}/{}index.html",
        store.public_base(),
        site_prefix(name)
    )
}

/// One file of a bundle.
#[derive(Debug, Clone)]
pub struct BundleFile {
    pub path: PathBuf,
    /// The path inside the bundle, `/`-separated: the object key below the site's prefix.
    pub relative: String,
    pub size: u64,
    pub crc32c: u32,
    pub sha256: [u8; 32],
    pub content_type: String,
}

/// A bundle directory, read and fingerprinted.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    /// In `relative` order.
    pub files: Vec<BundleFile>,
}

impl Bundle {
    pub async fn read(dir: &Path) -> Result<Bundle, SitesError> {
        if !dir.join("index.html").is_file() {
            return Err(SitesError::NotABundle(dir.display().to_string()));
        }
        let root = dir.to_path_buf();
        let paths = tokio::task::spawn_blocking(move || walk(&root))
            .await
            .map_err(|e| SitesError::Read(e.to_string()))??;
        let files = futures::stream::iter(paths)
            .map(|(path, relative)| async move { fingerprint(path, relative).await })
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// A short hash of every path and content: the same bundle always gets the same name.
    pub fn content_name(&self) -> String {
        let mut hash = sha2::Sha256::new();
        for f in &self.files {
            hash.update(f.relative.as_bytes());
            hash.update([0]);
            hash.update(f.sha256);
        }
        hex::encode(hash.finalize())[..10].to_string()
    }

    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Every regular file under `root` (following symlinks), with its `/`-separated relative path.
fn walk(root: &Path) -> Result<Vec<(PathBuf, String)>, SitesError> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| SitesError::Read(format!("{}: {e}", dir.display())))?;
        for entry in entries {
            let path = entry
                .map_err(|e| SitesError::Read(format!("{}: {e}", dir.display())))?
                .path();
            let meta = std::fs::metadata(&path)
                .map_err(|e| SitesError::Read(format!("{}: {e}", path.display())))?;
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                let relative = path
                    .strip_prefix(root)
                    .expect("under the root")
                    .components()
                    .map(|c| c.as_os_str().to_str())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        SitesError::Read(format!("{} is not a UTF-8 name", path.display()))
                    })?
                    .join("/");
                out.push((path, relative));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Reads a file once for both its CRC32C (what GCS compares) and its SHA-256 (the site name).
async fn fingerprint(path: PathBuf, relative: String) -> Result<BundleFile, SitesError> {
    use tokio::io::AsyncReadExt;
    let read_error = |e: std::io::Error| SitesError::Read(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::File::open(&path).await.map_err(read_error)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut size, mut crc, mut sha) = (0u64, 0u32, sha2::Sha256::new());
    loop {
        let n = file.read(&mut buf).await.map_err(read_error)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        sha.update(&buf[..n]);
    }
    let content_type = content_type(&relative);
    Ok(BundleFile {
        path,
        relative,
        size,
        crc32c: crc,
        sha256: sha.finalize().into(),
        content_type,
    })
}

/// By extension; text gets `charset=utf-8`, which is what bundlers write, so a page without a
/// `<meta charset>` does not fall back to Latin-1.
pub fn content_type(name: &str) -> String {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            mime.essence_str(),
            "application/javascript" | "application/json" | "application/manifest+json"
        );
    if textual {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    }
}

/// What a deploy has to do, from the bundle and what the site already holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Indices into `bundle.files`.
    pub upload: Vec<usize>,
    pub unchanged: usize,
    /// Keys to delete.
    pub delete: Vec<String>,
}

pub fn plan(bundle: &Bundle, existing: &[crate::storage::gcs::ObjectInfo], prefix: &str) -> Plan {
    let existing: HashMap<&str, &crate::storage::gcs::ObjectInfo> =
        existing.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut upload = Vec::new();
    let mut unchanged = 0;
    for (i, f) in bundle.files.iter().enumerate() {
        let same = existing
            .get(format!("{prefix}{}", f.relative).as_str())
            .is_some_and(|o| {
                o.crc32c == Some(f.crc32c)
                    && o.size == f.size
                    && o.content_type.as_deref() == Some(f.content_type.as_str())
            });
        if same {
            unchanged += 1;
        } else {
            upload.push(i);
        }
    }
    let wanted: std::collections::HashSet<String> = bundle
        .files
        .iter()
        .map(|f| format!("{prefix}{}", f.relative))
        .collect();
    let mut delete: Vec<String> = existing
        .keys()
        .filter(|k| !wanted.contains(**k))
        .map(|k| k.to_string())
        .collect();
    delete.sort();
    Plan {
        upload,
        unchanged,
        delete,
    }
}

/// Where a deploy is, after each finished upload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeployProgress {
    pub files_done: usize,
    pub files_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deployed {
    pub name: String,
    pub serve_url: String,
    pub uploaded: usize,
    pub unchanged: usize,
    pub deleted: usize,
}

/// Syncs `bundle` to `gs://bucket/sites/<name>/`, readable by anyone unless `privacy` is
/// `no-acl` (for buckets with uniform access, made readable through IAM).
pub async fn deploy(
    store: &GcsStore,
    bundle: &Bundle,
    bucket: &str,
    name: &str,
    privacy: Privacy,
    on_progress: &(dyn Fn(DeployProgress) + Sync),
) -> Result<Deployed, SitesError> {
    validate_site_name(name)?;
    if privacy == Privacy::Private {
        return Err(SitesError::Privacy(
            "A site must be readable by the renderer's browser, which sends no credentials: use public or no-acl".into(),
        ));
    }
    let prefix = site_prefix(name);
    let existing = store.list(bucket, &prefix).await?;
    let plan = plan(bundle, &existing, &prefix);
    let mut progress = DeployProgress {
        files_done: 0,
        files_total: plan.upload.len(),
        bytes_done: 0,
        bytes_total: plan.upload.iter().map(|&i| bundle.files[i].size).sum(),
    };
    on_progress(progress);

    let upload = |i: usize| {
        let file = &bundle.files[i];
        let key = format!("{prefix}{}", file.relative);
        let options = ObjectOptions {
            content_type: file.content_type.clone(),
            content_disposition: None,
            privacy,
        };
        async move {
            store
                .put(bucket, &key, Source::File(&file.path), &options)
                .await
                .map(|_| file.size)
        }
    };
    // The page last: until it is replaced, renders load the old page with its old files.
    let (page, others): (Vec<usize>, Vec<usize>) = plan
        .upload
        .iter()
        .partition(|&&i| bundle.files[i].relative == "index.html");
    // A failed upload drops the others in flight: their sessions are abandoned and never
    // become objects, and nothing is deleted.
    let mut uploads =
        futures::stream::iter(others.into_iter().map(upload)).buffer_unordered(PARALLEL);
    while let Some(size) = uploads.try_next().await? {
        progress.files_done += 1;
        progress.bytes_done += size;
        on_progress(progress);
    }
    drop(uploads);
    for i in page {
        progress.bytes_done += upload(i).await?;
        progress.files_done += 1;
        on_progress(progress);
    }
    futures::stream::iter(plan.delete.iter())
        .map(|key| store.delete(bucket, key))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(Deployed {
        name: name.to_string(),
        serve_url: serve_url(store, bucket, name),
        uploaded: plan.upload.len(),
        unchanged: plan.unchanged,
        deleted: plan.delete.len(),
    })
}

/// A deployed site as `sites ls` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteSummary {
    pub name: String,
    pub files: usize,
    pub size: u64,
    pub last_modified: Option<time::OffsetDateTime>,
    pub serve_url: String,
}

/// Every site in `bucket`, by name.
pub async fn list(store: &GcsStore, bucket: &str) -> Result<Vec<SiteSummary>, SitesError> {
    let mut sites: BTreeMap<String, SiteSummary> = BTreeMap::new();
    for object in store.list(bucket, SITES_PREFIX).await? {
        let Some((name, _)) = object.key[SITES_PREFIX.len()..].split_once('/') else {
            continue;
        };
        let site = sites
            .entry(name.to_string())
            .or_insert_with(|| SiteSummary {
                name: name.to_string(),
                files: 0,
                size: 0,
                last_modified: None,
                serve_url: serve_url(store, bucket, name),
            });
        site.files += 1;
        site.size += object.size;
        site.last_modified = site.last_modified.max(object.updated);
    }
    Ok(sites.into_values().collect())
}

/// Deletes every object of the site; returns how many there were.
pub async fn remove(store: &GcsStore, bucket: &str, name: &str) -> Result<usize, SitesError> {
    validate_site_name(name)?;
    let objects = store.list(bucket, &site_prefix(name)).await?;
    if objects.is_empty() {
        return Err(SitesError::NoSuchSite {
            name: name.to_string(),
            bucket: bucket.to_string(),
        });
    }
    futures::stream::iter(objects.iter())
        .map(|o| store.delete(bucket, &o.key))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(objects.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::gcs::ObjectInfo;

    fn bundle_of(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Bundle) {
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        let bundle = rt.block_on(Bundle::read(dir.path())).unwrap();
        (dir, bundle)
    }

    fn stored(bundle: &Bundle, prefix: &str) -> Vec<ObjectInfo> {
        bundle
            .files
            .iter()
            .map(|f| ObjectInfo {
                key: format!("{prefix}{}", f.relative),
                size: f.size,
                crc32c: Some(f.crc32c),
                content_type: Some(f.content_type.clone()),
                updated: None,
                generation: 1,
            })
            .collect()
    }

    #[test]
    fn a_bundle_is_every_file_with_its_relative_key_and_type() {
        let (_dir, b) = bundle_of(&[
            ("index.html", b"<html></html>"),
            ("bundle.js", b"x()"),
            ("public/img/a.svg", b"<svg/>"),
        ]);
        let names: Vec<_> = b.files.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(names, ["bundle.js", "index.html", "public/img/a.svg"]);
        let types: Vec<_> = b.files.iter().map(|f| f.content_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "text/javascript; charset=utf-8",
                "text/html; charset=utf-8",
                "image/svg+xml"
            ]
        );
        assert_eq!(b.files[1].crc32c, crc32c::crc32c(b"<html></html>"));
        assert_eq!(b.total_size(), 13 + 3 + 6);
    }

    #[test]
    fn the_name_follows_the_content_and_nothing_else() {
        let files: &[(&str, &[u8])] = &[("index.html", b"<html></html>"), ("a.js", b"1")];
        let (_d1, a) = bundle_of(files);
        let (_d2, b) = bundle_of(files);
        assert_eq!(a.content_name(), b.content_name(), "same bundle, same name");
        assert_eq!(a.content_name().len(), 10);
        let (_d3, c) = bundle_of(&[("index.html", b"<html></html>"), ("a.js", b"2")]);
        assert_ne!(a.content_name(), c.content_name());
        let (_d4, d) = bundle_of(&[("index.html", b"<html></html>"), ("b.js", b"1")]);
        assert_ne!(a.content_name(), d.content_name(), "a rename is a change");
        validate_site_name(&a.content_name()).unwrap();
    }

    #[test]
    fn a_directory_without_index_html_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bundle.js"), b"").unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let e = rt.block_on(Bundle::read(dir.path())).unwrap_err();
        assert!(matches!(e, SitesError::NotABundle(_)), "{e}");
    }

    #[test]
    fn a_redeploy_uploads_changes_and_deletes_leftovers() {
        let prefix = "sites/s/";
        let (_d1, old) = bundle_of(&[
            ("index.html", b"<html>1</html>"),
            ("a.js", b"a"),
            ("b.js", b"b"),
            ("gone.js", b"g"),
        ]);
        let (_d2, new) = bundle_of(&[
            ("index.html", b"<html>2</html>"),
            ("a.js", b"a"),
            ("b.js", b"b2"),
            ("new.js", b"n"),
        ]);
        let p = plan(&new, &stored(&old, prefix), prefix);
        let uploads: Vec<_> = p.upload.iter().map(|&i| &new.files[i].relative).collect();
        assert_eq!(uploads, ["b.js", "index.html", "new.js"]);
        assert_eq!(p.unchanged, 1);
        assert_eq!(p.delete, ["sites/s/gone.js"]);

        let again = plan(&new, &stored(&new, prefix), prefix);
        assert!(again.upload.is_empty() && again.delete.is_empty());
        assert_eq!(again.unchanged, 4);

        // Same bytes under another Content-Type (an older deploy) are sent again.
        let mut wrong_type = stored(&new, prefix);
        wrong_type[0].content_type = Some("application/octet-stream".into());
        assert_eq!(plan(&new, &wrong_type, prefix).upload.len(), 1);
    }

    #[test]
    fn site_names_follow_the_original_rule() {
        for ok in ["my-site", "a.b_c", "x!*'()", "0a1b2c3d4e"] {
            validate_site_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä", "a?b"] {
            assert!(validate_site_name(bad).is_err(), "{bad:?}");
        }
    }
}
