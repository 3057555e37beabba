//! The browser stage against the fixture sites: every frame option, every error, recovery.
//! One warm renderer per test binary, as in production; tests share it concurrently.

mod common;

use std::time::{Duration, Instant};

use cloudrun_render::browser::PageGuard;
use cloudrun_render::options::{
    ChromiumOptions, Concurrency, FrameRange, SiteOptions, StillImageFormat, StillOptions,
    VideoImageFormat,
};
use cloudrun_render::render::{self, Renderer};
use cloudrun_render::site::Access;
use common::*;
use tokio_util::sync::CancellationToken;

#[test]
fn every_frame_lands_in_order() {
    let r = render(&media("Frames"));
    assert_eq!(r.outcome.frames, 90);
    assert_frames(&r.path, &(0..90).collect::<Vec<_>>());
}

#[test]
fn two_tabs_share_the_frames_and_the_encoder_still_gets_them_in_order() {
    let mut m = media("SlowFrames");
    m.concurrency = Concurrency::Count(2.0);
    let r = render(&m);
    assert_frames(&r.path, &(0..20).collect::<Vec<_>>());
}

#[test]
fn frame_range_and_every_nth_frame() {
    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(10, Some(39))]);
    m.every_nth_frame = 3;
    let r = render(&m);
    assert_frames(&r.path, &(10..=39).step_by(3).collect::<Vec<_>>());
    let probe = ffprobe(&r.path);
    assert_eq!(video_stream(&probe)["r_frame_rate"], "10/1");

    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(0, Some(2)), (85, None)]);
    assert_frames(&render(&m).path, &[0, 1, 2, 85, 86, 87, 88, 89]);

    let mut m = media("Frames");
    m.frame_range = FrameRange::Single(42);
    assert_frames(&render(&m).path, &[42]);

    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(80, Some(95))]);
    let e = fail(&site(), &m);
    assert!(
        e.to_string()
            .contains("frame range 80-95 is not inbetween 0-89"),
        "{e}"
    );
}

#[test]
fn scale_and_forced_size() {
    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(0, Some(4))]);
    m.scale = 0.5;
    let r = render(&m);
    assert_eq!((r.outcome.width, r.outcome.height), (320, 180));
    assert_frames(&r.path, &[0, 1, 2, 3, 4]);

    m.scale = 1.5;
    let r = render(&m);
    assert_eq!((r.outcome.width, r.outcome.height), (960, 540));
    assert_frames(&r.path, &[0, 1, 2, 3, 4]);

    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(5, Some(7))]);
    m.overrides.width = Some(200);
    m.overrides.height = Some(100);
    let r = render(&m);
    assert_eq!((r.outcome.width, r.outcome.height), (200, 100));
    assert_frames(&r.path, &[5, 6, 7]);

    // H.264 needs even sizes: 641x361 is rendered at 640x360.
    let r = render(&media("FramesOdd"));
    assert_eq!((r.outcome.width, r.outcome.height), (640, 360));
    assert_frames(&r.path, &(0..30).collect::<Vec<_>>());
}

#[test]
fn forced_fps_and_duration() {
    let mut m = media("Frames");
    m.overrides.fps = Some(15.0);
    m.overrides.duration_in_frames = Some(6);
    let r = render(&m);
    let probe = ffprobe(&r.path);
    assert_eq!(video_stream(&probe)["r_frame_rate"], "15/1");
    assert_frames(&r.path, &[0, 1, 2, 3, 4, 5]);
}

#[test]
fn input_props_dates_metadata_and_env() {
    let mut s = site();
    s.serialized_input_props =
        r##"{"color":"#00ff00","date":"remotion-date:2024-05-01T00:00:00.000Z"}"##.into();
    let mut m = media("Props");
    m.frame_range = FrameRange::Single(0);
    let r = render_with(&s, &m).unwrap();
    let f = RgbFrames::decode(&r.path);
    assert_close(f.pixel(0, 300, 170), [0, 255, 0], 12, "props.color");
    // The date prop arrived as a Date: the top-left square is green, not blue.
    assert_close(f.pixel(0, 10, 10), [0, 255, 0], 12, "props.date revived");

    let r = render(&media("Metadata"));
    assert_eq!((r.outcome.width, r.outcome.height), (320, 240));
    assert_eq!(r.outcome.frames, 12);
    let probe = ffprobe(&r.path);
    assert_eq!(video_stream(&probe)["r_frame_rate"], "25/1");
    let f = RgbFrames::decode(&r.path);
    assert_close(
        f.pixel(5, 160, 120),
        [0, 255, 0],
        12,
        "calculateMetadata props won",
    );

    let mut s = site();
    s.env_variables
        .insert("FIXTURE_COLOR".into(), "#0000ff".into());
    let r = render_with(&s, &media("EnvVars")).unwrap();
    let f = RgbFrames::decode(&r.path);
    assert_close(f.pixel(3, 160, 90), [0, 0, 255], 12, "env variable");
}

