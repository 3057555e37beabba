//! `renderStatusWebhook`: progress calls as the original service makes them, plus a final call
//! on success and on error, optionally signed.
//!
//! Calls are made one after the other from their own task, so they arrive in order and a
//! slow receiver only makes us skip progress values (the latest one is sent next), never
//! slows the render. Every call has a deadline; failures are logged and otherwise ignored.

use std::sync::OnceLock;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::wire::{ErrorBody, SuccessResponse};
use crate::options::WebhookOptions;
use crate::render::RenderProgress;

/// When set, every call carries [`SIGNATURE_HEADER`].
pub const SECRET_ENV: &str = "CLOUDRUN_RENDER_WEBHOOK_SECRET";
/// `sha512=<hex HMAC-SHA512 of the request body with the secret>`, as Remotion Lambda signs
/// its webhooks, so receivers written for Lambda can check it the same way.
pub const SIGNATURE_HEADER: &str = "X-Remotion-Signature";
/// One call, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How the render ended, as the final call reports it.
pub enum Outcome {
    Success(SuccessResponse),
    Error(ErrorBody),
}

/// The HTTP client and the signing secret, shared by every render of the process.
pub struct Sender {
    client: reqwest::Client,
    secret: Option<Vec<u8>>,
}

impl Sender {
    pub fn new(secret: Option<Vec<u8>>, timeout: Duration) -> Sender {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("a reqwest client with rustls");
        Sender { client, secret }
    }

    /// The process's sender, its secret read from [`SECRET_ENV`] once.
    pub fn global() -> &'static Sender {
        static SENDER: OnceLock<Sender> = OnceLock::new();
        SENDER.get_or_init(|| {
            let secret = std::env::var(SECRET_ENV)
                .ok()
                .filter(|s| !s.is_empty())
                .map(String::into_bytes);
            Sender::new(secret, CALL_TIMEOUT)
        })
    }

    /// POSTs `body`. The error says why the receiver did not take it.
    async fn call(&self, options: &WebhookOptions, body: &Value) -> Result<(), String> {
        let bytes = serde_json::to_vec(body).expect("serializable");
        let mut headers = HeaderMap::new();
        for (k, v) in &options.headers {
            match (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                (Ok(k), Ok(v)) => {
                    headers.insert(k, v);
                }
                _ => tracing::warn!(header = k, "skipping an invalid webhook header"),
            }
        }
        // Ours go last, so a caller's header of the same name cannot replace them.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secret) = &self.secret {
            let value = HeaderValue::try_from(signature(secret, &bytes)).expect("ascii");
            headers.insert(SIGNATURE_HEADER, value);
        }
        let sent = self
            .client
            .post(&options.url)
            .headers(headers)
            .body(bytes)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("it answered with {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `sha512=` and the hex HMAC-SHA512 of `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha512={}", hex::encode(mac.finalize().into_bytes()))
}

/// The original's rule: call when the value reached 1, while the last value sent is still 0,
/// or once it moved by `interval` since the last call. The tolerance makes 0.3 − 0.2 count as
/// 0.1, which JavaScript's arithmetic does not.
pub fn due(progress: f64, last_sent: f64, interval: f64) -> bool {
    progress == 1.0 || last_sent == 0.0 || progress - last_sent >= interval - 1e-9
}

/// A JSON number as `JSON.stringify` writes it: `1`, not `1.0`.
fn js_number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

