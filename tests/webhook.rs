//! `renderStatusWebhook` during real renders, against receivers that misbehave: the render,
//! its answer and its output never depend on them.

mod common;

use common::*;
use serde_json::{Value, json};

fn payload_with_webhook(render_id: &str, url: &str) -> Value {
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 29]);
    payload["renderIdOverride"] = json!(render_id);
    payload["renderStatusWebhook"] = json!({
        "url": url,
        "headers": {},
        "data": null,
        "webhookProgressInterval": 0.1,
    });
    payload
}

fn assert_rendered(service: &Service, read: &ClientRead, render_id: &str) {
    let response = read.response.as_ref().unwrap_or_else(|| {
        panic!("the render failed: {:?}", read.error);
    });
    assert_eq!(response["type"], "success");
    let out = service.object("test-bucket", &format!("renders/{render_id}/out.mp4"));
    assert_eq!(video_stream(&ffprobe(&out))["nb_read_frames"], "30");
    assert!(
        !service
            .object("test-bucket", &format!("renders/{render_id}/error.txt"))
            .exists()
    );
}

#[test]
fn a_receiver_that_answers_500_costs_the_render_nothing() {
    let service = Service::start(&[]);
    let hook = WebhookReceiver::answering(WebhookAnswer::Status(500));
    let read = post_like_client(&service.url, &payload_with_webhook("hook500001", &hook.url));
    assert_rendered(&service, &read, "hook500001");
    // Every call failed, and each was still made: progress up to 1, then the final one.
    let calls = hook.calls_until_final();
    assert_eq!(calls.last().unwrap().json()["type"], "success");
    let progress: Vec<f64> = calls[..calls.len() - 1]
        .iter()
        .map(|c| c.json()["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(progress.last(), Some(&1.0), "{progress:?}");
    let failures = || {
        let mut lines = service.log_lines_starting("a progress webhook call failed: ");
        lines.extend(service.log_lines_starting("final webhook call failed: "));
        lines
    };
    wait_until("a log line for each failed call", || {
        failures().len() == calls.len()
    });
    for line in failures() {
        assert_eq!(line["url"], hook.url.as_str());
        assert!(
            line["message"]
                .as_str()
                .unwrap()
                .ends_with("it answered with 500 Internal Server Error"),
            "{line}"
        );
    }
}

#[test]
fn a_receiver_that_is_not_there_costs_the_render_nothing() {
    let service = Service::start(&[]);
    let nobody = ClosedPort::new();
    let url = format!("http://127.0.0.1:{}/hook", nobody.port);
    let read = post_like_client(&service.url, &payload_with_webhook("hookgone01", &url));
    assert_rendered(&service, &read, "hookgone01");
    // At least the progress call at 1 and the final call were tried, and each failure logged.
    // The final call's failure is logged last.
    service.wait_for_log_starting("final webhook call failed: ");
    assert!(
        !service
            .log_lines_starting("a progress webhook call failed: ")
            .is_empty()
    );
}
