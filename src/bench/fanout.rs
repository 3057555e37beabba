//! `bench --mode fanout`: what a render spread over K instances would take, from the parts
//! measured here. The render is cut into `--chunks` chunks and each chunk is rendered as a
//! worker renders it (its own session, page and encoder), one after the other, so each has
//! the machine to itself, as it would have its own instance. Measured: the coordinator's
//! setup (open, calculateMetadata, plan), every chunk's wall and CPU time, the join, and the
//! same render in one piece. Projected (and labelled so): the wall time on K instances, and
//! on more instances for a longer video, from a straight-line fit of chunk time against
//! frames. Transfers to and from the bucket are not measured here (no real GCS); they are
//! counted at `--bandwidth-mib`, an assumption the report states.

use std::path::Path;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{BenchArgs, bench_media, machine, median, tree_cpu_seconds};
use crate::encode::{self, ChunkFile};
use crate::options::SiteOptions;
use crate::render::{self, ChunkRange, Renderer};
use crate::site::Access;

/// The projection the issue asks for: a 10-minute video on 60 instances.
const TARGET_MINUTES: f64 = 10.0;
const TARGET_INSTANCES: u64 = 60;

struct Chunk {
    frames: u64,
    wall: f64,
    cpu: f64,
    bytes: u64,
}

