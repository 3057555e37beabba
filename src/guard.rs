//! What a render must never reach from inside our container: the page (through Chromium)
//! and our own fetches of its media (audio sources, OffthreadVideo).
//!
//! Pages run code we did not write. On Cloud Run the metadata server hands out the service
//! account's tokens, and our own port would let a page start renders from inside a render.

use std::net::IpAddr;

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
/// The service's own URL for fan-out (`fanout`): it is ourselves, so pages must not reach it.
pub const FANOUT_URL_ENV: &str = "CLOUDRUN_RENDER_FANOUT_URL";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageGuard {
    /// URLPattern strings (`*://host:port/*`), for Chromium.
    patterns: Vec<String>,
    /// `(host, port)`, port `None` for every port, for our own fetches.
    hosts: Vec<(String, Option<u16>)>,
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
        // The fan-out URL is ourselves too (locally the front end, on Cloud Run the service).
        if let Some(own) = std::env::var(FANOUT_URL_ENV)
            .ok()
            .and_then(|u| host_and_port(&u))
        {
            hosts.push(own);
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
        let hosts: Vec<(String, Option<u16>)> = hosts
            .into_iter()
            .map(|h| {
                let has_port = h.rsplit_once(':').is_some_and(|(_, p)| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(']')
                });
                if has_port {
                    let (host, port) = h.rsplit_once(':').expect("has a port");
                    (host.to_ascii_lowercase(), port.parse().ok())
                } else {
                    (h.to_ascii_lowercase(), None)
                }
            })
            .collect();
        let patterns = hosts
            .iter()
            .map(|(host, port)| {
                let port = port.map(|p| p.to_string()).unwrap_or_else(|| "*".into());
                format!("*://{}:{port}/*", escape_for_url_pattern(host))
            })
            .collect();
        PageGuard { patterns, hosts }
    }

    /// Refuses a URL our own process is about to fetch for a render, by name and by address.
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let port = url.port_or_known_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let blocked_by_name = self.hosts.iter().any(|(h, p)| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            (h == bare || (h == "localhost" && bare == "127.0.0.1")) && (p.is_none() || *p == port)
        });
        let blocked_ip = bare.parse::<IpAddr>().is_ok_and(is_forbidden_ip);
        if blocked_by_name || blocked_ip {
            return Err(format!("{url} is not reachable from a render"));
        }
        Ok(())
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Makes the metadata names unresolvable, a second layer under the URL patterns.
    pub fn resolver_rules() -> String {
        "--host-resolver-rules=MAP metadata.google.internal ~NOTFOUND, MAP metadata ~NOTFOUND"
            .to_string()
    }
}

/// Link-local addresses: the metadata server and its kin, whatever name led there.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
                || v6
                    == "fd00:ec2::254"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("valid")
        }
    }
}

/// `host:port` of an http(s) URL, the port spelled out.
fn host_and_port(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    Some(format!(
        "{}:{}",
        url.host_str()?,
        url.port_or_known_default()?
    ))
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

    #[test]
    fn the_fanout_url_becomes_a_host_and_port() {
        assert_eq!(
            host_and_port("http://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            host_and_port("https://render-abc-uc.a.run.app/").as_deref(),
            Some("render-abc-uc.a.run.app:443")
        );
        assert_eq!(host_and_port("not a url"), None);
    }

    #[test]
    fn our_own_fetches_are_checked_by_name_port_and_address() {
        let g = PageGuard::new(Some(8080));
        let check = |u: &str| g.check_url(&url::Url::parse(u).unwrap());
        assert!(check("http://169.254.169.254/computeMetadata/v1/").is_err());
        assert!(check("http://metadata.google.internal/x").is_err());
        assert!(
            check("http://169.254.1.2:99/").is_err(),
            "all of link-local"
        );
        assert!(check("http://[::ffff:169.254.169.254]/").is_err());
        assert!(check("http://127.0.0.1:8080/").is_err());
        assert!(check("http://localhost:8080/").is_err());
        assert!(check("http://127.0.0.1:8081/proxy").is_ok());
        assert!(check("https://example.com/a.mp3").is_ok());
    }
}
