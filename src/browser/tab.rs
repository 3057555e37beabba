//! One CDP page target with deadlines on every call and a watch on its health.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::inspector::EventTargetCrashed;
use chromiumoxide::cdp::browser_protocol::target::{CloseTargetParams, TargetId};
use chromiumoxide::cdp::js_protocol::runtime::{
    EvaluateParams, EvaluateReturns, EventConsoleApiCalled, EventExceptionThrown, ExceptionDetails,
};
use chromiumoxide::types::Command;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Notify;

use super::BrowserError;

/// How long a plain CDP command (not a page-side wait) may take before we give up on the tab.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(20);

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
    health: Arc<Health>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    label: String,
    closed: bool,
}

impl Tab {
    pub(super) async fn attach(
        page: chromiumoxide::Page,
        cdp: Arc<chromiumoxide::Browser>,
        label: String,
        forward_console: bool,
    ) -> Result<Tab, BrowserError> {
        let health = Arc::new(Health::default());
        let mut watchers = Vec::new();

        let mut exceptions = with_deadline(
            "listening for page exceptions",
            COMMAND_DEADLINE,
            page.event_listener::<EventExceptionThrown>(),
        )
        .await?;
        let h = health.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(event) = exceptions.next().await {
                h.fail(page_exception(&event.exception_details));
            }
        }));

        let mut crashes = with_deadline(
            "listening for crashes",
            COMMAND_DEADLINE,
            page.event_listener::<EventTargetCrashed>(),
        )
        .await?;
        let h = health.clone();
        watchers.push(tokio::spawn(async move {
            if crashes.next().await.is_some() {
                h.fail(BrowserError::TargetClosed("Page crashed!".into()));
            }
        }));

        if forward_console {
            let mut console = with_deadline(
                "listening to the console",
                COMMAND_DEADLINE,
                page.event_listener::<EventConsoleApiCalled>(),
            )
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
            health,
            watchers,
            label,
            closed: false,
        })
    }

    pub(super) fn page(&self) -> &chromiumoxide::Page {
        &self.page
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
        self.guarded(with_deadline_flat(during, deadline, fut))
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
        let returns = with_deadline_flat(during, deadline, async move {
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

    /// Runs `fut`, but fails as soon as the tab reports an uncaught exception or a crash.
    pub async fn guarded<T>(
        &self,
        fut: impl Future<Output = Result<T, BrowserError>>,
    ) -> Result<T, BrowserError> {
        if let Some(e) = self.health.current() {
            return Err(e);
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
            r = fut => {
                // An exception raised while the call ran wins: it is the real cause.
                match (r, self.health.current()) {
                    (Err(_), Some(e)) => Err(e),
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
            self.page.target_id().clone(),
            self.label.clone(),
        )
        .await;
    }
}

async fn close_target(cdp: Arc<chromiumoxide::Browser>, target: TargetId, label: String) {
    let close = cdp.execute(CloseTargetParams::new(target));
    if tokio::time::timeout(Duration::from_secs(5), close)
        .await
        .is_err()
    {
        tracing::warn!(tab = %label, "closing the tab timed out");
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
