//! How many chunks a render is cut into.
//!
//! A chunk costs a fixed amount on top of its frames: the worker opens the page and mounts the
//! composition, starts an encoder, and at the end waits for x264's lookahead tail (about 40
//! frames) without capture to overlap it. Measured here at 1080p on 2 CPUs (`BENCHMARKS.md`:
//! `setup_ms`, `encoder_flush_ms`): about 4 s per chunk, while one frame takes about 0.25 s,
//! so the fixed cost is worth about [`FIXED_COST_IN_FRAMES`] frames. Both the frame time and
//! most of the fixed cost (the encoder's) scale with the pixel count, so the ratio holds
//! roughly at other sizes.
//!
//! With K chunks of n frames on K instances, the wall time is about `setup + F + n·t + join`
//! and the instance time `K·F + N·t`. Cutting finer always shortens the wall time, but each
//! chunk adds F of paid instance time. We keep that overhead under [`MAX_OVERHEAD_PERCENT`]
//! (the target the chunked render is held to against one instance): a chunk needs
//! `n·t ≥ 9·F`, at least [`MIN_AUTO_FRAMES_PER_CHUNK`] frames. So renders under twice that
//! (about 10 s of 30 fps video) stay in one instance, and longer ones get one more chunk per
//! 144 frames until `CLOUDRUN_RENDER_MAX_CHUNKS`. A 10-minute 30 fps video (18,000 frames)
//! hits the cap (200 by default; `deploy/` sets it to the instances available) rather than the
//! floor, which is where the wall time is decided.
//!
//! Lambda's rule (at least 4 frames per function, 75 to 150 functions, at most 200) ignores
//! the fixed cost because a Lambda chunk's fixed cost is small next to its per-frame cost at
//! the sizes it is tuned for; an explicit `framesPerChunk` still follows Lambda's floor of 4.

use serde::{Deserialize, Serialize};

/// The fixed cost of one chunk in frames of render time (≈ 4 s / 0.25 s at 1080p).
pub const FIXED_COST_IN_FRAMES: u64 = 16;
pub const MAX_OVERHEAD_PERCENT: u64 = 10;
/// `F / (F + n·t) ≤ 10 %` ⇔ `n ≥ 9 · F / t`.
pub const MIN_AUTO_FRAMES_PER_CHUNK: u64 =
    FIXED_COST_IN_FRAMES * (100 - MAX_OVERHEAD_PERCENT) / MAX_OVERHEAD_PERCENT;
/// Lambda's floor for an explicit `framesPerChunk`.
pub const MIN_FRAMES_PER_CHUNK: u64 = 4;

/// Output frames `start..end` of a render (positions in its frame list, after `frameRange`
/// and `everyNthFrame`), the `index`-th chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkSpan {
    pub index: usize,
    pub start: u64,
    pub end: u64,
}

impl ChunkSpan {
    pub fn frames(&self) -> u64 {
        self.end - self.start
    }
}

/// Why a render got the chunks it got (for the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The plan says its output cannot be cut (`MediaPlan::unchunkable`: gif, audio-only).
    NotChunkable,
    /// Too few frames for two chunks to pay for their fixed cost.
    Short,
    /// The payload's `framesPerChunk`.
    Requested,
    /// The payload's `framesPerChunk` would have made more than the maximum.
    RequestedButCapped,
    /// The fixed-cost rule.
    Automatic,
    /// The fixed-cost rule would have made more than the maximum.
    AutomaticCapped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    pub spans: Vec<ChunkSpan>,
    pub why: Why,
}

impl ChunkPlan {
    pub fn is_single(&self) -> bool {
        self.spans.len() <= 1
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("framesPerChunk must be at least {MIN_FRAMES_PER_CHUNK}, got {0}")]
    FramesPerChunkTooSmall(u64),
}

/// Cuts `frames` output frames into chunks: by `frames_per_chunk` when the payload gives it,
/// else by the fixed-cost rule (module docs); never more than `max_chunks`. `unchunkable` is
/// the render plan's reason not to cut at all (`MediaPlan::unchunkable`), which decides
/// before anything else.
pub fn plan_chunks(
    frames: u64,
    unchunkable: Option<&str>,
    frames_per_chunk: Option<u64>,
    max_chunks: usize,
) -> Result<ChunkPlan, PlanError> {
    if let Some(n) = frames_per_chunk
        && n < MIN_FRAMES_PER_CHUNK
    {
        return Err(PlanError::FramesPerChunkTooSmall(n));
    }
    let max_chunks = max_chunks.max(1) as u64;
    let single = |why| ChunkPlan {
        spans: vec![ChunkSpan {
            index: 0,
            start: 0,
            end: frames,
        }],
        why,
    };
    if unchunkable.is_some() {
        return Ok(single(Why::NotChunkable));
    }
    match frames_per_chunk {
        Some(n) => {
            let wanted = frames.div_ceil(n);
            if wanted <= max_chunks {
                // Exactly n frames each, the last one the rest, as Lambda plans them.
                let spans = (0..wanted)
                    .map(|k| ChunkSpan {
                        index: k as usize,
                        start: k * n,
                        end: ((k + 1) * n).min(frames),
                    })
                    .collect();
                Ok(ChunkPlan {
                    spans,
                    why: Why::Requested,
                })
            } else {
                Ok(even(frames, max_chunks, Why::RequestedButCapped))
            }
        }
        None => {
            let by_cost = frames / MIN_AUTO_FRAMES_PER_CHUNK;
            if by_cost < 2 {
                Ok(single(Why::Short))
            } else if by_cost > max_chunks {
                Ok(even(frames, max_chunks, Why::AutomaticCapped))
            } else {
                Ok(even(frames, by_cost, Why::Automatic))
            }
        }
    }
}