pub async fn measure(renderer: &Renderer, args: &BenchArgs) -> anyhow::Result<String> {
    let site = SiteOptions::new(args.site.clone());
    let media = bench_media(args);
    let access = Access::RemoteOrLocal;
    let work = tempfile::tempdir()?;
    let cancel = CancellationToken::new();
    let (tx, _rx) = render::progress::channel();

    let single_path = work.path().join("single.mp4");
    let (single_wall, single_cpu) = super::one_piece(renderer, &site, &media, &single_path).await?;

    eprintln!("the coordinator's setup…");
    let started = Instant::now();
    let (session, plan) = renderer.plan_media(&site, &media, access, &cancel).await?;
    let setup = started.elapsed().as_secs_f64();

    let per_chunk = plan.total().div_ceil(args.chunks.max(1));
    let (_, extension) = encode::chunk_container(media.codec).expect("h264 is chunked");
    let mut chunks = Vec::new();
    let mut files = Vec::new();
    let mut assets = Vec::new();
    for (i, range) in plan.chunks(per_chunk).into_iter().enumerate() {
        eprintln!("chunk {i} ({}..={})…", range.first, range.last);
        let path = work.path().join(format!("chunk-{i}.{extension}"));
        let started = Instant::now();
        let cpu_before = tree_cpu_seconds();
        let outcome = renderer
            .render_chunk(
                &site,
                &media,
                plan.composition.clone(),
                ChunkRange {
                    first: range.first,
                    last: range.last,
                },
                access,
                &path,
                &tx,
                &cancel,
            )
            .await?;
        chunks.push(Chunk {
            frames: outcome.frames,
            wall: started.elapsed().as_secs_f64(),
            cpu: tree_cpu_seconds() - cpu_before,
            bytes: size(&path),
        });
        files.push(ChunkFile {
            path,
            frames: outcome.frames,
        });
        assets.extend(outcome.assets);
    }

    eprintln!("the join…");
    let mut joins = Vec::new();
    let joined = work.path().join("joined.mp4");
    for _ in 0..3 {
        let _ = std::fs::remove_file(&joined);
        let started = Instant::now();
        render::join::join(
            &plan,
            &files,
            &assets,
            session.media_files().clone(),
            &joined,
            &cancel,
        )
        .await?;
        joins.push(started.elapsed().as_secs_f64());
    }
    let join = median(joins);
    drop(session);

    let bandwidth = args.bandwidth_mib * 1048576.0;
    let transfer = |bytes: f64| bytes / bandwidth;
    let output_bytes = size(&joined) as f64;
    let slowest = chunks
        .iter()
        .max_by(|a, b| a.wall.total_cmp(&b.wall))
        .expect("at least one chunk");
    // The slowest chunk's file goes up from its worker and down to the coordinator; the
    // others' transfers overlap the slowest chunk's render.
    let projected =
        setup + slowest.wall + transfer(2.0 * slowest.bytes as f64) + join + transfer(output_bytes);

    // A chunk of n frames takes about F + n·t: t from the one-piece render against the
    // chunks (same frames, more setups), F what is left of a chunk's time.
    let frames = plan.total() as f64;
    let chunk_frames = chunks.iter().map(|c| c.frames as f64).sum::<f64>() / chunks.len() as f64;
    let chunk_wall = chunks.iter().map(|c| c.wall).sum::<f64>() / chunks.len() as f64;
    let per_frame = (single_wall - chunk_wall) / (frames - chunk_frames);
    let fixed = chunk_wall - chunk_frames * per_frame;
    let video_minutes = frames / plan.output_fps / 60.0;
    let target_frames = (TARGET_MINUTES * 60.0 * plan.output_fps).round();
    let target_chunk = (target_frames / TARGET_INSTANCES as f64).ceil();
    let scale = target_frames / frames;
    let bytes_per_frame_chunk = chunks.iter().map(|c| c.bytes as f64).sum::<f64>() / frames;
    let target_parts = [
        ("coordinator setup (measured)", setup),
        ("slowest chunk: F + n·t", fixed + target_chunk * per_frame),
        (
            "its file up and down",
            transfer(2.0 * bytes_per_frame_chunk * target_chunk),
        ),
        ("join (measured, scaled by length)", join * scale),
        ("output upload", transfer(output_bytes * scale)),
    ];
    let target_total: f64 = target_parts.iter().map(|p| p.1).sum();

    let mut out = format!(
        "`cloudrun-render bench --mode fanout`: composition `{}` of `{}`, {}x{}, {} frames at {} fps ({video_minutes:.2} min of video), h264 crf 18 preset medium, {} tab(s) on {} CPUs. {} chunks, each rendered as a worker renders it (own session, page and encoder), one after the other on this machine. Transfers counted at an assumed {} MiB/s. One run.\n\n",
        args.composition,
        args.site,
        plan.width,
        plan.height,
        plan.total(),
        plan.output_fps,
        plan.tabs,
        renderer.cpus(),
        chunks.len(),
        args.bandwidth_mib,
    );
    out.push_str("| measured | wall | CPU (us + Chromium) | file |\n|---|---|---|---|\n");
    out.push_str(&format!(
        "| one piece, one instance | {single_wall:.1} s | {single_cpu:.1} s | {:.1} MiB |\n",
        mib(output_bytes)
    ));
    out.push_str(&format!(
        "| coordinator setup (open, calculateMetadata, plan) | {setup:.2} s | | |\n"
    ));
    for (i, c) in chunks.iter().enumerate() {
        out.push_str(&format!(
            "| chunk {i}: {} frames | {:.1} s | {:.1} s | {:.1} MiB |\n",
            c.frames,
            c.wall,
            c.cpu,
            mib(c.bytes as f64)
        ));
    }
    out.push_str(&format!(
        "| join (audio mix + mux, median of 3) | {:.0} ms | | |\n",
        join * 1000.0
    ));
    out.push_str(&format!(
        "\n**PROJECTION**, this render on {} instances: setup {setup:.1} s + slowest chunk {:.1} s + its file up and down {:.1} s + join {:.1} s + upload {:.1} s = **{projected:.1} s**, against {single_wall:.1} s measured in one instance ({:.1}×).\n",
        chunks.len(),
        slowest.wall,
        transfer(2.0 * slowest.bytes as f64),
        join,
        transfer(output_bytes),
        single_wall / projected,
    ));
    out.push_str(&format!(
        "\nFit of chunk time against frames (from the one-piece render and the chunks): F = {fixed:.1} s per chunk, t = {:.0} ms per frame.\n",
        per_frame * 1000.0
    ));
    out.push_str(&format!(
        "\n**PROJECTION**, {TARGET_MINUTES:.0} minutes of this video ({target_frames:.0} frames) on {TARGET_INSTANCES} instances of this machine's size, {target_chunk:.0} frames per chunk (the join and the upload scaled by length from the measured ones; one instance alone would take about {:.0} min):\n\n| part | projected |\n|---|---|\n",
        (fixed + target_frames * per_frame) / 60.0
    ));
    for (part, seconds) in target_parts {
        out.push_str(&format!("| {part} | {seconds:.1} s |\n"));
    }
    out.push_str(&format!("| **total** | **{target_total:.1} s** |\n"));
    out.push_str("\nMachine:\n\n| | |\n|---|---|\n");
    for (k, v) in machine() {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    Ok(out)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mib(bytes: f64) -> f64 {
    bytes / 1048576.0
}
