//! The open-source peer the bench compares against: timecut (npm `timecut`, BSD), which
//! drives a page by virtual time through puppeteer and pipes or writes its screenshots to an
//! `ffmpeg` process. It renders the fixture's `#/<composition>/clock` mode, where the
//! composition takes its frame from the page clock that timecut steps, so both sides render
//! the same frames, on the same Chromium, with the same encoder settings.
//!
//! Optional: without `scripts/bench-peer-setup` the bench says so and skips it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How timecut is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// One browser, screenshots piped into ffmpeg as they are taken (`--pipe-mode`).
    Piped,
    /// One browser, screenshots written to disk, then ffmpeg (timecut's default).
    Disk,
    /// timecut's own multi-tab mode, `--threads 2`: two browsers, each taking half the
    /// frames to disk, then ffmpeg.
    Threads2,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::Piped => "timecut, piped to ffmpeg (`-P`)",
            Variant::Disk => "timecut, frames to disk then ffmpeg (default)",
            Variant::Threads2 => "timecut `--threads 2` (to disk, then ffmpeg)",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Variant::Piped => &["--pipe-mode"],
            Variant::Disk => &[],
            Variant::Threads2 => &["--threads", "2"],
        }
    }
}

/// What the peer renders and how.
pub struct PeerJob {
    /// timecut's `cli.js`.
    pub cli: PathBuf,
    /// The fixture page in clock mode.
    pub url: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub frames: u64,
    pub crf: f64,
    pub jpeg_quality: u8,
    pub browser: PathBuf,
}

/// The page timecut opens: the local bundle's `index.html` in clock mode. `None` for a site
/// that is not a local directory (only the fixture has a clock mode).
pub fn clock_url(site: &str, composition: &str) -> Option<String> {
    let dir = Path::new(site);
    let index = dir.join("index.html");
    if !index.is_file() {
        return None;
    }
    let absolute = std::fs::canonicalize(index).ok()?;
    Some(format!(
        "file://{}#/{composition}/clock",
        absolute.to_string_lossy()
    ))
}

/// timecut's `cli.js` if it is installed, else why not.
pub fn find(cli: &Path) -> Result<PathBuf, String> {
    if !cli.is_file() {
        return Err(format!(
            "{} not found: run scripts/bench-peer-setup to install timecut",
            cli.display()
        ));
    }
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node is not installed: run scripts/bench-peer-setup".into());
    }
    let ffmpeg = Command::new("ffmpeg").arg("-version").output();
    if !ffmpeg.is_ok_and(|o| o.status.success()) {
        return Err("the ffmpeg command is not installed (timecut needs it)".into());
    }
    Ok(cli.to_path_buf())
}

/// The command line: same size, frames, JPEG quality and x264 settings as ours (h264 crf
/// preset medium yuv420p, faststart). `--no-sandbox` because the bench runs as root like
/// the service; the colour profile and hinting flags are ours, so that pixels can be compared.
pub fn command(job: &PeerJob, variant: Variant, output: &Path) -> Command {
    let mut c = Command::new("node");
    c.arg(&job.cli)
        .arg(&job.url)
        .args(["--viewport", &format!("{},{}", job.width, job.height)])
        .args(["--fps", &job.fps.to_string()])
        .args(["--frames", &job.frames.to_string()])
        .arg("--executable-path")
        .arg(&job.browser)
        .args([
            "--launch-arguments",
            "--no-sandbox --force-color-profile=srgb --font-render-hinting=none",
        ])
        .args(["--screenshot-type", "jpeg"])
        .args([
            "--screenshot-quality",
            &format!("{}", job.jpeg_quality as f64 / 100.0),
        ])
        .args([
            "--output-options",
            &format!(
                "-c:v libx264 -crf {} -preset medium -movflags +faststart",
                job.crf
            ),
        ])
        .args(["--pix-fmt", "yuv420p"])
        .args(variant.args())
        .arg("--quiet")
        .arg("--output")
        .arg(output)
        .stdin(std::process::Stdio::null());
    c
}

