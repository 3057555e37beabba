//! Stand-ins for the services a render talks to: fake-gcs-server for Cloud Storage, and a
//! recording webhook receiver.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{clean_env, free_port, listens_on, repo, runtime, serve_on_loopback, wait_until};

/// fake-gcs-server (from `./scripts/setup`) on a free port, in memory. Killed on drop.
pub struct FakeGcs {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`, as `STORAGE_EMULATOR_HOST` takes it.
    pub host: String,
}

impl FakeGcs {
    fn binary() -> PathBuf {
        if let Ok(p) = std::env::var("FAKE_GCS_SERVER") {
            return PathBuf::from(p);
        }
        let venv = repo().join(".venv/bin/fake-gcs-server");
        if venv.exists() {
            return venv;
        }
        PathBuf::from("fake-gcs-server")
    }

    /// The emulator needs its port up front (it builds upload URLs from it), so it gets a
    /// port that was free a moment ago; if another process took it meanwhile, it starts again
    /// on another one.
    pub fn start() -> FakeGcs {
        for _ in 0..5 {
            if let Some(gcs) = FakeGcs::start_on(free_port()) {
                return gcs;
            }
        }
        panic!("fake-gcs-server did not start (run ./scripts/setup)");
    }

    fn start_on(port: u16) -> Option<FakeGcs> {
        let host = format!("127.0.0.1:{port}");
        let url = format!("http://{host}");
        let child = clean_env(&mut Command::new(FakeGcs::binary()))
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-backend",
                "memory",
            ])
            .args(["-port", &port.to_string(), "-public-host", &host])
            .args(["-external-url", &url, "-log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fake-gcs-server (run ./scripts/setup)");
        let mut gcs = FakeGcs { child, url, host };
        let pid = gcs.child.id();
        let mut exited = false;
        // Listening by itself, not some other process that took the port.
        wait_until("fake-gcs-server to listen or exit", || {
            exited = gcs.child.try_wait().unwrap().is_some();
            exited || listens_on(pid, port)
        });
        if exited {
            return None;
        }
        let up = runtime().block_on(async {
            reqwest::get(format!("{}/storage/v1/b", gcs.url))
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        });
        assert!(up, "fake-gcs-server listens but does not answer");
        Some(gcs)
    }

    /// Over the JSON API: the official client's control plane is gRPC, which the emulator
    /// does not speak.
    pub fn create_bucket(&self, name: &str) {
        let status = runtime().block_on(async {
            reqwest::Client::new()
                .post(format!("{}/storage/v1/b?project=test-project", self.url))
                .json(&serde_json::json!({ "name": name }))
                .send()
                .await
                .expect("create bucket")
                .status()
        });
        assert!(status.is_success(), "creating bucket {name}: {status}");
    }

    fn object_url(&self, bucket: &str, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{bucket}/o/{}",
            self.url,
            encode_uri_component(key)
        )
    }

    /// The object's metadata (`size`, `contentType`, `acl`, …), or None if there is none.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Value> {
        runtime().block_on(async {
            let r = reqwest::get(self.object_url(bucket, key)).await.unwrap();
            match r.status().as_u16() {
                404 => None,
                200 => Some(r.json().await.unwrap()),
                s => panic!("GET {bucket}/{key}: {s}"),
            }
        })
    }

    pub fn download(&self, bucket: &str, key: &str) -> Vec<u8> {
        runtime().block_on(async {
            let r = reqwest::get(format!("{}?alt=media", self.object_url(bucket, key)))
                .await
                .unwrap();
            assert!(r.status().is_success(), "download {key}: {}", r.status());
            r.bytes().await.unwrap().to_vec()
        })
    }

    /// Every key in `bucket` under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.list(bucket, &[("prefix", prefix)])
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The object resources of `bucket` that the emulator lists for `query`.
    pub fn list(&self, bucket: &str, query: &[(&str, &str)]) -> Vec<Value> {
        runtime().block_on(async {
            let listing: Value = reqwest::Client::new()
                .get(format!("{}/storage/v1/b/{bucket}/o", self.url))
                .query(query)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            listing["items"].as_array().cloned().unwrap_or_default()
        })
    }

    /// The entities of the object's ACL with their roles, e.g. `allUsers:READER`.
    pub fn acl(&self, bucket: &str, key: &str) -> Vec<String> {
        let acl: Value = runtime().block_on(async {
            let r = reqwest::get(format!("{}/acl", self.object_url(bucket, key)))
                .await
                .unwrap();
            assert!(r.status().is_success(), "ACL of {key}: {}", r.status());
            r.json().await.unwrap()
        });
        acl["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "{}:{}",
                            e["entity"].as_str().unwrap(),
                            e["role"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// JavaScript's `encodeURIComponent`, written out here so that what the tests ask the
/// emulator does not depend on the code under test.
fn encode_uri_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct WebhookCall {
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl WebhookCall {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How a [`WebhookReceiver`] answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WebhookAnswer {
    /// 200 at once.
    Ok,
    /// This status at once.
    Status(u16),
    /// Never: the caller's deadline is all that ends the call.
    Never,
}

/// An HTTP server on loopback that records every request, for `renderStatusWebhook`.
pub struct WebhookReceiver {
    pub url: String,
    calls: std::sync::Arc<std::sync::Mutex<Vec<WebhookCall>>>,
}

impl WebhookReceiver {
    pub fn start() -> WebhookReceiver {
        WebhookReceiver::answering(WebhookAnswer::Ok)
    }

    pub fn answering(answer: WebhookAnswer) -> WebhookReceiver {
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let recorded = recorded.clone();
                async move {
                    recorded.lock().unwrap().push(WebhookCall {
                        headers,
                        body: body.to_vec(),
                    });
                    match answer {
                        WebhookAnswer::Ok => axum::http::StatusCode::OK,
                        WebhookAnswer::Status(s) => axum::http::StatusCode::from_u16(s).unwrap(),
                        WebhookAnswer::Never => std::future::pending().await,
                    }
                }
            },
        );
        let url = format!("{}/hook", serve_on_loopback(app));
        WebhookReceiver { url, calls }
    }

    pub fn calls(&self) -> Vec<WebhookCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Every call, once the final one (the one with a `type`) came: the service may make it
    /// after the client has its answer.
    pub fn calls_until_final(&self) -> Vec<WebhookCall> {
        wait_until("the final webhook call", || {
            self.calls().iter().any(|c| c.json().get("type").is_some())
        });
        self.calls()
    }
}
