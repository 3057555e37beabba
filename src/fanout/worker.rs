//! The worker's side of a chunk call: which calls it takes, and what running one means.
//! The HTTP handler is `api::chunk`; this is what it decides with.

use std::time::SystemTime;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::auth::{AuthError, ChunkAuth};
use super::protocol::{ChunkError, ChunkRequest, names};
use crate::render::ProgressSender;

/// How a chunk failed on its worker. `retryable`: the worker's environment failed (it is
/// shutting down, an upload was lost), not the chunk, so another instance may succeed.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerFailure {
    pub error: ChunkError,
    pub retryable: bool,
}

/// Renders one verified chunk: reports progress on `progress`, stops when `cancel` fires (the
/// coordinator dropped the call, or SIGTERM), and returns the result the coordinator gets.
pub trait ChunkExecutor: Send + Sync + 'static {
    fn run(
        &self,
        request: ChunkRequest<Value>,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<Value, WorkerFailure>>;
}

/// Why a call was refused before it started.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the chunk endpoint is off: this instance has no {}",
        super::CHUNK_SECRET_ENV
    )]
    Disabled,
    #[error("refused: {0}")]
    Auth(AuthError),
    #[error("not a chunk request: {0}")]
    Invalid(String),
    #[error(
        "this worker is build {ours}, the call comes from build {theirs}: a deploy happened during the render; retry the render"
    )]
    Version { ours: String, theirs: String },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Disabled => 403,
            Refusal::Auth(_) => 401,
            Refusal::Invalid(_) => 400,
            Refusal::Version { .. } => 409,
        }
    }

    pub fn error(&self) -> ChunkError {
        let name = match self {
            Refusal::Disabled => names::DISABLED,
            Refusal::Auth(_) => names::AUTH,
            Refusal::Invalid(_) => names::INVALID,
            Refusal::Version { .. } => names::VERSION_MISMATCH,
        };
        ChunkError::new(name, self.to_string())
    }
}

/// Takes a call only if it is signed with our secret, recent, a chunk request, and from our
/// build, checked in that order: nothing about the body is read before the signature holds.
pub fn accept(
    auth: Option<&ChunkAuth>,
    version: &str,
    signature: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Result<ChunkRequest<Value>, Refusal> {
    let auth = auth.ok_or(Refusal::Disabled)?;
    auth.verify(signature, body, now).map_err(Refusal::Auth)?;
    let request: ChunkRequest<Value> =
        serde_json::from_slice(body).map_err(|e| Refusal::Invalid(e.to_string()))?;
    if request.version != version {
        return Err(Refusal::Version {
            ours: version.to_string(),
            theirs: request.version,
        });
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fanout::plan::ChunkSpan;

    fn auth() -> ChunkAuth {
        ChunkAuth::new(b"the cluster's secret".to_vec()).unwrap()
    }

    fn body(version: &str) -> Vec<u8> {
        serde_json::to_vec(&ChunkRequest {
            version: version.into(),
            render_id: "r".into(),
            chunk: ChunkSpan {
                index: 0,
                start: 0,
                end: 5,
            },
            attempt: 1,
            job: Value::Null,
        })
        .unwrap()
    }

    #[test]
    fn a_signed_call_of_our_build_is_taken() {
        let now = SystemTime::now();
        let b = body("v1");
        let sig = auth().sign(&b, now);
        let r = accept(Some(&auth()), "v1", Some(&sig), &b, now).unwrap();
        assert_eq!((r.render_id.as_str(), r.attempt), ("r", 1));
    }

    #[test]
    fn refusals_come_in_order_with_their_status() {
        let now = SystemTime::now();
        let b = body("v1");
        let sig = auth().sign(&b, now);
        let refused = |auth: Option<&ChunkAuth>, version: &str, sig: Option<&str>, body: &[u8]| {
            accept(auth, version, sig, body, now).unwrap_err()
        };
        assert_eq!(refused(None, "v1", Some(&sig), &b).status(), 403);
        assert_eq!(
            refused(Some(&auth()), "v1", None, &b),
            Refusal::Auth(AuthError::Missing)
        );
        let forged = ChunkAuth::new(b"somebody else's key".to_vec()).unwrap();
        assert_eq!(
            refused(Some(&forged), "v1", Some(&sig), &b),
            Refusal::Auth(AuthError::BadSignature)
        );
        let old = auth().sign(&b, now - Duration::from_secs(3600));
        let e = refused(Some(&auth()), "v1", Some(&old), &b);
        assert!(matches!(e, Refusal::Auth(AuthError::TooOld(_))));
        assert_eq!(e.status(), 401);
        // A signed body that is not a chunk request (a client's payload, say).
        let payload = br#"{"type":"media"}"#;
        let sig_payload = auth().sign(payload, now);
        assert_eq!(
            refused(Some(&auth()), "v1", Some(&sig_payload), payload).status(),
            400
        );
        let e = refused(Some(&auth()), "v2", Some(&sig), &b);
        assert_eq!(e.status(), 409);
        assert_eq!(e.error().name, names::VERSION_MISMATCH);
        assert!(e.error().message.contains("v1") && e.error().message.contains("v2"));
    }
}
