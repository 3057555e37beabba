//! Chunked renders through the stage API, as a coordinator and its workers call it, and what
//! the tests read back from the files: packets (with data hashes) and decoded audio.

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudrun_render::options::MediaOptions;
use cloudrun_render::render::{
    self, ChunkFile, ChunkOutcome, ChunkRange, MediaPlan, RenderProgress, ResolvedComposition,
};
use cloudrun_render::site::Access;
use tokio_util::sync::CancellationToken;

use super::{renderer, runtime, site};

/// One video packet as ffprobe reports it, in decode order.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub pts: i64,
    /// Matroska stores none for reordered frames; libav makes some up, not all.
    pub dts: Option<i64>,
    pub key: bool,
    /// MD5 of the packet's bytes.
    pub hash: String,
}

/// Every packet of the first video stream of `path`, in file order.
pub fn video_packets(path: &Path) -> Vec<Packet> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_packets"])
        .args(["-show_data_hash", "md5", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Packet {
            pts: p["pts"].as_i64().expect("pts"),
            dts: p["dts"].as_i64(),
            key: p["flags"].as_str().unwrap().starts_with('K'),
            hash: p["data_hash"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// A render made chunk by chunk through the stage API.
pub struct Chunked {
    pub plan: MediaPlan,
    /// Each chunk's file and what stage 2 reported for it, in order.
    pub chunks: Vec<(PathBuf, ChunkOutcome)>,
    /// The last progress value each chunk published.
    pub progress: Vec<RenderProgress>,
    pub output: PathBuf,
    _dir: tempfile::TempDir,
}

/// Renders `media` as a coordinator and its workers would: the coordinator resolves the
/// composition (calculateMetadata runs there, once) and sends it as JSON; each "worker"
/// builds the plan from what it received and renders its range into its own file
/// (`Renderer::render_chunk`); the coordinator joins the files and mixes the audio.
pub fn render_in_chunks(media: &MediaOptions, frames_per_chunk: u64) -> Chunked {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    // Both start their servers on the runtime: not from inside it.
    let (r, site) = (renderer(), site());
    runtime().block_on(async {
        let coordinator = r.open(&site, Access::RemoteOnly).await.unwrap();
        let resolved = coordinator
            .resolve(&media.composition_id, &media.overrides, &cancel)
            .await
            .unwrap();
        let sent = serde_json::to_string(&resolved).unwrap();
        let plan = MediaPlan::new(media, resolved, r.cpus()).unwrap();
        let output = dir.path().join(plan.output.default_name());
        let ranges = plan.chunks(frames_per_chunk);

        let mut chunks = Vec::new();
        let mut progress = Vec::new();
        for (index, range) in ranges.iter().enumerate() {
            let range: ChunkRange =
                serde_json::from_str(&serde_json::to_string(range).unwrap()).unwrap();
            let received: ResolvedComposition = serde_json::from_str(&sent).unwrap();
            let (_, extension) =
                cloudrun_render::encode::chunk_container(media.codec).expect("a chunked codec");
            let path = dir.path().join(format!("chunk-{index}.{extension}"));
            let (tx, rx) = render::progress::channel();
            let outcome = r
                .render_chunk(
                    &site,
                    media,
                    received,
                    range,
                    Access::RemoteOnly,
                    &path,
                    &tx,
                    &cancel,
                )
                .await
                .unwrap();
            // What the coordinator receives over the network.
            let outcome: ChunkOutcome =
                serde_json::from_str(&serde_json::to_string(&outcome).unwrap()).unwrap();
            progress.push(*rx.borrow());
            chunks.push((path, outcome));
        }
        let files: Vec<ChunkFile> = chunks
            .iter()
            .map(|(path, o)| ChunkFile {
                path: path.clone(),
                frames: o.frames,
            })
            .collect();
        let assets: Vec<_> = chunks
            .iter()
            .flat_map(|(_, o)| o.assets.iter().cloned())
            .collect();
        let media_files = r.media_fetcher().unwrap();
        render::join::join(&plan, &files, &assets, media_files, &output, &cancel)
            .await
            .unwrap();
        Chunked {
            plan,
            chunks,
            progress,
            output,
            _dir: dir,
        }
    })
}

/// Renders `media` with `Renderer::render_media_in_chunks` (the CLI's `--frames-per-chunk`)
/// and returns the file and every overall progress value published.
pub fn render_locally_in_chunks(
    media: &MediaOptions,
    frames_per_chunk: u64,
) -> (super::Rendered, Vec<RenderProgress>) {
    let dir = tempfile::tempdir().unwrap();
    let format = render::OutputFormat::resolve(media).unwrap();
    let path = dir.path().join(format.default_name());
    let (site, r) = (site(), renderer());
    let (tx, mut rx) = render::progress::channel();
    let seen = runtime().spawn(async move {
        let mut values = Vec::new();
        while rx.changed().await.is_ok() {
            values.push(*rx.borrow_and_update());
        }
        values
    });
    let outcome = runtime()
        .block_on(r.render_media_in_chunks(
            &site,
            media,
            Access::RemoteOnly,
            &path,
            Some(frames_per_chunk),
            &tx,
            &CancellationToken::new(),
        ))
        .expect("a chunked render");
    drop(tx);
    let values = runtime().block_on(seen).unwrap();
    (
        super::Rendered {
            outcome,
            path,
            _dir: dir,
        },
        values,
    )
}