/// `count` chunks whose sizes differ by at most one frame.
fn even(frames: u64, count: u64, why: Why) -> ChunkPlan {
    let count = count.clamp(1, frames.max(1));
    let (base, extra) = (frames / count, frames % count);
    ChunkPlan {
        spans: contiguous((0..count).map(|k| base + u64::from(k < extra))),
        why,
    }
}

/// Chunks of these sizes, one after the other from frame 0.
pub fn contiguous(sizes: impl IntoIterator<Item = u64>) -> Vec<ChunkSpan> {
    let mut start = 0;
    sizes
        .into_iter()
        .enumerate()
        .map(|(index, len)| {
            let span = ChunkSpan {
                index,
                start,
                end: start + len,
            };
            start += len;
            span
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_cover(plan: &ChunkPlan, frames: u64) {
        assert_eq!(plan.spans.first().unwrap().start, 0);
        assert_eq!(plan.spans.last().unwrap().end, frames);
        for (k, w) in plan.spans.windows(2).enumerate() {
            assert_eq!(w[0].end, w[1].start, "contiguous at {k}");
        }
        for (k, s) in plan.spans.iter().enumerate() {
            assert_eq!(s.index, k);
            assert!(s.frames() > 0 || frames == 0);
        }
    }

    #[test]
    fn the_floor_follows_from_the_overhead_target() {
        assert_eq!(MIN_AUTO_FRAMES_PER_CHUNK, 144);
        // F / (F + n·t) at the floor: 16 / 160 = 10 %.
        let overhead =
            FIXED_COST_IN_FRAMES as f64 / (FIXED_COST_IN_FRAMES + MIN_AUTO_FRAMES_PER_CHUNK) as f64;
        assert!((overhead - 0.10).abs() < 1e-9);
    }

    #[test]
    fn short_renders_stay_in_one_instance() {
        for frames in [0, 1, 90, 287] {
            let p = plan_chunks(frames, None, None, 200).unwrap();
            assert_eq!(p.why, Why::Short, "{frames}");
            assert!(p.is_single());
            check_cover(&p, frames);
        }
        let p = plan_chunks(288, None, None, 200).unwrap();
        assert_eq!((p.spans.len(), p.why), (2, Why::Automatic));
    }

    #[test]
    fn longer_videos_get_more_chunks_up_to_the_maximum() {
        let mut last = 0;
        for frames in [300, 900, 1800, 5_000, 10_000, 18_000, 100_000] {
            let p = plan_chunks(frames, None, None, 60).unwrap();
            check_cover(&p, frames);
            assert!(p.spans.len() >= last, "{frames}");
            assert!(p.spans.len() <= 60);
            let (min, max) = p.spans.iter().fold((u64::MAX, 0), |(a, b), s| {
                (a.min(s.frames()), b.max(s.frames()))
            });
            assert!(max - min <= 1, "even spread at {frames}");
            assert!(
                min >= MIN_AUTO_FRAMES_PER_CHUNK,
                "fixed cost paid off at {frames}"
            );
            last = p.spans.len();
        }
        // 10 minutes at 30 fps with 60 instances: the cap decides, 300 frames each.
        let p = plan_chunks(18_000, None, None, 60).unwrap();
        assert_eq!((p.spans.len(), p.why), (60, Why::AutomaticCapped));
        assert_eq!(p.spans[0].frames(), 300);
    }

    #[test]
    fn frames_per_chunk_is_honoured_and_capped() {
        let p = plan_chunks(10, None, Some(4), 200).unwrap();
        assert_eq!(p.why, Why::Requested);
        assert_eq!(
            p.spans.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(),
            [(0, 4), (4, 8), (8, 10)]
        );
        let p = plan_chunks(1000, None, Some(5), 8).unwrap();
        assert_eq!((p.spans.len(), p.why), (8, Why::RequestedButCapped));
        check_cover(&p, 1000);
        assert_eq!(
            plan_chunks(100, None, Some(3), 200),
            Err(PlanError::FramesPerChunkTooSmall(3))
        );
        assert!(
            PlanError::FramesPerChunkTooSmall(3)
                .to_string()
                .contains("framesPerChunk")
        );
    }

    #[test]
    fn an_unchunkable_plan_is_never_chunked() {
        for fpc in [Some(10), None] {
            let p = plan_chunks(100_000, Some("gif"), fpc, 200).unwrap();
            assert_eq!((p.spans.len(), p.why), (1, Why::NotChunkable), "{fpc:?}");
            check_cover(&p, 100_000);
        }
    }
}
