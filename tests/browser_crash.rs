//! The browser process dies in the middle of a render. Each test starts a browser of its own:
//! killing the shared one would fail its neighbours' renders.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cloudrun_render::browser::{BrowserError, PageGuard};
use cloudrun_render::options::{Concurrency, MediaOptions, SiteOptions};
use cloudrun_render::render::{self, RenderError, Renderer};
use cloudrun_render::site::Access;
use common::crash::*;
use common::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Frame that never becomes ready while its attempt is at most `holdAttempts`: until the
/// browser is killed, the render cannot end.
const HELD: u64 = 30;

fn held_site(hold_attempts: u32) -> SiteOptions {
    let mut s = site();
    s.serialized_input_props = json!({"holdAt": HELD, "holdAttempts": hold_attempts}).to_string();
    s
}

fn two_tabs() -> MediaOptions {
    let mut m = media("Frames");
    // A second tab captures frames past the held one, so the progress can show that the held
    // frame has been taken.
    m.concurrency = Concurrency::Count(2.0);
    m
}

struct Outcome {
    result: Result<render::MediaOutcome, RenderError>,
    killed: Vec<u32>,
    /// The browser running once the render ended, if any.
    last_browser: Option<u32>,
    generations: u64,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

/// Renders `media` in a browser of its own and kills that browser once `HELD + 1` frames are
/// rendered (so frame `HELD` is being captured), and with `every_restart` each browser started
/// after that. Shuts the browser down before it returns.
fn render_and_kill(site: &SiteOptions, media: &MediaOptions, every_restart: bool) -> Outcome {
    let renderer = runtime()
        .block_on(Renderer::start(PageGuard::new(None)))
        .expect("start a renderer of our own");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mp4");
    let (tx, rx) = render::progress::channel();
    let done = CancellationToken::new();
    let killer = kill_browser_mid_render(
        renderer.browser().clone(),
        rx,
        HELD + 1,
        every_restart,
        done.clone(),
    );
    let result = runtime().block_on(renderer.render_media(
        site,
        media,
        Access::RemoteOnly,
        &path,
        &tx,
        &CancellationToken::new(),
    ));
    done.cancel();
    let killed = killer.join().unwrap();
    let last_browser = runtime().block_on(renderer.browser().pid());
    let generations = renderer.browser().generation();
    runtime().block_on(renderer.shutdown());
    Outcome {
        result,
        killed,
        last_browser,
        generations,
        _dir: dir,
        path,
    }
}

#[test]
fn a_killed_browser_is_replaced_and_every_frame_lands_once_in_order() {
    let o = render_and_kill(&held_site(1), &two_tabs(), false);
    let outcome = o.result.expect("the render survives a killed browser");
    assert_eq!(o.killed.len(), 1, "the browser was killed mid-render");
    assert_eq!(o.generations, 2, "one new browser replaced the killed one");
    assert_eq!(outcome.frames, 90);
    assert_frames(&o.path, &(0..90).collect::<Vec<_>>());
    let mut groups = o.killed.clone();
    groups.extend(o.last_browser);
    assert_groups_end(&groups);
}

#[test]
fn a_browser_that_keeps_dying_fails_the_render_as_a_crash_not_a_timeout() {
    // The held frame never becomes ready in any browser: only the crashes can end the render.
    let o = render_and_kill(&held_site(1000), &two_tabs(), true);
    let e = match o.result {
        Ok(_) => panic!("a browser that keeps dying cannot finish a render"),
        Err(e) => e,
    };
    // Whichever frame was in the crash and then in the next one gives up.
    assert!(
        matches!(
            e,
            RenderError::Browser(BrowserError::BrowserCrashed {
                retried_frame: Some(f),
                ..
            }) if f >= HELD
        ),
        "{e:?}"
    );
    assert_eq!(e.name(), "BrowserCrashedError");
    let message = e.to_string();
    assert!(
        message.starts_with("The browser crashed while "),
        "{message}"
    );
    assert!(message.contains("SIGKILL"), "{message}");
    assert!(!message.contains("Timed out"), "{message}");
    assert!(!o.path.exists(), "no partial output");
    assert!(o.killed.len() >= 2, "killed {:?}", o.killed);
    let mut groups = o.killed.clone();
    groups.extend(o.last_browser);
    assert_groups_end(&groups);
}

#[test]
fn over_http_a_browser_that_keeps_dying_leaves_error_txt_and_no_output() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("crash-out");
    // Each browser comes with a child that only dies with its process group.
    let wrapper_dir = tempfile::tempdir().unwrap();
    let wrapper = browser_with_a_stray_child(wrapper_dir.path());
    let service = Service::start_gcs(
        &gcs,
        &[(
            cloudrun_render::browser::launch::BROWSER_ENV,
            wrapper.to_str().unwrap(),
        )],
    );
    let done = Arc::new(AtomicBool::new(false));
    let killer = kill_service_browsers(service.logs.clone(), "rendering", done.clone());
    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["serializedInputPropsWithCustomSchema"] =
        json!(json!({"holdAt": HELD, "holdAttempts": 1000}).to_string());
    payload["concurrency"] = json!(2);
    payload["outputBucket"] = json!("crash-out");
    payload["renderIdOverride"] = json!("crashed001");
    let read = post_like_client(&service.url, &payload);
    done.store(true, Ordering::SeqCst);
    let killed = killer.join().unwrap();

    assert!(read.response.is_none());
    let error = read.error.expect("the error object");
    assert_eq!(error["name"], "BrowserCrashedError", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.starts_with("The browser crashed while "), "{error}");
    assert!(!message.contains("Timed out"), "{error}");
    assert_eq!(
        gcs.keys("crash-out", "renders/crashed001/"),
        ["renders/crashed001/error.txt"],
        "error.txt and no output"
    );
    let txt: Value =
        serde_json::from_slice(&gcs.download("crash-out", "renders/crashed001/error.txt")).unwrap();
    assert_eq!(txt["name"], "BrowserCrashedError");
    assert_eq!(txt["message"], error["message"]);
    assert!(killed.len() >= 2, "killed {killed:?}");
    // The dead browsers' processes are gone while the service still runs...
    assert_groups_end(&killed);
    let started = browsers_started(&service.log_text());
    assert!(service.stop().success());
    // ...and nothing of any browser outlives it.
    assert_groups_end(&started);
}
