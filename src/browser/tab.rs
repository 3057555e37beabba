//! One CDP page target with deadlines on every call and a watch on its health, and the
//! lifeline of the browser behind it.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chromiumoxide::cdp::IntoEventKind;
use chromiumoxide::cdp::browser_protocol::inspector::EventTargetCrashed;
use chromiumoxide::cdp::browser_protocol::target::{CloseTargetParams, TargetId};
use chromiumoxide::cdp::js_protocol::runtime::{
    EvaluateParams, EvaluateReturns, EventConsoleApiCalled, EventExceptionThrown, ExceptionDetails,
};
use chromiumoxide::listeners::EventStream;
use chromiumoxide::types::Command;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::BrowserError;

/// How long a plain CDP command (not a page-side wait) may take before we give up on the tab.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(20);

/// Whether a browser instance is still there. Tripped once, by whoever notices first: the
/// CDP handler when the connection ends, or the launcher when the process exits. Every call
/// into the instance races it, so a dead browser fails its calls at once instead of at their
/// deadlines.
#[derive(Clone, Default)]
pub(super) struct Lifeline {
    dead: CancellationToken,
    cause: Arc<OnceLock<String>>,
}

impl Lifeline {
    pub(super) fn trip(&self, cause: impl Into<String>) {
        // The cause is in place before anyone is woken, so every waiter can name it.
        let _ = self.cause.set(cause.into());
        self.dead.cancel();
    }

    pub(super) fn is_tripped(&self) -> bool {
        self.dead.is_cancelled()
    }

    pub(super) async fn tripped(&self) {
        self.dead.cancelled().await
    }

    fn crashed(&self, during: &str) -> BrowserError {
        BrowserError::BrowserCrashed {
            during: during.to_string(),
            cause: self
                .cause
                .get()
                .cloned()
                .unwrap_or_else(|| "cause unknown".into()),
            retried_frame: None,
        }
    }

    /// `fut` with a deadline, failing as soon as the browser dies.
    pub(super) async fn within<T>(
        &self,
        during: &str,
        deadline: Duration,
        fut: impl Future<Output = Result<T, BrowserError>>,
    ) -> Result<T, BrowserError> {
        if self.is_tripped() {
            return Err(self.crashed(during));
        }
        tokio::select! {
            biased;
            _ = self.dead.cancelled() => Err(self.crashed(during)),
            r = with_deadline_flat(during, deadline, fut) => match r {
                // A call that failed because the connection went down reports the crash.
                Err(_) if self.is_tripped() => Err(self.crashed(during)),
                r => r,
            },
        }
    }
}

/// A chromiumoxide call, its error mapped to ours.
pub(super) async fn cdp_call<T, E: std::fmt::Display>(
    during: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, BrowserError> {
    fut.await.map_err(|e| BrowserError::protocol(during, e))
}

/// Subscribes to a page's events of type `T`.
async fn subscribe<T: IntoEventKind + Unpin + 'static>(
    page: &chromiumoxide::Page,
    lifeline: &Lifeline,
    during: &str,
) -> Result<EventStream<T>, BrowserError> {
    lifeline
        .within(
            during,
            COMMAND_DEADLINE,
            cdp_call(during, page.event_listener::<T>()),
        )
        .await
}

/// The first fatal thing that happened in a tab: an uncaught exception or a crash.
#[derive(Default)]
struct Health {
    failure: Mutex<Option<BrowserError>>,
    changed: Notify,
}

impl Health {
    fn fail(&self, error: BrowserError) {
        let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(error);
        }
        drop(slot);
        self.changed.notify_waiters();
    }

    fn current(&self) -> Option<BrowserError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct Tab {
    page: chromiumoxide::Page,
    cdp: Arc<chromiumoxide::Browser>,
    lifeline: Lifeline,
    health: Arc<Health>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    label: String,
    closed: bool,
}

