//! What each codec means in libav terms: container, extension, encoder, CRF rules, and which
//! audio codecs go with it.

use super::EncodeError;
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

/// The renderer's audio table: the audio codecs a codec allows, its default, and its default
/// when `preferLossless` is set.
fn audio_codecs(codec: Codec) -> (&'static [AudioCodec], Option<AudioCodec>) {
    use AudioCodec::*;
    match codec {
        Codec::H264 => (&[Aac, Pcm16, Mp3], Some(Aac)),
        Codec::H265 => (&[Aac, Pcm16], Some(Aac)),
        Codec::Vp8 | Codec::Vp9 => (&[Opus, Pcm16], Some(Opus)),
        Codec::Prores => (&[Aac, Pcm16], Some(Pcm16)),
        Codec::Gif => (&[], None),
        Codec::Mp3 => (&[Mp3, Pcm16], Some(Mp3)),
        Codec::Aac => (&[Aac, Pcm16], Some(Aac)),
        Codec::Wav => (&[Pcm16], Some(Pcm16)),
        Codec::H264Mkv => (&[Pcm16, Mp3], Some(Pcm16)),
        Codec::H264Ts => (&[Pcm16, Aac], Some(Aac)),
    }
}

/// The audio codec a render uses, as the renderer resolves it: `preferLossless` wins (even over
/// an explicit `audioCodec`), then the explicit setting, then the codec's default. `None` for
/// codecs without audio (gif).
pub fn resolve_audio_codec(
    codec: Codec,
    audio_codec: Option<AudioCodec>,
    prefer_lossless: bool,
) -> Result<Option<AudioCodec>, EncodeError> {
    let (allowed, default) = audio_codecs(codec);
    if prefer_lossless {
        return Ok(default.map(|_| AudioCodec::Pcm16));
    }
    match audio_codec {
        None => Ok(default),
        Some(a) if allowed.contains(&a) => Ok(Some(a)),
        Some(a) => {
            let supported: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
            Err(EncodeError::InvalidOption(format!(
                "Audio codec {a} is not supported for codec {codec} (\"audioCodec\"). Supported: {}.",
                if supported.is_empty() {
                    "none".to_string()
                } else {
                    supported.join(", ")
                }
            )))
        }
    }
}

/// The libav encoder of an audio codec. Debian's libav has no libfdk_aac (the renderer's
/// choice), so aac uses libav's native encoder.
pub fn audio_encoder_name(audio: AudioCodec) -> &'static str {
    match audio {
        AudioCodec::Aac => "aac",
        AudioCodec::Mp3 => "libmp3lame",
        AudioCodec::Opus => "libopus",
        AudioCodec::Pcm16 => "pcm_s16le",
    }
}

/// The libav muxer for an output file extension (the container follows the file name, as it
/// does for the ffmpeg CLI).
pub fn muxer_for_extension(extension: &str) -> Option<&'static str> {
    Some(match extension.to_ascii_lowercase().as_str() {
        "mp4" | "m4v" | "m4a" | "m4b" => "mp4",
        "mov" => "mov",
        "mkv" => "matroska",
        "webm" => "webm",
        "ts" => "mpegts",
        "gif" => "gif",
        "mp3" => "mp3",
        "aac" => "adts",
        "wav" => "wav",
        "opus" => "opus",
        "mxf" => "mxf",
        "3gp" => "3gp",
        "hevc" => "hevc",
        "mpg" | "mpeg" => "mpeg",
        _ => return None,
    })
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

/// The extensions an output may have for a codec and its (resolved) audio codec, as the
/// renderer's table says; the first is the default.
pub fn allowed_extensions(codec: Codec, audio: Option<AudioCodec>) -> &'static [&'static str] {
    use AudioCodec::*;
    match (codec, audio) {
        (Codec::H264, Some(Aac | Mp3)) => &["mp4", "mkv", "mov"],
        (Codec::H264, Some(Pcm16)) => &["mkv", "mov"],
        (Codec::H265, Some(Aac)) => &["mp4", "mkv", "hevc"],
        (Codec::H265, Some(Pcm16)) => &["mkv"],
        (Codec::Vp8 | Codec::Vp9, Some(Opus)) => &["webm"],
        (Codec::Vp8 | Codec::Vp9, Some(Pcm16)) => &["mkv"],
        (Codec::Prores, Some(_)) => &["mov", "mkv", "mxf"],
        (Codec::Mp3, Some(Mp3)) => &["mp3"],
        (Codec::Aac, Some(Aac)) => &["aac", "3gp", "m4a", "m4b", "mpg", "mpeg"],
        (Codec::Mp3 | Codec::Aac | Codec::Wav, Some(Pcm16)) => &["wav"],
        (Codec::H264Mkv, _) => &["mkv"],
        (Codec::H264Ts, _) => &["ts"],
        (Codec::Gif, _) => &["gif"],
        _ => match traits(codec).extension {
            "mp4" => &["mp4", "mkv", "mov"],
            "webm" => &["webm", "mkv"],
            "mov" => &["mov", "mkv", "mxf"],
            "mp3" => &["mp3"],
            "aac" => &["aac"],
            _ => &["wav"],
        },
    }
}

