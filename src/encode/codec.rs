//! What each codec means in libav terms: container, extension, encoder, CRF rules.

use crate::options::{AudioCodec, Codec};

/// The static facts about one output codec.
#[derive(Debug, Clone, Copy)]
pub struct CodecTraits {
    /// libav muxer name.
    pub muxer: &'static str,
    /// Extension of the default output name (`out.<ext>`).
    pub extension: &'static str,
    /// libav video encoder, `None` for audio-only codecs.
    pub video_encoder: Option<&'static str>,
    pub default_crf: Option<f64>,
    /// Inclusive CRF range, `None` when the codec takes no CRF.
    pub crf_range: Option<(f64, f64)>,
    pub content_type: &'static str,
}

pub fn traits(codec: Codec) -> CodecTraits {
    match codec {
        Codec::H264 => CodecTraits {
            muxer: "mp4",
            extension: "mp4",
            video_encoder: Some("libx264"),
            default_crf: Some(18.0),
            crf_range: Some((1.0, 51.0)),
            content_type: "video/mp4",
        },
        Codec::H264Mkv => CodecTraits {
            muxer: "matroska",
            extension: "mkv",
            video_encoder: Some("libx264"),
            default_crf: Some(18.0),
            crf_range: Some((1.0, 51.0)),
            content_type: "video/x-matroska",
        },
        Codec::H264Ts => CodecTraits {
            muxer: "mpegts",
            extension: "ts",
            video_encoder: Some("libx264"),
            default_crf: Some(18.0),
            crf_range: Some((1.0, 51.0)),
            content_type: "video/mp2t",
        },
        Codec::H265 => CodecTraits {
            muxer: "mp4",
            extension: "mp4",
            video_encoder: Some("libx265"),
            default_crf: Some(23.0),
            crf_range: Some((0.0, 51.0)),
            content_type: "video/mp4",
        },
        Codec::Vp8 => CodecTraits {
            muxer: "webm",
            extension: "webm",
            video_encoder: Some("libvpx"),
            default_crf: Some(9.0),
            crf_range: Some((4.0, 63.0)),
            content_type: "video/webm",
        },
        Codec::Vp9 => CodecTraits {
            muxer: "webm",
            extension: "webm",
            video_encoder: Some("libvpx-vp9"),
            default_crf: Some(28.0),
            crf_range: Some((0.0, 63.0)),
            content_type: "video/webm",
        },
        Codec::Prores => CodecTraits {
            muxer: "mov",
            extension: "mov",
            video_encoder: Some("prores_ks"),
            default_crf: None,
            crf_range: None,
            content_type: "video/quicktime",
        },
        Codec::Gif => CodecTraits {
            muxer: "gif",
            extension: "gif",
            video_encoder: Some("gif"),
            default_crf: None,
            crf_range: None,
            content_type: "image/gif",
        },
        Codec::Mp3 => CodecTraits {
            muxer: "mp3",
            extension: "mp3",
            video_encoder: None,
            default_crf: None,
            crf_range: None,
            content_type: "audio/mpeg",
        },
        Codec::Aac => CodecTraits {
            muxer: "adts",
            extension: "aac",
            video_encoder: None,
            default_crf: None,
            crf_range: None,
            content_type: "audio/aac",
        },
        Codec::Wav => CodecTraits {
            muxer: "wav",
            extension: "wav",
            video_encoder: None,
            default_crf: None,
            crf_range: None,
            content_type: "audio/wav",
        },
    }
}

/// The extension of the default output name, from the codec and the *resolved* audio codec
/// (the original service used the raw setting, which made `preferLossless` fail; we do not).
pub fn file_extension(codec: Codec, audio: Option<AudioCodec>) -> &'static str {
    match (codec, audio) {
        (Codec::H264 | Codec::H265 | Codec::Vp8 | Codec::Vp9, Some(AudioCodec::Pcm16)) => "mkv",
        (Codec::Mp3 | Codec::Aac, Some(AudioCodec::Pcm16)) => "wav",
        _ => traits(codec).extension,
    }
}

/// The Content-Type of a file by its name, for uploads.
pub fn content_type_for_name(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "ts" => "video/mp2t",
        "gif" => "image/gif",
        "mp3" => "audio/mpeg",
        "aac" => "audio/aac",
        "wav" => "audio/wav",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_follow_the_renderer_table() {
        assert_eq!(file_extension(Codec::H264, None), "mp4");
        assert_eq!(file_extension(Codec::H264, Some(AudioCodec::Aac)), "mp4");
        assert_eq!(file_extension(Codec::H264, Some(AudioCodec::Pcm16)), "mkv");
        assert_eq!(file_extension(Codec::Vp9, Some(AudioCodec::Opus)), "webm");
        assert_eq!(
            file_extension(Codec::Prores, Some(AudioCodec::Pcm16)),
            "mov"
        );
        assert_eq!(file_extension(Codec::Gif, None), "gif");
        assert_eq!(file_extension(Codec::Aac, None), "aac");
        assert_eq!(file_extension(Codec::H264Ts, None), "ts");
        assert_eq!(file_extension(Codec::H264Mkv, None), "mkv");
        assert_eq!(content_type_for_name("renders/x/out.MP4"), "video/mp4");
        assert_eq!(content_type_for_name("noext"), "application/octet-stream");
    }
}
