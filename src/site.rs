//! Serve URLs: normalising remote ones and serving local bundle directories on loopback.
//!
//! Every render also has a loopback HTTP server whose port the page learns as
//! `remotion_proxyPort`; for a local bundle it serves the bundle, for a remote one it only
//! answers the OffthreadVideo `/proxy` path.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tower_http::services::ServeDir;

use crate::offthread::{self, FrameServer};

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(
        "The serve URL \"{0}\" is not an http(s) URL. Over HTTP only http:// and https:// serve URLs are accepted."
    )]
    NotHttp(String),
    #[error("{0} does not exist. Is this a valid path to a Webpack bundle? (no index.html in it)")]
    NotABundle(String),
    #[error("Could not start the local server for the bundle: {0}")]
    Server(String),
    #[error("The serve URL's host \"{host}\" is not allowed on this service (allowed: {allowed})")]
    HostNotAllowed { host: String, allowed: String },
}

impl SiteError {
    /// The JS-style name of the wire error.
    pub fn name(&self) -> &'static str {
        "Error"
    }
}

/// Comma-separated hosts a service accepts serve URLs from (`*.example.com` allowed). Unset:
/// any host.
pub const ALLOWED_HOSTS_ENV: &str = "CLOUDRUN_RENDER_ALLOWED_SERVE_HOSTS";

/// Refuses a remote serve URL whose host is not on the operator's allow-list.
fn check_allowed_host(url: &str) -> Result<(), SiteError> {
    let Ok(list) = std::env::var(ALLOWED_HOSTS_ENV) else {
        return Ok(());
    };
    let allowed: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    if allowed.is_empty() {
        return Ok(());
    }
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let matches = |pattern: &str| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == pattern,
        }
    };
    if allowed.iter().any(|p| matches(p)) {
        Ok(())
    } else {
        Err(SiteError::HostNotAllowed {
            host,
            allowed: allowed.join(", "),
        })
    }
}

/// Whether a serve URL may be a local directory (the CLI) or must be http(s) (the service,
/// which must never read its own disk on a caller's behalf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    RemoteOnly,
    RemoteOrLocal,
}

/// `http(s)://` is remote; the renderer also treats `www.` and S3 hosts that way.
pub fn is_remote(serve_url: &str) -> bool {
    let lower = serve_url.to_ascii_lowercase();
    lower.starts_with("http://")
        || lower.starts_with("https://")
        || lower.starts_with("www.")
        || lower.contains("amazonaws.com")
}

/// Cuts the query and points at `index.html`, as the renderer does.
pub fn normalize_remote(serve_url: &str) -> String {
    let mut url = serve_url
        .split_once('?')
        .map(|(u, _)| u)
        .unwrap_or(serve_url)
        .to_string();
    if url.to_ascii_lowercase().starts_with("www.") {
        url = format!("https://{url}");
    }
    if url.ends_with("index.html") {
        url
    } else if url.ends_with('/') {
        url + "index.html"
    } else {
        url + "/index.html"
    }
}

/// An opened serve URL: the page to load and the loopback port the page may call.
pub struct Site {
    pub url: String,
    pub proxy_port: u16,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Site {
    /// Opens `serve_url`; the loopback server also answers OffthreadVideo's `/proxy` from
    /// `frames`.
    pub async fn open(
        serve_url: &str,
        access: Access,
        frames: Arc<FrameServer>,
    ) -> Result<Site, SiteError> {
        if is_remote(serve_url) {
            let url = normalize_remote(serve_url);
            if access == Access::RemoteOnly {
                check_allowed_host(&url)?;
            }
            let (port, server) = serve(
                proxy_router(frames)
                    .fallback(|| async { (StatusCode::NOT_FOUND, "Server only supports /proxy") }),
            )
            .await?;
            return Ok(Site {
                url,
                proxy_port: port,
                server,
            });
        }
        let lower = serve_url.to_ascii_lowercase();
        if access == Access::RemoteOnly || lower.contains("://") {
            return Err(SiteError::NotHttp(serve_url.to_string()));
        }
        let dir = PathBuf::from(serve_url);
        if !dir.join("index.html").is_file() {
            return Err(SiteError::NotABundle(dir.display().to_string()));
        }
        let (port, server) =
            serve(proxy_router(frames).fallback_service(ServeDir::new(&dir))).await?;
        // The renderer keeps the name "localhost" on purpose.
        Ok(Site {
            url: format!("http://localhost:{port}/index.html"),
            proxy_port: port,
            server,
        })
    }
}

fn proxy_router(frames: Arc<FrameServer>) -> Router {
    Router::new()
        .route(
            "/proxy",
            get(offthread::proxy).options(offthread::preflight),
        )
        .with_state(frames)
}

async fn serve(router: Router) -> Result<(u16, tokio::task::JoinHandle<()>), SiteError> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| SiteError::Server(e.to_string()))?;
    let port = listener
        .local_addr()
        .map_err(|e| SiteError::Server(e.to_string()))?
        .port();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!("local bundle server stopped: {e}");
        }
    });
    Ok((port, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize_remote("https://x.com/sites/a?token=1"),
            "https://x.com/sites/a/index.html"
        );
        assert_eq!(
            normalize_remote("https://x.com/a/"),
            "https://x.com/a/index.html"
        );
        assert_eq!(
            normalize_remote("https://x.com/a/index.html?x"),
            "https://x.com/a/index.html"
        );
        assert_eq!(
            normalize_remote("www.x.com/a"),
            "https://www.x.com/a/index.html"
        );
        assert!(is_remote("HTTPS://x"));
        assert!(!is_remote("file:///etc"));
        assert!(!is_remote("fixtures/site"));
    }

    fn frames() -> Arc<FrameServer> {
        let fetcher = crate::fetch::Fetcher::new(crate::guard::PageGuard::new(None)).unwrap();
        Arc::new(FrameServer::new(Arc::new(fetcher), None, None))
    }

    #[tokio::test]
    async fn the_service_refuses_local_paths_and_other_schemes() {
        for url in [
            "file:///etc/passwd",
            "/etc",
            "fixtures/site",
            "ftp://x/y",
            "data:text/html,x",
        ] {
            let e = Site::open(url, Access::RemoteOnly, frames())
                .await
                .err()
                .unwrap();
            assert!(matches!(e, SiteError::NotHttp(_)), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn a_directory_without_index_html_is_not_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let e = Site::open(
            dir.path().to_str().unwrap(),
            Access::RemoteOrLocal,
            frames(),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(e, SiteError::NotABundle(_)));
    }
}
