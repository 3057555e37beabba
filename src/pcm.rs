//! Audio samples as the audio stage produces them and the encoder consumes them: interleaved
//! stereo `f32` at one sample rate. The only PCM type of the crate.

/// The renderer mixes at this rate unless the composition says otherwise.
pub const DEFAULT_SAMPLE_RATE: u32 = 48_000;

/// Always stereo, as the renderer's mix (`-ac 2`).
pub const CHANNELS: usize = 2;

/// Interleaved stereo samples, full scale at ±1.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

impl Pcm {
    /// Stereo frames (one sample per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / CHANNELS
    }
}
