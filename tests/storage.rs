//! The output stage against fake-gcs-server: objects, metadata and ACLs as the client expects
//! them, error.txt, the webhook, and resumable uploads on a port that is not 80.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use cloudrun_render::options::Privacy;
use cloudrun_render::storage::ObjectOptions;
use cloudrun_render::storage::gcs::{GcsStore, RetryPolicy, Source};
use common::*;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

const SECRET: &str = "hush-hush";

fn b64_crc32c(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(data).to_be_bytes())
}

fn hmac_sha512_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn still_in(bucket: &str) -> Value {
    let mut payload = still_payload(&format!("{}/site", fixture_server()), "Stills");
    payload["outputBucket"] = json!(bucket);
    payload
}

#[test]
fn a_media_render_lands_in_gcs_with_its_metadata_acl_and_a_signed_webhook() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("media-out");
    let hook = WebhookReceiver::start();
    let service = Service::start_gcs(&gcs, &[("CLOUDRUN_RENDER_WEBHOOK_SECRET", SECRET)]);
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 29]);
    payload["outputBucket"] = json!("media-out");
    payload["outName"] = json!("nested/clip one.mp4");
    payload["downloadBehavior"] = json!({"type": "download", "fileName": "clip one.mp4"});
    payload["renderStatusWebhook"] = json!({
        "url": hook.url,
        "headers": {"X-Custom": "abc", "Content-Type": "text/plain"},
        "data": {"customer": "c1", "progress": "overridden"},
        "webhookProgressInterval": 0.25,
    });
    let read = post_like_client(&service.url, &payload);
    assert!(read.error.is_none(), "{:?}", read.error);
    let response = read.response.expect("a final response");

    let id = response["renderId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 10);
    assert!(
        id.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    );
    let key = format!("renders/{id}/nested/clip one.mp4");
    assert_eq!(response["type"], "success");
    assert_eq!(response["bucketName"], "media-out");
    assert_eq!(response["privacy"], "public-read");
    assert_eq!(response["cloudStorageUri"], format!("gs://media-out/{key}"));
    assert_eq!(
        response["publicUrl"],
        format!(
            "https://storage.googleapis.com/media-out/renders%2F{id}%2Fnested%2Fclip%20one.mp4"
        )
    );

    let object = gcs.object("media-out", &key).expect("the output object");
    assert!(response["size"].is_string(), "size is a decimal string");
    assert_eq!(response["size"], object["size"]);
    assert_eq!(object["contentType"], "video/mp4");
    assert_eq!(
        object["contentDisposition"],
        "attachment; filename=\"clip%20one.mp4\""
    );
    let acl = gcs.acl("media-out", &key);
    assert!(
        acl.contains(&"allUsers:READER".to_string()),
        "{acl:?} {object}"
    );
    let bytes = gcs.download("media-out", &key);
    assert_eq!(bytes.len().to_string(), object["size"].as_str().unwrap());
    assert_eq!(object["crc32c"], b64_crc32c(&bytes));
    let downloaded = tempfile::tempdir().unwrap();
    let local = downloaded.path().join("downloaded.mp4");
    std::fs::write(&local, &bytes).unwrap();
    assert_eq!(video_stream(&ffprobe(&local))["nb_read_frames"], "30");
    assert_eq!(gcs.keys("media-out", &format!("renders/{id}/")), [key]);
    assert!(service.temp_entries("cloudrun-render-work-").is_empty());

    // The webhook: progress calls by the original's rule, then the final call.
    let calls = hook.calls_until_final();
    assert!(calls.len() >= 3, "{} calls", calls.len());
    for call in &calls {
        assert_eq!(call.headers["x-custom"], "abc");
        assert_eq!(call.headers["content-type"], "application/json");
        assert_eq!(
            call.headers["x-remotion-signature"],
            format!("sha512={}", hmac_sha512_hex(SECRET, &call.body))
        );
        let body = call.json();
        assert_eq!(body["renderId"], id.as_str());
        assert_eq!(body["customer"], "c1");
        assert!(body["renderedFrames"].as_u64().unwrap() <= 30);
        assert!(body["encodedFrames"].as_u64().unwrap() <= 30);
    }
    let (last, progress_calls) = calls.split_last().unwrap();
    let values: Vec<f64> = progress_calls
        .iter()
        .map(|c| c.json()["progress"].as_f64().expect("a number"))
        .collect();
    for w in values.windows(2) {
        assert!(
            w[1] == 1.0 || w[0] == 0.0 || w[1] - w[0] >= 0.25 - 1e-9,
            "{values:?}"
        );
    }
    assert!(values.len() <= 8, "{values:?}");
    let at_one = progress_calls.last().unwrap().json();
    assert_eq!(at_one["progress"], 1, "{values:?}");
    assert!(
        progress_calls
            .iter()
            .all(|c| c.json().get("type").is_none())
    );
    assert_eq!(
        (
            at_one["renderedFrames"].as_u64(),
            at_one["encodedFrames"].as_u64()
        ),
        (Some(30), Some(30))
    );
    let last = last.json();
    assert_eq!(last["type"], "success");
    assert_eq!(last["response"], response);
    assert_eq!(last["progress"], 1);
    assert!(service.stop().success());
}

