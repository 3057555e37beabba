//! Fetching the media a page refers to: http(s) URLs and `data:` URLs, each once per render,
//! into a temporary directory that goes away with the render. The audio mix, OffthreadVideo's
//! frame server and stills' pages all read through one fetcher per render.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::guard::{PageGuard, is_forbidden_ip};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("Error while downloading {src}: {reason}")]
    Download { src: String, reason: String },
    #[error("Cannot prepare the media downloads: {0}")]
    Setup(String),
}

impl FetchError {
    /// The JS-style name of the wire error.
    pub fn name(&self) -> &'static str {
        "Error"
    }
}

/// Resolves names, but never to a link-local address (the metadata server), whatever the
/// DNS says: a name pointing there is the classic way around a URL check.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_forbidden_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address a render may reach").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Downloads each source once per render.
pub struct Fetcher {
    client: reqwest::Client,
    guard: PageGuard,
    dir: tempfile::TempDir,
    done: Mutex<HashMap<String, Arc<Mutex<Option<PathBuf>>>>>,
    downloads: AtomicUsize,
}

impl Fetcher {
    pub fn new(guard: PageGuard) -> Result<Fetcher, FetchError> {
        let redirect_guard = guard.clone();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver))
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(600))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 10 {
                    attempt.error("too many redirects")
                } else if let Err(e) = redirect_guard.check_url(attempt.url()) {
                    attempt.error(e)
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| FetchError::Setup(format!("cannot build an HTTP client: {e}")))?;
        let dir = tempfile::Builder::new()
            .prefix("cloudrun-render-media-")
            .tempdir()
            .map_err(|e| FetchError::Setup(format!("cannot create a temporary directory: {e}")))?;
        Ok(Fetcher {
            client,
            guard,
            dir,
            done: Mutex::new(HashMap::new()),
            downloads: AtomicUsize::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The local path of `src`, downloading it the first time it is asked for. Concurrent
    /// callers of the same source wait for one download.
    pub async fn get(&self, src: &str) -> Result<PathBuf, FetchError> {
        let slot = self
            .done
            .lock()
            .await
            .entry(src.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(None)))
            .clone();
        let mut path = slot.lock().await;
        if let Some(p) = path.as_ref() {
            return Ok(p.clone());
        }
        let index = self.downloads.fetch_add(1, Ordering::Relaxed);
        let target = self.dir.path().join(format!("source-{index}"));
        self.download(src, &target)
            .await
            .map_err(|reason| FetchError::Download {
                src: shorten(src),
                reason,
            })?;
        *path = Some(target.clone());
        Ok(target)
    }

    async fn download(&self, src: &str, target: &Path) -> Result<(), String> {
        if src.starts_with("data:") {
            let url = data_url::DataUrl::process(src).map_err(|e| format!("{e:?}"))?;
            let (bytes, _) = url.decode_to_vec().map_err(|e| format!("{e:?}"))?;
            return tokio::fs::write(target, bytes)
                .await
                .map_err(|e| e.to_string());
        }
        let url = url::Url::parse(src).map_err(|e| e.to_string())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("the scheme {} is not supported", url.scheme()));
        }
        self.guard.check_url(&url)?;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        let mut file = tokio::fs::File::create(target)
            .await
            .map_err(|e| e.to_string())?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            file.write_all(&chunk.map_err(|e| e.to_string())?)
                .await
                .map_err(|e| e.to_string())?;
        }
        file.flush().await.map_err(|e| e.to_string())
    }
}

/// Long `data:` URLs make unreadable errors.
fn shorten(src: &str) -> String {
    if src.len() > 120 {
        format!(
            "{}…",
            &src[..src
                .char_indices()
                .nth(100)
                .map(|(i, _)| i)
                .unwrap_or(src.len())]
        )
    } else {
        src.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn data_urls_and_refused_hosts() {
        let f = Fetcher::new(PageGuard::new(Some(8080))).unwrap();
        let p = f.get("data:audio/wav;base64,UklGRg==").await.unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"RIFF");
        assert_eq!(
            f.get("data:audio/wav;base64,UklGRg==").await.unwrap(),
            p,
            "fetched once"
        );
        let e = f
            .get("http://169.254.169.254/computeMetadata/v1/token")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not reachable"), "{e}");
        let e = f.get("http://127.0.0.1:8080/").await.unwrap_err();
        assert!(e.to_string().contains("not reachable"), "{e}");
        let e = f.get("file:///etc/passwd").await.unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
    }
}
