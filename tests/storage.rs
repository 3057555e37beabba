//! The output stage against fake-gcs-server: objects, metadata and ACLs as the client expects
//! them, error.txt, the webhook, and resumable uploads on a port that is not 80.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use cloudrun_render::options::Privacy;
use cloudrun_render::storage::gcs::{GcsStore, RetryPolicy, Source};
use cloudrun_render::storage::{ObjectOptions, StorageError, StoredObject};
use common::faults::{Exchange, Fault, FaultProxy, Rule};
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
    assert_eq!(
        response["cloudStorageUri"],
        format!("gs://media-out/renders/{id}/nested/clip%20one.mp4")
    );
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
    // Like the original's still server: the public URL whatever the privacy.
    assert_eq!(
        response["publicUrl"],
        "https://storage.googleapis.com/stills-out/renders%2Fstillpriv1%2Fout.jpeg"
    );
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
    assert_eq!(
        response["publicUrl"],
        "https://storage.googleapis.com/stills-out/renders%2Fstillnoacl%2Fthumbs%2Fa.png"
    );
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

/// The emulator with `bucket`, and a fault proxy in front of it.
fn emulator_behind_proxy(bucket: &str, rules: Vec<Rule>) -> (FakeGcs, FaultProxy) {
    let gcs = FakeGcs::start();
    gcs.create_bucket(bucket);
    let proxy = FaultProxy::start(&gcs.url, rules);
    (gcs, proxy)
}

fn video_options() -> ObjectOptions {
    ObjectOptions {
        content_type: "video/mp4".into(),
        content_disposition: Some("attachment".into()),
        privacy: Privacy::Public,
    }
}

/// Bytes no two chunks of which are alike (xorshift), so a chunk sent at the wrong offset
/// shows.
fn scrambled(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

const MIB: usize = 1024 * 1024;

/// Over two 8 MiB chunks: the third chunk is the short last one.
const BIG: usize = 17 * MIB + 123;

/// `bytes a-b/total` of the chunks of an upload of `len` bytes from the start.
fn chunk_ranges(len: usize, chunk: usize) -> Vec<String> {
    (0..len)
        .step_by(chunk)
        .map(|a| format!("bytes {a}-{}/{len}", (a + chunk).min(len) - 1))
        .collect()
}

/// `data` uploaded through `store` from a file.
fn put_file(
    store: &GcsStore,
    bucket: &str,
    key: &str,
    data: &[u8],
) -> Result<StoredObject, StorageError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload.mp4");
    std::fs::write(&path, data).unwrap();
    runtime().block_on(store.put(bucket, key, Source::File(&path), &video_options()))
}

/// What must hold once an upload answered success, however many sessions it took: the one
/// object in the bucket is at `key` and holds exactly `data`, `stored` reports its size, and
/// every object the emulator finalized by mistake on the way was deleted by its generation
/// before a new session started.
fn assert_uploaded_exactly(
    gcs: &FakeGcs,
    proxy: &FaultProxy,
    bucket: &str,
    key: &str,
    data: &[u8],
    stored: &StoredObject,
) {
    let object = gcs.object(bucket, key).expect("the object");
    assert_eq!(object["size"], data.len().to_string());
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(object["crc32c"], b64_crc32c(data));
    assert!(
        gcs.download(bucket, key) == data,
        "the bytes came back unchanged"
    );
    let generations = gcs.generations(bucket);
    assert_eq!(generations.len(), 1, "{generations:#?}");
    assert_eq!(generations[0]["generation"], object["generation"]);
    assert_mistakes_deleted(proxy, &object["generation"]);
}

/// Every object the emulator finalized and told the client about, other than `kept`, had a
/// DELETE of its generation answered by the emulator before the next session started.
/// (fake-gcs-server deletes the live object whatever generation is named, and a later upload
/// replaces it anyway, so the listing alone cannot tell: the requests can.)
fn assert_mistakes_deleted(proxy: &FaultProxy, kept: &Value) {
    let seen = proxy.seen();
    for (i, s) in seen.iter().enumerate() {
        let Some(object) = s.finalized() else {
            continue;
        };
        if s.fault == Some(Fault::ResetMidAnswer) {
            continue;
        }
        let generation = object["generation"].as_str().unwrap();
        if generation == kept.as_str().unwrap() {
            continue;
        }
        let next_start = seen[i..]
            .iter()
            .position(|s| s.exchange == Exchange::Start)
            .map(|p| i + p)
            .unwrap_or(seen.len());
        let deleted = seen[i..next_start].iter().any(|d| {
            d.exchange == Exchange::Delete
                && d.query("generation").as_deref() == Some(generation)
                && matches!(d.upstream, Some((200 | 204, _)))
        });
        assert!(
            deleted,
            "generation {generation} ({} bytes) was finalized by mistake and not deleted: {seen:#?}",
            object["size"]
        );
    }
}

