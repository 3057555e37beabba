//! `cloudrun-render bench`: where the time of a render goes, measured in one run.
//!
//! C (capture only), E (encode only), their bound B = 1/(1/C + 1/E), the real render R, a
//! sequential baseline S, peak memory of us plus Chromium, and warm still latency; with
//! `--mode chunks`, what rendering in chunks costs: the CPU of a render in N chunks over
//! the same render in one piece, and the join per minute of video; with `--mode fanout`
//! (`fanout`), the parts of a render spread over instances and its projected wall time.
//! The real render runs side by side with an open-source peer (timecut, see [`peer`]),
//! alternating, when it is installed (`--mode peer` runs only that). Never part of the
//! test suite: it prints numbers, it asserts nothing.

mod fanout;
mod peer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::browser::PageGuard;
use crate::encode::{self, FramePreparer, Target, VideoEncoder};
use crate::options::{
    Concurrency, FrameRange, MediaOptions, SiteOptions, StillImageFormat, StillOptions,
    VideoImageFormat, X264Preset,
};
use crate::render::{self, ChunkFile, MediaPlan, Renderer, ResolvedComposition};
use crate::site::Access;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The bundle (or serve URL) holding the benchmark composition.
    #[arg(long, default_value = "fixtures/site")]
    pub site: String,
    #[arg(long, default_value = "Bench")]
    pub composition: String,
    /// Frames to render (default: the whole composition).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Tabs for C and R (default: the renderer's default concurrency).
    #[arg(long)]
    pub concurrency: Option<Concurrency>,
    /// Where to write the results table.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// `all`: capture, encode, render, memory, stills. `chunks`: a render in chunks against
    /// the same render in one piece, and the cost of the join.
    #[arg(long, value_enum, default_value_t = BenchMode::All)]
    pub mode: BenchMode,
    /// Chunks for `--mode chunks` and `--mode fanout`.
    #[arg(long, default_value_t = 4)]
    pub chunks: u64,
    /// Real renders of ours, and of each peer variant, alternating.
    #[arg(long, default_value_t = 2)]
    pub runs: usize,
    /// timecut's `cli.js` (`scripts/bench-peer-setup` installs it there).
    #[arg(long, default_value = ".bench/node_modules/timecut/cli.js")]
    pub peer: PathBuf,
    /// How the peer runs, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "piped,threads2"
    )]
    pub peer_variants: Vec<peer::Variant>,
    /// `--mode fanout`: the bandwidth assumed for bucket transfers, in MiB/s.
    #[arg(long, default_value_t = 100.0)]
    pub bandwidth_mib: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    All,
    Chunks,
    /// Only our real render and the peer's, alternating.
    Peer,
    Fanout,
}

/// Peak RSS and PSS of our process tree (us, Chromium and its children), sampled every 100 ms.
struct MemorySampler {
    stop: Arc<AtomicBool>,
    peak_rss: Arc<AtomicU64>,
    peak_pss: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemorySampler {
    fn start() -> MemorySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_rss = Arc::new(AtomicU64::new(0));
        let peak_pss = Arc::new(AtomicU64::new(0));
        let (s, r, p) = (stop.clone(), peak_rss.clone(), peak_pss.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (rss, pss) = tree_memory(std::process::id());
                r.fetch_max(rss, Ordering::Relaxed);
                p.fetch_max(pss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        MemorySampler {
            stop,
            peak_rss,
            peak_pss,
            thread: Some(thread),
        }
    }

    /// Peak (RSS, PSS) in bytes.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.peak_rss.load(Ordering::Relaxed),
            self.peak_pss.load(Ordering::Relaxed),
        )
    }
}

/// The pids of `root` and all its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut parents: BTreeMap<u32, u32> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(ppid) = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
        {
            parents.insert(pid, ppid);
        }
    }
    let in_tree = |mut pid: u32| {
        while pid > 1 {
            if pid == root {
                return true;
            }
            pid = parents.get(&pid).copied().unwrap_or(0);
        }
        false
    };
    parents.keys().copied().filter(|p| in_tree(*p)).collect()
}

/// CPU seconds used by our process tree, including children that already exited and were
/// reaped (closed tabs' renderer processes count through the browser's cutime).
fn tree_cpu_seconds() -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    tree(std::process::id())
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let fields: Vec<u64> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .skip(11)
                .take(4)
                .filter_map(|v| v.parse().ok())
                .collect();
            fields.iter().sum::<u64>() as f64 / ticks
        })
        .sum()
}

