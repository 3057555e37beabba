//! The audio stage against real libav: decoding, tempo, pitch, trims and the mix.

mod common;

use std::path::Path;
use std::process::Command;

use cloudrun_render::audio::decode::{self, Extract};

/// A mono 16-bit WAV of a sine.
fn write_tone(path: &Path, rate: u32, hz: f64, seconds: f64, amplitude: f64) {
    let n = (rate as f64 * seconds) as usize;
    let mut data = Vec::with_capacity(n * 2);
    for i in 0..n {
        let v = (amplitude
            * (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin()
            * 32767.0) as i16;
        data.extend_from_slice(&v.to_le_bytes());
    }
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    std::fs::write(path, wav).unwrap();
}

fn extract(start: f64, end: f64, rate: f64, tone: f64) -> Extract {
    Extract {
        stream_index: 0,
        sample_rate: 48_000,
        playback_rate: rate,
        start,
        end,
        tone_frequency: tone,
    }
}

#[test]
fn decoding_resamples_to_stereo_48k() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    write_tone(&wav, 44_100, 440.0, 2.0, 0.5);
    let s = decode::decode(&wav, &extract(0.0, 2.0, 1.0, 1.0))
        .unwrap()
        .unwrap();
    assert!(
        (s.len() as i64 / 2 - 96_000).abs() < 100,
        "{} frames",
        s.len() / 2
    );
    assert!((frequency(&left(&s), 48_000) - 440.0).abs() < 3.0);
    // Mono plays at full level on both sides, as it does in the browser (Web Audio up-mixing),
    // not 3 dB down as libswresample's default matrix would have it.
    assert!((peak(&s) - 0.5).abs() < 0.02, "level kept: {}", peak(&s));
    assert_eq!(
        s[0..2000].chunks_exact(2).filter(|p| p[0] != p[1]).count(),
        0,
        "mono is duplicated to both channels"
    );
}

#[test]
fn trims_tempo_and_pitch() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    write_tone(&wav, 48_000, 440.0, 2.0, 0.5);

    let s = decode::decode(&wav, &extract(0.5, 1.25, 1.0, 1.0))
        .unwrap()
        .unwrap();
    assert!(
        (s.len() as i64 / 2 - 36_000).abs() < 100,
        "0.75 s kept: {}",
        s.len() / 2
    );

    // Twice as fast: half as long, same pitch (the renderer's atempo).
    let s = decode::decode(&wav, &extract(0.0, 10.0, 2.0, 1.0))
        .unwrap()
        .unwrap();
    assert!(
        (s.len() as i64 / 2 - 48_000).abs() < 500,
        "{} frames",
        s.len() / 2
    );
    assert!((frequency(&left(&s), 48_000) - 440.0).abs() < 5.0);

    // An octave up, same length.
    let s = decode::decode(&wav, &extract(0.0, 2.0, 1.0, 2.0))
        .unwrap()
        .unwrap();
    // atempo's analysis window costs ~20 ms at the edges, as with the renderer's ffmpeg.
    assert!(
        (s.len() as i64 / 2 - 96_000).abs() < 1500,
        "{} frames",
        s.len() / 2
    );
    assert!(
        (frequency(&left(&s), 48_000) - 880.0).abs() < 10.0,
        "{}",
        frequency(&left(&s), 48_000)
    );
}