#[test]
fn a_large_file_goes_up_in_resumable_chunks_on_a_non_default_port() {
    let (gcs, proxy) = emulator_behind_proxy("big", vec![]);
    assert!(!proxy.url.ends_with(":80") && !gcs.url.ends_with(":80"));
    let data = scrambled(BIG);
    let store = GcsStore::emulator(&proxy.url);
    let key = "renders/bigbigbig0/out.mp4";
    let started = std::time::Instant::now();
    let stored = put_file(&store, "big", key, &data).expect("the upload");
    eprintln!("uploaded {BIG} bytes in {:?}", started.elapsed());
    assert_eq!(stored.cloud_storage_uri, format!("gs://big/{key}"));
    assert_uploaded_exactly(&gcs, &proxy, "big", key, &data, &stored);

    let object = gcs.object("big", key).unwrap();
    assert_eq!(object["contentType"], "video/mp4");
    assert_eq!(object["contentDisposition"], "attachment");
    let acl = gcs.acl("big", key);
    assert!(acl.contains(&"allUsers:READER".to_string()), "{acl:?}");
    assert_eq!(proxy.of(Exchange::Start).len(), 1);
    assert_eq!(proxy.data_ranges(), chunk_ranges(BIG, 8 * MIB));
}

/// The schedule: the connection breaks in the middle of the first chunk, the status
/// query that follows gets a 503, and the next one makes the emulator finalize the empty
/// session. That session is over: its object is deleted and a new one sends everything.
#[test]
fn a_reset_mid_chunk_then_a_503_then_a_finalized_stub_starts_over() {
    let rules = vec![
        Rule::nth(Exchange::Data, 1, Fault::ResetMidRequest),
        Rule::nth(Exchange::Status, 1, Fault::Status(503)),
    ];
    let (gcs, proxy) = emulator_behind_proxy("reset", rules);
    let data = scrambled(BIG);
    let store = GcsStore::emulator(&proxy.url).with_policy(quick_policy());
    let key = "renders/reset00000/out.mp4";
    let stored = put_file(&store, "reset", key, &data).expect("the upload survives");
    assert_uploaded_exactly(&gcs, &proxy, "reset", key, &data, &stored);

    let statuses = proxy.of(Exchange::Status);
    assert_eq!(statuses.len(), 2, "{statuses:#?}");
    let stub = statuses[1]
        .finalized()
        .expect("the emulator finalized the stub");
    assert_eq!(stub["size"], "0");
    assert_eq!(proxy.of(Exchange::Start).len(), 2);
    let mut expected = vec![chunk_ranges(BIG, 8 * MIB)[0].clone()];
    expected.extend(chunk_ranges(BIG, 8 * MIB));
    assert_eq!(proxy.data_ranges(), expected);
}

/// A session that answers 404 is gone (expired, or ended by the server): a new session sends
/// the file again from byte 0.
#[test]
fn a_session_that_answers_404_is_replaced_by_a_new_one() {
    let rules = vec![Rule::nth(Exchange::Data, 2, Fault::Status(404))];
    let (gcs, proxy) = emulator_behind_proxy("gone", rules);
    let data = scrambled(BIG);
    let store = GcsStore::emulator(&proxy.url).with_policy(quick_policy());
    let key = "renders/gone000000/out.mp4";
    let stored = put_file(&store, "gone", key, &data).expect("the upload survives");
    assert_uploaded_exactly(&gcs, &proxy, "gone", key, &data, &stored);

    assert_eq!(proxy.of(Exchange::Start).len(), 2);
    assert!(
        proxy.of(Exchange::Status).is_empty(),
        "a lost session is not asked"
    );
    let all = chunk_ranges(BIG, 8 * MIB);
    let mut expected = all[..2].to_vec();
    expected.extend(all);
    assert_eq!(proxy.data_ranges(), expected);
}

