//! The service over real HTTP, read the way the real client reads it.

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_media_render_streams_progress_and_a_response_the_client_can_parse() {
    let service = Service::start(&[]);
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 59]);
    payload["renderIdOverride"] = json!("httptest01");
    let read = post_like_client(&service.url, &payload);

    assert_eq!(read.status, 200);
    assert_eq!(read.content_type.as_deref(), Some("text/html"));
    assert!(read.error.is_none(), "error: {:?}", read.error);
    let response = read.response.clone().expect("a final response");
    assert_eq!(response["type"], "success");
    assert_eq!(response["renderId"], "httptest01");
    assert_eq!(response["bucketName"], "test-bucket");
    assert_eq!(response["privacy"], "public-read");
    assert_eq!(
        response["cloudStorageUri"],
        "gs://test-bucket/renders/httptest01/out.mp4"
    );
    // Progress only ever rises, and the line right before the response says 1, whatever the
    // machine's speed (post_like_client already checked one message per read, spaced).
    assert!(read.progress.len() >= 2, "{:?}", read.progress);
    assert!(
        read.progress.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        read.progress
    );
    let [.., before_last, last] = read.body_reads.as_slice() else {
        panic!("{:?}", read.body_reads)
    };
    assert_eq!(before_last.text, "{\"onProgress\":1}\n");
    assert!(last.text.starts_with("{\"response\":"), "{}", last.text);

    let file = service.object("test-bucket", "renders/httptest01/out.mp4");
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(response["size"], size.to_string());
    let probe = ffprobe(&file);
    let v = video_stream(&probe);
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["width"], 640);
    assert_eq!(v["height"], 360);
    assert_eq!(v["pix_fmt"], "yuv420p");
    assert_eq!(v["nb_read_frames"], "60");
    assert_eq!(v["r_frame_rate"], "30/1");
    let duration: f64 = probe.format["duration"].as_str().unwrap().parse().unwrap();
    assert!((duration - 2.0).abs() < 0.05, "duration {duration}");

    let frames = RgbFrames::decode(&file);
    for k in [0usize, 1, 17, 37, 59] {
        assert_eq!(frames.frame_number(k), k as u64, "output frame {k}");
        // The bottom half's colour is a function of the frame too.
        let expected = [((k * 2) % 256) as u8, 128, (255 - (k * 2) % 256) as u8];
        assert_close(
            frames.pixel(k, 320, 300),
            expected,
            12,
            &format!("frame {k} bottom colour"),
        );
    }
    assert!(service.stop().success());
}

#[test]
fn bad_payloads_get_the_error_object() {
    let service = Service::start(&[]);
    let site = format!("{}/site", fixture_server());

    let mut bad_codec = media_payload(&site, "Frames");
    bad_codec["codec"] = json!("h266");
    let read = post_like_client(&service.url, &bad_codec);
    let error = read.error.expect("an error object");
    assert_eq!(error["type"], "error");
    assert!(
        error["message"].as_str().unwrap().contains("codec"),
        "{error}"
    );
    assert!(error["name"].is_string() && error["stack"].is_string());
    assert!(read.response.is_none());

    let read = post_like_client(&service.url, &json!({"type": "video"}));
    assert!(
        read.error.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("media")
    );

    // The service must never read its own disk for a caller: `fixtures/site` is a bundle the
    // service could open from its working directory (the CLI would render it).
    for url in ["file:///etc", "/work", "fixtures/site"] {
        let read = post_like_client(&service.url, &media_payload(url, "Frames"));
        let error = read.error.expect("refused");
        assert_eq!(
            error["message"],
            format!(
                "The serve URL \"{url}\" is not an http(s) URL. Over HTTP only http:// and https:// serve URLs are accepted."
            )
        );
        assert!(read.response.is_none());
    }
    // Once the third refusal is logged, so is anything logged before it.
    wait_until("the refusals to be logged", || {
        service.log_lines_starting("render failed").len() == 3
    });
    assert!(
        service.log_lines("rendering").is_empty(),
        "nothing was rendered"
    );

    let read = post_like_client(&service.url, &media_payload(&site, "Nope"));
    let error = read.error.expect("unknown composition");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("Nope") && message.contains("Frames"),
        "{message}"
    );

    // A failed render leaves error.txt and no output.
    let mut failing = media_payload(&site, "Nope");
    failing["renderIdOverride"] = json!("failed0001");
    post_like_client(&service.url, &failing);
    let error_txt = service.object("test-bucket", "renders/failed0001/error.txt");
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(error_txt).unwrap()).unwrap();
    assert_eq!(body["type"], "renderer");
    assert!(body["message"].as_str().unwrap().contains("Nope"));
    assert!(
        !service
            .object("test-bucket", "renders/failed0001/out.mp4")
            .exists()
    );

    let health = runtime()
        .block_on(reqwest::get(format!("{}/healthz", service.url)))
        .unwrap();
    assert_eq!(health.status(), 200);
}
