//! One render spread over many instances of this service, with Cloud Run as the engine.
//!
//! The instance that receives the client's request becomes the *coordinator*: it plans once,
//! cuts the frames into chunks ([`plan`]), and sends each chunk as a signed request to the
//! service's own URL (`CLOUDRUN_RENDER_FANOUT_URL`), where Cloud Run's front end (with a
//! concurrency of one) hands it to another instance, the *worker*. [`scheduler`] runs the chunks concurrently
//! over a [`scheduler::ChunkRunner`] (the HTTP one is [`client`]), retrying vanished workers,
//! backing off when there is no capacity, duplicating stragglers and failing fast on
//! deterministic errors; [`progress`] folds every chunk's progress into one number that never
//! goes backwards.
//!
//! The chunk endpoint is internal: every call is HMAC-signed ([`auth`]) with
//! `CLOUDRUN_RENDER_CHUNK_SECRET` and carries the build's [`version`]; its wire shapes are in
//! [`protocol`] (the worker's HTTP handler is `api::chunk`).
//!
//! Must never: know the client's wire JSON, or render anything itself (chunks and the join
//! are `render`'s stages).

pub mod auth;
pub mod client;
pub mod plan;
pub mod progress;
pub mod protocol;
pub mod scheduler;
pub mod version;
pub mod worker;

use std::time::Duration;

use url::Url;

pub use auth::{ChunkAuth, IdTokenSource};

/// The service's own URL; set, it turns fan-out on. (Defined beside the guard, which keeps
/// pages off that URL too.)
pub use crate::guard::FANOUT_URL_ENV;
/// The HMAC secret every chunk call is signed with; without it the chunk endpoint refuses all.
pub const CHUNK_SECRET_ENV: &str = "CLOUDRUN_RENDER_CHUNK_SECRET";
/// The most chunks one render is cut into.
pub const MAX_CHUNKS_ENV: &str = "CLOUDRUN_RENDER_MAX_CHUNKS";
/// Retries of a chunk whose worker vanished (default 2).
pub const CHUNK_RETRIES_ENV: &str = "CLOUDRUN_RENDER_CHUNK_RETRIES";
/// A chunk running longer than this many median chunk times gets a duplicate attempt
/// (default 2; 0: never).
pub const STRAGGLER_FACTOR_ENV: &str = "CLOUDRUN_RENDER_STRAGGLER_FACTOR";
/// `auto` (default: on Cloud Run only), `on` or `off`: whether chunk calls carry a Google ID
/// token for the fan-out URL.
pub const ID_TOKEN_ENV: &str = "CLOUDRUN_RENDER_FANOUT_ID_TOKEN";

/// Lambda's ceiling, and ours when `CLOUDRUN_RENDER_MAX_CHUNKS` is unset.
pub const DEFAULT_MAX_CHUNKS: usize = 200;
pub const DEFAULT_RETRIES: u32 = 2;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{FANOUT_URL_ENV} is not an http(s) URL: {0}")]
    BadUrl(String),
    #[error("{FANOUT_URL_ENV} is set but {CHUNK_SECRET_ENV} is not: chunk calls must be signed")]
    NoSecret,
    #[error("{CHUNK_SECRET_ENV} must be at least {min} bytes long", min = auth::MIN_SECRET_BYTES)]
    ShortSecret,
    #[error("{name} must be {what}, got {value:?}")]
    BadNumber {
        name: &'static str,
        what: &'static str,
        value: String,
    },
    #[error("{ID_TOKEN_ENV} must be auto, on or off, got {0:?}")]
    BadIdTokenMode(String),
}

/// When chunk calls carry `Authorization: Bearer <ID token>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenMode {
    /// On Cloud Run (`K_SERVICE` is set): from the metadata server. Elsewhere: none.
    Auto,
    /// Always, from Application Default Credentials; a call fails if there is none.
    On,
    Off,
}

/// The coordinator's side, from the environment. `None`: fan-out is off.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// The service's own base URL.
    pub url: Url,
    pub auth: ChunkAuth,
    pub max_chunks: usize,
    pub retries: u32,
    /// See [`STRAGGLER_FACTOR_ENV`].
    pub straggler_factor: u32,
    pub id_token: IdTokenMode,
    /// Longest silence from a worker's stream before it counts as gone. A bound on a hang,
    /// not a performance guess: a chunk reports each frame, and one frame may wait out a
    /// delayRender timeout.
    pub idle_timeout: Duration,
}

