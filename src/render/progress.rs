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
    /// The whole render's progress, 0 to 1, when more than its frames counts: a render spread
    /// over instances still has its join to do once every frame is encoded. `None`: the
    /// frames alone decide.
    pub overall: Option<f64>,
}

impl RenderProgress {
    /// `round((70 × rendered + 30 × encoded) / total) / 100`: 0.00 to 1.00 in steps of 0.01.
    pub fn fraction(&self) -> f64 {
        if let Some(overall) = self.overall {
            // Hundredths, rounded down, so that 1 means finished.
            return ((overall * 100.0 + 1e-9).floor() / 100.0).clamp(0.0, 1.0);
        }
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
                overall: None,
            }
            .fraction()
        };
        assert_eq!(p(0, 0, 10), 0.0);
        assert_eq!(p(10, 0, 10), 0.7);
        assert_eq!(p(10, 10, 10), 1.0);
        assert_eq!(p(1, 0, 3), 0.23);
        assert_eq!(p(0, 0, 0), 0.0);
        let joining = RenderProgress {
            rendered: 10,
            encoded: 10,
            total: 10,
            overall: Some(0.976),
        };
        assert_eq!(
            joining.fraction(),
            0.97,
            "the join's share decides, rounded down"
        );
    }
}
