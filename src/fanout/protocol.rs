//! The chunk endpoint's wire: what a coordinator sends, what a worker streams back.
//!
//! A worker answers with the framing of the client's stream (`api::stream`): one message per
//! HTTP chunk, progress lines ending in a newline, then one final message, either the chunk's
//! result or an error object. Refusals before the chunk starts are a non-200 status with the
//! error object as the body. The reader here does not rely on the framing: it takes
//! concatenated JSON values however the bytes are split.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::plan::ChunkSpan;

/// Internal, so it cannot collide with a client's path (the client POSTs to `/`).
pub const CHUNK_PATH: &str = "/_cloudrun-render/chunk";

/// Error names a worker refuses with. The coordinator maps them to what it does next.
pub mod names {
    /// The call is unsigned, forged or too old (401).
    pub const AUTH: &str = "ChunkAuthError";
    /// The worker has no chunk secret configured: the endpoint is off (403).
    pub const DISABLED: &str = "ChunkEndpointDisabled";
    /// The worker is another build (409).
    pub const VERSION_MISMATCH: &str = "VersionMismatch";
    /// The body is not a chunk request (400).
    pub const INVALID: &str = "InvalidChunkRequest";
    /// The worker is busy (429) or shutting down (503).
    pub const BUSY: &str = "TooManyRequests";
    pub const SHUTTING_DOWN: &str = "ServiceUnavailable";
}

/// Every object a chunked render writes beside its output ends in this, so that one bucket
/// lifecycle rule (`deploy/lifecycle.json`: prefix `renders/`, this suffix, a day old) can
/// delete what a crashed coordinator left; GCS rules match prefixes and suffixes only.
pub const CHUNK_OBJECT_SUFFIX: &str = ".chunk";

/// `renders/{renderId}/chunks/{index}.{attempt}.{what}.chunk`: the attempt is in the key, so
/// a retry or a straggler's duplicate never overwrites another call's object.
pub fn chunk_object_key(render_id: &str, index: usize, attempt: u32, what: &str) -> String {
    format!(
        "{}{index:05}.{attempt}.{what}{CHUNK_OBJECT_SUFFIX}",
        chunks_prefix(render_id)
    )
}

/// `renders/{renderId}/chunks/`: every object a render's fan-out writes is under it, so the
/// coordinator's cleanup is one listing.
pub fn chunks_prefix(render_id: &str) -> String {
    format!("renders/{render_id}/chunks/")
}

/// `renders/{renderId}/chunks/job.chunk`: a render's chunk job when it is too large to send
/// with every call.
pub fn job_object_key(render_id: &str) -> String {
    format!("{}job{CHUNK_OBJECT_SUFFIX}", chunks_prefix(render_id))
}

/// One chunk call. `J` is what the render stage needs beyond the frame span: the resolved
/// composition, the props (or their object key when large) and the render options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRequest<J> {
    /// The coordinator's build; a worker of another build refuses.
    pub version: String,
    pub render_id: String,
    pub chunk: ChunkSpan,
    /// Distinct for every call of one chunk (retries, duplicates of stragglers): the chunk's
    /// objects carry it in their keys, so two calls never write the same key.
    pub attempt: u32,
    pub job: J,
}

/// A chunk's failure as its worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkError {
    pub name: String,
    pub message: String,
    #[serde(default)]
    pub stack: String,
}

impl ChunkError {
    /// An error that has no stack of its own (not thrown by the page): its stack is
    /// `name: message`, as the client's error objects show such errors.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> ChunkError {
        let (name, message) = (name.into(), message.into());
        ChunkError {
            stack: format!("{name}: {message}"),
            name,
            message,
        }
    }
}

/// The error object on the wire: `{"type":"error","name","message","stack","retryable"}`.
/// `retryable` says the failure was the worker's environment (shutdown, a lost upload), not
/// the chunk's content; absent, it is false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    message: String,
    #[serde(default)]
    stack: String,
    #[serde(default)]
    retryable: bool,
}

/// `{"progress":{"rendered":r,"encoded":e}}\n`
pub fn progress_line(rendered: u64, encoded: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"progress\":{{\"rendered\":{rendered},\"encoded\":{encoded}}}}}\n"
    ))
}

/// `{"result":…}`: the last message of a chunk that succeeded.
pub fn result_message<R: Serialize>(result: &R) -> Bytes {
    let mut out = b"{\"result\":".to_vec();
    serde_json::to_writer(&mut out, result).expect("serializable");
    out.push(b'}');
    Bytes::from(out)
}

/// The error object: the last message of a chunk that failed, or the body of a refusal.
pub fn error_message(error: &ChunkError, retryable: bool) -> Bytes {
    let object = ErrorObject {
        kind: "error".into(),
        name: error.name.clone(),
        message: error.message.clone(),
        stack: error.stack.clone(),
        retryable,
    };
    Bytes::from(serde_json::to_vec(&object).expect("serializable"))
}

/// What a worker's stream or refusal said.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerMessage<R> {
    Progress { rendered: u64, encoded: u64 },
    Result(R),
    Error { error: ChunkError, retryable: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the worker sent something that is not JSON: {0}")]
    NotJson(String),
    #[error("the worker sent an unknown message: {0}")]
    Unknown(String),
    #[error("the worker sent more than {0} bytes in one message")]
    TooLarge(usize),
}