impl Tab {
    pub(super) async fn attach(
        page: chromiumoxide::Page,
        cdp: Arc<chromiumoxide::Browser>,
        lifeline: Lifeline,
        label: String,
        forward_console: bool,
    ) -> Result<Tab, BrowserError> {
        let health = Arc::new(Health::default());
        let mut watchers = Vec::new();

        let mut exceptions =
            subscribe::<EventExceptionThrown>(&page, &lifeline, "listening for page exceptions")
                .await?;
        let h = health.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(event) = exceptions.next().await {
                h.fail(page_exception(&event.exception_details));
            }
        }));

        let mut crashes =
            subscribe::<EventTargetCrashed>(&page, &lifeline, "listening for crashes").await?;
        let h = health.clone();
        watchers.push(tokio::spawn(async move {
            if crashes.next().await.is_some() {
                h.fail(BrowserError::TargetClosed("Page crashed!".into()));
            }
        }));

        if forward_console {
            let mut console =
                subscribe::<EventConsoleApiCalled>(&page, &lifeline, "listening to the console")
                    .await?;
            let tab_label = label.clone();
            watchers.push(tokio::spawn(async move {
                while let Some(event) = console.next().await {
                    let text = event
                        .args
                        .iter()
                        .map(|a| match (&a.value, &a.description) {
                            (Some(Value::String(s)), _) => s.clone(),
                            (Some(v), _) => v.to_string(),
                            (None, Some(d)) => d.clone(),
                            (None, None) => String::new(),
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    tracing::info!(tab = %tab_label, kind = ?event.r#type, "page console: {text}");
                }
            }));
        }

        Ok(Tab {
            page,
            cdp,
            lifeline,
            health,
            watchers,
            label,
            closed: false,
        })
    }

    /// Subscribes to this page's events of type `T`.
    pub(super) async fn subscribe<T: IntoEventKind + Unpin + 'static>(
        &self,
        during: &str,
    ) -> Result<EventStream<T>, BrowserError> {
        subscribe(&self.page, &self.lifeline, during).await
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn target_id(&self) -> &TargetId {
        self.page.target_id()
    }

    /// Sends one CDP command with a deadline, failing fast if the tab already failed.
    pub async fn call<C: Command>(
        &self,
        during: &str,
        command: C,
    ) -> Result<C::Response, BrowserError> {
        self.call_within(during, COMMAND_DEADLINE, command).await
    }

    pub async fn call_within<C: Command>(
        &self,
        during: &str,
        deadline: Duration,
        command: C,
    ) -> Result<C::Response, BrowserError> {
        let page = &self.page;
        let fut = async move {
            page.execute(command)
                .await
                .map(|r| r.result)
                .map_err(|e| BrowserError::protocol(during, e))
        };
        self.guarded(during, with_deadline_flat(during, deadline, fut))
            .await
    }

    /// Like [`Tab::evaluate`], but also after the tab recorded a failure: for reading the
    /// page's own account of what went wrong.
    pub async fn evaluate_diagnostics(
        &self,
        during: &str,
        deadline: Duration,
        expression: impl Into<String>,
    ) -> Result<Value, BrowserError> {
        let params = evaluate_params(during, expression)?;
        let page = &self.page;
        let returns = self
            .lifeline
            .within(during, deadline, async move {
                page.execute(params)
                    .await
                    .map(|r| r.result)
                    .map_err(|e| BrowserError::protocol(during, e))
            })
            .await?;
        evaluation_value(returns)
    }

    /// Evaluates an expression (awaiting a promise) and returns its JSON value.
    pub async fn evaluate(
        &self,
        during: &str,
        deadline: Duration,
        expression: impl Into<String>,
    ) -> Result<Value, BrowserError> {
        let params = evaluate_params(during, expression)?;
        evaluation_value(self.call_within(during, deadline, params).await?)
    }

    /// Runs `fut`, but fails as soon as the tab reports an uncaught exception or a crash, or
    /// its browser dies.
    pub async fn guarded<T>(
        &self,
        during: &str,
        fut: impl Future<Output = Result<T, BrowserError>>,
    ) -> Result<T, BrowserError> {
        if let Some(e) = self.health.current() {
            return Err(e);
        }
        if self.lifeline.is_tripped() {
            return Err(self.lifeline.crashed(during));
        }
        let health = self.health.clone();
        let failed = async move {
            loop {
                let notified = health.changed.notified();
                if let Some(e) = health.current() {
                    return e;
                }
                notified.await;
            }
        };
        tokio::select! {
            biased;
            e = failed => Err(e),
            _ = self.lifeline.dead.cancelled() => Err(self.lifeline.crashed(during)),
            r = fut => {
                // An exception raised while the call ran wins: it is the real cause. A call
                // that failed because the connection went down reports the crash.
                match (r, self.health.current()) {
                    (Err(_), Some(e)) => Err(e),
                    (Err(_), None) if self.lifeline.is_tripped() => {
                        Err(self.lifeline.crashed(during))
                    }
                    (r, _) => r,
                }
            }
        }
    }

    /// The failure recorded for this tab, if any.
    pub fn failure(&self) -> Option<BrowserError> {
        self.health.current()
    }

    /// Forget an earlier failure (used after the page has been re-navigated).
    pub fn clear_failure(&self) {
        *self
            .health
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Closes the target. Never fails: a tab that will not close is abandoned with its browser.
    pub async fn close(mut self) {
        self.closed = true;
        close_target(
            self.cdp.clone(),
            self.lifeline.clone(),
            self.page.target_id().clone(),
            self.label.clone(),
        )
        .await;
    }
}

async fn close_target(
    browser: Arc<chromiumoxide::Browser>,
    lifeline: Lifeline,
    target: TargetId,
    label: String,
) {
    let during = "closing the tab";
    let close = cdp_call(during, browser.execute(CloseTargetParams::new(target)));
    // A target that is already gone, or a dead browser, has nothing left to close.
    if let Err(e @ BrowserError::Deadline { .. }) =
        lifeline.within(during, Duration::from_secs(5), close).await
    {
        tracing::warn!(tab = %label, "{e}");
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
        // A tab dropped on an error or a cancellation path must not stay open in the warm
        // browser: close it in the background.
        if !self.closed
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(close_target(
                self.cdp.clone(),
                self.lifeline.clone(),
                self.page.target_id().clone(),
                self.label.clone(),
            ));
        }
    }
}

fn evaluation_value(returns: EvaluateReturns) -> Result<Value, BrowserError> {
    if let Some(details) = returns.exception_details {
        return Err(page_exception(&details));
    }
    Ok(returns.result.value.unwrap_or(Value::Null))
}

fn evaluate_params(
    during: &str,
    expression: impl Into<String>,
) -> Result<EvaluateParams, BrowserError> {
    EvaluateParams::builder()
        .expression(expression)
        .await_promise(true)
        .return_by_value(true)
        .user_gesture(true)
        .build()
        .map_err(|e| BrowserError::protocol(during, e))
}

pub(super) async fn with_deadline<T, E: std::fmt::Display>(
    during: &str,
    deadline: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, BrowserError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BrowserError::protocol(during, e)),
        Err(_) => Err(BrowserError::Deadline {
            during: during.to_string(),
            after: deadline,
        }),
    }
}

