//! Who may call the chunk endpoint.
//!
//! Two layers. The service's own HMAC secret signs every chunk call, so a caller who can reach
//! the service (a payload client with `run.invoker`, or anyone when the service is public)
//! still cannot start a chunk: only instances holding the secret can. On Cloud Run with IAM
//! invocation, calls also carry a Google-signed ID token whose audience is the service URL,
//! which Cloud Run's front end checks before the request reaches us.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};

use super::ConfigError;

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-cloudrun-render-chunk-signature";
pub const MIN_SECRET_BYTES: usize = 16;
/// How old a signed call may be. It bounds replay, so it is short, but it must outlast the
/// front end's request queue: a call is signed when sent, not when a worker takes it.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// Clocks of two instances may disagree a little.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The shared secret; never printed.
#[derive(Clone, PartialEq)]
pub struct ChunkAuth {
    secret: Vec<u8>,
}

impl fmt::Debug for ChunkAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkAuth(<secret>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the call is not signed ({SIGNATURE_HEADER} missing)")]
    Missing,
    #[error("the {SIGNATURE_HEADER} header is malformed")]
    Malformed,
    #[error("the signature does not match the body")]
    BadSignature,
    #[error("the signature is {0} s old; calls older than {max} s are refused (replay)", max = MAX_AGE.as_secs())]
    TooOld(u64),
    #[error("the signature is dated {0} s in the future")]
    FromTheFuture(u64),
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ChunkAuth {
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<ChunkAuth, ConfigError> {
        let secret = secret.into();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ConfigError::ShortSecret);
        }
        Ok(ChunkAuth { secret })
    }

    /// `None` when no secret is configured.
    pub fn from_secret(secret: Option<String>) -> Result<Option<ChunkAuth>, ConfigError> {
        secret
            .filter(|s| !s.is_empty())
            .map(|s| ChunkAuth::new(s.into_bytes()))
            .transpose()
    }

    /// From `CLOUDRUN_RENDER_CHUNK_SECRET`.
    pub fn from_env() -> Result<Option<ChunkAuth>, ConfigError> {
        ChunkAuth::from_secret(std::env::var(super::CHUNK_SECRET_ENV).ok())
    }

    fn mac(&self, timestamp: u64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The value of [`SIGNATURE_HEADER`] for `body`, sent at `now`.
    pub fn sign(&self, body: &[u8], now: SystemTime) -> String {
        let t = unix_seconds(now);
        let tag = self.mac(t, body).finalize().into_bytes();
        format!("t={t},v1={}", hex::encode(tag))
    }

    /// Checks a call received at `now`: signed with our secret over exactly these bytes, and
    /// recent.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let mut timestamp = None;
        let mut tag = None;
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => timestamp = v.parse::<u64>().ok(),
                Some(("v1", v)) => tag = hex::decode(v).ok(),
                _ => {}
            }
        }
        let (Some(t), Some(tag)) = (timestamp, tag) else {
            return Err(AuthError::Malformed);
        };
        // The signature first: an unsigned caller learns nothing, not even about the clock.
        self.mac(t, body)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)?;
        let now = unix_seconds(now);
        if t > now + MAX_CLOCK_SKEW.as_secs() {
            return Err(AuthError::FromTheFuture(t - now));
        }
        if now.saturating_sub(t) > MAX_AGE.as_secs() {
            return Err(AuthError::TooOld(now - t));
        }
        Ok(())
    }
}

/// Where a coordinator gets the ID token for its chunk calls.
#[async_trait::async_trait]
pub trait IdTokenSource: Send + Sync + fmt::Debug {
    /// `Ok(None)`: send the call without one.
    async fn id_token(&self) -> Result<Option<String>, String>;
}

/// Calls go without an ID token (a public service, or locally).
#[derive(Debug)]
pub struct NoIdToken;

#[async_trait::async_trait]
impl IdTokenSource for NoIdToken {
    async fn id_token(&self) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// Google-signed ID tokens for `audience` (the service URL) from Application Default
/// Credentials: on Cloud Run, the metadata server. `google-cloud-auth` caches them until
/// shortly before they expire.
#[derive(Debug)]
pub struct GoogleIdTokens {
    credentials: google_cloud_auth::credentials::idtoken::IDTokenCredentials,
}

impl GoogleIdTokens {
    pub fn new(audience: &str) -> Result<GoogleIdTokens, String> {
        let credentials = google_cloud_auth::credentials::idtoken::Builder::new(audience)
            .build()
            .map_err(|e| format!("no ID token credentials for {audience}: {e}"))?;
        Ok(GoogleIdTokens { credentials })
    }
}

#[async_trait::async_trait]
impl IdTokenSource for GoogleIdTokens {
    async fn id_token(&self) -> Result<Option<String>, String> {
        self.credentials
            .id_token()
            .await
            .map(Some)
            .map_err(|e| format!("could not get an ID token: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> ChunkAuth {
        ChunkAuth::new(b"a secret of some length".to_vec()).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_signed_body_verifies() {
        let a = auth();
        let h = a.sign(b"{\"chunk\":1}", at(1_000_000));
        assert!(h.starts_with("t=1000000,v1="));
        assert_eq!(a.verify(Some(&h), b"{\"chunk\":1}", at(1_000_010)), Ok(()));
    }

    #[test]
    fn missing_malformed_and_forged_signatures_are_refused() {
        let a = auth();
        let now = at(1_000_000);
        assert_eq!(a.verify(None, b"x", now), Err(AuthError::Missing));
        assert_eq!(
            a.verify(Some("v1=zz"), b"x", now),
            Err(AuthError::Malformed)
        );
        let h = a.sign(b"x", now);
        // Another body under the same signature.
        assert_eq!(a.verify(Some(&h), b"y", now), Err(AuthError::BadSignature));
        // Another secret.
        let other = ChunkAuth::new(b"another secret, as long".to_vec()).unwrap();
        assert_eq!(
            other.verify(Some(&h), b"x", now),
            Err(AuthError::BadSignature)
        );
        // The timestamp moved forward under the old tag.
        let moved = h.replace("t=1000000", "t=1000100");
        assert_eq!(
            a.verify(Some(&moved), b"x", at(1_000_100)),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn old_and_future_signatures_are_refused() {
        let a = auth();
        let h = a.sign(b"x", at(1_000_000));
        let limit = 1_000_000 + MAX_AGE.as_secs();
        assert_eq!(a.verify(Some(&h), b"x", at(limit)), Ok(()));
        assert_eq!(
            a.verify(Some(&h), b"x", at(limit + 1)),
            Err(AuthError::TooOld(MAX_AGE.as_secs() + 1))
        );
        let skew = MAX_CLOCK_SKEW.as_secs();
        assert_eq!(a.verify(Some(&h), b"x", at(1_000_000 - skew)), Ok(()));
        assert_eq!(
            a.verify(Some(&h), b"x", at(1_000_000 - skew - 1)),
            Err(AuthError::FromTheFuture(skew + 1))
        );
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert_eq!(
            ChunkAuth::new(b"short".to_vec()),
            Err(ConfigError::ShortSecret)
        );
        assert_eq!(ChunkAuth::from_secret(Some(String::new())), Ok(None));
        assert!(!format!("{:?}", auth()).contains("secret of"));
    }
}
