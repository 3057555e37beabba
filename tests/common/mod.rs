//! Shared test harness: real processes, real HTTP, real Chromium, real libav.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cloudrun_render::options::{MediaOptions, SiteOptions};
use cloudrun_render::render::{self, MediaOutcome, RenderError, Renderer};
use cloudrun_render::site::Access;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures").join(name)
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cloudrun-render"))
}

/// One multi-threaded runtime per test binary, so background servers outlive single tests.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Serves `fixtures/` over HTTP on loopback (the service only accepts http(s) serve URLs).
/// Returns the base URL, e.g. `http://127.0.0.1:PORT`; sites are at `<base>/site/`.
pub fn fixture_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(
                "/status/{code}/index.html",
                axum::routing::get(
                    |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                        (
                            axum::http::StatusCode::from_u16(code).unwrap(),
                            "<html><body>status page</body></html>",
                        )
                    },
                ),
            )
            .nest_service(
                "/generated",
                tower_http::services::ServeDir::new(generated_dir()),
            )
            .fallback_service(tower_http::services::ServeDir::new(repo().join("fixtures")));
        rt.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        format!("http://{addr}")
    })
}

/// Media files tests generate, served by the fixture server under `/generated/`.
pub fn generated_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// Encodes a video whose frame k shows the bar code of k (like the fixtures), with the ffmpeg
/// CLI, into `generated_dir()`; returns its URL on the fixture server.
pub fn generated_bars_video(
    name: &str,
    frames: u64,
    fps: u32,
    width: usize,
    height: usize,
) -> String {
    use std::io::Write;
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|e| e.into_inner());
    let path = generated_dir().join(name);
    if !path.exists() {
        let mut child = Command::new("ffmpeg")
            .args([
                "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
            ])
            .arg(format!("{width}x{height}"))
            .args([
                "-r",
                &fps.to_string(),
                "-i",
                "-",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-g",
                "10",
            ])
            .arg(&path)
            .stdin(Stdio::piped())
            .spawn()
            .expect("ffmpeg");
        let mut stdin = child.stdin.take().unwrap();
        for k in 0..frames {
            let mut rgb = vec![0u8; width * height * 3];
            for y in 0..height / 2 {
                for i in 0..10 {
                    let white = (k >> (9 - i)) & 1 == 1;
                    let (x0, x1) = (i * width / 10, (i + 1) * width / 10);
                    for x in x0..x1 {
                        let p = (y * width + x) * 3;
                        rgb[p..p + 3].fill(if white { 255 } else { 0 });
                    }
                }
            }
            stdin.write_all(&rgb).unwrap();
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
    }
    format!("{}/generated/{name}", fixture_server())
}

