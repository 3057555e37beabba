//! The command line: flags named as `npx remotion render` users know them.
//!
//! Every flag is converted into `options` types here, once; the render path is the same one
//! the HTTP service uses.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::browser::PageGuard;
use crate::options::{
    AudioCodec, Codec, Concurrency, FrameRange, GlRenderer, LogLevel, MediaOptions, PixelFormat,
    ProResProfile, SiteOptions, StillImageFormat, StillOptions, VideoImageFormat, X264Preset,
};
use crate::render::{self, Renderer};
use crate::site::Access;
use crate::storage::Storage;

mod remote;
mod sites;

#[derive(Debug, Parser)]
#[command(
    name = "cloudrun-render",
    version,
    about = "Renders Remotion compositions; a Cloud Run service compatible with renderMediaOnCloudrun()"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Cloud Run endpoint on 0.0.0.0:$PORT (default 8080; 0 picks a free port).
    Serve(ServeArgs),
    /// Render a video (or audio) file.
    Render(RenderArgs),
    /// Render one frame to an image or a PDF.
    Still(StillArgs),
    /// List the compositions of a site.
    Compositions(CompositionsArgs),
    /// Measure capture, encode and render speed, memory and still latency; writes BENCHMARKS.md.
    Bench(crate::bench::BenchArgs),
    /// Deploy bundles to a bucket as serve URLs, list and delete them.
    Sites(sites::SitesArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    #[arg(long, default_value = "0.0.0.0")]
    pub host: std::net::IpAddr,
}

/// How to open the site: shared by every subcommand that opens one.
#[derive(Debug, Args, Clone)]
pub struct SiteArgs {
    /// An http(s) serve URL or a local bundle directory.
    pub serve_url: String,
    /// Input props: a JSON object, or the path of a JSON file.
    #[arg(long)]
    pub props: Option<String>,
    /// A dotenv file whose variables the page sees in process.env.
    #[arg(long = "env-file")]
    pub env_file: Option<PathBuf>,
    /// delayRender() timeout in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub timeout: u64,
    /// trace, verbose, info, warn or error. verbose forwards the page's console.
    #[arg(long = "log", default_value = "info")]
    pub log: LogLevel,
    /// OpenGL backend: swangle, angle, egl, swiftshader, vulkan, angle-egl.
    #[arg(long)]
    pub gl: Option<GlRenderer>,
    #[arg(long = "user-agent")]
    pub user_agent: Option<String>,
    #[arg(long = "ignore-certificate-errors")]
    pub ignore_certificate_errors: bool,
    #[arg(long = "disable-web-security")]
    pub disable_web_security: bool,
    #[arg(long = "dark-mode")]
    pub dark_mode: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub site: SiteArgs,
    pub composition: String,
    /// Where the file goes. With --service: optional; the output is downloaded here.
    #[arg(required_unless_present = "service")]
    pub output: Option<PathBuf>,
    /// h264, h265, vp8, vp9, prores, gif, h264-mkv, h264-ts, mp3, aac, wav. Default: from the
    /// output's extension, else h264.
    #[arg(long)]
    pub codec: Option<Codec>,
    /// N, A-B or A- (several separated by commas).
    #[arg(long)]
    pub frames: Option<FrameRange>,
    #[arg(long = "every-nth-frame", default_value_t = 1)]
    pub every_nth_frame: u32,
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// N tabs, or P% of the CPUs.
    #[arg(long)]
    pub concurrency: Option<Concurrency>,
    #[arg(long)]
    pub crf: Option<f64>,
    #[arg(long = "video-bitrate")]
    pub video_bitrate: Option<String>,
    #[arg(long = "max-rate")]
    pub encoding_max_rate: Option<String>,
    #[arg(long = "buffer-size")]
    pub encoding_buffer_size: Option<String>,
    #[arg(long = "jpeg-quality")]
    pub jpeg_quality: Option<u8>,
    /// png, jpeg or none.
    #[arg(long = "image-format")]
    pub image_format: Option<VideoImageFormat>,
    #[arg(long = "pixel-format")]
    pub pixel_format: Option<PixelFormat>,
    #[arg(long = "prores-profile")]
    pub prores_profile: Option<ProResProfile>,
    #[arg(long = "x264-preset")]
    pub x264_preset: Option<X264Preset>,
    #[arg(long = "gop-size")]
    pub gop_size: Option<u32>,
    #[arg(long = "number-of-gif-loops")]
    pub number_of_gif_loops: Option<u32>,
    /// pcm-16, aac, mp3 or opus.
    #[arg(long = "audio-codec")]
    pub audio_codec: Option<AudioCodec>,
    #[arg(long = "audio-bitrate")]
    pub audio_bitrate: Option<String>,
    #[arg(long)]
    pub muted: bool,
    #[arg(long = "enforce-audio-track")]
    pub enforce_audio_track: bool,
    #[arg(long = "prefer-lossless")]
    pub prefer_lossless: bool,
    #[arg(long = "color-space")]
    pub color_space: Option<crate::options::ColorSpace>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[command(flatten)]
    pub service: remote::ServiceArgs,
    /// Render N frames at a time, one chunk after the other, then join the chunks without
    /// re-encoding: what a render spread over instances does. gif and audio-only outputs are
    /// rendered in one piece.
    #[arg(long = "frames-per-chunk", value_parser = clap::value_parser!(u64).range(1..))]
    pub frames_per_chunk: Option<u64>,
}