#[test]
fn stills_get_the_acl_content_type_and_disposition_of_their_privacy() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("stills-out");
    let service = Service::start_gcs(&gcs, &[]);

    let mut private = still_in("stills-out");
    private["privacy"] = json!("private");
    private["imageFormat"] = json!("jpeg");
    private["renderIdOverride"] = json!("stillpriv1");
    let response = post_like_client(&service.url, &private)
        .response
        .expect("a response");
    assert_eq!(response["privacy"], "project-private");
    assert_eq!(response["publicUrl"], Value::Null);
    assert_eq!(
        response["cloudStorageUri"],
        "gs://stills-out/renders/stillpriv1/out.jpeg"
    );
    let key = "renders/stillpriv1/out.jpeg";
    let object = gcs.object("stills-out", key).expect("the still");
    assert_eq!(object["contentType"], "image/jpeg");
    assert_eq!(object.get("contentDisposition"), None);
    assert_eq!(response["size"], object["size"]);
    let acl = gcs.acl("stills-out", key);
    assert!(
        !acl.is_empty() && !acl.iter().any(|e| e.starts_with("allUsers")),
        "{acl:?}"
    );
    assert_eq!(&gcs.download("stills-out", key)[..3], [0xff, 0xd8, 0xff]);

    let mut no_acl = still_in("stills-out");
    no_acl["privacy"] = json!("no-acl");
    no_acl["outName"] = json!("thumbs/a.png");
    no_acl["renderIdOverride"] = json!("stillnoacl");
    no_acl["downloadBehavior"] = json!({"type": "download", "fileName": null});
    let response = post_like_client(&service.url, &no_acl)
        .response
        .expect("a response");
    assert_eq!(response["privacy"], "no-acl");
    assert_eq!(response["publicUrl"], Value::Null);
    let key = "renders/stillnoacl/thumbs/a.png";
    let object = gcs.object("stills-out", key).expect("the still");
    assert_eq!(object["contentType"], "image/png");
    assert_eq!(object["contentDisposition"], "attachment");
    assert!(
        !gcs.acl("stills-out", key)
            .iter()
            .any(|e| e.starts_with("allUsers"))
    );

    let mut public = still_in("stills-out");
    public["renderIdOverride"] = json!("stillpubl1");
    let response = post_like_client(&service.url, &public)
        .response
        .expect("a response");
    assert_eq!(response["privacy"], "public-read");
    assert_eq!(
        response["publicUrl"],
        "https://storage.googleapis.com/stills-out/renders%2Fstillpubl1%2Fout.png"
    );
    assert!(
        gcs.acl("stills-out", "renders/stillpubl1/out.png")
            .contains(&"allUsers:READER".to_string())
    );
}

