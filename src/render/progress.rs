//! The progress of a render, as the renderer counts it.

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RenderProgress {
    /// Frames captured from the page.
    pub rendered: u64,
    /// Frames written to the output by the encoder.
    pub encoded: u64,
    /// Frames the render will capture (after frameRange and everyNthFrame).
    pub total: u64,
}

impl RenderProgress {
    /// `round((70 × rendered + 30 × encoded) / total) / 100`: 0.00 to 1.00 in steps of 0.01.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let weighted = (70 * self.rendered.min(self.total) + 30 * self.encoded.min(self.total))
            as f64
            / self.total as f64;
        weighted.round() / 100.0
    }
}

/// Where a render publishes its progress; the HTTP stream, the CLI bar and the webhook read it.
pub type ProgressSender = watch::Sender<RenderProgress>;

pub fn channel() -> (ProgressSender, watch::Receiver<RenderProgress>) {
    watch::channel(RenderProgress::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_matches_the_renderer() {
        let p = |r, e, t| {
            RenderProgress {
                rendered: r,
                encoded: e,
                total: t,
            }
            .fraction()
        };
        assert_eq!(p(0, 0, 10), 0.0);
        assert_eq!(p(10, 0, 10), 0.7);
        assert_eq!(p(10, 10, 10), 1.0);
        assert_eq!(p(1, 0, 3), 0.23);
        assert_eq!(p(0, 0, 0), 0.0);
    }
}
