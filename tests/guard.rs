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

/// `/redirect?to=…` on the fixture server.
fn redirect_to(url: &str) -> String {
    let to: String = url::form_urlencoded::byte_serialize(url.as_bytes()).collect();
    format!("{}/redirect?to={to}", fixture_server())
}

#[test]
fn a_redirect_cannot_take_a_page_where_it_may_not_go() {
    let service = Service::start(&[]);
    let allowed = format!("{}/site/index.html", fixture_server());
    assert!(page_reaches(&service, &redirect_to(&allowed)), "control");
    assert!(
        !page_reaches(&service, &redirect_to(&format!("{}/healthz", service.url))),
        "redirected to the service's own port"
    );
}

/// Renders `Offthread` with `src`; the error object if it failed.
fn offthread_error(service: &Service, src: &str) -> Option<serde_json::Value> {
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Offthread");
    payload["frameRange"] = json!([0, 1]);
    payload["serializedInputPropsWithCustomSchema"] = json!(json!({"src": src}).to_string());
    post_like_client(&service.url, &payload).error
}

#[test]
fn media_the_page_asks_us_to_fetch_cannot_reach_the_service_or_the_metadata_server() {
    let service = Service::start(&[]);
    let video = generated_bars_video("bars30.mp4", 90, 30, 320, 180);
    assert_eq!(
        offthread_error(&service, &redirect_to(&video)),
        None,
        "control"
    );
    let own_port = format!("http://127.0.0.1:{}/healthz", service.port);
    for (src, refused) in [
        (own_port.clone(), own_port.clone()),
        (redirect_to(&own_port), own_port.clone()),
        (
            redirect_to("http://169.254.169.254/computeMetadata/v1/token"),
            "http://169.254.169.254/computeMetadata/v1/token".to_string(),
        ),
    ] {
        let error = offthread_error(&service, &src).expect("the render fails");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("Could not load the OffthreadVideo frame"),
            "{src}: {error}"
        );
        // The page only learns that the frame failed; the log says why.
        let why = format!("{refused} is not reachable from a render");
        wait_until(&format!("{src}: {why}"), || {
            service
                .log_lines_starting("OffthreadVideo frame request failed")
                .iter()
                .any(|l| l["message"].as_str().unwrap().contains(&why))
        });
    }
}
