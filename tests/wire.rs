//! Wire details against the real binary: the webhook's final call does not hold the response,
//! what a client that leaves does with and without a webhook, and the still's URLs.

mod common;

use common::held::*;
use common::*;
use serde_json::{Value, json};

/// A render of 10 frames whose webhook is `hook`.
fn hooked_payload(hook: &HeldWebhook, render_id: &str) -> Value {
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 9]);
    payload["renderIdOverride"] = json!(render_id);
    payload["renderStatusWebhook"] = json!({"url": hook.url, "headers": {}, "data": {"job": 7}});
    payload
}

#[test]
fn the_response_ends_before_the_final_webhook_call_is_answered() {
    let hook = HeldWebhook::start();
    let service = Service::start(&[]);
    let read = post_like_client(&service.url, &hooked_payload(&hook, "heldhook01"));
    // The client's stream is over and ended with the final message...
    let response = read.response.expect("the final message");
    assert_eq!(read.leftover.trim(), "");
    // ...while the final webhook call is held by the receiver, unanswered.
    let last = hook.wait_for_final_call();
    assert_eq!(hook.answered(), 0);
    assert_eq!(last["type"], "success", "{last}");
    assert_eq!(last["response"], response);
    assert_eq!(last["job"], 7);
    hook.release();
    let line = service.wait_for_log_starting("final webhook call ");
    assert_eq!(line["message"], "final webhook call answered", "{line}");
    assert_eq!(line["render_id"], "heldhook01", "{line}");
    assert_eq!(hook.answered(), 1);
    assert!(service.stop().success());
}

#[test]
fn sigterm_waits_for_a_final_webhook_call_in_flight() {
    let hook = HeldWebhook::start();
    let mut service = Service::start(&[]);
    let read = post_like_client(&service.url, &hooked_payload(&hook, "heldhook02"));
    assert!(read.response.is_some(), "{:?}", read.error);
    hook.wait_for_final_call();
    unsafe { libc::kill(service.child.id() as i32, libc::SIGTERM) };
    service.wait_for_log_starting("waiting for in-flight final webhook calls");
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "the service exited with a final webhook call in flight"
    );
    hook.release();
    let mut status = None;
    wait_until("the service to exit", || {
        status = service.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success());
    let line = service.wait_for_log_starting("final webhook call ");
    assert_eq!(line["message"], "final webhook call answered", "{line}");
    assert_eq!(hook.answered(), 1);
    // The service stopped waiting only once the call had been answered.
    let logs = service.log_text();
    let (answered, complete) = (
        logs.find("final webhook call answered").unwrap(),
        logs.find("shutdown complete").expect("a complete shutdown"),
    );
    assert!(answered < complete, "{logs}");
}

/// The bars video, on a server that holds it until the test says how to answer.
fn held_video() -> HeldFile {
    generated_bars_video("bars30.mp4", 90, 30, 320, 180);
    HeldFile::start(
        "bars30.mp4",
        std::fs::read(generated_dir().join("bars30.mp4")).unwrap(),
    )
}

/// Starts an `Offthread` render of 10 frames from `src` (private, into bucket `wire-out`)
/// and returns the response as soon as its head arrived.
fn start_offthread_render(
    service: &Service,
    src: &str,
    render_id: &str,
    hook: Option<&HeldWebhook>,
) -> reqwest::Response {
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Offthread");
    payload["frameRange"] = json!([0, 9]);
    payload["renderIdOverride"] = json!(render_id);
    payload["outputBucket"] = json!("wire-out");
    payload["privacy"] = json!("private");
    payload["serializedInputPropsWithCustomSchema"] = json!(json!({"src": src}).to_string());
    if let Some(hook) = hook {
        payload["renderStatusWebhook"] = json!({"url": hook.url, "headers": {}, "data": null});
    }
    let response = runtime().block_on(async {
        reqwest::Client::new()
            .post(&service.url)
            .json(&payload)
            .send()
            .await
            .unwrap()
    });
    assert_eq!(response.status(), 200);
    response
}

/// A service on fake-gcs-server with the bucket `wire-out`.
fn gcs_service() -> (FakeGcs, Service) {
    let gcs = FakeGcs::start();
    gcs.create_bucket("wire-out");
    let service = Service::start_gcs(&gcs, &[]);
    (gcs, service)
}

/// Leaves while the render waits for its source, and only then lets the source answer.
fn leave_then(service: &Service, response: reqwest::Response, video: &HeldFile, serve: bool) {
    video.wait_requested();
    drop(response);
    service.wait_for_log_starting("the client left");
    if serve {
        video.release();
    } else {
        video.refuse();
    }
}

/// An `Offthread` render with a webhook whose client leaves while the render waits for its
/// source; the source then answers (`serve`) or refuses. Returns the final webhook call.
fn leave_a_hooked_render(render_id: &str, serve: bool) -> (FakeGcs, Service, Value) {
    let (gcs, service) = gcs_service();
    let hook = HeldWebhook::start();
    hook.release();
    let video = held_video();
    let response = start_offthread_render(&service, &video.url, render_id, Some(&hook));
    leave_then(&service, response, &video, serve);
    let last = hook.wait_for_final_call();
    (gcs, service, last)
}