#[derive(Debug, Args)]
pub struct StillArgs {
    #[command(flatten)]
    pub site: SiteArgs,
    pub composition: String,
    /// Where the image goes. With --service: optional; the output is downloaded here.
    #[arg(required_unless_present = "service")]
    pub output: Option<PathBuf>,
    /// Negative counts from the end.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub frame: i64,
    /// png, jpeg, webp or pdf. Default: from the output's extension, else png.
    #[arg(long = "image-format")]
    pub image_format: Option<StillImageFormat>,
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    #[arg(long = "jpeg-quality")]
    pub jpeg_quality: Option<u8>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[command(flatten)]
    pub service: remote::ServiceArgs,
}

#[derive(Debug, Args)]
pub struct CompositionsArgs {
    #[command(flatten)]
    pub site: SiteArgs,
}

impl SiteArgs {
    pub fn to_options(&self) -> anyhow::Result<SiteOptions> {
        let mut site = SiteOptions::new(self.serve_url.clone());
        if let Some(props) = &self.props {
            site.serialized_input_props = read_props(props)?;
        }
        if let Some(path) = &self.env_file {
            site.env_variables = read_env_file(path)?;
        }
        anyhow::ensure!(
            self.timeout > 0,
            "--timeout must be a positive number of milliseconds"
        );
        site.timeout = Duration::from_millis(self.timeout);
        site.log_level = self.log;
        site.chromium.gl = self.gl;
        site.chromium.user_agent = self.user_agent.clone();
        site.chromium.ignore_certificate_errors = self.ignore_certificate_errors;
        site.chromium.disable_web_security = self.disable_web_security;
        site.chromium.dark_mode = self.dark_mode;
        Ok(site)
    }
}

/// `--props` is a JSON object, or the path of a file holding one.
fn read_props(value: &str) -> anyhow::Result<String> {
    let text = if value.trim_start().starts_with('{') {
        value.to_string()
    } else {
        std::fs::read_to_string(value).map_err(|e| {
            anyhow::anyhow!("--props: \"{value}\" is neither JSON nor a readable file: {e}")
        })?
    };
    let parsed: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--props is not valid JSON: {e}"))?;
    anyhow::ensure!(parsed.is_object(), "--props must be a JSON object");
    Ok(parsed.to_string())
}

fn read_env_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for item in dotenvy::from_path_iter(path)
        .map_err(|e| anyhow::anyhow!("--env-file {}: {e}", path.display()))?
    {
        let (k, v) = item.map_err(|e| anyhow::anyhow!("--env-file {}: {e}", path.display()))?;
        vars.insert(k, v);
    }
    Ok(vars)
}

/// The codec an output name implies, as the Remotion CLI infers it.
fn codec_from_extension(path: &Path) -> Option<Codec> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "mp4" | "m4v" => Codec::H264,
        "webm" => Codec::Vp8,
        "mov" => Codec::Prores,
        "gif" => Codec::Gif,
        "mkv" => Codec::H264Mkv,
        "ts" => Codec::H264Ts,
        "mp3" => Codec::Mp3,
        "aac" => Codec::Aac,
        "wav" => Codec::Wav,
        _ => return None,
    })
}