/// Sum of RSS and PSS over `root` and all its descendants.
fn tree_memory(root: u32) -> (u64, u64) {
    let (mut rss, mut pss) = (0, 0);
    for pid in tree(root) {
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            for line in rollup.lines() {
                let kb = |l: &str| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                        * 1024
                };
                if line.starts_with("Rss:") {
                    rss += kb(line);
                } else if line.starts_with("Pss:") {
                    pss += kb(line);
                }
            }
        }
    }
    (rss, pss)
}

/// Decodes and converts `images` on every CPU and encodes them in order, like a render's
/// encode side without the capture. Returns the seconds it took.
fn encode_all(
    images: &[Bytes],
    settings: &encode::VideoSettings,
    output: &Path,
    workers: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let preparer = FramePreparer::new(settings);
    let mut encoder = VideoEncoder::create(output, settings, Target::Output { muxer: "mp4" })?;
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::sync_channel(workers * 2);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, preparer) = (&next, &preparer);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(image) = images.get(i) else { break };
                    if tx.send((i, preparer.prepare(image))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut want = 0;
        for (i, frame) in rx {
            pending.insert(i, frame?);
            while let Some(frame) = pending.remove(&want) {
                encoder.push(frame)?;
                want += 1;
            }
        }
        Ok(())
    })?;
    encoder.finish()?;
    Ok(started.elapsed().as_secs_f64())
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let browser = crate::browser::Executable::find()
        .map(|e| command_line(&e.path.to_string_lossy(), &["--version"]))
        .unwrap_or_else(|_| "none".into());
    let avcodec = ffmpeg_next::codec::version();
    vec![
        (
            "CPU".into(),
            format!("{cpu}, {} CPUs available", crate::system::cpu_count()),
        ),
        ("Memory".into(), memory),
        ("OS".into(), command_line("uname", &["-sr"])),
        ("Browser".into(), browser),
        (
            "libavcodec".into(),
            format!(
                "{}.{}.{}",
                avcodec >> 16,
                (avcodec >> 8) & 0xff,
                avcodec & 0xff
            ),
        ),
        ("rustc".into(), command_line("rustc", &["--version"])),
        (
            "cloudrun-render".into(),
            format!(
                "{} ({})",
                env!("CARGO_PKG_VERSION"),
                command_line("git", &["rev-parse", "--short", "HEAD"])
            ),
        ),
    ]
}