#[test]
fn png_frames_and_jpeg_quality() {
    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(0, Some(9))]);
    m.image_format = Some(VideoImageFormat::Png);
    assert_frames(&render(&m).path, &(0..10).collect::<Vec<_>>());

    let still = |q: u8| {
        let mut s = StillOptions::new("Bench");
        s.image_format = StillImageFormat::Jpeg;
        s.jpeg_quality = q;
        s.frame = 30;
        runtime()
            .block_on(renderer().render_still(
                &site(),
                &s,
                Access::RemoteOnly,
                &CancellationToken::new(),
            ))
            .unwrap()
            .1
    };
    let low = still(10);
    let high = still(95);
    assert!(low.starts_with(&[0xff, 0xd8]) && high.starts_with(&[0xff, 0xd8]));
    assert!(
        low.len() * 2 < high.len(),
        "quality 10: {} bytes, 95: {} bytes",
        low.len(),
        high.len()
    );
}

#[test]
fn slow_delay_render_is_waited_for() {
    let mut s = site();
    s.serialized_input_props = r#"{"delayMs":400}"#.into();
    let mut m = media("SlowFrames");
    m.frame_range = FrameRange::Ranges(vec![(0, Some(4))]);
    // One tab takes the five frames one after another, however many CPUs the machine has.
    m.concurrency = Concurrency::Count(1.0);
    let started = Instant::now();
    let r = render_with(&s, &m).unwrap();
    // Each frame is drawn only once its delay clears: a capture that did not wait would show
    // the frame before it.
    assert_frames(&r.path, &[0, 1, 2, 3, 4]);
    // A lower bound: a slower machine only adds to it.
    assert!(started.elapsed() >= Duration::from_millis(5 * 400));
}

#[test]
fn a_delay_render_timeout_names_the_open_handle() {
    let mut s = site();
    s.timeout = Duration::from_millis(8000);
    let e = fail(&s, &media("Timeout"));
    let message = e.to_string();
    assert!(
        message.contains("fixture handle that never clears"),
        "{message}"
    );
    // The page's timer is the timeout less 2 s: the configured timeout is the one that fired.
    assert!(
        message.contains("was called but not cleared after 6000ms"),
        "{message}"
    );
}

#[test]
fn page_exceptions_cancel_render_and_alert_fail_the_render() {
    let e = fail(&site(), &media("Throws"));
    assert_eq!(e.name(), "TypeError");
    assert!(e.to_string().contains("fixture exploded at frame 5"), "{e}");
    assert!(e.stack().contains("at "), "the page's stack: {}", e.stack());

    let e = fail(&site(), &media("Cancel"));
    assert!(e.to_string().contains("cancelled by the fixture"), "{e}");

    let e = fail(&site(), &media("Alert"));
    assert!(
        e.to_string().contains(
            "alert(\"fixture alert\") was called. It cannot be called in a headless browser."
        ),
        "{e}"
    );

    // The warm browser is still healthy, and still the same one.
    let generation = renderer().browser().generation();
    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(0, Some(2))]);
    assert_frames(&render(&m).path, &[0, 1, 2]);
    assert_eq!(renderer().browser().generation(), generation);
}

#[test]
fn sites_that_are_not_compatible() {
    let e = fail(&site(), &media("Nope"));
    let message = e.to_string();
    assert!(
        message.contains("Could not find composition with ID Nope"),
        "{message}"
    );
    assert!(
        message.contains("Frames") && message.contains("Metadata"),
        "{message}"
    );

    let e = fail(
        &SiteOptions::new(format!("{}/not-remotion", fixture_server())),
        &media("Frames"),
    );
    assert!(
        e.to_string()
            .contains("window.getStaticCompositions is defined"),
        "{e}"
    );
    assert!(
        e.to_string().contains("not a Remotion bundle"),
        "the page's content is shown: {e}"
    );

    let e = fail(
        &SiteOptions::new(format!("{}/old-site", fixture_server())),
        &media("Frames"),
    );
    assert!(
        e.to_string()
            .contains("Found version: 10 - Required version: 11"),
        "{e}"
    );

    let e = fail(
        &SiteOptions::new(format!("{}/status/404/", fixture_server())),
        &media("Frames"),
    );
    assert!(e.to_string().contains("HTTP status 404"), "{e}");

    let closed = ClosedPort::new();
    let e = fail(
        &SiteOptions::new(format!("http://127.0.0.1:{}/", closed.port)),
        &media("Frames"),
    );
    assert!(e.to_string().contains("ERR_CONNECTION_REFUSED"), "{e}");

    let e = fail(&SiteOptions::new("file:///etc/"), &media("Frames"));
    assert!(e.to_string().contains("not an http(s) URL"), "{e}");
}

