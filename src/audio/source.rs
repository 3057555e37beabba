//! Fetching the media a page refers to: http(s) URLs and `data:` URLs, each once per render,
//! into a temporary directory that goes away with the render.

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

use super::AudioError;
use crate::guard::{PageGuard, is_forbidden_ip};

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

/// `localhost` as `127.0.0.1`. The page knows our loopback servers (the local bundle,
/// `/proxy`) as `http://localhost:PORT`, a name Chromium resolves by itself; our own fetches
/// of those URLs must not depend on `/etc/hosts`, which a minimal root filesystem lacks.
pub fn loopback_literal(mut url: url::Url) -> url::Url {
    if url.host_str() == Some("localhost") {
        url.set_host(Some("127.0.0.1"))
            .expect("an http(s) URL takes an IP host");
    }
    url
}

impl Fetcher {
    pub fn new(guard: PageGuard) -> Result<Fetcher, AudioError> {
        Fetcher::with_resolver(guard, Arc::new(GuardedResolver))
    }

    fn with_resolver(guard: PageGuard, resolver: Arc<dyn Resolve>) -> Result<Fetcher, AudioError> {
        let redirect_guard = guard.clone();
        let client = reqwest::Client::builder()
            .dns_resolver(resolver)
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
            .map_err(|e| AudioError::Fetch(format!("cannot build an HTTP client: {e}")))?;
        let dir = tempfile::Builder::new()
            .prefix("cloudrun-render-media-")
            .tempdir()
            .map_err(|e| AudioError::Fetch(format!("cannot create a temporary directory: {e}")))?;
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
    pub async fn get(&self, src: &str) -> Result<PathBuf, AudioError> {
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
        self.download(src, &target).await.map_err(|e| {
            AudioError::Fetch(format!("Error while downloading {}: {e}", shorten(src)))
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
        let url = loopback_literal(url);
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

    #[test]
    fn localhost_is_fetched_as_127_0_0_1() {
        let u = |s: &str| loopback_literal(url::Url::parse(s).unwrap()).to_string();
        assert_eq!(
            u("http://localhost:3000/public/tone.wav?x=1"),
            "http://127.0.0.1:3000/public/tone.wav?x=1"
        );
        assert_eq!(u("http://LOCALHOST:3000/a"), "http://127.0.0.1:3000/a");
        assert_eq!(u("https://localhost/a"), "https://127.0.0.1/a");
        assert_eq!(u("http://example.com/a"), "http://example.com/a");
        assert_eq!(
            u("http://localhost.example.com/a"),
            "http://localhost.example.com/a"
        );
    }

    /// Resolves nothing: a process without `/etc/hosts` (or with no `localhost` in it).
    struct NoNames;

    impl Resolve for NoNames {
        fn resolve(&self, name: Name) -> Resolving {
            let name = name.as_str().to_string();
            Box::pin(async move { Err(format!("cannot resolve {name}").into()) })
        }
    }

    #[tokio::test]
    async fn our_own_loopback_servers_are_reached_without_resolving_a_name() {
        let app =
            axum::Router::new().route("/public/tone.wav", axum::routing::get(|| async { "RIFF" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let f = Fetcher::with_resolver(PageGuard::new(None), Arc::new(NoNames)).unwrap();
        let path = f
            .get(&format!("http://localhost:{port}/public/tone.wav"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"RIFF");
        // Other names still go through the resolver.
        let e = f
            .get(&format!("http://example.invalid:{port}/"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("example.invalid"), "{e}");
    }
}