/// The machine, as the end of every report.
fn machine_table() -> String {
    let mut out = String::from("\nMachine:\n\n| | |\n|---|---|\n");
    for (k, v) in machine() {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out
}

/// The markers around each mode's generated part of BENCHMARKS.md.
fn markers(mode: BenchMode) -> (&'static str, &'static str) {
    match mode {
        BenchMode::All => ("<!-- bench:start -->", "<!-- bench:end -->"),
        BenchMode::Chunks => ("<!-- bench-chunks:start -->", "<!-- bench-chunks:end -->"),
        BenchMode::Peer => ("<!-- bench-peer:start -->", "<!-- bench-peer:end -->"),
        BenchMode::Fanout => ("<!-- bench-fanout:start -->", "<!-- bench-fanout:end -->"),
    }
}

/// The file with `mode`'s generated part replaced by `report`; what is written around it
/// (analysis, experiments, the other mode's part) stays. A missing part is appended.
fn merge_into(path: &Path, mode: BenchMode, report: &str) -> String {
    let (start, end) = markers(mode);
    let generated = format!("{start}\n{report}{end}\n");
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    match (existing.find(start), existing.find(end)) {
        (Some(a), Some(b)) if a < b => {
            format!(
                "{}{generated}{}",
                &existing[..a],
                &existing[b + end.len()..].trim_start_matches('\n')
            )
        }
        _ if existing.is_empty() => format!("# Benchmarks\n\n{generated}"),
        _ => format!("{}\n{generated}", existing.trim_end_matches('\n')),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// A moment of a run: when, and the CPU seconds our process tree had used by then.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    cpu: f64,
}

impl Mark {
    fn now() -> Mark {
        Mark {
            at: Instant::now(),
            cpu: tree_cpu_seconds(),
        }
    }

    /// (seconds, CPU seconds) from `self` to `later`.
    fn until(self, later: Mark) -> Span {
        Span {
            seconds: (later.at - self.at).as_secs_f64(),
            cpu: later.cpu - self.cpu,
        }
    }
}

/// Wall and CPU time of a part of a run.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    seconds: f64,
    cpu: f64,
}

impl Span {
    /// CPU seconds over what the CPUs could have given in that time.
    fn utilisation(self, cpus: usize) -> f64 {
        self.cpu / (self.seconds * cpus as f64).max(1e-9)
    }
}

/// One real render, ours or the peer's.
#[derive(Debug, Clone)]
struct RunStats {
    whole: Span,
    /// Ours only: from stage 2's start to the last frame captured, and from there to the end
    /// (the encoder's tail, and for outputs with audio the mix and mux).
    capture: Option<Span>,
    tail: Option<Span>,
    peak_rss: u64,
    peak_pss: u64,
    load: String,
    bytes: u64,
}

impl RunStats {
    fn fps(&self, frames: u64) -> f64 {
        frames as f64 / self.whole.seconds
    }
}

/// Our real render of `media` into `output`, with its phases.
async fn our_render(
    renderer: &Renderer,
    site: &SiteOptions,
    media: &MediaOptions,
    output: &Path,
) -> anyhow::Result<RunStats> {
    let load = load_average();
    eprintln!("  cloudrun-render (load average {load})…");
    let sampler = MemorySampler::start();
    let (tx, mut rx) = render::progress::channel();
    let watcher = tokio::spawn(async move {
        let (mut started, mut captured) = (None, None);
        while rx.changed().await.is_ok() {
            let p = *rx.borrow_and_update();
            if p.total == 0 {
                continue;
            }
            if started.is_none() {
                started = Some(Mark::now());
            }
            if captured.is_none() && p.rendered >= p.total {
                captured = Some(Mark::now());
            }
        }
        (started, captured)
    });
    let begin = Mark::now();
    renderer
        .render_media(
            site,
            media,
            Access::RemoteOrLocal,
            output,
            &tx,
            &CancellationToken::new(),
        )
        .await?;
    let end = Mark::now();
    drop(tx);
    let (started, captured) = watcher.await?;
    let (peak_rss, peak_pss) = sampler.finish();
    Ok(RunStats {
        whole: begin.until(end),
        capture: started.zip(captured).map(|(s, c)| s.until(c)),
        tail: captured.map(|c| c.until(end)),
        peak_rss,
        peak_pss,
        load,
        bytes: std::fs::metadata(output)?.len(),
    })
}

/// Our direct children, as `/proc` lists them.
fn children() -> BTreeSet<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit(')')
                        .next()
                        .and_then(|rest| rest.split_whitespace().nth(1))
                        .and_then(|p| p.parse::<u32>().ok())
                })
                == Some(me)
        })
        .collect()
}