#[test]
fn concurrency_is_validated_against_the_cpus() {
    let cpus = cloudrun_render::system::cpu_count();
    let mut m = media("Frames");
    m.concurrency = Concurrency::Count(cpus as f64 + 1.0);
    let e = fail(&site(), &m);
    assert!(
        e.to_string()
            .contains(&format!("Maximum for --concurrency is {cpus}")),
        "{e}"
    );
    m.concurrency = Concurrency::Count(0.0);
    assert!(
        fail(&site(), &m)
            .to_string()
            .contains("Minimum for concurrency is 1.")
    );
}

#[test]
fn a_frame_that_asks_for_a_retry_is_rendered_on_a_new_tab() {
    let r = render(&media("Retry"));
    assert_frames(&r.path, &(0..10).collect::<Vec<_>>());
}

#[test]
fn a_crashed_tab_is_replaced_and_the_video_is_still_right() {
    let mut s = site();
    s.serialized_input_props = r#"{"delayMs":100}"#.into();
    let m = media("SlowFrames");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mp4");
    let (tx, mut rx) = render::progress::channel();
    // A browser of its own: every renderer process of it is killed, and the other tests of
    // this binary render on the shared one meanwhile.
    let own = runtime()
        .block_on(Renderer::start(PageGuard::new(None)))
        .unwrap();
    let browser_pid = runtime().block_on(own.browser().pid()).unwrap();
    let crasher = std::thread::spawn(move || {
        runtime().block_on(async {
            // Wait until a few frames are in, then kill the renderer processes mid-render.
            while rx.borrow().rendered < 5 {
                rx.changed().await.unwrap();
            }
        });
        let victims = renderer_processes(browser_pid);
        assert!(!victims.is_empty(), "no renderer process found");
        for pid in &victims {
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        (victims, rx.borrow().rendered)
    });
    let outcome = runtime()
        .block_on(own.render_media(
            &s,
            &m,
            Access::RemoteOnly,
            &path,
            &tx,
            &CancellationToken::new(),
        ))
        .expect("the render survives a crashed tab");
    let (victims, rendered_at_kill) = crasher.join().unwrap();
    assert!(rendered_at_kill < 20, "the kill came after the last frame");
    let now = renderer_processes(browser_pid);
    assert!(
        victims.iter().all(|v| !now.contains(v)),
        "the killed renderers are gone: {victims:?} {now:?}"
    );
    assert_eq!(outcome.frames, 20);
    assert_frames(&path, &(0..20).collect::<Vec<_>>());
    runtime().block_on(own.shutdown());
}

#[test]
fn chromium_options_reach_the_page() {
    let read = |s: &SiteOptions| {
        let mut m = media("Browser");
        m.frame_range = FrameRange::Single(0);
        let r = render_with(s, &m).unwrap();
        let f = RgbFrames::decode(&r.path);
        (0..6)
            .map(|i| f.pixel(0, i * 40 + 20, 20)[0] > 128)
            .collect::<Vec<_>>()
    };
    let plain = read(&site());
    assert_eq!(
        plain,
        vec![false, false, true, false, false, false],
        "defaults (WebGL through SwiftShader)"
    );

    let mut s = site();
    s.chromium = ChromiumOptions {
        user_agent: Some("Mozilla/5.0 cloudrun-render-test-agent".into()),
        dark_mode: true,
        ..ChromiumOptions::headless_default()
    };
    assert_eq!(read(&s)[..2], [true, true], "user agent and dark mode");

    // The site is on 127.0.0.1; localhost is another origin and the fixture server sends no
    // CORS headers, so the fetch only works with web security off (a browser of its own).
    let cross = format!(
        "{}/site/index.html",
        fixture_server().replace("127.0.0.1", "localhost")
    );
    let mut s = site();
    s.serialized_input_props = serde_json::json!({"crossOrigin": cross}).to_string();
    assert!(!read(&s)[3], "cross-origin fetch is blocked by default");
    s.chromium.disable_web_security = true;
    assert!(read(&s)[3], "disableWebSecurity allows it");
}

#[test]
fn a_self_signed_serve_url_needs_ignore_certificate_errors() {
    let mut s = SiteOptions::new(format!("{}/site/index.html", https_fixture_server()));
    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(0, Some(4))]);
    let refused = fail(&s, &m).to_string();
    assert!(
        refused.contains("ERR_CERT"),
        "the certificate is checked by default: {refused}"
    );
    s.chromium.ignore_certificate_errors = true;
    let r = render_with(&s, &m).unwrap();
    assert_frames(&r.path, &[0, 1, 2, 3, 4]);

    // An https page still loads OffthreadVideo frames from our plain-http loopback /proxy.
    let src = generated_bars_video("bars30.mp4", 90, 30, 320, 180);
    s.serialized_input_props = serde_json::json!({"src": src, "offset": 20}).to_string();
    let mut m = media("Offthread");
    m.frame_range = FrameRange::Ranges(vec![(0, Some(4))]);
    let frames = RgbFrames::decode(&render_with(&s, &m).unwrap().path);
    for k in 0..5 {
        assert_eq!(frames.frame_number(k), 20 + k as u64, "output frame {k}");
    }
}

