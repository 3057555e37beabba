//! Renders in the test process, on the binary's warm renderer, without HTTP.

use std::path::PathBuf;
use std::sync::OnceLock;

use cloudrun_render::options::{MediaOptions, SiteOptions};
use cloudrun_render::render::{self, MediaOutcome, RenderError, Renderer};
use cloudrun_render::site::Access;
use tokio_util::sync::CancellationToken;

use super::{fixture_server, runtime};

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
    /// Keeps `path` alive.
    pub _dir: tempfile::TempDir,
}

pub fn render_with(site: &SiteOptions, media: &MediaOptions) -> Result<Rendered, RenderError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(output_name(media));
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

/// The name the service gives a render's output, from Remotion's table: written out here
/// rather than asked of the code under test, which refuses a name that does not fit.
pub fn output_name(media: &MediaOptions) -> &'static str {
    use cloudrun_render::options::{AudioCodec, Codec::*};
    let lossless = media.prefer_lossless || media.audio_codec == Some(AudioCodec::Pcm16);
    match media.codec {
        H264 | H265 | Vp8 | Vp9 if lossless => "out.mkv",
        Mp3 | Aac if lossless => "out.wav",
        H264 | H265 => "out.mp4",
        H264Mkv => "out.mkv",
        H264Ts => "out.ts",
        Vp8 | Vp9 => "out.webm",
        Prores => "out.mov",
        Gif => "out.gif",
        Mp3 => "out.mp3",
        Aac => "out.aac",
        Wav => "out.wav",
    }
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