impl RenderArgs {
    pub fn to_options(&self) -> anyhow::Result<MediaOptions> {
        let mut m = MediaOptions::new(self.composition.clone());
        m.codec = self
            .codec
            .or_else(|| codec_from_extension(self.service.output_name(self.output.as_deref())?))
            .unwrap_or(Codec::H264);
        m.overrides.width = self.width;
        m.overrides.height = self.height;
        if let Some(f) = &self.frames {
            m.frame_range = f.clone();
        }
        anyhow::ensure!(
            self.every_nth_frame >= 1,
            "--every-nth-frame must be 1 or more"
        );
        m.every_nth_frame = self.every_nth_frame;
        anyhow::ensure!(
            self.scale > 0.0 && self.scale <= 16.0,
            "--scale must be greater than 0 and at most 16"
        );
        m.scale = self.scale;
        m.concurrency = self.concurrency.unwrap_or_default();
        m.crf = self.crf;
        m.video_bitrate = self.video_bitrate.clone();
        m.encoding_max_rate = self.encoding_max_rate.clone();
        m.encoding_buffer_size = self.encoding_buffer_size.clone();
        if let Some(q) = self.jpeg_quality {
            anyhow::ensure!(q <= 100, "--jpeg-quality must be between 0 and 100");
            m.jpeg_quality = q;
        }
        m.image_format = self.image_format;
        m.pixel_format = self.pixel_format;
        m.prores_profile = self.prores_profile;
        m.x264_preset = self.x264_preset;
        m.gop_size = self.gop_size;
        m.number_of_gif_loops = self.number_of_gif_loops;
        m.audio_codec = self.audio_codec;
        m.audio_bitrate = self.audio_bitrate.clone();
        m.muted = self.muted;
        m.enforce_audio_track = self.enforce_audio_track;
        m.prefer_lossless = self.prefer_lossless;
        if let Some(cs) = self.color_space {
            m.color_space = cs;
        }
        Ok(m)
    }
}

impl StillArgs {
    pub fn to_options(&self) -> anyhow::Result<StillOptions> {
        let mut s = StillOptions::new(self.composition.clone());
        s.frame = self.frame;
        s.image_format = self.image_format.unwrap_or_else(|| {
            self.service
                .output_name(self.output.as_deref())
                .and_then(Path::extension)
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase())
                .and_then(|e| match e.as_str() {
                    "jpg" => Some(StillImageFormat::Jpeg),
                    other => other.parse().ok(),
                })
                .unwrap_or(StillImageFormat::Png)
        });
        anyhow::ensure!(
            self.scale > 0.0 && self.scale <= 16.0,
            "--scale must be greater than 0 and at most 16"
        );
        s.scale = self.scale;
        if let Some(q) = self.jpeg_quality {
            anyhow::ensure!(q <= 100, "--jpeg-quality must be between 0 and 100");
            s.jpeg_quality = q;
        }
        s.overrides.width = self.width;
        s.overrides.height = self.height;
        Ok(s)
    }
}

/// A render's bar: position is percent.
const PERCENT_BAR: &str = "{spinner} [{elapsed_precise}] {bar:40} {pos:>3}% {msg}";

/// A progress bar on stderr, drawn only on a terminal.
fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if std::io::stderr().is_terminal() {
        bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Cancels on Ctrl-C / SIGTERM, so a killed CLI render leaves no partial output.
fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        crate::system::termination_requested().await;
        t.cancel();
    });
    token
}