#[test]
fn tabs_are_closed_after_each_render_and_failure() {
    // A renderer of its own, so other tests' tabs do not count.
    runtime().block_on(async {
        let own = Renderer::start(PageGuard::new(None)).await.unwrap();
        let baseline = own.browser().page_count().await.unwrap();
        let mut m = media("Frames");
        m.frame_range = FrameRange::Ranges(vec![(0, Some(3))]);
        m.concurrency = Concurrency::Count(2.0);
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = render::progress::channel();
        let cancel = CancellationToken::new();
        own.render_media(
            &site(),
            &m,
            Access::RemoteOnly,
            &dir.path().join("a.mp4"),
            &tx,
            &cancel,
        )
        .await
        .unwrap();
        assert_eq!(own.browser().page_count().await.unwrap(), baseline);
        let m = media("Throws");
        own.render_media(
            &site(),
            &m,
            Access::RemoteOnly,
            &dir.path().join("b.mp4"),
            &tx,
            &cancel,
        )
        .await
        .unwrap_err();
        // Tabs of a failed render are closed in the background.
        wait_until_async("the failed render's tabs to close", || async {
            own.browser().page_count().await.unwrap() == baseline
        })
        .await;
        own.shutdown().await;
    });
}

#[test]
fn a_frozen_page_cannot_hang_the_render() {
    let mut s = site();
    s.timeout = Duration::from_millis(3000);
    let e = fail(&s, &media("Hang"));
    // The render's own deadline ended it (the test would hang without one).
    assert!(e.to_string().contains("Timed out after 3000ms"), "{e}");
    // The frozen tab is gone and the warm browser still renders.
    let mut m = media("Frames");
    m.frame_range = FrameRange::Ranges(vec![(0, Some(2))]);
    assert_frames(&render(&m).path, &[0, 1, 2]);
}

#[test]
fn a_second_still_of_the_same_composition_reuses_the_warm_tab() {
    let same = site();
    let mut other = site();
    other.serialized_input_props = r#"{"x":1}"#.into();
    runtime().block_on(async {
        let own = Renderer::start(PageGuard::new(None)).await.unwrap();
        let baseline = own.browser().page_count().await.unwrap();
        let cancel = CancellationToken::new();
        let shot = |frame: i64, id: &'static str| {
            let mut s = StillOptions::new(id);
            s.frame = frame;
            s
        };
        let frame_of = |bytes: &[u8]| {
            let img = image::load_from_memory(bytes).unwrap().to_rgb8();
            let (w, h) = (img.width() as usize, img.height() as usize);
            bar_code(w, h, |x, y| img.get_pixel(x as u32, y as u32).0)
        };
        let (_, a) = own
            .render_still(&same, &shot(3, "Stills"), Access::RemoteOnly, &cancel)
            .await
            .unwrap();
        assert_eq!(
            own.browser().page_count().await.unwrap(),
            baseline + 1,
            "the tab stays open"
        );
        let (_, b) = own
            .render_still(&same, &shot(8, "Stills"), Access::RemoteOnly, &cancel)
            .await
            .unwrap();
        assert_eq!(
            own.browser().page_count().await.unwrap(),
            baseline + 1,
            "and is reused"
        );
        assert_eq!((frame_of(&a), frame_of(&b)), (3, 8));
        // Other props are another page: the warm tab is replaced, not added to.
        let (_, c) = own
            .render_still(&other, &shot(-1, "Stills"), Access::RemoteOnly, &cancel)
            .await
            .unwrap();
        assert_eq!(frame_of(&c), 29);
        wait_until_async("the replaced tab to close", || async {
            own.browser().page_count().await.unwrap() == baseline + 1
        })
        .await;
        // An out-of-range frame fails cleanly and the warm tab still serves the next still.
        assert!(
            own.render_still(&same, &shot(30, "Stills"), Access::RemoteOnly, &cancel)
                .await
                .is_err()
        );
        let (_, d) = own
            .render_still(&same, &shot(1, "Stills"), Access::RemoteOnly, &cancel)
            .await
            .unwrap();
        assert_eq!(frame_of(&d), 1);
        own.shutdown().await;
    });
}
