//! Encode throughput at 1080p, the way a render feeds the encoder: JPEG screenshots decoded and
//! converted on worker threads, encoded in order on one thread.
//!
//! `[BENCH_FRAMES=dir-of-jpgs] [BENCH_CRF=n] [BENCH_COLOR=bt709] cargo run --release --example encode_bench -- [h264|vp8|…] [frames]`

use std::sync::mpsc;
use std::time::Instant;

use cloudrun_render::encode::{self, FramePreparer, Target, VideoEncoder};
use cloudrun_render::options::{Codec, MediaOptions, VideoImageFormat};

const W: u32 = 1920;
const H: u32 = 1080;

/// A motion-graphics-like frame: a drifting gradient with moving coloured cards.
fn frame(f: u32) -> Vec<u8> {
    let mut rgb = vec![0u8; (W * H * 3) as usize];
    for y in 0..H {
        for x in 0..W {
            let i = ((y * W + x) * 3) as usize;
            rgb[i] = ((x + f * 4) / 8) as u8;
            rgb[i + 1] = ((y + f * 2) / 5) as u8;
            rgb[i + 2] = (((x + y) / 12 + f) % 256) as u8;
        }
    }
    for card in 0..30u32 {
        let cx = (card * 157 + f * (3 + card % 5)) % (W - 200);
        let cy = (card * 89 + f * (2 + card % 3)) % (H - 120);
        let color = [(card * 53) as u8, (card * 97) as u8, (card * 31) as u8];
        for y in cy..cy + 120 {
            for x in cx..cx + 200 {
                let i = ((y * W + x) * 3) as usize;
                rgb[i..i + 3].copy_from_slice(&color);
            }
        }
    }
    rgb
}

/// CPU seconds this process has used, all threads: on a shared machine wall time says little.
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let codec: Codec = args.get(1).map_or("h264", String::as_str).parse().unwrap();
    let frames: u32 = args.get(2).map_or(90, |n| n.parse().unwrap());
    let workers = cloudrun_render::system::cpu_count();

    // Real screenshots when given (e.g. `cloudrun-render still … Bench` frames), else
    // synthetic ones (4:4:4, where Chromium writes 4:2:0).
    let shots: Vec<Vec<u8>> = match std::env::var("BENCH_FRAMES") {
        Ok(dir) => {
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
                .collect();
            paths.sort();
            paths
                .iter()
                .cycle()
                .take(frames as usize)
                .map(|p| std::fs::read(p).unwrap())
                .collect()
        }
        Err(_) => (0..frames)
            .map(|f| {
                let mut jpeg = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
                    .encode(&frame(f), W, H, image::ExtendedColorType::Rgb8)
                    .unwrap();
                jpeg
            })
            .collect(),
    };

    let mut media = MediaOptions::new("bench");
    media.codec = codec;
    media.crf = std::env::var("BENCH_CRF").ok().map(|c| c.parse().unwrap());
    if let Ok(c) = std::env::var("BENCH_COLOR") {
        media.color_space = c.parse().unwrap();
    }
    encode::validate(&media, VideoImageFormat::Jpeg).unwrap();
    let settings = encode::settings(&media, VideoImageFormat::Jpeg, W, H, 30.0).unwrap();
    let preparer = FramePreparer::new(&settings);

    let t = Instant::now();
    for shot in shots.iter().take(20) {
        preparer.prepare(shot).unwrap();
    }
    let prepare_ms = t.elapsed().as_secs_f64() * 1000.0 / 20.0;

    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join(format!("out.{}", encode::file_extension(codec, None)));
    let mut encoder = VideoEncoder::create(
        &path,
        &settings,
        Target::Output {
            muxer: encode::traits(codec).muxer,
        },
    )
    .unwrap();
    let t = Instant::now();
    let cpu = cpu_seconds();
    // Workers prepare frames in parallel; the encoder takes them in order, with a bounded
    // number in flight, as `render::order_and_decode` does.
    std::thread::scope(|scope| {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::sync_channel(2)).unzip();
        for (w, tx) in txs.into_iter().enumerate() {
            let (shots, preparer) = (&shots, &preparer);
            scope.spawn(move || {
                for shot in shots.iter().skip(w).step_by(workers) {
                    tx.send(preparer.prepare(shot).unwrap()).unwrap();
                }
            });
        }
        for f in 0..frames as usize {
            encoder.push(rxs[f % workers].recv().unwrap()).unwrap();
        }
    });
    encoder.finish().unwrap();
    let total = t.elapsed().as_secs_f64();
    let cpu_ms = (cpu_seconds() - cpu) * 1000.0 / frames as f64;
    println!(
        "{codec} 1920x1080: {:.1} fps through decode → swscale → encoder ({frames} frames, {:.1} s, {} workers, {cpu_ms:.0} CPU-ms/frame); decode + convert alone {prepare_ms:.1} ms/frame; {} KiB",
        frames as f64 / total,
        total,
        workers,
        std::fs::metadata(&path).unwrap().len() / 1024
    );
}
