//! The ID token a private Cloud Run service wants from its callers: Google-signed, with the
//! service URL as its audience. Cloud Run checks it before the request reaches us; the
//! service itself never looks at it.
//!
//! Sources, first that works: Application Default Credentials from a file (a service account
//! key, impersonation), `gcloud auth print-identity-token` (a developer's own login), the
//! metadata server (on Google Cloud). Without any, the request goes without a token, which a
//! public service accepts.

use std::path::PathBuf;
use std::time::Duration;

use google_cloud_auth::credentials::idtoken;

/// How long one source may take before the next is tried.
const SOURCE_DEADLINE: Duration = Duration::from_secs(20);
/// The metadata server answers in milliseconds where it exists; elsewhere, do not wait.
const METADATA_DEADLINE: Duration = Duration::from_secs(3);

/// Only Cloud Run needs one: plain http or a loopback host is a local service.
pub fn wanted_for(url: &url::Url) -> bool {
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => true,
    };
    url.scheme() == "https" && !loopback
}

/// The audience Cloud Run expects: the service URL without a path.
pub fn audience(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

/// A token for `audience` from the first source that has one, or `None`, with what each
/// source said (for `--log verbose`).
pub async fn fetch(audience: &str) -> (Option<String>, Vec<String>) {
    let mut notes = Vec::new();
    if let Some(path) = adc_file() {
        match from_adc(audience).await {
            Ok(t) => return (Some(t), notes),
            Err(e) => notes.push(format!(
                "Application Default Credentials ({}): {e}",
                path.display()
            )),
        }
    }
    match from_gcloud(tokio::process::Command::new("gcloud")).await {
        Ok(t) => return (Some(t), notes),
        Err(e) => notes.push(format!("gcloud: {e}")),
    }
    if adc_file().is_none() {
        match from_metadata_server(audience).await {
            Ok(t) => return (Some(t), notes),
            Err(e) => notes.push(format!("metadata server: {e}")),
        }
    }
    (None, notes)
}

/// Where ADC would read a file from: `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's
/// well-known file.
fn adc_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let well_known = PathBuf::from(std::env::var_os("HOME")?)
        .join(".config/gcloud/application_default_credentials.json");
    well_known.is_file().then_some(well_known)
}

async fn from_adc(audience: &str) -> Result<String, String> {
    let credentials = idtoken::Builder::new(audience)
        .build()
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(SOURCE_DEADLINE, credentials.id_token())
        .await
        .map_err(|_| format!("no token within {SOURCE_DEADLINE:?}"))?
        .map_err(|e| e.to_string())
}

async fn from_metadata_server(audience: &str) -> Result<String, String> {
    let credentials = idtoken::mds::Builder::new(audience)
        .build()
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(METADATA_DEADLINE, credentials.id_token())
        .await
        .map_err(|_| "not reachable".to_string())?
        .map_err(|e| e.to_string())
}

/// `gcloud auth print-identity-token`: a user's token is accepted by Cloud Run whatever the
/// audience, which `gcloud` only lets service accounts choose.
async fn from_gcloud(mut gcloud: tokio::process::Command) -> Result<String, String> {
    let program = gcloud.as_std().get_program().to_string_lossy().into_owned();
    let run = gcloud
        .args(["auth", "print-identity-token", "--quiet"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SOURCE_DEADLINE, run)
        .await
        .map_err(|_| format!("no token within {SOURCE_DEADLINE:?}"))?
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{}: {}", out.status, stderr.trim()));
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // A JWT: three base64url parts. Anything else is a prompt or a warning, not a token.
    let parts: Vec<&str> = token.split('.').collect();
    let jwt = parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if jwt {
        Ok(token)
    } else {
        Err("it printed something that is not a token".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cloud_run_urls_get_a_token() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(wanted_for(&u("https://render-abc-uc.a.run.app")));
        assert!(wanted_for(&u("https://render.example.com/x")));
        assert!(!wanted_for(&u("http://127.0.0.1:8080")));
        assert!(!wanted_for(&u("https://127.0.0.1:8443")));
        assert!(!wanted_for(&u("https://localhost:8443")));
        assert!(!wanted_for(&u("https://[::1]:8443")));
        assert!(!wanted_for(&u("http://render.example.com")));
        assert_eq!(
            audience(&u("https://render-abc-uc.a.run.app/some/path?x=1")),
            "https://render-abc-uc.a.run.app"
        );
    }

    /// A stand-in for gcloud: `script` gets gcloud's arguments as $1, $2, ... (no file is
    /// written and executed, which races with forks of other test threads).
    fn fake_gcloud(script: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("sh");
        c.args(["-c", script, "gcloud"]);
        c
    }

    #[tokio::test]
    async fn gcloud_tokens_are_taken_only_when_they_look_like_one() {
        let ok = fake_gcloud(
            r#"[ "$1 $2" = "auth print-identity-token" ] && echo 'eyJhbGciOi.eyJhdWQiOi.c2lnbmF0dXJl'"#,
        );
        assert_eq!(
            from_gcloud(ok).await.unwrap(),
            "eyJhbGciOi.eyJhdWQiOi.c2lnbmF0dXJl"
        );
        let logged_out = fake_gcloud(
            "echo 'ERROR: (gcloud.auth.print-identity-token) You do not currently have an active account selected.' >&2; exit 1",
        );
        let e = from_gcloud(logged_out).await.unwrap_err();
        assert!(e.contains("active account"), "{e}");
        assert!(
            from_gcloud(fake_gcloud("echo 'Please log in.'"))
                .await
                .is_err()
        );
        let missing = tokio::process::Command::new("/nonexistent/gcloud");
        let e = from_gcloud(missing).await.unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
    }
}
