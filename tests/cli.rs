//! The command line, as a real process, on a local bundle directory.

mod common;

use std::process::Command;

use common::*;

fn cli(args: &[&str]) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    clean_env(&mut Command::new(binary()))
        .args(args)
        .env("TMPDIR", tmp.path())
        .env("HOME", tmp.path())
        .output()
        .expect("run the CLI")
}

fn site_dir() -> String {
    fixture("site").to_string_lossy().into_owned()
}

#[test]
fn render_a_local_bundle_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("video.mp4");
    let o = cli(&[
        "render",
        &site_dir(),
        "Frames",
        out.to_str().unwrap(),
        "--frames",
        "0-29",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let probe = ffprobe(&out);
    let v = video_stream(&probe);
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["nb_read_frames"], "30");
    let frames = RgbFrames::decode(&out);
    for k in 0..30 {
        assert_eq!(frames.frame_number(k), k as u64);
    }
    // Only the output is left in the directory: no partial files.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("video.mp4")]);
}

#[test]
fn the_timings_line_says_where_a_slow_page_spends_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("slow.mp4");
    // Every SlowFrames frame holds a delayRender for 150 ms before it draws.
    let o = cli(&[
        "render",
        &site_dir(),
        "SlowFrames",
        out.to_str().unwrap(),
        "--concurrency",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let timings: serde_json::Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "render timings")
        .unwrap_or_else(|| panic!("no timings line in {stderr}"));
    let field = |name: &str| {
        timings[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} in {timings}"))
    };
    assert_eq!(timings["frames"], 20);
    assert_eq!(timings["tabs"], 1);
    // Lower bounds only: a slower machine adds to them, never takes away.
    let seek = field("seek_ms_per_frame");
    assert!(
        seek >= 140.0,
        "the page's 150 ms per frame is in the seek: {timings}"
    );
    // One tab: its seeks happen one after another inside the frame stage (each per-frame
    // figure is rounded to 0.1 ms).
    assert!(field("frames_ms") + 2.0 >= 20.0 * seek, "{timings}");
    for measured in [
        "fps",
        "setup_ms",
        "screenshot_ms_per_frame",
        "encode_ms_per_frame",
    ] {
        assert!(field(measured) > 0.0, "{measured}: {timings}");
    }
}

#[test]
fn a_failed_render_leaves_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("video.mp4");
    let o = cli(&["render", &site_dir(), "Throws", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("TypeError") && stderr.contains("fixture exploded at frame 5"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn compositions_lists_ids_sizes_fps_and_durations() {
    let o = cli(&["compositions", &site_dir()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = |id: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("{id} missing from:\n{stdout}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(line("Frames"), ["Frames", "640x360", "30", "90", "frames"]);
    assert_eq!(
        line("Metadata"),
        ["Metadata", "320x240", "25", "12", "frames"]
    );
}

#[test]
fn still_writes_the_requested_frame() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frame.png");
    let o = cli(&[
        "still",
        &site_dir(),
        "Stills",
        out.to_str().unwrap(),
        "--frame",
        "-1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (400, 300));
    let n = bar_code(400, 300, |x, y| img.get_pixel(x as u32, y as u32).0);
    assert_eq!(n, 29, "frame -1 is the last frame");
    assert_eq!(
        img.get_pixel(5, 5).0,
        [0, 0, 255],
        "odd frame: blue parity square"
    );
}

#[test]
fn verbose_log_forwards_the_page_console() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.mp4");
    let o = cli(&[
        "render",
        &site_dir(),
        "Frames",
        out.to_str().unwrap(),
        "--frames",
        "0-1",
        "--log",
        "verbose",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("page console"), "{stderr}");
    let quiet = cli(&[
        "render",
        &site_dir(),
        "Frames",
        out.to_str().unwrap(),
        "--frames",
        "0-1",
    ]);
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(quiet.status.success(), "{stderr}");
    assert!(!stderr.contains("page console"), "{stderr}");
}

/// Renders frame 0 of `composition` with extra flags and returns its pixels.
fn first_frame(composition: &str, extra: &[&str]) -> RgbFrames {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.mp4");
    let site = site_dir();
    let mut args = vec![
        "render",
        &site,
        composition,
        out.to_str().unwrap(),
        "--frames",
        "0",
    ];
    args.extend_from_slice(extra);
    let o = cli(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    RgbFrames::decode(&out)
}

#[test]
fn props_and_env_files() {
    let dir = tempfile::tempdir().unwrap();
    let props = dir.path().join("props.json");
    std::fs::write(&props, r##"{"color": "#0000ff"}"##).unwrap();
    let env = dir.path().join(".env");
    std::fs::write(&env, "FIXTURE_COLOR=\"#00ff00\"\n").unwrap();
    let f = first_frame("Props", &["--props", props.to_str().unwrap()]);
    assert_close(f.pixel(0, 300, 170), [0, 0, 255], 12, "props file");
    let f = first_frame("Props", &["--props", r##"{"color": "#ff00ff"}"##]);
    assert_close(f.pixel(0, 300, 170), [255, 0, 255], 12, "inline props");
    let f = first_frame("EnvVars", &["--env-file", env.to_str().unwrap()]);
    assert_close(f.pixel(0, 160, 90), [0, 255, 0], 12, "env file");
}

#[test]
fn ctrl_c_stops_a_render_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (tmp, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = dir.path().join("video.mp4");
    // 20 frames of 400 ms: still rendering when Ctrl-C comes.
    let mut child = clean_env(&mut Command::new(binary()))
        .args(["render", &site_dir(), "SlowFrames"])
        .arg(&out)
        .args(["--props", r#"{"delayMs": 400}"#])
        .env("TMPDIR", tmp.path())
        .env("HOME", home.path())
        // As in a login session: Chromium's PulseAudio client keeps its runtime directory
        // there, and would otherwise leave an empty `pulse-*` in TMPDIR.
        .env("XDG_RUNTIME_DIR", home.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the CLI");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = stderr.clone();
    let pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut all = sink.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    wait_until("the render to start", || {
        stderr.lock().unwrap().contains(r#""message":"rendering""#)
    });
    let browser = children(child.id())
        .into_iter()
        .find(|p| p.exe.starts_with("/usr/lib/chromium/"))
        .expect("the CLI's browser")
        .pid;
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut status = None;
    wait_until("the CLI to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    reader.join().unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert!(!status.unwrap().success(), "{stderr}");
    assert!(stderr.contains("cancelled"), "says why: {stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no output, no partial file"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    wait_until("the browser's processes to exit", || {
        group_members(browser).is_empty()
    });
}

#[test]
fn frames_per_chunk_renders_chunks_and_joins_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chunked.mp4");
    let o = cli(&[
        "render",
        &site_dir(),
        "Frames",
        out.to_str().unwrap(),
        "--frames",
        "10-39",
        "--frames-per-chunk",
        "8",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_frames(&out, &(10..40).collect::<Vec<_>>());
    let chunks = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "render timings")
        .count();
    assert_eq!(chunks, 4, "one timings line per chunk: {stderr}");
    // The chunk files went with the render.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("chunked.mp4")]);
}
