//! The audio stage against real libav: decoding, tempo, pitch, trims and the mix.

mod common;

use std::path::Path;

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

/// Frequency from zero crossings of the left channel.
fn frequency(stereo: &[f32], rate: u32) -> f64 {
    let left: Vec<f32> = stereo.chunks_exact(2).map(|p| p[0]).collect();
    let crossings = left
        .windows(2)
        .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
        .count();
    crossings as f64 / (left.len() as f64 / rate as f64)
}

fn peak(stereo: &[f32]) -> f32 {
    stereo.iter().fold(0f32, |m, v| m.max(v.abs()))
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
    assert!((frequency(&s, 48_000) - 440.0).abs() < 3.0);
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
    assert!((frequency(&s, 48_000) - 440.0).abs() < 5.0);

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
        (frequency(&s, 48_000) - 880.0).abs() < 10.0,
        "{}",
        frequency(&s, 48_000)
    );
}

#[test]
fn a_file_without_audio_gives_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let not_audio = dir.path().join("x.wav");
    std::fs::write(&not_audio, b"this is not a media file").unwrap();
    assert!(decode::decode(&not_audio, &extract(0.0, 1.0, 1.0, 1.0)).is_err());
}