#[test]
fn with_a_webhook_a_client_that_leaves_still_gets_its_render_uploaded_and_reported() {
    let (gcs, service, last) = leave_a_hooked_render("leftok0001", true);
    assert_eq!(last["type"], "success", "{last}");
    let key = "renders/leftok0001/out.mp4";
    let response = &last["response"];
    assert_eq!(response["cloudStorageUri"], format!("gs://wire-out/{key}"));
    assert_eq!(response["privacy"], "project-private");
    assert_eq!(
        response["publicUrl"],
        Value::Null,
        "media: null unless public"
    );
    let object = gcs.object("wire-out", key).expect("the output");
    assert_eq!(response["size"], object["size"]);
    assert_eq!(gcs.keys("wire-out", "renders/leftok0001/"), [key]);
    let local = service.tmp.path().join("left.mp4");
    std::fs::write(&local, gcs.download("wire-out", key)).unwrap();
    let frames = RgbFrames::decode(&local);
    for k in 0..10 {
        assert_eq!(frames.frame_number(k), k as u64, "output frame {k}");
    }
    assert_eq!(
        service.log_lines_starting("the client left")[0]["message"],
        "the client left: the render goes on and reports to its webhook"
    );
}

#[test]
fn with_a_webhook_a_render_that_fails_after_its_client_left_leaves_error_txt() {
    let (gcs, _service, last) = leave_a_hooked_render("lefterr001", false);
    assert_eq!(last["type"], "error", "{last}");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(message.contains("OffthreadVideo"), "{message}");
    assert_eq!(
        gcs.keys("wire-out", "renders/lefterr001/"),
        ["renders/lefterr001/error.txt"],
        "error.txt and no output"
    );
    let txt: Value =
        serde_json::from_slice(&gcs.download("wire-out", "renders/lefterr001/error.txt")).unwrap();
    assert_eq!(txt["message"], message);
    assert_eq!(txt["type"], "renderer");
}

#[test]
fn without_a_webhook_a_client_that_leaves_cancels_its_render() {
    let (gcs, service) = gcs_service();
    let video = held_video();
    let response = start_offthread_render(&service, &video.url, "leftcan001", None);
    leave_then(&service, response, &video, true);
    // The slot frees only once the cancelled render has settled.
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 1]);
    payload["outputBucket"] = json!("wire-out");
    let mut read = None;
    wait_until("the slot to free", || {
        let r = post_like_client(&service.url, &payload);
        let busy = r.status == 429;
        read = Some(r);
        !busy
    });
    let read = read.unwrap();
    assert!(read.response.is_some(), "{:?}", read.error);
    assert!(service.temp_entries("cloudrun-render-work-").is_empty());
    assert_eq!(
        gcs.keys("wire-out", "renders/leftcan001/"),
        Vec::<String>::new(),
        "neither output nor error.txt"
    );
    assert!(
        service
            .log_lines_starting("render failed")
            .iter()
            .any(|l| l["render_id"] == "leftcan001"),
        "the render was stopped, not finished"
    );
    assert_eq!(
        service.log_lines_starting("the client left")[0]["message"],
        "the client left: stopping its render"
    );
}

#[test]
fn a_private_still_has_a_public_url_and_its_storage_uri_is_escaped_like_nodes() {
    let (gcs, service) = gcs_service();
    let payload = json!({
        "type": "still",
        "serveUrl": format!("{}/site", fixture_server()),
        "composition": "Stills",
        "serializedInputPropsWithCustomSchema": "{}",
        "imageFormat": "jpeg",
        "jpegQuality": 72.5,
        "frame": 0,
        "scale": 1,
        "outputBucket": "wire-out",
        "outName": "thumbs/a b\"#<>?`{}ü%^.jpeg",
        "privacy": "private",
        "envVariables": {},
        "chromiumOptions": {},
        "logLevel": "info",
        "clientVersion": "4.0.270",
        "downloadBehavior": {"type": "play-in-browser"},
        "renderIdOverride": "escapes001",
    });
    let read = post_like_client(&service.url, &payload);
    let response = read.response.unwrap_or_else(|| panic!("{:?}", read.error));
    assert_eq!(response["privacy"], "project-private");
    // What Node 20 prints for `u = new URL("gs://wire-out"); u.pathname = key; u.href`, and
    // for the storage client's publicUrl() (encodeURIComponent).
    assert_eq!(
        response["cloudStorageUri"],
        "gs://wire-out/renders/escapes001/thumbs/a%20b%22%23%3C%3E%3F%60%7B%7D%C3%BC%^.jpeg"
    );
    assert_eq!(
        response["publicUrl"],
        "https://storage.googleapis.com/wire-out/renders%2Fescapes001%2Fthumbs%2Fa%20b%22%23%3C%3E%3F%60%7B%7D%C3%BC%25%5E.jpeg"
    );
    let key = "renders/escapes001/thumbs/a b\"#<>?`{}ü%^.jpeg";
    assert_eq!(gcs.keys("wire-out", "renders/escapes001/"), [key]);
    assert_eq!(&gcs.download("wire-out", key)[..3], [0xff, 0xd8, 0xff]);
}
