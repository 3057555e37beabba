//! Which composition frames a render captures, and at what output rate.

use crate::options::FrameRange;

/// The most frames one render may select. A payload (or a page) can claim any duration up to
/// 2^53 frames; the frame list is held in memory, so an unbounded selection would end the
/// instance instead of the request. Ten million frames is over 90 hours at 30 fps.
pub const MAX_FRAMES: u64 = 10_000_000;

/// The composition frames to capture, in output order.
///
/// Within each range, frames whose offset from the range start is a multiple of
/// `every_nth_frame` are kept, as the current renderer does.
pub fn select_frames(
    range: &FrameRange,
    every_nth_frame: u32,
    duration_in_frames: u64,
) -> Result<Vec<u64>, String> {
    let last = duration_in_frames.saturating_sub(1);
    let out_of_bounds = |a: u64, b: u64| {
        format!(
            "The \"durationInFrames\" of the <Composition /> was evaluated to be {duration_in_frames}, but frame range {a}-{b} is not inbetween 0-{last}"
        )
    };
    let ranges: Vec<(u64, u64)> = match range {
        FrameRange::All => vec![(0, last)],
        FrameRange::Single(n) => {
            if *n > last {
                return Err(format!(
                    "Frame number is out of range, must be between 0 and {last} but got {n}"
                ));
            }
            vec![(*n, *n)]
        }
        FrameRange::Ranges(list) => {
            let mut out = Vec::with_capacity(list.len());
            for &(a, b) in list {
                let b_resolved = b.unwrap_or(last);
                if a > last || b_resolved > last {
                    return Err(out_of_bounds(a, b_resolved));
                }
                out.push((a, b_resolved));
            }
            out
        }
    };
    let n = every_nth_frame.max(1) as u64;
    let count = ranges
        .iter()
        .fold(0u64, |sum, &(a, b)| sum.saturating_add((b - a) / n + 1));
    if count > MAX_FRAMES {
        return Err(format!(
            "The frame range and everyNthFrame select {count} frames; one render can render at most {MAX_FRAMES}"
        ));
    }
    let frames: Vec<u64> = ranges
        .iter()
        .flat_map(|&(a, b)| (a..=b).filter(move |f| (f - a) % n == 0))
        .collect();
    if frames.is_empty() {
        return Err("The frame range and everyNthFrame select no frames to render".into());
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_selection_is_refused_before_it_is_built() {
        let e = select_frames(&FrameRange::All, 1, 1 << 53).unwrap_err();
        assert_eq!(
            e,
            "The frame range and everyNthFrame select 9007199254740992 frames; one render can render at most 10000000"
        );
        assert_eq!(
            select_frames(&FrameRange::All, 2, 20_000_000)
                .unwrap()
                .len(),
            10_000_000
        );
        let r = FrameRange::Ranges(vec![(0, Some(9_999_999)), (10_000_000, Some(10_000_000))]);
        assert!(select_frames(&r, 1, 1 << 40).is_err());
    }

    #[test]
    fn whole_composition() {
        assert_eq!(
            select_frames(&FrameRange::All, 1, 4).unwrap(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            select_frames(&FrameRange::All, 2, 5).unwrap(),
            vec![0, 2, 4]
        );
    }

    #[test]
    fn single_and_ranges() {
        assert_eq!(
            select_frames(&FrameRange::Single(3), 1, 10).unwrap(),
            vec![3]
        );
        assert!(select_frames(&FrameRange::Single(10), 1, 10).is_err());
        let r = FrameRange::Ranges(vec![(2, Some(4)), (7, None)]);
        assert_eq!(select_frames(&r, 1, 9).unwrap(), vec![2, 3, 4, 7, 8]);
        let r = FrameRange::Ranges(vec![(3, Some(9))]);
        assert_eq!(select_frames(&r, 3, 10).unwrap(), vec![3, 6, 9]);
        let r = FrameRange::Ranges(vec![(3, Some(12))]);
        let e = select_frames(&r, 1, 10).unwrap_err();
        assert!(e.contains("frame range 3-12 is not inbetween 0-9"), "{e}");
    }
}