#[test]
fn a_render_that_throws_leaves_error_txt_no_output_and_an_error_webhook() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("fail-out");
    let hook = WebhookReceiver::start();
    let service = Service::start_gcs(&gcs, &[]);
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Throws");
    payload["serializedInputPropsWithCustomSchema"] = json!("{\"throwAt\": 12}");
    payload["outputBucket"] = json!("fail-out");
    payload["privacy"] = json!("private");
    payload["renderIdOverride"] = json!("throws0001");
    payload["renderStatusWebhook"] = json!({"url": hook.url, "headers": {}, "data": null});
    let read = post_like_client(&service.url, &payload);
    assert!(read.response.is_none());
    let error = read.error.expect("the error object");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("fixture exploded at frame 12"),
        "{error}"
    );

    assert_eq!(
        gcs.keys("fail-out", "renders/throws0001/"),
        ["renders/throws0001/error.txt"],
        "error.txt and no output"
    );
    let meta = gcs
        .object("fail-out", "renders/throws0001/error.txt")
        .unwrap();
    assert_eq!(meta["contentType"], "text/plain; charset=utf-8");
    let txt = String::from_utf8(gcs.download("fail-out", "renders/throws0001/error.txt")).unwrap();
    let expected = json!({
        "name": error["name"], "message": error["message"], "stack": error["stack"], "type": "renderer",
    });
    assert_eq!(serde_json::from_str::<Value>(&txt).unwrap(), expected);
    let order: Vec<usize> = ["\"name\"", "\"message\"", "\"stack\"", "\"type\""]
        .iter()
        .map(|k| txt.find(k).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{txt}");
    assert!(service.temp_entries("cloudrun-render-work-").is_empty());

    let calls = hook.calls_until_final();
    let last = calls.last().expect("webhook calls").json();
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"], error);
    assert_eq!(last["renderId"], "throws0001");
    assert!(last["progress"].as_f64().unwrap() < 1.0);
    for c in &calls {
        assert!(
            c.headers.get("x-remotion-signature").is_none(),
            "no secret, no signature"
        );
    }
    assert!(service.stop().success());
}

#[test]
fn serve_starts_with_application_default_credentials_when_nothing_is_configured() {
    let service = Service::start_with(&[], false);
    let health = runtime()
        .block_on(reqwest::get(format!("{}/healthz", service.url)))
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(service.stop().success());
}

/// What a [`Proxy`] saw: method, path and query, `Content-Range`.
type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

/// Which requests a [`Proxy`] answers with 503 instead of forwarding them.
#[derive(Clone, Copy)]
struct Faults {
    /// The first n requests that start an upload session.
    failed_starts: usize,
    /// Chunk PUTs from the n-th (1-based) on.
    failed_chunks_from: usize,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            failed_starts: 0,
            failed_chunks_from: usize::MAX,
        }
    }
}

/// Forwards to the emulator, recording requests and injecting [`Faults`]. The emulator builds
/// session URLs from `Host`, which the proxy passes through, so sessions stay behind it.
struct Proxy {
    url: String,
    seen: Seen,
}