#[test]
fn a_file_without_audio_gives_nothing() {
    // A real video without an audio stream: nothing to mix, and no error.
    generated_bars_video("bars30.mp4", 90, 30, 320, 180);
    let video = generated_dir().join("bars30.mp4");
    assert_eq!(
        decode::decode(&video, &extract(0.0, 1.0, 1.0, 1.0)).unwrap(),
        None
    );
    // Not media at all: an error that says so.
    let dir = tempfile::tempdir().unwrap();
    let not_audio = dir.path().join("x.wav");
    std::fs::write(&not_audio, b"this is not a media file").unwrap();
    let e = decode::decode(&not_audio, &extract(0.0, 1.0, 1.0, 1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("opening the source"), "{e}");
}

// ---- Whole renders: the Audio fixture registers tone440 (0.5, frames 0–59) and tone880
// (0.25 × volume 0.5, frames 30–59) as data: URL WAVs. ----

use cloudrun_render::options::{AudioCodec, Codec};
use common::*;

/// The stereo samples between two times.
fn window(pcm: &[f32], from: f64, to: f64) -> &[f32] {
    let a = (from * 48_000.0) as usize * 2;
    let b = ((to * 48_000.0) as usize * 2).min(pcm.len());
    &pcm[a.min(b)..b]
}

/// The audio of the `Audio` fixture rendered with these props (interleaved stereo f32).
fn audio_with_props(props: &str) -> Vec<f32> {
    let mut s = site();
    s.serialized_input_props = props.into();
    let r = render_with(&s, &media("Audio")).unwrap();
    stereo_pcm(&r.path)
}

/// The `Audio` fixture's mix: tone440 at 0.5 for the first second, tone880 added in the
/// second. Returns the windows it checked.
fn assert_tone440_then_tone880_added(pcm: &[f32]) -> (&[f32], &[f32]) {
    let first = window(pcm, 0.1, 0.9);
    let second = window(pcm, 1.1, 1.9);
    assert!(
        (frequency(&left(first), 48_000) - 440.0).abs() < 10.0,
        "{}",
        frequency(&left(first), 48_000)
    );
    // tone440 alone: a sine of 0.5 has an RMS of 0.354; with tone880 at 0.125 added, 0.364.
    assert!(
        (rms(first) - 0.354).abs() < 0.03,
        "first second {}",
        rms(first)
    );
    assert!(
        (rms(second) - 0.364).abs() < 0.03,
        "second second {}",
        rms(second)
    );
    (first, second)
}

#[test]
fn two_tracks_are_mixed_into_the_video() {
    let r = render_with(&site(), &media("Audio")).unwrap();
    let a = audio_stream(&r.path).expect("an audio stream");
    assert_eq!(a["codec_name"], "aac");
    assert_eq!(a["sample_rate"], "48000");
    assert_eq!(a["channels"], 2);
    let duration: f64 = ffprobe(&r.path).format["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((duration - 2.0).abs() < 0.1, "duration {duration}");
    assert_frames(&r.path, &(0..60).collect::<Vec<_>>());

    let pcm = stereo_pcm(&r.path);
    let (first, second) = assert_tone440_then_tone880_added(&pcm);
    assert!(
        peak(second) > peak(first) + 0.05,
        "the second tone adds up: {} vs {}",
        peak(second),
        peak(first)
    );
}

#[test]
fn inline_audio_from_the_page_is_mixed_with_media_tracks() {
    let pcm = audio_with_props(r#"{"inline": true}"#);
    // The page's own 440 Hz samples, with tone880 (a media asset) added on top from 1 s.
    let (first, _) = assert_tone440_then_tone880_added(&pcm);
    // A seam between frames would show as a jump far above a 440 Hz sine's step at 48 kHz.
    let largest_step = left(first)
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0f32, f32::max);
    assert!(largest_step < 0.06, "a seam: step {largest_step}");

    // toneFrequency on inline audio: an octave up, same length.
    let pcm = audio_with_props(r#"{"inline": true, "only440": true, "toneFrequency": 2}"#);
    let middle = window(&pcm, 0.2, 1.8);
    assert!(
        (frequency(&left(middle), 48_000) - 880.0).abs() < 15.0,
        "{}",
        frequency(&left(middle), 48_000)
    );
    assert!((rms(middle) - 0.354).abs() < 0.03, "level {}", rms(middle));
}

#[test]
fn muted_and_silent_renders_have_no_audio_unless_enforced() {
    let mut m = media("Audio");
    m.muted = true;
    assert!(audio_stream(&render(&m).path).is_none(), "muted");
    assert!(
        audio_stream(&render(&media("Silent")).path).is_none(),
        "no assets, no audio"
    );
    let mut m = media("Silent");
    m.enforce_audio_track = true;
    let r = render(&m);
    assert!(audio_stream(&r.path).is_some(), "enforceAudioTrack");
    assert!(peak(&stereo_pcm(&r.path)) < 0.001, "and it is silent");
}

#[test]
fn volume_curves_playback_rate_and_trims() {
    let pcm = audio_with_props(r#"{"ramp": true, "only440": true}"#);
    let (early, late) = (rms(window(&pcm, 0.05, 0.25)), rms(window(&pcm, 1.75, 1.95)));
    assert!(
        early < 0.1 && late > 0.3,
        "the fade-in: {early} then {late}"
    );

    // Twice as fast: the 2 s source is used up after 1 s of video, then silence.
    let pcm = audio_with_props(r#"{"playbackRate": 2, "only440": true}"#);
    assert!(rms(window(&pcm, 0.2, 0.8)) > 0.3);
    assert!(rms(window(&pcm, 1.2, 1.9)) < 0.01, "after the source ends");
    assert!(
        (frequency(&left(window(&pcm, 0.2, 0.8)), 48_000) - 440.0).abs() < 10.0,
        "same pitch"
    );

    // trimBefore 30 frames: the source starts 1 s in, so it also ends 1 s into the video.
    let pcm = audio_with_props(r#"{"trimBefore": 30, "only440": true}"#);
    assert!(rms(window(&pcm, 0.2, 0.8)) > 0.3);
    assert!(
        rms(window(&pcm, 1.2, 1.9)) < 0.01,
        "the trimmed source ends at 1 s"
    );
}

#[test]
fn audio_only_codecs_and_lossless() {
    for (codec, name) in [
        (Codec::Mp3, "mp3"),
        (Codec::Aac, "aac"),
        (Codec::Wav, "pcm_s16le"),
    ] {
        let mut m = media("Audio");
        m.codec = codec;
        let r = render(&m);
        let probe = ffprobe(&r.path);
        assert!(
            probe.streams.iter().all(|s| s["codec_type"] == "audio"),
            "{codec}: audio only"
        );
        assert_eq!(audio_stream(&r.path).unwrap()["codec_name"], name);
        let pcm = stereo_pcm(&r.path);
        let seconds = pcm.len() as f64 / 2.0 / 48_000.0;
        assert!((seconds - 2.0).abs() < 0.1, "{codec}: {seconds} s");
        assert!((frequency(&left(window(&pcm, 0.1, 0.9)), 48_000) - 440.0).abs() < 10.0);
    }
    let mut m = media("Audio");
    m.codec = Codec::Mp3;
    m.muted = true;
    assert!(
        fail(&site(), &m)
            .to_string()
            .contains("neither audio nor video")
    );

    // preferLossless: pcm-16 in the video (the file name follows it: .mkv).
    let mut m = media("Audio");
    m.prefer_lossless = true;
    let r = render(&m);
    assert_eq!(audio_stream(&r.path).unwrap()["codec_name"], "pcm_s16le");
    let mut m = media("Audio");
    m.codec = Codec::Vp8;
    m.audio_codec = Some(AudioCodec::Opus);
    let r = render(&m);
    assert_eq!(audio_stream(&r.path).unwrap()["codec_name"], "opus");
    let mut m = media("Audio");
    m.audio_codec = Some(AudioCodec::Opus);
    assert!(
        fail(&site(), &m).to_string().contains("audioCodec"),
        "opus is not for h264"
    );
}

/// `program args` in a user and mount namespace where `/etc/hosts` is empty and names are
/// looked up in files only, so `localhost` resolves to nothing, as in a minimal root
/// filesystem. None where this machine does not allow unprivileged namespaces.
fn without_localhost(scratch: &Path, program: &Path, args: &[&str]) -> Option<Command> {
    let probe = Command::new("unshare").args(["-rm", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return None;
    }
    let (hosts, nss) = (scratch.join("hosts"), scratch.join("nsswitch.conf"));
    std::fs::write(&hosts, "").unwrap();
    std::fs::write(&nss, "hosts: files\n").unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["-rm", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/nsswitch.conf || exit 96; \
             getent hosts localhost && exit 97; shift 2; exec \"$@\"",
        )
        .arg("sh")
        .arg(&hosts)
        .arg(&nss)
        .arg(program)
        .args(args);
    Some(cmd)
}

#[test]
fn a_static_file_of_a_local_bundle_is_fetched_without_resolving_localhost() {
    // The page names the bundle's own server http://localhost:PORT; its audio file is fetched
    // by us, not by Chromium.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("site");
    common::sites::copy_dir(&fixture("site"), &bundle);
    write_tone(&bundle.join("public/tone.wav"), 48_000, 440.0, 2.0, 0.5);
    let out = dir.path().join("audio.mp4");
    let args = [
        "render",
        bundle.to_str().unwrap(),
        "Audio",
        out.to_str().unwrap(),
        "--props",
        r#"{"src": "remotion-file:tone.wav"}"#,
    ];
    let output = match without_localhost(dir.path(), &binary(), &args) {
        Some(mut cmd) => cmd.output().unwrap(),
        None => {
            eprintln!(
                "unprivileged namespaces are not allowed here: rendering with /etc/hosts in place"
            );
            Command::new(binary()).args(args).output().unwrap()
        }
    };
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_tone440_then_tone880_added(&stereo_pcm(&out));
}

#[test]
fn a_track_that_cannot_be_fetched_fails_the_render_and_leaves_nothing() {
    // The mix runs beside the encoder's tail, once the frames are captured: its failure is
    // still the render's error, and neither the output nor the chunk directory beside it
    // stays behind.
    let mut s = site();
    s.serialized_input_props = r#"{"src": "public/missing.wav"}"#.into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mp4");
    let (tx, _rx) = cloudrun_render::render::progress::channel();
    let e = common::runtime()
        .block_on(common::renderer().render_media(
            &s,
            &media("Audio"),
            cloudrun_render::site::Access::RemoteOnly,
            &path,
            &tx,
            &tokio_util::sync::CancellationToken::new(),
        ))
        .expect_err("the track's source is missing");
    let message = e.to_string();
    assert!(
        message.contains("Error while downloading") && message.contains("missing.wav"),
        "{message}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