/// `{...data, progress, renderId, renderedFrames, encodedFrames}`. Data that is not an object
/// adds no keys; ours replace the caller's of the same name.
fn progress_body(
    options: &WebhookOptions,
    render_id: &str,
    p: &RenderProgress,
) -> Map<String, Value> {
    let mut body = match &options.data {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    body.insert("progress".into(), js_number(p.fraction()));
    body.insert("renderId".into(), render_id.into());
    body.insert("renderedFrames".into(), p.rendered.into());
    body.insert("encodedFrames".into(), p.encoded.into());
    body
}

/// The progress body plus `type` and the `response` or `error` object the client got.
fn final_body(
    options: &WebhookOptions,
    render_id: &str,
    p: &RenderProgress,
    outcome: &Outcome,
) -> Map<String, Value> {
    let mut body = progress_body(options, render_id, p);
    let (kind, key, value) = match outcome {
        Outcome::Success(r) => ("success", "response", serde_json::to_value(r)),
        Outcome::Error(e) => ("error", "error", serde_json::to_value(e)),
    };
    body.insert("type".into(), kind.into());
    body.insert(key.into(), value.expect("serializable"));
    body
}

/// The webhook of one render: follows its progress until told how it ended.
pub struct RenderWebhook {
    outcome: oneshot::Sender<Outcome>,
    task: JoinHandle<()>,
}

impl RenderWebhook {
    pub fn spawn(
        sender: &'static Sender,
        options: WebhookOptions,
        render_id: String,
        progress: watch::Receiver<RenderProgress>,
    ) -> RenderWebhook {
        let (outcome, outcome_rx) = oneshot::channel();
        let task = tokio::spawn(
            follow(sender, options, render_id, progress, outcome_rx)
                .instrument(tracing::Span::current()),
        );
        RenderWebhook { outcome, task }
    }

    /// Makes the final call and waits for it: at most one progress call and the final one,
    /// each with its deadline. The final call's outcome is logged either way.
    pub async fn finish(self, outcome: Outcome) {
        let _ = self.outcome.send(outcome);
        if let Err(e) = self.task.await {
            tracing::error!("the webhook task failed: {e}");
        }
    }
}

async fn follow(
    sender: &'static Sender,
    options: WebhookOptions,
    render_id: String,
    mut progress: watch::Receiver<RenderProgress>,
    outcome: oneshot::Receiver<Outcome>,
) {
    let mut outcome = std::pin::pin!(outcome);
    let mut last_value: Option<f64> = None;
    let mut last_sent = 0.0;
    let mut open = true;
    loop {
        // Progress first, so that a value the render published before it ended (the 1 before
        // the upload) is called before the final one.
        let ended = tokio::select! {
            biased;
            changed = progress.changed(), if open => {
                open = changed.is_ok();
                None
            }
            ended = &mut outcome => Some(ended),
        };
        let current = *progress.borrow_and_update();
        let value = current.fraction();
        if last_value != Some(value) && current.total > 0 {
            last_value = Some(value);
            if due(value, last_sent, options.progress_interval) {
                last_sent = value;
                let body = Value::Object(progress_body(&options, &render_id, &current));
                if let Err(e) = sender.call(&options, &body).await {
                    tracing::warn!(url = options.url, "a progress webhook call failed: {e}");
                }
            }
        }
        match ended {
            None => continue,
            Some(Ok(outcome)) => {
                let body = final_body(&options, &render_id, &current, &outcome);
                let started = std::time::Instant::now();
                let called = sender.call(&options, &Value::Object(body)).await;
                let ms = started.elapsed().as_millis() as u64;
                match called {
                    Ok(()) => tracing::info!(url = options.url, ms, "final webhook call answered"),
                    Err(e) => {
                        tracing::warn!(url = options.url, ms, "final webhook call failed: {e}")
                    }
                }
                return;
            }
            // The render's task went away without an outcome: nothing more to tell.
            Some(Err(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    fn options(url: &str) -> WebhookOptions {
        WebhookOptions {
            url: url.into(),
            headers: [("X-Custom".to_string(), "yes".to_string())].into(),
            data: json!({"customer": 7, "progress": "mine", "renderId": "mine"}),
            progress_interval: 0.25,
        }
    }

    #[test]
    fn the_firing_rule() {
        assert!(due(0.01, 0.0, 0.5));
        assert!(due(0.3, 0.2, 0.1));
        assert!(!due(0.29, 0.2, 0.1));
        assert!(due(1.0, 0.95, 0.1));
        assert!(!due(0.5, 0.3, 0.25));
    }

    #[test]
    fn bodies_merge_data_under_ours() {
        let p = RenderProgress {
            rendered: 10,
            encoded: 10,
            total: 10,
            overall: None,
        };
        let body = Value::Object(progress_body(&options("x"), "abc", &p));
        assert_eq!(
            body,
            json!({"customer": 7, "progress": 1, "renderId": "abc", "renderedFrames": 10, "encodedFrames": 10})
        );
        assert_eq!(
            serde_json::to_string(&body["progress"]).unwrap(),
            "1",
            "JSON.stringify writes 1, not 1.0"
        );
        let mut o = options("x");
        o.data = json!("a string");
        let body = progress_body(&o, "abc", &p);
        assert_eq!(body.len(), 4);

        let e = ErrorBody::new("Error", "boom", "Error: boom");
        let body = Value::Object(final_body(&options("x"), "abc", &p, &Outcome::Error(e)));
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["message"], "boom");
        assert_eq!(body["customer"], 7);
    }

    #[test]
    fn signature_is_hmac_sha512_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha512=164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    type Calls = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

    /// A receiver on loopback that records each call, then answers it once the test adds a
    /// permit to the returned semaphore (never, if it adds none).
    async fn receiver() -> (String, Calls, Arc<tokio::sync::Semaphore>) {
        let calls: Calls = Arc::default();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (c, r) = (calls.clone(), release.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: bytes::Bytes| {
            let (c, r) = (c.clone(), r.clone());
            async move {
                c.lock().unwrap().push((headers, body.to_vec()));
                r.acquire().await.unwrap().forget();
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, calls, release)
    }

    fn bodies(calls: &Calls) -> Vec<Value> {
        calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }

    async fn wait_for_calls(calls: &Calls, n: usize) {
        tokio::time::timeout(Duration::from_secs(60), async {
            while calls.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no call {n}: {:?}", bodies(calls)));
    }

    #[tokio::test]
    async fn calls_follow_progress_by_the_rule_then_the_outcome_signed() {
        let (url, calls, release) = receiver().await;
        let sender = Box::leak(Box::new(Sender::new(
            Some(b"s3cret".to_vec()),
            Duration::from_secs(600),
        )));
        let (tx, rx) = watch::channel(RenderProgress::default());
        let hook = RenderWebhook::spawn(sender, options(&url), "rid".into(), rx);
        let set = |rendered| {
            tx.send_replace(RenderProgress {
                rendered,
                encoded: rendered,
                total: 20,
                overall: None,
            });
        };
        // Each step's outcome is the same whether the follower sees every value or only the
        // last: while a call is out it cannot see any.
        set(0);
        wait_for_calls(&calls, 1).await; // 0: the first value
        set(1);
        set(2);
        release.add_permits(1);
        wait_for_calls(&calls, 2).await; // 0.1: due while the last value sent is 0
        set(7); // 0.35: skipped while the call is out
        set(12);
        release.add_permits(1);
        wait_for_calls(&calls, 3).await; // 0.6: 0.25 or more past 0.1
        set(14); // 0.7: not yet 0.25 past 0.6
        set(20);
        release.add_permits(1);
        wait_for_calls(&calls, 4).await; // 1: always
        release.add_permits(2);
        let response = SuccessResponse {
            kind: "success".into(),
            public_url: None,
            cloud_storage_uri: "gs://b/k".into(),
            size: "3".into(),
            bucket_name: "b".into(),
            render_id: "rid".into(),
            privacy: "project-private".into(),
            fanout: None,
        };
        hook.finish(Outcome::Success(response)).await;

        let bodies = bodies(&calls);
        let progress: Vec<&Value> = bodies.iter().map(|b| &b["progress"]).collect();
        assert_eq!(
            progress,
            [&json!(0), &json!(0.1), &json!(0.6), &json!(1), &json!(1)]
        );
        let last = bodies.last().unwrap();
        assert_eq!(last["type"], "success");
        assert_eq!(last["response"]["cloudStorageUri"], "gs://b/k");
        assert!(bodies[..4].iter().all(|b| b.get("type").is_none()));
        for (headers, body) in calls.lock().unwrap().iter() {
            assert_eq!(headers["x-custom"], "yes");
            assert_eq!(headers["content-type"], "application/json");
            assert_eq!(headers[SIGNATURE_HEADER], signature(b"s3cret", body));
        }
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_is_given_up_on_at_the_deadline() {
        let (url, calls, _never) = receiver().await;
        let sender = Box::leak(Box::new(Sender::new(None, Duration::from_millis(300))));
        let (tx, rx) = watch::channel(RenderProgress::default());
        let hook = RenderWebhook::spawn(sender, options(&url), "rid".into(), rx);
        tx.send_replace(RenderProgress {
            rendered: 1,
            encoded: 0,
            total: 2,
            overall: None,
        });
        // Without the deadline both calls would wait forever; the bound is for that hang.
        tokio::time::timeout(
            Duration::from_secs(60),
            hook.finish(Outcome::Error(ErrorBody::new("E", "m", "s"))),
        )
        .await
        .expect("the calls gave up");
        let n = calls.lock().unwrap().len();
        assert_eq!(n, 2, "one progress call and the final one");
        assert!(calls.lock().unwrap()[0].0.get(SIGNATURE_HEADER).is_none());
    }
}