/// A temporary name beside `output`, renamed into place only when the file is complete. It
/// keeps the extension, which picks the container.
fn partial_path(output: &Path) -> PathBuf {
    let stem = output.file_stem().and_then(|n| n.to_str()).unwrap_or("out");
    let pid = std::process::id();
    match output.extension().and_then(|e| e.to_str()) {
        Some(ext) => output.with_file_name(format!(".{stem}.partial-{pid}.{ext}")),
        None => output.with_file_name(format!(".{stem}.partial-{pid}")),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Render(args) if args.service.service.is_some() => remote::render(args).await,
        Command::Still(args) if args.service.service.is_some() => remote::still(args).await,
        Command::Render(args) => render(args).await,
        Command::Still(args) => still(args).await,
        Command::Compositions(args) => compositions(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Sites(args) => sites::run(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Bound first, so that with port 0 the guard still keeps pages off our real port.
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port)).await?;
    let port = listener.local_addr()?.port();
    let storage = Storage::from_env().await?;
    if let Some(fanout) = crate::fanout::FanoutConfig::from_env()? {
        tracing::info!(url = %fanout.url, max_chunks = fanout.max_chunks, "fan-out URL configured");
    }
    let renderer = Arc::new(Renderer::start(PageGuard::new(Some(port))).await?);
    let state = Arc::new(AppState::new(renderer.clone(), Arc::new(storage)));
    let result = api::serve(listener, state).await;
    renderer.shutdown().await;
    Ok(result?)
}

async fn render(args: RenderArgs) -> anyhow::Result<()> {
    let output = args.output.clone().context("an output path is required")?;
    let site = args.site.to_options()?;
    let media = args.to_options()?;
    let renderer = Renderer::start(PageGuard::new(None)).await?;
    let cancel = cancel_on_signal();
    let (progress_tx, mut progress_rx) = render::progress::channel();
    let bar = progress_bar(100, PERCENT_BAR);
    let bar2 = bar.clone();
    let watcher = tokio::spawn(async move {
        while progress_rx.changed().await.is_ok() {
            let p = *progress_rx.borrow();
            bar2.set_position((p.fraction() * 100.0).round() as u64);
            bar2.set_message(format!(
                "{}/{} rendered, {} encoded",
                p.rendered, p.total, p.encoded
            ));
        }
    });
    let partial = partial_path(&output);
    let result = renderer
        .render_media_in_chunks(
            &site,
            &media,
            Access::RemoteOrLocal,
            &partial,
            args.frames_per_chunk,
            &progress_tx,
            &cancel,
        )
        .await;
    drop(progress_tx);
    let _ = watcher.await;
    renderer.shutdown().await;
    match result {
        Ok(outcome) => {
            std::fs::rename(&partial, &output)?;
            bar.finish_and_clear();
            eprintln!(
                "Rendered {} frames ({}x{}, {}) to {} in {:.1}s",
                outcome.frames,
                outcome.width,
                outcome.height,
                media.codec,
                output.display(),
                outcome.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Err(e) => {
            bar.abandon();
            let _ = std::fs::remove_file(&partial);
            Err(anyhow::anyhow!("{}: {e}", e.name()))
        }
    }
}

async fn still(args: StillArgs) -> anyhow::Result<()> {
    let output = args.output.clone().context("an output path is required")?;
    let site = args.site.to_options()?;
    let still = args.to_options()?;
    let renderer = Renderer::start(PageGuard::new(None)).await?;
    let cancel = cancel_on_signal();
    let result = renderer
        .render_still(&site, &still, Access::RemoteOrLocal, &cancel)
        .await;
    renderer.shutdown().await;
    let (composition, bytes) = result.map_err(|e| anyhow::anyhow!("{}: {e}", e.name()))?;
    let partial = partial_path(&output);
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(&partial, &output)?;
    eprintln!(
        "Rendered frame {} of {} as {} to {}",
        still.frame,
        composition.info.id,
        still.image_format,
        output.display()
    );
    Ok(())
}

async fn compositions(args: CompositionsArgs) -> anyhow::Result<()> {
    let site = args.site.to_options()?;
    let renderer = Renderer::start(PageGuard::new(None)).await?;
    let result = renderer.compositions(&site, Access::RemoteOrLocal).await;
    renderer.shutdown().await;
    let list = result.map_err(|e| anyhow::anyhow!("{}: {e}", e.name()))?;
    println!(
        "{:<24} {:>11} {:>8} {:>10}",
        "id", "size", "fps", "duration"
    );
    for c in list {
        println!(
            "{:<24} {:>11} {:>8} {:>10}",
            c.id,
            format!("{}x{}", c.width, c.height),
            c.fps,
            format!("{} frames", c.duration_in_frames)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("cloudrun-render").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn every_render_flag_reaches_the_options() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join(".env");
        std::fs::write(&env, "FIXTURE_COLOR=\"#123456\"\n").unwrap();
        let cli = parse(&[
            "render",
            "site",
            "Comp",
            "out.webm",
            "--codec",
            "vp9",
            "--props",
            "{\"a\":1}",
            "--frames",
            "3-9",
            "--every-nth-frame",
            "2",
            "--scale",
            "1.5",
            "--concurrency",
            "50%",
            "--crf",
            "30",
            "--jpeg-quality",
            "70",
            "--image-format",
            "png",
            "--pixel-format",
            "yuva420p",
            "--audio-codec",
            "opus",
            "--audio-bitrate",
            "96k",
            "--muted",
            "--enforce-audio-track",
            "--env-file",
            env.to_str().unwrap(),
            "--timeout",
            "5000",
            "--log",
            "verbose",
        ]);
        let Command::Render(args) = cli.command else {
            panic!()
        };
        let site = args.site.to_options().unwrap();
        let m = args.to_options().unwrap();
        assert_eq!(m.codec, Codec::Vp9);
        assert_eq!(site.serialized_input_props, "{\"a\":1}");
        assert_eq!(m.frame_range, FrameRange::Ranges(vec![(3, Some(9))]));
        assert_eq!(m.every_nth_frame, 2);
        assert_eq!(m.scale, 1.5);
        assert_eq!(m.concurrency, Concurrency::Percent(50.0));
        assert_eq!(m.crf, Some(30.0));
        assert_eq!(m.jpeg_quality, 70);
        assert_eq!(m.image_format, Some(VideoImageFormat::Png));
        assert_eq!(m.pixel_format, Some(PixelFormat::Yuva420p));
        assert_eq!(m.audio_codec, Some(AudioCodec::Opus));
        assert_eq!(m.audio_bitrate.as_deref(), Some("96k"));
        assert!(m.muted && m.enforce_audio_track);
        assert_eq!(site.env_variables["FIXTURE_COLOR"], "#123456");
        assert_eq!(site.timeout, Duration::from_millis(5000));
        assert_eq!(site.log_level, LogLevel::Verbose);

        let cli = parse(&[
            "render",
            "site",
            "Comp",
            "out.mov",
            "--prores-profile",
            "4444",
            "--video-bitrate",
            "5M",
            "--x264-preset",
            "fast",
            "--concurrency",
            "2",
            "--frames-per-chunk",
            "50",
        ]);
        let Command::Render(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.frames_per_chunk, Some(50));
        let m = args.to_options().unwrap();
        assert_eq!(m.codec, Codec::Prores);
        assert_eq!(m.prores_profile, Some(ProResProfile::ProRes4444));
        assert_eq!(m.video_bitrate.as_deref(), Some("5M"));
        assert_eq!(m.x264_preset, Some(X264Preset::Fast));
        assert_eq!(m.concurrency, Concurrency::Count(2.0));
    }

    #[test]
    fn bad_flags_are_refused() {
        for args in [
            &["render", "s", "C", "o.mp4", "--codec", "h266"][..],
            &["render", "s", "C", "o.mp4", "--frames", "9-3"],
            &["render", "s", "C", "o.mp4", "--concurrency", "lots"],
            &["render", "s", "C", "o.mp4", "--image-format", "webp"],
            &["render", "s", "C", "o.mp4", "--frames-per-chunk", "0"],
            &["still", "s", "C", "o.png", "--image-format", "gif"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).is_err(),
                "{args:?}"
            );
        }
        let cli = parse(&[
            "render",
            "s",
            "C",
            "o.mp4",
            "--props",
            "/does/not/exist.json",
        ]);
        let Command::Render(args) = cli.command else {
            panic!()
        };
        assert!(args.site.to_options().is_err());
    }

    #[test]
    fn still_flags_and_defaults() {
        let cli = parse(&["still", "s", "C", "o.jpg", "--frame", "-1"]);
        let Command::Still(args) = cli.command else {
            panic!()
        };
        let s = args.to_options().unwrap();
        assert_eq!(s.frame, -1);
        assert_eq!(s.image_format, StillImageFormat::Jpeg);
        let cli = parse(&["still", "s", "C", "o.bin", "--image-format", "pdf"]);
        let Command::Still(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            args.to_options().unwrap().image_format,
            StillImageFormat::Pdf
        );
    }

    #[test]
    fn codec_follows_the_extension_unless_given() {
        assert_eq!(codec_from_extension(Path::new("a.webm")), Some(Codec::Vp8));
        assert_eq!(codec_from_extension(Path::new("a.MP4")), Some(Codec::H264));
        assert_eq!(codec_from_extension(Path::new("a.xyz")), None);
    }
}
