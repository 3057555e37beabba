//! Property tests for what arrives from outside: payloads (`api::wire`), frame ranges,
//! `outName`, serve URLs and the response stream's framing. No input may panic, and every
//! refusal names its field. The generators start from valid payloads and mutate them (drop a
//! key, null it, retype it, set an extreme value, put random JSON there) rather than list
//! cases by hand; the case counts keep the whole file to seconds in a debug build.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cloudrun_render::api::stream::{self, MIN_GAP};
use cloudrun_render::api::wire::{ErrorBody, RenderRequest, parse_request, validate_out_name};
use cloudrun_render::options::FrameRange;
use cloudrun_render::render::RenderProgress;
use cloudrun_render::render::frames::select_frames;
use cloudrun_render::site::{self, Access, Site, SiteError};
use cloudrun_render::storage::{cloud_storage_uri, object_key};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

/// Every field `renderMediaOnCloudrun()` sends (the body the parser's unit tests read), plus
/// the numeric fields newer clients add.
fn media_body() -> Value {
    let mut body: Value =
        serde_json::from_str(include_str!("../fixtures/payloads/media.json")).unwrap();
    body["forceFps"] = json!(30);
    body["forceDurationInFrames"] = json!(90);
    body["gopSize"] = json!(30);
    // Our own extension, which only other clients send.
    body["framesPerChunk"] = json!(10);
    body
}

/// Every field `renderStillOnCloudrun()` sends, valid.
fn still_body() -> Value {
    json!({
        "type": "still",
        "serveUrl": "https://storage.googleapis.com/bucket/sites/x/index.html",
        "composition": "Stills",
        "forceWidth": null,
        "forceHeight": 300,
        "serializedInputPropsWithCustomSchema": "{}",
        "jpegQuality": 80,
        "imageFormat": "jpeg",
        "scale": 2,
        "privacy": "private",
        "envVariables": {},
        "chromiumOptions": {"gl": null},
        "outputBucket": "bucket",
        "outName": null,
        "frame": -1,
        "logLevel": "verbose",
        "delayRenderTimeoutInMilliseconds": 30000,
        "offthreadVideoCacheSizeInBytes": null,
        "offthreadVideoThreads": null,
        "clientVersion": "4.0.270",
        "downloadBehavior": {"type": "play-in-browser"},
        "renderIdOverride": null,
    })
}

/// The key paths of every value under `v`'s objects, `type` excepted.
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            if prefix.is_empty() && k == "type" {
                continue;
            }
            prefix.push(k.clone());
            out.push(prefix.clone());
            paths(child, prefix, out);
            prefix.pop();
        }
    }
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Numbers at and around every bound the payload has, and any others.
fn extreme_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            0.0,
            -0.0,
            -1.0,
            0.5,
            1.0,
            1.5,
            16.0,
            16.5,
            99.5,
            100.0,
            100.5,
            101.0,
            4294967295.0,
            4294967296.0,
            9007199254740991.0,
            9007199254740993.0,
            1e21,
            1e308,
            -1e308,
            f64::MIN_POSITIVE,
            5e-324,
        ])
        .prop_map(number),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(number),
        (-2.0f64..2.0).prop_map(number),
    ]
}

/// Strings the payload's enums and formats know, their near misses, and any others.
fn string_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "media",
            "still",
            "h264",
            "gif",
            "png",
            "jpeg",
            "webp",
            "none",
            "public",
            "private",
            "no-acl",
            "play-in-browser",
            "download",
            "50%",
            "0%",
            "-1%",
            "1e9%",
            "%",
            "{}",
            "{",
            "[]",
            "null",
            "../x",
            "/abs",
            "a/./b",
            "\u{0}",
            "\u{7f}",
            "ü",
            "http://",
            "https://x/",
            "file:///etc/passwd",
            "www.",
            "0k",
            "-1M",
            "1e400",
        ])
        .prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        extreme_number(),
        string_value(),
    ]
}

