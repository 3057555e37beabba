use std::time::Duration;

/// Everything that can go wrong between us and a page.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrowserError {
    #[error("Could not start the browser: {0}")]
    Launch(String),

    /// A CDP command failed or the connection broke.
    #[error("{message} (while {during})")]
    Protocol { during: String, message: String },

    /// A CDP command did not answer within its deadline.
    #[error("Timed out after {}ms while {during}", after.as_millis())]
    Deadline { during: String, after: Duration },

    /// The tab's renderer process crashed, or the tab went away.
    #[error("Target closed: {0}")]
    TargetClosed(String),

    /// The browser process died or our connection to it closed: every call into it failed
    /// at once. `retried_frame` is set when the frame had already been retried after a crash.
    #[error(
        "The browser crashed while {during} ({cause}){}",
        retried_frame.map(|f| format!(". Frame {f} had already been retried in a new browser after a crash, so the render gives up")).unwrap_or_default()
    )]
    BrowserCrashed {
        during: String,
        cause: String,
        retried_frame: Option<u64>,
    },

    /// An exception the page did not catch; it fails the render.
    #[error("{message}")]
    PageException {
        name: String,
        message: String,
        stack: String,
    },

    /// `cancelRender()`, a delayRender() timeout, or alert()/confirm().
    #[error("{message}")]
    Cancelled { message: String, stack: String },

    /// Our own readiness deadline (T + 3 s) passed before the page said ready.
    #[error(
        "Timeout ({}ms) exceeded rendering the component{}. Open delayRender() handles: {}. You can increase the timeout with delayRenderTimeoutInMilliseconds (--timeout).",
        timeout.as_millis(),
        frame.map(|f| format!(" at frame {f}")).unwrap_or_else(|| " initially".into()),
        if labels.is_empty() { "none".to_string() } else { labels.iter().enumerate().map(|(i, l)| format!("{}. \"{l}\"", i + 1)).collect::<Vec<_>>().join(", ") }
    )]
    ReadyTimeout {
        timeout: Duration,
        frame: Option<u64>,
        labels: Vec<String>,
    },

    #[error("{reason} at {url}")]
    Navigation { url: String, reason: String },

    #[error("The serve URL {url} answered with HTTP status {status}")]
    HttpStatus { url: String, status: u16 },

    #[error(
        "Tried to go to {url} and verify that it is a Remotion project by checking if window.getStaticCompositions is defined. However, the function was undefined, which indicates that this is not a valid Remotion project. Page content: {body_start}"
    )]
    NotARemotionSite { url: String, body_start: String },

    #[error(
        "Incompatible site: When visiting {url}, a bundle was found, but one that is not compatible with this version of the renderer. Found version: {found} - Required version: 11. Re-deploy the site with a Remotion 4.0.200+ bundle."
    )]
    IncompatibleSite { url: String, found: String },

    #[error("Could not find composition with ID {id}. Available compositions: {}", available.join(", "))]
    UnknownComposition { id: String, available: Vec<String> },

    #[error("{0}")]
    InvalidComposition(String),
}

impl BrowserError {
    pub fn protocol(during: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let message = message.to_string();
        // chromiumoxide reports a dead websocket or a closed target in several ways; they all
        // mean the same thing to a render: the target is gone.
        let lower = message.to_lowercase();
        if lower.contains("target closed")
            || lower.contains("session closed")
            || lower.contains("no session")
            || lower.contains("channel closed")
            || lower.contains("connection closed")
            || lower.contains("receiver is gone")
            || lower.contains("websocket")
        {
            return BrowserError::TargetClosed(format!("{message} (while {})", during.into()));
        }
        BrowserError::Protocol {
            during: during.into(),
            message,
        }
    }

    /// The JS-style error name the wire error carries.
    pub fn name(&self) -> &str {
        match self {
            BrowserError::PageException { name, .. } => name,
            BrowserError::Cancelled { .. } => "CancelledError",
            BrowserError::ReadyTimeout { .. } | BrowserError::Deadline { .. } => "TimeoutError",
            BrowserError::TargetClosed(_) => "TargetCloseError",
            BrowserError::BrowserCrashed { .. } => "BrowserCrashedError",
            _ => "Error",
        }
    }

    pub fn stack(&self) -> Option<&str> {
        match self {
            BrowserError::PageException { stack, .. } | BrowserError::Cancelled { stack, .. } => {
                Some(stack)
            }
            _ => None,
        }
    }

    /// The page asked for this frame to be tried again on a fresh tab.
    pub fn asks_for_retry(&self) -> bool {
        const TOKEN: &str = "- Rendering the frame will be retried.";
        match self {
            BrowserError::PageException { message, stack, .. } => {
                message.contains(TOKEN) || stack.contains(TOKEN)
            }
            BrowserError::Cancelled { message, stack } => {
                message.contains(TOKEN) || stack.contains(TOKEN)
            }
            _ => false,
        }
    }

    /// The tab or the browser died: a replacement may well succeed.
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            BrowserError::TargetClosed(_) | BrowserError::BrowserCrashed { .. }
        )
    }

    /// The error a frame fails with when its crash retries are used up.
    pub(super) fn after_crash_retries(self, frame: u64) -> Self {
        match self {
            BrowserError::BrowserCrashed { during, cause, .. } => BrowserError::BrowserCrashed {
                during,
                cause,
                retried_frame: Some(frame),
            },
            other => other,
        }
    }
}
