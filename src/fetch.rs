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
use futures::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::guard::{PageGuard, is_forbidden_ip};

/// How a name becomes addresses: the system's resolver, or a table in tests.
type Lookup =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

fn system_lookup() -> Lookup {
    Arc::new(|host| {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    })
}

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
struct GuardedResolver {
    lookup: Lookup,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = lookup(host.clone())
                .await?
                .into_iter()
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
    pub fn new(guard: PageGuard) -> Result<Fetcher, FetchError> {
        Fetcher::with_lookup(guard, system_lookup())
    }

    fn with_lookup(guard: PageGuard, lookup: Lookup) -> Result<Fetcher, FetchError> {
        let redirect_guard = guard.clone();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { lookup }))
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
        let url = loopback_literal(url);
        self.guard.check_url(&url)?;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| with_causes(&e))?;
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

/// An error and what caused it: reqwest's own message only names the URL, the reason (a
/// refused redirect, a name that resolves nowhere allowed) is in its sources.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
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
    fn no_names() -> Lookup {
        Arc::new(|host| {
            Box::pin(async move { Err(std::io::Error::other(format!("cannot resolve {host}"))) })
        })
    }

    #[tokio::test]
    async fn our_own_loopback_servers_are_reached_without_resolving_a_name() {
        let app =
            axum::Router::new().route("/public/tone.wav", axum::routing::get(|| async { "RIFF" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let f = Fetcher::with_lookup(PageGuard::new(None), no_names()).unwrap();
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

    /// A loopback server whose every path answers `RIFF`, except `/to-*` paths, which
    /// redirect to what follows `/to-` (URL-decoded).
    async fn origin() -> u16 {
        let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
            use axum::response::IntoResponse;
            match uri.path().strip_prefix("/to-") {
                Some(to) => {
                    let to = url::form_urlencoded::parse(format!("u={to}").as_bytes())
                        .next()
                        .unwrap()
                        .1
                        .into_owned();
                    axum::response::Redirect::temporary(&to).into_response()
                }
                None => "RIFF".into_response(),
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    /// A DNS that knows a few made-up names.
    fn table(entries: &'static [(&'static str, &'static [&'static str])]) -> Lookup {
        Arc::new(move |host| {
            Box::pin(async move {
                let (_, ips) = entries
                    .iter()
                    .find(|(name, _)| *name == host)
                    .ok_or_else(|| std::io::Error::other(format!("no such name {host}")))?;
                Ok(ips
                    .iter()
                    .map(|ip| SocketAddr::new(ip.parse().unwrap(), 0))
                    .collect())
            })
        })
    }

    #[tokio::test]
    async fn a_name_is_only_followed_to_addresses_a_render_may_reach() {
        let port = origin().await;
        let dns = table(&[
            ("metadata-alias.test", &["169.254.169.254"]),
            ("v6-link-local.test", &["fe80::1"]),
            ("both.test", &["169.254.169.254", "127.0.0.1"]),
            ("fine.test", &["127.0.0.1"]),
        ]);
        let f = Fetcher::with_lookup(PageGuard::new(None), dns).unwrap();
        for name in ["metadata-alias.test", "v6-link-local.test"] {
            let e = f
                .get(&format!("http://{name}:{port}/a.wav"))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{name} resolves to no address a render may reach")),
                "{e}"
            );
        }
        // Of a name with both kinds, only the reachable address is used.
        let p = f
            .get(&format!("http://both.test:{port}/a.wav"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"RIFF");
        let p = f
            .get(&format!("http://fine.test:{port}/a.wav"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"RIFF");
    }

    #[tokio::test]
    async fn a_redirect_is_checked_like_the_first_url() {
        let port = origin().await;
        let service_port = 8080;
        let f = Fetcher::new(PageGuard::new(Some(service_port))).unwrap();
        let via = |to: &str| {
            let to: String = url::form_urlencoded::byte_serialize(to.as_bytes()).collect();
            format!("http://127.0.0.1:{port}/to-{to}")
        };
        for blocked in [
            "http://169.254.169.254/computeMetadata/v1/token".to_string(),
            format!("http://localhost:{service_port}/"),
        ] {
            let e = f.get(&via(&blocked)).await.unwrap_err().to_string();
            assert!(
                e.contains(&format!("{blocked} is not reachable from a render")),
                "{e}"
            );
        }
        // The control: a redirect to where a render may go is followed.
        let p = f
            .get(&via(&format!("http://127.0.0.1:{port}/a.wav")))
            .await
            .unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"RIFF");
    }
}
