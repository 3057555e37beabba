//! Encoding captured frames into a video file with libav (through `ffmpeg-next`), and the
//! audio that goes with it.
//!
//! Frames arrive as encoded screenshots. The decode tasks turn them into frames of the
//! encoder's pixel format ([`FramePreparer`]); the encoder thread feeds them, in order, to the
//! encoder and straight into the output container ([`VideoEncoder`]). No frame touches the
//! disk. Audio is muxed in a second pass that copies the video packets of one or more
//! video-only files ([`join`]), once the audio stage has mixed it.
//!
//! **Architecture Invariant:** this module knows nothing of Chromium or pages. Its inputs are
//! image bytes, PCM samples and plain settings.

pub mod audio;
pub mod codec;
mod filter;
mod frame;
pub mod join;
mod settings;
mod video;

use ffmpeg_next as ff;

use crate::libav::init;

pub use audio::AudioSettings;
pub use codec::{
    CodecTraits, allowed_extensions, content_type_for_name, file_extension, muxer_for_extension,
    resolve_audio_codec, traits, validate_output_name,
};
pub use frame::{FramePreparer, PreparedFrame};
pub use join::{
    ChunkFile, JoinAudio, StreamParameters, chunk_container, join, stream_parameters,
    write_audio_only,
};
pub use settings::{
    FrameRate, VideoSettings, metadata_tags, resolve_image_format, settings, validate,
};
pub use video::{Target, VideoEncoder};

/// The version string written into the `comment` tag, like Remotion's "Made with Remotion".
const MADE_WITH: &str = concat!("Made with cloudrun-render ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// An option or combination of options the encoder refuses; names the option.
    #[error("{0}")]
    InvalidOption(String),
    #[error("The encoder \"{0}\" is not available in this libav build")]
    MissingEncoder(String),
    #[error("Could not decode a captured frame: {0}")]
    Decode(String),
    #[error("libav failed while {during}: {source}")]
    Libav {
        during: &'static str,
        #[source]
        source: ff::Error,
    },
    /// Video files that cannot be joined as they are: other codec parameters, no keyframe
    /// first, other frames than declared.
    #[error("Cannot join the chunks: {0}")]
    Join(String),
    /// The encoder was told to stop before the end; the file is incomplete.
    #[error("The encoder was stopped before the last frame")]
    Aborted,
}

impl EncodeError {
    /// The JS-style name of the wire error.
    pub fn name(&self) -> &'static str {
        "Error"
    }
}

fn libav(during: &'static str) -> impl Fn(ff::Error) -> EncodeError {
    move |source| EncodeError::Libav { during, source }
}
