//! Media in and out: generated inputs, ffprobe/ffmpeg probes of outputs, and the fixtures' bar
//! code that says which frame a picture shows.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{fixture_server, generated_dir};

/// The fixtures' picture for frame `f` as packed RGB: ten bars with the frame number on top, a
/// colour that moves with `f` below (fixtures/README.md), and, with `noise`, grain that makes
/// every frame expensive to encode.
pub fn bars_picture(f: u64, width: u32, height: u32, noise: bool) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    let mut seed = f.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for y in 0..h {
        for x in 0..w {
            let px = if y < h.div_ceil(2) {
                let bar = x * 10 / w;
                if (f >> (9 - bar)) & 1 == 1 {
                    [255; 3]
                } else {
                    [0; 3]
                }
            } else {
                let c = ((2 * f) % 256) as u8;
                let mut px = [c, 128, 255 - c];
                if noise {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    for v in &mut px {
                        *v = v.saturating_add((seed % 64) as u8);
                    }
                }
                px
            };
            rgb[(y * w + x) * 3..][..3].copy_from_slice(&px);
        }
    }
    rgb
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
            stdin
                .write_all(&bars_picture(k, width as u32, height as u32, false))
                .unwrap();
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

/// The first audio stream of a file, as ffprobe describes it.
pub fn audio_stream(path: &Path) -> Option<Value> {
    ffprobe(path)
        .streams
        .into_iter()
        .find(|s| s["codec_type"] == "audio")
}

/// The first audio stream of a file decoded by ffmpeg to interleaved stereo f32 at 48 kHz.
pub fn stereo_pcm(path: &Path) -> Vec<f32> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-map", "0:a:0", "-ac", "2", "-ar", "48000", "-f", "f32le", "-",
        ])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "decoding the audio of {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The left channel of interleaved stereo samples.
pub fn left(stereo: &[f32]) -> Vec<f32> {
    stereo.iter().step_by(2).copied().collect()
}

/// The frequency of a mono tone, from its zero crossings.
pub fn frequency(mono: &[f32], rate: u32) -> f64 {
    let crossings = mono
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    crossings as f64 / 2.0 / (mono.len() as f64 / rate as f64)
}

pub fn rms(samples: &[f32]) -> f64 {
    (samples.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / samples.len().max(1) as f64).sqrt()
}

pub fn peak(samples: &[f32]) -> f32 {
    samples.iter().fold(0f32, |m, v| m.max(v.abs()))
}