/// A chunk whose connection stalls is given up on at the exchange deadline; the proxy holds
/// it until the client closes it, so nothing here depends on how fast anything is.
#[test]
fn a_stalled_chunk_is_given_up_at_the_deadline_and_the_upload_completes() {
    let rules = vec![Rule::nth(Exchange::Data, 2, Fault::Stall)];
    let (gcs, proxy) = emulator_behind_proxy("stall", rules);
    let data = scrambled(3 * MIB + 5);
    // A short deadline, and attempts to spare: an exchange that is merely slow on a loaded
    // machine costs a retry, not the test.
    let policy = RetryPolicy {
        attempts: 8,
        attempt_timeout: Duration::from_secs(3),
        ..quick_policy()
    };
    let store = GcsStore::emulator(&proxy.url)
        .with_policy(policy)
        .with_chunk_size(MIB);
    let key = "renders/stall00000/out.mp4";
    let stored = put_file(&store, "stall", key, &data).expect("the upload survives");
    assert_uploaded_exactly(&gcs, &proxy, "stall", key, &data, &stored);

    let stalled = &proxy.of(Exchange::Data)[1];
    assert_eq!(stalled.fault, Some(Fault::Stall));
    assert!(
        stalled.client_gave_up,
        "the client closed the stalled exchange"
    );
    assert!(
        !proxy.of(Exchange::Status).is_empty(),
        "the session was asked how far it got"
    );
}

/// The last chunk went through, but its answer broke off: the session is asked again for the
/// object. (GCS answers with it; fake-gcs-server forgets a finalized session and answers 404,
/// so here the upload starts over and its object replaces the one the client never saw.)
#[test]
fn a_final_answer_that_breaks_off_is_asked_for_again() {
    let rules = vec![Rule::nth(Exchange::Data, 1, Fault::ResetMidAnswer)];
    let (gcs, proxy) = emulator_behind_proxy("answer", rules);
    let data = scrambled(300 * 1024);
    let store = GcsStore::emulator(&proxy.url).with_policy(quick_policy());
    let key = "renders/answer0000/out.mp4";
    let stored = put_file(&store, "answer", key, &data).expect("the upload survives");
    assert_uploaded_exactly(&gcs, &proxy, "answer", key, &data, &stored);
    let statuses = proxy.of(Exchange::Status);
    assert_eq!(statuses.len(), 1, "{statuses:#?}");
    assert_eq!(statuses[0].upstream.as_ref().map(|u| u.0), Some(404));
    assert_eq!(proxy.of(Exchange::Start).len(), 2);
}

#[test]
fn an_upload_that_keeps_failing_leaves_no_object() {
    let rules = vec![Rule::every(Exchange::Data, Fault::Status(503))];
    let (gcs, proxy) = emulator_behind_proxy("flaky", rules);
    let store = GcsStore::emulator(&proxy.url)
        .with_policy(quick_policy())
        .with_chunk_size(256 * 1024);
    let data = vec![7u8; MIB];
    let key = "renders/flaky00000/out.mp4";
    let result =
        runtime().block_on(store.put("flaky", key, Source::Bytes(data.into()), &video_options()));
    let error = result.expect_err("the upload must fail");
    eprintln!("{error}");
    assert!(gcs.object("flaky", key).is_none(), "no object at the key");
    assert!(gcs.generations("flaky").is_empty());
    assert!(
        proxy
            .of(Exchange::Status)
            .iter()
            .any(|s| s.content_range.as_deref() == Some("bytes */1048576")),
        "the upload asked the session how far it got: {:#?}",
        proxy.seen()
    );
    assert_mistakes_deleted(&proxy, &Value::from("none"));
}

fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 5,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(60),
        give_up_after: Duration::from_secs(300),
    }
}

#[test]
fn a_transient_failure_to_start_is_retried() {
    let rules = vec![Rule::nth(Exchange::Start, 1, Fault::Status(503))];
    let (gcs, proxy) = emulator_behind_proxy("retry", rules);
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
    assert_eq!(proxy.of(Exchange::Start).len(), 2);
}