/// Runs the peer to the end; an error says what it printed.
pub fn run(job: &PeerJob, variant: Variant, output: &Path) -> anyhow::Result<()> {
    let out = command(job, variant, output).output()?;
    if !out.status.success() || !output.is_file() {
        anyhow::bail!(
            "timecut failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// Frame `index` of a video as packed RGB, decoded by the ffmpeg command.
fn decode_frame(video: &Path, index: u64, width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(video)
        .args([
            "-vf",
            &format!("select=eq(n\\,{index})"),
            "-vsync",
            "0",
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()?;
    let expected = width as usize * height as usize * 3;
    if !out.status.success() || out.stdout.len() != expected {
        anyhow::bail!(
            "could not decode frame {index} of {}: {}",
            video.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The frame number in the fixture's strip (ten 40 px bars at the bottom left, MSB first).
fn strip_number(rgb: &[u8], width: u32, height: u32) -> u64 {
    let y = height as usize - 20;
    (0..10).fold(0, |n, i| {
        let x = i * 40 + 20;
        let p = (y * width as usize + x) * 3;
        let luma = (rgb[p] as u32 * 299 + rgb[p + 1] as u32 * 587 + rgb[p + 2] as u32 * 114) / 1000;
        (n << 1) | u64::from(luma > 128)
    })
}

/// One frame of both outputs side by side.
#[derive(Debug, Clone)]
pub struct FramePair {
    pub index: u64,
    pub ours_strip: u64,
    pub peer_strip: u64,
    pub psnr_db: f64,
    /// Share of samples that differ by more than 16 levels.
    pub far_off: f64,
}

impl FramePair {
    /// The same picture within what JPEG q80 and two x264 crf 18 encodes add (each encoder
    /// takes its own decisions once its thread counts differ: measured 43 dB, 0.1 % of the
    /// samples off by more than 16, at edges and text): both strips read the frame number,
    /// and the pictures are within 35 dB with under 1 % of the samples far off. Another
    /// frame, or another picture, is far below that.
    pub fn equal(&self) -> bool {
        self.ours_strip == self.index
            && self.peer_strip == self.index
            && self.psnr_db >= 35.0
            && self.far_off < 0.01
    }
}

/// Compares frames `indices` of our output and the peer's.
pub fn compare(
    ours: &Path,
    peer: &Path,
    indices: &[u64],
    width: u32,
    height: u32,
) -> anyhow::Result<Vec<FramePair>> {
    indices
        .iter()
        .map(|&index| {
            let a = decode_frame(ours, index, width, height)?;
            let b = decode_frame(peer, index, width, height)?;
            let (mut squared, mut far) = (0f64, 0usize);
            for (x, y) in a.iter().zip(&b) {
                let d = (*x as i32 - *y as i32).unsigned_abs();
                squared += (d * d) as f64;
                far += usize::from(d > 16);
            }
            let mse = squared / a.len() as f64;
            let psnr_db = if mse == 0.0 {
                f64::INFINITY
            } else {
                10.0 * (255.0f64 * 255.0 / mse).log10()
            };
            Ok(FramePair {
                index,
                ours_strip: strip_number(&a, width, height),
                peer_strip: strip_number(&b, width, height),
                psnr_db,
                far_off: far as f64 / a.len() as f64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strip_reads_the_frame_number_msb_first() {
        let (w, h) = (400u32, 40u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        // Frame 37 = 0000100101: bars 4, 7 and 9 white.
        for bar in [4usize, 7, 9] {
            for y in 0..h as usize {
                for x in bar * 40..bar * 40 + 40 {
                    let p = (y * w as usize + x) * 3;
                    rgb[p..p + 3].copy_from_slice(&[255, 255, 255]);
                }
            }
        }
        assert_eq!(strip_number(&rgb, w, h), 37);
    }

    #[test]
    fn the_clock_url_points_at_the_local_bundle() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(clock_url(&dir.path().to_string_lossy(), "Bench"), None);
        std::fs::write(dir.path().join("index.html"), "").unwrap();
        let url = clock_url(&dir.path().to_string_lossy(), "Bench").unwrap();
        assert!(url.starts_with("file:///"), "{url}");
        assert!(url.ends_with("/index.html#/Bench/clock"), "{url}");
    }
}