impl<R: DeserializeOwned> WorkerMessage<R> {
    pub fn from_value(value: Value) -> Result<WorkerMessage<R>, DecodeError> {
        let unknown = |v: &Value| DecodeError::Unknown(truncate(&v.to_string(), 200));
        if let Some(p) = value.get("progress") {
            let count = |k: &str| {
                p.get(k)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| unknown(&value))
            };
            return Ok(WorkerMessage::Progress {
                rendered: count("rendered")?,
                encoded: count("encoded")?,
            });
        }
        if value.get("type").and_then(Value::as_str) == Some("error") {
            let e: ErrorObject =
                serde_json::from_value(value.clone()).map_err(|_| unknown(&value))?;
            return Ok(WorkerMessage::Error {
                error: ChunkError {
                    name: e.name,
                    message: e.message,
                    stack: e.stack,
                },
                retryable: e.retryable,
            });
        }
        match value {
            Value::Object(mut o) if o.contains_key("result") => {
                let r = o.remove("result").expect("present");
                serde_json::from_value(r)
                    .map(WorkerMessage::Result)
                    .map_err(|e| DecodeError::Unknown(format!("a result of the wrong shape: {e}")))
            }
            other => Err(unknown(&other)),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Splits a byte stream into JSON values, whatever the reads: a value may span reads, and one
/// read may hold several.
#[derive(Debug)]
pub struct Decoder {
    buffer: Vec<u8>,
    max_message: usize,
}

impl Decoder {
    /// `max_message` bounds memory against a worker that never ends a message.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            buffer: Vec::new(),
            max_message,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
        self.buffer.extend_from_slice(bytes);
        let mut values = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
        let consumed = loop {
            let before = stream.byte_offset();
            match stream.next() {
                Some(Ok(v)) => values.push(v),
                None => break stream.byte_offset(),
                Some(Err(e)) if e.is_eof() => break before,
                Some(Err(e)) => return Err(DecodeError::NotJson(e.to_string())),
            }
        };
        self.buffer.drain(..consumed);
        if self.buffer.len() > self.max_message {
            return Err(DecodeError::TooLarge(self.max_message));
        }
        Ok(values)
    }

    /// Whether bytes of an unfinished message are left.
    pub fn has_partial(&self) -> bool {
        self.buffer.iter().any(|b| !b.is_ascii_whitespace())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let line = progress_line(3, 1);
        assert!(line.ends_with(b"\n"));
        let mut d = Decoder::new(1 << 20);
        let v = d.feed(&line).unwrap();
        assert_eq!(
            WorkerMessage::<Value>::from_value(v[0].clone()).unwrap(),
            WorkerMessage::Progress {
                rendered: 3,
                encoded: 1
            }
        );
        let r = d
            .feed(&result_message(&serde_json::json!({"key": "k"})))
            .unwrap();
        assert_eq!(
            WorkerMessage::<Value>::from_value(r[0].clone()).unwrap(),
            WorkerMessage::Result(serde_json::json!({"key": "k"}))
        );
        let mut e = ChunkError::new("Error", "boom");
        e.stack = "Error: boom\n at f".into();
        let parsed = d.feed(&error_message(&e, true)).unwrap();
        assert_eq!(
            WorkerMessage::<Value>::from_value(parsed[0].clone()).unwrap(),
            WorkerMessage::Error {
                error: e,
                retryable: true
            }
        );
        assert!(!d.has_partial());
    }

    #[test]
    fn the_decoder_takes_any_split() {
        let mut all = Vec::new();
        all.extend_from_slice(&progress_line(1, 0));
        all.extend_from_slice(&progress_line(2, 1));
        all.extend_from_slice(&result_message(&"done"));
        for cut in 0..all.len() {
            let mut d = Decoder::new(1 << 20);
            let mut got = d.feed(&all[..cut]).unwrap();
            got.extend(d.feed(&all[cut..]).unwrap());
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[2], serde_json::json!({"result": "done"}));
            assert!(!d.has_partial());
        }
        let mut d = Decoder::new(1 << 20);
        d.feed(b"{\"progress\":").unwrap();
        assert!(d.has_partial());
    }

    #[test]
    fn garbage_and_floods_are_errors() {
        assert!(matches!(
            Decoder::new(100).feed(b"<html>502</html>"),
            Err(DecodeError::NotJson(_))
        ));
        let mut d = Decoder::new(10);
        assert_eq!(
            d.feed(b"{\"progress\":{\"rendered\":1"),
            Err(DecodeError::TooLarge(10))
        );
        assert!(matches!(
            WorkerMessage::<Value>::from_value(serde_json::json!({"hello": 1})),
            Err(DecodeError::Unknown(_))
        ));
    }

    #[test]
    fn chunk_objects_live_under_the_render_and_carry_the_attempt() {
        let a = chunk_object_key("abc", 3, 1, "video");
        assert_eq!(a, "renders/abc/chunks/00003.1.video.chunk");
        assert_ne!(a, chunk_object_key("abc", 3, 2, "video"));
        assert!(a.starts_with("renders/") && a.ends_with(CHUNK_OBJECT_SUFFIX));
        assert!(a.starts_with(&chunks_prefix("abc")));
        let job = job_object_key("abc");
        assert!(job.starts_with(&chunks_prefix("abc")) && job.ends_with(CHUNK_OBJECT_SUFFIX));
        assert_ne!(chunks_prefix("abc"), chunks_prefix("ab"));
        assert!(!a.starts_with(&chunks_prefix("ab")));
    }

    #[test]
    fn requests_are_camel_case() {
        let r = ChunkRequest {
            version: "v".into(),
            render_id: "abc".into(),
            chunk: ChunkSpan {
                index: 1,
                start: 10,
                end: 20,
            },
            attempt: 2,
            job: serde_json::json!(null),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["renderId"], "abc");
        assert_eq!(v["chunk"]["start"], 10);
        assert_eq!(serde_json::from_value::<ChunkRequest<Value>>(v).unwrap(), r);
    }
}