impl FanoutConfig {
    pub fn from_env() -> Result<Option<FanoutConfig>, ConfigError> {
        FanoutConfig::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let Some(url) = var(FANOUT_URL_ENV) else {
            return Ok(None);
        };
        let url = Url::parse(&url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or(ConfigError::BadUrl(url))?;
        let auth = ChunkAuth::from_secret(var(CHUNK_SECRET_ENV))?.ok_or(ConfigError::NoSecret)?;
        let number =
            |name: &'static str, what: &'static str, min: u64, default: u64| match var(name) {
                None => Ok(default),
                Some(v) => v.trim().parse::<u64>().ok().filter(|n| *n >= min).ok_or(
                    ConfigError::BadNumber {
                        name,
                        what,
                        value: v,
                    },
                ),
            };
        let max_chunks = number(
            MAX_CHUNKS_ENV,
            "a whole number of at least 1",
            1,
            DEFAULT_MAX_CHUNKS as u64,
        )? as usize;
        let retries = number(
            CHUNK_RETRIES_ENV,
            "a whole number",
            0,
            DEFAULT_RETRIES as u64,
        )? as u32;
        let straggler_factor = number(
            STRAGGLER_FACTOR_ENV,
            "a whole number (0: never)",
            0,
            scheduler::Policy::default().straggler_factor as u64,
        )? as u32;
        let id_token = match var(ID_TOKEN_ENV).as_deref().map(str::trim) {
            None | Some("auto") => IdTokenMode::Auto,
            Some("on") => IdTokenMode::On,
            Some("off") => IdTokenMode::Off,
            Some(other) => return Err(ConfigError::BadIdTokenMode(other.to_string())),
        };
        Ok(Some(FanoutConfig {
            url,
            auth,
            max_chunks,
            retries,
            straggler_factor,
            id_token,
            idle_timeout: Duration::from_secs(600),
        }))
    }

    /// The scheduler's policy for this configuration.
    pub fn policy(&self) -> scheduler::Policy {
        scheduler::Policy {
            retries: self.retries,
            straggler_factor: self.straggler_factor,
            ..scheduler::Policy::default()
        }
    }

    /// Whether ID tokens are fetched, given whether we run on Cloud Run.
    pub fn wants_id_token(&self, on_cloud_run: bool) -> bool {
        match self.id_token {
            IdTokenMode::Auto => on_cloud_run,
            IdTokenMode::On => true,
            IdTokenMode::Off => false,
        }
    }
}

/// Cloud Run sets `K_SERVICE` in every container it runs.
pub fn on_cloud_run() -> bool {
    std::env::var_os("K_SERVICE").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<FanoutConfig>, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        FanoutConfig::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    const SECRET: &str = "0123456789abcdef0123";

    #[test]
    fn fanout_is_off_without_a_url() {
        assert!(config(&[(CHUNK_SECRET_ENV, SECRET)]).unwrap().is_none());
    }

    #[test]
    fn a_url_needs_a_secret_long_enough() {
        let url = (FANOUT_URL_ENV, "https://render-abc.a.run.app");
        assert_eq!(config(&[url]).unwrap_err(), ConfigError::NoSecret);
        assert_eq!(
            config(&[url, (CHUNK_SECRET_ENV, "short")]).unwrap_err(),
            ConfigError::ShortSecret
        );
        let c = config(&[url, (CHUNK_SECRET_ENV, SECRET)]).unwrap().unwrap();
        assert_eq!(c.max_chunks, DEFAULT_MAX_CHUNKS);
        assert_eq!(c.retries, DEFAULT_RETRIES);
        assert_eq!(c.policy().straggler_factor, 2);
        assert_eq!(c.id_token, IdTokenMode::Auto);
        assert!(c.wants_id_token(true) && !c.wants_id_token(false));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let base = [
            (FANOUT_URL_ENV, "http://127.0.0.1:8080"),
            (CHUNK_SECRET_ENV, SECRET),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut v = base.to_vec();
            v.push(extra);
            config(&v).unwrap_err().to_string()
        };
        assert!(with((MAX_CHUNKS_ENV, "0")).contains(MAX_CHUNKS_ENV));
        assert!(with((CHUNK_RETRIES_ENV, "-1")).contains(CHUNK_RETRIES_ENV));
        assert!(with((ID_TOKEN_ENV, "maybe")).contains(ID_TOKEN_ENV));
        assert!(with((STRAGGLER_FACTOR_ENV, "x")).contains(STRAGGLER_FACTOR_ENV));
        let mut off = base.to_vec();
        off.push((STRAGGLER_FACTOR_ENV, "0"));
        assert_eq!(config(&off).unwrap().unwrap().policy().straggler_factor, 0);
        assert!(
            config(&[(FANOUT_URL_ENV, "ftp://x"), (CHUNK_SECRET_ENV, SECRET)])
                .unwrap_err()
                .to_string()
                .contains(FANOUT_URL_ENV)
        );
    }
}
