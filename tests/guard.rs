//! The host guard: pages must not reach the service itself or hosts an operator blocked.

mod common;

use common::*;
use serde_json::json;

/// Renders the `Browser` fixture with `reach` and tells whether the page could reach it.
fn page_reaches(service: &Service, url: &str) -> bool {
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Browser");
    payload["frameRange"] = json!(0);
    payload["serializedInputPropsWithCustomSchema"] = json!(json!({"reach": url}).to_string());
    payload["renderIdOverride"] = json!("guardcheck");
    let read = post_like_client(&service.url, &payload);
    assert!(read.response.is_some(), "render failed: {:?}", read.error);
    let frames = RgbFrames::decode(&service.object("test-bucket", "renders/guardcheck/out.mp4"));
    frames.pixel(0, 5 * 40 + 20, 20)[0] > 128
}

#[test]
fn pages_cannot_call_the_service_or_blocked_hosts() {
    // The same fixture server under another name, blocked by the operator.
    let fixture_port = fixture_server().rsplit(':').next().unwrap().to_string();
    let blocked = format!("localhost:{fixture_port}");
    let service = Service::start(&[("CLOUDRUN_RENDER_BLOCKED_HOSTS", &blocked)]);

    // Control: an allowed host is reachable, so a black square below means "blocked".
    assert!(page_reaches(
        &service,
        &format!("{}/site/index.html", fixture_server())
    ));
    assert!(
        !page_reaches(&service, &format!("{}/healthz", service.url)),
        "the service's own port"
    );
    let localhost_url = service.url.replace("127.0.0.1", "localhost");
    assert!(
        !page_reaches(&service, &format!("{localhost_url}/healthz")),
        "the service's port by name"
    );
    assert!(
        !page_reaches(
            &service,
            &format!("http://localhost:{fixture_port}/site/index.html")
        ),
        "an operator-blocked host"
    );
    assert!(service.stop().success());
}

#[test]
fn an_operator_can_allow_only_some_serve_url_hosts() {
    let service = Service::start(&[(
        "CLOUDRUN_RENDER_ALLOWED_SERVE_HOSTS",
        "*.example.com, 127.0.0.1",
    )]);
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 1]);
    assert!(
        post_like_client(&service.url, &payload).response.is_some(),
        "an allowed host renders"
    );
    let other = format!(
        "{}/site",
        fixture_server().replace("127.0.0.1", "localhost")
    );
    let read = post_like_client(&service.url, &media_payload(&other, "Frames"));
    let error = read.error.expect("refused");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("\"localhost\" is not allowed"),
        "{error}"
    );
}
