//! Process lifetime: no Chromium outlives the service, a dead browser is replaced.

mod common;

use std::time::{Duration, Instant};

use common::crash::group_members;
use common::*;
use serde_json::json;

/// Live (non-zombie) processes whose parent is `pid`.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let mut fields = stat.rsplit(')').next().unwrap().split_whitespace();
        let state = fields.next().unwrap().to_string();
        let ppid: u32 = fields.next().unwrap().parse().unwrap();
        if ppid == pid && state != "Z" {
            let exe = std::fs::read_link(format!("/proc/{child}/exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            out.push((child, exe));
        }
    }
    out
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real Chromium binary the service started (not Debian's wrapper script).
fn service_browser(service: &Service) -> u32 {
    let kids = children(service.child.id());
    let browsers: Vec<_> = kids
        .iter()
        .filter(|(_, exe)| exe.starts_with("/usr/lib/chromium/"))
        .collect();
    assert_eq!(
        browsers.len(),
        1,
        "exactly one warm browser, started directly: {kids:?}"
    );
    browsers[0].0
}

#[test]
fn the_browser_dies_with_the_service_on_sigterm() {
    let _alone = timing_sensitive();
    let service = Service::start(&[]);
    let browser = service_browser(&service);
    assert!(!group_members(browser).is_empty());
    assert!(service.stop().success());
    wait_until(
        "the browser's processes to exit",
        Duration::from_secs(5),
        || group_members(browser).is_empty(),
    );
}

#[test]
fn the_browser_dies_with_the_service_on_sigkill() {
    let _alone = timing_sensitive();
    let mut service = Service::start(&[]);
    let browser = service_browser(&service);
    service.child.kill().unwrap();
    service.child.wait().unwrap();
    wait_until(
        "the browser's processes to exit",
        Duration::from_secs(5),
        || group_members(browser).is_empty(),
    );
}

#[test]
fn a_dead_browser_is_replaced_and_leaves_nothing_behind() {
    let _alone = timing_sensitive();
    let service = Service::start(&[]);
    let first = service_browser(&service);
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    wait_until("the old browser to go", Duration::from_secs(5), || {
        group_members(first).is_empty()
    });

    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
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
    wait_until("the new browser to exit", Duration::from_secs(5), || {
        group_members(second).is_empty()
    });
}

/// Starts a media render of `SlowFrames` (slow on purpose) and returns the open response once
/// the first progress line arrived.
fn start_slow_render(service: &Service, render_id: &str, delay_ms: u64) -> reqwest::Response {
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "SlowFrames");
    payload["renderIdOverride"] = json!(render_id);
    payload["serializedInputPropsWithCustomSchema"] =
        json!(json!({"delayMs": delay_ms}).to_string());
    runtime().block_on(async {
        let mut resp = reqwest::Client::new()
            .post(&service.url)
            .json(&payload)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        loop {
            let chunk = resp.chunk().await.unwrap().expect("the stream ended early");
            if std::str::from_utf8(&chunk).unwrap().contains("onProgress") {
                break;
            }
        }
        resp
    })
}

/// Reads the rest of a stream and returns the last message.
fn last_message(mut resp: reqwest::Response) -> serde_json::Value {
    runtime().block_on(async {
        let mut last = String::new();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            last = String::from_utf8(chunk.to_vec()).unwrap();
        }
        serde_json::from_str(last.trim()).unwrap()
    })
}

#[test]
fn a_second_render_is_refused_at_once_not_queued() {
    let _alone = timing_sensitive();
    let service = Service::start(&[]);
    let running = start_slow_render(&service, "admission1", 200);
    let started = Instant::now();
    let second = runtime().block_on(async {
        reqwest::Client::new()
            .post(&service.url)
            .json(&media_payload(
                &format!("{}/site", fixture_server()),
                "Frames",
            ))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(second.status(), 429);
    assert!(started.elapsed() < Duration::from_secs(2));
    let body: serde_json::Value = runtime().block_on(second.json()).unwrap();
    assert_eq!(body["type"], "error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already rendering"),
        "{body}"
    );
    // The first render is unaffected, and its slot frees when it ends.
    assert!(last_message(running).get("response").is_some());
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 1]);
    assert!(post_like_client(&service.url, &payload).response.is_some());
}

#[test]
fn a_client_that_leaves_stops_its_render_within_two_seconds() {
    let _alone = timing_sensitive();
    let service = Service::start(&[]);
    let running = start_slow_render(&service, "leaver0001", 400);
    assert_eq!(
        service.temp_entries("cloudrun-render-work-").len(),
        1,
        "the render's work dir"
    );
    drop(running);
    let left = Instant::now();
    wait_until(
        "the work directory to be removed",
        Duration::from_secs(2),
        || {
            service.temp_entries("cloudrun-render-work-").is_empty()
                && service.temp_entries("cloudrun-render-media-").is_empty()
        },
    );
    assert!(left.elapsed() < Duration::from_secs(2));
    // Nothing was uploaded, not even error.txt, and the slot is free again.
    assert!(!service.object("test-bucket", "renders/leaver0001").exists());
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 1]);
    assert!(post_like_client(&service.url, &payload).response.is_some());
}

#[test]
fn sigterm_tells_running_clients_and_exits_in_time() {
    let _alone = timing_sensitive();
    let mut service = Service::start(&[]);
    let browser = service_browser(&service);
    let running = start_slow_render(&service, "sigterm001", 400);
    unsafe { libc::kill(service.child.id() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    let last = last_message(running);
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["name"], "ShutdownError");
    let status = loop {
        if let Some(s) = service.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    wait_until("the browser to exit", Duration::from_secs(2), || {
        group_members(browser).is_empty()
    });
    assert!(service.temp_entries("cloudrun-render-work-").is_empty());
}

#[test]
fn oversized_bodies_get_a_clear_413() {
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
    let body: serde_json::Value = runtime().block_on(resp.json()).unwrap();
    assert_eq!(body["type"], "error");
    assert!(
        body["message"].as_str().unwrap().contains("limited to"),
        "{body}"
    );
}

#[test]
fn logs_carry_the_cloud_trace_id() {
    let service = Service::start(&[("GOOGLE_CLOUD_PROJECT", "test-project")]);
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 1]);
    runtime().block_on(async {
        let resp = reqwest::Client::new()
            .post(&service.url)
            .header(
                "X-Cloud-Trace-Context",
                "0123456789abcdef0123456789abcdef/1;o=1",
            )
            .json(&payload)
            .send()
            .await
            .unwrap();
        resp.bytes().await.unwrap();
    });
    let logs = service.log_text();
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "rendering")
        .expect("a JSON log line for the render");
    assert_eq!(line["severity"], "INFO");
    assert_eq!(
        line["logging.googleapis.com/trace"],
        "projects/test-project/traces/0123456789abcdef0123456789abcdef"
    );
    assert!(line["render_id"].is_string());
}
