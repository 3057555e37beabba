//! The whole workflow from our CLI, on loopback: `sites create` puts the fixture bundle into
//! fake-gcs-server, the service (the real binary) renders it as the emulator serves it, and
//! `render --service` / `still --service` fetch the result. Also re-deploys and `sites ls|rm`.

mod common;

use std::path::Path;

use common::sites::*;
use common::*;

/// The emulator with `bucket`.
fn emulator(bucket: &str) -> FakeGcs {
    let gcs = FakeGcs::start();
    gcs.create_bucket(bucket);
    gcs
}

#[test]
fn deploy_then_render_and_still_through_the_service_from_the_bucket() {
    let gcs = emulator("loop");
    let bundle = fixture("site");
    let (serve_url, created) = deploy(&gcs, &bundle, "loop", &[]);

    // The default name is a hash of the bundle: the emulator's equivalent of
    // https://storage.googleapis.com/loop/sites/<name>/index.html.
    let name = serve_url
        .strip_prefix(&format!("{}/loop/sites/", gcs.url))
        .and_then(|rest| rest.strip_suffix("/index.html"))
        .unwrap_or_else(|| panic!("serve URL {serve_url}"))
        .to_string();
    assert_eq!(name.len(), 10, "{name}");
    assert!(stderr(&created).contains("4 uploaded, 0 unchanged, 0 deleted"));
    let prefix = format!("sites/{name}/");
    let keys: Vec<String> = gcs.keys("loop", &prefix);
    let relative: Vec<&str> = keys.iter().map(|k| &k[prefix.len()..]).collect();
    assert_eq!(
        relative,
        [
            "bundle.js",
            "compositions.js",
            "index.html",
            "public/mark.svg"
        ]
    );
    for (file, content_type) in [
        ("index.html", "text/html; charset=utf-8"),
        ("bundle.js", "text/javascript; charset=utf-8"),
        ("public/mark.svg", "image/svg+xml"),
    ] {
        let key = format!("{prefix}{file}");
        let object = gcs.object("loop", &key).unwrap();
        assert_eq!(object["contentType"], content_type, "{key}");
        assert!(
            gcs.acl("loop", &key)
                .contains(&"allUsers:READER".to_string()),
            "{key} is public"
        );
        // What the renderer's browser gets from the serve URL's host.
        let (status, served_type, body) = fetch_public(&serve_url.replace("index.html", file));
        assert_eq!(status, 200, "{file}");
        assert_eq!(served_type.as_deref(), Some(content_type), "{file}");
        assert_eq!(body, std::fs::read(bundle.join(file)).unwrap(), "{file}");
    }

    // The page went up last (the emulator's generations are its clock at each upload).
    let first = generations(&gcs, "loop", &prefix);
    let page = first[&format!("{prefix}index.html")]
        .parse::<u64>()
        .unwrap();
    assert!(
        first.values().all(|g| g.parse::<u64>().unwrap() <= page),
        "{first:?}"
    );

    // Same bundle, same URL, nothing sent again.
    let (again, o) = deploy(&gcs, &bundle, "loop", &[]);
    assert_eq!(again, serve_url);
    assert!(stderr(&o).contains("0 uploaded, 4 unchanged, 0 deleted"));
    assert_eq!(generations(&gcs, "loop", &prefix), first);

    // The service loads the page, its scripts and public/mark.svg from the emulator.
    let service = Service::start_gcs(&gcs, &[]);
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("loop.mp4");
    let on_service =
        |command: &str, site: &str, composition: &str, output: &Path, extra: &[&str]| {
            let mut args = vec![command, "--service", &service.url, site, composition];
            args.extend([output.to_str().unwrap(), "--bucket", "loop"]);
            args.extend_from_slice(extra);
            cli_on(&gcs, &args)
        };
    let o = on_service(
        "render",
        &serve_url,
        "StaticFile",
        &video,
        &["--frames", "0-9", "--log", "verbose"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let uri = out
        .lines()
        .find_map(|l| l.strip_prefix("Cloud Storage URI: "))
        .unwrap_or_else(|| panic!("no URI in {out}"))
        .trim()
        .to_string();
    let key = uri.strip_prefix("gs://loop/").unwrap();
    assert!(
        key.starts_with("renders/") && key.ends_with("/out.mp4"),
        "{key}"
    );
    let object = gcs
        .object("loop", key)
        .expect("the output is in the bucket");
    assert!(
        out.contains(&format!(
            "Size:              {} bytes",
            object["size"].as_str().unwrap()
        )),
        "{out}"
    );
    assert!(out.contains("Public URL:        https://storage.googleapis.com/loop/renders%2F"));
    // --log verbose: the service's lines as they came, progress and the final response.
    let err = stderr(&o);
    assert!(err.contains("service: {\"onProgress\":"), "{err}");
    assert!(
        err.contains("service: {\"response\":{\"type\":\"success\""),
        "{err}"
    );
    assert_frames(&video, &(0..10).collect::<Vec<_>>());
    let frames = RgbFrames::decode(&video);
    for k in 0..10 {
        assert_close(frames.pixel(k, 10, 10), [0, 255, 0], 24, "public/mark.svg");
    }
    assert_eq!(
        std::fs::read(&video).unwrap(),
        gcs.download("loop", key),
        "the download is the object"
    );

    // A still by site name (the shorthand for the serve URL in --bucket), downloaded.
    let png = dir.path().join("still.png");
    let o = on_service(
        "still",
        &name,
        "StaticFile",
        &png,
        &["--frame", "7", "--out-name", "thumbs/seven.png"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("/thumbs/seven.png"), "{}", stdout(&o));
    let image = image::open(&png).unwrap().to_rgb8();
    let (w, h) = image.dimensions();
    assert_eq!((w, h), (320, 180));
    assert_eq!(
        bar_code(w as usize, h as usize, |x, y| image
            .get_pixel(x as u32, y as u32)
            .0),
        7
    );
    assert_eq!(image.get_pixel(10, 10).0, [0, 255, 0]);

    // A failing render: the service's message and stack, a non-zero exit, nothing written.
    let failed = dir.path().join("failed.mp4");
    let o = on_service("render", &serve_url, "Throws", &failed, &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("fixture exploded at frame 5"), "{err}");
    assert!(err.contains("TypeError"), "{err}");
    assert!(err.contains("    at "), "the page's stack: {err}");
    assert!(!failed.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(service.stop().success());
}

#[test]
fn a_redeploy_sends_only_what_changed_and_removes_what_is_gone() {
    let gcs = emulator("redeploy");
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("build");
    copy_dir(&fixture("site"), &bundle);
    let (url, _) = deploy(&gcs, &bundle, "redeploy", &["--site-name", "demo"]);
    assert_eq!(url, format!("{}/redeploy/sites/demo/index.html", gcs.url));
    let first = generations(&gcs, "redeploy", "sites/demo/");
    assert_eq!(first.len(), 4);

    // One file changed, one deleted.
    let changed = bundle.join("compositions.js");
    let mut js = std::fs::read_to_string(&changed).unwrap();
    js.push_str("\n// a new build\n");
    std::fs::write(&changed, &js).unwrap();
    std::fs::remove_file(bundle.join("public/mark.svg")).unwrap();
    let (again, o) = deploy(&gcs, &bundle, "redeploy", &["--site-name", "demo"]);
    assert_eq!(again, url);
    assert!(
        stderr(&o).contains("1 uploaded, 2 unchanged, 1 deleted"),
        "{}",
        stderr(&o)
    );
    let second = generations(&gcs, "redeploy", "sites/demo/");
    let kept: Vec<&String> = second.keys().collect();
    assert_eq!(
        kept,
        [
            "sites/demo/bundle.js",
            "sites/demo/compositions.js",
            "sites/demo/index.html"
        ]
    );
    let uploaded: Vec<&String> = second
        .iter()
        .filter(|(k, g)| first.get(*k) != Some(*g))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        uploaded,
        ["sites/demo/compositions.js"],
        "exactly one upload"
    );
    assert_eq!(
        gcs.download("redeploy", "sites/demo/compositions.js"),
        js.as_bytes()
    );

    // ls shows both sites; rm removes one, completely.
    let (other, _) = deploy(&gcs, &fixture("site"), "redeploy", &[]);
    let o = cli_on(&gcs, &["sites", "ls", "--bucket", "redeploy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listing = stdout(&o);
    let demo = listing
        .lines()
        .find(|l| l.starts_with("demo "))
        .unwrap_or_else(|| panic!("{listing}"));
    let total: u64 = ["bundle.js", "index.html"]
        .iter()
        .map(|f| std::fs::metadata(bundle.join(f)).unwrap().len())
        .sum::<u64>()
        + js.len() as u64;
    let columns: Vec<&str> = demo.split_whitespace().collect();
    assert_eq!(columns[1], "3", "{demo}");
    assert_eq!(columns[2], total.to_string(), "{demo}");
    assert!(
        columns[3].starts_with("20") && columns[4].ends_with('Z'),
        "{demo}"
    );
    assert_eq!(columns[5], url);
    assert!(listing.contains(&other), "{listing}");

    let o = cli_on(&gcs, &["sites", "rm", "demo", "--bucket", "redeploy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(gcs.keys("redeploy", "sites/demo/").is_empty());
    assert!(
        !gcs.keys("redeploy", "sites/").is_empty(),
        "the other site stays"
    );
    let o = cli_on(&gcs, &["sites", "rm", "demo", "--bucket", "redeploy"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no site \"demo\""), "{}", stderr(&o));
}

#[test]
fn sites_refuse_what_is_not_a_bundle_or_a_name() {
    let gcs = emulator("refuse");
    let empty = tempfile::tempdir().unwrap();
    let o = cli_on(
        &gcs,
        &[
            "sites",
            "create",
            empty.path().to_str().unwrap(),
            "--bucket",
            "refuse",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no index.html"), "{}", stderr(&o));
    let site = fixture("site");
    let o = cli_on(
        &gcs,
        &[
            "sites",
            "create",
            site.to_str().unwrap(),
            "--bucket",
            "refuse",
            "--site-name",
            "../x",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a valid site name"),
        "{}",
        stderr(&o)
    );
    assert!(gcs.keys("refuse", "").is_empty());
    // A bundle directory cannot be rendered by a service: it says how to deploy it.
    let o = cli_on(
        &gcs,
        &[
            "render",
            "--service",
            "http://127.0.0.1:9",
            site.to_str().unwrap(),
            "Frames",
            "--bucket",
            "refuse",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sites create"), "{}", stderr(&o));
}

/// What [`DownloadProxy`] does to `alt=media` answers on their way from the emulator.
#[derive(Clone, Copy)]
enum Fault {
    /// The first one breaks off after this many bytes.
    CutFirstAt(usize),
    /// Every one has a byte flipped.
    Corrupt,
}

/// Forwards to the emulator, recording the `Range` of each media request.
struct DownloadProxy {
    url: String,
    ranges: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

impl DownloadProxy {
    fn start(upstream: &str, fault: Fault) -> DownloadProxy {
        use std::sync::{Arc, Mutex};
        let ranges: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let seen = ranges.clone();
        let upstream = upstream.to_string();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: axum::http::HeaderMap| {
                let (seen, upstream) = (seen.clone(), upstream.clone());
                async move {
                    let path = uri.path_and_query().unwrap().to_string();
                    let media = path.contains("alt=media");
                    let mut request =
                        reqwest::Client::new().request(method, format!("{upstream}{path}"));
                    for (k, v) in headers.iter() {
                        request = request.header(k, v);
                    }
                    let answer = request.send().await.unwrap();
                    let mut response = axum::http::Response::builder().status(answer.status());
                    for (k, v) in answer.headers() {
                        if k != "content-length" && k != "transfer-encoding" {
                            response = response.header(k, v);
                        }
                    }
                    let mut body = answer.bytes().await.unwrap().to_vec();
                    if !media {
                        return response.body(axum::body::Body::from(body)).unwrap();
                    }
                    let first = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(
                            headers
                                .get("range")
                                .map(|v| v.to_str().unwrap().to_string()),
                        );
                        seen.len() == 1
                    };
                    match fault {
                        Fault::CutFirstAt(n) if first => {
                            body.truncate(n);
                            let parts: Vec<Result<Vec<u8>, std::io::Error>> = vec![
                                Ok(body),
                                Err(std::io::Error::other("injected: connection lost")),
                            ];
                            response
                                .body(axum::body::Body::from_stream(futures::stream::iter(parts)))
                                .unwrap()
                        }
                        Fault::CutFirstAt(_) => {
                            response.body(axum::body::Body::from(body)).unwrap()
                        }
                        Fault::Corrupt => {
                            let mid = body.len() / 2;
                            body[mid] ^= 0xff;
                            response.body(axum::body::Body::from(body)).unwrap()
                        }
                    }
                }
            },
        );
        DownloadProxy {
            url: serve_on_loopback(app),
            ranges,
        }
    }
}

#[test]
fn a_download_resumes_where_it_broke_off_and_never_keeps_corrupt_bytes() {
    use cloudrun_render::options::Privacy;
    use cloudrun_render::storage::ObjectOptions;
    use cloudrun_render::storage::gcs::{GcsStore, RetryPolicy, Source};

    let gcs = emulator("dl");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let key = "renders/dl/out.mp4";
    let options = ObjectOptions {
        content_type: "video/mp4".into(),
        content_disposition: None,
        privacy: Privacy::Public,
    };
    runtime()
        .block_on(GcsStore::emulator(&gcs.host).put(
            "dl",
            key,
            Source::Bytes(data.clone().into()),
            &options,
        ))
        .unwrap();
    let policy = RetryPolicy {
        attempts: 3,
        first_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    let dir = tempfile::tempdir().unwrap();

    let cut = DownloadProxy::start(&gcs.url, Fault::CutFirstAt(1_000_000));
    let store = GcsStore::emulator(&cut.url).with_policy(policy);
    let dest = dir.path().join("resumed.mp4");
    let n = runtime()
        .block_on(store.download("dl", key, &dest))
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(std::fs::read(&dest).unwrap() == data, "the same bytes");
    let ranges = cut.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let from: u64 = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ranges:?}"));
    assert!(from > 0 && from <= 1_000_000, "resumed at {from}");

    let corrupt = DownloadProxy::start(&gcs.url, Fault::Corrupt);
    let store = GcsStore::emulator(&corrupt.url).with_policy(policy);
    let dest = dir.path().join("corrupt.mp4");
    let e = runtime()
        .block_on(store.download("dl", key, &dest))
        .unwrap_err();
    assert!(e.to_string().contains("crc32c"), "{e}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["resumed.mp4"], "no corrupt file, no temporary file");

    let e = runtime()
        .block_on(GcsStore::emulator(&gcs.host).download("dl", "renders/none/out.mp4", &dest))
        .unwrap_err();
    assert!(e.to_string().contains("no object"), "{e}");
}