#[test]
fn a_misconfiguration_fails_fast_instead_of_hanging() {
    let (gcs, proxy) = emulator_behind_proxy("exists", vec![]);
    let bytes = || Source::Bytes(vec![1, 2, 3].into());
    // A bucket that does not exist is not worth retrying: one try.
    let store = GcsStore::emulator(&proxy.url).with_policy(quick_policy());
    let e = runtime()
        .block_on(store.put("nope", "renders/x/out.mp4", bytes(), &video_options()))
        .expect_err("no such bucket");
    assert!(e.to_string().contains("nope"), "{e}");
    let starts = proxy.of(Exchange::Start).len();
    assert_eq!(starts, 1, "{:#?}", proxy.seen());
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

/// The service storing through `proxy`, and what the client
/// read of a render of the first `frames` frames of `Frames` to `bucket` as render `id`.
fn render_through(
    proxy: &FaultProxy,
    bucket: &str,
    id: &str,
    frames: u32,
) -> (Service, ClientRead) {
    let service = Service::start_with(&[("STORAGE_EMULATOR_HOST", proxy.url.as_str())], false);
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, frames - 1]);
    payload["outputBucket"] = json!(bucket);
    payload["renderIdOverride"] = json!(id);
    let read = post_like_client(&service.url, &payload);
    (service, read)
}

/// The schedule end to end: the render's upload breaks mid-chunk, the status query
/// gets a 503, the emulator finalizes an empty object. The client still gets its render.
#[test]
fn a_render_whose_upload_connection_breaks_still_succeeds() {
    let rules = vec![
        Rule::nth(Exchange::Data, 1, Fault::ResetMidRequest),
        Rule::nth(Exchange::Status, 1, Fault::Status(503)),
    ];
    let (gcs, proxy) = emulator_behind_proxy("broken-net", rules);
    let tmp = tempfile::tempdir().unwrap();
    let (service, read) = render_through(&proxy, "broken-net", "brokennet1", 30);
    assert!(read.error.is_none(), "{:?}", read.error);
    let response = read.response.expect("a final response");
    assert_eq!(response["type"], "success");

    let key = "renders/brokennet1/out.mp4";
    let object = gcs.object("broken-net", key).expect("the output object");
    assert_eq!(response["size"], object["size"]);
    let bytes = gcs.download("broken-net", key);
    assert_eq!(object["crc32c"], b64_crc32c(&bytes));
    let local = tmp.path().join("downloaded.mp4");
    std::fs::write(&local, &bytes).unwrap();
    assert_eq!(video_stream(&ffprobe(&local))["nb_read_frames"], "30");
    std::fs::remove_file(&local).unwrap();

    let generations = gcs.generations("broken-net");
    assert_eq!(
        generations.len(),
        1,
        "only the render, no error.txt: {generations:#?}"
    );
    assert_mistakes_deleted(&proxy, &object["generation"]);
    assert!(
        proxy.of(Exchange::Status)[1].finalized().is_some(),
        "the schedule made the emulator finalize a stub: {:#?}",
        proxy.seen()
    );
    assert_eq!(proxy.of(Exchange::Start).len(), 2);
    assert!(
        service.log_text().contains("starting over from byte 0"),
        "the restart is logged"
    );
    assert_eq!(
        service.temp_entries("cloudrun-render-work-"),
        Vec::<String>::new()
    );
    assert!(service.stop().success());
}

/// A storage path that never works: every session start answers 503. The client gets the
/// StorageError once the retries are spent (about 16 s of backoff, then at most 3 s for
/// error.txt), error.txt was attempted, nothing is at the key, temp files are gone.
#[test]
fn a_storage_path_that_never_works_ends_with_the_storage_error() {
    let rules = vec![Rule::every(Exchange::Start, Fault::Status(503))];
    let (gcs, proxy) = emulator_behind_proxy("never", rules);
    let started = std::time::Instant::now();
    let (service, read) = render_through(&proxy, "never", "neverworks", 10);
    let elapsed = started.elapsed();
    eprintln!("the render with a storage path that never works answered in {elapsed:?}");
    let error = read.error.expect("the error object");
    assert!(read.response.is_none());
    assert_eq!(error["name"], "StorageError", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("renders/neverworks/out.mp4") && message.contains("503"),
        "{message}"
    );
    // Only a hang trips this bound; the expected time is ~20 s.
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");

    let starts = proxy.of(Exchange::Start);
    let named = |name: &str| {
        starts
            .iter()
            .filter(|s| s.json.as_ref().is_some_and(|j| j["name"] == name))
            .count()
    };
    assert_eq!(named("renders/neverworks/out.mp4"), 6, "{starts:#?}");
    assert!(
        named("renders/neverworks/error.txt") >= 1,
        "error.txt was attempted"
    );
    assert!(gcs.generations("never").is_empty());
    assert_eq!(
        service.temp_entries("cloudrun-render-work-"),
        Vec::<String>::new()
    );
    assert!(service.stop().success());
}
