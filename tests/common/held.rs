//! Servers that hold their answer until the test releases it, so a test can look at the
//! service while one of its calls is pending (no sleeps).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::watch;

use super::wait::wait_until;
use super::{WebhookCall, serve_on_loopback};

/// A `renderStatusWebhook` receiver that answers progress calls at once and holds every final
/// call (the one with a `type`) until [`HeldWebhook::release`].
pub struct HeldWebhook {
    pub url: String,
    calls: Arc<Mutex<Vec<WebhookCall>>>,
    answered: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

impl HeldWebhook {
    pub fn start() -> HeldWebhook {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let (gate, _) = watch::channel(false);
        let (recorded, done, open) = (calls.clone(), answered.clone(), gate.clone());
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (recorded, done) = (recorded.clone(), done.clone());
                let mut open = open.subscribe();
                async move {
                    let call = WebhookCall {
                        headers,
                        body: body.to_vec(),
                    };
                    let is_final = call.json().get("type").is_some();
                    recorded.lock().unwrap().push(call);
                    if is_final {
                        let _ = open.wait_for(|released| *released).await;
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    "ok"
                }
            },
        );
        let url = format!("{}/hook", serve_on_loopback(app));
        HeldWebhook {
            url,
            calls,
            answered,
            gate,
        }
    }

    pub fn calls(&self) -> Vec<WebhookCall> {
        self.calls.lock().unwrap().clone()
    }

    /// The final call, once it has arrived (it may still be held).
    pub fn wait_for_final_call(&self) -> Value {
        let mut found = None;
        wait_until("the final webhook call", || {
            found = self
                .calls()
                .into_iter()
                .map(|c| c.json())
                .find(|b| b.get("type").is_some());
            found.is_some()
        });
        found.unwrap()
    }

    /// Final calls this receiver has answered.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Answers the held calls, and every later one at once.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }
}

/// What a [`HeldFile`] answers once released.
#[derive(Clone)]
enum Answer {
    Held,
    File(Arc<Vec<u8>>),
    NotFound,
}

/// A file on a loopback HTTP server that answers only once the test says how.
pub struct HeldFile {
    pub url: String,
    requests: Arc<AtomicUsize>,
    gate: watch::Sender<Answer>,
    bytes: Arc<Vec<u8>>,
}

impl HeldFile {
    pub fn start(name: &str, bytes: Vec<u8>) -> HeldFile {
        let requests = Arc::new(AtomicUsize::new(0));
        let (gate, _) = watch::channel(Answer::Held);
        let (counted, open) = (requests.clone(), gate.clone());
        let app = axum::Router::new().fallback(move || {
            let counted = counted.clone();
            let mut open = open.subscribe();
            async move {
                use axum::response::IntoResponse;
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = open
                    .wait_for(|a| !matches!(a, Answer::Held))
                    .await
                    .map(|a| a.clone())
                    .unwrap_or(Answer::NotFound);
                match answer {
                    Answer::File(bytes) => bytes.to_vec().into_response(),
                    _ => axum::http::StatusCode::NOT_FOUND.into_response(),
                }
            }
        });
        HeldFile {
            url: format!("{}/held/{name}", serve_on_loopback(app)),
            requests,
            gate,
            bytes: Arc::new(bytes),
        }
    }

    pub fn wait_requested(&self) {
        wait_until("the held file to be requested", || {
            self.requests.load(Ordering::SeqCst) > 0
        });
    }

    /// Serves the file, now and from now on.
    pub fn release(&self) {
        self.gate.send_replace(Answer::File(self.bytes.clone()));
    }

    /// Answers 404, now and from now on.
    pub fn refuse(&self) {
        self.gate.send_replace(Answer::NotFound);
    }
}
