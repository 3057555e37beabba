//! From the per-frame asset records the page registered to audio tracks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the page registered during one captured frame, as `remotion_collectAssets()` returned
/// it. Serializable: the instances that render chunks send theirs to the one that mixes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetRecord {
    /// The composition frame.
    pub frame: u64,
    pub assets: Value,
}

/// One `type: "audio" | "video"` record of `remotion_collectAssets()`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MediaAsset {
    pub src: String,
    pub id: String,
    pub frame: i64,
    #[serde(default = "one")]
    pub volume: f64,
    #[serde(default)]
    pub media_frame: f64,
    #[serde(default = "one")]
    pub playback_rate: f64,
    #[serde(default = "one")]
    pub tone_frequency: f64,
    #[serde(default)]
    pub audio_start_frame: f64,
    #[serde(default)]
    pub audio_stream_index: usize,
}

/// One `type: "inline-audio"` record: stereo s16 samples the page produced for a frame.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InlineAudio {
    pub id: String,
    pub frame: i64,
    pub audio: Vec<i16>,
    #[serde(default)]
    pub start_in_video: Option<f64>,
    #[serde(default = "one")]
    pub tone_frequency: f64,
}

fn one() -> f64 {
    1.0
}

/// What one captured frame registered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameAssets {
    pub media: Vec<MediaAsset>,
    pub inline: Vec<InlineAudio>,
}

impl FrameAssets {
    pub fn is_empty(&self) -> bool {
        self.media.is_empty() && self.inline.is_empty()
    }
}

/// Reads the records of one frame; unknown types (artifacts) and malformed records are skipped
/// with a warning, since they cannot be rendered as audio anyway.
pub fn parse_frame(value: &Value) -> FrameAssets {
    let mut out = FrameAssets::default();
    let Some(items) = value.as_array() else {
        return out;
    };
    for item in items {
        match item.get("type").and_then(Value::as_str) {
            Some("audio" | "video") => match serde_json::from_value::<MediaAsset>(item.clone()) {
                Ok(a) if a.volume > 0.0 => out.media.push(a),
                Ok(_) => {}
                Err(e) => tracing::warn!("ignoring an unreadable media asset: {e}"),
            },
            Some("inline-audio") => match serde_json::from_value::<InlineAudio>(item.clone()) {
                Ok(a) => out.inline.push(a),
                Err(e) => tracing::warn!("ignoring an unreadable inline-audio asset: {e}"),
            },
            _ => {}
        }
    }
    out
}

/// One uninterrupted run of a media asset id: a piece of a source placed on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub src: String,
    /// Output frame index where the run starts.
    pub start_in_video: usize,
    /// Frames in the run.
    pub duration: usize,
    /// The first record's `mediaFrame`.
    pub trim_left: f64,
    /// Per output frame of the run.
    pub volume: Vec<f64>,
    pub playback_rate: f64,
    pub tone_frequency: f64,
    pub audio_start_frame: f64,
    pub audio_stream_index: usize,
}