/// Refuses an output name whose container cannot hold this codec and audio codec, with the
/// renderer's message.
pub fn validate_output_name(
    name: &str,
    codec: Codec,
    audio: Option<AudioCodec>,
) -> Result<(), super::EncodeError> {
    let allowed = allowed_extensions(codec, audio);
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if allowed.contains(&ext.as_str()) {
        return Ok(());
    }
    let audio = audio.map(|a| a.as_str()).unwrap_or("no");
    Err(super::EncodeError::InvalidOption(format!(
        "When using the {codec} codec with the {audio} audio codec, the output filename must end in one of the following: {}. (\"{name}\")",
        allowed.join(", ")
    )))
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

    #[test]
    fn audio_codecs_resolve_like_the_renderer() {
        use AudioCodec::*;
        let r = |c, a, l| resolve_audio_codec(c, a, l).unwrap();
        assert_eq!(r(Codec::H264, None, false), Some(Aac));
        assert_eq!(r(Codec::H264, None, true), Some(Pcm16));
        assert_eq!(r(Codec::H264, Some(Mp3), false), Some(Mp3));
        // preferLossless overrides an explicit codec, even one the codec would refuse.
        assert_eq!(r(Codec::H264, Some(Opus), true), Some(Pcm16));
        assert_eq!(r(Codec::Prores, None, false), Some(Pcm16));
        assert_eq!(r(Codec::Vp8, None, false), Some(Opus));
        assert_eq!(r(Codec::Vp9, None, true), Some(Pcm16));
        assert_eq!(r(Codec::Gif, None, true), None);
        assert_eq!(r(Codec::Mp3, None, false), Some(Mp3));
        assert_eq!(r(Codec::Aac, None, true), Some(Pcm16));
        assert_eq!(r(Codec::Wav, None, false), Some(Pcm16));
        assert_eq!(r(Codec::H264Ts, None, false), Some(Aac));
        let e = resolve_audio_codec(Codec::Vp8, Some(Aac), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Audio codec aac is not supported for codec vp8 (\"audioCodec\"). Supported: opus, pcm-16."
        );
        let e = resolve_audio_codec(Codec::Gif, Some(Aac), false).unwrap_err();
        assert!(e.to_string().contains("Supported: none"), "{e}");
    }

    #[test]
    fn containers_follow_the_extension() {
        for codec in Codec::ALL {
            for audio in [None, resolve_audio_codec(*codec, None, false).unwrap()] {
                let ext = file_extension(*codec, audio);
                assert!(muxer_for_extension(ext).is_some(), "{codec} {ext}");
            }
        }
        assert_eq!(muxer_for_extension("MKV"), Some("matroska"));
        assert_eq!(muxer_for_extension("aac"), Some("adts"));
        assert_eq!(muxer_for_extension("xyz"), None);
    }

    #[test]
    fn output_names_must_fit_the_codecs() {
        assert!(validate_output_name("a.mp4", Codec::H264, Some(AudioCodec::Aac)).is_ok());
        assert!(validate_output_name("a.MOV", Codec::H264, Some(AudioCodec::Pcm16)).is_ok());
        let e = validate_output_name("a.mp4", Codec::H264, Some(AudioCodec::Pcm16)).unwrap_err();
        assert!(
            e.to_string()
                .contains("must end in one of the following: mkv, mov"),
            "{e}"
        );
        assert!(validate_output_name("a.webm", Codec::Vp9, Some(AudioCodec::Opus)).is_ok());
        assert!(validate_output_name("a.gif", Codec::Gif, None).is_ok());
        assert!(validate_output_name("a.mp4", Codec::Gif, None).is_err());
        for c in Codec::ALL {
            let a = resolve_audio_codec(*c, None, false).unwrap();
            let default = file_extension(*c, a);
            assert!(
                validate_output_name(&format!("out.{default}"), *c, a).is_ok(),
                "{c}"
            );
        }
    }
}
