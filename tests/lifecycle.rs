//! Process lifetime: no Chromium outlives the service, a dead browser is replaced, admission,
//! clients that leave, and shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The real Chromium binary the service started (not Debian's wrapper script).
fn service_browser(service: &Service) -> u32 {
    let kids = children(service.child.id());
    let browsers: Vec<_> = kids
        .iter()
        .filter(|p| p.exe.starts_with("/usr/lib/chromium/"))
        .collect();
    assert_eq!(
        browsers.len(),
        1,
        "exactly one warm browser, started directly: {kids:?}"
    );
    browsers[0].pid
}

fn site() -> String {
    format!("{}/site", fixture_server())
}

/// A two-frame render: quick, for checking that the instance takes renders.
fn small_render() -> Value {
    let mut payload = media_payload(&site(), "Frames");
    payload["frameRange"] = json!([0, 1]);
    payload
}

/// Starts a media render of `SlowFrames` (each frame waits `delay_ms` in the page) and returns
/// the open stream once the first progress line arrived: the render is running.
fn start_slow_render(service: &Service, render_id: &str, delay_ms: u64) -> ClientStream {
    let mut payload = media_payload(&site(), "SlowFrames");
    payload["renderIdOverride"] = json!(render_id);
    payload["serializedInputPropsWithCustomSchema"] =
        json!(json!({"delayMs": delay_ms}).to_string());
    let mut stream = ClientStream::open(&service.url, &payload);
    assert_eq!(stream.status(), 200);
    let first = stream.next_message().expect("a first message");
    assert!(first.get("onProgress").is_some(), "{first}");
    stream
}

#[test]
fn the_browser_dies_with_the_service_on_sigterm() {
    let _shared = beside_timed_tests();
    let service = Service::start(&[]);
    let browser = service_browser(&service);
    assert!(!group_members(browser).is_empty());
    assert!(service.stop().success());
    wait_until("the browser's processes to exit", || {
        group_members(browser).is_empty()
    });
}

#[test]
fn the_browser_dies_with_the_service_on_sigkill() {
    let _shared = beside_timed_tests();
    let mut service = Service::start(&[]);
    let browser = service_browser(&service);
    service.child.kill().unwrap();
    service.child.wait().unwrap();
    wait_until("the browser's processes to exit", || {
        group_members(browser).is_empty()
    });
}

#[test]
fn a_dead_browser_is_replaced_and_leaves_nothing_behind() {
    let _shared = beside_timed_tests();
    let service = Service::start(&[]);
    let first = service_browser(&service);
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    wait_until("the old browser to go", || group_members(first).is_empty());

    let mut payload = media_payload(&site(), "Frames");
    payload["frameRange"] = json!([0, 4]);
    let read = post_like_client(&service.url, &payload);
    assert!(
        read.response.is_some(),
        "the render after the crash failed: {:?}",
        read.error
    );
    let second = service_browser(&service);
    assert_ne!(first, second);
    assert!(service.stop().success());
    wait_until("the new browser to exit", || {
        group_members(second).is_empty()
    });
}

#[test]
fn a_second_render_is_refused_at_once_not_queued() {
    let _shared = beside_timed_tests();
    let service = Service::start(&[]);
    let mut running = start_slow_render(&service, "admission1", 200);
    let second = post_like_client(&service.url, &small_render());
    assert_eq!(second.status, 429);
    let body = second.error.expect("an error object");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already rendering"),
        "{body}"
    );
    // Refused while the first still rendered, not after: its progress goes on after the 429.
    let next = running.next_message().expect("the first render goes on");
    assert!(next.get("onProgress").is_some(), "{next}");
    // The first render is unaffected, and its slot is free by the time its client has the
    // answer (as for Cloud Run, which sends the next request then).
    let first = running.finish();
    first.assert_framing();
    assert!(first.response.is_some(), "{:?}", first.error);
    let third = post_like_client(&service.url, &small_render());
    assert!(
        third.response.is_some(),
        "{} {:?}",
        third.status,
        third.error
    );
}

#[test]
fn the_slot_is_free_once_the_client_has_its_answer() {
    let _shared = beside_timed_tests();
    let service = Service::start(&[]);
    // A receiver that never answers: the render's last webhook call is still out when its
    // client reads the final message.
    let hook = WebhookReceiver::answering(WebhookAnswer::Never);
    let mut payload = small_render();
    payload["renderStatusWebhook"] = json!({"url": hook.url, "headers": {}, "data": null});
    let mut first = ClientStream::open(&service.url, &payload);
    while first
        .next_message()
        .expect("the final message")
        .get("response")
        .is_none()
    {}
    let next = post_like_client(&service.url, &small_render());
    assert!(next.response.is_some(), "{} {:?}", next.status, next.error);
}

#[test]
fn more_renders_at_once_when_the_operator_allows_them() {
    let _shared = beside_timed_tests();
    let service = Service::start(&[("CLOUDRUN_RENDER_MAX_RENDERS", "2")]);
    let one = start_slow_render(&service, "parallel01", 400);
    let two = start_slow_render(&service, "parallel02", 400);
    let third = post_like_client(&service.url, &small_render());
    assert_eq!(third.status, 429, "two slots, both taken");
    drop((one, two));
    let read = post_when_free(&service.url, &small_render());
    assert!(read.response.is_some(), "{:?}", read.error);
}