/// Held by tests that assert a deadline (2 s to stop, 10 s to exit), so sibling tests of the
/// same binary do not share the two CPUs with them while they measure.
pub fn timing_sensitive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `serve` subcommand running as a real process. Killed (and its Chromium with it) on drop.
pub struct Service {
    pub child: Child,
    pub url: String,
    pub storage: tempfile::TempDir,
    /// The service's TMPDIR: work files, downloaded media and Chromium profiles land here.
    pub tmp: tempfile::TempDir,
    /// Everything the service printed to stderr so far (it is echoed to ours too).
    pub logs: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Service {
    pub fn start(extra_env: &[(&str, &str)]) -> Service {
        Service::start_with(extra_env, true)
    }

    /// Storing in the GCS emulator `gcs` instead of a local directory.
    pub fn start_gcs(gcs: &FakeGcs, extra_env: &[(&str, &str)]) -> Service {
        let mut env = vec![("STORAGE_EMULATOR_HOST", gcs.host.as_str())];
        env.extend_from_slice(extra_env);
        Service::start_with(&env, false)
    }

    /// With `local_storage` false, the service gets no `CLOUDRUN_RENDER_LOCAL_STORAGE` and uses
    /// GCS as configured by `extra_env`.
    pub fn start_with(extra_env: &[(&str, &str)], local_storage: bool) -> Service {
        let storage = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .env_remove("CLOUDRUN_RENDER_LOCAL_STORAGE")
            .env_remove("STORAGE_EMULATOR_HOST")
            .env("RUST_LOG", "info")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if local_storage {
            cmd.env("CLOUDRUN_RENDER_LOCAL_STORAGE", storage.path());
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the service");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("{line}");
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let url = format!("http://127.0.0.1:{port}");
        let service = Service {
            child,
            url,
            storage,
            tmp,
            logs,
        };
        service.wait_healthy();
        service
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr: SocketAddr = self.url.trim_start_matches("http://").parse().unwrap();
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let ok = runtime().block_on(async {
                    reqwest::get(format!("{}/healthz", self.url))
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false)
                });
                if ok {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the service did not become healthy");
    }

    pub fn object(&self, bucket: &str, key: &str) -> PathBuf {
        self.storage.path().join(bucket).join(key)
    }

    /// Names in the service's TMPDIR that start with `prefix`.
    pub fn temp_entries(&self, prefix: &str) -> Vec<String> {
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the real client saw: every parsed message, in order.
#[derive(Debug)]
pub struct ClientRead {
    pub status: u16,
    pub content_type: Option<String>,
    pub progress: Vec<f64>,
    pub response: Option<Value>,
    pub error: Option<Value>,
    /// Bytes the client could never parse (two messages in one read would leave some).
    pub leftover: String,
    pub reads: usize,
}

/// POSTs `payload` and reads the stream exactly as `renderMediaOnCloudrun()` does: append each
/// socket read to a buffer, and clear it only when the whole trimmed buffer parses as JSON.
pub fn post_like_client(url: &str, payload: &Value) -> ClientRead {
    runtime().block_on(async {
        let client = reqwest::Client::new();
        let mut resp = client
            .post(url)
            .json(payload)
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let mut buffer = String::new();
        let mut read = ClientRead {
            status,
            content_type,
            progress: vec![],
            response: None,
            error: None,
            leftover: String::new(),
            reads: 0,
        };
        while let Some(chunk) = resp.chunk().await.expect("stream") {
            read.reads += 1;
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            let Ok(message) = serde_json::from_str::<Value>(buffer.trim()) else {
                continue;
            };
            buffer.clear();
            if let Some(p) = message.get("onProgress").and_then(Value::as_f64) {
                read.progress.push(p);
            } else if message.get("response").is_some() {
                read.response = Some(message["response"].clone());
            } else if message.get("type") == Some(&Value::from("error")) {
                read.error = Some(message);
            }
        }
        read.leftover = buffer;
        read
    })
}

/// A media payload as `renderMediaOnCloudrun()` 4.0.270 builds it.
pub fn media_payload(serve_url: &str, composition: &str) -> Value {
    serde_json::json!({
        "type": "media",
        "serveUrl": serve_url,
        "composition": composition,
        "serializedInputPropsWithCustomSchema": "{}",
        "codec": "h264",
        "audioCodec": null,
        "forceHeight": null,
        "forceWidth": null,
        "jpegQuality": 80,
        "audioBitrate": null,
        "videoBitrate": null,
        "encodingMaxRate": null,
        "encodingBufferSize": null,
        "crf": null,
        "pixelFormat": null,
        "imageFormat": null,
        "scale": 1,
        "proResProfile": null,
        "x264Preset": null,
        "everyNthFrame": 1,
        "numberOfGifLoops": null,
        "frameRange": null,
        "envVariables": {},
        "chromiumOptions": {},
        "muted": false,
        "outputBucket": "test-bucket",
        "logLevel": "info",
        "delayRenderTimeoutInMilliseconds": 30000,
        "concurrency": null,
        "enforceAudioTrack": false,
        "preferLossless": false,
        "offthreadVideoCacheSizeInBytes": null,
        "offthreadVideoThreads": null,
        "colorSpace": null,
        "clientVersion": "4.0.270",
        "downloadBehavior": {"type": "play-in-browser"},
        "metadata": null,
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct Probe {
    pub streams: Vec<Value>,
    pub format: Value,
}

/// ffprobe with frame counting.
pub fn ffprobe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn video_stream(p: &Probe) -> &Value {
    p.streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .expect("a video stream")
}

/// Decoded frames of a video as packed RGB24.
pub struct RgbFrames {
    pub width: usize,
    pub height: usize,
    pub frames: Vec<Vec<u8>>,
}

impl RgbFrames {
    pub fn decode(path: &Path) -> RgbFrames {
        let probe = ffprobe(path);
        let v = video_stream(&probe);
        let (width, height) = (
            v["width"].as_u64().unwrap() as usize,
            v["height"].as_u64().unwrap() as usize,
        );
        let frames = raw_frames(path, None, "rgb24", width * height * 3);
        RgbFrames {
            width,
            height,
            frames,
        }
    }

    pub fn pixel(&self, frame: usize, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        let f = &self.frames[frame];
        [f[i], f[i + 1], f[i + 2]]
    }
}

/// Decoded frames of a video as packed RGBA. vp8/vp9 keep alpha in side data that only the
/// libvpx decoders read, so name one for them.
pub fn rgba_frames(
    path: &Path,
    decoder: Option<&str>,
    width: usize,
    height: usize,
) -> Vec<Vec<u8>> {
    raw_frames(path, decoder, "rgba", width * height * 4)
}

/// Every frame of a video decoded by ffmpeg (with `decoder` if given) into `pix_fmt`.
fn raw_frames(
    path: &Path,
    decoder: Option<&str>,
    pix_fmt: &str,
    frame_bytes: usize,
) -> Vec<Vec<u8>> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error"]);
    if let Some(d) = decoder {
        cmd.args(["-c:v", d]);
    }
    let out = cmd
        .arg("-i")
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", pix_fmt, "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(frame_bytes)
        .map(<[u8]>::to_vec)
        .collect()
}

/// The loop count of a GIF's NETSCAPE2.0 block: `None` when it has none (it plays once), 0
/// for forever.
pub fn gif_loop_count(path: &Path) -> Option<u16> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .windows(16)
        .find(|w| &w[..11] == b"NETSCAPE2.0")
        .map(|w| u16::from_le_bytes([w[13], w[14]]))
}

/// The frame number the fixtures' bar code shows (see fixtures/README.md): 10 bars across the
/// top half, leftmost = most significant bit, white = 1.
pub fn bar_code(width: usize, height: usize, rgb_at: impl Fn(usize, usize) -> [u8; 3]) -> u64 {
    let y = height / 4;
    (0..10).fold(0u64, |acc, i| {
        let x = ((i as f64 + 0.5) * width as f64 / 10.0) as usize;
        let [r, g, b] = rgb_at(x, y);
        let bit = (r as u32 + g as u32 + b as u32) / 3 > 128;
        acc * 2 + bit as u64
    })
}

impl RgbFrames {
    pub fn frame_number(&self, frame: usize) -> u64 {
        bar_code(self.width, self.height, |x, y| self.pixel(frame, x, y))
    }
}

pub fn assert_close(actual: [u8; 3], expected: [u8; 3], tolerance: u8, what: &str) {
    for c in 0..3 {
        assert!(
            actual[c].abs_diff(expected[c]) <= tolerance,
            "{what}: got {actual:?}, expected {expected:?} ± {tolerance}"
        );
    }
}

/// Serves `app` on a free loopback port for the rest of the test binary; returns
/// `http://127.0.0.1:PORT`.
pub fn serve_on_loopback(app: axum::Router) -> String {
    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Serves `fixtures/` over HTTPS with a fresh self-signed certificate (openssl and Python's
/// own HTTPS server: real TLS, a certificate no browser trusts). Returns the base URL, e.g.
/// `https://127.0.0.1:PORT`. The server lives as long as the test process.
pub fn https_fixture_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl could not make a certificate");
        const SERVER: &str = r#"
import functools, http.server, os, ssl, sys, threading
def exit_with_the_parent():
    sys.stdin.read()  # EOF: the test process is gone
    os._exit(0)
threading.Thread(target=exit_with_the_parent, daemon=True).start()
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Quiet, directory=sys.argv[1]))
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = tls.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(SERVER)
            .arg(repo().join("fixtures"))
            .arg(&cert)
            .arg(&key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().expect("the HTTPS server's port");
        // Leaked on purpose: the server serves every test of this binary, and its stdin
        // stays open until this process exits, which is when the server exits too.
        std::mem::forget(child);
        format!("https://127.0.0.1:{port}")
    })
}

/// fake-gcs-server (from `./scripts/setup`) on a free port, in memory. Killed on drop.
pub struct FakeGcs {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`, as `STORAGE_EMULATOR_HOST` takes it.
    pub host: String,
}

impl FakeGcs {
    fn binary() -> PathBuf {
        if let Ok(p) = std::env::var("FAKE_GCS_SERVER") {
            return PathBuf::from(p);
        }
        let venv = repo().join(".venv/bin/fake-gcs-server");
        if venv.exists() {
            return venv;
        }
        PathBuf::from("fake-gcs-server")
    }

    pub fn start() -> FakeGcs {
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let url = format!("http://{host}");
        let child = Command::new(FakeGcs::binary())
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-backend",
                "memory",
            ])
            .args(["-port", &port.to_string(), "-public-host", &host])
            .args(["-external-url", &url, "-log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fake-gcs-server (run ./scripts/setup)");
        let gcs = FakeGcs { child, url, host };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = runtime().block_on(async {
                reqwest::get(format!("{}/storage/v1/b", gcs.url))
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            });
            if up {
                return gcs;
            }
            assert!(Instant::now() < deadline, "fake-gcs-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Over the JSON API: the official client's control plane is gRPC, which the emulator
    /// does not speak.
    pub fn create_bucket(&self, name: &str) {
        let status = runtime().block_on(async {
            reqwest::Client::new()
                .post(format!("{}/storage/v1/b?project=test-project", self.url))
                .json(&serde_json::json!({ "name": name }))
                .send()
                .await
                .expect("create bucket")
                .status()
        });
        assert!(status.is_success(), "creating bucket {name}: {status}");
    }

    fn object_url(&self, bucket: &str, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{bucket}/o/{}",
            self.url,
            cloudrun_render::storage::encode_uri_component(key)
        )
    }

    /// The object's metadata (`size`, `contentType`, `acl`, …), or None if there is none.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Value> {
        runtime().block_on(async {
            let r = reqwest::get(self.object_url(bucket, key)).await.unwrap();
            match r.status().as_u16() {
                404 => None,
                200 => Some(r.json().await.unwrap()),
                s => panic!("GET {bucket}/{key}: {s}"),
            }
        })
    }

    pub fn download(&self, bucket: &str, key: &str) -> Vec<u8> {
        runtime().block_on(async {
            let r = reqwest::get(format!("{}?alt=media", self.object_url(bucket, key)))
                .await
                .unwrap();
            assert!(r.status().is_success(), "download {key}: {}", r.status());
            r.bytes().await.unwrap().to_vec()
        })
    }

    /// Every key in `bucket` under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        runtime().block_on(async {
            let v: Value = reqwest::Client::new()
                .get(format!("{}/storage/v1/b/{bucket}/o", self.url))
                .query(&[("prefix", prefix)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|o| o["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// The entities of the object's ACL with their roles, e.g. `allUsers:READER`.
    pub fn acl(&self, bucket: &str, key: &str) -> Vec<String> {
        let acl: Value = runtime().block_on(async {
            let r = reqwest::get(format!("{}/acl", self.object_url(bucket, key)))
                .await
                .unwrap();
            assert!(r.status().is_success(), "ACL of {key}: {}", r.status());
            r.json().await.unwrap()
        });
        acl["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "{}:{}",
                            e["entity"].as_str().unwrap(),
                            e["role"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct WebhookCall {
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl WebhookCall {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP server on loopback that records every request, for `renderStatusWebhook`.
pub struct WebhookReceiver {
    pub url: String,
    calls: std::sync::Arc<std::sync::Mutex<Vec<WebhookCall>>>,
}

impl WebhookReceiver {
    pub fn start() -> WebhookReceiver {
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let recorded = recorded.clone();
                async move {
                    recorded.lock().unwrap().push(WebhookCall {
                        headers,
                        body: body.to_vec(),
                    });
                    "ok"
                }
            },
        );
        let url = format!("{}/hook", serve_on_loopback(app));
        WebhookReceiver { url, calls }
    }

    pub fn calls(&self) -> Vec<WebhookCall> {
        self.calls.lock().unwrap().clone()
    }
}

/// The warm renderer of this test binary, shared by its tests as in production.
pub fn renderer() -> &'static Renderer {
    static R: OnceLock<Renderer> = OnceLock::new();
    R.get_or_init(|| {
        runtime()
            .block_on(Renderer::start(cloudrun_render::browser::PageGuard::new(
                None,
            )))
            .expect("start the renderer")
    })
}

pub fn site_url() -> String {
    format!("{}/site/", fixture_server())
}

pub fn site() -> SiteOptions {
    SiteOptions::new(site_url())
}

pub struct Rendered {
    pub outcome: MediaOutcome,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn render_with(site: &SiteOptions, media: &MediaOptions) -> Result<Rendered, RenderError> {
    let dir = tempfile::tempdir().unwrap();
    let audio = cloudrun_render::encode::resolve_audio_codec(
        media.codec,
        media.audio_codec,
        media.prefer_lossless,
    )
    .unwrap_or(None);
    let extension = cloudrun_render::encode::file_extension(media.codec, audio);
    let path = dir.path().join(format!("out.{extension}"));
    let (tx, _rx) = render::progress::channel();
    let outcome = runtime().block_on(renderer().render_media(
        site,
        media,
        Access::RemoteOnly,
        &path,
        &tx,
        &CancellationToken::new(),
    ));
    if outcome.is_err() {
        assert!(!path.exists(), "a failed render left its output behind");
    }
    Ok(Rendered {
        outcome: outcome?,
        path,
        _dir: dir,
    })
}

pub fn render(media: &MediaOptions) -> Rendered {
    render_with(&site(), media).expect("render")
}

pub fn fail(site: &SiteOptions, media: &MediaOptions) -> RenderError {
    match render_with(site, media) {
        Ok(_) => panic!("the render of {} should have failed", media.composition_id),
        Err(e) => e,
    }
}

pub fn media(id: &str) -> MediaOptions {
    MediaOptions::new(id)
}

/// Asserts output frame k shows composition frame `expected[k]`.
pub fn assert_frames(path: &Path, expected: &[u64]) {
    let frames = RgbFrames::decode(path);
    assert_eq!(frames.frames.len(), expected.len(), "frame count");
    for (k, want) in expected.iter().enumerate() {
        assert_eq!(frames.frame_number(k), *want, "output frame {k}");
    }
}
pub mod cluster;