/// Any JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `frameRange`-shaped values: numbers, pairs, open pairs and lists of them, in and out of
/// order, with small and extreme frames.
fn frame_range_json() -> impl Strategy<Value = Value> {
    let frame = prop_oneof![
        4 => (0u64..40).prop_map(Value::from),
        1 => extreme_number(),
        1 => Just(Value::Null),
    ];
    let pair = prop::collection::vec(frame.clone(), 0..4).prop_map(Value::Array);
    prop_oneof![
        frame,
        pair.clone(),
        prop::collection::vec(pair, 0..4).prop_map(Value::Array),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Drop,
    Set(Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => Just(Mutation::Drop),
        1 => Just(Mutation::Set(Value::Null)),
        4 => leaf().prop_map(Mutation::Set),
        2 => any_json().prop_map(Mutation::Set),
        1 => frame_range_json().prop_map(Mutation::Set),
    ]
}

/// Applies `m` at `path`; false when the path no longer exists (an earlier mutation replaced
/// a parent).
fn apply(body: &mut Value, path: &[String], m: &Mutation) -> bool {
    let (last, parents) = path.split_last().expect("a non-empty path");
    let mut at = body;
    for key in parents {
        match at.get_mut(key) {
            Some(next) => at = next,
            None => return false,
        }
    }
    let Value::Object(map) = at else {
        return false;
    };
    match m {
        Mutation::Drop => map.remove(last).is_some(),
        Mutation::Set(v) => {
            map.insert(last.clone(), v.clone());
            true
        }
    }
}

/// A valid media or still body with one to three mutations, and the dotted paths it touched.
fn mutated_body() -> impl Strategy<Value = (Value, Vec<String>)> {
    prop_oneof![Just(media_body()), Just(still_body())]
        .prop_flat_map(|base| {
            let mut all = vec![];
            paths(&base, &mut vec![], &mut all);
            let edits = prop::collection::vec((prop::sample::select(all), mutation()), 1..=3);
            (Just(base), edits)
        })
        .prop_map(|(mut body, edits)| {
            let mut touched = vec![];
            for (path, m) in edits {
                if apply(&mut body, &path, &m) {
                    touched.push(path.join("."));
                }
            }
            (body, touched)
        })
}

/// The parser's answer: a request, or a refusal naming one of `fields` (or a field inside
/// one of them) in its field and its message.
fn refusal_names_a_field(body: &[u8], fields: &[String]) -> Result<(), TestCaseError> {
    if let Err(e) = parse_request(body) {
        prop_assert!(!e.field.is_empty());
        prop_assert!(e.to_string().contains(&e.field), "{e}");
        prop_assert!(
            fields.iter().any(|f| e.field == *f
                || e.field.starts_with(&format!("{f}."))
                || e.field.starts_with(&format!("{f}["))),
            "refused naming \"{}\" after touching {fields:?}: {e}",
            e.field
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn mutated_payloads_are_parsed_or_refused_naming_the_field((body, touched) in mutated_body()) {
        refusal_names_a_field(body.to_string().as_bytes(), &touched)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_bad_type_is_refused_naming_type(
        kind in any_json().prop_filter("not a known type", |v| v != "media" && v != "still"),
        still in any::<bool>(),
    ) {
        let mut body = if still { still_body() } else { media_body() };
        body["type"] = kind;
        let e = parse_request(body.to_string().as_bytes()).unwrap_err();
        prop_assert_eq!(e.field, "type");
    }

    #[test]
    fn any_bytes_and_any_json_are_answered_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        value in any_json(),
        typed in prop_oneof![Just("media"), Just("still")],
    ) {
        for body in [bytes, value.to_string().into_bytes()] {
            if let Err(e) = parse_request(&body) {
                prop_assert!(e.to_string().contains(&e.field), "{e}");
            }
        }
        // A known type with random fields around it.
        let mut object = match value {
            Value::Object(m) => m,
            other => [("x".to_string(), other)].into_iter().collect(),
        };
        object.insert("type".into(), typed.into());
        if let Err(e) = parse_request(Value::Object(object).to_string().as_bytes()) {
            prop_assert!(e.to_string().contains(&e.field), "{e}");
        }
    }

    #[test]
    fn frame_ranges_are_parsed_or_refused_as_frame_range(range in frame_range_json()) {
        let mut body = media_body();
        body["frameRange"] = range;
        match parse_request(body.to_string().as_bytes()) {
            Ok(RenderRequest::Media(m)) => prop_assert!(m.media.frame_range.validate_shape().is_ok()),
            Ok(RenderRequest::Still(_)) => prop_assert!(false, "a media body became a still"),
            Err(e) => prop_assert_eq!(e.field, "frameRange"),
        }
    }
}

/// Ascending, non-overlapping ranges with only the last one open: what the parser lets in.
fn valid_frame_range() -> impl Strategy<Value = FrameRange> {
    let ranges =
        prop::collection::vec((0u64..60, 0u64..60, any::<bool>()), 1..5).prop_map(|parts| {
            let mut out = vec![];
            let mut next = 0u64;
            let n = parts.len();
            for (i, (gap, len, open)) in parts.into_iter().enumerate() {
                let start = next + gap;
                let end = if open && i + 1 == n {
                    None
                } else {
                    Some(start + len)
                };
                out.push((start, end));
                next = start + len + 1;
            }
            FrameRange::Ranges(out)
        });
    prop_oneof![
        Just(FrameRange::All),
        (0u64..300).prop_map(FrameRange::Single),
        ranges,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Against a plain model: frames in a range whose offset from its start is a multiple of
    /// everyNthFrame, all within the composition.
    #[test]
    fn frame_selection_matches_the_model(
        range in valid_frame_range(),
        nth in 1u32..12,
        duration in 1u64..300,
    ) {
        prop_assert!(range.validate_shape().is_ok());
        let bounds: Vec<(u64, Option<u64>)> = match &range {
            FrameRange::All => vec![(0, None)],
            FrameRange::Single(n) => vec![(*n, Some(*n))],
            FrameRange::Ranges(r) => r.clone(),
        };
        let last = duration.saturating_sub(1);
        let in_bounds = bounds.iter().all(|&(a, b)| a <= last && b.unwrap_or(last) <= last);
        let model: Vec<u64> = (0..duration)
            .filter(|f| {
                bounds
                    .iter()
                    .any(|&(a, b)| (a..=b.unwrap_or(last)).contains(f) && (f - a) % nth as u64 == 0)
            })
            .collect();
        match select_frames(&range, nth, duration) {
            Ok(frames) => {
                prop_assert!(in_bounds);
                prop_assert_eq!(frames, model);
            }
            Err(e) => {
                prop_assert!(!in_bounds || model.is_empty(), "{e}");
                prop_assert!(e.to_lowercase().contains("frame"), "{e}");
            }
        }
    }
}

/// Names built from the characters that matter to paths and URLs, and any others.
fn out_name() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "/", ".", "..", "%", "%2e", "%2E", "%20", " ", "\"", "#", "<", ">", "?", "`", "{",
            "}", "^", "'", "\\", "|", "ü", "😀", "a", "b.mp4", "\t", "\n", "\u{7f}", "\u{85}",
        ])
        .prop_map(str::to_string),
        1 => any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

/// A segment a URL parser treats as `.` or `..`.
fn is_dot_segment(segment: &str) -> bool {
    matches!(
        segment.to_ascii_lowercase().as_str(),
        "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e"
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn out_names_stay_inside_the_render_and_their_uri_is_a_url_path(name in out_name()) {
        let verdict = validate_out_name(&name);
        let mut body = media_body();
        body["outName"] = name.clone().into();
        match parse_request(body.to_string().as_bytes()) {
            Ok(_) => prop_assert!(verdict.is_ok()),
            Err(e) => {
                prop_assert!(verdict.is_err());
                prop_assert_eq!(e.field, "outName");
            }
        }
        if verdict.is_err() {
            return Ok(());
        }
        prop_assert!(!name.is_empty() && !name.starts_with('/'));
        prop_assert!(!name.split('/').any(|s| s == "." || s == ".."), "{name:?}");
        prop_assert!(!name.chars().any(char::is_control), "{name:?}");

        let key = object_key("abc123", &name);
        prop_assert!(key.starts_with("renders/abc123/"));
        let uri = cloud_storage_uri("bucket", &key);
        prop_assert!(uri.is_ascii(), "{uri}");
        prop_assert!(!uri.contains([' ', '"', '#', '<', '>', '?', '`', '{', '}']), "{uri}");
        // The same as an independent WHATWG URL implementation's pathname setter, where
        // that setter does not also resolve dot segments.
        if !name.split('/').any(is_dot_segment) {
            let mut url = url::Url::parse("gs://bucket").unwrap();
            url.set_path(&key);
            prop_assert_eq!(uri, url.as_str());
        }
    }
}

/// Serve URLs: a scheme-ish start and anything after it.
fn serve_url() -> impl Strategy<Value = String> {
    let start = prop::sample::select(vec![
        "http://",
        "https://",
        "HTTPS://",
        "www.",
        "ftp://",
        "file://",
        "data:text/html,",
        "javascript:",
        "/",
        "./",
        "",
        "x.s3.amazonaws.com/",
        " http://",
    ]);
    let rest = prop_oneof![
        "[a-z.:/?#%&=_-]{0,30}",
        "\\PC{0,20}",
        any::<String>(),
        Just("example.com/site?token=1#x".to_string()),
    ];
    (start, rest).prop_map(|(a, b)| format!("{a}{b}"))
}

#[test]
fn serve_urls_open_as_remote_sites_or_are_refused_naming_them() {
    let frames = Arc::new(cloudrun_render::offthread::FrameServer::new(
        Arc::new(
            cloudrun_render::fetch::Fetcher::new(cloudrun_render::guard::PageGuard::new(None))
                .unwrap(),
        ),
        None,
        None,
    ));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    runner
        .run(&serve_url(), |url| {
            let mut body = media_body();
            body["serveUrl"] = url.clone().into();
            if let Err(e) = parse_request(body.to_string().as_bytes()) {
                prop_assert_eq!(e.field, "serveUrl");
                prop_assert!(url.trim().is_empty());
                return Ok(());
            }
            if site::is_remote(&url) {
                let page = site::normalize_remote(&url);
                prop_assert!(
                    page.ends_with("index.html") && !page.contains('?'),
                    "{page}"
                );
            }
            let opened = runtime().block_on(Site::open(&url, Access::RemoteOnly, frames.clone()));
            match opened {
                Ok(site) => {
                    prop_assert!(site::is_remote(&url));
                    prop_assert_eq!(&site.url, &site::normalize_remote(&url));
                }
                Err(e) => {
                    prop_assert!(!site::is_remote(&url), "{e}");
                    prop_assert!(matches!(e, SiteError::NotHttp(_)), "{e}");
                    prop_assert!(e.to_string().contains(&url), "{e}");
                }
            }
            Ok(())
        })
        .unwrap();
}

/// A progress update: rendered, encoded and total frames, and the ms before it.
type Update = (u64, u64, u64, u64);

/// Progress updates, the ms before the end, and the final message.
fn render_story() -> impl Strategy<Value = (Vec<Update>, u64, Bytes)> {
    let update = (1u64..120).prop_flat_map(|total| (0..=total, 0..=total, Just(total), 0u64..250));
    let last = prop_oneof![
        Just(Bytes::from_static(
            br#"{"response":{"type":"success","publicUrl":null,"cloudStorageUri":"gs://b/k","size":"3","bucketName":"b","renderId":"x","privacy":"public-read"}}"#
        )),
        "\\PC{0,40}".prop_map(|m| Bytes::from(
            serde_json::to_vec(&ErrorBody::new("Error", m, "Error: at x")).unwrap()
        )),
    ];
    (prop::collection::vec(update, 0..40), 0u64..250, last)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the render publishes and however fast: one message per chunk, at least
    /// MIN_GAP apart, progress only on change, the final message last and whole; a reader that
    /// parses its whole buffer after every chunk (the client) understands every message.
    #[test]
    fn the_stream_is_one_message_per_chunk_spaced_and_ends_with_the_final_one(
        (updates, final_after, last) in render_story()
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let chunks = rt.block_on(async {
            let (ptx, prx) = tokio::sync::watch::channel(RenderProgress::default());
            let (dtx, drx) = tokio::sync::oneshot::channel();
            let (otx, mut orx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(stream::pump(Some(prx), drx, otx));
            let final_message = last.clone();
            tokio::spawn(async move {
                for (rendered, encoded, total, ms) in updates {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ptx.send_replace(RenderProgress { rendered, encoded, total, overall: None });
                }
                tokio::time::sleep(Duration::from_millis(final_after)).await;
                let _ = dtx.send(final_message);
            });
            let mut chunks = vec![];
            while let Some(chunk) = orx.recv().await {
                chunks.push((tokio::time::Instant::now(), chunk));
            }
            chunks
        });
        let (final_at, final_chunk) = chunks.last().expect("the final message").clone();
        prop_assert_eq!(&final_chunk, &last);
        let mut buffer = String::new();
        let mut previous: Option<f64> = None;
        for (i, (at, chunk)) in chunks.iter().enumerate() {
            let text = std::str::from_utf8(chunk).unwrap();
            buffer.push_str(text);
            let message: Value = serde_json::from_str(buffer.trim())
                .map_err(|e| TestCaseError::fail(format!("unparseable buffer {buffer:?}: {e}")))?;
            buffer.clear();
            if i + 1 < chunks.len() {
                prop_assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "{text:?}");
                let p = message["onProgress"].as_f64().expect("a progress line");
                prop_assert!((0.0..=1.0).contains(&p), "{p}");
                prop_assert_ne!(Some(p), previous, "a repeated value");
                previous = Some(p);
                let next = chunks[i + 1].0;
                prop_assert!(next - *at >= MIN_GAP, "{:?} apart", next - *at);
            } else {
                prop_assert!(!text.contains('\n'));
                prop_assert_eq!(*at, final_at);
            }
        }
    }
}

/// Mutated payloads the parser refuses, sent to the real service: each is answered with the
/// error object the parser names, and the service stays up.
#[test]
fn the_service_answers_refused_payloads_with_the_parsers_error() {
    let service = Service::start(&[]);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    let refused = mutated_body().prop_filter_map("accepted payloads would render", |(b, _)| {
        let bytes = b.to_string().into_bytes();
        parse_request(&bytes).err().map(|e| (bytes, e))
    });
    let client = reqwest::Client::new();
    runner
        .run(&refused, |(bytes, e)| {
            let (status, answer) = runtime().block_on(async {
                let r = client
                    .post(&service.url)
                    .header("content-type", "application/json")
                    .body(bytes)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.bytes().await.unwrap())
            });
            prop_assert_eq!(status, 200);
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            prop_assert_eq!(&answer, &serde_json::to_value(ErrorBody::from(&e)).unwrap());
            Ok(())
        })
        .unwrap();
    let health = runtime()
        .block_on(reqwest::get(format!("{}/healthz", service.url)))
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(service.stop().success());
}
