//! OffthreadVideo: pages show video frames the host decodes with libav and serves on /proxy.

mod common;

use common::*;
use serde_json::{Value, json};

fn render_offthread(
    service: &Service,
    src: &str,
    offset: u64,
    frames: [u64; 2],
    id: &str,
) -> RgbFrames {
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Offthread");
    payload["frameRange"] = json!(frames);
    payload["renderIdOverride"] = json!(id);
    payload["serializedInputPropsWithCustomSchema"] =
        json!(json!({"src": src, "offset": offset}).to_string());
    let read = post_like_client(&service.url, &payload);
    assert!(read.response.is_some(), "render failed: {:?}", read.error);
    RgbFrames::decode(&service.object("test-bucket", &format!("renders/{id}/out.mp4")))
}

#[test]
fn each_frame_shows_the_source_frame_at_its_time() {
    let src = generated_bars_video("bars30.mp4", 90, 30, 320, 180);
    let service = Service::start(&[]);
    let out = render_offthread(&service, &src, 0, [0, 29], "offthread1");
    for k in 0..30 {
        assert_eq!(out.frame_number(k), k as u64, "output frame {k}");
    }
    // Jumping into the middle (a seek), then walking forward.
    let out = render_offthread(&service, &src, 50, [0, 9], "offthread2");
    for k in 0..10 {
        assert_eq!(out.frame_number(k), 50 + k as u64, "output frame {k}");
    }
}

#[test]
fn the_proxy_answers_like_the_renderers() {
    let src = generated_bars_video("bars30.mp4", 90, 30, 320, 180);
    // The CLI serves a local bundle on loopback, /proxy included; use the library directly.
    runtime().block_on(async {
        let fetcher = std::sync::Arc::new(
            cloudrun_render::fetch::Fetcher::new(cloudrun_render::guard::PageGuard::new(None))
                .unwrap(),
        );
        let frames = std::sync::Arc::new(cloudrun_render::offthread::FrameServer::new(
            fetcher, None, None,
        ));
        let site = cloudrun_render::site::Site::open(
            &format!("{}/site", fixture_server()),
            cloudrun_render::site::Access::RemoteOnly,
            frames,
        )
        .await
        .unwrap();
        let base = format!("http://127.0.0.1:{}", site.proxy_port);
        let client = reqwest::Client::new();
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();

        let r = client
            .get(format!(
                "{base}/proxy?src={}&time=1.5&transparent=false&toneMapped=true",
                enc(&src)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "image/bmp");
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let bmp =
            image::load_from_memory_with_format(&r.bytes().await.unwrap(), image::ImageFormat::Bmp)
                .unwrap()
                .to_rgb8();
        assert_eq!(
            bar_code(320, 180, |x, y| bmp.get_pixel(x as u32, y as u32).0),
            45
        );

        let r = client
            .get(format!(
                "{base}/proxy?src={}&time=0.5&transparent=true&toneMapped=true",
                enc(&src)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "image/png");
        let png = image::load_from_memory(&r.bytes().await.unwrap())
            .unwrap()
            .to_rgba8();
        assert_eq!(
            bar_code(320, 180, |x, y| {
                let p = png.get_pixel(x as u32, y as u32).0;
                [p[0], p[1], p[2]]
            }),
            15
        );

        let r = client
            .get(format!("{base}/proxy?time=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert!(r.text().await.unwrap().contains("required"));

        let r = client
            .request(reqwest::Method::OPTIONS, format!("{base}/proxy"))
            .header("Access-Control-Request-Private-Network", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["access-control-allow-private-network"], "true");

        // Not a /proxy path: a remote site's loopback server serves nothing else.
        let r = client
            .get(format!("{base}/etc/passwd"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    });
}

#[test]
fn the_payload_sets_the_decoder_threads_and_the_cache_budget() {
    let src = generated_bars_video("bars30.mp4", 90, 30, 320, 180);
    let service = Service::start(&[]);
    let render = |id: &str, threads: Value, cache: Value| {
        let mut payload = media_payload(&format!("{}/site", fixture_server()), "Offthread");
        payload["frameRange"] = json!([0, 4]);
        payload["renderIdOverride"] = json!(id);
        payload["serializedInputPropsWithCustomSchema"] =
            json!(json!({"src": src, "offset": 10}).to_string());
        payload["offthreadVideoThreads"] = threads;
        payload["offthreadVideoCacheSizeInBytes"] = cache;
        let read = post_like_client(&service.url, &payload);
        assert!(read.response.is_some(), "render failed: {:?}", read.error);
        let out =
            RgbFrames::decode(&service.object("test-bucket", &format!("renders/{id}/out.mp4")));
        assert_eq!(out.frame_number(4), 14);
    };
    render("threads007", json!(7), json!(5_000_000));
    service.wait_for_render_end("threads007");
    let opened = service.log_lines("OffthreadVideo source opened");
    assert_eq!(opened.len(), 1, "one source, opened once");
    assert_eq!(opened[0]["decoder_threads"], 7);
    assert_eq!(opened[0]["cache_budget_bytes"], 5_000_000);

    render("threadsdef", Value::Null, Value::Null);
    service.wait_for_render_end("threadsdef");
    let opened = service.log_lines("OffthreadVideo source opened");
    assert_eq!(opened.len(), 2);
    assert_eq!(
        opened[1]["cache_budget_bytes"],
        128 * 1024 * 1024,
        "the default"
    );
    assert!(
        opened[1]["decoder_threads"].as_u64().unwrap() >= 1,
        "libav's choice"
    );
}
