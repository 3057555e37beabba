//! Media in and out: generated inputs, ffprobe/ffmpeg probes of outputs, and the fixtures' bar
//! code that says which frame a picture shows.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{fixture_server, generated_dir};

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

/// Asserts output frame k shows composition frame `expected[k]`.
pub fn assert_frames(path: &Path, expected: &[u64]) {
    let frames = RgbFrames::decode(path);
    assert_eq!(frames.frames.len(), expected.len(), "frame count");
    for (k, want) in expected.iter().enumerate() {
        assert_eq!(frames.frame_number(k), *want, "output frame {k}");
    }
}