/// Makes orphaned descendants ours (`PR_SET_CHILD_SUBREAPER`): the peer's Chromium leaves
/// its renderer and GPU processes behind when puppeteer closes it, and their CPU time would
/// otherwise be lost to init.
fn adopt_orphans() {
    // SAFETY: a flag of the calling process; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Waits (up to 5 s) for the children that appeared since `before` (the peer's orphans) to
/// exit and reaps them, so their CPU time is in ours.
fn reap_orphans(before: &BTreeSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let orphans: Vec<u32> = children().difference(before).copied().collect();
        if orphans.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in orphans {
            // SAFETY: reaps a child of ours that already exited (WNOHANG: never blocks).
            unsafe {
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The peer's render, the whole `node` process tree from start to exit.
fn peer_render(
    job: &peer::PeerJob,
    variant: peer::Variant,
    output: &Path,
) -> anyhow::Result<RunStats> {
    let load = load_average();
    eprintln!("  {} (load average {load})…", variant.label());
    let sampler = MemorySampler::start();
    let before = children();
    let begin = Mark::now();
    let result = tokio::task::block_in_place(|| {
        let result = peer::run(job, variant, output);
        let exited = Instant::now();
        reap_orphans(&before);
        (result, exited)
    });
    let (result, exited) = result;
    // Every process of the peer was reaped: their CPU is in our children's time now.
    let end = Mark {
        at: exited,
        ..Mark::now()
    };
    let (peak_rss, peak_pss) = sampler.finish();
    result?;
    Ok(RunStats {
        whole: begin.until(end),
        capture: None,
        tail: None,
        peak_rss,
        peak_pss,
        load,
        bytes: std::fs::metadata(output)?.len(),
    })
}

/// Our real render and the peer's variants, alternating, `--runs` times each, and a few
/// frames of both outputs compared.
struct SideBySide {
    frames: u64,
    ours: Vec<RunStats>,
    peers: Vec<(peer::Variant, Vec<RunStats>)>,
    /// Why the peer did not run, if it did not.
    peer_missing: Option<String>,
    frames_compared: Vec<peer::FramePair>,
}

async fn side_by_side(
    renderer: &Renderer,
    args: &BenchArgs,
    site: &SiteOptions,
    media: &MediaOptions,
    composition: &ResolvedComposition,
    frames: u64,
    work: &Path,
) -> anyhow::Result<SideBySide> {
    let browser = crate::browser::Executable::find()?.path;
    let found = peer::find(&args.peer).and_then(|cli| {
        peer::clock_url(&args.site, &args.composition)
            .map(|url| (cli, url))
            .ok_or_else(|| format!("{} is not a local bundle with a clock mode", args.site))
    });
    let (peer_job, peer_missing) = match found {
        Ok((cli, url)) => (
            Some(peer::PeerJob {
                cli,
                url,
                width: composition.width,
                height: composition.height,
                fps: composition.fps,
                frames,
                crf: media.crf.unwrap_or(18.0),
                jpeg_quality: media.jpeg_quality,
                browser,
            }),
            None,
        ),
        Err(why) => {
            eprintln!("peer skipped: {why}");
            (None, Some(why))
        }
    };
    let variants: Vec<peer::Variant> = match &peer_job {
        Some(_) => args.peer_variants.clone(),
        None => Vec::new(),
    };
    let mut ours = Vec::new();
    let mut peers: Vec<(peer::Variant, Vec<RunStats>)> =
        variants.iter().map(|v| (*v, Vec::new())).collect();
    let our_output = work.join("ours.mp4");
    for run in 0..args.runs.max(1) {
        eprintln!("side by side, run {} of {}:", run + 1, args.runs.max(1));
        ours.push(our_render(renderer, site, media, &our_output).await?);
        if let Some(job) = &peer_job {
            for (variant, stats) in &mut peers {
                let output = work.join(format!("peer-{variant:?}.mp4"));
                stats.push(peer_render(job, *variant, &output)?);
            }
        }
    }
    let mut frames_compared = Vec::new();
    if let Some((variant, _)) = peers.first() {
        let indices = [0, frames / 2, frames.saturating_sub(1)];
        let peer_output = work.join(format!("peer-{variant:?}.mp4"));
        frames_compared = tokio::task::block_in_place(|| {
            peer::compare(
                &our_output,
                &peer_output,
                &indices,
                composition.width,
                composition.height,
            )
        })?;
    }
    Ok(SideBySide {
        frames,
        ours,
        peers,
        peer_missing,
        frames_compared,
    })
}

/// `median (run, run, …)` of a measure over runs.
fn runs_of(stats: &[RunStats], f: impl Fn(&RunStats) -> f64, digits: usize) -> String {
    let values: Vec<f64> = stats.iter().map(&f).collect();
    let each = values
        .iter()
        .map(|v| format!("{v:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{:.digits$} ({each})", median(values.clone()))
}

impl SideBySide {
    fn our_fps(&self) -> f64 {
        median(self.ours.iter().map(|r| r.fps(self.frames)).collect())
    }

    /// The markdown section: one row per renderer, then the ratio and the frame comparison.
    fn report(&self, cpus: usize) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "Side by side: {} real renders of each, alternating (ours, then each peer variant, again), median (each run); the same frames, size, JPEG quality and x264 settings (h264 crf 18 preset medium yuv420p, faststart), the same Chromium binary. CPU utilisation = CPU seconds of the process tree / (wall × {cpus} CPUs). Load average before each run: {}.\n\n",
            self.ours.len(),
            self.ours
                .iter()
                .map(|r| r.load.clone())
                .chain(self.peers.iter().flat_map(|(_, s)| s.iter().map(|r| r.load.clone())))
                .collect::<Vec<_>>()
                .join(" · ")
        ));
        out.push_str("| renderer | fps | CPU ms per frame | CPU utilisation | peak RSS (MiB) | output (MiB) |\n|---|---|---|---|---|---|\n");
        let mib = |b: u64| b as f64 / 1048576.0;
        let frames = self.frames;
        let util = |span: fn(&RunStats) -> Option<Span>| {
            move |r: &RunStats| span(r).map(|s| s.utilisation(cpus) * 100.0).unwrap_or(0.0)
        };
        out.push_str(&format!(
            "| cloudrun-render | {} | {} | {} % (capture {} %, tail {} %) | {} | {:.1} |\n",
            runs_of(&self.ours, |r| r.fps(frames), 2),
            runs_of(&self.ours, |r| r.whole.cpu * 1000.0 / frames as f64, 0),
            runs_of(&self.ours, util(|r| Some(r.whole)), 0),
            runs_of(&self.ours, util(|r| r.capture), 0),
            runs_of(&self.ours, util(|r| r.tail), 0),
            runs_of(&self.ours, |r| mib(r.peak_rss), 0),
            mib(self.ours.last().map(|r| r.bytes).unwrap_or(0)),
        ));
        for (variant, stats) in &self.peers {
            out.push_str(&format!(
                "| {} | {} | {} | {} % | {} | {:.1} |\n",
                variant.label(),
                runs_of(stats, |r| r.fps(frames), 2),
                runs_of(stats, |r| r.whole.cpu * 1000.0 / frames as f64, 0),
                runs_of(stats, util(|r| Some(r.whole)), 0),
                runs_of(stats, |r| mib(r.peak_rss), 0),
                mib(stats.last().map(|r| r.bytes).unwrap_or(0)),
            ));
        }
        if let Some(tail) = self
            .ours
            .iter()
            .filter_map(|r| r.tail)
            .map(|t| t.seconds)
            .reduce(f64::max)
        {
            let capture: Vec<f64> = self
                .ours
                .iter()
                .filter_map(|r| r.capture)
                .map(|c| c.seconds)
                .collect();
            if !capture.is_empty() {
                out.push_str(&format!(
                    "\nOurs: capture phase {:.1} s, then the encoder's tail (up to) {tail:.1} s.\n",
                    median(capture)
                ));
            }
        }
        let best_peer = self
            .peers
            .iter()
            .map(|(v, s)| (*v, median(s.iter().map(|r| r.fps(frames)).collect())))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match (best_peer, &self.peer_missing) {
            (Some((variant, fps)), _) => out.push_str(&format!(
                "\n**cloudrun-render / best peer ({}) = {:.2} / {:.2} = {:.2}×** (target ≥ 1.6×)\n",
                variant.label(),
                self.our_fps(),
                fps,
                self.our_fps() / fps
            )),
            (None, Some(why)) => out.push_str(&format!("\nThe peer did not run: {why}.\n")),
            (None, None) => {}
        }
        if !self.frames_compared.is_empty() {
            out.push_str("\nFrames of both outputs (the first peer variant's), decoded and compared:\n\n| frame | strip (ours / peer) | PSNR | samples off by > 16 | same picture |\n|---|---|---|---|---|\n");
            for p in &self.frames_compared {
                out.push_str(&format!(
                    "| {} | {} / {} | {:.1} dB | {:.4} % | {} |\n",
                    p.index,
                    p.ours_strip,
                    p.peer_strip,
                    p.psnr_db,
                    p.far_off * 100.0,
                    if p.equal() { "yes" } else { "**no**" }
                ));
            }
        }
        out
    }
}

/// `--mode peer`: only the side-by-side renders.
async fn measure_peer(renderer: &Renderer, args: &BenchArgs) -> anyhow::Result<String> {
    let site = SiteOptions::new(args.site.clone());
    let media = bench_media(args);
    let work = tempfile::tempdir()?;
    let cancel = CancellationToken::new();
    let session = renderer.open(&site, Access::RemoteOrLocal).await?;
    let composition = session
        .resolve(&media.composition_id, &media.overrides, &cancel)
        .await?;
    drop(session);
    let plan = MediaPlan::new(&media, composition.clone(), renderer.cpus())?;
    let cpus = renderer.cpus();
    let sbs = side_by_side(
        renderer,
        args,
        &site,
        &media,
        &composition,
        plan.total(),
        work.path(),
    )
    .await?;
    let mut out = format!(
        "`cloudrun-render bench --mode peer`: composition `{}` of `{}`, {}x{}, {} frames at {} fps, {} tab(s) on {cpus} CPUs.\n\n",
        args.composition,
        args.site,
        composition.width,
        composition.height,
        plan.total(),
        composition.fps,
        plan.tabs,
    );
    if let Ok(flags) = std::env::var(crate::browser::launch::EXTRA_FLAGS_ENV) {
        out.push_str(&format!("Extra Chromium flags (ours): `{flags}`.\n\n"));
    }
    out.push_str(&sbs.report(cpus));
    out.push_str(&machine_table());
    Ok(out)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    adopt_orphans();
    let renderer = Renderer::start(PageGuard::new(None)).await?;
    let result = match args.mode {
        BenchMode::All => measure(&renderer, &args).await,
        BenchMode::Chunks => measure_chunks(&renderer, &args).await,
        BenchMode::Peer => measure_peer(&renderer, &args).await,
        BenchMode::Fanout => fanout::measure(&renderer, &args).await,
    };
    renderer.shutdown().await;
    let report = result?;
    println!("{report}");
    std::fs::write(&args.out, merge_into(&args.out, args.mode, &report))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// The benchmark render: h264 crf 18 preset medium, the first `--frames` frames.
fn bench_media(args: &BenchArgs) -> MediaOptions {
    let mut media = MediaOptions::new(args.composition.clone());
    media.crf = Some(18.0);
    media.x264_preset = Some(X264Preset::Medium);
    if let Some(n) = args.frames {
        media.frame_range = FrameRange::Ranges(vec![(0, Some(n.saturating_sub(1)))]);
    }
    if let Some(c) = args.concurrency {
        media.concurrency = c;
    }
    media
}

/// The render of `media` in one piece into `path`, the baseline of `--mode chunks` and
/// `--mode fanout`: its wall time and the CPU time of our process tree, in seconds.
async fn one_piece(
    renderer: &Renderer,
    site: &SiteOptions,
    media: &MediaOptions,
    path: &Path,
) -> anyhow::Result<(f64, f64)> {
    eprintln!("one piece…");
    let (tx, _rx) = render::progress::channel();
    let started = Instant::now();
    let cpu_before = tree_cpu_seconds();
    renderer
        .render_media(
            site,
            media,
            Access::RemoteOrLocal,
            path,
            &tx,
            &CancellationToken::new(),
        )
        .await?;
    Ok((
        started.elapsed().as_secs_f64(),
        tree_cpu_seconds() - cpu_before,
    ))
}

/// A render in `--chunks` chunks through the stages (what an instance spread over others
/// does, here one chunk after the other) against the same frames in one piece: CPU of our
/// process tree and wall time of each, and the join alone, per minute of video.
async fn measure_chunks(renderer: &Renderer, args: &BenchArgs) -> anyhow::Result<String> {
    let site = SiteOptions::new(args.site.clone());
    let media = bench_media(args);
    let access = Access::RemoteOrLocal;
    let work = tempfile::tempdir()?;
    let cancel = CancellationToken::new();
    let (tx, _rx) = render::progress::channel();

    let single_path = work.path().join("single.mp4");
    let (single_seconds, single_cpu) = one_piece(renderer, &site, &media, &single_path).await?;

    eprintln!("{} chunks…", args.chunks);
    let started = Instant::now();
    let cpu_before = tree_cpu_seconds();
    let session = renderer.open(&site, access).await?;
    let composition = session
        .resolve(&media.composition_id, &media.overrides, &cancel)
        .await?;
    let plan = MediaPlan::new(&media, composition, renderer.cpus())?;
    let per_chunk = plan.total().div_ceil(args.chunks.max(1));
    let mut files = Vec::new();
    let mut assets = Vec::new();
    for (i, range) in plan.chunks(per_chunk).into_iter().enumerate() {
        let (_, extension) = encode::chunk_container(media.codec).expect("h264 is chunked");
        let path = work.path().join(format!("chunk-{i}.{extension}"));
        let outcome = session
            .render_chunk(&plan, range, &path, &tx, &cancel)
            .await?;
        files.push(ChunkFile {
            path,
            frames: outcome.frames,
        });
        assets.extend(outcome.assets);
    }
    let chunked_path = work.path().join("chunked.mp4");
    let joining = Instant::now();
    let fetcher = session.media_files().clone();
    render::join::join(
        &plan,
        &files,
        &assets,
        fetcher.clone(),
        &chunked_path,
        &cancel,
    )
    .await?;
    let first_join = joining.elapsed().as_secs_f64();
    let chunked_seconds = started.elapsed().as_secs_f64();
    let chunked_cpu = tree_cpu_seconds() - cpu_before;

    eprintln!("the join alone…");
    let mut joins = vec![first_join];
    for _ in 0..4 {
        let again = work.path().join("again.mp4");
        let joining = Instant::now();
        render::join::join(&plan, &files, &assets, fetcher.clone(), &again, &cancel).await?;
        joins.push(joining.elapsed().as_secs_f64());
    }
    let join_seconds = median(joins);
    let video_minutes = plan.total() as f64 / plan.output_fps / 60.0;
    let mib = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;

    let mut out = String::new();
    out.push_str(&format!(
        "`cloudrun-render bench --mode chunks`: composition `{}` of `{}`, {}x{}, {} frames at {} fps ({:.2} min of video), h264 crf 18 preset medium, {} tab(s) on {} CPUs, {} chunks of up to {per_chunk} frames rendered one after the other in one process. One run.\n\n",
        args.composition,
        args.site,
        plan.width,
        plan.height,
        plan.total(),
        plan.output_fps,
        video_minutes,
        plan.tabs,
        renderer.cpus(),
        files.len(),
    ));
    out.push_str("| measure | value |\n|---|---|\n");
    let rows = [
        (
            "one piece: wall / CPU (us + Chromium)".to_string(),
            format!(
                "{single_seconds:.1} s / {single_cpu:.1} s ({:.1} MiB)",
                mib(&single_path)
            ),
        ),
        (
            format!("{} chunks, then the join: wall / CPU", files.len()),
            format!(
                "{chunked_seconds:.1} s / {chunked_cpu:.1} s ({:.1} MiB)",
                mib(&chunked_path)
            ),
        ),
        (
            "CPU of the chunked render over one piece (target ≤ 1.10)".to_string(),
            format!("{:.3}", chunked_cpu / single_cpu),
        ),
        (
            "wall of the chunked render over one piece".to_string(),
            format!("{:.3}", chunked_seconds / single_seconds),
        ),
        (
            "the join alone (median of 5)".to_string(),
            format!("{:.0} ms", join_seconds * 1000.0),
        ),
        (
            "the join per minute of video".to_string(),
            format!("{:.0} ms", join_seconds * 1000.0 / video_minutes),
        ),
    ];
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out.push_str(&machine_table());
    Ok(out)
}

async fn measure(renderer: &Renderer, args: &BenchArgs) -> anyhow::Result<String> {
    let site = SiteOptions::new(args.site.clone());
    let media = bench_media(args);
    let access = Access::RemoteOrLocal;
    let work = tempfile::tempdir()?;
    let cpus = crate::system::cpu_count();
    let tabs = media
        .concurrency
        .resolve(cpus)
        .map_err(anyhow::Error::msg)?;

    let load_at_start = load_average();
    eprintln!("C: capturing with {tabs} tab(s) (load average {load_at_start})…");
    let started = Instant::now();
    let cpu_before = tree_cpu_seconds();
    let (composition, images) = renderer.capture_only(&site, &media, access).await?;
    let c_seconds = started.elapsed().as_secs_f64();
    let c_cpu = tree_cpu_seconds() - cpu_before;
    let n = images.len() as f64;
    let (w, h) = (composition.width, composition.height);
    let jpeg_kb = images.iter().map(Bytes::len).sum::<usize>() as f64 / n / 1024.0;

    eprintln!("E: encoding the captured frames…");
    let settings = encode::settings(&media, VideoImageFormat::Jpeg, w, h, composition.fps)?;
    let e_path = work.path().join("encode-only.mp4");
    let (images_e, settings_e, path_e) = (images.clone(), settings.clone(), e_path.clone());
    let cpu_before = tree_cpu_seconds();
    let e_seconds =
        tokio::task::spawn_blocking(move || encode_all(&images_e, &settings_e, &path_e, cpus))
            .await??;
    let e_cpu = tree_cpu_seconds() - cpu_before;

    eprintln!("R: real renders, side by side with the peer…");
    let sbs = side_by_side(
        renderer,
        args,
        &site,
        &media,
        &composition,
        images.len() as u64,
        work.path(),
    )
    .await?;
    let r_seconds = median(sbs.ours.iter().map(|r| r.whole.seconds).collect());
    let r_cpu = median(sbs.ours.iter().map(|r| r.whole.cpu).collect());
    let peak_rss = sbs.ours.iter().map(|r| r.peak_rss).max().unwrap_or(0);
    let peak_pss = sbs.ours.iter().map(|r| r.peak_pss).max().unwrap_or(0);
    let r_size = sbs.ours.last().map(|r| r.bytes).unwrap_or(0);

    eprintln!("S: the sequential baseline (one tab, then encode)…");
    let mut one_tab = media.clone();
    one_tab.concurrency = Concurrency::Count(1.0);
    let started = Instant::now();
    let (_, seq_images) = renderer.capture_only(&site, &one_tab, access).await?;
    let s_capture = started.elapsed().as_secs_f64();
    let s_path = work.path().join("sequential.mp4");
    let s_encode =
        tokio::task::spawn_blocking(move || encode_all(&seq_images, &settings, &s_path, 1))
            .await??;
    let s_seconds = s_capture + s_encode;

    eprintln!("Stills: warm latency…");
    let mut stills = Vec::new();
    for format in [StillImageFormat::Jpeg, StillImageFormat::Png] {
        let mut still = StillOptions::new(args.composition.clone());
        still.image_format = format;
        let cancel = CancellationToken::new();
        let time = async |frame: i64| -> anyhow::Result<f64> {
            let mut s = still.clone();
            s.frame = frame;
            let started = Instant::now();
            renderer.render_still(&site, &s, access, &cancel).await?;
            Ok(started.elapsed().as_secs_f64() * 1000.0)
        };
        let first = time(0).await?;
        let mut warm = Vec::new();
        for frame in [10, 60, 110, 160, 210] {
            warm.push(time(frame).await?);
        }
        stills.push((format, first, median(warm)));
    }

    let c = n / c_seconds;
    let e = n / e_seconds;
    let b = 1.0 / (1.0 / c + 1.0 / e);
    let r = n / r_seconds;
    let s = n / s_seconds;
    let cpu_bound = cpus as f64 / ((c_cpu + e_cpu) / n);
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    let mut out = String::new();
    out.push_str(&format!(
        "`cloudrun-render bench`: composition `{}` of `{}`, {w}x{h}, {} frames at {} fps, h264 crf 18 preset medium, JPEG q{} frames, {tabs} tab(s) on {cpus} CPUs{}. C, E, S and the stills: one run each; R: the median of the side-by-side runs below. Load average at the start: {}.\n\n",
        args.composition,
        args.site,
        images.len(),
        composition.fps,
        media.jpeg_quality,
        if args.concurrency.is_none() { " (the default concurrency)" } else { "" },
        load_at_start,
    ));
    if let Ok(flags) = std::env::var(crate::browser::launch::EXTRA_FLAGS_ENV) {
        out.push_str(&format!("Extra Chromium flags: `{flags}`.\n\n"));
    }
    out.push_str("| measure | value |\n|---|---|\n");
    let rows = [
        (
            "C: capture only",
            format!("{c:.2} fps ({c_seconds:.1} s; {jpeg_kb:.0} KiB per JPEG)"),
        ),
        (
            "E: encode only (decode + convert + x264)",
            format!("{e:.2} fps ({e_seconds:.1} s)"),
        ),
        ("B = 1 / (1/C + 1/E)", format!("{b:.2} fps")),
        (
            "CPU time per frame: capture / encode / real render",
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                c_cpu / n * 1000.0,
                e_cpu / n * 1000.0,
                r_cpu / n * 1000.0
            ),
        ),
        (
            "CPU bound = CPUs / (capture + encode CPU per frame)",
            format!(
                "{cpu_bound:.2} fps (R reaches {:.0} %)",
                r / cpu_bound * 100.0
            ),
        ),
        (
            "R: real render (CLI path), median of the side-by-side runs",
            format!(
                "{r:.2} fps ({r_seconds:.1} s, {:.1} MiB; CPU utilisation {:.0} %)",
                mib(r_size),
                r_cpu / (r_seconds * cpus as f64) * 100.0
            ),
        ),
        ("R / B", format!("{:.2}", r / b)),
        (
            "S: sequential (1 tab, then encode)",
            format!("{s:.2} fps ({s_capture:.1} s + {s_encode:.1} s)"),
        ),
        ("R / S", format!("{:.2}", r / s)),
        (
            "peak RSS, us + Chromium, during R",
            format!("{:.0} MiB", mib(peak_rss)),
        ),
        (
            "peak PSS, us + Chromium, during R",
            format!("{:.0} MiB", mib(peak_pss)),
        ),
    ];
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    for (format, first, warm) in &stills {
        out.push_str(&format!(
            "| still {format} {w}x{h}: first / warm (median of 5) | {first:.0} ms / {warm:.0} ms |\n"
        ));
    }
    out.push('\n');
    out.push_str(&sbs.report(cpus));
    out.push_str(&machine_table());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_report_replaces_only_its_generated_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("B.md");
        let (start, end) = markers(BenchMode::All);
        assert_eq!(
            merge_into(&path, BenchMode::All, "one\n"),
            format!("# Benchmarks\n\n{start}\none\n{end}\n")
        );
        std::fs::write(&path, format!("intro\n{start}\nold\n{end}\nanalysis\n")).unwrap();
        assert_eq!(
            merge_into(&path, BenchMode::All, "new\n"),
            format!("intro\n{start}\nnew\n{end}\nanalysis\n")
        );
        // The chunks part goes after what is there, then is replaced in place.
        let (cs, ce) = markers(BenchMode::Chunks);
        let with_chunks = merge_into(&path, BenchMode::Chunks, "c1\n");
        assert_eq!(
            with_chunks,
            format!("intro\n{start}\nold\n{end}\nanalysis\n{cs}\nc1\n{ce}\n")
        );
        std::fs::write(&path, &with_chunks).unwrap();
        assert_eq!(
            merge_into(&path, BenchMode::Chunks, "c2\n"),
            format!("intro\n{start}\nold\n{end}\nanalysis\n{cs}\nc2\n{ce}\n")
        );
    }
}