/// Walks the frames in output order and cuts a track wherever an id is missing from a frame
/// or the composition frames stop being consecutive (several frame ranges).
pub fn tracks(frames: &[(u64, FrameAssets)], every_nth_frame: u64) -> Vec<Track> {
    let mut open: BTreeMap<String, Track> = BTreeMap::new();
    let mut done = Vec::new();
    let mut previous_frame: Option<u64> = None;
    for (index, (frame, assets)) in frames.iter().enumerate() {
        let contiguous = previous_frame.is_none_or(|p| p + every_nth_frame == *frame);
        previous_frame = Some(*frame);
        if !contiguous {
            done.extend(std::mem::take(&mut open).into_values());
        }
        let mut seen = BTreeMap::new();
        for a in &assets.media {
            seen.entry(a.id.clone()).or_insert(a);
        }
        let ended: Vec<String> = open
            .keys()
            .filter(|id| !seen.contains_key(*id))
            .cloned()
            .collect();
        for id in ended {
            done.push(open.remove(&id).expect("listed"));
        }
        for (id, a) in seen {
            match open.get_mut(&id) {
                Some(t) => {
                    t.duration += 1;
                    t.volume.push(a.volume);
                }
                None => {
                    open.insert(
                        id,
                        Track {
                            src: a.src.clone(),
                            start_in_video: index,
                            duration: 1,
                            trim_left: a.media_frame,
                            volume: vec![a.volume],
                            playback_rate: a.playback_rate,
                            tone_frequency: a.tone_frequency,
                            audio_start_frame: a.audio_start_frame,
                            audio_stream_index: a.audio_stream_index,
                        },
                    );
                }
            }
        }
    }
    done.extend(open.into_values());
    done.sort_by_key(|t| t.start_in_video);
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn asset(id: &str, frame: i64, volume: f64) -> Value {
        json!({"type": "audio", "src": format!("https://x/{id}.wav"), "id": id, "frame": frame,
               "volume": volume, "mediaFrame": frame, "playbackRate": 1, "toneFrequency": 1,
               "audioStartFrame": 0, "audioStreamIndex": 0})
    }

    fn frames(list: Vec<(u64, Vec<Value>)>) -> Vec<(u64, FrameAssets)> {
        list.into_iter()
            .map(|(f, items)| (f, parse_frame(&Value::Array(items))))
            .collect()
    }

    #[test]
    fn runs_become_tracks_and_gaps_split_them() {
        let f = frames(vec![
            (0, vec![asset("a", 0, 1.0)]),
            (1, vec![asset("a", 1, 0.5), asset("b", 1, 1.0)]),
            (2, vec![asset("b", 2, 1.0)]),
            (
                3,
                vec![asset("a", 3, 1.0), asset("b", 3, 1.0), asset("b", 3, 1.0)],
            ),
        ]);
        let t = tracks(&f, 1);
        assert_eq!(t.len(), 3);
        assert_eq!(
            (t[0].src.as_str(), t[0].start_in_video, t[0].duration),
            ("https://x/a.wav", 0, 2)
        );
        assert_eq!(t[0].volume, vec![1.0, 0.5]);
        assert_eq!(
            (t[1].start_in_video, t[1].duration),
            (1, 3),
            "b, deduplicated in frame 3"
        );
        assert_eq!(
            (t[2].start_in_video, t[2].duration, t[2].trim_left),
            (3, 1, 3.0)
        );
    }

    #[test]
    fn non_consecutive_frames_end_every_track() {
        let f = frames(vec![
            (0, vec![asset("a", 0, 1.0)]),
            (1, vec![asset("a", 1, 1.0)]),
            (10, vec![asset("a", 10, 1.0)]),
        ]);
        let t = tracks(&f, 1);
        assert_eq!(t.len(), 2);
        assert_eq!((t[1].start_in_video, t[1].trim_left), (2, 10.0));
        // With everyNthFrame 5, frames 0, 5, 10 are consecutive.
        let f = frames(vec![
            (0, vec![asset("a", 0, 1.0)]),
            (5, vec![asset("a", 5, 1.0)]),
        ]);
        assert_eq!(tracks(&f, 5).len(), 1);
    }

    #[test]
    fn silent_and_foreign_records_are_skipped() {
        let parsed = parse_frame(&json!([
            asset("a", 0, 0.0),
            {"type": "artifact", "filename": "x.txt"},
            {"type": "audio", "nonsense": true},
            {"type": "inline-audio", "id": "i", "frame": 0, "audio": [1, -1, 2, -2], "startInVideo": null, "timestamp": 0, "duration": 1, "toneFrequency": 1},
        ]));
        assert!(parsed.media.is_empty());
        assert_eq!(parsed.inline.len(), 1);
        assert_eq!(parsed.inline[0].audio, vec![1, -1, 2, -2]);
    }
}