impl Proxy {
    fn start(upstream: &str, faults: Faults) -> Proxy {
        let seen: Seen = Arc::default();
        let recorded = seen.clone();
        let upstream = upstream.to_string();
        let client = reqwest::Client::new();
        let app = axum::Router::new()
            .fallback(
                move |method: axum::http::Method,
                      uri: axum::http::Uri,
                      headers: axum::http::HeaderMap,
                      body: axum::body::Bytes| {
                    let (recorded, upstream, client) =
                        (recorded.clone(), upstream.clone(), client.clone());
                    async move {
                        let path = uri.path_and_query().unwrap().to_string();
                        let range = headers
                            .get("content-range")
                            .map(|v| v.to_str().unwrap().to_string());
                        let is_chunk = |m: &str, r: &Option<String>| {
                            m == "PUT" && r.as_ref().is_some_and(|r| !r.contains('*'))
                        };
                        let is_start =
                            |m: &str, p: &str| m == "POST" && p.contains("uploadType=resumable");
                        let fail = {
                            let mut seen = recorded.lock().unwrap();
                            seen.push((method.to_string(), path.clone(), range.clone()));
                            let chunks = seen.iter().filter(|(m, _, r)| is_chunk(m, r)).count();
                            let starts = seen.iter().filter(|(m, p, _)| is_start(m, p)).count();
                            (is_chunk(method.as_str(), &range)
                                && chunks >= faults.failed_chunks_from)
                                || (is_start(method.as_str(), &path)
                                    && starts <= faults.failed_starts)
                        };
                        if fail {
                            return axum::http::Response::builder()
                                .status(503)
                                .body(axum::body::Body::from("injected"))
                                .unwrap();
                        }
                        let mut request = client
                            .request(method, format!("{upstream}{path}"))
                            .body(body);
                        for (k, v) in headers.iter() {
                            if k != "content-length" {
                                request = request.header(k, v);
                            }
                        }
                        let answer = request.send().await.unwrap();
                        let mut response = axum::http::Response::builder().status(answer.status());
                        for (k, v) in answer.headers() {
                            if k != "content-length" && k != "transfer-encoding" {
                                response = response.header(k, v);
                            }
                        }
                        response
                            .body(axum::body::Body::from(answer.bytes().await.unwrap()))
                            .unwrap()
                    }
                },
            )
            .layer(axum::extract::DefaultBodyLimit::disable());
        Proxy {
            url: serve_on_loopback(app),
            seen,
        }
    }

    fn seen(&self) -> Vec<(String, String, Option<String>)> {
        self.seen.lock().unwrap().clone()
    }
}

/// The emulator with `bucket`, and a proxy in front of it.
fn emulator_behind_proxy(bucket: &str, faults: Faults) -> (FakeGcs, Proxy) {
    let gcs = FakeGcs::start();
    gcs.create_bucket(bucket);
    let proxy = Proxy::start(&gcs.url, faults);
    (gcs, proxy)
}

fn video_options() -> ObjectOptions {
    ObjectOptions {
        content_type: "video/mp4".into(),
        content_disposition: Some("attachment".into()),
        privacy: Privacy::Public,
    }
}

#[test]
fn a_large_file_goes_up_in_resumable_chunks_on_a_non_default_port() {
    let (gcs, proxy) = emulator_behind_proxy("big", Faults::default());
    assert!(!proxy.url.ends_with(":80") && !gcs.url.ends_with(":80"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.mp4");
    let len = 17 * 1024 * 1024 + 123;
    let mut state = 0x2545_f491_u32;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    std::fs::write(&path, &data).unwrap();

    let store = GcsStore::emulator(&proxy.url);
    let key = "renders/bigbigbig0/out.mp4";
    let started = std::time::Instant::now();
    let stored = runtime()
        .block_on(store.put("big", key, Source::File(&path), &video_options()))
        .expect("the upload");
    eprintln!("uploaded {len} bytes in {:?}", started.elapsed());
    assert_eq!(stored.size, len as u64);
    assert_eq!(stored.cloud_storage_uri, format!("gs://big/{key}"));

    let object = gcs.object("big", key).expect("the object");
    assert_eq!(object["size"], len.to_string());
    assert_eq!(object["crc32c"], b64_crc32c(&data));
    assert_eq!(object["contentType"], "video/mp4");
    assert_eq!(object["contentDisposition"], "attachment");
    let acl = gcs.acl("big", key);
    assert!(
        acl.contains(&"allUsers:READER".to_string()),
        "{acl:?} {:?}",
        proxy.seen()[0]
    );
    assert!(
        gcs.download("big", key) == data,
        "the bytes came back unchanged"
    );

    let seen = proxy.seen();
    let starts: Vec<_> = seen
        .iter()
        .filter(|(m, p, _)| m == "POST" && p.contains("uploadType=resumable"))
        .collect();
    assert_eq!(starts.len(), 1, "{seen:?}");
    let ranges: Vec<_> = seen
        .iter()
        .filter(|(m, _, _)| m == "PUT")
        .map(|(_, _, r)| r.clone().unwrap())
        .collect();
    let eight = 8 * 1024 * 1024;
    assert_eq!(
        ranges,
        [
            format!("bytes 0-{}/{len}", eight - 1),
            format!("bytes {eight}-{}/{len}", 2 * eight - 1),
            format!("bytes {}-{}/{len}", 2 * eight, len - 1),
        ]
    );
}

#[test]
fn an_upload_that_keeps_failing_leaves_no_object() {
    let faults = Faults {
        failed_chunks_from: 2,
        ..Faults::default()
    };
    let (gcs, proxy) = emulator_behind_proxy("flaky", faults);
    let store = GcsStore::emulator(&proxy.url)
        .with_policy(quick_policy())
        .with_chunk_size(256 * 1024);
    let data = vec![7u8; 1024 * 1024];
    let key = "renders/flaky00000/out.mp4";
    let result =
        runtime().block_on(store.put("flaky", key, Source::Bytes(data.into()), &video_options()));
    let error = result.expect_err("the upload must fail");
    eprintln!("{error}");
    assert!(gcs.object("flaky", key).is_none(), "no object at the key");
    assert!(gcs.keys("flaky", "").is_empty());
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|(_, _, r)| r.as_deref() == Some("bytes */1048576")),
        "the upload asked the session how far it got: {seen:?}"
    );
}

fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(10),
    }
}

#[test]
fn a_transient_failure_to_start_is_retried() {
    let faults = Faults {
        failed_starts: 1,
        ..Faults::default()
    };
    let (gcs, proxy) = emulator_behind_proxy("retry", faults);
    let store = GcsStore::emulator(&proxy.url).with_policy(quick_policy());
    let key = "renders/retry00000/error.txt";
    let stored = runtime()
        .block_on(store.put(
            "retry",
            key,
            Source::Bytes(b"{}".to_vec().into()),
            &video_options(),
        ))
        .expect("the second attempt goes through");
    assert_eq!(stored.size, 2);
    assert_eq!(gcs.download("retry", key), b"{}");
    let starts = proxy
        .seen()
        .iter()
        .filter(|(m, p, _)| m == "POST" && p.contains("uploadType=resumable"))
        .count();
    assert_eq!(starts, 2);
}

#[test]
fn a_misconfiguration_fails_fast_instead_of_hanging() {
    let (gcs, proxy) = emulator_behind_proxy("exists", Faults::default());
    let bytes = || Source::Bytes(vec![1, 2, 3].into());
    // A bucket that does not exist is not worth retrying: one try.
    let store = GcsStore::emulator(&proxy.url).with_policy(quick_policy());
    let e = runtime()
        .block_on(store.put("nope", "renders/x/out.mp4", bytes(), &video_options()))
        .expect_err("no such bucket");
    assert!(e.to_string().contains("nope"), "{e}");
    let starts = proxy
        .seen()
        .iter()
        .filter(|(m, p, _)| m == "POST" && p.contains("uploadType=resumable"))
        .count();
    assert_eq!(starts, 1, "{:?}", proxy.seen());
    assert!(gcs.keys("exists", "").is_empty());

    // A peer that hangs up on every request: the policy's attempts, then the error.
    let (hang_up, accepted) = hangs_up_on_everyone();
    let store = GcsStore::emulator(&hang_up).with_policy(quick_policy());
    let e = runtime()
        .block_on(store.put("b", "renders/x/out.mp4", bytes(), &video_options()))
        .expect_err("nobody answers");
    eprintln!("{e}");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        quick_policy().attempts as usize
    );

    // Nothing listening at all: an error, not a hang.
    let closed = ClosedPort::new();
    let dead =
        GcsStore::emulator(&format!("127.0.0.1:{}", closed.port)).with_policy(quick_policy());
    let e = runtime()
        .block_on(dead.put("b", "renders/x/out.mp4", bytes(), &video_options()))
        .expect_err("nobody there");
    eprintln!("{e}");
}

/// A loopback server that closes every connection it accepts without a word; returns its
/// `host:port` and how many connections it took.
fn hangs_up_on_everyone() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    (host, accepted)
}