#[test]
fn a_still_holds_the_render_slot_while_it_renders() {
    let _shared = beside_timed_tests();
    let service = Service::start(&[]);
    // A still whose page never gets ready: it holds the slot until its client leaves.
    let mut still = still_payload(&site(), "Timeout");
    still["serializedInputPropsWithCustomSchema"] = json!(json!({"hangAt": 0}).to_string());
    still["delayRenderTimeoutInMilliseconds"] = json!(600_000);
    let mut running = ClientStream::open(&service.url, &still);
    // The head is sent once the request has its slot.
    assert_eq!(running.status(), 200);
    let media = post_like_client(&service.url, &small_render());
    assert_eq!(media.status, 429);
    let another_still = post_like_client(&service.url, &still_payload(&site(), "Stills"));
    assert_eq!(another_still.status, 429);
    drop(running);
    let read = post_when_free(&service.url, &small_render());
    assert!(read.response.is_some(), "{:?}", read.error);
}

#[test]
fn a_client_that_leaves_stops_its_render() {
    let _shared = beside_timed_tests();
    let service = Service::start(&[]);
    // 20 frames of 400 ms each: had it gone on, it would have run for 8 s and more.
    let running = start_slow_render(&service, "leaver0001", 400);
    assert_eq!(
        service.temp_entries("cloudrun-render-work-").len(),
        1,
        "the render's work dir"
    );
    drop(running);
    wait_until("the work directory to be removed", || {
        service.temp_entries("cloudrun-render-work-").is_empty()
            && service.temp_entries("cloudrun-render-media-").is_empty()
    });
    // Once the slot is free the render has settled: whatever it was going to upload is there.
    let mut next = small_render();
    next["renderIdOverride"] = json!("afterleave");
    let read = post_when_free(&service.url, &next);
    assert!(read.response.is_some(), "{:?}", read.error);
    assert!(
        !service.object("test-bucket", "renders/leaver0001").exists(),
        "nothing uploaded, not even error.txt"
    );
    // It stopped rather than ran to its end: a finished render logs its timings, and by the
    // next render's line every line before it has arrived.
    service.wait_for_render_end("afterleave");
    let finished: Vec<_> = service
        .log_lines("render timings")
        .iter()
        .map(|l| l["render_id"].clone())
        .collect();
    assert_eq!(finished, ["afterleave"]);
}

#[test]
fn sigterm_tells_running_clients_leaves_error_txt_and_exits_in_time() {
    let _alone = timing_sensitive();
    let mut service = Service::start(&[]);
    let browser = service_browser(&service);
    let running = start_slow_render(&service, "sigterm001", 400);
    service.terminate();
    let signalled = Instant::now();
    let read = running.finish();
    read.assert_framing();
    let last = read.error.expect("an error message");
    assert_eq!(last["name"], "ShutdownError", "{last}");
    let status = service.wait_exit();
    // Cloud Run sends SIGKILL 10 s after SIGTERM: this is the one deadline the suite checks.
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exited {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert!(status.success());
    wait_until("the browser to exit", || group_members(browser).is_empty());
    assert!(service.temp_entries("cloudrun-render-work-").is_empty());
    let error_txt: Value = serde_json::from_slice(
        &std::fs::read(service.object("test-bucket", "renders/sigterm001/error.txt"))
            .expect("error.txt for the stopped render"),
    )
    .unwrap();
    assert_eq!(error_txt["name"], "ShutdownError");
    assert_eq!(error_txt["message"], last["message"]);
    assert_eq!(error_txt["type"], "renderer");
}

#[test]
fn a_request_that_arrives_during_shutdown_gets_503() {
    let _shared = beside_timed_tests();
    let mut service = Service::start(&[]);
    // Begun before SIGTERM (so the connection stays open), complete only after it.
    let mut late = ClientStream::open_holding_body(&service.url, &small_render());
    late.wait_for_continue();
    service.terminate();
    service.wait_for_log("shutting down: stopping running renders");
    late.send_body();
    let read = late.finish();
    assert_eq!(read.status, 503);
    let error = read.error.expect("an error object");
    assert!(
        error["message"].as_str().unwrap().contains("shutting down"),
        "{error}"
    );
    assert!(service.wait_exit().success());
}

#[test]
fn oversized_bodies_get_a_clear_413() {
    let _shared = beside_timed_tests();
    let service = Service::start(&[]);
    let big = vec![b' '; 33 * 1024 * 1024];
    let resp = runtime().block_on(async {
        reqwest::Client::new()
            .post(&service.url)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap()
    });
    assert_eq!(resp.status(), 413);
    let body: Value = runtime().block_on(resp.json()).unwrap();
    assert_eq!(body["type"], "error");
    assert!(
        body["message"].as_str().unwrap().contains("limited to"),
        "{body}"
    );
}

#[test]
fn logs_carry_the_cloud_trace_id() {
    let _shared = beside_timed_tests();
    let service = Service::start(&[("GOOGLE_CLOUD_PROJECT", "test-project")]);
    runtime().block_on(async {
        let resp = reqwest::Client::new()
            .post(&service.url)
            .header(
                "X-Cloud-Trace-Context",
                "0123456789abcdef0123456789abcdef/1;o=1",
            )
            .json(&small_render())
            .send()
            .await
            .unwrap();
        resp.bytes().await.unwrap();
    });
    let line = service.wait_for_log_where("rendering", |_| true);
    assert_eq!(line["severity"], "INFO");
    assert_eq!(
        line["logging.googleapis.com/trace"],
        "projects/test-project/traces/0123456789abcdef0123456789abcdef"
    );
    assert!(line["render_id"].is_string());
}