async fn with_deadline_flat<T>(
    during: &str,
    deadline: Duration,
    fut: impl Future<Output = Result<T, BrowserError>>,
) -> Result<T, BrowserError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(BrowserError::Deadline {
            during: during.to_string(),
            after: deadline,
        }),
    }
}

/// Turns CDP exception details into the error the user sees: the message without the
/// `ClassName: ` prefix and the stack lines, cut before "The delayRender was called:".
pub fn page_exception(details: &ExceptionDetails) -> BrowserError {
    let exception = details.exception.as_ref();
    let name = exception
        .and_then(|e| e.class_name.clone())
        .unwrap_or_else(|| "Error".into());
    let description = exception
        .and_then(|e| e.description.clone())
        .or_else(|| {
            exception.and_then(|e| e.value.as_ref()).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
        .unwrap_or_else(|| details.text.clone());
    let first_stack_line = description.find("\n    at ").unwrap_or(description.len());
    let mut message = description[..first_stack_line].to_string();
    let prefix = format!("{name}: ");
    if let Some(rest) = message.strip_prefix(&prefix) {
        message = rest.to_string();
    } else if let Some(rest) = message.strip_prefix("Uncaught ") {
        message = rest.to_string();
    }
    if let Some(cut) = message.find("The delayRender was called:") {
        message.truncate(cut);
    }
    let message = message.trim().to_string();
    let stack = if description.contains("\n    at ") {
        description.clone()
    } else {
        let frames = details
            .stack_trace
            .as_ref()
            .map(|st| {
                st.call_frames
                    .iter()
                    .map(|f| {
                        format!(
                            "    at {} ({}:{}:{})",
                            if f.function_name.is_empty() {
                                "<anonymous>"
                            } else {
                                &f.function_name
                            },
                            f.url,
                            f.line_number + 1,
                            f.column_number + 1
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        format!("{name}: {message}\n{frames}")
            .trim_end()
            .to_string()
    };
    // A cancelRender()/delayRender() timeout reaches us as an exception too; keep its identity.
    if stack.contains("was called but not cleared after")
        || message.contains("was called but not cleared after")
    {
        return BrowserError::Cancelled { message, stack };
    }
    BrowserError::PageException {
        name,
        message,
        stack,
    }
}
