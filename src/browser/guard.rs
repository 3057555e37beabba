//! What a page must never reach from inside our container.
//!
//! Pages run code we did not write. On Cloud Run the metadata server hands out the service
//! account's tokens, and our own port would let a page start renders from inside a render.

use chromiumoxide::cdp::browser_protocol::network::{BlockPattern, SetBlockedUrLsParams};

/// Hosts that are always blocked: the GCE/Cloud Run metadata server under its names and IPs.
const METADATA_HOSTS: &[&str] = &[
    "169.254.169.254",
    "[::ffff:a9fe:a9fe]",
    "[fd00:ec2::254]",
    "metadata.google.internal",
    "metadata",
];

/// Extra hosts (`host` or `host:port`) an operator wants blocked, comma-separated.
pub const BLOCKED_HOSTS_ENV: &str = "CLOUDRUN_RENDER_BLOCKED_HOSTS";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageGuard {
    /// URLPattern strings (`*://host:port/*`).
    patterns: Vec<String>,
}

impl PageGuard {
    /// The metadata server always; our own HTTP port on every loopback name when we serve;
    /// and whatever `CLOUDRUN_RENDER_BLOCKED_HOSTS` adds.
    pub fn new(service_port: Option<u16>) -> PageGuard {
        let mut hosts: Vec<String> = METADATA_HOSTS.iter().map(|h| h.to_string()).collect();
        if let Some(port) = service_port {
            for loopback in ["127.0.0.1", "localhost", "[::1]", "0.0.0.0"] {
                hosts.push(format!("{loopback}:{port}"));
            }
        }
        if let Ok(extra) = std::env::var(BLOCKED_HOSTS_ENV) {
            hosts.extend(
                extra
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string),
            );
        }
        let patterns = hosts
            .into_iter()
            .map(|h| {
                let has_port = h.rsplit_once(':').is_some_and(|(_, p)| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(']')
                });
                let (host, port) = if has_port {
                    let (host, port) = h.rsplit_once(':').expect("has a port");
                    (host.to_string(), port.to_string())
                } else {
                    (h.clone(), "*".to_string())
                };
                format!("*://{}:{port}/*", escape_for_url_pattern(&host))
            })
            .collect();
        PageGuard { patterns }
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub(super) fn blocking_params(&self) -> SetBlockedUrLsParams {
        SetBlockedUrLsParams {
            url_patterns: Some(
                self.patterns
                    .iter()
                    .map(|p| BlockPattern::new(p.clone(), true))
                    .collect(),
            ),
        }
    }

    /// Makes the metadata names unresolvable, a second layer under the URL patterns.
    pub(super) fn resolver_rules() -> String {
        "--host-resolver-rules=MAP metadata.google.internal ~NOTFOUND, MAP metadata ~NOTFOUND"
            .to_string()
    }
}

/// URLPattern gives `[ ] : * ? + ( ) { } \\` meanings of their own; IPv6 hosts need them literal.
fn escape_for_url_pattern(host: &str) -> String {
    let mut out = String::with_capacity(host.len());
    for c in host.chars() {
        if "[]:*?+(){}\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_the_metadata_server_and_our_port() {
        let g = PageGuard::new(Some(8080));
        for want in [
            "*://169.254.169.254:*/*",
            "*://metadata.google.internal:*/*",
            r"*://\[\:\:ffff\:a9fe\:a9fe\]:*/*",
            "*://127.0.0.1:8080/*",
            "*://localhost:8080/*",
            r"*://\[\:\:1\]:8080/*",
        ] {
            assert!(g.patterns().iter().any(|p| p == want), "missing {want}");
        }
        assert!(
            !PageGuard::new(None)
                .patterns()
                .iter()
                .any(|p| p.contains("8080"))
        );
    }
}
